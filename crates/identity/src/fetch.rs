//! Fetching OIDC discovery documents and JWK sets over HTTP.
//!
//! Shared by the verifier and the token client. Every fetch is bounded in
//! time (by the `reqwest::Client` the caller built) and in size, because an
//! issuer that hangs or streams garbage must not hang or exhaust the gateway.
//! Failures are returned as one human sentence for `IssuerUnavailable`.

use serde::Deserialize;

/// Discovery documents and JWK sets are a few KiB; anything far larger is not one.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// `{issuer}/.well-known/openid-configuration`, tolerating a trailing slash on the issuer.
pub(crate) fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// The parts of a discovery document this crate uses.
#[derive(Debug, Deserialize)]
pub(crate) struct Discovery {
    pub issuer: String,
    pub jwks_uri: Option<String>,
    pub token_endpoint: Option<String>,
}

/// Fetches and parses the discovery document; its `issuer` must be `issuer`
/// exactly (OIDC Discovery §4.3), or a look-alike host could serve its own keys.
pub(crate) async fn discover(client: &reqwest::Client, issuer: &str) -> Result<Discovery, String> {
    let url = discovery_url(issuer);
    let body = get(client, &url).await?;
    let doc: Discovery = serde_json::from_slice(&body)
        .map_err(|e| format!("discovery document at {url} is invalid: {e}"))?;
    if doc.issuer != issuer {
        return Err(format!(
            "discovery document at {url} names issuer {:?}, expected {issuer:?}",
            doc.issuer
        ));
    }
    Ok(doc)
}

/// GETs `url` and returns the body of a 2xx answer, at most [`MAX_BODY_BYTES`].
pub(crate) async fn get(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let mut response = client
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| format!("GET {url} failed: {}", describe(&e)))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("GET {url} answered {status}"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("GET {url} failed while reading: {}", describe(&e)))?
    {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(format!(
                "GET {url} returned more than {MAX_BODY_BYTES} bytes"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// reqwest's own message is only "error sending request"; the cause
/// (connection refused, timeout, DNS) is further down the source chain.
pub(crate) fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "timed out".into();
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_url_tolerates_trailing_slash() {
        assert_eq!(
            discovery_url("http://127.0.0.1:9000/"),
            "http://127.0.0.1:9000/.well-known/openid-configuration"
        );
        assert_eq!(
            discovery_url("https://issuer.example/tenant"),
            "https://issuer.example/tenant/.well-known/openid-configuration"
        );
    }
}

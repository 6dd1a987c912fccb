//! Asking the dev issuer for a token (`portcullis token`, and tests).
//!
//! The token endpoint is found through the issuer's discovery document, as a
//! real OIDC client would, so the client works against any dev issuer URL and
//! exercises discovery along the way.

use std::time::Duration;

use serde_json::{json, Value};

use crate::fetch;

/// A generous bound: the dev issuer may be generating an RSA key on first use.
const TIMEOUT: Duration = Duration::from_secs(30);

/// What token to ask for.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub sub: String,
    pub groups: Vec<String>,
    pub audience: String,
    pub ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} refused the request ({status}): {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    #[error("unexpected answer from {url}: {reason}")]
    InvalidResponse { url: String, reason: String },
}

/// POSTs to the dev issuer's token endpoint and returns the JWT.
pub async fn request_token(issuer: &str, req: &TokenRequest) -> Result<String, ClientError> {
    let http = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| ClientError::Unreachable {
            url: issuer.to_string(),
            reason: fetch::describe(&e),
        })?;
    let endpoint = token_endpoint(&http, issuer).await?;
    let body = json!({
        "sub": req.sub,
        "groups": req.groups,
        "audience": req.audience,
        // The endpoint counts whole seconds; round sub-second TTLs up, not to zero.
        "ttl_seconds": req.ttl.as_secs() + u64::from(req.ttl.subsec_nanos() > 0),
    });
    let response =
        http.post(&endpoint)
            .json(&body)
            .send()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: endpoint.clone(),
                reason: fetch::describe(&e),
            })?;
    read_token(response, &endpoint).await
}

async fn token_endpoint(http: &reqwest::Client, issuer: &str) -> Result<String, ClientError> {
    let url = fetch::discovery_url(issuer);
    let doc = fetch::discover(http, issuer)
        .await
        .map_err(|reason| ClientError::Unreachable {
            url: url.clone(),
            reason,
        })?;
    doc.token_endpoint.ok_or(ClientError::InvalidResponse {
        url,
        reason: "discovery document has no token_endpoint".into(),
    })
}

async fn read_token(response: reqwest::Response, url: &str) -> Result<String, ClientError> {
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|e| ClientError::Unreachable {
            url: url.to_string(),
            reason: fetch::describe(&e),
        })?;
    let parsed: Option<Value> = serde_json::from_str(&text).ok();
    if !status.is_success() {
        let message = parsed
            .as_ref()
            .and_then(|v| v["error_description"].as_str().or(v["error"].as_str()))
            .map(str::to_string)
            .unwrap_or_else(|| text.chars().take(200).collect());
        return Err(ClientError::Refused {
            url: url.to_string(),
            status: status.as_u16(),
            message,
        });
    }
    parsed
        .as_ref()
        .and_then(|v| v["access_token"].as_str())
        .map(str::to_string)
        .ok_or_else(|| ClientError::InvalidResponse {
            url: url.to_string(),
            reason: "no access_token in the answer".into(),
        })
}

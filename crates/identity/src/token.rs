//! Taking a compact JWS apart before anything in it is trusted.
//!
//! The verifier needs the unverified `alg`, `kid` and `iss` to know which key
//! to check the signature with. This module reads them defensively: every
//! way the input can be wrong becomes an [`AuthError`], never a panic, and the
//! algorithm allow-list is applied here, before any key is even looked at, so
//! `none` and HMAC-with-a-public-key tricks never reach signature code.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};

use crate::error::{clip, AuthError};

/// Larger inputs are refused before being decoded: real tokens are a few KiB,
/// and a 1 MB "token" is only a way to make the gateway work.
pub(crate) const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The signature algorithms we accept. Deliberately closed: HMAC would let
/// anyone holding the issuer's public key forge tokens, and `none` is no signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alg {
    Rs256,
    Es256,
    EdDsa,
}

impl Alg {
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        match name {
            "RS256" => Some(Self::Rs256),
            "ES256" => Some(Self::Es256),
            "EdDSA" => Some(Self::EdDsa),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
        }
    }
}

/// A token split into parts, with nothing verified yet.
#[derive(Debug)]
pub(crate) struct UnverifiedToken<'a> {
    pub alg: Alg,
    pub kid: Option<String>,
    pub claims: Map<String, Value>,
    /// `header.payload`, the bytes the signature covers.
    pub signing_input: &'a [u8],
    pub signature: Vec<u8>,
}

/// Splits and decodes `token`, and refuses algorithms we do not accept.
pub(crate) fn parse(token: &str) -> Result<UnverifiedToken<'_>, AuthError> {
    check_size(token)?;
    let (signing_input, signature_b64) = token
        .rsplit_once('.')
        .ok_or_else(|| AuthError::malformed("not a JWT (expected three dot-separated parts)"))?;
    let (header_b64, payload_b64) = signing_input
        .split_once('.')
        .filter(|(_, payload)| !payload.contains('.'))
        .ok_or_else(|| AuthError::malformed("not a JWT (expected three dot-separated parts)"))?;

    let header = decode_object(header_b64, "header")?;
    let (alg, kid) = check_header(&header)?;
    let claims = decode_object(payload_b64, "payload")?;
    let signature = decode_part(signature_b64, "signature")?;
    if signature.is_empty() {
        return Err(AuthError::malformed("token has an empty signature"));
    }
    Ok(UnverifiedToken {
        alg,
        kid,
        claims,
        signing_input: signing_input.as_bytes(),
        signature,
    })
}

/// Refuses inputs too large to be a real token, before any work is spent on them.
pub(crate) fn check_size(token: &str) -> Result<(), AuthError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::malformed(format!(
            "token is {} bytes, more than the {MAX_TOKEN_BYTES} accepted",
            token.len()
        )));
    }
    Ok(())
}

fn decode_part(part: &str, what: &str) -> Result<Vec<u8>, AuthError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::malformed(format!("token {what} is not valid base64url")))
}

fn decode_object(part: &str, what: &str) -> Result<Map<String, Value>, AuthError> {
    let bytes = decode_part(part, what)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(AuthError::malformed(format!(
            "token {what} is not a JSON object"
        ))),
        Err(_) => Err(AuthError::malformed(format!(
            "token {what} is not valid JSON"
        ))),
    }
}

fn check_header(header: &Map<String, Value>) -> Result<(Alg, Option<String>), AuthError> {
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => alg,
        _ => return Err(AuthError::malformed("token header has no \"alg\"")),
    };
    let alg =
        Alg::from_name(alg).ok_or_else(|| AuthError::UnsupportedAlgorithm { alg: clip(alg) })?;
    check_type(header.get("typ"))?;
    // RFC 7515 §4.1.11: a recipient must refuse extensions it does not understand,
    // and we understand none (e.g. `b64: false` would change what was signed).
    if header.contains_key("crit") {
        return Err(AuthError::malformed(
            "token header lists critical extensions (\"crit\"), none of which are supported",
        ));
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(AuthError::malformed("token header \"kid\" is not a string")),
    };
    Ok((alg, kid))
}

/// Accepts plain JWTs and RFC 9068 access tokens (`at+jwt`, as minted by
/// e.g. the npm `oidc-provider`), but not other explicitly typed JWTs (logout
/// tokens, SETs...), which must never be usable as a login credential.
fn check_type(typ: Option<&Value>) -> Result<(), AuthError> {
    let typ = match typ {
        None => return Ok(()),
        Some(Value::String(typ)) => typ.to_ascii_lowercase(),
        Some(_) => return Err(AuthError::malformed("token header \"typ\" is not a string")),
    };
    let media = typ.strip_prefix("application/").unwrap_or(&typ);
    match media {
        "jwt" | "at+jwt" => Ok(()),
        _ => Err(AuthError::malformed(format!(
            "token type {:?} is not a JWT access or ID token",
            clip(&typ)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(value.to_string())
    }

    fn token(header: Value, claims: Value) -> String {
        format!("{}.{}.c2ln", b64(&header), b64(&claims))
    }

    fn assert_malformed(input: &str) {
        match parse(input) {
            Err(AuthError::Malformed { .. }) => {}
            other => panic!("expected Malformed for {:.40?}, got {other:?}", input),
        }
    }

    #[test]
    fn parses_a_well_formed_token() {
        let t = token(json!({"alg": "ES256", "kid": "k1"}), json!({"iss": "x"}));
        let parsed = parse(&t).expect("parses");
        assert_eq!(parsed.alg, Alg::Es256);
        assert_eq!(parsed.kid.as_deref(), Some("k1"));
        assert_eq!(parsed.claims["iss"], "x");
        assert_eq!(parsed.signature, b"sig");
        assert_eq!(
            parsed.signing_input,
            t.rsplit_once('.').unwrap().0.as_bytes()
        );
    }

    #[test]
    fn refuses_wrong_shapes() {
        assert_malformed("");
        assert_malformed("abc");
        assert_malformed("abc.def");
        assert_malformed("a.b.c.d");
        assert_malformed("!!!.@@@.###");
        assert_malformed("..");
        assert_malformed(&"a".repeat(1024 * 1024));
        assert_malformed(&format!("{}.e30.c2ln", "a".repeat(MAX_TOKEN_BYTES)));
    }

    #[test]
    fn refuses_bad_json() {
        let not_json = URL_SAFE_NO_PAD.encode("{not json");
        assert_malformed(&format!("{not_json}.e30.c2ln"));
        let array = URL_SAFE_NO_PAD.encode("[1,2]");
        assert_malformed(&format!("{array}.e30.c2ln"));
        let header = b64(&json!({"alg": "RS256"}));
        assert_malformed(&format!("{header}.{not_json}.c2ln"));
        assert_malformed(&format!("{header}.e30."));
        assert_malformed(&token(json!({"alg": 5}), json!({})));
        assert_malformed(&token(json!({"alg": "RS256", "kid": 5}), json!({})));
    }

    #[test]
    fn refuses_padded_base64() {
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#);
        assert_malformed(&format!("{header}=.e30.c2ln"));
    }

    #[test]
    fn refuses_unsupported_algorithms() {
        for alg in ["none", "HS256", "HS512", "RS384", "PS256", "ES384", "nOnE"] {
            match parse(&token(json!({"alg": alg}), json!({}))) {
                Err(AuthError::UnsupportedAlgorithm { alg: got }) => assert_eq!(got, alg),
                other => panic!("{alg}: expected UnsupportedAlgorithm, got {other:?}"),
            }
        }
    }

    #[test]
    fn accepts_jwt_and_access_token_types_only() {
        for typ in [
            "JWT",
            "jwt",
            "at+jwt",
            "application/at+jwt",
            "application/JWT",
        ] {
            let t = token(json!({"alg": "RS256", "typ": typ}), json!({}));
            assert!(parse(&t).is_ok(), "{typ} should be accepted");
        }
        for typ in ["logout+jwt", "secevent+jwt", "JWE"] {
            assert_malformed(&token(json!({"alg": "RS256", "typ": typ}), json!({})));
        }
    }

    #[test]
    fn refuses_critical_extensions() {
        assert_malformed(&token(
            json!({"alg": "RS256", "crit": ["b64"], "b64": false}),
            json!({}),
        ));
    }
}

//! Why a token was refused, worded for the client that presented it.
//!
//! The gateway sends these messages back to clients (a Postgres
//! `ErrorResponse`, an SSH banner, an HTTP 401 body) and writes them into
//! audit records, so each variant is one reason a person can act on, and none
//! of them ever carries the token. Values copied from an untrusted token
//! (issuer, key id, algorithm) are clipped so a hostile token cannot flood
//! logs or error messages.

use std::time::SystemTime;

/// Longest piece of an untrusted token echoed back in a message.
const MAX_ECHOED_CHARS: usize = 120;

/// Why a token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Not a compact JWS we can parse: wrong shape, bad base64url or JSON, too large.
    #[error("malformed token: {reason}")]
    Malformed { reason: String },

    /// `alg` is not one of RS256, ES256, EdDSA (this includes `none` and every HS*).
    #[error("token algorithm {alg:?} is not accepted (accepted: RS256, ES256, EdDSA)")]
    UnsupportedAlgorithm { alg: String },

    /// The token's `iss` is not a configured issuer.
    #[error("token issuer {issuer:?} is not trusted")]
    UnknownIssuer { issuer: String },

    /// `aud` does not contain the configured audience.
    #[error("token audience does not include {expected:?}")]
    WrongAudience { expected: String },

    /// `exp` has passed, beyond the configured leeway.
    #[error("token expired at {}", rfc3339(*at))]
    Expired { at: SystemTime },

    /// `nbf` or `iat` lies in the future, beyond the configured leeway.
    #[error("token is not valid before {} (its {claim:?} claim)", rfc3339(*at))]
    NotYetValid { claim: &'static str, at: SystemTime },

    /// A claim every accepted token must carry (`iss`, `exp`) is absent.
    #[error("token has no {claim:?} claim")]
    MissingClaim { claim: &'static str },

    /// A claim is present but of the wrong type or out of range.
    #[error("token claim {claim:?} is invalid: {reason}")]
    InvalidClaim { claim: String, reason: String },

    /// No published key of the issuer has this key id (even after a JWKS refresh),
    /// or, for a token without `kid`, no key fits its algorithm.
    #[error("{}", describe_unknown_key(kid.as_deref(), issuer, alg))]
    UnknownKey {
        kid: Option<String>,
        issuer: String,
        alg: &'static str,
    },

    /// The key named by `kid` is for a different algorithm than the token's `alg`.
    #[error("token algorithm {token_alg} does not match signing key {kid:?}, which is {key_alg}")]
    KeyAlgorithmMismatch {
        kid: String,
        token_alg: &'static str,
        key_alg: &'static str,
    },

    /// The signature does not verify with the issuer's key.
    #[error("token signature is not valid")]
    BadSignature,

    /// The issuer's `principal_claim` is absent, empty or not a string.
    #[error("token has no string claim {claim:?} to name the principal")]
    MissingPrincipalClaim { claim: String },

    /// Discovery or JWKS could not be fetched, so the token cannot be checked.
    #[error("issuer {issuer} is unavailable: {reason}")]
    IssuerUnavailable { issuer: String, reason: String },
}

impl AuthError {
    /// A stable, machine-readable name for the reason, for audit records and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed { .. } => "malformed",
            Self::UnsupportedAlgorithm { .. } => "unsupported_algorithm",
            Self::UnknownIssuer { .. } => "unknown_issuer",
            Self::WrongAudience { .. } => "wrong_audience",
            Self::Expired { .. } => "expired",
            Self::NotYetValid { .. } => "not_yet_valid",
            Self::MissingClaim { .. } => "missing_claim",
            Self::InvalidClaim { .. } => "invalid_claim",
            Self::UnknownKey { .. } => "unknown_key",
            Self::KeyAlgorithmMismatch { .. } => "key_algorithm_mismatch",
            Self::BadSignature => "bad_signature",
            Self::MissingPrincipalClaim { .. } => "missing_principal_claim",
            Self::IssuerUnavailable { .. } => "issuer_unavailable",
        }
    }

    /// True when the issuer, not the client, is at fault: the same token may
    /// succeed later, and records should not blame the caller.
    pub fn caused_by_issuer(&self) -> bool {
        matches!(self, Self::IssuerUnavailable { .. })
    }

    pub(crate) fn malformed(reason: impl Into<String>) -> Self {
        Self::Malformed {
            reason: reason.into(),
        }
    }
}

/// Cuts a value copied from an untrusted token down to a printable size.
pub(crate) fn clip(value: &str) -> String {
    if value.chars().count() <= MAX_ECHOED_CHARS {
        return value.to_string();
    }
    let mut clipped: String = value.chars().take(MAX_ECHOED_CHARS).collect();
    clipped.push('…');
    clipped
}

fn describe_unknown_key(kid: Option<&str>, issuer: &str, alg: &str) -> String {
    match kid {
        Some(kid) => format!("unknown signing key id {kid:?} for issuer {issuer}"),
        None => format!("token has no key id and issuer {issuer} publishes no {alg} key"),
    }
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn messages_are_human_readable() {
        let expired = AuthError::Expired {
            at: UNIX_EPOCH + Duration::from_secs(1_780_000_000),
        };
        assert_eq!(expired.to_string(), "token expired at 2026-05-28T20:26:40Z");
        let aud = AuthError::WrongAudience {
            expected: "portcullis".into(),
        };
        assert_eq!(
            aud.to_string(),
            "token audience does not include \"portcullis\""
        );
        let kid = AuthError::UnknownKey {
            kid: Some("abc".into()),
            issuer: "http://127.0.0.1:9000".into(),
            alg: "RS256",
        };
        assert_eq!(
            kid.to_string(),
            "unknown signing key id \"abc\" for issuer http://127.0.0.1:9000"
        );
    }

    #[test]
    fn clip_bounds_echoed_values() {
        assert_eq!(clip("short"), "short");
        let long = "x".repeat(10_000);
        assert_eq!(clip(&long).chars().count(), MAX_ECHOED_CHARS + 1);
    }
}

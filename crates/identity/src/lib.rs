//! Who is calling: validation of OIDC bearer tokens, and a local issuer to mint them.
//!
//! Every protocol front-end (PostgreSQL password, SSH password, HTTP bearer)
//! receives a JWT in its own way and hands it to one shared [`Verifier`], so
//! there is exactly one place that decides whether a token is genuine. The
//! [`dev_idp`] and [`client`] modules exist so that trials and tests go
//! through the very same discovery / JWKS / signature path as a real issuer
//! such as GitHub Actions, instead of a test-only shortcut.
//!
//! [`ratelimit`] counts failed logins per source address, the same way for
//! every protocol front-end (each listener keeps its own count).
//!
//! Tokens are bearer secrets: nothing in this crate logs or displays one.
//! Logs and records identify a token by [`fingerprint`].

mod cache;
mod claims;
pub mod client;
pub mod dev_idp;
mod error;
mod fetch;
mod jwk;
mod keys;
pub mod ratelimit;
mod token;
mod verifier;

#[cfg(test)]
mod test_util;

use std::time::SystemTime;

use sha2::{Digest, Sha256};

pub use error::AuthError;
pub use verifier::{Verifier, VerifierOptions};

/// Who a validated token says the caller is.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// Value of the issuer's `principal_claim`.
    pub name: String,
    /// From the issuer's `groups_claim`; empty when none is configured or present.
    pub groups: Vec<String>,
    /// The configured issuer that vouched for this principal.
    pub issuer: String,
    /// Every claim of the token, for policy matching.
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// When the token stops being valid. Checked at login (and by the
    /// verifier's cache); a session already open outlives it, since jobs'
    /// tokens are often shorter-lived than their work; time-boxing a
    /// session is what jit grants are for.
    pub expires_at: SystemTime,
    /// [`fingerprint`] of the token, to correlate logs and records without the token.
    pub token_fingerprint: String,
}

/// A short, non-reversible name for a token: `sha256:` and the first 16 hex
/// characters of its SHA-256. Logs and records use this, never the token.
pub fn fingerprint(token: &str) -> String {
    fingerprint_of(&token_digest(token))
}

pub(crate) fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub(crate) fn fingerprint_of(digest: &[u8; 32]) -> String {
    format!("sha256:{}", hex::encode(&digest[..8]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_prefixed_short_sha256() {
        // SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223...
        assert_eq!(fingerprint("abc"), "sha256:ba7816bf8f01cfea");
        assert_ne!(fingerprint("abc"), fingerprint("abd"));
    }
}

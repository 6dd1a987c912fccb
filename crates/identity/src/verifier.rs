//! The one place that decides whether a bearer token is genuine.
//!
//! Built once from the configured issuers and cloned into every listener;
//! all clones share the key caches and the verified-token cache. The order
//! of checks matters: shape and algorithm first (cheap, no network), then the
//! issuer by its unverified `iss` (only to choose keys), then the signature,
//! and only for an authentic token the claims.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use portcullis_config::OidcIssuerConfig;

use crate::cache::{Digest, VerifiedCache};
use crate::error::{clip, AuthError};
use crate::keys::{IssuerKeys, KeySet, RefreshPolicy};
use crate::token::{self, UnverifiedToken};
use crate::{claims, fingerprint_of, token_digest, Principal};

/// Tuning knobs; [`Default`] is what production uses.
#[derive(Debug, Clone)]
pub struct VerifierOptions {
    /// At most one JWKS refetch per issuer in this interval, however many
    /// unknown-kid tokens arrive.
    pub min_refetch_interval: Duration,
    /// Keys older than this are refetched on next use, so removed keys stop working.
    pub max_key_age: Duration,
    /// Timeout of each discovery / JWKS request.
    pub http_timeout: Duration,
    /// Most verified tokens remembered at once.
    pub cache_capacity: usize,
}

impl Default for VerifierOptions {
    fn default() -> Self {
        Self {
            min_refetch_interval: Duration::from_secs(5),
            max_key_age: Duration::from_secs(15 * 60),
            http_timeout: Duration::from_secs(5),
            cache_capacity: 10_000,
        }
    }
}

/// Validates OIDC tokens against the configured issuers. Cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    issuers: HashMap<String, Issuer>,
    http: reqwest::Client,
    cache: Mutex<VerifiedCache>,
    /// Signature checks performed; lets tests prove the cache is used.
    signature_checks: AtomicU64,
}

struct Issuer {
    config: OidcIssuerConfig,
    keys: IssuerKeys,
}

impl Verifier {
    /// A verifier trusting exactly `issuers`. Nothing is fetched until the
    /// first token of each issuer arrives, so the gateway starts even while
    /// an issuer is down.
    pub fn new(issuers: &[OidcIssuerConfig]) -> Self {
        Self::with_options(issuers, VerifierOptions::default())
    }

    pub fn with_options(issuers: &[OidcIssuerConfig], options: VerifierOptions) -> Self {
        let policy = RefreshPolicy {
            min_refetch_interval: options.min_refetch_interval,
            max_key_age: options.max_key_age,
        };
        let mut by_name = HashMap::new();
        for config in issuers {
            if by_name.contains_key(&config.issuer) {
                tracing::warn!(issuer = %config.issuer, "issuer configured twice; using the first entry");
                continue;
            }
            let keys = IssuerKeys::new(config.issuer.clone(), config.jwks_uri.clone(), policy);
            by_name.insert(
                config.issuer.clone(),
                Issuer {
                    config: config.clone(),
                    keys,
                },
            );
        }
        Self {
            inner: Arc::new(Inner {
                issuers: by_name,
                http: http_client(options.http_timeout),
                cache: Mutex::new(VerifiedCache::new(options.cache_capacity)),
                signature_checks: AtomicU64::new(0),
            }),
        }
    }

    /// Verifies `token` and says who it names. Never logs the token itself.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        // Before hashing: a megabyte of junk should cost nothing, not even a digest.
        if let Err(e) = token::check_size(token) {
            tracing::debug!(bytes = token.len(), reason = %e, "token refused");
            return Err(e);
        }
        let digest = token_digest(token);
        let token_fingerprint = fingerprint_of(&digest);
        let result = self.check(token, &digest, &token_fingerprint).await;
        match &result {
            Ok(p) => tracing::debug!(
                token = %token_fingerprint,
                principal = %p.name,
                issuer = %p.issuer,
                "token accepted"
            ),
            Err(e) => tracing::debug!(
                token = %token_fingerprint,
                code = e.code(),
                reason = %e,
                "token refused"
            ),
        }
        result
    }

    async fn check(
        &self,
        token: &str,
        digest: &Digest,
        fingerprint: &str,
    ) -> Result<Principal, AuthError> {
        if let Some(principal) = self.cached(digest) {
            return Ok(principal);
        }
        let parsed = token::parse(token)?;
        let issuer = self.issuer_of(&parsed)?;
        let keys = issuer
            .keys
            .for_token(&self.inner.http, parsed.kid.as_deref(), parsed.alg)
            .await?;
        self.check_signature(&keys, &parsed, &issuer.config.issuer)?;
        let now = SystemTime::now();
        let principal =
            claims::into_principal(parsed.claims, &issuer.config, now, fingerprint.to_string())?;
        self.lock_cache().insert(*digest, principal.clone(), now);
        Ok(principal)
    }

    fn issuer_of(&self, token: &UnverifiedToken<'_>) -> Result<&Issuer, AuthError> {
        let iss = claims::unverified_issuer(&token.claims)?;
        self.inner
            .issuers
            .get(iss)
            .ok_or_else(|| AuthError::UnknownIssuer { issuer: clip(iss) })
    }

    /// With a `kid`, exactly that key must verify; without, any key of the
    /// token's algorithm may (some issuers omit `kid` when they have one key).
    fn check_signature(
        &self,
        keys: &KeySet,
        token: &UnverifiedToken<'_>,
        issuer: &str,
    ) -> Result<(), AuthError> {
        let mut candidates = keys.candidates(token.kid.as_deref(), token.alg).peekable();
        if candidates.peek().is_none() {
            return Err(AuthError::UnknownKey {
                kid: token.kid.as_deref().map(clip),
                issuer: issuer.to_string(),
                alg: token.alg.name(),
            });
        }
        for key in candidates {
            if key.alg != token.alg {
                return Err(AuthError::KeyAlgorithmMismatch {
                    kid: token.kid.as_deref().map(clip).unwrap_or_default(),
                    token_alg: token.alg.name(),
                    key_alg: key.alg.name(),
                });
            }
            self.inner.signature_checks.fetch_add(1, Ordering::Relaxed);
            if key.verifies(token.signing_input, &token.signature) {
                return Ok(());
            }
        }
        Err(AuthError::BadSignature)
    }

    fn cached(&self, digest: &Digest) -> Option<Principal> {
        self.lock_cache().get(digest, SystemTime::now())
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, VerifiedCache> {
        // A panic elsewhere while holding the lock leaves the cache consistent
        // enough (worst case: a missing entry), so poisoning is not fatal.
        self.inner.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    pub(crate) fn signature_checks(&self) -> u64 {
        self.inner.signature_checks.load(Ordering::Relaxed)
    }
}

fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot build configured HTTP client; using defaults");
            reqwest::Client::new()
        })
}

#[cfg(test)]
mod tests;

//! One issuer's signing keys: fetched lazily, cached, refreshed on rotation.
//!
//! Issuers rotate keys by publishing a new one in their JWKS and signing with
//! it, so a token with an unknown `kid` is the signal to refetch. Tokens are
//! attacker-supplied, though, so refetches are rate-limited per issuer
//! (at most one attempt per `min_refetch_interval`) and single-flight: many
//! sessions presenting new-kid tokens at once cause one fetch, not a stampede.
//! Keys also age out (`max_key_age`) so revocations are eventually noticed;
//! if that periodic refresh fails, the old keys stay in use rather than
//! locking everyone out during an issuer outage.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, MutexGuard};

use crate::error::AuthError;
use crate::fetch;
use crate::jwk::{self, VerifyingKey};
use crate::token::Alg;

/// Refresh timing, copied from `VerifierOptions`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RefreshPolicy {
    pub min_refetch_interval: Duration,
    pub max_key_age: Duration,
}

/// A JWKS as fetched at one moment.
#[derive(Debug)]
pub(crate) struct KeySet {
    pub keys: Vec<VerifyingKey>,
    fetched_at: Instant,
}

impl KeySet {
    /// Keys a token with this `kid` / `alg` could have been signed with.
    /// A named key is returned whatever its algorithm, so the caller can say
    /// "algorithm mismatch" instead of "unknown key".
    pub(crate) fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Alg,
    ) -> impl Iterator<Item = &'a VerifyingKey> + 'a {
        self.keys.iter().filter(move |key| match kid {
            Some(kid) => key.kid.as_deref() == Some(kid),
            None => key.alg == alg,
        })
    }
}

#[derive(Default)]
struct Published {
    keys: Option<Arc<KeySet>>,
    /// Bumped on every successful fetch; lets a task that waited for the
    /// refresh lock see that someone else already refreshed.
    generation: u64,
}

#[derive(Default)]
struct RefreshState {
    last_attempt: Option<Instant>,
    last_error: Option<String>,
}

/// The key cache of one configured issuer.
pub(crate) struct IssuerKeys {
    issuer: String,
    configured_jwks_uri: Option<String>,
    published: RwLock<Published>,
    refresh: Mutex<RefreshState>,
    policy: RefreshPolicy,
}

impl IssuerKeys {
    pub(crate) fn new(issuer: String, jwks_uri: Option<String>, policy: RefreshPolicy) -> Self {
        Self {
            issuer,
            configured_jwks_uri: jwks_uri,
            published: RwLock::default(),
            refresh: Mutex::default(),
            policy,
        }
    }

    /// The current key set, refreshed first if it has no candidate for this
    /// token or has grown old (both subject to the rate limit).
    pub(crate) async fn for_token(
        &self,
        http: &reqwest::Client,
        kid: Option<&str>,
        alg: Alg,
    ) -> Result<Arc<KeySet>, AuthError> {
        let (current, generation) = self.snapshot();
        if let Some(set) = current {
            if set.candidates(kid, alg).next().is_some() {
                if set.fetched_at.elapsed() < self.policy.max_key_age {
                    return Ok(set);
                }
                // Old but usable keys: refresh only if nobody else is, so an
                // issuer outage delays at most the one request that tries.
                return match self.refresh.try_lock() {
                    Ok(state) => self.refresh_locked(state, http, generation).await,
                    Err(_) => Ok(set),
                };
            }
        }
        let state = self.refresh.lock().await;
        self.refresh_locked(state, http, generation).await
    }

    fn snapshot(&self) -> (Option<Arc<KeySet>>, u64) {
        let published = self.published.read().unwrap_or_else(|p| p.into_inner());
        (published.keys.clone(), published.generation)
    }

    /// With the refresh lock held: refetches unless someone did since
    /// `seen_generation` or the last attempt was too recent. On failure the
    /// previous keys, if any, stay in use.
    async fn refresh_locked(
        &self,
        mut state: MutexGuard<'_, RefreshState>,
        http: &reqwest::Client,
        seen_generation: u64,
    ) -> Result<Arc<KeySet>, AuthError> {
        let (current, generation) = self.snapshot();
        if generation != seen_generation {
            if let Some(set) = current {
                return Ok(set);
            }
        }
        let recently = state
            .last_attempt
            .is_some_and(|at| at.elapsed() < self.policy.min_refetch_interval);
        if recently {
            return current.ok_or_else(|| self.unavailable(state.last_error.as_deref()));
        }
        state.last_attempt = Some(Instant::now());
        match self.fetch(http).await {
            Ok(set) => {
                state.last_error = None;
                Ok(self.publish(set))
            }
            Err(reason) => {
                tracing::warn!(issuer = %self.issuer, %reason, "cannot refresh issuer keys");
                let error = self.unavailable(Some(&reason));
                state.last_error = Some(reason);
                current.ok_or(error)
            }
        }
    }

    fn publish(&self, keys: Vec<VerifyingKey>) -> Arc<KeySet> {
        let set = Arc::new(KeySet {
            keys,
            fetched_at: Instant::now(),
        });
        let mut published = self.published.write().unwrap_or_else(|p| p.into_inner());
        published.keys = Some(Arc::clone(&set));
        published.generation += 1;
        set
    }

    async fn fetch(&self, http: &reqwest::Client) -> Result<Vec<VerifyingKey>, String> {
        let jwks_uri = match &self.configured_jwks_uri {
            Some(uri) => uri.clone(),
            None => fetch::discover(http, &self.issuer)
                .await?
                .jwks_uri
                .ok_or_else(|| "discovery document has no jwks_uri".to_string())?,
        };
        let body = fetch::get(http, &jwks_uri).await?;
        let keys = jwk::parse_jwks(&body, &jwks_uri)?;
        let kids: Vec<&str> = keys.iter().filter_map(|k| k.kid.as_deref()).collect();
        tracing::info!(issuer = %self.issuer, jwks_uri, keys = keys.len(), ?kids, "fetched issuer keys");
        Ok(keys)
    }

    fn unavailable(&self, reason: Option<&str>) -> AuthError {
        AuthError::IssuerUnavailable {
            issuer: self.issuer.clone(),
            reason: reason
                .unwrap_or("keys not fetched yet; retry shortly")
                .to_string(),
        }
    }
}

//! A real, local OIDC issuer for trials and tests (`portcullis dev-idp`).
//!
//! It serves a discovery document, a JWKS and a token endpoint, so the
//! gateway verifies its tokens exactly as it would GitHub's or Okta's: the
//! tests of this crate and of the gateway exercise the production path, not
//! a shortcut. `POST /rotate` switches to a fresh key while still publishing
//! the old ones, which is how tests prove key-rotation handling.
//!
//! It hands a token for any subject to anyone who asks: development only.

mod keys;
mod request;

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde_json::{json, Value};

pub(crate) use keys::SigningKey;
use request::TokenParams;

/// Rotated-out keys stay published (tokens they signed remain valid) up to this many keys.
const MAX_PUBLISHED_KEYS: usize = 8;

/// The algorithm the dev issuer signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SigningAlg {
    /// RSA PKCS#1 v1.5 with SHA-256: what most issuers use, so the default.
    #[default]
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// Ed25519.
    EdDsa,
}

impl FromStr for SigningAlg {
    type Err = DevIdpError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "RS256" => Ok(Self::Rs256),
            "ES256" => Ok(Self::Es256),
            "EdDSA" => Ok(Self::EdDsa),
            other => Err(DevIdpError::UnknownAlgorithm(other.to_string())),
        }
    }
}

impl fmt::Display for SigningAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
        })
    }
}

/// How to run the dev issuer.
#[derive(Debug, Clone)]
pub struct DevIdpOptions {
    /// The issuer URL put in tokens and the discovery document, e.g. `http://127.0.0.1:9000`;
    /// it must be the URL clients reach the listener at.
    pub issuer: String,
    pub alg: SigningAlg,
}

#[derive(Debug, thiserror::Error)]
pub enum DevIdpError {
    #[error("unknown signing algorithm {0:?} (expected RS256, ES256 or EdDSA)")]
    UnknownAlgorithm(String),
    #[error("cannot generate {alg} signing key: {reason}")]
    KeyGeneration { alg: SigningAlg, reason: String },
    #[error("cannot sign token: {0}")]
    Signing(String),
    #[error("dev issuer stopped: {0}")]
    Serve(#[source] std::io::Error),
}

/// Serves the dev issuer on `listener` until the listener errors.
pub async fn serve(
    listener: tokio::net::TcpListener,
    opts: DevIdpOptions,
) -> Result<(), DevIdpError> {
    let issuer = DevIssuer::generate(opts).await?;
    tracing::warn!(
        issuer = %issuer.issuer,
        alg = %issuer.alg,
        "DEV IDP: FOR DEVELOPMENT ONLY. It issues a token for any subject to anyone who can reach it; \
         never trust it from a production gateway"
    );
    axum::serve(listener, router(issuer))
        .await
        .map_err(DevIdpError::Serve)
}

/// The issuer's state: identity, keys (newest last) and request counters
/// that tests use to prove the verifier's caching and rate limits.
pub(crate) struct DevIssuer {
    pub(crate) issuer: String,
    alg: SigningAlg,
    keys: RwLock<Vec<Arc<SigningKey>>>,
    pub(crate) discovery_requests: AtomicUsize,
    pub(crate) jwks_requests: AtomicUsize,
}

impl DevIssuer {
    pub(crate) async fn generate(opts: DevIdpOptions) -> Result<Arc<Self>, DevIdpError> {
        let key = generate_key(opts.alg).await?;
        Ok(Arc::new(Self {
            issuer: opts.issuer,
            alg: opts.alg,
            keys: RwLock::new(vec![key]),
            discovery_requests: AtomicUsize::new(0),
            jwks_requests: AtomicUsize::new(0),
        }))
    }

    /// The key new tokens are signed with.
    pub(crate) fn current_key(&self) -> Arc<SigningKey> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        // Never empty: created with one key, rotation only adds before trimming.
        Arc::clone(&keys[keys.len() - 1])
    }

    /// Makes a fresh key current, keeping older ones published.
    pub(crate) async fn rotate(&self) -> Result<Arc<SigningKey>, DevIdpError> {
        let key = generate_key(self.alg).await?;
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        keys.push(Arc::clone(&key));
        let excess = keys.len().saturating_sub(MAX_PUBLISHED_KEYS);
        keys.drain(..excess);
        tracing::info!(issuer = %self.issuer, kid = %key.kid, published = keys.len(), "dev issuer rotated its signing key");
        Ok(key)
    }

    fn base_url(&self) -> &str {
        self.issuer.trim_end_matches('/')
    }

    fn discovery(&self) -> Value {
        let base = self.base_url();
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{base}/jwks"),
            "token_endpoint": format!("{base}/token"),
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [self.alg.to_string()],
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["none"],
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "groups"],
        })
    }

    pub(crate) fn jwks(&self) -> Value {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        json!({ "keys": keys.iter().map(|k| k.jwk().clone()).collect::<Vec<_>>() })
    }

    /// The claims of a token for `params`, issued now.
    fn claims(&self, params: &TokenParams) -> Value {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        json!({
            "iss": self.issuer,
            "sub": params.sub,
            "aud": params.audience,
            "exp": now + params.ttl_seconds,
            "iat": now,
            "nbf": now,
            "jti": uuid::Uuid::new_v4().to_string(),
            "groups": params.groups,
        })
    }

    fn mint(&self, params: &TokenParams) -> Result<Value, DevIdpError> {
        let key = self.current_key();
        let token = key.sign(&key.header(), &self.claims(params))?;
        tracing::info!(
            sub = %params.sub,
            aud = %params.audience,
            kid = %key.kid,
            token = %crate::fingerprint(&token),
            "dev issuer minted a token"
        );
        Ok(json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": params.ttl_seconds,
        }))
    }
}

async fn generate_key(alg: SigningAlg) -> Result<Arc<SigningKey>, DevIdpError> {
    // RSA generation takes long enough to stall other tasks on this worker.
    tokio::task::spawn_blocking(move || SigningKey::generate(alg))
        .await
        .map_err(|e| DevIdpError::KeyGeneration {
            alg,
            reason: e.to_string(),
        })?
        .map(Arc::new)
}

pub(crate) fn router(issuer: Arc<DevIssuer>) -> Router {
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/token", post(token))
        .route("/rotate", post(rotate))
        .with_state(issuer)
}

async fn discovery(State(idp): State<Arc<DevIssuer>>) -> Json<Value> {
    idp.discovery_requests.fetch_add(1, Ordering::Relaxed);
    Json(idp.discovery())
}

async fn jwks(State(idp): State<Arc<DevIssuer>>) -> Json<Value> {
    idp.jwks_requests.fetch_add(1, Ordering::Relaxed);
    Json(idp.jwks())
}

async fn token(State(idp): State<Arc<DevIssuer>>, request: Request) -> Response {
    let params = match read_params(request).await {
        Ok(params) => params,
        Err(message) => return error(StatusCode::BAD_REQUEST, "invalid_request", &message),
    };
    match idp.mint(&params) {
        Ok(body) => Json(body).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            &e.to_string(),
        ),
    }
}

async fn rotate(State(idp): State<Arc<DevIssuer>>) -> Response {
    match idp.rotate().await {
        Ok(key) => Json(json!({ "kid": key.kid, "alg": key.alg.to_string() })).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            &e.to_string(),
        ),
    }
}

/// Form bodies are read as a form; anything else is expected to be JSON,
/// so a client that forgets the content type still gets a useful error.
async fn read_params(request: Request) -> Result<TokenParams, String> {
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    if is_form {
        let Form(pairs) = Form::<Vec<(String, String)>>::from_request(request, &())
            .await
            .map_err(|e| e.body_text())?;
        return request::from_form(&pairs);
    }
    let body = Bytes::from_request(request, &())
        .await
        .map_err(|e| e.body_text())?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| format!("request body is neither a form nor JSON: {e}"))?;
    request::from_json(&value)
}

/// OAuth 2.0 (RFC 6749 §5.2) error body, which generic clients know how to print.
fn error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        Json(json!({ "error": code, "error_description": description })),
    )
        .into_response()
}

#[cfg(test)]
mod tests;

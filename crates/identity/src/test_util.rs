//! Test scaffolding: a dev issuer on a free loopback port, with its keys at
//! hand so tests can mint both genuine and deliberately broken tokens.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use portcullis_config::{HumanDuration, OidcIssuerConfig};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::client::{request_token, TokenRequest};
use crate::dev_idp::{router, DevIdpOptions, DevIssuer, SigningAlg};

pub(crate) struct TestIdp {
    pub url: String,
    pub idp: Arc<DevIssuer>,
    server: JoinHandle<()>,
}

impl TestIdp {
    pub async fn start(alg: SigningAlg) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let opts = DevIdpOptions {
            issuer: url.clone(),
            alg,
        };
        let idp = DevIssuer::generate(opts).await.expect("keys");
        let app = router(Arc::clone(&idp));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, idp, server }
    }

    /// How a gateway would configure this issuer.
    pub fn config(&self) -> OidcIssuerConfig {
        Self::config_for(&self.url)
    }

    /// How a gateway would configure an issuer at `issuer`.
    pub fn config_for(issuer: &str) -> OidcIssuerConfig {
        OidcIssuerConfig {
            issuer: issuer.to_string(),
            audience: "portcullis".into(),
            principal_claim: "sub".into(),
            groups_claim: Some("groups".into()),
            leeway: HumanDuration(Duration::from_secs(30)),
            jwks_uri: None,
        }
    }

    /// Claims of a valid token for `sub`, issued now.
    pub fn claims(&self, sub: &str) -> Value {
        let now = now();
        json!({
            "iss": self.url, "sub": sub, "aud": "portcullis",
            "exp": now + 300, "iat": now, "nbf": now, "jti": sub,
        })
    }

    /// Signs `claims` with the issuer's current key and its usual header.
    pub fn sign(&self, claims: &Value) -> String {
        let key = self.idp.current_key();
        key.sign(&key.header(), claims).expect("sign")
    }

    /// Signs with the current key under an arbitrary header.
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        self.idp.current_key().sign(header, claims).expect("sign")
    }

    /// A token from the issuer's token endpoint, as a client would get one.
    pub async fn token(&self, sub: &str, audience: &str) -> String {
        let req = TokenRequest {
            sub: sub.into(),
            groups: vec!["sre".into(), "dev".into()],
            audience: audience.into(),
            ttl: Duration::from_secs(300),
        };
        request_token(&self.url, &req).await.expect("token")
    }

    pub fn jwks_requests(&self) -> usize {
        self.idp.jwks_requests.load(Ordering::SeqCst)
    }

    pub fn discovery_requests(&self) -> usize {
        self.idp.discovery_requests.load(Ordering::SeqCst)
    }
}

impl Drop for TestIdp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A compact JWS with whatever header, claims and signature bytes a test wants.
pub(crate) fn forge(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

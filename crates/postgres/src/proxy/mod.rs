//! The session driver: owns sockets and timeouts, speaks the codec, asks
//! identity who the client is and policy what it may do, records everything,
//! and relays bytes between the client and the upstream.
//!
//! Lifecycle of one connection (see `docs/postgres-lifecycle.md`):
//! startup (TLS, token as password) → upstream login with the gateway-held
//! credential → relay, where every statement is decided once and recorded
//! before it is forwarded.

mod cancel;
pub mod catalog;
mod hold;
mod mask;
mod output;
mod relay;
mod session;
pub mod stream;
pub mod upstream;

use std::sync::Arc;

use portcullis_identity::Verifier;
use portcullis_policy::classify::Classifier;
use portcullis_policy::decide::PolicySet;
use portcullis_records::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use cancel::CancelRegistry;
pub use upstream::UpstreamTarget;

/// Everything a listener's sessions share.
pub struct PgGateway {
    /// The connection's name, as policies and records call it.
    pub name: String,
    pub verifier: Verifier,
    pub policies: Arc<PolicySet>,
    pub classifier: Arc<Classifier>,
    pub store: Store,
    /// TLS for clients; `None` means SSLRequest is declined.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Accept clients that did not negotiate TLS (loopback-only listeners).
    pub allow_plaintext: bool,
    pub upstream: UpstreamTarget,
    pub cancels: Arc<CancelRegistry>,
    /// Live sessions, so shutdown can wait for their last records.
    pub sessions: SessionGauge,
    /// Keyed masker for `mask:` rules (the key lives in the data dir, so
    /// `hash` stays stable across restarts).
    pub masker: Arc<portcullis_masking::Masker>,
    /// Where result fields come from, for declared masked columns.
    pub catalog: catalog::Catalog,
    /// Grants (admission to `jit` connections) and held statements.
    pub jit: Arc<portcullis_jit::Broker>,
}

/// Counts live sessions: each holds a clone for its lifetime.
#[derive(Clone, Default)]
pub struct SessionGauge(Arc<()>);

impl SessionGauge {
    pub fn live(&self) -> usize {
        Arc::strong_count(&self.0) - 1
    }
}

/// Accepts connections until `shutdown` flips to true. Each session runs on
/// its own task so one client's failure never touches another's.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<PgGateway>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let gateway = gateway.clone();
                    let stop = shutdown.clone();
                    let gauge = gateway.sessions.clone();
                    tokio::spawn(async move {
                        session::run(gateway, tcp, peer, stop).await;
                        drop(gauge);
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(connection = %gateway.name, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

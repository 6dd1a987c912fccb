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
mod roles;
mod session;
mod settings;
mod startup_params;
pub mod stream;
pub mod upstream;

use std::sync::Arc;

use portcullis_identity::ratelimit::AuthRateLimit;
use portcullis_identity::Principal;
use portcullis_identity::Verifier;
use portcullis_policy::classify::facts::DeclaredFunctions;
use portcullis_policy::classify::Classifier;
use portcullis_policy::decide::{Applicable, PolicySet};
use portcullis_records::Store;
use std::net::SocketAddr;

use tokio::net::TcpStream;
use tokio::sync::watch;

pub use cancel::CancelRegistry;
pub use roles::{LevelRoles, SessionRole};
pub use upstream::{UpstreamAddr, UpstreamTarget};

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
    /// The connection's `user`: the catalog connection's login, and every
    /// session's unless `roles` names one for the session's level.
    pub upstream: UpstreamTarget,
    /// `upstream.users:`, the role per access level (empty: none).
    pub roles: LevelRoles,
    pub cancels: Arc<CancelRegistry>,
    /// Keyed masker for `mask:` rules (the key lives in the data dir, so
    /// `hash` stays stable across restarts).
    pub masker: Arc<portcullis_masking::Masker>,
    /// Where result fields come from, for declared masked columns, and
    /// what the functions a statement calls are.
    pub catalog: catalog::Catalog,
    /// The connection's `functions:` declarations.
    pub functions: DeclaredFunctions,
    /// Grants (admission to `jit` connections) and held statements.
    pub jit: Arc<portcullis_jit::Broker>,
    /// Failed logins per source address; shared with the gateway's other listeners.
    pub limits: Arc<AuthRateLimit>,
}

impl PgGateway {
    /// The policies a session of `principal` runs under: a jit policy's
    /// rules apply only inside a grant in force.
    pub(crate) fn session_policies(&self, principal: &Principal, granted: bool) -> Applicable<'_> {
        let all = self.policies.applicable(principal, &self.name);
        match granted {
            true => all,
            false => all.standing_only(),
        }
    }
}

/// Runs one client connection from its first byte to its end. The binary's
/// accept loop spawns one per connection.
pub async fn run_session(
    gateway: Arc<PgGateway>,
    tcp: TcpStream,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
) {
    session::run(gateway, tcp, peer, shutdown).await
}

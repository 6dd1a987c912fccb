//! SSH for Portcullis: clients log in with their OIDC token (as the
//! password or the keyboard-interactive answer), the gateway logs in to the
//! upstream with the key it holds, and every request on the way is decided
//! by policy and recorded before it is passed on.
//!
//! - `server`: the client-facing SSH server (russh): authentication,
//!   admission (through a grant on `jit` connections, and the session ends
//!   with it), channel opens, forwarding requests;
//! - `channel`: one session channel from request to close: the decision
//!   on `exec` / `shell` / `subsystem`, the relay, the recording;
//! - `upstream`: the gateway's own SSH client towards the upstream, which
//!   pins the upstream's host key;
//! - `recording`: asciicast v2 files; `scp` and `sftp`: what files a
//!   transfer moved;
//! - `hostkey`: the gateway's persistent host key.
//!
//! Failed logins per source address are limited by
//! [`portcullis_identity::ratelimit`], shared with the PostgreSQL listener.

mod channel;
pub mod hostkey;
pub mod recording;
pub mod scp;
mod server;
pub mod sftp;
pub mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use portcullis_identity::ratelimit::AuthRateLimit;
use portcullis_identity::{Principal, Verifier};
use portcullis_jit::Broker;
use portcullis_policy::decide::{Applicable, PolicySet};
use portcullis_records::Store;
use russh::server::Config;
use tokio::net::TcpStream;
use tokio::sync::watch;

pub use upstream::UpstreamTarget;

/// Exit status of a command the gateway refused, as shells use 126 for
/// "found but cannot be run".
pub const REFUSED_EXIT_STATUS: u32 = 126;

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("{}: {message}", path.display())]
    Key { path: PathBuf, message: String },
    #[error("known_host_key: {0}")]
    HostKeyConfig(String),
    /// The upstream presented another host key than the pinned one.
    #[error("{0}")]
    HostKeyMismatch(String),
    #[error("upstream unavailable: {0}")]
    Upstream(String),
}

/// Everything one SSH listener's sessions share.
pub struct SshGateway {
    /// The connection's name, as policies and records call it.
    pub name: String,
    pub verifier: Verifier,
    pub policies: Arc<PolicySet>,
    pub store: Store,
    /// Grants (admission to `jit` connections) and held commands.
    pub jit: Arc<Broker>,
    pub upstream: UpstreamTarget,
    /// Recordings live under `DATA_DIR/recordings/`.
    pub data_dir: PathBuf,
    /// Failed logins per address; shared with the gateway's other listeners.
    pub limits: Arc<AuthRateLimit>,
    config: Arc<Config>,
}

impl SshGateway {
    /// Loads (or creates) the host key in `data_dir`.
    pub fn new(
        name: String,
        verifier: Verifier,
        policies: Arc<PolicySet>,
        store: Store,
        jit: Arc<Broker>,
        upstream: UpstreamTarget,
        data_dir: PathBuf,
    ) -> Result<SshGateway, SshError> {
        let host_key = hostkey::load_or_create(&data_dir)?;
        let methods: &[russh::MethodKind] = &[
            russh::MethodKind::KeyboardInteractive,
            russh::MethodKind::Password,
        ];
        let config = Config {
            server_id: russh::SshId::Standard("SSH-2.0-Portcullis".into()),
            methods: methods.into(),
            keys: vec![host_key],
            // Refusals take this long whatever the reason, so timing does
            // not tell a bad token from an unknown principal.
            auth_rejection_time: Duration::from_millis(500),
            auth_rejection_time_initial: Some(Duration::ZERO),
            max_auth_attempts: 3,
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(30)),
            nodelay: true,
            ..Default::default()
        };
        Ok(SshGateway {
            name,
            verifier,
            policies,
            store,
            jit,
            upstream,
            data_dir,
            limits: Arc::default(),
            config: Arc::new(config),
        })
    }
}

impl SshGateway {
    /// Counts failed logins in `limits` (shared with other listeners) instead of its own.
    pub fn with_login_limits(mut self, limits: Arc<AuthRateLimit>) -> Self {
        self.limits = limits;
        self
    }

    /// The rules that decide a session's requests: a `jit` policy's apply
    /// only to a session admitted under a grant (which ends with it), as on
    /// PostgreSQL; otherwise only standing policies count.
    pub(crate) fn rules(&self, principal: &Principal, grant: Option<&str>) -> Applicable<'_> {
        let applicable = self.policies.applicable(principal, &self.name);
        match grant {
            Some(_) => applicable,
            None => applicable.standing_only(),
        }
    }
}

/// Runs one client connection to its end: login, channels, the session's
/// last record. When `shutdown` flips, the client is told the gateway is
/// going away. The binary's accept loop spawns one per connection.
pub async fn run_session(
    gateway: Arc<SshGateway>,
    tcp: TcpStream,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
) {
    server::run(gateway, tcp, peer, shutdown).await
}

/// Who is on the other end of a session, for its records.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub session_id: String,
    pub addr: SocketAddr,
}

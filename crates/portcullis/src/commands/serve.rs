//! `portcullis serve`: builds the shared services once (verifier, compiled
//! policies, classifier cache, audit store, TLS, the grant/approval broker)
//! and starts every listener and the admin API.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use portcullis_config::{
    Access, AdminConfig, Config, ConnectionConfig, JitApproval, PostgresConnection, SshConnection,
    UpstreamTls,
};
use portcullis_identity::ratelimit::AuthRateLimit;
use portcullis_identity::Verifier;
use portcullis_jit::{Broker, BrokerSettings, Notifier};
use portcullis_policy::classify::facts::DeclaredFunctions;
use portcullis_policy::classify::Classifier;
use portcullis_policy::decide::PolicySet;
use portcullis_postgres::{CancelRegistry, LevelRoles, PgGateway, UpstreamAddr, UpstreamTarget};
use portcullis_records::{Seal, Store};
use portcullis_ssh::SshGateway;
use tokio::sync::watch;

use crate::listen::{accept_loop, SessionGauge};

/// Shared by every listener.
struct Services {
    verifier: Verifier,
    policies: Arc<PolicySet>,
    classifier: Arc<Classifier>,
    store: Store,
    tls: Arc<rustls::ServerConfig>,
    masker: Arc<portcullis_masking::Masker>,
    jit: Arc<Broker>,
    /// One failed-login count per address for the whole gateway: an address gets no more tries
    /// by spreading them over several listeners.
    login_limits: Arc<AuthRateLimit>,
}

/// How often ended grants are swept into `expired` records. Sessions do not
/// wait for it: each knows its grant's end.
const EXPIRY_SWEEP: std::time::Duration = std::time::Duration::from_secs(1);

/// `portcullis serve`: loads the config, then runs the gateway on a runtime of `workers` threads.
pub fn main(config_path: &Path) -> anyhow::Result<ExitCode> {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(2));
        }
    };
    crate::runtime(config.workers.map(usize::from))?.block_on(run(config_path, config))
}

async fn run(config_path: &Path, config: Config) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let policies = Arc::new(PolicySet::compile_config(&config).context("policies")?);
    let store = Store::open(&config.store)
        .with_context(|| format!("cannot open store {}", config.store))?;
    // Grants and approvals are rebuilt from the records below: only from a chain that verifies.
    let seal = open_seal(&store, &config)?;
    let base_url = config.admin.base_url();
    let notifier = Notifier::start(
        config.admin.webhooks.clone(),
        base_url.clone(),
        store.clone(),
    );
    let settings = BrokerSettings {
        approvers: config.identity.approvers.clone(),
        approval_timeout: config.admin.approval_timeout.0,
        base_url,
        sole_issuer: match config.identity.oidc.as_slice() {
            [only] => Some(only.issuer.clone()),
            _ => None,
        },
    };
    warn_if_nobody_can_approve(&config);
    let jit = Broker::open(store.clone(), policies.clone(), settings, notifier)
        .await
        .context("cannot load grants from the store")?;
    let _expiry = jit.spawn_expiry(EXPIRY_SWEEP);
    let checkpoints = spawn_checkpoints(seal.clone(), store.clone())?;
    let services = Services {
        verifier: Verifier::new(&config.identity.oidc),
        policies,
        classifier: Arc::new(Classifier::new(10_000)),
        store,
        tls: crate::tls::server_config(&config)?,
        masker: Arc::new(crate::tls::masking_key(&config)?),
        jit,
        login_limits: Arc::default(),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    tasks.push(admin_api(&services, &config.admin, stop_rx.clone()).await?);
    let gauge = SessionGauge::default();
    for connection in &config.connections {
        let listener = tokio::net::TcpListener::bind(connection.listen())
            .await
            .with_context(|| {
                format!(
                    "connection {:?}: cannot listen on {}",
                    connection.name(),
                    connection.listen()
                )
            })?;
        let (name, stop) = (connection.name().to_string(), stop_rx.clone());
        let task = match connection {
            ConnectionConfig::Postgres(pg) => {
                let gateway = postgres_gateway(&services, pg)?;
                tracing::info!(connection = %pg.name, listen = %pg.listen, upstream = %gateway.upstream.addr, "postgres listener ready");
                tokio::spawn(accept_loop(listener, name, gauge.clone(), stop, move |tcp, peer, stop| {
                    portcullis_postgres::run_session(gateway.clone(), tcp, peer, stop)
                }))
            }
            ConnectionConfig::Ssh(ssh) => {
                let gateway = Arc::new(ssh_gateway(&services, ssh, &config)?);
                tracing::info!(connection = %ssh.name, listen = %ssh.listen, upstream = %format!("{}@{}:{}", ssh.upstream.user, ssh.upstream.host, ssh.upstream.port), "ssh listener ready");
                tokio::spawn(accept_loop(listener, name, gauge.clone(), stop, move |tcp, peer, stop| {
                    portcullis_ssh::run_session(gateway.clone(), tcp, peer, stop)
                }))
            }
            other => bail!(
                "connection {:?}: type {} is not supported by this build yet (postgres and ssh are)",
                other.name(),
                other.type_name()
            ),
        };
        tasks.push(task);
    }
    tracing::info!(
        config = %config_path.display(),
        store = %config.store,
        workers = tokio::runtime::Handle::current().metrics().num_workers(),
        "portcullis is serving"
    );
    wait_for_shutdown().await;
    tracing::info!("shutting down: no new connections; flushing records");
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
    // Sessions end (57P01, an SSH disconnect) and write their last records;
    // give them a moment.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while gauge.live() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    services
        .store
        .flush()
        .await
        .context("flushing audit records")?;
    let (stop_signing, signer) = checkpoints;
    drop(stop_signing);
    let _ = signer.join();
    seal.checkpoint(&services.store)
        .context("signing the last audit checkpoint")?;
    Ok(ExitCode::SUCCESS)
}

/// Verifies the chain against its signed checkpoints (fail closed: the gateway does not start
/// on a rewritten chain) and signs its head.
fn open_seal(store: &Store, config: &Config) -> anyhow::Result<Arc<Seal>> {
    let key = config.audit_signing_key();
    let opened = Seal::open(store, &key).with_context(|| {
        format!(
            "refusing to start: grants and approvals would be rebuilt from audit records that do not verify; \
             `portcullis audit verify` names the record. To start afresh, move the store ({}) and {} aside",
            config.store,
            portcullis_records::checkpoints_path(&key).display()
        )
    })?;
    if opened.new_key {
        tracing::warn!(key = %key.display(), fingerprint = %opened.seal.fingerprint(), records = opened.report.checked,
            "created a new audit signing key: the records before this start were checked by their hash chain only; keep this fingerprint somewhere the gateway host cannot rewrite");
    } else {
        tracing::info!(key = %key.display(), fingerprint = %opened.seal.fingerprint(), records = opened.report.checked,
            checkpoints = opened.report.checkpoints, "audit chain verified against its signed checkpoints");
    }
    Ok(Arc::new(opened.seal))
}

/// How often the chain's head is signed while records are written.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Signs on a thread of its own: a checkpoint ends in an `fdatasync`, which must not stall a
/// relay worker. Stops when the returned sender is dropped.
fn spawn_checkpoints(
    seal: Arc<Seal>,
    store: Store,
) -> anyhow::Result<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("portcullis-audit-seal".into())
        .spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(CHECKPOINT_EVERY)
            {
                if let Err(e) = seal.checkpoint(&store) {
                    tracing::error!(error = %e, "cannot write an audit checkpoint; will retry");
                }
            }
        })
        .context("cannot start the audit checkpoint thread")?;
    Ok((stop, thread))
}

fn postgres_gateway(
    services: &Services,
    pg: &PostgresConnection,
) -> anyhow::Result<Arc<PgGateway>> {
    let password = pg
        .upstream
        .password_source()
        .resolve()
        .map_err(|e| anyhow::anyhow!("connection {:?}: {e}", pg.name))?;
    let roles = LevelRoles::from_config(&pg.upstream.users)
        .map_err(|e| anyhow::anyhow!("connection {:?}: upstream.{e}", pg.name))?;
    let upstream = UpstreamTarget {
        addr: UpstreamAddr::from_config(&pg.upstream),
        database: pg.upstream.database.clone(),
        user: pg.upstream.user.clone(),
        password,
        tls: pg.upstream.tls,
        tls_config: upstream_tls(pg)?,
        channel_binding: pg.upstream.channel_binding,
        insecure_password_auth: pg.upstream.insecure_password_auth,
    };
    Ok(Arc::new(PgGateway {
        name: pg.name.clone(),
        verifier: services.verifier.clone(),
        policies: services.policies.clone(),
        classifier: services.classifier.clone(),
        store: services.store.clone(),
        tls: Some(services.tls.clone()),
        allow_plaintext: pg.insecure_plaintext,
        upstream,
        roles,
        cancels: Arc::new(CancelRegistry::default()),
        masker: services.masker.clone(),
        catalog: Default::default(),
        functions: DeclaredFunctions::from_config(&pg.functions),
        jit: services.jit.clone(),
        limits: services.login_limits.clone(),
    }))
}

/// Held statements and `approval: required` grants wait for an approver; with
/// none configured they can only time out, which is legal but rarely meant.
fn warn_if_nobody_can_approve(config: &Config) {
    let approvers = &config.identity.approvers;
    if !approvers.principals.is_empty() || !approvers.groups.is_empty() {
        return;
    }
    for p in &config.policies {
        let needs_human = !p.require_approval.is_empty()
            || matches!(&p.access, Access::Jit(j) if j.approval == JitApproval::Required);
        if needs_human {
            tracing::warn!(policy = %p.name, "policy needs an approver but identity.approvers is empty: its held statements will time out and its grants cannot be approved");
        }
    }
}

/// Binds the admin API now, so a taken port fails `serve` at start rather
/// than leaving approvers without a way in.
async fn admin_api(
    services: &Services,
    admin: &AdminConfig,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listen = &admin.listen;
    let tls = admin.tls.then(|| services.tls.clone());
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("admin API: cannot listen on {listen}"))?;
    let app = crate::admin::router(crate::admin::AdminState {
        verifier: services.verifier.clone(),
        broker: services.jit.clone(),
        store: services.store.clone(),
        limits: services.login_limits.clone(),
    });
    tracing::info!(listen = %listen, tls = tls.is_some(), "admin API ready");
    Ok(tokio::spawn(crate::admin::serve(listener, app, tls, stop)))
}

fn ssh_gateway(
    services: &Services,
    ssh: &SshConnection,
    config: &Config,
) -> anyhow::Result<SshGateway> {
    let upstream = portcullis_ssh::UpstreamTarget::from_config(&ssh.upstream)
        .with_context(|| format!("connection {:?}: upstream", ssh.name))?;
    SshGateway::new(
        ssh.name.clone(),
        services.verifier.clone(),
        services.policies.clone(),
        services.store.clone(),
        services.jit.clone(),
        upstream,
        config.data_dir.clone(),
    )
    .map(|gw| gw.with_login_limits(services.login_limits.clone()))
    .with_context(|| format!("connection {:?}", ssh.name))
}

fn upstream_tls(pg: &PostgresConnection) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    if pg.upstream.tls != UpstreamTls::VerifyFull {
        return Ok(portcullis_postgres::proxy::stream::upstream_tls_config(
            None,
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    match &pg.upstream.ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read ca_file {}", path.display()))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                roots
                    .add(cert.with_context(|| format!("{}: bad PEM", path.display()))?)
                    .with_context(|| format!("{}: unusable CA certificate", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(portcullis_postgres::proxy::stream::upstream_tls_config(
        Some(roots),
    ))
}

async fn wait_for_shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
}

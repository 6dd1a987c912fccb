//! `portcullis serve`: builds the shared services once (verifier, compiled
//! policies, classifier cache, audit store, TLS) and starts every listener.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use portcullis_config::{Config, ConnectionConfig, PostgresConnection, SshConnection, UpstreamTls};
use portcullis_identity::Verifier;
use portcullis_policy::classify::Classifier;
use portcullis_policy::decide::PolicySet;
use portcullis_postgres::{CancelRegistry, PgGateway, UpstreamTarget};
use portcullis_records::Store;
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
}

pub async fn run(config_path: &Path) -> anyhow::Result<ExitCode> {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(2));
        }
    };
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let services = Services {
        verifier: Verifier::new(&config.identity.oidc),
        policies: Arc::new(PolicySet::compile_config(&config).context("policies")?),
        classifier: Arc::new(Classifier::new(10_000)),
        store: Store::open(&config.store)
            .with_context(|| format!("cannot open store {}", config.store))?,
        tls: crate::tls::server_config(&config)?,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
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
                tracing::info!(connection = %pg.name, listen = %pg.listen, upstream = %format!("{}:{}", pg.upstream.host, pg.upstream.port), "postgres listener ready");
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
    tracing::info!(config = %config_path.display(), store = %config.store, "portcullis is serving");
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
    Ok(ExitCode::SUCCESS)
}

fn postgres_gateway(
    services: &Services,
    pg: &PostgresConnection,
) -> anyhow::Result<Arc<PgGateway>> {
    let password = pg
        .upstream
        .resolve_password()
        .map_err(|e| anyhow::anyhow!("connection {:?}: {e}", pg.name))?;
    let upstream = UpstreamTarget {
        host: pg.upstream.host.clone(),
        port: pg.upstream.port,
        database: pg.upstream.database.clone(),
        user: pg.upstream.user.clone(),
        password,
        tls: pg.upstream.tls,
        tls_config: upstream_tls(pg)?,
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
        cancels: Arc::new(CancelRegistry::default()),
    }))
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
        upstream,
        config.data_dir.clone(),
    )
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

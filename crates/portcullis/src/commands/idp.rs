//! `dev-idp` and `token`: a local issuer for trials, and its client.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use portcullis_identity::client::{request_token, TokenRequest};
use portcullis_identity::dev_idp::{self, DevIdpOptions};

pub async fn dev_idp(listen: &str, alg: &str) -> anyhow::Result<ExitCode> {
    let alg = alg
        .parse()
        .map_err(|e| anyhow::anyhow!("--alg {alg}: {e}"))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let issuer = format!("http://{addr}");
    eprintln!(
        "portcullis dev-idp: DEVELOPMENT ONLY issuer at {issuer} — never trust it in production"
    );
    dev_idp::serve(listener, DevIdpOptions { issuer, alg }).await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn token(
    issuer: &str,
    sub: String,
    groups: Vec<String>,
    audience: String,
    ttl: Duration,
) -> anyhow::Result<ExitCode> {
    let request = TokenRequest {
        sub,
        groups: groups.into_iter().filter(|g| !g.is_empty()).collect(),
        audience,
        ttl,
    };
    let jwt = request_token(issuer, &request)
        .await
        .with_context(|| format!("cannot get a token from {issuer}"))?;
    println!("{jwt}");
    Ok(ExitCode::SUCCESS)
}

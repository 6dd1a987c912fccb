//! One client connection from the first byte to the relay: TLS, startup,
//! token authentication, policy admission, upstream login. Every attempt,
//! failed or not, leaves a `connection_attempt` record with its reason.
//!
//! Failed logins count against the source address in the listener's
//! [`AuthRateLimit`](portcullis_identity::ratelimit::AuthRateLimit), as on
//! SSH: an address over the limit is refused once its StartupMessage is
//! read, before it is asked for a token, so it costs no verification. What
//! counts is decided where each refusal is made ([`Refusal::failed_login`]).
//! A successful login clears nothing, as on SSH: one valid token
//! interleaved with guesses must not buy more guesses.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use portcullis_identity::ratelimit::lockout_message;
use portcullis_identity::Principal;
use portcullis_jit::GrantLease;
use portcullis_records::{NewRecord, RecordKind};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::codec::backend::{self, sqlstate, ErrorFields};
use crate::codec::frontend::password_text;
use crate::codec::startup::{decode_startup, StartupPacket};
use crate::codec::{decode_frame, Frame, MAX_STARTUP_LEN};

use super::settings;
use super::stream::MaybeTls;
use super::upstream::{self, Upstream};
use super::{relay, startup_params, PgGateway, SessionRole};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a connection did not become a session; each becomes the client's
/// FATAL error and the attempt's recorded reason.
struct Refusal {
    /// Boxed to keep `Result<_, Refusal>` small on the paths that succeed.
    error: Box<ErrorFields>,
    principal: Option<String>,
    limit: Limit,
}

/// What a refusal means for the source address's failed-login count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    /// Not a failed login: the client went away or timed out (a TCP health
    /// check; psql hanging up at the password request to prompt for one),
    /// asked for something the listener does not offer, or the gateway or
    /// the upstream failed. Nothing was guessed, so nothing counts.
    Exempt,
    /// A refused credential, or bytes that are not the PostgreSQL protocol
    /// (cheap for a scanner or a fuzzer to send, so as limited as a guess).
    Counts,
    /// Refused by the limit itself: not counted again, so the window still
    /// closes a minute after it opened.
    Exceeded,
}

impl Refusal {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            error: Box::new(ErrorFields::fatal(code, message)),
            principal: None,
            limit: Limit::Exempt,
        }
    }

    /// Counts this refusal against the client's address.
    fn failed_login(mut self) -> Self {
        self.limit = Limit::Counts;
        self
    }

    /// 28000 like the gateway's other refusals of a client it has not
    /// judged the password of: 28P01 would say the token was wrong, and it
    /// was never looked at.
    fn over_limit(ip: IpAddr, retry_after: Duration) -> Self {
        Self {
            limit: Limit::Exceeded,
            ..Self::new(
                sqlstate::INVALID_AUTHORIZATION,
                lockout_message(ip, retry_after),
            )
        }
    }

    fn of(mut self, principal: &Principal) -> Self {
        self.principal = Some(principal.name.clone());
        self
    }
}

pub(crate) struct Client {
    pub stream: MaybeTls,
    pub buf: BytesMut,
    pub peer: SocketAddr,
}

pub(crate) async fn run(
    gw: Arc<PgGateway>,
    tcp: TcpStream,
    peer: SocketAddr,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let mut client = Client {
        stream: MaybeTls::Plain(tcp),
        buf: BytesMut::with_capacity(8192),
        peer,
    };
    let session_id = uuid::Uuid::new_v4().to_string();
    let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&gw, &mut client)).await;
    let admitted = match outcome {
        Ok(Ok(Some(admitted))) => admitted,
        Ok(Ok(None)) => return,
        Ok(Err(refusal)) => return refuse(&gw, &mut client, &session_id, refusal).await,
        Err(_) => {
            let refusal = Refusal::new(
                sqlstate::PROTOCOL_VIOLATION,
                "startup did not complete within 30 s",
            );
            return refuse(&gw, &mut client, &session_id, refusal).await;
        }
    };
    let Admitted {
        principal,
        upstream,
        role,
        client_params,
        grant,
    } = admitted;
    let grant_id = grant.as_ref().map(|g| g.id.as_str());
    let admission = Admission {
        principal: &principal,
        role: &role,
        params: &client_params,
        grant: grant_id,
    };
    if let Err(refusal) = record_admission(&gw, &client, &session_id, admission).await {
        return refuse(&gw, &mut client, &session_id, refusal).await;
    }
    tracing::info!(
        session = %session_id, connection = %gw.name, principal = %principal.name,
        token = %principal.token_fingerprint, client = %peer, grant = grant_id.unwrap_or("-"),
        upstream_user = %role.user, "session started"
    );
    relay::run(
        gw,
        client,
        upstream,
        (principal, role),
        session_id,
        grant,
        shutdown,
    )
    .await;
}

struct Admitted {
    principal: Principal,
    upstream: Upstream,
    /// The role the upstream session logged in as.
    role: SessionRole,
    client_params: Vec<(String, String)>,
    /// The grant the session depends on, when admitted through one.
    grant: Option<GrantLease>,
}

async fn handshake(gw: &PgGateway, client: &mut Client) -> Result<Option<Admitted>, Refusal> {
    let Some(params) = read_startup(gw, client).await? else {
        return Ok(None);
    };
    // Not checked any earlier: libpq does not show an error sent in reply
    // to SSLRequest (CVE-2024-10977), so the client would not learn why.
    let ip = client.peer.ip();
    if let Some(wait) = gw.limits.retry_after(ip, Instant::now()) {
        return Err(Refusal::over_limit(ip, wait));
    }
    if !client.stream.is_tls() && !gw.allow_plaintext {
        return Err(Refusal::new(
            sqlstate::INVALID_AUTHORIZATION,
            "this gateway requires TLS: connect with sslmode=require (the token is sent as the password)",
        ));
    }
    if StartupPacket::param(&params, "replication").is_some_and(|v| v != "false" && v != "0") {
        return Err(Refusal::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "replication connections are not allowed through the gateway",
        ));
    }
    let forwarded = startup_params::upstream_params(&params)
        .map_err(|refused| Refusal::new(refused.code, refused.message))?;
    let token = read_token(client).await?;
    let principal = gw.verifier.verify(&token).await.map_err(|e| {
        Refusal::new(sqlstate::INVALID_PASSWORD, format!("token rejected: {e}")).failed_login()
    })?;
    // A genuine token without access counts too, as on SSH: to the client
    // it is a refused login like any other, and it cost a verification.
    let grant = admit(gw, &principal)
        .await
        .map_err(|r| r.of(&principal).failed_login())?;
    let level = gw.session_policies(&principal, grant.is_some()).level();
    let (target, role) = gw.roles.session_target(&gw.upstream, level);
    let upstream = upstream::connect(&target, &forwarded).await.map_err(|e| {
        tracing::warn!(connection = %gw.name, error = %e, "upstream login failed");
        Refusal::new(
            sqlstate::UNABLE_TO_CONNECT,
            format!("upstream unavailable: {e}"),
        )
        .of(&principal)
    })?;
    check_upstream_parameters(&upstream).map_err(|r| r.of(&principal))?;
    Ok(Some(Admitted {
        principal,
        upstream,
        role,
        client_params: params,
        grant,
    }))
}

/// Admits a principal some policy applies to: through a grant in force when
/// it holds one (its `jit` rules then apply too, and the session ends with
/// the grant), else through a standing policy, else not at all.
async fn admit(gw: &PgGateway, principal: &Principal) -> Result<Option<GrantLease>, Refusal> {
    let applicable = gw.policies.applicable(principal, &gw.name);
    if applicable.is_empty() {
        return Err(Refusal::new(
            sqlstate::INVALID_AUTHORIZATION,
            format!(
                "principal \"{}\" has no access to connection \"{}\": no policy matches (default deny)",
                principal.name, gw.name
            ),
        ));
    }
    if applicable.jit_terms().is_some() {
        if let Some(lease) = gw.jit.lease(principal, &gw.name).await {
            return Ok(Some(lease));
        }
    }
    if applicable.standing_only().is_empty() {
        return Err(Refusal::new(
            sqlstate::INVALID_AUTHORIZATION,
            format!(
                "principal \"{}\" has just-in-time access to connection \"{}\" and no active grant; request one with `portcullis grants request --connection {} --duration 15m --reason ...`",
                principal.name, gw.name, gw.name
            ),
        ));
    }
    Ok(None)
}

/// A role or database default (`ALTER ROLE ... SET client_encoding`) can
/// start the upstream session outside the gateway's model; such a session
/// is refused rather than relayed (see `settings`).
fn check_upstream_parameters(upstream: &Upstream) -> Result<(), Refusal> {
    match settings::login_refusal(&upstream.parameters) {
        Some(why) => Err(Refusal::new(sqlstate::FEATURE_NOT_SUPPORTED, why)),
        None => Ok(()),
    }
}

/// Handles SSLRequest / GSSENCRequest / CancelRequest until the real
/// StartupMessage arrives. `None` when the connection was only a cancel.
async fn read_startup(
    gw: &PgGateway,
    client: &mut Client,
) -> Result<Option<Vec<(String, String)>>, Refusal> {
    loop {
        let packet = loop {
            match decode_startup(&mut client.buf) {
                Ok(Some(p)) => break p,
                Ok(None) => read_more(client, MAX_STARTUP_LEN).await?,
                Err(e) => {
                    return Err(
                        Refusal::new(sqlstate::PROTOCOL_VIOLATION, e.to_string()).failed_login()
                    )
                }
            }
        };
        match packet {
            StartupPacket::SslRequest => start_tls(gw, client).await?,
            StartupPacket::GssEncRequest => write(client, b"N").await?,
            StartupPacket::Cancel {
                process_id,
                secret_key,
            } => {
                gw.cancels.cancel(process_id, secret_key).await;
                return Ok(None);
            }
            StartupPacket::Startup { params } => return Ok(Some(params)),
            StartupPacket::UnsupportedVersion { major, minor } => {
                return Err(Refusal::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!(
                        "unsupported frontend protocol {major}.{minor}: the gateway speaks 3.0"
                    ),
                ))
            }
        }
    }
}

async fn start_tls(gw: &PgGateway, client: &mut Client) -> Result<(), Refusal> {
    let tls = match (&gw.tls, client.stream.is_tls()) {
        (Some(tls), false) => tls.clone(),
        (_, true) => {
            return Err(
                Refusal::new(sqlstate::PROTOCOL_VIOLATION, "SSLRequest inside TLS").failed_login(),
            )
        }
        (None, false) => return write(client, b"N").await,
    };
    // Bytes sent before the handshake would be read as if they came through
    // TLS (CVE-2021-23214); PostgreSQL refuses them, so do we.
    if !client.buf.is_empty() {
        return Err(Refusal::new(
            sqlstate::PROTOCOL_VIOLATION,
            "received unencrypted data after SSL request",
        )
        .failed_login());
    }
    write(client, b"S").await?;
    let MaybeTls::Plain(tcp) = MaybeTls::take(&mut client.stream) else {
        return Err(Refusal::new(
            sqlstate::PROTOCOL_VIOLATION,
            "SSLRequest inside TLS",
        ));
    };
    let accepted = tokio_rustls::TlsAcceptor::from(tls)
        .accept(tcp)
        .await
        .map_err(|e| {
            Refusal::new(
                sqlstate::PROTOCOL_VIOLATION,
                format!("TLS handshake failed: {e}"),
            )
        })?;
    client.stream = MaybeTls::ServerTls(Box::new(accepted));
    Ok(())
}

async fn read_token(client: &mut Client) -> Result<String, Refusal> {
    write(client, &backend::encode_auth_cleartext(BytesMut::new())).await?;
    let frame = read_frame(client).await?;
    if frame.tag != b'p' {
        return Err(
            Refusal::new(sqlstate::PROTOCOL_VIOLATION, "expected a password message")
                .failed_login(),
        );
    }
    let token = password_text(&frame.body)
        .map_err(|e| Refusal::new(sqlstate::PROTOCOL_VIOLATION, e.to_string()).failed_login())?;
    if token.is_empty() {
        return Err(Refusal::new(
            sqlstate::INVALID_PASSWORD,
            "no token: pass your OIDC token as the password (PGPASSWORD)",
        )
        .failed_login());
    }
    Ok(token.to_string())
}

async fn read_frame(client: &mut Client) -> Result<Frame, Refusal> {
    loop {
        match decode_frame(&mut client.buf, 64 * 1024) {
            Ok(Some(f)) => return Ok(f),
            Ok(None) => read_more(client, 64 * 1024).await?,
            Err(e) => {
                return Err(Refusal::new(sqlstate::PROTOCOL_VIOLATION, e.to_string()).failed_login())
            }
        }
    }
}

async fn read_more(client: &mut Client, limit: usize) -> Result<(), Refusal> {
    if client.buf.len() > limit {
        return Err(
            Refusal::new(sqlstate::PROTOCOL_VIOLATION, "startup packet too large").failed_login(),
        );
    }
    match client.stream.read_buf(&mut client.buf).await {
        Ok(0) => Err(Refusal::new(
            sqlstate::PROTOCOL_VIOLATION,
            "client closed the connection during startup",
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(Refusal::new(
            sqlstate::PROTOCOL_VIOLATION,
            format!("read failed: {e}"),
        )),
    }
}

async fn write(client: &mut Client, bytes: &[u8]) -> Result<(), Refusal> {
    client
        .stream
        .write_all(bytes)
        .await
        .map_err(|e| Refusal::new(sqlstate::CONNECTION_FAILURE, format!("write failed: {e}")))
}

/// Who was admitted, as what, and under which grant: what the session's
/// first records say.
struct Admission<'a> {
    principal: &'a Principal,
    role: &'a SessionRole,
    params: &'a [(String, String)],
    grant: Option<&'a str>,
}

async fn record_admission(
    gw: &PgGateway,
    client: &Client,
    session_id: &str,
    admission: Admission<'_>,
) -> Result<(), Refusal> {
    let Admission {
        principal,
        role,
        params,
        grant,
    } = admission;
    let attempt = attempt_record(gw, client, session_id, "ok", None)
        .principal(principal.name.clone())
        .detail(json!({
            "client_addr": client.peer.to_string(),
            "tls": client.stream.is_tls(),
            "issuer": principal.issuer,
            "token": principal.token_fingerprint,
            "groups": principal.groups,
        }));
    let start = NewRecord::new(RecordKind::SessionStart)
        .session_id(session_id)
        .principal(principal.name.clone())
        .connection(gw.name.clone())
        .detail(json!({
            "client_addr": client.peer.to_string(),
            "protocol": "postgres",
            "application_name": StartupPacket::param(params, "application_name"),
            "client_user": StartupPacket::param(params, "user"),
            "client_database": StartupPacket::param(params, "database"),
            "grant": grant,
            "upstream_user": role.user,
            "upstream_level": role.level,
        }));
    for record in [attempt, start] {
        gw.store.append(record).await.map_err(|e| {
            Refusal::new(
                sqlstate::SYSTEM_ERROR,
                format!("audit store unavailable, so the session cannot be recorded: {e}"),
            )
        })?;
    }
    Ok(())
}

fn attempt_record(
    gw: &PgGateway,
    client: &Client,
    session_id: &str,
    decision: &str,
    reason: Option<&str>,
) -> NewRecord {
    NewRecord::new(RecordKind::ConnectionAttempt)
        .session_id(session_id)
        .connection(gw.name.clone())
        .decision(decision)
        .detail(json!({ "client_addr": client.peer.to_string(), "reason": reason }))
}

async fn refuse(gw: &PgGateway, client: &mut Client, session_id: &str, refusal: Refusal) {
    let reason = refusal.error.message.clone();
    let mut record = attempt_record(gw, client, session_id, "deny", Some(&reason));
    if let Some(p) = &refusal.principal {
        record = record.principal(p.clone());
    }
    tracing::info!(
        session = %session_id, connection = %gw.name, client = %client.peer,
        principal = refusal.principal.as_deref().unwrap_or("-"), reason = %reason,
        "connection refused"
    );
    if refusal.limit == Limit::Counts {
        gw.limits.failed(client.peer.ip(), Instant::now());
    }
    // The refusal is sent whether or not the record lands: nothing runs
    // either way, and the client deserves to know why. Over the limit it is
    // not awaited, so a flood of refused attempts does not queue on the store.
    if refusal.limit == Limit::Exceeded {
        gw.store.append_detached(record);
    } else if let Err(e) = gw.store.append(record).await {
        tracing::error!(error = %e, "could not record refused connection");
    }
    let _ = client
        .stream
        .write_all(&refusal.error.encode(BytesMut::new()))
        .await;
    let _ = client.stream.shutdown().await;
}

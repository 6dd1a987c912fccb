//! The relay: two halves polled by one task. `ClientSide` reads client
//! messages, decides each statement once, records it (committed) and only
//! then forwards it (`client.rs`). `ServerSide` streams upstream bytes
//! back, noting completions for the result records and swapping in the
//! gateway's own ErrorResponse where a refused statement was
//! (`server.rs`); for principals with `mask:` rules it rewrites results on
//! the way (`server/masked.rs`).
//!
//! A refused statement is replaced upstream by a "poison" message: a Describe
//! of a statement name that cannot exist, followed by what the client's batch
//! ends with. The upstream then fails exactly where the refused statement
//! stood, so implicit-transaction rollback, skip-to-Sync and failed explicit
//! transactions all behave as if PostgreSQL itself had refused it; the
//! upstream's 26000 error is replaced on the way back by our 42501.
//!
//! A statement policy holds for approval stops the client side where it
//! stands: nothing after it is decided or forwarded until an approver
//! answers, so message order is kept in both protocols, while the client
//! socket is still read (into the buffer) to notice a disconnect. A session
//! admitted through a grant ends when the grant does.

mod client;
mod names;
mod server;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::BytesMut;
use portcullis_identity::Principal;
use portcullis_jit::GrantLease;
use portcullis_masking::MaskRules;
use portcullis_policy::classify::Classification;
use portcullis_records::{NewRecord, RecordKind};
use serde_json::json;
use tokio::io::{AsyncWrite, AsyncWriteExt, WriteHalf};

use crate::codec::backend::{self, sqlstate, ErrorFields};
use crate::codec::frontend::encode_terminate;

use crate::proxy::mask::{SessionMask, Tally};
use crate::proxy::output::OutputSample;
use crate::proxy::session::Client;
use crate::proxy::settings::Watched;
use crate::proxy::stream::MaybeTls;
use crate::proxy::upstream::Upstream;
use crate::proxy::{PgGateway, SessionRole};

use client::ClientSide;
use names::{Change, Names};
use server::ServerSide;

pub(crate) async fn run(
    gw: Arc<PgGateway>,
    client: Client,
    upstream: Upstream,
    (principal, role): (Principal, SessionRole),
    session_id: String,
    mut grant: Option<GrantLease>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let started = Instant::now();
    let Client {
        stream: client_stream,
        buf: client_buf,
        peer: _,
    } = client;
    let (mut client_read, mut client_write) = tokio::io::split(client_stream);
    let Upstream {
        stream: upstream_stream,
        parameters,
        backend_key,
        pending,
    } = upstream;
    let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream_stream);

    let registration =
        backend_key.and_then(|key| gw.cancels.register(gw.upstream.addr.clone(), key));
    if greet(&mut client_write, &parameters, registration.as_ref())
        .await
        .is_err()
    {
        return;
    }

    let expectations = Mutex::new(VecDeque::new());
    let names = Mutex::new(Names::default());
    // The last Sync group the upstream has answered; the client half waits
    // on it before reading names an unanswered group may have changed.
    let (settled_tx, settled_rx) = tokio::sync::watch::channel(0u64);
    let applicable = gw.session_policies(&principal, grant.is_some());
    let (notice_tx, notice_rx) = tokio::sync::mpsc::unbounded_channel();
    let mask = match MaskRules::compile(applicable.masks()) {
        Ok(rules) => rules.map(|rules| SessionMask::new(rules, gw.masker.clone())),
        Err(e) => {
            // The validator refuses such configs; if one slips through,
            // the session must not run unmasked.
            tracing::error!(session = %session_id, error = %e, "mask rules do not compile");
            let error = ErrorFields::fatal(
                sqlstate::SYSTEM_ERROR,
                format!("masking is misconfigured: {e}"),
            );
            let _ = client_write.write_all(&error.encode(BytesMut::new())).await;
            return;
        }
    };
    let mut decider = ClientSide::new(
        &gw,
        applicable,
        mask.as_ref(),
        (&principal, &session_id),
        (&expectations, &names, settled_rx),
        grant.as_ref().map(|g| g.id.clone()),
        role,
        notice_tx,
        registration.as_ref().map(|r| r.cancelled.clone()),
    );
    let mut responder = ServerSide::new(
        &gw,
        &session_id,
        (&expectations, &names, settled_tx),
        mask.as_ref(),
        notice_rx,
        Watched::at_login(&parameters),
    );
    let end = tokio::select! {
        end = decider.run(&mut client_read, client_buf, &mut upstream_write) => end,
        end = responder.run(&mut upstream_read, pending, &mut client_write) => end,
        _ = shutdown.wait_for(|stop| *stop) => End::Shutdown,
        reason = grant_ended(&mut grant) => End::GrantEnded(reason),
    };
    decider.abandon_hold();
    responder.flush_results();
    finish(
        &gw,
        &session_id,
        &principal,
        started,
        &decider,
        &end,
        &mut client_write,
    )
    .await;
    let _ = upstream_write
        .write_all(&encode_terminate(BytesMut::new()))
        .await;
}

/// Resolves when the client cancels; never without a cancel key.
async fn cancel_requested(cancelled: Option<&tokio::sync::Notify>) {
    match cancelled {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the session's grant ends; never without a grant.
async fn grant_ended(grant: &mut Option<GrantLease>) -> String {
    match grant {
        Some(lease) => lease.ended().await,
        None => std::future::pending().await,
    }
}

/// Why a session ended.
#[derive(Debug)]
enum End {
    ClientTerminated,
    ClientGone,
    UpstreamGone,
    ClientProtocol(String),
    UpstreamProtocol(String),
    Shutdown,
    /// The grant the session was admitted under expired or was revoked.
    GrantEnded(String),
    /// The server reported a setting the gateway's decisions rest on moved
    /// (see `proxy::settings`).
    StateChanged(String),
}

impl End {
    fn describe(&self) -> String {
        match self {
            Self::ClientTerminated => "client terminated".into(),
            Self::ClientGone => "client disconnected".into(),
            Self::UpstreamGone => "upstream closed the connection".into(),
            Self::ClientProtocol(e) => format!("client protocol violation: {e}"),
            Self::UpstreamProtocol(e) => format!("upstream protocol error: {e}"),
            Self::Shutdown => "the gateway is shutting down".into(),
            Self::GrantEnded(reason) => format!("access ended: {reason}"),
            Self::StateChanged(why) => format!("session state left the gateway's model: {why}"),
        }
    }

    /// The FATAL error the client is sent, when it is still there to read it.
    fn client_error(&self) -> Option<ErrorFields> {
        let (code, msg) = match self {
            Self::ClientTerminated | Self::ClientGone => return None,
            Self::UpstreamGone => (sqlstate::CONNECTION_FAILURE, self.describe()),
            Self::ClientProtocol(_) => (sqlstate::PROTOCOL_VIOLATION, self.describe()),
            Self::UpstreamProtocol(_) => (sqlstate::CONNECTION_FAILURE, self.describe()),
            Self::Shutdown | Self::GrantEnded(_) => (sqlstate::ADMIN_SHUTDOWN, self.describe()),
            Self::StateChanged(_) => (sqlstate::FEATURE_NOT_SUPPORTED, self.describe()),
        };
        Some(ErrorFields::fatal(code, msg))
    }
}

async fn greet<W: AsyncWrite + Unpin>(
    client: &mut W,
    parameters: &[(String, String)],
    registration: Option<&super::cancel::Registration>,
) -> std::io::Result<()> {
    let mut out = backend::encode_auth_ok(BytesMut::with_capacity(512));
    for (k, v) in parameters {
        out = backend::encode_parameter_status(out, k, v);
    }
    if let Some(r) = registration {
        out = backend::encode_backend_key(out, r.pid.0, r.secret);
    }
    out = backend::encode_ready_for_query(out, b'I');
    client.write_all(&out).await
}

async fn finish(
    gw: &PgGateway,
    session_id: &str,
    principal: &Principal,
    started: Instant,
    decider: &ClientSide<'_>,
    end: &End,
    client: &mut WriteHalf<MaybeTls>,
) {
    if let Some(error) = end.client_error() {
        let _ = client.write_all(&error.encode(BytesMut::new())).await;
    }
    let _ = client.shutdown().await;
    let record = NewRecord::new(RecordKind::SessionEnd)
        .session_id(session_id)
        .principal(principal.name.clone())
        .connection(gw.name.clone())
        .detail(json!({
            "reason": end.describe(),
            "duration_us": started.elapsed().as_micros() as u64,
            "statements": decider.statements,
            "denied": decider.denied,
            "grant": decider.grant,
        }));
    gw.store.append_detached(record);
    tracing::info!(session = %session_id, reason = %end.describe(), "session ended");
}

/// What the server side should expect, in upstream response order.
#[derive(Debug)]
enum Expect {
    /// A forwarded Query or Execute whose completion gets a result record.
    Statement(Tracker),
    /// A refusal stands here: the upstream's error for `name` is replaced.
    Poison { name: String, error: ErrorFields },
    /// A Sync or Query was forwarded: the next ReadyForQuery closes the
    /// group, numbered in the order the client half sent them; `simple`
    /// for a Query, which drops the unnamed statement and portal.
    SyncPoint { group: u64, simple: bool },
    /// A Parse, Bind or Close was forwarded: its change to the server's
    /// names takes effect at ParseComplete, BindComplete or CloseComplete.
    Change(Change),
    /// A Describe was forwarded (masking sessions only): its RowDescription
    /// or NoData gives a portal's shape; `swallow` when the gateway sent it
    /// itself and the client must not see the answer.
    Describe {
        portal: Option<String>,
        swallow: bool,
    },
}

#[derive(Debug)]
struct Tracker {
    record_id: i64,
    started: Instant,
    /// A simple Query completes at ReadyForQuery (it may hold many statements).
    whole_query: bool,
    rows: u64,
    bytes: u64,
    completed: bool,
    error: Option<String>,
    /// The portal an Execute runs: its rows take that portal's shape.
    portal: Option<String>,
    /// A DDL statement: the catalog cache is dropped when it completes.
    ddl: bool,
    /// What masking changed in this statement's results.
    masked: Option<Box<Tally>>,
    /// SQL `PREPARE` / `DEALLOCATE` / `DISCARD ALL` in the statement, in
    /// order: each takes effect at its own CommandComplete.
    changes: Vec<Change>,
    /// What was run (`None`: a portal the gateway did not prepare), for
    /// masking to tell whether it may read a declared column.
    statement: Option<Arc<Classification>>,
    /// That answer, once masking needed it.
    reads_declared: Option<bool>,
    /// The first rows the client received.
    output: OutputSample,
}

impl Tracker {
    fn new(
        record_id: i64,
        whole_query: bool,
        portal: Option<&str>,
        statement: Option<Arc<Classification>>,
        changes: Vec<Change>,
    ) -> Self {
        let ddl = statement.as_deref().is_some_and(client::is_ddl);
        Self {
            record_id,
            started: Instant::now(),
            whole_query,
            rows: 0,
            bytes: 0,
            completed: false,
            error: None,
            portal: portal.map(str::to_string),
            ddl,
            masked: None,
            changes,
            statement,
            reads_declared: None,
            output: OutputSample::default(),
        }
    }
}

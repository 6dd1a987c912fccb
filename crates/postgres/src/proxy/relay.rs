//! The relay: two halves polled by one task. `ClientSide` reads client
//! messages, decides each statement once, records it (committed) and only
//! then forwards it. `ServerSide` streams upstream bytes back untouched,
//! noting completions for the result records and swapping in the gateway's
//! own ErrorResponse where a refused statement was.
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

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Buf, BytesMut};
use portcullis_identity::Principal;
use portcullis_jit::{ApprovalStatus, GrantLease, Held, HoldRequest};
use portcullis_masking::{Expressions, MaskRules};
use portcullis_policy::classify::{Classification, ClassifyError, StatementClass};
use portcullis_policy::decide::{Applicable, Decision, Verdict};
use portcullis_records::{NewRecord, RecordKind};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::codec::backend::{
    self, command_rows, error_field, parse_error_fields, sqlstate, ErrorFields,
};
use crate::codec::frontend::{
    encode_describe, encode_flush, encode_sync, encode_terminate, FrontendMessage,
};
use crate::codec::rows::parse_row_description;
use crate::codec::{decode_frame, peek_frame_len, CodecError, Frame};

use super::hold;
use super::mask::{SessionMask, Shape, Tally};
use super::output::OutputSample;
use super::session::Client;
use super::stream::MaybeTls;
use super::upstream::Upstream;
use super::PgGateway;

/// Upstream messages can be as large as PostgreSQL allows.
const MAX_BACKEND_MESSAGE: usize = 1 << 30;

/// While a statement is held, client bytes are read (to notice a
/// disconnect) and buffered up to this much; beyond it, reading pauses.
const MAX_BUFFERED_WHILE_HELD: usize = 1 << 20;

pub(crate) async fn run(
    gw: Arc<PgGateway>,
    client: Client,
    upstream: Upstream,
    principal: Principal,
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

    let registration = backend_key.and_then(|key| {
        gw.cancels
            .register(format!("{}:{}", gw.upstream.host, gw.upstream.port), key)
    });
    if greet(&mut client_write, &parameters, registration.as_ref())
        .await
        .is_err()
    {
        return;
    }

    let expectations = Mutex::new(VecDeque::new());
    // A jit policy's rules apply only inside a grant in force.
    let applicable = match &grant {
        Some(_) => gw.policies.applicable(&principal, &gw.name),
        None => gw.policies.applicable(&principal, &gw.name).standing_only(),
    };
    let (notice_tx, notice_rx) = tokio::sync::mpsc::unbounded_channel();
    let mask = match MaskRules::compile(applicable.masks()) {
        Ok(rules) => rules.map(|rules| SessionMask {
            rules,
            masker: gw.masker.clone(),
        }),
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
    let mut decider = ClientSide {
        gw: &gw,
        applicable,
        mask: mask.as_ref(),
        described: HashSet::new(),
        principal: &principal,
        session_id: &session_id,
        expectations: &expectations,
        prepared: HashMap::new(),
        portals: HashMap::new(),
        batch: BytesMut::with_capacity(8192),
        skipping_to_sync: false,
        statements: 0,
        denied: 0,
        grant: grant.as_ref().map(|g| g.id.clone()),
        held: None,
        notices: notice_tx,
        cancelled: registration.as_ref().map(|r| r.cancelled.clone()),
    };
    let mut responder = ServerSide {
        gw: &gw,
        session_id: &session_id,
        expectations: &expectations,
        local: VecDeque::new(),
        results: Vec::new(),
        oldest_result: None,
        mask: mask.as_ref().map(|session| MaskState {
            session,
            current: None,
            portals: HashMap::new(),
            copy: CopyOut::None,
        }),
        notices: notice_rx,
    };
    let end = tokio::select! {
        end = decider.run(&mut client_read, client_buf, &mut upstream_write) => end,
        end = responder.run(&mut upstream_read, pending, &mut client_write) => end,
        _ = shutdown.wait_for(|stop| *stop) => End::Shutdown,
        reason = grant_ended(&mut grant) => End::GrantEnded(reason),
    };
    // A statement still held is abandoned here (its `Held` drops).
    decider.held = None;
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
    /// A Sync or Query was forwarded: the next ReadyForQuery closes the group.
    SyncPoint,
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
    /// The first rows the client received.
    output: OutputSample,
}

/// How a statement arrived, for its record.
#[derive(Clone, Copy)]
enum Via<'a> {
    Simple,
    Extended {
        portal: Option<&'a str>,
        params: usize,
    },
}

/// A prepared statement as decided at Parse time; Bind and Execute reuse it.
#[derive(Debug)]
struct Prepared {
    text: String,
    classification: Arc<Classification>,
    decision: Decision,
}

struct ClientSide<'a> {
    gw: &'a PgGateway,
    applicable: Applicable<'a>,
    /// `None` for principals without mask rules: their results pass untouched.
    mask: Option<&'a SessionMask>,
    /// Portals described since they were bound (masking sessions only):
    /// an Execute of any other portal gets a Describe of the gateway's own.
    described: HashSet<String>,
    principal: &'a Principal,
    session_id: &'a str,
    expectations: &'a Mutex<VecDeque<Expect>>,
    prepared: HashMap<String, Arc<Prepared>>,
    /// Portal → its statement and the number of parameters bound (values are never kept).
    portals: HashMap<String, (Arc<Prepared>, usize)>,
    /// Decided messages not yet written upstream; flushed whenever the
    /// client's bytes so far are handled, so a pipeline goes out in one write.
    batch: BytesMut,
    /// After a refusal inside a batch, the rest up to Sync is dropped, as
    /// PostgreSQL itself would skip it.
    skipping_to_sync: bool,
    statements: u64,
    denied: u64,
    /// The grant this session runs under; named in every statement record.
    grant: Option<String>,
    /// A statement waiting for an approver; nothing after it is handled
    /// until it is settled.
    held: Option<PendingHold>,
    /// Messages for the client from the gateway itself (the hold NOTICE),
    /// written by the server side between upstream messages.
    notices: tokio::sync::mpsc::UnboundedSender<BytesMut>,
    /// Woken by the client's CancelRequest, which gives up a held statement.
    cancelled: Option<Arc<tokio::sync::Notify>>,
}

/// A held statement and what is needed to run or refuse it once decided.
struct PendingHold {
    held: Held,
    frame: Frame,
    text: String,
    classification: Arc<Classification>,
    decision: Decision,
    /// `None` for a simple Query; the portal and bound parameter count for an Execute.
    extended: Option<(String, usize)>,
}

type UpstreamWriter = WriteHalf<MaybeTls>;

impl ClientSide<'_> {
    async fn run(
        &mut self,
        client: &mut ReadHalf<MaybeTls>,
        mut buf: BytesMut,
        upstream: &mut UpstreamWriter,
    ) -> End {
        loop {
            loop {
                let frame = match decode_frame(&mut buf, crate::codec::MAX_MESSAGE_LEN) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => return End::ClientProtocol(e.to_string()),
                };
                match self.handle(frame).await {
                    Ok(None) => {}
                    Ok(Some(end)) => return end,
                    Err(end) => return end,
                }
                if let Some(pending) = self.held.take() {
                    if let Err(end) = self.settle(pending, client, &mut buf, upstream).await {
                        return end;
                    }
                }
            }
            // Everything the client has sent so far is decided: send it in
            // one write before waiting for more.
            if let Err(end) = self.flush(upstream).await {
                return end;
            }
            match client.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return End::ClientGone,
                Ok(_) => {}
            }
        }
    }

    fn expect(&self, e: Expect) {
        if let Ok(mut q) = self.expectations.lock() {
            q.push_back(e);
        }
    }

    async fn handle(&mut self, frame: Frame) -> Result<Option<End>, End> {
        let message =
            FrontendMessage::parse(&frame).map_err(|e| End::ClientProtocol(e.to_string()))?;
        if self.skipping_to_sync && !matches!(message, FrontendMessage::Sync) {
            return Ok(None);
        }
        match message {
            FrontendMessage::Query(sql) => {
                let sql = sql.to_string();
                self.simple_query(&frame, &sql).await
            }
            FrontendMessage::Parse { name, query, .. } => {
                let (name, query) = (name.to_string(), query.to_string());
                self.parse(&frame, name, query);
            }
            FrontendMessage::Bind {
                portal,
                statement,
                params,
            } => {
                if let Some(p) = self.prepared.get(statement).cloned() {
                    self.portals.insert(portal.to_string(), (p, params));
                }
                if self.mask.is_some() {
                    self.described.remove(portal);
                }
                frame.encode_into(&mut self.batch);
            }
            FrontendMessage::Execute { portal, .. } => {
                let portal = portal.to_string();
                self.execute(&frame, &portal).await;
            }
            FrontendMessage::Close { kind, name } => {
                if kind == b'S' {
                    self.prepared.remove(name);
                } else {
                    self.portals.remove(name);
                    self.described.remove(name);
                }
                frame.encode_into(&mut self.batch);
            }
            FrontendMessage::Describe { kind, name } => {
                if self.mask.is_some() {
                    let portal = (kind == b'P').then(|| name.to_string());
                    if let Some(p) = &portal {
                        self.described.insert(p.clone());
                    }
                    self.expect(Expect::Describe {
                        portal,
                        swallow: false,
                    });
                }
                frame.encode_into(&mut self.batch);
            }
            FrontendMessage::Sync => {
                self.skipping_to_sync = false;
                frame.encode_into(&mut self.batch);
                self.expect(Expect::SyncPoint);
            }
            FrontendMessage::Flush => frame.encode_into(&mut self.batch),
            FrontendMessage::CopyData | FrontendMessage::CopyDone | FrontendMessage::CopyFail => {
                // Part of a COPY FROM STDIN already decided as a whole.
                frame.encode_into(&mut self.batch);
            }
            FrontendMessage::FunctionCall => {
                self.refuse_simple(ErrorFields::error(
                    sqlstate::INSUFFICIENT_PRIVILEGE,
                    "fastpath function calls are not allowed through the gateway",
                ));
            }
            FrontendMessage::Terminate => return Ok(Some(End::ClientTerminated)),
            FrontendMessage::Password(_) => {
                return Err(End::ClientProtocol("unexpected password message".into()))
            }
        }
        Ok(None)
    }

    async fn flush(&mut self, upstream: &mut UpstreamWriter) -> Result<(), End> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let out = self.batch.split();
        upstream
            .write_all(&out)
            .await
            .map_err(|_| End::UpstreamGone)
    }

    async fn simple_query(&mut self, frame: &Frame, sql: &str) {
        let (classification, decision) = self.decide(sql);
        if decision.verdict == Verdict::Hold {
            return self
                .hold(frame, sql.to_string(), classification, decision, None)
                .await;
        }
        let record = self.statement_record(sql, &classification, &decision, Via::Simple);
        self.statements += 1;
        if decision.verdict != Verdict::Allow {
            self.denied += 1;
            self.refuse_recorded(record, &decision).await;
            return;
        }
        self.record_then_forward_query(frame, record, is_ddl(&classification))
            .await;
    }

    /// A simple Query is forwarded only once its record is committed; if
    /// the record cannot be written, it is refused.
    async fn record_then_forward_query(&mut self, frame: &Frame, record: NewRecord, ddl: bool) {
        match self.gw.store.append(record).await {
            Ok(record_id) => {
                let mut tracker = Tracker::new(record_id, true, None);
                tracker.ddl = ddl;
                self.expect(Expect::Statement(tracker));
                self.expect(Expect::SyncPoint);
                frame.encode_into(&mut self.batch);
            }
            Err(e) => self.refuse_simple(store_error(&e)),
        }
    }

    fn parse(&mut self, frame: &Frame, name: String, query: String) {
        let (classification, decision) = self.decide(&query);
        let prepared = Arc::new(Prepared {
            text: query,
            classification,
            decision,
        });
        // A held statement is parsed upstream (parsing runs nothing); it is
        // held at each Execute, which is when it would run.
        if !matches!(prepared.decision.verdict, Verdict::Allow | Verdict::Hold) {
            self.statements += 1;
            self.denied += 1;
            let record = self.statement_record(
                &prepared.text,
                &prepared.classification,
                &prepared.decision,
                Via::Extended {
                    portal: None,
                    params: 0,
                },
            );
            // Recorded before the refusal is visible; a refused statement
            // never runs, so the record need not be awaited here.
            self.gw.store.append_detached(record);
            self.poison(refusal_error(&prepared.decision));
            return;
        }
        self.prepared.insert(name, prepared);
        frame.encode_into(&mut self.batch);
    }

    async fn execute(&mut self, frame: &Frame, portal: &str) {
        if self.mask.is_some() && self.described.insert(portal.to_string()) {
            // Rows are masked by their portal's description; the client
            // need not have asked for one, so the gateway does.
            self.batch = encode_describe(std::mem::take(&mut self.batch), b'P', portal);
            self.expect(Expect::Describe {
                portal: Some(portal.to_string()),
                swallow: true,
            });
        }
        let Some((prepared, params)) = self.portals.get(portal).cloned() else {
            // Unknown to us means unknown upstream too (it will say so), or
            // a cursor opened by DECLARE, which was decided when declared.
            return self.execute_cursor(frame, portal).await;
        };
        if prepared.decision.verdict == Verdict::Hold {
            let extended = Some((portal.to_string(), params));
            let (text, c, d) = (
                prepared.text.clone(),
                prepared.classification.clone(),
                prepared.decision.clone(),
            );
            return self.hold(frame, text, c, d, extended).await;
        }
        self.statements += 1;
        let via = Via::Extended {
            portal: Some(portal),
            params,
        };
        let record = self.statement_record(
            &prepared.text,
            &prepared.classification,
            &prepared.decision,
            via,
        );
        let ddl = is_ddl(&prepared.classification);
        self.record_then_forward(frame, record, portal, ddl).await;
    }

    /// An Execute is forwarded only once its record is committed; if the
    /// record cannot be written, a refusal stands in its place.
    async fn record_then_forward(
        &mut self,
        frame: &Frame,
        record: NewRecord,
        portal: &str,
        ddl: bool,
    ) {
        match self.gw.store.append(record).await {
            Ok(id) => {
                let mut tracker = Tracker::new(id, false, Some(portal));
                tracker.ddl = ddl;
                self.expect(Expect::Statement(tracker));
                frame.encode_into(&mut self.batch);
            }
            Err(e) => self.poison(store_error(&e)),
        }
    }

    async fn execute_cursor(&mut self, frame: &Frame, portal: &str) {
        let decision = Decision {
            verdict: Verdict::Allow,
            policy: None,
            rule: "cursor".into(),
            reason: "fetch from a portal the gateway did not prepare (a declared cursor, decided at DECLARE)".into(),
            statement_index: None,
        };
        let empty = Classification { statements: vec![] };
        let text = format!("FETCH FROM PORTAL \"{portal}\"");
        let record = self.statement_record(
            &text,
            &empty,
            &decision,
            Via::Extended {
                portal: Some(portal),
                params: 0,
            },
        );
        self.statements += 1;
        self.record_then_forward(frame, record, portal, false).await;
    }

    fn decide(&self, sql: &str) -> (Arc<Classification>, Decision) {
        match self.gw.classifier.classify(sql) {
            Ok(c) => {
                let mut d = self.applicable.decide(&c);
                if d.verdict == Verdict::Allow {
                    if let Some(refusal) = self.mask.and_then(|m| unmaskable_copy(&m.rules, &c)) {
                        d = refusal;
                    } else if is_ddl(&c) {
                        self.gw.catalog.invalidate();
                    }
                }
                (c, d)
            }
            Err(e) => (
                Arc::new(Classification { statements: vec![] }),
                unparseable(&e),
            ),
        }
    }

    fn statement_record(
        &self,
        text: &str,
        c: &Classification,
        d: &Decision,
        via: Via<'_>,
    ) -> NewRecord {
        let (protocol, portal, params) = match via {
            Via::Simple => ("simple", None, 0),
            Via::Extended { portal, params } => ("extended", portal, params),
        };
        let mut r = NewRecord::new(RecordKind::Statement)
            .session_id(self.session_id)
            .principal(self.principal.name.clone())
            .connection(self.gw.name.clone())
            .decision(verdict_name(d.verdict))
            .rule(d.rule.clone())
            .detail(json!({
                "text": text,
                "protocol": protocol,
                "portal": portal,
                "params": params,
                "classes": c.statements.iter().map(|s| s.class).collect::<Vec<_>>(),
                "commands": c.statements.iter().map(|s| s.command.as_str()).collect::<Vec<_>>(),
                "relations": c.statements.iter().flat_map(|s| s.relations.iter()).collect::<Vec<_>>(),
                "reason": d.reason,
                "grant": self.grant,
            }));
        if let Some(p) = &d.policy {
            r = r.policy(p.clone());
        }
        r
    }

    /// Registers a held statement with the broker and tells the client what
    /// it is waiting for; `run` then settles it before anything else. If the
    /// hold cannot be recorded the statement is refused (fail closed).
    async fn hold(
        &mut self,
        frame: &Frame,
        text: String,
        classification: Arc<Classification>,
        decision: Decision,
        extended: Option<(String, usize)>,
    ) {
        let request = HoldRequest {
            session_id: self.session_id.to_string(),
            principal: self.principal.name.clone(),
            connection: self.gw.name.clone(),
            statement: text.clone(),
            policy: decision.policy.clone(),
            rule: decision.rule.clone(),
            reason: decision.reason.clone(),
            grant: self.grant.clone(),
        };
        let held = match self.gw.jit.hold(request).await {
            Ok(held) => held,
            Err(e) => {
                self.statements += 1;
                self.denied += 1;
                let error = ErrorFields::error(
                    sqlstate::SYSTEM_ERROR,
                    format!("statement not run: it needs approval and the hold could not be recorded ({e})"),
                );
                return self.refuse_in_place(error, extended.is_some());
            }
        };
        // One covered by an earlier approval's re-run window is not waiting
        // for anyone, so the client is not told it is.
        if held.approval.status == ApprovalStatus::Pending {
            let notice = hold::notice(
                &held.approval,
                &self.gw.jit.settings().base_url,
                &decision.reason,
            );
            let _ = self.notices.send(notice.encode(BytesMut::new()));
        }
        self.held = Some(PendingHold {
            held,
            frame: frame.clone(),
            text,
            classification,
            decision,
            extended,
        });
    }

    /// Waits for the held statement's outcome, reading (not handling) client
    /// bytes meanwhile so a disconnect ends the wait; then runs the
    /// statement once, or refuses it naming the approval.
    async fn settle(
        &mut self,
        mut pending: PendingHold,
        client: &mut ReadHalf<MaybeTls>,
        buf: &mut BytesMut,
        upstream: &mut UpstreamWriter,
    ) -> Result<(), End> {
        // What came before the held statement goes out now, in order.
        self.flush(upstream).await?;
        // `None`: the client cancelled (Ctrl-C in psql) before a decision.
        let outcome = loop {
            tokio::select! {
                outcome = pending.held.outcome() => break Some(outcome),
                _ = cancel_requested(self.cancelled.as_deref()) => break None,
                read = client.read_buf(buf), if buf.len() < MAX_BUFFERED_WHILE_HELD => match read {
                    // Dropping `pending` records the approval as abandoned.
                    Ok(0) | Err(_) => return Err(End::ClientGone),
                    Ok(_) => {}
                },
            }
        };
        let via = match &pending.extended {
            None => Via::Simple,
            Some((portal, params)) => Via::Extended {
                portal: Some(portal),
                params: *params,
            },
        };
        self.statements += 1;
        let id = &pending.held.approval.id;
        let (decision, error) = hold::settled(&pending.decision, id, outcome.as_ref());
        let mut record =
            self.statement_record(&pending.text, &pending.classification, &decision, via);
        record.detail["approval"] = json!(id);
        let extended = pending.extended.is_some();
        let ddl = is_ddl(&pending.classification);
        match (error, extended) {
            (Some(error), _) => {
                self.denied += 1;
                let error = match self.gw.store.append(record).await {
                    Ok(_) => error,
                    Err(e) => store_error(&e),
                };
                self.refuse_in_place(error, extended);
            }
            (None, _) => match &pending.extended {
                Some((portal, _)) => {
                    self.record_then_forward(&pending.frame, record, portal, ddl)
                        .await
                }
                None => {
                    self.record_then_forward_query(&pending.frame, record, ddl)
                        .await
                }
            },
        }
        Ok(())
    }

    /// A refusal where the statement stood: a simple Query gets its own
    /// Sync; an Execute is poisoned and the rest of its batch skipped.
    fn refuse_in_place(&mut self, error: ErrorFields, extended: bool) {
        if extended {
            self.poison(error);
        } else {
            self.refuse_simple(error);
        }
    }

    /// Refuses a simple Query (or fastpath call): the upstream gets a poison
    /// and a Sync so its transaction state follows the refusal.
    fn refuse_simple(&mut self, error: ErrorFields) {
        self.poison(error);
        self.batch = encode_sync(std::mem::take(&mut self.batch));
        self.expect(Expect::SyncPoint);
        // A simple query is its own batch: nothing follows to skip.
        self.skipping_to_sync = false;
    }

    async fn refuse_recorded(&mut self, record: NewRecord, decision: &Decision) {
        let error = match self.gw.store.append(record).await {
            Ok(_) => refusal_error(decision),
            Err(e) => store_error(&e),
        };
        self.refuse_simple(error);
    }

    fn poison(&mut self, error: ErrorFields) {
        let name = format!("portcullis.refused.{}", uuid::Uuid::new_v4().simple());
        self.batch = encode_describe(std::mem::take(&mut self.batch), b'S', &name);
        // Flush makes the upstream answer even if the client's batch ends
        // with Flush rather than Sync.
        self.batch = encode_flush(std::mem::take(&mut self.batch));
        self.expect(Expect::Poison { name, error });
        self.skipping_to_sync = true;
    }
}

impl Tracker {
    fn new(record_id: i64, whole_query: bool, portal: Option<&str>) -> Self {
        Self {
            record_id,
            started: Instant::now(),
            whole_query,
            rows: 0,
            bytes: 0,
            completed: false,
            error: None,
            portal: portal.map(str::to_string),
            ddl: false,
            masked: None,
            output: OutputSample::default(),
        }
    }
}

fn is_ddl(c: &Classification) -> bool {
    c.statements.iter().any(|s| s.class == StatementClass::Ddl)
}

/// `COPY ... TO STDOUT` output carries no description of where its fields
/// come from, so declared columns cannot be found in it: a principal with
/// declared columns on a table the COPY reads (or `expressions: mask`) is
/// refused and pointed at SELECT. Detector-only principals get their COPY
/// lines scanned instead.
fn unmaskable_copy(rules: &MaskRules, c: &Classification) -> Option<Decision> {
    let (index, statement) = c
        .statements
        .iter()
        .enumerate()
        .find(|(_, s)| s.command == "COPY TO")?;
    let why = if rules.expressions == Expressions::Mask {
        "the policy masks every field it cannot trace to a column (expressions: mask)".to_string()
    } else {
        let rule = rules.covering(&statement.relations)?;
        format!("it reads a table with masked column {:?}", rule.label)
    };
    Some(Decision {
        verdict: Verdict::Deny,
        policy: None,
        rule: "mask".into(),
        reason: format!(
            "COPY TO STDOUT output cannot be masked per column and {why}; use SELECT, whose results the gateway masks"
        ),
        statement_index: Some(index),
    })
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Allow => "allow",
        Verdict::Deny => "deny",
        Verdict::Hold => "hold",
    }
}

fn unparseable(e: &ClassifyError) -> Decision {
    Decision {
        verdict: Verdict::Deny,
        policy: None,
        rule: "unparseable".into(),
        reason: format!(
            "the gateway could not parse the statement, so it cannot decide on it: {e}"
        ),
        statement_index: None,
    }
}

fn refusal_error(d: &Decision) -> ErrorFields {
    if d.rule == "unparseable" {
        return ErrorFields::error(sqlstate::SYNTAX_ERROR, d.reason.clone());
    }
    let message = match (&d.policy, d.verdict) {
        (Some(p), Verdict::Hold) => format!(
            "statement needs approval under rule \"{}\" of policy \"{p}\"",
            d.rule
        ),
        (Some(p), _) => format!("permission denied by policy \"{p}\", rule \"{}\"", d.rule),
        (None, _) => format!("permission denied: {} (rule \"{}\")", d.reason, d.rule),
    };
    ErrorFields::error(sqlstate::INSUFFICIENT_PRIVILEGE, message)
        .with_detail(d.reason.clone())
        .with_hint("Portcullis refused this statement; the session is still usable.")
}

fn store_error(e: &portcullis_records::StoreError) -> ErrorFields {
    ErrorFields::error(
        sqlstate::SYSTEM_ERROR,
        format!("statement not run: the audit record could not be written ({e})"),
    )
}

struct ServerSide<'a> {
    gw: &'a PgGateway,
    session_id: &'a str,
    expectations: &'a Mutex<VecDeque<Expect>>,
    /// Expectations taken off the shared queue, in response order.
    local: VecDeque<Expect>,
    /// Results waiting to be written as one record (see `record_result`).
    results: Vec<serde_json::Value>,
    oldest_result: Option<Instant>,
    /// The gateway's own messages for the client (see `ClientSide::notices`).
    notices: tokio::sync::mpsc::UnboundedReceiver<BytesMut>,
    /// `None` for principals without mask rules.
    mask: Option<MaskState<'a>>,
}

/// The masking side of a session's results.
struct MaskState<'a> {
    session: &'a SessionMask,
    /// The shape of the simple-query result set being streamed.
    current: Option<Arc<Shape>>,
    /// Shapes of described portals, for their Executes' rows.
    portals: HashMap<String, Arc<Shape>>,
    copy: CopyOut,
}

/// What is being done with a COPY TO STDOUT in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyOut {
    None,
    /// Text or CSV: each line is scanned by the detectors.
    Text,
    /// Binary COPY cannot be scanned: its data is dropped and the command
    /// ends in an error instead.
    Refused,
}

/// Results are written in batches per session: one record per statement
/// result would double the writer's work on the hot path for facts that are
/// recorded after the fact anyway (the statement itself was recorded and
/// committed before it ran).
const RESULTS_PER_RECORD: usize = 64;
const RESULTS_MAX_DELAY: std::time::Duration = std::time::Duration::from_millis(200);

impl ServerSide<'_> {
    async fn run(
        &mut self,
        upstream: &mut ReadHalf<MaybeTls>,
        mut buf: BytesMut,
        client: &mut WriteHalf<MaybeTls>,
    ) -> End {
        loop {
            if let Err(end) = self.relay_complete_messages(&mut buf, client).await {
                return end;
            }
            buf.reserve(16 * 1024);
            // An idle session must not sit on its results for ever.
            let flush_at = self.oldest_result.map(|oldest| oldest + RESULTS_MAX_DELAY);
            let read = tokio::select! {
                read = upstream.read_buf(&mut buf) => read,
                _ = sleep_until_some(flush_at) => {
                    self.flush_results();
                    continue;
                }
                // Complete messages were all written above, so the client
                // stream is at a message boundary here.
                Some(notice) = self.notices.recv() => {
                    if let Err(end) = write(client, &notice).await {
                        return end;
                    }
                    continue;
                }
            };
            match read {
                Ok(0) | Err(_) => return End::UpstreamGone,
                Ok(_) => {}
            }
        }
    }

    /// Scans the complete messages in `buf`, forwarding them in as few
    /// writes as possible: untouched runs go out as one slice, without copying.
    async fn relay_complete_messages(
        &mut self,
        buf: &mut BytesMut,
        client: &mut WriteHalf<MaybeTls>,
    ) -> Result<(), End> {
        // Expectations are queued before their message is written upstream,
        // so everything these bytes answer is already queued: one pull per
        // read instead of a lock per message (per DataRow on big results).
        self.pull();
        if self.mask.is_some() {
            return self.relay_masked(buf, client).await;
        }
        let mut pos = 0;
        let mut run_start = 0;
        while let Some(len) = peek_frame_len(&buf[pos..], MAX_BACKEND_MESSAGE)
            .map_err(|e: CodecError| End::UpstreamProtocol(e.to_string()))?
        {
            let frame = &buf[pos..pos + len];
            if frame[0] == b'S' {
                check_parameter(&frame[5..])?;
            }
            if let Some(replacement) = self.observe(frame[0], &frame[5..]) {
                write(client, &buf[run_start..pos]).await?;
                write(client, &replacement).await?;
                run_start = pos + len;
            }
            pos += len;
        }
        write(client, &buf[run_start..pos]).await?;
        buf.advance(pos);
        Ok(())
    }

    /// The masking session's relay: every message is looked at, and the
    /// output is assembled in one buffer per read.
    async fn relay_masked(
        &mut self,
        buf: &mut BytesMut,
        client: &mut WriteHalf<MaybeTls>,
    ) -> Result<(), End> {
        let mut out = BytesMut::with_capacity(buf.len() + 256);
        let mut pos = 0;
        while let Some(len) = peek_frame_len(&buf[pos..], MAX_BACKEND_MESSAGE)
            .map_err(|e: CodecError| End::UpstreamProtocol(e.to_string()))?
        {
            let frame = &buf[pos..pos + len];
            let (tag, body) = (frame[0], &frame[5..]);
            if tag == b'S' {
                check_parameter(body)?;
            }
            let masked = self.mask_message(tag, body).await?;
            // Records describe what the client got: the masked message.
            let observed = match &masked {
                Masked::Replace(m) => self.observe(m[0], &m[5..]),
                Masked::Keep | Masked::Drop => self.observe(tag, body),
            };
            match (observed, masked) {
                (Some(replacement), _) | (None, Masked::Replace(replacement)) => {
                    out.extend_from_slice(&replacement)
                }
                (None, Masked::Drop) => {}
                (None, Masked::Keep) => out.extend_from_slice(frame),
            }
            pos += len;
            if out.len() >= 64 * 1024 {
                write(client, &out).await?;
                out.clear();
            }
        }
        write(client, &out).await?;
        buf.advance(pos);
        Ok(())
    }

    async fn mask_message(&mut self, tag: u8, body: &[u8]) -> Result<Masked, End> {
        let protocol = |e: CodecError| End::UpstreamProtocol(e.to_string());
        Ok(match tag {
            b'T' => {
                let fields = parse_row_description(body).map_err(protocol)?;
                let shape = Arc::new(self.shape_of(&fields).await);
                self.answer_describe(shape)
            }
            b'n' => self.answer_describe(Arc::new(Shape::default())),
            b'D' => self.mask_data_row(body).map_err(protocol)?,
            b'H' => {
                let binary = body.first() == Some(&1);
                let Some(m) = self.mask.as_mut() else {
                    return Ok(Masked::Keep);
                };
                m.copy = if binary {
                    CopyOut::Refused
                } else {
                    CopyOut::Text
                };
                if binary {
                    Masked::Drop
                } else {
                    Masked::Keep
                }
            }
            b'd' | b'c' => self.mask_copy(tag, body),
            b'C' => self.end_copy(),
            b'E' | b'N' => {
                let fields = parse_error_fields(body).map_err(protocol)?;
                let (Some(m), mut tally) = (self.mask.as_ref(), Tally::default()) else {
                    return Ok(Masked::Keep);
                };
                let masked = m.session.mask_error(tag, &fields, &mut tally);
                self.tally(tally);
                masked.map_or(Masked::Keep, Masked::Replace)
            }
            _ => Masked::Keep,
        })
    }

    /// The masking plan of a RowDescription, its fields traced through the
    /// catalog when columns are declared.
    async fn shape_of(&self, fields: &[crate::codec::rows::FieldDescription<'_>]) -> Shape {
        let Some(m) = self.mask.as_ref() else {
            return Shape::default();
        };
        if m.session.rules.columns.is_empty() && m.session.rules.expressions == Expressions::Detect
        {
            // Nothing depends on where a field comes from.
            return m.session.plan(fields, &[]);
        }
        let origins: Vec<_> = fields.iter().map(|f| (f.table_oid, f.column)).collect();
        match self.gw.catalog.resolve(&self.gw.upstream, &origins).await {
            Ok(sources) => m.session.plan(fields, &sources),
            Err(e) => {
                tracing::warn!(session = %self.session_id, error = %e, "catalog lookup failed; masking every field of this result");
                m.session.plan_blind(fields)
            }
        }
    }

    /// A RowDescription or NoData answers the oldest pending Describe, or
    /// else starts a simple query's result set.
    fn answer_describe(&mut self, shape: Arc<Shape>) -> Masked {
        let describe = self.local.iter().position(|e| match e {
            Expect::Describe { .. } => true,
            Expect::Statement(t) => t.whole_query && !t.completed,
            _ => false,
        });
        let Some(m) = self.mask.as_mut() else {
            return Masked::Keep;
        };
        match describe.and_then(|i| match &self.local[i] {
            Expect::Describe { .. } => self.local.remove(i),
            _ => None,
        }) {
            Some(Expect::Describe { portal, swallow }) => {
                if let Some(p) = portal {
                    m.portals.insert(p, shape);
                }
                if swallow {
                    Masked::Drop
                } else {
                    Masked::Keep
                }
            }
            _ => {
                m.current = Some(shape);
                Masked::Keep
            }
        }
    }

    fn mask_data_row(&mut self, body: &[u8]) -> Result<Masked, CodecError> {
        let portal = self.current_tracker().and_then(|t| t.portal.clone());
        let Some(m) = self.mask.as_ref() else {
            return Ok(Masked::Keep);
        };
        let shape = match &portal {
            Some(p) => m.portals.get(p),
            None => m.current.as_ref(),
        };
        let mut tally = Tally::default();
        let masked = match shape {
            Some(shape) if m.session.is_clean(shape) => None,
            Some(shape) => m.session.mask_row(shape, body, &mut tally)?,
            // Rows the gateway cannot place: nothing of them goes out.
            None => Some(m.session.null_row(body, &mut tally)?),
        };
        self.tally(tally);
        Ok(masked.map_or(Masked::Keep, Masked::Replace))
    }

    fn mask_copy(&mut self, tag: u8, body: &[u8]) -> Masked {
        let Some(m) = self.mask.as_ref() else {
            return Masked::Keep;
        };
        match (m.copy, tag) {
            (CopyOut::Refused, _) => Masked::Drop,
            (CopyOut::Text, b'd') => {
                let mut tally = Tally::default();
                let line = m.session.mask_copy_line(body, &mut tally);
                self.tally(tally);
                match line {
                    Some(line) => {
                        let mut w = crate::codec::Writer::new(BytesMut::new(), b'd');
                        w.bytes(&line);
                        Masked::Replace(w.finish())
                    }
                    None => Masked::Keep,
                }
            }
            _ => Masked::Keep,
        }
    }

    /// CommandComplete: a refused binary COPY ends in an error instead.
    fn end_copy(&mut self) -> Masked {
        let Some(m) = self.mask.as_mut() else {
            return Masked::Keep;
        };
        if std::mem::replace(&mut m.copy, CopyOut::None) != CopyOut::Refused {
            return Masked::Keep;
        }
        let error = ErrorFields::error(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            "binary COPY output cannot be masked; use COPY ... TO STDOUT in text or CSV format, or SELECT",
        )
        .with_hint("Portcullis masks results for this principal; the session is still usable.");
        Masked::Replace(error.encode(BytesMut::new()))
    }

    fn tally(&mut self, tally: Tally) {
        if tally.is_empty() {
            return;
        }
        if let Some(t) = self.current_tracker() {
            t.masked.get_or_insert_with(Default::default).merge(tally);
        }
    }

    fn pull(&mut self) {
        if let Ok(mut shared) = self.expectations.lock() {
            self.local.extend(shared.drain(..));
        }
    }

    /// Notes one upstream message; returns bytes to send instead of it.
    fn observe(&mut self, tag: u8, body: &[u8]) -> Option<BytesMut> {
        match tag {
            b'D' => {
                if let Some(t) = self.current_tracker() {
                    t.bytes += body.len() as u64;
                    t.output.note_row(body);
                }
                None
            }
            b'd' => {
                if let Some(t) = self.current_tracker() {
                    t.bytes += body.len() as u64;
                }
                None
            }
            b'T' => {
                if let Some(t) = self.current_tracker() {
                    t.output.note_columns(body);
                }
                None
            }
            b'C' => {
                self.complete(command_rows(body), None);
                None
            }
            b'I' | b's' => {
                self.complete(None, None);
                None
            }
            b'E' => self.on_error(body),
            b'Z' => {
                self.on_ready();
                None
            }
            _ => None,
        }
    }

    fn current_tracker(&mut self) -> Option<&mut Tracker> {
        self.local.iter_mut().find_map(|e| match e {
            Expect::Statement(t) if !t.completed => Some(t),
            _ => None,
        })
    }

    fn complete(&mut self, rows: Option<u64>, error: Option<String>) {
        let Some(t) = self.current_tracker() else {
            return;
        };
        if t.ddl {
            // Names may have changed; masking must not trust the old ones.
            self.gw.catalog.invalidate();
        }
        let Some(t) = self.current_tracker() else {
            return;
        };
        t.rows += rows.unwrap_or(0);
        if error.is_some() {
            t.error = error;
        }
        if !t.whole_query {
            t.completed = true;
        }
        self.retire_completed_front();
    }

    fn on_error(&mut self, body: &[u8]) -> Option<BytesMut> {
        let fields = parse_error_fields(body).ok()?;
        let code = error_field(&fields, b'C');
        let message = error_field(&fields, b'M').unwrap_or_default();
        if code.as_deref() == Some(sqlstate::INVALID_SQL_STATEMENT_NAME) {
            if let Some(replacement) = self.take_poison(&message) {
                return Some(replacement.encode(BytesMut::new()));
            }
        }
        let error = format!("{message} (SQLSTATE {})", code.unwrap_or_default());
        if let Some(t) = self.current_tracker() {
            t.error = Some(error);
            t.completed = true;
        }
        self.retire_completed_front();
        None
    }

    fn take_poison(&mut self, message: &str) -> Option<ErrorFields> {
        let index = self.local.iter().position(
            |e| matches!(e, Expect::Poison { name, .. } if message.contains(name.as_str())),
        )?;
        match self.local.remove(index) {
            Some(Expect::Poison { error, .. }) => Some(error),
            _ => None,
        }
    }

    /// ReadyForQuery ends the group up to the first SyncPoint: whatever did
    /// not complete there was skipped by the upstream after an error.
    fn on_ready(&mut self) {
        while let Some(e) = self.local.pop_front() {
            match e {
                Expect::SyncPoint => break,
                Expect::Statement(mut t) => {
                    if !t.completed && !t.whole_query && t.error.is_none() {
                        t.error =
                            Some("not executed: an earlier message in the batch failed".into());
                    }
                    self.record_result(t);
                }
                Expect::Poison { .. } | Expect::Describe { .. } => {}
            }
        }
    }

    fn retire_completed_front(&mut self) {
        while matches!(self.local.front(), Some(Expect::Statement(t)) if t.completed) {
            if let Some(Expect::Statement(t)) = self.local.pop_front() {
                self.record_result(t);
            }
        }
    }

    fn record_result(&mut self, t: Tracker) {
        let mut result = json!({
            "statement": t.record_id,
            "duration_us": t.started.elapsed().as_micros() as u64,
            "rows": t.rows,
            "bytes": t.bytes,
            "error": t.error,
        });
        if let Some(masked) = &t.masked {
            result["masked"] = masked.to_json();
        }
        if !t.output.is_empty() {
            result["output"] = t.output.to_json();
        }
        self.results.push(result);
        let oldest = *self.oldest_result.get_or_insert_with(Instant::now);
        if self.results.len() >= RESULTS_PER_RECORD || oldest.elapsed() >= RESULTS_MAX_DELAY {
            self.flush_results();
        }
    }

    fn flush_results(&mut self) {
        if self.results.is_empty() {
            return;
        }
        let results = std::mem::take(&mut self.results);
        self.oldest_result = None;
        let failed = results.iter().filter(|r| !r["error"].is_null()).count();
        let record = NewRecord::new(RecordKind::StatementResult)
            .session_id(self.session_id)
            .connection(self.gw.name.clone())
            .decision(if failed > 0 { "fail" } else { "ok" })
            .detail(json!({ "results": results }));
        self.gw.store.append_detached(record);
    }
}

/// What masking does with one upstream message.
enum Masked {
    Keep,
    Drop,
    Replace(BytesMut),
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The classifier lexes strings as PostgreSQL does with
/// standard_conforming_strings on; if a session turns it off (only an
/// `admin` statement can), the gateway can no longer read statements
/// reliably, so the session ends before the next one.
fn check_parameter(body: &[u8]) -> Result<(), End> {
    match backend::parse_parameter_status(body) {
        Ok(("standard_conforming_strings", value)) if value != "on" => Err(End::UpstreamProtocol(
            "standard_conforming_strings was turned off; the gateway cannot analyse statements safely, so the session ends".into(),
        )),
        _ => Ok(()),
    }
}

async fn write(client: &mut WriteHalf<MaybeTls>, bytes: &[u8]) -> Result<(), End> {
    if bytes.is_empty() {
        return Ok(());
    }
    client.write_all(bytes).await.map_err(|_| End::ClientGone)
}

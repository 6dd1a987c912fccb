//! The client half of the relay: decides each message once, records it,
//! then forwards it; holds a statement that needs approval where it stands.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use portcullis_identity::Principal;
use portcullis_jit::{ApprovalStatus, Held, HoldRequest};
use portcullis_policy::classify::{
    name_effects, Classification, ClassifyError, NameEffect, StatementClass,
};
use portcullis_policy::decide::{Applicable, Decision, Verdict};
use portcullis_records::{NewRecord, RecordKind};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::codec::backend::{sqlstate, ErrorFields};
use crate::codec::frontend::{encode_describe, encode_flush, encode_sync, FrontendMessage};
use crate::codec::{decode_frame, Frame};

use crate::proxy::hold;
use crate::proxy::mask::{self, SessionMask};
use crate::proxy::stream::MaybeTls;
use crate::proxy::{PgGateway, SessionRole};

mod fastpath;

use super::names::{Change, Names, Pending, Portal, Prepared, Seen};
use super::{cancel_requested, End, Expect, Tracker};

/// While a statement is held, client bytes are read (to notice a
/// disconnect) and buffered up to this much; beyond it, reading pauses.
const MAX_BUFFERED_WHILE_HELD: usize = 1 << 20;

/// How a statement arrived, for its record.
#[derive(Clone, Copy)]
enum Via<'a> {
    Simple,
    Extended {
        portal: Option<&'a str>,
        params: usize,
    },
    /// A fastpath function call with this many arguments.
    Fastpath {
        args: usize,
    },
}

/// A query decided: what it does, the verdict, what it changes in the
/// server's names, and the prepared statements it runs (for its record).
struct Decided {
    classification: Arc<Classification>,
    decision: Decision,
    changes: Vec<Change>,
    runs: Vec<Value>,
    /// The error PostgreSQL itself would give instead of a policy refusal (a syntax error).
    native: Option<ErrorFields>,
}

pub(super) struct ClientSide<'a> {
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
    /// Prepared statements and portals the upstream confirmed (see `relay::names`).
    names: &'a Mutex<Names>,
    /// The current Sync group's changes to them, not yet answered.
    pending: Pending,
    /// The number of the current Sync group; 1 for the first.
    group: u64,
    /// The last group that changed names.
    last_changing_group: u64,
    /// The last group the upstream has answered.
    settled: tokio::sync::watch::Receiver<u64>,
    /// Decided messages not yet written upstream; flushed whenever the
    /// client's bytes so far are handled, so a pipeline goes out in one write.
    batch: BytesMut,
    /// After a refusal inside a batch, the rest up to Sync is dropped, as
    /// PostgreSQL itself would skip it.
    skipping_to_sync: bool,
    pub(super) statements: u64,
    pub(super) denied: u64,
    /// The grant this session runs under; named in every statement record.
    pub(super) grant: Option<String>,
    /// The upstream role the session logged in as: a hold above its level is refused.
    role: SessionRole,
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
    changes: Vec<Change>,
    runs: Vec<Value>,
}

type UpstreamWriter = WriteHalf<MaybeTls>;

impl<'a> ClientSide<'a> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        gw: &'a PgGateway,
        applicable: Applicable<'a>,
        mask: Option<&'a SessionMask>,
        (principal, session_id): (&'a Principal, &'a str),
        (expectations, names, settled): (
            &'a Mutex<VecDeque<Expect>>,
            &'a Mutex<Names>,
            tokio::sync::watch::Receiver<u64>,
        ),
        grant: Option<String>,
        role: SessionRole,
        notices: tokio::sync::mpsc::UnboundedSender<BytesMut>,
        cancelled: Option<Arc<tokio::sync::Notify>>,
    ) -> Self {
        Self {
            gw,
            applicable,
            mask,
            described: HashSet::new(),
            principal,
            session_id,
            expectations,
            names,
            pending: Pending::default(),
            group: 1,
            last_changing_group: 0,
            settled,
            batch: BytesMut::with_capacity(8192),
            skipping_to_sync: false,
            statements: 0,
            denied: 0,
            grant,
            role,
            held: None,
            notices,
            cancelled,
        }
    }

    /// A statement still held when the session ends is abandoned (its
    /// `Held` drops, which records it).
    pub(super) fn abandon_hold(&mut self) {
        self.held = None;
    }
}

impl ClientSide<'_> {
    pub(super) async fn run(
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
                match self.handle(frame, upstream).await {
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

    async fn handle(
        &mut self,
        frame: Frame,
        upstream: &mut UpstreamWriter,
    ) -> Result<Option<End>, End> {
        let message =
            FrontendMessage::parse(&frame).map_err(|e| End::ClientProtocol(e.to_string()))?;
        if self.skipping_to_sync && !matches!(message, FrontendMessage::Sync) {
            return Ok(None);
        }
        match message {
            FrontendMessage::Query(sql) => {
                let sql = sql.to_string();
                self.simple_query(&frame, &sql, upstream).await?
            }
            FrontendMessage::Parse { name, query, .. } => {
                let (name, query) = (name.to_string(), query.to_string());
                self.parse(&frame, name, query, upstream).await?;
            }
            FrontendMessage::Bind {
                portal,
                statement,
                params,
            } => {
                let (portal, statement) = (portal.to_string(), statement.to_string());
                self.bind(&frame, portal, &statement, params, upstream)
                    .await?;
            }
            FrontendMessage::Execute { portal, .. } => {
                let portal = portal.to_string();
                self.execute(&frame, &portal, upstream).await?;
            }
            FrontendMessage::Close { kind, name } => {
                let change = if kind == b'S' {
                    Change::CloseStatement(name.to_string())
                } else {
                    self.described.remove(name);
                    Change::ClosePortal(name.to_string())
                };
                self.forward_change(change);
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
                self.sync_point(false);
            }
            FrontendMessage::Flush => frame.encode_into(&mut self.batch),
            FrontendMessage::CopyData | FrontendMessage::CopyDone | FrontendMessage::CopyFail => {
                // Part of a COPY FROM STDIN already decided as a whole.
                frame.encode_into(&mut self.batch);
            }
            FrontendMessage::FunctionCall {
                oid,
                args,
                arguments,
            } => {
                let call = fastpath::Call {
                    oid,
                    args,
                    arguments,
                };
                self.function_call(&frame, call).await;
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

    async fn simple_query(
        &mut self,
        frame: &Frame,
        sql: &str,
        upstream: &mut UpstreamWriter,
    ) -> Result<(), End> {
        let decided = self.decide_query(sql, upstream).await?;
        if decided.decision.verdict == Verdict::Hold {
            self.hold(frame, sql.to_string(), decided, None).await;
            return Ok(());
        }
        let mut record =
            self.statement_record(sql, &decided.classification, &decided.decision, Via::Simple);
        note_runs(&mut record, &decided.runs);
        self.statements += 1;
        if decided.decision.verdict != Verdict::Allow {
            self.denied += 1;
            self.refuse_recorded(record, &decided.decision, decided.native)
                .await;
            return Ok(());
        }
        let statement = Some(decided.classification.clone());
        self.record_then_forward_query(frame, record, statement, decided.changes)
            .await;
        Ok(())
    }

    /// A simple Query is forwarded only once its record is committed; if
    /// the record cannot be written, it is refused.
    async fn record_then_forward_query(
        &mut self,
        frame: &Frame,
        record: NewRecord,
        statement: Option<Arc<Classification>>,
        changes: Vec<Change>,
    ) {
        match self.gw.store.append(record).await {
            Ok(record_id) => {
                // The server drops the unnamed statement and portal first.
                self.pending.push(Change::CloseStatement(String::new()));
                self.pending.push(Change::ClosePortal(String::new()));
                for change in &changes {
                    self.pending.push(change.clone());
                }
                self.expect(Expect::Statement(Tracker::new(
                    record_id, true, None, statement, changes,
                )));
                self.sync_point(true);
                frame.encode_into(&mut self.batch);
            }
            Err(e) => self.refuse_simple(store_error(&e)),
        }
    }

    /// Ends the current Sync group (a Sync or a Query was forwarded).
    fn sync_point(&mut self, simple: bool) {
        self.expect(Expect::SyncPoint {
            group: self.group,
            simple,
        });
        if !self.pending.is_empty() {
            self.last_changing_group = self.group;
            self.pending.clear();
        }
        self.group += 1;
    }

    /// Queues a Parse, Bind or Close's change for the server to confirm.
    fn forward_change(&mut self, change: Change) {
        self.pending.push(change.clone());
        self.expect(Expect::Change(change));
    }

    /// Waits until the upstream has answered every earlier group that
    /// changed names, so that the confirmed names are the server's.
    async fn names_settled(&mut self, upstream: &mut UpstreamWriter) -> Result<(), End> {
        let wanted = self.last_changing_group;
        if *self.settled.borrow() >= wanted {
            return Ok(());
        }
        self.flush(upstream).await?;
        self.settled
            .wait_for(|settled| *settled >= wanted)
            .await
            .map(|_| ())
            .map_err(|_| End::UpstreamGone)
    }

    /// The statement the server will run under `name` when this message
    /// reaches it; `None` when it has none.
    async fn statement(
        &mut self,
        name: &str,
        upstream: &mut UpstreamWriter,
    ) -> Result<Option<Arc<Prepared>>, End> {
        match self.pending.statement(name) {
            Seen::Made(prepared) => Ok(Some(prepared)),
            Seen::Removed => Ok(None),
            Seen::Untouched => {
                self.names_settled(upstream).await?;
                Ok(self.names.lock().ok().and_then(|n| n.statement(name)))
            }
        }
    }

    async fn portal(
        &mut self,
        name: &str,
        upstream: &mut UpstreamWriter,
    ) -> Result<Option<Portal>, End> {
        match self.pending.portal(name) {
            Seen::Made(portal) => Ok(Some(portal)),
            Seen::Removed => Ok(None),
            Seen::Untouched => {
                self.names_settled(upstream).await?;
                Ok(self.names.lock().ok().and_then(|n| n.portal(name)))
            }
        }
    }

    /// Decides a query, with each SQL `EXECUTE` decided as the statement it
    /// runs and each `PREPARE` body decided for its later Binds.
    async fn decide_query(
        &mut self,
        sql: &str,
        upstream: &mut UpstreamWriter,
    ) -> Result<Decided, End> {
        let (classification, decision, native) = self.decide(sql).await;
        let plain = Decided {
            classification,
            decision,
            changes: Vec::new(),
            runs: Vec::new(),
            native,
        };
        if plain.classification.statements.is_empty() {
            return Ok(plain);
        }
        let effects = match name_effects(sql) {
            Ok(effects) if effects.iter().all(Option::is_none) => return Ok(plain),
            Ok(effects) => effects,
            Err(e) => {
                return Ok(Decided {
                    decision: unparseable(&e),
                    ..plain
                })
            }
        };
        let mut statements = plain.classification.statements.clone();
        let mut changes = Vec::new();
        let mut runs = Vec::new();
        for (index, effect) in effects.into_iter().enumerate() {
            let Some(effect) = effect else { continue };
            match effect {
                NameEffect::Prepare { name, body } => {
                    let (classification, decision, _) = self.decide(&body).await;
                    let prepared = Arc::new(Prepared {
                        text: body,
                        classification,
                        decision,
                        uses_names: false,
                    });
                    changes.push(Change::Prepare { name, prepared });
                }
                NameEffect::Deallocate { name } => changes.push(Change::CloseStatement(name)),
                NameEffect::DeallocateAll => changes.push(Change::DeallocateAll),
                NameEffect::Execute { name, wrapped } => {
                    let body = match prepared_in(&changes, &name) {
                        Seen::Made(p) => Some(p),
                        Seen::Removed => None,
                        Seen::Untouched => self.statement(&name, upstream).await?,
                    };
                    let Some(body) = body.filter(|b| !b.uses_names) else {
                        return Ok(Decided {
                            decision: unknown_statement(&name, index),
                            changes,
                            runs,
                            ..plain
                        });
                    };
                    runs.push(json!({ "name": name, "text": body.text }));
                    run_in_place(&mut statements, index, &body.classification, wrapped);
                }
            }
        }
        let classification = Arc::new(Classification { statements });
        let decision = self.decide_classified(&classification);
        Ok(Decided {
            classification,
            decision,
            changes,
            runs,
            native: None,
        })
    }

    async fn parse(
        &mut self,
        frame: &Frame,
        name: String,
        query: String,
        upstream: &mut UpstreamWriter,
    ) -> Result<(), End> {
        let decided = self.decide_query(&query, upstream).await?;
        let native = decided.native;
        let uses_names = !decided.changes.is_empty() || !decided.runs.is_empty();
        let prepared = Arc::new(Prepared {
            text: query,
            classification: decided.classification,
            decision: decided.decision,
            uses_names,
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
            self.poison(native.unwrap_or_else(|| refusal_error(&prepared.decision)));
            return Ok(());
        }
        self.forward_change(Change::Prepare { name, prepared });
        frame.encode_into(&mut self.batch);
        Ok(())
    }

    /// A Bind is forwarded only for a statement the server holds: a name
    /// the gateway does not know could only be one it never decided.
    async fn bind(
        &mut self,
        frame: &Frame,
        portal: String,
        statement: &str,
        params: usize,
        upstream: &mut UpstreamWriter,
    ) -> Result<(), End> {
        let Some(prepared) = self.statement(statement, upstream).await? else {
            self.poison(ErrorFields::error(
                sqlstate::INVALID_SQL_STATEMENT_NAME,
                format!("prepared statement \"{statement}\" does not exist"),
            ));
            return Ok(());
        };
        if self.mask.is_some() {
            self.described.remove(&portal);
        }
        self.forward_change(Change::Bind {
            portal,
            bound: Portal { prepared, params },
        });
        frame.encode_into(&mut self.batch);
        Ok(())
    }

    async fn execute(
        &mut self,
        frame: &Frame,
        portal: &str,
        upstream: &mut UpstreamWriter,
    ) -> Result<(), End> {
        if self.mask.is_some() && self.described.insert(portal.to_string()) {
            // Rows are masked by their portal's description; the client
            // need not have asked for one, so the gateway does.
            self.batch = encode_describe(std::mem::take(&mut self.batch), b'P', portal);
            self.expect(Expect::Describe {
                portal: Some(portal.to_string()),
                swallow: true,
            });
        }
        let Some(Portal { prepared, params }) = self.portal(portal, upstream).await? else {
            // Every Bind is tracked, so a portal unknown to us is unknown
            // upstream too (it will say so), or a cursor opened by DECLARE,
            // which was decided when declared.
            self.execute_cursor(frame, portal).await;
            return Ok(());
        };
        let decided = if prepared.uses_names {
            // What `EXECUTE name` runs is the name's statement now.
            self.decide_query(&prepared.text, upstream).await?
        } else {
            Decided {
                classification: prepared.classification.clone(),
                decision: prepared.decision.clone(),
                changes: Vec::new(),
                runs: Vec::new(),
                native: None,
            }
        };
        if decided.decision.verdict == Verdict::Hold {
            let extended = Some((portal.to_string(), params));
            self.hold(frame, prepared.text.clone(), decided, extended)
                .await;
            return Ok(());
        }
        self.statements += 1;
        let via = Via::Extended {
            portal: Some(portal),
            params,
        };
        let mut record = self.statement_record(
            &prepared.text,
            &decided.classification,
            &decided.decision,
            via,
        );
        note_runs(&mut record, &decided.runs);
        if decided.decision.verdict != Verdict::Allow {
            self.denied += 1;
            let error = match self.gw.store.append(record).await {
                Ok(_) => refusal_error(&decided.decision),
                Err(e) => store_error(&e),
            };
            self.poison(error);
            return Ok(());
        }
        let statement = Some(decided.classification.clone());
        self.record_then_forward(frame, record, portal, statement, decided.changes)
            .await;
        Ok(())
    }

    /// An Execute is forwarded only once its record is committed; if the
    /// record cannot be written, a refusal stands in its place.
    async fn record_then_forward(
        &mut self,
        frame: &Frame,
        record: NewRecord,
        portal: &str,
        statement: Option<Arc<Classification>>,
        changes: Vec<Change>,
    ) {
        match self.gw.store.append(record).await {
            Ok(id) => {
                for change in &changes {
                    self.pending.push(change.clone());
                }
                self.expect(Expect::Statement(Tracker::new(
                    id,
                    false,
                    Some(portal),
                    statement,
                    changes,
                )));
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
        self.record_then_forward(frame, record, portal, None, Vec::new())
            .await;
    }

    /// Classifies, judges the functions called by what the catalog says
    /// they are, and decides; when it cannot be classified, also the error
    /// PostgreSQL itself would give (a syntax error with its position).
    async fn decide(&self, sql: &str) -> (Arc<Classification>, Decision, Option<ErrorFields>) {
        match self.classify(sql).await {
            Ok(c) => {
                let c = self
                    .gw
                    .catalog
                    .judge_functions(&self.gw.upstream, &self.gw.functions, c)
                    .await;
                let d = self.decide_classified(&c);
                (c, d, None)
            }
            Err(e) => {
                let decision = unparseable(&e);
                let native = self.native_error(sql, e).await;
                (
                    Arc::new(Classification { statements: vec![] }),
                    decision,
                    Some(native),
                )
            }
        }
    }

    /// What PostgreSQL would answer to a statement the gateway cannot
    /// parse: for a syntax error the server's own words (its HINT and
    /// DETAIL too), else the gateway's.
    async fn native_error(&self, sql: &str, e: ClassifyError) -> ErrorFields {
        if matches!(e, ClassifyError::Syntax(_)) {
            let server = self
                .gw
                .catalog
                .server_syntax_error(&self.gw.upstream, sql)
                .await;
            if let Some(server) = server {
                return server;
            }
        }
        unparseable_error(e)
    }

    /// From the cache when it can; otherwise the parse runs on a thread of its own, so that a
    /// long or deep statement does not stall the other sessions of this runtime thread (and
    /// the runtime's thread count stays what `workers` says).
    async fn classify(&self, sql: &str) -> Result<Arc<Classification>, ClassifyError> {
        if let Some(hit) = self.gw.classifier.cached(sql) {
            return Ok(hit);
        }
        let classifier = Arc::clone(&self.gw.classifier);
        let sql = sql.to_owned();
        let (answer, answered) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("sql-analysis".into())
            .spawn(move || {
                let _ = answer.send(classifier.classify(&sql));
            })
            .map_err(|e| ClassifyError::Internal(format!("cannot start the analysis: {e}")))?;
        answered.await.unwrap_or_else(|_| {
            Err(ClassifyError::Internal(
                "the analysis ended without an answer".into(),
            ))
        })
    }

    fn decide_classified(&self, c: &Classification) -> Decision {
        let mut d = self.applicable.decide(c);
        if let Some(refused) = self.role.refuses_hold(&d, c) {
            return refused;
        }
        if d.verdict == Verdict::Allow {
            if let Some(refusal) = self.mask.and_then(|m| mask::lineage::refusal(&m.rules, c)) {
                d = refusal;
            } else if is_ddl(c) {
                self.gw.catalog.invalidate();
            }
        }
        d
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
            Via::Fastpath { args } => ("fastpath", None, args),
        };
        let mut r = NewRecord::new(RecordKind::Statement)
            .session_id(self.session_id)
            .principal(self.principal.name.clone())
            .connection(self.gw.name.clone())
            .decision(verdict_name(d.verdict))
            .rule(d.rule.clone())
            .detail(statement_detail(
                text,
                c,
                d,
                protocol,
                portal,
                params,
                self.grant.as_deref(),
            ));
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
        decided: Decided,
        extended: Option<(String, usize)>,
    ) {
        let Decided {
            classification,
            decision,
            changes,
            runs,
            ..
        } = decided;
        let request = HoldRequest {
            session_id: self.session_id.to_string(),
            principal: self.principal.name.clone(),
            issuer: self.principal.issuer.clone(),
            connection: self.gw.name.clone(),
            statement: text.clone(),
            classes: classification
                .statements
                .iter()
                .map(|s| s.class.as_str().to_string())
                .collect(),
            relations: classification
                .statements
                .iter()
                .flat_map(|s| s.relations.iter().cloned())
                .collect(),
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
            changes,
            runs,
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
        note_runs(&mut record, &pending.runs);
        let extended = pending.extended.is_some();
        let statement = Some(pending.classification.clone());
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
                    self.record_then_forward(
                        &pending.frame,
                        record,
                        portal,
                        statement,
                        pending.changes,
                    )
                    .await
                }
                None => {
                    self.record_then_forward_query(
                        &pending.frame,
                        record,
                        statement,
                        pending.changes,
                    )
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
        self.sync_point(false);
        // A simple query is its own batch: nothing follows to skip.
        self.skipping_to_sync = false;
    }

    /// `native`: the error to give instead of the policy refusal (a syntax error).
    async fn refuse_recorded(
        &mut self,
        record: NewRecord,
        decision: &Decision,
        native: Option<ErrorFields>,
    ) {
        let error = match self.gw.store.append(record).await {
            Ok(_) => native.unwrap_or_else(|| refusal_error(decision)),
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

/// Names the prepared statements a query ran in its record.
fn note_runs(record: &mut NewRecord, runs: &[Value]) {
    if !runs.is_empty() {
        record.detail["executes"] = Value::Array(runs.to_vec());
    }
}

/// The statement a query's own earlier `PREPARE` / `DEALLOCATE` left under `name`.
fn prepared_in(changes: &[Change], name: &str) -> Seen<Arc<Prepared>> {
    for change in changes.iter().rev() {
        match change {
            Change::Prepare { name: n, prepared } if n == name => {
                return Seen::Made(prepared.clone())
            }
            Change::CloseStatement(n) if n == name => return Seen::Removed,
            Change::DeallocateAll => return Seen::Removed,
            _ => {}
        }
    }
    Seen::Untouched
}

/// Puts what a prepared statement does in place of the `EXECUTE` that runs
/// it; inside `EXPLAIN` or `CREATE TABLE AS` it adds to what they do.
fn run_in_place(
    statements: &mut Vec<portcullis_policy::classify::Statement>,
    index: usize,
    body: &Classification,
    wrapped: bool,
) {
    if !wrapped {
        statements.splice(index..=index, body.statements.iter().cloned());
        return;
    }
    let Some(outer) = statements.get_mut(index) else {
        return;
    };
    for inner in &body.statements {
        if inner.class > outer.class {
            outer.class = inner.class;
            outer.why = Some(format!("runs a prepared {}", inner.command));
        }
        outer.relations.extend(inner.relations.iter().cloned());
        outer.functions.extend(inner.functions.iter().cloned());
        // Even under a plain EXPLAIN the prepared body counts as run: the
        // name's body is decided once, whatever wraps its EXECUTE.
        outer.actions.extend(inner.actions.iter().cloned());
        if outer.unnamed_effect.is_none() {
            outer.unnamed_effect.clone_from(&inner.unnamed_effect);
        }
    }
}

/// An `EXECUTE` of a name the gateway has no decided statement for.
fn unknown_statement(name: &str, index: usize) -> Decision {
    Decision {
        verdict: Verdict::Deny,
        policy: None,
        rule: "prepared".into(),
        reason: format!(
            "EXECUTE of prepared statement \"{name}\", which the gateway has not seen prepared in this session, so it cannot tell what would run"
        ),
        statement_index: Some(index),
    }
}

pub(super) fn is_ddl(c: &Classification) -> bool {
    c.statements.iter().any(|s| s.class == StatementClass::Ddl)
}

/// A statement record's detail. Built field by field rather than with `json!`, which copies
/// every value through an intermediate vector: one of these is made for every statement.
fn statement_detail(
    text: &str,
    c: &Classification,
    d: &Decision,
    protocol: &str,
    portal: Option<&str>,
    params: usize,
    grant: Option<&str>,
) -> Value {
    let strings = |items: &mut dyn Iterator<Item = &str>| {
        Value::Array(items.map(|s| Value::String(s.to_owned())).collect())
    };
    let mut detail = Map::with_capacity(10);
    detail.insert("text".into(), text.into());
    detail.insert("protocol".into(), protocol.into());
    detail.insert("portal".into(), portal.into());
    detail.insert("params".into(), params.into());
    detail.insert(
        "classes".into(),
        strings(&mut c.statements.iter().map(|s| s.class.as_str())),
    );
    detail.insert(
        "commands".into(),
        strings(&mut c.statements.iter().map(|s| s.command.as_str())),
    );
    detail.insert(
        "relations".into(),
        strings(
            &mut c
                .statements
                .iter()
                .flat_map(|s| s.relations.iter().map(String::as_str)),
        ),
    );
    detail.insert(
        "actions".into(),
        Value::Array(
            c.statements
                .iter()
                .flat_map(|s| s.actions.iter().map(|a| Value::String(a.to_string())))
                .collect(),
        ),
    );
    detail.insert("reason".into(), d.reason.as_str().into());
    detail.insert("grant".into(), grant.into());
    Value::Object(detail)
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Allow => "allow",
        Verdict::Deny => "deny",
        Verdict::Hold => "hold",
    }
}

fn unparseable(e: &ClassifyError) -> Decision {
    let (rule, reason) = match e {
        ClassifyError::Unsupported(why) => ("session state", why.clone()),
        _ => (
            "unparseable",
            format!("the gateway could not parse the statement, so it cannot decide on it: {e}"),
        ),
    };
    Decision {
        verdict: Verdict::Deny,
        policy: None,
        rule: rule.into(),
        reason,
        statement_index: None,
    }
}

/// What PostgreSQL would answer to a statement the gateway cannot parse; it is never forwarded.
fn unparseable_error(e: ClassifyError) -> ErrorFields {
    match e {
        ClassifyError::Syntax(e) => {
            ErrorFields::error(sqlstate::SYNTAX_ERROR, e.message).with_position(e.position)
        }
        ClassifyError::TooComplex(why) => ErrorFields::error(
            sqlstate::STATEMENT_TOO_COMPLEX,
            format!("statement too complex: {why}"),
        )
        .with_hint(
            "The gateway parses statements up to PostgreSQL's default nesting limits \
             (max_stack_depth 2MB); split the expression or nest less deeply.",
        ),
        ClassifyError::Unsupported(why) => ErrorFields::error(sqlstate::FEATURE_NOT_SUPPORTED, why)
            .with_hint(
                "Portcullis reads every statement as UTF-8 with standard_conforming_strings on, \
                 as the session started; the session is still usable.",
            ),
        ClassifyError::Unreadable(why) => ErrorFields::error(sqlstate::SYNTAX_ERROR, why),
        ClassifyError::Internal(why) => ErrorFields::error(
            sqlstate::INTERNAL_ERROR,
            format!("the gateway could not classify the statement, so it did not run: {why}"),
        ),
    }
}

fn refusal_error(d: &Decision) -> ErrorFields {
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

#[cfg(test)]
mod tests {
    use portcullis_policy::classify::classify;
    use portcullis_policy::decide::{Decision, Verdict};
    use serde_json::json;

    use super::statement_detail;

    #[test]
    fn statement_detail_names_every_class_command_and_relation() {
        let c = classify("SELECT * FROM orders; DELETE FROM app.carts WHERE id = 1").unwrap();
        let d = Decision {
            verdict: Verdict::Allow,
            policy: Some("ci".into()),
            rule: "read".into(),
            reason: "allowed by ci".into(),
            statement_index: None,
        };
        let detail = statement_detail("the text", &c, &d, "extended", Some("p1"), 2, Some("g-1"));
        assert_eq!(
            detail,
            json!({
                "text": "the text",
                "protocol": "extended",
                "portal": "p1",
                "params": 2,
                "classes": ["read", "write"],
                "actions": ["select on orders", "delete on app.carts", "select on app.carts"],
                "commands": ["SELECT", "DELETE"],
                "relations": ["orders", "app.carts"],
                "reason": "allowed by ci",
                "grant": "g-1",
            })
        );
        let simple = statement_detail("x", &c, &d, "simple", None, 0, None);
        assert!(simple["portal"].is_null() && simple["grant"].is_null());
    }
}

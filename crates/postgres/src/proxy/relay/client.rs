//! The client half of the relay: decides each message once, records it,
//! then forwards it; holds a statement that needs approval where it stands.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use portcullis_identity::Principal;
use portcullis_jit::{ApprovalStatus, Held, HoldRequest};
use portcullis_masking::{Expressions, MaskRules};
use portcullis_policy::classify::{Classification, ClassifyError, StatementClass};
use portcullis_policy::decide::{Applicable, Decision, Verdict};
use portcullis_records::{NewRecord, RecordKind};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::codec::backend::{sqlstate, ErrorFields};
use crate::codec::frontend::{encode_describe, encode_flush, encode_sync, FrontendMessage};
use crate::codec::{decode_frame, Frame};

use crate::proxy::hold;
use crate::proxy::mask::SessionMask;
use crate::proxy::stream::MaybeTls;
use crate::proxy::PgGateway;

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
}

/// A prepared statement as decided at Parse time; Bind and Execute reuse it.
#[derive(Debug)]
struct Prepared {
    text: String,
    classification: Arc<Classification>,
    decision: Decision,
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
    prepared: HashMap<String, Arc<Prepared>>,
    /// Portal → its statement and the number of parameters bound (values are never kept).
    portals: HashMap<String, (Arc<Prepared>, usize)>,
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

impl<'a> ClientSide<'a> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        gw: &'a PgGateway,
        applicable: Applicable<'a>,
        mask: Option<&'a SessionMask>,
        (principal, session_id): (&'a Principal, &'a str),
        expectations: &'a Mutex<VecDeque<Expect>>,
        grant: Option<String>,
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
            prepared: HashMap::new(),
            portals: HashMap::new(),
            batch: BytesMut::with_capacity(8192),
            skipping_to_sync: false,
            statements: 0,
            denied: 0,
            grant,
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
                self.expect(Expect::Statement(Tracker::new(record_id, true, None, ddl)));
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
                self.expect(Expect::Statement(Tracker::new(
                    id,
                    false,
                    Some(portal),
                    ddl,
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
        classification: Arc<Classification>,
        decision: Decision,
        extended: Option<(String, usize)>,
    ) {
        let request = HoldRequest {
            session_id: self.session_id.to_string(),
            principal: self.principal.name.clone(),
            issuer: self.principal.issuer.clone(),
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
    let mut detail = Map::with_capacity(9);
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

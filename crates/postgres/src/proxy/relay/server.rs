//! The server half of the relay: streams upstream bytes to the client,
//! noting completions for result records and swapping in the gateway's own
//! errors where a refused statement stood.

mod masked;

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use portcullis_records::{NewRecord, RecordKind};
use serde_json::{Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::codec::backend::{
    self, command_rows, error_field, parse_error_fields, sqlstate, ErrorFields,
};
use crate::codec::{peek_frame_len, CodecError};

use crate::proxy::mask::SessionMask;
use crate::proxy::settings::Watched;
use crate::proxy::stream::MaybeTls;
use crate::proxy::PgGateway;

use super::names::Names;
use super::{End, Expect, Tracker};
use masked::MaskState;

/// Upstream messages can be as large as PostgreSQL allows.
const MAX_BACKEND_MESSAGE: usize = 1 << 30;

pub(super) struct ServerSide<'a> {
    gw: &'a PgGateway,
    session_id: &'a str,
    expectations: &'a Mutex<VecDeque<Expect>>,
    /// Expectations taken off the shared queue, in response order.
    local: VecDeque<Expect>,
    /// Prepared statements and portals, as this half sees them confirmed.
    names: &'a Mutex<Names>,
    /// The last Sync group answered (see `relay::names`).
    settled: tokio::sync::watch::Sender<u64>,
    /// Results waiting to be written as one record (see `record_result`).
    results: Vec<serde_json::Value>,
    oldest_result: Option<Instant>,
    /// The gateway's own messages for the client (see `ClientSide::notices`).
    notices: tokio::sync::mpsc::UnboundedReceiver<BytesMut>,
    /// `None` for principals without mask rules.
    mask: Option<MaskState<'a>>,
    /// The settings the server must keep reporting as at login.
    watched: Watched,
}

/// Results are written in batches per session: one record per statement
/// result would double the writer's work on the hot path for facts that are
/// recorded after the fact anyway (the statement itself was recorded and
/// committed before it ran).
const RESULTS_PER_RECORD: usize = 64;
const RESULTS_MAX_DELAY: std::time::Duration = std::time::Duration::from_millis(200);

impl<'a> ServerSide<'a> {
    pub(super) fn new(
        gw: &'a PgGateway,
        session_id: &'a str,
        (expectations, names, settled): (
            &'a Mutex<VecDeque<Expect>>,
            &'a Mutex<Names>,
            tokio::sync::watch::Sender<u64>,
        ),
        mask: Option<&'a SessionMask>,
        notices: tokio::sync::mpsc::UnboundedReceiver<BytesMut>,
        watched: Watched,
    ) -> Self {
        Self {
            gw,
            session_id,
            expectations,
            local: VecDeque::new(),
            names,
            settled,
            results: Vec::new(),
            oldest_result: None,
            notices,
            mask: mask.map(MaskState::new),
            watched,
        }
    }
}

impl ServerSide<'_> {
    pub(super) async fn run(
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
                self.check_parameter(&frame[5..])?;
            }
            if let Some(replacement) = self.observe(frame[0], &frame[5..])? {
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

    fn pull(&mut self) {
        if let Ok(mut shared) = self.expectations.lock() {
            self.local.extend(shared.drain(..));
        }
    }

    /// A ParameterStatus the server sent: the session ends, before the
    /// client sees it, when a setting the gateway relies on has moved.
    fn check_parameter(&self, body: &[u8]) -> Result<(), End> {
        let (name, value) = backend::parse_parameter_status(body)
            .map_err(|e| End::UpstreamProtocol(e.to_string()))?;
        match self.watched.departure(name, value) {
            Some(why) => Err(End::StateChanged(why)),
            None => Ok(()),
        }
    }

    /// Notes one upstream message; returns bytes to send instead of it.
    /// Fails when the upstream confirms a change the gateway did not
    /// forward: its model of the server's names would be wrong.
    fn observe(&mut self, tag: u8, body: &[u8]) -> Result<Option<BytesMut>, End> {
        Ok(match tag {
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
                self.confirm_sql_change(body);
                self.complete(command_rows(body), None);
                None
            }
            b'I' | b's' => {
                self.complete(None, None);
                None
            }
            b'1' | b'2' | b'3' => {
                self.confirm_change(tag)?;
                None
            }
            b'E' => self.on_error(body),
            b'Z' => {
                self.on_ready(body.first().copied());
                None
            }
            _ => None,
        })
    }

    /// ParseComplete, BindComplete or CloseComplete: the oldest change
    /// forwarded and not yet answered now holds upstream.
    fn confirm_change(&mut self, tag: u8) -> Result<(), End> {
        let index = self
            .local
            .iter()
            .position(|e| matches!(e, Expect::Change(_)));
        let change = match index.and_then(|i| self.local.remove(i)) {
            Some(Expect::Change(change)) if change.confirmed_by_message() == Some(tag) => change,
            _ => {
                return Err(End::UpstreamProtocol(format!(
                    "the upstream confirmed a message ('{}') the gateway did not forward; the session ends rather than guess what it holds",
                    tag as char
                )))
            }
        };
        if let Ok(mut names) = self.names.lock() {
            names.apply(change);
        }
        self.retire_completed_front();
        Ok(())
    }

    /// A CommandComplete of SQL `PREPARE`, `DEALLOCATE` or `DISCARD ALL`
    /// applies that statement's change.
    fn confirm_sql_change(&mut self, body: &[u8]) {
        let tag = std::str::from_utf8(body.strip_suffix(&[0]).unwrap_or(body)).unwrap_or("");
        let Some(t) = self.current_tracker() else {
            return;
        };
        let Some(index) = t.changes.iter().position(|c| c.confirmed_by_tag(tag)) else {
            return;
        };
        let change = t.changes.remove(index);
        if let Ok(mut names) = self.names.lock() {
            names.apply(change);
        }
    }

    fn current_tracker(&mut self) -> Option<&mut Tracker> {
        open_tracker(&mut self.local)
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
    /// not complete there was skipped by the upstream after an error, and
    /// changes not confirmed by then never took effect.
    fn on_ready(&mut self, status: Option<u8>) {
        while let Some(e) = self.local.pop_front() {
            match e {
                Expect::SyncPoint { group, simple } => {
                    if let Ok(mut names) = self.names.lock() {
                        if simple {
                            names.simple_query_ran();
                        }
                        if status == Some(b'I') {
                            names.transaction_ended();
                        }
                    }
                    self.settled.send_replace(group);
                    break;
                }
                Expect::Statement(mut t) => {
                    if !t.completed && !t.whole_query && t.error.is_none() {
                        t.error =
                            Some("not executed: an earlier message in the batch failed".into());
                    }
                    self.record_result(t);
                }
                Expect::Poison { .. } | Expect::Describe { .. } | Expect::Change(_) => {}
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
        // Built field by field rather than with `json!`, which would copy the output sample:
        // one of these is made for every statement.
        let mut result = Map::with_capacity(7);
        result.insert("statement".into(), t.record_id.into());
        let duration_us = u64::try_from(t.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        result.insert("duration_us".into(), duration_us.into());
        result.insert("rows".into(), t.rows.into());
        result.insert("bytes".into(), t.bytes.into());
        result.insert("error".into(), t.error.map_or(Value::Null, Value::String));
        if let Some(masked) = &t.masked {
            result.insert("masked".into(), masked.to_json());
        }
        if !t.output.is_empty() {
            result.insert("output".into(), t.output.into_json());
        }
        self.results.push(Value::Object(result));
        let oldest = *self.oldest_result.get_or_insert_with(Instant::now);
        if self.results.len() >= RESULTS_PER_RECORD || oldest.elapsed() >= RESULTS_MAX_DELAY {
            self.flush_results();
        }
    }

    pub(super) fn flush_results(&mut self) {
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
            .detail(Value::Object(Map::from_iter([(
                "results".to_owned(),
                Value::Array(results),
            )])));
        self.gw.store.append_detached(record);
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

async fn write(client: &mut WriteHalf<MaybeTls>, bytes: &[u8]) -> Result<(), End> {
    if bytes.is_empty() {
        return Ok(());
    }
    client.write_all(bytes).await.map_err(|_| End::ClientGone)
}

/// The statement whose results are streaming: the first one not completed.
fn open_tracker(local: &mut VecDeque<Expect>) -> Option<&mut Tracker> {
    local.iter_mut().find_map(|e| match e {
        Expect::Statement(t) if !t.completed => Some(t),
        _ => None,
    })
}

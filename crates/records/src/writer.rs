//! The single writer thread: every record of every session goes through it, in order, with
//! group commit.
//!
//! Why one thread: the chain needs a total order (each record hashes the one before it), and
//! SQLite allows one writer at a time anyway. Why group commit: a commit is the expensive part
//! (a WAL append, plus an fsync under `synchronous=full`); while one batch commits, the next
//! batch piles up in the channel and is written by the next single transaction, so the cost per
//! statement falls as load rises instead of serialising sessions behind each other's commits.
//!
//! Ids and times are assigned here, inside the transaction, so chain order is commit order. If a
//! batch fails, its transaction is rolled back, every waiter gets the error (and refuses its
//! statement), and the in-memory head is forgotten and re-read from the database before the next
//! batch, so a failed batch never leaves a hole or a fork in the chain.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use rusqlite::{params, Connection, TransactionBehavior};
use time::OffsetDateTime;
use tokio::sync::oneshot;

use crate::chain::{canonical_json, Link};
use crate::db::{self, Head};
use crate::{NewRecord, RecordKind, StoreError};

/// Most records written by one transaction. Bounds how long the first waiter of a large batch
/// waits, and the memory of one batch.
const MAX_BATCH: usize = 1024;

pub(crate) type AppendAck = oneshot::Sender<Result<i64, StoreError>>;
pub(crate) type FlushAck = oneshot::Sender<Result<(), StoreError>>;

/// Work for the writer thread.
pub(crate) enum Job {
    /// Write a record; `ack` is `None` for detached appends.
    Append {
        record: Pending,
        ack: Option<AppendAck>,
    },
    /// Acknowledge once everything queued before it is committed.
    Flush(FlushAck),
    /// Tests reach the writer's own connection (connection-scoped pragmas, panics).
    #[cfg(test)]
    Run(Box<dyn FnOnce(&mut Connection) + Send>),
}

/// A record ready for the writer: the detail is already canonical JSON text, serialised on the
/// caller's thread so the serial writer only hashes and inserts.
#[derive(Debug)]
pub(crate) struct Pending {
    kind: RecordKind,
    session_id: Option<String>,
    principal: Option<String>,
    connection: Option<String>,
    decision: Option<String>,
    policy: Option<String>,
    rule: Option<String>,
    detail: String,
}

impl From<NewRecord> for Pending {
    fn from(r: NewRecord) -> Self {
        Pending {
            kind: r.kind,
            detail: canonical_json(&r.detail),
            session_id: r.session_id,
            principal: r.principal,
            connection: r.connection,
            decision: r.decision,
            policy: r.policy,
            rule: r.rule,
        }
    }
}

impl Pending {
    fn link<'a>(&'a self, id: i64, time: &'a str, prev_hash: &'a str) -> Link<'a> {
        Link {
            id,
            time,
            kind: self.kind.as_str(),
            session_id: self.session_id.as_deref(),
            principal: self.principal.as_deref(),
            connection: self.connection.as_deref(),
            decision: self.decision.as_deref(),
            policy: self.policy.as_deref(),
            rule: self.rule.as_deref(),
            detail: &self.detail,
            prev_hash,
        }
    }
}

/// Counters the tests use to prove batching happens.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Transactions attempted (one per batch that held at least one append).
    pub(crate) batches: AtomicU64,
    /// Jobs handed to the writer's channel, so tests can tell when work has queued up.
    #[cfg(test)]
    pub(crate) queued: AtomicU64,
}

/// Detached records that failed since the last flush, so the next flush can report them.
#[derive(Debug, Default)]
struct Lost {
    count: u64,
    reason: String,
}

struct Writer {
    conn: Connection,
    /// `None` after a failed batch (or before the first): re-read from the database.
    head: Option<Head>,
    lost: Lost,
    failing: bool,
    /// Tells the checkpointer there is WAL to copy back.
    checkpoint: SyncSender<()>,
    stats: Arc<Stats>,
}

/// Starts the writer thread. It stops when every sender is dropped, after writing what is queued.
pub(crate) fn spawn(
    conn: Connection,
    checkpoint: SyncSender<()>,
    stats: Arc<Stats>,
) -> std::io::Result<(Sender<Job>, JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel();
    let writer = Writer {
        conn,
        head: None,
        lost: Lost::default(),
        failing: false,
        checkpoint,
        stats,
    };
    let handle = thread::Builder::new()
        .name("portcullis-records-writer".into())
        .spawn(move || writer.run(rx))?;
    Ok((tx, handle))
}

impl Writer {
    fn run(mut self, rx: Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let batch = drain(first, &rx);
            self.process(batch);
        }
        tracing::debug!("audit writer stopping: every store handle is gone");
    }

    fn process(&mut self, batch: Vec<Job>) {
        let mut appends = Vec::with_capacity(batch.len());
        let mut flushes = Vec::new();
        for job in batch {
            match job {
                Job::Append { record, ack } => appends.push((record, ack)),
                Job::Flush(ack) => flushes.push(ack),
                #[cfg(test)]
                Job::Run(f) => f(&mut self.conn),
            }
        }
        let result = if appends.is_empty() {
            Ok(Vec::new())
        } else {
            self.commit(appends.iter().map(|(record, _)| record))
        };
        self.acknowledge_appends(appends, &result);
        self.acknowledge_flushes(flushes, result.map(|_| ()));
    }

    /// Writes one batch in one transaction; on success returns the ids in queue order.
    fn commit<'a>(
        &mut self,
        records: impl Iterator<Item = &'a Pending>,
    ) -> Result<Vec<i64>, StoreError> {
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        // Taking the head means any failure below leaves it unknown, forcing a re-read.
        let head = match self.head.take() {
            Some(head) => head,
            None => db::read_head(&self.conn).map_err(|e| StoreError::unavailable(&e))?,
        };
        let (ids, head) =
            write_batch(&mut self.conn, head, records).map_err(|e| StoreError::unavailable(&e))?;
        self.head = Some(head);
        // A full channel means a checkpoint is already due; never wait for it.
        let _ = self.checkpoint.try_send(());
        Ok(ids)
    }

    fn acknowledge_appends(
        &mut self,
        appends: Vec<(Pending, Option<AppendAck>)>,
        result: &Result<Vec<i64>, StoreError>,
    ) {
        match result {
            Ok(ids) => {
                if std::mem::take(&mut self.failing) {
                    tracing::info!("audit store writable again");
                }
                for ((_, ack), id) in appends.into_iter().zip(ids) {
                    if let Some(ack) = ack {
                        // A dropped receiver means the caller stopped waiting; the record stays.
                        let _ = ack.send(Ok(*id));
                    }
                }
            }
            Err(err) => self.fail_batch(appends, err),
        }
    }

    fn fail_batch(&mut self, appends: Vec<(Pending, Option<AppendAck>)>, err: &StoreError) {
        self.failing = true;
        let total = appends.len();
        let mut detached = 0u64;
        for (_, ack) in appends {
            match ack {
                Some(ack) => {
                    let _ = ack.send(Err(err.clone()));
                }
                None => detached += 1,
            }
        }
        tracing::error!(error = %err, records = total, detached_lost = detached,
            "audit batch not written; statements waiting on it are refused");
        if detached > 0 {
            self.lost.count += detached;
            self.lost.reason = err.to_string();
        }
    }

    fn acknowledge_flushes(&mut self, flushes: Vec<FlushAck>, batch: Result<(), StoreError>) {
        if flushes.is_empty() {
            return;
        }
        let result = if self.lost.count > 0 {
            let lost = std::mem::take(&mut self.lost);
            Err(StoreError::RecordsLost {
                count: lost.count,
                reason: lost.reason,
            })
        } else {
            batch
        };
        for ack in flushes {
            let _ = ack.send(result.clone());
        }
    }
}

/// Takes the first job plus whatever else is already queued, up to [`MAX_BATCH`].
fn drain(first: Job, rx: &Receiver<Job>) -> Vec<Job> {
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
    batch
}

/// Inserts the records after `head` in one immediate transaction. Dropping the transaction on
/// any error rolls it back, so either the whole batch is in the chain or none of it is.
fn write_batch<'a>(
    conn: &mut Connection,
    mut head: Head,
    records: impl Iterator<Item = &'a Pending>,
) -> rusqlite::Result<(Vec<i64>, Head)> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut ids = Vec::new();
    {
        let mut insert = tx.prepare_cached(db::INSERT)?;
        for r in records {
            let id = head.id + 1;
            let time = db::format_time(OffsetDateTime::now_utc());
            let hash = r.link(id, &time, &head.hash).hash();
            insert.execute(params![
                id,
                time,
                r.kind.as_str(),
                r.session_id,
                r.principal,
                r.connection,
                r.decision,
                r.policy,
                r.rule,
                r.detail,
                head.hash,
                hash,
            ])?;
            head = Head { id, hash };
            ids.push(id);
        }
    }
    tx.commit()?;
    Ok((ids, head))
}

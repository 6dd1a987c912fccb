//! The single writer thread: every record of every session goes through it, in order, with
//! group commit.
//!
//! Why one thread: the chain needs a total order (each record hashes the one before it). Why
//! group commit: the commit is the expensive part (a `write` to the journal, plus an
//! `fdatasync` under `synchronous=full`); while one batch commits, the next batch piles up in
//! the channel and is committed by the next single write, so the cost per statement falls as
//! load rises instead of serialising sessions behind each other's commits.
//!
//! Per batch the writer assigns ids and times (so chain order is commit order), hashes the
//! chain, appends the batch to the journal as one frame, acknowledges every waiter, and hands
//! the records to the indexer thread for SQLite. If the append fails, the journal is cut back
//! to what it held, every waiter gets the error (and refuses its statement), and the chain head
//! stays where the journal ends, so a failed batch never leaves a hole or a fork in the chain.
//! Between batches, once the journal is large and the indexer has everything in it in SQLite,
//! the writer empties it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::oneshot;

use crate::chain::canonical_json;
use crate::db::{self, Head};
use crate::indexer::{IndexJob, Progress};
use crate::journal::{self, Entry, Journal};
use crate::{NewRecord, RecordKind, StoreError};

/// Most records committed by one journal write. Bounds how long the first waiter of a large
/// batch waits, and the memory of one batch.
const MAX_BATCH: usize = 1024;

/// Journal size above which the writer empties it, once everything in it is indexed.
const JOURNAL_LIMIT: u64 = 16 * 1024 * 1024;

/// Under steady load the indexer is always a batch or two behind, so the journal is never
/// fully indexed at the moment the writer looks. Past twice the limit the writer therefore
/// waits (once, at most this long) for the indexer to catch up: a pause of a few milliseconds
/// every 16 MiB of records. If indexing is failing it gives up and tries again a limit later.
const CATCH_UP_WAIT: Duration = Duration::from_millis(250);

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
    /// Tests reach the writer itself (failure hooks, stalls, panics), between batches.
    #[cfg(test)]
    Run(Box<dyn FnOnce(&mut Writer) + Send>),
}

/// A record ready for the writer: the detail is already canonical JSON text, serialised on the
/// caller's thread so the serial writer only hashes and appends.
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

/// Counters the tests use to prove batching happens.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Journal appends attempted (one per batch that held at least one append).
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

pub(crate) struct Writer {
    journal: Journal,
    /// The last record in the journal (or, when it is empty, in SQLite).
    head: Head,
    /// Reused for every frame.
    frame: Vec<u8>,
    index: Sender<IndexJob>,
    progress: Arc<Progress>,
    lost: Lost,
    failing: bool,
    stats: Arc<Stats>,
    journal_limit: u64,
    /// Journal size past which the writer waits for the indexer before emptying the journal.
    wait_at: u64,
    /// Test hook: the next journal appends fail, as on a full disk.
    #[cfg(test)]
    fail_appends: bool,
}

/// Starts the writer thread, continuing the chain from `head`. It stops when every sender is
/// dropped, after committing what is queued; dropping its `index` sender then stops the indexer.
pub(crate) fn spawn(
    journal: Journal,
    head: Head,
    index: Sender<IndexJob>,
    progress: Arc<Progress>,
    stats: Arc<Stats>,
) -> std::io::Result<(Sender<Job>, JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel();
    let writer = Writer {
        journal,
        head,
        frame: Vec::new(),
        index,
        progress,
        lost: Lost::default(),
        failing: false,
        stats,
        journal_limit: JOURNAL_LIMIT,
        wait_at: 2 * JOURNAL_LIMIT,
        #[cfg(test)]
        fail_appends: false,
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
            self.maybe_empty_journal();
            self.process(batch);
        }
        tracing::debug!("audit writer stopping: every store handle is gone");
    }

    fn process(&mut self, batch: Vec<Job>) {
        let mut records = Vec::with_capacity(batch.len());
        let mut acks = Vec::with_capacity(batch.len());
        let mut flushes = Vec::new();
        for job in batch {
            match job {
                Job::Append { record, ack } => {
                    records.push(record);
                    acks.push(ack);
                }
                Job::Flush(ack) => flushes.push(ack),
                #[cfg(test)]
                Job::Run(f) => f(self),
            }
        }
        let result = if records.is_empty() {
            Ok(0)
        } else {
            self.commit(records)
        };
        self.acknowledge_appends(acks, &result);
        self.acknowledge_flushes(flushes, result.map(|_| ()));
    }

    /// Commits one batch with one journal append; on success returns the first id (the batch
    /// has consecutive ids in queue order) and hands the records to the indexer.
    fn commit(&mut self, records: Vec<Pending>) -> Result<i64, StoreError> {
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        let first = self.head.id + 1;
        let mut prev_hash = self.head.hash.clone();
        let mut entries = Vec::with_capacity(records.len());
        for (id, r) in (first..).zip(records) {
            let mut entry = Entry {
                id,
                time: db::format_time(OffsetDateTime::now_utc()),
                kind: r.kind.as_str().to_owned(),
                session_id: r.session_id,
                principal: r.principal,
                connection: r.connection,
                decision: r.decision,
                policy: r.policy,
                rule: r.rule,
                detail: r.detail,
                prev_hash,
                hash: String::new(),
            };
            entry.hash = entry.link().hash();
            prev_hash = entry.hash.clone();
            entries.push(entry);
        }
        journal::encode_frame(&mut self.frame, &entries);
        // The head moves only once the frame is in the journal.
        self.append_frame()?;
        let last = entries.last().expect("a batch has records");
        self.head = Head {
            id: last.id,
            hash: last.hash.clone(),
        };
        self.progress.written.store(last.id, Ordering::Release);
        // The indexer only stops after this thread does, so this cannot fail while we run.
        let _ = self.index.send(IndexJob::Batch(entries));
        Ok(first)
    }

    fn append_frame(&mut self) -> Result<(), StoreError> {
        #[cfg(test)]
        if self.fail_appends {
            return self.journal.append_torn(&self.frame);
        }
        self.journal.append(&self.frame)
    }

    /// Empties the journal once it is large and SQLite holds everything in it. Never while
    /// indexing is behind (or failing): then the journal is the only copy of some records.
    fn maybe_empty_journal(&mut self) {
        let len = self.journal.len();
        if len <= self.journal_limit {
            return;
        }
        let indexed = self.progress.indexed() >= self.head.id
            || (len > self.wait_at && self.progress.wait_for(self.head.id, CATCH_UP_WAIT));
        if !indexed {
            if len > self.wait_at {
                self.wait_at = len + self.journal_limit;
            }
            return;
        }
        match self.journal.truncate() {
            Ok(()) => {
                self.wait_at = 2 * self.journal_limit;
                tracing::trace!("audit journal emptied; SQLite holds every record");
            }
            Err(err) => tracing::warn!(error = %err,
                "cannot empty the audit journal; it keeps growing until this succeeds"),
        }
    }

    fn acknowledge_appends(
        &mut self,
        acks: Vec<Option<AppendAck>>,
        result: &Result<i64, StoreError>,
    ) {
        match result {
            Ok(first) => {
                if std::mem::take(&mut self.failing) {
                    tracing::info!("audit store writable again");
                }
                for (ack, id) in acks.into_iter().zip(*first..) {
                    if let Some(ack) = ack {
                        // A dropped receiver means the caller stopped waiting; the record stays.
                        let _ = ack.send(Ok(id));
                    }
                }
            }
            Err(err) => self.fail_batch(acks, err),
        }
    }

    fn fail_batch(&mut self, acks: Vec<Option<AppendAck>>, err: &StoreError) {
        self.failing = true;
        let total = acks.len();
        let mut detached = 0u64;
        for ack in acks {
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

/// Test hooks, run on the writer thread through [`Job::Run`].
#[cfg(test)]
impl Writer {
    /// Makes journal appends fail (after writing half the frame) until called with `false`.
    pub(crate) fn fail_journal_appends(&mut self, fail: bool) {
        self.fail_appends = fail;
    }

    pub(crate) fn set_journal_limit(&mut self, bytes: u64) {
        self.journal_limit = bytes;
        self.wait_at = 2 * bytes;
    }

    pub(crate) fn journal_len(&self) -> u64 {
        self.journal.len()
    }

    /// Runs `f` on the indexer's connection once everything committed before is attempted.
    pub(crate) fn on_index_connection(
        &mut self,
        f: Box<dyn FnOnce(&mut rusqlite::Connection) + Send>,
    ) {
        let _ = self.index.send(IndexJob::Run(f));
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

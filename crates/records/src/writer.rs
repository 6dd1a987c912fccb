//! The writer: every record of every session goes through it, in order, with group commit.
//!
//! Why one writer: the chain needs a total order (each record hashes the one before it). Why
//! group commit: the commit is the expensive part (a `write` to the journal, plus an
//! `fdatasync` under `synchronous=full`); while one batch commits, the next batch piles up in
//! the queue and is committed by the next single write, so the cost per statement falls as
//! load rises instead of serialising sessions behind each other's commits.
//!
//! The writer state ([`Writer`]: journal, chain head, indexer channel, failure bookkeeping) sits
//! behind one mutex in [`Shared`], beside the queue of [`Job`]s. Who commits depends on
//! `synchronous`:
//!
//! - **`normal`: the callers themselves ("flat combining").** A caller pushes its job, then
//!   *tries* to lock the writer. If it gets the lock it is the leader: it commits everything
//!   queued (its own job and its followers'), acknowledges every waiter, unlocks, and looks at
//!   the queue again. If it does not get the lock, the holder will see the job when it looks
//!   again after unlocking, so the caller just awaits its acknowledgement. No job is stranded:
//!   a push either comes before the holder's second look (which sees it) or after it, and so
//!   after the holder unlocked, when the pusher's own `try_lock` either succeeds or fails
//!   because of a newer holder, who will look in turn. A lone session's append thus costs one
//!   `write` on its own thread and no thread hand-off at all. Holding a `std` mutex across that
//!   `write` on a tokio worker is fine: it lands in the page cache in microseconds. It is never
//!   held across an `.await`. A leader commits at most [`MAX_ROUNDS`] batches, then leaves
//!   what is still queued to the writer thread, so one caller never serves the others forever.
//! - **`full`: the writer thread.** A sync takes milliseconds, too long to hold a tokio worker,
//!   so callers push and nudge the dedicated writer thread, which commits as the leader does.
//!
//! Detached appends never lead: committing each on its own would cost a `write` apiece where
//! the writer thread batches many (they come in bursts, and nobody waits for them). One pushed
//! onto an empty queue nudges the writer thread; one pushed behind other jobs needs nothing, as
//! whoever takes those jobs takes it too, or finds it left when they look again. A synchronous
//! append queued behind it carries it into the same write.
//!
//! The writer thread also runs the test hooks, takes over from a leader that hit its round
//! limit, and does the one potentially long wait (for the indexer, before emptying a large
//! journal), which a leader never does.
//!
//! Per batch the leader assigns ids and times (so chain order is commit order), hashes the
//! chain, appends the batch to the journal as one frame, acknowledges every waiter, and hands
//! the records to the indexer thread for SQLite. If the append fails, the journal is cut back
//! to what it held, every waiter gets the error (and refuses its statement), and the chain head
//! stays where the journal ends, so a failed batch never leaves a hole or a fork in the chain.
//! Between batches, once the journal is large and the indexer has everything in it in SQLite,
//! the leader empties it.
//!
//! A panic while committing (a bug) poisons the writer: the queue is closed, every queued job
//! is dropped (its caller gets [`StoreError::WriterStopped`]), and so is every later append.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
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

/// Most batches one caller commits as leader before leaving the rest to the writer thread.
const MAX_ROUNDS: usize = 4;

/// Journal size above which the writer empties it, once everything in it is indexed.
const JOURNAL_LIMIT: u64 = 16 * 1024 * 1024;

/// Under steady load the indexer is always a batch or two behind, so the journal is never
/// fully indexed at the moment the writer looks. Past twice the limit the writer thread
/// therefore waits (once, at most this long) for the indexer to catch up: a pause of a few
/// milliseconds every 16 MiB of records. If indexing is failing it gives up and tries again a
/// limit later.
const CATCH_UP_WAIT: Duration = Duration::from_millis(250);

pub(crate) type AppendAck = oneshot::Sender<Result<i64, StoreError>>;
pub(crate) type FlushAck = oneshot::Sender<Result<(), StoreError>>;

/// Work for the writer.
pub(crate) enum Job {
    /// Write a record; `ack` is `None` for detached appends.
    Append {
        record: Pending,
        ack: Option<AppendAck>,
    },
    /// Acknowledge once everything queued before it is committed.
    Flush(FlushAck),
    /// Tests reach the writer itself (failure hooks, stalls, panics), between batches. Always
    /// handed to the writer thread, though a leader may get to it first.
    #[cfg(test)]
    Run(Box<dyn FnOnce(&mut Writer) + Send>),
}

/// A record ready for the writer: the detail is already canonical JSON text, serialised on the
/// caller's side before it queues, so the serial part only hashes and appends.
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
    /// Jobs queued so far, so tests can tell when work has piled up.
    #[cfg(test)]
    pub(crate) queued: AtomicU64,
    /// Batches of jobs the writer thread took (the rest were taken by leading callers).
    #[cfg(test)]
    pub(crate) thread_batches: AtomicU64,
}

/// The queue and the writer state, shared by every store handle and the writer thread.
pub(crate) struct Shared {
    queue: Mutex<Queue>,
    writer: Mutex<Writer>,
    /// `synchronous=normal`: callers commit themselves; otherwise the writer thread does.
    pub(crate) callers_lead: bool,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// The writer was poisoned (a panic while committing): nothing more is accepted.
    stopped: bool,
}

/// What a leader leaves to the writer thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub(crate) enum Handoff {
    /// Nothing: whatever is queued is being committed by someone.
    None,
    /// Jobs are still queued after the round limit, or the journal needs the indexer to catch
    /// up before it can be emptied: nudge the writer thread.
    Thread,
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
    /// `None` once the store is closed, which lets the indexer finish and stop.
    index: Option<Sender<IndexJob>>,
    progress: Arc<Progress>,
    lost: Lost,
    failing: bool,
    stats: Arc<Stats>,
    journal_limit: u64,
    /// Journal size past which the writer thread waits for the indexer before emptying the
    /// journal.
    wait_at: u64,
    /// Test hook: the next journal appends fail, as on a full disk.
    #[cfg(test)]
    fail_appends: bool,
}

/// The writer thread's handle: nudge it to commit what is queued; dropping the nudge sender
/// stops it once it has committed everything queued.
pub(crate) struct Started {
    pub(crate) shared: Arc<Shared>,
    pub(crate) nudge: SyncSender<()>,
    pub(crate) thread: JoinHandle<()>,
}

/// Sets up the writer, continuing the chain from `head`, and starts its thread. Once every
/// store handle is gone, [`Shared::close`] drops the `index` sender, which stops the indexer.
pub(crate) fn spawn(
    journal: Journal,
    head: Head,
    index: Sender<IndexJob>,
    progress: Arc<Progress>,
    stats: Arc<Stats>,
) -> std::io::Result<Started> {
    let callers_lead = !journal.syncs();
    let writer = Writer {
        journal,
        head,
        frame: Vec::new(),
        index: Some(index),
        progress,
        lost: Lost::default(),
        failing: false,
        stats,
        journal_limit: JOURNAL_LIMIT,
        wait_at: 2 * JOURNAL_LIMIT,
        #[cfg(test)]
        fail_appends: false,
    };
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue::default()),
        writer: Mutex::new(writer),
        callers_lead,
    });
    // One pending nudge is enough: the thread looks at the whole queue after taking it.
    let (nudge, nudges) = mpsc::sync_channel(1);
    let thread = thread::Builder::new()
        .name("portcullis-records-writer".into())
        .spawn({
            let shared = Arc::clone(&shared);
            move || run(&shared, &nudges)
        })?;
    Ok(Started {
        shared,
        nudge,
        thread,
    })
}

/// The writer thread: commits whatever is queued each time it is nudged, and once more when
/// the last store handle is gone.
fn run(shared: &Shared, nudges: &Receiver<()>) {
    while nudges.recv().is_ok() {
        shared.lead_blocking();
    }
    shared.lead_blocking();
    tracing::debug!("audit writer stopping: every store handle is gone");
}

impl Shared {
    /// Queues `job` behind everything queued before; returns whether the queue was empty.
    /// Fails if the writer was poisoned.
    pub(crate) fn push(&self, job: Job) -> Result<bool, StoreError> {
        let mut queue = self.queue();
        if queue.stopped {
            return Err(StoreError::WriterStopped);
        }
        let was_empty = queue.jobs.is_empty();
        queue.jobs.push_back(job);
        Ok(was_empty)
    }

    /// Commits what is queued on the caller's thread, if no one else is committing; see the
    /// module docs for why nothing queued is left behind. The caller must nudge the writer
    /// thread if this returns [`Handoff::Thread`].
    pub(crate) fn try_lead(&self) -> Handoff {
        for _ in 0..MAX_ROUNDS {
            let writer = match self.writer.try_lock() {
                Ok(writer) => writer,
                // The holder looks at the queue again after unlocking.
                Err(TryLockError::WouldBlock) => return Handoff::None,
                Err(TryLockError::Poisoned(_)) => {
                    self.stop();
                    return Handoff::None;
                }
            };
            if self.commit_batch(writer, false) == Handoff::Thread {
                return Handoff::Thread;
            }
            // The writer is unlocked again: anything pushed from now on is committed by its
            // pusher or by whoever holds the writer then.
            if self.queue().jobs.is_empty() {
                return Handoff::None;
            }
        }
        Handoff::Thread
    }

    /// The writer thread's turn: waits for the writer, then commits until the queue is empty.
    fn lead_blocking(&self) {
        loop {
            let Ok(writer) = self.writer.lock() else {
                self.stop();
                return;
            };
            let _ = self.commit_batch(writer, true);
            if self.queue().jobs.is_empty() {
                return;
            }
        }
    }

    /// With the writer locked: empties the journal if due, then commits one batch of what is
    /// queued (at most [`MAX_BATCH`] records). Only the writer thread may wait for the indexer.
    fn commit_batch(&self, mut writer: MutexGuard<'_, Writer>, may_wait: bool) -> Handoff {
        // Declared after `writer`, so dropped before it: the queue is closed before the mutex
        // is poisoned and unlocked.
        let _stop_on_panic = StopOnPanic(self);
        let handoff = writer.maybe_empty_journal(may_wait);
        let batch = self.take_batch();
        if !batch.is_empty() {
            #[cfg(test)]
            if may_wait {
                writer.stats.thread_batches.fetch_add(1, Ordering::Relaxed);
            }
            writer.process(batch);
        }
        handoff
    }

    fn take_batch(&self) -> Vec<Job> {
        let mut queue = self.queue();
        let n = queue.jobs.len().min(MAX_BATCH);
        queue.jobs.drain(..n).collect()
    }

    /// The writer is poisoned: refuse new jobs and drop the queued ones, so every caller
    /// waiting on one gets [`StoreError::WriterStopped`] instead of waiting forever.
    fn stop(&self) {
        let jobs = {
            let mut queue = self.queue();
            queue.stopped = true;
            std::mem::take(&mut queue.jobs)
        };
        if !jobs.is_empty() {
            tracing::error!(
                jobs = jobs.len(),
                "audit writer stopped by a panic; queued records are refused"
            );
        }
    }

    /// Once every store handle and the writer thread are gone: drops the indexer's channel so
    /// it indexes what it has and stops.
    pub(crate) fn close(&self) {
        let mut writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        writer.index = None;
    }

    /// The last committed record: what a signed checkpoint vouches for. Taken from the writer
    /// rather than read back from SQLite, so a row rewritten there is never signed.
    pub(crate) fn head(&self) -> crate::db::Head {
        let writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        writer.head.clone()
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        // Nothing panics while holding it; a poisoned queue is still consistent.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Closes the queue if a panic unwinds through a commit.
struct StopOnPanic<'a>(&'a Shared);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.stop();
        }
    }
}

/// Nudges the writer thread (`Started::nudge`). If the thread is gone, it cannot take over, so
/// the writer is stopped: queued callers are refused rather than left waiting.
pub(crate) fn nudge(shared: &Shared, nudge: &SyncSender<()>) {
    match nudge.try_send(()) {
        // Full: a nudge is pending, and the thread looks at the whole queue after taking it.
        Ok(()) | Err(TrySendError::Full(())) => {}
        Err(TrySendError::Disconnected(())) => shared.stop(),
    }
}

impl Writer {
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
        // The indexer only stops once the store is closed, so this cannot fail while we run.
        if let Some(index) = &self.index {
            let _ = index.send(IndexJob::Batch(entries));
        }
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
    /// Past twice the limit and still behind, only the writer thread (`may_wait`) waits for the
    /// indexer (at most [`CATCH_UP_WAIT`]); a leading caller hands that to the thread instead.
    fn maybe_empty_journal(&mut self, may_wait: bool) -> Handoff {
        let len = self.journal.len();
        if len <= self.journal_limit {
            return Handoff::None;
        }
        let mut indexed = self.progress.indexed() >= self.head.id;
        if !indexed && len > self.wait_at {
            if !may_wait {
                return Handoff::Thread;
            }
            indexed = self.progress.wait_for(self.head.id, CATCH_UP_WAIT);
            if !indexed {
                self.wait_at = len + self.journal_limit;
            }
        }
        if !indexed {
            return Handoff::None;
        }
        match self.journal.truncate() {
            Ok(()) => {
                self.wait_at = 2 * self.journal_limit;
                tracing::trace!("audit journal emptied; SQLite holds every record");
            }
            Err(err) => tracing::warn!(error = %err,
                "cannot empty the audit journal; it keeps growing until this succeeds"),
        }
        Handoff::None
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

/// Test hooks, run with the writer locked through [`Job::Run`].
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
        if let Some(index) = &self.index {
            let _ = index.send(IndexJob::Run(f));
        }
    }
}

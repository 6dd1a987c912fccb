//! The indexer thread: copies committed records from the writer into SQLite, off the hot path.
//!
//! Records reach it already committed (in the journal) and acknowledged, so nobody waits on it.
//! It takes whatever batches have queued and inserts them in one transaction, at most one
//! transaction per [`PACE`], so SQLite's cost per record stays low. If that fails
//! (disk full, a lock held too long), it logs, keeps the records and retries with backoff; they
//! are safe in the journal meanwhile, and the writer does not empty the journal until this
//! thread has reported them indexed through [`Progress`].

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rusqlite::{Connection, TransactionBehavior};

use crate::db;
use crate::journal::Entry;

/// Least time between indexing transactions, so each covers many records. Also about how far
/// SQLite lags the journal.
const PACE: Duration = Duration::from_millis(10);
/// Under sustained load (a transaction of at least [`BUSY_ROWS`] records) the indexer waits
/// longer: SQLite's cost per record falls with the size of the transaction (the index pages a
/// commit rewrites are shared by more records; measured about a fifth less CPU per record at
/// ~1,000 records than at ~250), and that CPU is taken from forwarding statements.
const BUSY_PACE: Duration = Duration::from_millis(40);
const BUSY_ROWS: usize = 256;
/// Most records gathered into one indexing transaction.
const MAX_ROWS: usize = 16 * 1024;
/// First and longest wait before retrying a failed transaction.
const RETRY_FIRST: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// Attempts left after the store is closed while indexing fails; then the journal keeps the
/// records for the next open.
const ATTEMPTS_AFTER_CLOSE: u32 = 3;

/// Work for the indexer.
pub(crate) enum IndexJob {
    /// Records committed to the journal, in chain order.
    Batch(Vec<Entry>),
    /// Tests reach the indexer's connection, after everything queued before is attempted.
    #[cfg(test)]
    Run(Box<dyn FnOnce(&mut Connection) + Send>),
}

/// How far the writer and the indexer have got, by record id.
#[derive(Debug)]
pub(crate) struct Progress {
    /// Last id committed to the journal.
    pub(crate) written: AtomicI64,
    /// Last id committed to SQLite.
    indexed: AtomicI64,
    lock: Mutex<()>,
    caught_up: Condvar,
}

impl Progress {
    pub(crate) fn new(head: i64) -> Self {
        Progress {
            written: AtomicI64::new(head),
            indexed: AtomicI64::new(head),
            lock: Mutex::new(()),
            caught_up: Condvar::new(),
        }
    }

    pub(crate) fn indexed(&self) -> i64 {
        self.indexed.load(Ordering::Acquire)
    }

    fn set_indexed(&self, id: i64) {
        self.indexed.store(id, Ordering::Release);
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.caught_up.notify_all();
    }

    /// Waits (at most `limit`) until SQLite holds every record committed before the call, so a
    /// query made after an append returned sees that record. Returns whether it caught up.
    pub(crate) fn wait_indexed(&self, limit: Duration) -> bool {
        self.wait_for(self.written.load(Ordering::Acquire), limit)
    }

    /// Waits (at most `limit`) until SQLite holds record `target`. Returns whether it does.
    pub(crate) fn wait_for(&self, target: i64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        while self.indexed() < target {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            guard = self
                .caught_up
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

struct Indexer {
    conn: Connection,
    pending: Vec<Entry>,
    progress: Arc<Progress>,
    /// Tells the checkpointer there is WAL to copy back.
    checkpoint: SyncSender<()>,
    /// `Some` while failing: the current backoff and when to attempt next.
    retry: Option<(Duration, Instant)>,
}

/// Starts the indexer. It stops once the writer has dropped its sender and everything received
/// is indexed (or, if indexing keeps failing, after a few more attempts).
pub(crate) fn spawn(
    conn: Connection,
    rx: Receiver<IndexJob>,
    checkpoint: SyncSender<()>,
    progress: Arc<Progress>,
) -> std::io::Result<JoinHandle<()>> {
    let indexer = Indexer {
        conn,
        pending: Vec::new(),
        progress,
        checkpoint,
        retry: None,
    };
    thread::Builder::new()
        .name("portcullis-records-indexer".into())
        .spawn(move || indexer.run(&rx))
}

impl Indexer {
    fn run(mut self, rx: &Receiver<IndexJob>) {
        let mut attempts_left = ATTEMPTS_AFTER_CLOSE;
        let mut closed = false;
        loop {
            let first = match (self.retry, closed) {
                (None, false) => match rx.recv() {
                    Ok(job) => Some(job),
                    Err(_) => break,
                },
                // Failing: keep taking batches, but attempt only once the backoff is over.
                (Some((_, at)), false) => {
                    match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                        Ok(job) => Some(job),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => {
                            closed = true;
                            None
                        }
                    }
                }
                (retry, true) => {
                    if self.pending.is_empty() || attempts_left == 0 {
                        break;
                    }
                    attempts_left -= 1;
                    if let Some((_, at)) = retry {
                        thread::sleep(at.saturating_duration_since(Instant::now()));
                    }
                    None
                }
            };
            if let Some(job) = first {
                self.take(job);
                while self.pending.len() < MAX_ROWS {
                    match rx.try_recv() {
                        Ok(job) => self.take(job),
                        Err(_) => break,
                    }
                }
            }
            if self.retry.is_none_or(|(_, at)| Instant::now() >= at) {
                // Let records pile up rather than commit every few: each SQLite commit rewrites
                // the table and index pages it touched, so the cost is per transaction, and on
                // a busy gateway host that I/O competes with forwarding statements.
                match self.index() {
                    0 => {}
                    rows if rows >= BUSY_ROWS => thread::sleep(BUSY_PACE),
                    _ => thread::sleep(PACE),
                }
            }
        }
        if !self.pending.is_empty() {
            tracing::error!(
                records = self.pending.len(),
                "audit indexer stopping with records not yet in SQLite; they are kept in the \
                 journal and indexed when the store is next opened"
            );
        }
    }

    fn take(&mut self, job: IndexJob) {
        match job {
            IndexJob::Batch(entries) => self.pending.extend(entries),
            #[cfg(test)]
            IndexJob::Run(f) => {
                let _ = self.index();
                f(&mut self.conn);
            }
        }
    }

    /// One transaction for everything pending; on failure everything stays pending. Returns
    /// how many records it committed.
    fn index(&mut self) -> usize {
        let Some(last) = self.pending.last().map(|e| e.id) else {
            return 0;
        };
        match insert_all(&mut self.conn, &self.pending) {
            Ok(()) => {
                let rows = self.pending.len();
                self.pending.clear();
                self.progress.set_indexed(last);
                if self.retry.take().is_some() {
                    tracing::info!("audit indexing resumed; SQLite has caught up");
                }
                // A full channel means a checkpoint is already due; never wait for it.
                let _ = self.checkpoint.try_send(());
                rows
            }
            Err(err) => {
                let delay = match self.retry {
                    None => {
                        tracing::error!(error = %crate::error::describe(&err),
                            records = self.pending.len(),
                            "audit records not indexed yet; they are committed in the journal \
                             and indexing will be retried");
                        RETRY_FIRST
                    }
                    Some((d, _)) => (d * 2).min(RETRY_MAX),
                };
                self.retry = Some((delay, Instant::now() + delay));
                0
            }
        }
    }
}

fn insert_all(conn: &mut Connection, entries: &[Entry]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut insert = tx.prepare_cached(db::INSERT)?;
        for e in entries {
            e.insert(&mut insert)?;
        }
    }
    tx.commit()
}

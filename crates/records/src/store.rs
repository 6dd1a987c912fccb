//! [`Store`]: the handle the gateway and the CLI hold. It ties the writer (appends, committed by
//! the appending callers or the writer thread; see `writer.rs`), the indexer and checkpointer
//! behind it, and per-call reader connections (queries and verification).

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::indexer::{self, Progress};
use crate::journal::{self, Journal};
use crate::location::{self, Location, Synchronous};
use crate::query::{self, SessionFilter, SessionSummary};
use crate::verify::{self, VerifyReport};
use crate::writer::{self, Handoff, Job, Shared, Stats};
use crate::{checkpoint, db, NewRecord, Record, StoreError};

/// How long a reader waits for the indexer to catch up with what was already committed, before
/// reading SQLite as it is (indexing is failing; the writer has logged why).
const CATCH_UP_LIMIT: Duration = Duration::from_secs(2);

/// Writers open in this process, by canonical database path, so a read-only store opened beside
/// one (the admin API, tests) sees every record already committed, not a lagging index.
static WRITERS: Mutex<Vec<(PathBuf, Weak<Progress>)>> = Mutex::new(Vec::new());

/// The audit store. Cloning is cheap and every clone shares the one writer; the writer thread
/// stops (after writing everything queued) when the last clone is dropped.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// `None` for read-only stores.
    writer: Option<WriterHandle>,
    /// The writer of this store in this process, if any: queries wait for it to index what it
    /// has committed.
    progress: Option<Arc<Progress>>,
}

struct WriterHandle {
    shared: Arc<Shared>,
    /// Wakes the writer thread. Always `Some` until drop; an `Option` so drop can close the
    /// channel (which stops the thread) before joining.
    nudge: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Stops by itself once the writer has closed its channel.
    indexer: Option<JoinHandle<()>>,
    /// Stops by itself once the indexer (which holds its nudge channel) has stopped.
    checkpointer: Option<JoinHandle<()>>,
    progress: Arc<Progress>,
    journal: PathBuf,
    #[cfg_attr(not(test), allow(dead_code))]
    stats: Arc<Stats>,
    /// Released (closed) only after every thread has stopped.
    _lock: File,
}

impl Drop for WriterHandle {
    /// Closing the channel lets the writer thread finish what is queued and the indexer index
    /// it; joining means records queued with `append_detached` are committed before the process
    /// goes on to exit.
    fn drop(&mut self) {
        drop(self.nudge.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("audit writer thread had panicked");
            }
        }
        // No handle is left to append, and the writer thread has stopped: the indexer can too.
        self.shared.close();
        if let Some(thread) = self.indexer.take() {
            if thread.join().is_err() {
                tracing::error!("audit indexer thread had panicked");
            }
        }
        if let Some(thread) = self.checkpointer.take() {
            let _ = thread.join();
        }
        // Everything is in SQLite: leave no journal for the next open (or a CLI) to scan.
        if self.progress.indexed()
            >= self
                .progress
                .written
                .load(std::sync::atomic::Ordering::Acquire)
        {
            if let Ok(file) = File::options().write(true).open(&self.journal) {
                let _ = file.set_len(0);
            }
        }
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .field("read_only", &self.inner.writer.is_none())
            .finish()
    }
}

impl Store {
    /// Opens `sqlite://PATH[?synchronous=full|normal]`, creating parent directories and the
    /// schema if needed, indexes whatever the journal (`PATH-records.journal`) holds that SQLite
    /// does not, and starts the writer. Only one process may have a store open for writing
    /// ([`StoreError::InUse`]); it holds `PATH-lock` while it does.
    pub fn open(url: &str) -> Result<Store, StoreError> {
        let loc = location::parse(url)?;
        let lock = db::lock_writer(&loc.path)?;
        let mut conn = db::open_writer(&loc)?;
        let head = journal::recover(&mut conn, &loc.path)?;
        let open_err = |reason: String| StoreError::Open {
            path: loc.path.display().to_string(),
            reason,
        };
        let journal_path = journal::path(&loc.path);
        let journal = Journal::open(journal_path.clone(), loc.synchronous == Synchronous::Full)
            .map_err(|e| open_err(format!("cannot open {}: {e}", journal_path.display())))?;
        let thread_err = |e: std::io::Error| open_err(format!("cannot start a store thread: {e}"));
        let (nudge, checkpointer) =
            checkpoint::spawn(db::open_checkpointer(&loc)?).map_err(thread_err)?;
        let progress = Arc::new(Progress::new(head.id));
        let (index_tx, index_rx) = mpsc::channel();
        let indexer =
            indexer::spawn(conn, index_rx, nudge, Arc::clone(&progress)).map_err(thread_err)?;
        let stats = Arc::new(Stats::default());
        let started = writer::spawn(
            journal,
            head,
            index_tx,
            Arc::clone(&progress),
            Arc::clone(&stats),
        )
        .map_err(thread_err)?;
        register(&loc.path, &progress);
        let writer = WriterHandle {
            shared: started.shared,
            nudge: Some(started.nudge),
            thread: Some(started.thread),
            indexer: Some(indexer),
            checkpointer: Some(checkpointer),
            progress: Arc::clone(&progress),
            journal: journal_path,
            stats,
            _lock: lock,
        };
        Ok(Store::with(loc.path, Some(writer), Some(progress)))
    }

    /// Opens an existing store for queries only (the CLI, with the gateway running or stopped).
    /// Never creates anything; appends fail with [`StoreError::ReadOnly`].
    ///
    /// If no writer is running (the gateway stopped or was killed), this first indexes the
    /// records its journal holds that SQLite does not, so they are all visible; that needs write
    /// access to the store's directory. If a writer is running in another process, this waits
    /// (up to two seconds) until SQLite holds every record the journal held at the open; queries
    /// then read SQLite as it is, so records committed after the open may be missing until they
    /// are indexed (usually 10–20 ms later).
    pub fn open_read_only(url: &str) -> Result<Store, StoreError> {
        let loc = location::parse(url)?;
        // Opening once now reports a missing or foreign file here rather than at first query.
        db::open_reader(&loc.path)?;
        let writer_running = !recover_abandoned(&loc)?;
        let progress = running_writer(&loc.path);
        if writer_running && progress.is_none() {
            catch_up_with_journal(&loc.path);
        }
        Ok(Store::with(loc.path, None, progress))
    }

    fn with(path: PathBuf, writer: Option<WriterHandle>, progress: Option<Arc<Progress>>) -> Store {
        Store {
            inner: Arc::new(Inner {
                path,
                writer,
                progress,
            }),
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Appends a record and resolves once it is committed (in the journal), with its id. An
    /// error means the record is not stored: the statement it describes must be refused.
    pub async fn append(&self, record: NewRecord) -> Result<i64, StoreError> {
        let (ack, done) = oneshot::channel();
        self.send(Job::Append {
            record: record.into(),
            ack: Some(ack),
        })?;
        done.await.map_err(|_| StoreError::WriterStopped)?
    }

    /// Queues a record behind earlier appends without waiting, for facts recorded after the
    /// event (results, session ends). Failures are logged, and reported by the next [`flush`].
    ///
    /// [`flush`]: Store::flush
    pub fn append_detached(&self, record: NewRecord) {
        let (kind, session_id) = (record.kind, record.session_id.clone());
        let job = Job::Append {
            record: record.into(),
            ack: None,
        };
        if let Err(err) = self.send(job) {
            tracing::error!(error = %err, %kind, session_id = session_id.as_deref(),
                "audit record lost");
        }
    }

    /// Waits until everything queued so far is committed. Fails if that batch failed, or if any
    /// detached record was lost since the previous flush. A read-only store has nothing to flush.
    pub async fn flush(&self) -> Result<(), StoreError> {
        if self.inner.writer.is_none() {
            return Ok(());
        }
        let (ack, done) = oneshot::channel();
        self.send(Job::Flush(ack))?;
        done.await.map_err(|_| StoreError::WriterStopped)?
    }

    /// Queues `job`, then sees it committed: under `synchronous=normal` by this caller as the
    /// leader (or by whoever leads now), otherwise by the writer thread; see `writer.rs`. Fails
    /// at once if the writer was poisoned, so no caller ever waits on a dead writer.
    fn send(&self, job: Job) -> Result<(), StoreError> {
        let writer = self.inner.writer.as_ref().ok_or(StoreError::ReadOnly)?;
        let detached = matches!(job, Job::Append { ack: None, .. });
        #[cfg(test)]
        let to_thread = matches!(job, Job::Run(_));
        #[cfg(not(test))]
        let to_thread = false;
        let was_empty = writer.shared.push(job)?;
        #[cfg(test)]
        writer
            .stats
            .queued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let handoff = if to_thread || !writer.shared.callers_lead {
            Handoff::Thread
        } else if detached {
            // Whoever takes the jobs already queued takes this one too.
            if was_empty {
                Handoff::Thread
            } else {
                Handoff::None
            }
        } else {
            writer.shared.try_lead()
        };
        if handoff == Handoff::Thread {
            // `nudge` is `None` only while the handle is being dropped, when no one can send.
            if let Some(nudge) = &writer.nudge {
                writer::nudge(&writer.shared, nudge);
            }
        }
        Ok(())
    }

    /// Sessions (from their `SessionStart` records) matching `filter`, oldest first.
    pub fn sessions(&self, filter: &SessionFilter) -> Result<Vec<SessionSummary>, StoreError> {
        query::sessions(&self.reader()?, filter)
    }

    /// Every record of one session, in id order (for replay).
    pub fn session_records(&self, session_id: &str) -> Result<Vec<Record>, StoreError> {
        query::session_records(&self.reader()?, session_id)
    }

    /// Every record (or those at or after `since`), in id order (for export).
    pub fn records(&self, since: Option<SystemTime>) -> Result<Vec<Record>, StoreError> {
        query::records(&self.reader()?, since)
    }

    /// Every record of the given kinds, in id order (grant state is rebuilt from these).
    pub fn records_of_kinds(&self, kinds: &[crate::RecordKind]) -> Result<Vec<Record>, StoreError> {
        query::records_of_kinds(&self.reader()?, kinds)
    }

    /// The id and hash of the last committed record (id 0 and the genesis hash when there is
    /// none); `None` for a read-only store.
    pub fn head(&self) -> Option<(i64, String)> {
        let writer = self.inner.writer.as_ref()?;
        let head = writer.shared.head();
        Some((head.id, head.hash))
    }

    /// Walks the whole chain; see [`VerifyReport`]. `Err` means the store could not be read, not
    /// that the chain is broken.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        self.verify_against(&std::collections::BTreeMap::new())
    }

    /// [`Store::verify`], also checking that the chain holds each signed record.
    pub(crate) fn verify_against(
        &self,
        signed: &std::collections::BTreeMap<i64, crate::seal::Checkpoint>,
    ) -> Result<VerifyReport, StoreError> {
        // A gateway in another process may have signed records (read before this) that were
        // committed after this handle opened: wait for those to be indexed too, or they would
        // read as cut off.
        if self.inner.writer.is_none() && self.inner.progress.is_none() {
            catch_up_with_journal(&self.inner.path);
        }
        verify::verify(&self.reader()?, signed)
    }

    /// A fresh connection per query: queries are rare next to appends, and this keeps the handle
    /// free of locks shared with the hot path. With the writer in this process, first waits until
    /// SQLite holds everything committed so far.
    fn reader(&self) -> Result<Connection, StoreError> {
        if let Some(progress) = &self.inner.progress {
            if !progress.wait_indexed(CATCH_UP_LIMIT) {
                tracing::warn!("audit indexing is behind; this query may miss the newest records");
            }
        }
        db::open_reader(&self.inner.path)
    }
}

/// Indexes the journal of a store whose writer is gone, holding the writer lock meanwhile (a
/// gateway starting at that moment gets [`StoreError::InUse`]). Nothing to do if the journal is
/// empty or a writer is running. Returns `false` if a writer is running.
fn recover_abandoned(loc: &Location) -> Result<bool, StoreError> {
    let journal = journal::path(&loc.path);
    if std::fs::metadata(&journal).map_or(true, |m| m.len() == 0) {
        return Ok(true);
    }
    let Some(_lock) = db::try_lock_writer(&loc.path)? else {
        return Ok(false);
    };
    let mut conn = db::open_recovery(loc)?;
    journal::recover(&mut conn, &loc.path)?;
    Ok(true)
}

/// With a writer running in another process: waits (at most [`CATCH_UP_LIMIT`]) until SQLite
/// holds the last record in the journal now, so a query right after a statement sees its record.
/// Errors are left for the queries to report.
fn catch_up_with_journal(path: &Path) {
    let Ok(bytes) = std::fs::read(journal::path(path)) else {
        return;
    };
    let Some(target) = journal::last_id(&bytes) else {
        return;
    };
    let Ok(conn) = db::open_reader(path) else {
        return;
    };
    let deadline = std::time::Instant::now() + CATCH_UP_LIMIT;
    while db::read_head(&conn).is_ok_and(|head| head.id < target) {
        if std::time::Instant::now() >= deadline {
            tracing::warn!(
                "audit indexing is behind the running gateway; the newest records may be missing"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_owned())
}

fn register(path: &Path, progress: &Arc<Progress>) {
    let mut writers = WRITERS.lock().unwrap_or_else(|p| p.into_inner());
    writers.retain(|(_, w)| w.strong_count() > 0);
    writers.push((canonical(path), Arc::downgrade(progress)));
}

fn running_writer(path: &Path) -> Option<Arc<Progress>> {
    let path = canonical(path);
    let writers = WRITERS.lock().unwrap_or_else(|p| p.into_inner());
    writers
        .iter()
        .filter(|(p, _)| *p == path)
        .find_map(|(_, w)| w.upgrade())
}

#[cfg(test)]
impl Store {
    /// Transactions the writer has attempted.
    pub(crate) fn batches(&self) -> u64 {
        self.stat(|s| &s.batches)
    }

    /// Batches of jobs the writer thread took (the rest were taken by leading callers).
    pub(crate) fn thread_batches(&self) -> u64 {
        self.stat(|s| &s.thread_batches)
    }

    /// Jobs queued for the writer so far.
    pub(crate) fn queued(&self) -> u64 {
        self.stat(|s| &s.queued)
    }

    fn stat(&self, field: impl Fn(&Stats) -> &std::sync::atomic::AtomicU64) -> u64 {
        self.inner.writer.as_ref().map_or(0, |w| {
            field(&w.stats).load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// Runs `f` with the writer locked, between batches: on the writer thread, unless a leading
    /// caller takes it from the queue first.
    pub(crate) async fn with_writer<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut writer::Writer) -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Run(Box::new(move |w| {
            let _ = tx.send(f(w));
        })))
        .expect("writer running");
        rx.await.expect("writer answered")
    }

    /// Runs `f` on the indexer's SQLite connection, once everything committed before has been
    /// handed to SQLite (or has failed to be).
    pub(crate) async fn with_index_connection<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = oneshot::channel();
        self.with_writer(move |w| {
            w.on_index_connection(Box::new(move |conn| {
                let _ = tx.send(f(conn));
            }));
        })
        .await;
        rx.await.expect("indexer answered")
    }

    /// The last id SQLite holds, as far as the indexer has reported.
    pub(crate) fn indexed(&self) -> i64 {
        self.inner.progress.as_ref().map_or(0, |p| p.indexed())
    }
}

#[cfg(test)]
mod tests;

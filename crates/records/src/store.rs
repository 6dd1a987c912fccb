//! [`Store`]: the handle the gateway and the CLI hold. It ties the writer thread (appends) to
//! per-call reader connections (queries and verification).

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::SystemTime;

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::query::{self, SessionFilter, SessionSummary};
use crate::verify::{self, VerifyReport};
use crate::writer::{self, Job, Stats};
use crate::{checkpoint, db, location, NewRecord, Record, StoreError};

/// The audit store. Cloning is cheap and every clone shares the one writer thread; the writer
/// stops (after writing everything queued) when the last clone is dropped.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// `None` for read-only stores.
    writer: Option<WriterHandle>,
}

struct WriterHandle {
    /// Always `Some` until drop; an `Option` so drop can close the channel before joining.
    jobs: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    /// Stops by itself once the writer (which holds its nudge channel) has stopped.
    checkpointer: Option<JoinHandle<()>>,
    #[cfg_attr(not(test), allow(dead_code))]
    stats: Arc<Stats>,
    /// Released (closed) only after both threads have stopped.
    _lock: File,
}

impl Drop for WriterHandle {
    /// Closing the channel lets the writer finish what is queued; joining means records queued
    /// with `append_detached` are on disk before the process goes on to exit.
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("audit writer thread had panicked");
            }
        }
        if let Some(thread) = self.checkpointer.take() {
            let _ = thread.join();
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
    /// schema if needed, and starts the writer thread. Only one process may have a store open
    /// for writing ([`StoreError::InUse`]); it holds `PATH-lock` while it does.
    pub fn open(url: &str) -> Result<Store, StoreError> {
        let loc = location::parse(url)?;
        let lock = db::lock_writer(&loc.path)?;
        let conn = db::open_writer(&loc)?;
        let thread_err = |e: std::io::Error| StoreError::Open {
            path: loc.path.display().to_string(),
            reason: format!("cannot start a store thread: {e}"),
        };
        let (nudge, checkpointer) =
            checkpoint::spawn(db::open_checkpointer(&loc)?).map_err(thread_err)?;
        let stats = Arc::new(Stats::default());
        let (jobs, thread) = writer::spawn(conn, nudge, Arc::clone(&stats)).map_err(thread_err)?;
        let writer = WriterHandle {
            jobs: Some(jobs),
            thread: Some(thread),
            checkpointer: Some(checkpointer),
            stats,
            _lock: lock,
        };
        Ok(Store::with(loc.path, Some(writer)))
    }

    /// Opens an existing store for queries only (the CLI, with the gateway running or stopped).
    /// Never creates anything; appends fail with [`StoreError::ReadOnly`].
    pub fn open_read_only(url: &str) -> Result<Store, StoreError> {
        let loc = location::parse(url)?;
        // Opening once now reports a missing or foreign file here rather than at first query.
        db::open_reader(&loc.path)?;
        Ok(Store::with(loc.path, None))
    }

    fn with(path: PathBuf, writer: Option<WriterHandle>) -> Store {
        Store {
            inner: Arc::new(Inner { path, writer }),
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Appends a record and resolves once the transaction containing it has committed, with its
    /// id. An error means the record is not stored: the statement it describes must be refused.
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

    fn send(&self, job: Job) -> Result<(), StoreError> {
        let writer = self.inner.writer.as_ref().ok_or(StoreError::ReadOnly)?;
        let jobs = writer.jobs.as_ref().ok_or(StoreError::WriterStopped)?;
        // Fails at once if the writer thread is gone, so no caller ever waits on a dead writer.
        jobs.send(job).map_err(|_| StoreError::WriterStopped)?;
        #[cfg(test)]
        writer
            .stats
            .queued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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

    /// Walks the whole chain; see [`VerifyReport`]. `Err` means the store could not be read, not
    /// that the chain is broken.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        verify::verify(&self.reader()?)
    }

    /// A fresh connection per query: queries are rare next to appends, and this keeps the handle
    /// free of locks shared with the hot path.
    fn reader(&self) -> Result<Connection, StoreError> {
        db::open_reader(&self.inner.path)
    }
}

#[cfg(test)]
impl Store {
    /// Transactions the writer has attempted.
    pub(crate) fn batches(&self) -> u64 {
        self.stat(|s| &s.batches)
    }

    /// Jobs sent to the writer so far.
    pub(crate) fn queued(&self) -> u64 {
        self.stat(|s| &s.queued)
    }

    fn stat(&self, field: impl Fn(&Stats) -> &std::sync::atomic::AtomicU64) -> u64 {
        self.inner.writer.as_ref().map_or(0, |w| {
            field(&w.stats).load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// Runs `f` on the writer thread with the writer's own connection, between batches.
    pub(crate) async fn with_writer_connection<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Run(Box::new(move |conn| {
            let _ = tx.send(f(conn));
        })))
        .expect("writer running");
        rx.await.expect("writer answered")
    }
}

#[cfg(test)]
mod tests;

//! Background WAL checkpoints, so the indexer thread never pays for them.
//!
//! A checkpoint copies the WAL back into the database file and syncs it, which costs
//! milliseconds. Left to SQLite's automatic checkpoints, that cost lands inside whichever commit
//! crosses the threshold, delaying indexing (and with it what queries see). In WAL mode a
//! checkpoint on another connection runs beside the indexer, so this thread does them instead:
//! after the indexer has committed something, at most once per [`PACE`].
//!
//! Durability is unchanged: commits are made durable (or not) by the indexer's own `synchronous`
//! setting, and this connection uses the same setting so the checkpoint syncs the database file
//! before the WAL can be reused.

use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use rusqlite::Connection;

/// Least time between checkpoints. Bounds both the checkpoint work and how much WAL piles up
/// (a few MiB at full load).
const PACE: Duration = Duration::from_millis(250);

/// Starts the checkpointer; it checkpoints once after each nudge and stops when every nudge
/// sender is gone. Nudges are `try_send` on a channel of one, so the writer never waits.
pub(crate) fn spawn(conn: Connection) -> std::io::Result<(SyncSender<()>, JoinHandle<()>)> {
    let (nudge, rx) = mpsc::sync_channel(1);
    let thread = thread::Builder::new()
        .name("portcullis-records-checkpoint".into())
        .spawn(move || run(&conn, &rx))?;
    Ok((nudge, thread))
}

fn run(conn: &Connection, rx: &Receiver<()>) {
    while rx.recv().is_ok() {
        checkpoint(conn);
        // Sleep rather than wait on the channel: the indexer nudges after every commit, and
        // waking for each nudge would cost a context switch per batch on the hot path. A nudge
        // that arrives meanwhile stays in the channel and starts the next checkpoint at once.
        thread::sleep(PACE);
    }
    // Anything committed since the last checkpoint is in the WAL; SQLite checkpoints it when the
    // last connection closes, and recovers it on the next open if the process is killed first.
}

fn checkpoint(conn: &Connection) {
    let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
    });
    match result {
        Ok((wal_frames, copied)) => {
            tracing::trace!(wal_frames, copied, "audit store checkpoint");
        }
        Err(err) => {
            tracing::warn!(error = %crate::error::describe(&err), "audit store checkpoint failed");
        }
    }
}

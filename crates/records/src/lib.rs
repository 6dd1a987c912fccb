//! The tamper-evident audit store.
//!
//! Every connection attempt, session, statement, decision and error the gateway handles becomes
//! one [`Record`]. Records are committed, one batch at a time, to an append-only journal file
//! (by the appending callers themselves, or by a writer thread under `synchronous=full`),
//! indexed into an SQLite database (which every query reads) by a separate thread, and form
//! a SHA-256 hash chain, so `portcullis audit verify` can show that none was edited or removed.
//!
//! # When a record counts as written
//!
//! [`Store::append`] resolves only after the record is **committed: appended to the journal**
//! (`PATH-records.journal` beside the database `PATH`) by one `write` call for its whole batch,
//! and, under `synchronous=full`, synced with `fdatasync`. The gateway forwards a statement only
//! after that, and refuses the statement if `append` fails (disk full, store unavailable): no
//! record, no statement.
//!
//! SQLite is the index, not the commit point: the indexer thread inserts committed batches
//! milliseconds later, many per transaction, and no append waits for it. If indexing fails (SQLite's disk full, a
//! lock held too long) it is logged and retried; the records stay in the journal meanwhile.
//!
//! # What survives a crash
//!
//! - **The gateway process dies (`kill -9`, panic, OOM kill):** no committed record is lost,
//!   whatever the `synchronous` setting. Before `append` resolves, the record is in the
//!   operating system's page cache as part of the journal file; the OS keeps it when the process
//!   dies. The next [`Store::open`] (the gateway restarting) or [`Store::open_read_only`] (the
//!   CLI, when no gateway is running) indexes every journal record SQLite lacks before doing
//!   anything else, so `audit export` and `audit verify` right after the crash see them all.
//!   Records whose `append` had not yet resolved may or may not be present; their statements
//!   were not forwarded. A batch whose write the crash cut short fails its frame checksum and
//!   is cut off.
//! - **Power loss or an OS crash, with `synchronous=normal` (the default):** the journal and the
//!   database are written to disk by the OS in its own time (SQLite's WAL is synced by the
//!   background checkpoint within about 250 ms of indexing), so records committed in the last
//!   moments may be lost — including records of statements that were forwarded. No bound is
//!   promised. What remains is a valid chain, except in the unlucky case where the disk kept
//!   newer journal records but lost older SQLite ones: recovery indexes them anyway and
//!   `audit verify` names the gap.
//! - **Power loss or an OS crash, with `sqlite://PATH?synchronous=full`:** each batch is synced
//!   to disk before `append` resolves, so no committed record is lost, provided the disk honours
//!   flushes. Group commit shares one sync among every session in the batch. The indexer syncs
//!   its SQLite commits too, and the journal is only emptied of records whose commit was synced.
//!
//! All of this assumes a local filesystem; locking and syncing are not reliable on network
//! filesystems. The journal belongs to its database as SQLite's `-wal` file does: copy, move or
//! delete them together (and the writer must be stopped to take a consistent copy).
//!
//! # Reading while the gateway runs
//!
//! Queries read SQLite, which lags the journal by the indexing delay: the indexer commits at
//! most every 10 ms, so usually 10–20 ms, longer if indexing is failing. To hide that:
//!
//! - [`Store::open_read_only`] in another process while the gateway runs (the CLI) first waits
//!   until SQLite holds the last record the journal held when it opened, so `audit export` run
//!   right after a statement shows its record. Records committed after the open appear in later
//!   queries once indexed.
//! - Queries in the writer's own process, through the writing [`Store`] or a read-only one
//!   opened beside it, first wait for every record committed before the query.
//!
//! Both waits give up after two seconds (indexing failing: the writer logs why) and then read
//! SQLite as it is.
//!
//! # The hash chain
//!
//! Each record's hash is SHA-256 over an unambiguous encoding of its id, time, kind, session,
//! principal, connection, decision, policy, rule, canonical JSON detail and the previous
//! record's hash (64 zeros for record 1); see `chain.rs`. Ids and times are assigned by
//! whoever holds the writer as it commits each batch, so the chain order is the commit order and ids run 1, 2, 3…
//! without gaps.
//!
//! [`Store::verify`] walks the records in id order and names the first that is broken: a record
//! edited in place (its contents no longer match its hash), an edited hash, or a record deleted
//! from the middle (the next record's id skips, and it links to a hash that is gone).
//!
//! What the chain alone cannot show:
//! - **Records cut off the tail.** The remaining records still form a valid chain. Export
//!   [`VerifyReport::head`] and anchor it elsewhere (a SIEM, a ticket, another host); a later
//!   head that does not descend from it reveals the truncation.
//! - **A wholesale rewrite.** Someone who can write the file can recompute every hash after an
//!   edit. The chain makes tampering evident relative to an anchored head, not absolutely.
//!
//! # Concurrency and cost
//!
//! One writer state (the chain head and the journal, behind a mutex) serialises every commit.
//! An append queues its record, then, under `synchronous=normal`, tries to take the writer: if
//! it can, it commits everything queued (its own record and those of sessions that queued
//! meanwhile: group commit across sessions) and acknowledges them all; if it cannot, whoever
//! holds the writer commits the record on its next look at the queue. A lone session's append
//! therefore commits on its own thread without waking any other thread; under load, one
//! caller's `write` carries many sessions' records (see `writer.rs` for why none is left
//! behind). Under `synchronous=full` the `fdatasync` takes milliseconds, so a dedicated writer
//! thread commits instead and tokio workers never wait on it. Detached appends, which nobody
//! waits for, are left to that thread in both modes (it batches them) unless a leader carries
//! them first. Either way, a batch gets ids and times, is hashed into the
//! chain, appended as one journal frame, acknowledged, and handed to the indexer. So the hot
//! path costs one `write` per batch (plus one `fdatasync` under `synchronous=full`), not
//! SQLite's page writes, locks and WAL resets. A failed append is cut back off the journal and
//! every waiter in the batch gets the error; the chain head stays where the journal ends, and
//! later appends succeed once the cause (say, a full disk) is gone. A panic while committing
//! (a bug) stops the store: every queued and later append fails with
//! [`StoreError::WriterStopped`] rather than waiting.
//!
//! The indexer inserts whatever batches have queued in one SQLite transaction. WAL checkpoints
//! (which sync the database file) run on a third thread. Queries and verification use their own
//! read-only connections, which WAL lets run beside the indexer. Between batches, once the
//! journal is over 16 MiB and the indexer has everything in it in SQLite, the writer empties it;
//! under steady load that means the writer thread waiting a moment for the indexer about once
//! per 16 MiB (appends queue meanwhile; no appending caller does that wait itself). While
//! indexing fails the journal is never emptied, and batches the indexer has not yet inserted
//! are held in its memory.

mod chain;
mod checkpoint;
mod db;
mod error;
mod indexer;
mod journal;
mod location;
mod query;
mod record;
mod seal;
mod store;
pub mod untrusted;
mod verify;
mod writer;

pub use chain::GENESIS_HASH;
pub use error::StoreError;
pub use query::{SessionFilter, SessionSummary};
pub use record::{NewRecord, Record, RecordKind, UnknownKind};
pub use seal::{checkpoints_path, verify_signed, AuditKey, Checkpoint, Opened, Seal};
pub use store::Store;
pub use verify::{Broken, VerifyReport};

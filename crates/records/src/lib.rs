//! The tamper-evident audit store.
//!
//! Every connection attempt, session, statement, decision and error the gateway handles becomes
//! one [`Record`]. Records are appended to an SQLite database by a single writer thread and form
//! a SHA-256 hash chain, so `portcullis audit verify` can show that none was edited or removed.
//!
//! # When a record counts as written
//!
//! [`Store::append`] resolves only after the SQLite transaction holding the record has
//! committed. The gateway forwards a statement only after that, and refuses the statement if
//! `append` fails (disk full, store unavailable): no record, no statement.
//!
//! # What survives a crash
//!
//! The store runs in WAL mode.
//!
//! - **The gateway process dies (`kill -9`, panic, OOM kill):** no committed record is lost,
//!   whatever the `synchronous` setting. Before `append` resolves, the commit has handed the
//!   record to the operating system in the WAL file; the OS keeps it when the process dies, and
//!   SQLite replays it when the store is next opened. Records whose `append` had not yet
//!   resolved may or may not be present; their statements were not forwarded.
//! - **Power loss or an OS crash, with `synchronous=normal` (the default):** the database stays
//!   consistent and the chain stays valid, but transactions committed since the WAL was last
//!   synced to disk may be lost — including records of statements that were forwarded. The WAL
//!   is synced by the background checkpoint that follows writes within about 250 ms, so this is
//!   usually the last fraction of a second of records, but no bound is promised.
//! - **Power loss or an OS crash, with `sqlite://PATH?synchronous=full`:** each commit is synced
//!   to disk before `append` resolves, so no committed record is lost, provided the disk honours
//!   flushes. Group commit shares one sync among every session in the batch.
//!
//! All of this assumes a local filesystem; SQLite's locking and syncing are not reliable on
//! network filesystems.
//!
//! # The hash chain
//!
//! Each record's hash is SHA-256 over an unambiguous encoding of its id, time, kind, session,
//! principal, connection, decision, policy, rule, canonical JSON detail and the previous
//! record's hash (64 zeros for record 1); see `chain.rs`. Ids and times are assigned by the
//! writer inside the transaction, so the chain order is the commit order and ids run 1, 2, 3…
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
//! One writer thread owns the write connection. It blocks for the first queued record, takes
//! everything else already queued (group commit across sessions), writes the batch in one
//! transaction, commits, then wakes each waiter. A failed batch is rolled back and every waiter
//! in it gets the error; the chain head is re-read from the database, and later appends succeed
//! once the cause (say, a full disk) is gone. WAL checkpoints (which sync the database file) run
//! on a separate thread so they do not stall commits. Queries and verification use their own
//! read-only connections, which WAL lets run beside the writer.

mod chain;
mod checkpoint;
mod db;
mod error;
mod location;
mod query;
mod record;
mod store;
mod verify;
mod writer;

pub use chain::GENESIS_HASH;
pub use error::StoreError;
pub use query::{SessionFilter, SessionSummary};
pub use record::{NewRecord, Record, RecordKind, UnknownKind};
pub use store::Store;
pub use verify::{Broken, VerifyReport};

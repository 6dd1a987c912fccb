//! Errors of the audit store.
//!
//! Every variant carries text rather than a `rusqlite::Error`: one failed group commit must hand
//! the same error to every session waiting in that batch, so the error has to be `Clone`. The
//! text says what is wrong in words an operator can act on ("disk full"), followed by SQLite's own
//! message in parentheses.

use rusqlite::ErrorCode;

/// Why the audit store could not do what was asked.
///
/// Store errors are always caused by the gateway's side (its disk, its files), never by the client
/// or the upstream; a statement whose record fails with any of these must not be forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store URL is not `sqlite://PATH[?synchronous=full|normal]`.
    #[error("invalid audit store URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// The database file could not be opened or prepared.
    #[error("cannot open audit store at {path}: {reason}")]
    Open { path: String, reason: String },
    /// Another process (another gateway) is already the writer of this store. Two writers would
    /// each believe they own the chain head and keep refusing each other's statements.
    #[error("audit store at {path} is already open for writing by another process (lock file {lock} is held)")]
    InUse { path: String, lock: String },
    /// A read-only open found no database file (read-only opens never create one).
    #[error("no audit store at {path}")]
    Missing { path: String },
    /// The file is a database, but not one this crate wrote.
    #[error("{path} is not a Portcullis audit store: {reason}")]
    NotAStore { path: String, reason: String },
    /// A newer Portcullis wrote this store; reading it with this build could misreport it.
    #[error("audit store at {path} has schema version {found}; this build understands up to {supported}")]
    UnsupportedSchema {
        path: String,
        found: i64,
        supported: i64,
    },
    /// A record could not be written or committed. The statement it describes must be refused.
    #[error("audit store unavailable: {reason}")]
    Unavailable { reason: String },
    /// The store was opened with [`crate::Store::open_read_only`].
    #[error("audit store is open read-only; records cannot be appended")]
    ReadOnly,
    /// The writer is gone: a panic while committing stopped it, or the store is shutting down.
    #[error("audit store writer has stopped; records cannot be appended")]
    WriterStopped,
    /// Records queued with `append_detached` were not written; reported by the next `flush`.
    #[error("{count} detached audit record(s) could not be written; last error: {reason}")]
    RecordsLost { count: u64, reason: String },
    /// A query failed.
    #[error("audit signing key {path}: {reason}")]
    SigningKey { path: String, reason: String },
    #[error("audit checkpoints {path}: {reason}")]
    Checkpoints { path: String, reason: String },
    #[error("the audit chain does not verify at record {id}: {reason}")]
    Tampered { id: i64, reason: String },
    #[error("cannot read audit store: {reason}")]
    Read { reason: String },
    /// A stored record cannot be turned back into a [`crate::Record`].
    #[error("record {id} cannot be read: {reason}")]
    Corrupt { id: i64, reason: String },
}

impl StoreError {
    /// SQLite errors no longer reach appends (the journal is the commit point); kept for the
    /// wording test.
    #[cfg(test)]
    pub(crate) fn unavailable(err: &rusqlite::Error) -> Self {
        StoreError::Unavailable {
            reason: describe(err),
        }
    }

    pub(crate) fn read(err: &rusqlite::Error) -> Self {
        StoreError::Read {
            reason: describe(err),
        }
    }
}

/// A journal write or sync that failed: the batch is not committed.
pub(crate) fn journal(path: &std::path::Path, err: &std::io::Error) -> StoreError {
    use std::io::ErrorKind;
    let cause = match err.kind() {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => "disk full",
        ErrorKind::ReadOnlyFilesystem => "store is read-only",
        ErrorKind::PermissionDenied => "permission denied",
        _ => "I/O error",
    };
    StoreError::Unavailable {
        reason: format!("{cause} (writing {}: {err})", path.display()),
    }
}

/// Names the operator-relevant cause first, since SQLite's own messages are terse and generic.
pub(crate) fn describe(err: &rusqlite::Error) -> String {
    let cause = match err.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => "disk full",
        Some(ErrorCode::ReadOnly) => "store is read-only",
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            "store is locked by another process"
        }
        Some(ErrorCode::SystemIoFailure) => "I/O error",
        Some(ErrorCode::CannotOpen) => "cannot open the database file",
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => "database file is damaged",
        Some(ErrorCode::PermissionDenied) => "permission denied",
        _ => return err.to_string(),
    };
    format!("{cause} ({err})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_full_reads_as_the_operator_would_say_it() {
        let err = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            Some("database or disk is full".into()),
        );
        assert_eq!(
            StoreError::unavailable(&err).to_string(),
            "audit store unavailable: disk full (database or disk is full)"
        );
    }
}

//! The SQLite file: opening connections with the right settings, the schema, and turning rows
//! back into records.
//!
//! The writer connection and reader connections are opened differently on purpose: only the
//! writer may create the file or change the schema, so a mistyped path given to a read-only CLI
//! command reports "no audit store" instead of leaving an empty database behind.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OpenFlags, Row};
use time::OffsetDateTime;

use crate::chain::GENESIS_HASH;
use crate::location::Location;
use crate::{Record, StoreError};

/// Bumped whenever the table layout changes; a build refuses stores newer than it understands.
const SCHEMA_VERSION: i64 = 1;

/// How long a connection waits for another one's lock before reporting the store as busy. Long
/// enough to ride out a checkpoint or a CLI holding a read, short enough that a wedged store
/// fails statements rather than hanging them.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Page size of new stores.
const PAGE_SIZE: i64 = 16 * 1024;

/// WAL size (pages) at which the writer checkpoints by itself; about 40 MiB with 16 KiB pages.
const WRITER_AUTOCHECKPOINT_PAGES: i64 = 2_500;

const SCHEMA: &str = "
CREATE TABLE records (
    id         INTEGER PRIMARY KEY,
    time       TEXT NOT NULL,
    kind       TEXT NOT NULL,
    session_id TEXT,
    principal  TEXT,
    connection TEXT,
    decision   TEXT,
    policy     TEXT,
    rule       TEXT,
    detail     TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);
-- Covers session_records() and the per-session counts in sessions().
CREATE INDEX records_by_session ON records(session_id, kind, decision);
CREATE INDEX records_by_time ON records(time);
-- Session starts are a tiny fraction of records; listing sessions must not scan statements.
CREATE INDEX session_starts ON records(id) WHERE kind = 'session_start';
";

/// Added to stores of any version on open (older binaries ignore it): the
/// gateway replays grant and approval records at start, which must not scan
/// every statement ever recorded. Partial, so statements cost it nothing.
const ACCESS_INDEX: &str = "CREATE INDEX IF NOT EXISTS access_changes ON records(id) \
    WHERE kind IN ('grant', 'approval')";

/// Column list matching [`record_from_row`].
pub(crate) const COLUMNS: &str =
    "id, time, kind, session_id, principal, connection, decision, policy, rule, detail, prev_hash, hash";

pub(crate) const INSERT: &str = "INSERT INTO records \
    (id, time, kind, session_id, principal, connection, decision, policy, rule, detail, prev_hash, hash) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";

/// The last record of the chain, which the next record links to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) id: i64,
    pub(crate) hash: String,
}

impl Head {
    fn genesis() -> Self {
        Head {
            id: 0,
            hash: GENESIS_HASH.to_owned(),
        }
    }
}

/// Takes the store's writer lock (`PATH-lock`), held for as long as the returned file is open.
///
/// A separate file, not the database: SQLite's own POSIX locks on the database are dropped when
/// any descriptor of that file in the process closes, so we must not open it behind its back.
pub(crate) fn lock_writer(path: &Path) -> Result<File, StoreError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            reason: format!("cannot create {}: {e}", parent.display()),
        })?;
    }
    try_lock_writer(path)?.ok_or_else(|| StoreError::InUse {
        path: path.display().to_string(),
        lock: lock_path(path).display().to_string(),
    })
}

/// Takes the writer lock if no process holds it (`None` if one does). Readers use this to find
/// out whether a writer is running, and to keep one from starting while they recover.
pub(crate) fn try_lock_writer(path: &Path) -> Result<Option<File>, StoreError> {
    let lock_path = lock_path(path);
    let open_err = |reason: String| StoreError::Open {
        path: path.display().to_string(),
        reason,
    };
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| open_err(format!("cannot open {}: {e}", lock_path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(open_err(format!(
            "cannot lock {}: {e}",
            lock_path.display()
        ))),
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push("-lock");
    PathBuf::from(lock_path)
}

/// Opens (creating if needed) the database the indexer thread will own. Call after
/// [`lock_writer`], which also creates the parent directories.
pub(crate) fn open_writer(loc: &Location) -> Result<Connection, StoreError> {
    let mut conn = open_read_write(loc, OpenFlags::SQLITE_OPEN_CREATE)?;
    ensure_schema(&mut conn, &loc.path)?;
    Ok(conn)
}

/// Opens an existing store read-write without creating anything: a reader indexing the
/// journal a dead writer left behind. Call after [`open_reader`] checked it is a store.
pub(crate) fn open_recovery(loc: &Location) -> Result<Connection, StoreError> {
    open_read_write(loc, OpenFlags::empty())
}

fn open_read_write(loc: &Location, extra: OpenFlags) -> Result<Connection, StoreError> {
    let path = &loc.path;
    let open_err = |reason: String| StoreError::Open {
        path: path.display().to_string(),
        reason,
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | extra;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| open_err(describe(&e)))?;
    configure_writer(&conn, loc).map_err(open_err)?;
    Ok(conn)
}

fn configure_writer(conn: &Connection, loc: &Location) -> Result<(), String> {
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| describe(&e))?;
    // Only takes effect on a new file (before WAL mode writes the header). Records are appended
    // in bulk, so larger pages mean fewer WAL frames, and `pwrite`s, per indexed batch.
    conn.pragma_update(None, "page_size", PAGE_SIZE)
        .map_err(|e| describe(&e))?;
    // WAL lets CLI readers run beside the gateway, and makes a commit one append to the log.
    // The indexer syncs as the journal does: under `synchronous=full` the journal is emptied
    // only of records whose SQLite commit was synced, so power loss cannot take them from both.
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(|e| describe(&e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("journal_mode stayed {mode}; WAL is required"));
    }
    conn.pragma_update(None, "synchronous", loc.synchronous.pragma_value())
        .map_err(|e| describe(&e))?;
    // Checkpoints belong to the checkpointer thread; this is only a backstop so the WAL stays
    // bounded if that thread cannot keep up.
    conn.pragma_update(None, "wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES)
        .map_err(|e| describe(&e))
}

/// Opens the connection the checkpointer thread uses. It must sync like the writer: a
/// checkpoint that did not sync the database file before the WAL is reused could lose committed
/// records on power loss.
pub(crate) fn open_checkpointer(loc: &Location) -> Result<Connection, StoreError> {
    let open_err = |reason: String| StoreError::Open {
        path: loc.path.display().to_string(),
        reason,
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(&loc.path, flags).map_err(|e| open_err(describe(&e)))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .and_then(|()| conn.pragma_update(None, "synchronous", loc.synchronous.pragma_value()))
        .map_err(|e| open_err(describe(&e)))?;
    Ok(conn)
}

fn ensure_schema(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let open_err = |e: rusqlite::Error| StoreError::Open {
        path: path.display().to_string(),
        reason: describe(&e),
    };
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(open_err)?;
    match schema_version(&tx, path)? {
        Some(_) => {}
        None => {
            tx.execute_batch(SCHEMA).map_err(open_err)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(open_err)?;
        }
    }
    tx.execute_batch(ACCESS_INDEX).map_err(open_err)?;
    tx.commit().map_err(open_err)
}

/// `Some(version)` for one of our stores, `None` for a brand-new empty database.
fn schema_version(conn: &Connection, path: &Path) -> Result<Option<i64>, StoreError> {
    let read = |e: rusqlite::Error| StoreError::Open {
        path: path.display().to_string(),
        reason: describe(&e),
    };
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(read)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::UnsupportedSchema {
            path: path.display().to_string(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version > 0 {
        return Ok(Some(version));
    }
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))
        .map_err(read)?;
    if tables > 0 {
        return Err(StoreError::NotAStore {
            path: path.display().to_string(),
            reason: "it holds other tables".into(),
        });
    }
    Ok(None)
}

/// Opens a connection for queries. Never creates the file or the schema.
pub(crate) fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    if !path.exists() {
        return Err(StoreError::Missing {
            path: path.display().to_string(),
        });
    }
    let open_err = |e: rusqlite::Error| StoreError::Open {
        path: path.display().to_string(),
        reason: describe(&e),
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(open_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    if schema_version(&conn, path)?.is_none() {
        return Err(StoreError::NotAStore {
            path: path.display().to_string(),
            reason: "the database is empty".into(),
        });
    }
    Ok(conn)
}

/// Reads the chain head; a store without records links to the genesis hash.
pub(crate) fn read_head(conn: &Connection) -> rusqlite::Result<Head> {
    let mut stmt = conn.prepare_cached("SELECT id, hash FROM records ORDER BY id DESC LIMIT 1")?;
    let mut rows = stmt.query([])?;
    match rows.next()? {
        Some(row) => Ok(Head {
            id: row.get(0)?,
            hash: row.get(1)?,
        }),
        None => Ok(Head::genesis()),
    }
}

/// Rebuilds a [`Record`] from a row selected with [`COLUMNS`]. Rows are data from disk that
/// anyone could have edited, so every mismatch is an error naming the record, not a panic.
pub(crate) fn record_from_row(row: &Row<'_>) -> Result<Record, StoreError> {
    let id: i64 = row.get(0).map_err(|e| StoreError::read(&e))?;
    let corrupt = |reason: String| StoreError::Corrupt { id, reason };
    let column = |e: rusqlite::Error| corrupt(e.to_string());
    let kind: String = row.get(2).map_err(column)?;
    let detail: String = row.get(9).map_err(column)?;
    Ok(Record {
        id,
        time: row.get(1).map_err(column)?,
        kind: kind.parse().map_err(|e| corrupt(format!("{e}")))?,
        session_id: row.get(3).map_err(column)?,
        principal: row.get(4).map_err(column)?,
        connection: row.get(5).map_err(column)?,
        decision: row.get(6).map_err(column)?,
        policy: row.get(7).map_err(column)?,
        rule: row.get(8).map_err(column)?,
        detail: serde_json::from_str(&detail)
            .map_err(|e| corrupt(format!("detail is not JSON: {e}")))?,
        prev_hash: row.get(10).map_err(column)?,
        hash: row.get(11).map_err(column)?,
    })
}

/// Times are stored as fixed-width RFC 3339 UTC text with microseconds, so that comparing the
/// strings compares the instants (the `since` filters rely on this).
pub(crate) fn format_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let Ok(year) = u32::try_from(t.year()) else {
        return format_time_slowly(t);
    };
    if year > 9999 {
        return format_time_slowly(t);
    }
    // Every record is stamped under the writer's lock, and `format!` with seven padded fields
    // took about 1% of the gateway's CPU under load; writing the digits directly takes a third of the
    // time (44 vs 141 ns, release).
    let mut s = String::with_capacity(27);
    let fields: [(u32, u32, char); 7] = [
        (year, 4, '-'),
        (u32::from(u8::from(t.month())), 2, '-'),
        (u32::from(t.day()), 2, 'T'),
        (u32::from(t.hour()), 2, ':'),
        (u32::from(t.minute()), 2, ':'),
        (u32::from(t.second()), 2, '.'),
        (t.microsecond(), 6, 'Z'),
    ];
    for (value, width, separator) in fields {
        for place in (0..width).rev() {
            let digit = value / 10u32.pow(place) % 10;
            s.push(char::from(b'0' + digit as u8));
        }
        s.push(separator);
    }
    s
}

/// [`format_time`] for years outside 0..=9999, which no clock reading produces.
fn format_time_slowly(t: OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

pub(crate) fn format_system_time(t: SystemTime) -> String {
    format_time(OffsetDateTime::from(t))
}

fn describe(e: &rusqlite::Error) -> String {
    crate::error::describe(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_fixed_width_and_sort_as_text() {
        let t = time::macros::datetime!(2024-03-09 07:05:01.000042 UTC);
        assert_eq!(format_time(t), "2024-03-09T07:05:01.000042Z");
        let later = time::macros::datetime!(2024-03-09 07:05:01.1 UTC);
        assert!(format_time(t) < format_time(later));
        let offset = time::macros::datetime!(2024-03-09 09:05:01.000042 +02:00);
        assert_eq!(format_time(offset), "2024-03-09T07:05:01.000042Z");
        let last = time::macros::datetime!(9999-12-31 23:59:59.999999 UTC);
        assert_eq!(format_time(last), "9999-12-31T23:59:59.999999Z");
        let first = time::macros::datetime!(0000-01-01 00:00:00 UTC);
        assert_eq!(format_time(first), "0000-01-01T00:00:00.000000Z");
    }

    #[test]
    fn years_before_zero_keep_the_sign() {
        let t = time::macros::datetime!(-0001-01-01 00:00:00 UTC);
        assert_eq!(format_time(t), "-001-01-01T00:00:00.000000Z");
    }

    #[test]
    fn stored_times_parse_as_rfc3339() {
        let s = format_time(OffsetDateTime::now_utc());
        let parsed =
            OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339).unwrap();
        assert_eq!(format_time(parsed), s);
    }
}

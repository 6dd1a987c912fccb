//! Read-side queries for the CLI and the admin API: session lists, one session's records for
//! replay, and everything since a time for export.
//!
//! These run on their own read-only connections; under WAL they see a consistent snapshot and
//! never block the writer.

use std::time::SystemTime;

use rusqlite::{params, Connection};
use serde::Serialize;

use crate::db::{self, COLUMNS};
use crate::{Record, RecordKind, StoreError};

/// Which sessions [`crate::Store::sessions`] lists; empty fields match everything.
#[derive(Debug, Default, Clone)]
pub struct SessionFilter {
    /// Only sessions of this principal.
    pub principal: Option<String>,
    /// Only sessions on this connection.
    pub connection: Option<String>,
    /// Only sessions that started at or after this instant.
    pub since: Option<SystemTime>,
}

/// One session, as `portcullis sessions list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionSummary {
    pub session_id: String,
    pub principal: Option<String>,
    pub connection: Option<String>,
    /// Time of the `SessionStart` record.
    pub started: String,
    /// Time of the last `SessionEnd` record, if the session has ended.
    pub ended: Option<String>,
    /// `Statement` records in the session.
    pub statements: u64,
    /// `Statement` records whose decision is "deny".
    pub denied: u64,
    /// `detail.client_addr` of the `SessionStart` record.
    pub client_addr: Option<String>,
}

const SESSIONS: &str = "
SELECT s.session_id, s.principal, s.connection, s.time, s.detail,
    (SELECT e.time FROM records e
        WHERE e.session_id = s.session_id AND e.kind = 'session_end'
        ORDER BY e.id DESC LIMIT 1),
    (SELECT count(*) FROM records q
        WHERE q.session_id = s.session_id AND q.kind = 'statement'),
    (SELECT count(*) FROM records q
        WHERE q.session_id = s.session_id AND q.kind = 'statement' AND q.decision = 'deny')
FROM records s
WHERE s.kind = 'session_start' AND s.session_id IS NOT NULL
    AND (?1 IS NULL OR s.principal = ?1)
    AND (?2 IS NULL OR s.connection = ?2)
    AND (?3 IS NULL OR s.time >= ?3)
ORDER BY s.id";

pub(crate) fn sessions(
    conn: &Connection,
    filter: &SessionFilter,
) -> Result<Vec<SessionSummary>, StoreError> {
    let since = filter.since.map(db::format_system_time);
    let mut stmt = conn.prepare(SESSIONS).map_err(|e| StoreError::read(&e))?;
    let rows = stmt
        .query_map(
            params![filter.principal, filter.connection, since],
            summary_from_row,
        )
        .map_err(|e| StoreError::read(&e))?;
    rows.map(|row| row.map_err(|e| StoreError::read(&e)))
        .collect()
}

fn summary_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SessionSummary> {
    let detail: Option<String> = row.get(4)?;
    let statements: i64 = row.get(6)?;
    let denied: i64 = row.get(7)?;
    Ok(SessionSummary {
        session_id: row.get(0)?,
        principal: row.get(1)?,
        connection: row.get(2)?,
        started: row.get(3)?,
        ended: row.get(5)?,
        statements: u64::try_from(statements).unwrap_or_default(),
        denied: u64::try_from(denied).unwrap_or_default(),
        client_addr: detail.as_deref().and_then(client_addr),
    })
}

/// A summary is a convenience view: an unreadable detail only hides the address; `verify` is
/// what reports tampering.
fn client_addr(detail: &str) -> Option<String> {
    let detail: serde_json::Value = serde_json::from_str(detail).ok()?;
    detail.get("client_addr")?.as_str().map(str::to_owned)
}

pub(crate) fn session_records(
    conn: &Connection,
    session_id: &str,
) -> Result<Vec<Record>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM records WHERE session_id = ?1 ORDER BY id");
    collect(conn, &sql, params![session_id])
}

pub(crate) fn records(
    conn: &Connection,
    since: Option<SystemTime>,
) -> Result<Vec<Record>, StoreError> {
    match since {
        Some(since) => {
            let sql = format!("SELECT {COLUMNS} FROM records WHERE time >= ?1 ORDER BY id");
            collect(conn, &sql, params![db::format_system_time(since)])
        }
        None => {
            let sql = format!("SELECT {COLUMNS} FROM records ORDER BY id");
            collect(conn, &sql, [])
        }
    }
}

/// Every record of the given kinds, in id order.
pub(crate) fn records_of_kinds(
    conn: &Connection,
    kinds: &[RecordKind],
) -> Result<Vec<Record>, StoreError> {
    if kinds.is_empty() {
        return Ok(Vec::new());
    }
    collect(conn, &kinds_sql(kinds), [])
}

/// The kinds are spelt out as literals, not bound, so SQLite can see that
/// `grant`/`approval` queries fit the partial index `access_changes`. They
/// are our own enum's names, never caller text.
pub(crate) fn kinds_sql(kinds: &[RecordKind]) -> String {
    let list: Vec<String> = kinds.iter().map(|k| format!("'{}'", k.as_str())).collect();
    format!(
        "SELECT {COLUMNS} FROM records WHERE kind IN ({}) ORDER BY id",
        list.join(", ")
    )
}

fn collect(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<Record>, StoreError> {
    let mut stmt = conn.prepare(sql).map_err(|e| StoreError::read(&e))?;
    let mut rows = stmt.query(params).map_err(|e| StoreError::read(&e))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(|e| StoreError::read(&e))? {
        out.push(db::record_from_row(row)?);
    }
    Ok(out)
}

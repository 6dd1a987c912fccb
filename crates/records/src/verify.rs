//! `portcullis audit verify`: walking the chain and naming the first record that breaks it.
//!
//! Verification works on the stored text exactly as it is on disk (it never parses the kind or
//! the detail), so a record that was edited into something unparsable is reported as altered
//! rather than making verification itself fail.

use std::collections::BTreeMap;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, Row};
use serde::Serialize;

use crate::chain::{Link, GENESIS_HASH};
use crate::seal::Checkpoint;
use crate::StoreError;

/// Outcome of [`crate::Store::verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Records verified intact and correctly linked (all of them when nothing is broken).
    pub checked: u64,
    /// Hash of the last intact record. Anchor it outside the store (ticket, SIEM, another host):
    /// the chain alone cannot reveal records cut off its tail.
    pub head: Option<String>,
    /// The first record where the chain breaks; verification stops there.
    pub first_broken: Option<Broken>,
    /// Fingerprint of the key whose checkpoints were checked; `None` for the chain alone.
    pub signing_key: Option<String>,
    /// Signed checkpoints the chain was found to hold.
    pub checkpoints: u64,
    /// The last record a matching checkpoint signed; the records after it rest on the chain
    /// alone until the next checkpoint.
    pub signed_through: Option<i64>,
}

/// Where and why the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Broken {
    pub id: i64,
    pub reason: String,
}

/// The stored columns of one record, borrowed from the row.
struct Stored<'a> {
    link: Link<'a>,
    hash: &'a str,
}

/// Walks the chain; `signed` maps record ids to checkpoints whose signatures were checked, and
/// each of those records must still have the signed hash.
pub(crate) fn verify(
    conn: &Connection,
    signed: &BTreeMap<i64, Checkpoint>,
) -> Result<VerifyReport, StoreError> {
    let mut stmt = conn
        .prepare(
            "SELECT id, time, kind, session_id, principal, connection, decision, policy, rule, \
             detail, prev_hash, hash FROM records ORDER BY id",
        )
        .map_err(|e| StoreError::read(&e))?;
    let mut rows = stmt.query([]).map_err(|e| StoreError::read(&e))?;
    let mut report = VerifyReport {
        checked: 0,
        head: None,
        first_broken: None,
        signing_key: None,
        checkpoints: u64::from(signed.contains_key(&0)),
        signed_through: signed.contains_key(&0).then_some(0),
    };
    let mut prev: Option<i64> = None;
    while let Some(row) = rows.next().map_err(|e| StoreError::read(&e))? {
        let id: i64 = row.get(0).map_err(|e| StoreError::read(&e))?;
        let checked = check(row, id, prev, report.head.as_deref())
            .and_then(|hash| check_signed(id, hash, signed, report.signed_through));
        match checked {
            Ok(hash) => {
                if signed.contains_key(&id) {
                    report.checkpoints += 1;
                    report.signed_through = Some(id);
                }
                report.checked += 1;
                report.head = Some(hash);
                prev = Some(id);
            }
            Err(reason) => {
                report.first_broken = Some(Broken { id, reason });
                return Ok(report);
            }
        }
    }
    let last = prev.unwrap_or(0);
    if let Some((&cut, checkpoint)) = signed.last_key_value().filter(|(&id, _)| id > last) {
        let missing = match cut - last {
            1 => format!("record {cut} is missing"),
            _ => format!("records {} to {cut} are missing", last + 1),
        };
        report.first_broken = Some(Broken {
            id: last + 1,
            reason: format!(
                "{missing}: the checkpoint signed at {} covers record {cut}, but the chain ends at record {last}: records were deleted (the tail cut, or one deleted and the rest renumbered and rehashed)",
                checkpoint.time
            ),
        });
    }
    Ok(report)
}

/// A record some checkpoint signed must still have the signed hash; if not, the chain before it
/// was rewritten and rehashed (after `matched`, the last signed record that still agrees).
fn check_signed(
    id: i64,
    hash: String,
    signed: &BTreeMap<i64, Checkpoint>,
    matched: Option<i64>,
) -> Result<String, String> {
    let Some(checkpoint) = signed.get(&id) else {
        return Ok(hash);
    };
    if checkpoint.hash == hash {
        return Ok(hash);
    }
    let since = match matched {
        Some(m) => format!("records {} to {id}", m + 1),
        None => format!("records 1 to {id}"),
    };
    Err(format!(
        "record {id} is not the record signed at {}: {since} were rewritten and rehashed (a record deleted, inserted or edited)",
        checkpoint.time
    ))
}

/// Checks one record against its predecessor: no gap, contents match the hash, and it links to
/// the predecessor's hash. The first failing check is the most specific explanation. Returns the
/// record's hash, which the next record must link to.
fn check(
    row: &Row<'_>,
    id: i64,
    prev: Option<i64>,
    prev_hash: Option<&str>,
) -> Result<String, String> {
    check_gap(id, prev)?;
    let stored = stored(row, id).map_err(|e| format!("record {id} was altered: {e}"))?;
    if stored.link.hash() != stored.hash {
        return Err(format!(
            "record {id} was altered: stored hash does not match its contents"
        ));
    }
    check_link(id, prev, prev_hash, stored.link.prev_hash)?;
    Ok(stored.hash.to_owned())
}

fn check_gap(id: i64, prev: Option<i64>) -> Result<(), String> {
    let expected = prev.unwrap_or(0) + 1;
    if id == expected {
        return Ok(());
    }
    let missing = if id - expected == 1 {
        format!("record {expected} is missing")
    } else {
        format!("records {expected} to {} are missing", id - 1)
    };
    Err(match prev {
        Some(prev) => format!("record {id} follows {prev}: {missing}"),
        None => format!("record {id} is the first record: {missing}"),
    })
}

fn check_link(
    id: i64,
    prev: Option<i64>,
    expected: Option<&str>,
    actual: &str,
) -> Result<(), String> {
    if actual == expected.unwrap_or(GENESIS_HASH) {
        return Ok(());
    }
    Err(match prev {
        Some(prev) => format!(
            "record {id} does not link to record {prev}: its prev_hash is not record {prev}'s \
             hash (one of the two was rewritten)"
        ),
        None => {
            format!("record {id} does not start the chain: its prev_hash is not the genesis hash")
        }
    })
}

fn stored<'a>(row: &'a Row<'_>, id: i64) -> Result<Stored<'a>, String> {
    let required = |idx: usize, name: &str| -> Result<&'a str, String> {
        text(row, idx)?.ok_or_else(|| format!("its {name} is missing"))
    };
    Ok(Stored {
        link: Link {
            id,
            time: required(1, "time")?,
            kind: required(2, "kind")?,
            session_id: text(row, 3)?,
            principal: text(row, 4)?,
            connection: text(row, 5)?,
            decision: text(row, 6)?,
            policy: text(row, 7)?,
            rule: text(row, 8)?,
            detail: required(9, "detail")?,
            prev_hash: required(10, "prev_hash")?,
        },
        hash: required(11, "hash")?,
    })
}

/// A column as text; anything other than text or NULL can only come from editing the file.
fn text<'a>(row: &'a Row<'_>, idx: usize) -> Result<Option<&'a str>, String> {
    let name = || row.as_ref().column_name(idx).unwrap_or("?").to_owned();
    match row.get_ref(idx).map_err(|e| e.to_string())? {
        ValueRef::Null => Ok(None),
        ValueRef::Text(bytes) => std::str::from_utf8(bytes)
            .map(Some)
            .map_err(|_| format!("its {} is not valid UTF-8", name())),
        _ => Err(format!("its {} is not text", name())),
    }
}

//! The journal (`PATH-records.journal`): the append-only file where a record is committed.
//!
//! The writer (a leading caller, or the writer thread under `synchronous=full`) appends each
//! batch as one frame with one `write` on an `O_APPEND` file; once that returned, the batch is
//! in the operating system's page cache and survives the process being killed. SQLite is only
//! the index the queries read, filled milliseconds later by the indexer thread. Opening the store puts into SQLite whatever the journal holds that SQLite
//! does not (see [`recover`]); the writer empties the journal once it is large and fully indexed.
//!
//! A frame is `magic ‖ payload length (u32 LE) ‖ CRC-32 of the payload (u32 LE) ‖ payload`, and
//! the payload is a record count followed by the records, each with every stored column (id,
//! time, kind, the optional columns, detail, previous hash, hash). A frame cut short by a crash
//! or power loss fails its length or checksum and, being necessarily the last one, is cut off.
//! The checksum detects torn writes, not tampering: the hash chain does that once the records
//! are in SQLite.
//!
//! The journal belongs to its database the way SQLite's `-wal` file does: move or delete them
//! together.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, TransactionBehavior};

use crate::chain::Link;
use crate::db::{self, Head};
use crate::StoreError;

/// Starts every frame; anything else where a frame should begin is a damaged tail.
const MAGIC: [u8; 4] = *b"PCJ1";
const HEADER: usize = 12;

/// `PATH-records.journal` for the database at `PATH`. Not `PATH-journal`: SQLite takes that
/// name for its rollback journal and would treat our file as one.
pub(crate) fn path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-records.journal");
    PathBuf::from(p)
}

/// One record with every column as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) id: i64,
    pub(crate) time: String,
    pub(crate) kind: String,
    pub(crate) session_id: Option<String>,
    pub(crate) principal: Option<String>,
    pub(crate) connection: Option<String>,
    pub(crate) decision: Option<String>,
    pub(crate) policy: Option<String>,
    pub(crate) rule: Option<String>,
    pub(crate) detail: String,
    pub(crate) prev_hash: String,
    pub(crate) hash: String,
}

impl Entry {
    pub(crate) fn link(&self) -> Link<'_> {
        Link {
            id: self.id,
            time: &self.time,
            kind: &self.kind,
            session_id: self.session_id.as_deref(),
            principal: self.principal.as_deref(),
            connection: self.connection.as_deref(),
            decision: self.decision.as_deref(),
            policy: self.policy.as_deref(),
            rule: self.rule.as_deref(),
            detail: &self.detail,
            prev_hash: &self.prev_hash,
        }
    }

    /// Inserts the row with a statement prepared from [`db::INSERT`].
    pub(crate) fn insert(&self, stmt: &mut rusqlite::CachedStatement<'_>) -> rusqlite::Result<()> {
        stmt.execute(params![
            self.id,
            self.time,
            self.kind,
            self.session_id,
            self.principal,
            self.connection,
            self.decision,
            self.policy,
            self.rule,
            self.detail,
            self.prev_hash,
            self.hash,
        ])?;
        Ok(())
    }
}

/// Serialises `entries` as one frame, replacing what `buf` held.
pub(crate) fn encode_frame(buf: &mut Vec<u8>, entries: &[Entry]) {
    buf.clear();
    buf.extend_from_slice(&MAGIC);
    buf.extend_from_slice(&[0; 8]); // length and checksum, filled in below
    put_u32(buf, entries.len());
    for e in entries {
        buf.extend_from_slice(&e.id.to_le_bytes());
        put_str(buf, &e.time);
        put_str(buf, &e.kind);
        for field in [
            &e.session_id,
            &e.principal,
            &e.connection,
            &e.decision,
            &e.policy,
            &e.rule,
        ] {
            match field {
                None => buf.push(0),
                Some(s) => {
                    buf.push(1);
                    put_str(buf, s);
                }
            }
        }
        put_str(buf, &e.detail);
        put_str(buf, &e.prev_hash);
        put_str(buf, &e.hash);
    }
    let payload_len = u32::try_from(buf.len() - HEADER).expect("a batch frame stays below 4 GiB");
    let crc = crc32(&buf[HEADER..]);
    buf[4..8].copy_from_slice(&payload_len.to_le_bytes());
    buf[8..12].copy_from_slice(&crc.to_le_bytes());
}

fn put_u32(buf: &mut Vec<u8>, n: usize) {
    let n = u32::try_from(n).expect("a journal field stays below 4 GiB");
    buf.extend_from_slice(&n.to_le_bytes());
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    put_u32(buf, s.len());
    buf.extend_from_slice(s.as_bytes());
}

/// What a journal's bytes hold: the records of every intact frame, and how many leading bytes
/// those frames fill (anything after is a damaged tail).
#[derive(Debug, Default)]
pub(crate) struct Scan {
    pub(crate) entries: Vec<Entry>,
    pub(crate) valid_len: u64,
}

/// Decodes frames until the bytes run out or a frame is incomplete or damaged.
pub(crate) fn scan(bytes: &[u8]) -> Scan {
    let mut scan = Scan::default();
    let mut rest = bytes;
    while let Some((entries, used)) = decode_frame(rest) {
        scan.entries.extend(entries);
        scan.valid_len += used as u64;
        rest = &rest[used..];
    }
    scan
}

/// The id of the last record in the journal's intact frames, without decoding the others. A
/// reader may see the writer's latest frame half-written; that one is skipped.
pub(crate) fn last_id(bytes: &[u8]) -> Option<i64> {
    let mut starts = Vec::new();
    let mut at = 0usize;
    while bytes.len() - at >= HEADER && bytes[at..at + 4] == MAGIC {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().ok()?) as usize;
        let end = at.checked_add(HEADER + len)?;
        if end > bytes.len() {
            break;
        }
        starts.push(at);
        at = end;
    }
    starts
        .iter()
        .rev()
        .find_map(|&start| decode_frame(&bytes[start..]))
        .and_then(|(entries, _)| entries.last().map(|e| e.id))
}

fn decode_frame(bytes: &[u8]) -> Option<(Vec<Entry>, usize)> {
    if bytes.len() < HEADER || bytes[..4] != MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(bytes[4..8].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes[8..12].try_into().ok()?);
    let payload = bytes.get(HEADER..HEADER.checked_add(len)?)?;
    if crc32(payload) != crc {
        return None;
    }
    let mut r = Reader(payload);
    let count = r.u32()?;
    let mut entries = Vec::with_capacity(count.min(4096) as usize);
    for _ in 0..count {
        let id = i64::from_le_bytes(r.take(8)?.try_into().ok()?);
        let time = r.string()?;
        let kind = r.string()?;
        let mut optional = [None, None, None, None, None, None];
        for field in &mut optional {
            *field = match r.take(1)?[0] {
                0 => None,
                1 => Some(r.string()?),
                _ => return None,
            };
        }
        let [session_id, principal, connection, decision, policy, rule] = optional;
        entries.push(Entry {
            id,
            time,
            kind,
            session_id,
            principal,
            connection,
            decision,
            policy,
            rule,
            detail: r.string()?,
            prev_hash: r.string()?,
            hash: r.string()?,
        });
    }
    r.0.is_empty().then_some((entries, HEADER + len))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn string(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

/// CRC-32 (IEEE 802.3, as zlib computes it). Every committed batch is checksummed on the
/// commit path, so this uses the SIMD implementation rather than a byte-at-a-time table.
fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// The writer's handle on the journal file.
pub(crate) struct Journal {
    file: File,
    path: PathBuf,
    /// Bytes of whole frames in the file; a failed append is cut back to this.
    len: u64,
    /// `synchronous=full`: sync each append before it counts as committed.
    sync: bool,
    /// A failed append could not be cut back: the file may end in a partial frame, which must
    /// go before anything else is appended after it.
    damaged: bool,
}

impl Journal {
    /// Opens (creating) the journal for appending. Call after [`recover`], with the writer lock.
    pub(crate) fn open(path: PathBuf, sync: bool) -> io::Result<Journal> {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let len = file.metadata()?.len();
        Ok(Journal {
            file,
            path,
            len,
            sync,
            damaged: false,
        })
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Whether each append is synced (`synchronous=full`).
    pub(crate) fn syncs(&self) -> bool {
        self.sync
    }

    /// Appends one frame with one `write` (and, under `synchronous=full`, syncs it). On error
    /// the file is cut back to what it held before, so the failed frame never sits in front of
    /// a later one.
    pub(crate) fn append(&mut self, frame: &[u8]) -> Result<(), StoreError> {
        self.repair()?;
        let written = self.file.write_all(frame).and_then(|()| {
            if self.sync {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        match written {
            Ok(()) => {
                self.len += frame.len() as u64;
                Ok(())
            }
            Err(err) => {
                self.damaged = true;
                let _ = self.repair();
                Err(self.error(&err))
            }
        }
    }

    /// Test hook: appends only half of `frame`, then fails as a full disk would.
    #[cfg(test)]
    pub(crate) fn append_torn(&mut self, frame: &[u8]) -> Result<(), StoreError> {
        self.repair()?;
        let _ = self.file.write_all(&frame[..frame.len() / 2]);
        self.damaged = true;
        let _ = self.repair();
        Err(self.error(&io::Error::from(io::ErrorKind::StorageFull)))
    }

    /// Empties the journal; call only when SQLite holds everything in it.
    pub(crate) fn truncate(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.len = 0;
        Ok(())
    }

    fn repair(&mut self) -> Result<(), StoreError> {
        if self.damaged {
            self.file.set_len(self.len).map_err(|e| self.error(&e))?;
            self.damaged = false;
        }
        Ok(())
    }

    fn error(&self, err: &io::Error) -> StoreError {
        crate::error::journal(&self.path, err)
    }
}

/// Puts into SQLite every intact journal record newer than SQLite's head, cuts off a damaged
/// tail, then empties the journal. Returns the chain head. The caller holds the writer lock.
///
/// Records are inserted as the journal holds them even where they do not link to the record
/// before (possible only after a power loss under `synchronous=normal`, or an edited file):
/// `verify` then names the break, which is better than silently dropping evidence.
pub(crate) fn recover(conn: &mut Connection, path: &Path) -> Result<Head, StoreError> {
    let open_err = |reason: String| StoreError::Open {
        path: path.display().to_string(),
        reason,
    };
    let sql_err = |e: rusqlite::Error| open_err(crate::error::describe(&e));
    let mut head = db::read_head(conn).map_err(sql_err)?;
    let jpath = self::path(path);
    let mut file = match OpenOptions::new().read(true).write(true).open(&jpath) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(head),
        Err(e) => return Err(open_err(format!("cannot open {}: {e}", jpath.display()))),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| open_err(format!("cannot read {}: {e}", jpath.display())))?;
    if bytes.is_empty() {
        return Ok(head);
    }
    let scan = scan(&bytes);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql_err)?;
    let mut indexed = 0u64;
    {
        let mut insert = tx.prepare_cached(db::INSERT).map_err(sql_err)?;
        let known = head.id;
        for entry in scan.entries.iter().filter(|e| e.id > known) {
            if entry.id != head.id + 1 || entry.prev_hash != head.hash {
                tracing::error!(
                    id = entry.id,
                    after = head.id,
                    "journal record does not link to the record before it; indexing it anyway, \
                     audit verify will name the break"
                );
            } else if entry.link().hash() != entry.hash {
                tracing::error!(
                    id = entry.id,
                    "journal record does not match its hash; indexing it anyway, \
                     audit verify will name it"
                );
            }
            entry.insert(&mut insert).map_err(sql_err)?;
            head = Head {
                id: entry.id,
                hash: entry.hash.clone(),
            };
            indexed += 1;
        }
    }
    tx.commit().map_err(sql_err)?;
    let torn = bytes.len() as u64 - scan.valid_len;
    if torn > 0 {
        tracing::warn!(bytes = torn, journal = %jpath.display(),
            "cut off an incomplete journal tail (a batch whose append never completed)");
    }
    if indexed > 0 {
        tracing::info!(
            records = indexed,
            head = head.id,
            "indexed journal records the previous writer had not"
        );
    }
    file.set_len(0)
        .map_err(|e| open_err(format!("cannot truncate {}: {e}", jpath.display())))?;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: i64, session: Option<&str>) -> Entry {
        Entry {
            id,
            time: "2024-01-01T00:00:00.000000Z".into(),
            kind: "statement".into(),
            session_id: session.map(Into::into),
            principal: Some("alice".into()),
            connection: None,
            decision: Some(String::new()),
            policy: None,
            rule: Some("r é".into()),
            detail: r#"{"sql":"SELECT 1"}"#.into(),
            prev_hash: "a".repeat(64),
            hash: "b".repeat(64),
        }
    }

    #[test]
    fn crc32_matches_zlib() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn frames_round_trip_and_a_torn_tail_is_dropped() {
        let first = vec![entry(1, Some("s")), entry(2, None)];
        let second = vec![entry(3, Some(""))];
        let mut bytes = Vec::new();
        let mut buf = Vec::new();
        encode_frame(&mut buf, &first);
        bytes.extend_from_slice(&buf);
        encode_frame(&mut buf, &second);
        bytes.extend_from_slice(&buf);
        let whole = bytes.len() as u64;

        let scan_all = scan(&bytes);
        assert_eq!(scan_all.valid_len, whole);
        assert_eq!(scan_all.entries, [first.clone(), second.clone()].concat());

        // Every cut inside the second frame loses exactly that frame.
        let first_len = whole as usize - buf.len();
        for cut in first_len..bytes.len() {
            let s = scan(&bytes[..cut]);
            assert_eq!(s.valid_len, first_len as u64, "cut at {cut}");
            assert_eq!(s.entries, first);
        }
        // A flipped bit or trailing zeros (what power loss can leave) end the journal too.
        let mut flipped = bytes.clone();
        flipped[first_len + 20] ^= 1;
        assert_eq!(scan(&flipped).entries, first);
        let mut zeros = bytes.clone();
        zeros.extend_from_slice(&[0; 4096]);
        assert_eq!(scan(&zeros).valid_len, whole);

        assert_eq!(last_id(&bytes), Some(3));
        assert_eq!(last_id(&bytes[..bytes.len() - 1]), Some(2));
        assert_eq!(last_id(&flipped), Some(2));
        assert_eq!(last_id(&zeros), Some(3));
        assert_eq!(last_id(&[]), None);
    }
}

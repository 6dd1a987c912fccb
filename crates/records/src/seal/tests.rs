//! Signed checkpoints against the attacks the chain alone misses: a record deleted and the rest
//! renumbered and rehashed, the tail cut, a checkpoint forged, the checkpoints removed.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use rusqlite::Connection;
use serde_json::json;
use tempfile::TempDir;

use super::*;
use crate::chain::{Link, GENESIS_HASH};
use crate::{NewRecord, RecordKind};

struct Fixture {
    dir: TempDir,
    url: String,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/store/audit.db", dir.path().display());
        Fixture { dir, url }
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("data/audit-signing.key")
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("store/audit.db")
    }

    /// A store with `before` records, a start (verify + checkpoint), `after` more records and a
    /// checkpoint of them, closed cleanly so SQLite holds everything and the journal is empty.
    async fn run_gateway(&self, before: usize, after: usize) {
        let store = Store::open(&self.url).unwrap();
        append(&store, before).await;
        let opened = Seal::open(&store, &self.key()).unwrap();
        append(&store, after).await;
        opened.seal.checkpoint(&store).unwrap();
        drop(store);
    }

    fn verify(&self) -> VerifyReport {
        let store = Store::open_read_only(&self.url).unwrap();
        verify_signed(&store, &self.key()).unwrap()
    }

    fn broken(&self) -> Broken {
        let report = self.verify();
        match report.first_broken {
            Some(broken) => broken,
            None => panic!("intact: {report:?}"),
        }
    }
}

async fn append(store: &Store, n: usize) {
    for i in 0..n {
        let record = NewRecord::new(RecordKind::Grant)
            .principal("alice")
            .decision("approved")
            .detail(json!({ "grant": { "id": format!("g-{i}") } }));
        store.append(record).await.unwrap();
    }
    store.flush().await.unwrap();
}

/// What someone who can write the database does to hide record `victim`: delete it, renumber
/// the records after it and recompute every hash, so the chain verifies on its own.
fn delete_and_rehash(db: &std::path::Path, victim: i64) {
    let conn = Connection::open(db).unwrap();
    let mut rows: Vec<Vec<Option<String>>> = {
        let mut stmt = conn
            .prepare(
                "SELECT time, kind, session_id, principal, connection, decision, policy, rule, \
                 detail FROM records WHERE id <> ?1 ORDER BY id",
            )
            .unwrap();
        let rows = stmt
            .query_map([victim], |r| (0..9).map(|i| r.get(i)).collect())
            .unwrap();
        rows.map(Result::unwrap).collect()
    };
    conn.execute("DELETE FROM records", []).unwrap();
    let mut prev = GENESIS_HASH.to_owned();
    for (i, row) in rows.iter_mut().enumerate() {
        let id = i as i64 + 1;
        let f = |n: usize| row[n].as_deref();
        let link = Link {
            id,
            time: f(0).unwrap(),
            kind: f(1).unwrap(),
            session_id: f(2),
            principal: f(3),
            connection: f(4),
            decision: f(5),
            policy: f(6),
            rule: f(7),
            detail: f(8).unwrap(),
            prev_hash: &prev,
        };
        let hash = link.hash();
        conn.execute(
            crate::db::INSERT,
            rusqlite::params![
                id,
                f(0),
                f(1),
                f(2),
                f(3),
                f(4),
                f(5),
                f(6),
                f(7),
                f(8),
                prev,
                hash
            ],
        )
        .unwrap();
        prev = hash;
    }
}

#[tokio::test]
async fn an_intact_chain_verifies_with_its_checkpoints() {
    let fx = Fixture::new();
    fx.run_gateway(3, 4).await;
    let report = fx.verify();
    assert_eq!(report.first_broken, None, "{report:?}");
    assert_eq!(report.checked, 7);
    assert_eq!(report.checkpoints, 2);
    assert_eq!(report.signed_through, Some(7));
    assert!(report.signing_key.unwrap().starts_with("ed25519:"));
}

#[tokio::test]
async fn a_deleted_and_rehashed_record_is_named() {
    let fx = Fixture::new();
    fx.run_gateway(3, 6).await;
    delete_and_rehash(&fx.db(), 5);
    // The chain alone is fooled.
    let store = Store::open_read_only(&fx.url).unwrap();
    assert_eq!(store.verify().unwrap().first_broken, None);
    // The last record is renumbered away, so the checkpoint of record 9 finds it missing.
    let broken = fx.broken();
    assert_eq!(broken.id, 9, "{broken:?}");
    assert!(
        broken.reason.starts_with("record 9 is missing"),
        "{broken:?}"
    );
    assert!(
        broken
            .reason
            .contains("one deleted and the rest renumbered"),
        "{broken:?}"
    );
}

#[tokio::test]
async fn an_edited_and_rehashed_record_fails_the_checkpoint_after_it() {
    let fx = Fixture::new();
    fx.run_gateway(3, 6).await;
    let conn = Connection::open(fx.db()).unwrap();
    conn.execute("UPDATE records SET principal = 'mallory' WHERE id = 5", [])
        .unwrap();
    drop(conn);
    delete_and_rehash(&fx.db(), 0);
    let broken = fx.broken();
    assert_eq!(broken.id, 9, "{broken:?}");
    assert!(
        broken
            .reason
            .contains("records 4 to 9 were rewritten and rehashed"),
        "{broken:?}"
    );
    // The gateway does not start on it.
    let store = Store::open(&fx.url).unwrap();
    let err = Seal::open(&store, &fx.key()).err().unwrap();
    assert!(matches!(err, StoreError::Tampered { id: 9, .. }), "{err}");
}

#[tokio::test]
async fn a_tail_cut_below_a_checkpoint_is_named() {
    let fx = Fixture::new();
    fx.run_gateway(2, 5).await;
    let conn = Connection::open(fx.db()).unwrap();
    conn.execute("DELETE FROM records WHERE id > 4", [])
        .unwrap();
    drop(conn);
    let broken = fx.broken();
    assert_eq!(broken.id, 5);
    assert!(
        broken.reason.starts_with("records 5 to 7 are missing"),
        "{broken:?}"
    );
}

#[tokio::test]
async fn a_forged_or_removed_checkpoint_is_a_break() {
    let fx = Fixture::new();
    fx.run_gateway(2, 2).await;
    let log = checkpoints_path(&fx.key());
    let original = std::fs::read_to_string(&log).unwrap();
    let forged = original.replacen("\"id\":4", "\"id\":3", 1);
    assert_ne!(forged, original);
    std::fs::write(&log, forged).unwrap();
    assert!(fx
        .broken()
        .reason
        .contains("is not signed by the audit key"));
    std::fs::remove_file(&log).unwrap();
    assert!(fx.broken().reason.contains("the checkpoints were removed"));
    std::fs::write(&log, original).unwrap();
    std::fs::remove_file(fx.key()).unwrap();
    assert!(fx.broken().reason.contains("restore the key"));
}

#[tokio::test]
async fn the_key_is_private_and_an_unfinished_line_is_ignored() {
    let fx = Fixture::new();
    fx.run_gateway(1, 1).await;
    let mode = std::fs::metadata(fx.key()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let log = checkpoints_path(&fx.key());
    let mut text = std::fs::read_to_string(&log).unwrap();
    text.push_str("{\"id\":9,\"ha");
    std::fs::write(&log, text).unwrap();
    assert_eq!(fx.verify().first_broken, None);
}

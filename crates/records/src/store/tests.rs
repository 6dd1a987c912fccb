//! Behaviour of the whole store: appends, group commit, verification against tampering, failure
//! and recovery, queries, and crash survival.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use rusqlite::Connection;
use serde_json::json;
use tempfile::TempDir;

use crate::chain::Link;
use crate::{NewRecord, RecordKind, SessionFilter, Store, StoreError, VerifyReport, GENESIS_HASH};

fn temp_url() -> (TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    // A nested path also proves parent directories are created.
    let url = format!("sqlite://{}/data/audit.db", dir.path().display());
    (dir, url)
}

fn db_path(dir: &TempDir) -> std::path::PathBuf {
    dir.path().join("data/audit.db")
}

/// A second, independent read-write connection: what someone editing the file would use.
fn tamper(dir: &TempDir) -> Connection {
    let conn = Connection::open(db_path(dir)).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn
}

fn journal_bytes(dir: &TempDir) -> Vec<u8> {
    std::fs::read(dir.path().join("data/audit.db-records.journal")).unwrap()
}

fn ids_of(entries: &[crate::journal::Entry]) -> Vec<i64> {
    entries.iter().map(|e| e.id).collect()
}

/// Stalls the indexer (after it has indexed everything before) until the returned sender is
/// used or dropped, so the next appends are committed to the journal but not in SQLite.
async fn stall_indexer(store: &Store) -> std::sync::mpsc::Sender<()> {
    let (release, stalled) = std::sync::mpsc::channel::<()>();
    let (started, running) = tokio::sync::oneshot::channel();
    store
        .with_writer(move |w| {
            w.on_index_connection(Box::new(move |_| {
                let _ = started.send(());
                let _ = stalled.recv();
            }));
        })
        .await;
    running.await.unwrap();
    release
}

/// The store's files as a `kill -9` would leave them now: a consistent copy of the database
/// (`VACUUM INTO`) and the journal, in `dir/image`. Returns the copy's URL.
fn crash_image(dir: &TempDir) -> String {
    let image = dir.path().join("image/audit.db");
    std::fs::create_dir_all(image.parent().unwrap()).unwrap();
    tamper(dir)
        .execute("VACUUM INTO ?1", [image.to_str().unwrap()])
        .unwrap();
    std::fs::write(crate::journal::path(&image), journal_bytes(dir)).unwrap();
    format!("sqlite://{}", image.display())
}

fn count_in_sqlite(url: &str) -> i64 {
    Connection::open(url.strip_prefix("sqlite://").unwrap())
        .unwrap()
        .query_row("SELECT count(*) FROM records", [], |r| r.get(0))
        .unwrap()
}

fn statement(session: &str, decision: &str, sql: &str) -> NewRecord {
    NewRecord::new(RecordKind::Statement)
        .session_id(session)
        .principal("alice")
        .connection("orders-db")
        .decision(decision)
        .detail(json!({ "sql": sql }))
}

async fn store_with(url: &str, n: usize) -> Store {
    let store = Store::open(url).unwrap();
    for i in 0..n {
        store
            .append(statement("s1", "allow", &format!("SELECT {i}")))
            .await
            .unwrap();
    }
    // Tests edit the SQLite file behind the store's back: the records must be there by then.
    store.with_index_connection(|_| ()).await;
    store
}

fn assert_intact(report: &VerifyReport, records: u64) {
    assert_eq!(report.first_broken, None, "{report:?}");
    assert_eq!(report.checked, records);
}

#[test]
fn store_and_append_future_can_cross_threads() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let (_dir, url) = temp_url();
    let store = Store::open(&url).unwrap();
    send_sync(&store);
    send(&store.append(NewRecord::default()));
    send(&store.flush());
}

#[tokio::test]
async fn append_and_read_back() {
    let (_dir, url) = temp_url();
    let store = Store::open(&url).unwrap();
    let start = NewRecord::new(RecordKind::SessionStart)
        .session_id("s1")
        .principal("alice")
        .connection("orders-db")
        .decision("allow")
        .policy("ci-reads")
        .rule("allow read")
        .detail(json!({ "client_addr": "10.0.0.7:51000" }));
    let id = store.append(start).await.unwrap();
    assert_eq!(id, 1);
    store
        .append(NewRecord::new(RecordKind::ConnectionAttempt).decision("deny"))
        .await
        .unwrap();
    store
        .append(statement("s1", "allow", "SELECT 1"))
        .await
        .unwrap();
    store.append_detached(
        NewRecord::new(RecordKind::StatementResult)
            .session_id("s1")
            .decision("ok")
            .detail(json!({ "rows": 1, "duration_us": 420 })),
    );
    store.append_detached(NewRecord::new(RecordKind::SessionEnd).session_id("s1"));
    store.flush().await.unwrap();

    let records = store.session_records("s1").unwrap();
    let ids: Vec<i64> = records.iter().map(|r| r.id).collect();
    assert_eq!(ids, [1, 3, 4, 5]);
    let first = &records[0];
    assert_eq!(first.kind, RecordKind::SessionStart);
    assert_eq!(first.principal.as_deref(), Some("alice"));
    assert_eq!(first.connection.as_deref(), Some("orders-db"));
    assert_eq!(first.decision.as_deref(), Some("allow"));
    assert_eq!(first.policy.as_deref(), Some("ci-reads"));
    assert_eq!(first.rule.as_deref(), Some("allow read"));
    assert_eq!(first.detail, json!({ "client_addr": "10.0.0.7:51000" }));
    assert_eq!(first.prev_hash, GENESIS_HASH);
    assert_eq!(records[2].detail["duration_us"], 420);
    assert_eq!(records[3].kind, RecordKind::SessionEnd);
    assert_eq!(records[3].detail, serde_json::Value::Null);

    let all = store.records(None).unwrap();
    assert_eq!(all.len(), 5);
    for pair in all.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash);
        assert!(pair[0].time <= pair[1].time);
    }
    let t = &all[0].time;
    assert_eq!(t.len(), "2024-01-01T00:00:00.000000Z".len(), "{t}");
    assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
    assert_intact(&store.verify().unwrap(), 5);
}

#[tokio::test]
async fn records_of_kinds_returns_only_those_kinds_in_order() {
    let (dir, url) = temp_url();
    let store = Store::open(&url).unwrap();
    let grant = |event: &str| {
        NewRecord::new(RecordKind::Grant)
            .principal("ci")
            .decision(event)
            .detail(json!({ "id": "g1" }))
    };
    store.append(grant("requested")).await.unwrap();
    store
        .append(statement("s1", "allow", "SELECT 1"))
        .await
        .unwrap();
    store
        .append(NewRecord::new(RecordKind::Approval).decision("requested"))
        .await
        .unwrap();
    store.append(grant("approved")).await.unwrap();
    let got = store
        .records_of_kinds(&[RecordKind::Grant, RecordKind::Approval])
        .unwrap();
    let seen: Vec<(i64, Option<&str>)> =
        got.iter().map(|r| (r.id, r.decision.as_deref())).collect();
    assert_eq!(
        seen,
        [
            (1, Some("requested")),
            (3, Some("requested")),
            (4, Some("approved"))
        ]
    );
    assert!(store.records_of_kinds(&[]).unwrap().is_empty());
    assert_intact(&store.verify().unwrap(), 4);
    // Replaying grants must not scan every statement: the partial index serves it.
    let conn = Connection::open(db_path(&dir)).unwrap();
    let sql = crate::query::kinds_sql(&[RecordKind::Grant, RecordKind::Approval]);
    let plan: Vec<String> = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .unwrap()
        .query_map([], |row| row.get::<_, String>(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        plan.iter().any(|p| p.contains("access_changes")),
        "{plan:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_get_unique_contiguous_ids() {
    let (_dir, url) = temp_url();
    let store = Store::open(&url).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8 {
        let store = store.clone();
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for i in 0..500 {
                let r = statement(&format!("s{t}"), "allow", &format!("SELECT {i}"));
                ids.push(store.append(r).await.unwrap());
            }
            ids
        });
    }
    let mut all = BTreeSet::new();
    while let Some(ids) = tasks.join_next().await {
        let ids = ids.unwrap();
        // One session's records keep their order in the chain.
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        all.extend(ids);
    }
    assert_eq!(all.len(), 4000);
    assert_eq!(
        all.iter().copied().collect::<Vec<_>>(),
        (1..=4000).collect::<Vec<i64>>()
    );
    assert_intact(&store.verify().unwrap(), 4000);
    assert!(store.batches() <= 4000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_appends_share_one_commit() {
    let (_dir, url) = temp_url();
    let store = store_with(&url, 1).await;
    let before = store.batches();
    let queued = store.queued();

    // Stall the writer between batches while the others queue up.
    let (release, stalled) = std::sync::mpsc::channel::<()>();
    store
        .send(crate::writer::Job::Run(Box::new(move |_| {
            let _ = stalled.recv();
        })))
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 {
        let store = store.clone();
        tasks.spawn(async move { store.append(statement("s", "allow", &format!("{i}"))).await });
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while store.queued() - queued < 101 {
        assert!(Instant::now() < deadline, "appends did not queue");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    release.send(()).unwrap();

    let mut ids = BTreeSet::new();
    while let Some(id) = tasks.join_next().await {
        ids.insert(id.unwrap().unwrap());
    }
    assert_eq!(ids, (2..=101).collect());
    let batches = store.batches() - before;
    // Everything that queued behind the stall, in at most two writes.
    assert!(
        batches <= 2,
        "100 waiting appends took {batches} transactions"
    );
    assert_intact(&store.verify().unwrap(), 101);
}

/// The leader/follower hand-off under contention: appends, detached appends and flushes from
/// many tasks on several workers. A record pushed while a leader is writing must be committed
/// by that leader's second look or a later leader: every ack arrives, ids have no gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leaders_strand_no_record_under_contention() {
    let (_dir, url) = temp_url();
    let store = Store::open(&url).unwrap();
    let (tasks_n, appends) = (32, 200);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..tasks_n {
        let store = store.clone();
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for i in 0..appends {
                let r = statement(&format!("s{t}"), "allow", &format!("SELECT {i}"));
                let id = tokio::time::timeout(Duration::from_secs(10), store.append(r))
                    .await
                    .expect("an acknowledgement never arrived")
                    .unwrap();
                ids.push(id);
                if i % 4 == 0 {
                    store.append_detached(statement(&format!("s{t}"), "ok", "result"));
                }
                if i % 50 == 0 {
                    tokio::time::timeout(Duration::from_secs(10), store.flush())
                        .await
                        .expect("a flush never completed")
                        .unwrap();
                }
                if i % 3 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            ids
        });
    }
    let mut all = BTreeSet::new();
    while let Some(ids) = tasks.join_next().await {
        let ids = ids.unwrap();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        all.extend(ids);
    }
    tokio::time::timeout(Duration::from_secs(10), store.flush())
        .await
        .unwrap()
        .unwrap();
    let detached = tasks_n * appends / 4;
    let total = (tasks_n * appends + detached) as i64;
    assert_eq!(all.len(), tasks_n * appends);
    let records = store.records(None).unwrap();
    assert_eq!(
        records.iter().map(|r| r.id).collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>()
    );
    assert!(all.iter().all(|id| *id <= total));
    assert_intact(&store.verify().unwrap(), total as u64);
    // The point of the design: most batches were committed by the appending callers.
    assert!(
        store.thread_batches() < store.batches(),
        "{} of {} batches on the writer thread",
        store.thread_batches(),
        store.batches()
    );
}

#[tokio::test]
async fn appends_commit_on_the_callers_thread_unless_synchronous_is_full() {
    let (_dir, url) = temp_url();
    let store = Store::open(&url).unwrap();
    for i in 0..20 {
        assert_eq!(
            store
                .append(statement("s1", "allow", &format!("{i}")))
                .await,
            Ok(i + 1)
        );
    }
    store.flush().await.unwrap();
    assert_eq!(store.batches(), 20);
    assert_eq!(store.thread_batches(), 0, "the writer thread was involved");

    let (_dir, url) = temp_url();
    let store = Store::open(&format!("{url}?synchronous=full")).unwrap();
    for i in 0..5 {
        store
            .append(statement("s1", "allow", &format!("{i}")))
            .await
            .unwrap();
    }
    // Under `synchronous=full` no tokio worker waits for an fdatasync: the thread did it all.
    assert_eq!(store.batches(), 5);
    assert!(store.thread_batches() >= 5);
    assert_intact(&store.verify().unwrap(), 5);
}

#[test]
fn detached_appends_are_committed_without_a_later_append_or_flush() {
    let (dir, url) = temp_url();
    let store = Store::open(&url).unwrap();
    // From several plain threads, no runtime, and nothing after them.
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    store.append_detached(statement(&format!("s{t}"), "ok", &format!("{i}")));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let journaled = crate::journal::scan(&journal_bytes(&dir)).entries.len();
        if journaled == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{journaled} of 200 detached records committed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_intact(&store.verify().unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_leading_caller_stops_the_writer_without_hanging_anyone() {
    let (_dir, url) = temp_url();
    let store = store_with(&url, 1).await;
    // Queued without nudging the writer thread, so the next appending caller runs it as leader.
    let shared = &store.inner.writer.as_ref().unwrap().shared;
    shared
        .push(crate::writer::Job::Run(Box::new(|_| {
            panic!("leader dies (deliberately, in a test)")
        })))
        .unwrap();
    let leader = tokio::spawn({
        let store = store.clone();
        async move { store.append(statement("s1", "allow", "SELECT 1")).await }
    });
    let err = tokio::time::timeout(Duration::from_secs(5), leader)
        .await
        .expect("the leader must not hang")
        .unwrap_err();
    assert!(err.is_panic());
    for _ in 0..2 {
        let outcome = tokio::time::timeout(
            Duration::from_secs(5),
            store.append(statement("s1", "allow", "SELECT 2")),
        )
        .await
        .expect("append must not hang on a poisoned writer");
        assert_eq!(outcome, Err(StoreError::WriterStopped));
    }
    let flushed = tokio::time::timeout(Duration::from_secs(5), store.flush()).await;
    assert_eq!(flushed.unwrap(), Err(StoreError::WriterStopped));
    // What was committed before stays intact.
    assert_intact(&store.verify().unwrap(), 1);
}

#[tokio::test]
async fn detached_appends_keep_order_and_batch() {
    let (_dir, url) = temp_url();
    let store = Store::open(&url).unwrap();
    for i in 0..1000 {
        store
            .append_detached(NewRecord::new(RecordKind::StatementResult).detail(json!({ "n": i })));
    }
    store.flush().await.unwrap();
    let records = store.records(None).unwrap();
    let order: Vec<i64> = records
        .iter()
        .filter_map(|r| r.detail["n"].as_i64())
        .collect();
    assert_eq!(order, (0..1000).collect::<Vec<_>>());
    assert!(store.batches() < 100, "{} transactions", store.batches());
}

#[tokio::test]
async fn verify_names_a_record_whose_detail_was_edited() {
    let (dir, url) = temp_url();
    let store = store_with(&url, 5).await;
    let head_of_two = store.records(None).unwrap()[1].hash.clone();
    tamper(&dir)
        .execute(
            "UPDATE records SET detail = '{\"sql\":\"SELECT 42\"}' WHERE id = 3",
            [],
        )
        .unwrap();
    let report = store.verify().unwrap();
    let broken = report.first_broken.unwrap();
    assert_eq!(broken.id, 3);
    assert_eq!(
        broken.reason,
        "record 3 was altered: stored hash does not match its contents"
    );
    assert_eq!(report.checked, 2);
    assert_eq!(report.head, Some(head_of_two));
}

#[tokio::test]
async fn verify_names_a_record_whose_hash_was_edited() {
    let (dir, url) = temp_url();
    let store = store_with(&url, 5).await;
    tamper(&dir)
        .execute("UPDATE records SET hash = ?1 WHERE id = 4", [GENESIS_HASH])
        .unwrap();
    let broken = store.verify().unwrap().first_broken.unwrap();
    assert_eq!(broken.id, 4);
    assert!(broken.reason.contains("altered"), "{}", broken.reason);
}

#[tokio::test]
async fn verify_names_the_record_after_a_deleted_one() {
    let (dir, url) = temp_url();
    let store = store_with(&url, 6).await;
    tamper(&dir)
        .execute("DELETE FROM records WHERE id = 3", [])
        .unwrap();
    let broken = store.verify().unwrap().first_broken.unwrap();
    assert_eq!(broken.id, 4);
    assert_eq!(broken.reason, "record 4 follows 2: record 3 is missing");

    tamper(&dir)
        .execute("DELETE FROM records WHERE id IN (4, 5)", [])
        .unwrap();
    let broken = store.verify().unwrap().first_broken.unwrap();
    assert_eq!(
        broken.reason,
        "record 6 follows 2: records 3 to 5 are missing"
    );

    tamper(&dir)
        .execute("DELETE FROM records WHERE id IN (1, 2)", [])
        .unwrap();
    let broken = store.verify().unwrap().first_broken.unwrap();
    assert_eq!(
        broken.reason,
        "record 6 is the first record: records 1 to 5 are missing"
    );
}

#[tokio::test]
async fn verify_catches_an_edit_that_was_rehashed() {
    let (dir, url) = temp_url();
    let store = store_with(&url, 4).await;
    let r = store.records(None).unwrap().remove(1);
    let forged_detail = r#"{"sql":"SELECT 'nothing to see'"}"#;
    let forged = Link {
        id: r.id,
        time: &r.time,
        kind: r.kind.as_str(),
        session_id: r.session_id.as_deref(),
        principal: r.principal.as_deref(),
        connection: r.connection.as_deref(),
        decision: r.decision.as_deref(),
        policy: r.policy.as_deref(),
        rule: r.rule.as_deref(),
        detail: forged_detail,
        prev_hash: &r.prev_hash,
    }
    .hash();
    tamper(&dir)
        .execute(
            "UPDATE records SET detail = ?1, hash = ?2 WHERE id = 2",
            [forged_detail, &forged],
        )
        .unwrap();
    let broken = store.verify().unwrap().first_broken.unwrap();
    assert_eq!(broken.id, 3);
    assert!(
        broken
            .reason
            .starts_with("record 3 does not link to record 2"),
        "{}",
        broken.reason
    );
}

#[tokio::test]
async fn unreadable_edits_are_reported_not_fatal() {
    let (dir, url) = temp_url();
    let store = store_with(&url, 3).await;
    tamper(&dir)
        .execute(
            "UPDATE records SET kind = 'bogus', detail = x'00ff' WHERE id = 2",
            [],
        )
        .unwrap();
    let broken = store.verify().unwrap().first_broken.unwrap();
    assert_eq!(broken.id, 2);
    assert_eq!(
        broken.reason,
        "record 2 was altered: its detail is not text"
    );
    let err = store.session_records("s1").unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { id: 2, .. }), "{err}");
}

#[tokio::test]
async fn truncated_tail_is_invisible_until_the_gateway_writes_again() {
    let (dir, url) = temp_url();
    let store = store_with(&url, 5).await;
    tamper(&dir)
        .execute("DELETE FROM records WHERE id = 5", [])
        .unwrap();
    // The documented limit: what is left is a valid chain. Only an anchored head reveals it.
    assert_intact(&store.verify().unwrap(), 4);
    // A running writer still links to the record it wrote, so the next append exposes the cut.
    store
        .append(statement("s1", "allow", "SELECT 6"))
        .await
        .unwrap();
    let broken = store.verify().unwrap().first_broken.unwrap();
    assert_eq!(broken.reason, "record 6 follows 4: record 5 is missing");
}

#[tokio::test]
async fn failed_journal_write_refuses_appends_then_recovers_with_an_intact_chain() {
    let (dir, url) = temp_url();
    let store = store_with(&url, 3).await;
    let journal_before = store.with_writer(|w| w.journal_len()).await;
    // Each failing append writes half its frame, then fails as a full disk does.
    store.with_writer(|w| w.fail_journal_appends(true)).await;
    let big = "x".repeat(64 * 1024);
    let err = store
        .append(statement("s1", "allow", &big))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("audit store unavailable: disk full (writing ")
            && text.contains("audit.db-records.journal"),
        "{text}"
    );
    store.append_detached(statement("s1", "allow", &big));
    let err = store.flush().await.unwrap_err();
    assert!(
        matches!(err, StoreError::RecordsLost { count: 1, .. }),
        "{err}"
    );
    // Reported once: the next flush has nothing new to report.
    store.flush().await.unwrap();
    // The half-written frames were cut off again.
    assert_eq!(store.with_writer(|w| w.journal_len()).await, journal_before);
    assert_eq!(journal_bytes(&dir).len() as u64, journal_before);
    assert_intact(&store.verify().unwrap(), 3);

    store.with_writer(|w| w.fail_journal_appends(false)).await;
    let id = store.append(statement("s1", "allow", &big)).await.unwrap();
    assert_eq!(id, 4, "failed batches must not leave gaps");
    assert_intact(&store.verify().unwrap(), 4);
    // The journal holds exactly the committed records, nothing of the failed batches.
    let scan = crate::journal::scan(&journal_bytes(&dir));
    assert_eq!(scan.valid_len, journal_bytes(&dir).len() as u64);
    assert_eq!(ids_of(&scan.entries), [1, 2, 3, 4]);
    let records = store.records(None).unwrap();
    assert_eq!(records[3].prev_hash, records[2].hash);
}

#[tokio::test]
async fn full_disk_under_sqlite_delays_indexing_but_loses_no_record() {
    let (dir, url) = temp_url();
    let store = store_with(&url, 3).await;
    // Empty the journal whenever it is fully indexed: it must not be while indexing fails.
    store.with_writer(|w| w.set_journal_limit(1)).await;
    // max_page_count is per connection, so it has to be set on the indexer's own connection.
    store
        .with_index_connection(|conn| {
            let pages: i64 = conn
                .query_row("PRAGMA page_count", [], |r| r.get(0))
                .unwrap();
            conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap();
        })
        .await;
    let big = "x".repeat(64 * 1024);
    // Committed in the journal: SQLite being full does not refuse the statement.
    let id = store.append(statement("s1", "allow", &big)).await.unwrap();
    assert_eq!(id, 4);
    store.append_detached(statement("s1", "allow", &big));
    store.flush().await.unwrap();
    let id = store
        .append(statement("s1", "allow", "small"))
        .await
        .unwrap();
    assert_eq!(id, 6);
    // Indexing was attempted and failed; the records are only in the journal, which is kept
    // (records 1 to 3 were indexed, so the first batch after the limit changed emptied it).
    store.with_index_connection(|_| ()).await;
    assert_eq!(store.indexed(), 3);
    let in_sqlite: i64 = tamper(&dir)
        .query_row("SELECT count(*) FROM records", [], |r| r.get(0))
        .unwrap();
    assert_eq!(in_sqlite, 3);
    assert_eq!(
        ids_of(&crate::journal::scan(&journal_bytes(&dir)).entries),
        [4, 5, 6]
    );

    store
        .with_index_connection(|conn| {
            conn.query_row("PRAGMA max_page_count = 1073741823", [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap();
        })
        .await;
    // The retry indexes everything, in order.
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.indexed() < 6 {
        assert!(Instant::now() < deadline, "indexing did not resume");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_intact(&store.verify().unwrap(), 6);
    assert_eq!(store.records(None).unwrap()[4].detail["sql"], big.as_str());
    let id = store
        .append(statement("s1", "allow", "after"))
        .await
        .unwrap();
    assert_eq!(id, 7);
    // Now fully indexed, the journal was emptied before that append.
    assert_eq!(
        ids_of(&crate::journal::scan(&journal_bytes(&dir)).entries),
        [7]
    );
}

#[tokio::test]
async fn appends_fail_at_once_when_the_writer_is_gone() {
    let (_dir, url) = temp_url();
    let store = store_with(&url, 1).await;
    let (ack, done) = tokio::sync::oneshot::channel::<()>();
    store
        .send(crate::writer::Job::Run(Box::new(move |_| {
            drop(ack);
            panic!("writer dies (deliberately, in a test)");
        })))
        .unwrap();
    let _ = done.await;
    for _ in 0..2 {
        let outcome = tokio::time::timeout(
            Duration::from_secs(5),
            store.append(statement("s1", "allow", "SELECT 1")),
        )
        .await
        .expect("append must not hang on a dead writer");
        assert_eq!(outcome, Err(StoreError::WriterStopped));
    }
    let flushed = tokio::time::timeout(Duration::from_secs(5), store.flush()).await;
    assert_eq!(flushed.unwrap(), Err(StoreError::WriterStopped));
}

#[tokio::test]
async fn sessions_are_summarised_and_filtered() {
    let (_dir, url) = temp_url();
    let store = Store::open(&url).unwrap();
    let start = |session: &str, principal: &str, connection: &str, addr: &str| {
        NewRecord::new(RecordKind::SessionStart)
            .session_id(session)
            .principal(principal)
            .connection(connection)
            .detail(json!({ "client_addr": addr }))
    };
    store
        .append(start("a", "alice", "orders-db", "10.0.0.1:5000"))
        .await
        .unwrap();
    store
        .append(start("b", "bob", "billing-db", "10.0.0.2:5000"))
        .await
        .unwrap();
    store
        .append(statement("a", "allow", "SELECT 1"))
        .await
        .unwrap();
    store
        .append(statement("a", "deny", "DROP TABLE t"))
        .await
        .unwrap();
    store
        .append(statement("b", "allow", "SELECT 2"))
        .await
        .unwrap();
    store
        .append(
            NewRecord::new(RecordKind::StatementResult)
                .session_id("a")
                .decision("fail"),
        )
        .await
        .unwrap();
    store
        .append(NewRecord::new(RecordKind::SessionEnd).session_id("a"))
        .await
        .unwrap();

    let all = store.sessions(&SessionFilter::default()).unwrap();
    assert_eq!(all.len(), 2);
    let a = &all[0];
    assert_eq!(a.session_id, "a");
    assert_eq!(a.principal.as_deref(), Some("alice"));
    assert_eq!(a.connection.as_deref(), Some("orders-db"));
    assert_eq!((a.statements, a.denied), (2, 1));
    assert_eq!(a.client_addr.as_deref(), Some("10.0.0.1:5000"));
    let records = store.session_records("a").unwrap();
    assert_eq!(a.started, records[0].time);
    assert_eq!(
        a.ended.as_deref(),
        Some(records.last().unwrap().time.as_str())
    );
    let b = &all[1];
    assert_eq!((b.statements, b.denied, b.ended.as_deref()), (1, 0, None));

    let by_principal = SessionFilter {
        principal: Some("bob".into()),
        ..Default::default()
    };
    let found = store.sessions(&by_principal).unwrap();
    assert_eq!(
        found
            .iter()
            .map(|s| s.session_id.as_str())
            .collect::<Vec<_>>(),
        ["b"]
    );
    let by_connection = SessionFilter {
        connection: Some("orders-db".into()),
        ..Default::default()
    };
    let found = store.sessions(&by_connection).unwrap();
    assert_eq!(
        found
            .iter()
            .map(|s| s.session_id.as_str())
            .collect::<Vec<_>>(),
        ["a"]
    );
    let none = SessionFilter {
        principal: Some("alice".into()),
        connection: Some("billing-db".into()),
        ..Default::default()
    };
    assert!(store.sessions(&none).unwrap().is_empty());
    let future = SessionFilter {
        since: Some(SystemTime::now() + Duration::from_secs(60)),
        ..Default::default()
    };
    assert!(store.sessions(&future).unwrap().is_empty());
    let past = SessionFilter {
        since: Some(SystemTime::now() - Duration::from_secs(60)),
        ..Default::default()
    };
    assert_eq!(store.sessions(&past).unwrap().len(), 2);
}

#[tokio::test]
async fn records_since_a_time() {
    let (_dir, url) = temp_url();
    let store = store_with(&url, 2).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cut = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    store
        .append(statement("s1", "allow", "late 1"))
        .await
        .unwrap();
    store
        .append(statement("s1", "allow", "late 2"))
        .await
        .unwrap();

    let late = store.records(Some(cut)).unwrap();
    assert_eq!(late.iter().map(|r| r.id).collect::<Vec<_>>(), [3, 4]);
    assert_eq!(store.records(None).unwrap().len(), 4);
    let future = SystemTime::now() + Duration::from_secs(60);
    assert!(store.records(Some(future)).unwrap().is_empty());
}

#[tokio::test]
async fn read_only_store_reads_beside_a_writer_and_refuses_appends() {
    let (dir, url) = temp_url();
    let writer = store_with(&url, 3).await;
    let reader = Store::open_read_only(&url).unwrap();
    assert_eq!(reader.records(None).unwrap().len(), 3);
    writer
        .append(statement("s1", "allow", "SELECT 4"))
        .await
        .unwrap();
    assert_eq!(reader.session_records("s1").unwrap().len(), 4);
    assert_intact(&reader.verify().unwrap(), 4);

    let err = reader
        .append(statement("s1", "allow", "x"))
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::ReadOnly);
    reader.append_detached(statement("s1", "allow", "x"));
    reader.flush().await.unwrap();
    assert_eq!(writer.records(None).unwrap().len(), 4);

    // And after the gateway stopped.
    drop(writer);
    let reader = Store::open_read_only(&url).unwrap();
    assert_intact(&reader.verify().unwrap(), 4);
    let _ = dir;
}

#[test]
fn read_only_open_never_creates_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.db");
    let err = Store::open_read_only(&format!("sqlite://{}", path.display())).unwrap_err();
    assert!(matches!(err, StoreError::Missing { .. }), "{err}");
    assert!(!path.exists());
}

#[test]
fn foreign_and_newer_databases_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("foreign.db");
    Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    let url = format!("sqlite://{}", foreign.display());
    assert!(matches!(
        Store::open(&url),
        Err(StoreError::NotAStore { .. })
    ));
    assert!(matches!(
        Store::open_read_only(&url),
        Err(StoreError::NotAStore { .. })
    ));

    let newer = dir.path().join("newer.db");
    Connection::open(&newer)
        .unwrap()
        .execute_batch("PRAGMA user_version = 99")
        .unwrap();
    let err = Store::open(&format!("sqlite://{}", newer.display())).unwrap_err();
    assert!(
        matches!(err, StoreError::UnsupportedSchema { found: 99, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn chain_continues_across_reopen() {
    let (_dir, url) = temp_url();
    let store = store_with(&url, 3).await;
    drop(store);
    let store = Store::open(&url).unwrap();
    let id = store
        .append(statement("s1", "allow", "after reopen"))
        .await
        .unwrap();
    assert_eq!(id, 4);
    let records = store.records(None).unwrap();
    assert_eq!(records[3].prev_hash, records[2].hash);
    assert_intact(&store.verify().unwrap(), 4);
}

#[tokio::test]
async fn only_one_writer_at_a_time() {
    let (dir, url) = temp_url();
    let first = store_with(&url, 1).await;
    let err = Store::open(&url).unwrap_err();
    assert!(matches!(err, StoreError::InUse { .. }), "{err}");
    assert!(err.to_string().contains("audit.db-lock"), "{err}");
    // Readers are not writers.
    Store::open_read_only(&url).unwrap();
    drop(first);
    let second = Store::open(&url).unwrap();
    assert_eq!(second.append(statement("s1", "allow", "x")).await, Ok(2));
    assert!(dir.path().join("data/audit.db-lock").exists());
}

#[tokio::test]
async fn dropping_the_store_writes_what_was_queued() {
    let (_dir, url) = temp_url();
    let store = Store::open(&url).unwrap();
    for i in 0..200 {
        store.append_detached(statement("s1", "allow", &format!("{i}")));
    }
    drop(store);
    let store = Store::open_read_only(&url).unwrap();
    assert_intact(&store.verify().unwrap(), 200);
}

#[tokio::test]
async fn synchronous_and_wal_are_applied() {
    for (query, expected) in [
        ("", 1),
        ("?synchronous=normal", 1),
        ("?synchronous=full", 2),
    ] {
        let (_dir, url) = temp_url();
        let store = Store::open(&format!("{url}{query}")).unwrap();
        let (sync, mode) = store
            .with_index_connection(|conn| {
                let sync: i64 = conn
                    .query_row("PRAGMA synchronous", [], |r| r.get(0))
                    .unwrap();
                let mode: String = conn
                    .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                    .unwrap();
                (sync, mode)
            })
            .await;
        assert_eq!(sync, expected, "{query}");
        assert_eq!(mode, "wal");
    }
}

#[tokio::test]
async fn read_only_open_after_the_writer_died_indexes_the_journal() {
    let (dir, url) = temp_url();
    let store = store_with(&url, 2).await;
    let release = stall_indexer(&store).await;
    for i in 0..5 {
        store
            .append(statement("s2", "allow", &format!("late {i}")))
            .await
            .unwrap();
    }
    let image = crash_image(&dir);
    drop(release);
    assert_eq!(
        count_in_sqlite(&image),
        2,
        "the image must lack the journal-only records"
    );

    let reader = Store::open_read_only(&image).unwrap();
    let records = reader.records(None).unwrap();
    assert_eq!(
        records.iter().map(|r| r.id).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
    assert_eq!(records[6].detail["sql"], "late 4");
    assert_intact(&reader.verify().unwrap(), 7);
    let image_journal = crate::journal::path(std::path::Path::new(
        image.strip_prefix("sqlite://").unwrap(),
    ));
    assert_eq!(std::fs::metadata(&image_journal).unwrap().len(), 0);
    // Opening for reading released the writer lock: a gateway can start and continue the chain.
    let writer = Store::open(&image).unwrap();
    assert_eq!(writer.append(statement("s1", "allow", "next")).await, Ok(8));
    assert_intact(&writer.verify().unwrap(), 8);
}

#[tokio::test]
async fn read_only_open_beside_a_writer_in_another_process_waits_for_its_journal() {
    let (dir, url) = temp_url();
    let store = store_with(&url, 2).await;
    let release = stall_indexer(&store).await;
    for i in 0..5 {
        store
            .append(statement("s2", "allow", &format!("late {i}")))
            .await
            .unwrap();
    }
    let image = crash_image(&dir);
    drop(release);
    let path = std::path::PathBuf::from(image.strip_prefix("sqlite://").unwrap());
    // "Another process" is the image's writer: it holds the lock and indexes a moment later.
    let lock = crate::db::try_lock_writer(&path).unwrap().unwrap();
    let indexer = std::thread::spawn({
        let loc = crate::location::parse(&image).unwrap();
        move || {
            std::thread::sleep(Duration::from_millis(200));
            let mut conn = crate::db::open_recovery(&loc).unwrap();
            crate::journal::recover(&mut conn, &loc.path).unwrap();
            drop(lock);
        }
    });
    let started = Instant::now();
    let reader = Store::open_read_only(&image).unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "did not wait"
    );
    assert_intact(&reader.verify().unwrap(), 7);
    indexer.join().unwrap();
}

#[tokio::test]
async fn torn_journal_tail_is_cut_off_on_open_and_the_chain_continues() {
    let (dir, url) = temp_url();
    let store = store_with(&url, 2).await;
    let release = stall_indexer(&store).await;
    for i in 0..3 {
        store
            .append(statement("s1", "allow", &format!("late {i}")))
            .await
            .unwrap();
    }
    let image = crash_image(&dir);
    drop(release);
    // A batch whose write the crash cut short: half a frame after the last whole one.
    let path = std::path::PathBuf::from(image.strip_prefix("sqlite://").unwrap());
    let journal = crate::journal::path(&path);
    let mut bytes = std::fs::read(&journal).unwrap();
    let whole = bytes.len();
    let mut frame = Vec::new();
    let mut next = crate::journal::scan(&bytes).entries.pop().unwrap();
    next.id += 1;
    crate::journal::encode_frame(&mut frame, &[next]);
    bytes.extend_from_slice(&frame[..frame.len() / 2]);
    std::fs::write(&journal, &bytes).unwrap();
    assert!(bytes.len() > whole);

    let store = Store::open(&image).unwrap();
    assert_eq!(std::fs::metadata(&journal).unwrap().len(), 0);
    let id = store
        .append(statement("s1", "allow", "after the crash"))
        .await
        .unwrap();
    assert_eq!(
        id, 6,
        "records 3 to 5 came from the journal, the torn one did not"
    );
    let records = store.records(None).unwrap();
    assert_eq!(records[4].detail["sql"], "late 2");
    assert_intact(&store.verify().unwrap(), 6);

    // Garbage rather than a partial frame is cut off the same way.
    drop(store);
    std::fs::write(&journal, b"\0\0\0garbage").unwrap();
    let store = Store::open(&image).unwrap();
    assert_eq!(store.append(statement("s1", "allow", "x")).await, Ok(7));
    assert_intact(&store.verify().unwrap(), 7);
}

#[tokio::test]
async fn journal_is_emptied_only_once_indexed_and_the_chain_continues() {
    let (dir, url) = temp_url();
    let store = store_with(&url, 1).await;
    store.with_writer(|w| w.set_journal_limit(1)).await;
    let release = stall_indexer(&store).await;
    for i in 0..3 {
        store
            .append(statement("s1", "allow", &format!("{i}")))
            .await
            .unwrap();
    }
    // Record 1 was indexed, so the first batch over the limit emptied the journal of it; since
    // then SQLite lacks everything written, and the journal keeps it all.
    assert_eq!(
        ids_of(&crate::journal::scan(&journal_bytes(&dir)).entries),
        [2, 3, 4]
    );
    drop(release);
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.indexed() < 4 {
        assert!(Instant::now() < deadline, "indexing did not resume");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Indexed: the next batch empties the journal first, then the chain goes on.
    assert_eq!(store.append(statement("s1", "allow", "5")).await, Ok(5));
    assert_eq!(
        ids_of(&crate::journal::scan(&journal_bytes(&dir)).entries),
        [5]
    );
    assert_eq!(store.append(statement("s1", "allow", "6")).await, Ok(6));
    assert_intact(&store.verify().unwrap(), 6);
    drop(store);
    let store = Store::open(&url).unwrap();
    assert_eq!(store.append(statement("s1", "allow", "7")).await, Ok(7));
    let records = store.records(None).unwrap();
    assert_eq!(records[4].prev_hash, records[3].hash);
    assert_intact(&store.verify().unwrap(), 7);
}

#[tokio::test]
async fn journal_survives_a_writer_that_never_indexed() {
    // The writer's process dies with the indexer stalled: reopening as a writer indexes it all.
    let (dir, url) = temp_url();
    let store = store_with(&url, 1).await;
    let release = stall_indexer(&store).await;
    for i in 0..50 {
        store.append_detached(statement("s1", "allow", &format!("{i}")));
    }
    store.flush().await.unwrap();
    let image = crash_image(&dir);
    drop(release);
    assert_eq!(count_in_sqlite(&image), 1);
    let store = Store::open(&image).unwrap();
    assert_eq!(count_in_sqlite(&image), 51);
    assert_eq!(store.append(statement("s1", "allow", "next")).await, Ok(52));
    assert_intact(&store.verify().unwrap(), 52);
}

/// Set in the child process of [`kill_9_loses_no_acknowledged_record`] to the store URL.
const CRASH_CHILD: &str = "PORTCULLIS_RECORDS_CRASH_CHILD";

#[test]
fn kill_9_loses_no_acknowledged_record() {
    if let Ok(url) = std::env::var(CRASH_CHILD) {
        return crash_child(&url);
    }
    let (dir, url) = temp_url();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "store::tests::kill_9_loses_no_acknowledged_record",
            "--nocapture",
        ])
        .env(CRASH_CHILD, &url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = BTreeSet::new();
    while acked.len() < 300 {
        let line = lines.next().expect("child stopped early").unwrap();
        acked.extend(
            line.strip_prefix("acked ")
                .and_then(|id| id.parse::<i64>().ok()),
        );
    }
    child.kill().unwrap(); // SIGKILL: no destructors, no checkpoint, mid-transaction
    child.wait().unwrap();
    // Acks the child printed before it died count too.
    for line in lines {
        acked.extend(
            line.unwrap()
                .strip_prefix("acked ")
                .and_then(|id| id.parse::<i64>().ok()),
        );
    }

    // The commit point is the journal: every acknowledged id is in it (the child never wrote
    // enough to empty it), whether or not the indexer had put it in SQLite yet.
    let scan = crate::journal::scan(&journal_bytes(&dir));
    let journaled: BTreeSet<i64> = scan.entries.iter().map(|e| e.id).collect();
    let missing: Vec<_> = acked.difference(&journaled).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not journaled: {missing:?}"
    );
    let indexed_before = count_in_sqlite(&url);
    println!(
        "{} acknowledged, {} journaled, {indexed_before} in SQLite at the kill",
        acked.len(),
        journaled.len()
    );

    // The CLI after a crash: the read-only open indexes the journal tail first.
    let store = Store::open_read_only(&url).unwrap();
    let stored: BTreeSet<i64> = store.records(None).unwrap().iter().map(|r| r.id).collect();
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    assert!(stored.is_superset(&journaled));
    let report = store.verify().unwrap();
    assert_intact(&report, stored.len() as u64);

    // And the next gateway continues the chain.
    let last = *stored.last().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = Store::open(&url).unwrap();
    let id = rt.block_on(store.append(statement("s1", "allow", "after the crash")));
    assert_eq!(id, Ok(last + 1));
    assert_intact(&store.verify().unwrap(), last as u64 + 1);
}

/// Appends from several tasks until killed, printing each acknowledged id. Gives up after a
/// while so a parent that failed before killing it does not leave it running.
fn crash_child(url: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Store::open(url).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..4 {
            let store = store.clone();
            tasks.spawn(async move {
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let r = statement(&format!("s{t}"), "allow", &format!("SELECT {i}"));
                    let id = store.append(r).await.unwrap();
                    println!("acked {id}");
                    i += 1;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    });
}

/// Informal numbers, not a gate: `cargo test -p portcullis-records --release -- --ignored
/// --nocapture append_throughput`.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn append_throughput() {
    for (query, clients) in [("", 1), ("", 8), ("", 64), ("?synchronous=full", 8)] {
        let (_dir, url) = temp_url();
        let store = Store::open(&format!("{url}{query}")).unwrap();
        let per_client = 20_000 / clients;
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..clients {
            let store = store.clone();
            tasks.spawn(async move {
                let mut latencies = Vec::with_capacity(per_client);
                for i in 0..per_client {
                    let r = statement(
                        &format!("s{c}"),
                        "allow",
                        &format!("SELECT * FROM t WHERE id = {i}"),
                    );
                    let t = Instant::now();
                    store.append(r).await.unwrap();
                    latencies.push(t.elapsed());
                }
                latencies
            });
        }
        let mut latencies = Vec::new();
        while let Some(l) = tasks.join_next().await {
            latencies.extend(l.unwrap());
        }
        let elapsed = started.elapsed();
        // How far SQLite was behind the journal when the last append returned.
        let lag = Instant::now();
        store.with_index_connection(|_| ()).await;
        let lag = lag.elapsed();
        latencies.sort();
        let pct = |p: usize| latencies[latencies.len() * p / 100];
        println!(
            "{:<20} clients={clients:<3} {:>8.0} appends/s  p50={:?} p99={:?}  batches={} for {} records, indexed {:?} later",
            if query.is_empty() { "synchronous=normal" } else { "synchronous=full" },
            latencies.len() as f64 / elapsed.as_secs_f64(),
            pct(50),
            pct(99),
            store.batches(),
            latencies.len(),
            lag,
        );
    }
}

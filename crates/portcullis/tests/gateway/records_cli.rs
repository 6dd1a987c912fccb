//! The record-reading commands: sessions list, replay, audit verify.

use crate::env::Env;

fn run_session(env: &Env) -> String {
    let token = env.token("ci-job-7", &["ci"]);
    let out = env.psql(
        &token,
        "select name from items where id = 3;\ndrop table items;\n",
    );
    assert!(out.stdout.contains("item 3"), "{}", out.stderr);
    let list = env.cli(&["sessions", "list", "--json"]);
    assert!(list.success(), "{}", list.stderr);
    let sessions: Vec<serde_json::Value> = serde_json::from_str(&list.stdout).expect("json");
    let s = sessions
        .iter()
        .find(|s| s["principal"] == "ci-job-7")
        .unwrap_or_else(|| panic!("session missing: {sessions:#?}"));
    s["session_id"].as_str().unwrap().to_string()
}

#[test]
fn sessions_list_and_replay_show_the_session_in_order() {
    let env = Env::start();
    let id = run_session(&env);
    let table = env.cli(&["sessions", "list", "--principal", "ci-job-7"]);
    assert!(table.stdout.contains(&id), "{}", table.stdout);
    let none = env.cli(&["sessions", "list", "--principal", "someone-else", "--json"]);
    assert_eq!(none.stdout.trim(), "[]");

    env.wait_for_record(|r| r["kind"] == "session_end");
    let replay = env.cli(&["replay", &id]);
    assert!(replay.success(), "{}", replay.stderr);
    let text = replay.stdout;
    let select = text
        .find("select name from items")
        .expect("select replayed");
    let drop = text.find("drop table items").expect("drop replayed");
    assert!(select < drop, "{text}");
    assert!(text.contains("ALLOW"), "{text}");
    assert!(text.contains("DENY"), "{text}");
    assert!(text.contains("1 rows"), "{text}");
    // What the client saw, under its statement.
    assert!(text.contains("\n      name\n      item 3\n"), "{text}");
    assert!(text.contains("session end"), "{text}");
}

#[test]
fn audit_verify_names_an_edited_record() {
    let env = Env::start();
    run_session(&env);
    env.wait_for_record(|r| r["kind"] == "session_end");
    let ok = env.cli(&["audit", "verify"]);
    assert!(ok.success(), "{}{}", ok.stdout, ok.stderr);

    let db = env.dir().join("portcullis.db");
    let records = env.records();
    let target = records
        .iter()
        .find(|r| r["kind"] == "statement" && r["decision"] == "deny")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    sqlite(
        &db,
        &format!("update records set detail = replace(detail, 'drop', 'DROP') where id = {target}"),
    );
    let broken = env.cli(&["audit", "verify"]);
    assert!(!broken.success());
    assert!(
        broken.stdout.contains(&format!("record {target}")),
        "{}",
        broken.stdout
    );
}

#[test]
fn audit_verify_detects_a_deleted_record() {
    let env = Env::start();
    run_session(&env);
    env.wait_for_record(|r| r["kind"] == "session_end");
    let db = env.dir().join("portcullis.db");
    let records = env.records();
    let victim = records[1]["id"].as_i64().unwrap();
    sqlite(&db, &format!("delete from records where id = {victim}"));
    let broken = env.cli(&["audit", "verify"]);
    assert!(!broken.success());
    assert!(broken.stdout.contains("BROKEN"), "{}", broken.stdout);
}

/// Edits the store behind the gateway's back, as an attacker with file access would.
fn sqlite(db: &std::path::Path, sql: &str) {
    let script =
        "import sqlite3,sys\nc=sqlite3.connect(sys.argv[1])\nc.execute(sys.argv[2])\nc.commit()\n";
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-c", script]).arg(db).arg(sql);
    let out = test_support::run(&mut cmd, crate::env::TIMEOUT);
    assert!(out.success(), "{}", out.stderr);
}

/// Deletes record `victim` (0: none) after running `edit` (SQL), renumbers the rest and
/// recomputes every hash as `crates/records/src/chain.rs` does: a rewrite the chain alone
/// cannot reveal.
fn rewrite_and_rehash(db: &std::path::Path, victim: i64, edit: &str) {
    let script = r#"
import hashlib, sqlite3, struct, sys
c = sqlite3.connect(sys.argv[1])
if sys.argv[3]:
    c.execute(sys.argv[3])
cols = "time, kind, session_id, principal, connection, decision, policy, rule, detail"
rows = c.execute(f"select {cols} from records where id <> ? order by id", (int(sys.argv[2]),)).fetchall()
c.execute("delete from records")
prev = "0" * 64
for i, row in enumerate(rows, 1):
    h = hashlib.sha256(b"portcullis-records/v1\n" + struct.pack(">q", i))
    for f in list(row) + [prev]:
        if f is None:
            h.update(b"\0")
        else:
            b = f.encode()
            h.update(b"\1" + struct.pack(">Q", len(b)) + b)
    c.execute(f"insert into records (id, {cols}, prev_hash, hash) values ({','.join('?' * 12)})",
              (i, *row, prev, h.hexdigest()))
    prev = h.hexdigest()
c.commit()
"#;
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-c", script])
        .arg(db)
        .arg(victim.to_string())
        .arg(edit);
    let out = test_support::run(&mut cmd, crate::env::TIMEOUT);
    assert!(out.success(), "{}", out.stderr);
}

/// The id of the first signed checkpoint at or after record `id`.
fn first_checkpoint_from(env: &Env, id: i64) -> i64 {
    let log = std::fs::read_to_string(env.dir().join("data/audit-checkpoints.jsonl")).unwrap();
    log.lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .filter(|&signed| signed >= id)
        .min()
        .expect("a checkpoint after the record")
}

/// Stops the gateway as an operator would (SIGTERM): records flushed, last checkpoint signed.
fn stop_gateway(env: &mut Env) {
    let gateway = env.gateway();
    gateway.terminate();
    let status = gateway.wait_timeout(crate::env::TIMEOUT);
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

#[test]
fn audit_verify_names_a_record_deleted_and_rehashed_and_the_gateway_refuses_to_start() {
    let mut env = Env::start();
    run_session(&env);
    env.wait_for_record(|r| r["kind"] == "session_end");
    stop_gateway(&mut env);
    let ok = env.cli(&["audit", "verify"]);
    assert!(ok.success(), "{}{}", ok.stdout, ok.stderr);
    assert!(
        ok.stdout.contains("signed checkpoints (key ed25519:"),
        "{}",
        ok.stdout
    );
    let last = env.records().len() as i64;

    let db = env.dir().join("portcullis.db");
    // Hide the refused DROP: delete its record and rehash the chain after it.
    let records = env.records();
    let victim = records
        .iter()
        .find(|r| r["kind"] == "statement" && r["decision"] == "deny")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    // The first checkpoint signed at or after the victim is the first to disagree (the
    // gateway signs about once a second, so there may be one before the final one).
    let signed = first_checkpoint_from(&env, victim);
    rewrite_and_rehash(&db, victim, "");
    let broken = env.cli(&["audit", "verify"]);
    assert!(!broken.success(), "{}", broken.stdout);
    let expected = match signed == last {
        true => format!("audit chain BROKEN at record {last}: record {last} is missing"),
        false => format!(
            "audit chain BROKEN at record {signed}: record {signed} is not the record signed at"
        ),
    };
    assert!(broken.stdout.contains(&expected), "{}", broken.stdout);

    // Editing a record in place and rehashing keeps the count but not the signed hash.
    rewrite_and_rehash(&db, 0, "insert into records (id, time, kind, detail, prev_hash, hash) values (1000, '', 'error', 'null', '', '')");
    let broken = env.cli(&["audit", "verify"]);
    assert!(!broken.success(), "{}", broken.stdout);
    assert!(
        broken
            .stdout
            .contains(&format!("record {signed} is not the record signed at")),
        "{}",
        broken.stdout
    );

    let mut serve = std::process::Command::new(crate::env::BIN);
    serve
        .args(["serve", "--config"])
        .arg(env.dir().join("portcullis.yaml"));
    let refused = test_support::run(&mut serve, crate::env::TIMEOUT);
    assert!(!refused.success());
    assert!(
        refused.stderr.contains("refusing to start: grants and approvals would be rebuilt from audit records that do not verify"),
        "{}",
        refused.stderr
    );
    assert!(
        refused
            .stderr
            .contains(&format!("does not verify at record {signed}")),
        "{}",
        refused.stderr
    );
}

#[test]
fn grants_are_not_rebuilt_from_a_rewritten_chain() {
    let mut env = crate::jit_grants::jit_env(crate::jit_grants::JIT_POLICIES);
    let ci = env.token("ci", &["ci"]);
    let asked = crate::jit_grants::ask(&env, &ci, "30m", "incident");
    assert!(asked.success(), "{}", asked.stderr);
    let grant = env.wait_for_record(|r| r["kind"] == "grant");
    let id = grant["id"].as_i64().unwrap();
    stop_gateway(&mut env);
    // Someone with write access to the store approves the pending grant themselves.
    let forge = format!(
        "update records set decision = 'approved', \
         detail = replace(detail, '\"status\":\"pending\"', '\"status\":\"active\"') where id = {id}"
    );
    rewrite_and_rehash(&env.dir().join("portcullis.db"), 0, &forge);
    let mut serve = std::process::Command::new(crate::env::BIN);
    serve
        .args(["serve", "--config"])
        .arg(env.dir().join("portcullis.yaml"));
    let refused = test_support::run(&mut serve, crate::env::TIMEOUT);
    assert!(!refused.success());
    let signed = first_checkpoint_from(&env, id);
    assert!(
        refused.stderr.contains(&format!(
            "the audit chain does not verify at record {signed}"
        )),
        "{}",
        refused.stderr
    );
}

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

//! Session state as the upstream holds it: a prepared statement's name
//! means what the server confirmed, so a record always names the statement
//! the server executed (see `crates/postgres/src/proxy/relay/names.rs`).

use std::process::Command;
use std::thread;

use test_support::run;

use crate::env::{Env, Options, TIMEOUT};
use crate::jit_support::wait_for_pending;

/// `ops` may read and write; any DELETE waits for an approver.
const HELD_DELETES: &str = r#"
  - name: ops-break-glass
    match: { groups: [ops] }
    connection: app-db
    allow: [read, write]
    require_approval: ["DELETE *"]
  - name: ci-reads
    match: { groups: [ci] }
    connection: app-db
    allow: [read]
"#;

fn held_deletes_env() -> Env {
    Env::with(Options {
        policies: HELD_DELETES.to_string(),
        ..Options::default()
    })
}

/// Runs a Python script on its own thread with `DSN` (the gateway, TLS)
/// and the token as `PGPASSWORD`.
fn python_in_background(
    env: &Env,
    token: &str,
    script: &'static str,
) -> thread::JoinHandle<test_support::Output> {
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script])
        .env("PGPASSWORD", token)
        .env("DSN", env.conninfo("require"));
    thread::spawn(move || run(&mut cmd, TIMEOUT))
}

fn statement_records(env: &Env) -> Vec<serde_json::Value> {
    env.records()
        .into_iter()
        .filter(|r| r["kind"] == "statement")
        .collect()
}

fn item_exists(env: &Env, id: u32) -> bool {
    env.pg
        .sql(
            "app",
            &format!("select count(*) from items where id = {id}"),
        )
        .trim()
        == "1"
}

/// Denies the pending approval of `statement` as an approver.
fn deny_pending(env: &Env, statement: &str) {
    settle_pending(env, statement, "deny");
}

/// `verdict` (`approve` or `deny`) on the pending approval of `statement`.
fn settle_pending(env: &Env, statement: &str, verdict: &str) {
    let alice = env.token("alice", &["sre"]);
    let pending = wait_for_pending(|| env.cli_json(&alice, &["approvals", "list"]), statement);
    let id = pending["id"].as_str().expect("approval id").to_string();
    env.cli_json(&alice, &["approvals", verdict, &id]);
}

const REPARSE: &str = r#"
import os
from psycopg import pq
pg = pq.PGconn.connect(os.environ["DSN"].encode())
assert pg.status == pq.ConnStatus.OK, pg.error_message
state = lambda r: (r.error_field(pq.DiagnosticField.SQLSTATE) or b'').decode() or pq.ExecStatus(r.status).name

# One message at a time: the second Parse of "s" fails upstream (42P05).
print("P1", state(pg.prepare(b"s", b"delete from items where id = $1")))
print("P2", state(pg.prepare(b"s", b"select $1::int")))
print("EXEC", state(pg.exec_prepared(b"s", [b"1"])), flush=True)

# The same in one pipeline: the Execute is decided before the upstream
# has answered the second Parse.
pg.enter_pipeline_mode()
pg.send_prepare(b"t", b"delete from items where id = $1")
pg.pipeline_sync()
pg.send_prepare(b"t", b"select $1::int")
pg.pipeline_sync()
pg.send_query_prepared(b"t", [b"2"])
pg.pipeline_sync()
seen, syncs = [], 0
while syncs < 3:
    r = pg.get_result()
    if r is None:
        continue
    if r.status == pq.ExecStatus.PIPELINE_SYNC:
        syncs += 1
    else:
        seen.append(state(r))
print("PIPELINE", " ".join(seen))
"#;

/// Seen in issue 11: a second Parse of a name the server refuses (42P05)
/// made the gateway believe the name meant the new text, so the held
/// DELETE ran as an allowed "SELECT" and no record named it.
#[test]
fn a_refused_reparse_leaves_the_name_meaning_the_first_statement() {
    let env = held_deletes_env();
    let ops = env.token("oncall", &["ops"]);
    let script = python_in_background(&env, &ops, REPARSE);
    deny_pending(&env, "delete from items");
    // The pipelined Execute is held as the DELETE too (a second approval).
    deny_pending(&env, "delete from items");
    let out = script.join().expect("python thread");
    assert!(out.success(), "{}\n{}", out.stderr, env.gateway_log());
    assert!(out.stdout.contains("P1 COMMAND_OK"), "{}", out.stdout);
    assert!(out.stdout.contains("P2 42P05"), "{}", out.stdout);
    assert!(out.stdout.contains("EXEC 42501"), "{}", out.stdout);
    assert!(
        out.stdout.contains("PIPELINE COMMAND_OK 42P05 42501"),
        "{}",
        out.stdout
    );
    assert!(
        item_exists(&env, 1) && item_exists(&env, 2),
        "no DELETE ran"
    );
    let records = statement_records(&env);
    let count = |text: &str, decision: Option<&str>| {
        records
            .iter()
            .filter(|r| r["detail"]["text"] == text)
            .filter(|r| decision.is_none_or(|d| r["decision"] == d))
            .count()
    };
    assert_eq!(
        count("delete from items where id = $1", Some("deny")),
        2,
        "{records:#?}"
    );
    assert_eq!(count("select $1::int", None), 0, "{records:#?}");
}

const SQL_PREPARED: &str = r#"
import os
from psycopg import pq
pg = pq.PGconn.connect(os.environ["DSN"].encode())
state = lambda r: (r.error_field(pq.DiagnosticField.SQLSTATE) or b'').decode() or pq.ExecStatus(r.status).name
print("PREPARE", state(pg.exec_(b"PREPARE d(int) AS delete from items where id = $1")))
# A protocol Bind to the name SQL PREPARE made runs the DELETE.
print("BIND", state(pg.exec_prepared(b"d", [b"3"])), flush=True)
print("EXECUTE", state(pg.exec_(b"EXECUTE d(4)")), flush=True)
print("UNKNOWN", state(pg.exec_prepared(b"nosuch", [])))
print("UNKNOWN_SQL", state(pg.exec_(b"EXECUTE nosuch")))
"#;

/// A name made by SQL PREPARE reached by a protocol Bind, or by SQL
/// EXECUTE, is decided as the statement it runs: here a held DELETE.
/// Before, the Bind went through unseen and its Execute passed as a
/// cursor fetch, and SQL EXECUTE was a "write" whatever it ran.
#[test]
fn statements_prepared_in_sql_are_decided_as_their_body() {
    let env = held_deletes_env();
    let ops = env.token("oncall", &["ops"]);
    let script = python_in_background(&env, &ops, SQL_PREPARED);
    // PREPARE is decided on its body too, so it waits for an approver; an
    // approved PREPARE still leaves every run of it to be decided.
    settle_pending(&env, "PREPARE d(int)", "approve");
    deny_pending(&env, "delete from items");
    deny_pending(&env, "EXECUTE d(4)");
    let out = script.join().expect("python thread");
    assert!(out.success(), "{}\n{}", out.stderr, env.gateway_log());
    for line in [
        "PREPARE COMMAND_OK",
        "BIND 42501",
        "EXECUTE 42501",
        "UNKNOWN 26000",
        "UNKNOWN_SQL 42501",
    ] {
        assert!(out.stdout.contains(line), "{line}: {}", out.stdout);
    }
    assert!(
        item_exists(&env, 3) && item_exists(&env, 4),
        "no DELETE ran"
    );
    let records = statement_records(&env);
    let execute = records
        .iter()
        .find(|r| r["detail"]["text"] == "EXECUTE d(4)")
        .expect("EXECUTE record");
    assert_eq!(
        execute["detail"]["executes"][0]["text"], "delete from items where id = $1",
        "{execute:#}"
    );
    assert_eq!(execute["detail"]["classes"][0], "write", "{execute:#}");
}

/// A read-only principal may EXECUTE what it may run: a prepared SELECT.
#[test]
fn execute_of_a_prepared_select_is_a_read() {
    let env = held_deletes_env();
    let ci = env.token("ci", &["ci"]);
    let out = env.psql(
        &ci,
        "PREPARE q(int) AS select name from items where id = $1; EXECUTE q(1); DEALLOCATE q; EXECUTE q(1);",
    );
    assert!(
        out.stdout.contains("item 1"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr.contains("has not seen prepared"),
        "after DEALLOCATE the name is unknown: {}",
        out.stderr
    );
}

/// Seen in issue 11: with `client_encoding=SJIS` in the startup packet the
/// server read `E'\xc3\x95\\'` as ending early and ran a second statement
/// the gateway saw inside a string. Such sessions are refused at startup.
#[test]
fn a_non_utf8_client_encoding_is_refused_at_startup() {
    let env = held_deletes_env();
    let ci = env.token("ci", &["ci"]);
    let mut cmd = Command::new("psql");
    cmd.arg(format!("{} client_encoding=SJIS", env.conninfo("require")))
        .args(["-X", "-At", "-c", "select 1"])
        .env("PGPASSWORD", &ci);
    let out = run(&mut cmd, TIMEOUT);
    assert!(!out.success(), "{}", out.stdout);
    assert!(
        out.stderr
            .contains("client_encoding \"SJIS\" is not supported"),
        "{}",
        out.stderr
    );
}

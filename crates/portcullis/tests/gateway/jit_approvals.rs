//! Statements held for approval, end to end: psql waits on a held UPDATE
//! while an approver decides with `portcullis approvals`; webhooks announce
//! it to a real HTTP receiver.

use std::process::Command;
use std::thread;

use test_support::free_port;

use crate::env::{Env, Options, TIMEOUT};
use crate::jit_http::Receiver;
use crate::jit_support::{psql_in_background, spawn_psql, wait_for_pending};

/// `ci` reads freely; writes wait for an approver.
const HELD_WRITES: &str = r#"
  - name: ci-writes-approved
    match: { groups: [ci] }
    connection: app-db
    allow: [read]
    require_approval: [write]
"#;

const UPDATE: &str = "update items set name = name || '!' where id = 1;";

fn env_with(opts: Options) -> Env {
    Env::with(Options {
        policies: HELD_WRITES.to_string(),
        ..opts
    })
}

/// Waits for the pending approval of `statement` to appear for approvers.
fn pending_approval(env: &Env, approver: &str, statement: &str) -> serde_json::Value {
    wait_for_pending(|| env.cli_json(approver, &["approvals", "list"]), statement)
}

/// The id of the pending approval of the UPDATE.
fn pending_id(env: &Env, approver: &str) -> String {
    pending_approval(env, approver, "update items")["id"]
        .as_str()
        .expect("approval id")
        .to_string()
}

fn name_of_item_1(env: &Env) -> String {
    env.pg
        .sql("app", "select name from items where id = 1")
        .trim()
        .to_string()
}

fn micros(time: &serde_json::Value) -> i128 {
    let t = time::OffsetDateTime::parse(
        time.as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    t.unix_timestamp_nanos() / 1000
}

#[test]
fn held_update_runs_once_after_approval_and_webhooks_announce_it() {
    let receiver = Receiver::start(1);
    let slack = Receiver::start(0);
    let dead = free_port();
    let env = env_with(Options {
        admin_extra: format!(
            "  webhooks:\n    - url: {}\n    - url: {}\n      format: slack\n    - url: http://127.0.0.1:{dead}/hook\n      retries: 1\n",
            receiver.url("/hook"),
            slack.url("/services/secret")
        ),
        ..Options::default()
    });
    let ci = env.token("ci", &["ci"]);
    let alice = env.token("alice", &["sre"]);

    let held = psql_in_background(
        &env,
        &ci,
        &format!("{UPDATE}\nselect name from items where id = 1;"),
    );
    let approval = pending_approval(&env, &alice, "update items");
    let id = approval["id"].as_str().unwrap().to_string();
    assert_eq!(approval["principal"], "ci");
    assert_eq!(approval["connection"], "app-db");
    assert_eq!(approval["statement"], UPDATE);
    assert!(approval["reason"]
        .as_str()
        .unwrap()
        .contains("require_approval"));
    // Nothing ran while it waits, and other sessions go on meanwhile.
    assert_eq!(name_of_item_1(&env), "item 1");
    let other = env.psql(&ci, "select count(*) from items;");
    assert_eq!(other.stdout.trim(), "10", "{}", other.stderr);
    // The requester cannot approve their own statement, even as an approver.
    let ci_approver = env.token("ci", &["ci", "sre"]);
    let own = env.cli_as(&ci_approver, &["approvals", "approve", &id]);
    assert!(own.stderr.contains("403"), "{}", own.stderr);

    let asked = std::time::Instant::now();
    let approved = env.cli_json(&alice, &["approvals", "approve", &id]);
    assert_eq!(approved["status"], "approved");
    let out = held.join().unwrap();
    // Upper bound, for the record: includes starting the CLI process.
    println!(
        "approve command started -> psql done: {:?}",
        asked.elapsed()
    );
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "UPDATE 1\nitem 1!");
    assert!(
        out.stderr.contains(&format!(
            "awaiting approval {id}, see {}/v1/approvals/{id}",
            env.admin_url()
        )),
        "{}",
        out.stderr
    );
    assert_eq!(name_of_item_1(&env), "item 1!", "ran exactly once");
    let twice = env.cli_as(&alice, &["approvals", "approve", &id]);
    assert!(twice.stderr.contains("409"), "{}", twice.stderr);

    let decided = env.wait_for_record(|r| {
        r["kind"] == "approval" && r["decision"] == "approved" && r["detail"]["id"] == id.as_str()
    });
    let ran =
        env.wait_for_record(|r| r["kind"] == "statement" && r["detail"]["approval"] == id.as_str());
    assert_eq!(ran["decision"], "allow");
    assert_eq!(decided["detail"]["by"], "alice");
    println!(
        "approval -> statement forwarded: {} us (record times)",
        micros(&ran["time"]) - micros(&decided["time"])
    );

    // The JSON receiver answered 500 first, so the event came twice.
    let hook = receiver.wait_for(2, |b| {
        b["event"] == "approval_requested" && b["id"] == id.as_str()
    });
    assert_eq!(hook["approval"]["statement"], UPDATE);
    assert_eq!(
        hook["approve"]["url"],
        format!("{}/v1/approvals/{id}/approve", env.admin_url())
    );
    let text = slack.wait_for(1, |b| b["text"].as_str().is_some_and(|t| t.contains(&id)));
    assert!(text["text"]
        .as_str()
        .unwrap()
        .contains("portcullis approvals approve"));
    // The dead receiver's failure is recorded, without its URL path.
    let failed =
        env.wait_for_record(|r| r["kind"] == "notification" && r["detail"]["id"] == id.as_str());
    assert_eq!(
        failed["detail"]["webhook"],
        format!("http://127.0.0.1:{dead}/…")
    );
    assert_eq!(failed["detail"]["attempts"], 2);
}

#[test]
fn held_update_is_refused_after_denial_and_the_session_stays_usable() {
    let env = env_with(Options::default());
    let ci = env.token("ci", &["ci"]);
    let alice = env.token("alice", &["sre"]);
    let held = psql_in_background(&env, &ci, &format!("{UPDATE}\nselect 'still here';"));
    let id = pending_id(&env, &alice);
    let denied = env.cli_as(
        &alice,
        &[
            "approvals",
            "deny",
            &id,
            "--reason",
            "not during the freeze",
        ],
    );
    assert!(denied.success(), "{}", denied.stderr);
    let out = held.join().unwrap();
    assert!(
        out.stderr.contains(&format!(
            "approval {id} was denied by alice: not during the freeze"
        )),
        "{}",
        out.stderr
    );
    assert_eq!(out.stdout.trim(), "still here");
    assert_eq!(name_of_item_1(&env), "item 1");
    let refused =
        env.wait_for_record(|r| r["kind"] == "statement" && r["detail"]["approval"] == id.as_str());
    assert_eq!(refused["decision"], "deny");
}

#[test]
fn held_update_is_refused_after_the_approval_timeout() {
    let env = env_with(Options {
        approval_timeout: "2s",
        ..Options::default()
    });
    let ci = env.token("ci", &["ci"]);
    let out = env.psql(&ci, &format!("{UPDATE}\nselect 'still here';"));
    assert!(out.stderr.contains("timed out"), "{}", out.stderr);
    assert!(out.stderr.contains("approval a-"), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "still here");
    assert_eq!(name_of_item_1(&env), "item 1");
    env.wait_for_record(|r| r["kind"] == "approval" && r["decision"] == "timed_out");
}

#[test]
fn held_statement_in_the_extended_protocol_keeps_message_order() {
    let env = env_with(Options::default());
    let ci = env.token("ci", &["ci"]);
    let alice = env.token("alice", &["sre"]);
    let script = r#"
import os, psycopg
with psycopg.connect(os.environ["DSN"], autocommit=True) as conn:
    conn.add_notice_handler(lambda d: print("NOTICE", d.message_primary, flush=True))
    cur = conn.execute("update items set name = name || %s where id = %s returning name", ["?", 2])
    print(cur.fetchone()[0])
    print(conn.execute("select count(*) from items where id = %s", [2]).fetchone()[0])
    try:
        conn.execute("update items set name = %s where id = %s", ["gone", 3])
        print("ran")
    except psycopg.errors.InsufficientPrivilege as e:
        print("refused", e.sqlstate)
    print(conn.execute("select name from items where id = %s", [3]).fetchone()[0])
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script])
        .env("PGPASSWORD", &ci)
        .env("DSN", env.conninfo("require"));
    let running = thread::spawn(move || test_support::run(&mut cmd, TIMEOUT));
    let id = pending_id(&env, &alice);
    env.cli_json(&alice, &["approvals", "approve", &id]);
    // The second UPDATE is held in turn, and denied.
    let second = loop {
        let next = pending_id(&env, &alice);
        if next != id {
            break next;
        }
    };
    env.cli_json(&alice, &["approvals", "deny", &second]);
    let out = running.join().unwrap();
    assert!(out.success(), "{}{}", out.stdout, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    let notice = |id: &str| {
        format!(
            "NOTICE awaiting approval {id}, see {}/v1/approvals/{id}",
            env.admin_url()
        )
    };
    assert_eq!(
        lines,
        [
            notice(&id).as_str(),
            "item 2?",
            "1",
            notice(&second).as_str(),
            "refused 42501",
            "item 3"
        ]
    );
}

fn approval_events(env: &Env, id: &str) -> Vec<String> {
    env.records()
        .into_iter()
        .filter(|r| r["kind"] == "approval" && r["detail"]["id"] == id)
        .map(|r| r["decision"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn held_statement_is_abandoned_when_the_client_disconnects() {
    let env = env_with(Options::default());
    let ci = env.token("ci", &["ci"]);
    let alice = env.token("alice", &["sre"]);
    let mut child = spawn_psql(&env, &ci, UPDATE);
    let id = pending_id(&env, &alice);
    child.kill().expect("kill psql");
    let _ = child.wait();
    env.wait_for_record(|r| {
        r["kind"] == "approval" && r["decision"] == "abandoned" && r["detail"]["id"] == id.as_str()
    });
    let late = env.cli_as(&alice, &["approvals", "approve", &id]);
    assert!(late.stderr.contains("409"), "{}", late.stderr);
    assert_eq!(name_of_item_1(&env), "item 1");
    assert_eq!(approval_events(&env, &id), ["requested", "abandoned"]);
}

#[test]
fn ctrl_c_in_psql_gives_up_a_held_statement() {
    let env = env_with(Options::default());
    let ci = env.token("ci", &["ci"]);
    let alice = env.token("alice", &["sre"]);
    let child = spawn_psql(&env, &ci, UPDATE);
    let id = pending_id(&env, &alice);
    let pid = child.id().to_string();
    let kill = test_support::run(Command::new("kill").args(["-INT", &pid]), TIMEOUT);
    assert!(kill.success(), "{}", kill.stderr);
    let out = child.wait_with_output().expect("psql output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "canceling statement due to user request (approval {id} abandoned)"
        )),
        "{stderr}"
    );
    env.wait_for_record(|r| {
        r["kind"] == "approval" && r["decision"] == "abandoned" && r["detail"]["id"] == id.as_str()
    });
    assert_eq!(name_of_item_1(&env), "item 1");
}

#[test]
fn gateway_shutdown_ends_a_held_session_and_a_restart_closes_the_approval() {
    let mut env = env_with(Options::default());
    let ci = env.token("ci", &["ci"]);
    let alice = env.token("alice", &["sre"]);
    let child = spawn_psql(&env, &ci, UPDATE);
    let id = pending_id(&env, &alice);
    env.gateway().terminate();
    let out = child.wait_with_output().expect("psql output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the gateway is shutting down"), "{stderr}");
    env.restart_gateway_with(|_| {});
    let a = env.cli_json(&alice, &["approvals", "list"]);
    let status = a
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == id.as_str())
        .map(|x| x["status"].clone());
    assert_eq!(status, Some("abandoned".into()));
    assert_eq!(name_of_item_1(&env), "item 1");
}

#[test]
fn an_approval_for_ten_minutes_lets_the_exact_statement_rerun() {
    // Long enough for an approver to act, short enough for the last step.
    let env = env_with(Options {
        approval_timeout: "4s",
        ..Options::default()
    });
    let ci = env.token("ci", &["ci"]);
    let alice = env.token("alice", &["sre"]);
    let held = psql_in_background(&env, &ci, UPDATE);
    let id = pending_id(&env, &alice);
    let approved = env.cli_json(&alice, &["approvals", "approve", &id, "--for", "10m"]);
    assert!(approved["covers_until"].is_string(), "{approved}");
    assert!(held.join().unwrap().success());
    let rerun = env.psql(&ci, UPDATE);
    assert!(rerun.success(), "{}", rerun.stderr);
    assert!(
        !rerun.stderr.contains("awaiting approval"),
        "{}",
        rerun.stderr
    );
    assert_eq!(name_of_item_1(&env), "item 1!!");
    let covered = env.wait_for_record(|r| {
        r["kind"] == "approval" && r["detail"]["approval"]["covered_by"] == id.as_str()
    });
    assert_eq!(covered["decision"], "approved");
    // A different statement is still held (and times out here).
    let other = env.psql(&ci, "update items set name = 'x' where id = 2;");
    assert!(
        other.stderr.contains("awaiting approval"),
        "{}",
        other.stderr
    );
    assert!(other.stderr.contains("timed out"), "{}", other.stderr);
}

//! Audit integrity against the server's own log: with pgaudit logging every
//! statement PostgreSQL executes, a mixed workload through the gateway (psql
//! with multi-statement strings and SQL PREPARE/EXECUTE, psycopg's extended
//! protocol, prepared statements and a pipeline, `pgbench -M prepared`) must
//! leave one gateway record per statement the server executed, with the same
//! text, session by session and in order: a record always names the
//! statement the server executed.
//!
//! How the two logs line up. pgaudit writes one `AUDIT: SESSION,<statement
//! id>,<substatement id>,...` entry per statement with the whole query
//! string it came in: a simple query of three statements gives three entries
//! with the same text, which the gateway records once with three `commands`.
//! A SQL `EXECUTE` adds a substatement (the prepared body) under its own
//! statement id, so entries are counted by statement id. Extended-protocol
//! executions carry the prepared text with `$1` placeholders on both sides.
//! The gateway's own catalog lookups use their own connection
//! (`application_name` `portcullis-catalog`), and the test's setup runs as
//! the superuser: neither is a client's statement.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use test_support::{run, Output, SCRAM_USER, SUPERUSER};

use crate::env::{Env, Options, TIMEOUT};

const PGAUDIT: &[(&str, &str)] = &[
    ("shared_preload_libraries", "pgaudit"),
    ("pgaudit.log", "all"),
    ("pgaudit.log_parameter", "off"),
    ("logging_collector", "on"),
    ("log_destination", "jsonlog"),
];

/// The application name of the gateway's catalog connection.
const CATALOG_APP: &str = "portcullis-catalog";

#[test]
fn every_statement_the_server_executed_has_one_record_with_its_text() {
    let env = Env::with(Options {
        pg_settings: PGAUDIT,
        ..Options::default()
    });
    prepare_server(&env);
    let token = env.token("deployer", &[]);
    run_psql_workload(&env, &token);
    run_psycopg_workload(&env, &token);
    run_pgbench(&env, &token);
    let server = server_statements(&env);
    let records = env.records();
    let gateway = gateway_statements(&records);
    let denied = records
        .iter()
        .filter(|r| r["kind"] == "statement" && r["decision"] == "deny")
        .count();
    let (matched, statements) = match_sessions(gateway, server);
    eprintln!(
        "audit integrity: {statements} statements executed by the server in {matched} sessions, \
         each with one gateway record of the same text; {denied} denied statements reached neither"
    );
    assert!(denied >= 1, "the workload's DROP was denied");
    assert!(statements > 500, "pgbench ran: {statements} statements");
}

/// pgaudit's event triggers (DDL detail) and pgbench's tables, made by the
/// superuser so none of it counts as a client's statement.
fn prepare_server(env: &Env) {
    env.pg.sql("app", "create extension pgaudit;");
    let mut init = Command::new("pgbench");
    init.args(["-i", "-s", "1", "-q", "-h"])
        .arg(env.pg.socket_dir())
        .args(["-p", &env.pg.port.to_string(), "-U", SUPERUSER, "app"]);
    let out = run(&mut init, TIMEOUT);
    assert!(out.success(), "pgbench -i: {}", out.stderr);
    env.pg.sql(
        "app",
        &format!(
            "grant select, insert, update, delete on all tables in schema public to {SCRAM_USER};"
        ),
    );
}

/// psql `-c` sends its string as one simple query, several statements and all.
fn run_psql_workload(env: &Env, token: &str) {
    let strings = [
        "select count(*) from items; select 2, 'a,b'; update items set name = name where id = 1",
        "begin; insert into items values (100, 'x'); commit",
        "prepare p(int) as select name from items where id = $1; execute p(1); execute p(2); deallocate p",
        "select\n  id -- a comment, and \"quotes\"\nfrom items\nwhere name = 'it''s' or id = 3",
        "drop table items",
        "show server_version_num; set application_name = 'renamed'; select current_setting('application_name')",
    ];
    for sql in strings {
        let out = psql(env, token, sql);
        let denied = sql.starts_with("drop");
        assert_eq!(
            out.success(),
            !denied,
            "{sql}: {}\n{}",
            out.stderr,
            env.gateway_log()
        );
    }
}

fn psql(env: &Env, token: &str, sql: &str) -> Output {
    let mut cmd = Command::new("psql");
    cmd.arg(env.conninfo("require"))
        .args(["-X", "-At", "-c", sql])
        .env("PGPASSWORD", token)
        .env("PGCONNECT_TIMEOUT", "20");
    run(&mut cmd, TIMEOUT)
}

fn run_psycopg_workload(env: &Env, token: &str) {
    let out = crate::postgres_clients::python(
        env,
        token,
        r#"
import os, psycopg
with psycopg.connect(os.environ["DSN"]) as conn:
    for i in range(3):
        conn.execute("select name from items where id = %s", (i + 1,)).fetchone()
    for i in range(3):
        conn.execute("select id from items where id = %s", (i + 1,), prepare=True).fetchone()
    conn.execute("update items set name = %s where id = %s", ("renamed", 4))
    conn.commit()
    with conn.pipeline():
        conn.execute("insert into items values (%s, %s)", (200, "piped"))
        conn.execute("select count(*) from items where id > %s", (100,))
        conn.execute("delete from items where id = %s", (200,))
    conn.commit()
with psycopg.connect(os.environ["DSN"], autocommit=True) as conn:
    with conn.pipeline():
        for i in range(5):
            conn.execute("select %s::int + 1", (i,))
"#,
    );
    assert!(out.success(), "{}\n{}", out.stderr, env.gateway_log());
}

fn run_pgbench(env: &Env, token: &str) {
    let mut cmd = Command::new("pgbench");
    cmd.args(["-n", "-M", "prepared", "-c", "2", "-j", "1", "-T", "3"])
        .arg(env.conninfo("require"))
        .env("PGPASSWORD", token);
    let out = run(&mut cmd, TIMEOUT);
    assert!(
        out.success() && out.stdout.contains("number of failed transactions: 0"),
        "pgbench: {}\n{}",
        out.stdout,
        out.stderr
    );
}

/// One statement as a log names it: the text the server received.
type Sequence = Vec<String>;

/// What the server executed for clients of the gateway, per server session,
/// in order: one entry per pgaudit statement id.
fn server_statements(env: &Env) -> Vec<Sequence> {
    let log_dir = env.pg.data_dir().join("log");
    let marker = "select 'end of the audited workload'";
    env.pg.sql("app", &format!("{marker};"));
    let entries = wait_for_log(&log_dir, marker);
    let mut sessions: BTreeMap<String, (Option<String>, Sequence)> = BTreeMap::new();
    for entry in entries {
        if entry["user"] != SCRAM_USER || entry["application_name"] == CATALOG_APP {
            continue;
        }
        let Some(audit) = entry["message"]
            .as_str()
            .and_then(|m| m.strip_prefix("AUDIT: "))
        else {
            continue;
        };
        let fields = csv_fields(audit);
        let [_, statement_id, _, _, _, _, _, text, ..] = fields.as_slice() else {
            panic!("unexpected pgaudit entry: {audit}");
        };
        let session = entry["session_id"].as_str().unwrap_or_default().to_string();
        let (last_id, sequence) = sessions.entry(session).or_default();
        // Substatements (a SQL EXECUTE's body) share their statement's id.
        if last_id.as_deref() != Some(statement_id.as_str()) {
            *last_id = Some(statement_id.clone());
            sequence.push(text.clone());
        }
    }
    sessions.into_values().map(|(_, s)| s).collect()
}

/// Every jsonlog entry, once the collector has written `marker`'s.
fn wait_for_log(dir: &Path, marker: &str) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let entries = read_jsonlog(dir);
        let done = entries.iter().any(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("AUDIT: ") && m.contains(marker))
        });
        if done {
            return entries;
        }
        assert!(Instant::now() < deadline, "pgaudit never logged the marker");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read_jsonlog(dir: &Path) -> Vec<serde_json::Value> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "json"));
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            text.lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect::<Vec<serde_json::Value>>()
        })
        .collect()
}

/// pgaudit's CSV: fields with commas, quotes or line breaks are quoted, and
/// quotes inside doubled.
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        let field = fields.last_mut().expect("one field at least");
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(String::new()),
            _ => field.push(c),
        }
    }
    fields
}

/// What the gateway forwarded, per gateway session, in order: each allowed
/// statement record's text once per statement it holds.
fn gateway_statements(records: &[serde_json::Value]) -> Vec<Sequence> {
    let mut sessions: BTreeMap<String, Sequence> = BTreeMap::new();
    for r in records {
        if r["kind"] != "statement" || r["decision"] != "allow" {
            continue;
        }
        let text = r["detail"]["text"].as_str().expect("statement text");
        let statements = r["detail"]["commands"].as_array().map_or(0, Vec::len);
        let session = r["session_id"].as_str().expect("session id").to_string();
        let sequence = sessions.entry(session).or_default();
        sequence.extend(std::iter::repeat_n(text.to_string(), statements));
    }
    sessions.into_values().filter(|s| !s.is_empty()).collect()
}

/// Pairs every gateway session with the server session that executed
/// exactly its statements; returns (sessions, statements) matched.
fn match_sessions(gateway: Vec<Sequence>, mut server: Vec<Sequence>) -> (usize, usize) {
    let mut unmatched = Vec::new();
    let (mut sessions, mut statements) = (0, 0);
    for sequence in gateway {
        match server.iter().position(|s| *s == sequence) {
            Some(i) => {
                server.remove(i);
                sessions += 1;
                statements += sequence.len();
            }
            None => unmatched.push(sequence),
        }
    }
    assert!(
        unmatched.is_empty() && server.is_empty(),
        "gateway sessions without a server session of the same statements:\n{unmatched:#?}\n\
         server sessions without a gateway session of the same statements:\n{server:#?}"
    );
    (sessions, statements)
}

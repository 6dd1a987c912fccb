//! The gateway's read classification against PostgreSQL's own view: every
//! statement a read-only principal is allowed must leave its transaction
//! without a transaction id (`pg_current_xact_id_if_assigned()` is NULL),
//! since PostgreSQL assigns one to anything that writes.
//!
//! Statements come from sqlsmith (random queries over the test database,
//! fixed seed) and from a committed corpus of writes in disguise
//! (`differential/corpus.sql`); the upstream user can write, so only the
//! gateway stands between the principal and a write. Every violation found
//! so far is a regression case in the corpus.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use test_support::run;

use crate::env::Env;

const SCHEMA: &str = include_str!("differential/schema.sql");
const CORPUS: &str = include_str!("differential/corpus.sql");
const RUNNER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/gateway/differential/run.py"
);

/// Enough random queries to cover sqlsmith's grammar with the test's
/// functions and keep the run around a minute.
const GENERATED: usize = 1500;
const SEED: &str = "20261205";

#[test]
fn nothing_a_reader_is_allowed_writes() {
    let env = Env::start();
    env.pg.sql("app", SCHEMA);
    let mut statements = corpus();
    let corpus_len = statements.len();
    statements.extend(sqlsmith(&env, GENERATED));
    let generated = statements.len() - corpus_len;
    assert!(
        generated >= GENERATED / 2,
        "sqlsmith generated only {generated} statements"
    );

    let list = env.dir().join("statements.json");
    std::fs::write(&list, serde_json::to_vec(&statements).unwrap()).unwrap();
    let token = env.token("ci-job", &["ci"]);
    let mut cmd = Command::new("python3");
    cmd.arg(RUNNER)
        .arg(&list)
        .env("PGPASSWORD", &token)
        .env("DSN", env.conninfo("require"));
    let out = run(&mut cmd, Duration::from_secs(300));
    assert!(out.success(), "{}\n{}", out.stderr, env.gateway_log());
    let report: Value = serde_json::from_str(out.stdout.trim()).expect("runner prints JSON");
    let counts = &report["counts"];
    println!("differential: corpus {corpus_len} + sqlsmith {generated}; counts {counts}");
    assert_eq!(
        counts["violations"], 0,
        "allowed statements that wrote:\n{:#}",
        report["violations"]
    );
    // The corpus's reads get through and its writes are refused: the test
    // is not passing by refusing everything.
    assert!(
        counts["allowed"].as_u64() > Some(corpus_len as u64),
        "{counts}"
    );
    assert!(
        counts["refused"].as_u64() >= Some(corpus_len as u64 / 2),
        "{counts}"
    );
}

/// The committed corpus: one statement per line, `--` lines are comments.
fn corpus() -> Vec<String> {
    CORPUS
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("--"))
        .map(str::to_owned)
        .collect()
}

/// `count` queries from sqlsmith over the test database, as the superuser
/// sees it (sqlsmith only reads the schema; `--dry-run` prints the queries).
fn sqlsmith(env: &Env, count: usize) -> Vec<String> {
    let target = format!(
        "host={} port={} dbname=app user=postgres",
        env.pg.socket_dir().display(),
        env.pg.port
    );
    let mut cmd = Command::new("sqlsmith");
    cmd.arg(format!("--target={target}"))
        .arg(format!("--seed={SEED}"))
        .arg(format!("--max-queries={count}"))
        .args(["--dry-run", "--exclude-catalog"]);
    let out = run(&mut cmd, Duration::from_secs(180));
    assert!(
        !out.stdout.is_empty(),
        "sqlsmith (scripts/install-deps installs it) printed nothing: {}",
        out.stderr
    );
    out.stdout
        .split(";\n")
        .map(str::trim)
        .filter(|q| !q.is_empty())
        .map(str::to_owned)
        .collect()
}

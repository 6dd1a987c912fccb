//! Stock clients behave through the gateway as on a direct connection:
//! pgbench in every query mode, psycopg (extended protocol, prepared,
//! binary), psql's \copy, cancel requests, notices and NOTIFY.

use std::process::Command;

use test_support::{run, run_with_input};

use crate::env::{Env, Options, TIMEOUT};

const PGBENCH_POLICY: &str = r#"
  - name: bench
    match: { principals: ["bench"] }
    connection: app-db
    allow: [read, write]
"#;

/// An environment whose upstream holds pgbench's tables; principal `bench`
/// may read and write. `opts` chooses everything but the policies.
pub(crate) fn pgbench_env(opts: Options) -> Env {
    let env = Env::with(Options {
        policies: PGBENCH_POLICY.into(),
        ..opts
    });
    let mut init = Command::new("pgbench");
    init.args(["-i", "-s", "1", "-q"])
        .arg(env.pg.conninfo(test_support::SCRAM_USER, "app"))
        .env("PGPASSWORD", test_support::SCRAM_PASSWORD);
    let out = run(&mut init, TIMEOUT);
    assert!(out.success(), "pgbench -i: {}", out.stderr);
    env
}

/// 4 clients x 50 transactions through the gateway, over TLS.
pub(crate) fn pgbench(env: &Env, token: &str, args: &[&str]) -> test_support::Output {
    let mut cmd = Command::new("pgbench");
    cmd.args(["-n", "-c", "4", "-j", "2", "-t", "50"])
        .args(args)
        .arg(env.conninfo("require"))
        .env("PGPASSWORD", token);
    run(&mut cmd, TIMEOUT)
}

/// [`pgbench`], which must complete every transaction without a failure.
pub(crate) fn pgbench_ok(env: &Env, token: &str, args: &[&str]) {
    let out = pgbench(env, token, args);
    assert!(
        out.success(),
        "pgbench {args:?}: {}\n{}",
        out.stderr,
        env.gateway_log()
    );
    assert!(
        out.stdout.contains("number of failed transactions: 0"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("200/200"), "{}", out.stdout);
}

#[test]
fn pgbench_runs_in_simple_extended_and_prepared_modes() {
    let env = pgbench_env(Options::default());
    let token = env.token("bench", &[]);
    for mode in ["simple", "extended", "prepared"] {
        for workload in [&["-S"][..], &[][..]] {
            let mut args = vec!["-M", mode];
            args.extend_from_slice(workload);
            pgbench_ok(&env, &token, &args);
        }
    }
    let statements = env
        .records()
        .into_iter()
        .filter(|r| r["kind"] == "statement" && r["principal"] == "bench")
        .count();
    // 6 runs x 200 transactions, at least one statement each.
    assert!(statements >= 1200, "{statements} statement records");
}

/// Runs a Python script with `DSN` (the gateway, TLS) and the token as `PGPASSWORD`.
pub(crate) fn python(env: &Env, token: &str, script: &str) -> test_support::Output {
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script])
        .env("PGPASSWORD", token)
        .env("DSN", env.conninfo("require"));
    run(&mut cmd, TIMEOUT)
}

#[test]
fn psycopg_prepared_statements_and_binary_results() {
    let env = Env::start();
    let token = env.token("deployer", &[]);
    let out = python(
        &env,
        &token,
        r#"
import os, psycopg
with psycopg.connect(os.environ["DSN"]) as conn:
    with conn.cursor(binary=True) as cur:
        for i in range(5):
            cur.execute("select id, name from items where id = %s", (i + 1,), prepare=True)
            row = cur.fetchone()
            assert row == (i + 1, f"item {i + 1}"), row
        cur.execute("insert into items values (%s, %s) returning id", (500, "secret-param-value"), prepare=True)
        assert cur.fetchone() == (500,)
    conn.commit()
    try:
        conn.execute("drop table items", prepare=True)
        raise SystemExit("drop was allowed")
    except psycopg.errors.InsufficientPrivilege as e:
        print("DENIED", e)
    conn.rollback()
    # The connection is still usable after the refusal.
    print("COUNT", conn.execute("select count(*) from items").fetchone()[0])
"#,
    );
    assert!(out.success(), "{}\n{}", out.stderr, env.gateway_log());
    assert!(out.stdout.contains("DENIED"), "{}", out.stdout);
    assert!(out.stdout.contains("COUNT 11"), "{}", out.stdout);
    let insert = env.wait_for_record(|r| {
        r["kind"] == "statement"
            && r["detail"]["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("insert"))
    });
    assert_eq!(insert["detail"]["params"], 2, "{insert:#}");
    assert_eq!(insert["detail"]["protocol"], "extended");
    let export = env.cli(&["audit", "export", "--format", "jsonl"]).stdout;
    assert!(
        !export.contains("secret-param-value"),
        "parameter values never reach records"
    );
}

const PIPELINE: &str = r#"
import os, psycopg
with psycopg.connect(os.environ["DSN"], autocommit=True) as conn:
    try:
        with conn.pipeline():
            conn.execute("insert into items values (600, 'pipelined')")
            conn.execute(os.environ["MIDDLE"])
            conn.execute("insert into items values (601, 'skipped')")
    except psycopg.Error as e:
        print("FAILED", type(e).__name__, e.sqlstate)
    print("COUNT", conn.execute("select count(*) from items where id >= 600").fetchone()[0])
"#;

#[test]
fn pipelined_batch_with_a_denied_statement_fails_where_postgres_would() {
    let env = Env::start();
    // What PostgreSQL itself does when the middle statement fails...
    let mut direct = Command::new("python3");
    direct
        .args(["-c", PIPELINE])
        .env("DSN", env.pg.conninfo(test_support::SCRAM_USER, "app"))
        .env("PGPASSWORD", test_support::SCRAM_PASSWORD)
        .env("MIDDLE", "select 1/0");
    let direct = run(&mut direct, TIMEOUT);
    assert!(direct.success(), "{}", direct.stderr);
    assert!(
        direct.stdout.contains("FAILED DivisionByZero 22012"),
        "{}",
        direct.stdout
    );
    env.pg.sql("app", "delete from items where id >= 600");

    // ...is what happens when the gateway refuses it.
    let token = env.token("deployer", &[]);
    let mut cmd = Command::new("python3");
    cmd.args(["-c", PIPELINE])
        .env("DSN", env.conninfo("require"))
        .env("PGPASSWORD", &token)
        .env("MIDDLE", "truncate items");
    let out = run(&mut cmd, TIMEOUT);
    assert!(out.success(), "{}\n{}", out.stderr, env.gateway_log());
    assert!(
        out.stdout.contains("FAILED InsufficientPrivilege 42501"),
        "{}",
        out.stdout
    );
    let count = |s: &str| {
        s.lines()
            .find(|l| l.starts_with("COUNT"))
            .map(str::to_string)
    };
    assert_eq!(
        count(&out.stdout),
        count(&direct.stdout),
        "gateway {} vs direct {}",
        out.stdout,
        direct.stdout
    );
}

#[test]
fn psql_copy_in_and_out() {
    let env = Env::start();
    let token = env.token("deployer", &[]);
    let csv = env.dir().join("in.csv");
    std::fs::write(&csv, "700,copied a\n701,copied b\n").unwrap();
    let out_file = env.dir().join("out.csv");
    let script = format!(
        "\\copy items from '{}' with (format csv)\n\\copy (select * from items where id >= 700 order by id) to '{}' with (format csv)\n",
        csv.display(),
        out_file.display()
    );
    let out = env.psql(&token, &script);
    assert!(out.success(), "{}\n{}", out.stderr, env.gateway_log());
    assert_eq!(
        std::fs::read_to_string(&out_file).unwrap(),
        "700,copied a\n701,copied b\n"
    );
    let copy = env.wait_for_record(|r| {
        r["kind"] == "statement"
            && r["detail"]["text"].as_str().is_some_and(|t| {
                t.starts_with("COPY  items FROM STDIN") || t.to_lowercase().contains("from stdin")
            })
    });
    assert_eq!(copy["decision"], "allow");
}

#[test]
fn copy_from_stdin_is_a_write_and_refused_for_readers() {
    let env = Env::start();
    let token = env.token("ci-job", &["ci"]);
    let csv = env.dir().join("in.csv");
    std::fs::write(&csv, "800,nope\n").unwrap();
    let out = env.psql(
        &token,
        &format!("\\copy items from '{}' with (format csv)\n", csv.display()),
    );
    assert!(out.stderr.contains("permission denied"), "{}", out.stderr);
    assert_eq!(
        env.pg
            .sql("app", "select count(*) from items where id = 800"),
        "0"
    );
}

#[test]
fn cancel_request_reaches_the_right_backend() {
    psycopg_cancels_a_sleep(&Env::start());
}

/// psycopg cancels its running `pg_sleep` (a CancelRequest to the gateway),
/// PostgreSQL itself cancels it, and the session goes on.
pub(crate) fn psycopg_cancels_a_sleep(env: &Env) {
    let token = env.token("ci-job", &["ci"]);
    let out = python(
        env,
        &token,
        r#"
import os, threading, time, psycopg
conn = psycopg.connect(os.environ["DSN"])
threading.Timer(0.5, conn.cancel).start()
t0 = time.time()
try:
    conn.execute("select pg_sleep(30)")
    raise SystemExit("not cancelled")
except psycopg.errors.QueryCanceled:
    print("CANCELLED after %.1fs" % (time.time() - t0))
conn.rollback()
print("AFTER", conn.execute("select 1").fetchone()[0])
"#,
    );
    assert!(out.success(), "{}\n{}", out.stderr, env.gateway_log());
    assert!(out.stdout.contains("CANCELLED"), "{}", out.stdout);
    assert!(out.stdout.contains("AFTER 1"), "{}", out.stdout);
    let log = env.pg.log();
    assert!(
        log.contains("canceling statement due to user request"),
        "{log}"
    );
}

#[test]
fn psql_cancels_a_running_pg_sleep_on_sigint() {
    let env = Env::start();
    let token = env.token("ci-job", &["ci"]);
    let mut cmd = Command::new("psql");
    cmd.arg(env.conninfo("require"))
        .args(["-X", "-At", "-c", "select pg_sleep(30)"])
        .env("PGPASSWORD", &token)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().expect("spawn psql");
    let pid = child.id().to_string();
    // Wait until the sleep is really running upstream, then interrupt psql
    // as a user pressing Ctrl-C would; psql sends a CancelRequest.
    for _ in 0..100 {
        let running = env.pg.sql(
            "app",
            "select count(*) from pg_stat_activity where query = 'select pg_sleep(30)'",
        );
        if running == "1" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let started = std::time::Instant::now();
    let kill = run(Command::new("kill").args(["-INT", &pid]), TIMEOUT);
    assert!(kill.success(), "{}", kill.stderr);
    let out = child.wait_with_output().expect("psql output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("canceling statement due to user request"),
        "{stderr}\n{}",
        env.gateway_log()
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "cancel did not interrupt the sleep"
    );
}

#[test]
fn notices_and_notify_pass_through() {
    let env = Env::start();
    // Stable: a reader may call it (a volatile function is not a read).
    env.pg.sql(
        "app",
        "create function say_hello() returns int language plpgsql stable as $$ begin raise notice 'hello from upstream'; return 1; end $$;",
    );
    let token = env.token("ci-job", &["ci"]);
    let out = env.psql(
        &token,
        "select say_hello();\nlisten jobs;\nselect pg_notify('jobs', 'payload-1') is null;\n",
    );
    assert!(out.stderr.contains("hello from upstream"), "{}", out.stderr);
    // pg_notify has side effects: a reader may not call it.
    assert!(out.stderr.contains("permission denied"), "{}", out.stderr);

    let writer = env.token("deployer", &[]);
    let mut cmd = Command::new("psql");
    cmd.arg(env.conninfo("require"))
        .args(["-X", "-At", "-f", "-"])
        .env("PGPASSWORD", &writer);
    let out = run_with_input(
        &mut cmd,
        Some(b"listen jobs;\nnotify jobs, 'payload-2';\nselect 1;\n"),
        TIMEOUT,
    );
    assert!(out.success(), "{}", out.stderr);
    assert!(out.stdout.contains("payload-2"), "{}", out.stdout);
}

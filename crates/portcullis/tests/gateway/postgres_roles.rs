//! The database's own roles as defence in depth (`upstream.users:`): a
//! session logs in upstream as the role of the highest level its policies
//! allow, so PostgreSQL refuses what the role may not do even where the
//! gateway's classification lets a write through.

use std::process::Command;

use test_support::run;

use crate::env::{Env, Options, BIN, TIMEOUT};

/// `ci` (read) gets `app_ro`; `deployer` (write) has no listed role and
/// logs in as the connection's `user`, `app_scram`.
const READ_ROLE: &str = "\n      users:\n        read: { user: app_ro, password: ro-secret }";

/// A read-only role: SELECT on `items`, nothing else.
fn create_read_role(env: &Env) {
    env.pg.sql(
        "app",
        "create role app_ro login password 'ro-secret';
         grant usage on schema public to app_ro;
         grant select on items to app_ro;",
    );
}

fn env_with_read_role(policies: Option<&str>) -> Env {
    let mut opts = Options {
        upstream_extra: READ_ROLE,
        ..Options::default()
    };
    if let Some(policies) = policies {
        opts.policies = policies.to_string();
    }
    let env = Env::with(opts);
    create_read_role(&env);
    env
}

fn session_start(env: &Env, principal: &str) -> serde_json::Value {
    env.wait_for_record(|r| r["kind"] == "session_start" && r["principal"] == principal)
}

#[test]
fn a_read_only_principal_runs_as_the_read_role_and_a_writer_as_the_connection_user() {
    let env = env_with_read_role(None);
    for (principal, groups, user, level) in [
        ("ci-job", &["ci"][..], "app_ro", "read"),
        ("deployer", &[][..], "app_scram", "write"),
    ] {
        let token = env.token(principal, groups);
        let out = env.psql(&token, "select current_user, session_user;");
        assert!(out.success(), "{}\n{}", out.stderr, env.gateway_log());
        assert_eq!(out.stdout.trim(), format!("{user}|{user}"), "{principal}");
        let start = session_start(&env, principal);
        assert_eq!(start["detail"]["upstream_user"], user, "{start}");
        assert_eq!(start["detail"]["upstream_level"], level, "{start}");
    }
}

/// `i.touch` is attribute notation for `touch(i)`, a volatile SQL function
/// that updates `items`: the gateway reads it as a column and allows it as
/// a read (README: "what a statement does not name is outside the
/// gateway's view"). As `app_ro` the server refuses the UPDATE inside it.
#[test]
fn a_write_the_gateway_lets_through_as_a_read_is_refused_by_the_servers_grants() {
    let env = env_with_read_role(None);
    env.pg.sql(
        "app",
        "create function touch(items) returns int language sql volatile security invoker
           as $$ update items set name = 'touched' where id = $1.id returning 1 $$;
         grant execute on function touch(items) to public;",
    );
    let ci = env.token("ci-job", &["ci"]);
    let out = env.psql(
        &ci,
        "select current_user;\nselect i.touch from items i where i.id = 1;\n",
    );
    assert_eq!(out.stdout.trim(), "app_ro", "{}", out.stderr);
    assert!(
        out.stderr.contains("permission denied for table items"),
        "the server, not the gateway, refuses: {}",
        out.stderr
    );
    let allowed = env.wait_for_record(|r| {
        r["kind"] == "statement"
            && r["detail"]["text"]
                .as_str()
                .is_some_and(|t| t.contains("i.touch"))
    });
    assert_eq!(
        (&allowed["decision"], &allowed["rule"]),
        (&"allow".into(), &"read".into()),
        "the gateway let it through as a read: {allowed}"
    );
    assert_eq!(
        env.pg.sql("app", "select name from items where id = 1"),
        "item 1",
        "nothing was written"
    );

    // The same statement under the connection's own user writes: the role
    // is what stopped it above.
    let deployer = env.token("deployer", &[]);
    let out = env.psql(&deployer, "select i.touch from items i where i.id = 1;");
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(
        env.pg.sql("app", "select name from items where id = 1"),
        "touched"
    );
}

/// `ci` may read and needs approval to write. Its session logs in as
/// `app_ro`, which no approval changes, so a write is refused at once
/// (never held, no approver is asked) and says why; reads still run.
#[test]
fn a_statement_held_above_the_sessions_level_is_refused_not_held() {
    let policies = r#"
  - name: ci-reads-asks-to-write
    match: { groups: [ci] }
    connection: app-db
    allow: [read]
    require_approval: [write]
"#;
    let env = env_with_read_role(Some(policies));
    let ci = env.token("ci-job", &["ci"]);
    let out = env.psql(
        &ci,
        "delete from items where id = 1;\nselect current_user, count(*) from items;\n",
    );
    assert!(
        out.stderr.contains("logs in upstream as \"app_ro\""),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("awaiting approval"), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "app_ro|10", "{}", out.stderr);
    let refused = env.wait_for_record(|r| r["kind"] == "statement" && r["decision"] == "deny");
    assert_eq!(refused["rule"], "upstream role", "{refused}");
    assert_eq!(refused["policy"], "ci-reads-asks-to-write", "{refused}");
    assert!(
        !env.records().iter().any(|r| r["kind"] == "approval"),
        "nobody was asked"
    );
}

/// `ci` reads by a standing policy and writes inside a grant. The role is
/// chosen at login: a session opened before the grant stays `app_ro`, one
/// opened inside it logs in at the grant's level.
#[test]
fn a_grant_raises_the_role_of_sessions_opened_inside_it_only() {
    let policies = r#"
  - name: ci-reads
    match: { groups: [ci] }
    connection: app-db
    allow: [read]
  - name: ci-jit-writes
    match: { groups: [ci] }
    connection: app-db
    access: { jit: { max: 1h, approval: auto } }
    allow: [read, write]
"#;
    let env = env_with_read_role(Some(policies));
    let ci = env.token("ci", &["ci"]);
    let mut cmd = Command::new("python3");
    cmd.args(["-c", GRANT_BETWEEN_SESSIONS])
        .env("PGPASSWORD", &ci)
        .env("DSN", env.conninfo("require"))
        .env("PORTCULLIS", BIN)
        .env("ADMIN", env.admin_url());
    let out = run(&mut cmd, TIMEOUT);
    assert!(out.success(), "{}\n{}", out.stderr, env.gateway_log());
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        ["before app_ro", "inside app_scram", "before-still app_ro"],
        "{}",
        out.stderr
    );
    let starts: Vec<_> = env
        .records()
        .into_iter()
        .filter(|r| r["kind"] == "session_start")
        .map(|r| {
            (
                r["detail"]["upstream_level"].clone(),
                r["detail"]["grant"].is_string(),
            )
        })
        .collect();
    assert_eq!(
        starts,
        [("read".into(), false), ("write".into(), true)],
        "{starts:?}"
    );
}

const GRANT_BETWEEN_SESSIONS: &str = r#"
import os, subprocess, psycopg
before = psycopg.connect(os.environ["DSN"], autocommit=True)
print("before", before.execute("select current_user").fetchone()[0], flush=True)
subprocess.run(
    [os.environ["PORTCULLIS"], "grants", "request", "--connection", "app-db", "--duration", "5m",
     "--reason", "deploy", "--admin", os.environ["ADMIN"]],
    check=True, stdout=subprocess.DEVNULL,
    env={**os.environ, "PORTCULLIS_TOKEN": os.environ["PGPASSWORD"]})
inside = psycopg.connect(os.environ["DSN"], autocommit=True)
print("inside", inside.execute("select current_user").fetchone()[0], flush=True)
print("before-still", before.execute("select current_user").fetchone()[0], flush=True)
"#;

//! An upstream reached through its Unix-socket directory (`host: /dir`, a
//! gateway on the database host): SCRAM and md5 logins, refusals, masking,
//! pgbench and psycopg, cancel requests and an absent server behave as over
//! TCP. `client_port = -1` in `pg_stat_activity` proves a session came in
//! over the socket.

use test_support::{MD5_PASSWORD, MD5_USER, SCRAM_PASSWORD};

use crate::env::{Env, Options, DEFAULT_POLICIES};
use crate::postgres_clients::{pgbench_env, pgbench_ok, psycopg_cancels_a_sleep, python};
use crate::postgres_robustness::login_error;

fn over_socket() -> Options {
    Options {
        upstream_socket: true,
        ..Options::default()
    }
}

/// What the gateway's error messages and log lines call the upstream.
fn socket_name(env: &Env) -> String {
    format!(
        "unix:{}/.s.PGSQL.{}",
        env.pg.socket_dir().display(),
        env.pg.port
    )
}

const MASKED_POLICY: &str = r#"
  - name: masked-reads
    match: { principals: ["masked"] }
    connection: app-db
    allow: [read]
    mask: { columns: ["items.name"] }
"#;

/// Reads, a refused DROP (42501) and a read after it, in one psql session.
const SESSION: &str = "\\set VERBOSITY verbose
select current_user, client_port from pg_stat_activity where pid = pg_backend_pid();
drop table items;
select count(*) from items;
";

#[test]
fn psql_through_a_socket_upstream_with_scram_and_md5_logins() {
    let mut env = Env::with(Options {
        policies: format!("{DEFAULT_POLICIES}{MASKED_POLICY}"),
        ..over_socket()
    });
    let token = env.token("ci-job", &["ci"]);
    for (user, password) in [
        (test_support::SCRAM_USER, SCRAM_PASSWORD),
        (MD5_USER, MD5_PASSWORD),
    ] {
        if user == MD5_USER {
            env.restart_gateway_with(|o| {
                o.upstream_user = MD5_USER;
                o.upstream_password = MD5_PASSWORD;
            });
        }
        let out = env.psql(&token, SESSION);
        let log = env.gateway_log();
        assert_eq!(
            out.stdout.trim(),
            format!("{user}|-1\n10"),
            "{}\n{log}",
            out.stderr
        );
        assert!(
            out.stderr
                .contains("ERROR:  42501: permission denied by policy"),
            "{}",
            out.stderr
        );
        assert!(log.contains(&socket_name(&env)), "{log}");
        assert!(
            !log.contains(password),
            "the upstream password reached the log"
        );
    }
    assert_eq!(env.pg.sql("app", "select count(*) from items"), "10");

    // The masking catalog dials the same socket.
    let masked = env.token("masked", &[]);
    let out = env.psql(&masked, "select id, name from items where id = 1;");
    assert!(out.success(), "{}\n{}", out.stderr, env.gateway_log());
    assert!(out.stdout.starts_with("1|"), "{}", out.stdout);
    assert!(!out.stdout.contains("item 1"), "{}", out.stdout);
    let catalog = env.pg.sql(
        "app",
        "select client_port from pg_stat_activity where application_name = 'portcullis-catalog'",
    );
    assert_eq!(catalog, "-1");
}

#[test]
fn pgbench_extended_mode_through_a_socket_upstream() {
    let env = pgbench_env(over_socket());
    let token = env.token("bench", &[]);
    pgbench_ok(&env, &token, &["-M", "extended", "-S"]);
    pgbench_ok(&env, &token, &["-M", "extended"]);
    let sessions = env.pg.sql(
        "app",
        "select count(*) from pg_stat_activity where usename = 'app_scram' and client_port <> -1",
    );
    assert_eq!(sessions, "0", "no gateway session may come in over TCP");
}

#[test]
fn psycopg_refusal_and_cancel_through_a_socket_upstream() {
    let env = Env::with(over_socket());
    let token = env.token("ci-job", &["ci"]);
    let out = python(
        &env,
        &token,
        r#"
import os, psycopg
conn = psycopg.connect(os.environ["DSN"])
print("ROWS", conn.execute("select count(*) from items where id > %s", (5,)).fetchone()[0])
try:
    conn.execute("drop table items")
except psycopg.errors.InsufficientPrivilege as e:
    print("DENIED", e.sqlstate)
conn.rollback()
print("AFTER", conn.execute("select count(*) from items").fetchone()[0])
"#,
    );
    assert!(out.success(), "{}\n{}", out.stderr, env.gateway_log());
    assert_eq!(out.stdout.trim(), "ROWS 5\nDENIED 42501\nAFTER 10");
    psycopg_cancels_a_sleep(&env);
}

#[test]
fn a_socket_with_no_server_gives_08001_naming_the_path_as_tcp_does() {
    let mut env = Env::with(Options {
        insecure_plaintext: true,
        ..over_socket()
    });
    env.pg.stop();
    let token = env.token("ci-job", &["ci"]);
    let unix = login_error(&env, &token);
    assert_eq!(
        unix.get(&b'C').map(String::as_str),
        Some("08001"),
        "{unix:?}"
    );
    let wanted = format!("cannot connect to upstream {}: ", socket_name(&env));
    assert!(unix[&b'M'].contains(&wanted), "{unix:?}");
    let out = env.psql_mode(&token, "select 1;", "disable");
    assert!(out.stderr.contains(&wanted), "{}", out.stderr);
    assert!(
        env.gateway().try_wait().is_none(),
        "the gateway must keep running"
    );

    env.restart_gateway_with(|o| o.upstream_socket = false);
    let tcp = login_error(&env, &token);
    for field in [b'S', b'V', b'C'] {
        assert_eq!(unix.get(&field), tcp.get(&field), "{unix:?}\n{tcp:?}");
    }
    let wanted = format!("cannot connect to upstream 127.0.0.1:{}: ", env.pg.port);
    assert!(tcp[&b'M'].contains(&wanted), "{tcp:?}");
}

//! One model of session state, the server's (issue 11): the settings that
//! decide how the server reads a query (client_encoding,
//! standard_conforming_strings) never move through the gateway, role
//! changes are `admin`, and when the server reports one of them moved
//! anyway the session ends. Every test checks the server's state afterwards.

use std::process::Command;

use test_support::{run, run_with_input};

use crate::env::{Env, Options, DEFAULT_POLICIES, TIMEOUT};

/// The default `ci` (read) and `deployer` (write) policies, plus `dba`,
/// allowed everything.
fn env() -> Env {
    let env = Env::with(Options {
        policies: format!(
            "{DEFAULT_POLICIES}
  - name: dba
    match: {{ principals: [\"dba\"] }}
    connection: app-db
    allow: [read, write, ddl, admin]
"
        ),
        ..Options::default()
    });
    // A role the login role could switch to if a SET ROLE got through.
    env.pg
        .sql("app", "create role other; grant other to app_scram;");
    env
}

/// What the server's session says about itself, printed last by psql.
const STATE: &str = "show client_encoding;\nshow standard_conforming_strings;\nselect current_user, session_user;\n";
const UNMOVED: &str = "UTF8\non\napp_scram|app_scram";

fn session_end_reasons(env: &Env) -> Vec<String> {
    env.records()
        .into_iter()
        .filter(|r| r["kind"] == "session_end")
        .map(|r| {
            r["detail"]["reason"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

/// Runs `routes` then [`STATE`] in one psql session as `who`; asserts that
/// psql printed `expected` and that each route got one `marker` error.
fn refused_then_state(
    env: &Env,
    (who, groups): (&str, &[&str]),
    routes: &[&str],
    expected: &str,
    marker: &str,
) -> test_support::Output {
    let token = env.token(who, groups);
    let out = env.psql(&token, &format!("{}\n{STATE}", routes.join("\n")));
    assert_eq!(out.stdout.trim(), expected, "{who}: {}", out.stderr);
    assert_eq!(
        out.stderr.matches(marker).count(),
        routes.len(),
        "{who}: {}",
        out.stderr
    );
    out
}

/// Seen in issue 11, item 1, with the exact bytes: a SJIS session is refused
/// before any statement, so the second statement hidden in the string
/// cannot run.
#[test]
fn the_sjis_startup_of_issue_11_stays_refused() {
    let env = env();
    let script = r#"
import os, psycopg
try:
    conn = psycopg.connect(os.environ["DSN"] + " client_encoding=SJIS", autocommit=True)
except psycopg.OperationalError as e:
    print("refused", e)
else:
    conn.pgconn.exec_(b"SELECT E'\xc3\x95\\';CREATE TABLE pwned(x int);--'")
    print("connected")
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script])
        .env("PGPASSWORD", env.token("ci", &["ci"]))
        .env("DSN", env.conninfo("require"));
    let out = run(&mut cmd, TIMEOUT);
    assert!(
        out.stdout.contains("refused") && out.stdout.contains("SJIS"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(
        env.pg.sql("app", "select to_regclass('pwned') is null"),
        "t"
    );
}

/// Every route to another encoding or to standard_conforming_strings off is
/// refused with a native 0A000 error for every principal, `admin` too, and
/// the session goes on as it was.
#[test]
fn encoding_and_lexing_changes_are_refused_for_everyone() {
    let env = env();
    let routes = [
        "set client_encoding = 'SJIS';",
        "set names 'GBK';",
        "begin; set local client_encoding to 'BIG5'; commit;",
        "set standard_conforming_strings = off;",
        "select set_config('client_encoding', 'SJIS', false);",
        "select * from pg_catalog.set_config('standard_conforming_strings', 'off', false);",
        "select (select set_config('client_encoding', 'LATIN1', true));",
    ];
    for (who, groups) in [("ci", &["ci"][..]), ("deployer", &[]), ("dba", &[])] {
        // psql prints the tags of the BEGIN and of the COMMIT of the aborted transaction.
        let expected = format!("BEGIN\nROLLBACK\n{UNMOVED}");
        let out = refused_then_state(&env, (who, groups), &routes, &expected, "ERROR:");
        assert!(
            out.stderr
                .contains("client_encoding can only be UTF8 through the gateway"),
            "{}",
            out.stderr
        );
        assert!(
            out.stderr
                .contains("standard_conforming_strings must stay on through the gateway"),
            "{}",
            out.stderr
        );
    }
}

/// Issue 11, item 8: `SET standard_conforming_strings = off` ended the
/// session as an "upstream protocol error". It is refused, clearly, and the
/// session stays usable; `on`, `RESET` and `DEFAULT` are followed.
#[test]
fn standard_conforming_strings_off_is_refused_and_the_session_goes_on() {
    let env = env();
    let token = env.token("dba", &[]);
    let out = env.psql(
        &token,
        "set standard_conforming_strings = off;\nselect 'x\\';\nset standard_conforming_strings = on;\nreset standard_conforming_strings;\nset standard_conforming_strings to default;\nreset all;\ndiscard all;\nset client_encoding = 'UTF8';\nreset client_encoding;\nshow standard_conforming_strings;\n",
    );
    // The backslash is read as with the setting on; then each command's tag.
    assert_eq!(
        out.stdout.trim(),
        "x\\\nSET\nRESET\nSET\nRESET\nDISCARD ALL\nSET\nRESET\non",
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.matches("ERROR:").count(), 1, "{}", out.stderr);
    assert!(out
        .stderr
        .contains("HINT:  Portcullis reads every statement"));
    assert!(
        !session_end_reasons(&env)
            .iter()
            .any(|r| r.contains("protocol")),
        "{:?}",
        session_end_reasons(&env)
    );
}

/// Role changes and writes to pg_settings are `admin`: refused for the
/// read and write principals, and nothing changed on the server.
#[test]
fn role_changes_and_pg_settings_writes_are_admin() {
    let env = env();
    let routes = [
        "set role other;",
        "set session authorization other;",
        "reset role;",
        "select set_config('role', 'other', false);",
        "select * from pg_catalog.set_config('session_authorization', 'other', false);",
        "update pg_settings set setting = 'SJIS' where name = 'client_encoding';",
        "update pg_catalog.pg_settings set setting = 'other' where name = 'role';",
        "with u as (update pg_settings set setting = 'off' where name = 'standard_conforming_strings' returning 1) select count(*) from u;",
        "alter role app_scram set work_mem = '1MB';",
        "alter user app_scram set role = 'other';",
        "alter database app set search_path = 'x';",
    ];
    for (who, groups) in [("ci", &["ci"][..]), ("deployer", &[])] {
        let marker = "ERROR:  permission denied";
        refused_then_state(&env, (who, groups), &routes, UNMOVED, marker);
    }
    assert_eq!(
        env.pg.sql("app", "select count(*) from pg_db_role_setting"),
        "0"
    );
}

/// What the classifier cannot see (a function body calling set_config)
/// the server reports: the session ends with a FATAL naming the setting,
/// before another statement runs, and the end is recorded.
#[test]
fn an_unseen_encoding_change_ends_the_session() {
    let env = env();
    env.pg.sql(
        "app",
        "create function public.to_sjis() returns text language plpgsql volatile as
           $$ begin return set_config('client_encoding', 'SJIS', false); end $$;",
    );
    let token = env.token("deployer", &[]);
    let out = env.psql(
        &token,
        "select to_sjis();\ninsert into items values (99, 'after');\n",
    );
    assert!(
        out.stderr.contains("FATAL:") && out.stderr.contains("client_encoding is \"SJIS\""),
        "{}",
        out.stderr
    );
    assert_eq!(
        env.pg
            .sql("app", "select count(*) from items where id = 99"),
        "0"
    );
    let reasons = session_end_reasons(&env);
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("left the gateway's model") && r.contains("SJIS")),
        "{reasons:?}"
    );
}

/// An `admin` principal may write pg_settings, which the server turns into
/// set_config; when that moves standard_conforming_strings or the session's
/// role, the session ends rather than go on deciding statements the server
/// reads differently or runs as someone else.
#[test]
fn an_admin_moving_lexing_or_identity_ends_the_session() {
    let env = env();
    env.pg.sql("app", "alter role app_scram superuser");
    let token = env.token("dba", &[]);
    let lexing = env.psql(
        &token,
        "update pg_settings set setting = 'off' where name = 'standard_conforming_strings';\nselect 'still here';\n",
    );
    assert!(
        lexing.stderr.contains("FATAL:")
            && lexing
                .stderr
                .contains("standard_conforming_strings is \"off\""),
        "{}",
        lexing.stderr
    );
    assert!(!lexing.stdout.contains("still here"), "{}", lexing.stdout);
    let identity = env.psql(
        &token,
        "set session authorization other;\nselect 'still here';\n",
    );
    assert!(
        identity.stderr.contains("FATAL:")
            && identity.stderr.contains("session_authorization \"other\""),
        "{}",
        identity.stderr
    );
    assert!(
        !identity.stdout.contains("still here"),
        "{}",
        identity.stdout
    );
}

/// Routes to a changed encoding, lexing or role, for attackers' spellings.
const ROUTES: &[&str] = &[
    "SET \u{1} = '\u{2}'",
    "SET \u{1} TO \u{2}",
    "SET LOCAL \u{1} TO '\u{2}'",
    "SET SESSION \u{1} = \"\u{2}\"",
    "SELECT set_config('\u{1}', '\u{2}', false)",
    "SELECT pg_catalog.set_config('\u{1}', '\u{2}', false)",
    "SELECT \"pg_catalog\".\"set_config\"('\u{1}'::text, '\u{2}'::text, false)",
    "SELECT * FROM pg_catalog.set_config('\u{1}', '\u{2}', false) AS s(v)",
    "SELECT set_config(E'\u{1}', $$\u{2}$$, false)",
    "SELECT set_config(setting_name => '\u{1}', new_value => '\u{2}', is_local => false)",
    "SELECT set_config(lower(upper('\u{1}')), '\u{2}', false)",
    "SELECT set_config('\u{1}' || '', '\u{2}', false)",
    "WITH s AS (SELECT set_config('\u{1}', '\u{2}', false)) SELECT * FROM s",
    "SELECT (SELECT set_config('\u{1}', '\u{2}', false))",
    "SELECT 1 WHERE set_config('\u{1}', '\u{2}', false) IS NOT NULL",
    "SELECT count(*) FROM items WHERE name <> set_config('\u{1}', '\u{2}', false)",
    "SELECT 1; SELECT set_config('\u{1}', '\u{2}', false); SELECT 2",
    "SELECT 1; SET \u{1} = '\u{2}'",
    "UPDATE pg_settings SET setting = '\u{2}' WHERE name = '\u{1}'",
    "UPDATE pg_catalog.pg_settings s SET setting = '\u{2}' WHERE s.name = '\u{1}'",
    "UPDATE \"pg_settings\" SET setting = '\u{2}' WHERE name = '\u{1}' RETURNING setting",
    "WITH u AS (UPDATE pg_settings SET setting = '\u{2}' WHERE name = '\u{1}' RETURNING 1) SELECT count(*) FROM u",
    "SELECT * FROM items WHERE id IN (WITH u AS (UPDATE pg_settings SET setting = '\u{2}' WHERE name = '\u{1}' RETURNING 1) SELECT 1 FROM u)",
];

/// (setting, value): each would leave the gateway's model.
const TARGETS: &[(&str, &str)] = &[
    ("client_encoding", "SJIS"),
    ("client_encoding", "LATIN1"),
    ("standard_conforming_strings", "off"),
    ("role", "other"),
    ("session_authorization", "other"),
];

/// One route in one spelling: case, whitespace and comments vary the
/// template's own text; the setting and value go in afterwards.
fn spellings(route: &str) -> Vec<String> {
    let comment = route
        .replacen(' ', " /* x */ ", 2)
        .replacen(' ', " -- y\n", 1);
    vec![
        route.to_owned(),
        route.to_ascii_lowercase(),
        upper_outside_quoted_names(route),
        route.replace(' ', "\n\t  "),
        comment,
        format!("/* lead */ {route} ;"),
    ]
}

/// Upper case, except inside double quotes, where it would name another
/// object and fail on the server for a reason of its own.
fn upper_outside_quoted_names(sql: &str) -> String {
    let mut quoted = false;
    sql.chars()
        .map(|c| {
            quoted ^= c == '"';
            if quoted {
                c
            } else {
                c.to_ascii_uppercase()
            }
        })
        .collect()
}

/// Every route in every spelling for every target; every other statement
/// names its setting in upper case, which PostgreSQL reads the same.
fn generated_statements() -> Vec<String> {
    let mut statements = Vec::new();
    for route in ROUTES {
        for spelled in spellings(route) {
            for (setting, value) in TARGETS {
                let name = match statements.len() % 2 {
                    0 => setting.to_string(),
                    _ => setting.to_ascii_uppercase(),
                };
                statements.push(spelled.replace('\u{1}', &name).replace('\u{2}', value));
            }
        }
    }
    statements
}

/// Runs each statement twice (simple protocol, then extended with binary
/// results) and prints one line per run that the gateway did not refuse,
/// then the session's state as the server reports it.
const ATTACK: &str = r#"
import json, os, sys, psycopg
statements = json.load(sys.stdin)
conn = psycopg.connect(os.environ["DSN"], autocommit=True)
for sql in statements:
    for binary in (False, True):
        try:
            conn.execute(sql, binary=binary)
            print("ACCEPTED", binary, repr(sql))
        except psycopg.OperationalError as e:
            print("SESSION ENDED", binary, repr(sql), e)
            sys.exit(1)
        except psycopg.Error as e:
            if "Portcullis" not in (e.diag.message_hint or ""):
                print("SERVER", binary, e.sqlstate, repr(sql), e)
for row in conn.execute("select current_setting('client_encoding'), current_setting('standard_conforming_strings'), current_user, session_user"):
    print("STATE", *row)
"#;

/// Hundreds of spellings of every route, as a read and a write principal:
/// every one is refused by the gateway (none reaches the server), and the
/// server's session still has its encoding, lexing and role.
#[test]
fn generated_spellings_of_every_route_never_move_the_session() {
    let env = env();
    let statements = generated_statements();
    assert!(statements.len() > 500, "{}", statements.len());
    let input = serde_json::to_vec(&statements).expect("json");
    for (who, groups) in [("ci", &["ci"][..]), ("deployer", &[])] {
        let mut cmd = Command::new("python3");
        cmd.args(["-c", ATTACK])
            .env("PGPASSWORD", env.token(who, groups))
            .env("DSN", env.conninfo("require"));
        let out = run_with_input(&mut cmd, Some(&input), TIMEOUT * 3);
        assert_eq!(
            out.stdout.trim(),
            "STATE UTF8 on app_scram app_scram",
            "{who}: {}",
            out.stderr
        );
    }
}

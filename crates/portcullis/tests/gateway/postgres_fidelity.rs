//! Issue 11, Fidelity: through the gateway a client's startup settings and
//! fastpath calls behave as on a direct connection, except where a
//! documented security decision says otherwise.

use std::process::Command;

use test_support::{run, Output};

use crate::env::{Env, TIMEOUT};

/// psql through the gateway with `envs` set (PGDATESTYLE, PGOPTIONS, ...).
fn psql_with(env: &Env, token: &str, envs: &[(&str, &str)], sql: &str) -> Output {
    let mut cmd = Command::new("psql");
    cmd.arg(env.conninfo("require"))
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", token)
        .env_remove("PGSERVICE");
    for (name, value) in envs {
        cmd.env(name, value);
    }
    run(&mut cmd, TIMEOUT)
}

/// libpq sends PGDATESTYLE and PGTZ as lowercase `datestyle` and
/// `timezone`, and PGOPTIONS as `options`; pg_regress relies on all three.
#[test]
fn libpq_startup_settings_and_options_reach_the_server() {
    let env = Env::start();
    let ci = env.token("ci", &["ci"]);
    let envs = [
        ("PGDATESTYLE", "Postgres, MDY"),
        ("PGTZ", "America/Los_Angeles"),
        (
            "PGOPTIONS",
            "-c intervalstyle=postgres_verbose --extra-float-digits=1 -c default_transaction_isolation=repeatable\\ read",
        ),
    ];
    let out = psql_with(
        &env,
        &ci,
        &envs,
        "select current_setting('datestyle'), current_setting('timezone'), \
         current_setting('intervalstyle'), current_setting('extra_float_digits'), \
         current_setting('default_transaction_isolation')",
    );
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        "Postgres, MDY|America/Los_Angeles|postgres_verbose|1|repeatable read"
    );
}

/// A role, authorization or lexing change at startup is refused with a
/// FATAL naming it, however it is spelt; so is a setting the allow-list
/// does not know (the client would otherwise believe it had it).
#[test]
fn startup_settings_that_change_role_lexing_or_are_unknown_are_refused() {
    let env = Env::start();
    let ci = env.token("ci", &["ci"]);
    for (options, expected) in [
        (
            "-c role=postgres",
            "setting \"role\" in options is not allowed",
        ),
        (
            "--session-authorization=postgres",
            "setting \"session_authorization\" in options is not allowed",
        ),
        (
            "-c standard_conforming_strings=off",
            "it changes how the server lexes string literals",
        ),
        (
            "-c default_transaction_read_only=on -c log_statement=none",
            "setting \"log_statement\" in options is not on the gateway's list",
        ),
        ("-B 100", "invalid startup options"),
    ] {
        let out = psql_with(&env, &ci, &[("PGOPTIONS", options)], "select 1");
        assert!(!out.success(), "{options}: {}", out.stdout);
        assert!(
            out.stderr.contains("FATAL") && out.stderr.contains(expected),
            "{options}: {}",
            out.stderr
        );
    }
}

/// psql's `\lo_import` and `\lo_export` use libpq's large-object calls,
/// which travel as fastpath FunctionCall messages.
#[test]
fn fastpath_large_objects_are_decided_by_function() {
    let env = Env::start();
    let dir = test_support::temp_dir();
    let source = dir.path().join("source.txt");
    std::fs::write(&source, "large object contents\n").expect("write source");
    let deployer = env.token("deployer", &[]);
    let ci = env.token("ci", &["ci"]);

    let imported = psql_with(
        &env,
        &deployer,
        &[],
        &format!("\\lo_import {}", source.display()),
    );
    assert!(imported.success(), "{}", imported.stderr);
    let oid = imported
        .stdout
        .trim()
        .strip_prefix("lo_import ")
        .unwrap_or_else(|| panic!("no oid in {:?}", imported.stdout))
        .to_owned();

    // Reading it back is a read: allowed to the read-only principal.
    let copy = dir.path().join("copy.txt");
    let exported = psql_with(
        &env,
        &ci,
        &[],
        &format!("\\lo_export {oid} {}", copy.display()),
    );
    assert!(exported.success(), "{}", exported.stderr);
    assert_eq!(
        std::fs::read_to_string(&copy).expect("exported file"),
        "large object contents\n"
    );

    // Creating one is a write: refused with a native error, nothing written.
    let refused = psql_with(&env, &ci, &[], &format!("\\lo_import {}", source.display()));
    assert!(!refused.success(), "{}", refused.stdout);
    assert!(
        refused.stderr.contains("permission denied")
            && refused.stderr.contains("pg_catalog.lo_creat"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        env.pg
            .sql("app", "select count(*) from pg_largeobject_metadata")
            .trim(),
        "1"
    );

    let write = env.wait_for_record(|r| {
        r["kind"] == "statement" && r["detail"]["fastpath"]["function"] == "pg_catalog.lowrite"
    });
    assert_eq!(write["principal"], "deployer");
    assert_eq!(write["decision"], "allow");
    assert_eq!(write["detail"]["protocol"], "fastpath");
    let denied = env.wait_for_record(|r| {
        r["kind"] == "statement" && r["principal"] == "ci" && r["decision"] == "deny"
    });
    assert!(
        denied["detail"]["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("fastpath pg_catalog.lo_creat")),
        "{denied}"
    );
    let all = env.records().into_iter().map(|r| r.to_string());
    assert!(
        !all.into_iter().any(|r| r.contains("large object contents")),
        "argument bytes leaked into a record"
    );
}

/// A statement neither the gateway nor the server can parse is refused with
/// the server's own error, HINT and DETAIL included, not the gateway's
/// parser's (which lacked them, and words some errors differently).
#[test]
fn a_syntax_error_reads_as_the_servers_own() {
    let env = Env::start();
    let ci = env.token("ci", &["ci"]);
    let out = psql_with(&env, &ci, &[], "drop operator === (int4)");
    assert!(!out.success(), "{}", out.stdout);
    assert!(
        out.stderr.contains("ERROR:  missing argument")
            && out.stderr.contains("LINE 1: drop operator === (int4)")
            && out
                .stderr
                .contains("HINT:  Use NONE to denote the missing argument of a unary operator."),
        "{}",
        out.stderr
    );
    let refused = env.wait_for_record(|r| r["kind"] == "statement" && r["decision"] == "deny");
    assert_eq!(refused["rule"], "unparseable");
}

//! The upstream leg's login against a real PostgreSQL whose `pg_hba.conf`
//! asks for each method (`password`, `md5`, `scram-sha-256`), with TLS on
//! or off: the held password goes in clear text or as md5 only to a server
//! whose certificate was verified (or with `insecure_password_auth`), SCRAM
//! over TLS is bound to the certificate, and `tls: require` fails closed.
//! `crates/postgres/src/proxy/upstream.rs` proves with a fake server that a
//! withheld password is not sent at all.

use std::io::Write;

use test_support::{MD5_PASSWORD, MD5_USER, SCRAM_USER};

use crate::env::Env;

/// The template's superuser line (the harness's own `sql` needs it) and `line`.
fn hba(line: &str) -> String {
    format!("local all postgres trust\n{line}\n")
}

/// An environment whose PostgreSQL uses `hba` and has TLS on or off.
fn env_with_server(hba: &str, ssl: bool) -> Env {
    let mut env = Env::start();
    let data = env.pg.data_dir();
    std::fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
    if !ssl {
        let mut conf = std::fs::File::options()
            .append(true)
            .open(data.join("postgresql.conf"))
            .expect("open postgresql.conf");
        writeln!(conf, "ssl = off").expect("append ssl = off");
    }
    env.pg.restart();
    env
}

fn login(env: &Env) -> test_support::Output {
    let token = env.token("ci-job", &["ci"]);
    env.psql(
        &token,
        "select current_user, ssl from pg_stat_ssl where pid = pg_backend_pid();",
    )
}

#[test]
fn a_cleartext_password_request_is_answered_only_over_verified_tls() {
    let mut env = env_with_server(&hba("host all app_scram 127.0.0.1/32 password"), true);
    for tls in ["prefer", "require"] {
        env.restart_gateway_with(|o| o.upstream_tls = tls);
        let out = login(&env);
        assert!(!out.success(), "tls: {tls}: {}", out.stdout);
        assert!(
            out.stderr.contains(&format!(
                "upstream asks for the password as a cleartext password, which the gateway only \
                 sends to an authenticated server, and its TLS certificate is not verified \
                 (tls: {tls}); the server got nothing"
            )),
            "{}",
            out.stderr
        );
    }
    let ca = env.pg.ca_cert();
    env.restart_gateway_with(|o| {
        o.upstream_tls = "verify-full";
        o.upstream_ca = Some(ca);
    });
    let out = login(&env);
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), format!("{SCRAM_USER}|t"));
}

#[test]
fn md5_to_a_server_without_tls_needs_the_explicit_opt_in() {
    let mut env = env_with_server(&hba("host all all 127.0.0.1/32 md5"), false);
    env.restart_gateway_with(|o| {
        o.upstream_user = MD5_USER;
        o.upstream_password = MD5_PASSWORD;
    });
    let out = login(&env);
    assert!(!out.success(), "{}", out.stdout);
    assert!(
        out.stderr.contains("upstream asks for the password as md5")
            && out.stderr.contains("the server declined TLS (tls: prefer)"),
        "{}",
        out.stderr
    );
    env.restart_gateway_with(|o| o.upstream_extra = "\n      insecure_password_auth: true");
    let out = login(&env);
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), format!("{MD5_USER}|f"));
    assert!(!env.gateway_log().contains(MD5_PASSWORD));
}

#[test]
fn scram_over_tls_is_bound_to_the_servers_certificate() {
    // `channel_binding: require` fails every login that is not
    // SCRAM-SHA-256-PLUS, so its success shows the binding was used.
    let mut env = env_with_server(&hba("hostssl all all 127.0.0.1/32 scram-sha-256"), true);
    env.restart_gateway_with(|o| {
        o.upstream_tls = "require";
        o.upstream_extra = "\n      channel_binding: require";
    });
    let out = login(&env);
    assert!(out.success(), "{}\n{}", out.stderr, env.gateway_log());
    assert_eq!(out.stdout.trim(), format!("{SCRAM_USER}|t"));
}

#[test]
fn tls_require_fails_closed_when_the_server_declines_tls() {
    let mut env = env_with_server(&hba("host all all 127.0.0.1/32 scram-sha-256"), false);
    // The quick start's case: `prefer` against a server without TLS logs in
    // with SCRAM, which shows the server nothing it could reuse.
    let out = login(&env);
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), format!("{SCRAM_USER}|f"));
    env.restart_gateway_with(|o| o.upstream_tls = "require");
    let out = login(&env);
    assert!(!out.success(), "{}", out.stdout);
    assert!(
        out.stderr
            .contains("upstream refused TLS but the connection requires it"),
        "{}",
        out.stderr
    );
}

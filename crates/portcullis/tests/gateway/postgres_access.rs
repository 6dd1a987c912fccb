//! Who gets in, and what they may run once in.

use crate::env::{Env, Options};

#[test]
fn allowed_read_returns_rows_and_is_recorded_under_the_principal() {
    let env = Env::start();
    let token = env.token("ci-job-42", &["ci"]);
    let out = env.psql(&token, "select count(*) from items;");
    assert!(out.success(), "{}\n{}", out.stderr, env.gateway_log());
    assert_eq!(out.stdout.trim(), "10");
    let stmt = env.wait_for_record(|r| r["kind"] == "statement");
    assert_eq!(stmt["principal"], "ci-job-42");
    assert_eq!(stmt["decision"], "allow");
    assert_eq!(stmt["policy"], "ci-reads");
    assert_eq!(stmt["detail"]["text"], "select count(*) from items;");
    let results = env.wait_for_record(|r| r["kind"] == "statement_result");
    let result = &results["detail"]["results"][0];
    assert_eq!(result["statement"], stmt["id"]);
    assert_eq!(result["rows"], 1);
    assert!(result["error"].is_null(), "{result}");
}

#[test]
fn workers_setting_sizes_the_runtime() {
    let mut env = Env::with(Options {
        workers: Some(1),
        ..Options::default()
    });
    let token = env.token("ci-job-42", &["ci"]);
    let out = env.psql(&token, "select count(*) from items;");
    assert!(out.success(), "{}\n{}", out.stderr, env.gateway_log());
    let pid = env.gateway().pid();
    let workers = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "gateway-worker")
        .count();
    assert_eq!(workers, 1, "{}", env.gateway_log());
    assert!(
        env.gateway_log().contains("workers=1"),
        "{}",
        env.gateway_log()
    );
}

#[test]
fn blocked_drop_names_policy_and_rule_and_session_stays_usable() {
    let env = Env::start();
    let token = env.token("ci-job", &["ci"]);
    let out = env.psql(&token, "drop table items;\nselect count(*) from items;\n");
    assert!(
        out.stderr.contains("42501") || out.stderr.contains("permission denied"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("ci-reads"), "{}", out.stderr);
    assert!(out.stderr.contains("DROP *"), "{}", out.stderr);
    // The same session answered the next statement, and the table is intact.
    assert_eq!(out.stdout.trim(), "10", "{}", out.stderr);
    assert_eq!(env.pg.sql("app", "select count(*) from items"), "10");
    let denied = env.wait_for_record(|r| r["kind"] == "statement" && r["decision"] == "deny");
    assert_eq!(denied["rule"], "DROP *");
}

#[test]
fn write_without_a_write_rule_is_default_denied() {
    let env = Env::start();
    let token = env.token("ci-job", &["ci"]);
    let out = env.psql(&token, "insert into items values (99, 'x');");
    assert!(out.stderr.contains("permission denied"), "{}", out.stderr);
    assert!(out.stderr.contains("default deny"), "{}", out.stderr);
    assert_eq!(
        env.pg
            .sql("app", "select count(*) from items where id = 99"),
        "0"
    );
}

#[test]
fn multi_statement_query_with_a_denied_part_runs_none_of_it() {
    let env = Env::start();
    let token = env.token("deployer", &[]);
    // psql sends a line with two statements as one Query message with -c.
    let mut cmd = std::process::Command::new("psql");
    cmd.arg(env.conninfo("require"))
        .args([
            "-X",
            "-At",
            "-c",
            "insert into items values (100, 'a'); drop table items;",
        ])
        .env("PGPASSWORD", &token);
    let out = test_support::run(&mut cmd, crate::env::TIMEOUT);
    assert!(!out.success());
    assert!(out.stderr.contains("DROP *"), "{}", out.stderr);
    assert_eq!(
        env.pg
            .sql("app", "select count(*) from items where id = 100"),
        "0"
    );
}

#[test]
fn writer_principal_can_write_inside_transactions() {
    let env = Env::start();
    let token = env.token("deployer", &[]);
    let out = env.psql(
        &token,
        "begin;\ninsert into items values (200, 'kept');\ncommit;\n\
         begin;\ninsert into items values (201, 'rolled back');\nrollback;\n\
         select count(*) from items where id >= 200;\n",
    );
    assert!(out.success(), "{}", out.stderr);
    assert!(out.stdout.trim().ends_with('1'), "{}", out.stdout);
}

#[test]
fn denied_statement_inside_a_transaction_aborts_it_as_postgres_would() {
    let env = Env::start();
    let token = env.token("deployer", &[]);
    let out = env.psql(
        &token,
        "begin;\ninsert into items values (300, 'x');\ntruncate items;\nselect 1;\nrollback;\nselect count(*) from items where id = 300;\n",
    );
    assert!(out.stderr.contains("TRUNCATE *"), "{}", out.stderr);
    assert!(
        out.stderr.contains("current transaction is aborted"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.trim().ends_with('0'), "{}", out.stdout);
}

#[test]
fn principal_without_a_policy_is_refused_at_login() {
    let env = Env::start();
    let token = env.token("stranger", &["nobody"]);
    let out = env.psql(&token, "select 1;");
    assert!(!out.success());
    assert!(
        out.stderr.contains("no access to connection"),
        "{}",
        out.stderr
    );
    let attempt =
        env.wait_for_record(|r| r["kind"] == "connection_attempt" && r["principal"] == "stranger");
    assert_eq!(attempt["decision"], "deny");
    assert!(attempt["detail"]["reason"]
        .as_str()
        .unwrap()
        .contains("no policy matches"));
}

#[test]
fn bad_tokens_are_refused_with_the_reason_and_recorded() {
    let env = Env::start();
    let cases: Vec<(String, &str)> = vec![
        ("not-a-jwt".into(), "token rejected"),
        (
            env.token_with("ci-job", &["ci"], &["--audience", "someone-else"]),
            "audience",
        ),
        (unsigned_token(&env.issuer), "token rejected"),
    ];
    for (token, expected) in cases {
        let out = env.psql(&token, "select 1;");
        assert!(!out.success(), "token {token:.20} was accepted");
        assert!(
            out.stderr.contains(expected),
            "expected {expected:?} in {}",
            out.stderr
        );
        assert!(!out.stderr.contains(&token), "the token must not be echoed");
    }
    let refused = env
        .records()
        .into_iter()
        .filter(|r| r["kind"] == "connection_attempt" && r["decision"] == "deny")
        .filter(|r| {
            r["detail"]["reason"]
                .as_str()
                .is_some_and(|x| x.contains("token rejected"))
        })
        .count();
    assert_eq!(refused, 3);
    let export = env.cli(&["audit", "export", "--format", "jsonl"]).stdout;
    assert!(!export.contains("not-a-jwt"), "tokens never reach records");
}

#[test]
fn expired_token_is_refused() {
    let env = Env::with(Options {
        leeway: "0s",
        ..Options::default()
    });
    let token = env.token_with("ci-job", &["ci"], &["--ttl", "1s"]);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let out = env.psql(&token, "select 1;");
    assert!(!out.success());
    assert!(out.stderr.contains("expired"), "{}", out.stderr);
}

#[test]
fn token_from_an_unconfigured_issuer_is_refused() {
    let env = Env::start();
    let other = Env::start();
    let token = other.token("ci-job", &["ci"]);
    let out = env.psql(&token, "select 1;");
    assert!(!out.success());
    assert!(out.stderr.contains("token rejected"), "{}", out.stderr);
}

#[test]
fn plaintext_client_is_refused_unless_the_listener_allows_it() {
    let env = Env::start();
    let token = env.token("ci-job", &["ci"]);
    let out = env.psql_mode(&token, "select 1;", "disable");
    assert!(!out.success());
    assert!(out.stderr.contains("requires TLS"), "{}", out.stderr);

    let loopback = Env::with(Options {
        insecure_plaintext: true,
        ..Options::default()
    });
    let token = loopback.token("ci-job", &["ci"]);
    let out = loopback.psql_mode(&token, "select 1;", "disable");
    assert!(out.success(), "{}", out.stderr);
}

#[test]
fn md5_upstream_credentials_work_and_stay_hidden() {
    // md5 goes only to an authenticated server (postgres_upstream_auth.rs).
    let mut env = Env::start();
    let ca = env.pg.ca_cert();
    env.restart_gateway_with(|opts| {
        opts.upstream_user = test_support::MD5_USER;
        opts.upstream_password = test_support::MD5_PASSWORD;
        opts.upstream_tls = "verify-full";
        opts.upstream_ca = Some(ca);
    });
    let token = env.token("ci-job", &["ci"]);
    let out = env.psql(&token, "select current_user;");
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "app_md5");
    assert!(!env.gateway_log().contains(test_support::MD5_PASSWORD));
    assert!(!env.gateway_log().contains(&token));
}

#[test]
fn upstream_tls_require_encrypts_the_upstream_leg() {
    let env = Env::with(Options {
        upstream_tls: "require",
        ..Options::default()
    });
    let token = env.token("ci-job", &["ci"]);
    let out = env.psql(
        &token,
        "select ssl from pg_stat_ssl where pid = pg_backend_pid();",
    );
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "t");
}

#[test]
fn upstream_verify_full_checks_the_servers_certificate() {
    // A certificate for the same names from a key that did not sign ours.
    let dir = test_support::temp_dir();
    let wrong_ca = dir.path().join("other.crt");
    let mut openssl = std::process::Command::new("openssl");
    openssl
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(dir.path().join("other.key"))
        .arg("-out")
        .arg(&wrong_ca);
    let out = test_support::run(&mut openssl, crate::env::TIMEOUT);
    assert!(out.success(), "{}", out.stderr);
    let env = Env::with(Options {
        upstream_tls: "verify-full",
        upstream_ca: Some(wrong_ca),
        ..Options::default()
    });
    let token = env.token("ci-job", &["ci"]);
    let out = env.psql(&token, "select 1;");
    assert!(!out.success());
    assert!(
        out.stderr.contains("upstream unavailable"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("TLS handshake"), "{}", out.stderr);
}

#[test]
fn upstream_verify_full_accepts_the_right_ca() {
    let mut env = Env::start();
    let ca = env.pg.ca_cert();
    env.restart_gateway_with(|opts| {
        opts.upstream_tls = "verify-full";
        opts.upstream_ca = Some(ca.clone());
    });
    let token = env.token("ci-job", &["ci"]);
    let out = env.psql(
        &token,
        "select ssl from pg_stat_ssl where pid = pg_backend_pid();",
    );
    assert!(out.success(), "{}\n{}", out.stderr, env.gateway_log());
    assert_eq!(out.stdout.trim(), "t");
}

/// A JWT with `alg: none` and no signature, naming the right issuer.
fn unsigned_token(issuer: &str) -> String {
    use base64::Engine;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    format!(
        "{}.{}.",
        b64(serde_json::json!({"alg": "none", "typ": "JWT"})),
        b64(
            serde_json::json!({"iss": issuer, "sub": "ci-job", "aud": "portcullis", "groups": ["ci"], "exp": now + 600, "iat": now})
        )
    )
}

const JIT_POLICIES: &str = r#"
  - name: oncall-reads
    match: { principals: ["oncall"] }
    connection: app-db
    allow: [read]
  - name: oncall-emergency-writes
    match: { principals: ["oncall", "jit-only"] }
    connection: app-db
    access: { jit: { max: 1h, approval: required } }
    allow: [read, write]
"#;

#[test]
fn just_in_time_policies_grant_nothing_without_a_grant() {
    let env = Env::with(Options {
        policies: JIT_POLICIES.into(),
        ..Options::default()
    });
    let jit_only = env.token("jit-only", &[]);
    let out = env.psql(&jit_only, "select 1;");
    assert!(!out.success());
    assert!(out.stderr.contains("no active grant"), "{}", out.stderr);

    // Admitted through the standing policy, the jit policy's write rule must not apply.
    let oncall = env.token("oncall", &[]);
    let out = env.psql(
        &oncall,
        "select count(*) from items;\ninsert into items values (77, 'x');\n",
    );
    assert_eq!(out.stdout.trim(), "10", "{}", out.stderr);
    assert!(out.stderr.contains("default deny"), "{}", out.stderr);
    assert_eq!(
        env.pg
            .sql("app", "select count(*) from items where id = 77"),
        "0"
    );
}

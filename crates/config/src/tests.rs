use super::*;

const GOOD: &str = r#"
admin:
  listen: 127.0.0.1:8080
store: sqlite://data/portcullis.db
identity:
  oidc:
    - issuer: http://127.0.0.1:9000
      audience: portcullis
      groups_claim: groups
  approvers:
    groups: [sre-oncall]
connections:
  - name: orders-db
    type: postgres
    listen: 127.0.0.1:15432
    upstream:
      host: 127.0.0.1
      database: orders
      user: app_rw
      password_env: ORDERS_DB_PASSWORD
      tls: prefer
policies:
  - name: ci-reads
    match: { claims: { sub: "repo:acme/shop:*" } }
    connection: orders-db
    allow: [read]
    require_approval: [write]
    deny: ["DROP *", "TRUNCATE *"]
    mask:
      columns: ["customers.email"]
      detect: [credit_card]
  - name: oncall
    match: { groups: [sre] }
    connection: orders-db
    access: { jit: { max: 1h, approval: auto } }
    allow: [read, write]
"#;

#[test]
fn parses_the_documented_shape() {
    let c = Config::parse("p.yaml", GOOD).expect("valid");
    assert_eq!(c.connections.len(), 1);
    let ConnectionConfig::Postgres(pg) = &c.connections[0] else {
        panic!("postgres expected")
    };
    assert_eq!(pg.upstream.port, 5432);
    assert_eq!(pg.upstream.tls, UpstreamTls::Prefer);
    assert_eq!(c.policies[0].access, Access::Standing);
    assert_eq!(
        c.policies[1].access,
        Access::Jit(JitAccess {
            max: HumanDuration(std::time::Duration::from_secs(3600)),
            approval: JitApproval::Auto
        })
    );
    assert_eq!(c.identity.oidc[0].principal_claim, "sub");
}

#[test]
fn unknown_field_names_line_and_field() {
    let bad = GOOD.replace("    deny: [\"DROP *\"", "    denny: [\"DROP *\"");
    let err = Config::parse("p.yaml", &bad).unwrap_err().to_string();
    assert!(err.starts_with("p.yaml:"), "{err}");
    assert!(err.contains("denny"), "{err}");
    let line: usize = err.split(':').nth(1).unwrap().parse().unwrap();
    assert_eq!(
        bad.lines()
            .nth(line - 1)
            .map(|l| l.contains("name: ci-reads") || l.contains("denny")),
        Some(true),
        "{err}"
    );
}

#[test]
fn dangling_policy_connection_is_located() {
    let bad = GOOD.replace(
        "connection: orders-db\n    access",
        "connection: nope-db\n    access",
    );
    let err = Config::parse("p.yaml", &bad).unwrap_err().to_string();
    assert!(err.contains("policies[1].connection"), "{err}");
    assert!(err.contains("nope-db"), "{err}");
    let line: usize = err.split(':').nth(1).unwrap().parse().unwrap();
    assert!(bad.lines().nth(line - 1).unwrap().contains("nope-db"));
}

#[test]
fn plaintext_only_on_loopback() {
    let bad = GOOD.replace(
        "    listen: 127.0.0.1:15432\n",
        "    listen: 0.0.0.0:15432\n    insecure_plaintext: true\n",
    );
    let err = Config::parse("p.yaml", &bad).unwrap_err().to_string();
    assert!(err.contains("insecure_plaintext"), "{err}");
}

#[test]
fn empty_match_is_refused() {
    let bad = GOOD.replace("match: { groups: [sre] }", "match: {}");
    let err = Config::parse("p.yaml", &bad).unwrap_err().to_string();
    assert!(err.contains("policies[1].match"), "{err}");
}

#[test]
fn misspelt_class_is_refused() {
    let bad = GOOD.replace("allow: [read]", "allow: [raed]");
    let err = Config::parse("p.yaml", &bad).unwrap_err().to_string();
    assert!(err.contains("raed"), "{err}");
}

#[test]
fn text_patterns_are_refused_on_their_line_with_the_rule_to_write() {
    let bad = GOOD.replace(
        r#"deny: ["DROP *", "TRUNCATE *"]"#,
        "deny:\n      - DROP *\n      - DELETE FROM orders *",
    );
    let err = Config::parse("p.yaml", &bad).unwrap_err().to_string();
    assert!(err.contains("policies[0].deny"), "{err}");
    assert!(err.contains("write \"delete on orders\""), "{err}");
    let line: usize = err.split(':').nth(1).unwrap().parse().unwrap();
    assert!(
        bad.lines().nth(line - 1).unwrap().contains("DELETE FROM"),
        "{err}"
    );
}

#[test]
fn action_rules_and_legacy_verb_patterns_are_accepted() {
    let good = GOOD.replace("allow: [read]", r#"allow: [read, "insert on audit.log"]"#);
    let good = good.replace(
        "require_approval: [write]",
        r#"require_approval: ["DELETE *", "write on payroll.*", "update on \"Customers\""]"#,
    );
    Config::parse("p.yaml", &good).expect("valid");
    let bad = GOOD.replace("allow: [read]", r#"allow: ["erase on t"]"#);
    let err = Config::parse("p.yaml", &bad).unwrap_err().to_string();
    assert!(err.contains("unknown action \"erase\""), "{err}");
}

const SSH: &str = r#"
identity:
  oidc:
    - issuer: http://127.0.0.1:9000
      audience: portcullis
connections:
  - name: bastion
    type: ssh
    listen: 127.0.0.1:2222
    upstream: { host: 10.0.0.5, user: deploy, private_key_file: keys/deploy, known_host_key: "ssh-ed25519 AAAAC3Nza" }
policies:
  - name: ci-ssh
    match: { groups: [ci] }
    connection: bastion
    allow: [shell, scp, "git *"]
    deny: ["rm *", port_forward]
"#;

#[test]
fn ssh_policies_take_ssh_words_and_command_patterns() {
    let c = Config::parse("p.yaml", SSH).expect("valid");
    let ConnectionConfig::Ssh(ssh) = &c.connections[0] else {
        panic!("ssh expected")
    };
    assert_eq!(ssh.upstream.port, 22);
    // A statement class means nothing on an SSH connection.
    let bad = SSH.replace("allow: [shell,", "allow: [read,");
    let err = Config::parse("p.yaml", &bad).unwrap_err().to_string();
    assert!(err.contains("policies[0].allow"), "{err}");
    assert!(err.contains("neither an SSH word"), "{err}");
    let line: usize = err.split(':').nth(1).unwrap().parse().unwrap();
    assert!(bad.lines().nth(line - 1).unwrap().contains("read"), "{err}");
    // And an SSH word means nothing on a PostgreSQL one.
    let bad = GOOD.replace("allow: [read]", "allow: [shell]");
    assert!(Config::parse("p.yaml", &bad).is_err());
}

#[test]
fn ssh_host_key_must_look_like_known_hosts() {
    let bad = SSH.replace("\"ssh-ed25519 AAAAC3Nza\"", "AAAAC3Nza");
    let err = Config::parse("p.yaml", &bad).unwrap_err().to_string();
    assert!(err.contains("known_host_key"), "{err}");
}

#[test]
fn bad_duration_is_refused() {
    let bad = GOOD.replace("max: 1h", "max: soon");
    assert!(Config::parse("p.yaml", &bad).is_err());
}

#[test]
fn loopback_detection() {
    assert!(is_loopback_listen("127.0.0.1:5432"));
    assert!(is_loopback_listen("[::1]:5432"));
    assert!(!is_loopback_listen("0.0.0.0:5432"));
}

#[test]
fn mask_settings_are_checked_and_located() {
    let with = |from: &str, to: &str| GOOD.replace(from, to);
    let ok = with(
        "detect: [credit_card]",
        "detect: [credit_card]\n      method: partial\n      expressions: mask",
    );
    let c = Config::parse("p.yaml", &ok).expect("valid");
    let mask = c.policies[0].mask.as_ref().expect("mask");
    assert_eq!(mask.method.as_deref(), Some("partial"));
    assert_eq!(mask.expressions.as_deref(), Some("mask"));

    for (bad, field) in [
        (
            with(
                "detect: [credit_card]",
                "detect: [credit_card]\n      method: scramble",
            ),
            "mask.method",
        ),
        (
            with(
                "detect: [credit_card]",
                "detect: [credit_card]\n      expressions: allow",
            ),
            "mask.expressions",
        ),
        (with("detect: [credit_card]", "detect: [cc]"), "mask.detect"),
        (with("[\"customers.email\"]", "[\"email\"]"), "mask.columns"),
        (
            with("[\"customers.email\"]", "[\"a.b.c.d\"]"),
            "mask.columns",
        ),
    ] {
        let err = Config::parse("p.yaml", &bad).unwrap_err().to_string();
        assert!(err.contains(&format!("policies[0].{field}")), "{err}");
        let line: usize = err.split(':').nth(1).unwrap().parse().unwrap();
        let text = bad.lines().nth(line - 1).unwrap();
        assert!(
            ["scramble", "allow", "cc", "email", "a.b.c.d"]
                .iter()
                .any(|w| text.contains(w)),
            "{err} points at {text:?}"
        );
    }
}

#[test]
fn admin_defaults_to_five_minute_approvals_and_no_webhooks() {
    let c = Config::parse("p.yaml", GOOD).expect("valid");
    assert_eq!(
        c.admin.approval_timeout.0,
        std::time::Duration::from_secs(300)
    );
    assert!(c.admin.webhooks.is_empty());
    assert_eq!(c.admin.base_url(), "http://127.0.0.1:8080");
}

#[test]
fn admin_webhooks_and_public_url_parse() {
    let text = GOOD.replace(
        "  listen: 127.0.0.1:8080\n",
        "  listen: 127.0.0.1:8080\n  public_url: https://gate.example/\n  approval_timeout: 90s\n  webhooks:\n    - url: https://hooks.slack.com/services/x\n      format: slack\n    - url: http://127.0.0.1:9999/hook\n      retries: 1\n",
    );
    let c = Config::parse("p.yaml", &text).expect("valid");
    assert_eq!(c.admin.base_url(), "https://gate.example");
    assert_eq!(
        c.admin.approval_timeout.0,
        std::time::Duration::from_secs(90)
    );
    assert_eq!(c.admin.webhooks[0].format, WebhookFormat::Slack);
    assert_eq!(c.admin.webhooks[0].retries, 4);
    assert_eq!(c.admin.webhooks[1].format, WebhookFormat::Json);
    assert_eq!(c.admin.webhooks[1].retries, 1);
}

#[test]
fn bad_webhook_url_is_located() {
    let text = GOOD.replace(
        "  listen: 127.0.0.1:8080\n",
        "  listen: 127.0.0.1:8080\n  webhooks:\n    - url: ftp://hooks\n",
    );
    let err = Config::parse("p.yaml", &text).unwrap_err().to_string();
    assert!(err.contains("p.yaml:5: admin.webhooks[0].url"), "{err}");
}

#[test]
fn unknown_webhook_format_is_refused() {
    let text = GOOD.replace(
        "  listen: 127.0.0.1:8080\n",
        "  listen: 127.0.0.1:8080\n  webhooks:\n    - url: http://x\n      format: teams\n",
    );
    assert!(Config::parse("p.yaml", &text).is_err());
}

#[test]
fn zero_approval_timeout_and_zero_jit_max_are_refused() {
    let text = GOOD.replace(
        "  listen: 127.0.0.1:8080\n",
        "  listen: 127.0.0.1:8080\n  approval_timeout: 0s\n",
    );
    let err = Config::parse("p.yaml", &text).unwrap_err().to_string();
    assert!(err.contains("admin.approval_timeout"), "{err}");
    let text = GOOD.replace("max: 1h", "max: 0s");
    let err = Config::parse("p.yaml", &text).unwrap_err().to_string();
    assert!(err.contains("policies[1].access.jit.max"), "{err}");
}

#[test]
fn bad_admin_listen_is_refused() {
    let text = GOOD.replace("listen: 127.0.0.1:8080", "listen: nowhere");
    let err = Config::parse("p.yaml", &text).unwrap_err().to_string();
    assert!(err.contains("admin.listen"), "{err}");
}

#[test]
fn admin_api_off_loopback_needs_insecure_plaintext() {
    let text = GOOD.replace("listen: 127.0.0.1:8080", "listen: 0.0.0.0:8080");
    let err = Config::parse("p.yaml", &text).unwrap_err().to_string();
    assert!(err.contains("p.yaml:3: admin.listen"), "{err}");
    assert!(err.contains("clear text"), "{err}");
    let text = GOOD.replace(
        "listen: 127.0.0.1:8080",
        "listen: 0.0.0.0:8080\n  insecure_plaintext: true",
    );
    assert!(Config::parse("p.yaml", &text).is_ok());
    let text = GOOD.replace(
        "listen: 127.0.0.1:8080",
        "listen: 0.0.0.0:8080\n  tls: true",
    );
    let c = Config::parse("p.yaml", &text).unwrap();
    assert_eq!(c.admin.base_url(), "https://0.0.0.0:8080");
}

fn pg_upstream(c: &Config, i: usize) -> &PostgresUpstream {
    match &c.connections[i] {
        ConnectionConfig::Postgres(pg) => &pg.upstream,
        _ => panic!("postgres expected"),
    }
}

#[test]
fn a_slash_host_is_a_unix_socket_directory() {
    let c = Config::parse("p.yaml", GOOD).unwrap();
    assert_eq!(pg_upstream(&c, 0).unix_socket(), None);
    for tls in ["prefer", "disable"] {
        let text = GOOD
            .replace("host: 127.0.0.1", "host: /run/postgresql")
            .replace("tls: prefer", &format!("tls: {tls}"));
        let c = Config::parse("p.yaml", &text).unwrap_or_else(|e| panic!("tls: {tls}: {e}"));
        assert_eq!(
            pg_upstream(&c, 0).unix_socket(),
            Some(PathBuf::from("/run/postgresql/.s.PGSQL.5432"))
        );
    }
    let text = GOOD.replace(
        "host: 127.0.0.1",
        "host: /var/run/postgresql/\n      port: 6432",
    );
    let c = Config::parse("p.yaml", &text).unwrap();
    assert_eq!(
        pg_upstream(&c, 0).unix_socket(),
        Some(PathBuf::from("/var/run/postgresql/.s.PGSQL.6432"))
    );
}

#[test]
fn a_unix_socket_upstream_refuses_required_tls_on_its_own_line() {
    // A TCP connection with `tls: require` comes first, and the file has a
    // top-level `tls:` too: the error must point at the socket connection's.
    let tcp_first = GOOD
        .replace(
            "store: sqlite://data/portcullis.db\n",
            "store: sqlite://data/portcullis.db\ntls: { cert: c.pem, key: k.pem }\n",
        )
        .replace(
            "connections:\n",
            "connections:\n  - name: tcp-db\n    type: postgres\n    listen: 127.0.0.1:15433\n    upstream: { host: db.internal, database: d, user: u, tls: require }\n",
        );
    for mode in ["require", "verify-full"] {
        let text = tcp_first
            .replace("host: 127.0.0.1", "host: /run/postgresql")
            .replace("      tls: prefer", &format!("      tls: {mode}"));
        let err = Config::parse("p.yaml", &text).unwrap_err().to_string();
        assert!(err.contains("connections[1].upstream.tls"), "{err}");
        assert!(err.contains(&format!("tls: {mode} cannot be met")), "{err}");
        assert!(err.contains("/run/postgresql/.s.PGSQL.5432"), "{err}");
        assert!(err.contains("never offers TLS"), "{err}");
        let line: usize = err.split(':').nth(1).unwrap().parse().unwrap();
        assert_eq!(
            text.lines().nth(line - 1).map(str::trim),
            Some(format!("tls: {mode}").as_str()),
            "{err}"
        );
    }
    // The same modes are fine on a TCP host.
    let text = tcp_first.replace("      tls: prefer", "      tls: verify-full");
    assert!(Config::parse("p.yaml", &text).is_ok());
}

#[test]
fn workers_default_to_one_per_cpu_and_zero_is_refused_with_its_line() {
    assert_eq!(Config::parse("p.yaml", GOOD).unwrap().workers, None);
    let one = format!("workers: 1\n{GOOD}");
    assert_eq!(
        Config::parse("p.yaml", &one)
            .unwrap()
            .workers
            .map(usize::from),
        Some(1)
    );
    let zero = format!("workers: 0\n{GOOD}");
    let err = Config::parse("p.yaml", &zero).unwrap_err().to_string();
    assert!(err.starts_with("p.yaml:1:"), "{err}");
    assert!(err.contains("workers"), "{err}");
}

fn with_functions(lines: &str) -> String {
    GOOD.replace(
        "      tls: prefer\n",
        &format!("      tls: prefer\n    functions:\n{lines}"),
    )
}

#[test]
fn function_classes_parse_per_connection() {
    let text = with_functions("      read: [app.price_of, total]\n      write: [queue.enqueue]\n");
    let c = Config::parse("p.yaml", &text).unwrap();
    let ConnectionConfig::Postgres(pg) = &c.connections[0] else {
        panic!("postgres expected")
    };
    let entries: Vec<_> = pg.functions.entries().collect();
    assert_eq!(
        entries,
        vec![
            ("read", "app.price_of"),
            ("read", "total"),
            ("write", "queue.enqueue")
        ]
    );
    let ConnectionConfig::Postgres(plain) = &Config::parse("p.yaml", GOOD).unwrap().connections[0]
    else {
        panic!("postgres expected")
    };
    assert_eq!(plain.functions.entries().count(), 0);
}

#[test]
fn bad_function_classes_are_located() {
    // (lines, what the error says, text on the line it points at); serde
    // reports unknown fields of a connection at the connection's start.
    let cases = [
        ("      reads: [f]\n", "reads", "name: orders-db"),
        ("      read: [\"f(int)\"]\n", "functions.read", "f(int)"),
        ("      write: [a.b.c]\n", "functions.write", "a.b.c"),
        (
            "      admin: [pg_catalog.lower]\n",
            "built-in",
            "pg_catalog.lower",
        ),
        (
            "      read: [g]\n      write: [g]\n",
            "listed twice",
            "write: [g]",
        ),
    ];
    for (lines, says, located) in cases {
        let text = with_functions(lines);
        let err = Config::parse("p.yaml", &text).unwrap_err().to_string();
        assert!(err.contains(says), "{lines}: {err}");
        let line: usize = err.split(':').nth(1).unwrap().parse().unwrap();
        assert!(
            text.lines().nth(line - 1).unwrap().contains(located),
            "{lines}: {err}"
        );
    }
}

#[test]
fn upstream_auth_defaults_withhold_passwords_and_binding_require_needs_tls() {
    let c = Config::parse("p.yaml", GOOD).unwrap();
    let up = pg_upstream(&c, 0);
    assert_eq!(up.channel_binding, ChannelBindingMode::Prefer);
    assert!(!up.insecure_password_auth);
    let text = GOOD.replace(
        "      tls: prefer",
        "      tls: require\n      channel_binding: require\n      insecure_password_auth: true",
    );
    let c = Config::parse("p.yaml", &text).unwrap();
    assert_eq!(
        pg_upstream(&c, 0).channel_binding,
        ChannelBindingMode::Require
    );
    assert!(pg_upstream(&c, 0).insecure_password_auth);
    for plain in [
        GOOD.replace(
            "      tls: prefer",
            "      tls: disable\n      channel_binding: require",
        ),
        GOOD.replace("host: 127.0.0.1", "host: /run/postgresql")
            .replace(
                "      tls: prefer",
                "      tls: prefer\n      channel_binding: require",
            ),
    ] {
        let err = Config::parse("p.yaml", &plain).unwrap_err().to_string();
        assert!(
            err.contains("connections[0].upstream.channel_binding: require needs TLS"),
            "{err}"
        );
        let line: usize = err.split(':').nth(1).unwrap().parse().unwrap();
        assert_eq!(
            plain.lines().nth(line - 1).map(str::trim),
            Some("channel_binding: require")
        );
    }
}

#[test]
fn with_several_issuers_policies_and_approvers_name_theirs() {
    let two = GOOD.replace(
        "  approvers:\n",
        "    - issuer: https://ci.example.com\n      audience: portcullis\n  approvers:\n",
    );
    let err = Config::parse("p.yaml", &two).unwrap_err().to_string();
    assert!(
        err.contains("identity.approvers.groups[0]: several issuers are configured"),
        "{err}"
    );
    let qualified = two.replace(
        "groups: [sre-oncall]",
        "groups: [{ issuer: \"http://127.0.0.1:9000\", name: sre-oncall }]",
    );
    let err = Config::parse("p.yaml", &qualified).unwrap_err().to_string();
    assert!(
        err.contains("policies[0].match.issuer: several issuers"),
        "{err}"
    );
    let ok = qualified
        .replace(
            "match: { claims:",
            "match: { issuer: \"https://ci.example.com\", claims:",
        )
        .replace(
            "match: { groups: [sre] }",
            "match: { issuer: \"http://127.0.0.1:9000\", groups: [sre] }",
        );
    let c = Config::parse("p.yaml", &ok).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.identity.approvers.groups[0].is("http://127.0.0.1:9000", "sre-oncall"));
    assert!(!c.identity.approvers.groups[0].is("https://ci.example.com", "sre-oncall"));
    let unknown = ok.replacen(
        "https://ci.example.com\", claims",
        "https://elsewhere.test\", claims",
        1,
    );
    let err = Config::parse("p.yaml", &unknown).unwrap_err().to_string();
    assert!(
        err.contains("\"https://elsewhere.test\" is not a configured issuer"),
        "{err}"
    );
}

#[test]
fn upstream_users_per_level_parse_beside_the_single_user() {
    let c = Config::parse("p.yaml", GOOD).unwrap();
    assert!(pg_upstream(&c, 0).users.is_empty(), "the single user form");
    let text = GOOD.replace(
        "      tls: prefer",
        "      tls: prefer\n      users:\n        read: { user: app_ro, password_file: secrets/ro }\n        ddl:\n          user: app_owner\n          password_env: OWNER_PW",
    );
    let c = Config::parse("p.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
    let up = pg_upstream(&c, 0);
    assert_eq!(up.user, "app_rw");
    let listed: Vec<(&str, &str)> = up
        .users
        .entries()
        .map(|(level, u)| (level, u.user.as_str()))
        .collect();
    assert_eq!(listed, [("read", "app_ro"), ("ddl", "app_owner")]);
}

#[test]
fn upstream_users_errors_name_the_level_and_its_line() {
    let users = |entries: &str| {
        GOOD.replace(
            "      tls: prefer",
            &format!("      tls: prefer\n      users:\n{entries}"),
        )
    };
    for (entries, says, located) in [
        (
            "        write: { user: app_rw }\n        read: { user: \"\" }",
            "connections[0].upstream.users.read.user: must name a role",
            "read: { user: \"\" }",
        ),
        (
            "        write: { user: app_rw, password_env: A, password: b }",
            "connections[0].upstream.users.write.password: give at most one of",
            "write: { user: app_rw",
        ),
        (
            "        reader: { user: app_ro }",
            "unknown field `reader`, expected one of `read`, `write`, `ddl`, `admin`",
            // serde_yaml locates errors inside a tagged connection at the connection.
            "- name: orders-db",
        ),
        (
            "        read: { user: app_ro, password_fil: x }",
            "unknown field `password_fil`",
            "- name: orders-db",
        ),
    ] {
        let text = users(entries);
        let err = Config::parse("p.yaml", &text).unwrap_err().to_string();
        assert!(err.contains(says), "{entries}: {err}");
        let line: usize = err.split(':').nth(1).unwrap().parse().unwrap();
        assert!(
            text.lines().nth(line - 1).unwrap().contains(located),
            "{entries}: {err}"
        );
    }
}

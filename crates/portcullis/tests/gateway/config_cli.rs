//! `portcullis check-config`: a good file passes; a broken one names the
//! file, the line and the field, and exits 2.

use std::process::Command;

use test_support::run;

use crate::env::{BIN, TIMEOUT};

fn check(text: &str) -> test_support::Output {
    let dir = test_support::temp_dir();
    let path = dir.path().join("portcullis.yaml");
    std::fs::write(&path, text).unwrap();
    run(Command::new(BIN).arg("check-config").arg(&path), TIMEOUT)
}

const EXAMPLE: &str = include_str!("../../../../examples/portcullis.yaml");

#[test]
fn the_example_config_is_valid() {
    let out = check(EXAMPLE);
    assert!(out.success(), "{}", out.stderr);
    assert!(out.stdout.contains("ok"), "{}", out.stdout);
}

#[test]
fn a_misspelt_field_is_located_and_exits_2() {
    let broken = EXAMPLE.replace(
        "    deny: [\"drop on *\", \"truncate on *\"]\n    mask:",
        "    denny: [\"drop on *\", \"truncate on *\"]\n    mask:",
    );
    assert_ne!(broken, EXAMPLE, "the example changed; update this test");
    let out = check(&broken);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("portcullis.yaml:"), "{}", out.stderr);
    assert!(out.stderr.contains("denny"), "{}", out.stderr);
}

#[test]
fn a_text_pattern_is_refused_on_its_line_with_the_rule_to_write() {
    let old = EXAMPLE.replace(
        "require_approval: [\"delete on *\"]",
        "require_approval: [\"DELETE FROM customers *\"]",
    );
    assert_ne!(old, EXAMPLE, "the example changed; update this test");
    let out = check(&old);
    let line = refused_at_line(&out);
    assert!(
        old.lines()
            .nth(line - 1)
            .unwrap()
            .contains("DELETE FROM customers"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("require_approval"), "{}", out.stderr);
    assert!(
        out.stderr.contains("write \"delete on customers\""),
        "{}",
        out.stderr
    );
    // The legacy "VERB *" form is still accepted, read as "verb on *".
    let legacy = EXAMPLE.replace("[\"delete on *\"]", "[\"DELETE *\"]");
    assert!(check(&legacy).success());
}

/// The line `check-config` names, after it exits 2.
fn refused_at_line(out: &test_support::Output) -> usize {
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    out.stderr
        .split(':')
        .nth(1)
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("no line number in {}", out.stderr))
}

#[test]
fn a_policy_naming_a_missing_connection_is_located() {
    let broken = EXAMPLE.replacen("connection: orders-db", "connection: billing-db", 1);
    let out = check(&broken);
    let line = refused_at_line(&out);
    assert!(
        broken.lines().nth(line - 1).unwrap().contains("billing-db"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("policies[0].connection"),
        "{}",
        out.stderr
    );
}

#[test]
fn serve_refuses_a_broken_config_with_exit_2() {
    let dir = test_support::temp_dir();
    let path = dir.path().join("portcullis.yaml");
    std::fs::write(&path, "identity: { oidc: [] }\nconnections: 3\n").unwrap();
    let out = run(
        Command::new(BIN).arg("serve").arg("--config").arg(&path),
        TIMEOUT,
    );
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("connections"), "{}", out.stderr);
}

#[test]
fn required_tls_to_a_unix_socket_upstream_is_located_and_exits_2() {
    let socket = EXAMPLE.replacen("      host: 127.0.0.1", "      host: /run/postgresql", 1);
    assert_ne!(socket, EXAMPLE, "the example changed; update this test");
    assert!(check(&socket).success(), "tls: prefer is plain on a socket");
    let broken = socket.replacen("      tls: prefer", "      tls: require", 1);
    let out = check(&broken);
    let line = refused_at_line(&out);
    assert_eq!(
        broken.lines().nth(line - 1).map(str::trim),
        Some("tls: require"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("connections[0].upstream.tls: tls: require cannot be met over the Unix socket /run/postgresql/.s.PGSQL.54329"),
        "{}",
        out.stderr
    );
}

//! schemathesis against `docs/admin-api.yaml`: every operation, generated
//! valid and invalid requests, every check, on a live gateway with a
//! pending grant and a held statement to act on.

use std::process::Command;
use std::time::Duration;

use crate::env::{Env, Options};
use crate::jit_grants::request;
use crate::jit_support::{psql_in_background, wait_for_pending};

const POLICIES: &str = r#"
  - name: ci-jit
    match: { groups: [ci] }
    connection: app-db
    access: { jit: { max: 1h, approval: required } }
    allow: [read]
    require_approval: [write]
  - name: bob-writes-approved
    match: { principals: [bob] }
    connection: app-db
    allow: [read]
    require_approval: [write]
"#;

#[test]
fn jit_admin_api_passes_schemathesis_against_its_spec() {
    let env = Env::with(Options {
        policies: POLICIES.to_string(),
        ..Options::default()
    });
    let ci = env.token("ci", &["ci"]);
    let bob = env.token("bob", &[]);
    let alice = env.token("alice", &["sre"]);
    request(&env, &ci, "10m");
    let held = psql_in_background(&env, &bob, "update items set name = 'x' where id = 1;");
    wait_for_pending(
        || env.cli_json(&alice, &["approvals", "list"]),
        "update items",
    );

    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let spec = format!("{root}/docs/admin-api.yaml");
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/schemathesis/schemathesis.toml"
    );
    let mut cmd = Command::new("schemathesis");
    cmd.current_dir(env.dir())
        .arg("--config-file")
        .arg(config)
        .args(["run", &spec, "--url", &env.admin_url()])
        .args(["--checks", "all", "--max-examples", "25", "--seed", "17"])
        .args([
            "--workers",
            "1",
            "--no-color",
            "--generation-database",
            "none",
        ])
        .args(["--header", &format!("Authorization: Bearer {alice}")])
        .env("SCHEMATHESIS_HOOKS", "")
        .env("NO_COLOR", "1");
    let out = test_support::run(&mut cmd, Duration::from_secs(600));
    println!("{}", out.stdout);
    assert!(
        out.success(),
        "schemathesis found problems:\n{}\n{}\ngateway log:\n{}",
        out.stdout,
        out.stderr,
        env.gateway_log()
    );
    // Nothing it sent brought the gateway down or approved anything.
    let after = env.psql(&ci, "select 1;");
    assert!(after.stderr.contains("no active grant"), "{}", after.stderr);
    drop(held);
}

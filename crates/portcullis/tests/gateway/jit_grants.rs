//! Just-in-time grants end to end: real psql through the gateway, grants
//! requested and decided with the `portcullis grants` CLI.

use crate::env::{Env, Options};
use crate::jit_http::Receiver;
use crate::jit_support::psql_in_background;

/// `ci` has no standing access: reads only inside a grant (max 1h, a human
/// approves); `sre` members approve.
pub const JIT_POLICIES: &str = r#"
  - name: ci-jit
    match: { groups: [ci] }
    connection: app-db
    access: { jit: { max: 1h, approval: required } }
    allow: [read]
"#;

pub fn jit_env(policies: &str) -> Env {
    Env::with(Options {
        policies: policies.to_string(),
        ..Options::default()
    })
}

/// `grants request` for app-db as the holder of `token`.
pub fn ask(env: &Env, token: &str, duration: &str, reason: &str) -> test_support::Output {
    env.cli_as(
        token,
        &[
            "grants",
            "request",
            "--connection",
            "app-db",
            "--duration",
            duration,
            "--reason",
            reason,
            "--json",
        ],
    )
}

/// Requests a grant as `token` and returns it.
pub fn request_grant(env: &Env, token: &str, duration: &str, reason: &str) -> serde_json::Value {
    let out = ask(env, token, duration, reason);
    assert!(out.success(), "grants request failed: {}", out.stderr);
    serde_json::from_str(&out.stdout).expect("grant JSON")
}

/// Requests a grant as `token` and returns its id.
pub fn request(env: &Env, token: &str, duration: &str) -> String {
    request_grant(env, token, duration, "incident 42")["id"]
        .as_str()
        .expect("grant id")
        .to_string()
}

fn grant_events(env: &Env, id: &str) -> Vec<String> {
    env.records()
        .into_iter()
        .filter(|r| r["kind"] == "grant" && r["detail"]["id"] == id)
        .map(|r| r["decision"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn jit_principal_is_refused_until_approved_and_revoke_cuts_the_session() {
    let env = jit_env(JIT_POLICIES);
    let ci = env.token("ci", &["ci"]);
    let alice = env.token("alice", &["sre"]);

    let before = env.psql(&ci, "select count(*) from items;");
    assert!(!before.success());
    assert!(
        before.stderr.contains("no active grant"),
        "{}",
        before.stderr
    );

    let id = request(&env, &ci, "15m");
    let pending = env.psql(&ci, "select count(*) from items;");
    assert!(
        pending.stderr.contains("no active grant"),
        "{}",
        pending.stderr
    );

    let approved = env.cli_json(&alice, &["grants", "approve", &id]);
    assert_eq!(approved["status"], "active");
    assert_eq!(approved["decided_by"], "alice");
    let inside = env.psql(&ci, "select count(*) from items;");
    assert!(inside.success(), "{}", inside.stderr);
    assert_eq!(inside.stdout.trim(), "10");

    // A live session under the grant ends the moment it is revoked.
    let running = psql_in_background(&env, &ci, "select pg_sleep(50);");
    env.wait_for_record(|r| {
        r["kind"] == "statement"
            && r["detail"]["grant"] == id.as_str()
            && r["detail"]["text"] == "select pg_sleep(50);"
    });
    let revoked = env.cli_as(&alice, &["grants", "revoke", &id, "--reason", "done"]);
    assert!(revoked.success(), "{}", revoked.stderr);
    let cut = running.join().unwrap();
    assert!(!cut.timed_out);
    assert!(
        cut.stderr
            .contains(&format!("grant {id} was revoked by alice: done")),
        "{}",
        cut.stderr
    );
    let after = env.psql(&ci, "select 1;");
    assert!(after.stderr.contains("no active grant"), "{}", after.stderr);

    assert_eq!(
        grant_events(&env, &id),
        ["requested", "approved", "revoked"]
    );
    // The cut session's end names why.
    let end = env.wait_for_record(|r| {
        r["kind"] == "session_end"
            && r["detail"]["grant"] == id.as_str()
            && r["detail"]["statements"] == 1
            && r["detail"]["reason"] != "client terminated"
    });
    assert_eq!(
        end["detail"]["reason"],
        format!("access ended: grant {id} was revoked by alice: done")
    );
    assert!(env.cli(&["audit", "verify"]).success());
}

#[test]
fn jit_session_is_cut_when_the_grant_expires() {
    let env = jit_env(JIT_POLICIES);
    let ci = env.token("ci", &["ci"]);
    let alice = env.token("alice", &["sre"]);
    let id = request(&env, &ci, "3s");
    env.cli_json(&alice, &["grants", "approve", &id]);
    let out = psql_in_background(&env, &ci, "select pg_sleep(50);")
        .join()
        .unwrap();
    assert!(!out.timed_out);
    assert!(
        out.stderr.contains(&format!("grant {id} expired")),
        "{}",
        out.stderr
    );
    env.wait_for_record(|r| {
        r["kind"] == "grant" && r["decision"] == "expired" && r["detail"]["id"] == id.as_str()
    });
    let listed = env.cli_json(&ci, &["grants", "list"]);
    assert_eq!(listed[0]["status"], "expired");
}

#[test]
fn jit_self_approval_and_grantee_extension_are_refused() {
    let env = jit_env(JIT_POLICIES);
    // An approver who also has jit access asks for it, then tries to approve it.
    let carol = env.token("carol", &["ci", "sre"]);
    let id = request(&env, &carol, "10m");
    let own = env.cli_as(&carol, &["grants", "approve", &id]);
    assert!(!own.success());
    assert!(
        own.stderr.contains("own request") && own.stderr.contains("403"),
        "{}",
        own.stderr
    );
    let still = env.cli_json(&carol, &["grants", "list"]);
    assert_eq!(still[0]["status"], "pending");
    // Asking again while the request is open would be an extension.
    let again = ask(&env, &carol, "1h", "more");
    assert!(again.stderr.contains("409"), "{}", again.stderr);
    // Longer than the policy's max.
    let ci = env.token("ci", &["ci"]);
    let long = ask(&env, &ci, "2h", "x");
    assert!(
        long.stderr.contains("longer than the policy's max"),
        "{}",
        long.stderr
    );
}

#[test]
fn jit_grant_state_survives_a_gateway_restart() {
    let mut env = jit_env(JIT_POLICIES);
    let ci = env.token("ci", &["ci"]);
    let alice = env.token("alice", &["sre"]);
    let id = request(&env, &ci, "30m");
    env.cli_json(&alice, &["grants", "approve", &id]);
    let pending_id = {
        let dave = env.token("dave", &["ci"]);
        request(&env, &dave, "10m")
    };
    env.restart_gateway_with(|_| {});
    let inside = env.psql(&ci, "select count(*) from items;");
    assert!(inside.success(), "{}", inside.stderr);
    let all = env.cli_json(&alice, &["grants", "list"]);
    let status = |gid: &str| {
        all.as_array()
            .unwrap()
            .iter()
            .find(|g| g["id"] == gid)
            .map(|g| g["status"].clone())
    };
    assert_eq!(status(&id), Some("active".into()));
    assert_eq!(status(&pending_id), Some("pending".into()));
    // And it can still be acted on after the restart.
    env.cli_json(&alice, &["grants", "deny", &pending_id]);
}

#[test]
fn jit_auto_approval_grants_at_once_and_is_recorded() {
    let env = jit_env(&JIT_POLICIES.replace("approval: required", "approval: auto"));
    let ci = env.token("ci", &["ci"]);
    let g = request_grant(&env, &ci, "5m", "deploy");
    assert_eq!(g["status"], "active");
    assert_eq!(g["decided_by"], "auto");
    let id = g["id"].as_str().unwrap();
    let out = env.psql(&ci, "select count(*) from items;");
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(grant_events(&env, id), ["requested", "approved"]);
    let stmt = env.wait_for_record(|r| r["kind"] == "statement" && r["principal"] == "ci");
    assert_eq!(stmt["detail"]["grant"], id);
}

#[test]
fn jit_rules_do_not_apply_to_a_standing_session_without_a_grant() {
    // ci reads by standing policy; writes only through a grant.
    let policies = r#"
  - name: ci-reads
    match: { groups: [ci] }
    connection: app-db
    allow: [read]
  - name: ci-jit-writes
    match: { groups: [ci] }
    connection: app-db
    access: { jit: { max: 1h, approval: auto } }
    allow: [write]
"#;
    let env = jit_env(policies);
    let ci = env.token("ci", &["ci"]);
    let update = "update items set name = 'x' where id = 1;";
    let standing = env.psql(&ci, update);
    assert!(
        standing.stderr.contains("42501") || standing.stderr.contains("permission denied"),
        "{}",
        standing.stderr
    );
    request(&env, &ci, "5m");
    let granted = env.psql(&ci, update);
    assert!(
        granted.success() && granted.stderr.is_empty(),
        "{}",
        granted.stderr
    );
}

#[test]
fn jit_grant_requests_are_announced_even_past_a_receiver_that_never_answers() {
    // A receiver that accepts and never answers must hold up neither the
    // request nor the other webhook.
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let receiver = Receiver::start(0);
    let env = Env::with(Options {
        policies: JIT_POLICIES.to_string(),
        admin_extra: format!(
            "  webhooks:\n    - url: http://{}/hook\n    - url: {}\n",
            black_hole.local_addr().unwrap(),
            receiver.url("/hook")
        ),
        ..Options::default()
    });
    let ci = env.token("ci", &["ci"]);
    let id = request(&env, &ci, "15m");
    let hook = receiver.wait_for(1, |b| b["event"] == "grant_requested");
    assert_eq!(hook["id"], id.as_str());
    assert_eq!(hook["grant"]["principal"], "ci");
    assert_eq!(hook["grant"]["reason"], "incident 42");
    assert_eq!(
        hook["approve"]["url"],
        format!("{}/v1/grants/{id}/approve", env.admin_url())
    );
    assert_eq!(
        hook["cli"],
        format!("portcullis grants approve {id} --admin {}", env.admin_url())
    );
    drop(black_hole);
}

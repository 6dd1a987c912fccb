//! Just-in-time access on SSH, end to end with the real OpenSSH client: a
//! `jit` principal logs in only inside a grant, the session is cut when the
//! grant is revoked, and a held exec waits for `portcullis approvals`.

use serde_json::Value;

use crate::jit_support::wait_for_pending;
use crate::ssh_env::SshEnv;

/// `ci` has no standing access to the bastion: a few commands inside a grant.
const JIT_SSH: &str = r#"
  - name: ci-ssh-jit
    match: { groups: [ci] }
    connection: bastion
    access: { jit: { max: 1h, approval: required } }
    allow: ["echo *", "sleep *"]
"#;

/// `ci` may echo; appending to a file (`tee -a`) waits for an approver.
const HELD_SSH: &str = r#"
  - name: ci-ssh
    match: { groups: [ci] }
    connection: bastion
    allow: ["echo *"]
    require_approval: ["tee -a *"]
"#;

fn refused_for_no_grant(env: &SshEnv) -> Value {
    env.wait_for_record(|r| {
        r["kind"] == "connection_attempt"
            && r["decision"] == "deny"
            && r["principal"] == "ci-job"
            && r["detail"]["reason"]
                .as_str()
                .unwrap_or("")
                .contains("no active grant")
    })
}

#[test]
fn ssh_jit_principal_is_refused_before_a_grant_admitted_inside_it_and_cut_on_revoke() {
    let env = SshEnv::with(JIT_SSH, None);
    let ci = env.ci_token();
    let alice = env.token("alice", &["sre"]);

    let before = env.ssh(&ci, &["echo hi"]);
    assert_eq!(before.code, Some(255), "{}", before.stderr);
    assert!(
        before.stderr.contains("Permission denied"),
        "{}",
        before.stderr
    );
    let attempt = refused_for_no_grant(&env);
    assert!(
        attempt["detail"]["reason"]
            .as_str()
            .unwrap()
            .contains("portcullis grants request --connection bastion"),
        "{attempt}"
    );

    let grant = env.cli_json(
        &ci,
        &[
            "grants",
            "request",
            "--connection",
            "bastion",
            "--duration",
            "15m",
            "--reason",
            "incident 42",
        ],
    );
    let id = grant["id"].as_str().expect("grant id").to_string();
    let approved = env.cli_json(&alice, &["grants", "approve", &id]);
    assert_eq!(approved["status"], "active");

    let inside = env.ssh(&ci, &["echo inside the grant"]);
    assert_eq!(
        (inside.code, inside.stdout.as_str()),
        (Some(0), "inside the grant\n"),
        "{}\n{}",
        inside.stderr,
        env.gateway_log()
    );
    let ran = env.wait_for_record(|r| {
        r["kind"] == "statement" && r["detail"]["text"] == "echo inside the grant"
    });
    assert_eq!(ran["decision"], "allow");
    assert_eq!(ran["policy"], "ci-ssh-jit");
    assert_eq!(ran["detail"]["grant"], id.as_str());
    assert_eq!(env.result_of(&ran)["exit_status"], 0);
    env.wait_for_record(|r| r["kind"] == "session_start" && r["detail"]["grant"] == id.as_str());

    // A live session under the grant ends the moment it is revoked.
    let running = env.ssh_in_background(&ci, "sleep 50");
    env.wait_for_record(|r| {
        r["kind"] == "statement"
            && r["detail"]["text"] == "sleep 50"
            && r["detail"]["grant"] == id.as_str()
    });
    let revoked = env.cli_as(&alice, &["grants", "revoke", &id, "--reason", "done"]);
    assert!(revoked.success(), "{}", revoked.stderr);
    let cut = running.join().unwrap();
    assert!(!cut.timed_out, "{}", cut.stderr);
    assert_eq!(cut.code, Some(255), "{}", cut.stderr);
    assert!(
        cut.stderr
            .contains(&format!("grant {id} was revoked by alice: done")),
        "{}",
        cut.stderr
    );
    let end = env.wait_for_record(|r| {
        r["kind"] == "session_end"
            && r["detail"]["grant"] == id.as_str()
            && r["detail"]["reason"] != "client disconnected"
    });
    assert_eq!(
        end["detail"]["reason"],
        format!("access ended: grant {id} was revoked by alice: done")
    );

    let after = env.ssh(&ci, &["echo hi"]);
    assert_eq!(after.code, Some(255), "{}", after.stderr);
    assert!(env.cli(&["audit", "verify"]).success());
}

/// The pending approval of `command`, as an approver sees it.
fn pending(env: &SshEnv, approver: &str, command: &str) -> Value {
    wait_for_pending(|| env.cli_json(approver, &["approvals", "list"]), command)
}

#[test]
fn ssh_held_exec_runs_once_after_approval_with_its_input() {
    let env = SshEnv::with(HELD_SSH, None);
    let ci = env.ci_token();
    let alice = env.token("alice", &["sre"]);
    let file = env.sshd.dir().join("appended.txt");
    let command = format!("tee -a {}", file.display());

    let held = env.ssh_in_background_with_input(&ci, &command, b"ran\n");
    let approval = pending(&env, &alice, &command);
    let id = approval["id"].as_str().expect("approval id").to_string();
    assert_eq!(approval["principal"], "ci-job");
    assert_eq!(approval["connection"], "bastion");
    assert_eq!(approval["statement"], command.as_str());
    assert!(!file.exists(), "ran before approval");
    // Other sessions go on while it waits.
    let other = env.ssh(&ci, &["echo meanwhile"]);
    assert_eq!(other.stdout, "meanwhile\n", "{}", other.stderr);

    let approved = env.cli_json(&alice, &["approvals", "approve", &id]);
    assert_eq!(approved["status"], "approved");
    let out = held.join().unwrap();
    assert_eq!(out.code, Some(0), "{}\n{}", out.stderr, env.gateway_log());
    assert_eq!(out.stdout, "ran\n");
    assert!(
        out.stderr.contains(&format!(
            "portcullis: awaiting approval {id}, see {}/v1/approvals/{id}",
            env.admin_url()
        )),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "ran\n");

    let record =
        env.wait_for_record(|r| r["kind"] == "statement" && r["detail"]["approval"] == id.as_str());
    assert_eq!(record["decision"], "allow");
    assert_eq!(record["rule"], "tee -a *");
    assert_eq!(record["detail"]["text"], command.as_str());
    assert_eq!(env.result_of(&record)["exit_status"], 0);
    let twice = env.cli_as(&alice, &["approvals", "approve", &id]);
    assert!(twice.stderr.contains("409"), "{}", twice.stderr);
}

#[test]
fn ssh_held_exec_is_refused_with_126_after_denial() {
    let env = SshEnv::with(HELD_SSH, None);
    let ci = env.ci_token();
    let alice = env.token("alice", &["sre"]);
    let file = env.sshd.dir().join("appended.txt");
    let command = format!("tee -a {}", file.display());

    let held = env.ssh_in_background_with_input(&ci, &command, b"ran\n");
    let id = pending(&env, &alice, &command)["id"]
        .as_str()
        .expect("approval id")
        .to_string();
    let denied = env.cli_as(&alice, &["approvals", "deny", &id, "--reason", "not now"]);
    assert!(denied.success(), "{}", denied.stderr);
    let out = held.join().unwrap();
    assert_eq!(out.code, Some(126), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "portcullis: approval {id} was denied by alice: not now"
        )),
        "{}",
        out.stderr
    );
    assert!(!file.exists(), "the denied command ran");
    let record =
        env.wait_for_record(|r| r["kind"] == "statement" && r["detail"]["approval"] == id.as_str());
    assert_eq!(record["decision"], "deny");
}

#[test]
fn ssh_held_exec_is_abandoned_when_the_client_disconnects() {
    let env = SshEnv::with(HELD_SSH, None);
    let ci = env.ci_token();
    let alice = env.token("alice", &["sre"]);
    let file = env.sshd.dir().join("appended.txt");
    let command = format!("tee -a {}", file.display());

    let mut child = env.spawn_ssh(&ci, &command);
    let id = pending(&env, &alice, &command)["id"]
        .as_str()
        .expect("approval id")
        .to_string();
    child.kill().expect("kill ssh");
    let _ = child.wait();
    env.wait_for_record(|r| {
        r["kind"] == "approval" && r["decision"] == "abandoned" && r["detail"]["id"] == id.as_str()
    });
    let late = env.cli_as(&alice, &["approvals", "approve", &id]);
    assert!(late.stderr.contains("409"), "{}", late.stderr);
    assert!(!file.exists(), "the abandoned command ran");
}

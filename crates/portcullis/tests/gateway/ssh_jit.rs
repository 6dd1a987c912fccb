//! Just-in-time access on SSH, end to end with the real OpenSSH client: a
//! `jit` principal logs in only inside a grant, the session is cut when the
//! grant is revoked, and a held exec waits for `portcullis approvals`.

use std::path::PathBuf;
use std::thread::JoinHandle;

use serde_json::Value;
use test_support::Output;

use crate::jit_support::wait_for_pending;
use crate::ssh_env::SshEnv;

/// `ci` has no standing access to the bastion: a few commands inside a
/// grant, and appending to a file (`tee -a`) also needs an approver.
const JIT_SSH: &str = r#"
  - name: ci-ssh-jit
    match: { groups: [ci] }
    connection: bastion
    access: { jit: { max: 1h, approval: required } }
    allow: ["echo *", "sleep *"]
    require_approval: ["tee -a *"]
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

    let before = env.ssh_verbose(&ci, &["echo hi"]);
    assert_eq!(before.code, Some(255), "{}", before.stderr);
    assert!(
        before.stderr.contains("Permission denied"),
        "{}",
        before.stderr
    );
    // The client is told how to get in, as a PostgreSQL client is.
    assert!(
        before
            .stderr
            .contains("portcullis grants request --connection"),
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

    // Live sessions under the grant, one running and one waiting for an
    // approver, end the moment it is revoked; the wait is abandoned.
    let running = env.ssh_in_background(&ci, "sleep 50");
    env.wait_for_record(|r| {
        r["kind"] == "statement"
            && r["detail"]["text"] == "sleep 50"
            && r["detail"]["grant"] == id.as_str()
    });
    let file = env.sshd.dir().join("appended.txt");
    let command = format!("tee -a {}", file.display());
    let held = env.ssh_in_background(&ci, &command);
    let approval = wait_for_pending(|| env.cli_json(&alice, &["approvals", "list"]), &command);
    assert_eq!(approval["grant"], id.as_str());
    let revoked = env.cli_as(&alice, &["grants", "revoke", &id, "--reason", "done"]);
    assert!(revoked.success(), "{}", revoked.stderr);
    for session in [running, held] {
        let cut = session.join().unwrap();
        assert!(!cut.timed_out, "{}", cut.stderr);
        assert_eq!(cut.code, Some(255), "{}", cut.stderr);
        assert!(
            cut.stderr
                .contains(&format!("grant {id} was revoked by alice: done")),
            "{}",
            cut.stderr
        );
    }
    env.wait_for_record(|r| {
        r["kind"] == "approval"
            && r["decision"] == "abandoned"
            && r["detail"]["id"] == approval["id"]
    });
    assert!(!file.exists(), "the held command ran");
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

/// `ci-job` runs `tee -a FILE` (held by [`HELD_SSH`]); `alice` decides.
struct HeldExec {
    env: SshEnv,
    ci: String,
    alice: String,
    file: PathBuf,
    command: String,
}

impl HeldExec {
    fn new() -> HeldExec {
        Self::with_timeout("5m")
    }

    fn with_timeout(approval_timeout: &str) -> HeldExec {
        let env = SshEnv::configured(HELD_SSH, None, approval_timeout);
        let file = env.sshd.dir().join("appended.txt");
        HeldExec {
            ci: env.ci_token(),
            alice: env.token("alice", &["sre"]),
            command: format!("tee -a {}", file.display()),
            file,
            env,
        }
    }

    /// Runs the command with `ran` on its stdin, on its own thread.
    fn run(&self) -> JoinHandle<Output> {
        self.env
            .ssh_in_background_with_input(&self.ci, &self.command, b"ran\n")
    }

    /// The command's approval once it is pending, as alice sees it.
    fn pending(&self) -> Value {
        let list = || self.env.cli_json(&self.alice, &["approvals", "list"]);
        wait_for_pending(list, &self.command)
    }

    fn pending_id(&self) -> String {
        self.pending()["id"]
            .as_str()
            .expect("approval id")
            .to_string()
    }

    /// `approvals VERB ID ARGS...` as alice.
    fn decide(&self, verb: &str, id: &str, args: &[&str]) -> Output {
        let mut all = vec!["approvals", verb, id];
        all.extend_from_slice(args);
        self.env.cli_as(&self.alice, &all)
    }

    /// The command's record once its approval `id` is settled.
    fn record(&self, id: &str) -> Value {
        self.env
            .wait_for_record(|r| r["kind"] == "statement" && r["detail"]["approval"] == id)
    }
}

#[test]
fn ssh_held_exec_runs_once_after_approval_with_its_input() {
    let held = HeldExec::new();
    let env = &held.env;
    let running = held.run();
    let approval = held.pending();
    let id = approval["id"].as_str().expect("approval id").to_string();
    assert_eq!(approval["principal"], "ci-job");
    assert_eq!(approval["connection"], "bastion");
    assert_eq!(approval["statement"], held.command.as_str());
    assert!(!held.file.exists(), "ran before approval");
    // Other sessions go on while it waits.
    let other = env.ssh(&held.ci, &["echo meanwhile"]);
    assert_eq!(other.stdout, "meanwhile\n", "{}", other.stderr);

    let approved = held.decide("approve", &id, &[]);
    assert!(approved.success(), "{}", approved.stderr);
    let out = running.join().unwrap();
    assert_eq!(out.code, Some(0), "{}\n{}", out.stderr, env.gateway_log());
    assert_eq!(out.stdout, "ran\n");
    let awaiting = format!(
        "portcullis: awaiting approval {id}, see {}/v1/approvals/{id}",
        env.admin_url()
    );
    assert!(out.stderr.contains(&awaiting), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&held.file).unwrap(), "ran\n");

    let record = held.record(&id);
    assert_eq!(record["decision"], "allow");
    assert_eq!(record["rule"], "tee -a *");
    assert_eq!(record["detail"]["text"], held.command.as_str());
    assert_eq!(env.result_of(&record)["exit_status"], 0);
    let twice = held.decide("approve", &id, &[]);
    assert!(twice.stderr.contains("409"), "{}", twice.stderr);
}

#[test]
fn ssh_held_exec_is_refused_with_126_after_denial() {
    let held = HeldExec::new();
    let running = held.run();
    let id = held.pending_id();
    let denied = held.decide("deny", &id, &["--reason", "not now"]);
    assert!(denied.success(), "{}", denied.stderr);
    let out = running.join().unwrap();
    assert_eq!(out.code, Some(126), "{}", out.stderr);
    let refusal = format!("portcullis: approval {id} was denied by alice: not now");
    assert!(out.stderr.contains(&refusal), "{}", out.stderr);
    assert!(!held.file.exists(), "the denied command ran");
    assert_eq!(held.record(&id)["decision"], "deny");
}

#[test]
fn ssh_held_exec_is_refused_with_126_when_nobody_answers() {
    let held = HeldExec::with_timeout("1s");
    let out = held.run().join().unwrap();
    assert_eq!(out.code, Some(126), "{}", out.stderr);
    assert!(
        out.stderr.contains("portcullis: awaiting approval a-"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("timed out: no approver answered in time"),
        "{}",
        out.stderr
    );
    assert!(!held.file.exists(), "the timed-out command ran");
    let timed_out = held
        .env
        .wait_for_record(|r| r["kind"] == "approval" && r["decision"] == "timed_out");
    let id = timed_out["detail"]["id"].as_str().expect("approval id");
    assert_eq!(held.record(id)["decision"], "deny");
}

#[test]
fn ssh_held_exec_is_abandoned_when_the_client_disconnects() {
    let held = HeldExec::new();
    let mut child = held.env.spawn_ssh(&held.ci, &held.command);
    let id = held.pending_id();
    child.kill().expect("kill ssh");
    let _ = child.wait();
    held.env.wait_for_record(|r| {
        r["kind"] == "approval" && r["decision"] == "abandoned" && r["detail"]["id"] == id.as_str()
    });
    let late = held.decide("approve", &id, &[]);
    assert!(late.stderr.contains("409"), "{}", late.stderr);
    assert!(!held.file.exists(), "the abandoned command ran");
}

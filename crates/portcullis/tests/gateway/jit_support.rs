//! psql sessions the jit tests keep running while they act on grants and
//! approvals (held statements block; revoked grants cut them), and waiting
//! for what approvers see.

use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use test_support::{run_with_input, Output};

use crate::env::{Env, TIMEOUT};

fn psql(env: &Env, token: &str) -> Command {
    let mut cmd = Command::new("psql");
    cmd.arg(env.conninfo("require"))
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=0"])
        .env("PGPASSWORD", token)
        .env("PGCONNECT_TIMEOUT", "20");
    cmd
}

/// psql with `sql` on stdin, on its own thread.
pub fn psql_in_background(env: &Env, token: &str, sql: &str) -> thread::JoinHandle<Output> {
    let mut cmd = psql(env, token);
    cmd.args(["-f", "-"]);
    let sql = sql.to_string();
    thread::spawn(move || run_with_input(&mut cmd, Some(sql.as_bytes()), TIMEOUT))
}

/// psql running `sql`, spawned directly so the test can signal or kill it.
pub fn spawn_psql(env: &Env, token: &str, sql: &str) -> Child {
    psql(env, token)
        .args(["-c", sql])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn psql")
}

/// Waits until `list` (an approver's `approvals list --json`) shows a
/// pending approval whose statement contains `statement`, and returns it.
pub fn wait_for_pending(
    list: impl Fn() -> serde_json::Value,
    statement: &str,
) -> serde_json::Value {
    for _ in 0..300 {
        let list = list();
        if let Some(a) = list.as_array().unwrap().iter().find(|a| {
            a["status"] == "pending" && a["statement"].as_str().unwrap_or("").contains(statement)
        }) {
            return a.clone();
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("no pending approval for {statement:?} in {:#}", list());
}

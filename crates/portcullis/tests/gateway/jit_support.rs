//! psql sessions the jit tests keep running while they act on grants and
//! approvals (held statements block; revoked grants cut them).

use std::process::{Child, Command, Stdio};
use std::thread;

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

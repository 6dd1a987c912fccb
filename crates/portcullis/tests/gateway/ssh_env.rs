//! One SSH gateway environment per test: a real sshd, the dev issuer and
//! `portcullis serve` with one `type: ssh` connection, each on its own free
//! port, all torn down on drop. Clients are the real OpenSSH `ssh` and
//! `scp`, given the token through `SSH_ASKPASS` as a CI job's script would.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use test_support::{
    free_port, quiet_client_options, run, run_with_input, wait_for_port, Output, Process, SshServer,
};

use crate::env::{self, BIN, TIMEOUT};

/// `ci` may run a few commands, open a shell and scp; `rm` is denied and
/// `systemctl` needs an approver.
pub const SSH_POLICIES: &str = r#"
  - name: ci-ssh
    match: { groups: [ci] }
    connection: bastion
    allow: [shell, scp, "echo *", "cat *", "sh *", "false*", "ls *"]
    require_approval: ["systemctl *"]
    deny: ["rm *"]
"#;

pub struct SshEnv {
    pub sshd: SshServer,
    pub issuer: String,
    pub gw_port: u16,
    /// The admin API's port, for `grants` and `approvals` (members of group
    /// `sre` approve).
    pub admin_port: u16,
    pub config: PathBuf,
    idp: Process,
    gateway: Option<Process>,
    dir: tempfile::TempDir,
}

impl SshEnv {
    pub fn start() -> SshEnv {
        Self::with(SSH_POLICIES, None)
    }

    /// `host_key`: what the gateway pins for the upstream (the real one when `None`).
    pub fn with(policies: &str, host_key: Option<String>) -> SshEnv {
        Self::configured(policies, host_key, "5m")
    }

    /// Like [`SshEnv::with`], with held requests refused after `approval_timeout`.
    pub fn configured(policies: &str, host_key: Option<String>, approval_timeout: &str) -> SshEnv {
        Self::build(policies, host_key, approval_timeout, None)
    }

    /// The default environment with its audit store in `store_dir`.
    pub fn with_store_in(store_dir: &Path) -> SshEnv {
        Self::build(SSH_POLICIES, None, "5m", Some(store_dir))
    }

    fn build(
        policies: &str,
        host_key: Option<String>,
        approval_timeout: &str,
        store_dir: Option<&Path>,
    ) -> SshEnv {
        let sshd = SshServer::start();
        let (issuer, idp) = env::start_dev_idp();
        let dir = test_support::temp_dir();
        let gw_port = free_port();
        // `serve` always binds the admin API; the default port may be taken.
        let admin_port = free_port();
        let config = dir.path().join("portcullis.yaml");
        let text = format!(
            r#"
admin:
  listen: 127.0.0.1:{admin_port}
  approval_timeout: {approval_timeout}
store: sqlite://{store_dir}/portcullis.db
data_dir: {dir}/data
identity:
  oidc:
    - issuer: {issuer}
      audience: portcullis
      groups_claim: groups
  approvers:
    groups: [sre]
connections:
  - name: bastion
    type: ssh
    listen: 127.0.0.1:{gw_port}
    upstream:
      host: 127.0.0.1
      port: {ssh_port}
      user: {user}
      private_key_file: {key}
      known_host_key: "{host_key}"
policies:
{policies}
"#,
            dir = dir.path().display(),
            store_dir = store_dir.unwrap_or(dir.path()).display(),
            ssh_port = sshd.port,
            user = sshd.user,
            key = sshd.user_key().display(),
            host_key = host_key.unwrap_or_else(|| sshd.host_key()),
        );
        std::fs::write(&config, text).expect("write config");
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"]).arg(&config);
        cmd.env("RUST_LOG", "info,portcullis=debug");
        let gateway = Process::spawn(cmd, "portcullis-serve");
        wait_for_port(&format!("127.0.0.1:{gw_port}"), Some(&gateway));
        let askpass = dir.path().join("askpass");
        std::fs::write(
            &askpass,
            "#!/bin/sh\nprintf '%s\\n' \"$PORTCULLIS_TEST_TOKEN\"\n",
        )
        .expect("write askpass");
        set_executable(&askpass);
        SshEnv {
            sshd,
            issuer,
            gw_port,
            admin_port,
            config,
            idp,
            gateway: Some(gateway),
            dir,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn token(&self, sub: &str, groups: &[&str]) -> String {
        env::token_from(&self.issuer, sub, groups, &[])
    }

    /// The CI job's token: principal `ci-job` in group `ci`.
    pub fn ci_token(&self) -> String {
        self.token("ci-job", &["ci"])
    }

    /// `ssh` (or `scp`) to the gateway, answering the password prompt with
    /// `token`; the caller adds the destination-specific arguments.
    pub fn client(&self, program: &str, token: &str) -> Command {
        self.client_logging(program, token, "ERROR")
    }

    /// Like [`SshEnv::client`], at the given `LogLevel` (INFO shows why a
    /// channel could not be opened; ERROR keeps stderr to the command's own).
    pub fn client_logging(&self, program: &str, token: &str, level: &str) -> Command {
        self.client_with(program, token, level, "keyboard-interactive,password")
    }

    /// The most general form: log level and the authentication methods to try.
    pub fn client_with(&self, program: &str, token: &str, level: &str, methods: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(quiet_client_options())
            .args(["-o", &format!("LogLevel={level}")])
            .args(["-o", &format!("PreferredAuthentications={methods}")])
            .args([
                "-o",
                "PubkeyAuthentication=no",
                "-o",
                "NumberOfPasswordPrompts=1",
                "-o",
                "ConnectTimeout=20",
            ])
            .env("SSH_ASKPASS", self.dir().join("askpass"))
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .env("PORTCULLIS_TEST_TOKEN", token);
        let port_flag = if program == "ssh" { "-p" } else { "-P" };
        cmd.args([port_flag, &self.gw_port.to_string()]);
        cmd
    }

    /// `ssh ci@gateway ARGS...` with `token`.
    pub fn ssh(&self, token: &str, args: &[&str]) -> Output {
        self.ssh_with_input(token, args, None)
    }

    pub fn ssh_with_input(&self, token: &str, args: &[&str], input: Option<&[u8]>) -> Output {
        let mut cmd = self.client("ssh", token);
        cmd.arg("ci@127.0.0.1").args(args);
        run_with_input(&mut cmd, input, TIMEOUT)
    }

    /// `ssh` at LogLevel INFO, where the client prints channel-open failures.
    pub fn ssh_verbose(&self, token: &str, args: &[&str]) -> Output {
        let mut cmd = self.client_logging("ssh", token, "INFO");
        cmd.arg("ci@127.0.0.1").args(args);
        run_with_input(&mut cmd, None, TIMEOUT)
    }

    pub fn gateway(&mut self) -> &mut Process {
        self.gateway.as_mut().expect("gateway running")
    }

    pub fn gateway_log(&self) -> String {
        self.gateway.as_ref().map(|g| g.log()).unwrap_or_default()
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        env::cli(&self.config, args)
    }

    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// A `grants` / `approvals` command as the holder of `token`.
    pub fn cli_as(&self, token: &str, args: &[&str]) -> Output {
        env::cli_as(&self.admin_url(), token, args)
    }

    /// Like [`SshEnv::cli_as`] with `--json`, parsing what it prints.
    pub fn cli_json(&self, token: &str, args: &[&str]) -> serde_json::Value {
        env::cli_json(&self.admin_url(), token, args)
    }

    /// `ssh ci@gateway COMMAND` on its own thread, for commands that wait
    /// (held for approval, or cut by a grant's end).
    pub fn ssh_in_background(&self, token: &str, command: &str) -> std::thread::JoinHandle<Output> {
        let mut cmd = self.client("ssh", token);
        cmd.arg("ci@127.0.0.1").arg(command);
        std::thread::spawn(move || run_with_input(&mut cmd, None, TIMEOUT))
    }

    /// Like [`SshEnv::ssh_in_background`], with `input` on the command's stdin.
    pub fn ssh_in_background_with_input(
        &self,
        token: &str,
        command: &str,
        input: &[u8],
    ) -> std::thread::JoinHandle<Output> {
        let mut cmd = self.client("ssh", token);
        cmd.arg("ci@127.0.0.1").arg(command);
        let input = input.to_vec();
        std::thread::spawn(move || run_with_input(&mut cmd, Some(&input), TIMEOUT))
    }

    /// `ssh ci@gateway COMMAND`, spawned so the test can kill it.
    pub fn spawn_ssh(&self, token: &str, command: &str) -> std::process::Child {
        let mut cmd = self.client("ssh", token);
        cmd.arg("ci@127.0.0.1")
            .arg(command)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.spawn().expect("spawn ssh")
    }

    pub fn records(&self) -> Vec<serde_json::Value> {
        env::records(&self.config)
    }

    pub fn wait_for_record(&self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        env::wait_for_record(&self.config, pred)
    }

    /// The result record of the statement record `statement`.
    pub fn result_of(&self, statement: &serde_json::Value) -> serde_json::Value {
        let id = statement["id"].as_i64().expect("record id");
        let record = self.wait_for_record(|r| {
            r["kind"] == "statement_result" && r["detail"]["results"][0]["statement"] == id
        });
        record["detail"]["results"][0].clone()
    }
}

fn set_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod askpass");
}

/// Runs a shell pipeline (for byte-exact output that `Output` would
/// turn into lossy text).
pub fn sh(script: &str, cmd_env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script]);
    for (k, v) in cmd_env {
        cmd.env(k, v);
    }
    run(&mut cmd, TIMEOUT)
}

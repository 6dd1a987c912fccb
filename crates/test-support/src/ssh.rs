//! A real OpenSSH server for one test: its own config, host key, user key
//! and `authorized_keys` in a temp dir, listening on a free loopback port,
//! killed on drop. Logins are for the user the tests run as, by key only.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::{free_port, os, run, Process};

const SSHD: &str = "/usr/sbin/sshd";
const PORT_ATTEMPTS: usize = 5;

pub struct SshServer {
    pub port: u16,
    /// The OS user that may log in (whoever runs the tests).
    pub user: String,
    dir: TempDir,
    // Dropped before `dir`, so sshd dies before its files go.
    process: Option<Process>,
}

impl SshServer {
    /// Starts sshd; panics with its log if it does not come up.
    pub fn start() -> SshServer {
        let dir = crate::temp_dir();
        keygen(&dir.path().join("host_key"));
        keygen(&dir.path().join("user_key"));
        std::fs::copy(
            dir.path().join("user_key.pub"),
            dir.path().join("authorized_keys"),
        )
        .expect("write authorized_keys");
        if os::is_root() {
            // sshd's privilege separation directory; Debian creates it only
            // when the system service starts.
            std::fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        }
        let mut server = SshServer {
            port: 0,
            user: current_user(),
            dir,
            process: None,
        };
        for attempt in 1..=PORT_ATTEMPTS {
            server.port = free_port();
            let config = server.dir.path().join("sshd_config");
            std::fs::write(&config, server.config_text()).expect("write sshd_config");
            let mut cmd = Command::new(SSHD);
            cmd.args(["-D", "-e", "-f"]).arg(&config);
            let process = Process::spawn(cmd, "sshd");
            if wait_listening(&format!("127.0.0.1:{}", server.port), &process) {
                server.process = Some(process);
                return server;
            }
            if attempt == PORT_ATTEMPTS {
                panic!("sshd did not start; {}", process.describe());
            }
        }
        unreachable!("the loop returns or panics")
    }

    fn config_text(&self) -> String {
        let dir = self.dir.path().display();
        format!(
            "Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/host_key
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
AllowTcpForwarding yes
AllowAgentForwarding yes
X11Forwarding no
PrintMotd no
PrintLastLog no
Subsystem sftp internal-sftp
AcceptEnv LANG LC_* GIT_PROTOCOL
LogLevel VERBOSE
",
            port = self.port
        )
    }

    /// The host key line as `known_hosts` and `known_host_key` want it.
    pub fn host_key(&self) -> String {
        public_key(&self.dir.path().join("host_key.pub"))
    }

    /// Another, unrelated host key line (for mismatch tests).
    pub fn other_host_key(&self) -> String {
        let path = self.dir.path().join("other_key");
        if !path.exists() {
            keygen(&path);
        }
        public_key(&self.dir.path().join("other_key.pub"))
    }

    /// The private key sshd accepts for [`SshServer::user`].
    pub fn user_key(&self) -> PathBuf {
        self.dir.path().join("user_key")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        self.process.as_ref().map(Process::log).unwrap_or_default()
    }

    /// `ssh` straight to this server with the user key (no gateway), for
    /// comparisons: extra arguments and the remote command follow.
    pub fn ssh_direct(&self) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.arg("-i")
            .arg(self.user_key())
            .args(["-p", &self.port.to_string()])
            .args(quiet_client_options())
            .args(["-o", "LogLevel=ERROR", "-o", "BatchMode=yes"])
            .arg(format!("{}@127.0.0.1", self.user));
        cmd
    }
}

/// Client options that keep tests from reading the user's ssh config or
/// reading and writing their known_hosts.
pub fn quiet_client_options() -> [&'static str; 6] {
    [
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-F",
        "/dev/null",
    ]
}

fn keygen(path: &Path) {
    let out = run(
        Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "portcullis-test",
                "-f",
            ])
            .arg(path),
        Duration::from_secs(30),
    );
    assert!(out.success(), "ssh-keygen failed: {}", out.stderr);
}

fn public_key(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .trim()
        .to_string()
}

fn current_user() -> String {
    let out = run(Command::new("id").arg("-un"), Duration::from_secs(10));
    assert!(out.success(), "id -un failed: {}", out.stderr);
    out.stdout.trim().to_string()
}

/// Like `wait_for_port`, but reports failure instead of panicking, so a
/// port taken between `free_port` and sshd's bind can be retried.
fn wait_listening(addr: &str, process: &Process) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if crate::can_connect(addr) {
            return true;
        }
        if process.try_wait().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sshd_accepts_the_user_key_and_runs_commands() {
        let server = SshServer::start();
        assert!(server.host_key().starts_with("ssh-ed25519 "));
        assert_ne!(server.host_key(), server.other_host_key());
        let out = run(
            server.ssh_direct().arg("echo hello; exit 3"),
            Duration::from_secs(30),
        );
        assert_eq!(out.stdout, "hello\n", "{}\n{}", out.stderr, server.log());
        assert_eq!(out.code, Some(3));
    }
}

//! The SSH gateway end to end: the real OpenSSH client, through
//! `portcullis serve`, to a real sshd. Tokens from the dev issuer.

use serde_json::Value;

use crate::ssh_env::{sh, SshEnv, SSH_POLICIES};

fn statement(env: &SshEnv, text: &str) -> Value {
    env.wait_for_record(|r| r["kind"] == "statement" && r["detail"]["text"] == text)
}

#[test]
fn ssh_exec_runs_allowed_commands_and_propagates_exit_status() {
    let env = SshEnv::start();
    let token = env.ci_token();
    let out = env.ssh(&token, &["echo hello through the gateway"]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "hello through the gateway\n"),
        "{}\n{}",
        out.stderr,
        env.gateway_log()
    );
    // Shell syntax in an allowed command must be spelt out by the policy, so
    // the script that mixes streams lives in a file.
    let script = env.sshd.dir().join("mixed.sh");
    std::fs::write(&script, "echo out; echo err 1>&2; exit 7\n").unwrap();
    let command = format!("sh {}", script.display());
    let out = env.ssh(&token, &[&command]);
    assert_eq!(out.code, Some(7), "{}", out.stderr);
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr, "err\n");
    let out = env.ssh(&token, &["false"]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    // The token as a plain password works as well as keyboard-interactive.
    let mut cmd = env.client_with("ssh", &token, "ERROR", "password");
    cmd.arg("ci@127.0.0.1").arg("echo by password");
    let out = test_support::run(&mut cmd, crate::env::TIMEOUT);
    assert_eq!(out.stdout, "by password\n", "{}", out.stderr);

    let record = statement(&env, &command);
    assert_eq!(record["decision"], "allow");
    assert_eq!(record["policy"], "ci-ssh");
    assert_eq!(record["rule"], "sh *");
    assert_eq!(record["principal"], "ci-job");
    let result = env.result_of(&record);
    assert_eq!(result["exit_status"], 7);
    assert_eq!(result["stdout_bytes"], 4);
    assert_eq!(result["stderr_bytes"], 4);
    // The token is in no record, only its fingerprint.
    let all = serde_json::to_string(&env.records()).unwrap();
    assert!(!all.contains(&token));
    assert!(all.contains("sha256:"));
}

#[test]
fn ssh_exec_denied_commands_get_a_reason_and_exit_126() {
    let env = SshEnv::start();
    let token = env.ci_token();
    let marker = env.sshd.dir().join("must-survive");
    std::fs::write(&marker, "x").unwrap();
    let command = format!("rm -f {}", marker.display());
    let out = env.ssh(&token, &[&command]);
    assert_eq!(out.code, Some(126), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("portcullis: denied by policy \"ci-ssh\", rule \"rm *\""),
        "{}",
        out.stderr
    );
    assert!(marker.exists(), "the denied command ran");
    let record = statement(&env, &command);
    assert_eq!(record["decision"], "deny");
    assert_eq!(record["rule"], "rm *");

    // Not on any allow list: the default deny, and shell syntax cannot
    // stretch an allowed pattern over a second command.
    let smuggled = format!("echo hi; rm -f {}", marker.display());
    let out = env.ssh(&token, &[&smuggled]);
    assert_eq!(out.code, Some(126), "{}", out.stderr);
    assert!(marker.exists(), "the smuggled command ran");
    let out = env.ssh(&token, &["uname -a"]);
    assert_eq!(out.code, Some(126));
    assert!(out.stderr.contains("default deny"), "{}", out.stderr);
}

#[test]
fn ssh_bad_tokens_and_unknown_principals_are_refused_and_recorded() {
    let env = SshEnv::start();
    // At OpenSSH's default log level the client shows why, as a PostgreSQL
    // client's ErrorResponse would.
    let out = env.ssh_verbose("not-a-token", &["echo hi"]);
    assert_eq!(out.code, Some(255));
    assert!(out.stderr.contains("Permission denied"), "{}", out.stderr);
    assert!(
        out.stderr.contains("Login refused: token rejected"),
        "{}",
        out.stderr
    );
    let attempt =
        env.wait_for_record(|r| r["kind"] == "connection_attempt" && r["decision"] == "deny");
    let reason = attempt["detail"]["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("token rejected"), "{reason}");

    let stranger = env.token("stranger", &["web"]);
    let out = env.ssh_verbose(&stranger, &["echo hi"]);
    assert_eq!(out.code, Some(255));
    assert!(
        out.stderr
            .contains("Login refused: principal \"stranger\" has no access"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains(&stranger),
        "the token is not echoed back"
    );
    env.wait_for_record(|r| {
        r["kind"] == "connection_attempt"
            && r["principal"] == "stranger"
            && r["detail"]["reason"]
                .as_str()
                .unwrap_or("")
                .contains("no policy matches")
    });
    assert!(!env.records().iter().any(|r| r["kind"] == "session_start"));
}

#[test]
fn ssh_upstream_host_key_mismatch_is_refused_with_a_clear_message() {
    let sshd_key = test_support::SshServer::start().other_host_key();
    let env = SshEnv::with(SSH_POLICIES, Some(sshd_key));
    let out = env.ssh_verbose(&env.ci_token(), &["echo hi"]);
    assert_eq!(out.code, Some(255), "{out:?}");
    assert!(
        out.stderr.contains("upstream host key mismatch"),
        "{}",
        out.stderr
    );
    let error = env.wait_for_record(|r| r["kind"] == "error");
    assert_eq!(error["detail"]["source"], "upstream");
}

#[test]
fn ssh_large_output_arrives_intact() {
    let env = SshEnv::start();
    let file = env.sshd.dir().join("big.bin");
    let expected = random_file(&file, 52428800);
    let mut cmd = env.client("ssh", &env.ci_token());
    cmd.arg("ci@127.0.0.1")
        .arg(format!("cat {}", file.display()));
    let out = pipeline("true", &cmd, "sha256sum");
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(
        out.stdout.split_whitespace().next(),
        Some(expected.as_str())
    );
    let record = statement(&env, &format!("cat {}", file.display()));
    let result = env.result_of(&record);
    assert_eq!(result["stdout_bytes"], 52428800);
    assert_eq!(result["recording"]["stdout_sha256"], expected.as_str());
}

/// Runs `before | CMD | after` in a shell, with CMD's environment, for
/// byte-exact streams that [`test_support::Output`] would turn into text.
fn pipeline(before: &str, cmd: &std::process::Command, after: &str) -> test_support::Output {
    let command = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| shell_quote(&a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ");
    let envs: Vec<(String, String)> = cmd
        .get_envs()
        .filter_map(|(k, v)| {
            Some((
                k.to_string_lossy().into_owned(),
                v?.to_string_lossy().into_owned(),
            ))
        })
        .collect();
    let env_refs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    sh(&format!("{before} | {command} | {after}"), &env_refs)
}

#[test]
fn ssh_large_input_and_output_at_once_do_not_stall() {
    // Both directions at full speed: the two relay loops must not wait on
    // each other's windows.
    let env = SshEnv::start();
    let file = env.dir().join("both-ways.bin");
    let expected = random_file(&file, 52428800);
    let mut cmd = env.client("ssh", &env.ci_token());
    cmd.arg("ci@127.0.0.1").arg("cat -");
    let out = pipeline(&format!("cat {}", file.display()), &cmd, "sha256sum");
    assert!(out.success(), "{}\n{}", out.stderr, env.gateway_log());
    assert_eq!(
        out.stdout.split_whitespace().next(),
        Some(expected.as_str())
    );
    let result = env.result_of(&statement(&env, "cat -"));
    assert_eq!(result["input_bytes"], 52428800);
    assert_eq!(result["stdout_bytes"], 52428800);
}

/// Writes `bytes` random bytes to `path`; returns their SHA-256 (hex).
fn random_file(path: &std::path::Path, bytes: u64) -> String {
    let made = sh(
        &format!(
            "head -c {bytes} /dev/urandom > {0} && sha256sum < {0}",
            path.display()
        ),
        &[],
    );
    assert!(made.success(), "{}", made.stderr);
    made.stdout.split_whitespace().next().unwrap().to_string()
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[test]
fn ssh_interactive_shell_is_recorded_and_replayed() {
    let env = SshEnv::start();
    let token = env.ci_token();
    // -tt: a pty even though our stdin is a pipe, as a person's terminal would.
    let input = b"echo shell-marker-$((6*7))\nexit 3\n";
    let out = env.ssh_with_input(&token, &["-tt"], Some(input));
    assert_eq!(out.code, Some(3), "{}\n{}", out.stderr, env.gateway_log());
    assert!(out.stdout.contains("shell-marker-42"), "{}", out.stdout);

    let record = statement(&env, "(interactive shell)");
    assert_eq!(record["decision"], "allow");
    assert_eq!(record["rule"], "shell");
    let result = env.result_of(&record);
    assert_eq!(result["exit_status"], 3);
    let session = record["session_id"].as_str().unwrap().to_string();

    let replay = env.cli(&["replay", &session]);
    assert!(replay.success(), "{}", replay.stderr);
    assert!(
        replay.stdout.contains("[shell] (interactive shell)"),
        "{}",
        replay.stdout
    );
    assert!(
        replay.stdout.contains("shell-marker-42"),
        "{}",
        replay.stdout
    );
    assert!(replay.stdout.contains("exit 3"), "{}", replay.stdout);

    let cast = env.cli(&["replay", &session, "--asciicast"]);
    assert!(cast.success(), "{}", cast.stderr);
    let mut lines = cast.stdout.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(header["version"], 2);
    assert!(header["width"].as_u64().unwrap() > 0);
    let output: String = lines
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e[1] == "o")
        .map(|e| e[2].as_str().unwrap().to_string())
        .collect();
    assert!(output.contains("shell-marker-42"), "{output}");

    // An altered recording is noticed: its hash is in the chain.
    let file = env
        .dir()
        .join("data")
        .join(result["recording"]["file"].as_str().unwrap());
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("shell-marker-42", "shell-marker-43")).unwrap();
    let replay = env.cli(&["replay", &session]);
    assert_eq!(replay.code, Some(1));
    assert!(replay.stderr.contains("altered"), "{}", replay.stderr);
    assert!(env.cli(&["audit", "verify"]).success());
}

#[test]
fn ssh_shell_is_refused_without_the_shell_word() {
    let policies = SSH_POLICIES.replace("allow: [shell, ", "allow: [");
    let env = SshEnv::with(&policies, None);
    let out = env.ssh_with_input(
        &env.ci_token(),
        &["-tt"],
        Some(b"echo should-not-run\nexit\n"),
    );
    assert_eq!(out.code, Some(126), "{}", out.stderr);
    // No shell ran, so nothing echoed the typed line back.
    assert!(!out.stdout.contains("should-not-run"), "{}", out.stdout);
    assert!(
        out.stderr
            .contains("no policy allows an interactive shell on this connection"),
        "{}",
        out.stderr
    );
    let record = statement(&env, "(interactive shell)");
    assert_eq!(record["decision"], "deny");
}

#[test]
fn ssh_scp_uploads_and_downloads_are_recorded_with_file_names_and_sizes() {
    let env = SshEnv::start();
    let local = env.dir().join("report.txt");
    std::fs::write(&local, "quarterly numbers\n").unwrap();
    let target = env.sshd.dir().join("uploaded.txt");
    let mut cmd = env.client("scp", &env.ci_token());
    // -O: the scp protocol (OpenSSH 9 otherwise speaks sftp underneath).
    cmd.arg("-O")
        .arg(&local)
        .arg(format!("ci@127.0.0.1:{}", target.display()));
    let out = test_support::run(&mut cmd, crate::env::TIMEOUT);
    assert!(out.success(), "{}\n{}", out.stderr, env.gateway_log());
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "quarterly numbers\n"
    );
    let record = statement(&env, &format!("scp -t {}", target.display()));
    assert_eq!(record["rule"], "scp");
    assert_eq!(record["detail"]["request"], "scp");
    let result = env.result_of(&record);
    assert_eq!(result["scp_direction"], "upload");
    assert_eq!(
        result["files"],
        serde_json::json!([{ "name": "report.txt", "size": 18 }])
    );

    // And back down: the upstream sends, the file list is read from its side.
    let back = env.dir().join("report-back.txt");
    let mut cmd = env.client("scp", &env.ci_token());
    cmd.arg("-O")
        .arg(format!("ci@127.0.0.1:{}", target.display()))
        .arg(&back);
    let out = test_support::run(&mut cmd, crate::env::TIMEOUT);
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(
        std::fs::read_to_string(&back).unwrap(),
        "quarterly numbers\n"
    );
    let download = env.result_of(&statement(&env, &format!("scp -f {}", target.display())));
    assert_eq!(download["scp_direction"], "download");
    assert_eq!(
        download["files"],
        serde_json::json!([{ "name": "uploaded.txt", "size": 18 }])
    );

    // sftp is another word; this policy does not say it.
    let mut cmd = env.client("scp", &env.ci_token());
    cmd.arg(&local)
        .arg(format!("ci@127.0.0.1:{}", target.display()));
    let out = test_support::run(&mut cmd, crate::env::TIMEOUT);
    assert!(!out.success());
    let refused = statement(&env, "sftp");
    assert_eq!(refused["decision"], "deny");
}

#[test]
fn ssh_port_forwarding_is_refused_unless_allowed() {
    let env = SshEnv::start();
    let token = env.ci_token();
    // -W: stdio forwarding, a direct-tcpip channel like -L opens.
    let out = env.ssh_verbose(&token, &["-W", &format!("127.0.0.1:{}", env.sshd.port)]);
    assert_eq!(out.code, Some(255), "{}", out.stdout);
    assert!(out.stderr.contains("denied by"), "{}", out.stderr);
    let record = env
        .wait_for_record(|r| r["kind"] == "statement" && r["detail"]["request"] == "port_forward");
    assert_eq!(record["decision"], "deny");
    assert_eq!(record["rule"], "default deny");

    let out = env.ssh(
        &token,
        &[
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            "0:127.0.0.1:9",
            "echo hi",
        ],
    );
    assert_ne!(
        out.code,
        Some(0),
        "remote forward was accepted: {}",
        out.stderr
    );
    env.wait_for_record(|r| {
        r["kind"] == "statement"
            && r["detail"]["request"] == "port_forward"
            && r["detail"]["text"]
                .as_str()
                .unwrap_or("")
                .starts_with("remote")
    });
}

#[test]
fn ssh_sftp_transfers_are_recorded_when_allowed() {
    let policies = SSH_POLICIES.replace("allow: [shell, scp,", "allow: [shell, sftp,");
    let env = SshEnv::with(&policies, None);
    let local = env.dir().join("up.bin");
    std::fs::write(&local, vec![7u8; 100_000]).unwrap();
    let remote = env.sshd.dir().join("via-sftp.bin");
    // OpenSSH 9's scp speaks sftp underneath.
    let mut cmd = env.client("scp", &env.ci_token());
    cmd.arg(&local)
        .arg(format!("ci@127.0.0.1:{}", remote.display()));
    let out = test_support::run(&mut cmd, crate::env::TIMEOUT);
    assert!(out.success(), "{}\n{}", out.stderr, env.gateway_log());
    assert_eq!(std::fs::read(&remote).unwrap(), vec![7u8; 100_000]);
    let back = env.dir().join("down.bin");
    let mut cmd = env.client("scp", &env.ci_token());
    cmd.arg(format!("ci@127.0.0.1:{}", remote.display()))
        .arg(&back);
    let out = test_support::run(&mut cmd, crate::env::TIMEOUT);
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(std::fs::read(&back).unwrap().len(), 100_000);

    let name = remote.display().to_string();
    let transferred = |key: &'static str| {
        env.wait_for_record(|r| {
            r["kind"] == "statement_result"
                && r["detail"]["results"][0]["sftp"]["files"]
                    .as_array()
                    .is_some_and(|files| {
                        files
                            .iter()
                            .any(|f| f["name"] == name.as_str() && f[key] == 100_000)
                    })
        })
    };
    transferred("written");
    transferred("read");
    let replay_session = statement(&env, "sftp")["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(env.cli(&["replay", &replay_session]).success());
}

#[test]
fn ssh_stdin_eof_and_exit_signals_reach_the_other_side() {
    let env = SshEnv::start();
    let token = env.ci_token();
    // cat ends only when the client's EOF reaches it through the gateway.
    let out = env.ssh_with_input(&token, &["cat -"], Some(b"piped line\n"));
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "piped line\n"),
        "{}",
        out.stderr
    );
    let script = env.sshd.dir().join("die.sh");
    std::fs::write(&script, "kill -TERM $$\n").unwrap();
    let command = format!("sh {}", script.display());
    let out = env.ssh(&token, &[&command]);
    // OpenSSH has no exit status to give for a remote death by signal: 255.
    assert_eq!(out.code, Some(255), "{out:?}");
    let direct = test_support::run(env.sshd.ssh_direct().arg(&command), crate::env::TIMEOUT);
    assert_eq!(direct.code, out.code, "same as without the gateway");
    let result = env.result_of(&statement(&env, &command));
    assert_eq!(result["exit_signal"], "TERM");
}

#[test]
fn ssh_port_forwarding_works_when_a_policy_allows_it() {
    let policies = SSH_POLICIES.replace("allow: [shell,", "allow: [port_forward, shell,");
    let env = SshEnv::with(&policies, None);
    // Through the forward, sshd's own banner comes back.
    let out = env.ssh(
        &env.ci_token(),
        &["-W", &format!("127.0.0.1:{}", env.sshd.port)],
    );
    assert!(out.stdout.starts_with("SSH-2.0-OpenSSH"), "{out:?}");
    let record = env
        .wait_for_record(|r| r["kind"] == "statement" && r["detail"]["request"] == "port_forward");
    assert_eq!(record["decision"], "allow");
    assert_eq!(record["rule"], "port_forward");

    // -R: the upstream listens, and what connects there reaches the client's
    // side of the forward (here sshd again, whose banner comes back).
    let mut cmd = env.client_logging("ssh", &env.ci_token(), "INFO");
    cmd.args(["-N", "-R", &format!("0:127.0.0.1:{}", env.sshd.port)])
        .arg("ci@127.0.0.1");
    let client = test_support::Process::spawn(cmd, "ssh-remote-forward");
    let port: u16 = (0..400)
        .find_map(|_| {
            let log = client.log();
            let port = log
                .split("Allocated port ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|p| p.parse().ok());
            if port.is_none() {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            port
        })
        .unwrap_or_else(|| panic!("no remote forward: {}\n{}", client.log(), env.gateway_log()));
    let mut banner = [0u8; 15];
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(crate::env::TIMEOUT)).unwrap();
    std::io::Read::read_exact(&mut tcp, &mut banner).unwrap();
    assert_eq!(&banner, b"SSH-2.0-OpenSSH");
    drop(tcp);
    let remote = env.wait_for_record(|r| {
        r["kind"] == "statement"
            && r["detail"]["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("remote port forwarding"))
    });
    assert_eq!(remote["decision"], "allow");
    // The banner came from the client's side: input, as bytes from the client always are.
    let relayed = env.result_of(&remote);
    assert!(relayed["input_bytes"].as_u64() >= Some(15), "{relayed}");
}

#[test]
fn ssh_sigterm_ends_live_sessions_and_records_their_end() {
    let mut env = SshEnv::start();
    let script = env.sshd.dir().join("long.sh");
    std::fs::write(&script, "echo started\nsleep 60\n").unwrap();
    let command = format!("sh {}", script.display());
    let mut cmd = env.client("ssh", &env.ci_token());
    cmd.arg("ci@127.0.0.1").arg(&command);
    let client = test_support::Process::spawn(cmd, "ssh-client");
    statement(&env, &command);
    env.gateway().terminate();
    let status = env
        .gateway()
        .wait_timeout(std::time::Duration::from_secs(20));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{}",
        env.gateway_log()
    );
    let ended = client.wait_timeout(std::time::Duration::from_secs(20));
    assert!(ended.is_some(), "the client outlived the gateway");
    let end = env.wait_for_record(|r| r["kind"] == "session_end" && r["principal"] == "ci-job");
    assert_eq!(end["detail"]["reason"], "the gateway is shutting down");
}

#[test]
fn ssh_window_changes_reach_the_upstream_terminal_and_the_recording() {
    let env = SshEnv::start();
    // tmux gives ssh a real terminal; resizing tmux's window makes ssh send
    // window-change, as a person resizing their terminal would.
    let socket = env.dir().join("tmux.sock");
    let before = env.sshd.dir().join("size-before");
    let after = env.sshd.dir().join("size-after");
    let client = env.client("ssh", &env.ci_token());
    let mut line: Vec<String> = client
        .get_envs()
        .filter_map(|(k, v)| {
            Some(format!(
                "{}={}",
                k.to_string_lossy(),
                shell_quote(&v?.to_string_lossy())
            ))
        })
        .collect();
    line.push(shell_quote(&client.get_program().to_string_lossy()));
    line.extend(client.get_args().map(|a| shell_quote(&a.to_string_lossy())));
    line.push("ci@127.0.0.1".into());
    let tmux = |args: &[&str]| {
        let mut cmd = std::process::Command::new("tmux");
        cmd.arg("-S").arg(&socket).args(args);
        let out = test_support::run(&mut cmd, crate::env::TIMEOUT);
        assert!(out.success(), "tmux {args:?}: {}", out.stderr);
    };
    tmux(&[
        "new-session",
        "-d",
        "-x",
        "100",
        "-y",
        "30",
        &line.join(" "),
    ]);
    tmux(&["set-option", "-g", "window-size", "manual"]);
    let wait_for = |path: &std::path::Path| {
        for _ in 0..200 {
            if let Ok(text) = std::fs::read_to_string(path) {
                if text.ends_with('\n') {
                    return text;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!(
            "{} never written; gateway log:\n{}",
            path.display(),
            env.gateway_log()
        );
    };
    tmux(&[
        "send-keys",
        &format!("stty size > {}", before.display()),
        "Enter",
    ]);
    assert_eq!(wait_for(&before), "30 100\n");
    tmux(&["resize-window", "-x", "120", "-y", "40"]);
    // The resize travels ssh -> gateway -> sshd on its own; ask until it is there.
    let mut seen = String::new();
    for _ in 0..50 {
        let _ = std::fs::remove_file(&after);
        tmux(&[
            "send-keys",
            &format!("stty size > {}", after.display()),
            "Enter",
        ]);
        seen = wait_for(&after);
        if seen == "40 120\n" {
            break;
        }
    }
    assert_eq!(seen, "40 120\n");
    tmux(&["send-keys", "exit", "Enter"]);
    let _ = std::process::Command::new("tmux")
        .arg("-S")
        .arg(&socket)
        .arg("kill-server")
        .status();

    let record = statement(&env, "(interactive shell)");
    let result = env.result_of(&record);
    let cast = std::fs::read_to_string(
        env.dir()
            .join("data")
            .join(result["recording"]["file"].as_str().unwrap()),
    )
    .unwrap();
    let header: Value = serde_json::from_str(cast.lines().next().unwrap()).unwrap();
    assert_eq!(
        (header["width"].as_u64(), header["height"].as_u64()),
        (Some(100), Some(30))
    );
    assert!(cast.contains(r#""r","120x40"]"#), "{cast}");
}

#[test]
fn ssh_repeated_failed_logins_lock_out_the_source_address() {
    let env = SshEnv::start();
    let limited = |r: &Value| {
        r["kind"] == "connection_attempt"
            && r["detail"]["reason"].as_str().is_some_and(|why| {
                why.starts_with(
                    "too many failed logins from 127.0.0.1 (10 within 60 s); try again in ",
                )
            })
    };
    let mut attempts = 0;
    while !env.records().iter().any(limited) {
        attempts += 1;
        assert!(attempts <= 12, "never rate limited: {:#?}", env.records());
        let out = env.ssh("wrong-token", &["echo hi"]);
        assert_eq!(out.code, Some(255));
    }
    // A good token from the same address is refused too, for the rest of the window.
    let out = env.ssh(&env.ci_token(), &["echo hi"]);
    assert_eq!(out.code, Some(255), "{}", out.stdout);
    assert!(!env.records().iter().any(|r| r["kind"] == "session_start"));
}

/// Logins refused because the gateway cannot record them say nothing about
/// the client, so they must not lock its address out.
#[test]
fn ssh_logins_refused_by_a_full_audit_store_do_not_count_as_failed() {
    let Some(disk) = crate::postgres_robustness::TinyDisk::mount() else {
        // Mounting needs root, which CI has; say so rather than pass silently.
        panic!("cannot mount a tmpfs: run the integration tests as root (CI does)");
    };
    let env = SshEnv::with_store_in(&disk.0);
    let token = env.ci_token();
    let ok = env.ssh(&token, &["echo before"]);
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);

    disk.fill();
    // The store's last partly used page may still take a few records.
    let refused = (0..18)
        .filter(|_| env.ssh(&token, &["echo while full"]).code == Some(255))
        .count();
    assert!(
        refused > 10,
        "only {refused} of 18 logins were refused with the store full: the lockout was not exercised\n{}",
        env.gateway_log()
    );
    assert!(
        env.gateway_log().contains("audit store unavailable"),
        "{}",
        env.gateway_log()
    );

    disk.free();
    let after = env.ssh(&token, &["echo after"]);
    assert_eq!(
        (after.code, after.stdout.trim()),
        (Some(0), "after"),
        "a valid token was refused once the store recovered: {}\n{}",
        after.stderr,
        env.gateway_log()
    );
}

#[test]
fn ssh_clients_that_never_log_in_are_cut_off_and_recorded() {
    use std::io::{Read, Write};
    let env = SshEnv::start();
    // A version line and then nothing: no key exchange, no login.
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", env.gw_port)).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(90)))
        .unwrap();
    tcp.write_all(b"SSH-2.0-Lingerer\r\n").unwrap();
    let mut seen = Vec::new();
    // Read until the gateway closes the connection (or the read times out).
    let _ = tcp.read_to_end(&mut seen);
    assert!(seen.starts_with(b"SSH-2.0-Portcullis"), "{seen:?}");
    let attempt = env.wait_for_record(|r| r["kind"] == "connection_attempt");
    assert_eq!(attempt["decision"], "deny");
    assert_eq!(
        attempt["detail"]["reason"],
        "login did not complete within 30 s"
    );
}

#[test]
fn a_killed_client_still_gets_its_commands_result_recorded() {
    let env = SshEnv::start();
    let cmd = "sh -c 'sleep 60'";
    let mut child = env.spawn_ssh(&env.ci_token(), cmd);
    let record = statement(&env, cmd);
    std::thread::sleep(std::time::Duration::from_millis(200));
    child.kill().unwrap();
    let _ = child.wait();
    // Recorded once the upstream has had a moment to close the channel, not when the
    // command upstream ends a minute later.
    let result = env.result_of(&record);
    assert!(result["exit_status"].is_null(), "{result}");
    assert_eq!(result["upstream_still_open"], true, "{result}");
    assert!(result["recording"]["complete"] == true, "{result}");
}

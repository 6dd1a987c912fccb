//! OpenSSH as distributions ship it: Debian's `/etc/ssh/ssh_config` sends
//! the locale with `SendEnv LANG LC_*`, git sends `GIT_PROTOCOL`, and each
//! `env` request goes out without wanting a reply, just before `exec`.

use crate::ssh_env::SshEnv;

/// Debian's shipped client configuration (its comments left out).
const DEBIAN_SSH_CONFIG: &str = "Host *
    SendEnv LANG LC_*
    HashKnownHosts yes
    GSSAPIAuthentication yes
";

fn stock_ssh(env: &SshEnv, token: &str, extra: &[&str], command: &str) -> test_support::Output {
    let config = env.dir().join("debian_ssh_config");
    std::fs::write(&config, DEBIAN_SSH_CONFIG).unwrap();
    let mut cmd = env.client("ssh", token);
    // The last -F wins over the quiet defaults' `-F /dev/null`.
    cmd.arg("-F")
        .arg(&config)
        // As git runs ssh for protocol v2.
        .args(["-o", "SendEnv=GIT_PROTOCOL"])
        .args(extra)
        .env("LANG", "C.UTF-8")
        .env("LC_TIME", "C.UTF-8")
        .env("LC_EVIL", "$(touch /tmp/x)")
        .env("GIT_PROTOCOL", "version=2")
        .arg("ci@127.0.0.1")
        .arg(command);
    test_support::run(&mut cmd, crate::env::TIMEOUT)
}

#[test]
fn stock_openssh_sending_the_locale_runs_commands_with_and_without_a_pty() {
    let env = SshEnv::start();
    let token = env.ci_token();
    // Shell syntax in an allowed command must be spelt out by the policy,
    // so the expansions live in a script (`sh *` is allowed).
    let script = env.sshd.dir().join("locale.sh");
    std::fs::write(&script, "echo \"$LANG $LC_TIME $LC_EVIL.\"\n").unwrap();
    let command = format!("sh {}", script.display());
    for round in 0..5 {
        let out = stock_ssh(&env, &token, &[], &command);
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (Some(0), "C.UTF-8 C.UTF-8 .\n"),
            "round {round}: {}\n{}",
            out.stderr,
            env.gateway_log()
        );
        let out = stock_ssh(&env, &token, &["-tt"], &command);
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (Some(0), "C.UTF-8 C.UTF-8 .\r\n"),
            "round {round} with a pty: {}",
            out.stderr
        );
    }
    // The variables the upstream got are in the command's record; the
    // refused one is not.
    let record =
        env.wait_for_record(|r| r["kind"] == "statement" && r["detail"]["text"] == command);
    let passed = &record["detail"]["env"];
    assert_eq!(passed["LANG"], "C.UTF-8", "{record}");
    assert_eq!(passed["GIT_PROTOCOL"], "version=2", "{record}");
    assert!(passed.get("LC_EVIL").is_none(), "{record}");
}

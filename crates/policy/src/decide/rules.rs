//! Policy rules: a statement class (`read`, `write`, `ddl`, `admin`) or a
//! SQL pattern (`"DROP *"`) matched against the normalized statement.
//!
//! Patterns are compared case-insensitively with whitespace collapsed, so
//! `"drop  *"` and `"DROP *"` are the same rule. Normalized statements have
//! every literal replaced by `?`, so a pattern that spells a literal could
//! never match; compiling refuses it instead of letting the rule silently
//! do nothing.

use crate::classify::{Statement, StatementClass};

use super::glob::Glob;
use super::ssh::{SshRequest, SshRule};
use super::PolicyError;

/// The three rule lists of a policy, in the order they are consulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum List {
    Deny,
    RequireApproval,
    Allow,
}

impl List {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deny => "deny",
            Self::RequireApproval => "require_approval",
            Self::Allow => "allow",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Rule {
    /// As written in the config, for decisions and records.
    pub text: String,
    matcher: RuleMatcher,
}

#[derive(Debug, Clone)]
enum RuleMatcher {
    Class(StatementClass),
    Pattern(Glob),
    /// Rules of policies on SSH connections; see `ssh.rs`.
    Ssh(SshRule),
}

impl Rule {
    pub fn compile(policy: &str, list: List, text: &str) -> Result<Self, PolicyError> {
        let error = |problem| PolicyError::Rule {
            policy: policy.to_owned(),
            list: list.as_str(),
            rule: text.to_owned(),
            problem,
        };
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(error(RuleProblem::Empty));
        }
        let matcher = if let Some(class) = policy_class(trimmed) {
            RuleMatcher::Class(class)
        } else if !trimmed.contains([' ', '*']) {
            // The config validator applies the same test; a bare word is a
            // misspelt class far more often than a one-word SQL pattern.
            return Err(error(RuleProblem::UnknownClass));
        } else if !crate::classify::lexer::lex(trimmed).literals.is_empty() {
            return Err(error(RuleProblem::Literal));
        } else {
            RuleMatcher::Pattern(Glob::new(&fold(trimmed)))
        };
        Ok(Self {
            text: text.to_owned(),
            matcher,
        })
    }

    /// A rule of a policy on an SSH connection: an SSH word or a command pattern.
    pub fn compile_ssh(policy: &str, list: List, text: &str) -> Result<Self, PolicyError> {
        let rule = SshRule::compile(text).map_err(|problem| PolicyError::Rule {
            policy: policy.to_owned(),
            list: list.as_str(),
            rule: text.to_owned(),
            problem,
        })?;
        Ok(Self {
            text: text.to_owned(),
            matcher: RuleMatcher::Ssh(rule),
        })
    }

    /// `folded` is the statement's normalized text passed through [`fold`].
    /// SSH rules never match SQL statements.
    pub fn matches(&self, statement: &Statement, folded: &Folded<'_>) -> bool {
        match &self.matcher {
            RuleMatcher::Class(class) => statement.class == *class,
            RuleMatcher::Pattern(glob) => glob.matches(folded.get()),
            RuleMatcher::Ssh(_) => false,
        }
    }

    /// The access level this `allow` rule lets run: its class, or for a
    /// pattern the class of the command it starts with. A pattern starting
    /// otherwise (`"*"`, `"WITH *"`, `"GRANT *"`) may match statements of
    /// any class, so it counts as `admin`. SSH rules have no level.
    pub fn level(&self) -> StatementClass {
        match &self.matcher {
            RuleMatcher::Class(class) => *class,
            RuleMatcher::Pattern(_) => pattern_level(&self.text),
            RuleMatcher::Ssh(_) => StatementClass::Session,
        }
    }

    /// Whether this rule matches an SSH request; SQL rules never do.
    pub fn matches_ssh(&self, request: &SshRequest, list: List) -> bool {
        match &self.matcher {
            RuleMatcher::Ssh(rule) => rule.matches(request, list),
            RuleMatcher::Class(_) | RuleMatcher::Pattern(_) => false,
        }
    }
}

/// The class of the command a SQL pattern starts with, for the commands
/// whose class the first word settles; `admin` for every other start.
fn pattern_level(pattern: &str) -> StatementClass {
    let first = pattern.split_whitespace().next().unwrap_or_default();
    let of = |words: &[&str]| words.iter().any(|w| w.eq_ignore_ascii_case(first));
    if of(&["SELECT", "TABLE", "VALUES", "SHOW", "FETCH", "MOVE"]) {
        StatementClass::Read
    } else if of(&[
        "INSERT", "UPDATE", "DELETE", "MERGE", "CALL", "LOCK", "NOTIFY",
    ]) {
        StatementClass::Write
    } else if of(&["CREATE", "ALTER", "DROP", "COMMENT", "TRUNCATE"]) {
        StatementClass::Ddl
    } else {
        StatementClass::Admin
    }
}

/// Classes a policy may name; `session` statements need no rule.
fn policy_class(name: &str) -> Option<StatementClass> {
    StatementClass::from_name(name).filter(|c| *c != StatementClass::Session)
}

/// A statement's [`fold`]ed text, made the first time a pattern rule needs it: policies made
/// of class rules only (`allow: [read]`) never pay for it.
pub struct Folded<'a> {
    text: &'a str,
    folded: std::cell::OnceCell<String>,
}

impl<'a> Folded<'a> {
    pub fn new(text: &'a str) -> Self {
        Self {
            text,
            folded: std::cell::OnceCell::new(),
        }
    }

    fn get(&self) -> &str {
        self.folded.get_or_init(|| fold(self.text))
    }
}

/// Lowercase with whitespace runs collapsed to one space: the form both
/// patterns and statements are compared in.
pub(crate) fn fold(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// What is wrong with a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleProblem {
    Empty,
    UnknownClass,
    Literal,
    UnknownSshWord,
}

impl std::fmt::Display for RuleProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Empty => "empty rule",
            Self::UnknownClass => {
                "neither a statement class (read, write, ddl, admin) nor a SQL pattern such as \"DROP *\""
            }
            Self::Literal => {
                "patterns match statements with every literal replaced by `?`; write `?` instead of the literal"
            }
            Self::UnknownSshWord => {
                "neither an SSH word (shell, scp, sftp, port_forward, agent_forward, x11) nor a command pattern such as \"git *\""
            }
        })
    }
}

//! Policy rules: a statement class (`read`, `write`, `ddl`, `admin`) or
//! `ACTION on RELATION` (`delete on customers`), matched against what the
//! classifier found the statement does; on SSH connections, SSH words and
//! command patterns (see `ssh.rs`).
//!
//! Relation names are matched as PostgreSQL resolves them, with the
//! session's `search_path` unknown (the client may change it at any time):
//! - a rule name without a schema means that name in every schema;
//! - a statement name without a schema may be in any schema on the path,
//!   so it matches a schema-qualified `deny` or `require_approval` rule
//!   whose name part matches, but never a schema-qualified `allow` rule;
//! - an object the statement does not name as a relation (`DROP SCHEMA`,
//!   `TRUNCATE ... CASCADE`) may reach any relation, so it matches every
//!   `deny` and `require_approval` rule with its action, and only an
//!   `allow` rule on `*`.
//!
//! So ambiguity holds or denies, and never widens what is allowed.

use portcullis_config::sql_rule::{self, Action, NamePattern, RelationPattern, SqlRule};

use crate::classify::{Act, RelationName, StatementClass, Target};

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
    On(OnRule),
    /// Rules of policies on SSH connections; see `ssh.rs`.
    Ssh(SshRule),
}

/// `ACTION on RELATION`, compiled.
#[derive(Debug, Clone)]
struct OnRule {
    actions: Vec<Action>,
    schema: Option<Name>,
    name: Name,
    /// `*`: also every object that is not a named relation.
    everything: bool,
}

#[derive(Debug, Clone)]
enum Name {
    Exact(String),
    Glob(Glob),
}

impl Name {
    fn compile(pattern: &NamePattern) -> Self {
        match pattern {
            NamePattern::Exact(name) => Self::Exact(name.clone()),
            NamePattern::Glob(glob) => Self::Glob(Glob::new(glob)),
        }
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Self::Exact(exact) => exact == name,
            Self::Glob(glob) => glob.matches(name),
        }
    }
}

impl OnRule {
    fn compile(actions: Vec<Action>, relation: &RelationPattern) -> Self {
        Self {
            actions,
            schema: relation.schema.as_ref().map(Name::compile),
            name: Name::compile(&relation.name),
            everything: relation.is_any(),
        }
    }

    /// Whether this rule, in `list`, covers `act`; see the module comment.
    fn covers(&self, act: &Act, list: List) -> bool {
        if !self.actions.contains(&act.action) {
            return false;
        }
        match &act.target {
            Target::Unnamed(_) => self.everything || list != List::Allow,
            Target::Relation(relation) => self.covers_relation(relation, list),
        }
    }

    fn covers_relation(&self, relation: &RelationName, list: List) -> bool {
        if !self.name.matches(&relation.name) {
            return false;
        }
        match (&self.schema, &relation.schema) {
            (None, _) => true,
            (Some(rule), Some(schema)) => rule.matches(schema),
            (Some(_), None) => list != List::Allow,
        }
    }
}

impl Rule {
    pub fn compile(policy: &str, list: List, text: &str) -> Result<Self, PolicyError> {
        let error = |problem| PolicyError::Rule {
            policy: policy.to_owned(),
            list: list.as_str(),
            rule: text.to_owned(),
            problem: RuleProblem::Sql(problem),
        };
        let matcher = match sql_rule::parse(text).map_err(error)? {
            SqlRule::Class(class) => RuleMatcher::Class(
                StatementClass::from_name(class)
                    .ok_or_else(|| error(sql_rule::SqlRuleError::UnknownClass(class.into())))?,
            ),
            SqlRule::On { actions, relation } => {
                RuleMatcher::On(OnRule::compile(actions, &relation))
            }
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

    /// A class rule naming `class`.
    pub fn is_class(&self, class: StatementClass) -> bool {
        matches!(self.matcher, RuleMatcher::Class(c) if c == class)
    }

    /// An action rule covering `act` when found in `list`.
    pub fn covers(&self, act: &Act, list: List) -> bool {
        match &self.matcher {
            RuleMatcher::On(rule) => rule.covers(act, list),
            RuleMatcher::Class(_) | RuleMatcher::Ssh(_) => false,
        }
    }

    /// The access level this `allow` rule lets run: its class, or for an
    /// action rule the highest class among its actions (`delete on orders`
    /// is `write`). SSH rules have no level.
    pub fn level(&self) -> StatementClass {
        match &self.matcher {
            RuleMatcher::Class(class) => *class,
            RuleMatcher::On(rule) => rule
                .actions
                .iter()
                .map(|&action| action_class(action))
                .max()
                .unwrap_or(StatementClass::Read),
            RuleMatcher::Ssh(_) => StatementClass::Session,
        }
    }

    /// Whether this rule matches an SSH request; SQL rules never do.
    pub fn matches_ssh(&self, request: &SshRequest, list: List) -> bool {
        match &self.matcher {
            RuleMatcher::Ssh(rule) => rule.matches(request, list),
            RuleMatcher::Class(_) | RuleMatcher::On(_) => false,
        }
    }
}

/// The class a statement needs to do `action`; what a database role of
/// that level must be allowed.
pub(crate) fn action_class(action: Action) -> StatementClass {
    match action {
        Action::Select => StatementClass::Read,
        Action::Insert | Action::Update | Action::Delete => StatementClass::Write,
        Action::Truncate | Action::Create | Action::Alter | Action::Drop => StatementClass::Ddl,
    }
}

/// Lowercase with whitespace runs collapsed to one space: the form SSH
/// command patterns and commands are compared in.
pub(crate) fn fold(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// What is wrong with a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleProblem {
    Empty,
    Sql(sql_rule::SqlRuleError),
    UnknownSshWord,
}

impl std::fmt::Display for RuleProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Empty => f.write_str("empty rule"),
            Self::Sql(problem) => problem.fmt(f),
            Self::UnknownSshWord => f.write_str(
                "neither an SSH word (shell, scp, sftp, port_forward, agent_forward, x11) nor a command pattern such as \"git *\"",
            ),
        }
    }
}

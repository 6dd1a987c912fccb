//! Where the decision is made: given the policies that apply to a principal
//! on a connection and a classified query, allow, deny or hold it.
//!
//! The order is fixed and simple enough to state in one line: for each
//! statement, a matching `deny` rule of any applicable policy wins, then a
//! matching `require_approval` rule holds it, then a matching `allow` rule
//! allows it; `session` statements (BEGIN, SET, SHOW...) are allowed to
//! anyone a policy applies to; everything else is denied by default. A query
//! is denied if any statement is, else held if any is, else allowed.
//!
//! Everything here is a pure function of the compiled policies, the
//! principal and the classification, so `portcullis policy test` and the
//! protocol drivers get the same answer.

mod glob;
mod principal;
mod rules;
mod ssh;

#[cfg(test)]
mod meaning_tests;
#[cfg(test)]
mod tests;

use std::fmt;

use portcullis_config::sql_rule::Action;
use portcullis_config::{
    Access, Config, ConnectionConfig, JitAccess, JitApproval, MaskConfig, PolicyConfig,
};
use portcullis_identity::Principal;

use crate::classify::{Act, Classification, Statement, StatementClass};

use principal::Matcher;
pub use rules::RuleProblem;
use rules::{List, Rule};
pub use ssh::{parse_scp, ForwardDirection, ScpCommand, ScpDirection, SshRequest, SSH_WORDS};

/// What happens to a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
    /// Held until an approver says yes; a timeout is a denial.
    Hold,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Hold => "hold",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The one decision for a query; later stages act on it and never re-inspect the SQL.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    pub verdict: Verdict,
    /// The policy whose rule decided; `None` for the default deny.
    pub policy: Option<String>,
    /// The rule that decided, as written: `read`, `delete on customers`; or
    /// `default deny`, `session`, `empty`. An allow by action rules names
    /// each rule it took, comma-separated.
    pub rule: String,
    /// A sentence for the client and the record.
    pub reason: String,
    /// Which statement of a multi-statement query decided a deny or hold.
    pub statement_index: Option<usize>,
}

/// Why policies could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {policy:?}: {list}: {rule:?}: {problem}")]
    Rule {
        policy: String,
        list: &'static str,
        rule: String,
        problem: RuleProblem,
    },
}

/// The configured policies, compiled once; shared by every session.
#[derive(Debug, Clone)]
pub struct PolicySet {
    policies: Vec<Policy>,
}

#[derive(Debug, Clone)]
struct Policy {
    name: String,
    matcher: Matcher,
    connection: String,
    access: Access,
    deny: Vec<Rule>,
    require_approval: Vec<Rule>,
    allow: Vec<Rule>,
    mask: Option<MaskConfig>,
}

impl Policy {
    /// `ssh`: the policy governs an SSH connection, so its rules are SSH
    /// words and command patterns rather than statement classes and SQL.
    fn compile(config: &PolicyConfig, ssh: bool) -> Result<Self, PolicyError> {
        let rules = |list: List, texts: &[String]| -> Result<Vec<Rule>, PolicyError> {
            texts
                .iter()
                .map(|t| match ssh {
                    true => Rule::compile_ssh(&config.name, list, t),
                    false => Rule::compile(&config.name, list, t),
                })
                .collect()
        };
        Ok(Self {
            name: config.name.clone(),
            matcher: Matcher::compile(&config.matcher),
            connection: config.connection.clone(),
            access: config.access.clone(),
            deny: rules(List::Deny, &config.deny)?,
            require_approval: rules(List::RequireApproval, &config.require_approval)?,
            allow: rules(List::Allow, &config.allow)?,
            mask: config.mask.clone(),
        })
    }

    fn rules(&self, list: List) -> &[Rule] {
        match list {
            List::Deny => &self.deny,
            List::RequireApproval => &self.require_approval,
            List::Allow => &self.allow,
        }
    }
}

impl PolicySet {
    /// Compiles policies whose rules are all SQL rules.
    pub fn compile(policies: &[PolicyConfig]) -> Result<Self, PolicyError> {
        Self::compile_with(policies, |_| false)
    }

    /// Compiles a whole config's policies, each by the type of the
    /// connection it governs (SSH rules for `type: ssh`).
    pub fn compile_config(config: &Config) -> Result<Self, PolicyError> {
        Self::compile_with(&config.policies, |name| {
            matches!(config.connection(name), Some(ConnectionConfig::Ssh(_)))
        })
    }

    fn compile_with(
        policies: &[PolicyConfig],
        is_ssh: impl Fn(&str) -> bool,
    ) -> Result<Self, PolicyError> {
        let policies = policies
            .iter()
            .map(|p| Policy::compile(p, is_ssh(&p.connection)))
            .collect::<Result<_, _>>()?;
        Ok(Self { policies })
    }

    /// Policies that match this principal for this connection, in config order.
    pub fn applicable<'a>(&'a self, principal: &Principal, connection: &str) -> Applicable<'a> {
        Applicable {
            policies: self
                .policies
                .iter()
                .filter(|p| p.connection == connection && p.matcher.matches(principal))
                .collect(),
        }
    }
}

/// The policies that apply to one principal on one connection; computed
/// once per session and asked about each query.
#[derive(Debug, Clone)]
pub struct Applicable<'a> {
    policies: Vec<&'a Policy>,
}

impl Applicable<'_> {
    /// No policy applies: the principal has no access to this connection.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    pub fn policy_names(&self) -> Vec<&str> {
        self.policies.iter().map(|p| p.name.as_str()).collect()
    }

    /// How access is granted: `Standing` when any applicable policy is
    /// standing; otherwise the `jit` settings of the first applicable policy
    /// (config order); `None` when no policy applies. Grants are enforced by
    /// the caller, not here.
    pub fn access(&self) -> Option<&Access> {
        self.policies
            .iter()
            .map(|p| &p.access)
            .find(|a| **a == Access::Standing)
            .or_else(|| self.policies.first().map(|p| &p.access))
    }

    /// The terms a just-in-time grant on this connection is given under, or
    /// `None` when no applicable policy is `jit`. With several jit policies the
    /// strictest terms win: the shortest `max`, and `required` if any requires
    /// a human, so adding a policy can never loosen a grant.
    pub fn jit_terms(&self) -> Option<JitAccess> {
        self.policies
            .iter()
            .filter_map(|p| match &p.access {
                Access::Jit(j) => Some(j.clone()),
                Access::Standing => None,
            })
            .reduce(|a, b| JitAccess {
                max: a.max.min(b.max),
                approval: if a.approval == JitApproval::Required
                    || b.approval == JitApproval::Required
                {
                    JitApproval::Required
                } else {
                    JitApproval::Auto
                },
            })
    }

    /// Only the standing policies: what applies when the principal holds no
    /// just-in-time grant. A `jit` policy's rules must not leak into a
    /// session that was admitted through another, standing policy.
    pub fn standing_only(&self) -> Self {
        Self {
            policies: self
                .policies
                .iter()
                .copied()
                .filter(|p| p.access == Access::Standing)
                .collect(),
        }
    }

    /// The access level whose upstream role a session of these policies
    /// logs in as: the highest class their `allow` rules let run, at least
    /// `read`. `require_approval` does not raise it: an approval lets one
    /// statement through the gateway, it does not widen the database role
    /// that backs every other statement of the session.
    pub fn level(&self) -> StatementClass {
        self.policies
            .iter()
            .flat_map(|p| p.allow.iter())
            .map(Rule::level)
            .fold(StatementClass::Read, StatementClass::max)
    }

    /// The mask settings of the applicable policies that have any.
    pub fn masks(&self) -> impl Iterator<Item = (&str, &MaskConfig)> {
        self.policies
            .iter()
            .filter_map(|p| p.mask.as_ref().map(|m| (p.name.as_str(), m)))
    }

    /// Decides a whole query: denied if any statement is (the first such),
    /// else held if any is, else allowed.
    pub fn decide(&self, classification: &Classification) -> Decision {
        let decisions: Vec<Decision> = classification
            .statements
            .iter()
            .map(|s| self.decide_statement(s))
            .collect();
        let first = |verdict: Verdict| {
            decisions
                .iter()
                .position(|d| d.verdict == verdict)
                .map(|i| Decision {
                    statement_index: Some(i),
                    ..decisions[i].clone()
                })
        };
        first(Verdict::Deny)
            .or_else(|| first(Verdict::Hold))
            .or_else(|| decisions.first().cloned())
            .unwrap_or_else(empty_query)
    }

    /// Decides one statement (its `statement_index` is `None`).
    pub fn decide_statement(&self, statement: &Statement) -> Decision {
        if self.policies.is_empty() {
            return default_deny("no policy applies to this principal on this connection".into());
        }
        let refusals = [
            (List::Deny, Verdict::Deny),
            (List::RequireApproval, Verdict::Hold),
        ];
        for (list, verdict) in refusals {
            if let Some(decision) = self.first_match(list, verdict, statement) {
                return decision;
            }
        }
        if let Some(decision) = self
            .class_allow(statement)
            .or_else(|| self.actions_allow(statement))
        {
            return decision;
        }
        if statement.class == StatementClass::Session {
            return self.session(statement);
        }
        let mut reason = format!(
            "no policy allows {} statements on this connection",
            statement.class
        );
        if let Some(why) = &statement.why {
            reason.push_str(&format!(" (this {} {why})", statement.command));
        }
        default_deny(reason)
    }

    /// The first rule of `list` (policies in config order) that names the
    /// statement's class or covers any of its actions.
    fn first_match(&self, list: List, verdict: Verdict, statement: &Statement) -> Option<Decision> {
        self.policies.iter().find_map(|policy| {
            policy.rules(list).iter().find_map(|rule| {
                let subject = if rule.is_class(statement.class) {
                    describe(statement)
                } else {
                    let act = statement.actions.iter().find(|a| rule.covers(a, list))?;
                    format!("{act} (in statement {:?})", statement.command)
                };
                Some(Decision {
                    verdict,
                    policy: Some(policy.name.clone()),
                    rule: rule.text.clone(),
                    reason: format!(
                        "{subject} matches {} rule {:?} of policy {:?}",
                        list.as_str(),
                        rule.text,
                        policy.name
                    ),
                    statement_index: None,
                })
            })
        })
    }

    fn class_allow(&self, statement: &Statement) -> Option<Decision> {
        self.policies.iter().find_map(|policy| {
            let rule = policy.allow.iter().find(|r| r.is_class(statement.class))?;
            Some(Decision {
                verdict: Verdict::Allow,
                policy: Some(policy.name.clone()),
                rule: rule.text.clone(),
                reason: format!(
                    "{} matches allow rule {:?} of policy {:?}",
                    describe(statement),
                    rule.text,
                    policy.name
                ),
                statement_index: None,
            })
        })
    }

    /// Allowed by action rules only when every action is covered by some
    /// applicable policy's allow rule and the statement does nothing else:
    /// no effect outside its actions, no class above what they explain.
    fn actions_allow(&self, statement: &Statement) -> Option<Decision> {
        if statement.actions.is_empty()
            || statement.unnamed_effect.is_some()
            || statement.class > explained_class(&statement.actions)
        {
            return None;
        }
        let covering: Vec<(&Act, &Policy, &Rule)> = statement
            .actions
            .iter()
            .map(|act| {
                self.allow_rule_for(act, &statement.actions)
                    .map(|(p, r)| (act, p, r))
            })
            .collect::<Option<_>>()?;
        let (_, first_policy, _) = covering.first()?;
        let mut rules: Vec<&str> = Vec::new();
        let mut reasons = Vec::new();
        for (act, policy, rule) in &covering {
            if !rules.contains(&rule.text.as_str()) {
                rules.push(&rule.text);
            }
            reasons.push(format!(
                "{act} matches allow rule {:?} of policy {:?}",
                rule.text, policy.name
            ));
        }
        Some(Decision {
            verdict: Verdict::Allow,
            policy: Some(first_policy.name.clone()),
            rule: rules.join(", "),
            reason: format!("statement {:?}: {}", statement.command, reasons.join("; ")),
            statement_index: None,
        })
    }

    /// The first allow rule covering `act`. Reading a relation the same
    /// statement writes is covered by the rule that allows the write: an
    /// `UPDATE` reads its target through `WHERE` and `RETURNING`.
    fn allow_rule_for(&self, act: &Act, all: &[Act]) -> Option<(&Policy, &Rule)> {
        let writes_of_target = all.iter().filter(|other| {
            act.action == Action::Select
                && other.action != Action::Select
                && other.target == act.target
        });
        std::iter::once(act)
            .chain(writes_of_target)
            .find_map(|wanted| self.first_allow_covering(wanted))
    }

    fn first_allow_covering(&self, act: &Act) -> Option<(&Policy, &Rule)> {
        self.policies.iter().find_map(|policy| {
            let rule = policy.allow.iter().find(|r| r.covers(act, List::Allow))?;
            Some((*policy, rule))
        })
    }

    fn session(&self, statement: &Statement) -> Decision {
        let policy = self.policies.first().map(|p| p.name.clone());
        Decision {
            verdict: Verdict::Allow,
            reason: format!(
                "session statement {:?} is allowed while a policy applies ({:?})",
                statement.command,
                policy.as_deref().unwrap_or_default()
            ),
            policy,
            rule: "session".into(),
            statement_index: None,
        }
    }
}

/// The strongest class the actions account for: a statement of a stronger
/// class does something its actions do not say.
fn explained_class(actions: &[Act]) -> StatementClass {
    actions
        .iter()
        .map(|act| rules::action_class(act.action))
        .max()
        .unwrap_or(StatementClass::Session)
}

/// `statement "SELECT"`, with the reason when its class was raised.
fn describe(statement: &Statement) -> String {
    match &statement.why {
        Some(why) => format!(
            "statement {:?} ({}: {why})",
            statement.command, statement.class
        ),
        None => format!("statement {:?}", statement.command),
    }
}

fn default_deny(reason: String) -> Decision {
    Decision {
        verdict: Verdict::Deny,
        policy: None,
        rule: "default deny".into(),
        reason,
        statement_index: None,
    }
}

fn empty_query() -> Decision {
    Decision {
        verdict: Verdict::Allow,
        policy: None,
        rule: "empty".into(),
        reason: "empty query".into(),
        statement_index: None,
    }
}

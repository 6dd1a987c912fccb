//! Which policies are about which principals.
//!
//! A policy's `match` names claims, groups and principal names; every
//! criterion given must hold (an unset one does not restrict). Claim values
//! are strings compared with `*` globs; an array claim matches when any of
//! its elements does, which is how `groups`-like claims are usually shaped.

use portcullis_config::MatchConfig;
use portcullis_identity::Principal;
use serde_json::Value;

use super::glob::Glob;

#[derive(Debug, Clone)]
pub(crate) struct Matcher {
    claims: Vec<(String, Glob)>,
    groups: Vec<String>,
    principals: Vec<Glob>,
}

impl Matcher {
    pub fn compile(config: &MatchConfig) -> Self {
        Self {
            claims: config
                .claims
                .iter()
                .map(|(name, pattern)| (name.clone(), Glob::new(pattern)))
                .collect(),
            groups: config.groups.clone(),
            principals: config.principals.iter().map(|p| Glob::new(p)).collect(),
        }
    }

    pub fn matches(&self, principal: &Principal) -> bool {
        let claims = self.claims.iter().all(|(name, glob)| {
            principal
                .claims
                .get(name)
                .is_some_and(|value| claim_matches(glob, value))
        });
        let groups =
            self.groups.is_empty() || self.groups.iter().any(|g| principal.groups.contains(g));
        let principals = self.principals.is_empty()
            || self.principals.iter().any(|g| g.matches(&principal.name));
        claims && groups && principals
    }
}

/// Strings by glob; numbers and booleans by their JSON text (`true`, `42`);
/// arrays when any element matches; objects and null never.
fn claim_matches(glob: &Glob, value: &Value) -> bool {
    match value {
        Value::String(s) => glob.matches(s),
        Value::Number(n) => glob.matches(&n.to_string()),
        Value::Bool(b) => glob.matches(if *b { "true" } else { "false" }),
        Value::Array(items) => items
            .iter()
            .any(|item| !item.is_array() && claim_matches(glob, item)),
        Value::Object(_) | Value::Null => false,
    }
}

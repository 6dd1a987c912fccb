//! Which policies are about which principals.
//!
//! A policy's `match` names an issuer, claims, groups and principal names;
//! every criterion given must hold (an unset one does not restrict; the
//! config check requires the issuer when several are configured, since the
//! same name from two issuers is two principals). Claim values
//! are strings compared with `*` globs; an array claim matches when any of
//! its elements does, which is how `groups`-like claims are usually shaped.

use portcullis_config::MatchConfig;
use portcullis_identity::Principal;
use serde_json::Value;

use super::glob::Glob;

#[derive(Debug, Clone)]
pub(crate) struct Matcher {
    issuer: Option<String>,
    claims: Vec<(String, Glob)>,
    groups: Vec<String>,
    principals: Vec<Glob>,
}

impl Matcher {
    pub fn compile(config: &MatchConfig) -> Self {
        Self {
            issuer: config.issuer.clone(),
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
        if self
            .issuer
            .as_ref()
            .is_some_and(|issuer| *issuer != principal.issuer)
        {
            return false;
        }
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

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use serde_json::json;

    use super::*;

    fn alice_of(issuer: &str) -> Principal {
        let serde_json::Value::Object(claims) = json!({ "sub": "alice" }) else {
            unreachable!()
        };
        Principal {
            name: "alice".into(),
            groups: vec!["sre".into()],
            issuer: issuer.into(),
            claims,
            expires_at: SystemTime::now(),
            token_fingerprint: "sha256:0000".into(),
        }
    }

    fn matcher(value: serde_json::Value) -> Matcher {
        Matcher::compile(&serde_json::from_value(value).expect("match config"))
    }

    #[test]
    fn the_same_name_from_another_issuer_is_another_principal() {
        let (corp, ci) = (alice_of("https://corp.test"), alice_of("https://ci.test"));
        for criterion in [
            json!({ "issuer": "https://corp.test", "principals": ["alice"] }),
            json!({ "issuer": "https://corp.test", "claims": { "sub": "alice" } }),
            json!({ "issuer": "https://corp.test", "groups": ["sre"] }),
        ] {
            let m = matcher(criterion.clone());
            assert!(m.matches(&corp), "{criterion}");
            assert!(!m.matches(&ci), "{criterion}");
        }
        // Without an issuer (allowed only when one is configured) the name alone decides.
        let any = matcher(json!({ "principals": ["alice"] }));
        assert!(any.matches(&corp) && any.matches(&ci));
    }
}

//! What a principal's applicable policies say to mask, compiled once per
//! session: declared columns with their method, content detectors, and how
//! to treat result fields that are not a plain column.
//!
//! Several policies can apply at once. Declared columns keep the method of
//! the policy that declared them (the first one that matches wins); the
//! detectors of all policies are united and use the strictest method any of
//! them names (`redact` over `hash` over `partial`), because one scan cannot
//! honour two methods and revealing less is the safe side.

use std::fmt;

use portcullis_config::MaskConfig;

use crate::detect::Detector;
use crate::mask::Method;

/// Where a result field comes from, as the catalog names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SourceColumn {
    pub schema: String,
    pub table: String,
    pub column: String,
}

impl fmt::Display for SourceColumn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.schema, self.table, self.column)
    }
}

/// A `mask.columns` entry: `table.column` or `schema.table.column`, `*`
/// matching any schema or table (never a column: a wildcard column would
/// be "mask everything", which `expressions: mask` plus a catch-all policy
/// says more plainly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnRule {
    schema: Option<String>,
    table: String,
    column: String,
    pub method: Method,
    /// The entry as written, for records.
    pub label: String,
}

impl ColumnRule {
    fn parse(entry: &str, method: Method) -> Option<Self> {
        let parts: Vec<&str> = entry.split('.').collect();
        let (schema, table, column) = match parts.as_slice() {
            [t, c] => (None, *t, *c),
            [s, t, c] => (Some(*s), *t, *c),
            _ => return None,
        };
        if [table, column].iter().any(|p| p.is_empty()) || column == "*" {
            return None;
        }
        Some(Self {
            schema: schema.filter(|s| *s != "*").map(str::to_string),
            table: table.to_string(),
            column: column.to_string(),
            method,
            label: entry.to_string(),
        })
    }

    /// Identifiers compare case-insensitively: a quoted `"Email"` column is
    /// still the email column, and masking too much is the safe mistake.
    pub fn matches(&self, source: &SourceColumn) -> bool {
        let same = |pattern: &str, name: &str| pattern == "*" || pattern.eq_ignore_ascii_case(name);
        self.column.eq_ignore_ascii_case(&source.column)
            && same(&self.table, &source.table)
            && self
                .schema
                .as_deref()
                .is_none_or(|s| same(s, &source.schema))
    }

    /// Whether a relation named as in a statement (`t`, `s.t`, quoted or
    /// not) could be a table this rule masks a column of.
    pub fn may_cover_relation(&self, relation: &str) -> bool {
        let relation = relation.replace('"', "");
        let (schema, table) = match relation.rsplit_once('.') {
            Some((s, t)) => (Some(s), t),
            None => (None, relation.as_str()),
        };
        let table_ok = self.table == "*" || self.table.eq_ignore_ascii_case(table);
        let schema_ok = match (&self.schema, schema) {
            (Some(want), Some(got)) => want.eq_ignore_ascii_case(got),
            _ => true,
        };
        table_ok && schema_ok
    }
}

/// What to do with a result field that is not a plain table column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expressions {
    /// Scan it with the detectors, like any other field.
    Detect,
    /// Mask it whole.
    Mask,
}

/// The compiled masking rules of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskRules {
    pub columns: Vec<ColumnRule>,
    pub detectors: Vec<Detector>,
    /// The method detector findings are masked with.
    pub detect_method: Method,
    pub expressions: Expressions,
}

/// A mask setting the config validator should have refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy {policy:?}: mask: {problem}")]
pub struct RuleError {
    pub policy: String,
    pub problem: String,
}

impl MaskRules {
    /// Compiles the mask settings of the applicable policies; `None` when
    /// there is nothing to mask, so sessions without rules pay nothing.
    pub fn compile<'a>(
        masks: impl IntoIterator<Item = (&'a str, &'a MaskConfig)>,
    ) -> Result<Option<MaskRules>, RuleError> {
        let mut rules = MaskRules {
            columns: Vec::new(),
            detectors: Vec::new(),
            detect_method: Method::Partial,
            expressions: Expressions::Detect,
        };
        let mut any_detector = false;
        for (policy, mask) in masks {
            let problem = |problem: String| RuleError {
                policy: policy.to_string(),
                problem,
            };
            let method = match &mask.method {
                Some(m) => m.parse().map_err(|e| problem(format!("{e}")))?,
                None => Method::Redact,
            };
            for entry in &mask.columns {
                let rule = ColumnRule::parse(entry, method).ok_or_else(|| {
                    problem(format!(
                        "{entry:?} is not table.column or schema.table.column"
                    ))
                })?;
                rules.columns.push(rule);
            }
            for name in &mask.detect {
                let d: Detector = name.parse().map_err(|e| problem(format!("{e}")))?;
                if !rules.detectors.contains(&d) {
                    rules.detectors.push(d);
                }
            }
            if !mask.detect.is_empty() {
                rules.detect_method = if any_detector {
                    stricter(rules.detect_method, method)
                } else {
                    method
                };
                any_detector = true;
            }
            match mask.expressions.as_deref() {
                None | Some("detect") => {}
                Some("mask") => rules.expressions = Expressions::Mask,
                Some(other) => {
                    return Err(problem(format!(
                        "expressions: {other:?} is neither detect nor mask"
                    )))
                }
            }
        }
        let nothing = rules.columns.is_empty()
            && rules.detectors.is_empty()
            && rules.expressions == Expressions::Detect;
        Ok((!nothing).then_some(rules))
    }

    /// The declared-column rule for a field's source column, if any.
    pub fn column(&self, source: &SourceColumn) -> Option<&ColumnRule> {
        self.columns.iter().find(|r| r.matches(source))
    }

    /// Whether a column of this name may be declared (in any table): a
    /// statement naming it may read a declared column.
    pub fn declares_column_named(&self, name: &str) -> bool {
        self.columns
            .iter()
            .any(|r| r.column.eq_ignore_ascii_case(name))
    }

    /// The first declared-column rule that may cover one of `relations`.
    pub fn covering(&self, relations: &[String]) -> Option<&ColumnRule> {
        self.columns
            .iter()
            .find(|r| relations.iter().any(|rel| r.may_cover_relation(rel)))
    }
}

fn stricter(a: Method, b: Method) -> Method {
    let rank = |m| match m {
        Method::Redact => 2,
        Method::Hash => 1,
        Method::Partial => 0,
    };
    if rank(b) > rank(a) {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(columns: &[&str], detect: &[&str], method: Option<&str>) -> MaskConfig {
        MaskConfig {
            columns: columns.iter().map(|s| s.to_string()).collect(),
            detect: detect.iter().map(|s| s.to_string()).collect(),
            method: method.map(str::to_string),
            expressions: None,
        }
    }

    fn source(schema: &str, table: &str, column: &str) -> SourceColumn {
        SourceColumn {
            schema: schema.into(),
            table: table.into(),
            column: column.into(),
        }
    }

    #[test]
    fn nothing_to_mask_compiles_to_none() {
        let empty = mask(&[], &[], Some("hash"));
        assert_eq!(MaskRules::compile([("p", &empty)]), Ok(None));
        assert_eq!(MaskRules::compile([]), Ok(None));
    }

    #[test]
    fn declared_columns_match_by_table_schema_and_wildcard() {
        let m = mask(
            &["customers.email", "*.card_number", "billing.accounts.iban"],
            &[],
            Some("partial"),
        );
        let rules = MaskRules::compile([("p", &m)]).unwrap().unwrap();
        let hit = |s, t, c| rules.column(&source(s, t, c)).map(|r| r.label.as_str());
        assert_eq!(hit("public", "customers", "email"), Some("customers.email"));
        assert_eq!(hit("sales", "Customers", "EMAIL"), Some("customers.email"));
        assert_eq!(hit("x", "orders", "card_number"), Some("*.card_number"));
        assert_eq!(
            hit("billing", "accounts", "iban"),
            Some("billing.accounts.iban")
        );
        assert_eq!(hit("public", "accounts", "iban"), None);
        assert_eq!(hit("public", "customers", "name"), None);
        assert_eq!(hit("public", "suppliers", "email"), None);
        assert_eq!(rules.columns[0].method, Method::Partial);
        assert!(rules.declares_column_named("EMAIL") && rules.declares_column_named("iban"));
        assert!(!rules.declares_column_named("name"));
    }

    #[test]
    fn wildcard_columns_and_malformed_entries_are_refused() {
        for bad in ["customers.*", "email", "a.b.c.d", ".email"] {
            let m = mask(&[bad], &[], None);
            assert!(MaskRules::compile([("p", &m)]).is_err(), "{bad}");
        }
    }

    #[test]
    fn relations_in_statements_are_matched_loosely() {
        let m = mask(&["billing.accounts.iban", "customers.email"], &[], None);
        let rules = MaskRules::compile([("p", &m)]).unwrap().unwrap();
        let covers = |rel: &str| rules.covering(&[rel.to_string()]).is_some();
        assert!(covers("accounts"));
        assert!(covers("billing.accounts"));
        assert!(covers("\"customers\""));
        assert!(covers("public.customers"));
        assert!(!covers("other.accounts"));
        assert!(!covers("orders"));
        let any = mask(&["*.card_number"], &[], None);
        let rules = MaskRules::compile([("p", &any)]).unwrap().unwrap();
        assert!(rules.covering(&["orders".into()]).is_some());
    }

    #[test]
    fn detectors_unite_and_the_strictest_method_wins() {
        let a = mask(&[], &["email", "credit_card"], Some("partial"));
        let b = mask(&[], &["email", "iban"], Some("hash"));
        let c = mask(&["t.c"], &[], Some("redact"));
        let rules = MaskRules::compile([("a", &a), ("b", &b), ("c", &c)])
            .unwrap()
            .unwrap();
        assert_eq!(
            rules.detectors,
            vec![Detector::Email, Detector::CreditCard, Detector::Iban]
        );
        // `c` declares columns only, so its method does not touch detectors.
        assert_eq!(rules.detect_method, Method::Hash);
        let default = mask(&[], &["email"], None);
        let rules = MaskRules::compile([("p", &a), ("q", &default)])
            .unwrap()
            .unwrap();
        assert_eq!(rules.detect_method, Method::Redact);
    }

    #[test]
    fn expressions_mode() {
        let mut m = mask(&[], &[], None);
        m.expressions = Some("mask".into());
        let rules = MaskRules::compile([("p", &m)]).unwrap().unwrap();
        assert_eq!(rules.expressions, Expressions::Mask);
        m.expressions = Some("allow".into());
        assert!(MaskRules::compile([("p", &m)]).is_err());
    }
}

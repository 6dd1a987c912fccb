//! The grammar of rules on PostgreSQL connections: a statement class
//! (`read`, `write`, `ddl`, `admin`) or `ACTION on RELATION`
//! (`delete on customers`, `write on payroll.*`).
//!
//! Rules used to be text patterns matched against the statement
//! (`"DELETE FROM orders *"`), which a statement escapes by quoting a name,
//! qualifying it with its schema or wrapping the `DELETE` in a CTE. Only the
//! legacy form `"VERB *"` survives, read as `verb on *`, which the policy
//! crate matches against what the parse tree does; any other text pattern
//! is refused here, with the rule to write instead, so an old config fails
//! loudly rather than silently matching less.
//!
//! Relation names are read as PostgreSQL reads identifiers: unquoted parts
//! are folded to lower case, `"quoted"` parts are kept exactly, and both are
//! cut to 63 bytes. This module is only the syntax; what a rule matches is
//! decided in the policy crate.

use std::fmt;

/// Statement classes a rule may name (`session` statements need no rule).
pub const STATEMENT_CLASSES: [&str; 4] = ["read", "write", "ddl", "admin"];

/// PostgreSQL's `NAMEDATALEN - 1`: longer identifiers are cut to this many bytes.
const MAX_IDENTIFIER_BYTES: usize = 63;

/// One thing a statement does to one relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Select,
    Insert,
    Update,
    Delete,
    Truncate,
    Create,
    Alter,
    Drop,
}

impl Action {
    pub const ALL: [Action; 8] = [
        Self::Select,
        Self::Insert,
        Self::Update,
        Self::Delete,
        Self::Truncate,
        Self::Create,
        Self::Alter,
        Self::Drop,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Select => "select",
            Self::Insert => "insert",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::Truncate => "truncate",
            Self::Create => "create",
            Self::Alter => "alter",
            Self::Drop => "drop",
        }
    }

    fn from_word(word: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == word)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verbs a rule may use: every [`Action`], and words for groups of them.
const GROUPS: [(&str, &[Action]); 3] = [
    ("read", &[Action::Select]),
    (
        "write",
        &[
            Action::Insert,
            Action::Update,
            Action::Delete,
            Action::Truncate,
        ],
    ),
    ("ddl", &[Action::Create, Action::Alter, Action::Drop]),
];

/// One part of a relation name in a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamePattern {
    /// A name as PostgreSQL stores it (folded, or quoted and exact).
    Exact(String),
    /// An unquoted part with `*` in it, folded; `*` matches any sequence.
    Glob(String),
}

impl NamePattern {
    pub fn is_any(&self) -> bool {
        matches!(self, Self::Glob(g) if g == "*")
    }
}

/// `name`, `schema.name`; a missing schema means every schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationPattern {
    pub schema: Option<NamePattern>,
    pub name: NamePattern,
}

impl RelationPattern {
    /// `*`: every relation and every object that is not one.
    pub fn is_any(&self) -> bool {
        self.schema.is_none() && self.name.is_any()
    }
}

/// A parsed rule of a policy on a PostgreSQL connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlRule {
    /// A statement class, lower case.
    Class(&'static str),
    /// `ACTION on RELATION`.
    On {
        actions: Vec<Action>,
        relation: RelationPattern,
    },
}

/// Why a rule is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqlRuleError {
    #[error("empty rule")]
    Empty,
    #[error("neither a statement class (read, write, ddl, admin) nor a rule such as \"delete on customers\"")]
    UnknownClass(String),
    #[error("unknown action {0:?}; known: {known}", known = verbs())]
    UnknownAction(String),
    #[error("{0:?} is not a relation name (name, schema.name, \"Quoted\", * and payroll.*)")]
    BadRelation(String),
    #[error("text patterns are not matched any more, because a statement can escape them (quoting, schema, a CTE, EXPLAIN ANALYZE); write {suggestion}")]
    TextPattern { suggestion: String },
}

fn verbs() -> String {
    let atoms = Action::ALL.iter().map(|a| a.as_str());
    let groups = GROUPS.iter().map(|(word, _)| *word);
    atoms.chain(groups).collect::<Vec<_>>().join(", ")
}

/// Parses one rule as written in `allow`, `require_approval` or `deny`.
pub fn parse(text: &str) -> Result<SqlRule, SqlRuleError> {
    let (first, rest) = next_word(text);
    let (second, relation) = next_word(rest);
    match (first, second, relation.trim()) {
        ("", _, _) => Err(SqlRuleError::Empty),
        (word, "", _) if !word.contains('*') => class(word),
        (verb, on, relation) if on.eq_ignore_ascii_case("on") && !relation.is_empty() => {
            let actions = actions(verb)?;
            let relation = relation_pattern(relation)?;
            Ok(SqlRule::On { actions, relation })
        }
        (verb, "*", "") => legacy(verb),
        _ => Err(SqlRuleError::TextPattern {
            suggestion: suggest(&text.split_whitespace().collect::<Vec<_>>()),
        }),
    }
}

/// The first whitespace-separated word and what follows it.
fn next_word(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    text.split_at(text.find(char::is_whitespace).unwrap_or(text.len()))
}

fn class(word: &str) -> Result<SqlRule, SqlRuleError> {
    STATEMENT_CLASSES
        .into_iter()
        .find(|c| c.eq_ignore_ascii_case(word))
        .map(SqlRule::Class)
        .ok_or_else(|| SqlRuleError::UnknownClass(word.to_owned()))
}

fn actions(verb: &str) -> Result<Vec<Action>, SqlRuleError> {
    let verb = verb.to_ascii_lowercase();
    if let Some(action) = Action::from_word(&verb) {
        return Ok(vec![action]);
    }
    GROUPS
        .iter()
        .find(|(word, _)| *word == verb)
        .map(|(_, actions)| actions.to_vec())
        .ok_or(SqlRuleError::UnknownAction(verb))
}

/// `"DELETE *"` from configs written before rules had meaning: the same
/// verb on every relation, which catches what the text pattern missed.
fn legacy(verb: &str) -> Result<SqlRule, SqlRuleError> {
    match Action::from_word(&verb.to_ascii_lowercase()) {
        Some(action) => Ok(SqlRule::On {
            actions: vec![action],
            relation: RelationPattern {
                schema: None,
                name: NamePattern::Glob("*".into()),
            },
        }),
        None => Err(SqlRuleError::TextPattern {
            suggestion: format!("a statement class or \"ACTION on *\" ({})", verbs()),
        }),
    }
}

/// The `ACTION on RELATION` rule a text pattern most likely meant:
/// `DELETE FROM orders *` → `"delete on orders"`.
fn suggest(words: &[&str]) -> String {
    let lower: Vec<String> = words.iter().map(|w| w.to_ascii_lowercase()).collect();
    let filler = ["from", "into", "table", "only", "view", "if", "exists"];
    let action = lower.first().and_then(|w| Action::from_word(w));
    let relation = lower
        .iter()
        .skip(1)
        .find(|w| *w != "*" && !filler.contains(&w.as_str()) && relation_pattern(w).is_ok());
    match (action, relation) {
        (Some(action), Some(relation)) => format!("\"{action} on {relation}\""),
        (Some(action), None) => format!("\"{action} on RELATION\""),
        _ => "\"ACTION on RELATION\" such as \"delete on customers\"".into(),
    }
}

/// `name`, `schema.name`, `"Quoted"`, `*`, `payroll.*`; a third leading
/// part names the database, which PostgreSQL requires to be the current one.
fn relation_pattern(text: &str) -> Result<RelationPattern, SqlRuleError> {
    let bad = || SqlRuleError::BadRelation(text.to_owned());
    let mut parts = split_parts(text).ok_or_else(bad)?;
    if parts.len() == 3 {
        parts.remove(0);
    }
    let mut parts = parts.into_iter();
    match (parts.next(), parts.next(), parts.next()) {
        (Some(name), None, None) => Ok(RelationPattern { schema: None, name }),
        (Some(schema), Some(name), None) => Ok(RelationPattern {
            schema: Some(schema),
            name,
        }),
        _ => Err(bad()),
    }
}

/// Splits on dots outside quotes; `None` when a part is empty, a quote is
/// unterminated or an unquoted part has a character identifiers cannot have.
fn split_parts(text: &str) -> Option<Vec<NamePattern>> {
    let mut parts = Vec::new();
    let mut rest = text;
    loop {
        let (part, after) = match rest.strip_prefix('"') {
            Some(quoted) => quoted_part(quoted)?,
            None => unquoted_part(rest)?,
        };
        parts.push(part);
        match after.strip_prefix('.') {
            Some(next) => rest = next,
            None if after.is_empty() => return Some(parts),
            None => return None,
        }
    }
}

/// The body of a quoted identifier (`""` is a quote), kept exactly.
fn quoted_part(text: &str) -> Option<(NamePattern, &str)> {
    let mut name = String::new();
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        if c != '"' {
            name.push(c);
            continue;
        }
        if text[at + 1..].starts_with('"') {
            name.push('"');
            chars.next();
            continue;
        }
        if name.is_empty() {
            return None;
        }
        return Some((NamePattern::Exact(truncate(name)), &text[at + 1..]));
    }
    None
}

fn unquoted_part(text: &str) -> Option<(NamePattern, &str)> {
    let end = text.find(['.', '"']).unwrap_or(text.len());
    let (raw, after) = text.split_at(end);
    let identifier_char = |c: char| c.is_alphanumeric() || matches!(c, '_' | '$' | '*');
    if raw.is_empty() || !raw.chars().all(identifier_char) {
        return None;
    }
    // PostgreSQL folds only ASCII letters in unquoted identifiers.
    let folded = truncate(raw.to_ascii_lowercase());
    let pattern = match folded.contains('*') {
        true => NamePattern::Glob(folded),
        false => NamePattern::Exact(folded),
    };
    Some((pattern, after))
}

/// Cuts a name to what PostgreSQL keeps, at a character boundary.
fn truncate(mut name: String) -> String {
    if name.len() > MAX_IDENTIFIER_BYTES {
        let mut end = MAX_IDENTIFIER_BYTES;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(actions: &[Action], schema: Option<NamePattern>, name: NamePattern) -> SqlRule {
        SqlRule::On {
            actions: actions.to_vec(),
            relation: RelationPattern { schema, name },
        }
    }

    fn exact(s: &str) -> NamePattern {
        NamePattern::Exact(s.into())
    }

    #[test]
    fn classes_and_actions_parse() {
        assert_eq!(parse(" READ "), Ok(SqlRule::Class("read")));
        assert_eq!(
            parse("delete on customers"),
            Ok(on(&[Action::Delete], None, exact("customers")))
        );
        assert_eq!(
            parse("DELETE  ON Public.ORDERS"),
            Ok(on(
                &[Action::Delete],
                Some(exact("public")),
                exact("orders")
            ))
        );
        assert_eq!(
            parse("write on payroll.*"),
            Ok(on(
                &[
                    Action::Insert,
                    Action::Update,
                    Action::Delete,
                    Action::Truncate
                ],
                Some(exact("payroll")),
                NamePattern::Glob("*".into())
            ))
        );
        assert_eq!(
            parse(r#"update on "My ""odd"" Table""#),
            Ok(on(&[Action::Update], None, exact(r#"My "odd" Table"#)))
        );
        assert_eq!(
            parse("select on orders.public.Tmp_*"),
            Ok(on(
                &[Action::Select],
                Some(exact("public")),
                NamePattern::Glob("tmp_*".into())
            ))
        );
    }

    #[test]
    fn legacy_verb_star_becomes_verb_on_everything() {
        let SqlRule::On { actions, relation } = parse("DELETE *").unwrap() else {
            panic!("not an action rule")
        };
        assert_eq!(actions, vec![Action::Delete]);
        assert!(relation.is_any());
        assert!(parse("DROP  *").is_ok());
    }

    #[test]
    fn text_patterns_are_refused_with_the_rule_to_write() {
        for (pattern, suggestion) in [
            ("DELETE FROM orders *", "\"delete on orders\""),
            (
                "delete from public.orders where *",
                "\"delete on public.orders\"",
            ),
            ("INSERT INTO audit*", "\"insert on audit*\""),
            ("DROP TABLE IF EXISTS t *", "\"drop on t\""),
            ("GRANT *", "a statement class or"),
            ("SELECT * FROM t WHERE x = 1", "\"select on t\""),
        ] {
            let err = parse(pattern).unwrap_err().to_string();
            assert!(err.contains("text patterns"), "{pattern}: {err}");
            assert!(err.contains(suggestion), "{pattern}: {err}");
        }
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        assert_eq!(parse("  "), Err(SqlRuleError::Empty));
        assert_eq!(
            parse("session"),
            Err(SqlRuleError::UnknownClass("session".into()))
        );
        assert!(matches!(
            parse("erase on t"),
            Err(SqlRuleError::UnknownAction(_))
        ));
        for relation in ["a.b.c.d", "\"open", "a..b", "t;x", "\"\""] {
            assert!(
                matches!(
                    parse(&format!("delete on {relation}")),
                    Err(SqlRuleError::BadRelation(_))
                ),
                "{relation}"
            );
        }
    }

    #[test]
    fn long_names_are_cut_as_postgresql_cuts_them() {
        let long = "a".repeat(70);
        assert_eq!(
            parse(&format!("delete on {long}")),
            Ok(on(&[Action::Delete], None, exact(&"a".repeat(63))))
        );
    }
}

//! Statement classification with the real PostgreSQL parser.
//!
//! Every statement a client sends is parsed by `pg_query` (PostgreSQL's own
//! grammar, not regexes) and put in one class: `session`, `read`, `write`,
//! `ddl` or `admin`, together with the relations it touches and the
//! functions it calls. Policies are written in these classes, so the
//! mistakes that matter are under-classifications: a `SELECT` that
//! terminates backends, a `COPY` that runs a shell. When unsure, the answer
//! is the stronger class.
//!
//! Parsing costs tens of microseconds, so [`Classifier`] caches results
//! under the literal-stripped text from [`normalize`].

pub mod actions;
mod cache;
pub mod facts;
mod functions;
mod kinds;
pub(crate) mod lexer;
mod model;
mod names;
mod parse;
mod walk;

#[cfg(test)]
mod tests;

use std::fmt;

pub use actions::{Act, RelationName, Target};
pub use cache::Classifier;
pub use model::is_utf8_encoding;
pub use names::{name_effects, NameEffect};
pub use parse::SyntaxError;

/// What a statement may do, weakest first; the order is used to combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StatementClass {
    /// Transaction control and ordinary session settings.
    Session,
    /// Returns data and changes nothing.
    Read,
    /// Changes rows (or other data, such as sequences and large objects).
    Write,
    /// Changes the schema.
    Ddl,
    /// Acts on the server, roles, privileges, files or other sessions.
    Admin,
}

impl StatementClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Read => "read",
            Self::Write => "write",
            Self::Ddl => "ddl",
            Self::Admin => "admin",
        }
    }

    /// Parses a class name as policies write it (case-insensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::Session,
            Self::Read,
            Self::Write,
            Self::Ddl,
            Self::Admin,
        ]
        .into_iter()
        .find(|c| c.as_str().eq_ignore_ascii_case(name.trim()))
    }
}

impl fmt::Display for StatementClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One statement of a query, classified.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Statement {
    pub class: StatementClass,
    /// The command, as PostgreSQL tags it: `SELECT`, `DROP TABLE`, `COPY FROM`.
    pub command: String,
    /// This statement's text with literals replaced by `?`, comments dropped
    /// and whitespace collapsed.
    pub normalized: String,
    /// What it does to which relation, anywhere in its tree (CTEs,
    /// `EXPLAIN ANALYZE`, `PREPARE` bodies, rule actions, sub-queries):
    /// what `ACTION on RELATION` rules match against.
    pub actions: Vec<Act>,
    /// Something it may do that no action names (a call with side effects,
    /// a row lock): action rules can then hold or deny it, never allow it.
    pub unnamed_effect: Option<String>,
    /// Tables and views touched, schema-qualified as written.
    pub relations: Vec<String>,
    /// Functions called, schema-qualified as written.
    pub functions: Vec<String>,
    /// Why the class is stronger than the command suggests
    /// (`calls pg_terminate_backend`).
    pub why: Option<String>,
    /// Which columns the statement may read, for result masking.
    pub reads: Reads,
}

/// The columns a statement may read, as far as its text shows: masking
/// asks it whether a computed result field could carry a masked column's
/// value. It errs towards "more": a name counts wherever it appears.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Reads {
    /// Names of the columns referenced anywhere (the last part of each
    /// reference: `email` for `c.email`), sorted, each once.
    pub columns: Vec<String>,
    /// Some relation's columns may be read under names the text does not
    /// show: a `*`, a whole-row reference (`select c from customers c`,
    /// `row_to_json(c)`) or a column alias list (`from customers x(a, b)`).
    pub whole_rows: bool,
}

/// All statements of one query string, in order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Classification {
    /// Empty for an empty, whitespace-only or comment-only query.
    pub statements: Vec<Statement>,
}

impl Classification {
    /// The strongest class among the statements; `None` for an empty query.
    pub fn class(&self) -> Option<StatementClass> {
        self.statements.iter().map(|s| s.class).max()
    }
}

/// Why a query could not be classified. The caller refuses the query.
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    /// PostgreSQL's grammar rejects the query; the server would say the same.
    #[error("{0}")]
    Syntax(SyntaxError),
    /// The query is nested deeper than the parser's limits (PostgreSQL's own
    /// 2 MB `max_stack_depth`, a parse tree 10,000 levels deep): SQLSTATE 54001.
    #[error("statement too complex: {0}")]
    TooComplex(String),
    /// The query would change how the server reads queries (a non-UTF-8
    /// `client_encoding`, `standard_conforming_strings` off): no principal
    /// may run it, whatever its policy allows. SQLSTATE 0A000.
    #[error("{0}")]
    Unsupported(String),
    /// The query cannot be handed to the parser (a NUL byte).
    #[error("cannot read query: {0}")]
    Unreadable(String),
    /// The parser or the classifier failed; a gateway bug, not the client's.
    #[error("classifier failure: {0}")]
    Internal(String),
}

/// Classifies every statement of `sql` with a full parse.
pub fn classify(sql: &str) -> Result<Classification, ClassifyError> {
    analyze(sql).map(|a| a.classification)
}

/// The literal-stripping normalizer: the classification cache key.
///
/// A hand-written lexer, not the parser, because it runs on every
/// statement. `None` when the text cannot serve as a key: it does not lex
/// (unterminated string, quoted identifier or comment; a number running into
/// a word), or it has a `?` operator of its own, which the key could not
/// tell from a stripped literal. The caller then classifies without caching.
pub fn normalize(sql: &str) -> Option<String> {
    lexer::lex(sql).key()
}

/// A classification and whether it may be cached under the normalized key.
pub(crate) struct Analysis {
    pub classification: Classification,
    /// False when some statement's class depends on a literal's value.
    pub cacheable: bool,
}

pub(crate) fn analyze(sql: &str) -> Result<Analysis, ClassifyError> {
    parse::with_tree(sql, |tree| analyze_tree(sql, tree))?
}

fn analyze_tree(
    sql: &str,
    tree: &pg_query::protobuf::ParseResult,
) -> Result<Analysis, ClassifyError> {
    let mut statements = Vec::with_capacity(tree.stmts.len());
    let mut cacheable = true;
    for raw in &tree.stmts {
        let node = raw
            .stmt
            .as_ref()
            .and_then(|s| s.node.as_ref())
            .ok_or_else(|| ClassifyError::Internal("statement without a parse tree".into()))?;
        let text = statement_text(sql, raw.stmt_location, raw.stmt_len);
        let (statement, literal_sensitive) = statement(node, text)?;
        cacheable &= !literal_sensitive;
        statements.push(statement);
    }
    Ok(Analysis {
        classification: Classification { statements },
        cacheable,
    })
}

/// The statement's own text; `stmt_len` 0 means "to the end".
fn statement_text(sql: &str, location: i32, len: i32) -> &str {
    let start = usize::try_from(location).unwrap_or(0);
    let end = match usize::try_from(len) {
        Ok(0) | Err(_) => sql.len(),
        Ok(len) => start.saturating_add(len),
    };
    sql.get(start..end).unwrap_or(sql)
}

fn statement(node: &pg_query::NodeEnum, text: &str) -> Result<(Statement, bool), ClassifyError> {
    let kind = kinds::kind_of(node);
    let tree = serde_json::to_value(node).map_err(|e| ClassifyError::Internal(e.to_string()))?;
    // Below the statement's own tag, so that a DELETE is not "nested" in itself.
    let body = tree
        .as_object()
        .and_then(|o| o.values().next())
        .unwrap_or(&tree);
    let facts = walk::walk(body);
    if let Some(why) = facts.refusal {
        return Err(ClassifyError::Unsupported(why));
    }
    let actions = actions::collect(&tree, &kind.command);
    let (class, why) = match facts.raise {
        Some((raised, why)) if raised > kind.class => (raised, Some(why)),
        _ => (kind.class, kind.why),
    };
    let mut relations = kinds::dropped_relations(node);
    relations.extend(facts.relations);
    let statement = Statement {
        class,
        command: kind.command,
        normalized: lexer::lex(text).text,
        actions,
        unnamed_effect: facts.unnamed_effect,
        relations,
        functions: facts.functions,
        why,
        reads: facts.reads,
    };
    Ok((statement, kind.literal_sensitive || facts.literal_sensitive))
}

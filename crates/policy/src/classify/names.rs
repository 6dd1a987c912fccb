//! What a query does with the session's named prepared statements at the
//! SQL level (`PREPARE`, `EXECUTE`, `DEALLOCATE`, `DISCARD ALL`).
//!
//! `EXECUTE name` runs text that is not in the query, so a driver has to
//! decide it as the body the server holds under that name; these effects
//! tell it which name each statement uses or changes. A second parse, but
//! only of queries that mention one of the keywords at all.

use pg_query::protobuf::{self, DiscardMode};
use pg_query::NodeEnum as N;

use super::{parse::with_tree, statement_text, ClassifyError};

/// One statement's effect on the session's prepared statements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameEffect {
    /// `PREPARE name AS body`: `body` is the statement's own text after `AS`.
    Prepare { name: String, body: String },
    /// Runs the statement prepared as `name`; `wrapped` when inside
    /// `EXPLAIN` or `CREATE TABLE AS`, which add their own effect to it.
    Execute { name: String, wrapped: bool },
    /// `DEALLOCATE name`.
    Deallocate { name: String },
    /// `DEALLOCATE ALL` or `DISCARD ALL`: every prepared statement goes.
    DeallocateAll,
}

/// The effect of each statement of `sql` (aligned with
/// [`Classification::statements`](super::Classification)); `None` for a
/// statement with none.
pub fn name_effects(sql: &str) -> Result<Vec<Option<NameEffect>>, ClassifyError> {
    if !mentions_names(sql) {
        return Ok(Vec::new());
    }
    with_tree(sql, |tree| {
        tree.stmts
            .iter()
            .map(|raw| {
                let node = raw.stmt.as_ref().and_then(|s| s.node.as_ref());
                let text = statement_text(sql, raw.stmt_location, raw.stmt_len);
                node.map_or(Ok(None), |n| effect(n, text))
            })
            .collect()
    })?
}

/// Whether any statement of `sql` can have an effect: the keywords are
/// reserved or unreserved words that must appear in the text.
fn mentions_names(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    ["prepare", "execute", "deallocate", "discard"]
        .iter()
        .any(|k| lower.contains(k))
}

fn effect(node: &N, text: &str) -> Result<Option<NameEffect>, ClassifyError> {
    Ok(match node {
        N::PrepareStmt(p) => Some(NameEffect::Prepare {
            name: p.name.clone(),
            body: prepared_body(text)?.to_string(),
        }),
        N::ExecuteStmt(e) => Some(NameEffect::Execute {
            name: e.name.clone(),
            wrapped: false,
        }),
        N::ExplainStmt(e) => wrapped_execute(e.query.as_deref()),
        N::CreateTableAsStmt(c) => wrapped_execute(c.query.as_deref()),
        N::DeallocateStmt(d) if d.isall => Some(NameEffect::DeallocateAll),
        N::DeallocateStmt(d) => Some(NameEffect::Deallocate {
            name: d.name.clone(),
        }),
        N::DiscardStmt(d) if d.target == DiscardMode::DiscardAll as i32 => {
            Some(NameEffect::DeallocateAll)
        }
        _ => None,
    })
}

/// The `EXECUTE` inside `EXPLAIN` or `CREATE TABLE AS`, however deep.
fn wrapped_execute(inner: Option<&protobuf::Node>) -> Option<NameEffect> {
    match inner?.node.as_ref()? {
        N::ExecuteStmt(e) => Some(NameEffect::Execute {
            name: e.name.clone(),
            wrapped: true,
        }),
        N::ExplainStmt(e) => wrapped_execute(e.query.as_deref()),
        N::CreateTableAsStmt(c) => wrapped_execute(c.query.as_deref()),
        _ => None,
    }
}

/// The text after the first `AS` outside parentheses: the grammar is
/// `PREPARE name [ ( types ) ] AS statement`, and neither a name nor a
/// type list can hold a bare `AS` keyword.
fn prepared_body(text: &str) -> Result<&str, ClassifyError> {
    let tokens =
        pg_query::scan_tokens(text).map_err(|e| ClassifyError::Unreadable(e.to_string()))?;
    let mut depth = 0i32;
    for t in tokens {
        match protobuf::Token::try_from(t.token) {
            Ok(protobuf::Token::Ascii40) => depth += 1,
            Ok(protobuf::Token::Ascii41) => depth -= 1,
            Ok(protobuf::Token::As) if depth == 0 => {
                let start = usize::try_from(t.end).unwrap_or(text.len());
                return text
                    .get(start..)
                    .map(str::trim)
                    .ok_or_else(|| ClassifyError::Internal("PREPARE body out of range".into()));
            }
            _ => {}
        }
    }
    Err(ClassifyError::Internal("PREPARE without AS".into()))
}

#[cfg(test)]
mod tests {
    use super::{name_effects, NameEffect};

    fn prepare(name: &str, body: &str) -> Option<NameEffect> {
        Some(NameEffect::Prepare {
            name: name.into(),
            body: body.into(),
        })
    }

    #[test]
    fn prepare_names_its_body_as_written() {
        assert_eq!(
            name_effects("PREPARE s (int, text) AS DELETE FROM t WHERE id = $1").unwrap(),
            vec![prepare("s", "DELETE FROM t WHERE id = $1")]
        );
        assert_eq!(
            name_effects("prepare \"as\" as select 'as' as x").unwrap(),
            vec![prepare("as", "select 'as' as x")]
        );
    }

    #[test]
    fn every_statement_gets_its_effect_in_order() {
        let effects = name_effects(
            "SELECT 1; EXECUTE s(1); DEALLOCATE s; DEALLOCATE ALL; DISCARD ALL; DISCARD PLANS",
        )
        .unwrap();
        assert_eq!(
            effects,
            vec![
                None,
                Some(NameEffect::Execute {
                    name: "s".into(),
                    wrapped: false
                }),
                Some(NameEffect::Deallocate { name: "s".into() }),
                Some(NameEffect::DeallocateAll),
                Some(NameEffect::DeallocateAll),
                None,
            ]
        );
    }

    #[test]
    fn execute_inside_explain_and_create_table_as_is_found() {
        for sql in [
            "EXPLAIN ANALYZE EXECUTE s",
            "CREATE TABLE t AS EXECUTE s",
            "EXPLAIN ANALYZE CREATE TABLE t AS EXECUTE s(2)",
        ] {
            assert_eq!(
                name_effects(sql).unwrap(),
                vec![Some(NameEffect::Execute {
                    name: "s".into(),
                    wrapped: true
                })],
                "{sql}"
            );
        }
    }

    #[test]
    fn queries_without_the_keywords_are_not_parsed_again() {
        assert!(name_effects("SELECT * FROM orders").unwrap().is_empty());
    }
}

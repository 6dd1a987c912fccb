//! What `pg_proc` says about the functions a statement calls, for the
//! policy crate to judge (`portcullis_policy::classify::facts`).
//!
//! Answers are cached per listener under the name as the call wrote it, and
//! dropped with the rest of the catalog cache when DDL passes through the
//! gateway, or after [`FUNCTION_TTL`] for changes made around it. A lookup
//! that fails leaves its names unanswered, which the judge treats as
//! unknown (not a read): fail closed.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_policy::classify::facts::{
    apply, names_to_resolve, split_name, DeclaredFunctions, FunctionFact, Lookup,
};
use portcullis_policy::Classification;

use super::{Catalog, CatalogError, Row};
use crate::proxy::upstream::UpstreamTarget;

/// A function replaced outside the gateway (a migration run directly) is
/// judged anew within this time.
const FUNCTION_TTL: Duration = Duration::from_secs(60);

#[derive(Default)]
pub(super) struct FunctionCache {
    entries: HashMap<String, Vec<FunctionFact>>,
    /// Fastpath calls name a function by oid: its schema and name, or
    /// `None` when no function has that oid.
    by_oid: HashMap<u32, Option<(String, String)>>,
    filled: Option<Instant>,
}

impl Catalog {
    /// `classification` with each statement raised to what the functions it
    /// calls may do, by the catalog and the operator's declarations.
    pub async fn judge_functions(
        &self,
        target: &UpstreamTarget,
        declared: &DeclaredFunctions,
        classification: Arc<Classification>,
    ) -> Arc<Classification> {
        let names = names_to_resolve(&classification);
        if names.is_empty() {
            return classification;
        }
        let lookups = self.function_facts(target, &names).await;
        match apply(&classification, declared, &lookups) {
            Some(raised) => Arc::new(raised),
            None => classification,
        }
    }

    /// The schema and name of the function with this oid (a fastpath call
    /// names its function only so); `Ok(None)` when the catalog has none.
    pub async fn function_name(
        &self,
        target: &UpstreamTarget,
        oid: u32,
    ) -> Result<Option<(String, String)>, CatalogError> {
        if let Some(known) = self.cached_function_name(oid) {
            return Ok(known);
        }
        let sql = format!(
            "SELECT n.nspname, p.proname FROM pg_catalog.pg_proc p \
             JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE p.oid = {oid}"
        );
        let rows = self.run(target, &sql).await?;
        let name = rows.into_iter().find_map(|row| match row.as_slice() {
            [Some(schema), Some(name)] => Some((schema.clone(), name.clone())),
            _ => None,
        });
        if let Ok(mut cache) = self.functions.lock() {
            cache.filled.get_or_insert_with(Instant::now);
            cache.by_oid.insert(oid, name.clone());
        }
        Ok(name)
    }

    fn cached_function_name(&self, oid: u32) -> Option<Option<(String, String)>> {
        let mut cache = self.functions.lock().ok()?;
        if cache.filled.is_some_and(|t| t.elapsed() > FUNCTION_TTL) {
            *cache = FunctionCache::default();
        }
        cache.by_oid.get(&oid).cloned()
    }

    /// The catalog's answer for each name; names it could not be asked
    /// about are missing.
    async fn function_facts(
        &self,
        target: &UpstreamTarget,
        names: &[&str],
    ) -> HashMap<String, Lookup> {
        let mut answers = HashMap::new();
        let mut missing = Vec::new();
        if let Ok(mut cache) = self.functions.lock() {
            if cache.filled.is_some_and(|t| t.elapsed() > FUNCTION_TTL) {
                *cache = FunctionCache::default();
            }
            for name in names {
                match cache.entries.get(*name) {
                    Some(facts) => {
                        answers.insert((*name).to_owned(), Lookup::Found(facts.clone()));
                    }
                    None => missing.push(*name),
                }
            }
        }
        if missing.is_empty() {
            return answers;
        }
        match self.run(target, &function_sql(&missing)).await {
            Ok(rows) => {
                let found = group_rows(&missing, rows);
                if let Ok(mut cache) = self.functions.lock() {
                    cache.filled.get_or_insert_with(Instant::now);
                    cache.entries.extend(found.clone());
                }
                answers.extend(found.into_iter().map(|(n, f)| (n, Lookup::Found(f))));
            }
            Err(e) => log_failure(&e),
        }
        answers
    }
}

fn log_failure(e: &CatalogError) {
    tracing::warn!(error = %e, "function lookup failed; calls to functions outside pg_catalog are judged unknown (not read)");
}

/// One query for every name. Names come from the client, so they travel
/// hex-encoded: nothing in them can end a literal, whatever the server's
/// quoting settings.
fn function_sql(names: &[&str]) -> String {
    let mut values = Vec::with_capacity(names.len());
    for name in names {
        let (schema, base) = split_name(name);
        values.push(format!(
            "({}, {}, {})",
            hex_text(name),
            schema.map_or_else(|| "NULL::text".to_owned(), hex_text),
            hex_text(base)
        ));
    }
    format!(
        "SELECT w.written, n.nspname, p.proname, p.provolatile, p.prosecdef::text \
         FROM (VALUES {}) AS w(written, schema, name) \
         JOIN pg_catalog.pg_proc p ON p.proname = w.name \
         JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
         WHERE w.schema IS NULL OR n.nspname = w.schema",
        values.join(", ")
    )
}

/// `convert_from(decode('..', 'hex'), 'UTF8')`: text without quoting.
fn hex_text(text: &str) -> String {
    let mut hex = String::with_capacity(text.len() * 2);
    for byte in text.bytes() {
        let _ = write!(hex, "{byte:02x}");
    }
    format!("convert_from(decode('{hex}', 'hex'), 'UTF8')")
}

/// The facts for each asked name; a name with no row gets an empty list
/// (the catalog knows no such function).
fn group_rows(names: &[&str], rows: Vec<Row>) -> HashMap<String, Vec<FunctionFact>> {
    let mut found: HashMap<String, Vec<FunctionFact>> = names
        .iter()
        .map(|n| ((*n).to_owned(), Vec::new()))
        .collect();
    for row in rows {
        let [Some(written), Some(schema), Some(name), Some(volatility), Some(secdef)] =
            <[Option<String>; 5]>::try_from(row).unwrap_or_default()
        else {
            continue;
        };
        if let Some(facts) = found.get_mut(&written) {
            facts.push(FunctionFact {
                schema,
                name,
                volatile: volatility == "v",
                security_definer: secdef == "true",
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_reach_sql_only_hex_encoded() {
        let sql = function_sql(&["x'); DROP TABLE t; --", "s.f"]);
        assert!(!sql.contains("DROP"), "{sql}");
        assert!(sql.contains(&hex_text("s")));
        assert!(sql.contains("NULL::text"));
        assert_eq!(
            hex_text("a'"),
            "convert_from(decode('6127', 'hex'), 'UTF8')"
        );
    }

    #[test]
    fn rows_group_by_the_name_as_written() {
        let s = |v: &str| Some(v.to_owned());
        let rows = vec![
            vec![s("bump"), s("public"), s("bump"), s("v"), s("false")],
            vec![s("bump"), s("app"), s("bump"), s("s"), s("true")],
            vec![s("other"), s("x"), s("other"), s("i"), s("false")],
            vec![s("short")],
        ];
        let found = group_rows(&["bump", "nowhere"], rows);
        assert_eq!(found["nowhere"], vec![]);
        assert_eq!(
            found["bump"],
            vec![
                FunctionFact {
                    schema: "public".into(),
                    name: "bump".into(),
                    volatile: true,
                    security_definer: false
                },
                FunctionFact {
                    schema: "app".into(),
                    name: "bump".into(),
                    volatile: false,
                    security_definer: true
                },
            ]
        );
        assert!(!found.contains_key("other"));
    }
}

//! Functions by what they are: the catalog's facts about the functions a
//! statement calls raise its class.
//!
//! The parse tree names a function, not what it does: `SELECT bump()` reads
//! as a `SELECT` whether `bump` is `lower` or an `UPDATE` in disguise. The
//! protocol driver asks the database's catalog (`pg_proc`) about every name a
//! classification calls and hands the answers to [`apply`]; this module only
//! judges them, so it stays pure. A function called outside `pg_catalog` is
//! a read only when every function of that name the catalog knows is
//! non-volatile and not `SECURITY DEFINER`, or the operator declared it one
//! (`functions:` on the connection). Overloads are judged together because
//! the parse tree has no argument types: if any overload may write, the call
//! may. An unqualified name is judged against every schema, not the
//! session's `search_path`, which the client can change at will.
//!
//! Built-ins (`pg_catalog`) keep the curated list in [`super::functions`]:
//! `random()` is volatile and a read, `pg_terminate_backend` is not.
//!
//! What the gateway never sees (a procedure's body behind `CALL`, a
//! function in a column `DEFAULT`, a trigger, a view's or a rule's query,
//! a cast or operator backed by a user function) is left to the database's
//! own grants: see the per-level upstream users in the README.

use std::collections::HashMap;

use portcullis_config::FunctionClasses;

use super::{Classification, StatementClass};

/// One `pg_proc` row with the name a call used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionFact {
    pub schema: String,
    pub name: String,
    /// `provolatile = 'v'`: it may change the database.
    pub volatile: bool,
    /// `prosecdef`: it runs with its owner's rights, not the caller's.
    pub security_definer: bool,
}

/// What the catalog answered about one name as a call wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Every function the name can mean; empty when there is none.
    Found(Vec<FunctionFact>),
    /// The catalog could not be asked; the call is judged unknown.
    Unavailable,
}

/// The classes an operator declared for functions (config `functions:`).
#[derive(Debug, Clone, Default)]
pub struct DeclaredFunctions {
    /// (schema, name, class); a `None` schema matches any schema.
    entries: Vec<(Option<String>, String, StatementClass)>,
}

impl DeclaredFunctions {
    pub fn from_config(config: &FunctionClasses) -> Self {
        let lists = [
            (&config.read, StatementClass::Read),
            (&config.write, StatementClass::Write),
            (&config.ddl, StatementClass::Ddl),
            (&config.admin, StatementClass::Admin),
        ];
        let entries = lists
            .into_iter()
            .flat_map(|(names, class)| names.iter().map(move |n| (n, class)))
            .map(|(name, class)| {
                let (schema, base) = split_name(name);
                (schema.map(str::to_owned), base.to_owned(), class)
            })
            .collect();
        Self { entries }
    }

    fn class_of(&self, schema: Option<&str>, name: &str) -> Option<StatementClass> {
        self.entries
            .iter()
            .find(|(s, n, _)| n == name && (s.is_none() || s.as_deref() == schema))
            .map(|(_, _, class)| *class)
    }
}

/// `schema.name` → (`Some(schema)`, `name`); a catalog-qualified
/// `db.schema.name` keeps its last two parts.
pub fn split_name(written: &str) -> (Option<&str>, &str) {
    let mut parts = written.rsplitn(3, '.');
    let name = parts.next().unwrap_or(written);
    (parts.next(), name)
}

/// The names a classification calls whose facts could change its decision:
/// those of statements not already `admin`, each once.
pub fn names_to_resolve(classification: &Classification) -> Vec<&str> {
    let mut names: Vec<&str> = classification
        .statements
        .iter()
        .filter(|s| s.class < StatementClass::Admin)
        .flat_map(|s| s.functions.iter().map(String::as_str))
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// The classification with each statement raised to what its calls may do
/// (and any call that may do more than read noted as an effect no action
/// names), or `None` when no call changes anything. `lookups` holds the catalog's
/// answer for each name of [`names_to_resolve`]; a name without one is
/// judged as if the catalog were unavailable.
pub fn apply(
    classification: &Classification,
    declared: &DeclaredFunctions,
    lookups: &HashMap<String, Lookup>,
) -> Option<Classification> {
    let mut raised = classification.clone();
    let mut changed = false;
    for statement in &mut raised.statements {
        for name in &statement.functions {
            let lookup = lookups.get(name).unwrap_or(&Lookup::Unavailable);
            let (class, why) = judge(name, lookup, declared);
            if class > StatementClass::Read && statement.unnamed_effect.is_none() {
                statement.unnamed_effect = Some(why.clone());
                changed = true;
            }
            if class > statement.class {
                statement.class = class;
                statement.why = Some(why);
                changed = true;
            }
        }
    }
    changed.then_some(raised)
}

/// The class one call may force, and why.
fn judge(written: &str, lookup: &Lookup, declared: &DeclaredFunctions) -> (StatementClass, String) {
    let (schema, name) = split_name(written);
    let facts = match lookup {
        Lookup::Found(facts) if !facts.is_empty() => facts,
        Lookup::Found(_) => {
            return declared.class_of(schema, name).map_or_else(
                || {
                    (
                        StatementClass::Write,
                        format!("calls {written}, which the catalog does not know"),
                    )
                },
                |class| (class, format!("calls {written}, declared {class}")),
            )
        }
        Lookup::Unavailable => {
            return declared.class_of(schema, name).map_or_else(
                || {
                    (
                        StatementClass::Admin,
                        format!("calls {written}, which could not be looked up in the catalog"),
                    )
                },
                |class| (class, format!("calls {written}, declared {class}")),
            )
        }
    };
    facts
        .iter()
        .map(|f| judge_fact(written, f, declared))
        .max_by_key(|(class, _)| *class)
        .unwrap_or((StatementClass::Read, String::new()))
}

fn judge_fact(
    written: &str,
    fact: &FunctionFact,
    declared: &DeclaredFunctions,
) -> (StatementClass, String) {
    if let Some(class) = declared.class_of(Some(&fact.schema), &fact.name) {
        return (class, format!("calls {written}, declared {class}"));
    }
    let qualified = format!("{}.{}", fact.schema, fact.name);
    if fact.schema == "pg_catalog" {
        (StatementClass::Read, String::new())
    } else if fact.security_definer {
        (
            StatementClass::Admin,
            format!(
                "calls {qualified}, a SECURITY DEFINER function (it runs with its owner's rights)"
            ),
        )
    } else if fact.volatile {
        (
            StatementClass::Write,
            format!("calls {qualified}, a volatile function (it may change data)"),
        )
    } else {
        (StatementClass::Read, String::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::classify;
    use StatementClass::{Admin, Read, Write};

    fn fact(schema: &str, name: &str, volatile: bool, security_definer: bool) -> FunctionFact {
        FunctionFact {
            schema: schema.into(),
            name: name.into(),
            volatile,
            security_definer,
        }
    }

    /// The catalog of a database with a few user functions.
    fn catalog(written: &str) -> Lookup {
        let (schema, name) = split_name(written);
        let all = [
            fact("pg_catalog", "lower", false, false),
            fact("pg_catalog", "random", true, false),
            fact("public", "price_of", false, false),
            fact("public", "bump", true, false),
            fact("app", "bump", false, false),
            fact("public", "become_owner", false, true),
            fact("cron", "schedule", true, false),
            // An overload of a built-in name in a user schema.
            fact("public", "lower", true, false),
        ];
        Lookup::Found(
            all.into_iter()
                .filter(|f| f.name == name && schema.is_none_or(|s| s == f.schema))
                .collect(),
        )
    }

    fn class_with(
        sql: &str,
        declared: &DeclaredFunctions,
        lookup: fn(&str) -> Lookup,
    ) -> (StatementClass, Option<String>) {
        let c = classify(sql).unwrap();
        let lookups: HashMap<String, Lookup> = names_to_resolve(&c)
            .into_iter()
            .map(|n| (n.to_owned(), lookup(n)))
            .collect();
        let raised = apply(&c, declared, &lookups).unwrap_or(c);
        let s = &raised.statements[0];
        (s.class, s.why.clone())
    }

    fn class(sql: &str) -> StatementClass {
        class_with(sql, &DeclaredFunctions::default(), catalog).0
    }

    #[test]
    fn functions_are_judged_by_volatility_and_security_definer() {
        assert_eq!(class("SELECT price_of(1)"), Read);
        assert_eq!(class("SELECT bump()"), Write);
        assert_eq!(class("SELECT app.bump()"), Read);
        assert_eq!(class("SELECT public.bump()"), Write);
        assert_eq!(class("SELECT become_owner()"), Admin);
        assert_eq!(class("SELECT cron.schedule('* * * * *', 'x')"), Write);
        // Deep inside the statement, and in FROM, count the same.
        assert_eq!(class("SELECT * FROM t WHERE id IN (SELECT bump())"), Write);
        assert_eq!(class("SELECT * FROM bump()"), Write);
        let (_, why) = class_with(
            "SELECT become_owner()",
            &DeclaredFunctions::default(),
            catalog,
        );
        assert!(why.unwrap().contains("SECURITY DEFINER"));
    }

    #[test]
    fn built_ins_keep_the_curated_list() {
        assert_eq!(class("SELECT pg_catalog.random()"), Read);
        assert_eq!(class("SELECT pg_catalog.lower('A')"), Read);
    }

    #[test]
    fn any_overload_that_may_write_makes_the_call_a_write() {
        // `lower` may resolve to public.lower(int), a volatile function.
        assert_eq!(class("SELECT lower(1)"), Write);
    }

    #[test]
    fn unknown_and_unresolvable_functions_are_not_reads() {
        assert_eq!(class("SELECT nowhere()"), Write);
        assert_eq!(
            class_with("SELECT price_of(1)", &DeclaredFunctions::default(), |_| {
                Lookup::Unavailable
            })
            .0,
            Admin
        );
    }

    #[test]
    fn declared_classes_override_the_catalog() {
        let declared = DeclaredFunctions::from_config(&FunctionClasses {
            read: vec!["public.bump".into(), "schedule".into()],
            admin: vec!["price_of".into()],
            ..FunctionClasses::default()
        });
        let class = |sql| class_with(sql, &declared, catalog).0;
        assert_eq!(class("SELECT bump()"), Read);
        assert_eq!(class("SELECT cron.schedule('x', 'y')"), Read);
        assert_eq!(class("SELECT price_of(1)"), Admin);
        // A declaration never lowers the curated list of built-ins.
        let nextval = DeclaredFunctions::from_config(&FunctionClasses {
            read: vec!["nextval".into()],
            ..FunctionClasses::default()
        });
        assert_eq!(
            class_with("SELECT nextval('s')", &nextval, catalog).0,
            Write
        );
        // A schema-qualified declaration does not vouch for an unqualified
        // call the catalog cannot resolve.
        assert_eq!(
            class_with("SELECT bump()", &declared, |_| Lookup::Unavailable).0,
            Admin
        );
        assert_eq!(
            class_with("SELECT public.bump()", &declared, |_| Lookup::Unavailable).0,
            Read
        );
    }

    #[test]
    fn nothing_to_raise_leaves_the_classification_alone() {
        let c = classify("SELECT price_of(1), pg_catalog.lower('x'), random()").unwrap();
        let lookups = names_to_resolve(&c)
            .into_iter()
            .map(|n| (n.to_owned(), catalog(n)))
            .collect();
        assert!(apply(&c, &DeclaredFunctions::default(), &lookups).is_none());
    }

    #[test]
    fn admin_statements_need_no_lookup() {
        let c = classify("SELECT pg_terminate_backend(1), bump(); SELECT price_of(2)").unwrap();
        assert_eq!(names_to_resolve(&c), vec!["price_of"]);
    }

    #[test]
    fn names_split_into_schema_and_function() {
        assert_eq!(split_name("f"), (None, "f"));
        assert_eq!(split_name("s.f"), (Some("s"), "f"));
        assert_eq!(split_name("db.s.f"), (Some("s"), "f"));
    }
}

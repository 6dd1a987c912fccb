//! Whether a statement may read a declared column. A result field that is
//! not a plain table column (an expression, aggregate, cast, whole-row
//! value, a view column computed from others) has no source in its
//! RowDescription, so it is masked whole when its statement may have read
//! a declared column; so are the statement's error and notice texts.
//!
//! The parse tree's facts (`Statement::reads`, computed once per statement
//! shape and cached with its classification) settle most statements; what
//! the text cannot show, a view or a user-defined function over a declared
//! column, is asked of the catalog (`Catalog::reach`). Every doubt counts
//! as a read: the cost of a wrong "yes" is a masked value, of a wrong "no"
//! a leaked one.

use portcullis_masking::{Expressions, MaskRules};
use portcullis_policy::classify::{Classification, Statement};
use portcullis_policy::decide::{Decision, Verdict};

use crate::proxy::catalog::Reach;

/// What a statement's text says about reading declared columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lineage {
    Declared,
    Clean,
    /// Only the catalog can tell: these relations may be views and these
    /// functions user-defined.
    Unsure {
        relations: Vec<String>,
        functions: Vec<String>,
    },
}

/// Commands whose rows come from a query that is not in their own text
/// (a cursor's, a prepared statement's).
const ELSEWHERE: &[&str] = &["FETCH", "MOVE", "EXECUTE", "UNKNOWN"];

/// Catalog relations whose columns hold other tables' values: the planner
/// statistics keep a column's most common values and histogram bounds.
const STATISTICS: &[&str] = &[
    "pg_stats",
    "pg_stats_ext",
    "pg_stats_ext_exprs",
    "pg_statistic",
    "pg_statistic_ext_data",
];

/// Built-in functions that read a table, cursor or query named by an
/// argument rather than by the statement's text.
const READS_BY_NAME: &[&str] = &[
    "table_to_xml",
    "table_to_xml_and_xmlschema",
    "cursor_to_xml",
    "query_to_xml",
    "query_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xml_and_xmlschema",
    "ts_stat",
];

/// The lineage of a query's statements; `None` is a portal the gateway did
/// not prepare (a cursor), which may read anything.
pub(crate) fn lineage(rules: &MaskRules, c: Option<&Classification>) -> Lineage {
    if rules.columns.is_empty() {
        return Lineage::Clean;
    }
    let Some(c) = c else {
        return Lineage::Declared;
    };
    if c.statements.iter().any(|s| reads_declared(rules, s)) {
        return Lineage::Declared;
    }
    let mut relations: Vec<String> = Vec::new();
    let mut functions: Vec<String> = Vec::new();
    for s in &c.statements {
        relations.extend(s.relations.iter().cloned());
        functions.extend(s.functions.iter().map(|f| base_name(f).to_owned()));
    }
    if relations.is_empty() && functions.is_empty() {
        return Lineage::Clean;
    }
    relations.sort_unstable();
    relations.dedup();
    functions.sort_unstable();
    functions.dedup();
    Lineage::Unsure {
        relations,
        functions,
    }
}

/// Settles an unsure lineage with what the catalog says the statement's
/// relations and functions reach.
pub(crate) fn settle(rules: &MaskRules, reach: &Reach) -> bool {
    reach.user_functions || rules.covering(&reach.relations).is_some()
}

fn reads_declared(rules: &MaskRules, s: &Statement) -> bool {
    ELSEWHERE.contains(&s.command.as_str())
        || s.reads
            .columns
            .iter()
            .any(|c| rules.declares_column_named(c))
        || (s.reads.whole_rows && rules.covering(&s.relations).is_some())
        || s.relations
            .iter()
            .any(|r| STATISTICS.contains(&base_name(r)))
        || s.functions
            .iter()
            .any(|f| READS_BY_NAME.contains(&base_name(f)))
}

fn base_name(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

/// A statement a masking principal may not run although its policy
/// allows it: output that cannot be masked per field, or a way to carry
/// declared values where masking does not look.
pub(crate) fn refusal(rules: &MaskRules, c: &Classification) -> Option<Decision> {
    c.statements.iter().enumerate().find_map(|(index, s)| {
        let why = unmaskable_copy(rules, s).or_else(|| notify_of_values(rules, s))?;
        Some(Decision {
            verdict: Verdict::Deny,
            policy: None,
            rule: "mask".into(),
            reason: why,
            statement_index: Some(index),
        })
    })
}

/// `COPY ... TO STDOUT` output carries no description of where its fields
/// come from, so declared columns cannot be found in it: a COPY that may
/// read one (or any, under `expressions: mask`) is refused and pointed at
/// SELECT. Detector-only principals get their COPY lines scanned instead.
/// A COPY over a view is settled when its output starts (see the relay).
fn unmaskable_copy(rules: &MaskRules, s: &Statement) -> Option<String> {
    if s.command != "COPY TO" {
        return None;
    }
    let why = if rules.expressions == Expressions::Mask {
        "the policy masks every field it cannot trace to a column (expressions: mask)".to_string()
    } else if let Some(rule) = rules.covering(&s.relations) {
        format!("it reads a table with masked column {:?}", rule.label)
    } else if reads_declared(rules, s) {
        "it may read a masked column".to_string()
    } else {
        return None;
    };
    Some(format!(
        "COPY TO STDOUT output cannot be masked per column and {why}; use SELECT, whose results the gateway masks"
    ))
}

/// `pg_notify` delivers its arguments to every listener, where no masking
/// applies: a principal with declared columns may send only what it
/// wrote itself (literals, parameters), never anything read from a table
/// or computed by another function.
fn notify_of_values(rules: &MaskRules, s: &Statement) -> Option<String> {
    let notifies = s.functions.iter().any(|f| base_name(f) == "pg_notify");
    let reads_anything = !s.relations.is_empty()
        || !s.reads.columns.is_empty()
        || s.reads.whole_rows
        || s.functions.iter().any(|f| base_name(f) != "pg_notify");
    (!rules.columns.is_empty() && notifies && reads_anything).then(|| {
        "pg_notify may send only literals or parameters in a statement that reads nothing: \
         its payload reaches listeners unmasked"
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use portcullis_config::MaskConfig;
    use portcullis_policy::classify::classify;

    use super::*;

    fn rules(columns: &[&str]) -> MaskRules {
        let m = MaskConfig {
            columns: columns.iter().map(|s| s.to_string()).collect(),
            detect: vec!["credit_card".into()],
            method: None,
            expressions: None,
        };
        MaskRules::compile([("p", &m)]).unwrap().unwrap()
    }

    fn of(rules: &MaskRules, sql: &str) -> Lineage {
        lineage(rules, Some(&classify(sql).unwrap()))
    }

    #[test]
    fn statements_naming_or_wholly_reading_a_declared_column_are_declared() {
        let r = rules(&["customers.email"]);
        for sql in [
            "select lower(email) from customers",
            "select string_agg(email, ',')::int from customers",
            "select c from customers c",
            "select customers from customers",
            "select row_to_json(c) from customers c",
            "select to_jsonb(c.*) from public.customers c",
            "select array_agg(x) from (select * from customers) x",
            "select 1 union select length(email) from customers",
            "select (select max(email) from customers)",
            "select md5(email::bytea::text) from customers",
            "select lower(x.e) from customers x(i, n, e)",
            "select most_common_vals from pg_stats",
            "select table_to_xml('customers', true, false, '')",
            "fetch all from c",
            "execute q",
            "select 1; select email from customers",
        ] {
            assert_eq!(of(&r, sql), Lineage::Declared, "{sql}");
        }
        assert_eq!(lineage(&r, None), Lineage::Declared);
    }

    #[test]
    fn statements_the_text_clears_are_clean_and_the_rest_go_to_the_catalog() {
        let r = rules(&["customers.email"]);
        assert_eq!(of(&r, "select 1, 'a' || 'b'"), Lineage::Clean);
        assert_eq!(
            of(
                &r,
                "select count(*), lower(name) from customers join orders o using (id)"
            ),
            Lineage::Unsure {
                relations: vec!["customers".into(), "orders".into()],
                functions: vec!["count".into(), "lower".into()],
            }
        );
        assert_eq!(
            of(&r, "select lower(contact) from app.customer_contacts"),
            Lineage::Unsure {
                relations: vec!["app.customer_contacts".into()],
                functions: vec!["lower".into()],
            }
        );
        // No declared columns: nothing to trace.
        assert_eq!(
            of(&rules(&[]), "select lower(email) from customers"),
            Lineage::Clean
        );
    }

    #[test]
    fn the_catalog_settles_views_and_user_functions() {
        let r = rules(&["customers.email"]);
        let reach = |relations: &[&str], user_functions| Reach {
            relations: relations.iter().map(|s| s.to_string()).collect(),
            user_functions,
        };
        assert!(settle(&r, &reach(&["public.customers"], false)));
        assert!(settle(&r, &reach(&[], true)));
        assert!(!settle(&r, &reach(&["public.orders"], false)));
    }

    #[test]
    fn every_copy_of_a_query_string_is_checked() {
        let r = rules(&["customers.email"]);
        let refused = |sql: &str| refusal(&r, &classify(sql).unwrap()).map(|d| d.statement_index);
        assert_eq!(refused("copy customers to stdout"), Some(Some(0)));
        assert_eq!(
            refused("copy orders to stdout; copy customers to stdout"),
            Some(Some(1))
        );
        assert_eq!(
            refused("copy (select lower(email) from v) to stdout"),
            Some(Some(0))
        );
        assert_eq!(refused("copy orders to stdout"), None);
        assert_eq!(refused("select email from customers"), None);
    }

    #[test]
    fn pg_notify_may_carry_only_what_the_client_wrote() {
        let r = rules(&["customers.email"]);
        let refused = |sql: &str| refusal(&r, &classify(sql).unwrap()).is_some();
        assert!(!refused("select pg_notify('ch', 'done')"));
        assert!(!refused("select pg_notify('ch', $1)"));
        assert!(!refused("notify ch, 'done'"));
        for sql in [
            "select pg_notify('ch', email) from customers",
            "select pg_notify('ch', (select max(name) from orders))",
            "select pg_notify('ch', get_secret())",
            "select pg_notify(email, '') from customers",
        ] {
            assert!(refused(sql), "{sql}");
        }
        assert!(refusal(
            &rules(&[]),
            &classify("select pg_notify('c', name) from t").unwrap()
        )
        .is_none());
    }
}

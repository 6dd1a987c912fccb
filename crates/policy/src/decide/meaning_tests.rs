//! Decisions on meaning: every spelling and wrapping of the same act on the
//! same relation gets the same decision (issue 11, "patterns are text-deep").

use std::time::SystemTime;

use portcullis_config::PolicyConfig;
use portcullis_identity::Principal;
use serde_json::{json, Value};

use super::Verdict::{self, Allow, Deny, Hold};
use super::{Decision, PolicySet};
use crate::classify::classify;

fn policy_set(policy: Value) -> PolicySet {
    let config: PolicyConfig = serde_json::from_value(policy).expect("test policy");
    PolicySet::compile(&[config]).expect("compiles")
}

fn decide_as(set: &PolicySet, sql: &str) -> Decision {
    let alice = Principal {
        name: "alice".into(),
        groups: Vec::new(),
        issuer: "https://issuer.test".into(),
        claims: Default::default(),
        expires_at: SystemTime::now(),
        token_fingerprint: "sha256:0000".into(),
    };
    let classification = classify(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    set.applicable(&alice, "orders-db").decide(&classification)
}

fn alice_may(allow: &[&str], require_approval: &[&str], deny: &[&str]) -> PolicySet {
    policy_set(json!({
        "name": "p",
        "match": { "principals": ["alice"] },
        "connection": "orders-db",
        "allow": allow,
        "require_approval": require_approval,
        "deny": deny,
    }))
}

/// The issue's policy: deletes on customers wait for a second person,
/// deletes on public.orders are refused.
fn guarded() -> PolicySet {
    alice_may(
        &["read", "write"],
        &["delete on customers"],
        &["delete on public.orders"],
    )
}

fn verdict(sql: &str) -> Verdict {
    decide_as(&guarded(), sql).verdict
}

/// Ways to write one relation name that PostgreSQL reads as the same
/// relation when `search_path` is the default (`public` first).
fn spellings(schema: &str, table: &str) -> Vec<String> {
    let upper = table.to_ascii_uppercase();
    let mut names = vec![
        format!("{schema}.{table}"),
        format!("\"{schema}\".\"{table}\""),
        format!("{}.{upper}", schema.to_ascii_uppercase()),
        format!("{schema}.\"{table}\""),
    ];
    if schema == "public" {
        names.extend([table.to_owned(), upper, format!("\"{table}\"")]);
    }
    names
}

/// Statements that delete from, update or insert into `name`.
fn writes(verb: &str, name: &str) -> String {
    match verb {
        "delete" => format!("DELETE FROM {name} WHERE id = 1"),
        "update" => format!("UPDATE {name} SET id = 2 WHERE id = 1"),
        _ => format!("INSERT INTO {name} (id) VALUES (1)"),
    }
}

/// The same statement wrapped so that it still runs.
fn wrappings(dml: &str) -> Vec<String> {
    vec![
        dml.to_owned(),
        format!("WITH d AS ({dml} RETURNING 1) SELECT * FROM d"),
        format!("WITH RECURSIVE d AS ({dml} RETURNING 1) SELECT count(*) FROM d"),
        format!("EXPLAIN ANALYZE {dml}"),
        format!("EXPLAIN (ANALYZE, BUFFERS) {dml}"),
        format!("PREPARE p AS {dml}"),
        format!("SELECT 1; {dml}; SELECT 2"),
        format!("BEGIN; {dml}; COMMIT"),
        format!(
            "WITH a AS (SELECT 1), b AS ({dml} RETURNING 1) SELECT * FROM a, (SELECT * FROM b) s"
        ),
        format!("CREATE RULE r AS ON INSERT TO log DO ALSO {dml}"),
    ]
}

#[test]
fn every_form_of_a_write_gets_the_decision_of_its_plain_form() {
    let expected = [
        ("delete", "public", "customers", Hold),
        ("delete", "sales", "customers", Hold),
        ("delete", "public", "orders", Deny),
        ("delete", "public", "other", Allow),
        ("delete", "sales", "orders", Allow),
        ("update", "public", "customers", Allow),
        ("update", "public", "orders", Allow),
    ];
    let mut forms = 0;
    for (verb, schema, table, want) in expected {
        for name in spellings(schema, table) {
            for sql in wrappings(&writes(verb, &name)) {
                let got = verdict(&sql);
                // A rule on a table of `log` is DDL, which this policy does not allow.
                let want = match sql.starts_with("CREATE RULE") && want == Allow {
                    true => Deny,
                    false => want,
                };
                assert_eq!(got, want, "{sql}");
                forms += 1;
            }
        }
    }
    assert!(forms > 300, "{forms} forms");
}

#[test]
fn every_form_of_a_write_in_a_denied_schema_is_denied() {
    let set = alice_may(&["read", "write"], &[], &["write on payroll.*"]);
    for verb in ["delete", "update", "insert"] {
        for name in spellings("payroll", "salaries") {
            for sql in wrappings(&writes(verb, &name)) {
                assert_eq!(decide_as(&set, &sql).verdict, Deny, "{sql}");
            }
        }
    }
    // Any unqualified write could land in payroll, through search_path.
    assert_eq!(
        decide_as(&set, "INSERT INTO anything VALUES (1)").verdict,
        Deny
    );
    assert_eq!(
        decide_as(&set, "INSERT INTO public.anything VALUES (1)").verdict,
        Allow
    );
    assert_eq!(
        decide_as(&set, "SELECT * FROM payroll.salaries").verdict,
        Allow
    );
}

#[test]
fn a_plain_explain_runs_nothing() {
    assert_eq!(verdict("EXPLAIN DELETE FROM customers"), Allow);
    assert_eq!(
        verdict("EXPLAIN (COSTS false) DELETE FROM public.orders"),
        Allow
    );
    assert_eq!(verdict("EXPLAIN ANALYZE DELETE FROM customers"), Hold);
}

#[test]
fn unqualified_names_resolve_towards_the_stricter_decision() {
    // A schema-qualified deny catches the unqualified name: search_path may
    // lead there, and the client may set it.
    assert_eq!(verdict("DELETE FROM orders"), Deny);
    // An unqualified rule name catches the name in every schema.
    assert_eq!(verdict("DELETE FROM sales.customers"), Hold);
    // Another schema's orders is not public.orders.
    assert_eq!(verdict("DELETE FROM sales.orders"), Allow);
    // A quoted name keeps its case: "Customers" is another table.
    assert_eq!(verdict("DELETE FROM \"Customers\""), Allow);
}

#[test]
fn allow_rules_never_widen_on_ambiguity() {
    let set = alice_may(&["select on public.customers", "insert on audit"], &[], &[]);
    let verdict = |sql: &str| decide_as(&set, sql).verdict;
    assert_eq!(verdict("SELECT * FROM public.customers"), Allow);
    assert_eq!(verdict("SELECT * FROM \"public\".CUSTOMERS"), Allow);
    // Unqualified: search_path could make it another schema's customers.
    assert_eq!(verdict("SELECT * FROM customers"), Deny);
    // An unqualified rule name allows every schema's.
    assert_eq!(verdict("INSERT INTO app.audit VALUES (1)"), Allow);
    assert_eq!(
        verdict("INSERT INTO audit SELECT * FROM public.customers"),
        Allow
    );
    assert_eq!(verdict("INSERT INTO audit SELECT * FROM orders"), Deny);
    assert_eq!(
        verdict("WITH x AS (INSERT INTO audit VALUES (1) RETURNING 1) SELECT * FROM x"),
        Deny,
        "the CTE's name reads as a relation the rules do not allow"
    );
}

#[test]
fn objects_that_are_not_named_relations_match_every_refusal() {
    let set = alice_may(
        &["ddl", "drop on *"],
        &["drop on payroll.*", "truncate on customers"],
        &[],
    );
    let decide = |sql: &str| decide_as(&set, sql);
    assert_eq!(decide("DROP SCHEMA payroll CASCADE").verdict, Hold);
    assert_eq!(decide("DROP TABLE payroll.x").verdict, Hold);
    assert_eq!(decide("DROP TABLE public.x").verdict, Allow);
    assert_eq!(decide("TRUNCATE public.orders CASCADE").verdict, Hold);
    assert_eq!(decide("TRUNCATE public.orders").verdict, Allow);
    let d = decide("DROP SCHEMA payroll");
    assert_eq!(
        d.reason,
        r#"drop on what DROP SCHEMA names (in statement "DROP SCHEMA") matches require_approval rule "drop on payroll.*" of policy "p""#
    );
}

#[test]
fn legacy_verb_patterns_now_catch_what_the_text_hid() {
    let set = alice_may(&["read", "write"], &["DELETE *"], &["DROP *", "TRUNCATE *"]);
    let d = decide_as(
        &set,
        "WITH d AS (DELETE FROM customers WHERE id = 1 RETURNING 1) SELECT * FROM d",
    );
    assert_eq!((d.verdict, d.rule.as_str()), (Hold, "DELETE *"));
    assert_eq!(
        d.reason,
        r#"delete on customers (in statement "SELECT") matches require_approval rule "DELETE *" of policy "p""#
    );
    for sql in [
        "DROP ROLE bob",
        "DROP FUNCTION f()",
        "DROP TABLE t",
        "TRUNCATE a CASCADE",
    ] {
        assert_eq!(decide_as(&set, sql).verdict, Deny, "{sql}");
    }
}

use std::time::SystemTime;

use portcullis_config::{Access, JitApproval, PolicyConfig};
use portcullis_identity::Principal;
use serde_json::{json, Value};

use super::*;
use crate::classify::classify;

fn policy(value: Value) -> PolicyConfig {
    serde_json::from_value(value).expect("test policy")
}

fn principal(name: &str, groups: &[&str], claims: Value) -> Principal {
    let Value::Object(claims) = claims else {
        panic!("claims must be an object");
    };
    Principal {
        name: name.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        issuer: "https://issuer.test".into(),
        claims,
        expires_at: SystemTime::now(),
        token_fingerprint: "sha256:0000".into(),
    }
}

fn ci() -> Principal {
    principal(
        "repo:acme/shop:ref:refs/heads/main",
        &["ci"],
        json!({ "sub": "repo:acme/shop:ref:refs/heads/main", "repository_owner": "acme" }),
    )
}

fn set(policies: Vec<Value>) -> PolicySet {
    let configs: Vec<PolicyConfig> = policies.into_iter().map(policy).collect();
    PolicySet::compile(&configs).expect("policies compile")
}

/// The policy from the design document's example.
fn ci_reads() -> Value {
    json!({
        "name": "ci-reads",
        "match": { "claims": { "sub": "repo:acme/shop:ref:refs/heads/*" } },
        "connection": "orders-db",
        "allow": ["read", "update on orders"],
        "require_approval": ["write"],
        "deny": ["DROP *", "TRUNCATE *"],
    })
}

fn decide(policies: &PolicySet, who: &Principal, sql: &str) -> Decision {
    let applicable = policies.applicable(who, "orders-db");
    applicable.decide(&classify(sql).expect("test SQL parses"))
}

#[test]
fn allow_rule_allows_its_class() {
    let d = decide(
        &set(vec![ci_reads()]),
        &ci(),
        "SELECT * FROM orders WHERE id = 1",
    );
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(d.policy.as_deref(), Some("ci-reads"));
    assert_eq!(d.rule, "read");
    assert_eq!(d.statement_index, None);
    assert_eq!(
        d.reason,
        r#"statement "SELECT" matches allow rule "read" of policy "ci-reads""#
    );
}

#[test]
fn deny_beats_allow() {
    let policies = set(vec![
        ci_reads(),
        json!({
            "name": "ci-ddl",
            "match": { "groups": ["ci"] },
            "connection": "orders-db",
            "allow": ["ddl"],
        }),
    ]);
    let d = decide(&policies, &ci(), "drop   table orders");
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.policy.as_deref(), Some("ci-reads"));
    assert_eq!(d.rule, "DROP *");
    assert_eq!(
        d.reason,
        r#"drop on orders (in statement "DROP TABLE") matches deny rule "DROP *" of policy "ci-reads""#
    );
    // The same policies allow other DDL.
    let d = decide(&policies, &ci(), "CREATE INDEX i ON orders (id)");
    assert_eq!((d.verdict, d.rule.as_str()), (Verdict::Allow, "ddl"));
}

#[test]
fn require_approval_holds() {
    let d = decide(
        &set(vec![ci_reads()]),
        &ci(),
        "DELETE FROM orders WHERE id = 3",
    );
    assert_eq!(d.verdict, Verdict::Hold);
    assert_eq!(d.rule, "write");
    assert_eq!(d.statement_index, Some(0));
    assert!(
        d.reason.contains("require_approval rule \"write\""),
        "{}",
        d.reason
    );
}

#[test]
fn hold_beats_allow_and_deny_beats_hold() {
    let policies = set(vec![json!({
        "name": "p",
        "match": { "principals": ["alice"] },
        "connection": "orders-db",
        "allow": ["write"],
        "require_approval": ["DELETE *"],
        "deny": ["delete on audit*"],
    })]);
    let alice = principal("alice", &[], json!({}));
    assert_eq!(
        decide(&policies, &alice, "UPDATE t SET a = 1").verdict,
        Verdict::Allow
    );
    assert_eq!(
        decide(&policies, &alice, "DELETE FROM t").verdict,
        Verdict::Hold
    );
    assert_eq!(
        decide(&policies, &alice, "DELETE FROM audit_log").verdict,
        Verdict::Deny
    );
}

#[test]
fn action_rules_allow_only_what_they_name() {
    let policies = set(vec![json!({
        "name": "status-updates",
        "match": { "groups": ["ci"] },
        "connection": "orders-db",
        "allow": ["update on orders"],
    })]);
    let d = decide(
        &policies,
        &ci(),
        "update ORDERS  set status = 'shipped' /* ok */ where id = 42 returning id",
    );
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(d.rule, "update on orders");
    assert_eq!(
        d.reason,
        r#"statement "UPDATE": update on orders matches allow rule "update on orders" of policy "status-updates"; select on orders matches allow rule "update on orders" of policy "status-updates""#
    );
    for (sql, why) in [
        (
            "UPDATE orders SET total = (SELECT 1 FROM customers)",
            "reads another table",
        ),
        ("DELETE FROM orders", "another action"),
        ("SELECT 1", "no action to allow it by"),
        (
            "UPDATE orders SET id = nextval('s')",
            "an effect no action names",
        ),
        (
            "UPDATE orders SET id = 1 WHERE pg_terminate_backend(1)",
            "a stronger class",
        ),
    ] {
        let d = decide(&policies, &ci(), sql);
        assert_eq!(
            (d.verdict, d.rule.as_str()),
            (Verdict::Deny, "default deny"),
            "{sql}: {why}"
        );
    }
    // require_approval is consulted before allow: the design example holds
    // every write, its allowed update included.
    let d = decide(
        &set(vec![ci_reads()]),
        &ci(),
        "UPDATE orders SET status = 'x' WHERE id = 1",
    );
    assert_eq!((d.verdict, d.rule.as_str()), (Verdict::Hold, "write"));
}

#[test]
fn unmatched_classes_are_denied_by_default() {
    let d = decide(
        &set(vec![ci_reads()]),
        &ci(),
        "GRANT SELECT ON orders TO mallory",
    );
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.policy, None);
    assert_eq!(d.rule, "default deny");
    assert_eq!(
        d.reason,
        "no policy allows admin statements on this connection"
    );
    assert_eq!(d.statement_index, Some(0));
}

#[test]
fn raised_statements_say_why_they_are_denied() {
    let d = decide(
        &set(vec![ci_reads()]),
        &ci(),
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity",
    );
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(
        d.reason,
        "no policy allows admin statements on this connection (this SELECT calls pg_terminate_backend)"
    );
    let policies = set(vec![json!({
        "name": "no-admin",
        "match": { "groups": ["ci"] },
        "connection": "orders-db",
        "allow": ["read"],
        "deny": ["admin"],
    })]);
    let d = decide(&policies, &ci(), "SELECT lo_import('/etc/passwd')");
    assert_eq!(
        d.reason,
        r#"statement "SELECT" (admin: calls lo_import) matches deny rule "admin" of policy "no-admin""#
    );
}

#[test]
fn session_statements_need_only_an_applicable_policy() {
    let policies = set(vec![ci_reads()]);
    let d = decide(&policies, &ci(), "BEGIN");
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(d.rule, "session");
    assert_eq!(d.policy.as_deref(), Some("ci-reads"));
    // Privileged SETs are admin, not session.
    assert_eq!(
        decide(&policies, &ci(), "SET ROLE postgres").verdict,
        Verdict::Deny
    );
    // Without an applicable policy nothing is allowed.
    let stranger = principal(
        "mallory",
        &["ci-fake"],
        json!({ "sub": "repo:evil/x:ref:refs/heads/main" }),
    );
    let d = decide(&policies, &stranger, "BEGIN");
    assert_eq!(
        (d.verdict, d.rule.as_str(), d.policy),
        (Verdict::Deny, "default deny", None)
    );
    assert_eq!(
        d.reason,
        "no policy applies to this principal on this connection"
    );
}

#[test]
fn one_denied_statement_denies_the_query_and_names_it() {
    let policies = set(vec![ci_reads()]);
    let d = decide(
        &policies,
        &ci(),
        "BEGIN; SELECT 1; DROP TABLE orders; DELETE FROM t; COMMIT",
    );
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.statement_index, Some(2));
    assert_eq!(d.rule, "DROP *");
    // Held statements make the query held when nothing is denied.
    let d = decide(&policies, &ci(), "SELECT 1; DELETE FROM t; SELECT 2");
    assert_eq!((d.verdict, d.statement_index), (Verdict::Hold, Some(1)));
    // All allowed: the first statement's allow speaks.
    let d = decide(&policies, &ci(), "BEGIN; SELECT 1; COMMIT");
    assert_eq!(
        (d.verdict, d.rule.as_str(), d.statement_index),
        (Verdict::Allow, "session", None)
    );
}

#[test]
fn empty_queries_are_allowed() {
    let d = decide(&set(vec![ci_reads()]), &ci(), " -- nothing ");
    assert_eq!(
        (d.verdict, d.rule.as_str(), d.policy),
        (Verdict::Allow, "empty", None)
    );
}

#[test]
fn claims_match_by_glob_and_any_array_element() {
    let policies = set(vec![json!({
        "name": "owners",
        "match": { "claims": { "repository_owner": "ac*e", "aud": "portcullis" } },
        "connection": "orders-db",
        "allow": ["read"],
    })]);
    let with = |claims: Value| principal("x", &[], claims);
    let ok = with(json!({ "repository_owner": "acme", "aud": ["other", "portcullis"] }));
    assert_eq!(
        policies.applicable(&ok, "orders-db").policy_names(),
        vec!["owners"]
    );
    for claims in [
        json!({ "repository_owner": "acme" }),
        json!({ "repository_owner": "acme-evil", "aud": "portcullis" }),
        json!({ "repository_owner": "acme", "aud": ["other"] }),
        json!({ "repository_owner": { "acme": true }, "aud": "portcullis" }),
        json!({ "repository_owner": null, "aud": "portcullis" }),
    ] {
        assert!(
            policies
                .applicable(&with(claims.clone()), "orders-db")
                .is_empty(),
            "{claims}"
        );
    }
    let numeric = set(vec![json!({
        "name": "n",
        "match": { "claims": { "run_attempt": "1", "email_verified": "true" } },
        "connection": "orders-db",
    })]);
    let p = with(json!({ "run_attempt": 1, "email_verified": true }));
    assert!(!numeric.applicable(&p, "orders-db").is_empty());
}

#[test]
fn groups_and_principals_must_all_hold() {
    let policies = set(vec![json!({
        "name": "sre",
        "match": { "groups": ["sre", "dba"], "principals": ["*@acme.com"] },
        "connection": "orders-db",
        "allow": ["write"],
    })]);
    let names = |p: &Principal| policies.applicable(p, "orders-db").policy_names().len();
    assert_eq!(names(&principal("ann@acme.com", &["dba"], json!({}))), 1);
    assert_eq!(names(&principal("ann@acme.com", &["dev"], json!({}))), 0);
    assert_eq!(names(&principal("ann@evil.com", &["sre"], json!({}))), 0);
    assert_eq!(
        names(&principal("ann@acme.com.evil", &["sre"], json!({}))),
        0
    );
}

#[test]
fn other_connections_get_no_policies() {
    let policies = set(vec![ci_reads()]);
    let applicable = policies.applicable(&ci(), "billing-db");
    assert!(applicable.is_empty());
    assert_eq!(applicable.access(), None);
    let d = applicable.decide(&classify("SELECT 1").unwrap());
    assert_eq!(d.verdict, Verdict::Deny);
}

#[test]
fn access_prefers_standing_then_the_first_jit_policy() {
    let jit = |name: &str, approval: &str| {
        json!({
            "name": name,
            "match": { "groups": ["ci"] },
            "connection": "orders-db",
            "access": { "jit": { "max": "1h", "approval": approval } },
            "allow": ["read"],
        })
    };
    let only_jit = set(vec![jit("a", "auto"), jit("b", "required")]);
    match only_jit.applicable(&ci(), "orders-db").access() {
        Some(Access::Jit(j)) => assert_eq!(j.approval, JitApproval::Auto),
        other => panic!("{other:?}"),
    }
    let mixed = set(vec![jit("a", "auto"), ci_reads()]);
    assert_eq!(
        mixed.applicable(&ci(), "orders-db").access(),
        Some(&Access::Standing)
    );
}

#[test]
fn jit_terms_are_the_strictest_of_the_jit_policies() {
    let jit = |name: &str, max: &str, approval: &str| {
        json!({
            "name": name,
            "match": { "groups": ["ci"] },
            "connection": "orders-db",
            "access": { "jit": { "max": max, "approval": approval } },
            "allow": ["read"],
        })
    };
    assert_eq!(
        set(vec![ci_reads()])
            .applicable(&ci(), "orders-db")
            .jit_terms(),
        None
    );
    let one = set(vec![ci_reads(), jit("a", "1h", "auto")]);
    let terms = one.applicable(&ci(), "orders-db").jit_terms().unwrap();
    assert_eq!(terms.max.0.as_secs(), 3600);
    assert_eq!(terms.approval, JitApproval::Auto);
    let two = set(vec![jit("a", "1h", "auto"), jit("b", "15m", "required")]);
    let terms = two.applicable(&ci(), "orders-db").jit_terms().unwrap();
    assert_eq!(terms.max.0.as_secs(), 900);
    assert_eq!(terms.approval, JitApproval::Required);
    assert_eq!(two.applicable(&ci(), "other-db").jit_terms(), None);
}

#[test]
fn masks_of_applicable_policies_are_exposed() {
    let mut with_mask = ci_reads();
    with_mask["mask"] = json!({ "columns": ["customers.email"] });
    let policies = set(vec![with_mask]);
    let applicable = policies.applicable(&ci(), "orders-db");
    let masks: Vec<_> = applicable.masks().collect();
    assert_eq!(masks.len(), 1);
    assert_eq!(masks[0].0, "ci-reads");
    assert_eq!(masks[0].1.columns, vec!["customers.email"]);
}

#[test]
fn bad_rules_are_refused_at_compile_time() {
    use portcullis_config::sql_rule::SqlRuleError;
    let sql = RuleProblem::Sql;
    for (rule, problem) in [
        ("", sql(SqlRuleError::Empty)),
        ("  ", sql(SqlRuleError::Empty)),
        ("reads", sql(SqlRuleError::UnknownClass("reads".into()))),
        ("session", sql(SqlRuleError::UnknownClass("session".into()))),
        (
            "erase on t",
            sql(SqlRuleError::UnknownAction("erase".into())),
        ),
        (
            "delete on a.b.c.d",
            sql(SqlRuleError::BadRelation("a.b.c.d".into())),
        ),
        (
            "DELETE FROM t WHERE id = 1",
            sql(SqlRuleError::TextPattern {
                suggestion: "\"delete on t\"".into(),
            }),
        ),
    ] {
        let config = policy(json!({
            "name": "bad",
            "match": { "groups": ["ci"] },
            "connection": "orders-db",
            "deny": [rule],
        }));
        match PolicySet::compile(&[config]) {
            Err(PolicyError::Rule {
                problem: p, list, ..
            }) => {
                assert_eq!((p, list), (problem, "deny"), "{rule:?}");
            }
            Ok(_) => panic!("{rule:?} compiled"),
        }
    }
    // Class names are case-insensitive.
    let config = policy(json!({
        "name": "ok",
        "match": { "groups": ["ci"] },
        "connection": "orders-db",
        "allow": ["READ", " Write "],
    }));
    assert!(PolicySet::compile(&[config]).is_ok());
}

#[test]
fn globs_are_anchored() {
    use super::glob::Glob;
    let cases = [
        ("DROP *", "DROP TABLE t", true),
        ("DROP *", "XDROP TABLE", false),
        ("DROP *", "DROP", false),
        ("*", "", true),
        ("", "", true),
        ("", "x", false),
        ("a*b*c", "abc", true),
        ("a*b*c", "aXbYc", true),
        ("a*b*c", "aXcYb", false),
        ("ab*ba", "aba", false),
        ("*.acme.com", "x.acme.com", true),
        ("*.acme.com", "x.acme.com.evil", false),
        ("exact", "exact", true),
        ("exact", "exactly", false),
    ];
    for (pattern, text, want) in cases {
        assert_eq!(
            Glob::new(pattern).matches(text),
            want,
            "{pattern:?} ~ {text:?}"
        );
    }
}

#[test]
fn policy_sets_are_shareable() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PolicySet>();
    assert_send_sync::<Applicable<'static>>();
}

#[test]
fn decisions_serialize_for_records() {
    let d = decide(&set(vec![ci_reads()]), &ci(), "TRUNCATE orders");
    let v = serde_json::to_value(&d).unwrap();
    assert_eq!(v["verdict"], "deny");
    assert_eq!(v["rule"], "TRUNCATE *");
    assert_eq!(v["statement_index"], 0);
}

#[test]
fn standing_only_drops_the_rules_of_jit_policies() {
    let policies = set(vec![
        ci_reads(),
        json!({
            "name": "ci-jit-writes",
            "match": { "groups": ["ci"] },
            "connection": "orders-db",
            "access": { "jit": { "max": "15m" } },
            "allow": ["write"],
        }),
    ]);
    let all = policies.applicable(&ci(), "orders-db");
    assert_eq!(all.policy_names(), vec!["ci-reads", "ci-jit-writes"]);
    let standing = all.standing_only();
    assert_eq!(standing.policy_names(), vec!["ci-reads"]);
    let insert = classify("INSERT INTO t VALUES (1)").unwrap();
    assert_eq!(standing.decide(&insert).verdict, Verdict::Hold);
    let jit_only = set(vec![json!({
        "name": "jit",
        "match": { "groups": ["ci"] },
        "connection": "orders-db",
        "access": { "jit": { "max": "15m" } },
        "allow": ["read"],
    })]);
    let standing = jit_only.applicable(&ci(), "orders-db").standing_only();
    assert!(standing.is_empty());
    assert_eq!(
        standing.decide(&classify("SELECT 1").unwrap()).verdict,
        Verdict::Deny
    );
}

#[test]
fn level_is_the_highest_class_allow_lets_run() {
    let level = |allow: Value, require_approval: Value| {
        set(vec![json!({
            "name": "p",
            "match": { "groups": ["ci"] },
            "connection": "orders-db",
            "allow": allow,
            "require_approval": require_approval,
        })])
        .applicable(&ci(), "orders-db")
        .level()
    };
    use StatementClass::*;
    assert_eq!(level(json!(["read"]), json!(["write", "ddl"])), Read);
    assert_eq!(level(json!([]), json!(["write"])), Read);
    assert_eq!(level(json!(["read", "write"]), json!([])), Write);
    assert_eq!(level(json!(["admin", "read"]), json!([])), Admin);
    assert_eq!(level(json!(["select on orders"]), json!([])), Read);
    assert_eq!(level(json!(["read", "delete on orders"]), json!([])), Write);
    assert_eq!(level(json!(["read", "create on *"]), json!([])), Ddl);
    assert_eq!(level(json!(["truncate on orders"]), json!([])), Ddl);
    assert_eq!(level(json!(["insert on public.*"]), json!([])), Write);
    // The `write` group includes `truncate`, which needs a `ddl` role.
    assert_eq!(level(json!(["write on public.*"]), json!([])), Ddl);
    assert_eq!(level(json!(["ddl on *"]), json!(["admin"])), Ddl);
}

#[test]
fn level_combines_every_applicable_policy() {
    let policies = set(vec![
        ci_reads(),
        json!({
            "name": "ci-jit-ddl",
            "match": { "groups": ["ci"] },
            "connection": "orders-db",
            "access": { "jit": { "max": "15m" } },
            "allow": ["ddl"],
        }),
    ]);
    let all = policies.applicable(&ci(), "orders-db");
    assert_eq!(all.level(), StatementClass::Ddl);
    // ci_reads allows an UPDATE pattern beside `read`.
    assert_eq!(all.standing_only().level(), StatementClass::Write);
}

//! Rules decide on what a statement does, not on its text (issue 11, "patterns
//! are text-deep"): a delete is held or denied however it is spelt or
//! wrapped, and the row is still there afterwards.

use crate::env::{Env, Options};
use crate::jit_support::{psql_in_background, wait_for_pending};

/// `ops` may read and write; deletes on items wait for an approver; deletes
/// on public.orders are refused.
const GUARDED: &str = r#"
  - name: guarded
    match: { groups: [ops] }
    connection: app-db
    allow: [read, write]
    require_approval: ["delete on items"]
    deny: ["delete on public.orders"]
"#;

fn guarded_env() -> Env {
    let env = Env::with(Options {
        policies: GUARDED.to_string(),
        ..Options::default()
    });
    env.pg.sql(
        "app",
        "create table orders (id int primary key);
         insert into orders select generate_series(1, 10);
         alter table orders owner to app_scram;",
    );
    env
}

fn count(env: &Env, table: &str, id: u32) -> String {
    env.pg
        .sql(
            "app",
            &format!("select count(*) from {table} where id = {id}"),
        )
        .trim()
        .to_owned()
}

#[test]
fn deletes_on_a_denied_relation_are_refused_in_every_spelling_and_wrapping() {
    let env = guarded_env();
    let ops = env.token("oncall", &["ops"]);
    let forms = [
        "DELETE FROM \"orders\" WHERE id = 1",
        "DELETE FROM public.orders WHERE id = 1",
        "delete from PUBLIC.\"orders\" where id = 1",
        "DELETE FROM ORDERS WHERE id = 1",
        "WITH d AS (DELETE FROM orders WHERE id = 1 RETURNING 1) SELECT * FROM d",
        "EXPLAIN ANALYZE DELETE FROM orders WHERE id = 1",
        "SELECT 1; DELETE FROM orders WHERE id = 1",
        "PREPARE p AS DELETE FROM orders WHERE id = $1; EXECUTE p(1)",
    ];
    for sql in forms {
        let out = env.psql(&ops, &format!("{sql};\nselect 'usable';\n"));
        assert!(
            out.stderr.contains("42501") || out.stderr.contains("permission denied"),
            "{sql}: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains("delete on public.orders"),
            "{sql}: {}",
            out.stderr
        );
        assert!(out.stdout.contains("usable"), "{sql}: {}", out.stderr);
        assert_eq!(count(&env, "orders", 1), "1", "{sql}");
    }
    let denied = env.wait_for_record(|r| r["kind"] == "statement" && r["decision"] == "deny");
    assert_eq!(denied["rule"], "delete on public.orders");
    assert!(
        denied["detail"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("delete on orders"),
        "{denied}"
    );
    // A plain EXPLAIN plans the delete without running it, so it is allowed.
    let out = env.psql(&ops, "EXPLAIN DELETE FROM orders WHERE id = 2;\n");
    assert!(out.stdout.contains("Delete on orders"), "{}", out.stderr);
    assert_eq!(count(&env, "orders", 2), "1");
}

/// Runs `sql` as `ops`, denies the held statement containing `held` as an
/// approver, and returns what psql printed.
fn deny_held(env: &Env, sql: &str, held: &str) -> test_support::Output {
    let ops = env.token("oncall", &["ops"]);
    let alice = env.token("alice", &["sre"]);
    let session = psql_in_background(env, &ops, sql);
    let pending = wait_for_pending(|| env.cli_json(&alice, &["approvals", "list"]), held);
    assert!(
        pending["reason"]
            .as_str()
            .unwrap_or("")
            .contains("delete on items"),
        "{pending}"
    );
    let id = pending["id"].as_str().expect("approval id").to_owned();
    env.cli_json(&alice, &["approvals", "deny", &id]);
    session.join().expect("psql thread")
}

#[test]
fn wrapped_deletes_on_a_held_relation_wait_for_an_approver() {
    let env = guarded_env();
    for (sql, held) in [
        (
            "WITH d AS (DELETE FROM items WHERE id = 1 RETURNING 1) SELECT * FROM d",
            "WITH d AS",
        ),
        (
            "EXPLAIN ANALYZE DELETE FROM \"items\" WHERE id = 1",
            "EXPLAIN ANALYZE",
        ),
        (
            "PREPARE p AS DELETE FROM public.items WHERE id = $1; EXECUTE p(1)",
            "PREPARE p",
        ),
    ] {
        let out = deny_held(&env, &format!("{sql};\n"), held);
        assert!(
            out.stderr.contains("42501") || out.stderr.contains("denied"),
            "{sql}: {}",
            out.stderr
        );
        assert_eq!(count(&env, "items", 1), "1", "{sql}");
    }
}

#[test]
fn an_execute_of_an_approved_prepare_is_held_as_the_delete_it_runs() {
    let env = guarded_env();
    let ops = env.token("oncall", &["ops"]);
    let alice = env.token("alice", &["sre"]);
    let session = psql_in_background(
        &env,
        &ops,
        "PREPARE p AS DELETE FROM items WHERE id = $1;\nEXECUTE p(3);\nselect 'after';\n",
    );
    // The PREPARE names a delete on items: approved, it only prepares.
    let prepare = wait_for_pending(|| env.cli_json(&alice, &["approvals", "list"]), "PREPARE p");
    let id = prepare["id"].as_str().expect("approval id").to_owned();
    env.cli_json(&alice, &["approvals", "approve", &id]);
    // The EXECUTE runs the delete, so it waits again; denied, nothing runs.
    let execute = wait_for_pending(|| env.cli_json(&alice, &["approvals", "list"]), "EXECUTE p");
    assert!(
        execute["reason"]
            .as_str()
            .unwrap_or("")
            .contains("delete on items"),
        "{execute}"
    );
    let id = execute["id"].as_str().expect("approval id").to_owned();
    env.cli_json(&alice, &["approvals", "deny", &id]);
    let out = session.join().expect("psql thread");
    assert!(out.stdout.contains("after"), "{}", out.stderr);
    assert_eq!(count(&env, "items", 3), "1");
}

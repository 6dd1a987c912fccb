//! What a statement does to which relation: the `(action, relation)` pairs
//! that `ACTION on RELATION` rules are matched against.
//!
//! A `DELETE` is a delete wherever the parse tree holds it: at the top, in a
//! data-modifying CTE, under `EXPLAIN ANALYZE` (which runs it), in a
//! `PREPARE` body or a rule's actions. So, like `walk`, this looks at every
//! node of the tree's JSON form, and recognises relations by shape
//! (`RangeVar`). A relation is `select`ed unless the statement node that owns
//! it makes it a target: the `relation` of a `DeleteStmt` is deleted from
//! (and read, as PostgreSQL's own privileges say when a `WHERE` or
//! `RETURNING` looks at its rows). Targets are marked by address when their
//! statement node is reached, which is always before the relation itself,
//! since the walk visits a node before its children.
//!
//! Under a plain `EXPLAIN` nothing runs, so every relation below it is only
//! `select`ed (planned). An `EXPLAIN` with any `ANALYZE` option, even
//! `ANALYZE false`, counts as running: the option's value is a literal the
//! classification cache does not see.
//!
//! Names are the parser's: unquoted identifiers already folded to lower
//! case and cut to 63 bytes, quoted ones exact. Which schema an unqualified
//! name means depends on the session's `search_path`, which the client can
//! change at any time; the policy crate resolves that ambiguity, not this.

use std::collections::HashMap;
use std::fmt;

use pg_query::protobuf::{DropBehavior, ObjectType};
use portcullis_config::sql_rule::Action;
use serde_json::{Map, Value};

/// A relation as the statement names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RelationName {
    /// `None` when unqualified: the session's `search_path` decides.
    pub schema: Option<String>,
    pub name: String,
}

impl fmt::Display for RelationName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(schema) = &self.schema {
            write!(f, "{}.", quote_ident(schema))?;
        }
        f.write_str(&quote_ident(&self.name))
    }
}

/// A name as it would have to be written to mean itself.
fn quote_ident(name: &str) -> String {
    let plain = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    match plain {
        true => name.to_owned(),
        false => format!("\"{}\"", name.replace('"', "\"\"")),
    }
}

/// What an action is done to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Relation(RelationName),
    /// Objects the statement does not name as relations but may reach: what
    /// `DROP SCHEMA` removes, the tables `TRUNCATE ... CASCADE` empties.
    /// Described for the reader: `what DROP SCHEMA names`.
    Unnamed(String),
}

/// One thing a statement does: `delete on public.customers`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Act {
    pub action: Action,
    pub target: Target,
}

impl fmt::Display for Act {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Relation(r) => write!(f, "{} on {r}", self.action),
            Target::Unnamed(what) => write!(f, "{} on {what}", self.action),
        }
    }
}

impl serde::Serialize for Act {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Every act of one statement, given its tagged tree (`{"DeleteStmt": ..}`)
/// and command tag, in the order found, each once.
pub(crate) fn collect(tree: &Value, command: &str) -> Vec<Act> {
    let mut found = Found::default();
    let mut stack = vec![(tree, Runs::Yes)];
    while let Some((value, runs)) = stack.pop() {
        match value {
            Value::Array(items) => stack.extend(items.iter().map(|v| (v, runs))),
            Value::Object(object) => {
                let runs = found.inspect(value, object, runs);
                stack.extend(object.values().map(|v| (v, runs)));
            }
            _ => {}
        }
    }
    found.statement_level(command);
    found.acts
}

/// Whether what is below runs, or is only planned by a plain `EXPLAIN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Runs {
    Yes,
    PlannedOnly,
}

#[derive(Default)]
struct Found {
    acts: Vec<Act>,
    /// What each target relation (by address in the tree) is subjected to.
    targets: HashMap<*const Value, Vec<Action>>,
}

impl Found {
    fn push(&mut self, act: Act) {
        if !self.acts.contains(&act) {
            self.acts.push(act);
        }
    }

    fn unnamed(&mut self, action: Action, what: String) {
        self.push(Act {
            action,
            target: Target::Unnamed(what),
        });
    }

    /// Looks at one object; returns whether its children run.
    fn inspect(&mut self, value: &Value, object: &Map<String, Value>, runs: Runs) -> Runs {
        if let Some(relation) = range_var(object) {
            self.relation(value, relation, runs);
            return runs;
        }
        match single_tag(object) {
            Some(("ExplainStmt", explain)) if !analyzes(explain) => Runs::PlannedOnly,
            Some((tag, node)) => {
                self.statement_node(tag, node);
                runs
            }
            None => runs,
        }
    }

    fn relation(&mut self, value: &Value, relation: RelationName, runs: Runs) {
        let marked = self.targets.get(&(value as *const Value));
        let actions = match (runs, marked) {
            (Runs::Yes, Some(actions)) => actions.clone(),
            _ => vec![Action::Select],
        };
        for action in actions {
            self.push(Act {
                action,
                target: Target::Relation(relation.clone()),
            });
        }
    }

    /// Marks the relations a statement node acts on.
    fn statement_node(&mut self, tag: &str, node: &Value) {
        use Action::*;
        let relation = node.get("relation");
        match tag {
            "InsertStmt" => self.mark(relation, &insert_actions(node)),
            "UpdateStmt" => self.mark(relation, &[Update, Select]),
            "DeleteStmt" => self.mark(relation, &[Delete, Select]),
            // Which WHEN clauses fire depends on the data: all of them may.
            "MergeStmt" => self.mark(relation, &[Insert, Update, Delete, Select]),
            "TruncateStmt" => self.truncate(node),
            "CopyStmt" if is_true(node, "is_from") => self.mark(relation, &[Insert]),
            "CreateTableAsStmt" => self.mark(node.pointer("/into/rel"), &[Create]),
            "SelectStmt" => self.mark(node.pointer("/into_clause/rel"), &[Create]),
            "CreateStmt" => self.mark(relation, &[Create]),
            "ViewStmt" => self.mark(node.get("view"), &[Create]),
            "AlterTableStmt"
            | "RenameStmt"
            | "AlterObjectSchemaStmt"
            | "IndexStmt"
            | "CreateTrigStmt"
            | "RuleStmt"
            | "RefreshMatViewStmt" => self.mark(relation, &[Alter]),
            "DropStmt" => self.drop_stmt(node),
            _ => {}
        }
    }

    fn mark(&mut self, relations: Option<&Value>, actions: &[Action]) {
        for relation in relations.into_iter().flat_map(range_var_values) {
            self.targets
                .entry(relation as *const Value)
                .or_default()
                .extend_from_slice(actions);
        }
    }

    fn truncate(&mut self, node: &Value) {
        self.mark(node.get("relations"), &[Action::Truncate]);
        if cascades(node) {
            self.unnamed(
                Action::Truncate,
                "the tables CASCADE reaches through foreign keys".into(),
            );
        }
    }

    /// `DROP` names its objects as name lists, not relation nodes.
    fn drop_stmt(&mut self, node: &Value) {
        let object_type = node.get("remove_type").and_then(Value::as_i64);
        if !is_relation_like(object_type) {
            let what = object_type
                .and_then(|t| i32::try_from(t).ok())
                .and_then(|t| ObjectType::try_from(t).ok())
                .map_or("OBJECT", |t| t.as_str_name().trim_start_matches("OBJECT_"));
            return self.unnamed(Action::Drop, format!("what DROP {what} names"));
        }
        let lists = node.get("objects").and_then(Value::as_array);
        for names in lists.into_iter().flatten().filter_map(name_list) {
            self.push(Act {
                action: Action::Drop,
                target: Target::Relation(names),
            });
        }
        if cascades(node) {
            self.unnamed(Action::Drop, "what CASCADE reaches".into());
        }
    }

    /// `CREATE FUNCTION`, `ALTER SYSTEM`, `DROP ROLE`...: a schema or
    /// server change the tree names no relation for still is one.
    fn statement_level(&mut self, command: &str) {
        let verb = command.split_whitespace().next().unwrap_or_default();
        let action = match verb {
            "CREATE" => Action::Create,
            "ALTER" => Action::Alter,
            "DROP" => Action::Drop,
            _ => return,
        };
        if !self.acts.iter().any(|a| a.action == action) {
            self.unnamed(action, format!("what {command} names"));
        }
    }
}

/// `INSERT` also updates with `ON CONFLICT`, and reads its target when
/// `ON CONFLICT` or `RETURNING` looks at the rows.
fn insert_actions(node: &Value) -> Vec<Action> {
    let conflict = node.get("on_conflict_clause").is_some_and(|c| !c.is_null());
    let returning = node
        .get("returning_list")
        .and_then(Value::as_array)
        .is_some_and(|r| !r.is_empty());
    let mut actions = vec![Action::Insert];
    if conflict {
        actions.push(Action::Update);
    }
    if conflict || returning {
        actions.push(Action::Select);
    }
    actions
}

/// The one `Tag: {..}` pair of a node serialized through its enum.
fn single_tag(object: &Map<String, Value>) -> Option<(&str, &Value)> {
    let mut entries = object.iter();
    match (entries.next(), entries.next()) {
        (Some((tag, node)), None) if node.is_object() => Some((tag.as_str(), node)),
        _ => None,
    }
}

fn is_true(node: &Value, field: &str) -> bool {
    node.get(field).and_then(Value::as_bool) == Some(true)
}

fn cascades(node: &Value) -> bool {
    node.get("behavior").and_then(Value::as_i64) == Some(DropBehavior::DropCascade as i64)
}

/// Any `analyze` option, whatever its value.
fn analyzes(explain: &Value) -> bool {
    let options = explain.get("options").and_then(Value::as_array);
    options.into_iter().flatten().any(|option| {
        option
            .pointer("/node/DefElem/defname")
            .and_then(Value::as_str)
            .is_some_and(|name| name.eq_ignore_ascii_case("analyze"))
    })
}

/// The relation nodes at `value`: a typed field holds one untagged, a
/// node list holds them tagged.
fn range_var_values(value: &Value) -> Vec<&Value> {
    match value {
        Value::Array(items) => items.iter().flat_map(range_var_values).collect(),
        Value::Object(object) if object.contains_key("relpersistence") => vec![value],
        _ => value
            .pointer("/node/RangeVar")
            .map(|v| vec![v])
            .unwrap_or_default(),
    }
}

/// The name of a `RangeVar`; a catalog (database) name is dropped, since
/// PostgreSQL accepts only the current database there.
fn range_var(object: &Map<String, Value>) -> Option<RelationName> {
    if !object.contains_key("relpersistence") {
        return None;
    }
    let part = |key: &str| {
        object
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    Some(RelationName {
        schema: part("schemaname").map(str::to_owned),
        name: part("relname")?.to_owned(),
    })
}

fn is_relation_like(object_type: Option<i64>) -> bool {
    use ObjectType as O;
    let relation_like = [
        O::ObjectTable,
        O::ObjectView,
        O::ObjectMatview,
        O::ObjectForeignTable,
        O::ObjectSequence,
        O::ObjectIndex,
    ];
    object_type.is_some_and(|t| relation_like.iter().any(|o| *o as i64 == t))
}

/// `["public", "orders"]` as a `List` of `String` nodes.
fn name_list(node: &Value) -> Option<RelationName> {
    let items = node.pointer("/node/List/items")?.as_array()?;
    let names: Vec<&str> = items
        .iter()
        .filter_map(|n| n.pointer("/node/String/sval").and_then(Value::as_str))
        .collect();
    let (name, qualifiers) = names.split_last()?;
    Some(RelationName {
        schema: qualifiers.last().map(|s| (*s).to_owned()),
        name: (*name).to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use crate::classify::classify;

    /// Every act of every statement of `sql`, as rules read them, sorted.
    fn acts(sql: &str) -> Vec<String> {
        let c = classify(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        let mut acts: Vec<String> = c
            .statements
            .iter()
            .flat_map(|s| s.actions.iter().map(ToString::to_string))
            .collect();
        acts.sort();
        acts
    }

    fn assert_acts(sql: &str, want: &[&str]) {
        let mut want: Vec<String> = want.iter().map(|w| w.to_string()).collect();
        want.sort();
        assert_eq!(acts(sql), want, "{sql}");
    }

    #[test]
    fn each_statement_kind_names_what_it_does_to_which_relation() {
        for (sql, want) in [
            (
                "SELECT * FROM orders o JOIN public.customers c ON true",
                &["select on orders", "select on public.customers"][..],
            ),
            (
                "DELETE FROM \"orders\" WHERE id = 1",
                &["delete on orders", "select on orders"],
            ),
            (
                "delete from PUBLIC.ORDERS",
                &["delete on public.orders", "select on public.orders"],
            ),
            (
                "DELETE FROM \"Orders\"",
                &["delete on \"Orders\"", "select on \"Orders\""],
            ),
            (
                "INSERT INTO t SELECT * FROM s",
                &["insert on t", "select on s"],
            ),
            (
                "INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING",
                &["insert on t", "update on t", "select on t"],
            ),
            (
                "UPDATE t SET a = 1 FROM s",
                &["update on t", "select on t", "select on s"],
            ),
            (
                "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
                &[
                    "insert on t",
                    "update on t",
                    "delete on t",
                    "select on t",
                    "select on s",
                ],
            ),
            ("TRUNCATE a, b.c", &["truncate on a", "truncate on b.c"]),
            (
                "TRUNCATE a CASCADE",
                &[
                    "truncate on a",
                    "truncate on the tables CASCADE reaches through foreign keys",
                ],
            ),
            ("COPY t FROM STDIN", &["insert on t"]),
            ("COPY t TO STDOUT", &["select on t"]),
            ("COPY (SELECT * FROM t) TO STDOUT", &["select on t"]),
            (
                "CREATE TABLE n AS SELECT * FROM t",
                &["create on n", "select on t"],
            ),
            ("SELECT * INTO n FROM t", &["create on n", "select on t"]),
            (
                "DROP TABLE public.t, \"U\"",
                &["drop on public.t", "drop on \"U\""],
            ),
            ("DROP SCHEMA payroll", &["drop on what DROP SCHEMA names"]),
            ("ALTER TABLE t ADD COLUMN x int", &["alter on t"]),
            (
                "CREATE INDEX i ON t (x)",
                &["alter on t", "create on what CREATE INDEX names"],
            ),
            ("DROP ROLE bob", &["drop on what DROP ROLE names"]),
        ] {
            assert_acts(sql, want);
        }
    }

    #[test]
    fn nested_statements_act_where_they_run() {
        for (sql, want) in [
            (
                "WITH d AS (DELETE FROM customers WHERE id = 1 RETURNING 1) SELECT * FROM d",
                &["delete on customers", "select on customers", "select on d"][..],
            ),
            (
                "EXPLAIN ANALYZE DELETE FROM customers",
                &["delete on customers", "select on customers"],
            ),
            (
                "EXPLAIN (ANALYZE false) DELETE FROM customers",
                &["delete on customers", "select on customers"],
            ),
            ("EXPLAIN DELETE FROM customers", &["select on customers"]),
            ("EXPLAIN (COSTS off) UPDATE t SET a = 1", &["select on t"]),
            (
                "PREPARE p AS DELETE FROM customers WHERE id = $1",
                &["delete on customers", "select on customers"],
            ),
            (
                "CREATE RULE r AS ON INSERT TO t DO ALSO DELETE FROM customers",
                &[
                    "alter on t",
                    "delete on customers",
                    "select on customers",
                    "create on what CREATE RULE names",
                ],
            ),
            (
                "SELECT (SELECT count(*) FROM payroll.salaries) FROM t",
                &["select on payroll.salaries", "select on t"],
            ),
            (
                "SELECT 1; DELETE FROM customers",
                &["delete on customers", "select on customers"],
            ),
            (
                "EXPLAIN ANALYZE CREATE TABLE n AS SELECT 1",
                &["create on n"],
            ),
        ] {
            assert_acts(sql, want);
        }
    }
}

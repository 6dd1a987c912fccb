//! Finds what a statement touches and calls, anywhere in its parse tree.
//!
//! Side effects hide in every corner of a statement (a function call inside
//! a cast in a `LIMIT`, a `DELETE` in a CTE, `FOR UPDATE` in a subquery), so
//! this walk must see every field of every node. `pg_query`'s own node
//! iterator skips many node kinds, and a hand-written visitor over the ~270
//! node types would silently miss whichever one it forgot. Instead the tree
//! goes through its `serde::Serialize` impl into a JSON value, which by
//! construction contains every field, and the walk looks at that.
//!
//! Nodes are recognised by shape, not only by their `Node` tag, because
//! prost's typed fields (`DeleteStmt.relation`, `CallStmt.funccall`) are
//! serialized without one.

use serde_json::{Map, Value};

use super::functions::{is_privileged_setting, side_effect};
use super::model;
use super::{Reads, StatementClass};

/// Everything the walk learned about one statement.
#[derive(Debug, Default)]
pub(crate) struct Facts {
    /// Tables and views, schema-qualified as written, in order of appearance.
    pub relations: Vec<String>,
    /// Functions called, as written (schema included), in order of appearance.
    pub functions: Vec<String>,
    /// The strongest class forced by something inside, and why.
    pub raise: Option<(StatementClass, String)>,
    /// Something the statement may do that no relation action names (a
    /// call with side effects, a row lock), so action rules cannot allow it.
    pub unnamed_effect: Option<String>,
    /// The classification depends on a literal's value, so the literal-free
    /// cache key cannot stand for it.
    pub literal_sensitive: bool,
    /// Which columns the statement may read.
    pub reads: Reads,
    /// Why no principal may run the statement: it would change how the
    /// server reads queries (see `model`).
    pub refusal: Option<String>,
}

impl Facts {
    /// Keeps the first reason: it names the first thing found.
    fn refuse(&mut self, why: String) {
        if self.refusal.is_none() {
            self.refusal = Some(why);
        }
    }

    /// Raises the class for an effect that is not an action on a relation.
    fn unnamed(&mut self, class: StatementClass, why: String) {
        self.unnamed_effect.get_or_insert_with(|| why.clone());
        self.raise_to(class, why);
    }

    fn raise_to(&mut self, class: StatementClass, why: String) {
        if self.raise.as_ref().is_none_or(|(c, _)| class > *c) {
            self.raise = Some((class, why));
        }
    }
}

/// Walks the statement node (its JSON form, below the statement's own tag).
pub(crate) fn walk(statement: &Value) -> Facts {
    let mut found = Found::default();
    let mut stack = vec![statement];
    while let Some(value) = stack.pop() {
        match value {
            Value::Array(items) => stack.extend(items),
            Value::Object(object) => {
                inspect(object, &mut found);
                stack.extend(object.values());
            }
            _ => {}
        }
    }
    found.finish()
}

/// What the walk collects before it is put in the order of the text.
#[derive(Default)]
struct Found {
    facts: Facts,
    ctes: Vec<String>,
    relations: Vec<(i64, String)>,
    functions: Vec<(i64, String)>,
    /// Each column reference's names, `*` standing for a star.
    column_refs: Vec<Vec<String>>,
    /// Names a whole row can be referenced by: relations and aliases.
    row_names: Vec<String>,
    /// A relation or sub-query renames its columns (`x(a, b)`).
    renamed: bool,
}

impl Found {
    fn finish(self) -> Facts {
        let reads = reads(&self.column_refs, &self.row_names, &self.ctes, self.renamed);
        let ctes = self.ctes;
        // A reference to a CTE is not a relation; this is name-based and
        // ignores scoping, which at worst hides a same-named table.
        let relations = self
            .relations
            .into_iter()
            .filter(|(_, r)| r.contains('.') || !ctes.contains(r));
        Facts {
            relations: in_text_order(relations),
            functions: in_text_order(self.functions.into_iter()),
            reads,
            ..self.facts
        }
    }
}

/// A reference whose last name is a relation's or alias's name may be a
/// whole-row reference (`c`, `customers`, `public.customers`): PostgreSQL
/// tries it as a column first, so this cannot be told from the text alone
/// and counts as one.
fn reads(refs: &[Vec<String>], row_names: &[String], ctes: &[String], renamed: bool) -> Reads {
    let mut columns: Vec<String> = Vec::new();
    let mut whole_rows = renamed;
    for names in refs {
        let Some(last) = names.last() else {
            continue;
        };
        if last == "*" {
            whole_rows = true;
            continue;
        }
        whole_rows |= row_names.iter().chain(ctes).any(|n| n == last);
        columns.push(last.clone());
    }
    columns.sort_unstable();
    columns.dedup();
    Reads {
        columns,
        whole_rows,
    }
}

/// Sorts by source location and drops repeats.
fn in_text_order(items: impl Iterator<Item = (i64, String)>) -> Vec<String> {
    let mut items: Vec<(i64, String)> = items.collect();
    items.sort_by_key(|(location, _)| *location);
    let mut names: Vec<String> = Vec::with_capacity(items.len());
    for (_, name) in items {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

fn location(object: &Map<String, Value>) -> i64 {
    object.get("location").and_then(Value::as_i64).unwrap_or(-1)
}

fn inspect(object: &Map<String, Value>, found: &mut Found) {
    let facts = &mut found.facts;
    if let Some(kind) = nested_dml(object) {
        facts.raise_to(
            StatementClass::Write,
            format!("contains a data-modifying {kind}"),
        );
    }
    if is_select(object) {
        inspect_select(object, facts);
    }
    if let Some(name) = variable_set(object) {
        setting_assigned(name, object, facts);
    }
    if writes_pg_settings(object) {
        facts.raise_to(
            StatementClass::Admin,
            "writes pg_settings, which changes the settings it names (SET by another name)".into(),
        );
    }
    if let Some(funcname) = object
        .get("funcname")
        .filter(|_| object.contains_key("agg_star"))
    {
        let name = dotted(funcname);
        call(&name, object, facts);
        found.functions.push((location(object), name));
    }
    if let Some(name) = object.get("ctename").and_then(Value::as_str) {
        found.ctes.push(name.to_owned());
    }
    if let Some(relation) = range_var(object) {
        if let Some(name) = object.get("relname").and_then(Value::as_str) {
            found.row_names.push(name.to_owned());
        }
        found.relations.push((location(object), relation));
    }
    if let Some(names) = object.get("ColumnRef").and_then(column_ref) {
        found.column_refs.push(names);
    }
    if let Some(alias) = object.get("aliasname").and_then(Value::as_str) {
        found.row_names.push(alias.to_owned());
        found.renamed |= object.get("colnames").is_some_and(non_empty);
    }
}

/// The names of a `ColumnRef` (`{"fields": [String | A_Star, ...]}`).
fn column_ref(node: &Value) -> Option<Vec<String>> {
    let fields = node.get("fields")?.as_array()?;
    Some(
        fields
            .iter()
            .map(
                |f| match f.pointer("/node/String/sval").and_then(Value::as_str) {
                    Some(name) => name.to_owned(),
                    None => "*".to_owned(),
                },
            )
            .collect(),
    )
}

/// Data-modifying statements only appear nested through a `Node` tag.
fn nested_dml(object: &Map<String, Value>) -> Option<&'static str> {
    [
        ("InsertStmt", "INSERT"),
        ("UpdateStmt", "UPDATE"),
        ("DeleteStmt", "DELETE"),
        ("MergeStmt", "MERGE"),
    ]
    .into_iter()
    .find(|(tag, _)| object.contains_key(*tag))
    .map(|(_, kind)| kind)
}

fn is_select(object: &Map<String, Value>) -> bool {
    object.contains_key("locking_clause") && object.contains_key("values_lists")
}

fn inspect_select(select: &Map<String, Value>, facts: &mut Facts) {
    if select.get("locking_clause").is_some_and(non_empty) {
        facts.unnamed(
            StatementClass::Write,
            "locks rows (FOR UPDATE/SHARE)".into(),
        );
    }
    // `SELECT .. INTO t UNION ..` keeps its INTO on the first branch.
    if select.get("into_clause").is_some_and(|v| !v.is_null()) {
        facts.raise_to(StatementClass::Ddl, "SELECT INTO creates a table".into());
    }
}

fn non_empty(value: &Value) -> bool {
    value.as_array().is_some_and(|a| !a.is_empty())
}

fn range_var(object: &Map<String, Value>) -> Option<String> {
    if !object.contains_key("relpersistence") {
        return None;
    }
    let parts: Vec<&str> = ["catalogname", "schemaname", "relname"]
        .iter()
        .filter_map(|k| object.get(*k).and_then(Value::as_str))
        .filter(|s| !s.is_empty())
        .collect();
    (!parts.is_empty()).then(|| parts.join("."))
}

/// Joins a list of `String` nodes (`[{"node":{"String":{"sval":..}}}]`).
fn dotted(list: &Value) -> String {
    let parts: Vec<&str> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.pointer("/node/String/sval").and_then(Value::as_str))
        .collect();
    parts.join(".")
}

fn call(name: &str, funccall: &Map<String, Value>, facts: &mut Facts) {
    if name.rsplit('.').next() == Some("set_config") {
        return set_config(funccall, facts);
    }
    if let Some(class) = side_effect(name) {
        facts.unnamed(class, format!("calls {name}"));
    }
}

/// `set_config(name, value, local)` is `SET` by another name: a write for
/// ordinary settings, admin for the ones `SET` treats as admin, and admin
/// when the name is not a literal we can read. Like `SET`, it may not move
/// the settings the gateway reads queries under.
fn set_config(funccall: &Map<String, Value>, facts: &mut Facts) {
    facts.literal_sensitive = true;
    let arg = |i: usize| {
        funccall
            .get("args")
            .and_then(|a| a.get(i))
            .and_then(string_constant)
    };
    let first = arg(0);
    if let Some(why) = first.and_then(|setting| model::refusal(setting, arg(1))) {
        facts.refuse(why);
    }
    match first {
        Some(setting) if !is_privileged_setting(setting) => {
            facts.unnamed(StatementClass::Write, "calls set_config".into());
        }
        Some(_) => facts.unnamed(
            StatementClass::Admin,
            "calls set_config on a privileged setting".into(),
        ),
        None => facts.unnamed(
            StatementClass::Admin,
            "calls set_config with a setting name that is not a literal".into(),
        ),
    }
}

/// The setting a `SET`, `RESET` or `ALTER ... SET` assigns, recognised by
/// the field only `VariableSetStmt` has; `None` for other nodes.
fn variable_set(object: &Map<String, Value>) -> Option<&str> {
    object.get("jumble_args")?;
    object.get("name").and_then(Value::as_str)
}

/// A `SET name = value` anywhere in a statement (top level, a function's
/// `SET` clause, `ALTER ROLE ... SET`) of a setting the gateway reads
/// queries under is refused unless it keeps that setting's value; going
/// back to the session's own value (`RESET`, `DEFAULT`) is followed.
fn setting_assigned(name: &str, set: &Map<String, Value>, facts: &mut Facts) {
    if !model::is_reading_setting(name) {
        return;
    }
    facts.literal_sensitive = true;
    let assigns_value = set.get("kind").and_then(Value::as_i64) == Some(SET_VALUE);
    if !assigns_value {
        return;
    }
    let value = set
        .get("args")
        .and_then(|a| a.get(0))
        .and_then(string_constant);
    if let Some(why) = model::refusal(name, value) {
        facts.refuse(why);
    }
}

/// `VariableSetKind::VarSetValue`, as the tree serializes it.
const SET_VALUE: i64 = pg_query::protobuf::VariableSetKind::VarSetValue as i64;

/// An `INSERT`, `UPDATE`, `DELETE` or `MERGE` (the nodes with a
/// `returning_clause`) whose target is `pg_settings`, in any schema: its
/// rules turn the write into `set_config` calls the gateway cannot read.
fn writes_pg_settings(object: &Map<String, Value>) -> bool {
    object.contains_key("returning_clause")
        && object
            .get("relation")
            .and_then(|r| r.get("relname"))
            .and_then(Value::as_str)
            == Some("pg_settings")
}

/// The value of a string constant node, also through one cast (`'x'::text`).
fn string_constant(node: &Value) -> Option<&str> {
    node.pointer("/node/AConst/val/Sval/sval")
        .or_else(|| node.pointer("/node/TypeCast/arg/node/AConst/val/Sval/sval"))
        .and_then(Value::as_str)
}

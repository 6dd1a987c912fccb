//! Where a result field comes from: RowDescription gives each field's table
//! OID and column number; the upstream's catalog turns those into
//! `schema.table.column`, so `mask.columns` can match whatever alias or
//! `SELECT *` the query used.
//!
//! Views are followed to their base columns. A view column's RowDescription
//! names the view; the view's stored query (`pg_rewrite.ev_action`, the
//! planner's node tree in text form) records for each output column the
//! table and column it was computed from (`resorigtbl`/`resorigcol`), the
//! same bookkeeping PostgreSQL does for RowDescription itself. A view column
//! that is an expression has no origin and is reported as untraceable.
//!
//! Lookups go over one gateway-owned upstream connection per listener and
//! are cached. The cache is dropped whenever a DDL statement passes through
//! the gateway and after [`CACHE_TTL`], so a renamed column is seen.
//!
//! The same connection answers what `pg_proc` says about the functions a
//! statement calls, so a `SELECT` of a volatile user function is not a read
//! (see `functions`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use portcullis_masking::SourceColumn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::codec::backend::parse_error_fields;
use crate::codec::frontend::encode_query;
use crate::codec::rows::parse_data_row;
use crate::codec::{decode_frame, CodecError, MAX_MESSAGE_LEN};

use super::stream::MaybeTls;
use super::upstream::{self, UpstreamError, UpstreamTarget};

mod functions;
mod syntax;

/// Catalog changes made outside the gateway are seen within this time.
const CACHE_TTL: Duration = Duration::from_secs(300);

/// A lookup that takes longer fails, and its result is masked blind.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Views of views of views... deeper than this are treated as untraceable.
const MAX_VIEW_DEPTH: usize = 8;

/// A field's place in the catalog: (table OID, column number).
pub type FieldOrigin = (u32, i16);

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog connection: {0}")]
    Connect(#[from] UpstreamError),
    #[error("catalog query failed: {0}")]
    Query(String),
    #[error("catalog connection: {0}")]
    Protocol(#[from] CodecError),
    #[error("catalog connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("catalog lookup took longer than {LOOKUP_TIMEOUT:?}")]
    Timeout,
}

/// What one catalog row says about a (table, column).
#[derive(Debug, Clone)]
enum Entry {
    /// A table (or anything that is not a view) column.
    Column(SourceColumn),
    /// A view column computed from this origin, or from nothing traceable.
    ViewOf(Option<FieldOrigin>),
}

#[derive(Default)]
struct Cache {
    entries: HashMap<FieldOrigin, Option<Entry>>,
    /// What a relation or function name reaches (see [`Catalog::reach`]).
    reaches: HashMap<Named, Reach>,
    filled: Option<Instant>,
}

/// A relation or function as a statement names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Named {
    Relation(String),
    Function(String),
}

/// What a statement's relations and functions may read beyond what its
/// text names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    /// Relations read through views (schema-qualified), the views included.
    pub relations: Vec<String>,
    /// A user-defined function is called, directly or inside a view; it
    /// may read anything.
    pub user_functions: bool,
}

impl Reach {
    fn add(&mut self, other: &Reach) {
        self.relations.extend(other.relations.iter().cloned());
        self.user_functions |= other.user_functions;
    }
}

/// The per-listener resolver.
#[derive(Default)]
pub struct Catalog {
    cache: Mutex<Cache>,
    /// What `pg_proc` says about called functions (see `functions`).
    functions: Mutex<functions::FunctionCache>,
    conn: tokio::sync::Mutex<Option<MaybeTls>>,
}

impl Catalog {
    /// Forgets everything (a DDL statement went through).
    pub fn invalidate(&self) {
        if let Ok(mut cache) = self.cache.lock() {
            *cache = Cache::default();
        }
        if let Ok(mut functions) = self.functions.lock() {
            *functions = functions::FunctionCache::default();
        }
    }

    /// The source column of each field (`None`: not a plain table column,
    /// or one the catalog does not know).
    pub async fn resolve(
        &self,
        target: &UpstreamTarget,
        fields: &[FieldOrigin],
    ) -> Result<Vec<Option<SourceColumn>>, CatalogError> {
        let mut wanted: Vec<FieldOrigin> = fields.iter().copied().filter(|f| f.0 != 0).collect();
        for _ in 0..MAX_VIEW_DEPTH {
            let missing = self.missing(&wanted);
            if missing.is_empty() {
                break;
            }
            let fetched = self.fetch(target, &missing).await?;
            let next: Vec<FieldOrigin> = fetched
                .values()
                .filter_map(|e| match e {
                    Some(Entry::ViewOf(Some(origin))) => Some(*origin),
                    _ => None,
                })
                .collect();
            if let Ok(mut cache) = self.cache.lock() {
                cache.filled.get_or_insert_with(Instant::now);
                cache.entries.extend(fetched);
            }
            wanted = next;
        }
        Ok(fields.iter().map(|f| self.follow(*f)).collect())
    }

    /// What `relations` (as a statement names them) read through views,
    /// and whether any of `functions` (base names) or a function inside
    /// those views is user-defined. A name matches in every schema, as
    /// the session's search_path is not known here.
    pub async fn reach(
        &self,
        target: &UpstreamTarget,
        relations: &[String],
        functions: &[String],
    ) -> Result<Reach, CatalogError> {
        let named: Vec<Named> = relations
            .iter()
            .map(|r| Named::Relation(r.clone()))
            .chain(functions.iter().map(|f| Named::Function(f.clone())))
            .collect();
        let missing: Vec<Named> = {
            let mut cache = self.fresh_cache();
            named
                .iter()
                .filter(|n| cache.as_mut().is_none_or(|c| !c.reaches.contains_key(*n)))
                .cloned()
                .collect()
        };
        let mut fetched = HashMap::new();
        if !missing.is_empty() {
            fetched = self.fetch_reach(target, &missing).await?;
            if let Ok(mut cache) = self.cache.lock() {
                cache.filled.get_or_insert_with(Instant::now);
                cache.reaches.extend(fetched.clone());
            }
        }
        let cache = self.cache.lock().ok();
        let mut reach = Reach::default();
        for n in &named {
            match (
                fetched.get(n),
                cache.as_ref().and_then(|c| c.reaches.get(n)),
            ) {
                (Some(r), _) | (None, Some(r)) => reach.add(r),
                // Dropped from the cache meanwhile: not known, so unsafe.
                (None, None) => reach.user_functions = true,
            }
        }
        Ok(reach)
    }

    /// The cache, cleared first if it is stale.
    fn fresh_cache(&self) -> Option<std::sync::MutexGuard<'_, Cache>> {
        let mut cache = self.cache.lock().ok()?;
        if cache.filled.is_some_and(|t| t.elapsed() > CACHE_TTL) {
            *cache = Cache::default();
        }
        Some(cache)
    }

    async fn fetch_reach(
        &self,
        target: &UpstreamTarget,
        named: &[Named],
    ) -> Result<HashMap<Named, Reach>, CatalogError> {
        let rows = self.run(target, &reach_sql(named)).await?;
        let mut found: HashMap<Named, Reach> = named
            .iter()
            .map(|n| (n.clone(), Reach::default()))
            .collect();
        for row in rows {
            let [Some(kind), Some(name), value] = row.as_slice() else {
                continue;
            };
            let (key, relation) = match kind.as_str() {
                "r" => (Named::Relation(name.clone()), value.clone()),
                "v" => (Named::Relation(name.clone()), None),
                _ => (Named::Function(name.clone()), None),
            };
            let Some(reach) = found.get_mut(&key) else {
                continue;
            };
            match relation {
                Some(r) => reach.relations.push(r),
                None => reach.user_functions = true,
            }
        }
        Ok(found)
    }

    /// Origins not in the cache (clearing it first if it is stale).
    fn missing(&self, wanted: &[FieldOrigin]) -> Vec<FieldOrigin> {
        let Some(cache) = self.fresh_cache() else {
            return wanted.to_vec();
        };
        let mut missing: Vec<FieldOrigin> = wanted
            .iter()
            .copied()
            .filter(|f| !cache.entries.contains_key(f))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        missing
    }

    fn follow(&self, mut origin: FieldOrigin) -> Option<SourceColumn> {
        let cache = self.cache.lock().ok()?;
        for _ in 0..MAX_VIEW_DEPTH {
            match cache.entries.get(&origin)?.as_ref()? {
                Entry::Column(source) => return Some(source.clone()),
                Entry::ViewOf(next) => origin = (*next)?,
            }
        }
        None
    }

    async fn fetch(
        &self,
        target: &UpstreamTarget,
        origins: &[FieldOrigin],
    ) -> Result<HashMap<FieldOrigin, Option<Entry>>, CatalogError> {
        let rows = self.run(target, &lookup_sql(origins)).await?;
        let mut found: HashMap<FieldOrigin, Option<Entry>> =
            origins.iter().map(|o| (*o, None)).collect();
        for row in rows {
            if let Some((origin, entry)) = parse_lookup_row(&row) {
                found.insert(origin, Some(entry));
            }
        }
        Ok(found)
    }
}

impl Catalog {
    /// Runs one catalog query over the gateway's own connection.
    async fn run(&self, target: &UpstreamTarget, sql: &str) -> Result<Vec<Row>, CatalogError> {
        let reply = self
            .exchange(target, encode_query(BytesMut::new(), sql))
            .await?;
        match reply.error {
            Some(fields) => Err(CatalogError::Query(
                fields
                    .into_iter()
                    .find_map(|(code, value)| (code == b'M').then_some(value))
                    .unwrap_or_default(),
            )),
            None => Ok(reply.rows),
        }
    }

    /// Sends `request` (messages ending in a Query or a Sync) over the
    /// gateway's own connection, opening it when there is none, and reads
    /// the answer up to ReadyForQuery.
    async fn exchange(
        &self,
        target: &UpstreamTarget,
        request: BytesMut,
    ) -> Result<Reply, CatalogError> {
        let mut conn = self.conn.lock().await;
        let stream = match conn.as_mut() {
            Some(s) => s,
            None => {
                let params = [("application_name".into(), "portcullis-catalog".into())];
                conn.insert(upstream::connect(target, &params).await?.stream)
            }
        };
        let result = tokio::time::timeout(LOOKUP_TIMEOUT, send(stream, &request))
            .await
            .unwrap_or(Err(CatalogError::Timeout));
        if result.is_err() {
            // A broken (or mid-answer) connection is reopened on the next lookup.
            *conn = None;
        }
        result
    }
}

/// What the server answered to one request.
struct Reply {
    rows: Vec<Row>,
    /// The ErrorResponse's fields (code, value), if it failed.
    error: Option<Vec<(u8, String)>>,
}

/// One result row, every value as text.
type Row = Vec<Option<String>>;

/// A string literal that reads the same whatever standard_conforming_strings says.
fn literal(text: &str) -> String {
    format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

/// One query for every unknown name. Rows: (`r`, name, a relation a view
/// of that name reads, the view itself included), (`v`, name) for a view
/// that calls a user-defined function, (`f`, name) for a function name
/// defined outside the system schemas. Views are followed through their
/// rules' recorded dependencies (`pg_depend`), which PostgreSQL keeps for
/// every relation and function a view's query uses.
fn reach_sql(named: &[Named]) -> String {
    const SYSTEM: &str =
        "('pg_catalog'::pg_catalog.regnamespace, 'information_schema'::pg_catalog.regnamespace)";
    let mut relations = vec!["(NULL::text, NULL::text, NULL::text)".to_string()];
    let mut functions = vec!["(NULL::text)".to_string()];
    for n in named {
        match n {
            Named::Relation(r) => {
                let mut parts = r.rsplit('.');
                let rel = parts.next().unwrap_or(r);
                let schema = parts.next().unwrap_or("");
                relations.push(format!(
                    "({}, {}, {})",
                    literal(r),
                    literal(rel),
                    literal(schema)
                ));
            }
            Named::Function(f) => functions.push(format!("({})", literal(f))),
        }
    }
    format!(
        "WITH RECURSIVE reach(name, oid) AS (            SELECT w.name, c.oid FROM (VALUES {relations}) AS w(name, rel, nsp)            JOIN pg_catalog.pg_class c ON c.relname = w.rel AND c.relkind IN ('v', 'm')            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace AND (w.nsp = '' OR n.nspname = w.nsp)          UNION            SELECT reach.name, d.refobjid FROM reach            JOIN pg_catalog.pg_rewrite r ON r.ev_class = reach.oid            JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass              AND d.objid = r.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass)          SELECT 'r', reach.name, n.nspname || '.' || c.relname FROM reach            JOIN pg_catalog.pg_class c ON c.oid = reach.oid            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace          UNION ALL          SELECT 'v', reach.name, NULL FROM reach            JOIN pg_catalog.pg_rewrite r ON r.ev_class = reach.oid            JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass              AND d.objid = r.oid AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass            JOIN pg_catalog.pg_proc p ON p.oid = d.refobjid WHERE p.pronamespace NOT IN {SYSTEM}          UNION ALL          SELECT 'f', w.name, NULL FROM (VALUES {functions}) AS w(name)            WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_proc p WHERE p.proname = w.name              AND p.pronamespace NOT IN {SYSTEM})",
        relations = relations.join(", "),
        functions = functions.join(", "),
    )
}

/// One query for every unknown origin. The values are integers we format
/// ourselves, so there is nothing to quote.
fn lookup_sql(origins: &[FieldOrigin]) -> String {
    let pairs: Vec<String> = origins
        .iter()
        .map(|(table, column)| format!("({table}::oid,{column}::int2)"))
        .collect();
    format!(
        "SELECT c.oid::int8, a.attnum, n.nspname, c.relname, a.attname, c.relkind, \
         CASE WHEN c.relkind IN ('v','m') THEN (SELECT r.ev_action::text FROM pg_catalog.pg_rewrite r \
           WHERE r.ev_class = c.oid AND r.rulename = '_RETURN') END \
         FROM pg_catalog.pg_attribute a \
         JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE (a.attrelid, a.attnum) IN ({})",
        pairs.join(",")
    )
}

fn parse_lookup_row(row: &[Option<String>]) -> Option<(FieldOrigin, Entry)> {
    let [oid, attnum, schema, table, column, relkind, view_query] = row else {
        return None;
    };
    let origin: FieldOrigin = (oid.as_ref()?.parse().ok()?, attnum.as_ref()?.parse().ok()?);
    let entry = match (relkind.as_deref(), view_query) {
        (Some("v" | "m"), Some(tree)) => Entry::ViewOf(
            view_column_origins(tree)
                .into_iter()
                .find(|o| o.resno == origin.1)
                .and_then(|o| o.origin),
        ),
        // A view without its rule cannot be traced.
        (Some("v" | "m"), None) => Entry::ViewOf(None),
        _ => Entry::Column(SourceColumn {
            schema: schema.clone()?,
            table: table.clone()?,
            column: column.clone()?,
        }),
    };
    Some((origin, entry))
}

/// Writes `request` and collects the rows and the error of its answer.
async fn send(stream: &mut MaybeTls, request: &[u8]) -> Result<Reply, CatalogError> {
    stream.write_all(request).await?;
    let mut buf = BytesMut::with_capacity(8192);
    let mut reply = Reply {
        rows: Vec::new(),
        error: None,
    };
    loop {
        while let Some(frame) = decode_frame(&mut buf, MAX_MESSAGE_LEN)? {
            match frame.tag {
                b'D' => reply.rows.push(
                    parse_data_row(&frame.body)?
                        .into_iter()
                        .map(|v| v.map(|b| String::from_utf8_lossy(b).into_owned()))
                        .collect(),
                ),
                b'E' => {
                    let fields = parse_error_fields(&frame.body)?;
                    reply.error =
                        Some(fields.into_iter().map(|(c, v)| (c, v.to_owned())).collect());
                }
                b'Z' => return Ok(reply),
                _ => {}
            }
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(CatalogError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}

/// One output column of a view's stored query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ViewColumn {
    pub resno: i16,
    /// The table column it is a copy of; `None` for expressions.
    pub origin: Option<FieldOrigin>,
}

/// Reads the output columns of the top-level query in a `pg_node_tree`
/// text (`({QUERY ... :targetList ({TARGETENTRY ... :resno 1 ...
/// :resorigtbl 16384 :resorigcol 3 :resjunk false} ...) ...})`). Target
/// entries of sub-queries sit deeper in the tree and are skipped by depth.
pub(crate) fn view_column_origins(tree: &str) -> Vec<ViewColumn> {
    let tokens = tokenize(tree);
    // The first QUERY node is the view's query; its fields sit one level
    // inside its brace.
    let Some(query_at) = tokens.iter().position(|t| t.text == "QUERY") else {
        return Vec::new();
    };
    let field_depth = tokens[query_at].depth;
    let Some(list_at) = tokens[query_at..]
        .iter()
        .position(|t| t.text == ":targetList" && t.depth == field_depth)
        .map(|i| i + query_at)
    else {
        return Vec::new();
    };
    let mut columns = Vec::new();
    // The list's entries open at depth field_depth + 1 (inside the
    // parenthesis), so their own fields sit at field_depth + 2.
    let entry_depth = field_depth + 2;
    let mut current: HashMap<&str, &str> = HashMap::new();
    let mut i = list_at + 1;
    while let Some(t) = tokens.get(i) {
        if t.depth <= field_depth {
            break;
        }
        if t.text == "TARGETENTRY" && t.depth == entry_depth {
            flush_entry(&mut current, &mut columns);
        } else if t.depth == entry_depth && t.text.starts_with(':') {
            if let Some(value) = tokens.get(i + 1) {
                current.insert(t.text, value.text);
            }
        }
        i += 1;
    }
    flush_entry(&mut current, &mut columns);
    columns
}

fn flush_entry(fields: &mut HashMap<&str, &str>, out: &mut Vec<ViewColumn>) {
    let parsed = (|| {
        if fields.get(":resjunk") == Some(&"true") {
            return None;
        }
        let resno = fields.get(":resno")?.parse().ok()?;
        let table: u32 = fields.get(":resorigtbl")?.parse().ok()?;
        let column: i16 = fields.get(":resorigcol")?.parse().ok()?;
        Some(ViewColumn {
            resno,
            origin: (table != 0).then_some((table, column)),
        })
    })();
    out.extend(parsed);
    fields.clear();
}

struct Token<'a> {
    text: &'a str,
    /// Open braces and parentheses enclosing the token.
    depth: usize,
}

/// Splits a node tree into tokens: `{ } ( )` stand alone, anything else
/// runs to whitespace or a bracket; a backslash escapes the next byte
/// (identifiers with spaces or brackets are written that way).
fn tokenize(tree: &str) -> Vec<Token<'_>> {
    let b = tree.as_bytes();
    let mut tokens = Vec::new();
    let (mut i, mut depth) = (0, 0usize);
    while i < b.len() {
        match b[i] {
            b'{' | b'(' => {
                depth += 1;
                i += 1;
            }
            b'}' | b')' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            c if c.is_ascii_whitespace() => i += 1,
            _ => {
                let start = i;
                while i < b.len() && !b" \t\n\r{}()".contains(&b[i]) {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                let end = i.min(b.len());
                // Escapes are ASCII, so the cut is on a char boundary unless
                // the text ends in a lone backslash before a multibyte char.
                if let Some(text) = tree.get(start..end) {
                    tokens.push(Token { text, depth });
                }
            }
        }
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real `pg_rewrite.ev_action` texts from PostgreSQL 15:
    //   customers(id int, name text, email text, card text)   -- OID 16384
    //   v1 = SELECT id, email AS mail, upper(name) AS uname, (SELECT 1) AS one
    //        FROM customers WHERE card IS NOT NULL             -- OID 16391
    //   v2 = SELECT c.mail, x.email FROM v1 c JOIN customers x ON x.id = c.id
    const VIEW_OVER_TABLE: &str = include_str!("catalog/testdata/view_over_table.node");
    const VIEW_OVER_VIEW: &str = include_str!("catalog/testdata/view_over_view.node");

    fn column(resno: i16, origin: Option<FieldOrigin>) -> ViewColumn {
        ViewColumn { resno, origin }
    }

    #[test]
    fn view_columns_map_to_base_columns_and_expressions_to_nothing() {
        assert_eq!(
            view_column_origins(VIEW_OVER_TABLE),
            vec![
                column(1, Some((16384, 1))),
                column(2, Some((16384, 3))),
                column(3, None),
                // The scalar sub-query has its own target list, deeper in
                // the tree; it must not be read as a column of the view.
                column(4, None),
            ]
        );
    }

    #[test]
    fn views_of_views_point_at_the_inner_view() {
        assert_eq!(
            view_column_origins(VIEW_OVER_VIEW),
            vec![column(1, Some((16391, 2))), column(2, Some((16384, 3)))]
        );
    }

    #[test]
    fn garbage_yields_no_columns_rather_than_wrong_ones() {
        for tree in [
            "",
            "<>",
            "({QUERY :targetList <>})",
            "({QUERY",
            "\\",
            "{{{{",
            ")))",
        ] {
            assert_eq!(view_column_origins(tree), vec![], "{tree:?}");
        }
        let truncated = &VIEW_OVER_TABLE[..VIEW_OVER_TABLE.len() / 2];
        assert!(view_column_origins(truncated)
            .iter()
            .all(|c| c.origin.is_none_or(|o| o.0 == 16384)));
    }

    #[test]
    fn escaped_brackets_in_names_do_not_change_depth() {
        let tree = "({QUERY :rtable ({RANGETBLENTRY :eref {ALIAS :aliasname a\\)b\\{c}}) \
                    :targetList ({TARGETENTRY :expr {VAR :varno 1} :resno 1 :resname x\\ \\(y \
                    :ressortgroupref 0 :resorigtbl 5 :resorigcol 2 :resjunk false})})";
        assert_eq!(view_column_origins(tree), vec![column(1, Some((5, 2)))]);
    }

    #[test]
    fn resolving_walks_view_chains_in_the_cache() {
        let catalog = Catalog::default();
        let base = SourceColumn {
            schema: "public".into(),
            table: "customers".into(),
            column: "email".into(),
        };
        {
            let mut cache = catalog.cache.lock().unwrap();
            cache
                .entries
                .insert((1, 1), Some(Entry::Column(base.clone())));
            cache
                .entries
                .insert((2, 1), Some(Entry::ViewOf(Some((1, 1)))));
            cache
                .entries
                .insert((3, 5), Some(Entry::ViewOf(Some((2, 1)))));
            cache.entries.insert((3, 6), Some(Entry::ViewOf(None)));
            cache
                .entries
                .insert((4, 1), Some(Entry::ViewOf(Some((4, 1)))));
        }
        assert_eq!(catalog.follow((3, 5)), Some(base.clone()));
        assert_eq!(catalog.follow((3, 6)), None);
        assert_eq!(catalog.follow((9, 9)), None);
        // A cycle (cannot happen in PostgreSQL) ends, untraced.
        assert_eq!(catalog.follow((4, 1)), None);
        assert!(catalog.missing(&[(1, 1), (9, 9), (9, 9)]) == vec![(9, 9)]);
        catalog.invalidate();
        assert_eq!(catalog.follow((1, 1)), None);
    }

    #[test]
    fn lookup_rows_parse_tables_and_views() {
        let s = |v: &str| Some(v.to_string());
        let table = [
            s("16384"),
            s("3"),
            s("public"),
            s("customers"),
            s("email"),
            s("r"),
            None,
        ];
        let (origin, entry) = parse_lookup_row(&table).unwrap();
        assert_eq!(origin, (16384, 3));
        assert!(matches!(entry, Entry::Column(c) if c.column == "email"));
        let view = [
            s("16391"),
            s("2"),
            s("public"),
            s("v1"),
            s("mail"),
            s("v"),
            s(VIEW_OVER_TABLE),
        ];
        let (_, entry) = parse_lookup_row(&view).unwrap();
        assert!(matches!(entry, Entry::ViewOf(Some((16384, 3)))));
        assert!(parse_lookup_row(&table[..3]).is_none());
    }
}

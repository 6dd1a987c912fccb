use super::StatementClass::{self, Admin, Ddl, Read, Session, Write};
use super::*;

fn one(sql: &str) -> Statement {
    let mut c = classify(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    assert_eq!(c.statements.len(), 1, "{sql}");
    c.statements.remove(0)
}

/// (statement, class, command tag)
const TABLE: &[(&str, StatementClass, &str)] = &[
    // Reads.
    ("SELECT 1", Read, "SELECT"),
    ("VALUES (1), (2)", Read, "SELECT"),
    (
        "SELECT * FROM orders WHERE id = 42 ORDER BY 1",
        Read,
        "SELECT",
    ),
    (
        "SELECT lower(name), count(*) FROM t GROUP BY 1",
        Read,
        "SELECT",
    ),
    ("COPY t TO STDOUT", Read, "COPY TO"),
    (
        "COPY (SELECT 1) TO STDOUT WITH (FORMAT csv)",
        Read,
        "COPY TO",
    ),
    ("EXPLAIN SELECT 1", Read, "EXPLAIN SELECT"),
    ("PREPARE q AS SELECT 1", Read, "PREPARE SELECT"),
    (
        "DECLARE c CURSOR FOR SELECT * FROM t",
        Read,
        "DECLARE SELECT",
    ),
    ("FETCH 10 FROM c", Read, "FETCH"),
    // Writes.
    ("INSERT INTO t VALUES (1)", Write, "INSERT"),
    ("UPDATE t SET a = 1", Write, "UPDATE"),
    ("DELETE FROM t", Write, "DELETE"),
    (
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
        Write,
        "MERGE",
    ),
    ("SELECT * FROM t FOR UPDATE", Write, "SELECT"),
    (
        "SELECT * FROM (SELECT * FROM t FOR SHARE) s",
        Write,
        "SELECT",
    ),
    (
        "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        Write,
        "SELECT",
    ),
    ("COPY t FROM STDIN", Write, "COPY FROM"),
    (
        "COPY (DELETE FROM t RETURNING *) TO STDOUT",
        Write,
        "COPY TO",
    ),
    ("EXPLAIN ANALYZE DELETE FROM t", Write, "EXPLAIN DELETE"),
    (
        "PREPARE q (int) AS DELETE FROM t WHERE id = $1",
        Write,
        "PREPARE DELETE",
    ),
    ("EXECUTE q(1)", Write, "EXECUTE"),
    ("NOTIFY ch", Write, "NOTIFY"),
    ("CALL p()", Write, "CALL"),
    ("LOCK TABLE t", Write, "LOCK TABLE"),
    ("SELECT nextval('seq')", Write, "SELECT"),
    ("SELECT setval('seq', 1)", Write, "SELECT"),
    ("SELECT pg_advisory_lock(1)", Write, "SELECT"),
    ("SELECT pg_advisory_unlock_all()", Write, "SELECT"),
    ("SELECT txid_current()", Write, "SELECT"),
    ("SELECT pg_catalog.pg_current_xact_id()", Write, "SELECT"),
    ("SELECT pg_current_xact_id_if_assigned()", Read, "SELECT"),
    ("SELECT pg_read_file_old('f', 0, 1)", Admin, "SELECT"),
    ("SELECT pg_file_write('f', 'x', false)", Admin, "SELECT"),
    ("SELECT pg_rotate_logfile_old()", Admin, "SELECT"),
    ("SELECT pg_hba_file_rules()", Admin, "SELECT"),
    ("SELECT pg_drop_replication_slot('s')", Admin, "SELECT"),
    ("SELECT pg_notify('c', 'x')", Write, "SELECT"),
    ("SELECT lo_unlink(1)", Write, "SELECT"),
    (
        "SELECT set_config('search_path', 'x', false)",
        Write,
        "SELECT",
    ),
    // Schema changes.
    ("CREATE TABLE t (id int)", Ddl, "CREATE TABLE"),
    ("ALTER TABLE t ADD COLUMN x int", Ddl, "ALTER TABLE"),
    ("ALTER TABLE t RENAME TO u", Ddl, "ALTER TABLE"),
    ("DROP TABLE t", Ddl, "DROP TABLE"),
    ("DROP VIEW IF EXISTS v", Ddl, "DROP VIEW"),
    ("DROP MATERIALIZED VIEW mv", Ddl, "DROP MATERIALIZED VIEW"),
    ("CREATE INDEX i ON t (a)", Ddl, "CREATE INDEX"),
    ("CREATE VIEW v AS SELECT 1", Ddl, "CREATE VIEW"),
    ("TRUNCATE t", Ddl, "TRUNCATE"),
    (
        "REFRESH MATERIALIZED VIEW mv",
        Ddl,
        "REFRESH MATERIALIZED VIEW",
    ),
    ("COMMENT ON TABLE t IS 'x'", Ddl, "COMMENT ON TABLE"),
    (
        "CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql",
        Ddl,
        "CREATE FUNCTION",
    ),
    ("CREATE TABLE t2 AS SELECT * FROM t", Ddl, "CREATE TABLE AS"),
    (
        "CREATE MATERIALIZED VIEW mv AS SELECT 1",
        Ddl,
        "CREATE MATERIALIZED VIEW",
    ),
    ("CREATE SEQUENCE s", Ddl, "CREATE SEQUENCE"),
    ("CREATE TYPE mood AS ENUM ('a', 'b')", Ddl, "CREATE TYPE"),
    ("CREATE SCHEMA s", Ddl, "CREATE SCHEMA"),
    (
        "CREATE SCHEMA s CREATE TABLE t (a int) CREATE VIEW v AS SELECT 1",
        Ddl,
        "CREATE SCHEMA",
    ),
    (
        "CREATE SCHEMA s CREATE TABLE t (a int) GRANT SELECT ON t TO bob",
        Admin,
        "CREATE SCHEMA",
    ),
    ("SELECT a INTO new_t FROM t", Ddl, "SELECT INTO"),
    ("SELECT 1 AS a INTO t UNION SELECT 2", Ddl, "SELECT"),
    // Administration.
    ("GRANT SELECT ON t TO bob", Admin, "GRANT"),
    ("REVOKE SELECT ON t FROM bob", Admin, "REVOKE"),
    ("GRANT admins TO bob", Admin, "GRANT ROLE"),
    ("CREATE ROLE bob", Admin, "CREATE ROLE"),
    ("ALTER ROLE bob SUPERUSER", Admin, "ALTER ROLE"),
    ("DROP ROLE bob", Admin, "DROP ROLE"),
    ("ALTER SYSTEM SET work_mem = '1GB'", Admin, "ALTER SYSTEM"),
    ("VACUUM t", Admin, "VACUUM"),
    ("ANALYZE t", Admin, "ANALYZE"),
    ("CHECKPOINT", Admin, "CHECKPOINT"),
    ("LOAD 'auto_explain'", Admin, "LOAD"),
    ("DO $$ BEGIN PERFORM 1; END $$", Admin, "DO"),
    ("CREATE EXTENSION dblink", Admin, "CREATE EXTENSION"),
    ("DROP EXTENSION dblink", Admin, "DROP EXTENSION"),
    ("CREATE DATABASE d", Admin, "CREATE DATABASE"),
    ("DROP DATABASE d", Admin, "DROP DATABASE"),
    ("CREATE POLICY p ON t USING (true)", Admin, "CREATE POLICY"),
    (
        "ALTER TABLE t ENABLE ROW LEVEL SECURITY",
        Admin,
        "ALTER TABLE",
    ),
    ("ALTER TABLE t OWNER TO bob", Admin, "ALTER TABLE"),
    ("REINDEX TABLE t", Admin, "REINDEX"),
    ("COMMIT PREPARED 'x'", Admin, "COMMIT PREPARED"),
    ("COPY t FROM '/etc/passwd'", Admin, "COPY FROM"),
    ("COPY t TO '/tmp/out'", Admin, "COPY TO"),
    ("COPY t FROM PROGRAM 'curl evil'", Admin, "COPY FROM"),
    ("COPY (SELECT 1) TO PROGRAM 'sh'", Admin, "COPY TO"),
    ("SET ROLE postgres", Admin, "SET"),
    ("SET SESSION AUTHORIZATION postgres", Admin, "SET"),
    ("RESET ROLE", Admin, "RESET"),
    ("SET \"Role\" = postgres", Admin, "SET"),
    ("SET backslash_quote = on", Admin, "SET"),
    (
        "UPDATE pg_settings SET setting = 'off' WHERE name = 'work_mem'",
        Admin,
        "UPDATE",
    ),
    (
        "WITH u AS (UPDATE pg_catalog.pg_settings SET setting = 'x' RETURNING 1) SELECT * FROM u",
        Admin,
        "SELECT",
    ),
    ("DELETE FROM \"pg_settings\"", Admin, "DELETE"),
    (
        "ALTER ROLE me SET client_encoding = 'UTF8'",
        Admin,
        "ALTER ROLE SET",
    ),
    ("SELECT pg_terminate_backend(123)", Admin, "SELECT"),
    ("SELECT pg_cancel_backend(1)", Admin, "SELECT"),
    ("SELECT pg_reload_conf()", Admin, "SELECT"),
    ("SELECT * FROM pg_read_file('/etc/passwd')", Admin, "SELECT"),
    ("SELECT lo_import('/etc/passwd')", Admin, "SELECT"),
    ("SELECT lo_export(1, '/tmp/x')", Admin, "SELECT"),
    (
        "SELECT * FROM dblink('host=x', 'select 1') AS t(a int)",
        Admin,
        "SELECT",
    ),
    (
        "SELECT query_to_xml('delete from t returning 1', true, true, '')",
        Admin,
        "SELECT",
    ),
    (
        "SELECT pg_create_logical_replication_slot('s', 'pgoutput')",
        Admin,
        "SELECT",
    ),
    (
        "SELECT set_config('role', 'postgres', false)",
        Admin,
        "SELECT",
    ),
    ("SELECT set_config($1, 'x', false)", Admin, "SELECT"),
    (
        "SELECT 1 LIMIT (SELECT pg_terminate_backend(1))::int",
        Admin,
        "SELECT",
    ),
    (
        "SELECT * FROM t WHERE id IN (SELECT pg_cancel_backend(pid) FROM pg_stat_activity)",
        Admin,
        "SELECT",
    ),
    (
        "WITH x AS (SELECT pg_terminate_backend(1)) SELECT * FROM x",
        Admin,
        "SELECT",
    ),
    (
        "SELECT CAST(pg_catalog.pg_terminate_backend(1) AS text)",
        Admin,
        "SELECT",
    ),
    (
        "SELECT CASE WHEN true THEN pg_promote() END",
        Admin,
        "SELECT",
    ),
    (
        "INSERT INTO t SELECT pg_terminate_backend(1)",
        Admin,
        "INSERT",
    ),
    (
        "EXPLAIN ANALYZE SELECT pg_terminate_backend(1)",
        Admin,
        "EXPLAIN SELECT",
    ),
    // Session.
    ("BEGIN", Session, "BEGIN"),
    (
        "START TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        Session,
        "START TRANSACTION",
    ),
    ("COMMIT", Session, "COMMIT"),
    ("ROLLBACK", Session, "ROLLBACK"),
    ("SAVEPOINT s", Session, "SAVEPOINT"),
    ("RELEASE SAVEPOINT s", Session, "RELEASE"),
    ("ROLLBACK TO SAVEPOINT s", Session, "ROLLBACK TO SAVEPOINT"),
    ("SET search_path = public", Session, "SET"),
    ("SET LOCAL statement_timeout = '5s'", Session, "SET"),
    ("SET TRANSACTION READ ONLY", Session, "SET"),
    ("SET client_encoding = 'UTF8'", Session, "SET"),
    ("SET NAMES 'utf-8'", Session, "SET"),
    ("RESET client_encoding", Session, "RESET"),
    ("SET client_encoding TO DEFAULT", Session, "SET"),
    (
        "SET LOCAL standard_conforming_strings TO on",
        Session,
        "SET",
    ),
    ("RESET standard_conforming_strings", Session, "RESET"),
    ("RESET ALL", Session, "RESET"),
    ("SHOW work_mem", Session, "SHOW"),
    ("DISCARD ALL", Session, "DISCARD"),
    ("DEALLOCATE ALL", Session, "DEALLOCATE"),
    ("LISTEN ch", Session, "LISTEN"),
    ("UNLISTEN *", Session, "UNLISTEN"),
    ("CLOSE c", Session, "CLOSE"),
];

#[test]
fn classification_table() {
    let mut failures = Vec::new();
    for (sql, class, command) in TABLE {
        match classify(sql) {
            Ok(c) if c.statements.len() == 1 => {
                let s = &c.statements[0];
                if s.class != *class || s.command != *command {
                    failures.push(format!(
                        "{sql}: got {} {:?} (why {:?}), want {class} {command:?}",
                        s.class, s.command, s.why
                    ));
                }
            }
            other => failures.push(format!("{sql}: {other:?}")),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn raised_classes_say_why() {
    assert_eq!(
        one("SELECT pg_terminate_backend(pid) FROM pg_stat_activity")
            .why
            .as_deref(),
        Some("calls pg_terminate_backend")
    );
    assert_eq!(
        one("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d")
            .why
            .as_deref(),
        Some("contains a data-modifying DELETE")
    );
    assert!(one("COPY t FROM PROGRAM 'x'")
        .why
        .unwrap()
        .contains("PROGRAM"));
    assert!(one("SET ROLE postgres").why.unwrap().contains("role"));
    // Not raised: the command itself is what it is.
    assert_eq!(one("DELETE FROM t").why, None);
    assert_eq!(one("GRANT SELECT ON t TO bob").why, None);
    // The strongest raise names its cause.
    assert_eq!(
        one("SELECT nextval('s'), pg_reload_conf()").why.as_deref(),
        Some("calls pg_reload_conf")
    );
}

/// Statements that would make the server read queries differently from
/// the gateway: refused for every principal, wherever the change hides.
const MOVES_HOW_QUERIES_ARE_READ: &[&str] = &[
    "SET client_encoding = 'SJIS'",
    "SET NAMES 'GBK'",
    "set LOCAL CLIENT_ENCODING to sjis",
    "SET client_encoding = 932",
    "SET standard_conforming_strings = off",
    "SET standard_conforming_strings TO 'false'",
    "SET SESSION standard_conforming_strings = of",
    "SELECT set_config('client_encoding', 'SJIS', false)",
    "SELECT pg_catalog.set_config('Client_Encoding', 'BIG5', true)",
    "SELECT * FROM pg_catalog.set_config('standard_conforming_strings', 'off', false)",
    "SELECT 1 WHERE (SELECT set_config('client_encoding', $1, false)) IS NOT NULL",
    "WITH s AS (SELECT \"set_config\"('client_encoding', 'SJIS'::text, false)) SELECT * FROM s",
    "SELECT 1; SET client_encoding = 'LATIN1'",
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql SET client_encoding = 'SJIS' AS 'SELECT 1'",
    "ALTER ROLE me SET standard_conforming_strings = off",
    "ALTER DATABASE app SET client_encoding = 'EUC_JP'",
];

#[test]
fn changes_to_how_the_server_reads_queries_are_refused() {
    for sql in MOVES_HOW_QUERIES_ARE_READ {
        match classify(sql) {
            Err(ClassifyError::Unsupported(why)) => assert!(
                why.contains("client_encoding") || why.contains("standard_conforming_strings"),
                "{sql}: {why}"
            ),
            other => panic!("{sql}: {other:?}"),
        }
    }
}

#[test]
fn multi_statement_queries_are_split_and_each_classified() {
    let c = classify("BEGIN; DELETE FROM t WHERE id = 7; SELECT 1;COMMIT").unwrap();
    let got: Vec<_> = c
        .statements
        .iter()
        .map(|s| (s.class, s.command.as_str(), s.normalized.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (Session, "BEGIN", "BEGIN"),
            (Write, "DELETE", "DELETE FROM t WHERE id = ?"),
            (Read, "SELECT", "SELECT ?"),
            (Session, "COMMIT", "COMMIT"),
        ]
    );
    assert_eq!(c.class(), Some(Write));
}

#[test]
fn empty_queries_have_no_statements() {
    for sql in ["", "   \n\t", "-- nothing", "/* nothing */", ";", " ; ; "] {
        let c = classify(sql).unwrap();
        assert!(c.statements.is_empty(), "{sql:?}");
        assert_eq!(c.class(), None);
    }
}

#[test]
fn syntax_errors_are_errors() {
    for sql in [
        "SELEC 1",
        "SELECT 'unterminated",
        "SELECT * FROM",
        "DROP",
        "SELECT 1; DELET FROM t",
    ] {
        assert!(
            matches!(classify(sql), Err(ClassifyError::Syntax(_))),
            "{sql}"
        );
    }
    assert!(matches!(
        classify("SELECT 1\0"),
        Err(ClassifyError::Unreadable(_))
    ));
    let message = classify("SELEC 1").unwrap_err().to_string();
    assert_eq!(
        message,
        "syntax error at or near \"SELEC\" (at character 1)"
    );
}

fn chain(terms: usize, operator: &str) -> String {
    format!("SELECT 1{}", format!(" {operator} 1").repeat(terms))
}

fn nested_subqueries(depth: usize) -> String {
    format!("SELECT {}1{}", "(SELECT ".repeat(depth), ")".repeat(depth))
}

#[test]
fn long_operator_chains_are_classified() {
    // 60 terms were refused as unreadable (prost's 100-level decode limit); 4,900 overflowed
    // the calling thread's stack and aborted the process.
    for terms in [60, 200, 1_000, 4_900] {
        for operator in ["+", "||", "AND"] {
            let sql = chain(terms, operator);
            let c = classify(&sql).unwrap_or_else(|e| panic!("{terms} {operator}: {e}"));
            assert_eq!(c.class(), Some(Read), "{terms} {operator}");
        }
    }
}

#[test]
fn statements_deeper_than_the_parser_allows_are_too_complex() {
    // PostgreSQL 15 with its default max_stack_depth refuses chains from about 4,980 terms.
    for sql in [chain(5_000, "+"), chain(20_000, "+"), chain(100_000, "||")] {
        match classify(&sql) {
            Err(ClassifyError::TooComplex(_)) => {}
            other => panic!("{}: {other:?}", &sql[..20]),
        }
    }
}

#[test]
fn deep_parentheses_get_postgres_own_error() {
    let sql = format!("SELECT {}1{}", "(".repeat(50_000), ")".repeat(50_000));
    let Err(ClassifyError::Syntax(e)) = classify(&sql) else {
        panic!("not refused as PostgreSQL refuses it");
    };
    assert_eq!(e.message, "memory exhausted at or near \"(\"");
    assert!(e.position.is_some());
}

#[test]
fn deeply_nested_subqueries_are_classified_or_refused() {
    for depth in [100, 1_000] {
        let c = classify(&nested_subqueries(depth)).unwrap_or_else(|e| panic!("{depth}: {e}"));
        assert_eq!(c.class(), Some(Read));
    }
    assert!(matches!(
        classify(&nested_subqueries(5_000)),
        Err(ClassifyError::Syntax(_) | ClassifyError::TooComplex(_))
    ));
}

#[test]
fn many_megabyte_literals_are_classified() {
    let sql = format!("SELECT '{}' FROM t", "x".repeat(8 << 20));
    assert_eq!(classify(&sql).unwrap().class(), Some(Read));
    let insert = format!("INSERT INTO t VALUES ('{}')", "y".repeat(8 << 20));
    assert_eq!(classify(&insert).unwrap().class(), Some(Write));
}

#[test]
fn the_cache_answers_without_parsing_only_what_it_holds() {
    let classifier = Classifier::new(100);
    assert!(classifier.cached("SELECT 1").is_none());
    let parsed = classifier.classify("SELECT 1").unwrap();
    assert_eq!(classifier.cached("SELECT 2"), Some(parsed));
}

#[test]
fn relations_are_listed_as_written_without_ctes() {
    assert_eq!(
        one("SELECT * FROM public.orders o JOIN customers c ON o.cid = c.id").relations,
        vec!["public.orders", "customers"]
    );
    assert_eq!(
        one("WITH x AS (SELECT 1) SELECT * FROM x, t").relations,
        vec!["t"]
    );
    assert_eq!(one("DROP TABLE a.b, c").relations, vec!["a.b", "c"]);
    assert_eq!(
        one("INSERT INTO audit SELECT * FROM events WHERE id IN (SELECT id FROM flagged)")
            .relations,
        vec!["audit", "events", "flagged"]
    );
    assert_eq!(
        one("DELETE FROM t USING u WHERE t.id = u.id").relations,
        vec!["t", "u"]
    );
    assert_eq!(
        one("SELECT * FROM \"Mixed\".\"Case\"").relations,
        vec!["Mixed.Case"]
    );
}

#[test]
fn reads_name_every_referenced_column_and_whole_row_reference() {
    let reads = |sql: &str| one(sql).reads;
    let r = reads("SELECT lower(c.email), n FROM customers c WHERE c.id = 1 AND email <> ''");
    assert_eq!(r.columns, vec!["email", "id", "n"]);
    assert!(!r.whole_rows);
    assert!(
        reads("SELECT x.e FROM (SELECT email AS e FROM customers) x")
            .columns
            .contains(&"email".to_string())
    );
    for whole in [
        "SELECT * FROM customers",
        "SELECT c FROM customers c",
        "SELECT customers FROM customers",
        "SELECT public.customers FROM public.customers",
        "SELECT row_to_json(c) FROM customers c",
        "SELECT to_jsonb(c.*) FROM customers c",
        "SELECT (c).email FROM customers c",
        "SELECT lower(x.e) FROM customers x(i, n, e)",
        "WITH w AS (SELECT 1) SELECT w FROM w",
        "SELECT count(t) FROM (SELECT 1) t",
    ] {
        assert!(reads(whole).whole_rows, "{whole}");
    }
    for not_whole in [
        "SELECT count(*) FROM customers",
        "SELECT name FROM customers c",
    ] {
        assert!(!reads(not_whole).whole_rows, "{not_whole}");
    }
}

#[test]
fn functions_are_listed_in_text_order() {
    assert_eq!(
        one("SELECT lower(name), pg_catalog.now() FROM t WHERE upper(x) = 'A'").functions,
        vec!["lower", "pg_catalog.now", "upper"]
    );
    assert_eq!(one("CALL app.refresh(1)").functions, vec!["app.refresh"]);
}

#[test]
fn classes_order_and_serialize_lowercase() {
    assert!(Session < Read && Read < Write && Write < Ddl && Ddl < Admin);
    assert_eq!(Ddl.to_string(), "ddl");
    assert_eq!(serde_json::to_string(&Admin).unwrap(), "\"admin\"");
    assert_eq!(StatementClass::from_name(" WRITE "), Some(Write));
    assert_eq!(StatementClass::from_name("writes"), None);
}

// ---- the normalizer ----

#[test]
fn normalize_replaces_every_literal_form() {
    let cases = [
        ("SELECT 'abc', 'it''s'", "SELECT ?, ?"),
        (r"SELECT E'a\'b', e'\\'", "SELECT ?, ?"),
        (
            r"SELECT U&'d\0061t', u&'x' UESCAPE '!'",
            "SELECT ?, ? UESCAPE ?",
        ),
        ("SELECT B'101', b'0', X'FF', x'00'", "SELECT ?, ?, ?, ?"),
        ("SELECT N'national'", "SELECT N?"),
        ("SELECT $$dollar 'quoted'$$", "SELECT ?"),
        ("SELECT $tag$ has $$ and $other$ inside $tag$", "SELECT ?"),
        ("SELECT $_$x$_$", "SELECT ?"),
        ("SELECT 'a'\n  'b', 1", "SELECT ?, ?"),
        (
            "SELECT 1, 1.5, .5, 5., 1e10, 1.5E-3, 2e+4",
            "SELECT ?, ?, ?, ?, ?, ?, ?",
        ),
        (
            "SELECT 0x1F, 0o17, 0b101, 1_000_000, 0x_FF",
            "SELECT ?, ?, ?, ?, ?",
        ),
        ("SELECT -1, +2", "SELECT -?, +?"),
        ("SELECT a[1:2], 1..2", "SELECT a[?:?], ?..?"),
    ];
    for (sql, want) in cases {
        assert_eq!(normalize(sql).as_deref(), Some(want), "{sql}");
    }
}

#[test]
fn normalize_keeps_identifiers_parameters_and_operators() {
    let cases = [
        (
            "SELECT $1, $2::int FROM t WHERE a = $10",
            "SELECT $1, $2::int FROM t WHERE a = $10",
        ),
        ("SELECT a$b$, c$ FROM t$1", "SELECT a$b$, c$ FROM t$1"),
        (
            "SELECT \"it's\", \"a\"\"b\" FROM \"T\"",
            "SELECT \"it's\", \"a\"\"b\" FROM \"T\"",
        ),
        ("SELECT U&\"d\\0061t\"", "SELECT U&\"d\\0061t\""),
        ("SELECT \"a  b\"   FROM t", "SELECT \"a  b\" FROM t"),
        (
            "SELECT e1, x2, b_3, n4 FROM t",
            "SELECT e1, x2, b_3, n4 FROM t",
        ),
        ("SELECT a+b, a + b, a<>b", "SELECT a+b, a + b, a<>b"),
        ("SELECT ü'x' FROM tä", "SELECT ü? FROM tä"),
    ];
    for (sql, want) in cases {
        assert_eq!(normalize(sql).as_deref(), Some(want), "{sql}");
    }
}

#[test]
fn normalize_drops_comments_and_collapses_whitespace() {
    let cases = [
        ("SELECT /* a /* nested */ b */ 1 -- tail", "SELECT ?"),
        ("SELECT/**/1", "SELECT ?"),
        ("SELECT a/**/b", "SELECT a b"),
        ("  SELECT\n\t 1\r\n", "SELECT ?"),
        ("SELECT 1 --c\n+ 2", "SELECT ? + ?"),
        ("SELECT 1+--c\n2", "SELECT ?+ ?"),
        ("SELECT '--not a comment', '/* nor this */'", "SELECT ?, ?"),
        ("-- only a comment", ""),
    ];
    for (sql, want) in cases {
        assert_eq!(normalize(sql).as_deref(), Some(want), "{sql}");
    }
}

#[test]
fn normalize_refuses_text_without_a_stable_key() {
    for sql in [
        "SELECT 'abc",
        r"SELECT E'abc\'",
        "SELECT $$abc",
        "SELECT $t$abc$x$",
        "SELECT \"abc",
        "SELECT /* abc",
        "SELECT /* a /* b */",
        "SELECT B'01",
        // A `?` of its own would be confused with a stripped literal.
        "SELECT '{}'::jsonb ? 'a'",
        // Trailing junk that the server rejects.
        "SELECT 123abc",
        "SELECT 0x",
        "SELECT 1e+",
    ] {
        assert_eq!(normalize(sql), None, "{sql}");
    }
}

#[test]
fn statements_with_equal_keys_classify_equally() {
    let groups: &[&[&str]] = &[
        &[
            "SELECT * FROM t WHERE id = 1",
            "SELECT * FROM t WHERE id = 'x'",
            "SELECT * FROM t WHERE id = $$x$$",
            "SELECT * FROM t WHERE id = E'\\''",
            "SELECT * FROM t WHERE id = 1.5e3",
        ],
        &[
            "DELETE FROM t WHERE a = 1 -- one",
            "DELETE FROM t WHERE a = /* two */ 2",
        ],
        &["COPY t FROM '/a'", "COPY t FROM $$/b$$"],
        &[
            "SELECT pg_terminate_backend(1)",
            "SELECT pg_terminate_backend(0x10)",
        ],
        &["SET statement_timeout = 5", "SET statement_timeout = '5s'"],
    ];
    for group in groups {
        let classifier = Classifier::new(100);
        let first = classifier.classify(group[0]).unwrap();
        for sql in &group[1..] {
            assert_eq!(normalize(sql), normalize(group[0]), "{sql}");
            assert_eq!(classify(sql).unwrap(), *first, "{sql}");
            assert!(
                Arc::ptr_eq(&classifier.classify(sql).unwrap(), &first),
                "{sql}"
            );
        }
    }
}

use std::sync::Arc;

#[test]
fn literal_dependent_classifications_are_not_cached() {
    let classifier = Classifier::new(100);
    let work_mem = classifier
        .classify("SELECT set_config('work_mem', '1MB', false)")
        .unwrap();
    let role = classifier
        .classify("SELECT set_config('role', 'postgres', false)")
        .unwrap();
    assert_eq!(work_mem.statements[0].class, Write);
    assert_eq!(role.statements[0].class, Admin);
    let utf8 = classifier.classify("SET client_encoding = 'UTF8'").unwrap();
    let sjis = classifier.classify("SET client_encoding = 'SJIS'");
    assert_eq!(utf8.statements[0].class, Session);
    assert!(matches!(sjis, Err(ClassifyError::Unsupported(_))));
    let on = classifier.classify("SET standard_conforming_strings = 'on'");
    let off = classifier.classify("SET standard_conforming_strings = 'off'");
    assert!(on.is_ok());
    assert!(matches!(off, Err(ClassifyError::Unsupported(_))));
    assert!(classifier.is_empty());
}

#[test]
fn classifier_caches_and_stays_bounded() {
    let classifier = Classifier::new(32);
    let a = classifier.classify("SELECT * FROM t WHERE id = 1").unwrap();
    let b = classifier
        .classify("SELECT  *  FROM t WHERE id = 2")
        .unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(classifier.len(), 1);
    for i in 0..500 {
        classifier.classify(&format!("SELECT c{i} FROM t")).unwrap();
    }
    assert!(classifier.len() <= 32, "{}", classifier.len());
    // Errors and unkeyable text are answered but not stored.
    assert!(classifier.classify("SELEC 1").is_err());
    assert!(classifier.classify("SELECT '{}'::jsonb ? 'a'").is_ok());
    let uncached = Classifier::new(0);
    uncached.classify("SELECT 1").unwrap();
    assert!(uncached.is_empty());
}

#[test]
fn classifier_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Classifier>();
    let classifier = Arc::new(Classifier::default());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let classifier = Arc::clone(&classifier);
            std::thread::spawn(move || {
                for i in 0..50 {
                    let c = classifier
                        .classify(&format!("UPDATE t{} SET a = {i}", i % 5 + t))
                        .unwrap();
                    assert_eq!(c.statements[0].class, Write);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

mod properties {
    use proptest::prelude::*;

    use super::super::lexer::lex;
    use super::super::{analyze, normalize};
    use pg_query::protobuf::Token;

    /// Pieces of SQL that exercise every lexer state, including the tricky
    /// neighbours (prefix letters, `$` in identifiers, operators that
    /// contain comment starts, lone quotes and backslashes).
    const FRAGMENTS: &[&str] = &[
        "select",
        "from",
        "t",
        "a",
        "e",
        "E",
        "x",
        "X",
        "b",
        "B",
        "n",
        "N",
        "u",
        "U",
        "U&",
        "u&",
        "a$b$",
        "_x1",
        "ü",
        "uescape",
        " ",
        " ",
        "\n",
        "\t",
        "\r\n",
        "'",
        "'abc'",
        "''",
        "'it''s'",
        "E'a\\'b'",
        "e'\\\\'",
        "\\",
        "'\n'",
        "\"",
        "\"q\"",
        "\"a\"\"b\"",
        "$",
        "$$",
        "$$x$$",
        "$t$",
        "$t$ $$ $t$",
        "$1",
        "$12",
        "$a",
        "0",
        "1",
        "42",
        "1.5",
        ".5",
        "5.",
        "1e10",
        "1E-3",
        "2e+4",
        "0x1F",
        "0o17",
        "0b101",
        "1_000",
        "..",
        ".",
        ",",
        ";",
        "(",
        ")",
        "[",
        "]",
        "+",
        "-",
        "*",
        "/",
        "<",
        ">",
        "=",
        "::",
        ":",
        "&",
        "|",
        "!",
        "~",
        "@",
        "#",
        "%",
        "^",
        "?",
        "--",
        "--c\n",
        "\x0b",
        "\x0c",
        "\r",
        "/*",
        "*/",
        "/*c*/",
        "/* /* */ */",
        "+--",
        "*/*",
        "-/*x*/-",
    ];

    fn sqlish() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            8 => prop::sample::select(FRAGMENTS).prop_map(str::to_owned),
            1 => "[ -~\n]{1,3}",
        ];
        prop::collection::vec(piece, 0..16).prop_map(|v| v.concat())
    }

    /// The key with the insides of `"..."` identifiers dropped (the quotes
    /// stay): those are names, kept byte for byte, spaces included.
    fn outside_quoted_identifiers(key: &str) -> String {
        let mut quoted = false;
        key.chars()
            .filter(|&c| {
                if c == '"' {
                    quoted = !quoted;
                    return true;
                }
                !quoted
            })
            .collect()
    }

    fn is_literal(token: i32) -> bool {
        matches!(
            Token::try_from(token),
            Ok(Token::Sconst
                | Token::Usconst
                | Token::Bconst
                | Token::Xconst
                | Token::Iconst
                | Token::Fconst)
        )
    }

    fn is_comment(token: i32) -> bool {
        matches!(
            Token::try_from(token),
            Ok(Token::SqlComment | Token::CComment)
        )
    }

    /// Each case was run against PostgreSQL 15: `--` comments may sit
    /// between the parts of a continued string, `/* */` comments may not.
    #[test]
    fn string_continuation_across_comments_is_the_servers() {
        let joined = [
            "select 'abc'--c\n'def'",
            "select 'abc'\n--c\n'def'",
            "select 'abc' --c\n  'def'",
        ];
        for sql in joined {
            assert_eq!(lex(sql).literals, vec![7..sql.len()], "{sql:?}");
        }
        let separate = [
            "select 'abc'/*x*/\n'def'",
            "select 'abc'\n/*x*/'def'",
            "select 'abc'/*a\nb*/'def'",
        ];
        for sql in separate {
            assert_eq!(lex(sql).literals.len(), 2, "{sql:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// The cache is only sound if our literals and comments are exactly
        /// the ones PostgreSQL's scanner finds.
        #[test]
        fn literal_and_comment_spans_agree_with_the_postgres_scanner(sql in sqlish()) {
            let Ok(scanned) = pg_query::scan(&sql) else {
                return Ok(());
            };
            let span = |t: &pg_query::protobuf::ScanToken| t.start as usize..t.end as usize;
            let literals: Vec<_> = scanned.tokens.iter().filter(|t| is_literal(t.token)).map(span).collect();
            let comments: Vec<_> = scanned.tokens.iter().filter(|t| is_comment(t.token)).map(span).collect();
            let ours = lex(&sql);
            prop_assert!(ours.complete, "scanner accepted {sql:?} but our lexer did not");
            prop_assert_eq!(ours.literals, literals, "literals of {:?}", sql);
            prop_assert_eq!(ours.comments, comments, "comments of {:?}", sql);
        }

        #[test]
        fn normalize_never_panics(sql in any::<String>()) {
            let _ = normalize(&sql);
        }

        #[test]
        fn normalize_never_panics_on_sqlish_text(sql in sqlish()) {
            if let Some(key) = normalize(&sql) {
                prop_assert!(!key.starts_with(' ') && !key.ends_with(' '));
                prop_assert!(
                    !outside_quoted_identifiers(&key).contains("  "),
                    "unfolded whitespace in {:?}",
                    key
                );
            }
        }

        /// Same key, same classification, for every literal form in every slot.
        #[test]
        fn equal_keys_classify_equally(
            template in prop::sample::select(TEMPLATES),
            a in prop::collection::vec(prop::sample::select(LITERALS), 3),
            b in prop::collection::vec(prop::sample::select(LITERALS), 3),
        ) {
            let fill = |values: &[&str]| {
                values.iter().fold(template.to_owned(), |sql, v| sql.replacen("{}", v, 1))
            };
            let (left, right) = (fill(&a), fill(&b));
            let key = normalize(&left);
            prop_assert!(key.is_some(), "{}", left);
            prop_assert_eq!(&key, &normalize(&right));
            if let (Ok(l), Ok(r)) = (analyze(&left), analyze(&right)) {
                if l.cacheable && r.cacheable {
                    prop_assert_eq!(l.classification, r.classification, "{} vs {}", left, right);
                }
            }
        }
    }

    const TEMPLATES: &[&str] = &[
        "SELECT {} FROM t WHERE a = {} AND b > {}",
        "INSERT INTO t VALUES ({}, {}, {})",
        "UPDATE t SET a = {} WHERE b = {} OR c = {}",
        "SELECT * FROM t LIMIT {} OFFSET {} /* {} */",
        "COPY t FROM {} WITH (DELIMITER {}, NULL {})",
        "SELECT pg_read_file({}, {}, {})",
        "SELECT set_config({}, {}, {})",
        "SET statement_timeout = {}; SELECT {}, {}",
        "EXPLAIN (ANALYZE {}) SELECT {} + {}",
        "EXPLAIN (ANALYZE {}) DELETE FROM t WHERE a = {} AND b = {}",
        "SELECT {}::text, ARRAY[{}, {}]",
        "COPY (SELECT {}) TO PROGRAM {} WITH (DELIMITER {})",
        "SET client_encoding = {}; SELECT {}, {}",
        "SET standard_conforming_strings = {}; SELECT {}, {}",
        "SELECT set_config('client_encoding', {}, false), {}, {}",
    ];

    const LITERALS: &[&str] = &[
        "1",
        "0",
        "42",
        "1.5",
        ".5",
        "1e3",
        "0x1F",
        "1_000",
        "'x'",
        "''",
        "'it''s'",
        "E'\\''",
        "$$x$$",
        "$q$ ; DROP TABLE t; $q$",
        "'; DROP TABLE t; --'",
        "B'1'",
        "X'ff'",
        "U&'x'",
        "'a'\n'b'",
        "'role'",
        "'off'",
        "'utf8'",
        "'latin1'",
        "'/tmp/x'",
        "'on'",
    ];
}

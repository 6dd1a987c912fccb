//! Masking of results (`mask:` in policies) with real clients: declared
//! columns found through aliases, `*`, joins and views; content detectors in
//! text, varchar, jsonb, arrays and integers; simple and extended protocol,
//! binary results, row-limited portals, COPY, RETURNING and error DETAIL.
//! The unmasked principal sees the same data in the clear.

use std::io::{Read, Write};
use std::process::Command;

use test_support::run;

use crate::env::{Env, Options, TIMEOUT};

const CARD: &str = "4111 1111 1111 1111";
const CARD_PLAIN: &str = "4111111111111111";
const CARD_OTHER: &str = "5500000000000004";
const EMAIL: &str = "alice@example.com";
const EMAIL_OTHER: &str = "bob.smith@example.org";
const IBAN: &str = "GB82WEST12345698765432";
const AWS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
const GITHUB_TOKEN: &str = "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789";

/// Every value that must never reach a masked principal.
const SECRETS: [&str; 7] = [
    CARD,
    CARD_PLAIN,
    CARD_OTHER,
    EMAIL,
    EMAIL_OTHER,
    IBAN,
    AWS_KEY,
];

const POLICIES: &str = r#"
  - name: ci-masked
    match: { groups: [ci] }
    connection: app-db
    allow: [read, write]
    mask:
      columns: ["customers.email", "*.card", "public.customers.card_num"]
      detect: [credit_card, email, iban, secret]
      method: partial
  - name: exporter-detects
    match: { principals: ["exporter"] }
    connection: app-db
    allow: [read]
    mask:
      detect: [credit_card, email, iban, secret]
  - name: hasher
    match: { principals: ["hasher"] }
    connection: app-db
    allow: [read]
    mask:
      columns: ["customers.email"]
      method: hash
      expressions: mask
  - name: auditor-clear
    match: { principals: ["auditor"] }
    connection: app-db
    allow: [read, write]
"#;

fn masking_env() -> Env {
    masking_env_with(|_| {})
}

fn masking_env_with(change: impl FnOnce(&mut Options)) -> Env {
    let mut opts = Options {
        policies: POLICIES.into(),
        ..Options::default()
    };
    change(&mut opts);
    let env = Env::with(opts);
    env.pg.sql(
        "app",
        &format!(
            "create table customers (
               id int primary key, name text, email varchar(200) unique, card text,
               card_num bigint, legacy_card bigint, iban text, notes text,
               profile jsonb, tags text[]);
             insert into customers values
               (1, 'Alice', '{EMAIL}', '{CARD}', {CARD_PLAIN}, {CARD_PLAIN}, '{IBAN}',
                'call me, key {AWS_KEY}, token {GITHUB_TOKEN}',
                '{{\"contact\": \"{EMAIL_OTHER}\", \"n\": 7, \"pay\": \"{CARD_OTHER}\"}}',
                '{{\"{CARD_OTHER}\", \"plain\"}}'),
               (2, 'Bob', '{EMAIL_OTHER}', '{CARD_OTHER}', 42, 7, null, 'nothing here', '{{}}', '{{}}');
             create table orders (id int primary key, customer_id int, total int);
             insert into orders values (10, 1, 99), (11, 2, 5);
             create view customer_contacts as
               select c.id, c.email as contact, upper(c.name) as shout from customers c;
             create view contacts_of_contacts as select contact as reach from customer_contacts;
             create function shout(t text) returns int language plpgsql stable
               as $$ begin raise notice 'saw %', t; return 1; end $$;
             alter table customers owner to app_scram;
             alter table orders owner to app_scram;
             alter view customer_contacts owner to app_scram;
             alter view contacts_of_contacts owner to app_scram;"
        ),
    );
    env
}

fn assert_no_secrets(what: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{what}: {s:?} leaked in:\n{text}");
    }
}

fn psql_ok(env: &Env, token: &str, sql: &str) -> String {
    let out = env.psql(token, sql);
    assert!(
        out.success() && out.stderr.is_empty(),
        "{sql}\nstdout: {}\nstderr: {}\n{}",
        out.stdout,
        out.stderr,
        env.gateway_log()
    );
    out.stdout
}

#[test]
fn declared_columns_are_masked_through_aliases_star_joins_and_views() {
    let env = masking_env();
    let ci = env.token("ci-job", &["ci"]);

    let out = psql_ok(
        &env,
        &ci,
        "select id, name, email, card from customers order by id;",
    );
    assert_eq!(
        out,
        "1|Alice|a****@example.com|**** **** **** 1111\n\
         2|Bob|b****@example.org|************0004\n"
    );
    for sql in [
        "select email as e, card as c from customers;",
        "select * from customers;",
        "select o.id, c.email, c.card from orders o join customers c on c.id = o.customer_id;",
        "select contact from customer_contacts;",
        "select reach from contacts_of_contacts;",
        "select x.email from (select email from customers) x;",
        "with w as (select card from customers) select * from w;",
    ] {
        let out = psql_ok(&env, &ci, sql);
        assert_no_secrets(sql, &out);
        assert!(out.contains("****"), "{sql}: nothing masked:\n{out}");
    }
    // An expression over a declared column is not a column: the detectors
    // catch what they recognise.
    let out = psql_ok(&env, &ci, "select upper(email), card || '' from customers;");
    assert_no_secrets("expressions", &out.to_lowercase());

    let auditor = env.token("auditor", &[]);
    let clear = psql_ok(
        &env,
        &auditor,
        "select email, card from customers order by id;",
    );
    assert_eq!(
        clear,
        format!("{EMAIL}|{CARD}\n{EMAIL_OTHER}|{CARD_OTHER}\n")
    );
}

#[test]
fn detectors_mask_inside_text_json_arrays_and_integers() {
    let env = masking_env();
    let ci = env.token("ci-job", &["ci"]);
    let out = psql_ok(
        &env,
        &ci,
        "select iban, notes, profile, tags, card_num, legacy_card from customers where id = 1;",
    );
    assert_no_secrets("detectors", &out);
    assert!(!out.contains(GITHUB_TOKEN), "{out}");
    let fields: Vec<&str> = out.trim_end().split('|').collect();
    assert_eq!(fields[0], "******************5432", "iban, partial");
    assert_eq!(fields[1], "call me, key ****, token ****");
    let profile: serde_json::Value = serde_json::from_str(fields[2]).expect("still json");
    assert_eq!(profile["n"], 7);
    assert_eq!(profile["contact"], "b****@example.org");
    assert_eq!(profile["pay"], "************0004");
    assert_eq!(fields[3], "{\"************0004\",plain}");
    // A declared bigint, and a bigint holding a card: no masked form fits
    // the type, so NULL (empty in psql's unaligned output).
    assert_eq!(fields[4], "");
    assert_eq!(fields[5], "");
    // Row 2's small bigint in a non-declared column is left alone.
    let out = psql_ok(&env, &ci, "select legacy_card from customers where id = 2;");
    assert_eq!(out, "7\n");
    // PostgreSQL leaves an element of a lone no-break space unquoted; the
    // gateway's array walk once looped on it forever.
    let out = psql_ok(
        &env,
        &ci,
        &format!("select array[chr(160), '{CARD_OTHER}'];"),
    );
    assert_eq!(out, "{\u{a0},\"************0004\"}\n");
}

#[test]
fn returning_errors_and_notices_are_masked() {
    let env = masking_env();
    let ci = env.token("ci-job", &["ci"]);
    let out = psql_ok(
        &env,
        &ci,
        &format!("insert into customers (id, email, card) values (3, 'carol@example.net', '{CARD}') returning id, email, card;"),
    );
    assert_eq!(out, "3|c****@example.net|**** **** **** 1111\nINSERT 0 1\n");

    let out = env.psql(
        &ci,
        &format!("insert into customers (id, email) values (4, '{EMAIL}');"),
    );
    assert!(out.stderr.contains("duplicate key"), "{}", out.stderr);
    assert!(out.stderr.contains("Key (email)=(****)"), "{}", out.stderr);
    assert_no_secrets("unique violation", &out.stderr);

    let out = env.psql(&ci, &format!("select '{EMAIL}'::int;"));
    // psql quotes the query it sent on a `LINE 1:` line; the server's
    // message is the ERROR line.
    let error = out
        .stderr
        .lines()
        .find(|l| l.contains("ERROR"))
        .unwrap_or_default();
    assert!(error.contains("invalid input syntax"), "{}", out.stderr);
    assert!(error.contains("a****@example.com"), "{}", out.stderr);

    // A user-defined function may read a declared column: its notice is
    // withheld, naming only the SQLSTATE.
    let out = env.psql(&ci, &format!("select shout('{CARD_OTHER}');"));
    assert!(
        out.stderr.contains("reads a masked column") && !out.stderr.contains("saw"),
        "{}",
        out.stderr
    );

    let auditor = env.token("auditor", &[]);
    let out = env.psql(
        &auditor,
        &format!("insert into customers (id, email) values (5, '{EMAIL}');"),
    );
    assert!(
        out.stderr.contains(EMAIL),
        "clear for the auditor: {}",
        out.stderr
    );
}

#[test]
fn copy_to_stdout_is_masked_or_refused() {
    let env = masking_env();
    // Declared columns cannot be found in COPY output: refused, pointing
    // at SELECT.
    let ci = env.token("ci-job", &["ci"]);
    let out = env.psql(&ci, "copy customers to stdout;");
    assert!(
        out.stderr
            .contains("COPY TO STDOUT output cannot be masked"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("customers.email"), "{}", out.stderr);
    assert_no_secrets("refused copy", &out.stdout);
    // `*.card` may name a column of any table, so every table is covered.
    let out = env.psql(&ci, "copy orders to stdout;");
    assert!(out.stderr.contains("\"*.card\""), "{}", out.stderr);

    // Detector-only principals get text and CSV COPY masked line by line.
    let exporter = env.token("exporter", &[]);
    for sql in [
        "copy customers to stdout;",
        "copy (select * from customers) to stdout with (format csv);",
        "\\copy customers to stdout csv header",
    ] {
        let out = psql_ok(&env, &exporter, sql);
        assert_no_secrets(sql, &out);
        assert!(
            out.contains("Alice") && out.contains("****"),
            "{sql}: {out}"
        );
        assert_eq!(
            out.lines().filter(|l| !l.contains("iban")).count(),
            2,
            "{sql}: {out}"
        );
    }
    let out = env.psql(&exporter, "copy customers to stdout with (format binary);");
    assert!(
        out.stderr.contains("binary COPY output cannot be masked"),
        "{}",
        out.stderr
    );
    assert_no_secrets("binary copy", &out.stdout);
    // The session survives the refusal.
    let out = env.psql(
        &exporter,
        "copy customers to stdout with (format binary);\nselect count(*) from customers;",
    );
    assert!(out.stdout.ends_with("2\n"), "{}", out.stdout);

    let auditor = env.token("auditor", &[]);
    let clear = psql_ok(&env, &auditor, "copy customers to stdout;");
    assert!(clear.contains(EMAIL) && clear.contains(AWS_KEY), "{clear}");
}

#[test]
fn hash_is_deterministic_and_expressions_mask_masks_untraced_fields() {
    let env = masking_env();
    let hasher = env.token("hasher", &[]);
    let once = psql_ok(&env, &hasher, "select email from customers order by id;");
    let twice = psql_ok(
        &env,
        &hasher,
        "select c.email from customers c order by c.id;",
    );
    assert_eq!(once, twice, "hash must be stable across sessions");
    let lines: Vec<&str> = once.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(
        lines.iter().all(|l| l.starts_with("h:") && l.len() == 18),
        "{once}"
    );
    assert_ne!(lines[0], lines[1]);
    // `expressions: mask`: nothing untraced passes, whatever it holds.
    let out = psql_ok(
        &env,
        &hasher,
        "select lower(name), name, count(*) over () from customers order by id;",
    );
    assert_eq!(out, "****|Alice|\n****|Bob|\n");
}

#[test]
fn the_audit_record_counts_what_was_masked_and_never_holds_values() {
    let env = masking_env();
    let ci = env.token("ci-job", &["ci"]);
    psql_ok(&env, &ci, "select email, card, notes from customers;");
    let result = env.wait_for_record(|r| {
        r["kind"] == "statement_result"
            && r["detail"]["results"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x.get("masked").is_some()))
    });
    let masked = result["detail"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|x| x.get("masked"))
        .unwrap()
        .clone();
    assert_eq!(masked["columns"]["public.customers.email"], 2, "{masked}");
    assert_eq!(masked["columns"]["public.customers.card"], 2, "{masked}");
    assert_eq!(masked["detectors"]["secret"], 2, "{masked}");
    assert_eq!(masked["values"], 6, "{masked}");
    // Errors echo values too; their record is masked like the client's copy.
    let out = env.psql(&ci, &format!("select '{EMAIL}'::int;"));
    assert!(
        out.stderr.contains("invalid input syntax"),
        "{}",
        out.stderr
    );
    env.wait_for_record(|r| {
        r["kind"] == "session_end"
            && r["detail"]["statements"] == 1
            && r["session_id"] != result["session_id"]
    });
    let everything = env.cli(&["audit", "export", "--format", "jsonl"]).stdout;
    assert!(everything.contains("a****@example.com"), "{everything}");
    // The statement text is the client's own and is recorded as sent; the
    // secrets the test checks for are the ones only results carry.
    for s in [CARD, CARD_PLAIN, CARD_OTHER, EMAIL_OTHER, AWS_KEY] {
        assert!(!everything.contains(s), "{s} in records:\n{everything}");
    }

    // replay shows the masked rows the client received.
    let session = result["session_id"].as_str().unwrap();
    let replay = env.cli(&["replay", session]);
    assert!(replay.success(), "{}", replay.stderr);
    assert!(
        replay.stdout.contains("email|card|notes\n      a****@example.com|**** **** **** 1111|call me, key ****, token ****"),
        "{}",
        replay.stdout
    );
    assert!(replay.stdout.contains("[masked: "), "{}", replay.stdout);
    assert_no_secrets("replay", &replay.stdout);
}

const PSYCOPG_SCRIPT: &str = r#"
import os, json, psycopg
out = {}
with psycopg.connect(os.environ["DSN"]) as conn:
    for binary in (False, True):
        cur = conn.cursor(binary=binary)
        cur.execute("select id, email, card, notes, profile, legacy_card from customers where id = %s", (1,))
        out["binary" if binary else "text"] = [str(v) for v in cur.fetchone()]
    cur = conn.cursor()
    cur.execute("select email from customers where id = %s", (2,), prepare=True)
    cur.execute("select email from customers where id = %s", (2,), prepare=True)
    out["prepared"] = cur.fetchone()[0]
    with conn.cursor(name="server_side") as named:
        named.execute("select email, card from customers order by id")
        out["named"] = [list(r) for r in named.fetchmany(1)] + [list(r) for r in named.fetchall()]
print(json.dumps(out))
"#;

#[test]
fn psycopg_text_binary_prepared_and_server_side_cursors_are_masked() {
    let env = masking_env();
    let ci = env.token("ci-job", &["ci"]);
    let mut cmd = Command::new("python3");
    cmd.args(["-c", PSYCOPG_SCRIPT])
        .env("DSN", format!("{} password={ci}", env.conninfo("require")));
    let out = run(&mut cmd, TIMEOUT);
    assert!(out.success(), "{}\n{}", out.stderr, env.gateway_log());
    assert_no_secrets("psycopg", &out.stdout);
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("json");
    for format in ["text", "binary"] {
        let row = &v[format];
        assert_eq!(row[1], "a****@example.com", "{format}: {row}");
        assert_eq!(row[2], "**** **** **** 1111", "{format}: {row}");
        assert_eq!(row[3], "call me, key ****, token ****", "{format}: {row}");
        assert_eq!(row[5], "None", "{format}: {row}");
    }
    assert_eq!(v["prepared"], "b****@example.org");
    assert_eq!(
        v["named"],
        serde_json::json!([
            ["a****@example.com", "**** **** **** 1111"],
            ["b****@example.org", "************0004"]
        ])
    );

    // The same driver calls as an unmasked principal get the clear values.
    let auditor = env.token("auditor", &[]);
    cmd.env(
        "DSN",
        format!("{} password={auditor}", env.conninfo("require")),
    );
    let out = run(&mut cmd, TIMEOUT);
    assert!(out.success(), "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("json");
    for format in ["text", "binary"] {
        assert_eq!(v[format][1], EMAIL, "{format}");
        assert_eq!(v[format][2], CARD, "{format}");
        assert_eq!(v[format][5], CARD_PLAIN, "{format}");
    }
    assert_eq!(v["named"][1][1], CARD_OTHER);
}

/// A raw extended-protocol exchange: Parse, Bind, then Execute with a row
/// limit of 1 twice (PortalSuspended in between), with no Describe from
/// the client, so the gateway must learn the portal's shape itself.
#[test]
fn row_limited_portals_without_describe_are_masked() {
    let env = masking_env_with(|o| o.insecure_plaintext = true);
    let ci = env.token("ci-job", &["ci"]);
    let mut s = crate::postgres_robustness::logged_in(&env, &ci);
    let msg = crate::postgres_robustness::message;
    let mut batch = Vec::new();
    batch.extend(msg(
        b'P',
        b"\0select email, card from customers order by id\0\0\0",
    ));
    // Bind: unnamed portal and statement, no parameters, all results binary.
    batch.extend(msg(b'B', b"\0\0\0\0\0\0\0\x01\0\x01"));
    batch.extend(msg(b'E', b"\0\0\0\0\x01"));
    batch.extend(msg(b'E', b"\0\0\0\0\x01"));
    batch.extend(msg(b'E', b"\0\0\0\0\x01"));
    batch.extend(msg(b'S', b""));
    s.write_all(&batch).unwrap();
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    while !seen.ends_with(b"Z\0\0\0\x05I") {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&seen);
    assert_no_secrets("raw portal", &text);
    assert!(text.contains("a****@example.com"), "{text}");
    assert!(text.contains("b****@example.org"), "{text}");
    // The client never asked for a description, so it must not get one.
    let tags: Vec<u8> = frames(&seen).map(|(tag, _)| tag).collect();
    assert_eq!(tags, b"12DsDsCZ".to_vec(), "{text}");
}

fn frames(mut b: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let len = u32::from_be_bytes(b.get(1..5)?.try_into().ok()?) as usize;
        let (frame, rest) = b.split_at(1 + len);
        b = rest;
        Some((frame[0], &frame[5..]))
    })
}

/// If the catalog cannot say where fields come from, declared columns
/// cannot be told apart: the result is masked whole, never passed raw.
#[test]
fn an_unreadable_catalog_masks_everything_until_it_is_readable_again() {
    let env = masking_env();
    let ci = env.token("ci-job", &["ci"]);
    env.pg
        .sql("app", "revoke select on pg_catalog.pg_rewrite from public;");
    let out = psql_ok(
        &env,
        &ci,
        "select name, email, id from customers order by id;",
    );
    assert_eq!(out, "****|****|\n****|****|\n");
    assert!(
        env.gateway_log().contains("catalog lookup failed"),
        "{}",
        env.gateway_log()
    );
    env.pg
        .sql("app", "grant select on pg_catalog.pg_rewrite to public;");
    let out = psql_ok(
        &env,
        &ci,
        "select name, email, id from customers order by id;",
    );
    assert_eq!(out, "Alice|a****@example.com|1\nBob|b****@example.org|2\n");
}

/// The leaks seen through the quickstart, one statement each: expressions,
/// aggregates, casts, whole-row values and views over a declared column;
/// values echoed in errors; a second COPY in one query string; a COPY over
/// a view; NOTIFY payloads and pg_notify.
#[test]
fn values_computed_from_declared_columns_never_reach_a_masked_principal() {
    let env = masking_env();
    let ci = env.token("ci-job", &["ci"]);
    for sql in [
        "select lower(email) from customers;",
        "select email::bytea, encode(email::bytea, 'hex'), md5(email) from customers;",
        "select substring(email from 1 for 3), format('%s', email), concat(email, '') from customers;",
        "select c from customers c;",
        "select customers from customers;",
        "select row_to_json(c), to_jsonb(c) from customers c;",
        "select array_agg(email), string_agg(email, ',') from customers;",
        "select (select max(email) from customers);",
        "select 1, 'x' union all select id, upper(email) from customers;",
        "select lower(contact) from customer_contacts;",
        "select v from customer_contacts v;",
    ] {
        let out = psql_ok(&env, &ci, sql);
        assert_no_secrets(sql, &out.to_lowercase());
        assert!(!out.contains("example."), "{sql}: {out}");
    }
    let out = env.psql(&ci, "select string_agg(email, ',')::int from customers;");
    assert!(out.stderr.contains("SQLSTATE 22P02"), "{}", out.stderr);
    assert!(!out.stderr.contains("example."), "{}", out.stderr);
    let out = env.psql(&ci, "copy orders to stdout; copy customers to stdout;");
    assert!(!out.stdout.contains("example."), "{}", out.stdout);
    assert!(out.stderr.contains("cannot be masked"), "{}", out.stderr);
    let out = env.psql(&ci, "copy (select * from customer_contacts) to stdout;");
    assert!(!out.stdout.contains("example."), "{}", out.stdout);
    assert!(out.stderr.contains("cannot be masked"), "{}", out.stderr);
    let out = env.psql(&ci, "select pg_notify('ch', email) from customers;");
    assert!(out.stderr.contains("pg_notify"), "{}", out.stderr);
    // A payload reaches a listener with declared columns masked whole.
    let out = env.psql(
        &ci,
        &format!("listen ch; select pg_notify('ch', '{EMAIL}'); select 1;"),
    );
    assert!(
        !out.stdout.contains(EMAIL) && !out.stderr.contains(EMAIL),
        "{}{}",
        out.stdout,
        out.stderr
    );
    // Plain reads of undeclared columns are untouched.
    assert_eq!(
        psql_ok(&env, &ci, "select count(*), max(name) from customers;"),
        "2|Bob\n"
    );
}

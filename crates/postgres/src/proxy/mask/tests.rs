use super::*;
use portcullis_config::MaskConfig;
use portcullis_masking::{find, Detector};
use proptest::prelude::*;

const TEXT: u32 = 25;
const INT4: u32 = 23;
const INT8: u32 = 20;
const JSONB: u32 = 3802;
const TEXT_ARRAY: u32 = 1009;

fn session(columns: &[&str], detect: &[&str], method: &str) -> SessionMask {
    let config = MaskConfig {
        columns: columns.iter().map(|s| s.to_string()).collect(),
        detect: detect.iter().map(|s| s.to_string()).collect(),
        method: Some(method.into()),
        expressions: None,
    };
    SessionMask::new(
        MaskRules::compile([("p", &config)])
            .expect("valid rules")
            .expect("something to mask"),
        Arc::new(Masker::new(b"0123456789abcdef-unit-test").expect("key")),
    )
}

fn field(name: &str, table_oid: u32, type_oid: u32, format: i16) -> FieldDescription<'_> {
    FieldDescription {
        name,
        table_oid,
        column: 1,
        type_oid,
        type_len: -1,
        type_mod: -1,
        format,
    }
}

fn source(table: &str, column: &str) -> Option<SourceColumn> {
    Some(SourceColumn {
        schema: "public".into(),
        table: table.into(),
        column: column.into(),
    })
}

fn row(values: &[Option<&[u8]>]) -> BytesMut {
    let full = encode_data_row(BytesMut::new(), values).expect("encodes");
    BytesMut::from(&full[5..])
}

fn masked(
    m: &SessionMask,
    shape: &Shape,
    values: &[Option<&[u8]>],
) -> (Vec<Option<Vec<u8>>>, Tally) {
    let mut tally = Tally::default();
    let body = row(values);
    // Rows are appended after whatever the relay has already queued.
    let mut out = BytesMut::from(&b"queued"[..]);
    let changed = m
        .mask_row(
            shape,
            false,
            &body,
            &mut tally,
            &mut MaskBuf::default(),
            &mut out,
        )
        .expect("masks");
    let out = if changed {
        assert_eq!(&out[..6], b"queued");
        let len = u32::from_be_bytes(out[7..11].try_into().expect("4 bytes")) as usize;
        assert_eq!(out.len(), 6 + 1 + len, "the length word covers the row");
        out[11..].to_vec()
    } else {
        assert_eq!(&out[..], b"queued", "an unchanged row appends nothing");
        body.to_vec()
    };
    let cells = parse_data_row(&out)
        .expect("a masked row parses")
        .into_iter()
        .map(|c| c.map(<[u8]>::to_vec))
        .collect();
    (cells, tally)
}

#[test]
fn declared_columns_are_masked_whole_and_others_scanned() {
    let m = session(&["customers.email"], &["credit_card"], "redact");
    let fields = [
        field("e", 7, TEXT, 0),
        field("notes", 7, TEXT, 0),
        field("id", 7, INT4, 0),
    ];
    let shape = m.plan(
        &fields,
        &[
            source("customers", "email"),
            source("customers", "notes"),
            source("customers", "id"),
        ],
    );
    let (cells, tally) = masked(
        &m,
        &shape,
        &[
            Some(b"a@b.co"),
            Some(b"card 4111 1111 1111 1111 ok"),
            Some(b"1"),
        ],
    );
    assert_eq!(
        cells,
        vec![
            Some(b"****".to_vec()),
            Some(b"card **** ok".to_vec()),
            Some(b"1".to_vec())
        ]
    );
    let json = tally.to_json();
    assert_eq!(json["values"], 2);
    assert_eq!(json["columns"]["public.customers.email"], 1);
    assert_eq!(json["detectors"]["credit_card"], 1);
}

#[test]
fn null_stays_null_and_clean_rows_are_not_rewritten() {
    let m = session(&["customers.email"], &["email"], "redact");
    let shape = m.plan(&[field("e", 7, TEXT, 0)], &[source("customers", "email")]);
    let mut tally = Tally::default();
    assert!(!m
        .mask_row(
            &shape,
            false,
            &row(&[None]),
            &mut tally,
            &mut MaskBuf::default(),
            &mut BytesMut::new()
        )
        .unwrap());
    let shape = m.plan(&[field("n", 7, TEXT, 0)], &[source("customers", "name")]);
    assert!(!m
        .mask_row(
            &shape,
            false,
            &row(&[Some(b"Alice")]),
            &mut tally,
            &mut MaskBuf::default(),
            &mut BytesMut::new()
        )
        .unwrap());
    assert!(tally.is_empty());
}

#[test]
fn values_a_type_cannot_hold_masked_become_null() {
    let m = session(&["t.n", "t.code"], &["credit_card"], "redact");
    let fields = [
        field("n", 7, INT4, 0),
        field("code", 7, INT8, 1),
        field("big", 7, INT8, 1),
        field("small", 7, INT8, 1),
        field("tags", 7, TEXT_ARRAY, 1),
    ];
    let shape = m.plan(
        &fields,
        &[
            source("t", "n"),
            source("t", "code"),
            source("t", "big"),
            source("t", "small"),
            source("t", "tags"),
        ],
    );
    let card = 4_111_111_111_111_111i64.to_be_bytes();
    let small = 42i64.to_be_bytes();
    let (cells, tally) = masked(
        &m,
        &shape,
        &[
            Some(b"12"),
            Some(&small),
            Some(&card),
            Some(&small),
            Some(b"\0\0\0\x01"),
        ],
    );
    // Declared int (text and binary), a bigint card, and a binary array
    // (not rewritten element-wise): NULL. A small bigint passes.
    assert_eq!(cells, vec![None, None, None, Some(small.to_vec()), None]);
    assert_eq!(tally.to_json()["nulled"], 4);
}

#[test]
fn binary_jsonb_keeps_its_version_byte() {
    let m = session(&[], &["email"], "partial");
    let shape = m.plan(&[field("doc", 7, JSONB, 1)], &[source("t", "doc")]);
    let (cells, _) = masked(&m, &shape, &[Some(b"\x01{\"to\": \"alice@example.com\"}")]);
    assert_eq!(
        cells,
        vec![Some(b"\x01{\"to\": \"a****@example.com\"}".to_vec())]
    );
}

#[test]
fn a_row_wider_than_its_description_is_refused() {
    let m = session(&[], &["email"], "redact");
    let shape = m.plan(&[field("a", 7, TEXT, 0)], &[None]);
    let mut tally = Tally::default();
    assert!(m
        .mask_row(
            &shape,
            false,
            &row(&[Some(b"x"), Some(b"y")]),
            &mut tally,
            &mut MaskBuf::default(),
            &mut BytesMut::new()
        )
        .is_err());
}

#[test]
fn blind_plans_mask_everything() {
    let m = session(&["t.c"], &[], "partial");
    let fields = [field("a", 7, TEXT, 0), field("b", 0, INT4, 0)];
    let shape = m.plan_blind(&fields);
    let (cells, _) = masked(&m, &shape, &[Some(b"anything"), Some(b"5")]);
    assert_eq!(cells, vec![Some(b"****".to_vec()), None]);
    let mut tally = Tally::default();
    let nulls = m.null_row(&row(&[Some(b"a"), None]), &mut tally).unwrap();
    assert_eq!(parse_data_row(&nulls[5..]).unwrap(), vec![None, None]);
}

#[test]
fn copy_lines_and_error_details_are_masked() {
    let m = session(&["customers.email"], &["email"], "redact");
    let mut tally = Tally::default();
    assert_eq!(
        m.mask_copy_line(b"1\talice@example.com\tAlice\n", &mut tally),
        Some(b"1\t****\tAlice\n".to_vec())
    );
    assert_eq!(m.mask_copy_line(b"2\tnobody\n", &mut tally), None);
    let fields = [
        (b'S', "ERROR"),
        (b'C', "23505"),
        (
            b'M',
            "duplicate key value violates unique constraint \"customers_email_key\"",
        ),
        (b'D', "Key (email)=(x@y) already exists."),
    ];
    let out = m
        .mask_error(b'E', &fields, false, &mut tally)
        .expect("changed");
    let parsed = crate::codec::backend::parse_error_fields(&out[5..]).unwrap();
    assert_eq!(parsed[3], (b'D', "Key (email)=(****) already exists."));
    assert_eq!(parsed[2], fields[2]);
    let failing = [(b'D', "Failing row contains (3, bob@x.org, null).")];
    let out = m
        .mask_error(b'N', &failing, false, &mut tally)
        .expect("changed");
    assert_eq!(out[0], b'N');
    assert!(String::from_utf8_lossy(&out).contains("Failing row contains (****)."));
    assert!(m
        .mask_error(b'E', &[(b'M', "plain")], false, &mut tally)
        .is_none());
}

#[test]
fn computed_fields_of_statements_reading_declared_columns_are_masked_whole() {
    let m = session(&["customers.email"], &["credit_card"], "partial");
    let shape = m.plan(
        &[field("lower", 0, TEXT, 0), field("name", 7, TEXT, 0)],
        &[None, source("customers", "name")],
    );
    assert!(shape.has_computed());
    let mut out = BytesMut::new();
    let mut tally = Tally::default();
    let body = row(&[Some(b"alice@example.com"), Some(b"Alice")]);
    assert!(m
        .mask_row(
            &shape,
            true,
            &body,
            &mut tally,
            &mut MaskBuf::default(),
            &mut out
        )
        .unwrap());
    let cells = parse_data_row(&out[5..]).unwrap();
    assert_eq!(cells, vec![Some(&b"****"[..]), Some(&b"Alice"[..])]);
    assert_eq!(
        tally.to_json()["columns"]["(computed from a masked column)"],
        1
    );
    // The same rows of a statement that reads no declared column are scanned.
    assert!(!m
        .mask_row(
            &shape,
            false,
            &body,
            &mut Tally::default(),
            &mut MaskBuf::default(),
            &mut BytesMut::new()
        )
        .unwrap());
}

#[test]
fn errors_of_statements_reading_declared_columns_are_withheld() {
    let m = session(&["customers.email"], &[], "redact");
    let fields = [
        (b'S', "ERROR"),
        (b'C', "22P02"),
        (
            b'M',
            "invalid input syntax for type integer: \"a@b.co,c@d.io\"",
        ),
        (b'D', "detail a@b.co"),
        (b'W', "context a@b.co"),
        (b'P', "8"),
    ];
    let out = m
        .mask_error(b'E', &fields, true, &mut Tally::default())
        .unwrap();
    let parsed = crate::codec::backend::parse_error_fields(&out[5..]).unwrap();
    assert_eq!(parsed[0], (b'S', "ERROR"));
    assert_eq!(parsed[1], (b'C', "22P02"));
    assert_eq!(parsed[2].0, b'M');
    assert!(parsed[2].1.contains("SQLSTATE 22P02") && !parsed[2].1.contains('@'));
    assert_eq!(parsed[3], (b'P', "8"));
    assert_eq!(parsed.len(), 4);
}

#[test]
fn notifications_are_masked_whole_with_declared_columns_and_scanned_without() {
    let body = |payload: &[u8]| {
        let mut b = 42i32.to_be_bytes().to_vec();
        b.extend_from_slice(b"ch\0");
        b.extend_from_slice(payload);
        b.push(0);
        b
    };
    let declared = session(&["customers.email"], &[], "redact");
    let out = declared
        .mask_notification(&body(b"a@b.co"), &mut Tally::default())
        .unwrap();
    assert_eq!(&out[5..], &body(b"****")[..]);
    assert!(declared
        .mask_notification(&body(b""), &mut Tally::default())
        .is_none());
    let detects = session(&[], &["credit_card"], "redact");
    let out = detects
        .mask_notification(&body(b"card 4111 1111 1111 1111"), &mut Tally::default())
        .unwrap();
    assert_eq!(&out[5..], &body(b"card ****")[..]);
    assert!(detects
        .mask_notification(&body(b"id 7"), &mut Tally::default())
        .is_none());
}

#[test]
fn copy_lines_that_are_not_utf8_are_scanned_lossily() {
    let m = session(&[], &["credit_card"], "redact");
    let line = b"1\t\xff\t4111 1111 1111 1111\n";
    let out = m
        .mask_copy_line(line, &mut Tally::default())
        .expect("found");
    assert_eq!(String::from_utf8(out).unwrap(), "1\t\u{fffd}\t****\n");
}

proptest! {
    /// Whatever the upstream sends in text columns, the masked row parses
    /// and no detector finds anything left in it.
    #[test]
    fn masked_rows_parse_and_leave_nothing_detectable(
        cells in prop::collection::vec(
            prop::option::of(prop_oneof![
                "[a-z ]{0,12}",
                "[a-z]{1,8}@[a-z]{1,8}\\.(com|org)",
                Just("4111 1111 1111 1111".to_string()),
                Just("AKIAIOSFODNN7EXAMPLE".to_string()),
                "[ -~]{0,40}",
            ]),
            1..8,
        ),
        method in prop_oneof![Just("redact"), Just("partial"), Just("hash")],
    ) {
        let m = session(&[], &["email", "credit_card", "secret"], method);
        let fields: Vec<_> = cells.iter().map(|_| field("f", 0, TEXT, 0)).collect();
        let shape = m.plan(&fields, &[]);
        let values: Vec<Option<&[u8]>> = cells.iter().map(|c| c.as_deref().map(str::as_bytes)).collect();
        let (out, _) = masked(&m, &shape, &values);
        prop_assert_eq!(out.len(), cells.len());
        for (before, after) in cells.iter().zip(&out) {
            prop_assert_eq!(before.is_none(), after.is_none());
            if let Some(after) = after {
                let text = String::from_utf8(after.clone()).expect("utf-8 out");
                prop_assert!(find(&[Detector::Email, Detector::CreditCard, Detector::Secret], &text).is_empty(), "{}", text);
            }
        }
    }
}

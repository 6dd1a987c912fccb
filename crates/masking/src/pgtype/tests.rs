use super::*;

fn masker() -> Masker {
    Masker::new(b"0123456789abcdef-test-key").expect("key is long enough")
}

const CARD: &[Detector] = &[Detector::CreditCard, Detector::Email];

#[test]
fn type_classes() {
    for t in [25, 1043, 1042, 19] {
        assert_eq!(type_class(t), TypeClass::Text);
    }
    assert_eq!(type_class(114), TypeClass::Json);
    assert_eq!(type_class(3802), TypeClass::Json);
    assert_eq!(type_class(1009), TypeClass::TextArray);
    assert_eq!(type_class(1015), TypeClass::TextArray);
    for t in [20, 23, 17, 1082, 1700] {
        assert_eq!(type_class(t), TypeClass::Unmaskable);
    }
}

#[test]
fn text_types() {
    let m = masker();
    let whole = m.mask_for_type(oid::TEXT, Scope::Whole, Method::Redact, "secret");
    assert_eq!(
        whole,
        Outcome::Masked {
            value: "****".into(),
            count: 1
        }
    );
    let detect = m.mask_for_type(
        oid::VARCHAR,
        Scope::Detect(CARD),
        Method::Redact,
        "c 4111111111111111",
    );
    assert_eq!(
        detect,
        Outcome::Masked {
            value: "c ****".into(),
            count: 1
        }
    );
    assert_eq!(
        m.mask_for_type(oid::TEXT, Scope::Detect(CARD), Method::Redact, "clean"),
        Outcome::Clean
    );
}

#[test]
fn unmaskable_types_fail_closed() {
    let m = masker();
    let bigint_card = m.mask_for_type(20, Scope::Detect(CARD), Method::Redact, "4111111111111111");
    assert_eq!(bigint_card, Outcome::Unrepresentable);
    assert_eq!(
        m.mask_for_type(20, Scope::Detect(CARD), Method::Redact, "42"),
        Outcome::Clean
    );
    assert_eq!(
        m.mask_for_type(23, Scope::Whole, Method::Hash, "42"),
        Outcome::Unrepresentable
    );
}

#[test]
fn json_masks_string_values_not_keys() {
    let m = masker();
    let doc =
        r#"{"alice@example.com": "alice@example.com", "n": [1, "x 4111111111111111"], "ok": true}"#;
    let (out, n) = m.mask_json(CARD, Method::Redact, doc).expect("valid json");
    assert_eq!(n, 2);
    assert_eq!(
        out,
        r#"{"alice@example.com": "****", "n": [1, "x ****"], "ok": true}"#
    );
    serde_json::from_str::<serde_json::Value>(&out).expect("still json");
}

#[test]
fn json_numbers_holding_cards_become_strings() {
    let (out, n) = masker()
        .mask_json(CARD, Method::Partial, r#"{"c":4111111111111111,"k":1.5e3}"#)
        .expect("valid json");
    assert_eq!(
        (out.as_str(), n),
        (r#"{"c":"************1111","k":1.5e3}"#, 1)
    );
}

#[test]
fn json_escapes_survive() {
    let m = masker();
    let doc = r#"["quote \" and \\ and \u00e9 bob@example.com"]"#;
    let (out, n) = m.mask_json(CARD, Method::Redact, doc).expect("valid json");
    assert_eq!(n, 1);
    let v: Vec<String> = serde_json::from_str(&out).expect("still json");
    assert_eq!(v, ["quote \" and \\ and é ****"]);
}

#[test]
fn json_whole_masks_every_leaf_value() {
    let (out, n) = masker()
        .mask_json_values(Method::Redact, r#"{"a":"x","b":{"c":2,"d":null}}"#)
        .expect("valid json");
    assert_eq!(
        (out.as_str(), n),
        (r#"{"a":"****","b":{"c":"****","d":null}}"#, 2)
    );
}

#[test]
fn invalid_json_is_refused() {
    let m = masker();
    assert_eq!(m.mask_json(CARD, Method::Redact, "{\"a\": "), None);
    assert_eq!(
        m.mask_for_type(oid::JSONB, Scope::Detect(CARD), Method::Redact, "not json"),
        Outcome::Unrepresentable
    );
}

#[test]
fn text_arrays() {
    let m = masker();
    let arr = r#"{plain,"bob@example.com","has \"quote\"",NULL,4111111111111111}"#;
    let (out, n) = m
        .mask_array(Scope::Detect(CARD), Method::Partial, arr)
        .expect("valid array");
    assert_eq!(n, 2);
    assert_eq!(
        out,
        r#"{plain,"b****@example.com","has \"quote\"",NULL,"************1111"}"#
    );
    let (out, n) = m
        .mask_array(Scope::Whole, Method::Redact, "[0:1]={{a,b},{NULL,\"c d\"}}")
        .expect("valid array");
    assert_eq!(
        (out.as_str(), n),
        (r#"[0:1]={{"****","****"},{NULL,"****"}}"#, 3)
    );
}

#[test]
fn unicode_spaces_are_array_elements_and_ascii_control_spaces_separators() {
    // psql shows `{ }` with a no-break space: one unquoted element, which
    // PostgreSQL does not treat as whitespace. It once ended where it began
    // and the walk never finished.
    let m = masker();
    let (out, n) = m
        .mask_array(Scope::Whole, Method::Redact, "{\u{a0}}")
        .expect("valid array");
    assert_eq!((out.as_str(), n), (r#"{"****"}"#, 1));
    let (out, n) = m
        .mask_array(
            Scope::Detect(CARD),
            Method::Redact,
            "{\u{2003}x\u{a0},\x0cy\x0b}",
        )
        .expect("valid array");
    assert_eq!((out.as_str(), n), ("{\u{2003}x\u{a0},\x0cy\x0b}", 0));
    let (out, n) = m
        .mask_array(Scope::Whole, Method::Redact, "{\x0ca b\x0b}")
        .expect("valid array");
    assert_eq!((out.as_str(), n), ("{\x0c\"****\"\x0b}", 1));
}

#[test]
fn malformed_arrays_are_refused() {
    let m = masker();
    for bad in ["", "{a", "{\"a}", "a,b", "{a}}", "{a\"b}"] {
        assert_eq!(
            m.mask_array(Scope::Whole, Method::Redact, bad),
            None,
            "{bad:?}"
        );
    }
    assert_eq!(
        m.mask_for_type(oid::TEXT_ARRAY, Scope::Whole, Method::Redact, "{a"),
        Outcome::Unrepresentable
    );
}

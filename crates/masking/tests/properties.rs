//! Property tests: for random text with sensitive values embedded, masking
//! leaves none of them behind, and the scanners never panic or return
//! ranges that would split a character.

use portcullis_masking::{find, Detector, Masker, Method};
use proptest::prelude::*;

fn masker() -> Masker {
    Masker::new(b"property-test-key-0123456789").expect("key is long enough")
}

/// Appends the Luhn check digit to `body`.
fn with_luhn(body: &str) -> String {
    let sum: u32 = body
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, c)| {
            let d = u32::from(c - b'0');
            if i % 2 == 0 {
                let dd = d * 2;
                if dd > 9 {
                    dd - 9
                } else {
                    dd
                }
            } else {
                d
            }
        })
        .sum();
    format!("{body}{}", (10 - sum % 10) % 10)
}

fn card() -> impl Strategy<Value = String> {
    ("[3-6][0-9]{14}", prop::bool::ANY).prop_map(|(body, spaced)| {
        let n = with_luhn(&body);
        if spaced {
            n.as_bytes()
                .chunks(4)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            n
        }
    })
}

fn email() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9._+-]{0,10}[a-z0-9]@[a-z][a-z0-9-]{0,8}[a-z0-9]\\.(com|org|io|co\\.uk)"
}

/// A German-style IBAN with correct check digits for a random account.
fn iban() -> impl Strategy<Value = String> {
    "[0-9]{18}".prop_map(|bban| {
        let digits = format!("{bban}131400"); // "DE" = 13 14, then "00".
        let rem = digits
            .bytes()
            .fold(0u32, |acc, c| (acc * 10 + u32::from(c - b'0')) % 97);
        format!("DE{:02}{bban}", 98 - rem)
    })
}

fn secret() -> impl Strategy<Value = String> {
    prop_oneof![
        "AKIA[A-Z0-9]{16}",
        "ghp_[A-Za-z0-9]{36}",
        "glpat-[A-Za-z0-9_-]{20}",
        "xoxb-[0-9]{12}-[A-Za-z0-9]{24}",
    ]
}

fn sensitive() -> impl Strategy<Value = String> {
    prop_oneof![card(), email(), iban(), secret()]
}

/// Any Unicode, or the digits and punctuation detectors care about.
fn noise() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,20}",
        "[0-9 +@.:=A-Z-]{0,20}",
        "(password|token)[=:] ?"
    ]
}

/// Random text with sensitive values between spaces.
fn document() -> impl Strategy<Value = (String, Vec<String>)> {
    prop::collection::vec((noise(), sensitive()), 1..6).prop_map(|parts| {
        let mut text = String::new();
        let mut values = Vec::new();
        for (noise, value) in parts {
            text.push_str(&noise);
            text.push_str(" \n");
            text.push_str(&value);
            text.push_str(" \n");
            values.push(value);
        }
        (text, values)
    })
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::Redact),
        Just(Method::Partial),
        Just(Method::Hash)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn no_embedded_value_survives((text, values) in document(), method in method()) {
        let m = masker();
        let (out, count) = m.mask_text(&Detector::ALL, method, &text);
        prop_assert!(count >= values.len(), "masked {count} of {}", values.len());
        for v in &values {
            prop_assert!(!out.contains(v.as_str()), "{v:?} survived in {out:?}");
        }
        // Masking masked output is safe (and finds nothing new to leak).
        let (again, _) = m.mask_text(&Detector::ALL, method, &out);
        for v in &values {
            prop_assert!(!again.contains(v.as_str()));
        }
    }

    #[test]
    fn find_is_total_and_well_formed(text in "\\PC{0,200}|[0-9 .:@=+\\-A-Za-z\"'{}]{0,200}") {
        let found = find(&Detector::ALL, &text);
        let mut last = 0;
        for f in &found {
            prop_assert!(f.start < f.end && f.end <= text.len());
            prop_assert!(f.start >= last, "overlap or disorder: {found:?}");
            prop_assert!(text.is_char_boundary(f.start) && text.is_char_boundary(f.end));
            last = f.end;
        }
        // Every method produces text for every finding without panicking.
        for method in [Method::Redact, Method::Partial, Method::Hash] {
            let _ = masker().mask_text(&Detector::ALL, method, &text);
        }
    }

    #[test]
    fn json_stays_json(values in prop::collection::vec(sensitive(), 1..4), method in method()) {
        let doc = serde_json::json!({ "values": values, "n": 42, "nested": { "v": values[0] } }).to_string();
        let (out, count) = masker().mask_json(&Detector::ALL, method, &doc).expect("valid json in");
        prop_assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok(), "invalid json out: {out}");
        prop_assert!(count > values.len());
        for v in &values {
            prop_assert!(!out.contains(v.as_str()));
        }
    }
}

use super::*;

/// The matched substrings of `text` for one detector.
fn hits(d: Detector, text: &str) -> Vec<&str> {
    find(&[d], text)
        .iter()
        .map(|f| &text[f.start..f.end])
        .collect()
}

fn assert_hits(d: Detector, text: &str, want: &[&str]) {
    assert_eq!(hits(d, text), want, "{d} in {text:?}");
}

const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";

#[test]
fn names_round_trip_and_match_the_config() {
    for d in Detector::ALL {
        assert_eq!(d.name().parse::<Detector>(), Ok(d));
    }
    assert!("creditcard".parse::<Detector>().is_err());
    assert!("Email".parse::<Detector>().is_err());
}

#[test]
fn credit_card_positives() {
    assert_hits(
        Detector::CreditCard,
        "card 4111111111111111.",
        &["4111111111111111"],
    );
    assert_hits(
        Detector::CreditCard,
        "4111 1111 1111 1111",
        &["4111 1111 1111 1111"],
    );
    assert_hits(
        Detector::CreditCard,
        "x: 4242-4242-4242-4242;",
        &["4242-4242-4242-4242"],
    );
    assert_hits(
        Detector::CreditCard,
        "amex 3782 822463 10005",
        &["3782 822463 10005"],
    );
    assert_hits(
        Detector::CreditCard,
        "diners 3056 930902 5904",
        &["3056 930902 5904"],
    );
    assert_hits(
        Detector::CreditCard,
        "13 digits 4222222222222",
        &["4222222222222"],
    );
    // A stray number before the card, and two cards in a row.
    assert_hits(
        Detector::CreditCard,
        "12 4111 1111 1111 1111",
        &["4111 1111 1111 1111"],
    );
    assert_hits(
        Detector::CreditCard,
        "4111111111111111 5500000000000004",
        &["4111111111111111", "5500000000000004"],
    );
    assert_hits(
        Detector::CreditCard,
        "é4111111111111111é",
        &["4111111111111111"],
    );
}

#[test]
fn credit_card_near_misses() {
    // Fails Luhn.
    assert_hits(Detector::CreditCard, "4111111111111112", &[]);
    assert_hits(Detector::CreditCard, "1234 5678 9012 3456", &[]);
    // Too short, too long, glued to a word or to more digits.
    assert_hits(Detector::CreditCard, "411111111111", &[]);
    assert_hits(Detector::CreditCard, "41111111111111111111", &[]);
    assert_hits(Detector::CreditCard, "id4111111111111111", &[]);
    assert_hits(Detector::CreditCard, "4111111111111111x", &[]);
    // Unusual grouping and mixed separators.
    assert_hits(Detector::CreditCard, "41 11 11 11 11 11 11 11", &[]);
    assert_hits(Detector::CreditCard, "4111-1111 1111-1111", &[]);
}

#[test]
fn email_positives() {
    assert_hits(
        Detector::Email,
        "mail alice@example.com.",
        &["alice@example.com"],
    );
    assert_hits(
        Detector::Email,
        "<bob.o'x+tag@mail.co.uk>",
        &["x+tag@mail.co.uk"],
    );
    assert_hits(
        Detector::Email,
        "a@b.io,c.d@e-f.org",
        &["a@b.io", "c.d@e-f.org"],
    );
    assert_hits(
        Detector::Email,
        "mailto:first.last@sub.example.com",
        &["first.last@sub.example.com"],
    );
}

#[test]
fn email_near_misses() {
    assert_hits(Detector::Email, "user@localhost", &[]);
    assert_hits(Detector::Email, "@mention and foo@", &[]);
    assert_hits(Detector::Email, "a@b.c1", &[]);
    assert_hits(Detector::Email, "x@-bad.com", &[]);
    assert_hits(Detector::Email, "x@a..com", &[]);
    assert_hits(Detector::Email, "café@", &[]);
}

#[test]
fn iban_positives() {
    assert_hits(
        Detector::Iban,
        "GB82WEST12345698765432",
        &["GB82WEST12345698765432"],
    );
    assert_hits(
        Detector::Iban,
        "iban: GB82 WEST 1234 5698 7654 32.",
        &["GB82 WEST 1234 5698 7654 32"],
    );
    assert_hits(
        Detector::Iban,
        "DE89 3704 0044 0532 0130 00 EUR",
        &["DE89 3704 0044 0532 0130 00"],
    );
    assert_hits(
        Detector::Iban,
        "FR14 2004 1010 0505 0001 3M02 606",
        &["FR14 2004 1010 0505 0001 3M02 606"],
    );
    // A full last group followed by a word in capitals.
    assert_hits(
        Detector::Iban,
        "NL91 ABNA 0417 1643 00 TEST",
        &["NL91 ABNA 0417 1643 00"],
    );
    assert_hits(
        Detector::Iban,
        "NL91 ABNA 0417 1643 00",
        &["NL91 ABNA 0417 1643 00"],
    );
}

#[test]
fn iban_near_misses() {
    // Wrong check digits.
    assert_hits(Detector::Iban, "GB83WEST12345698765432", &[]);
    assert_hits(Detector::Iban, "GB82 WEST 1234 5698 7654 33", &[]);
    // Lower case, too short, glued to a word.
    assert_hits(Detector::Iban, "gb82west12345698765432", &[]);
    assert_hits(Detector::Iban, "GB82WEST1234", &[]);
    assert_hits(Detector::Iban, "XGB82WEST12345698765432", &[]);
    assert_hits(Detector::Iban, "GB82WEST12345698765432X", &[]);
}

#[test]
fn ssn_positives() {
    assert_hits(Detector::Ssn, "ssn 123-45-6789.", &["123-45-6789"]);
    assert_hits(Detector::Ssn, "(078-05-1120)", &["078-05-1120"]);
}

#[test]
fn ssn_near_misses() {
    for bad in [
        "999-12-3456",
        "000-12-3456",
        "666-12-3456",
        "123-00-4567",
        "123-45-0000",
    ] {
        assert_hits(Detector::Ssn, bad, &[]);
    }
    assert_hits(Detector::Ssn, "123456789", &[]);
    assert_hits(Detector::Ssn, "1123-45-6789", &[]);
    assert_hits(Detector::Ssn, "123-45-67890", &[]);
    assert_hits(Detector::Ssn, "123-45-6789-1", &[]);
    assert_hits(Detector::Ssn, "2024-01-15", &[]);
}

#[test]
fn phone_positives() {
    assert_hits(
        Detector::Phone,
        "call +1 202 555 0143 now",
        &["+1 202 555 0143"],
    );
    assert_hits(Detector::Phone, "+442079460958", &["+442079460958"]);
    assert_hits(Detector::Phone, "+49 (0)30 1234567", &["+49 (0)30 1234567"]);
    assert_hits(Detector::Phone, "(202) 555-0143", &["(202) 555-0143"]);
    assert_hits(Detector::Phone, "tel 202-555-0143.", &["202-555-0143"]);
    assert_hits(Detector::Phone, "202.555.0143", &["202.555.0143"]);
    assert_hits(Detector::Phone, "1-202-555-0143", &["1-202-555-0143"]);
}

#[test]
fn phone_near_misses() {
    // Plain numbers, dates, versions, wrong area code, too many digits.
    for bad in [
        "2025550143",
        "2024-01-15",
        "1.2.3",
        "123-555-0143",
        "202-155-0143",
        "202-555.0143",
        "+1234567",
        "+1234567890123456",
        "3+44 20 7946 0958",
        "total 12345678",
    ] {
        assert_hits(Detector::Phone, bad, &[]);
    }
}

#[test]
fn ip_positives() {
    assert_hits(Detector::Ip, "from 192.168.1.20.", &["192.168.1.20"]);
    assert_hits(
        Detector::Ip,
        "0.0.0.0 255.255.255.255",
        &["0.0.0.0", "255.255.255.255"],
    );
    assert_hits(
        Detector::Ip,
        "v6 2001:db8::8a2e:370:7334,",
        &["2001:db8::8a2e:370:7334"],
    );
    assert_hits(Detector::Ip, "[::1]:5432", &["::1"]);
    assert_hits(Detector::Ip, "fe80::1.", &["fe80::1"]);
    assert_hits(Detector::Ip, "::ffff:10.0.0.1", &["::ffff:10.0.0.1"]);
    assert_hits(
        Detector::Ip,
        "2001:0db8:0000:0000:0000:ff00:0042:8329",
        &["2001:0db8:0000:0000:0000:ff00:0042:8329"],
    );
}

#[test]
fn ip_near_misses() {
    for bad in [
        "256.1.1.1",
        "1.2.3",
        "1.2.3.4.5",
        "01.2.3.4",
        "v1.2.3.4",
        "std::io::Result",
        "dead::beef",
        "12:30:45",
        "00:1a:2b:3c:4d:5e",
        "a::b",
        "::",
    ] {
        assert_hits(Detector::Ip, bad, &[]);
    }
}

#[test]
fn jwt_positives() {
    let text = format!("Authorization: Bearer {JWT}\n");
    assert_hits(Detector::Jwt, &text, &[JWT]);
    let unsigned = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.";
    assert_hits(Detector::Jwt, &format!("{unsigned} end"), &[unsigned]);
}

#[test]
fn jwt_near_misses() {
    // A header without "alg" ({"typ":"JWT"}), two segments, not JSON.
    assert_hits(
        Detector::Jwt,
        "eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiJ4In0.c2ln",
        &[],
    );
    assert_hits(Detector::Jwt, "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0", &[]);
    assert_hits(Detector::Jwt, "eyeball.eyebrow.eyelid", &[]);
    assert_hits(Detector::Jwt, &format!("x{JWT}"), &[]);
}

#[test]
fn secret_prefixed_tokens() {
    let gh = format!("ghp_{}", "a1B2".repeat(9));
    let cases = [
        "AKIAIOSFODNN7EXAMPLE",
        "ASIAY34FZKBOKMUTVV7A",
        gh.as_str(),
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVW",
        "glpat-xxxxxxxxxxxxxxxxxxxx",
        "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    ];
    for token in cases {
        assert_hits(Detector::Secret, &format!("key {token} end"), &[token]);
    }
}

#[test]
fn secret_prefixed_near_misses() {
    for bad in [
        "AKIAIOSFODNN7EXAMPL",
        "AKIAIOSFODNN7EXAMPLEX",
        "akiaiosfodnn7example",
        "XAKIAIOSFODNN7EXAMPLE",
        "ghp_short",
        "glpat-short",
        "xoxb-1",
        "xoxz-123456789012-abc",
    ] {
        assert_hits(Detector::Secret, bad, &[]);
    }
}

#[test]
fn secret_pem_blocks() {
    let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----";
    assert_hits(Detector::Secret, &format!("key:\n{pem}\nrest"), &[pem]);
    let open = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg";
    assert_hits(Detector::Secret, &format!("x {open}"), &[open]);
    // Certificates and public keys are not secrets.
    assert_hits(
        Detector::Secret,
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
        &[],
    );
    assert_hits(
        Detector::Secret,
        "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----",
        &[],
    );
}

#[test]
fn secret_assignments() {
    assert_hits(Detector::Secret, "password=hunter2", &["hunter2"]);
    // Decision: a password key masks any value, even a weak one.
    assert_hits(Detector::Secret, "password=password", &["password"]);
    assert_hits(
        Detector::Secret,
        r#"{"db_password": "s3cr\"et"}"#,
        &[r#"s3cr\"et"#],
    );
    assert_hits(Detector::Secret, "PGPASSWORD='x y z' psql", &["x y z"]);
    assert_hits(
        Detector::Secret,
        "api_key=9f8e7d6c5b4a39281706",
        &["9f8e7d6c5b4a39281706"],
    );
    assert_hits(
        Detector::Secret,
        r#""client_secret":"Zx81-qLm0pR7vT2w""#,
        &["Zx81-qLm0pR7vT2w"],
    );
    assert_hits(
        Detector::Secret,
        "GITHUB_TOKEN: Q2xhc3NpY1Rva2Vu9x",
        &["Q2xhc3NpY1Rva2Vu9x"],
    );
    assert_hits(
        Detector::Secret,
        "postgres://app:Pa55w0rd@db:5432/x",
        &["Pa55w0rd"],
    );
}

#[test]
fn secret_assignment_near_misses() {
    for bad in [
        // Low entropy or short for token-like keys.
        "token=aaaaaaaaaaaaaaaa",
        "secret=password",
        "api_key=changeme",
        "next_page_token=",
        // Placeholders, empty values, comparisons, unrelated keys.
        "password=null",
        "password: \nnext",
        "if password == x",
        "keyboard=Zx81qLm0pR7vT2wQ",
        "https://example.com/path",
    ] {
        assert_hits(Detector::Secret, bad, &[]);
    }
}

#[test]
fn overlaps_are_merged_in_order() {
    let text = format!("token={JWT} and 4111111111111111");
    let found = find(
        &[Detector::Jwt, Detector::Secret, Detector::CreditCard],
        &text,
    );
    assert_eq!(found.len(), 2);
    assert_eq!(&text[found[0].start..found[0].end], JWT);
    assert_eq!(&text[found[1].start..found[1].end], "4111111111111111");
    assert!(found[0].end <= found[1].start);
}

#[test]
fn no_detectors_find_nothing() {
    assert!(find(&[], "4111111111111111 alice@example.com").is_empty());
}

#[test]
fn entropy_figures() {
    assert!(secret::entropy(b"aaaaaaaa") < 0.01);
    assert!((secret::entropy(b"abcdefgh") - 3.0).abs() < 1e-9);
}

#[test]
fn luhn_helper_agrees() {
    assert!(card::luhn_str("4111111111111111"));
    assert!(!card::luhn_str("4111111111111112"));
}

/// The smallest match of each detector, sitting right at its pre-filter's
/// threshold (13 digits for a card, 15 characters for an IBAN, the lone
/// `=` of an assignment…): none may be skipped.
#[test]
fn pre_filters_let_the_smallest_matches_through() {
    for (d, text) in [
        (Detector::CreditCard, "4222222222222"),
        (Detector::Email, "a@b.co"),
        (Detector::Iban, "NO9386011117947"),
        (Detector::Ssn, "123-45-6789"),
        (Detector::Phone, "+1 234 5678"),
        (Detector::Ip, "1.2.3.4"),
        (Detector::Ip, "::1"),
        (Detector::Jwt, "eyJhbGciOiJub25lIn0.e30."),
        (Detector::Secret, "AKIAIOSFODNN7EXAMPLE"),
        (Detector::Secret, "ghp_abcdefghijklmnopqrstuvwxyz0123456789"),
        (Detector::Secret, "xoxb-1234567890"),
        (Detector::Secret, "-----BEGIN RSA PRIVATE KEY-----"),
    ] {
        assert_hits(d, text, &[text]);
    }
    assert_hits(Detector::Secret, "password=x", &["x"]);
    assert_hits(Detector::Secret, "pwd:1", &["1"]);
    assert_hits(Detector::Secret, "postgres://u:p@h", &["p"]);
}

#[test]
fn pre_filters_skip_text_without_triggers() {
    let t = Traits::of("customer 123, order 4567 ok");
    assert_eq!(t.digits, 7);
    for d in Detector::ALL {
        assert!(!d.may_match(&t), "{d}");
    }
    let t = Traits::of("Grüße: a@b.c");
    assert!(t.has(Traits::UPPER | Traits::COLON | Traits::AT | Traits::DOT));
    assert!(!t.has_any(Traits::DASH | Traits::EQUALS | Traits::Y | Traits::TOKEN_HEAD));
}

mod pre_filter_properties {
    use super::*;
    use proptest::prelude::*;

    /// Pieces that are, or almost are, what the detectors look for, so that
    /// random texts land on both sides of every pre-filter's threshold.
    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            "[0-9]{1,19}",
            "[0-9]{4}([ -][0-9]{4}){0,4}",
            Just("4222222222222".to_string()),
            "[a-z]{1,3}@[a-z]{1,3}(\\.[a-z]{1,3}){0,2}",
            "[A-Z]{2}[0-9]{2}( ?[A-Z0-9]{4}){0,5}",
            Just("NO9386011117947".to_string()),
            "[0-9]{3}-[0-9]{2}-[0-9]{4}",
            "\\+?[0-9]{1,3}[ .-]?[0-9]{3}[ .-]?[0-9]{4}",
            "[0-9]{1,3}(\\.[0-9]{1,3}){0,4}|[0-9a-f:]{1,12}",
            "[0-9](\\.[0-9]){3}",
            Just(JWT.to_string()),
            Just("eyJhbGciOiJub25lIn0.e30.".to_string()),
            "(password|pwd|token|api_key)[=:] ?[A-Za-z0-9]{0,16}",
            "(AKIA|ghp_|xoxb-|glpat-)[A-Z0-9a-z_-]{0,40}",
            "-----(BEGIN|END) [A-Z ]{0,16}-----",
            "[a-z]{1,6}://[a-z]{0,4}:?[a-z0-9]{0,4}@?[a-z]{0,4}",
            "\\PC{0,8}",
            "[ .:=@/-]{1,3}",
        ]
    }

    fn text() -> impl Strategy<Value = String> {
        prop::collection::vec(piece(), 0..8).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Pre-filtering only ever saves work: every detector finds
        /// exactly what its unfiltered scan finds.
        #[test]
        fn pre_filters_never_change_findings(text in text()) {
            let traits = Traits::of(&text);
            let found = |ds: &[Detector], traits: &Traits| {
                let mut found = Vec::new();
                find_with(ds, &text, traits, &mut found);
                found
            };
            for d in Detector::ALL {
                prop_assert_eq!(
                    found(&[d], &traits),
                    found(&[d], &Traits::ANY),
                    "{} in {:?}", d, text
                );
            }
            prop_assert_eq!(found(&Detector::ALL, &traits), found(&Detector::ALL, &Traits::ANY));
        }
    }
}

/// Scanners jump over whole words (cards, IBANs and tokens cannot start
/// inside one); what follows the word is still scanned.
#[test]
fn matches_start_after_words_not_inside_them() {
    assert_hits(
        Detector::CreditCard,
        "deadbeef1234,4111111111111111 x4111111111111111",
        &["4111111111111111"],
    );
    assert_hits(
        Detector::Iban,
        "AB12GB82WEST12345698765432 (GB82WEST12345698765432)",
        &["GB82WEST12345698765432"],
    );
    assert_hits(
        Detector::Secret,
        "_AKIAIOSFODNN7EXAMPLE 9f8e-AKIAIOSFODNN7EXAMPLE",
        &["AKIAIOSFODNN7EXAMPLE"],
    );
}

/// Card runs are read a few groups at a time; a card far along a run of
/// groups, or two cards back to back, are still found whole.
#[test]
fn cards_deep_in_long_runs_of_groups() {
    assert_hits(
        Detector::CreditCard,
        "1 2 3 4 5 6 7 8 9 10 4111 1111 1111 1111 2",
        &["4111 1111 1111 1111"],
    );
    assert_hits(
        Detector::CreditCard,
        "4111-1111-1111-1111-4242-4242-4242-4242",
        &["4111-1111-1111-1111", "4242-4242-4242-4242"],
    );
}

#[test]
fn find_into_replaces_what_the_buffer_held() {
    let mut found = find(&[Detector::Email], "a@b.co and c@d.co");
    find_into(&[Detector::Email], "only e@f.co", &mut found);
    assert_eq!(found, vec![Finding::new(Detector::Email, 5, 11)]);
    find_into(&[Detector::Email], "nothing", &mut found);
    assert!(found.is_empty());
}

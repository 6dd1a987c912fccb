//! Micro benchmark of `mask_text` with every detector on: run with
//! `cargo test --release -p portcullis-masking --test bench -- --ignored --nocapture --test-threads=1`.
//! No benchmark framework, to keep dependencies lean; the figure is for
//! comparing changes on one machine, not an absolute promise.

use std::hint::black_box;
use std::time::Instant;

use portcullis_masking::pgtype::oid;
use portcullis_masking::{Detector, Masker, Method, Scope};

/// About 1 MiB of log-like and row-like text, roughly one value in ten
/// lines sensitive.
fn corpus() -> String {
    let lines = [
        "2024-05-01 12:00:01 INFO request id=42 path=/api/orders took 12ms status=200\n",
        "customer Alice Smith ordered 3 items totalling 129.95 EUR on 2024-05-01\n",
        "note: call back next week about the delivery window, ticket #18234\n",
        "{\"sku\": \"AB-1234\", \"qty\": 2, \"price\": 19.99, \"tags\": [\"red\", \"xl\"]}\n",
        "Grüße aus München — the parcel arrived damaged; customer wants a refund\n",
        "payment with card 4111 1111 1111 1111 from alice@example.com ok\n",
        "connecting to 10.0.12.7 as app with password=hunter2 retry=3\n",
        "version 1.2.3 build 2024.05.01 commit 9f8e7d6 branch main\n",
        "wire to GB82 WEST 1234 5698 7654 32 reference INV-2024-0042\n",
        "select * from orders where id in (1, 2, 3) limit 1000\n",
    ];
    let mut text = String::new();
    while text.len() < 1 << 20 {
        for l in lines {
            text.push_str(l);
        }
    }
    text
}

#[test]
#[ignore = "benchmark; run with --release --ignored --nocapture"]
fn mask_text_ns_per_byte() {
    let masker = Masker::new(b"benchmark-key-0123456789").expect("key is long enough");
    let text = corpus();
    let rounds = 20;
    for (name, detectors) in [
        ("all detectors", &Detector::ALL[..]),
        ("credit_card only", &[Detector::CreditCard][..]),
    ] {
        let start = Instant::now();
        let mut masked = 0;
        for _ in 0..rounds {
            masked += black_box(masker.mask_text(detectors, Method::Hash, black_box(&text))).1;
        }
        let ns = start.elapsed().as_nanos() as f64 / (rounds * text.len()) as f64;
        println!(
            "{name}: {ns:.2} ns/byte over {} bytes, {} values masked per pass",
            text.len(),
            masked / rounds
        );
    }
    for d in Detector::ALL {
        let start = Instant::now();
        for _ in 0..rounds {
            black_box(portcullis_masking::find(&[d], black_box(&text)));
        }
        let ns = start.elapsed().as_nanos() as f64 / (rounds * text.len()) as f64;
        println!("  find {d}: {ns:.2} ns/byte");
    }
    // Clean text, the common case.
    let clean: String = corpus()
        .lines()
        .filter(|l| l.starts_with("note") || l.starts_with("select"))
        .collect();
    let start = Instant::now();
    for _ in 0..rounds {
        black_box(masker.mask_text(&Detector::ALL, Method::Hash, black_box(&clean)));
    }
    let ns = start.elapsed().as_nanos() as f64 / (rounds * clean.len()) as f64;
    println!(
        "clean text, all detectors: {ns:.2} ns/byte over {} bytes",
        clean.len()
    );
}

/// Inputs built to make scanners backtrack; each must stay near-linear.
#[test]
#[ignore = "benchmark; run with --release --ignored --nocapture"]
fn pathological_inputs() {
    let masker = Masker::new(b"benchmark-key-0123456789").expect("key is long enough");
    let mib = 1 << 20;
    for unit in [
        "1 ",
        "AB12 ",
        "a:",
        "a@",
        "token=",
        "password=x",
        "ey",
        "-----BEGIN ",
        "+1 ",
        "9",
        "é",
    ] {
        let text = unit.repeat(mib / unit.len());
        let start = Instant::now();
        black_box(masker.mask_text(&Detector::ALL, Method::Redact, black_box(&text)));
        let ns = start.elapsed().as_nanos() as f64 / text.len() as f64;
        println!("{unit:?} x {}: {ns:.2} ns/byte", text.len() / unit.len());
    }
}

/// The cells of `scripts/bench`'s masked-read rows: an id, a name, a
/// declared email column, a card and a note with a key in it. Short cells
/// are what a gateway masks, so per-value overhead counts here, not the
/// per-byte scan speed the 1 MiB corpus measures.
fn rows(n: u32) -> Vec<[String; 5]> {
    let mut seed = 0x9e37_79b9_u32;
    let mut hex = || -> String {
        (0..32)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                char::from(b"0123456789abcdef"[(seed >> 28) as usize])
            })
            .collect()
    };
    (1..=n)
        .map(|g| {
            [
                g.to_string(),
                format!("customer {g}"),
                format!("user{g}@example.com"),
                "4111 1111 1111 1111".to_string(),
                format!("ticket {} key AKIAIOSFODNN7EXAMPLE", hex()),
            ]
        })
        .collect()
}

#[test]
#[ignore = "benchmark; run with --release --ignored --nocapture"]
fn masked_read_rows_ns_per_row() {
    let masker = Masker::new(b"benchmark-key-0123456789").expect("key is long enough");
    let detectors = [
        Detector::CreditCard,
        Detector::Email,
        Detector::Iban,
        Detector::Secret,
    ];
    let rows = rows(1000);
    let rounds = 200;
    let start = Instant::now();
    let mut masked = 0;
    for _ in 0..rounds {
        for row in &rows {
            for (i, cell) in row.iter().enumerate() {
                let (type_oid, scope) = match i {
                    0 => (23, Scope::Detect(&detectors)),
                    2 => (oid::TEXT, Scope::Whole),
                    _ => (oid::TEXT, Scope::Detect(&detectors)),
                };
                let outcome =
                    masker.mask_for_type(type_oid, scope, Method::Partial, black_box(cell));
                masked += usize::from(outcome != portcullis_masking::Outcome::Clean);
            }
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / (rounds * rows.len()) as f64;
    println!(
        "masked-read rows: {ns:.0} ns/row, {} cells masked per row",
        masked / (rounds * rows.len())
    );
}

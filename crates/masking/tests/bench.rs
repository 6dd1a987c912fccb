//! Micro benchmark of `mask_text` with every detector on: run with
//! `cargo test --release -p portcullis-masking --test bench -- --ignored --nocapture --test-threads=1`.
//! No benchmark framework, to keep dependencies lean; the figure is for
//! comparing changes on one machine, not an absolute promise.

use std::hint::black_box;
use std::time::Instant;

use portcullis_masking::{Detector, Masker, Method};

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

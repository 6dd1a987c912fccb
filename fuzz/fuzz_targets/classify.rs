//! The classification cache is only sound if two statements with the same
//! cache key always classify the same, whatever their literals. Each input
//! is classified through a cache, then a variant of it (digits and letters
//! inside single quotes shifted, so literals change and the key usually
//! does not) is classified through the same cache and must match what a
//! full parse of the variant says. A wrong hit would let one statement be
//! decided by another's class. Nothing may panic either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_policy::{classify, normalize, Classifier};

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let cache = Classifier::new(64);
    let first = cache.classify(sql);
    let fresh = classify(sql);
    assert_eq!(
        first.as_deref().ok(),
        fresh.as_ref().ok(),
        "a miss must be a full parse: {sql:?}"
    );

    let variant = shift_literals(sql);
    let cached = cache.classify(&variant);
    let parsed = classify(&variant);
    let key = normalize(sql);
    if key.is_some() && key == normalize(&variant) {
        assert_eq!(
            cached.as_deref().ok(),
            parsed.as_ref().ok(),
            "{variant:?} was classified as {sql:?}"
        );
    }
});

/// Digits anywhere, and letters between single quotes, moved on by one:
/// `where id = 41 and name = 'ab'` → `where id = 52 and name = 'bc'`.
fn shift_literals(sql: &str) -> String {
    let mut quoted = false;
    sql.chars()
        .map(|c| {
            if c == '\'' {
                quoted = !quoted;
            }
            match c {
                '0'..='8' => char::from(c as u8 + 1),
                '9' => '0',
                'a'..='y' | 'A'..='Y' if quoted => char::from(c as u8 + 1),
                'z' if quoted => 'a',
                'Z' if quoted => 'A',
                _ => c,
            }
        })
        .collect()
}

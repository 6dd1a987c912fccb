//! What masking does with any value a database can return: detectors and
//! maskers over arbitrary text, and typed masking (text, JSON, text arrays)
//! for declared columns and detectors alike. Nothing may panic, findings
//! stay on char boundaries and in order, and a value is masked the same way
//! whether into a fresh buffer or after other values in a reused one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_masking::{find, Detector, DetectorCounts, MaskBuf, Masker, Method, Scope, Written};

/// text, json, jsonb, text[]
const OIDS: [u32; 4] = [25, 114, 3802, 1009];
const METHODS: [Method; 3] = [Method::Redact, Method::Partial, Method::Hash];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let found = find(&Detector::ALL, &text);
    let mut end = 0;
    for f in &found {
        assert!(f.start >= end && f.start < f.end && f.end <= text.len());
        assert!(text.is_char_boundary(f.start) && text.is_char_boundary(f.end));
        end = f.end;
    }

    let masker = Masker::new(b"fuzzing-key-0123456789").expect("key long enough");
    let method = METHODS[usize::from(selector) % METHODS.len()];
    let (masked, count) = masker.mask_text(&Detector::ALL, method, &text);
    assert_eq!(count == 0, found.is_empty());
    if count == 0 {
        assert_eq!(masked, text);
    }

    let oid = OIDS[usize::from(selector >> 2) % OIDS.len()];
    let scope = if selector & 0x80 == 0 {
        Scope::Detect(&Detector::ALL)
    } else {
        Scope::Whole
    };
    let mut reused = MaskBuf::default();
    reused.text.push_str("an earlier value");
    let counts = &mut DetectorCounts::default();
    let after = masker.mask_for_type_into(oid, scope, method, &text, counts, &mut reused);
    let mut fresh = MaskBuf::default();
    let alone = masker.mask_for_type_into(oid, scope, method, &text, counts, &mut fresh);
    assert_eq!(after, alone);
    if matches!(alone, Written::Masked { .. }) {
        assert_eq!(
            reused.text.strip_prefix("an earlier value"),
            Some(fresh.text.as_str())
        );
    }
});

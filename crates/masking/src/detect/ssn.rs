//! US social security numbers in their printed form, `AAA-GG-SSSS`.
//!
//! Only the dashed form: nine bare digits are far too common to mean an
//! SSN. Numbers the SSA never issues are excluded (area 000, 666 and
//! 900–999; group 00; serial 0000), which also removes most dates and
//! reference numbers that happen to have the same shape.

use super::{digits_at, word_at, word_before, Detector, Finding};

pub(super) fn scan(text: &str, out: &mut Vec<Finding>) {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() || word_before(b, i) || (i > 0 && b[i - 1] == b'-') {
            i += 1;
            continue;
        }
        match shape_end(b, i) {
            Some(end) if issued(&b[i..end]) => {
                out.push(Finding::new(Detector::Ssn, i, end));
                i = end;
            }
            // Skip the rest of this digit run: it cannot start a match.
            _ => i += digits_at(b, i).max(1),
        }
    }
}

/// End of `ddd-dd-dddd` at `i`, not glued to more digits, dashes or words.
fn shape_end(b: &[u8], i: usize) -> Option<usize> {
    let ok = digits_at(b, i) == 3
        && b.get(i + 3) == Some(&b'-')
        && digits_at(b, i + 4) == 2
        && b.get(i + 6) == Some(&b'-')
        && digits_at(b, i + 7) == 4;
    let end = i + 11;
    let glued = word_at(b, end) || (b.get(end) == Some(&b'-') && word_at(b, end + 1));
    (ok && !glued).then_some(end)
}

/// Whether `ddd-dd-dddd` lies in the ranges the SSA issues.
fn issued(s: &[u8]) -> bool {
    let area = &s[0..3];
    let group = &s[4..6];
    let serial = &s[7..11];
    area != b"000" && area != b"666" && area[0] != b'9' && group != b"00" && serial != b"0000"
}

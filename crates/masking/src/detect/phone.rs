//! Phone numbers, conservatively: `+` international (E.164) numbers with
//! the usual separators, and North American national forms
//! (`(202) 555-0143`, `202-555-0143`, `202.555.0143`, `1-202-555-0143`).
//!
//! Any other digit run is left alone: prices, ids, dates and counts are
//! far more common than phone numbers without a `+`, and a detector that
//! fires on every number makes masked results useless. The North American
//! form also needs a valid area code and exchange (first digit 2–9).

use super::{digits_at, word_at, word_before, Detector, Finding};

/// E.164 allows at most 15 digits; fewer than 8 is not a full number.
pub(super) const E164_MIN: usize = 8;
const E164_MAX: usize = 15;

pub(super) fn scan(text: &str, out: &mut Vec<Finding>) {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let end = match b[i] {
            b'+' => e164(b, i),
            b'(' | b'1'..=b'9' => national(b, i),
            _ => None,
        };
        match end {
            Some(end) => {
                out.push(Finding::new(Detector::Phone, i, end));
                i = end;
            }
            // Skip the rest of a digit run: it cannot start a match.
            None => i += digits_at(b, i).max(1),
        }
    }
}

fn is_sep(c: u8) -> bool {
    matches!(c, b' ' | b'-' | b'.' | b'(' | b')')
}

/// `+` then 8–15 digits with single separators between them.
fn e164(b: &[u8], i: usize) -> Option<usize> {
    if (i > 0 && (b[i - 1].is_ascii_digit() || word_before(b, i)))
        || !matches!(b.get(i + 1), Some(b'1'..=b'9'))
    {
        return None;
    }
    let (mut p, mut end, mut digits, mut seps) = (i + 1, i + 1, 0, 0);
    while p < b.len() {
        if b[p].is_ascii_digit() {
            digits += 1;
            seps = 0;
            end = p + 1;
        } else if is_sep(b[p]) && seps < 2 {
            seps += 1;
        } else {
            break;
        }
        p += 1;
    }
    let clean = !word_at(b, end);
    ((E164_MIN..=E164_MAX).contains(&digits) && clean).then_some(end)
}

/// A North American number at `i`, with an optional `1` trunk prefix.
fn national(b: &[u8], i: usize) -> Option<usize> {
    if word_before(b, i) || (i > 0 && matches!(b[i - 1], b'+' | b'-' | b'.')) {
        return None;
    }
    nanp(b, i).or_else(|| {
        let trunk = b[i] == b'1' && matches!(b.get(i + 1), Some(b'-' | b' ' | b'.'));
        if trunk {
            nanp(b, i + 2)
        } else {
            None
        }
    })
}

/// `(NXX) NXX-XXXX`, `(NXX)NXX-XXXX`, or `NXX-NXX-XXXX` with `-`, `.` or ` `.
fn nanp(b: &[u8], i: usize) -> Option<usize> {
    let (area, mut p) = if b.get(i) == Some(&b'(') {
        let ok = digits_at(b, i + 1) == 3 && b.get(i + 4) == Some(&b')');
        let p = if b.get(i + 5) == Some(&b' ') {
            i + 6
        } else {
            i + 5
        };
        (ok.then_some(i + 1)?, p)
    } else {
        let sep = *b.get(i + 3)?;
        let ok =
            digits_at(b, i) == 3 && matches!(sep, b'-' | b'.' | b' ') && b.get(i + 7) == Some(&sep);
        (ok.then_some(i)?, i + 4)
    };
    if digits_at(b, p) != 3 || !nxx(b[area]) || !nxx(b[p]) {
        return None;
    }
    let sep = *b.get(p + 3)?;
    p += 4;
    let ok = matches!(sep, b'-' | b'.' | b' ') && digits_at(b, p) == 4;
    let end = p + 4;
    let glued = word_at(b, end) || (matches!(b.get(end), Some(b'-' | b'.')) && word_at(b, end + 1));
    (ok && !glued).then_some(end)
}

/// Area codes and exchanges start with 2–9.
fn nxx(c: u8) -> bool {
    (b'2'..=b'9').contains(&c)
}

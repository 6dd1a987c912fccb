//! International bank account numbers: country code, two check digits and
//! up to 30 letters or digits, compact (`GB82WEST12345698765432`) or in
//! groups of four (`GB82 WEST 1234 5698 7654 32`), accepted only when the
//! ISO 7064 mod-97 checksum holds.
//!
//! Upper case only, as printed; the checksum leaves one random candidate
//! in 97, and the shape (two letters, two digits, 15–34 characters, clean
//! boundaries) removes most of those. Per-country lengths are not checked.

use super::{is_word, next_start, word_before, Detector, Finding};

pub(super) const MIN_LEN: usize = 15;
const MAX_LEN: usize = 34;

pub(super) fn scan(text: &str, out: &mut Vec<Finding>) {
    let b = text.as_bytes();
    let mut i = 0;
    while i + 4 <= b.len() {
        if !starts_iban(b, i) {
            i = next_start(b, i);
            continue;
        }
        match longest_valid(b, i) {
            Some(end) => {
                out.push(Finding::new(Detector::Iban, i, end));
                i = end;
            }
            None => i = next_start(b, i),
        }
    }
}

fn is_iban_char(c: u8) -> bool {
    c.is_ascii_uppercase() || c.is_ascii_digit()
}

/// Two capitals and two digits, not glued to a word before.
fn starts_iban(b: &[u8], i: usize) -> bool {
    b[i].is_ascii_uppercase()
        && b[i + 1].is_ascii_uppercase()
        && b[i + 2].is_ascii_digit()
        && b[i + 3].is_ascii_digit()
        && !word_before(b, i)
}

/// End of the longest checksum-valid IBAN at `i`, trying shorter prefixes
/// so that trailing words in capitals (`… 32 EURO`) do not hide it. The
/// mod-97 remainder is carried from one candidate end to the next, so
/// each start costs one pass however many ends it has.
fn longest_valid(b: &[u8], i: usize) -> Option<usize> {
    let head = &b[i..i + 4];
    let (mut rem, mut len, mut pos, mut best) = (0, 4, i + 4, None);
    for end in candidate_ends(b, i) {
        for &c in b[pos..end].iter().filter(|&&c| c != b' ') {
            rem = mod97_step(rem, c);
            len += 1;
        }
        pos = end;
        // ISO 7064 mod 97-10: the first four characters count last.
        let total = head.iter().fold(rem, |r, &c| mod97_step(r, c));
        if (MIN_LEN..=MAX_LEN).contains(&len) && total == 1 && !ends_in_word(b, end) {
            best = Some(end);
        }
    }
    best
}

fn ends_in_word(b: &[u8], end: usize) -> bool {
    b.get(end).is_some_and(|&c| is_word(c))
}

/// Possible ends, shortest first: after each group when grouped by spaces,
/// otherwise the end of the compact run.
fn candidate_ends(b: &[u8], i: usize) -> Vec<usize> {
    if b.get(i + 4) != Some(&b' ') {
        let run = b[i..].iter().take_while(|&&c| is_iban_char(c)).count();
        return if run <= MAX_LEN {
            vec![i + run]
        } else {
            Vec::new()
        };
    }
    let mut ends = vec![i + 4];
    let mut p = i + 4;
    let mut total = 4;
    while b.get(p) == Some(&b' ') && total < MAX_LEN {
        let g = b[p + 1..]
            .iter()
            .take(5)
            .take_while(|&&c| is_iban_char(c))
            .count();
        if g == 0 || g > 4 {
            break;
        }
        p += 1 + g;
        total += g;
        ends.push(p);
        if g < 4 {
            break;
        }
    }
    ends
}

/// One character into a running mod-97 remainder; letters count as 10..35.
fn mod97_step(acc: u32, c: u8) -> u32 {
    if c.is_ascii_digit() {
        (acc * 10 + u32::from(c - b'0')) % 97
    } else {
        (acc * 100 + u32::from(c - b'A') + 10) % 97
    }
}

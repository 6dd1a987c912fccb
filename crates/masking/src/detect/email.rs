//! Email addresses: `local@domain.tld`.
//!
//! Triggered by `@`, then the local part is read leftwards and the domain
//! rightwards. Conservative on purpose: the local part uses the common
//! characters (`A-Z a-z 0-9 . _ % + -`), the domain needs a dot and an
//! alphabetic TLD, so `user@localhost` and `@mentions` are left alone.

use super::{Detector, Finding};

const MAX_LOCAL: usize = 64;
const MAX_DOMAIN: usize = 253;

pub(super) fn scan(text: &str, out: &mut Vec<Finding>) {
    let b = text.as_bytes();
    // Leftward reads never go back past the previous match or `@`.
    let mut floor = 0;
    let mut from = 0;
    while let Some(off) = b[from..].iter().position(|&c| c == b'@') {
        let at = from + off;
        match (local_start(b, floor, at), domain_end(b, at + 1)) {
            (Some(start), Some(end)) => {
                out.push(Finding::new(Detector::Email, start, end));
                floor = end;
                from = end;
            }
            _ => {
                floor = at + 1;
                from = at + 1;
            }
        }
    }
}

fn is_local(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-')
}

/// Start of the local part ending just before `at`, if it is a plausible one.
fn local_start(b: &[u8], floor: usize, at: usize) -> Option<usize> {
    let mut s = at;
    while s > floor && is_local(b[s - 1]) {
        s -= 1;
        if at - s > MAX_LOCAL {
            return None;
        }
    }
    while s < at && b[s] == b'.' {
        s += 1;
    }
    let ok = s < at && b[at - 1] != b'.';
    ok.then_some(s)
}

/// End of a dotted domain starting at `from`, if it is a plausible one.
fn domain_end(b: &[u8], from: usize) -> Option<usize> {
    let mut e = from;
    while e < b.len()
        && e - from < MAX_DOMAIN
        && (b[e].is_ascii_alphanumeric() || matches!(b[e], b'.' | b'-'))
    {
        e += 1;
    }
    // A sentence may end right after the address.
    while e > from && matches!(b[e - 1], b'.' | b'-') {
        e -= 1;
    }
    valid_domain(&b[from..e]).then_some(e)
}

fn valid_domain(d: &[u8]) -> bool {
    let mut labels = 0;
    let mut last: &[u8] = &[];
    for label in d.split(|&c| c == b'.') {
        let bad_edge = label.first() == Some(&b'-') || label.last() == Some(&b'-');
        if label.is_empty() || label.len() > 63 || bad_edge {
            return false;
        }
        labels += 1;
        last = label;
    }
    labels >= 2 && last.len() >= 2 && last.iter().all(u8::is_ascii_alphabetic)
}

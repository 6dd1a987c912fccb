//! IP addresses: dotted-quad IPv4 with valid octets, and IPv6 in any form
//! std's parser accepts (compressed `::`, IPv4-suffixed `::ffff:10.0.0.1`).
//!
//! IPv6 candidates are maximal runs of hex digits, `:` and `.` around a
//! colon, handed to [`Ipv6Addr`]'s parser; requiring a decimal digit keeps
//! `std::io`-like paths and `dead::beef` out.

use std::net::Ipv6Addr;

use super::{word_at, word_before, Detector, Finding};

pub(super) fn scan(text: &str, out: &mut Vec<Finding>) {
    scan_v6(text, out);
    scan_v4(text.as_bytes(), out);
}

fn scan_v4(b: &[u8], out: &mut Vec<Finding>) {
    let mut i = 0;
    while i < b.len() {
        let starts = b[i].is_ascii_digit() && !word_before(b, i) && !(i > 0 && b[i - 1] == b'.');
        if !starts {
            i += 1;
            continue;
        }
        match v4_end(b, i) {
            Some(end) => {
                out.push(Finding::new(Detector::Ip, i, end));
                i = end;
            }
            None => {
                i += b[i..]
                    .iter()
                    .take_while(|c| c.is_ascii_digit() || **c == b'.')
                    .count()
            }
        }
    }
}

/// End of `a.b.c.d` at `i`: four octets 0–255 without leading zeros, not
/// glued to another `.digit` (version strings like `1.2.3.4.5`) or a word.
fn v4_end(b: &[u8], i: usize) -> Option<usize> {
    let mut p = i;
    for octet in 0..4 {
        if octet > 0 {
            if b.get(p) != Some(&b'.') {
                return None;
            }
            p += 1;
        }
        let n = b[p..]
            .iter()
            .take(4)
            .take_while(|c| c.is_ascii_digit())
            .count();
        let digits = &b[p..p + n];
        let value = digits
            .iter()
            .fold(0u32, |v, &c| v * 10 + u32::from(c - b'0'));
        if n == 0 || n > 3 || value > 255 || (n > 1 && digits[0] == b'0') {
            return None;
        }
        p += n;
    }
    let glued =
        word_at(b, p) || (b.get(p) == Some(&b'.') && b.get(p + 1).is_some_and(u8::is_ascii_digit));
    (!glued).then_some(p)
}

fn is_v6_char(c: u8) -> bool {
    c.is_ascii_hexdigit() || c == b':' || c == b'.'
}

fn scan_v6(text: &str, out: &mut Vec<Finding>) {
    let b = text.as_bytes();
    let mut from = 0;
    while let Some(off) = b[from..].iter().position(|&c| c == b':') {
        let colon = from + off;
        let mut start = colon;
        while start > from && is_v6_char(b[start - 1]) {
            start -= 1;
        }
        let mut end = colon;
        while end < b.len() && is_v6_char(b[end]) {
            end += 1;
        }
        from = end.max(colon + 1);
        if let Some((s, e)) = v6_token(b, start, end) {
            out.push(Finding::new(Detector::Ip, s, e));
        }
    }
}

/// The address inside `b[start..end]`, trimming sentence punctuation.
fn v6_token(b: &[u8], start: usize, mut end: usize) -> Option<(usize, usize)> {
    if word_before(b, start) || word_at(b, end) {
        return None;
    }
    // A trailing `.` ends a sentence; a lone trailing `:` ends a label.
    while end > start && b[end - 1] == b'.' {
        end -= 1;
    }
    if end - start >= 2 && b[end - 1] == b':' && b[end - 2] != b':' {
        end -= 1;
    }
    let token = std::str::from_utf8(&b[start..end]).ok()?;
    let plausible = token.len() >= 3 && token.bytes().any(|c| c.is_ascii_digit());
    (plausible && token.parse::<Ipv6Addr>().is_ok()).then_some((start, end))
}

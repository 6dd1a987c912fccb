//! Secrets: credentials with a recognisable prefix (AWS access key ids,
//! GitHub, GitLab and Slack tokens), PEM private key blocks, passwords in
//! connection URLs, and values assigned to password-, secret- or
//! token-like keys (`password=…`, `"api_key": "…"`, `DB_TOKEN: …`).
//!
//! Assignments are the fuzzy part. The rule, chosen so that real leaks are
//! caught and placeholders are not:
//! - keys naming a password (`password`, `passwd`, `pwd`, `passphrase`,
//!   as the key or its suffix: `db_password`, `PGPASSWORD`) mask **any**
//!   value with a letter or digit, except `null`/`true`/`false`/`none`.
//!   The key already says it is a password, and a weak one
//!   (`password=password`) is exactly the one that must not leak;
//! - keys naming a token or secret (`token`, `secret`, `api_key`,
//!   `access_key`, `private_key`, `credentials`, …) mask a value only if
//!   it is at least [`MIN_SECRET_LEN`] bytes with Shannon entropy of at
//!   least [`MIN_ENTROPY`] bits per byte. Random keys of that length score
//!   about 3.4–4 (hex, base64); settings such as `required`, `${TOKEN}`,
//!   `next_page` or `aaaaaaaaaaaa` score lower.
//!
//! Only the value is masked, so `password=****` still shows what was there.

use super::{next_start, word_at, word_before, Detector, Finding, Traits};

/// Shortest token/secret value judged by entropy.
pub const MIN_SECRET_LEN: usize = 12;
/// Bits per byte a token/secret value needs to be masked.
pub const MIN_ENTROPY: f64 = 3.0;

const MAX_KEY: usize = 64;
const MAX_VALUE: usize = 1024;

/// Each part of the scan needs its own trigger: a token's first byte or a
/// PEM header's dashes, an assignment's `=` or `:`, a URL's `://`.
pub(super) fn scan(text: &str, traits: &Traits, out: &mut Vec<Finding>) {
    let b = text.as_bytes();
    if traits.has_any(Traits::TOKEN_HEAD | Traits::DASH) {
        prefixed(text, out);
    }
    if traits.has_any(Traits::EQUALS | Traits::COLON) {
        assignments(b, out);
    }
    if traits.has(Traits::COLON) {
        url_passwords(b, out);
    }
}

pub(super) fn may_match(traits: &Traits) -> bool {
    traits.has_any(Traits::TOKEN_HEAD | Traits::DASH | Traits::EQUALS | Traits::COLON)
}

fn push(out: &mut Vec<Finding>, start: usize, end: usize) {
    out.push(Finding::new(Detector::Secret, start, end));
}

/// A token format: literal prefix, allowed body bytes, body length range.
struct Format {
    prefix: &'static [u8],
    body: fn(u8) -> bool,
    min: usize,
    max: usize,
}

fn upper_alnum(c: u8) -> bool {
    c.is_ascii_uppercase() || c.is_ascii_digit()
}
fn alnum(c: u8) -> bool {
    c.is_ascii_alphanumeric()
}
fn alnum_us(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}
fn alnum_dash(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_'
}

const fn format(prefix: &'static [u8], body: fn(u8) -> bool, min: usize, max: usize) -> Format {
    Format {
        prefix,
        body,
        min,
        max,
    }
}

const FORMATS: &[Format] = &[
    // AWS access key ids: long-term (AKIA) and temporary (ASIA).
    format(b"AKIA", upper_alnum, 16, 16),
    format(b"ASIA", upper_alnum, 16, 16),
    // GitHub classic tokens are 36 characters today; allow growth.
    format(b"ghp_", alnum, 36, 251),
    format(b"gho_", alnum, 36, 251),
    format(b"ghu_", alnum, 36, 251),
    format(b"ghs_", alnum, 36, 251),
    format(b"ghr_", alnum, 36, 251),
    format(b"github_pat_", alnum_us, 22, 244),
    format(b"glpat-", alnum_dash, 20, 249),
    format(b"xoxb-", alnum_dash, 10, 250),
    format(b"xoxp-", alnum_dash, 10, 250),
    format(b"xoxa-", alnum_dash, 10, 250),
    format(b"xoxr-", alnum_dash, 10, 250),
    format(b"xoxs-", alnum_dash, 10, 250),
];

/// One pass over the text, dispatching on the first byte of each format.
fn prefixed(text: &str, out: &mut Vec<Finding>) {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let end = match b[i] {
            b'A' | b'g' | b'x' if !word_before(b, i) => token_end(b, i),
            b'-' if b[i..].starts_with(b"-----BEGIN ") => pem_end(text, i),
            _ => None,
        };
        match end {
            Some(end) => {
                push(out, i, end);
                i = end;
            }
            None => i = next_start(b, i),
        }
    }
}

fn token_end(b: &[u8], i: usize) -> Option<usize> {
    let rest = &b[i..];
    let f = FORMATS.iter().find(|f| rest.starts_with(f.prefix))?;
    let body_start = i + f.prefix.len();
    let n = b[body_start..]
        .iter()
        .take(f.max + 1)
        .take_while(|&&c| (f.body)(c))
        .count();
    let end = body_start + n;
    ((f.min..=f.max).contains(&n) && !word_at(b, end)).then_some(end)
}

/// A PEM private key block, header to footer. A block without a footer
/// (truncated output) is masked to the end of the text: a partial key is
/// still a key.
fn pem_end(text: &str, i: usize) -> Option<usize> {
    let header = text.get(i + 11..)?;
    let label_len = header.find("-----").filter(|&n| n <= MAX_KEY)?;
    let label = &header[..label_len];
    if !label.ends_with("PRIVATE KEY") || label.contains('\n') {
        return None;
    }
    let body = i + 11 + label_len + 5;
    let Some(footer) = text[body..].find("-----END ") else {
        return Some(text.len());
    };
    let after = body + footer + 9;
    let close = text[after..]
        .find("-----")
        .filter(|&n| n <= MAX_KEY)
        .map_or(text.len(), |n| after + n + 5);
    Some(close)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Password,
    Secret,
}

const PASSWORD_KEYS: &[&str] = &["password", "passwd", "pwd", "passphrase"];
const SECRET_KEYS: &[&str] = &[
    "secret",
    "token",
    "api_key",
    "apikey",
    "api-key",
    "access_key",
    "accesskey",
    "secret_key",
    "private_key",
    "credential",
    "credentials",
];

fn ends_with_ci(key: &[u8], suffix: &str) -> bool {
    key.len() >= suffix.len()
        && key[key.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

fn key_kind(key: &[u8]) -> Option<KeyKind> {
    if PASSWORD_KEYS.iter().any(|s| ends_with_ci(key, s)) {
        Some(KeyKind::Password)
    } else if SECRET_KEYS.iter().any(|s| ends_with_ci(key, s)) {
        Some(KeyKind::Secret)
    } else {
        None
    }
}

fn is_key_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.')
}

/// `key = value`, `key: value`, `"key": "value"`, one `=` or `:` at a time.
fn assignments(b: &[u8], out: &mut Vec<Finding>) {
    let mut p = 0;
    while p < b.len() {
        let is_op = matches!(b[p], b'=' | b':') && !is_compound_op(b, p);
        match if is_op { assignment_at(b, p) } else { None } {
            Some(Ok((s, e))) => {
                push(out, s, e);
                p = e;
            }
            // A rejected value was judged whole (`=` in base64 padding is
            // part of it); skipping it keeps `token=token=…` linear.
            Some(Err(value_end)) => p = value_end.max(p + 1),
            None => p += 1,
        }
    }
}

/// `==`, `!=`, `<=`, `::`, `:=`-free URLs (`https://`) are not assignments.
fn is_compound_op(b: &[u8], p: usize) -> bool {
    let next = b.get(p + 1).copied();
    let prev = if p > 0 { Some(b[p - 1]) } else { None };
    matches!(next, Some(b'=' | b':' | b'/'))
        || matches!(prev, Some(b'=' | b'!' | b'<' | b'>' | b':'))
}

/// For an operator at `p` with a secret-like key: the value range if it
/// passes the rule in the module docs, else where the value ends.
fn assignment_at(b: &[u8], p: usize) -> Option<Result<(usize, usize), usize>> {
    let kind = key_kind(key_before(b, p)?)?;
    let (s, e) = value_after(b, p + 1)?;
    let value = &b[s..e];
    let accept = match kind {
        KeyKind::Password => value.iter().any(u8::is_ascii_alphanumeric) && !is_placeholder(value),
        KeyKind::Secret => value.len() >= MIN_SECRET_LEN && entropy(value) >= MIN_ENTROPY,
    };
    Some(if accept { Ok((s, e)) } else { Err(e) })
}

/// The key ending just before the operator at `p`: optional spaces, an
/// optional closing quote or parenthesis, then key characters.
fn key_before(b: &[u8], p: usize) -> Option<&[u8]> {
    let mut e = p;
    while e > 0 && p - e < 4 && matches!(b[e - 1], b' ' | b'\t') {
        e -= 1;
    }
    // `)` closes the key in PostgreSQL's `Key (password)=(…)` DETAIL lines.
    if e > 0 && matches!(b[e - 1], b'"' | b'\'' | b')') {
        e -= 1;
    }
    let mut s = e;
    while s > 0 && e - s < MAX_KEY && is_key_char(b[s - 1]) {
        s -= 1;
    }
    (s < e).then(|| &b[s..e])
}

/// The value after an operator: quoted or parenthesised (up to the
/// matching `"`, `'` or `)` on the same line) or bare (up to whitespace or punctuation that ends values).
fn value_after(b: &[u8], mut v: usize) -> Option<(usize, usize)> {
    let limit = v + 4;
    while v < b.len() && v < limit && matches!(b[v], b' ' | b'\t') {
        v += 1;
    }
    let open = *b.get(v)?;
    let q = if open == b'(' { b')' } else { open };
    if matches!(open, b'"' | b'\'' | b'(') {
        let s = v + 1;
        let mut e = s;
        while e < b.len() && e - s < MAX_VALUE && b[e] != q && b[e] != b'\n' {
            // Skip escaped characters, such as `\"` inside JSON strings.
            e += if b[e] == b'\\' && e + 1 < b.len() && b[e + 1] != b'\n' {
                2
            } else {
                1
            };
        }
        let e = e.min(b.len());
        return (e > s).then_some((s, e));
    }
    let n = b[v..]
        .iter()
        .take(MAX_VALUE)
        .take_while(|&&c| !ends_bare_value(c))
        .count();
    (n > 0).then_some((v, v + n))
}

fn ends_bare_value(c: u8) -> bool {
    c.is_ascii_whitespace()
        || matches!(
            c,
            b',' | b';' | b'&' | b'"' | b'\'' | b'}' | b']' | b')' | b'<' | b'>'
        )
}

fn is_placeholder(v: &[u8]) -> bool {
    ["null", "true", "false", "none"]
        .iter()
        .any(|p| v.eq_ignore_ascii_case(p.as_bytes()))
}

/// Shannon entropy in bits per byte.
pub(crate) fn entropy(v: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for &c in v {
        counts[usize::from(c)] += 1;
    }
    let n = v.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// `scheme://user:password@host`: the password part.
fn url_passwords(b: &[u8], out: &mut Vec<Finding>) {
    let mut from = 0;
    while let Some(off) = b[from..].windows(3).position(|w| w == b"://") {
        let user = from + off + 3;
        from = user;
        let u = b[user..]
            .iter()
            .take(128)
            .take_while(|&&c| !ends_userinfo(c) && c != b':')
            .count();
        let colon = user + u;
        if u == 0 || b.get(colon) != Some(&b':') {
            continue;
        }
        let s = colon + 1;
        let n = b[s..]
            .iter()
            .take(256)
            .take_while(|&&c| !ends_userinfo(c))
            .count();
        if n > 0 && b.get(s + n) == Some(&b'@') {
            push(out, s, s + n);
            from = s + n;
        }
    }
}

fn ends_userinfo(c: u8) -> bool {
    c.is_ascii_whitespace() || matches!(c, b'@' | b'/' | b'?' | b'#')
}

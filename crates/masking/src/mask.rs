//! Maskers: what replaces a sensitive value.
//!
//! Three methods, named as in policy rules:
//! - `redact`: the fixed token [`REDACTED`]; reveals nothing, not even length;
//! - `partial`: keeps what people need to recognise a value (last four
//!   characters of a card, IBAN, phone or SSN with separators and length
//!   kept; first letter and domain of an email; first group of an IP) and
//!   stars the rest. Secrets and JWTs are redacted: no part of them is safe;
//! - `hash`: `h:` and 16 hex digits of HMAC-SHA256 under the gateway key.
//!   Deterministic, so equal values still join and group; keyed, so
//!   low-entropy values (SSNs, phones) cannot be recovered by hashing every
//!   candidate without the key. 64 bits keep collisions negligible below
//!   billions of distinct values. The digits always include a letter: one
//!   hash in about two thousand would otherwise be 16 decimal digits, and
//!   one in ten of those passes Luhn, so a masked value would read as a
//!   card number to the next scanner.
//!
//! Output is built from `char`s, so it is always valid UTF-8, and it never
//! contains the value it replaces.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::detect::{find_into, Detector, Finding};
use crate::MaskError;

/// What `redact` puts in place of a value.
pub const REDACTED: &str = "****";

/// Shortest gateway key accepted for `hash`.
pub const MIN_KEY_LEN: usize = 16;

/// How many trailing characters `partial` keeps of card-like values.
const KEEP_LAST: usize = 4;

/// A masking method, as named in policy rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Replace with [`REDACTED`].
    Redact,
    /// Keep a recognisable part, star the rest.
    Partial,
    /// Keyed deterministic hash, `h:` + 16 hex digits.
    Hash,
}

impl Method {
    /// The name used in config and audit records.
    pub fn name(self) -> &'static str {
        match self {
            Method::Redact => "redact",
            Method::Partial => "partial",
            Method::Hash => "hash",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A method name that is not `redact`, `partial` or `hash`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown masking method {0:?}; expected redact, partial or hash")]
pub struct UnknownMethod(pub String);

impl FromStr for Method {
    type Err = UnknownMethod;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "redact" => Ok(Method::Redact),
            "partial" => Ok(Method::Partial),
            "hash" => Ok(Method::Hash),
            _ => Err(UnknownMethod(s.to_string())),
        }
    }
}

/// Masks values under one gateway key.
#[derive(Clone)]
pub struct Masker {
    /// HMAC state after absorbing the key; cloned per value.
    mac: Hmac<Sha256>,
}

impl fmt::Debug for Masker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Masker { key: <redacted> }")
    }
}

impl Masker {
    /// A masker keyed with `key` (at least [`MIN_KEY_LEN`] bytes).
    pub fn new(key: &[u8]) -> Result<Self, MaskError> {
        if key.len() < MIN_KEY_LEN {
            return Err(MaskError::KeyTooShort {
                len: key.len(),
                min: MIN_KEY_LEN,
            });
        }
        let mac = Hmac::<Sha256>::new_from_slice(key).map_err(|_| MaskError::KeyTooShort {
            len: key.len(),
            min: MIN_KEY_LEN,
        })?;
        Ok(Self { mac })
    }

    /// Masks one whole value; `detector` says what it is when known (a
    /// detector finding), `None` for a declared column.
    pub fn mask_value(&self, method: Method, detector: Option<Detector>, value: &str) -> String {
        let mut out = String::new();
        self.push_masked_value(method, detector, value, &mut out);
        out
    }

    /// [`mask_value`](Self::mask_value), appending to `out`: a result's
    /// cells can all be masked into one reused buffer.
    pub fn push_masked_value(
        &self,
        method: Method,
        detector: Option<Detector>,
        value: &str,
        out: &mut String,
    ) {
        match method {
            Method::Redact => out.push_str(REDACTED),
            Method::Partial => push_partial(detector, value, out),
            Method::Hash => self.push_hash(value, out),
        }
    }

    /// Masks every finding of `detectors` in free text; returns the text
    /// (borrowed when nothing was found, so clean cells cost no copy) and
    /// how many values were masked.
    pub fn mask_text<'a>(
        &self,
        detectors: &[Detector],
        method: Method,
        text: &'a str,
    ) -> (Cow<'a, str>, usize) {
        self.mask_text_counted(detectors, method, text, &mut DetectorCounts::default())
    }

    /// [`mask_text`](Self::mask_text), also counting findings per detector
    /// for the audit record.
    pub fn mask_text_counted<'a>(
        &self,
        detectors: &[Detector],
        method: Method,
        text: &'a str,
        counts: &mut DetectorCounts,
    ) -> (Cow<'a, str>, usize) {
        let mut buf = MaskBuf::default();
        match self.push_masked_text(detectors, method, text, counts, &mut buf) {
            0 => (Cow::Borrowed(text), 0),
            n => (Cow::Owned(buf.text), n),
        }
    }

    /// Appends `text` with every finding of `detectors` masked to
    /// `buf.text` and returns how many were masked; when none were, the
    /// text is left as it was.
    pub fn push_masked_text(
        &self,
        detectors: &[Detector],
        method: Method,
        text: &str,
        counts: &mut DetectorCounts,
        buf: &mut MaskBuf,
    ) -> usize {
        let MaskBuf {
            text: out,
            findings,
        } = buf;
        find_into(detectors, text, findings);
        if findings.is_empty() {
            return 0;
        }
        out.reserve(text.len());
        let mut at = 0;
        for f in findings.iter() {
            counts.add(f.detector);
            out.push_str(&text[at..f.start]);
            self.push_masked_value(method, Some(f.detector), &text[f.start..f.end], out);
            at = f.end;
        }
        out.push_str(&text[at..]);
        findings.len()
    }

    /// `h:` + the first 8 bytes of HMAC-SHA256(key, value), in hex, with
    /// the first digit turned into a letter when none of the 16 is one.
    fn push_hash(&self, value: &str, out: &mut String) {
        let mut mac = self.mac.clone();
        mac.update(value.as_bytes());
        let digest = mac.finalize().into_bytes();
        out.reserve(18);
        out.push_str("h:");
        let all_decimal = digest[..8].iter().all(|b| b >> 4 < 10 && b & 0x0f < 10);
        for (i, byte) in digest[..8].iter().enumerate() {
            let high = byte >> 4;
            // Folds 0-9 onto a-f: such a value may now equal another's hash,
            // which costs a few of 64 bits in about one hash in two thousand.
            let high = if i == 0 && all_decimal {
                10 + high % 6
            } else {
                high
            };
            out.push(hex_digit(high));
            out.push(hex_digit(byte & 0x0f));
        }
    }
}

/// Where masked values are written, and the findings behind them: one per
/// session, reused across the values of its results, spares each value an
/// allocation.
#[derive(Debug, Default)]
pub struct MaskBuf {
    /// The masked text written so far.
    pub text: String,
    findings: Vec<Finding>,
}

/// How many values each detector found: what an audit record says fired,
/// never what the values were.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DetectorCounts([u64; Detector::ALL.len()]);

impl DetectorCounts {
    pub fn add(&mut self, detector: Detector) {
        self.0[detector as usize] += 1;
    }

    pub fn merge(&mut self, other: &DetectorCounts) {
        for (mine, theirs) in self.0.iter_mut().zip(other.0) {
            *mine += theirs;
        }
    }

    /// The detectors that fired, with their counts, in config order.
    pub fn fired(&self) -> impl Iterator<Item = (Detector, u64)> + '_ {
        Detector::ALL
            .into_iter()
            .zip(self.0)
            .filter(|&(_, n)| n > 0)
    }
}

fn hex_digit(n: u8) -> char {
    char::from(b"0123456789abcdef"[usize::from(n & 0x0f)])
}

/// Appends the `partial` rendering of `value` for what `detector` says it is.
fn push_partial(detector: Option<Detector>, value: &str, out: &mut String) {
    match detector {
        Some(Detector::Email) | None => {
            if !push_partial_email(value, out) {
                push_keep_last(value, KEEP_LAST, out);
            }
        }
        Some(Detector::Secret | Detector::Jwt) => out.push_str(REDACTED),
        Some(Detector::Ip) => push_keep_first_group(value, out),
        Some(Detector::CreditCard | Detector::Iban | Detector::Phone | Detector::Ssn) => {
            push_keep_last(value, KEEP_LAST, out)
        }
    }
}

/// Separators stay so the value keeps its printed shape; anything else
/// (letters, digits, non-ASCII) is content to be starred.
fn is_separator(c: char) -> bool {
    c.is_ascii_punctuation() || c == ' '
}

/// Stars every content character but the last `keep`; when the value has
/// fewer than twice that many, keeping any would give away too much, so
/// all are starred.
fn push_keep_last(value: &str, keep: usize, out: &mut String) {
    let content = value.chars().filter(|&c| !is_separator(c)).count();
    let keep = if content >= 2 * keep { keep } else { 0 };
    let mut to_star = content - keep;
    out.reserve(value.len());
    for (i, c) in value.char_indices() {
        if to_star == 0 {
            // What is left is kept as it is: copy it whole.
            out.push_str(&value[i..]);
            return;
        }
        if is_separator(c) {
            out.push(c);
        } else {
            out.push('*');
            to_star -= 1;
        }
    }
}

/// `alice@example.com` → `a****@example.com` (`****@…` for one-letter
/// local parts). `false`, with nothing appended, when the value is not
/// `local@domain`.
fn push_partial_email(value: &str, out: &mut String) -> bool {
    let Some((local, domain)) = value.rsplit_once('@') else {
        return false;
    };
    let mut chars = local.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    if domain.is_empty() || !domain.contains('.') || domain.contains(char::is_whitespace) {
        return false;
    }
    if chars.next().is_some() {
        out.push(first);
    }
    out.push_str(REDACTED);
    out.push('@');
    out.push_str(domain);
    true
}

/// `192.168.1.20` → `192.***.*.**`: the first group locates the network
/// loosely; the host part is starred. An address that is all first group
/// (`7::`) is starred whole, or it would be shown as it is.
fn push_keep_first_group(value: &str, out: &mut String) {
    let is_group_separator = |c: char| c == '.' || c == ':';
    let host_part = value.find(is_group_separator).map_or("", |at| &value[at..]);
    let mut keeping = host_part.contains(|c| !is_group_separator(c));
    out.extend(value.chars().map(|c| {
        if is_group_separator(c) {
            keeping = false;
            c
        } else if keeping {
            c
        } else {
            '*'
        }
    }));
}

#[cfg(test)]
mod tests;

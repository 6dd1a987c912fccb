//! Content detectors: where sensitive values sit in a piece of text.
//!
//! Columns a policy does not name can still carry cards, emails or keys
//! (free-text notes, JSON blobs, error DETAIL lines), so `mask.detect` scans
//! content. Each detector is a hand-written byte scanner rather than a
//! regex: they run on every text cell of a masked result, and a single pass
//! with a cheap trigger byte (`@` for email, a digit for cards) followed by
//! a precise check (Luhn, mod-97, JSON header) costs a few ns per byte and
//! pulls in no regex engine.
//!
//! All triggers and boundaries are ASCII, so every [`Finding`] starts and
//! ends on a char boundary even in non-ASCII text.

mod card;
mod email;
mod iban;
mod ip;
mod jwt;
mod phone;
mod secret;
mod ssn;

#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;

/// A kind of sensitive content, named as in the config's `mask.detect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Detector {
    /// Payment card numbers, 13–19 digits, Luhn-checked.
    CreditCard,
    /// Email addresses.
    Email,
    /// International bank account numbers, mod-97 checked.
    Iban,
    /// US social security numbers, `AAA-GG-SSSS`.
    Ssn,
    /// Phone numbers: `+` (E.164) forms and North American national forms.
    Phone,
    /// IPv4 and IPv6 addresses.
    Ip,
    /// JSON Web Tokens (and JWE compact serializations).
    Jwt,
    /// API keys, tokens, private keys and password-like assignments.
    Secret,
}

impl Detector {
    /// Every detector, in config order.
    pub const ALL: [Detector; 8] = [
        Detector::CreditCard,
        Detector::Email,
        Detector::Iban,
        Detector::Ssn,
        Detector::Phone,
        Detector::Ip,
        Detector::Jwt,
        Detector::Secret,
    ];

    /// The config name (`credit_card`, `email`, …), also used in audit records.
    pub fn name(self) -> &'static str {
        match self {
            Detector::CreditCard => "credit_card",
            Detector::Email => "email",
            Detector::Iban => "iban",
            Detector::Ssn => "ssn",
            Detector::Phone => "phone",
            Detector::Ip => "ip",
            Detector::Jwt => "jwt",
            Detector::Secret => "secret",
        }
    }

    fn scan(self, text: &str, traits: &Traits, out: &mut Vec<Finding>) {
        match self {
            Detector::CreditCard => card::scan(text, out),
            Detector::Email => email::scan(text, out),
            Detector::Iban => iban::scan(text, out),
            Detector::Ssn => ssn::scan(text, out),
            Detector::Phone => phone::scan(text, out),
            Detector::Ip => ip::scan(text, out),
            Detector::Jwt => jwt::scan(text, out),
            Detector::Secret => secret::scan(text, traits, out),
        }
    }

    /// Whether anything this detector accepts could be in a text with these
    /// traits. Each condition is one every match of the scanner needs (the
    /// digits a card or phone number is made of, the `@` and `.` of an
    /// email…), so `false` means scanning would find nothing.
    fn may_match(self, t: &Traits) -> bool {
        match self {
            Detector::CreditCard => t.digits >= card::MIN_DIGITS,
            Detector::Email => t.has(Traits::AT | Traits::DOT),
            Detector::Iban => t.has(Traits::UPPER) && t.digits >= 2 && t.len >= iban::MIN_LEN,
            Detector::Ssn => t.has(Traits::DASH) && t.digits >= 9,
            Detector::Phone => t.digits >= phone::E164_MIN,
            Detector::Ip => t.has(Traits::COLON) || (t.has(Traits::DOT) && t.digits >= 4),
            Detector::Jwt => t.has(Traits::Y | Traits::DOT),
            Detector::Secret => secret::may_match(t),
        }
    }
}

impl fmt::Display for Detector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A detector name the config does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown detector {0:?}; expected one of credit_card, email, iban, ssn, phone, ip, jwt, secret"
)]
pub struct UnknownDetector(pub String);

impl FromStr for Detector {
    type Err = UnknownDetector;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Detector::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| UnknownDetector(s.to_string()))
    }
}

/// One sensitive value: `text[start..end]`, found by `detector`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    pub detector: Detector,
    /// Byte offset of the first byte (always a char boundary).
    pub start: usize,
    /// Byte offset one past the last byte (always a char boundary).
    pub end: usize,
}

impl Finding {
    fn new(detector: Detector, start: usize, end: usize) -> Self {
        Self {
            detector,
            start,
            end,
        }
    }
}

/// Finds every value the given detectors recognise, in order, without overlaps.
///
/// Overlapping candidates (say a phone number whose tail is a card) are
/// merged into one finding carrying the detector of the earliest, longest
/// candidate: masking the union is what guarantees no detected byte survives.
pub fn find(detectors: &[Detector], text: &str) -> Vec<Finding> {
    let mut found = Vec::new();
    find_into(detectors, text, &mut found);
    found
}

/// [`find`] into `found` (cleared first), so that one buffer can serve
/// every value of a result.
pub fn find_into(detectors: &[Detector], text: &str, found: &mut Vec<Finding>) {
    find_with(detectors, text, &Traits::of(text), found);
}

/// [`find_into`] for a text with the given traits ([`Traits::ANY`] in
/// tests, to compare with what the scanners find unfiltered).
fn find_with(detectors: &[Detector], text: &str, traits: &Traits, found: &mut Vec<Finding>) {
    found.clear();
    let mut seen = [false; Detector::ALL.len()];
    for &d in detectors {
        // A detector listed twice would only produce duplicates.
        if !std::mem::replace(&mut seen[d as usize], true) && d.may_match(traits) {
            d.scan(text, traits, found);
        }
    }
    // Scanners stop on ASCII bytes, except at their length caps; widening to
    // char boundaries here makes that a non-issue for every detector.
    for f in found.iter_mut() {
        while !text.is_char_boundary(f.start) {
            f.start -= 1;
        }
        while !text.is_char_boundary(f.end) {
            f.end += 1;
        }
    }
    found.retain(|f| f.start < f.end);
    merge(found);
}

/// Sorts and merges overlapping findings in place.
fn merge(found: &mut Vec<Finding>) {
    if found.len() < 2 {
        return;
    }
    found.sort_unstable_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
    let mut last = 0;
    for i in 1..found.len() {
        let f = found[i];
        if f.start < found[last].end {
            found[last].end = found[last].end.max(f.end);
        } else {
            last += 1;
            found[last] = f;
        }
    }
    found.truncate(last + 1);
}

/// The trigger bytes a text contains and how many digits, gathered in one
/// pass: most cells of a result (names, ids, dates, clean notes) lack what
/// most detectors need, and checking that here costs less than letting
/// every scanner walk the bytes to find out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Traits {
    /// Which of the byte classes below occur.
    bytes: u16,
    digits: usize,
    len: usize,
}

impl Traits {
    pub(crate) const UPPER: u16 = 1;
    pub(crate) const AT: u16 = 1 << 1;
    pub(crate) const DOT: u16 = 1 << 2;
    pub(crate) const COLON: u16 = 1 << 3;
    pub(crate) const EQUALS: u16 = 1 << 4;
    pub(crate) const DASH: u16 = 1 << 5;
    pub(crate) const Y: u16 = 1 << 6;
    /// First bytes of the prefixed token formats (`AKIA`, `ghp_`, `xoxb-`).
    pub(crate) const TOKEN_HEAD: u16 = 1 << 7;

    /// What any text has, for comparing against unfiltered scans.
    #[cfg(test)]
    pub(crate) const ANY: Traits = Traits {
        bytes: u16::MAX,
        digits: usize::MAX,
        len: usize::MAX,
    };

    pub(crate) fn of(text: &str) -> Self {
        let b = text.as_bytes();
        let mut bytes = 0;
        let mut digits = 0;
        for &c in b {
            bytes |= BYTE_CLASS[usize::from(c)];
            digits += usize::from(c.is_ascii_digit());
        }
        Traits {
            bytes,
            digits,
            len: b.len(),
        }
    }

    /// Whether every class in `classes` occurs.
    pub(crate) fn has(&self, classes: u16) -> bool {
        self.bytes & classes == classes
    }

    /// Whether any class in `classes` occurs.
    pub(crate) fn has_any(&self, classes: u16) -> bool {
        self.bytes & classes != 0
    }
}

const BYTE_CLASS: [u16; 256] = {
    let mut table = [0; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        table[c] = match b {
            b'A' => Traits::UPPER | Traits::TOKEN_HEAD,
            b'B'..=b'Z' => Traits::UPPER,
            b'g' | b'x' => Traits::TOKEN_HEAD,
            b'@' => Traits::AT,
            b'.' => Traits::DOT,
            b':' => Traits::COLON,
            b'=' => Traits::EQUALS,
            b'-' => Traits::DASH,
            b'y' => Traits::Y,
            _ => 0,
        };
        c += 1;
    }
    table
};

/// Letters, digits and `_`: what glues a value to its neighbours so that it
/// is part of a larger token rather than a value of its own.
pub(crate) fn is_word(b: u8) -> bool {
    // A table rather than three comparisons: in hex and base64 runs,
    // letters and digits alternate at random, and every comparison would
    // be a branch mispredicted half the time.
    WORD_BYTE[usize::from(b)]
}

const WORD_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        table[c] = b.is_ascii_alphanumeric() || b == b'_';
        c += 1;
    }
    table
};

/// Where the word containing `b[i]` ends (`i + 1` if `b[i]` is not a word
/// byte). Scanners whose matches cannot start inside a word jump there
/// instead of looking at each byte of a hash or a base64 blob in turn.
pub(crate) fn next_start(b: &[u8], i: usize) -> usize {
    if !is_word(b[i]) {
        return i + 1;
    }
    i + 1 + b[i + 1..].iter().take_while(|&&c| is_word(c)).count()
}

/// Whether the byte before `i` is a word byte.
pub(crate) fn word_before(b: &[u8], i: usize) -> bool {
    i > 0 && is_word(b[i - 1])
}

/// Whether the byte at `i` (if any) is a word byte.
pub(crate) fn word_at(b: &[u8], i: usize) -> bool {
    b.get(i).is_some_and(|&c| is_word(c))
}

/// Number of ASCII digits starting at `i`.
pub(crate) fn digits_at(b: &[u8], i: usize) -> usize {
    b.get(i..).map_or(0, |rest| {
        rest.iter().take_while(|c| c.is_ascii_digit()).count()
    })
}

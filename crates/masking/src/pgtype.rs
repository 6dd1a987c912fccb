//! Masking a PostgreSQL value so it stays valid for its type.
//!
//! A masked value goes back to the client in the column's own type, so the
//! replacement must still parse as that type: a string fits text-like
//! types; JSON must stay JSON (only string and number leaves change, keys
//! and layout are kept byte for byte); a text array must stay an array
//! literal. Anything else (integers, dates, bytea, binary formats) cannot
//! hold `****`, so the answer is [`Outcome::Unrepresentable`] and the relay
//! sends NULL or refuses the row: a value is never passed through raw.
//!
//! Values are taken in text format. For text, varchar, bpchar, name and
//! json the binary format is the same UTF-8 text; jsonb binary is a version
//! byte (1) followed by the text, which the caller strips and restores.

use std::borrow::Cow;

use crate::detect::{find, Detector};
use crate::mask::{DetectorCounts, MaskBuf, Masker, Method};

/// PostgreSQL type OIDs this module knows how to mask.
pub mod oid {
    pub const NAME: u32 = 19;
    pub const TEXT: u32 = 25;
    pub const JSON: u32 = 114;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const JSONB: u32 = 3802;
    pub const TEXT_ARRAY: u32 = 1009;
    pub const VARCHAR_ARRAY: u32 = 1015;
}

/// How a type can carry a masked value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeClass {
    /// Any string fits (text, varchar, bpchar, name).
    Text,
    /// JSON text: mask string and number leaves, keep the structure.
    Json,
    /// A text or varchar array literal: mask the elements.
    TextArray,
    /// A masked string would not be a valid value of this type.
    Unmaskable,
}

/// What kind of value the type `oid` can hold once masked.
///
/// `name` is limited to 63 bytes and `varchar(n)`/`char(n)` to `n`
/// characters on input only; clients do not check lengths of results, and
/// every masked form here is at most as long as a hash (18 bytes) or the
/// original value, except `****` replacing shorter values.
pub fn type_class(oid: u32) -> TypeClass {
    match oid {
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME => TypeClass::Text,
        oid::JSON | oid::JSONB => TypeClass::Json,
        oid::TEXT_ARRAY | oid::VARCHAR_ARRAY => TypeClass::TextArray,
        _ => TypeClass::Unmaskable,
    }
}

/// Which part of a value to mask.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// The column is declared in `mask.columns`: mask all of it.
    Whole,
    /// Only what these content detectors find.
    Detect(&'a [Detector]),
}

/// The result of masking one value of a known type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// Nothing to mask: send the original bytes.
    Clean,
    /// Send this instead; `count` values were masked.
    Masked { value: Cow<'a, str>, count: usize },
    /// Masking applies but the type cannot hold a masked value: send NULL
    /// or refuse the row.
    Unrepresentable,
}

/// What [`Masker::mask_for_type_into`] did with a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Nothing to mask; nothing was appended.
    Clean,
    /// The masked value was appended; `count` values were masked.
    Masked { count: usize },
    /// As [`Outcome::Unrepresentable`]; nothing was appended.
    Unrepresentable,
}

impl Written {
    fn from_count(count: usize) -> Self {
        if count == 0 {
            Written::Clean
        } else {
            Written::Masked { count }
        }
    }
}

impl Masker {
    /// Masks a text-format value of type `oid` (NULLs never get here: NULL
    /// stays NULL).
    pub fn mask_for_type<'a>(
        &self,
        oid: u32,
        scope: Scope<'_>,
        method: Method,
        value: &'a str,
    ) -> Outcome<'a> {
        let mut buf = MaskBuf::default();
        let counts = &mut DetectorCounts::default();
        match self.mask_for_type_into(oid, scope, method, value, counts, &mut buf) {
            Written::Clean => Outcome::Clean,
            Written::Masked { count } => Outcome::Masked {
                value: Cow::Owned(buf.text),
                count,
            },
            Written::Unrepresentable => Outcome::Unrepresentable,
        }
    }

    /// [`mask_for_type`](Self::mask_for_type), appending the masked value
    /// to `buf.text` (so one buffer serves a whole result) and counting
    /// detector findings for the audit record.
    pub fn mask_for_type_into(
        &self,
        oid: u32,
        scope: Scope<'_>,
        method: Method,
        value: &str,
        counts: &mut DetectorCounts,
        buf: &mut MaskBuf,
    ) -> Written {
        match (type_class(oid), scope) {
            (TypeClass::Text, Scope::Whole) => {
                self.push_masked_value(method, None, value, &mut buf.text);
                Written::Masked { count: 1 }
            }
            (TypeClass::Text, Scope::Detect(ds)) => {
                Written::from_count(self.push_masked_text(ds, method, value, counts, buf))
            }
            (TypeClass::Json, scope) => match self.walk_json(scope, method, value, counts) {
                Some((masked, count)) => Self::push_walked(&masked, count, &mut buf.text),
                None => Written::Unrepresentable,
            },
            (TypeClass::TextArray, scope) => match self.walk_array(scope, method, value, counts) {
                Some((masked, count)) => Self::push_walked(&masked, count, &mut buf.text),
                None => Written::Unrepresentable,
            },
            (TypeClass::Unmaskable, Scope::Whole) => Written::Unrepresentable,
            // A bigint holding a card number is still a card number.
            (TypeClass::Unmaskable, Scope::Detect(ds)) => {
                let found = find(ds, value);
                found.iter().for_each(|f| counts.add(f.detector));
                if found.is_empty() {
                    Written::Clean
                } else {
                    Written::Unrepresentable
                }
            }
        }
    }

    fn push_walked(masked: &str, count: usize, out: &mut String) -> Written {
        if count > 0 {
            out.push_str(masked);
        }
        Written::from_count(count)
    }

    /// Masks what `detectors` find in the string values of a JSON document;
    /// keys, layout and other values are kept byte for byte. A number leaf
    /// a detector fires on becomes a masked string. `None` if `json` is not
    /// valid JSON.
    pub fn mask_json(
        &self,
        detectors: &[Detector],
        method: Method,
        json: &str,
    ) -> Option<(String, usize)> {
        self.walk_json(
            Scope::Detect(detectors),
            method,
            json,
            &mut DetectorCounts::default(),
        )
    }

    /// Masks every string and number value of a JSON document (a declared
    /// json/jsonb column); `None` if `json` is not valid JSON.
    pub fn mask_json_values(&self, method: Method, json: &str) -> Option<(String, usize)> {
        self.walk_json(Scope::Whole, method, json, &mut DetectorCounts::default())
    }

    /// Masks one decoded leaf; `None` when it stays as it is.
    fn mask_leaf(
        &self,
        scope: Scope<'_>,
        method: Method,
        leaf: &str,
        counts: &mut DetectorCounts,
    ) -> Option<String> {
        match scope {
            Scope::Whole => Some(self.mask_value(method, None, leaf)),
            Scope::Detect(ds) => match self.mask_text_counted(ds, method, leaf, counts) {
                (Cow::Owned(masked), _) => Some(masked),
                (Cow::Borrowed(_), _) => None,
            },
        }
    }

    fn walk_json(
        &self,
        scope: Scope<'_>,
        method: Method,
        json: &str,
        counts: &mut DetectorCounts,
    ) -> Option<(String, usize)> {
        // Validate first, so the walk below can trust the structure.
        serde_json::from_str::<serde::de::IgnoredAny>(json).ok()?;
        let b = json.as_bytes();
        let mut out = String::with_capacity(json.len());
        let (mut at, mut i, mut count) = (0, 0, 0);
        while i < b.len() {
            let (end, leaf) = match b[i] {
                b'"' => {
                    let end = string_end(b, i)?;
                    let is_key = next_significant(b, end) == Some(b':');
                    let leaf = if is_key {
                        None
                    } else {
                        serde_json::from_str::<String>(&json[i..end]).ok()
                    };
                    (end, leaf)
                }
                b'-' | b'0'..=b'9' => {
                    let n = b[i..]
                        .iter()
                        .take_while(|c| {
                            c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E')
                        })
                        .count();
                    (i + n, Some(json[i..i + n].to_string()))
                }
                _ => {
                    i += 1;
                    continue;
                }
            };
            if let Some(masked) = leaf.and_then(|l| self.mask_leaf(scope, method, &l, counts)) {
                out.push_str(&json[at..i]);
                out.push_str(&serde_json::to_string(&masked).ok()?);
                at = end;
                count += 1;
            }
            i = end;
        }
        out.push_str(&json[at..]);
        Some((out, count))
    }

    /// Masks the elements of a text array literal (`{a,"b c",NULL}`, nested
    /// arrays and a `[1:2]=` dimension prefix included). Masked elements are
    /// always written quoted, so whatever the mask contains stays one
    /// element. `None` if the literal is malformed.
    pub fn mask_array(
        &self,
        scope: Scope<'_>,
        method: Method,
        text: &str,
    ) -> Option<(String, usize)> {
        self.walk_array(scope, method, text, &mut DetectorCounts::default())
    }

    fn walk_array(
        &self,
        scope: Scope<'_>,
        method: Method,
        text: &str,
        counts: &mut DetectorCounts,
    ) -> Option<(String, usize)> {
        let b = text.as_bytes();
        let body = if b.first() == Some(&b'[') {
            text.find('=')? + 1
        } else {
            0
        };
        if b.get(body) != Some(&b'{') {
            return None;
        }
        let mut out = String::with_capacity(text.len());
        out.push_str(&text[..body]);
        let (mut i, mut depth, mut count) = (body, 0usize, 0);
        while i < b.len() {
            match b[i] {
                b'{' => depth += 1,
                b'}' => depth = depth.checked_sub(1)?,
                b',' => {}
                c if is_array_space(c) => {}
                _ => {
                    let (end, element) = array_element(text, i)?;
                    match element.and_then(|e| self.mask_leaf(scope, method, &e, counts)) {
                        Some(masked) => {
                            push_quoted(&mut out, &masked);
                            count += 1;
                        }
                        None => out.push_str(&text[i..end]),
                    }
                    i = end;
                    continue;
                }
            }
            out.push(char::from(b[i]));
            i += 1;
        }
        (depth == 0).then_some((out, count))
    }
}

/// Index one past the closing quote of the JSON string opening at `i`.
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    let mut p = i + 1;
    while p < b.len() {
        match b[p] {
            b'\\' => p += 2,
            b'"' => return Some(p + 1),
            _ => p += 1,
        }
    }
    None
}

fn next_significant(b: &[u8], from: usize) -> Option<u8> {
    b.get(from..)?
        .iter()
        .copied()
        .find(|c| !c.is_ascii_whitespace())
}

/// One array element at `i`: its end and its decoded text (`None` for NULL).
fn array_element(text: &str, i: usize) -> Option<(usize, Option<String>)> {
    let b = text.as_bytes();
    if b[i] == b'"' {
        let mut value = String::new();
        let mut chars = text[i + 1..].char_indices();
        while let Some((off, c)) = chars.next() {
            match c {
                '\\' => value.push(chars.next()?.1),
                '"' => return Some((i + 1 + off + 1, Some(value))),
                _ => value.push(c),
            }
        }
        return None;
    }
    let n = text[i..].find([',', '}']).unwrap_or(text.len() - i);
    // Only the whitespace PostgreSQL's array parser skips: `str::trim_end` would also take a
    // lone no-break space, leaving an empty element that ends where it starts.
    let raw = text[i..i + n].trim_end_matches(|c: char| c.is_ascii() && is_array_space(c as u8));
    // PostgreSQL quotes any element that needs escaping; a bare quote or
    // backslash means a literal this parser does not understand.
    if raw.contains(['"', '\\', '{']) {
        return None;
    }
    if raw.is_empty() {
        // Unreachable from `walk_array` (it skips whitespace first); refused rather than
        // returned, since an element that consumes nothing would never let the walk end.
        return None;
    }
    let element = (!raw.eq_ignore_ascii_case("NULL")).then(|| raw.to_string());
    Some((i + raw.len(), element))
}

/// Whitespace between array elements, as PostgreSQL's `array_isspace` has it.
fn is_array_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}

fn push_quoted(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

#[cfg(test)]
mod tests;

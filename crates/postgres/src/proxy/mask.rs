//! Masking of results for one session: a RowDescription becomes a
//! [`Shape`] (what to do with each field), and each DataRow, COPY line and
//! error/notice is rewritten by it before it reaches the client.
//!
//! Only sessions whose policies have `mask:` rules get here; the relay
//! forwards everyone else's bytes untouched.
//!
//! A value is never passed raw when it should be masked: when the masked
//! form would not be valid in the field's type and format (a declared
//! `integer` column, a binary array), the value becomes NULL.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::BytesMut;
use portcullis_masking::{
    type_class, DetectorCounts, Expressions, MaskBuf, MaskRules, Masker, Method, Scope,
    SourceColumn, TypeClass, Written, REDACTED,
};
use serde_json::json;

use crate::codec::rows::{encode_data_row, parse_data_row, DataRowWriter, FieldDescription};
use crate::codec::{CodecError, Writer};

/// What a session masks with: its compiled rules and the gateway's key.
pub struct SessionMask {
    pub rules: MaskRules,
    pub masker: Arc<Masker>,
}

/// What to do with one result field.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    /// Scan with the detectors (no detectors: pass).
    Detect,
    /// A declared column (or an untraced field under `expressions: mask`):
    /// mask the whole value.
    Whole { method: Method, label: Arc<str> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldPlan {
    action: Action,
    type_oid: u32,
    binary: bool,
}

/// The masking plan of one result set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shape {
    fields: Vec<FieldPlan>,
}

/// What was masked, for the statement's result record. Counts only: the
/// record never holds a masked value or the value it replaced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    values: u64,
    nulled: u64,
    columns: BTreeMap<Arc<str>, u64>,
    detectors: DetectorCounts,
}

impl Tally {
    pub fn is_empty(&self) -> bool {
        self.values == 0 && self.nulled == 0
    }

    pub fn merge(&mut self, other: Tally) {
        self.values += other.values;
        self.nulled += other.nulled;
        self.detectors.merge(&other.detectors);
        for (column, n) in other.columns {
            *self.columns.entry(column).or_default() += n;
        }
    }

    /// One more value of a declared column; the label is cloned only the
    /// first time, as rows of one result name the same columns over again.
    fn count_column(&mut self, label: &Arc<str>) {
        match self.columns.get_mut(label) {
            Some(n) => *n += 1,
            None => {
                self.columns.insert(label.clone(), 1);
            }
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let detectors: BTreeMap<&str, u64> =
            self.detectors.fired().map(|(d, n)| (d.name(), n)).collect();
        let columns: BTreeMap<&str, u64> = self.columns.iter().map(|(c, n)| (&**c, *n)).collect();
        json!({
            "values": self.values,
            "nulled": self.nulled,
            "columns": columns,
            "detectors": detectors,
        })
    }
}

/// One masked cell.
enum Cell {
    Keep,
    /// These bytes (jsonb's version byte), then the masked text, which is
    /// in the caller's buffer.
    Replace(&'static [u8]),
    Null,
}

/// Type OIDs whose binary form is read here.
mod oid {
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const INT8: u32 = 20;
    pub const JSONB: u32 = 3802;
}

/// jsonb's binary form: a version byte, then the JSON text.
const JSONB_VERSION: u8 = 1;

impl SessionMask {
    /// Plans a result set from its description and the fields' source
    /// columns (`None`: not a plain column, or not traceable).
    pub fn plan(&self, fields: &[FieldDescription<'_>], sources: &[Option<SourceColumn>]) -> Shape {
        let fields = fields
            .iter()
            .zip(sources.iter().chain(std::iter::repeat(&None)))
            .map(|(f, source)| FieldPlan {
                action: self.action_for(source.as_ref()),
                type_oid: f.type_oid,
                binary: f.format != 0,
            })
            .collect();
        Shape { fields }
    }

    /// A plan for when the catalog cannot be asked: every field is masked
    /// whole, as if declared. Failing closed costs the client its data for
    /// that result, never the data's secrecy.
    pub fn plan_blind(&self, fields: &[FieldDescription<'_>]) -> Shape {
        let label: Arc<str> = Arc::from("(catalog unavailable)");
        Shape {
            fields: fields
                .iter()
                .map(|f| FieldPlan {
                    action: Action::Whole {
                        method: Method::Redact,
                        label: label.clone(),
                    },
                    type_oid: f.type_oid,
                    binary: f.format != 0,
                })
                .collect(),
        }
    }

    fn action_for(&self, source: Option<&SourceColumn>) -> Action {
        match source {
            Some(s) => match self.rules.column(s) {
                Some(rule) => Action::Whole {
                    method: rule.method,
                    label: Arc::from(s.to_string()),
                },
                None => Action::Detect,
            },
            None if self.rules.expressions == Expressions::Mask => Action::Whole {
                method: Method::Redact,
                label: Arc::from("(expression)"),
            },
            None => Action::Detect,
        }
    }

    /// Whether a shape can change anything; rows of a clean shape are
    /// forwarded untouched.
    pub fn is_clean(&self, shape: &Shape) -> bool {
        self.rules.detectors.is_empty()
            && shape
                .fields
                .iter()
                .all(|f| matches!(f.action, Action::Detect))
    }

    /// Appends the masked form of a DataRow body to `out`; `false`, with
    /// `out` as it was, when nothing in the row changed. `buf` holds one
    /// masked value at a time, reused across rows.
    pub fn mask_row(
        &self,
        shape: &Shape,
        body: &[u8],
        tally: &mut Tally,
        buf: &mut MaskBuf,
        out: &mut BytesMut,
    ) -> Result<bool, CodecError> {
        let columns = parse_data_row(body)?;
        // A lying upstream could describe fewer columns than it sends; the
        // extra ones would have no plan.
        if columns.len() > shape.fields.len() {
            return Err(CodecError::malformed(
                "DataRow",
                "more columns than its RowDescription",
            ));
        }
        let start = out.len();
        let written = self.write_row(shape, &columns, tally, buf, out);
        if !matches!(written, Ok(true)) {
            out.truncate(start);
        }
        written
    }

    fn write_row(
        &self,
        shape: &Shape,
        columns: &[Option<&[u8]>],
        tally: &mut Tally,
        buf: &mut MaskBuf,
        out: &mut BytesMut,
    ) -> Result<bool, CodecError> {
        let mut row = DataRowWriter::new(out, columns.len())?;
        let mut changed = false;
        for (value, plan) in columns.iter().zip(&shape.fields) {
            // NULL stays NULL.
            let cell = match value {
                Some(value) => self.mask_cell(plan, value, tally, buf),
                None => Cell::Keep,
            };
            match cell {
                Cell::Keep => row.value(*value)?,
                Cell::Replace(prefix) => row.joined(&[prefix, buf.text.as_bytes()])?,
                Cell::Null => row.value(None)?,
            }
            changed |= !matches!(cell, Cell::Keep);
        }
        row.finish();
        Ok(changed)
    }

    /// A DataRow that arrived without a description the gateway saw: every
    /// value becomes NULL, since none can be checked.
    pub fn null_row(&self, body: &[u8], tally: &mut Tally) -> Result<BytesMut, CodecError> {
        let columns = parse_data_row(body)?;
        tally.nulled += columns.iter().filter(|c| c.is_some()).count() as u64;
        encode_data_row(BytesMut::new(), &vec![None; columns.len()])
    }

    /// Masks one value; a replacement is left in `buf.text`.
    fn mask_cell(
        &self,
        plan: &FieldPlan,
        raw: &[u8],
        tally: &mut Tally,
        buf: &mut MaskBuf,
    ) -> Cell {
        let scope = match &plan.action {
            Action::Detect if self.rules.detectors.is_empty() => return Cell::Keep,
            Action::Detect => Scope::Detect(&self.rules.detectors),
            Action::Whole { .. } => Scope::Whole,
        };
        let method = match &plan.action {
            Action::Whole { method, .. } => *method,
            Action::Detect => self.rules.detect_method,
        };
        buf.text.clear();
        let cell = match decode(plan, raw) {
            Decoded::Text(value, prefix) => {
                let written = self.masker.mask_for_type_into(
                    plan.type_oid,
                    scope,
                    method,
                    value,
                    &mut tally.detectors,
                    buf,
                );
                match written {
                    Written::Clean => Cell::Keep,
                    Written::Masked { count } => {
                        // A cell can hold several values (a JSON document,
                        // free text with two keys); the record counts values.
                        tally.values += count.saturating_sub(1) as u64;
                        Cell::Replace(prefix)
                    }
                    Written::Unrepresentable => Cell::Null,
                }
            }
            // Not UTF-8 (a non-UTF8 client_encoding): detectors read it
            // lossily, and any finding masks the whole value.
            Decoded::Lossy(lossy) => {
                let found = match scope {
                    Scope::Detect(ds) => portcullis_masking::find(ds, &lossy),
                    Scope::Whole => Vec::new(),
                };
                found.iter().for_each(|f| tally.detectors.add(f.detector));
                match scope {
                    Scope::Detect(_) if found.is_empty() => Cell::Keep,
                    _ if type_class(plan.type_oid) == TypeClass::Text => {
                        buf.text.push_str(REDACTED);
                        Cell::Replace(b"")
                    }
                    _ => Cell::Null,
                }
            }
            // A binary value of a type with no text inside (numeric, date,
            // bytea...): detectors have nothing to read, a declared column
            // has no valid masked form.
            Decoded::Opaque => match scope {
                Scope::Detect(_) => Cell::Keep,
                Scope::Whole => Cell::Null,
            },
            Decoded::Unreadable => Cell::Null,
        };
        match &cell {
            Cell::Keep => {}
            Cell::Replace(_) => tally.values += 1,
            Cell::Null => tally.nulled += 1,
        }
        if let (Action::Whole { label, .. }, false) = (&plan.action, matches!(cell, Cell::Keep)) {
            tally.count_column(label);
        }
        cell
    }

    /// Masks what the detectors find in one line of COPY text or CSV
    /// output; `None` when nothing was found. Masks never contain tabs,
    /// newlines, backslashes or quotes that were not in the value, so the
    /// line keeps its fields.
    pub fn mask_copy_line(&self, line: &[u8], tally: &mut Tally) -> Option<Vec<u8>> {
        if self.rules.detectors.is_empty() {
            return None;
        }
        let text = std::str::from_utf8(line).ok()?;
        let (masked, n) = self.masker.mask_text_counted(
            &self.rules.detectors,
            self.rules.detect_method,
            text,
            &mut tally.detectors,
        );
        tally.values += n as u64;
        (n > 0).then(|| masked.into_owned().into_bytes())
    }

    /// Masks an ErrorResponse or NoticeResponse body: detectors run on
    /// every text field, and when columns are declared, the row values
    /// PostgreSQL echoes in DETAIL (`Key (email)=(...)`, `Failing row
    /// contains (...)`) are replaced, since they cannot be told apart by
    /// column. `None` when nothing changed.
    pub fn mask_error(
        &self,
        tag: u8,
        fields: &[(u8, &str)],
        tally: &mut Tally,
    ) -> Option<BytesMut> {
        let mut changed = false;
        let mut w = Writer::new(BytesMut::new(), tag);
        for (code, value) in fields {
            let mut text = std::borrow::Cow::Borrowed(*value);
            if *code == b'D' && !self.rules.columns.is_empty() {
                if let Some(hidden) = hide_echoed_values(&text) {
                    tally.values += 1;
                    text = hidden.into();
                }
            }
            if !self.rules.detectors.is_empty()
                && matches!(code, b'M' | b'D' | b'H' | b'W' | b'q' | b'p')
            {
                let (masked, n) = self.masker.mask_text_counted(
                    &self.rules.detectors,
                    self.rules.detect_method,
                    &text,
                    &mut tally.detectors,
                );
                if n > 0 {
                    tally.values += n as u64;
                    text = masked.into_owned().into();
                }
            }
            changed |= text != *value;
            w.u8(*code).cstr(&text);
        }
        w.u8(0);
        changed.then(|| w.finish())
    }
}

enum Decoded<'a> {
    /// Text to mask, and the bytes that go before its masked form.
    Text(&'a str, &'static [u8]),
    Lossy(String),
    Opaque,
    Unreadable,
}

fn decode<'a>(plan: &FieldPlan, raw: &'a [u8]) -> Decoded<'a> {
    if !plan.binary {
        return text_or_lossy(raw, b"");
    }
    match (type_class(plan.type_oid), plan.type_oid) {
        // jsonb's binary form is a version byte before the JSON text.
        (TypeClass::Json, oid::JSONB) => match raw.split_first() {
            Some((&JSONB_VERSION, rest)) => text_or_lossy(rest, &[JSONB_VERSION]),
            _ => Decoded::Unreadable,
        },
        // text, varchar, bpchar, name and json send their text as is.
        (TypeClass::Text | TypeClass::Json, _) => text_or_lossy(raw, b""),
        // Binary arrays are not rewritten element by element.
        (TypeClass::TextArray, _) => Decoded::Unreadable,
        (TypeClass::Unmaskable, oid::INT2 | oid::INT4 | oid::INT8) => match binary_int(raw) {
            Some(text) => Decoded::Lossy(text),
            None => Decoded::Unreadable,
        },
        (TypeClass::Unmaskable, _) => Decoded::Opaque,
    }
}

fn text_or_lossy<'a>(raw: &'a [u8], prefix: &'static [u8]) -> Decoded<'a> {
    match std::str::from_utf8(raw) {
        Ok(text) => Decoded::Text(text, prefix),
        Err(_) => Decoded::Lossy(String::from_utf8_lossy(raw).into_owned()),
    }
}

/// A binary int2/int4/int8 in decimal, so detectors can read a card number
/// kept in a bigint.
fn binary_int(raw: &[u8]) -> Option<String> {
    Some(match raw.len() {
        2 => i16::from_be_bytes(raw.try_into().ok()?).to_string(),
        4 => i32::from_be_bytes(raw.try_into().ok()?).to_string(),
        8 => i64::from_be_bytes(raw.try_into().ok()?).to_string(),
        _ => return None,
    })
}

/// `Key (email)=(a@b.co) already exists.` → `Key (email)=(****) already
/// exists.`; `Failing row contains (1, a@b.co).` → `Failing row contains
/// (****).` Column names are kept: they are schema, not data.
fn hide_echoed_values(detail: &str) -> Option<String> {
    for marker in [")=(", "Failing row contains ("] {
        if let Some(at) = detail.find(marker) {
            let start = at + marker.len();
            let end = detail.rfind(')').filter(|&e| e >= start)?;
            return Some(format!("{}{REDACTED}{}", &detail[..start], &detail[end..]));
        }
    }
    None
}

#[cfg(test)]
mod tests;

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
//!
//! A field that is not a plain table column (an expression, an aggregate,
//! a whole-row value) is masked whole when its statement may read a
//! declared column (see `lineage`): its value can be any function of one.

pub(crate) mod lineage;

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
    /// Record labels of masked computed fields, made once per session.
    computed: Arc<str>,
    expression: Arc<str>,
}

/// The text that stands for an error or notice of a statement that may
/// read a declared column: PostgreSQL echoes values in them (`invalid
/// input syntax for type integer: "a@b.co,c@d.io"`).
const WITHHELD: &str = "the statement reads a masked column, so the server's message is withheld";

/// What to do with one result field.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    /// Scan with the detectors (no detectors: pass).
    Detect,
    /// A declared column: mask the whole value.
    Whole { method: Method, label: Arc<str> },
    /// Not a plain table column: masked whole when the statement may read
    /// a declared column or under `expressions: mask`, else scanned.
    Computed,
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
    /// Some field is [`Action::Computed`].
    computed: bool,
}

impl Shape {
    /// Whether the statement's lineage matters to these rows.
    pub fn has_computed(&self) -> bool {
        self.computed
    }
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
    pub fn new(rules: MaskRules, masker: Arc<Masker>) -> Self {
        Self {
            rules,
            masker,
            computed: Arc::from("(computed from a masked column)"),
            expression: Arc::from("(expression)"),
        }
    }

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
            .collect::<Vec<_>>();
        let computed = fields.iter().any(|f| f.action == Action::Computed);
        Shape { fields, computed }
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
            computed: false,
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
            None => Action::Computed,
        }
    }

    /// Whether a computed field is masked whole, given whether its
    /// statement may read a declared column.
    fn masks_computed(&self, declared: bool) -> bool {
        declared || self.rules.expressions == Expressions::Mask
    }

    /// Whether a shape can change anything; rows of a clean shape are
    /// forwarded untouched.
    pub fn is_clean(&self, shape: &Shape, declared: bool) -> bool {
        self.rules.detectors.is_empty()
            && !(shape.computed && self.masks_computed(declared))
            && shape
                .fields
                .iter()
                .all(|f| matches!(f.action, Action::Detect | Action::Computed))
    }

    /// Appends the masked form of a DataRow body to `out`; `false`, with
    /// `out` as it was, when nothing in the row changed. `buf` holds one
    /// masked value at a time, reused across rows.
    #[allow(clippy::too_many_arguments)]
    pub fn mask_row(
        &self,
        shape: &Shape,
        declared: bool,
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
        let written = self.write_row(shape, declared, &columns, tally, buf, out);
        if !matches!(written, Ok(true)) {
            out.truncate(start);
        }
        written
    }

    #[allow(clippy::too_many_arguments)]
    fn write_row(
        &self,
        shape: &Shape,
        declared: bool,
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
                Some(value) => self.mask_cell(plan, declared, value, tally, buf),
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
        declared: bool,
        raw: &[u8],
        tally: &mut Tally,
        buf: &mut MaskBuf,
    ) -> Cell {
        let whole = match &plan.action {
            Action::Whole { method, label } => Some((*method, label)),
            Action::Computed if declared => Some((Method::Redact, &self.computed)),
            Action::Computed if self.masks_computed(false) => {
                Some((Method::Redact, &self.expression))
            }
            Action::Detect | Action::Computed => None,
        };
        let (scope, method) = match whole {
            Some((method, _)) => (Scope::Whole, method),
            None if self.rules.detectors.is_empty() => return Cell::Keep,
            None => (
                Scope::Detect(&self.rules.detectors),
                self.rules.detect_method,
            ),
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
        if let (Some((_, label)), false) = (whole, matches!(cell, Cell::Keep)) {
            tally.count_column(label);
        }
        cell
    }

    /// Masks what the detectors find in one line of COPY text or CSV
    /// output; `None` when nothing was found. Masks never contain tabs,
    /// newlines, backslashes or quotes that were not in the value, so the
    /// line keeps its fields.
    ///
    /// A line that is not UTF-8 (a non-UTF8 client_encoding) is read
    /// lossily; if anything is found, the line goes out in that lossy
    /// form, masked, rather than raw.
    pub fn mask_copy_line(&self, line: &[u8], tally: &mut Tally) -> Option<Vec<u8>> {
        self.mask_free_text(line, tally)
    }

    /// Masks what the detectors find in free text; `None` when nothing.
    fn mask_free_text(&self, raw: &[u8], tally: &mut Tally) -> Option<Vec<u8>> {
        if self.rules.detectors.is_empty() {
            return None;
        }
        let text = String::from_utf8_lossy(raw);
        let (masked, n) = self.masker.mask_text_counted(
            &self.rules.detectors,
            self.rules.detect_method,
            &text,
            &mut tally.detectors,
        );
        tally.values += n as u64;
        (n > 0).then(|| masked.into_owned().into_bytes())
    }

    /// Masks a NotificationResponse body (pid, channel, payload). Its
    /// payload was written by whichever session notified, maybe a trigger
    /// passing a row's values: with declared columns, a payload is masked
    /// whole (listening still wakes the client); with detectors only, it
    /// is scanned. The channel name is the listener's own. `None` when
    /// nothing changed.
    pub fn mask_notification(&self, body: &[u8], tally: &mut Tally) -> Option<BytesMut> {
        let (pid, channel, payload) = crate::codec::backend::parse_notification(body).ok()?;
        let masked: Vec<u8> = if !self.rules.columns.is_empty() {
            if payload.is_empty() {
                return None;
            }
            tally.values += 1;
            REDACTED.as_bytes().to_vec()
        } else {
            self.mask_free_text(payload, tally)?
        };
        let mut w = Writer::new(BytesMut::new(), b'A');
        w.i32(pid).bytes(channel).u8(0).bytes(&masked).u8(0);
        Some(w.finish())
    }

    /// Masks an ErrorResponse or NoticeResponse body: detectors run on
    /// every text field, and when columns are declared, the row values
    /// PostgreSQL echoes in DETAIL (`Key (email)=(...)`, `Failing row
    /// contains (...)`) are replaced, since they cannot be told apart by
    /// column. `None` when nothing changed.
    ///
    /// When the statement may read a declared column (`declared`), no text
    /// of the server's passes: the message names the SQLSTATE, and detail,
    /// hint, context and internal query are dropped; code, severity and
    /// positions stay.
    pub fn mask_error(
        &self,
        tag: u8,
        fields: &[(u8, &str)],
        declared: bool,
        tally: &mut Tally,
    ) -> Option<BytesMut> {
        if declared {
            return Some(self.withhold_error(tag, fields, tally));
        }
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

impl SessionMask {
    fn withhold_error(&self, tag: u8, fields: &[(u8, &str)], tally: &mut Tally) -> BytesMut {
        let code = fields
            .iter()
            .find(|(c, _)| *c == b'C')
            .map_or("XX000", |(_, v)| *v);
        let mut w = Writer::new(BytesMut::new(), tag);
        for (field, value) in fields {
            match field {
                b'M' => {
                    w.u8(b'M').cstr(&format!("{WITHHELD} (SQLSTATE {code})"));
                }
                // Severity, code and positions are not data; the names of
                // schema objects (s, t, c, d, n) and the server's source
                // location (F, L, R) are schema and code.
                b'S' | b'V' | b'C' | b'P' | b'p' | b's' | b't' | b'c' | b'd' | b'n' | b'F'
                | b'L' | b'R' => {
                    w.u8(*field).cstr(value);
                }
                _ => {}
            }
        }
        w.u8(0);
        tally.values += 1;
        self.count_withheld(tally);
        w.finish()
    }

    fn count_withheld(&self, tally: &mut Tally) {
        tally.count_column(&self.computed);
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

//! The first rows of each result, kept in its result record so `replay`
//! can show what the client saw. It is taken from the bytes the client
//! received, so a masked principal's sample is masked too.
//!
//! Bounded on purpose: a handful of rows with short cells tells a reviewer
//! what a statement returned without turning the audit log into a copy of
//! the database (or a second hot path).

use serde_json::{Map, Value};

use crate::codec::rows::{parse_data_row, parse_row_description};

/// Rows kept per result.
pub const SAMPLE_ROWS: usize = 5;
/// Characters kept per cell.
const CELL_CHARS: usize = 80;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OutputSample {
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
    /// More rows came than were kept.
    truncated: bool,
}

impl OutputSample {
    /// A RowDescription: the first result set with rows names the columns.
    pub fn note_columns(&mut self, body: &[u8]) {
        if !self.rows.is_empty() {
            return;
        }
        if let Ok(fields) = parse_row_description(body) {
            self.columns = fields.iter().map(|f| f.name.to_string()).collect();
        }
    }

    /// A DataRow body, as sent to the client.
    pub fn note_row(&mut self, body: &[u8]) {
        if self.rows.len() >= SAMPLE_ROWS {
            self.truncated = true;
            return;
        }
        if let Ok(cells) = parse_data_row(body) {
            self.rows.push(
                cells
                    .into_iter()
                    .map(|c| c.map_or(Value::Null, cell))
                    .collect(),
            );
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Moves the sample into JSON (`json!` would copy every cell).
    pub fn into_json(self) -> Value {
        let columns = self.columns.into_iter().map(Value::String).collect();
        let rows = self.rows.into_iter().map(Value::Array).collect();
        let mut sample = Map::with_capacity(3);
        sample.insert("columns".into(), Value::Array(columns));
        sample.insert("rows".into(), Value::Array(rows));
        sample.insert("truncated".into(), Value::Bool(self.truncated));
        Value::Object(sample)
    }
}

/// Text as text (cut to [`CELL_CHARS`]); anything else, such as binary
/// format values, as a hex preview.
fn cell(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text)
            if !text
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t') =>
        {
            match text.char_indices().nth(CELL_CHARS) {
                Some((cut, _)) => Value::String(format!("{}…", &text[..cut])),
                None => Value::String(text.to_string()),
            }
        }
        _ => {
            let shown = &bytes[..bytes.len().min(CELL_CHARS / 2)];
            let more = if shown.len() < bytes.len() { "…" } else { "" };
            Value::String(format!("\\x{}{more}", hex::encode(shown)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::rows::encode_data_row;
    use bytes::BytesMut;
    use serde_json::json;

    fn row(values: &[Option<&[u8]>]) -> Vec<u8> {
        encode_data_row(BytesMut::new(), values).unwrap()[5..].to_vec()
    }

    #[test]
    fn keeps_a_bounded_sample() {
        let mut s = OutputSample::default();
        // RowDescription: one field "id", text format.
        let mut t = 1i16.to_be_bytes().to_vec();
        t.extend_from_slice(b"id\0");
        t.extend_from_slice(&[0; 18]);
        s.note_columns(&t);
        for _ in 0..SAMPLE_ROWS + 2 {
            s.note_row(&row(&[Some(b"1"), None, Some(&[0, 0, 0, 7])]));
        }
        let long = "é".repeat(200);
        let mut other = OutputSample::default();
        other.note_row(&row(&[Some(long.as_bytes())]));
        let json = s.into_json();
        assert_eq!(json["columns"], json!(["id"]));
        assert_eq!(json["rows"].as_array().unwrap().len(), SAMPLE_ROWS);
        assert_eq!(json["rows"][0], json!(["1", null, "\\x00000007"]));
        assert_eq!(json["truncated"], true);
        let cut = other.into_json()["rows"][0][0]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(cut.chars().count(), CELL_CHARS + 1);
    }

    #[test]
    fn garbage_is_ignored() {
        let mut s = OutputSample::default();
        s.note_columns(b"\xff");
        s.note_row(b"\0\x05");
        assert!(s.is_empty());
    }
}

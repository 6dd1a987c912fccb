//! Result rows from an upstream: RowDescription ('T') read into field
//! descriptions, DataRow ('D') split into column slices and rebuilt.
//!
//! Masking (issue 3) reads a RowDescription once per result set to learn each
//! field's source column, type and format, then rewrites DataRows: parse into
//! borrowed slices, swap the ones it masks, encode a fresh message whose
//! length words are all recomputed by [`encode_data_row`].

use bytes::BytesMut;

use super::{CodecError, Reader};

/// Smallest encoding of one RowDescription field: an empty name (its NUL)
/// plus 18 bytes of fixed-width attributes.
const MIN_FIELD_LEN: usize = 1 + 4 + 2 + 4 + 2 + 4 + 2;

/// Smallest encoding of one DataRow column: its length word (NULL or empty).
const MIN_COLUMN_LEN: usize = 4;

/// One field of a RowDescription, as the server describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldDescription<'a> {
    /// The column label (`AS` alias if any), not necessarily the source name.
    pub name: &'a str,
    /// OID of the source table, or 0 when the field is not a plain column
    /// (an expression, a function result, a literal).
    pub table_oid: u32,
    /// Attribute number of the source column in `table_oid`, or 0.
    pub column: i16,
    /// OID of the field's data type.
    pub type_oid: u32,
    /// `pg_type.typlen`: negative for variable-width types.
    pub type_len: i16,
    /// Type modifier (`pg_attribute.atttypmod`), e.g. a varchar's limit.
    pub type_mod: i32,
    /// Format code: 0 text, 1 binary. Passed through as sent; callers that
    /// must understand the value (masking) refuse codes they do not know.
    pub format: i16,
}

/// Parses a RowDescription body (tag and length word already stripped).
pub fn parse_row_description(body: &[u8]) -> Result<Vec<FieldDescription<'_>>, CodecError> {
    let mut r = Reader::new(body, "RowDescription");
    let count = usize::try_from(r.i16()?)
        .map_err(|_| CodecError::malformed("RowDescription", "negative field count"))?;
    // A lying count cannot make us allocate more than the body could hold.
    let mut fields = Vec::with_capacity(count.min(r.rest().len() / MIN_FIELD_LEN));
    for _ in 0..count {
        fields.push(FieldDescription {
            name: r.cstr()?,
            table_oid: r.i32()? as u32,
            column: r.i16()?,
            type_oid: r.i32()? as u32,
            type_len: r.i16()?,
            type_mod: r.i32()?,
            format: r.i16()?,
        });
    }
    r.expect_end()?;
    Ok(fields)
}

/// Splits a DataRow body into its column values; `None` is SQL NULL.
///
/// Slices borrow from `body`, so a rewrite can keep most columns as they are
/// and hand the list (with a few replaced) to [`encode_data_row`].
pub fn parse_data_row(body: &[u8]) -> Result<Vec<Option<&[u8]>>, CodecError> {
    let mut r = Reader::new(body, "DataRow");
    let count = usize::try_from(r.i16()?)
        .map_err(|_| CodecError::malformed("DataRow", "negative column count"))?;
    let mut columns = Vec::with_capacity(count.min(r.rest().len() / MIN_COLUMN_LEN));
    for _ in 0..count {
        let len = r.i32()?;
        columns.push(match len {
            -1 => None,
            // Non-negative i32 always fits in usize on the targets we build.
            0.. => Some(r.take(len as usize)?),
            _ => return Err(CodecError::malformed("DataRow", "invalid column length")),
        });
    }
    r.expect_end()?;
    Ok(columns)
}

/// Appends a complete DataRow message (tag 'D', length word, column count,
/// then each value with its own length, -1 for NULL) to `out`.
///
/// Fails, rather than writing a truncated length that would desynchronise
/// the client's stream, if there are more than `i16::MAX` columns or a value
/// of 2 GiB or more (PostgreSQL itself stops at 1664 columns and 1 GiB).
pub fn encode_data_row(
    mut out: BytesMut,
    columns: &[Option<&[u8]>],
) -> Result<BytesMut, CodecError> {
    let mut row = DataRowWriter::new(&mut out, columns.len())?;
    for column in columns {
        row.value(*column)?;
    }
    row.finish();
    Ok(out)
}

/// Appends a DataRow to a buffer a value at a time, so a rewritten row
/// goes straight into the output (see [`encode_data_row`] for the limits).
/// On an error the buffer holds a partial message: the caller truncates it.
pub struct DataRowWriter<'a> {
    out: &'a mut BytesMut,
    /// Where the message's tag is.
    start: usize,
}

fn too_large() -> CodecError {
    CodecError::malformed("DataRow", "too many columns or a value over 2 GiB")
}

impl<'a> DataRowWriter<'a> {
    pub fn new(out: &'a mut BytesMut, columns: usize) -> Result<Self, CodecError> {
        let count = i16::try_from(columns).map_err(|_| too_large())?;
        let start = out.len();
        out.extend_from_slice(&[b'D', 0, 0, 0, 0]);
        out.extend_from_slice(&count.to_be_bytes());
        Ok(Self { out, start })
    }

    /// One value (`None` is NULL).
    pub fn value(&mut self, value: Option<&[u8]>) -> Result<(), CodecError> {
        match value {
            Some(value) => self.joined(&[value]),
            None => {
                self.out.extend_from_slice(&(-1i32).to_be_bytes());
                Ok(())
            }
        }
    }

    /// One value made of `parts` one after another.
    pub fn joined(&mut self, parts: &[&[u8]]) -> Result<(), CodecError> {
        let len = parts.iter().map(|p| p.len()).sum::<usize>();
        let len = i32::try_from(len).map_err(|_| too_large())?;
        self.out.extend_from_slice(&len.to_be_bytes());
        for part in parts {
            self.out.extend_from_slice(part);
        }
        Ok(())
    }

    /// Writes the message's length word.
    pub fn finish(self) {
        let len = (self.out.len() - self.start - 1) as u32;
        self.out[self.start + 1..self.start + 5].copy_from_slice(&len.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_frame, MAX_MESSAGE_LEN};
    use proptest::prelude::*;

    /// A RowDescription body as a server would send it (the codec never
    /// builds one, so the encoder lives here).
    fn row_description_body(fields: &[FieldDescription<'_>]) -> Vec<u8> {
        let mut b = (fields.len() as i16).to_be_bytes().to_vec();
        for f in fields {
            b.extend_from_slice(f.name.as_bytes());
            b.push(0);
            b.extend_from_slice(&f.table_oid.to_be_bytes());
            b.extend_from_slice(&f.column.to_be_bytes());
            b.extend_from_slice(&f.type_oid.to_be_bytes());
            b.extend_from_slice(&f.type_len.to_be_bytes());
            b.extend_from_slice(&f.type_mod.to_be_bytes());
            b.extend_from_slice(&f.format.to_be_bytes());
        }
        b
    }

    fn sample_fields() -> Vec<FieldDescription<'static>> {
        vec![
            FieldDescription {
                name: "e",
                table_oid: 16_384,
                column: 2,
                type_oid: 25,
                type_len: -1,
                type_mod: -1,
                format: 0,
            },
            FieldDescription {
                name: "?column?",
                table_oid: 0,
                column: 0,
                type_oid: 23,
                type_len: 4,
                type_mod: -1,
                format: 1,
            },
            FieldDescription {
                name: "",
                table_oid: u32::MAX,
                column: i16::MIN,
                type_oid: u32::MAX,
                type_len: i16::MAX,
                type_mod: i32::MIN,
                format: 0,
            },
        ]
    }

    /// Encodes, then splits the result back into one frame, checking nothing
    /// is left over, and returns the frame body.
    fn encode_and_frame(columns: &[Option<&[u8]>]) -> bytes::Bytes {
        let mut buf = encode_data_row(BytesMut::new(), columns).unwrap();
        let frame = decode_frame(&mut buf, MAX_MESSAGE_LEN)
            .expect("valid frame")
            .expect("complete frame");
        assert_eq!(frame.tag, b'D');
        assert!(buf.is_empty(), "encoder wrote bytes past its length word");
        frame.body
    }

    #[test]
    fn row_description_round_trips() {
        let fields = sample_fields();
        let body = row_description_body(&fields);
        assert_eq!(parse_row_description(&body).unwrap(), fields);
        assert_eq!(parse_row_description(b"\0\0").unwrap(), vec![]);
    }

    #[test]
    fn row_description_from_the_wire() {
        // What PostgreSQL sends for `SELECT 1 AS a`, tag and length stripped.
        let body = [
            &b"\0\x01"[..],      // one field
            b"a\0",              // name
            b"\0\0\0\0",         // table OID: not a column
            b"\0\0",             // attribute number
            b"\0\0\0\x17",       // int4
            b"\0\x04",           // typlen
            b"\xff\xff\xff\xff", // typmod -1
            b"\0\0",             // text format
        ]
        .concat();
        assert_eq!(
            parse_row_description(&body).unwrap(),
            vec![FieldDescription {
                name: "a",
                table_oid: 0,
                column: 0,
                type_oid: 23,
                type_len: 4,
                type_mod: -1,
                format: 0,
            }]
        );
    }

    #[test]
    fn malformed_row_descriptions_are_errors() {
        let good = row_description_body(&sample_fields());
        let mut trailing = good.clone();
        trailing.push(0);
        let mut count_too_high = good.clone();
        count_too_high[1] += 1;
        let mut count_too_low = good.clone();
        count_too_low[1] -= 1;
        let mut bad_utf8 = row_description_body(&sample_fields()[..1]);
        bad_utf8[2] = 0xff;
        for (why, body) in [
            ("empty", vec![]),
            ("half a count", vec![0]),
            ("negative count", b"\xff\xff".to_vec()),
            ("count with no fields", b"\0\x01".to_vec()),
            ("name not terminated", b"\0\x01abc".to_vec()),
            ("trailing bytes", trailing),
            ("count too high", count_too_high),
            ("count too low", count_too_low),
            ("name not UTF-8", bad_utf8),
        ] {
            assert!(parse_row_description(&body).is_err(), "{why}: {body:?}");
        }
        // Every strict prefix of a good body is truncated.
        for end in 0..good.len() {
            assert!(parse_row_description(&good[..end]).is_err(), "prefix {end}");
        }
    }

    #[test]
    fn data_row_round_trips() {
        let cols: Vec<Option<&[u8]>> =
            vec![Some(b"alice@example.com"), None, Some(b""), Some(b"42")];
        let mut buf = encode_data_row(BytesMut::new(), &cols).unwrap();
        // Exact wire bytes: tag, length (4 + 2 + 4+17 + 4 + 4+0 + 4+2 = 41).
        assert_eq!(&buf[..7], b"D\0\0\0\x29\0\x04");
        let frame = decode_frame(&mut buf, MAX_MESSAGE_LEN).unwrap().unwrap();
        assert_eq!(parse_data_row(&frame.body).unwrap(), cols);

        let empty = encode_data_row(BytesMut::new(), &[]).unwrap();
        assert_eq!(&empty[..], b"D\0\0\0\x06\0\0");
        assert_eq!(
            parse_data_row(b"\0\0").unwrap(),
            Vec::<Option<&[u8]>>::new()
        );
    }

    #[test]
    fn data_row_appends_to_existing_output() {
        let out = BytesMut::from(&b"Z\0\0\0\x05I"[..]);
        let mut out = encode_data_row(out, &[None]).unwrap();
        let z = decode_frame(&mut out, MAX_MESSAGE_LEN).unwrap().unwrap();
        assert_eq!((z.tag, &z.body[..]), (b'Z', &b"I"[..]));
        let d = decode_frame(&mut out, MAX_MESSAGE_LEN).unwrap().unwrap();
        assert_eq!(parse_data_row(&d.body).unwrap(), vec![None]);
    }

    #[test]
    fn malformed_data_rows_are_errors() {
        let good = encode_and_frame(&[Some(b"abc"), None, Some(b"")]).to_vec();
        let mut trailing = good.clone();
        trailing.push(b'x');
        let mut count_too_high = good.clone();
        count_too_high[1] += 1;
        let mut count_too_low = good.clone();
        count_too_low[1] -= 1;
        let mut length_too_long = good.clone();
        length_too_long[5] = 4; // "abc" claims 4 bytes
        let mut length_too_short = good.clone();
        length_too_short[5] = 2;
        for (why, body) in [
            ("empty", vec![]),
            ("half a count", vec![0]),
            ("negative count", b"\xff\xff".to_vec()),
            ("count with no columns", b"\0\x01".to_vec()),
            ("half a length", b"\0\x01\0\0".to_vec()),
            ("length -2", b"\0\x01\xff\xff\xff\xfe".to_vec()),
            ("length i32::MIN", b"\0\x01\x80\0\0\0".to_vec()),
            ("length past the end", b"\0\x01\x7f\xff\xff\xffab".to_vec()),
            ("trailing bytes", trailing),
            ("count too high", count_too_high),
            ("count too low", count_too_low),
            ("length too long", length_too_long),
            ("length too short", length_too_short),
        ] {
            assert!(parse_data_row(&body).is_err(), "{why}: {body:?}");
        }
        for end in 0..good.len() {
            assert!(parse_data_row(&good[..end]).is_err(), "prefix {end}");
        }
    }

    #[test]
    fn huge_counts_do_not_preallocate() {
        // 32767 claimed columns in a 2-byte body: fails, and cheaply.
        assert!(parse_data_row(b"\x7f\xff").is_err());
        assert!(parse_row_description(b"\x7f\xff").is_err());
    }

    fn columns() -> impl Strategy<Value = Vec<Option<Vec<u8>>>> {
        prop::collection::vec(
            prop::option::of(prop::collection::vec(any::<u8>(), 0..48)),
            0..24,
        )
    }

    fn borrowed(cols: &[Option<Vec<u8>>]) -> Vec<Option<&[u8]>> {
        cols.iter().map(Option::as_deref).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn data_rows_round_trip(cols in columns()) {
            let cols = borrowed(&cols);
            let body = encode_and_frame(&cols);
            prop_assert_eq!(parse_data_row(&body).unwrap(), cols);
        }

        /// The masking path: parse a row off the wire, replace one column
        /// with anything (longer, shorter, NULL), re-encode; the result is
        /// still one well-formed frame carrying exactly the new row.
        #[test]
        fn rewritten_data_rows_stay_valid(
            cols in columns(),
            pick in any::<prop::sample::Index>(),
            new in prop::option::of(prop::collection::vec(any::<u8>(), 0..200)),
        ) {
            let original = encode_and_frame(&borrowed(&cols));
            let mut row = parse_data_row(&original).unwrap();
            let mut expected = cols.clone();
            if !row.is_empty() {
                let i = pick.index(row.len());
                row[i] = new.as_deref();
                expected[i] = new.clone();
            }
            let rewritten = encode_and_frame(&row);
            prop_assert_eq!(parse_data_row(&rewritten).unwrap(), borrowed(&expected));
        }

        #[test]
        fn parsers_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_row_description(&body);
            let _ = parse_data_row(&body);
        }

        /// Arbitrary bytes behind a small, plausible count reach deeper into
        /// the field/column loops than fully random bodies do.
        #[test]
        fn parsers_never_panic_with_plausible_counts(
            count in 0i16..8,
            rest in prop::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut body = count.to_be_bytes().to_vec();
            body.extend_from_slice(&rest);
            if let Ok(fields) = parse_row_description(&body) {
                prop_assert_eq!(fields.len(), count as usize);
            }
            if let Ok(cols) = parse_data_row(&body) {
                prop_assert_eq!(cols.len(), count as usize);
                prop_assert_eq!(&encode_and_frame(&cols)[..], &body[..]);
            }
        }
    }
}

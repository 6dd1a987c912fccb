//! Messages a client sends after startup, as typed views over a [`Frame`].

use bytes::BytesMut;

use super::{CodecError, Frame, Reader, Writer};

/// The messages the gateway has to understand; the rest pass by tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendMessage<'a> {
    Query(&'a str),
    Parse {
        name: &'a str,
        query: &'a str,
        param_types: usize,
    },
    Bind {
        portal: &'a str,
        statement: &'a str,
        params: usize,
    },
    Describe {
        kind: u8,
        name: &'a str,
    },
    Execute {
        portal: &'a str,
        max_rows: i32,
    },
    Close {
        kind: u8,
        name: &'a str,
    },
    Sync,
    Flush,
    Terminate,
    Password(&'a [u8]),
    CopyData,
    CopyDone,
    CopyFail,
    /// A fastpath call: the function's oid and its arguments as sent
    /// (format codes, values and result format; recorded only as a fingerprint).
    FunctionCall {
        oid: u32,
        args: usize,
        arguments: &'a [u8],
    },
}

impl<'a> FrontendMessage<'a> {
    pub fn parse(frame: &'a Frame) -> Result<Self, CodecError> {
        let body = &frame.body[..];
        Ok(match frame.tag {
            b'Q' => {
                let mut r = Reader::new(body, "Query");
                let q = r.cstr()?;
                r.expect_end()?;
                Self::Query(q)
            }
            b'P' => parse_parse(body)?,
            b'B' => parse_bind(body)?,
            b'D' => {
                let (kind, name) = kind_and_name(body, "Describe")?;
                Self::Describe { kind, name }
            }
            b'C' => {
                let (kind, name) = kind_and_name(body, "Close")?;
                Self::Close { kind, name }
            }
            b'E' => {
                let mut r = Reader::new(body, "Execute");
                let portal = r.cstr()?;
                let max_rows = r.i32()?;
                r.expect_end()?;
                Self::Execute { portal, max_rows }
            }
            b'S' => Self::Sync,
            b'H' => Self::Flush,
            b'X' => Self::Terminate,
            b'p' => Self::Password(body),
            b'd' => Self::CopyData,
            b'c' => Self::CopyDone,
            b'f' => Self::CopyFail,
            b'F' => parse_function_call(body)?,
            _ => {
                return Err(CodecError::malformed(
                    "message",
                    "unknown frontend message type",
                ))
            }
        })
    }
}

fn parse_parse(body: &[u8]) -> Result<FrontendMessage<'_>, CodecError> {
    let mut r = Reader::new(body, "Parse");
    let name = r.cstr()?;
    let query = r.cstr()?;
    let n = r.i16()?;
    if n < 0 {
        return Err(CodecError::malformed("Parse", "negative parameter count"));
    }
    r.take(n as usize * 4)?;
    r.expect_end()?;
    Ok(FrontendMessage::Parse {
        name,
        query,
        param_types: n as usize,
    })
}

fn parse_bind(body: &[u8]) -> Result<FrontendMessage<'_>, CodecError> {
    let mut r = Reader::new(body, "Bind");
    let portal = r.cstr()?;
    let statement = r.cstr()?;
    let params = skip_values(&mut r, "Bind")?;
    let result_formats = non_negative(r.i16()?)?;
    r.take(result_formats * 2)?;
    r.expect_end()?;
    Ok(FrontendMessage::Bind {
        portal,
        statement,
        params,
    })
}

fn parse_function_call(body: &[u8]) -> Result<FrontendMessage<'_>, CodecError> {
    let mut r = Reader::new(body, "FunctionCall");
    let oid = r.i32()? as u32;
    let arguments = r.rest();
    let args = skip_values(&mut r, "FunctionCall")?;
    r.i16()?;
    r.expect_end()?;
    Ok(FrontendMessage::FunctionCall {
        oid,
        args,
        arguments,
    })
}

/// Skips the format codes and values that Bind and FunctionCall share;
/// returns how many values there were.
fn skip_values(r: &mut Reader<'_>, what: &'static str) -> Result<usize, CodecError> {
    let formats = non_negative(r.i16()?)?;
    r.take(formats * 2)?;
    let values = non_negative(r.i16()?)?;
    for _ in 0..values {
        let len = r.i32()?;
        if len > 0 {
            r.take(len as usize)?;
        } else if len < -1 {
            return Err(CodecError::malformed(what, "invalid value length"));
        }
    }
    Ok(values)
}

fn non_negative(n: i16) -> Result<usize, CodecError> {
    usize::try_from(n).map_err(|_| CodecError::malformed("Bind", "negative count"))
}

fn kind_and_name<'a>(body: &'a [u8], what: &'static str) -> Result<(u8, &'a str), CodecError> {
    let mut r = Reader::new(body, what);
    let kind = r.u8()?;
    if kind != b'S' && kind != b'P' {
        return Err(CodecError::malformed(what, "kind must be 'S' or 'P'"));
    }
    let name = r.cstr()?;
    r.expect_end()?;
    Ok((kind, name))
}

/// Password message payload: the token, NUL-terminated.
pub fn password_text(payload: &[u8]) -> Result<&str, CodecError> {
    let mut r = Reader::new(payload, "PasswordMessage");
    let s = r.cstr()?;
    r.expect_end()?;
    Ok(s)
}

pub fn encode_describe(out: BytesMut, kind: u8, name: &str) -> BytesMut {
    let mut w = Writer::new(out, b'D');
    w.u8(kind).cstr(name);
    w.finish()
}

/// A simple Query: the gateway's own catalog lookups use it.
pub fn encode_query(out: BytesMut, sql: &str) -> BytesMut {
    let mut w = Writer::new(out, b'Q');
    w.cstr(sql);
    w.finish()
}

/// A Parse of the unnamed statement, no parameter types: the gateway asks
/// the server for its own syntax error this way, without running anything.
pub fn encode_parse(out: BytesMut, sql: &str) -> BytesMut {
    let mut w = Writer::new(out, b'P');
    w.cstr("").cstr(sql).bytes(&0i16.to_be_bytes());
    w.finish()
}

pub fn encode_sync(out: BytesMut) -> BytesMut {
    Writer::new(out, b'S').finish()
}

pub fn encode_flush(out: BytesMut) -> BytesMut {
    Writer::new(out, b'H').finish()
}

pub fn encode_terminate(out: BytesMut) -> BytesMut {
    Writer::new(out, b'X').finish()
}

pub fn encode_password(out: BytesMut, password: &[u8]) -> BytesMut {
    let mut w = Writer::new(out, b'p');
    w.bytes(password).u8(0);
    w.finish()
}

/// SASLInitialResponse: mechanism name, then the client-first message.
pub fn encode_sasl_initial(out: BytesMut, mechanism: &str, data: &[u8]) -> BytesMut {
    let mut w = Writer::new(out, b'p');
    w.cstr(mechanism).i32(data.len() as i32).bytes(data);
    w.finish()
}

pub fn encode_sasl_response(out: BytesMut, data: &[u8]) -> BytesMut {
    let mut w = Writer::new(out, b'p');
    w.bytes(data);
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::decode_frame;
    use bytes::Bytes;

    fn frame(tag: u8, body: &[u8]) -> Frame {
        Frame {
            tag,
            body: Bytes::copy_from_slice(body),
        }
    }

    #[test]
    fn parses_fastpath_calls_and_refuses_truncated_ones() {
        // lo_open(16400, INV_READ): two binary int4 arguments.
        let body =
            b"\0\0\x03\xbf\0\x01\0\x01\0\x02\0\0\0\x04\0\0\x40\x10\0\0\0\x04\0\x04\0\0\0\x01";
        assert_eq!(
            FrontendMessage::parse(&frame(b'F', body)).unwrap(),
            FrontendMessage::FunctionCall {
                oid: 959,
                args: 2,
                arguments: &body[4..],
            }
        );
        for cut in [3, 9, 20, body.len() - 1] {
            assert!(FrontendMessage::parse(&frame(b'F', &body[..cut])).is_err());
        }
    }

    #[test]
    fn parses_extended_messages() {
        let parse = frame(b'P', b"s1\0select $1\0\0\x01\0\0\0\x17");
        assert_eq!(
            FrontendMessage::parse(&parse).unwrap(),
            FrontendMessage::Parse {
                name: "s1",
                query: "select $1",
                param_types: 1
            }
        );
        let bind = frame(b'B', b"\0s1\0\0\0\0\x01\0\0\0\x0242\0\0");
        assert_eq!(
            FrontendMessage::parse(&bind).unwrap(),
            FrontendMessage::Bind {
                portal: "",
                statement: "s1",
                params: 1
            }
        );
        let exec = frame(b'E', b"\0\0\0\0\x0a");
        assert_eq!(
            FrontendMessage::parse(&exec).unwrap(),
            FrontendMessage::Execute {
                portal: "",
                max_rows: 10
            }
        );
    }

    #[test]
    fn truncated_and_lying_bodies_are_errors() {
        for (tag, body) in [
            (b'Q', &b"select 1"[..]),
            (b'P', b"s1\0select\0\0\x05"),
            (b'B', b"\0s1\0\0\0\0\x01\0\0\0\x09ab"),
            (b'B', b"\0s1\0\0\0\0\x01\xff\xff\xff\xf0\0\0"),
            (b'E', b"\0\0\0"),
            (b'D', b"Xname\0"),
            (b'Z', b""),
        ] {
            assert!(
                FrontendMessage::parse(&frame(tag, body)).is_err(),
                "{body:?}"
            );
        }
    }

    #[test]
    fn encoders_produce_decodable_frames() {
        let mut out = encode_describe(BytesMut::new(), b'S', "x");
        out = encode_sync(out);
        let d = decode_frame(&mut out, 1024).unwrap().unwrap();
        assert_eq!(
            FrontendMessage::parse(&d).unwrap(),
            FrontendMessage::Describe {
                kind: b'S',
                name: "x"
            }
        );
        let s = decode_frame(&mut out, 1024).unwrap().unwrap();
        assert_eq!(FrontendMessage::parse(&s).unwrap(), FrontendMessage::Sync);
    }
}

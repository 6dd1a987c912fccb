//! PostgreSQL wire protocol v3 codec: bytes ⇄ typed messages, no I/O.
//!
//! The proxy forwards most bytes untouched, so this codec is built around
//! [`Frame`]: a tag plus a body sliced out of the read buffer without copying.
//! Typed views ([`frontend::FrontendMessage`], [`backend`] helpers) are parsed
//! only for the messages the gateway must understand. Everything here is
//! fuzzable on its own (see `fuzz/`).

pub mod backend;
pub mod frontend;
pub mod rows;
pub mod startup;

use bytes::{Buf, Bytes, BytesMut};

/// Largest regular message we accept from a client. PostgreSQL allows up to
/// 1 GiB; a gateway buffering whole messages caps lower to bound memory.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024 * 1024;

/// PostgreSQL's own cap on startup packets.
pub const MAX_STARTUP_LEN: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("invalid message length {len} for message type {tag:?}")]
    BadLength { tag: char, len: i64 },
    #[error("message type {tag:?} is {len} bytes, over the {max}-byte limit")]
    TooLarge { tag: char, len: usize, max: usize },
    #[error("malformed {what}: {problem}")]
    Malformed {
        what: &'static str,
        problem: &'static str,
    },
}

impl CodecError {
    pub(crate) fn malformed(what: &'static str, problem: &'static str) -> Self {
        Self::Malformed { what, problem }
    }
}

/// One tagged protocol message: `tag` byte, then `body` (length word stripped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

impl Frame {
    /// The message as it travels on the wire (tag + length + body).
    pub fn encode_into(&self, out: &mut BytesMut) {
        out.reserve(5 + self.body.len());
        out.extend_from_slice(&[self.tag]);
        out.extend_from_slice(&((self.body.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(&self.body);
    }
}

/// Splits the next complete tagged message off `buf`, if one is there.
pub fn decode_frame(buf: &mut BytesMut, max_len: usize) -> Result<Option<Frame>, CodecError> {
    let Some(total) = peek_frame_len(buf, max_len)? else {
        return Ok(None);
    };
    let mut raw = buf.split_to(total);
    let tag = raw[0];
    raw.advance(5);
    Ok(Some(Frame {
        tag,
        body: raw.freeze(),
    }))
}

/// Length of the complete message at the start of `buf` (tag + length word +
/// body), or `None` while it is still incomplete.
pub fn peek_frame_len(buf: &[u8], max_len: usize) -> Result<Option<usize>, CodecError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let declared = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if declared < 4 {
        return Err(CodecError::BadLength {
            tag: tag as char,
            len: declared.into(),
        });
    }
    let len = declared as usize;
    if len > max_len {
        return Err(CodecError::TooLarge {
            tag: tag as char,
            len,
            max: max_len,
        });
    }
    if buf.len() < len + 1 {
        return Ok(None);
    }
    Ok(Some(len + 1))
}

/// A cursor over a message body for the few fields we decode.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }

    pub fn cstr(&mut self) -> Result<&'a str, CodecError> {
        let end = self
            .buf
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| CodecError::malformed(self.what, "string is not NUL-terminated"))?;
        let s = std::str::from_utf8(&self.buf[..end])
            .map_err(|_| CodecError::malformed(self.what, "string is not valid UTF-8"))?;
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    pub fn u8(&mut self) -> Result<u8, CodecError> {
        let (&b, rest) = self
            .buf
            .split_first()
            .ok_or_else(|| CodecError::malformed(self.what, "truncated"))?;
        self.buf = rest;
        Ok(b)
    }

    pub fn i16(&mut self) -> Result<i16, CodecError> {
        let bytes = self.take(2)?;
        Ok(i16::from_be_bytes([bytes[0], bytes[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, CodecError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.buf.len() < n {
            return Err(CodecError::malformed(self.what, "truncated"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }

    pub fn expect_end(&self) -> Result<(), CodecError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(CodecError::malformed(self.what, "trailing bytes"))
        }
    }
}

/// Builds a tagged message: the length word is patched in on `finish`.
pub(crate) struct Writer {
    buf: BytesMut,
    start: usize,
}

impl Writer {
    pub fn new(out: BytesMut, tag: u8) -> Self {
        let mut buf = out;
        buf.extend_from_slice(&[tag]);
        let start = buf.len();
        buf.extend_from_slice(&[0, 0, 0, 0]);
        Self { buf, start }
    }

    pub fn cstr(&mut self, s: &str) -> &mut Self {
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.extend_from_slice(&[0]);
        self
    }

    pub fn u8(&mut self, b: u8) -> &mut Self {
        self.buf.extend_from_slice(&[b]);
        self
    }

    pub fn i32(&mut self, v: i32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }

    pub fn finish(mut self) -> BytesMut {
        let len = (self.buf.len() - self.start) as u32;
        self.buf[self.start..self.start + 4].copy_from_slice(&len.to_be_bytes());
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_frames_wait_for_more() {
        let mut buf = BytesMut::from(&b"Q\0\0\0\x08SEL"[..]);
        assert_eq!(decode_frame(&mut buf, MAX_MESSAGE_LEN), Ok(None));
        buf.extend_from_slice(b"\0");
        let f = decode_frame(&mut buf, MAX_MESSAGE_LEN).unwrap().unwrap();
        assert_eq!(f.tag, b'Q');
        assert_eq!(&f.body[..], b"SEL\0");
        assert!(buf.is_empty());
    }

    #[test]
    fn lying_lengths_are_errors() {
        let mut short = BytesMut::from(&b"Q\0\0\0\x02"[..]);
        assert!(matches!(
            decode_frame(&mut short, MAX_MESSAGE_LEN),
            Err(CodecError::BadLength { .. })
        ));
        let mut negative = BytesMut::from(&b"Q\xff\xff\xff\xff"[..]);
        assert!(decode_frame(&mut negative, MAX_MESSAGE_LEN).is_err());
        let mut huge = BytesMut::from(&b"Q\x7f\xff\xff\xff"[..]);
        assert!(matches!(
            decode_frame(&mut huge, MAX_MESSAGE_LEN),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn frame_round_trips() {
        let frame = Frame {
            tag: b'S',
            body: Bytes::new(),
        };
        let mut out = BytesMut::new();
        frame.encode_into(&mut out);
        assert_eq!(&out[..], b"S\0\0\0\x04");
        assert_eq!(decode_frame(&mut out, 10).unwrap(), Some(frame));
    }
}

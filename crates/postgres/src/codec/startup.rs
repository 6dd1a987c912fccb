//! The untagged first packet of a connection: SSLRequest, GSSENCRequest,
//! CancelRequest or the protocol 3.0 StartupMessage.

use bytes::BytesMut;

use super::{CodecError, Reader, MAX_STARTUP_LEN};

const PROTOCOL_3_0: i32 = 196_608;
const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel {
        process_id: u32,
        secret_key: u32,
    },
    Startup {
        params: Vec<(String, String)>,
    },
    /// A protocol version we do not speak (2.0, or 3.x with x > 0 and no fallback).
    UnsupportedVersion {
        major: u16,
        minor: u16,
    },
}

impl StartupPacket {
    pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Decodes the startup packet at the front of `buf`, consuming it when complete.
pub fn decode_startup(buf: &mut BytesMut) -> Result<Option<StartupPacket>, CodecError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let declared = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if declared < 8 {
        return Err(CodecError::BadLength {
            tag: '\0',
            len: declared.into(),
        });
    }
    let len = declared as usize;
    if len > MAX_STARTUP_LEN {
        return Err(CodecError::TooLarge {
            tag: '\0',
            len,
            max: MAX_STARTUP_LEN,
        });
    }
    if buf.len() < len {
        return Ok(None);
    }
    let packet = buf.split_to(len);
    parse_packet(&packet[4..]).map(Some)
}

fn parse_packet(body: &[u8]) -> Result<StartupPacket, CodecError> {
    let mut r = Reader::new(body, "startup packet");
    let code = r.i32()?;
    match code {
        SSL_REQUEST => r.expect_end().map(|_| StartupPacket::SslRequest),
        GSSENC_REQUEST => r.expect_end().map(|_| StartupPacket::GssEncRequest),
        CANCEL_REQUEST => {
            let process_id = r.i32()? as u32;
            let secret_key = r.i32()? as u32;
            r.expect_end()?;
            Ok(StartupPacket::Cancel {
                process_id,
                secret_key,
            })
        }
        PROTOCOL_3_0 => parse_params(r).map(|params| StartupPacket::Startup { params }),
        other => {
            let (major, minor) = ((other >> 16) as u16, (other & 0xffff) as u16);
            if major == 3 {
                // A newer 3.x minor: we answer as 3.0 would after negotiation,
                // which every 3.x client accepts.
                parse_params(r).map(|params| StartupPacket::Startup { params })
            } else {
                Ok(StartupPacket::UnsupportedVersion { major, minor })
            }
        }
    }
}

fn parse_params(mut r: Reader<'_>) -> Result<Vec<(String, String)>, CodecError> {
    let mut params = Vec::new();
    loop {
        let name = r.cstr()?;
        if name.is_empty() {
            r.expect_end()?;
            return Ok(params);
        }
        let value = r.cstr()?;
        params.push((name.to_string(), value.to_string()));
    }
}

/// Encodes a 3.0 StartupMessage (the gateway's login to the upstream).
pub fn encode_startup(params: &[(&str, &str)]) -> BytesMut {
    let mut body = Vec::with_capacity(128);
    body.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    with_length(&body)
}

pub fn encode_ssl_request() -> BytesMut {
    with_length(&SSL_REQUEST.to_be_bytes())
}

pub fn encode_cancel(process_id: u32, secret_key: u32) -> BytesMut {
    let mut body = Vec::with_capacity(12);
    body.extend_from_slice(&CANCEL_REQUEST.to_be_bytes());
    body.extend_from_slice(&process_id.to_be_bytes());
    body.extend_from_slice(&secret_key.to_be_bytes());
    with_length(&body)
}

fn with_length(body: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(body.len() + 4);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_round_trip() {
        let mut buf = encode_startup(&[("user", "ci"), ("database", "orders")]);
        let packet = decode_startup(&mut buf).unwrap().unwrap();
        assert_eq!(
            packet,
            StartupPacket::Startup {
                params: vec![
                    ("user".into(), "ci".into()),
                    ("database".into(), "orders".into())
                ]
            }
        );
    }

    #[test]
    fn ssl_and_cancel() {
        assert_eq!(
            decode_startup(&mut encode_ssl_request()).unwrap(),
            Some(StartupPacket::SslRequest)
        );
        assert_eq!(
            decode_startup(&mut encode_cancel(7, 9)).unwrap(),
            Some(StartupPacket::Cancel {
                process_id: 7,
                secret_key: 9
            })
        );
    }

    #[test]
    fn malformed_startups_are_errors_not_panics() {
        for bad in [
            &b"\0\0\0\x04"[..],
            &b"\xff\xff\xff\xff"[..],
            &b"\0\0\0\x0c\0\x03\0\0user"[..],
            &b"\0\0\0\x0d\0\x03\0\0user\0"[..],
            &b"\0\0\x40\0"[..],
        ] {
            let mut buf = BytesMut::from(bad);
            let result = decode_startup(&mut buf);
            assert!(
                !matches!(result, Ok(Some(StartupPacket::Startup { .. }))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn old_protocol_is_reported() {
        let mut body = vec![0, 0, 0, 8];
        body.extend_from_slice(&0x0002_0000i32.to_be_bytes());
        let mut buf = BytesMut::from(&body[..]);
        assert_eq!(
            decode_startup(&mut buf).unwrap(),
            Some(StartupPacket::UnsupportedVersion { major: 2, minor: 0 })
        );
    }
}

//! Messages the server side speaks: what the gateway builds for clients
//! (errors, auth requests, key data) and what it reads from upstreams.

use bytes::BytesMut;

use super::{CodecError, Reader, Writer};

/// SQLSTATE codes the gateway itself raises.
pub mod sqlstate {
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const UNABLE_TO_CONNECT: &str = "08001";
    pub const REJECTED_CONNECTION: &str = "08004";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const SYSTEM_ERROR: &str = "58000";
    pub const SYNTAX_ERROR: &str = "42601";
    pub const UNDEFINED_FUNCTION: &str = "42883";
    pub const STATEMENT_TOO_COMPLEX: &str = "54001";
    pub const INTERNAL_ERROR: &str = "XX000";
    pub const CONFIGURATION_LIMIT: &str = "53400";
    pub const INVALID_SQL_STATEMENT_NAME: &str = "26000";
    pub const QUERY_CANCELED: &str = "57014";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
    Notice,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Self::Error => "ERROR",
            Self::Fatal => "FATAL",
            Self::Notice => "NOTICE",
        }
    }
}

/// An ErrorResponse / NoticeResponse the gateway sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// 1-based character position in the query that the error is about; psql
    /// prints the query's line with a caret under it.
    pub position: Option<u32>,
}

impl ErrorFields {
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            code,
            message: message.into(),
            detail: None,
            hint: None,
            position: None,
        }
    }

    pub fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Fatal,
            ..Self::error(code, message)
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_position(mut self, position: Option<u32>) -> Self {
        self.position = position;
        self
    }

    pub fn encode(&self, out: BytesMut) -> BytesMut {
        let tag = if self.severity == Severity::Notice {
            b'N'
        } else {
            b'E'
        };
        let mut w = Writer::new(out, tag);
        w.u8(b'S').cstr(self.severity.as_str());
        w.u8(b'V').cstr(self.severity.as_str());
        w.u8(b'C').cstr(self.code);
        w.u8(b'M').cstr(&self.message);
        if let Some(d) = &self.detail {
            w.u8(b'D').cstr(d);
        }
        if let Some(h) = &self.hint {
            w.u8(b'H').cstr(h);
        }
        if let Some(p) = self.position {
            w.u8(b'P').cstr(&p.to_string());
        }
        w.u8(0);
        w.finish()
    }
}

pub fn encode_auth_cleartext(out: BytesMut) -> BytesMut {
    let mut w = Writer::new(out, b'R');
    w.i32(3);
    w.finish()
}

pub fn encode_auth_ok(out: BytesMut) -> BytesMut {
    let mut w = Writer::new(out, b'R');
    w.i32(0);
    w.finish()
}

pub fn encode_backend_key(out: BytesMut, process_id: u32, secret_key: u32) -> BytesMut {
    let mut w = Writer::new(out, b'K');
    w.i32(process_id as i32).i32(secret_key as i32);
    w.finish()
}

pub fn encode_parameter_status(out: BytesMut, name: &str, value: &str) -> BytesMut {
    let mut w = Writer::new(out, b'S');
    w.cstr(name).cstr(value);
    w.finish()
}

pub fn encode_ready_for_query(out: BytesMut, status: u8) -> BytesMut {
    let mut w = Writer::new(out, b'Z');
    w.u8(status);
    w.finish()
}

/// An upstream's authentication request ('R').
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest<'a> {
    Ok,
    Cleartext,
    Md5 { salt: [u8; 4] },
    Sasl { mechanisms: Vec<&'a str> },
    SaslContinue(&'a [u8]),
    SaslFinal(&'a [u8]),
    Unsupported(i32),
}

pub fn parse_auth_request(body: &[u8]) -> Result<AuthRequest<'_>, CodecError> {
    let mut r = Reader::new(body, "Authentication");
    Ok(match r.i32()? {
        0 => AuthRequest::Ok,
        3 => AuthRequest::Cleartext,
        5 => {
            let s = r.take(4)?;
            AuthRequest::Md5 {
                salt: [s[0], s[1], s[2], s[3]],
            }
        }
        10 => {
            let mut mechanisms = Vec::new();
            loop {
                let m = r.cstr()?;
                if m.is_empty() {
                    break;
                }
                mechanisms.push(m);
            }
            AuthRequest::Sasl { mechanisms }
        }
        11 => AuthRequest::SaslContinue(r.rest()),
        12 => AuthRequest::SaslFinal(r.rest()),
        other => AuthRequest::Unsupported(other),
    })
}

/// Fields of an upstream ErrorResponse / NoticeResponse, by field code.
pub fn parse_error_fields(body: &[u8]) -> Result<Vec<(u8, &str)>, CodecError> {
    let mut r = Reader::new(body, "ErrorResponse");
    let mut fields = Vec::new();
    loop {
        let code = r.u8()?;
        if code == 0 {
            return Ok(fields);
        }
        fields.push((code, r.cstr()?));
    }
}

pub fn error_field(fields: &[(u8, &str)], code: u8) -> Option<String> {
    fields
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, v)| v.to_string())
}

pub fn parse_backend_key(body: &[u8]) -> Result<(u32, u32), CodecError> {
    let mut r = Reader::new(body, "BackendKeyData");
    let pid = r.i32()? as u32;
    let key = r.i32()? as u32;
    r.expect_end()?;
    Ok((pid, key))
}

pub fn parse_parameter_status(body: &[u8]) -> Result<(&str, &str), CodecError> {
    let mut r = Reader::new(body, "ParameterStatus");
    let name = r.cstr()?;
    let value = r.cstr()?;
    Ok((name, value))
}

/// A NotificationResponse: the notifying backend's pid, the channel and
/// the payload, as bytes (they are in the client's encoding).
pub fn parse_notification(body: &[u8]) -> Result<(i32, &[u8], &[u8]), CodecError> {
    let mut r = Reader::new(body, "NotificationResponse");
    let pid = r.i32()?;
    let mut strings = r.rest().splitn(3, |b| *b == 0);
    let (Some(channel), Some(payload), Some(b"")) =
        (strings.next(), strings.next(), strings.next())
    else {
        return Err(CodecError::malformed(
            "NotificationResponse",
            "channel and payload are not two NUL-terminated strings",
        ));
    };
    Ok((pid, channel, payload))
}

/// Rows a CommandComplete tag reports ("SELECT 5", "INSERT 0 3", "COPY 2").
pub fn command_rows(body: &[u8]) -> Option<u64> {
    let tag = body.strip_suffix(&[0]).unwrap_or(body);
    let last = tag.rsplit(|b| *b == b' ').next()?;
    std::str::from_utf8(last).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::decode_frame;

    #[test]
    fn error_response_encodes_and_parses() {
        let e = ErrorFields::error(sqlstate::INSUFFICIENT_PRIVILEGE, "denied by policy")
            .with_detail("rule DROP *");
        let mut buf = e.encode(BytesMut::new());
        let frame = decode_frame(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(frame.tag, b'E');
        let fields = parse_error_fields(&frame.body).unwrap();
        assert_eq!(error_field(&fields, b'C').as_deref(), Some("42501"));
        assert_eq!(error_field(&fields, b'D').as_deref(), Some("rule DROP *"));
        assert_eq!(error_field(&fields, b'P'), None);
    }

    #[test]
    fn error_response_carries_the_position() {
        let e = ErrorFields::error(sqlstate::SYNTAX_ERROR, "syntax error at or near \"t\"")
            .with_position(Some(16));
        let mut buf = e.encode(BytesMut::new());
        let frame = decode_frame(&mut buf, 1 << 20).unwrap().unwrap();
        let fields = parse_error_fields(&frame.body).unwrap();
        assert_eq!(error_field(&fields, b'P').as_deref(), Some("16"));
    }

    #[test]
    fn command_tags() {
        assert_eq!(command_rows(b"SELECT 5\0"), Some(5));
        assert_eq!(command_rows(b"INSERT 0 3\0"), Some(3));
        assert_eq!(command_rows(b"BEGIN\0"), None);
    }

    #[test]
    fn auth_requests() {
        assert_eq!(
            parse_auth_request(b"\0\0\0\x05abcd").unwrap(),
            AuthRequest::Md5 { salt: *b"abcd" }
        );
        assert_eq!(
            parse_auth_request(b"\0\0\0\x0aSCRAM-SHA-256\0\0").unwrap(),
            AuthRequest::Sasl {
                mechanisms: vec!["SCRAM-SHA-256"]
            }
        );
        assert!(parse_auth_request(b"\0\0\0\x05ab").is_err());
    }
}

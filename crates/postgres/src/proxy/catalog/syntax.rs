//! PostgreSQL's own words for a statement the gateway cannot parse.
//!
//! The gateway's parser and the server's grammar give the same verdict but
//! not always the same error: a HINT or DETAIL, or a position, differs
//! (`drop operator === (int4)`: "Use NONE to denote the missing argument").
//! The refusal stands either way; only its wording is asked of the server,
//! by a Parse of the text on the catalog connection. A Parse runs nothing;
//! if the server accepts the text where the gateway could not read it, the
//! gateway's own error is kept, and the statement is still refused.

use bytes::BytesMut;

use super::{Catalog, CatalogError};
use crate::codec::backend::{sqlstate, ErrorFields};
use crate::codec::frontend::{encode_parse, encode_sync};
use crate::proxy::upstream::UpstreamTarget;

impl Catalog {
    /// The server's error for `sql`, when it too rejects it while parsing.
    pub async fn server_syntax_error(
        &self,
        target: &UpstreamTarget,
        sql: &str,
    ) -> Option<ErrorFields> {
        let request = encode_sync(encode_parse(BytesMut::new(), sql));
        match self.exchange(target, request).await {
            Ok(reply) => reply.error.and_then(|fields| parse_time_error(&fields)),
            Err(e) => {
                log_failure(&e);
                None
            }
        }
    }
}

fn log_failure(e: &CatalogError) {
    tracing::warn!(error = %e, "could not ask the server for its syntax error; the gateway's own is sent");
}

/// What the server says when its parser accepted several statements, which
/// a Parse refuses: not a syntax error of the client's text.
const SEVERAL_STATEMENTS: &str = "cannot insert multiple commands into a prepared statement";

/// The error as the client gets it, for the codes the grammar raises; any
/// other code means the text got past the server's parser (into analysis),
/// which is not the gateway's verdict to echo.
fn parse_time_error(fields: &[(u8, String)]) -> Option<ErrorFields> {
    let field = |code: u8| {
        fields
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.clone())
    };
    if field(b'M').as_deref() == Some(SEVERAL_STATEMENTS) {
        return None;
    }
    let code = match field(b'C')?.as_str() {
        sqlstate::SYNTAX_ERROR => sqlstate::SYNTAX_ERROR,
        sqlstate::FEATURE_NOT_SUPPORTED => sqlstate::FEATURE_NOT_SUPPORTED,
        _ => return None,
    };
    let mut error = ErrorFields::error(code, field(b'M')?)
        .with_position(field(b'P').and_then(|p| p.parse().ok()));
    error.detail = field(b'D');
    error.hint = field(b'H');
    Some(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(u8, &str)]) -> Vec<(u8, String)> {
        pairs.iter().map(|(c, v)| (*c, (*v).to_owned())).collect()
    }

    #[test]
    fn the_servers_hint_detail_and_position_are_kept() {
        let error = parse_time_error(&fields(&[
            (b'S', "ERROR"),
            (b'C', "42601"),
            (b'M', "missing argument"),
            (
                b'H',
                "Use NONE to denote the missing argument of a unary operator.",
            ),
            (b'P', "31"),
        ]))
        .unwrap();
        assert_eq!(error.message, "missing argument");
        assert_eq!(error.position, Some(31));
        assert!(error.hint.is_some_and(|h| h.starts_with("Use NONE")));
        assert_eq!(error.detail, None);
    }

    #[test]
    fn errors_from_past_the_grammar_are_not_echoed() {
        for code in ["42P01", "42883", "XX000"] {
            let got = parse_time_error(&fields(&[(b'C', code), (b'M', "relation does not exist")]));
            assert_eq!(got, None, "{code}");
        }
        assert_eq!(parse_time_error(&fields(&[(b'M', "no code")])), None);
        let several = fields(&[(b'C', "42601"), (b'M', SEVERAL_STATEMENTS)]);
        assert_eq!(parse_time_error(&several), None);
    }
}

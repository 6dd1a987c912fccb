//! The two settings that decide how the server reads a query's bytes, and
//! the only values they may take through the gateway.
//!
//! The gateway parses every query as UTF-8 text with
//! `standard_conforming_strings` on: `pg_query` always lexes that way. A
//! server that reads the same bytes otherwise runs statements the gateway
//! never saw: in SJIS the pair `C3 95` swallows a backslash, and with
//! `standard_conforming_strings` off `'x\'' ; DROP TABLE t; --'` is a string
//! followed by a `DROP` where the gateway read one string. So these are not
//! policy: no principal moves them, whatever classes it is allowed, and a
//! statement that would is refused before it reaches the server. Going back
//! to the session's own value (`RESET`, `SET ... TO DEFAULT`) is followed: the
//! startup checks saw that value and found it UTF-8 and on.

/// The encoding names PostgreSQL accepts for UTF-8, compared the way the
/// gateway can be sure of (PostgreSQL also ignores other punctuation; such
/// spellings are refused, which only fails closed).
pub fn is_utf8_encoding(encoding: &str) -> bool {
    matches!(
        encoding
            .trim()
            .to_ascii_lowercase()
            .replace(['-', '_'], "")
            .as_str(),
        "utf8" | "unicode"
    )
}

/// Whether `setting` is one of the settings this module guards.
pub(crate) fn is_reading_setting(setting: &str) -> bool {
    matches!(
        setting.trim().to_ascii_lowercase().as_str(),
        "client_encoding" | "standard_conforming_strings"
    )
}

/// Why giving `setting` the value `value` is refused, or `None` when the
/// server would go on reading queries as the gateway does. `value` is
/// `None` when it is not a literal the gateway can read (a parameter, an
/// expression), which is refused for the guarded settings.
pub(crate) fn refusal(setting: &str, value: Option<&str>) -> Option<String> {
    match setting.trim().to_ascii_lowercase().as_str() {
        "client_encoding" if !value.is_some_and(is_utf8_encoding) => Some(format!(
            "client_encoding can only be UTF8 through the gateway (asked: {}): in another \
             encoding the server would split the query into different statements than the \
             gateway decided on",
            shown(value)
        )),
        "standard_conforming_strings" if !value.is_some_and(is_on) => Some(format!(
            "standard_conforming_strings must stay on through the gateway (asked: {}): \
             with it off the server reads backslashes in strings differently from the \
             gateway's parser",
            shown(value)
        )),
        _ => None,
    }
}

fn shown(value: Option<&str>) -> String {
    value.map_or_else(
        || "a value that is not a literal".into(),
        |v| format!("\"{v}\""),
    )
}

/// The spellings of a true boolean the gateway accepts; PostgreSQL also
/// takes unique prefixes, which are refused here (failing closed).
fn is_on(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "on" | "true" | "yes" | "1"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_utf8_and_on_pass() {
        assert_eq!(refusal("client_encoding", Some("utf-8")), None);
        assert_eq!(refusal("CLIENT_ENCODING", Some("Unicode")), None);
        assert!(refusal("client_encoding", Some("SJIS")).is_some());
        assert!(refusal("client_encoding", None).is_some());
        assert_eq!(refusal("standard_conforming_strings", Some("ON")), None);
        assert!(refusal("standard_conforming_strings", Some("off")).is_some());
        assert!(refusal("standard_conforming_strings", Some("of")).is_some());
        assert!(refusal("standard_conforming_strings", None).is_some());
        assert_eq!(refusal("work_mem", None), None);
    }
}

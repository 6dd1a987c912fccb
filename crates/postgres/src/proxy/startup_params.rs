//! Which of a client's startup parameters reach the upstream.
//!
//! PostgreSQL treats every startup parameter other than `user`, `database`,
//! `options` and `replication` as a setting (matched case-insensitively), and
//! `options` as command-line switches (`-c name=value`, `--name=value`,
//! split on whitespace that is not backslash-escaped, as libpq's
//! `pg_split_opts` expects). Each setting, wherever it came from, is judged
//! here against one allow-list. A setting that would change the session's
//! role or authorization, its encoding or how the server lexes statements is
//! refused with a FATAL: the gateway decides statements on the assumption that
//! none of those changed. A setting the list does not know is refused too,
//! rather than dropped, because a client that asked for
//! `default_transaction_read_only=on` and silently did not get it would act
//! on a false belief. `user` and `database` never travel: the connection's
//! configured upstream ones apply.
//!
//! Settings from `options` are forwarded first and the named parameters
//! after them, each as a parameter of its own: the server also applies
//! `options` before the named parameters, so the same one wins.

use crate::codec::backend::sqlstate;

/// Settings a client may choose for its own session: how values are shown
/// and parsed, timeouts, planner knobs, transaction defaults. None changes
/// who the session is, what it may do, its encoding or its lexing.
const SAFE_SETTINGS: &[&str] = &[
    "application_name",
    "datestyle",
    "timezone",
    "intervalstyle",
    "extra_float_digits",
    "search_path",
    "bytea_output",
    "timezone_abbreviations",
    "lc_messages",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "client_min_messages",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
    "default_transaction_isolation",
    "default_transaction_read_only",
    "default_transaction_deferrable",
    "default_tablespace",
    "temp_tablespaces",
    "default_toast_compression",
    "work_mem",
    "maintenance_work_mem",
    "temp_buffers",
    "synchronous_commit",
    "row_security",
    "check_function_bodies",
    "xmlbinary",
    "xmloption",
    "jit",
    "geqo",
    "plan_cache_mode",
    "cursor_tuple_fraction",
    "from_collapse_limit",
    "join_collapse_limit",
    "default_statistics_target",
    "random_page_cost",
    "seq_page_cost",
    "effective_cache_size",
    "max_parallel_workers_per_gather",
    "quote_all_identifiers",
    "gin_fuzzy_search_limit",
];

/// Planner method switches (`enable_seqscan`, `enable_hashjoin`, ...).
const SAFE_PREFIXES: &[&str] = &["enable_"];

/// Settings refused at startup, and why.
const REFUSED_SETTINGS: &[(&str, &str)] = &[
    ("role", "it would change the session's role"),
    (
        "session_authorization",
        "it would change the session's authorization",
    ),
    (
        "session_replication_role",
        "it would switch off triggers and foreign-key checks",
    ),
    (
        "standard_conforming_strings",
        "it changes how the server lexes string literals",
    ),
    (
        "backslash_quote",
        "it changes how the server lexes string literals",
    ),
    (
        "allow_system_table_mods",
        "it would allow changes to the system catalogs",
    ),
];

/// Why a startup packet is refused; the client gets it as a FATAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ParamRefusal {
    pub code: &'static str,
    pub message: String,
}

/// The settings to send upstream for a client's startup parameters, in the
/// order the server would apply them.
pub(super) fn upstream_params(
    params: &[(String, String)],
) -> Result<Vec<(String, String)>, ParamRefusal> {
    let mut forwarded = Vec::new();
    for (_, options) in params.iter().filter(|(k, _)| k == "options") {
        for (name, value) in parse_options(options)? {
            forwarded.push(judged(name, value, "in options")?);
        }
    }
    for (name, value) in params {
        if !is_connection_parameter(name) && !is_protocol_option(name) {
            forwarded.push(judged(name.clone(), value.clone(), "at startup")?);
        }
    }
    Ok(forwarded)
}

/// Parameters the server reads as connection facts rather than settings:
/// `user` and `database` are the configured upstream ones, `options` is
/// expanded above, and `replication` is refused before this is asked.
fn is_connection_parameter(name: &str) -> bool {
    matches!(name, "user" | "database" | "options" | "replication")
}

/// `_pq_.*` asks for protocol extensions the gateway does not negotiate;
/// the server ignores what it does not know of these, and so do we.
fn is_protocol_option(name: &str) -> bool {
    name.starts_with("_pq_.")
}

/// `(name, value)` when the setting may travel; `where_` says where the
/// client gave it, for the message.
fn judged(name: String, value: String, where_: &str) -> Result<(String, String), ParamRefusal> {
    let key = name.to_ascii_lowercase();
    if key == "client_encoding" {
        return check_client_encoding(&value).map(|()| (name, value));
    }
    if let Some((_, why)) = REFUSED_SETTINGS.iter().find(|(n, _)| *n == key) {
        return Err(ParamRefusal {
            code: sqlstate::INSUFFICIENT_PRIVILEGE,
            message: format!(
                "setting \"{name}\" {where_} is not allowed through the gateway: {why}"
            ),
        });
    }
    if SAFE_SETTINGS.contains(&key.as_str()) || SAFE_PREFIXES.iter().any(|p| key.starts_with(p)) {
        return Ok((name, value));
    }
    Err(ParamRefusal {
        code: sqlstate::FEATURE_NOT_SUPPORTED,
        message: format!(
            "setting \"{name}\" {where_} is not on the gateway's list of startup settings (docs/postgres-startup.md); set it with SET after connecting"
        ),
    })
}

/// The gateway reads statements as UTF-8; in another client encoding
/// (SJIS, GBK, BIG5) the server can read a backslash or quote as part of a
/// multibyte character, and run statements the gateway never saw.
fn check_client_encoding(encoding: &str) -> Result<(), ParamRefusal> {
    if portcullis_policy::classify::is_utf8_encoding(encoding) {
        return Ok(());
    }
    Err(ParamRefusal {
        code: sqlstate::FEATURE_NOT_SUPPORTED,
        message: format!("client_encoding \"{encoding}\" is not supported through the gateway: connect with client_encoding=UTF8"),
    })
}

/// The settings an `options` string carries. Only `-c name=value`,
/// `-cname=value` and `--name=value` are accepted: the server's other
/// switches (`-B`, `-e`, `-S`, ...) are refused rather than interpreted.
fn parse_options(options: &str) -> Result<Vec<(String, String)>, ParamRefusal> {
    let mut settings = Vec::new();
    let mut words = split_options(options).into_iter();
    while let Some(word) = words.next() {
        let assignment = if word == "-c" {
            words
                .next()
                .ok_or_else(|| malformed(options, "-c without a setting"))?
        } else if let Some(rest) = word.strip_prefix("--") {
            // As the server's ParseLongOption: dashes in the name are underscores.
            long_option(rest)
        } else if let Some(rest) = word.strip_prefix("-c") {
            rest.to_owned()
        } else {
            return Err(malformed(
                options,
                &format!("\"{word}\" is not -c name=value or --name=value"),
            ));
        };
        settings.push(
            split_assignment(&assignment).ok_or_else(|| {
                malformed(options, &format!("\"{assignment}\" is not name=value"))
            })?,
        );
    }
    Ok(settings)
}

fn long_option(rest: &str) -> String {
    match rest.split_once('=') {
        Some((name, value)) => format!("{}={value}", name.replace('-', "_")),
        None => rest.replace('-', "_"),
    }
}

fn split_assignment(assignment: &str) -> Option<(String, String)> {
    let (name, value) = assignment.split_once('=')?;
    (!name.is_empty()).then(|| (name.to_owned(), value.to_owned()))
}

/// Splits on whitespace; a backslash makes the next character literal (so
/// `\ ` is a space inside a word), as the server's `pg_split_opts`.
fn split_options(options: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut chars = options.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_ascii_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return words;
        }
        let mut word = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_ascii_whitespace()) {
            match c {
                '\\' => word.extend(chars.next()),
                _ => word.push(c),
            }
        }
        words.push(word);
    }
}

fn malformed(options: &str, why: &str) -> ParamRefusal {
    ParamRefusal {
        code: sqlstate::SYNTAX_ERROR,
        message: format!("invalid startup options \"{options}\": {why}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn libpq_environment_settings_travel_in_any_case() {
        let forwarded = upstream_params(&params(&[
            ("user", "ci"),
            ("database", "orders"),
            ("datestyle", "Postgres, MDY"),
            ("timezone", "America/Los_Angeles"),
            ("DateStyle", "ISO"),
            ("application_name", "psql"),
            ("client_encoding", "UTF8"),
        ]))
        .unwrap();
        assert_eq!(
            forwarded,
            params(&[
                ("datestyle", "Postgres, MDY"),
                ("timezone", "America/Los_Angeles"),
                ("DateStyle", "ISO"),
                ("application_name", "psql"),
                ("client_encoding", "UTF8"),
            ])
        );
    }

    #[test]
    fn options_settings_come_first_and_are_judged_alike() {
        let forwarded = upstream_params(&params(&[
            ("intervalstyle", "iso_8601"),
            (
                "options",
                "-c intervalstyle=postgres_verbose --search-path=a\\ b -cgeqo=off",
            ),
        ]))
        .unwrap();
        assert_eq!(
            forwarded,
            params(&[
                ("intervalstyle", "postgres_verbose"),
                ("search_path", "a b"),
                ("geqo", "off"),
                ("intervalstyle", "iso_8601"),
            ])
        );
    }

    #[test]
    fn role_authorization_encoding_and_lexing_are_refused_wherever_they_come_from() {
        for bad in [
            params(&[("role", "postgres")]),
            params(&[("ROLE", "postgres")]),
            params(&[("options", "-c role=postgres")]),
            params(&[("options", "--session-authorization=postgres")]),
            params(&[("options", "-c\\ role=postgres")]),
            params(&[("standard_conforming_strings", "off")]),
            params(&[("options", "-c standard_conforming_strings=off")]),
            params(&[("options", "-c backslash_quote=on")]),
            params(&[("session_replication_role", "replica")]),
            params(&[("client_encoding", "SJIS")]),
            params(&[("options", "-c client_encoding=GBK")]),
        ] {
            let refusal = upstream_params(&bad).unwrap_err();
            assert_ne!(refusal.code, sqlstate::SYNTAX_ERROR, "{bad:?}: {refusal:?}");
        }
    }

    #[test]
    fn unknown_settings_and_other_switches_are_refused_not_dropped() {
        let unknown = upstream_params(&params(&[("log_statement", "none")])).unwrap_err();
        assert_eq!(unknown.code, sqlstate::FEATURE_NOT_SUPPORTED);
        for options in ["-e", "-B 100", "-c", "-c noequals", "--=x", "stray"] {
            let refusal = upstream_params(&params(&[("options", options)])).unwrap_err();
            assert_eq!(refusal.code, sqlstate::SYNTAX_ERROR, "{options}");
        }
    }

    #[test]
    fn backslashes_escape_the_next_character() {
        assert_eq!(
            split_options("  -c a=x\\ y\\\\  -c\tb=1 "),
            ["-c", "a=x y\\", "-c", "b=1"]
        );
        assert!(split_options(" \t ").is_empty());
    }

    #[test]
    fn protocol_extensions_are_left_to_the_gateway() {
        let forwarded = upstream_params(&params(&[("_pq_.compression", "on")])).unwrap();
        assert!(forwarded.is_empty());
    }
}

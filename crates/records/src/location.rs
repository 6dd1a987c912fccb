//! Parsing the store URL from the config (`store: sqlite://data/portcullis.db`).
//!
//! The URL is the one knob users have over durability, so anything we do not understand is an
//! error rather than silently ignored: a typo in `synchronous=full` must not quietly give the
//! weaker guarantee.

use std::path::PathBuf;

use crate::StoreError;

/// How hard SQLite works to make a commit survive power loss (see the crate docs for what each
/// guarantees).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Synchronous {
    #[default]
    Normal,
    Full,
}

impl Synchronous {
    pub(crate) fn pragma_value(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

/// Where the store lives and how it commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Location {
    pub(crate) path: PathBuf,
    pub(crate) synchronous: Synchronous,
}

/// Parses `sqlite://PATH[?synchronous=full|normal]`; `sqlite://data/x.db` is relative to the
/// working directory, `sqlite:///var/lib/x.db` is absolute.
pub(crate) fn parse(url: &str) -> Result<Location, StoreError> {
    let invalid = |reason: &str| StoreError::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let Some(rest) = url.strip_prefix("sqlite://") else {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Err(invalid(
                "PostgreSQL audit stores are not supported yet; use sqlite://PATH",
            ));
        }
        return Err(invalid("expected sqlite://PATH[?synchronous=full|normal]"));
    };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() {
        return Err(invalid("the path after sqlite:// is empty"));
    }
    let synchronous = parse_query(query).map_err(|reason| invalid(&reason))?;
    Ok(Location {
        path: PathBuf::from(path),
        synchronous,
    })
}

fn parse_query(query: &str) -> Result<Synchronous, String> {
    let mut synchronous = Synchronous::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "synchronous" {
            return Err(format!(
                "unknown parameter {key:?} (the only parameter is synchronous)"
            ));
        }
        synchronous = match value.to_ascii_lowercase().as_str() {
            "normal" => Synchronous::Normal,
            "full" => Synchronous::Full,
            _ => return Err(format!("synchronous must be full or normal, not {value:?}")),
        };
    }
    Ok(synchronous)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_absolute_and_synchronous() {
        let loc = parse("sqlite://data/portcullis.db").unwrap();
        assert_eq!(loc.path, PathBuf::from("data/portcullis.db"));
        assert_eq!(loc.synchronous, Synchronous::Normal);

        let loc = parse("sqlite:///var/lib/p.db?synchronous=FULL").unwrap();
        assert_eq!(loc.path, PathBuf::from("/var/lib/p.db"));
        assert_eq!(loc.synchronous, Synchronous::Full);

        let loc = parse("sqlite://p.db?synchronous=normal").unwrap();
        assert_eq!(loc.synchronous, Synchronous::Normal);
    }

    #[test]
    fn rejects_what_it_does_not_understand() {
        for url in [
            "data/p.db",
            "sqlite://",
            "sqlite://p.db?synchronous=off",
            "sqlite://p.db?synchronus=full",
            "postgres://db/audit",
        ] {
            let err = parse(url).unwrap_err();
            assert!(matches!(err, StoreError::InvalidUrl { .. }), "{url}: {err}");
        }
        let err = parse("sqlite://p.db?synchronous=off").unwrap_err();
        assert!(err.to_string().contains("full or normal"), "{err}");
    }
}

//! Durations as people write them in grant requests and re-run windows:
//! humantime (`90s`, `15m`, `1h 30m`), in whole seconds. A sub-second part
//! is refused rather than rounded: `1ns` is almost surely a mistake, and
//! rounding it to a second (or `1h 1ns` to over an hour) would grant
//! something other than what was asked.

use std::time::Duration;

use crate::JitError;

/// The format, for messages and the API spec.
pub const FORMAT: &str = "a whole number of seconds in humantime units, e.g. 90s, 15m, 1h 30m, 2h";

/// Parses `text` as a duration of at least one whole second.
pub fn parse(text: &str) -> Result<Duration, JitError> {
    let invalid = |why: String| JitError::Invalid(format!("invalid duration {text:?}: {why}"));
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| invalid(format!("{e}; use {FORMAT}")))?;
    check(d).map_err(|why| invalid(why.into()))?;
    Ok(d)
}

/// Why `d` cannot be a grant's duration or a re-run window, if it cannot.
pub(crate) fn check(d: Duration) -> Result<(), &'static str> {
    if d.subsec_nanos() != 0 {
        return Err("durations are whole seconds (no ms, us or ns part)");
    }
    if d.is_zero() {
        return Err("a duration must be at least 1s");
    }
    Ok(())
}

/// `1h 30m`, `90s`: how a duration is shown back.
pub fn describe(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_seconds_parse_and_fractions_are_refused() {
        assert_eq!(parse("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse(" 1h 30m ").unwrap(), Duration::from_secs(5400));
        for text in ["1ns", "1h 1ns", "1500ms", "0s", "soon", "", "-1s"] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.starts_with("invalid duration"), "{text}: {e}");
        }
        assert!(parse("1ns")
            .unwrap_err()
            .to_string()
            .contains("whole seconds"));
    }

    #[test]
    fn described_as_written() {
        assert_eq!(describe(Duration::from_secs(3600)), "1h");
        assert_eq!(describe(Duration::from_secs(3601)), "1h 1s");
        assert_eq!(describe(Duration::from_secs(90)), "1m 30s");
    }
}

//! Structured logs to stderr; `RUST_LOG` filters, `--log-json` for machines.
//!
//! Log fields carry what clients sent (principal names and other claims,
//! statement text, refusal reasons). In the text log every field is written
//! so that it cannot end its line or pose as another field: a value that is
//! not a plain word is quoted with Rust's escapes, and the message has
//! control characters escaped (`portcullis_records::untrusted`). A principal
//! named `bob\n… grant approved approver=alice` is one line naming that
//! principal, not a forged second line. JSON lines escape by construction.

use std::fmt;
use std::io::IsTerminal;

use portcullis_records::untrusted;
use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::EnvFilter;

pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only help a person at a terminal; in log files they are noise.
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder.json().init();
    } else {
        builder.fmt_fields(EscapedFields).init();
    }
}

/// The text log's field formatter: `message key=value key="two words"`.
struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut visitor = FieldWriter {
            writer: &mut writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct FieldWriter<'a, 'writer> {
    writer: &'a mut Writer<'writer>,
    first: bool,
    result: fmt::Result,
}

impl FieldWriter<'_, '_> {
    fn write(&mut self, field: &Field, text: &str) {
        if self.result.is_err() {
            return;
        }
        let separator = if self.first { "" } else { " " };
        self.first = false;
        self.result = if field.name() == "message" {
            write!(self.writer, "{separator}{}", untrusted::escape(text))
        } else {
            write!(self.writer, "{separator}{}={}", field.name(), value(text))
        };
    }
}

impl Visit for FieldWriter<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.write(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, &format!("{value:?}"));
    }
}

/// A field value as written: as it is when it is one plain word, else
/// quoted and escaped, so a value can hold neither a line break nor what
/// reads as ` other_field=`.
fn value(text: &str) -> String {
    let plain = !text.is_empty()
        && !text
            .chars()
            .any(|c| c == ' ' || c == '"' || c == '=' || untrusted::needs_escape(c));
    if plain {
        text.to_string()
    } else {
        format!("\"{}\"", untrusted::escape(text).replace('"', "\\\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_cannot_break_the_line_or_pose_as_fields() {
        assert_eq!(value("alice"), "alice");
        assert_eq!(value("127.0.0.1:5432"), "127.0.0.1:5432");
        assert_eq!(
            value("bob\n2030-01-01T00:00:00Z INFO grant approved approver=alice"),
            "\"bob\\n2030-01-01T00:00:00Z INFO grant approved approver=alice\""
        );
        assert_eq!(value("a \"b\" \\"), "\"a \\\"b\\\" \\\\\"");
        assert_eq!(value("x\u{1b}[2K\u{202e}"), "\"x\\u{1b}[2K\\u{202e}\"");
        assert_eq!(value(""), "\"\"");
    }

    #[test]
    fn a_whole_event_stays_on_one_line() {
        use std::sync::{Arc, Mutex};
        use tracing_subscriber::fmt::MakeWriter;

        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        impl<'a> MakeWriter<'a> for Sink {
            type Writer = Sink;
            fn make_writer(&'a self) -> Sink {
                self.clone()
            }
        }

        let sink = Sink::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(sink.clone())
            .with_ansi(false)
            .fmt_fields(EscapedFields)
            .finish();
        let forged =
            "bob\n2030-01-01T00:00:00.000000Z  INFO portcullis: grant approved approver=alice";
        tracing::subscriber::with_default(subscriber, || {
            let text = forged.to_string();
            tracing::info!(principal = forged, reason = %text, claim = ?forged, "grant requested by {}", forged);
        });
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains(" principal=\"bob\\n2030-"), "{text}");
        assert!(text.contains(" reason=\"bob\\n2030-"), "{text}");
    }
}

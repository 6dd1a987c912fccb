//! Text a client or workload supplied (statement text, command lines, grant
//! reasons, principal names, claims), made unambiguous before a person sees
//! it. Terminals obey escape sequences and carriage returns, and bidi
//! overrides reorder what is drawn, so raw text can show an approver a
//! harmless `SELECT` where a `DELETE` waits. Every place that shows such
//! text — the CLI's lists, `replay`, webhooks, the text log — goes through
//! [`escape`] or [`shorten`], and nowhere else decides what is safe.
//!
//! What is escaped, Rust-style, so the escaped text is plain printable
//! ASCII-or-letters on one line:
//! - `\n`, `\r`, `\t` and `\\` (the escape character itself, so `\n` in the
//!   output always means a line break in the input);
//! - every other control character (C0, DEL, C1) as `\u{1b}`;
//! - bidi controls, line and paragraph separators and invisible format
//!   characters (zero-width spaces and joiners, the BOM, soft hyphen, tag
//!   characters) as `\u{202e}`.

use std::borrow::Cow;

/// Whether `c` is shown escaped.
pub fn needs_escape(c: char) -> bool {
    c == '\\' || c.is_control() || is_invisible_format(c)
}

/// Characters that draw nothing or change how the text around them is drawn.
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{00AD}'                    // soft hyphen
        | '\u{061C}'                  // Arabic letter mark
        | '\u{180E}'                  // Mongolian vowel separator
        | '\u{200B}'..='\u{200F}'     // zero-width space/non-joiner/joiner, LRM, RLM
        | '\u{2028}'..='\u{202E}'     // line/paragraph separators, bidi embeddings and overrides
        | '\u{2060}'..='\u{2069}'     // word joiner, invisible operators, bidi isolates
        | '\u{FEFF}'                  // byte order mark
        | '\u{FFF9}'..='\u{FFFB}'     // interlinear annotation
        | '\u{E0000}'..='\u{E007F}' // tag characters
    )
}

/// `text` with every character [`needs_escape`] names escaped.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\\' => out.push_str("\\\\"),
        c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        c => out.push(c),
    }
}

/// [`escape`]d and cut to at most `max` characters of output; cut text ends
/// with `… (N chars)` naming the input's full length, so nobody takes a
/// prefix for the whole.
pub fn shorten(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut shown = 0;
    let mut piece = String::new();
    for c in text.chars() {
        piece.clear();
        push_escaped(&mut piece, c);
        let width = piece.chars().count();
        if shown + width > max {
            out.push_str(&format!("… ({} chars)", text.chars().count()));
            return out;
        }
        out.push_str(&piece);
        shown += width;
    }
    out
}

/// JSON text (as serde_json writes it) with every character
/// [`needs_escape`] names written as a `\uXXXX` escape, so `--json` output
/// printed on a terminal cannot drive it either. Still the same JSON:
/// serde_json already escapes backslashes and C0 controls inside strings,
/// so a raw line break or tab is whitespace between tokens and stays, and
/// anything else escaped here is inside a string, where `\uXXXX` means the
/// character itself.
pub fn json_for_terminal(json: &str) -> Cow<'_, str> {
    let escaped = |c: char| !matches!(c, '\\' | '\n' | '\r' | '\t') && needs_escape(c);
    if !json.chars().any(escaped) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if escaped(c) {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_left_alone() {
        let sql = "select * from customers where name = 'Ådne' -- ok";
        assert!(matches!(escape(sql), Cow::Borrowed(_)));
        assert_eq!(shorten(sql, 100), sql);
    }

    #[test]
    fn terminal_controls_and_line_breaks_become_visible() {
        let attack =
            "delete from customers where email = '\u{1b}[2K\r\u{1b}[1A\u{1b}[2Ka-1 bob select 1\n'";
        assert_eq!(
            escape(attack),
            "delete from customers where email = '\\u{1b}[2K\\r\\u{1b}[1A\\u{1b}[2Ka-1 bob select 1\\n'"
        );
        assert_eq!(escape("a\tb\\nc\u{7f}\u{9b}"), "a\\tb\\\\nc\\u{7f}\\u{9b}");
    }

    #[test]
    fn bidi_overrides_and_invisible_characters_are_named() {
        assert_eq!(
            escape("x\u{202e}gnp.exe\u{2066}\u{200b}\u{feff}\u{2028}"),
            "x\\u{202e}gnp.exe\\u{2066}\\u{200b}\\u{feff}\\u{2028}"
        );
        assert_eq!(escape("tag\u{e0041}"), "tag\\u{e0041}");
    }

    #[test]
    fn shortened_text_states_its_full_length_and_never_splits_an_escape() {
        let long = "x".repeat(1_000_000);
        assert_eq!(shorten(&long, 10), "xxxxxxxxxx… (1000000 chars)");
        assert_eq!(shorten("ab\ncd", 3), "ab… (5 chars)");
        assert_eq!(shorten("ab\ncd", 4), "ab\\n… (5 chars)");
        assert_eq!(shorten("ab\ncd", 6), "ab\\ncd");
        assert_eq!(shorten("ééé", 2), "éé… (3 chars)");
    }

    #[test]
    fn json_for_terminals_stays_the_same_json() {
        let value = serde_json::json!({
            "statement": "a\u{1b}[2K\u{9b}b\u{202e}c\\d\u{e0041}",
            "n": 1
        });
        let text = serde_json::to_string(&value).unwrap();
        let safe = json_for_terminal(&text);
        assert!(
            !safe.chars().any(|c| c != '\\' && needs_escape(c)),
            "{safe}"
        );
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back, value);
    }

    /// Whatever the input, the output has no character a terminal acts on.
    #[test]
    fn no_input_escapes_the_escaping() {
        let samples = (0u32..0x3000)
            .chain(0xE0000..0xE0080)
            .chain(0xFFF0..0x10000)
            .filter_map(char::from_u32);
        for c in samples {
            let text = format!("a{c}b");
            let shown = escape(&text);
            assert!(
                shown.chars().all(|o| o == '\\' || !needs_escape(o)),
                "{c:?} -> {shown}"
            );
            assert!(!shown.contains(['\n', '\r', '\u{1b}']), "{c:?}");
        }
    }
}

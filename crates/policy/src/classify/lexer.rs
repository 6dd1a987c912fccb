//! The literal-stripping normalizer: a hand-written, single-pass lexer.
//!
//! It runs on every statement the gateway sees, before any cache lookup, so
//! it must cost far less than the real parser (a byte loop, one output
//! allocation, no parse tree). Its output is the classification cache key,
//! which makes it security-relevant: two statements that normalize to the
//! same text get the same classification without being parsed. That is only
//! sound if this lexer finds exactly the token boundaries PostgreSQL's own
//! scanner finds, so the rules below mirror `scan.l` (as built into
//! `pg_query`), and a property test checks the literal spans against
//! `pg_query::scan`.
//!
//! What the key keeps and drops:
//! - every literal (strings in all their forms, numbers) becomes `?`;
//! - comments and runs of whitespace become one space, and only where the
//!   source had a separation: `a+b` and `a + b` stay different keys, so no
//!   two token streams can share a key;
//! - everything else (keywords, identifiers, `"quoted"` identifiers, `$1`
//!   parameters, operators) is copied verbatim, case included.

use std::ops::Range;

/// What one pass over a query found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lexed {
    /// The normalized text (best effort when `complete` is false).
    pub text: String,
    /// Byte spans of the literal tokens in the input, in order.
    pub literals: Vec<Range<usize>>,
    /// Byte spans of the comments, in order (checked against the real scanner).
    pub comments: Vec<Range<usize>>,
    /// False when the input ends inside a literal, quoted identifier or
    /// comment: the server would reject it, so it has no stable key.
    pub complete: bool,
    /// The input has a `?` of its own (the jsonb operators). It would be
    /// indistinguishable from a stripped literal, so the key is withheld.
    pub bare_placeholder: bool,
    /// A number runs straight into an identifier (`123abc`), which the
    /// server rejects as trailing junk; withheld from the cache so such text
    /// never borrows the classification of a valid statement.
    pub junk: bool,
}

impl Lexed {
    /// The cache key, when the text is safe to use as one.
    pub fn key(self) -> Option<String> {
        (self.complete && !self.bare_placeholder && !self.junk).then_some(self.text)
    }
}

/// Lexes `sql` into its normalized form. Never panics, whatever the input.
pub(crate) fn lex(sql: &str) -> Lexed {
    let mut lexer = Lexer {
        src: sql.as_bytes(),
        pos: 0,
        out: Vec::with_capacity(sql.len()),
        pending_space: false,
        lexed: Lexed {
            text: String::new(),
            literals: Vec::new(),
            comments: Vec::new(),
            complete: true,
            bare_placeholder: false,
            junk: false,
        },
    };
    lexer.run();
    // Only whole input characters or ASCII are ever copied, so this cannot
    // fail; the fallback keeps the function total all the same.
    lexer.lexed.text = String::from_utf8(lexer.out)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    lexer.lexed
}

struct Lexer<'a> {
    src: &'a [u8],
    pos: usize,
    out: Vec<u8>,
    /// Whitespace or a comment was seen since the last token.
    pending_space: bool,
    lexed: Lexed,
}

/// How the body of a quoted literal is scanned.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Quoted {
    /// `'..'`, `N'..'`, `U&'..'`: `''` is an escaped quote.
    Standard,
    /// `E'..'`: a backslash escapes the next byte, and `''` is a quote.
    Escape,
    /// `B'..'`, `X'..'`: no escapes at all; `''` ends one literal and starts another.
    Bits,
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' | b'\x0b')
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit() || b == b'$'
}

/// Dollar-quote tags are identifiers without `$`, so `$a$b$` is not one tag.
fn is_tag_cont(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit()
}

impl Lexer<'_> {
    fn peek(&self, ahead: usize) -> Option<u8> {
        self.src.get(self.pos + ahead).copied()
    }

    fn run(&mut self) {
        while let Some(b) = self.peek(0) {
            match b {
                _ if is_space(b) => {
                    self.pending_space = true;
                    self.pos += 1;
                }
                b'-' if self.peek(1) == Some(b'-') => self.line_comment(),
                b'/' if self.peek(1) == Some(b'*') => self.block_comment(),
                b'\'' => self.literal(self.pos, Quoted::Standard),
                b'"' => self.quoted_identifier(),
                b'$' => self.dollar(),
                b'0'..=b'9' => self.number(),
                // `..` is a token of its own, so `1..2` has no `.2` in it.
                b'.' if self.peek(1) == Some(b'.') => self.copy(2),
                b'.' if self.peek(1).is_some_and(|d| d.is_ascii_digit()) => self.number(),
                _ if is_ident_start(b) => self.word(),
                b'?' => {
                    self.lexed.bare_placeholder = true;
                    self.copy(1);
                }
                _ => self.copy(1),
            }
        }
    }

    /// Starts a token in the output, turning any pending separation into one space.
    fn begin_token(&mut self) {
        if self.pending_space && !self.out.is_empty() {
            self.out.push(b' ');
        }
        self.pending_space = false;
    }

    fn copy(&mut self, len: usize) {
        self.begin_token();
        let end = (self.pos + len).min(self.src.len());
        self.out.extend_from_slice(&self.src[self.pos..end]);
        self.pos = end;
    }

    fn line_comment(&mut self) {
        let start = self.pos;
        while self.peek(0).is_some_and(|b| b != b'\n' && b != b'\r') {
            self.pos += 1;
        }
        self.lexed.comments.push(start..self.pos);
        self.pending_space = true;
    }

    /// `/* */` comments nest in PostgreSQL, unlike in C.
    fn block_comment(&mut self) {
        let start = self.pos;
        let mut depth = 0usize;
        while let Some(b) = self.peek(0) {
            match (b, self.peek(1)) {
                (b'/', Some(b'*')) => {
                    depth += 1;
                    self.pos += 2;
                }
                (b'*', Some(b'/')) => {
                    depth -= 1;
                    self.pos += 2;
                    if depth == 0 {
                        self.lexed.comments.push(start..self.pos);
                        self.pending_space = true;
                        return;
                    }
                }
                _ => self.pos += 1,
            }
        }
        self.lexed.complete = false;
    }

    /// Identifiers and keywords, plus the literal prefixes that look like
    /// them: `B'`, `X'`, `E'`, `N'`, `U&'` and `U&"`.
    fn word(&mut self) {
        let start = self.pos;
        let first = self.src[start];
        match (first.to_ascii_lowercase(), self.peek(1), self.peek(2)) {
            (b'b' | b'x', Some(b'\''), _) => return self.literal(start, Quoted::Bits),
            (b'e', Some(b'\''), _) => return self.literal(start, Quoted::Escape),
            (b'n', Some(b'\''), _) => {
                // The scanner returns N as a keyword of its own, then the string.
                self.copy(1);
                return self.literal(self.pos, Quoted::Standard);
            }
            (b'u', Some(b'&'), Some(b'\'')) => return self.literal(start, Quoted::Standard),
            (b'u', Some(b'&'), Some(b'"')) => {
                self.copy(2);
                return self.quoted_identifier();
            }
            _ => {}
        }
        let mut end = start + 1;
        while self.src.get(end).is_some_and(|&b| is_ident_cont(b)) {
            end += 1;
        }
        self.copy(end - start);
    }

    /// A quoted literal starting at `start` (its prefix, if any); `self.pos`
    /// may point at the prefix or at the opening quote.
    fn literal(&mut self, start: usize, mode: Quoted) {
        self.pos = start;
        while self.src.get(self.pos).is_some_and(|&b| b != b'\'') {
            self.pos += 1;
        }
        loop {
            self.pos += 1; // the opening quote
            if !self.quoted_body(mode) {
                return self.unterminated_literal(start);
            }
            // `'a'` newline `'b'` is one literal: the scanner joins them.
            match self.continuation() {
                Some(next_quote) => self.pos = next_quote,
                None => break,
            }
        }
        self.emit_literal(start);
    }

    /// Scans to just past the closing quote; false when the input ends first.
    fn quoted_body(&mut self, mode: Quoted) -> bool {
        while let Some(b) = self.peek(0) {
            match b {
                b'\\' if mode == Quoted::Escape => self.pos += 2,
                b'\'' if mode != Quoted::Bits && self.peek(1) == Some(b'\'') => self.pos += 2,
                b'\'' => {
                    self.pos += 1;
                    return true;
                }
                _ => self.pos += 1,
            }
        }
        false
    }

    /// Where the next part of a continued string starts. As in the
    /// server's scanner (`quotecontinue`), the parts may be separated by
    /// whitespace that includes a newline, and `--` comments count as
    /// whitespace there; a `/* */` comment ends the literal.
    fn continuation(&self) -> Option<usize> {
        let horizontal = |b: u8| matches!(b, b' ' | b'\t' | b'\x0c' | b'\x0b');
        let mut i = self.skip_while_or_line_comment(self.pos, horizontal);
        if !self.src.get(i).is_some_and(|&b| b == b'\n' || b == b'\r') {
            return None;
        }
        i = self.skip_while_or_line_comment(i, is_space);
        (self.src.get(i) == Some(&b'\'')).then_some(i)
    }

    /// From `i`, past bytes for which `skip` holds and `--` comments (up to,
    /// not including, their newline).
    fn skip_while_or_line_comment(&self, mut i: usize, skip: impl Fn(u8) -> bool) -> usize {
        loop {
            match self.src.get(i) {
                Some(&b) if skip(b) => i += 1,
                Some(b'-') if self.src.get(i + 1) == Some(&b'-') => {
                    while self.src.get(i).is_some_and(|&b| b != b'\n' && b != b'\r') {
                        i += 1;
                    }
                }
                _ => return i,
            }
        }
    }

    fn emit_literal(&mut self, start: usize) {
        let end = self.pos.min(self.src.len());
        self.pos = end;
        self.lexed.literals.push(start..end);
        self.begin_token();
        self.out.push(b'?');
    }

    fn unterminated_literal(&mut self, start: usize) {
        self.pos = self.src.len();
        self.emit_literal(start);
        self.lexed.complete = false;
    }

    /// `"..."` with `""` as an escaped quote; kept verbatim.
    fn quoted_identifier(&mut self) {
        let start = self.pos;
        let mut i = start + 1;
        loop {
            match self.src.get(i) {
                None => {
                    self.lexed.complete = false;
                    return self.copy(i - start);
                }
                Some(b'"') if self.src.get(i + 1) == Some(&b'"') => i += 2,
                Some(b'"') => return self.copy(i + 1 - start),
                Some(_) => i += 1,
            }
        }
    }

    /// `$1` parameters, `$tag$...$tag$` strings, or a lone `$`.
    fn dollar(&mut self) {
        let start = self.pos;
        if self.peek(1).is_some_and(|b| b.is_ascii_digit()) {
            let mut end = start + 1;
            while self.src.get(end).is_some_and(|b| b.is_ascii_digit()) {
                end += 1;
            }
            return self.copy(end - start);
        }
        let mut tag_end = start + 1;
        if self.src.get(tag_end).is_some_and(|&b| is_ident_start(b)) {
            while self.src.get(tag_end).is_some_and(|&b| is_tag_cont(b)) {
                tag_end += 1;
            }
        }
        if self.src.get(tag_end) != Some(&b'$') {
            // `$abc` without a closing `$` is a lone `$` followed by a word.
            return self.copy(1);
        }
        let delimiter = &self.src[start..=tag_end];
        let body = tag_end + 1;
        match find(&self.src[body..], delimiter) {
            Some(at) => {
                self.pos = body + at + delimiter.len();
                self.emit_literal(start);
            }
            None => self.unterminated_literal(start),
        }
    }

    /// Decimal, hexadecimal, octal and binary integers (with `_` separators),
    /// decimals and exponents, per PostgreSQL 16+.
    fn number(&mut self) {
        let start = self.pos;
        let radix = match (
            self.src[start],
            self.peek(1).map(|b| b.to_ascii_lowercase()),
        ) {
            (b'0', Some(b'x')) => Some(16),
            (b'0', Some(b'o')) => Some(8),
            (b'0', Some(b'b')) => Some(2),
            _ => None,
        };
        match radix {
            Some(radix) => self.radix_digits(radix),
            None => self.decimal(),
        }
        self.emit_literal(start);
        if self.peek(0).is_some_and(is_ident_start) {
            self.lexed.junk = true;
        }
    }

    fn radix_digits(&mut self, radix: u32) {
        let mut end = self.pos + 2;
        loop {
            let digit_at = match self.src.get(end) {
                Some(b'_') => end + 1,
                _ => end,
            };
            if !self
                .src
                .get(digit_at)
                .is_some_and(|&b| char::from(b).is_digit(radix))
            {
                break;
            }
            end = digit_at + 1;
        }
        if end == self.pos + 2 {
            // `0x` with no digits: the server rejects it as junk.
            self.lexed.junk = true;
        }
        self.pos = end;
    }

    fn decimal(&mut self) {
        self.digits();
        if self.peek(0) == Some(b'.') && self.peek(1) != Some(b'.') {
            self.pos += 1;
            self.digits();
        }
        if self.peek(0).is_some_and(|b| b == b'e' || b == b'E') {
            let sign = usize::from(matches!(self.peek(1), Some(b'+' | b'-')));
            if self.peek(1 + sign).is_some_and(|b| b.is_ascii_digit()) {
                self.pos += 1 + sign;
                self.digits();
            } else if sign == 1 {
                // `1e+` is rejected by the server; the sign is part of the junk.
                self.lexed.junk = true;
            }
        }
    }

    /// `{decdigit}(_?{decdigit})*`, or nothing when no digit is next.
    fn digits(&mut self) {
        if !self.peek(0).is_some_and(|b| b.is_ascii_digit()) {
            return;
        }
        self.pos += 1;
        loop {
            match (self.peek(0), self.peek(1)) {
                (Some(d), _) if d.is_ascii_digit() => self.pos += 1,
                (Some(b'_'), Some(d)) if d.is_ascii_digit() => self.pos += 2,
                _ => break,
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

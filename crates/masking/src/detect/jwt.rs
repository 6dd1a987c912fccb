//! JSON Web Tokens: three (or, for JWE, five) base64url segments joined by
//! dots, whose first segment decodes to a JSON object with an `"alg"`.
//!
//! Every JSON header starts with `{`, which base64url-encodes to `ey`, so
//! `ey` is the cheap trigger; decoding and parsing only happen for the few
//! candidates that have the dotted shape.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::{Detector, Finding};

/// Headers are small; a longer first segment is not worth decoding.
const MAX_HEADER: usize = 4096;

pub(super) fn scan(text: &str, out: &mut Vec<Finding>) {
    let b = text.as_bytes();
    let mut i = 0;
    while i + 1 < b.len() {
        let trigger = b[i] == b'e'
            && b[i + 1] == b'y'
            && !(i > 0 && (is_b64url(b[i - 1]) || b[i - 1] == b'.'));
        match trigger.then(|| token_end(b, i)).flatten() {
            Some(end) => {
                out.push(Finding::new(Detector::Jwt, i, end));
                i = end;
            }
            None => i += 1,
        }
    }
}

fn is_b64url(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_'
}

fn segment_len(b: &[u8], p: usize) -> usize {
    b.get(p..)
        .map_or(0, |rest| rest.iter().take_while(|&&c| is_b64url(c)).count())
}

/// End of a JWT starting at `i`, if the shape and header are right.
fn token_end(b: &[u8], i: usize) -> Option<usize> {
    let header_len = segment_len(b, i);
    if header_len > MAX_HEADER || !header_has_alg(&b[i..i + header_len]) {
        return None;
    }
    let mut end = i + header_len;
    let mut segments = 1;
    let mut jws_end = None;
    // Payload (and JWE parts) must be non-empty; a JWS signature may be
    // empty (`alg: none`), so the third dot alone still counts.
    while segments < 5 && b.get(end) == Some(&b'.') {
        let n = segment_len(b, end + 1);
        if n == 0 && segments != 2 {
            break;
        }
        end += 1 + n;
        segments += 1;
        if segments == 3 {
            jws_end = Some(end);
        }
    }
    // Five segments are a JWE; otherwise the first three are the JWS.
    if segments == 5 {
        Some(end)
    } else {
        jws_end
    }
}

fn header_has_alg(segment: &[u8]) -> bool {
    let Ok(json) = URL_SAFE_NO_PAD.decode(segment) else {
        return false;
    };
    match serde_json::from_slice::<serde_json::Value>(&json) {
        Ok(serde_json::Value::Object(map)) => map.contains_key("alg"),
        _ => false,
    }
}

//! `*` globs, the one wildcard policies use (claim values, principal names,
//! SQL patterns). Deliberately no `?` or classes: `?` already means "a
//! literal" in normalized SQL, and a smaller language is easier to audit.

/// A compiled glob, anchored at both ends; `*` matches any sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Glob {
    /// The text between stars; one part means no star at all.
    parts: Vec<String>,
}

impl Glob {
    pub fn new(pattern: &str) -> Self {
        Self {
            parts: pattern.split('*').map(str::to_owned).collect(),
        }
    }

    pub fn matches(&self, text: &str) -> bool {
        let (first, rest) = match self.parts.split_first() {
            Some(split) => split,
            None => return text.is_empty(),
        };
        let Some((last, middle)) = rest.split_last() else {
            return text == first;
        };
        let Some(text) = text.strip_prefix(first.as_str()) else {
            return false;
        };
        let Some(mut text) = text.strip_suffix(last.as_str()) else {
            return false;
        };
        // Leftmost matching of each middle part is optimal for `*`-only globs.
        for part in middle {
            match text.find(part.as_str()) {
                Some(at) => text = &text[at + part.len()..],
                None => return false,
            }
        }
        true
    }
}

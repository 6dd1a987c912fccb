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

    /// Like [`Glob::matches`], but no `*` may match a character for which
    /// `excluded` holds; such characters must be spelt in the pattern.
    /// Leftmost matching is no longer optimal once stars are restricted, so
    /// this walks every reachable (pattern, text) position instead.
    pub fn matches_excluding(&self, text: &str, excluded: impl Fn(char) -> bool) -> bool {
        let pattern: Vec<Option<char>> = self
            .parts
            .iter()
            .enumerate()
            .flat_map(|(i, part)| {
                let star = (i > 0).then_some(None);
                star.into_iter().chain(part.chars().map(Some))
            })
            .collect();
        // reach[p]: the pattern prefix of length p matches the text read so far.
        let mut reach = vec![false; pattern.len() + 1];
        reach[0] = true;
        close_over_stars(&pattern, &mut reach);
        for c in text.chars() {
            let mut next = vec![false; pattern.len() + 1];
            for (p, token) in pattern.iter().enumerate() {
                if !reach[p] {
                    continue;
                }
                match token {
                    None if !excluded(c) => next[p] = true,
                    Some(t) if *t == c => next[p + 1] = true,
                    _ => {}
                }
            }
            close_over_stars(&pattern, &mut next);
            reach = next;
        }
        reach[pattern.len()]
    }
}

/// A star may match nothing: whatever reaches a star reaches past it too.
fn close_over_stars(pattern: &[Option<char>], reach: &mut [bool]) {
    for (p, token) in pattern.iter().enumerate() {
        if token.is_none() && reach[p] {
            reach[p + 1] = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Glob;

    fn shell_meta(c: char) -> bool {
        matches!(c, ';' | '|')
    }

    #[test]
    fn restricted_stars_agree_with_plain_matching_on_plain_text() {
        for (pattern, text, expected) in [
            ("git *", "git status", true),
            ("git *", "git", false),
            ("*", "", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("*log*", "tail -f app.log", true),
        ] {
            let glob = Glob::new(pattern);
            assert_eq!(glob.matches(text), expected, "{pattern} / {text}");
            assert_eq!(
                glob.matches_excluding(text, shell_meta),
                expected,
                "{pattern} / {text}"
            );
        }
    }

    #[test]
    fn restricted_stars_do_not_cross_excluded_characters() {
        let glob = Glob::new("git *");
        assert!(glob.matches("git status; rm -rf /"));
        assert!(!glob.matches_excluding("git status; rm -rf /", shell_meta));
        assert!(!glob.matches_excluding("git log | sh", shell_meta));
        // Spelt out in the pattern, the character is allowed.
        let piped = Glob::new("git log * | head *");
        assert!(piped.matches_excluding("git log --oneline | head -5", shell_meta));
        // Leftmost matching of `;` would fail here; a later `;` must be tried.
        let later = Glob::new("a*;*b");
        assert!(later.matches_excluding("ax;yb", shell_meta));
        assert!(!later.matches_excluding("ax;y;b", shell_meta));
    }
}

//! Watches the sending side of a legacy `scp` transfer (`scp -t` / `scp -f`)
//! to record which files moved and how big they were. No I/O: bytes in,
//! file list out. The bytes are relayed untouched whatever this sees.
//!
//! The sender writes control lines (`C0644 SIZE NAME`, `D0755 0 NAME`, `E`,
//! `T...`), each file's SIZE bytes of content followed by one status byte,
//! and nothing else; the receiver only answers with status bytes.

use serde_json::{json, Value};

/// A line longer than this is not scp control traffic; stop looking.
const MAX_LINE: usize = 4096;

#[derive(Debug, Default)]
pub struct ScpObserver {
    state: State,
    line: Vec<u8>,
    dirs: Vec<String>,
    files: Vec<FileSeen>,
}

#[derive(Debug, Default)]
enum State {
    #[default]
    Control,
    /// Inside a file: this many bytes left, its status byte included.
    Content(u64),
    /// Not scp as we know it; the transfer is still relayed.
    Lost,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSeen {
    /// Relative to the target of the transfer, with `/` between directories.
    pub name: String,
    pub size: u64,
}

impl ScpObserver {
    pub fn observe(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.state {
                State::Lost => return,
                State::Content(left) => {
                    let take = left.min(bytes.len() as u64);
                    bytes = &bytes[take as usize..];
                    self.state = match left - take {
                        0 => State::Control,
                        rest => State::Content(rest),
                    };
                }
                State::Control => {
                    let Some(end) = bytes.iter().position(|b| *b == b'\n') else {
                        self.line.extend_from_slice(bytes);
                        if self.line.len() > MAX_LINE {
                            self.state = State::Lost;
                        }
                        return;
                    };
                    self.line.extend_from_slice(&bytes[..end]);
                    bytes = &bytes[end + 1..];
                    let line = std::mem::take(&mut self.line);
                    self.control(&line);
                }
            }
        }
    }

    fn control(&mut self, line: &[u8]) {
        // Status bytes (0) may precede a line in the same read.
        let start = line.iter().position(|b| *b != 0).unwrap_or(line.len());
        let line = String::from_utf8_lossy(&line[start..]);
        let mut fields = line.splitn(3, ' ');
        let head = fields.next().unwrap_or("");
        match head.chars().next() {
            Some('C') | Some('D') => {
                let size = fields.next().and_then(|s| s.parse::<u64>().ok());
                let name = fields.next();
                let (Some(size), Some(name)) = (size, name) else {
                    self.state = State::Lost;
                    return;
                };
                if head.starts_with('D') {
                    self.dirs.push(name.to_string());
                    return;
                }
                let mut path = self.dirs.join("/");
                if !path.is_empty() {
                    path.push('/');
                }
                path.push_str(name);
                self.files.push(FileSeen { name: path, size });
                self.state = State::Content(size.saturating_add(1));
            }
            Some('E') => {
                self.dirs.pop();
            }
            // Times, warnings (\x01) and errors (\x02) carry no file.
            _ => {}
        }
    }

    pub fn files(&self) -> &[FileSeen] {
        &self.files
    }

    /// The files for a record: `[{"name": .., "size": ..}]`.
    pub fn to_json(&self) -> Value {
        Value::Array(
            self.files
                .iter()
                .map(|f| json!({ "name": f.name, "size": f.size }))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> Vec<u8> {
        let mut s = Vec::new();
        s.extend_from_slice(b"T1700000000 0 1700000000 0\n");
        s.extend_from_slice(b"C0644 5 hello.txt\n");
        s.extend_from_slice(b"hello\0");
        s.extend_from_slice(b"D0755 0 sub\n");
        s.extend_from_slice(b"C0600 12 a file with spaces\n");
        s.extend_from_slice(b"not\na line!\n\0");
        s.extend_from_slice(b"E\n");
        s.extend_from_slice(b"C0644 0 empty\n\0");
        s
    }

    fn expected() -> Vec<FileSeen> {
        vec![
            FileSeen {
                name: "hello.txt".into(),
                size: 5,
            },
            FileSeen {
                name: "sub/a file with spaces".into(),
                size: 12,
            },
            FileSeen {
                name: "empty".into(),
                size: 0,
            },
        ]
    }

    #[test]
    fn files_and_sizes_are_seen_whole() {
        let mut o = ScpObserver::default();
        o.observe(&stream());
        assert_eq!(o.files(), expected());
    }

    #[test]
    fn any_split_of_the_stream_sees_the_same_files() {
        let s = stream();
        for cut in 0..s.len() {
            let mut o = ScpObserver::default();
            o.observe(&s[..cut]);
            o.observe(&s[cut..]);
            assert_eq!(o.files(), expected(), "cut at {cut}");
        }
        let mut o = ScpObserver::default();
        for b in &s {
            o.observe(std::slice::from_ref(b));
        }
        assert_eq!(o.files(), expected(), "byte by byte");
    }

    #[test]
    fn garbage_stops_the_observer_without_panicking() {
        let mut o = ScpObserver::default();
        o.observe(b"C0644 lots name\n");
        o.observe(&[0xff; 10_000]);
        assert!(o.files().is_empty());
        let mut o = ScpObserver::default();
        o.observe(&[b'x'; MAX_LINE + 10]);
        o.observe(b"\nC0644 1 late\n");
        assert!(o.files().is_empty(), "{:?}", o.files());
    }
}

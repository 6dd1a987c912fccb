//! Terminal recordings in asciicast v2 (one JSON header line, then one
//! `[seconds, "o" | "r", text]` event per line), the format `asciinema play`
//! reads. One file per channel under `DATA_DIR/recordings/`; the record
//! that closes the channel carries the file's SHA-256, so the hash chain
//! vouches for the recording too.
//!
//! Only what the upstream sends is recorded (stdout and stderr, as a
//! terminal would show them) plus window size changes; keystrokes are not,
//! since they include whatever a user types at a password prompt.
//!
//! Output that is not UTF-8 (a binary file cat'ed into a pipe) has no place
//! in asciicast, whose events are text: turning it into replacement
//! characters would lose it and, escaped as JSON, cost several times its
//! size. Such chunks go byte for byte to a companion `.bin` file instead,
//! and the recording gets a marker naming the file and the offset.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Where a recording begins: what the header says.
#[derive(Debug, Clone)]
pub struct Header {
    pub width: u32,
    pub height: u32,
    pub term: Option<String>,
    pub title: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// An open recording. Writes go to a buffered file; a failed write is
/// remembered and reported in the summary rather than ending the session,
/// because the command it belongs to was recorded before it ran.
pub struct Recording {
    out: Option<BufWriter<File>>,
    relative: String,
    dir: PathBuf,
    /// Opened at the first binary chunk.
    binary: Option<Companion>,
    /// Whether each stream's last chunk was binary (one marker per run).
    in_binary: [bool; 2],
    started: Instant,
    file_hash: Sha256,
    file_bytes: u64,
    carry: [Utf8Carry; 2],
    streams: [StreamStats; 2],
    error: Option<String>,
}

struct Companion {
    out: BufWriter<File>,
    relative: String,
    hash: Sha256,
    bytes: u64,
}

#[derive(Default)]
struct StreamStats {
    bytes: u64,
    hash: Sha256,
}

impl Recording {
    /// Creates `dir/relative` (and its directory).
    pub fn create(dir: &Path, relative: &str, header: &Header) -> io::Result<Recording> {
        let path: PathBuf = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = File::create(&path)?;
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut recording = Recording {
            out: Some(BufWriter::with_capacity(64 * 1024, file)),
            relative: relative.to_string(),
            dir: dir.to_path_buf(),
            binary: None,
            in_binary: [false; 2],
            started: Instant::now(),
            file_hash: Sha256::new(),
            file_bytes: 0,
            carry: Default::default(),
            streams: Default::default(),
            error: None,
        };
        let header = json!({
            "version": 2,
            "width": header.width,
            "height": header.height,
            "timestamp": timestamp,
            "env": { "TERM": header.term },
            "title": header.title,
        });
        recording.line(&header);
        Ok(recording)
    }

    /// Output from the upstream, counted per stream and recorded as it shows.
    pub fn output(&mut self, stream: Stream, data: &[u8]) {
        let i = stream as usize;
        self.streams[i].bytes += data.len() as u64;
        self.streams[i].hash.update(data);
        match self.carry[i].text(data) {
            Some(text) => {
                self.in_binary[i] = false;
                if !text.is_empty() {
                    let event = json!([self.elapsed(), "o", text]);
                    self.line(&event);
                }
            }
            None => self.binary(i, data),
        }
    }

    fn binary(&mut self, stream: usize, data: &[u8]) {
        if self.out.is_none() {
            return;
        }
        if self.binary.is_none() {
            let relative = self.relative.replace(".cast", ".bin");
            match File::create(self.dir.join(&relative)) {
                Ok(file) => {
                    self.binary = Some(Companion {
                        out: BufWriter::with_capacity(64 * 1024, file),
                        relative,
                        hash: Sha256::new(),
                        bytes: 0,
                    })
                }
                Err(e) => return self.fail(e),
            }
        }
        let Some(companion) = self.binary.as_mut() else {
            return;
        };
        let offset = companion.bytes;
        if let Err(e) = companion.out.write_all(data) {
            return self.fail(e);
        }
        companion.hash.update(data);
        companion.bytes += data.len() as u64;
        if !self.in_binary[stream] {
            self.in_binary[stream] = true;
            let marker = format!(
                "\r\n[portcullis: binary output, kept in {} from byte {offset}]\r\n",
                companion.relative
            );
            let event = json!([self.elapsed(), "o", marker]);
            self.line(&event);
        }
    }

    pub fn resize(&mut self, width: u32, height: u32) {
        let event = json!([self.elapsed(), "r", format!("{width}x{height}")]);
        self.line(&event);
    }

    fn elapsed(&self) -> f64 {
        (self.started.elapsed().as_micros() as f64) / 1e6
    }

    fn line(&mut self, value: &Value) {
        let Some(out) = self.out.as_mut() else {
            return;
        };
        let mut bytes = value.to_string().into_bytes();
        bytes.push(b'\n');
        match out.write_all(&bytes) {
            Ok(()) => {
                self.file_hash.update(&bytes);
                self.file_bytes += bytes.len() as u64;
            }
            Err(e) => self.fail(e),
        }
    }

    fn fail(&mut self, e: io::Error) {
        tracing::error!(recording = %self.relative, error = %e, "terminal recording failed; the rest of this channel is not recorded");
        self.error = Some(e.to_string());
        self.out = None;
    }

    /// Flushes and describes the recording for the channel's result record.
    pub fn finish(mut self) -> Value {
        if let Some(mut out) = self.out.take() {
            if let Err(e) = out.flush() {
                self.fail(e);
            }
        }
        let binary = self.binary.take().map(|mut companion| {
            if let Err(e) = companion.out.flush() {
                self.fail(e);
            }
            json!({
                "file": companion.relative,
                "sha256": hex::encode(companion.hash.finalize()),
                "bytes": companion.bytes,
            })
        });
        let [stdout, stderr] = std::mem::take(&mut self.streams);
        json!({
            "file": self.relative,
            "sha256": hex::encode(self.file_hash.finalize()),
            "bytes": self.file_bytes,
            "binary": binary,
            "complete": self.error.is_none(),
            "error": self.error,
            "stdout_bytes": stdout.bytes,
            "stdout_sha256": hex::encode(stdout.hash.finalize()),
            "stderr_bytes": stderr.bytes,
            "stderr_sha256": hex::encode(stderr.hash.finalize()),
        })
    }
}

/// Turns a byte stream cut at arbitrary points into text without breaking
/// the multi-byte characters that straddle the cuts.
#[derive(Debug, Default)]
pub struct Utf8Carry {
    pending: Vec<u8>,
}

impl Utf8Carry {
    /// The chunk as text (a character cut off at its end waits for the next
    /// chunk), or `None` if it is not UTF-8; then the chunk and anything
    /// pending are the caller's to keep as bytes.
    pub fn text(&mut self, data: &[u8]) -> Option<String> {
        let joined;
        let bytes = if self.pending.is_empty() {
            data
        } else {
            let mut buf = std::mem::take(&mut self.pending);
            buf.extend_from_slice(data);
            joined = buf;
            &joined[..]
        };
        match std::str::from_utf8(bytes) {
            Ok(text) => Some(text.to_string()),
            Err(e) if e.error_len().is_none() => {
                let (text, tail) = bytes.split_at(e.valid_up_to());
                self.pending = tail.to_vec();
                // Valid by construction; checked again rather than trusted.
                std::str::from_utf8(text).ok().map(str::to_string)
            }
            Err(_) => None,
        }
    }
}

/// Reads a recording back, checking it against the SHA-256 its record
/// holds; `Ok(None)` when the file no longer matches (edited or truncated).
pub fn read_verified(path: &Path, sha256: &str) -> io::Result<Option<String>> {
    let bytes = std::fs::read(path)?;
    if hex::encode(Sha256::digest(&bytes)) != sha256 {
        return Ok(None);
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Whether a file (a recording's binary companion) still has this SHA-256.
pub fn file_matches(path: &Path, sha256: &str) -> io::Result<bool> {
    let bytes = std::fs::read(path)?;
    Ok(hex::encode(Sha256::digest(&bytes)) == sha256)
}

/// One event of a recording as `replay` reads it back.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub seconds: f64,
    pub kind: String,
    pub data: String,
}

/// Parses an event line; `None` for the header or anything malformed.
pub fn parse_event(line: &str) -> Option<Event> {
    let value: Value = serde_json::from_str(line).ok()?;
    let items = value.as_array()?;
    Some(Event {
        seconds: items.first()?.as_f64()?,
        kind: items.get(1)?.as_str()?.to_string(),
        data: items.get(2)?.as_str()?.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_split_across_chunks_survive() {
        let text = "héllo wörld ✓ 🚀";
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            let mut carry = Utf8Carry::default();
            let mut out = carry.text(&bytes[..cut]).unwrap();
            out.push_str(&carry.text(&bytes[cut..]).unwrap());
            assert_eq!(out, text, "cut at {cut}");
        }
    }

    #[test]
    fn bytes_that_are_not_utf8_are_not_text() {
        let mut carry = Utf8Carry::default();
        assert_eq!(carry.text(b"a\xffb"), None);
        assert_eq!(carry.text(b"ok"), Some("ok".into()));
        // A lone lead byte at the end waits for more, then proves invalid.
        assert_eq!(carry.text(b"c\xe2"), Some("c".into()));
        assert_eq!(carry.text(b"d"), None);
    }

    #[test]
    fn binary_output_is_kept_byte_for_byte_beside_the_recording() {
        let dir = tempfile::tempdir().unwrap();
        let header = Header {
            width: 80,
            height: 24,
            term: None,
            title: "bin".into(),
        };
        let mut rec = Recording::create(dir.path(), "recordings/b-1.cast", &header).unwrap();
        rec.output(Stream::Stdout, b"text first\n");
        rec.output(Stream::Stdout, &[0, 159, 146, 150, 255]);
        rec.output(Stream::Stdout, &[254, 1]);
        rec.output(Stream::Stdout, b"text again\n");
        let summary = rec.finish();
        assert_eq!(summary["stdout_bytes"], 11 + 5 + 2 + 11);
        assert_eq!(summary["binary"]["bytes"], 7);
        let bin = std::fs::read(dir.path().join("recordings/b-1.bin")).unwrap();
        assert_eq!(bin, [0, 159, 146, 150, 255, 254, 1]);
        assert_eq!(
            summary["binary"]["sha256"],
            hex::encode(Sha256::digest(&bin))
        );
        let cast = std::fs::read_to_string(dir.path().join("recordings/b-1.cast")).unwrap();
        let shown: Vec<String> = cast
            .lines()
            .filter_map(parse_event)
            .map(|e| e.data)
            .collect();
        assert_eq!(
            shown.len(),
            3,
            "one marker for one run of binary: {shown:?}"
        );
        assert!(
            shown[1].contains("recordings/b-1.bin from byte 0"),
            "{shown:?}"
        );
    }

    #[test]
    fn a_recording_is_valid_asciicast_and_counts_streams() {
        let dir = tempfile::tempdir().unwrap();
        let header = Header {
            width: 100,
            height: 30,
            term: Some("xterm".into()),
            title: "test".into(),
        };
        let mut rec = Recording::create(dir.path(), "recordings/s-0.cast", &header).unwrap();
        rec.output(Stream::Stdout, b"hello \xe2\x9c");
        rec.output(Stream::Stdout, b"\x93\r\n");
        rec.resize(120, 40);
        rec.output(Stream::Stderr, b"oops\n");
        let summary = rec.finish();
        assert_eq!(summary["stdout_bytes"], 11);
        assert_eq!(summary["stderr_bytes"], 5);
        assert_eq!(summary["complete"], true);
        let text = std::fs::read_to_string(dir.path().join("recordings/s-0.cast")).unwrap();
        assert_eq!(
            summary["sha256"],
            hex::encode(Sha256::digest(text.as_bytes()))
        );
        let mut lines = text.lines();
        let head: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(
            (head["version"].as_u64(), head["width"].as_u64()),
            (Some(2), Some(100))
        );
        let events: Vec<Event> = lines.map(|l| parse_event(l).unwrap()).collect();
        let kinds: Vec<(&str, &str)> = events
            .iter()
            .map(|e| (e.kind.as_str(), e.data.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("o", "hello "),
                ("o", "✓\r\n"),
                ("r", "120x40"),
                ("o", "oops\n")
            ]
        );
        assert!(events.windows(2).all(|w| w[0].seconds <= w[1].seconds));
    }
}

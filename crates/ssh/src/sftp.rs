//! Watches an sftp session (both directions) to record which files were
//! written or read and how many bytes moved, plus removals, renames and new
//! directories. No I/O, nothing altered: packets are parsed from copies of
//! the bytes the relay forwards, and anything unparseable stops the watching,
//! never the transfer.
//!
//! Packets are `uint32 length, byte type, payload` (draft-ietf-secsh-filexfer-02,
//! the version OpenSSH speaks). A file's name is in the client's OPEN; the
//! server answers with a HANDLE carrying the same request id; WRITEs name the
//! handle, READs are answered by DATA with the READ's id; CLOSE ends the file.

use std::collections::HashMap;

use serde_json::{json, Value};

/// The largest packet watched; OpenSSH sends at most 256 KiB.
const MAX_PACKET: usize = 512 * 1024;

const OPEN: u8 = 3;
const CLOSE: u8 = 4;
const READ: u8 = 5;
const WRITE: u8 = 6;
const REMOVE: u8 = 13;
const MKDIR: u8 = 14;
const RMDIR: u8 = 15;
const RENAME: u8 = 18;
const HANDLE: u8 = 102;
const DATA: u8 = 103;

#[derive(Debug, Default)]
pub struct SftpObserver {
    from_client: Vec<u8>,
    from_server: Vec<u8>,
    lost: bool,
    /// OPEN requests waiting for their HANDLE, by request id.
    opening: HashMap<u32, String>,
    /// READ requests waiting for their DATA: request id → handle.
    reading: HashMap<u32, Vec<u8>>,
    open: HashMap<Vec<u8>, FileUse>,
    files: Vec<FileUse>,
    operations: Vec<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileUse {
    pub name: String,
    pub written: u64,
    pub read: u64,
}

impl SftpObserver {
    pub fn client_bytes(&mut self, bytes: &[u8]) {
        self.feed(bytes, true);
    }

    pub fn server_bytes(&mut self, bytes: &[u8]) {
        self.feed(bytes, false);
    }

    fn feed(&mut self, bytes: &[u8], client: bool) {
        if self.lost {
            return;
        }
        let mut buf = std::mem::take(if client {
            &mut self.from_client
        } else {
            &mut self.from_server
        });
        buf.extend_from_slice(bytes);
        let mut at = 0;
        while let Some(len) = buf.get(at..at + 4).map(|b| be32(b) as usize) {
            if len == 0 || len > MAX_PACKET {
                self.lost = true;
                return;
            }
            let Some(packet) = buf.get(at + 4..at + 4 + len) else {
                break;
            };
            let parsed = if client {
                self.request(packet)
            } else {
                self.response(packet)
            };
            if parsed.is_none() {
                self.lost = true;
                return;
            }
            at += 4 + len;
        }
        buf.drain(..at);
        *(if client {
            &mut self.from_client
        } else {
            &mut self.from_server
        }) = buf;
    }

    fn request(&mut self, packet: &[u8]) -> Option<()> {
        let (&kind, rest) = packet.split_first()?;
        let mut r = Reader(rest);
        match kind {
            OPEN => {
                let id = r.u32()?;
                let name = r.text()?;
                self.opening.insert(id, name);
            }
            WRITE => {
                let _id = r.u32()?;
                let handle = r.bytes()?;
                let _offset = r.u64()?;
                let data = r.bytes()?;
                if let Some(file) = self.open.get_mut(handle) {
                    file.written += data.len() as u64;
                }
            }
            READ => {
                let id = r.u32()?;
                let handle = r.bytes()?.to_vec();
                self.reading.insert(id, handle);
            }
            CLOSE => {
                let _id = r.u32()?;
                if let Some(file) = self.open.remove(r.bytes()?) {
                    self.files.push(file);
                }
            }
            REMOVE | MKDIR | RMDIR => {
                let _id = r.u32()?;
                let op = match kind {
                    REMOVE => "remove",
                    MKDIR => "mkdir",
                    _ => "rmdir",
                };
                self.operations.push(json!({ "op": op, "path": r.text()? }));
            }
            RENAME => {
                let _id = r.u32()?;
                let from = r.text()?;
                let to = r.text()?;
                self.operations
                    .push(json!({ "op": "rename", "path": from, "to": to }));
            }
            _ => {}
        }
        Some(())
    }

    fn response(&mut self, packet: &[u8]) -> Option<()> {
        let (&kind, rest) = packet.split_first()?;
        let mut r = Reader(rest);
        match kind {
            HANDLE => {
                let id = r.u32()?;
                let handle = r.bytes()?.to_vec();
                if let Some(name) = self.opening.remove(&id) {
                    let file = FileUse {
                        name,
                        written: 0,
                        read: 0,
                    };
                    self.open.insert(handle, file);
                }
            }
            DATA => {
                let id = r.u32()?;
                let data = r.bytes()?;
                if let Some(handle) = self.reading.remove(&id) {
                    if let Some(file) = self.open.get_mut(&handle) {
                        file.read += data.len() as u64;
                    }
                }
            }
            // A STATUS answers an OPEN that failed or ends a READ at EOF.
            _ => {
                if let Some(id) = r.u32() {
                    self.opening.remove(&id);
                    self.reading.remove(&id);
                }
            }
        }
        Some(())
    }

    /// Files closed so far, then files still open when the session ended.
    pub fn files(&self) -> Vec<FileUse> {
        let mut files = self.files.clone();
        files.extend(self.open.values().cloned());
        files
    }

    /// For the channel's result record.
    pub fn to_json(&self) -> Value {
        let files: Vec<Value> = self
            .files()
            .into_iter()
            .map(|f| json!({ "name": f.name, "written": f.written, "read": f.read }))
            .collect();
        json!({ "files": files, "operations": self.operations, "complete": !self.lost })
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Reads SSH wire types from a packet; `None` when the packet is short.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(be32)
    }

    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        Some(u64::from_be_bytes(b.try_into().ok()?))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn text(&mut self) -> Option<String> {
        self.bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(kind: u8, fields: &[&[u8]]) -> Vec<u8> {
        let mut body = vec![kind];
        for f in fields {
            body.extend_from_slice(f);
        }
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend(body);
        out
    }

    fn s(bytes: &[u8]) -> Vec<u8> {
        let mut out = (bytes.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(bytes);
        out
    }

    fn id(n: u32) -> [u8; 4] {
        n.to_be_bytes()
    }

    /// An upload of 5 + 3 bytes to up.txt, a download of 4 bytes of
    /// down.txt, a rename and a removal: (from the client?, packet), in the
    /// order they cross the wire.
    fn session() -> Vec<(bool, Vec<u8>)> {
        let zero = 0u64.to_be_bytes();
        let five = 5u64.to_be_bytes();
        vec![
            (true, packet(1, &[&id(3)])),
            (false, packet(2, &[&id(3)])),
            (
                true,
                packet(OPEN, &[&id(1), &s(b"/tmp/up.txt"), &id(0x1a), &id(0)]),
            ),
            (false, packet(HANDLE, &[&id(1), &s(b"h1")])),
            (
                true,
                packet(WRITE, &[&id(2), &s(b"h1"), &zero, &s(b"hello")]),
            ),
            (true, packet(WRITE, &[&id(3), &s(b"h1"), &five, &s(b"abc")])),
            (true, packet(CLOSE, &[&id(4), &s(b"h1")])),
            (
                true,
                packet(OPEN, &[&id(5), &s(b"down.txt"), &id(1), &id(0)]),
            ),
            (false, packet(HANDLE, &[&id(5), &s(b"h2")])),
            (true, packet(READ, &[&id(6), &s(b"h2"), &zero, &id(32768)])),
            (false, packet(DATA, &[&id(6), &s(b"data")])),
            (true, packet(READ, &[&id(7), &s(b"h2"), &five, &id(32768)])),
            (false, packet(101, &[&id(7), &id(1), &s(b"EOF"), &s(b"")])),
            (true, packet(CLOSE, &[&id(8), &s(b"h2")])),
            (true, packet(RENAME, &[&id(9), &s(b"a"), &s(b"b")])),
            (true, packet(REMOVE, &[&id(10), &s(b"c")])),
        ]
    }

    fn expected() -> Vec<FileUse> {
        vec![
            FileUse {
                name: "/tmp/up.txt".into(),
                written: 8,
                read: 0,
            },
            FileUse {
                name: "down.txt".into(),
                written: 0,
                read: 4,
            },
        ]
    }

    /// Feeds each packet in pieces of `piece` bytes.
    fn run(piece: usize) -> SftpObserver {
        let mut o = SftpObserver::default();
        for (client, bytes) in session() {
            for part in bytes.chunks(piece) {
                match client {
                    true => o.client_bytes(part),
                    false => o.server_bytes(part),
                }
            }
        }
        o
    }

    #[test]
    fn uploads_downloads_and_operations_are_seen() {
        let o = run(usize::MAX);
        assert_eq!(o.files(), expected());
        let j = o.to_json();
        assert_eq!(
            j["operations"][0],
            json!({"op": "rename", "path": "a", "to": "b"})
        );
        assert_eq!(j["operations"][1], json!({"op": "remove", "path": "c"}));
        assert_eq!(j["complete"], true);
    }

    #[test]
    fn packets_split_anywhere_are_reassembled() {
        for piece in [1, 2, 3, 7] {
            assert_eq!(run(piece).files(), expected(), "pieces of {piece}");
        }
    }

    #[test]
    fn garbage_stops_watching_without_panicking() {
        let mut o = SftpObserver::default();
        o.client_bytes(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]);
        o.client_bytes(&packet(OPEN, &[&id(1), &s(b"late"), &id(0), &id(0)]));
        assert!(o.files().is_empty());
        assert_eq!(o.to_json()["complete"], false);
        let mut o = SftpObserver::default();
        o.client_bytes(&packet(OPEN, &[&id(1)]));
        assert_eq!(o.to_json()["complete"], false, "a short OPEN");
    }
}

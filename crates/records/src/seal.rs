//! Signed checkpoints: what makes a rewritten chain evident to `audit verify`.
//!
//! The hash chain alone proves nothing against someone who can write the database: they can
//! delete or edit a record and recompute every hash after it. So the gateway signs the chain's
//! head (record id and hash) with an Ed25519 key the store does not hold (a file, 0600, in
//! `data_dir` or wherever the config says, created on first start), at start, about once a second
//! while records are written, and at shutdown. The signed checkpoints are appended, one JSON line
//! each, to `audit-checkpoints.jsonl` beside the key, outside the database.
//!
//! A record's hash covers every record before it, so one signed `(id, hash)` pins the whole
//! chain up to `id`: a record deleted, edited or inserted before it and the rest rehashed changes
//! that hash (the record named is the signed one; the rewrite lies after the last signed record
//! that still matches), and a tail cut below a signed id leaves that id missing. Records after
//! the last checkpoint are vouched for by the chain alone until the next one.
//!
//! What this cannot show: someone who can also write the key's directory can roll the
//! checkpoint file back to an earlier line, or delete key and checkpoints together (the next
//! start then makes a new key, and says so loudly). Keep the key where the store's writers
//! cannot reach it, and compare the fingerprint `audit verify` prints with one kept elsewhere.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Broken, Store, StoreError, VerifyReport};

/// Separates checkpoint signatures from any other use of the key, and versions the message.
const DOMAIN: &str = "portcullis-checkpoint/v1";

/// The file the checkpoints of a key at `key_path` go to: beside the key.
pub fn checkpoints_path(key_path: &Path) -> PathBuf {
    key_path.with_file_name("audit-checkpoints.jsonl")
}

/// The Ed25519 key that signs checkpoints.
pub struct AuditKey {
    pair: Ed25519KeyPair,
    fingerprint: String,
}

impl AuditKey {
    /// Reads the key at `path`; `None` when there is no file.
    pub fn load(path: &Path) -> Result<Option<AuditKey>, StoreError> {
        let pkcs8 = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(key_error(path, format!("cannot read: {e}"))),
        };
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
            .map_err(|_| key_error(path, "not an Ed25519 PKCS#8 key".into()))?;
        Ok(Some(AuditKey::from_pair(pair)))
    }

    /// Generates a key into `path`, readable by its owner only; fails if the file exists.
    pub fn create(path: &Path) -> Result<AuditKey, StoreError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| key_error(path, "cannot generate a key".into()))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| key_error(path, format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut file = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| key_error(path, format!("cannot create: {e}")))?;
        file.write_all(pkcs8.as_ref())
            .and_then(|()| file.sync_all())
            .map_err(|e| key_error(path, format!("cannot write: {e}")))?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|_| key_error(path, "generated key does not parse".into()))?;
        Ok(AuditKey::from_pair(pair))
    }

    fn from_pair(pair: Ed25519KeyPair) -> Self {
        let digest = Sha256::digest(pair.public_key().as_ref());
        let fingerprint = format!("ed25519:{}", hex::encode(&digest[..16]));
        AuditKey { pair, fingerprint }
    }

    /// `ed25519:` and the first 16 bytes of the public key's SHA-256, in hex.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn sign(&self, id: i64, hash: &str) -> Checkpoint {
        let time = crate::db::format_time(time::OffsetDateTime::now_utc());
        let sig = self.pair.sign(message(id, hash, &time).as_bytes());
        Checkpoint {
            id,
            hash: hash.to_owned(),
            time,
            key: self.fingerprint.clone(),
            sig: B64.encode(sig.as_ref()),
        }
    }

    fn verifies(&self, checkpoint: &Checkpoint) -> bool {
        let Ok(sig) = B64.decode(&checkpoint.sig) else {
            return false;
        };
        let message = message(checkpoint.id, &checkpoint.hash, &checkpoint.time);
        UnparsedPublicKey::new(&ED25519, self.pair.public_key().as_ref())
            .verify(message.as_bytes(), &sig)
            .is_ok()
    }
}

fn message(id: i64, hash: &str, time: &str) -> String {
    format!("{DOMAIN}\n{id}\n{hash}\n{time}\n")
}

fn key_error(path: &Path, reason: String) -> StoreError {
    StoreError::SigningKey {
        path: path.display().to_string(),
        reason,
    }
}

/// One signed statement: "record `id` of this chain has hash `hash`", as of `time`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub id: i64,
    pub hash: String,
    pub time: String,
    /// Fingerprint of the signing key.
    pub key: String,
    /// Base64 Ed25519 signature.
    pub sig: String,
}

/// Reads the checkpoint file: `None` when it does not exist. A last line without its newline
/// is a write the process did not finish (a crash) and is left out; any other unreadable line
/// is reported by its number.
fn read_checkpoints(path: &Path) -> Result<Option<Vec<Result<Checkpoint, usize>>>, StoreError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(StoreError::Checkpoints {
                path: path.display().to_string(),
                reason: format!("cannot read: {e}"),
            })
        }
    };
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    Ok(Some(
        complete
            .lines()
            .enumerate()
            .map(|(i, line)| serde_json::from_str(line).map_err(|_| i + 1))
            .collect(),
    ))
}

/// `audit verify` with checkpoints: the chain, every checkpoint's signature under the key at
/// `key_path`, and that the chain still holds each signed record. A missing key or checkpoint
/// file, when there are records, is itself a break: it cannot be told from a rewrite.
pub fn verify_signed(store: &Store, key_path: &Path) -> Result<VerifyReport, StoreError> {
    let log = checkpoints_path(key_path);
    let key = AuditKey::load(key_path)?;
    let lines = read_checkpoints(&log)?;
    let Some(key) = key else {
        let mut report = store.verify()?;
        let reason = match lines {
            Some(_) => format!(
                "the audit signing key {} is missing but {} holds signed checkpoints: restore the key",
                key_path.display(),
                log.display()
            ),
            None => format!(
                "no signed checkpoint covers the chain: neither the signing key {} nor {} exists",
                key_path.display(),
                log.display()
            ),
        };
        if report.checked > 0 && report.first_broken.is_none() {
            report.first_broken = Some(Broken { id: 1, reason });
        }
        return Ok(report);
    };
    let mut signed = BTreeMap::new();
    for (n, line) in lines.unwrap_or_default().into_iter().enumerate() {
        let problem = match &line {
            Err(number) => Some(format!("line {number} of {} is not a checkpoint", log.display())),
            Ok(cp) if !key.verifies(cp) => Some(format!(
                "checkpoint line {} of {} (record {}) is not signed by the audit key {}: the file was altered",
                n + 1,
                log.display(),
                cp.id,
                key.fingerprint()
            )),
            Ok(_) => None,
        };
        if let Some(reason) = problem {
            let mut report = store.verify()?;
            report.first_broken = Some(Broken {
                id: line.as_ref().map_or(1, |cp| cp.id.max(1)),
                reason,
            });
            return Ok(report);
        }
        if let Ok(cp) = line {
            signed.insert(cp.id, cp);
        }
    }
    let mut report = store.verify_against(&signed)?;
    report.signing_key = Some(key.fingerprint().to_owned());
    if signed.is_empty() && report.checked > 0 && report.first_broken.is_none() {
        report.first_broken = Some(Broken {
            id: 1,
            reason: format!(
                "{} holds no signed checkpoint although the signing key exists: the checkpoints were removed",
                log.display()
            ),
        });
    }
    Ok(report)
}

/// The gateway's signer: checks the chain at start, then signs its head as it grows.
pub struct Seal {
    key: AuditKey,
    log: PathBuf,
    /// The id of the last record signed.
    signed: Mutex<i64>,
}

/// What [`Seal::open`] found.
pub struct Opened {
    pub seal: Seal,
    pub report: VerifyReport,
    /// The key was generated now: records before this start were checked by the chain alone.
    pub new_key: bool,
}

impl Seal {
    /// Verifies the chain against the checkpoints of the key at `key_path` (or, when neither
    /// key nor checkpoints exist yet, by its hashes alone and then creates the key), and signs
    /// the head. Fails with [`StoreError::Tampered`] when the chain does not verify: grants and
    /// approvals are rebuilt from these records, so nothing may start on a rewritten chain.
    pub fn open(store: &Store, key_path: &Path) -> Result<Opened, StoreError> {
        let log = checkpoints_path(key_path);
        let first_start = AuditKey::load(key_path)?.is_none() && !log.exists();
        let report = match first_start {
            true => store.verify()?,
            false => verify_signed(store, key_path)?,
        };
        if let Some(broken) = &report.first_broken {
            return Err(StoreError::Tampered {
                id: broken.id,
                reason: broken.reason.clone(),
            });
        }
        let key = match first_start {
            true => AuditKey::create(key_path)?,
            false => AuditKey::load(key_path)?.ok_or_else(|| {
                key_error(key_path, "disappeared while the gateway started".into())
            })?,
        };
        let seal = Seal {
            key,
            log,
            signed: Mutex::new(-1),
        };
        seal.checkpoint(store)?;
        Ok(Opened {
            seal,
            report,
            new_key: first_start,
        })
    }

    pub fn fingerprint(&self) -> &str {
        self.key.fingerprint()
    }

    /// Where the checkpoints go.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Signs the store's head if it moved since the last checkpoint. The line is synced before
    /// this returns.
    pub fn checkpoint(&self, store: &Store) -> Result<(), StoreError> {
        let Some((id, hash)) = store.head() else {
            return Ok(());
        };
        let mut signed = self.signed.lock().unwrap_or_else(|e| e.into_inner());
        if id <= *signed {
            return Ok(());
        }
        let checkpoint = self.key.sign(id, &hash);
        let mut line = serde_json::to_string(&checkpoint).map_err(|e| StoreError::Checkpoints {
            path: self.log.display().to_string(),
            reason: e.to_string(),
        })?;
        line.push('\n');
        let written = File::options()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.log)
            .and_then(|mut f| f.write_all(line.as_bytes()).and_then(|()| f.sync_data()));
        written.map_err(|e| StoreError::Checkpoints {
            path: self.log.display().to_string(),
            reason: format!("cannot append: {e}"),
        })?;
        *signed = id;
        Ok(())
    }
}

#[cfg(test)]
mod tests;

//! The gateway's own SSH host key: generated on first start, kept in the
//! data dir, so clients that pinned it keep trusting the gateway.

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::RngCore;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::LineEnding;
use russh::keys::PrivateKey;

use crate::SshError;

pub const FILE_NAME: &str = "ssh_host_ed25519_key";

/// Loads `DATA_DIR/ssh_host_ed25519_key`, creating it (mode 0600) if absent.
pub fn load_or_create(data_dir: &Path) -> Result<PrivateKey, SshError> {
    let path = data_dir.join(FILE_NAME);
    if path.exists() {
        return russh::keys::load_secret_key(&path, None).map_err(|e| SshError::Key {
            path,
            message: e.to_string(),
        });
    }
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    let text = key.to_openssh(LineEnding::LF).map_err(|e| SshError::Key {
        path: path.clone(),
        message: e.to_string(),
    })?;
    write_private(&path, text.as_bytes())?;
    tracing::info!(path = %path.display(), fingerprint = %key.public_key().fingerprint(Default::default()), "generated SSH host key");
    Ok(key)
}

fn write_private(path: &PathBuf, bytes: &[u8]) -> Result<(), SshError> {
    let io = |e: std::io::Error| SshError::Key {
        path: path.clone(),
        message: e.to_string(),
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_created_once_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        let again = load_or_create(dir.path()).unwrap();
        assert_eq!(first.public_key(), again.public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(FILE_NAME))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn an_unreadable_key_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), "not a key").unwrap();
        let err = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(err.contains(FILE_NAME), "{err}");
    }
}

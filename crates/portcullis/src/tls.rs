//! The certificate client-facing listeners present: the configured one, or
//! a dev certificate generated once into the data dir and reused after; and
//! the masking key, likewise generated once.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use portcullis_config::Config;

pub fn server_config(config: &Config) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let (cert_path, key_path) = match &config.tls {
        Some(files) => (files.cert.clone(), files.key.clone()),
        None => {
            let cert = config.data_dir.join("dev-cert.pem");
            let key = config.data_dir.join("dev-key.pem");
            if !cert.exists() || !key.exists() {
                generate_dev_cert(&cert, &key)?;
            }
            tracing::warn!(cert = %cert.display(), "no tls configured: using a generated development certificate");
            (cert, key)
        }
    };
    load(&cert_path, &key_path)
}

fn load(cert_path: &Path, key_path: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs = rustls_pemfile::certs(&mut read(cert_path)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not a PEM certificate", cert_path.display()))?;
    let key = rustls_pemfile::private_key(&mut read(key_path)?.as_slice())
        .with_context(|| format!("{}: not a PEM private key", key_path.display()))?
        .with_context(|| format!("{}: no private key found", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "{} does not match {}",
                key_path.display(),
                cert_path.display()
            )
        })?;
    Ok(Arc::new(config))
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn generate_dev_cert(cert: &Path, key: &Path) -> anyhow::Result<()> {
    if let Some(dir) = cert.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let generated =
        rcgen::generate_simple_self_signed(names).context("cannot generate dev certificate")?;
    std::fs::write(cert, generated.cert.pem())?;
    write_private(key, generated.key_pair.serialize_pem().as_bytes())?;
    Ok(())
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

/// The key `mask: { method: hash }` is keyed with: generated once into the
/// data dir and kept, so hashed values stay joinable across restarts (and
/// across gateways that share the file).
pub fn masking_key(config: &Config) -> anyhow::Result<portcullis_masking::Masker> {
    let path = config.data_dir.join("masking.key");
    if !path.exists() {
        let mut key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
        write_private(&path, hex::encode(key).as_bytes())?;
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let key = hex::decode(text.trim())
        .with_context(|| format!("{}: not a hex-encoded key", path.display()))?;
    portcullis_masking::Masker::new(&key).with_context(|| path.display().to_string())
}

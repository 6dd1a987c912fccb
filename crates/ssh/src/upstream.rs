//! The gateway's side of the upstream connection: logs in with the
//! gateway-held key, and trusts the upstream only if it presents exactly
//! the configured host key.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use portcullis_config::SshUpstream;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{client, Channel, ChannelOpenFailure};

use crate::channel::Reverse;
use crate::SshError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the gateway logs in, with what.
pub struct UpstreamTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub key: Arc<PrivateKey>,
    pub host_key: PublicKey,
}

impl UpstreamTarget {
    /// Loads the private key and parses the pinned host key of a config's upstream.
    pub fn from_config(config: &SshUpstream) -> Result<UpstreamTarget, SshError> {
        let key = russh::keys::load_secret_key(&config.private_key_file, None).map_err(|e| {
            SshError::Key {
                path: config.private_key_file.clone(),
                message: e.to_string(),
            }
        })?;
        Ok(UpstreamTarget {
            host: config.host.clone(),
            port: config.port,
            user: config.user.clone(),
            key: Arc::new(key),
            host_key: Self::parse_host_key(&config.known_host_key)?,
        })
    }

    /// Parses `known_host_key` (`ssh-ed25519 AAAA... [comment]`).
    pub fn parse_host_key(text: &str) -> Result<PublicKey, SshError> {
        PublicKey::from_openssh(text.trim()).map_err(|e| SshError::HostKeyConfig(e.to_string()))
    }
}

pub type Upstream = client::Handle<HostKeyCheck>;

/// Compares the presented key with the pinned one and remembers a mismatch
/// so the refusal can say what was seen.
pub struct HostKeyCheck {
    expected: PublicKey,
    mismatch: Arc<Mutex<Option<String>>>,
    reverse: ReverseForwards,
}

/// Where connections the upstream forwards back (`ssh -R`) go; empty until
/// a policy allowed a remote forward on this session.
pub(crate) type ReverseForwards = Arc<Mutex<Option<Reverse>>>;

impl client::Handler for HostKeyCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        presented: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = match presented {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.key_data(),
            PublicKeyOrCertificate::Certificate(cert) => cert.public_key(),
        };
        if key == self.expected.key_data() {
            return Ok(true);
        }
        let seen = format!(
            "upstream host key mismatch: known_host_key is {} but the upstream presented {} {}",
            self.expected.fingerprint(HashAlg::Sha256),
            key.algorithm(),
            key.fingerprint(HashAlg::Sha256)
        );
        *self.mismatch.lock().unwrap_or_else(|p| p.into_inner()) = Some(seen);
        Ok(false)
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: Channel<client::Msg>,
        connected_address: &str,
        connected_port: u32,
        originator_address: &str,
        originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let reverse = self
            .reverse
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let listener = (connected_address.to_string(), connected_port);
        let origin = (originator_address.to_string(), originator_port);
        match reverse {
            // Opening the client's side waits for the client; not here, where
            // it would hold up the whole upstream connection.
            Some(reverse) => drop(tokio::spawn(reverse.open(channel, reply, listener, origin))),
            None => {
                reply
                    .reject(ChannelOpenFailure::AdministrativelyProhibited)
                    .await
            }
        }
        Ok(())
    }
}

/// Opens and authenticates the upstream session.
pub(crate) async fn connect(
    target: &UpstreamTarget,
    reverse: ReverseForwards,
) -> Result<Upstream, SshError> {
    let config = Arc::new(client::Config {
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        nodelay: true,
        ..Default::default()
    });
    let mismatch = Arc::new(Mutex::new(None));
    let check = HostKeyCheck {
        expected: target.host_key.clone(),
        mismatch: mismatch.clone(),
        reverse,
    };
    let address = (target.host.as_str(), target.port);
    let connecting = client::connect(config, address, check);
    let mut handle = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Err(_) => return Err(SshError::Upstream("connection timed out".into())),
        Ok(Err(e)) => {
            let seen = mismatch.lock().unwrap_or_else(|p| p.into_inner()).take();
            return Err(match seen {
                Some(message) => SshError::HostKeyMismatch(message),
                None => SshError::Upstream(e.to_string()),
            });
        }
        Ok(Ok(handle)) => handle,
    };
    let key = PrivateKeyWithHashAlg::new(target.key.clone(), None);
    let auth = handle
        .authenticate_publickey(&target.user, key)
        .await
        .map_err(|e| SshError::Upstream(e.to_string()))?;
    if !auth.success() {
        return Err(SshError::Upstream(format!(
            "the upstream refused the gateway's key for user {:?}",
            target.user
        )));
    }
    Ok(handle)
}

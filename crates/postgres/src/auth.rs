//! The gateway's side of upstream password authentication: SCRAM-SHA-256
//! (RFC 5802 / 7677), with tls-server-end-point channel binding (RFC 5929)
//! when the server offers SCRAM-SHA-256-PLUS over TLS, and PostgreSQL's md5
//! scheme. Pure computation, no I/O.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("upstream sent a malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("upstream SCRAM nonce does not extend ours")]
    NonceMismatch,
    #[error("upstream SCRAM server signature is wrong: the upstream is not who it claims")]
    BadServerSignature,
    #[error("upstream SCRAM iteration count {0} is out of range")]
    Iterations(u32),
}

/// `md5` followed by md5(md5(password ‖ user) ‖ salt), in hex.
pub fn md5_password(user: &str, password: &str, salt: [u8; 4]) -> String {
    let inner = hex::encode(Md5::digest([password.as_bytes(), user.as_bytes()].concat()));
    let outer = Md5::digest([inner.as_bytes(), &salt[..]].concat());
    format!("md5{}", hex::encode(outer))
}

/// What the client says about channel binding in its GS2 header, and what
/// it binds to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelBinding {
    /// `n`: no TLS, so nothing to bind to.
    None,
    /// `y`: the client could bind but the server offered no -PLUS mechanism.
    /// A server that did offer one sees that it was stripped in transit.
    NotOffered,
    /// `p=tls-server-end-point`: the hash of the server's certificate, so
    /// the exchange only succeeds if both ends saw the same certificate (a
    /// TLS interceptor presents its own).
    TlsServerEndPoint(Vec<u8>),
}

impl ChannelBinding {
    fn gs2_header(&self) -> &'static str {
        match self {
            Self::None => "n,,",
            Self::NotOffered => "y,,",
            Self::TlsServerEndPoint(_) => "p=tls-server-end-point,,",
        }
    }

    /// The SASL mechanism that goes with this binding.
    pub fn mechanism(&self) -> &'static str {
        match self {
            Self::TlsServerEndPoint(_) => "SCRAM-SHA-256-PLUS",
            Self::None | Self::NotOffered => "SCRAM-SHA-256",
        }
    }
}

/// A SCRAM-SHA-256 client exchange, with or without channel binding.
pub struct ScramClient {
    password: String,
    nonce: String,
    binding: ChannelBinding,
    client_first_bare: String,
    server_signature: Option<[u8; 32]>,
    verified: bool,
}

impl ScramClient {
    pub fn new(password: &str, binding: ChannelBinding) -> Self {
        let nonce_bytes: [u8; 18] = rand::random();
        Self::with_nonce(password, &B64.encode(nonce_bytes), binding)
    }

    fn with_nonce(password: &str, nonce: &str, binding: ChannelBinding) -> Self {
        Self {
            password: password.to_string(),
            nonce: nonce.to_string(),
            binding,
            client_first_bare: format!("n=,r={nonce}"),
            server_signature: None,
            verified: false,
        }
    }

    /// client-first-message; the user name is empty because PostgreSQL takes
    /// it from the startup packet.
    pub fn client_first(&self) -> String {
        format!("{}{}", self.binding.gs2_header(), self.client_first_bare)
    }

    /// Whether the server's final message has been checked: an
    /// AuthenticationOk before that would skip the proof that the server
    /// knows the password.
    pub fn server_verified(&self) -> bool {
        self.verified
    }

    /// Whether the exchange is bound to the TLS certificate.
    pub fn bound(&self) -> bool {
        matches!(self.binding, ChannelBinding::TlsServerEndPoint(_))
    }

    /// The `c=` attribute: the GS2 header and, when bound, the certificate hash.
    fn channel_attribute(&self) -> String {
        let mut data = self.binding.gs2_header().as_bytes().to_vec();
        if let ChannelBinding::TlsServerEndPoint(hash) = &self.binding {
            data.extend_from_slice(hash);
        }
        B64.encode(data)
    }

    /// Consumes server-first-message, returns client-final-message.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<String, ScramError> {
        let server_first =
            std::str::from_utf8(server_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (nonce, salt, iterations) = parse_server_first(server_first)?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::NonceMismatch);
        }
        if !(1..=10_000_000).contains(&iterations) {
            return Err(ScramError::Iterations(iterations));
        }
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2::<HmacSha256>(self.password.as_bytes(), &salt, iterations, &mut salted)
            .map_err(|_| ScramError::Malformed("bad PBKDF2 parameters"))?;
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c={},r={nonce}", self.channel_attribute());
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature.iter())
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = hmac(&salted, b"Server Key");
        self.server_signature = Some(hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks server-final-message: proves the upstream knew the password too.
    pub fn verify_server_final(&mut self, server_final: &[u8]) -> Result<(), ScramError> {
        let text =
            std::str::from_utf8(server_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let v = text
            .split(',')
            .find_map(|a| a.strip_prefix("v="))
            .ok_or(ScramError::Malformed("no server signature"))?;
        let got = B64
            .decode(v)
            .map_err(|_| ScramError::Malformed("bad base64 signature"))?;
        let expected = self
            .server_signature
            .ok_or(ScramError::Malformed("final message before first"))?;
        if bool::from(got.ct_eq(&expected)) {
            self.verified = true;
            Ok(())
        } else {
            Err(ScramError::BadServerSignature)
        }
    }
}

fn parse_server_first(msg: &str) -> Result<(&str, Vec<u8>, u32), ScramError> {
    let (mut nonce, mut salt, mut iterations) = (None, None, None);
    for attr in msg.split(',') {
        if let Some(v) = attr.strip_prefix("r=") {
            nonce = Some(v);
        } else if let Some(v) = attr.strip_prefix("s=") {
            salt = Some(
                B64.decode(v)
                    .map_err(|_| ScramError::Malformed("bad salt"))?,
            );
        } else if let Some(v) = attr.strip_prefix("i=") {
            iterations = Some(
                v.parse()
                    .map_err(|_| ScramError::Malformed("bad iteration count"))?,
            );
        }
    }
    Ok((
        nonce.ok_or(ScramError::Malformed("no nonce"))?,
        salt.ok_or(ScramError::Malformed("no salt"))?,
        iterations.ok_or(ScramError::Malformed("no iteration count"))?,
    ))
}

/// The tls-server-end-point binding data (RFC 5929 section 4.1): the
/// certificate hashed with the hash of its own signature algorithm, SHA-256
/// in place of MD5 and SHA-1. `None` for algorithms the RFC leaves
/// undefined (Ed25519, RSA-PSS), which PostgreSQL cannot bind to either.
pub fn tls_server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    let oid = signature_algorithm_oid(cert_der)?;
    // 1.2.840.113549.1.1.x (RSA) and 1.2.840.10045.4.x (ECDSA).
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    let hash = match oid {
        o if o.starts_with(RSA) && o.len() == RSA.len() + 1 => match o[RSA.len()] {
            4 | 5 | 11 | 14 => Hash::Sha256,
            12 => Hash::Sha384,
            13 => Hash::Sha512,
            _ => return None,
        },
        o if o == [ECDSA, &[0x01]].concat() => Hash::Sha256,
        o if o.starts_with(ECDSA) && o.len() == ECDSA.len() + 2 && o[ECDSA.len()] == 3 => {
            match o[ECDSA.len() + 1] {
                1 | 2 => Hash::Sha256,
                3 => Hash::Sha384,
                4 => Hash::Sha512,
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(match hash {
        Hash::Sha256 => Sha256::digest(cert_der).to_vec(),
        Hash::Sha384 => sha2::Sha384::digest(cert_der).to_vec(),
        Hash::Sha512 => sha2::Sha512::digest(cert_der).to_vec(),
    })
}

enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

/// Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm
/// AlgorithmIdentifier, signature }; AlgorithmIdentifier ::= SEQUENCE {
/// algorithm OBJECT IDENTIFIER, parameters ANY OPTIONAL }.
fn signature_algorithm_oid(cert_der: &[u8]) -> Option<&[u8]> {
    let (certificate, _) = der_element(cert_der, 0x30)?;
    let (_tbs, rest) = der_element(certificate, 0x30)?;
    let (algorithm, _) = der_element(rest, 0x30)?;
    let (oid, _) = der_element(algorithm, 0x06)?;
    Some(oid)
}

/// One DER element with the expected tag: its contents and what follows it.
fn der_element(bytes: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = bytes.split_first()?;
    if first != tag {
        return None;
    }
    let (&len_byte, rest) = rest.split_first()?;
    let (len, rest) = if len_byte < 0x80 {
        (usize::from(len_byte), rest)
    } else {
        let count = usize::from(len_byte & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[count..])
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_matches_postgres() {
        // SELECT 'md5' || md5(md5('secret' || 'alice') || 'salt')
        assert_eq!(
            md5_password("alice", "secret", *b"salt"),
            format!(
                "md5{}",
                hex::encode(Md5::digest(
                    [hex::encode(Md5::digest(b"secretalice")).as_bytes(), b"salt"].concat()
                ))
            )
        );
    }

    #[test]
    fn rfc7677_test_vector() {
        // RFC 7677 section 3, user "user", password "pencil".
        let mut c = ScramClient::with_nonce("pencil", "rOprNGfwEbeRWgbNEkqO", ChannelBinding::None);
        c.client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO".into();
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let fin = c.client_final(server_first.as_bytes()).unwrap();
        assert_eq!(
            fin,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        assert!(c
            .verify_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .is_ok());
        assert_eq!(
            c.verify_server_final(b"v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
            Err(ScramError::BadServerSignature)
        );
    }

    #[test]
    fn foreign_nonce_is_refused() {
        let mut c = ScramClient::with_nonce("pw", "abc", ChannelBinding::None);
        assert_eq!(
            c.client_final(b"r=xyz123,s=AAAA,i=4096"),
            Err(ScramError::NonceMismatch)
        );
    }

    #[test]
    fn a_bound_exchange_sends_the_header_and_certificate_hash() {
        let hash = vec![0xab; 32];
        let mut c =
            ScramClient::with_nonce("pw", "abc", ChannelBinding::TlsServerEndPoint(hash.clone()));
        assert_eq!(c.client_first(), "p=tls-server-end-point,,n=,r=abc");
        let fin = c.client_final(b"r=abcdef,s=AAAA,i=4096").unwrap();
        let expected = B64.encode([&b"p=tls-server-end-point,,"[..], &hash].concat());
        assert!(
            fin.starts_with(&format!("c={expected},r=abcdef,p=")),
            "{fin}"
        );
        assert!(c.bound());
        let y = ScramClient::with_nonce("pw", "abc", ChannelBinding::NotOffered);
        assert_eq!(y.client_first(), "y,,n=,r=abc");
    }

    #[test]
    fn end_point_hash_follows_the_certificate_signature_algorithm() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let der = cert.cert.der().to_vec();
        // rcgen signs with ECDSA P-256 and SHA-256.
        assert_eq!(
            tls_server_end_point(&der),
            Some(Sha256::digest(&der).to_vec())
        );
        assert_eq!(tls_server_end_point(&der[..der.len() / 2]), None);
        assert_eq!(tls_server_end_point(b""), None);
    }
}

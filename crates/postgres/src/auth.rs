//! The gateway's side of upstream password authentication: SCRAM-SHA-256
//! (RFC 5802 / 7677) and PostgreSQL's md5 scheme. Pure computation, no I/O.

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

/// A SCRAM-SHA-256 client exchange without channel binding.
pub struct ScramClient {
    password: String,
    nonce: String,
    client_first_bare: String,
    server_signature: Option<[u8; 32]>,
}

impl ScramClient {
    pub fn new(password: &str) -> Self {
        let nonce_bytes: [u8; 18] = rand::random();
        Self::with_nonce(password, &B64.encode(nonce_bytes))
    }

    fn with_nonce(password: &str, nonce: &str) -> Self {
        Self {
            password: password.to_string(),
            nonce: nonce.to_string(),
            client_first_bare: format!("n=,r={nonce}"),
            server_signature: None,
        }
    }

    /// client-first-message; the user name is empty because PostgreSQL takes
    /// it from the startup packet.
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
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
        let without_proof = format!("c=biws,r={nonce}");
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
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), ScramError> {
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
        let mut c = ScramClient::with_nonce("pencil", "rOprNGfwEbeRWgbNEkqO");
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
        let mut c = ScramClient::with_nonce("pw", "abc");
        assert_eq!(
            c.client_final(b"r=xyz123,s=AAAA,i=4096"),
            Err(ScramError::NonceMismatch)
        );
    }
}

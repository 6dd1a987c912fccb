//! Signing keys of the dev issuer: generation, JWK publication, JWS signing.
//!
//! Keys live only in memory and die with the process; that is the point of a
//! development issuer, and why restarting it invalidates every token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{DevIdpError, SigningAlg};

/// One private key and the public JWK that lets verifiers check it.
pub(crate) struct SigningKey {
    pub(crate) kid: String,
    pub(crate) alg: SigningAlg,
    encoding: EncodingKey,
    jwk: Value,
}

impl SigningKey {
    /// Generates a fresh key. RSA takes a noticeable moment: call from a blocking thread.
    pub(crate) fn generate(alg: SigningAlg) -> Result<Self, DevIdpError> {
        let fail = |reason: String| DevIdpError::KeyGeneration { alg, reason };
        let (encoding, public) = match alg {
            SigningAlg::Rs256 => rsa_key().map_err(fail)?,
            SigningAlg::Es256 => p256_key().map_err(fail)?,
            SigningAlg::EdDsa => ed25519_key().map_err(fail)?,
        };
        let kid = thumbprint(&public);
        let mut jwk = public.to_value();
        if let Value::Object(map) = &mut jwk {
            map.insert("kid".into(), json!(kid));
            map.insert("alg".into(), json!(alg.to_string()));
            map.insert("use".into(), json!("sig"));
        }
        Ok(Self {
            kid,
            alg,
            encoding,
            jwk,
        })
    }

    pub(crate) fn jwk(&self) -> &Value {
        &self.jwk
    }

    /// The header the issuer puts on its tokens.
    pub(crate) fn header(&self) -> Value {
        json!({"alg": self.alg.to_string(), "typ": "JWT", "kid": self.kid})
    }

    /// Signs `header.claims` as a compact JWS. The header is taken as given,
    /// so tests can forge unusual ones with a genuine signature.
    pub(crate) fn sign(&self, header: &Value, claims: &Value) -> Result<String, DevIdpError> {
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let algorithm = match self.alg {
            SigningAlg::Rs256 => Algorithm::RS256,
            SigningAlg::Es256 => Algorithm::ES256,
            SigningAlg::EdDsa => Algorithm::EdDSA,
        };
        let signature =
            jsonwebtoken::crypto::sign(signing_input.as_bytes(), &self.encoding, algorithm)
                .map_err(|e| DevIdpError::Signing(e.to_string()))?;
        Ok(format!("{signing_input}.{signature}"))
    }
}

/// The public members of a JWK, from which both the JWK and its thumbprint derive.
enum PublicJwk {
    Rsa { n: String, e: String },
    P256 { x: String, y: String },
    Ed25519 { x: String },
}

impl PublicJwk {
    fn to_value(&self) -> Value {
        match self {
            Self::Rsa { n, e } => json!({"kty": "RSA", "n": n, "e": e}),
            Self::P256 { x, y } => json!({"kty": "EC", "crv": "P-256", "x": x, "y": y}),
            Self::Ed25519 { x } => json!({"kty": "OKP", "crv": "Ed25519", "x": x}),
        }
    }
}

/// RFC 7638 JWK thumbprint: a kid that changes exactly when the key does.
/// The canonical JSON is written by hand because member order is part of the spec.
fn thumbprint(public: &PublicJwk) -> String {
    let canonical = match public {
        PublicJwk::Rsa { n, e } => format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#),
        PublicJwk::P256 { x, y } => format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#),
        PublicJwk::Ed25519 { x } => format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#),
    };
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

fn rsa_key() -> Result<(EncodingKey, PublicJwk), String> {
    let private =
        rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).map_err(|e| e.to_string())?;
    let der = private.to_pkcs1_der().map_err(|e| e.to_string())?;
    let public = PublicJwk::Rsa {
        n: URL_SAFE_NO_PAD.encode(private.n().to_bytes_be()),
        e: URL_SAFE_NO_PAD.encode(private.e().to_bytes_be()),
    };
    Ok((EncodingKey::from_rsa_der(der.as_bytes()), public))
}

fn p256_key() -> Result<(EncodingKey, PublicJwk), String> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| "ring could not generate a P-256 key".to_string())?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|e| e.to_string())?;
    // Uncompressed SEC1 point: 0x04 || x (32 bytes) || y (32 bytes).
    let point = pair.public_key().as_ref();
    if point.len() != 65 {
        return Err(format!(
            "unexpected P-256 public key length {}",
            point.len()
        ));
    }
    let public = PublicJwk::P256 {
        x: URL_SAFE_NO_PAD.encode(&point[1..33]),
        y: URL_SAFE_NO_PAD.encode(&point[33..65]),
    };
    Ok((EncodingKey::from_ec_der(pkcs8.as_ref()), public))
}

fn ed25519_key() -> Result<(EncodingKey, PublicJwk), String> {
    let rng = SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| "ring could not generate an Ed25519 key".to_string())?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| e.to_string())?;
    let public = PublicJwk::Ed25519 {
        x: URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
    };
    Ok((EncodingKey::from_ed_der(pkcs8.as_ref()), public))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprint_matches_rfc7638_example() {
        // The RSA example key of RFC 7638 §3.1 and its published thumbprint.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let public = PublicJwk::Rsa {
            n: n.into(),
            e: "AQAB".into(),
        };
        assert_eq!(
            thumbprint(&public),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn generated_keys_publish_complete_jwks() {
        for alg in [SigningAlg::Es256, SigningAlg::EdDsa] {
            let key = SigningKey::generate(alg).expect("generate");
            let jwk = key.jwk();
            assert_eq!(jwk["kid"], key.kid.as_str());
            assert_eq!(jwk["alg"], alg.to_string());
            assert_eq!(jwk["use"], "sig");
        }
        let p256 = SigningKey::generate(SigningAlg::Es256).unwrap();
        assert!(p256.jwk()["x"].is_string() && p256.jwk()["y"].is_string());
        assert_ne!(
            p256.kid,
            SigningKey::generate(SigningAlg::Es256).unwrap().kid
        );
    }
}

//! Reading an issuer's JWK set into keys we can check signatures with.
//!
//! The algorithm of each key is decided here, from the key itself (`kty`,
//! `crv`, `alg`), and never from the token: a token may only choose among
//! keys, not how a key is used. Keys we cannot use (other algorithms,
//! encryption keys, short RSA moduli) are skipped one by one, so a single
//! exotic entry in an issuer's JWKS does not lock everybody out.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;

use crate::token::Alg;

/// ring refuses shorter moduli anyway; refusing at load time gives a clear log line.
const MIN_RSA_MODULUS_BYTES: usize = 2048 / 8;

/// One usable public key of an issuer.
#[derive(Debug, Clone)]
pub(crate) struct VerifyingKey {
    pub kid: Option<String>,
    pub alg: Alg,
    material: Material,
}

#[derive(Debug, Clone)]
enum Material {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed SEC1 point: 0x04 || x || y.
    P256 {
        point: Vec<u8>,
    },
    Ed25519 {
        x: Vec<u8>,
    },
}

impl VerifyingKey {
    /// True when `signature` over `message` was made by this key's private half.
    pub(crate) fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        match &self.material {
            Material::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, signature)
                .is_ok(),
            Material::P256 { point } => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, signature)
                    .is_ok()
            }
            Material::Ed25519 { x } => UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(message, signature)
                .is_ok(),
        }
    }
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

/// Parses a JWKS document; unusable keys are skipped (and logged), a
/// document that is not a JWKS at all is an error.
pub(crate) fn parse_jwks(body: &[u8], source: &str) -> Result<Vec<VerifyingKey>, String> {
    let set: JwkSet = serde_json::from_slice(body)
        .map_err(|e| format!("JWKS at {source} is not a JWK set: {e}"))?;
    let mut keys = Vec::with_capacity(set.keys.len());
    for value in set.keys {
        match serde_json::from_value::<RawJwk>(value)
            .map_err(|e| e.to_string())
            .and_then(to_key)
        {
            Ok(key) => keys.push(key),
            Err(reason) => tracing::debug!(jwks = source, reason, "skipping JWKS key"),
        }
    }
    Ok(keys)
}

fn to_key(jwk: RawJwk) -> Result<VerifyingKey, String> {
    if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
        return Err("key is not for signatures".into());
    }
    if jwk
        .key_ops
        .as_ref()
        .is_some_and(|ops| !ops.iter().any(|op| op == "verify"))
    {
        return Err("key_ops does not include verify".into());
    }
    let (alg, material) = match jwk.kty.as_str() {
        "RSA" => (Alg::Rs256, rsa_material(&jwk)?),
        "EC" => (Alg::Es256, p256_material(&jwk)?),
        "OKP" => (Alg::EdDsa, ed25519_material(&jwk)?),
        other => return Err(format!("unsupported key type {other:?}")),
    };
    // The key's declared alg, when present, must agree with what its type implies;
    // an RSA key marked RS512 or PS256 is not one we will use for RS256.
    if let Some(declared) = jwk.alg.as_deref() {
        if Alg::from_name(declared) != Some(alg) {
            return Err(format!("unsupported key algorithm {declared:?}"));
        }
    }
    Ok(VerifyingKey {
        kid: jwk.kid,
        alg,
        material,
    })
}

fn rsa_material(jwk: &RawJwk) -> Result<Material, String> {
    let n = strip_leading_zeros(b64_field(&jwk.n, "n")?);
    let e = strip_leading_zeros(b64_field(&jwk.e, "e")?);
    if n.len() < MIN_RSA_MODULUS_BYTES {
        return Err(format!("RSA key of {} bits is too short", n.len() * 8));
    }
    Ok(Material::Rsa { n, e })
}

fn p256_material(jwk: &RawJwk) -> Result<Material, String> {
    require_curve(jwk, "P-256")?;
    let x = b64_field(&jwk.x, "x")?;
    let y = b64_field(&jwk.y, "y")?;
    if x.len() != 32 || y.len() != 32 {
        return Err("P-256 coordinates must be 32 bytes".into());
    }
    let mut point = Vec::with_capacity(65);
    point.push(0x04);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    Ok(Material::P256 { point })
}

fn ed25519_material(jwk: &RawJwk) -> Result<Material, String> {
    require_curve(jwk, "Ed25519")?;
    let x = b64_field(&jwk.x, "x")?;
    if x.len() != 32 {
        return Err("Ed25519 public key must be 32 bytes".into());
    }
    Ok(Material::Ed25519 { x })
}

fn require_curve(jwk: &RawJwk, curve: &str) -> Result<(), String> {
    match jwk.crv.as_deref() {
        Some(crv) if crv == curve => Ok(()),
        other => Err(format!("unsupported {} curve {other:?}", jwk.kty)),
    }
}

fn b64_field(value: &Option<String>, name: &str) -> Result<Vec<u8>, String> {
    let text = value
        .as_deref()
        .ok_or_else(|| format!("missing {name:?}"))?;
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| format!("{name:?} is not base64url"))
}

/// ring wants minimal big-endian integers; some issuers pad `n` with a zero byte.
fn strip_leading_zeros(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    bytes.drain(..zeros);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn parse(keys: serde_json::Value) -> Vec<VerifyingKey> {
        parse_jwks(json!({ "keys": keys }).to_string().as_bytes(), "test").expect("jwks")
    }

    #[test]
    fn picks_algorithm_from_key_type() {
        let keys = parse(json!([
            {"kty": "RSA", "kid": "r", "n": b64(&[0xab; 256]), "e": "AQAB"},
            {"kty": "EC", "kid": "e", "crv": "P-256", "x": b64(&[1; 32]), "y": b64(&[2; 32]), "alg": "ES256"},
            {"kty": "OKP", "kid": "o", "crv": "Ed25519", "x": b64(&[3; 32]), "use": "sig"},
        ]));
        let algs: Vec<_> = keys.iter().map(|k| (k.kid.as_deref(), k.alg)).collect();
        assert_eq!(
            algs,
            [
                (Some("r"), Alg::Rs256),
                (Some("e"), Alg::Es256),
                (Some("o"), Alg::EdDsa)
            ]
        );
    }

    #[test]
    fn skips_keys_we_cannot_use() {
        let keys = parse(json!([
            {"kty": "RSA", "n": b64(&[0xab; 128]), "e": "AQAB"},
            {"kty": "RSA", "n": b64(&[0xab; 256]), "e": "AQAB", "alg": "PS256"},
            {"kty": "RSA", "n": b64(&[0xab; 256]), "e": "AQAB", "use": "enc"},
            {"kty": "EC", "crv": "P-384", "x": b64(&[1; 48]), "y": b64(&[2; 48])},
            {"kty": "OKP", "crv": "X25519", "x": b64(&[3; 32])},
            {"kty": "oct", "k": "c2VjcmV0"},
            {"kty": "OKP", "crv": "Ed25519", "x": "***"},
            "not an object",
        ]));
        assert!(keys.is_empty(), "{keys:?}");
    }

    #[test]
    fn refuses_documents_that_are_not_jwks() {
        assert!(parse_jwks(b"{}", "test").is_err());
        assert!(parse_jwks(b"<html>", "test").is_err());
    }

    #[test]
    fn strips_zero_padding_of_modulus() {
        let mut n = vec![0u8];
        n.extend_from_slice(&[0xab; 256]);
        let keys = parse(json!([{"kty": "RSA", "n": b64(&n), "e": "AQAB"}]));
        match &keys[0].material {
            Material::Rsa { n, .. } => assert_eq!(n.len(), 256),
            other => panic!("unexpected {other:?}"),
        }
    }
}

//! End-to-end verifier tests against a real dev issuer on a loopback port.

use std::time::{Duration, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::*;
use crate::client::{request_token, TokenRequest};
use crate::dev_idp::{self, DevIdpOptions, SigningAlg, SigningKey};
use crate::test_util::{forge, now, TestIdp};

fn options(min_refetch_interval: Duration) -> VerifierOptions {
    VerifierOptions {
        min_refetch_interval,
        ..VerifierOptions::default()
    }
}

fn verifier_for(idp: &TestIdp) -> Verifier {
    Verifier::new(&[idp.config()])
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

/// Through the public surface only: `dev_idp::serve`, `client::request_token`, `Verifier`.
async fn verifies_real_tokens(alg: SigningAlg) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let opts = DevIdpOptions {
        issuer: issuer.clone(),
        alg,
    };
    let server = tokio::spawn(dev_idp::serve(listener, opts));

    let req = TokenRequest {
        sub: "repo:acme/shop:ref:refs/heads/main".into(),
        groups: vec!["sre".into(), "ci".into()],
        audience: "portcullis".into(),
        ttl: Duration::from_secs(120),
    };
    let token = request_token(&issuer, &req).await.expect("token");
    let principal = Verifier::new(&[TestIdp::config_for(&issuer)])
        .verify(&token)
        .await
        .expect("verifies");

    assert_eq!(principal.name, req.sub);
    assert_eq!(principal.groups, ["sre", "ci"]);
    assert_eq!(principal.issuer, issuer);
    assert_eq!(principal.token_fingerprint, crate::fingerprint(&token));
    assert!(principal.claims["jti"].is_string());
    let exp = principal
        .expires_at
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!((now() + 110..=now() + 121).contains(&exp), "exp {exp}");
    server.abort();
}

#[tokio::test]
async fn verifies_rs256_tokens() {
    verifies_real_tokens(SigningAlg::Rs256).await;
}

#[tokio::test]
async fn verifies_es256_tokens() {
    verifies_real_tokens(SigningAlg::Es256).await;
}

#[tokio::test]
async fn verifies_eddsa_tokens() {
    verifies_real_tokens(SigningAlg::EdDsa).await;
}

#[tokio::test]
async fn refuses_alg_none() {
    let idp = TestIdp::start(SigningAlg::EdDsa).await;
    let claims = idp.claims("mallory");
    for signature in [&b""[..], b"anything"] {
        let token = forge(&json!({"alg": "none", "typ": "JWT"}), &claims, signature);
        let err = verifier_for(&idp).verify(&token).await.unwrap_err();
        assert!(
            matches!(err, AuthError::UnsupportedAlgorithm { ref alg } if alg == "none"),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn refuses_hs256_signed_with_the_public_key() {
    let idp = TestIdp::start(SigningAlg::Rs256).await;
    let key = idp.idp.current_key();
    // The classic confusion attack: HMAC keyed with material the attacker can
    // download, hoping the verifier treats the RSA public key as an HMAC secret.
    let public = serde_json::to_vec(key.jwk()).unwrap();
    let modulus = key.jwk()["n"].as_str().unwrap().as_bytes().to_vec();
    for secret in [public, modulus] {
        let header = json!({"alg": "HS256", "typ": "JWT", "kid": key.kid});
        let token = hmac_token(&header, &idp.claims("mallory"), &secret);
        let err = verifier_for(&idp).verify(&token).await.unwrap_err();
        assert!(
            matches!(err, AuthError::UnsupportedAlgorithm { ref alg } if alg == "HS256"),
            "{err:?}"
        );
    }
    assert_eq!(
        idp.jwks_requests(),
        0,
        "refused before any key was looked up"
    );
}

fn hmac_token(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let unsigned = forge(header, claims, b"");
    let signing_input = unsigned.trim_end_matches('.');
    let signature = jsonwebtoken::crypto::sign(
        signing_input.as_bytes(),
        &EncodingKey::from_secret(secret).unwrap(),
        Algorithm::HS256,
    )
    .unwrap();
    format!("{signing_input}.{signature}")
}

#[tokio::test]
async fn refuses_untrusted_issuer() {
    let idp = TestIdp::start(SigningAlg::Es256).await;
    let claims = with(idp.claims("alice"), "iss", json!("https://evil.example"));
    let err = verifier_for(&idp)
        .verify(&idp.sign(&claims))
        .await
        .unwrap_err();
    assert!(
        matches!(err, AuthError::UnknownIssuer { ref issuer } if issuer == "https://evil.example")
    );
    assert_eq!(
        err.to_string(),
        "token issuer \"https://evil.example\" is not trusted"
    );
}

#[tokio::test]
async fn refuses_wrong_audience() {
    let idp = TestIdp::start(SigningAlg::Es256).await;
    let token = idp.token("alice", "some-other-service").await;
    let err = verifier_for(&idp).verify(&token).await.unwrap_err();
    assert!(matches!(err, AuthError::WrongAudience { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "token audience does not include \"portcullis\""
    );
}

#[tokio::test]
async fn refuses_token_expired_beyond_leeway() {
    let idp = TestIdp::start(SigningAlg::EdDsa).await;
    let claims = with(idp.claims("alice"), "exp", json!(now() - 31));
    let err = verifier_for(&idp)
        .verify(&idp.sign(&claims))
        .await
        .unwrap_err();
    assert!(matches!(err, AuthError::Expired { .. }), "{err:?}");
    assert!(err.to_string().starts_with("token expired at 20"), "{err}");
}

#[tokio::test]
async fn accepts_token_expired_within_leeway() {
    let idp = TestIdp::start(SigningAlg::EdDsa).await;
    let claims = with(idp.claims("alice"), "exp", json!(now() - 10));
    let principal = verifier_for(&idp)
        .verify(&idp.sign(&claims))
        .await
        .expect("within leeway");
    assert_eq!(principal.name, "alice");
}

#[tokio::test]
async fn refuses_token_not_yet_valid() {
    let idp = TestIdp::start(SigningAlg::EdDsa).await;
    let claims = with(idp.claims("alice"), "nbf", json!(now() + 120));
    let err = verifier_for(&idp)
        .verify(&idp.sign(&claims))
        .await
        .unwrap_err();
    assert!(
        matches!(err, AuthError::NotYetValid { claim: "nbf", .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn refuses_key_the_issuer_does_not_publish() {
    let idp = TestIdp::start(SigningAlg::Es256).await;
    let verifier = verifier_for(&idp);
    let stranger = SigningKey::generate(SigningAlg::Es256).unwrap();
    let header = json!({"alg": "ES256", "typ": "JWT", "kid": "not-published"});
    let token = stranger.sign(&header, &idp.claims("mallory")).unwrap();
    let err = verifier.verify(&token).await.unwrap_err();
    assert!(
        matches!(err, AuthError::UnknownKey { kid: Some(ref kid), .. } if kid == "not-published"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "unknown signing key id \"not-published\" for issuer {}",
            idp.url
        )
    );
}

#[tokio::test]
async fn refuses_token_signed_by_another_key_under_a_published_kid() {
    let idp = TestIdp::start(SigningAlg::Es256).await;
    let stranger = SigningKey::generate(SigningAlg::Es256).unwrap();
    let header = idp.idp.current_key().header();
    let token = stranger.sign(&header, &idp.claims("mallory")).unwrap();
    let err = verifier_for(&idp).verify(&token).await.unwrap_err();
    assert!(matches!(err, AuthError::BadSignature), "{err:?}");
}

#[tokio::test]
async fn refuses_tampered_claims() {
    let idp = TestIdp::start(SigningAlg::EdDsa).await;
    let token = idp.sign(&idp.claims("alice"));
    let parts: Vec<&str> = token.split('.').collect();
    let forged_claims = URL_SAFE_NO_PAD.encode(idp.claims("admin").to_string());
    let tampered = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
    let err = verifier_for(&idp).verify(&tampered).await.unwrap_err();
    assert!(matches!(err, AuthError::BadSignature), "{err:?}");
}

#[tokio::test]
async fn refuses_token_alg_that_differs_from_the_key() {
    let idp = TestIdp::start(SigningAlg::EdDsa).await;
    let kid = idp.idp.current_key().kid.clone();
    let header = json!({"alg": "ES256", "kid": kid});
    let token = forge(&header, &idp.claims("mallory"), &[1; 64]);
    let err = verifier_for(&idp).verify(&token).await.unwrap_err();
    assert!(
        matches!(
            err,
            AuthError::KeyAlgorithmMismatch {
                token_alg: "ES256",
                key_alg: "EdDSA",
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn token_without_kid_is_checked_against_keys_of_its_algorithm() {
    let idp = TestIdp::start(SigningAlg::EdDsa).await;
    let verifier = verifier_for(&idp);
    let token = idp.sign_with_header(&json!({"alg": "EdDSA"}), &idp.claims("alice"));
    assert_eq!(verifier.verify(&token).await.expect("no kid").name, "alice");

    let other_alg = forge(&json!({"alg": "ES256"}), &idp.claims("alice"), &[1; 64]);
    let err = verifier.verify(&other_alg).await.unwrap_err();
    assert!(
        matches!(err, AuthError::UnknownKey { kid: None, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn unknown_kid_refetch_is_rate_limited() {
    let idp = TestIdp::start(SigningAlg::Es256).await;
    let verifier = Verifier::with_options(&[idp.config()], options(Duration::from_secs(1)));
    verifier
        .verify(&idp.token("alice", "portcullis").await)
        .await
        .expect("valid");
    assert_eq!(idp.jwks_requests(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let stranger = SigningKey::generate(SigningAlg::Es256).unwrap();
    for n in 0..5 {
        let header = json!({"alg": "ES256", "kid": format!("random-{n}")});
        let token = stranger.sign(&header, &idp.claims("mallory")).unwrap();
        assert!(matches!(
            verifier.verify(&token).await,
            Err(AuthError::UnknownKey { .. })
        ));
    }
    assert_eq!(
        idp.jwks_requests(),
        2,
        "one refetch for five unknown kids in one interval"
    );
}

#[tokio::test]
async fn concurrent_first_verifications_fetch_keys_once() {
    let idp = TestIdp::start(SigningAlg::EdDsa).await;
    // No rate limit: only single-flight can keep this to one fetch.
    let verifier = Verifier::with_options(&[idp.config()], options(Duration::ZERO));
    let tasks: Vec<_> = (0..32)
        .map(|n| {
            let verifier = verifier.clone();
            let token = idp.sign(&idp.claims(&format!("user-{n}")));
            tokio::spawn(async move { verifier.verify(&token).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().expect("valid");
    }
    assert_eq!(idp.discovery_requests(), 1);
    assert_eq!(idp.jwks_requests(), 1);
}

#[tokio::test]
async fn rotated_key_is_picked_up_by_refetch() {
    let idp = TestIdp::start(SigningAlg::Es256).await;
    let verifier = Verifier::with_options(&[idp.config()], options(Duration::ZERO));
    let before = idp.token("alice", "portcullis").await;
    verifier.verify(&before).await.expect("old key");

    let old_kid = idp.idp.current_key().kid.clone();
    let rotated: Value = reqwest::Client::new()
        .post(format!("{}/rotate", idp.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(rotated["kid"], old_kid.as_str());

    let after = idp.token("bob", "portcullis").await;
    assert_eq!(verifier.verify(&after).await.expect("new key").name, "bob");
    assert_eq!(idp.jwks_requests(), 2);
    let old_again = idp.sign_with_header(
        &json!({"alg": "ES256", "kid": old_kid}),
        &idp.claims("carol"),
    );
    assert!(
        matches!(
            verifier.verify(&old_again).await,
            Err(AuthError::BadSignature)
        ),
        "old kid still published, but the token was signed with the new key"
    );
}

#[tokio::test]
async fn rotated_key_waits_for_the_refetch_interval() {
    let idp = TestIdp::start(SigningAlg::EdDsa).await;
    let verifier = Verifier::with_options(&[idp.config()], options(Duration::from_secs(1)));
    verifier
        .verify(&idp.sign(&idp.claims("alice")))
        .await
        .expect("valid");
    idp.idp.rotate().await.unwrap();
    let token = idp.sign(&idp.claims("bob"));

    let too_soon = verifier.verify(&token).await.unwrap_err();
    assert!(
        matches!(too_soon, AuthError::UnknownKey { .. }),
        "{too_soon:?}"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        verifier.verify(&token).await.expect("after interval").name,
        "bob"
    );
}

#[tokio::test]
async fn refuses_malformed_input_without_touching_the_issuer() {
    let idp = TestIdp::start(SigningAlg::EdDsa).await;
    let verifier = verifier_for(&idp);
    let huge = "a".repeat(1024 * 1024);
    let inputs = ["", "abc.def", "!!!.###.$$$", "eyJhbGciOiJ.eyJ.sig", &huge];
    for input in inputs {
        let err = verifier.verify(input).await.unwrap_err();
        assert!(
            matches!(err, AuthError::Malformed { .. }),
            "{:.30}: {err:?}",
            input
        );
    }
    assert_eq!(idp.jwks_requests() + idp.discovery_requests(), 0);
}

#[tokio::test]
async fn refuses_token_without_principal_claim() {
    let idp = TestIdp::start(SigningAlg::EdDsa).await;
    let mut config = idp.config();
    config.principal_claim = "email".into();
    let err = Verifier::new(&[config])
        .verify(&idp.sign(&idp.claims("alice")))
        .await
        .unwrap_err();
    assert!(
        matches!(err, AuthError::MissingPrincipalClaim { ref claim } if claim == "email"),
        "{err:?}"
    );
}

#[tokio::test]
async fn unreachable_issuer_is_unavailable() {
    let idp = TestIdp::start(SigningAlg::EdDsa).await;
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let config = TestIdp::config_for(&closed);
    let verifier = Verifier::new(&[config]);
    let token = idp.sign(&with(idp.claims("alice"), "iss", json!(closed)));
    for _ in 0..2 {
        let err = verifier.verify(&token).await.unwrap_err();
        assert!(
            matches!(err, AuthError::IssuerUnavailable { .. }),
            "{err:?}"
        );
        assert!(err.caused_by_issuer());
        assert!(err.to_string().contains(&closed), "{err}");
    }
}

#[tokio::test]
async fn discovery_must_name_the_configured_issuer() {
    let idp = TestIdp::start(SigningAlg::EdDsa).await;
    let slashed = format!("{}/", idp.url);
    let verifier = Verifier::new(&[TestIdp::config_for(&slashed)]);
    let token = idp.sign(&with(idp.claims("alice"), "iss", json!(slashed)));
    let err = verifier.verify(&token).await.unwrap_err();
    assert!(
        matches!(err, AuthError::IssuerUnavailable { ref reason, .. } if reason.contains("names issuer")),
        "{err:?}"
    );
    assert_eq!(
        idp.discovery_requests(),
        1,
        "trailing slash still finds the document"
    );
}

#[tokio::test]
async fn configured_jwks_uri_skips_discovery() {
    let idp = TestIdp::start(SigningAlg::EdDsa).await;
    let mut config = idp.config();
    config.jwks_uri = Some(format!("{}/jwks", idp.url));
    Verifier::new(&[config])
        .verify(&idp.sign(&idp.claims("alice")))
        .await
        .expect("valid");
    assert_eq!((idp.discovery_requests(), idp.jwks_requests()), (0, 1));
}

#[tokio::test]
async fn groups_claim_as_string_or_array() {
    let idp = TestIdp::start(SigningAlg::EdDsa).await;
    let verifier = verifier_for(&idp);
    let single = idp.sign(&with(idp.claims("alice"), "groups", json!("sre-oncall")));
    assert_eq!(
        verifier.verify(&single).await.unwrap().groups,
        ["sre-oncall"]
    );
    let list = idp.sign(&with(idp.claims("bob"), "groups", json!(["a", "b"])));
    assert_eq!(verifier.verify(&list).await.unwrap().groups, ["a", "b"]);
    let none = idp.sign(&idp.claims("carol"));
    assert!(verifier.verify(&none).await.unwrap().groups.is_empty());
}

#[tokio::test]
async fn accepts_rfc9068_access_tokens() {
    let idp = TestIdp::start(SigningAlg::Es256).await;
    let kid = idp.idp.current_key().kid.clone();
    let token = idp.sign_with_header(
        &json!({"alg": "ES256", "typ": "at+jwt", "kid": kid}),
        &idp.claims("svc"),
    );
    assert_eq!(
        verifier_for(&idp)
            .verify(&token)
            .await
            .expect("at+jwt")
            .name,
        "svc"
    );
}

#[tokio::test]
async fn repeated_verification_is_served_from_cache() {
    let idp = TestIdp::start(SigningAlg::EdDsa).await;
    let verifier = verifier_for(&idp);
    let token = idp.sign(&idp.claims("alice"));
    let first = verifier.verify(&token).await.unwrap();
    let second = verifier.clone().verify(&token).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(verifier.signature_checks(), 1);

    let other = idp.sign(&idp.claims("bob"));
    verifier.verify(&other).await.unwrap();
    assert_eq!(
        verifier.signature_checks(),
        2,
        "a different token is checked"
    );
}

#[tokio::test]
async fn error_messages_never_contain_the_token() {
    let idp = TestIdp::start(SigningAlg::EdDsa).await;
    let verifier = verifier_for(&idp);
    let tokens = [
        idp.sign(&with(idp.claims("a"), "exp", json!(now() - 3600))),
        idp.sign(&with(idp.claims("a"), "aud", json!("x"))),
        idp.sign(&with(idp.claims("a"), "iss", json!("https://evil.example"))),
        forge(&json!({"alg": "none"}), &idp.claims("a"), b""),
    ];
    for token in tokens {
        let err = verifier.verify(&token).await.unwrap_err();
        for part in token.split('.').filter(|p| p.len() > 8) {
            assert!(!err.to_string().contains(part), "{err}");
            assert!(!format!("{err:?}").contains(part), "{err:?}");
        }
    }
}

#[tokio::test]
async fn old_keys_are_refreshed_but_kept_when_the_issuer_is_down() {
    use axum::http::StatusCode;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let idp = TestIdp::start(SigningAlg::EdDsa).await;
    // A JWKS endpoint that answers twice, then fails like an issuer in an outage.
    let jwks = idp.idp.jwks();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let app = axum::Router::new().route(
        "/jwks",
        axum::routing::get(move || {
            let jwks = jwks.clone();
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    0 | 1 => Ok(axum::Json(jwks)),
                    _ => Err(StatusCode::SERVICE_UNAVAILABLE),
                }
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = idp.config();
    config.jwks_uri = Some(format!("http://{}/jwks", listener.local_addr().unwrap()));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let options = VerifierOptions {
        min_refetch_interval: Duration::ZERO,
        max_key_age: Duration::ZERO,
        ..VerifierOptions::default()
    };
    let verifier = Verifier::with_options(&[config], options);
    for (n, sub) in ["alice", "bob", "carol", "dave"].iter().enumerate() {
        let principal = verifier.verify(&idp.sign(&idp.claims(sub))).await;
        assert_eq!(principal.expect("old keys still used").name, *sub);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            n + 1,
            "every use of aged keys refreshes"
        );
    }
    server.abort();
}

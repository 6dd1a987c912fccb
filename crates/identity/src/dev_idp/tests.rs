//! The dev issuer over HTTP, as any OIDC client sees it.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

use super::*;
use crate::client::{request_token, ClientError, TokenRequest};
use crate::test_util::TestIdp;

fn decode_part(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).expect("part");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("b64")).expect("json")
}

async fn get_json(url: &str) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

async fn post_json(url: &str, body: &Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[test]
fn signing_alg_names_round_trip() {
    for name in ["RS256", "ES256", "EdDSA"] {
        assert_eq!(name.parse::<SigningAlg>().unwrap().to_string(), name);
    }
    for bad in ["HS256", "none", "rs256", ""] {
        assert!(matches!(
            bad.parse::<SigningAlg>(),
            Err(DevIdpError::UnknownAlgorithm(_))
        ));
    }
}

#[tokio::test]
async fn discovery_document_points_at_working_endpoints() {
    let idp = TestIdp::start(SigningAlg::EdDsa).await;
    let doc = get_json(&format!("{}/.well-known/openid-configuration", idp.url)).await;
    assert_eq!(doc["issuer"], idp.url.as_str());
    assert_eq!(doc["jwks_uri"], format!("{}/jwks", idp.url));
    assert_eq!(doc["token_endpoint"], format!("{}/token", idp.url));
    assert_eq!(
        doc["id_token_signing_alg_values_supported"],
        json!(["EdDSA"])
    );
    assert!(doc["grant_types_supported"].is_array());

    let jwks = get_json(doc["jwks_uri"].as_str().unwrap()).await;
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    let (status, _) = post_json(
        doc["token_endpoint"].as_str().unwrap(),
        &json!({"sub": "a"}),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn jwks_publishes_public_keys_of_each_type() {
    let cases = [
        (SigningAlg::Rs256, "RSA", &["n", "e"][..]),
        (SigningAlg::Es256, "EC", &["crv", "x", "y"][..]),
        (SigningAlg::EdDsa, "OKP", &["crv", "x"][..]),
    ];
    for (alg, kty, members) in cases {
        let idp = TestIdp::start(alg).await;
        let jwks = get_json(&format!("{}/jwks", idp.url)).await;
        let key = &jwks["keys"][0];
        assert_eq!(key["kty"], kty);
        assert_eq!(key["alg"], alg.to_string());
        assert_eq!(key["use"], "sig");
        assert_eq!(key["kid"], idp.idp.current_key().kid.as_str());
        for member in members {
            assert!(key[member].is_string(), "{alg}: {member} missing");
        }
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(
                key.get(private).is_none(),
                "{alg}: private member {private} published"
            );
        }
    }
}

#[tokio::test]
async fn token_endpoint_mints_complete_tokens_from_json() {
    let idp = TestIdp::start(SigningAlg::Es256).await;
    let body = json!({"sub": "ci", "groups": ["sre", "dev"], "audience": "k8s", "ttl_seconds": 90});
    let (status, answer) = post_json(&format!("{}/token", idp.url), &body).await;
    assert_eq!(status, 200);
    assert_eq!(answer["token_type"], "Bearer");
    assert_eq!(answer["expires_in"], 90);

    let token = answer["access_token"].as_str().unwrap();
    let header = decode_part(token, 0);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["kid"], idp.idp.current_key().kid.as_str());
    let claims = decode_part(token, 1);
    assert_eq!(claims["iss"], idp.url.as_str());
    assert_eq!(claims["sub"], "ci");
    assert_eq!(claims["aud"], "k8s");
    assert_eq!(claims["groups"], json!(["sre", "dev"]));
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        90
    );
    assert_eq!(claims["nbf"], claims["iat"]);
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));
}

#[tokio::test]
async fn token_endpoint_accepts_forms_with_defaults() {
    let idp = TestIdp::start(SigningAlg::EdDsa).await;
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/token", idp.url))
        .form(&[("sub", "alice"), ("groups", "a,b")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["expires_in"], 600);
    let claims = decode_part(answer["access_token"].as_str().unwrap(), 1);
    assert_eq!(claims["aud"], "portcullis");
    assert_eq!(claims["groups"], json!(["a", "b"]));
}

#[tokio::test]
async fn token_endpoint_refuses_bad_requests_with_json_errors() {
    let idp = TestIdp::start(SigningAlg::EdDsa).await;
    let url = format!("{}/token", idp.url);
    for body in [
        json!({}),
        json!({"sub": "a", "ttl_seconds": 0}),
        json!({"sub": "a", "groups": 3}),
    ] {
        let (status, answer) = post_json(&url, &body).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(answer["error"], "invalid_request");
        assert!(answer["error_description"].is_string());
    }
    let response = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
}

#[tokio::test]
async fn rotate_publishes_new_key_beside_the_old() {
    let idp = TestIdp::start(SigningAlg::EdDsa).await;
    let old_kid = idp.idp.current_key().kid.clone();
    let (status, rotated) = post_json(&format!("{}/rotate", idp.url), &json!({})).await;
    assert_eq!(status, 200);
    let new_kid = rotated["kid"].as_str().unwrap().to_string();
    assert_ne!(new_kid, old_kid);

    let jwks = get_json(&format!("{}/jwks", idp.url)).await;
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["kid"].as_str())
        .collect();
    assert_eq!(kids, [old_kid.as_str(), new_kid.as_str()]);
    let token = idp.token("alice", "portcullis").await;
    assert_eq!(decode_part(&token, 0)["kid"], new_kid.as_str());
}

#[tokio::test]
async fn client_reports_refusals_and_unreachable_issuers() {
    let idp = TestIdp::start(SigningAlg::EdDsa).await;
    let req = TokenRequest {
        sub: String::new(),
        groups: vec![],
        audience: "portcullis".into(),
        ttl: Duration::from_secs(60),
    };
    match request_token(&idp.url, &req).await {
        Err(ClientError::Refused {
            status: 400,
            message,
            ..
        }) => assert!(message.contains("sub"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }

    let closed = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let req = TokenRequest {
        sub: "a".into(),
        ..req
    };
    assert!(matches!(
        request_token(&closed, &req).await,
        Err(ClientError::Unreachable { .. })
    ));
}

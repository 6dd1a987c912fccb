//! Tokens from a third-party OIDC issuer, not our own dev-idp: the npm
//! `oidc-provider` (`tests/oidc-provider/issuer.mjs`), which mints RFC 9068
//! `at+jwt` access tokens for the client_credentials grant, the way a
//! workload gets a token from a real authorization server. Needs
//! `./scripts/install-deps` (it runs `npm ci` there).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;

use test_support::{free_port, run, wait_for_port_within, Process};

use crate::env::{Env, Options, TIMEOUT};

const FIXTURE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oidc-provider");
/// The one client `issuer.mjs` registers, and its test-fixture secret.
const CLIENT_ID: &str = "ci-client";
const CLIENT_SECRET: &str = "ci-client-secret-test-fixture-only";
/// The resource indicator whose tokens carry `aud: portcullis`.
const PORTCULLIS_RESOURCE: &str = "urn:portcullis";
/// A resource the issuer knows whose tokens are for someone else (`aud: other-service`).
const OTHER_RESOURCE: &str = "urn:other-service";

const POLICIES: &str = r#"
  - name: ci-client-reads
    match: { principals: ["ci-client"] }
    connection: app-db
    allow: [read]
"#;

/// `node issuer.mjs PORT ALG` on a free port, killed on drop.
struct NodeIssuer {
    url: String,
    process: Process,
}

impl NodeIssuer {
    fn start(alg: &str) -> NodeIssuer {
        let dir = Path::new(FIXTURE_DIR);
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "the oidc-provider npm package is not installed in {FIXTURE_DIR}: run ./scripts/install-deps"
        );
        let port = free_port();
        let mut cmd = Command::new("node");
        cmd.current_dir(dir)
            .args(["issuer.mjs", &port.to_string(), alg]);
        let process = Process::spawn(cmd, "oidc-provider");
        // Node loads oidc-provider's package tree and makes a key before it
        // listens: on a fresh, busy CI machine that once took over 30 s.
        wait_for_port_within(
            &format!("127.0.0.1:{port}"),
            Some(&process),
            Duration::from_secs(120),
        );
        NodeIssuer {
            url: format!("http://127.0.0.1:{port}"),
            process,
        }
    }

    /// The token endpoint's JSON answer to a client_credentials request,
    /// with `resource` as the RFC 8707 resource indicator if given.
    fn token_response(&self, resource: Option<&str>) -> Value {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--noproxy", "*", "--max-time", "20"])
            .args(["-u", &format!("{CLIENT_ID}:{CLIENT_SECRET}")])
            .args(["-d", "grant_type=client_credentials"]);
        if let Some(resource) = resource {
            cmd.args(["--data-urlencode", &format!("resource={resource}")]);
        }
        cmd.arg(format!("{}/token", self.url));
        let out = run(&mut cmd, TIMEOUT);
        assert!(
            out.success(),
            "curl to the token endpoint failed: {}\n{}",
            out.stderr,
            self.process.log()
        );
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "token endpoint answered non-JSON ({e}): {}\n{}",
                out.stdout,
                self.process.log()
            )
        })
    }

    fn token(&self, resource: Option<&str>) -> String {
        let response = self.token_response(resource);
        match response["access_token"].as_str() {
            Some(token) => token.to_string(),
            None => panic!(
                "no access_token for resource {resource:?}: {response}\n{}",
                self.process.log()
            ),
        }
    }
}

/// The (unverified) header and claims of a compact JWS.
fn decode(token: &str) -> (Value, Value) {
    let part = |b64: &str| -> Value {
        let bytes = URL_SAFE_NO_PAD.decode(b64).expect("base64url JWT part");
        serde_json::from_slice(&bytes).expect("JSON JWT part")
    };
    let mut parts = token.split('.');
    let header = part(parts.next().expect("header"));
    let claims = part(parts.next().expect("payload"));
    (header, claims)
}

fn gateway_trusting(issuer: &NodeIssuer, principal_claim: &'static str) -> Env {
    Env::with(Options {
        issuer: Some(issuer.url.clone()),
        principal_claim,
        policies: POLICIES.to_string(),
        ..Options::default()
    })
}

#[test]
fn oidc_provider_access_token_logs_in_and_wrong_audience_is_refused() {
    let issuer = NodeIssuer::start("ES256");
    // Principal from `client_id` (RFC 9068's claim naming the client), so a
    // non-default principal_claim is exercised too.
    let env = gateway_trusting(&issuer, "client_id");

    let token = issuer.token(Some(PORTCULLIS_RESOURCE));
    // What oidc-provider sends, so a change on its side fails here, plainly.
    let (header, claims) = decode(&token);
    assert_eq!(header["typ"], "at+jwt", "{header}");
    assert_eq!(header["alg"], "ES256", "{header}");
    assert_eq!(claims["iss"], issuer.url.as_str(), "{claims}");
    assert_eq!(claims["aud"], "portcullis", "{claims}");
    assert_eq!(claims["client_id"], CLIENT_ID, "{claims}");
    assert_eq!(claims["sub"], CLIENT_ID, "{claims}");

    let out = env.psql(&token, "select count(*) from items;");
    assert!(out.success(), "{}\n{}", out.stderr, env.gateway_log());
    assert_eq!(out.stdout.trim(), "10");
    let stmt = env.wait_for_record(|r| r["kind"] == "statement");
    assert_eq!(stmt["principal"], CLIENT_ID);
    assert_eq!(stmt["decision"], "allow");
    assert_eq!(stmt["policy"], "ci-client-reads");
    assert_eq!(stmt["detail"]["text"], "select count(*) from items;");

    // Genuine, signed by the same issuer and key, for the same client, but
    // minted for another resource server.
    let other = issuer.token(Some(OTHER_RESOURCE));
    assert_eq!(decode(&other).1["aud"], "other-service");
    let out = env.psql(&other, "select 1;");
    assert!(!out.success(), "a token for another audience was accepted");
    assert!(
        out.stderr
            .contains(r#"token audience does not include "portcullis""#),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(&other), "the token must not be echoed");
    let refused = env.wait_for_record(|r| {
        r["kind"] == "connection_attempt"
            && r["decision"] == "deny"
            && r["detail"]["reason"]
                .as_str()
                .is_some_and(|reason| reason.contains("audience"))
    });
    assert!(refused["principal"].is_null(), "{refused}");

    // Without a resource indicator oidc-provider hands out an opaque token,
    // which only it can introspect: refused as not a JWT.
    let opaque = issuer.token(None);
    let out = env.psql(&opaque, "select 1;");
    assert!(!out.success(), "an opaque token was accepted");
    assert!(out.stderr.contains("not a JWT"), "{}", out.stderr);

    // An unknown resource is the issuer's refusal, before the gateway sees anything.
    assert_eq!(
        issuer.token_response(Some("urn:unknown"))["error"],
        "invalid_target"
    );
}

#[test]
fn oidc_provider_rs256_tokens_name_the_client_in_sub() {
    let issuer = NodeIssuer::start("RS256");
    let env = gateway_trusting(&issuer, "sub");
    let token = issuer.token(Some(PORTCULLIS_RESOURCE));
    assert_eq!(decode(&token).0["alg"], "RS256");
    let out = env.psql(&token, "select 'via rs256';");
    assert!(out.success(), "{}\n{}", out.stderr, env.gateway_log());
    assert_eq!(out.stdout.trim(), "via rs256");
    let stmt = env.wait_for_record(|r| r["kind"] == "statement");
    assert_eq!(stmt["principal"], CLIENT_ID);
}

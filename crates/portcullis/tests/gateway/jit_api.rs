//! The admin API's answers to wrong callers and wrong requests.

use crate::jit_grants::{jit_env, request, JIT_POLICIES};
use crate::jit_http::http;

#[test]
fn jit_admin_api_answers_401_403_404_and_400() {
    let env = jit_env(JIT_POLICIES);
    let port = env.admin_port;
    let ci = env.token("ci", &["ci"]);
    let alice = env.token("alice", &["sre"]);

    let (status, body) = http(port, "GET", "/v1/grants", None, None);
    assert_eq!(status, 401);
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("missing bearer token"));
    let (status, _) = http(port, "GET", "/v1/approvals", Some("not-a-jwt"), None);
    assert_eq!(status, 401);
    let forged = format!("{}x", &alice[..alice.len() - 1]);
    assert_eq!(http(port, "GET", "/v1/grants", Some(&forged), None).0, 401);

    // Workloads may ask and look at their own, nothing more.
    let id = request(&env, &ci, "10m");
    let (status, own) = http(port, "GET", &format!("/v1/grants/{id}"), Some(&ci), None);
    assert_eq!((status, own["status"].as_str()), (200, Some("pending")));
    let approve = format!("/v1/grants/{id}/approve");
    assert_eq!(http(port, "POST", &approve, Some(&ci), Some("{}")).0, 403);
    assert_eq!(http(port, "GET", "/v1/approvals", Some(&ci), None).0, 403);
    let dave = env.token("dave", &["ci"]);
    assert_eq!(
        http(port, "GET", &format!("/v1/grants/{id}"), Some(&dave), None).0,
        403
    );
    let (_, mine) = http(port, "GET", "/v1/grants", Some(&dave), None);
    assert_eq!(mine, serde_json::json!([]));

    let (status, body) = http(
        port,
        "POST",
        "/v1/grants/g-unknown/approve",
        Some(&alice),
        None,
    );
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        http(port, "GET", "/v1/approvals/a-unknown", Some(&alice), None).0,
        404
    );
    assert_eq!(http(port, "GET", "/v1/nothing", Some(&alice), None).0, 404);
    // There is no way to extend a grant, for anyone.
    let extend = format!("/v1/grants/{id}/extend");
    assert_eq!(http(port, "POST", &extend, Some(&alice), Some("{}")).0, 404);
    assert_eq!(http(port, "POST", &extend, Some(&ci), Some("{}")).0, 404);

    let (status, body) = http(
        port,
        "POST",
        "/v1/grants",
        Some(&ci),
        Some("{\"connection\": "),
    );
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("invalid JSON"),
        "{body}"
    );
    let (status, body) = http(
        port,
        "POST",
        "/v1/grants",
        Some(&ci),
        Some(r#"{"connection":"app-db","duration":"soon","reason":"x"}"#),
    );
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("invalid duration"),
        "{body}"
    );
    let (status, _) = http(
        port,
        "POST",
        &approve,
        Some(&alice),
        Some(r#"{"extend":"1h"}"#),
    );
    assert_eq!(status, 400, "unknown fields are refused");

    let (status, body) = http(port, "POST", &approve, Some(&alice), None);
    assert_eq!((status, body["status"].as_str()), (200, Some("active")));
}

#[test]
fn jit_admin_api_over_tls_with_the_gateway_certificate() {
    let env = crate::env::Env::with(crate::env::Options {
        policies: JIT_POLICIES.to_string(),
        admin_extra: "  tls: true\n".into(),
        ..crate::env::Options::default()
    });
    let alice = env.token("alice", &["sre"]);
    let https = format!("https://127.0.0.1:{}", env.admin_port);
    let ca = env.dir().join("data/dev-cert.pem");
    let grants = |admin: &str, ca: Option<&std::path::Path>| {
        let mut cmd = std::process::Command::new(crate::env::BIN);
        cmd.args(["grants", "list", "--json", "--admin", admin])
            .env("PORTCULLIS_TOKEN", &alice);
        if let Some(ca) = ca {
            cmd.arg("--admin-ca").arg(ca);
        }
        test_support::run(&mut cmd, crate::env::TIMEOUT)
    };
    let trusted = grants(&https, Some(&ca));
    assert!(trusted.success(), "{}", trusted.stderr);
    assert_eq!(trusted.stdout.trim(), "[]");
    // The dev certificate is not in the system roots.
    assert!(!grants(&https, None).success());
    // Plain HTTP gets nowhere on the TLS port.
    assert!(!grants(&env.admin_url(), None).success());
}

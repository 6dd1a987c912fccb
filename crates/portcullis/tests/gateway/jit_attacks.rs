//! The admin API and its CLI tried as an attacker would: text that redraws
//! the approver's terminal, slow bodies from nobody, forged log lines,
//! refusals that left no trace, checks in the wrong order.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use crate::env::{Env, Options, BIN, TIMEOUT};
use crate::jit_grants::{jit_env, request, JIT_POLICIES};
use crate::jit_http::http;
use crate::jit_support::{psql_in_background, wait_for_pending};

/// `bob` reads freely; his writes wait for an approver (`sre`).
const HELD_WRITES: &str = r#"
  - name: ci-writes-approved
    match: { groups: [ci] }
    connection: app-db
    allow: [read]
    require_approval: [write]
"#;

/// One raw HTTP/1.1 exchange; returns the status, the head and the body.
fn raw(port: u16, request: &str) -> (u16, String, serde_json::Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect admin API");
    s.write_all(request.as_bytes()).expect("send");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let json = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    (status, head.to_string(), json)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn jit_attack_escape_sequences_in_a_held_statement_do_not_fool_the_approver_s_terminal() {
    let env = Env::with(Options {
        policies: HELD_WRITES.to_string(),
        ..Options::default()
    });
    let bob = env.token("bob", &["ci"]);
    let alice = env.token("alice", &["sre"]);
    // Erase the line, return, go up one line, erase it, and draw a harmless
    // SELECT where the approver expects the held statement.
    let sql = "delete from items where name = '\u{1b}[2K\r\u{1b}[1A\u{1b}[2Ka-00000000 bob select 1 from items -- harmless\n';";
    let held = psql_in_background(&env, &bob, sql);
    let approval = wait_for_pending(
        || env.cli_json(&alice, &["approvals", "list"]),
        "delete from items",
    );
    let id = approval["id"].as_str().unwrap().to_string();
    assert_eq!(approval["classes"], serde_json::json!(["write"]));
    assert_eq!(approval["relations"], serde_json::json!(["items"]));

    // `approvals list` in a real terminal, as the approver would run it.
    let script = env.dir().join("list.sh");
    std::fs::write(
        &script,
        format!(
            "PORTCULLIS_TOKEN='{alice}' '{BIN}' approvals list --admin '{}'\nsleep 60\n",
            env.admin_url()
        ),
    )
    .unwrap();
    let socket = env.dir().join("tmux.sock");
    let tmux = |args: &[&str]| {
        let mut cmd = Command::new("tmux");
        cmd.arg("-S").arg(&socket).args(args);
        test_support::run(&mut cmd, TIMEOUT)
    };
    let started = tmux(&[
        "new-session",
        "-d",
        "-x",
        "200",
        "-y",
        "50",
        &format!("sh {}", script.display()),
    ]);
    assert!(started.success(), "tmux: {}", started.stderr);
    let mut pane = String::new();
    for _ in 0..200 {
        pane = tmux(&["capture-pane", "-p", "-J"]).stdout;
        if pane.contains("(deadline") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = tmux(&["kill-server"]);
    let line = pane
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("no line for {id} in the pane:\n{pane}"));
    assert!(
        line.contains("[write on items] delete from items where name = '\\u{1b}[2K\\r"),
        "{pane}"
    );
    assert!(
        !pane.lines().any(|l| l.starts_with("a-00000000")),
        "the forged line was drawn:\n{pane}"
    );

    let denied = env.cli_json(&alice, &["approvals", "deny", &id]);
    assert_eq!(denied["status"], "denied");
    held.join().unwrap();
}

#[test]
fn jit_attack_slow_unauthenticated_bodies_cost_little_memory_and_leave_postgres_alone() {
    let mut env = jit_env(crate::env::DEFAULT_POLICIES);
    let ci = env.token("ci", &["ci"]);
    let pid = env.gateway().pid();
    let warm = env.psql(&ci, "select count(*) from items;");
    assert_eq!(warm.stdout.trim(), "10", "{}", warm.stderr);
    let before = rss_kib(pid);

    // 1,000 clients without a token, each declaring a 2 MB body and sending
    // it 16 KiB at a time, round after round (256 KiB each, 256 MiB in all).
    let head = "POST /v1/grants HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: 2000000\r\n\r\n";
    let mut clients: Vec<TcpStream> = (0..1000)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", env.admin_port)).ok())
        .collect();
    for c in &mut clients {
        let _ = c.write_all(head.as_bytes());
        // What the gateway does not read waits in socket buffers, not here.
        let _ = c.set_nonblocking(true);
    }
    let chunk = vec![b' '; 16 * 1024];
    let mut peak = before;
    for _ in 0..16 {
        for c in &mut clients {
            let _ = c.write_all(&chunk);
        }
        peak = peak.max(rss_kib(pid));
    }
    // The data plane goes on meanwhile.
    let during = env.psql(&ci, "select count(*) from items;");
    assert_eq!(during.stdout.trim(), "10", "{}", during.stderr);
    peak = peak.max(rss_kib(pid));
    println!(
        "gateway RSS {} MiB before, {} MiB at most under 1,000 slow bodies",
        before / 1024,
        peak / 1024
    );
    assert!(
        peak < before + 64 * 1024,
        "RSS grew from {before} KiB to {peak} KiB"
    );
    drop(clients);
    // Nothing was granted, and the API still answers.
    let (status, body) = http(env.admin_port, "GET", "/v1/grants", Some(&ci), None);
    assert_eq!((status, body), (200, serde_json::json!([])));
}

#[test]
fn jit_attack_a_principal_name_with_a_line_break_logs_one_line() {
    let env = jit_env(JIT_POLICIES);
    let forged = "mallory\n2030-01-01T00:00:00.000000Z  INFO portcullis_jit::grants: grant approved grant=g-1 approver=alice";
    let token = env.token(forged, &["ci"]);
    // A workload asking for the approvers' list: refused, logged, recorded.
    let (status, _) = http(env.admin_port, "GET", "/v1/approvals", Some(&token), None);
    assert_eq!(status, 403);
    let refused = env.wait_for_record(|r| r["kind"] == "admin_request" && r["principal"] == forged);
    assert_eq!(refused["detail"]["status"], 403);
    // Each event naming the principal is one line, the name quoted and
    // escaped inside it.
    let log = env.gateway_log();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("admin API request refused"))
        .collect();
    assert_eq!(refusals.len(), 1, "{log}");
    assert!(
        refusals[0].contains(r#" principal="mallory\n2030-01-01T00:00:00.000000Z  INFO"#),
        "{log}"
    );
    assert!(
        log.lines()
            .filter(|l| l.contains("mallory"))
            .all(|l| l.contains(r#""mallory\n2030-01-01"#)),
        "{log}"
    );
    assert!(
        !log.lines().any(|l| l.starts_with("2030-01-01")),
        "a forged line:\n{log}"
    );
}

#[test]
fn jit_attack_checks_run_in_order_and_every_error_is_json() {
    let env = jit_env(JIT_POLICIES);
    let port = env.admin_port;
    let ci = env.token("ci", &["ci"]);
    let alice = env.token("alice", &["sre"]);
    let id = request(&env, &ci, "10m");
    let approve = format!("/v1/grants/{id}/approve");

    // Authorisation before the body, existence before the body.
    let (status, body) = http(port, "POST", &approve, Some(&ci), Some("{"));
    assert_eq!(status, 403, "{body}");
    let (status, body) = http(port, "POST", "/v1/grants/g-0/deny", Some(&alice), Some("{"));
    assert_eq!(status, 404, "{body}");
    let (status, body) = http(
        port,
        "POST",
        "/v1/approvals/a-0/approve",
        Some(&ci),
        Some("{"),
    );
    assert_eq!(status, 403, "{body}");
    // Authentication before anything: a huge declared body is not read.
    let (status, _, body) = raw(
        port,
        "POST /v1/grants HTTP/1.1\r\nHost: gw\r\nContent-Length: 100000000\r\n\r\n{",
    );
    assert_eq!(status, 401, "{body}");

    // Exactly one Authorization header.
    let two = format!(
        "GET /v1/grants HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {alice}\r\nAuthorization: Bearer x\r\n\r\n"
    );
    let (status, _, body) = raw(port, &two);
    assert_eq!(status, 401, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("more than one Authorization"));

    // 405, 413 and 414 carry the JSON error body too.
    let (status, head, body) = raw(
        port,
        &format!("DELETE /v1/grants HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {alice}\r\n\r\n"),
    );
    assert_eq!(status, 405);
    assert!(head.to_ascii_lowercase().contains("allow: "), "{head}");
    assert!(body["error"].is_string(), "{head}");
    let big = format!(
        "POST /v1/grants HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {ci}\r\nContent-Length: 100000\r\n\r\n"
    );
    let (status, _, body) = raw(port, &big);
    assert_eq!(status, 413);
    assert!(
        body["error"].as_str().unwrap().contains("larger than"),
        "{body}"
    );
    let long = format!("/v1/grants/{}", "g".repeat(3000));
    let (status, body) = http(port, "GET", &long, Some(&alice), None);
    assert_eq!(status, 414);
    assert!(body["error"].is_string());

    // Reasons are bounded; durations are whole seconds up to max inclusive.
    let dave = env.token("dave", &["ci"]);
    let ask = |token: &str, duration: &str, reason: &str| {
        let body =
            serde_json::json!({ "connection": "app-db", "duration": duration, "reason": reason });
        http(
            port,
            "POST",
            "/v1/grants",
            Some(token),
            Some(&body.to_string()),
        )
    };
    let (status, body) = ask(&dave, "10m", &"r".repeat(1001));
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("at most 1000"),
        "{body}"
    );
    let (status, body) = ask(&dave, "1ns", "x");
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("whole seconds"),
        "{body}"
    );
    let (status, body) = ask(&dave, "1h 1s", "x");
    assert_eq!(
        (status, body["error"].as_str()),
        (
            400,
            Some("duration 1h 1s is longer than the policy's max of 1h")
        )
    );
    let (status, body) = ask(&dave, "1h", "x");
    assert_eq!((status, body["duration_secs"].as_u64()), (201, Some(3600)));
    // No Rust names in what people read.
    for _ in 0..2 {
        let (status, body) = ask(&dave, "1h", "again");
        assert_eq!(status, 409);
        assert!(
            body["error"].as_str().unwrap().contains("a pending grant"),
            "{body}"
        );
    }
    // One principal's requests are limited: this is the sixth of dave's
    // this minute that got as far as the broker.
    let (status, body) = ask(&dave, "1h", "once more");
    assert_eq!(status, 429, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .starts_with("too many grant requests from dave"));

    // Refusals are records, with who and why.
    let refusals: Vec<serde_json::Value> = env
        .records()
        .into_iter()
        .filter(|r| r["kind"] == "admin_request")
        .collect();
    let statuses: Vec<u64> = refusals
        .iter()
        .filter_map(|r| r["detail"]["status"].as_u64())
        .collect();
    assert!(
        statuses.contains(&401) && statuses.contains(&403),
        "{refusals:#?}"
    );
    let own = refusals
        .iter()
        .find(|r| r["detail"]["path"] == approve.as_str())
        .expect("the workload's approval attempt is recorded");
    assert_eq!(
        (own["principal"].as_str(), own["decision"].as_str()),
        (Some("ci"), Some("deny"))
    );
    assert!(own["detail"]["token"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
}

#[test]
fn jit_attack_bad_tokens_meet_the_login_limit_every_listener_shares() {
    let env = jit_env(crate::env::DEFAULT_POLICIES);
    let ci = env.token("ci", &["ci"]);
    for n in 0..10 {
        let (status, _) = http(env.admin_port, "GET", "/v1/grants", Some("not-a-jwt"), None);
        assert_eq!(status, 401, "attempt {n}");
    }
    let (status, _, body) = raw(
        env.admin_port,
        &format!("GET /v1/grants HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {ci}\r\n\r\n"),
    );
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("too many failed logins from 127.0.0.1"),
        "{body}"
    );
    // The same address is refused by the PostgreSQL listener too.
    let out = env.psql(&ci, "select 1;");
    assert!(
        out.stderr.contains("too many failed logins"),
        "{}",
        out.stderr
    );
    env.wait_for_record(|r| r["kind"] == "admin_request" && r["detail"]["status"] == 429);
}

#[test]
fn jit_attack_a_deny_and_request_again_loop_pages_approvers_only_three_times() {
    let receiver = crate::jit_http::Receiver::start(0);
    let env = Env::with(Options {
        policies: JIT_POLICIES.to_string(),
        admin_extra: format!("  webhooks:\n    - url: {}\n", receiver.url("/hook")),
        ..Options::default()
    });
    let ci = env.token("ci", &["ci"]);
    let alice = env.token("alice", &["sre"]);
    let mut ids = Vec::new();
    for _ in 0..5 {
        let id = request(&env, &ci, "10m");
        let denied = env.cli_json(&alice, &["grants", "deny", &id]);
        assert_eq!(denied["status"], "denied");
        ids.push(id);
    }
    // Another principal's request is announced as usual; once it is in,
    // every earlier delivery has been made.
    let dave = env.token("dave", &["ci"]);
    let last = request(&env, &dave, "10m");
    receiver.wait_for(1, |b| b["id"] == last.as_str());
    let bodies = receiver.bodies.lock().unwrap().clone();
    let paged: Vec<&str> = bodies
        .iter()
        .filter(|b| b["grant"]["principal"] == "ci")
        .filter_map(|b| b["id"].as_str())
        .collect();
    assert_eq!(
        paged,
        ids[..3].iter().map(String::as_str).collect::<Vec<_>>()
    );
    // All five are still listed and recorded.
    let listed = env.cli_json(&alice, &["grants", "list"]);
    assert_eq!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["principal"] == "ci")
            .count(),
        5
    );
}

//! Failed logins per source address: after 10 within a minute the address
//! is refused, whatever it sends, while everyone else carries on.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::IpAddr;

use serde_json::Value;

use crate::env::{Env, Options};
use crate::postgres_robustness::{
    connect_from, error_fields, logged_in, logged_in_over, message, password_requested, read_all,
    send_token, startup_packet, still_answers,
};

/// Plaintext is allowed too, for the raw clients; psql still uses TLS.
fn env() -> Env {
    Env::with(Options {
        insecure_plaintext: true,
        ..Options::default()
    })
}

/// How the refusal of 127.0.0.1 begins, for the client and in the record.
const LOCKED_OUT: &str = "too many failed logins from 127.0.0.1 (10 within 60 s); try again in ";

fn limited(r: &Value) -> bool {
    r["kind"] == "connection_attempt"
        && r["detail"]["reason"]
            .as_str()
            .is_some_and(|why| why.starts_with(LOCKED_OUT))
}

/// What a StartupMessage from `source` gets back: the password request
/// (`None`) or the fields of the error that ends it.
fn startup_answer(env: &Env, source: IpAddr) -> Option<BTreeMap<u8, String>> {
    let mut s = connect_from(env, source);
    s.write_all(&startup_packet("ci")).unwrap();
    let mut tag = [0u8; 1];
    s.read_exact(&mut tag).unwrap();
    if tag == *b"R" {
        return None;
    }
    let mut answer = tag.to_vec();
    answer.extend(read_all(s));
    Some(error_fields(&answer))
}

#[test]
fn ten_bad_tokens_lock_out_the_address_and_no_one_else() {
    let env = env();
    let token = env.token("ci-job", &["ci"]);
    let mut bystander = logged_in(&env, &token);

    for attempt in 1..=10 {
        let out = env.psql("not-a-jwt", "select 1;");
        assert!(
            out.stderr.contains("token rejected"),
            "attempt {attempt}: {}",
            out.stderr
        );
    }
    // The 11th is refused before its token is asked for, good as it is.
    let out = env.psql(&token, "select 1;");
    assert!(!out.success(), "{}", out.stdout);
    assert!(out.stderr.contains(LOCKED_OUT), "{}", out.stderr);
    let fields = startup_answer(&env, "127.0.0.1".parse().unwrap()).expect("refused");
    assert_eq!(fields[&b'S'], "FATAL");
    assert_eq!(fields[&b'C'], "28000");
    let seconds = fields[&b'M']
        .strip_prefix(LOCKED_OUT)
        .and_then(|rest| rest.strip_suffix(" s"))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(
        seconds.is_some_and(|n| (1..=60).contains(&n)),
        "{:?}",
        fields[&b'M']
    );

    let refused = env.wait_for_record(limited);
    assert_eq!(refused["decision"], "deny");
    assert!(refused["principal"].is_null(), "{refused}");
    assert!(
        refused["detail"]["client_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{refused}"
    );
    let export = env.cli(&["audit", "export", "--format", "jsonl"]).stdout;
    assert!(!export.contains(&token), "tokens never reach records");
    let admitted = env
        .records()
        .into_iter()
        .filter(|r| r["kind"] == "connection_attempt" && r["decision"] == "ok")
        .count();
    assert_eq!(admitted, 1, "only the bystander got in");

    // A session opened before the lockout carries on.
    still_answers(&mut bystander);
    // Another address logs in as usual.
    let other: IpAddr = "127.0.0.2".parse().unwrap();
    drop(logged_in_over(connect_from(&env, other), &token));
    env.wait_for_record(|r| {
        r["kind"] == "session_start"
            && r["detail"]["client_addr"]
                .as_str()
                .is_some_and(|a| a.starts_with("127.0.0.2:"))
    });
}

#[test]
fn refused_credentials_and_protocol_garbage_count_and_hang_ups_do_not() {
    let env = env();
    let token = env.token("ci-job", &["ci"]);
    let stranger = env.token("stranger", &["nobody"]);
    let [hangs_up, garbles, has_no_access]: [IpAddr; 3] =
        ["127.0.0.3", "127.0.0.4", "127.0.0.5"].map(|a| a.parse().unwrap());
    for _ in 0..10 {
        // As psql does when it has no password yet: it asks, then reconnects.
        drop(password_requested(connect_from(&env, hangs_up)));
        let mut s = password_requested(connect_from(&env, garbles));
        s.write_all(&message(b'Q', b"select 1\0")).unwrap();
        let fields = error_fields(&read_all(s));
        assert_eq!(fields[&b'C'], "08P01");
        let fields = error_fields(&read_all(send_token(
            connect_from(&env, has_no_access),
            &stranger,
        )));
        assert_eq!(fields[&b'C'], "28000");
        assert!(fields[&b'M'].contains("no access"), "{fields:?}");
    }
    assert_eq!(startup_answer(&env, hangs_up), None);
    drop(logged_in_over(connect_from(&env, hangs_up), &token));
    for source in [garbles, has_no_access] {
        let fields = startup_answer(&env, source).expect("refused");
        assert_eq!(fields[&b'C'], "28000");
        assert!(
            fields[&b'M'].starts_with(&format!("too many failed logins from {source} ")),
            "{fields:?}"
        );
    }
}

#[test]
fn failures_on_one_listener_count_on_the_others() {
    let second = test_support::free_port();
    let env = Env::with(Options {
        insecure_plaintext: true,
        second_listener: Some(second),
        ..Options::default()
    });
    for _ in 0..10 {
        let out = env.psql("not-a-jwt", "select 1;");
        assert!(out.stderr.contains("token rejected"), "{}", out.stderr);
    }
    // The other listener refuses the address before asking for a token.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", second)).unwrap();
    s.write_all(&startup_packet("ci")).unwrap();
    let fields = error_fields(&read_all(s));
    assert_eq!(fields[&b'C'], "28000");
    assert!(fields[&b'M'].starts_with(LOCKED_OUT), "{:?}", fields[&b'M']);
    let refused = env.wait_for_record(limited);
    assert_eq!(refused["connection"], "app-db-b", "{refused}");
}

//! Bad input gets a clear error and harms nobody else; an unreachable
//! upstream is reported natively; a killed gateway loses no record.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use crate::env::{Env, Options};

pub(crate) fn connect(env: &Env) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", env.gw_port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Like [`connect`], from another source address (Linux routes all of
/// 127.0.0.0/8 to `lo`), to stand for another client host.
pub(crate) fn connect_from(env: &Env, source: IpAddr) -> TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    let gateway = SocketAddr::from(([127, 0, 0, 1], env.gw_port));
    let s = runtime
        .block_on(async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(source, 0))?;
            socket.connect(gateway).await?.into_std()
        })
        .unwrap_or_else(|e| panic!("connect from {source}: {e}"));
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads until the server closes or a timeout; returns what arrived.
pub(crate) fn read_all(mut s: TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

pub(crate) fn startup_packet(user: &str) -> Vec<u8> {
    let mut body = 196_608i32.to_be_bytes().to_vec();
    for (k, v) in [("user", user), ("database", "app")] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend(body);
    packet
}

pub(crate) fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Sends a StartupMessage over `s` (plaintext: a loopback listener) and
/// waits for the password request.
pub(crate) fn password_requested(mut s: TcpStream) -> TcpStream {
    s.write_all(&startup_packet("ci")).unwrap();
    let mut buf = [0u8; 9];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(buf[0], b'R', "expected an authentication request");
    s
}

/// Starts a login over `s` and answers the password request with `token`.
pub(crate) fn send_token(s: TcpStream, token: &str) -> TcpStream {
    let mut s = password_requested(s);
    let mut pw = token.as_bytes().to_vec();
    pw.push(0);
    s.write_all(&message(b'p', &pw)).unwrap();
    s
}

/// Logs in over plaintext (loopback listener) and returns the socket after
/// the first ReadyForQuery.
pub(crate) fn logged_in(env: &Env, token: &str) -> TcpStream {
    logged_in_over(connect(env), token)
}

/// Like [`logged_in`], over a socket the caller connected.
pub(crate) fn logged_in_over(s: TcpStream, token: &str) -> TcpStream {
    let mut s = send_token(s, token);
    read_until_ready(&mut s, "login");
    s
}

/// Reads up to and including an idle ReadyForQuery; returns what arrived.
fn read_until_ready(s: &mut TcpStream, during: &str) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    while !seen.windows(6).any(|w| w == b"Z\0\0\0\x05I") {
        let n = s.read(&mut chunk).unwrap();
        assert!(
            n > 0,
            "closed during {during}: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&chunk[..n]);
    }
    seen
}

/// Asserts that a logged-in session still answers a query.
pub(crate) fn still_answers(session: &mut TcpStream) {
    session
        .write_all(&message(b'Q', b"select count(*) from items\0"))
        .unwrap();
    let seen = read_until_ready(session, "a query");
    assert!(
        seen.windows(9).any(|w| w == b"SELECT 1\0"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
}

/// The fields of the ErrorResponse that ends a login whose token is good
/// (loopback plaintext listener), by field type: `b'C'` the SQLSTATE,
/// `b'M'` the message, and so on.
pub(crate) fn login_error(env: &Env, token: &str) -> BTreeMap<u8, String> {
    error_fields(&read_all(send_token(connect(env), token)))
}

/// The fields of the ErrorResponse `answer` starts with, by field type.
pub(crate) fn error_fields(answer: &[u8]) -> BTreeMap<u8, String> {
    assert_eq!(answer.first(), Some(&b'E'), "{answer:?}");
    let len = answer
        .get(1..5)
        .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
        .expect("message length");
    let body = answer.get(5..1 + len).expect("whole ErrorResponse");
    body.split(|b| *b == 0)
        .filter(|field| !field.is_empty())
        .map(|field| (field[0], String::from_utf8_lossy(&field[1..]).into_owned()))
        .collect()
}

fn plaintext_env() -> Env {
    Env::with(Options {
        insecure_plaintext: true,
        ..Options::default()
    })
}

fn still_serves(env: &Env) {
    let token = env.token("ci-job", &["ci"]);
    let out = env.psql(&token, "select count(*) from items;");
    assert!(
        out.success(),
        "gateway stopped serving: {}\n{}",
        out.stderr,
        env.gateway_log()
    );
    assert_eq!(out.stdout.trim(), "10");
}

#[test]
fn malformed_startup_packets_get_errors_and_hurt_no_one() {
    let env = plaintext_env();
    let cases: Vec<Vec<u8>> = vec![
        vec![0, 0, 0, 2],                          // length below the minimum
        vec![0xff, 0xff, 0xff, 0xff],              // negative length
        vec![0x7f, 0, 0, 0, 0, 3, 0, 0],           // oversized
        vec![0, 0, 0, 12, 0, 3, 0, 0, b'u', b's'], // truncated, then closed
        {
            let mut p = startup_packet("ci");
            let n = p.len();
            p[n - 1] = b'x'; // parameters not NUL-terminated
            p
        },
        vec![0, 0, 0, 8, 0, 2, 0, 0], // protocol 2.0
    ];
    for case in cases {
        let mut s = connect(&env);
        s.write_all(&case).unwrap();
        let _ = s.shutdown(std::net::Shutdown::Write);
        let reply = read_all(s);
        if !reply.is_empty() {
            assert_eq!(
                reply[0], b'E',
                "expected ErrorResponse for {case:?}, got {reply:?}"
            );
        }
    }
    still_serves(&env);
}

#[test]
fn malformed_messages_after_login_get_a_protocol_error() {
    let env = plaintext_env();
    let token = env.token("ci-job", &["ci"]);
    let cases: Vec<Vec<u8>> = vec![
        b"Q\0\0\0\x02".to_vec(),                           // lying short length
        b"Q\x7f\xff\xff\xffselect".to_vec(),               // oversized
        message(b'Q', b"select 1"),                        // no NUL terminator
        message(b'P', b"s\0select 1\0\0\x09"),             // parameter count lies
        message(b'B', b"\0s\0\0\0\0\x01\0\0\0\x40ab\0\0"), // parameter length lies
        message(b'!', b""),                                // unknown type
    ];
    // A session opened before the garbage must keep working through it.
    let mut bystander = logged_in(&env, &token);
    for case in cases {
        let mut s = logged_in(&env, &token);
        s.write_all(&case).unwrap();
        let reply = read_all(s);
        let text = String::from_utf8_lossy(&reply);
        assert!(reply.first() == Some(&b'E'), "{case:?} -> {text}");
        assert!(text.contains("08P01"), "{case:?} -> {text}");
    }
    still_answers(&mut bystander);
    still_serves(&env);
}

#[test]
fn gssapi_encryption_is_declined_and_startup_continues() {
    let env = plaintext_env();
    let mut s = connect(&env);
    // GSSENCRequest: length 8, code 80877104.
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]).unwrap();
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"N");
    // The client may go on with a plain startup on the same connection.
    s.write_all(&startup_packet("ci")).unwrap();
    let mut buf = [0u8; 9];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(buf[0], b'R');
}

#[test]
fn truncated_message_then_disconnect_is_harmless() {
    let env = plaintext_env();
    let token = env.token("ci-job", &["ci"]);
    let mut s = logged_in(&env, &token);
    s.write_all(b"Q\0\0\0\x40select").unwrap();
    drop(s);
    still_serves(&env);
}

#[test]
fn unreachable_upstream_gives_a_native_error() {
    let mut env = Env::start();
    env.pg.stop();
    let token = env.token("ci-job", &["ci"]);
    let out = env.psql(&token, "select 1;");
    assert!(!out.success());
    assert!(
        out.stderr.contains("upstream unavailable"),
        "{}",
        out.stderr
    );
    assert!(
        env.gateway().try_wait().is_none(),
        "the gateway must keep running"
    );
}

#[test]
fn kill_9_loses_no_record_of_a_forwarded_statement() {
    let mut env = Env::start();
    let token = env.token("deployer", &[]);
    let out = env.psql(
        &token,
        "insert into items values (900, 'a');\ninsert into items values (901, 'b');\n",
    );
    assert!(out.success(), "{}", out.stderr);
    env.kill9_gateway();
    let inserts = env
        .records()
        .into_iter()
        .filter(|r| {
            r["kind"] == "statement"
                && r["detail"]["text"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("insert")
        })
        .count();
    assert_eq!(inserts, 2);
    let verify = env.cli(&["audit", "verify"]);
    assert!(verify.success(), "{}{}", verify.stdout, verify.stderr);
}

#[test]
fn sigterm_ends_sessions_with_57p01_and_keeps_their_records() {
    let mut env = Env::start();
    let token = env.token("ci-job", &["ci"]);
    let mut cmd = std::process::Command::new("python3");
    cmd.args([
        "-c",
        r#"
import os, sys, time, psycopg
conn = psycopg.connect(os.environ["DSN"], autocommit=True)
print(conn.execute("select 1").fetchone()[0], flush=True)
try:
    time.sleep(3)
    conn.execute("select 2")
    print("STILL OPEN")
except psycopg.OperationalError as e:
    print("CLOSED", getattr(e, "sqlstate", None), e)
"#,
    ])
    .env("PGPASSWORD", &token)
    .env("DSN", env.conninfo("require"))
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().expect("python3");
    // Wait until the session is established, then stop the gateway.
    env.wait_for_record(|r| r["kind"] == "statement");
    env.gateway().terminate();
    let status = env.gateway().wait_timeout(Duration::from_secs(20));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{}",
        env.gateway_log()
    );
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("CLOSED"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("shutting down"), "{stdout}");
    let end = env.wait_for_record(|r| r["kind"] == "session_end" && r["principal"] == "ci-job");
    assert_eq!(end["detail"]["reason"], "the gateway is shutting down");
}

/// A tiny tmpfs, unmounted on drop (declare it before the gateway using it,
/// so the gateway is gone first).
pub(crate) struct TinyDisk(pub(crate) std::path::PathBuf);

impl TinyDisk {
    pub(crate) fn mount() -> Option<TinyDisk> {
        let dir = std::env::temp_dir().join(format!("portcullis-full-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = test_support::run(
            std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
                .arg(&dir),
            Duration::from_secs(10),
        );
        out.success().then_some(TinyDisk(dir))
    }

    pub(crate) fn fill(&self) {
        let mut dd = std::process::Command::new("dd");
        dd.args(["if=/dev/zero", "bs=64k", "count=1000"])
            .arg(format!("of={}", self.0.join("filler").display()));
        // dd stops with "No space left on device": that is the point.
        let _ = test_support::run(&mut dd, Duration::from_secs(10));
    }

    pub(crate) fn free(&self) {
        std::fs::remove_file(self.0.join("filler")).unwrap();
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_full_audit_disk_refuses_statements_and_recovers() {
    let Some(disk) = TinyDisk::mount() else {
        // Mounting needs root, which CI has; say so rather than pass silently.
        panic!("cannot mount a tmpfs: run the integration tests as root (CI does)");
    };
    let env = Env::with(Options {
        store_path: Some(disk.0.join("portcullis.db")),
        ..Options::default()
    });
    let token = env.token("deployer", &[]);
    let ok = env.psql(&token, "insert into items values (1000, 'before');");
    assert!(ok.success(), "{}", ok.stderr);

    disk.fill();
    // The last partly used page of a file may still take a few records;
    // keep writing until the store is really full.
    let script: String = (2000..2300)
        .map(|id| format!("insert into items values ({id}, 'while full');\n"))
        .collect();
    let out = env.psql(&token, &script);
    let refused = out
        .stderr
        .matches("audit record could not be written")
        .count();
    assert!(
        refused > 0,
        "no statement was refused on a full disk\n{}\n{}",
        out.stderr,
        env.gateway_log()
    );
    let ran: usize = env
        .pg
        .sql(
            "app",
            "select count(*) from items where id between 2000 and 2299",
        )
        .parse()
        .unwrap();
    assert_eq!(
        ran + refused,
        300,
        "every statement either ran or was refused: {}",
        out.stderr
    );

    disk.free();
    let out = env.psql(&token, "insert into items values (1002, 'after');");
    assert!(out.success(), "{}\n{}", out.stderr, env.gateway_log());
    assert_eq!(
        env.pg
            .sql("app", "select count(*) from items where id = 1002"),
        "1"
    );
    let verify = env.cli(&["audit", "verify"]);
    assert!(verify.success(), "{}{}", verify.stdout, verify.stderr);
}

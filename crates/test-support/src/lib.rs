//! The shared integration-test harness for Portcullis.
//!
//! Integration tests drive the real `portcullis` binary against real servers,
//! and every test gets its own: an isolated PostgreSQL server on a free port
//! ([`PgServer`]), an isolated OpenSSH server ([`SshServer`]), child processes that cannot outlive the test ([`Process`]),
//! and commands that cannot hang CI ([`run`]). Everything binds 127.0.0.1 only.
//!
//! ```no_run
//! use std::time::Duration;
//! use test_support::{PgServer, Process, free_port, run, wait_for_port};
//!
//! let pg = PgServer::start();
//! pg.sql("app", "create table t (id int)");
//! let port = free_port();
//! let mut cmd = std::process::Command::new("target/debug/portcullis");
//! cmd.args(["dev-idp", "--listen", &format!("127.0.0.1:{port}")]);
//! let idp = Process::spawn(cmd, "dev-idp");
//! wait_for_port(&format!("127.0.0.1:{port}"), Some(&idp));
//! let out = run(&mut pg.psql("app_scram", "app"), Duration::from_secs(30));
//! ```
//!
//! Works as root (CI) and as an ordinary user: as root, PostgreSQL runs as the
//! `postgres` OS user, which is why its files live under `/tmp`.

mod os;
mod pg;
mod process;
mod ssh;
mod watchdog;

use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

pub use pg::{
    psql, PgServer, APP_DB, MD5_PASSWORD, MD5_USER, SCRAM_PASSWORD, SCRAM_USER, SUPERUSER,
};
pub use process::{run, run_with_input, Output, Process};
pub use ssh::{quiet_client_options, SshServer};

/// A TCP port on 127.0.0.1 that was free a moment ago. Another test may still
/// take it before you bind it; [`PgServer::start`] retries for that reason.
///
/// Taken from below the kernel's ephemeral range, not by binding port 0: an
/// ephemeral port can be taken by any process's outgoing connection before
/// the server under test binds it, and a connect to an ephemeral port nobody
/// listens on can occasionally connect to itself, which makes
/// [`wait_for_port`] report a server ready that is not. Tests run in parallel
/// processes, so each starts at a pseudo-random place in the range.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static HANDED_OUT: AtomicU32 = AtomicU32::new(0);
    const FLOOR: u32 = 10_000;
    let ceiling = ephemeral_floor().unwrap_or(32_768);
    if ceiling <= FLOOR + 1_000 {
        return kernel_picked_port();
    }
    let span = ceiling - FLOOR;
    // Chosen once per process: every call continues the same walk, so one process never gets
    // a port twice (a fresh start per call let two calls' walks cross, about once in twenty
    // runs of 50 calls).
    static START: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        std::process::id()
            .wrapping_mul(2_654_435_761)
            .wrapping_add(nanos)
    });
    for _ in 0..span {
        let n = HANDED_OUT.fetch_add(1, Ordering::Relaxed);
        // A prime stride visits every port of the span once (unless the span is a multiple of it).
        let step = (u64::from(start) + u64::from(n) * 7_919) % u64::from(span);
        let Ok(port) = u16::try_from(u64::from(FLOOR) + step) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    kernel_picked_port()
}

fn kernel_picked_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// The lowest port the kernel hands out for outgoing connections.
fn ephemeral_floor() -> Option<u32> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

/// Waits until a TCP connect to `addr` succeeds, polling every 20 ms for up to
/// 30 s. If `proc_` is given and exits first, or time runs out, panics with
/// its log, which is usually the only clue why a gateway did not come up.
pub fn wait_for_port(addr: &str, proc_: Option<&Process>) {
    wait_for_port_within(addr, proc_, Duration::from_secs(30));
}

/// [`wait_for_port`] for up to `limit`: for servers whose start is slow on a
/// loaded machine (an interpreter loading a package tree from a cold disk).
pub fn wait_for_port_within(addr: &str, proc_: Option<&Process>, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if can_connect(addr) {
            return;
        }
        if let Some(p) = proc_ {
            if let Some(status) = p.try_wait() {
                panic!(
                    "{addr} never opened: process exited ({status}); {}",
                    p.describe()
                );
            }
        }
        if Instant::now() >= deadline {
            let why = proc_.map(Process::describe).unwrap_or_default();
            panic!(
                "{addr} did not accept connections within {} s; {why}",
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn can_connect(addr: &str) -> bool {
    let Ok(addrs) = addr.to_socket_addrs() else {
        panic!("wait_for_port: {addr:?} is not a host:port address");
    };
    addrs
        .into_iter()
        .any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok())
}

/// A fresh temp dir for one test, deleted (with its contents) on drop.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("portcullis-test-")
        .tempdir()
        .expect("create temp dir")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable_and_outside_the_ephemeral_range() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind(("127.0.0.1", port)).expect("port should be free");
        if let Some(floor) = ephemeral_floor() {
            assert!(u32::from(port) < floor, "{port} is in the ephemeral range");
        }
        let ports: std::collections::HashSet<u16> = (0..50).map(|_| free_port()).collect();
        assert_eq!(
            ports.len(),
            50,
            "one process never gets the same port twice in a row"
        );
    }

    #[test]
    fn wait_for_port_returns_once_listening() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        wait_for_port(&addr, None);
    }

    #[test]
    fn wait_for_port_fails_fast_with_the_log_when_the_process_dies() {
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "echo no listener here; exit 1"]);
        let p = Process::spawn(cmd, "dies");
        let addr = format!("127.0.0.1:{}", free_port());
        let started = Instant::now();
        // Caught here so `p` is dropped outside the panic and its log removed.
        let panic = std::panic::catch_unwind(|| wait_for_port(&addr, Some(&p)))
            .expect_err("wait_for_port should panic");
        let message = panic.downcast_ref::<String>().expect("a formatted message");
        assert!(message.contains("process exited"), "{message}");
        assert!(message.contains("no listener here"), "{message}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn temp_dir_is_created_and_removed() {
        let dir = temp_dir();
        let path = dir.path().to_path_buf();
        assert!(path.is_dir());
        drop(dir);
        assert!(!path.exists());
    }
}

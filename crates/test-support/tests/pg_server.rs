//! End-to-end checks of the harness itself: real PostgreSQL servers, reached
//! the way gateway tests will reach them (psql over TCP, SCRAM and MD5, TLS).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use test_support::{
    psql, run, PgServer, Process, APP_DB, MD5_PASSWORD, MD5_USER, SCRAM_PASSWORD, SCRAM_USER,
};

const T: Duration = Duration::from_secs(60);

#[test]
fn superuser_sql_over_the_socket() {
    let pg = PgServer::start();
    assert_eq!(pg.sql("postgres", "select 1"), "1");
    assert_eq!(
        pg.sql(APP_DB, "select current_database(), current_user"),
        "app|postgres"
    );
    assert!(pg
        .socket_dir()
        .join(format!(".s.PGSQL.{}", pg.port))
        .exists());
}

#[test]
#[should_panic(expected = "psql on port")]
fn sql_errors_panic_with_stderr() {
    let pg = PgServer::start();
    pg.sql("postgres", "select * from no_such_table");
}

#[test]
fn scram_and_md5_logins_over_tcp() {
    let pg = PgServer::start();
    for user in [SCRAM_USER, MD5_USER] {
        let out = run(
            pg.psql(user, APP_DB).args([
                "-q",
                "-c",
                "create table if not exists t (x int); select current_user",
            ]),
            T,
        );
        assert!(out.success(), "{user}: {}", out.stderr);
        assert_eq!(out.stdout.trim(), user);
    }
    // The stored hash decides which exchange the server runs: md5 vs SCRAM.
    let stored = pg.sql(
        "postgres",
        "select rolname, left(rolpassword, 3) from pg_authid \
         where rolname in ('app_md5', 'app_scram') order by 1",
    );
    assert_eq!(stored, "app_md5|md5\napp_scram|SCR");
}

#[test]
fn app_roles_log_in_over_the_socket_with_their_passwords() {
    let pg = PgServer::start();
    let socket = |user: &str| {
        format!(
            "host={} port={} dbname={APP_DB} user={user}",
            pg.socket_dir().display(),
            pg.port
        )
    };
    for (user, password) in [(SCRAM_USER, SCRAM_PASSWORD), (MD5_USER, MD5_PASSWORD)] {
        let out = run(
            psql(&socket(user), Some(password)).args(["-c", "select current_user"]),
            T,
        );
        assert!(out.success(), "{user}: {}", out.stderr);
        assert_eq!(out.stdout.trim(), user);
        // A password is really asked for: the socket does not trust them.
        let out = run(
            psql(&socket(user), Some("wrong")).args(["-c", "select 1"]),
            T,
        );
        assert!(
            out.stderr.contains("password authentication failed"),
            "{user}: {}",
            out.stderr
        );
    }
}

#[test]
fn wrong_password_and_superuser_over_tcp_are_refused() {
    let pg = PgServer::start();
    let out = run(
        psql(&pg.conninfo(SCRAM_USER, APP_DB), Some("wrong")).args(["-c", "select 1"]),
        T,
    );
    assert!(!out.success());
    assert!(
        out.stderr.contains("password authentication failed"),
        "{}",
        out.stderr
    );

    let out = run(
        psql(&pg.conninfo("postgres", "postgres"), Some(SCRAM_PASSWORD)).args(["-c", "select 1"]),
        T,
    );
    assert!(!out.success(), "superuser must not log in over TCP");
}

#[test]
fn tls_verify_full_against_the_server_cert() {
    let pg = PgServer::start();
    let conninfo = format!(
        "{} sslmode=verify-full sslrootcert={}",
        pg.conninfo(SCRAM_USER, APP_DB)
            .replace("host=127.0.0.1", "host=localhost"),
        pg.ca_cert().display()
    );
    let out = run(
        psql(&conninfo, Some(SCRAM_PASSWORD)).args([
            "-c",
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
        ]),
        T,
    );
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "t");
}

#[test]
fn two_servers_run_side_by_side() {
    let a = PgServer::start();
    let b = PgServer::start();
    assert_ne!(a.port, b.port);
    a.sql(APP_DB, "create table only_in_a (x int)");
    assert_eq!(
        b.sql(
            APP_DB,
            "select count(*) from pg_tables where tablename = 'only_in_a'"
        ),
        "0"
    );
}

#[test]
fn template_reuse_makes_later_starts_fast() {
    drop(PgServer::start()); // builds the template if this is the first server
    let started = Instant::now();
    let pg = PgServer::start();
    let took = started.elapsed();
    assert_eq!(pg.sql("postgres", "select 1"), "1");
    // initdb alone takes seconds; a copy and a start take well under that.
    assert!(took < Duration::from_secs(5), "second start took {took:?}");
}

#[test]
fn drop_stops_the_server_and_removes_its_files() {
    let pg = PgServer::start();
    let addr = format!("{}:{}", pg.host, pg.port);
    let data = pg.data_dir();
    assert!(TcpStream::connect(&addr).is_ok());
    drop(pg);
    assert!(TcpStream::connect(&addr).is_err(), "server still listening");
    assert!(!data.exists(), "data dir left behind");
}

#[test]
fn restart_keeps_port_and_data() {
    let mut pg = PgServer::start();
    let port = pg.port;
    pg.sql(
        APP_DB,
        "create table kept (x int); insert into kept values (7)",
    );
    pg.sql("postgres", "checkpoint");
    pg.stop();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    pg.restart();
    assert_eq!(pg.port, port);
    assert_eq!(pg.sql(APP_DB, "select x from kept"), "7");
}

/// Run as a child by `a_killed_test_process_leaves_nothing_behind`: holds a
/// server and a process until it is SIGKILLed.
#[test]
#[ignore = "helper: run by a_killed_test_process_leaves_nothing_behind"]
fn helper_hold_resources_until_killed() {
    let pg = PgServer::start();
    let mut cmd = Command::new("sleep");
    cmd.arg("300");
    let sleeper = Process::spawn(cmd, "sleeper");
    println!(
        "READY {} {} {} {}",
        pg.port,
        sleeper.pid(),
        pg.data_dir().display(),
        sleeper.log_path().display()
    );
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(300));
}

/// `Drop` never runs when nextest kills a hung test; the watchdogs must then
/// stop the server, delete its files and kill spawned processes.
#[test]
fn a_killed_test_process_leaves_nothing_behind() {
    let mut holder = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "helper_hold_resources_until_killed"])
        .args(["--ignored", "--nocapture", "--test-threads=1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = read_ready_line(holder.stdout.take().unwrap());
    let Some(ready) = ready else {
        let _ = holder.kill();
        panic!("helper never reported READY");
    };
    let fields: Vec<&str> = ready.split(' ').collect();
    let (port, sleeper, data, log) = (fields[1], fields[2], Path::new(fields[3]), fields[4]);
    assert!(data.exists());

    holder.kill().unwrap();
    holder.wait().unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    let cleaned = || {
        TcpStream::connect(format!("127.0.0.1:{port}")).is_err()
            && !data.exists()
            && !is_alive(sleeper)
    };
    while !cleaned() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        cleaned(),
        "left behind: port {port} open? data {} exists? sleeper {sleeper} alive?",
        data.display()
    );
    // The killed helper could not delete its log; nothing failed, so do it here.
    let _ = std::fs::remove_file(log);
}

/// The helper's `READY port pid data_dir` (libtest prints it after the test
/// name, on the same line), waiting at most 60 s.
fn read_ready_line(stdout: impl std::io::Read + Send + 'static) -> Option<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(at) = line.find("READY ") {
                let _ = tx.send(line[at..].to_owned());
                return;
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60)).ok()
}

/// Running and not a zombie (an orphan may wait a while to be reaped).
fn is_alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

//! Isolated, real PostgreSQL servers for tests.
//!
//! Each [`PgServer`] is a copy of a template cluster (see `template.rs`) started
//! on its own free port, listening on 127.0.0.1 and on a unix socket in its own
//! temp dir, with TLS on (a self-signed cert for `localhost` / `127.0.0.1`) so
//! every upstream TLS mode can be tested. The template holds these roles:
//!
//! | role | password | auth (TCP and unix socket alike) | notes |
//! |---|---|---|---|
//! | `postgres` | — | none (unix socket only, trust) | superuser, used by [`PgServer::sql`] |
//! | `app_scram` | `scram-secret` | SCRAM-SHA-256 | owns database `app` |
//! | `app_md5` | `md5-secret` | MD5 (password stored as md5) | all rights on `app`'s schema `public` |
//!
//! The postmaster is our own child process (not daemonized by `pg_ctl`), so
//! stopping it is a signal plus a wait, and a watchdog removes it and its files
//! if the test process is killed before `Drop` can run.

mod template;

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::os;
use crate::process::{read_lossy, run_with_input, tail};
use crate::watchdog::Watchdog;

/// The superuser; reachable only over the unix socket, with trust auth.
pub const SUPERUSER: &str = "postgres";
/// A login role authenticated with SCRAM-SHA-256; owns [`APP_DB`].
pub const SCRAM_USER: &str = "app_scram";
/// [`SCRAM_USER`]'s password (a test fixture, not a secret).
pub const SCRAM_PASSWORD: &str = "scram-secret";
/// A login role whose password is stored as MD5, so the server asks for MD5 auth.
pub const MD5_USER: &str = "app_md5";
/// [`MD5_USER`]'s password (a test fixture, not a secret).
pub const MD5_PASSWORD: &str = "md5-secret";
/// The application database, owned by [`SCRAM_USER`].
pub const APP_DB: &str = "app";

/// How long a postmaster may take to become ready or to stop.
const PG_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one `psql` run may take before the test fails instead of hanging.
const PSQL_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts at a free port: another process can take one between pick and bind.
const PORT_ATTEMPTS: usize = 5;

/// An isolated real PostgreSQL server on a free port; stopped (immediate
/// shutdown, like `pg_ctl stop -m immediate`) and deleted on drop.
pub struct PgServer {
    /// The TCP port, on [`PgServer::host`].
    pub port: u16,
    /// Always `"127.0.0.1"`: the server listens on loopback only.
    pub host: String,
    bin: PathBuf,
    // Holds data/, run/ (the socket), postgres.log and server.crt; removed on drop.
    root: TempDir,
    run_dir: PathBuf,
    postmaster: Option<Child>,
    watchdog: Option<Watchdog>,
    /// Server settings passed as `-c name=value` at every start.
    settings: Vec<(String, String)>,
}

impl PgServer {
    /// Starts a new server from the shared template: a copy and a start, well
    /// under a second once the template exists (the first call per target dir
    /// runs `initdb`, a few seconds). Panics with the server log on failure.
    pub fn start() -> PgServer {
        Self::start_with(&[])
    }

    /// [`PgServer::start`] with server settings (`-c name=value`), for
    /// those only a start can set (`shared_preload_libraries`).
    pub fn start_with(settings: &[(&str, &str)]) -> PgServer {
        let bin = bindir();
        let root = new_server_dir();
        template::copy_data_into(&bin, &root.path().join("data"));
        let settings = settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        PgServer::boot(bin, root, settings)
    }

    /// Starts the cluster whose data dir is `root/data` on a free port.
    fn boot(bin: PathBuf, root: TempDir, settings: Vec<(String, String)>) -> PgServer {
        let run_dir = root.path().join("run");
        std::fs::create_dir_all(&run_dir).expect("create socket dir");
        os::give_to_db_owner(&run_dir);
        let cert = root.path().join("data/server.crt");
        if cert.exists() {
            // A readable copy outside the 0700 data dir, for clients' sslrootcert.
            std::fs::copy(&cert, root.path().join("server.crt")).expect("copy server.crt");
        }
        let mut server = PgServer {
            port: 0,
            host: "127.0.0.1".to_owned(),
            bin,
            root,
            run_dir,
            postmaster: None,
            watchdog: None,
            settings,
        };
        server.launch_on_free_port();
        server
    }

    /// Runs `sql` (one or more statements, or psql meta-commands such as
    /// `\connect`) as the superuser over the unix socket, with `ON_ERROR_STOP`.
    /// Returns query results unaligned and tuples-only (`-At`, fields separated
    /// by `|`, one row per line, trailing newline trimmed; command tags are
    /// suppressed). Panics with psql's stderr on any error.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        let mut cmd = clean_psql(Some(&self.bin));
        cmd.arg("-h").arg(self.socket_dir()).args([
            "-p",
            &self.port.to_string(),
            "-U",
            SUPERUSER,
            "-d",
            db,
        ]);
        cmd.args(["-q", "-f", "-"]);
        let out = run_with_input(&mut cmd, Some(sql.as_bytes()), PSQL_TIMEOUT);
        if !out.success() {
            panic!(
                "psql on port {} db {db} failed ({:?}) for:\n{sql}\nstderr:\n{}",
                self.port, out.code, out.stderr
            );
        }
        out.stdout.trim_end_matches('\n').to_owned()
    }

    /// The directory holding the server's unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The server's data directory (owned by the `postgres` OS user when root).
    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// The server's self-signed certificate (CN and SAN `localhost`, SAN IP
    /// 127.0.0.1), usable as `sslrootcert` for `verify-full`.
    pub fn ca_cert(&self) -> PathBuf {
        self.root.path().join("server.crt")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log_path())
    }

    /// A libpq connection string for `user` on `db` over TCP, without a password
    /// or sslmode (append `" sslmode=require"` and the like as needed).
    pub fn conninfo(&self, user: &str, db: &str) -> String {
        format!(
            "host={} port={} dbname={db} user={user}",
            self.host, self.port
        )
    }

    /// A `psql` command connecting over TCP as `user` to `db`, with the fixture
    /// password of [`SCRAM_USER`] or [`MD5_USER`] set; see [`psql`].
    pub fn psql(&self, user: &str, db: &str) -> Command {
        let password = match user {
            SCRAM_USER => Some(SCRAM_PASSWORD),
            MD5_USER => Some(MD5_PASSWORD),
            _ => None,
        };
        psql(&self.conninfo(user, db), password)
    }

    /// Stops the server at once (immediate shutdown), as an upstream outage would.
    pub fn stop(&mut self) {
        self.watchdog = None;
        if let Some(child) = self.postmaster.take() {
            stop_postmaster(child, libc::SIGQUIT);
        }
    }

    /// Stops (immediately) and starts the same cluster again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.launch(self.port)
            .unwrap_or_else(|log| panic!("restart on port {}: {log}", self.port));
    }

    fn log_path(&self) -> PathBuf {
        self.root.path().join("postgres.log")
    }

    /// Picks free ports until the postmaster binds one.
    fn launch_on_free_port(&mut self) {
        let mut last_log = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = crate::free_port();
            match self.launch(port) {
                Ok(()) => return,
                Err(log) if is_port_conflict(&log) => last_log = log,
                Err(log) => panic!("PostgreSQL did not start on port {port}:\n{log}"),
            }
        }
        panic!("PostgreSQL found no free port in {PORT_ATTEMPTS} attempts:\n{last_log}");
    }

    /// Starts the postmaster on `port` and waits until it accepts connections;
    /// on failure returns the tail of its log.
    fn launch(&mut self, port: u16) -> Result<(), String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open postgres.log");
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-p", &port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(&self.run_dir)
            .args(
                self.settings
                    .iter()
                    .flat_map(|(k, v)| ["-c".into(), format!("{k}={v}")]),
            )
            .current_dir(self.root.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            // Its own group: nextest's group-wide SIGTERM on a hung test would
            // otherwise start a slow "smart" shutdown; the watchdog cleans up.
            .process_group(0);
        os::run_as_db_owner(&mut cmd);
        let child = cmd.spawn().expect("spawn postgres");
        let child = wait_ready(child, &self.data_dir())
            .map_err(|why| format!("{why}\n{}", tail(&self.log(), 8 * 1024)))?;
        self.watchdog = Watchdog::spawn(
            "kill -QUIT \"$1\" 2>/dev/null; i=0; \
             while kill -0 \"$1\" 2>/dev/null && [ \"$i\" -lt 100 ]; do sleep 0.1; i=$((i+1)); done; \
             rm -rf \"$2\"",
            &[child.id().to_string().as_ref(), self.root.path().as_os_str()],
        );
        self.postmaster = Some(child);
        self.port = port;
        Ok(())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "--- test failed; PostgreSQL on port {} log ---\n{}",
                self.port,
                tail(&self.log(), 8 * 1024)
            );
        }
    }
}

/// A `psql` command for `conninfo` (e.g. [`PgServer::conninfo`], or the
/// gateway's address), with the password passed as `PGPASSWORD` (an OIDC token
/// for the gateway). Runs with `-X -v ON_ERROR_STOP=1 -At`, a 10 s connect
/// timeout, and every inherited `PG*` variable removed so the host environment
/// cannot change what is tested. Add `-c SQL` or feed stdin, then [`crate::run`].
pub fn psql(conninfo: &str, password: Option<&str>) -> Command {
    let mut cmd = clean_psql(find_bindir().as_deref());
    cmd.arg("-d").arg(conninfo);
    if let Some(password) = password {
        cmd.env("PGPASSWORD", password);
    }
    cmd
}

/// psql with no startup file, stop-on-error, unaligned tuples-only output, and
/// no `PG*` settings from our environment. Prefers the server's own psql.
fn clean_psql(bin: Option<&Path>) -> Command {
    let program = bin
        .map(|dir| dir.join("psql"))
        .filter(|psql| psql.is_file())
        .unwrap_or_else(|| PathBuf::from("psql"));
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.env("PGCONNECT_TIMEOUT", "10")
        .env("PGPASSFILE", "/dev/null")
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-At"]);
    cmd
}

/// Waits until `postmaster.pid` says "ready" for this child (the check `pg_ctl
/// -w` makes), or the child exits, or [`PG_TIMEOUT`] passes.
fn wait_ready(mut child: Child, data_dir: &Path) -> Result<Child, String> {
    let deadline = Instant::now() + PG_TIMEOUT;
    let pid_file = data_dir.join("postmaster.pid");
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("postgres exited ({status})"));
        }
        let contents = std::fs::read_to_string(&pid_file).unwrap_or_default();
        if is_ready(&contents, child.id()) {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            stop_postmaster(child, libc::SIGKILL);
            return Err(format!("postgres not ready within {PG_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `postmaster.pid`: line 1 is the pid, line 8 the status; a stale file left by
/// a killed server names another pid, so both are checked.
fn is_ready(pid_file: &str, pid: u32) -> bool {
    let lines: Vec<&str> = pid_file.lines().collect();
    lines.first().map(|l| l.trim()) == Some(pid.to_string().as_str())
        && lines.get(7).map(|l| l.trim()) == Some("ready")
}

fn is_port_conflict(log: &str) -> bool {
    log.contains("could not bind") || log.contains("Address already in use")
}

/// Signals the postmaster (SIGQUIT immediate, SIGINT fast shutdown) and reaps
/// it, escalating to SIGKILL after [`PG_TIMEOUT`].
fn stop_postmaster(mut child: Child, signal: libc::c_int) -> Option<ExitStatus> {
    os::send_signal(child.id(), signal);
    let deadline = Instant::now() + PG_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A fresh directory for one cluster that the `postgres` user can traverse.
fn new_server_dir() -> TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("portcullis-pg-")
        .tempdir_in(os::server_tmp_root())
        .expect("create PostgreSQL temp dir");
    // tempfile makes it 0700; postgres (another user when we are root) must enter it.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod PostgreSQL temp dir");
    dir
}

/// PostgreSQL's server binaries: `$PORTCULLIS_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian's layout), else `pg_config --bindir`.
fn bindir() -> PathBuf {
    find_bindir().unwrap_or_else(|| {
        panic!(
            "PostgreSQL server binaries (initdb, postgres) not found; \
             run ./scripts/install-deps or set PORTCULLIS_PG_BIN"
        )
    })
}

fn find_bindir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PORTCULLIS_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    newest_debian_bindir()
        .or_else(pg_config_bindir)
        .filter(|dir| dir.join("initdb").is_file())
}

fn newest_debian_bindir() -> Option<PathBuf> {
    let entries = std::fs::read_dir("/usr/lib/postgresql").ok()?;
    entries
        .filter_map(|e| {
            let name = e.ok()?.file_name();
            let version: u32 = name.to_str()?.parse().ok()?;
            let bin = Path::new("/usr/lib/postgresql").join(&name).join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin)| bin)
}

fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    let dir = String::from_utf8(out.stdout).ok()?;
    out.status.success().then(|| PathBuf::from(dir.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_our_pid_and_ready_status() {
        let file = "4242\n/data\n1700000000\n5432\n/run\n127.0.0.1\n  1234  5678\nready   \n";
        assert!(is_ready(file, 4242));
        assert!(
            !is_ready(file, 4243),
            "stale pid file from another postmaster"
        );
        assert!(!is_ready(&file.replace("ready   ", "starting"), 4242));
        assert!(!is_ready("", 4242));
    }

    #[test]
    fn bindir_has_initdb() {
        assert!(bindir().join("initdb").is_file());
    }
}

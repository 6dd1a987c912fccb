//! One gateway environment per test: a real PostgreSQL, the dev issuer and
//! `portcullis serve`, each on its own free port, all torn down on drop.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use test_support::{free_port, run, run_with_input, wait_for_port, Output, PgServer, Process};

pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Knobs a test may turn; `Default` is the common case.
pub struct Options {
    pub upstream_user: &'static str,
    pub upstream_password: &'static str,
    pub upstream_tls: &'static str,
    /// Reach the upstream through its Unix-socket directory instead of TCP.
    pub upstream_socket: bool,
    /// CA bundle for `tls: verify-full`.
    pub upstream_ca: Option<PathBuf>,
    /// Extra lines under `upstream:` (`channel_binding: require`), each
    /// starting with a newline and indented by six spaces.
    pub upstream_extra: &'static str,
    /// Where the audit store lives; the test's temp dir when `None`.
    pub store_path: Option<PathBuf>,
    pub insecure_plaintext: bool,
    pub leeway: &'static str,
    pub policies: String,
    /// Trust this already-running issuer instead of starting `portcullis dev-idp`
    /// (then [`Env::token`] cannot be used).
    pub issuer: Option<String>,
    /// The claim that names the principal.
    pub principal_claim: &'static str,
    /// `admin.approval_timeout`.
    pub approval_timeout: &'static str,
    /// Extra lines under `admin:` (webhooks), indented by two spaces.
    pub admin_extra: String,
    /// A second PostgreSQL listener (`app-db-b`, plaintext allowed, same upstream, no policy)
    /// on this port.
    pub second_listener: Option<u16>,
    /// `workers:` (runtime threads); omitted when `None`.
    pub workers: Option<usize>,
    /// PostgreSQL settings given at its start (`shared_preload_libraries`).
    pub pg_settings: &'static [(&'static str, &'static str)],
}

impl Default for Options {
    fn default() -> Self {
        Self {
            upstream_user: test_support::SCRAM_USER,
            upstream_password: test_support::SCRAM_PASSWORD,
            upstream_tls: "prefer",
            upstream_socket: false,
            upstream_ca: None,
            upstream_extra: "",
            store_path: None,
            insecure_plaintext: false,
            leeway: "30s",
            policies: DEFAULT_POLICIES.to_string(),
            issuer: None,
            principal_claim: "sub",
            approval_timeout: "5m",
            admin_extra: String::new(),
            second_listener: None,
            workers: None,
            pg_settings: &[],
        }
    }
}

/// `ci` may read; `deployer` may also write; nobody may DROP or TRUNCATE.
pub const DEFAULT_POLICIES: &str = r#"
  - name: ci-reads
    match: { groups: [ci] }
    connection: app-db
    allow: [read]
    deny: ["DROP *", "TRUNCATE *"]
  - name: deployer-writes
    match: { principals: ["deployer"] }
    connection: app-db
    allow: [read, write]
    deny: ["DROP *", "TRUNCATE *"]
"#;

pub struct Env {
    pub pg: PgServer,
    pub issuer: String,
    pub gw_port: u16,
    /// The admin API's port (every test gets its own).
    pub admin_port: u16,
    pub config: PathBuf,
    idp: Option<Process>,
    gateway: Option<Process>,
    dir: tempfile::TempDir,
    opts: Options,
}

impl Env {
    pub fn start() -> Env {
        Self::with(Options::default())
    }

    pub fn with(opts: Options) -> Env {
        let pg = PgServer::start_with(opts.pg_settings);
        pg.sql(
            "app",
            "create table items (id int primary key, name text);
             insert into items select g, 'item ' || g from generate_series(1, 10) g;
             alter table items owner to app_scram;
             grant all on items to app_md5;",
        );
        let dir = test_support::temp_dir();
        let (issuer, idp) = match &opts.issuer {
            Some(issuer) => (issuer.clone(), None),
            None => {
                let (issuer, idp) = start_dev_idp();
                (issuer, Some(idp))
            }
        };
        let gw_port = free_port();
        let admin_port = free_port();
        let config = dir.path().join("portcullis.yaml");
        std::fs::write(
            &config,
            config_text(&opts, &issuer, &pg, (gw_port, admin_port), dir.path()),
        )
        .expect("write config");
        let mut env = Env {
            pg,
            issuer,
            gw_port,
            admin_port,
            config,
            idp,
            gateway: None,
            dir,
            opts,
        };
        env.start_gateway();
        env
    }

    /// Rewrites the config with changed options and restarts the gateway on
    /// the same port and store (for settings that need the server first).
    pub fn restart_gateway_with(&mut self, change: impl FnOnce(&mut Options)) {
        change(&mut self.opts);
        if let Some(mut g) = self.gateway.take() {
            g.kill9();
        }
        let text = config_text(
            &self.opts,
            &self.issuer,
            &self.pg,
            (self.gw_port, self.admin_port),
            self.dir.path(),
        );
        std::fs::write(&self.config, text).expect("write config");
        self.start_gateway();
    }

    pub fn start_gateway(&mut self) {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"]).arg(&self.config);
        cmd.env("RUST_LOG", "info,portcullis=debug");
        let gw = Process::spawn(cmd, "portcullis-serve");
        wait_for_port(&format!("127.0.0.1:{}", self.gw_port), Some(&gw));
        wait_for_port(&format!("127.0.0.1:{}", self.admin_port), Some(&gw));
        if let Some(port) = self.opts.second_listener {
            wait_for_port(&format!("127.0.0.1:{port}"), Some(&gw));
        }
        self.gateway = Some(gw);
    }

    pub fn gateway(&mut self) -> &mut Process {
        self.gateway.as_mut().expect("gateway running")
    }

    /// The running gateway's process id, to read its memory from /proc.
    pub fn gateway_pid(&self) -> Option<u32> {
        self.gateway.as_ref().map(|g| g.pid())
    }

    pub fn gateway_log(&self) -> String {
        self.gateway.as_ref().map(|g| g.log()).unwrap_or_default()
    }

    pub fn kill9_gateway(&mut self) {
        if let Some(mut g) = self.gateway.take() {
            g.kill9();
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A token from the dev issuer via `portcullis token`, as a CI job gets one.
    pub fn token(&self, sub: &str, groups: &[&str]) -> String {
        self.token_with(sub, groups, &[])
    }

    pub fn token_with(&self, sub: &str, groups: &[&str], extra: &[&str]) -> String {
        token_from(&self.issuer, sub, groups, extra)
    }

    pub fn conninfo(&self, sslmode: &str) -> String {
        format!(
            "host=127.0.0.1 port={} dbname=app user=ci sslmode={sslmode}",
            self.gw_port
        )
    }

    /// psql through the gateway with `token` as the password; `sql` on stdin.
    pub fn psql(&self, token: &str, sql: &str) -> Output {
        self.psql_mode(token, sql, "require")
    }

    pub fn psql_mode(&self, token: &str, sql: &str, sslmode: &str) -> Output {
        let mut cmd = Command::new("psql");
        cmd.arg(self.conninfo(sslmode))
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=0", "-f", "-"])
            .env("PGPASSWORD", token)
            .env("PGCONNECT_TIMEOUT", "20")
            .env_remove("PGSERVICE");
        run_with_input(&mut cmd, Some(sql.as_bytes()), TIMEOUT)
    }

    /// A record-reading CLI command against this environment's store.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli(&self.config, args)
    }

    /// The admin API's base URL.
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// A `grants` / `approvals` command as the holder of `token`, against
    /// this gateway's admin API.
    pub fn cli_as(&self, token: &str, args: &[&str]) -> Output {
        cli_as(&self.admin_url(), token, args)
    }

    /// Like [`Env::cli_as`] with `--json`, parsing what it prints.
    pub fn cli_json(&self, token: &str, args: &[&str]) -> serde_json::Value {
        cli_json(&self.admin_url(), token, args)
    }

    /// All records as JSON values (`audit export --format jsonl`).
    pub fn records(&self) -> Vec<serde_json::Value> {
        records(&self.config)
    }

    /// Waits until a record satisfying `pred` exists (results are written
    /// after the fact, so they may trail the client's view by a moment).
    pub fn wait_for_record(&self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        wait_for_record(&self.config, pred)
    }
}

/// Starts `portcullis dev-idp` on a free port; returns its issuer URL.
pub fn start_dev_idp() -> (String, Process) {
    let idp_port = free_port();
    let mut cmd = Command::new(BIN);
    cmd.args(["dev-idp", "--listen", &format!("127.0.0.1:{idp_port}")]);
    let idp = Process::spawn(cmd, "dev-idp");
    wait_for_port(&format!("127.0.0.1:{idp_port}"), Some(&idp));
    (format!("http://127.0.0.1:{idp_port}"), idp)
}

/// A token from the dev issuer via `portcullis token`, as a CI job gets one.
pub fn token_from(issuer: &str, sub: &str, groups: &[&str], extra: &[&str]) -> String {
    let mut cmd = Command::new(BIN);
    cmd.args(["token", "--issuer", issuer, "--sub", sub]);
    if !groups.is_empty() {
        cmd.args(["--groups", &groups.join(",")]);
    }
    cmd.args(extra);
    let out = run(&mut cmd, TIMEOUT);
    assert!(out.success(), "portcullis token failed: {}", out.stderr);
    out.stdout.trim().to_string()
}

/// A `grants` / `approvals` command as the holder of `token`, against the
/// admin API at `admin_url`.
pub fn cli_as(admin_url: &str, token: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .args(["--admin", admin_url])
        .env("PORTCULLIS_TOKEN", token);
    run(&mut cmd, TIMEOUT)
}

/// Like [`cli_as`] with `--json`, parsing what it prints.
pub fn cli_json(admin_url: &str, token: &str, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = cli_as(admin_url, token, &all);
    assert!(
        out.success(),
        "{args:?} failed: {}{}",
        out.stdout,
        out.stderr
    );
    serde_json::from_str(&out.stdout).expect("JSON output")
}

/// A record-reading CLI command against the store of `config`.
pub fn cli(config: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).arg("--config").arg(config);
    run(&mut cmd, TIMEOUT)
}

/// All records as JSON values (`audit export --format jsonl`).
pub fn records(config: &Path) -> Vec<serde_json::Value> {
    let out = cli(config, &["audit", "export", "--format", "jsonl"]);
    assert!(out.success(), "export failed: {}", out.stderr);
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("jsonl record"))
        .collect()
}

/// Waits until a record satisfying `pred` exists.
pub fn wait_for_record(
    config: &Path,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    for _ in 0..100 {
        if let Some(r) = records(config).into_iter().find(|r| pred(r)) {
            return r;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no matching record; records: {:#?}", records(config));
}

fn config_text(
    opts: &Options,
    issuer: &str,
    pg: &PgServer,
    (gw_port, admin_port): (u16, u16),
    dir: &Path,
) -> String {
    format!(
        r#"
admin:
  listen: 127.0.0.1:{admin_port}
  approval_timeout: {approval_timeout}
{admin_extra}
store: sqlite://{store}{workers}
data_dir: {dir}/data
identity:
  oidc:
    - issuer: {issuer}
      audience: portcullis
      principal_claim: {principal_claim}
      groups_claim: groups
      leeway: {leeway}
  approvers:
    groups: [sre]
connections:
  - name: app-db
    type: postgres
    listen: 127.0.0.1:{gw_port}
    insecure_plaintext: {plain}
    upstream:
      host: {pg_host}
      port: {pg_port}
      database: app
      user: {user}
      password: {password}
      tls: {tls}{ca}{upstream_extra}{second}
policies:
{policies}
"#,
        dir = dir.display(),
        store = opts
            .store_path
            .clone()
            .unwrap_or_else(|| dir.join("portcullis.db"))
            .display(),
        leeway = opts.leeway,
        approval_timeout = opts.approval_timeout,
        admin_extra = opts.admin_extra,
        principal_claim = opts.principal_claim,
        plain = opts.insecure_plaintext,
        pg_host = match opts.upstream_socket {
            true => pg.socket_dir().display().to_string(),
            false => pg.host.clone(),
        },
        pg_port = pg.port,
        user = opts.upstream_user,
        password = opts.upstream_password,
        tls = opts.upstream_tls,
        upstream_extra = opts.upstream_extra,
        ca = opts
            .upstream_ca
            .as_ref()
            .map(|p| format!("\n      ca_file: {}", p.display()))
            .unwrap_or_default(),
        policies = opts.policies,
        workers = opts
            .workers
            .map(|n| format!("\nworkers: {n}"))
            .unwrap_or_default(),
        second = opts
            .second_listener
            .map(|port| {
                format!(
                    "\n  - name: app-db-b\n    type: postgres\n    listen: 127.0.0.1:{port}\n    \
                     insecure_plaintext: true\n    upstream: {{ host: {}, port: {}, database: app, \
                     user: {}, password: {} }}",
                    pg.host, pg.port, opts.upstream_user, opts.upstream_password
                )
            })
            .unwrap_or_default(),
    )
}

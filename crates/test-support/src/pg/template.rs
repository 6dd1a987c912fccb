//! The template cluster every [`PgServer`] starts from.
//!
//! `initdb` plus role setup takes seconds; copying a finished data dir takes a
//! fraction of one. So the first server built in a target dir runs `initdb`
//! once into `target/test-pg-template/`, and every server after that copies it.
//! Test processes run in parallel (nextest runs one process per test), so the
//! template is guarded by a file lock: readers copy under a shared lock, and
//! the one process that finds it missing or stale rebuilds it under an
//! exclusive lock. A stamp file, written last, marks a complete template; a
//! change to [`STAMP`] (or to the PostgreSQL binaries' directory) rebuilds it.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{new_server_dir, PgServer, MD5_PASSWORD, MD5_USER, SCRAM_PASSWORD, SCRAM_USER};
use crate::os;
use crate::process::run;

/// Bump when the template's contents (settings, roles, databases) change.
const STAMP: &str = "portcullis test-pg-template v4";

/// How long initdb, openssl or a copy of the data dir may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// Server settings appended to `postgresql.conf`. Durability is off because
/// test clusters are thrown away; TLS is on so upstream TLS modes are testable.
const SETTINGS: &str = "
# Added by crates/test-support (pg/template.rs).
ssl = on
password_encryption = 'scram-sha-256'
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 32MB
max_connections = 100
log_connections = on
";

/// Client authentication: the superuser only over the socket; the app roles
/// as over TCP, so a gateway can log in through the socket too; `host` lines
/// match TLS and plaintext alike.
const PG_HBA: &str = "\
# TYPE  DATABASE  USER      ADDRESS        METHOD
local   all       postgres                 trust
local   all       app_md5                  md5
local   all       all                      scram-sha-256
host    all       app_md5   127.0.0.1/32   md5
host    all       all       127.0.0.1/32   scram-sha-256
";

/// Copies the template's data dir to `dest` (which must not exist yet),
/// building the template first if it is missing or stale.
pub(super) fn copy_data_into(bin: &Path, dest: &Path) {
    let dir = os::target_dir().join("test-pg-template");
    let stamp = format!("{STAMP}\n{}\n", bin.display());
    loop {
        let lock = open_lock(&dir);
        lock.lock_shared()
            .expect("shared lock on PostgreSQL template");
        if is_complete(&dir, &stamp) {
            copy_tree(&dir.join("data"), dest);
            return;
        }
        drop(lock);
        let lock = open_lock(&dir);
        lock.lock().expect("exclusive lock on PostgreSQL template");
        // Another process may have built it while we waited for the lock.
        if !is_complete(&dir, &stamp) {
            build(bin, &dir, &stamp);
        }
        // Loop back for a shared lock so copies never block each other.
    }
}

fn open_lock(dir: &Path) -> File {
    let path = dir.with_extension("lock");
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create target dir");
    }
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

fn is_complete(dir: &Path, stamp: &str) -> bool {
    let data = dir.join("data");
    std::fs::read_to_string(dir.join("stamp")).is_ok_and(|s| s == stamp)
        && data.join("PG_VERSION").is_file()
        && data.join("global/pg_control").is_file()
}

/// `cp -a`, so ownership (the `postgres` user) and modes survive the copy.
fn copy_tree(src: &Path, dest: &Path) {
    let mut cmd = Command::new("cp");
    cmd.arg("-a").arg(src).arg(dest);
    let out = run(&mut cmd, STEP_TIMEOUT);
    if !out.success() {
        panic!("cp -a {} {}: {}", src.display(), dest.display(), out.stderr);
    }
}

/// Builds a fresh cluster in a temp dir, then publishes it at `dir` atomically
/// (copy to a staging dir beside it, write the stamp, rename).
fn build(bin: &Path, dir: &Path, stamp: &str) {
    let work = new_server_dir();
    let data = work.path().join("data");
    initdb(bin, work.path(), &data);
    make_cert(work.path(), &data);
    configure(&data);

    let mut server = PgServer::boot(bin.to_path_buf(), work, Vec::new());
    server.sql("postgres", &setup_sql());
    // A fast (not immediate) shutdown checkpoints, so copies start without recovery.
    server.watchdog = None;
    if let Some(child) = server.postmaster.take() {
        let status = super::stop_postmaster(child, libc::SIGINT);
        assert!(
            status.is_some_and(|s| s.success()),
            "template server did not shut down cleanly ({status:?}):\n{}",
            server.log()
        );
    }

    remove_stale_staging(dir);
    let staging: PathBuf = dir.with_extension(format!("staging-{}", std::process::id()));
    std::fs::create_dir_all(&staging).expect("create template staging dir");
    copy_tree(&data, &staging.join("data"));
    std::fs::write(staging.join("stamp"), stamp).expect("write template stamp");
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&staging, dir).expect("publish PostgreSQL template");
}

/// Staging dirs left by builders that were killed mid-copy. Only called under
/// the exclusive lock, so none of them is in use.
fn remove_stale_staging(dir: &Path) {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return;
    };
    let prefix = format!("{}.staging-", name.to_string_lossy());
    for entry in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn initdb(bin: &Path, work: &Path, data: &Path) {
    std::fs::create_dir(data).expect("create data dir");
    std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700)).expect("chmod data dir");
    os::give_to_db_owner(data);
    let mut cmd = Command::new(bin.join("initdb"));
    cmd.arg("-D")
        .arg(data)
        .args(["-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"])
        .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
        // 1 MB WAL segments instead of 16: every server copies pg_wal.
        .arg("--wal-segsize=1")
        .current_dir(work);
    os::run_as_db_owner(&mut cmd);
    step("initdb", &mut cmd);
}

/// A self-signed certificate valid for `localhost` and 127.0.0.1, so clients
/// can use it as their root for `verify-full`.
fn make_cert(work: &Path, data: &Path) {
    let mut cmd = Command::new("openssl");
    cmd.args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256"])
        .args(["-days", "3650", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        // A server certificate, not a CA: rustls (webpki) refuses a CA
        // certificate presented as the server's own, as it should.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(data.join("server.key"))
        .arg("-out")
        .arg(data.join("server.crt"))
        .current_dir(work);
    os::run_as_db_owner(&mut cmd);
    step("openssl req", &mut cmd);
    // PostgreSQL refuses a key readable by others.
    std::fs::set_permissions(
        data.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod server.key");
}

fn configure(data: &Path) {
    // Appending/overwriting keeps the files' owner (postgres), as it must be.
    let mut conf = File::options()
        .append(true)
        .open(data.join("postgresql.conf"))
        .expect("open postgresql.conf");
    conf.write_all(SETTINGS.as_bytes())
        .expect("append to postgresql.conf");
    std::fs::write(data.join("pg_hba.conf"), PG_HBA).expect("write pg_hba.conf");
}

/// Roles and the `app` database. `app_md5`'s password is hashed with md5 on
/// purpose: the server only runs the MD5 exchange for md5-stored passwords.
fn setup_sql() -> String {
    format!(
        "SET password_encryption = 'scram-sha-256';
CREATE ROLE {SCRAM_USER} LOGIN PASSWORD '{SCRAM_PASSWORD}';
SET password_encryption = 'md5';
CREATE ROLE {MD5_USER} LOGIN PASSWORD '{MD5_PASSWORD}';
RESET password_encryption;
CREATE DATABASE app OWNER {SCRAM_USER};
\\connect app
GRANT ALL ON SCHEMA public TO {MD5_USER};
"
    )
}

fn step(what: &str, cmd: &mut Command) {
    let out = run(cmd, STEP_TIMEOUT);
    if !out.success() {
        panic!(
            "{what} failed ({:?}) while building the PostgreSQL template:\n{}{}",
            out.code, out.stdout, out.stderr
        );
    }
}

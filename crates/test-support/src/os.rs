//! The few operating-system facts the harness depends on: who we run as, where the
//! cargo target directory is, and how to hand files and commands to the `postgres`
//! OS user when we are root (`initdb` and `postgres` refuse to run as root).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// True when the effective user is root, so PostgreSQL must run as another user.
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Uid and gid of the `postgres` OS user (created by Debian's `postgresql` package).
fn postgres_ids() -> (u32, u32) {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *IDS.get_or_init(|| {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        parse_passwd(&passwd, "postgres").unwrap_or_else(|| {
            panic!(
                "running as root, but there is no `postgres` OS user to run PostgreSQL as; \
                 run ./scripts/install-deps (apt's postgresql package creates it)"
            )
        })
    })
}

/// Finds `user`'s uid and gid in /etc/passwd text.
fn parse_passwd(passwd: &str, user: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != user {
            return None;
        }
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some((uid, gid))
    })
}

/// Makes `cmd` run as the OS user that owns PostgreSQL data: `postgres` when we are
/// root, ourselves otherwise. std drops supplementary groups when it sets the uid.
pub(crate) fn run_as_db_owner(cmd: &mut Command) {
    if is_root() {
        let (uid, gid) = postgres_ids();
        cmd.uid(uid).gid(gid);
    }
}

/// Gives `path` to the OS user PostgreSQL runs as (a no-op unless we are root).
pub(crate) fn give_to_db_owner(path: &Path) {
    if is_root() {
        let (uid, gid) = postgres_ids();
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {} to postgres: {e}", path.display()));
    }
}

/// Where per-server temp dirs go. As root that is `/tmp`, because the `postgres`
/// user must be able to traverse every parent and `$TMPDIR` may be private.
pub(crate) fn server_tmp_root() -> PathBuf {
    if is_root() && Path::new("/tmp").is_dir() {
        PathBuf::from("/tmp")
    } else {
        std::env::temp_dir()
    }
}

/// The cargo target directory, found from the running test binary
/// (`target/debug/deps/NAME-HASH`): the nearest ancestor holding cargo's
/// `CACHEDIR.TAG`. Falls back to `$CARGO_TARGET_DIR`, then a per-user temp dir,
/// so the harness still works for a binary copied elsewhere.
pub(crate) fn target_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let from_exe = std::env::current_exe().ok().and_then(|exe| {
            exe.ancestors()
                .find(|dir| dir.join("CACHEDIR.TAG").is_file())
                .map(Path::to_path_buf)
        });
        let from_env = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute());
        from_exe.or(from_env).unwrap_or_else(|| {
            // SAFETY: geteuid has no preconditions and cannot fail.
            let uid = unsafe { libc::geteuid() };
            std::env::temp_dir().join(format!("portcullis-test-{uid}"))
        })
    })
    .clone()
}

/// Sends `signal` to `pid`; errors (the process is already gone) are ignored
/// because every caller follows up by waiting for the process anyway.
pub(crate) fn send_signal(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) with a positive pid only signals that one process.
    unsafe {
        libc::kill(pid, signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_passwd_entries() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      postgres:x:101:104:PostgreSQL administrator:/var/lib/postgresql:/bin/bash\n";
        assert_eq!(parse_passwd(passwd, "postgres"), Some((101, 104)));
        assert_eq!(parse_passwd(passwd, "root"), Some((0, 0)));
        assert_eq!(parse_passwd(passwd, "post"), None);
        assert_eq!(parse_passwd("broken", "broken"), None);
    }

    #[test]
    fn target_dir_is_found_from_the_test_binary() {
        let dir = target_dir();
        assert!(dir.is_absolute(), "{}", dir.display());
    }
}

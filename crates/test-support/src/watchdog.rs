//! Cleanup that survives the test process being killed.
//!
//! `Drop` does not run when nextest's timeout SIGKILLs a hung test, and a
//! PostgreSQL server or gateway left behind keeps its port, memory and temp dir
//! until the machine goes away. So every long-lived child gets a tiny `sh`
//! watchdog that blocks reading a pipe only we hold the write end of: the kernel
//! closes that end when our process dies, however it dies, and the watchdog then
//! runs its cleanup script. The watchdog sits in its own process group so the
//! group-wide kill nextest uses on a timed-out test does not take it down too.
//! A normal `Drop` disarms it (kills it) before stopping the child itself, so
//! it never signals a pid that may have been reused.

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

pub(crate) struct Watchdog {
    child: Child,
}

impl Watchdog {
    /// Starts `sh -c 'read; SCRIPT' watchdog ARGS...`; `$1`, `$2`… in the script are
    /// `args`. Returns `None` (no crash cleanup, tests still work) if `sh` is missing.
    pub(crate) fn spawn(script: &str, args: &[&OsStr]) -> Option<Watchdog> {
        let child = Command::new("sh")
            .arg("-c")
            // `read` returns only at EOF, i.e. when our process has gone away.
            .arg(format!("read -r _; {script}"))
            .arg("portcullis-watchdog")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .ok()?;
        Some(Watchdog { child })
    }

    /// Kills the watchdog without running its script: the caller cleans up itself.
    fn disarm(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.disarm();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn script_runs_when_the_pipe_closes_and_not_when_disarmed() {
        let dir = tempfile::tempdir().unwrap();
        let fired = dir.path().join("fired");

        // Closing stdin stands in for our process dying.
        let mut dog = Watchdog::spawn("touch \"$1\"", &[fired.as_os_str()]).unwrap();
        drop(dog.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !fired.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(fired.exists(), "watchdog did not run its script on EOF");

        std::fs::remove_file(&fired).unwrap();
        let dog = Watchdog::spawn("touch \"$1\"", &[fired.as_os_str()]).unwrap();
        drop(dog);
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !fired.exists(),
            "a disarmed watchdog must not run its script"
        );
    }
}

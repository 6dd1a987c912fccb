//! Child processes for tests: long-running ones ([`Process`]) that are killed on
//! drop and log to a file, and short commands ([`run`]) that get a timeout so a
//! hung client fails its test instead of hanging CI.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::os;
use crate::watchdog::Watchdog;

/// How much of a log's end is printed when a test fails.
const LOG_TAIL_BYTES: usize = 16 * 1024;

/// A child process (a gateway, a dev issuer…) that is SIGKILLed and reaped on
/// drop, with stdout and stderr both appended to one log file under
/// `target/test-logs/`. The log is deleted when the owner drops it normally and
/// kept, with its path and tail printed, when the owner drops it while
/// panicking (a failing test), or always if `PORTCULLIS_KEEP_LOGS` is set.
pub struct Process {
    name: String,
    // A Mutex so `&Process` can still check whether the child has exited.
    child: Mutex<Child>,
    pid: u32,
    log_path: PathBuf,
    watchdog: Option<Watchdog>,
}

impl Process {
    /// Spawns `cmd` with stdin from /dev/null and output to the log file.
    /// `name` labels the log file and panic messages ("gateway", "dev-idp").
    pub fn spawn(mut cmd: Command, name: &str) -> Process {
        let log_path = new_log_path(name);
        let log = File::create(&log_path)
            .unwrap_or_else(|e| panic!("create log {}: {e}", log_path.display()));
        let log_for_stderr = log.try_clone().expect("clone log file handle");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_for_stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({:?}): {e}", cmd.get_program()));
        let pid = child.id();
        // If the test process is killed, kill the child rather than leak it.
        let watchdog = Watchdog::spawn("kill -9 \"$1\" 2>/dev/null", &[pid.to_string().as_ref()]);
        Process {
            name: name.to_owned(),
            child: Mutex::new(child),
            pid,
            log_path,
            watchdog,
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// SIGKILLs the child and reaps it, as a crash would; for crash-recovery tests.
    pub fn kill9(&mut self) {
        // Disarm first so the watchdog can never signal a reused pid.
        self.watchdog = None;
        let mut child = self.child();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Sends SIGTERM, for tests of graceful shutdown; follow with [`Process::wait_timeout`].
    pub fn terminate(&self) {
        os::send_signal(self.pid, libc::SIGTERM);
    }

    /// The exit status if the child has exited, without blocking.
    pub fn try_wait(&self) -> Option<ExitStatus> {
        self.child().try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for the child to exit; `None` if it is still running.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything the child has written to stdout and stderr so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    /// Where the log is, for tests that want to tail it themselves.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// A description with the log's tail, for panic messages.
    pub(crate) fn describe(&self) -> String {
        format!(
            "{name} (pid {pid}), log {path}:\n{tail}",
            name = self.name,
            pid = self.pid,
            path = self.log_path.display(),
            tail = tail(&self.log(), LOG_TAIL_BYTES),
        )
    }

    fn child(&self) -> MutexGuard<'_, Child> {
        // A poisoned lock only means another thread panicked while holding it;
        // the Child inside is still valid.
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("--- test failed; {} ---", self.describe());
        } else if std::env::var_os("PORTCULLIS_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_file(&self.log_path);
        }
    }
}

/// A unique log path under `target/test-logs/`, which survives the test so a
/// failure can be investigated after the run.
fn new_log_path(name: &str) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = os::target_dir().join("test-logs");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let safe_name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{safe_name}-{}-{n}.log", std::process::id()))
}

pub(crate) fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()))
}

/// The last `max` bytes of `text`, cut at a char boundary.
pub(crate) fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// What a command printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// The exit code; `None` if a signal (including our timeout kill) ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// True if the command was killed for running past its timeout.
    pub timed_out: bool,
}

impl Output {
    /// True if the command exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs `cmd` with stdin from /dev/null, capturing stdout and stderr; kills it
/// (SIGKILL) after `timeout` and reports `timed_out`. Panics only if the
/// command cannot be started at all.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    run_with_input(cmd, None, timeout)
}

/// Like [`run`], feeding `input` on stdin (closed afterwards), e.g. SQL to psql.
pub fn run_with_input(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> Output {
    let stdin = if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    let mut child = cmd
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
    if let (Some(mut pipe), Some(input)) = (child.stdin.take(), input) {
        // A thread, so a child that writes a lot before reading cannot deadlock us.
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let (status, timed_out) = wait_or_kill(&mut child, timeout);
    let mut stderr = collect(stderr);
    if timed_out {
        stderr.push_str(&format!(
            "\n[test-support] killed after the {timeout:?} timeout\n"
        ));
    }
    Output {
        code: status.and_then(|s| s.code()),
        stdout: collect(stdout),
        stderr,
        timed_out,
    }
}

/// Reads a pipe to the end on a thread; the result arrives on the channel.
fn drain(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            let _ = tx.send(String::from_utf8_lossy(&bytes).into_owned());
        });
    }
    rx
}

/// The drained output, or a note if a grandchild still holds the pipe open
/// (we do not wait for it: the command itself has already ended).
fn collect(rx: mpsc::Receiver<String>) -> String {
    rx.recv_timeout(Duration::from_secs(2))
        .unwrap_or_else(|_| "<output incomplete: pipe still open>".to_owned())
}

fn wait_or_kill(child: &mut Child, timeout: Duration) -> (Option<ExitStatus>, bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return (Some(status), false);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            return (child.wait().ok(), true);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_captures_output_and_exit_code() {
        let out = run(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        );
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
        assert!(!out.timed_out && !out.success());
    }

    #[test]
    fn run_feeds_stdin() {
        let out = run_with_input(
            &mut Command::new("cat"),
            Some(b"hello"),
            Duration::from_secs(10),
        );
        assert!(out.success());
        assert_eq!(out.stdout, "hello");
    }

    #[test]
    fn run_kills_a_hung_command() {
        let started = Instant::now();
        let out = run(Command::new("sleep").arg("30"), Duration::from_millis(200));
        assert!(out.timed_out);
        assert_eq!(out.code, None);
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn process_logs_and_is_killed_on_drop() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo started; echo oops >&2; exec sleep 30"]);
        let proc_ = Process::spawn(cmd, "sleeper");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !proc_.log().contains("oops") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(proc_.log().contains("started"), "{}", proc_.log());
        assert!(proc_.try_wait().is_none());
        let pid = proc_.pid();
        let log_path = proc_.log_path().to_path_buf();
        drop(proc_);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "child survived drop"
        );
        assert!(
            !log_path.exists(),
            "log of a passing test should be removed"
        );
    }

    #[test]
    fn kill9_ends_the_process() {
        let mut proc_ = Process::spawn(
            {
                let mut c = Command::new("sleep");
                c.arg("30");
                c
            },
            "kill9",
        );
        proc_.kill9();
        let status = proc_.try_wait().expect("exited");
        assert_eq!(status.code(), None, "killed by a signal");
    }

    #[test]
    fn tail_respects_char_boundaries() {
        assert_eq!(tail("héllo", 4), "llo");
        assert_eq!(tail("abc", 10), "abc");
    }
}

//! Helpers shared by the integration tests: unique ring names, a guard that removes a ring,
//! forked children and re-executed children (the test binary run again in a role).
#![allow(dead_code)]

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A ring name unique to this process, test and call.
pub fn unique_name(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("t-{tag}-{}-{n}", std::process::id())
}

/// Removes the named ring on drop (whether or not it still exists).
pub struct RingGuard(pub String);

impl Drop for RingGuard {
    fn drop(&mut self) {
        let _ = shmflow::Ring::<u8>::remove(&self.0);
    }
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

/// A forked child process.
#[derive(Debug)]
pub struct Child {
    pub pid: libc::pid_t,
    reaped: bool,
}

/// Forks; the child runs `f` and exits with its return value (101 if it panics). Only the
/// calling thread exists in the child: `f` should use rings, atomics and plain computation,
/// and must not rely on locks other test threads might have held.
pub fn fork_child(f: impl FnOnce() -> i32) -> Child {
    // SAFETY: fork in a test process; the child only runs `f` and then `_exit`s, never
    // returning into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
        // SAFETY: leaving the child without running the parent's atexit handlers or
        // destructors (they belong to the parent's state).
        unsafe { libc::_exit(code) };
    }
    Child { pid, reaped: false }
}

impl Child {
    /// Waits for the child to end (at most `timeout`; kills it with SIGKILL and panics after).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Exit {
        let start = Instant::now();
        loop {
            let mut status = 0;
            // SAFETY: plain waitpid on our own child.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if r == self.pid {
                self.reaped = true;
                return if libc::WIFEXITED(status) {
                    Exit::Code(libc::WEXITSTATUS(status))
                } else {
                    Exit::Signal(libc::WTERMSIG(status))
                };
            }
            assert!(r >= 0, "waitpid: {}", std::io::Error::last_os_error());
            if start.elapsed() > timeout {
                self.kill(libc::SIGKILL);
                panic!("child {} did not exit within {timeout:?}", self.pid);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits (60 s at most) and asserts the child exited with code 0.
    pub fn join_ok(mut self) {
        let e = self.wait_timeout(Duration::from_secs(60));
        assert_eq!(e, Exit::Code(0), "child {} failed", self.pid);
    }

    /// Sends a signal.
    pub fn kill(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid, sig) };
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill(libc::SIGKILL);
            let mut status = 0;
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(self.pid, &mut status, 0) };
        }
    }
}

/// Environment variable that tells a re-executed test binary which role to play.
pub const ROLE_ENV: &str = "SHMFLOW_TEST_ROLE";

/// A command that runs this test binary again as an unrelated process playing `role`:
/// it runs only the test named `entry` (which must call [`role`] and dispatch on it).
pub fn reexec(entry: &str, role: &str, args: &[&str]) -> Command {
    let exe = std::env::current_exe().expect("current_exe");
    let mut c = Command::new(exe);
    c.args([entry, "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, role)
        .env("SHMFLOW_TEST_ARGS", args.join("\u{1f}"))
        .stdin(Stdio::null());
    c
}

/// In a re-executed child: its role and arguments; `None` in a normal test run.
pub fn role() -> Option<(String, Vec<String>)> {
    let role = std::env::var(ROLE_ENV).ok()?;
    let args = std::env::var("SHMFLOW_TEST_ARGS").unwrap_or_default();
    let args = if args.is_empty() {
        Vec::new()
    } else {
        args.split('\u{1f}').map(str::to_owned).collect()
    };
    Some((role, args))
}

/// A frame's content as a function of its sequence number and element index, so any reader
/// can verify any frame without a ledger.
pub fn pattern(seq: u64, i: usize) -> u8 {
    (seq.wrapping_mul(31).wrapping_add(i as u64 * 7) % 251) as u8
}

/// Fills a byte frame with [`pattern`].
pub fn fill(seq: u64, bytes: &mut [u8]) {
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = pattern(seq, i);
    }
}

/// Checks a byte frame against [`pattern`].
pub fn check(seq: u64, bytes: &[u8]) -> bool {
    bytes.iter().enumerate().all(|(i, b)| *b == pattern(seq, i))
}

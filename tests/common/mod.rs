//! Helpers shared by the integration tests: unique ring names, a guard that removes a ring,
//! forked children and re-executed children (the test binary run again in a role).
#![allow(dead_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
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

/// Polls `cond` (every millisecond) until it holds; panics naming `what` after `within`.
pub fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
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

// ------------------------------------------------------------------ helpers for crash tests

/// The file behind a ring name.
pub fn shm_path(name: &str) -> PathBuf {
    PathBuf::from(format!("/dev/shm/shmflow.{name}"))
}

pub fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A pipe carrying one-byte signals from children to the parent (or back).
pub struct Pipe {
    pub r: OwnedFd,
    pub w: OwnedFd,
}

impl Pipe {
    pub fn new() -> Pipe {
        let mut fds = [0; 2];
        // SAFETY: `fds` is a writable array of two c_ints, as pipe2 requires.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
        assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
        // SAFETY: pipe2 succeeded: both fds are open and owned by nothing else.
        unsafe {
            Pipe {
                r: OwnedFd::from_raw_fd(fds[0]),
                w: OwnedFd::from_raw_fd(fds[1]),
            }
        }
    }

    pub fn send(&self, b: u8) {
        // SAFETY: writes one byte from a live stack variable to an open fd.
        let n = unsafe { libc::write(self.w.as_raw_fd(), (&b as *const u8).cast(), 1) };
        assert_eq!(n, 1, "pipe write: {}", std::io::Error::last_os_error());
    }

    /// The next byte, or `None` after `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<u8> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut p = libc::pollfd {
                fd: self.r.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut p, 1, left.as_millis() as libc::c_int) };
            if n == 0 {
                return None;
            }
            if n < 0 {
                assert_eq!(
                    std::io::Error::last_os_error().kind(),
                    std::io::ErrorKind::Interrupted
                );
                continue;
            }
            let mut b = 0u8;
            // SAFETY: reads at most one byte into a live stack variable from an open fd.
            let r = unsafe { libc::read(self.r.as_raw_fd(), (&mut b as *mut u8).cast(), 1) };
            if r == 1 {
                return Some(b);
            }
        }
    }

    /// Asserts that the next byte is `want`, within 20 s.
    pub fn expect(&self, want: u8) {
        let got = self.recv(Duration::from_secs(20));
        assert_eq!(
            got.map(char::from),
            Some(char::from(want)),
            "child signal (X = the child saw something wrong)"
        );
    }
}

/// Kills a forked child with SIGKILL and reaps it.
pub fn kill_and_reap(mut child: Child) {
    child.kill(libc::SIGKILL);
    assert_eq!(
        child.wait_timeout(Duration::from_secs(10)),
        Exit::Signal(libc::SIGKILL)
    );
}

/// `u64` counters shared between the parent and its forked children: an anonymous shared
/// mapping made before the fork (a pipe could fill up and block a child that reports through
/// it). Indexes like a slice of `AtomicU64`.
pub struct SharedCounters {
    ptr: std::ptr::NonNull<AtomicU64>,
    len: usize,
}

// SAFETY: the mapping is only accessed through `AtomicU64`s, which are Sync.
unsafe impl Sync for SharedCounters {}
// SAFETY: as above; the pointer is to a mapping owned by this value, not to thread-local data.
unsafe impl Send for SharedCounters {}

impl SharedCounters {
    pub fn new(len: usize) -> SharedCounters {
        // SAFETY: a fresh anonymous shared mapping (no fd, no address hint); no existing
        // memory is affected, and the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Self::bytes(len),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        SharedCounters {
            ptr: std::ptr::NonNull::new(p.cast()).unwrap(),
            len,
        }
    }

    fn bytes(len: usize) -> usize {
        len.max(1) * std::mem::size_of::<AtomicU64>()
    }
}

impl std::ops::Deref for SharedCounters {
    type Target = [AtomicU64];
    fn deref(&self) -> &[AtomicU64] {
        // SAFETY: the mapping holds `len` zero-initialised, page-aligned u64s for as long as
        // `self` lives; AtomicU64 is valid for any bit pattern and only accessed atomically.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for SharedCounters {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping made in `new`, which nothing borrows any more. An error
        // is ignored: there is nothing to do about it in a destructor.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), Self::bytes(self.len)) };
    }
}

/// This process's children, alive or zombie, from `/proc/*/stat`.
pub fn children() -> std::collections::BTreeSet<u32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // Field 4 (after the parenthesised name, which may contain spaces) is the ppid.
            let ppid = stat.rsplit(')').next()?.split_whitespace().nth(1)?;
            (ppid == me).then_some(pid)
        })
        .collect()
}

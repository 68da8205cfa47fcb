//! Process control: fork, exec with an inherited control fd, wait, signals, pidfds, names,
//! CPU affinity, poll. The process layer (`crate::process`) is built on these and has no unsafe
//! code of its own.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use super::syscall;

/// Which side of a fork we are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fork {
    /// In the new child.
    Child,
    /// In the parent; the child's pid.
    Parent(u32),
}

/// `fork(2)`.
///
/// # Safety
///
/// Only the calling thread exists in the child, and locks other threads held at the fork
/// (the allocator's, stdout's, a logger's) stay locked there for ever. The caller must make
/// sure the process is single-threaded, or that the child makes only async-signal-safe calls
/// until it execs or exits, or that no other thread can hold such a lock (the process layer
/// checks the thread count first, and `allow_threads`, the way around that check, is itself
/// `unsafe`).
pub(crate) unsafe fn fork() -> io::Result<Fork> {
    // SAFETY: fork has no memory-safety preconditions of its own; what the child may do
    // afterwards is this function's contract with its caller (see # Safety).
    let pid = syscall!(fork())?;
    Ok(if pid == 0 {
        Fork::Child
    } else {
        Fork::Parent(pid as u32)
    })
}

/// Permission to fork although this process runs other threads: see
/// [`ForkBuilder::allow_threads`](crate::process::ForkBuilder::allow_threads). Only
/// [`ThreadedFork::assume_no_locks_held`], an `unsafe fn`, makes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadedFork(());

impl ThreadedFork {
    /// Promises that forking is safe although this process runs other threads.
    ///
    /// # Safety
    ///
    /// Only the forking thread exists in the child. A lock one of the other threads holds at
    /// the moment of a fork (the allocator's, stdout's, a logger's, a `Mutex` of yours) stays
    /// locked there for ever, and the child, which allocates, may then hang or see that lock's
    /// data half-updated. The caller promises that whenever shmflow forks with this permission
    /// (spawn, and a pool starting or replacing a worker) no other thread can hold such a lock,
    /// e.g. because they are all parked on something the caller controls. The safe ways are to
    /// fork before starting threads, or to re-execute (`ReexecBuilder`).
    pub unsafe fn assume_no_locks_held() -> ThreadedFork {
        ThreadedFork(())
    }
}

/// `fork(2)` for the process layer: refuses (`None`) when other threads run, unless the caller
/// holds a [`ThreadedFork`] permission.
pub(crate) fn fork_checked(permit: Option<ThreadedFork>) -> io::Result<Option<Fork>> {
    if permit.is_none() && super::thread_count().unwrap_or(1) > 1 {
        return Ok(None);
    }
    // SAFETY: single-threaded (just checked; threads started by this thread after the check
    // do not exist yet), or the holder of `permit` took on `ThreadedFork`'s contract.
    unsafe { fork() }.map(Some)
}

/// `_exit(2)`: leaves without running atexit handlers or destructors (a forked child must not
/// flush or tear down state that belongs to its parent).
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Asks the kernel to send `sig` to this process when its parent thread dies
/// (`PR_SET_PDEATHSIG`), then checks the parent did not die before that: returns false if the
/// current parent is no longer `expected_parent`.
pub(crate) fn set_parent_death_signal(sig: i32, expected_parent: u32) -> io::Result<bool> {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes an integer signal number.
    syscall!(prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0))?;
    Ok(getppid() == expected_parent)
}

/// `getppid(2)`.
pub(crate) fn getppid() -> u32 {
    // SAFETY: getppid has no preconditions and cannot fail.
    unsafe { libc::getppid() as u32 }
}

/// Sets the process name: the main thread's (what `ps`, `top` and `htop` show, via
/// `/proc/self/comm`) and the calling thread's (`PR_SET_NAME`). At most 15 bytes are kept.
pub(crate) fn set_process_name(name: &str) -> io::Result<()> {
    let mut buf = [0u8; 16];
    let bytes: Vec<u8> = name
        .bytes()
        .filter(|b| *b != 0 && *b != b'\n')
        .take(15)
        .collect();
    buf[..bytes.len()].copy_from_slice(&bytes);
    // SAFETY: buf is a NUL-terminated buffer of 16 bytes, as PR_SET_NAME requires.
    syscall!(prctl(
        libc::PR_SET_NAME,
        buf.as_ptr() as libc::c_ulong,
        0,
        0,
        0
    ))?;
    std::fs::write("/proc/self/comm", &bytes)
}

/// Pins every thread of the process to `cpus`.
pub(crate) fn set_affinity(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
    for &c in cpus {
        if c >= max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("CPU {c} is beyond the {max} CPUs cpu_set_t can hold"),
            ));
        }
        // SAFETY: c < CPU_SETSIZE, checked above.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    let mut tids: Vec<libc::pid_t> = std::fs::read_dir("/proc/self/task")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    if tids.is_empty() {
        tids.push(0);
    }
    for tid in tids {
        // SAFETY: set is a valid cpu_set_t of the size we pass; tid is one of our threads.
        syscall!(sched_setaffinity(
            tid,
            std::mem::size_of::<libc::cpu_set_t>(),
            &set
        ))?;
    }
    Ok(())
}

/// The CPUs the calling thread may run on.
pub(crate) fn affinity() -> io::Result<Vec<usize>> {
    // SAFETY: all-zero cpu_set_t is valid.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a writable cpu_set_t of the size we pass.
    syscall!(sched_getaffinity(
        0,
        std::mem::size_of::<libc::cpu_set_t>(),
        &mut set
    ))?;
    let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: i < CPU_SETSIZE.
    Ok((0..max)
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .collect())
}

/// The CPUs that are online (`/sys/devices/system/cpu/online`, e.g. `0-3,6`); falls back to
/// this thread's affinity when that file cannot be read. A child may be pinned to any of them,
/// even outside the parent's own affinity (unless a cpuset forbids it).
pub(crate) fn online_cpus() -> io::Result<Vec<usize>> {
    let Ok(text) = std::fs::read_to_string("/sys/devices/system/cpu/online") else {
        return affinity();
    };
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        match (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
            (Ok(a), Ok(b)) if a <= b => cpus.extend(a..=b),
            _ => return affinity(),
        }
    }
    Ok(cpus)
}

/// `pidfd_open(2)`: an fd that becomes readable when the process exits.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: the pidfd_open syscall takes a pid and flags; the result is a new fd we own.
    let fd = syscall!(syscall(
        libc::SYS_pidfd_open,
        pid as libc::c_long,
        0 as libc::c_long
    ))?;
    // SAFETY: a fresh fd returned by the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `kill(2)`. ESRCH (already gone) is an error the caller may ignore.
pub(crate) fn kill(pid: u32, sig: i32) -> io::Result<()> {
    if pid == 0 || pid > i32::MAX as u32 {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    // SAFETY: a positive pid addresses one process; no memory is involved.
    syscall!(kill(pid as libc::pid_t, sig))?;
    Ok(())
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitStatus {
    /// `exit(code)`.
    Exited(i32),
    /// Killed by a signal (and whether it dumped core).
    Signaled(i32, bool),
}

fn decode(status: libc::c_int) -> WaitStatus {
    if libc::WIFEXITED(status) {
        WaitStatus::Exited(libc::WEXITSTATUS(status))
    } else {
        WaitStatus::Signaled(libc::WTERMSIG(status), libc::WCOREDUMP(status))
    }
}

/// `waitpid(pid, WNOHANG)`: `None` while the child runs.
pub(crate) fn try_wait(pid: u32) -> io::Result<Option<WaitStatus>> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out-pointer.
        match syscall!(waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG)) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(decode(status))),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Blocking `waitpid(pid)`.
pub(crate) fn wait(pid: u32) -> io::Result<WaitStatus> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out-pointer.
        match syscall!(waitpid(pid as libc::pid_t, &mut status, 0)) {
            Ok(_) => return Ok(decode(status)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The conventional name of a signal (`SIGKILL`), or `signal N`.
pub(crate) fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("signal {sig}"),
    };
    name.to_owned()
}

/// Reads what is there from socket `fd` without waiting (`recv` with `MSG_DONTWAIT`, so the
/// socket itself stays blocking for other users of the fd). `Ok(None)`: nothing to read now;
/// `Ok(Some(0))`: end of stream.
pub(crate) fn recv_nonblocking(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        // SAFETY: buf is a valid writable region of buf.len() bytes for the duration of the
        // call; the fd is borrowed, hence open.
        match syscall!(recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast::<libc::c_void>(),
            buf.len(),
            libc::MSG_DONTWAIT
        )) {
            Ok(n) => return Ok(Some(n as usize)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// Readiness of one fd after [`poll`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Ready {
    /// Readable (or hung up / error: a read will not block).
    pub readable: bool,
}

/// Waits until one of `fds` is readable or `timeout_ms` passes (-1 = forever). EINTR returns
/// an all-false result.
pub(crate) fn poll(fds: &[BorrowedFd<'_>], timeout_ms: i32) -> io::Result<Vec<Ready>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: pfds is a valid array of pollfd of the length we pass; the fds are borrowed,
    // hence open, for the duration of the call.
    match syscall!(poll(
        pfds.as_mut_ptr(),
        pfds.len() as libc::nfds_t,
        timeout_ms
    )) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
        Err(e) => return Err(e),
    }
    Ok(pfds
        .iter()
        .map(|p| Ready {
            readable: p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL)
                != 0,
        })
        .collect())
}

/// The fd number at which a re-executed child finds its control socket.
pub(crate) const CHILD_CONTROL_FD: RawFd = 3;

/// Prepares `cmd` so that the child gets `control` as fd [`CHILD_CONTROL_FD`] (without
/// close-on-exec), and a parent-death signal `SIGKILL`.
pub(crate) fn inherit_control_fd(cmd: &mut Command, control: BorrowedFd<'_>) {
    let fd = control.as_fd().as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (dup2, fcntl, prctl) on integers; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if fd == CHILD_CONTROL_FD {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags == -1 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) == -1 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(fd, CHILD_CONTROL_FD) == -1 {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) == -1
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// In a re-executed child: takes ownership of the control fd, if it is open.
pub(crate) fn take_child_control_fd() -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD on an arbitrary integer only queries it.
    syscall!(fcntl(CHILD_CONTROL_FD, libc::F_GETFD))?;
    // SAFETY: fd 3 is open (checked above) and was set up for us by the parent
    // (`inherit_control_fd`); the environment marker told us so, and nothing else in this
    // process owns it. Re-enable close-on-exec so our own children do not inherit it.
    let fd = unsafe { OwnedFd::from_raw_fd(CHILD_CONTROL_FD) };
    // SAFETY: fcntl on an fd we own.
    syscall!(fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC))?;
    Ok(fd)
}

/// CPU time (user + system) a process has used, from `/proc/<pid>/stat`.
pub(crate) fn cpu_time(pid: u32) -> io::Result<std::time::Duration> {
    let ticks = super::read_proc_stat(pid)?.cpu_ticks;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Ok(std::time::Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

/// Sets a pipe's buffer size (`F_SETPIPE_SZ`); returns the size the kernel granted.
pub(crate) fn set_pipe_size(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<usize> {
    // SAFETY: fcntl F_SETPIPE_SZ on a borrowed (open) fd with an integer argument.
    let r = syscall!(fcntl(
        fd.as_raw_fd(),
        libc::F_SETPIPE_SZ,
        bytes as libc::c_int
    ))?;
    Ok(r as usize)
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Installs a SIGINT/SIGTERM handler that only sets a flag, and returns the flag. Forked
/// children inherit the handler, so Ctrl-C (which signals the whole foreground process group)
/// does not kill them: the parent sees the flag and shuts them down in order.
pub(crate) fn catch_interrupts() -> io::Result<&'static std::sync::atomic::AtomicBool> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: sigaction with a handler that only stores to an atomic (async-signal-safe);
        // the struct is zeroed then filled as the man page requires.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = libc::SA_RESTART;
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) == -1 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(&INTERRUPTED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(libc::SIGKILL), "SIGKILL");
        assert_eq!(signal_name(libc::SIGSEGV), "SIGSEGV");
        assert_eq!(signal_name(77), "signal 77");
    }

    #[test]
    fn fork_wait_and_pidfd() {
        // SAFETY: the child only calls `_exit` (async-signal-safe).
        match unsafe { fork() }.unwrap() {
            Fork::Child => exit_now(7),
            Fork::Parent(pid) => {
                let pidfd = pidfd_open(pid);
                let status = wait(pid).unwrap();
                assert_eq!(status, WaitStatus::Exited(7));
                // A pidfd of an exited (even reaped) process is readable, or open failed
                // because it was already reaped.
                if let Ok(fd) = pidfd {
                    assert!(poll(&[fd.as_fd()], 1000).unwrap()[0].readable);
                }
            }
        }
    }

    #[test]
    fn killed_child_reports_signal() {
        // SAFETY: the child only sleeps (`nanosleep`, async-signal-safe) until it is killed.
        match unsafe { fork() }.unwrap() {
            Fork::Child => loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
            },
            Fork::Parent(pid) => {
                kill(pid, libc::SIGKILL).unwrap();
                assert_eq!(
                    wait(pid).unwrap(),
                    WaitStatus::Signaled(libc::SIGKILL, false)
                );
            }
        }
    }

    #[test]
    fn affinity_round_trip() {
        let cpus = affinity().unwrap();
        assert!(!cpus.is_empty());
        assert!(set_affinity(&[usize::MAX]).is_err());
    }
}

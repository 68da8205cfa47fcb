//! Processes: frontend/backend processes with typed control channels, and the worker pool.
//!
//! This layer is built only on rings, control channels and the syscall wrappers in `sys`; it
//! contains no unsafe code.
//!
//! - [`ForkBuilder`] and [`ReexecBuilder`] start a [`Backend`] in a child process (by fork,
//!   or by re-executing the program) and return a [`Process`] handle: typed request/reply, `stop`, `join`, `kill`, and an [`ExitReason`]
//!   that says exactly how the child ended.
//! - [`channel`] makes a typed [`Sender`]/[`Receiver`] pair to use across a fork.
//! - [`wait_any`] polls processes, channels and ring readers together.
//! - [`WorkerPool`] is the mpire-style pool.
//!
//! [`ExitReason`]: crate::ExitReason
#![forbid(unsafe_code)]

mod control;
pub(crate) mod error;

mod logfwd;
mod pool;
pub(crate) use pool::POOL_STATUS_TAG;
mod spawn;
mod wire;

pub use crate::sys::process::ThreadedFork;
pub use control::{channel, wait_any, Receiver, Sender};
pub use pool::frames::FrameError;
pub use pool::{
    AsyncResult, Imap, ImapUnordered, PoolBuilder, PoolSnapshot, Task, WorkerInfo, WorkerInsight,
    WorkerPool, WorkerSample,
};
pub use spawn::{
    init, thread_count, Backend, BoxError, Context, ForkBuilder, Init, Process, ReexecBuilder,
};
pub use wire::panic_text;

/// CPU time (user + system) used so far by process `pid` (from `/proc/<pid>/stat`).
///
/// # Errors
///
/// If the process does not exist or `/proc` cannot be read.
pub fn cpu_time(pid: u32) -> std::io::Result<std::time::Duration> {
    crate::sys::process::cpu_time(pid)
}

/// Makes SIGINT (Ctrl-C) and SIGTERM set a flag instead of killing the process, and returns
/// the flag. Forked children inherit the handler, so a Ctrl-C, which the terminal sends to the
/// whole process group, leaves them running until the parent stops them in order.
///
/// # Errors
///
/// If `sigaction` fails.
pub fn catch_interrupts() -> std::io::Result<&'static std::sync::atomic::AtomicBool> {
    crate::sys::process::catch_interrupts()
}

/// Pins the calling process (all its threads) to `cpus`.
///
/// # Errors
///
/// If a CPU id is out of range or not allowed (`EINVAL`).
pub fn set_affinity(cpus: &[usize]) -> std::io::Result<()> {
    crate::sys::process::set_affinity(cpus)
}

/// The CPUs the calling thread may run on.
///
/// # Errors
///
/// If `sched_getaffinity` fails.
pub fn affinity() -> std::io::Result<Vec<usize>> {
    crate::sys::process::affinity()
}

/// The CPUs that are online (`/sys/devices/system/cpu/online`), which a child may be pinned
/// to even outside the caller's own affinity (unless a cpuset forbids it); the caller's
/// affinity when that file cannot be read.
///
/// # Errors
///
/// If neither the file nor `sched_getaffinity` can be read.
pub fn online_cpus() -> std::io::Result<Vec<usize>> {
    crate::sys::process::online_cpus()
}

/// Sets the capacity of a pipe (`F_SETPIPE_SZ`, e.g. for a pipe between a [`Process`] and
/// its parent that carries large messages); returns the capacity the kernel granted (at least
/// `bytes`, rounded up to a power of two pages).
///
/// # Errors
///
/// If `fd` is not a pipe, or `bytes` exceeds `/proc/sys/fs/pipe-max-size` for an
/// unprivileged caller (`EPERM`).
pub fn set_pipe_capacity(fd: std::os::fd::BorrowedFd<'_>, bytes: usize) -> std::io::Result<usize> {
    crate::sys::process::set_pipe_size(fd, bytes)
}

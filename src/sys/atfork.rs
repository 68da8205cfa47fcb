//! What a `fork` changes for shmflow: a per-process *fork epoch*, and descriptors a child must
//! not keep.
//!
//! [`fork_epoch`] is a counter that a `pthread_atfork` child handler bumps in every child, so
//! an object that records the epoch when it is made can tell, with one relaxed load, whether it
//! is being used in the process that made it (endpoints use this to refuse work in a forked
//! child). [`close_in_children`] registers a descriptor that the same handler closes in every
//! child: a liveness lock inherited by a child would otherwise keep a dead parent looking
//! alive (the kernel releases an OFD lock only when the last descriptor of its open file
//! description closes).
//!
//! The handler runs in the child of `fork(3)` (glibc and musl), including forks made by user
//! code, `multiprocessing` and `std::process::Command` (which may `exec` at once: the
//! descriptors are close-on-exec as well). It only does async-signal-safe work: atomic
//! loads/stores and `close(2)`. Raw `clone(2)`/`vfork` calls bypass it.

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering::*};
use std::sync::Once;

/// Bumped in every forked child.
static EPOCH: AtomicU64 = AtomicU64::new(0);
static INSTALL: Once = Once::new();

/// How many descriptors can be registered at once (one per attached endpoint of a
/// segment-backed ring). Past this, [`close_in_children`] returns a handle that protects
/// nothing and logs once.
const MAX_FDS: usize = 4096;

/// Registered descriptors; -1 marks a free cell.
static FDS: [AtomicI32; MAX_FDS] = [const { AtomicI32::new(-1) }; MAX_FDS];

extern "C" fn in_child() {
    EPOCH.fetch_add(1, Relaxed);
    for cell in &FDS {
        let fd = cell.swap(-1, Relaxed);
        if fd >= 0 {
            // SAFETY: async-signal-safe; `fd` was registered by its owner, which unregisters it
            // before closing it, so in this (single-threaded) child it is still that descriptor.
            unsafe { libc::close(fd) };
        }
    }
}

fn install() {
    INSTALL.call_once(|| {
        // SAFETY: registers a plain extern "C" function with no prepare/parent handlers; it is
        // valid for the life of the program.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
        if rc != 0 {
            log::warn!("shmflow: pthread_atfork failed ({rc}); forked children are not detected");
        }
    });
}

/// The calling process's fork epoch: equal in a process and different in each of its children
/// (and theirs). Installs the fork handler on first use.
#[inline]
pub(crate) fn fork_epoch() -> u64 {
    if !INSTALL.is_completed() {
        install();
    }
    EPOCH.load(Relaxed)
}

/// A descriptor registered with [`close_in_children`]. Call [`ChildClose::unregister`] (or drop
/// it) *before* closing the descriptor in the owning process.
#[derive(Debug)]
pub(crate) struct ChildClose {
    cell: Option<usize>,
    epoch: u64,
}

impl ChildClose {
    /// Removes the registration (in the owning process only: a child's table was cleared by the
    /// handler, and the cell may be reused there).
    pub(crate) fn unregister(&mut self) {
        if let Some(i) = self.cell.take() {
            if fork_epoch() == self.epoch {
                FDS[i].store(-1, Relaxed);
            }
        }
    }
}

impl Drop for ChildClose {
    fn drop(&mut self) {
        self.unregister();
    }
}

/// Makes every later forked child close `fd` as soon as it starts.
pub(crate) fn close_in_children(fd: i32) -> ChildClose {
    let epoch = fork_epoch();
    for (i, cell) in FDS.iter().enumerate() {
        if cell.compare_exchange(-1, fd, Relaxed, Relaxed).is_ok() {
            return ChildClose {
                cell: Some(i),
                epoch,
            };
        }
    }
    static FULL: Once = Once::new();
    FULL.call_once(|| {
        log::warn!("shmflow: more than {MAX_FDS} endpoints; forked children may keep locks")
    });
    ChildClose { cell: None, epoch }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_sees_a_new_epoch_and_registered_fds_closed() {
        let e = fork_epoch();
        let (r, w) = std::io::pipe().unwrap();
        use std::os::fd::AsRawFd;
        let mut reg = close_in_children(w.as_raw_fd());
        // SAFETY: the child only makes async-signal-safe calls (fcntl, _exit).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: F_GETFD on any number is harmless; -1 (EBADF) means it was closed.
            let closed = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_GETFD) } == -1;
            let changed = EPOCH.load(Relaxed) != e;
            // SAFETY: `_exit` in a forked child skips the parent's atexit handlers and buffers.
            unsafe { libc::_exit(if closed && changed { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert_eq!(fork_epoch(), e);
        reg.unregister();
        drop((r, w));
    }
}

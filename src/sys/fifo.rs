//! Named pipes used as death notices, and a small epoll set.
//!
//! Every writer of a ring holds its ring's FIFO open (read-write, so opening never blocks);
//! every reader watches it read-only. When the last holder's descriptor closes, which the
//! kernel does when the process dies, the watchers' ends report `POLLHUP`: a reader that waits
//! only on its fd (poll, epoll, tokio) wakes when its writer dies. Nothing is ever written to
//! the pipe. A watcher opened while no writer holds the FIFO reports `POLLHUP` only after a
//! writer has come and gone (Linux's pipe semantics), which is what a reader that attached
//! before its writer wants.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::syscall;

/// Creates a FIFO at `path` with permission bits `mode` (set exactly, not subject to the
/// umask). `AlreadyExists` if the path exists.
pub(crate) fn mkfifo(path: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated and lives for the call.
    syscall!(mkfifo(path.as_ptr(), 0o600))?;
    // SAFETY: as above.
    if let Err(e) = syscall!(chmod(path.as_ptr(), (mode & 0o666) as libc::mode_t)) {
        let _ = unlink(path);
        return Err(e);
    }
    Ok(())
}

/// Changes the group of the file at `path`.
pub(crate) fn chown_group(path: &CStr, gid: u32) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated and lives for the call; uid -1 keeps the owner.
    syscall!(chown(
        path.as_ptr(),
        u32::MAX as libc::uid_t,
        gid as libc::gid_t
    ))
    .map(drop)
}

/// Removes `path`.
pub(crate) fn unlink(path: &CStr) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated and lives for the call.
    syscall!(unlink(path.as_ptr())).map(drop)
}

fn open(path: &CStr, flags: i32) -> io::Result<OwnedFd> {
    let flags = flags | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    // SAFETY: `path` is NUL-terminated and lives for the call.
    let fd = syscall!(open(path.as_ptr(), flags))?;
    // SAFETY: `open` just returned this descriptor; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if super::fstat(fd.as_fd())?.mode & libc::S_IFMT != libc::S_IFIFO {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a FIFO"));
    }
    Ok(fd)
}

/// Opens the FIFO as a holder (read-write: never blocks, counts as a writer of the pipe).
pub(crate) fn open_hold(path: &CStr) -> io::Result<OwnedFd> {
    open(path, libc::O_RDWR)
}

/// Opens the FIFO as a watcher (read-only, non-blocking).
pub(crate) fn open_watch(path: &CStr) -> io::Result<OwnedFd> {
    open(path, libc::O_RDONLY)
}

/// Whether every holder of the watched FIFO has gone (`POLLHUP` on a watcher).
pub(crate) fn hung_up(watch: BorrowedFd<'_>) -> bool {
    let mut p = libc::pollfd {
        fd: watch.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the call, zero timeout.
    matches!(syscall!(poll(&mut p, 1, 0)), Ok(1)) && p.revents & libc::POLLHUP != 0
}

/// An epoll instance: readable when any descriptor added to it is.
#[derive(Debug)]
pub(crate) struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    pub(crate) fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall with a flag argument.
        let fd = syscall!(epoll_create1(libc::EPOLL_CLOEXEC))?;
        // SAFETY: `epoll_create1` just returned this descriptor; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Epoll { fd })
    }

    /// Adds `fd` (level-triggered readability; hang-ups are always reported). The caller keeps
    /// `fd` open as long as the set is used.
    pub(crate) fn add_readable(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: fd.as_raw_fd() as u64,
        };
        // SAFETY: both descriptors are open for the call; `ev` is valid.
        syscall!(epoll_ctl(
            self.fd.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            fd.as_raw_fd(),
            &mut ev
        ))
        .map(drop)
    }

    /// Waits up to `timeout_ms` (-1: for ever); returns whether anything is ready.
    pub(crate) fn wait(&self, timeout_ms: i32) -> io::Result<bool> {
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 4];
        // SAFETY: the buffer holds 4 events and lives for the call.
        let n = syscall!(epoll_wait(
            self.fd.as_raw_fd(),
            evs.as_mut_ptr(),
            4,
            timeout_ms
        ))?;
        Ok(n > 0)
    }
}

impl AsFd for Epoll {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watcher_hangs_up_when_the_last_holder_closes() {
        let path =
            std::ffi::CString::new(format!("/dev/shm/.shmflow-fifotest-{}", std::process::id()))
                .unwrap();
        let _ = unlink(&path);
        mkfifo(&path, 0o600).unwrap();
        let early = open_watch(&path).unwrap();
        let h1 = open_hold(&path).unwrap();
        let w = open_watch(&path).unwrap();
        let ep = Epoll::new().unwrap();
        ep.add_readable(w.as_fd()).unwrap();
        let h2 = open_hold(&path).unwrap();
        assert!(!hung_up(w.as_fd()) && !hung_up(early.as_fd()));
        assert!(!ep.wait(0).unwrap());
        drop(h1);
        assert!(!hung_up(w.as_fd()));
        drop(h2);
        assert!(hung_up(w.as_fd()) && hung_up(early.as_fd()));
        assert!(ep.wait(0).unwrap());
        let _h3 = open_hold(&path).unwrap();
        assert!(!hung_up(w.as_fd()), "a new holder clears the hang-up");
        unlink(&path).unwrap();
        assert!(mkfifo(&path, 0o600).is_ok());
        unlink(&path).unwrap();
    }
}

//! Open-file-description record locks (`F_OFD_SETLK`): liveness the kernel vouches for.
//!
//! An OFD lock belongs to an open file description, not to a process: two opens of the same
//! file in one process conflict like two processes do, and the kernel drops the lock when the
//! last descriptor of that description closes, which includes the death of its process. Any
//! process that can open the file can test the lock (`F_OFD_GETLK`), in any pid namespace and
//! whatever `/proc` shows. shmflow locks one byte per peer entry, far past the end of the
//! segment (locks need not lie inside the file).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::syscall;

fn flock(kind: i32, byte: u64) -> io::Result<libc::flock> {
    // SAFETY: `struct flock` is plain data; all-zero is a valid value (l_pid must be 0 for OFD
    // locks).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as _;
    fl.l_whence = libc::SEEK_SET as _;
    fl.l_start = libc::off_t::try_from(byte)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "lock offset past off_t"))?;
    fl.l_len = 1;
    Ok(fl)
}

/// Tries to take a write lock on `byte` for `fd`'s open file description. `Ok(false)` when
/// another description holds a lock there.
pub(crate) fn try_lock(fd: BorrowedFd<'_>, byte: u64) -> io::Result<bool> {
    let fl = flock(libc::F_WRLCK, byte)?;
    // SAFETY: `fd` is open for the call; `fl` is a valid flock that outlives it.
    match syscall!(fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &fl)) {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether some open file description other than `fd`'s holds a lock on `byte`.
pub(crate) fn is_locked(fd: BorrowedFd<'_>, byte: u64) -> io::Result<bool> {
    let mut fl = flock(libc::F_WRLCK, byte)?;
    // SAFETY: as in `try_lock`; the kernel writes the conflicting lock (if any) into `fl`.
    syscall!(fcntl(fd.as_raw_fd(), libc::F_OFD_GETLK, &mut fl))?;
    Ok(i32::from(fl.l_type) != libc::F_UNLCK)
}

/// A new open file description of the file behind `fd` (read-write, close-on-exec), by
/// reopening `/proc/self/fd/N`. Locks taken through the result are independent of `fd`'s.
pub(crate) fn reopen(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let path = std::ffi::CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .expect("no NUL in a path made of digits");
    // SAFETY: `path` is NUL-terminated and lives for the call.
    let new = syscall!(open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC))?;
    // SAFETY: `open` just returned this descriptor; nothing else owns it.
    let new = unsafe { OwnedFd::from_raw_fd(new) };
    let (a, b) = (super::fstat(fd)?, super::fstat(new.as_fd())?);
    if a.id != b.id {
        return Err(io::Error::other("/proc/self/fd reopened another file"));
    }
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_conflict_between_descriptions_and_go_with_the_last_fd() {
        let f = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(format!("/dev/shm/.shmflow-locktest-{}", std::process::id()))
            .unwrap();
        let _ = std::fs::remove_file(format!("/dev/shm/.shmflow-locktest-{}", std::process::id()));
        let a = reopen(f.as_fd()).unwrap();
        let b = reopen(f.as_fd()).unwrap();
        let byte = 1 << 50;
        assert!(!is_locked(f.as_fd(), byte).unwrap());
        assert!(try_lock(a.as_fd(), byte).unwrap());
        assert!(
            try_lock(a.as_fd(), byte).unwrap(),
            "relocking by the holder succeeds"
        );
        assert!(!try_lock(b.as_fd(), byte).unwrap());
        assert!(is_locked(f.as_fd(), byte).unwrap());
        assert!(!is_locked(f.as_fd(), byte + 1).unwrap());
        drop(a);
        assert!(!is_locked(f.as_fd(), byte).unwrap());
        assert!(try_lock(b.as_fd(), byte).unwrap());
    }
}

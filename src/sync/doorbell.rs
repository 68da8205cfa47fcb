//! Doorbells: pollable wake-ups that work between unrelated processes.
//!
//! # Design
//!
//! Each reader owns a [`DoorbellReceiver`]: a non-blocking, close-on-exec
//! `SOCK_DGRAM` Unix socket bound to an address in Linux's *abstract*
//! namespace (`sun_path[0] == 0`). An abstract address has no file system
//! entry and is released by the kernel when the socket is closed, including
//! when the process dies, so there is nothing to clean up after a crash.
//!
//! The address is derived by [`doorbell_address`] from a 64-bit random ring
//! token stored in the segment, plus the reader's slot index and generation:
//! `\0shmflow/<token as 16 hex digits>/<index>/<generation>`. Anyone who can
//! map the segment can therefore compute every reader's address, with no
//! rendezvous; the generation keeps a reader that reuses a slot from getting
//! rings meant for the previous occupant.
//!
//! A writer rings a doorbell with a [`DoorbellSender`]: one
//! `sendto(MSG_DONTWAIT | MSG_NOSIGNAL)` of one byte from its own unbound
//! datagram socket. The receiver's fd becomes readable, so readers can wait
//! with `poll`, epoll, mio or tokio (the receiver implements [`AsFd`]).
//! `ring` treats `EAGAIN` (the receiver's queue is full: it has been rung
//! already) and `ECONNREFUSED` / `ENOENT` (no receiver: the reader is gone) as
//! success.
//!
//! A reader that wakes up calls [`DoorbellReceiver::drain`] *before* it
//! re-checks the ring state, then polls again only if there is still nothing
//! to do. A ring that arrives after the drain leaves the fd readable, so no
//! wake-up is lost between the check and the next poll.
//!
//! # Why not an eventfd
//!
//! An eventfd gives the same readiness but has no name: unrelated processes
//! would have to pass it with `SCM_RIGHTS` from every reader to every writer,
//! including writers that attach later and the several writers of queue mode.
//! That needs a rendezvous socket and a thread listening on it. The abstract
//! socket gives the same readiness with no rendezvous at all.
//!
//! # Limitations
//!
//! * Abstract addresses are per *network namespace*: a writer in another
//!   network namespace (e.g. another container sharing `/dev/shm` but not the
//!   network) cannot ring, and its rings are silently dropped (`ENOENT` /
//!   `ECONNREFUSED`). Readers in that case still wake by their deadline,
//!   because the doorbell only wakes: the state lives in the segment.
//! * Abstract addresses have no permission checks, and they are listed (with
//!   the token) in `/proc/net/unix` to every process in the network namespace.
//!   The token prevents accidental collisions, not a hostile local process: it
//!   could send spurious rings (extra wake-ups, harmless) or bind an address
//!   first, so that the reader's `bind` fails with `EADDRINUSE` (then the
//!   reader must fall back to waiting on the semaphore or a deadline).
//! * Undelivered datagrams count against the *sender's* socket buffer. With
//!   hundreds of stalled readers whose queues are full, a sender's rings to
//!   other readers can fail with `EAGAIN` and be dropped; again this only
//!   delays a wake-up until the reader's deadline.

use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::sys::syscall;

/// Longest address (after the leading NUL) that fits in `sun_path`.
const MAX_ADDR_LEN: usize = 107;

/// Returns the abstract socket address of reader `index`, generation
/// `generation`, of the ring with token `token`: the bytes after the leading
/// NUL, `shmflow/<token as 16 hex digits>/<index>/<generation>`.
pub(crate) fn doorbell_address(token: u64, index: u32, generation: u32) -> Vec<u8> {
    format!("shmflow/{token:016x}/{index}/{generation}").into_bytes()
}

/// Builds a `sockaddr_un` for the abstract address `addr` (without its leading
/// NUL) and its exact length; abstract names are not NUL-terminated, so the
/// length is part of the name.
fn abstract_sockaddr(addr: &[u8]) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    if addr.is_empty() || addr.len() > MAX_ADDR_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "doorbell address must be 1 to 107 bytes",
        ));
    }
    // SAFETY: `sockaddr_un` is plain old data for which all zeroes is valid;
    // the zero in `sun_path[0]` is what makes the address abstract.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, &src) in sa.sun_path[1..].iter_mut().zip(addr) {
        *dst = src as libc::c_char;
    }
    let len = offset_of!(libc::sockaddr_un, sun_path) + 1 + addr.len();
    debug_assert!(len <= size_of::<libc::sockaddr_un>());
    Ok((sa, len as libc::socklen_t))
}

fn dgram_socket() -> io::Result<OwnedFd> {
    let ty = libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: plain socket creation; no pointers involved.
    let fd = syscall!(socket(libc::AF_UNIX, ty, 0))?;
    // SAFETY: `socket` just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn is_errno(e: &io::Error, errno: i32) -> bool {
    e.raw_os_error() == Some(errno)
}

/// The reader's end of a doorbell: a datagram socket bound to an abstract
/// address, readable while it has been rung and not yet drained.
#[derive(Debug)]
pub(crate) struct DoorbellReceiver {
    fd: OwnedFd,
}

impl DoorbellReceiver {
    /// Creates a non-blocking, close-on-exec datagram socket bound to the
    /// abstract address `addr` (without its leading NUL; see
    /// [`doorbell_address`]).
    ///
    /// # Errors
    ///
    /// `InvalidInput` if `addr` is empty or longer than 107 bytes;
    /// `EADDRINUSE` ([`io::ErrorKind::AddrInUse`]) if another socket holds the
    /// address; any other `socket` or `bind` error.
    pub(crate) fn bind(addr: &[u8]) -> io::Result<Self> {
        let (sa, len) = abstract_sockaddr(addr)?;
        let fd = dgram_socket()?;
        // SAFETY: `fd` is our open socket; `sa` is a valid sockaddr_un of at
        // least `len` bytes for the whole call.
        syscall!(bind(
            fd.as_raw_fd(),
            std::ptr::addr_of!(sa).cast::<libc::sockaddr>(),
            len
        ))?;
        Ok(DoorbellReceiver { fd })
    }

    /// Reads and discards every pending ring, without blocking. Returns how
    /// many datagrams were drained (0 if none was pending).
    ///
    /// # Errors
    ///
    /// Any `recv` error other than `EAGAIN` (nothing left) and `EINTR`
    /// (retried).
    pub(crate) fn drain(&self) -> io::Result<usize> {
        let mut buf = [0u8; 16];
        let mut count = 0;
        loop {
            // SAFETY: `fd` is our open socket; `buf` is valid writable memory
            // of `buf.len()` bytes.
            match syscall!(recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT
            )) {
                Ok(_) => count += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(count),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl AsFd for DoorbellReceiver {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The writer's end of doorbells: an unbound datagram socket that can ring any
/// receiver's address.
#[derive(Debug)]
pub(crate) struct DoorbellSender {
    fd: OwnedFd,
}

impl DoorbellSender {
    /// Creates an unbound, non-blocking, close-on-exec datagram socket.
    ///
    /// # Errors
    ///
    /// Any `socket` error (e.g. `EMFILE`).
    pub(crate) fn new() -> io::Result<Self> {
        Ok(DoorbellSender {
            fd: dgram_socket()?,
        })
    }

    /// Rings the doorbell bound at the abstract address `addr` (without its
    /// leading NUL): sends one byte, never blocking and never raising
    /// `SIGPIPE`.
    ///
    /// A full queue (`EAGAIN`: already rung and not yet drained) and a missing
    /// receiver (`ECONNREFUSED`, `ENOENT`: the reader is gone) count as
    /// success.
    ///
    /// # Errors
    ///
    /// `InvalidInput` if `addr` is empty or longer than 107 bytes; any other
    /// `sendto` error.
    pub(crate) fn ring(&self, addr: &[u8]) -> io::Result<()> {
        let (sa, len) = abstract_sockaddr(addr)?;
        let byte = 1u8;
        loop {
            // SAFETY: `fd` is our open socket; `byte` is one readable byte and
            // `sa` a valid sockaddr_un of at least `len` bytes for the call.
            let res = syscall!(sendto(
                self.fd.as_raw_fd(),
                std::ptr::addr_of!(byte).cast(),
                1,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                std::ptr::addr_of!(sa).cast::<libc::sockaddr>(),
                len
            ));
            match res {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || is_errno(&e, libc::ECONNREFUSED)
                        || is_errno(&e, libc::ENOENT) =>
                {
                    return Ok(())
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys;

    fn unique_addr() -> Vec<u8> {
        doorbell_address(sys::random_u64(), sys::getpid(), 0)
    }

    /// Polls `fd` for readability for up to `timeout_ms`.
    fn readable(fd: BorrowedFd<'_>, timeout_ms: i32) -> bool {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd for the whole call.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        assert!(n >= 0, "{}", io::Error::last_os_error());
        n == 1 && pfd.revents & libc::POLLIN != 0
    }

    #[test]
    fn address_format() {
        assert_eq!(
            doorbell_address(0xab, 3, 7),
            b"shmflow/00000000000000ab/3/7".to_vec()
        );
        let longest = doorbell_address(u64::MAX, u32::MAX, u32::MAX);
        assert!(longest.len() <= MAX_ADDR_LEN);
    }

    #[test]
    fn ring_makes_receiver_readable() {
        let addr = unique_addr();
        let rx = DoorbellReceiver::bind(&addr).unwrap();
        let tx = DoorbellSender::new().unwrap();
        assert!(!readable(rx.as_fd(), 0));
        assert_eq!(rx.drain().unwrap(), 0);
        tx.ring(&addr).unwrap();
        assert!(readable(rx.as_fd(), 1000));
        assert!(rx.drain().unwrap() >= 1);
        assert!(!readable(rx.as_fd(), 0));
    }

    #[test]
    fn ring_from_thread_wakes_poll() {
        let addr = unique_addr();
        let rx = DoorbellReceiver::bind(&addr).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(20));
                DoorbellSender::new().unwrap().ring(&addr).unwrap();
            });
            assert!(readable(rx.as_fd(), 5000));
        });
        assert_eq!(rx.drain().unwrap(), 1);
    }

    #[test]
    fn full_queue_and_missing_receiver_are_ok() {
        let addr = unique_addr();
        let tx = DoorbellSender::new().unwrap();
        // Nobody bound yet.
        tx.ring(&addr).unwrap();
        let rx = DoorbellReceiver::bind(&addr).unwrap();
        // Far more rings than the default queue length: later ones hit EAGAIN.
        for _ in 0..10_000 {
            tx.ring(&addr).unwrap();
        }
        let drained = rx.drain().unwrap();
        assert!((1..10_000).contains(&drained), "drained {drained}");
        drop(rx);
        // Receiver gone again.
        tx.ring(&addr).unwrap();
    }

    #[test]
    fn address_in_use_and_released_on_close() {
        let addr = unique_addr();
        let rx = DoorbellReceiver::bind(&addr).unwrap();
        let err = DoorbellReceiver::bind(&addr).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        drop(rx);
        DoorbellReceiver::bind(&addr).unwrap();
    }

    #[test]
    fn bad_addresses_are_rejected() {
        assert_eq!(
            DoorbellReceiver::bind(b"").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        let long = vec![b'x'; MAX_ADDR_LEN + 1];
        assert_eq!(
            DoorbellSender::new()
                .unwrap()
                .ring(&long)
                .unwrap_err()
                .kind(),
            io::ErrorKind::InvalidInput
        );
        // The longest address still works.
        let mut max = unique_addr();
        max.resize(MAX_ADDR_LEN, b'y');
        let rx = DoorbellReceiver::bind(&max).unwrap();
        DoorbellSender::new().unwrap().ring(&max).unwrap();
        assert!(readable(rx.as_fd(), 1000));
    }

    #[test]
    fn prefix_addresses_are_distinct() {
        // Abstract names are length-delimited: "…/1" and "…/12" differ.
        let a = doorbell_address(sys::random_u64(), sys::getpid(), 1);
        let mut b = a.clone();
        b.push(b'2');
        let rx_a = DoorbellReceiver::bind(&a).unwrap();
        let rx_b = DoorbellReceiver::bind(&b).unwrap();
        DoorbellSender::new().unwrap().ring(&b).unwrap();
        assert!(readable(rx_b.as_fd(), 1000));
        assert!(!readable(rx_a.as_fd(), 0));
    }
}

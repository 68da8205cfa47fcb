//! Liveness the kernel vouches for: the lock every attached peer holds, the FIFO every writer
//! holds open, and the fd a reader polls.
//!
//! * **Peer locks.** Peer entry `i` is guarded by an OFD write lock on byte
//!   [`LOCK_BASE`]` + i` of the segment, taken through an open file description of its own
//!   before the entry is claimed and dropped after it is freed. A peer whose entry is not FREE
//!   but whose byte is unlocked is dead: the kernel drops the lock when the process dies, in
//!   any pid namespace and whatever `/proc` shows. A test that fails (`EINVAL`, `ENOLCK`)
//!   means "unknown", and unknown peers are never reclaimed. The creator holds byte
//!   [`CREATOR_BYTE`] while its ring handle lives (`RingInfo::creator_alive`).
//! * **Children.** A lock or FIFO end inherited through `fork` would keep a dead parent
//!   looking alive, so both are registered with `sys::atfork::close_in_children` (closed in
//!   every forked child before user code runs) and opened close-on-exec.
//! * **Writer FIFO.** Each ring has a companion FIFO, `/dev/shm/.shmflow-<token>.writers`,
//!   made by the creator with the ring's permissions. Writers hold it open; each reader's
//!   pollable fd (an epoll set of its doorbell socket and a read-only end of the FIFO)
//!   becomes readable when the last writer's end closes, cleanly or by death, so fd-only
//!   waiters wake and then learn from the segment which of the two it was.

use std::ffi::CString;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd};

use crate::shm::Segment;
use crate::sys::{self, atfork, fifo, lock};

/// Byte of the lock that guards peer entry 0 (entry `i` uses `LOCK_BASE + i`): far beyond any
/// segment, so locks never meet the data.
pub(crate) const LOCK_BASE: u64 = 1 << 50;
/// Byte the creator locks while its handle lives.
pub(crate) const CREATOR_BYTE: u64 = LOCK_BASE - 1;

/// What a lock test says about a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Liveness {
    Alive,
    Dead,
    Unknown,
}

/// Tests the lock on `byte` (through the segment's own descriptor, which holds no locks).
pub(crate) fn probe(segment: &Segment, byte: u64) -> Liveness {
    match lock::is_locked(segment.fd(), byte) {
        Ok(true) => Liveness::Alive,
        Ok(false) => Liveness::Dead,
        Err(e) => {
            log::debug!(
                "shmflow: lock test on {:?} failed: {e}",
                segment_name(segment)
            );
            Liveness::Unknown
        }
    }
}

fn segment_name(s: &Segment) -> String {
    format!("{s:?}")
}

/// A descriptor that belongs to the process that opened it: closed in forked children by the
/// fork handler, and forgotten (not closed again) if dropped there.
#[derive(Debug)]
struct ProcessFd {
    fd: ManuallyDrop<OwnedFd>,
    reg: atfork::ChildClose,
    epoch: u64,
}

impl ProcessFd {
    fn new(fd: OwnedFd) -> ProcessFd {
        let reg = atfork::close_in_children(fd.as_raw_fd());
        ProcessFd {
            fd: ManuallyDrop::new(fd),
            reg,
            epoch: atfork::fork_epoch(),
        }
    }
}

impl Drop for ProcessFd {
    fn drop(&mut self) {
        // SAFETY: `fd` is taken exactly once, here.
        let fd = unsafe { ManuallyDrop::take(&mut self.fd) };
        if self.epoch == atfork::fork_epoch() {
            // Unregister before closing: a fork in between must not close a reused number.
            self.reg.unregister();
            drop(fd);
        } else {
            // A forked child: the fork handler closed this number already, and it may name
            // another file now.
            let _ = fd.into_raw_fd();
        }
    }
}

/// An attached peer's lock (see the module docs).
#[derive(Debug)]
pub(crate) struct PeerLock {
    _fd: ProcessFd,
}

impl PeerLock {
    /// Takes the lock on `byte` through a new open file description of `segment`. `Ok(None)`
    /// when someone else holds it.
    pub(crate) fn take(segment: &Segment, byte: u64) -> io::Result<Option<PeerLock>> {
        let fd = segment.reopen()?;
        if !lock::try_lock(fd.as_fd(), byte)? {
            return Ok(None);
        }
        Ok(Some(PeerLock {
            _fd: ProcessFd::new(fd),
        }))
    }
}

/// The path of the writer FIFO of the ring whose token is `token`.
pub(crate) fn fifo_path(token: u64) -> CString {
    CString::new(crate::shm::companion_path(&format!("{token:016x}.writers"))).expect("no NUL")
}

/// The token of a writer FIFO from the `<what>` of its companion file name
/// (`<16 hex digits>.writers`), the inverse of [`fifo_path`].
pub(crate) fn fifo_token(what: &str) -> Option<u64> {
    let hex = what.strip_suffix(".writers")?;
    if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Makes the writer FIFO of a new ring: permission bits `mode` (read/write bits only), group
/// `gid` if given. An existing file of that name (a token collision or a stale FIFO) is
/// replaced.
pub(crate) fn create_fifo(token: u64, mode: u32, gid: Option<u32>) -> io::Result<()> {
    let path = fifo_path(token);
    match fifo::mkfifo(&path, mode) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fifo::unlink(&path)?;
            fifo::mkfifo(&path, mode)?;
        }
        other => other?,
    }
    if let Some(gid) = gid {
        if let Err(e) = fifo::chown_group(&path, gid) {
            let _ = fifo::unlink(&path);
            return Err(e);
        }
    }
    Ok(())
}

/// Removes the writer FIFO (the owner drops its ring, or `Ring::remove`).
pub(crate) fn remove_fifo(token: u64) {
    if let Err(e) = fifo::unlink(&fifo_path(token)) {
        if e.kind() != io::ErrorKind::NotFound {
            log::debug!("shmflow: removing the writer FIFO failed: {e}");
        }
    }
}

/// A writer's end of the FIFO.
#[derive(Debug)]
pub(crate) struct WriterHold {
    _fd: Option<ProcessFd>,
}

impl WriterHold {
    /// No FIFO (rings in process memory).
    pub(crate) fn none() -> WriterHold {
        WriterHold { _fd: None }
    }

    /// Opens the FIFO as a holder. A missing FIFO (removed by hand, or a ring in process
    /// memory) is no error: readers then learn of the writer's end by the lock test only.
    pub(crate) fn open(token: u64) -> WriterHold {
        let fd = match fifo::open_hold(&fifo_path(token)) {
            Ok(fd) => Some(ProcessFd::new(fd)),
            Err(e) => {
                log::debug!("shmflow: writer FIFO unavailable ({e}); fd waiters rely on timeouts");
                None
            }
        };
        WriterHold { _fd: fd }
    }
}

/// A reader's pollable fd: its doorbell and its watch on the writer FIFO, in one epoll set.
#[cfg(not(shmflow_no_doorbell))]
#[derive(Debug)]
pub(crate) struct ReaderFd {
    epoll: fifo::Epoll,
    doorbell: crate::sync::doorbell::DoorbellReceiver,
    watch: Option<OwnedFd>,
    /// Monotonic ns of the last hang-up test (they are rate-limited to one per ms).
    last_test: std::sync::atomic::AtomicU64,
}

#[cfg(not(shmflow_no_doorbell))]
impl ReaderFd {
    /// Binds the doorbell of reader entry `index`/`generation` and watches the FIFO.
    pub(crate) fn new(token: u64, index: u32, generation: u32) -> io::Result<ReaderFd> {
        use crate::sync::doorbell::{doorbell_address, DoorbellReceiver};
        let doorbell = DoorbellReceiver::bind(&doorbell_address(token, index, generation))?;
        let epoll = fifo::Epoll::new()?;
        epoll.add_readable(doorbell.as_fd())?;
        let watch = fifo::open_watch(&fifo_path(token)).ok();
        if let Some(w) = &watch {
            epoll.add_readable(w.as_fd())?;
        }
        Ok(ReaderFd {
            epoll,
            doorbell,
            watch,
            last_test: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Empties the doorbell's queue.
    pub(crate) fn drain(&self) {
        let _ = self.doorbell.drain();
    }

    /// Whether no writer holds the FIFO now (tested at most once per millisecond).
    pub(crate) fn writers_gone(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(w) = &self.watch else {
            return false;
        };
        let now = sys::monotonic_ns();
        if now.saturating_sub(self.last_test.load(Relaxed)) < 1_000_000 {
            return false;
        }
        self.last_test.store(now, Relaxed);
        fifo::hung_up(w.as_fd())
    }

    /// Blocks until the fd is readable or `timeout_ms` passes (for tests and simple loops).
    #[allow(dead_code)]
    pub(crate) fn wait(&self, timeout_ms: i32) -> io::Result<bool> {
        self.epoll.wait(timeout_ms)
    }
}

#[cfg(not(shmflow_no_doorbell))]
impl AsFd for ReaderFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }
}

/// Whether peer entry `i` may be alive: false only when its lock is known free. Rings in
/// process memory have no locks; their peers are this process's, alive while it runs.
pub(crate) fn peer_alive(shared: &super::shared::Shared, i: usize) -> bool {
    match shared.segment() {
        Some(seg) => probe(seg, LOCK_BASE + i as u64) != Liveness::Dead,
        None => true,
    }
}

/// Proof that peer entry `i` was found dead, holding its lock: while it lives nobody else can
/// claim the entry (claimers take the lock first) or reclaim it (reclaimers take it too).
#[derive(Debug)]
pub(crate) struct DeadPeer {
    _lock: PeerLock,
}

/// `Some` when peer entry `i`'s lock is free and we could take it: its holder is dead (or the
/// entry is between occupants), and we alone may reclaim it until the result drops. `None`
/// when it is held (alive, or being reclaimed by someone else) or the test failed (unknown).
/// Rings in process memory have no locks: their peers are this process's, never dead.
pub(crate) fn take_dead(shared: &super::shared::Shared, i: usize) -> Option<DeadPeer> {
    let seg = shared.segment()?;
    let byte = LOCK_BASE + i as u64;
    // The cheap test first: live peers are the common case, and taking a lock needs a new
    // open file description.
    if probe(seg, byte) != Liveness::Dead {
        return None;
    }
    match PeerLock::take(seg, byte) {
        Ok(Some(lock)) => Some(DeadPeer { _lock: lock }),
        Ok(None) => None,
        Err(e) => {
            log::debug!("shmflow: taking a dead peer's lock failed: {e}");
            None
        }
    }
}

//! Zero-copy rings of `ndarray` frames in POSIX shared memory.
//!
//! A *ring* is a named shared-memory segment holding a fixed number of slots, each big enough
//! for one frame (an array of a fixed element type and a maximum shape). A [`Writer`] reserves a
//! slot and fills it in place through an [`ndarray::ArrayViewMut`]; a [`Reader`] in another
//! process gets an [`ndarray::ArrayView`] of the same memory. Frames are never copied through
//! the kernel.
//!
//! ```
//! use shmflow::{Ring, Mode, Backpressure};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let name = format!("doc-lib-{}", std::process::id());
//! // Process A: create a lossless broadcast ring of 1080p RGB frames.
//! let ring = Ring::<u8>::create(&name)
//!     .shape([1080, 1920, 3])
//!     .slots(4)
//!     .mode(Mode::Broadcast(Backpressure::Block))
//!     .build()?;
//!
//! // Process B (here the same one): open it by name and attach a reader.
//! let mut reader = Ring::<u8>::open(&name)?.reader()?;
//!
//! let mut writer = ring.writer()?;
//! let mut slot = writer.reserve()?;          // waits for a free slot
//! slot.view_mut().fill(128);                 // write in place
//! slot.set_tag(42);
//! slot.commit();                             // publish
//!
//! let frame = reader.recv()?;                // waits for a frame
//! assert_eq!(frame.shape(), &[1080, 1920, 3]);
//! assert_eq!(frame[[0, 0, 0]], 128);         // read in place (derefs to ArrayView)
//! assert_eq!(frame.tag(), 42);
//! # Ok(()) }
//! ```
//!
//! # Delivery modes
//!
//! - [`Mode::Broadcast`] with [`Backpressure::Block`]: every reader sees every frame; the
//!   writer waits for the slowest live reader (recording, analysis).
//! - [`Mode::Broadcast`] with [`Backpressure::DropOldest`]: the writer never waits; a slow
//!   reader skips ahead and [`ReadSlot::missed`] says how many frames it lost (live preview).
//! - [`Mode::Queue`]: each frame goes to exactly one reader; several writers (work queues).
//!
//! Every blocking call has `try_`, blocking and `_timeout` forms. Waiting spins briefly, then
//! sleeps on a process-shared semaphore ([`WaitStrategy`]). A [`Reader`] is also pollable: it
//! implements `AsFd` and joins epoll, mio or tokio loops.
//!
//! # Crashes
//!
//! Peers register with their pid and its start time. A waiting endpoint checks the peers it
//! depends on every liveness interval (100 ms by default): a reader killed while holding a slot
//! is reclaimed and no longer holds a lossless writer; a writer killed mid-frame never exposes
//! the half-written frame, and its readers get every committed frame, then
//! [`RecvError::Disconnected`].
//!
//! # Safety model
//!
//! The segment is mapped with [`memmap2::MmapRaw`] and never turned into a `&[u8]` or
//! `&mut [u8]` as a whole. Everything in the header, peer table and slot table is an atomic,
//! so no access to them is a data race whatever other processes do. Payload bytes are exposed
//! as slices only for a slot the protocol has handed to the caller: a writer's `WRITING` slot,
//! which no reader looks at, or a reader's committed slot, which no writer reuses until the
//! reader releases it.
//!
//! Soundness therefore assumes that every process attached to a ring follows this protocol
//! (they all use this crate, or a client that implements `docs/PROTOCOL.md` faithfully).
//! What shmflow does *not* assume is that their bytes are sane: [`Ring::open`] validates the
//! magic, version, layout hash, every offset against the real file size, the dtype and the
//! number of dimensions before any view exists; frame metadata (shape, length) is checked
//! before a view is built (and nothing is sized by it); indices read from shared memory are
//! reduced modulo the slot count or only compared; every lock-free loop and every scan is
//! bounded; the process-shared semaphores' words are checked before the C library sees them.
//! A corrupted or hostile segment gives an error, not a panic or an out-of-bounds view
//! (`tests/ring_hostile.rs` and the fuzz target in `fuzz/` check this on arbitrary bytes). [`Element`] is an `unsafe trait` because a reader reinterprets
//! another process's bytes as `T`: only types where every bit pattern is valid qualify; that an
//! implementation has the size and alignment of its dtype is checked at compile time.
//!
//! Endpoints are bound to their process: a [`Ring`], [`Reader`] or [`Writer`] inherited
//! through `fork` refuses to work in the child (`WrongProcess`), and frame guards
//! ([`ReadSlot`], [`WriteSlot`]) own their claim and release it when dropped, so no safe
//! arrangement of forks and threads lets a writer reuse a slot a view still borrows. A peer is
//! judged dead only when the kernel has released its lock (an open-file-description lock on
//! a byte of the segment), never from its pid.
//!
//! What shmflow cannot defend against is a process with write access that shrinks the segment
//! (`ftruncate`): every peer's next access to the cut-off pages raises `SIGBUS`, which kills
//! it. shmflow installs no `SIGBUS` handler (a handler cannot resume the interrupted access
//! soundly); [`Ring::open`] checks the size once, when it maps. The defence is the segment's
//! mode: only processes you let write it can.
//!
//! Segments are created `0600` (owner only) by default. The creator unlinks the segment when
//! its last handle is dropped, unless [`Ring::release_ownership`] is called.
//!
//! # Platforms
//!
//! Linux (x86_64 and aarch64, glibc ≥ 2.30 for `sem_clockwait`). Semaphores live inside the
//! segment (`sem_init` with `pshared = 1`); doorbells are abstract Unix datagram sockets (see
//! `docs/PROTOCOL.md`). With `--cfg shmflow_no_doorbell` readers have no doorbell (no `AsFd`)
//! and blocking waits use the semaphores only.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs, missing_debug_implementations)]
#![cfg_attr(loom, allow(dead_code, unused_imports))]
// The no-doorbell build tests the fallback wake-up path; the doorbell code stays compiled in
// it (unused), so that both configurations check the same code.
#![cfg_attr(shmflow_no_doorbell, allow(dead_code, unused_imports))]

mod array;
#[cfg(not(loom))]
pub mod error;
mod primitive;
#[cfg(not(loom))]
pub mod process;
mod ring;
#[cfg(not(loom))]
pub mod segments;
#[cfg(not(loom))]
pub(crate) mod shm;
#[cfg(not(loom))]
pub(crate) mod sync;
#[cfg(not(loom))]
pub(crate) mod sys;

#[cfg(loom)]
#[doc(hidden)]
pub mod __loom;

/// Hostile-segment testing: the entry point of `tests/ring_hostile.rs` and of the `cargo fuzz`
/// target in `fuzz/`, with the `fuzz` feature. Not a stable API.
#[cfg(all(feature = "fuzz", not(loom)))]
#[doc(hidden)]
pub mod __fuzz {
    pub use crate::ring::fuzz::{open_and_exercise, Outcome, Stats};
}

pub use array::{DType, Element};
#[cfg(not(loom))]
pub use error::{
    AttachError, ChannelError, CreateError, ExitReason, LayoutError, NameError, OpenError,
    PoolError, ProcessError, ReadersTimeout, RecvError, RecvTimeoutError, ReserveError,
    ReserveTimeoutError, SendError, ShapeError, SpawnError, TaskError, TaskErrorKind, TryRecvError,
    TryReserveError,
};
#[cfg(not(loom))]
pub use ring::{
    inspect, list, reclaim_dead_peers, PeerStatus, ReadSlot, Reader, ReaderBuilder, Ring,
    RingBuilder, RingInfo, RingStatus, WaitStrategy, WriteSlot, Writer, WriterDeath,
    DEFAULT_LIVENESS_INTERVAL, DEFAULT_MAX_READERS, DEFAULT_MAX_WRITERS, DEFAULT_PERMISSIONS,
    DEFAULT_SLOTS,
};
pub use ring::{Backpressure, Mode, MAX_DIMS, MAX_PEERS, MAX_SLOTS};
#[cfg(not(loom))]
pub use sys::group_id;

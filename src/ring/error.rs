//! The ring layer's errors: creating, opening and attaching to rings, reserving and sending,
//! receiving, shapes. Re-exported at the crate root and in `shmflow::error`.
//!
//! Variants are facts the caller can act on (`AlreadyExists`, `NotFound`, `LayoutMismatch`,
//! `Full`, `Timeout`, `Disconnected`); OS failures that cannot be classified keep their
//! [`io::Error`] as `source`. The try/blocking/timeout triples follow crossbeam-channel:
//! `TryRecvError` → `RecvError` → `RecvTimeoutError` convert into each other with `From`.

use std::io;

pub use super::layout::LayoutError;
pub use crate::shm::NameError;

/// Creating a ring failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CreateError {
    /// The name is empty, too long or has characters outside `A-Z a-z 0-9 . _ -`.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// The shape, slot count or peer counts are not acceptable.
    #[error("invalid ring layout: {0}")]
    Layout(#[from] LayoutError),
    /// A segment with this name exists already.
    #[error(
        "a ring named {name:?} already exists (remove it with `shmflow rm {name}` if it is stale)"
    )]
    AlreadyExists {
        /// The ring name.
        name: String,
    },
    /// The OS refused to create the segment.
    #[error("permission denied creating ring {name:?}")]
    PermissionDenied {
        /// The ring name.
        name: String,
    },
    /// [`RingBuilder::group`](crate::RingBuilder::group) named a group this process may not
    /// give files to (it must be root or a member). Nothing was left behind.
    #[error("ring {name:?} cannot be given to group {gid}: this process is neither root nor a member of it")]
    GroupDenied {
        /// The ring name.
        name: String,
        /// The group requested.
        gid: u32,
    },
    /// `/dev/shm` has not enough free memory for the segment (it is a tmpfs; containers often
    /// limit it to 64 MiB: `docker run --shm-size`).
    #[error("not enough space in /dev/shm for ring {name:?} ({bytes} bytes needed)")]
    NoSpace {
        /// The ring name.
        name: String,
        /// The segment size.
        bytes: u64,
    },
    /// Another OS error.
    #[error("could not create ring {name:?}")]
    Io {
        /// The ring name.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Opening an existing ring failed. Nothing was mapped beyond the header, no view exists.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The name is empty, too long or has characters outside `A-Z a-z 0-9 . _ -`.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// No ring of that name exists.
    #[error("no ring named {name:?} (see `shmflow ls`)")]
    NotFound {
        /// The ring name.
        name: String,
    },
    /// The segment exists but this user may not open it (rings are created 0600).
    #[error("permission denied opening ring {name:?} (it belongs to another user, or its mode forbids access)")]
    PermissionDenied {
        /// The ring name.
        name: String,
    },
    /// The segment does not start with shmflow's magic number: it is not a ring.
    #[error("{name:?} is not a shmflow ring (bad magic number)")]
    NotARing {
        /// The ring name.
        name: String,
    },
    /// The ring was made by an incompatible version of shmflow.
    #[error("ring {name:?} has layout version {found}, this shmflow reads version {expected}")]
    VersionMismatch {
        /// The ring name.
        name: String,
        /// Version in the header.
        found: u32,
        /// Version this library implements.
        expected: u32,
    },
    /// The creator did not finish initialising the ring in time (or died while doing it).
    #[error(
        "ring {name:?} is still being initialised by its creator (or the creator died doing it)"
    )]
    NotReady {
        /// The ring name.
        name: String,
    },
    /// The segment is shorter than its header says.
    #[error("ring {name:?} is truncated: {size} bytes, its layout needs {expected}")]
    Truncated {
        /// The ring name.
        name: String,
        /// Actual size in bytes.
        size: u64,
        /// Size the layout needs.
        expected: u64,
    },
    /// The header is inconsistent (corrupted, or written by something that is not shmflow).
    #[error("ring {name:?} has a corrupted header: {what}")]
    Corrupted {
        /// The ring name.
        name: String,
        /// Which check failed.
        what: String,
    },
    /// The ring exists but its element type or number of dimensions differs from the request.
    #[error("ring {name:?} holds {found}, but {expected} was requested")]
    LayoutMismatch {
        /// The ring name.
        name: String,
        /// What the caller asked for, e.g. `f32 with 3 dimensions`.
        expected: String,
        /// What the header says, e.g. `u8 [1080, 1920, 3]`.
        found: String,
    },
    /// Another OS error.
    #[error("could not open ring {name:?}")]
    Io {
        /// The ring name.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// [`Ring::open_wait`](crate::Ring::open_wait): the ring did not appear (or finish its
    /// initialisation) in time.
    #[error("ring {name:?} did not appear within {waited:?} (is its writer running?)")]
    Timeout {
        /// The ring name.
        name: String,
        /// How long the call waited.
        waited: std::time::Duration,
    },
}

/// [`Writer::wait_for_readers`](crate::Writer::wait_for_readers) ran out of time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{attached} of {wanted} readers attached within {waited:?}")]
pub struct ReadersTimeout {
    /// Readers asked for.
    pub wanted: usize,
    /// Readers attached when the time ran out.
    pub attached: usize,
    /// How long the call waited.
    pub waited: std::time::Duration,
}

impl OpenError {
    /// The error of opening (or unlinking) the segment of the ring `name`. A segment of size 0
    /// is one whose creator has not sized it yet: [`OpenError::NotReady`].
    pub(crate) fn from_shm(name: &str, e: crate::shm::SegmentOpenError) -> OpenError {
        use crate::shm::SegmentOpenError as E;
        match e {
            E::Name(n) => OpenError::InvalidName(n),
            E::NotFound => OpenError::NotFound { name: name.into() },
            E::PermissionDenied => OpenError::PermissionDenied { name: name.into() },
            E::TooSmall { size: 0, .. } => OpenError::NotReady { name: name.into() },
            E::TooSmall { size, min } => OpenError::Truncated {
                name: name.into(),
                size,
                expected: min,
            },
            E::Io(source) => OpenError::Io {
                name: name.into(),
                source,
            },
        }
    }

    /// True for [`OpenError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, OpenError::NotFound { .. })
    }
}

/// Attaching a reader or writer to a ring failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttachError {
    /// All reader entries are taken by live readers.
    #[error("all {max} reader entries of the ring are in use by live readers")]
    TooManyReaders {
        /// The ring's `max_readers`.
        max: u32,
    },
    /// All writer entries are taken by live writers (a broadcast ring has one).
    #[error("all {max} writer entries of the ring are in use by live writers")]
    TooManyWriters {
        /// The ring's `max_writers`.
        max: u32,
    },
    /// Another process reclaimed this endpoint's entry while it was attaching: it found the
    /// entry's liveness lock free (a bug, or a process that does not follow the protocol).
    #[error("another process reclaimed this endpoint's entry while it attached")]
    Reclaimed,
    /// The [`Ring`](crate::Ring) handle was opened by another process (it was inherited
    /// through `fork`): endpoints must be attached by the process that uses them.
    #[error("this ring handle was opened by process {owner}: open the ring after the fork, in the process that uses it (e.g. in worker_init)")]
    WrongProcess {
        /// The process that opened the handle.
        owner: u32,
    },
    /// `max_held` must be at least 1 and at most the limit (slots - 1; 16 for readers that
    /// pin their frames: drop-oldest rings and lossy readers).
    #[error("a reader of this ring may hold 1 to {max} frames at once, {requested} requested")]
    MaxHeld {
        /// What was asked for.
        requested: u32,
        /// The largest value this ring and reader kind allow.
        max: u32,
    },
    /// Setting up the reader's doorbell, the liveness lock, or reading `/proc` failed.
    #[error("could not attach to the ring")]
    Io(#[source] io::Error),
}

/// [`Writer::try_reserve`](crate::Writer::try_reserve) could not reserve a slot now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TryReserveError {
    /// No slot is free: the queue is full, the slowest reader of a lossless ring has not
    /// released the oldest frame, or (drop-oldest) readers hold every slot.
    #[error("the ring is full")]
    Full,
    /// 2^48 frames have been written to this ring; create a new one.
    #[error("the ring's sequence numbers are exhausted (2^48 frames)")]
    Exhausted,
    /// This writer's previous [`WriteSlot`](crate::WriteSlot) is still alive: commit or drop
    /// it first (a writer fills one frame at a time).
    #[error("this writer already has a reserved slot: commit or drop it first")]
    AlreadyReserved,
    /// The writer was attached by another process (it was inherited through `fork`).
    #[error("this writer belongs to process {owner}: open the ring after the fork, in the process that uses it (e.g. in worker_init)")]
    WrongProcess {
        /// The process that attached it.
        owner: u32,
    },
}

/// [`Writer::reserve`](crate::Writer::reserve) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReserveError {
    /// 2^48 frames have been written to this ring; create a new one.
    #[error("the ring's sequence numbers are exhausted (2^48 frames)")]
    Exhausted,
    /// This writer's previous [`WriteSlot`](crate::WriteSlot) is still alive.
    #[error("this writer already has a reserved slot: commit or drop it first")]
    AlreadyReserved,
    /// The writer was attached by another process (it was inherited through `fork`).
    #[error("this writer belongs to process {owner}: open the ring after the fork, in the process that uses it (e.g. in worker_init)")]
    WrongProcess {
        /// The process that attached it.
        owner: u32,
    },
}

/// [`Writer::reserve_timeout`](crate::Writer::reserve_timeout) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReserveTimeoutError {
    /// No slot became free before the timeout.
    #[error("timed out waiting for a free slot")]
    Timeout,
    /// 2^48 frames have been written to this ring; create a new one.
    #[error("the ring's sequence numbers are exhausted (2^48 frames)")]
    Exhausted,
    /// This writer's previous [`WriteSlot`](crate::WriteSlot) is still alive.
    #[error("this writer already has a reserved slot: commit or drop it first")]
    AlreadyReserved,
    /// The writer was attached by another process (it was inherited through `fork`).
    #[error("this writer belongs to process {owner}: open the ring after the fork, in the process that uses it (e.g. in worker_init)")]
    WrongProcess {
        /// The process that attached it.
        owner: u32,
    },
}

impl TryReserveError {
    /// True for [`TryReserveError::Full`].
    pub fn is_full(&self) -> bool {
        matches!(self, TryReserveError::Full)
    }
}

impl From<ReserveError> for ReserveTimeoutError {
    fn from(e: ReserveError) -> Self {
        match e {
            ReserveError::Exhausted => ReserveTimeoutError::Exhausted,
            ReserveError::AlreadyReserved => ReserveTimeoutError::AlreadyReserved,
            ReserveError::WrongProcess { owner } => ReserveTimeoutError::WrongProcess { owner },
        }
    }
}

/// [`Writer::send`](crate::Writer::send) failed; nothing was published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The array's shape does not fit the ring (wrong rank, or larger than the max shape).
    #[error(transparent)]
    Shape(#[from] ShapeError),
    /// No slot could be reserved.
    #[error(transparent)]
    Reserve(#[from] ReserveError),
}

/// [`Reader::try_recv`](crate::Reader::try_recv) returned no frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TryRecvError {
    /// No frame is ready now.
    #[error("no frame is ready")]
    Empty,
    /// Every frame has been read and the writer detached cleanly (the stream ended).
    #[error("the ring is disconnected: the writer detached and every frame has been read")]
    Disconnected,
    /// Every frame has been read and the writer died (it was found dead and reclaimed):
    /// the stream ended abnormally.
    #[error(
        "the writer (pid {pid}) died after {frames} frames; every committed frame has been read"
    )]
    WriterDied {
        /// The dead writer's pid (in its own pid namespace).
        pid: u32,
        /// Frames the ring had committed when it was found dead.
        frames: u64,
    },
    /// The frame with this sequence number had invalid metadata (shape or length) and was
    /// skipped. Only a misbehaving writer produces this.
    #[error("frame {seq} had invalid metadata and was skipped")]
    Corrupted {
        /// The skipped frame.
        seq: u64,
    },
    /// The reader already holds `max_held` frames: drop one (copy what you keep, e.g. with
    /// `to_owned()`), or attach with a larger `max_held`.
    #[error("this reader already holds {max_held} frame(s), its max_held: drop a frame first (copy data you keep with .to_owned()), or attach with a larger max_held")]
    TooManyHeld {
        /// The reader's limit.
        max_held: u32,
    },
    /// The reader was attached by another process (it was inherited through `fork`).
    #[error("this reader belongs to process {owner}: open the ring after the fork, in the process that uses it (e.g. in worker_init)")]
    WrongProcess {
        /// The process that attached it.
        owner: u32,
    },
}

/// [`Reader::recv`](crate::Reader::recv) returned no frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// Every frame has been read and the writer detached cleanly (the stream ended).
    #[error("the ring is disconnected: the writer detached and every frame has been read")]
    Disconnected,
    /// Every frame has been read and the writer died.
    #[error(
        "the writer (pid {pid}) died after {frames} frames; every committed frame has been read"
    )]
    WriterDied {
        /// The dead writer's pid (in its own pid namespace).
        pid: u32,
        /// Frames the ring had committed when it was found dead.
        frames: u64,
    },
    /// The frame with this sequence number had invalid metadata and was skipped.
    #[error("frame {seq} had invalid metadata and was skipped")]
    Corrupted {
        /// The skipped frame.
        seq: u64,
    },
    /// The reader already holds `max_held` frames (see [`TryRecvError::TooManyHeld`]).
    #[error("this reader already holds {max_held} frame(s), its max_held: drop a frame first (copy data you keep with .to_owned()), or attach with a larger max_held")]
    TooManyHeld {
        /// The reader's limit.
        max_held: u32,
    },
    /// The reader was attached by another process (it was inherited through `fork`).
    #[error("this reader belongs to process {owner}: open the ring after the fork, in the process that uses it (e.g. in worker_init)")]
    WrongProcess {
        /// The process that attached it.
        owner: u32,
    },
}

/// [`Reader::recv_timeout`](crate::Reader::recv_timeout) returned no frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecvTimeoutError {
    /// No frame arrived before the timeout.
    #[error("timed out waiting for a frame")]
    Timeout,
    /// Every frame has been read and the writer detached cleanly (the stream ended).
    #[error("the ring is disconnected: the writer detached and every frame has been read")]
    Disconnected,
    /// Every frame has been read and the writer died.
    #[error(
        "the writer (pid {pid}) died after {frames} frames; every committed frame has been read"
    )]
    WriterDied {
        /// The dead writer's pid (in its own pid namespace).
        pid: u32,
        /// Frames the ring had committed when it was found dead.
        frames: u64,
    },
    /// The frame with this sequence number had invalid metadata and was skipped.
    #[error("frame {seq} had invalid metadata and was skipped")]
    Corrupted {
        /// The skipped frame.
        seq: u64,
    },
    /// The reader already holds `max_held` frames (see [`TryRecvError::TooManyHeld`]).
    #[error("this reader already holds {max_held} frame(s), its max_held: drop a frame first (copy data you keep with .to_owned()), or attach with a larger max_held")]
    TooManyHeld {
        /// The reader's limit.
        max_held: u32,
    },
    /// The reader was attached by another process (it was inherited through `fork`).
    #[error("this reader belongs to process {owner}: open the ring after the fork, in the process that uses it (e.g. in worker_init)")]
    WrongProcess {
        /// The process that attached it.
        owner: u32,
    },
}

impl TryRecvError {
    /// True for [`TryRecvError::Empty`].
    pub fn is_empty(&self) -> bool {
        matches!(self, TryRecvError::Empty)
    }
    /// True when the stream is over: [`TryRecvError::Disconnected`] or
    /// [`TryRecvError::WriterDied`].
    pub fn is_disconnected(&self) -> bool {
        matches!(
            self,
            TryRecvError::Disconnected | TryRecvError::WriterDied { .. }
        )
    }
}

impl RecvError {
    /// True when the stream is over: [`RecvError::Disconnected`] or [`RecvError::WriterDied`].
    pub fn is_disconnected(&self) -> bool {
        matches!(self, RecvError::Disconnected | RecvError::WriterDied { .. })
    }
}

impl RecvTimeoutError {
    /// True for [`RecvTimeoutError::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, RecvTimeoutError::Timeout)
    }
    /// True when the stream is over: [`RecvTimeoutError::Disconnected`] or
    /// [`RecvTimeoutError::WriterDied`].
    pub fn is_disconnected(&self) -> bool {
        matches!(
            self,
            RecvTimeoutError::Disconnected | RecvTimeoutError::WriterDied { .. }
        )
    }
}

impl From<RecvError> for RecvTimeoutError {
    fn from(e: RecvError) -> Self {
        match e {
            RecvError::Disconnected => RecvTimeoutError::Disconnected,
            RecvError::WriterDied { pid, frames } => RecvTimeoutError::WriterDied { pid, frames },
            RecvError::Corrupted { seq } => RecvTimeoutError::Corrupted { seq },
            RecvError::TooManyHeld { max_held } => RecvTimeoutError::TooManyHeld { max_held },
            RecvError::WrongProcess { owner } => RecvTimeoutError::WrongProcess { owner },
        }
    }
}

impl From<RecvError> for TryRecvError {
    fn from(e: RecvError) -> Self {
        match e {
            RecvError::Disconnected => TryRecvError::Disconnected,
            RecvError::WriterDied { pid, frames } => TryRecvError::WriterDied { pid, frames },
            RecvError::Corrupted { seq } => TryRecvError::Corrupted { seq },
            RecvError::TooManyHeld { max_held } => TryRecvError::TooManyHeld { max_held },
            RecvError::WrongProcess { owner } => TryRecvError::WrongProcess { owner },
        }
    }
}

/// A frame shape does not fit the ring.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// Wrong number of dimensions.
    #[error("shape {got:?} has {} dimensions, the ring has {expected}", got.len())]
    WrongRank {
        /// The ring's number of dimensions.
        expected: usize,
        /// The shape given.
        got: Vec<usize>,
    },
    /// A dimension exceeds the ring's max shape.
    #[error("shape {got:?} does not fit the ring's max shape {max:?}")]
    TooLarge {
        /// The ring's max shape.
        max: Vec<usize>,
        /// The shape given.
        got: Vec<usize>,
    },
}

//! Error types, one enum per operation family.
//!
//! Variants are facts the caller can act on (`AlreadyExists`, `NotFound`, `LayoutMismatch`,
//! `Full`, `Timeout`, `Disconnected`); OS failures that cannot be classified keep their
//! [`io::Error`] as `source`. The try/blocking/timeout triples follow crossbeam-channel:
//! `TryRecvError` → `RecvError` → `RecvTimeoutError` convert into each other with `From`.

use std::io;

pub use crate::ring::layout::LayoutError;
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
}

impl OpenError {
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

/// A control-channel operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The other end closed the channel (its process exited or dropped it).
    #[error("the other end of the control channel is closed")]
    Disconnected,
    /// Nothing arrived before the timeout.
    #[error("timed out waiting on the control channel")]
    Timeout,
    /// Nothing is available now (`try_recv`).
    #[error("no message is available")]
    Empty,
    /// A frame did not decode as the expected type (the two ends disagree on the message type,
    /// or the peer is not a shmflow process).
    #[error("could not decode a control message")]
    Decode(#[source] postcard::Error),
    /// A frame announced a size above the 1 GiB limit.
    #[error("control frame of {0} bytes exceeds the 1 GiB limit")]
    TooLarge(u64),
    /// Another OS error.
    #[error("control channel I/O error")]
    Io(#[source] io::Error),
}

/// Starting a process failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// `fork` was refused because the process already runs other threads: a forked child would
    /// inherit locks held by threads that do not exist in it, and can hang. Fork before starting
    /// threads, use `StartMethod::Reexec`, or accept the risk with `allow_threads(true)`.
    #[error("refusing to fork: this process has {threads} threads (fork first, then threads; or use StartMethod::Reexec, or allow_threads(true) to accept the risk)")]
    Threads {
        /// The number of threads found in `/proc/self/task`.
        threads: usize,
    },
    /// A CPU id given for pinning does not exist or is not allowed for this process.
    #[error("cannot pin to CPU(s) {cpus:?}: the online CPUs are {allowed:?}")]
    BadCpus {
        /// The CPUs asked for.
        cpus: Vec<usize>,
        /// The CPUs that are online.
        allowed: Vec<usize>,
    },
    /// The re-executed child could not start its entry point.
    #[error("the re-executed child could not start: {0}")]
    Child(String),
    /// An OS error (fork, exec, socketpair).
    #[error("could not start the process")]
    Io(#[source] io::Error),
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// It exited with this code (0 = its `run` returned `Ok`).
    Exited(i32),
    /// It was killed by a signal.
    Signaled {
        /// Signal number.
        signal: i32,
        /// Its name, e.g. `SIGKILL` (what the OOM killer sends).
        name: String,
    },
    /// It panicked.
    Panicked {
        /// The panic message.
        message: String,
        /// `file:line:column` of the panic.
        location: String,
    },
    /// Its `run` returned an error.
    Failed {
        /// The error, formatted with its sources.
        message: String,
    },
}

impl ExitReason {
    /// True for a clean exit (code 0).
    pub fn is_success(&self) -> bool {
        matches!(self, ExitReason::Exited(0))
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::Exited(c) => write!(f, "exited with code {c}"),
            ExitReason::Signaled { name, .. } => write!(f, "killed by {name}"),
            ExitReason::Panicked { message, location } => {
                write!(f, "panicked at {location}: {message}")
            }
            ExitReason::Failed { message } => write!(f, "failed: {message}"),
        }
    }
}

/// Talking to, or waiting for, a process failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// The process ended while we expected it to answer (or ended with a failure).
    #[error("process {name} (pid {pid}) {reason}")]
    Died {
        /// Process name.
        name: String,
        /// Its pid.
        pid: u32,
        /// How it ended.
        reason: ExitReason,
    },
    /// No answer before the timeout.
    #[error("timed out waiting for process {name}")]
    Timeout {
        /// Process name.
        name: String,
    },
    /// The control channel failed for another reason.
    #[error("control channel of process {name} failed")]
    Channel {
        /// Process name.
        name: String,
        /// What failed.
        #[source]
        source: ChannelError,
    },
    /// An OS error while waiting for or signalling the process.
    #[error("process {name}")]
    Io {
        /// Process name.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Why one task of a pool failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task {index} failed on worker {worker}: {kind}")]
pub struct TaskError {
    /// The task's index in its map (0-based; 0 for `apply`).
    pub index: u64,
    /// The worker that ran it.
    pub worker: usize,
    /// What happened.
    pub kind: TaskErrorKind,
}

/// What happened to a failed task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskErrorKind {
    /// The task panicked; the worker caught it and went on.
    Panicked {
        /// The panic message.
        message: String,
        /// `file:line:column`.
        location: String,
    },
    /// The worker process died while running the task (killed, e.g. by the OOM killer, or
    /// crashed); it was replaced.
    WorkerDied {
        /// How the worker ended.
        reason: ExitReason,
    },
    /// The task ran longer than the pool's task timeout; its worker was killed and replaced.
    TimedOut {
        /// The timeout.
        after: std::time::Duration,
    },
}

impl std::fmt::Display for TaskErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaskErrorKind::Panicked { message, location } => {
                write!(f, "panicked at {location}: {message}")
            }
            TaskErrorKind::WorkerDied { reason } => write!(f, "worker {reason}"),
            TaskErrorKind::TimedOut { after } => write!(f, "timed out after {after:?}"),
        }
    }
}

/// A worker pool operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// A task failed (`map`, `apply`, `AsyncResult::get`).
    #[error(transparent)]
    Task(#[from] TaskError),
    /// A worker could not be started.
    #[error("could not start a worker")]
    Spawn(#[from] SpawnError),
    /// Workers keep dying before they finish `worker_init`: the pool gave up.
    #[error("worker {worker} died {attempts} times in a row during worker_init: {reason}")]
    WorkerInit {
        /// Worker id.
        worker: usize,
        /// Consecutive failures.
        attempts: u32,
        /// How the last attempt ended.
        reason: ExitReason,
    },
    /// `AsyncResult::get_timeout` ran out of time.
    #[error("timed out waiting for a task result")]
    Timeout,
    /// Talking to a worker failed in a way that is not a worker death.
    #[error("worker control channel failed")]
    Process(#[source] ProcessError),
    /// An OS error (polling, shared status block).
    #[error("worker pool I/O error")]
    Io(#[source] io::Error),
}

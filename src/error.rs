//! Error types, one enum per operation family, defined in their layer (the ring's in
//! `ring/error.rs`, [`crate::process`]'s in `process/error.rs`, names in `shm`) and gathered
//! here.
//!
//! Variants are facts the caller can act on (`AlreadyExists`, `NotFound`, `LayoutMismatch`,
//! `Full`, `Timeout`, `Disconnected`); OS failures that cannot be classified keep their
//! [`io::Error`](std::io::Error) as `source`. The try/blocking/timeout triples follow
//! crossbeam-channel: `TryRecvError` → `RecvError` → `RecvTimeoutError` convert into each
//! other with `From`.

pub use crate::process::error::{
    ChannelError, ExitReason, PoolError, ProcessError, SpawnError, TaskError, TaskErrorKind,
};
pub use crate::ring::error::{
    AttachError, CreateError, LayoutError, NameError, OpenError, ReadersTimeout, RecvError,
    RecvTimeoutError, ReserveError, ReserveTimeoutError, SendError, ShapeError, TryRecvError,
    TryReserveError,
};

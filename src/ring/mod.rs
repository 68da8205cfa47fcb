//! Rings of array frames in shared memory.
//!
//! A ring is one named POSIX shared-memory segment holding a header, a peer table, a slot table
//! and `slots` payload buffers, each big enough for a frame of the ring's max shape. Writers
//! [`reserve`](Writer::reserve) a slot, fill it in place through an `ndarray` view and
//! [`commit`](WriteSlot::commit) it; readers [`recv`](Reader::recv) a committed slot and read it
//! in place; dropping the [`ReadSlot`] releases it. Nothing is copied.
//!
//! The protocol (slot stamps, cursors, pins, the queue) is described in [`protocol`]'s module
//! docs; waiting and waking in [`wait`]'s; the byte layout in `docs/PROTOCOL.md`.

pub(crate) mod layout;
pub(crate) mod protocol;
pub(crate) mod shared;

#[cfg(all(test, not(loom)))]
mod proptests;
#[cfg(all(test, not(loom)))]
mod reclaim_tests;

#[cfg(not(loom))]
mod api;
#[cfg(not(loom))]
mod endpoint;
#[cfg(not(loom))]
pub(crate) mod error;
#[cfg(all(feature = "fuzz", not(loom)))]
pub(crate) mod fuzz;
#[cfg(not(loom))]
mod liveness;
#[cfg(not(loom))]
mod reader;
#[cfg(not(loom))]
mod wait;
#[cfg(not(loom))]
mod writer;

#[cfg(not(loom))]
pub(crate) use api::doorbell_token_of;
#[cfg(not(loom))]
pub(crate) use liveness::fifo_token;

#[cfg(not(loom))]
pub use self::api::*;
pub use self::layout::{Backpressure, Mode, MAX_DIMS, MAX_PEERS, MAX_SLOTS};
#[cfg(not(loom))]
pub use self::reader::{ReadSlot, Reader, ReaderBuilder};
#[cfg(not(loom))]
pub use self::wait::{WaitStrategy, DEFAULT_LIVENESS_INTERVAL};
#[cfg(not(loom))]
pub use self::writer::{WriteSlot, Writer};

//! The atomics the ring protocol is written against.
//!
//! Normally these are `std`'s; under `--cfg loom` they are loom's, so the index and slot
//! protocol in [`crate::ring::protocol`] can be model-checked on the heap backend (crossbeam-epoch
//! uses the same shim). Loom's atomics are not `#[repr(C)]`-compatible with the OS ones, so the
//! shared-memory backend is compiled out under loom.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64};

pub(crate) use std::sync::atomic::Ordering;

/// One step of a busy wait.
#[inline]
pub(crate) fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}

/// Lets another thread run: a peer that lost the CPU in the middle of a handshake (a reader
/// between placing and re-checking a pin) finishes it.
#[inline]
pub(crate) fn yield_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::thread::yield_now();
}

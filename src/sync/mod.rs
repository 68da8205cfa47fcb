//! Wake-ups between processes: process-shared semaphores and doorbells.
//!
//! The state of a ring (which slots are full, who is attached, who is gone)
//! lives in atomics in the shared segment. Nothing in this module carries
//! state: a [`Semaphore`] (in the segment, for blocking waits) and a doorbell
//! ([`DoorbellReceiver`] / [`DoorbellSender`], a pollable fd for
//! `poll`/epoll/mio/tokio) only *wake* a waiter, which then re-checks the
//! atomics.
//!
//! So a lost wake-up (a peer died between publishing and signalling, a full
//! doorbell queue, a writer in another network namespace) or an extra one (a
//! stale semaphore count, a spurious ring) never breaks correctness: a waiter
//! always re-checks the state after waking and always waits with a deadline,
//! so the worst case is a delay until that deadline or one wasted wake-up.
//! Signal after publishing, never before: publish the index with a Release
//! store, then post or ring.

pub(crate) mod doorbell;
pub(crate) mod semaphore;

#[allow(unused_imports)]
pub(crate) use doorbell::{doorbell_address, DoorbellReceiver, DoorbellSender};
#[allow(unused_imports)]
pub(crate) use semaphore::{Semaphore, SEM_ALIGN, SEM_BYTES};

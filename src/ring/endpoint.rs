//! What readers and writers share: the attached peer entry, the process it belongs to, and
//! how it waits.
//!
//! An [`Endpoint`] is made when a reader or writer attaches and lives in an `Arc` shared by the
//! endpoint and every frame guard made from it, so a guard can outlive (and be sent away from)
//! the endpoint that made it; the peer entry is detached when the last of them goes.
//!
//! An endpoint belongs to the process that attached it. Used in another process (a forked
//! child that inherited it) every call fails with `WrongProcess`, and dropping it there does
//! nothing to the ring: only the attaching process may detach its entry, and nothing done in a
//! child can register under the parent's pid.

use std::sync::Arc;

use super::api::RingInner;
use super::liveness::PeerLock;
use super::protocol::Role;
use super::shared::Shared;
use super::wait::{self, Waiter};
use crate::sys;

/// The process an endpoint or ring handle belongs to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Owner {
    pid: u32,
    epoch: u64,
}

impl Owner {
    /// The calling process.
    pub(crate) fn current() -> Owner {
        Owner {
            pid: sys::getpid(),
            epoch: sys::atfork::fork_epoch(),
        }
    }

    /// Whether the caller runs in the owning process. One relaxed load: every `fork` bumps the
    /// process's fork epoch in the child (`sys::atfork`), so a child never matches.
    #[inline]
    pub(crate) fn is_current(&self) -> bool {
        sys::atfork::fork_epoch() == self.epoch
    }

    /// The owner's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }
}

/// An attached peer entry: the ring, the entry's index and generation, its waiter, its owner
/// process and its liveness lock.
pub(crate) struct Endpoint {
    pub ring: Arc<RingInner>,
    pub index: usize,
    pub generation: u32,
    pub role: Role,
    pub waiter: Waiter,
    pub owner: Owner,
    /// Held while attached; the kernel releases it when the process dies. `None` for rings in
    /// process memory.
    pub _lock: Option<PeerLock>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("ring", &self.ring.name)
            .field("role", &self.role)
            .field("index", &self.index)
            .field("owner", &self.owner.pid)
            .finish()
    }
}

impl Endpoint {
    pub(crate) fn new(
        ring: Arc<RingInner>,
        index: usize,
        generation: u32,
        role: Role,
        owner: Owner,
        lock: Option<PeerLock>,
    ) -> Endpoint {
        let waiter = Waiter::new(&ring.shared, index, role);
        Endpoint {
            ring,
            index,
            generation,
            role,
            waiter,
            owner,
            _lock: lock,
        }
    }

    #[inline]
    pub(crate) fn shared(&self) -> &Shared {
        &self.ring.shared
    }

    /// `Err(owner pid)` when called from a process other than the one that attached.
    #[inline]
    pub(crate) fn check_process(&self) -> Result<(), u32> {
        if self.owner.is_current() {
            Ok(())
        } else {
            Err(self.owner.pid())
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        if !self.owner.is_current() {
            // Inherited through fork: the entry is the parent's. Leave the ring untouched
            // (the lock fd, if any, is closed by the PeerLock's own drop; its lock belongs to
            // the parent's open file description and stays).
            return;
        }
        let shared = &self.ring.shared;
        shared.release_peer(self.index, self.owner.pid(), self.generation);
        // The other side may wait for us: a lossless writer for this reader's cursor, readers
        // for the next frame (they now learn that this writer is gone).
        let other = match self.role {
            Role::Reader => Role::Writer,
            Role::Writer => Role::Reader,
        };
        wait::wake(shared, other, true);
        // `lock` drops after this body: the entry is FREE before the kernel lock goes, so a
        // peer that finds the lock free finds the entry free or taken by someone new.
    }
}

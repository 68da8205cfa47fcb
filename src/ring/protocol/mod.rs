//! The ring protocol: index and slot-state logic, free of syscalls so loom can check it.
//!
//! Every transition of a slot is a single atomic store or compare-and-swap of its 64-bit
//! *stamp*, `seq << 16 | owner << 4 | state` ([`stamps`]), so a process killed at any
//! instruction leaves each slot in a well-defined state that names the (dead) peer
//! responsible for it. One file per concern:
//!
//! * [`stamps`]: the encodings of stamps, peer state words, flags and pins;
//! * [`peers`]: the peer table, attach handshakes and reclaiming dead peers;
//! * [`broadcast`]: one writer, every reader sees every frame (Block, DropOldest, lossy
//!   readers);
//! * [`queue`]: several writers, each frame to one reader;
//! * [`held`]: the frames one reader holds at once, and the cursor they allow it to publish.
//!
//! The protocol only sees [`Shared`] (the mapped structures, or heap copies of them for unit
//! tests, proptest and loom), so it is written once for every backend. Waiting and waking are
//! in `ring::wait`; the byte layout is in `docs/PROTOCOL.md`.

pub(crate) mod broadcast;
pub(crate) mod held;
pub(crate) mod peers;
pub(crate) mod queue;
pub(crate) mod stamps;

#[cfg(all(test, not(loom)))]
mod tests;

pub(crate) use self::peers::Writers;
pub(crate) use self::stamps::*;

use crate::primitive::Ordering::*;
use crate::ring::layout::Mode;
use crate::ring::shared::Shared;

/// A slot handed to a writer or a reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grant {
    /// Slot index.
    pub slot: usize,
    /// Frame sequence number.
    pub seq: u64,
    /// Reader: frames skipped just before this one. Writer: the stamp the slot had before.
    pub extra: u64,
}

/// Which half of the peer table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Reader,
    Writer,
}

/// Why a writer cannot reserve right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blocked {
    /// The ring is full (queue), or the slowest reader holds the slot (block), or every slot is
    /// pinned (drop-oldest).
    Full,
    /// 2^48 frames were written: the sequence space is exhausted.
    Exhausted,
}

/// How many times a lock-free loop retries before it reports "not ready": a peer that writes
/// garbage into the segment can make us lose a race, never spin forever.
const RETRIES: usize = 1 << 12;

impl Shared {
    fn n(&self) -> u64 {
        u64::from(self.layout.slot_count)
    }

    fn slot_of(&self, seq: u64) -> usize {
        (seq % self.n()) as usize
    }

    /// Index range of a role in the peer table.
    pub(crate) fn peers_of(&self, role: Role) -> std::ops::Range<usize> {
        let r = self.layout.max_readers as usize;
        match role {
            Role::Reader => 0..r,
            Role::Writer => r..self.layout.max_peers(),
        }
    }

    /// Frames committed but not yet taken (queue), or committed and not yet read by the
    /// slowest reader (broadcast). A snapshot for status displays.
    pub(crate) fn backlog(&self) -> u64 {
        let c = self.control();
        let w = c.write_seq.v.load(Acquire);
        match self.layout.mode {
            Mode::Queue => w.saturating_sub(c.read_seq.v.load(Acquire)),
            Mode::Broadcast(_) => self
                .peers_of(Role::Reader)
                .filter(|&r| peer_status(self.peer(r).state.load(Acquire)) == ps::ACTIVE)
                .map(|r| w.saturating_sub(self.peer(r).cursor.load(Acquire)))
                .max()
                .unwrap_or(0),
        }
    }
}

//! Encodings of the words the protocol stores: slot stamps, peer state words, peer flags and
//! pins. Pure bit arithmetic, shared by the protocol, the status displays and the fuzzer.

/// Bits of a stamp's sequence number: sequences wrap after 2^48 frames (9 years at 1 MHz).
pub(crate) const SEQ_BITS: u32 = 48;
/// Largest sequence number plus one.
pub(crate) const SEQ_LIMIT: u64 = 1 << SEQ_BITS;

/// Slot states, the low 4 bits of a stamp.
pub(crate) mod st {
    /// Free; in queue mode, waiting for the writer of the stamp's sequence.
    pub const EMPTY: u64 = 0;
    /// A writer (the stamp's owner) is filling the slot with the stamp's sequence.
    pub const WRITING: u64 = 1;
    /// Committed: holds the frame with the stamp's sequence.
    pub const FULL: u64 = 2;
    /// Queue mode: a reader (the owner) holds the frame.
    pub const READING: u64 = 3;
    /// Queue mode: the writer died or gave up; readers skip this sequence.
    pub const ABANDONED: u64 = 4;
}

/// A slot stamp: `seq << 16 | owner << 4 | state`.
#[inline]
pub(crate) fn stamp(seq: u64, owner: usize, state: u64) -> u64 {
    ((seq & (SEQ_LIMIT - 1)) << 16) | ((owner as u64 & 0xFFF) << 4) | (state & 0xF)
}
#[inline]
pub(crate) fn stamp_seq(s: u64) -> u64 {
    s >> 16
}
#[inline]
pub(crate) fn stamp_owner(s: u64) -> usize {
    ((s >> 4) & 0xFFF) as usize
}
#[inline]
pub(crate) fn stamp_state(s: u64) -> u64 {
    s & 0xF
}

/// Peer status, the low 8 bits of a peer's state word.
pub(crate) mod ps {
    /// Unused entry.
    pub const FREE: u64 = 0;
    /// Taken, being set up.
    pub const CLAIMING: u64 = 1;
    /// Attached.
    pub const ACTIVE: u64 = 2;
    /// Found dead; someone is releasing what it held.
    pub const RECLAIMING: u64 = 3;
}

/// A peer's state word: `pid << 32 | generation << 8 | status`.
#[inline]
pub(crate) fn peer_state(pid: u32, generation: u32, status: u64) -> u64 {
    (u64::from(pid) << 32) | (u64::from(generation & 0xFF_FFFF) << 8) | (status & 0xFF)
}
#[inline]
pub(crate) fn peer_pid(s: u64) -> u32 {
    (s >> 32) as u32
}
#[inline]
pub(crate) fn peer_gen(s: u64) -> u32 {
    ((s >> 8) & 0xFF_FFFF) as u32
}
#[inline]
pub(crate) fn peer_status(s: u64) -> u64 {
    s & 0xFF
}

/// Peer flag: blocked on its semaphore.
pub(crate) const FLAG_SLEEPING: u32 = 1;
/// Peer flag: wants its doorbell rung on the next frame.
pub(crate) const FLAG_ARMED: u32 = 2;
/// Peer flag (broadcast block reader): lossy — the writer ignores its cursor and only avoids
/// the frames it has pinned. Set before the reader becomes ACTIVE, never changed after.
pub(crate) const FLAG_LOSSY: u32 = 4;
/// Peer flag (reader): the attach handshake is complete; from now on it sees every frame
/// committed (status displays and `wait_readers` count only such readers).
pub(crate) const FLAG_READY: u32 = 8;

/// A pin for frame `seq` in `slot`: `(seq mod 2^32) << 32 | (slot + 1)`. The low word alone
/// names the slot (slot + 1 <= 2^16 always fits; v2's `(slot + 1) << 48` overflowed for slot
/// 65535); the high word is for display only.
#[inline]
pub(crate) fn pin_value(slot: usize, seq: u64) -> u64 {
    ((seq & 0xFFFF_FFFF) << 32) | (slot as u64 + 1)
}

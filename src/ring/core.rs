//! The ring protocol: index and slot-state logic, free of syscalls so loom can check it.
//!
//! # Stamps
//!
//! Each slot has a 64-bit *stamp*, `seq << 16 | owner << 4 | state`, where `seq` is a frame
//! sequence number (48 bits), `owner` a peer-table index (12 bits) and `state` one of
//! EMPTY, WRITING, FULL, READING, ABANDONED. Every transition of a slot is a single atomic
//! store or compare-and-swap of its stamp, so a process killed at any instruction leaves each
//! slot in a well-defined state that names the (dead) peer responsible for it.
//!
//! # Broadcast (one writer, every reader sees every frame)
//!
//! `write_seq` counts committed frames. The writer puts frame `s` into slot `s % N` (drop-oldest
//! may pick another slot, see below), marks it `WRITING(s)`, fills it, stores `FULL(s)` with
//! Release and then `write_seq = s + 1`. Each reader has a private `cursor` (the next sequence it
//! wants, or the one it holds): it finds the slot stamped `FULL(cursor)`, reads it in place, and
//! on release stores `cursor + 1`.
//!
//! * **Block** (lossless): the writer may reuse a slot only when every ACTIVE reader's cursor
//!   is above the frame in it; among those it takes the most recently released one (LIFO, so
//!   a pipeline that keeps up cycles through two or three cache-warm frames, not all N), and
//!   waits when there is none. Because slots are reused out of order, the writer records in a
//!   *locator* (slot table entry `s % N`) which slot holds frame `s`; readers look there first
//!   and fall back to scanning the stamps. A reader that attaches stores its cursor and then
//!   re-reads `write_seq` (both SeqCst) and starts from there: any reservation that did not see
//!   its cursor reuses a frame older than that (a Dekker handshake).
//! * **DropOldest** (live): the writer never waits for cursors. A reader *pins* the slot it reads
//!   (`pin = (slot + 1) << 48 | seq`, SeqCst) and then re-checks the stamp; the writer marks a
//!   slot WRITING (SeqCst) and then checks the pins, restoring the stamp and trying the
//!   next-oldest slot when the frame there is pinned. One of the two always sees the other, so
//!   a frame is never overwritten while read, and the writer finds a free slot whenever there
//!   are more slots than readers. A reader looks for `FULL(cursor)` in slot `cursor % N` and
//!   otherwise takes the oldest frame above its cursor, adding the gap to its missed count.
//!
//! * **Lossy readers of a Block ring** (a live preview beside a recorder): the writer skips
//!   their cursors, and they pin the frame they read as in drop-oldest; a pinned slot makes
//!   the writer wait (only while that one frame is held). Such a reader falls behind like a
//!   drop-oldest reader and is told what it missed.
//!
//! # Queue (several writers, each frame to exactly one reader)
//!
//! A bounded MPMC queue after D. Vyukov, with the claim moved into the slot stamp so that a
//! crash leaves evidence: slot `s % N` is `EMPTY(s)` when it waits for frame `s`. A writer
//! claims it with a CAS `EMPTY(s) -> WRITING(s, me)` and then advances `write_seq` (others help
//! advance it when they see the slot already claimed); it commits with `FULL(s)`. A reader
//! claims `FULL(s) -> READING(s, me)`, advances `read_seq`, and releases with `EMPTY(s + N)`.
//! A writer that dies or discards its slot leaves `ABANDONED(s)`, which readers skip.
//!
//! # Dead peers
//!
//! Peers register in the peer table with their pid and its start time. [`Shared::reclaim`]
//! turns a dead peer's entry RECLAIMING, releases what it held (queue slots it was writing
//! become ABANDONED, slots it was reading become EMPTY and count as lost, its pin is cleared),
//! then frees the entry. Liveness is a parameter (a closure) so this module stays free of
//! syscalls.

use super::layout::{Backpressure, Mode};
use super::shared::{
    peer_gen, peer_pid, peer_state, peer_status, ps, st, stamp, stamp_owner, stamp_seq,
    stamp_state, Shared, FLAG_ARMED, FLAG_LOSSY, FLAG_READY, FLAG_SLEEPING, MAX_PINS, SEQ_LIMIT,
};
use crate::primitive::{fence, Ordering::*};

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

/// Stamp loads a broadcast reader's fallback scans may make in one attempt (beyond the first
/// scan, which is always made): garbage in the segment (a `write_seq` ahead of every stamp)
/// would otherwise cost `RETRIES` full scans, 2^28 loads with 65536 slots, per attempt.
const SCAN_BUDGET: usize = 1 << 16;

/// Passes over the slots a drop-oldest writer makes before it reports `Full`.
const PICK_PASSES: usize = 16;

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

    // ---------------------------------------------------------------- peer table

    /// Takes a FREE entry of `role` for `pid`: returns its index and generation. The entry is
    /// CLAIMING until [`Shared::activate`].
    #[cfg_attr(not(any(test, loom)), allow(dead_code))] // endpoints use claim_peer_at
    pub(crate) fn claim_peer(&self, role: Role, pid: u32, start_time: u64) -> Option<(usize, u32)> {
        self.peers_of(role)
            .find_map(|i| self.claim_peer_at(i, pid, start_time).map(|g| (i, g)))
    }

    /// Takes entry `i` if it is FREE: returns its new generation. Endpoints of segment-backed
    /// rings hold the entry's liveness lock before they call this (see `ring::liveness`).
    pub(crate) fn claim_peer_at(&self, i: usize, pid: u32, start_time: u64) -> Option<u32> {
        let e = self.peer(i);
        let cur = e.state.load(Acquire);
        if peer_status(cur) != ps::FREE {
            return None;
        }
        let generation = peer_gen(cur).wrapping_add(1) & 0xFF_FFFF;
        let claimed = peer_state(pid, generation, ps::CLAIMING);
        e.state
            .compare_exchange(cur, claimed, AcqRel, Relaxed)
            .ok()?;
        e.start_time.store(start_time, Relaxed);
        e.cursor.store(0, Relaxed);
        for p in &e.pins {
            p.store(0, Relaxed);
        }
        e.flags.store(0, Relaxed);
        e.max_held.store(1, Relaxed);
        e.missed.store(0, Relaxed);
        e.frames.store(0, Relaxed);
        e.held.store(0, Relaxed);
        Some(generation)
    }

    /// CLAIMING -> ACTIVE. False if the entry was taken from us meanwhile (reclaimed by
    /// someone who judged us dead): the caller must not use it.
    #[must_use]
    pub(crate) fn activate(&self, i: usize, pid: u32, generation: u32) -> bool {
        self.peer(i)
            .state
            .compare_exchange(
                peer_state(pid, generation, ps::CLAIMING),
                peer_state(pid, generation, ps::ACTIVE),
                SeqCst,
                Relaxed,
            )
            .is_ok()
    }

    /// Detaches a peer cleanly: ACTIVE/CLAIMING -> FREE (keeping the generation). Its pins,
    /// its SLEEPING/ARMED flags (with the waiter counts they stand for) and its start time are
    /// cleared first. Returns false when the entry is no longer ours (it was reclaimed as dead).
    pub(crate) fn release_peer(&self, i: usize, pid: u32, generation: u32) -> bool {
        let e = self.peer(i);
        let cur = e.state.load(SeqCst);
        let ours = peer_pid(cur) == pid
            && peer_gen(cur) == generation
            && matches!(peer_status(cur), ps::ACTIVE | ps::CLAIMING);
        if !ours {
            // Reclaimed (we were judged dead): the entry, and its pins, may be someone else's.
            return false;
        }
        self.clear_waiting(i);
        // READY and LOSSY go too: the entry's next occupant starts from no flags.
        e.flags.store(0, SeqCst);
        if i >= self.layout.max_readers as usize {
            // A writer that leaves cleanly decides how the stream ends: an earlier writer's
            // death (a queue ring with several) no longer does.
            self.control().died_writer.store(0, SeqCst);
        }
        for p in &e.pins {
            p.store(0, Release);
        }
        e.held.store(0, Relaxed);
        e.start_time.store(0, Relaxed);
        e.state
            .compare_exchange(cur, peer_state(0, generation, ps::FREE), AcqRel, Relaxed)
            .is_ok()
    }

    /// Takes peer `i`'s SLEEPING and ARMED flags, and the waiter counts they stand for (a
    /// detached or dead peer must not make every later commit scan for a waiter).
    fn clear_waiting(&self, i: usize) {
        let e = self.peer(i);
        let waiters = if i < self.layout.max_readers as usize {
            &self.control().reader_waiters
        } else {
            &self.control().writer_waiters
        };
        for bit in [FLAG_SLEEPING, FLAG_ARMED] {
            if e.flags.fetch_and(!bit, SeqCst) & bit != 0 {
                waiters.fetch_sub(1, SeqCst);
            }
        }
    }

    /// Attaches reader `i` (CLAIMING) and makes it ACTIVE with a cursor at the next frame.
    #[cfg_attr(not(any(test, loom)), allow(dead_code))] // endpoints use attach_reader_with
    pub(crate) fn attach_reader(&self, i: usize, pid: u32, generation: u32) -> Option<u64> {
        self.attach_reader_with(i, pid, generation, false, 1)
    }

    /// As [`Shared::attach_reader`]; a `lossy` reader of a block ring does not hold the
    /// writer back (see [`FLAG_LOSSY`]); the reader may hold `max_held` frames at once.
    /// Returns the first sequence the reader reads (its cursor), or `None` if the entry was
    /// reclaimed while we attached. The attach is complete (FLAG_READY, counted in
    /// `reader_attaches`) only after the handshake.
    pub(crate) fn attach_reader_with(
        &self,
        i: usize,
        pid: u32,
        generation: u32,
        lossy: bool,
        max_held: u32,
    ) -> Option<u64> {
        let e = self.peer(i);
        e.max_held.store(max_held, SeqCst);
        if lossy {
            e.flags.fetch_or(FLAG_LOSSY, SeqCst);
        }
        let c = &self.control().write_seq.v;
        let mut cursor = c.load(SeqCst);
        e.cursor.store(cursor, SeqCst);
        let active = self.activate(i, pid, generation);
        // Orders the activation before the write_seq load below for every model (loom treats
        // lone SeqCst accesses as weaker than C++ does; clients without SeqCst need it too).
        fence(SeqCst);
        if self.layout.mode == Mode::Broadcast(Backpressure::Block) {
            // Dekker with `bcast_pick_consumed`: a reservation that did not see our cursor
            // stored `write_seq = s` before looking, so this load sees at least `s`, and that
            // reservation reuses a slot holding a frame below `s`. Starting at what we see here
            // keeps every frame we will read out of its reach.
            let w = c.load(SeqCst);
            if w > cursor {
                cursor = w;
                e.cursor.store(cursor, SeqCst);
            }
        }
        if !active {
            return None;
        }
        e.flags.fetch_or(FLAG_READY, SeqCst);
        self.control().reader_attaches.fetch_add(1, Relaxed);
        Some(cursor)
    }

    /// Attaches writer `i` (CLAIMING) and makes it ACTIVE. False if the entry was reclaimed
    /// while we attached.
    pub(crate) fn attach_writer(&self, i: usize, pid: u32, generation: u32) -> bool {
        if matches!(self.layout.mode, Mode::Broadcast(_)) {
            // A previous writer may have died mid-frame: its slot is WRITING and was never
            // published. Nobody reads WRITING slots, so we just mark it EMPTY.
            for s in 0..self.layout.slot_count as usize {
                let m = self.meta(s);
                let v = m.stamp.load(Acquire);
                if stamp_state(v) == st::WRITING {
                    let _ = m.stamp.compare_exchange(
                        v,
                        stamp(stamp_seq(v), i, st::EMPTY),
                        AcqRel,
                        Relaxed,
                    );
                }
            }
        }
        let active = self.activate(i, pid, generation);
        // A new writer: the stream goes on, whatever happened to the previous one.
        self.control().died_writer.store(0, SeqCst);
        self.control().writer_attaches.fetch_add(1, SeqCst);
        active
    }

    /// Whether a writer is attached, and if not, how the last one left.
    pub(crate) fn writers(&self) -> Writers {
        if self.control().writer_attaches.load(SeqCst) == 0 {
            return Writers::NotYet;
        }
        let attached = self.peers_of(Role::Writer).any(|i| {
            let s = self.peer(i).state.load(SeqCst);
            matches!(peer_status(s), ps::CLAIMING | ps::ACTIVE | ps::RECLAIMING)
        });
        if attached {
            return Writers::Attached;
        }
        let died = self.control().died_writer.load(SeqCst);
        if died >> 32 != 0 {
            Writers::Died {
                pid: died as u32,
                frames: self.control().died_after.load(SeqCst),
            }
        } else {
            Writers::Detached
        }
    }

    /// True when at least one writer attached once and none is attached now (alive or not yet
    /// found dead).
    #[cfg_attr(not(any(test, loom)), allow(dead_code))]
    pub(crate) fn writers_gone(&self) -> bool {
        matches!(self.writers(), Writers::Detached | Writers::Died { .. })
    }

    /// Checks every attached peer of `role` (other than `me`) with `alive(index, pid,
    /// start_time)` and reclaims the dead ones. Returns how many were reclaimed. `alive` must
    /// answer true when it cannot tell: a peer is reclaimed only when it is known dead.
    pub(crate) fn reclaim_dead(
        &self,
        role: Role,
        me: Option<usize>,
        alive: &mut dyn FnMut(usize, u32, u64) -> bool,
    ) -> usize {
        let mut n = 0;
        for i in self.peers_of(role) {
            if Some(i) == me {
                continue;
            }
            let e = self.peer(i);
            let s = e.state.load(Acquire);
            if peer_status(s) == ps::FREE {
                continue;
            }
            // A CLAIMING entry's start time may still be the previous occupant's (the claimer
            // stores its own just after the claim): judge it by its pid alone.
            let start = if peer_status(s) == ps::CLAIMING {
                0
            } else {
                e.start_time.load(Relaxed)
            };
            if !alive(i, peer_pid(s), start) && self.reclaim(i, s) {
                n += 1;
            }
        }
        n
    }

    /// Releases everything peer `i` (observed with state word `observed`) held, then frees the
    /// entry. Idempotent; several processes may reclaim the same peer at once.
    pub(crate) fn reclaim(&self, i: usize, observed: u64) -> bool {
        let e = self.peer(i);
        let status = peer_status(observed);
        let (pid, generation) = (peer_pid(observed), peer_gen(observed));
        let reclaiming = peer_state(pid, generation, ps::RECLAIMING);
        if status == ps::FREE {
            return false;
        }
        if status != ps::RECLAIMING
            && e.state
                .compare_exchange(observed, reclaiming, AcqRel, Relaxed)
                .is_err()
        {
            return false;
        }
        for p in &e.pins {
            p.store(0, SeqCst);
        }
        // It may have died asleep or armed: take its flags and their waiter counts with it,
        // or every later commit would scan the peer table for a waiter that is gone.
        self.clear_waiting(i);
        e.flags.store(0, SeqCst);
        e.held.store(0, Relaxed);
        e.start_time.store(0, Relaxed);
        if i >= self.layout.max_readers as usize {
            // A writer died: readers end with WriterDied once nothing is left to read.
            let c = self.control();
            c.died_after.store(c.write_seq.v.load(SeqCst), SeqCst);
            c.died_writer.store((1 << 32) | u64::from(pid), SeqCst);
        }
        if self.layout.mode == Mode::Queue {
            let c = self.control();
            for s in 0..self.layout.slot_count as usize {
                let m = self.meta(s);
                let v = m.stamp.load(Acquire);
                if stamp_owner(v) != i {
                    continue;
                }
                let seq = stamp_seq(v);
                match stamp_state(v) {
                    st::WRITING
                        if m.stamp
                            .compare_exchange(v, stamp(seq, i, st::ABANDONED), AcqRel, Relaxed)
                            .is_ok() =>
                    {
                        c.abandoned.fetch_add(1, Relaxed);
                    }
                    st::READING => {
                        let next = stamp(seq + self.n(), 0, st::EMPTY);
                        if m.stamp.compare_exchange(v, next, AcqRel, Relaxed).is_ok() {
                            c.lost.fetch_add(1, Relaxed);
                        }
                    }
                    _ => {}
                }
            }
        }
        e.state
            .compare_exchange(
                reclaiming,
                peer_state(0, generation, ps::FREE),
                AcqRel,
                Relaxed,
            )
            .is_ok()
    }

    // ---------------------------------------------------------------- broadcast writer

    /// Reserves the slot for the next frame (writer `w`). On success the slot is WRITING(s, w)
    /// and `extra` holds the stamp it had before.
    pub(crate) fn bcast_try_reserve(&self, w: usize) -> Result<Grant, Blocked> {
        let s = self.control().write_seq.v.load(Relaxed);
        if s >= SEQ_LIMIT - 1 {
            return Err(Blocked::Exhausted);
        }
        match self.layout.mode {
            Mode::Broadcast(Backpressure::DropOldest) => self.bcast_pick_unpinned(w, s),
            _ => self.bcast_pick_consumed(w, s),
        }
    }

    /// Lossless slot choice: any slot whose frame every lossless reader has released (its
    /// seq is below their smallest cursor) may be reused; we take the one released most
    /// recently, whose bytes are most likely still in the CPU caches (a last-in, first-out
    /// reuse that keeps a fast pipeline cycling through two or three frames instead of all N).
    /// Never-used slots come last. Lossy readers' pins are respected (we wait for them).
    fn bcast_pick_consumed(&self, w: usize, s: u64) -> Result<Grant, Blocked> {
        // Pairs with the fence in `attach_reader_with` (our write_seq store came before).
        fence(SeqCst);
        let mut lossy = false;
        let mut min_cursor = u64::MAX;
        for r in self.peers_of(Role::Reader) {
            let e = self.peer(r);
            if peer_status(e.state.load(SeqCst)) != ps::ACTIVE {
                continue;
            }
            if e.flags.load(Relaxed) & FLAG_LOSSY != 0 {
                lossy = true;
            } else {
                min_cursor = min_cursor.min(e.cursor.load(SeqCst));
            }
        }
        // Rank: a released frame scores seq + 2 (newest best), an empty slot 1, a frame some
        // lossless reader still needs is not eligible.
        let score = |i: usize| -> u64 {
            let v = self.meta(i).stamp.load(Relaxed);
            match stamp_state(v) {
                st::FULL if stamp_seq(v) < min_cursor => stamp_seq(v) + 2,
                st::FULL => 0,
                _ => 1,
            }
        };
        let n = self.layout.slot_count as usize;
        let mut best = (0u64, 0usize);
        for i in 0..n {
            let k = score(i);
            if k > best.0 {
                best = (k, i);
            }
        }
        if best.0 == 0 {
            return Err(Blocked::Full);
        }
        if !lossy {
            let m = self.meta(best.1);
            let prev = m.stamp.load(Relaxed);
            m.stamp.store(stamp(s, w, st::WRITING), SeqCst);
            return Ok(Grant {
                slot: best.1,
                seq: s,
                extra: prev,
            });
        }
        // A lossy reader may be reading one of these frames: the pin handshake of drop-oldest,
        // trying the candidates best first; if all are pinned, wait.
        if let Some(g) = self.bcast_try_slot(w, s, best.1) {
            return Ok(g);
        }
        let mut order: Vec<(u64, usize)> = (0..n)
            .map(|i| (score(i), i))
            .filter(|(k, i)| *k > 0 && *i != best.1)
            .collect();
        // Best score first; on equal scores (empty slots) the lowest index, as above.
        order.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        order
            .into_iter()
            .find_map(|(_, i)| self.bcast_try_slot(w, s, i))
            .ok_or(Blocked::Full)
    }

    /// Drop-oldest slot choice: the slot holding the oldest frame that nobody reads. Slot
    /// `s % N` holds frame `s - N` unless an earlier reservation skipped a pinned slot, so it
    /// is tried first; otherwise all slots are ranked, empty ones first, then oldest frame first.
    fn bcast_pick_unpinned(&self, w: usize, s: u64) -> Result<Grant, Blocked> {
        // Readers move their pins while we look (release one frame, pin the next), so one
        // pass over the slots can find each one pinned at the moment we tried it although
        // readers never held all of them at once. Several passes make that vanishingly rare;
        // `Full` then means the readers really hold every slot (or keep racing us).
        for _ in 0..PICK_PASSES {
            if let Some(g) = self.bcast_pick_pass(w, s) {
                return Ok(g);
            }
            crate::primitive::spin_hint();
        }
        Err(Blocked::Full)
    }

    fn bcast_pick_pass(&self, w: usize, s: u64) -> Option<Grant> {
        let n = self.layout.slot_count as usize;
        let key = |i: usize| {
            let v = self.meta(i).stamp.load(Relaxed);
            if stamp_state(v) == st::FULL {
                stamp_seq(v) + 1
            } else {
                0
            }
        };
        let preferred = self.slot_of(s);
        let pk = key(preferred);
        let natural = pk == 0 || pk + self.n() == s + 1;
        if natural {
            if let Some(g) = self.bcast_try_slot(w, s, preferred) {
                return Some(g);
            }
        }
        let mut order: Vec<(u64, usize)> = (0..n)
            .filter(|&i| !(natural && i == preferred))
            .map(|i| (key(i), i))
            .collect();
        order.sort_unstable();
        order
            .into_iter()
            .find_map(|(_, slot)| self.bcast_try_slot(w, s, slot))
    }

    /// Marks `slot` WRITING(s) unless a reader pins it (then restores it).
    ///
    /// Any pin naming the slot refuses it, whatever frame the pin names and whatever the
    /// stamp says now: a writer killed inside this handshake (after the WRITING store, before
    /// restoring `prev`) leaves the slot WRITING, and the next writer's attach turns that into
    /// EMPTY, while a reader still holds the frame it pinned there. Matching the pin against
    /// the stamp's frame would hand that reader's slot to the new writer, which would overwrite
    /// it under the reader. A stale pin (a reader between pinning and re-checking) only makes
    /// us try another slot.
    fn bcast_try_slot(&self, w: usize, s: u64, slot: usize) -> Option<Grant> {
        let m = self.meta(slot);
        let prev = m.stamp.load(Acquire);
        m.stamp.store(stamp(s, w, st::WRITING), SeqCst);
        fence(SeqCst);
        if self.pinned(slot) {
            m.stamp.store(prev, SeqCst);
            return None;
        }
        Some(Grant {
            slot,
            seq: s,
            extra: prev,
        })
    }

    /// Whether any reader's pin names `slot` (for any frame). Each reader's first `max_held`
    /// pins are scanned (at most [`MAX_PINS`], whatever the segment says).
    fn pinned(&self, slot: usize) -> bool {
        let want = slot as u64 + 1;
        self.peers_of(Role::Reader).any(|r| {
            let e = self.peer(r);
            let k = (e.max_held.load(SeqCst) as usize).clamp(1, MAX_PINS);
            e.pins[..k]
                .iter()
                .any(|p| p.load(SeqCst) & 0xFFFF_FFFF == want)
        })
    }

    /// Publishes a reserved frame. The caller has filled the payload and the slot metadata.
    pub(crate) fn bcast_commit(&self, w: usize, g: Grant) {
        // The locator first, then the stamp (Release): a reader that finds the locator stale
        // falls back to a scan, never to a wrong frame (it checks the stamp).
        self.meta(self.slot_of(g.seq))
            .locator
            .store((g.seq << 16) | g.slot as u64, Release);
        self.meta(g.slot)
            .stamp
            .store(stamp(g.seq, w, st::FULL), Release);
        self.control().write_seq.v.store(g.seq + 1, SeqCst);
        self.peer(w).frames.fetch_add(1, Relaxed);
    }

    /// Discards a reservation: nothing is published, the sequence is reused by the next one.
    /// The slot becomes EMPTY (in drop-oldest its old frame may be partly overwritten).
    pub(crate) fn bcast_abort(&self, w: usize, g: Grant) {
        self.meta(g.slot)
            .stamp
            .store(stamp(stamp_seq(g.extra), w, st::EMPTY), Release);
    }

    // ---------------------------------------------------------------- broadcast reader

    /// Whether broadcast reader `r` pins the frames it holds (drop-oldest rings and lossy
    /// readers of block rings) instead of holding the writer back with its cursor.
    pub(crate) fn pins_frames(&self, r: usize) -> bool {
        self.layout.mode == Mode::Broadcast(Backpressure::DropOldest)
            || self.peer(r).flags.load(Relaxed) & FLAG_LOSSY != 0
    }

    /// The first frame at or after `next` for broadcast reader `r`, if one is committed
    /// (`extra` = frames skipped, added to the reader's missed count). A reader that
    /// [pins its frames](Shared::pins_frames) passes the index of a free pin of its own.
    pub(crate) fn bcast_try_acquire(
        &self,
        r: usize,
        next: u64,
        pin: Option<usize>,
    ) -> Option<Grant> {
        let e = self.peer(r);
        let ring = &self.control().write_seq.v;
        let mut scanned = 0usize;
        for _ in 0..RETRIES {
            let cursor = next;
            let w = ring.load(Acquire);
            if cursor >= w {
                return None;
            }
            // Where is frame `cursor`? The locator says (lossless rings reuse slots out of
            // order); a stale or hostile locator only costs the scan below.
            let loc = self.meta(self.slot_of(cursor)).locator.load(Acquire);
            let fast = if loc >> 16 == cursor & ((1 << 48) - 1) {
                (loc & 0xFFFF) as usize % self.layout.slot_count as usize
            } else {
                self.slot_of(cursor)
            };
            let v = self.meta(fast).stamp.load(Acquire);
            let (slot, seq, v) = if stamp_state(v) == st::FULL && stamp_seq(v) == cursor {
                (fast, cursor, v)
            } else {
                // The frame at the cursor is gone (drop-oldest overwrote it, or we were
                // reclaimed while stalled): take the oldest committed frame after it.
                let n = self.layout.slot_count as usize;
                if scanned > 0 && scanned + n > SCAN_BUDGET {
                    return None; // not found now; callers retry later or time out
                }
                scanned += n;
                match self.oldest_full_from(cursor) {
                    Some(found) => found,
                    None => {
                        crate::primitive::spin_hint();
                        continue;
                    }
                }
            };
            if let Some(p) = pin {
                let p = &e.pins[p % MAX_PINS];
                p.store(pin_value(slot, seq), SeqCst);
                fence(SeqCst);
                if self.meta(slot).stamp.load(SeqCst) != v {
                    p.store(0, Relaxed);
                    continue;
                }
            }
            let missed = seq - cursor;
            if missed > 0 {
                e.missed.fetch_add(missed, Relaxed);
            }
            return Some(Grant {
                slot,
                seq,
                extra: missed,
            });
        }
        None
    }

    fn oldest_full_from(&self, cursor: u64) -> Option<(usize, u64, u64)> {
        let mut best: Option<(usize, u64, u64)> = None;
        for i in 0..self.layout.slot_count as usize {
            let v = self.meta(i).stamp.load(Acquire);
            let seq = stamp_seq(v);
            if stamp_state(v) == st::FULL && seq >= cursor && best.is_none_or(|b| seq < b.1) {
                best = Some((i, seq, v));
            }
        }
        best
    }

    /// Publishes broadcast reader `r`'s cursor (see [`PeerEntry::cursor`]). Callers never
    /// move it backwards.
    ///
    /// [`PeerEntry::cursor`]: super::shared::PeerEntry::cursor
    pub(crate) fn bcast_set_cursor(&self, r: usize, cursor: u64) {
        self.peer(r).cursor.store(cursor, SeqCst);
    }

    /// Releases pin `pin` of broadcast reader `r` (a frame it held).
    pub(crate) fn bcast_unpin(&self, r: usize, pin: usize) {
        self.peer(r).pins[pin % MAX_PINS].store(0, SeqCst);
    }

    /// Releases a frame held by broadcast reader `r` that held one frame at a time (unit
    /// tests, loom and proptest models): unpins pin 0 and moves the cursor past the frame.
    #[cfg_attr(not(any(test, loom)), allow(dead_code))]
    pub(crate) fn bcast_release(&self, r: usize, g: Grant) {
        let e = self.peer(r);
        e.cursor.store(g.seq + 1, SeqCst);
        e.pins[0].store(0, SeqCst);
        e.frames.fetch_add(1, Relaxed);
    }

    /// Broadcast reader `r`'s next frame the way a one-frame-at-a-time reader asks for it
    /// (unit tests, loom and proptest models): from its published cursor, with pin 0.
    #[cfg_attr(not(any(test, loom)), allow(dead_code))]
    pub(crate) fn bcast_try_acquire1(&self, r: usize) -> Option<Grant> {
        let next = self.peer(r).cursor.load(Relaxed);
        let pin = self.pins_frames(r).then_some(0);
        let g = self.bcast_try_acquire(r, next, pin)?;
        if g.extra > 0 {
            self.peer(r).cursor.store(g.seq, SeqCst);
        }
        Some(g)
    }

    // ---------------------------------------------------------------- queue

    /// Claims the slot for the next frame (queue writer `w`).
    pub(crate) fn q_try_reserve(&self, w: usize) -> Result<Grant, Blocked> {
        let pos = &self.control().write_seq.v;
        let n = self.n();
        for _ in 0..RETRIES {
            let s = pos.load(Acquire);
            if s >= SEQ_LIMIT - n {
                return Err(Blocked::Exhausted);
            }
            let slot = self.slot_of(s);
            let m = self.meta(slot);
            let v = m.stamp.load(Acquire);
            let (vseq, vst) = (stamp_seq(v), stamp_state(v));
            if vseq == s && vst == st::EMPTY {
                if m.stamp
                    .compare_exchange(v, stamp(s, w, st::WRITING), AcqRel, Relaxed)
                    .is_ok()
                {
                    let _ = pos.compare_exchange(s, s + 1, AcqRel, Relaxed);
                    return Ok(Grant {
                        slot,
                        seq: s,
                        extra: v,
                    });
                }
            } else if vseq == s {
                // Claimed by another writer that has not advanced the position yet: help.
                let _ = pos.compare_exchange(s, s + 1, AcqRel, Relaxed);
            } else if vseq < s {
                // Still holds the frame of the previous lap.
                return Err(Blocked::Full);
            }
            // vseq > s: our position was stale; reload.
        }
        Err(Blocked::Full)
    }

    /// Publishes a queue frame. False if the slot was taken from us (we were found dead).
    pub(crate) fn q_commit(&self, w: usize, g: Grant) -> bool {
        let ok = self
            .meta(g.slot)
            .stamp
            .compare_exchange(
                stamp(g.seq, w, st::WRITING),
                stamp(g.seq, w, st::FULL),
                SeqCst,
                Relaxed,
            )
            .is_ok();
        fence(SeqCst);
        if ok {
            self.peer(w).frames.fetch_add(1, Relaxed);
        }
        ok
    }

    /// Gives a claimed queue slot up: readers will skip its sequence.
    pub(crate) fn q_abort(&self, w: usize, g: Grant) {
        if self
            .meta(g.slot)
            .stamp
            .compare_exchange(
                stamp(g.seq, w, st::WRITING),
                stamp(g.seq, w, st::ABANDONED),
                SeqCst,
                Relaxed,
            )
            .is_ok()
        {
            self.control().abandoned.fetch_add(1, Relaxed);
        }
    }

    /// Takes the next queue frame for reader `r`, skipping abandoned sequences.
    pub(crate) fn q_try_acquire(&self, r: usize) -> Option<Grant> {
        let pos = &self.control().read_seq.v;
        let n = self.n();
        for _ in 0..RETRIES {
            let s = pos.load(Acquire);
            let slot = self.slot_of(s);
            let m = self.meta(slot);
            let v = m.stamp.load(Acquire);
            let (vseq, vst) = (stamp_seq(v), stamp_state(v));
            if vseq == s {
                match vst {
                    st::FULL => {
                        if m.stamp
                            .compare_exchange(v, stamp(s, r, st::READING), AcqRel, Relaxed)
                            .is_ok()
                        {
                            let _ = pos.compare_exchange(s, s + 1, AcqRel, Relaxed);
                            return Some(Grant {
                                slot,
                                seq: s,
                                extra: 0,
                            });
                        }
                    }
                    st::READING => {
                        let _ = pos.compare_exchange(s, s + 1, AcqRel, Relaxed);
                    }
                    st::ABANDONED => {
                        let _ = m.stamp.compare_exchange(
                            v,
                            stamp(s + n, 0, st::EMPTY),
                            AcqRel,
                            Relaxed,
                        );
                        let _ = pos.compare_exchange(s, s + 1, AcqRel, Relaxed);
                    }
                    // EMPTY(s): no writer yet; WRITING(s): not committed yet.
                    _ => return None,
                }
            } else if vseq > s {
                // Consumed already; the position is stale: help it along.
                let _ = pos.compare_exchange(s, s + 1, AcqRel, Relaxed);
            } else {
                return None;
            }
        }
        None
    }

    /// Releases a queue frame held by reader `r`: the slot waits for the frame one lap later.
    pub(crate) fn q_release(&self, r: usize, g: Grant) {
        let _ = self.meta(g.slot).stamp.compare_exchange(
            stamp(g.seq, r, st::READING),
            stamp(g.seq + self.n(), 0, st::EMPTY),
            SeqCst,
            Relaxed,
        );
        fence(SeqCst);
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

/// A pin for frame `seq` in `slot`: `(seq mod 2^32) << 32 | (slot + 1)`. The low word alone
/// names the slot (slot + 1 <= 2^16 always fits; v2's `(slot + 1) << 48` overflowed for slot
/// 65535); the high word is for display only.
#[inline]
pub(crate) fn pin_value(slot: usize, seq: u64) -> u64 {
    ((seq & 0xFFFF_FFFF) << 32) | (slot as u64 + 1)
}

/// How the writers of a ring stand, as readers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Writers {
    /// No writer ever attached: wait for one.
    NotYet,
    /// At least one is attached (or being reclaimed).
    Attached,
    /// None is attached and the last one detached cleanly.
    Detached,
    /// None is attached and the last one was found dead.
    Died {
        /// Its pid (in its own pid namespace).
        pid: u32,
        /// Frames committed when it was reclaimed.
        frames: u64,
    },
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::array::DType;
    use crate::ring::layout::Layout;

    fn ring(mode: Mode, slots: u32, readers: u32, writers: u32) -> Shared {
        Shared::heap(Layout::compute(DType::U8, &[8], slots, mode, readers, writers).unwrap())
    }

    fn reader(s: &Shared) -> usize {
        let (i, g) = s.claim_peer(Role::Reader, 1, 0).unwrap();
        s.attach_reader(i, 1, g);
        i
    }

    fn writer(s: &Shared) -> usize {
        let (i, g) = s.claim_peer(Role::Writer, 1, 0).unwrap();
        s.attach_writer(i, 1, g);
        i
    }

    #[test]
    fn block_mode_waits_for_slowest_reader() {
        let s = ring(Mode::Broadcast(Backpressure::Block), 2, 2, 1);
        let w = writer(&s);
        let (r1, r2) = (reader(&s), reader(&s));
        for seq in 0..2 {
            let g = s.bcast_try_reserve(w).unwrap();
            assert_eq!(g.seq, seq);
            s.bcast_commit(w, g);
        }
        assert_eq!(s.bcast_try_reserve(w), Err(Blocked::Full));
        let g = s.bcast_try_acquire1(r1).unwrap();
        s.bcast_release(r1, g);
        assert_eq!(s.bcast_try_reserve(w), Err(Blocked::Full));
        let g = s.bcast_try_acquire1(r2).unwrap();
        assert_eq!((g.seq, g.extra), (0, 0));
        s.bcast_release(r2, g);
        let g = s.bcast_try_reserve(w).unwrap();
        assert_eq!(g.seq, 2);
    }

    #[test]
    fn lossy_reader_of_a_block_ring_never_holds_the_writer_beyond_its_frame() {
        // One slot: the frame a lossy reader holds is the only thing in the writer's way.
        let s = ring(Mode::Broadcast(Backpressure::Block), 1, 2, 1);
        let w = writer(&s);
        let lossless = reader(&s);
        let (lossy, g) = s.claim_peer(Role::Reader, 1, 0).unwrap();
        s.attach_reader_with(lossy, 1, g, true, 1);
        // The lossy reader never reads: the writer is only held by the lossless one.
        for _ in 0..6 {
            let g = s.bcast_try_reserve(w).unwrap();
            s.bcast_commit(w, g);
            let r = s.bcast_try_acquire1(lossless).unwrap();
            s.bcast_release(lossless, r);
        }
        // It takes the newest frame still there and is told what it missed.
        let held = s.bcast_try_acquire1(lossy).unwrap();
        assert_eq!((held.seq, held.extra), (5, 5));
        // Frame 6 would reuse the slot the lossy reader holds: wait.
        assert_eq!(s.bcast_try_reserve(w), Err(Blocked::Full));
        s.bcast_release(lossy, held);
        let g = s.bcast_try_reserve(w).unwrap();
        assert_eq!(g.seq, 6);
    }

    #[test]
    fn lossless_writer_reuses_the_most_recently_released_slot() {
        let s = ring(Mode::Broadcast(Backpressure::Block), 4, 1, 1);
        let w = writer(&s);
        let r = reader(&s);
        let mut used = std::collections::HashSet::new();
        for seq in 0..100 {
            let g = s.bcast_try_reserve(w).unwrap();
            assert_eq!(g.seq, seq);
            used.insert(g.slot);
            s.bcast_commit(w, g);
            let f = s.bcast_try_acquire1(r).unwrap();
            assert_eq!((f.seq, f.extra), (seq, 0), "the locator finds every frame");
            s.bcast_release(r, f);
        }
        // A reader that keeps up lets the writer cycle through one warm slot.
        assert_eq!(used.len(), 1);
    }

    #[test]
    fn drop_oldest_skips_pinned_and_counts_missed() {
        let s = ring(Mode::Broadcast(Backpressure::DropOldest), 3, 1, 1);
        let w = writer(&s);
        let r = reader(&s);
        let g = s.bcast_try_reserve(w).unwrap();
        s.bcast_commit(w, g);
        let held = s.bcast_try_acquire1(r).unwrap();
        assert_eq!(held.seq, 0);
        // Write 5 more frames while frame 0 is held: its slot must never be chosen.
        for _ in 0..5 {
            let g = s.bcast_try_reserve(w).unwrap();
            assert_ne!(g.slot, held.slot);
            s.bcast_commit(w, g);
        }
        s.bcast_release(r, held);
        // Frames 1..=3 were overwritten; the oldest left is 4.
        let g = s.bcast_try_acquire1(r).unwrap();
        assert_eq!((g.seq, g.extra), (4, 3));
        s.bcast_release(r, g);
        let g = s.bcast_try_acquire1(r).unwrap();
        assert_eq!((g.seq, g.extra), (5, 0));
        s.bcast_release(r, g);
        assert_eq!(s.bcast_try_acquire1(r), None);
    }

    #[test]
    fn queue_delivers_once_and_reports_full() {
        let s = ring(Mode::Queue, 2, 2, 2);
        let (w1, w2) = (writer(&s), writer(&s));
        let (r1, r2) = (reader(&s), reader(&s));
        let a = s.q_try_reserve(w1).unwrap();
        let b = s.q_try_reserve(w2).unwrap();
        assert_eq!(s.q_try_reserve(w1), Err(Blocked::Full));
        assert!(s.q_try_acquire(r1).is_none(), "nothing committed yet");
        assert!(s.q_commit(w2, b));
        assert!(
            s.q_try_acquire(r1).is_none(),
            "frame 0 not committed: order holds"
        );
        assert!(s.q_commit(w1, a));
        let x = s.q_try_acquire(r1).unwrap();
        let y = s.q_try_acquire(r2).unwrap();
        assert_eq!((x.seq, y.seq), (0, 1));
        assert!(s.q_try_acquire(r1).is_none());
        s.q_release(r1, x);
        s.q_release(r2, y);
        assert_eq!(s.q_try_reserve(w1).unwrap().seq, 2);
    }

    #[test]
    fn queue_dead_writer_is_skipped_and_dead_reader_freed() {
        let s = ring(Mode::Queue, 4, 2, 2);
        let (w1, w2) = (writer(&s), writer(&s));
        let r = reader(&s);
        let dead = s.q_try_reserve(w1).unwrap();
        let g = s.q_try_reserve(w2).unwrap();
        assert!(s.q_commit(w2, g));
        assert!(
            s.q_try_acquire(r).is_none(),
            "blocked behind the dead writer's slot"
        );
        let state = s.peer(w1).state.load(Relaxed);
        assert!(s.reclaim(w1, state));
        assert_eq!(s.q_try_acquire(r).unwrap().seq, 1);
        assert_eq!(s.control().abandoned.load(Relaxed), 1);
        let _ = dead;
        // A reader that dies holding a frame: the slot comes back.
        let g = s.q_try_reserve(w2).unwrap();
        assert!(s.q_commit(w2, g));
        let (r2, gen2) = s.claim_peer(Role::Reader, 2, 0).unwrap();
        s.attach_reader(r2, 2, gen2);
        let held = s.q_try_acquire(r2).unwrap();
        let state = s.peer(r2).state.load(Relaxed);
        assert!(s.reclaim(r2, state));
        assert_eq!(s.control().lost.load(Relaxed), 1);
        assert_eq!(
            stamp_state(s.meta(held.slot).stamp.load(Relaxed)),
            st::EMPTY
        );
    }

    /// A writer killed inside the pin handshake (slot stored WRITING, not yet restored) over
    /// a frame a reader holds: the next writer's attach turns the slot EMPTY, and it must
    /// still never hand that slot out while the reader's pin names it.
    #[test]
    fn writer_killed_in_the_pin_handshake_does_not_expose_a_held_frame() {
        for mode in [
            Mode::Broadcast(Backpressure::DropOldest),
            Mode::Broadcast(Backpressure::Block),
        ] {
            let s = ring(mode, 3, 2, 1);
            let (w, wg) = s.claim_peer(Role::Writer, 2, 0).unwrap();
            s.attach_writer(w, 2, wg);
            let r = if mode == Mode::Broadcast(Backpressure::Block) {
                let (r, g) = s.claim_peer(Role::Reader, 1, 0).unwrap();
                s.attach_reader_with(r, 1, g, true, 1);
                r
            } else {
                reader(&s)
            };
            let g = s.bcast_try_reserve(w).unwrap();
            s.bcast_commit(w, g);
            let held = s.bcast_try_acquire1(r).unwrap();
            assert_eq!(held.seq, 0);
            // The writer's half of the handshake on the held slot, then it dies.
            s.meta(held.slot)
                .stamp
                .store(stamp(1, w, st::WRITING), SeqCst);
            let state = s.peer(w).state.load(Relaxed);
            assert!(s.reclaim(w, state));
            let w2 = writer(&s);
            for _ in 0..10 {
                let g = s.bcast_try_reserve(w2).unwrap();
                assert_ne!(g.slot, held.slot, "{mode:?}: the held slot was handed out");
                s.bcast_commit(w2, g);
            }
            s.bcast_release(r, held);
        }
    }

    #[test]
    fn writers_gone_after_detach() {
        let s = ring(Mode::Queue, 2, 1, 2);
        assert!(!s.writers_gone(), "no writer ever: wait, do not disconnect");
        let (i, g) = s.claim_peer(Role::Writer, 7, 0).unwrap();
        s.attach_writer(i, 7, g);
        assert!(!s.writers_gone());
        assert!(s.release_peer(i, 7, g));
        assert!(s.writers_gone());
    }
}

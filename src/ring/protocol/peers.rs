//! The peer table: claiming, activating and releasing entries, the reader and writer attach
//! handshakes, how the writers stand ([`Writers`]), and reclaiming dead peers.
//!
//! Peers register with their pid and its start time (for display); whether a peer is alive
//! is a parameter of [`Shared::reclaim_dead`] (a closure), so this file stays free of
//! syscalls. Reclaiming turns a dead entry RECLAIMING, releases what it held (queue slots it
//! was writing become ABANDONED, slots it was reading become EMPTY and count as lost, its pins
//! are cleared), then frees the entry.

use super::stamps::*;
use super::Role;
use crate::primitive::{fence, Ordering::*};
use crate::ring::layout::{Backpressure, Mode};
use crate::ring::shared::Shared;

impl Shared {
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
        if !self.activate(i, pid, generation) {
            // Reclaimed while we attached: we are no writer, and how the stream stands (a
            // writer's death on record, the attach count) is not ours to change.
            return false;
        }
        // A new writer: the stream goes on, whatever happened to the previous one.
        self.control().died_writer.store(0, SeqCst);
        self.control().writer_attaches.fetch_add(1, SeqCst);
        true
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

    /// Checks every attached peer of `role` (other than `me`) with `dead(index, pid,
    /// start_time)` and reclaims the dead ones. Returns how many were reclaimed.
    ///
    /// `dead` answers `Some(token)` only when the peer is known dead, and the token makes the
    /// caller the entry's only reclaimer while it lives (for rings in shared memory: the
    /// entry's lock, which a new occupant takes before it claims the entry). Under it the
    /// entry's state is re-read, so a reclaimer that lost the race to another one, whose work
    /// is done and whose entry has a new occupant by now, never touches the newcomer. Unknown
    /// answers `None`: a peer is reclaimed only when it is known dead.
    pub(crate) fn reclaim_dead<G>(
        &self,
        role: Role,
        me: Option<usize>,
        dead: &mut dyn FnMut(usize, u32, u64) -> Option<G>,
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
            let Some(exclusive) = dead(i, peer_pid(s), start) else {
                continue;
            };
            // We alone may change the entry now; what it is now is what we reclaim (FREE if
            // another reclaimer finished meanwhile: nothing to do).
            if self.reclaim(i, e.state.load(Acquire)) {
                n += 1;
            }
            drop(exclusive);
        }
        n
    }

    /// Releases everything peer `i` (observed with state word `observed`) held, then frees the
    /// entry. Idempotent. The caller makes sure nobody else claims or reclaims the entry
    /// meanwhile ([`Shared::reclaim_dead`]); an entry found RECLAIMING is one whose previous
    /// reclaimer died at work, and is finished.
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

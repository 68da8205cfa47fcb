//! Broadcast delivery (one writer, every reader sees every frame): the writer's slot choice
//! for lossless (Block) and live (DropOldest) rings, commits, and the readers' acquire,
//! pin and release.
//!
//! `write_seq` counts committed frames. The writer marks the slot it picked `WRITING(s)`,
//! fills it, stores `FULL(s)` with Release and then `write_seq = s + 1`. Each reader has a
//! `cursor` (the lowest sequence it still wants or holds): it finds the slot stamped
//! `FULL(cursor)`, reads it in place, and on release moves the cursor up.
//!
//! * **Block** (lossless): the writer may reuse a slot only when every lossless reader's
//!   cursor is above the frame in it; among those it takes the most recently released one
//!   (LIFO, so a pipeline that keeps up cycles through two or three cache-warm frames, not all
//!   N), and waits when there is none. Because slots are reused out of order, the writer
//!   records in a *locator* (slot table entry `s % N`) which slot holds frame `s`; readers
//!   look there first and fall back to scanning the stamps. A reader that attaches stores its
//!   cursor and then re-reads `write_seq` (both SeqCst) and starts from there: any reservation
//!   that did not see its cursor reuses a frame older than that (a Dekker handshake).
//! * **DropOldest** (live): the writer never waits for cursors. A reader *pins* each frame it
//!   holds ([`pin_value`], SeqCst) and then re-checks the stamp; the writer
//!   marks a slot WRITING (SeqCst) and then checks the pins, restoring the stamp and trying the
//!   next-oldest slot when the frame there is pinned. One of the two always sees the other, so
//!   a frame is never overwritten while held, and the writer finds a free slot whenever there
//!   are more slots than frames held. A reader looks for `FULL(cursor)` through the locator
//!   and otherwise takes the oldest frame above its cursor, adding the gap to its missed count.
//! * **Lossy readers of a Block ring** (a live preview beside a recorder): the writer skips
//!   their cursors, and they pin the frames they hold as in drop-oldest; a pinned slot makes
//!   the writer wait (only while those frames are held). Such a reader falls behind like a
//!   drop-oldest reader and is told what it missed.

use super::stamps::*;
use super::{Blocked, Grant, Role, RETRIES};
use crate::primitive::{fence, Ordering::*};
use crate::ring::layout::{Backpressure, Mode};
use crate::ring::shared::{Shared, MAX_PINS};

/// Stamp loads a broadcast reader's fallback scans may make in one attempt (beyond the first
/// scan, which is always made): garbage in the segment (a `write_seq` ahead of every stamp)
/// would otherwise cost `RETRIES` full scans, 2^28 loads with 65536 slots, per attempt.
const SCAN_BUDGET: usize = 1 << 16;

/// Passes over the slots a drop-oldest writer makes, spinning between them, before it yields.
const PICK_PASSES: usize = 16;

/// Further passes, each after yielding the CPU, before a drop-oldest writer reports `Full`
/// (none under loom, whose models yield at every spin already).
#[cfg(not(loom))]
const YIELD_PASSES: usize = 16;
#[cfg(loom)]
const YIELD_PASSES: usize = 0;

impl Shared {
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
        //
        // A 2-slot ring with one busy reader (max_held 1, so one pin) still saw `Full` once in
        // 2.4 million frames under CI load, with spinning passes only: the reader's one pin
        // met us at every slot we tried, 16 times over, presumably because a reader that
        // finds our transient WRITING store moves on to the other slot in step with us, or
        // loses its CPU mid-step. So after the spinning passes we yield between passes,
        // letting that reader finish its step; only readers that really pin every slot make a
        // writer pay for them.
        for pass in 0..PICK_PASSES + YIELD_PASSES {
            if let Some(g) = self.bcast_pick_pass(w, s) {
                return Ok(g);
            }
            if pass < PICK_PASSES {
                crate::primitive::spin_hint();
            } else {
                crate::primitive::yield_hint();
            }
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
}

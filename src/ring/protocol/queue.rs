//! Queue delivery (several writers, each frame to exactly one reader).
//!
//! A bounded MPMC queue after D. Vyukov, with the claim moved into the slot stamp so that a
//! crash leaves evidence: slot `s % N` is `EMPTY(s)` when it waits for frame `s`. A writer
//! claims it with a CAS `EMPTY(s) -> WRITING(s, me)` and then advances `write_seq` (others help
//! advance it when they see the slot already claimed); it commits with `FULL(s)`. A reader
//! claims `FULL(s) -> READING(s, me)`, advances `read_seq`, and releases with `EMPTY(s + N)`.
//! A writer that dies or discards its slot leaves `ABANDONED(s)`, which readers skip.

use super::stamps::*;
use super::{Blocked, Grant, RETRIES};
use crate::primitive::{fence, Ordering::*};
use crate::ring::shared::Shared;

impl Shared {
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
}

//! The frames one reader holds at once, and the cursor they let a lossless reader publish.
//!
//! A broadcast reader reads frames in order (`next`, the next sequence it will ask for) but
//! may release them in any order, on any thread (its guards are `Send`). A lossless (block)
//! reader publishes `min(held frames ∪ {next})` as its cursor: the writer reuses only slots
//! below every such cursor. Receiving a frame, releasing one and skipping ahead each leave
//! that minimum where it is or raise it, and the caller serialises them (the reader's lock
//! around its [`HeldSet`]), so the published cursor never moves backwards. Drop-oldest and
//! lossy readers protect each frame they hold with a pin of its own instead, and publish
//! `next`. Queue readers only count their frames (the slot stamp names the holder).
//!
//! Free of syscalls and locks: the reader (`ring::reader`) keeps a `HeldSet` behind a mutex,
//! and the loom facade behind loom's, so both run this code.

use super::Grant;
use crate::primitive::Ordering::*;
use crate::ring::layout::Mode;
use crate::ring::shared::Shared;

/// What one reader holds. Kept behind the reader's lock.
#[derive(Debug, Default)]
pub(crate) struct HeldSet {
    /// Broadcast: sequences of the frames held now.
    seqs: Vec<u64>,
    /// Broadcast pinning readers: pins in use (bit i = pin i).
    pins: u32,
    /// Frames held, plus one while a receive is in progress.
    count: u32,
}

/// One more frame than `max_held` was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooManyHeld;

impl HeldSet {
    /// Frames held, plus one while a receive is in progress.
    pub(crate) fn count(&self) -> u32 {
        self.count
    }

    /// The lowest sequence a lossless reader still needs: its lowest held frame, or `next`.
    pub(crate) fn floor(&self, next: u64) -> u64 {
        self.seqs.iter().copied().min().unwrap_or(next).min(next)
    }

    /// Makes room for one more frame before a receive, with a free pin of its own when
    /// `pinning`; [`Shared::held_granted`] or [`HeldSet::abandon`] follows.
    pub(crate) fn begin(
        &mut self,
        max_held: u32,
        pinning: bool,
    ) -> Result<Option<usize>, TooManyHeld> {
        if self.count >= max_held {
            return Err(TooManyHeld);
        }
        self.count += 1;
        if !pinning {
            return Ok(None);
        }
        // count <= max_held <= MAX_PINS, and each held frame owns one bit, so a bit below
        // max_held is free.
        let p = (!self.pins).trailing_zeros() as usize;
        debug_assert!(p < max_held as usize);
        self.pins |= 1 << p;
        Ok(Some(p))
    }

    /// Undoes [`HeldSet::begin`] when no frame was granted.
    pub(crate) fn abandon(&mut self, pin: Option<usize>) {
        self.count = self.count.saturating_sub(1);
        if let Some(p) = pin {
            self.pins &= !(1 << p);
        }
    }
}

impl Shared {
    /// Publishes reader `r`'s cursor: `next` for a pinning reader, else the floor of what it
    /// holds, and never lower than the cursor published before.
    pub(crate) fn held_publish(&self, r: usize, h: &HeldSet, next: u64) {
        let e = self.peer(r);
        if self.pins_frames(r) {
            e.cursor.store(next, SeqCst);
            return;
        }
        let floor = h.floor(next);
        if floor > e.cursor.load(Relaxed) {
            e.cursor.store(floor, SeqCst);
        }
    }

    /// Records frame `g`, just granted to reader `r` after [`HeldSet::begin`], as held. In
    /// broadcast mode the reader's `next` becomes `g.seq + 1` (returned) and its cursor is
    /// published; in queue mode `next` is not used (returned unchanged).
    pub(crate) fn held_granted(&self, r: usize, h: &mut HeldSet, g: Grant, next: u64) -> u64 {
        let e = self.peer(r);
        if self.layout.mode == Mode::Queue {
            e.held.store(u64::from(h.count), Relaxed);
            return next;
        }
        h.seqs.push(g.seq);
        let next = g.seq + 1;
        self.held_publish(r, h, next);
        e.held.store(h.seqs.len() as u64, Relaxed);
        next
    }

    /// Gives frame `g` (held with `pin`) back: the slot returns to the ring (queue), or the
    /// pin is cleared and the cursor published (broadcast; `next` is the reader's).
    pub(crate) fn held_release(
        &self,
        r: usize,
        h: &mut HeldSet,
        g: Grant,
        pin: Option<usize>,
        next: u64,
    ) {
        let e = self.peer(r);
        h.count = h.count.saturating_sub(1);
        if self.layout.mode == Mode::Queue {
            self.q_release(r, g);
            e.held.store(u64::from(h.count), Relaxed);
            return;
        }
        if let Some(p) = pin {
            self.bcast_unpin(r, p);
            h.pins &= !(1 << p);
        }
        if let Some(k) = h.seqs.iter().position(|&q| q == g.seq) {
            h.seqs.swap_remove(k);
        }
        e.held.store(h.seqs.len() as u64, Relaxed);
        self.held_publish(r, h, next);
    }
}

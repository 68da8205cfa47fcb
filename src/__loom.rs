//! Loom-only facade over the ring protocol on the heap backend (`--cfg loom`).
//!
//! `tests/loom.rs` drives the same index and slot-state code that real rings run, with loom's
//! atomics. Each slot also gets a shadow `loom::cell::UnsafeCell` that writers write while they
//! own the slot and readers read while they hold it: loom reports any access to it that the
//! protocol does not order, which is exactly a torn frame. [`HeldReader`] runs the reader's
//! held set (`ring::protocol::held`) for models of a reader holding several frames at once.

use loom::cell::UnsafeCell;
use loom::sync::Mutex;

use crate::array::DType;
use crate::primitive::Ordering::SeqCst;
use crate::ring::layout::{Backpressure, Layout, Mode};
use crate::ring::protocol::held::HeldSet;
use crate::ring::protocol::{Grant, Role};
use crate::ring::shared::Shared;

/// A slot grant: (slot, seq, extra).
pub type G = (usize, u64, u64);

fn grant(g: G) -> Grant {
    Grant {
        slot: g.0,
        seq: g.1,
        extra: g.2,
    }
}

fn tuple(g: Grant) -> G {
    (g.slot, g.seq, g.extra)
}

/// A heap ring for loom models.
pub struct HeapRing {
    shared: Shared,
    shadow: Vec<UnsafeCell<u64>>,
}

// SAFETY: loom checks every shadow-cell access; Shared is Send + Sync.
unsafe impl Sync for HeapRing {}
// SAFETY: as above.
unsafe impl Send for HeapRing {}

impl std::fmt::Debug for HeapRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeapRing")
    }
}

impl HeapRing {
    /// `mode` is "block", "drop-oldest" or "queue".
    pub fn new(mode: &str, slots: u32, readers: u32, writers: u32) -> HeapRing {
        let mode = match mode {
            "block" => Mode::Broadcast(Backpressure::Block),
            "drop-oldest" => Mode::Broadcast(Backpressure::DropOldest),
            _ => Mode::Queue,
        };
        let layout = Layout::compute(DType::U8, &[8], slots, mode, readers, writers).unwrap();
        HeapRing {
            shared: Shared::heap(layout),
            shadow: (0..slots).map(|_| UnsafeCell::new(u64::MAX)).collect(),
        }
    }
    /// Attaches a reader for `pid`; returns its index.
    pub fn attach_reader(&self, pid: u32) -> usize {
        let (i, g) = self.shared.claim_peer(Role::Reader, pid, 0).unwrap();
        self.shared.attach_reader(i, pid, g);
        i
    }
    /// Attaches a writer for `pid`; returns its index.
    pub fn attach_writer(&self, pid: u32) -> usize {
        let (i, g) = self.shared.claim_peer(Role::Writer, pid, 0).unwrap();
        self.shared.attach_writer(i, pid, g);
        i
    }
    /// Broadcast writer reserve.
    pub fn bcast_try_reserve(&self, w: usize) -> Option<G> {
        self.shared.bcast_try_reserve(w).ok().map(tuple)
    }
    /// Broadcast commit.
    pub fn bcast_commit(&self, w: usize, g: G) {
        self.shared.bcast_commit(w, grant(g))
    }
    /// Broadcast reader acquire.
    pub fn bcast_try_acquire(&self, r: usize) -> Option<G> {
        self.shared.bcast_try_acquire1(r).map(tuple)
    }
    /// Broadcast reader release.
    pub fn bcast_release(&self, r: usize, g: G) {
        self.shared.bcast_release(r, grant(g))
    }
    /// Queue reserve.
    pub fn q_try_reserve(&self, w: usize) -> Option<G> {
        self.shared.q_try_reserve(w).ok().map(tuple)
    }
    /// Queue commit.
    pub fn q_commit(&self, w: usize, g: G) -> bool {
        self.shared.q_commit(w, grant(g))
    }
    /// Queue abort.
    pub fn q_abort(&self, w: usize, g: G) {
        self.shared.q_abort(w, grant(g))
    }
    /// Queue acquire.
    pub fn q_try_acquire(&self, r: usize) -> Option<G> {
        self.shared.q_try_acquire(r).map(tuple)
    }
    /// Queue release.
    pub fn q_release(&self, r: usize, g: G) {
        self.shared.q_release(r, grant(g))
    }
    /// Attaches a broadcast reader for `pid` that may hold up to `max_held` frames at once
    /// (lossless in a block ring, pinning in a drop-oldest one).
    pub fn attach_held_reader(&self, pid: u32, max_held: u32) -> HeldReader {
        let (r, g) = self.shared.claim_peer(Role::Reader, pid, 0).unwrap();
        let next = self
            .shared
            .attach_reader_with(r, pid, g, false, max_held)
            .unwrap();
        HeldReader {
            r,
            max_held,
            pinning: self.shared.pins_frames(r),
            state: Mutex::new((HeldSet::default(), next)),
        }
    }
    /// Reader `r`'s published cursor (a `SeqCst` load, as the writer makes it).
    pub fn cursor(&self, r: usize) -> u64 {
        self.shared.peer(r).cursor.load(SeqCst)
    }
    /// Reclaims peer `i` as if its process had died.
    pub fn kill(&self, i: usize) -> bool {
        let s = self
            .shared
            .peer(i)
            .state
            .load(std::sync::atomic::Ordering::Acquire);
        self.shared.reclaim(i, s)
    }
    /// Writes the shadow payload of a slot this thread owns for writing.
    pub fn write_payload(&self, slot: usize, v: u64) {
        self.shadow[slot].with_mut(|p| {
            // SAFETY: loom tracks this access and fails the model if it races.
            unsafe { *p = v }
        })
    }
    /// Reads the shadow payload of a slot this thread holds for reading.
    pub fn read_payload(&self, slot: usize) -> u64 {
        self.shadow[slot].with(|p| {
            // SAFETY: loom tracks this access and fails the model if it races.
            unsafe { *p }
        })
    }
}

/// A broadcast reader that may hold several frames at once, driven as `ring::reader` drives
/// one: its [`HeldSet`] and `next` behind a (loom) mutex, each acquire outside it.
pub struct HeldReader {
    r: usize,
    max_held: u32,
    pinning: bool,
    state: Mutex<(HeldSet, u64)>,
}

impl std::fmt::Debug for HeldReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldReader")
            .field("index", &self.r)
            .finish()
    }
}

/// A frame a [`HeldReader`] holds, with its pin; `Send`, as `ReadSlot` is.
#[derive(Debug)]
pub struct HeldFrame {
    /// The frame's grant.
    pub grant: G,
    pin: Option<usize>,
}

/// The reader already holds `max_held` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyHeld;

impl HeldReader {
    /// The reader's index in the peer table.
    pub fn index(&self) -> usize {
        self.r
    }
    /// The next frame, if one is committed (as `Reader::try_recv`).
    pub fn try_recv(&self, ring: &HeapRing) -> Result<Option<HeldFrame>, TooManyHeld> {
        let s = &ring.shared;
        let (pin, next) = {
            let mut st = self.state.lock().unwrap();
            let (h, next) = &mut *st;
            let pin = h.begin(self.max_held, self.pinning);
            (pin.map_err(|_| TooManyHeld)?, *next)
        };
        let Some(g) = s.bcast_try_acquire(self.r, next, pin) else {
            self.state.lock().unwrap().0.abandon(pin);
            return Ok(None);
        };
        let mut st = self.state.lock().unwrap();
        let (h, next) = &mut *st;
        *next = s.held_granted(self.r, h, g, *next);
        Ok(Some(HeldFrame {
            grant: tuple(g),
            pin,
        }))
    }
    /// Gives a held frame back (as dropping its `ReadSlot`), on any thread.
    pub fn release(&self, ring: &HeapRing, f: HeldFrame) {
        let mut st = self.state.lock().unwrap();
        let (h, next) = &mut *st;
        ring.shared
            .held_release(self.r, h, grant(f.grant), f.pin, *next);
    }
}

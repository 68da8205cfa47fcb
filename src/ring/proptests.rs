//! Property tests of the slot protocol in [`super::protocol`] against a model.
//!
//! One thread plays several peers of a heap ring: random sequences of attaches, detaches and
//! kills (reclaims) of readers and writers, reservations (the payload is filled with the
//! frame's sequence number right away), commits, aborts, acquires (the payload is checked)
//! and releases (checked again: a frame overwritten while held is caught here). A model of
//! the slot table, the cursors and the queue positions predicts the exact result of every
//! call, and each mode's properties are asserted on top:
//!
//! * queue: a committed frame is delivered at most once, an aborted or abandoned one never;
//!   once the readers drain the ring every committed frame was delivered or is counted in
//!   `lost` (its reader died holding it); `Full` exactly when the slot still holds the frame
//!   of the previous lap;
//! * broadcast: every reader sees strictly increasing sequences and `extra` is exactly the
//!   gap to its cursor; block: a lossless reader never has a gap, and the writer gets `Full`
//!   exactly when the slowest lossless reader is a full ring behind (or a lossy reader pins
//!   the slot to reuse); drop-oldest: the writer gets `Full` only when readers hold every
//!   slot, and never takes a slot a reader holds.
//!
//! A second simulation ([`HeldSim`]) runs one broadcast reader holding up to `max_held`
//! (1..=4) frames at once, through its [`HeldSet`] as `ring::reader` does, beside a writer:
//! random receives, "latest" receives, releases in any order, skips to the latest frame and
//! writes. A receive beyond `max_held` is refused (`TooManyHeld`) and only then; the published
//! cursor never moves backwards, and it is `min(held ∪ {next})` for a lossless reader and
//! `next` for a pinning one (whose pins name exactly the frames it holds); the writer never
//! takes a held frame's slot, and a lossless reader's plain receive never skips a frame.
//!
//! Cases per property: 256 (or `PROPTEST_CASES`).

use std::collections::{BTreeMap, BTreeSet};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::Config;

use super::layout::{Backpressure, Layout, Mode};
use super::protocol::held::{HeldSet, TooManyHeld};
use super::protocol::{peer_gen, peer_pid, peer_status, pin_value, ps};
use super::protocol::{Blocked, Grant, Role};
use super::shared::{Shared, MAX_PINS};
use crate::array::DType;
use crate::primitive::Ordering::Relaxed;

/// One step of the simulation. Indices pick among the peers attached at that moment (modulo
/// their number), so every generated sequence stays meaningful while peers come and go.
#[derive(Debug, Clone, Copy)]
enum Op {
    AttachReader {
        lossy: bool,
    },
    DetachReader(usize),
    KillReader(usize),
    /// Like `Reader::recv`: releases the frame the reader holds, then takes the next one.
    Acquire(usize),
    Release(usize),
    AttachWriter,
    DetachWriter(usize),
    KillWriter(usize),
    Reserve(usize),
    Commit(usize),
    Abort(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let k = || 0usize..8;
    prop_oneof![
        2 => any::<bool>().prop_map(|lossy| Op::AttachReader { lossy }),
        1 => k().prop_map(Op::DetachReader),
        1 => k().prop_map(Op::KillReader),
        12 => k().prop_map(Op::Acquire),
        8 => k().prop_map(Op::Release),
        1 => Just(Op::AttachWriter),
        1 => k().prop_map(Op::DetachWriter),
        1 => k().prop_map(Op::KillWriter),
        12 => k().prop_map(Op::Reserve),
        10 => k().prop_map(Op::Commit),
        2 => k().prop_map(Op::Abort),
    ]
}

fn config() -> Config {
    let mut c = Config {
        // Shrunk failures are printed; do not write regression files into the source tree.
        failure_persistence: None,
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = 256;
    }
    c
}

/// What a broadcast slot holds, as far as the model knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Content {
    Empty,
    Writing(u64),
    Full(u64),
}

/// Where a queue sequence is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Q {
    Writing(usize),
    Full,
    Reading(usize),
    Abandoned,
    /// Consumed, skipped (abandoned), or lost with a dead reader: its slot is free again.
    Done,
}

#[derive(Debug)]
struct ReaderM {
    idx: usize,
    pid: u32,
    generation: u32,
    lossy: bool,
    /// Broadcast: the next sequence it wants, or the one it holds.
    cursor: u64,
    held: Option<Grant>,
    missed: u64,
    last: Option<u64>,
}

#[derive(Debug)]
struct WriterM {
    idx: usize,
    pid: u32,
    generation: u32,
    reserved: Option<Grant>,
}

struct Sim {
    s: Shared,
    mode: Mode,
    n: u64,
    readers: Vec<ReaderM>,
    writers: Vec<WriterM>,
    next_pid: u32,
    writer_ever: bool,
    // Broadcast.
    committed_frames: u64,
    slots: Vec<Content>,
    // Queue.
    wpos: u64,
    rpos: u64,
    q: BTreeMap<u64, Q>,
    committed: BTreeSet<u64>,
    /// Handed to a reader (at most once each).
    handed: BTreeSet<u64>,
    /// Released by their reader.
    consumed: BTreeSet<u64>,
    /// Held by a reader that died.
    lost: BTreeSet<u64>,
    abandoned: u64,
}

/// Fills slot `slot`'s payload with `seq`.
fn fill(s: &Shared, slot: usize, seq: u64) {
    let p = s.payload(slot).cast::<[u8; 8]>();
    // SAFETY: the simulated writer was just granted `slot` (WRITING, owned by it): the protocol
    // keeps every simulated reader off it, and this test is single-threaded. The payload is 8
    // bytes long (`[8]` of u8) and `[u8; 8]` has alignment 1.
    unsafe { p.write(seq.to_le_bytes()) }
}

/// Reads slot `slot`'s payload.
fn payload(s: &Shared, slot: usize) -> u64 {
    let p = s.payload(slot).cast::<[u8; 8]>();
    // SAFETY: called only for a slot the protocol granted to a simulated reader (or to check
    // one it holds); single-threaded, 8 bytes in bounds, alignment 1, initialised (zeroed).
    u64::from_le_bytes(unsafe { p.read() })
}

fn pick<T>(v: &[T], k: usize) -> Option<usize> {
    (!v.is_empty()).then(|| k % v.len())
}

impl Sim {
    fn new(mode: Mode, slots: u32, readers: u32, writers: u32) -> Sim {
        let layout = Layout::compute(DType::U8, &[8], slots, mode, readers, writers).unwrap();
        Sim {
            s: Shared::heap(layout),
            mode,
            n: u64::from(slots),
            readers: Vec::new(),
            writers: Vec::new(),
            next_pid: 100,
            writer_ever: false,
            committed_frames: 0,
            slots: vec![Content::Empty; slots as usize],
            wpos: 0,
            rpos: 0,
            q: BTreeMap::new(),
            committed: BTreeSet::new(),
            handed: BTreeSet::new(),
            consumed: BTreeSet::new(),
            lost: BTreeSet::new(),
            abandoned: 0,
        }
    }

    fn queue(&self) -> bool {
        self.mode == Mode::Queue
    }

    fn pid(&mut self) -> u32 {
        self.next_pid += 1;
        self.next_pid
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::AttachReader { lossy } => self.attach_reader(lossy),
            Op::DetachReader(k) => {
                if let Some(i) = pick(&self.readers, k) {
                    self.release(i);
                    let r = self.readers.remove(i);
                    assert!(self.s.release_peer(r.idx, r.pid, r.generation));
                    assert_eq!(
                        peer_status(self.s.peer(r.idx).state.load(Relaxed)),
                        ps::FREE
                    );
                }
            }
            Op::KillReader(k) => {
                if let Some(i) = pick(&self.readers, k) {
                    let r = self.readers.remove(i);
                    self.reclaim(r.idx);
                    if let Some(g) = r.held.filter(|_| self.queue()) {
                        assert_eq!(self.q.insert(g.seq, Q::Done), Some(Q::Reading(r.idx)));
                        self.lost.insert(g.seq);
                    }
                }
            }
            Op::Acquire(k) => {
                if let Some(i) = pick(&self.readers, k) {
                    self.release(i);
                    self.acquire(i);
                }
            }
            Op::Release(k) => {
                if let Some(i) = pick(&self.readers, k) {
                    self.release(i);
                }
            }
            Op::AttachWriter => self.attach_writer(),
            Op::DetachWriter(k) => {
                if let Some(i) = pick(&self.writers, k) {
                    // A `WriteSlot` borrows its writer: it is dropped (aborted) first.
                    self.abort(i);
                    let w = self.writers.remove(i);
                    assert!(self.s.release_peer(w.idx, w.pid, w.generation));
                }
            }
            Op::KillWriter(k) => {
                if let Some(i) = pick(&self.writers, k) {
                    let w = self.writers.remove(i);
                    self.reclaim(w.idx);
                    if let Some(g) = w.reserved.filter(|_| self.queue()) {
                        assert_eq!(self.q.insert(g.seq, Q::Abandoned), Some(Q::Writing(w.idx)));
                        self.abandoned += 1;
                    }
                    // Broadcast: the slot stays WRITING until the next writer attaches.
                }
            }
            Op::Reserve(k) => {
                if let Some(i) = pick(&self.writers, k) {
                    self.reserve(i);
                }
            }
            Op::Commit(k) => {
                if let Some(i) = pick(&self.writers, k) {
                    self.commit(i);
                }
            }
            Op::Abort(k) => {
                if let Some(i) = pick(&self.writers, k) {
                    self.abort(i);
                }
            }
        }
        self.check_invariants();
    }

    fn reclaim(&self, idx: usize) {
        let state = self.s.peer(idx).state.load(Relaxed);
        assert!(self.s.reclaim(idx, state), "reclaim of peer {idx}");
        assert!(!self.s.reclaim(idx, self.s.peer(idx).state.load(Relaxed)));
        let e = self.s.peer(idx);
        assert_eq!(peer_status(e.state.load(Relaxed)), ps::FREE);
        assert_eq!(
            e.pins[0].load(Relaxed),
            0,
            "a reclaimed reader keeps no pin"
        );
    }

    fn check_invariants(&self) {
        let c = self.s.control();
        assert_eq!(
            self.s.writers_gone(),
            self.writer_ever && self.writers.is_empty(),
            "writers_gone"
        );
        for r in &self.readers {
            let st = self.s.peer(r.idx).state.load(Relaxed);
            assert_eq!(
                (peer_status(st), peer_pid(st), peer_gen(st)),
                (ps::ACTIVE, r.pid, r.generation)
            );
        }
        if self.queue() {
            assert_eq!(c.lost.load(Relaxed), self.lost.len() as u64, "lost counter");
            assert_eq!(
                c.abandoned.load(Relaxed),
                self.abandoned,
                "abandoned counter"
            );
            assert_eq!(c.write_seq.v.load(Relaxed), self.wpos, "enqueue position");
            assert_eq!(c.read_seq.v.load(Relaxed), self.rpos, "dequeue position");
        } else {
            assert_eq!(c.write_seq.v.load(Relaxed), self.committed_frames);
        }
    }

    // ------------------------------------------------------------------ attach

    fn attach_reader(&mut self, lossy: bool) {
        let pid = self.pid();
        let Some((idx, generation)) = self.s.claim_peer(Role::Reader, pid, 0) else {
            assert_eq!(self.readers.len(), self.s.layout.max_readers as usize);
            return;
        };
        assert!(self.readers.len() < self.s.layout.max_readers as usize);
        let lossy = lossy && self.mode == Mode::Broadcast(Backpressure::Block);
        self.s.attach_reader_with(idx, pid, generation, lossy, 1);
        let cursor = self.s.peer(idx).cursor.load(Relaxed);
        if !self.queue() {
            assert_eq!(
                cursor, self.committed_frames,
                "a reader starts at the next frame"
            );
        }
        self.readers.push(ReaderM {
            idx,
            pid,
            generation,
            lossy,
            cursor,
            held: None,
            missed: 0,
            last: None,
        });
    }

    fn attach_writer(&mut self) {
        let pid = self.pid();
        let Some((idx, generation)) = self.s.claim_peer(Role::Writer, pid, 0) else {
            assert_eq!(self.writers.len(), self.s.layout.max_writers as usize);
            return;
        };
        assert!(self.writers.len() < self.s.layout.max_writers as usize);
        self.s.attach_writer(idx, pid, generation);
        self.writer_ever = true;
        if !self.queue() {
            // The slot a dead writer was filling is never published: it becomes EMPTY.
            for c in &mut self.slots {
                if let Content::Writing(_) = c {
                    *c = Content::Empty;
                }
            }
        }
        self.writers.push(WriterM {
            idx,
            pid,
            generation,
            reserved: None,
        });
    }

    // ------------------------------------------------------------------ writers

    fn reserve(&mut self, i: usize) {
        if self.writers[i].reserved.is_some() {
            return;
        }
        let idx = self.writers[i].idx;
        let (expected_full, got) = if self.queue() {
            let s = self.wpos;
            let full = s >= self.n && self.q[&(s - self.n)] != Q::Done;
            (full, self.s.q_try_reserve(idx))
        } else {
            (self.bcast_expect_full(), self.s.bcast_try_reserve(idx))
        };
        let g = match got {
            Err(Blocked::Full) => {
                assert!(expected_full, "writer refused, model says a slot is free");
                return;
            }
            Err(Blocked::Exhausted) => panic!("sequence space exhausted"),
            Ok(g) => g,
        };
        assert!(
            !expected_full,
            "writer granted frame {} into a busy slot",
            g.seq
        );
        assert!(
            self.readers
                .iter()
                .all(|r| r.held.is_none_or(|h| h.slot != g.slot)),
            "writer granted slot {} that a reader holds",
            g.slot
        );
        if self.queue() {
            assert_eq!((g.seq, g.slot as u64), (self.wpos, self.wpos % self.n));
            self.wpos += 1;
            self.q.insert(g.seq, Q::Writing(idx));
        } else {
            assert_eq!(g.seq, self.committed_frames);
            if self.mode == Mode::Broadcast(Backpressure::Block) {
                assert_eq!(
                    Some(g.slot),
                    self.block_expected_slot(),
                    "block mode reuses the most recently released slot"
                );
            }
            self.slots[g.slot] = Content::Writing(g.seq);
        }
        fill(&self.s, g.slot, g.seq);
        self.writers[i].reserved = Some(g);
    }

    /// Whether a broadcast writer must be refused now.
    fn bcast_expect_full(&self) -> bool {
        let held = |slot: usize| -> bool {
            let Content::Full(seq) = self.slots[slot] else {
                return false;
            };
            self.readers
                .iter()
                .any(|r| r.held.is_some_and(|h| (h.slot, h.seq) == (slot, seq)))
        };
        if self.mode == Mode::Broadcast(Backpressure::DropOldest) {
            // Refused only when readers hold (pin) every slot.
            return (0..self.slots.len()).all(held);
        }
        // Block: refused when no slot is reusable (see `block_expected_slot`).
        self.block_expected_slot().is_none()
    }

    /// The slot a lossless (block) writer takes: among slots that are empty or hold a frame
    /// every lossless reader has released, and that no lossy reader pins, the one with the
    /// newest released frame (empty ones last); ties go to the lowest index.
    fn block_expected_slot(&self) -> Option<usize> {
        let min_cursor = self
            .readers
            .iter()
            .filter(|r| !r.lossy)
            .map(|r| r.cursor)
            .min()
            .unwrap_or(u64::MAX);
        let pinned = |slot: usize, seq: u64| {
            self.readers
                .iter()
                .any(|r| r.lossy && r.held.is_some_and(|h| (h.slot, h.seq) == (slot, seq)))
        };
        let score = |slot: usize| -> u64 {
            match self.slots[slot] {
                Content::Full(x) if x < min_cursor && !pinned(slot, x) => x + 2,
                Content::Full(_) => 0,
                _ => 1,
            }
        };
        let mut best: Option<(u64, usize)> = None;
        for slot in 0..self.slots.len() {
            let k = score(slot);
            if k > 0 && best.is_none_or(|(b, _)| k > b) {
                best = Some((k, slot));
            }
        }
        best.map(|(_, slot)| slot)
    }

    fn commit(&mut self, i: usize) {
        let Some(g) = self.writers[i].reserved.take() else {
            return;
        };
        let idx = self.writers[i].idx;
        assert_eq!(
            payload(&self.s, g.slot),
            g.seq,
            "our own slot was overwritten"
        );
        if self.queue() {
            assert!(self.s.q_commit(idx, g));
            assert_eq!(self.q.insert(g.seq, Q::Full), Some(Q::Writing(idx)));
            self.committed.insert(g.seq);
        } else {
            self.s.bcast_commit(idx, g);
            self.slots[g.slot] = Content::Full(g.seq);
            self.committed_frames = g.seq + 1;
        }
    }

    fn abort(&mut self, i: usize) {
        let Some(g) = self.writers[i].reserved.take() else {
            return;
        };
        let idx = self.writers[i].idx;
        if self.queue() {
            self.s.q_abort(idx, g);
            assert_eq!(self.q.insert(g.seq, Q::Abandoned), Some(Q::Writing(idx)));
            self.abandoned += 1;
        } else {
            self.s.bcast_abort(idx, g);
            self.slots[g.slot] = Content::Empty;
        }
    }

    // ------------------------------------------------------------------ readers

    fn acquire(&mut self, i: usize) {
        assert!(self.readers[i].held.is_none());
        let idx = self.readers[i].idx;
        if self.queue() {
            let expected = self.q_expect_acquire(idx);
            let got = self.s.q_try_acquire(idx);
            assert_eq!(got, expected, "queue acquire");
            if let Some(g) = got {
                assert_eq!(
                    payload(&self.s, g.slot),
                    g.seq,
                    "queue frame {} torn",
                    g.seq
                );
                assert!(
                    self.committed.contains(&g.seq),
                    "uncommitted frame delivered"
                );
                assert!(self.handed.insert(g.seq), "frame {} delivered twice", g.seq);
                self.readers[i].held = Some(g);
            }
            return;
        }
        let expected = self.bcast_expect_acquire(i);
        let got = self.s.bcast_try_acquire1(idx);
        assert_eq!(got, expected, "broadcast acquire by reader {idx}");
        let r = &mut self.readers[i];
        let lossless = self.mode == Mode::Broadcast(Backpressure::Block) && !r.lossy;
        if lossless && r.cursor < self.committed_frames {
            assert_eq!(
                got.map(|g| (g.seq, g.extra)),
                Some((r.cursor, 0)),
                "lossless reader has a gap"
            );
        }
        let Some(g) = got else { return };
        assert_eq!(payload(&self.s, g.slot), g.seq, "frame {} torn", g.seq);
        assert!(r.last.is_none_or(|l| g.seq > l), "sequences not increasing");
        assert_eq!(g.extra, g.seq - r.cursor, "missed count is not the gap");
        r.cursor = g.seq;
        r.missed += g.extra;
        r.last = Some(g.seq);
        r.held = Some(g);
        let e = self.s.peer(idx);
        assert_eq!(e.missed.load(Relaxed), r.missed);
        assert_eq!(e.cursor.load(Relaxed), r.cursor);
    }

    fn bcast_expect_acquire(&self, i: usize) -> Option<Grant> {
        let cursor = self.readers[i].cursor;
        if cursor >= self.committed_frames {
            return None;
        }
        // The frame at the cursor wherever it is (the locator finds it; lossless rings reuse
        // slots out of order), else the oldest committed frame after it.
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(slot, c)| match *c {
                Content::Full(seq) if seq >= cursor => Some(Grant {
                    slot,
                    seq,
                    extra: seq - cursor,
                }),
                _ => None,
            })
            .min_by_key(|g| g.seq)
    }

    /// The queue's next frame for reader `idx`, updating the model as the ring would (skipped
    /// abandoned sequences are done, the taken one is being read).
    fn q_expect_acquire(&mut self, idx: usize) -> Option<Grant> {
        loop {
            let s = self.rpos;
            if s >= self.wpos {
                return None;
            }
            match self.q[&s] {
                Q::Writing(_) => return None,
                Q::Full => {
                    self.q.insert(s, Q::Reading(idx));
                    self.rpos += 1;
                    return Some(Grant {
                        slot: (s % self.n) as usize,
                        seq: s,
                        extra: 0,
                    });
                }
                Q::Abandoned => {
                    self.q.insert(s, Q::Done);
                    self.rpos += 1;
                }
                other => panic!("model: sequence {s} at the read position is {other:?}"),
            }
        }
    }

    fn release(&mut self, i: usize) {
        let Some(g) = self.readers[i].held.take() else {
            return;
        };
        let idx = self.readers[i].idx;
        assert_eq!(
            payload(&self.s, g.slot),
            g.seq,
            "frame {} overwritten while held",
            g.seq
        );
        if self.queue() {
            self.s.q_release(idx, g);
            assert_eq!(self.q.insert(g.seq, Q::Done), Some(Q::Reading(idx)));
            self.consumed.insert(g.seq);
        } else {
            self.s.bcast_release(idx, g);
            self.readers[i].cursor = g.seq + 1;
            assert_eq!(self.s.peer(idx).pins[0].load(Relaxed), 0);
        }
    }

    // ------------------------------------------------------------------ end of a case

    /// Commits what is reserved, then lets every reader read until nothing is left, and checks
    /// that nothing committed went missing.
    fn drain(&mut self) {
        for i in 0..self.writers.len() {
            self.commit(i);
        }
        if self.readers.is_empty() {
            self.attach_reader(false);
        }
        for i in 0..self.readers.len() {
            loop {
                self.release(i);
                self.acquire(i);
                if self.readers[i].held.is_none() {
                    break;
                }
            }
            self.check_invariants();
        }
        if self.queue() {
            assert!(self.consumed.is_disjoint(&self.lost));
            let accounted: BTreeSet<u64> = self.consumed.union(&self.lost).copied().collect();
            assert_eq!(accounted, self.handed);
            assert_eq!(accounted, self.committed, "committed frames went missing");
            return;
        }
        for i in 0..self.readers.len() {
            let r = &self.readers[i];
            let lossless = self.mode == Mode::Broadcast(Backpressure::Block) && !r.lossy;
            if lossless {
                assert_eq!(
                    r.cursor, self.committed_frames,
                    "lossless reader left frames"
                );
            }
            assert_eq!(self.bcast_expect_acquire(i), None, "a frame is left unread");
        }
    }
}

fn run(mode: Mode, slots: u32, readers: u32, writers: u32, ops: &[Op]) {
    let mut sim = Sim::new(mode, slots, readers, writers);
    // Start with one writer and one reader so that short sequences do something.
    sim.attach_writer();
    sim.attach_reader(false);
    for &op in ops {
        sim.step(op);
    }
    sim.drain();
}

/// One step of [`HeldSim`]. `Release(k)` picks the k-th held frame (modulo their number), so
/// frames are released in any order.
#[derive(Debug, Clone, Copy)]
enum HeldOp {
    /// The writer reserves, fills and commits one frame, if the ring lets it.
    Write,
    /// `Reader::try_recv`.
    Recv,
    /// `Reader::try_recv_latest`.
    RecvLatest,
    /// Drops the guard of a held frame.
    Release(usize),
    /// `Reader::skip_to_latest`.
    SkipToLatest,
}

fn held_op() -> impl Strategy<Value = HeldOp> {
    prop_oneof![
        6 => Just(HeldOp::Write),
        5 => Just(HeldOp::Recv),
        2 => Just(HeldOp::RecvLatest),
        5 => (0usize..4).prop_map(HeldOp::Release),
        1 => Just(HeldOp::SkipToLatest),
    ]
}

/// `max_held` in 1..=4 and a slot count it is allowed with (`max_held ≤ max(N − 1, 1)`, as
/// `ReaderBuilder::attach` checks), up to two slots more.
fn held_shape() -> impl Strategy<Value = (u32, u32)> {
    (1u32..=4).prop_flat_map(|m| (Just(m), if m == 1 { 1 } else { m + 1 }..=m + 2))
}

/// One broadcast reader holding up to `max_held` frames, driven as `ring::reader` drives it
/// (its `next`, its [`HeldSet`] and the `Shared::held_*` calls), and one writer.
struct HeldSim {
    s: Shared,
    w: usize,
    r: usize,
    max_held: u32,
    /// Drop-oldest and lossy readers pin their frames; the others are lossless.
    pinning: bool,
    h: HeldSet,
    next: u64,
    /// The frames held, with their pins, in the order received.
    held: Vec<(Grant, Option<usize>)>,
    /// The cursor published after the previous step.
    cursor: u64,
}

impl HeldSim {
    fn new(mode: Mode, slots: u32, max_held: u32, lossy: bool) -> HeldSim {
        let layout = Layout::compute(DType::U8, &[8], slots, mode, 1, 1).unwrap();
        let s = Shared::heap(layout);
        let (w, g) = s.claim_peer(Role::Writer, 1, 0).unwrap();
        s.attach_writer(w, 1, g);
        let (r, g) = s.claim_peer(Role::Reader, 2, 0).unwrap();
        let lossy = lossy && mode == Mode::Broadcast(Backpressure::Block);
        let next = s.attach_reader_with(r, 2, g, lossy, max_held).unwrap();
        let pinning = s.pins_frames(r);
        assert_eq!(
            pinning,
            lossy || mode == Mode::Broadcast(Backpressure::DropOldest)
        );
        HeldSim {
            s,
            w,
            r,
            max_held,
            pinning,
            h: HeldSet::default(),
            next,
            held: Vec::new(),
            cursor: next,
        }
    }

    fn write_seq(&self) -> u64 {
        self.s.control().write_seq.v.load(Relaxed)
    }

    fn step(&mut self, op: HeldOp) {
        match op {
            HeldOp::Write => self.write(),
            HeldOp::Recv => self.recv(false),
            HeldOp::RecvLatest => self.recv(true),
            HeldOp::Release(k) => {
                if let Some(i) = pick(&self.held, k) {
                    self.release(i);
                }
            }
            HeldOp::SkipToLatest => self.skip_to_latest(),
        }
        self.check();
    }

    fn write(&mut self) {
        let g = match self.s.bcast_try_reserve(self.w) {
            Ok(g) => g,
            Err(Blocked::Full) => {
                // Pinning readers: refused only when every slot is pinned (max_held = N = 1).
                // A lossless reader that holds nothing and has read everything holds the
                // writer back from no slot.
                let slots = self.s.layout.slot_count as usize;
                assert!(
                    !self.pinning || self.held.len() == slots,
                    "writer refused, {} of {slots} slots pinned",
                    self.held.len()
                );
                assert!(
                    self.pinning || !self.held.is_empty() || self.next < self.write_seq(),
                    "writer refused by a lossless reader that holds nothing and is caught up"
                );
                return;
            }
            Err(Blocked::Exhausted) => panic!("sequence space exhausted"),
        };
        assert!(
            self.held.iter().all(|(h, _)| h.slot != g.slot),
            "writer granted slot {} for frame {}, a held frame's slot",
            g.slot,
            g.seq
        );
        fill(&self.s, g.slot, g.seq);
        self.s.bcast_commit(self.w, g);
    }

    /// `Reader::try_recv` (`latest`: `try_recv_latest`): `begin`, the acquire from `next` (or
    /// from the newest frame), then `held_granted` or `abandon`.
    fn recv(&mut self, latest: bool) {
        let before = self.h.count();
        let pin = match self.h.begin(self.max_held, self.pinning) {
            Err(TooManyHeld) => {
                assert_eq!(before, self.max_held, "refused below max_held");
                assert_eq!(
                    self.h.count(),
                    before,
                    "a refused receive changed the count"
                );
                return;
            }
            Ok(pin) => pin,
        };
        assert!(
            before < self.max_held,
            "a receive beyond max_held was allowed"
        );
        assert_eq!(pin.is_some(), self.pinning);
        if let Some(p) = pin {
            assert!(p < self.max_held as usize, "pin {p} beyond max_held");
            assert!(
                self.held.iter().all(|&(_, q)| q != Some(p)),
                "pin {p} given to two frames"
            );
        }
        let w = self.write_seq();
        let mut from = self.next;
        if latest && w > from + 1 {
            from = w - 1;
        }
        let Some(mut g) = self.s.bcast_try_acquire(self.r, from, pin) else {
            assert!(from >= w, "frame {from} is committed but was not received");
            self.h.abandon(pin);
            assert_eq!(self.h.count(), before, "abandon undoes begin");
            return;
        };
        g.extra = g.seq - self.next;
        assert!(g.seq >= from, "received frame {} before {from}", g.seq);
        if !self.pinning && !latest {
            assert_eq!(
                (g.seq, g.extra),
                (self.next, 0),
                "lossless reader has a gap"
            );
        }
        assert_eq!(payload(&self.s, g.slot), g.seq, "frame {} torn", g.seq);
        let next = self.s.held_granted(self.r, &mut self.h, g, self.next);
        assert_eq!(next, g.seq + 1);
        self.next = next;
        self.held.push((g, pin));
    }

    fn release(&mut self, i: usize) {
        let (g, pin) = self.held.remove(i);
        assert_eq!(
            payload(&self.s, g.slot),
            g.seq,
            "frame {} overwritten while held",
            g.seq
        );
        self.s.held_release(self.r, &mut self.h, g, pin, self.next);
    }

    /// `Reader::skip_to_latest`: `next` jumps to `write_seq`, the cursor is published.
    fn skip_to_latest(&mut self) {
        let w = self.write_seq();
        if w > self.next {
            self.next = w;
            self.s.held_publish(self.r, &self.h, self.next);
        }
    }

    fn check(&mut self) {
        let e = self.s.peer(self.r);
        let n = self.held.len() as u32;
        assert!(
            n <= self.max_held,
            "{n} frames held, max_held {}",
            self.max_held
        );
        assert_eq!(self.h.count(), n, "HeldSet count");
        assert_eq!(e.held.load(Relaxed), u64::from(n), "the entry's held");
        let cursor = e.cursor.load(Relaxed);
        assert!(
            cursor >= self.cursor,
            "cursor went back from {} to {cursor}",
            self.cursor
        );
        self.cursor = cursor;
        if self.pinning {
            assert_eq!(cursor, self.next, "a pinning reader publishes next");
            for p in 0..MAX_PINS {
                let want = self
                    .held
                    .iter()
                    .find(|&&(_, q)| q == Some(p))
                    .map_or(0, |(g, _)| pin_value(g.slot, g.seq));
                assert_eq!(e.pins[p].load(Relaxed), want, "pin {p}");
            }
        } else {
            let floor = self
                .held
                .iter()
                .map(|(g, _)| g.seq)
                .fold(self.next, u64::min);
            assert_eq!(cursor, floor, "a lossless cursor is min(held ∪ {{next}})");
            assert_eq!(self.h.floor(self.next), floor);
        }
        for (g, _) in &self.held {
            assert_eq!(
                payload(&self.s, g.slot),
                g.seq,
                "held frame {} overwritten",
                g.seq
            );
        }
    }

    /// Releases what is still held (newest first) and reads to the end; a lossless reader
    /// then has its cursor at `write_seq`.
    fn drain(&mut self) {
        while let Some(i) = self.held.len().checked_sub(1) {
            self.release(i);
            self.check();
        }
        loop {
            self.recv(false);
            self.check();
            match self.held.len() {
                0 => break,
                _ => {
                    self.release(0);
                    self.check();
                }
            }
        }
        assert_eq!(self.next, self.write_seq(), "frames left unread");
        assert_eq!(self.cursor, self.write_seq());
    }
}

fn run_held(mode: Mode, (max_held, slots): (u32, u32), lossy: bool, ops: &[HeldOp]) {
    let mut sim = HeldSim::new(mode, slots, max_held, lossy);
    sim.check();
    for &op in ops {
        sim.step(op);
    }
    sim.drain();
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn broadcast_block(
        slots in 1u32..=4,
        readers in 1u32..=3,
        ops in vec(op(), 1..150),
    ) {
        run(Mode::Broadcast(Backpressure::Block), slots, readers, 1, &ops);
    }

    #[test]
    fn broadcast_drop_oldest(
        slots in 1u32..=4,
        readers in 1u32..=3,
        ops in vec(op(), 1..150),
    ) {
        run(Mode::Broadcast(Backpressure::DropOldest), slots, readers, 1, &ops);
    }

    #[test]
    fn queue(
        slots in 1u32..=4,
        readers in 1u32..=3,
        writers in 1u32..=3,
        ops in vec(op(), 1..150),
    ) {
        run(Mode::Queue, slots, readers, writers, &ops);
    }

    #[test]
    fn held_set_block(
        shape in held_shape(),
        lossy in any::<bool>(),
        ops in vec(held_op(), 1..120),
    ) {
        run_held(Mode::Broadcast(Backpressure::Block), shape, lossy, &ops);
    }

    #[test]
    fn held_set_drop_oldest(shape in held_shape(), ops in vec(held_op(), 1..120)) {
        run_held(Mode::Broadcast(Backpressure::DropOldest), shape, false, &ops);
    }
}

/// A reader entry between its claim (the compare-and-swap in `Shared::claim_peer`) and the
/// store of its start time, as another process sees it, must not be reclaimed as dead because
/// of the start time its previous occupant left behind.
///
/// Fails today: `claim_peer` stores `start_time` (Relaxed) after the CAS that makes the entry
/// CLAIMING with the new pid, and `reclaim_dead` reads `start_time` (Relaxed) after loading
/// the state, so a liveness scan can pair the new pid with the old start time, judge the live
/// process dead and reclaim the entry; the attaching process then `activate`s it with a plain
/// store (no CAS), and the entry may meanwhile have been claimed by a third process.
#[test]
fn attaching_peer_is_not_reclaimed_with_the_previous_start_time() {
    use super::protocol::peer_state;
    let layout = Layout::compute(
        DType::U8,
        &[8],
        2,
        Mode::Broadcast(Backpressure::Block),
        1,
        1,
    )
    .unwrap();
    let s = Shared::heap(layout);
    // Process 10 (started at tick 111) attaches reader entry 0 and detaches.
    let (i, g) = s.claim_peer(Role::Reader, 10, 111).unwrap();
    s.attach_reader(i, 10, g);
    assert!(s.release_peer(i, 10, g));
    // Process 20 (started at tick 222) wins the claim CAS; its start-time store is not
    // visible yet.
    let e = s.peer(i);
    e.state.store(peer_state(20, g + 1, ps::CLAIMING), Relaxed);
    assert_eq!(
        e.start_time.load(Relaxed),
        0,
        "a freed entry keeps no start time"
    );
    // A liveness scan elsewhere, with the real rule (same pid and same start time).
    let alive = |_: usize, pid: u32, start: u64| pid == 20 && (start == 0 || start == 222);
    let mut dead = |i: usize, pid: u32, start: u64| (!alive(i, pid, start)).then_some(());
    assert_eq!(
        s.reclaim_dead(Role::Reader, None, &mut dead),
        0,
        "a live process that is attaching was reclaimed as dead"
    );
}

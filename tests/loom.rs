//! Loom models of the ring protocol (`src/ring/protocol/`) on the heap backend.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test --release --test loom`. Each model drives the
//! real index and slot-state code through `shmflow::__loom::HeapRing`, with loom's atomics.
//! Writers write the frame's sequence number into the slot's shadow payload cell while they
//! own the slot, readers read it back while they hold it: a wrong value is a frame overwritten
//! under a reader, and loom itself fails the model on any access to a shadow cell that the
//! protocol does not order (a torn frame).
//!
//! The models are kept small (a few frames, two or three slots, a preemption bound) so that
//! the whole file runs in minutes. The last two models drive a reader that holds two frames at
//! once through `shmflow::__loom::HeldReader`, the reader's held set behind a loom mutex.
//! `LOOM_MAX_PREEMPTIONS` overrides the bound for a deeper run.
#![cfg(loom)]

use std::sync::Arc;

use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use loom::thread;
use shmflow::__loom::{HeapRing, HeldFrame, HeldReader, TooManyHeld, G};

/// A model builder with a preemption bound of `bound` unless `LOOM_MAX_PREEMPTIONS` says
/// otherwise.
fn builder(bound: usize) -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(bound);
    }
    b
}

/// Broadcast writer: reserves with spin-retry, writes `seq` into the payload, commits.
fn bcast_write(ring: &HeapRing, w: usize) -> u64 {
    let g = loop {
        match ring.bcast_try_reserve(w) {
            Some(g) => break g,
            None => thread::yield_now(),
        }
    };
    ring.write_payload(g.0, g.1);
    ring.bcast_commit(w, g);
    g.1
}

/// Broadcast reader: one frame if committed; checks the payload while holding it.
fn bcast_read(ring: &HeapRing, r: usize) -> Option<G> {
    let g = ring.bcast_try_acquire(r)?;
    assert_eq!(
        ring.read_payload(g.0),
        g.1,
        "frame {} overwritten while held",
        g.1
    );
    ring.bcast_release(r, g);
    Some(g)
}

/// Lossless broadcast: 3 frames through 2 slots reach the reader in order, untorn.
#[test]
fn broadcast_block_in_order() {
    builder(4).check(|| {
        let ring = Arc::new(HeapRing::new("block", 2, 1, 1));
        let w = ring.attach_writer(1);
        let r = ring.attach_reader(2);
        let writer = {
            let ring = ring.clone();
            thread::spawn(move || {
                for expect in 0..3 {
                    assert_eq!(bcast_write(&ring, w), expect);
                }
            })
        };
        let mut next = 0;
        while next < 3 {
            match bcast_read(&ring, r) {
                Some((_, seq, extra)) => {
                    assert_eq!((seq, extra), (next, 0), "lossless reader skipped frames");
                    next += 1;
                }
                None => thread::yield_now(),
            }
        }
        writer.join().unwrap();
        assert_eq!(bcast_read(&ring, r), None, "no frame beyond the third");
    });
}

/// Live broadcast, one writer and one reader over two slots: `frames` frames, the writer
/// retrying a refused reservation (`strict`: asserting that it is never refused). The reader
/// gets strictly increasing sequences, each with its own payload, `extra` is exactly the gap
/// to its cursor, and the newest frame always arrives.
fn drop_oldest_model(frames: u64, strict: bool) {
    let ring = Arc::new(HeapRing::new("drop-oldest", 2, 1, 1));
    let w = ring.attach_writer(1);
    let r = ring.attach_reader(2);
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (ring, done) = (ring.clone(), done.clone());
        thread::spawn(move || {
            for expect in 0..frames {
                let g = loop {
                    match ring.bcast_try_reserve(w) {
                        Some(g) => break g,
                        None if strict => {
                            panic!("drop-oldest writer refused frame {expect} (1 reader, 2 slots)")
                        }
                        None => thread::yield_now(),
                    }
                };
                assert_eq!(g.1, expect);
                ring.write_payload(g.0, g.1);
                ring.bcast_commit(w, g);
            }
            done.store(true, Release);
        })
    };
    let mut cursor = 0;
    loop {
        let finished = done.load(Acquire);
        match bcast_read(&ring, r) {
            Some((_, seq, extra)) => {
                assert!(
                    seq >= cursor,
                    "sequence went back: {seq} after cursor {cursor}"
                );
                assert_eq!(extra, seq - cursor, "missed count is not the gap");
                cursor = seq + 1;
            }
            // Everything committed has been seen (or skipped) once the writer is done.
            None if finished => break,
            None => thread::yield_now(),
        }
    }
    writer.join().unwrap();
    assert_eq!(cursor, frames, "the newest frame is never dropped");
}

/// Live broadcast: order, payloads and missed counts (see [`drop_oldest_model`]).
#[test]
fn broadcast_drop_oldest_order_and_missed() {
    builder(3).check(|| drop_oldest_model(4, false));
}

/// Live broadcast: with more slots than readers the writer is never refused
/// (`TryReserveError::Full` is documented for "readers hold every slot" only).
///
/// Regression model for the pin hop: a reader whose pin loses the Dekker race against the
/// writer retries on another slot, so one pass over the slots can find each slot pinned in
/// turn while the reader holds none. With frames 0..=2 committed (slot 0 = FULL(2), slot 1 =
/// FULL(1)), writer reserving frame 3:
/// 1. the reader (cursor 0, frame 0 overwritten) pins (slot 1, seq 1); the writer marks slot 1
///    WRITING(3), sees the pin, restores FULL(1);
/// 2. the reader re-checks slot 1, finds FULL(1) again, reads and releases frame 1;
/// 3. the writer marks slot 0 WRITING(3); the reader (cursor 2) pins (slot 0, seq 2); both
///    see each other: the reader unpins and retries, the writer restores FULL(2).
///
/// With a single pass the writer then returned `Full`; it now makes several passes
/// (`PICK_PASSES`), which a reader can only defeat by racing it on every one of them.
#[test]
fn broadcast_drop_oldest_writer_never_refused() {
    builder(3).check(|| drop_oldest_model(4, true));
}

/// A reader attaching while the lossless writer runs (the Dekker handshake between
/// `Shared::attach_reader_with` and `bcast_pick_consumed`): from its first frame on it gets
/// every frame, in order, untorn, with nothing skipped.
///
/// Loom models `SeqCst` loads and stores as `AcqRel` (see loom's README): it lets the writer's
/// SeqCst load of the reader's state return the entry's initial FREE even after the reader's
/// SeqCst ACTIVE store and its SeqCst re-read of `write_seq` (which saw the old value), an
/// outcome the C++20 model forbids. The handshake is only checkable here when both sides put a
/// `fence(SeqCst)` between their store and their load (after `activate` in
/// `attach_reader_with`, before the reader scan in `bcast_pick_consumed`); without those fences
/// this model fails with "lossless reader skipped N frames before M" although the code is
/// correct under C++20.
#[test]
fn broadcast_block_attach_races_writer() {
    const FRAMES: u64 = 3;
    builder(3).check(|| {
        let ring = Arc::new(HeapRing::new("block", 2, 1, 1));
        let w = ring.attach_writer(1);
        let done = Arc::new(AtomicBool::new(false));
        let writer = {
            let (ring, done) = (ring.clone(), done.clone());
            thread::spawn(move || {
                for expect in 0..FRAMES {
                    assert_eq!(bcast_write(&ring, w), expect);
                }
                done.store(true, Release);
            })
        };
        let r = ring.attach_reader(2);
        let mut next: Option<u64> = None;
        loop {
            let finished = done.load(Acquire);
            match bcast_read(&ring, r) {
                Some((_, seq, extra)) => {
                    assert_eq!(
                        extra, 0,
                        "lossless reader skipped {extra} frames before {seq}"
                    );
                    if let Some(n) = next {
                        assert_eq!(seq, n, "lossless reader skipped frames");
                    }
                    next = Some(seq + 1);
                }
                None if finished => break,
                None => thread::yield_now(),
            }
        }
        writer.join().unwrap();
        if let Some(n) = next {
            assert_eq!(n, FRAMES, "frames after the reader's first were lost");
        }
    });
}

/// How many times a queue endpoint retries (yielding in between) before it gives up. Queue
/// models bound every loop: with two threads spinning, loom could otherwise starve a third
/// thread (the one that would let them progress) for ever and exhaust its branch budget.
/// Whatever the threads leave undone, the main thread finishes alone after joining them.
const TRIES: usize = 3;

/// Queue writer, bounded: one frame with `seq` as payload, or `None` if the ring stayed full.
fn q_try_write(ring: &HeapRing, w: usize) -> Option<u64> {
    for _ in 0..TRIES {
        if let Some(g) = ring.q_try_reserve(w) {
            ring.write_payload(g.0, g.1);
            assert!(ring.q_commit(w, g), "a live writer lost its slot");
            return Some(g.1);
        }
        thread::yield_now();
    }
    None
}

/// Queue reader, bounded: takes frames (checking each payload while holding it) until
/// `TRIES` attempts in a row find nothing; returns their sequence numbers.
fn q_try_read(ring: &HeapRing, r: usize) -> Vec<u64> {
    let mut got = Vec::new();
    let mut idle = 0;
    while idle < TRIES {
        match ring.q_try_acquire(r) {
            Some(g) => {
                assert_eq!(ring.read_payload(g.0), g.1, "queue frame {} torn", g.1);
                ring.q_release(r, g);
                got.push(g.1);
                idle = 0;
            }
            None => {
                idle += 1;
                thread::yield_now();
            }
        }
    }
    got
}

fn check_exactly_once(mut seqs: Vec<u64>, expected: &[u64]) {
    seqs.sort_unstable();
    assert_eq!(
        seqs, expected,
        "each committed frame exactly once, nothing else"
    );
}

/// Queue: two writers and two readers; every frame reaches exactly one reader, untorn. To
/// keep the model small, the second writer becomes the first reader once its frame is in.
#[test]
fn queue_two_writers_two_readers() {
    builder(2).check(|| {
        let ring = Arc::new(HeapRing::new("queue", 2, 2, 2));
        let (w1, w2) = (ring.attach_writer(1), ring.attach_writer(2));
        let (r1, r2) = (ring.attach_reader(3), ring.attach_reader(4));
        let writer = {
            let ring = ring.clone();
            thread::spawn(move || q_try_write(&ring, w1).expect("two frames fit two slots"))
        };
        let writer_reader = {
            let ring = ring.clone();
            thread::spawn(move || {
                let seq = q_try_write(&ring, w2).expect("two frames fit two slots");
                (seq, q_try_read(&ring, r1))
            })
        };
        let mut seqs = q_try_read(&ring, r2);
        let (seq2, got) = writer_reader.join().unwrap();
        seqs.extend(got);
        let seq1 = writer.join().unwrap();
        assert_eq!((seq1.min(seq2), seq1.max(seq2)), (0, 1));
        // Alone now: whatever is left must still be there.
        seqs.extend(q_try_read(&ring, r1));
        check_exactly_once(seqs, &[0, 1]);
    });
}

/// Queue: one writer puts two frames through a single slot while two readers take them; the
/// slot is reused, so a reader that releases late must never see its frame overwritten.
#[test]
fn queue_slot_reuse_two_readers() {
    builder(2).check(|| {
        let ring = Arc::new(HeapRing::new("queue", 1, 2, 1));
        let w = ring.attach_writer(1);
        let (r1, r2) = (ring.attach_reader(2), ring.attach_reader(3));
        let writer = {
            let ring = ring.clone();
            thread::spawn(move || {
                let first = q_try_write(&ring, w).expect("the slot is free");
                (first, q_try_write(&ring, w))
            })
        };
        let reader = {
            let ring = ring.clone();
            thread::spawn(move || q_try_read(&ring, r1))
        };
        let mut seqs = q_try_read(&ring, r2);
        seqs.extend(reader.join().unwrap());
        let (first, second) = writer.join().unwrap();
        assert_eq!((first, second.unwrap_or(1)), (0, 1));
        seqs.extend(q_try_read(&ring, r1));
        if second.is_none() {
            assert_eq!(q_try_write(&ring, w), Some(1), "the drained ring has room");
            seqs.extend(q_try_read(&ring, r2));
        }
        check_exactly_once(seqs, &[0, 1]);
    });
}

/// Queue: a writer reserves frame 0 and dies before committing; it is reclaimed while another
/// writer and a reader run. The reader skips sequence 0 and gets the other frames exactly
/// once (frame 2 reuses the dead writer's slot, so it needs the reclaim and the skip first).
#[test]
fn queue_killed_writer_is_skipped() {
    builder(3).check(|| {
        let ring = Arc::new(HeapRing::new("queue", 2, 1, 2));
        let (dead, live) = (ring.attach_writer(1), ring.attach_writer(2));
        let r = ring.attach_reader(3);
        let g = ring.q_try_reserve(dead).unwrap();
        assert_eq!(g.1, 0);
        ring.write_payload(g.0, 999); // half-written, never committed
        let killer = {
            let ring = ring.clone();
            thread::spawn(move || assert!(ring.kill(dead), "reclaim of a dead writer"))
        };
        let writer = {
            let ring = ring.clone();
            thread::spawn(move || {
                let first = q_try_write(&ring, live).expect("slot 1 is free");
                (first, q_try_write(&ring, live))
            })
        };
        let mut seqs = q_try_read(&ring, r);
        killer.join().unwrap();
        let (first, second) = writer.join().unwrap();
        assert_eq!((first, second.unwrap_or(2)), (1, 2));
        seqs.extend(q_try_read(&ring, r));
        if second.is_none() {
            assert_eq!(
                q_try_write(&ring, live),
                Some(2),
                "the dead writer's slot came back"
            );
            seqs.extend(q_try_read(&ring, r));
        }
        check_exactly_once(seqs, &[1, 2]);
        assert!(!ring.kill(dead), "a freed entry is not reclaimed twice");
    });
}

/// Queue: a reader dies holding frame 0 and is reclaimed while the writer wants its slot for
/// frame 1; the slot comes back (frame 0 is lost, never delivered again) and the other reader
/// gets frame 1 exactly once.
#[test]
fn queue_killed_reader_frees_its_slot() {
    builder(3).check(|| {
        let ring = Arc::new(HeapRing::new("queue", 1, 2, 1));
        let w = ring.attach_writer(1);
        let (dead, live) = (ring.attach_reader(2), ring.attach_reader(3));
        assert_eq!(q_try_write(&ring, w), Some(0));
        let held = ring.q_try_acquire(dead).unwrap();
        assert_eq!(held.1, 0);
        let killer = {
            let ring = ring.clone();
            thread::spawn(move || assert!(ring.kill(dead), "reclaim of a dead reader"))
        };
        let writer = {
            let ring = ring.clone();
            thread::spawn(move || q_try_write(&ring, w))
        };
        let mut seqs = q_try_read(&ring, live);
        killer.join().unwrap();
        let second = writer.join().unwrap();
        assert_eq!(second.unwrap_or(1), 1);
        seqs.extend(q_try_read(&ring, live));
        if second.is_none() {
            assert_eq!(
                q_try_write(&ring, w),
                Some(1),
                "the dead reader's slot came back"
            );
            seqs.extend(q_try_read(&ring, live));
        }
        check_exactly_once(seqs, &[1]);
    });
}

/// A ring with one reader that holds several frames at once ([`HeldReader`], the reader's
/// held set), and a record of what it holds: `marks[slot]` is `seq + 1` from the moment frame
/// `seq` in `slot` is received until just before it is released (0 otherwise). A writer that
/// reserves a slot whose mark is set has been handed a slot a held frame still points at:
/// the release that clears a mark happens before the cursor store or unpin that lets the
/// writer take the slot, so a correct protocol never shows the writer a set mark.
struct HeldModel {
    ring: HeapRing,
    reader: HeldReader,
    marks: Vec<AtomicU64>,
}

impl HeldModel {
    fn new(mode: &str, slots: u32, max_held: u32) -> (HeldModel, usize) {
        let ring = HeapRing::new(mode, slots, 1, 1);
        let w = ring.attach_writer(1);
        let reader = ring.attach_held_reader(2, max_held);
        let marks = (0..slots).map(|_| AtomicU64::new(0)).collect();
        (
            HeldModel {
                ring,
                reader,
                marks,
            },
            w,
        )
    }

    fn cursor(&self) -> u64 {
        self.ring.cursor(self.reader.index())
    }

    /// Receives one frame if one is committed, checks its payload and marks its slot held.
    fn hold(&self) -> Result<Option<HeldFrame>, TooManyHeld> {
        let Some(f) = self.reader.try_recv(&self.ring)? else {
            return Ok(None);
        };
        let (slot, seq, _) = f.grant;
        assert_eq!(self.ring.read_payload(slot), seq, "frame {seq} torn");
        self.marks[slot].store(seq + 1, SeqCst);
        Ok(Some(f))
    }

    /// Releases a held frame (on whatever thread this is): its payload must still be intact,
    /// and the release must not move the published cursor backwards.
    fn give_back(&self, f: HeldFrame) {
        let (slot, seq, _) = f.grant;
        assert_eq!(
            self.ring.read_payload(slot),
            seq,
            "frame {seq} overwritten while held"
        );
        let before = self.cursor();
        self.marks[slot].store(0, SeqCst);
        self.reader.release(&self.ring, f);
        let after = self.cursor();
        assert!(
            after >= before,
            "releasing frame {seq} moved the cursor back from {before} to {after}"
        );
    }

    /// Writes one frame, retrying a refused reservation `TRIES` times (`None`: still
    /// refused), asserting that the slot it gets is not marked held and that the reader's
    /// cursor, as the writer sees it, never goes back.
    fn try_write(&self, w: usize, seen: &mut u64) -> Option<u64> {
        let mut tries = 0;
        let g = loop {
            let c = self.cursor();
            assert!(
                c >= *seen,
                "the reader's cursor went back from {seen} to {c}"
            );
            *seen = c;
            match self.ring.bcast_try_reserve(w) {
                Some(g) => break g,
                None if tries == TRIES => return None,
                None => {
                    tries += 1;
                    thread::yield_now();
                }
            }
        };
        let mark = self.marks[g.0].load(SeqCst);
        assert_eq!(
            mark,
            0,
            "writer reserved slot {} for frame {} while frame {} is held there",
            g.0,
            g.1,
            mark.wrapping_sub(1)
        );
        self.ring.write_payload(g.0, g.1);
        self.ring.bcast_commit(w, g);
        Some(g.1)
    }

    /// The writer thread of both models: frames `first..frames`, each retried `TRIES` times;
    /// returns the first frame it could not write (`frames` if it wrote them all).
    fn writer(&self, w: usize, first: u64, frames: u64) -> u64 {
        let mut seen = 0;
        for expect in first..frames {
            match self.try_write(w, &mut seen) {
                Some(seq) => assert_eq!(seq, expect),
                None => return expect,
            }
        }
        frames
    }

    /// Receives, checks (`check(next, seq, extra)`) and releases frames from `next` on until
    /// `TRIES` attempts in a row get none (nothing committed, or other threads hold
    /// `max_held` frames); returns the reader's next sequence.
    fn read(&self, mut next: u64, check: impl Fn(u64, u64, u64)) -> u64 {
        let mut idle = 0;
        while idle < TRIES {
            match self.hold() {
                Ok(Some(f)) => {
                    let (_, seq, extra) = f.grant;
                    check(next, seq, extra);
                    self.give_back(f);
                    next = seq + 1;
                    idle = 0;
                }
                // Nothing committed yet, or the other threads still hold max_held frames.
                _ => {
                    idle += 1;
                    thread::yield_now();
                }
            }
        }
        next
    }

    /// Alone after the other threads are joined (nothing held elsewhere): reads what is left,
    /// writes the frames the writer thread could not (`written..frames`, each granted at
    /// once now), and reads them too (checked as in [`HeldModel::read`]); returns the
    /// reader's next sequence.
    fn finish(
        &self,
        w: usize,
        mut written: u64,
        frames: u64,
        mut next: u64,
        check: impl Fn(u64, u64, u64),
    ) -> u64 {
        let mut seen = 0;
        loop {
            while let Some(f) = self.hold().expect("nothing is held any more") {
                let (_, seq, extra) = f.grant;
                check(next, seq, extra);
                self.give_back(f);
                next = seq + 1;
            }
            if written == frames {
                return next;
            }
            assert_eq!(
                self.try_write(w, &mut seen),
                Some(written),
                "a reader that released everything leaves room"
            );
            written += 1;
        }
    }

    /// The setup of both held-frame models, on one thread before any other runs: frames 0 and
    /// 1 written and both received, so the reader holds `max_held` = 2 frames; a third
    /// receive is refused at once.
    fn hold_two(&self, w: usize) -> (HeldFrame, HeldFrame) {
        assert_eq!(
            self.writer(w, 0, 2),
            2,
            "two empty slots take frames 0 and 1"
        );
        let a = self.hold().unwrap().expect("frame 0 is committed");
        let b = self.hold().unwrap().expect("frame 1 is committed");
        assert_eq!((a.grant.1, b.grant.1), (0, 1));
        assert_eq!(
            self.hold().err(),
            Some(TooManyHeld),
            "a third frame held with max_held 2"
        );
        (a, b)
    }
}

/// Lossless broadcast, a reader holding two frames at once (max_held 2, three slots): frames
/// 0 and 1 are held and released in either order by two other threads, while the writer
/// writes frames 2..=4 and the reader receives them. The writer must wait for frame 0's
/// release before it reuses a slot (the cursor is the lowest frame held, so releasing frame 1
/// first frees nothing), never reserves a slot a held frame is in, the cursor never moves
/// backwards, and the reader gets every frame in order.
#[test]
fn broadcast_block_two_held_released_on_two_threads() {
    const FRAMES: u64 = 5;
    builder(2).check(|| {
        let (m, w) = HeldModel::new("block", 3, 2);
        let m = Arc::new(m);
        let (a, b) = m.hold_two(w);
        assert_eq!(m.cursor(), 0, "the cursor is the lowest frame held");
        let writer = {
            let m = m.clone();
            thread::spawn(move || m.writer(w, 2, FRAMES))
        };
        let releasers = [a, b].map(|f| {
            let m = m.clone();
            thread::spawn(move || m.give_back(f))
        });
        let lossless = |next: u64, seq: u64, extra: u64| {
            assert_eq!((seq, extra), (next, 0), "lossless reader skipped frames");
        };
        let next = m.read(2, lossless);
        let written = writer.join().unwrap();
        for t in releasers {
            t.join().unwrap();
        }
        assert_eq!(m.finish(w, written, FRAMES, next, lossless), FRAMES);
        assert_eq!(m.cursor(), FRAMES, "everything released");
        assert!(matches!(m.hold(), Ok(None)), "no frame beyond the last");
    });
}

/// Live (drop-oldest) broadcast, a reader pinning two frames at once (max_held 2, three
/// slots): frames 0 and 1 are pinned and released in either order by two other threads
/// (freeing pins the reader reuses for the frames it receives meanwhile), while the writer
/// writes frames 2 and 3 (frame 3's natural slot, 0, holds pinned frame 0 unless that was
/// released first). The writer never reserves a slot a pinned frame is in, the cursor
/// never moves backwards, the reader's sequences increase with `extra` the gap, and the
/// newest frame arrives.
#[test]
fn broadcast_drop_oldest_two_pinned_frames() {
    const FRAMES: u64 = 4;
    builder(2).check(|| {
        let (m, w) = HeldModel::new("drop-oldest", 3, 2);
        let m = Arc::new(m);
        let (a, b) = m.hold_two(w);
        let writer = {
            let m = m.clone();
            thread::spawn(move || m.writer(w, 2, FRAMES))
        };
        let releasers = [a, b].map(|f| {
            let m = m.clone();
            thread::spawn(move || m.give_back(f))
        });
        let live = |next: u64, seq: u64, extra: u64| {
            assert!(seq >= next, "sequence went back: {seq} after {next}");
            assert_eq!(extra, seq - next, "missed count is not the gap");
        };
        let next = m.read(2, live);
        let written = writer.join().unwrap();
        for t in releasers {
            t.join().unwrap();
        }
        let next = m.finish(w, written, FRAMES, next, live);
        assert_eq!(next, FRAMES, "the newest frame is never dropped");
        assert_eq!(m.cursor(), FRAMES);
    });
}

//! Loom models of the ring protocol (`src/ring/protocol/`) on the heap backend.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test --release --test loom`. Each model drives the
//! real index and slot-state code through `shmflow::__loom::HeapRing`, with loom's atomics.
//! Writers write the frame's sequence number into the slot's shadow payload cell while they
//! own the slot, readers read it back while they hold it: a wrong value is a frame overwritten
//! under a reader, and loom itself fails the model on any access to a shadow cell that the
//! protocol does not order (a torn frame).
//!
//! The models are kept small (a few frames, two slots, a preemption bound) so that the whole
//! file runs in minutes. `LOOM_MAX_PREEMPTIONS` overrides the bound for a deeper run.
#![cfg(loom)]

use std::sync::Arc;

use loom::sync::atomic::{AtomicBool, Ordering::*};
use loom::thread;
use shmflow::__loom::{HeapRing, G};

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

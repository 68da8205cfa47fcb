//! Unit tests of the protocol on the heap backend.

use super::*;
use crate::array::DType;
use crate::primitive::Ordering::*;
use crate::ring::layout::{Backpressure, Layout};

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

/// PROTOCOL.md's known issue of the first v3 draft: a writer whose attach failed (its entry
/// was reclaimed while it attached) still cleared `died_writer` and counted as an attach, so
/// readers of a stream whose writer had died were told it ended cleanly.
#[test]
fn failed_writer_attach_keeps_the_death_on_record() {
    let s = ring(Mode::Queue, 2, 1, 2);
    let w1 = writer(&s);
    let state = s.peer(w1).state.load(Relaxed);
    assert!(s.reclaim(w1, state));
    assert!(matches!(s.writers(), Writers::Died { pid: 1, .. }));
    let attaches = s.control().writer_attaches.load(Relaxed);
    // A second writer claims an entry, and is reclaimed (taken for dead) before it activates.
    let (w2, g2) = s.claim_peer(Role::Writer, 9, 0).unwrap();
    let claiming = s.peer(w2).state.load(Relaxed);
    assert!(s.reclaim(w2, claiming));
    assert!(!s.attach_writer(w2, 9, g2), "the attach must fail");
    assert!(
        matches!(s.writers(), Writers::Died { .. }),
        "the failed attach erased the first writer's death: {:?}",
        s.writers()
    );
    assert_eq!(s.control().writer_attaches.load(Relaxed), attaches);
}

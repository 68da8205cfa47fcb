//! Reclaiming against real segments, where the interleavings of two reclaimers and a
//! newcomer can be staged by hand (the protocol's own tests run on the heap backend, which
//! has no locks).

use std::cell::RefCell;

use super::liveness::take_dead;
use super::protocol::{peer_state, peer_status, ps, Role, FLAG_READY};
use super::{Backpressure, Mode, Ring};
use crate::primitive::Ordering::*;

fn ring(tag: &str) -> Ring<u8> {
    let name = format!("t-unit-{tag}-{}", std::process::id());
    let _ = Ring::<u8>::remove(&name);
    Ring::<u8>::create(&name)
        .shape([64])
        .slots(4)
        .mode(Mode::Broadcast(Backpressure::Block))
        .max_readers(1)
        .build()
        .expect("create the ring")
}

/// PROTOCOL.md's known issue 7 of the first v3 draft: a reclaimer that tested the lock while
/// another one was at work went on after that one had finished and a new reader had taken the
/// entry, and cleared the newcomer's pins and flags (its pinned frame could then be
/// overwritten under it). Now the first reclaimer holds the entry's lock while it works, so
/// the late one finds the peer alive and leaves the entry alone.
#[test]
fn late_reclaimer_leaves_the_entrys_next_occupant_alone() {
    let ring = ring("late-reclaimer");
    let shared = &ring.inner.shared;
    // A reader entry whose process is gone: taken without its lock, so the lock test says
    // dead.
    let (i, generation) = shared.claim_peer(Role::Reader, 4_000_000, 0).unwrap();
    assert_eq!(i, 0, "the ring's only reader entry (so C gets it too)");
    assert!(shared.activate(i, 4_000_000, generation));
    // Reclaimer A finds it dead and starts: it holds the lock and marks the entry RECLAIMING.
    let a = take_dead(shared, i).expect("the entry's lock is free: its owner is dead");
    let observed = shared.peer(i).state.load(SeqCst);
    let reclaiming = peer_state(4_000_000, generation, ps::RECLAIMING);
    shared
        .peer(i)
        .state
        .compare_exchange(observed, reclaiming, SeqCst, SeqCst)
        .unwrap();

    // Reclaimer B tests the entry while A is at work. Between its test and its work, A
    // finishes and a lossy reader C attaches to the entry and holds (pins) a frame.
    let mut writer = ring.writer().unwrap();
    let held = RefCell::new(None);
    let a = RefCell::new(Some(a));
    let mut b_test = |j: usize, _pid: u32, _start: u64| {
        let verdict = take_dead(shared, j);
        if let Some(a) = a.borrow_mut().take() {
            assert!(shared.reclaim(i, reclaiming), "A finishes");
            drop(a);
            let mut c = ring.lossy_reader().expect("C takes the freed entry");
            writer.send(&ndarray::arr1(&[7u8; 64]).into_dyn()).unwrap();
            let frame = c.try_recv().expect("C holds the new frame");
            *held.borrow_mut() = Some((c, frame));
        }
        verdict
    };
    let n = shared.reclaim_dead(Role::Reader, None, &mut b_test);

    assert_eq!(n, 0, "B reclaimed a live reader");
    let e = shared.peer(i);
    assert_eq!(peer_status(e.state.load(SeqCst)), ps::ACTIVE);
    assert_ne!(
        e.pins[0].load(SeqCst),
        0,
        "C's pin was cleared under its frame"
    );
    assert_ne!(
        e.flags.load(SeqCst) & FLAG_READY,
        0,
        "C's READY flag was cleared"
    );
    let (c, frame) = held.into_inner().unwrap();
    assert_eq!(frame.as_slice(), &[7u8; 64]);
    drop(frame);
    drop(c);
}

/// A reclaimer that died at work leaves its entry RECLAIMING and its lock free: the next one
/// finishes the job.
#[test]
fn entry_left_reclaiming_by_a_dead_reclaimer_is_finished() {
    let ring = ring("dead-reclaimer");
    let shared = &ring.inner.shared;
    let (i, generation) = shared.claim_peer(Role::Reader, 4_000_001, 0).unwrap();
    assert!(shared.activate(i, 4_000_001, generation));
    let observed = shared.peer(i).state.load(SeqCst);
    shared
        .peer(i)
        .state
        .compare_exchange(
            observed,
            peer_state(4_000_001, generation, ps::RECLAIMING),
            SeqCst,
            SeqCst,
        )
        .unwrap();
    assert_eq!(ring.reclaim_dead_peers(), 1);
    assert_eq!(peer_status(shared.peer(i).state.load(SeqCst)), ps::FREE);
    let _r = ring.reader().expect("the entry is usable again");
}

/// `shmflow gc` removed a ring whose creator was dead while a reader was still attaching (a
/// claimed entry, or a reader before its handshake, is not listed among the readers): such
/// peers are now counted in `RingStatus::attaching`, and gc leaves the ring alone.
#[test]
fn gc_counts_attaching_peers_as_users() {
    let ring = ring("attaching");
    let shared = &ring.inner.shared;
    assert_eq!(ring.status().attaching, 0);
    // A live process (this one: it holds the entry's lock) has claimed entry 0.
    let lock =
        super::liveness::PeerLock::take(shared.segment().unwrap(), super::liveness::LOCK_BASE)
            .unwrap()
            .unwrap();
    let (i, generation) = shared
        .claim_peer(Role::Reader, std::process::id(), 0)
        .unwrap();
    assert_eq!(ring.status().attaching, 1, "a claimed entry is a user");
    assert!(ring.status().readers.is_empty());
    // Active but before the handshake.
    assert!(shared.activate(i, std::process::id(), generation));
    assert_eq!(
        ring.status().attaching,
        1,
        "a reader before READY is a user"
    );
    assert!(shared.release_peer(i, std::process::id(), generation));
    drop(lock);
    assert_eq!(ring.status().attaching, 0);
}

//! Regression tests for the findings of "Ring protocol v3" (issue 10), one or more per
//! finding, each named after it: endpoints bound to their process, owned frame guards, liveness
//! the kernel vouches for (locks and the writer FIFO, right across pid namespaces), writer death
//! told apart from a clean end, and the protocol details an independent implementation found.
//! Every peer is a real process: forked, re-executed, or the `shmflow` command in another pid
//! namespace.

mod common;

#[cfg(not(shmflow_no_doorbell))]
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use common::*;
use shmflow::{
    AttachError, Backpressure, Mode, RecvError, RecvTimeoutError, ReserveTimeoutError, Ring,
    SendError, TryRecvError, TryReserveError,
};

const FRAME: usize = 1024;
const LIVENESS: Duration = Duration::from_millis(50);
/// Bound for "does not hang" (a dead peer must be noticed well within this).
const BOUND: Duration = Duration::from_secs(10);
const BLOCK: Mode = Mode::Broadcast(Backpressure::Block);
const DROP_OLDEST: Mode = Mode::Broadcast(Backpressure::DropOldest);

/// Peer table of the segment: entries of 256 bytes from offset 4096, readers first.
const PEERS_OFFSET: usize = 4096;
const PEER_STRIDE: usize = 256;
/// Control block: the count of armed or sleeping readers.
const READER_WAITERS: usize = 384;

fn segment_u64(name: &str, at: usize) -> u64 {
    let b = std::fs::read(shm_path(name)).unwrap();
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn segment_u32(name: &str, at: usize) -> u32 {
    let b = std::fs::read(shm_path(name)).unwrap();
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn block_ring(name: &str, slots: u32) -> Ring<u8> {
    Ring::<u8>::create(name)
        .shape([FRAME])
        .slots(slots)
        .mode(BLOCK)
        .build()
        .unwrap()
}

fn write_frame(w: &mut shmflow::Writer<u8>) -> u64 {
    let mut s = w.reserve_timeout(BOUND).expect("a free slot");
    let seq = s.seq();
    fill(seq, s.as_mut_bytes());
    s.commit()
}

/// Waits until the ring lists `n` readers that finished attaching.
fn wait_readers(ring: &Ring<u8>, n: usize) {
    let t = Instant::now();
    while ring.status().readers.len() < n {
        assert!(t.elapsed() < BOUND, "{n} reader(s) did not attach");
        std::thread::sleep(Duration::from_millis(2));
    }
}

// ------------------------------------------------------------------------------- finding 1

/// Finding 1: a `Reader` moved into a forked child (as into a `Backend` or a pool closure).
/// The parent's copy is dropped at the fork (it detaches, as the owner may); the child's copy
/// must not read: on v2 it went on reading an entry nobody protected any more, and a lossless
/// writer overwrote the frames under its views.
#[test]
fn finding1_reader_moved_into_forked_child_refuses_to_read() {
    let name = unique_name("v3-f1-moved");
    let _g = RingGuard(name.clone());
    let ring = block_ring(&name, 2);
    let mut w = ring.writer().unwrap();
    let r = ring.reader().unwrap();
    let parent = std::process::id();
    write_frame(&mut w);
    let child = fork_child(move || {
        let mut r = r;
        let refused = matches!(r.recv(), Err(RecvError::WrongProcess { owner }) if owner == parent)
            && matches!(r.try_recv(), Err(TryRecvError::WrongProcess { .. }))
            && matches!(
                r.recv_timeout(Duration::from_millis(10)),
                Err(RecvTimeoutError::WrongProcess { .. })
            );
        // The message says what to do.
        let told = r
            .recv()
            .unwrap_err()
            .to_string()
            .contains("open the ring after the fork");
        if refused && told {
            0
        } else {
            3
        }
    });
    // `fork_child` dropped the closure, and with it the parent's reader: it detached.
    assert!(ring.status().readers.is_empty(), "{:?}", ring.status());
    child.join_ok();
}

/// Finding 1, the other half: a child dropping an inherited reader (and writer, and ring
/// handle) leaves the parent's entries alone; the parent reads on, the writer still waits for it.
#[test]
fn finding1_child_dropping_an_inherited_reader_keeps_the_parents_entry() {
    let name = unique_name("v3-f1-drop");
    let _g = RingGuard(name.clone());
    let ring = block_ring(&name, 2);
    let mut w = Some(ring.writer().unwrap());
    let mut r = Some(ring.reader().unwrap());
    let mut handle = Some(ring.clone());
    write_frame(w.as_mut().unwrap());
    let child = fork_child(|| {
        // The child's memory is a copy: taking these leaves the parent's in place.
        drop(r.take());
        drop(w.take());
        drop(handle.take());
        0
    });
    child.join_ok();
    let st = ring.status();
    assert_eq!((st.readers.len(), st.writers.len()), (1, 1), "{st:?}");
    let (w, r) = (w.as_mut().unwrap(), r.as_mut().unwrap());
    write_frame(w);
    // Lossless, 2 slots, the reader has read nothing: the writer must wait for it.
    assert!(matches!(w.try_reserve(), Err(TryReserveError::Full)));
    for seq in 0..2 {
        let f = r.recv_timeout(BOUND).unwrap();
        assert_eq!(f.seq(), seq);
        assert!(check(seq, f.as_bytes()));
    }
    assert!(shm_path(&name).exists(), "the child unlinked the segment");
    drop(handle);
}

// ------------------------------------------------------------------------------- finding 2

/// Finding 2: a `Ring` handle carried into a child attached there under the parent's pid, so
/// the child, SIGKILLed holding a frame, was never reclaimed. Now the handle refuses to attach
/// in the child; a child that opens the ring itself and is killed is reclaimed at once.
#[test]
fn finding2_ring_handle_carried_into_child_cannot_attach_and_killed_child_is_reclaimed() {
    let name = unique_name("v3-f2");
    let _g = RingGuard(name.clone());
    const SLOTS: u32 = 2;
    let ring = block_ring(&name, SLOTS);
    let mut w = ring.writer().unwrap();
    w.set_liveness_interval(LIVENESS);
    let parent = std::process::id();
    let sig = Pipe::new();
    let victim = fork_child(|| {
        let inherited = matches!(ring.reader(), Err(AttachError::WrongProcess { owner }) if owner == parent)
            && matches!(ring.writer(), Err(AttachError::WrongProcess { .. }))
            && matches!(
                ring.attach_reader().max_held(1).attach(),
                Err(AttachError::WrongProcess { .. })
            );
        if !inherited {
            sig.send(b'X');
            return 3;
        }
        // Opened in the child: attaches under the child's own identity.
        let own = Ring::<u8>::open(&name).unwrap();
        let mut r = own.reader().unwrap();
        sig.send(b'A');
        let held = r.recv();
        sig.send(if matches!(&held, Ok(f) if f.seq() == 0) {
            b'H'
        } else {
            b'X'
        });
        sleep_forever();
    });
    sig.expect(b'A');
    kill_holder_then_reclaim(
        &ring,
        &mut w,
        &sig,
        victim,
        "the killed child was not reclaimed",
    );
}

/// `victim`, a forked reader of the lossless `ring`, says `H` once it holds frame 0: the
/// writer fills the ring, is refused the victim's slot, and after a SIGKILL the victim is
/// reclaimed at once (`why` if not) and the slot is free again.
fn kill_holder_then_reclaim(
    ring: &Ring<u8>,
    w: &mut shmflow::Writer<u8>,
    sig: &Pipe,
    victim: Child,
    why: &str,
) {
    write_frame(w);
    sig.expect(b'H');
    for _ in 1..ring.info().slots {
        write_frame(w);
    }
    // The victim holds frame 0: the lossless writer may not reuse its slot.
    assert!(matches!(w.try_reserve(), Err(TryReserveError::Full)));
    assert!(ring.status().readers.iter().all(|p| p.alive));
    kill_and_reap(victim);
    assert_eq!(ring.reclaim_dead_peers(), 1, "{why}");
    assert!(ring.status().readers.is_empty());
    drop(
        w.reserve_timeout(BOUND)
            .expect("the dead reader's slot is free"),
    );
}

/// Liveness by lock: a child forked by user code (not through shmflow) inherits the endpoint's
/// descriptors; it must not keep its dead parent's reader alive (the lock belongs to the open
/// file description, which the child would share). shmflow closes those descriptors in every
/// forked child.
#[test]
fn an_inherited_descriptor_in_a_grandchild_does_not_keep_a_dead_reader_alive() {
    let name = unique_name("v3-grandchild");
    let _g = RingGuard(name.clone());
    const SLOTS: u32 = 2;
    let ring = block_ring(&name, SLOTS);
    let mut w = ring.writer().unwrap();
    let sig = Pipe::new();
    let victim = fork_child(|| {
        let own = Ring::<u8>::open(&name).unwrap();
        let mut r = own.reader().unwrap();
        let held = r.recv_timeout(BOUND);
        let ok = held.is_ok();
        // SAFETY: the grandchild only writes a byte, sleeps and `_exit`s (async-signal-safe
        // calls).
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // The grandchild says `H`: once fork has returned here, shmflow's fork handler has
            // closed the inherited descriptors (were the victim to say it, the parent could
            // kill and reclaim before the grandchild's handler ran, and see the lock held).
            sig.send(if ok { b'H' } else { b'X' });
            // SAFETY: as above.
            unsafe {
                libc::sleep(8);
                libc::_exit(0)
            };
        }
        if pid < 0 {
            sig.send(b'X');
        }
        sleep_forever();
    });
    wait_readers(&ring, 1);
    // The grandchild still runs (it sleeps 8 s) and holds copies of the victim's fds.
    kill_holder_then_reclaim(
        &ring,
        &mut w,
        &sig,
        victim,
        "the grandchild's inherited fd kept the dead reader's lock",
    );
}

// ------------------------------------------------------------------------------- finding 3

/// Finding 3: `recv(); drop(frame); skip_to_latest(); recv()` on a lossless reader released
/// the dropped frame lazily, after the skip, moving the cursor back below what the writer had
/// judged free. Guards now release when they drop, and no call moves a cursor backwards.
#[test]
fn finding3_skip_to_latest_after_drop_never_moves_the_cursor_back() {
    let name = unique_name("v3-f3");
    let _g = RingGuard(name.clone());
    const SLOTS: u64 = 4;
    let ring = block_ring(&name, SLOTS as u32);
    let mut w = ring.writer().unwrap();
    let mut r = ring.reader().unwrap();
    let cursor = || ring.status().readers[0].cursor;
    write_frame(&mut w);
    let f = r.recv().unwrap();
    assert_eq!(f.seq(), 0);
    assert_eq!(
        cursor(),
        0,
        "a lossless reader's cursor stays on the frame it holds"
    );
    drop(f);
    assert_eq!(cursor(), 1, "the drop released frame 0 at once");
    write_frame(&mut w);
    write_frame(&mut w);
    assert_eq!(r.skip_to_latest(), 2);
    assert_eq!(cursor(), 3);
    // The writer may now fill SLOTS frames past the cursor, and not one more.
    for _ in 0..SLOTS {
        write_frame(&mut w);
    }
    assert!(matches!(w.try_reserve(), Err(TryReserveError::Full)));
    let mut last = cursor();
    for want in 3..3 + SLOTS {
        let f = r.recv().unwrap();
        assert_eq!(f.seq(), want, "the reader went back");
        assert!(check(want, f.as_bytes()), "frame {want} torn");
        assert!(cursor() >= last);
        last = cursor();
    }
}

/// Finding 3 with several frames held: `recv_latest` jumps to the newest frame, the held ones
/// stay intact and keep the writer off their slots until each is dropped.
#[test]
fn finding3_recv_latest_with_frames_held_keeps_them_and_moves_forward() {
    let name = unique_name("v3-f3-held");
    let _g = RingGuard(name.clone());
    let ring = block_ring(&name, 4);
    let mut w = ring.writer().unwrap();
    let mut r = ring.attach_reader().max_held(2).attach().unwrap();
    for _ in 0..3 {
        write_frame(&mut w);
    }
    let a = r.recv().unwrap();
    let b = r.recv_latest().unwrap();
    assert_eq!((a.seq(), b.seq()), (0, 2));
    assert_eq!(r.held(), 2);
    // One more frame fits (slot of 3); then the writer waits for frame 0, the oldest held.
    write_frame(&mut w);
    assert!(matches!(w.try_reserve(), Err(TryReserveError::Full)));
    drop(b);
    assert!(matches!(w.try_reserve(), Err(TryReserveError::Full)));
    assert!(check(0, a.as_bytes()));
    drop(a);
    write_frame(&mut w);
    let f = r.recv().unwrap();
    assert_eq!(f.seq(), 3, "after recv_latest, the next frame is past it");
}

/// Polls `fd` for readability, at most `timeout`.
#[cfg(not(shmflow_no_doorbell))]
fn poll_readable(fd: std::os::fd::BorrowedFd<'_>, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as i32) };
    n == 1
}

/// Finding 5: a reader driven only by its fd (as in a tokio `AsyncFd`) hung for ever when the
/// writer was SIGKILLed: nothing made the fd readable. The writer's end of the ring's FIFO
/// closes with the process, so the fd wakes, and `try_recv` then reports `WriterDied`; a clean
/// detach wakes it too and reports `Disconnected`.
/// (Readers have no fd when built with `--cfg shmflow_no_doorbell`.)
#[cfg(not(shmflow_no_doorbell))]
#[test]
fn finding5_fd_only_reader_wakes_when_the_writer_is_killed() {
    for killed in [true, false] {
        let name = unique_name("v3-f5-fd");
        let _g = RingGuard(name.clone());
        let ring = block_ring(&name, 4);
        let mut r = ring.reader().unwrap();
        let sig = Pipe::new();
        let go = Pipe::new();
        let writer = fork_child(|| {
            let ring = Ring::<u8>::open(&name).unwrap();
            let mut w = ring.writer().unwrap();
            write_frame(&mut w);
            sig.send(b'W');
            if killed {
                sleep_forever();
            }
            // Wait for the parent's go before detaching.
            let _ = go.recv(BOUND);
            0
        });
        sig.expect(b'W');
        // Only try_recv and poll, as an event loop does.
        let mut got = Vec::new();
        let mut ended = None;
        let t = Instant::now();
        let mut stop_writer = Some(writer);
        while ended.is_none() {
            assert!(t.elapsed() < BOUND * 2, "the fd never reported the end");
            match r.try_recv() {
                Ok(f) => got.push(f.seq()),
                Err(TryRecvError::Empty) => {
                    if let Some(w) = stop_writer.take() {
                        if killed {
                            kill_and_reap(w);
                        } else {
                            go.send(b'G');
                            w.join_ok();
                        }
                    }
                    // Wait on the fd alone, for longer than the test's bound: only the
                    // writer's end may wake it.
                    assert!(
                        poll_readable(r.as_fd(), BOUND),
                        "the reader's fd did not wake (killed: {killed})"
                    );
                }
                Err(e) => ended = Some(e),
            }
        }
        assert_eq!(got, vec![0]);
        if killed {
            assert!(
                matches!(ended, Some(TryRecvError::WriterDied { frames: 1, .. })),
                "{ended:?}"
            );
        } else {
            assert_eq!(ended, Some(TryRecvError::Disconnected));
        }
    }
}

/// Finding 5 (status): `Ring::status` says the last writer died, with its pid and frame count.
#[test]
fn finding5_status_reports_the_dead_writer() {
    let name = unique_name("v3-f5-status");
    let _g = RingGuard(name.clone());
    let ring = block_ring(&name, 4);
    let sig = Pipe::new();
    let writer = fork_child(|| {
        let ring = Ring::<u8>::open(&name).unwrap();
        let mut w = ring.writer().unwrap();
        write_frame(&mut w);
        write_frame(&mut w);
        sig.send(b'W');
        sleep_forever();
    });
    sig.expect(b'W');
    let pid = writer.pid as u32;
    assert_eq!(ring.status().writer_died, None);
    kill_and_reap(writer);
    assert_eq!(ring.reclaim_dead_peers(), 1);
    let d = ring.status().writer_died.expect("writer_died");
    assert_eq!((d.pid, d.frames), (pid, 2));
    // A new writer attaching clears it.
    let _w = ring.writer().unwrap();
    assert_eq!(ring.status().writer_died, None);
}

/// Finding 5, several writers (queue): one is killed, another goes on and then detaches
/// cleanly. The stream ended cleanly, so readers get `Disconnected`, not the first writer's
/// death (`died_writer` was cleared only when a writer attached).
#[test]
fn finding5_a_clean_last_writer_ends_the_stream_cleanly_after_another_died() {
    let name = unique_name("v3-f5-two");
    let _g = RingGuard(name.clone());
    let ring = Ring::<u8>::create(&name)
        .shape([FRAME])
        .slots(4)
        .mode(Mode::Queue)
        .max_writers(2)
        .build()
        .unwrap();
    let mut r = ring.reader().unwrap();
    r.set_liveness_interval(LIVENESS);
    let mut survivor = ring.writer().unwrap();
    let sig = Pipe::new();
    let victim = fork_child(|| {
        let ring = Ring::<u8>::open(&name).unwrap();
        let mut w = ring.writer().unwrap();
        write_frame(&mut w);
        sig.send(b'W');
        sleep_forever();
    });
    sig.expect(b'W');
    kill_and_reap(victim);
    assert_eq!(ring.reclaim_dead_peers(), 1);
    write_frame(&mut survivor);
    drop(survivor);
    assert_eq!(ring.status().writer_died, None);
    let mut got = 0;
    loop {
        match r.recv_timeout(BOUND) {
            Ok(_) => got += 1,
            Err(RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(got, 2);
}

// ------------------------------------------------------------------------------- finding 6

/// Finding 6: `Writer::send` panicked on a shape mismatch. It is an error now, found before a
/// slot is reserved: nothing is committed or abandoned, and the writer goes on.
#[test]
fn finding6_send_with_a_wrong_shape_is_an_error_not_a_panic() {
    let name = unique_name("v3-f6");
    let _g = RingGuard(name.clone());
    let ring = Ring::<u8>::create(&name)
        .shape([4, 8])
        .slots(2)
        .mode(Mode::Queue)
        .build()
        .unwrap();
    let mut w = ring.writer().unwrap();
    let mut r = ring.reader().unwrap();
    for bad in [vec![5usize, 8], vec![4, 9], vec![32], vec![1, 4, 8]] {
        let a = ndarray::ArrayD::<u8>::zeros(bad.clone());
        match w.send(&a) {
            Err(SendError::Shape(e)) => assert!(!e.to_string().is_empty()),
            other => panic!("shape {bad:?}: {other:?}"),
        }
    }
    assert_eq!(w.frames_written(), 0);
    assert_eq!(ring.status().abandoned, 0);
    let a = ndarray::ArrayD::<u8>::from_elem(vec![2, 8], 7);
    assert_eq!(w.send(&a).unwrap(), 0);
    let f = r.try_recv().unwrap();
    assert_eq!((f.seq(), f.shape()), (0, &[2usize, 8][..]));
    assert!(f.as_slice().iter().all(|&x| x == 7));
}

// ------------------------------------------------------------------------------- finding 7

/// Finding 7: the pin encoding `(slot + 1) << 48` overflowed for slot 65535 of a 65536-slot
/// ring. A drop-oldest reader holds the frame in that slot while the writer comes round to it
/// and past it; the frame stays intact.
#[test]
fn finding7_pin_of_slot_65535_protects_the_frame() {
    const SLOTS: u64 = 1 << 16;
    let name = unique_name("v3-f7-pin");
    let _g = RingGuard(name.clone());
    let ring = Ring::<u8>::create(&name)
        .shape([8])
        .slots(SLOTS as u32)
        .mode(DROP_OLDEST)
        .build()
        .unwrap();
    let mut w = ring.writer().unwrap();
    let mut r = ring.reader().unwrap();
    let put = |w: &mut shmflow::Writer<u8>| {
        let mut s = w.try_reserve().expect("drop-oldest never waits");
        let seq = s.seq();
        s.as_mut_bytes().copy_from_slice(&seq.to_le_bytes());
        s.commit();
    };
    for _ in 0..SLOTS {
        put(&mut w);
    }
    let f = r.recv_latest().unwrap();
    assert_eq!(f.seq(), SLOTS - 1);
    // The writer comes round to slot 65535 after SLOTS - 1 frames; it must skip it then and
    // on the frames after.
    for _ in 0..SLOTS + 64 {
        put(&mut w);
        assert_eq!(
            f.as_bytes(),
            &(SLOTS - 1).to_le_bytes(),
            "held frame overwritten"
        );
    }
    assert_eq!(w.frames_written(), 2 * SLOTS + 64);
}

/// Finding 7: detach did not clear SLEEPING/ARMED nor the waiter count (a reader that armed its
/// fd and left kept `reader_waiters` at 1), and freed entries kept their start time.
#[test]
fn finding7_detach_clears_flags_waiter_count_and_start_time() {
    let name = unique_name("v3-f7-detach");
    let _g = RingGuard(name.clone());
    let ring = block_ring(&name, 4);
    let _w = ring.writer().unwrap();
    let mut r = ring.reader().unwrap();
    let entry = PEERS_OFFSET + PEER_STRIDE * r_index(&ring);
    assert_ne!(
        segment_u64(&name, entry + 8),
        0,
        "an attached reader has a start time"
    );
    // `Empty` arms the reader's fd: it counts as a waiter (readers have no fd without the
    // doorbell).
    assert!(matches!(r.try_recv(), Err(TryRecvError::Empty)));
    #[cfg(not(shmflow_no_doorbell))]
    {
        assert_eq!(segment_u64(&name, READER_WAITERS), 1);
        assert_ne!(segment_u32(&name, entry + 24) & 2, 0, "ARMED");
    }
    drop(r);
    assert_eq!(
        segment_u64(&name, READER_WAITERS),
        0,
        "waiter count left behind"
    );
    assert_eq!(segment_u32(&name, entry + 24), 0, "flags left behind");
    assert_eq!(segment_u64(&name, entry + 8), 0, "start time left behind");
    assert_eq!(segment_u64(&name, entry) & 0xFF, 0, "entry not FREE");
}

fn r_index(ring: &Ring<u8>) -> usize {
    let st = ring.status();
    assert_eq!(st.readers.len(), 1);
    st.readers[0].index
}

// ---------------------------------------------------------------------------- owned guards

/// `max_held`: one `recv` more than the reader may hold is an immediate error that says so,
/// never a wait (a 30 s timeout would have ended in `Timeout`).
#[test]
fn max_held_exceeded_is_an_immediate_error() {
    let name = unique_name("v3-held");
    let _g = RingGuard(name.clone());
    let ring = block_ring(&name, 4);
    let mut w = ring.writer().unwrap();
    let mut r = ring.attach_reader().max_held(2).attach().unwrap();
    for _ in 0..3 {
        write_frame(&mut w);
    }
    let a = r.recv().unwrap();
    let b = r.recv().unwrap();
    match r.recv_timeout(Duration::from_secs(30)) {
        Err(RecvTimeoutError::TooManyHeld { max_held: 2 }) => {}
        other => panic!("{:?}", other.map(|f| f.seq())),
    }
    assert!(matches!(r.recv(), Err(RecvError::TooManyHeld { .. })));
    let msg = r.try_recv().unwrap_err().to_string();
    assert!(
        msg.contains("max_held") && msg.contains("drop a frame"),
        "{msg}"
    );
    assert_eq!(ring.status().readers[0].held, 2);
    drop(a);
    assert_eq!(r.recv().unwrap().seq(), 2);
    drop(b);
    // Limits checked at attach.
    assert!(ring.attach_reader().max_held(0).attach().is_err());
    assert!(ring.attach_reader().max_held(4).attach().is_err());
}

/// Guards own their claim: a frame moves to another thread and is released there, a write slot
/// is filled and committed on another thread.
#[test]
fn guards_move_to_other_threads() {
    fn is_send<T: Send>(_: &T) {}
    let name = unique_name("v3-send");
    let _g = RingGuard(name.clone());
    let ring = block_ring(&name, 2);
    let mut w = ring.writer().unwrap();
    let mut r = ring.reader().unwrap();
    let slot = w.reserve().unwrap();
    is_send(&slot);
    let seq = std::thread::spawn(move || {
        let mut slot = slot;
        let seq = slot.seq();
        fill(seq, slot.as_mut_bytes());
        slot.commit()
    })
    .join()
    .unwrap();
    let f = r.recv().unwrap();
    is_send(&f);
    assert_eq!(f.seq(), seq);
    let ok = std::thread::spawn(move || check(f.seq(), f.as_bytes()))
        .join()
        .unwrap();
    assert!(ok);
    // Released on the other thread: the reader may take the next frame.
    write_frame(&mut w);
    assert_eq!(r.recv().unwrap().seq(), 1);
}

/// A write slot dropped uncommitted (or a writer whose slot is still alive) loses nothing: a
/// second reserve while one is alive is `AlreadyReserved`; the dropped one is not delivered.
#[test]
fn a_second_reserve_while_a_slot_lives_is_already_reserved() {
    let name = unique_name("v3-reserve");
    let _g = RingGuard(name.clone());
    let ring = block_ring(&name, 2);
    let mut w = ring.writer().unwrap();
    let mut r = ring.reader().unwrap();
    let s = w.reserve().unwrap();
    assert!(matches!(
        w.reserve_timeout(Duration::from_secs(30)),
        Err(ReserveTimeoutError::AlreadyReserved)
    ));
    drop(s);
    assert!(matches!(r.try_recv(), Err(TryRecvError::Empty)));
    write_frame(&mut w);
    let f = r.try_recv().unwrap();
    assert!(check(f.seq(), f.as_bytes()));
}

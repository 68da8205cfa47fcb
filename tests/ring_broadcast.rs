//! Broadcast rings between real processes: every reader sees every frame (lossless), a slow
//! reader holds a lossless writer back without losing frames, a drop-oldest writer never waits
//! and never tears a frame while readers account exactly for what they missed, and readers
//! attach and detach while the writer runs.
//!
//! Frames are 64×64 `u8`, filled with `common::fill(seq, ..)` and verified with
//! `common::check(seq, ..)`, so any torn or misplaced frame shows up as a checksum failure.

mod common;

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use common::*;
use shmflow::{Backpressure, Mode, Reader, RecvTimeoutError, Ring, TryReserveError};

const SHAPE: [usize; 2] = [64, 64];
/// Generous bound for anything that should happen promptly ("does not hang").
const PATIENCE: Duration = Duration::from_secs(20);

fn tag_of(seq: u64) -> u64 {
    seq ^ 0x5EED_0000_0000_0000
}

// ------------------------------------------------------------------ helpers

fn make_ring(name: &str, bp: Backpressure, slots: u32, readers: u32) -> Ring<u8> {
    Ring::<u8>::create(name)
        .shape(SHAPE)
        .slots(slots)
        .mode(Mode::Broadcast(bp))
        .max_readers(readers)
        .build()
        .unwrap()
}

/// Waits until `n` reader processes have counted themselves in `ready` (each does so once its
/// `Ring::reader` call has returned: a broadcast reader only sees frames committed after that,
/// so the writer must not start before).
fn wait_attached(ready: &AtomicU64, n: u64) {
    wait_until(&format!("{n} readers to attach"), PATIENCE, || {
        ready.load(SeqCst) >= n
    });
}

fn write_frame(slot: &mut shmflow::WriteSlot<u8>) {
    let seq = slot.seq();
    fill(seq, slot.as_mut_bytes());
    slot.set_tag(tag_of(seq));
}

/// Checks one received frame's shape, tag and contents.
fn check_frame(who: &str, f: &shmflow::ReadSlot<u8>) {
    assert_eq!(f.shape(), &SHAPE[..], "{who}: frame {} shape", f.seq());
    assert_eq!(f.tag(), tag_of(f.seq()), "{who}: frame {} tag", f.seq());
    assert!(
        check(f.seq(), f.as_bytes()),
        "{who}: frame {} torn or wrong",
        f.seq()
    );
}

/// Drop-oldest bookkeeping for one reader: every frame's `missed` must equal the gap in sequence
/// numbers before it, and received + missed must cover every frame from the reader's start.
struct Ledger {
    who: String,
    /// The sequence the reader started at (its cursor when it attached), once known.
    start: Option<u64>,
    next: u64,
    received: u64,
    missed: u64,
}

impl Ledger {
    fn new(who: impl Into<String>, start: Option<u64>) -> Self {
        Ledger {
            who: who.into(),
            start,
            next: start.unwrap_or(0),
            received: 0,
            missed: 0,
        }
    }

    /// Records frame `seq` reported with `missed` frames skipped before it. `start_range` bounds
    /// where the first frame's reader may have started (the write position before and after it
    /// attached) when the exact start is unknown.
    fn record(&mut self, seq: u64, missed: u64, start_range: (u64, u64)) {
        let who = &self.who;
        if self.received == 0 && self.start.is_none() {
            let begin = seq.checked_sub(missed).unwrap_or_else(|| {
                panic!("{who}: first frame {seq} reports {missed} missed frames")
            });
            assert!(
                (start_range.0..=start_range.1).contains(&begin),
                "{who}: first frame {seq} with {missed} missed implies a start at {begin}, \
                 outside the write positions {start_range:?} around the attach"
            );
            self.start = Some(begin);
            self.next = begin;
        }
        assert!(
            seq >= self.next,
            "{who}: frame {seq} out of order (expected {} or later)",
            self.next
        );
        assert_eq!(
            seq - self.next,
            missed,
            "{who}: frame {seq} reports {missed} missed, but the gap since the previous frame is {}",
            seq - self.next
        );
        self.received += 1;
        self.missed += missed;
        self.next = seq + 1;
    }

    /// Everything from the start up to `end` (exclusive) was received or counted as missed.
    fn assert_complete(&self, end: u64) {
        let start = self.start.unwrap_or(0);
        assert_eq!(
            self.received + self.missed,
            end - start,
            "{}: received {} + missed {} != frames written since it attached ({}..{end})",
            self.who,
            self.received,
            self.missed,
            start
        );
        if self.received > 0 {
            assert_eq!(self.next, end, "{}: last frame", self.who);
        }
    }
}

/// Reads until `Disconnected`, checking every frame, with an optional pause while holding each
/// frame (re-checking it after the pause: it must not have been overwritten meanwhile). Returns
/// the ledger.
fn read_all(who: &str, reader: &mut Reader<u8>, hold: Duration, lossless: bool) -> Ledger {
    let mut ledger = Ledger::new(who, Some(0));
    loop {
        let f = match reader.recv_timeout(PATIENCE) {
            Ok(f) => f,
            Err(RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("{who}: {e} after {} frames", ledger.received),
        };
        check_frame(who, &f);
        if lossless {
            assert_eq!(f.seq(), ledger.next, "{who}: lost or reordered frame");
            assert_eq!(f.missed(), 0, "{who}: missed frames in a lossless ring");
        }
        ledger.record(f.seq(), f.missed(), (0, 0));
        if !hold.is_zero() {
            std::thread::sleep(hold);
            assert!(
                check(f.seq(), f.as_bytes()),
                "{who}: frame {} changed while held",
                f.seq()
            );
        }
    }
    assert_eq!(reader.missed(), ledger.missed, "{who}: Reader::missed");
    assert_eq!(reader.frames_read(), ledger.received, "{who}: frames_read");
    ledger
}

// ------------------------------------------------------------------ tests

#[test]
fn three_readers_see_every_frame_in_order() {
    const N: u64 = 1500;
    let name = unique_name("bc-all");
    let _g = RingGuard(name.clone());
    let ring = make_ring(&name, Backpressure::Block, 4, 3);
    let counters = SharedCounters::new(1);
    let ready = &counters[0];
    let children: Vec<Child> = (0..3)
        .map(|r| {
            let n = name.clone();
            fork_child(move || {
                let who = format!("reader {r}");
                let mut reader = Ring::<u8>::open(&n).unwrap().reader().unwrap();
                ready.fetch_add(1, SeqCst);
                let ledger = read_all(&who, &mut reader, Duration::ZERO, true);
                ledger.assert_complete(N);
                assert_eq!(ledger.received, N);
                0
            })
        })
        .collect();
    wait_attached(ready, 3);
    let mut w = ring.writer().unwrap();
    for seq in 0..N {
        let mut s = w.reserve().unwrap();
        assert_eq!(s.seq(), seq);
        write_frame(&mut s);
        assert_eq!(s.commit(), seq);
    }
    assert_eq!(w.frames_written(), N);
    drop(w);
    for c in children {
        c.join_ok();
    }
}

/// Lossless: one reader sleeps on every frame. Nobody loses a frame, and the writer can never
/// be more than a ring ahead of the slow reader.
#[test]
fn block_slow_reader_holds_writer_back() {
    const N: u64 = 200;
    const SLOTS: u64 = 4;
    let name = unique_name("bc-slow");
    let _g = RingGuard(name.clone());
    let ring = make_ring(&name, Backpressure::Block, SLOTS as u32, 3);
    let counters = SharedCounters::new(1);
    let ready = &counters[0];
    let children: Vec<Child> = (0..3)
        .map(|r| {
            let n = name.clone();
            fork_child(move || {
                let ring = Ring::<u8>::open(&n).unwrap();
                let mut reader = ring.reader().unwrap();
                ready.fetch_add(1, SeqCst);
                if r > 0 {
                    let who = format!("fast reader {r}");
                    read_all(&who, &mut reader, Duration::ZERO, true).assert_complete(N);
                    return 0;
                }
                let who = "slow reader";
                let mut next = 0;
                loop {
                    let f = match reader.recv_timeout(PATIENCE) {
                        Ok(f) => f,
                        Err(RecvTimeoutError::Disconnected) => break,
                        Err(e) => panic!("{who}: {e}"),
                    };
                    check_frame(who, &f);
                    assert_eq!((f.seq(), f.missed()), (next, 0), "{who}: lost a frame");
                    // While we hold frame k, the writer cannot have committed past k + SLOTS.
                    if f.seq() == 10 {
                        // Let the writer run into us, then check it stays there.
                        wait_until("the writer to fill the ring", PATIENCE, || {
                            ring.status().write_seq == 10 + SLOTS
                        });
                        std::thread::sleep(Duration::from_millis(50));
                    } else {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    let w = ring.status().write_seq;
                    assert!(
                        w <= f.seq() + SLOTS,
                        "{who}: holding frame {}, yet the writer committed up to {}",
                        f.seq(),
                        w - 1
                    );
                    assert!(check(f.seq(), f.as_bytes()), "{who}: held frame changed");
                    next += 1;
                }
                assert_eq!(next, N, "{who}: frames received");
                0
            })
        })
        .collect();
    wait_attached(ready, 3);
    let mut w = ring.writer().unwrap();
    let mut full = 0;
    for seq in 0..N {
        let was_full = match w.try_reserve() {
            Ok(mut s) => {
                assert_eq!(s.seq(), seq);
                write_frame(&mut s);
                s.commit();
                false
            }
            Err(TryReserveError::Full) => true,
            Err(e) => panic!("{e}"),
        };
        if was_full {
            full += 1;
            let mut s = w.reserve_timeout(PATIENCE).unwrap();
            assert_eq!(s.seq(), seq);
            write_frame(&mut s);
            s.commit();
        }
        // Every reader's cursor is within a ring of what we just committed.
        for r in ring.status().readers {
            assert!(
                r.cursor + SLOTS > seq,
                "committed frame {seq} while reader {} is at {}",
                r.index,
                r.cursor
            );
        }
    }
    drop(w);
    for c in children {
        c.join_ok();
    }
    // The slow reader held the writer back at frame 10 for 50 ms at least; the writer saw a
    // full ring then (a blocking reserve followed).
    assert!(full > 0, "the writer never found the ring full");
}

/// Drop-oldest: one reader holds a frame while the writer laps the ring hundreds of times,
/// another is slow, a third is fast. The writer never waits (`try_reserve` never returns
/// `Full`: there are more slots than readers), the held frame is intact when it is released,
/// no frame anybody reads is torn, and each reader's received + missed frames add up exactly.
#[test]
fn drop_oldest_writer_never_waits_and_never_tears() {
    const N: u64 = 3000;
    const SLOTS: u32 = 4;
    const HELD: usize = 0; // seq + 1 of the frame the holder holds
    const DONE: usize = 1; // the writer has written every frame
    const READY: usize = 2; // readers attached
    let name = unique_name("bc-drop");
    let _g = RingGuard(name.clone());
    let ring = make_ring(&name, Backpressure::DropOldest, SLOTS, 3);
    let flags = SharedCounters::new(3);
    let flags_ref = &flags;
    let children: Vec<Child> = (0..3)
        .map(|r| {
            let n = name.clone();
            fork_child(move || {
                let ring = Ring::<u8>::open(&n).unwrap();
                let mut reader = ring.reader().unwrap();
                flags_ref[READY].fetch_add(1, SeqCst);
                let ledger = match r {
                    0 => {
                        let who = "holder";
                        let mut ledger = Ledger::new(who, Some(0));
                        {
                            let f = reader.recv_timeout(PATIENCE).unwrap();
                            check_frame(who, &f);
                            ledger.record(f.seq(), f.missed(), (0, 0));
                            flags_ref[HELD].store(f.seq() + 1, SeqCst);
                            wait_until("the writer to finish", PATIENCE, || {
                                flags_ref[DONE].load(SeqCst) == 1
                            });
                            let w = ring.status().write_seq;
                            assert_eq!(w, N, "{who}: write position after the writer");
                            assert!(
                                check(f.seq(), f.as_bytes()),
                                "{who}: frame {} overwritten while held ({} laps later)",
                                f.seq(),
                                w / u64::from(SLOTS)
                            );
                        }
                        loop {
                            let f = match reader.recv_timeout(PATIENCE) {
                                Ok(f) => f,
                                Err(RecvTimeoutError::Disconnected) => break,
                                Err(e) => panic!("{who}: {e}"),
                            };
                            check_frame(who, &f);
                            ledger.record(f.seq(), f.missed(), (0, 0));
                        }
                        assert_eq!(reader.missed(), ledger.missed, "{who}: Reader::missed");
                        assert_eq!(reader.frames_read(), ledger.received);
                        ledger
                    }
                    1 => read_all("slow reader", &mut reader, Duration::from_millis(2), false),
                    _ => read_all("fast reader", &mut reader, Duration::ZERO, false),
                };
                ledger.assert_complete(N);
                assert!(ledger.received > 0);
                0
            })
        })
        .collect();
    wait_attached(&flags[READY], 3);
    let mut w = ring.writer().unwrap();
    // Frames for which try_reserve said Full at least once (it should never): the writer then
    // retries, so the other checks still run to the end.
    let mut full_at = Vec::new();
    for seq in 0..N {
        let start = Instant::now();
        loop {
            match w.try_reserve() {
                Ok(mut s) => {
                    assert_eq!(s.seq(), seq);
                    write_frame(&mut s);
                    s.commit();
                    break;
                }
                Err(TryReserveError::Full) => {
                    if full_at.last() != Some(&seq) {
                        full_at.push(seq);
                    }
                    assert!(start.elapsed() < PATIENCE, "writer stuck at frame {seq}");
                }
                Err(e) => panic!("frame {seq}: {e}"),
            }
        }
        if seq == 0 {
            // Let the holder take frame 0 before lapping the ring.
            wait_until("the holder to hold a frame", PATIENCE, || {
                flags[HELD].load(SeqCst) != 0
            });
            assert_eq!(flags[HELD].load(SeqCst), 1, "the holder holds frame 0");
        }
    }
    assert_eq!(w.frames_written(), N);
    flags[DONE].store(1, SeqCst);
    drop(w);
    for c in children {
        c.join_ok();
    }
    assert!(
        full_at.is_empty(),
        "drop-oldest try_reserve returned Full with {SLOTS} slots and 3 readers, at frames \
         {full_at:?}"
    );
}

/// Readers attach and detach over and over while the writer runs, in both back-pressure modes:
/// each attachment starts at the write position (between the positions seen before and after
/// attaching), sees frames in order with exact missed counts (none when lossless), never a torn
/// frame, and the writer is never stuck on a reader that left.
fn churn(bp: Backpressure) {
    const CHURNERS: usize = 3;
    const MIN_FRAMES: u64 = 1000;
    const MIN_CYCLES: u64 = 15;
    let lossless = bp == Backpressure::Block;
    let name = unique_name("bc-churn");
    let _g = RingGuard(name.clone());
    let ring = make_ring(&name, bp, 4, CHURNERS as u32);
    let cycles = SharedCounters::new(CHURNERS);
    let cycles_ref = &cycles;
    // Attach the writer first so a churner's early attachment does not end in Disconnected.
    let mut w = ring.writer().unwrap();
    let children: Vec<Child> = (0..CHURNERS)
        .map(|c| {
            let n = name.clone();
            fork_child(move || {
                let ring = Ring::<u8>::open(&n).unwrap();
                let mut cycle = 0u64;
                'outer: loop {
                    let who = format!("churner {c} cycle {cycle}");
                    let before = ring.status().write_seq;
                    let mut reader = ring.reader().unwrap_or_else(|e| panic!("{who}: {e}"));
                    let after = ring.status().write_seq;
                    let mut ledger = Ledger::new(who.clone(), None);
                    let want = 1 + (cycle + c as u64) % 9;
                    for _ in 0..want {
                        let f = match reader.recv_timeout(PATIENCE) {
                            Ok(f) => f,
                            Err(RecvTimeoutError::Disconnected) => break 'outer,
                            Err(e) => panic!("{who}: {e}"),
                        };
                        check_frame(&who, &f);
                        if lossless {
                            assert_eq!(f.missed(), 0, "{who}: missed in a lossless ring");
                        }
                        ledger.record(f.seq(), f.missed(), (before, after));
                        if cycle % 4 == 1 {
                            // Sometimes hold the frame a little.
                            std::thread::sleep(Duration::from_micros(300));
                            assert!(check(f.seq(), f.as_bytes()), "{who}: frame changed");
                        }
                    }
                    assert_eq!(reader.missed(), ledger.missed, "{who}: Reader::missed");
                    drop(reader);
                    cycle += 1;
                    cycles_ref[c].store(cycle, SeqCst);
                }
                assert!(cycle >= MIN_CYCLES, "churner {c}: only {cycle} cycles");
                0
            })
        })
        .collect();
    let start = Instant::now();
    let mut seq = 0;
    let mut full_at = Vec::new();
    while seq < MIN_FRAMES || cycles.iter().any(|c| c.load(SeqCst) < MIN_CYCLES) {
        assert!(
            start.elapsed() < PATIENCE,
            "churners did not complete their cycles: {:?} after {seq} frames",
            cycles.iter().map(|c| c.load(SeqCst)).collect::<Vec<_>>()
        );
        if lossless {
            let mut s = w
                .reserve_timeout(PATIENCE)
                .unwrap_or_else(|e| panic!("writer stuck at frame {seq}: {e}"));
            assert_eq!(s.seq(), seq);
            write_frame(&mut s);
            s.commit();
        } else {
            // Drop-oldest never waits: try_reserve should always succeed (4 slots, 3 readers);
            // a Full is recorded and retried so the readers' checks still run to the end.
            loop {
                match w.try_reserve() {
                    Ok(mut s) => {
                        assert_eq!(s.seq(), seq);
                        write_frame(&mut s);
                        s.commit();
                        break;
                    }
                    Err(TryReserveError::Full) => {
                        if full_at.last() != Some(&seq) {
                            full_at.push(seq);
                        }
                        assert!(start.elapsed() < PATIENCE, "writer stuck at frame {seq}");
                    }
                    Err(e) => panic!("frame {seq}: {e}"),
                }
            }
        }
        seq += 1;
        if seq % 64 == 0 {
            // Give the churners some time to run on a busy machine.
            std::thread::yield_now();
        }
    }
    drop(w);
    for c in children {
        c.join_ok();
    }
    assert!(ring.status().readers.is_empty(), "every reader detached");
    assert!(
        full_at.is_empty(),
        "drop-oldest try_reserve returned Full with 4 slots and 3 readers, at frames {full_at:?}"
    );
}

#[test]
fn readers_attach_and_detach_while_block_writer_runs() {
    churn(Backpressure::Block);
}

#[test]
fn readers_attach_and_detach_while_drop_oldest_writer_runs() {
    churn(Backpressure::DropOldest);
}

/// The smallest case of "more slots than readers": 2 slots, 1 reader that reads as fast as it
/// can. At any instant the reader pins at most one slot, so a drop-oldest `try_reserve` always
/// has a free slot and must never return `Full`. The writer writes for 3 s (or until the first
/// `Full`).
#[test]
fn drop_oldest_try_reserve_never_full_with_one_busy_reader() {
    const RUN: Duration = Duration::from_secs(3);
    let name = unique_name("bc-chase");
    let _g = RingGuard(name.clone());
    let ring = Ring::<u8>::create(&name)
        .shape([16])
        .slots(2)
        .mode(Mode::Broadcast(Backpressure::DropOldest))
        .max_readers(1)
        .build()
        .unwrap();
    let counters = SharedCounters::new(1);
    let ready = &counters[0];
    let n = name.clone();
    let child = fork_child(move || {
        let ring = Ring::<u8>::open(&n).unwrap();
        let mut reader = ring.reader().unwrap();
        ready.fetch_add(1, SeqCst);
        let mut ledger = Ledger::new("busy reader", Some(0));
        loop {
            match reader.try_recv() {
                Ok(f) => {
                    assert!(f.as_slice().iter().all(|&b| b == f.seq() as u8));
                    ledger.record(f.seq(), f.missed(), (0, 0));
                }
                Err(shmflow::TryRecvError::Empty) => std::hint::spin_loop(),
                Err(shmflow::TryRecvError::Disconnected) => break,
                Err(e) => panic!("{e}"),
            }
        }
        // The writer is gone: its write position is final.
        ledger.assert_complete(ring.status().write_seq);
        0
    });
    wait_attached(ready, 1);
    let mut w = ring.writer().unwrap();
    let start = Instant::now();
    let mut seq = 0u64;
    let mut full_at = None;
    while start.elapsed() < RUN {
        match w.try_reserve() {
            Ok(mut s) => {
                s.as_mut_slice().fill(seq as u8);
                s.commit();
                seq += 1;
            }
            Err(TryReserveError::Full) => {
                full_at = Some(seq);
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    drop(w);
    child.join_ok();
    assert_eq!(
        full_at, None,
        "try_reserve returned Full (2 slots, 1 reader) after {seq} frames"
    );
}

/// `Ring::status().readers` lists attached readers, each with the cursor it reads next. A
/// reader that is listed must therefore be one that sees the frames committed from now on (a
/// writer that waits until a reader is listed and then commits must not lose that frame to it).
/// A reader process attaches and detaches in a loop; the parent freezes it (SIGSTOP) at random
/// points and looks at `status()`: every listed reader must have a cursor at or after the
/// frames already written.
#[test]
fn status_lists_only_attached_readers() {
    const WRITTEN: u64 = 8;
    const PEEKS: usize = 2000;
    let name = unique_name("bc-status");
    let _g = RingGuard(name.clone());
    let ring = make_ring(&name, Backpressure::Block, 4, 1);
    let mut w = ring.writer().unwrap();
    for _ in 0..WRITTEN {
        let mut s = w.reserve_timeout(PATIENCE).unwrap();
        write_frame(&mut s);
        s.commit();
    }
    let n = name.clone();
    let mut child = fork_child(move || {
        let ring = Ring::<u8>::open(&n).unwrap();
        loop {
            let r = ring.reader().unwrap();
            // Stay attached a little: attach and detach cost several syscalls each (lock,
            // FIFO, epoll), and the peeks must also land while the reader is attached.
            std::thread::sleep(Duration::from_micros(30));
            drop(r);
        }
    });
    let mut bad = Vec::new();
    let mut listed = 0;
    for peek in 0..PEEKS {
        child.kill(libc::SIGSTOP);
        let mut status = 0;
        // SAFETY: waiting for our own child to stop (it is not reaped: WUNTRACED).
        let r = unsafe { libc::waitpid(child.pid, &mut status, libc::WUNTRACED) };
        assert!(
            r == child.pid && libc::WIFSTOPPED(status),
            "child did not stop"
        );
        for r in ring.status().readers {
            listed += 1;
            if r.cursor < WRITTEN {
                bad.push((peek, r.cursor));
            }
        }
        child.kill(libc::SIGCONT);
        std::thread::sleep(Duration::from_micros(50 + (peek as u64 * 37) % 200));
    }
    child.kill(libc::SIGKILL);
    assert_eq!(child.wait_timeout(PATIENCE), Exit::Signal(libc::SIGKILL));
    assert!(listed > 0, "the reader was never seen attached");
    assert!(
        bad.is_empty(),
        "status() listed a reader that has not finished attaching (cursor below the {WRITTEN} \
         frames already written, so it will not see them) in {} of {PEEKS} peeks, e.g. \
         (peek, cursor) {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
}

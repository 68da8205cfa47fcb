//! Peer death: readers and writers killed with SIGKILL at the worst moment, writers that detach
//! cleanly, and cleaning up the segment afterwards. Every peer is a real process (forked, or the
//! test binary re-executed in a role).

mod common;

use std::io::Read;
use std::os::fd::AsRawFd;
use std::process::{ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;
use shmflow::{
    Backpressure, Mode, OpenError, RecvError, RecvTimeoutError, ReserveTimeoutError, Ring,
    TryRecvError, Writer,
};

/// How often waiting endpoints check their peers in these tests.
const LIVENESS: Duration = Duration::from_millis(50);
/// Bytes per frame.
const FRAME: usize = 1024;
/// Generous bound for "does not hang" (a dead peer must be noticed well within this).
const BOUND: Duration = Duration::from_secs(5);
/// Bound for single blocking steps that should take about one liveness interval.
const STEP: Duration = Duration::from_secs(2);

/// What a re-executed child prints when it is ready to be killed.
const READY: &str = "SHMFLOW-CHILD-READY";

const BLOCK: Mode = Mode::Broadcast(Backpressure::Block);

// ------------------------------------------------------------------------------------ helpers

/// A re-executed child, killed and reaped on drop.
struct Proc(std::process::Child);

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        cmd.stdout(Stdio::piped());
        Proc(cmd.spawn().expect("re-exec the test binary"))
    }

    fn stdout(&mut self) -> &mut ChildStdout {
        self.0.stdout.as_mut().expect("piped stdout")
    }

    /// Reads the child's stdout until it contains `want` (within `timeout`). The test harness
    /// prints `test <name> ... ` before the test runs, so the token may share its line.
    fn wait_line(&mut self, want: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut buf = Vec::new();
        loop {
            if String::from_utf8_lossy(&buf).contains(want) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "child never printed {want:?}");
            let mut p = libc::pollfd {
                fd: self.stdout().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut p, 1, left.as_millis() as libc::c_int) } <= 0 {
                continue;
            }
            let mut chunk = [0u8; 4096];
            let n = self.stdout().read(&mut chunk).expect("read child stdout");
            assert!(n > 0, "child closed stdout before printing {want:?}");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn wait_timeout(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.0.try_wait().expect("try_wait") {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "child did not exit in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Already exited or killed: errors do not matter here.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_frame(w: &mut Writer<u8>) -> u64 {
    let mut s = w.reserve_timeout(BOUND).expect("reserve_timeout");
    let seq = s.seq();
    fill(seq, s.as_mut_bytes());
    s.commit()
}

/// Commits `k` frames, then reserves one more, writes half of it, says so and waits to be killed.
fn commit_then_half_write(w: &mut Writer<u8>, k: u64, ready: impl FnOnce()) -> ! {
    for _ in 0..k {
        write_frame(w);
    }
    let mut s = w.reserve_timeout(BOUND).expect("reserve the half frame");
    let bytes = s.as_mut_bytes();
    let half = bytes.len() / 2;
    bytes[..half].fill(0xEE);
    ready();
    sleep_forever();
}

/// In a re-executed child: plays its role and returns true.
fn play_role() -> bool {
    let Some((role, args)) = role() else {
        return false;
    };
    let name = &args[0];
    let ring = Ring::<u8>::open(name).expect("child: open");
    let mut w = ring.writer().expect("child: writer");
    match role.as_str() {
        "half-writer" => {
            let k: u64 = args[1].parse().unwrap();
            commit_then_half_write(&mut w, k, || {
                use std::io::Write;
                println!("{READY}");
                std::io::stdout().flush().unwrap();
            });
        }
        "writer" => {
            let n: u64 = args[1].parse().unwrap();
            for _ in 0..n {
                write_frame(&mut w);
            }
        }
        other => panic!("unknown role {other}"),
    }
    true
}

// -------------------------------------------------------------------------------- dead readers

#[test]
fn broadcast_block_reader_killed_holding_a_slot_is_reclaimed() {
    let name = unique_name("crash-bdr");
    let _g = RingGuard(name.clone());
    const SLOTS: u64 = 4;
    const TOTAL: u64 = 40;
    let ring = Ring::<u8>::create(&name)
        .shape([FRAME])
        .slots(SLOTS as u32)
        .mode(BLOCK)
        .build()
        .unwrap();
    let sig = Pipe::new();

    // A live reader process that must see every frame.
    let live = fork_child(|| {
        let ring = Ring::<u8>::open(&name).unwrap();
        let mut r = ring.reader().unwrap();
        sig.send(b'L');
        let mut next = 0;
        loop {
            match r.recv_timeout(Duration::from_secs(20)) {
                Ok(f) if f.seq() == next && check(next, f.as_bytes()) => next += 1,
                Ok(_) => return 3,
                Err(RecvTimeoutError::Disconnected) => break,
                Err(_) => return 4,
            }
        }
        if next == TOTAL {
            0
        } else {
            5
        }
    });
    sig.expect(b'L');

    // The victim takes frame 0 and keeps it.
    let victim = fork_child(|| {
        let ring = Ring::<u8>::open(&name).unwrap();
        let mut r = ring.reader().unwrap();
        sig.send(b'A');
        // The guard owns the claim: it stays held until the victim is killed.
        let held = r.recv();
        let ok = matches!(&held, Ok(f) if f.seq() == 0 && check(0, f.as_bytes()));
        sig.send(if ok { b'H' } else { b'X' });
        sleep_forever();
    });
    sig.expect(b'A');
    let victim_pid = victim.pid as u32;

    let mut w = ring.writer().unwrap();
    w.set_liveness_interval(LIVENESS);
    write_frame(&mut w);
    sig.expect(b'H');
    for _ in 1..SLOTS {
        write_frame(&mut w);
    }
    // The victim is alive and holds frame 0: the writer cannot reuse its slot.
    assert!(matches!(
        w.reserve_timeout(Duration::from_millis(200)),
        Err(ReserveTimeoutError::Timeout)
    ));
    assert!(ring
        .status()
        .readers
        .iter()
        .any(|p| p.pid == victim_pid && p.alive));

    kill_and_reap(victim);
    let mut worst = Duration::ZERO;
    for _ in SLOTS..TOTAL {
        let t = Instant::now();
        write_frame(&mut w);
        worst = worst.max(t.elapsed());
    }
    assert!(
        worst < STEP,
        "writer blocked {worst:?} by a dead reader (liveness {LIVENESS:?})"
    );
    let st = ring.status();
    assert!(
        st.readers.iter().all(|p| p.pid != victim_pid),
        "dead reader still attached: {st:?}"
    );
    assert_eq!(st.readers.len(), 1, "{st:?}");
    assert_eq!(st.write_seq, TOTAL);

    drop(w);
    live.join_ok();
    drop(ring);
    assert!(
        !shm_path(&name).exists(),
        "owner did not unlink the segment"
    );
}

#[test]
fn queue_reader_killed_holding_a_frame_is_counted_lost() {
    let name = unique_name("crash-qdr");
    let _g = RingGuard(name.clone());
    const SLOTS: u64 = 4;
    const TOTAL: u64 = 30;
    let ring = Ring::<u8>::create(&name)
        .shape([FRAME])
        .slots(SLOTS as u32)
        .mode(Mode::Queue)
        .build()
        .unwrap();
    let sig = Pipe::new();

    let victim = fork_child(|| {
        let ring = Ring::<u8>::open(&name).unwrap();
        let mut r = ring.reader().unwrap();
        sig.send(b'A');
        // The guard owns the claim: it stays held until the victim is killed.
        let held = r.recv();
        let ok = matches!(&held, Ok(f) if f.seq() == 0 && check(0, f.as_bytes()));
        sig.send(if ok { b'H' } else { b'X' });
        sleep_forever();
    });
    sig.expect(b'A');
    let victim_pid = victim.pid as u32;

    let mut w = ring.writer().unwrap();
    w.set_liveness_interval(LIVENESS);
    write_frame(&mut w);
    sig.expect(b'H');

    // The only other reader gets every frame after 0, in order.
    let live = fork_child(|| {
        let ring = Ring::<u8>::open(&name).unwrap();
        let mut r = ring.reader().unwrap();
        sig.send(b'L');
        let mut next = 1;
        loop {
            match r.recv_timeout(Duration::from_secs(20)) {
                Ok(f) if f.seq() == next && check(next, f.as_bytes()) => next += 1,
                Ok(_) => return 3,
                Err(RecvTimeoutError::Disconnected) => break,
                Err(_) => return 4,
            }
        }
        if next == TOTAL {
            0
        } else {
            5
        }
    });
    sig.expect(b'L');
    for _ in 1..SLOTS {
        write_frame(&mut w);
    }
    // Wait until the live reader has taken frames 1..SLOTS: only the victim's slot blocks now.
    let t = Instant::now();
    while ring.status().read_seq < SLOTS {
        assert!(t.elapsed() < BOUND, "live reader did not read");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(matches!(
        w.reserve_timeout(Duration::from_millis(200)),
        Err(ReserveTimeoutError::Timeout)
    ));
    assert_eq!(ring.status().lost, 0);

    kill_and_reap(victim);
    let mut worst = Duration::ZERO;
    for _ in SLOTS..TOTAL {
        let t = Instant::now();
        write_frame(&mut w);
        worst = worst.max(t.elapsed());
    }
    assert!(worst < STEP, "writer blocked {worst:?} by a dead reader");
    let st = ring.status();
    assert_eq!(st.lost, 1, "{st:?}");
    assert_eq!(st.abandoned, 0, "{st:?}");
    assert!(st.readers.iter().all(|p| p.pid != victim_pid), "{st:?}");

    drop(w);
    live.join_ok();
    drop(ring);
    assert!(!shm_path(&name).exists());
}

/// Drop-oldest: a reader holding (pinning) a frame is never overwritten while it lives, the
/// writer goes on with the other slots, and once killed the reader is reclaimed.
#[test]
fn drop_oldest_reader_holding_a_frame_is_not_torn_then_reclaimed() {
    let name = unique_name("crash-ddr");
    let _g = RingGuard(name.clone());
    const HALF: u64 = 50;
    let ring = Ring::<u8>::create(&name)
        .shape([FRAME])
        .slots(2)
        .mode(Mode::Broadcast(Backpressure::DropOldest))
        .build()
        .unwrap();
    let (up, down) = (Pipe::new(), Pipe::new());
    let victim = fork_child(|| {
        let ring = Ring::<u8>::open(&name).unwrap();
        let mut r = ring.reader().unwrap();
        up.send(b'A');
        let Ok(f) = r.recv() else { return 2 };
        up.send(if f.seq() == 0 { b'H' } else { b'X' });
        if down.recv(Duration::from_secs(20)) != Some(b'C') {
            return 3;
        }
        // Still frame 0, untouched, after the writer went round the ring many times.
        up.send(if check(0, f.as_bytes()) { b'K' } else { b'X' });
        sleep_forever();
    });
    up.expect(b'A');
    let victim_pid = victim.pid as u32;
    let live = fork_child(|| {
        let ring = Ring::<u8>::open(&name).unwrap();
        let mut r = ring.reader().unwrap();
        up.send(b'L');
        let mut next = 0;
        loop {
            match r.recv_timeout(Duration::from_secs(20)) {
                Ok(f) => {
                    let seq = f.seq();
                    if seq < next || f.missed() != seq - next || !check(seq, f.as_bytes()) {
                        return 3;
                    }
                    next = seq + 1;
                }
                Err(RecvTimeoutError::Disconnected) => break,
                Err(_) => return 4,
            }
        }
        if next == 2 * HALF {
            0
        } else {
            5
        }
    });
    up.expect(b'L');

    let mut w = ring.writer().unwrap();
    w.set_liveness_interval(LIVENESS);
    write_frame(&mut w);
    up.expect(b'H');
    let mut worst = Duration::ZERO;
    for _ in 1..HALF {
        let t = Instant::now();
        write_frame(&mut w);
        worst = worst.max(t.elapsed());
    }
    down.send(b'C');
    up.expect(b'K');
    kill_and_reap(victim);
    for _ in HALF..2 * HALF {
        let t = Instant::now();
        write_frame(&mut w);
        worst = worst.max(t.elapsed());
    }
    assert!(worst < STEP, "drop-oldest writer waited {worst:?}");
    ring.reclaim_dead_peers();
    let st = ring.status();
    assert!(st.readers.iter().all(|p| p.pid != victim_pid), "{st:?}");
    assert_eq!(st.readers.len(), 1, "{st:?}");
    drop(w);
    live.join_ok();
}

// -------------------------------------------------------------------------------- dead writers

/// Broadcast: a writer (an unrelated, re-executed process) is killed with a half-written frame.
/// The reader gets exactly the committed frames, then `WriterDied` (not the `Disconnected` of a clean end); a new writer can attach.
#[test]
fn broadcast_writer_killed_mid_frame() {
    if play_role() {
        return;
    }
    const K: u64 = 3;
    let name = unique_name("crash-bwk");
    let _g = RingGuard(name.clone());
    let ring = Ring::<u8>::create(&name)
        .shape([FRAME])
        .slots(4)
        .mode(BLOCK)
        .build()
        .unwrap();
    let mut reader = ring.reader().unwrap();
    reader.set_liveness_interval(LIVENESS);

    let mut child = Proc::spawn(reexec(
        "broadcast_writer_killed_mid_frame",
        "half-writer",
        &[&name, &K.to_string()],
    ));
    child.wait_line(READY, Duration::from_secs(20));
    // Writer alive, frame K half-written: the reader sees frame 0 now, and nothing past K - 1.
    {
        let f = reader.try_recv().expect("frame 0");
        assert_eq!(f.seq(), 0);
        assert!(check(0, f.as_bytes()));
    }
    let writer_pid = child.0.id();
    child.0.kill().unwrap();
    let status = child.wait_timeout(Duration::from_secs(10));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    let killed = Instant::now();

    for k in 1..K {
        let f = reader.recv_timeout(BOUND).expect("committed frame");
        assert_eq!(f.seq(), k);
        assert!(check(k, f.as_bytes()), "frame {k} content");
    }
    // A killed writer is not a finished stream: the reader is told it died, and after how
    // many frames.
    match reader.recv_timeout(BOUND) {
        Err(RecvTimeoutError::WriterDied { pid, frames }) => {
            assert_eq!(pid, writer_pid);
            assert_eq!(frames, K);
        }
        Ok(f) => panic!("got frame {} after the committed ones", f.seq()),
        Err(e) => panic!("{e:?}"),
    }
    assert!(killed.elapsed() < BOUND);
    assert!(matches!(reader.recv(), Err(RecvError::WriterDied { .. })));
    assert!(matches!(
        reader.try_recv(),
        Err(TryRecvError::WriterDied { .. })
    ));
    let st = ring.status();
    assert!(st.writers.is_empty(), "{st:?}");
    assert_eq!(st.write_seq, K);

    // A new writer attaches to the same ring; its frames reach the reader.
    let mut new_writer = Proc::spawn(reexec(
        "broadcast_writer_killed_mid_frame",
        "writer",
        &[&name, "2"],
    ));
    let status = new_writer.wait_timeout(Duration::from_secs(20));
    assert!(status.success(), "new writer: {status}");
    for k in K..K + 2 {
        let f = reader.recv_timeout(BOUND).expect("frame of the new writer");
        assert_eq!(f.seq(), k);
        assert!(check(k, f.as_bytes()), "frame {k} content");
    }
    assert!(matches!(
        reader.recv_timeout(BOUND),
        Err(RecvTimeoutError::Disconnected)
    ));
    drop(reader);
    drop(ring);
    assert!(!shm_path(&name).exists());
}

/// Queue: a writer is killed with a half-written frame; the committed frames are delivered
/// (after the kill), the half-written one never is, then `WriterDied`. A new writer attaches.
#[test]
fn queue_writer_killed_mid_frame() {
    const K: u64 = 3;
    let name = unique_name("crash-qwk");
    let _g = RingGuard(name.clone());
    let ring = Ring::<u8>::create(&name)
        .shape([FRAME])
        .slots(4)
        .mode(Mode::Queue)
        .build()
        .unwrap();
    let mut reader = ring.reader().unwrap();
    reader.set_liveness_interval(LIVENESS);
    let sig = Pipe::new();

    let child = fork_child(|| {
        let ring = Ring::<u8>::open(&name).unwrap();
        let mut w = ring.writer().unwrap();
        commit_then_half_write(&mut w, K, || sig.send(b'R'));
    });
    sig.expect(b'R');
    let writer_pid = child.pid as u32;
    kill_and_reap(child);
    let killed = Instant::now();

    for k in 0..K {
        let f = reader.recv_timeout(BOUND).expect("committed frame");
        assert_eq!(f.seq(), k);
        assert!(check(k, f.as_bytes()), "frame {k} content");
    }
    match reader.recv_timeout(BOUND) {
        Err(RecvTimeoutError::WriterDied { pid, frames }) => {
            assert_eq!(pid, writer_pid);
            assert_eq!(frames, K + 1, "the abandoned sequence counts as written");
        }
        Ok(f) => panic!("got frame {} after the committed ones", f.seq()),
        Err(e) => panic!("{e:?}"),
    }
    assert!(killed.elapsed() < BOUND);
    assert!(matches!(reader.recv(), Err(RecvError::WriterDied { .. })));
    let st = ring.status();
    assert_eq!(st.writer_died.map(|d| d.pid), Some(writer_pid), "{st:?}");
    assert_eq!(st.abandoned, 1, "{st:?}");
    assert_eq!(st.lost, 0, "{st:?}");
    assert!(st.writers.is_empty(), "{st:?}");

    // A new writer process: its frames arrive (the abandoned sequence is skipped).
    let writer = fork_child(|| {
        let ring = Ring::<u8>::open(&name).unwrap();
        let mut w = ring.writer().unwrap();
        sig.send(b'W');
        write_frame(&mut w);
        write_frame(&mut w);
        0
    });
    // Attached before we read on: otherwise the reader is rightly still disconnected.
    sig.expect(b'W');
    let mut seqs = Vec::new();
    loop {
        match reader.recv_timeout(BOUND) {
            Ok(f) => {
                assert!(check(f.seq(), f.as_bytes()), "frame {} content", f.seq());
                seqs.push(f.seq());
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("{e:?}"),
        }
    }
    writer.join_ok();
    assert_eq!(seqs, [K + 1, K + 2]);
    drop(reader);
    drop(ring);
    assert!(!shm_path(&name).exists());
}

/// A writer that detaches cleanly while the reader is blocked: the reader drains, then gets
/// `Disconnected` at once. The liveness interval is 30 s, so only the detach can wake it.
fn clean_drop_disconnects_promptly(mode: Mode) {
    const K: u64 = 5;
    let name = unique_name("crash-drop");
    let _g = RingGuard(name.clone());
    let ring = Ring::<u8>::create(&name)
        .shape([FRAME])
        .slots(8)
        .mode(mode)
        .build()
        .unwrap();
    let mut reader = ring.reader().unwrap();
    reader.set_liveness_interval(Duration::from_secs(30));
    let (up, down) = (Pipe::new(), Pipe::new());
    let child = fork_child(|| {
        let ring = Ring::<u8>::open(&name).unwrap();
        let mut w = ring.writer().unwrap();
        for _ in 0..K {
            write_frame(&mut w);
        }
        up.send(b'W');
        if down.recv(Duration::from_secs(20)) != Some(b'G') {
            return 2;
        }
        std::thread::sleep(Duration::from_millis(100));
        drop(w);
        0
    });
    up.expect(b'W');
    for k in 0..K {
        let f = reader.recv_timeout(BOUND).expect("frame");
        assert_eq!(f.seq(), k);
        assert!(check(k, f.as_bytes()));
    }
    down.send(b'G');
    let t = Instant::now();
    let r = reader.recv_timeout(Duration::from_secs(20));
    assert!(matches!(r, Err(RecvTimeoutError::Disconnected)), "{r:?}");
    assert!(
        t.elapsed() < BOUND,
        "Disconnected after {:?}: the detach did not wake the reader",
        t.elapsed()
    );
    child.join_ok();
    assert!(matches!(reader.try_recv(), Err(TryRecvError::Disconnected)));
}

#[test]
fn broadcast_writer_dropped_cleanly_disconnects_promptly() {
    clean_drop_disconnects_promptly(BLOCK);
}

#[test]
fn queue_writer_dropped_cleanly_disconnects_promptly() {
    clean_drop_disconnects_promptly(Mode::Queue);
}

// ------------------------------------------------------------------------------------ clean-up

/// The creator itself is killed (mid-frame): nobody unlinks the segment. Readers still drain
/// it, and `Ring::remove` cleans it up.
#[test]
fn killed_creator_leaves_a_segment_that_remove_cleans_up() {
    const K: u64 = 2;
    let name = unique_name("crash-creator");
    let _g = RingGuard(name.clone());
    let sig = Pipe::new();
    let child = fork_child(|| {
        let ring = Ring::<u8>::create(&name)
            .shape([FRAME])
            .slots(4)
            .mode(Mode::Queue)
            .build()
            .unwrap();
        let mut w = ring.writer().unwrap();
        commit_then_half_write(&mut w, K, || sig.send(b'R'));
    });
    sig.expect(b'R');
    let ring = Ring::<u8>::open(&name).unwrap();
    assert!(!ring.is_owner());
    let mut reader = ring.reader().unwrap();
    reader.set_liveness_interval(LIVENESS);
    assert!(ring.info().creator_alive);
    kill_and_reap(child);
    assert!(!ring.info().creator_alive);

    for k in 0..K {
        let f = reader.recv_timeout(BOUND).expect("committed frame");
        assert_eq!(f.seq(), k);
        assert!(check(k, f.as_bytes()));
    }
    assert!(matches!(
        reader.recv_timeout(BOUND),
        Err(RecvTimeoutError::WriterDied { .. })
    ));
    drop(reader);
    drop(ring);

    assert!(shm_path(&name).exists(), "nobody should have unlinked it");
    assert!(shmflow::list().unwrap().contains(&name));
    Ring::<u8>::remove(&name).expect("remove");
    assert!(!shm_path(&name).exists());
    assert!(!shmflow::list().unwrap().contains(&name));
    assert!(matches!(
        Ring::<u8>::open(&name),
        Err(OpenError::NotFound { .. })
    ));
    assert!(matches!(
        Ring::<u8>::remove(&name),
        Err(OpenError::NotFound { .. })
    ));
}

/// A reader that only polls (`try_recv`, as an event loop driven by the reader's fd does) must
/// also learn that its writer died: a killed writer never detaches, so nobody rings the
/// doorbell, and `try_recv` is the only call such a reader makes.
#[test]
fn try_recv_reports_a_killed_writer_as_died() {
    let name = unique_name("crash-tryrecv");
    let _g = RingGuard(name.clone());
    let ring = Ring::<u8>::create(&name)
        .shape([FRAME])
        .slots(4)
        .mode(BLOCK)
        .build()
        .unwrap();
    let mut reader = ring.reader().unwrap();
    reader.set_liveness_interval(LIVENESS);
    let sig = Pipe::new();
    let child = fork_child(|| {
        let ring = Ring::<u8>::open(&name).unwrap();
        let mut w = ring.writer().unwrap();
        commit_then_half_write(&mut w, 1, || sig.send(b'R'));
    });
    sig.expect(b'R');
    kill_and_reap(child);
    {
        let f = reader.try_recv().expect("the committed frame");
        assert_eq!(f.seq(), 0);
        assert!(check(0, f.as_bytes()));
    }
    let t = Instant::now();
    let r = loop {
        match reader.try_recv() {
            Err(TryRecvError::Empty) if t.elapsed() < BOUND => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => break Err(e),
            Ok(f) => break Ok(f.seq()),
        }
    };
    assert!(
        matches!(r, Err(TryRecvError::WriterDied { frames: 1, .. })),
        "try_recv after the writer was killed: {r:?}, for {:?}",
        t.elapsed()
    );
}

/// A reader killed while asleep in `recv` leaves its waiter registration behind: reclaiming it
/// does not take back its `reader_waiters` count (control block, segment offset 384), and the
/// entry's next occupant resets the flags without adjusting it. Nothing breaks, but from then
/// on every commit scans the whole peer table for sleepers ("costs one load when nobody waits"
/// no longer holds). The count is read from the segment file.
#[test]
fn a_reclaimed_sleeping_reader_leaves_no_waiter_count() {
    const READER_WAITERS: usize = 384;
    let name = unique_name("crash-waiters");
    let _g = RingGuard(name.clone());
    let ring = Ring::<u8>::create(&name)
        .shape([FRAME])
        .slots(4)
        .mode(BLOCK)
        .build()
        .unwrap();
    let _w = ring.writer().unwrap();
    let waiters = || {
        let b = std::fs::read(shm_path(&name)).unwrap();
        u64::from_le_bytes(b[READER_WAITERS..READER_WAITERS + 8].try_into().unwrap())
    };
    assert_eq!(waiters(), 0);
    let sig = Pipe::new();
    let child = fork_child(|| {
        let ring = Ring::<u8>::open(&name).unwrap();
        let mut r = ring.reader().unwrap();
        r.set_wait_strategy(shmflow::WaitStrategy::SpinThenBlock {
            spin: Duration::ZERO,
        });
        sig.send(b'R');
        let _ = r.recv();
        0
    });
    sig.expect(b'R');
    let t = Instant::now();
    while waiters() == 0 {
        assert!(t.elapsed() < BOUND, "the reader never went to sleep");
        std::thread::sleep(Duration::from_millis(2));
    }
    kill_and_reap(child);
    assert_eq!(ring.reclaim_dead_peers(), 1);
    assert!(ring.status().readers.is_empty());
    assert_eq!(waiters(), 0, "the dead reader is still counted as a waiter");
}

/// A reader that only ever waits with timeouts shorter than its liveness interval (an event
/// loop doing `recv_timeout(10 ms)` over and over) must still check its writer once per
/// interval: the checks count across calls, not from the start of each call.
#[test]
fn short_recv_timeouts_still_find_a_killed_writer() {
    let name = unique_name("crash-shortrecv");
    let _g = RingGuard(name.clone());
    let ring = Ring::<u8>::create(&name)
        .shape([FRAME])
        .slots(4)
        .mode(BLOCK)
        .build()
        .unwrap();
    let mut reader = ring.reader().unwrap();
    reader.set_liveness_interval(LIVENESS);
    let sig = Pipe::new();
    let child = fork_child(|| {
        let ring = Ring::<u8>::open(&name).unwrap();
        let mut w = ring.writer().unwrap();
        commit_then_half_write(&mut w, 1, || sig.send(b'R'));
    });
    sig.expect(b'R');
    kill_and_reap(child);
    let t = Instant::now();
    let mut got = Vec::new();
    let r = loop {
        match reader.recv_timeout(Duration::from_millis(10)) {
            Ok(f) => {
                assert!(check(f.seq(), f.as_bytes()));
                got.push(f.seq());
            }
            Err(RecvTimeoutError::Timeout) if t.elapsed() < BOUND => {}
            Err(e) => break e,
        }
    };
    assert_eq!(got, vec![0]);
    assert!(
        matches!(r, RecvTimeoutError::WriterDied { frames: 1, .. }),
        "recv_timeout(10 ms) loop after the writer was killed: {r:?}, for {:?}",
        t.elapsed()
    );
}

/// The writer's side of the same: a lossless writer retrying `reserve_timeout(10 ms)` while a
/// killed reader holds the oldest frame must reclaim that reader and go on.
#[test]
fn short_reserve_timeouts_still_reclaim_a_killed_reader() {
    let name = unique_name("crash-shortreserve");
    let _g = RingGuard(name.clone());
    const SLOTS: u64 = 2;
    let ring = Ring::<u8>::create(&name)
        .shape([FRAME])
        .slots(SLOTS as u32)
        .mode(BLOCK)
        .build()
        .unwrap();
    let mut w = ring.writer().unwrap();
    w.set_liveness_interval(LIVENESS);
    let sig = Pipe::new();
    let victim = fork_child(|| {
        let ring = Ring::<u8>::open(&name).unwrap();
        let mut r = ring.reader().unwrap();
        sig.send(b'A');
        let held = r.recv();
        let ok = matches!(&held, Ok(f) if f.seq() == 0);
        sig.send(if ok { b'H' } else { b'X' });
        sleep_forever();
    });
    sig.expect(b'A');
    write_frame(&mut w);
    sig.expect(b'H');
    for _ in 1..SLOTS {
        write_frame(&mut w);
    }
    kill_and_reap(victim);
    let t = Instant::now();
    loop {
        match w.reserve_timeout(Duration::from_millis(10)) {
            Ok(s) => {
                drop(s);
                break;
            }
            Err(ReserveTimeoutError::Timeout) => assert!(
                t.elapsed() < BOUND,
                "reserve_timeout(10 ms) loop never reclaimed the killed reader"
            ),
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(ring.status().readers.is_empty());
}

/// A drop-oldest writer killed inside its pin handshake: it had stored WRITING over the slot
/// of a frame a reader holds (pinned), and died before restoring the stamp. The next writer's
/// attach turns the WRITING slot EMPTY; it must still not hand that slot out while the reader
/// holds it. The kill lands in a window of a few instructions, so the test leaves the stamp
/// exactly as such a writer would (written into the segment file), then kills the writer.
#[test]
fn writer_killed_in_the_pin_handshake_does_not_expose_a_held_frame() {
    use std::os::unix::fs::FileExt;
    const SLOTS: u64 = 3;
    const READERS: u64 = 2;
    let name = unique_name("crash-pinhs");
    let _g = RingGuard(name.clone());
    let ring = Ring::<u8>::create(&name)
        .shape([FRAME])
        .slots(SLOTS as u32)
        .max_readers(READERS as u32)
        .mode(Mode::Broadcast(Backpressure::DropOldest))
        .build()
        .unwrap();
    let mut reader = ring.reader().unwrap();
    let sig = Pipe::new();
    let child = fork_child(|| {
        let ring = Ring::<u8>::open(&name).unwrap();
        let mut w = ring.writer().unwrap();
        write_frame(&mut w);
        sig.send(b'W');
        sleep_forever();
    });
    sig.expect(b'W');
    let held = reader.recv_timeout(BOUND).expect("frame 0");
    assert_eq!(held.seq(), 0);
    // Frame 0 is in slot 0; its writer is peer READERS (writers follow the readers).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(shm_path(&name))
        .unwrap();
    let mut b = [0u8; 8];
    file.read_at(&mut b, 160).unwrap();
    let meta_offset = u64::from_le_bytes(b);
    file.read_at(&mut b, meta_offset).unwrap();
    let full0 = (READERS << 4) | 2;
    assert_eq!(
        u64::from_le_bytes(b),
        full0,
        "slot 0 holds FULL(0) of the writer"
    );
    let writing1 = (1 << 16) | (READERS << 4) | 1;
    file.write_at(&writing1.to_le_bytes(), meta_offset).unwrap();
    kill_and_reap(child);
    let mut w = ring
        .writer()
        .expect("a new writer (the dead one is reclaimed)");
    for _ in 0..4 * SLOTS {
        write_frame(&mut w);
        assert!(check(0, held.as_bytes()), "the held frame was overwritten");
    }
    assert!(check(0, held.as_bytes()));
}

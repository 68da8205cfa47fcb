//! The crash matrix (`harness = false`: the victims are forked, and fork needs a
//! single-threaded parent).
//!
//! For each role, many trials: a victim process playing the role is killed with SIGKILL at a
//! random moment (a random number of microseconds after it attached, so kills land
//! mid-reserve, mid-write, mid-commit, while a read slot is held, while blocked: the rings have
//! 4 slots and the survivors are randomly slow), and the survivors must
//!
//! - never hang: every wait has a timeout, and a watchdog (SIGALRM, 60 s per trial) turns a
//!   hang into a failure;
//! - never read a torn or uncommitted frame: every frame carries its id in its first 8 bytes
//!   and a hash of the rest in its last 8, checked on every read (and again after a hold);
//! - lose no committed frame in lossless modes: a frame is committed once `commit` returned
//!   in the victim (it then publishes the count in shared memory; the one frame committed in
//!   the window before that store may or may not be there); block readers get exactly
//!   `0..=last` in order, queue frames are read once each by the readers (or counted in
//!   `RingStatus::lost`, the frame a killed reader held);
//! - be able to continue: a new writer or reader attaches and exchanges a frame; the ring is
//!   removed at the end, and nothing is left in `/dev/shm`, and no child process is left.
//!
//! Roles: `attaching-peer` (a reader or the writer of a lossless ring killed while it opens the
//! ring and attaches, or just after: its half-made peer entry is reclaimed, the writer does not
//! wait for it, a new peer takes its place), `broadcast-writer` (the reader lossless in even trials, drop-oldest in odd ones),
//! `broadcast-reader-block`, `drop-oldest-reader`, `queue-reader`, `queue-writer`,
//! `pool-worker` (a worker SIGKILLed mid-task: exactly its task fails with `WorkerDied`, the
//! pool goes on), `pool-parent` (the process owning a pool is SIGKILLed: its workers exit,
//! `PR_SET_PDEATHSIG`, and its status segment is removed like `shmflow gc` would).
//!
//! Detection time: from the moment `kill` returned to the moment the survivor noticed
//! (`WriterDied`; the dead reader's entry reclaimed; the dead worker gone from the pool;
//! all workers of a killed pool parent dead). The run ends with a table: role, trials,
//! median and max detection time.
//!
//! `cargo test --test crash_matrix` runs 50 trials per role; `-- --ignored` is the soak (2000
//! per role); `-- <role>...` runs only those roles. `SHMFLOW_CRASH_TRIALS` sets the trials and
//! `SHMFLOW_CRASH_SEED` the seed (printed at the start, to replay a failure).

mod common;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use common::{children, fork_child, unique_name, Child, Exit, RingGuard, SharedCounters};
use shmflow::process::WorkerPool;
use shmflow::{
    Backpressure, ExitReason, Mode, PoolError, RecvTimeoutError, ReserveTimeoutError, Ring,
    TaskErrorKind,
};

/// How often waiting endpoints check their peers.
const LIVENESS: Duration = Duration::from_millis(25);
/// Bytes per frame.
const FRAME: usize = 4096;
/// Slots per ring: few, so writers block too.
const SLOTS: u32 = 4;
/// "Does not hang": a dead peer must be noticed well within this.
const BOUND: Duration = Duration::from_secs(5);
/// Kills land this many microseconds (at most) after the victim attached (pool parent), or
/// after it attached plus up to one liveness interval (rings: the survivors check their peers
/// every interval, counted from when they attached; without the extra interval every kill
/// would fall at the same point of that cycle, and the detection times would all be close to
/// one interval).
const MAX_KILL_DELAY_US: u64 = 3000;

fn ring_kill_delay(rng: &mut Rng) -> Duration {
    Duration::from_micros(rng.below(MAX_KILL_DELAY_US + LIVENESS.as_micros() as u64))
}
/// Watchdog per trial.
const WATCHDOG_S: u32 = 60;

// ------------------------------------------------------------------------------- utilities

/// splitmix64: small, seedable, good enough to place kills.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// True with probability `percent` %.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn mix(x: u64) -> u64 {
    Rng(x).next()
}

/// Busy-waits (sleeping would round up to the timer slack).
fn spin_for(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

fn spin_us(us: u64) {
    spin_for(Duration::from_micros(us));
}

/// Forks a victim: it dies with the test process (`PR_SET_PDEATHSIG`), so a failing or
/// timed-out test leaves no process behind.
fn victim(f: impl FnOnce() -> i32) -> Child {
    fork_child(move || {
        // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number.
        unsafe {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            )
        };
        f()
    })
}

/// Kills the victim with SIGKILL and returns the moment `kill` returned; then reaps it and
/// checks it did not exit on its own before (its exit code says what it saw wrong).
fn kill_victim(mut child: Child, what: &str) -> Instant {
    child.kill(libc::SIGKILL);
    let t = Instant::now();
    match child.wait_timeout(Duration::from_secs(10)) {
        Exit::Signal(libc::SIGKILL) => {}
        other => panic!("{what}: the victim ended before the kill: {other:?} (see victim codes)"),
    }
    t
}

/// Waits until `flag` is non-zero (the victim attached), at most 10 s.
fn wait_flag(flag: &AtomicU64, what: &str) {
    let t = Instant::now();
    while flag.load(SeqCst) == 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "{what}: never ready");
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// Where each victim of the current role was when it was killed (index: the phase number).
static PHASES: [AtomicU64; 5] = [const { AtomicU64::new(0) }; 5];

/// The victim's current phase, in shared memory: it stores the phase before each step, the
/// parent reads it after the kill and counts it in [`PHASES`].
struct Phase(SharedCounters);

impl Phase {
    fn new() -> Phase {
        Phase(SharedCounters::new(1))
    }
    fn set(&self, p: u64) {
        self.0[0].store(p, SeqCst);
    }
    fn record(&self) {
        let p = self.0[0].load(SeqCst) as usize;
        PHASES[p.min(PHASES.len() - 1)].fetch_add(1, SeqCst);
    }
}

/// Phase names of writer and reader victims.
const WRITER_PHASES: [&str; 5] = ["attached", "reserve", "write", "commit", "committed"];
const READER_PHASES: [&str; 5] = ["attached", "recv", "holding", "-", "-"];
const ATTACH_PHASES: [&str; 5] = ["forked", "opening", "attaching", "attached", "-"];
const WORKER_PHASES: [&str; 5] = ["-", "between tasks", "mid-task", "-", "-"];
/// Pool parent: how many trials left the pool's status segment for gc to remove.
const OWNER_COUNTS: [&str; 5] = ["-", "status segments left for gc", "-", "-", "-"];

/// Whether process `pid` is gone or a zombie (it can do nothing any more).
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => matches!(
            s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next()),
            Some("Z") | Some("X") | Some("x")
        ),
    }
}

// ---------------------------------------------------------------------------------- frames

fn word(id: u64, k: usize) -> u64 {
    id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (k as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)
}

fn hash(b: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for c in b.chunks_exact(8) {
        h = (h ^ u64::from_le_bytes(c.try_into().unwrap())).wrapping_mul(0x100_0000_01b3);
        h ^= h >> 29;
    }
    h
}

/// Writes frame `id`: the id, the body, then (after `mid`, a chance to be killed mid-write)
/// the rest of the body and the hash.
fn fill_frame(id: u64, b: &mut [u8], mid: impl FnOnce()) {
    b[..8].copy_from_slice(&id.to_le_bytes());
    let words = (FRAME - 16) / 8;
    let half = words / 2;
    for k in 0..half {
        b[8 + 8 * k..16 + 8 * k].copy_from_slice(&word(id, k).to_le_bytes());
    }
    mid();
    for k in half..words {
        b[8 + 8 * k..16 + 8 * k].copy_from_slice(&word(id, k).to_le_bytes());
    }
    let h = hash(&b[..FRAME - 8]);
    b[FRAME - 8..].copy_from_slice(&h.to_le_bytes());
}

/// The id of a frame whose hash is right, or `None` for a torn or foreign frame.
fn frame_id(b: &[u8]) -> Option<u64> {
    if b.len() != FRAME {
        return None;
    }
    let h = u64::from_le_bytes(b[FRAME - 8..].try_into().unwrap());
    if h != hash(&b[..FRAME - 8]) {
        return None;
    }
    Some(u64::from_le_bytes(b[..8].try_into().unwrap()))
}

fn ring(name: &str, mode: Mode) -> Ring<u8> {
    Ring::<u8>::create(name)
        .shape([FRAME])
        .slots(SLOTS)
        .mode(mode)
        .max_readers(4)
        .max_writers(if mode == Mode::Queue { 2 } else { 1 })
        .build()
        .expect("create ring")
}

/// Victim exit codes (the victim saw something wrong before it was killed).
const BAD_FRAME: i32 = 3;
const TORN_WHILE_HELD: i32 = 4;
const BAD_SEQ: i32 = 5;
const CORRUPTED: i32 = 6;

// ----------------------------------------------------------------------------------- roles

/// What one trial measured.
type Trial = Duration;

/// Forks a writer victim for the writer roles: it attaches to ring `name`, sets `sh[0]`, then
/// reserves, fills (frame id = how many frames it committed before, which is also the frame's
/// sequence number in a fresh ring; pausing now and then mid-write) and commits frames until
/// it is killed, storing the count of committed frames in `sh[1]` after each commit.
fn writer_victim(name: &str, vseed: u64, sh: &SharedCounters, phase: &Phase) -> Child {
    victim(|| {
        let mut rng = Rng::new(vseed);
        let ring = Ring::<u8>::open(name).unwrap();
        let mut w = ring.writer().unwrap();
        w.set_liveness_interval(LIVENESS);
        sh[0].store(1, SeqCst);
        let mut id = 0u64;
        loop {
            phase.set(1);
            let mut s = w.reserve().unwrap();
            phase.set(2);
            let pause = if rng.chance(20) { rng.below(300) } else { 0 };
            fill_frame(id, s.as_mut_bytes(), || spin_us(pause));
            phase.set(3);
            s.commit();
            phase.set(4);
            id += 1;
            sh[1].store(id, SeqCst);
        }
    })
}

/// A broadcast writer is killed; the reader (in this process) drains exactly the committed
/// frames, then gets `WriterDied`; a new writer attaches and a frame goes through.
fn broadcast_writer(trial: u64, rng: &mut Rng) -> Trial {
    let lossless = trial.is_multiple_of(2);
    let mode = if lossless {
        Mode::Broadcast(Backpressure::Block)
    } else {
        Mode::Broadcast(Backpressure::DropOldest)
    };
    let name = unique_name("cm-bw");
    let guard = RingGuard(name.clone());
    let ring = ring(&name, mode);
    let mut reader = ring.reader().unwrap();
    reader.set_liveness_interval(LIVENESS);
    // [0] ready, [1] frames committed (commit returned)
    let sh = SharedCounters::new(2);
    let phase = Phase::new();
    let vseed = rng.next();
    let child = writer_victim(&name, vseed, &sh, &phase);
    wait_flag(&sh[0], "writer");
    let kill_at = Instant::now() + ring_kill_delay(rng);
    let mut child = Some(child);
    let mut killed: Option<(Instant, u64)> = None;
    let mut next = 0u64;
    let mut frames = 0u64;
    let detect = loop {
        if killed.is_none() && Instant::now() >= kill_at {
            let t = kill_victim(child.take().unwrap(), "broadcast writer");
            phase.record();
            killed = Some((t, sh[1].load(SeqCst)));
        }
        let timeout = if killed.is_some() {
            Duration::from_millis(20)
        } else {
            Duration::from_micros(200)
        };
        match reader.recv_timeout(timeout) {
            Ok(f) => {
                let id = frame_id(f.as_bytes()).unwrap_or_else(|| panic!("torn frame {}", f.seq()));
                assert_eq!(id, f.seq(), "frame content vs its sequence number");
                if lossless {
                    assert_eq!(f.seq(), next, "lossless reader: a gap");
                } else {
                    assert!(f.seq() >= next, "drop-oldest reader went backwards");
                    assert_eq!(f.missed(), f.seq() - next, "missed count vs the jump");
                }
                next = f.seq() + 1;
                frames += 1;
                // Slow down now and then, so the writer blocks on a full ring.
                if rng.chance(10) {
                    spin_us(rng.below(500));
                    assert_eq!(frame_id(f.as_bytes()), Some(id), "frame torn while held");
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if let Some((t, _)) = killed {
                    assert!(t.elapsed() < BOUND, "writer death not noticed in {BOUND:?}");
                }
            }
            Err(RecvTimeoutError::WriterDied { .. }) => {
                let (t, _) = killed.expect("WriterDied while the writer lives");
                break t.elapsed();
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!("a SIGKILLed writer was reported as a clean end (Disconnected)")
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    let (_, committed) = killed.unwrap();
    // Every committed frame was read (lossless), or at least the newest (drop-oldest); the
    // one frame committed in the window before the victim's report may be there too.
    if lossless {
        assert!(
            next == committed || next == committed + 1,
            "read 0..{next}, committed {committed}"
        );
        assert_eq!(frames, next);
    } else if committed > 0 {
        assert!(
            next == committed || next == committed + 1,
            "newest read {next}, committed {committed}"
        );
    }
    // A new writer attaches; its frame arrives; its detach disconnects the reader again.
    let mut w = ring.writer().expect("a new writer attaches");
    let mut s = w
        .reserve_timeout(BOUND)
        .expect("the new writer gets a slot");
    let seq = s.seq();
    assert!(seq >= next);
    fill_frame(seq, s.as_mut_bytes(), || {});
    s.commit();
    {
        let f = reader.recv_timeout(BOUND).expect("the new writer's frame");
        assert_eq!((f.seq(), frame_id(f.as_bytes())), (seq, Some(seq)));
    }
    drop(w);
    assert_eq!(
        reader.recv_timeout(BOUND).map(|f| f.seq()),
        Err(RecvTimeoutError::Disconnected)
    );
    drop(reader);
    drop(ring);
    drop(guard);
    assert!(!common::shm_path(&name).exists(), "segment left behind");
    detect
}

/// A broadcast reader (lossless, or drop-oldest) is killed; the writer and a live reader (in
/// this process) go on: the dead reader is reclaimed, the live one sees every frame (block) or
/// a consistent subset (drop-oldest), and a new reader attaches.
fn broadcast_reader(trial: u64, rng: &mut Rng, mode: Mode) -> Trial {
    let _ = trial;
    let lossless = mode == Mode::Broadcast(Backpressure::Block);
    let name = unique_name("cm-br");
    let guard = RingGuard(name.clone());
    let ring = ring(&name, mode);
    let mut live = ring.reader().unwrap();
    live.set_liveness_interval(LIVENESS);
    let mut w = ring.writer().unwrap();
    w.set_liveness_interval(LIVENESS);
    // [0] ready
    let sh = SharedCounters::new(1);
    let phase = Phase::new();
    let vseed = rng.next();
    let child = victim(|| {
        let mut rng = Rng::new(vseed);
        let ring = Ring::<u8>::open(&name).unwrap();
        let mut r = ring.reader().unwrap();
        r.set_liveness_interval(LIVENESS);
        sh[0].store(1, SeqCst);
        let mut next = 0u64;
        loop {
            phase.set(1);
            match r.recv_timeout(Duration::from_secs(1)) {
                Ok(f) => {
                    phase.set(2);
                    let Some(id) = frame_id(f.as_bytes()) else {
                        return BAD_FRAME;
                    };
                    if id != f.seq() || (lossless && next != 0 && f.seq() != next) {
                        return BAD_SEQ;
                    }
                    next = f.seq() + 1;
                    // Hold the read slot for a while now and then.
                    if rng.chance(30) {
                        spin_us(rng.below(600));
                        if frame_id(f.as_bytes()) != Some(id) {
                            return TORN_WHILE_HELD;
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return 0,
                Err(_) => return CORRUPTED,
            }
        }
    });
    wait_flag(&sh[0], "reader");
    let victim_pid = child.pid as u32;
    let kill_at = Instant::now() + ring_kill_delay(rng);
    let mut child = Some(child);
    let mut killed: Option<Instant> = None;
    let mut detect: Option<Duration> = None;
    let mut written = 0u64;
    let mut after = 0u64;
    let mut next = 0u64;
    loop {
        if killed.is_none() && Instant::now() >= kill_at {
            killed = Some(kill_victim(child.take().unwrap(), "broadcast reader"));
            phase.record();
        }
        if let Some(t) = killed {
            if detect.is_none() {
                if ring.status().readers.iter().all(|p| p.pid != victim_pid) {
                    detect = Some(t.elapsed());
                } else {
                    assert!(
                        t.elapsed() < BOUND,
                        "dead reader not reclaimed in {BOUND:?}"
                    );
                }
            }
        }
        if detect.is_some() && after >= 2 * u64::from(SLOTS) {
            break;
        }
        // Pause now and then, so the victim blocks in recv.
        if rng.chance(5) {
            spin_us(rng.below(500));
        }
        match w.reserve_timeout(Duration::from_millis(2)) {
            Ok(mut s) => {
                let seq = s.seq();
                assert_eq!(seq, written);
                fill_frame(seq, s.as_mut_bytes(), || {});
                s.commit();
                written += 1;
                if detect.is_some() {
                    after += 1;
                }
            }
            Err(ReserveTimeoutError::Timeout) => {}
            Err(e) => panic!("{e:?}"),
        }
        // The live reader drains (waiting a little when nothing is there: a waiting endpoint
        // is what reclaims a dead drop-oldest reader).
        loop {
            match live.recv_timeout(Duration::from_micros(100)) {
                Ok(f) => {
                    let id = frame_id(f.as_bytes()).expect("live reader: torn frame");
                    assert_eq!(id, f.seq());
                    if lossless {
                        assert_eq!(f.seq(), next, "live lossless reader: a gap");
                    } else {
                        assert!(f.seq() >= next);
                        assert_eq!(f.missed(), f.seq() - next);
                    }
                    next = f.seq() + 1;
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(e) => panic!("live reader: {e:?}"),
            }
        }
    }
    assert_eq!(next, written, "the live reader got to the last frame");
    // A new reader attaches and gets the next frame, as does the live one.
    let mut r2 = ring.reader().expect("a new reader attaches");
    let mut s = w
        .reserve_timeout(BOUND)
        .expect("slot for the new reader's frame");
    let seq = s.seq();
    fill_frame(seq, s.as_mut_bytes(), || {});
    s.commit();
    for r in [&mut live, &mut r2] {
        let f = r
            .recv_timeout(BOUND)
            .expect("frame after the new reader attached");
        assert_eq!((f.seq(), frame_id(f.as_bytes())), (seq, Some(seq)));
    }
    drop((r2, live, w, ring, guard));
    assert!(!common::shm_path(&name).exists(), "segment left behind");
    detect.unwrap()
}

/// A queue reader is killed (maybe holding a frame); the writer and a live reader (here) go
/// on. Every committed frame is read exactly once by the two readers, except the frame the
/// dead reader held if it had not reported it yet, which `RingStatus::lost` counts.
fn queue_reader(_trial: u64, rng: &mut Rng) -> Trial {
    const N: u64 = 300;
    let name = unique_name("cm-qr");
    let guard = RingGuard(name.clone());
    let ring = ring(&name, Mode::Queue);
    let mut live = ring.reader().unwrap();
    live.set_liveness_interval(LIVENESS);
    let mut w = ring.writer().unwrap();
    w.set_liveness_interval(LIVENESS);
    // [0] ready, [1..=N] times frame i-1 was read by the victim
    let sh = SharedCounters::new(N as usize + 1);
    let phase = Phase::new();
    let vseed = rng.next();
    let child = victim(|| {
        let mut rng = Rng::new(vseed);
        let ring = Ring::<u8>::open(&name).unwrap();
        let mut r = ring.reader().unwrap();
        r.set_liveness_interval(LIVENESS);
        sh[0].store(1, SeqCst);
        loop {
            phase.set(1);
            match r.recv_timeout(Duration::from_secs(1)) {
                Ok(f) => {
                    phase.set(2);
                    let Some(id) = frame_id(f.as_bytes()) else {
                        return BAD_FRAME;
                    };
                    if id >= N {
                        return BAD_SEQ;
                    }
                    if rng.chance(30) {
                        spin_us(rng.below(600));
                        if frame_id(f.as_bytes()) != Some(id) {
                            return TORN_WHILE_HELD;
                        }
                    }
                    sh[1 + id as usize].fetch_add(1, SeqCst);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return 0,
                Err(_) => return CORRUPTED,
            }
        }
    });
    wait_flag(&sh[0], "queue reader");
    let victim_pid = child.pid as u32;
    let kill_at = Instant::now() + ring_kill_delay(rng);
    let mut child = Some(child);
    let mut killed: Option<Instant> = None;
    let mut detect: Option<Duration> = None;
    let mut written = 0u64;
    let mut seen = vec![0u64; N as usize];
    let take = |f: shmflow::ReadSlot<u8>, seen: &mut Vec<u64>| {
        let id = frame_id(f.as_bytes()).expect("live queue reader: torn frame");
        assert!(id < N);
        seen[id as usize] += 1;
    };
    loop {
        if killed.is_none() && Instant::now() >= kill_at {
            killed = Some(kill_victim(child.take().unwrap(), "queue reader"));
            phase.record();
        }
        if let Some(t) = killed {
            if detect.is_none() {
                if ring.status().readers.iter().all(|p| p.pid != victim_pid) {
                    detect = Some(t.elapsed());
                } else {
                    assert!(
                        t.elapsed() < BOUND,
                        "dead reader not reclaimed in {BOUND:?}"
                    );
                }
            }
        }
        if detect.is_some() && written == N {
            break;
        }
        if written < N {
            match w.reserve_timeout(Duration::from_micros(200)) {
                Ok(mut s) => {
                    fill_frame(written, s.as_mut_bytes(), || {});
                    s.commit();
                    written += 1;
                }
                Err(ReserveTimeoutError::Timeout) => {}
                Err(e) => panic!("{e:?}"),
            }
        }
        // The live reader takes a frame now and then (waiting a little if there is none).
        if rng.chance(50) || killed.is_some() {
            match live.recv_timeout(Duration::from_micros(100)) {
                Ok(f) => take(f, &mut seen),
                Err(RecvTimeoutError::Timeout) => {}
                Err(e) => panic!("live reader: {e:?}"),
            }
        }
    }
    // The writer leaves; the live reader drains the rest, then gets Disconnected.
    drop(w);
    loop {
        match live.recv_timeout(BOUND) {
            Ok(f) => take(f, &mut seen),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("draining: {e:?}"),
        }
    }
    let lost = ring.status().lost;
    assert!(lost <= 1, "lost {lost}: only the victim's frame may be");
    let mut missing = 0;
    for (id, mine) in seen.iter().enumerate() {
        let n = mine + sh[1 + id].load(SeqCst);
        assert!(n <= 1, "frame {id} read {n} times");
        missing += u64::from(n == 0);
    }
    assert!(
        missing <= lost,
        "{missing} committed frames never read, {lost} counted lost"
    );
    // A new writer and a new reader exchange a frame.
    drop(live);
    let mut r2 = ring.reader().expect("a new reader attaches");
    let mut w2 = ring.writer().expect("a new writer attaches");
    let mut s = w2.reserve_timeout(BOUND).expect("queue slot");
    fill_frame(N, s.as_mut_bytes(), || {});
    s.commit();
    {
        let f = r2.recv_timeout(BOUND).expect("frame through the queue");
        assert_eq!(frame_id(f.as_bytes()), Some(N));
    }
    drop((w2, r2, ring, guard));
    assert!(!common::shm_path(&name).exists(), "segment left behind");
    detect.unwrap()
}

/// A queue writer is killed; the reader (here) gets exactly the committed frames, in order,
/// once each, then `WriterDied`; a new writer attaches and its frame arrives.
fn queue_writer(_trial: u64, rng: &mut Rng) -> Trial {
    let name = unique_name("cm-qw");
    let guard = RingGuard(name.clone());
    let ring = ring(&name, Mode::Queue);
    let mut reader = ring.reader().unwrap();
    reader.set_liveness_interval(LIVENESS);
    // [0] ready, [1] frames committed
    let sh = SharedCounters::new(2);
    let phase = Phase::new();
    let vseed = rng.next();
    let child = writer_victim(&name, vseed, &sh, &phase);
    wait_flag(&sh[0], "queue writer");
    let kill_at = Instant::now() + ring_kill_delay(rng);
    let mut child = Some(child);
    let mut killed: Option<(Instant, u64)> = None;
    let mut next = 0u64;
    let detect = loop {
        if killed.is_none() && Instant::now() >= kill_at {
            let t = kill_victim(child.take().unwrap(), "queue writer");
            phase.record();
            killed = Some((t, sh[1].load(SeqCst)));
        }
        let timeout = if killed.is_some() {
            Duration::from_millis(20)
        } else {
            Duration::from_micros(200)
        };
        match reader.recv_timeout(timeout) {
            Ok(f) => {
                let id = frame_id(f.as_bytes()).expect("torn queue frame");
                assert_eq!(id, next, "queue frames out of order, lost or repeated");
                next += 1;
                if rng.chance(10) {
                    spin_us(rng.below(500));
                    assert_eq!(frame_id(f.as_bytes()), Some(id), "frame torn while held");
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if let Some((t, _)) = killed {
                    assert!(t.elapsed() < BOUND, "writer death not noticed in {BOUND:?}");
                }
            }
            Err(RecvTimeoutError::WriterDied { .. }) => {
                let (t, _) = killed.expect("WriterDied while the writer lives");
                break t.elapsed();
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!("a SIGKILLed writer was reported as a clean end (Disconnected)")
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    let (_, committed) = killed.unwrap();
    assert!(
        next == committed || next == committed + 1,
        "read 0..{next}, committed {committed}"
    );
    let mut w = ring.writer().expect("a new writer attaches");
    let mut s = w.reserve_timeout(BOUND).expect("queue slot");
    fill_frame(next, s.as_mut_bytes(), || {});
    s.commit();
    {
        let f = reader.recv_timeout(BOUND).expect("the new writer's frame");
        assert_eq!(frame_id(f.as_bytes()), Some(next));
    }
    drop(w);
    assert_eq!(
        reader.recv_timeout(BOUND).map(|f| f.seq()),
        Err(RecvTimeoutError::Disconnected)
    );
    drop((reader, ring, guard));
    assert!(!common::shm_path(&name).exists(), "segment left behind");
    detect
}

/// The task of the pool roles: a busy wait of 50..450 µs, recorded in shared memory (worker
/// `w`: word `2w` = the index + 1 of the task it started last, `2w + 1` of the one it
/// finished last).
fn pool_task(rec: &'static SharedCounters, w: usize, x: u64) -> u64 {
    rec[2 * w].store(x + 1, SeqCst);
    spin_us(50 + mix(x) % 400);
    rec[2 * w + 1].store(x + 1, SeqCst);
    mix(x)
}

/// A pool worker is killed (mid-task, usually): exactly its task fails with `WorkerDied`
/// (SIGKILL), every other result is right, the pool replaces the worker and goes on. One pool
/// serves all trials.
struct PoolWorkerRole {
    pool: WorkerPool<shmflow::process::FnTaskOf<u64, u64, (), (), PoolFn>>,
    rec: &'static SharedCounters,
}

type PoolFn = Box<dyn Fn(&mut (), &shmflow::process::WorkerInfo, u64) -> u64 + Send + Sync>;

impl PoolWorkerRole {
    fn new() -> PoolWorkerRole {
        let rec: &'static SharedCounters = Box::leak(Box::new(SharedCounters::new(4)));
        let f: PoolFn = Box::new(move |_: &mut (), w, x| pool_task(rec, w.id, x));
        let pool = WorkerPool::builder()
            .workers(2)
            .chunk_size(1)
            .build(f)
            .expect("pool");
        PoolWorkerRole { pool, rec }
    }

    fn trial(&self, trial: u64, rng: &mut Rng) -> Trial {
        const M: u64 = 40;
        let pool = &self.pool;
        pool.start().expect("workers ready");
        let base = trial * 1000;
        let kill_after = 2 + rng.below(15);
        let id = rng.below(2) as usize;
        let pid = pool.insights()[id].pid;
        assert_ne!(pid, 0);
        let mut results = Vec::new();
        let mut killed: Option<Instant> = None;
        let mut detect: Option<Duration> = None;
        let mut record = (0, 0);
        for (k, r) in pool.imap(base..base + M).enumerate() {
            results.push(r);
            if k as u64 == kill_after {
                // Mostly mid-task: wait (briefly) for the victim to be in a task, then kill
                // it somewhere in it; otherwise at once, wherever it is.
                if rng.chance(75) {
                    let t = Instant::now();
                    while t.elapsed() < Duration::from_millis(5) {
                        let (s, f) = (
                            self.rec[2 * id].load(SeqCst),
                            self.rec[2 * id + 1].load(SeqCst),
                        );
                        if s > base && s != f {
                            break;
                        }
                        std::hint::spin_loop();
                    }
                    spin_us(rng.below(200));
                }
                // SAFETY: signalling a worker process of our pool.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                let t = Instant::now();
                killed = Some(t);
                // Wait for it to be dead (the pool reaps it only when it next looks), then
                // read what it was doing.
                while !dead(pid) {
                    assert!(t.elapsed() < BOUND, "SIGKILLed worker still alive");
                    std::hint::spin_loop();
                }
                record = (
                    self.rec[2 * id].load(SeqCst),
                    self.rec[2 * id + 1].load(SeqCst),
                );
            }
            if let (Some(t), None) = (killed, detect) {
                if !pool.pids().contains(&pid) {
                    detect = Some(t.elapsed());
                }
            }
        }
        let t = killed.expect("the kill happened");
        while detect.is_none() {
            // The job ended before the pool looked at the dead worker: the next job does.
            assert!(t.elapsed() < BOUND, "dead worker not noticed in {BOUND:?}");
            assert_eq!(pool.map([base + 999]).expect("map"), vec![mix(base + 999)]);
            if !pool.pids().contains(&pid) {
                detect = Some(t.elapsed());
            }
        }
        assert_eq!(results.len() as u64, M);
        let mut failed = Vec::new();
        for (i, r) in results.into_iter().enumerate() {
            let x = base + i as u64;
            match r {
                Ok(v) => assert_eq!(v, mix(x), "task {x}"),
                Err(PoolError::Task(e)) => {
                    assert_eq!(e.index, i as u64);
                    assert_eq!(e.worker, id, "a task of the other worker failed");
                    match &e.kind {
                        TaskErrorKind::WorkerDied {
                            reason: ExitReason::Signaled { name, .. },
                        } => assert_eq!(name, "SIGKILL"),
                        other => panic!("task {x}: {other:?}"),
                    }
                    failed.push(x);
                }
                Err(e) => panic!("task {x}: {e:?}"),
            }
        }
        let (started, finished) = record;
        let mid_task = started > base && started <= base + M && finished != started;
        PHASES[if mid_task { 2 } else { 1 }].fetch_add(1, SeqCst);
        if mid_task {
            assert_eq!(
                failed,
                vec![started - 1],
                "killed in task {}: exactly it fails",
                started - 1
            );
        } else {
            // Killed between tasks: at most the task it was about to start fails.
            assert!(failed.len() <= 1, "failed {failed:?}");
        }
        assert_eq!(pool.pids().len(), 2, "the dead worker was replaced");
        detect.unwrap()
    }

    fn finish(self) {
        let out = self.pool.map(0..200u64).expect("the pool goes on");
        assert_eq!(out, (0..200).map(mix).collect::<Vec<_>>());
        assert_eq!(self.pool.shutdown().len(), 2);
    }
}

/// The process that owns a pool is killed: its workers exit (parent-death signal) within the
/// bound; its status segment is left for `shmflow gc`, which removes it (here: by name).
fn pool_parent(_trial: u64, rng: &mut Rng) -> Trial {
    // [0] ready, [1], [2] worker pids
    let sh = SharedCounters::new(3);
    let child = victim(|| {
        let pool = WorkerPool::builder()
            .workers(2)
            .chunk_size(1)
            .build(|_: &mut (), _, x: u64| {
                spin_us(50 + mix(x) % 300);
                mix(x)
            })
            .expect("pool in the victim");
        pool.start().expect("workers ready");
        for (k, i) in pool.insights().iter().enumerate() {
            sh[1 + k].store(u64::from(i.pid), SeqCst);
        }
        sh[0].store(1, SeqCst);
        loop {
            let _ = pool.map(0..50u64);
        }
    });
    let owner = child.pid as u32;
    wait_flag(&sh[0], "pool parent");
    let workers = [sh[1].load(SeqCst) as u32, sh[2].load(SeqCst) as u32];
    assert!(workers.iter().all(|&p| p != 0));
    spin_us(rng.below(MAX_KILL_DELAY_US));
    let t = kill_victim(child, "pool parent");
    // Replacement workers may have been forked in the meantime: any child of the victim
    // that the table does not know is covered by the same parent-death signal; the ones we
    // know must go.
    while !workers.iter().all(|&p| dead(p)) {
        assert!(t.elapsed() < BOUND, "workers of a killed pool still alive");
        std::thread::sleep(Duration::from_micros(200));
    }
    let detect = t.elapsed();
    // Clean-up as `shmflow gc` does it: the pool status segment of a dead pid is removed.
    let prefix = format!("pool-{owner}-");
    let left: Vec<String> = shmflow::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.len() <= 1, "segments left: {left:?}");
    PHASES[1].fetch_add(left.len() as u64, SeqCst);
    for n in &left {
        Ring::<u8>::remove(n).expect("remove the dead pool's status segment");
    }
    assert!(shmflow::list()
        .unwrap()
        .iter()
        .all(|n| !n.starts_with(&prefix)));
    detect
}

// ------------------------------------------------------------------------------------ main

/// A victim is killed while it opens the ring and attaches (or just after): even trials a
/// reader of a lossless broadcast ring, odd trials its writer. The ring has room for exactly
/// the survivors plus the victim (2 readers, 1 writer), so a half-made peer entry that is
/// never reclaimed shows up as a refused attach. Survivors: the writer goes on (it must not
/// wait for a reader that never finished attaching), a new reader or writer attaches within
/// the bound, and frames go through unharmed.
fn attaching(trial: u64, rng: &mut Rng) -> Trial {
    let victim_writes = trial % 2 == 1;
    let name = unique_name("cm-at");
    let guard = RingGuard(name.clone());
    let ring = Ring::<u8>::create(&name)
        .shape([FRAME])
        .slots(SLOTS)
        .mode(Mode::Broadcast(Backpressure::Block))
        .max_readers(2)
        .max_writers(1)
        .build()
        .expect("create ring");
    let mut live = ring.reader().unwrap();
    live.set_liveness_interval(LIVENESS);
    let mut w = if victim_writes {
        None
    } else {
        let mut w = ring.writer().unwrap();
        w.set_liveness_interval(LIVENESS);
        Some(w)
    };
    let phase = Phase::new();
    let child = victim(|| {
        phase.set(1);
        let ring = match Ring::<u8>::open(&name) {
            Ok(r) => r,
            Err(_) => return CORRUPTED,
        };
        phase.set(2);
        if victim_writes {
            let Ok(mut w) = ring.writer() else {
                return CORRUPTED;
            };
            phase.set(3);
            loop {
                match w.reserve_timeout(Duration::from_secs(1)) {
                    Ok(mut s) => {
                        let seq = s.seq();
                        fill_frame(seq, s.as_mut_bytes(), || {});
                        s.commit();
                    }
                    Err(ReserveTimeoutError::Timeout) => {}
                    Err(_) => return CORRUPTED,
                }
            }
        } else {
            let Ok(mut r) = ring.reader() else {
                return CORRUPTED;
            };
            phase.set(3);
            loop {
                match r.recv_timeout(Duration::from_secs(1)) {
                    Ok(f) => {
                        if frame_id(f.as_bytes()) != Some(f.seq()) {
                            return BAD_FRAME;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return 0,
                    Err(_) => return CORRUPTED,
                }
            }
        }
    });
    let victim_pid = child.pid as u32;
    // Once the victim runs, opening and attaching take some tens to hundreds of
    // microseconds: kills spread over a little more than that land before, inside and after
    // the attach (now and then before the victim even started).
    // Opening (mapping and validating) takes longer than attaching, so most kills wait for
    // the victim to have opened the ring first.
    let wait_for = match rng.below(10) {
        0 => 0,
        1..=3 => 1,
        _ => 2,
    };
    let t = Instant::now();
    while phase.0[0].load(SeqCst) < wait_for {
        assert!(t.elapsed() < BOUND, "attaching peer: never got there");
        std::hint::spin_loop();
    }
    spin_us(rng.below(if wait_for == 2 { 8 } else { 600 }));
    let killed = kill_victim(child, "attaching peer");
    phase.record();
    // The live reader checks every frame it gets (the victim writer's ones too).
    let mut next = 0u64;
    let mut drain = |live: &mut shmflow::Reader<u8>, wait: Duration| loop {
        match live.recv_timeout(wait) {
            Ok(f) => {
                assert_eq!(
                    frame_id(f.as_bytes()),
                    Some(f.seq()),
                    "live reader: torn frame"
                );
                assert_eq!(f.seq(), next, "live lossless reader: a gap");
                next = f.seq() + 1;
            }
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("live reader: {e:?}"),
        }
    };
    let detect;
    if victim_writes {
        // A new writer must get the one writer place.
        let mut nw = loop {
            match ring.writer() {
                Ok(nw) => break nw,
                Err(e) => {
                    assert!(
                        killed.elapsed() < BOUND,
                        "dead attaching writer's place not reclaimed in {BOUND:?}: {e:?}"
                    );
                    drain(&mut live, Duration::from_millis(1));
                    ring.reclaim_dead_peers();
                }
            }
        };
        detect = killed.elapsed();
        drain(&mut live, Duration::from_millis(1));
        nw.set_liveness_interval(LIVENESS);
        w = Some(nw);
    } else {
        // The writer goes on; the dead reader's entry (whole or half-made) goes away.
        let w = w.as_mut().unwrap();
        let mut found: Option<Duration> = None;
        let mut after = 0;
        while found.is_none() || after < 2 * SLOTS {
            if found.is_none() {
                if ring.status().readers.iter().all(|p| p.pid != victim_pid) {
                    found = Some(killed.elapsed());
                } else {
                    assert!(
                        killed.elapsed() < BOUND,
                        "dead attaching reader not reclaimed in {BOUND:?}"
                    );
                }
            }
            match w.reserve_timeout(Duration::from_millis(2)) {
                Ok(mut s) => {
                    let seq = s.seq();
                    fill_frame(seq, s.as_mut_bytes(), || {});
                    s.commit();
                    if found.is_some() {
                        after += 1;
                    }
                }
                Err(ReserveTimeoutError::Timeout) => {}
                Err(e) => panic!("{e:?}"),
            }
            drain(&mut live, Duration::from_micros(100));
        }
        detect = found.unwrap();
    }
    // The victim's place is free again: a second reader attaches, and a frame reaches both.
    let mut r2 = ring
        .reader()
        .expect("a new reader attaches in the victim's place");
    let w = w.as_mut().unwrap();
    let mut s = w.reserve_timeout(BOUND).expect("slot for the last frame");
    let seq = s.seq();
    fill_frame(seq, s.as_mut_bytes(), || {});
    s.commit();
    let f = r2.recv_timeout(BOUND).expect("the new reader's frame");
    assert_eq!((f.seq(), frame_id(f.as_bytes())), (seq, Some(seq)));
    drop(f);
    drain(&mut live, Duration::from_millis(5));
    assert_eq!(next, seq + 1, "the live reader got every frame");
    drop((r2, live));
    drop(ring);
    drop(guard);
    assert!(!common::shm_path(&name).exists(), "segment left behind");
    detect
}

const ROLES: [&str; 8] = [
    "attaching-peer",
    "broadcast-writer",
    "broadcast-reader-block",
    "drop-oldest-reader",
    "queue-reader",
    "queue-writer",
    "pool-worker",
    "pool-parent",
];

static WATCH_ROLE: AtomicUsize = AtomicUsize::new(0);
static WATCH_TRIAL: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_alarm(_: libc::c_int) {
    // Only async-signal-safe calls: write and _exit, with the digits formatted by hand.
    let mut buf = [0u8; 160];
    let mut n = 0;
    let mut put = |s: &[u8]| {
        for &b in s {
            if n < buf.len() {
                buf[n] = b;
                n += 1;
            }
        }
    };
    put(b"\ncrash_matrix: WATCHDOG: a trial hung; role ");
    let role = WATCH_ROLE.load(SeqCst);
    put(ROLES.get(role).map_or(b"?".as_slice(), |r| r.as_bytes()));
    put(b", trial ");
    let mut t = WATCH_TRIAL.load(SeqCst);
    let mut digits = [0u8; 20];
    let mut k = digits.len();
    loop {
        k -= 1;
        digits[k] = b'0' + (t % 10) as u8;
        t /= 10;
        if t == 0 {
            break;
        }
    }
    put(&digits[k..]);
    put(b"\n");
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `buf` is a live local array.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), n);
        libc::_exit(2);
    }
}

fn median_max(v: &mut [Duration]) -> (Duration, Duration) {
    v.sort_unstable();
    (v[v.len() / 2], v[v.len() - 1])
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let soak = args
        .iter()
        .any(|a| a == "--ignored" || a == "--include-ignored");
    let wanted: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let trials: u64 = std::env::var("SHMFLOW_CRASH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if soak { 2000 } else { 50 });
    let seed: u64 = std::env::var("SHMFLOW_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!(
        "crash_matrix: {trials} trials per role{}, seed {seed} (replay: SHMFLOW_CRASH_SEED={seed}), \
         liveness interval {LIVENESS:?}, {SLOTS} slots of {FRAME} bytes",
        if soak { " (soak)" } else { "" }
    );
    // SAFETY: installs a handler that only calls async-signal-safe functions.
    unsafe { libc::signal(libc::SIGALRM, on_alarm as *const () as libc::sighandler_t) };
    let pid = std::process::id();
    let started = Instant::now();
    let mut table = Vec::new();
    let mut failed = 0;
    for (ri, role) in ROLES.iter().enumerate() {
        if !wanted.is_empty() && !wanted.iter().any(|w| role.contains(w.as_str())) {
            continue;
        }
        WATCH_ROLE.store(ri, SeqCst);
        for p in &PHASES {
            p.store(0, SeqCst);
        }
        let t = Instant::now();
        let result = std::panic::catch_unwind(|| {
            let mut detect = Vec::new();
            let pool = (*role == "pool-worker").then(PoolWorkerRole::new);
            for trial in 0..trials {
                WATCH_TRIAL.store(trial, SeqCst);
                // SAFETY: alarm only arms a timer.
                unsafe { libc::alarm(WATCHDOG_S) };
                let mut rng = Rng::new(seed ^ ((ri as u64) << 56) ^ mix(trial));
                let d = match *role {
                    "attaching-peer" => attaching(trial, &mut rng),
                    "broadcast-writer" => broadcast_writer(trial, &mut rng),
                    "broadcast-reader-block" => {
                        broadcast_reader(trial, &mut rng, Mode::Broadcast(Backpressure::Block))
                    }
                    "drop-oldest-reader" => {
                        broadcast_reader(trial, &mut rng, Mode::Broadcast(Backpressure::DropOldest))
                    }
                    "queue-reader" => queue_reader(trial, &mut rng),
                    "queue-writer" => queue_writer(trial, &mut rng),
                    "pool-worker" => pool.as_ref().unwrap().trial(trial, &mut rng),
                    "pool-parent" => pool_parent(trial, &mut rng),
                    _ => unreachable!(),
                };
                // SAFETY: alarm only disarms the timer.
                unsafe { libc::alarm(0) };
                detect.push(d);
            }
            if let Some(p) = pool {
                p.finish();
            }
            detect
        });
        match result {
            Ok(mut detect) => {
                let (med, max) = median_max(&mut detect);
                println!(
                    "role {role} ... ok ({} trials in {:.2?})",
                    detect.len(),
                    t.elapsed()
                );
                let labels = match *role {
                    "broadcast-writer" | "queue-writer" => Some(WRITER_PHASES),
                    "pool-worker" => Some(WORKER_PHASES),
                    "pool-parent" => Some(OWNER_COUNTS),
                    "attaching-peer" => Some(ATTACH_PHASES),
                    _ => Some(READER_PHASES),
                };
                let kills = labels.map_or_else(String::new, |labels| {
                    labels
                        .iter()
                        .zip(&PHASES)
                        .filter(|(l, _)| **l != "-")
                        .map(|(l, n)| format!("{l} {}", n.load(SeqCst)))
                        .collect::<Vec<_>>()
                        .join(", ")
                });
                table.push((*role, detect.len(), med, max, kills));
            }
            Err(_) => {
                failed += 1;
                println!(
                    "role {role} ... FAILED at trial {} (replay: SHMFLOW_CRASH_SEED={seed} \
                     cargo test --test crash_matrix -- {role})",
                    WATCH_TRIAL.load(SeqCst)
                );
            }
        }
    }
    // SAFETY: alarm only disarms the timer.
    unsafe { libc::alarm(0) };
    // Nothing left behind: no child (alive or zombie), no segment of ours.
    let t = Instant::now();
    while !children().is_empty() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let kids = children();
    if !kids.is_empty() {
        println!("children left: {kids:?}");
        failed += 1;
    }
    let tag = format!("-{pid}-");
    let segs: Vec<String> = shmflow::list()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.contains(&tag))
        .collect();
    if !segs.is_empty() {
        println!("segments left: {segs:?}");
        failed += 1;
    }
    println!(
        "\n{:<24} {:>7} {:>17} {:>14}  victim killed while (pool-parent: segments left)",
        "role", "trials", "detect_median_ms", "detect_max_ms"
    );
    for (role, n, med, max, kills) in &table {
        println!(
            "{role:<24} {n:>7} {:>17.1} {:>14.1}  {kills}",
            med.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3
        );
    }
    println!(
        "\ntest result: {}. {} roles passed; {failed} failed; total {:.2?}\n",
        if failed == 0 { "ok" } else { "FAILED" },
        table.len(),
        started.elapsed()
    );
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

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
//! `PR_SET_PDEATHSIG`, and its status segment is removed like `shmflow gc` would),
//! `pidns-peer` (the victim lives in a pid namespace of its own, spawned with `unshare --pid
//! --fork --mount-proc` running this binary again, pid 1 there: the writer of a lossless ring
//! in even trials, one of its readers in odd ones; while it lives it must be seen alive and
//! must see the survivors alive, although each side keeps the other waiting for two liveness
//! intervals; once SIGKILLed it is reclaimed like any peer; half as many trials, since each
//! runs `unshare`; skipped, with a message saying why, where `unshare` cannot make a pid
//! namespace), `multi-held-reader` (a lossless reader with `max_held(3)` killed holding 2 or
//! 3 frames, with the writer stuck on it: the writer resumes, the two other readers lose
//! nothing).
//!
//! Detection time: from the moment `kill` returned to the moment the survivor noticed
//! (`WriterDied`; the dead reader's entry reclaimed; the dead worker gone from the pool;
//! all workers of a killed pool parent dead; `multi-held-reader`: the stuck writer's next
//! slot). Only a generous bound (5 s, to catch hangs) is asserted on it. The run ends with a
//! table: role, trials, median and max detection time, and where the victims were.
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
/// A victim reader got `WriterDied` or `Disconnected` while the writer lived.
const WRITER_TAKEN_FOR_DEAD: i32 = 7;
/// `Reader::held` disagrees with the frames the victim holds.
const HELD_MISCOUNT: i32 = 8;
/// A re-executed victim was given a role or arguments it does not know.
const BAD_ARGS: i32 = 9;

// ----------------------------------------------------------------------------------- roles

/// What one trial measured.
type Trial = Duration;

/// Forks a writer victim for the writer roles: it attaches to ring `name`, sets `sh[0]`, then
/// reserves, fills (frame id = how many frames it committed before, which is also the frame's
/// sequence number in a fresh ring; pausing now and then mid-write) and commits frames until
/// it is killed, storing the count of committed frames in `sh[1]` after each commit.
fn writer_victim(name: &str, vseed: u64, sh: &SharedCounters, phase: &Phase) -> Child {
    victim(|| writer_loop(name, vseed, Some((sh, phase)), None))
}

/// What a writer victim runs, forked ([`writer_victim`]: `report` is its shared counters and
/// phase) or re-executed in another pid namespace (`pidns-peer`: no shared memory, `None`;
/// the survivors learn what it committed from the ring). With `stall: Some(k)` it also
/// sleeps [`STALL`] once, after committing `k` frames: the reader waits for it, alive, over
/// more than one liveness interval. Returns only on an error (the exit code).
fn writer_loop(
    name: &str,
    vseed: u64,
    report: Option<(&SharedCounters, &Phase)>,
    stall: Option<u64>,
) -> i32 {
    let mut rng = Rng::new(vseed);
    let Ok(ring) = Ring::<u8>::open(name) else {
        return CORRUPTED;
    };
    let Ok(mut w) = ring.writer() else {
        return CORRUPTED;
    };
    w.set_liveness_interval(LIVENESS);
    let set_phase = |p| {
        if let Some((_, phase)) = report {
            phase.set(p);
        }
    };
    if let Some((sh, _)) = report {
        sh[0].store(1, SeqCst);
    }
    let mut id = 0u64;
    loop {
        set_phase(1);
        let Ok(mut s) = w.reserve() else {
            return CORRUPTED;
        };
        set_phase(2);
        let pause = if rng.chance(20) { rng.below(300) } else { 0 };
        fill_frame(id, s.as_mut_bytes(), || spin_us(pause));
        set_phase(3);
        s.commit();
        set_phase(4);
        id += 1;
        if let Some((sh, _)) = report {
            sh[1].store(id, SeqCst);
        }
        if stall == Some(id) {
            std::thread::sleep(STALL);
        }
    }
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
    // A closure pool is nameable by its input and output types.
    pool: WorkerPool<u64, u64>,
    rec: &'static SharedCounters,
}

impl PoolWorkerRole {
    fn new() -> PoolWorkerRole {
        let rec: &'static SharedCounters = Box::leak(Box::new(SharedCounters::new(4)));
        let pool = WorkerPool::builder()
            .workers(2)
            .chunk_size(1)
            .build(move |_: &mut (), w, x| pool_task(rec, w.id, x))
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

// ------------------------------------------------------------------------- pid namespaces

/// `pidns-peer`: how long each side once keeps the other waiting while both live (the
/// waiting side checks its peer's liveness twice meanwhile).
const STALL: Duration = Duration::from_nanos(2 * LIVENESS.as_nanos() as u64);
/// `pidns-peer`: the victim lives at least this long after it attached (and until both
/// stalls are over), plus [`ring_kill_delay`].
const PIDNS_MIN_ALIVE: Duration = Duration::from_nanos(5 * LIVENESS.as_nanos() as u64);
/// The victim's pid as the peer table records it: `getpid()` in its own pid namespace,
/// where it is the first process.
const NS_PID: u32 = 1;
/// Roles of the re-executed test binary (see [`ns_victim_main`]).
const NS_WRITER_ROLE: &str = "crash-matrix-pidns-writer";
const NS_READER_ROLE: &str = "crash-matrix-pidns-reader";
/// Counted in [`PHASES`] by `pidns-peer`: which side the victim played, and in how many
/// trials a survivor timed out waiting on the live victim at least once (it then checked the
/// victim's liveness while waiting, and must not have taken it for dead).
const PIDNS_COUNTS: [&str; 5] = [
    "writer victims",
    "reader victims",
    "trials where a survivor waited on the live victim",
    "-",
    "-",
];

/// The command that puts a process in a pid namespace of its own.
const UNSHARE: [&str; 4] = ["--pid", "--fork", "--mount-proc", "--kill-child"];

/// Whether this process may make pid namespaces: runs `unshare ... true` (it needs root or
/// `CAP_SYS_ADMIN`, which containers often drop, and util-linux's `unshare`).
fn pidns_supported() -> Result<(), String> {
    let out = std::process::Command::new("unshare")
        .args(UNSHARE)
        .arg("true")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output();
    match out {
        Err(e) => Err(format!("cannot run `unshare`: {e}")),
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "`unshare {} true` failed ({}): {}",
            UNSHARE.join(" "),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
    }
}

/// What this test binary does when it is re-executed as a `pidns-peer` victim (`main` calls
/// it when [`common::role`] says so): `args` are the ring name, the seed and the stall point.
fn ns_victim_main(role: &str, args: &[String]) -> i32 {
    let [name, seed, stall] = args else {
        return BAD_ARGS;
    };
    let (Ok(seed), Ok(stall)) = (seed.parse::<u64>(), stall.parse::<u64>()) else {
        return BAD_ARGS;
    };
    match role {
        NS_WRITER_ROLE => writer_loop(name, seed, None, Some(stall)),
        NS_READER_ROLE => ns_reader_loop(name, seed, stall),
        _ => BAD_ARGS,
    }
}

/// A `pidns-peer` reader victim: reads every frame of the lossless ring in order, checking
/// each, holds some for a while, and holds frame `stall` for [`STALL`] (the writer waits for
/// it). The writer lives until after the kill: any end of the stream is a failure.
fn ns_reader_loop(name: &str, vseed: u64, stall: u64) -> i32 {
    let mut rng = Rng::new(vseed);
    let Ok(ring) = Ring::<u8>::open(name) else {
        return CORRUPTED;
    };
    let Ok(mut r) = ring.reader() else {
        return CORRUPTED;
    };
    r.set_liveness_interval(LIVENESS);
    let mut next = 0u64;
    loop {
        match r.recv_timeout(Duration::from_secs(1)) {
            Ok(f) => {
                let Some(id) = frame_id(f.as_bytes()) else {
                    return BAD_FRAME;
                };
                if id != f.seq() || (next != 0 && f.seq() != next) {
                    return BAD_SEQ;
                }
                next = f.seq() + 1;
                if f.seq() == stall {
                    std::thread::sleep(STALL);
                } else if rng.chance(30) {
                    spin_us(rng.below(600));
                }
                if frame_id(f.as_bytes()) != Some(id) {
                    return TORN_WHILE_HELD;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::WriterDied { .. }) | Err(RecvTimeoutError::Disconnected) => {
                return WRITER_TAKEN_FOR_DEAD
            }
            Err(_) => return CORRUPTED,
        }
    }
}

/// The processes whose parent is `ppid`, from `/proc/*/stat`.
fn children_of(ppid: u32) -> Vec<u32> {
    let want = ppid.to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let p = stat.rsplit(')').next()?.split_whitespace().nth(1)?;
            (p == want).then_some(pid)
        })
        .collect()
}

/// Its pids, outermost namespace first (`NSpid` in `/proc/<pid>/status`).
fn ns_pids(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits for a child to end, at most `timeout` (then panics; the caller's drop kills it).
fn wait_std(
    c: &mut std::process::Child,
    timeout: Duration,
    what: &str,
) -> std::process::ExitStatus {
    let t = Instant::now();
    loop {
        if let Some(st) = c.try_wait().expect("try_wait") {
            return st;
        }
        assert!(
            t.elapsed() < timeout,
            "{what}: did not end within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A victim in a pid namespace of its own: `unshare --pid --fork --mount-proc --kill-child`
/// (our child) forks the peer, pid [`NS_PID`] in the new namespace with a `/proc` of its own,
/// which runs this test binary again in a role ([`ns_victim_main`]). `unshare` dies with us
/// (`PR_SET_PDEATHSIG`), the peer with `unshare` (`--kill-child`), so a failing trial leaves
/// neither behind. The peer is killed through a pidfd: its pid cannot name another process.
/// Their stderr comes back through a pipe, to be shown when something went wrong.
struct NsVictim {
    unshare: std::process::Child,
    /// The peer's pid in our namespace, and a pidfd on it (once found).
    peer: Option<(u32, std::os::fd::OwnedFd)>,
    ended: bool,
}

/// What `unshare` from util-linux before 2.39 prints, exiting with code 1 instead of killing
/// itself with the same signal, when its child was killed by SIGKILL (it tries to unblock
/// SIGKILL).
const UNSHARE_SIGKILL_BUG: &str = "sigprocmask unblock failed";

impl NsVictim {
    fn spawn(role: &str, name: &str, seed: u64, stall: u64) -> NsVictim {
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe().expect("current_exe");
        let mut c = std::process::Command::new("unshare");
        c.args(UNSHARE)
            .arg(exe)
            .env(common::ROLE_ENV, role)
            .env(
                "SHMFLOW_TEST_ARGS",
                [name.to_owned(), seed.to_string(), stall.to_string()].join("\u{1f}"),
            )
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        // SAFETY: the closure runs in the forked child before exec and only calls prctl,
        // which is async-signal-safe.
        unsafe {
            c.pre_exec(|| {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                );
                Ok(())
            })
        };
        NsVictim {
            unshare: c.spawn().expect("spawn unshare"),
            peer: None,
            ended: false,
        }
    }

    /// Reaps `unshare` (10 s at most) and returns how it ended and what it and the peer
    /// wrote to stderr (the pipe's write ends are closed once both are gone).
    fn reap(&mut self, what: &str) -> (std::process::ExitStatus, String) {
        use std::io::Read;
        let st = wait_std(&mut self.unshare, Duration::from_secs(10), what);
        self.ended = true;
        let mut err = String::new();
        if let Some(mut e) = self.unshare.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (st, err)
    }

    /// Waits (10 s at most) until `attached()` says the peer attached, then finds the peer:
    /// `unshare`'s one child, which must be pid 1 of a pid namespace below ours.
    fn wait_attached(&mut self, attached: impl Fn() -> bool, what: &str) {
        let t = Instant::now();
        while !attached() {
            if self.unshare.try_wait().expect("try_wait").is_some() {
                let (st, err) = self.reap(what);
                panic!("{what}: ended before it attached: {st} (see victim codes); stderr: {err}");
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{what}: never attached"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        let kids = children_of(self.unshare.id());
        let [pid] = kids.as_slice() else {
            panic!("{what}: unshare's children: {kids:?}");
        };
        let pid = *pid;
        let fd = pidfd_open(pid).expect("pidfd_open on the peer");
        // The pidfd names the process that is (still) unshare's child, pid 1 where it lives.
        assert_eq!(
            children_of(self.unshare.id()),
            [pid],
            "{what}: the peer changed"
        );
        let pids = ns_pids(pid);
        assert!(
            pids.len() >= 2 && pids.first() == Some(&pid) && pids.last() == Some(&NS_PID),
            "{what}: not pid {NS_PID} of a pid namespace of its own: NSpid {pids:?}"
        );
        self.peer = Some((pid, fd));
    }

    /// Kills the peer with SIGKILL and returns the moment the kill was sent. The peer must
    /// still run right before (its pidfd is not readable: it did not exit on its own, having
    /// seen something wrong), and `unshare` must then report a death by SIGKILL: it kills
    /// itself with the signal that killed its child (before util-linux 2.39 it exits 1 with
    /// [`UNSHARE_SIGKILL_BUG`] instead); an exit code is the victim's own (see victim codes).
    /// Then checks that the peer is gone.
    fn kill(mut self, what: &str) -> Instant {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::ExitStatusExt;
        let (peer, pidfd) = match &self.peer {
            Some((pid, fd)) => (*pid, fd.as_raw_fd()),
            None => panic!("{what}: the peer was never found"),
        };
        let exited = || {
            let mut p = libc::pollfd {
                fd: pidfd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd; a pidfd polls readable once its process has exited.
            unsafe { libc::poll(&mut p, 1, 0) == 1 }
        };
        if exited() {
            let (st, err) = self.reap(what);
            panic!(
                "{what}: the victim ended before the kill: {st} (see victim codes); stderr: {err}"
            );
        }
        // SAFETY: pidfd_send_signal on a pidfd we own, with no siginfo.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd,
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        let t = Instant::now();
        assert_eq!(
            r,
            0,
            "{what}: pidfd_send_signal: {}",
            std::io::Error::last_os_error()
        );
        let (st, err) = self.reap(what);
        let by_sigkill = st.signal() == Some(libc::SIGKILL)
            || (st.code() == Some(1) && err.contains(UNSHARE_SIGKILL_BUG));
        assert!(
            by_sigkill,
            "{what}: the victim did not die of the kill: {st} (see victim codes); stderr: {err}"
        );
        assert!(exited(), "{what}: the peer (pid {peer}) outlived unshare");
        t
    }
}

impl Drop for NsVictim {
    fn drop(&mut self) {
        if !self.ended {
            if let Some((_, fd)) = &self.peer {
                use std::os::fd::AsRawFd;
                // SAFETY: as in `kill`.
                unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        fd.as_raw_fd(),
                        libc::SIGKILL,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    )
                };
            }
            let _ = self.unshare.kill();
            let _ = self.unshare.wait();
        }
    }
}

fn pidfd_open(pid: u32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// The victim lives in a pid namespace of its own (pid 1 there, spawned with `unshare`),
/// the survivors in ours, so pids tell neither side whether the other lives: even trials it
/// is the writer of a lossless ring, odd trials one of its readers. While it lives nobody may
/// take it for dead, nor may it take the survivors for dead: each side keeps the other
/// waiting once, for two liveness intervals, before the kill, and every survivor-side step
/// checks that `RingStatus` lists every peer alive and that `reclaim_dead_peers` finds none.
/// After the kill the usual checks: `WriterDied` (pid 1, as its namespace numbered it) after
/// exactly the committed frames, or the dead reader reclaimed and the writer going on.
fn pidns_peer(trial: u64, rng: &mut Rng) -> Trial {
    if trial.is_multiple_of(2) {
        PHASES[0].fetch_add(1, SeqCst);
        pidns_writer(rng)
    } else {
        PHASES[1].fetch_add(1, SeqCst);
        pidns_reader(rng)
    }
}

/// `pidns-peer`, even trials: the writer is the victim; the reader is ours.
fn pidns_writer(rng: &mut Rng) -> Trial {
    let name = unique_name("cm-nw");
    let guard = RingGuard(name.clone());
    let ring = ring(&name, Mode::Broadcast(Backpressure::Block));
    let mut reader = ring.reader().unwrap();
    reader.set_liveness_interval(LIVENESS);
    let me = ring.status().readers[0].index;
    // The victim sleeps once after committing `stall` frames, while we wait for it.
    let stall = 1 + rng.below(8);
    let mut v = NsVictim::spawn(NS_WRITER_ROLE, &name, rng.next(), stall);
    v.wait_attached(|| !ring.status().writers.is_empty(), "pid-namespace writer");
    let start = Instant::now();
    let kill_at = start + PIDNS_MIN_ALIVE + ring_kill_delay(rng);
    let mut v = Some(v);
    let mut killed: Option<Instant> = None;
    let mut stalled = false;
    let mut waited = false;
    let mut next = 0u64;
    let (detect, died) = loop {
        if killed.is_none() {
            // Both stalls are over once we stalled and read past the victim's.
            if Instant::now() >= kill_at && stalled && next > stall {
                killed = Some(v.take().unwrap().kill("pid-namespace writer"));
            } else {
                let st = ring.status();
                assert!(
                    matches!(st.writers.as_slice(), [w] if w.pid == NS_PID && w.alive),
                    "the live writer in another pid namespace: {:?}",
                    st.writers
                );
                assert_eq!(st.writer_died, None, "a live writer recorded as dead");
                assert!(
                    matches!(st.readers.as_slice(), [r] if r.index == me && r.alive),
                    "the writer in another pid namespace took our reader for dead: {:?}",
                    st.readers
                );
                assert_eq!(
                    ring.reclaim_dead_peers(),
                    0,
                    "a live peer in another pid namespace was reclaimed"
                );
            }
        }
        // We stall once (holding nothing), and the victim waits on a full ring.
        if !stalled && start.elapsed() >= 2 * LIVENESS {
            std::thread::sleep(STALL);
            stalled = true;
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
                assert_eq!(f.seq(), next, "lossless reader: a gap");
                next += 1;
                if rng.chance(10) {
                    spin_us(rng.below(500));
                    assert_eq!(frame_id(f.as_bytes()), Some(id), "frame torn while held");
                }
            }
            Err(RecvTimeoutError::Timeout) => match killed {
                Some(t) => assert!(t.elapsed() < BOUND, "writer death not noticed in {BOUND:?}"),
                None => waited = true,
            },
            Err(RecvTimeoutError::WriterDied { pid, frames }) => {
                let t = killed.expect("WriterDied while the writer in another pid namespace lives");
                break (t.elapsed(), (pid, frames));
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!("a SIGKILLed writer was reported as a clean end (Disconnected)")
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    PHASES[2].fetch_add(u64::from(waited), SeqCst);
    // Every frame it committed was read: the ring's count, and the one WriterDied reports.
    assert_eq!(ring.status().write_seq, next, "committed vs read");
    assert_eq!(
        died,
        (NS_PID, next),
        "WriterDied: its pid there, every frame read"
    );
    // A writer of our namespace takes its place; its frame arrives; it detaches cleanly.
    let mut w = ring.writer().expect("a new writer attaches");
    let mut s = w
        .reserve_timeout(BOUND)
        .expect("the new writer gets a slot");
    let seq = s.seq();
    assert_eq!(seq, next);
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
    drop((reader, ring, guard));
    assert!(!common::shm_path(&name).exists(), "segment left behind");
    detect
}

/// `pidns-peer`, odd trials: a reader of the lossless ring is the victim; the writer and a
/// live reader are ours.
fn pidns_reader(rng: &mut Rng) -> Trial {
    let name = unique_name("cm-nr");
    let guard = RingGuard(name.clone());
    let ring = ring(&name, Mode::Broadcast(Backpressure::Block));
    let mut live = ring.reader().unwrap();
    live.set_liveness_interval(LIVENESS);
    let mut w = ring.writer().unwrap();
    w.set_liveness_interval(LIVENESS);
    let me = ring.status().readers[0].index;
    // The victim holds frame `stall` for a while, and our writer waits for it.
    let stall = rng.below(8);
    let mut v = NsVictim::spawn(NS_READER_ROLE, &name, rng.next(), stall);
    v.wait_attached(|| ring.status().readers.len() == 2, "pid-namespace reader");
    let start = Instant::now();
    let vi = {
        let st = ring.status();
        let theirs: Vec<_> = st.readers.iter().filter(|p| p.index != me).collect();
        assert!(
            matches!(theirs.as_slice(), [p] if p.pid == NS_PID && p.alive),
            "the reader in another pid namespace: {:?}",
            st.readers
        );
        theirs[0].index
    };
    let kill_at = start + PIDNS_MIN_ALIVE + ring_kill_delay(rng);
    let mut v = Some(v);
    let mut killed: Option<Instant> = None;
    let mut detect: Option<Duration> = None;
    let mut stalled = false;
    let mut waited = false;
    let mut written = 0u64;
    let mut after = 0u64;
    let mut next = 0u64;
    loop {
        if killed.is_none() {
            let st = ring.status();
            let theirs = st.readers.iter().find(|p| p.index == vi);
            // Both stalls are over once we stalled and the victim let go of its frame.
            if Instant::now() >= kill_at && stalled && theirs.is_some_and(|p| p.cursor > stall) {
                killed = Some(v.take().unwrap().kill("pid-namespace reader"));
            } else {
                assert!(
                    st.readers.len() == 2
                        && st.readers.iter().all(|p| p.alive)
                        && theirs.is_some_and(|p| p.pid == NS_PID),
                    "a live reader in another pid namespace taken for dead: {:?}",
                    st.readers
                );
                let cursor = theirs.unwrap().cursor;
                assert!(
                    written <= cursor + u64::from(SLOTS),
                    "the writer went {written} - {cursor} frames past the live victim"
                );
                assert!(
                    matches!(st.writers.as_slice(), [w] if w.alive),
                    "the reader in another pid namespace took our writer for dead: {:?}",
                    st.writers
                );
                assert_eq!(
                    ring.reclaim_dead_peers(),
                    0,
                    "a live peer in another pid namespace was reclaimed"
                );
            }
        }
        if let Some(t) = killed {
            if detect.is_none() {
                if ring.status().readers.iter().all(|p| p.index != vi) {
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
        // We stall once (between frames), and the victim waits on an empty ring.
        if !stalled && start.elapsed() >= 2 * LIVENESS {
            std::thread::sleep(STALL);
            stalled = true;
        }
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
            Err(ReserveTimeoutError::Timeout) => waited |= killed.is_none(),
            Err(e) => panic!("{e:?}"),
        }
        loop {
            match live.recv_timeout(Duration::from_micros(100)) {
                Ok(f) => {
                    assert_eq!(
                        frame_id(f.as_bytes()),
                        Some(f.seq()),
                        "live reader: torn frame"
                    );
                    assert_eq!(f.seq(), next, "live lossless reader: a gap");
                    next += 1;
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(e) => panic!("live reader: {e:?}"),
            }
        }
    }
    PHASES[2].fetch_add(u64::from(waited), SeqCst);
    assert_eq!(next, written, "the live reader got to the last frame");
    // A new reader attaches in the victim's place and gets the next frame, as does the live
    // one.
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

// ---------------------------------------------------------------------- multi-held reader

/// Frames a `multi-held-reader` victim may hold at once: the most a reader of a ring of
/// [`SLOTS`] slots may.
const MULTI_HELD: u32 = SLOTS - 1;

/// Phase names of `multi-held-reader` victims: how many frames they held when killed.
const MULTI_HELD_PHASES: [&str; 5] = ["-", "-", "holding 2", "holding 3", "-"];

/// The survivors of `multi-held-reader`: the writer and two lossless readers, `a` (one frame
/// at a time) and `b` (`max_held(2)`: it drops its frames in pairs), each of which must get
/// every frame in order.
struct HeldSurvivors {
    w: shmflow::Writer<u8>,
    a: shmflow::Reader<u8>,
    b: shmflow::Reader<u8>,
    b_held: Vec<shmflow::ReadSlot<u8>>,
    written: u64,
    next_a: u64,
    next_b: u64,
}

impl HeldSurvivors {
    /// Writes the next frame if the writer gets a slot within `wait`.
    fn write(&mut self, wait: Duration) -> Result<(), ReserveTimeoutError> {
        let mut s = self.w.reserve_timeout(wait)?;
        assert_eq!(s.seq(), self.written);
        fill_frame(self.written, s.as_mut_bytes(), || {});
        s.commit();
        self.written += 1;
        Ok(())
    }

    /// Both readers take every frame there is.
    fn drain(&mut self) {
        let check = |f: &shmflow::ReadSlot<u8>, next: &mut u64, who: &str| {
            assert_eq!(frame_id(f.as_bytes()), Some(f.seq()), "{who}: torn frame");
            assert_eq!(f.seq(), *next, "{who}: a gap");
            *next += 1;
        };
        loop {
            match self.a.recv_timeout(Duration::from_micros(100)) {
                Ok(f) => check(&f, &mut self.next_a, "live reader a"),
                Err(RecvTimeoutError::Timeout) => break,
                Err(e) => panic!("live reader a: {e:?}"),
            }
        }
        loop {
            match self.b.recv_timeout(Duration::from_micros(100)) {
                Ok(f) => {
                    check(&f, &mut self.next_b, "live reader b");
                    self.b_held.push(f);
                    if self.b_held.len() == 2 {
                        for f in self.b_held.drain(..) {
                            assert_eq!(frame_id(f.as_bytes()), Some(f.seq()), "b: torn while held");
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(e) => panic!("live reader b: {e:?}"),
            }
        }
    }
}

/// A lossless reader attached with `max_held(3)` gathers 2 or 3 frames, holds them a while and
/// drops them in random order (checking each first), over and over. At a random moment it is
/// told to freeze: as soon as it holds 2 or more frames (which need not be consecutive: it
/// may have dropped the middle one) it keeps them and reads no more. The writer (here) runs
/// into it: a wait of more than two liveness intervals times out (the writer checked the live
/// victim and did not reclaim it) and the writer never got more than [`SLOTS`] frames past
/// the victim's cursor. The victim is killed holding its frames (its entry says how many);
/// the writer must resume within the bound (the detection time: from the kill to the
/// writer's next slot), and the two live readers lose nothing. Then a new reader holds three
/// frames while the writer goes on: none of the victim's hold is left.
fn multi_held_reader(_trial: u64, rng: &mut Rng) -> Trial {
    let name = unique_name("cm-mh");
    let guard = RingGuard(name.clone());
    let ring = ring(&name, Mode::Broadcast(Backpressure::Block));
    let mut a = ring.reader().unwrap();
    a.set_liveness_interval(LIVENESS);
    let mut b = ring.attach_reader().max_held(2).attach().unwrap();
    b.set_liveness_interval(LIVENESS);
    let mut w = ring.writer().unwrap();
    w.set_liveness_interval(LIVENESS);
    // [0] ready, [1] freeze (we set it), [2] frames held when frozen
    let sh = SharedCounters::new(3);
    let vseed = rng.next();
    let child = victim(|| {
        let mut rng = Rng::new(vseed);
        let Ok(ring) = Ring::<u8>::open(&name) else {
            return CORRUPTED;
        };
        let Ok(mut r) = ring.attach_reader().max_held(MULTI_HELD).attach() else {
            return CORRUPTED;
        };
        r.set_liveness_interval(LIVENESS);
        sh[0].store(1, SeqCst);
        let mut held: Vec<(shmflow::ReadSlot<u8>, u64)> = Vec::new();
        let mut next = 0u64;
        let mut want = 2 + rng.below(2) as usize;
        let mut dropping = false;
        loop {
            if held.len() >= 2 && sh[1].load(SeqCst) != 0 {
                sh[2].store(held.len() as u64, SeqCst);
                loop {
                    std::thread::sleep(Duration::from_millis(1));
                    if held
                        .iter()
                        .any(|(f, id)| frame_id(f.as_bytes()) != Some(*id))
                    {
                        return TORN_WHILE_HELD;
                    }
                }
            }
            if !dropping && held.len() < want {
                match r.recv_timeout(Duration::from_millis(1)) {
                    Ok(f) => {
                        let Some(id) = frame_id(f.as_bytes()) else {
                            return BAD_FRAME;
                        };
                        if id != f.seq() || (next != 0 && f.seq() != next) {
                            return BAD_SEQ;
                        }
                        next = f.seq() + 1;
                        held.push((f, id));
                        if r.held() as usize != held.len() {
                            return HELD_MISCOUNT;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(_) => return CORRUPTED,
                }
                continue;
            }
            if !dropping {
                spin_us(rng.below(300));
                dropping = true;
            }
            let (f, id) = held.swap_remove(rng.below(held.len() as u64) as usize);
            if frame_id(f.as_bytes()) != Some(id) {
                return TORN_WHILE_HELD;
            }
            drop(f);
            if r.held() as usize != held.len() {
                return HELD_MISCOUNT;
            }
            if held.is_empty() {
                dropping = false;
                want = 2 + rng.below(2) as usize;
            } else {
                spin_us(rng.below(100));
            }
        }
    });
    wait_flag(&sh[0], "multi-held reader");
    let victim_pid = child.pid as u32;
    let vi = {
        let st = ring.status();
        let v: Vec<_> = st.readers.iter().filter(|p| p.pid == victim_pid).collect();
        assert!(
            matches!(v.as_slice(), [p] if p.max_held == MULTI_HELD && p.alive),
            "the victim reader: {:?}",
            st.readers
        );
        v[0].index
    };
    let victim_entry = || ring.status().readers.into_iter().find(|p| p.index == vi);
    let mut s = HeldSurvivors {
        w,
        a,
        b,
        b_held: Vec::new(),
        written: 0,
        next_a: 0,
        next_b: 0,
    };
    // Run until the freeze, then until the victim froze and the writer is stuck on it.
    let freeze_at = Instant::now() + ring_kill_delay(rng);
    let t0 = Instant::now();
    loop {
        assert!(t0.elapsed() < BOUND, "multi-held reader: never froze");
        if sh[1].load(SeqCst) == 0 && Instant::now() >= freeze_at {
            sh[1].store(1, SeqCst);
        }
        if rng.chance(5) {
            spin_us(rng.below(300));
        }
        let blocked = match s.write(Duration::from_millis(2)) {
            Ok(()) => false,
            Err(ReserveTimeoutError::Timeout) => true,
            Err(e) => panic!("{e:?}"),
        };
        s.drain();
        if blocked && sh[2].load(SeqCst) != 0 {
            break;
        }
        let p = victim_entry().expect("the live victim is listed");
        assert!(p.alive, "the live victim: {p:?}");
        assert!(
            s.written <= p.cursor + u64::from(SLOTS),
            "the writer went {} - {} frames past the live victim",
            s.written,
            p.cursor
        );
    }
    let frozen = sh[2].load(SeqCst);
    assert_eq!(
        s.write(2 * LIVENESS + LIVENESS / 5),
        Err(ReserveTimeoutError::Timeout),
        "the writer went on past a live reader holding {frozen} frames"
    );
    let p = victim_entry().expect("the live victim is listed");
    assert!(
        p.alive && p.held == frozen && s.written <= p.cursor + u64::from(SLOTS),
        "the live victim, frozen holding {frozen} frames, {} written: {p:?}",
        s.written
    );
    let killed = kill_victim(child, "multi-held reader");
    PHASES[frozen as usize].fetch_add(1, SeqCst);
    // Nothing waited since the kill: the entry is still there, dead, holding its frames.
    let p = victim_entry().expect("the dead victim, not reclaimed yet");
    assert!(!p.alive && p.held == frozen, "the dead victim: {p:?}");
    // The writer resumes: its wait reclaims the dead reader and its frames.
    s.write(BOUND)
        .expect("the writer resumes after the holder's death");
    let detect = killed.elapsed();
    assert!(victim_entry().is_none(), "the dead victim still listed");
    for _ in 0..2 * SLOTS {
        s.write(BOUND).expect("the writer goes on");
        s.drain();
    }
    s.drain();
    assert_eq!(
        (s.next_a, s.next_b),
        (s.written, s.written),
        "the live readers got every frame"
    );
    // A new reader holds three frames; the writer still finds a slot beside them.
    drop(s.b_held);
    drop(s.b);
    let (mut w, mut a) = (s.w, s.a);
    let mut r2 = ring
        .attach_reader()
        .max_held(MULTI_HELD)
        .attach()
        .expect("a new multi-held reader attaches");
    let mut send = |w: &mut shmflow::Writer<u8>| {
        let mut slot = w
            .reserve_timeout(BOUND)
            .expect("a slot beside the held frames");
        let seq = slot.seq();
        fill_frame(seq, slot.as_mut_bytes(), || {});
        slot.commit();
        let f = a.recv_timeout(BOUND).expect("the live reader's frame");
        assert_eq!((f.seq(), frame_id(f.as_bytes())), (seq, Some(seq)));
        seq
    };
    let mut held = Vec::new();
    for _ in 0..MULTI_HELD {
        let seq = send(&mut w);
        let f = r2.recv_timeout(BOUND).expect("the new reader's frame");
        assert_eq!(f.seq(), seq);
        held.push(f);
    }
    send(&mut w);
    for f in held {
        assert_eq!(
            frame_id(f.as_bytes()),
            Some(f.seq()),
            "a held frame overwritten"
        );
    }
    drop((r2, a, w, ring, guard));
    assert!(!common::shm_path(&name).exists(), "segment left behind");
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

const ROLES: [&str; 10] = [
    "attaching-peer",
    "broadcast-writer",
    "broadcast-reader-block",
    "drop-oldest-reader",
    "queue-reader",
    "queue-writer",
    "pool-worker",
    "pool-parent",
    "pidns-peer",
    "multi-held-reader",
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
    // Re-executed as a `pidns-peer` victim (inside `unshare`): play the role, nothing else.
    if let Some((role, args)) = common::role() {
        std::process::exit(ns_victim_main(&role, &args));
    }
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
    let mut skipped = Vec::new();
    for (ri, role) in ROLES.iter().enumerate() {
        if !wanted.is_empty() && !wanted.iter().any(|w| role.contains(w.as_str())) {
            continue;
        }
        // Each pid-namespace trial spawns `unshare` and this binary: half as many.
        let trials = if *role == "pidns-peer" {
            match pidns_supported() {
                Ok(()) => trials.div_ceil(2),
                Err(e) => {
                    println!("role {role} ... SKIPPED: no pid namespace for the victim: {e}");
                    skipped.push(*role);
                    continue;
                }
            }
        } else {
            trials
        };
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
                    "pidns-peer" => pidns_peer(trial, &mut rng),
                    "multi-held-reader" => multi_held_reader(trial, &mut rng),
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
                    "pidns-peer" => Some(PIDNS_COUNTS),
                    "multi-held-reader" => Some(MULTI_HELD_PHASES),
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
        "\n{:<24} {:>7} {:>17} {:>14}  victim killed while (pool-parent: segments left; pidns-peer: counts)",
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
        "\ntest result: {}. {} roles passed; {failed} failed; {} skipped{}; total {:.2?}\n",
        if failed == 0 { "ok" } else { "FAILED" },
        table.len(),
        skipped.len(),
        if skipped.is_empty() {
            String::new()
        } else {
            format!(" ({})", skipped.join(", "))
        },
        started.elapsed()
    );
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

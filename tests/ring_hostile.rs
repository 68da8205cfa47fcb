//! Hostile and corrupted segments (issue 5): whatever the bytes of a segment, opening gives an
//! `OpenError` or a ring that works; nothing panics, reads or writes outside a slot, loops
//! forever or hangs. The entry point is `shmflow::__fuzz::open_and_exercise`.
//!
//! A case that runs longer than `SHMFLOW_HOSTILE_LIMIT_S` seconds (default 10) is a hang: a
//! watchdog writes its input in hex to a file, prints the path and aborts the process.
//! `SHMFLOW_HOSTILE_SAVE=1` writes every input to such a file *before* it runs (to find the
//! input that made the C library abort the process).

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use shmflow::__fuzz::{open_and_exercise, Outcome};

// ---------------------------------------------------------------------------- the watchdog

/// The input each test thread is running, and since when.
type Running = Mutex<HashMap<ThreadId, (Instant, Vec<u8>)>>;

fn running() -> &'static Running {
    static RUNNING: OnceLock<Running> = OnceLock::new();
    RUNNING.get_or_init(|| {
        let limit = std::env::var("SHMFLOW_HOSTILE_LIMIT_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10u64);
        std::thread::spawn(move || watchdog(Duration::from_secs(limit)));
        Mutex::new(HashMap::new())
    })
}

fn watchdog(limit: Duration) {
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let map = running().lock().unwrap_or_else(|e| e.into_inner());
        if let Some((since, input)) = map.values().find(|(t, _)| t.elapsed() > limit) {
            let path = save(input, "hang");
            // Straight to the process's stderr: the test harness's capture of `eprintln!`
            // would be lost with the abort.
            let _ = writeln!(
                std::io::stderr(),
                "\nring_hostile: a case has run for {:?} (limit {limit:?}): a hang.\n\
                 input ({} bytes) saved to {path}\n",
                since.elapsed(),
                input.len()
            );
            std::process::abort();
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `input` in hex to a file of this process and thread; returns its path.
fn save(input: &[u8], what: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = option_env!("CARGO_TARGET_TMPDIR").unwrap_or("/tmp");
    let path = format!(
        "{dir}/ring_hostile-{what}-{}-{}.hex",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let _ = std::fs::write(&path, hex(input) + "\n");
    path
}

/// Runs one input under the watchdog.
fn guarded(input: &[u8]) -> Outcome {
    let me = std::thread::current().id();
    if std::env::var_os("SHMFLOW_HOSTILE_SAVE").is_some() {
        let _ = writeln!(
            std::io::stderr(),
            "ring_hostile: running {}",
            save(input, "case")
        );
    }
    running()
        .lock()
        .unwrap()
        .insert(me, (Instant::now(), input.to_vec()));
    let out = open_and_exercise(input);
    running().lock().unwrap().remove(&me);
    out
}

// ---------------------------------------------------------------------- regressions (named)

/// Runs `input` and checks it did not take longer than `limit`.
fn quick(input: &[u8], limit: Duration) -> Outcome {
    let t = Instant::now();
    let out = guarded(input);
    assert!(t.elapsed() < limit, "took {:?}: {out:?}", t.elapsed());
    out
}

/// A state-mode input: the 9 parameter bytes, then patches.
fn state(params: [u8; 9], patches: &[Vec<u8>]) -> Vec<u8> {
    let mut input = vec![1u8];
    input.extend(params);
    input.extend(patches.concat());
    input
}

/// Patch kinds of state mode (see `shmflow::__fuzz`): word `w` of control (1), a peer entry
/// (2), a slot-table entry (3) or the header (4).
fn put(kind: u8, entry: u8, w: u8, value: u64) -> Vec<u8> {
    let mut p = vec![kind, entry, w];
    p.extend(value.to_le_bytes());
    p
}
const CONTROL: u8 = 1;
const PEER: u8 = 2;
const META: u8 = 3;
// Words of a peer entry and of a slot-table entry (docs/PROTOCOL.md).
const PEER_FLAGS: u8 = 4;
const PEER_SEM_DATA: u8 = 8;
const PEER_SEM_PRIVATE: u8 = 9;
const META_NDIM: u8 = 2;
const CONTROL_WRITE_SEQ: u8 = 0;
const CONTROL_READER_WAITERS: u8 = 16;

/// Ring parameters: u8, shape [4], 4 slots, lossless broadcast, `readers` readers, and
/// `history` frames written before the damage (or no endpoints before it).
fn block_ring(readers: u8, history: Option<u8>) -> [u8; 9] {
    let h = history.map_or(0, |f| f << 4 | 1);
    [0, 0, 3, 0, 0, 3, 0, readers - 1, h]
}

/// Regression: the frame's `ndim` sized a vector before it was compared with the ring's rank;
/// `ndim = 2^32 - 1` in a committed slot made the reader allocate 32 GiB and abort. Now the
/// frame is refused as corrupted.
#[test]
fn a_huge_ndim_in_slot_metadata_is_refused_not_allocated() {
    // Frames 0..3 written, the reader took 0 and 1: frame 2 is committed and unread.
    let patches: Vec<Vec<u8>> = (0..4).map(|s| put(META, s, META_NDIM, u64::MAX)).collect();
    let out = quick(
        &state(block_ring(2, Some(3)), &patches),
        Duration::from_secs(5),
    );
    match out {
        Outcome::Worked(st) => assert!(st.corrupted > 0, "{st:?}"),
        other => panic!("{other:?}"),
    }
}

/// Regression: garbage in a peer's `sem_t` reached glibc, whose `sem_post` / `sem_clockwait`
/// derive the futex operation from the `private` word: the process aborted ("The futex
/// facility returned an unexpected error code") or could block in a futex wait with no
/// timeout. Now the words are checked before every call; a peer repairs its own semaphore when
/// it attaches, and posts to a damaged one are skipped (the sleeper wakes by its deadline).
#[test]
fn garbage_in_a_semaphore_never_reaches_glibc() {
    let garbage = 0x7ead_beef_u64;
    let patches = [
        // The entry our reader will take: a damaged semaphore, repaired at attach.
        put(PEER, 0, PEER_SEM_PRIVATE, garbage),
        // An entry nobody attaches: "sleeping" on a damaged semaphore with a waiter, so every
        // commit tries to wake it.
        put(PEER, 2, PEER_FLAGS, 1),
        put(PEER, 2, PEER_SEM_DATA, 1 << 32),
        put(PEER, 2, PEER_SEM_PRIVATE, garbage),
        put(CONTROL, CONTROL_READER_WAITERS, 0, 1),
    ];
    for history in [None, Some(2)] {
        let out = quick(
            &state(block_ring(3, history), &patches),
            Duration::from_secs(5),
        );
        match out {
            Outcome::Worked(st) => assert!(st.received > 0, "{st:?}"),
            other => panic!("{other:?}"),
        }
    }
}

/// Regression: before sleeping, a waiter drained stale posts from its semaphore until it was
/// empty; a count set to `SEM_VALUE_MAX` by another process kept it there for 2^31 calls
/// (tens of seconds). It now drains at most 64.
#[test]
fn a_huge_semaphore_count_does_not_hold_a_waiter() {
    let patches = [put(PEER, 0, PEER_SEM_DATA, 0x7FFF_FFFF)];
    // The third round's reservation is discarded: the reader's recv_timeout sleeps.
    let out = quick(
        &state(block_ring(1, None), &patches),
        Duration::from_secs(5),
    );
    assert!(matches!(out, Outcome::Worked(_)), "{out:?}");
}

/// Regression: a broadcast reader whose frame is not where the locator says scans the slot
/// stamps, and retried that up to 4096 times per attempt: with 65536 slots and a `write_seq`
/// ahead of every stamp, one `try_recv` made 2^28 loads and a 3 ms `recv_timeout` ran for tens
/// of seconds. The scans are now capped at 2^16 loads per attempt (after the first scan).
#[test]
fn garbage_write_seq_with_65536_slots_does_not_stall_a_reader() {
    // 65536 slots, shape [1], a writer and a reader attached before the damage.
    let params = [0, 0, 0, 0, 0, 63, 0, 0, 1];
    let patches = [put(CONTROL, CONTROL_WRITE_SEQ, 0, u64::MAX)];
    let out = quick(&state(params, &patches), Duration::from_secs(5));
    assert!(matches!(out, Outcome::Worked(_)), "{out:?}");
}

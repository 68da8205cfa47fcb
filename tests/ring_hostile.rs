//! Hostile and corrupted segments (issue 5): arbitrary bytes as a whole segment, arbitrary ring
//! state behind a valid header, bit flips in a live ring. Whatever the bytes, opening gives an
//! `OpenError` or a ring that works; nothing panics, reads or writes outside a slot, loops
//! forever or hangs. The entry point is `shmflow::__fuzz::open_and_exercise` (the same as the
//! `cargo fuzz` target in `fuzz/`).
//!
//! * `PROPTEST_CASES=N` sets the number of cases of each generator (default: a few seconds'
//!   worth in a debug build).
//! * A case that runs longer than `SHMFLOW_HOSTILE_LIMIT_S` seconds (default 10) is a hang:
//!   a watchdog writes its input in hex to a file, prints the path and aborts the process.
//! * `SHMFLOW_HOSTILE_SAVE=1` writes every input to that file *before* it runs (to find the
//!   input that made the C library abort the process).
//! * `SHMFLOW_HOSTILE_REPLAY=FILE` runs the input in FILE (hex, as the watchdog writes it, or
//!   raw bytes, as `cargo fuzz` writes them) in `replay_saved_input`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use shmflow::__fuzz::{open_and_exercise, Outcome};
use shmflow::{Backpressure, Mode, Ring};

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
                 input ({} bytes) saved to {path}\n\
                 replay: SHMFLOW_HOSTILE_REPLAY={path} cargo test --test ring_hostile \
                 replay_saved_input -- --nocapture\n",
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

fn unhex(text: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if digits.is_empty()
        || !digits.len().is_multiple_of(2)
        || !digits.iter().all(u8::is_ascii_hexdigit)
    {
        return None;
    }
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect()
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

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Runs `cases` inputs from `strategy`, tallies the outcomes and prints them.
fn run(what: &str, default_cases: u32, strategy: impl Strategy<Value = Vec<u8>>) {
    let n = cases(default_cases);
    let mut runner = TestRunner::new(Config {
        cases: n,
        failure_persistence: None,
        ..Config::default()
    });
    let tally: Mutex<BTreeMap<String, u32>> = Mutex::new(BTreeMap::new());
    let started = Instant::now();
    let result = runner.run(&strategy, |input| {
        let key = match guarded(&input) {
            Outcome::Refused(kind) => format!("refused {kind}"),
            Outcome::Worked(st) if st.received > 0 => "worked, frames read".into(),
            Outcome::Worked(st) if st.corrupted > 0 => "worked, frames refused".into(),
            Outcome::Worked(_) => "worked, nothing read".into(),
            Outcome::Skipped(why) => format!("skipped: {why}"),
        };
        *tally.lock().unwrap().entry(key).or_default() += 1;
        Ok(())
    });
    let tally = tally.into_inner().unwrap();
    eprintln!(
        "ring_hostile {what}: {n} cases in {:.1?}: {tally:?}",
        started.elapsed()
    );
    if let Err(e) = result {
        panic!("{what}: {e}");
    }
    assert!(
        !tally.keys().any(|k| k.starts_with("skipped")),
        "{what}: inputs could not be set up: {tally:?}"
    );
}

// ---------------------------------------------------------------------------- generators

/// The bytes of a small real ring that has been used (frames written and read, a reader
/// attached): a raw copy of it opens, with a state that names this process.
fn used_ring_image() -> &'static [u8] {
    static IMAGE: OnceLock<Vec<u8>> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let name = unique_name("hostile-src");
        let _g = RingGuard(name.clone());
        let ring = Ring::<u8>::create(&name)
            .shape([8, 4])
            .slots(3)
            .mode(Mode::Broadcast(Backpressure::DropOldest))
            .build()
            .unwrap();
        let mut w = ring.writer().unwrap();
        let mut r = ring.reader().unwrap();
        for _ in 0..4 {
            let mut s = w.try_reserve().unwrap();
            s.as_mut_bytes().fill(7);
            s.commit();
        }
        let _ = r.try_recv().unwrap();
        std::fs::read(shm_path(&name)).unwrap()
    })
}

/// Raw mode: random bytes of every length around the interesting sizes, and copies of a real
/// ring, truncated and with random bytes overwritten.
fn raw_input() -> impl Strategy<Value = Vec<u8>> {
    let len = prop_oneof![0..64usize, 4090..4100usize, 4096..12_000usize];
    let random = len.prop_flat_map(|n| proptest::collection::vec(any::<u8>(), n));
    let image_len = used_ring_image().len();
    let copy = (
        prop_oneof![Just(image_len), 0..=image_len],
        proptest::collection::vec((0..image_len, any::<u8>()), 0..16),
    )
        .prop_map(|(keep, writes)| {
            let mut b = used_ring_image()[..keep].to_vec();
            for (at, v) in writes {
                if at < b.len() {
                    b[at] = v;
                }
            }
            b
        });
    prop_oneof![random, copy].prop_map(|b| {
        let mut input = vec![0u8];
        input.extend(b);
        input
    })
}

/// 64-bit values that mean something somewhere in the state: limits, sequence-like and
/// stamp-like words, peer states with this process's pid, semaphore words.
fn interesting_u64() -> impl Strategy<Value = u64> {
    let pid = u64::from(std::process::id());
    prop_oneof![
        any::<u64>(),
        Just(0u64),
        Just(u64::MAX),
        Just(u64::from(u32::MAX)),
        Just(1u64 << 48),
        Just((1u64 << 48) - 1),
        Just(1u64 << 32),
        Just(128u64),
        Just(0x7FFF_FFFFu64),
        0..70_000u64,
        // seq << 16 | owner << 4 | state
        (0..40u64, 0..4096u64, 0..16u64).prop_map(|(s, o, st)| s << 16 | o << 4 | st),
        // pid << 32 | generation << 8 | status
        (
            prop_oneof![Just(pid), Just(1u64), any::<u32>().prop_map(u64::from)],
            0..4u64,
            0..5u64
        )
            .prop_map(|(p, g, st)| p << 32 | g << 8 | st),
        // (slot + 1) << 48 | seq: a pin
        (0..8u64, 0..40u64).prop_map(|(slot, seq)| (slot + 1) << 48 | seq),
        // a locator: seq << 16 | slot
        (0..40u64, any::<u16>()).prop_map(|(seq, slot)| seq << 16 | u64::from(slot)),
    ]
}

/// The 9 parameter bytes of a state or flips input.
fn params() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 9)
}

/// State mode: a real ring, then patches of its header, control block, peer table and slot
/// table (byte runs, words at fields, a recomputed hash so that lying headers reach the
/// deeper checks: huge slot counts, shapes whose product overflows, offsets past the end).
fn state_input() -> impl Strategy<Value = Vec<u8>> {
    let word_patch =
        (1..5u8, any::<u8>(), any::<u8>(), interesting_u64()).prop_map(|(kind, a, b, v)| {
            let mut p = vec![kind, a, b];
            p.extend(v.to_le_bytes());
            p
        });
    let run_patch =
        (any::<u16>(), proptest::collection::vec(any::<u8>(), 0..80)).prop_map(|(off, bytes)| {
            let mut p = vec![0, off as u8, (off >> 8) as u8, bytes.len() as u8];
            p.extend(bytes);
            p
        });
    let patch = prop_oneof![
        6 => word_patch,
        2 => run_patch,
        1 => Just(vec![5u8]),
    ];
    (params(), proptest::collection::vec(patch, 0..24)).prop_map(|(p, patches)| {
        let mut input = vec![1u8];
        input.extend(p);
        input.extend(patches.concat());
        input
    })
}

/// Flips mode: a real ring (usually used), then bits flipped.
fn flips_input() -> impl Strategy<Value = Vec<u8>> {
    (params(), proptest::collection::vec(any::<u32>(), 1..48)).prop_map(|(p, flips)| {
        let mut input = vec![2u8];
        input.extend(p);
        for f in flips {
            input.extend(f.to_le_bytes());
        }
        input
    })
}

// ---------------------------------------------------------------------------- the properties

#[test]
fn arbitrary_bytes_as_a_whole_segment() {
    run("raw", 800, raw_input());
}

#[test]
fn arbitrary_state_behind_a_valid_header() {
    run("state", 800, state_input());
}

#[test]
fn bit_flips_in_a_live_ring() {
    run("flips", 600, flips_input());
}

/// `SHMFLOW_HOSTILE_REPLAY=FILE`: runs one saved input (hex or raw bytes).
#[test]
fn replay_saved_input() {
    let Some(path) = std::env::var_os("SHMFLOW_HOSTILE_REPLAY") else {
        return;
    };
    let bytes = std::fs::read(&path).expect("SHMFLOW_HOSTILE_REPLAY: cannot read the file");
    let input = std::str::from_utf8(&bytes)
        .ok()
        .and_then(unhex)
        .unwrap_or(bytes);
    let t = Instant::now();
    let out = guarded(&input);
    eprintln!(
        "replayed {} bytes from {path:?} in {:?}: {out:?}",
        input.len(),
        t.elapsed()
    );
}

// ---------------------------------------------------------------------- regressions (named)

/// Runs `input` and checks it did not take longer than `limit`.
fn quick(input: &[u8], limit: Duration) -> Outcome {
    let t = Instant::now();
    let out = guarded(input);
    assert!(t.elapsed() < limit, "took {:?}: {out:?}", t.elapsed());
    out
}

#[test]
fn the_input_formats_reach_a_working_ring() {
    // Raw copy of a used ring: it opens and works.
    let mut raw = vec![0u8];
    raw.extend(used_ring_image());
    assert!(matches!(
        quick(&raw, Duration::from_secs(5)),
        Outcome::Worked(_)
    ));
    // No patches, no flips.
    for mode in [1u8, 2] {
        let out = quick(
            &[mode, 2, 1, 3, 4, 0, 3, 1, 0, 0x51],
            Duration::from_secs(5),
        );
        match out {
            Outcome::Worked(st) => assert!(st.received > 0 && st.corrupted == 0, "{st:?}"),
            other => panic!("{other:?}"),
        }
    }
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
const META_LOCATOR: u8 = 13;
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

/// Indices read from the segment (a locator's slot, a stamp's owner, a pin's slot, peer
/// states) are range-checked or only compared, never used to index: out-of-range values give
/// a working (or refusing) ring, not a panic.
#[test]
fn indices_from_the_segment_are_range_checked() {
    let mut patches = Vec::new();
    for s in 0..4u8 {
        let seq = u64::from(s);
        patches.push(put(META, s, META_LOCATOR, seq << 16 | 0xFFFF)); // slot 65535
        patches.push(put(META, s, 0, seq << 16 | 0xFFF << 4 | 2)); // FULL, owner 4095
    }
    for e in 0..3u8 {
        patches.push(put(PEER, e, 3, 0xFFFF_u64 << 48 | 1)); // pin of slot 65534
        patches.push(put(PEER, e, 2, u64::MAX)); // cursor
    }
    patches.push(put(CONTROL, CONTROL_WRITE_SEQ, 0, 4));
    for history in [None, Some(3)] {
        let out = quick(
            &state(block_ring(2, history), &patches),
            Duration::from_secs(5),
        );
        assert!(matches!(out, Outcome::Worked(_)), "{out:?}");
    }
}

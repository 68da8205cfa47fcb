//! Leaks (`harness = false`: the pool forks, and fork needs a single-threaded parent).
//!
//! - Rings: create / open / attach / exchange / detach / drop, thousands of times, in every
//!   mode, with the error paths in between (a name that is taken, a name that does not exist,
//!   a peer table that is full, a wrong element type) and a forked peer now and then. Afterwards
//!   the process has exactly the file descriptors, memory mappings and threads it had before,
//!   and `/dev/shm` holds none of the test's segments.
//! - Pools: started and stopped 200 times (plain pools and frame pools with rings): no child
//!   process left (zombie or alive, read from `/proc`), no segment, no descriptor.
//!
//! `SHMFLOW_LEAK_CYCLES` sets the number of ring cycles (default 10,000) and
//! `SHMFLOW_POOL_CYCLES` the number of pool cycles (default 200).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{children, fork_child, Pipe};
use shmflow::process::WorkerPool;
use shmflow::{AttachError, Backpressure, CreateError, Mode, OpenError, Ring};

/// What a process holds that a leak would show in.
#[derive(Debug, PartialEq, Eq)]
struct Holdings {
    fds: BTreeSet<String>,
    mappings: usize,
    threads: usize,
    children: BTreeSet<u32>,
    segments: BTreeSet<String>,
}

/// Reads this process's holdings; `prefix` selects the segments in `/dev/shm` that count.
fn holdings(prefix: &str) -> Holdings {
    let fds = std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .filter_map(|e| e.ok())
        // The directory handle used to read the listing shows up in it; its number is the
        // lowest free one, so it is the same before and after unless something leaked.
        .map(|e| {
            let target = std::fs::read_link(e.path())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            format!("{} -> {target}", e.file_name().to_string_lossy())
        })
        .filter(|s| !s.contains("/proc/") || !s.ends_with("/fd"))
        .collect();
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("Threads: in /proc/self/status");
    Holdings {
        fds,
        mappings: maps.lines().count(),
        threads,
        children: children(),
        segments: segments(prefix),
    }
}

/// Entries of `/dev/shm` whose name contains `prefix`.
fn segments(prefix: &str) -> BTreeSet<String> {
    std::fs::read_dir("/dev/shm")
        .expect("read /dev/shm")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(prefix))
        .collect()
}

fn env_count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const MODES: [Mode; 3] = [
    Mode::Broadcast(Backpressure::Block),
    Mode::Broadcast(Backpressure::DropOldest),
    Mode::Queue,
];

/// One cycle: everything a ring's users do, success and failure paths.
fn ring_cycle(prefix: &str, i: usize) {
    let name = format!("{prefix}{i}");
    let mode = MODES[i % MODES.len()];
    let ring = Ring::<u32>::create(&name)
        .shape([16])
        .slots(2 + (i % 3) as u32)
        .mode(mode)
        .max_readers(2)
        .max_writers(1)
        .build()
        .expect("create");

    // The name is taken now.
    match Ring::<u32>::create(&name).shape([16]).build() {
        Err(CreateError::AlreadyExists { .. }) => {}
        other => panic!("create over a live ring: {:?}", other.map(|_| ())),
    }
    // A second handle by name, as another process would open it; a wrong dtype is refused.
    let opened = Ring::<u32>::open(&name).expect("open");
    assert!(matches!(
        Ring::<f64>::open(&name),
        Err(OpenError::LayoutMismatch { .. })
    ));

    let mut w = ring.writer().expect("writer");
    let mut r1 = opened.reader().expect("reader 1");
    let mut r2 = if matches!(mode, Mode::Queue) {
        None
    } else {
        Some(opened.reader().expect("reader 2"))
    };
    if r2.is_some() {
        // The peer table holds two readers: a third is refused, and refusing leaks nothing.
        assert!(matches!(
            opened.reader(),
            Err(AttachError::TooManyReaders { max: 2 })
        ));
    } else {
        assert!(matches!(
            ring.writer(),
            Err(AttachError::TooManyWriters { max: 1 })
        ));
    }

    let mut slot = w.try_reserve().expect("reserve");
    slot.as_mut_slice().fill(i as u32);
    slot.commit();
    let f = r1
        .recv_timeout(Duration::from_secs(5))
        .expect("reader 1 gets the frame");
    assert!(f.as_slice().iter().all(|&v| v == i as u32));
    if let Some(r2) = r2.as_mut() {
        let f = r2
            .recv_timeout(Duration::from_secs(5))
            .expect("reader 2 gets the frame");
        assert_eq!(f.as_slice()[0], i as u32);
    }

    // Now and then a forked peer attaches, reads a frame and detaches in another process.
    if i.is_multiple_of(250) {
        drop(r2.take());
        let attached = Pipe::new();
        let child_name = name.clone();
        let child = fork_child(|| {
            let Ok(ring) = Ring::<u32>::open(&child_name) else {
                return 2;
            };
            let Ok(mut r) = ring.reader() else { return 3 };
            attached.send(b'a');
            match r.recv_timeout(Duration::from_secs(10)) {
                Ok(f) if f.as_slice()[0] == 7 => 0,
                _ => 4,
            }
        });
        // Broadcast readers see the frames committed after they attached: send once the
        // child says it is attached.
        attached.expect(b'a');
        let mut s = w.reserve_timeout(Duration::from_secs(10)).expect("reserve");
        s.as_mut_slice().fill(7);
        s.commit();
        child.join_ok();
        while r1.try_recv().is_ok() {}
    }

    drop(r2);
    drop(r1);
    drop(w);
    drop(opened);
    drop(ring); // the owner removes the segment
    assert!(matches!(
        Ring::<u32>::open(&name),
        Err(OpenError::NotFound { .. })
    ));
}

fn ring_cycles_leave_nothing() {
    let cycles = env_count("SHMFLOW_LEAK_CYCLES", 10_000);
    let prefix = format!("t-leak-{}-", std::process::id());
    // Warm-up: lazily allocated process state (the logger, the doorbell's socket buffers,
    // the allocator's arenas) is not a leak.
    for i in 0..3 {
        ring_cycle(&format!("{prefix}warm-"), i);
    }
    let before = holdings(&prefix);
    let t = Instant::now();
    for i in 0..cycles {
        ring_cycle(&prefix, i);
    }
    let took = t.elapsed();
    let after = holdings(&prefix);
    assert_eq!(after, before, "after {cycles} ring cycles");
    assert!(
        after.segments.is_empty(),
        "segments left: {:?}",
        after.segments
    );
    println!(
        "  {cycles} ring cycles in {took:.2?} ({:.0} us each): {} fds, {} mappings, {} threads \
         before and after",
        took.as_secs_f64() * 1e6 / cycles as f64,
        after.fds.len(),
        after.mappings,
        after.threads
    );
}

fn pool_cycles_leave_nothing() {
    let cycles = env_count("SHMFLOW_POOL_CYCLES", 200);
    let pid = std::process::id();
    let prefix = format!("-{pid}-");
    let before = holdings(&prefix);
    assert!(
        before.children.is_empty(),
        "children before: {:?}",
        before.children
    );
    let t = Instant::now();
    for i in 0..cycles {
        if i % 10 == 9 {
            frame_pool_cycle(i);
        } else {
            let pool = WorkerPool::builder()
                .workers(2)
                .build(|_: &mut (), _, x: u64| x + 1)
                .expect("pool");
            assert_eq!(pool.map(0..8u64).expect("map"), (1..9).collect::<Vec<_>>());
            // Every other pool is dropped without shutdown(): Drop must clean up as well.
            if i % 2 == 0 {
                assert_eq!(pool.shutdown().len(), 2);
            }
        }
    }
    let took = t.elapsed();
    let after = holdings(&prefix);
    assert_eq!(after, before, "after {cycles} pool cycles");
    println!(
        "  {cycles} pool cycles in {took:.2?}: no child, no segment, {} fds before and after",
        after.fds.len()
    );
}

/// A frame pool over a broadcast ring with an output queue ring, started, fed and dropped.
fn frame_pool_cycle(i: usize) {
    let input = format!("t-leakpool-in-{}-{i}", std::process::id());
    let output = format!("t-leakpool-out-{}-{i}", std::process::id());
    let in_ring = Ring::<u8>::create(&input)
        .shape([64])
        .slots(4)
        .max_readers(4)
        .mode(Mode::Broadcast(Backpressure::Block))
        .build()
        .expect("input ring");
    let out_ring = Ring::<u64>::create(&output)
        .shape([1])
        .slots(4)
        .mode(Mode::Queue)
        .max_readers(1)
        .max_writers(4)
        .build()
        .expect("output ring");
    let mut out_reader = out_ring.reader().expect("output reader");
    let pool = WorkerPool::builder()
        .workers(2)
        .build_frames::<u8, u64, u64, _>(&input, Some(&output), |_: &mut (), _, frame, out| {
            let sum = frame.iter().map(|&b| u64::from(b)).sum::<u64>();
            if let Some(out) = out {
                out.as_mut_slice()[0] = sum;
            }
            sum
        })
        .expect("frame pool");
    pool.start().expect("start");
    let mut w = in_ring.writer().expect("writer");
    const N: u64 = 3;
    for seq in 0..N {
        let mut s = w.reserve_timeout(Duration::from_secs(10)).expect("reserve");
        s.as_mut_slice().fill(seq as u8);
        s.commit();
    }
    for (seq, r) in pool.imap(0..N).enumerate() {
        assert_eq!(r.expect("task").expect("frame"), 64 * seq as u64);
        while out_reader.try_recv().is_ok() {}
    }
    drop(pool);
    drop(out_reader);
    drop(w);
}

fn main() {
    let tests: &[(&str, fn())] = &[
        ("ring_cycles_leave_nothing", ring_cycles_leave_nothing),
        ("pool_cycles_leave_nothing", pool_cycles_leave_nothing),
    ];
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let (mut passed, mut failed) = (0, 0);
    for (name, f) in tests {
        if !filter.is_empty() && !filter.iter().any(|p| name.contains(p.as_str())) {
            continue;
        }
        let t = Instant::now();
        let ok = std::panic::catch_unwind(f).is_ok();
        println!(
            "test {name} ... {} ({:.2?})",
            if ok { "ok" } else { "FAILED" },
            t.elapsed()
        );
        if ok {
            passed += 1
        } else {
            failed += 1
        }
    }
    println!(
        "\ntest result: {}. {passed} passed; {failed} failed; 0 ignored; 0 measured\n",
        if failed == 0 { "ok" } else { "FAILED" }
    );
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

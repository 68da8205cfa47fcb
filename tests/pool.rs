//! WorkerPool tests (`harness = false`: fork needs a single-threaded parent, and libtest runs
//! tests on threads). Each scenario runs in sequence; the last ones start threads.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shmflow::process::{self, BoxError, Task, WorkerInfo, WorkerPool};
use shmflow::{ExitReason, PoolError, TaskErrorKind};

fn map_orders_and_unordered_covers() {
    let pool = WorkerPool::builder()
        .workers(2)
        .build(|_: &mut (), _, x: u64| x * 2)
        .unwrap();
    let out = pool.map(0..10_000u64).unwrap();
    assert_eq!(out, (0..10_000).map(|x| x * 2).collect::<Vec<_>>());
    let mut un = pool.map_unordered(0..1000u64).unwrap();
    un.sort_unstable();
    assert_eq!(un, (0..1000).map(|x| (x, x * 2)).collect::<Vec<_>>());
    // imap pulls lazily: an endless input works.
    let first: Vec<u64> = pool.imap(0u64..).take(100).map(|r| r.unwrap()).collect();
    assert_eq!(first, (0..100).map(|x| x * 2).collect::<Vec<_>>());
    // and the pool is still fine afterwards
    assert_eq!(pool.map(vec![5u64]).unwrap(), vec![10]);
    let mut seen = HashSet::new();
    for r in pool.imap_unordered(0..500u64) {
        let (i, v) = r.unwrap();
        assert_eq!(v, i * 2);
        assert!(seen.insert(i));
    }
    assert_eq!(seen.len(), 500);
}

fn init_exit_state_and_worker_id() {
    let pool = WorkerPool::builder()
        .workers(2)
        .chunk_size(7)
        .worker_init(|w: &WorkerInfo| (w.id, 0u64))
        .worker_exit(|_w, state: (usize, u64)| state.1)
        .build(|state: &mut (usize, u64), w, x: u64| {
            assert_eq!(state.0, w.id);
            state.1 += 1;
            (w.id, x)
        })
        .unwrap();
    let out = pool.map(0..1000u64).unwrap();
    assert_eq!(
        out.iter().map(|(_, x)| *x).collect::<Vec<_>>(),
        (0..1000).collect::<Vec<_>>()
    );
    let ids: HashSet<usize> = out.iter().map(|(w, _)| *w).collect();
    assert!(ids.iter().all(|w| *w < 2));
    let insights = pool.insights();
    assert_eq!(insights.iter().map(|i| i.tasks).sum::<u64>(), 1000);
    let exits = pool.shutdown();
    assert_eq!(exits.len(), 2, "one exit value per worker: {exits:?}");
    assert_eq!(
        exits.iter().sum::<u64>(),
        1000,
        "per-worker state counted every task"
    );
}

fn panics_are_reported_and_the_pool_goes_on() {
    let pool = WorkerPool::builder()
        .workers(2)
        .build(|_: &mut (), _, x: u64| {
            if x == 13 {
                panic!("unlucky {x}");
            }
            x
        })
        .unwrap();
    match pool.map(0..100u64) {
        Err(PoolError::Task(e)) => {
            assert_eq!(e.index, 13);
            assert!(e.worker < 2);
            match e.kind {
                TaskErrorKind::Panicked { message, location } => {
                    assert_eq!(message, "unlucky 13");
                    assert!(location.contains("tests/pool.rs"), "{location}");
                }
                other => panic!("{other:?}"),
            }
        }
        other => panic!("{other:?}"),
    }
    let results: Vec<_> = pool.imap(0..20u64).collect();
    assert!(results[13].is_err());
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 19);
    assert_eq!(pool.map(20..30u64).unwrap(), (20..30).collect::<Vec<_>>());
}

fn killed_worker_fails_exactly_its_task() {
    let pool = WorkerPool::builder()
        .workers(2)
        .chunk_size(10)
        .build(|_: &mut (), _, x: u64| {
            if x == 37 {
                // What the OOM killer does.
                let _ = std::process::Command::new("kill")
                    .args(["-9", &std::process::id().to_string()])
                    .status();
                std::thread::sleep(Duration::from_secs(10));
            }
            x + 1
        })
        .unwrap();
    let pids_before = pool.pids();
    let results: Vec<_> = pool.imap(0..100u64).collect();
    for (i, r) in results.iter().enumerate() {
        if i == 37 {
            match r {
                Err(PoolError::Task(e)) => match &e.kind {
                    TaskErrorKind::WorkerDied {
                        reason: ExitReason::Signaled { name, .. },
                    } => assert_eq!(name, "SIGKILL"),
                    other => panic!("{other:?}"),
                },
                other => panic!("task 37: {other:?}"),
            }
        } else {
            assert_eq!(*r.as_ref().unwrap(), i as u64 + 1, "task {i}");
        }
    }
    assert_eq!(pool.insights().iter().map(|i| i.restarts).sum::<u64>(), 1);
    let _ = pids_before;
    assert_eq!(pool.pids().len(), 2, "the dead worker was replaced");
}

fn timeouts_kill_and_replace() {
    let pool = WorkerPool::builder()
        .workers(2)
        .task_timeout(Duration::from_millis(300))
        .build(|_: &mut (), _, x: u64| {
            if x == 3 {
                std::thread::sleep(Duration::from_secs(30));
            }
            x
        })
        .unwrap();
    let t = Instant::now();
    let results: Vec<_> = pool.imap(0..10u64).collect();
    assert!(t.elapsed() < Duration::from_secs(10));
    for (i, r) in results.iter().enumerate() {
        if i == 3 {
            assert!(
                matches!(r, Err(PoolError::Task(e)) if matches!(e.kind, TaskErrorKind::TimedOut { .. })),
                "{r:?}"
            );
        } else {
            assert_eq!(*r.as_ref().unwrap(), i as u64);
        }
    }
}

fn lifespan_and_keep_alive() {
    let pool = WorkerPool::builder()
        .workers(2)
        .lifespan(10)
        .worker_exit(|_, _: ()| 1u32)
        .build(|_: &mut (), _, x: u64| x)
        .unwrap();
    assert_eq!(pool.map(0..100u64).unwrap().len(), 100);
    let restarts: u64 = pool.insights().iter().map(|i| i.restarts).sum();
    assert!(
        restarts >= 8,
        "100 tasks, lifespan 10, 2 workers: {restarts} restarts"
    );
    let exits = pool.shutdown();
    assert!(exits.len() >= 10, "{} exit values", exits.len());

    let kept = WorkerPool::builder()
        .workers(2)
        .build(|_: &mut (), _, x: u64| x)
        .unwrap();
    kept.map(0..10u64).unwrap();
    let a: HashSet<u32> = kept.pids().into_iter().collect();
    kept.map(0..10u64).unwrap();
    let b: HashSet<u32> = kept.pids().into_iter().collect();
    assert_eq!(a, b, "keep-alive reuses the workers");

    let fresh = WorkerPool::builder()
        .workers(2)
        .keep_alive(false)
        .build(|_: &mut (), _, _x: u64| std::process::id())
        .unwrap();
    let a: HashSet<u32> = fresh.map(0..50u64).unwrap().into_iter().collect();
    assert!(
        fresh.pids().is_empty(),
        "keep_alive(false) stops workers after a map"
    );
    let b: HashSet<u32> = fresh.map(0..50u64).unwrap().into_iter().collect();
    assert!(a.is_disjoint(&b), "new workers for the next map");
}

fn apply_and_apply_async() {
    let pool = WorkerPool::builder()
        .workers(2)
        .build(|_: &mut (), _, x: u64| x * x)
        .unwrap();
    assert_eq!(pool.apply(12).unwrap(), 144);
    let handles: Vec<_> = (0..10u64).map(|x| pool.apply_async(x)).collect();
    let got: Vec<u64> = handles.into_iter().map(|h| h.get().unwrap()).collect();
    assert_eq!(got, (0..10).map(|x| x * x).collect::<Vec<_>>());
    let slow = WorkerPool::builder()
        .workers(1)
        .build(|_: &mut (), _, ms: u64| {
            std::thread::sleep(Duration::from_millis(ms));
            ms
        })
        .unwrap();
    let h = slow.apply_async(500);
    assert!(matches!(
        h.get_timeout(Duration::from_millis(50)),
        Err(PoolError::Timeout)
    ));
    assert_eq!(h.get_timeout(Duration::from_secs(10)).unwrap(), 500);
}

fn init_failures_give_up() {
    let pool = WorkerPool::builder()
        .workers(1)
        .worker_init(|_| -> u32 { panic!("cannot connect to the database") })
        .build(|_: &mut u32, _, x: u64| x)
        .unwrap();
    match pool.map(0..10u64) {
        Err(PoolError::WorkerInit {
            attempts, reason, ..
        }) => {
            assert_eq!(attempts, 3);
            assert!(
                matches!(reason, ExitReason::Panicked { ref message, .. } if message.contains("database")),
                "{reason:?}"
            );
        }
        other => panic!("{other:?}"),
    }
}

fn nested_pools_work() {
    let outer = WorkerPool::builder()
        .workers(2)
        .build(|_: &mut (), _, x: u64| {
            let inner = WorkerPool::builder()
                .workers(2)
                .build(|_: &mut (), _, y: u64| y + 1)
                .unwrap();
            inner.map(0..x).unwrap().into_iter().sum::<u64>()
        })
        .unwrap();
    assert_eq!(outer.map(vec![3u64, 4]).unwrap(), vec![6, 10]);
}

fn children() -> usize {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read_to_string(e.path().join("stat"))
                .map(|s| {
                    s.rsplit(')').next().unwrap_or("").split_whitespace().nth(1)
                        == Some(me.as_str())
                })
                .unwrap_or(false)
        })
        .count()
}

fn segments() -> usize {
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .contains(&format!("pool-{}-", std::process::id()))
        })
        .count()
}

fn start_stop_leaves_nothing() {
    let before = children();
    for _ in 0..20 {
        let pool = WorkerPool::builder()
            .workers(2)
            .build(|_: &mut (), _, x: u64| x)
            .unwrap();
        assert_eq!(pool.map(0..10u64).unwrap().len(), 10);
    }
    assert_eq!(children(), before, "no worker processes left");
    assert_eq!(segments(), 0, "no status segments left");
}

fn progress_bar_does_not_break_output() {
    let pool = WorkerPool::builder()
        .workers(2)
        .progress_bar(true)
        .build(|_: &mut (), _, x: u64| x)
        .unwrap();
    assert_eq!(pool.map(0..5000u64).unwrap().len(), 5000);
}

/// A task type for the re-exec start method: its fields are the shared read-only data, sent
/// once to each worker.
#[derive(Serialize, Deserialize)]
struct Scale {
    factor: u64,
}

impl Task for Scale {
    type Input = u64;
    type Output = u64;
    type State = u64;
    type ExitValue = u64;
    fn init(&self, w: &WorkerInfo) -> Result<u64, BoxError> {
        Ok(w.id as u64)
    }
    fn call(&self, state: &mut u64, _w: &WorkerInfo, x: u64) -> u64 {
        *state += 1;
        x * self.factor
    }
    fn exit(&self, state: u64, _w: &WorkerInfo) -> u64 {
        state
    }
}

fn reexec_pool_from_a_threaded_parent() {
    let _t = std::thread::spawn(|| std::thread::sleep(Duration::from_millis(200)));
    assert!(matches!(
        WorkerPool::builder()
            .workers(1)
            .build(|_: &mut (), _, x: u64| x)
            .unwrap()
            .map(0..1u64),
        Err(PoolError::Spawn(shmflow::SpawnError::Threads { .. }))
    ));
    let pool = WorkerPool::builder()
        .workers(2)
        .build_reexec(Scale { factor: 3 })
        .unwrap();
    assert_eq!(
        pool.map(0..100u64).unwrap(),
        (0..100).map(|x| x * 3).collect::<Vec<_>>()
    );
    let exits = pool.shutdown();
    // state starts at the worker id and counts tasks
    assert_eq!(exits.iter().sum::<u64>(), 100 + 1);
}

/// A camera: writes `n` frames whose pixels are `(seq + i) % 251` into a broadcast ring.
#[derive(Serialize, Deserialize)]
struct Camera {
    ring: String,
}

impl process::Backend for Camera {
    type Request = u64;
    type Reply = u64;
    fn run(self, ctx: &mut process::Context<u64, u64>) -> Result<(), process::BoxError> {
        let ring = shmflow::Ring::<u8>::open(&self.ring)?;
        let mut w = ring.writer()?;
        while let Some(n) = ctx.recv()? {
            for _ in 0..n {
                let mut slot = w.reserve()?;
                let seq = slot.seq();
                for (i, b) in slot.as_mut_bytes().iter_mut().enumerate() {
                    *b = ((seq as usize + i) % 251) as u8;
                }
                slot.commit();
            }
            ctx.reply(&n)?;
        }
        Ok(())
    }
}

fn expected_mean(seq: u64, len: usize) -> f64 {
    (0..len)
        .map(|i| ((seq as usize + i) % 251) as f64)
        .sum::<f64>()
        / len as f64
}

fn frames_through_rings() {
    use shmflow::{Backpressure, Mode, Ring};
    let input = format!("t-frames-in-{}", std::process::id());
    let output = format!("t-frames-out-{}", std::process::id());
    let _in_ring = Ring::<u8>::create(&input)
        .shape([48, 64, 3])
        .slots(8)
        .max_readers(4)
        .mode(Mode::Broadcast(Backpressure::Block))
        .build()
        .unwrap();
    let out_ring = Ring::<f32>::create(&output)
        .shape([2])
        .slots(8)
        .mode(Mode::Queue)
        .max_readers(1)
        .max_writers(4)
        .build()
        .unwrap();
    let mut out_reader = out_ring.reader().unwrap();
    let pool = WorkerPool::builder()
        .workers(2)
        .build_frames::<u8, f32, f64, _>(&input, Some(&output), |_: &mut (), w, frame, out| {
            let mean = frame.iter().map(|&b| f64::from(b)).sum::<f64>() / frame.len() as f64;
            if let Some(out) = out {
                let mut v = out.view_mut();
                v[[0]] = mean as f32;
                v[[1]] = w.id as f32;
            }
            mean
        })
        .unwrap();
    pool.start().unwrap();
    let mut camera = process::ForkBuilder::new("camera")
        .spawn(Camera {
            ring: input.clone(),
        })
        .unwrap();
    const N: u64 = 200;
    camera.send(&N).unwrap();
    let len = 48 * 64 * 3;
    let mut tags = Vec::new();
    for (seq, r) in pool.imap(0..N).enumerate() {
        let mean = r.unwrap().unwrap();
        assert!(
            (mean - expected_mean(seq as u64, len)).abs() < 1e-9,
            "frame {seq}"
        );
        while let Ok(f) = out_reader.try_recv() {
            let tag = f.tag();
            assert!((f64::from(f[[0]]) - expected_mean(tag, len)).abs() < 1e-3);
            tags.push(tag);
        }
    }
    while tags.len() < N as usize {
        let f = out_reader.recv_timeout(Duration::from_secs(10)).unwrap();
        tags.push(f.tag());
    }
    tags.sort_unstable();
    assert_eq!(
        tags,
        (0..N).collect::<Vec<_>>(),
        "one output frame per input frame"
    );
    assert_eq!(camera.recv().unwrap(), N);
    camera.stop(Duration::from_secs(5)).unwrap();
    assert!(
        pool.insights().iter().all(|i| i.tasks > 0),
        "both workers took frames"
    );
}

/// Each chunk goes to the least busy worker: two tasks with two in flight at most go to both
/// workers, not both to worker 0 (which would leave worker 1 idle, and a crash of worker 0
/// would fail or re-dispatch everything).
fn tasks_go_to_the_least_busy_worker() {
    let pool = WorkerPool::builder()
        .workers(2)
        .chunk_size(1)
        .max_in_flight(2)
        .build(|_: &mut (), w, _x: u64| w.id)
        .unwrap();
    pool.start().unwrap();
    let ids: HashSet<usize> = pool.map(0..2u64).unwrap().into_iter().collect();
    assert_eq!(ids, HashSet::from([0, 1]));
}

/// A lossless broadcast ring of `len` bytes per frame for frame pools of up to 2 workers.
fn lossless_input(name: &str, len: usize, slots: u32) -> shmflow::Ring<u8> {
    use shmflow::{Backpressure, Mode, Ring};
    Ring::<u8>::create(name)
        .shape([len])
        .slots(slots)
        .max_readers(2)
        .mode(Mode::Broadcast(Backpressure::Block))
        .build()
        .unwrap()
}

/// A frame pool over `input` whose task returns the sum of its frame's bytes.
fn byte_sum_pool(
    input: &str,
    workers: usize,
) -> WorkerPool<u64, Result<u64, shmflow::process::FrameError>> {
    WorkerPool::builder()
        .workers(workers)
        .build_frames::<u8, u8, u64, _>(input, None, |_: &mut (), _, frame, _| {
            frame.iter().map(|&b| u64::from(b)).sum()
        })
        .unwrap()
}

/// A frame task whose frame the worker's reader has already passed returns `Gone` at once
/// (it used to wait for a later frame, here one that never comes, and time out), and a
/// worker releases its input frame when its task ends (it used to hold it until the next
/// task, holding a lossless producer).
fn frame_tasks_release_their_frame_and_report_gone_frames() {
    use shmflow::process::FrameError;
    let input = format!("t-frames-gone-{}", std::process::id());
    let ring = lossless_input(&input, 16, 4);
    let pool = byte_sum_pool(&input, 1);
    pool.start().unwrap();
    let mut w = ring.writer().unwrap();
    for seq in 0..3u64 {
        let mut s = w.reserve_timeout(Duration::from_secs(10)).unwrap();
        s.as_mut_slice().fill(seq as u8);
        s.commit();
    }
    assert_eq!(pool.map([2u64]).unwrap(), vec![Ok(32)]);
    let status = ring.status();
    assert_eq!(status.readers.len(), 1);
    assert_eq!(
        status.readers[0].cursor, 3,
        "the worker released frame 2 when its task ended"
    );
    assert_eq!(
        pool.map([0u64]).unwrap(),
        vec![Err(FrameError::Gone { next: 3 })]
    );
    drop(pool);
    drop(w);
}

/// Issue 11 finding: frames written before `start()` made each of their tasks wait 10 s and
/// fail with `Timeout` (the docs promise `Gone`). A worker's reader now knows where it
/// attached, so those tasks fail at once with `Gone`; the frame wait is a setting
/// (`frame_wait`); and `worker_exit` runs for frame pools.
fn frames_written_before_start_are_gone_at_once() {
    use shmflow::process::FrameError;
    let input = format!("t-frames-early-{}", std::process::id());
    let ring = lossless_input(&input, 16, 8);
    let mut w = ring.writer().unwrap();
    for seq in 0..3u64 {
        let mut s = w.reserve_timeout(Duration::from_secs(10)).unwrap();
        s.as_mut_slice().fill(seq as u8);
        s.commit();
    }
    let pool = WorkerPool::builder()
        .workers(2)
        .frame_wait(Duration::from_millis(200))
        .worker_init(|w| w.id as u64 * 100)
        .worker_exit(|_, tasks_seen: u64| tasks_seen)
        .build_frames::<u8, u8, u64, _>(&input, None, |seen: &mut u64, _, frame, _| {
            *seen += 1;
            frame.iter().map(|&b| u64::from(b)).sum()
        })
        .unwrap();
    pool.start().unwrap();
    let t = Instant::now();
    let early = pool.map(0..3u64).unwrap();
    assert!(
        early
            .iter()
            .all(|r| matches!(r, Err(FrameError::Gone { next: 3 }))),
        "{early:?}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    // Frame 3 never comes: the configured frame wait, not 10 s.
    let t = Instant::now();
    assert_eq!(
        pool.map([3u64]).unwrap(),
        vec![Err(FrameError::Timeout(Duration::from_millis(200)))]
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    // Frames written now (seq 3 and 4) arrive.
    for fill in [3u8, 4] {
        let mut s = w.reserve_timeout(Duration::from_secs(10)).unwrap();
        s.as_mut_slice().fill(fill);
        s.commit();
    }
    assert_eq!(pool.map([4u64]).unwrap(), vec![Ok(64)]);
    let mut exits = pool.shutdown();
    exits.sort_unstable();
    assert_eq!(exits.len(), 2, "worker_exit ran in both frame workers");
    assert!(exits[0] < 100 && exits[1] >= 100, "{exits:?}");
    drop(w);
}

/// Issue 11 finding: `worker_init` could not return an error, so a failed connection had to
/// panic and was retried three times. Now an `Err` fails the start at once, with its cause.
fn worker_init_error_fails_the_start_at_once_with_its_cause() {
    let log = std::env::temp_dir().join(format!("shmflow-init-{}", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let path = log.clone();
    let pool = WorkerPool::builder()
        .workers(1)
        .try_worker_init(move |_| -> Result<u32, BoxError> {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            writeln!(f, "attempt")?;
            Err("cannot connect to the database".into())
        })
        .build(|_: &mut u32, _, x: u64| x)
        .unwrap();
    let t = Instant::now();
    match pool.start() {
        Err(PoolError::InitFailed { worker, message }) => {
            assert_eq!(worker, 0);
            assert!(
                message.contains("cannot connect to the database"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(10));
    let attempts = std::fs::read_to_string(&log).unwrap().lines().count();
    std::fs::remove_file(&log).unwrap();
    assert_eq!(attempts, 1, "worker_init was retried");
    // The same error from map, and the pool still works once init can succeed.
    assert!(matches!(
        pool.map(0..3u64),
        Err(PoolError::InitFailed { .. })
    ));
    drop(pool);
    let ok = WorkerPool::builder()
        .workers(1)
        .try_worker_init(|_| Ok::<u32, std::io::Error>(7))
        .build(|s: &mut u32, _, x: u64| x + u64::from(*s))
        .unwrap();
    assert_eq!(ok.map(0..3u64).unwrap(), vec![7, 8, 9]);
}

/// Issue 11 finding: `map` required `IntoIter: 'static`, so `pool.map(data.iter().copied())`
/// did not compile. Borrowed inputs now work in every map flavour.
fn map_accepts_borrowed_iterators() {
    let data: Vec<u64> = (0..100).collect();
    let pool = WorkerPool::builder()
        .workers(2)
        .build(|_: &mut (), _, x: u64| x * 2)
        .unwrap();
    let want: Vec<u64> = data.iter().map(|x| x * 2).collect();
    assert_eq!(pool.map(data.iter().copied()).unwrap(), want);
    let mut un: Vec<u64> = pool
        .map_unordered(data.iter().copied())
        .unwrap()
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    un.sort_unstable();
    assert_eq!(un, want);
    let lazy: Vec<u64> = pool
        .imap(data.iter().copied())
        .map(Result::unwrap)
        .collect();
    assert_eq!(lazy, want);
    assert_eq!(pool.imap_unordered(data.iter().copied()).count(), 100);
    // An endless borrowed iterator is pulled lazily.
    let first: Vec<u64> = pool
        .imap(data.iter().copied().cycle())
        .take(250)
        .map(Result::unwrap)
        .collect();
    assert_eq!(first.len(), 250);
    assert_eq!(first[249], want[49]);
}

/// Issue 11 finding: `chunk_size(0)` silently became 1 (and `workers(0)` 1). Both are now
/// refused by `build` with a message that says what to do.
fn zero_chunk_size_and_zero_workers_are_errors() {
    match WorkerPool::builder()
        .workers(1)
        .chunk_size(0)
        .build(|_: &mut (), _, x: u64| x)
    {
        Err(PoolError::InvalidSetting(m)) => assert!(m.contains("chunk_size(0)"), "{m}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    match WorkerPool::builder()
        .workers(0)
        .build(|_: &mut (), _, x: u64| x)
    {
        Err(PoolError::InvalidSetting(m)) => assert!(m.contains("workers(0)"), "{m}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

/// Issue 11 finding: the pool's type was `WorkerPool<FnTaskOf<I, O, S, E, F>>`, with a closure
/// type inside, so a user could not keep a pool in a struct field. `WorkerPool<I, O, X>` names
/// only what crosses the wire: inputs, outputs and the workers' exit values.
fn worker_pool_can_be_named_in_a_struct() {
    struct Service {
        doubler: WorkerPool<u64, u64>,
        counter: WorkerPool<u64, u64, u64>,
    }
    impl Service {
        fn new() -> Result<Self, PoolError> {
            Ok(Self {
                doubler: WorkerPool::builder()
                    .workers(1)
                    .build(|_: &mut (), _, x: u64| x * 2)?,
                counter: WorkerPool::builder()
                    .workers(1)
                    .worker_init(|_| 0u64)
                    .worker_exit(|_, n: u64| n)
                    .build(|n: &mut u64, _, x: u64| {
                        *n += 1;
                        x + 1
                    })?,
            })
        }
    }
    let service = Service::new().unwrap();
    assert_eq!(service.doubler.apply(21).unwrap(), 42);
    assert_eq!(
        service.counter.map(0..10u64).unwrap(),
        (1..11).collect::<Vec<_>>()
    );
    assert_eq!(service.counter.shutdown(), vec![10]);
    // Pools of different closures with the same wire types have the same type.
    let mut pools: Vec<WorkerPool<u64, u64>> = vec![service.doubler];
    pools.push(
        WorkerPool::builder()
            .workers(1)
            .build(|_: &mut (), _, x: u64| x + 100)
            .unwrap(),
    );
    assert_eq!(pools[1].apply(1).unwrap(), 101);
}

/// Issue 11 finding: "all frames written, then `map`" in one thread blocked the writer's
/// `reserve()` for ever. That order cannot work on a lossless ring: no worker reads a frame
/// before it is asked for it, so the writer can run at most `slots` frames ahead. What the
/// library owes is a way out and orders that work: `reserve_timeout` says `Timeout` after
/// exactly `slots` frames (nothing is lost, those frames then map), and a producer on its own
/// thread, started after `start()`, streams any number of frames through `map`.
fn frames_written_all_then_mapped_time_out_instead_of_hanging() {
    let input = format!("t-frames-order-{}", std::process::id());
    let ring = lossless_input(&input, 64, 4);
    let pool = byte_sum_pool(&input, 2);
    pool.start().unwrap();
    let mut w = ring.writer().unwrap();
    // The order a user tries first: write everything, then map. The way out is a timeout.
    let mut written = 0u64;
    let stalled = loop {
        match w.reserve_timeout(Duration::from_millis(300)) {
            Ok(mut s) => {
                s.as_mut_slice().fill(written as u8);
                s.commit();
                written += 1;
            }
            Err(e) => break e,
        }
        assert!(written <= 4, "a lossless writer ran ahead of its readers");
    };
    assert_eq!(written, 4, "stopped after the ring's 4 slots: {stalled}");
    let got = pool.map(0..written).unwrap();
    assert_eq!(
        got,
        (0..written).map(|seq| Ok(seq * 64)).collect::<Vec<_>>()
    );
    // The order that works: the producer on its own thread (after start(), so the parent has
    // already forked its workers), the caller mapping.
    let n = 200u64;
    let producer = std::thread::spawn(move || {
        for seq in written..written + n {
            let mut s = w.reserve_timeout(Duration::from_secs(30)).unwrap();
            s.as_mut_slice().fill(seq as u8);
            s.commit();
        }
    });
    let got = pool.map(written..written + n).unwrap();
    producer.join().unwrap();
    assert_eq!(
        got,
        (written..written + n)
            .map(|seq| Ok(u64::from(seq as u8) * 64))
            .collect::<Vec<_>>()
    );
    drop(pool);
    drop(ring);
}

fn main() {
    process::init().register_pool::<Scale>().run();
    let tests: &[(&str, fn())] = &[
        (
            "map_orders_and_unordered_covers",
            map_orders_and_unordered_covers,
        ),
        (
            "init_exit_state_and_worker_id",
            init_exit_state_and_worker_id,
        ),
        (
            "panics_are_reported_and_the_pool_goes_on",
            panics_are_reported_and_the_pool_goes_on,
        ),
        (
            "killed_worker_fails_exactly_its_task",
            killed_worker_fails_exactly_its_task,
        ),
        ("timeouts_kill_and_replace", timeouts_kill_and_replace),
        ("lifespan_and_keep_alive", lifespan_and_keep_alive),
        ("apply_and_apply_async", apply_and_apply_async),
        ("init_failures_give_up", init_failures_give_up),
        (
            "worker_init_error_fails_the_start_at_once_with_its_cause",
            worker_init_error_fails_the_start_at_once_with_its_cause,
        ),
        (
            "map_accepts_borrowed_iterators",
            map_accepts_borrowed_iterators,
        ),
        (
            "frames_written_before_start_are_gone_at_once",
            frames_written_before_start_are_gone_at_once,
        ),
        (
            "zero_chunk_size_and_zero_workers_are_errors",
            zero_chunk_size_and_zero_workers_are_errors,
        ),
        (
            "worker_pool_can_be_named_in_a_struct",
            worker_pool_can_be_named_in_a_struct,
        ),
        ("nested_pools_work", nested_pools_work),
        ("start_stop_leaves_nothing", start_stop_leaves_nothing),
        (
            "progress_bar_does_not_break_output",
            progress_bar_does_not_break_output,
        ),
        ("frames_through_rings", frames_through_rings),
        (
            "tasks_go_to_the_least_busy_worker",
            tasks_go_to_the_least_busy_worker,
        ),
        (
            "frame_tasks_release_their_frame_and_report_gone_frames",
            frame_tasks_release_their_frame_and_report_gone_frames,
        ),
        // Last ones: start threads, after which this process may no longer fork.
        (
            "frames_written_all_then_mapped_time_out_instead_of_hanging",
            frames_written_all_then_mapped_time_out_instead_of_hanging,
        ),
        (
            "reexec_pool_from_a_threaded_parent",
            reexec_pool_from_a_threaded_parent,
        ),
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
    println!("\ntest result: {}. {passed} passed; {failed} failed; 0 ignored; 0 measured; 0 filtered out\n", if failed == 0 { "ok" } else { "FAILED" });
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

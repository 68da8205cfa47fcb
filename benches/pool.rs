//! Criterion benchmarks of the worker pool.
//!
//! ```text
//! cargo bench --bench pool -- --warm-up-time 1 --measurement-time 3
//! cargo bench --bench pool -- pool_apply_rtt          # one group
//! ```
//!
//! - `pool_trivial_1m`: one `map` of 1,000,000 trivial tasks (`x * 2`) on 2 workers, end to end
//!   (inputs cut into chunks, sent, computed, results sent back and put in order). `map` uses a
//!   pool built once, outside the timed loop (its workers are forked at the first map, during
//!   the warm-up); `start_map_shutdown` times a new pool per map: building it, forking the
//!   workers, the map, and stopping and reaping the workers. Target: ≤ 0.05 s per map.
//! - `pool_apply_rtt`: one `apply_async(x).get()` round trip on an idle pool of 2 workers.
//!   Target: ≤ 20 µs.
//! - `pool_frames_1080p`: frames/s through a frame pool (`PoolBuilder::build_frames`) with 1
//!   and 2 workers. A camera child process writes 1080×1920×3 `u8` frames into a lossless
//!   broadcast ring (for `n` iterations it is told to write `n` frames); each worker computes
//!   its frames' mean luminance and writes a 135×240 grayscale thumbnail into a queue ring;
//!   this process collects the means in order with `imap`, checks each against the frame
//!   pattern, and drains the thumbnails. The time runs from the camera's command to the last
//!   thumbnail. Throughput is in frames ("elem/s"). The same work as `examples/frames_pool.rs`.
//!
//! Forking: workers and the camera are forked children, started lazily when their benchmark
//! first runs. That is safe because this process is single-threaded at that point: criterion is
//! built without its `rayon` feature (`default-features = false` in Cargo.toml, no plotters
//! either) and runs benchmarks on the main thread; every fork site asserts
//! `shmflow::process::thread_count() == 1` first, so the pools never need `allow_threads`.
//!
//! Under `cargo test --benches` criterion runs each benchmark once, as a smoke test.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use shmflow::process::{
    self, Backend, BoxError, Context, ForkBuilder, FrameError, Process, WorkerPool,
};
use shmflow::{Backpressure, Mode, Reader, Ring, TryRecvError};

/// Pools and peers are forked from here: check that nothing started a thread.
fn assert_single_threaded() {
    assert_eq!(
        process::thread_count(),
        1,
        "benchmark pools are forked from a single-threaded process"
    );
}

/// `Some(state)` once the benchmark has first run (criterion skips filtered-out benchmarks, so
/// pools are started lazily).
fn lazy<T>(slot: &mut Option<T>, make: impl FnOnce() -> T) -> &mut T {
    slot.get_or_insert_with(make)
}

// ---------------------------------------------------------------------------------------------
// Trivial tasks and round trips.

const TASKS: u64 = 1_000_000;

fn check_doubled(out: &[u64]) {
    assert_eq!(out.len(), TASKS as usize);
    assert_eq!(out[12_345], 24_690);
    assert_eq!(out[TASKS as usize - 1], 2 * (TASKS - 1));
}

fn trivial(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool_trivial_1m");
    g.throughput(Throughput::Elements(TASKS))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10);

    let mut pool = None;
    g.bench_function("map", |b| {
        let pool = lazy(&mut pool, || {
            assert_single_threaded();
            let pool = WorkerPool::builder()
                .workers(2)
                .build(|_: &mut (), _, x: u64| x * 2)
                .expect("build pool");
            pool.start().expect("start workers");
            pool
        });
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let out = pool.map(0..TASKS).expect("map");
                check_doubled(black_box(&out));
            }
            start.elapsed()
        });
    });
    drop(pool);

    g.bench_function("start_map_shutdown", |b| {
        assert_single_threaded();
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let pool = WorkerPool::builder()
                    .workers(2)
                    .build(|_: &mut (), _, x: u64| x * 2)
                    .expect("build pool");
                let out = pool.map(0..TASKS).expect("map");
                check_doubled(black_box(&out));
                pool.shutdown();
            }
            start.elapsed()
        });
    });
    g.finish();
}

fn apply_rtt(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool_apply_rtt");
    let mut pool = None;
    g.bench_function("apply_async_get", |b| {
        let pool = lazy(&mut pool, || {
            assert_single_threaded();
            let pool = WorkerPool::builder()
                .workers(2)
                .build(|_: &mut (), _, x: u64| x * 2)
                .expect("build pool");
            pool.start().expect("start workers");
            pool
        });
        let mut x = 0u64;
        b.iter(|| {
            x += 1;
            let y = pool.apply_async(black_box(x)).get().expect("apply");
            assert_eq!(y, 2 * x);
        });
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// Frames (the same pattern and work as examples/frames_pool.rs).

const H: usize = 1080;
const W: usize = 1920;
const SCALE: usize = 8;
const TH: usize = H / SCALE;
const TW: usize = W / SCALE;

/// Pixel `(y, x)` of frame `seq`: R = x + seq, G = y + 2 seq, B = x + y + 3 seq (mod 256).
fn pixel(seq: u64, y: usize, x: usize) -> [u8; 3] {
    let s = seq as usize;
    [(x + s) as u8, (y + 2 * s) as u8, (x + y + 3 * s) as u8]
}

/// Writes frame `seq` (rows `y` and `y + 256` are equal).
fn fill(seq: u64, frame: &mut [u8]) {
    let row = W * 3;
    for y in 0..H.min(256) {
        for (x, p) in frame[y * row..(y + 1) * row]
            .chunks_exact_mut(3)
            .enumerate()
        {
            p.copy_from_slice(&pixel(seq, y, x));
        }
    }
    for y in 256..H {
        frame.copy_within((y - 256) * row..(y - 255) * row, y * row);
    }
}

/// `Σ_{i < n} (i + c) mod 256`.
fn wrapped_sum(n: usize, c: usize) -> u64 {
    (0..n).map(|i| ((i + c) % 256) as u64).sum()
}

/// The mean luminance of frame `seq`, from the pattern (`row_sums[c] = wrapped_sum(W, c)`).
fn expected_mean(row_sums: &[u64], seq: u64) -> f64 {
    let s = seq as usize;
    let sum_r = H as u64 * row_sums[s % 256];
    let sum_g = W as u64 * wrapped_sum(H, (2 * s) % 256);
    let sum_b: u64 = (0..H).map(|y| row_sums[(y + 3 * s) % 256]).sum();
    mean_of(299 * sum_r + 587 * sum_g + 114 * sum_b)
}

fn mean_of(luminance_sum: u64) -> f64 {
    luminance_sum as f64 / (1000.0 * (H * W) as f64)
}

/// Returns `Σ (299 R + 587 G + 114 B)` and writes the 8×8-block thumbnail.
fn analyse(frame: &[u8], thumb: &mut [u8]) -> u64 {
    let mut total = 0u64;
    let mut acc = [0u32; TW];
    for (y, row) in frame.chunks_exact(W * 3).enumerate() {
        for (a, block) in acc.iter_mut().zip(row.chunks_exact(SCALE * 3)) {
            let mut s = 0u32;
            for p in block.chunks_exact(3) {
                s += 299 * u32::from(p[0]) + 587 * u32::from(p[1]) + 114 * u32::from(p[2]);
            }
            *a += s;
        }
        if y % SCALE == SCALE - 1 {
            let band = &mut thumb[(y / SCALE) * TW..(y / SCALE + 1) * TW];
            for (t, a) in band.iter_mut().zip(acc.iter_mut()) {
                total += u64::from(*a);
                *t = (*a / (1000 * (SCALE * SCALE) as u32)) as u8;
                *a = 0;
            }
        }
    }
    total
}

/// Writes the frames it is asked for, then replies with their number.
struct Camera {
    ring: String,
}

impl Backend for Camera {
    type Request = u64;
    type Reply = u64;
    fn run(self, ctx: &mut Context<u64, u64>) -> Result<(), BoxError> {
        let ring = Ring::<u8>::open(&self.ring)?;
        let mut writer = ring.writer()?;
        while let Some(n) = ctx.recv()? {
            for _ in 0..n {
                let mut slot = writer.reserve()?;
                let seq = slot.seq();
                fill(seq, slot.as_mut_slice());
                slot.set_tag(seq);
                slot.commit();
            }
            ctx.reply(&n)?;
        }
        Ok(())
    }
}

/// A frame pool and its camera. Fields drop in order: the pool's workers stop first, then the
/// camera, then the rings are removed.
struct Frames {
    pool: WorkerPool<u64, Result<f64, FrameError>>,
    camera: Process<u64, u64>,
    out: Reader<u8>,
    _rings: (Ring<u8>, Ring<u8>),
    next: u64,
    row_sums: Vec<u64>,
}

impl Frames {
    fn new(workers: usize) -> Frames {
        assert_single_threaded();
        let id = format!("{}-{workers}", std::process::id());
        let (input, output) = (
            format!("bench-pool-in-{id}"),
            format!("bench-pool-out-{id}"),
        );
        let in_ring = Ring::<u8>::create(&input)
            .shape([H, W, 3])
            .slots(8)
            .max_readers(workers as u32 + 2)
            .mode(Mode::Broadcast(Backpressure::Block))
            .build()
            .expect("create input ring");
        let out_ring = Ring::<u8>::create(&output)
            .shape([TH, TW])
            // Not the documented 2 × workers + 1: see `out_slots` in examples/frames_pool.rs
            // (with fewer slots an ordered imap can deadlock).
            .slots(4 * workers as u32 + 1)
            .mode(Mode::Queue)
            .max_readers(1)
            .max_writers(workers as u32 + 2)
            .build()
            .expect("create output ring");
        let out = out_ring.reader().expect("output reader");
        let pool = WorkerPool::builder()
            .workers(workers)
            .build_frames::<u8, u8, f64, _>(&input, Some(&output), |_: &mut (), _, frame, out| {
                let out = out.expect("output ring");
                mean_of(analyse(frame.as_slice(), out.as_mut_slice()))
            })
            .expect("build frame pool");
        pool.start().expect("start workers");
        let camera = ForkBuilder::new("bench-camera")
            .spawn(Camera { ring: input })
            .expect("spawn camera");
        Frames {
            pool,
            camera,
            out,
            _rings: (in_ring, out_ring),
            next: 0,
            row_sums: (0..256).map(|c| wrapped_sum(W, c)).collect(),
        }
    }

    /// Streams `n` frames through the pool; returns the time from the camera's command to the
    /// last thumbnail.
    fn run(&mut self, n: u64) -> Duration {
        let (first, end) = (self.next, self.next + n);
        let start = Instant::now();
        self.camera.send(&n).expect("camera alive");
        let mut thumbs = 0;
        for (seq, r) in (first..).zip(self.pool.imap(first..end)) {
            let mean = r.expect("task").expect("frame");
            assert_eq!(mean, expected_mean(&self.row_sums, seq), "frame {seq}");
            loop {
                match self.out.try_recv() {
                    Ok(t) => {
                        assert!((first..end).contains(&t.tag()), "thumbnail tag");
                        thumbs += 1;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(e) => panic!("output ring: {e}"),
                }
            }
        }
        while thumbs < n {
            let t = self
                .out
                .recv_timeout(Duration::from_secs(10))
                .expect("thumbnail");
            assert!((first..end).contains(&t.tag()), "thumbnail tag");
            thumbs += 1;
        }
        let elapsed = start.elapsed();
        assert_eq!(
            self.camera
                .recv_timeout(Duration::from_secs(10))
                .expect("camera reply"),
            n
        );
        self.next = end;
        elapsed
    }
}

fn frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool_frames_1080p");
    g.throughput(Throughput::Elements(1))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10);
    for (id, workers) in [("1_worker", 1), ("2_workers", 2)] {
        let mut state: Option<Frames> = None;
        g.bench_function(id, |b| {
            let f = lazy(&mut state, || Frames::new(workers));
            b.iter_custom(|iters| f.run(iters));
        });
        if let Some(mut f) = state {
            f.camera.stop(Duration::from_secs(5)).expect("camera stop");
        }
    }
    g.finish();
}

criterion_group!(benches, trivial, apply_rtt, frames);
criterion_main!(benches);

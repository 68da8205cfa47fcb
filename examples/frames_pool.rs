//! Array tasks through rings: a camera process streams 1080p RGB frames into a broadcast ring,
//! a pool of workers analyses them in place, and thumbnails come back through a queue ring.
//!
//! ```text
//! cargo run --release --example frames_pool [-- --workers N] [--frames N] [--out-slots N]
//! ```
//!
//! - The **camera** is a child process (a [`Backend`]): asked for `n` frames, it writes `n`
//!   frames of 1080×1920×3 `u8` (6,220,800 bytes) into a lossless broadcast ring, each filled
//!   with a pattern that depends on the frame's sequence number.
//! - The **pool** ([`PoolBuilder::build_frames`](shmflow::process::PoolBuilder::build_frames)):
//!   task `seq` is frame `seq`. Each worker attached its own reader to the input ring in its
//!   init (after the fork), reads its frames in place, computes the frame's mean luminance
//!   (0.299 R + 0.587 G + 0.114 B) and writes a 135×240 grayscale thumbnail (each pixel the mean
//!   luminance of an 8×8 block) straight into a reserved slot of the output queue ring, which
//!   the pool tags with `seq`. Only sequence numbers and the means travel over the control
//!   sockets; the frames never do.
//! - **This process** collects the means in frame order with `pool.imap(0..frames)`, drains the
//!   output ring as it goes (its `4 × workers + 1` slots would otherwise fill up and stall the
//!   workers), and checks every mean against the value computed from the pattern (exactly:
//!   both sides compute the same integer sum) and, for every thumbnail, its tag and a few pixels.
//!
//! The whole run is done with 1 worker and then with `--workers` (default 2) workers, and the
//! frames/s of both are printed. The time includes the camera making the frames: on a 2-CPU
//! machine the camera, the workers and this process share the two CPUs, and once the workers
//! keep up with the camera more of them cannot help, so 2 workers are far from twice as fast
//! as 1 there.
//!
//! The pool's workers and the camera are forked while this process is single-threaded. The
//! rings are created (and owned) by this process and removed when they are dropped; the pool
//! and the camera are stopped: nothing is left in `/dev/shm` or in the process table.

use std::collections::HashSet;
use std::error::Error;
use std::time::{Duration, Instant};

use shmflow::process::{self, Backend, BoxError, Context, ForkBuilder, WorkerPool};
use shmflow::{Backpressure, Mode, Ring};

type Res<T> = Result<T, Box<dyn Error>>;

const H: usize = 1080;
const W: usize = 1920;
/// Downscaling factor of the thumbnail.
const SCALE: usize = 8;
const TH: usize = H / SCALE;
const TW: usize = W / SCALE;
/// Slots of the input ring.
const IN_SLOTS: u32 = 8;

// ---------------------------------------------------------------------------------------------
// The frame pattern.

/// Pixel `(y, x)` of frame `seq`: R = x + seq, G = y + 2 seq, B = x + y + 3 seq (mod 256).
/// Rows `y` and `y + 256` are equal, which lets the camera fill a frame quickly.
fn pixel(seq: u64, y: usize, x: usize) -> [u8; 3] {
    let s = seq as usize;
    [(x + s) as u8, (y + 2 * s) as u8, (x + y + 3 * s) as u8]
}

/// Writes frame `seq` into `frame` (row-major `H × W × 3`).
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

/// The expected luminance sums, computed from the pattern without making the frame.
struct Expected {
    /// `Σ_{x < W} (x + c) mod 256` for every `c`.
    row_sums: Vec<u64>,
}

impl Expected {
    fn new() -> Self {
        Expected {
            row_sums: (0..256).map(|c| wrapped_sum(W, c)).collect(),
        }
    }

    /// `Σ (299 R + 587 G + 114 B)` over frame `seq`: what the workers compute.
    fn luminance_sum(&self, seq: u64) -> u64 {
        let s = seq as usize;
        let sum_r = H as u64 * self.row_sums[s % 256];
        let sum_g = W as u64 * wrapped_sum(H, (2 * s) % 256);
        let sum_b: u64 = (0..H).map(|y| self.row_sums[(y + 3 * s) % 256]).sum();
        299 * sum_r + 587 * sum_g + 114 * sum_b
    }

    fn mean(&self, seq: u64) -> f64 {
        mean_of(self.luminance_sum(seq))
    }
}

/// The mean luminance (0..255) from the sum of `299 R + 587 G + 114 B` over the frame.
fn mean_of(luminance_sum: u64) -> f64 {
    luminance_sum as f64 / (1000.0 * (H * W) as f64)
}

/// Thumbnail pixel `(ty, tx)` of frame `seq`, from the pattern.
fn expected_thumb(seq: u64, ty: usize, tx: usize) -> u8 {
    let mut sum = 0u32;
    for y in ty * SCALE..(ty + 1) * SCALE {
        for x in tx * SCALE..(tx + 1) * SCALE {
            let [r, g, b] = pixel(seq, y, x);
            sum += 299 * u32::from(r) + 587 * u32::from(g) + 114 * u32::from(b);
        }
    }
    (sum / (1000 * (SCALE * SCALE) as u32)) as u8
}

// ---------------------------------------------------------------------------------------------
// The work of a worker.

/// One pass over the frame: returns `Σ (299 R + 587 G + 114 B)` and writes the thumbnail
/// (each pixel the mean luminance of its 8×8 block, rounded down).
fn analyse(frame: &[u8], thumb: &mut [u8]) -> u64 {
    let mut total = 0u64;
    // Per block of the current band of 8 rows: at most 64 × 255 × 1000, fits a u32.
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

// ---------------------------------------------------------------------------------------------
// The camera.

/// Writes the frames it is asked for into the broadcast ring, then replies with their number.
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

// ---------------------------------------------------------------------------------------------
// One run.

struct RunResult {
    elapsed: Duration,
    tasks_per_worker: Vec<u64>,
}

/// Slots of the output ring.
///
/// `build_frames` documents `2 × workers + 1` slots, but that is not enough with an ordered
/// `imap`: while this process waits for task `k` (and so drains nothing), the pool keeps
/// feeding the other workers, up to `4 × workers` tasks beyond the last result `imap` returned,
/// and each of them fills an output slot. When those fill the ring, the worker of task `k`
/// waits in `reserve()` for a slot that only this process can free: a deadlock (seen with 2
/// workers after a few hundred to a few thousand frames). With `4 × workers + 1` slots the
/// worker of task `k` always finds one.
fn out_slots(workers: usize) -> u32 {
    4 * workers as u32 + 1
}

/// Checks thumbnails from the output ring: the tag (a frame of this run, seen once) and a few
/// pixels. With `wait`, waits for one thumbnail; without, takes those that are there.
fn check_thumbnails(
    out_reader: &mut shmflow::Reader<u8>,
    seen: &mut HashSet<u64>,
    frames: u64,
    wait: bool,
) -> Res<()> {
    loop {
        let thumb = if wait {
            out_reader.recv_timeout(Duration::from_secs(10))?
        } else {
            match out_reader.try_recv() {
                Ok(t) => t,
                Err(shmflow::TryRecvError::Empty) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        };
        let seq = thumb.tag();
        if seq >= frames || !seen.insert(seq) {
            return Err(format!("thumbnail with unexpected tag {seq}").into());
        }
        let px = thumb.as_slice();
        for (ty, tx) in [
            (0, 0),
            (TH - 1, TW - 1),
            ((seq as usize * 7) % TH, (seq as usize * 13) % TW),
        ] {
            let (got, want) = (px[ty * TW + tx], expected_thumb(seq, ty, tx));
            if got != want {
                return Err(format!("thumbnail {seq} pixel ({ty}, {tx}): {got} != {want}").into());
            }
        }
        if wait {
            return Ok(());
        }
    }
}

fn run(workers: usize, frames: u64, slots: Option<u32>, expected: &Expected) -> Res<RunResult> {
    let id = format!("{}-{workers}", std::process::id());
    let input = format!("ex-frames-in-{id}");
    let output = format!("ex-frames-out-{id}");
    // Owned by this process: removed when dropped (on return, error or panic).
    let in_ring = Ring::<u8>::create(&input)
        .shape([H, W, 3])
        .slots(IN_SLOTS)
        .max_readers(workers as u32 + 2) // room for replacements of crashed workers
        .mode(Mode::Broadcast(Backpressure::Block))
        .build()?;
    let out_ring = Ring::<u8>::create(&output)
        .shape([TH, TW])
        .slots(slots.unwrap_or_else(|| out_slots(workers)))
        .mode(Mode::Queue)
        .max_readers(1)
        .max_writers(workers as u32 + 2)
        .build()?;
    let mut out_reader = out_ring.reader()?;

    let pool = WorkerPool::builder()
        .workers(workers)
        .name("frames-w")
        .build_frames::<u8, u8, f64, _>(&input, Some(&output), |_: &mut (), _w, frame, out| {
            let out = out.expect("the pool has an output ring");
            mean_of(analyse(frame.as_slice(), out.as_mut_slice()))
        })?;
    // Every worker's reader must be attached before the camera writes frame 0.
    pool.start()?;
    let mut camera = ForkBuilder::new("camera").spawn(Camera {
        ring: input.clone(),
    })?;

    let mut seen = HashSet::new();
    let start = Instant::now();
    camera.send(&frames)?;
    for (seq, r) in pool.imap(0..frames).enumerate() {
        let seq = seq as u64;
        let mean = r??;
        let want = expected.mean(seq);
        if mean != want {
            return Err(format!("frame {seq}: mean luminance {mean} != {want}").into());
        }
        check_thumbnails(&mut out_reader, &mut seen, frames, false)?;
    }
    while (seen.len() as u64) < frames {
        check_thumbnails(&mut out_reader, &mut seen, frames, true)?;
    }
    let elapsed = start.elapsed();

    let written = camera.recv_timeout(Duration::from_secs(10))?;
    if written != frames {
        return Err(format!("the camera wrote {written} frames, not {frames}").into());
    }
    camera.stop(Duration::from_secs(5))?;
    let tasks_per_worker = pool.insights().iter().map(|i| i.tasks).collect();
    pool.shutdown();
    drop(out_reader);
    drop((in_ring, out_ring));
    Ok(RunResult {
        elapsed,
        tasks_per_worker,
    })
}

struct Opts {
    workers: usize,
    frames: u64,
    /// Overrides [`out_slots`] (to reproduce the deadlock it avoids).
    out_slots: Option<u32>,
}

const USAGE: &str = "usage: frames_pool [--workers N] [--frames N] [--out-slots N]
  --workers N    workers of the second run (default 2; the first run has 1)
  --frames N     frames per run (default 300)
  --out-slots N  slots of the output ring (default 4 x workers + 1; the pool keeps at most
                 slots - 1 frames in flight, so any size works)";

fn args() -> Res<Opts> {
    let mut o = Opts {
        workers: 2,
        frames: 300,
        out_slots: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value\n{USAGE}"));
        match a.as_str() {
            "--workers" => o.workers = value()?.parse::<usize>()?.max(1),
            "--frames" => o.frames = value()?.parse::<u64>()?.max(1),
            "--out-slots" => o.out_slots = Some(value()?.parse()?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}").into()),
        }
    }
    Ok(o)
}

fn main() -> Res<()> {
    let Opts {
        workers,
        frames,
        out_slots,
    } = args()?;
    assert_eq!(process::thread_count(), 1, "fork first, then threads");
    println!(
        "camera process -> broadcast ring ({IN_SLOTS} slots of {H}x{W}x3 u8) -> pool (mean \
         luminance + {TH}x{TW} thumbnail per frame) -> queue ring -> this process; {frames} \
         frames per run"
    );
    let expected = Expected::new();
    let mut counts = vec![1];
    if workers != 1 {
        counts.push(workers);
    }
    let mut rates = Vec::new();
    for &n in &counts {
        let r = run(n, frames, out_slots, &expected)?;
        let fps = frames as f64 / r.elapsed.as_secs_f64();
        println!(
            "{n} worker{}: {frames} frames in {:.2?} = {fps:.0} frames/s ({:.2} GB/s of frames \
             analysed); frames per worker {:?}; every mean and thumbnail checked",
            if n == 1 { " " } else { "s" },
            r.elapsed,
            fps * (H * W * 3) as f64 / 1e9,
            r.tasks_per_worker
        );
        rates.push(fps);
    }
    if rates.len() == 2 {
        println!(
            "speed-up with {workers} workers: {:.2}x ({} CPUs available)",
            rates[1] / rates[0],
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
    }
    Ok(())
}

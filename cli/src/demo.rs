//! `shmflow demo`: the whole pipeline on one machine, with live figures.
//!
//! ```text
//!   camera ──► frames ring (broadcast, lossless) ──► worker pool (N processes) ──► results ring ──► sink (parent)
//!                    │                                 mean luminance + 1/8 thumbnail    (queue)
//!                    ├──► recorder (lossless reader: checksums every byte of every frame)
//!                    └──► preview  (lossy reader: newest frame, ~30 per second)
//! ```
//!
//! Then the same pipeline with pipes instead of rings (camera → one pipe per worker and one to
//! the recorder, results back through pipes), so the summary compares both in one run.

use std::io::{IsTerminal, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shmflow::process::{self, Backend, BoxError, Context, ForkBuilder, WorkerPool};
use shmflow::{Backpressure, Mode, Ring};

pub const DEMO_ABOUT: &str = "\
The main job: a synthetic camera process publishes moving 1080p test frames into a lossless \
broadcast ring; a pool of worker processes computes each frame's mean luminance and a 1/8 \
grayscale thumbnail, written to a results ring read by the parent (the sink); a recorder \
process reads every byte of every frame (lossless reader) and a preview process shows only the \
newest frame about 30 times a second (lossy reader). Live figures while it runs (frames/s, \
backlog, preview drops, CPU per process), then a summary and the same pipeline through pipes.

Ctrl-C stops it cleanly: no process and no segment is left behind.";

pub const DEMO_EXAMPLES: &str = "\
Examples:
  shmflow demo
  shmflow demo --frames 2000 --workers 2
  ffmpeg -i in.mp4 -f rawvideo -pix_fmt rgb24 -s 1920x1080 - | shmflow demo --input -";

/// Arguments of `shmflow demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Frames to stream (the most to read with --input -)
    #[arg(long, value_name = "N", default_value_t = 600)]
    frames: u64,
    /// Worker processes (default: available CPUs)
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Read raw rgb24 frames from stdin ("-") instead of the synthetic camera
    #[arg(long, value_name = "-")]
    input: Option<String>,
    /// Frame shape H,W,3
    #[arg(long, value_name = "H,W,3", default_value = "1080,1920,3")]
    shape: String,
    /// Limit the camera to F frames per second (0: as fast as possible)
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    fps: f64,
    /// Slots of the frames ring
    #[arg(long, value_name = "N", default_value_t = 16)]
    slots: u32,
    /// Skip the comparison through pipes
    #[arg(long)]
    no_pipes: bool,
}

/// `shmflow demo`.
pub fn run_demo(a: DemoArgs) -> super::common::CliResult {
    use super::common::Failure;
    let dims: Vec<usize> = a
        .shape
        .split(',')
        .map(|d| d.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| {
            Failure::with_code(
                super::common::EXIT_USAGE,
                format!("bad shape {:?}: expected H,W,3", a.shape),
            )
        })?;
    let shape: [usize; 3] = dims.try_into().map_err(|_| {
        Failure::with_code(
            super::common::EXIT_USAGE,
            format!("bad shape {:?}: expected H,W,3", a.shape),
        )
    })?;
    let stdin = match a.input.as_deref() {
        None => false,
        Some("-") => true,
        Some(other) => {
            return Err(Failure::with_code(
                super::common::EXIT_USAGE,
                format!("--input takes only \"-\" (stdin), got {other:?}"),
            ))
        }
    };
    let o = DemoOpts {
        frames: a.frames,
        workers: a.workers.unwrap_or(DemoOpts::default().workers).max(1),
        stdin,
        shape,
        fps: a.fps.max(0.0),
        slots: a.slots.max(2),
        no_pipes: a.no_pipes,
    };
    run(&o).map_err(Failure::new)
}

/// Options of `shmflow demo`.
#[derive(Debug, Clone)]
pub struct DemoOpts {
    /// Frames to stream (synthetic camera), or the most to read from stdin.
    pub frames: u64,
    /// Worker processes.
    pub workers: usize,
    /// Read raw frames from stdin instead of the synthetic camera.
    pub stdin: bool,
    /// Frame shape (height, width, 3).
    pub shape: [usize; 3],
    /// Camera frame rate limit (0 = as fast as possible).
    pub fps: f64,
    /// Slots of the frames ring.
    pub slots: u32,
    /// Skip the pipe comparison.
    pub no_pipes: bool,
}

impl Default for DemoOpts {
    fn default() -> Self {
        DemoOpts {
            frames: 600,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            stdin: false,
            shape: [1080, 1920, 3],
            fps: 0.0,
            slots: 16,
            no_pipes: false,
        }
    }
}

/// Thumbnails are 1/8 of the frame in each direction.
const SCALE: usize = 8;

// ---------------------------------------------------------------- synthetic frames

/// Fills `frame` (h × w × 3) with a moving test picture: diagonal colour bands that drift
/// with `seq`, and a white square that moves across. Row by row from a precomputed pattern,
/// so the camera runs at memory speed.
struct Pattern {
    row: Vec<u8>,
    period: usize,
}

impl Pattern {
    fn new(width: usize) -> Pattern {
        let period = 3 * 256;
        let row = (0..width * 3 + period)
            .map(|i| {
                let px = i / 3;
                match i % 3 {
                    0 => (px % 256) as u8,
                    1 => ((px * 2) % 256) as u8,
                    _ => (255 - px % 256) as u8,
                }
            })
            .collect();
        Pattern { row, period }
    }

    fn fill(&self, seq: u64, frame: &mut [u8], h: usize, w: usize) {
        let stride = w * 3;
        for (r, row) in frame.chunks_exact_mut(stride).take(h).enumerate() {
            let off = ((seq as usize * 12 + r * 3) % self.period) / 3 * 3;
            row.copy_from_slice(&self.row[off..off + stride]);
        }
        let side = (h / 6).max(1);
        let x0 = (seq as usize * 8) % w.saturating_sub(side).max(1);
        let y0 = h / 2 - side / 2;
        for r in y0..(y0 + side).min(h) {
            frame[r * stride + x0 * 3..r * stride + (x0 + side).min(w) * 3].fill(255);
        }
    }
}

// ---------------------------------------------------------------- per-frame work

/// Mean luminance (BT.601) of the 1/8 thumbnail, which is written into `thumb` (sampling one
/// pixel per 8×8 block).
fn analyse(frame: &[u8], h: usize, w: usize, thumb: Option<&mut [u8]>) -> f32 {
    let (th, tw) = (h / SCALE, w / SCALE);
    let mut sum = 0u64;
    let mut local = Vec::new();
    let out: &mut [u8] = match thumb {
        Some(t) => t,
        None => {
            local.resize(th * tw, 0);
            &mut local
        }
    };
    for y in 0..th {
        let row = &frame[(y * SCALE) * w * 3..];
        for x in 0..tw {
            let p = &row[x * SCALE * 3..x * SCALE * 3 + 3];
            let l = (299 * u32::from(p[0]) + 587 * u32::from(p[1]) + 114 * u32::from(p[2])) / 1000;
            out[y * tw + x] = l as u8;
            sum += u64::from(l);
        }
    }
    sum as f32 / (th * tw).max(1) as f32
}

/// A checksum that reads every byte (the recorder's work).
fn checksum(bytes: &[u8]) -> u64 {
    let mut acc = 0u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        acc = acc.rotate_left(5) ^ u64::from_le_bytes(c.try_into().expect("8 bytes"));
    }
    for &b in chunks.remainder() {
        acc = acc.rotate_left(5) ^ u64::from(b);
    }
    acc
}

// ---------------------------------------------------------------- processes

#[derive(Serialize, Deserialize)]
struct Camera {
    ring: String,
    shape: [usize; 3],
    fps: f64,
    stdin: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
struct CameraDone {
    frames: u64,
    /// A frame from stdin was short by this many bytes (0 = clean EOF).
    missing: usize,
}

impl Backend for Camera {
    type Request = u64;
    type Reply = CameraDone;
    fn run(self, ctx: &mut Context<u64, CameraDone>) -> Result<(), BoxError> {
        let ring = Ring::<u8>::open(&self.ring)?;
        let mut w = ring.writer()?;
        let [h, wd, _] = self.shape;
        let pattern = Pattern::new(wd);
        let Some(n) = ctx.recv()? else { return Ok(()) };
        let start = Instant::now();
        let mut stdin = std::io::stdin().lock();
        let mut done = 0;
        let mut missing = 0;
        while done < n {
            if done % 16 == 0 && ctx.recv_timeout(Duration::ZERO).is_ok() {
                break; // stop requested (or the parent went away)
            }
            if self.fps > 0.0 {
                let due = start + Duration::from_secs_f64(done as f64 / self.fps);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            let mut slot = w.reserve()?;
            if self.stdin {
                let buf = slot.as_mut_bytes();
                let mut got = 0;
                while got < buf.len() {
                    match stdin.read(&mut buf[got..])? {
                        0 => break,
                        k => got += k,
                    }
                }
                if got < buf.len() {
                    missing = if got == 0 { 0 } else { buf.len() - got };
                    drop(slot); // never published
                    break;
                }
            } else {
                let seq = slot.seq();
                pattern.fill(seq, slot.as_mut_bytes(), h, wd);
            }
            slot.commit();
            done += 1;
        }
        ctx.reply(&CameraDone {
            frames: done,
            missing,
        })?;
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct Recorder {
    ring: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default)]
struct Recorded {
    frames: u64,
    bytes: u64,
    checksum: u64,
    gaps: u64,
}

impl Backend for Recorder {
    type Request = ();
    type Reply = Recorded;
    fn run(self, ctx: &mut Context<(), Recorded>) -> Result<(), BoxError> {
        let ring = Ring::<u8>::open(&self.ring)?;
        let mut r = ring.reader()?;
        ctx.reply(&Recorded::default())?; // attached
        let mut rec = Recorded::default();
        let mut expect = 0;
        while let Ok(f) = r.recv() {
            if f.seq() != expect {
                rec.gaps += 1;
            }
            expect = f.seq() + 1;
            rec.checksum ^= checksum(f.as_bytes());
            rec.bytes += f.as_bytes().len() as u64;
            rec.frames += 1;
        }
        ctx.reply(&rec)?;
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct Preview {
    ring: String,
    fps: f64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default)]
struct Previewed {
    shown: u64,
    missed: u64,
    last_mean: f32,
}

impl Backend for Preview {
    type Request = ();
    type Reply = Previewed;
    fn run(self, ctx: &mut Context<(), Previewed>) -> Result<(), BoxError> {
        let ring = Ring::<u8>::open(&self.ring)?;
        let [h, w] = [ring.info().max_shape[0], ring.info().max_shape[1]];
        let mut r = ring.lossy_reader()?;
        ctx.reply(&Previewed::default())?; // attached
        let mut p = Previewed::default();
        let period = Duration::from_secs_f64(1.0 / self.fps);
        loop {
            r.skip_to_latest();
            let Ok(f) = r.recv() else { break };
            p.last_mean = analyse(f.as_bytes(), h, w, None);
            p.shown += 1;
            drop(f);
            std::thread::sleep(period);
        }
        p.missed = r.missed();
        ctx.reply(&p)?;
        Ok(())
    }
}

// ---------------------------------------------------------------- the ring pipeline

struct Figures {
    frames: u64,
    elapsed: Duration,
    recorded: Recorded,
    previewed: Previewed,
    results: u64,
    thumbs: u64,
    cpu: Vec<(String, Duration)>,
}

fn names() -> (String, String) {
    let id = format!(
        "{}-{:x}",
        std::process::id(),
        Instant::now().elapsed().as_nanos() & 0xffff
    );
    (format!("demo-{id}-frames"), format!("demo-{id}-results"))
}

fn run_rings(o: &DemoOpts, stop: &AtomicBool) -> Result<Figures, String> {
    let [h, w, c] = o.shape;
    let (frames_name, results_name) = names();
    let frames_ring = Ring::<u8>::create(&frames_name)
        .shape([h, w, c])
        .slots(o.slots)
        .max_readers(o.workers as u32 + 2)
        .mode(Mode::Broadcast(Backpressure::Block))
        .build()
        .map_err(|e| e.to_string())?;
    let results_ring = Ring::<u8>::create(&results_name)
        .shape([h / SCALE, w / SCALE])
        .slots(2 * o.workers as u32 + 2)
        .mode(Mode::Queue)
        .max_readers(1)
        .max_writers(o.workers as u32)
        .build()
        .map_err(|e| e.to_string())?;
    let mut sink = results_ring.reader().map_err(|e| e.to_string())?;

    let pool = WorkerPool::builder()
        .workers(o.workers)
        .name("shmflow-w")
        .build_frames::<u8, u8, f32, _>(&frames_name, Some(&results_name), move |_, _, f, out| {
            analyse(f.as_slice(), h, w, out.map(|o| o.as_mut_slice()))
        })
        .map_err(|e| e.to_string())?;
    pool.start().map_err(|e| e.to_string())?;

    let spawn_err = |e: shmflow::SpawnError| e.to_string();
    let mut recorder = ForkBuilder::new("shmflow-rec")
        .spawn(Recorder {
            ring: frames_name.clone(),
        })
        .map_err(spawn_err)?;
    let mut preview = ForkBuilder::new("shmflow-view")
        .spawn(Preview {
            ring: frames_name.clone(),
            fps: 30.0,
        })
        .map_err(spawn_err)?;
    recorder.recv().map_err(|e| e.to_string())?;
    preview.recv().map_err(|e| e.to_string())?;
    let mut camera = ForkBuilder::new("shmflow-cam")
        .spawn(Camera {
            ring: frames_name.clone(),
            shape: o.shape,
            fps: o.fps,
            stdin: o.stdin,
        })
        .map_err(spawn_err)?;
    let mut pids: Vec<(String, u32)> = vec![
        ("camera".into(), camera.pid()),
        ("recorder".into(), recorder.pid()),
        ("preview".into(), preview.pid()),
    ];
    for (i, pid) in pool.pids().into_iter().enumerate() {
        pids.push((format!("worker {i}"), pid));
    }
    pids.push(("parent (sink)".into(), std::process::id()));
    let cpu0: Vec<Duration> = pids
        .iter()
        .map(|(_, p)| process::cpu_time(*p).unwrap_or_default())
        .collect();
    // Last CPU time seen per process: a process that has exited can no longer be read.
    let mut cpu_seen = cpu0.clone();
    let sample = |seen: &mut Vec<Duration>| {
        for (k, (_, p)) in pids.iter().enumerate() {
            if let Ok(c) = process::cpu_time(*p) {
                seen[k] = seen[k].max(c);
            }
        }
    };

    let start = Instant::now();
    camera.send(&o.frames).map_err(|e| e.to_string())?;
    let live = Live::new(o.frames);
    let mut results = 0u64;
    let mut thumbs = 0u64;
    let mut last_report = Instant::now();
    let mut camera_done: Option<CameraDone> = None;
    for r in pool.imap(0..o.frames) {
        match r {
            Ok(Ok(_mean)) => results += 1,
            Ok(Err(shmflow::process::FrameError::Disconnected)) => break,
            Ok(Err(e)) => return Err(format!("frame task: {e}")),
            Err(e) => return Err(e.to_string()),
        }
        while let Ok(t) = sink.try_recv() {
            let _ = t.tag();
            thumbs += 1;
        }
        if camera_done.is_none() {
            if let Ok(d) = camera.recv_timeout(Duration::ZERO) {
                camera_done = Some(d);
            }
        }
        if last_report.elapsed() >= Duration::from_millis(500) {
            last_report = Instant::now();
            sample(&mut cpu_seen);
            let st = frames_ring.status();
            live.update(results, start.elapsed(), &st, &pids);
        }
        if stop.load(Ordering::SeqCst) {
            live.note("interrupted: stopping the pipeline");
            let _ = camera.stop(Duration::from_secs(2));
            break;
        }
    }
    let elapsed = start.elapsed();
    sample(&mut cpu_seen);
    let done = match camera_done {
        Some(d) => d,
        None => camera
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or(CameraDone {
                frames: results,
                missing: 0,
            }),
    };
    let _ = camera.stop(Duration::from_secs(5));
    live.finish();
    while let Ok(t) = sink.recv_timeout(Duration::from_millis(200)) {
        let _ = t.seq();
        thumbs += 1;
    }
    let recorded = recorder
        .recv_timeout(Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    let previewed = preview
        .recv_timeout(Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    sample(&mut cpu_seen);
    let cpu = pids
        .iter()
        .zip(cpu0.iter().zip(&cpu_seen))
        .map(|((n, _), (c0, c1))| (n.clone(), c1.saturating_sub(*c0)))
        .collect();
    let _ = recorder.stop(Duration::from_secs(5));
    let _ = preview.stop(Duration::from_secs(5));
    drop(pool);
    if done.missing > 0 {
        eprintln!(
            "shmflow: the last frame on stdin was short by {} bytes and was dropped",
            done.missing
        );
    }
    Ok(Figures {
        frames: done.frames,
        elapsed,
        recorded,
        previewed,
        results,
        thumbs,
        cpu,
    })
}

// ---------------------------------------------------------------- the same pipeline through pipes

/// Runs the pipeline with pipes: a camera process writes each frame to one worker's pipe
/// (round robin) and to the recorder's pipe; workers send 4-byte means back through a pipe.
/// Returns frames/s end to end.
fn run_pipes(o: &DemoOpts, frames: u64) -> Result<f64, String> {
    use std::os::unix::net::UnixStream;
    let [h, w, c] = o.shape;
    let len = h * w * c;
    // Every child inherits the other pipes' ends (fork copies all fds), so nobody would ever
    // see EOF: each child is told how many frames it gets instead.
    let share = |k: usize| (frames + (o.workers - 1 - k) as u64) / o.workers as u64;
    let mut to_workers = Vec::new();
    let mut from_workers = Vec::new();
    let mut children = Vec::new();
    let (rec_r, rec_w) = pipe().map_err(|e| e.to_string())?;
    for i in 0..o.workers {
        let (r, wr) = pipe().map_err(|e| e.to_string())?;
        let (back_r, back_w) = UnixStream::pair().map_err(|e| e.to_string())?;
        to_workers.push(wr);
        from_workers.push(back_r);
        children.push(
            ForkBuilder::new(format!("pipe-w{i}"))
                .spawn(PipeWorker {
                    input: Some(r),
                    back: Some(back_w),
                    frames: share(i),
                    len,
                    h,
                    w,
                })
                .map_err(|e| e.to_string())?,
        );
    }
    let mut rec = ForkBuilder::new("pipe-rec")
        .spawn(PipeRecorder {
            input: Some(rec_r),
            frames,
            len,
        })
        .map_err(|e| e.to_string())?;
    let pattern = Pattern::new(w);
    let mut frame = vec![0u8; len];
    let start = Instant::now();
    // The camera runs in the parent here (the pipe pipeline's coordinator is the camera).
    let mut rec_w = rec_w;
    let mut pending = vec![0u64; o.workers];
    for seq in 0..frames {
        pattern.fill(seq, &mut frame, h, w);
        let k = (seq % o.workers as u64) as usize;
        to_workers[k].write_all(&frame).map_err(|e| e.to_string())?;
        pending[k] += 1;
        rec_w.write_all(&frame).map_err(|e| e.to_string())?;
        // Collect means so the workers' return pipes never fill up.
        for (k, b) in from_workers.iter_mut().enumerate() {
            while pending[k] > 2 {
                let mut m = [0u8; 4];
                b.read_exact(&mut m).map_err(|e| e.to_string())?;
                pending[k] -= 1;
            }
        }
    }
    drop(to_workers);
    drop(rec_w);
    for (k, b) in from_workers.iter_mut().enumerate() {
        while pending[k] > 0 {
            let mut m = [0u8; 4];
            b.read_exact(&mut m).map_err(|e| e.to_string())?;
            pending[k] -= 1;
        }
    }
    let got = rec.recv().map_err(|e| e.to_string())?;
    let elapsed = start.elapsed();
    for mut ch in children {
        let _ = ch.join();
    }
    let _ = rec.join();
    if got != frames {
        return Err(format!("pipe recorder got {got} of {frames} frames"));
    }
    Ok(frames as f64 / elapsed.as_secs_f64())
}

fn pipe() -> std::io::Result<(std::fs::File, std::fs::File)> {
    let (r, w) = std::io::pipe()?;
    Ok((
        std::fs::File::from(std::os::fd::OwnedFd::from(r)),
        std::fs::File::from(std::os::fd::OwnedFd::from(w)),
    ))
}

struct PipeWorker {
    input: Option<std::fs::File>,
    back: Option<std::os::unix::net::UnixStream>,
    frames: u64,
    len: usize,
    h: usize,
    w: usize,
}

impl Backend for PipeWorker {
    type Request = ();
    type Reply = u64;
    fn run(mut self, _ctx: &mut Context<(), u64>) -> Result<(), BoxError> {
        let mut input = self.input.take().ok_or("no input")?;
        let mut back = self.back.take().ok_or("no back channel")?;
        let mut buf = vec![0u8; self.len];
        let mut thumb = vec![0u8; (self.h / SCALE) * (self.w / SCALE)];
        for _ in 0..self.frames {
            input.read_exact(&mut buf)?;
            let m = analyse(&buf, self.h, self.w, Some(&mut thumb));
            back.write_all(&m.to_le_bytes())?;
        }
        Ok(())
    }
}

struct PipeRecorder {
    input: Option<std::fs::File>,
    frames: u64,
    len: usize,
}

impl Backend for PipeRecorder {
    type Request = ();
    type Reply = u64;
    fn run(mut self, ctx: &mut Context<(), u64>) -> Result<(), BoxError> {
        let mut input = self.input.take().ok_or("no input")?;
        let mut buf = vec![0u8; self.len];
        let mut n = 0u64;
        let mut acc = 0u64;
        for _ in 0..self.frames {
            input.read_exact(&mut buf)?;
            acc ^= checksum(&buf);
            n += 1;
        }
        std::hint::black_box(acc);
        ctx.reply(&n)?;
        Ok(())
    }
}

// ---------------------------------------------------------------- live display

struct Live {
    bar: Option<indicatif::ProgressBar>,
}

impl Live {
    fn new(total: u64) -> Live {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(total);
            if let Ok(s) =
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} frames {msg}")
            {
                b.set_style(s);
            }
            b
        });
        Live { bar }
    }

    fn update(&self, done: u64, t: Duration, st: &shmflow::RingStatus, pids: &[(String, u32)]) {
        let fps = done as f64 / t.as_secs_f64().max(1e-9);
        let missed: u64 = st.readers.iter().map(|r| r.missed).max().unwrap_or(0);
        let cpu: Vec<String> = pids
            .iter()
            .filter_map(|(n, p)| {
                process::cpu_time(*p)
                    .ok()
                    .map(|c| format!("{n} {:.1}s", c.as_secs_f64()))
            })
            .collect();
        let msg = format!(
            "{fps:.0} frames/s, backlog {}, preview dropped {missed} | cpu: {}",
            st.backlog,
            cpu.join(", ")
        );
        match &self.bar {
            Some(b) => {
                b.set_position(done);
                b.set_message(msg);
            }
            None => println!("progress: {done} frames, {msg}"),
        }
    }

    fn note(&self, s: &str) {
        match &self.bar {
            Some(b) => b.println(s),
            None => eprintln!("{s}"),
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

// ---------------------------------------------------------------- entry

/// Runs the demo and prints the summary.
pub fn run(o: &DemoOpts) -> Result<(), String> {
    if o.shape[2] != 3 || o.shape[0] < SCALE || o.shape[1] < SCALE {
        return Err(format!(
            "demo frames must be H,W,3 with H,W >= {SCALE}; got {:?}",
            o.shape
        ));
    }
    let stop = process::catch_interrupts().map_err(|e| e.to_string())?;
    let frame_bytes = (o.shape[0] * o.shape[1] * o.shape[2]) as f64;
    println!(
        "shmflow demo: {} frames of {}x{}x{} u8 ({:.1} MB), {} workers, {} slots{}",
        o.frames,
        o.shape[0],
        o.shape[1],
        o.shape[2],
        frame_bytes / 1e6,
        o.workers,
        o.slots,
        if o.stdin {
            ", frames from stdin"
        } else {
            ", synthetic camera"
        }
    );
    let f = run_rings(o, stop)?;
    let fps = f.frames as f64 / f.elapsed.as_secs_f64().max(1e-9);
    println!();
    println!("pipeline through rings ({:.2} s)", f.elapsed.as_secs_f64());
    println!("  {:<28} {:>10}", "stage", "frames");
    println!("  {:<28} {:>10}", "camera (written)", f.frames);
    println!("  {:<28} {:>10}", "workers (results, in order)", f.results);
    println!("  {:<28} {:>10}", "sink (thumbnails)", f.thumbs);
    println!(
        "  {:<28} {:>10}   gaps {}, {:.2} GB read",
        "recorder (lossless)",
        f.recorded.frames,
        f.recorded.gaps,
        f.recorded.bytes as f64 / 1e9
    );
    println!(
        "  {:<28} {:>10}   dropped {} (newest frame only, ~30/s)",
        "preview (lossy)", f.previewed.shown, f.previewed.missed
    );
    println!(
        "  throughput: {fps:.0} frames/s, {:.2} GB/s",
        fps * frame_bytes / 1e9
    );
    println!("  cpu time per process:");
    for (n, c) in &f.cpu {
        println!("    {:<20} {:>8.3} s", n, c.as_secs_f64());
    }
    if stop.load(Ordering::SeqCst) {
        println!("interrupted: skipped the pipe comparison");
        return Ok(());
    }
    if f.recorded.frames != f.frames || f.recorded.gaps != 0 {
        return Err(format!(
            "lossless recorder saw {} frames with {} gaps, camera wrote {}",
            f.recorded.frames, f.recorded.gaps, f.frames
        ));
    }
    if !o.no_pipes && !o.stdin && f.frames > 0 {
        let n = f.frames.min(300);
        let pipe_fps = run_pipes(o, n)?;
        println!();
        println!("same pipeline through pipes ({n} frames): {pipe_fps:.0} frames/s");
        println!("  rings / pipes: {:.1}x", fps / pipe_fps.max(1e-9));
    }
    Ok(())
}

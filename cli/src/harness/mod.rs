//! The benchmark harness behind `shmflow bench`: rings against pipes and sockets, measured in
//! the same run, between real processes.
//!
//! Every frame scenario moves the same bytes the same way: the writer fills every 8-byte word
//! of the frame with a value derived from the frame number and the word's index, the reader
//! reads every word and checks it (a benchmark that does not check the data it moved is not a
//! benchmark). Only the transport differs:
//!
//! | transport | how |
//! | --- | --- |
//! | `ring` | broadcast lossless ring, 4 slots, one reader process; the writer fills the slot in place, the reader checks it in place |
//! | `ring_2readers` | the same with two reader processes (each reads every frame) |
//! | `ring_queue` | queue ring, two reader processes sharing the frames |
//! | `pipe`, `pipe_1m` | `write_all` of the filled frame into a pipe (default size, or 1 MiB with `F_SETPIPE_SZ`); the reader `read_exact`s into its buffer and checks it |
//! | `unix_socket` | the same over a Unix stream socket pair |
//! | `limit_writer` | the writer alone, no reader (it reuses the most recently released slot, as the ring does, so this is the cache-warm upper bound of the stage) |
//! | `limit_reader` | a reader checking every word of committed slots whose writer does not fill them (the reader stage alone; the check's verdict is ignored) |
//!
//! The *pipeline limit* is the slower of `limit_writer` and `limit_reader`; the ring's ratio
//! to it says how much of the machine's memory bandwidth the protocol leaves on the table.
//! Each figure is measured `runs` times and reported as median, min and max.

mod soak;
pub use soak::{soak, SoakOpts, SoakReport};

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use shmflow::process::{Backend, BoxError, Context, ForkBuilder, WorkerPool};
use shmflow::{Backpressure, Mode, Ring, WaitStrategy};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOpts {
    /// Repetitions of each figure (median, min, max are reported).
    pub runs: usize,
    /// Frames per 1080p run (4K runs use a quarter).
    pub frames: u64,
    /// Round trips per latency run.
    pub round_trips: u64,
    /// Include the worker-pool scenarios.
    pub pool: bool,
    /// Tasks of the trivial-task pool scenario.
    pub pool_tasks: u64,
    /// Pin the writer (parent) to the first CPU and readers to the second.
    pub cpus: Option<(usize, usize)>,
}

impl BenchOpts {
    /// The full run (about a minute here).
    pub fn full() -> BenchOpts {
        BenchOpts {
            runs: 5,
            frames: 400,
            round_trips: 20_000,
            pool: true,
            pool_tasks: 1_000_000,
            cpus: None,
        }
    }

    /// A run of well under 30 s.
    pub fn quick() -> BenchOpts {
        BenchOpts {
            runs: 3,
            frames: 100,
            round_trips: 3_000,
            pool: true,
            pool_tasks: 200_000,
            cpus: None,
        }
    }
}

/// One measured figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchResult {
    /// `frames_1080p`, `frames_4k`, `rtt_64b`, `process_rtt`, `pool_trivial_1m`,
    /// `pool_apply_rtt`, `pool_idle_cpu`, `pool_frames_1080p`.
    pub scenario: String,
    /// `ring`, `ring_2readers`, `ring_queue`, `ring_busy`, `pipe`, `pipe_1m`, `unix_socket`,
    /// `limit_writer`, `limit_reader`, `process`, `pool_1w`, `pool_2w`; `*_nospin` is the
    /// same with the control channel sleeping at once (no spin), the in-run baseline.
    pub transport: String,
    /// `frames/s`, `us`, `s` or `%` (of one core).
    pub unit: String,
    /// Median over the runs.
    pub median: f64,
    /// Smallest run.
    pub min: f64,
    /// Largest run.
    pub max: f64,
    /// Number of runs.
    pub runs: usize,
}

/// The machine the figures come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// CPUs available to this process.
    pub cpus: usize,
    /// `model name` from `/proc/cpuinfo` (empty if unknown).
    pub cpu_model: String,
    /// `uname -r`-like kernel release.
    pub kernel: String,
    /// Architecture (`x86_64`, `aarch64`).
    pub arch: String,
    /// shmflow's version.
    pub shmflow: String,
}

/// Describes this machine.
pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name") || l.starts_with("Model"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    Machine {
        // Online CPUs, not this process's affinity (which --cpus narrows).
        cpus: shmflow::process::online_cpus()
            .map(|c| c.len())
            .unwrap_or_else(|_| std::thread::available_parallelism().map_or(1, |n| n.get())),
        cpu_model,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        arch: std::env::consts::ARCH.to_owned(),
        shmflow: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

// ---------------------------------------------------------------- data

fn word(seq: u64, i: usize) -> u64 {
    seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i as u64)
}

/// Fills every 8-byte word (little-endian) with `word(seq, i)`.
fn fill(seq: u64, bytes: &mut [u8]) {
    for (i, c) in bytes.chunks_exact_mut(8).enumerate() {
        c.copy_from_slice(&word(seq, i).to_le_bytes());
    }
}

/// Checks every word; true if all match.
fn verify(seq: u64, bytes: &[u8]) -> bool {
    let mut bad = 0u64;
    for (i, c) in bytes.chunks_exact(8).enumerate() {
        bad |= u64::from_le_bytes(c.try_into().expect("8 bytes")) ^ word(seq, i);
    }
    bad == 0
}

fn stats(name: &str, transport: &str, unit: &str, mut v: Vec<f64>) -> BenchResult {
    v.sort_by(|a, b| a.total_cmp(b));
    let median = if v.is_empty() {
        f64::NAN
    } else if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    BenchResult {
        scenario: name.into(),
        transport: transport.into(),
        unit: unit.into(),
        median,
        min: v.first().copied().unwrap_or(f64::NAN),
        max: v.last().copied().unwrap_or(f64::NAN),
        runs: v.len(),
    }
}

/// 64 random bits, from the standard library's per-process random hash keys and the clock:
/// enough to keep the names of concurrent benchmark runs apart.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

fn unique(tag: &str) -> String {
    format!(
        "bench-{tag}-{}-{:x}",
        std::process::id(),
        random_u64() & 0xffff_ffff
    )
}

// ---------------------------------------------------------------- peer processes

/// What a reader peer does.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    /// Broadcast or queue ring reader; verifies contents.
    Ring,
    /// Ring reader of unfilled slots: the same checking work, verdict ignored (limit_reader).
    RingSum,
    /// Pipe or socket reader (fd inherited across the fork).
    Stream,
}

struct Peer {
    how: How,
    ring: String,
    len: usize,
    stream: Option<std::fs::File>,
    busy: bool,
}

#[derive(Serialize, Deserialize, Debug)]
enum PeerMsg {
    Ready,
    /// Frames read and whether all verified.
    Done(u64, bool),
}

impl Backend for Peer {
    type Request = u64;
    type Reply = PeerMsg;
    fn run(mut self, ctx: &mut Context<u64, PeerMsg>) -> Result<(), BoxError> {
        match self.how {
            How::Ring | How::RingSum => {
                let ring = Ring::<u8>::open(&self.ring)?;
                let mut r = ring.reader()?;
                if self.busy {
                    r.set_wait_strategy(WaitStrategy::BusyPoll);
                }
                ctx.reply(&PeerMsg::Ready)?;
                let mut acc = 0u64;
                let mut n = 0u64;
                let mut ok = true;
                // Read until the writer detaches (a run is one writer attachment).
                while let Some(expect) = ctx.recv()? {
                    let mut got = 0u64;
                    while got < expect {
                        match r.recv() {
                            Ok(f) => {
                                let good = verify(f.seq(), f.as_bytes());
                                if self.how == How::Ring {
                                    ok &= good;
                                } else {
                                    // Unfilled slots: the same work, the result ignored.
                                    acc = acc.wrapping_add(u64::from(std::hint::black_box(good)));
                                }
                                got += 1;
                            }
                            Err(_) => break,
                        }
                    }
                    n += got;
                    ctx.reply(&PeerMsg::Done(got, ok))?;
                }
                std::hint::black_box(acc);
                let _ = n;
            }
            How::Stream => {
                let mut s = self.stream.take().ok_or("no stream")?;
                let mut buf = vec![0u8; self.len];
                ctx.reply(&PeerMsg::Ready)?;
                let mut seq = 0u64;
                while let Some(expect) = ctx.recv()? {
                    let mut ok = true;
                    for _ in 0..expect {
                        s.read_exact(&mut buf)?;
                        ok &= verify(seq, &buf);
                        seq += 1;
                    }
                    ctx.reply(&PeerMsg::Done(expect, ok))?;
                }
            }
        }
        Ok(())
    }
}

fn spawn_peer(
    o: &BenchOpts,
    how: How,
    ring: &str,
    len: usize,
    stream: Option<std::fs::File>,
) -> Result<shmflow::process::Process<u64, PeerMsg>, BoxError> {
    let mut b = ForkBuilder::new("shmflow-bench");
    if let Some((_, c)) = o.cpus {
        b = b.cpus([c]);
    }
    let mut p = b.spawn(Peer {
        how,
        ring: ring.into(),
        len,
        stream,
        busy: false,
    })?;
    match p.recv()? {
        PeerMsg::Ready => Ok(p),
        other => Err(format!("peer: unexpected {other:?}").into()),
    }
}

fn expect_done(p: &mut shmflow::process::Process<u64, PeerMsg>) -> Result<(u64, bool), BoxError> {
    match p.recv()? {
        PeerMsg::Done(n, ok) => Ok((n, ok)),
        other => Err(format!("peer: unexpected {other:?}").into()),
    }
}

// ---------------------------------------------------------------- frame scenarios

fn ring_frames(
    o: &BenchOpts,
    shape: [usize; 3],
    frames: u64,
    transport: &str,
) -> Result<Vec<f64>, BoxError> {
    let len = shape.iter().product::<usize>();
    let name = unique("frames");
    let mode = if transport == "ring_queue" {
        Mode::Queue
    } else {
        Mode::Broadcast(Backpressure::Block)
    };
    // Four slots: large frames in flight stay in the CPU caches (8 × 6 MB do not fit a
    // 32 MiB L3, and throughput drops by a third).
    let ring = Ring::<u8>::create(&name)
        .shape(shape)
        .slots(4)
        .mode(mode)
        .max_readers(2)
        .max_writers(1)
        .build()?;
    let readers = match transport {
        "ring_2readers" | "ring_queue" => 2,
        "limit_writer" => 0,
        _ => 1,
    };
    let how = if transport == "limit_reader" {
        How::RingSum
    } else {
        How::Ring
    };
    let mut peers = Vec::new();
    for _ in 0..readers {
        peers.push(spawn_peer(o, how, &name, len, None)?);
    }
    let mut w = ring.writer()?;
    let mut out = Vec::new();
    for _ in 0..o.runs {
        // Queue readers share the frames: tell each its part.
        let share = |k: usize| {
            if transport == "ring_queue" {
                frames / 2 + u64::from(k == 0) * (frames % 2)
            } else {
                frames
            }
        };
        for (k, p) in peers.iter_mut().enumerate() {
            p.send(&share(k))?;
        }
        let t = Instant::now();
        for _ in 0..frames {
            let mut s = w.reserve()?;
            if transport != "limit_reader" {
                let seq = s.seq();
                fill(seq, s.as_mut_bytes());
            }
            s.commit();
        }
        let mut all_ok = true;
        for (k, p) in peers.iter_mut().enumerate() {
            let (n, ok) = expect_done(p)?;
            all_ok &= ok && n == share(k);
        }
        let secs = t.elapsed().as_secs_f64();
        if !all_ok && transport != "ring_queue" {
            return Err(format!("{transport}: a reader saw a corrupted or missing frame").into());
        }
        if transport == "ring_queue" && !all_ok {
            return Err("ring_queue: frames lost or corrupted".into());
        }
        out.push(frames as f64 / secs);
    }
    drop(w);
    for mut p in peers {
        let _ = p.stop(Duration::from_secs(5));
    }
    Ok(out)
}

fn stream_frames(
    o: &BenchOpts,
    shape: [usize; 3],
    frames: u64,
    transport: &str,
) -> Result<Vec<f64>, BoxError> {
    let len = shape.iter().product::<usize>();
    let (reader_end, mut writer_end): (std::fs::File, std::fs::File) = match transport {
        "unix_socket" => {
            let (a, b) = UnixStream::pair()?;
            (
                std::fs::File::from(std::os::fd::OwnedFd::from(a)),
                std::fs::File::from(std::os::fd::OwnedFd::from(b)),
            )
        }
        _ => {
            let (r, w) = std::io::pipe()?;
            if transport == "pipe_1m" {
                shmflow::process::set_pipe_capacity(w.as_fd(), 1 << 20)?;
            }
            (
                std::fs::File::from(std::os::fd::OwnedFd::from(r)),
                std::fs::File::from(std::os::fd::OwnedFd::from(w)),
            )
        }
    };
    let mut peer = spawn_peer(o, How::Stream, "", len, Some(reader_end))?;
    let mut buf = vec![0u8; len];
    let mut out = Vec::new();
    let mut seq = 0u64;
    for _ in 0..o.runs {
        peer.send(&frames)?;
        let t = Instant::now();
        for _ in 0..frames {
            fill(seq, &mut buf);
            writer_end.write_all(&buf)?;
            seq += 1;
        }
        let (n, ok) = expect_done(&mut peer)?;
        let secs = t.elapsed().as_secs_f64();
        if n != frames || !ok {
            return Err(format!("{transport}: the reader saw a corrupted frame").into());
        }
        out.push(frames as f64 / secs);
    }
    let _ = peer.stop(Duration::from_secs(5));
    Ok(out)
}

// ---------------------------------------------------------------- round trips

#[derive(Serialize, Deserialize)]
struct Pong {
    ping: String,
    pong: String,
    busy: bool,
}

impl Backend for Pong {
    type Request = ();
    type Reply = ();
    fn run(self, ctx: &mut Context<(), ()>) -> Result<(), BoxError> {
        let mut r = Ring::<u8>::open(&self.ping)?.reader()?;
        let mut w = Ring::<u8>::open(&self.pong)?.writer()?;
        let strategy = if self.busy {
            WaitStrategy::BusyPoll
        } else {
            WaitStrategy::default()
        };
        r.set_wait_strategy(strategy);
        w.set_wait_strategy(strategy);
        ctx.reply(&())?;
        while let Ok(f) = r.recv() {
            let mut s = w.reserve()?;
            s.as_mut_bytes().copy_from_slice(f.as_bytes());
            s.commit();
        }
        Ok(())
    }
}

fn ring_rtt(o: &BenchOpts, busy: bool) -> Result<Vec<f64>, BoxError> {
    let (ping, pong) = (unique("ping"), unique("pong"));
    let mk = |n: &str| {
        Ring::<u8>::create(n)
            .shape([64])
            .slots(4)
            .mode(Mode::Broadcast(Backpressure::Block))
            .max_readers(1)
            .build()
    };
    let (ping_ring, pong_ring) = (mk(&ping)?, mk(&pong)?);
    let mut reader = pong_ring.reader()?;
    let mut b = ForkBuilder::new("shmflow-pong");
    if let Some((_, c)) = o.cpus {
        b = b.cpus([c]);
    }
    let mut child = b.spawn(Pong {
        ping: ping.clone(),
        pong: pong.clone(),
        busy,
    })?;
    child.recv()?;
    let mut w = ping_ring.writer()?;
    let strategy = if busy {
        WaitStrategy::BusyPoll
    } else {
        WaitStrategy::default()
    };
    w.set_wait_strategy(strategy);
    reader.set_wait_strategy(strategy);
    let mut out = Vec::new();
    for _ in 0..o.runs {
        let mut samples = Vec::with_capacity(o.round_trips as usize);
        for i in 0..o.round_trips {
            let t = Instant::now();
            let mut s = w.reserve()?;
            s.as_mut_bytes().fill(i as u8);
            s.commit();
            let f = reader.recv()?;
            if f.as_bytes()[63] != i as u8 {
                return Err("rtt: wrong reply".into());
            }
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
        out.push(stats("", "", "", samples).median);
    }
    drop(w);
    let _ = child.stop(Duration::from_secs(5));
    Ok(out)
}

struct PipePong {
    rx: Option<std::fs::File>,
    tx: Option<std::fs::File>,
}

impl Backend for PipePong {
    type Request = ();
    type Reply = ();
    fn run(mut self, _ctx: &mut Context<(), ()>) -> Result<(), BoxError> {
        let (mut rx, mut tx) = (
            self.rx.take().ok_or("no rx")?,
            self.tx.take().ok_or("no tx")?,
        );
        let mut buf = [0u8; 64];
        while rx.read_exact(&mut buf).is_ok() {
            tx.write_all(&buf)?;
        }
        Ok(())
    }
}

fn pipe_rtt(o: &BenchOpts) -> Result<Vec<f64>, BoxError> {
    let (r1, w1) = std::io::pipe()?;
    let (r2, w2) = std::io::pipe()?;
    let file = |f: std::os::fd::OwnedFd| std::fs::File::from(f);
    let mut b = ForkBuilder::new("shmflow-pong");
    if let Some((_, c)) = o.cpus {
        b = b.cpus([c]);
    }
    let mut child = b.spawn(PipePong {
        rx: Some(file(r1.into())),
        tx: Some(file(w2.into())),
    })?;
    let (mut tx, mut rx) = (file(w1.into()), file(r2.into()));
    let mut out = Vec::new();
    let mut buf = [0u8; 64];
    for _ in 0..o.runs {
        let mut samples = Vec::with_capacity(o.round_trips as usize);
        for i in 0..o.round_trips {
            let t = Instant::now();
            buf.fill(i as u8);
            tx.write_all(&buf)?;
            rx.read_exact(&mut buf)?;
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
        out.push(stats("", "", "", samples).median);
    }
    child.kill();
    let _ = child.join();
    Ok(out)
}

// ---------------------------------------------------------------- pool

#[derive(Serialize, Deserialize)]
struct Camera {
    ring: String,
}

impl Backend for Camera {
    type Request = u64;
    type Reply = u64;
    fn run(self, ctx: &mut Context<u64, u64>) -> Result<(), BoxError> {
        let ring = Ring::<u8>::open(&self.ring)?;
        let mut w = ring.writer()?;
        while let Some(n) = ctx.recv()? {
            for _ in 0..n {
                let mut s = w.reserve()?;
                let seq = s.seq();
                fill(seq, s.as_mut_bytes());
                s.commit();
            }
            ctx.reply(&n)?;
        }
        Ok(())
    }
}

fn pool_trivial(o: &BenchOpts) -> Result<Vec<f64>, BoxError> {
    let pool = WorkerPool::builder()
        .workers(2)
        .build(|_: &mut (), _, x: u64| x.wrapping_mul(2))?;
    pool.start()?;
    let mut out = Vec::new();
    for _ in 0..o.runs {
        let t = Instant::now();
        let v = pool.map(0..o.pool_tasks)?;
        let secs = t.elapsed().as_secs_f64();
        if v.len() as u64 != o.pool_tasks || v.last() != Some(&(o.pool_tasks - 1).wrapping_mul(2)) {
            return Err("pool map returned wrong results".into());
        }
        // Scaled to one million tasks.
        out.push(secs * 1_000_000.0 / o.pool_tasks as f64);
    }
    Ok(out)
}

/// No spinning at all: every wait sleeps in the kernel at once (the in-run baseline of the
/// control-channel figures).
const NO_SPIN: WaitStrategy = WaitStrategy::SpinThenBlock {
    spin: Duration::ZERO,
};

/// Medians of `o.runs` runs of one `apply_async` round trip with 2 workers, unpinned.
fn pool_apply(o: &BenchOpts, wait: WaitStrategy) -> Result<Vec<f64>, BoxError> {
    let pool = WorkerPool::builder()
        .workers(2)
        .wait_strategy(wait)
        .build(|_: &mut (), _, x: u64| x + 1)?;
    pool.start()?;
    let mut out = Vec::new();
    for _ in 0..o.runs {
        let mut samples = Vec::new();
        for i in 0..(o.round_trips / 4).max(100) {
            let t = Instant::now();
            let r = pool.apply_async(i).get()?;
            samples.push(t.elapsed().as_secs_f64() * 1e6);
            if r != i + 1 {
                return Err("apply returned a wrong result".into());
            }
        }
        out.push(stats("", "", "", samples).median);
    }
    Ok(out)
}

/// CPU time in ns that the live threads of `pid` have run, from the scheduler's own
/// nanosecond accounting (`/proc/<pid>/task/*/schedstat`, first field); `cpu_time`'s clock
/// ticks (10 ms) are too coarse for an idle process.
fn sched_ns(pid: u32) -> Result<u64, BoxError> {
    let mut sum = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let text = std::fs::read_to_string(task?.path().join("schedstat"))?;
        let ns = text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok());
        sum += ns.ok_or("malformed schedstat")?;
    }
    Ok(sum)
}

/// CPU use (percent of one core, both workers together) of an idle pool with the default
/// wait strategy, over `o.runs` windows of 200 ms that start right after a round trip (so
/// each includes a worker's spin before it sleeps).
fn pool_idle_cpu(o: &BenchOpts) -> Result<Vec<f64>, BoxError> {
    let pool = WorkerPool::builder()
        .workers(2)
        .build(|_: &mut (), _, x: u64| x + 1)?;
    pool.start()?;
    let pids = pool.pids();
    let cpu = |pids: &[u32]| -> Result<Duration, BoxError> {
        let mut sum = 0;
        for &p in pids {
            sum += sched_ns(p)?;
        }
        Ok(Duration::from_nanos(sum))
    };
    let mut out = Vec::new();
    for i in 0..o.runs as u64 {
        pool.apply(i)?;
        let (c0, t0) = (cpu(&pids)?, Instant::now());
        std::thread::sleep(Duration::from_millis(200));
        let (c1, t1) = (cpu(&pids)?, Instant::now());
        out.push((c1 - c0).as_secs_f64() / (t1 - t0).as_secs_f64() * 100.0);
    }
    Ok(out)
}

/// Echoes requests: the backend of the `Process` round-trip figure.
struct Echo;

impl Backend for Echo {
    type Request = u64;
    type Reply = u64;
    fn run(self, ctx: &mut Context<u64, u64>) -> Result<(), BoxError> {
        while let Some(x) = ctx.recv()? {
            ctx.reply(&x)?;
        }
        Ok(())
    }
}

/// Medians of `o.runs` runs of one `Process::request` round trip (u64 out, u64 back).
fn process_rtt(o: &BenchOpts, wait: WaitStrategy) -> Result<Vec<f64>, BoxError> {
    let mut p = ForkBuilder::new("shmflow-echo")
        .wait_strategy(wait)
        .spawn(Echo)?;
    let mut out = Vec::new();
    for _ in 0..o.runs {
        let mut samples = Vec::new();
        for i in 0..(o.round_trips / 4).max(100) {
            let t = Instant::now();
            let r = p.request(&i)?;
            samples.push(t.elapsed().as_secs_f64() * 1e6);
            if r != i {
                return Err("the echo process answered a wrong value".into());
            }
        }
        out.push(stats("", "", "", samples).median);
    }
    p.stop(Duration::from_secs(5))?;
    Ok(out)
}

fn pool_frames(o: &BenchOpts, workers: usize) -> Result<Vec<f64>, BoxError> {
    let name = unique("poolframes");
    let shape = [1080, 1920, 3];
    let _ring = Ring::<u8>::create(&name)
        .shape(shape)
        .slots(8)
        .max_readers(workers as u32)
        .mode(Mode::Broadcast(Backpressure::Block))
        .build()?;
    let pool = WorkerPool::builder()
        .workers(workers)
        .build_frames::<u8, u8, bool, _>(&name, None, |_, _, f, _| verify(f.seq(), f.as_bytes()))?;
    pool.start()?;
    let mut camera = ForkBuilder::new("shmflow-cam").spawn(Camera { ring: name.clone() })?;
    let mut out = Vec::new();
    let mut first = 0u64;
    let n = o.frames;
    for _ in 0..o.runs {
        camera.send(&n)?;
        let t = Instant::now();
        for r in pool.imap(first..first + n) {
            match r? {
                Ok(true) => {}
                Ok(false) => return Err("pool frames: corrupted frame".into()),
                Err(e) => return Err(format!("pool frames: {e}").into()),
            }
        }
        out.push(n as f64 / t.elapsed().as_secs_f64());
        camera.recv()?;
        first += n;
    }
    let _ = camera.stop(Duration::from_secs(5));
    Ok(out)
}

// ---------------------------------------------------------------- driver

/// Runs every scenario; `progress` is told what runs next. Results come in a fixed order.
///
/// # Errors
///
/// The first scenario that fails (a process that cannot start, a corrupted frame, ...).
pub fn run(o: &BenchOpts, mut progress: impl FnMut(&str)) -> Result<Vec<BenchResult>, BoxError> {
    if shmflow::process::thread_count() > 1 {
        return Err("bench must run before any thread is started (it forks)".into());
    }
    if let Some((w, _)) = o.cpus {
        shmflow::process::set_affinity(&[w])?;
    }
    let mut results = Vec::new();
    for (scenario, shape, frames) in [
        ("frames_1080p", [1080, 1920, 3], o.frames),
        ("frames_4k", [2160, 3840, 3], (o.frames / 4).max(10)),
    ] {
        for t in [
            "ring",
            "ring_2readers",
            "ring_queue",
            "pipe",
            "pipe_1m",
            "unix_socket",
            "limit_writer",
            "limit_reader",
        ] {
            progress(&format!("{scenario} {t}"));
            let v = if matches!(t, "pipe" | "pipe_1m" | "unix_socket") {
                // Streams are slow: fewer frames per run keep the total bounded.
                stream_frames(o, shape, (frames / 4).max(10), t)?
            } else {
                ring_frames(o, shape, frames, t)?
            };
            results.push(stats(scenario, t, "frames/s", v));
        }
    }
    progress("rtt_64b ring");
    results.push(stats("rtt_64b", "ring", "us", ring_rtt(o, false)?));
    progress("rtt_64b ring_busy");
    results.push(stats("rtt_64b", "ring_busy", "us", ring_rtt(o, true)?));
    progress("rtt_64b pipe");
    results.push(stats("rtt_64b", "pipe", "us", pipe_rtt(o)?));
    progress("process_rtt process");
    let v = process_rtt(o, WaitStrategy::default())?;
    results.push(stats("process_rtt", "process", "us", v));
    progress("process_rtt process_nospin");
    let v = process_rtt(o, NO_SPIN)?;
    results.push(stats("process_rtt", "process_nospin", "us", v));
    if o.pool {
        progress("pool_trivial_1m pool_2w");
        // Seconds per million tasks, whatever the run size (--quick runs fewer).
        results.push(stats("pool_trivial_1m", "pool_2w", "s", pool_trivial(o)?));
        progress("pool_apply_rtt pool_2w");
        let v = pool_apply(o, WaitStrategy::default())?;
        results.push(stats("pool_apply_rtt", "pool_2w", "us", v));
        progress("pool_apply_rtt pool_2w_nospin");
        let v = pool_apply(o, NO_SPIN)?;
        results.push(stats("pool_apply_rtt", "pool_2w_nospin", "us", v));
        progress("pool_idle_cpu pool_2w");
        results.push(stats("pool_idle_cpu", "pool_2w", "%", pool_idle_cpu(o)?));
        for (w, t) in [(1, "pool_1w"), (2, "pool_2w")] {
            progress(&format!("pool_frames_1080p {t}"));
            results.push(stats(
                "pool_frames_1080p",
                t,
                "frames/s",
                pool_frames(o, w)?,
            ));
        }
    }
    Ok(results)
}

/// The pipe figure of a scenario (what ratios are computed against).
pub fn baseline<'a>(results: &'a [BenchResult], scenario: &str) -> Option<&'a BenchResult> {
    results
        .iter()
        .find(|r| r.scenario == scenario && r.transport == "pipe")
}

/// The pipeline limit of a frame scenario: the slower of `limit_writer` and `limit_reader`.
pub fn limit(results: &[BenchResult], scenario: &str) -> Option<f64> {
    let get = |t: &str| {
        results
            .iter()
            .find(|r| r.scenario == scenario && r.transport == t)
            .map(|r| r.median)
    };
    Some(get("limit_writer")?.min(get("limit_reader")?))
}

//! The soak behind `shmflow bench --soak MINUTES`: frames stream through a lossless broadcast
//! ring, a drop-oldest broadcast ring and a queue ring for the given time, while readers keep
//! attaching and detaching, and at the end every frame is accounted for.
//!
//! Processes (all forked from the caller, which must be single-threaded):
//!
//! | ring | writer | steady readers (whole run) | churning readers |
//! | --- | --- | --- | --- |
//! | `block` (broadcast, lossless) | 1 | 1 | one at a time, alternately lossless and lossy, each attached 20 ms - 1 s |
//! | `drop_oldest` (broadcast) | 1 | 1 at full speed, 1 slow (2 ms per frame) | one at a time |
//! | `queue` | 1 | 2 | one at a time |
//!
//! Every frame's 8-byte words are derived from its sequence number and every reader checks
//! every word (a torn or stale frame fails). The ledger's checks:
//!
//! - lossless readers (steady, and churning lossless readers) saw every frame from their first
//!   to their last, in order; a steady reader saw every frame the writer wrote;
//! - drop-oldest and lossy readers saw increasing sequence numbers, and each jump equals the
//!   missed count the ring reported with the frame; a steady drop-oldest reader's frames plus
//!   its missed frames (counted from frame 0) add up to what the writer wrote;
//! - the queue's readers together saw each frame exactly once (count, sum and sum of squares of
//!   the sequence numbers match the writer's);
//! - no reader got a frame whose contents do not verify;
//! - the resident memory of the long-lived processes (anonymous memory, i.e. heap) did not grow
//!   by more than 1 MiB after the first tenth of the run.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{fill, unique, verify};
use shmflow::process::{Backend, BoxError, Context, ForkBuilder, Process};
use shmflow::{Backpressure, Mode, RecvTimeoutError, Ring};

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakOpts {
    /// How long frames stream.
    pub duration: Duration,
    /// Bytes per frame (a multiple of 8).
    pub frame_bytes: usize,
    /// Longest life of a churning reader.
    pub churn_max: Duration,
}

impl SoakOpts {
    /// A soak of `duration` with 64 KiB frames.
    pub fn new(duration: Duration) -> SoakOpts {
        SoakOpts {
            duration,
            frame_bytes: 64 * 1024,
            churn_max: Duration::from_secs(1),
        }
    }
}

/// What one reader saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReaderLedger {
    /// Frames received.
    pub frames: u64,
    /// Sequence number of the first frame received.
    pub first: Option<u64>,
    /// Sequence number of the last frame received.
    pub last: Option<u64>,
    /// Frames the ring reported missed (drop-oldest and lossy readers).
    pub missed: u64,
    /// Sequence-number jumps not explained by a reported missed count.
    pub unexplained_gaps: u64,
    /// Frames whose sequence number did not increase.
    pub out_of_order: u64,
    /// Frames whose contents did not verify.
    pub bad: u64,
    /// Sum of the sequence numbers received (queue accounting).
    pub seq_sum: u128,
    /// Sum of their squares.
    pub seq_sq_sum: u128,
    /// The reader ended because the writer detached (steady readers).
    pub disconnected: bool,
}

impl ReaderLedger {
    /// Records a frame; `contiguous`: frames in between should not be skipped unreported
    /// (broadcast; a queue reader's frames have gaps: other readers took those).
    fn record(&mut self, seq: u64, missed: u64, good: bool, contiguous: bool) {
        if let Some(last) = self.last {
            if seq <= last {
                self.out_of_order += 1;
            } else if contiguous && seq - last - 1 != missed {
                self.unexplained_gaps += 1;
            }
        }
        self.first.get_or_insert(seq);
        self.last = Some(seq);
        self.frames += 1;
        self.missed += missed;
        self.bad += u64::from(!good);
        self.seq_sum += u128::from(seq);
        self.seq_sq_sum += u128::from(seq) * u128::from(seq);
    }

    fn fold(&mut self, o: &ReaderLedger) {
        self.frames += o.frames;
        self.missed += o.missed;
        self.unexplained_gaps += o.unexplained_gaps;
        self.out_of_order += o.out_of_order;
        self.bad += o.bad;
        self.seq_sum += o.seq_sum;
        self.seq_sq_sum += o.seq_sq_sum;
    }
}

/// One ring's accounting.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RingLedger {
    /// `block`, `drop_oldest` or `queue`.
    pub ring: String,
    /// Frames the writer committed.
    pub written: u64,
    /// The steady readers, in the order of the table in the module docs.
    pub steady: Vec<ReaderLedger>,
    /// Churning readers that attached (and detached).
    pub churn_attaches: u64,
    /// All churning readers together.
    pub churn: ReaderLedger,
    /// Frames dropped for readers (drop-oldest and lossy readers; 0 for lossless ones).
    pub dropped: u64,
}

/// Memory of one long-lived process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RssLedger {
    /// Which process.
    pub process: String,
    /// VmRSS after the first tenth of the run, KiB.
    pub rss_start_kib: u64,
    /// VmRSS at the end, KiB.
    pub rss_end_kib: u64,
    /// Largest VmRSS seen, KiB.
    pub rss_max_kib: u64,
    /// RssAnon (heap and stacks) after the first tenth, KiB.
    pub anon_start_kib: u64,
    /// RssAnon at the end, KiB.
    pub anon_end_kib: u64,
}

/// The soak's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SoakReport {
    /// Seconds frames streamed.
    pub seconds: f64,
    /// Bytes per frame.
    pub frame_bytes: usize,
    /// One entry per ring.
    pub rings: Vec<RingLedger>,
    /// Memory of the writers, the steady readers and this process.
    pub rss: Vec<RssLedger>,
    /// Every check that failed, in words (empty: the soak passed).
    pub problems: Vec<String>,
}

impl SoakReport {
    /// True if every check passed.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

// ---------------------------------------------------------------- processes

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
enum ReaderKind {
    /// Every frame, until the writer detaches.
    Steady,
    /// Every frame, 2 ms of work each (falls behind on a drop-oldest ring).
    Slow,
    /// Attached for a while, then detached.
    Churn { life_ms: u64, lossy: bool },
}

struct SoakReader {
    ring: String,
    kind: ReaderKind,
}

#[derive(Serialize, Deserialize, Debug)]
enum ReaderMsg {
    Ready,
    Done(ReaderLedger),
}

impl Backend for SoakReader {
    type Request = ();
    type Reply = ReaderMsg;
    fn run(self, ctx: &mut Context<(), ReaderMsg>) -> Result<(), BoxError> {
        let ring = Ring::<u8>::open(&self.ring)?;
        let mut r = match self.kind {
            ReaderKind::Churn { lossy: true, .. } => ring.lossy_reader()?,
            _ => ring.reader()?,
        };
        let contiguous = ring.info().mode != Mode::Queue;
        ctx.reply(&ReaderMsg::Ready)?;
        let life = match self.kind {
            ReaderKind::Churn { life_ms, .. } => Some(Duration::from_millis(life_ms)),
            _ => None,
        };
        let start = Instant::now();
        let mut l = ReaderLedger::default();
        loop {
            if life.is_some_and(|life| start.elapsed() >= life) {
                break;
            }
            match r.recv_timeout(Duration::from_millis(100)) {
                Ok(f) => {
                    l.record(
                        f.seq(),
                        f.missed(),
                        verify(f.seq(), f.as_bytes()),
                        contiguous,
                    );
                    if self.kind == ReaderKind::Slow {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    l.disconnected = true;
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        drop(r);
        ctx.reply(&ReaderMsg::Done(l))?;
        Ok(())
    }
}

struct SoakWriter {
    ring: String,
}

impl Backend for SoakWriter {
    /// Any request: stop writing.
    type Request = ();
    /// `None` when ready, then `Some(frames written)`.
    type Reply = Option<u64>;
    fn run(self, ctx: &mut Context<(), Option<u64>>) -> Result<(), BoxError> {
        let ring = Ring::<u8>::open(&self.ring)?;
        let mut w = ring.writer()?;
        ctx.reply(&None)?;
        // Wait for the go, so the steady readers see frame 0.
        ctx.recv()?;
        let mut seq = 0u64;
        loop {
            // Look for the stop every few frames, and whenever the ring is full.
            let check = match w.reserve_timeout(Duration::from_millis(50)) {
                Ok(mut s) => {
                    fill(seq, s.as_mut_bytes());
                    s.commit();
                    seq += 1;
                    seq.is_multiple_of(32)
                }
                Err(shmflow::ReserveTimeoutError::Timeout) => true,
                Err(e) => return Err(e.into()),
            };
            if check {
                match ctx.recv_timeout(Duration::ZERO) {
                    Err(shmflow::ChannelError::Timeout) => {}
                    Ok(_) => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        // Detach first: the steady readers drain and then see Disconnected.
        drop(w);
        ctx.reply(&Some(seq))?;
        Ok(())
    }
}

// ---------------------------------------------------------------- the run

/// A tiny xorshift generator (the soak's randomness needs no quality).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// `VmRSS` and `RssAnon` of a process, KiB.
fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("RssAnon:")?))
}

struct Watched {
    name: String,
    pid: u32,
    start: Option<(u64, u64)>,
    last: (u64, u64),
    max: u64,
}

impl Watched {
    fn new(name: String, pid: u32) -> Watched {
        Watched {
            name,
            pid,
            start: None,
            last: (0, 0),
            max: 0,
        }
    }

    fn sample(&mut self, baseline: bool) {
        if let Some(v) = rss_kib(self.pid) {
            if baseline && self.start.is_none() {
                self.start = Some(v);
            }
            self.last = v;
            self.max = self.max.max(v.0);
        }
    }
}

struct RingRun {
    label: &'static str,
    name: String,
    _ring: Ring<u8>,
    writer: Process<(), Option<u64>>,
    steady: Vec<Process<(), ReaderMsg>>,
    churner: Option<Process<(), ReaderMsg>>,
    churn_attaches: u64,
    churn: ReaderLedger,
}

fn spawn_reader(name: &str, kind: ReaderKind) -> Result<Process<(), ReaderMsg>, BoxError> {
    let mut p = ForkBuilder::new("shmflow-soak-r").spawn(SoakReader {
        ring: name.into(),
        kind,
    })?;
    match p.recv_timeout(Duration::from_secs(10))? {
        ReaderMsg::Ready => Ok(p),
        other => Err(format!("soak reader: unexpected {other:?}").into()),
    }
}

fn expect_ledger(
    p: &mut Process<(), ReaderMsg>,
    timeout: Duration,
) -> Result<ReaderLedger, BoxError> {
    let l = match p.recv_timeout(timeout)? {
        ReaderMsg::Done(l) => l,
        other => return Err(format!("soak reader: unexpected {other:?}").into()),
    };
    p.join()?;
    Ok(l)
}

/// Runs the soak; `progress` gets a one-line status about once a second.
///
/// # Errors
///
/// A process that cannot start or fails, a ring that cannot be created, or a reader that
/// does not report within its bound. Failed ledger checks are not errors: they are listed in
/// [`SoakReport::problems`].
pub fn soak(o: &SoakOpts, mut progress: impl FnMut(&str)) -> Result<SoakReport, BoxError> {
    if shmflow::process::thread_count() > 1 {
        return Err("the soak must run before any thread is started (it forks)".into());
    }
    if o.frame_bytes == 0 || !o.frame_bytes.is_multiple_of(8) {
        return Err(format!(
            "frame size {} is not a positive multiple of 8",
            o.frame_bytes
        )
        .into());
    }
    let mut rng = Rng(super::random_u64() | 1);
    let specs: [(&'static str, Mode, u32, &[ReaderKind]); 3] = [
        (
            "block",
            Mode::Broadcast(Backpressure::Block),
            8,
            &[ReaderKind::Steady],
        ),
        (
            "drop_oldest",
            Mode::Broadcast(Backpressure::DropOldest),
            4,
            &[ReaderKind::Steady, ReaderKind::Slow],
        ),
        (
            "queue",
            Mode::Queue,
            8,
            &[ReaderKind::Steady, ReaderKind::Steady],
        ),
    ];
    let mut runs = Vec::new();
    let mut watched = vec![Watched::new("soak (parent)".into(), std::process::id())];
    for (label, mode, slots, steady_kinds) in specs {
        let name = unique(&format!("soak-{label}"));
        let ring = Ring::<u8>::create(&name)
            .shape([o.frame_bytes])
            .slots(slots)
            .mode(mode)
            .max_readers(4)
            .build()?;
        let mut steady = Vec::new();
        for (i, k) in steady_kinds.iter().enumerate() {
            let p = spawn_reader(&name, *k)?;
            watched.push(Watched::new(format!("{label} reader {i}"), p.pid()));
            steady.push(p);
        }
        let mut writer =
            ForkBuilder::new("shmflow-soak-w").spawn(SoakWriter { ring: name.clone() })?;
        if writer.recv_timeout(Duration::from_secs(10))?.is_some() {
            return Err("soak writer: unexpected reply".into());
        }
        watched.push(Watched::new(format!("{label} writer"), writer.pid()));
        runs.push(RingRun {
            label,
            name,
            _ring: ring,
            writer,
            steady,
            churner: None,
            churn_attaches: 0,
            churn: ReaderLedger::default(),
        });
    }
    for r in &mut runs {
        r.writer.send(&())?;
    }

    let start = Instant::now();
    let warm = o.duration / 10;
    let mut next_sample = start;
    let mut next_progress = start + Duration::from_secs(1);
    while start.elapsed() < o.duration {
        for r in &mut runs {
            if let Some(p) = r.churner.as_mut() {
                if let Some(msg) = p.try_recv()? {
                    let ReaderMsg::Done(l) = msg else {
                        return Err("soak churner: unexpected reply".into());
                    };
                    p.join()?;
                    r.churn.fold(&l);
                    r.churner = None;
                }
            }
            if r.churner.is_none() {
                let life_ms = 20 + rng.below(o.churn_max.as_millis().max(21) as u64 - 20);
                let lossy = r.label == "block" && rng.below(2) == 1;
                r.churner = Some(spawn_reader(&r.name, ReaderKind::Churn { life_ms, lossy })?);
                r.churn_attaches += 1;
            }
        }
        let now = Instant::now();
        if now >= next_sample {
            let baseline = now.duration_since(start) >= warm;
            for w in &mut watched {
                w.sample(baseline);
            }
            next_sample = now + Duration::from_millis(500);
        }
        if now >= next_progress {
            let churn: u64 = runs.iter().map(|r| r.churn_attaches).sum();
            progress(&format!(
                "soak {:.0}/{:.0} s: {churn} reader attaches, parent RSS {} KiB",
                start.elapsed().as_secs_f64(),
                o.duration.as_secs_f64(),
                watched[0].last.0
            ));
            next_progress = now + Duration::from_secs(1);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    for w in &mut watched {
        w.sample(true);
    }
    let seconds = start.elapsed().as_secs_f64();

    // Wind down: churners end by themselves, then the writers stop and detach, then the
    // steady readers drain and see Disconnected.
    let bound = o.churn_max + Duration::from_secs(30);
    for r in &mut runs {
        if let Some(mut p) = r.churner.take() {
            let l = expect_ledger(&mut p, bound)?;
            r.churn.fold(&l);
        }
    }
    let mut problems = Vec::new();
    let mut rings = Vec::new();
    for mut r in runs {
        r.writer.send(&())?;
        let written = loop {
            match r.writer.recv_timeout(Duration::from_secs(30))? {
                Some(n) => break n,
                None => continue,
            }
        };
        r.writer.join()?;
        let mut steady = Vec::new();
        for p in &mut r.steady {
            steady.push(expect_ledger(p, Duration::from_secs(60))?);
        }
        let ledger = RingLedger {
            ring: r.label.into(),
            written,
            dropped: steady.iter().map(|l| l.missed).sum::<u64>() + r.churn.missed,
            steady,
            churn_attaches: r.churn_attaches,
            churn: r.churn,
        };
        check(&ledger, &mut problems);
        rings.push(ledger);
    }
    let rss: Vec<RssLedger> = watched
        .iter()
        .map(|w| {
            let start = w.start.unwrap_or(w.last);
            RssLedger {
                process: w.name.clone(),
                rss_start_kib: start.0,
                rss_end_kib: w.last.0,
                rss_max_kib: w.max,
                anon_start_kib: start.1,
                anon_end_kib: w.last.1,
            }
        })
        .collect();
    for m in &rss {
        if m.anon_end_kib > m.anon_start_kib + 1024 {
            problems.push(format!(
                "{}: anonymous memory grew from {} KiB to {} KiB",
                m.process, m.anon_start_kib, m.anon_end_kib
            ));
        }
    }
    Ok(SoakReport {
        seconds,
        frame_bytes: o.frame_bytes,
        rings,
        rss,
        problems,
    })
}

/// The ledger checks of one ring (see the module docs).
fn check(l: &RingLedger, problems: &mut Vec<String>) {
    let ring = &l.ring;
    let n = l.written;
    let mut each = |who: &str, r: &ReaderLedger| {
        if r.bad > 0 {
            problems.push(format!("{ring} {who}: {} frames did not verify", r.bad));
        }
        if r.out_of_order > 0 {
            problems.push(format!(
                "{ring} {who}: {} frames out of order",
                r.out_of_order
            ));
        }
        if r.unexplained_gaps > 0 {
            problems.push(format!(
                "{ring} {who}: {} sequence jumps without a matching missed count",
                r.unexplained_gaps
            ));
        }
    };
    for (i, r) in l.steady.iter().enumerate() {
        each(&format!("steady reader {i}"), r);
    }
    each("churning readers", &l.churn);
    for (i, r) in l.steady.iter().enumerate() {
        if !r.disconnected {
            problems.push(format!(
                "{ring} steady reader {i} did not see the writer detach"
            ));
        }
    }
    match ring.as_str() {
        "block" => {
            let r = &l.steady[0];
            if r.frames != n || r.first.unwrap_or(0) != 0 || r.missed != 0 {
                problems.push(format!(
                    "block steady reader saw {} of {n} frames (first {:?}, missed {})",
                    r.frames, r.first, r.missed
                ));
            }
        }
        "drop_oldest" => {
            for (i, r) in l.steady.iter().enumerate() {
                // The first frame's missed count includes the frames before it.
                if r.frames + r.missed != n {
                    problems.push(format!(
                        "drop_oldest steady reader {i}: {} read + {} missed != {n} written",
                        r.frames, r.missed
                    ));
                }
            }
        }
        _ => {
            let mut all = l.churn.clone();
            for r in &l.steady {
                all.fold(r);
            }
            let n128 = u128::from(n);
            let sum = n128 * n128.saturating_sub(1) / 2;
            let sq = n128.saturating_sub(1) * n128 * (2 * n128).saturating_sub(1) / 6;
            if all.frames != n || all.seq_sum != sum || all.seq_sq_sum != sq {
                problems.push(format!(
                    "queue readers together saw {} frames for {n} written (each exactly once: \
                     sum {} vs {sum}, squares {} vs {sq})",
                    all.frames, all.seq_sum, all.seq_sq_sum
                ));
            }
        }
    }
}

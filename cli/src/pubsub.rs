//! `shmflow pub` and `shmflow sub`: raw frames between stdin/stdout and a ring.

use std::fs::File;
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use clap::Args;
use md5::{Digest, Md5};
use shmflow::{
    DType, Element, Mode, OpenError, ReadSlot, Reader, RecvTimeoutError, ReserveTimeoutError, Ring,
    RingInfo, DEFAULT_MAX_READERS, DEFAULT_SLOTS,
};

use super::common::{
    classify, fail, fmt_shape, human_bytes, inspect_ring, into_ring, output_error, parse_dtype,
    parse_group, parse_mode, parse_octal, parse_rate, parse_seconds, parse_shape, stderr_is_tty,
    with_dtype, CliResult, Failure, Out, Segment, SegmentKind, Shape, EXIT_INTERRUPTED,
    EXIT_TIMEOUT,
};

// ---------------------------------------------------------------- pub

pub const PUB_ABOUT: &str = "\
Publish raw frames from stdin into a new ring.

Stdin carries frames back to back, each exactly one frame's bytes (the product of --shape \
times the dtype's size, row-major, native byte order), as `ffmpeg -f rawvideo -pix_fmt rgb24 -` \
writes them. Each frame is read straight into a reserved slot of the ring (no extra copy) \
and committed. At end of input the writer detaches: readers get every frame, then end \
(`sub` exits 0). If input ends inside a frame, that partial frame is discarded and `pub` \
fails, saying how many bytes were missing.

Broadcast readers only see frames committed after they attach: use --wait-readers N to hold \
the first frame until N readers are attached.

The ring is removed (unlinked) when `pub` exits, unless --keep is given. Readers already \
attached keep their mapping and still read every frame; new readers can no longer open the \
ring. A `pub` killed by a signal leaves the ring behind: `shmflow gc` removes it.";

pub const PUB_EXAMPLES: &str = "\
Examples:
  ffmpeg -i in.mp4 -f rawvideo -pix_fmt rgb24 - | shmflow pub cam --shape 1080,1920,3 --wait-readers 1
  shmflow pub cam --shape 480,640,3 --mode drop-oldest --fps 30 < frames.raw
  shmflow pub jobs --attach < more.raw        # a second writer of an existing queue ring";

/// Arguments of `shmflow pub`.
#[derive(Debug, Args)]
pub struct PubArgs {
    /// Ring name (1 to 200 characters of A-Z a-z 0-9 . _ -)
    name: String,

    /// Frame shape, comma-separated, row-major (e.g. 1080,1920,3)
    #[arg(long, value_parser = parse_shape, required_unless_present = "attach")]
    shape: Option<Shape>,

    /// Element type: u8 i8 u16 i16 u32 i32 u64 i64 f32 f64 [default: u8]
    #[arg(long, value_parser = parse_dtype)]
    dtype: Option<DType>,

    /// Number of slots [default: 8]
    #[arg(long)]
    slots: Option<u32>,

    /// Delivery mode: block (every reader sees every frame; the writer waits for the slowest),
    /// drop-oldest (the writer never waits; slow readers skip frames), queue (each frame goes
    /// to one reader) [default: block]
    #[arg(long, value_parser = parse_mode)]
    mode: Option<Mode>,

    /// Publish at most F frames per second (default: as fast as stdin and the readers allow)
    #[arg(long, value_name = "F", value_parser = parse_rate)]
    fps: Option<f64>,

    /// Wait until N readers are attached before publishing the first frame
    #[arg(long, value_name = "N", default_value_t = 0)]
    wait_readers: u32,

    /// Maximum readers attached at once [default: 4, or --wait-readers if larger]
    #[arg(long, value_name = "N")]
    max_readers: Option<u32>,

    /// Maximum writers attached at once (queue mode; a broadcast ring has 1)
    #[arg(long, value_name = "N")]
    max_writers: Option<u32>,

    /// File mode of the segment, octal [default: 600, owner only]
    #[arg(long, value_name = "MODE", value_parser = parse_octal)]
    permissions: Option<u32>,

    /// Group of the segment, a name or a number (with --permissions 660 its members may
    /// read and write the ring) [default: this user's group]
    #[arg(long, value_name = "GROUP", value_parser = parse_group)]
    group: Option<u32>,

    /// Do not remove the ring when pub exits (`shmflow rm` or `shmflow gc` removes it later)
    #[arg(long)]
    keep: bool,

    /// Write into an existing ring instead of creating one (--shape and --dtype, if given,
    /// must match it; the ring is not removed at exit)
    #[arg(
        long,
        conflicts_with_all = ["slots", "mode", "max_readers", "max_writers", "permissions", "group", "keep"]
    )]
    attach: bool,
}

/// Runs `shmflow pub`.
pub fn run_pub(a: PubArgs) -> CliResult {
    if io::stdin().is_terminal() {
        return Err(Failure::new(
            "stdin is a terminal: pipe raw frames into `shmflow pub` (see --help)",
        ));
    }
    if a.attach {
        let (info, _) = inspect_ring(&a.name)?;
        check_expected(&info, a.dtype, a.shape.as_ref())?;
        return with_dtype!(info.dtype, T => {
            let ring = Ring::<T>::open(&a.name).map_err(fail)?;
            publish(ring, &a)
        });
    }
    let shape = a
        .shape
        .clone()
        .ok_or_else(|| Failure::new("--shape is required"))?;
    let dtype = a.dtype.unwrap_or(DType::U8);
    with_dtype!(dtype, T => {
        let mut b = Ring::<T>::create(&a.name)
            .shape(&shape.0)
            .slots(a.slots.unwrap_or(DEFAULT_SLOTS))
            .mode(a.mode.unwrap_or(Mode::Broadcast(shmflow::Backpressure::Block)))
            .max_readers(a.max_readers.unwrap_or(DEFAULT_MAX_READERS.max(a.wait_readers)));
        if let Some(n) = a.max_writers {
            b = b.max_writers(n);
        }
        if let Some(p) = a.permissions {
            b = b.permissions(p);
        }
        if let Some(g) = a.group {
            b = b.group(g);
        }
        let ring = b.build().map_err(fail)?;
        if a.keep {
            ring.release_ownership();
        }
        publish(ring, &a)
    })
}

/// Fails unless the ring holds `dtype` frames of max shape `shape` (those given).
fn check_expected(info: &RingInfo, dtype: Option<DType>, shape: Option<&Shape>) -> CliResult {
    if let Some(d) = dtype {
        if d != info.dtype {
            return Err(Failure::new(format!(
                "dtype mismatch: ring {:?} holds {} frames, not {d}",
                info.name, info.dtype
            )));
        }
    }
    if let Some(s) = shape {
        if s.0 != info.max_shape {
            return Err(Failure::new(format!(
                "shape mismatch: ring {:?} has frames of shape {}, not {}",
                info.name,
                fmt_shape(&info.max_shape),
                fmt_shape(&s.0)
            )));
        }
    }
    Ok(())
}

/// Paces frames to a rate; after a stall it does not burst to catch up.
struct Pacer {
    next: Instant,
    period: Duration,
}

impl Pacer {
    fn wait(&mut self) {
        let now = Instant::now();
        if self.next > now {
            std::thread::sleep(self.next - now);
        } else if now - self.next > self.period {
            self.next = now;
        }
        self.next += self.period;
    }
}

/// Stdin, buffered, read so that Ctrl-C (or SIGTERM) is noticed while waiting for input:
/// before each read from the descriptor it waits for input with `poll` in short steps and
/// checks the interrupt flag.
struct Input {
    buf: io::BufReader<File>,
    stop: &'static std::sync::atomic::AtomicBool,
}

/// Interrupted by a signal while waiting.
struct Interrupted;

impl Input {
    fn new(stop: &'static std::sync::atomic::AtomicBool) -> io::Result<Input> {
        // A duplicate of fd 0, so dropping the File leaves stdin open.
        let fd = io::stdin().as_fd().try_clone_to_owned()?;
        Ok(Input {
            buf: io::BufReader::with_capacity(8192, File::from(fd)),
            stop,
        })
    }

    fn interrupted(&self) -> bool {
        self.stop.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until reading the descriptor will not block (or input is buffered already).
    fn wait(&self) -> Result<(), Interrupted> {
        while self.buf.buffer().is_empty() {
            if self.interrupted() {
                return Err(Interrupted);
            }
            let fd: &dyn AsFd = self.buf.get_ref();
            match shmflow::process::wait_any(&[fd], Some(Duration::from_millis(100))) {
                Ok(ready) if ready.is_empty() => continue,
                // Readable, end of input, or an error the read will report.
                _ => return Ok(()),
            }
        }
        Ok(())
    }

    /// True if input ended (nothing more to read).
    fn at_end(&mut self) -> Result<io::Result<bool>, Interrupted> {
        loop {
            self.wait()?;
            let empty = self.buf.fill_buf().map(|b| b.is_empty());
            match empty {
                Ok(false) => return Ok(Ok(false)),
                // Ctrl-C in a shell pipeline also ends the program feeding stdin: report
                // the interruption rather than a clean end of input.
                Ok(true) if self.interrupted() => return Err(Interrupted),
                Ok(true) => return Ok(Ok(true)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Ok(Err(e)),
            }
        }
    }

    /// Reads until `buf` is full or input ends; returns the bytes read.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<io::Result<usize>, Interrupted> {
        let mut got = 0;
        while got < buf.len() {
            self.wait()?;
            match self.buf.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Ok(Err(e)),
            }
        }
        Ok(Ok(got))
    }
}

fn publish<T: Element>(ring: Ring<T>, a: &PubArgs) -> CliResult {
    let mut writer = ring.writer().map_err(fail)?;
    let info = ring.info();
    let frame_bytes = info.slot_bytes;
    let verbose = stderr_is_tty();
    if a.wait_readers > 0 {
        if verbose {
            eprintln!(
                "shmflow: waiting for {} reader(s) on ring {:?}",
                a.wait_readers, info.name
            );
        }
        writer
            .wait_for_readers(a.wait_readers as usize, Duration::MAX)
            .map_err(|e| Failure::new(e.to_string()))?;
    }

    // Stdin's 8 KiB buffer lets us see end of input before reserving a slot (so a clean end
    // commits nothing and abandons nothing); reads of a whole frame then bypass the buffer
    // and land in the slot directly. Ctrl-C ends pub cleanly: the ring is removed (unless
    // --keep) and readers see the writer detach.
    let stop = shmflow::process::catch_interrupts()
        .map_err(|e| Failure::new(format!("could not install the Ctrl-C handler: {e}")))?;
    let mut input =
        Input::new(stop).map_err(|e| Failure::new(format!("could not read stdin: {e}")))?;
    let mut pacer = a.fps.map(|f| Pacer {
        next: Instant::now(),
        period: Duration::from_secs_f64(1.0 / f),
    });
    let started = Instant::now();
    let mut frames = 0u64;
    let interrupted = |frames: u64| {
        Failure::with_code(
            EXIT_INTERRUPTED,
            format!("interrupted after publishing {frames} frames"),
        )
    };
    loop {
        if let Some(p) = pacer.as_mut() {
            p.wait();
        }
        match input.at_end() {
            Err(Interrupted) => return Err(interrupted(frames)),
            Ok(Ok(true)) => break,
            Ok(Ok(false)) => {}
            Ok(Err(e)) => return Err(Failure::new(format!("could not read stdin: {e}"))),
        }
        let mut slot = loop {
            match writer.reserve_timeout(Duration::from_millis(100)) {
                Ok(slot) => break slot,
                Err(ReserveTimeoutError::Timeout) if !input.interrupted() => {}
                Err(ReserveTimeoutError::Timeout) => return Err(interrupted(frames)),
                Err(e) => return Err(fail(e)),
            }
        };
        let buf = slot.as_mut_bytes();
        let got = match input.read_full(buf) {
            Err(Interrupted) => {
                drop(slot); // discarded: readers never see the partial frame
                return Err(interrupted(frames));
            }
            Ok(r) => r.map_err(|e| Failure::new(format!("could not read stdin: {e}")))?,
        };
        if got < buf.len() {
            let want = buf.len();
            drop(slot); // discarded: readers never see the partial frame
            return Err(Failure::new(format!(
                "input ended inside a frame: got {got} of {want} bytes, {} bytes missing \
                 ({frames} complete frames were published; the partial one was discarded)",
                want - got
            )));
        }
        slot.commit();
        frames += 1;
    }
    if verbose {
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "shmflow: published {frames} frames ({}) to ring {:?} in {secs:.2} s",
            human_bytes(frames * frame_bytes),
            info.name
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- sub

pub const SUB_ABOUT: &str = "\
Read frames from an existing ring (of any dtype) until its writers are gone.

--stats (the default) prints once a second the frames per second, GB/s and frames missed \
(drop-oldest rings), and a total at the end; it does not read the frames' bytes. --md5 prints \
one line per frame, `<sequence> <md5 hex>` (the sequence is the frame's number in the ring, \
0 for its first frame). --raw writes each frame's bytes to stdout, back to back.

`sub` exits 0 when the ring's writers have detached and every frame has been read, or after \
--count frames. When the last writer died instead (killed, crashed), `sub` reads what it \
committed, then says so and exits 1. With --timeout it fails (exit code 3) when no frame arrives for that \
long. A broadcast reader sees the frames committed after it attached: start `sub` first \
(with --wait) or give `pub` --wait-readers.";

pub const SUB_EXAMPLES: &str = "\
Examples:
  shmflow sub cam --md5 --count 100
  shmflow sub cam --raw | ffplay -f rawvideo -pixel_format rgb24 -video_size 1920x1080 -
  shmflow sub cam --wait --timeout 5 --stats";

/// What `sub` prints.
#[derive(Debug, Clone, Copy, Default, Args)]
#[group(multiple = false)]
struct Output {
    /// Write each frame's bytes to stdout
    #[arg(long)]
    raw: bool,
    /// Print `<sequence> <md5 hex>` for each frame
    #[arg(long)]
    md5: bool,
    /// Print frames/s, GB/s and missed frames once a second (the default)
    #[arg(long)]
    stats: bool,
}

/// Arguments of `shmflow sub`.
#[derive(Debug, Args)]
pub struct SubArgs {
    /// Ring name
    name: String,

    #[command(flatten)]
    output: Output,

    /// Stop after N frames
    #[arg(long, value_name = "N")]
    count: Option<u64>,

    /// Fail if no frame arrives for S seconds (with --wait: also if the ring does not appear)
    #[arg(long, value_name = "S", value_parser = parse_seconds)]
    timeout: Option<Duration>,

    /// Wait for the ring to be created if it does not exist yet
    #[arg(long)]
    wait: bool,

    /// Fail unless the ring's dtype is this
    #[arg(long, value_parser = parse_dtype)]
    dtype: Option<DType>,

    /// Fail unless the ring's frame shape is this
    #[arg(long, value_parser = parse_shape)]
    shape: Option<Shape>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubMode {
    Raw,
    Md5,
    Stats,
}

/// Runs `shmflow sub`.
pub fn run_sub(a: SubArgs) -> CliResult {
    let started = Instant::now();
    let info = loop {
        let segment = classify(&a.name);
        let missing = matches!(
            segment,
            Err(OpenError::NotFound { .. })
                | Ok(Segment {
                    kind: SegmentKind::Unreadable(OpenError::NotReady { .. }),
                    ..
                })
        );
        if !(a.wait && missing) {
            break into_ring(&a.name, segment)?.0;
        }
        if a.timeout.is_some_and(|t| started.elapsed() >= t) {
            return Err(Failure::with_code(
                EXIT_TIMEOUT,
                format!(
                    "ring {:?} did not appear within {} s",
                    a.name,
                    a.timeout.unwrap_or_default().as_secs_f64()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    check_expected(&info, a.dtype, a.shape.as_ref())?;
    let mode = match a.output {
        Output { raw: true, .. } if io::stdout().is_terminal() => {
            return Err(Failure::new(
                "refusing to write raw frames to a terminal: redirect stdout, or use --md5 or --stats",
            ));
        }
        Output { raw: true, .. } => SubMode::Raw,
        Output { md5: true, .. } => SubMode::Md5,
        _ => SubMode::Stats,
    };
    with_dtype!(info.dtype, T => {
        let ring = Ring::<T>::open(&a.name).map_err(fail)?;
        let reader = ring.reader().map_err(fail)?;
        subscribe(reader, mode, &a)
    })
}

enum Event<T: Element> {
    Frame(ReadSlot<T>),
    Corrupted(u64),
    Timeout,
    Disconnected,
    WriterDied { pid: u32 },
    Failed(String),
}

fn next<T: Element>(reader: &mut Reader<T>, wait: Option<Duration>) -> Event<T> {
    let r = match wait {
        Some(w) => reader.recv_timeout(w),
        None => reader.recv().map_err(RecvTimeoutError::from),
    };
    match r {
        Ok(s) => Event::Frame(s),
        Err(RecvTimeoutError::Timeout) => Event::Timeout,
        Err(RecvTimeoutError::Disconnected) => Event::Disconnected,
        Err(RecvTimeoutError::WriterDied { pid, .. }) => Event::WriterDied { pid },
        Err(RecvTimeoutError::Corrupted { seq }) => Event::Corrupted(seq),
        Err(e) => Event::Failed(e.to_string()),
    }
}

/// Frames per second etc. over one interval, and in total.
#[derive(Default)]
struct Tally {
    frames: u64,
    bytes: u64,
    missed: u64,
}

fn subscribe<T: Element>(mut reader: Reader<T>, mode: SubMode, a: &SubArgs) -> CliResult {
    let name = a.name.as_str();
    let limit = a.count.unwrap_or(u64::MAX);
    let mut out = Out::new();
    // Raw frames go straight to the stdout fd (a dup), not through the line buffer.
    let mut raw = match mode {
        SubMode::Raw => Some(File::from(
            io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .map_err(output_error)?,
        )),
        _ => None,
    };
    let started = Instant::now();
    let mut last_frame = started;
    let mut next_tick = started + Duration::from_secs(1);
    let mut total = Tally::default();
    let mut interval = Tally::default();
    let mut corrupted: Option<(u64, u64)> = None; // (count, first seq)
    let mut last_seq: Option<u64> = None;
    let mut died: Option<u32> = None;
    while total.frames < limit {
        let now = Instant::now();
        let mut wait = a
            .timeout
            .map(|t| (last_frame + t).saturating_duration_since(now));
        if mode == SubMode::Stats {
            let to_tick = next_tick.saturating_duration_since(now);
            wait = Some(wait.map_or(to_tick, |w| w.min(to_tick)));
        }
        match next(&mut reader, wait) {
            Event::Frame(frame) => {
                last_frame = Instant::now();
                last_seq = Some(frame.seq());
                let bytes = frame.as_bytes();
                for t in [&mut total, &mut interval] {
                    t.frames += 1;
                    t.bytes += bytes.len() as u64;
                    t.missed += frame.missed();
                }
                match mode {
                    SubMode::Raw => {
                        if let Some(f) = raw.as_mut() {
                            f.write_all(bytes).map_err(output_error)?;
                        }
                    }
                    SubMode::Md5 => {
                        out.line(format_args!("{} {:x}", frame.seq(), Md5::digest(bytes)))?;
                    }
                    SubMode::Stats => {}
                }
            }
            Event::Corrupted(seq) => {
                let c = corrupted.get_or_insert((0, seq));
                c.0 += 1;
            }
            Event::Disconnected => break,
            Event::WriterDied { pid } => {
                died = Some(pid);
                break;
            }
            Event::Failed(e) => return Err(Failure::new(format!("ring {name:?}: {e}"))),
            Event::Timeout => {}
        }
        let now = Instant::now();
        if mode == SubMode::Stats && now >= next_tick {
            let secs = (now - (next_tick - Duration::from_secs(1))).as_secs_f64();
            print_stats(
                &mut out,
                (now - started).as_secs_f64(),
                secs,
                &interval,
                false,
            )?;
            interval = Tally::default();
            next_tick += Duration::from_secs(1);
            if next_tick < now {
                next_tick = now + Duration::from_secs(1);
            }
        }
        if let Some(t) = a.timeout {
            if now.duration_since(last_frame) >= t {
                if mode == SubMode::Stats {
                    print_stats(&mut out, 0.0, started.elapsed().as_secs_f64(), &total, true)?;
                }
                return Err(Failure::with_code(
                    EXIT_TIMEOUT,
                    format!(
                        "no frame from ring {name:?} for {} s ({} frames read)",
                        t.as_secs_f64(),
                        total.frames
                    ),
                ));
            }
        }
    }
    if mode == SubMode::Stats {
        print_stats(&mut out, 0.0, started.elapsed().as_secs_f64(), &total, true)?;
    }
    if let Some(pid) = died {
        // A crashed publisher is not a finished stream: say so, and exit 1.
        return Err(Failure::new(match last_seq {
            Some(seq) => format!("publisher pid {pid} died after frame {seq}"),
            None => format!("publisher pid {pid} died before this subscriber got a frame"),
        }));
    }
    if let Some((n, seq)) = corrupted {
        return Err(Failure::new(format!(
            "skipped {n} frame(s) with invalid metadata (first: sequence {seq}); the writer \
             of ring {name:?} is misbehaving"
        )));
    }
    Ok(())
}

/// One figures line. On a terminal: `   3.0 s    29.9 frames/s   0.186 GB/s   missed 0`;
/// otherwise `t=3.000 frames=30 fps=29.9 gbps=0.186 missed=0` (and `total ...` at the end).
fn print_stats(out: &mut Out, at: f64, secs: f64, t: &Tally, total: bool) -> CliResult {
    let secs = secs.max(1e-9);
    let fps = t.frames as f64 / secs;
    let gbps = t.bytes as f64 / secs / 1e9;
    let line = match (out.tty, total) {
        (true, false) => format!(
            "{at:>7.1} s {fps:>10.1} frames/s {gbps:>8.3} GB/s   missed {}",
            t.missed
        ),
        (true, true) => format!(
            "total: {} frames ({}) in {secs:.2} s, {fps:.1} frames/s, {gbps:.3} GB/s, missed {}",
            t.frames,
            human_bytes(t.bytes),
            t.missed
        ),
        (false, false) => format!(
            "t={at:.3} frames={} fps={fps:.1} gbps={gbps:.3} missed={}",
            t.frames, t.missed
        ),
        (false, true) => format!(
            "total t={secs:.3} frames={} bytes={} fps={fps:.1} gbps={gbps:.3} missed={}",
            t.frames, t.bytes, t.missed
        ),
    };
    out.line(line)
}

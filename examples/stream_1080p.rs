//! Streams 1080p RGB frames (1080×1920×3 `u8`, 6,220,800 bytes) between two processes and
//! compares transports in the same run.
//!
//! ```text
//! cargo run --release --example stream_1080p [-- --frames N] [--repeats R] [--slots S]
//!     [--busy-poll] [--quick]
//! ```
//!
//! Every transport does the same work per frame: the writer process fills every byte of the
//! frame with a pattern that depends on the frame's sequence number (a `memset` per 4 KiB
//! chunk), the reader process reads every byte and checks a checksum against the expected one.
//!
//! - **shmflow ring**: a lossless broadcast ring ([`Backpressure::Block`]); the writer fills
//!   the slot in place, the reader checksums it in place. Nothing is copied.
//! - **pipe** (default 64 KiB, and 1 MiB with `F_SETPIPE_SZ`) and **Unix socket**: the writer
//!   fills a buffer and `write_all`s it, the reader `read_exact`s it and checksums it.
//! - **Pipeline limit**: the two stages measured alone on the ring's slots, in one process —
//!   the writer filling slot after slot (all the ring's slots in turn) with no reader reading,
//!   the reader checksumming slot after slot with no writer filling them. Only the fill /
//!   checksum calls are timed. The limit is the slower of the two. (A lossless ring reuses the
//!   most recently released slot, so a ring whose reader keeps up may cycle through fewer,
//!   warmer slots than the stages do, and beat this limit.)
//!
//! The ring has 3 slots by default, the fewest that let the writer fill one while the reader
//! holds another and a third waits; all three (18.7 MB) fit in this VM's L3 cache. With more
//! slots the stages alone cycle through more memory than the cache holds (try `--slots 8`).
//!
//! The run is repeated (`--repeats`, default 5); the table shows medians and the spread. The
//! example exits with status 1 if any checksum, sequence number or tag is wrong, and leaves
//! nothing in `/dev/shm` (the ring is removed on return, on panic and on SIGINT/SIGTERM).
//!
//! The peers are forked children: the ring is created first, then each run forks its writer
//! before any thread exists (this program never starts one).

use std::error::Error;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use shmflow::{Backpressure, Mode, RecvError, Ring, WaitStrategy};

type Res<T> = Result<T, Box<dyn Error>>;

const SHAPE: [usize; 3] = [1080, 1920, 3];
const FRAME: usize = 1080 * 1920 * 3;
/// The fill pattern: chunk `k` of frame `seq` holds the byte `(seq + k) as u8`.
const CHUNK: usize = 4096;

// ---------------------------------------------------------------------------------------------
// The work: fill and checksum.

/// Fills every byte of a frame with frame `seq`'s pattern.
fn fill(seq: u64, bytes: &mut [u8]) {
    for (k, c) in bytes.chunks_mut(CHUNK).enumerate() {
        c.fill(seq.wrapping_add(k as u64) as u8);
    }
}

/// Reads every byte: the wrapping sum of the frame's little-endian `u64` words (a short last
/// word is zero-padded).
fn checksum(bytes: &[u8]) -> u64 {
    let mut acc = [0u64; 8];
    let mut blocks = bytes.chunks_exact(64);
    for b in &mut blocks {
        for (j, a) in acc.iter_mut().enumerate() {
            let w = u64::from_le_bytes(b[j * 8..j * 8 + 8].try_into().expect("8 bytes"));
            *a = a.wrapping_add(w);
        }
    }
    let mut sum = acc.iter().fold(0u64, |s, a| s.wrapping_add(*a));
    for w in blocks.remainder().chunks(8) {
        let mut word = [0u8; 8];
        word[..w.len()].copy_from_slice(w);
        sum = sum.wrapping_add(u64::from_le_bytes(word));
    }
    sum
}

/// The checksum of a `len`-byte frame filled by [`fill`] for `seq`, computed without the frame.
fn expected(seq: u64, len: usize) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let mut sum = 0u64;
    let mut k = 0u64;
    let mut start = 0;
    while start < len {
        let n = CHUNK.min(len - start);
        let b = u64::from(seq.wrapping_add(k) as u8);
        // CHUNK is a multiple of 8, so only the frame's last word can be short.
        sum = sum.wrapping_add(((n / 8) as u64).wrapping_mul(b.wrapping_mul(ONES)));
        let tail = n % 8;
        if tail > 0 {
            sum = sum.wrapping_add(b.wrapping_mul(ONES >> (8 * (8 - tail))));
        }
        start += n;
        k += 1;
    }
    sum
}

// ---------------------------------------------------------------------------------------------
// Processes and pipes.

/// A forked child process, killed and reaped on drop unless waited for.
struct Child {
    pid: libc::pid_t,
    reaped: bool,
}

/// Forks a child that runs `f` and exits: 0 on `Ok`, 1 on `Err` (printed), 101 on panic. In
/// this process, `f` (and what it captured) is dropped unrun.
fn fork(f: impl FnOnce() -> Res<()>) -> Res<Child> {
    // SAFETY: this program is single-threaded (it never starts a thread), so the child is a
    // complete copy of a consistent process; the child never returns into main: it runs `f`
    // and leaves with `_exit`, without running the parent's destructors (which would remove
    // the parent's ring).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", io::Error::last_os_error()).into());
    }
    if pid == 0 {
        // SAFETY: prctl with PR_SET_PDEATHSIG only changes this process's own settings: the
        // child gets SIGKILL if the parent dies, so no peer outlives an interrupted run.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
        let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(Ok(())) => 0,
            Ok(Err(e)) => {
                eprintln!("child {}: {e}", std::process::id());
                1
            }
            Err(_) => 101,
        };
        // SAFETY: ends the child at once, without the parent's atexit handlers or destructors.
        unsafe { libc::_exit(code) };
    }
    Ok(Child { pid, reaped: false })
}

impl Child {
    /// Waits for the child; an error unless it exited with status 0.
    fn wait(mut self) -> Res<()> {
        let mut status = 0;
        // SAFETY: waitpid on our own child, with a valid pointer to `status`.
        let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
        if r != self.pid {
            return Err(format!("waitpid: {}", io::Error::last_os_error()).into());
        }
        self.reaped = true;
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            Ok(())
        } else if libc::WIFEXITED(status) {
            Err(format!("child exited with status {}", libc::WEXITSTATUS(status)).into())
        } else {
            Err(format!("child killed by signal {}", libc::WTERMSIG(status)).into())
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.reaped {
            let mut status = 0;
            // SAFETY: signalling and reaping our own child, which has not been reaped yet
            // (so the pid still names it).
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, &mut status, 0);
            }
        }
    }
}

/// A pipe: (read end, write end), both close-on-exec.
fn pipe() -> io::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the 2-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

/// Capacity of a pipe, in bytes (`F_GETPIPE_SZ`).
fn pipe_size(f: &File) -> io::Result<usize> {
    // SAFETY: fcntl on an fd we own; F_GETPIPE_SZ takes no argument.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETPIPE_SZ) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as usize)
}

/// Sets a pipe's capacity (`F_SETPIPE_SZ`; at most `/proc/sys/fs/pipe-max-size` unprivileged).
fn set_pipe_size(f: &File, bytes: usize) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own; F_SETPIPE_SZ takes an int.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETPIPE_SZ, bytes as libc::c_int) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits for the child's "ready" byte; an error (with the child's exit status) if it failed
/// first.
fn await_ready(mut ready: File, child: Child) -> Res<Child> {
    let mut b = [0u8; 1];
    match ready.read(&mut b) {
        Ok(1) => Ok(child),
        _ => Err(match child.wait() {
            Err(e) => format!("peer failed before it was ready: {e}").into(),
            Ok(()) => "peer exited before it was ready".into(),
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Cleanup on signals.

/// `/shmflow.<name>` of the ring, for the signal handler.
static SHM_NAME: OnceLock<CString> = OnceLock::new();

extern "C" fn on_signal(sig: libc::c_int) {
    if let Some(name) = SHM_NAME.get() {
        // SAFETY: shm_unlink of a NUL-terminated name that lives forever (a static); it only
        // unlinks a file, which is safe in a signal handler.
        unsafe { libc::shm_unlink(name.as_ptr()) };
    }
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(128 + sig) };
}

/// Removes the ring's segment if the program is interrupted (the forked peers die with it).
fn remove_on_signal(ring_name: &str) {
    let _ = SHM_NAME.set(CString::new(format!("/shmflow.{ring_name}")).expect("no NUL"));
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installs a handler that only calls async-signal-safe functions.
        unsafe {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
}

// ---------------------------------------------------------------------------------------------
// The runs.

fn checksum_error(transport: &str, seq: u64, got: u64, want: u64) -> Box<dyn Error> {
    format!("{transport}: checksum mismatch in frame {seq}: {got:#018x} != {want:#018x}").into()
}

/// Two processes, one ring: a forked writer fills `frames` frames in place; this process
/// checksums each one in place. Returns the time from the writer's start to the last checksum.
fn run_ring(ring: &Ring<u8>, frames: u64, wait: WaitStrategy) -> Res<Duration> {
    let mut reader = ring.reader()?; // attached first: it sees every frame of the writer
    reader.set_wait_strategy(wait);
    let (ready_r, mut ready_w) = pipe()?;
    let name = ring.name().to_owned();
    let child = fork(move || {
        // A handle of our own (registered with our pid), not the parent's copy.
        let ring = Ring::<u8>::open(&name)?;
        let mut writer = ring.writer()?;
        writer.set_wait_strategy(wait);
        ready_w.write_all(&[1])?;
        for _ in 0..frames {
            let mut slot = writer.reserve()?;
            let seq = slot.seq();
            fill(seq, slot.as_mut_bytes());
            slot.set_tag(seq);
            slot.commit();
        }
        Ok(())
    })?;
    let child = await_ready(ready_r, child)?;
    let start = Instant::now();
    let mut next = None;
    for _ in 0..frames {
        let frame = reader.recv()?;
        let seq = frame.seq();
        if next.is_some_and(|n| n != seq) || frame.tag() != seq {
            return Err(format!(
                "ring: frame {seq} (tag {}) out of order, expected {next:?}",
                frame.tag()
            )
            .into());
        }
        let (got, want) = (checksum(frame.as_bytes()), expected(seq, FRAME));
        if got != want {
            return Err(checksum_error("ring", seq, got, want));
        }
        next = Some(seq + 1);
    }
    let elapsed = start.elapsed();
    match reader.recv() {
        Err(RecvError::Disconnected) => {}
        Ok(f) => return Err(format!("ring: unexpected extra frame {}", f.seq()).into()),
        Err(e) => return Err(e.into()),
    }
    child.wait()?;
    Ok(elapsed)
}

/// Two processes, a byte stream: a forked writer fills a buffer and `write_all`s it for each
/// frame; this process `read_exact`s each frame and checksums it.
fn run_stream(transport: &str, mut rx: impl Read, tx: impl Write, frames: u64) -> Res<Duration> {
    let (ready_r, mut ready_w) = pipe()?;
    let child = fork(move || {
        let mut tx = tx;
        let mut buf = vec![0u8; FRAME];
        fill(u64::MAX, &mut buf); // touch every page before the clock starts
        ready_w.write_all(&[1])?;
        for seq in 0..frames {
            fill(seq, &mut buf);
            tx.write_all(&buf)?;
        }
        Ok(())
    })?;
    let mut buf = vec![0u8; FRAME];
    fill(u64::MAX, &mut buf);
    let child = await_ready(ready_r, child)?;
    let start = Instant::now();
    for seq in 0..frames {
        rx.read_exact(&mut buf)?;
        let (got, want) = (checksum(&buf), expected(seq, FRAME));
        if got != want {
            return Err(checksum_error(transport, seq, got, want));
        }
    }
    let elapsed = start.elapsed();
    if rx.read(&mut buf[..1])? != 0 {
        return Err(format!("{transport}: unexpected bytes after the last frame").into());
    }
    child.wait()?;
    Ok(elapsed)
}

/// The writer stage alone: fill slot after slot, through every slot of the ring. A lossless
/// ring reuses the most recently released slot, so a writer with no reader would refill one
/// cache-hot slot; here an idle reader holds the frames instead: the writer fills all `N`
/// slots, then the reader releases them unread, and so on. Returns the time spent filling.
fn stage_writer(ring: &Ring<u8>, frames: u64) -> Res<Duration> {
    let n = u64::from(ring.info().slots);
    let mut reader = ring.reader()?;
    let mut writer = ring.writer()?;
    let mut busy = Duration::ZERO;
    let mut done = 0;
    while done < frames {
        let batch = n.min(frames - done);
        for _ in 0..batch {
            let mut slot = writer.try_reserve()?;
            let seq = slot.seq();
            let t = Instant::now();
            fill(seq, slot.as_mut_bytes());
            busy += t.elapsed();
            slot.set_tag(seq);
            slot.commit();
        }
        for _ in 0..batch {
            reader.try_recv()?;
        }
        done += batch;
    }
    Ok(busy)
}

/// The reader stage alone: checksum slot after slot, through every slot of the ring, while
/// nobody fills them. Each slot still holds a frame of the writer stage; the writer here only
/// republishes all `N` slots, each tagged with the pattern its content carries (its first
/// byte), then the reader checksums them. Returns the time spent checksumming.
fn stage_reader(ring: &Ring<u8>, frames: u64) -> Res<Duration> {
    let n = u64::from(ring.info().slots);
    let mut reader = ring.reader()?;
    let mut writer = ring.writer()?;
    let mut busy = Duration::ZERO;
    let mut done = 0;
    while done < frames {
        let batch = n.min(frames - done);
        for _ in 0..batch {
            let mut slot = writer.try_reserve()?;
            let content = slot.as_mut_bytes()[0];
            slot.set_tag(u64::from(content));
            slot.commit();
        }
        for _ in 0..batch {
            let frame = reader.try_recv()?;
            let t = Instant::now();
            let got = checksum(frame.as_bytes());
            busy += t.elapsed();
            let want = expected(frame.tag(), FRAME);
            if got != want {
                return Err(checksum_error("reader stage", frame.seq(), got, want));
            }
        }
        done += batch;
    }
    Ok(busy)
}

// ---------------------------------------------------------------------------------------------
// Options, statistics, main.

struct Opts {
    frames: u64,
    stream_frames: u64,
    repeats: usize,
    slots: u32,
    wait: WaitStrategy,
}

const USAGE: &str = "usage: stream_1080p [--frames N] [--stream-frames N] [--repeats R] \
[--slots S] [--busy-poll] [--quick]
  --frames N         frames per ring run and per stage (default 2000)
  --stream-frames N  frames per pipe / socket run (default: frames / 20, at least 10)
  --repeats R        runs of each transport; the table shows medians (default 5)
  --slots S          ring slots (default 3)
  --busy-poll        ring endpoints never sleep (default: spin 50 us, then sleep)
  --quick            --frames 200 --repeats 3";

fn parse_args() -> Res<Opts> {
    let mut frames = 2000u64;
    let mut stream_frames = None;
    let mut repeats = 5usize;
    let mut slots = 3u32;
    let mut wait = WaitStrategy::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |what: &str| -> Res<u64> {
            let v = args
                .next()
                .ok_or_else(|| format!("{what} needs a value\n{USAGE}"))?;
            v.parse::<u64>()
                .map_err(|e| format!("{what} {v}: {e}\n{USAGE}").into())
        };
        match a.as_str() {
            "--frames" => frames = value("--frames")?,
            "--stream-frames" => stream_frames = Some(value("--stream-frames")?),
            "--repeats" => repeats = value("--repeats")? as usize,
            "--slots" => slots = value("--slots")? as u32,
            "--busy-poll" => wait = WaitStrategy::BusyPoll,
            "--quick" => {
                frames = 200;
                repeats = 3;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            // `cargo bench` and test harness flags are not ours; refuse anything else.
            other => return Err(format!("unknown argument {other:?}\n{USAGE}").into()),
        }
    }
    if frames < u64::from(slots) || repeats == 0 || slots < 2 {
        return Err(format!("need --frames >= --slots >= 2 and --repeats >= 1\n{USAGE}").into());
    }
    Ok(Opts {
        frames,
        stream_frames: stream_frames.unwrap_or((frames / 20).max(10)),
        repeats,
        slots,
        wait,
    })
}

/// Median, min and max of frames/s.
fn stats(rates: &[f64]) -> (f64, f64, f64) {
    let mut v = rates.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[0], v[n - 1])
}

fn rate(frames: u64, t: Duration) -> f64 {
    frames as f64 / t.as_secs_f64()
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stream_1080p: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Res<()> {
    let o = parse_args()?;
    let name = format!("stream1080p-{}", std::process::id());
    remove_on_signal(&name);
    // Owned by this process: removed when it is dropped, on return or unwinding.
    let ring = Ring::<u8>::create(&name)
        .shape(SHAPE)
        .slots(o.slots)
        .mode(Mode::Broadcast(Backpressure::Block))
        .build()?;

    let default_pipe = pipe_size(&pipe()?.0)?;
    println!(
        "shmflow stream_1080p: {}x{}x{} u8 frames ({FRAME} bytes); the writer fills every byte, \
         the reader checksums every byte",
        SHAPE[0], SHAPE[1], SHAPE[2]
    );
    println!(
        "ring: broadcast, lossless, {} slots, {:?}; {} frames per ring run and stage, {} per \
         pipe/socket run; {} runs",
        o.slots, o.wait, o.frames, o.stream_frames, o.repeats
    );

    let names = [
        "shmflow ring, 2 processes".to_owned(),
        format!("pipe {} KiB (default)", default_pipe / 1024),
        "pipe 1 MiB (F_SETPIPE_SZ)".to_owned(),
        "unix socket (stream)".to_owned(),
        "writer stage alone (fill)".to_owned(),
        "reader stage alone (checksum)".to_owned(),
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for r in 0..o.repeats {
        let t = Instant::now();
        rates[4].push(rate(o.frames, stage_writer(&ring, o.frames)?));
        rates[5].push(rate(o.frames, stage_reader(&ring, o.frames)?));
        rates[0].push(rate(o.frames, run_ring(&ring, o.frames, o.wait)?));
        let (rx, tx) = pipe()?;
        rates[1].push(rate(
            o.stream_frames,
            run_stream("pipe", rx, tx, o.stream_frames)?,
        ));
        let (rx, tx) = pipe()?;
        set_pipe_size(&tx, 1 << 20)?;
        rates[2].push(rate(
            o.stream_frames,
            run_stream("pipe 1 MiB", rx, tx, o.stream_frames)?,
        ));
        let (rx, tx) = UnixStream::pair()?;
        rates[3].push(rate(
            o.stream_frames,
            run_stream("unix socket", rx, tx, o.stream_frames)?,
        ));
        eprintln!(
            "run {}/{}: ring {:.0} frames/s ({:.1} s)",
            r + 1,
            o.repeats,
            rates[0][r],
            t.elapsed().as_secs_f64()
        );
    }

    let med: Vec<(f64, f64, f64)> = rates.iter().map(|v| stats(v)).collect();
    let limit = med[4].0.min(med[5].0);
    let gbs = |fps: f64| fps * FRAME as f64 / 1e9;
    println!();
    println!(
        "{:<30} {:>10} {:>21} {:>7} {:>8} {:>8}",
        "transport", "frames/s", "(min - max)", "GB/s", "x pipe", "x limit"
    );
    for (i, n) in names.iter().enumerate() {
        let (m, lo, hi) = med[i];
        let x_limit = if i == 0 {
            format!("{:.2}", m / limit)
        } else {
            String::new()
        };
        println!(
            "{n:<30} {m:>10.0} {:>21} {:>7.2} {:>8.1} {x_limit:>8}",
            format!("({lo:.0} - {hi:.0})"),
            gbs(m),
            m / med[1].0,
        );
    }
    println!(
        "{:<30} {limit:>10.0} {:>21} {:>7.2} {:>8.1} {:>8}",
        "pipeline limit (slower stage)",
        "",
        gbs(limit),
        limit / med[1].0,
        "1.00"
    );
    println!(
        "\nmedians of {} runs; x pipe = frames/s / the default pipe's; ring vs pipe 1 MiB: {:.1}x; \
         ring vs pipeline limit: {:.2}",
        o.repeats,
        med[0].0 / med[2].0,
        med[0].0 / limit
    );
    println!("all checksums, sequence numbers and tags verified");
    Ok(())
}

//! shmflow vs iceoryx2 0.10 on the same scenarios, in the same invocation.
//!
//! ```text
//! cargo run --release [-- --frames N] [--repeats R] [--round-trips N] [--slots S] [--json]
//!                        [--only frames|rtt] [--no-pin] [--quick]
//! ```
//!
//! Two processes per transport: this process and a peer, the same binary re-executed with a
//! hidden `__peer` argument (so no iceoryx2 or shmflow state crosses a `fork`). By default this
//! process is pinned to one allowed CPU and the peer to another (`sched_setaffinity`).
//!
//! - **frames_1080p**: 6,220,800-byte frames (1080×1920×3 `u8`). The peer writes: it fills every
//!   byte in place (a `memset` per 4 KiB chunk, value depending on the frame number). This
//!   process reads: it checksums every byte in place and checks the checksum, and that frame
//!   numbers are contiguous (nothing dropped, nothing repeated). Both transports are lossless:
//!   shmflow is a broadcast ring with `Backpressure::Block` and `--slots` slots; iceoryx2 is a
//!   publish-subscribe service of `[u8]` with safe overflow off, `RetryUntilDelivered`
//!   backpressure, a subscriber buffer of `slots - 2` samples (at least 1), 1 borrowed and 1
//!   loaned sample, so the publisher's data segment holds `slots` frames, like the ring (3 when
//!   `--slots 2`). The table also reports which frame buffers the reader found frames in: how
//!   many, and their mean LRU stack depth (how much memory the stream keeps cycling through).
//!   frames/s = frames / (time from the command to the peer until the last frame is verified);
//!   the table shows the median of `--repeats` runs and the min–max.
//! - **rtt_64b**: 64-byte ping-pong round trips (one ring / service per direction): this process
//!   writes a message, the peer copies it back, this process reads it. Every round trip is timed;
//!   the table shows the median and p90 (µs) of all of them.
//!
//! Runs of the transports are interleaved (run 1 of each, then run 2 of each, ...), so a noisy
//! moment of the machine hits them all alike. Exits with status 1 on any verification error.

use std::error::Error;
use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::mem::MaybeUninit;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use iceoryx2::port::listener::Listener;
use iceoryx2::port::notifier::Notifier;
use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::prelude::*;
use shmflow::{Backpressure, Mode, Reader, Ring, WaitStrategy, Writer};

type Res<T> = Result<T, Box<dyn Error>>;

const SHAPE: [usize; 3] = [1080, 1920, 3];
const FRAME: usize = 1080 * 1920 * 3;
/// The fill pattern: chunk `k` of frame `seq` holds the byte `(seq + k) as u8`.
const CHUNK: usize = 4096;
/// The round-trip message.
const MSG: usize = 64;
/// Untimed round trips at the start of every rtt run (the peer wakes up from its control pipe).
const RTT_WARMUP: u64 = 200;

// ---------------------------------------------------------------------------------------------
// The work: fill and checksum (as in shmflow's examples/stream_1080p.rs).

/// Fills every byte of a frame with frame `seq`'s pattern.
fn fill(seq: u64, bytes: &mut [u8]) {
    for (k, c) in bytes.chunks_mut(CHUNK).enumerate() {
        c.fill(seq.wrapping_add(k as u64) as u8);
    }
}

/// [`fill`] for iceoryx2's uninitialised loan: the same `memset` per chunk.
fn fill_uninit(seq: u64, bytes: &mut [MaybeUninit<u8>]) {
    for (k, c) in bytes.chunks_mut(CHUNK).enumerate() {
        // SAFETY: `c` is a valid, exclusively borrowed region of `c.len()` bytes; writing bytes
        // through a raw pointer initialises them (no reference to uninitialised `u8` is made).
        unsafe {
            std::ptr::write_bytes(
                c.as_mut_ptr().cast::<u8>(),
                seq.wrapping_add(k as u64) as u8,
                c.len(),
            )
        };
    }
}

/// Reads every byte: the wrapping sum of the frame's little-endian `u64` words.
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

/// Checks frame `seq` (which must be `next`) against its expected checksum.
fn verify_frame(what: &str, next: u64, seq: u64, bytes: &[u8]) -> Res<()> {
    if seq != next {
        return Err(format!("{what}: got frame {seq}, expected {next} (lost or repeated)").into());
    }
    if bytes.len() != FRAME {
        return Err(format!("{what}: frame {seq} has {} bytes", bytes.len()).into());
    }
    let (got, want) = (checksum(bytes), expected(seq, FRAME));
    if got != want {
        return Err(format!(
            "{what}: checksum mismatch in frame {seq}: {got:#018x} != {want:#018x}"
        )
        .into());
    }
    Ok(())
}

/// Round trip `i`'s message: `i` (little endian) then `i as u8` repeated.
fn message(i: u64) -> [u8; MSG] {
    let mut m = [i as u8; MSG];
    m[..8].copy_from_slice(&i.to_le_bytes());
    m
}

fn verify_message(what: &str, i: u64, m: &[u8]) -> Res<()> {
    if m != message(i) {
        return Err(format!("{what}: round trip {i} came back wrong").into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// CPU pinning.

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: sched_getaffinity writes at most `size_of::<cpu_set_t>()` bytes into `set`.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads bit `c` of a valid set; `c` < CPU_SETSIZE.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// Pins the calling process to `cpu`.
fn pin_to(cpu: usize) -> Res<()> {
    // SAFETY: an all-zero cpu_set_t is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET sets bit `cpu` of a valid set; callers pass a CPU from `allowed_cpus`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: sched_setaffinity reads `size_of::<cpu_set_t>()` bytes from a valid set and only
    // changes this process's own affinity.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if r != 0 {
        return Err(format!(
            "sched_setaffinity({cpu}): {}",
            std::io::Error::last_os_error()
        )
        .into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The peer process: this binary, re-executed with `__peer <kind> <args..>`.
//
// Protocol: the peer sets itself up and prints `ready`; then for every line `N` on its stdin it
// does N units of work (writes N frames, or echoes N messages) and prints `done`. At EOF on
// stdin it drops its endpoints and exits 0.

/// A running peer; killed and reaped on drop unless [`Peer::finish`]ed.
struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    what: String,
}

impl Peer {
    fn spawn(cpu: Option<usize>, args: &[&str]) -> Res<Peer> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.arg("__peer");
        cmd.arg(cpu.map_or("-".to_owned(), |c| c.to_string()));
        cmd.args(args);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = cmd.spawn()?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut peer = Peer {
            child,
            stdin,
            stdout,
            what: args.join(" "),
        };
        peer.expect_line("ready")?;
        Ok(peer)
    }

    fn expect_line(&mut self, want: &str) -> Res<()> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        if line.trim_end() == want {
            return Ok(());
        }
        let status = self.child.wait()?;
        Err(format!(
            "peer `{}` failed (said {:?}, expected {want:?}; {status})",
            self.what,
            line.trim_end()
        )
        .into())
    }

    /// Tells the peer to do `n` units of work (returns at once).
    fn command(&mut self, n: u64) -> Res<()> {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{n}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Waits until the peer has finished its command.
    fn done(&mut self) -> Res<()> {
        self.expect_line("done")
    }

    /// Closes the peer's stdin and waits for it to exit successfully.
    fn finish(mut self) -> Res<()> {
        drop(self.stdin.take());
        let status = self.child.wait()?;
        if !status.success() {
            return Err(format!("peer `{}`: {status}", self.what).into());
        }
        Ok(())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Entry point of a peer process. `args` = `<cpu|-> <kind> <args..>`.
fn peer_main(args: &[String]) -> Res<()> {
    // SAFETY: only changes this process's own settings: die with the parent.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    let [cpu, kind, rest @ ..] = args else {
        return Err("usage: __peer <cpu|-> <kind> <args..>".into());
    };
    if cpu != "-" {
        pin_to(cpu.parse()?)?;
    }
    let arg = |i: usize| -> Res<&str> {
        rest.get(i)
            .map(String::as_str)
            .ok_or_else(|| format!("peer {kind}: missing argument {i}").into())
    };
    match kind.as_str() {
        "frames-shmflow" => peer_frames_shmflow(arg(0)?, strategy(arg(1)?)?),
        "frames-iceoryx2" => peer_frames_iceoryx2(arg(0)?),
        "rtt-shmflow" => peer_rtt_shmflow(arg(0)?, arg(1)?, strategy(arg(2)?)?),
        "rtt-iceoryx2" => peer_rtt_iceoryx2(arg(0)?, arg(1)?, arg(2)? == "event"),
        other => Err(format!("unknown peer kind {other:?}").into()),
    }
}

/// Prints `ready`, then calls `work(n)` for every command `n` and prints `done` after it.
fn serve(mut work: impl FnMut(u64) -> Res<()>) -> Res<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        work(line?.trim().parse()?)?;
        writeln!(out, "done")?;
        out.flush()?;
    }
    Ok(())
}

fn strategy(s: &str) -> Res<WaitStrategy> {
    Ok(match s {
        "default" => WaitStrategy::default(),
        "busy" => WaitStrategy::BusyPoll,
        "block" => WaitStrategy::SpinThenBlock {
            spin: Duration::ZERO,
        },
        other => return Err(format!("unknown wait strategy {other:?}").into()),
    })
}

fn peer_frames_shmflow(ring: &str, strategy: WaitStrategy) -> Res<()> {
    let ring = Ring::<u8>::open(ring)?;
    let mut writer = ring.writer()?;
    writer.set_wait_strategy(strategy);
    serve(|n| {
        for _ in 0..n {
            let mut slot = writer.reserve()?;
            let seq = slot.seq();
            fill(seq, slot.as_mut_bytes());
            slot.set_tag(seq);
            slot.commit();
        }
        Ok(())
    })
}

fn iox_node() -> Res<Node<ipc::Service>> {
    // No signal handler: Ctrl-C ends the benchmark as usual.
    Ok(NodeBuilder::new()
        .signal_handling_mode(SignalHandlingMode::Disabled)
        .create::<ipc::Service>()?)
}

fn peer_frames_iceoryx2(service: &str) -> Res<()> {
    let node = iox_node()?;
    let service = node
        .service_builder(&service.try_into()?)
        .publish_subscribe::<[u8]>()
        .user_header::<u64>()
        .open()?;
    let publisher = service
        .publisher_builder()
        .initial_max_slice_len(FRAME)
        .max_loaned_samples(1)
        .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
        .create()?;
    let mut seq = 0u64;
    serve(|n| {
        for _ in 0..n {
            let mut sample = publisher.loan_slice_uninit(FRAME)?;
            *sample.user_header_mut() = seq;
            fill_uninit(seq, sample.payload_mut());
            // SAFETY: fill_uninit initialised every byte of the payload.
            let sample = unsafe { sample.assume_init() };
            sample.send()?;
            seq += 1;
        }
        Ok(())
    })
}

fn peer_rtt_shmflow(ping: &str, pong: &str, strategy: WaitStrategy) -> Res<()> {
    let mut reader = Ring::<u8>::open(ping)?.reader()?;
    let mut writer = Ring::<u8>::open(pong)?.writer()?;
    reader.set_wait_strategy(strategy);
    writer.set_wait_strategy(strategy);
    serve(|n| {
        for _ in 0..n {
            let frame = reader.recv()?;
            let mut slot = writer.reserve()?;
            slot.as_mut_bytes().copy_from_slice(frame.as_bytes());
            slot.commit();
        }
        Ok(())
    })
}

/// One direction of an iceoryx2 round trip: a `[u8; 64]` service, plus an event service when
/// waiting is event-based.
struct IoxTx {
    publisher: Publisher<ipc::Service, [u8; MSG], ()>,
    notifier: Option<Notifier<ipc::Service>>,
}

struct IoxRx {
    subscriber: Subscriber<ipc::Service, [u8; MSG], ()>,
    listener: Option<Listener<ipc::Service>>,
}

fn iox_msg_service(
    node: &Node<ipc::Service>,
    name: &str,
    create: bool,
) -> Res<iceoryx2::service::port_factory::publish_subscribe::PortFactory<ipc::Service, [u8; MSG], ()>>
{
    let b = node
        .service_builder(&name.try_into()?)
        .publish_subscribe::<[u8; MSG]>();
    Ok(if create {
        b.enable_safe_overflow(false)
            .history_size(0)
            .subscriber_max_buffer_size(2)
            .subscriber_max_borrowed_samples(1)
            .max_publishers(1)
            .max_subscribers(1)
            .create()?
    } else {
        b.open()?
    })
}

fn iox_event_service(
    node: &Node<ipc::Service>,
    name: &str,
    create: bool,
) -> Res<iceoryx2::service::port_factory::event::PortFactory<ipc::Service>> {
    let b = node.service_builder(&name.try_into()?).event();
    Ok(if create {
        b.max_notifiers(1).max_listeners(1).create()?
    } else {
        b.open()?
    })
}

impl IoxTx {
    fn new(node: &Node<ipc::Service>, name: &str, event: bool, create: bool) -> Res<IoxTx> {
        let publisher = iox_msg_service(node, name, create)?
            .publisher_builder()
            .max_loaned_samples(1)
            .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
            .create()?;
        let notifier = if event {
            Some(
                iox_event_service(node, &format!("{name}-event"), create)?
                    .notifier_builder()
                    .create()?,
            )
        } else {
            None
        };
        Ok(IoxTx {
            publisher,
            notifier,
        })
    }

    fn send(&self, m: [u8; MSG]) -> Res<()> {
        self.publisher.loan_uninit()?.write_payload(m).send()?;
        if let Some(n) = &self.notifier {
            n.notify()?;
        }
        Ok(())
    }
}

impl IoxRx {
    fn new(node: &Node<ipc::Service>, name: &str, event: bool, create: bool) -> Res<IoxRx> {
        let subscriber = iox_msg_service(node, name, create)?
            .subscriber_builder()
            .buffer_size(2)
            .create()?;
        let listener = if event {
            Some(
                iox_event_service(node, &format!("{name}-event"), create)?
                    .listener_builder()
                    .create()?,
            )
        } else {
            None
        };
        Ok(IoxRx {
            subscriber,
            listener,
        })
    }

    /// Waits for the next message: spins on `receive` or blocks on the listener.
    fn recv(&self) -> Res<[u8; MSG]> {
        loop {
            if let Some(s) = self.subscriber.receive()? {
                return Ok(*s.payload());
            }
            match &self.listener {
                Some(l) => {
                    l.blocking_wait(|_| {})?;
                }
                None => std::hint::spin_loop(),
            }
        }
    }
}

fn peer_rtt_iceoryx2(ping: &str, pong: &str, event: bool) -> Res<()> {
    let node = iox_node()?;
    let rx = IoxRx::new(&node, ping, event, false)?;
    let tx = IoxTx::new(&node, pong, event, false)?;
    serve(|n| {
        for _ in 0..n {
            tx.send(rx.recv()?)?;
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Cleanup on signals: the shmflow segments this process owns (peers die with it; iceoryx2's
// leftovers of a dead process are removed by the next run's `try_cleanup_dead_nodes`).

static SHM_NAMES: OnceLock<Vec<CString>> = OnceLock::new();

extern "C" fn on_signal(sig: libc::c_int) {
    if let Some(names) = SHM_NAMES.get() {
        for n in names {
            // SAFETY: shm_unlink of a NUL-terminated name that lives forever (a static); it
            // only unlinks a file, which is safe in a signal handler.
            unsafe { libc::shm_unlink(n.as_ptr()) };
        }
    }
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(128 + sig) };
}

fn remove_on_signal(rings: &[String]) {
    let names = rings
        .iter()
        .map(|r| CString::new(format!("/shmflow.{r}")).expect("no NUL"))
        .collect();
    let _ = SHM_NAMES.set(names);
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
// The scenarios, on this process's side.

/// The addresses at which the reader found frames, most recently used first, and their mean
/// LRU stack depth: a frame found in the buffer used 1 frame ago has depth 1, in a buffer whose
/// last use was followed by frames in k other buffers depth k + 1. A ring of S slots always has
/// depth S; the depth is how many frames' worth of memory the stream keeps cycling through.
#[derive(Default)]
struct Buffers {
    lru: Vec<usize>,
    depth_sum: u64,
    reuses: u64,
}

impl Buffers {
    fn saw(&mut self, p: *const u8) {
        let a = p as usize;
        if let Some(i) = self.lru.iter().position(|&b| b == a) {
            self.depth_sum += i as u64 + 1;
            self.reuses += 1;
            self.lru.remove(i);
        }
        self.lru.insert(0, a);
    }

    /// (distinct buffers, mean LRU depth).
    fn stats(&self) -> (usize, f64) {
        let depth = self.depth_sum as f64 / self.reuses.max(1) as f64;
        (self.lru.len(), depth)
    }

    /// Forgets the depths seen so far (the buffers stay known).
    fn reset_depth(&mut self) {
        self.depth_sum = 0;
        self.reuses = 0;
    }
}

/// One transport variant of the frames scenario: runs `n` frames, returns the elapsed time.
trait FrameSink {
    fn run(&mut self, n: u64) -> Res<Duration>;
    /// The reader's buffers so far: see [`Buffers`].
    fn buffers(&mut self) -> &mut Buffers;
    fn finish(self: Box<Self>) -> Res<()>;
}

struct ShmflowFrames {
    _ring: Ring<u8>,
    reader: Reader<u8>,
    peer: Peer,
    next: u64,
    buffers: Buffers,
}

impl ShmflowFrames {
    fn new(name: &str, slots: u32, strategy: &str, cpu: Option<usize>) -> Res<Self> {
        let ring = Ring::<u8>::create(name)
            .shape(SHAPE)
            .slots(slots)
            .mode(Mode::Broadcast(Backpressure::Block))
            .build()?;
        let mut reader = ring.reader()?; // attached before the writer: sees every frame
        reader.set_wait_strategy(self::strategy(strategy)?);
        let peer = Peer::spawn(cpu, &["frames-shmflow", name, strategy])?;
        Ok(ShmflowFrames {
            _ring: ring,
            reader,
            peer,
            next: 0,
            buffers: Buffers::default(),
        })
    }
}

impl FrameSink for ShmflowFrames {
    fn run(&mut self, n: u64) -> Res<Duration> {
        self.peer.command(n)?;
        let start = Instant::now();
        for _ in 0..n {
            let frame = self.reader.recv()?;
            if frame.tag() != frame.seq() {
                return Err(
                    format!("shmflow: frame {} has tag {}", frame.seq(), frame.tag()).into(),
                );
            }
            verify_frame("shmflow", self.next, frame.seq(), frame.as_bytes())?;
            self.buffers.saw(frame.as_bytes().as_ptr());
            self.next += 1;
        }
        let elapsed = start.elapsed();
        self.peer.done()?;
        Ok(elapsed)
    }

    fn buffers(&mut self) -> &mut Buffers {
        &mut self.buffers
    }

    fn finish(self: Box<Self>) -> Res<()> {
        let s = *self;
        drop(s.reader);
        s.peer.finish()
    }
}

struct IoxFrames {
    subscriber: Subscriber<ipc::Service, [u8], u64>,
    peer: Peer,
    next: u64,
    buffers: Buffers,
    _service:
        iceoryx2::service::port_factory::publish_subscribe::PortFactory<ipc::Service, [u8], u64>,
    _node: Node<ipc::Service>,
}

impl IoxFrames {
    fn new(name: &str, slots: u32, cpu: Option<usize>) -> Res<Self> {
        let node = iox_node()?;
        let buffer = (slots as usize).saturating_sub(2).max(1);
        let service = node
            .service_builder(&name.try_into()?)
            .publish_subscribe::<[u8]>()
            .user_header::<u64>()
            .enable_safe_overflow(false)
            .history_size(0)
            .subscriber_max_buffer_size(buffer)
            .subscriber_max_borrowed_samples(1)
            .max_publishers(1)
            .max_subscribers(1)
            .create()?;
        let subscriber = service.subscriber_builder().buffer_size(buffer).create()?;
        let peer = Peer::spawn(cpu, &["frames-iceoryx2", name])?;
        Ok(IoxFrames {
            subscriber,
            peer,
            next: 0,
            buffers: Buffers::default(),
            _service: service,
            _node: node,
        })
    }
}

impl FrameSink for IoxFrames {
    fn run(&mut self, n: u64) -> Res<Duration> {
        self.peer.command(n)?;
        let start = Instant::now();
        for _ in 0..n {
            let sample = loop {
                if let Some(s) = self.subscriber.receive()? {
                    break s;
                }
                std::hint::spin_loop();
            };
            verify_frame(
                "iceoryx2",
                self.next,
                *sample.user_header(),
                sample.payload(),
            )?;
            self.buffers.saw(sample.payload().as_ptr());
            self.next += 1;
        }
        let elapsed = start.elapsed();
        self.peer.done()?;
        Ok(elapsed)
    }

    fn buffers(&mut self) -> &mut Buffers {
        &mut self.buffers
    }

    fn finish(self: Box<Self>) -> Res<()> {
        let s = *self;
        s.peer.finish()?;
        drop(s.subscriber);
        Ok(())
    }
}

/// One transport variant of the rtt scenario: `n` timed round trips (after a few untimed ones),
/// each one's duration appended to `out`.
trait Pinger {
    fn run(&mut self, n: u64, out: &mut Vec<Duration>) -> Res<()>;
    fn finish(self: Box<Self>) -> Res<()>;
}

struct ShmflowRtt {
    _rings: (Ring<u8>, Ring<u8>),
    writer: Writer<u8>,
    reader: Reader<u8>,
    peer: Peer,
    i: u64,
}

impl ShmflowRtt {
    fn new(ping: &str, pong: &str, strategy: &str, cpu: Option<usize>) -> Res<Self> {
        let make = |name: &str| {
            Ring::<u8>::create(name)
                .shape([MSG])
                .slots(4)
                .mode(Mode::Broadcast(Backpressure::Block))
                .build()
        };
        let rings = (make(ping)?, make(pong)?);
        let mut writer = rings.0.writer()?;
        let mut reader = rings.1.reader()?;
        writer.set_wait_strategy(self::strategy(strategy)?);
        reader.set_wait_strategy(self::strategy(strategy)?);
        let peer = Peer::spawn(cpu, &["rtt-shmflow", ping, pong, strategy])?;
        Ok(ShmflowRtt {
            _rings: rings,
            writer,
            reader,
            peer,
            i: 0,
        })
    }
}

impl Pinger for ShmflowRtt {
    fn run(&mut self, n: u64, out: &mut Vec<Duration>) -> Res<()> {
        self.peer.command(n + RTT_WARMUP)?;
        for k in 0..n + RTT_WARMUP {
            let i = self.i;
            let start = Instant::now();
            let mut slot = self.writer.reserve()?;
            slot.as_mut_bytes().copy_from_slice(&message(i));
            slot.commit();
            let frame = self.reader.recv()?;
            let elapsed = start.elapsed();
            verify_message("shmflow", i, frame.as_bytes())?;
            if k >= RTT_WARMUP {
                out.push(elapsed);
            }
            self.i += 1;
        }
        self.peer.done()
    }

    fn finish(self: Box<Self>) -> Res<()> {
        let s = *self;
        drop(s.writer);
        drop(s.reader);
        s.peer.finish()
    }
}

struct IoxRtt {
    tx: IoxTx,
    rx: IoxRx,
    peer: Peer,
    i: u64,
    _node: Node<ipc::Service>,
}

impl IoxRtt {
    fn new(ping: &str, pong: &str, event: bool, cpu: Option<usize>) -> Res<Self> {
        let node = iox_node()?;
        let tx = IoxTx::new(&node, ping, event, true)?;
        let rx = IoxRx::new(&node, pong, event, true)?;
        let mode = if event { "event" } else { "poll" };
        let peer = Peer::spawn(cpu, &["rtt-iceoryx2", ping, pong, mode])?;
        Ok(IoxRtt {
            tx,
            rx,
            peer,
            i: 0,
            _node: node,
        })
    }
}

impl Pinger for IoxRtt {
    fn run(&mut self, n: u64, out: &mut Vec<Duration>) -> Res<()> {
        self.peer.command(n + RTT_WARMUP)?;
        for k in 0..n + RTT_WARMUP {
            let i = self.i;
            let start = Instant::now();
            self.tx.send(message(i))?;
            let m = self.rx.recv()?;
            let elapsed = start.elapsed();
            verify_message("iceoryx2", i, &m)?;
            if k >= RTT_WARMUP {
                out.push(elapsed);
            }
            self.i += 1;
        }
        self.peer.done()
    }

    fn finish(self: Box<Self>) -> Res<()> {
        let s = *self;
        s.peer.finish()?;
        drop(s.tx);
        drop(s.rx);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Options, statistics, output.

struct Opts {
    frames: u64,
    repeats: usize,
    round_trips: u64,
    slots: u32,
    json: bool,
    pin: bool,
    frames_on: bool,
    rtt_on: bool,
}

const USAGE: &str = "usage: shmflow-compare-iceoryx2 [--frames N] [--repeats R] [--round-trips N] \
[--slots S] [--json] [--only frames|rtt] [--no-pin] [--quick]
  --frames N       frames per frames_1080p run (default 500)
  --repeats R      runs per transport; frames: median of R runs; rtt: N round trips are split
                   over R interleaved runs (default 5)
  --round-trips N  timed 64-byte round trips per transport (default 20000)
  --slots S        frames in flight: shmflow ring slots, iceoryx2 data-segment samples
                   (default 4; iceoryx2 needs at least 3)
  --json           print the results as JSON on stdout (progress goes to stderr)
  --only WHAT      only the frames_1080p or the rtt_64b scenario
  --no-pin         do not pin this process and the peer to separate CPUs
  --quick          --frames 100 --repeats 3 --round-trips 3000";

fn parse_args(args: &[String]) -> Res<Opts> {
    let mut o = Opts {
        frames: 500,
        repeats: 5,
        round_trips: 20_000,
        slots: 4,
        json: false,
        pin: true,
        frames_on: true,
        rtt_on: true,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |what: &str| -> Res<String> {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{what} needs a value\n{USAGE}").into())
        };
        match a.as_str() {
            "--frames" => o.frames = value("--frames")?.parse()?,
            "--repeats" => o.repeats = value("--repeats")?.parse()?,
            "--round-trips" => o.round_trips = value("--round-trips")?.parse()?,
            "--slots" => o.slots = value("--slots")?.parse()?,
            "--json" => o.json = true,
            "--no-pin" => o.pin = false,
            "--only" => match value("--only")?.as_str() {
                "frames" | "frames_1080p" => o.rtt_on = false,
                "rtt" | "rtt_64b" => o.frames_on = false,
                other => return Err(format!("--only {other:?}: frames or rtt\n{USAGE}").into()),
            },
            "--quick" => {
                o.frames = 100;
                o.repeats = 3;
                o.round_trips = 3000;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}").into()),
        }
    }
    if o.repeats == 0 || o.frames == 0 || o.round_trips < o.repeats as u64 || o.slots < 2 {
        return Err(format!(
            "need --repeats >= 1, --frames >= 1, --round-trips >= --repeats, --slots >= 2\n{USAGE}"
        )
        .into());
    }
    Ok(o)
}

/// A result row.
struct Row {
    scenario: &'static str,
    transport: &'static str,
    variant: String,
    unit: &'static str,
    median: f64,
    min: f64,
    max: f64,
    /// rtt only: p90 and p99.
    p90: Option<f64>,
    p99: Option<f64>,
    /// frames: per-run frames/s; rtt: empty.
    runs: Vec<f64>,
    samples: usize,
    /// frames only: distinct frame buffers the reader saw, and their mean LRU depth.
    buffers: Option<(usize, f64)>,
}

/// The `q` quantile (0..=1) of sorted values, nearest rank.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
    sorted[rank - 1]
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

fn frames_row(transport: &'static str, variant: &str, rates: Vec<f64>) -> Row {
    let mut v = rates.clone();
    v.sort_by(f64::total_cmp);
    Row {
        scenario: "frames_1080p",
        transport,
        variant: variant.to_owned(),
        unit: "frames/s",
        median: median(&v),
        min: v[0],
        max: v[v.len() - 1],
        p90: None,
        p99: None,
        samples: rates.len(),
        runs: rates,
        buffers: None,
    }
}

fn rtt_row(transport: &'static str, variant: &str, times: &[Duration]) -> Row {
    let mut v: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    v.sort_by(f64::total_cmp);
    Row {
        scenario: "rtt_64b",
        transport,
        variant: variant.to_owned(),
        unit: "us",
        median: median(&v),
        min: v[0],
        max: v[v.len() - 1],
        p90: Some(quantile(&v, 0.90)),
        p99: Some(quantile(&v, 0.99)),
        runs: Vec::new(),
        samples: v.len(),
        buffers: None,
    }
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.4}")
    } else {
        "null".to_owned()
    }
}

fn print_json(o: &Opts, pinned: &str, load: &str, rows: &[Row]) {
    let mut s = String::from("{\n");
    s.push_str(&format!(
        "  \"config\": {{\"frame_bytes\": {FRAME}, \"frames_per_run\": {}, \"repeats\": {}, \
         \"round_trips\": {}, \"slots\": {}, \"pinning\": {}, \"load_average\": {}, \
         \"iceoryx2\": \"0.10\"}},\n",
        o.frames,
        o.repeats,
        o.round_trips,
        o.slots,
        json_str(pinned),
        json_str(load),
    ));
    s.push_str("  \"results\": [\n");
    for (i, r) in rows.iter().enumerate() {
        s.push_str(&format!(
            "    {{\"scenario\": {}, \"transport\": {}, \"variant\": {}, \"unit\": {}, \
             \"median\": {}, \"min\": {}, \"max\": {}",
            json_str(r.scenario),
            json_str(r.transport),
            json_str(&r.variant),
            json_str(r.unit),
            json_num(r.median),
            json_num(r.min),
            json_num(r.max)
        ));
        if let (Some(p90), Some(p99)) = (r.p90, r.p99) {
            s.push_str(&format!(
                ", \"p90\": {}, \"p99\": {}",
                json_num(p90),
                json_num(p99)
            ));
        }
        if r.scenario == "frames_1080p" {
            let runs: Vec<String> = r.runs.iter().map(|x| json_num(*x)).collect();
            s.push_str(&format!(
                ", \"gb_per_s\": {}, \"runs\": [{}]",
                json_num(r.median * FRAME as f64 / 1e9),
                runs.join(", ")
            ));
        }
        if let Some((n, depth)) = r.buffers {
            s.push_str(&format!(
                ", \"buffers_distinct\": {n}, \"buffer_lru_depth\": {}",
                json_num(depth)
            ));
        }
        s.push_str(&format!(", \"samples\": {}}}", r.samples));
        s.push_str(if i + 1 < rows.len() { ",\n" } else { "\n" });
    }
    s.push_str("  ]\n}");
    println!("{s}");
}

fn print_table(o: &Opts, pinned: &str, load: &str, rows: &[Row]) {
    println!(
        "shmflow vs iceoryx2 0.10 — two processes ({pinned}); frames: {FRAME}-byte frames, \
         {} per run, {} runs, {} frames in flight; rtt: {} timed 64-byte round trips per \
         transport",
        o.frames, o.repeats, o.slots, o.round_trips
    );
    println!();
    println!(
        "{:<13} {:<9} {:<34} {:>10} {:>24}  unit",
        "scenario", "transport", "variant", "median", "min - max / p90 (p99)"
    );
    for r in rows {
        let (median, spread) = if r.scenario == "frames_1080p" {
            (
                format!("{:.0}", r.median),
                format!("{:.0} - {:.0}", r.min, r.max),
            )
        } else {
            (
                format!("{:.2}", r.median),
                format!(
                    "p90 {:.2} (p99 {:.2})",
                    r.p90.unwrap_or(f64::NAN),
                    r.p99.unwrap_or(f64::NAN)
                ),
            )
        };
        let unit = if r.unit == "us" { "µs" } else { r.unit };
        println!(
            "{:<13} {:<9} {:<34} {median:>10} {spread:>24}  {unit}",
            r.scenario, r.transport, r.variant
        );
    }
    println!();
    println!(
        "frames: median and min-max of the runs' frames/s; rtt: median, p90 and p99 of every \
         round trip. All frames' checksums and numbers, and all messages, verified."
    );
    for r in rows {
        if let Some((n, depth)) = r.buffers {
            println!(
                "frame buffers, {} {}: {n} distinct, mean LRU depth {depth:.2} frames \
                 ({:.0} MB cycled through)",
                r.transport,
                r.variant,
                depth * FRAME as f64 / 1e6
            );
        }
    }
    println!("load average (1 min): {load}");
}

/// The 1-minute load average, from `/proc/loadavg` ("?" if unreadable).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

// ---------------------------------------------------------------------------------------------
// main

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // iceoryx2 warns that it found no config file and uses its defaults: that is intended.
    set_log_level_from_env_or(LogLevel::Error);
    let result = if args.first().map(String::as_str) == Some("__peer") {
        peer_main(&args[1..])
    } else {
        run(&args)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "shmflow-compare-iceoryx2 ({}): error: {e}",
                std::process::id()
            );
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Res<()> {
    let o = parse_args(args)?;
    let pid = std::process::id();

    // Leftovers of an interrupted earlier run (dead nodes' shared memory and files).
    let _ = iox_node()?.try_cleanup_dead_nodes();

    let cpus = allowed_cpus();
    let (peer_cpu, pinned) = if o.pin && cpus.len() >= 2 {
        pin_to(cpus[0])?;
        (
            Some(cpus[1]),
            format!("pinned: this process CPU {}, peer CPU {}", cpus[0], cpus[1]),
        )
    } else if o.pin {
        (None, "unpinned: fewer than 2 CPUs allowed".to_owned())
    } else {
        (None, "unpinned (--no-pin)".to_owned())
    };
    let load_before = loadavg();
    eprintln!("{pinned}; load average {load_before}");

    let name = |what: &str| format!("cmp-iox2-{what}-{pid}");
    let frames_variants: [(&'static str, &str, &str); 3] = [
        (
            "shmflow",
            "default wait (spin 50 µs, then block)",
            "default",
        ),
        ("shmflow", "busy-poll", "busy"),
        ("iceoryx2", "spin on receive()", "poll"),
    ];
    let rtt_variants: [(&'static str, &str, &str); 5] = [
        (
            "shmflow",
            "default wait (spin 50 µs, then block)",
            "default",
        ),
        ("shmflow", "busy-poll", "busy"),
        ("shmflow", "block at once (spin 0)", "block"),
        ("iceoryx2", "busy-poll (spin on receive())", "poll"),
        ("iceoryx2", "event (Listener::blocking_wait)", "event"),
    ];
    let mut rings = Vec::new();
    for (_, _, key) in frames_variants.iter().filter(|v| v.0 == "shmflow") {
        rings.push(name(&format!("frames-{key}")));
    }
    for (_, _, key) in rtt_variants.iter().filter(|v| v.0 == "shmflow") {
        rings.push(name(&format!("ping-{key}")));
        rings.push(name(&format!("pong-{key}")));
    }
    remove_on_signal(&rings);

    let mut rows = Vec::new();

    if o.frames_on {
        let mut sinks: Vec<Box<dyn FrameSink>> = Vec::new();
        for (transport, _, key) in frames_variants {
            let n = name(&format!("frames-{key}"));
            sinks.push(match transport {
                "shmflow" => Box::new(ShmflowFrames::new(&n, o.slots, key, peer_cpu)?),
                _ => Box::new(IoxFrames::new(&n, o.slots, peer_cpu)?),
            });
        }
        // Warm-up: touch every buffer of every transport (untimed).
        for s in &mut sinks {
            s.run(u64::from(o.slots) * 4)?;
            s.buffers().reset_depth();
        }
        let mut rates = vec![Vec::new(); sinks.len()];
        for r in 0..o.repeats {
            let mut line = format!("frames run {}/{}:", r + 1, o.repeats);
            for (i, s) in sinks.iter_mut().enumerate() {
                let t = s.run(o.frames)?;
                let fps = o.frames as f64 / t.as_secs_f64();
                rates[i].push(fps);
                line.push_str(&format!(" {} {fps:.0}", frames_variants[i].2));
            }
            eprintln!("{line}");
        }
        let mut buffers = Vec::new();
        for mut s in sinks {
            buffers.push(s.buffers().stats());
            s.finish()?;
        }
        for (i, (transport, variant, _)) in frames_variants.iter().enumerate() {
            let mut row = frames_row(transport, variant, std::mem::take(&mut rates[i]));
            row.buffers = Some(buffers[i]);
            rows.push(row);
        }
    }

    if o.rtt_on {
        let mut pingers: Vec<Box<dyn Pinger>> = Vec::new();
        for (transport, _, key) in rtt_variants {
            let (ping, pong) = (name(&format!("ping-{key}")), name(&format!("pong-{key}")));
            pingers.push(match transport {
                "shmflow" => Box::new(ShmflowRtt::new(&ping, &pong, key, peer_cpu)?),
                _ => Box::new(IoxRtt::new(&ping, &pong, key == "event", peer_cpu)?),
            });
        }
        let mut times: Vec<Vec<Duration>> = vec![Vec::new(); pingers.len()];
        let per_run = o.round_trips / o.repeats as u64;
        for r in 0..o.repeats {
            let n = if r + 1 == o.repeats {
                o.round_trips - per_run * (o.repeats as u64 - 1)
            } else {
                per_run
            };
            let mut line = format!("rtt run {}/{}:", r + 1, o.repeats);
            for (i, p) in pingers.iter_mut().enumerate() {
                let before = times[i].len();
                p.run(n, &mut times[i])?;
                let mut v: Vec<f64> = times[i][before..]
                    .iter()
                    .map(|d| d.as_secs_f64() * 1e6)
                    .collect();
                v.sort_by(f64::total_cmp);
                line.push_str(&format!(" {} {:.2}", rtt_variants[i].2, median(&v)));
            }
            eprintln!("{line}");
        }
        for p in pingers {
            p.finish()?;
        }
        for (i, (transport, variant, _)) in rtt_variants.iter().enumerate() {
            rows.push(rtt_row(transport, variant, &times[i]));
        }
    }

    let load = format!("{load_before} at start, {} at end", loadavg());
    if o.json {
        print_json(&o, &pinned, &load, &rows);
    } else {
        print_table(&o, &pinned, &load, &rows);
    }
    Ok(())
}

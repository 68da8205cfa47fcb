//! Criterion benchmarks: frames/s between two processes (ring vs pipe), and 64-byte round
//! trips between two processes (ring with the default waiting and with busy-polling, vs pipe).
//!
//! ```text
//! cargo bench --bench ring -- --warm-up-time 1 --measurement-time 5
//! cargo bench --bench ring -- stream_1080p          # one group
//! ```
//!
//! Every peer is a forked child process started when its benchmark first runs (this process
//! never has a second thread at that point: criterion runs without rayon here). Streaming
//! benchmarks use `iter_custom`: for `n` iterations the child is told over a control pipe to
//! send `n` frames, and the time runs until this process has checksummed the last one. The
//! writer fills every byte of every frame (a pattern depending on the frame's sequence number);
//! the reader reads every byte and checks the checksum, for the ring in place, for pipes through
//! `write_all` / `read_exact`. Throughput is reported in frames ("elem/s").
//!
//! Under `cargo test --benches` criterion runs each benchmark once, as a smoke test.

use std::fs::File;
use std::hint::black_box;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use shmflow::{Backpressure, Mode, RecvError, Ring, WaitStrategy};

// ---------------------------------------------------------------------------------------------
// The work per frame (the same as examples/stream_1080p.rs).

/// Chunk `k` of frame `seq` holds the byte `(seq + k) as u8`.
const CHUNK: usize = 4096;

fn fill(seq: u64, bytes: &mut [u8]) {
    for (k, c) in bytes.chunks_mut(CHUNK).enumerate() {
        c.fill(seq.wrapping_add(k as u64) as u8);
    }
}

/// Wrapping sum of the little-endian `u64` words (frame lengths here are multiples of 64).
fn checksum(bytes: &[u8]) -> u64 {
    let mut acc = [0u64; 8];
    let blocks = bytes.chunks_exact(64);
    assert!(
        blocks.remainder().is_empty(),
        "frame length is a multiple of 64"
    );
    for b in blocks {
        for (j, a) in acc.iter_mut().enumerate() {
            let w = u64::from_le_bytes(b[j * 8..j * 8 + 8].try_into().expect("8 bytes"));
            *a = a.wrapping_add(w);
        }
    }
    acc.iter().fold(0u64, |s, a| s.wrapping_add(*a))
}

/// The checksum of a `len`-byte frame filled by [`fill`] for `seq` (len a multiple of 8).
fn expected(seq: u64, len: usize) -> u64 {
    (0..len.div_ceil(CHUNK)).fold(0u64, |sum, k| {
        let n = CHUNK.min(len - k * CHUNK) as u64;
        let b = u64::from(seq.wrapping_add(k as u64) as u8);
        sum.wrapping_add((n / 8).wrapping_mul(b.wrapping_mul(0x0101_0101_0101_0101)))
    })
}

fn verify(what: &str, seq: u64, bytes: &[u8]) {
    let (got, want) = (checksum(bytes), expected(seq, bytes.len()));
    assert_eq!(got, want, "{what}: bad checksum in frame {seq}");
}

// ---------------------------------------------------------------------------------------------
// Peer processes.

/// A forked peer. Dropping it closes its control pipe (the peer exits on EOF), then reaps it.
struct Peer {
    pid: libc::pid_t,
    ctl: Option<File>,
}

fn pipe() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the 2-element array.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe2: {}", io::Error::last_os_error());
    // SAFETY: both fds were just created and are owned by nobody else.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

fn set_pipe_size(f: &File, bytes: usize) {
    // SAFETY: fcntl on an fd we own; F_SETPIPE_SZ takes an int.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETPIPE_SZ, bytes as libc::c_int) };
    assert!(r >= 0, "F_SETPIPE_SZ: {}", io::Error::last_os_error());
}

fn threads() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Forks a peer running `f(commands, ready)`: `commands` yields the counts sent with
/// [`Peer::command`] until the control pipe closes; `ready` is written once the peer is set
/// up. The child first closes `parent_fds` (this process's ends of pipes it shares with the
/// peer, so that the peer sees EOF when this process closes them). Returns when the peer is
/// ready.
fn spawn_peer(
    parent_fds: &[RawFd],
    f: impl FnOnce(&mut dyn Iterator<Item = u64>, &mut File),
) -> Peer {
    assert_eq!(
        threads(),
        1,
        "benchmark peers are forked from a single-threaded process"
    );
    let (mut ctl_r, ctl_w) = pipe();
    let (mut ready_r, mut ready_w) = pipe();
    // SAFETY: the process is single-threaded (checked above); the child runs `f` and leaves
    // with `_exit`, never returning into criterion or running the parent's destructors.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
    if pid == 0 {
        for &fd in parent_fds {
            // SAFETY: closes the child's copy of an fd that a `File` owns in the parent; the
            // child never uses or drops that `File` (it leaves with `_exit`).
            unsafe { libc::close(fd) };
        }
        drop(ctl_w);
        drop(ready_r);
        // SAFETY: only changes this process's own settings: die with the parent.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
        let mut commands = std::iter::from_fn(move || {
            let mut b = [0u8; 8];
            ctl_r
                .read_exact(&mut b)
                .ok()
                .map(|()| u64::from_le_bytes(b))
        });
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            f(&mut commands, &mut ready_w)
        }))
        .is_ok();
        // SAFETY: ends the child at once, without the parent's atexit handlers or destructors.
        unsafe { libc::_exit(if ok { 0 } else { 101 }) };
    }
    drop(ctl_r);
    drop(ready_w);
    let mut b = [0u8; 1];
    assert_eq!(
        ready_r.read(&mut b).ok(),
        Some(1),
        "benchmark peer failed to start"
    );
    Peer {
        pid,
        ctl: Some(ctl_w),
    }
}

impl Peer {
    /// Tells the peer to do `n` units of work.
    fn command(&mut self, n: u64) {
        let ctl = self.ctl.as_mut().expect("control pipe open");
        ctl.write_all(&n.to_le_bytes()).expect("peer alive");
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        drop(self.ctl.take());
        let start = Instant::now();
        loop {
            let mut status = 0;
            // SAFETY: waitpid on our own, not yet reaped child.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if r != 0 {
                if r == self.pid && !std::thread::panicking() {
                    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
                    assert!(
                        ok,
                        "benchmark peer {} failed (status {status:#x})",
                        self.pid
                    );
                }
                return;
            }
            if start.elapsed() > Duration::from_secs(5) {
                // SAFETY: killing our own child, which has not been reaped.
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

fn ring_name(what: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("bench-{what}-{}-{n}", std::process::id())
}

/// `Some(peer)` once the benchmark has first run (criterion skips filtered-out benchmarks, so
/// peers are started lazily).
fn lazy<T>(slot: &mut Option<T>, make: impl FnOnce() -> T) -> &mut T {
    slot.get_or_insert_with(make)
}

// ---------------------------------------------------------------------------------------------
// Streaming: frames/s between two processes.

/// As in `examples/stream_1080p.rs`: 3 slots of 1080p frames stay in the cache.
const SLOTS: u32 = 3;

/// A forked writer fills `n` frames per command into a lossless ring; this process checksums
/// them in place.
fn stream_ring(c: &mut Criterion, group: &str, id: &str, shape: &[usize]) {
    let name = ring_name("stream");
    let mut state: Option<(Ring<u8>, shmflow::Reader<u8>, Peer)> = None;
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(1))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10);
    g.bench_function(id, |b| {
        let (_, reader, peer) = lazy(&mut state, || {
            let ring = Ring::<u8>::create(&name)
                .shape(shape)
                .slots(SLOTS)
                .mode(Mode::Broadcast(Backpressure::Block))
                .build()
                .expect("create ring");
            let reader = ring.reader().expect("reader");
            let n = name.clone();
            let peer = spawn_peer(&[], move |commands, ready| {
                let ring = Ring::<u8>::open(&n).expect("open");
                let mut w = ring.writer().expect("writer");
                ready.write_all(&[1]).expect("ready");
                for count in commands {
                    for _ in 0..count {
                        let mut s = w.reserve().expect("reserve");
                        let seq = s.seq();
                        fill(seq, s.as_mut_bytes());
                        s.commit();
                    }
                }
            });
            (ring, reader, peer)
        });
        b.iter_custom(|iters| {
            peer.command(iters);
            let start = Instant::now();
            for _ in 0..iters {
                let f = reader.recv().expect("frame");
                verify("ring", f.seq(), f.as_bytes());
            }
            start.elapsed()
        });
    });
    g.finish();
    if let Some((_ring, mut reader, peer)) = state {
        drop(peer); // its writer detaches: the reader sees Disconnected
        assert!(matches!(reader.recv(), Err(RecvError::Disconnected)));
    }
}

/// A forked writer fills a buffer and `write_all`s it `n` times per command into a pipe; this
/// process `read_exact`s and checksums each frame.
fn stream_pipe(c: &mut Criterion, group: &str, id: &str, len: usize, pipe_bytes: Option<usize>) {
    let mut state: Option<(File, Vec<u8>, u64, Peer)> = None;
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(1))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10);
    g.bench_function(id, |b| {
        let (rx, buf, seq, peer) = lazy(&mut state, || {
            let (rx, mut tx) = pipe();
            if let Some(bytes) = pipe_bytes {
                set_pipe_size(&tx, bytes);
            }
            let peer = spawn_peer(&[rx.as_raw_fd()], move |commands, ready| {
                let mut buf = vec![1u8; len];
                let mut seq = 0;
                ready.write_all(&[1]).expect("ready");
                for count in commands {
                    for _ in 0..count {
                        fill(seq, &mut buf);
                        tx.write_all(&buf).expect("write");
                        seq += 1;
                    }
                }
            });
            (rx, vec![1u8; len], 0, peer)
        });
        b.iter_custom(|iters| {
            peer.command(iters);
            let start = Instant::now();
            for _ in 0..iters {
                rx.read_exact(buf).expect("read");
                verify("pipe", *seq, buf);
                *seq += 1;
            }
            start.elapsed()
        });
    });
    g.finish();
}

fn streaming(c: &mut Criterion) {
    const P1M: Option<usize> = Some(1 << 20);
    let hd = [1080, 1920, 3];
    let hd_len = 1080 * 1920 * 3;
    stream_ring(c, "stream_1080p", "ring", &hd);
    stream_pipe(c, "stream_1080p", "pipe_64KiB", hd_len, None);
    stream_pipe(c, "stream_1080p", "pipe_1MiB", hd_len, P1M);
    for (group, shape) in [
        ("stream_1MB", [1000, 1000]),
        ("stream_8MB", [2000, 4000]),
        ("stream_25MB", [5000, 5000]),
    ] {
        stream_ring(c, group, "ring", &shape);
        stream_pipe(c, group, "pipe_1MiB", shape[0] * shape[1], P1M);
    }
}

// ---------------------------------------------------------------------------------------------
// Latency: 64-byte round trips between two processes.

/// This process writes a 64-byte frame into the ping ring; a forked peer reads it and writes it
/// back into the pong ring; this process reads that. One iteration = one round trip.
fn round_trip_ring(c: &mut Criterion, id: &str, strategy: WaitStrategy) {
    let (ping, pong) = (ring_name("ping"), ring_name("pong"));
    type State = (
        Ring<u8>,
        Ring<u8>,
        shmflow::Writer<u8>,
        shmflow::Reader<u8>,
        Peer,
    );
    let mut state: Option<State> = None;
    let mut g = c.benchmark_group("round_trip_64B");
    g.bench_function(id, |b| {
        let (_, _, w, r, _) = lazy(&mut state, || {
            let make = |name: &str| {
                Ring::<u8>::create(name)
                    .shape([64])
                    .slots(4)
                    .mode(Mode::Broadcast(Backpressure::Block))
                    .build()
                    .expect("create ring")
            };
            let (ping_ring, pong_ring) = (make(&ping), make(&pong));
            let mut w = ping_ring.writer().expect("writer");
            let mut r = pong_ring.reader().expect("reader");
            w.set_wait_strategy(strategy);
            r.set_wait_strategy(strategy);
            let (ping, pong) = (ping.clone(), pong.clone());
            let peer = spawn_peer(&[], move |_, ready| {
                let mut r = Ring::<u8>::open(&ping)
                    .expect("open")
                    .reader()
                    .expect("reader");
                let mut w = Ring::<u8>::open(&pong)
                    .expect("open")
                    .writer()
                    .expect("writer");
                r.set_wait_strategy(strategy);
                w.set_wait_strategy(strategy);
                ready.write_all(&[1]).expect("ready");
                // Echo until the ping writer detaches.
                while let Ok(f) = r.recv() {
                    let mut s = w.reserve().expect("reserve");
                    s.as_mut_bytes().copy_from_slice(f.as_bytes());
                    s.commit();
                }
            });
            (ping_ring, pong_ring, w, r, peer)
        });
        b.iter_custom(|iters| {
            let start = Instant::now();
            for i in 0..iters {
                let mut s = w.reserve().expect("reserve");
                s.as_mut_bytes().fill(i as u8);
                s.commit();
                let f = r.recv().expect("pong");
                assert_eq!(f.as_bytes()[63], i as u8);
            }
            start.elapsed()
        });
    });
    g.finish();
    if let Some((_ping, _pong, w, r, peer)) = state {
        drop(w); // the peer's recv returns Disconnected and it exits
        drop(r);
        drop(peer);
    }
}

/// The same round trip through two pipes.
fn round_trip_pipe(c: &mut Criterion) {
    let mut state: Option<(File, File, Peer)> = None;
    let mut g = c.benchmark_group("round_trip_64B");
    g.bench_function("pipe", |b| {
        let (tx, rx, _) = lazy(&mut state, || {
            let (ping_r, ping_w) = pipe();
            let (pong_r, pong_w) = pipe();
            let fds = [ping_w.as_raw_fd(), pong_r.as_raw_fd()];
            let peer = spawn_peer(&fds, move |_, ready| {
                let (mut rx, mut tx) = (ping_r, pong_w);
                ready.write_all(&[1]).expect("ready");
                let mut buf = [0u8; 64];
                while rx.read_exact(&mut buf).is_ok() {
                    tx.write_all(&buf).expect("write");
                }
            });
            (ping_w, pong_r, peer)
        });
        b.iter_custom(|iters| {
            let mut buf = [0u8; 64];
            let start = Instant::now();
            for i in 0..iters {
                tx.write_all(&[i as u8; 64]).expect("write");
                rx.read_exact(&mut buf).expect("read");
                assert_eq!(buf[63], i as u8);
            }
            black_box(buf);
            start.elapsed()
        });
    });
    g.finish();
    if let Some((tx, rx, peer)) = state {
        drop(tx); // EOF: the peer exits
        drop(rx);
        drop(peer);
    }
}

fn latency(c: &mut Criterion) {
    round_trip_ring(c, "ring_default", WaitStrategy::default());
    round_trip_ring(c, "ring_busy_poll", WaitStrategy::BusyPoll);
    round_trip_pipe(c);
}

criterion_group!(benches, streaming, latency);
criterion_main!(benches);

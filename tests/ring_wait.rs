//! Waiting: timeouts return on time, `try_` calls never block, blocking calls wake when another
//! process commits or releases (through the semaphore, and with busy polling), and a reader's
//! fd becomes readable in `poll`/epoll when another process commits.
//!
//! Wake-up tests set the liveness interval to 30 s: a sleeping endpoint also wakes at every
//! liveness tick, so with the default 100 ms a lost wake-up would only cost time. With 30 s, a
//! lost wake-up shows as a stall well past the 5 s bounds below.

mod common;

use std::time::{Duration, Instant};

use common::*;
use shmflow::{
    Backpressure, Mode, RecvTimeoutError, ReserveTimeoutError, Ring, TryRecvError, TryReserveError,
    WaitStrategy, Writer,
};

const FRAME: usize = 256;
const BLOCK: Mode = Mode::Broadcast(Backpressure::Block);
/// Liveness interval for wake-up tests: far longer than any bound, see the module docs.
const NO_TICK: Duration = Duration::from_secs(30);
/// Generous bound for "woke up" / "did not hang".
const BOUND: Duration = Duration::from_secs(5);
/// Bound for a 100 ms timeout to return.
const TIMEOUT_BOUND: Duration = Duration::from_secs(2);

const STRATEGIES: [WaitStrategy; 3] = [
    WaitStrategy::SpinThenBlock {
        spin: Duration::from_micros(50),
    },
    WaitStrategy::SpinThenBlock {
        spin: Duration::ZERO,
    },
    WaitStrategy::BusyPoll,
];

// ------------------------------------------------------------------------------------ helpers

/// `poll` for POLLIN on one fd; true if readable within `timeout`.
#[cfg_attr(shmflow_no_doorbell, allow(dead_code))]
fn wait_readable(fd: libc::c_int, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, left.as_millis() as libc::c_int) };
        if n > 0 {
            assert!(p.revents & libc::POLLIN != 0, "revents {:#x}", p.revents);
            return true;
        }
        if n == 0 {
            return false;
        }
        assert_eq!(
            std::io::Error::last_os_error().kind(),
            std::io::ErrorKind::Interrupted
        );
    }
}

fn ring(name: &str, mode: Mode, slots: u32) -> Ring<u8> {
    Ring::<u8>::create(name)
        .shape([FRAME])
        .slots(slots)
        .mode(mode)
        .build()
        .unwrap()
}

fn write_frame(w: &mut Writer<u8>) -> u64 {
    let mut s = w.reserve_timeout(BOUND).expect("reserve_timeout");
    let seq = s.seq();
    fill(seq, s.as_mut_bytes());
    s.commit()
}

/// A forked child attached to ring `name` as a writer that writes nothing until killed.
fn idle_writer(name: &str, sig: &Pipe) -> Child {
    let child = fork_child(|| {
        let ring = Ring::<u8>::open(name).unwrap();
        let _w = ring.writer().unwrap();
        sig.send(b'W');
        sleep_forever();
    });
    sig.expect(b'W');
    child
}

/// A forked child attached to ring `name` as a reader that reads nothing until killed.
fn idle_reader(name: &str, sig: &Pipe) -> Child {
    let child = fork_child(|| {
        let ring = Ring::<u8>::open(name).unwrap();
        let _r = ring.reader().unwrap();
        sig.send(b'R');
        sleep_forever();
    });
    sig.expect(b'R');
    child
}

// ------------------------------------------------------------------------------------ timeouts

#[test]
fn recv_timeout_on_an_empty_ring_times_out_in_time() {
    let name = unique_name("wait-rto");
    let _g = RingGuard(name.clone());
    let ring = ring(&name, BLOCK, 4);
    let sig = Pipe::new();
    let mut reader = ring.reader().unwrap();
    let check_timeout = |reader: &mut shmflow::Reader<u8>, what: &str| {
        for s in STRATEGIES {
            reader.set_wait_strategy(s);
            let t = Instant::now();
            let r = reader.recv_timeout(Duration::from_millis(100));
            let took = t.elapsed();
            assert!(
                matches!(r, Err(RecvTimeoutError::Timeout)),
                "{what}, {s:?}: {r:?}"
            );
            assert!(
                took >= Duration::from_millis(100),
                "{what}, {s:?}: {took:?}"
            );
            assert!(took < TIMEOUT_BOUND, "{what}, {s:?}: {took:?}");
        }
    };
    // No writer ever attached: wait (not Disconnected).
    check_timeout(&mut reader, "no writer yet");
    // A writer process attached that writes nothing.
    let w = idle_writer(&name, &sig);
    check_timeout(&mut reader, "idle writer process");
    drop(w);
}

#[test]
fn reserve_timeout_on_a_full_ring_times_out_in_time() {
    for mode in [Mode::Queue, BLOCK] {
        let name = unique_name("wait-wto");
        let _g = RingGuard(name.clone());
        let ring = ring(&name, mode, 2);
        let sig = Pipe::new();
        let r = idle_reader(&name, &sig);
        let mut w = ring.writer().unwrap();
        write_frame(&mut w);
        write_frame(&mut w);
        for s in STRATEGIES {
            w.set_wait_strategy(s);
            let t = Instant::now();
            let r = w.reserve_timeout(Duration::from_millis(100));
            let took = t.elapsed();
            assert!(
                matches!(r, Err(ReserveTimeoutError::Timeout)),
                "{mode:?}, {s:?}: {:?}",
                r.map(|s| s.seq())
            );
            assert!(
                took >= Duration::from_millis(100),
                "{mode:?}, {s:?}: {took:?}"
            );
            assert!(took < TIMEOUT_BOUND, "{mode:?}, {s:?}: {took:?}");
        }
        drop(r);
    }
}

#[test]
fn zero_and_huge_timeouts() {
    let name = unique_name("wait-edge");
    let _g = RingGuard(name.clone());
    let ring = ring(&name, Mode::Queue, 2);
    let mut reader = ring.reader().unwrap();
    reader.set_liveness_interval(NO_TICK);
    let mut w = ring.writer().unwrap();
    let t = Instant::now();
    assert!(matches!(
        reader.recv_timeout(Duration::ZERO),
        Err(RecvTimeoutError::Timeout)
    ));
    assert!(t.elapsed() < TIMEOUT_BOUND);
    // Duration::MAX must not overflow the deadline.
    assert_eq!(w.reserve_timeout(Duration::MAX).unwrap().commit(), 0);
    assert_eq!(reader.recv_timeout(Duration::MAX).unwrap().seq(), 0);
    write_frame(&mut w);
    write_frame(&mut w);
    let t = Instant::now();
    assert!(matches!(
        w.reserve_timeout(Duration::ZERO),
        Err(ReserveTimeoutError::Timeout)
    ));
    assert!(t.elapsed() < TIMEOUT_BOUND);
    assert_eq!(reader.recv_timeout(Duration::MAX).unwrap().seq(), 1);
    assert_eq!(reader.recv_timeout(Duration::MAX).unwrap().seq(), 2);
    // An endless timeout still wakes when another process commits.
    drop(w);
    let sig = Pipe::new();
    let child = fork_child(|| {
        let ring = Ring::<u8>::open(&name).unwrap();
        let mut w = ring.writer().unwrap();
        sig.send(b'W');
        std::thread::sleep(Duration::from_millis(50));
        write_frame(&mut w);
        0
    });
    sig.expect(b'W');
    let t = Instant::now();
    let f = reader
        .recv_timeout(Duration::MAX)
        .expect("frame from the child");
    assert_eq!(f.seq(), 3);
    assert!(t.elapsed() < BOUND, "woke after {:?}", t.elapsed());
    child.join_ok();
}

#[test]
fn try_recv_and_try_reserve_never_block() {
    const CALLS: u32 = 2000;
    for mode in [Mode::Queue, BLOCK] {
        let name = unique_name("wait-try");
        let _g = RingGuard(name.clone());
        let ring = ring(&name, mode, 2);
        let sig = Pipe::new();

        // Empty ring, no writer yet, then with a writer process attached.
        let mut reader = ring.reader().unwrap();
        assert_eq!(reader.try_recv().unwrap_err(), TryRecvError::Empty);
        let wchild = idle_writer(&name, &sig);
        let t = Instant::now();
        for _ in 0..CALLS {
            assert_eq!(reader.try_recv().unwrap_err(), TryRecvError::Empty);
        }
        assert!(
            t.elapsed() < TIMEOUT_BOUND,
            "{CALLS} try_recv took {:?}",
            t.elapsed()
        );
        drop(reader);
        drop(wchild);

        // Full ring with a reader process attached that never reads.
        let name = unique_name("wait-try");
        let _g = RingGuard(name.clone());
        let ring = self::ring(&name, mode, 2);
        let rchild = idle_reader(&name, &sig);
        let mut w = ring.writer().unwrap();
        write_frame(&mut w);
        write_frame(&mut w);
        let t = Instant::now();
        for _ in 0..CALLS {
            assert_eq!(w.try_reserve().unwrap_err(), TryReserveError::Full);
        }
        assert!(
            t.elapsed() < TIMEOUT_BOUND,
            "{CALLS} try_reserve took {:?}",
            t.elapsed()
        );
        drop(rchild);
    }
}

// ------------------------------------------------------------------------------------ wake-ups

/// The parent blocks in `recv` while a writer process commits `n` frames with pauses.
fn recv_wakes_on_commit(mode: Mode, strategy: WaitStrategy) {
    const N: u64 = 200;
    let name = unique_name("wait-rwake");
    let _g = RingGuard(name.clone());
    let ring = ring(&name, mode, 4);
    let mut reader = ring.reader().unwrap();
    reader.set_wait_strategy(strategy);
    reader.set_liveness_interval(NO_TICK);
    let (up, down) = (Pipe::new(), Pipe::new());
    let child = fork_child(|| {
        let ring = Ring::<u8>::open(&name).unwrap();
        let mut w = ring.writer().unwrap();
        up.send(b'A');
        if down.recv(Duration::from_secs(20)) != Some(b'G') {
            return 2;
        }
        // Let the parent fall asleep first.
        std::thread::sleep(Duration::from_millis(50));
        for i in 0..N {
            write_frame(&mut w);
            match i % 10 {
                0 => std::thread::sleep(Duration::from_millis(2)),
                1..=3 => std::thread::sleep(Duration::from_micros(100)),
                _ => {}
            }
        }
        0
    });
    up.expect(b'A');
    down.send(b'G');
    // Drop-oldest may skip frames (it says how many); the other modes deliver every frame.
    let lossy = mode == Mode::Broadcast(Backpressure::DropOldest);
    // The first frame through plain `recv` (no deadline): its sleep ends at the next liveness
    // tick (3 s) at the latest, so only a real wake-up returns it well before.
    reader.set_liveness_interval(Duration::from_secs(3));
    let t = Instant::now();
    let mut next = {
        let f = reader.recv().expect("first frame");
        let seq = f.seq();
        assert!(lossy || seq == 0, "{mode:?}: first frame {seq}");
        assert_eq!(f.missed(), seq);
        assert!(check(seq, f.as_bytes()));
        seq + 1
    };
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{mode:?} {strategy:?}: recv woke after {:?}, not on the commit",
        t.elapsed()
    );
    reader.set_liveness_interval(NO_TICK);
    loop {
        let t = Instant::now();
        match reader.recv_timeout(BOUND) {
            Ok(f) => {
                let seq = f.seq();
                if lossy {
                    assert!(seq >= next, "{seq} after {next}");
                    assert_eq!(f.missed(), seq - next);
                } else {
                    assert_eq!(seq, next, "{mode:?} {strategy:?}");
                }
                assert!(check(seq, f.as_bytes()));
                next = seq + 1;
            }
            Err(RecvTimeoutError::Disconnected) if next == N => break,
            Err(e) => panic!("{mode:?} {strategy:?}: after frame {next}: {e:?} (lost wake-up?)"),
        }
        assert!(
            t.elapsed() < BOUND,
            "{mode:?} {strategy:?}: woke after {:?}",
            t.elapsed()
        );
    }
    child.join_ok();
}

#[test]
fn blocking_recv_wakes_on_commit_by_another_process_semaphore() {
    let s = WaitStrategy::SpinThenBlock {
        spin: Duration::ZERO,
    };
    recv_wakes_on_commit(BLOCK, s);
    recv_wakes_on_commit(Mode::Queue, s);
    recv_wakes_on_commit(Mode::Broadcast(Backpressure::DropOldest), s);
}

#[test]
fn blocking_recv_wakes_on_commit_by_another_process_busy_poll() {
    recv_wakes_on_commit(BLOCK, WaitStrategy::BusyPoll);
    recv_wakes_on_commit(Mode::Queue, WaitStrategy::BusyPoll);
}

/// A lossless writer on a full ring blocks in `reserve` until a reader process releases.
fn reserve_wakes_on_release(mode: Mode, strategy: WaitStrategy) {
    const N: u64 = 100;
    const SLOTS: u64 = 2;
    let name = unique_name("wait-wwake");
    let _g = RingGuard(name.clone());
    let ring = ring(&name, mode, SLOTS as u32);
    let (up, down) = (Pipe::new(), Pipe::new());
    let child = fork_child(|| {
        let ring = Ring::<u8>::open(&name).unwrap();
        let mut r = ring.reader().unwrap();
        up.send(b'A');
        if down.recv(Duration::from_secs(20)) != Some(b'G') {
            return 2;
        }
        // Let the writer fall asleep on the full ring first.
        std::thread::sleep(Duration::from_millis(50));
        let mut next = 0;
        loop {
            match r.recv_timeout(Duration::from_secs(20)) {
                Ok(f) if f.seq() == next && check(next, f.as_bytes()) => next += 1,
                Ok(_) => return 3,
                Err(RecvTimeoutError::Disconnected) => break,
                Err(_) => return 4,
            }
            // Released (the guard dropped); dawdle now and then so the writer sleeps again.
            if next % 7 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        if next == N {
            0
        } else {
            5
        }
    });
    up.expect(b'A');
    let mut w = ring.writer().unwrap();
    w.set_wait_strategy(strategy);
    w.set_liveness_interval(NO_TICK);
    for _ in 0..SLOTS {
        write_frame(&mut w);
    }
    assert!(w.try_reserve().unwrap_err().is_full());
    down.send(b'G');
    let t = Instant::now();
    {
        let mut s = w
            .reserve_timeout(Duration::from_secs(20))
            .expect("reserve after the reader released");
        let seq = s.seq();
        assert_eq!(seq, SLOTS);
        fill(seq, s.as_mut_bytes());
        s.commit();
    }
    assert!(
        t.elapsed() < BOUND,
        "{mode:?} {strategy:?}: woke after {:?}",
        t.elapsed()
    );
    for _ in SLOTS + 1..N {
        let t = Instant::now();
        write_frame(&mut w);
        assert!(t.elapsed() < BOUND);
    }
    drop(w);
    child.join_ok();
}

#[test]
fn lossless_writer_wakes_when_a_reader_process_releases_semaphore() {
    let s = WaitStrategy::SpinThenBlock {
        spin: Duration::ZERO,
    };
    reserve_wakes_on_release(BLOCK, s);
    reserve_wakes_on_release(Mode::Queue, s);
}

#[test]
fn lossless_writer_wakes_when_a_reader_process_releases_busy_poll() {
    reserve_wakes_on_release(BLOCK, WaitStrategy::BusyPoll);
    reserve_wakes_on_release(Mode::Queue, WaitStrategy::BusyPoll);
}

// ----------------------------------------------------------------------------------- doorbell

/// Readiness through the reader's fd (not built with `--cfg shmflow_no_doorbell`).
#[cfg(not(shmflow_no_doorbell))]
mod doorbell {
    use std::io::{BufRead, Read, Write};
    use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
    use std::process::{ChildStdout, Command, Stdio};

    use super::*;

    /// Waits for a reader's fd to become readable: with `poll`, or with an epoll instance it was
    /// registered in.
    enum Readiness {
        Poll(libc::c_int),
        Epoll(OwnedFd),
    }

    impl Readiness {
        fn epoll(fd: libc::c_int) -> Readiness {
            // SAFETY: plain syscall; the result is checked and owned below.
            let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
            assert!(
                ep >= 0,
                "epoll_create1: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: `ep` is a new fd that nothing else owns.
            let ep = unsafe { OwnedFd::from_raw_fd(ep) };
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: 42,
            };
            // SAFETY: valid epoll fd, valid fd to watch, `ev` is a live epoll_event.
            let rc = unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
            assert_eq!(rc, 0, "epoll_ctl: {}", std::io::Error::last_os_error());
            Readiness::Epoll(ep)
        }

        /// True if readable within `timeout`.
        fn wait(&self, timeout: Duration) -> bool {
            match self {
                Readiness::Poll(fd) => wait_readable(*fd, timeout),
                Readiness::Epoll(ep) => {
                    let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 4];
                    loop {
                        // SAFETY: valid epoll fd; `evs` has room for 4 events.
                        let n = unsafe {
                            libc::epoll_wait(
                                ep.as_raw_fd(),
                                evs.as_mut_ptr(),
                                4,
                                timeout.as_millis() as libc::c_int,
                            )
                        };
                        if n < 0
                            && std::io::Error::last_os_error().kind()
                                == std::io::ErrorKind::Interrupted
                        {
                            continue;
                        }
                        assert!(n >= 0, "epoll_wait: {}", std::io::Error::last_os_error());
                        if n == 0 {
                            return false;
                        }
                        let (events, token) = (evs[0].events, evs[0].u64);
                        assert_eq!(n, 1);
                        assert_eq!(token, 42);
                        assert!(events & libc::EPOLLIN as u32 != 0, "events {events:#x}");
                        return true;
                    }
                }
            }
        }
    }

    /// What drives the writer on the other side of a doorbell test.
    trait Remote {
        /// Asks the writer to commit one frame after ~50 ms.
        fn commit_soon(&mut self);
        /// Asks the writer to detach after ~50 ms (and exit).
        fn detach_soon(&mut self);
        fn finish(self);
    }

    /// The doorbell protocol: `try_recv` until `Empty`, wait on the fd, then `try_recv`.
    fn doorbell_round_trips(
        reader: &mut shmflow::Reader<u8>,
        how: &Readiness,
        remote: &mut impl Remote,
    ) {
        // Nothing has happened since the last Empty: not readable.
        assert_eq!(reader.try_recv().unwrap_err(), TryRecvError::Empty);
        assert!(
            !how.wait(Duration::ZERO),
            "readable before anything happened"
        );
        for k in 0..3u64 {
            assert_eq!(reader.try_recv().unwrap_err(), TryRecvError::Empty);
            remote.commit_soon();
            let t = Instant::now();
            assert!(
                how.wait(BOUND),
                "frame {k}: fd not readable after {:?}",
                t.elapsed()
            );
            let f = reader.try_recv().expect("readable means a frame is there");
            assert_eq!(f.seq(), k);
            assert!(check(k, f.as_bytes()));
        }
        // A writer that detaches rings too: the reader learns it is disconnected.
        assert_eq!(reader.try_recv().unwrap_err(), TryRecvError::Empty);
        remote.detach_soon();
        assert!(how.wait(BOUND), "fd not readable after the writer detached");
        assert_eq!(reader.try_recv().unwrap_err(), TryRecvError::Disconnected);
    }

    /// A forked writer driven through a pipe.
    struct Forked<'p> {
        down: &'p Pipe,
        child: Child,
    }

    impl Remote for Forked<'_> {
        fn commit_soon(&mut self) {
            self.down.send(b'C');
        }
        fn detach_soon(&mut self) {
            self.down.send(b'Q');
        }
        fn finish(self) {
            self.child.join_ok();
        }
    }

    /// Runs in the writer: 'C' commits a frame and 'Q' detaches, each after ~50 ms.
    fn obey(mut w: Writer<u8>, mut next: impl FnMut() -> Option<u8>) -> i32 {
        while let Some(c) = next() {
            std::thread::sleep(Duration::from_millis(50));
            match c {
                b'C' => {
                    write_frame(&mut w);
                }
                b'Q' => {
                    drop(w);
                    return 0;
                }
                _ => return 3,
            }
        }
        4
    }

    fn doorbell_with_forked_writer(mode: Mode, epoll: bool) {
        let name = unique_name("wait-bell");
        let _g = RingGuard(name.clone());
        let ring = ring(&name, mode, 4);
        let mut reader = ring.reader().unwrap();
        let how = if epoll {
            Readiness::epoll(raw_fd(&reader))
        } else {
            Readiness::Poll(raw_fd(&reader))
        };
        let (up, down) = (Pipe::new(), Pipe::new());
        let child = fork_child(|| {
            let ring = Ring::<u8>::open(&name).unwrap();
            let w = ring.writer().unwrap();
            up.send(b'A');
            obey(w, || down.recv(Duration::from_secs(20)))
        });
        up.expect(b'A');
        let mut remote = Forked { down: &down, child };
        doorbell_round_trips(&mut reader, &how, &mut remote);
        remote.finish();
    }

    fn raw_fd(reader: &shmflow::Reader<u8>) -> libc::c_int {
        reader.as_fd().as_raw_fd()
    }

    #[test]
    fn doorbell_poll_wakes_on_commit_by_another_process() {
        doorbell_with_forked_writer(BLOCK, false);
        doorbell_with_forked_writer(Mode::Queue, false);
        doorbell_with_forked_writer(Mode::Broadcast(Backpressure::DropOldest), false);
    }

    #[test]
    fn doorbell_epoll_wakes_on_commit_by_another_process() {
        doorbell_with_forked_writer(BLOCK, true);
        doorbell_with_forked_writer(Mode::Queue, true);
    }

    /// A writer that is an unrelated process (the test binary re-executed), driven through its
    /// stdin; it prints a token on stdout once attached.
    struct Reexeced(std::process::Child);

    impl Reexeced {
        fn send(&mut self, line: &str) {
            let stdin = self.0.stdin.as_mut().expect("piped stdin");
            writeln!(stdin, "{line}").unwrap();
            stdin.flush().unwrap();
        }

        fn wait_token(out: &mut ChildStdout, token: &str) {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut buf = Vec::new();
            while !String::from_utf8_lossy(&buf).contains(token) {
                let left = deadline.saturating_duration_since(Instant::now());
                assert!(!left.is_zero(), "child never printed {token:?}");
                if !wait_readable(out.as_raw_fd(), left) {
                    continue;
                }
                let mut chunk = [0u8; 4096];
                let n = out.read(&mut chunk).unwrap();
                assert!(n > 0, "child closed stdout before printing {token:?}");
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }

    impl Remote for Reexeced {
        fn commit_soon(&mut self) {
            self.send("C");
        }
        fn detach_soon(&mut self) {
            self.send("Q");
        }
        fn finish(mut self) {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(s) = self.0.try_wait().unwrap() {
                    assert!(s.success(), "writer process: {s}");
                    return;
                }
                assert!(Instant::now() < deadline, "writer process did not exit");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    impl Drop for Reexeced {
        fn drop(&mut self) {
            // Already exited or killed: errors do not matter here.
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    const ATTACHED: &str = "SHMFLOW-WRITER-ATTACHED";

    #[test]
    fn doorbell_epoll_wakes_on_commit_by_an_unrelated_process() {
        if let Some((role, args)) = role() {
            assert_eq!(role, "bell-writer");
            let ring = Ring::<u8>::open(&args[0]).unwrap();
            let w = ring.writer().unwrap();
            println!("{ATTACHED}");
            std::io::stdout().flush().unwrap();
            let mut lines = std::io::stdin().lock().lines();
            let code = obey(w, || lines.next()?.ok()?.bytes().next());
            assert_eq!(code, 0);
            return;
        }
        let name = unique_name("wait-bell-x");
        let _g = RingGuard(name.clone());
        let ring = ring(&name, Mode::Queue, 4);
        let mut reader = ring.reader().unwrap();
        let how = Readiness::epoll(raw_fd(&reader));
        let mut cmd: Command = reexec(
            "doorbell::doorbell_epoll_wakes_on_commit_by_an_unrelated_process",
            "bell-writer",
            &[&name],
        );
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = Reexeced(cmd.spawn().unwrap());
        Reexeced::wait_token(child.0.stdout.as_mut().unwrap(), ATTACHED);
        doorbell_round_trips(&mut reader, &how, &mut child);
        child.finish();
    }
}

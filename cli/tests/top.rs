//! `shmflow top`: the `--once --json` snapshot on rings and a pool with known activity, and
//! the live view under a pseudo-terminal.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{reexec, role, unique_name, wait_until, RingGuard};
use serde_json::Value;
use shmflow::{Backpressure, Mode, Ring};

/// Generous bound for "does not hang".
const LIMIT: Duration = Duration::from_secs(60);

fn shmflow() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shmflow"))
}

/// `shmflow top --once --json` with `args`, parsed.
fn top_json(args: &[&str]) -> Value {
    let out = shmflow()
        .args(["top", "--once", "--json"])
        .args(args)
        .output()
        .expect("run shmflow top");
    assert!(out.status.success(), "shmflow top failed: {out:?}");
    serde_json::from_slice(&out.stdout).expect("top --json prints JSON")
}

fn ring_of<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["rings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("ring {name} not in {v}"))
}

/// A rate is exactly the difference of the two samples over the interval.
fn assert_rate_means_counters(peer: &Value, counter: &str, interval: f64) {
    let now = peer[counter].as_u64().unwrap();
    let before = peer[format!("{counter}_before")].as_u64().unwrap();
    let rate = peer[format!("{counter}_per_s")].as_f64().unwrap();
    let want = (now - before) as f64 / interval;
    assert!(
        (rate - want).abs() <= 1e-9 * want.max(1.0),
        "{counter}_per_s {rate} is not ({now} - {before}) / {interval}: {peer}"
    );
}

#[test]
fn top_once_json_shows_rates_held_frames_and_a_killed_writer() {
    // An active ring: a writer and a reader in this process, frames flowing until `stop`.
    let busy = unique_name("top-busy");
    let _g1 = RingGuard(busy.clone());
    let ring = Ring::<u8>::create(&busy)
        .shape([64])
        .slots(4)
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut reader = ring.reader().unwrap();
    let writer_thread = {
        let (ring, stop) = (ring.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut w = ring.writer().unwrap();
            while !stop.load(Ordering::Relaxed) {
                match w.reserve_timeout(Duration::from_millis(50)) {
                    Ok(mut s) => {
                        s.as_mut_bytes().fill(7);
                        s.commit();
                    }
                    Err(_) => continue,
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let reader_thread = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = reader.recv_timeout(Duration::from_millis(50));
            }
        })
    };

    // A frame held: a reader of a second ring keeps its guard while top looks.
    let held = unique_name("top-held");
    let _g2 = RingGuard(held.clone());
    let hring = Ring::<u8>::create(&held)
        .shape([16])
        .slots(4)
        .build()
        .unwrap();
    let mut hreader = hring.attach_reader().max_held(2).attach().unwrap();
    let mut hw = hring.writer().unwrap();
    let s = hw.reserve().unwrap();
    s.commit();
    let frame = hreader.recv().unwrap();

    // A writer killed with SIGKILL: `shmflow pub --attach` on a third ring, after 3 frames.
    let killed = unique_name("top-killed");
    let _g3 = RingGuard(killed.clone());
    let kring = Ring::<u8>::create(&killed)
        .shape([16])
        .slots(8)
        .mode(Mode::Broadcast(Backpressure::DropOldest))
        .build()
        .unwrap();
    let mut publisher = shmflow()
        .args(["pub", &killed, "--attach", "--shape", "16"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    publisher
        .stdin
        .as_mut()
        .unwrap()
        .write_all(&[1u8; 48])
        .unwrap();
    wait_until("3 frames from the publisher", LIMIT, || {
        kring.status().write_seq == 3
    });
    let killed_pid = publisher.id();
    publisher.kill().unwrap();
    publisher.wait().unwrap();

    let v = top_json(&["--interval", "0.3"]);
    stop.store(true, Ordering::Relaxed);
    writer_thread.join().unwrap();
    reader_thread.join().unwrap();

    let interval = v["interval_s"].as_f64().unwrap();
    assert!(interval >= 0.3, "{v}");
    let b = ring_of(&v, &busy);
    let (w, r) = (&b["writers"][0], &b["readers"][0]);
    assert_eq!(w["pid"], std::process::id());
    assert_eq!(w["alive"], true);
    assert!(
        w["frames"].as_u64().unwrap() > w["frames_before"].as_u64().unwrap(),
        "the writer committed frames between the samples: {b}"
    );
    assert_rate_means_counters(w, "frames", interval);
    assert_rate_means_counters(r, "frames", interval);
    let (bytes, fps) = (
        w["bytes_per_s"].as_f64().unwrap(),
        w["frames_per_s"].as_f64().unwrap(),
    );
    assert!((bytes - fps * 64.0).abs() <= 1e-9 * bytes, "{w}");
    assert_eq!(b["mode"], "block");
    assert_eq!(b["shape"], serde_json::json!([64]));

    let h = ring_of(&v, &held);
    assert_eq!(h["readers"][0]["held"], 1, "{h}");
    assert_eq!(h["readers"][0]["max_held"], 2, "{h}");
    // A lossless reader's cursor is the oldest frame it holds: the writer cannot reuse it.
    assert_eq!(h["readers"][0]["backlog"], 1, "{h}");

    let k = ring_of(&v, &killed);
    let dead_writer = k["writers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w["pid"] == killed_pid && w["alive"] == false);
    let died = k["writer_died"]["pid"] == killed_pid;
    assert!(
        dead_writer || died,
        "the killed writer is not shown dead: {k}"
    );
    assert_eq!(k["write_seq"], 3);
    drop(frame);
}

#[test]
fn top_attaches_nothing_and_writes_nothing() {
    let name = unique_name("top-still");
    let _g = RingGuard(name.clone());
    let ring = Ring::<u8>::create(&name)
        .shape([8])
        .slots(4)
        .build()
        .unwrap();
    let mut w = ring.writer().unwrap();
    w.reserve().unwrap().commit();
    let mut r = ring.reader().unwrap();
    w.reserve().unwrap().commit();
    let before = shmflow::inspect(&name).unwrap();
    let v = top_json(&["--interval", "0.1", "--filter", &name]);
    assert_eq!(v["rings"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(shmflow::inspect(&name).unwrap(), before);
    // The frame top saw as unread is still there for the reader.
    assert_eq!(ring_of(&v, &name)["readers"][0]["backlog"], 1);
    assert_eq!(r.try_recv().unwrap().seq(), 1);
}

/// Re-executed: builds a pool of 2 workers, has one killed in a task (and replaced), runs 20
/// tasks, then keeps one worker in a long
/// task; says POOL-READY once it runs, and exits cleanly when stdin closes.
fn pool_child() {
    use shmflow::process::{ThreadedFork, WorkerPool};
    let mut builder = WorkerPool::builder().workers(2);
    if shmflow::process::thread_count() > 1 {
        // SAFETY: the only other thread of this re-executed child is the test harness's main
        // thread, parked waiting for this one test to end: it holds no lock while we fork.
        builder = builder.allow_threads(unsafe { ThreadedFork::assume_no_locks_held() });
    }
    let pool = builder
        .build(|_: &mut (), _, ms: u64| {
            if ms == u64::MAX {
                // SAFETY: a signal to this worker process itself: it dies like an OOM kill.
                unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(ms));
            ms
        })
        .unwrap();
    // One worker dies first and is replaced: top must show the restart, kept across it.
    assert!(pool.apply(u64::MAX).is_err(), "the killed task failed");
    assert_eq!(pool.map(vec![0u64; 20]).unwrap().len(), 20);
    // Long enough to outlast top's two samples, short enough to wait for at the end.
    let long = pool.apply_async(5_000);
    // The caller's thread drives the pool: waiting on the result sends the task.
    wait_until("a busy worker", LIMIT, || {
        let _ = long.ready();
        busy_workers(std::process::id()) == 1
    });
    // On a line of its own: the harness has printed "test <name> ... " without a newline.
    println!("\nPOOL-READY");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    assert_eq!(long.get().unwrap(), 5_000);
    // Dropping the pool stops its workers and removes its status block.
    drop(pool);
    std::process::exit(0);
}

fn busy_workers(owner: u32) -> usize {
    shmflow::segments::list()
        .unwrap()
        .iter()
        .filter_map(|s| shmflow::process::PoolSnapshot::read(&s.name).ok())
        .filter(|p| p.owner == owner)
        .flat_map(|p| p.workers)
        .filter(|w| w.busy)
        .count()
}

#[test]
fn top_once_json_shows_a_pool_with_its_workers_tasks_and_busy_time() {
    if role().is_some() {
        return pool_child();
    }
    let mut child = reexec(
        "top_once_json_shows_a_pool_with_its_workers_tasks_and_busy_time",
        "pool",
        &[],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    // Its stdout also carries the test harness's lines: wait for POOL-READY, keep draining.
    let (tx, rx) = std::sync::mpsc::channel();
    let out = BufReader::new(child.stdout.take().unwrap());
    let drainer = std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if line.trim() == "POOL-READY" {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(LIMIT)
        .expect("the pool child never said it was ready");
    let owner = child.id();
    let v = top_json(&["--interval", "0.3"]);
    drop(child.stdin.take());
    let done = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if done.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("the pool child did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(child.wait().unwrap().success(), "the pool child failed");
    drainer.join().unwrap();

    let pool = v["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["owner"] == owner)
        .unwrap_or_else(|| panic!("pool of {owner} not in {v}"));
    assert_eq!(pool["owner_alive"], true);
    let workers = pool["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2, "{pool}");
    let tasks: u64 = workers.iter().map(|w| w["tasks"].as_u64().unwrap()).sum();
    assert_eq!(
        tasks, 20,
        "20 tasks done, the long one still running: {pool}"
    );
    let interval = pool["interval_s"].as_f64().unwrap();
    for w in workers {
        assert_eq!(w["alive"], true, "{w}");
        assert_eq!(w["ready"], true, "{w}");
        assert_rate_means_counters(w, "tasks", interval);
    }
    let restarts: Vec<u64> = workers
        .iter()
        .map(|w| w["restarts"].as_u64().unwrap())
        .collect();
    assert_eq!(
        restarts.iter().sum::<u64>(),
        1,
        "one worker was killed and replaced: {pool}"
    );
    let busy: Vec<&Value> = workers.iter().filter(|w| w["busy"] == true).collect();
    assert_eq!(busy.len(), 1, "{pool}");
    // It slept in its task through the whole interval: busy all of it (the counters' meaning,
    // not a speed; 90 leaves room for the two reads of the clock).
    assert!(busy[0]["busy_percent"].as_f64().unwrap() > 90.0, "{pool}");
    let idle = workers.iter().find(|w| w["busy"] == false).unwrap();
    assert!(idle["busy_percent"].as_f64().unwrap() < 10.0, "{pool}");
}

#[test]
fn top_without_a_terminal_is_a_one_line_error() {
    let out = shmflow().arg("top").stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("shmflow: ") && err.contains("--once"),
        "{err}"
    );
}

#[test]
fn top_once_text_lists_rings_and_peers() {
    let name = unique_name("top-text");
    let _g = RingGuard(name.clone());
    let ring = Ring::<u16>::create(&name)
        .shape([4, 4])
        .slots(3)
        .mode(Mode::Queue)
        .build()
        .unwrap();
    let _r = ring.reader().unwrap();
    let out = shmflow()
        .args(["top", "--once", "--interval", "0.1", "--filter", &name])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{text}");
    assert!(
        lines[1].starts_with(&name) && lines[1].contains("queue"),
        "{text}"
    );
    assert!(lines[1].contains("u16 4,4 3 slots"), "{text}");
    assert!(lines[2].trim_start().starts_with("reader #0"), "{text}");
    assert!(lines[2].contains(&std::process::id().to_string()), "{text}");
}

// ---------------------------------------------------------------- the live view

/// A pseudo-terminal: (master, slave).
fn openpty(rows: u16, cols: u16) -> (OwnedFd, OwnedFd) {
    let (mut m, mut s) = (-1, -1);
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: m and s are out-parameters; the name pointer may be null; termios null means
    // the defaults; ws is a valid winsize.
    let rc = unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), &ws) };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty returned two new descriptors that nothing else owns.
    unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) }
}

fn termios(fd: &OwnedFd) -> libc::termios {
    // SAFETY: an all-zero termios is a valid out-parameter; fd is an open terminal.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) }, 0);
    t
}

/// Reads what is there on `fd` within `wait` (the master side of the pty).
fn drain(fd: &OwnedFd, wait: Duration, into: &mut Vec<u8>) {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&mut p, 1, wait.as_millis() as i32) } <= 0 {
        return;
    }
    let mut buf = [0u8; 65536];
    // SAFETY: buf is writable for its length.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n > 0 {
        into.extend_from_slice(&buf[..n as usize]);
    }
}

/// The text of a terminal stream without its escape sequences.
fn strip_escapes(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let mut out = String::new();
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        match it.next() {
            // CSI: parameters, then one final byte in @..~
            Some('[') => {
                for c in it.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            // OSC: up to BEL
            Some(']') => {
                for c in it.by_ref() {
                    if c == '\u{7}' {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// How a test ends the live view.
enum Quit {
    Key(&'static [u8]),
    Sigterm,
}

#[test]
fn top_live_view_shows_the_ring_and_q_restores_the_terminal() {
    live_view_then(Quit::Key(b"q"), Some(0));
}

#[test]
fn top_live_view_restores_the_terminal_on_ctrl_c_and_on_sigterm() {
    // Raw mode turns Ctrl-C into a key; SIGTERM from outside is caught and ends the loop.
    live_view_then(Quit::Key(b"\x03"), Some(0));
    live_view_then(Quit::Sigterm, Some(130));
}

/// Starts `shmflow top` on a pseudo-terminal, waits for one frame of its screen with a ring's
/// name, quits it with `quit`, and checks the exit code and that the terminal is as before.
fn live_view_then(quit: Quit, code: Option<i32>) {
    let name = unique_name("top-tui");
    let _g = RingGuard(name.clone());
    let _ring = Ring::<u8>::create(&name)
        .shape([32])
        .slots(4)
        .build()
        .unwrap();
    let (master, slave) = openpty(40, 200);
    let original = termios(&slave);
    let mut cmd = shmflow();
    cmd.args(["top", "--interval", "0.2"])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave.try_clone().unwrap());
    // SAFETY: only async-signal-safe calls between fork and exec: a new session whose
    // controlling terminal is the pty (so that /dev/tty is it too).
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn shmflow top");
    let mut screen = Vec::new();
    let start = Instant::now();
    let drawn = |s: &str| s.contains(&name) && s.contains("quit");
    while !drawn(&strip_escapes(&screen)) {
        assert!(
            start.elapsed() < LIMIT,
            "the ring's name never appeared on the screen: {:?}",
            strip_escapes(&screen)
        );
        drain(&master, Duration::from_millis(50), &mut screen);
    }
    let shown = strip_escapes(&screen);
    assert!(shown.contains("shmflow top"), "{shown:?}");
    // Blank cells are skipped by cursor moves, so words run together here.
    assert!(
        shown.contains("quit") && shown.contains("sort"),
        "{shown:?}"
    );
    let raw = termios(&slave);
    assert_ne!(
        raw.c_lflag & libc::ICANON,
        original.c_lflag & libc::ICANON,
        "top did not put the terminal in raw mode: {:o} then {:o}",
        original.c_lflag,
        raw.c_lflag
    );
    match quit {
        Quit::Key(k) => {
            // SAFETY: writing from a live buffer of k.len() bytes to the master.
            let n = unsafe { libc::write(master.as_raw_fd(), k.as_ptr().cast(), k.len()) };
            assert_eq!(n, k.len() as isize);
        }
        Quit::Sigterm => {
            // SAFETY: a signal to our own child, not yet reaped.
            assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
        }
    }
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("top did not quit");
        }
        drain(&master, Duration::from_millis(20), &mut screen);
    };
    drain(&master, Duration::from_millis(50), &mut screen);
    assert_eq!(status.code(), code, "{status:?}");
    let tail = String::from_utf8_lossy(&screen);
    let left = tail
        .rfind("\u{1b}[?1049l")
        .expect("left the alternate screen");
    assert!(
        tail.rfind("\u{1b}[?1049h").unwrap() < left,
        "entered the alternate screen again after leaving it"
    );
    assert!(
        tail.contains("\u{1b}[?25h"),
        "the cursor was not shown again"
    );
    let after = termios(&slave);
    assert_eq!(after.c_lflag, original.c_lflag, "local modes not restored");
    assert_eq!(after.c_iflag, original.c_iflag, "input modes not restored");
    assert_eq!(after.c_oflag, original.c_oflag, "output modes not restored");
}

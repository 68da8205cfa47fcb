//! Regression tests of "Ring protocol v3" (issue 10) that run the `shmflow` command as a peer
//! (it is this crate's binary, so they live here; the rest are in the library's
//! `tests/ring_v3.rs`): a subscriber and a publisher in another pid namespace, `sub` telling a
//! killed publisher from a finished one, `pub --wait-readers` waiting for the attach handshake.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use shmflow::{Backpressure, Mode, RecvTimeoutError, Ring};

const FRAME: usize = 1024;
const LIVENESS: Duration = Duration::from_millis(50);
/// Bound for "does not hang" (a dead peer must be noticed well within this).
const BOUND: Duration = Duration::from_secs(10);
const BLOCK: Mode = Mode::Broadcast(Backpressure::Block);

fn block_ring(name: &str, slots: u32) -> Ring<u8> {
    Ring::<u8>::create(name)
        .shape([FRAME])
        .slots(slots)
        .mode(BLOCK)
        .build()
        .unwrap()
}

fn write_frame(w: &mut shmflow::Writer<u8>) -> u64 {
    let mut s = w.reserve_timeout(BOUND).expect("a free slot");
    let seq = s.seq();
    fill(seq, s.as_mut_bytes());
    s.commit()
}

fn wait_readers(ring: &Ring<u8>, n: usize) {
    let t = Instant::now();
    while ring.status().readers.len() < n {
        assert!(t.elapsed() < BOUND, "{n} reader(s) did not attach");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Opens a ring another process is creating (`open_within` does not wait for a missing name).
fn open_when_created(name: &str) -> Ring<u8> {
    let t = Instant::now();
    loop {
        match Ring::<u8>::open(name) {
            Ok(r) => return r,
            Err(shmflow::OpenError::NotFound { .. }) if t.elapsed() < BOUND => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("{e}"),
        }
    }
}

fn shmflow_bin() -> &'static str {
    env!("CARGO_BIN_EXE_shmflow")
}

// ------------------------------------------------------------------------------- finding 4

fn unshare_works() -> bool {
    Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Finding 4: a subscriber in another pid namespace took the live publisher for dead (its pid
/// means nothing there), reclaimed its entry and ended early. Liveness is now a lock the kernel
/// vouches for in any namespace: the subscriber gets every frame and the writer stays attached.
#[test]
fn finding4_subscriber_in_another_pid_namespace_keeps_the_live_publisher() {
    assert!(
        unshare_works(),
        "this test needs `unshare --pid --fork --mount-proc` (root, util-linux)"
    );
    const N: u64 = 50;
    let name = unique_name("v3-f4-sub");
    let _g = RingGuard(name.clone());
    let ring = block_ring(&name, 4);
    let mut w = ring.writer().unwrap();
    let sub = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(shmflow_bin())
        .args([
            "sub",
            &name,
            "--md5",
            "--count",
            &N.to_string(),
            "--timeout",
            "10",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_readers(&ring, 1);
    // Slow down so the subscriber runs its liveness checks on the writer many times.
    for _ in 0..N {
        write_frame(&mut w);
        std::thread::sleep(Duration::from_millis(2));
    }
    let out = sub.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = String::from_utf8(out.stdout).unwrap();
    let seqs: Vec<u64> = lines
        .lines()
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(seqs, (0..N).collect::<Vec<_>>());
    let st = ring.status();
    assert_eq!(st.writers.len(), 1, "the live writer was reclaimed: {st:?}");
    assert!(st.writers[0].alive);
    assert_eq!(ring.reclaim_dead_peers(), 0);
}

/// Finding 4, the other way round: a publisher in another pid namespace is alive to a reader
/// here while it runs (no `WriterDied`), and dead within the liveness interval once SIGKILLed.
#[test]
fn finding4_publisher_in_another_pid_namespace_is_alive_until_killed() {
    assert!(
        unshare_works(),
        "this test needs `unshare --pid --fork --mount-proc` (root, util-linux)"
    );
    let name = unique_name("v3-f4-pub");
    let _g = RingGuard(name.clone());
    let mut publisher = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(shmflow_bin())
        .args([
            "pub",
            &name,
            "--shape",
            &FRAME.to_string(),
            "--wait-readers",
            "1",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ring = open_when_created(&name);
    let mut r = ring.reader().unwrap();
    r.set_liveness_interval(LIVENESS);
    let mut stdin = publisher.stdin.take().unwrap();
    for seq in 0..3 {
        let mut b = vec![0u8; FRAME];
        fill(seq, &mut b);
        stdin.write_all(&b).unwrap();
    }
    stdin.flush().unwrap();
    for seq in 0..3 {
        let f = r.recv_timeout(BOUND).unwrap();
        assert_eq!(f.seq(), seq);
        assert!(check(seq, f.as_bytes()));
    }
    // Alive in its namespace: many liveness checks find it so.
    assert!(matches!(
        r.recv_timeout(Duration::from_millis(400)),
        Err(RecvTimeoutError::Timeout)
    ));
    let st = ring.status();
    assert!(st.writers.len() == 1 && st.writers[0].alive, "{st:?}");
    assert!(ring.info().creator_alive);
    publisher.kill().unwrap();
    publisher.wait().unwrap();
    match r.recv_timeout(BOUND) {
        Err(RecvTimeoutError::WriterDied { frames, .. }) => assert_eq!(frames, 3),
        other => panic!("{:?}", other.map(|f| f.seq())),
    }
    drop(stdin);
}

// ------------------------------------------------------------------------------- finding 5

/// Finding 5: `shmflow sub` exited 0 without a word whether its publisher finished or was
/// SIGKILLed. A clean end still exits 0; a killed publisher exits 1 and says after which frame.
#[test]
fn finding5_sub_tells_a_killed_publisher_from_a_finished_one() {
    for killed in [false, true] {
        let name = unique_name("v3-f5-sub");
        let _g = RingGuard(name.clone());
        let ring = block_ring(&name, 4);
        let mut sub = Command::new(shmflow_bin())
            .args(["sub", &name, "--md5"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_readers(&ring, 1);
        // The writer is a forked child, so it can be killed.
        let sig = Pipe::new();
        let writer = fork_child(|| {
            let ring = Ring::<u8>::open(&name).unwrap();
            let mut w = ring.writer().unwrap();
            for _ in 0..5 {
                write_frame(&mut w);
            }
            sig.send(b'W');
            if killed {
                sleep_forever();
            }
            0
        });
        sig.expect(b'W');
        let writer_pid = writer.pid;
        if killed {
            kill_and_reap(writer);
        } else {
            writer.join_ok();
        }
        drop(ring);
        let out = wait_output(&mut sub);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stdout.lines().count(), 5, "{stdout}");
        if killed {
            assert_eq!(out.status.code(), Some(1), "{stderr}");
            assert!(
                stderr.contains(&format!("publisher pid {writer_pid} died after frame 4")),
                "{stderr}"
            );
        } else {
            assert!(out.status.success(), "{stderr}");
            assert!(!stderr.contains("died"), "{stderr}");
        }
    }
}

fn wait_output(child: &mut std::process::Child) -> std::process::Output {
    let t = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if t.elapsed() > BOUND * 2 {
            let _ = child.kill();
            panic!("sub did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut out = std::process::Output {
        status: child.wait().unwrap(),
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    use std::io::Read;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut out.stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut out.stderr)
        .unwrap();
    out
}

/// Finding 7: `pub --wait-readers` started when a reader's entry was ACTIVE but before its
/// attach handshake, so a lossless reader could miss the first frames (596 of 600 once). The
/// ring lists a reader only once its cursor is set; `sub` gets every frame from 0, every time.
#[test]
fn finding7_wait_readers_waits_for_the_attach_handshake() {
    const N: usize = 600;
    for round in 0..5 {
        let name = unique_name("v3-f7-wait");
        let _g = RingGuard(name.clone());
        let mut publisher = Command::new(shmflow_bin())
            .args(["pub", &name, "--shape", "64", "--wait-readers", "1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let input = vec![round as u8; 64 * N];
        let mut stdin = publisher.stdin.take().unwrap();
        let feeder = std::thread::spawn(move || stdin.write_all(&input));
        let sub = Command::new(shmflow_bin())
            .args(["sub", &name, "--md5", "--wait", "--timeout", "10"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = sub.wait_with_output().unwrap();
        feeder.join().unwrap().unwrap();
        assert!(publisher.wait().unwrap().success());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let seqs: Vec<usize> = BufReader::new(&out.stdout[..])
            .lines()
            .map(|l| l.unwrap().split(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(seqs, (0..N).collect::<Vec<_>>(), "round {round}");
    }
}

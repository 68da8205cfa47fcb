//! Fork start method tests. `harness = false`: this binary's `main` is single-threaded, which
//! is what `fork` requires (libtest would run each test on a thread of its own).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use shmflow::process::{self, Backend, BoxError, Context, ForkBuilder, ReexecBuilder};
use shmflow::{ExitReason, ProcessError, SpawnError};

#[derive(Serialize, Deserialize)]
struct Node {
    /// Fork a grandchild of this kind when asked.
    depth: u32,
}

#[derive(Serialize, Deserialize, Debug)]
enum Cmd {
    Ping(u64),
    Name,
    SpawnGrandchild,
    Panic,
    /// Reply with [`MARKER`]: set in the parent, seen by a fork, not by a re-exec.
    Marker,
}

/// Set to 42 by the parent before it spawns.
static MARKER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Backend for Node {
    type Request = Cmd;
    type Reply = u64;
    fn run(self, ctx: &mut Context<Cmd, u64>) -> Result<(), BoxError> {
        let mut kids = Vec::new();
        while let Some(cmd) = ctx.recv()? {
            match cmd {
                Cmd::Ping(x) => ctx.reply(&(x + 1))?,
                Cmd::Name => {
                    let comm = std::fs::read_to_string("/proc/self/comm")?;
                    ctx.reply(&(comm.trim().len() as u64))?
                }
                Cmd::SpawnGrandchild => {
                    let k = ForkBuilder::new("grandchild").spawn(Node {
                        depth: self.depth + 1,
                    })?;
                    ctx.reply(&u64::from(k.pid()))?;
                    kids.push(k);
                }
                Cmd::Panic => panic!("node panicked at depth {}", self.depth),
                Cmd::Marker => ctx.reply(&MARKER.load(std::sync::atomic::Ordering::SeqCst))?,
            }
        }
        Ok(())
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s.rsplit(')').next().unwrap_or("").split_whitespace().next();
            !matches!(state, Some("Z") | Some("X"))
        })
        .unwrap_or(false)
}

fn fork_round_trip() {
    let mut p = ForkBuilder::new("forked-node")
        .spawn(Node { depth: 0 })
        .unwrap();
    assert_eq!(p.request(&Cmd::Ping(41)).unwrap(), 42);
    assert_eq!(p.request(&Cmd::Name).unwrap(), "forked-node".len() as u64);
    p.stop(Duration::from_secs(10)).unwrap();
    assert_eq!(p.try_exit(), Some(ExitReason::Exited(0)));
}

fn fork_panic_is_reported() {
    let mut p = ForkBuilder::new("panicky")
        .spawn(Node { depth: 3 })
        .unwrap();
    match p.request(&Cmd::Panic).unwrap_err() {
        ProcessError::Died {
            reason: ExitReason::Panicked { message, location },
            ..
        } => {
            assert_eq!(message, "node panicked at depth 3");
            assert!(location.contains("process_fork.rs"), "{location}");
        }
        other => panic!("{other:?}"),
    }
}

fn killed_parent_takes_its_children_along() {
    let mut mid = ForkBuilder::new("mid").spawn(Node { depth: 0 }).unwrap();
    let grandchild = mid.request(&Cmd::SpawnGrandchild).unwrap() as u32;
    assert!(alive(grandchild));
    mid.kill();
    let _ = mid.join();
    let start = std::time::Instant::now();
    while alive(grandchild) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "grandchild {grandchild} outlived its parent"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn fork_after_threads_is_refused_and_reexec_works() {
    let t = std::thread::spawn(|| std::thread::sleep(Duration::from_millis(500)));
    match ForkBuilder::new("x").spawn(Node { depth: 0 }) {
        Err(SpawnError::Threads { threads }) => assert!(threads >= 2),
        other => panic!(
            "expected SpawnError::Threads, got {:?}",
            other.map(|p| p.pid())
        ),
    }
    let mut p = ReexecBuilder::new("reexeced")
        .spawn(Node { depth: 0 })
        .unwrap();
    assert_eq!(p.request(&Cmd::Ping(1)).unwrap(), 2);
    p.stop(Duration::from_secs(10)).unwrap();
    // Opting in: allowed, the caller accepts the risk.
    // SAFETY: the other thread `t` only sleeps; it holds no lock the child could need.
    let permit = unsafe { shmflow::process::ThreadedFork::assume_no_locks_held() };
    let mut p = ForkBuilder::new("risky")
        .allow_threads(permit)
        .spawn(Node { depth: 0 })
        .unwrap();
    assert_eq!(p.request(&Cmd::Ping(5)).unwrap(), 6);
    p.stop(Duration::from_secs(10)).unwrap();
    t.join().unwrap();
}

/// Issue 11 finding: `ProcessBuilder::start_method(StartMethod::Reexec)` stored a value that
/// nothing read, and `spawn` forked anyway. Fork and re-exec are now distinct builders; each
/// starts what it says: a fork sees the parent's memory, a re-executed program does not.
fn each_builder_starts_what_it_says() {
    MARKER.store(42, std::sync::atomic::Ordering::SeqCst);
    let mut forked = ForkBuilder::new("forked").spawn(Node { depth: 0 }).unwrap();
    assert_eq!(forked.request(&Cmd::Marker).unwrap(), 42);
    forked.stop(Duration::from_secs(10)).unwrap();
    let mut fresh = ReexecBuilder::new("fresh")
        .spawn(Node { depth: 0 })
        .unwrap();
    assert_eq!(
        fresh.request(&Cmd::Marker).unwrap(),
        0,
        "a re-exec child is a new program"
    );
    fresh.stop(Duration::from_secs(10)).unwrap();
    MARKER.store(0, std::sync::atomic::Ordering::SeqCst);
}

fn main() {
    process::init().register::<Node>().run();
    let tests: &[(&str, fn())] = &[
        ("fork_round_trip", fork_round_trip),
        ("fork_panic_is_reported", fork_panic_is_reported),
        (
            "each_builder_starts_what_it_says",
            each_builder_starts_what_it_says,
        ),
        (
            "killed_parent_takes_its_children_along",
            killed_parent_takes_its_children_along,
        ),
        // Last: it starts a thread, after which this process may no longer fork.
        (
            "fork_after_threads_is_refused_and_reexec_works",
            fork_after_threads_is_refused_and_reexec_works,
        ),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, f) in tests {
        // A failing test panics; catch it so the others still run and report.
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(|i| eprintln!("{i}")));
        let ok = std::panic::catch_unwind(f).is_ok();
        std::panic::set_hook(prev);
        println!("test {name} ... {}", if ok { "ok" } else { "FAILED" });
        if ok {
            passed += 1
        } else {
            failed += 1
        }
    }
    println!("\ntest result: {}. {passed} passed; {failed} failed; 0 ignored; 0 measured; 0 filtered out\n", if failed == 0 { "ok" } else { "FAILED" });
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

//! The worker pool, mpire style: `map`, `imap_unordered` and `apply_async`, a progress bar,
//! per-worker state, a task that panics and a task whose worker is killed (both reported with
//! the task's index, the pool goes on), and the per-worker insights.
//!
//! ```text
//! cargo run --release --example pool_map [-- --workers N]
//! ```
//!
//! The progress bar is drawn on stderr, and only when stderr is a terminal (it is hidden when
//! stderr is redirected to a file or a pipe, e.g. `2>log` or `| cat` with `2>&1`).
//!
//! Workers are forked children, started at the first map (this program never starts a thread,
//! as fork requires). They are stopped when the pool is shut down or dropped: nothing is left
//! behind, neither processes nor the pool's status segment in `/dev/shm`.

use std::error::Error;
use std::time::{Duration, Instant};

use shmflow::process::{self, WorkerInfo, WorkerPool};
use shmflow::{PoolError, TaskErrorKind};

/// The input that makes the task panic.
const PANICS: u64 = 6234;
/// The input whose worker is killed with SIGKILL (what the OOM killer does).
const KILLED: u64 = 5777;

/// A task with a little work in it: the sum of the decimal digits of `x²`, after a short
/// sleep so that the progress bar has something to show.
fn work(x: u64) -> u64 {
    std::thread::sleep(Duration::from_micros(500));
    digit_sum(x * x)
}

/// The sum of the decimal digits of `n` (to check the results).
fn digit_sum(mut n: u64) -> u64 {
    let mut s = 0;
    while n > 0 {
        s += n % 10;
        n /= 10;
    }
    s
}

/// What [`work`] returns, without the sleep.
fn expected(x: u64) -> u64 {
    digit_sum(x * x)
}

fn workers_arg() -> Result<usize, Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let mut workers = 2;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--workers" => {
                workers = args.next().ok_or("--workers needs a value")?.parse()?;
            }
            other => {
                return Err(format!("unknown argument {other:?} (usage: [--workers N])").into())
            }
        }
    }
    Ok(workers)
}

fn main() -> Result<(), Box<dyn Error>> {
    let workers = workers_arg()?;
    assert_eq!(process::thread_count(), 1, "fork first, then threads");

    let pool = WorkerPool::builder()
        .workers(workers)
        .progress_bar(true)
        // Per-worker state: the number of tasks this worker process ran.
        .worker_init(|_w: &WorkerInfo| 0u64)
        .worker_exit(|w: &WorkerInfo, tasks: u64| (w.id, tasks))
        .build(|tasks: &mut u64, _w, x: u64| {
            *tasks += 1;
            if x == PANICS {
                panic!("task {x} does not like its input");
            }
            if x == KILLED {
                // Kill our own process with SIGKILL, as the OOM killer would.
                let _ = std::process::Command::new("kill")
                    .args(["-9", &std::process::id().to_string()])
                    .status();
                std::thread::sleep(Duration::from_secs(10)); // never reached
            }
            work(x)
        })?;
    println!(
        "pool of {workers} forked workers (progress bars on stderr, shown only when stderr is a \
         terminal)"
    );

    // ---------------------------------------------------------------- map
    let t = Instant::now();
    let out = pool.map(0..4000u64)?;
    assert_eq!(out, (0..4000).map(expected).collect::<Vec<_>>());
    println!(
        "map(0..4000): {} results in input order in {:.2?} (pids {:?})",
        out.len(),
        t.elapsed(),
        pool.pids()
    );

    // ---------------------------------------------------------------- imap_unordered
    let t = Instant::now();
    let mut order = Vec::new();
    for r in pool.imap_unordered(0..1000u64) {
        let (i, v) = r?;
        assert_eq!(v, expected(i));
        order.push(i);
    }
    let in_order = order.windows(2).filter(|w| w[0] < w[1]).count();
    println!(
        "imap_unordered(0..1000): {} results in completion order in {:.2?}; first ten indices \
         {:?}; {in_order} of 999 neighbours in increasing order",
        order.len(),
        t.elapsed(),
        &order[..10]
    );

    // ---------------------------------------------------------------- apply_async
    let t = Instant::now();
    let handles: Vec<_> = (10..20u64).map(|x| pool.apply_async(x)).collect();
    let got: Vec<u64> = handles
        .into_iter()
        .map(|h| h.get())
        .collect::<Result<_, _>>()?;
    assert_eq!(got, (10..20).map(expected).collect::<Vec<_>>());
    println!(
        "apply_async(10..20), submitted together then awaited: {got:?} in {:.2?}",
        t.elapsed()
    );
    let t = Instant::now();
    let one = pool.apply(99)?;
    println!("apply(99) = {one} in {:.1?}", t.elapsed());

    // ---------------------------------------------------------------- failures
    println!();
    println!("tasks {PANICS} (panics) and {KILLED} (its worker is SIGKILLed) in map(5000..7000):");
    let t = Instant::now();
    match pool.map(5000..7000u64) {
        Err(PoolError::Task(e)) => println!("  map returns the first failed task: {e}"),
        other => {
            return Err(format!("expected a task error, got {:?}", other.map(|v| v.len())).into())
        }
    }
    println!("  (after every task of the map ran: {:.2?})", t.elapsed());
    // imap yields every result: the two failures, and the other 1998 outputs.
    let mut ok = 0;
    for (i, r) in pool.imap(5000..7000u64).enumerate() {
        match r {
            Ok(v) => {
                assert_eq!(v, expected(5000 + i as u64));
                ok += 1;
            }
            Err(PoolError::Task(e)) => {
                let what = match &e.kind {
                    TaskErrorKind::Panicked { .. } => "a panic",
                    TaskErrorKind::WorkerDied { .. } => "a dead worker",
                    TaskErrorKind::TimedOut { .. } => "a timeout",
                };
                println!("  imap item {i} (input {}): {what}: {e}", 5000 + i);
                println!("    {e:?}");
            }
            Err(e) => return Err(e.into()),
        }
    }
    println!("  imap: {ok} tasks succeeded; the dead worker was replaced and the pool went on");
    let after = pool.map(0..100u64)?;
    assert_eq!(after, (0..100).map(expected).collect::<Vec<_>>());
    println!(
        "  map(0..100) afterwards: ok ({} results, pids now {:?})",
        after.len(),
        pool.pids()
    );

    // ---------------------------------------------------------------- insights
    println!();
    println!("insights (tasks = tasks of the worker's current process):");
    println!(
        "  {:>6} {:>8} {:>7} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "worker", "pid", "tasks", "restarts", "init", "working", "waiting", "exit"
    );
    for i in pool.insights() {
        println!(
            "  {:>6} {:>8} {:>7} {:>8} {:>10.2?} {:>10.2?} {:>10.2?} {:>10.2?}",
            i.id, i.pid, i.tasks, i.restarts, i.init, i.working, i.waiting, i.exit
        );
    }
    let mut exits = pool.shutdown();
    exits.sort_unstable();
    println!(
        "shutdown: worker_exit values (worker id, tasks run by that process): {exits:?}; the \
         killed process never ran worker_exit"
    );
    Ok(())
}

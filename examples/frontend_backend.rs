//! The frontend/backend pattern: a child process runs a [`Backend`]; this process (the
//! frontend) holds its [`Process`](shmflow::process::Process) handle and talks to it over a
//! typed control channel: requests and replies are plain Rust enums (serialised with postcard
//! over a socketpair).
//!
//! ```text
//! cargo run --release --example frontend_backend
//! ```
//!
//! It shows
//!
//! - a few ping/pong round trips, timed (the median of 1,000 is printed too);
//! - a request whose reply is computed by the child (its pid, its name as `ps` shows it);
//! - a clean `stop()`: the child's `Context::recv` returns `None`, its `run` returns `Ok`, and
//!   the exit reason is `exited with code 0`;
//! - a crash: a second child is asked to do something that panics; the pending request fails
//!   with `ProcessError::Died` whose `ExitReason::Panicked` carries the panic message and its
//!   `file:line:column` (the child also prints the panic on its stderr).
//!
//! The children are forked (the default start method), which is allowed because this program
//! never starts a thread. Children get `PR_SET_PDEATHSIG`, and a `Process` handle that is
//! dropped kills and reaps its child: nothing is left behind.

use std::error::Error;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shmflow::process::{self, Backend, BoxError, Context, ForkBuilder};
use shmflow::{ExitReason, ProcessError};

/// What the frontend asks.
#[derive(Debug, Serialize, Deserialize)]
enum Request {
    /// Answer with `Pong(n + 1)`.
    Ping(u64),
    /// Answer with the child's pid and process name.
    WhoAreYou,
    /// Sum the numbers (an example of a request carrying data).
    Sum(Vec<u64>),
    /// Divide 100 by the number: 0 makes the child panic.
    Divide(u64),
}

/// What the backend answers.
#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Pong(u64),
    Me { pid: u32, name: String },
    Sum(u64),
    Quotient(u64),
}

/// The backend: serves requests until the frontend asks it to stop.
struct PingPong;

impl Backend for PingPong {
    type Request = Request;
    type Reply = Reply;

    fn run(self, ctx: &mut Context<Request, Reply>) -> Result<(), BoxError> {
        // `recv` returns `None` once the frontend called `stop()` (or went away).
        while let Some(req) = ctx.recv()? {
            let reply = match req {
                Request::Ping(n) => Reply::Pong(n + 1),
                Request::WhoAreYou => Reply::Me {
                    pid: std::process::id(),
                    name: std::fs::read_to_string("/proc/self/comm")?
                        .trim()
                        .to_owned(),
                },
                Request::Sum(v) => Reply::Sum(v.iter().sum()),
                Request::Divide(d) => {
                    let hundred = std::hint::black_box(100u64);
                    if d == 0 {
                        panic!("asked to divide {hundred} by zero");
                    }
                    Reply::Quotient(hundred / d)
                }
            };
            ctx.reply(&reply)?;
        }
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    assert_eq!(
        process::thread_count(),
        1,
        "fork first, then threads: this example forks, so it starts no thread"
    );

    // ---------------------------------------------------------------- round trips
    let t = Instant::now();
    let mut backend = ForkBuilder::new("pingpong").spawn(PingPong)?;
    println!(
        "started backend {:?} (pid {}) in {:.2?}",
        backend.name(),
        backend.pid(),
        t.elapsed()
    );

    for n in [1u64, 10, 100] {
        let t = Instant::now();
        let reply = backend.request(&Request::Ping(n))?;
        println!("  Ping({n}) -> {reply:?} in {:.1?}", t.elapsed());
    }
    let mut rtts: Vec<Duration> = (0..1000u64)
        .map(|n| {
            let t = Instant::now();
            let reply = backend.request(&Request::Ping(n));
            let rtt = t.elapsed();
            assert!(matches!(reply, Ok(Reply::Pong(m)) if m == n + 1));
            rtt
        })
        .collect();
    rtts.sort_unstable();
    println!(
        "  1000 more pings: median round trip {:.1?} (min {:.1?}, max {:.1?})",
        rtts[rtts.len() / 2],
        rtts[0],
        rtts[rtts.len() - 1]
    );

    let me = backend.request(&Request::WhoAreYou)?;
    println!("  WhoAreYou -> {me:?}");
    let sum = backend.request(&Request::Sum((1..=1000).collect()))?;
    println!("  Sum(1..=1000) -> {sum:?}");
    let q = backend.request(&Request::Divide(7))?;
    println!("  Divide(7) -> {q:?}");

    // ---------------------------------------------------------------- clean stop
    let t = Instant::now();
    backend.stop(Duration::from_secs(5))?;
    println!(
        "stopped cleanly in {:.2?}: {}",
        t.elapsed(),
        backend.try_exit().expect("stopped, so it has exited")
    );

    // ---------------------------------------------------------------- a crash
    println!();
    let mut fragile = ForkBuilder::new("fragile").spawn(PingPong)?;
    println!(
        "started backend {:?} (pid {}); asking it to divide by zero (the child's panic message \
         follows on stderr)",
        fragile.name(),
        fragile.pid()
    );
    match fragile.request(&Request::Divide(0)) {
        Err(ProcessError::Died {
            name,
            pid,
            reason: reason @ ExitReason::Panicked { .. },
        }) => {
            if let ExitReason::Panicked { message, location } = &reason {
                println!("  the request failed: ProcessError::Died {{ name: {name:?}, pid: {pid}, reason: ExitReason::Panicked {{ message: {message:?}, location: {location:?} }} }}");
            }
            let err = ProcessError::Died { name, pid, reason };
            println!("  as an error message: {err}");
        }
        other => return Err(format!("expected a panicked child, got {other:?}").into()),
    }
    // The handle keeps the reason; sending more fails the same way.
    match fragile.request(&Request::Ping(1)) {
        Err(e @ ProcessError::Died { .. }) => println!("  a later request: {e}"),
        other => return Err(format!("expected ProcessError::Died, got {other:?}").into()),
    }
    println!("done");
    Ok(())
}

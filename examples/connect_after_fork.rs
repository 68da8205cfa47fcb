//! "Connect after fork": each pool worker opens its own connection in `worker_init`, uses it
//! for every task, and closes it in `worker_exit`.
//!
//! ```text
//! cargo run --release --example connect_after_fork [-- --workers N] [--tasks N]
//! ```
//!
//! A connection (a socket, a database client, a GPU context) must not be made before the fork
//! and shared by the workers: they would all read and write the same socket, interleaving
//! their requests and stealing each other's answers. The pool's `worker_init` hook runs in each
//! worker after the fork, so every worker gets a connection of its own; its value is the
//! worker's state, passed to every task; `worker_exit` receives it back when the worker stops.
//!
//! The server here is itself a child process: a [`Backend`] that listens on `127.0.0.1:0`
//! (the kernel picks the port, reported to this process in the first reply), answers each line
//! it receives with the line in upper case, and counts the connections it accepted and the ones
//! that were closed. The example checks that the server saw exactly one connection per worker,
//! that each was closed by `worker_exit`, and that the per-worker request counts returned by
//! `worker_exit` add up to the number of tasks.
//!
//! Every process is forked, and forks happen while this process has a single thread (the
//! server's threads live in the server's process). Nothing is left behind: the pool and the
//! server are stopped, and a `Process` handle kills and reaps its child if it is dropped early.

use std::error::Error;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shmflow::process::{self, Backend, BoxError, Context, ForkBuilder, WorkerInfo, WorkerPool};

/// Requests to the server process.
#[derive(Debug, Serialize, Deserialize)]
enum ServerRequest {
    /// How many connections were accepted and closed, and how many lines answered.
    Stats,
}

/// Replies of the server process.
#[derive(Debug, Serialize, Deserialize)]
enum ServerReply {
    /// Sent once, unasked, after the listener is bound.
    Listening { port: u16 },
    Stats {
        accepted: u64,
        closed: u64,
        lines: u64,
    },
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    closed: AtomicU64,
    lines: AtomicU64,
}

/// The upper-casing line server. It runs in a child process and may start threads there (one
/// per connection): only the process that forks must be single-threaded.
struct UpperServer;

impl Backend for UpperServer {
    type Request = ServerRequest;
    type Reply = ServerReply;

    fn run(self, ctx: &mut Context<ServerRequest, ServerReply>) -> Result<(), BoxError> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let port = listener.local_addr()?.port();
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                c.accepted.fetch_add(1, Ordering::SeqCst);
                let c = c.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &c);
                    c.closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        ctx.reply(&ServerReply::Listening { port })?;
        while let Some(req) = ctx.recv()? {
            match req {
                ServerRequest::Stats => ctx.reply(&ServerReply::Stats {
                    accepted: counters.accepted.load(Ordering::SeqCst),
                    closed: counters.closed.load(Ordering::SeqCst),
                    lines: counters.lines.load(Ordering::SeqCst),
                })?,
            }
        }
        // Returning ends the process, and with it the listener and the connection threads.
        Ok(())
    }
}

/// Answers every line of one connection with its upper case, until the peer closes it.
fn serve(conn: TcpStream, c: &Counters) -> std::io::Result<()> {
    let mut out = conn.try_clone()?;
    let mut lines = BufReader::new(conn);
    let mut line = String::new();
    while lines.read_line(&mut line)? > 0 {
        out.write_all(line.to_uppercase().as_bytes())?;
        c.lines.fetch_add(1, Ordering::SeqCst);
        line.clear();
    }
    Ok(())
}

/// A worker's state: its own connection to the server, and how many requests it made on it.
struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    requests: u64,
}

impl Connection {
    fn open(port: u16, w: &WorkerInfo) -> Connection {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("worker {} cannot connect to port {port}: {e}", w.id));
        stream.set_nodelay(true).expect("TCP_NODELAY");
        Connection {
            writer: stream.try_clone().expect("clone the stream"),
            reader: BufReader::new(stream),
            requests: 0,
        }
    }

    /// Sends one line, returns the answer (without the newline).
    fn ask(&mut self, line: &str) -> std::io::Result<String> {
        self.writer.write_all(format!("{line}\n").as_bytes())?;
        let mut answer = String::new();
        self.reader.read_line(&mut answer)?;
        self.requests += 1;
        Ok(answer.trim_end().to_owned())
    }
}

fn args() -> Result<(usize, u64), Box<dyn Error>> {
    let (mut workers, mut tasks) = (3usize, 1000u64);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--workers" => workers = value()?.parse()?,
            "--tasks" => tasks = value()?.parse()?,
            other => {
                return Err(format!(
                    "unknown argument {other:?} (usage: [--workers N] [--tasks N])"
                )
                .into())
            }
        }
    }
    Ok((workers.max(1), tasks))
}

fn main() -> Result<(), Box<dyn Error>> {
    let (workers, tasks) = args()?;
    assert_eq!(process::thread_count(), 1, "fork first, then threads");

    // The server: a forked child; its first reply says which port it listens on.
    let mut server = ForkBuilder::new("upper-server").spawn(UpperServer)?;
    let port = match server.recv_timeout(Duration::from_secs(5))? {
        ServerReply::Listening { port } => port,
        other => return Err(format!("unexpected first reply {other:?}").into()),
    };
    println!(
        "server process {} listens on 127.0.0.1:{port}",
        server.pid()
    );

    // The pool: each worker connects in worker_init (after the fork), uses its connection for
    // every task, and closes it in worker_exit, returning how many requests it made.
    let pool = WorkerPool::builder()
        .workers(workers)
        .worker_init(move |w: &WorkerInfo| Connection::open(port, w))
        .worker_exit(|w: &WorkerInfo, conn: Connection| {
            let served = conn.requests;
            drop(conn); // closes the socket: the server sees EOF
            (w.id, served)
        })
        .build(|conn: &mut Connection, w, x: u64| {
            let answer = conn
                .ask(&format!("task {x} from worker {}", w.id))
                .unwrap_or_else(|e| panic!("request {x}: {e}"));
            assert_eq!(answer, format!("TASK {x} FROM WORKER {}", w.id));
            (w.id, answer.len())
        })?;

    let t = Instant::now();
    let out = pool.map(0..tasks)?;
    let elapsed = t.elapsed();
    let mut per_worker = vec![0u64; workers];
    for (w, _) in &out {
        per_worker[*w] += 1;
    }
    println!(
        "{tasks} tasks, each a request/answer on its worker's own connection, in {elapsed:.2?} \
         ({:.1} µs per task); tasks per worker in the results: {per_worker:?}",
        elapsed.as_secs_f64() * 1e6 / tasks as f64
    );

    let stats = |server: &mut shmflow::process::Process<ServerRequest, ServerReply>| match server
        .request(&ServerRequest::Stats)
    {
        Ok(ServerReply::Stats {
            accepted,
            closed,
            lines,
        }) => Ok((accepted, closed, lines)),
        Ok(other) => Err(format!("unexpected reply {other:?}")),
        Err(e) => Err(e.to_string()),
    };
    let (accepted, closed, lines) = stats(&mut server)?;
    println!("server while the pool runs: {accepted} connections accepted, {closed} closed, {lines} lines answered");

    let mut exits = pool.shutdown();
    exits.sort_unstable();
    println!(
        "pool shut down; worker_exit values (worker id, requests on its connection): {exits:?}"
    );
    let served: u64 = exits.iter().map(|(_, n)| n).sum();

    // The connections were closed by worker_exit; the server notices the EOFs on its threads.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (accepted, closed, lines) = loop {
        let s = stats(&mut server)?;
        if s.1 >= s.0 || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    println!("server after shutdown: {accepted} connections accepted, {closed} closed, {lines} lines answered");
    server.stop(Duration::from_secs(5))?;

    let mut ok = true;
    let mut check = |what: String, good: bool| {
        println!("  {} {what}", if good { "ok  " } else { "FAIL" });
        ok &= good;
    };
    check(
        format!("the server saw exactly {workers} connections (one per worker): {accepted}"),
        accepted == workers as u64,
    );
    check(
        format!("all of them were closed by worker_exit: {closed}"),
        closed == accepted,
    );
    check(
        format!("one exit value per worker: {}", exits.len()),
        exits.len() == workers,
    );
    check(
        format!("requests counted by the workers add up to the tasks: {served} = {tasks}"),
        served == tasks && lines == tasks,
    );
    check(
        "each worker's count matches the tasks it returned".to_owned(),
        exits.iter().all(|(w, n)| per_worker[*w] == *n),
    );
    if !ok {
        return Err("some checks failed".into());
    }
    Ok(())
}

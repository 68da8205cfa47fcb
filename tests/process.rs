//! Processes: fork and re-exec, replies, exit reasons, threads refusal, names, pinning, logs.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shmflow::process::{self, Backend, BoxError, Context, ForkBuilder, ReexecBuilder};
use shmflow::{ExitReason, ProcessError, SpawnError};

#[derive(Serialize, Deserialize)]
struct Echo {
    prefix: String,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum Cmd {
    Echo(String),
    Name,
    Cpus,
    Log(String),
    Panic,
    Fail,
    Exit(i32),
    Hang,
}

impl Backend for Echo {
    type Request = Cmd;
    type Reply = String;
    fn run(self, ctx: &mut Context<Cmd, String>) -> Result<(), BoxError> {
        while let Some(cmd) = ctx.recv()? {
            match cmd {
                Cmd::Echo(s) => ctx.reply(&format!("{}{s}", self.prefix))?,
                Cmd::Name => ctx.reply(
                    &std::fs::read_to_string("/proc/self/comm")?
                        .trim()
                        .to_owned(),
                )?,
                Cmd::Cpus => {
                    let status = std::fs::read_to_string("/proc/self/status")?;
                    let line = status
                        .lines()
                        .find(|l| l.starts_with("Cpus_allowed_list"))
                        .unwrap_or("")
                        .to_owned();
                    ctx.reply(&line)?
                }
                Cmd::Log(s) => {
                    log::warn!("{s}");
                    ctx.reply(&"logged".to_owned())?
                }
                Cmd::Panic => panic!("backend asked to panic"),
                Cmd::Fail => return Err("backend failed on purpose".into()),
                Cmd::Exit(c) => std::process::exit(c),
                Cmd::Hang => std::thread::sleep(Duration::from_secs(3600)),
            }
        }
        Ok(())
    }
}

fn echo() -> Echo {
    Echo {
        prefix: "> ".into(),
    }
}

/// Spawns by re-exec: libtest runs tests on threads, so fork is refused here (fork-based
/// tests live in `tests/process_fork.rs`, which has its own single-threaded `main`).
fn spawn(name: &str) -> process::Process<Cmd, String> {
    ReexecBuilder::new(name)
        .args(["reexec_entry", "--exact", "--nocapture"])
        .spawn(echo())
        .expect("spawn")
}

/// The entry point a re-executed child runs: dispatches and exits; a no-op in normal runs.
#[test]
fn reexec_entry() {
    process::init().register::<Echo>().run();
}

#[test]
fn reexec_request_reply_and_stop() {
    let mut p = spawn("shmflow-echo");
    assert_eq!(p.request(&Cmd::Echo("hi".into())).unwrap(), "> hi");
    assert_eq!(p.request(&Cmd::Name).unwrap(), "shmflow-echo");
    p.stop(Duration::from_secs(10)).unwrap();
    assert_eq!(p.try_exit(), Some(ExitReason::Exited(0)));
}

#[test]
fn reexec_works_from_a_threaded_parent() {
    let _t: Vec<_> = (0..3)
        .map(|_| std::thread::spawn(|| std::thread::sleep(Duration::from_millis(500))))
        .collect();
    assert!(process::thread_count() > 1);
    let mut p = spawn("threaded");
    assert_eq!(p.request(&Cmd::Echo("x".into())).unwrap(), "> x");
    p.stop(Duration::from_secs(10)).unwrap();
}

#[test]
fn fork_is_refused_after_threads() {
    let _t = std::thread::spawn(|| std::thread::sleep(Duration::from_millis(300)));
    match ForkBuilder::new("nope").spawn(echo()) {
        Err(SpawnError::Threads { threads }) => assert!(threads > 1),
        other => panic!(
            "expected SpawnError::Threads, got {:?}",
            other.map(|p| p.pid())
        ),
    }
}

fn died(e: ProcessError) -> ExitReason {
    match e {
        ProcessError::Died { reason, .. } => reason,
        other => panic!("expected Died, got {other:?}"),
    }
}

#[test]
fn panic_is_reported_with_message_and_location() {
    let mut p = spawn("panicker");
    let r = died(p.request(&Cmd::Panic).unwrap_err());
    match r {
        ExitReason::Panicked { message, location } => {
            assert_eq!(message, "backend asked to panic");
            assert!(location.contains("tests/process.rs"), "{location}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn run_error_exit_code_and_signal_are_reported() {
    let mut p = spawn("failer");
    assert_eq!(
        died(p.request(&Cmd::Fail).unwrap_err()),
        ExitReason::Failed {
            message: "backend failed on purpose".into()
        }
    );
    let mut p = spawn("exiter");
    assert_eq!(
        died(p.request(&Cmd::Exit(7)).unwrap_err()),
        ExitReason::Exited(7)
    );
    let mut p = spawn("killed");
    p.send(&Cmd::Hang).unwrap();
    p.signal(9).unwrap();
    match died(p.recv().unwrap_err()) {
        ExitReason::Signaled { signal, name } => {
            assert_eq!(signal, 9);
            assert_eq!(name, "SIGKILL");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn stop_kills_a_hung_child_after_the_grace_period() {
    let mut p = spawn("hung");
    p.send(&Cmd::Hang).unwrap();
    let t = Instant::now();
    let r = p.stop(Duration::from_millis(300));
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(matches!(
        r,
        Err(ProcessError::Died {
            reason: ExitReason::Signaled { .. },
            ..
        })
    ));
}

#[test]
fn recv_timeout_returns() {
    let mut p = spawn("slow");
    p.send(&Cmd::Hang).unwrap();
    let t = Instant::now();
    assert!(matches!(
        p.recv_timeout(Duration::from_millis(100)),
        Err(ProcessError::Timeout { .. })
    ));
    assert!(t.elapsed() >= Duration::from_millis(100) && t.elapsed() < Duration::from_secs(5));
}

#[test]
fn pinning_applies_to_the_child() {
    let mut p = ReexecBuilder::new("pinned")
        .cpus([0])
        .args(["reexec_entry", "--exact", "--nocapture"])
        .spawn(echo())
        .unwrap();
    assert_eq!(
        p.request(&Cmd::Cpus).unwrap().split_whitespace().last(),
        Some("0")
    );
    p.stop(Duration::from_secs(10)).unwrap();
    assert!(matches!(
        ReexecBuilder::new("bad").cpus([100_000]).spawn(echo()),
        Err(SpawnError::BadCpus { .. })
    ));
}

struct Capture(std::sync::Mutex<Vec<String>>);
impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        self.0.lock().unwrap().push(format!("{}", r.args()));
    }
    fn flush(&self) {}
}
static CAPTURE: Capture = Capture(std::sync::Mutex::new(Vec::new()));

#[test]
fn child_logs_reach_the_parent_logger_tagged() {
    let _ = log::set_logger(&CAPTURE);
    log::set_max_level(log::LevelFilter::Info);
    let mut p = spawn("logger-w1");
    assert_eq!(
        p.request(&Cmd::Log("hello from the child".into())).unwrap(),
        "logged"
    );
    p.stop(Duration::from_secs(10)).unwrap();
    let lines = CAPTURE.0.lock().unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l == "[logger-w1] hello from the child"),
        "{lines:?}"
    );
}

#[test]
fn wait_any_sees_the_process_that_replied() {
    let mut a = spawn("a");
    let mut b = spawn("b");
    b.send(&Cmd::Echo("b".into())).unwrap();
    a.send(&Cmd::Hang).unwrap();
    let ready = process::wait_any(&[&a, &b], Some(Duration::from_secs(10))).unwrap();
    assert_eq!(ready, vec![1]);
    assert_eq!(b.recv().unwrap(), "> b");
    a.kill();
    b.stop(Duration::from_secs(5)).unwrap();
}

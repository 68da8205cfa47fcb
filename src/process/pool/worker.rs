//! The worker side: the backend every worker process runs (init, chunks of tasks with
//! their panics caught, exit) and its registration for re-executed pools.

use std::sync::Arc;
use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::status::{st, Status, STATUS_WORDS};
use super::task::{Task, WorkerInfo};
use crate::process::spawn::{Backend, BoxError, Context};
use crate::process::wire::{Failure, PoolCmd, WorkerMsg};
use crate::shm::Counters;
use crate::sys;

// ---------------------------------------------------------------- the worker side

/// The backend every worker process runs.
#[derive(Serialize, Deserialize)]
pub(crate) struct Worker<T> {
    pub(crate) task: Arc<T>,
    pub(crate) info: WorkerInfo,
    pub(crate) lifespan: Option<u64>,
    pub(crate) timed: bool,
    pub(crate) status: String,
    pub(crate) slots: usize,
    #[serde(skip)]
    pub(crate) inherited: Option<Arc<Counters>>,
}

thread_local! {
    static LAST_PANIC: std::cell::RefCell<Option<(String, String)>> =
        const { std::cell::RefCell::new(None) };
    static IN_TASK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Inside a task, a panic is recorded for the task's error; anywhere else (init, exit) it goes
/// to the process-level hook, which reports it to the parent as the worker's exit reason.
pub(crate) fn capture_panics() {
    let outer = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !IN_TASK.with(|t| t.get()) {
            return outer(info);
        }
        let (message, location) = crate::process::wire::panic_text(info);
        LAST_PANIC.with(|p| *p.borrow_mut() = Some((message, location)));
    }));
}

impl<T> Backend for Worker<T>
where
    T: Task,
{
    type Request = PoolCmd<T::Input>;
    type Reply = WorkerMsg<T::Output, T::ExitValue>;

    fn run(self, ctx: &mut Context<Self::Request, Self::Reply>) -> Result<(), BoxError> {
        let counters = match self.inherited.clone() {
            Some(c) => c,
            None => Arc::new(Counters::open(&self.status, self.slots * STATUS_WORDS)?),
        };
        let s = Status {
            c: &counters,
            base: self.info.id * STATUS_WORDS,
        };
        let now = Instant::now;
        let ns = |t: Instant| t.elapsed().as_nanos() as u64;
        s.set(st::PID, u64::from(sys::getpid()));
        capture_panics();
        let t = now();
        let mut state = match self.task.init(&self.info) {
            Ok(state) => state,
            Err(e) => {
                // Told apart from a crash in init, which is retried: see `worker_died`.
                s.set(st::READY, st::INIT_FAILED);
                return Err(e);
            }
        };
        s.set(st::NS_INIT, ns(t));
        s.set(st::READY, 1);
        let mut done = 0u64;
        loop {
            let t = now();
            let cmd = ctx.recv()?;
            s.add(st::NS_WAITING, ns(t));
            let Some(PoolCmd::Chunk { job, first, items }) = cmd else {
                break;
            };
            let t = now();
            let n = items.len() as u64;
            s.set(st::JOB, job);
            s.set(st::CHUNK_STARTED, sys::monotonic_ns());
            let mut outputs = Vec::with_capacity(items.len());
            let mut failures = Vec::new();
            let mut items = items.into_iter().enumerate();
            // One catch_unwind per chunk, re-entered after a panic, so the common case costs
            // nothing per task.
            IN_TASK.with(|t| t.set(true));
            loop {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    for (k, item) in items.by_ref() {
                        s.set(st::CURRENT, first + k as u64 + 1);
                        if self.timed {
                            s.set(st::STARTED, sys::monotonic_ns());
                        }
                        outputs.push(self.task.call(&mut state, &self.info, item));
                    }
                }));
                if r.is_ok() {
                    break;
                }
                let (message, location) = LAST_PANIC
                    .with(|p| p.borrow_mut().take())
                    .unwrap_or_else(|| ("panic".into(), String::new()));
                failures.push(Failure {
                    offset: s.get(st::CURRENT) - 1 - first,
                    message,
                    location,
                });
            }
            IN_TASK.with(|t| t.set(false));
            s.set(st::CURRENT, 0);
            // Cleared first: a reader in between counts the chunk short, never twice.
            s.set(st::CHUNK_STARTED, 0);
            s.add(st::NS_WORKING, ns(t));
            s.add(st::TASKS, n);
            done += n;
            ctx.reply(&WorkerMsg::Results {
                job,
                first,
                outputs,
                failures,
            })?;
            if self.lifespan.is_some_and(|l| done >= l) {
                break;
            }
        }
        let t = now();
        let e = self.task.exit(state, &self.info);
        s.set(st::NS_EXIT, ns(t));
        ctx.reply(&WorkerMsg::Exit(e))?;
        Ok(())
    }
}

impl crate::process::spawn::Init {
    /// Makes pools of task type `T` startable with [`PoolBuilder::build_reexec`](super::PoolBuilder::build_reexec).
    pub fn register_pool<T>(self) -> Self
    where
        T: Task + Serialize + DeserializeOwned,
    {
        self.register::<Worker<T>>()
    }
}

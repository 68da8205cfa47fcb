//! A pool of worker processes, after Python's mpire: `map`, `imap`, unordered variants,
//! `apply`/`apply_async`, worker init/exit hooks, per-worker state and id, keep-alive,
//! lifespan, task timeouts, a progress bar, insights, and recovery from crashed workers.
//!
//! # How it works
//!
//! Each worker is a [`Process`] running a [`Task`]: `init` once (open a connection, load a
//! model: the "connect after fork" hook), then `call` for every input it is sent, then `exit`.
//! The parent cuts the inputs into chunks (automatically sized, or [`PoolBuilder::chunk_size`])
//! and keeps at most two chunks in flight per worker; each worker sends one message of results
//! per chunk. Inputs and outputs travel as postcard over the control socket, so small values
//! cost a few bytes; big arrays should travel through rings (see
//! [`Ring`](crate::Ring) in queue mode) with only their sequence numbers in the tasks.
//!
//! Every worker publishes, in a small shared-memory block, which task it is running, since
//! when, and how long it spent initialising, working, waiting and exiting. The parent uses it
//! to attribute a crash to the exact task, to enforce task timeouts, and for
//! [`WorkerPool::insights`].
//!
//! # Failures
//!
//! - A task that panics: the worker catches it and goes on; the task's result is a
//!   [`TaskError`] with the message, location, task index and worker id.
//! - A worker that dies (SIGKILL from the OOM killer, a segfault): the task it was running
//!   fails with [`TaskErrorKind::WorkerDied`] and the signal; the other tasks of its chunks
//!   are sent to a replacement worker (tasks of that chunk that had already run are run again).
//! - A task over the timeout: its worker is killed and replaced; the task fails with
//!   [`TaskErrorKind::TimedOut`].
//! - A worker that keeps dying in `init`: after 3 attempts in a row the pool gives up with
//!   [`PoolError::WorkerInit`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::marker::PhantomData;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::spawn::{Backend, BoxError, Context, ForkBuilder, Process, ReexecBuilder};
use crate::process::error::{ExitReason, PoolError, ProcessError, TaskError, TaskErrorKind};
use crate::ring::WaitStrategy;
use crate::shm::Counters;
use crate::sys;
use crate::sys::process::ThreadedFork;

/// Who a worker is, as its task sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Worker id, `0..workers` (a replacement keeps the id of the worker it replaces).
    pub id: usize,
    /// Number of workers in the pool.
    pub workers: usize,
}

/// What a worker runs. Closures passed to [`PoolBuilder`] are wrapped into one; implement it
/// yourself (on a `Serialize + Deserialize` type) to run a pool of re-executed workers
/// ([`PoolBuilder::build_reexec`]).
pub trait Task: 'static {
    /// One task's input.
    type Input: Serialize + DeserializeOwned + 'static;
    /// One task's output.
    type Output: Serialize + DeserializeOwned + 'static;
    /// Per-worker state, made by `init`, passed to every call.
    type State;
    /// What `exit` returns (collected by [`WorkerPool::shutdown`]).
    type ExitValue: Serialize + DeserializeOwned + 'static;
    /// Runs once in each worker before its first task. An `Err` (a ring or database that
    /// cannot be reached) fails the pool's start with [`PoolError::InitFailed`], its message
    /// and sources, without retrying; a panic is retried (up to 3 times in a row).
    ///
    /// # Errors
    ///
    /// Whatever keeps the worker from serving.
    fn init(&self, worker: &WorkerInfo) -> Result<Self::State, BoxError>;
    /// Runs one task.
    fn call(
        &self,
        state: &mut Self::State,
        worker: &WorkerInfo,
        input: Self::Input,
    ) -> Self::Output;
    /// Runs once when the worker stops (pool shutdown, end of keep-alive, end of lifespan).
    fn exit(&self, state: Self::State, worker: &WorkerInfo) -> Self::ExitValue;
}

pub(crate) type InitFn<S> = Arc<dyn Fn(&WorkerInfo) -> Result<S, BoxError> + Send + Sync>;
pub(crate) type ExitFn<S, E> = Arc<dyn Fn(&WorkerInfo, S) -> E + Send + Sync>;

/// The [`Task`] of a pool built from closures (fork start method only).
pub struct FnTaskOf<I, O, S, E, F> {
    init: InitFn<S>,
    exit: Option<ExitFn<S, E>>,
    call: F,
    _t: PhantomData<fn(I) -> O>,
}

impl<I, O, S, E, F> std::fmt::Debug for FnTaskOf<I, O, S, E, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnTaskOf")
    }
}

impl<I, O, S, E, F> Task for FnTaskOf<I, O, S, E, F>
where
    I: Serialize + DeserializeOwned + 'static,
    O: Serialize + DeserializeOwned + 'static,
    S: 'static,
    E: Serialize + DeserializeOwned + Default + 'static,
    F: Fn(&mut S, &WorkerInfo, I) -> O + 'static,
{
    type Input = I;
    type Output = O;
    type State = S;
    type ExitValue = E;
    fn init(&self, w: &WorkerInfo) -> Result<S, BoxError> {
        (self.init)(w)
    }
    fn call(&self, s: &mut S, w: &WorkerInfo, i: I) -> O {
        (self.call)(s, w, i)
    }
    fn exit(&self, s: S, w: &WorkerInfo) -> E {
        match &self.exit {
            Some(f) => f(w, s),
            None => E::default(),
        }
    }
}

// ---------------------------------------------------------------- wire messages

#[derive(Serialize, Deserialize)]
pub(crate) enum PoolCmd<I> {
    Chunk { job: u64, first: u64, items: Vec<I> },
}

/// The borrowed twin of `PoolCmd::Chunk`: serialises identically (postcard writes a slice
/// like a Vec), so the parent keeps its inputs for re-dispatch without cloning them.
#[derive(Serialize)]
enum PoolCmdRef<'a, I> {
    Chunk {
        job: u64,
        first: u64,
        items: &'a [I],
    },
}

/// A task of a chunk that panicked: its offset in the chunk, message and location.
#[derive(Serialize, Deserialize)]
pub(crate) struct Failure {
    offset: u64,
    message: String,
    location: String,
}

#[derive(Serialize, Deserialize)]
pub(crate) enum WorkerMsg<O, E> {
    /// The outputs of a chunk's successful tasks, in order, and its failed tasks.
    Results {
        job: u64,
        first: u64,
        outputs: Vec<O>,
        failures: Vec<Failure>,
    },
    Exit(E),
}

// ---------------------------------------------------------------- shared status

/// Name tag of a pool's status block: the segment `pool-<pid>-<hex>` (see `shmflow::segments`).
pub(crate) const POOL_STATUS_TAG: &str = "pool";

/// Counters per worker slot in the shared status block.
const STATUS_WORDS: usize = 16;
mod st {
    pub const PID: usize = 0;
    /// Index (in its job) + 1 of the task running now; 0 when idle.
    pub const CURRENT: usize = 1;
    pub const JOB: usize = 2;
    /// Monotonic ns at which CURRENT started (only kept when a task timeout is set).
    pub const STARTED: usize = 3;
    pub const TASKS: usize = 4;
    pub const NS_INIT: usize = 5;
    pub const NS_WORKING: usize = 6;
    pub const NS_WAITING: usize = 7;
    pub const NS_EXIT: usize = 8;
    /// 1 once init has finished, [`INIT_FAILED`] if it returned an error.
    pub const READY: usize = 9;
    /// Value of `READY` when init returned an error.
    pub const INIT_FAILED: u64 = 2;
}

struct Status<'a> {
    c: &'a Counters,
    base: usize,
}

impl Status<'_> {
    fn get(&self, w: usize) -> u64 {
        self.c
            .get(self.base + w)
            .load(std::sync::atomic::Ordering::Relaxed)
    }
    fn set(&self, w: usize, v: u64) {
        self.c
            .get(self.base + w)
            .store(v, std::sync::atomic::Ordering::Relaxed)
    }
    fn add(&self, w: usize, v: u64) {
        self.c
            .get(self.base + w)
            .fetch_add(v, std::sync::atomic::Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------- the worker side

/// The backend every worker process runs.
#[derive(Serialize, Deserialize)]
pub(crate) struct Worker<T> {
    task: Arc<T>,
    info: WorkerInfo,
    lifespan: Option<u64>,
    timed: bool,
    status: String,
    slots: usize,
    #[serde(skip)]
    inherited: Option<Arc<Counters>>,
}

thread_local! {
    static LAST_PANIC: std::cell::RefCell<Option<(String, String)>> =
        const { std::cell::RefCell::new(None) };
    static IN_TASK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Inside a task, a panic is recorded for the task's error; anywhere else (init, exit) it goes
/// to the process-level hook, which reports it to the parent as the worker's exit reason.
fn capture_panics() {
    let outer = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !IN_TASK.with(|t| t.get()) {
            return outer(info);
        }
        let (message, location) = super::wire::panic_text(info);
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

// ---------------------------------------------------------------- the parent side

type Proc<T> =
    Process<PoolCmd<<T as Task>::Input>, WorkerMsg<<T as Task>::Output, <T as Task>::ExitValue>>;
/// How one worker is to be started (what the pool's settings say for worker `id`).
struct WorkerStart {
    name: String,
    cpus: Option<Vec<usize>>,
    allow_threads: Option<ThreadedFork>,
    wait: WaitStrategy,
}

impl WorkerStart {
    fn fork(self) -> ForkBuilder {
        let mut b = ForkBuilder::new(self.name).wait_strategy(self.wait);
        if let Some(permit) = self.allow_threads {
            b = b.allow_threads(permit);
        }
        if let Some(c) = self.cpus {
            b = b.cpus(c);
        }
        b
    }

    /// A re-executed worker is a fresh single-threaded program: `allow_threads` has nothing
    /// to permit there.
    fn reexec(self) -> ReexecBuilder {
        let mut b = ReexecBuilder::new(self.name).wait_strategy(self.wait);
        if let Some(c) = self.cpus {
            b = b.cpus(c);
        }
        b
    }
}

type Spawner<T> = Box<dyn FnMut(WorkerInfo) -> Result<Proc<T>, crate::process::error::SpawnError>>;

struct Chunk<I> {
    job: u64,
    first: u64,
    items: Vec<I>,
}

struct Slot<T: Task> {
    proc: Option<Proc<T>>,
    in_flight: VecDeque<Chunk<T::Input>>,
    /// Tasks sent to the current process (for the lifespan cap).
    assigned: u64,
    restarts: u64,
    init_failures: u32,
    timed_out: bool,
    exited: bool,
}

/// Results of consecutive tasks: the successful outputs in order, and the failures with
/// their offsets (ascending).
pub(crate) struct Ready<O> {
    outputs: std::vec::IntoIter<O>,
    failures: VecDeque<(u64, TaskError)>,
    pos: u64,
}

impl<O> Ready<O> {
    fn len(&self) -> u64 {
        (self.outputs.len() + self.failures.len()) as u64
    }
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn pop(&mut self) -> Option<Result<O, TaskError>> {
        if self.failures.front().is_some_and(|(o, _)| *o == self.pos) {
            self.pos += 1;
            return self.failures.pop_front().map(|(_, e)| Err(e));
        }
        let v = self.outputs.next()?;
        self.pos += 1;
        Some(Ok(v))
    }
}

/// A map's progress bar on stderr (indicatif, with the `progress` feature; nothing without).
struct Bar(#[cfg(feature = "progress")] indicatif::ProgressBar);

impl Bar {
    fn new(len: u64) -> Bar {
        #[cfg(feature = "progress")]
        {
            let bar = indicatif::ProgressBar::with_draw_target(
                Some(len),
                indicatif::ProgressDrawTarget::stderr(),
            );
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} tasks [{elapsed_precise} < {eta_precise}, {per_sec}]",
            ) {
                bar.set_style(style);
            }
            Bar(bar)
        }
        #[cfg(not(feature = "progress"))]
        {
            let _ = len;
            Bar()
        }
    }

    fn inc(&self, n: u64) {
        #[cfg(feature = "progress")]
        self.0.inc(n);
        #[cfg(not(feature = "progress"))]
        let _ = n;
    }

    fn finish_and_clear(&self) {
        #[cfg(feature = "progress")]
        self.0.finish_and_clear();
    }
}

/// One map/imap/apply in progress.
/// The inputs a job's tasks are made from: owned by the pool (an `apply_async` input), or
/// kept by the caller's [`Imap`] (which may borrow them) and handed in by [`Inner::take`].
type Inputs<'a, I> = Box<dyn Iterator<Item = I> + 'a>;

struct Job<T: Task> {
    feeder: Option<Inputs<'static, T::Input>>,
    /// The caller's iterator (see [`Inputs`]) may still yield inputs.
    external_open: bool,
    fed: u64,
    delivered: u64,
    chunk: usize,
    /// Results by the index of their first task.
    ready: BTreeMap<u64, Ready<T::Output>>,
    next: u64,
    ordered: bool,
    progress: Option<Bar>,
}

impl<T: Task> Job<T> {
    fn finished(&self) -> bool {
        self.feeder.is_none() && !self.external_open && self.delivered == self.fed
    }
}

struct Inner<T: Task> {
    slots: Vec<Slot<T>>,
    spawner: Spawner<T>,
    counters: Arc<Counters>,
    jobs: HashMap<u64, Job<T>>,
    next_job: u64,
    pending: VecDeque<Chunk<T::Input>>,
    exit_values: Vec<T::ExitValue>,
    timeout: Option<Duration>,
    lifespan: Option<u64>,
    chunk_size: Option<usize>,
    progress: bool,
    max_in_flight: Option<u64>,
    error: Option<PoolError>,
    /// How `pump` waits for results (spin over the workers' sockets, then `poll`).
    wait: WaitStrategy,
}

const PREFETCH: usize = 2;

impl<T: Task> Inner<T> {
    fn status(&self) -> Status<'_> {
        Status {
            c: &self.counters,
            base: 0,
        }
    }

    fn status_of(&self, w: usize, word: usize) -> u64 {
        self.status().get(w * STATUS_WORDS + word)
    }

    fn start(&mut self, w: usize) -> Result<(), PoolError> {
        for k in 0..STATUS_WORDS {
            self.status().set(w * STATUS_WORDS + k, 0);
        }
        let info = WorkerInfo {
            id: w,
            workers: self.slots.len(),
        };
        let p = (self.spawner)(info)?;
        let slot = &mut self.slots[w];
        slot.proc = Some(p);
        slot.assigned = 0;
        slot.timed_out = false;
        slot.exited = false;
        Ok(())
    }

    fn ensure_workers(&mut self) -> Result<(), PoolError> {
        for w in 0..self.slots.len() {
            if self.slots[w].proc.is_none() {
                self.start(w)?;
            }
        }
        Ok(())
    }

    fn auto_chunk(&self, len: Option<usize>) -> usize {
        if let Some(c) = self.chunk_size {
            return c.max(1);
        }
        if self.timeout.is_some() {
            return 1;
        }
        match len {
            Some(n) => (n / (self.slots.len() * 8)).clamp(1, 4096),
            None => 64,
        }
    }

    fn outstanding_limit(&self, job: &Job<T>) -> u64 {
        let natural = (self.slots.len() * (PREFETCH + 2) * job.chunk) as u64;
        self.max_in_flight
            .map_or(natural, |m| natural.min(m.max(1)))
    }

    /// Makes the next chunk from the jobs' inputs (oldest job first), up to `cap` tasks.
    fn next_chunk(&mut self, cap: u64) -> Option<Chunk<T::Input>> {
        if let Some(c) = self.pending.pop_front() {
            if (c.items.len() as u64) <= cap.max(1) {
                return Some(c);
            }
            // Split a re-dispatched chunk that is longer than the lifespan allows.
            let mut c = c;
            let rest = c.items.split_off(cap.max(1) as usize);
            self.pending.push_front(Chunk {
                job: c.job,
                first: c.first + cap.max(1),
                items: rest,
            });
            return Some(c);
        }
        let mut ids: Vec<u64> = self.jobs.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let limit = {
                let job = &self.jobs[&id];
                if job.feeder.is_none() || job.fed - job.delivered >= self.outstanding_limit(job) {
                    continue;
                }
                job.chunk.min(cap.max(1) as usize)
            };
            let job = self.jobs.get_mut(&id).expect("listed");
            let feeder = job.feeder.as_mut().expect("checked");
            let items: Vec<T::Input> = feeder.take(limit).collect();
            if items.len() < limit {
                job.feeder = None;
            }
            if items.is_empty() {
                continue;
            }
            let first = job.fed;
            job.fed += items.len() as u64;
            return Some(Chunk {
                job: id,
                first,
                items,
            });
        }
        None
    }

    /// How many more tasks worker `w` may be sent now (0: none).
    fn room(&self, w: usize) -> u64 {
        let slot = &self.slots[w];
        if slot.proc.is_none() || slot.in_flight.len() >= PREFETCH {
            return 0;
        }
        match self.lifespan {
            Some(l) => l.saturating_sub(slot.assigned),
            None => u64::MAX,
        }
    }

    /// Sends work to the workers that have room, each chunk to the least busy one (fewest
    /// chunks in flight; the lowest id on ties). Filling worker 0 first and then the others
    /// would pile work on one worker: when it dies, everything it had queued is re-dispatched
    /// at once, and in a frame pool those frames have gone by the other workers' readers.
    fn feed(&mut self) -> Result<(), PoolError> {
        loop {
            let Some(w) = (0..self.slots.len())
                .filter(|&w| self.room(w) > 0)
                .min_by_key(|&w| self.slots[w].in_flight.len())
            else {
                return Ok(());
            };
            let cap = self.room(w);
            let Some(chunk) = self.next_chunk(cap) else {
                return Ok(());
            };
            let slot = &mut self.slots[w];
            let p = slot.proc.as_mut().expect("checked");
            let msg = PoolCmdRef::Chunk {
                job: chunk.job,
                first: chunk.first,
                items: &chunk.items,
            };
            let sent = p.send_encoded(&msg);
            slot.assigned += chunk.items.len() as u64;
            slot.in_flight.push_back(chunk);
            if let Err(e) = sent {
                self.worker_died(w, e)?;
            }
        }
    }

    fn deliver(&mut self, job: u64, first: u64, ready: Ready<T::Output>) {
        if let Some(j) = self.jobs.get_mut(&job) {
            if !ready.is_empty() {
                j.ready.insert(first, ready);
            }
        }
    }

    fn on_message(&mut self, w: usize, msg: WorkerMsg<T::Output, T::ExitValue>) {
        match msg {
            WorkerMsg::Results {
                job,
                first,
                outputs,
                failures,
            } => {
                let slot = &mut self.slots[w];
                if let Some(pos) = slot
                    .in_flight
                    .iter()
                    .position(|c| c.job == job && c.first == first)
                {
                    slot.in_flight.remove(pos);
                }
                let failures = failures
                    .into_iter()
                    .map(|f| {
                        let e = TaskError {
                            index: first + f.offset,
                            worker: w,
                            kind: TaskErrorKind::Panicked {
                                message: f.message,
                                location: f.location,
                            },
                        };
                        (f.offset, e)
                    })
                    .collect();
                self.deliver(
                    job,
                    first,
                    Ready {
                        outputs: outputs.into_iter(),
                        failures,
                        pos: 0,
                    },
                );
            }
            WorkerMsg::Exit(e) => {
                self.exit_values.push(e);
                self.slots[w].exited = true;
            }
        }
    }

    /// Handles the end of worker `w` (crash, timeout kill, or a clean exit at lifespan).
    fn worker_died(&mut self, w: usize, err: ProcessError) -> Result<(), PoolError> {
        let reason = match err {
            ProcessError::Died { reason, .. } => reason,
            other => {
                if let Some(p) = self.slots[w].proc.as_mut() {
                    p.kill();
                    let _ = p.join();
                }
                ExitReason::Failed {
                    message: other.to_string(),
                }
            }
        };
        let current = self.status_of(w, st::CURRENT);
        let job = self.status_of(w, st::JOB);
        let ready = self.status_of(w, st::READY) == 1;
        let init_failed = self.status_of(w, st::READY) == st::INIT_FAILED;
        let timeout = self.timeout;
        let slot = &mut self.slots[w];
        slot.proc = None;
        let timed_out = std::mem::take(&mut slot.timed_out);
        let in_flight: Vec<Chunk<T::Input>> = slot.in_flight.drain(..).collect();
        let clean = slot.exited && reason.is_success();
        if init_failed {
            // worker_init said why it cannot serve: retrying would say it again.
            self.pending.extend(in_flight);
            let message = match reason {
                ExitReason::Failed { message } => message,
                other => other.to_string(),
            };
            return Err(PoolError::InitFailed { worker: w, message });
        }
        if !ready && !clean {
            slot.init_failures += 1;
            if slot.init_failures >= 3 {
                let attempts = slot.init_failures;
                self.pending.extend(in_flight);
                return Err(PoolError::WorkerInit {
                    worker: w,
                    attempts,
                    reason,
                });
            }
        } else {
            slot.init_failures = 0;
        }
        slot.restarts += 1;
        // The task that was running fails; the rest of its chunks go to another worker.
        let mut redo: Vec<Chunk<T::Input>> = Vec::new();
        for mut c in in_flight {
            let hit = !clean
                && current > 0
                && c.job == job
                && (c.first..c.first + c.items.len() as u64).contains(&(current - 1));
            if hit {
                let idx = current - 1;
                let k = (idx - c.first) as usize;
                let after = c.items.split_off(k + 1);
                c.items.pop();
                let kind = if timed_out {
                    TaskErrorKind::TimedOut {
                        after: timeout.unwrap_or_default(),
                    }
                } else {
                    TaskErrorKind::WorkerDied {
                        reason: reason.clone(),
                    }
                };
                let failure = TaskError {
                    index: idx,
                    worker: w,
                    kind,
                };
                self.deliver(
                    c.job,
                    idx,
                    Ready {
                        outputs: Vec::new().into_iter(),
                        failures: VecDeque::from([(0, failure)]),
                        pos: 0,
                    },
                );
                if !after.is_empty() {
                    redo.push(Chunk {
                        job: c.job,
                        first: idx + 1,
                        items: after,
                    });
                }
                if !c.items.is_empty() {
                    redo.push(c);
                }
            } else {
                redo.push(c);
            }
        }
        for c in redo.into_iter().rev() {
            self.pending.push_front(c);
        }
        Ok(())
    }

    /// One round: start missing workers, feed them, wait for messages (at most `wait`), handle
    /// what arrived, enforce timeouts.
    fn pump(&mut self, wait: Duration) -> Result<(), PoolError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let busy = !self.pending.is_empty() || self.jobs.values().any(|j| !j.finished());
        if busy {
            self.ensure_workers()?;
        }
        self.feed()?;
        let alive: Vec<usize> = (0..self.slots.len())
            .filter(|&w| self.slots[w].proc.is_some())
            .collect();
        if alive.is_empty() {
            return Ok(());
        }
        let mut wait = wait;
        if let Some(t) = self.timeout {
            wait = wait.min(t / 4).max(Duration::from_millis(1));
        }
        // Spin first, as ring endpoints do: a reply that comes within the spin time is picked
        // up without a kernel wake-up (the worker, spinning too, got its chunk the same way).
        if !wait.is_zero() && (self.spin(&alive, wait)? || self.wait == WaitStrategy::BusyPoll) {
            self.check_timeouts();
            return Ok(());
        }
        let ready = {
            let fds: Vec<&dyn AsFd> = alive
                .iter()
                .map(|&w| self.slots[w].proc.as_ref().expect("alive") as &dyn AsFd)
                .collect();
            super::control::wait_any(&fds, Some(wait)).map_err(PoolError::Io)?
        };
        for k in ready {
            self.drain(alive[k])?;
        }
        self.check_timeouts();
        Ok(())
    }

    /// Handles every whole message worker `w` has sent; true if there was one.
    fn drain(&mut self, w: usize) -> Result<bool, PoolError> {
        let mut got = false;
        while let Some(p) = self.slots[w].proc.as_mut() {
            match p.try_recv() {
                Ok(Some(msg)) => {
                    got = true;
                    self.on_message(w, msg);
                }
                Ok(None) => break,
                Err(e) => {
                    self.worker_died(w, e)?;
                    return Ok(true);
                }
            }
        }
        Ok(got)
    }

    /// Retries the workers' sockets without sleeping for the wait strategy's spin time (at
    /// most `limit`); true as soon as something arrived.
    fn spin(&mut self, alive: &[usize], limit: Duration) -> Result<bool, PoolError> {
        let spin = match self.wait {
            WaitStrategy::BusyPoll => limit,
            WaitStrategy::SpinThenBlock { spin } => spin.min(limit),
        };
        let start = Instant::now();
        let mut tries = 0;
        loop {
            let mut got = false;
            for &w in alive {
                got |= self.drain(w)?;
            }
            if got {
                return Ok(true);
            }
            if start.elapsed() >= spin {
                return Ok(false);
            }
            super::control::spin_pause(&mut tries);
        }
    }

    fn check_timeouts(&mut self) {
        let Some(t) = self.timeout else { return };
        let now = sys::monotonic_ns();
        for w in 0..self.slots.len() {
            if self.slots[w].proc.is_none() || self.status_of(w, st::CURRENT) == 0 {
                continue;
            }
            let started = self.status_of(w, st::STARTED);
            if started != 0 && now.saturating_sub(started) > t.as_nanos() as u64 {
                let slot = &mut self.slots[w];
                slot.timed_out = true;
                if let Some(p) = slot.proc.as_mut() {
                    p.kill();
                }
            }
        }
    }

    /// Makes chunks of `job` from the caller's iterator into `pending`, up to the job's
    /// outstanding limit (so an endless iterator is pulled lazily).
    fn top_up(&mut self, job: u64, it: &mut Inputs<'_, T::Input>) {
        let Some(j) = self.jobs.get(&job) else { return };
        let limit = self.outstanding_limit(j);
        loop {
            let j = self.jobs.get_mut(&job).expect("checked");
            if !j.external_open || j.fed - j.delivered >= limit {
                return;
            }
            let items: Vec<T::Input> = it.by_ref().take(j.chunk).collect();
            if items.len() < j.chunk {
                j.external_open = false;
            }
            if items.is_empty() {
                return;
            }
            let first = j.fed;
            j.fed += items.len() as u64;
            self.pending.push_back(Chunk { job, first, items });
        }
    }

    /// A new job; `inputs: None` means the caller keeps them and hands them to `take`.
    fn new_job(
        &mut self,
        inputs: Option<Inputs<'static, T::Input>>,
        len: Option<usize>,
        ordered: bool,
    ) -> u64 {
        let id = self.next_job;
        self.next_job += 1;
        let chunk = self.auto_chunk(len);
        let progress = match (self.progress, len) {
            (true, Some(n)) if n > 1 => Some(Bar::new(n as u64)),
            _ => None,
        };
        self.jobs.insert(
            id,
            Job {
                external_open: inputs.is_none(),
                feeder: inputs,
                fed: 0,
                delivered: 0,
                chunk,
                ready: BTreeMap::new(),
                next: 0,
                ordered,
                progress,
            },
        );
        id
    }

    /// The next chunk of results of `job` (in order for ordered jobs): `(index of the first,
    /// results)`, or `None` when the job is complete.
    #[allow(clippy::type_complexity)]
    fn take(
        &mut self,
        job: u64,
        deadline: Option<Instant>,
        mut inputs: Option<&mut Inputs<'_, T::Input>>,
    ) -> Result<Option<(u64, Ready<T::Output>)>, PoolError> {
        loop {
            if let Some(it) = inputs.as_deref_mut() {
                self.top_up(job, it);
            }
            {
                let Some(j) = self.jobs.get_mut(&job) else {
                    return Ok(None);
                };
                let key = if j.ordered {
                    j.ready.contains_key(&j.next).then_some(j.next)
                } else {
                    j.ready.keys().next().copied()
                };
                if let Some(first) = key {
                    let q = j.ready.remove(&first).expect("key exists");
                    let n = q.len();
                    if j.ordered {
                        j.next = first + n;
                    }
                    j.delivered += n;
                    if let Some(bar) = &j.progress {
                        bar.inc(n);
                    }
                    return Ok(Some((first, q)));
                }
                if j.finished() {
                    if let Some(bar) = &j.progress {
                        bar.finish_and_clear();
                    }
                    self.jobs.remove(&job);
                    return Ok(None);
                }
            }
            let wait = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(PoolError::Timeout);
                    }
                    left.min(Duration::from_millis(100))
                }
                None => Duration::from_millis(100),
            };
            self.pump(wait)?;
        }
    }

    fn shutdown(&mut self, grace: Duration) -> Vec<T::ExitValue> {
        for slot in &mut self.slots {
            if let Some(p) = slot.proc.as_mut() {
                p.request_stop();
            }
        }
        let deadline = Instant::now() + grace;
        for w in 0..self.slots.len() {
            let Some(mut p) = self.slots[w].proc.take() else {
                continue;
            };
            loop {
                match p.try_recv() {
                    Ok(Some(msg)) => self.on_message(w, msg),
                    Ok(None) => {
                        if Instant::now() >= deadline {
                            p.kill();
                            break;
                        }
                        let _ = super::control::wait_any(&[&p], Some(Duration::from_millis(50)));
                    }
                    Err(_) => break,
                }
            }
            let _ = p.stop(Duration::from_millis(1));
            self.slots[w].in_flight.clear();
        }
        std::mem::take(&mut self.exit_values)
    }
}

/// Insights into one worker (time spent in init, tasks, waiting, exit).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerInsight {
    /// Worker id.
    pub id: usize,
    /// Pid of its current (or last) process.
    pub pid: u32,
    /// Tasks completed by its current (or last) process.
    pub tasks: u64,
    /// Times it was replaced (crash, timeout, lifespan, keep-alive off).
    pub restarts: u64,
    /// Time in `worker_init`.
    pub init: Duration,
    /// Time running tasks.
    pub working: Duration,
    /// Time waiting for tasks.
    pub waiting: Duration,
    /// Time in `worker_exit`.
    pub exit: Duration,
}

/// A pool of worker processes. Made by [`WorkerPool::builder`].
///
/// # Examples
///
/// ```
/// use shmflow::process::WorkerPool;
/// # if shmflow::process::thread_count() == 1 {
/// let pool = WorkerPool::builder()
///     .workers(2)
///     .worker_init(|w| format!("worker {}", w.id))       // per-worker state
///     .build(|state: &mut String, _w, x: u64| x * 2)?;
/// assert_eq!(pool.map(0..1000u64)?, (0..1000).map(|x| x * 2).collect::<Vec<_>>());
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct WorkerPool<T: Task> {
    inner: Arc<Mutex<Inner<T>>>,
    keep_alive: bool,
}

impl<T: Task> std::fmt::Debug for WorkerPool<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("keep_alive", &self.keep_alive)
            .finish_non_exhaustive()
    }
}

/// Settings for a [`WorkerPool`].
#[must_use = "a PoolBuilder does nothing until .build()"]
pub struct PoolBuilder<S, E> {
    workers: usize,
    wait: WaitStrategy,
    cpus: Option<Vec<Vec<usize>>>,
    keep_alive: bool,
    lifespan: Option<u64>,
    timeout: Option<Duration>,
    chunk_size: Option<usize>,
    max_in_flight: Option<u64>,
    progress: bool,
    name: String,
    allow_threads: Option<ThreadedFork>,
    init: InitFn<S>,
    exit: Option<ExitFn<S, E>>,
    frame_wait: Option<Duration>,
}

impl<S, E> std::fmt::Debug for PoolBuilder<S, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("workers", &self.workers)
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

/// The task type of [`WorkerPool::builder`]'s receiver: a placeholder, never run.
#[derive(Debug)]
pub enum NoTask {}

impl Task for NoTask {
    type Input = ();
    type Output = ();
    type State = ();
    type ExitValue = ();
    fn init(&self, _: &WorkerInfo) -> Result<(), BoxError> {
        Ok(())
    }
    fn call(&self, _: &mut (), _: &WorkerInfo, _: ()) {}
    fn exit(&self, _: (), _: &WorkerInfo) {}
}

impl WorkerPool<NoTask> {
    /// Starts configuring a pool (defaults: one worker per available CPU, fork, keep-alive,
    /// no lifespan, no timeout, automatic chunks, no progress bar).
    pub fn builder() -> PoolBuilder<(), ()> {
        PoolBuilder {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            wait: WaitStrategy::default(),
            cpus: None,
            keep_alive: true,
            lifespan: None,
            timeout: None,
            chunk_size: None,
            max_in_flight: None,
            progress: false,
            name: "shmflow-w".into(),
            allow_threads: None,
            init: Arc::new(|_| Ok(())),
            exit: None,
            frame_wait: None,
        }
    }
}

impl<S: 'static, E> PoolBuilder<S, E>
where
    E: Serialize + DeserializeOwned + Default + 'static,
{
    /// Number of worker processes (at least 1: `build` refuses 0 with
    /// [`PoolError::InvalidSetting`]).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Process-name prefix (`shmflow-w` by default: workers show as `shmflow-w0`, ...).
    pub fn name(mut self, prefix: impl Into<String>) -> Self {
        self.name = prefix.into();
        self
    }

    /// Pins workers: `cpus[i % cpus.len()]` is the CPU set of worker `i`.
    pub fn cpus(mut self, cpus: Vec<Vec<usize>>) -> Self {
        self.cpus = Some(cpus);
        self
    }

    /// Keep workers (and their state) alive between maps (default `true`). With `false`,
    /// workers run `worker_exit` and stop after every map, and start afresh for the next.
    pub fn keep_alive(mut self, keep: bool) -> Self {
        self.keep_alive = keep;
        self
    }

    /// Restart each worker after it has run `tasks` tasks (its `worker_exit` runs, a new
    /// process runs `worker_init`).
    pub fn lifespan(mut self, tasks: u64) -> Self {
        self.lifespan = Some(tasks.max(1));
        self
    }

    /// Fail a task that runs longer than `timeout` (its worker is killed and replaced).
    /// Implies one task per chunk.
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Tasks per chunk (default: automatic, about 8 chunks per worker for sized inputs; 1
    /// with a task timeout or for frame pools). At least 1: `build` refuses 0 with
    /// [`PoolError::InvalidSetting`] (leave it unset for automatic chunking).
    pub fn chunk_size(mut self, n: usize) -> Self {
        self.chunk_size = Some(n);
        self
    }

    /// At most this many tasks of one map may be sent but not yet handed back to the caller
    /// (default: four chunks per worker). Inputs are pulled lazily within this bound.
    pub fn max_in_flight(mut self, n: u64) -> Self {
        self.max_in_flight = Some(n.max(1));
        self
    }

    /// Show a progress bar on stderr for maps of known length (hidden when stderr is not a
    /// terminal). Without the `progress` feature (on by default) there is no bar to show.
    pub fn progress_bar(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }

    /// Fork workers even if this process runs other threads, with the permission only an
    /// `unsafe` call makes (see [`ThreadedFork::assume_no_locks_held`]; it covers every worker
    /// fork, at start and when a dead worker is replaced).
    pub fn allow_threads(mut self, permit: ThreadedFork) -> Self {
        self.allow_threads = Some(permit);
        self
    }

    /// Frame pools ([`build_frames`](PoolBuilder::build_frames)) only: how long a task waits
    /// for its frame before it fails with [`FrameError::Timeout`](super::FrameError::Timeout)
    /// (default 10 s).
    pub fn frame_wait(mut self, wait: Duration) -> Self {
        self.frame_wait = Some(wait);
        self
    }

    /// How workers wait for their next chunk and the pool waits for results: spin, then sleep
    /// (the default, 50 µs of spinning, as ring endpoints do; an idle worker then sleeps in the
    /// kernel and costs no CPU), or never sleep ([`WaitStrategy::BusyPoll`]: lowest latency,
    /// one busy core per worker and for the caller while it waits).
    pub fn wait_strategy(mut self, strategy: WaitStrategy) -> Self {
        self.wait = strategy;
        self
    }

    /// Runs in each worker before its first task; the value is the worker's state, passed as
    /// `&mut S` to every task ("connect after fork"). Call before `worker_exit`. Use
    /// [`try_worker_init`](PoolBuilder::try_worker_init) when it can fail.
    pub fn worker_init<S2, F>(self, f: F) -> PoolBuilder<S2, E>
    where
        F: Fn(&WorkerInfo) -> S2 + Send + Sync + 'static,
    {
        self.with_init(Arc::new(move |w: &WorkerInfo| Ok(f(w))))
    }

    /// Like [`worker_init`](PoolBuilder::worker_init), for an init that can fail: an `Err`
    /// fails the start (`start`, or the first `map`) with [`PoolError::InitFailed`], whose
    /// message is the error and its sources, at once and without retries.
    ///
    /// ```
    /// # if shmflow::process::thread_count() == 1 {
    /// use shmflow::process::WorkerPool;
    /// use shmflow::PoolError;
    /// let pool = WorkerPool::builder()
    ///     .workers(1)
    ///     .try_worker_init(|_| std::fs::File::open("/nonexistent/db"))
    ///     .build(|_file, _, x: u32| x)?;
    /// assert!(matches!(pool.start(), Err(PoolError::InitFailed { .. })));
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_worker_init<S2, Er, F>(self, f: F) -> PoolBuilder<S2, E>
    where
        F: Fn(&WorkerInfo) -> Result<S2, Er> + Send + Sync + 'static,
        Er: Into<BoxError>,
    {
        self.with_init(Arc::new(move |w: &WorkerInfo| f(w).map_err(Into::into)))
    }

    fn with_init<S2>(self, init: InitFn<S2>) -> PoolBuilder<S2, E> {
        PoolBuilder {
            workers: self.workers,
            wait: self.wait,
            cpus: self.cpus,
            keep_alive: self.keep_alive,
            lifespan: self.lifespan,
            timeout: self.timeout,
            chunk_size: self.chunk_size,
            max_in_flight: self.max_in_flight,
            progress: self.progress,
            name: self.name,
            allow_threads: self.allow_threads,
            init,
            exit: None,
            frame_wait: self.frame_wait,
        }
    }

    /// Runs in each worker when it stops; its values are returned by
    /// [`WorkerPool::shutdown`] (and kept across keep-alive restarts).
    pub fn worker_exit<E2, F>(self, f: F) -> PoolBuilder<S, E2>
    where
        F: Fn(&WorkerInfo, S) -> E2 + Send + Sync + 'static,
        E2: Serialize + DeserializeOwned + Default + 'static,
    {
        PoolBuilder {
            workers: self.workers,
            wait: self.wait,
            cpus: self.cpus,
            keep_alive: self.keep_alive,
            lifespan: self.lifespan,
            timeout: self.timeout,
            chunk_size: self.chunk_size,
            max_in_flight: self.max_in_flight,
            progress: self.progress,
            name: self.name,
            allow_threads: self.allow_threads,
            init: self.init,
            exit: Some(Arc::new(f)),
            frame_wait: self.frame_wait,
        }
    }

    /// Builds the pool around the task function `f(state, worker, input) -> output`. Workers
    /// are forked lazily, at the first map.
    ///
    /// # Errors
    ///
    /// [`PoolError::Io`] if the shared status block cannot be created.
    #[allow(clippy::type_complexity)]
    pub fn build<I, O, F>(self, f: F) -> Result<WorkerPool<FnTaskOf<I, O, S, E, F>>, PoolError>
    where
        I: Serialize + DeserializeOwned + 'static,
        O: Serialize + DeserializeOwned + 'static,
        F: Fn(&mut S, &WorkerInfo, I) -> O + 'static,
    {
        let task = FnTaskOf {
            init: self.init.clone(),
            exit: self.exit.clone(),
            call: f,
            _t: PhantomData,
        };
        self.build_task(task, false, |s, w| s.fork().spawn(w))
    }

    fn build_task<T: Task>(
        self,
        task: T,
        reexec: bool,
        spawn: fn(WorkerStart, Worker<T>) -> Result<Proc<T>, crate::process::error::SpawnError>,
    ) -> Result<WorkerPool<T>, PoolError> {
        if self.workers == 0 {
            return Err(PoolError::InvalidSetting(
                "workers(0): a pool needs at least one worker".into(),
            ));
        }
        if self.chunk_size == Some(0) {
            return Err(PoolError::InvalidSetting(
                "chunk_size(0): a chunk holds at least one task (leave chunk_size unset for automatic chunking)".into(),
            ));
        }
        let counters = Arc::new(
            Counters::create(POOL_STATUS_TAG, self.workers * STATUS_WORDS)
                .map_err(|e| PoolError::Io(std::io::Error::other(e.to_string())))?,
        );
        let task = Arc::new(task);
        let (name, cpus, allow, lifespan, timed, wait) = (
            self.name.clone(),
            self.cpus.clone(),
            self.allow_threads,
            self.lifespan,
            self.timeout.is_some(),
            self.wait,
        );
        let workers = self.workers;
        let status = counters.name().to_owned();
        let inherited = counters.clone();
        let spawner: Spawner<T> = Box::new(move |info: WorkerInfo| {
            let start = WorkerStart {
                name: format!("{name}{}", info.id),
                cpus: cpus
                    .as_ref()
                    .filter(|c| !c.is_empty())
                    .map(|c| c[info.id % c.len()].clone()),
                allow_threads: allow,
                wait,
            };
            let worker = Worker {
                task: task.clone(),
                info,
                lifespan,
                timed,
                status: status.clone(),
                slots: workers,
                inherited: if reexec {
                    None
                } else {
                    Some(inherited.clone())
                },
            };
            spawn(start, worker)
        });
        let slots = (0..self.workers)
            .map(|_| Slot {
                proc: None,
                in_flight: VecDeque::new(),
                assigned: 0,
                restarts: 0,
                init_failures: 0,
                timed_out: false,
                exited: false,
            })
            .collect();
        Ok(WorkerPool {
            inner: Arc::new(Mutex::new(Inner {
                slots,
                spawner,
                counters,
                jobs: HashMap::new(),
                next_job: 0,
                pending: VecDeque::new(),
                exit_values: Vec::new(),
                timeout: self.timeout,
                lifespan: self.lifespan,
                chunk_size: self.chunk_size,
                progress: self.progress,
                max_in_flight: self.max_in_flight,
                error: None,
                wait: self.wait,
            })),
            keep_alive: self.keep_alive,
        })
    }

    pub(crate) fn max_in_flight_or(&self, default: u64) -> u64 {
        self.max_in_flight.unwrap_or(default)
    }

    pub(crate) fn has_chunk_size(&self) -> bool {
        self.chunk_size.is_some()
    }

    /// The `worker_init` closure (for pool kinds built on this builder).
    pub(crate) fn init_fn(&self) -> InitFn<S> {
        self.init.clone()
    }

    /// The `worker_exit` closure, if any.
    pub(crate) fn exit_fn(&self) -> Option<ExitFn<S, E>> {
        self.exit.clone()
    }

    pub(crate) fn frame_wait_or_default(&self) -> Duration {
        self.frame_wait.unwrap_or(Duration::from_secs(10))
    }

    /// Builds a forking pool around any task.
    pub(crate) fn build_with<T: Task>(self, task: T) -> Result<WorkerPool<T>, PoolError> {
        self.build_task(task, false, |s, w| s.fork().spawn(w))
    }

    /// Builds a pool whose workers are started by re-executing the program
    /// ([`ReexecBuilder`]) and run `task`
    /// (sent to each worker once, serialised: this is how shared read-only data reaches
    /// re-executed workers). `main` must call
    /// `shmflow::process::init().register_pool::<T>().run()` first thing.
    ///
    /// # Errors
    ///
    /// [`PoolError::Io`] if the shared status block cannot be created.
    pub fn build_reexec<T>(self, task: T) -> Result<WorkerPool<T>, PoolError>
    where
        T: Task + Serialize + DeserializeOwned,
    {
        self.build_task(task, true, |s, w| s.reexec().spawn(w))
    }
}

impl<T: Task> WorkerPool<T> {
    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn after_job(&self) {
        if !self.keep_alive {
            let mut inner = self.lock();
            if inner.jobs.is_empty() {
                inner.shutdown(Duration::from_secs(10));
            }
        }
    }

    /// A job whose inputs the returned [`Imap`] keeps (so they may borrow).
    fn job<'p, It>(&'p self, inputs: It, ordered: bool) -> Imap<'p, T>
    where
        It: IntoIterator<Item = T::Input>,
        It::IntoIter: 'p,
    {
        let it = inputs.into_iter();
        let (lo, hi) = it.size_hint();
        let len = (Some(lo) == hi).then_some(lo);
        let job = self.lock().new_job(None, len, ordered);
        Imap {
            pool: self,
            job,
            inputs: Box::new(it),
            done: false,
            buf: None,
        }
    }

    /// Runs the task on every input and returns the outputs in input order.
    ///
    /// # Errors
    ///
    /// The first failed task (by index) as [`PoolError::Task`] — after every task of the map
    /// has finished, so the pool is ready for the next map; [`PoolError::Spawn`] and
    /// [`PoolError::WorkerInit`] if workers cannot be started.
    pub fn map<It>(&self, inputs: It) -> Result<Vec<T::Output>, PoolError>
    where
        It: IntoIterator<Item = T::Input>,
    {
        let mut it = self.imap(inputs);
        let mut out = Vec::new();
        let mut first_error = None;
        loop {
            // Whole chunks at a time: a chunk without failures is appended in one go.
            if let Some((_, ready)) = it.buf.as_mut() {
                if ready.failures.is_empty() {
                    out.extend(ready.outputs.by_ref());
                    it.buf = None;
                }
            }
            match it.next() {
                Some(Ok(v)) => out.push(v),
                Some(Err(PoolError::Task(e))) => {
                    if first_error.is_none() {
                        first_error = Some(e)
                    }
                }
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
        match first_error {
            Some(e) => Err(PoolError::Task(e)),
            None => Ok(out),
        }
    }

    /// Like [`map`](WorkerPool::map) but returns `(index, output)` pairs in completion order.
    ///
    /// # Errors
    ///
    /// As for [`map`](WorkerPool::map).
    pub fn map_unordered<It>(&self, inputs: It) -> Result<Vec<(u64, T::Output)>, PoolError>
    where
        It: IntoIterator<Item = T::Input>,
    {
        let mut out = Vec::new();
        let mut first_error: Option<TaskError> = None;
        for r in self.imap_unordered(inputs) {
            match r {
                Ok(v) => out.push(v),
                Err(PoolError::Task(e)) => {
                    if first_error.as_ref().is_none_or(|f| e.index < f.index) {
                        first_error = Some(e)
                    }
                }
                Err(e) => return Err(e),
            }
        }
        match first_error {
            Some(e) => Err(PoolError::Task(e)),
            None => Ok(out),
        }
    }

    /// A lazy, ordered iterator of results: inputs are pulled as workers need them (at most a
    /// few chunks per worker ahead), so an endless input iterator works. Each item is the
    /// task's output or its [`TaskError`] (inside [`PoolError::Task`]); the pool goes on after
    /// a failed task. Dropping the iterator abandons the remaining tasks.
    pub fn imap<'p, It>(&'p self, inputs: It) -> Imap<'p, T>
    where
        It: IntoIterator<Item = T::Input>,
        It::IntoIter: 'p,
    {
        self.job(inputs, true)
    }

    /// Like [`imap`](WorkerPool::imap), in completion order, with each result's index.
    pub fn imap_unordered<'p, It>(&'p self, inputs: It) -> ImapUnordered<'p, T>
    where
        It: IntoIterator<Item = T::Input>,
        It::IntoIter: 'p,
    {
        ImapUnordered(self.job(inputs, false))
    }

    /// Runs one task and waits for its output.
    ///
    /// # Errors
    ///
    /// As for [`map`](WorkerPool::map).
    pub fn apply(&self, input: T::Input) -> Result<T::Output, PoolError>
    where
        T::Input: Send,
    {
        self.apply_async(input).get()
    }

    /// Submits one task; the returned handle's [`get`](AsyncResult::get) waits for it.
    /// Several tasks may be submitted before waiting for any.
    pub fn apply_async(&self, input: T::Input) -> AsyncResult<'_, T>
    where
        T::Input: Send,
    {
        let job = self
            .lock()
            .new_job(Some(Box::new(SendOnce(Some(input)))), Some(1), true);
        AsyncResult { pool: self, job }
    }

    /// Starts every worker now and waits until each has finished `worker_init` (normally
    /// workers start at the first map). A frame pool needs this before its producer starts, so
    /// that every worker's reader is attached when frame 0 is written.
    ///
    /// # Errors
    ///
    /// [`PoolError::Spawn`], or [`PoolError::WorkerInit`] if workers keep dying in init.
    pub fn start(&self) -> Result<(), PoolError> {
        let mut inner = self.lock();
        inner.ensure_workers()?;
        loop {
            let all = (0..inner.slots.len()).all(|w| inner.status_of(w, st::READY) == 1);
            if all {
                return Ok(());
            }
            inner.pump(Duration::from_millis(5))?;
            inner.ensure_workers()?;
        }
    }

    /// Per-worker figures: tasks, restarts, time in init / tasks / waiting / exit.
    pub fn insights(&self) -> Vec<WorkerInsight> {
        let inner = self.lock();
        (0..inner.slots.len())
            .map(|w| {
                let g = |k| inner.status_of(w, k);
                WorkerInsight {
                    id: w,
                    pid: g(st::PID) as u32,
                    tasks: g(st::TASKS),
                    restarts: inner.slots[w].restarts,
                    init: Duration::from_nanos(g(st::NS_INIT)),
                    working: Duration::from_nanos(g(st::NS_WORKING)),
                    waiting: Duration::from_nanos(g(st::NS_WAITING)),
                    exit: Duration::from_nanos(g(st::NS_EXIT)),
                }
            })
            .collect()
    }

    /// Pids of the running workers.
    pub fn pids(&self) -> Vec<u32> {
        let inner = self.lock();
        inner
            .slots
            .iter()
            .filter_map(|s| s.proc.as_ref().map(|p| p.pid()))
            .collect()
    }

    /// Stops every worker (each runs `worker_exit`), waits for them (killing those that take
    /// more than 10 s), and returns the exit values collected since the pool started.
    pub fn shutdown(&self) -> Vec<T::ExitValue> {
        self.lock().shutdown(Duration::from_secs(10))
    }
}

impl<T: Task> Drop for WorkerPool<T> {
    fn drop(&mut self) {
        self.lock().shutdown(Duration::from_secs(10));
    }
}

/// An iterator that yields one value, and is `Send` when the value is.
struct SendOnce<I>(Option<I>);
impl<I> Iterator for SendOnce<I> {
    type Item = I;
    fn next(&mut self) -> Option<I> {
        self.0.take()
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = usize::from(self.0.is_some());
        (n, Some(n))
    }
}

/// Ordered results of [`WorkerPool::imap`].
pub struct Imap<'p, T: Task> {
    pool: &'p WorkerPool<T>,
    job: u64,
    /// The inputs not yet made into chunks (pulled as results are taken).
    inputs: Inputs<'p, T::Input>,
    done: bool,
    /// The chunk being handed out: index of its first task, and the results.
    buf: Option<(u64, Ready<T::Output>)>,
}

impl<T: Task> std::fmt::Debug for Imap<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imap").field("job", &self.job).finish()
    }
}

impl<T: Task> Imap<'_, T> {
    fn next_indexed(&mut self) -> Option<Result<(u64, T::Output), PoolError>> {
        if let Some((first, ready)) = self.buf.as_mut() {
            let i = *first + ready.pos;
            if let Some(r) = ready.pop() {
                return Some(r.map(|v| (i, v)).map_err(PoolError::Task));
            }
            self.buf = None;
        }
        if self.done {
            return None;
        }
        let r = self
            .pool
            .lock()
            .take(self.job, None, Some(&mut self.inputs));
        match r {
            Ok(Some(chunk)) => {
                self.buf = Some(chunk);
                self.next_indexed()
            }
            Ok(None) => {
                self.done = true;
                self.pool.after_job();
                None
            }
            Err(e) => {
                self.done = true;
                self.pool.lock().jobs.remove(&self.job);
                Some(Err(e))
            }
        }
    }
}

impl<T: Task> Iterator for Imap<'_, T> {
    type Item = Result<T::Output, PoolError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_indexed().map(|r| r.map(|(_, v)| v))
    }
}

impl<T: Task> Drop for Imap<'_, T> {
    fn drop(&mut self) {
        if !self.done {
            let mut inner = self.pool.lock();
            inner.jobs.remove(&self.job);
            let job = self.job;
            inner.pending.retain(|c| c.job != job);
        }
    }
}

/// Unordered results of [`WorkerPool::imap_unordered`]: `(index, output)`.
pub struct ImapUnordered<'p, T: Task>(Imap<'p, T>);

impl<T: Task> std::fmt::Debug for ImapUnordered<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<T: Task> Iterator for ImapUnordered<'_, T> {
    type Item = Result<(u64, T::Output), PoolError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next_indexed()
    }
}

/// The result of [`WorkerPool::apply_async`].
pub struct AsyncResult<'p, T: Task> {
    pool: &'p WorkerPool<T>,
    job: u64,
}

impl<T: Task> std::fmt::Debug for AsyncResult<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncResult")
            .field("job", &self.job)
            .finish()
    }
}

impl<T: Task> AsyncResult<'_, T> {
    fn wait(&self, deadline: Option<Instant>) -> Result<T::Output, PoolError> {
        let r = self.pool.lock().take(self.job, deadline, None);
        match r {
            Ok(Some((_, mut q))) => {
                self.pool.lock().jobs.remove(&self.job);
                self.pool.after_job();
                q.pop()
                    .expect("a delivered chunk is not empty")
                    .map_err(PoolError::Task)
            }
            Ok(None) => Err(PoolError::Process(ProcessError::Timeout {
                name: "result already taken".into(),
            })),
            Err(e) => Err(e),
        }
    }

    /// Waits for the task's output.
    ///
    /// # Errors
    ///
    /// [`PoolError::Task`] if the task failed; worker start errors.
    pub fn get(self) -> Result<T::Output, PoolError> {
        self.wait(None)
    }

    /// Waits at most `timeout`; on [`PoolError::Timeout`] the handle is still usable.
    ///
    /// # Errors
    ///
    /// [`PoolError::Timeout`] and those of [`AsyncResult::get`].
    pub fn get_timeout(&self, timeout: Duration) -> Result<T::Output, PoolError> {
        self.wait(Some(Instant::now() + timeout))
    }

    /// Whether the result has arrived (drives the pool without waiting).
    pub fn ready(&self) -> bool {
        let mut inner = self.pool.lock();
        let _ = inner.pump(Duration::ZERO);
        inner
            .jobs
            .get(&self.job)
            .is_some_and(|j| !j.ready.is_empty())
    }
}

impl super::spawn::Init {
    /// Makes pools of task type `T` startable with [`PoolBuilder::build_reexec`].
    pub fn register_pool<T>(self) -> Self
    where
        T: Task + Serialize + DeserializeOwned,
    {
        self.register::<Worker<T>>()
    }
}

//! A pool of worker processes, after Python's mpire: `map`, `imap`, unordered variants,
//! `apply`/`apply_async`, worker init/exit hooks, per-worker state and id, keep-alive,
//! lifespan, task timeouts, a progress bar, insights, and recovery from crashed workers.
//!
//! # How it works
//!
//! Each worker is a [`Process`](crate::process::Process) running a [`Task`]: `init` once (open a connection, load a
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
//!   fails with [`TaskErrorKind::WorkerDied`](crate::TaskErrorKind::WorkerDied) and the signal; the other tasks of its chunks
//!   are sent to a replacement worker (tasks of that chunk that had already run are run again).
//! - A task over the timeout: its worker is killed and replaced; the task fails with
//!   [`TaskErrorKind::TimedOut`](crate::TaskErrorKind::TimedOut).
//! - A worker that keeps dying in `init`: after 3 attempts in a row the pool gives up with
//!   [`PoolError::WorkerInit`].

mod builder;
pub(crate) mod frames;
mod iter;
mod scheduler;
mod status;
mod task;
mod worker;

pub use builder::PoolBuilder;
pub use iter::{AsyncResult, Imap, ImapUnordered};
pub(crate) use status::POOL_STATUS_TAG;
pub use status::{PoolSnapshot, WorkerInsight, WorkerSample};
pub use task::{Task, WorkerInfo};

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::process::error::{PoolError, TaskError};
use crate::ring::WaitStrategy;
use iter::SendOnce;
use scheduler::{Inner, Types};
use status::st;

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
pub struct WorkerPool<I, O, X = ()>
where
    I: Serialize + DeserializeOwned + 'static,
    O: Serialize + DeserializeOwned + 'static,
    X: Serialize + DeserializeOwned + 'static,
{
    pub(crate) inner: Arc<Mutex<Inner<Types<I, O, X>>>>,
    pub(crate) keep_alive: bool,
}

impl<I, O, X> std::fmt::Debug for WorkerPool<I, O, X>
where
    I: Serialize + DeserializeOwned + 'static,
    O: Serialize + DeserializeOwned + 'static,
    X: Serialize + DeserializeOwned + 'static,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("keep_alive", &self.keep_alive)
            .finish_non_exhaustive()
    }
}

impl WorkerPool<(), (), ()> {
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

impl<I, O, X> WorkerPool<I, O, X>
where
    I: Serialize + DeserializeOwned + 'static,
    O: Serialize + DeserializeOwned + 'static,
    X: Serialize + DeserializeOwned + 'static,
{
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner<Types<I, O, X>>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn after_job(&self) {
        if !self.keep_alive {
            let mut inner = self.lock();
            if inner.jobs.is_empty() {
                inner.shutdown(Duration::from_secs(10));
            }
        }
    }

    /// A job whose inputs the returned [`Imap`] keeps (so they may borrow).
    pub(crate) fn job<'p, It>(&'p self, inputs: It, ordered: bool) -> Imap<'p, I, O, X>
    where
        It: IntoIterator<Item = I>,
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
    pub fn map<It>(&self, inputs: It) -> Result<Vec<O>, PoolError>
    where
        It: IntoIterator<Item = I>,
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
    pub fn map_unordered<It>(&self, inputs: It) -> Result<Vec<(u64, O)>, PoolError>
    where
        It: IntoIterator<Item = I>,
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
    pub fn imap<'p, It>(&'p self, inputs: It) -> Imap<'p, I, O, X>
    where
        It: IntoIterator<Item = I>,
        It::IntoIter: 'p,
    {
        self.job(inputs, true)
    }

    /// Like [`imap`](WorkerPool::imap), in completion order, with each result's index.
    pub fn imap_unordered<'p, It>(&'p self, inputs: It) -> ImapUnordered<'p, I, O, X>
    where
        It: IntoIterator<Item = I>,
        It::IntoIter: 'p,
    {
        ImapUnordered(self.job(inputs, false))
    }

    /// Runs one task and waits for its output.
    ///
    /// # Errors
    ///
    /// As for [`map`](WorkerPool::map).
    pub fn apply(&self, input: I) -> Result<O, PoolError>
    where
        I: Send,
    {
        self.apply_async(input).get()
    }

    /// Submits one task; the returned handle's [`get`](AsyncResult::get) waits for it.
    /// Several tasks may be submitted before waiting for any.
    pub fn apply_async(&self, input: I) -> AsyncResult<'_, I, O, X>
    where
        I: Send,
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
    pub fn shutdown(&self) -> Vec<X> {
        self.lock().shutdown(Duration::from_secs(10))
    }
}

impl<I, O, X> Drop for WorkerPool<I, O, X>
where
    I: Serialize + DeserializeOwned + 'static,
    O: Serialize + DeserializeOwned + 'static,
    X: Serialize + DeserializeOwned + 'static,
{
    fn drop(&mut self) {
        self.lock().shutdown(Duration::from_secs(10));
    }
}

//! [`PoolBuilder`]: every setting of a pool, and the builds (closures, tasks, re-exec).

use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::scheduler::{Inner, Slot, Spawner, WorkerStart};
use super::status::{st, POOL_STATUS_TAG, STATUS_WORDS};
use super::task::{ExitFn, FnTaskOf, InitFn, KindsOf, PoolOf, StartFn, Task, WorkerInfo};
use super::worker::Worker;
use super::WorkerPool;
use crate::process::error::PoolError;
use crate::process::spawn::BoxError;
use crate::ring::WaitStrategy;
use crate::shm::Counters;
use crate::sys::process::ThreadedFork;

/// Settings for a [`WorkerPool`].
#[must_use = "a PoolBuilder does nothing until .build()"]
pub struct PoolBuilder<S, E> {
    pub(crate) workers: usize,
    pub(crate) wait: WaitStrategy,
    pub(crate) cpus: Option<Vec<Vec<usize>>>,
    pub(crate) keep_alive: bool,
    pub(crate) lifespan: Option<u64>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) chunk_size: Option<usize>,
    pub(crate) max_in_flight: Option<u64>,
    pub(crate) progress: bool,
    pub(crate) name: String,
    pub(crate) allow_threads: Option<ThreadedFork>,
    pub(crate) init: InitFn<S>,
    pub(crate) exit: Option<ExitFn<S, E>>,
    pub(crate) frame_wait: Option<Duration>,
}

impl<S, E> std::fmt::Debug for PoolBuilder<S, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("workers", &self.workers)
            .field("wait", &self.wait)
            .finish_non_exhaustive()
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
    /// for its frame before it fails with [`FrameError::Timeout`](crate::process::FrameError::Timeout)
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

    pub(crate) fn with_init<S2>(self, init: InitFn<S2>) -> PoolBuilder<S2, E> {
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
    pub fn build<I, O, F>(self, f: F) -> Result<WorkerPool<I, O, E>, PoolError>
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

    pub(crate) fn build_task<T: Task>(
        self,
        task: T,
        reexec: bool,
        spawn: StartFn<T>,
    ) -> Result<PoolOf<T>, PoolError> {
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
        for w in 0..self.workers {
            counters
                .get(w * STATUS_WORDS + st::WORKERS)
                .store(self.workers as u64, std::sync::atomic::Ordering::Relaxed);
        }
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
        let spawner: Spawner<KindsOf<T>> = Box::new(move |info: WorkerInfo| {
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
    pub(crate) fn build_with<T: Task>(self, task: T) -> Result<PoolOf<T>, PoolError> {
        self.build_task(task, false, |s, w| s.fork().spawn(w))
    }

    /// Builds a pool whose workers are started by re-executing the program
    /// ([`ReexecBuilder`](crate::process::ReexecBuilder)) and run `task`
    /// (sent to each worker once, serialised: this is how shared read-only data reaches
    /// re-executed workers). `main` must call
    /// `shmflow::process::init().register_pool::<T>().run()` first thing.
    ///
    /// # Errors
    ///
    /// [`PoolError::Io`] if the shared status block cannot be created.
    pub fn build_reexec<T>(self, task: T) -> Result<PoolOf<T>, PoolError>
    where
        T: Task + Serialize + DeserializeOwned,
    {
        self.build_task(task, true, |s, w| s.reexec().spawn(w))
    }
}

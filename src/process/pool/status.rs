//! The shared status block: per worker, what it runs since when and where its time went
//! (read by the scheduler for crash attribution and timeouts, by [`WorkerInsight`], and from
//! other processes by [`PoolSnapshot::read`], for `shmflow top`).

use std::time::Duration;

use crate::shm::Counters;
use crate::OpenError;

// ---------------------------------------------------------------- shared status

/// Name tag of a pool's status block: the segment `pool-<pid>-<hex>` (see `shmflow::segments`).
pub(crate) const POOL_STATUS_TAG: &str = "pool";

/// Counters per worker slot in the shared status block.
pub(crate) const STATUS_WORDS: usize = 16;
pub(crate) mod st {
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
    /// The pool's number of workers (the same in every worker's words), so that the block
    /// describes itself to a reader in another process.
    pub const WORKERS: usize = 10;
    /// Times this worker was replaced (kept by the parent).
    pub const RESTARTS: usize = 11;
    /// Monotonic ns at which the chunk running now started; 0 when idle.
    pub const CHUNK_STARTED: usize = 12;
    /// Words the parent keeps when it starts a replacement worker.
    pub const KEPT: [usize; 2] = [WORKERS, RESTARTS];
}

pub(crate) struct Status<'a> {
    pub(crate) c: &'a Counters,
    pub(crate) base: usize,
}

impl Status<'_> {
    pub(crate) fn get(&self, w: usize) -> u64 {
        self.c
            .get(self.base + w)
            .load(std::sync::atomic::Ordering::Relaxed)
    }
    pub(crate) fn set(&self, w: usize, v: u64) {
        self.c
            .get(self.base + w)
            .store(v, std::sync::atomic::Ordering::Relaxed)
    }
    pub(crate) fn add(&self, w: usize, v: u64) {
        self.c
            .get(self.base + w)
            .fetch_add(v, std::sync::atomic::Ordering::Relaxed);
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

/// A worker pool seen from outside: what its status block says now. Made by
/// [`PoolSnapshot::read`]; `shmflow top` reads one twice and turns the counters into rates.
/// Reading it changes nothing in the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolSnapshot {
    /// The status block's name (`pool-<pid>-<hex>`).
    pub name: String,
    /// The pool's owner (the process that built it).
    pub owner: u32,
    /// Whether the owner is alive (a pid in this pid namespace).
    pub owner_alive: bool,
    /// Monotonic ns (`CLOCK_MONOTONIC`, shared by all processes of the machine) at which the
    /// block was read.
    pub sampled_ns: u64,
    /// One per worker slot.
    pub workers: Vec<WorkerSample>,
}

/// One worker of a [`PoolSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerSample {
    /// Worker id.
    pub id: usize,
    /// Pid of its current (or last) process; 0 before it first started.
    pub pid: u32,
    /// Whether that process exists.
    pub alive: bool,
    /// Its `worker_init` has finished.
    pub ready: bool,
    /// It is running a task now.
    pub busy: bool,
    /// Tasks its current process completed.
    pub tasks: u64,
    /// Times it was replaced.
    pub restarts: u64,
    /// Time its current process spent running tasks, including the chunk running now.
    pub working: Duration,
    /// Time its current process spent waiting for tasks.
    pub waiting: Duration,
}

impl PoolSnapshot {
    /// Reads the status block `name` (a name from [`crate::segments::list`] whose kind is
    /// [`crate::segments::SegmentKind::PoolStatus`]).
    ///
    /// # Errors
    ///
    /// [`OpenError::NotFound`], [`OpenError::PermissionDenied`] (the block is its owner's
    /// only), also [`OpenError::NotFound`] if `name` is not a pool status block's name, and
    /// [`OpenError::Truncated`] if it is too small for the workers it says it has.
    pub fn read(name: &str) -> Result<PoolSnapshot, OpenError> {
        let owner = Counters::owner(name, POOL_STATUS_TAG)
            .ok_or_else(|| OpenError::NotFound { name: name.into() })?;
        let c = Counters::open_whole(name).map_err(|e| OpenError::from_shm(name, e))?;
        let words = c.len();
        let size = words as u64 * 8;
        let workers = if words > st::WORKERS {
            c.get(st::WORKERS)
                .load(std::sync::atomic::Ordering::Relaxed)
        } else {
            0
        };
        let need = workers
            .saturating_mul(STATUS_WORDS as u64)
            .saturating_mul(8);
        if need > size {
            return Err(OpenError::Truncated {
                name: name.into(),
                size,
                expected: need,
            });
        }
        let s = Status { c: &c, base: 0 };
        let now = crate::sys::monotonic_ns();
        let workers = (0..workers as usize)
            .map(|w| {
                let g = |k| s.get(w * STATUS_WORDS + k);
                let pid = g(st::PID) as u32;
                let started = g(st::CHUNK_STARTED);
                let running = if started == 0 {
                    0
                } else {
                    now.saturating_sub(started)
                };
                WorkerSample {
                    id: w,
                    pid,
                    alive: pid != 0 && crate::sys::pid_alive(pid, 0),
                    ready: g(st::READY) == 1,
                    busy: g(st::CURRENT) != 0,
                    tasks: g(st::TASKS),
                    restarts: g(st::RESTARTS),
                    working: Duration::from_nanos(g(st::NS_WORKING).saturating_add(running)),
                    waiting: Duration::from_nanos(g(st::NS_WAITING)),
                }
            })
            .collect();
        Ok(PoolSnapshot {
            name: name.to_owned(),
            owner,
            owner_alive: crate::sys::pid_alive(owner, 0),
            sampled_ns: now,
            workers,
        })
    }
}

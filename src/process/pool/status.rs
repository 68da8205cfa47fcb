//! The shared status block: per worker, what it runs since when and where its time went
//! (read by the scheduler for crash attribution and timeouts, and by [`WorkerInsight`]).

use std::time::Duration;

use crate::shm::Counters;

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

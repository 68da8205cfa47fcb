//! The process layer's errors: control channels, spawning and talking to processes, pool
//! tasks and pools. Re-exported at the crate root and in [`crate::error`].

use std::io;

/// A control-channel operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The other end closed the channel (its process exited or dropped it).
    #[error("the other end of the control channel is closed")]
    Disconnected,
    /// Nothing arrived before the timeout.
    #[error("timed out waiting on the control channel")]
    Timeout,
    /// Nothing is available now (`try_recv`).
    #[error("no message is available")]
    Empty,
    /// A frame did not decode as the expected type (the two ends disagree on the message type,
    /// or the peer is not a shmflow process).
    #[error("could not decode a control message")]
    Decode(#[source] postcard::Error),
    /// A frame announced a size above the 1 GiB limit.
    #[error("control frame of {0} bytes exceeds the 1 GiB limit")]
    TooLarge(u64),
    /// Another OS error.
    #[error("control channel I/O error")]
    Io(#[source] io::Error),
}

/// Starting a process failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// `fork` was refused because the process already runs other threads: a forked child would
    /// inherit locks held by threads that do not exist in it, and can hang. Fork before starting
    /// threads, use `ReexecBuilder`, or accept the risk with `allow_threads` (a `ThreadedFork` permit).
    #[error("refusing to fork: this process has {threads} threads (fork first, then threads; or start it with ReexecBuilder, or accept the risk with allow_threads and a ThreadedFork permit)")]
    Threads {
        /// The number of threads found in `/proc/self/task`.
        threads: usize,
    },
    /// A CPU id given for pinning does not exist or is not allowed for this process.
    #[error("cannot pin to CPU(s) {cpus:?}: the online CPUs are {allowed:?}")]
    BadCpus {
        /// The CPUs asked for.
        cpus: Vec<usize>,
        /// The CPUs that are online.
        allowed: Vec<usize>,
    },
    /// The re-executed child could not start its entry point.
    #[error("the re-executed child could not start: {0}")]
    Child(String),
    /// An OS error (fork, exec, socketpair).
    #[error("could not start the process")]
    Io(#[source] io::Error),
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// It exited with this code (0 = its `run` returned `Ok`).
    Exited(i32),
    /// It was killed by a signal.
    Signaled {
        /// Signal number.
        signal: i32,
        /// Its name, e.g. `SIGKILL` (what the OOM killer sends).
        name: String,
    },
    /// It panicked.
    Panicked {
        /// The panic message.
        message: String,
        /// `file:line:column` of the panic.
        location: String,
    },
    /// Its `run` returned an error.
    Failed {
        /// The error, formatted with its sources.
        message: String,
    },
}

impl ExitReason {
    /// True for a clean exit (code 0).
    pub fn is_success(&self) -> bool {
        matches!(self, ExitReason::Exited(0))
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::Exited(c) => write!(f, "exited with code {c}"),
            ExitReason::Signaled { name, .. } => write!(f, "killed by {name}"),
            ExitReason::Panicked { message, location } => {
                write!(f, "panicked at {location}: {message}")
            }
            ExitReason::Failed { message } => write!(f, "failed: {message}"),
        }
    }
}

/// Talking to, or waiting for, a process failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// The process ended while we expected it to answer (or ended with a failure).
    #[error("process {name} (pid {pid}) {reason}")]
    Died {
        /// Process name.
        name: String,
        /// Its pid.
        pid: u32,
        /// How it ended.
        reason: ExitReason,
    },
    /// No answer before the timeout.
    #[error("timed out waiting for process {name}")]
    Timeout {
        /// Process name.
        name: String,
    },
    /// The control channel failed for another reason.
    #[error("control channel of process {name} failed")]
    Channel {
        /// Process name.
        name: String,
        /// What failed.
        #[source]
        source: ChannelError,
    },
    /// An OS error while waiting for or signalling the process.
    #[error("process {name}")]
    Io {
        /// Process name.
        name: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Why one task of a pool failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task {index} failed on worker {worker}: {kind}")]
pub struct TaskError {
    /// The task's index in its map (0-based; 0 for `apply`).
    pub index: u64,
    /// The worker that ran it.
    pub worker: usize,
    /// What happened.
    pub kind: TaskErrorKind,
}

/// What happened to a failed task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskErrorKind {
    /// The task panicked; the worker caught it and went on.
    Panicked {
        /// The panic message.
        message: String,
        /// `file:line:column`.
        location: String,
    },
    /// The worker process died while running the task (killed, e.g. by the OOM killer, or
    /// crashed); it was replaced.
    WorkerDied {
        /// How the worker ended.
        reason: ExitReason,
    },
    /// The task ran longer than the pool's task timeout; its worker was killed and replaced.
    TimedOut {
        /// The timeout.
        after: std::time::Duration,
    },
}

impl std::fmt::Display for TaskErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TaskErrorKind::Panicked { message, location } => {
                write!(f, "panicked at {location}: {message}")
            }
            TaskErrorKind::WorkerDied { reason } => write!(f, "worker {reason}"),
            TaskErrorKind::TimedOut { after } => write!(f, "timed out after {after:?}"),
        }
    }
}

/// A worker pool operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// A task failed (`map`, `apply`, `AsyncResult::get`).
    #[error(transparent)]
    Task(#[from] TaskError),
    /// A worker could not be started.
    #[error("could not start a worker")]
    Spawn(#[from] SpawnError),
    /// Workers keep dying before they finish `worker_init`: the pool gave up.
    #[error("worker {worker} died {attempts} times in a row during worker_init: {reason}")]
    WorkerInit {
        /// Worker id.
        worker: usize,
        /// Consecutive failures.
        attempts: u32,
        /// How the last attempt ended.
        reason: ExitReason,
    },
    /// `worker_init` (or a [`Task`](crate::process::Task)'s `init`) returned an error: the
    /// pool does not retry it.
    #[error("worker_init of worker {worker} failed: {message}")]
    InitFailed {
        /// Worker id.
        worker: usize,
        /// The error and its sources, as the worker reported them.
        message: String,
    },
    /// A builder setting is out of range (`workers(0)`, `chunk_size(0)`).
    #[error("invalid pool setting: {0}")]
    InvalidSetting(String),
    /// `AsyncResult::get_timeout` ran out of time.
    #[error("timed out waiting for a task result")]
    Timeout,
    /// Talking to a worker failed in a way that is not a worker death.
    #[error("worker control channel failed")]
    Process(#[source] ProcessError),
    /// An OS error (polling, shared status block).
    #[error("worker pool I/O error")]
    Io(#[source] io::Error),
}

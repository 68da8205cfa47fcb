//! What a worker runs: [`Task`], the closure task the builder makes, who a worker is.

use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::scheduler::{Proc, Types, WorkerStart};
use super::worker::Worker;
use super::WorkerPool;
use crate::process::spawn::BoxError;

/// Who a worker is, as its task sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Worker id, `0..workers` (a replacement keeps the id of the worker it replaces).
    pub id: usize,
    /// Number of workers in the pool.
    pub workers: usize,
}

/// What a worker runs. Closures passed to [`PoolBuilder`](super::PoolBuilder) are wrapped into one; implement it
/// yourself (on a `Serialize + Deserialize` type) to run a pool of re-executed workers
/// ([`PoolBuilder::build_reexec`](super::PoolBuilder::build_reexec)).
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
    /// cannot be reached) fails the pool's start with [`PoolError::InitFailed`](crate::PoolError::InitFailed), its message
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

/// The message types of task `T`.
pub(crate) type KindsOf<T> = Types<<T as Task>::Input, <T as Task>::Output, <T as Task>::ExitValue>;

/// How a pool starts worker `T` (fork or re-exec).
pub(crate) type StartFn<T> =
    fn(WorkerStart, Worker<T>) -> Result<Proc<KindsOf<T>>, crate::process::error::SpawnError>;

/// The pool that runs task `T`.
pub(crate) type PoolOf<T> =
    WorkerPool<<T as Task>::Input, <T as Task>::Output, <T as Task>::ExitValue>;

pub(crate) type InitFn<S> = Arc<dyn Fn(&WorkerInfo) -> Result<S, BoxError> + Send + Sync>;
pub(crate) type ExitFn<S, E> = Arc<dyn Fn(&WorkerInfo, S) -> E + Send + Sync>;

/// The [`Task`] of a pool built from closures (fork start method only).
pub(crate) struct FnTaskOf<I, O, S, E, F> {
    pub(crate) init: InitFn<S>,
    pub(crate) exit: Option<ExitFn<S, E>>,
    pub(crate) call: F,
    pub(crate) _t: PhantomData<fn(I) -> O>,
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

//! What a map hands out: [`Imap`], [`ImapUnordered`], [`AsyncResult`].

use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::scheduler::{Inputs, Ready};
use super::WorkerPool;
use crate::process::error::{PoolError, ProcessError};

/// An iterator that yields one value, and is `Send` when the value is.
pub(crate) struct SendOnce<I>(pub(crate) Option<I>);
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
pub struct Imap<'p, I, O, X = ()>
where
    I: Serialize + DeserializeOwned + 'static,
    O: Serialize + DeserializeOwned + 'static,
    X: Serialize + DeserializeOwned + 'static,
{
    pub(crate) pool: &'p WorkerPool<I, O, X>,
    pub(crate) job: u64,
    /// The inputs not yet made into chunks (pulled as results are taken).
    pub(crate) inputs: Inputs<'p, I>,
    pub(crate) done: bool,
    /// The chunk being handed out: index of its first task, and the results.
    pub(crate) buf: Option<(u64, Ready<O>)>,
}

impl<I, O, X> std::fmt::Debug for Imap<'_, I, O, X>
where
    I: Serialize + DeserializeOwned + 'static,
    O: Serialize + DeserializeOwned + 'static,
    X: Serialize + DeserializeOwned + 'static,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imap").field("job", &self.job).finish()
    }
}

impl<I, O, X> Imap<'_, I, O, X>
where
    I: Serialize + DeserializeOwned + 'static,
    O: Serialize + DeserializeOwned + 'static,
    X: Serialize + DeserializeOwned + 'static,
{
    pub(crate) fn next_indexed(&mut self) -> Option<Result<(u64, O), PoolError>> {
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

impl<I, O, X> Iterator for Imap<'_, I, O, X>
where
    I: Serialize + DeserializeOwned + 'static,
    O: Serialize + DeserializeOwned + 'static,
    X: Serialize + DeserializeOwned + 'static,
{
    type Item = Result<O, PoolError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_indexed().map(|r| r.map(|(_, v)| v))
    }
}

impl<I, O, X> Drop for Imap<'_, I, O, X>
where
    I: Serialize + DeserializeOwned + 'static,
    O: Serialize + DeserializeOwned + 'static,
    X: Serialize + DeserializeOwned + 'static,
{
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
pub struct ImapUnordered<'p, I, O, X = ()>(pub(crate) Imap<'p, I, O, X>)
where
    I: Serialize + DeserializeOwned + 'static,
    O: Serialize + DeserializeOwned + 'static,
    X: Serialize + DeserializeOwned + 'static;

impl<I, O, X> std::fmt::Debug for ImapUnordered<'_, I, O, X>
where
    I: Serialize + DeserializeOwned + 'static,
    O: Serialize + DeserializeOwned + 'static,
    X: Serialize + DeserializeOwned + 'static,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<I, O, X> Iterator for ImapUnordered<'_, I, O, X>
where
    I: Serialize + DeserializeOwned + 'static,
    O: Serialize + DeserializeOwned + 'static,
    X: Serialize + DeserializeOwned + 'static,
{
    type Item = Result<(u64, O), PoolError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next_indexed()
    }
}

/// The result of [`WorkerPool::apply_async`].
pub struct AsyncResult<'p, I, O, X = ()>
where
    I: Serialize + DeserializeOwned + 'static,
    O: Serialize + DeserializeOwned + 'static,
    X: Serialize + DeserializeOwned + 'static,
{
    pub(crate) pool: &'p WorkerPool<I, O, X>,
    pub(crate) job: u64,
}

impl<I, O, X> std::fmt::Debug for AsyncResult<'_, I, O, X>
where
    I: Serialize + DeserializeOwned + 'static,
    O: Serialize + DeserializeOwned + 'static,
    X: Serialize + DeserializeOwned + 'static,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncResult")
            .field("job", &self.job)
            .finish()
    }
}

impl<I, O, X> AsyncResult<'_, I, O, X>
where
    I: Serialize + DeserializeOwned + 'static,
    O: Serialize + DeserializeOwned + 'static,
    X: Serialize + DeserializeOwned + 'static,
{
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> Result<O, PoolError> {
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
    pub fn get(self) -> Result<O, PoolError> {
        self.wait(None)
    }

    /// Waits at most `timeout`; on [`PoolError::Timeout`] the handle is still usable.
    ///
    /// # Errors
    ///
    /// [`PoolError::Timeout`] and those of [`AsyncResult::get`].
    pub fn get_timeout(&self, timeout: Duration) -> Result<O, PoolError> {
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

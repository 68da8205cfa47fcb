//! Array tasks through rings: a pool whose task `i` is frame `i` of a broadcast ring.
//!
//! [`PoolBuilder::build_frames`] makes a [`WorkerPool`] whose inputs are frame sequence
//! numbers. Each worker attaches to the input ring as a broadcast reader in its init (after the
//! fork: "connect after fork"), and for task `seq` reads frame `seq` in place, skipping the
//! frames other workers handle; if an output ring is given it reserves a slot there, lets the
//! task fill it, tags it with `seq` and commits it. The control channel carries only the
//! sequence numbers and the tasks' small return values, never the frames.
//!
//! `map(0..n)` then returns the per-frame values in frame order, `imap_unordered` in completion
//! order; timeouts, crash recovery, insights and the progress bar work as for any pool. Call
//! [`WorkerPool::start`] before the producer starts writing, so every worker's reader is
//! attached when frame 0 is committed.
//!
//! # Orders that work
//!
//! A worker reads a frame only when a task asks for it, so on a lossless ring the producer can
//! run at most `slots` frames ahead of the tasks:
//!
//! - **start, then produce while mapping**: call [`WorkerPool::start`], then write frames from
//!   another thread or process while this one calls `map`/`imap` (the thread may start after
//!   `start()`, since the workers are already forked). Any number of frames streams through.
//! - **produce a batch, then map it**: write at most `slots` frames, map them, repeat. Writing
//!   more than `slots` frames before the first `map` in the same thread cannot finish: use
//!   [`Writer::reserve_timeout`], which says `Timeout` instead of waiting for ever, and map what
//!   was written.
//! - **drop-oldest input** (live video): the producer never waits; tasks for frames that were
//!   overwritten return [`FrameError::Gone`].
//!
//! For a pool of your own closures whose tasks take frames from a queue ring opened in
//! `worker_init`, and whose input iterator writes one frame per task, set
//! [`chunk_size(1)`](super::PoolBuilder::chunk_size): an automatic chunk (64 tasks for an
//! unsized iterator) pulls a whole chunk of inputs, so writes a chunk of frames, before any
//! worker gets a task, and a ring with fewer slots fills first. With one task per chunk each
//! frame's task is on its way before the next frame is written.
//!
//! A worker can only move forward in the ring: a task whose frame has already gone by (it was
//! re-dispatched after a crash to a worker that is past it, or the producer started before the
//! workers attached) returns [`FrameError::Gone`]; a task for a frame that will never come
//! (the producer detached) returns [`FrameError::Disconnected`].

use std::time::Duration;

use ndarray::IxDyn;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::builder::PoolBuilder;
use super::task::{ExitFn, InitFn, Task, WorkerInfo};
use super::WorkerPool;
use crate::array::Element;
use crate::process::error::PoolError;
use crate::process::spawn::BoxError;
use crate::ring::error::RecvTimeoutError;
use crate::ring::{ReadSlot, Reader, Ring, WriteSlot, Writer};

/// Why a frame task produced no value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum FrameError {
    /// The frame went by before this worker asked for it (the oldest it could still get is
    /// `next`).
    #[error("frame is gone: this worker's reader is already at frame {next}")]
    Gone {
        /// The next frame this worker's reader can return.
        next: u64,
    },
    /// The input ring has no writer any more and the frame was never written.
    #[error("the input ring is disconnected")]
    Disconnected,
    /// The input ring's writer died before it wrote the frame.
    #[error("the input ring's writer (pid {pid}) died")]
    WriterDied {
        /// The writer's pid.
        pid: u32,
    },
    /// The worker's reader failed otherwise (the message says how).
    #[error("the input ring's reader failed: {0}")]
    Reader(String),
    /// No frame arrived within the pool's frame wait
    /// ([`PoolBuilder::frame_wait`](super::PoolBuilder::frame_wait)).
    #[error("no frame arrived within {0:?}")]
    Timeout(Duration),
}

/// A worker's rings and user state.
pub struct FrameState<T: Element, U: Element, S> {
    /// The user's state (from `worker_init`).
    pub user: S,
    reader: Reader<T, IxDyn>,
    writer: Option<Writer<U, IxDyn>>,
    /// The next frame the reader returns.
    next: u64,
}

impl<T: Element, U: Element, S> std::fmt::Debug for FrameState<T, U, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameState")
            .field("next", &self.next)
            .finish()
    }
}

type FrameFn<T, U, S, R> =
    dyn Fn(&mut S, &WorkerInfo, &ReadSlot<T, IxDyn>, Option<&mut WriteSlot<U, IxDyn>>) -> R;

/// The [`Task`] of a frame pool (`E`: what `worker_exit` returns).
pub struct FrameTask<T: Element, U: Element, S, R, E = ()> {
    input: String,
    output: Option<String>,
    wait: Duration,
    init: InitFn<S>,
    exit: Option<ExitFn<S, E>>,
    f: Box<FrameFn<T, U, S, R>>,
}

impl<T: Element, U: Element, S, R, E> std::fmt::Debug for FrameTask<T, U, S, R, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameTask")
            .field("input", &self.input)
            .field("output", &self.output)
            .finish()
    }
}

impl<T, U, S, R, E> Task for FrameTask<T, U, S, R, E>
where
    E: Serialize + DeserializeOwned + Default + 'static,
    T: Element,
    U: Element,
    S: 'static,
    R: Serialize + DeserializeOwned + 'static,
{
    type Input = u64;
    type Output = Result<R, FrameError>;
    type State = FrameState<T, U, S>;
    type ExitValue = E;

    fn init(&self, w: &WorkerInfo) -> Result<Self::State, BoxError> {
        let ctx = |what: &str, name: &str, e: &dyn std::fmt::Display| -> BoxError {
            format!("worker {} cannot {what} ring {name:?}: {e}", w.id).into()
        };
        let reader = Ring::<T>::open(&self.input)
            .map_err(|e| ctx("open the input", &self.input, &e))?
            .reader()
            .map_err(|e| ctx("attach to the input", &self.input, &e))?;
        let writer = match &self.output {
            None => None,
            Some(o) => Some(
                Ring::<U>::open(o)
                    .map_err(|e| ctx("open the output", o, &e))?
                    .writer()
                    .map_err(|e| ctx("attach to the output", o, &e))?,
            ),
        };
        Ok(FrameState {
            user: (self.init)(w)?,
            // Frames committed before this reader attached never reach it.
            next: reader.next_seq(),
            reader,
            writer,
        })
    }

    fn call(&self, state: &mut Self::State, w: &WorkerInfo, seq: u64) -> Self::Output {
        // The input frame is released when its guard drops inside `frame`, before the reply:
        // a lossless producer may be waiting for this worker's cursor.
        self.frame(state, w, seq)
    }

    fn exit(&self, state: Self::State, w: &WorkerInfo) -> E {
        // The rings detach first: the exit hook sees only the user's state.
        let FrameState { user, .. } = state;
        match &self.exit {
            Some(f) => f(w, user),
            None => E::default(),
        }
    }
}

impl<T, U, S, R, E> FrameTask<T, U, S, R, E>
where
    T: Element,
    U: Element,
    S: 'static,
    R: Serialize + DeserializeOwned + 'static,
{
    fn frame(
        &self,
        state: &mut FrameState<T, U, S>,
        w: &WorkerInfo,
        seq: u64,
    ) -> Result<R, FrameError> {
        // The reader has already passed this frame (a task re-dispatched after a crash, or
        // tasks sent out of order): it can never come again, so say so now instead of waiting
        // for a later frame that may never be written.
        if seq < state.next {
            return Err(FrameError::Gone { next: state.next });
        }
        loop {
            let frame = match state.reader.recv_timeout(self.wait) {
                Ok(f) => f,
                Err(RecvTimeoutError::Disconnected) => return Err(FrameError::Disconnected),
                Err(RecvTimeoutError::Timeout) => return Err(FrameError::Timeout(self.wait)),
                Err(RecvTimeoutError::Corrupted { .. }) => continue,
                Err(RecvTimeoutError::WriterDied { pid, .. }) => {
                    return Err(FrameError::WriterDied { pid })
                }
                Err(e) => return Err(FrameError::Reader(e.to_string())),
            };
            state.next = frame.seq() + 1;
            if frame.seq() < seq {
                continue; // another worker's frame: skip it (released as `frame` drops)
            }
            if frame.seq() > seq {
                return Err(FrameError::Gone { next: frame.seq() });
            }
            return Ok(match state.writer.as_mut() {
                Some(writer) => {
                    let mut out = writer
                        .reserve()
                        .unwrap_or_else(|e| panic!("output ring: {e}"));
                    out.set_tag(seq);
                    out.set_timestamp_ns(frame.timestamp_ns());
                    let r = (self.f)(&mut state.user, w, &frame, Some(&mut out));
                    out.commit();
                    r
                }
                None => (self.f)(&mut state.user, w, &frame, None),
            });
        }
    }
}

impl<S: 'static, E> PoolBuilder<S, E>
where
    E: Serialize + DeserializeOwned + Default + 'static,
{
    /// Builds a pool whose task `seq` is frame `seq` of the broadcast ring `input`: each worker
    /// attaches to it as a reader in its init and reads frame `seq` in place, skipping the
    /// frames other workers take. With `output`, each task also gets a reserved slot of that
    /// ring (created beforehand by the caller, usually a queue ring read by a collector); the
    /// slot is tagged with `seq` and committed after the task returns. Call
    /// [`WorkerPool::start`] before the producer writes frame 0. A task whose frame went by
    /// returns [`FrameError::Gone`]; one whose frame never comes, [`FrameError::Disconnected`].
    ///
    /// `worker_exit` hooks run (after the worker's rings detach) and their values come back
    /// from [`WorkerPool::shutdown`]. Each task waits at most
    /// [`frame_wait`](PoolBuilder::frame_wait) (10 s by default) for its frame (see
    /// [`FrameError::Timeout`]). A task for a frame committed before its worker attached fails
    /// at once with [`FrameError::Gone`]. Unless [`chunk_size`](PoolBuilder::chunk_size) is
    /// set, tasks go one per chunk. With an output ring, at most `slots - 1` tasks (of the
    /// output ring) are in flight at once (see [`PoolBuilder::max_in_flight`]): every task's
    /// output fits even while the caller waits for an earlier one, so an ordered `imap` that
    /// drains the output ring between results never deadlocks. The caller must drain it.
    /// Likewise at most `slots - 1` (of the input ring) tasks are in flight, and each worker
    /// releases its input frame when its task returns.
    ///
    /// # Errors
    ///
    /// [`PoolError::Io`] if the pool's status block cannot be created.
    #[allow(clippy::type_complexity)]
    pub fn build_frames<T, U, R, F>(
        self,
        input: &str,
        output: Option<&str>,
        f: F,
    ) -> Result<WorkerPool<u64, Result<R, FrameError>, E>, PoolError>
    where
        T: Element,
        U: Element,
        R: Serialize + DeserializeOwned + 'static,
        F: Fn(&mut S, &WorkerInfo, &ReadSlot<T, IxDyn>, Option<&mut WriteSlot<U, IxDyn>>) -> R
            + 'static,
    {
        let task = FrameTask {
            input: input.to_owned(),
            output: output.map(str::to_owned),
            wait: self.frame_wait_or_default(),
            init: self.init_fn(),
            exit: self.exit_fn(),
            f: Box::new(f),
        };
        let mut b = if self.has_chunk_size() {
            self
        } else {
            self.chunk_size(1)
        };
        // Every task in flight may hold an input frame (a worker waits in its task for the
        // frame, and holds it while the task runs): more tasks in flight than input slots - 1
        // could have every slot of a lossless input ring held while the producer needs one.
        // (An input ring that does not exist yet is the workers' problem: their init fails.)
        let mut cap = match Ring::<T>::open(input) {
            Ok(ring) => u64::from(ring.info().slots.saturating_sub(1).max(1)),
            Err(_) => u64::MAX,
        };
        if let Some(o) = output {
            // Every task in flight may hold an output slot the caller has not drained yet.
            let slots = Ring::<U>::open(o)
                .map_err(|e| PoolError::Io(std::io::Error::other(e.to_string())))?
                .info()
                .slots;
            cap = cap.min(u64::from(slots.saturating_sub(1).max(1)));
        }
        let limit = b.max_in_flight_or(cap).min(cap);
        b = b.max_in_flight(limit);
        b.build_with(task)
    }
}

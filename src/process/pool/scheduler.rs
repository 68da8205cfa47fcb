//! The parent side: workers' slots, jobs, chunking and feeding, results in order, crash
//! and timeout handling. Everything here runs under the pool's lock.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::marker::PhantomData;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::status::{st, Status, STATUS_WORDS};
use super::task::WorkerInfo;
use crate::process::error::{ExitReason, PoolError, ProcessError, TaskError, TaskErrorKind};
use crate::process::spawn::{ForkBuilder, Process, ReexecBuilder};
use crate::process::wire::{PoolCmd, PoolCmdRef, WorkerMsg};
use crate::ring::WaitStrategy;
use crate::shm::Counters;
use crate::sys;
use crate::sys::process::ThreadedFork;

// ---------------------------------------------------------------- the parent side

/// The message types of a pool (what its tasks take and return, what its workers' exit hooks
/// return): all the parent side needs to know of its task.
pub(crate) trait Kinds: 'static {
    type Input: Serialize + DeserializeOwned + 'static;
    type Output: Serialize + DeserializeOwned + 'static;
    type ExitValue: Serialize + DeserializeOwned + 'static;
}

/// [`Kinds`] of a `WorkerPool<I, O, X>`.
pub(crate) struct Types<I, O, X>(PhantomData<fn(I) -> (O, X)>);

impl<I, O, X> Kinds for Types<I, O, X>
where
    I: Serialize + DeserializeOwned + 'static,
    O: Serialize + DeserializeOwned + 'static,
    X: Serialize + DeserializeOwned + 'static,
{
    type Input = I;
    type Output = O;
    type ExitValue = X;
}

pub(crate) type Proc<K> =
    Process<PoolCmd<<K as Kinds>::Input>, WorkerMsg<<K as Kinds>::Output, <K as Kinds>::ExitValue>>;
/// How one worker is to be started (what the pool's settings say for worker `id`).
pub(crate) struct WorkerStart {
    pub(crate) name: String,
    pub(crate) cpus: Option<Vec<usize>>,
    pub(crate) allow_threads: Option<ThreadedFork>,
    pub(crate) wait: WaitStrategy,
}

impl WorkerStart {
    pub(crate) fn fork(self) -> ForkBuilder {
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
    pub(crate) fn reexec(self) -> ReexecBuilder {
        let mut b = ReexecBuilder::new(self.name).wait_strategy(self.wait);
        if let Some(c) = self.cpus {
            b = b.cpus(c);
        }
        b
    }
}

pub(crate) type Spawner<K> =
    Box<dyn FnMut(WorkerInfo) -> Result<Proc<K>, crate::process::error::SpawnError>>;

pub(crate) struct Chunk<I> {
    pub(crate) job: u64,
    pub(crate) first: u64,
    pub(crate) items: Vec<I>,
}

pub(crate) struct Slot<K: Kinds> {
    pub(crate) proc: Option<Proc<K>>,
    pub(crate) in_flight: VecDeque<Chunk<K::Input>>,
    /// Tasks sent to the current process (for the lifespan cap).
    pub(crate) assigned: u64,
    pub(crate) restarts: u64,
    pub(crate) init_failures: u32,
    pub(crate) timed_out: bool,
    pub(crate) exited: bool,
}

/// Results of consecutive tasks: the successful outputs in order, and the failures with
/// their offsets (ascending).
pub(crate) struct Ready<O> {
    pub(crate) outputs: std::vec::IntoIter<O>,
    pub(crate) failures: VecDeque<(u64, TaskError)>,
    pub(crate) pos: u64,
}

impl<O> Ready<O> {
    pub(crate) fn len(&self) -> u64 {
        (self.outputs.len() + self.failures.len()) as u64
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub(crate) fn pop(&mut self) -> Option<Result<O, TaskError>> {
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
pub(crate) struct Bar(#[cfg(feature = "progress")] indicatif::ProgressBar);

impl Bar {
    pub(crate) fn new(len: u64) -> Bar {
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

    pub(crate) fn inc(&self, n: u64) {
        #[cfg(feature = "progress")]
        self.0.inc(n);
        #[cfg(not(feature = "progress"))]
        let _ = n;
    }

    pub(crate) fn finish_and_clear(&self) {
        #[cfg(feature = "progress")]
        self.0.finish_and_clear();
    }
}

/// One map/imap/apply in progress.
/// The inputs a job's tasks are made from: owned by the pool (an `apply_async` input), or
/// kept by the caller's [`Imap`](super::Imap) (which may borrow them) and handed in by [`Inner::take`].
pub(crate) type Inputs<'a, I> = Box<dyn Iterator<Item = I> + 'a>;

pub(crate) struct Job<K: Kinds> {
    pub(crate) feeder: Option<Inputs<'static, K::Input>>,
    /// The caller's iterator (see [`Inputs`]) may still yield inputs.
    pub(crate) external_open: bool,
    pub(crate) fed: u64,
    pub(crate) delivered: u64,
    pub(crate) chunk: usize,
    /// Results by the index of their first task.
    pub(crate) ready: BTreeMap<u64, Ready<K::Output>>,
    pub(crate) next: u64,
    pub(crate) ordered: bool,
    pub(crate) progress: Option<Bar>,
}

impl<K: Kinds> Job<K> {
    pub(crate) fn finished(&self) -> bool {
        self.feeder.is_none() && !self.external_open && self.delivered == self.fed
    }
}

pub(crate) struct Inner<K: Kinds> {
    pub(crate) slots: Vec<Slot<K>>,
    pub(crate) spawner: Spawner<K>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) jobs: HashMap<u64, Job<K>>,
    pub(crate) next_job: u64,
    pub(crate) pending: VecDeque<Chunk<K::Input>>,
    pub(crate) exit_values: Vec<K::ExitValue>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) lifespan: Option<u64>,
    pub(crate) chunk_size: Option<usize>,
    pub(crate) progress: bool,
    pub(crate) max_in_flight: Option<u64>,
    pub(crate) error: Option<PoolError>,
    /// How `pump` waits for results (spin over the workers' sockets, then `poll`).
    pub(crate) wait: WaitStrategy,
}

pub(crate) const PREFETCH: usize = 2;

impl<K: Kinds> Inner<K> {
    pub(crate) fn status(&self) -> Status<'_> {
        Status {
            c: &self.counters,
            base: 0,
        }
    }

    pub(crate) fn status_of(&self, w: usize, word: usize) -> u64 {
        self.status().get(w * STATUS_WORDS + word)
    }

    pub(crate) fn start(&mut self, w: usize) -> Result<(), PoolError> {
        for k in (0..STATUS_WORDS).filter(|k| !st::KEPT.contains(k)) {
            self.status().set(w * STATUS_WORDS + k, 0);
        }
        self.status()
            .set(w * STATUS_WORDS + st::RESTARTS, self.slots[w].restarts);
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

    pub(crate) fn ensure_workers(&mut self) -> Result<(), PoolError> {
        for w in 0..self.slots.len() {
            if self.slots[w].proc.is_none() {
                self.start(w)?;
            }
        }
        Ok(())
    }

    pub(crate) fn auto_chunk(&self, len: Option<usize>) -> usize {
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

    pub(crate) fn outstanding_limit(&self, job: &Job<K>) -> u64 {
        let natural = (self.slots.len() * (PREFETCH + 2) * job.chunk) as u64;
        self.max_in_flight
            .map_or(natural, |m| natural.min(m.max(1)))
    }

    /// Makes the next chunk from the jobs' inputs (oldest job first), up to `cap` tasks.
    pub(crate) fn next_chunk(&mut self, cap: u64) -> Option<Chunk<K::Input>> {
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
            let items: Vec<K::Input> = feeder.take(limit).collect();
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
    pub(crate) fn room(&self, w: usize) -> u64 {
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
    pub(crate) fn feed(&mut self) -> Result<(), PoolError> {
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

    pub(crate) fn deliver(&mut self, job: u64, first: u64, ready: Ready<K::Output>) {
        if let Some(j) = self.jobs.get_mut(&job) {
            if !ready.is_empty() {
                j.ready.insert(first, ready);
            }
        }
    }

    pub(crate) fn on_message(&mut self, w: usize, msg: WorkerMsg<K::Output, K::ExitValue>) {
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
    pub(crate) fn worker_died(&mut self, w: usize, err: ProcessError) -> Result<(), PoolError> {
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
        let in_flight: Vec<Chunk<K::Input>> = slot.in_flight.drain(..).collect();
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
        let mut redo: Vec<Chunk<K::Input>> = Vec::new();
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
    pub(crate) fn pump(&mut self, wait: Duration) -> Result<(), PoolError> {
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
            crate::process::control::wait_any(&fds, Some(wait)).map_err(PoolError::Io)?
        };
        for k in ready {
            self.drain(alive[k])?;
        }
        self.check_timeouts();
        Ok(())
    }

    /// Handles every whole message worker `w` has sent; true if there was one.
    pub(crate) fn drain(&mut self, w: usize) -> Result<bool, PoolError> {
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
    pub(crate) fn spin(&mut self, alive: &[usize], limit: Duration) -> Result<bool, PoolError> {
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
            crate::process::control::spin_pause(&mut tries);
        }
    }

    pub(crate) fn check_timeouts(&mut self) {
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
    pub(crate) fn top_up(&mut self, job: u64, it: &mut Inputs<'_, K::Input>) {
        let Some(j) = self.jobs.get(&job) else { return };
        let limit = self.outstanding_limit(j);
        loop {
            let j = self.jobs.get_mut(&job).expect("checked");
            if !j.external_open || j.fed - j.delivered >= limit {
                return;
            }
            let items: Vec<K::Input> = it.by_ref().take(j.chunk).collect();
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
    pub(crate) fn new_job(
        &mut self,
        inputs: Option<Inputs<'static, K::Input>>,
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
    pub(crate) fn take(
        &mut self,
        job: u64,
        deadline: Option<Instant>,
        mut inputs: Option<&mut Inputs<'_, K::Input>>,
    ) -> Result<Option<(u64, Ready<K::Output>)>, PoolError> {
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

    pub(crate) fn shutdown(&mut self, grace: Duration) -> Vec<K::ExitValue> {
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
                        let _ = crate::process::control::wait_any(
                            &[&p],
                            Some(Duration::from_millis(50)),
                        );
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

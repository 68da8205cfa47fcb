//! The reading end of a ring and the frame guard it hands out.
//!
//! A [`Reader`] owns an attached reader entry (through an `Arc` it shares with its guards); a
//! [`ReadSlot`] owns one held frame and releases it when it drops, on whatever thread that is.
//! This file owns the reader's settings, its `next` sequence and how it waits; the frames it
//! holds, the pins they use and the cursor they allow it to publish (which never moves
//! backwards, whatever order the guards drop in) are kept by
//! [`HeldSet`](super::protocol::held), behind the reader's lock.

use std::marker::PhantomData;
use std::ops::Deref;
#[cfg(not(shmflow_no_doorbell))]
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ndarray::{ArrayRef, ArrayView, Dimension, IxDyn};

use super::endpoint::Endpoint;
use super::protocol::held::HeldSet;
use super::protocol::{Grant, Role, Writers};
use super::shared::{Shared, MAX_PINS};
use super::wait::{self, Step, WaitEnd, WaitStrategy};
use super::{deadline_after, Mode, Ring};
use crate::array::{view, Element};
use crate::primitive::Ordering::*;
use crate::ring::error::{RecvError, RecvTimeoutError, TryRecvError};

/// What a reader's entry, settings and guards share.
pub(crate) struct ReaderCore {
    ep: Endpoint,
    max_held: u32,
    /// Broadcast: frames are protected by pins (drop-oldest, lossy), not by the cursor.
    pins: bool,
    /// Broadcast: the next sequence to read. Written only by the reader (under `held`).
    next: std::sync::atomic::AtomicU64,
    held: Mutex<HeldSet>,
    /// Readable when a frame is committed after an `Empty` (armed), or when every writer has
    /// gone (see [`super::liveness`]).
    #[cfg(not(shmflow_no_doorbell))]
    doorbell: super::liveness::ReaderFd,
}

impl std::fmt::Debug for ReaderCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReaderCore")
            .field("endpoint", &self.ep)
            .field("max_held", &self.max_held)
            .finish()
    }
}

impl ReaderCore {
    fn shared(&self) -> &Shared {
        self.ep.shared()
    }

    fn lock(&self) -> MutexGuard<'_, HeldSet> {
        // A guard dropped while unwinding cannot leave the `HeldSet` inconsistent (every update is
        // a few plain stores), so a poisoned lock is still good.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes a lossless reader's cursor: the lowest frame held, or `next`.
    fn publish(&self, h: &HeldSet) {
        self.shared()
            .held_publish(self.ep.index, h, self.next.load(Relaxed));
    }

    /// Gives a held (or just granted) frame back.
    fn release(&self, g: Grant, pin: Option<usize>) {
        let s = self.shared();
        let mut h = self.lock();
        s.held_release(self.ep.index, &mut h, g, pin, self.next.load(Relaxed));
        drop(h);
        // Broadcast: every waiting writer may now go on (a cursor moved); queue: one slot.
        wait::wake(s, Role::Writer, s.layout.mode != Mode::Queue);
    }
}

/// The reading end of a ring. Made by [`Ring::reader`], [`Ring::lossy_reader`] or
/// [`ReaderBuilder::attach`].
///
/// [`recv`](Reader::recv) hands out a frame as a [`ReadSlot`] that reads the shared memory in
/// place and releases the frame when it is dropped. A reader may hold up to `max_held` frames
/// at once (1 unless attached with more, see [`ReaderBuilder::max_held`]); asking for one more
/// is an immediate [`RecvError::TooManyHeld`], never a wait. In broadcast mode every reader
/// sees every frame committed after it attached (drop-oldest and lossy readers: unless they
/// fall behind; see [`ReadSlot::missed`]). In queue mode each frame goes to one reader.
///
/// A reader belongs to the process that attached it: used in another process (a forked child)
/// every call returns `WrongProcess`, and dropping it there leaves the ring untouched.
///
/// # Polling
///
/// A reader implements [`AsFd`]: register the fd with `poll`/epoll/mio/tokio for readability.
/// After [`try_recv`](Reader::try_recv) has returned [`TryRecvError::Empty`] the fd becomes
/// readable when the next frame is committed, and whenever no writer is attached any more
/// (it detached or died: the kernel closes its end); call `try_recv` until it returns `Empty`
/// before waiting on the fd again. Once the stream has ended the fd stays readable (like a
/// socket at end of file) until a writer attaches again.
pub struct Reader<T: Element, D: Dimension = IxDyn> {
    core: Arc<ReaderCore>,
    ring: Ring<T, D>,
}

impl<T: Element, D: Dimension> std::fmt::Debug for Reader<T, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("ring", &self.ring.name())
            .field("index", &self.core.ep.index)
            .field("max_held", &self.core.max_held)
            .finish()
    }
}

/// Settings for a new reader. Made by [`Ring::attach_reader`].
///
/// # Examples
///
/// ```
/// use shmflow::Ring;
/// # let name = format!("doc-reader-builder-{}", std::process::id());
/// let ring = Ring::<u8>::create(&name).shape([4]).slots(4).build()?;
/// let mut reader = ring.attach_reader().max_held(2).attach()?;
/// let mut writer = ring.writer()?;
/// writer.send(&ndarray::arr1(&[1u8, 2, 3, 4]).into_dyn())?;
/// writer.send(&ndarray::arr1(&[5u8, 6, 7, 8]).into_dyn())?;
/// let a = reader.recv()?;
/// let b = reader.recv()?; // two frames held at once
/// assert_eq!((a[[0]], b[[0]]), (1, 5));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a ReaderBuilder attaches nothing until .attach()"]
pub struct ReaderBuilder<T: Element, D: Dimension = IxDyn> {
    ring: Ring<T, D>,
    max_held: u32,
    lossy: bool,
}

impl<T: Element, D: Dimension> ReaderBuilder<T, D> {
    pub(crate) fn new(ring: Ring<T, D>) -> Self {
        ReaderBuilder {
            ring,
            max_held: 1,
            lossy: false,
        }
    }

    /// How many frames the reader may hold at once (default 1). At most `slots - 1`, and at
    /// most 16 for readers that pin their frames (drop-oldest rings, lossy readers).
    pub fn max_held(mut self, n: u32) -> Self {
        self.max_held = n;
        self
    }

    /// A lossy reader of a lossless (block) ring: the writer does not wait for it, it only
    /// never overwrites the frames this reader holds. The reader skips what it could not keep
    /// up with, like a drop-oldest reader ([`ReadSlot::missed`]). For a live preview beside
    /// lossless consumers. In other modes this changes nothing.
    pub fn lossy(mut self, lossy: bool) -> Self {
        self.lossy = lossy;
        self
    }

    /// Attaches the reader.
    ///
    /// # Errors
    ///
    /// [`AttachError::TooManyReaders`](crate::AttachError::TooManyReaders) when every reader
    /// entry is held by a live process; [`AttachError::MaxHeld`](crate::AttachError::MaxHeld);
    /// [`AttachError::WrongProcess`](crate::AttachError::WrongProcess) when the ring handle
    /// came from another process; [`AttachError::Io`](crate::AttachError::Io) if the
    /// doorbell or the liveness lock cannot be set up.
    pub fn attach(self) -> Result<Reader<T, D>, crate::ring::error::AttachError> {
        let ring = self.ring;
        let l = &ring.shared().layout;
        let lossy = self.lossy && l.mode == Mode::Broadcast(super::Backpressure::Block);
        let pins = lossy || l.mode == Mode::Broadcast(super::Backpressure::DropOldest);
        let mut max = l.slot_count.saturating_sub(1).max(1);
        if pins {
            max = max.min(MAX_PINS as u32);
        }
        if self.max_held == 0 || self.max_held > max {
            return Err(crate::ring::error::AttachError::MaxHeld {
                requested: self.max_held,
                max,
            });
        }
        let a = ring.attach_endpoint(Role::Reader, lossy, self.max_held)?;
        #[cfg(not(shmflow_no_doorbell))]
        let doorbell = a.reader_fd.expect("readers of rings get an fd");
        let ep = a.endpoint;
        Ok(Reader {
            core: Arc::new(ReaderCore {
                next: std::sync::atomic::AtomicU64::new(a.cursor),
                max_held: self.max_held,
                pins,
                held: Mutex::new(HeldSet::default()),
                #[cfg(not(shmflow_no_doorbell))]
                doorbell,
                ep,
            }),
            ring,
        })
    }
}

/// Which frame a receive asks for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    Next,
    Latest,
}

impl<T: Element, D: Dimension> Reader<T, D> {
    /// The ring this reader belongs to.
    pub fn ring(&self) -> &Ring<T, D> {
        &self.ring
    }

    /// How blocking calls wait (default: spin 50 µs, then sleep).
    pub fn set_wait_strategy(&mut self, strategy: WaitStrategy) {
        self.core.ep.waiter.set_strategy(strategy);
    }

    /// How often a blocked reader checks that the writers are alive (default 100 ms): a dead
    /// writer turns into [`RecvError::WriterDied`] (after the committed frames) within about
    /// this time.
    pub fn set_liveness_interval(&mut self, interval: Duration) {
        self.core.ep.waiter.set_liveness(interval);
    }

    /// The liveness interval (see `set_liveness_interval`).
    pub fn liveness_interval(&self) -> Duration {
        self.core.ep.waiter.liveness()
    }

    /// How many frames this reader may hold at once.
    pub fn max_held(&self) -> u32 {
        self.core.max_held
    }

    /// How many frames this reader holds now.
    pub fn held(&self) -> u32 {
        self.core.lock().count()
    }

    /// Total frames this reader missed (drop-oldest, lossy readers, skips; 0 otherwise).
    pub fn missed(&self) -> u64 {
        self.core
            .shared()
            .peer(self.core.ep.index)
            .missed
            .load(Relaxed)
    }

    /// Broadcast: the sequence number of the next frame [`recv`](Reader::recv) returns (for
    /// a new reader, the next frame the writer commits: frames committed before it attached
    /// never reach it). Queue readers take whatever frame is next, so there it means nothing.
    pub fn next_seq(&self) -> u64 {
        self.core.next.load(Relaxed)
    }

    /// Frames this reader has received.
    pub fn frames_read(&self) -> u64 {
        self.core
            .shared()
            .peer(self.core.ep.index)
            .frames
            .load(Relaxed)
    }

    /// Skips every committed frame not received yet: the next `recv` returns the next frame
    /// the writer commits (broadcast; for live displays that only want the newest frame; see
    /// also [`recv_latest`](Reader::recv_latest)). Frames held stay held. Returns how many
    /// frames were skipped. Does nothing in queue mode, or in another process.
    pub fn skip_to_latest(&mut self) -> u64 {
        let core = &*self.core;
        let s = core.shared();
        if s.layout.mode == Mode::Queue || core.ep.check_process().is_err() {
            return 0;
        }
        let w = s.control().write_seq.v.load(Acquire);
        let h = core.lock();
        let next = core.next.load(Relaxed);
        if w <= next {
            return 0;
        }
        core.next.store(w, Relaxed);
        s.peer(core.ep.index).missed.fetch_add(w - next, Relaxed);
        core.publish(&h);
        drop(h);
        // A lossless writer may be waiting for us.
        wait::wake(s, Role::Writer, true);
        w - next
    }

    fn attempt(core: &ReaderCore, want: Want, pin: Option<usize>) -> Step<Grant> {
        let shared = core.shared();
        let index = core.ep.index;
        let take = || match shared.layout.mode {
            Mode::Queue => shared.q_try_acquire(index),
            Mode::Broadcast(_) => {
                let mut next = core.next.load(Relaxed);
                if want == Want::Latest {
                    let w = shared.control().write_seq.v.load(Acquire);
                    if w > next + 1 {
                        next = w - 1;
                    }
                }
                shared.bcast_try_acquire(index, next, pin).map(|mut g| {
                    // Frames passed over on the way to the latest count as missed too.
                    g.extra = g.seq - core.next.load(Relaxed);
                    if want == Want::Latest && g.extra > 0 {
                        let skipped = next - core.next.load(Relaxed);
                        shared.peer(index).missed.fetch_add(skipped, Relaxed);
                    }
                    g
                })
            }
        };
        if let Some(g) = take() {
            return Step::Ready(g);
        }
        match shared.writers() {
            Writers::NotYet | Writers::Attached => Step::Pending,
            // A frame may have been committed just before the writer left.
            gone => match take() {
                Some(g) => Step::Ready(g),
                None => Step::Fail(match gone {
                    Writers::Died { pid, frames } => WaitEnd::WriterDied { pid, frames },
                    _ => WaitEnd::Disconnected,
                }),
            },
        }
    }

    /// Reserves room for one more held frame (and a pin), or says why not.
    fn begin(&self) -> Result<Option<usize>, RecvError> {
        let core = &*self.core;
        core.ep
            .check_process()
            .map_err(|owner| RecvError::WrongProcess { owner })?;
        let pinning = core.pins && core.shared().layout.mode != Mode::Queue;
        core.lock()
            .begin(core.max_held, pinning)
            .map_err(|_| RecvError::TooManyHeld {
                max_held: core.max_held,
            })
    }

    /// Undoes [`Reader::begin`] when no frame was granted.
    fn abandon(&self, pin: Option<usize>) {
        self.core.lock().abandon(pin);
    }

    /// Records a granted frame as held, checks its metadata (another process wrote it) and
    /// builds the guard, or releases the frame and reports it corrupted.
    fn finish(&self, g: Grant, pin: Option<usize>) -> Result<ReadSlot<T, D>, u64> {
        let core = &self.core;
        let shared = core.shared();
        let r = core.ep.index;
        {
            let mut h = core.lock();
            let next = shared.held_granted(r, &mut h, g, core.next.load(Relaxed));
            core.next.store(next, Relaxed);
        }
        shared.peer(r).frames.fetch_add(1, Relaxed);
        let l = &shared.layout;
        let m = shared.meta(g.slot);
        // `ndim` comes from another process: compare it, never size anything by it (a hostile
        // 2^32 - 1 would be a 32 GiB allocation, which aborts).
        let ndim = m.ndim.load(Relaxed) as usize;
        let mut shape = Vec::with_capacity(l.max_shape.len());
        let mut ok = ndim == l.max_shape.len();
        if ok {
            for (i, max) in l.max_shape.iter().enumerate() {
                let d = m.shape[i].load(Relaxed);
                if d > *max as u64 {
                    ok = false;
                    break;
                }
                shape.push(d as usize);
            }
        }
        let elems: usize = shape.iter().product();
        if !ok || m.len.load(Relaxed) != (elems * std::mem::size_of::<T>()) as u64 {
            core.release(g, pin);
            return Err(g.seq);
        }
        let (timestamp_ns, tag) = (m.timestamp_ns.load(Relaxed), m.tag.load(Relaxed));
        let ptr = shared.payload(g.slot) as *const T;
        // SAFETY: the protocol granted us this slot for reading: it is FULL with sequence
        // g.seq and no writer reuses it until the guard below releases it (queue: READING(us);
        // block: our published cursor is at most g.seq; drop-oldest and lossy: our pin names
        // the slot). The shape fits the slot (each dimension <= max, checked above), the
        // payload is 64-byte aligned, and every bit pattern is a valid T (Element contract).
        // The view is stored with a 'static lifetime but never handed out as such: callers
        // only get views that borrow the guard, and the guard keeps the mapping alive (its
        // Arc holds the ring).
        let view: ArrayView<'static, T, D> = unsafe { view::frame(ptr, &shape) };
        Ok(ReadSlot {
            core: Arc::clone(core),
            grant: g,
            pin,
            view,
            shape,
            timestamp_ns,
            tag,
            _t: PhantomData,
        })
    }

    fn receive(&mut self, want: Want, deadline: Option<u64>) -> Result<ReadSlot<T, D>, WaitEnd2> {
        let pin = self.begin().map_err(WaitEnd2::Recv)?;
        let core = Arc::clone(&self.core);
        let r = core
            .ep
            .waiter
            .wait(core.shared(), deadline, || Self::attempt(&core, want, pin));
        match r {
            Ok(g) => self
                .finish(g, pin)
                .map_err(|seq| WaitEnd2::Corrupted { seq }),
            Err(e) => {
                self.abandon(pin);
                Err(WaitEnd2::End(e))
            }
        }
    }

    /// Returns the next frame if one is ready; never blocks. When it returns `Empty`, the
    /// reader's fd (see [`AsFd`]) is armed: it becomes readable when a frame arrives.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`]; [`TryRecvError::Disconnected`] (the writer detached and
    /// nothing is left) or [`TryRecvError::WriterDied`] (it died); [`TryRecvError::Corrupted`]
    /// (a frame with invalid metadata was skipped); [`TryRecvError::TooManyHeld`];
    /// [`TryRecvError::WrongProcess`].
    pub fn try_recv(&mut self) -> Result<ReadSlot<T, D>, TryRecvError> {
        self.try_take(Want::Next)
    }

    /// As [`try_recv`](Reader::try_recv), but returns the newest committed frame this reader
    /// has not received, skipping (and counting as missed) the older ones. Queue mode: the
    /// same as `try_recv`.
    ///
    /// # Errors
    ///
    /// As for [`Reader::try_recv`].
    pub fn try_recv_latest(&mut self) -> Result<ReadSlot<T, D>, TryRecvError> {
        self.try_take(Want::Latest)
    }

    fn try_take(&mut self, want: Want) -> Result<ReadSlot<T, D>, TryRecvError> {
        let pin = self.begin()?;
        let core = Arc::clone(&self.core);
        let shared = core.shared();
        let mut step = Self::attempt(&core, want, pin);
        if matches!(step, Step::Pending) && (core.ep.waiter.maybe_tick(shared) || self.hung_up()) {
            step = Self::attempt(&core, want, pin);
        }
        if matches!(step, Step::Pending) {
            self.arm();
            // Re-check after arming: a frame committed in between would not ring the doorbell.
            step = Self::attempt(&core, want, pin);
        }
        let end = match step {
            Step::Ready(g) => {
                return self
                    .finish(g, pin)
                    .map_err(|seq| TryRecvError::Corrupted { seq })
            }
            Step::Pending => TryRecvError::Empty,
            Step::Fail(WaitEnd::Disconnected) => TryRecvError::Disconnected,
            Step::Fail(WaitEnd::WriterDied { pid, frames }) => {
                TryRecvError::WriterDied { pid, frames }
            }
            Step::Fail(_) => TryRecvError::Empty,
        };
        self.abandon(pin);
        Err(end)
    }

    /// Every writer's end of the reader's liveness fd is closed (they detached or died):
    /// check the writers now rather than at the next liveness interval.
    fn hung_up(&self) -> bool {
        #[cfg(not(shmflow_no_doorbell))]
        {
            if self.core.doorbell.writers_gone() {
                self.core.ep.waiter.tick_now(self.core.shared());
                return true;
            }
        }
        false
    }

    #[cfg(not(shmflow_no_doorbell))]
    fn arm(&mut self) {
        let shared = self.core.shared();
        let index = self.core.ep.index;
        // Still armed from an earlier `Empty`: the doorbell has not been rung since, so there
        // is nothing to drain (this keeps a polling loop of `try_recv` free of syscalls).
        if shared.peer(index).flags.load(SeqCst) & super::protocol::FLAG_ARMED != 0 {
            return;
        }
        self.core.doorbell.drain();
        wait::arm(shared, index);
    }

    #[cfg(shmflow_no_doorbell)]
    fn arm(&mut self) {}

    /// Waits for the next frame.
    ///
    /// # Errors
    ///
    /// [`RecvError::Disconnected`] once the writer has detached and every committed frame has
    /// been read; [`RecvError::WriterDied`] when it died instead (found within the liveness
    /// interval); [`RecvError::Corrupted`]; [`RecvError::TooManyHeld`] at once when the reader
    /// already holds `max_held` frames; [`RecvError::WrongProcess`].
    pub fn recv(&mut self) -> Result<ReadSlot<T, D>, RecvError> {
        self.receive(Want::Next, None).map_err(WaitEnd2::into_recv)
    }

    /// Returns the newest committed frame this reader has not received yet, without waiting
    /// if there is one (older ones are skipped and counted in [`Reader::missed`]); otherwise
    /// waits for the next one. No call moves the reader backwards. Queue mode: the same as
    /// [`recv`](Reader::recv).
    ///
    /// # Errors
    ///
    /// As for [`Reader::recv`].
    pub fn recv_latest(&mut self) -> Result<ReadSlot<T, D>, RecvError> {
        self.receive(Want::Latest, None)
            .map_err(WaitEnd2::into_recv)
    }

    /// Waits at most `timeout` for the next frame.
    ///
    /// # Errors
    ///
    /// [`RecvTimeoutError::Timeout`], and the errors of [`Reader::recv`].
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<ReadSlot<T, D>, RecvTimeoutError> {
        self.receive(Want::Next, Some(deadline_after(timeout)))
            .map_err(WaitEnd2::into_timeout)
    }

    /// As [`recv_latest`](Reader::recv_latest), waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// As for [`Reader::recv_timeout`].
    pub fn recv_latest_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<ReadSlot<T, D>, RecvTimeoutError> {
        self.receive(Want::Latest, Some(deadline_after(timeout)))
            .map_err(WaitEnd2::into_timeout)
    }
}

/// How a receive ended without a frame.
enum WaitEnd2 {
    Recv(RecvError),
    End(WaitEnd),
    Corrupted { seq: u64 },
}

impl WaitEnd2 {
    fn into_recv(self) -> RecvError {
        match self {
            WaitEnd2::Recv(e) => e,
            WaitEnd2::Corrupted { seq } => RecvError::Corrupted { seq },
            WaitEnd2::End(WaitEnd::WriterDied { pid, frames }) => {
                RecvError::WriterDied { pid, frames }
            }
            WaitEnd2::End(_) => RecvError::Disconnected,
        }
    }

    fn into_timeout(self) -> RecvTimeoutError {
        match self {
            WaitEnd2::End(WaitEnd::Timeout) => RecvTimeoutError::Timeout,
            other => other.into_recv().into(),
        }
    }
}

#[cfg(not(shmflow_no_doorbell))]
impl<T: Element, D: Dimension> AsFd for Reader<T, D> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.core.doorbell.as_fd()
    }
}

/// A frame held for reading: derefs to an [`ArrayRef`] of the shared memory, in place, and
/// releases the frame when dropped.
///
/// The guard owns its claim on the slot: it does not borrow the [`Reader`], is `Send`, and can
/// be moved to another thread or held across an `.await`; the reader may be dropped first (it
/// stays attached until its last frame is released). Views ([`view`](ReadSlot::view), the
/// slice forms, and everything reached through `Deref`) borrow the guard, so none outlives it.
///
/// # Examples
///
/// ```
/// use shmflow::Ring;
/// # let name = format!("doc-read-slot-{}", std::process::id());
/// let ring = Ring::<u16>::create(&name).shape([2, 3]).build()?;
/// let mut reader = ring.reader()?;
/// let mut writer = ring.writer()?;
/// let mut slot = writer.reserve()?;
/// slot.view_mut().fill(7);
/// slot.commit();
///
/// let frame = reader.recv()?;
/// let sum: u16 = frame.sum();          // ArrayRef methods through Deref
/// assert_eq!(sum, 42);
/// let owned = frame.to_owned();        // keep the data after releasing the frame
/// drop(frame);                         // the slot goes back to the writer now
/// assert_eq!(owned[[1, 2]], 7);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ReadSlot<T: Element, D: Dimension = IxDyn> {
    core: Arc<ReaderCore>,
    grant: Grant,
    pin: Option<usize>,
    /// Never handed out with this lifetime: see `Reader::finish`.
    view: ArrayView<'static, T, D>,
    shape: Vec<usize>,
    timestamp_ns: u64,
    tag: u64,
    _t: PhantomData<fn() -> T>,
}

impl<T: Element, D: Dimension> std::fmt::Debug for ReadSlot<T, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadSlot")
            .field("seq", &self.grant.seq)
            .field("shape", &self.shape)
            .field("missed", &self.grant.extra)
            .field("tag", &self.tag)
            .finish()
    }
}

impl<T: Element, D: Dimension> ReadSlot<T, D> {
    /// The frame's sequence number (0 for the ring's first frame).
    pub fn seq(&self) -> u64 {
        self.grant.seq
    }
    /// Frames this reader missed just before this one (drop-oldest, lossy, `recv_latest`;
    /// otherwise 0).
    pub fn missed(&self) -> u64 {
        self.grant.extra
    }
    /// The frame's shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// The writer's timestamp (ns, `CLOCK_REALTIME` unless the writer set another).
    pub fn timestamp_ns(&self) -> u64 {
        self.timestamp_ns
    }
    /// The writer's tag.
    pub fn tag(&self) -> u64 {
        self.tag
    }
    /// The frame's elements in row-major order.
    pub fn as_slice(&self) -> &[T] {
        self.view
            .as_slice()
            .expect("views over slots are in standard layout")
    }
    /// The frame's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        crate::array::as_bytes(self.as_slice())
    }
    /// A view of the frame that borrows this guard.
    pub fn view(&self) -> ArrayView<'_, T, D> {
        self.view.view()
    }
}

impl<T: Element, D: Dimension> Deref for ReadSlot<T, D> {
    type Target = ArrayRef<T, D>;
    fn deref(&self) -> &ArrayRef<T, D> {
        &self.view
    }
}

impl<T: Element, D: Dimension> Drop for ReadSlot<T, D> {
    fn drop(&mut self) {
        if self.core.ep.owner.is_current() {
            self.core.release(self.grant, self.pin);
        }
        // In another process (the guard was inherited through fork) the frame is the
        // parent's: leave it.
    }
}

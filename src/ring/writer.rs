//! The writing end of a ring and the slot guard it hands out.
//!
//! A [`Writer`] owns an attached writer entry (through an `Arc` it shares with its guard); a
//! [`WriteSlot`] owns one reserved slot: committed by [`WriteSlot::commit`], given back
//! (aborted) when dropped uncommitted, on whatever thread that is. A writer has at most one
//! slot reserved at a time. This file owns that reservation and the writer's end of the
//! writer FIFO (see [`super::liveness`]).

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use ndarray::{ArrayRef, ArrayView, ArrayViewMut, Dimension, IxDyn};

use super::endpoint::Endpoint;
use super::liveness::WriterHold;
use super::protocol::{Blocked, Grant, Role};
use super::wait::{self, Step, WaitEnd, WaitStrategy};
use super::{deadline_after, Mode, Ring};
use crate::array::{view, Element};
use crate::primitive::Ordering::*;
use crate::ring::error::{
    ReserveError, ReserveTimeoutError, SendError, ShapeError, TryReserveError,
};
use crate::sys;

/// What a writer's entry, settings and guard share.
pub(crate) struct WriterCore {
    ep: Endpoint,
    /// A [`WriteSlot`] of this writer is alive.
    reserved: AtomicBool,
    /// Dropped after `ep` (fields drop in order): readers polling their fd see the hang-up
    /// once the entry is already FREE, so they find the writer gone.
    _hold: WriterHold,
}

impl std::fmt::Debug for WriterCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterCore")
            .field("endpoint", &self.ep)
            .finish()
    }
}

impl WriterCore {
    pub(crate) fn new(ep: Endpoint, hold: WriterHold) -> WriterCore {
        WriterCore {
            ep,
            reserved: AtomicBool::new(false),
            _hold: hold,
        }
    }

    fn try_grant(&self) -> Result<Grant, Blocked> {
        let s = self.ep.shared();
        match s.layout.mode {
            Mode::Queue => s.q_try_reserve(self.ep.index),
            Mode::Broadcast(_) => s.bcast_try_reserve(self.ep.index),
        }
    }

    fn publish(&self, g: Grant) {
        let s = self.ep.shared();
        match s.layout.mode {
            Mode::Queue => {
                if s.q_commit(self.ep.index, g) {
                    wait::wake(s, Role::Reader, false);
                }
            }
            Mode::Broadcast(_) => {
                s.bcast_commit(self.ep.index, g);
                wait::wake(s, Role::Reader, true);
            }
        }
    }

    fn abort(&self, g: Grant) {
        let s = self.ep.shared();
        match s.layout.mode {
            Mode::Queue => {
                s.q_abort(self.ep.index, g);
                // Readers waiting on this sequence may now skip it.
                wait::wake(s, Role::Reader, true);
            }
            Mode::Broadcast(_) => s.bcast_abort(self.ep.index, g),
        }
    }
}

/// The writing end of a ring. Made by [`Ring::writer`].
///
/// [`reserve`](Writer::reserve) hands out a [`WriteSlot`]: a guard over a free slot that you
/// fill in place and [`commit`](WriteSlot::commit). In a lossless (block) broadcast ring
/// `reserve` waits for the slowest lossless reader to release the oldest frame; in drop-oldest
/// mode it takes the oldest slot no reader holds; in queue mode it waits for a free slot.
///
/// A writer belongs to the process that attached it: used in another process (a forked child)
/// every call returns `WrongProcess`, and dropping it there leaves the ring untouched.
pub struct Writer<T: Element, D: Dimension = IxDyn> {
    core: Arc<WriterCore>,
    ring: Ring<T, D>,
}

impl<T: Element, D: Dimension> std::fmt::Debug for Writer<T, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("ring", &self.ring.name())
            .field("index", &self.core.ep.index)
            .finish()
    }
}

impl<T: Element, D: Dimension> Writer<T, D> {
    pub(crate) fn new(ring: Ring<T, D>, core: WriterCore) -> Self {
        Writer {
            core: Arc::new(core),
            ring,
        }
    }

    /// The ring this writer belongs to.
    pub fn ring(&self) -> &Ring<T, D> {
        &self.ring
    }

    /// Waits until at least `n` live readers have completed their attach (a reader still in
    /// its attach handshake does not count: frames committed now might not reach it), at most
    /// `timeout` (`Duration::MAX`: for ever). The rendezvous of a lossless stream that must
    /// lose nothing at its start, as `shmflow pub --wait-readers N` uses it. Returns how many
    /// readers are attached.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use shmflow::Ring;
    /// # let name = format!("doc-wait-readers-{}", std::process::id());
    /// let ring = Ring::<u8>::create(&name).shape([4]).build()?;
    /// let writer = ring.writer()?;
    /// assert!(writer.wait_for_readers(1, Duration::from_millis(10)).is_err());
    /// let _reader = ring.reader()?;
    /// assert_eq!(writer.wait_for_readers(1, Duration::from_secs(5))?, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ReadersTimeout`](crate::ReadersTimeout) when the time is up first.
    pub fn wait_for_readers(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<usize, crate::ring::error::ReadersTimeout> {
        let start = std::time::Instant::now();
        let deadline = start.checked_add(timeout);
        let mut pause = Duration::from_micros(100);
        loop {
            let attached = self
                .ring
                .status()
                .readers
                .iter()
                .filter(|r| r.alive)
                .count();
            if attached >= n {
                return Ok(attached);
            }
            let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Err(crate::ring::error::ReadersTimeout {
                    wanted: n,
                    attached,
                    waited: start.elapsed(),
                });
            }
            std::thread::sleep(left.map_or(pause, |l| l.min(pause)));
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    /// How blocking calls wait (default: spin 50 µs, then sleep).
    pub fn set_wait_strategy(&mut self, strategy: WaitStrategy) {
        self.core.ep.waiter.set_strategy(strategy);
    }

    /// How often a blocked writer checks that the readers it waits for are alive (default
    /// 100 ms): a dead reader's frames are reclaimed within about this time.
    pub fn set_liveness_interval(&mut self, interval: Duration) {
        self.core.ep.waiter.set_liveness(interval);
    }

    /// The liveness interval (see `set_liveness_interval`).
    pub fn liveness_interval(&self) -> Duration {
        self.core.ep.waiter.liveness()
    }

    /// Frames this writer has committed.
    pub fn frames_written(&self) -> u64 {
        self.core
            .ep
            .shared()
            .peer(self.core.ep.index)
            .frames
            .load(Relaxed)
    }

    /// Claims the right to reserve: this process, no other slot alive.
    fn begin(&self) -> Result<(), ReserveError> {
        self.core
            .ep
            .check_process()
            .map_err(|owner| ReserveError::WrongProcess { owner })?;
        if self.core.reserved.swap(true, Acquire) {
            return Err(ReserveError::AlreadyReserved);
        }
        Ok(())
    }

    fn slot(&self, grant: Grant) -> WriteSlot<T, D> {
        let shape = self.core.ep.shared().layout.max_shape.clone();
        let ptr = self.core.ep.shared().payload(grant.slot) as *mut T;
        // SAFETY: the protocol granted this slot to this writer (WRITING, owned by our entry):
        // no reader looks at it and no other writer is granted it until the guard commits or
        // aborts. The payload is 64-byte aligned and holds `max_shape` elements; every bit
        // pattern is a valid T (Element contract). The 'static view never leaves the guard
        // with that lifetime (see WriteSlot), and the guard's Arc keeps the mapping alive.
        let view: ArrayViewMut<'static, T, D> = unsafe { view::frame_mut(ptr, &shape) };
        WriteSlot {
            core: Arc::clone(&self.core),
            grant,
            max_shape: shape.clone(),
            shape,
            view,
            tag: 0,
            timestamp: None,
            _t: PhantomData,
        }
    }

    /// Reserves a free slot if there is one now; never blocks.
    ///
    /// # Errors
    ///
    /// [`TryReserveError::Full`]; [`TryReserveError::Exhausted`];
    /// [`TryReserveError::AlreadyReserved`] while this writer's previous slot is alive;
    /// [`TryReserveError::WrongProcess`].
    pub fn try_reserve(&mut self) -> Result<WriteSlot<T, D>, TryReserveError> {
        self.begin().map_err(|e| match e {
            ReserveError::WrongProcess { owner } => TryReserveError::WrongProcess { owner },
            _ => TryReserveError::AlreadyReserved,
        })?;
        let mut r = self.core.try_grant();
        if r == Err(Blocked::Full) && self.core.ep.waiter.maybe_tick(self.core.ep.shared()) {
            r = self.core.try_grant();
        }
        match r {
            Ok(g) => Ok(self.slot(g)),
            Err(b) => {
                self.core.reserved.store(false, Release);
                Err(match b {
                    Blocked::Full => TryReserveError::Full,
                    Blocked::Exhausted => TryReserveError::Exhausted,
                })
            }
        }
    }

    fn wait_grant(&mut self, deadline: Option<u64>) -> Result<Grant, WaitEnd> {
        let core = &*self.core;
        let r = core
            .ep
            .waiter
            .wait(core.ep.shared(), deadline, || match core.try_grant() {
                Ok(g) => Step::Ready(g),
                Err(Blocked::Full) => Step::Pending,
                Err(Blocked::Exhausted) => Step::Fail(WaitEnd::Exhausted),
            });
        if r.is_err() {
            core.reserved.store(false, Release);
        }
        r
    }

    /// Reserves a slot, waiting as long as it takes (dead readers are reclaimed within the
    /// liveness interval, so only live readers can hold it back).
    ///
    /// # Errors
    ///
    /// [`ReserveError::Exhausted`]; [`ReserveError::AlreadyReserved`];
    /// [`ReserveError::WrongProcess`].
    pub fn reserve(&mut self) -> Result<WriteSlot<T, D>, ReserveError> {
        self.begin()?;
        match self.wait_grant(None) {
            Ok(g) => Ok(self.slot(g)),
            Err(_) => Err(ReserveError::Exhausted),
        }
    }

    /// Reserves a slot, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`ReserveTimeoutError::Timeout`], and those of [`Writer::reserve`].
    pub fn reserve_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<WriteSlot<T, D>, ReserveTimeoutError> {
        self.begin()?;
        match self.wait_grant(Some(deadline_after(timeout))) {
            Ok(g) => Ok(self.slot(g)),
            Err(WaitEnd::Timeout) => Err(ReserveTimeoutError::Timeout),
            Err(_) => Err(ReserveTimeoutError::Exhausted),
        }
    }

    /// Copies `frame` into a new slot and commits it (one copy; use [`reserve`](Writer::reserve)
    /// to fill the slot in place instead). Returns the frame's sequence number.
    ///
    /// # Errors
    ///
    /// [`SendError::Shape`] if the array's shape does not fit the ring (nothing is reserved);
    /// [`SendError::Reserve`] as for [`Writer::reserve`].
    pub fn send(&mut self, frame: &ArrayRef<T, D>) -> Result<u64, SendError> {
        check_shape(&self.core.ep.shared().layout.max_shape, frame.shape())?;
        let mut slot = self.reserve()?;
        slot.set_shape(frame.shape())?;
        slot.view_mut().assign(frame);
        Ok(slot.commit())
    }
}

fn check_shape(max: &[usize], shape: &[usize]) -> Result<(), ShapeError> {
    if shape.len() != max.len() {
        return Err(ShapeError::WrongRank {
            expected: max.len(),
            got: shape.to_vec(),
        });
    }
    if shape.iter().zip(max).any(|(s, m)| s > m) {
        return Err(ShapeError::TooLarge {
            max: max.to_vec(),
            got: shape.to_vec(),
        });
    }
    Ok(())
}

/// A reserved slot: derefs to a mutable [`ArrayRef`] of the slot's shared memory. Fill it,
/// then [`commit`](WriteSlot::commit); dropping it uncommitted gives the slot back and
/// publishes nothing.
///
/// The guard owns its reservation: it does not borrow the [`Writer`], is `Send`, and can be
/// filled on another thread or across an `.await`. The writer can reserve again once it is
/// committed or dropped. Views borrow the guard, so none outlives it.
///
/// # Examples
///
/// ```
/// use shmflow::Ring;
/// # let name = format!("doc-write-slot-{}", std::process::id());
/// let ring = Ring::<u8>::create(&name).shape([2, 2]).build()?;
/// let mut reader = ring.reader()?;
/// let mut writer = ring.writer()?;
/// let mut slot = writer.reserve()?;
/// slot.fill(3);                 // ArrayRef methods through DerefMut
/// slot.set_tag(42);
/// let seq = slot.commit();
/// let frame = reader.recv()?;
/// assert_eq!((frame.seq(), frame.tag(), frame[[1, 1]]), (seq, 42, 3));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "a reserved slot is published only by .commit()"]
pub struct WriteSlot<T: Element, D: Dimension = IxDyn> {
    core: Arc<WriterCore>,
    grant: Grant,
    max_shape: Vec<usize>,
    shape: Vec<usize>,
    /// Never handed out with this lifetime: callers get views that borrow the guard.
    view: ArrayViewMut<'static, T, D>,
    tag: u64,
    timestamp: Option<u64>,
    _t: PhantomData<fn() -> T>,
}

impl<T: Element, D: Dimension> std::fmt::Debug for WriteSlot<T, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteSlot")
            .field("seq", &self.grant.seq)
            .field("slot", &self.grant.slot)
            .field("shape", &self.shape)
            .finish()
    }
}

impl<T: Element, D: Dimension> WriteSlot<T, D> {
    /// The sequence number this frame gets when committed.
    pub fn seq(&self) -> u64 {
        self.grant.seq
    }

    /// The frame's shape (the ring's max shape until [`set_shape`](WriteSlot::set_shape)).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Makes this frame smaller than the ring's max shape (same rank, each dimension at most
    /// the max). The views change accordingly; their contents are whatever the slot held.
    ///
    /// # Errors
    ///
    /// [`ShapeError::WrongRank`], [`ShapeError::TooLarge`]; the shape is unchanged.
    pub fn set_shape(&mut self, shape: &[usize]) -> Result<(), ShapeError> {
        check_shape(&self.max_shape, shape)?;
        let ptr = self.core.ep.shared().payload(self.grant.slot) as *mut T;
        // SAFETY: as in `Writer::slot`: the slot is ours, and the new shape holds at most the
        // max shape's element count. The previous view is replaced (no borrow of it can be
        // alive: this takes `&mut self`).
        self.view = unsafe { view::frame_mut(ptr, shape) };
        self.shape = shape.to_vec();
        Ok(())
    }

    /// A user value readers see as [`ReadSlot::tag`](crate::ReadSlot::tag).
    pub fn set_tag(&mut self, tag: u64) {
        self.tag = tag;
    }

    /// The frame's timestamp (default: `CLOCK_REALTIME` at commit).
    pub fn set_timestamp_ns(&mut self, ns: u64) {
        self.timestamp = Some(ns);
    }

    /// A mutable view of the frame, borrowing the guard.
    pub fn view_mut(&mut self) -> ArrayViewMut<'_, T, D> {
        self.view.view_mut()
    }

    /// A read-only view of the frame, borrowing the guard.
    pub fn view(&self) -> ArrayView<'_, T, D> {
        self.view.view()
    }

    /// The frame's elements in row-major order.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        self.view
            .as_slice_mut()
            .expect("views over slots are in standard layout")
    }

    /// The frame's bytes.
    pub fn as_mut_bytes(&mut self) -> &mut [u8] {
        crate::array::as_bytes_mut(self.as_mut_slice())
    }

    /// Publishes the frame to readers and returns its sequence number.
    pub fn commit(mut self) -> u64 {
        let core = Arc::clone(&self.core);
        let g = self.grant;
        let m = core.ep.shared().meta(g.slot);
        let r = Relaxed;
        let elems: usize = self.shape.iter().product();
        m.len.store((elems * std::mem::size_of::<T>()) as u64, r);
        m.ndim.store(self.shape.len() as u32, r);
        for (i, d) in m.shape.iter().enumerate() {
            d.store(self.shape.get(i).map_or(0, |&x| x as u64), r);
        }
        m.timestamp_ns
            .store(self.timestamp.unwrap_or_else(sys::realtime_ns), r);
        m.tag.store(self.tag, r);
        // Mark the guard spent before publishing: its drop must neither abort nor touch the
        // slot, which readers may be reading as soon as it is published.
        self.grant.slot = usize::MAX;
        if core.ep.owner.is_current() {
            core.publish(g);
        }
        g.seq
    }
}

impl<T: Element, D: Dimension> Deref for WriteSlot<T, D> {
    type Target = ArrayRef<T, D>;
    fn deref(&self) -> &ArrayRef<T, D> {
        &self.view
    }
}

impl<T: Element, D: Dimension> DerefMut for WriteSlot<T, D> {
    fn deref_mut(&mut self) -> &mut ArrayRef<T, D> {
        &mut self.view
    }
}

impl<T: Element, D: Dimension> Drop for WriteSlot<T, D> {
    fn drop(&mut self) {
        if !self.core.ep.owner.is_current() {
            // Inherited through fork: the slot is the parent's.
            return;
        }
        if self.grant.slot != usize::MAX {
            self.core.abort(self.grant);
        }
        self.core.reserved.store(false, Release);
    }
}

//! The writing end of a ring.

use std::time::Duration;

use ndarray::{ArrayView, ArrayViewMut, Dimension, IxDyn};

use super::core::{Blocked, Grant, Role};
use super::shared::Shared;
use super::wait::{self, Step, WaitEnd, WaitStrategy, Waiter};
use super::{deadline_after, Mode, Ring};
use crate::array::Element;
use crate::error::{ReserveError, ReserveTimeoutError, ShapeError, TryReserveError};
use crate::primitive::Ordering::*;
use crate::sync::doorbell::DoorbellSender;
use crate::sys;

/// The writing end of a ring. Made by [`Ring::writer`].
///
/// A writer reserves one slot at a time ([`try_reserve`](Writer::try_reserve),
/// [`reserve`](Writer::reserve), [`reserve_timeout`](Writer::reserve_timeout)), fills it in
/// place and commits it. Dropping the writer detaches it; when a ring has no writer left,
/// readers get `Disconnected` after the last frame.
pub struct Writer<T: Element, D: Dimension = IxDyn> {
    ring: Ring<T, D>,
    waiter: Waiter,
    generation: u32,
    doorbells: Option<DoorbellSender>,
}

impl<T: Element, D: Dimension> std::fmt::Debug for Writer<T, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("ring", &self.ring.name())
            .field("index", &self.waiter.index)
            .finish()
    }
}

impl<T: Element, D: Dimension> Writer<T, D> {
    pub(crate) fn new(ring: Ring<T, D>, index: usize, generation: u32) -> Self {
        let waiter = Waiter::new(ring.shared(), index, Role::Writer, ring.inner.pid);
        Writer {
            ring,
            waiter,
            generation,
            doorbells: None,
        }
    }

    /// The ring this writer belongs to.
    pub fn ring(&self) -> &Ring<T, D> {
        &self.ring
    }

    /// How blocking calls wait (default: spin 50 µs, then sleep).
    pub fn set_wait_strategy(&mut self, strategy: WaitStrategy) {
        self.waiter.strategy = strategy;
    }

    /// How often a blocked writer checks that the readers it waits for are alive (default
    /// 100 ms). A dead reader is reclaimed within about this time once the writer waits on it.
    pub fn set_liveness_interval(&mut self, interval: Duration) {
        self.waiter.liveness = interval.max(Duration::from_millis(1));
    }

    /// Frames this writer has committed.
    pub fn frames_written(&self) -> u64 {
        self.ring
            .shared()
            .peer(self.waiter.index)
            .frames
            .load(Relaxed)
    }

    fn grant(&self) -> Result<Grant, Blocked> {
        let s = self.ring.shared();
        match s.layout.mode {
            Mode::Queue => s.q_try_reserve(self.waiter.index),
            Mode::Broadcast(_) => s.bcast_try_reserve(self.waiter.index),
        }
    }

    fn slot(&mut self, grant: Grant) -> WriteSlot<'_, T, D> {
        let shape = self.ring.shared().layout.max_shape.clone();
        WriteSlot {
            dim: dim_of::<D>(&shape),
            shape,
            grant,
            tag: 0,
            timestamp: None,
            writer: self,
        }
    }

    /// Reserves a slot if one is free now; never blocks.
    ///
    /// # Errors
    ///
    /// [`TryReserveError::Full`] when no slot is free (see its docs), or
    /// [`TryReserveError::Exhausted`].
    pub fn try_reserve(&mut self) -> Result<WriteSlot<'_, T, D>, TryReserveError> {
        let mut r = self.grant();
        if r == Err(Blocked::Full)
            && self
                .waiter
                .maybe_tick(&self.ring.inner.shared, &mut self.doorbells)
        {
            r = self.grant();
        }
        match r {
            Ok(g) => Ok(self.slot(g)),
            Err(Blocked::Full) => Err(TryReserveError::Full),
            Err(Blocked::Exhausted) => Err(TryReserveError::Exhausted),
        }
    }

    fn wait_grant(&mut self, deadline: Option<u64>) -> Result<Grant, WaitEnd> {
        let shared: &Shared = &self.ring.inner.shared;
        let mode = shared.layout.mode;
        let index = self.waiter.index;
        self.waiter.wait(shared, deadline, &mut self.doorbells, || {
            let r = match mode {
                Mode::Queue => shared.q_try_reserve(index),
                Mode::Broadcast(_) => shared.bcast_try_reserve(index),
            };
            match r {
                Ok(g) => Step::Ready(g),
                Err(Blocked::Full) => Step::Pending,
                Err(Blocked::Exhausted) => Step::Fail(WaitEnd::Exhausted),
            }
        })
    }

    /// Reserves a slot, waiting as long as it takes for one to become free. In a lossless
    /// broadcast ring that is until the slowest live reader releases the oldest frame (dead
    /// readers are reclaimed); in a queue, until a reader takes a frame.
    ///
    /// # Errors
    ///
    /// [`ReserveError::Exhausted`].
    pub fn reserve(&mut self) -> Result<WriteSlot<'_, T, D>, ReserveError> {
        match self.wait_grant(None) {
            Ok(g) => Ok(self.slot(g)),
            Err(_) => Err(ReserveError::Exhausted),
        }
    }

    /// Reserves a slot, waiting at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`ReserveTimeoutError::Timeout`] or [`ReserveTimeoutError::Exhausted`].
    pub fn reserve_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<WriteSlot<'_, T, D>, ReserveTimeoutError> {
        match self.wait_grant(Some(deadline_after(timeout))) {
            Ok(g) => Ok(self.slot(g)),
            Err(WaitEnd::Timeout) => Err(ReserveTimeoutError::Timeout),
            Err(_) => Err(ReserveTimeoutError::Exhausted),
        }
    }

    /// Copies `frame` into a slot and commits it: the convenient, copying form of
    /// `reserve` + `view_mut().assign(..)` + `commit`. Returns the frame's sequence number.
    ///
    /// # Errors
    ///
    /// [`ReserveError::Exhausted`].
    ///
    /// # Panics
    ///
    /// If `frame`'s shape does not fit the ring (wrong rank or larger than the max shape).
    pub fn send(&mut self, frame: &ArrayView<'_, T, D>) -> Result<u64, ReserveError> {
        let mut slot = self.reserve()?;
        if let Err(e) = slot.set_shape(frame.shape()) {
            panic!("Writer::send: {e}");
        }
        slot.view_mut().assign(frame);
        Ok(slot.commit())
    }

    fn publish(&mut self, g: Grant) {
        let shared: &Shared = &self.ring.inner.shared;
        match shared.layout.mode {
            Mode::Queue => {
                if shared.q_commit(self.waiter.index, g) {
                    wait::wake(shared, Role::Reader, false, &mut self.doorbells);
                }
            }
            Mode::Broadcast(_) => {
                shared.bcast_commit(self.waiter.index, g);
                wait::wake(shared, Role::Reader, true, &mut self.doorbells);
            }
        }
    }

    fn abort(&mut self, g: Grant) {
        let shared: &Shared = &self.ring.inner.shared;
        match shared.layout.mode {
            Mode::Queue => {
                shared.q_abort(self.waiter.index, g);
                // Readers waiting on this sequence may now skip it.
                wait::wake(shared, Role::Reader, true, &mut self.doorbells);
            }
            Mode::Broadcast(_) => shared.bcast_abort(self.waiter.index, g),
        }
    }
}

impl<T: Element, D: Dimension> Drop for Writer<T, D> {
    fn drop(&mut self) {
        let shared: &Shared = &self.ring.inner.shared;
        shared.release_peer(self.waiter.index, self.ring.inner.pid, self.generation);
        // Readers waiting for the next frame should learn that there is no writer any more.
        wait::wake(shared, Role::Reader, true, &mut self.doorbells);
    }
}

pub(crate) fn dim_of<D: Dimension>(shape: &[usize]) -> D {
    let mut d = D::zeros(shape.len());
    d.slice_mut().copy_from_slice(shape);
    d
}

/// A reserved slot. Fill it through [`view_mut`](WriteSlot::view_mut) (or the slice and byte
/// forms), then [`commit`](WriteSlot::commit) it. Dropping it without committing publishes
/// nothing (a half-written frame is never seen, even when a panic unwinds through the writer).
#[must_use = "a reserved slot is published only by .commit()"]
pub struct WriteSlot<'a, T: Element, D: Dimension = IxDyn> {
    writer: &'a mut Writer<T, D>,
    grant: Grant,
    shape: Vec<usize>,
    dim: D,
    tag: u64,
    timestamp: Option<u64>,
}

impl<T: Element, D: Dimension> std::fmt::Debug for WriteSlot<'_, T, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteSlot")
            .field("seq", &self.grant.seq)
            .field("slot", &self.grant.slot)
            .field("shape", &self.shape)
            .finish()
    }
}

impl<'a, T: Element, D: Dimension> WriteSlot<'a, T, D> {
    /// The sequence number this frame will have.
    pub fn seq(&self) -> u64 {
        self.grant.seq
    }

    /// The shape of this frame (the ring's max shape unless changed with `set_shape`).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Sets this frame's shape: same rank as the ring, each dimension at most the max shape's.
    ///
    /// # Errors
    ///
    /// [`ShapeError::WrongRank`] or [`ShapeError::TooLarge`]; the shape is left unchanged.
    pub fn set_shape(&mut self, shape: &[usize]) -> Result<(), ShapeError> {
        let max = &self.writer.ring.shared().layout.max_shape;
        if shape.len() != max.len() {
            return Err(ShapeError::WrongRank {
                expected: max.len(),
                got: shape.to_vec(),
            });
        }
        if shape.iter().zip(max).any(|(s, m)| s > m) {
            return Err(ShapeError::TooLarge {
                max: max.clone(),
                got: shape.to_vec(),
            });
        }
        self.shape = shape.to_vec();
        self.dim = dim_of::<D>(shape);
        Ok(())
    }

    /// Sets the user tag carried with the frame (default 0).
    pub fn set_tag(&mut self, tag: u64) {
        self.tag = tag;
    }

    /// Sets the frame's timestamp in ns (default: `CLOCK_REALTIME` at commit).
    pub fn set_timestamp_ns(&mut self, ns: u64) {
        self.timestamp = Some(ns);
    }

    fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// The frame's elements, in row-major order.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        let len = self.len();
        let ptr = self.writer.ring.shared().payload(self.grant.slot) as *mut T;
        // SAFETY: the slot is WRITING and owned by this writer (single reservation enforced by
        // the `&mut Writer` borrow); no reader looks at a WRITING slot. The payload is
        // 64-byte aligned, `len * size_of::<T>() <= slot_bytes` because the shape fits the max
        // shape, and every bit pattern is a valid T (Element contract).
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }
    }

    /// The frame's bytes.
    pub fn as_mut_bytes(&mut self) -> &mut [u8] {
        let len = self.len() * std::mem::size_of::<T>();
        let ptr = self.writer.ring.shared().payload(self.grant.slot);
        // SAFETY: as for `as_mut_slice`; u8 has alignment 1.
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }
    }

    /// A mutable `ndarray` view of the frame (standard layout, this frame's shape).
    pub fn view_mut(&mut self) -> ArrayViewMut<'_, T, D> {
        let dim = self.dim.clone();
        ArrayViewMut::from_shape(dim, self.as_mut_slice())
            .expect("slice length equals the shape's element count")
    }

    /// Publishes the frame and returns its sequence number. Readers waiting for it wake up.
    pub fn commit(self) -> u64 {
        let mut this = std::mem::ManuallyDrop::new(self);
        let seq = this.grant.seq;
        let m = this.writer.ring.shared().meta(this.grant.slot);
        let r = Relaxed;
        m.len
            .store((this.len() * std::mem::size_of::<T>()) as u64, r);
        m.ndim.store(this.shape.len() as u32, r);
        for (i, d) in m.shape.iter().enumerate() {
            d.store(this.shape.get(i).map_or(0, |&x| x as u64), r);
        }
        m.timestamp_ns
            .store(this.timestamp.unwrap_or_else(sys::realtime_ns), r);
        m.tag.store(this.tag, r);
        let g = this.grant;
        this.writer.publish(g);
        // SAFETY: `this` is never used again; the fields have trivial or owned drops that we
        // run here exactly once (the Vec and D), skipping WriteSlot::drop (which would abort).
        unsafe {
            std::ptr::drop_in_place(&mut this.shape);
            std::ptr::drop_in_place(&mut this.dim);
        }
        seq
    }
}

impl<T: Element, D: Dimension> Drop for WriteSlot<'_, T, D> {
    fn drop(&mut self) {
        let g = self.grant;
        self.writer.abort(g);
    }
}

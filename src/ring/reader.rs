//! The reading end of a ring.

use std::ops::Deref;
#[cfg(not(shmflow_no_doorbell))]
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use ndarray::{ArrayView, Dimension, IxDyn};

use super::core::{Grant, Role};
use super::shared::Shared;
use super::wait::{self, Step, WaitEnd, WaitStrategy, Waiter};
use super::writer::dim_of;
use super::{deadline_after, Mode, Ring};
use crate::array::Element;
use crate::error::{AttachError, RecvError, RecvTimeoutError, TryRecvError};
use crate::primitive::Ordering::*;
use crate::sync::doorbell::DoorbellSender;
#[cfg(not(shmflow_no_doorbell))]
use crate::sync::doorbell::{doorbell_address, DoorbellReceiver};

/// The reading end of a ring. Made by [`Ring::reader`].
///
/// [`recv`](Reader::recv) hands out one frame at a time as a [`ReadSlot`] that reads the
/// shared memory in place; dropping the slot releases it. In broadcast mode every reader sees
/// every frame committed after it attached (drop-oldest: unless it falls more than a ring
/// behind; see [`ReadSlot::missed`]). In queue mode each frame goes to one reader.
///
/// # Polling
///
/// A reader implements [`AsFd`]: register the fd with `poll`/epoll/mio/tokio for readability.
/// After [`try_recv`](Reader::try_recv) has returned [`TryRecvError::Empty`] the fd becomes
/// readable when the next frame is committed (or the writer detaches); call `try_recv` again
/// until it returns `Empty` before waiting on the fd again. See `sync::doorbell` for how this
/// works between unrelated processes.
pub struct Reader<T: Element, D: Dimension = IxDyn> {
    ring: Ring<T, D>,
    waiter: Waiter,
    generation: u32,
    doorbells: Option<DoorbellSender>,
    /// The frame handed out by the last `recv`, released lazily (see [`ReadSlot`]).
    held: Option<Grant>,
    #[cfg(not(shmflow_no_doorbell))]
    doorbell: DoorbellReceiver,
}

impl<T: Element, D: Dimension> std::fmt::Debug for Reader<T, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("ring", &self.ring.name())
            .field("index", &self.waiter.index)
            .finish()
    }
}

impl<T: Element, D: Dimension> Reader<T, D> {
    pub(crate) fn new(
        ring: Ring<T, D>,
        index: usize,
        generation: u32,
        lossy: bool,
    ) -> Result<Self, AttachError> {
        let pid = ring.inner.pid;
        #[cfg(not(shmflow_no_doorbell))]
        let doorbell = {
            let token = ring.shared().header().doorbell_token.load(Relaxed);
            match DoorbellReceiver::bind(&doorbell_address(token, index as u32, generation)) {
                Ok(d) => d,
                Err(e) => {
                    ring.shared().release_peer(index, pid, generation);
                    return Err(AttachError::Io(e));
                }
            }
        };
        if !ring
            .shared()
            .attach_reader_with(index, pid, generation, lossy)
        {
            return Err(AttachError::Reclaimed);
        }
        let waiter = Waiter::new(ring.shared(), index, Role::Reader, pid);
        Ok(Reader {
            ring,
            waiter,
            generation,
            doorbells: None,
            held: None,
            #[cfg(not(shmflow_no_doorbell))]
            doorbell,
        })
    }

    /// The ring this reader belongs to.
    pub fn ring(&self) -> &Ring<T, D> {
        &self.ring
    }

    /// How blocking calls wait (default: spin 50 µs, then sleep).
    pub fn set_wait_strategy(&mut self, strategy: WaitStrategy) {
        self.waiter.strategy = strategy;
    }

    /// How often a blocked reader checks that the writers are alive (default 100 ms): a dead
    /// writer turns into `Disconnected` (after the committed frames) within about this time.
    pub fn set_liveness_interval(&mut self, interval: Duration) {
        self.waiter.liveness = interval.max(Duration::from_millis(1));
    }

    /// Total frames this reader missed (drop-oldest broadcast; always 0 otherwise).
    pub fn missed(&self) -> u64 {
        self.ring
            .shared()
            .peer(self.waiter.index)
            .missed
            .load(Relaxed)
    }

    /// Frames this reader has received.
    pub fn frames_read(&self) -> u64 {
        self.ring
            .shared()
            .peer(self.waiter.index)
            .frames
            .load(Relaxed)
    }

    /// Skips every committed frame: the next `recv` returns the next frame the writer commits
    /// (broadcast; for live displays that only want the newest frame). Returns how many frames
    /// were skipped. Does nothing in queue mode.
    pub fn skip_to_latest(&mut self) -> u64 {
        let s = self.ring.shared();
        if s.layout.mode == Mode::Queue {
            return 0;
        }
        let e = s.peer(self.waiter.index);
        let w = s.control().write_seq.v.load(Acquire);
        let c = e.cursor.load(Relaxed);
        if w > c {
            e.cursor.store(w, SeqCst);
            e.missed.fetch_add(w - c, Relaxed);
            // A lossless writer may be waiting for us.
            wait::wake(s, Role::Writer, true, &mut self.doorbells);
        }
        w.saturating_sub(c)
    }

    fn attempt(shared: &Shared, index: usize) -> Step<Grant> {
        let take = || match shared.layout.mode {
            Mode::Queue => shared.q_try_acquire(index),
            Mode::Broadcast(_) => shared.bcast_try_acquire(index),
        };
        if let Some(g) = take() {
            return Step::Ready(g);
        }
        if shared.writers_gone() {
            // A frame may have been committed just before the writer detached.
            return match take() {
                Some(g) => Step::Ready(g),
                None => Step::Fail(WaitEnd::Disconnected),
            };
        }
        Step::Pending
    }

    fn wait_grant(&mut self, deadline: Option<u64>) -> Result<Grant, WaitEnd> {
        let shared: &Shared = &self.ring.inner.shared;
        let index = self.waiter.index;
        self.waiter.wait(shared, deadline, &mut self.doorbells, || {
            Self::attempt(shared, index)
        })
    }

    /// Checks a granted frame's metadata (another process wrote it) and builds the slot, or
    /// releases the frame and reports it corrupted.
    fn slot(&mut self, g: Grant) -> Result<ReadSlot<'_, T, D>, u64> {
        let shared: &Shared = &self.ring.inner.shared;
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
            self.release_grant(g);
            return Err(g.seq);
        }
        let (timestamp_ns, tag) = (m.timestamp_ns.load(Relaxed), m.tag.load(Relaxed));
        let ptr = shared.payload(g.slot) as *const T;
        // SAFETY: the protocol granted us this slot for reading: it is FULL with sequence
        // g.seq and no writer reuses it until we release it (queue: READING(us); broadcast
        // block: our cursor holds it; drop-oldest: our pin holds it). The length fits the
        // slot (each dimension <= max, checked above), the payload is 64-byte aligned, and
        // every bit pattern is a valid T (Element contract).
        let data: &[T] = unsafe { std::slice::from_raw_parts(ptr, elems) };
        self.held = Some(g);
        let view = ArrayView::from_shape(dim_of::<D>(&shape), data)
            .expect("slice length equals the shape's element count");
        Ok(ReadSlot {
            view,
            seq: g.seq,
            missed: g.extra,
            shape,
            timestamp_ns,
            tag,
            _reader: std::marker::PhantomData,
        })
    }

    /// Releases the frame returned by the previous `recv` (if any) now, instead of at the
    /// next call. Useful before a reader goes idle: a lossless writer may be waiting for it.
    pub fn release(&mut self) {
        if let Some(g) = self.held.take() {
            self.release_grant(g);
        }
    }

    fn release_grant(&mut self, g: Grant) {
        let shared: &Shared = &self.ring.inner.shared;
        match shared.layout.mode {
            Mode::Queue => {
                shared.q_release(self.waiter.index, g);
                wait::wake(shared, Role::Writer, false, &mut self.doorbells);
            }
            Mode::Broadcast(_) => {
                shared.bcast_release(self.waiter.index, g);
                wait::wake(shared, Role::Writer, true, &mut self.doorbells);
            }
        }
    }

    /// Returns the next frame if one is ready; never blocks. When it returns `Empty`, the
    /// reader's fd (see [`AsFd`]) is armed: it becomes readable when a frame arrives.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`], [`TryRecvError::Disconnected`] (no writer and nothing left),
    /// [`TryRecvError::Corrupted`] (a frame with invalid metadata was skipped).
    pub fn try_recv(&mut self) -> Result<ReadSlot<'_, T, D>, TryRecvError> {
        self.release();
        let index = self.waiter.index;
        let mut step = Self::attempt(&self.ring.inner.shared, index);
        if matches!(step, Step::Pending)
            && self
                .waiter
                .maybe_tick(&self.ring.inner.shared, &mut self.doorbells)
        {
            step = Self::attempt(&self.ring.inner.shared, index);
        }
        if matches!(step, Step::Pending) {
            self.arm();
            // Re-check after arming: a frame committed in between would not ring the doorbell.
            step = Self::attempt(&self.ring.inner.shared, index);
        }
        match step {
            Step::Ready(g) => self.slot(g).map_err(|seq| TryRecvError::Corrupted { seq }),
            Step::Pending => Err(TryRecvError::Empty),
            Step::Fail(WaitEnd::Disconnected) => Err(TryRecvError::Disconnected),
            Step::Fail(_) => Err(TryRecvError::Empty),
        }
    }

    #[cfg(not(shmflow_no_doorbell))]
    fn arm(&mut self) {
        let shared: &Shared = &self.ring.inner.shared;
        // Still armed from an earlier `Empty`: the doorbell has not been rung since, so there
        // is nothing to drain (this keeps a polling loop of `try_recv` free of syscalls).
        if shared.peer(self.waiter.index).flags.load(SeqCst) & super::shared::FLAG_ARMED != 0 {
            return;
        }
        let _ = self.doorbell.drain();
        wait::arm(shared, self.waiter.index);
    }

    #[cfg(shmflow_no_doorbell)]
    fn arm(&mut self) {}

    /// Waits for the next frame.
    ///
    /// # Errors
    ///
    /// [`RecvError::Disconnected`] once no writer is attached (it detached, or died: found
    /// within the liveness interval) and every committed frame has been read;
    /// [`RecvError::Corrupted`].
    pub fn recv(&mut self) -> Result<ReadSlot<'_, T, D>, RecvError> {
        self.release();
        match self.wait_grant(None) {
            Ok(g) => self.slot(g).map_err(|seq| RecvError::Corrupted { seq }),
            Err(_) => Err(RecvError::Disconnected),
        }
    }

    /// Waits at most `timeout` for the next frame.
    ///
    /// # Errors
    ///
    /// [`RecvTimeoutError::Timeout`], [`RecvTimeoutError::Disconnected`],
    /// [`RecvTimeoutError::Corrupted`].
    pub fn recv_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<ReadSlot<'_, T, D>, RecvTimeoutError> {
        self.release();
        match self.wait_grant(Some(deadline_after(timeout))) {
            Ok(g) => self
                .slot(g)
                .map_err(|seq| RecvTimeoutError::Corrupted { seq }),
            Err(WaitEnd::Timeout) => Err(RecvTimeoutError::Timeout),
            Err(_) => Err(RecvTimeoutError::Disconnected),
        }
    }
}

#[cfg(not(shmflow_no_doorbell))]
impl<T: Element, D: Dimension> AsFd for Reader<T, D> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.doorbell.as_fd()
    }
}

impl<T: Element, D: Dimension> Drop for Reader<T, D> {
    fn drop(&mut self) {
        self.release();
        let shared: &Shared = &self.ring.inner.shared;
        wait::disarm(shared, self.waiter.index);
        shared.release_peer(self.waiter.index, self.ring.inner.pid, self.generation);
        // A lossless writer may be waiting for this reader's cursor.
        wait::wake(shared, Role::Writer, true, &mut self.doorbells);
    }
}

/// A frame held for reading: derefs to an [`ArrayView`] of the shared memory, in place.
///
/// The slot goes back to the writer when the reader is next used (`recv`, `try_recv`,
/// `recv_timeout`, [`Reader::release`]) or dropped — not when the `ReadSlot` itself is dropped.
/// This is what makes handing out an `ArrayView<'a>` sound: views are `Copy`, so a copy may
/// outlive the `ReadSlot`, but never the `&'a mut Reader` borrow, and the slot is released
/// only once that borrow has ended.
pub struct ReadSlot<'a, T: Element, D: Dimension = IxDyn> {
    view: ArrayView<'a, T, D>,
    seq: u64,
    missed: u64,
    shape: Vec<usize>,
    timestamp_ns: u64,
    tag: u64,
    _reader: std::marker::PhantomData<&'a mut Reader<T, D>>,
}

impl<T: Element, D: Dimension> std::fmt::Debug for ReadSlot<'_, T, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadSlot")
            .field("seq", &self.seq)
            .field("shape", &self.shape)
            .field("missed", &self.missed)
            .field("tag", &self.tag)
            .finish()
    }
}

impl<'a, T: Element, D: Dimension> ReadSlot<'a, T, D> {
    /// The frame's sequence number (0 for the ring's first frame).
    pub fn seq(&self) -> u64 {
        self.seq
    }
    /// Frames this reader missed just before this one (drop-oldest; otherwise 0).
    pub fn missed(&self) -> u64 {
        self.missed
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
    pub fn as_slice(&self) -> &'a [T] {
        self.view
            .to_slice()
            .expect("views over slots are in standard layout")
    }
    /// The frame's bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        let s = self.as_slice();
        // SAFETY: reinterpreting initialised elements of a plain numeric type (no padding,
        // Element contract) as bytes, same length in bytes, alignment 1.
        unsafe { std::slice::from_raw_parts(s.as_ptr() as *const u8, std::mem::size_of_val(s)) }
    }
    /// The view (same as deref).
    pub fn view(&self) -> ArrayView<'a, T, D> {
        self.view.clone()
    }
}

impl<'a, T: Element, D: Dimension> Deref for ReadSlot<'a, T, D> {
    type Target = ArrayView<'a, T, D>;
    fn deref(&self) -> &Self::Target {
        &self.view
    }
}

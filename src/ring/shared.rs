//! The shared structures of a ring and the one place that turns the mapping into references.
//!
//! [`Shared`] holds raw pointers to the control block, the peer table, the slot table and the
//! payloads, plus whatever keeps that memory alive: a shared-memory [`Segment`] for real rings,
//! or heap allocations for the in-process backend (unit tests, proptest and loom). The protocol
//! in [`super::protocol`] only ever sees `Shared`, so it is written once for both backends.
//!
//! [`Segment`]: crate::shm::Segment

use std::cell::UnsafeCell;

use super::layout::{Header, Layout, CONTROL_OFFSET};
#[cfg(not(loom))]
use super::layout::{META_STRIDE, PEER_STRIDE};
use crate::primitive::{AtomicU32, AtomicU64};

use super::protocol::stamps::{st, stamp};

/// One cache line holding one counter.
#[repr(C, align(64))]
pub(crate) struct Line {
    pub v: AtomicU64,
}

/// The control block (offset 256 of the segment, 256 bytes).
#[repr(C)]
pub(crate) struct Control {
    /// Broadcast: frames committed (the next sequence to write). Queue: the enqueue position.
    pub write_seq: Line,
    /// Queue: the dequeue position. Unused in broadcast mode.
    pub read_seq: Line,
    /// Readers sleeping or armed (writers skip the wake-up scan when 0).
    pub reader_waiters: AtomicU64,
    /// Writers sleeping (readers skip the wake-up scan when 0).
    pub writer_waiters: AtomicU64,
    /// Writer attachments ever (readers report `Disconnected` only after the first).
    pub writer_attaches: AtomicU64,
    /// Reader attachments ever.
    pub reader_attaches: AtomicU64,
    /// Queue: frames lost because their reader died holding them.
    pub lost: AtomicU64,
    /// Queue: sequences abandoned by a writer that died or dropped its slot.
    pub abandoned: AtomicU64,
    /// Round-robin start for queue wake-ups.
    pub wake_hint: AtomicU64,
    /// `1 << 32 | pid` of the last writer found dead (reclaimed), 0 if none since the last
    /// writer attached: readers then end with `WriterDied` instead of `Disconnected`.
    pub died_writer: AtomicU64,
    /// Frames committed (`write_seq`) when that writer was reclaimed.
    pub died_after: AtomicU64,
    pub _reserved: [AtomicU64; 7],
}

/// Pins a drop-oldest (or lossy) reader can hold at once: the frames it holds.
pub(crate) const MAX_PINS: usize = 16;

/// One entry of the peer table (256 bytes). Readers come first, then writers.
#[repr(C)]
pub(crate) struct PeerEntry {
    /// `pid << 32 | generation << 8 | status`.
    pub state: AtomicU64,
    /// Start time of `pid` (clock ticks since boot), for display: liveness is the peer's lock.
    pub start_time: AtomicU64,
    /// Broadcast reader: lossless (block) readers publish the lowest sequence they hold or
    /// will read next (the writer reuses only slots below it); drop-oldest and lossy readers
    /// publish the next sequence they will read (for backlog figures).
    pub cursor: AtomicU64,
    /// Flags, see [`super::protocol::stamps`]: SLEEPING | ARMED | LOSSY | READY.
    pub flags: AtomicU32,
    /// Reader: how many frames it may hold at once (chosen at attach; the writer scans this
    /// many of its pins, at most [`MAX_PINS`]).
    pub max_held: AtomicU32,
    /// Broadcast reader: frames it missed (drop-oldest, lossy, skips).
    pub missed: AtomicU64,
    /// Frames received (reader) or committed (writer).
    pub frames: AtomicU64,
    /// Reader: frames it holds now (for status displays).
    pub held: AtomicU64,
    pub _reserved0: AtomicU64,
    /// The process-shared semaphore this peer sleeps on.
    pub sem: UnsafeCell<[u64; 4]>,
    /// Drop-oldest and lossy readers: one pin per frame held, `seq << 32 | (slot + 1)`
    /// (0 = unused). The writer refuses any slot a pin names.
    pub pins: [AtomicU64; MAX_PINS],
    pub _reserved1: [AtomicU64; 4],
}

/// One entry of the slot table (128 bytes).
#[repr(C)]
pub(crate) struct SlotMeta {
    /// `seq << 16 | owner << 4 | state`.
    pub stamp: AtomicU64,
    /// Used payload bytes.
    pub len: AtomicU64,
    pub ndim: AtomicU32,
    pub flags: AtomicU32,
    pub shape: [AtomicU64; super::layout::MAX_DIMS],
    /// Nanoseconds (`CLOCK_REALTIME`) the writer stamped the frame with.
    pub timestamp_ns: AtomicU64,
    /// A value the writer chose.
    pub tag: AtomicU64,
    /// Broadcast *locator*: entry `j` says which slot holds the newest frame with
    /// `seq % slot_count == j`: `seq << 16 | slot`. A hint (readers verify the slot's stamp).
    pub locator: AtomicU64,
    pub _reserved: [AtomicU64; 2],
}

#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::size_of::<Control>() == 256);
    assert!(std::mem::size_of::<PeerEntry>() == PEER_STRIDE as usize);
    assert!(std::mem::offset_of!(PeerEntry, sem) == 64);
    assert!(std::mem::offset_of!(PeerEntry, pins) == 96);
    assert!(std::mem::size_of::<SlotMeta>() == META_STRIDE as usize);
    assert!(CONTROL_OFFSET as usize == std::mem::size_of::<Header>());
};

/// What keeps the memory behind a [`Shared`] alive.
pub(crate) enum Backing {
    /// Process-local allocations (tests, loom); only held for its `Drop`.
    Heap(#[allow(dead_code)] HeapBacking),
    /// A mapped shared-memory segment.
    #[cfg(not(loom))]
    Segment(crate::shm::Segment),
}

/// Heap allocations standing in for a segment.
pub(crate) struct HeapBacking {
    header: *mut Header,
    control: *mut Control,
    peers: *mut [PeerEntry],
    metas: *mut [SlotMeta],
    payload: *mut u8,
    payload_layout: std::alloc::Layout,
}

impl Drop for HeapBacking {
    fn drop(&mut self) {
        // SAFETY: every pointer came from `Box::into_raw` / `alloc_zeroed` in `Shared::heap`
        // with these layouts, and `Shared` (which holds the only copies) is being dropped.
        unsafe {
            drop(Box::from_raw(self.header));
            drop(Box::from_raw(self.control));
            drop(Box::from_raw(self.peers));
            drop(Box::from_raw(self.metas));
            std::alloc::dealloc(self.payload, self.payload_layout);
        }
    }
}

/// Pointers to a ring's regions and the memory that backs them.
pub(crate) struct Shared {
    pub layout: Layout,
    header: *const Header,
    control: *const Control,
    peers: *const PeerEntry,
    metas: *const SlotMeta,
    payload: *mut u8,
    backing: Backing,
}

// SAFETY: everything reachable through the pointers is either an atomic (shared mutation is
// fine), a semaphore (thread- and process-safe), or payload bytes that the protocol hands to
// one writer or to readers only. The backing is owned and freed once.
unsafe impl Send for Shared {}
// SAFETY: as for Send.
unsafe impl Sync for Shared {}

fn z64() -> AtomicU64 {
    AtomicU64::new(0)
}

fn z32() -> AtomicU32 {
    AtomicU32::new(0)
}

// The heap backend builds every atomic with `new(0)` (not `mem::zeroed`): under loom an atomic
// is an object registered with the model checker, which a zeroed value is not.

fn new_header() -> Header {
    Header {
        magic: z64(),
        ready: z32(),
        header_size: z32(),
        layout_hash: z64(),
        total_size: z64(),
        dtype: z32(),
        elem_size: z32(),
        ndim: z32(),
        mode: z32(),
        max_shape: std::array::from_fn(|_| z64()),
        slot_count: z32(),
        max_readers: z32(),
        max_writers: z32(),
        flags: z32(),
        slot_bytes: z64(),
        slot_stride: z64(),
        peers_offset: z64(),
        peer_stride: z64(),
        meta_offset: z64(),
        meta_stride: z64(),
        payload_offset: z64(),
        creator_pid: z32(),
        _pad0: z32(),
        creator_start_time: z64(),
        created_unix_ns: z64(),
        doorbell_token: z64(),
        _reserved: std::array::from_fn(|_| z64()),
    }
}

fn zero_control() -> Control {
    let line = || Line { v: z64() };
    Control {
        write_seq: line(),
        read_seq: line(),
        reader_waiters: z64(),
        writer_waiters: z64(),
        writer_attaches: z64(),
        reader_attaches: z64(),
        lost: z64(),
        abandoned: z64(),
        wake_hint: z64(),
        died_writer: z64(),
        died_after: z64(),
        _reserved: std::array::from_fn(|_| z64()),
    }
}

fn zero_peer() -> PeerEntry {
    PeerEntry {
        state: z64(),
        start_time: z64(),
        cursor: z64(),
        flags: z32(),
        max_held: z32(),
        missed: z64(),
        frames: z64(),
        held: z64(),
        _reserved0: z64(),
        sem: UnsafeCell::new([0; 4]),
        pins: std::array::from_fn(|_| z64()),
        _reserved1: std::array::from_fn(|_| z64()),
    }
}

fn zero_meta() -> SlotMeta {
    SlotMeta {
        stamp: z64(),
        len: z64(),
        ndim: z32(),
        flags: z32(),
        shape: std::array::from_fn(|_| z64()),
        timestamp_ns: z64(),
        tag: z64(),
        locator: z64(),
        _reserved: std::array::from_fn(|_| z64()),
    }
}

impl Shared {
    /// A process-local ring on the heap, zero-initialised (all slots EMPTY, all peers FREE).
    pub(crate) fn heap(layout: Layout) -> Shared {
        let header = Box::into_raw(Box::new(new_header()));
        let control = Box::into_raw(Box::new(zero_control()));
        let peers: Box<[PeerEntry]> = (0..layout.max_peers()).map(|_| zero_peer()).collect();
        let metas: Box<[SlotMeta]> = (0..layout.slot_count).map(|_| zero_meta()).collect();
        let peers = Box::into_raw(peers);
        let metas = Box::into_raw(metas);
        let size = (layout.slot_stride * u64::from(layout.slot_count)) as usize;
        let payload_layout = std::alloc::Layout::from_size_align(size.max(64), 4096)
            .expect("heap ring payload layout");
        // SAFETY: the layout has a non-zero size.
        let payload = unsafe { std::alloc::alloc_zeroed(payload_layout) };
        if payload.is_null() {
            std::alloc::handle_alloc_error(payload_layout);
        }
        let shared = Shared {
            header,
            control,
            peers: peers as *const PeerEntry,
            metas: metas as *const SlotMeta,
            payload,
            backing: Backing::Heap(HeapBacking {
                header,
                control,
                peers,
                metas,
                payload,
                payload_layout,
            }),
            layout,
        };
        shared.init_slots();
        shared
    }

    /// Wraps a mapped segment whose layout has been validated (or was just computed by the
    /// creator).
    ///
    /// # Safety
    ///
    /// `segment.len() >= layout.total_size`, the mapping starts page-aligned, and the region
    /// offsets in `layout` were computed by [`Layout::compute`] (so every table lies inside the
    /// mapping and is suitably aligned).
    #[cfg(not(loom))]
    pub(crate) unsafe fn from_segment(layout: Layout, segment: crate::shm::Segment) -> Shared {
        let base = segment.as_ptr();
        // SAFETY: all four `add`s stay inside the mapping: the offsets are below total_size,
        // which the caller guarantees is at most the mapping's length.
        let (header, control, peers, metas, payload) = unsafe {
            (
                base as *const Header,
                base.add(CONTROL_OFFSET as usize) as *const Control,
                base.add(layout.peers_offset as usize) as *const PeerEntry,
                base.add(layout.meta_offset as usize) as *const SlotMeta,
                base.add(layout.payload_offset as usize),
            )
        };
        Shared {
            layout,
            header,
            control,
            peers,
            metas,
            payload,
            backing: Backing::Segment(segment),
        }
    }

    /// Sets every slot stamp to EMPTY with its initial sequence (slot `i` waits for seq `i`).
    pub(crate) fn init_slots(&self) {
        for i in 0..self.layout.slot_count as usize {
            self.meta(i).stamp.store(
                stamp(i as u64, 0, st::EMPTY),
                crate::primitive::Ordering::Relaxed,
            );
        }
    }

    /// The segment, when this ring lives in shared memory.
    #[cfg(not(loom))]
    pub(crate) fn segment(&self) -> Option<&crate::shm::Segment> {
        match &self.backing {
            Backing::Segment(s) => Some(s),
            Backing::Heap(_) => None,
        }
    }

    /// The header.
    pub(crate) fn header(&self) -> &Header {
        // SAFETY: points at the start of the live mapping / allocation; atomics only.
        unsafe { &*self.header }
    }

    /// The control block.
    #[inline]
    pub(crate) fn control(&self) -> &Control {
        // SAFETY: inside the live mapping / allocation; atomics only.
        unsafe { &*self.control }
    }

    /// Peer-table entry `i`.
    ///
    /// # Panics
    ///
    /// If `i >= layout.max_peers()` (a bug in shmflow, never input from another process:
    /// indices read from shared memory are checked before use).
    #[inline]
    pub(crate) fn peer(&self, i: usize) -> &PeerEntry {
        assert!(i < self.layout.max_peers(), "peer index {i} out of range");
        // SAFETY: i is in range, so the entry lies inside the peer table.
        unsafe { &*self.peers.add(i) }
    }

    /// Slot-table entry `i`.
    ///
    /// # Panics
    ///
    /// If `i >= slot_count` (a bug in shmflow: slot indices are always taken modulo the count).
    #[inline]
    pub(crate) fn meta(&self, i: usize) -> &SlotMeta {
        assert!(
            i < self.layout.slot_count as usize,
            "slot index {i} out of range"
        );
        // SAFETY: i is in range, so the entry lies inside the slot table.
        unsafe { &*self.metas.add(i) }
    }

    /// Start of slot `i`'s payload (`slot_bytes` long, 64-byte aligned).
    ///
    /// This is the single place payload addresses are made. Turning it into a slice is only
    /// sound for a slot the protocol has handed to the caller (WRITING by us, or held for
    /// reading), which is what [`super::protocol`] guarantees to its callers.
    ///
    /// # Panics
    ///
    /// If `i >= slot_count`.
    #[inline]
    pub(crate) fn payload(&self, i: usize) -> *mut u8 {
        assert!(
            i < self.layout.slot_count as usize,
            "slot index {i} out of range"
        );
        // SAFETY: i < slot_count, so the offset is inside the payload region.
        unsafe { self.payload.add(i * self.layout.slot_stride as usize) }
    }

    /// Semaphore storage of peer `i` (to be used through [`crate::sync::semaphore::Semaphore`]).
    #[inline]
    pub(crate) fn sem_ptr(&self, i: usize) -> *mut u8 {
        self.peer(i).sem.get() as *mut u8
    }
}

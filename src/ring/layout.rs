//! Segment layout: where everything lives, how big it is, and the header that says so.
//!
//! ```text
//! offset 0            Header      (256 bytes: magic, version, layout parameters, creator)
//! offset 256          Control     (cursors and counters, one cache line each)
//! offset 4096         peer table  (max_readers + max_writers entries of 256 bytes)
//! meta_offset         slot table  (slot_count entries of 128 bytes: stamp, shape, time, tag)
//! payload_offset      payloads    (slot_count × slot_stride bytes; page-aligned when large)
//! ```
//!
//! Every offset and size is derived from a handful of *primary* parameters (dtype, max shape,
//! slot count, mode, peer counts) by [`Layout::compute`]. The creator stores both the primary and
//! the derived values, plus a hash of all of them; [`Layout::from_header`] recomputes the derived
//! values from the primary ones and refuses a header where anything disagrees, so a corrupted or
//! hostile header can never produce an offset past the end of the mapping.
//! The byte-exact description is `docs/PROTOCOL.md`.

use crate::array::DType;
use crate::primitive::{AtomicU32, AtomicU64, Ordering};

/// `b"SHMFLOW\0"` read as a little-endian `u64`.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"SHMFLOW\0");
/// Layout version: bump on any change to this file or to the protocol.
pub(crate) const LAYOUT_VERSION: u32 = 3;
/// Bytes before the peer table (header + control block, padded to a page).
pub(crate) const HEADER_BYTES: u64 = 4096;
/// Offset of the control block inside the header page.
pub(crate) const CONTROL_OFFSET: u64 = 256;
/// Size of one peer-table entry.
pub(crate) const PEER_STRIDE: u64 = 256;
/// Size of one slot-metadata entry.
pub(crate) const META_STRIDE: u64 = 128;
/// Largest number of dimensions a ring supports.
pub const MAX_DIMS: usize = 8;
/// Largest slot count.
pub const MAX_SLOTS: u32 = 1 << 16;
/// Largest `max_readers + max_writers` (peer indices must fit the 12-bit owner field of a stamp).
pub const MAX_PEERS: u32 = 1024;
/// Largest total segment size accepted (16 TiB): keeps all arithmetic far from overflow.
pub(crate) const MAX_TOTAL: u64 = 1 << 44;
const PAGE: u64 = 4096;

/// How frames are delivered to readers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Every attached reader sees every frame; one writer at a time.
    Broadcast(Backpressure),
    /// Each frame goes to exactly one reader; several writers may attach.
    Queue,
}

/// What a broadcast writer does when the slowest reader has not released the oldest slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backpressure {
    /// Lossless: the writer waits for the slowest live reader.
    Block,
    /// Live: the writer never waits; a slow reader skips ahead and is told how many frames it
    /// missed. A slot a reader holds is never overwritten, so no frame is ever torn.
    DropOldest,
}

impl Mode {
    /// The header code (part of the layout).
    pub(crate) fn code(self) -> u32 {
        match self {
            Mode::Broadcast(Backpressure::Block) => 0,
            Mode::Broadcast(Backpressure::DropOldest) => 1,
            Mode::Queue => 2,
        }
    }

    pub(crate) fn from_code(code: u32) -> Option<Mode> {
        match code {
            0 => Some(Mode::Broadcast(Backpressure::Block)),
            1 => Some(Mode::Broadcast(Backpressure::DropOldest)),
            2 => Some(Mode::Queue),
            _ => None,
        }
    }

    /// The name used on the command line: `block`, `drop-oldest` or `queue`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Broadcast(Backpressure::Block) => "block",
            Mode::Broadcast(Backpressure::DropOldest) => "drop-oldest",
            Mode::Queue => "queue",
        }
    }

    /// Parses a name as printed by [`Mode::name`].
    pub fn from_name(name: &str) -> Option<Mode> {
        [
            Mode::Broadcast(Backpressure::Block),
            Mode::Broadcast(Backpressure::DropOldest),
            Mode::Queue,
        ]
        .into_iter()
        .find(|m| m.name() == name)
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a set of layout parameters is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The shape has no dimensions or more than [`MAX_DIMS`].
    #[error("shape must have 1 to {MAX_DIMS} dimensions, got {0}")]
    BadRank(usize),
    /// A dimension is zero.
    #[error("shape {0:?} has a zero dimension")]
    ZeroDim(Vec<usize>),
    /// The slot count is zero or above [`MAX_SLOTS`].
    #[error("slot count must be 1 to {MAX_SLOTS}, got {0}")]
    BadSlots(u32),
    /// No readers, no writers, or more peers than [`MAX_PEERS`].
    #[error("max_readers ({readers}) and max_writers ({writers}) must be at least 1 and add up to at most {MAX_PEERS}")]
    BadPeers {
        /// Requested readers.
        readers: u32,
        /// Requested writers.
        writers: u32,
    },
    /// Broadcast rings have exactly one writer.
    #[error("a broadcast ring has exactly one writer, got max_writers = {0}")]
    BroadcastWriters(u32),
    /// The segment would be larger than shmflow accepts (16 TiB), or its size overflows.
    #[error("the ring would need more than 16 TiB (shape {shape:?} × {slots} slots)")]
    TooLarge {
        /// Requested shape.
        shape: Vec<usize>,
        /// Requested slots.
        slots: u32,
    },
}

/// The primary and derived parameters of a ring: a validated, process-local copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    pub dtype: DType,
    pub max_shape: Vec<usize>,
    pub slot_count: u32,
    pub mode: Mode,
    pub max_readers: u32,
    pub max_writers: u32,
    pub slot_bytes: u64,
    pub slot_stride: u64,
    pub peers_offset: u64,
    pub meta_offset: u64,
    pub payload_offset: u64,
    pub total_size: u64,
}

fn round_up(x: u64, to: u64) -> Option<u64> {
    x.checked_add(to - 1).map(|v| v / to * to)
}

impl Layout {
    /// Derives every offset and size from the primary parameters.
    pub(crate) fn compute(
        dtype: DType,
        max_shape: &[usize],
        slot_count: u32,
        mode: Mode,
        max_readers: u32,
        max_writers: u32,
    ) -> Result<Layout, LayoutError> {
        if max_shape.is_empty() || max_shape.len() > MAX_DIMS {
            return Err(LayoutError::BadRank(max_shape.len()));
        }
        if max_shape.contains(&0) {
            return Err(LayoutError::ZeroDim(max_shape.to_vec()));
        }
        if slot_count == 0 || slot_count > MAX_SLOTS {
            return Err(LayoutError::BadSlots(slot_count));
        }
        if max_readers == 0
            || max_writers == 0
            || max_readers.saturating_add(max_writers) > MAX_PEERS
        {
            return Err(LayoutError::BadPeers {
                readers: max_readers,
                writers: max_writers,
            });
        }
        if matches!(mode, Mode::Broadcast(_)) && max_writers != 1 {
            return Err(LayoutError::BroadcastWriters(max_writers));
        }
        let too_large = || LayoutError::TooLarge {
            shape: max_shape.to_vec(),
            slots: slot_count,
        };
        let mut slot_bytes = dtype.size() as u64;
        for &d in max_shape {
            slot_bytes = slot_bytes
                .checked_mul(d as u64)
                .filter(|b| *b <= MAX_TOTAL)
                .ok_or_else(too_large)?;
        }
        // Small slots share pages but never cache lines; large ones start on a page so the
        // payload can be handed to APIs that want page alignment.
        let align = if slot_bytes >= PAGE { PAGE } else { 64 };
        let slot_stride = round_up(slot_bytes, align).ok_or_else(too_large)?;
        let peers = u64::from(max_readers) + u64::from(max_writers);
        let peers_offset = HEADER_BYTES;
        let meta_offset = peers_offset + peers * PEER_STRIDE;
        let payload_offset = round_up(meta_offset + u64::from(slot_count) * META_STRIDE, PAGE)
            .ok_or_else(too_large)?;
        let total_size = slot_stride
            .checked_mul(u64::from(slot_count))
            .and_then(|p| p.checked_add(payload_offset))
            .filter(|t| *t <= MAX_TOTAL)
            .ok_or_else(too_large)?;
        Ok(Layout {
            dtype,
            max_shape: max_shape.to_vec(),
            slot_count,
            mode,
            max_readers,
            max_writers,
            slot_bytes,
            slot_stride,
            peers_offset,
            meta_offset,
            payload_offset,
            total_size,
        })
    }

    /// Total number of peer-table entries (readers first, then writers).
    pub(crate) fn max_peers(&self) -> usize {
        self.max_readers as usize + self.max_writers as usize
    }

    /// FNV-1a (64 bit) over every layout field as little-endian `u64`s, in the order listed in
    /// `docs/PROTOCOL.md`. Guards the header against corruption, not against malice: `open`
    /// also recomputes every derived field.
    pub(crate) fn hash(&self) -> u64 {
        let mut words = vec![
            u64::from(LAYOUT_VERSION),
            u64::from(self.dtype.code()),
            self.dtype.size() as u64,
            self.max_shape.len() as u64,
            u64::from(self.mode.code()),
        ];
        for i in 0..MAX_DIMS {
            words.push(self.max_shape.get(i).map_or(0, |&d| d as u64));
        }
        words.extend([
            u64::from(self.slot_count),
            u64::from(self.max_readers),
            u64::from(self.max_writers),
            self.slot_bytes,
            self.slot_stride,
            self.peers_offset,
            PEER_STRIDE,
            self.meta_offset,
            META_STRIDE,
            self.payload_offset,
            self.total_size,
        ]);
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for w in words {
            for b in w.to_le_bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        h
    }

    /// Writes the header fields (all but the ready word) into `h`.
    pub(crate) fn write_header(&self, h: &Header, creator: Creator) {
        let r = Ordering::Relaxed;
        h.magic.store(MAGIC, r);
        h.header_size.store(HEADER_BYTES as u32, r);
        h.layout_hash.store(self.hash(), r);
        h.total_size.store(self.total_size, r);
        h.dtype.store(self.dtype.code(), r);
        h.elem_size.store(self.dtype.size() as u32, r);
        h.ndim.store(self.max_shape.len() as u32, r);
        h.mode.store(self.mode.code(), r);
        for (i, slot) in h.max_shape.iter().enumerate() {
            slot.store(self.max_shape.get(i).map_or(0, |&d| d as u64), r);
        }
        h.slot_count.store(self.slot_count, r);
        h.max_readers.store(self.max_readers, r);
        h.max_writers.store(self.max_writers, r);
        h.flags.store(0, r);
        h.slot_bytes.store(self.slot_bytes, r);
        h.slot_stride.store(self.slot_stride, r);
        h.peers_offset.store(self.peers_offset, r);
        h.peer_stride.store(PEER_STRIDE, r);
        h.meta_offset.store(self.meta_offset, r);
        h.meta_stride.store(META_STRIDE, r);
        h.payload_offset.store(self.payload_offset, r);
        h.creator_pid.store(creator.pid, r);
        h.creator_start_time.store(creator.start_time, r);
        h.created_unix_ns.store(creator.created_unix_ns, r);
        h.doorbell_token.store(creator.doorbell_token, r);
    }

    /// Reads and validates a header whose ready word has been observed (Acquire) as
    /// [`LAYOUT_VERSION`]. `file_size` is the size of the object as `fstat` reported it.
    pub(crate) fn from_header(
        h: &Header,
        file_size: u64,
    ) -> Result<(Layout, Creator), HeaderError> {
        let r = Ordering::Relaxed;
        if h.magic.load(r) != MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let version = h.ready.load(Ordering::Acquire);
        if version != LAYOUT_VERSION {
            return Err(HeaderError::Version(version));
        }
        if u64::from(h.header_size.load(r)) != HEADER_BYTES {
            return Err(HeaderError::Corrupt("header size"));
        }
        let dtype = DType::from_code(h.dtype.load(r)).ok_or(HeaderError::Corrupt("dtype code"))?;
        if h.elem_size.load(r) as usize != dtype.size() {
            return Err(HeaderError::Corrupt("element size"));
        }
        let mode = Mode::from_code(h.mode.load(r)).ok_or(HeaderError::Corrupt("delivery mode"))?;
        let ndim = h.ndim.load(r) as usize;
        if ndim == 0 || ndim > MAX_DIMS {
            return Err(HeaderError::Corrupt("number of dimensions"));
        }
        let mut shape = Vec::with_capacity(ndim);
        for (i, d) in h.max_shape.iter().enumerate() {
            let d = d.load(r);
            if i < ndim {
                let d = usize::try_from(d).map_err(|_| HeaderError::Corrupt("shape"))?;
                shape.push(d);
            } else if d != 0 {
                return Err(HeaderError::Corrupt("unused shape entries"));
            }
        }
        let layout = Layout::compute(
            dtype,
            &shape,
            h.slot_count.load(r),
            mode,
            h.max_readers.load(r),
            h.max_writers.load(r),
        )
        .map_err(HeaderError::Params)?;
        let stored = [
            h.slot_bytes.load(r),
            h.slot_stride.load(r),
            h.peers_offset.load(r),
            h.peer_stride.load(r),
            h.meta_offset.load(r),
            h.meta_stride.load(r),
            h.payload_offset.load(r),
            h.total_size.load(r),
        ];
        let derived = [
            layout.slot_bytes,
            layout.slot_stride,
            layout.peers_offset,
            PEER_STRIDE,
            layout.meta_offset,
            META_STRIDE,
            layout.payload_offset,
            layout.total_size,
        ];
        if stored != derived {
            return Err(HeaderError::Corrupt(
                "derived offsets disagree with the parameters",
            ));
        }
        if h.layout_hash.load(r) != layout.hash() {
            return Err(HeaderError::Corrupt("layout hash"));
        }
        if file_size < layout.total_size {
            return Err(HeaderError::Truncated {
                size: file_size,
                expected: layout.total_size,
            });
        }
        let creator = Creator {
            pid: h.creator_pid.load(r),
            start_time: h.creator_start_time.load(r),
            created_unix_ns: h.created_unix_ns.load(r),
            doorbell_token: h.doorbell_token.load(r),
        };
        Ok((layout, creator))
    }
}

/// What the header says about the process that created the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Creator {
    pub pid: u32,
    pub start_time: u64,
    pub created_unix_ns: u64,
    pub doorbell_token: u64,
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeaderError {
    BadMagic,
    Version(u32),
    Corrupt(&'static str),
    Params(LayoutError),
    Truncated { size: u64, expected: u64 },
}

/// The first 256 bytes of a segment. Every field is an atomic so that no access is a data race,
/// whatever another process does to the memory.
#[repr(C)]
pub(crate) struct Header {
    pub magic: AtomicU64,
    /// 0 while the creator initialises; [`LAYOUT_VERSION`] once everything is written (Release).
    pub ready: AtomicU32,
    pub header_size: AtomicU32,
    pub layout_hash: AtomicU64,
    pub total_size: AtomicU64,
    pub dtype: AtomicU32,
    pub elem_size: AtomicU32,
    pub ndim: AtomicU32,
    pub mode: AtomicU32,
    pub max_shape: [AtomicU64; MAX_DIMS],
    pub slot_count: AtomicU32,
    pub max_readers: AtomicU32,
    pub max_writers: AtomicU32,
    pub flags: AtomicU32,
    pub slot_bytes: AtomicU64,
    pub slot_stride: AtomicU64,
    pub peers_offset: AtomicU64,
    pub peer_stride: AtomicU64,
    pub meta_offset: AtomicU64,
    pub meta_stride: AtomicU64,
    pub payload_offset: AtomicU64,
    pub creator_pid: AtomicU32,
    pub _pad0: AtomicU32,
    pub creator_start_time: AtomicU64,
    pub created_unix_ns: AtomicU64,
    pub doorbell_token: AtomicU64,
    pub _reserved: [AtomicU64; 5],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_256_bytes() {
        #[cfg(not(loom))]
        assert_eq!(std::mem::size_of::<Header>(), 256);
    }

    #[test]
    fn frame_1080p_layout() {
        let l = Layout::compute(DType::U8, &[1080, 1920, 3], 8, Mode::Queue, 4, 4).unwrap();
        assert_eq!(l.slot_bytes, 6_220_800);
        assert_eq!(l.slot_stride % 4096, 0);
        assert!(l.slot_stride >= l.slot_bytes);
        assert_eq!(l.peers_offset, 4096);
        assert_eq!(l.meta_offset, 4096 + 8 * 256);
        assert_eq!(l.payload_offset % 4096, 0);
        assert_eq!(l.total_size, l.payload_offset + 8 * l.slot_stride);
    }

    #[test]
    fn small_slots_are_cache_line_aligned() {
        let l = Layout::compute(DType::F32, &[3], 4, Mode::Queue, 1, 1).unwrap();
        assert_eq!(l.slot_bytes, 12);
        assert_eq!(l.slot_stride, 64);
    }

    #[test]
    fn refuses_bad_parameters() {
        let c = |shape: &[usize], slots, mode, r, w| {
            Layout::compute(DType::U8, shape, slots, mode, r, w)
        };
        let b = Mode::Broadcast(Backpressure::Block);
        assert_eq!(c(&[], 4, b, 1, 1), Err(LayoutError::BadRank(0)));
        assert_eq!(c(&[1; 9], 4, b, 1, 1), Err(LayoutError::BadRank(9)));
        assert!(matches!(
            c(&[4, 0], 4, b, 1, 1),
            Err(LayoutError::ZeroDim(_))
        ));
        assert_eq!(c(&[4], 0, b, 1, 1), Err(LayoutError::BadSlots(0)));
        assert!(matches!(
            c(&[4], 4, b, 0, 1),
            Err(LayoutError::BadPeers { .. })
        ));
        assert!(matches!(
            c(&[4], 4, Mode::Queue, 1000, 100),
            Err(LayoutError::BadPeers { .. })
        ));
        assert_eq!(c(&[4], 4, b, 1, 2), Err(LayoutError::BroadcastWriters(2)));
        assert!(matches!(
            c(&[usize::MAX, usize::MAX], 4, b, 1, 1),
            Err(LayoutError::TooLarge { .. })
        ));
        assert!(matches!(
            c(&[1 << 20, 1 << 20], 64, b, 1, 1),
            Err(LayoutError::TooLarge { .. })
        ));
    }

    #[test]
    fn hash_matches_the_documented_test_vector() {
        // docs/PROTOCOL.md, "Layout hash": clients in other languages check against this.
        let l = Layout::compute(DType::U8, &[4, 4], 4, Mode::Queue, 2, 2).unwrap();
        assert_eq!(
            (
                l.slot_bytes,
                l.slot_stride,
                l.meta_offset,
                l.payload_offset,
                l.total_size
            ),
            (16, 64, 5120, 8192, 8448)
        );
        assert_eq!(l.hash(), 0x70be_9b44_0107_3c66);
    }

    #[test]
    fn hash_depends_on_every_parameter() {
        let base = Layout::compute(DType::U8, &[4, 4], 4, Mode::Queue, 2, 2).unwrap();
        let others = [
            Layout::compute(DType::I8, &[4, 4], 4, Mode::Queue, 2, 2),
            Layout::compute(DType::U8, &[4, 5], 4, Mode::Queue, 2, 2),
            Layout::compute(DType::U8, &[16], 4, Mode::Queue, 2, 2),
            Layout::compute(DType::U8, &[4, 4], 5, Mode::Queue, 2, 2),
            Layout::compute(DType::U8, &[4, 4], 4, Mode::Queue, 3, 2),
            Layout::compute(DType::U8, &[4, 4], 4, Mode::Queue, 2, 3),
        ];
        for o in others {
            assert_ne!(o.unwrap().hash(), base.hash());
        }
    }
}

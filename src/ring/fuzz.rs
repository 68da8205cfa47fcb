//! Hostile and corrupted segments: the entry point shared by `tests/ring_hostile.rs` (proptest)
//! and the `cargo fuzz` target in `fuzz/`. Hidden from the docs; not a stable API.
//!
//! [`open_and_exercise`] turns arbitrary bytes into a segment, opens it the way a process of
//! shmflow would, and uses whatever it gets: writers reserve, fill and commit, readers receive
//! and read every element, with waits of a few milliseconds, then everything detaches and the
//! segment is removed. The contract under test: the result is an [`OpenError`] or a ring that
//! works (possibly refusing frames or reporting errors), never a panic, an out-of-bounds view,
//! an endless loop or a hang. Every view handed out is checked to lie inside one slot's payload;
//! a violation panics (that is a finding, not an expected outcome).
//!
//! # Input format
//!
//! The first byte chooses the mode (`byte % 3`):
//!
//! * **0, raw**: the remaining bytes are the whole file (any length, including 0).
//! * **1, state**: a real ring is built from 9 parameter bytes (dtype, rank and dimensions,
//!   slots, mode, peers, history; see [`Params`]), optionally used for a few frames (a reader
//!   keeps one), and then the rest of the input is a list of patches applied to the header,
//!   control block, peer table and slot table ([`apply_patches`]): byte chunks, 64-bit words at
//!   chosen fields, and "recompute the layout hash" (so a lying header passes the hash check).
//! * **2, flips**: as 1, but the rest is a list of bit positions (`u32` LE) flipped in the live
//!   ring (the state regions, or anywhere with the top bit set).
//!
//! In modes 1 and 2 the endpoints that were attached before the damage go on working on the
//! damaged ring, and then a fresh open exercises it as a newcomer would.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ndarray::{Dimension, Ix1, Ix2, Ix3};

use super::api::open_segment;
use super::layout::{Backpressure, Mode, CONTROL_OFFSET, META_STRIDE, PEER_STRIDE};
use super::shared::Shared;
use super::{Reader, Ring, WaitStrategy, Writer};
use crate::array::{DType, Element};
use crate::ring::error::{OpenError, RecvTimeoutError, ReserveTimeoutError, TryRecvError};

/// What [`open_and_exercise`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No open succeeded and no endpoint was attached: the name of the [`OpenError`] variant.
    Refused(&'static str),
    /// Something opened (or endpoints attached before the damage lived on) and was exercised.
    Worked(Stats),
    /// The input could not be set up (creating the scratch segment failed, e.g. `/dev/shm`
    /// full): nothing was tested.
    Skipped(String),
}

/// Counters of what an exercise did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Successful opens.
    pub opened: u32,
    /// Refused opens.
    pub refused: u32,
    /// Readers and writers attached.
    pub attached: u32,
    /// Attach attempts refused (`TooManyReaders`, `Reclaimed`, ...).
    pub attach_errors: u32,
    /// Frames committed.
    pub committed: u64,
    /// Frames received (and every element read).
    pub received: u64,
    /// Frames refused for bad metadata (`Corrupted`).
    pub corrupted: u64,
    /// Reservations or receptions that timed out, found the ring full or empty.
    pub waited: u64,
    /// Other errors (`Disconnected`, `Exhausted`).
    pub other_errors: u64,
}

/// Longest wait of a single operation.
const WAIT: Duration = Duration::from_millis(3);

/// Opens `bytes` as a segment (see the module docs for the format), exercises what opens and
/// removes the segment.
///
/// # Panics
///
/// Only when shmflow breaks its contract (a view outside the slot it belongs to, or a panic
/// inside the library): that is what the callers look for.
pub fn open_and_exercise(bytes: &[u8]) -> Outcome {
    let Some((&mode, rest)) = bytes.split_first() else {
        return raw(&[]);
    };
    match mode % 3 {
        0 => raw(rest),
        1 => live(rest, false),
        _ => live(rest, true),
    }
}

// ----------------------------------------------------------------------------- scratch files

/// A uniquely named segment file, removed on drop.
struct Scratch {
    name: String,
}

impl Scratch {
    fn new() -> Scratch {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let r = crate::sys::random_u64() & 0xffff_ffff;
        Scratch {
            name: format!("fuzz-{}-{n}-{r:08x}", crate::sys::getpid()),
        }
    }

    fn path(&self) -> std::path::PathBuf {
        crate::shm::segment_path(&self.name)
    }

    fn file(&self) -> std::io::Result<File> {
        OpenOptions::new().read(true).write(true).open(self.path())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Usually gone already (the creating ring unlinks it); errors do not matter here.
        let _ = std::fs::remove_file(self.path());
    }
}

fn open_error_kind(e: &OpenError) -> &'static str {
    match e {
        OpenError::InvalidName(_) => "InvalidName",
        OpenError::NotFound { .. } => "NotFound",
        OpenError::PermissionDenied { .. } => "PermissionDenied",
        OpenError::NotARing { .. } => "NotARing",
        OpenError::VersionMismatch { .. } => "VersionMismatch",
        OpenError::NotReady { .. } => "NotReady",
        OpenError::Truncated { .. } => "Truncated",
        OpenError::Corrupted { .. } => "Corrupted",
        OpenError::LayoutMismatch { .. } => "LayoutMismatch",
        OpenError::Io { .. } => "Io",
        OpenError::Timeout { .. } => "Timeout",
    }
}

macro_rules! with_dtype {
    ($dtype:expr, $f:ident ( $($arg:expr),* )) => {
        match $dtype {
            DType::U8 => $f::<u8>($($arg),*),
            DType::I8 => $f::<i8>($($arg),*),
            DType::U16 => $f::<u16>($($arg),*),
            DType::I16 => $f::<i16>($($arg),*),
            DType::U32 => $f::<u32>($($arg),*),
            DType::I32 => $f::<i32>($($arg),*),
            DType::U64 => $f::<u64>($($arg),*),
            DType::I64 => $f::<i64>($($arg),*),
            DType::F32 => $f::<f32>($($arg),*),
            DType::F64 => $f::<f64>($($arg),*),
        }
    };
}

// --------------------------------------------------------------------------------- raw mode

fn raw(bytes: &[u8]) -> Outcome {
    let scratch = Scratch::new();
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(scratch.path())
        .and_then(|f| f.write_all_at(bytes, 0));
    if let Err(e) = written {
        return Outcome::Skipped(format!("writing the scratch segment: {e}"));
    }
    let mut st = Stats::default();
    match open_everything(&scratch.name, &mut st) {
        Some(kind) if st.opened == 0 => Outcome::Refused(kind),
        _ => Outcome::Worked(st),
    }
}

/// Opens `name` as a newcomer: with a wrong element type (must be refused), then with the
/// header's dtype, dynamic and fixed rank, and exercises each. Returns the first open error.
fn open_everything(name: &str, st: &mut Stats) -> Option<&'static str> {
    let dtype = match open_segment(name, Duration::ZERO) {
        Ok((_, layout, _)) => layout.dtype,
        Err(e) => {
            st.refused += 1;
            // The public path gives the same answer.
            let public = Ring::<u8>::open_within(name, Duration::ZERO).err();
            debug_assert!(public.is_some(), "open_segment refused, Ring::open did not");
            return Some(open_error_kind(&e));
        }
    };
    // A reader of the wrong element type is refused, whatever the state.
    let wrong = if dtype == DType::U8 {
        Ring::<u16>::open_within(name, Duration::ZERO).err()
    } else {
        Ring::<u8>::open_within(name, Duration::ZERO).err()
    };
    assert!(
        matches!(wrong, Some(OpenError::LayoutMismatch { .. })),
        "wrong dtype: {wrong:?}"
    );
    with_dtype!(dtype, open_typed(name, st));
    None
}

fn open_typed<T: Element>(name: &str, st: &mut Stats) {
    let ring = match Ring::<T>::open_within(name, Duration::ZERO) {
        Ok(r) => r,
        Err(_) => {
            st.refused += 1;
            return;
        }
    };
    st.opened += 1;
    let info = ring.info();
    let _ = ring.status();
    let _ = ring.reclaim_dead_peers();
    let _ = super::api::inspect(name);
    exercise(&ring, st);
    match info.max_shape.len() {
        1 => open_fixed::<T, Ix1>(name, st),
        2 => open_fixed::<T, Ix2>(name, st),
        3 => open_fixed::<T, Ix3>(name, st),
        _ => {}
    }
}

fn open_fixed<T: Element, D: Dimension>(name: &str, st: &mut Stats) {
    match Ring::<T, D>::open_within(name, Duration::ZERO) {
        Ok(ring) => {
            st.opened += 1;
            exercise(&ring, st);
        }
        Err(_) => st.refused += 1,
    }
}

// ------------------------------------------------------------------------------- exercising

/// Endpoints of one ring.
struct Endpoints<T: Element, D: Dimension> {
    writer: Option<Writer<T, D>>,
    readers: Vec<Reader<T, D>>,
}

fn counted<E>(r: Result<E, crate::ring::error::AttachError>, st: &mut Stats) -> Option<E> {
    match r {
        Ok(e) => {
            st.attached += 1;
            Some(e)
        }
        Err(_) => {
            st.attach_errors += 1;
            None
        }
    }
}

impl<T: Element, D: Dimension> Endpoints<T, D> {
    fn attach(ring: &Ring<T, D>, st: &mut Stats) -> Self {
        let writer = counted(ring.writer(), st);
        let mut readers = Vec::new();
        readers.extend(counted(ring.reader(), st));
        readers.extend(counted(ring.lossy_reader(), st));
        for r in &mut readers {
            r.set_wait_strategy(WaitStrategy::SpinThenBlock {
                spin: Duration::from_micros(20),
            });
            r.set_liveness_interval(Duration::from_millis(1));
        }
        let mut e = Endpoints { writer, readers };
        if let Some(w) = &mut e.writer {
            w.set_wait_strategy(WaitStrategy::SpinThenBlock {
                spin: Duration::from_micros(20),
            });
            w.set_liveness_interval(Duration::from_millis(1));
        }
        e
    }

    /// A few rounds of writing and reading with every form of the calls.
    fn rounds(&mut self, rounds: u64, st: &mut Stats) {
        for round in 0..rounds {
            if let Some(w) = &mut self.writer {
                write_one(w, round, st);
            }
            for r in &mut self.readers {
                read_one(r, round, st);
            }
        }
        for r in &mut self.readers {
            let _ = r.skip_to_latest();
            let _ = (r.missed(), r.frames_read(), r.held());
        }
    }
}

fn exercise<T: Element, D: Dimension>(ring: &Ring<T, D>, st: &mut Stats) {
    let mut e = Endpoints::attach(ring, st);
    e.rounds(4, st);
}

/// Asserts that `len` bytes at `ptr` lie inside one slot's payload of `shared`.
fn assert_in_slot(shared: &Shared, ptr: *const u8, len: usize, align: usize) {
    let l = &shared.layout;
    let seg = shared.segment().expect("a segment-backed ring");
    let payload = seg.as_ptr() as usize + l.payload_offset as usize;
    let at = ptr as usize;
    assert!(
        at >= payload,
        "view at {at:#x} before the payloads ({payload:#x})"
    );
    let off = (at - payload) as u64;
    let (slot, within) = (off / l.slot_stride, off % l.slot_stride);
    assert!(
        slot < u64::from(l.slot_count) && within == 0 && len as u64 <= l.slot_bytes,
        "view of {len} bytes at payload offset {off} is not inside one slot \
         ({} slots of {} bytes, stride {})",
        l.slot_count,
        l.slot_bytes,
        l.slot_stride
    );
    assert_eq!(at % align, 0, "misaligned view");
    assert!(off + len as u64 <= l.total_size - l.payload_offset);
}

fn write_one<T: Element, D: Dimension>(w: &mut Writer<T, D>, round: u64, st: &mut Stats) {
    let ring = w.ring().clone();
    let slot = if round == 0 {
        w.try_reserve().map_err(|_| None)
    } else {
        w.reserve_timeout(WAIT).map_err(Some)
    };
    let mut slot = match slot {
        Ok(s) => s,
        Err(None | Some(ReserveTimeoutError::Timeout)) => {
            st.waited += 1;
            return;
        }
        Err(Some(_)) => {
            st.other_errors += 1;
            return;
        }
    };
    if round % 2 == 1 {
        let smaller: Vec<usize> = slot.shape().iter().map(|&d| d.div_ceil(2)).collect();
        slot.set_shape(&smaller)
            .expect("a smaller shape of the same rank fits");
    }
    let bytes = slot.as_mut_bytes();
    assert_in_slot(
        ring.shared(),
        bytes.as_ptr(),
        bytes.len(),
        std::mem::align_of::<T>(),
    );
    bytes.fill(round as u8 ^ 0x5a);
    for x in slot.view_mut().iter_mut() {
        *x = std::hint::black_box(*x);
    }
    slot.set_tag(round);
    if round == 2 {
        drop(slot); // discarded, never published
    } else {
        slot.commit();
        st.committed += 1;
    }
}

fn read_one<T: Element, D: Dimension>(r: &mut Reader<T, D>, round: u64, st: &mut Stats) {
    let ring = r.ring().clone();
    let frame = if round == 0 {
        r.try_recv().map_err(|e| match e {
            TryRecvError::Empty => 0,
            TryRecvError::Corrupted { .. } => 1,
            _ => 2,
        })
    } else {
        r.recv_timeout(WAIT).map_err(|e| match e {
            RecvTimeoutError::Timeout => 0,
            RecvTimeoutError::Corrupted { .. } => 1,
            _ => 2,
        })
    };
    match frame {
        Ok(f) => {
            let bytes = f.as_bytes();
            assert_in_slot(
                ring.shared(),
                bytes.as_ptr(),
                bytes.len(),
                std::mem::align_of::<T>(),
            );
            let sum = bytes
                .iter()
                .fold(0u64, |a, &b| a.wrapping_add(u64::from(b)));
            let mut elems = 0usize;
            for x in f.iter() {
                std::hint::black_box(*x);
                elems += 1;
            }
            assert_eq!(elems, f.shape().iter().product::<usize>());
            std::hint::black_box((sum, f.seq(), f.missed(), f.tag(), f.timestamp_ns()));
            st.received += 1;
        }
        Err(0) => st.waited += 1,
        Err(1) => st.corrupted += 1,
        Err(_) => st.other_errors += 1,
    }
}

// ------------------------------------------------------------------------ state and flips

/// The ring a state or flips input builds (9 bytes, missing ones read as 0).
#[derive(Debug, Clone)]
struct Params {
    dtype: DType,
    shape: Vec<usize>,
    slots: u32,
    mode: Mode,
    readers: u32,
    writers: u32,
    /// Frames written (and partly read) before the damage; `None`: no endpoints before.
    history: Option<u8>,
}

impl Params {
    fn parse(data: &[u8]) -> (Params, &[u8]) {
        let mut b = [0u8; 9];
        let n = data.len().min(9);
        b[..n].copy_from_slice(&data[..n]);
        let ndim = 1 + usize::from(b[1] % 3);
        let shape = (0..ndim).map(|i| 1 + usize::from(b[2 + i] % 6)).collect();
        let mode = match b[6] % 3 {
            0 => Mode::Broadcast(Backpressure::Block),
            1 => Mode::Broadcast(Backpressure::DropOldest),
            _ => Mode::Queue,
        };
        // One ring in 64 has the largest slot count (an 8 MiB slot table): scans over it
        // must stay bounded.
        let slots = if b[5] % 64 == 63 {
            super::MAX_SLOTS
        } else {
            1 + u32::from(b[5] % 6)
        };
        let params = Params {
            dtype: DType::ALL[usize::from(b[0] % 10)],
            shape,
            slots,
            mode,
            readers: 1 + u32::from(b[7] % 3),
            writers: if mode == Mode::Queue {
                1 + u32::from((b[7] >> 4) % 3)
            } else {
                1
            },
            history: (b[8] & 1 == 1).then_some(b[8] >> 4),
        };
        (params, &data[n..])
    }
}

fn live(data: &[u8], flips: bool) -> Outcome {
    let (params, ops) = Params::parse(data);
    with_dtype!(params.dtype, live_typed(&params, ops, flips))
}

fn live_typed<T: Element>(p: &Params, ops: &[u8], flips: bool) -> Outcome {
    let scratch = Scratch::new();
    let ring = match Ring::<T>::create(&scratch.name)
        .shape(&p.shape)
        .slots(p.slots)
        .mode(p.mode)
        .max_readers(p.readers)
        .max_writers(p.writers)
        .build()
    {
        Ok(r) => r,
        Err(e) => return Outcome::Skipped(format!("creating the ring: {e}")),
    };
    let mut st = Stats::default();
    let mut before = None;
    if let Some(frames) = p.history {
        let mut e = Endpoints::attach(&ring, &mut st);
        for k in 0..u64::from(frames) {
            if let Some(w) = &mut e.writer {
                write_one(w, k % 2, &mut st); // try_reserve, or reserve_timeout + smaller shape
            }
            if k % 3 != 2 {
                if let Some(r) = e.readers.first_mut() {
                    read_one(r, 0, &mut st); // the last one stays held
                }
            }
        }
        before = Some(e);
    }
    let file = match scratch.file() {
        Ok(f) => f,
        Err(e) => return Outcome::Skipped(format!("opening the scratch segment: {e}")),
    };
    let shared = ring.shared();
    if flips {
        apply_flips(&file, shared, ops);
    } else {
        apply_patches(&file, shared, ops);
    }
    // The endpoints attached before the damage go on, then a newcomer opens the ring.
    if let Some(e) = &mut before {
        e.rounds(3, &mut st);
    }
    let refused = open_everything(&scratch.name, &mut st);
    drop(before);
    drop(ring);
    match refused {
        Some(kind) if st.opened == 0 && st.attached == 0 => Outcome::Refused(kind),
        _ => Outcome::Worked(st),
    }
}

fn word(ops: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    let end = ops.len().min(at + 8);
    if at < end {
        b[..end - at].copy_from_slice(&ops[at..end]);
    }
    u64::from_le_bytes(b)
}

/// Applies patches to the state regions (header, control block, peer table, slot table).
///
/// Each patch starts with a kind byte (`% 6`):
/// 0. `off: u16 LE, len: u8, bytes[len]`: bytes at `off % region`;
/// 1. `i: u8, _: u8, value: u64 LE`: control-block word `i % 32`;
/// 2. `entry: u8, w: u8, value`: word `w % 16` of peer entry `entry % peers`;
/// 3. `entry: u8, w: u8, value`: word `w % 16` of slot-table entry `entry % slots`;
/// 4. `i: u8, _: u8, value`: header word `i % 32`;
/// 5. recompute the layout hash over the header as it is now.
fn apply_patches(file: &File, shared: &Shared, ops: &[u8]) {
    let l = &shared.layout;
    let region = l.payload_offset;
    let put = |off: u64, bytes: &[u8]| {
        let end = (off + bytes.len() as u64).min(region);
        if off < end {
            let _ = file.write_all_at(&bytes[..(end - off) as usize], off);
        }
    };
    let mut i = 0;
    while i < ops.len() {
        let kind = ops[i] % 6;
        let (a, b) = (*ops.get(i + 1).unwrap_or(&0), *ops.get(i + 2).unwrap_or(&0));
        let value = word(ops, i + 3).to_le_bytes();
        match kind {
            0 => {
                let off = u64::from(u16::from_le_bytes([a, b])) % region;
                let len = usize::from(*ops.get(i + 3).unwrap_or(&0));
                let start = (i + 4).min(ops.len());
                let end = (start + len).min(ops.len());
                put(off, &ops[start..end]);
                i = end;
                continue;
            }
            1 => put(CONTROL_OFFSET + 8 * u64::from(a % 32), &value),
            2 => {
                let entry = u64::from(a) % l.max_peers() as u64;
                put(
                    l.peers_offset + PEER_STRIDE * entry + 8 * u64::from(b % 16),
                    &value,
                );
            }
            3 => {
                let entry = u64::from(a) % u64::from(l.slot_count);
                put(
                    l.meta_offset + META_STRIDE * entry + 8 * u64::from(b % 16),
                    &value,
                );
            }
            4 => put(8 * u64::from(a % 32), &value),
            _ => {
                let mut h = [0u8; 256];
                if file.read_exact_at(&mut h, 0).is_ok() {
                    put(16, &raw_layout_hash(&h).to_le_bytes());
                }
                i += 1;
                continue;
            }
        }
        i += 11;
    }
}

/// Flips bits: each `u32` LE is a bit position in the state regions, or anywhere in the file
/// when its top bit is set.
fn apply_flips(file: &File, shared: &Shared, ops: &[u8]) {
    let l = &shared.layout;
    for chunk in ops.chunks(4) {
        let pos = word(chunk, 0);
        let bits = if pos & 0x8000_0000 != 0 {
            l.total_size * 8
        } else {
            l.payload_offset * 8
        };
        let bit = (pos & 0x7fff_ffff) % bits;
        let mut byte = [0u8];
        if file.read_exact_at(&mut byte, bit / 8).is_ok() {
            byte[0] ^= 1 << (bit % 8);
            let _ = file.write_all_at(&byte, bit / 8);
        }
    }
}

/// The layout hash of docs/PROTOCOL.md over raw header bytes (whatever they say).
fn raw_layout_hash(h: &[u8; 256]) -> u64 {
    let u32_at = |at: usize| u64::from(u32::from_le_bytes(h[at..at + 4].try_into().unwrap()));
    let u64_at = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().unwrap());
    let mut words = vec![u32_at(8), u32_at(32), u32_at(36), u32_at(40), u32_at(44)];
    words.extend((0..8).map(|i| u64_at(48 + 8 * i)));
    words.extend([u32_at(112), u32_at(116), u32_at(120)]);
    words.extend((0..7).map(|i| u64_at(128 + 8 * i)));
    words.push(u64_at(24));
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for w in words {
        for b in w.to_le_bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_layout_hash_matches_the_library() {
        let name = Scratch::new();
        let ring = Ring::<f32>::create(&name.name)
            .shape([3, 5])
            .slots(3)
            .mode(Mode::Queue)
            .build()
            .unwrap();
        let mut h = [0u8; 256];
        name.file().unwrap().read_exact_at(&mut h, 0).unwrap();
        assert_eq!(raw_layout_hash(&h), ring.shared().layout.hash());
    }

    #[test]
    fn every_mode_works_on_an_undamaged_ring() {
        for input_mode in [1, 2] {
            for ring_mode in 0..3u8 {
                // No damage: a real ring with history, then a newcomer.
                let input = [input_mode, 0, 1, 3, 3, 0, 2, ring_mode, 0, 0x31];
                let out = open_and_exercise(&input);
                let Outcome::Worked(st) = out else {
                    panic!("{input:?}: {out:?}")
                };
                assert!(
                    st.opened >= 2 && st.committed > 0 && st.received > 0,
                    "{st:?}"
                );
                assert_eq!(st.corrupted, 0, "{st:?}");
            }
        }
        assert_eq!(open_and_exercise(&[]), Outcome::Refused("NotReady"));
        assert_eq!(
            open_and_exercise(&[0, 1, 2, 3]),
            Outcome::Refused("Truncated")
        );
    }
}

//! Creating and opening rings: [`RingBuilder`], [`Ring`].

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ndarray::{Dimension, IxDyn};

use super::endpoint::{Endpoint, Owner};
use super::layout::{
    self, Backpressure, Creator, HeaderError, Layout, Mode, HEADER_BYTES, LAYOUT_VERSION,
};
use super::liveness::{self, Liveness, PeerLock, WriterHold, CREATOR_BYTE, LOCK_BASE};
use super::protocol::{peer_pid, peer_status, ps, FLAG_READY};
use super::protocol::{Role, Writers};
use super::reader::{Reader, ReaderBuilder};
use super::shared::Shared;
use super::wait;
use super::writer::{Writer, WriterCore};
use crate::array::{DType, Element};
use crate::primitive::Ordering::*;
use crate::ring::error::{AttachError, CreateError, OpenError};
use crate::shm::{Segment, SegmentCreateError, SegmentOpenError};
use crate::sync::semaphore::Semaphore;
use crate::sys;

/// Default number of slots.
pub const DEFAULT_SLOTS: u32 = 8;
/// Default maximum number of readers.
pub const DEFAULT_MAX_READERS: u32 = 4;
/// Default maximum number of writers of a queue ring (a broadcast ring has one).
pub const DEFAULT_MAX_WRITERS: u32 = 4;
/// Default permissions of a new segment: owner read/write only.
pub const DEFAULT_PERMISSIONS: u32 = 0o600;

/// Settings for a new ring. Made by [`Ring::create`].
///
/// # Examples
///
/// ```
/// use shmflow::{Backpressure, Mode, Ring};
/// # let name = format!("doc-builder-{}", std::process::id());
/// let ring = Ring::<u8>::create(&name)
///     .shape([480, 640, 3])
///     .slots(4)
///     .mode(Mode::Broadcast(Backpressure::DropOldest))
///     .build()?;
/// assert_eq!(ring.info().max_shape, [480, 640, 3]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a RingBuilder does nothing until .build()"]
pub struct RingBuilder<T: Element, D: Dimension = IxDyn> {
    name: String,
    shape: Vec<usize>,
    slots: u32,
    mode: Mode,
    max_readers: u32,
    max_writers: Option<u32>,
    permissions: u32,
    group: Option<u32>,
    _t: PhantomData<fn() -> (T, D)>,
}

impl<T: Element, D: Dimension> RingBuilder<T, D> {
    /// The largest frame shape (each frame may use a smaller one). Required.
    pub fn shape(mut self, shape: impl AsRef<[usize]>) -> Self {
        self.shape = shape.as_ref().to_vec();
        self
    }

    /// Number of slots (default [`DEFAULT_SLOTS`]).
    pub fn slots(mut self, slots: u32) -> Self {
        self.slots = slots;
        self
    }

    /// Delivery mode (default: broadcast, lossless).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Maximum number of readers attached at once (default [`DEFAULT_MAX_READERS`]).
    pub fn max_readers(mut self, n: u32) -> Self {
        self.max_readers = n;
        self
    }

    /// Maximum number of writers attached at once (queue mode; default
    /// [`DEFAULT_MAX_WRITERS`]; broadcast rings always have one).
    pub fn max_writers(mut self, n: u32) -> Self {
        self.max_writers = Some(n);
        self
    }

    /// File mode of the segment (default `0o600`: only this user may open it). `0o660`
    /// shares the ring with the segment's group: this process's group, or the one set with
    /// [`RingBuilder::group`].
    pub fn permissions(mut self, mode: u32) -> Self {
        self.permissions = mode & 0o777;
        self
    }

    /// The segment's group (default: this process's effective group). With
    /// `.permissions(0o660)`, members of the group may open the ring and attach readers and
    /// writers; other users may not. The creator must be root or a member of the group
    /// (otherwise [`build`](RingBuilder::build) fails with [`CreateError::GroupDenied`]).
    /// Look a group name up with [`group_id`](crate::group_id).
    pub fn group(mut self, gid: u32) -> Self {
        self.group = Some(gid);
        self
    }

    fn layout(&self) -> Result<Layout, CreateError> {
        let writers = match (self.mode, self.max_writers) {
            (_, Some(n)) => n,
            (Mode::Queue, None) => DEFAULT_MAX_WRITERS,
            (Mode::Broadcast(_), None) => 1,
        };
        if let Some(n) = D::NDIM {
            if n != self.shape.len() {
                return Err(CreateError::Layout(layout::LayoutError::BadRank(
                    self.shape.len(),
                )));
            }
        }
        Ok(Layout::compute(
            T::DTYPE,
            &self.shape,
            self.slots,
            self.mode,
            self.max_readers,
            writers,
        )?)
    }

    /// Creates the segment (exclusively: an existing name is an error) and returns the ring.
    /// The returned [`Ring`] owns the segment and unlinks it when the last handle to it
    /// (including writers and readers made from it) is dropped, unless
    /// [`Ring::release_ownership`] is called.
    ///
    /// # Errors
    ///
    /// [`CreateError::InvalidName`], [`CreateError::Layout`] (zero or too many dimensions,
    /// slots or peers; too large), [`CreateError::AlreadyExists`],
    /// [`CreateError::PermissionDenied`], [`CreateError::Io`] (e.g. `/dev/shm` full).
    pub fn build(self) -> Result<Ring<T, D>, CreateError> {
        let layout = self.layout()?;
        let name = self.name.clone();
        let segment = Segment::create(&name, layout.total_size as usize).map_err(|e| match e {
            SegmentCreateError::Name(n) => CreateError::InvalidName(n),
            SegmentCreateError::AlreadyExists => CreateError::AlreadyExists { name: name.clone() },
            SegmentCreateError::PermissionDenied => {
                CreateError::PermissionDenied { name: name.clone() }
            }
            SegmentCreateError::NoSpace { len } => CreateError::NoSpace {
                name: name.clone(),
                bytes: len,
            },
            SegmentCreateError::Io(source) => CreateError::Io {
                name: name.clone(),
                source,
            },
        })?;
        let pid = sys::getpid();
        let creator = Creator {
            pid,
            start_time: sys::process_start_time(pid).unwrap_or(0),
            created_unix_ns: sys::realtime_ns(),
            doorbell_token: sys::random_u64(),
        };
        // SAFETY: the segment was just created with exactly total_size bytes (ftruncate zero-
        // fills it), page-aligned by mmap; the layout was computed by Layout::compute.
        let shared = unsafe { Shared::from_segment(layout.clone(), segment) };
        layout.write_header(shared.header(), creator);
        shared.init_slots();
        init_semaphores(&shared).map_err(|source| CreateError::Io {
            name: name.clone(),
            source,
        })?;
        // Both chowns (FIFO, segment) refuse a creator outside the requested group.
        let chown_error = |source: std::io::Error| match self.group {
            Some(gid) if source.kind() == std::io::ErrorKind::PermissionDenied => {
                CreateError::GroupDenied {
                    name: name.clone(),
                    gid,
                }
            }
            _ => CreateError::Io {
                name: name.clone(),
                source,
            },
        };
        // The writer FIFO first: a ring is complete with it (see `liveness`). Giving it to the
        // group is the first chown, so a refused creator fails here, and the segment (not yet
        // published) goes with the error.
        liveness::create_fifo(creator.doorbell_token, self.permissions, self.group)
            .map_err(chown_error)?;
        shared.header().ready.store(LAYOUT_VERSION, Release);
        // From here on the ring's drop removes the segment and the FIFO if a step fails.
        let ring = Ring::from_parts(shared, name.clone(), creator);
        ring.inner
            .creator_lock
            .set(
                match PeerLock::take(ring.inner.shared.segment().expect("segment"), CREATOR_BYTE) {
                    Ok(l) => l,
                    Err(e) => {
                        log::debug!("shmflow: creator lock unavailable: {e}");
                        None
                    }
                },
            )
            .expect("set once");
        let seg = ring.inner.shared.segment().expect("segment-backed ring");
        if let Some(gid) = self.group {
            seg.set_group(gid).map_err(chown_error)?;
        }
        seg.publish(self.permissions)
            .map_err(|source| CreateError::Io {
                name: name.clone(),
                source,
            })?;
        Ok(ring)
    }

    /// Creates a ring in this process's memory instead of a named segment: for threads, and
    /// for tests of code that uses rings. The name is only a label.
    ///
    /// # Errors
    ///
    /// [`CreateError::Layout`] as for [`RingBuilder::build`]; [`CreateError::Io`] if a
    /// semaphore cannot be initialised.
    pub fn build_in_process(self) -> Result<Ring<T, D>, CreateError> {
        let layout = self.layout()?;
        let pid = sys::getpid();
        let creator = Creator {
            pid,
            start_time: sys::process_start_time(pid).unwrap_or(0),
            created_unix_ns: sys::realtime_ns(),
            doorbell_token: sys::random_u64(),
        };
        let shared = Shared::heap(layout.clone());
        layout.write_header(shared.header(), creator);
        init_semaphores(&shared).map_err(|source| CreateError::Io {
            name: self.name.clone(),
            source,
        })?;
        shared.header().ready.store(LAYOUT_VERSION, Release);
        Ok(Ring::from_parts(shared, self.name, creator))
    }
}

fn init_semaphores(shared: &Shared) -> std::io::Result<()> {
    for i in 0..shared.layout.max_peers() {
        // SAFETY: the peer entry's semaphore storage is 32 bytes, 8-aligned (offset 64 of a
        // 128-byte entry in a page-aligned table), inside memory we own, and nobody else can
        // use it before the ready word is published.
        unsafe { Semaphore::init(shared.sem_ptr(i), 0)? };
    }
    Ok(())
}

/// What the header of a ring says.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RingInfo {
    /// The ring's name (without the `/dev/shm/shmflow.` prefix).
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Largest frame shape.
    pub max_shape: Vec<usize>,
    /// Number of slots.
    pub slots: u32,
    /// Delivery mode.
    pub mode: Mode,
    /// Maximum readers attached at once.
    pub max_readers: u32,
    /// Maximum writers attached at once.
    pub max_writers: u32,
    /// Bytes of a max-shape frame.
    pub slot_bytes: u64,
    /// Distance between slot payloads.
    pub slot_stride: u64,
    /// Size of the whole segment.
    pub total_size: u64,
    /// Pid of the process that created the ring.
    pub creator_pid: u32,
    /// Whether the creator still holds its ring handle open (tested with its lock, so it is
    /// right in any pid namespace).
    pub creator_alive: bool,
    /// When the ring was created (ns since the Unix epoch).
    pub created_unix_ns: u64,
}

/// One attached peer, as [`Ring::status`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerStatus {
    /// Index in the peer table.
    pub index: usize,
    /// Its process.
    pub pid: u32,
    /// Whether the peer is alive: its liveness lock is held (or cannot be tested: a peer is
    /// reported dead only when the kernel says so).
    pub alive: bool,
    /// Frames read (reader) or committed (writer).
    pub frames: u64,
    /// Broadcast reader: next sequence it reads.
    pub cursor: u64,
    /// Broadcast reader: frames it missed (drop-oldest).
    pub missed: u64,
    /// Reader: frames it holds now.
    pub held: u64,
    /// Reader: frames it may hold at once.
    pub max_held: u32,
}

/// How the last writer of a ring died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriterDeath {
    /// Its pid (as its own pid namespace numbered it).
    pub pid: u32,
    /// Frames the ring had committed when it was found dead.
    pub frames: u64,
}

/// A snapshot of a ring's state.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RingStatus {
    /// Frames committed so far (broadcast), or the enqueue position (queue).
    pub write_seq: u64,
    /// Queue: the dequeue position.
    pub read_seq: u64,
    /// Frames committed but not read yet by the slowest reader (broadcast) or any (queue).
    pub backlog: u64,
    /// Attached readers.
    pub readers: Vec<PeerStatus>,
    /// Attached writers.
    pub writers: Vec<PeerStatus>,
    /// Queue: frames lost because their reader died holding them.
    pub lost: u64,
    /// Queue: sequences abandoned by writers that died or dropped an uncommitted slot.
    pub abandoned: u64,
    /// No writer is attached and the last one died (rather than detached).
    pub writer_died: Option<WriterDeath>,
    /// Peers in the middle of attaching (their entry is claimed, or a reader's handshake is
    /// not complete), whose process may be alive: not listed in `readers` or `writers` yet,
    /// but the ring is in use (`shmflow gc` leaves it alone).
    pub attaching: u32,
}

pub(crate) struct RingInner {
    pub shared: Shared,
    pub name: String,
    pub creator: Creator,
    /// The process that opened this handle: only it may attach endpoints through it.
    pub owner: Owner,
    /// The creator's lock (see `RingInfo::creator_alive`); set once, in the creator.
    pub creator_lock: std::sync::OnceLock<Option<PeerLock>>,
}

impl Drop for RingInner {
    fn drop(&mut self) {
        // The segment unlinks its name when it drops (if this handle owns it, in the process
        // that made it); the FIFO goes with it.
        if self.shared.segment().is_some_and(|s| s.will_unlink()) {
            liveness::remove_fifo(self.creator.doorbell_token);
        }
    }
}

/// What attaching an endpoint made.
pub(crate) struct Attached {
    pub endpoint: Endpoint,
    /// Reader: the first sequence it reads.
    pub cursor: u64,
    /// Reader: its pollable fd.
    #[cfg(not(shmflow_no_doorbell))]
    pub reader_fd: Option<liveness::ReaderFd>,
    /// Writer: its end of the writer FIFO.
    pub hold: Option<WriterHold>,
}

/// A handle to a ring: create or open one, then make [`Writer`]s and [`Reader`]s from it.
///
/// `T` is the element type; `D` the dimensionality of the views (`IxDyn` by default, or a fixed
/// `Ix1`…`Ix6`). Cloning is cheap (a reference count). The segment stays mapped while any
/// handle, writer or reader made from it lives.
///
/// # Examples
///
/// ```
/// use shmflow::Ring;
/// # let name = format!("doc-ring-{}", std::process::id());
/// let ring = Ring::<f32>::create(&name).shape([4, 4]).build()?;
/// let mut reader = Ring::<f32>::open(&name)?.reader()?;
/// let mut writer = ring.writer()?;
///
/// let mut slot = writer.reserve()?;
/// slot.view_mut().fill(1.5);
/// slot.commit();
///
/// let frame = reader.recv()?;
/// assert_eq!(frame.sum(), 24.0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Ring<T: Element, D: Dimension = IxDyn> {
    pub(crate) inner: Arc<RingInner>,
    _t: PhantomData<fn() -> (T, D)>,
}

impl<T: Element, D: Dimension> Clone for Ring<T, D> {
    fn clone(&self) -> Self {
        Ring {
            inner: self.inner.clone(),
            _t: PhantomData,
        }
    }
}

impl<T: Element, D: Dimension> std::fmt::Debug for Ring<T, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("name", &self.inner.name)
            .field("dtype", &self.inner.shared.layout.dtype)
            .field("max_shape", &self.inner.shared.layout.max_shape)
            .field("mode", &self.inner.shared.layout.mode)
            .finish()
    }
}

/// How long `open` waits for a creator that is still initialising the segment.
const OPEN_READY_WAIT: Duration = Duration::from_secs(1);

impl<T: Element, D: Dimension> Ring<T, D> {
    /// Starts building a new ring named `name` (see [`RingBuilder`]).
    pub fn create(name: &str) -> RingBuilder<T, D> {
        RingBuilder {
            name: name.to_owned(),
            shape: Vec::new(),
            slots: DEFAULT_SLOTS,
            mode: Mode::Broadcast(Backpressure::Block),
            max_readers: DEFAULT_MAX_READERS,
            max_writers: None,
            permissions: DEFAULT_PERMISSIONS,
            group: None,
            _t: PhantomData,
        }
    }

    fn from_parts(shared: Shared, name: String, creator: Creator) -> Self {
        Ring {
            inner: Arc::new(RingInner {
                shared,
                name,
                creator,
                owner: Owner::current(),
                creator_lock: std::sync::OnceLock::new(),
            }),
            _t: PhantomData,
        }
    }

    /// Opens an existing ring by name, from any process of a user allowed to.
    ///
    /// Every header field is checked against the segment's real size before anything but the
    /// header is touched; a foreign, truncated or corrupted segment is an error, never a panic.
    /// A segment whose creator is still initialising it is waited for up to one second (see
    /// [`Ring::open_within`] to choose the wait).
    ///
    /// # Errors
    ///
    /// [`OpenError::InvalidName`], [`OpenError::NotFound`], [`OpenError::PermissionDenied`],
    /// [`OpenError::NotARing`], [`OpenError::VersionMismatch`], [`OpenError::NotReady`],
    /// [`OpenError::Truncated`], [`OpenError::Corrupted`], [`OpenError::LayoutMismatch`] (the
    /// ring's dtype is not `T`, or its number of dimensions is not `D`'s), [`OpenError::Io`].
    pub fn open(name: &str) -> Result<Self, OpenError> {
        Self::open_within(name, OPEN_READY_WAIT)
    }

    /// Opens an existing ring as [`Ring::open`] does, waiting at most `wait` for a creator
    /// that is still initialising the segment (an empty object, or a header whose ready word
    /// is not stored yet). `Duration::ZERO` never waits: such a segment is
    /// [`OpenError::NotReady`] at once.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use shmflow::Ring;
    /// # let name = format!("doc-open-within-{}", std::process::id());
    /// let ring = Ring::<u8>::create(&name).shape([4]).build()?;
    /// let other = Ring::<u8>::open_within(&name, Duration::ZERO)?;
    /// assert_eq!(other.info().max_shape, [4]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As for [`Ring::open`].
    pub fn open_within(name: &str, wait: Duration) -> Result<Self, OpenError> {
        let (segment, layout, creator) = open_segment(name, wait)?;
        let rank_ok = D::NDIM.is_none_or(|n| n == layout.max_shape.len());
        if layout.dtype != T::DTYPE || !rank_ok {
            return Err(OpenError::LayoutMismatch {
                name: name.into(),
                expected: match D::NDIM {
                    Some(n) => format!("{} with {n} dimensions", T::DTYPE),
                    None => format!("{}", T::DTYPE),
                },
                found: format!("{} {:?}", layout.dtype, layout.max_shape),
            });
        }
        // SAFETY: the mapping covers total_size bytes (checked by open_segment) and the layout
        // was recomputed by Layout::compute from validated parameters.
        let shared = unsafe { Shared::from_segment(layout, segment) };
        Ok(Ring::from_parts(shared, name.to_owned(), creator))
    }

    /// Opens ring `name`, waiting up to `timeout` for it to appear (a reader started before
    /// its writer): a missing ring, or one whose creator is still initialising it, is retried
    /// (every 1 ms at first, backing off to 20 ms) until it opens or the time is up.
    /// `Duration::MAX` waits for ever. Every other error returns at once.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use shmflow::{OpenError, Ring};
    /// # let name = format!("doc-open-wait-{}", std::process::id());
    /// let creator = std::thread::spawn({
    ///     let name = name.clone();
    ///     move || {
    ///         std::thread::sleep(Duration::from_millis(50));
    ///         Ring::<u8>::create(&name).shape([4]).build()
    ///     }
    /// });
    /// let ring = Ring::<u8>::open_wait(&name, Duration::from_secs(10))?;
    /// assert_eq!(ring.info().max_shape, [4]);
    /// # drop(creator.join().unwrap()?);
    /// let err = Ring::<u8>::open_wait("doc-never-made", Duration::from_millis(20)).unwrap_err();
    /// assert!(matches!(err, OpenError::Timeout { .. }));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`OpenError::Timeout`] if it did not appear in time; the other errors of
    /// [`Ring::open`] at once.
    pub fn open_wait(name: &str, timeout: Duration) -> Result<Self, OpenError> {
        let start = Instant::now();
        let deadline = start.checked_add(timeout);
        let mut pause = Duration::from_millis(1);
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let ready_wait = left.map_or(OPEN_READY_WAIT, |l| l.min(OPEN_READY_WAIT));
            match Self::open_within(name, ready_wait) {
                Err(OpenError::NotFound { .. } | OpenError::NotReady { .. }) => {}
                other => return other,
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Err(OpenError::Timeout {
                    name: name.to_owned(),
                    waited: start.elapsed(),
                });
            }
            std::thread::sleep(left.map_or(pause, |l| l.min(pause)));
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Removes the segment named `name` (like `shm_unlink`): processes that have it open keep
    /// using it; new opens fail.
    ///
    /// # Errors
    ///
    /// [`OpenError::InvalidName`], [`OpenError::NotFound`], [`OpenError::PermissionDenied`],
    /// [`OpenError::Io`].
    pub fn remove(name: &str) -> Result<(), OpenError> {
        // The writer FIFO is named after the ring's token: read it first (a foreign or
        // half-made segment has none worth removing).
        if let Ok((_, _, creator)) = open_segment(name, Duration::ZERO) {
            liveness::remove_fifo(creator.doorbell_token);
        }
        Segment::unlink(name).map_err(|e| OpenError::from_shm(name, e))
    }

    /// The ring's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// What the header says.
    pub fn info(&self) -> RingInfo {
        let l = &self.inner.shared.layout;
        let c = self.inner.creator;
        RingInfo {
            name: self.inner.name.clone(),
            dtype: l.dtype,
            max_shape: l.max_shape.clone(),
            slots: l.slot_count,
            mode: l.mode,
            max_readers: l.max_readers,
            max_writers: l.max_writers,
            slot_bytes: l.slot_bytes,
            slot_stride: l.slot_stride,
            total_size: l.total_size,
            creator_pid: c.pid,
            creator_alive: match self.inner.shared.segment() {
                Some(seg) => match liveness::probe(seg, CREATOR_BYTE) {
                    Liveness::Alive => true,
                    Liveness::Dead => false,
                    Liveness::Unknown => sys::pid_alive(c.pid, c.start_time),
                },
                None => true,
            },
            created_unix_ns: c.created_unix_ns,
        }
    }

    /// A snapshot of cursors, attached peers and counters.
    pub fn status(&self) -> RingStatus {
        let s = &self.inner.shared;
        let c = s.control();
        let peers = |role| {
            s.peers_of(role)
                .filter_map(|i| {
                    let e = s.peer(i);
                    let state = e.state.load(Acquire);
                    // Attaching (CLAIMING) entries are not attached yet, nor are readers before
                    // their handshake (FLAG_READY): a writer that waits for a reader to be
                    // listed must be able to rely on it seeing the next frame.
                    if !matches!(peer_status(state), ps::ACTIVE | ps::RECLAIMING) {
                        return None;
                    }
                    if role == Role::Reader && e.flags.load(Acquire) & FLAG_READY == 0 {
                        return None;
                    }
                    let pid = peer_pid(state);
                    Some(PeerStatus {
                        index: i,
                        pid,
                        alive: peer_status(state) != ps::RECLAIMING && liveness::peer_alive(s, i),
                        frames: e.frames.load(Relaxed),
                        cursor: e.cursor.load(Relaxed),
                        missed: e.missed.load(Relaxed),
                        held: e.held.load(Relaxed),
                        max_held: e.max_held.load(Relaxed),
                    })
                })
                .collect()
        };
        let attaching = (0..s.layout.max_peers())
            .filter(|&i| {
                let e = s.peer(i);
                let status = peer_status(e.state.load(Acquire));
                let unready = i < s.layout.max_readers as usize
                    && status == ps::ACTIVE
                    && e.flags.load(Acquire) & FLAG_READY == 0;
                (status == ps::CLAIMING || unready) && liveness::peer_alive(s, i)
            })
            .count() as u32;
        RingStatus {
            attaching,
            write_seq: c.write_seq.v.load(Acquire),
            read_seq: c.read_seq.v.load(Acquire),
            backlog: s.backlog(),
            readers: peers(Role::Reader),
            writers: peers(Role::Writer),
            lost: c.lost.load(Relaxed),
            abandoned: c.abandoned.load(Relaxed),
            writer_died: match s.writers() {
                Writers::Died { pid, frames } => Some(WriterDeath { pid, frames }),
                _ => None,
            },
        }
    }

    /// Checks every attached peer and reclaims those whose process is dead. Returns how many.
    /// Waiting endpoints do this on their own every liveness interval; `shmflow gc` and
    /// monitoring tools call it directly.
    pub fn reclaim_dead_peers(&self) -> usize {
        let s = &self.inner.shared;
        let mut dead = wait::peer_dead(s);
        let n = s.reclaim_dead(Role::Reader, None, &mut dead)
            + s.reclaim_dead(Role::Writer, None, &mut dead);
        if n > 0 {
            wait::wake(s, Role::Reader, true);
            wait::wake(s, Role::Writer, true);
        }
        n
    }

    /// Keeps the segment when this handle (and everything made from it) is dropped. Only the
    /// creator owns a segment; on other handles this does nothing.
    pub fn release_ownership(&self) {
        if let Some(seg) = self.inner.shared.segment() {
            seg.set_owner(false);
        }
    }

    /// Whether dropping the last handle unlinks the segment.
    pub fn is_owner(&self) -> bool {
        self.inner.shared.segment().is_some_and(|s| s.is_owner())
    }

    /// Attaches a writer.
    ///
    /// # Errors
    ///
    /// [`AttachError::TooManyWriters`] when every writer entry is held by a live process (a
    /// broadcast ring has one); dead holders are reclaimed first.
    /// [`AttachError::WrongProcess`] when this handle was opened by another process (it came
    /// through `fork`). [`AttachError::Io`] if the liveness lock cannot be taken.
    pub fn writer(&self) -> Result<Writer<T, D>, AttachError> {
        let a = self.attach_endpoint(Role::Writer, false, 1)?;
        let hold = a.hold.unwrap_or_else(WriterHold::none);
        Ok(Writer::new(self.clone(), WriterCore::new(a.endpoint, hold)))
    }

    /// Attaches a reader that holds one frame at a time. A broadcast reader sees the frames
    /// committed after it attached. See [`Ring::attach_reader`] for the settings.
    ///
    /// # Errors
    ///
    /// [`AttachError::TooManyReaders`] when every reader entry is held by a live process;
    /// [`AttachError::WrongProcess`]; [`AttachError::Io`] if the doorbell socket or the
    /// liveness lock cannot be set up.
    pub fn reader(&self) -> Result<Reader<T, D>, AttachError> {
        self.attach_reader().attach()
    }

    /// Attaches a *lossy* reader (see [`ReaderBuilder::lossy`]): in a lossless (block)
    /// broadcast ring the writer does not wait for it; it only never overwrites the frames
    /// this reader holds. In other modes this is the same as [`Ring::reader`].
    ///
    /// # Errors
    ///
    /// As for [`Ring::reader`].
    pub fn lossy_reader(&self) -> Result<Reader<T, D>, AttachError> {
        self.attach_reader().lossy(true).attach()
    }

    /// Settings for a new reader (how many frames it may hold, lossy or not); attach it with
    /// [`ReaderBuilder::attach`].
    pub fn attach_reader(&self) -> ReaderBuilder<T, D> {
        ReaderBuilder::new(self.clone())
    }

    /// Claims a peer entry of `role` under its liveness lock and attaches it.
    pub(crate) fn attach_endpoint(
        &self,
        role: Role,
        lossy: bool,
        max_held: u32,
    ) -> Result<Attached, AttachError> {
        let inner = &self.inner;
        if !inner.owner.is_current() {
            return Err(AttachError::WrongProcess {
                owner: inner.owner.pid(),
            });
        }
        let owner = Owner::current();
        let pid = owner.pid();
        let start = sys::process_start_time(pid).unwrap_or(0);
        let (index, generation, lock) = self.claim(role, pid, start)?;
        let s = &inner.shared;
        let token = s.header().doorbell_token.load(Relaxed);
        let mut attached = Attached {
            endpoint: Endpoint::new(inner.clone(), index, generation, role, owner, lock),
            cursor: 0,
            #[cfg(not(shmflow_no_doorbell))]
            reader_fd: None,
            hold: None,
        };
        // From here on, dropping `attached` detaches the entry and then drops its lock.
        match role {
            Role::Reader => {
                #[cfg(not(shmflow_no_doorbell))]
                {
                    let fd = liveness::ReaderFd::new(token, index as u32, generation)
                        .map_err(AttachError::Io)?;
                    attached.reader_fd = Some(fd);
                }
                #[cfg(shmflow_no_doorbell)]
                let _ = token;
                attached.cursor = s
                    .attach_reader_with(index, pid, generation, lossy, max_held)
                    .ok_or(AttachError::Reclaimed)?;
            }
            Role::Writer => {
                if s.segment().is_some() {
                    attached.hold = Some(WriterHold::open(token));
                }
                if !s.attach_writer(index, pid, generation) {
                    return Err(AttachError::Reclaimed);
                }
            }
        }
        Ok(attached)
    }

    /// Takes a FREE entry of `role`: its liveness lock first (an entry whose lock someone
    /// holds is skipped), then the entry. Dead holders are reclaimed if none is free.
    fn claim(
        &self,
        role: Role,
        pid: u32,
        start: u64,
    ) -> Result<(usize, u32, Option<PeerLock>), AttachError> {
        let s = &self.inner.shared;
        let try_claim = || -> Result<Option<(usize, u32, Option<PeerLock>)>, AttachError> {
            for i in s.peers_of(role) {
                if peer_status(s.peer(i).state.load(Acquire)) != ps::FREE {
                    continue;
                }
                let lock = match s.segment() {
                    Some(seg) => match PeerLock::take(seg, LOCK_BASE + i as u64) {
                        Ok(Some(l)) => Some(l),
                        // Held: a live peer is still leaving this entry, or a child forked
                        // by a peer in the instant before it closed the lock. Try another.
                        Ok(None) => continue,
                        Err(e) => return Err(AttachError::Io(e)),
                    },
                    None => None,
                };
                if let Some(generation) = s.claim_peer_at(i, pid, start) {
                    return Ok(Some((i, generation, lock)));
                }
            }
            Ok(None)
        };
        if let Some(c) = try_claim()? {
            return Ok(c);
        }
        let mut dead = wait::peer_dead(s);
        if s.reclaim_dead(role, None, &mut dead) > 0 {
            if let Some(c) = try_claim()? {
                return Ok(c);
            }
        }
        Err(match role {
            Role::Reader => AttachError::TooManyReaders {
                max: s.layout.max_readers,
            },
            Role::Writer => AttachError::TooManyWriters {
                max: s.layout.max_writers,
            },
        })
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }
}

/// Names of shmflow's segments in `/dev/shm` (files named `shmflow.*`), sorted.
///
/// Besides rings this includes the status blocks of worker pools (named
/// `pool-<pid>-<hex>`, which `shmflow ls` shows as `pool-status`). They are not rings:
/// [`Ring::open`] answers them with an [`OpenError`].
///
/// # Errors
///
/// If `/dev/shm` cannot be read.
pub fn list() -> std::io::Result<Vec<String>> {
    Segment::list()
}

/// The writer-FIFO token of the ring `name`, read from its header without attaching.
pub(crate) fn doorbell_token_of(name: &str) -> Result<u64, OpenError> {
    open_segment(name, Duration::ZERO).map(|(_, _, creator)| creator.doorbell_token)
}

/// Opens and validates a segment's header without checking its dtype or rank, waiting at most
/// `wait` for a creator that is still initialising it.
pub(crate) fn open_segment(
    name: &str,
    wait: Duration,
) -> Result<(Segment, Layout, Creator), OpenError> {
    // A creator makes the object (size 0, mode 0200), sizes it, fills the header and then
    // widens its mode: while that happens an opener sees size 0 or, unless root, EACCES on a
    // 0200 file. Both are retried for up to `wait`.
    let started = Instant::now();
    let initialising = |e: &SegmentOpenError| match e {
        SegmentOpenError::TooSmall { size: 0, .. } => true,
        SegmentOpenError::PermissionDenied => std::fs::metadata(crate::shm::segment_path(name))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777 == 0o200)
            .unwrap_or(false),
        _ => false,
    };
    let opened = loop {
        match Segment::open(name, HEADER_BYTES as usize) {
            Err(e) if initialising(&e) && started.elapsed() < wait => {
                std::thread::sleep(Duration::from_millis(1));
            }
            other => break other,
        }
    };
    let (segment, stat) = opened.map_err(|e| OpenError::from_shm(name, e))?;
    // SAFETY: the mapping is at least HEADER_BYTES long and page-aligned; Header is 256
    // bytes of atomics, valid for any bit pattern.
    let header = unsafe { &*(segment.as_ptr() as *const layout::Header) };
    while header.ready.load(Acquire) == 0 {
        // A creator zero-fills the segment and writes the magic before the ready word, so
        // anything but 0 or our magic means a foreign object.
        let magic = header.magic.load(Relaxed);
        if magic != 0 && magic != layout::MAGIC {
            return Err(OpenError::NotARing { name: name.into() });
        }
        if started.elapsed() >= wait {
            return Err(OpenError::NotReady { name: name.into() });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let (layout, creator) = Layout::from_header(header, stat.size).map_err(|e| match e {
        HeaderError::BadMagic => OpenError::NotARing { name: name.into() },
        HeaderError::Version(found) => OpenError::VersionMismatch {
            name: name.into(),
            found,
            expected: LAYOUT_VERSION,
        },
        HeaderError::Corrupt(what) => OpenError::Corrupted {
            name: name.into(),
            what: what.into(),
        },
        HeaderError::Params(p) => OpenError::Corrupted {
            name: name.into(),
            what: p.to_string(),
        },
        HeaderError::Truncated { size, expected } => OpenError::Truncated {
            name: name.into(),
            size,
            expected,
        },
    })?;
    if (segment.len() as u64) < layout.total_size {
        return Err(OpenError::Truncated {
            name: name.into(),
            size: segment.len() as u64,
            expected: layout.total_size,
        });
    }
    Ok((segment, layout, creator))
}

/// Reads the header and state of a ring of any element type (for tools such as
/// `shmflow ls` / `inspect`). Attaches nothing.
///
/// # Errors
///
/// As for [`Ring::open`], except that any dtype and rank are accepted.
pub fn inspect(name: &str) -> Result<(RingInfo, RingStatus), OpenError> {
    let (segment, layout, creator) = open_segment(name, OPEN_READY_WAIT)?;
    // SAFETY: open_segment checked the mapping covers total_size and recomputed the layout
    // with Layout::compute.
    let shared = unsafe { Shared::from_segment(layout, segment) };
    let ring = Ring::<u8>::from_parts(shared, name.to_owned(), creator);
    Ok((ring.info(), ring.status()))
}

/// Checks every peer of the named ring (any dtype) and reclaims the dead ones; returns how
/// many. For `shmflow gc` and monitoring.
///
/// # Errors
///
/// As for [`inspect`].
pub fn reclaim_dead_peers(name: &str) -> Result<usize, OpenError> {
    let (segment, layout, creator) = open_segment(name, OPEN_READY_WAIT)?;
    // SAFETY: as in `inspect`.
    let shared = unsafe { Shared::from_segment(layout, segment) };
    Ok(Ring::<u8>::from_parts(shared, name.to_owned(), creator).reclaim_dead_peers())
}

/// Converts a `Duration` timeout into a monotonic deadline in ns (saturating).
pub(crate) fn deadline_after(timeout: Duration) -> u64 {
    sys::monotonic_ns().saturating_add(timeout.as_nanos().min(u128::from(u64::MAX)) as u64)
}

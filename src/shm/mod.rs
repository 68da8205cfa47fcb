//! Named POSIX shared memory segments.
//!
//! A ring named `frames` lives in the POSIX shared memory object
//! `/shmflow.frames`, i.e. the file `/dev/shm/shmflow.frames` on Linux. Names
//! are validated by [`shm_name`] before any system call.
//!
//! # Life cycle
//!
//! 1. [`Segment::create`] creates the object exclusively with mode `0o200`
//!    (owner write only), sizes it, reserves its memory and maps it. While the
//!    mode lacks read permission, other non-root processes cannot open it.
//! 2. The creator initialises the header, storing the version last with
//!    Release ordering.
//! 3. [`Segment::publish`] widens the mode (normally to `0o600`).
//!
//! Processes running as root bypass the permission check, so openers must not
//! rely on step 1: they check the header (and the version stored last) before
//! trusting anything, and may see a segment that is still empty
//! ([`SegmentOpenError::TooSmall`] with size 0).
//!
//! The creator owns the name and unlinks it when its [`Segment`] is dropped,
//! unless [`Segment::set_owner`]`(false)` was called. Unlinking only removes the
//! name; processes that have it mapped keep using the memory until they unmap.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::sys::{self, FileStat};

/// Prefix of every shared memory object shmflow creates: the ring `name` is
/// `/shmflow.<name>`, i.e. `/dev/shm/shmflow.<name>`.
pub(crate) const NAME_PREFIX: &str = "shmflow.";

/// Longest ring name, in bytes (without [`NAME_PREFIX`]).
pub(crate) const MAX_NAME_LEN: usize = 200;

/// Directory where Linux C libraries keep POSIX shared memory objects.
pub(crate) const SHM_DIR: &str = "/dev/shm";

/// The naming scheme in one place: the file of segment `name` (a validated name), i.e.
/// `/dev/shm/shmflow.<name>`.
pub(crate) fn segment_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(SHM_DIR).join(format!("{NAME_PREFIX}{name}"))
}

/// Prefix of the companion files' names.
const COMPANION_PREFIX: &str = ".shmflow-";

/// The file of one of shmflow's companion files (hidden, so [`Segment::list`] does not show
/// them): `/dev/shm/.shmflow-<what>`, e.g. a ring's writer FIFO.
pub(crate) fn companion_path(what: &str) -> String {
    format!("{SHM_DIR}/{COMPANION_PREFIX}{what}")
}

/// The companion files in [`SHM_DIR`]: for each, its path and the `<what>` of
/// [`companion_path`]. A missing directory is an empty list.
pub(crate) fn companion_files() -> io::Result<Vec<(std::path::PathBuf, String)>> {
    let mut out = entries_with_prefix(COMPANION_PREFIX)?;
    out.sort_unstable();
    Ok(out)
}

/// The files in [`SHM_DIR`] whose names start with `prefix`: path and the rest of the name.
/// A missing directory is an empty list.
fn entries_with_prefix(prefix: &str) -> io::Result<Vec<(std::path::PathBuf, String)>> {
    let dir = match std::fs::read_dir(SHM_DIR) {
        Ok(dir) => dir,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in dir {
        let entry = entry?;
        if let Some(rest) = entry
            .file_name()
            .to_str()
            .and_then(|f| f.strip_prefix(prefix))
        {
            out.push((entry.path(), rest.to_owned()));
        }
    }
    Ok(out)
}

/// Mode of a segment while its creator initialises it: owner write only.
const INIT_MODE: u32 = 0o200;

/// Why a ring name was refused.
///
/// Ring names are 1 to 200 bytes of `A-Z a-z 0-9 . _ -` and must not start
/// with `.`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("ring name is empty; use 1 to {MAX_NAME_LEN} characters of A-Z a-z 0-9 . _ -")]
    Empty,
    /// The name is longer than the maximum.
    #[error("ring name is {len} bytes long; the maximum is {max}")]
    TooLong {
        /// Length of the refused name, in bytes.
        len: usize,
        /// The maximum length, in bytes.
        max: usize,
    },
    /// The name contains a character outside `A-Z a-z 0-9 . _ -`.
    #[error("ring name contains {ch:?} at byte {index}; use only A-Z a-z 0-9 . _ -")]
    BadChar {
        /// The first refused character.
        ch: char,
        /// Its byte offset in the name.
        index: usize,
    },
    /// The name starts with `.` (this includes `.` and `..`).
    #[error("ring name starts with '.'; names starting with '.' (such as \".\" and \"..\") are reserved")]
    Reserved,
}

/// Validates the ring name `name` and returns the full shared memory object
/// name, `/shmflow.<name>`.
///
/// # Errors
///
/// A [`NameError`] unless `name` is 1 to [`MAX_NAME_LEN`] bytes of
/// `A-Z a-z 0-9 . _ -` not starting with `.`.
pub(crate) fn shm_name(name: &str) -> Result<CString, NameError> {
    validate_name(name)?;
    let full = format!("/{NAME_PREFIX}{name}");
    // Validated names contain no NUL.
    Ok(CString::new(full).expect("validated ring name contains no NUL"))
}

fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.starts_with('.') {
        return Err(NameError::Reserved);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            len: name.len(),
            max: MAX_NAME_LEN,
        });
    }
    if let Some((index, ch)) = name
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(NameError::BadChar { ch, index });
    }
    Ok(())
}

/// Why [`Segment::create`] failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SegmentCreateError {
    /// The ring name is invalid; no system call was made.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A segment with this name exists already.
    #[error("a shared memory segment with this name already exists")]
    AlreadyExists,
    /// The system refused to create the segment (`EACCES`/`EPERM`).
    #[error("permission denied creating the shared memory segment")]
    PermissionDenied,
    /// `/dev/shm` has no room for the segment (`ENOSPC`). In containers it is
    /// often small (Docker's default is 64 MiB; see `--shm-size`).
    #[error("not enough space in /dev/shm for a segment of {len} bytes")]
    NoSpace {
        /// The requested segment size, in bytes.
        len: u64,
    },
    /// Another operating system error.
    #[error("creating the shared memory segment failed")]
    Io(#[source] io::Error),
}

/// Why [`Segment::open`] or [`Segment::unlink`] failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SegmentOpenError {
    /// The ring name is invalid; no system call was made.
    #[error(transparent)]
    Name(#[from] NameError),
    /// No segment has this name.
    #[error("no shared memory segment with this name exists")]
    NotFound,
    /// The segment exists but its permissions do not allow this
    /// (`EACCES`/`EPERM`); it may still be being initialised by its creator.
    #[error("permission denied opening the shared memory segment")]
    PermissionDenied,
    /// The segment is smaller than the caller requires (truncated, or still
    /// being initialised if `size` is 0).
    #[error("shared memory segment is truncated: {size} bytes, at least {min} needed")]
    TooSmall {
        /// The segment's size, in bytes.
        size: u64,
        /// The minimum size the caller asked for, in bytes.
        min: u64,
    },
    /// Another operating system error.
    #[error("opening the shared memory segment failed")]
    Io(#[source] io::Error),
}

fn is_permission(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM))
}

impl SegmentCreateError {
    fn from_io(e: io::Error, len: usize) -> Self {
        match e.raw_os_error() {
            Some(libc::EEXIST) => SegmentCreateError::AlreadyExists,
            Some(libc::ENOSPC) => SegmentCreateError::NoSpace { len: len as u64 },
            _ if is_permission(&e) => SegmentCreateError::PermissionDenied,
            _ => SegmentCreateError::Io(e),
        }
    }
}

impl SegmentOpenError {
    fn from_io(e: io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOENT) => SegmentOpenError::NotFound,
            _ if is_permission(&e) => SegmentOpenError::PermissionDenied,
            _ => SegmentOpenError::Io(e),
        }
    }
}

/// A named POSIX shared memory object, mapped read-write and shared.
///
/// The mapping stays valid while the value lives, even after the name is
/// unlinked. Accessing it is only sound under the ring protocol: every process
/// that maps the segment reaches shared data through atomics or through slices
/// the protocol grants it exclusively.
pub(crate) struct Segment {
    /// The user's ring name (without prefix).
    name: String,
    /// `/shmflow.<name>`.
    shm_name: CString,
    /// The shared read-write mapping of the whole object.
    map: memmap2::MmapRaw,
    /// Kept open so that [`Segment::publish`] can change the mode.
    fd: OwnedFd,
    /// Length of `map`, in bytes.
    len: usize,
    /// Whether dropping this value unlinks the name.
    owner: AtomicBool,
    /// The fork epoch of the process that made this value: a forked child that inherited it
    /// never unlinks the name (see `sys::atfork`).
    epoch: u64,
}

// `Segment` is Send + Sync without an unsafe impl: `MmapRaw` is, and it only
// hands out raw pointers. That is sound because all access to the mapped bytes
// goes through atomics or through slices the ring protocol grants to one
// process and thread at a time.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Segment>();
};

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment")
            .field("name", &self.name)
            .field("ptr", &self.map.as_ptr())
            .field("len", &self.len)
            .field("owner", &self.is_owner())
            .finish()
    }
}

impl Segment {
    /// Creates the segment for ring `name` exclusively, `len` bytes long,
    /// zero-filled and mapped read-write. The result owns the name (see
    /// [`set_owner`](Self::set_owner)).
    ///
    /// The object is created with mode `0o200` (owner write only) so that
    /// other processes cannot open it while the caller initialises the memory;
    /// the caller then calls [`publish`](Self::publish). The memory is reserved
    /// up front, so a full `/dev/shm` fails here rather than with `SIGBUS` on
    /// first use. On any error after the object was created, it is unlinked
    /// again.
    ///
    /// # Errors
    ///
    /// [`Name`](SegmentCreateError::Name) before any system call if `name` is
    /// invalid; [`AlreadyExists`](SegmentCreateError::AlreadyExists),
    /// [`PermissionDenied`](SegmentCreateError::PermissionDenied),
    /// [`NoSpace`](SegmentCreateError::NoSpace), or
    /// [`Io`](SegmentCreateError::Io) for other failures.
    pub(crate) fn create(name: &str, len: usize) -> Result<Segment, SegmentCreateError> {
        let shm_name = shm_name(name)?;
        let fd = sys::shm_create(&shm_name, INIT_MODE)
            .map_err(|e| SegmentCreateError::from_io(e, len))?;
        match Self::size_and_map(&fd, len) {
            Ok(map) => Ok(Segment {
                name: name.to_owned(),
                shm_name,
                map,
                fd,
                len,
                owner: AtomicBool::new(true),
                epoch: sys::atfork::fork_epoch(),
            }),
            Err(e) => {
                // We created the name; do not leave a half-made segment behind.
                // An unlink error cannot be reported better than the original.
                let _ = sys::shm_unlink(&shm_name);
                Err(SegmentCreateError::from_io(e, len))
            }
        }
    }

    fn size_and_map(fd: &OwnedFd, len: usize) -> io::Result<memmap2::MmapRaw> {
        sys::ftruncate(fd.as_fd(), len as u64)?;
        match sys::fallocate(fd.as_fd(), len as u64) {
            // File systems without fallocate: fall back to lazy allocation.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
            other => other?,
        }
        memmap2::MmapOptions::new().len(len).map_raw(fd)
    }

    /// Sets the segment's permission bits to `mode` (normally `0o600`), after
    /// the creator has initialised it.
    ///
    /// # Errors
    ///
    /// Any `fchmod` error.
    pub(crate) fn publish(&self, mode: u32) -> io::Result<()> {
        sys::fchmod(self.fd.as_fd(), mode)
    }

    /// Gives the segment to group `gid` (before [`Segment::publish`] opens it to the group).
    ///
    /// # Errors
    ///
    /// Any `fchown` error (`EPERM` if this process is not root and not in the group).
    pub(crate) fn set_group(&self, gid: u32) -> io::Result<()> {
        sys::fchown_group(self.fd.as_fd(), gid)
    }

    /// Opens the existing segment of ring `name` read-write and maps all of
    /// it. The result does not own the name.
    ///
    /// Returns the segment and the object's [`FileStat`] (size, owner, mode).
    ///
    /// # Errors
    ///
    /// [`Name`](SegmentOpenError::Name) before any system call if `name` is
    /// invalid; [`NotFound`](SegmentOpenError::NotFound),
    /// [`PermissionDenied`](SegmentOpenError::PermissionDenied),
    /// [`TooSmall`](SegmentOpenError::TooSmall) if it is shorter than
    /// `min_len` bytes, or [`Io`](SegmentOpenError::Io) for other failures.
    pub(crate) fn open(
        name: &str,
        min_len: usize,
    ) -> Result<(Segment, FileStat), SegmentOpenError> {
        let shm_name = shm_name(name)?;
        let fd = sys::shm_open_rw(&shm_name).map_err(SegmentOpenError::from_io)?;
        let stat = sys::fstat(fd.as_fd()).map_err(SegmentOpenError::Io)?;
        if stat.size < min_len as u64 {
            return Err(SegmentOpenError::TooSmall {
                size: stat.size,
                min: min_len as u64,
            });
        }
        let len = usize::try_from(stat.size).map_err(|_| {
            SegmentOpenError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                "shared memory segment is larger than the address space",
            ))
        })?;
        let map = memmap2::MmapOptions::new()
            .len(len)
            .map_raw(&fd)
            .map_err(SegmentOpenError::Io)?;
        let segment = Segment {
            name: name.to_owned(),
            shm_name,
            map,
            fd,
            len,
            owner: AtomicBool::new(false),
            epoch: sys::atfork::fork_epoch(),
        };
        Ok((segment, stat))
    }

    /// Start of the mapping. Valid for [`len`](Self::len) bytes while `self`
    /// lives; only access it through atomics or protocol-granted slices.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// Length of the mapping, in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The segment's descriptor (no locks are ever taken through it, so it can test everyone
    /// else's: see `sys::lock`).
    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A new open file description of this segment, for a lock of its own (see `sys::lock`):
    /// through `/proc/self/fd`, or by name where `/proc` is not mounted (checked to be the
    /// same object).
    pub(crate) fn reopen(&self) -> io::Result<OwnedFd> {
        match sys::lock::reopen(self.fd.as_fd()) {
            Ok(fd) => Ok(fd),
            Err(first) => {
                let fd = sys::shm_open_rw(&self.shm_name).map_err(|_| first)?;
                if sys::fstat(fd.as_fd())?.id != sys::fstat(self.fd.as_fd())?.id {
                    return Err(io::Error::other(
                        "the segment's name now refers to another object",
                    ));
                }
                Ok(fd)
            }
        }
    }

    /// Whether dropping this value now would unlink the name: it owns the name, lives in the
    /// process that made it (not a forked child), and the name still refers to this object.
    pub(crate) fn will_unlink(&self) -> bool {
        self.is_owner() && self.epoch == sys::atfork::fork_epoch() && self.name_is_still_ours()
    }

    /// Sets whether dropping this value unlinks the segment's name.
    pub(crate) fn set_owner(&self, owner: bool) {
        self.owner.store(owner, Ordering::Relaxed);
    }

    /// Returns whether dropping this value unlinks the segment's name.
    pub(crate) fn is_owner(&self) -> bool {
        self.owner.load(Ordering::Relaxed)
    }

    /// Removes the name of ring `name`'s segment. Processes that have it
    /// mapped keep their mapping.
    ///
    /// # Errors
    ///
    /// [`Name`](SegmentOpenError::Name) before any system call if `name` is
    /// invalid; [`NotFound`](SegmentOpenError::NotFound),
    /// [`PermissionDenied`](SegmentOpenError::PermissionDenied), or
    /// [`Io`](SegmentOpenError::Io) for other failures.
    pub(crate) fn unlink(name: &str) -> Result<(), SegmentOpenError> {
        let shm_name = shm_name(name)?;
        sys::shm_unlink(&shm_name).map_err(SegmentOpenError::from_io)
    }

    /// Returns the ring names of all shmflow segments (`/dev/shm/shmflow.*`
    /// with a valid ring name), sorted. A missing `/dev/shm` gives an empty
    /// list.
    ///
    /// # Errors
    ///
    /// Any error reading `/dev/shm` other than its absence.
    pub(crate) fn list() -> io::Result<Vec<String>> {
        let mut names: Vec<String> = entries_with_prefix(NAME_PREFIX)?
            .into_iter()
            .map(|(_, name)| name)
            .filter(|name| validate_name(name).is_ok())
            .collect();
        names.sort_unstable();
        Ok(names)
    }
}

impl Segment {
    /// Whether the name still refers to this object: after `shmflow rm NAME` and a new ring of
    /// the same name, dropping the old owner must not remove the new ring. (A remove and
    /// re-create between this check and the unlink is not covered: that window is a few µs.)
    fn name_is_still_ours(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Ok(mine) = sys::fstat(self.fd.as_fd()) else {
            return false;
        };
        let path = format!("{SHM_DIR}{}", self.shm_name.to_string_lossy());
        match std::fs::metadata(path) {
            Ok(m) => (m.dev(), m.ino()) == mine.id,
            Err(_) => false,
        }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if self.will_unlink() {
            // Errors are ignored: Drop must not panic, and the name may
            // legitimately be gone already (ENOENT: someone ran `unlink`).
            if let Err(e) = sys::shm_unlink(&self.shm_name) {
                if e.kind() != io::ErrorKind::NotFound {
                    log::debug!("shmflow: unlinking segment {:?} failed: {e}", self.name);
                }
            }
        }
        // `map` unmaps itself and `fd` closes itself when the fields drop.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A unique ring name per call: pid, test name, counter.
    fn unique(test: &str) -> String {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        format!("test-{}-{test}-{n}", sys::getpid())
    }

    /// Unlinks the name on drop, in case a test fails halfway.
    struct Cleanup(String);

    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Segment::unlink(&self.0);
        }
    }

    #[test]
    fn names_accepted() {
        for name in [
            "a",
            "frames",
            "cam-0_left.v2",
            "A.b..c",
            "x-",
            "_",
            "-",
            "9",
        ] {
            let full = shm_name(name).unwrap();
            assert_eq!(full.to_str().unwrap(), format!("/shmflow.{name}"));
        }
        let longest = "n".repeat(MAX_NAME_LEN);
        assert!(shm_name(&longest).is_ok());
    }

    #[test]
    fn names_refused() {
        assert_eq!(shm_name(""), Err(NameError::Empty));
        assert_eq!(shm_name("."), Err(NameError::Reserved));
        assert_eq!(shm_name(".."), Err(NameError::Reserved));
        assert_eq!(shm_name(".hidden"), Err(NameError::Reserved));
        assert_eq!(
            shm_name(&"n".repeat(MAX_NAME_LEN + 1)),
            Err(NameError::TooLong {
                len: MAX_NAME_LEN + 1,
                max: MAX_NAME_LEN
            })
        );
        assert_eq!(
            shm_name("abc/def"),
            Err(NameError::BadChar { ch: '/', index: 3 })
        );
        assert_eq!(
            shm_name("a b"),
            Err(NameError::BadChar { ch: ' ', index: 1 })
        );
        assert_eq!(
            shm_name("ab\0"),
            Err(NameError::BadChar { ch: '\0', index: 2 })
        );
        assert_eq!(
            shm_name("né"),
            Err(NameError::BadChar { ch: 'é', index: 1 })
        );
        assert_eq!(
            shm_name("x:y").unwrap_err().to_string(),
            "ring name contains ':' at byte 1; use only A-Z a-z 0-9 . _ -"
        );
    }

    #[test]
    fn create_open_unlink() {
        let name = unique("roundtrip");
        let _cleanup = Cleanup(name.clone());
        let seg = Segment::create(&name, 10_000).unwrap();
        assert_eq!(seg.len(), 10_000);
        assert_eq!(seg.name, name);
        assert!(seg.is_owner());
        // SAFETY: the mapping is 10_000 bytes and nobody else uses it yet.
        unsafe {
            assert_eq!(*seg.as_ptr().add(9_999), 0, "zero-filled");
            seg.as_ptr().add(1234).write(0xa5);
        }
        seg.publish(0o600).unwrap();

        assert!(Segment::list().unwrap().contains(&name));

        let (other, stat) = Segment::open(&name, 10_000).unwrap();
        assert_eq!(stat.size, 10_000);
        assert_eq!(stat.permissions(), 0o600);
        assert_eq!(other.len(), 10_000);
        assert!(!other.is_owner());
        // SAFETY: both mappings are 10_000 bytes; the write above is done.
        assert_eq!(unsafe { *other.as_ptr().add(1234) }, 0xa5);

        // Opened with a smaller minimum, the whole file is still mapped.
        let (small, _) = Segment::open(&name, 1).unwrap();
        assert_eq!(small.len(), 10_000);

        drop(other);
        drop(small);
        Segment::open(&name, 0).expect("dropping a non-owner keeps the name");
        drop(seg);
        assert!(matches!(
            Segment::open(&name, 0),
            Err(SegmentOpenError::NotFound)
        ));
        assert!(!Segment::list().unwrap().contains(&name));
    }

    #[test]
    fn create_is_exclusive_and_starts_write_only() {
        let name = unique("exclusive");
        let _cleanup = Cleanup(name.clone());
        let seg = Segment::create(&name, 4096).unwrap();
        let st = sys::fstat(seg.fd.as_fd()).unwrap();
        assert_eq!(st.permissions(), INIT_MODE);
        assert!(matches!(
            Segment::create(&name, 4096),
            Err(SegmentCreateError::AlreadyExists)
        ));
        // The failed second create must not have unlinked the first.
        assert!(Segment::open(&name, 4096).is_ok());
    }

    #[test]
    fn open_missing_and_too_small() {
        let name = unique("missing");
        assert!(matches!(
            Segment::open(&name, 0),
            Err(SegmentOpenError::NotFound)
        ));
        assert!(matches!(
            Segment::unlink(&name),
            Err(SegmentOpenError::NotFound)
        ));

        let name = unique("small");
        let _cleanup = Cleanup(name.clone());
        let _seg = Segment::create(&name, 100).unwrap();
        match Segment::open(&name, 101) {
            Err(SegmentOpenError::TooSmall { size, min }) => {
                assert_eq!((size, min), (100, 101));
            }
            other => panic!("expected TooSmall, got {other:?}"),
        }
    }

    #[test]
    fn ownership_controls_unlink() {
        let name = unique("owner");
        let _cleanup = Cleanup(name.clone());
        let seg = Segment::create(&name, 64).unwrap();
        seg.set_owner(false);
        drop(seg);
        let (seg, _) = Segment::open(&name, 64).unwrap();
        seg.set_owner(true);
        drop(seg);
        assert!(matches!(
            Segment::open(&name, 0),
            Err(SegmentOpenError::NotFound)
        ));
    }

    #[test]
    fn owner_drop_tolerates_unlinked_name() {
        let name = unique("unlinked");
        let seg = Segment::create(&name, 64).unwrap();
        Segment::unlink(&name).unwrap();
        drop(seg); // ENOENT in Drop is ignored.
    }

    #[test]
    fn invalid_names_make_no_syscall() {
        assert!(matches!(
            Segment::create("../etc", 64),
            Err(SegmentCreateError::Name(NameError::Reserved))
        ));
        assert!(matches!(
            Segment::open("a/b", 0),
            Err(SegmentOpenError::Name(NameError::BadChar { ch: '/', .. }))
        ));
        assert!(matches!(
            Segment::unlink(""),
            Err(SegmentOpenError::Name(NameError::Empty))
        ));
    }

    #[test]
    fn errors_keep_their_source() {
        use std::error::Error as _;
        let err = SegmentOpenError::from_io(io::Error::from_raw_os_error(libc::EIO));
        assert!(matches!(err, SegmentOpenError::Io(_)));
        assert!(err.source().is_some());
        assert!(matches!(
            SegmentOpenError::from_io(io::Error::from_raw_os_error(libc::EACCES)),
            SegmentOpenError::PermissionDenied
        ));
        assert!(matches!(
            SegmentCreateError::from_io(io::Error::from_raw_os_error(libc::ENOSPC), 7),
            SegmentCreateError::NoSpace { len: 7 }
        ));
        assert!(matches!(
            SegmentCreateError::from_io(io::Error::from_raw_os_error(libc::EPERM), 7),
            SegmentCreateError::PermissionDenied
        ));
    }
}

/// A block of `u64` counters in a named segment, shared by a process and its children (a
/// worker pool's per-worker status). Created zeroed; children made by fork inherit the
/// mapping, re-executed ones [`Counters::open`] it by name.
#[derive(Debug)]
pub(crate) struct Counters {
    segment: Segment,
    len: usize,
}

impl Counters {
    /// Creates a block of `len` counters (all 0) under a fresh name.
    pub(crate) fn create(tag: &str, len: usize) -> Result<Counters, SegmentCreateError> {
        let bytes = (len.max(1) * 8).next_multiple_of(4096);
        let name = format!(
            "{tag}-{}-{:x}",
            crate::sys::getpid(),
            crate::sys::random_u64() & 0xffff_ffff
        );
        debug_assert_eq!(Counters::owner(&name, tag), Some(crate::sys::getpid()));
        let segment = Segment::create(&name, bytes)?;
        segment.publish(0o600).map_err(SegmentCreateError::Io)?;
        Ok(Counters { segment, len })
    }

    /// The pid of the process that made the block `name` with [`Counters::create`]`(tag, ..)`
    /// (names are `<tag>-<pid>-<hex>`), or `None` if `name` is not such a name.
    pub(crate) fn owner(name: &str, tag: &str) -> Option<u32> {
        let rest = name.strip_prefix(tag)?.strip_prefix('-')?;
        let (pid, hex) = rest.split_once('-')?;
        let hex_ok = !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit());
        let pid_ok = !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit());
        if hex_ok && pid_ok {
            pid.parse().ok()
        } else {
            None
        }
    }

    /// Opens a block made by [`Counters::create`] (it is never the owner).
    pub(crate) fn open(name: &str, len: usize) -> Result<Counters, SegmentOpenError> {
        let (segment, _) = Segment::open(name, len * 8)?;
        Ok(Counters { segment, len })
    }

    /// Opens a block made by [`Counters::create`] whatever its length (for a reader in another
    /// process, which learns the length from the block itself): all of its words.
    pub(crate) fn open_whole(name: &str) -> Result<Counters, SegmentOpenError> {
        let (segment, stat) = Segment::open(name, 8)?;
        let len = usize::try_from(stat.size / 8).unwrap_or(usize::MAX);
        Ok(Counters { segment, len })
    }

    /// Its number of counters.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The segment's name.
    pub(crate) fn name(&self) -> &str {
        &self.segment.name
    }

    /// Counter `i`.
    ///
    /// # Panics
    ///
    /// If `i >= len` (a bug in the caller).
    pub(crate) fn get(&self, i: usize) -> &std::sync::atomic::AtomicU64 {
        assert!(i < self.len, "counter {i} out of range");
        // SAFETY: the mapping is at least len * 8 bytes (checked at create/open), page-aligned,
        // so counter i is in bounds and 8-aligned; AtomicU64 is valid for any bit pattern and
        // may be shared between processes.
        unsafe { &*(self.segment.as_ptr().add(i * 8) as *const std::sync::atomic::AtomicU64) }
    }
}

//! What is in `/dev/shm`: shmflow's segments, each told apart as a ring, a worker pool's status
//! block, or something that cannot be read as either. For `shmflow ls`, `inspect` and `gc`,
//! and for monitoring; the naming scheme itself lives in the `shm` layer, the ring's magic
//! number in its layout.
//!
//! ```no_run
//! for seg in shmflow::segments::list()? {
//!     match &seg.kind {
//!         shmflow::segments::SegmentKind::Ring(ring) => {
//!             println!("{}: ring, {} readers", seg.name, ring.1.readers.len())
//!         }
//!         other => println!("{}: {other:?}", seg.name),
//!     }
//! }
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io::{self, Read};
use std::path::PathBuf;
use std::time::Duration;

use crate::ring::{RingInfo, RingStatus};
use crate::OpenError;

/// Directory of POSIX shared memory objects on Linux.
pub const SHM_DIR: &str = crate::shm::SHM_DIR;

/// The file of the segment `name`: `/dev/shm/shmflow.<name>`.
pub fn path(name: &str) -> PathBuf {
    crate::shm::segment_path(name)
}

/// One of shmflow's segments.
#[derive(Debug)]
#[non_exhaustive]
pub struct Segment {
    /// Its name (without the `shmflow.` prefix): what [`Ring::open`](crate::Ring::open) takes.
    pub name: String,
    /// Its size in bytes (0 if it could not be read).
    pub size: u64,
    /// What it is.
    pub kind: SegmentKind,
}

/// What a segment is.
#[derive(Debug)]
#[non_exhaustive]
pub enum SegmentKind {
    /// A ring, with its header and state (as [`crate::inspect`] reads them).
    Ring(Box<(RingInfo, RingStatus)>),
    /// A worker pool's status block (named `pool-<pid>-<hex>` by
    /// [`WorkerPool`](crate::process::WorkerPool)).
    PoolStatus {
        /// The pool's owner.
        pid: u32,
        /// Whether a process of that pid exists (this pid namespace; a reused pid counts as
        /// alive, which only ever makes `gc` keep a segment).
        alive: bool,
    },
    /// Something that cannot be read as a ring: another user's ring, a foreign or corrupted
    /// segment, a ring whose creator is still initialising it or died doing so.
    Unreadable(OpenError),
}

/// Every shmflow segment, sorted by name. A segment removed while it is being looked at is
/// left out.
///
/// # Errors
///
/// If `/dev/shm` cannot be read (a missing `/dev/shm` is an empty list).
pub fn list() -> io::Result<Vec<Segment>> {
    let mut out = Vec::new();
    for name in crate::shm::Segment::list()? {
        match get(&name) {
            Ok(seg) => out.push(seg),
            Err(OpenError::NotFound { .. }) => {}
            Err(e) => out.push(Segment {
                size: size(&name),
                name,
                kind: SegmentKind::Unreadable(e),
            }),
        }
    }
    Ok(out)
}

/// Tells what the segment `name` is. A pool status block is recognised by its name and by not
/// starting with a ring's magic number (read with `read(2)`, not through a mapping), so that it
/// is not mistaken for a ring still being initialised (which [`crate::inspect`] waits for).
///
/// # Errors
///
/// [`OpenError::NotFound`] or [`OpenError::InvalidName`]; any other failure to read a ring is
/// [`SegmentKind::Unreadable`].
pub fn get(name: &str) -> Result<Segment, OpenError> {
    if let Some(pid) = crate::shm::Counters::owner(name, crate::process::POOL_STATUS_TAG) {
        let mut head = [0u8; 8];
        let read = std::fs::File::open(path(name)).and_then(|mut f| f.read_exact(&mut head));
        if read.is_ok() && u64::from_le_bytes(head) != crate::ring::layout::MAGIC {
            return Ok(Segment {
                name: name.to_owned(),
                size: size(name),
                kind: SegmentKind::PoolStatus {
                    pid,
                    alive: crate::sys::pid_alive(pid, 0),
                },
            });
        }
    }
    let kind = match crate::inspect(name) {
        Ok(r) => SegmentKind::Ring(Box::new(r)),
        Err(e @ OpenError::NotFound { .. }) | Err(e @ OpenError::InvalidName(_)) => return Err(e),
        Err(error) => SegmentKind::Unreadable(error),
    };
    Ok(Segment {
        name: name.to_owned(),
        size: size(name),
        kind,
    })
}

/// A companion file of a ring that is gone: a writer FIFO
/// (`/dev/shm/.shmflow-<token>.writers`) whose ring segment was deleted without
/// [`Ring::remove`](crate::Ring::remove) (by `rm` on the file, or by a tool that does not know
/// about the FIFO). Harmless but never cleaned up otherwise.
#[derive(Debug)]
#[non_exhaustive]
pub struct Orphan {
    /// The file.
    pub path: PathBuf,
    /// Time since it last changed.
    pub age: Duration,
}

/// The writer FIFOs that no ring in `/dev/shm` uses and that have not changed for `grace` (a
/// ring's creator makes its FIFO before the ring can be read, so a young FIFO may belong to a
/// ring being created). While some segment cannot be read for lack of permission, nothing is
/// an orphan: that segment's FIFO could not be told apart.
///
/// # Errors
///
/// If `/dev/shm` cannot be read.
pub fn orphans(grace: Duration) -> io::Result<Vec<Orphan>> {
    let mut tokens = std::collections::HashSet::new();
    for name in crate::shm::Segment::list()? {
        match crate::ring::doorbell_token_of(&name) {
            Ok(t) => {
                tokens.insert(t);
            }
            Err(OpenError::PermissionDenied { .. }) => return Ok(Vec::new()),
            // Gone, foreign, corrupted or half-made: no FIFO of a usable ring.
            Err(_) => {}
        }
    }
    let mut out = Vec::new();
    for (path, what) in crate::shm::companion_files()? {
        let Some(token) = crate::ring::fifo_token(&what) else {
            continue;
        };
        if tokens.contains(&token) {
            continue;
        }
        // mtime: set when the creator made the FIFO (nothing writes to it later). A file
        // gone meanwhile, or dated in the future, is no orphan.
        let age = std::fs::symlink_metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok());
        if let Some(age) = age.filter(|age| *age >= grace) {
            out.push(Orphan { path, age });
        }
    }
    Ok(out)
}

fn size(name: &str) -> u64 {
    std::fs::metadata(path(name)).map_or(0, |m| m.len())
}

#[cfg(test)]
mod tests {
    use crate::shm::Counters;

    #[test]
    fn pool_status_names() {
        let tag = crate::process::POOL_STATUS_TAG;
        assert_eq!(Counters::owner("pool-123-abc0", tag), Some(123));
        assert_eq!(Counters::owner("pool-123-", tag), None);
        assert_eq!(Counters::owner("pool-x-ab", tag), None);
        assert_eq!(Counters::owner("cam", tag), None);
        assert_eq!(Counters::owner("pool-1-zz", tag), None);
        assert_eq!(Counters::owner("poolx-1-ab", tag), None);
    }
}

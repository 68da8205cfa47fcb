//! What travels on a control socket, in one place: the frame layout, the frame kinds of each
//! direction, the records the process layer sends for itself (log records, panic reports,
//! the re-exec boot), their encoding, and the panic formatter every hook uses.
//!
//! A frame is a `u32` little-endian length, one kind byte, then `length - 1` bytes of
//! postcard. The kind byte multiplexes the process layer's own messages with the user's typed
//! requests and replies on one socket. A plain [`channel`](super::channel) sends only
//! [`USER`] frames.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::process::error::ChannelError;

/// Largest frame accepted (a peer announcing more is corrupt or hostile).
pub(crate) const MAX_FRAME: u64 = 1 << 30;

/// Frame kind of user messages on a plain [`channel`](super::channel).
pub(crate) const USER: u8 = 0;

/// Frame kinds, parent → child.
pub(crate) mod down {
    /// A user request (postcard of `Backend::Request`).
    pub const REQUEST: u8 = 0;
    /// Stop: `Context::recv` returns `Ok(None)`.
    pub const STOP: u8 = 1;
    /// The backend of a re-executed child (postcard of the backend), its first frame.
    pub const BOOT: u8 = 2;
}

/// Frame kinds, child → parent.
pub(crate) mod up {
    /// A user reply (postcard of `Backend::Reply`).
    pub const REPLY: u8 = 0;
    /// A [`LogRecord`](super::LogRecord).
    pub const LOG: u8 = 1;
    /// A [`PanicReport`](super::PanicReport), sent by the child's panic hook.
    pub const PANIC: u8 = 2;
    /// The error `Backend::run` returned (a `String`), or why a re-exec boot failed.
    pub const FAILED: u8 = 3;
}

/// A `log` record on its way from a child to its parent.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct LogRecord {
    pub level: u8,
    pub target: String,
    pub message: String,
}

/// A panic's message and location, as a child's hook reports it.
#[derive(Serialize, Deserialize)]
pub(crate) struct PanicReport {
    pub message: String,
    pub location: String,
}

impl std::fmt::Debug for PanicReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at {}", self.message, self.location)
    }
}

/// A panic's message (the payload if it is a string, else `Box<dyn Any>`) and its location
/// (`file:line:column`, empty if unknown): the one formatter of the process layer's panic
/// hooks, public so that programs report panics the way their workers do.
///
/// ```
/// std::panic::set_hook(Box::new(|info| {
///     let (message, location) = shmflow::process::panic_text(info);
///     eprintln!("panicked at {location}: {message}");
/// }));
/// # let _ = std::panic::take_hook();
/// ```
pub fn panic_text(info: &std::panic::PanicHookInfo<'_>) -> (String, String) {
    let message = if let Some(s) = info.payload().downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = info.payload().downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_owned()
    };
    let location = info
        .location()
        .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
        .unwrap_or_default();
    (message, location)
}

pub(crate) fn encode<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
    // Serialising to a Vec cannot fail for serde types made of plain data; a type whose
    // Serialize impl errors on purpose gets an empty payload, which fails to decode.
    postcard::to_allocvec(v).unwrap_or_default()
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ChannelError> {
    postcard::from_bytes(bytes).map_err(ChannelError::Decode)
}

/// One frame, header and payload, ready for one `write`.
pub(crate) fn frame(kind: u8, payload: &[u8]) -> Result<Vec<u8>, ChannelError> {
    let len = payload.len() as u64 + 1;
    if len > MAX_FRAME {
        return Err(ChannelError::TooLarge(len));
    }
    let mut frame = Vec::with_capacity(5 + payload.len());
    frame.extend_from_slice(&(len as u32).to_le_bytes());
    frame.push(kind);
    frame.extend_from_slice(payload);
    Ok(frame)
}

/// Length (header included) of the complete frame at the front of `b`, if there is one.
///
/// # Errors
///
/// [`ChannelError::TooLarge`] if the header announces an empty or oversized frame.
pub(crate) fn complete_frame(b: &[u8]) -> Result<Option<usize>, ChannelError> {
    if b.len() < 4 {
        return Ok(None);
    }
    let len = u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    if len == 0 || len > MAX_FRAME {
        return Err(ChannelError::TooLarge(len));
    }
    Ok((b.len() as u64 >= 4 + len).then_some(4 + len as usize))
}

// ------------------------------------------------------------ the worker pool's messages

#[derive(Serialize, Deserialize)]
pub(crate) enum PoolCmd<I> {
    Chunk { job: u64, first: u64, items: Vec<I> },
}

/// The borrowed twin of `PoolCmd::Chunk`: serialises identically (postcard writes a slice
/// like a Vec), so the parent keeps its inputs for re-dispatch without cloning them.
#[derive(Serialize)]
pub(crate) enum PoolCmdRef<'a, I> {
    Chunk {
        job: u64,
        first: u64,
        items: &'a [I],
    },
}

/// A task of a chunk that panicked: its offset in the chunk, message and location.
#[derive(Serialize, Deserialize)]
pub(crate) struct Failure {
    pub(crate) offset: u64,
    pub(crate) message: String,
    pub(crate) location: String,
}

#[derive(Serialize, Deserialize)]
pub(crate) enum WorkerMsg<O, E> {
    /// The outputs of a chunk's successful tasks, in order, and its failed tasks.
    Results {
        job: u64,
        first: u64,
        outputs: Vec<O>,
        failures: Vec<Failure>,
    },
    Exit(E),
}

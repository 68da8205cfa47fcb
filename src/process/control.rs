//! Control channels: typed, length-prefixed postcard frames over a Unix stream socket pair.
//!
//! A frame is `u32` little-endian length, one kind byte, then `length - 1` bytes of postcard.
//! The kind byte lets the process layer multiplex its own messages (stop, log records, panic
//! reports) with the user's typed requests and replies on one socket. Users see typed
//! [`Sender`] / [`Receiver`] pairs (made by [`channel`]), as crossbeam-channel hands out.

use std::io::{self, Read, Write};
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::process::error::ChannelError;
use crate::sys::process as sysp;

/// Largest frame accepted (a peer announcing more is corrupt or hostile).
const MAX_FRAME: u64 = 1 << 30;

/// The untyped end of a channel: whole frames in, whole frames out.
///
/// Reads are buffered (one `read` usually brings a whole small frame, or several), and a frame
/// is written with one `write`. Because of the buffer, "the fd is readable" and "a frame is
/// available" differ: [`RawChannel::wait_readable`] checks the buffer first, and users that
/// poll the fd must drain with `try_recv` until it reports nothing before polling again.
#[derive(Debug)]
pub(crate) struct RawChannel {
    stream: UnixStream,
    buf: Vec<u8>,
    start: usize,
}

impl RawChannel {
    /// A connected pair.
    pub(crate) fn pair() -> io::Result<(RawChannel, RawChannel)> {
        let (a, b) = UnixStream::pair()?;
        Ok((RawChannel::new(a), RawChannel::new(b)))
    }

    /// Wraps an inherited fd (a re-executed child's control socket).
    pub(crate) fn from_fd(fd: OwnedFd) -> RawChannel {
        RawChannel::new(UnixStream::from(fd))
    }

    fn new(stream: UnixStream) -> RawChannel {
        RawChannel {
            stream,
            buf: Vec::new(),
            start: 0,
        }
    }

    fn buffered(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Length of the complete frame at the front of the buffer, if there is one.
    fn complete_frame(&self) -> Result<Option<usize>, ChannelError> {
        let b = self.buffered();
        if b.len() < 4 {
            return Ok(None);
        }
        let len = u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        if len == 0 || len > MAX_FRAME {
            return Err(ChannelError::TooLarge(len));
        }
        Ok((b.len() as u64 >= 4 + len).then_some(4 + len as usize))
    }

    /// One `read` into the buffer (blocks until at least one byte or EOF).
    fn fill(&mut self) -> Result<(), ChannelError> {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > (1 << 16) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let old = self.buf.len();
        let want = match self.complete_frame() {
            Ok(None) if self.buffered().len() >= 4 => {
                let b = self.buffered();
                let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
                (4 + len - b.len()).max(1 << 16)
            }
            _ => 1 << 16,
        };
        self.buf.resize(old + want, 0);
        loop {
            match self.stream.read(&mut self.buf[old..]) {
                Ok(0) => {
                    self.buf.truncate(old);
                    return Err(ChannelError::Disconnected);
                }
                Ok(n) => {
                    self.buf.truncate(old + n);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.buf.truncate(old);
                    return Err(io_err(e));
                }
            }
        }
    }

    /// A second handle on the same socket (for a writer shared with a logger).
    pub(crate) fn try_clone(&self) -> io::Result<RawChannel> {
        Ok(RawChannel::new(self.stream.try_clone()?))
    }

    pub(crate) fn send_frame(&mut self, kind: u8, payload: &[u8]) -> Result<(), ChannelError> {
        let len = payload.len() as u64 + 1;
        if len > MAX_FRAME {
            return Err(ChannelError::TooLarge(len));
        }
        let mut frame = Vec::with_capacity(5 + payload.len());
        frame.extend_from_slice(&(len as u32).to_le_bytes());
        frame.push(kind);
        frame.extend_from_slice(payload);
        self.stream.write_all(&frame).map_err(io_err)
    }

    /// Blocks until a whole frame is available.
    pub(crate) fn recv_frame(&mut self) -> Result<(u8, Vec<u8>), ChannelError> {
        loop {
            if let Some(n) = self.complete_frame()? {
                let b = self.buffered();
                let kind = b[4];
                let payload = b[5..n].to_vec();
                self.start += n;
                return Ok((kind, payload));
            }
            self.fill()?;
        }
    }

    /// Waits until a frame is buffered or starts arriving (or the peer hangs up), at most
    /// until `deadline`.
    pub(crate) fn wait_readable(&self, deadline: Option<Instant>) -> Result<(), ChannelError> {
        if self.complete_frame()?.is_some() {
            return Ok(());
        }
        loop {
            let timeout_ms = match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        0
                    } else {
                        left.as_millis().clamp(1, i32::MAX as u128) as i32
                    }
                }
            };
            let ready = sysp::poll(&[self.stream.as_fd()], timeout_ms).map_err(ChannelError::Io)?;
            if ready[0].readable {
                return Ok(());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(ChannelError::Timeout);
            }
        }
    }
}

impl AsFd for RawChannel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

fn io_err(e: io::Error) -> ChannelError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset => ChannelError::Disconnected,
        _ => ChannelError::Io(e),
    }
}

pub(crate) fn encode<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
    // Serialising to a Vec cannot fail for serde types made of plain data; a type whose
    // Serialize impl errors on purpose gets an empty payload, which fails to decode.
    postcard::to_allocvec(v).unwrap_or_default()
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ChannelError> {
    postcard::from_bytes(bytes).map_err(ChannelError::Decode)
}

/// Frame kind of user messages on a plain [`channel`].
const USER: u8 = 0;

/// The sending half of a typed control channel.
#[derive(Debug)]
pub struct Sender<T> {
    raw: RawChannel,
    _t: PhantomData<fn(T)>,
}

/// The receiving half of a typed control channel. Implements [`AsFd`] (readable when a message
/// or a hang-up is pending) so it can be polled with rings and other channels.
#[derive(Debug)]
pub struct Receiver<T> {
    raw: RawChannel,
    _t: PhantomData<fn() -> T>,
}

/// Makes two connected channel ends: `A` flows from the first to the second, `B` back.
/// Made before a fork, each process keeps one end.
///
/// # Examples
///
/// ```
/// let ((mut tx_a, mut rx_b), (mut tx_b, mut rx_a)) = shmflow::process::channel::<u32, String>()?;
/// tx_a.send(&7)?;
/// assert_eq!(rx_a.recv()?, 7);
/// tx_b.send(&"seven".to_string())?;
/// assert_eq!(rx_b.recv()?, "seven");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
///
/// If the socket pair cannot be created.
#[allow(clippy::type_complexity)]
pub fn channel<A: Serialize + DeserializeOwned, B: Serialize + DeserializeOwned>(
) -> io::Result<((Sender<A>, Receiver<B>), (Sender<B>, Receiver<A>))> {
    let (x, y) = RawChannel::pair()?;
    let (x2, y2) = (x.try_clone()?, y.try_clone()?);
    Ok((
        (Sender::new(x), Receiver::new(x2)),
        (Sender::new(y), Receiver::new(y2)),
    ))
}

impl<T: Serialize> Sender<T> {
    pub(crate) fn new(raw: RawChannel) -> Self {
        Sender {
            raw,
            _t: PhantomData,
        }
    }

    /// Sends one message (blocks only while the socket buffer is full).
    ///
    /// # Errors
    ///
    /// [`ChannelError::Disconnected`] if the other end is gone; [`ChannelError::TooLarge`].
    pub fn send(&mut self, msg: &T) -> Result<(), ChannelError> {
        self.raw.send_frame(USER, &encode(msg))
    }
}

impl<T: DeserializeOwned> Receiver<T> {
    pub(crate) fn new(raw: RawChannel) -> Self {
        Receiver {
            raw,
            _t: PhantomData,
        }
    }

    /// Waits for the next message.
    ///
    /// # Errors
    ///
    /// [`ChannelError::Disconnected`] when the other end is closed; [`ChannelError::Decode`].
    pub fn recv(&mut self) -> Result<T, ChannelError> {
        let (_, bytes) = self.raw.recv_frame()?;
        decode(&bytes)
    }

    /// Waits at most `timeout` for the next message.
    ///
    /// # Errors
    ///
    /// [`ChannelError::Timeout`] and those of [`Receiver::recv`].
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<T, ChannelError> {
        self.raw.wait_readable(Some(Instant::now() + timeout))?;
        self.recv()
    }

    /// Returns a message if one is pending.
    ///
    /// # Errors
    ///
    /// [`ChannelError::Empty`] and those of [`Receiver::recv`].
    pub fn try_recv(&mut self) -> Result<T, ChannelError> {
        match self.raw.wait_readable(Some(Instant::now())) {
            Err(ChannelError::Timeout) => Err(ChannelError::Empty),
            Err(e) => Err(e),
            Ok(()) => self.recv(),
        }
    }
}

impl<T> AsFd for Receiver<T> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.raw.as_fd()
    }
}

/// Waits until at least one of `sources` is readable (a [`Receiver`], a
/// [`Process`](super::Process), a ring [`Reader`](crate::Reader), a socket, ...) or `timeout`
/// passes; returns the indices of the readable ones (empty on timeout).
///
/// # Errors
///
/// If `poll(2)` fails.
pub fn wait_any(sources: &[&dyn AsFd], timeout: Option<Duration>) -> io::Result<Vec<usize>> {
    let fds: Vec<BorrowedFd<'_>> = sources.iter().map(|s| s.as_fd()).collect();
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
    let ready = sysp::poll(&fds, ms)?;
    Ok(ready
        .iter()
        .enumerate()
        .filter(|(_, r)| r.readable)
        .map(|(i, _)| i)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_eof() {
        let ((mut tx, _rx_unused), (_tx_b, mut rx)) = channel::<Vec<u32>, ()>().unwrap();
        tx.send(&vec![1, 2, 3]).unwrap();
        tx.send(&(0..10_000).collect()).unwrap();
        assert_eq!(rx.recv().unwrap(), vec![1, 2, 3]);
        assert_eq!(rx.recv().unwrap().len(), 10_000);
        assert!(matches!(rx.try_recv(), Err(ChannelError::Empty)));
        assert!(matches!(
            rx.recv_timeout(Duration::from_millis(20)),
            Err(ChannelError::Timeout)
        ));
        drop(tx);
        drop(_rx_unused);
        assert!(matches!(rx.recv(), Err(ChannelError::Disconnected)));
    }

    #[test]
    fn wrong_type_is_a_decode_error() {
        let ((mut tx, _r), (_t, mut rx)) = channel::<String, ()>().unwrap();
        let mut raw_rx: Receiver<bool> = Receiver::new(rx.raw.try_clone().unwrap());
        tx.send(&"not a number, definitely not".to_string())
            .unwrap();
        assert!(matches!(raw_rx.recv(), Err(ChannelError::Decode(_))));
        let _ = rx.try_recv();
    }
}

//! Control channels: typed, length-prefixed postcard frames over a Unix stream socket pair
//! (the frame layout and kinds are in `wire.rs`).
//!
//! Users see typed [`Sender`] / [`Receiver`] pairs (made by [`channel`]), as crossbeam-channel
//! hands out, with the rings' triad of receives: [`Receiver::try_recv`] (never blocks),
//! [`Receiver::recv`] and [`Receiver::recv_timeout`]. A blocking receive waits as ring
//! endpoints do ([`WaitStrategy`]): it first retries a non-blocking read for the spin time
//! (50 µs by default), then sleeps in `poll(2)`. A request answered within the spin time thus
//! costs no kernel wake-up at either end, which is most of a round trip's cost when the two
//! processes run on different CPUs.

use std::io::{self, Write};
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::wire::{self, decode, encode, USER};
use crate::process::error::ChannelError;
use crate::ring::WaitStrategy;
use crate::sys::process as sysp;

/// Spin time in ns for a strategy; `u64::MAX` means busy-poll.
pub(crate) fn spin_ns(strategy: WaitStrategy) -> u64 {
    match strategy {
        WaitStrategy::BusyPoll => u64::MAX,
        WaitStrategy::SpinThenBlock { spin } => {
            spin.as_nanos().min(u128::from(u64::MAX - 1)) as u64
        }
    }
}

/// The strategy a spin time in ns stands for (inverse of [`spin_ns`]).
pub(crate) fn strategy_of(spin_ns: u64) -> WaitStrategy {
    match spin_ns {
        u64::MAX => WaitStrategy::BusyPoll,
        ns => WaitStrategy::SpinThenBlock {
            spin: Duration::from_nanos(ns),
        },
    }
}

/// One pause of a spin loop whose every try is a syscall: mostly a CPU hint, and every few
/// tries a `sched_yield`, so that a peer that shares this CPU (a loaded or small machine) gets
/// to run and answer instead of waiting out the spin.
pub(crate) fn spin_pause(tries: &mut u32) {
    *tries = tries.wrapping_add(1);
    if tries.is_multiple_of(2) {
        std::thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

/// Milliseconds for `poll(2)` until `deadline` (-1: none), at least 1 unless it has passed.
fn poll_ms(deadline: Option<Instant>) -> i32 {
    match deadline {
        None => -1,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                0
            } else {
                // Round up: waking a little late is better than spinning on 0 ms polls.
                (left.as_nanos().div_ceil(1_000_000)).clamp(1, i32::MAX as u128) as i32
            }
        }
    }
}

/// The untyped end of a channel: whole frames in, whole frames out.
///
/// Reads are buffered and never block inside a frame: bytes are taken with non-blocking
/// reads, and waiting happens only in a spin loop or in `poll(2)`, so a deadline holds even
/// when a peer stops in the middle of a frame. A frame is written with one `write`.
#[derive(Debug)]
pub(crate) struct RawChannel {
    stream: UnixStream,
    buf: Vec<u8>,
    start: usize,
    /// How blocking receives wait (see [`spin_ns`]).
    spin_ns: u64,
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
            spin_ns: spin_ns(WaitStrategy::default()),
        }
    }

    /// How blocking receives wait.
    pub(crate) fn strategy(&self) -> WaitStrategy {
        strategy_of(self.spin_ns)
    }

    pub(crate) fn set_strategy(&mut self, strategy: WaitStrategy) {
        self.spin_ns = spin_ns(strategy);
    }

    fn buffered(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// One non-blocking read into the buffer: `Ok(true)` if bytes came, `Ok(false)` if none
    /// were there.
    fn try_fill(&mut self) -> Result<bool, ChannelError> {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > (1 << 16) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let old = self.buf.len();
        let want = match wire::complete_frame(self.buffered()) {
            Ok(None) if self.buffered().len() >= 4 => {
                let b = self.buffered();
                let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
                (4 + len - b.len()).max(1 << 16)
            }
            _ => 1 << 16,
        };
        self.buf.resize(old + want, 0);
        let got = sysp::recv_nonblocking(self.stream.as_fd(), &mut self.buf[old..]);
        match got {
            Ok(Some(0)) => {
                self.buf.truncate(old);
                Err(ChannelError::Disconnected)
            }
            Ok(Some(n)) => {
                self.buf.truncate(old + n);
                Ok(true)
            }
            Ok(None) => {
                self.buf.truncate(old);
                Ok(false)
            }
            Err(e) => {
                self.buf.truncate(old);
                Err(io_err(e))
            }
        }
    }

    /// A second handle on the same socket (for a writer shared with a logger).
    pub(crate) fn try_clone(&self) -> io::Result<RawChannel> {
        let mut c = RawChannel::new(self.stream.try_clone()?);
        c.spin_ns = self.spin_ns;
        Ok(c)
    }

    pub(crate) fn send_frame(&mut self, kind: u8, payload: &[u8]) -> Result<(), ChannelError> {
        let frame = wire::frame(kind, payload)?;
        self.stream.write_all(&frame).map_err(io_err)
    }

    /// The whole frame at the front of the buffer, taken out of it.
    fn pop_frame(&mut self) -> Result<Option<(u8, Vec<u8>)>, ChannelError> {
        let Some(n) = wire::complete_frame(self.buffered())? else {
            return Ok(None);
        };
        let b = self.buffered();
        let kind = b[4];
        let payload = b[5..n].to_vec();
        self.start += n;
        Ok(Some((kind, payload)))
    }

    /// A whole frame if one has arrived; never waits (not even for the rest of a frame that
    /// has started arriving).
    ///
    /// # Errors
    ///
    /// [`ChannelError::Disconnected`] once the peer has hung up and every whole frame it sent
    /// has been taken; [`ChannelError::TooLarge`] on a corrupt header.
    pub(crate) fn try_recv_frame(&mut self) -> Result<Option<(u8, Vec<u8>)>, ChannelError> {
        loop {
            if let Some(f) = self.pop_frame()? {
                return Ok(Some(f));
            }
            if !self.try_fill()? {
                return Ok(None);
            }
        }
    }

    /// Waits for a whole frame until `deadline` (`None`: for ever): spins for the strategy's
    /// spin time, then sleeps in `poll(2)`.
    ///
    /// # Errors
    ///
    /// [`ChannelError::Timeout`] and those of [`RawChannel::try_recv_frame`].
    pub(crate) fn recv_frame_until(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<(u8, Vec<u8>), ChannelError> {
        let start = Instant::now();
        let spin = Duration::from_nanos(self.spin_ns);
        let mut tries = 0u32;
        loop {
            if let Some(f) = self.try_recv_frame()? {
                return Ok(f);
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Err(ChannelError::Timeout);
            }
            if self.spin_ns == u64::MAX || now.duration_since(start) < spin {
                spin_pause(&mut tries);
                continue;
            }
            let ms = poll_ms(deadline);
            sysp::poll(&[self.stream.as_fd()], ms).map_err(ChannelError::Io)?;
        }
    }

    /// Blocks until a whole frame is available.
    pub(crate) fn recv_frame(&mut self) -> Result<(u8, Vec<u8>), ChannelError> {
        self.recv_frame_until(None)
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

    /// Waits for the next message (spinning first, then sleeping: see
    /// [`Receiver::set_wait_strategy`]).
    ///
    /// # Errors
    ///
    /// [`ChannelError::Disconnected`] when the other end is closed; [`ChannelError::Decode`].
    pub fn recv(&mut self) -> Result<T, ChannelError> {
        let (_, bytes) = self.raw.recv_frame()?;
        decode(&bytes)
    }

    /// Waits at most `timeout` for the next message. The timeout holds even if the sender
    /// stops in the middle of a message.
    ///
    /// # Errors
    ///
    /// [`ChannelError::Timeout`] and those of [`Receiver::recv`].
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<T, ChannelError> {
        let (_, bytes) = self.raw.recv_frame_until(Some(Instant::now() + timeout))?;
        decode(&bytes)
    }

    /// Returns a message if a whole one has arrived; never blocks (a message still arriving
    /// is [`ChannelError::Empty`] until its last byte is in).
    ///
    /// # Errors
    ///
    /// [`ChannelError::Empty`] and those of [`Receiver::recv`].
    pub fn try_recv(&mut self) -> Result<T, ChannelError> {
        match self.raw.try_recv_frame()? {
            Some((_, bytes)) => decode(&bytes),
            None => Err(ChannelError::Empty),
        }
    }

    /// How [`recv`](Receiver::recv) and [`recv_timeout`](Receiver::recv_timeout) wait: spin
    /// for a while, then sleep in the kernel (the default, 50 µs of spinning, as rings do), or
    /// never sleep ([`WaitStrategy::BusyPoll`]).
    pub fn set_wait_strategy(&mut self, strategy: WaitStrategy) {
        self.raw.set_strategy(strategy);
    }

    /// The current wait strategy.
    pub fn wait_strategy(&self) -> WaitStrategy {
        self.raw.strategy()
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

    /// Runs `f` on a thread; fails the test if it has not returned within 5 s (a blocked
    /// call would otherwise hang the suite).
    fn within_5s<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the call blocked for more than 5 s")
    }

    /// A sender that stopped in the middle of a frame (killed, or a slow large write): the
    /// old `try_recv` saw a readable fd and then blocked in `read` for the rest.
    fn half_sent_frame() -> (std::os::unix::net::UnixStream, Receiver<Vec<u8>>) {
        let (a, b) = UnixStream::pair().unwrap();
        let mut a = a;
        let full = wire::frame(USER, &encode(&vec![7u8; 100])).unwrap();
        a.write_all(&full[..10]).unwrap();
        (a, Receiver::new(RawChannel::new(b)))
    }

    #[test]
    fn try_recv_never_blocks_on_a_partial_frame() {
        let (_a, mut rx) = half_sent_frame();
        let r = within_5s(move || rx.try_recv());
        assert!(matches!(r, Err(ChannelError::Empty)), "{r:?}");
    }

    #[test]
    fn recv_timeout_holds_when_the_sender_stops_mid_frame() {
        let (mut a, mut rx) = half_sent_frame();
        let (r, rx, took) = within_5s(move || {
            let t = Instant::now();
            let r = rx.recv_timeout(Duration::from_millis(50));
            (r, rx, t.elapsed())
        });
        assert!(matches!(r, Err(ChannelError::Timeout)), "{r:?}");
        assert!(took >= Duration::from_millis(50), "{took:?}");
        // The rest arrives: the frame is whole and intact.
        let full = wire::frame(USER, &encode(&vec![7u8; 100])).unwrap();
        a.write_all(&full[10..]).unwrap();
        let mut rx = rx;
        assert_eq!(rx.try_recv().unwrap(), vec![7u8; 100]);
    }

    #[test]
    fn every_wait_strategy_delivers_and_times_out() {
        for strategy in [
            WaitStrategy::default(),
            WaitStrategy::SpinThenBlock {
                spin: Duration::ZERO,
            },
            WaitStrategy::BusyPoll,
        ] {
            let ((mut tx, _r), (_t, mut rx)) = channel::<u64, ()>().unwrap();
            rx.set_wait_strategy(strategy);
            assert_eq!(rx.wait_strategy(), strategy);
            assert!(matches!(
                rx.recv_timeout(Duration::from_millis(5)),
                Err(ChannelError::Timeout)
            ));
            let sender = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                tx.send(&9).unwrap();
                tx
            });
            assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 9);
            drop(sender.join().unwrap());
            drop(_r);
            assert!(matches!(rx.recv(), Err(ChannelError::Disconnected)));
        }
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

//! Spin, then block: how endpoints wait, and how they wake each other.
//!
//! A waiter first retries its operation in a spin loop for [`WaitStrategy`]'s spin time. Then it
//! announces itself (`*_waiters += 1`, its SLEEPING flag, both SeqCst), retries once more, and
//! sleeps on its own process-shared semaphore until a deadline that is never more than the
//! liveness interval away. The side that makes progress (a commit, a release) publishes its
//! state change first and then checks the waiter count (SeqCst): either the waiter's retry sees
//! the change, or the waker sees the flag and posts. Wake-ups are hints only: a waiter always
//! re-checks the state, so a lost or extra post costs time, never correctness.
//!
//! Each time a sleeping waiter wakes for its liveness interval it checks the peers it depends on
//! (pid alive and same start time) and reclaims the dead ones: this bounds how long a dead
//! reader can hold a lossless writer, or a dead writer can keep readers from `Disconnected`.
//! The interval runs from the endpoint's last check, across calls (`Waiter::last_check`), so
//! calls with timeouts shorter than the interval, made over and over, check too.

use std::time::Duration;

use super::protocol::Role;
use super::protocol::{peer_gen, peer_status, ps, FLAG_ARMED, FLAG_SLEEPING};
use super::shared::Shared;
use crate::primitive::Ordering::*;
use crate::sync::doorbell::{doorbell_address, DoorbellSender};
use crate::sync::semaphore::Semaphore;
use crate::sys;

/// How a blocking call waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStrategy {
    /// Retry in a spin loop for `spin`, then sleep on the semaphore (the default, with 50 µs:
    /// a cross-core wake-up through the kernel costs ~25–60 µs, so short waits never pay it).
    SpinThenBlock {
        /// How long to spin before sleeping.
        spin: Duration,
    },
    /// Never sleep: spin until the operation succeeds or the deadline passes. Lowest latency;
    /// burns a core while waiting.
    BusyPoll,
}

impl Default for WaitStrategy {
    fn default() -> Self {
        WaitStrategy::SpinThenBlock {
            spin: Duration::from_micros(50),
        }
    }
}

/// Default interval at which a waiting endpoint checks that its peers are alive.
pub const DEFAULT_LIVENESS_INTERVAL: Duration = Duration::from_millis(100);

/// One step of an operation that may have to wait.
pub(crate) enum Step<R> {
    Ready(R),
    Pending,
    Fail(WaitEnd),
}

/// How a wait ended without success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitEnd {
    Timeout,
    Disconnected,
    /// The writer died (found by a lock test) after committing `frames` frames.
    WriterDied {
        pid: u32,
        frames: u64,
    },
    Exhausted,
}

/// The waiting side of an endpoint: its peer index, semaphore and settings. Shared by the
/// endpoint and its frame guards (which may live on other threads), so the settings are
/// atomics.
pub(crate) struct Waiter {
    pub index: usize,
    /// When a non-blocking call last checked the peers (monotonic ns).
    last_check: std::sync::atomic::AtomicU64,
    pub role: Role,
    /// Spin time in ns before sleeping; `u64::MAX` = busy-poll.
    spin_ns: std::sync::atomic::AtomicU64,
    /// Liveness interval in ns.
    liveness_ns: std::sync::atomic::AtomicU64,
    sem: Semaphore,
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiter")
            .field("index", &self.index)
            .field("role", &self.role)
            .field("strategy", &self.strategy())
            .finish()
    }
}

fn now_ns() -> u64 {
    sys::monotonic_ns()
}

/// The liveness test of reclamation: `Some` (holding the dead peer's lock, so that nobody
/// else claims or reclaims its entry meanwhile) when peer `i` is known dead (see
/// [`super::liveness::take_dead`]).
pub(crate) fn peer_dead(
    shared: &Shared,
) -> impl FnMut(usize, u32, u64) -> Option<super::liveness::DeadPeer> + '_ {
    move |i, _pid, _start| super::liveness::take_dead(shared, i)
}

impl Waiter {
    pub(crate) fn new(shared: &Shared, index: usize, role: Role) -> Waiter {
        // SAFETY: the semaphore storage of every peer entry is 32 bytes, 8-aligned, inside the
        // mapping that `shared` keeps alive as long as the endpoint (which owns this Waiter);
        // the creator initialised it (`sem_init`, pshared = 1) before publishing the ready
        // word. Only this peer sleeps on it; a semaphore whose words another process damaged
        // is re-initialised here (its methods refuse a damaged one rather than call glibc).
        let sem = unsafe {
            let _ = Semaphore::repair(shared.sem_ptr(index));
            Semaphore::from_ptr(shared.sem_ptr(index))
        };
        let w = Waiter {
            index,
            last_check: std::sync::atomic::AtomicU64::new(sys::monotonic_ns()),
            role,
            spin_ns: std::sync::atomic::AtomicU64::new(0),
            liveness_ns: std::sync::atomic::AtomicU64::new(
                DEFAULT_LIVENESS_INTERVAL.as_nanos() as u64
            ),
            sem,
        };
        w.set_strategy(WaitStrategy::default());
        w
    }

    /// How blocking calls wait.
    pub(crate) fn strategy(&self) -> WaitStrategy {
        match self.spin_ns.load(Relaxed) {
            u64::MAX => WaitStrategy::BusyPoll,
            ns => WaitStrategy::SpinThenBlock {
                spin: Duration::from_nanos(ns),
            },
        }
    }

    pub(crate) fn set_strategy(&self, strategy: WaitStrategy) {
        let ns = match strategy {
            WaitStrategy::BusyPoll => u64::MAX,
            WaitStrategy::SpinThenBlock { spin } => {
                (spin.as_nanos().min(u128::from(u64::MAX - 1))) as u64
            }
        };
        self.spin_ns.store(ns, Relaxed);
    }

    /// How often peers are checked while waiting.
    pub(crate) fn liveness(&self) -> Duration {
        Duration::from_nanos(self.liveness_ns.load(Relaxed))
    }

    pub(crate) fn set_liveness(&self, interval: Duration) {
        let ns = interval
            .max(Duration::from_millis(1))
            .as_nanos()
            .min(u128::from(u64::MAX)) as u64;
        self.liveness_ns.store(ns, Relaxed);
    }

    fn waiters<'s>(&self, shared: &'s Shared) -> &'s crate::primitive::AtomicU64 {
        match self.role {
            Role::Reader => &shared.control().reader_waiters,
            Role::Writer => &shared.control().writer_waiters,
        }
    }

    /// Reclaims dead peers of both roles; wakes everyone if any was found, so that other
    /// waiters re-check (for example to see `Disconnected`).
    pub(crate) fn tick(&self, shared: &Shared) {
        let mut dead = peer_dead(shared);
        let n = shared.reclaim_dead(Role::Reader, Some(self.index), &mut dead)
            + shared.reclaim_dead(Role::Writer, Some(self.index), &mut dead);
        if n > 0 {
            wake(shared, Role::Reader, true);
            wake(shared, Role::Writer, true);
        }
    }

    /// Checks the peers now (a reader's fd reported that every writer is gone).
    pub(crate) fn tick_now(&self, shared: &Shared) {
        self.last_check.store(sys::monotonic_ns(), Relaxed);
        self.tick(shared);
    }

    /// For non-blocking calls (`try_recv`, `try_reserve`) that found nothing: checks the
    /// peers at most once per liveness interval, so an event loop that only ever polls still
    /// learns that its writer died (`Disconnected`) or that a dead reader no longer holds a
    /// lossless writer. Returns true if it checked.
    pub(crate) fn maybe_tick(&self, shared: &Shared) -> bool {
        let now = sys::monotonic_ns();
        if now.saturating_sub(self.last_check.load(Relaxed)) < self.liveness_ns.load(Relaxed) {
            return false;
        }
        self.last_check.store(now, Relaxed);
        self.tick(shared);
        true
    }

    /// Runs `attempt` until it is ready, fails, or `deadline` (monotonic ns) passes.
    pub(crate) fn wait<R>(
        &self,
        shared: &Shared,
        deadline: Option<u64>,
        mut attempt: impl FnMut() -> Step<R>,
    ) -> Result<R, WaitEnd> {
        macro_rules! try_once {
            () => {
                match attempt() {
                    Step::Ready(r) => return Ok(r),
                    Step::Fail(e) => return Err(e),
                    Step::Pending => {}
                }
            };
        }
        try_once!();
        let start = now_ns();
        let liveness = self.liveness_ns.load(Relaxed).max(1);
        // Liveness checks are counted across calls (`last_check`), not from this call's start:
        // an endpoint that calls `recv_timeout` / `reserve_timeout` with timeouts shorter than
        // the liveness interval, over and over, must still check its peers once per interval.
        let mut next_tick = self.last_check.load(Relaxed).saturating_add(liveness);
        let spin = self.spin_ns.load(Relaxed);
        // Spin phase.
        let mut i: u32 = 0;
        loop {
            try_once!();
            i = i.wrapping_add(1);
            if i.is_multiple_of(64) {
                let now = now_ns();
                // Check the peers before giving up on the deadline, so that even calls with
                // a deadline shorter than one spin step check them when they are due.
                if now >= next_tick {
                    self.last_check.store(now, Relaxed);
                    self.tick(shared);
                    next_tick = now + liveness;
                    try_once!();
                }
                if deadline.is_some_and(|d| now >= d) {
                    return Err(WaitEnd::Timeout);
                }
                if now.saturating_sub(start) >= spin {
                    break;
                }
                if i.is_multiple_of(4096) {
                    std::thread::yield_now();
                }
            }
            std::hint::spin_loop();
        }
        // Sleep phase.
        let e = shared.peer(self.index);
        let waiters = self.waiters(shared);
        loop {
            // Drain stale posts, at most 64: a count another process set huge must not
            // keep us here (the wait below re-checks the state anyway).
            for _ in 0..64 {
                if !matches!(self.sem.try_wait(), Ok(true)) {
                    break;
                }
            }
            waiters.fetch_add(1, SeqCst);
            let old = e.flags.fetch_or(FLAG_SLEEPING, SeqCst);
            if old & FLAG_SLEEPING != 0 {
                waiters.fetch_sub(1, SeqCst);
            }
            let r = attempt();
            if !matches!(r, Step::Pending) {
                self.clear_sleeping(shared);
                match r {
                    Step::Ready(r) => return Ok(r),
                    Step::Fail(e) => return Err(e),
                    Step::Pending => unreachable!(),
                }
            }
            let now = now_ns();
            let wake_at = deadline.map_or(next_tick, |d| d.min(next_tick)).max(now);
            // An error here (EINVAL on a corrupted semaphore) must not hang us: fall back to a
            // short sleep and re-check.
            if self.sem.wait_until(wake_at).is_err() {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.clear_sleeping(shared);
            try_once!();
            let now = now_ns();
            if now >= next_tick {
                self.last_check.store(now, Relaxed);
                self.tick(shared);
                next_tick = now + liveness;
                try_once!();
            }
            if deadline.is_some_and(|d| now >= d) {
                return Err(WaitEnd::Timeout);
            }
        }
    }

    fn clear_sleeping(&self, shared: &Shared) {
        let e = shared.peer(self.index);
        if e.flags.fetch_and(!FLAG_SLEEPING, SeqCst) & FLAG_SLEEPING != 0 {
            self.waiters(shared).fetch_sub(1, SeqCst);
        }
    }
}

/// Sets reader `index`'s ARMED flag (its doorbell will be rung by the next commit).
pub(crate) fn arm(shared: &Shared, index: usize) {
    let e = shared.peer(index);
    shared.control().reader_waiters.fetch_add(1, SeqCst);
    if e.flags.fetch_or(FLAG_ARMED, SeqCst) & FLAG_ARMED != 0 {
        shared.control().reader_waiters.fetch_sub(1, SeqCst);
    }
}

/// Wakes sleeping (and rings armed) peers of `role`: all of them, or just one when `all` is
/// false (queue mode: one frame needs one reader). Costs one load when nobody waits.
pub(crate) fn wake(shared: &Shared, role: Role, all: bool) {
    let c = shared.control();
    let waiters = match role {
        Role::Reader => &c.reader_waiters,
        Role::Writer => &c.writer_waiters,
    };
    if waiters.load(SeqCst) == 0 {
        return;
    }
    let range = shared.peers_of(role);
    let len = range.len();
    let first = if all {
        0
    } else {
        c.wake_hint.fetch_add(1, Relaxed) as usize % len.max(1)
    };
    for k in 0..len {
        let i = range.start + (first + k) % len;
        let e = shared.peer(i);
        let flags = e.flags.load(SeqCst);
        if flags == 0 {
            continue;
        }
        let mut woke = false;
        if flags & FLAG_SLEEPING != 0
            && e.flags.fetch_and(!FLAG_SLEEPING, SeqCst) & FLAG_SLEEPING != 0
        {
            waiters.fetch_sub(1, SeqCst);
            // SAFETY: see `Waiter::new`: mapped while `shared` lives; `post` checks the words
            // and refuses a damaged semaphore instead of handing it to glibc.
            let sem = unsafe { Semaphore::from_ptr(shared.sem_ptr(i)) };
            let _ = sem.post();
            woke = true;
        }
        if flags & FLAG_ARMED != 0 && e.flags.fetch_and(!FLAG_ARMED, SeqCst) & FLAG_ARMED != 0 {
            waiters.fetch_sub(1, SeqCst);
            ring_doorbell(shared, i);
            woke = true;
        }
        if woke && !all {
            return;
        }
    }
}

/// The process's doorbell sender: one unbound datagram socket, made on first use and shared
/// by every endpoint and guard of the process (sending on it from several threads is fine).
fn doorbell_sender() -> Option<&'static DoorbellSender> {
    static SENDER: std::sync::OnceLock<Option<DoorbellSender>> = std::sync::OnceLock::new();
    SENDER.get_or_init(|| DoorbellSender::new().ok()).as_ref()
}

fn ring_doorbell(shared: &Shared, i: usize) {
    #[cfg(shmflow_no_doorbell)]
    {
        let _ = (shared, i, doorbell_sender);
    }
    #[cfg(not(shmflow_no_doorbell))]
    {
        let state = shared.peer(i).state.load(Acquire);
        if peer_status(state) != ps::ACTIVE {
            return;
        }
        if let Some(d) = doorbell_sender() {
            let token = shared.header().doorbell_token.load(Relaxed);
            let _ = d.ring(&doorbell_address(token, i as u32, peer_gen(state)));
        }
    }
}

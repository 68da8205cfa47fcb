//! Processes after the frontend/backend pattern: the child runs a [`Backend`]; the parent holds
//! a [`Process`] handle with a typed request/reply channel.
//!
//! # Start methods
//!
//! Each start method has its own builder, so a setting that only one of them honours cannot
//! be given to the other:
//!
//! - [`ForkBuilder`]: `fork(2)`. The child starts with a copy of the parent's memory, so
//!   the backend can hold anything (closures, big read-only data shared copy-on-write). Refused
//!   with [`SpawnError::Threads`] when the parent already runs other threads, because the child
//!   would inherit locks held by threads that do not exist in it (the classic Python
//!   "fork after threads" hang). *Fork first, then threads.*
//! - [`ReexecBuilder`]: the current executable is started again with a marker in its
//!   environment; [`init`] at the top of `main` sees it, receives the backend (serialised with
//!   postcard) over the control socket and runs it. Safe from any multi-threaded program
//!   (tokio, GUI toolkits); the backend type must be `Serialize + DeserializeOwned` and
//!   registered with [`Init::register`].
//!
//! # Death and errors
//!
//! Children get `PR_SET_PDEATHSIG = SIGKILL`: they never outlive the parent. The parent learns
//! of a child's end from its control socket (EOF) and pidfd, reaps it, and reports how it
//! ended: exit code, signal name, panic message and location (sent by a panic hook in the
//! child before it exits), or the error its `run` returned.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::control::RawChannel;
use super::wire::{decode, down, encode, up, LogRecord, PanicReport};
use crate::process::error::{ChannelError, ExitReason, ProcessError, SpawnError};
use crate::ring::WaitStrategy;
use crate::sys;
use crate::sys::process::{self as sysp, Fork, ThreadedFork, WaitStatus};

/// The error type a backend's `run` may return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The child side of a process: what runs in it.
///
/// # Examples
///
/// ```
/// use shmflow::process::{Backend, Context, ForkBuilder};
///
/// struct Doubler;
/// impl Backend for Doubler {
///     type Request = u64;
///     type Reply = u64;
///     fn run(self, ctx: &mut Context<u64, u64>) -> Result<(), shmflow::process::BoxError> {
///         while let Some(x) = ctx.recv()? {
///             ctx.reply(&(2 * x))?;
///         }
///         Ok(())
///     }
/// }
///
/// # if shmflow::process::thread_count() == 1 {
/// let mut p = ForkBuilder::new("doubler").spawn(Doubler)?;
/// assert_eq!(p.request(&21)?, 42);
/// p.stop(std::time::Duration::from_secs(5))?;
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Backend: Sized + 'static {
    /// What the parent sends.
    type Request: Serialize + DeserializeOwned + 'static;
    /// What the child answers.
    type Reply: Serialize + DeserializeOwned + 'static;
    /// The child's main loop. Return `Ok` to exit with code 0; an `Err` is reported to the
    /// parent as [`ExitReason::Failed`]; a panic as [`ExitReason::Panicked`].
    ///
    /// # Errors
    ///
    /// Whatever the backend decides; it ends the process.
    fn run(self, ctx: &mut Context<Self::Request, Self::Reply>) -> Result<(), BoxError>;
}

/// The child's end of the control channel, handed to [`Backend::run`].
#[derive(Debug)]
pub struct Context<Req, Rep> {
    rx: RawChannel,
    tx: Arc<Mutex<RawChannel>>,
    name: String,
    stopped: bool,
    _t: std::marker::PhantomData<fn(Req) -> Rep>,
}

impl<Req: DeserializeOwned, Rep: Serialize> Context<Req, Rep> {
    /// This process's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the parent asked this process to stop.
    pub fn stop_requested(&self) -> bool {
        self.stopped
    }

    fn handle(&mut self, kind: u8, bytes: Vec<u8>) -> Result<Option<Req>, ChannelError> {
        match kind {
            down::REQUEST => decode(&bytes).map(Some),
            _ => {
                self.stopped = true;
                Ok(None)
            }
        }
    }

    /// Waits for the next request. `Ok(None)` means stop: the parent called
    /// [`Process::stop`] or went away.
    ///
    /// # Errors
    ///
    /// [`ChannelError::Decode`] if a request does not decode; I/O errors.
    pub fn recv(&mut self) -> Result<Option<Req>, ChannelError> {
        if self.stopped {
            return Ok(None);
        }
        match self.rx.recv_frame() {
            Ok((k, b)) => self.handle(k, b),
            Err(ChannelError::Disconnected) => {
                self.stopped = true;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Waits at most `timeout` for the next request; `Ok(None)` means stop.
    ///
    /// # Errors
    ///
    /// [`ChannelError::Timeout`] and those of [`Context::recv`].
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Req>, ChannelError> {
        if self.stopped {
            return Ok(None);
        }
        match self.rx.recv_frame_until(Some(Instant::now() + timeout)) {
            Ok((k, b)) => self.handle(k, b),
            Err(ChannelError::Disconnected) => {
                self.stopped = true;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Returns the next request if a whole one has arrived; never blocks. `Ok(None)` means
    /// stop.
    ///
    /// # Errors
    ///
    /// [`ChannelError::Empty`] if nothing has arrived, and those of [`Context::recv`].
    pub fn try_recv(&mut self) -> Result<Option<Req>, ChannelError> {
        if self.stopped {
            return Ok(None);
        }
        match self.rx.try_recv_frame() {
            Ok(Some((k, b))) => self.handle(k, b),
            Ok(None) => Err(ChannelError::Empty),
            Err(ChannelError::Disconnected) => {
                self.stopped = true;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// How [`recv`](Context::recv) waits (set by the parent's builder; the default spins
    /// 50 µs, then sleeps).
    pub fn set_wait_strategy(&mut self, strategy: WaitStrategy) {
        self.rx.set_strategy(strategy);
    }

    /// Sends a reply (any number of replies per request is fine; the parent reads them in
    /// order).
    ///
    /// # Errors
    ///
    /// [`ChannelError::Disconnected`] if the parent is gone.
    pub fn reply(&mut self, rep: &Rep) -> Result<(), ChannelError> {
        let bytes = encode(rep);
        self.tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send_frame(up::REPLY, &bytes)
    }
}

impl<Req, Rep> AsFd for Context<Req, Rep> {
    /// Readable when a request (or stop) is pending: poll it together with rings.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.rx.as_fd()
    }
}

/// Settings both start methods honour.
#[derive(Debug, Clone)]
struct Common {
    name: String,
    cpus: Option<Vec<usize>>,
    spin_ns: u64,
}

impl Common {
    fn new(name: String) -> Common {
        Common {
            name,
            cpus: None,
            spin_ns: super::control::spin_ns(WaitStrategy::default()),
        }
    }

    fn check_cpus(&self) -> Result<(), SpawnError> {
        if let Some(cpus) = &self.cpus {
            let allowed = sysp::online_cpus().map_err(SpawnError::Io)?;
            if cpus.is_empty() || cpus.iter().any(|c| !allowed.contains(c)) {
                return Err(SpawnError::BadCpus {
                    cpus: cpus.clone(),
                    allowed,
                });
            }
        }
        Ok(())
    }
}

/// Starts a process with `fork(2)`: the child runs a copy of the parent's memory, so the
/// backend can hold anything (closures, big read-only data shared copy-on-write). Refused
/// when the parent already runs other threads, unless [`ForkBuilder::allow_threads`]; use
/// [`ReexecBuilder`] from a multi-threaded program.
#[derive(Debug, Clone)]
#[must_use = "a ForkBuilder does nothing until spawned"]
pub struct ForkBuilder {
    common: Common,
    allow_threads: Option<ThreadedFork>,
}

/// Starts a process by re-executing the current program, which must call
/// `shmflow::process::init().register::<B>().run()` first thing in `main`; the backend
/// travels serialised over the control socket. Works from any multi-threaded parent.
#[derive(Debug, Clone)]
#[must_use = "a ReexecBuilder does nothing until spawned"]
pub struct ReexecBuilder {
    common: Common,
    args: Vec<String>,
}

/// Number of threads of the calling process (from `/proc/self/task`; 1 if unreadable).
pub fn thread_count() -> usize {
    sys::thread_count().unwrap_or(1)
}

macro_rules! common_settings {
    ($builder:ident) => {
        impl $builder {
            /// Pins the process to these CPUs (`sched_setaffinity`), checked at spawn.
            pub fn cpus(mut self, cpus: impl AsRef<[usize]>) -> Self {
                self.common.cpus = Some(cpus.as_ref().to_vec());
                self
            }

            /// How both ends of the control channel wait for a message: spin, then sleep
            /// (the default, 50 µs of spinning, as ring endpoints do), or never sleep
            /// ([`WaitStrategy::BusyPoll`]). The child's [`Context::recv`] and the parent's
            /// [`Process::recv`] both use it.
            pub fn wait_strategy(mut self, strategy: WaitStrategy) -> Self {
                self.common.spin_ns = super::control::spin_ns(strategy);
                self
            }
        }
    };
}
common_settings!(ForkBuilder);
common_settings!(ReexecBuilder);

impl ForkBuilder {
    /// A process named `name` (shown by `ps`/`top`; at most 15 bytes are kept).
    pub fn new(name: impl Into<String>) -> Self {
        ForkBuilder {
            common: Common::new(name.into()),
            allow_threads: None,
        }
    }

    /// Forks even when the process has other threads, with the permission only an `unsafe`
    /// call makes ([`ThreadedFork::assume_no_locks_held`], whose contract says when that is
    /// sound). Without it, [`spawn`](ForkBuilder::spawn) refuses with
    /// [`SpawnError::Threads`].
    ///
    /// ```no_run
    /// # use shmflow::process::{ForkBuilder, ThreadedFork};
    /// // SAFETY: our other threads are parked on a channel and hold no lock.
    /// let permit = unsafe { ThreadedFork::assume_no_locks_held() };
    /// let builder = ForkBuilder::new("worker").allow_threads(permit);
    /// ```
    pub fn allow_threads(mut self, permit: ThreadedFork) -> Self {
        self.allow_threads = Some(permit);
        self
    }

    /// Forks and runs `backend` in the child.
    ///
    /// # Errors
    ///
    /// [`SpawnError::Threads`] (other threads running), [`SpawnError::BadCpus`],
    /// [`SpawnError::Io`].
    pub fn spawn<B: Backend>(
        self,
        backend: B,
    ) -> Result<Process<B::Request, B::Reply>, SpawnError> {
        let c = self.common;
        c.check_cpus()?;
        let (mut parent_end, child_end) = RawChannel::pair().map_err(SpawnError::Io)?;
        parent_end.set_strategy(super::control::strategy_of(c.spin_ns));
        let parent_pid = sys::getpid();
        // `fork_checked` counts the threads (unless permitted) right before it forks.
        let Some(forked) = sysp::fork_checked(self.allow_threads).map_err(SpawnError::Io)? else {
            return Err(SpawnError::Threads {
                threads: thread_count(),
            });
        };
        match forked {
            Fork::Child => {
                drop(parent_end);
                child_main(
                    backend,
                    child_end,
                    &c.name,
                    c.cpus.as_deref(),
                    c.spin_ns,
                    parent_pid,
                )
            }
            Fork::Parent(pid) => {
                drop(child_end);
                Ok(Process::new(c.name, pid, parent_end))
            }
        }
    }
}

impl ReexecBuilder {
    /// A process named `name` (shown by `ps`/`top`; at most 15 bytes are kept).
    pub fn new(name: impl Into<String>) -> Self {
        ReexecBuilder {
            common: Common::new(name.into()),
            args: Vec::new(),
        }
    }

    /// Command-line arguments for the re-executed program (default none). Test binaries use
    /// this to run only the test that calls [`init`].
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// Starts the current executable again and hands it `backend`.
    ///
    /// # Errors
    ///
    /// [`SpawnError::BadCpus`], [`SpawnError::Io`] (exec failed), [`SpawnError::Child`] (the
    /// child could not start the backend, e.g. it was not registered).
    pub fn spawn<B>(self, backend: B) -> Result<Process<B::Request, B::Reply>, SpawnError>
    where
        B: Backend + Serialize + DeserializeOwned,
    {
        let c = self.common;
        c.check_cpus()?;
        let (mut parent_end, child_end) = RawChannel::pair().map_err(SpawnError::Io)?;
        parent_end.set_strategy(super::control::strategy_of(c.spin_ns));
        let exe = std::env::current_exe().map_err(SpawnError::Io)?;
        let mut cmd = std::process::Command::new(exe);
        cmd.args(&self.args)
            .env(ENV_ENTRY, entry_name::<B>())
            .env(ENV_NAME, &c.name)
            .env(ENV_LOG, (log::max_level() as usize).to_string())
            .env(ENV_SPIN, c.spin_ns.to_string())
            .stdin(std::process::Stdio::null());
        if let Some(cpus) = &c.cpus {
            let list: Vec<String> = cpus.iter().map(|c| c.to_string()).collect();
            cmd.env(ENV_CPUS, list.join(","));
        }
        sysp::inherit_control_fd(&mut cmd, child_end.as_fd());
        let child = cmd.spawn().map_err(SpawnError::Io)?;
        drop(child_end);
        let pid = child.id();
        // std's Child would reap on its own terms; we reap with waitpid ourselves.
        std::mem::forget(child);
        parent_end
            .send_frame(down::BOOT, &encode(&backend))
            .map_err(|e| SpawnError::Child(format!("could not send the backend: {e}")))?;
        Ok(Process::new(c.name, pid, parent_end))
    }
}

const ENV_ENTRY: &str = "SHMFLOW_CHILD_ENTRY";
const ENV_NAME: &str = "SHMFLOW_CHILD_NAME";
const ENV_CPUS: &str = "SHMFLOW_CHILD_CPUS";
const ENV_SPIN: &str = "SHMFLOW_CHILD_SPIN_NS";
pub(crate) const ENV_LOG: &str = "SHMFLOW_CHILD_LOG";

fn entry_name<B: 'static>() -> &'static str {
    std::any::type_name::<B>()
}

/// Runs in the child after fork (or after re-exec and boot): never returns.
fn child_main<B: Backend>(
    backend: B,
    channel: RawChannel,
    name: &str,
    cpus: Option<&[usize]>,
    spin_ns: u64,
    parent_pid: u32,
) -> ! {
    match sysp::set_parent_death_signal(libc_sigkill(), parent_pid) {
        Ok(true) => {}
        // The parent died before we armed the signal: nobody is left to serve.
        _ => sysp::exit_now(1),
    }
    let _ = sysp::set_process_name(name);
    if let Some(cpus) = cpus {
        let _ = sysp::set_affinity(cpus);
    }
    let tx = match channel.try_clone() {
        Ok(t) => Arc::new(Mutex::new(t)),
        Err(_) => sysp::exit_now(1),
    };
    super::logfwd::install(tx.clone(), name);
    install_panic_hook(tx.clone());
    let mut channel = channel;
    channel.set_strategy(super::control::strategy_of(spin_ns));
    let mut ctx: Context<B::Request, B::Reply> = Context {
        rx: channel,
        tx: tx.clone(),
        name: name.to_owned(),
        stopped: false,
        _t: std::marker::PhantomData,
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| backend.run(&mut ctx)));
    let code = match result {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            let mut message = e.to_string();
            let mut source = e.source();
            while let Some(s) = source {
                message.push_str(&format!(": {s}"));
                source = s.source();
            }
            if let Ok(mut t) = tx.lock() {
                let _ = t.send_frame(up::FAILED, &encode(&message));
            }
            1
        }
        Err(_) => 101,
    };
    log::logger().flush();
    sysp::exit_now(code)
}

fn libc_sigkill() -> i32 {
    9
}

fn install_panic_hook(tx: Arc<Mutex<RawChannel>>) {
    std::panic::set_hook(Box::new(move |info| {
        let (message, location) = super::wire::panic_text(info);
        eprintln!("process panicked at {location}: {message}");
        let report = PanicReport { message, location };
        if let Ok(mut t) = tx.try_lock() {
            let _ = t.send_frame(up::PANIC, &encode(&report));
        }
    }));
}

type EntryFn = fn(RawChannel, String, Option<Vec<usize>>, u64, u32) -> !;

/// Registry of backends a re-executed child may run. Made by [`init`].
#[derive(Debug, Default)]
#[must_use = "call .run() to dispatch a re-executed child"]
pub struct Init {
    entries: Vec<(&'static str, EntryFn)>,
}

/// Call first thing in `main`: in a process started by a [`ReexecBuilder`] this runs the
/// requested backend and exits; in any other process `run()` returns at once.
///
/// ```no_run
/// # use shmflow::process::{Backend, Context, BoxError};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Worker;
/// # impl Backend for Worker { type Request = (); type Reply = ();
/// #   fn run(self, _: &mut Context<(), ()>) -> Result<(), BoxError> { Ok(()) } }
/// fn main() {
///     shmflow::process::init().register::<Worker>().run();
///     // ... the parent's program
/// }
/// ```
pub fn init() -> Init {
    Init::default()
}

fn entry<B: Backend + DeserializeOwned>(
    mut channel: RawChannel,
    name: String,
    cpus: Option<Vec<usize>>,
    spin_ns: u64,
    parent: u32,
) -> ! {
    let backend: B = match channel.recv_frame() {
        Ok((down::BOOT, bytes)) => match decode(&bytes) {
            Ok(b) => b,
            Err(e) => fail_boot(&mut channel, &format!("could not decode the backend: {e}")),
        },
        Ok(_) => fail_boot(&mut channel, "expected the backend as the first message"),
        Err(_) => sysp::exit_now(1),
    };
    child_main(backend, channel, &name, cpus.as_deref(), spin_ns, parent)
}

fn fail_boot(channel: &mut RawChannel, message: &str) -> ! {
    let _ = channel.send_frame(up::FAILED, &encode(&message.to_owned()));
    sysp::exit_now(2)
}

impl Init {
    /// Makes backend `B` startable with [`ReexecBuilder::spawn`].
    pub fn register<B: Backend + DeserializeOwned>(mut self) -> Self {
        self.entries.push((entry_name::<B>(), entry::<B>));
        self
    }

    /// In a re-executed child: runs the requested entry and exits. Otherwise returns.
    pub fn run(self) {
        let Ok(entry) = std::env::var(ENV_ENTRY) else {
            return;
        };
        let name = std::env::var(ENV_NAME).unwrap_or_else(|_| "shmflow-child".into());
        let cpus = std::env::var(ENV_CPUS)
            .ok()
            .map(|s| s.split(',').filter_map(|c| c.parse().ok()).collect());
        // Our own children must not mistake themselves for re-executed ones.
        std::env::remove_var(ENV_ENTRY);
        std::env::remove_var(ENV_NAME);
        let spin_ns = std::env::var(ENV_SPIN)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| super::control::spin_ns(WaitStrategy::default()));
        std::env::remove_var(ENV_CPUS);
        std::env::remove_var(ENV_SPIN);
        let parent = sysp::getppid();
        let Ok(fd) = sysp::take_child_control_fd() else {
            eprintln!("shmflow: {ENV_ENTRY} is set but no control socket was inherited");
            sysp::exit_now(2)
        };
        let mut channel = RawChannel::from_fd(fd);
        match self.entries.iter().find(|(n, _)| *n == entry) {
            Some((_, f)) => f(channel, name, cpus, spin_ns, parent),
            None => fail_boot(
                &mut channel,
                &format!("backend {entry} is not registered: add .register::<{entry}>() to shmflow::process::init() in main"),
            ),
        }
    }
}

/// The parent's handle on a child process: requests and replies, stop, join, kill.
///
/// Dropping a handle whose process still runs kills it (SIGKILL) and reaps it: no zombies, no
/// orphans. Implements [`AsFd`] (readable when a reply, a log record or the child's exit is
/// pending) for [`wait_any`](super::wait_any).
#[derive(Debug)]
pub struct Process<Req, Rep> {
    name: String,
    pid: u32,
    channel: RawChannel,
    pidfd: Option<OwnedFd>,
    exit: Option<ExitReason>,
    panic: Option<PanicReport>,
    failure: Option<String>,
    _t: std::marker::PhantomData<fn(Req) -> Rep>,
}

impl<Req: Serialize, Rep: DeserializeOwned> Process<Req, Rep> {
    fn new(name: String, pid: u32, channel: RawChannel) -> Self {
        Process {
            name,
            pid,
            channel,
            pidfd: sysp::pidfd_open(pid).ok(),
            exit: None,
            panic: None,
            failure: None,
            _t: std::marker::PhantomData,
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The child's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pidfd (readable once the child has exited), when the kernel supports pidfds.
    pub fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(|f| f.as_fd())
    }

    /// Sends a request without waiting for the reply.
    ///
    /// # Errors
    ///
    /// [`ProcessError::Died`] if the child is gone (with how it ended).
    pub fn send(&mut self, req: &Req) -> Result<(), ProcessError> {
        match self.channel.send_frame(down::REQUEST, &encode(req)) {
            Ok(()) => Ok(()),
            Err(ChannelError::Disconnected) => Err(self.died()),
            Err(source) => Err(ProcessError::Channel {
                name: self.name.clone(),
                source,
            }),
        }
    }

    fn died(&mut self) -> ProcessError {
        let reason = match self.wait_exit(Some(Instant::now() + Duration::from_secs(5))) {
            Ok(r) => r,
            Err(e) => return e,
        };
        ProcessError::Died {
            name: self.name.clone(),
            pid: self.pid,
            reason,
        }
    }

    fn channel_error(&self, source: ChannelError) -> ProcessError {
        match source {
            ChannelError::Timeout => ProcessError::Timeout {
                name: self.name.clone(),
            },
            source => ProcessError::Channel {
                name: self.name.clone(),
                source,
            },
        }
    }

    /// Reads frames until a reply arrives (forwarding log records, noting panic reports).
    fn next_reply(&mut self, deadline: Option<Instant>) -> Result<Rep, ProcessError> {
        loop {
            match self.channel.recv_frame_until(deadline) {
                Ok((up::REPLY, bytes)) => {
                    return decode(&bytes).map_err(|source| self.channel_error(source))
                }
                Ok((kind, bytes)) => self.side_frame(kind, &bytes),
                Err(ChannelError::Disconnected) => return Err(self.died()),
                Err(source) => return Err(self.channel_error(source)),
            }
        }
    }

    fn side_frame(&mut self, kind: u8, bytes: &[u8]) {
        match kind {
            up::LOG => {
                if let Ok(rec) = decode::<LogRecord>(bytes) {
                    super::logfwd::emit(&self.name, rec.level, &rec.target, &rec.message);
                }
            }
            up::PANIC => self.panic = decode(bytes).ok(),
            up::FAILED => self.failure = decode(bytes).ok(),
            _ => {}
        }
    }

    /// Returns a reply if one has fully arrived, without waiting (log records and panic
    /// reports that arrive are handled on the way).
    ///
    /// # Errors
    ///
    /// [`ProcessError::Died`] if the child has ended and sent nothing more.
    pub fn try_recv(&mut self) -> Result<Option<Rep>, ProcessError> {
        loop {
            match self.channel.try_recv_frame() {
                Ok(None) => return Ok(None),
                Ok(Some((up::REPLY, bytes))) => {
                    return decode(&bytes)
                        .map(Some)
                        .map_err(|source| self.channel_error(source))
                }
                Ok(Some((kind, bytes))) => self.side_frame(kind, &bytes),
                Err(ChannelError::Disconnected) => return Err(self.died()),
                Err(source) => return Err(self.channel_error(source)),
            }
        }
    }

    /// How [`recv`](Process::recv), [`recv_timeout`](Process::recv_timeout) and
    /// [`request`](Process::request) wait for a reply (the builder's
    /// [`wait_strategy`](ForkBuilder::wait_strategy) by default).
    pub fn set_wait_strategy(&mut self, strategy: WaitStrategy) {
        self.channel.set_strategy(strategy);
    }

    /// The current wait strategy.
    pub fn wait_strategy(&self) -> WaitStrategy {
        self.channel.strategy()
    }

    /// Sends any value that serialises like a `Req` (a borrowed form of it, to avoid a copy).
    pub(crate) fn send_encoded<T: Serialize>(&mut self, v: &T) -> Result<(), ProcessError> {
        match self.channel.send_frame(down::REQUEST, &encode(v)) {
            Ok(()) => Ok(()),
            Err(ChannelError::Disconnected) => Err(self.died()),
            Err(source) => Err(ProcessError::Channel {
                name: self.name.clone(),
                source,
            }),
        }
    }

    /// Waits for the next reply.
    ///
    /// # Errors
    ///
    /// [`ProcessError::Died`] when the child ends first, with the reason (exit code, signal,
    /// panic message and location, or its `run` error).
    pub fn recv(&mut self) -> Result<Rep, ProcessError> {
        self.next_reply(None)
    }

    /// Waits at most `timeout` for the next reply.
    ///
    /// # Errors
    ///
    /// [`ProcessError::Timeout`] and those of [`Process::recv`].
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Rep, ProcessError> {
        self.next_reply(Some(Instant::now() + timeout))
    }

    /// Sends a request and waits for one reply.
    ///
    /// # Errors
    ///
    /// Those of [`Process::send`] and [`Process::recv`].
    pub fn request(&mut self, req: &Req) -> Result<Rep, ProcessError> {
        self.send(req)?;
        self.recv()
    }

    /// Whether the child has ended (reaps it if so).
    pub fn try_exit(&mut self) -> Option<ExitReason> {
        if self.exit.is_none() {
            if let Ok(Some(st)) = sysp::try_wait(self.pid) {
                self.drain_side_frames();
                self.exit = Some(self.reason(st));
            }
        }
        self.exit.clone()
    }

    fn drain_side_frames(&mut self) {
        while let Ok(Some((k, b))) = self.channel.try_recv_frame() {
            if k != up::REPLY {
                self.side_frame(k, &b);
            }
        }
    }

    fn reason(&mut self, st: WaitStatus) -> ExitReason {
        match st {
            WaitStatus::Exited(101) if self.panic.is_some() => {
                let p = self.panic.take().expect("checked");
                ExitReason::Panicked {
                    message: p.message,
                    location: p.location,
                }
            }
            WaitStatus::Exited(c) if c != 0 && self.failure.is_some() => ExitReason::Failed {
                message: self.failure.take().expect("checked"),
            },
            WaitStatus::Exited(c) => ExitReason::Exited(c),
            WaitStatus::Signaled(sig, _) => ExitReason::Signaled {
                signal: sig,
                name: sysp::signal_name(sig),
            },
        }
    }

    fn wait_exit(&mut self, deadline: Option<Instant>) -> Result<ExitReason, ProcessError> {
        loop {
            if let Some(r) = self.try_exit() {
                return Ok(r);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(ProcessError::Timeout {
                    name: self.name.clone(),
                });
            }
            // Wait on the pidfd (or the socket) instead of sleeping blindly.
            let left = deadline.map_or(100, |d| {
                d.saturating_duration_since(Instant::now())
                    .as_millis()
                    .min(100) as i32
            });
            let fd = self
                .pidfd
                .as_ref()
                .map(|f| f.as_fd())
                .unwrap_or_else(|| self.channel.as_fd());
            if sysp::poll(&[fd], left.max(1)).is_err() {
                std::thread::sleep(Duration::from_millis(5));
            }
            // Read what the child sent (so it can finish writing, and we see panic reports).
            if self.pidfd.is_some() {
                self.drain_side_frames();
            } else {
                match self.channel.try_recv_frame() {
                    Ok(Some((k, b))) => self.side_frame(k, &b),
                    Ok(None) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        }
    }

    /// Waits for the child to exit on its own.
    ///
    /// # Errors
    ///
    /// [`ProcessError::Died`] if it did not exit cleanly (code ≠ 0, signal, panic, `run`
    /// error); I/O errors.
    pub fn join(&mut self) -> Result<(), ProcessError> {
        let reason = self.wait_exit(None)?;
        self.check(reason)
    }

    fn check(&self, reason: ExitReason) -> Result<(), ProcessError> {
        if reason.is_success() {
            Ok(())
        } else {
            Err(ProcessError::Died {
                name: self.name.clone(),
                pid: self.pid,
                reason,
            })
        }
    }

    /// Asks the child to stop (its `Context::recv` returns `None`) and waits up to `grace` for
    /// it to exit; kills it (SIGKILL) after that.
    ///
    /// # Errors
    ///
    /// [`ProcessError::Died`] if it did not exit cleanly (including being killed after the
    /// grace period).
    pub fn stop(&mut self, grace: Duration) -> Result<(), ProcessError> {
        if self.exit.is_none() {
            let _ = self.channel.send_frame(down::STOP, &[]);
        }
        match self.wait_exit(Some(Instant::now() + grace)) {
            Ok(r) => self.check(r),
            Err(ProcessError::Timeout { .. }) => {
                self.kill();
                let r = self.wait_exit(None)?;
                self.check(r)
            }
            Err(e) => Err(e),
        }
    }

    /// Asks the child to stop without waiting for it.
    pub(crate) fn request_stop(&mut self) {
        if self.exit.is_none() {
            let _ = self.channel.send_frame(down::STOP, &[]);
        }
    }

    /// Kills the child with SIGKILL (it is reaped by the next `join`, `try_exit` or drop).
    pub fn kill(&mut self) {
        if self.exit.is_none() {
            let _ = sysp::kill(self.pid, 9);
        }
    }

    /// Sends a signal to the child.
    ///
    /// # Errors
    ///
    /// If the child is gone (`ESRCH`).
    pub fn signal(&self, sig: i32) -> io::Result<()> {
        sysp::kill(self.pid, sig)
    }
}

impl<Req, Rep> AsFd for Process<Req, Rep> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.channel.as_fd()
    }
}

impl<Req, Rep> Drop for Process<Req, Rep> {
    fn drop(&mut self) {
        if self.exit.is_none() {
            if let Ok(None) = sysp::try_wait(self.pid) {
                let _ = sysp::kill(self.pid, 9);
                let _ = sysp::wait(self.pid);
            }
        }
    }
}

//! Thin, `io::Result`-returning wrappers around the libc calls shmflow needs.
//!
//! This module is the bottom of the crate's stack (`process` → `ring`, `array`
//! → `shm` → `sync` → `sys`). Everything here is Linux specific (glibc on
//! x86_64 and aarch64; musl is kept compiling where it costs nothing) and does
//! no policy: errno values pass through untouched as [`io::Error`]s, and the
//! `shm` and `sync` modules map them to named variants at their boundary.
//!
//! What this module provides:
//!
//! * [`syscall!`]: the one helper through which libc calls are made.
//! * POSIX shared memory: [`shm_create`], [`shm_open_rw`], [`shm_unlink`],
//!   [`ftruncate`], [`fallocate`], [`fchmod`], [`fstat`].
//! * Processes: [`getpid`], [`process_start_time`], [`pid_alive`],
//!   [`thread_count`].
//! * Clocks and randomness: [`monotonic_ns`], [`realtime_ns`], [`random_u64`].

use std::ffi::CStr;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

pub(crate) mod atfork;
pub(crate) mod fifo;
pub(crate) mod lock;
pub(crate) mod process;

/// Calls a libc function and turns its `-1` error return into
/// [`io::Error::last_os_error`].
///
/// `syscall!(fstat(fd, buf))` calls `libc::fstat`; a path with one module
/// segment, as in `syscall!(ffi::sem_clockwait(..))`, calls a function declared
/// elsewhere in the crate. On success the raw return value is passed through.
///
/// The macro expands to an `unsafe` block, so **every use must be preceded by a
/// `// SAFETY:` comment** saying why the call's contract holds (valid pointers,
/// owned fds, ...), exactly as if the `unsafe` block were written out. Modelled
/// on mio's `src/sys/unix/mod.rs`.
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        #[allow(unused_unsafe)]
        // SAFETY: the caller of `syscall!` states, in a `// SAFETY:` comment at
        // the call site, why the arguments satisfy this libc function's contract.
        let res = unsafe { libc::$fn($($arg),*) };
        if res == -1 {
            Err(::std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
    ($module:ident :: $fn:ident ( $($arg:expr),* $(,)? )) => {{
        #[allow(unused_unsafe)]
        // SAFETY: the caller of `syscall!` states, in a `// SAFETY:` comment at
        // the call site, why the arguments satisfy this function's contract.
        let res = unsafe { $module::$fn($($arg),*) };
        if res == -1 {
            Err(::std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}
pub(crate) use syscall;

/// Creates a new POSIX shared memory object exclusively, opened read-write and
/// close-on-exec, with permission bits `mode` (before the umask).
///
/// # Errors
///
/// Any `shm_open` error; an existing object gives `EEXIST`
/// ([`io::ErrorKind::AlreadyExists`]).
pub(crate) fn shm_create(name: &CStr, mode: u32) -> io::Result<OwnedFd> {
    let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC;
    // SAFETY: `name` is a valid NUL-terminated string for the whole call.
    let fd = syscall!(shm_open(name.as_ptr(), flags, mode as libc::mode_t))?;
    // SAFETY: `shm_open` just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens an existing POSIX shared memory object read-write and close-on-exec.
///
/// # Errors
///
/// Any `shm_open` error, e.g. `ENOENT` or `EACCES`.
pub(crate) fn shm_open_rw(name: &CStr) -> io::Result<OwnedFd> {
    let flags = libc::O_RDWR | libc::O_CLOEXEC;
    // SAFETY: `name` is a valid NUL-terminated string for the whole call; the
    // mode argument is ignored without O_CREAT.
    let fd = syscall!(shm_open(name.as_ptr(), flags, 0))?;
    // SAFETY: `shm_open` just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Removes the name of a POSIX shared memory object. Existing mappings and
/// descriptors stay valid; the memory is freed when the last one goes.
///
/// # Errors
///
/// Any `shm_unlink` error, e.g. `ENOENT`.
pub(crate) fn shm_unlink(name: &CStr) -> io::Result<()> {
    // SAFETY: `name` is a valid NUL-terminated string for the whole call.
    syscall!(shm_unlink(name.as_ptr())).map(drop)
}

/// Sets the size of the file behind `fd` to `len` bytes.
///
/// # Errors
///
/// `InvalidInput` if `len` does not fit in `off_t`, otherwise any `ftruncate`
/// error.
pub(crate) fn ftruncate(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    let len = to_off_t(len)?;
    // SAFETY: `fd` is a valid open descriptor borrowed for the whole call.
    syscall!(ftruncate(fd.as_raw_fd(), len)).map(drop)
}

/// Allocates backing store for bytes `0..len` of the file behind `fd`
/// (`fallocate(2)` with mode 0), so that running out of room in `/dev/shm`
/// shows up here as `ENOSPC` instead of as a `SIGBUS` on first touch of a page.
///
/// A `len` of 0 does nothing.
///
/// # Errors
///
/// `InvalidInput` if `len` does not fit in `off_t`, otherwise any `fallocate`
/// error (`ENOSPC`, `EOPNOTSUPP` on file systems without support, ...).
pub(crate) fn fallocate(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let len = to_off_t(len)?;
    loop {
        // SAFETY: `fd` is a valid open descriptor borrowed for the whole call.
        match syscall!(fallocate(fd.as_raw_fd(), 0, 0, len)) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

fn to_off_t(len: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(len).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "file length does not fit in off_t",
        )
    })
}

/// Sets the permission bits of the file behind `fd` to `mode` (not subject to
/// the umask).
///
/// # Errors
///
/// Any `fchmod` error, e.g. `EPERM`.
pub(crate) fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: `fd` is a valid open descriptor borrowed for the whole call.
    syscall!(fchmod(fd.as_raw_fd(), mode as libc::mode_t)).map(drop)
}

/// Changes the group of an open file (the owner stays).
pub(crate) fn fchown_group(fd: BorrowedFd<'_>, gid: u32) -> io::Result<()> {
    // SAFETY: `fd` is a valid open descriptor borrowed for the whole call; uid -1 keeps the
    // owner.
    syscall!(fchown(
        fd.as_raw_fd(),
        u32::MAX as libc::uid_t,
        gid as libc::gid_t
    ))
    .map(drop)
}

/// The gid of a group name, from the system's group database (`getgrnam_r`).
pub fn group_id(name: &str) -> io::Result<Option<u32>> {
    let cname = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "group name with NUL"))?;
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: an all-zero `struct group` is a valid out-parameter (pointers null).
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: all pointers are valid for the call: the C string, the group struct, the
        // buffer with its length, and the result pointer.
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut grp,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        match rc {
            0 if result.is_null() => return Ok(None),
            0 => return Ok(Some(grp.gr_gid)),
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// The parts of `struct stat` shmflow looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStat {
    /// `st_size`: the file size in bytes.
    pub size: u64,
    /// `st_uid`: the owner's user id.
    pub uid: u32,
    /// `st_mode`: file type and permission bits; see [`FileStat::permissions`].
    pub mode: u32,
    /// `st_dev` and `st_ino`: which file this is (a name can be reused by a new file).
    pub id: (u64, u64),
}

impl FileStat {
    /// The permission bits of [`mode`](Self::mode) (`mode & 0o7777`).
    #[allow(dead_code)]
    pub(crate) fn permissions(&self) -> u32 {
        self.mode & 0o7777
    }
}

/// Returns size, owner and mode of the file behind `fd`.
///
/// # Errors
///
/// Any `fstat` error.
pub(crate) fn fstat(fd: BorrowedFd<'_>) -> io::Result<FileStat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `fd` is a valid open descriptor; `st` is writable memory of the
    // right size and alignment for a `struct stat`.
    syscall!(fstat(fd.as_raw_fd(), st.as_mut_ptr()))?;
    // SAFETY: `fstat` succeeded, so it filled in the whole structure.
    let st = unsafe { st.assume_init() };
    Ok(FileStat {
        // A regular file's size is never negative.
        size: u64::try_from(st.st_size).unwrap_or(0),
        uid: st.st_uid,
        mode: st.st_mode,
        id: (st.st_dev, st.st_ino),
    })
}

/// Returns the calling process's id.
pub(crate) fn getpid() -> u32 {
    std::process::id()
}

/// What [`process_start_time`], [`pid_alive`] and [`process::cpu_time`] read from
/// `/proc/<pid>/stat`: the one parser of that file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// Field 3, the one-letter state (`R`, `S`, `Z`, ...).
    pub state: u8,
    /// Fields 14 and 15, `utime` + `stime`: CPU time used, in clock ticks.
    pub cpu_ticks: u64,
    /// Field 22, `starttime`: clock ticks since boot.
    pub start_time: u64,
}

fn malformed_stat() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/<pid>/stat")
}

/// Parses the contents of `/proc/<pid>/stat`.
///
/// Field 2 (`comm`) is in parentheses and may itself contain spaces and
/// parentheses, so the fixed fields are counted from after the *last* `)`.
fn parse_proc_stat(text: &str) -> io::Result<ProcStat> {
    let close = text.rfind(')').ok_or_else(malformed_stat)?;
    // Fields 3, 4, ... follow the `)`: field n is at index n - 3.
    let fields: Vec<&str> = text[close + 1..].split_ascii_whitespace().collect();
    let &[state] = fields.first().ok_or_else(malformed_stat)?.as_bytes() else {
        return Err(malformed_stat());
    };
    let field = |n: usize| -> io::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(malformed_stat)
    };
    Ok(ProcStat {
        state,
        cpu_ticks: field(14)?.saturating_add(field(15)?),
        start_time: field(22)?,
    })
}

pub(crate) fn read_proc_stat(pid: u32) -> io::Result<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_proc_stat(&text)
}

/// Returns when process `pid` started, in clock ticks since boot (field 22,
/// `starttime`, of `/proc/<pid>/stat`).
///
/// Together with the pid this identifies a process even after its pid has been
/// reused, see [`pid_alive`]. The value is never 0 for a process started after
/// the first clock tick.
///
/// # Errors
///
/// `NotFound` if there is no such process (in this pid namespace), or
/// `InvalidData` if the file cannot be parsed.
pub(crate) fn process_start_time(pid: u32) -> io::Result<u64> {
    read_proc_stat(pid).map(|s| s.start_time)
}

/// Returns whether process `pid` exists, has not exited (zombies count as
/// dead), and, if `start_time` is not 0, is the process that started at
/// `start_time` (as from [`process_start_time`]) rather than a later process
/// that reused the pid.
///
/// Pid 0 and pids above `i32::MAX` are never alive. A process that exists but
/// whose `/proc` entry cannot be read for another reason is assumed alive: a
/// false "dead" is worse than a false "alive" for callers that clean up after
/// dead peers. Pids are only meaningful within one pid namespace.
pub(crate) fn pid_alive(pid: u32, start_time: u64) -> bool {
    // Never let a pid become 0 or negative: kill() would then signal a whole
    // process group.
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks existence and permission; nothing is sent.
    match syscall!(kill(raw, 0)) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return false,
        // No other error is documented for signal 0; err on the side of "alive".
        Err(_) => {}
    }
    match read_proc_stat(pid) {
        Ok(stat) => {
            if matches!(stat.state, b'Z' | b'X' | b'x') {
                return false;
            }
            start_time == 0 || stat.start_time == start_time
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => false,
        Err(_) => true,
    }
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = MaybeUninit::<libc::timespec>::uninit();
    // SAFETY: `ts` is writable memory of the size and alignment of a timespec.
    let res = syscall!(clock_gettime(clock, ts.as_mut_ptr()));
    if res.is_err() {
        // Only EINVAL (unknown clock) or EFAULT (bad pointer) are possible, and
        // neither applies to CLOCK_MONOTONIC or CLOCK_REALTIME with a valid
        // pointer on any Linux since 2.6.
        debug_assert!(false, "clock_gettime({clock}) failed: {res:?}");
        return 0;
    }
    // SAFETY: `clock_gettime` succeeded, so it filled in the timespec.
    let ts = unsafe { ts.assume_init() };
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// Nanoseconds of `CLOCK_MONOTONIC`: steady, not affected by clock changes,
/// and shared by all processes on the machine (so deadlines can be compared
/// across processes).
pub(crate) fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Nanoseconds of `CLOCK_REALTIME` since the Unix epoch (0 before 1970).
pub(crate) fn realtime_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

/// Returns the number of threads in this process (entries of
/// `/proc/self/task`).
///
/// # Errors
///
/// Any error from reading the directory.
pub(crate) fn thread_count() -> io::Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir("/proc/self/task")? {
        entry?;
        n += 1;
    }
    Ok(n)
}

/// Returns 64 random bits from `getrandom(2)`.
///
/// If the kernel cannot provide them (no `getrandom`, or entropy not yet
/// initialised this early in boot), falls back to hashing the monotonic and
/// real-time clocks, the pid and a stack address: not secret, but still
/// unlikely to collide between processes.
pub(crate) fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is valid writable memory of `rest.len()` bytes.
        match syscall!(getrandom(rest.as_mut_ptr().cast(), rest.len(), 0)) {
            Ok(n) => filled += n as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return fallback_random(),
        }
    }
    u64::from_ne_bytes(buf)
}

fn fallback_random() -> u64 {
    let local = 0u8;
    let stack = std::ptr::addr_of!(local) as u64;
    let mut x = splitmix64(monotonic_ns());
    x = splitmix64(x ^ realtime_ns());
    x = splitmix64(x ^ u64::from(getpid()));
    splitmix64(x ^ stack)
}

/// The splitmix64 finaliser: a cheap bijective mixer.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn parse_stat_handles_hostile_comm() {
        // comm = "a) b (c", then fields 3.. with starttime (22) = 424242.
        let mut text = String::from("1234 (a) b (c) S");
        for field in 4..=21 {
            text.push_str(&format!(" {field}"));
        }
        text.push_str(" 424242 23 24\n");
        let stat = parse_proc_stat(&text).unwrap();
        assert_eq!(stat.state, b'S');
        assert_eq!(stat.start_time, 424242);
        assert_eq!(stat.cpu_ticks, 14 + 15);
    }

    #[test]
    fn parse_stat_rejects_malformed() {
        for text in ["", "1 (x", "1 (x) S 1 2 3", "1 (x) SS 4 5", "1 (x) "] {
            let err = parse_proc_stat(text).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{text:?}");
        }
        let mut text = String::from("1 (x) R");
        for field in 4..=21 {
            text.push_str(&format!(" {field}"));
        }
        text.push_str(" notanumber");
        assert_eq!(
            parse_proc_stat(&text).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn self_start_time_is_stable_and_alive() {
        let pid = getpid();
        let t1 = process_start_time(pid).unwrap();
        let t2 = process_start_time(pid).unwrap();
        assert_ne!(t1, 0);
        assert_eq!(t1, t2);
        assert!(pid_alive(pid, t1));
        assert!(pid_alive(pid, 0));
        assert!(
            !pid_alive(pid, t1 + 1),
            "start time mismatch means reused pid"
        );
    }

    #[test]
    fn invalid_pids_are_dead() {
        assert!(!pid_alive(0, 0));
        assert!(!pid_alive(u32::MAX, 0));
        assert!(!pid_alive(i32::MAX as u32 + 1, 0));
        assert_eq!(
            process_start_time(0).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    /// Forks a child that exits at once with status 0. The child only calls
    /// `_exit`, which is async-signal-safe.
    fn fork_exiting_child() -> libc::pid_t {
        // SAFETY: the child calls nothing but `_exit`, so forking a
        // multi-threaded test process is fine.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed: {}", io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: `_exit` is async-signal-safe and never returns.
            unsafe { libc::_exit(0) };
        }
        pid
    }

    fn reap(pid: libc::pid_t) {
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is a valid out pointer.
        let res = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(res, pid);
        assert!(libc::WIFEXITED(status));
        assert_eq!(libc::WEXITSTATUS(status), 0);
    }

    #[test]
    fn zombie_and_reaped_children_are_dead() {
        let pid = fork_exiting_child();
        let upid = pid as u32;
        // Until reaped the child is a zombie: kill(pid, 0) succeeds, but it
        // must count as dead. Wait (bounded) for it to reach that state.
        let deadline = monotonic_ns() + 5_000_000_000;
        loop {
            match read_proc_stat(upid) {
                Ok(s) if s.state == b'Z' => break,
                Ok(_) if monotonic_ns() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                other => panic!("child never became a zombie: {other:?}"),
            }
        }
        let start = process_start_time(upid).unwrap();
        assert!(!pid_alive(upid, start));
        assert!(!pid_alive(upid, 0));
        reap(pid);
        assert!(!pid_alive(upid, start));
        assert!(!pid_alive(upid, 0));
    }

    #[test]
    fn clocks_move_forward() {
        let a = monotonic_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = monotonic_ns();
        assert!(b >= a + 2_000_000);
        // Some time after 2020-01-01.
        assert!(realtime_ns() > 1_577_836_800_000_000_000);
    }

    #[test]
    fn thread_count_sees_new_threads() {
        let before = thread_count().unwrap();
        assert!(before >= 1);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            ready_tx.send(()).unwrap();
            rx.recv().unwrap();
        });
        ready_rx.recv().unwrap();
        // Other tests run in parallel threads, so only a lower bound holds.
        assert!(thread_count().unwrap() >= 2);
        tx.send(()).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn random_values_differ() {
        let values: Vec<u64> = (0..8).map(|_| random_u64()).collect();
        for (i, a) in values.iter().enumerate() {
            for b in &values[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_ne!(fallback_random(), fallback_random());
    }

    #[test]
    fn shm_roundtrip() {
        let name = std::ffi::CString::new(format!(
            "/shmflow-sys-test.{}.{:016x}",
            getpid(),
            random_u64()
        ))
        .unwrap();
        let fd = shm_create(&name, 0o600).unwrap();
        let again = shm_create(&name, 0o600).unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::AlreadyExists);
        ftruncate(fd.as_fd(), 8192).unwrap();
        fallocate(fd.as_fd(), 8192).unwrap();
        fchmod(fd.as_fd(), 0o640).unwrap();
        let st = fstat(fd.as_fd()).unwrap();
        assert_eq!(st.size, 8192);
        assert_eq!(st.permissions(), 0o640);
        assert_eq!(st.mode & libc::S_IFMT, libc::S_IFREG);
        // SAFETY: plain libc call with no pointers.
        assert_eq!(st.uid, unsafe { libc::geteuid() });
        let fd2 = shm_open_rw(&name).unwrap();
        assert_eq!(fstat(fd2.as_fd()).unwrap().size, 8192);
        shm_unlink(&name).unwrap();
        assert_eq!(
            shm_unlink(&name).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            shm_open_rw(&name).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }
}

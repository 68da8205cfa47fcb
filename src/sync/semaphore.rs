//! A process-shared POSIX semaphore (`sem_t`) that lives inside a shared
//! segment.
//!
//! The semaphore is only a wake-up mechanism. Whether a slot is full or empty,
//! or a peer is gone, is decided by atomics in the segment; a waiter re-checks
//! them after every wake-up and always waits with a deadline. So a post that
//! is lost (a peer dies between publishing and posting) or left over (the
//! count stays positive after the state was consumed by `try_` calls) costs at
//! most one deadline or one spurious wake-up, never correctness.
//!
//! Waiting uses `CLOCK_MONOTONIC` deadlines, comparable across processes. On
//! glibc this is `sem_clockwait` (glibc 2.30 and later); elsewhere the
//! remaining time is turned into a `CLOCK_REALTIME` deadline for
//! `sem_timedwait`, re-checked against the monotonic clock after a timeout.
//!
//! # Corrupted semaphores
//!
//! The `sem_t` lives in memory that other processes can write, and the C
//! library trusts its bytes: glibc turns its `private` word into the futex
//! operation code, so garbage there makes `sem_post` abort the process
//! ("The futex facility returned an unexpected error code") or issue a futex
//! *wait* with no timeout, which hangs. So every operation first checks the
//! words (see [`Semaphore::looks_valid`]) and refuses a semaphore that is not
//! what `sem_init(pshared = 1)` makes, with `EINVAL`, before calling the C
//! library. A peer re-initialises its own semaphore when it attaches if the
//! check fails ([`Semaphore::repair`]).
//!
//! The check cannot be atomic with the C library's use: a process that
//! rewrites the words between the check and the call can still make glibc
//! abort or block. That needs a hostile process with write access to the
//! segment (which can corrupt frames anyway); accidental corruption is caught.

use std::io;
use std::mem::{align_of, size_of};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use crate::sys::{self, syscall};

/// Bytes reserved for one `sem_t` in shared layouts (glibc and musl need 32 on
/// 64-bit targets, at most 8-byte aligned).
pub(crate) const SEM_BYTES: usize = 32;

/// Alignment a [`SEM_BYTES`] region must have.
pub(crate) const SEM_ALIGN: usize = 8;

const _: () = assert!(size_of::<libc::sem_t>() <= SEM_BYTES);
const _: () = assert!(align_of::<libc::sem_t>() <= SEM_ALIGN);

/// glibc's `struct new_sem` on 64-bit targets: `u64 data` (the value in bits 0–31, the number
/// of waiters in bits 32–63), `i32 private`, `i32 pad`. `sem_init` with `pshared = 1` stores
/// `private = 128` (`FUTEX_PRIVATE_FLAG`, which glibc XORs into the futex operation: set
/// here means "shared"); with `pshared = 0` it stores 0.
#[cfg(all(target_env = "gnu", target_pointer_width = "64"))]
mod glibc {
    /// Offset of the `private` word.
    pub(super) const PRIVATE_OFFSET: usize = 8;
    /// `private` of a process-shared semaphore.
    pub(super) const PSHARED_PRIVATE: i32 = 128;
    /// `SEM_VALUE_MAX`.
    pub(super) const VALUE_MAX: u64 = i32::MAX as u64;
}

#[cfg(target_env = "gnu")]
mod ffi {
    unsafe extern "C" {
        /// `sem_timedwait` against a chosen clock (glibc 2.30+; not yet bound
        /// by the libc crate).
        pub(super) fn sem_clockwait(
            sem: *mut libc::sem_t,
            clock: libc::clockid_t,
            abstime: *const libc::timespec,
        ) -> libc::c_int;
    }
}

/// A view of a process-shared `sem_t` at a fixed address in (shared) memory.
///
/// It does not own the memory and never destroys the semaphore: other
/// processes may still be using it when this value is dropped.
#[derive(Debug)]
pub(crate) struct Semaphore {
    ptr: *mut libc::sem_t,
}

// SAFETY: `Semaphore` is a pointer to a process-shared `sem_t`; all sem_*
// functions are thread-safe, and the constructors' contracts keep the memory
// mapped for the lifetime of the value, whichever thread uses it.
unsafe impl Send for Semaphore {}
// SAFETY: as for `Send`; every method takes `&self` and only calls the
// thread-safe sem_* functions on the pointer.
unsafe impl Sync for Semaphore {}

fn is_errno(e: &io::Error, errno: i32) -> bool {
    e.raw_os_error() == Some(errno)
}

fn timespec_from_ns(ns: u64) -> libc::timespec {
    // SAFETY: `timespec` is plain old data for which all zeroes is valid; this
    // also zeroes any padding fields some targets have.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // u64::MAX / 1e9 fits in a 64-bit time_t; saturate on 32-bit ones.
    ts.tv_sec = libc::time_t::try_from(ns / 1_000_000_000).unwrap_or(libc::time_t::MAX);
    ts.tv_nsec = (ns % 1_000_000_000) as _;
    ts
}

impl Semaphore {
    /// Initialises a process-shared semaphore with count `value` at `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr` must be valid for reads and writes of [`SEM_BYTES`] bytes,
    /// aligned to [`SEM_ALIGN`], and stay mapped for the lifetime of the
    /// returned value. No one else may use or initialise the semaphore at
    /// `ptr` until this returns (re-initialising a semaphore others wait on is
    /// undefined behaviour).
    ///
    /// # Errors
    ///
    /// `EINVAL` if `value` exceeds `SEM_VALUE_MAX`.
    pub(crate) unsafe fn init(ptr: *mut u8, value: u32) -> io::Result<Semaphore> {
        debug_assert_eq!(ptr as usize % SEM_ALIGN, 0, "misaligned sem_t");
        let sem = ptr.cast::<libc::sem_t>();
        // SAFETY: the caller guarantees `ptr` is valid, aligned and large
        // enough for a sem_t, and not used by anyone else during init.
        syscall!(sem_init(sem, 1, value))?;
        Ok(Semaphore { ptr: sem })
    }

    /// Creates a view of a semaphore that [`init`](Self::init) has initialised,
    /// possibly in another process.
    ///
    /// # Safety
    ///
    /// `ptr` must point at a `sem_t` initialised by `init` (with `pshared`, as
    /// `init` does), aligned to [`SEM_ALIGN`], and stay mapped for the lifetime
    /// of the returned value.
    pub(crate) unsafe fn from_ptr(ptr: *mut u8) -> Semaphore {
        debug_assert_eq!(ptr as usize % SEM_ALIGN, 0, "misaligned sem_t");
        Semaphore { ptr: ptr.cast() }
    }

    /// Whether the semaphore's words are what `sem_init(pshared = 1)` and the `sem_*`
    /// functions leave there: on 64-bit glibc, `private` is 128 and the value is at most
    /// `SEM_VALUE_MAX` (the waiter count and the padding may hold anything: glibc only adds to
    /// and subtracts from the former, and never reads the latter). On other C libraries the
    /// layout is not checked and this is always true.
    pub(crate) fn looks_valid(&self) -> bool {
        #[cfg(all(target_env = "gnu", target_pointer_width = "64"))]
        {
            // SAFETY: the constructors guarantee `ptr` is valid for SEM_BYTES bytes and
            // 8-aligned for as long as `self` lives; the u64 at offset 0 and the i32 at
            // offset 8 are read atomically (glibc itself uses atomics of those widths on
            // them), and atomics are valid for any bit pattern.
            let (data, private) = unsafe {
                let base = self.ptr.cast::<u8>();
                (
                    (*base.cast::<AtomicU64>()).load(Ordering::Relaxed),
                    (*base.add(glibc::PRIVATE_OFFSET).cast::<AtomicI32>()).load(Ordering::Relaxed),
                )
            };
            private == glibc::PSHARED_PRIVATE && data & 0xFFFF_FFFF <= glibc::VALUE_MAX
        }
        #[cfg(not(all(target_env = "gnu", target_pointer_width = "64")))]
        {
            true
        }
    }

    fn check(&self) -> io::Result<()> {
        if self.looks_valid() {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(libc::EINVAL))
        }
    }

    /// Re-initialises the semaphore at `ptr` (count 0) if its words are not those of a valid
    /// process-shared semaphore ([`Semaphore::looks_valid`]); returns whether it did.
    ///
    /// # Safety
    ///
    /// As for [`Semaphore::from_ptr`]; in addition the caller must be the only process that
    /// waits on this semaphore (a peer's own semaphore, which only that peer sleeps on).
    /// Others may post to it meanwhile: the worst outcome is a lost wake-up, which the ring
    /// protocol tolerates (waits always have a deadline).
    pub(crate) unsafe fn repair(ptr: *mut u8) -> io::Result<bool> {
        // SAFETY: forwarded from the caller.
        let sem = unsafe { Semaphore::from_ptr(ptr) };
        if sem.looks_valid() {
            return Ok(false);
        }
        // SAFETY: valid, aligned and mapped (caller); nobody waits on it but the caller.
        unsafe { Semaphore::init(ptr, 0) }?;
        Ok(true)
    }

    /// Increments the count, waking one waiter.
    ///
    /// A count already at `SEM_VALUE_MAX` (`EOVERFLOW`) is not an error: a
    /// wake-up is pending anyway.
    ///
    /// # Errors
    ///
    /// Any other `sem_post` error (`EINVAL`: not a valid semaphore, also when
    /// [`Semaphore::looks_valid`] fails and the C library is not called).
    pub(crate) fn post(&self) -> io::Result<()> {
        self.check()?;
        // SAFETY: the constructors guarantee `ptr` is an initialised, mapped sem_t.
        match syscall!(sem_post(self.ptr)) {
            Err(e) if !is_errno(&e, libc::EOVERFLOW) => Err(e),
            _ => Ok(()),
        }
    }

    /// Decrements the count if it is positive, without blocking.
    /// Returns whether it did.
    ///
    /// # Errors
    ///
    /// Any `sem_trywait` error other than `EAGAIN` (count was 0); `EINVAL` without calling
    /// the C library when [`Semaphore::looks_valid`] fails.
    pub(crate) fn try_wait(&self) -> io::Result<bool> {
        self.check()?;
        loop {
            // SAFETY: the constructors guarantee `ptr` is an initialised, mapped sem_t.
            match syscall!(sem_trywait(self.ptr)) {
                Ok(_) => return Ok(true),
                Err(e) if is_errno(&e, libc::EAGAIN) => return Ok(false),
                Err(e) if is_errno(&e, libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits until the count is positive and decrements it, or until the
    /// `CLOCK_MONOTONIC` deadline `deadline_ns` (as from
    /// [`sys::monotonic_ns`]) has passed.
    ///
    /// Returns `Ok(true)` if the count was decremented and `Ok(false)` if the
    /// deadline passed first. A deadline in the past still takes a count that
    /// is already positive. Signals (`EINTR`) are retried.
    ///
    /// # Errors
    ///
    /// Any other wait error (`EINVAL`: not a valid semaphore, also when
    /// [`Semaphore::looks_valid`] fails and the C library is not called).
    pub(crate) fn wait_until(&self, deadline_ns: u64) -> io::Result<bool> {
        self.check()?;
        #[cfg(target_env = "gnu")]
        {
            self.wait_until_clockwait(deadline_ns)
        }
        #[cfg(not(target_env = "gnu"))]
        {
            self.wait_until_timedwait(deadline_ns)
        }
    }

    #[cfg(target_env = "gnu")]
    fn wait_until_clockwait(&self, deadline_ns: u64) -> io::Result<bool> {
        let abstime = timespec_from_ns(deadline_ns);
        loop {
            // SAFETY: the constructors guarantee `ptr` is an initialised,
            // mapped sem_t; `abstime` is a valid timespec for the whole call.
            match syscall!(ffi::sem_clockwait(
                self.ptr,
                libc::CLOCK_MONOTONIC,
                &abstime
            )) {
                Ok(_) => return Ok(true),
                Err(e) if is_errno(&e, libc::ETIMEDOUT) => return Ok(false),
                Err(e) if is_errno(&e, libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Portable fallback: `sem_timedwait` takes a `CLOCK_REALTIME` deadline,
    /// so convert the remaining monotonic time and re-check the monotonic
    /// deadline after each timeout (the real-time clock may have jumped).
    #[cfg_attr(all(target_env = "gnu", not(test)), allow(dead_code))]
    fn wait_until_timedwait(&self, deadline_ns: u64) -> io::Result<bool> {
        loop {
            let now = sys::monotonic_ns();
            if now >= deadline_ns {
                return self.try_wait();
            }
            // Wait at most one second at a time so that a backwards jump of
            // the real-time clock delays us by at most that long (plus the jump
            // within the slice).
            let remaining = (deadline_ns - now).min(1_000_000_000);
            let abstime = timespec_from_ns(sys::realtime_ns().saturating_add(remaining));
            // SAFETY: the constructors guarantee `ptr` is an initialised,
            // mapped sem_t; `abstime` is a valid timespec for the whole call.
            match syscall!(sem_timedwait(self.ptr, &abstime)) {
                Ok(_) => return Ok(true),
                Err(e) if is_errno(&e, libc::ETIMEDOUT) || is_errno(&e, libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Returns the current count (glibc reports 0, never a negative value,
    /// while there are waiters).
    ///
    /// # Errors
    ///
    /// Any `sem_getvalue` error (`EINVAL`: not a valid semaphore).
    #[allow(dead_code)]
    pub(crate) fn value(&self) -> io::Result<i32> {
        let mut value: libc::c_int = 0;
        // SAFETY: the constructors guarantee `ptr` is an initialised, mapped
        // sem_t; `value` is a valid out pointer.
        syscall!(sem_getvalue(self.ptr, &mut value))?;
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An anonymous `MAP_SHARED` mapping: unlike `memmap2::MmapMut::map_anon`
    /// (which is `MAP_PRIVATE`), it stays shared with forked children.
    struct SharedAnon {
        ptr: *mut u8,
        len: usize,
    }

    impl SharedAnon {
        fn new(len: usize) -> SharedAnon {
            // SAFETY: a fresh anonymous mapping with a null hint touches no
            // existing memory.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(ptr, libc::MAP_FAILED, "{}", io::Error::last_os_error());
            SharedAnon {
                ptr: ptr.cast(),
                len,
            }
        }
    }

    impl Drop for SharedAnon {
        fn drop(&mut self) {
            // SAFETY: `ptr`/`len` describe a mapping this value created; the
            // semaphores viewing it are dropped first (declared later). An
            // error is ignored: Drop must not panic.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
    }

    fn fork_child(child: impl FnOnce() -> i32) -> libc::pid_t {
        // SAFETY: the child only runs `child`, which must stick to
        // async-signal-safe calls, then `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed: {}", io::Error::last_os_error());
        if pid == 0 {
            let code = child();
            // SAFETY: `_exit` is async-signal-safe and never returns.
            unsafe { libc::_exit(code) };
        }
        pid
    }

    fn wait_child_ok(pid: libc::pid_t) {
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is a valid out pointer.
        let res = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(res, pid, "{}", io::Error::last_os_error());
        assert!(libc::WIFEXITED(status), "child status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 0);
    }

    #[test]
    fn post_and_try_wait() {
        let mem = SharedAnon::new(4096);
        // SAFETY: fresh, page-aligned, private to this test.
        let sem = unsafe { Semaphore::init(mem.ptr, 0) }.unwrap();
        assert!(!sem.try_wait().unwrap());
        sem.post().unwrap();
        sem.post().unwrap();
        assert_eq!(sem.value().unwrap(), 2);
        // SAFETY: initialised above, `mem` outlives `view`.
        let view = unsafe { Semaphore::from_ptr(mem.ptr) };
        assert!(view.try_wait().unwrap());
        assert!(
            sem.wait_until(0).unwrap(),
            "past deadline still takes a count"
        );
        assert!(!sem.try_wait().unwrap());
        assert_eq!(sem.value().unwrap(), 0);
    }

    #[test]
    fn post_from_forked_child_wakes_parent() {
        let mem = SharedAnon::new(4096);
        // SAFETY: fresh, page-aligned, private to this test.
        let sem = unsafe { Semaphore::init(mem.ptr, 0) }.unwrap();
        let pid = fork_child(|| {
            // sem_post is async-signal-safe.
            match sem.post() {
                Ok(()) => 0,
                Err(_) => 1,
            }
        });
        let deadline = sys::monotonic_ns() + 5_000_000_000;
        assert!(sem.wait_until(deadline).unwrap());
        wait_child_ok(pid);
    }

    #[test]
    fn parent_blocked_before_child_posts() {
        let mem = SharedAnon::new(4096);
        // SAFETY: fresh, page-aligned, private to this test.
        let sem = unsafe { Semaphore::init(mem.ptr, 0) }.unwrap();
        let pid = fork_child(|| {
            let delay = libc::timespec {
                tv_sec: 0,
                tv_nsec: 50_000_000,
            };
            // SAFETY: nanosleep is async-signal-safe; `delay` is valid.
            unsafe { libc::nanosleep(&delay, std::ptr::null_mut()) };
            match sem.post() {
                Ok(()) => 0,
                Err(_) => 1,
            }
        });
        let start = sys::monotonic_ns();
        assert!(sem.wait_until(start + 5_000_000_000).unwrap());
        assert!(sys::monotonic_ns() - start < 5_000_000_000);
        wait_child_ok(pid);
    }

    fn check_timeout(wait: impl Fn(&Semaphore, u64) -> io::Result<bool>) {
        let mem = SharedAnon::new(4096);
        // SAFETY: fresh, page-aligned, private to this test.
        let sem = unsafe { Semaphore::init(mem.ptr, 0) }.unwrap();
        let start = sys::monotonic_ns();
        assert!(!wait(&sem, start + 50_000_000).unwrap());
        let elapsed = sys::monotonic_ns() - start;
        assert!(elapsed >= 50_000_000, "returned after {elapsed} ns");
        assert!(elapsed < 5_000_000_000, "returned after {elapsed} ns");
        sem.post().unwrap();
        assert!(wait(&sem, sys::monotonic_ns() + 50_000_000).unwrap());
    }

    #[test]
    fn wait_until_times_out() {
        check_timeout(Semaphore::wait_until);
    }

    #[test]
    fn timedwait_fallback_times_out() {
        check_timeout(Semaphore::wait_until_timedwait);
    }

    #[test]
    fn timedwait_fallback_across_threads() {
        let mem = SharedAnon::new(4096);
        // SAFETY: fresh, page-aligned, private to this test.
        let sem = unsafe { Semaphore::init(mem.ptr, 0) }.unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(20));
                sem.post().unwrap();
            });
            let deadline = sys::monotonic_ns() + 5_000_000_000;
            assert!(sem.wait_until_timedwait(deadline).unwrap());
        });
    }

    /// Writes `data` and `private` over the semaphore's words, as a hostile or buggy process
    /// could.
    fn scribble(mem: &SharedAnon, data: u64, private: i32) {
        // SAFETY: `mem` is a live mapping of at least 16 bytes, page-aligned; only atomics of
        // the fields' widths are used on it.
        unsafe {
            (*mem.ptr.cast::<AtomicU64>()).store(data, Ordering::Relaxed);
            (*mem.ptr.add(8).cast::<AtomicI32>()).store(private, Ordering::Relaxed);
        }
    }

    #[test]
    fn sem_init_makes_what_looks_valid_expects() {
        let mem = SharedAnon::new(4096);
        // SAFETY: fresh, page-aligned, private to this test.
        let sem = unsafe { Semaphore::init(mem.ptr, 3) }.unwrap();
        assert!(sem.looks_valid());
        #[cfg(all(target_env = "gnu", target_pointer_width = "64"))]
        {
            // SAFETY: as in `scribble`.
            let private = unsafe { (*mem.ptr.add(8).cast::<AtomicI32>()).load(Ordering::Relaxed) };
            assert_eq!(
                private, 128,
                "glibc stores FUTEX_PRIVATE_FLAG for pshared = 1"
            );
        }
    }

    /// Regression (hostile segments): garbage in the `private` word made glibc's `sem_post`
    /// abort the process or block in a futex wait without timeout; a huge count made the
    /// waiter's drain loop spin for billions of iterations. Such a semaphore is refused
    /// without calling the C library, and `repair` makes it usable again.
    #[cfg(all(target_env = "gnu", target_pointer_width = "64"))]
    #[test]
    fn corrupted_semaphores_are_refused_before_glibc_sees_them() {
        let mem = SharedAnon::new(4096);
        // SAFETY: fresh, page-aligned, private to this test.
        let sem = unsafe { Semaphore::init(mem.ptr, 0) }.unwrap();
        for (data, private) in [
            (1 << 32, 0x7eadbeef),        // a waiter and a garbage `private`
            (0xFFFF_FFFF_FFFF_FFFF, 128), // count above SEM_VALUE_MAX
            (0, 0),                       // process-private: would never wake another process
            (5, -1),
        ] {
            scribble(&mem, data, private);
            assert!(!sem.looks_valid(), "{data:#x} / {private}");
            for r in [
                sem.post(),
                sem.try_wait().map(|_| ()),
                sem.wait_until(0).map(|_| ()),
            ] {
                assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EINVAL));
            }
            // SAFETY: `mem` is mapped and aligned; only this test uses the semaphore.
            assert!(unsafe { Semaphore::repair(mem.ptr) }.unwrap());
            assert!(sem.looks_valid());
            sem.post().unwrap();
            assert!(sem.try_wait().unwrap());
            // SAFETY: as above.
            let repaired = unsafe { Semaphore::repair(mem.ptr) }.unwrap();
            assert!(!repaired, "valid: left alone");
        }
        // Waiter count and padding are not checked: glibc tolerates any value there.
        scribble(&mem, 0x1234_0000_0002, 128);
        assert!(sem.looks_valid());
        assert!(sem.try_wait().unwrap());
    }

    #[test]
    fn init_rejects_too_large_value() {
        let mem = SharedAnon::new(4096);
        // SAFETY: fresh, page-aligned, private to this test.
        let err = unsafe { Semaphore::init(mem.ptr, u32::MAX) }.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }
}

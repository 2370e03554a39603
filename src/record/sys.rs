//! Operating-system primitives for the allocation path: memory straight from
//! the kernel, a futex lock, clocks and thread facts.
//!
//! Must never: allocate through the global allocator, panic, or block on
//! I/O. Everything here is a system call or an atomic.

use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};

#[cfg(not(target_os = "linux"))]
compile_error!(
    "the leakprof recorder supports Linux only (it uses mmap, futex, /proc and dl_iterate_phdr)"
);

/// Maps `bytes` of zeroed, private, anonymous memory. Pages cost nothing
/// until touched (`MAP_NORESERVE`), so tables may reserve generously.
/// Returns null on failure.
pub(crate) fn map(bytes: usize) -> *mut u8 {
    map_with(bytes, 0)
}

/// As [`map`], with every page made present now, in one system call: for
/// memory about to be written all over (a table being rehashed), which
/// would otherwise take a page fault per page.
pub(crate) fn map_populated(bytes: usize) -> *mut u8 {
    map_with(bytes, libc::MAP_POPULATE)
}

fn map_with(bytes: usize, flags: libc::c_int) -> *mut u8 {
    if bytes == 0 {
        return null_mut();
    }
    // SAFETY: an anonymous private mapping with no fixed address cannot alias
    // any existing object; failure is reported as MAP_FAILED, handled below.
    let p = unsafe {
        libc::mmap(
            null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        null_mut()
    } else {
        p.cast()
    }
}

/// The mapping `slot` points to, or a fresh zeroed one of `bytes` (a
/// valid `T` when all zero) published there: the first of racing threads
/// wins, the others unmap theirs. Null if the kernel refuses memory.
#[cold]
#[inline(never)]
pub(crate) fn map_once<T>(slot: &AtomicPtr<T>, bytes: usize) -> *mut T {
    let p = slot.load(Ordering::Acquire);
    if !p.is_null() {
        return p;
    }
    let fresh = map(bytes).cast::<T>();
    if fresh.is_null() {
        return fresh;
    }
    match slot.compare_exchange(null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => fresh,
        Err(winner) => {
            // SAFETY: `fresh` came from `map` with these bytes and was never
            // published.
            unsafe { unmap(fresh.cast(), bytes) };
            winner
        }
    }
}

/// Returns memory obtained from [`map`].
///
/// # Safety
/// `p` and `bytes` must be exactly a region returned by `map`, and nothing
/// may use it afterwards.
pub(crate) unsafe fn unmap(p: *mut u8, bytes: usize) {
    if !p.is_null() && bytes != 0 {
        // SAFETY: the caller guarantees the region came from `map`.
        unsafe { libc::munmap(p.cast(), bytes) };
    }
}

/// Monotonic clock in nanoseconds (vDSO, no system call on Linux).
pub(crate) fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Wall clock, ms since the Unix epoch.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Kernel thread id of the calling thread.
pub(crate) fn gettid() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// Highest address of the calling thread's stack, or 0 if unknown.
/// May allocate (glibc reads /proc/self/maps for the main thread): call it
/// only with the re-entrancy guard set.
pub(crate) fn current_stack_end() -> usize {
    // SAFETY: pthread_attr_t is plain data initialised by
    // pthread_getattr_np; we destroy it on every path after success.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return 0;
        }
        let mut addr: *mut libc::c_void = null_mut();
        let mut size: libc::size_t = 0;
        let ok = libc::pthread_attr_getstack(&attr, &mut addr, &mut size) == 0;
        libc::pthread_attr_destroy(&mut attr);
        if ok {
            addr as usize + size
        } else {
            0
        }
    }
}

/// This process's `/proc/self/statm`, kept open: `pid << 32 | (fd + 1)`,
/// 0 before the first reading. A descriptor opened there describes the
/// process that opened it, so a forked child (another pid) opens its own;
/// the inherited one stays open (close-on-exec), since another thread may
/// be reading it and closing it could hand its number to another file.
static STATM: AtomicU64 = AtomicU64::new(0);

/// The descriptor of this process's `/proc/self/statm`, opened on first
/// use in each process; None if it cannot be opened.
fn statm_fd() -> Option<libc::c_int> {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u64;
    let cached = STATM.load(Ordering::Acquire);
    if cached != 0 && cached >> 32 == pid {
        return Some((cached as u32 - 1) as libc::c_int);
    }
    // SAFETY: the path is NUL-terminated.
    let fd = unsafe {
        libc::open(
            c"/proc/self/statm".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    let mine = pid << 32 | (fd as u64 + 1);
    match STATM.compare_exchange(cached, mine, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => Some(fd),
        Err(now) => {
            // Another thread stored one first: ours was never shared.
            // SAFETY: `fd` is ours, opened above.
            unsafe { libc::close(fd) };
            (now >> 32 == pid).then_some((now as u32 - 1) as libc::c_int)
        }
    }
}

/// Resident set size of this process in bytes, read from /proc/self/statm
/// into a stack buffer (no allocation), through a descriptor kept open
/// (one `pread`: each collection of Python's collector takes a timeline
/// point, and opening the file each time made that about twice as dear).
pub(crate) fn rss_bytes() -> u64 {
    let Some(fd) = statm_fd() else {
        return 0;
    };
    let mut buf = [0u8; 128];
    // SAFETY: `buf` is a valid writable buffer of the length passed; `fd`
    // stays open for the process's life.
    let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n <= 0 {
        return 0;
    }
    // Fields: size resident shared text lib data dt (pages).
    let text = &buf[..n as usize];
    let mut fields = text.split(|&b| b == b' ');
    let _size = fields.next();
    let resident = fields.next().map(parse_u64).unwrap_or(0);
    resident * page_size()
}

/// Reads `len` bytes of this process's memory at `addr` into `out` with
/// `process_vm_readv`, which fails instead of faulting on memory that is
/// not mapped. Reads page by page; returns the bytes read before the
/// first page that could not be read.
pub(crate) fn read_own_memory(addr: usize, out: *mut u8, len: usize) -> usize {
    let page = 4096;
    let mut done = 0;
    while done < len {
        let n = (page - (addr + done) % page).min(len - done);
        let local = libc::iovec {
            // SAFETY (of the pointer arithmetic): done < len, inside `out`.
            iov_base: out.wrapping_add(done).cast(),
            iov_len: n,
        };
        let remote = libc::iovec {
            iov_base: (addr + done) as *mut libc::c_void,
            iov_len: n,
        };
        // SAFETY: `local` lies inside the caller's `out` buffer of `len`
        // bytes; the remote range is only read by the kernel, which checks
        // it and fails with EFAULT instead of faulting.
        let got = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
        if got <= 0 {
            break;
        }
        done += got as usize;
    }
    done
}

/// Appends the whole file at `path` to `out` with raw system calls (no
/// `malloc`: for the stopped world). Stops at the first error.
pub(crate) fn read_file_into(path: &std::ffi::CStr, out: &mut super::mmapvec::MmapVec<u8>) {
    // SAFETY: a NUL-terminated path; the descriptor is closed below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return;
    }
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        if !buf[..n as usize].iter().all(|&b| out.push(b)) {
            break;
        }
    }
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
}

fn parse_u64(digits: &[u8]) -> u64 {
    digits
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0u64, |acc, &b| {
            acc.wrapping_mul(10).wrapping_add((b - b'0') as u64)
        })
}

pub(crate) fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// A mutual-exclusion lock on a futex: one CAS to take it and one plain
/// store to release it, so an uncontended lock/unlock pair costs a single
/// atomic read-modify-write. Waiters spin briefly, then sleep on the futex
/// (which matters when a heap-graph scan holds every shard for a while).
/// Because release is a plain store, a wake-up can be missed in a narrow
/// race; sleepers therefore also wake on a 1 ms timeout and retry.
///
/// It never allocates, so it may be held across allocator calls. It is not
/// re-entrant: a thread must never take a lock it holds.
pub(crate) struct RawLock {
    /// 0 unlocked, 1 locked.
    state: AtomicU32,
    /// Threads sleeping (or about to) on `state`.
    waiters: AtomicU32,
}

impl RawLock {
    pub(crate) const fn new() -> RawLock {
        RawLock {
            state: AtomicU32::new(0),
            waiters: AtomicU32::new(0),
        }
    }

    #[inline]
    pub(crate) fn lock(&self) {
        if self
            .state
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            self.lock_contended();
        }
    }

    #[inline]
    pub(crate) fn try_lock(&self) -> bool {
        self.state
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    #[cold]
    fn lock_contended(&self) {
        // Short spin first: critical sections on the allocation path are a
        // few dozen nanoseconds.
        for _ in 0..100 {
            std::hint::spin_loop();
            if self.state.load(Ordering::Relaxed) == 0 && self.try_lock() {
                return;
            }
        }
        loop {
            self.waiters.fetch_add(1, Ordering::SeqCst);
            if self.try_lock() {
                self.waiters.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            futex_wait(&self.state, 1, 1_000_000);
            self.waiters.fetch_sub(1, Ordering::Relaxed);
            if self.try_lock() {
                return;
            }
        }
    }

    #[inline]
    pub(crate) fn unlock(&self) {
        self.state.store(0, Ordering::Release);
        if self.waiters.load(Ordering::Relaxed) != 0 {
            futex_wake(&self.state, 1);
        }
    }

    /// Resets the lock in a forked child, where the thread that held it
    /// no longer exists.
    ///
    /// # Safety
    /// Only in the child after `fork`, with no other thread running.
    pub(crate) unsafe fn force_unlock(&self) {
        self.state.store(0, Ordering::Release);
        self.waiters.store(0, Ordering::Relaxed);
    }
}

/// Sleeps while `*word == expected`, at most `timeout_ns`. Spurious,
/// interrupted and timed-out wake-ups are the caller's loop's to handle.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout_ns: u64) {
    let timeout = libc::timespec {
        tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: the futex word is a valid aligned u32 for the duration of the
    // call, and the timeout a valid timespec.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            &timeout as *const libc::timespec,
        );
    }
}

/// Wakes up to `n` threads sleeping on `word`.
pub(crate) fn futex_wake(word: &AtomicU32, n: i32) {
    // SAFETY: as above; waking with no waiters is harmless.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            n,
        );
    }
}

/// A value behind a [`RawLock`]: for recorder state that must survive
/// `fork` (the child resets the lock) and that allocator code may touch.
pub(crate) struct LockCell<T> {
    lock: RawLock,
    value: UnsafeCell<T>,
}

// SAFETY: access to `value` is serialised by `lock`.
unsafe impl<T: Send> Sync for LockCell<T> {}

impl<T> LockCell<T> {
    pub(crate) const fn new(value: T) -> LockCell<T> {
        LockCell {
            lock: RawLock::new(),
            value: UnsafeCell::new(value),
        }
    }

    pub(crate) fn lock(&self) -> LockCellGuard<'_, T> {
        self.lock.lock();
        LockCellGuard { cell: self }
    }

    pub(crate) fn raw(&self) -> &RawLock {
        &self.lock
    }
}

pub(crate) struct LockCellGuard<'a, T> {
    cell: &'a LockCell<T>,
}

impl<T> Deref for LockCellGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard proves the lock is held.
        unsafe { &*self.cell.value.get() }
    }
}

impl<T> DerefMut for LockCellGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard proves the lock is held, exclusively.
        unsafe { &mut *self.cell.value.get() }
    }
}

impl<T> Drop for LockCellGuard<'_, T> {
    fn drop(&mut self) {
        self.cell.lock.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Touches `bytes` of fresh memory and returns it (mapped outside any
    /// allocator, so a forked child may do it).
    fn touch(bytes: usize) -> *mut u8 {
        let p = map(bytes);
        assert!(!p.is_null());
        // SAFETY: `p` is a fresh mapping of `bytes` bytes.
        unsafe { std::ptr::write_bytes(p, 1, bytes) };
        p
    }

    /// Forks; the child runs `f` and leaves with `_exit(f())`; returns the
    /// child's exit code (or -1 if it did not exit).
    fn in_child(f: impl FnOnce() -> i32) -> i32 {
        // SAFETY: the child only maps, writes and reads its own memory
        // with system calls (and forks), then leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = f();
            // SAFETY: ends the forked child without running the parent's
            // exit handlers.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            -1
        }
    }

    /// Whether this process's RSS, as `rss_bytes` reads it, grows by
    /// about what it touches.
    fn sees_own_growth() -> bool {
        const GROWTH: usize = 64 << 20;
        let start = rss_bytes();
        let p = touch(GROWTH);
        let grew = start > 0 && rss_bytes() >= start + GROWTH as u64 / 2;
        // SAFETY: `p` came from `map` with this size.
        unsafe { unmap(p, GROWTH) };
        grew
    }

    #[test]
    fn rss_follows_this_process_and_a_forked_child_reads_its_own() {
        // In a child of the test process, which has no other threads to
        // free memory meanwhile (run beside other tests, the parent's
        // figure moved with theirs): it opens its descriptor and sees
        // itself grow; its own child inherits that descriptor, which
        // describes the parent (that does not grow), and must read itself.
        let code = in_child(|| {
            if !sees_own_growth() {
                return 1;
            }
            match in_child(|| if sees_own_growth() { 0 } else { 1 }) {
                0 => 0,
                _ => 2,
            }
        });
        assert_eq!(
            code, 0,
            "1: a process does not see its own growth; 2: a forked child reads another's RSS"
        );
    }
}

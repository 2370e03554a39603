//! Test-only delay points (cargo feature `race-points`): places in the
//! stop-the-world handshake, in `realloc` and in the stack table where a
//! test can hold one thread exactly where a race window opens, do the
//! racing thing on another thread, and let it go.
//!
//! Without the feature, [`hit`] is an empty inline function and nothing
//! else exists. With it, an unarmed point costs one relaxed load. A point
//! is one-shot: [`arm`] lets the next thread that reaches it (optionally
//! only a given kernel thread id) stop there; [`wait_arrival`] returns once
//! it has; [`release`] lets it go. Holding and waking use futexes and
//! atomics only, so points may sit in a signal handler and on the
//! allocation path (never allocates, never panics).

/// Where a thread can be held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum RacePoint {
    /// In the stop-signal handler, after it read the phase word and before
    /// it claims a stop slot.
    HandlerBeforeClaim = 0,
    /// In the stop-signal handler, after it claimed a slot and before it
    /// stamps the slot ready.
    HandlerBeforeStamp = 1,
    /// In the stop phase, after a round of signals was acknowledged and
    /// before the thread list is read again.
    StopBeforeRelist = 2,
    /// In the stop-signal handler of a thread inside the inner allocator,
    /// after it left word that it will stop later.
    HandlerDeferred = 6,
    /// In `realloc`, after the old block moved from the live table into the
    /// thread's in-flight record, before the inner allocator runs.
    ReallocDetached = 3,
    /// In `realloc`, marked as inside the inner allocator (where a stop
    /// must be deferred), just before the inner `realloc` call.
    ReallocInner = 4,
    /// In `realloc`, after the inner allocator returned the new block and
    /// before it enters the live table.
    ReallocMoved = 5,
    /// In the stack table, after a thread was granted a place in the open
    /// level and before it claims a slot there.
    InternReserved = 7,
    /// In the stack table, when a thread refused a place (the level just
    /// filled) is about to wait for the level's granted places to settle.
    InternSealWait = 8,
}

#[cfg(feature = "race-points")]
pub use armed::{arm, disarm, release, wait_arrival};

/// Holds the calling thread here if a test armed `point` for it.
#[cfg(not(feature = "race-points"))]
#[inline(always)]
pub(crate) fn hit(_point: RacePoint) {}

#[cfg(feature = "race-points")]
pub(crate) use armed::hit;

#[cfg(feature = "race-points")]
mod armed {
    use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
    use std::time::{Duration, Instant};

    use super::RacePoint;

    const POINTS: usize = 9;
    const IDLE: u32 = 0;
    const ARMED: u32 = 1;
    const HELD: u32 = 2;

    struct Point {
        /// IDLE, ARMED (the next matching thread stops), HELD (one did).
        state: AtomicU32,
        /// Only this kernel thread id stops (0: any thread).
        tid: AtomicI32,
        /// Bumped by `release`; the held thread waits for a change.
        released: AtomicU32,
    }

    static POINT: [Point; POINTS] = [const {
        Point {
            state: AtomicU32::new(IDLE),
            tid: AtomicI32::new(0),
            released: AtomicU32::new(0),
        }
    }; POINTS];

    /// Lets the next thread that reaches `point` (only thread `tid`, if
    /// given) stop there until [`release`].
    pub fn arm(point: RacePoint, tid: Option<i32>) {
        let p = &POINT[point as usize];
        p.tid.store(tid.unwrap_or(0), Ordering::Relaxed);
        p.state.store(ARMED, Ordering::Release);
    }

    /// Disarms `point` if no thread has reached it yet.
    pub fn disarm(point: RacePoint) {
        let _ = POINT[point as usize].state.compare_exchange(
            ARMED,
            IDLE,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }

    /// Waits until a thread is held at `point`; false after `timeout`.
    pub fn wait_arrival(point: RacePoint, timeout: Duration) -> bool {
        let p = &POINT[point as usize];
        let deadline = Instant::now() + timeout;
        while p.state.load(Ordering::Acquire) != HELD {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        true
    }

    /// Lets the thread held at `point` go on (and disarms it).
    pub fn release(point: RacePoint) {
        let p = &POINT[point as usize];
        p.state.store(IDLE, Ordering::Release);
        p.released.fetch_add(1, Ordering::Release);
        crate::record::sys::futex_wake(&p.released, i32::MAX);
    }

    pub(crate) fn hit(point: RacePoint) {
        let p = &POINT[point as usize];
        if p.state.load(Ordering::Relaxed) != ARMED {
            return;
        }
        let want = p.tid.load(Ordering::Relaxed);
        // SAFETY: gettid has no preconditions.
        let me = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
        if want != 0 && want != me {
            return;
        }
        let generation = p.released.load(Ordering::Acquire);
        if p.state
            .compare_exchange(ARMED, HELD, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        // errno is preserved: this may run in a signal handler.
        // SAFETY: __errno_location returns this thread's errno slot.
        let errno = unsafe { *libc::__errno_location() };
        while p.released.load(Ordering::Acquire) == generation {
            crate::record::sys::futex_wait(&p.released, generation, 10_000_000);
        }
        // SAFETY: as above.
        unsafe { *libc::__errno_location() = errno };
    }
}

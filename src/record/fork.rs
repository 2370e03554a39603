//! Fork safety: the child of a recording process keeps recording.
//!
//! Before `fork`, the forking thread takes every recorder lock (the
//! `LockCell`s first, then every live-table shard:
//! the one lock order used everywhere), so no other thread is inside a
//! critical section when the address space is copied. The parent releases
//! them after `fork`; the child, where those other threads no longer exist,
//! resets them. Lock-free tables (stacks, tags, thread registry) need
//! nothing: a reader never waits unboundedly for a writer that may have
//! vanished.

use std::sync::Once;

use super::hooks::{LIVE, THREADS};
use super::threads::FlightPhase;
use super::{owner, scan, snapshot, symbols, timeline};

static INSTALL: Once = Once::new();

/// Registers the fork handlers once per process.
pub(crate) fn install() {
    INSTALL.call_once(|| {
        // SAFETY: the three handlers are `extern "C"` functions with no
        // arguments that stay valid for the life of the process.
        unsafe { libc::pthread_atfork(Some(prepare), Some(in_parent), Some(in_child)) };
    });
}

fn cell_locks() -> [&'static super::sys::RawLock; 7] {
    [
        scan::scanning_lock(),
        owner::registry_lock(),
        snapshot::session_lock(),
        timeline::timeline_lock(),
        timeline::sampler_lock(),
        symbols::cache_lock(),
        super::hooks::TAGS.index_lock(),
    ]
}

extern "C" fn prepare() {
    for lock in cell_locks() {
        lock.lock();
    }
    LIVE.lock_all();
}

extern "C" fn in_parent() {
    LIVE.unlock_all();
    for lock in cell_locks().iter().rev() {
        lock.unlock();
    }
}

extern "C" fn in_child() {
    // SAFETY: we are the only thread of the child process; the locks' former
    // holders (our own parent-side thread included) do not exist here, and
    // the data they guard was left consistent because `prepare` held them.
    unsafe {
        LIVE.force_unlock_all();
        for lock in cell_locks() {
            lock.force_unlock();
        }
    }
    timeline::forget_sampler_in_child();
    // Reallocs in flight on threads that do not exist here never finish.
    for ts in THREADS.each() {
        ts.flight.set_phase(FlightPhase::Idle);
    }
}

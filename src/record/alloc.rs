//! [`LeakAlloc`]: the global allocator wrapper users install.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::Ordering;

use super::hooks::{self, RECORDING, STATE, UNSEEN};

/// A global allocator that records every live allocation while a
/// [`Recorder`](super::Recorder) runs, and otherwise forwards to `A` at the
/// cost of one relaxed atomic load.
///
/// ```no_run
/// #[global_allocator]
/// static GLOBAL: leakprof::LeakAlloc = leakprof::LeakAlloc::system();
/// ```
pub struct LeakAlloc<A: GlobalAlloc = System> {
    inner: A,
}

impl LeakAlloc<System> {
    /// Wraps the system allocator.
    pub const fn system() -> LeakAlloc<System> {
        LeakAlloc { inner: System }
    }
}

impl<A: GlobalAlloc> LeakAlloc<A> {
    /// Wraps any global allocator (jemalloc, mimalloc, ...).
    pub const fn new(inner: A) -> LeakAlloc<A> {
        LeakAlloc { inner }
    }
}

// SAFETY: every method forwards to the inner allocator with the caller's
// arguments unchanged and returns its result unchanged; the recorder only
// observes addresses and sizes, and never touches the blocks' memory.
unsafe impl<A: GlobalAlloc> GlobalAlloc for LeakAlloc<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        let p = unsafe { self.inner.alloc(layout) };
        match STATE.load(Ordering::Relaxed) {
            RECORDING if !p.is_null() => {
                // SAFETY: the block is fresh and not handed out yet.
                unsafe { hooks::zero_fill(p, layout.size(), layout.size()) };
                if !hooks::skip_unsampled(layout.size()) {
                    hooks::on_alloc(p as usize, layout.size())
                }
            }
            UNSEEN => hooks::note_installed(),
            _ => {}
        }
        p
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        let p = unsafe { self.inner.alloc_zeroed(layout) };
        match STATE.load(Ordering::Relaxed) {
            RECORDING if !p.is_null() && !hooks::skip_unsampled(layout.size()) => {
                hooks::on_alloc(p as usize, layout.size())
            }
            UNSEEN => hooks::note_installed(),
            _ => {}
        }
        p
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // The block leaves the live table before the inner allocator may
        // hand its memory to anyone else.
        if STATE.load(Ordering::Relaxed) == RECORDING && hooks::may_be_recorded(ptr as usize) {
            hooks::on_free(ptr as usize);
        }
        // SAFETY: forwarded contract.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if STATE.load(Ordering::Relaxed) != RECORDING {
            // SAFETY: forwarded contract.
            return unsafe { self.inner.realloc(ptr, layout, new_size) };
        }
        realloc_recorded(&self.inner, ptr, layout, new_size)
    }
}

/// A realloc while recording: the old block leaves the table first (the
/// inner realloc may free it), then the result is recorded as a new
/// allocation from the caller's stack; if the inner realloc fails, the old
/// block is put back untouched.
#[inline(never)]
fn realloc_recorded<A: GlobalAlloc>(
    inner: &A,
    ptr: *mut u8,
    layout: Layout,
    new_size: usize,
) -> *mut u8 {
    let skip = hooks::LOCAL
        .try_with(|l| l.holds_locks.get())
        .unwrap_or(true);
    let old = if skip {
        None
    } else {
        hooks::detach(ptr as usize)
    };
    // SAFETY: the caller of GlobalAlloc::realloc guarantees ptr/layout/new_size
    // satisfy the inner allocator's contract; we pass them unchanged.
    let q = unsafe { inner.realloc(ptr, layout, new_size) };
    if q.is_null() {
        if let Some(b) = old {
            hooks::restore(b);
        }
        return q;
    }
    if new_size > layout.size() {
        // SAFETY: the grown tail is fresh memory not handed out yet.
        unsafe { hooks::zero_fill(q.add(layout.size()), new_size - layout.size(), new_size) };
    }
    if let Some(b) = old {
        let _ = hooks::LOCAL.try_with(|l| {
            let was = l.guard.replace(true);
            hooks::settle_free(l, &b);
            l.guard.set(was);
        });
    }
    hooks::on_alloc(q as usize, new_size);
    q
}

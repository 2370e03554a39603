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

/// A realloc while recording: see [`hooks::realloc`], which keeps the old
/// block visible (in this thread's in-flight record) until the new one is
/// in the live table.
#[inline(never)]
fn realloc_recorded<A: GlobalAlloc>(
    inner: &A,
    ptr: *mut u8,
    layout: Layout,
    new_size: usize,
) -> *mut u8 {
    hooks::realloc(ptr as usize, layout.size(), new_size, || {
        // SAFETY: the caller of GlobalAlloc::realloc guarantees
        // ptr/layout/new_size satisfy the inner allocator's contract; we pass
        // them unchanged.
        unsafe { inner.realloc(ptr, layout, new_size) }
    })
}

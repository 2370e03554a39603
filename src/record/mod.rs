//! The recorder (being built): a global allocator wrapper.

use std::alloc::{GlobalAlloc, Layout, System};

/// Recording global allocator (placeholder: forwards only).
pub struct LeakAlloc<A: GlobalAlloc = System> {
    inner: A,
}

impl LeakAlloc<System> {
    pub const fn system() -> Self {
        LeakAlloc { inner: System }
    }
}

// SAFETY: forwards every call unchanged to the inner allocator.
unsafe impl<A: GlobalAlloc> GlobalAlloc for LeakAlloc<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.inner.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.inner.dealloc(ptr, layout)
    }
}

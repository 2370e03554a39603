//! The three PyMem allocator domains, wrapped: each wrapper calls the
//! allocator it replaced and records the block at the outermost layer
//! only. pymalloc (the MEM and OBJ domains) hands requests over 512 bytes
//! to the RAW domain, which would otherwise count them twice: a
//! thread-local flag marks "inside a wrapper", and nested calls only
//! forward. The RAW domain runs without the GIL, so nothing here assumes
//! it; `errno` is saved around the recording and restored.

use std::cell::{Cell, UnsafeCell};
use std::ffi::c_void;

use super::capi::{Api, MemAllocator};
use super::layout;
use crate::record::hooks;

/// One domain: the allocator it had before ours.
struct Domain {
    inner: UnsafeCell<MemAllocator>,
}

// SAFETY: `inner` is written once, by `install` with the GIL held, before
// our wrapper is handed to Python (so before any wrapper reads it), and
// only read afterwards.
unsafe impl Sync for Domain {}

static DOMAINS: [Domain; 3] = [const {
    Domain {
        inner: UnsafeCell::new(MemAllocator::EMPTY),
    }
}; 3];

thread_local! {
    /// Set while this thread runs inside one of our wrappers.
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

/// Wraps the three domains' allocators. Called once, GIL held, early (the
/// RAW domain's pointer is swapped while other threads may read it, as
/// every allocator hook does: do it before the program starts threads).
pub(crate) fn install(api: &Api) {
    for (domain, slot) in layout::DOMAINS.iter().zip(&DOMAINS) {
        let mut ours = MemAllocator {
            ctx: slot as *const Domain as *mut c_void,
            malloc: Some(malloc),
            calloc: Some(calloc),
            realloc: Some(realloc),
            free: Some(free),
        };
        // SAFETY: GIL held; `slot.inner` is not read before our allocator
        // is set just below (see `Domain`'s Sync).
        unsafe {
            (api.get_allocator)(*domain, slot.inner.get());
            (api.set_allocator)(*domain, &mut ours);
        }
    }
}

/// The allocator a wrapper wraps.
///
/// # Safety
/// `ctx` is the context `install` gave Python: a `&'static Domain`.
#[inline(always)]
unsafe fn inner(ctx: *mut c_void) -> MemAllocator {
    // SAFETY: forwarded; `inner` is only read after `install` wrote it.
    unsafe { *(*(ctx as *const Domain)).inner.get() }
}

/// Held by the outermost wrapper on a thread; nested wrappers get none
/// and only forward.
struct Outermost;

impl Outermost {
    #[inline(always)]
    fn enter() -> Option<Outermost> {
        match INSIDE.try_with(|i| i.replace(true)) {
            Ok(false) => Some(Outermost),
            _ => None,
        }
    }
}

impl Drop for Outermost {
    #[inline(always)]
    fn drop(&mut self) {
        let _ = INSIDE.try_with(|i| i.set(false));
    }
}

#[inline(always)]
fn errno() -> i32 {
    // SAFETY: errno's location is valid for the calling thread.
    unsafe { *libc::__errno_location() }
}

#[inline(always)]
fn set_errno(e: i32) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = e };
}

/// The size a request of `size` bytes gets: CPython's allocators turn 0
/// into 1 (`_PyMem_RawMalloc`, pymalloc's fall-through), and the recorder's
/// accounting, written for Rust (which never allocates 0 bytes), tells an
/// allocation from a free by the sign of the size.
#[inline(always)]
fn block_size(size: usize) -> usize {
    size.max(1)
}

#[inline(always)]
fn record_alloc(p: *mut c_void, size: usize) {
    let size = block_size(size);
    if !p.is_null() && !hooks::skip_unsampled(size) {
        let e = errno();
        hooks::on_alloc(p as usize, size);
        set_errno(e);
    }
}

unsafe extern "C" fn malloc(ctx: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: Python calls us with the ctx `install` gave it.
    let inner = unsafe { inner(ctx) };
    let outer = hooks::recording().then(Outermost::enter).flatten();
    let Some(f) = inner.malloc else {
        return std::ptr::null_mut();
    };
    // SAFETY: Python's contract for the allocator we wrap, unchanged.
    let p = unsafe { f(inner.ctx, size) };
    if outer.is_some() {
        record_alloc(p, size);
    }
    p
}

unsafe extern "C" fn calloc(ctx: *mut c_void, n: usize, size: usize) -> *mut c_void {
    // SAFETY: as in `malloc`.
    let inner = unsafe { inner(ctx) };
    let outer = hooks::recording().then(Outermost::enter).flatten();
    let Some(f) = inner.calloc else {
        return std::ptr::null_mut();
    };
    // SAFETY: as in `malloc`.
    let p = unsafe { f(inner.ctx, n, size) };
    if outer.is_some() {
        record_alloc(p, n.saturating_mul(size));
    }
    p
}

unsafe extern "C" fn realloc(ctx: *mut c_void, ptr: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: as in `malloc`.
    let inner = unsafe { inner(ctx) };
    let Some(f) = inner.realloc else {
        return std::ptr::null_mut();
    };
    // SAFETY (both calls of `f`): as in `malloc`.
    let call = || unsafe { f(inner.ctx, ptr, size) };
    let Some(_outer) = hooks::recording().then(Outermost::enter).flatten() else {
        return call();
    };
    if ptr.is_null() {
        // realloc(NULL, n) is a malloc; the live table has no block 0.
        let p = call();
        record_alloc(p, size);
        return p;
    }
    // The caller sees the errno the inner allocator left, whatever the
    // recording does around it.
    let left = Cell::new(errno());
    // The old size is unknown here (the live table knows it); passing the
    // new one turns off zero-filling, which Python recordings do not use.
    let recorded = block_size(size);
    let q = hooks::realloc(ptr as usize, recorded, recorded, || {
        let q = call();
        left.set(errno());
        q.cast()
    });
    set_errno(left.get());
    q.cast()
}

unsafe extern "C" fn free(ctx: *mut c_void, ptr: *mut c_void) {
    // SAFETY: as in `malloc`.
    let inner = unsafe { inner(ctx) };
    let outer = hooks::recording().then(Outermost::enter).flatten();
    if outer.is_some() && !ptr.is_null() && hooks::may_be_recorded(ptr as usize) {
        let e = errno();
        hooks::on_free(ptr as usize);
        set_errno(e);
    }
    if let Some(f) = inner.free {
        // SAFETY: as in `malloc`; the block left the live table first.
        unsafe { f(inner.ctx, ptr) }
    }
}

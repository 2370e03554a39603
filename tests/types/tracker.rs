//! A tiny tracking allocator for the types test: the live blocks (address,
//! size, allocation stack, and the window they were made in), so a test can
//! ask "which block contains this address" and "what is still alive of
//! what I built" — what the recorder's live table gives the real scan.
//!
//! A spin lock guards a fixed open-addressing table in static memory; the
//! allocator never allocates. Tracking is off until a case turns it on, so
//! the type maps (tens of MiB of tables) are never in it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

const SLOTS: usize = 1 << 16;
const FRAMES: usize = 24;
/// A slot once used and freed (keeps probe chains intact).
const TOMB: usize = 1;

#[derive(Clone, Copy)]
pub struct Entry {
    pub addr: usize,
    pub size: usize,
    pub window: u32,
    pub frames: [usize; FRAMES],
}

const EMPTY: Entry = Entry {
    addr: 0,
    size: 0,
    window: 0,
    frames: [0; FRAMES],
};

struct Table(UnsafeCell<[Entry; SLOTS]>);
// SAFETY: every access holds LOCK.
unsafe impl Sync for Table {}

static TABLE: Table = Table(UnsafeCell::new([EMPTY; SLOTS]));
static LOCK: AtomicBool = AtomicBool::new(false);
static TRACKING: AtomicBool = AtomicBool::new(false);
static WINDOW: AtomicU32 = AtomicU32::new(0);

fn with_table<R>(f: impl FnOnce(&mut [Entry; SLOTS]) -> R) -> R {
    while LOCK
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::hint::spin_loop();
    }
    // SAFETY: LOCK is held, so this is the only reference.
    let r = f(unsafe { &mut *TABLE.0.get() });
    LOCK.store(false, Ordering::Release);
    r
}

fn slot_of(addr: usize) -> usize {
    (addr >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 48 & (SLOTS - 1)
}

pub struct Tracker;

// SAFETY: forwards to System; the bookkeeping never allocates.
unsafe impl GlobalAlloc for Tracker {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() && TRACKING.load(Ordering::Relaxed) {
            insert(p as usize, layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        remove(ptr as usize);
        // SAFETY: forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let was = remove(ptr as usize);
        // SAFETY: forwarded.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() && (was || TRACKING.load(Ordering::Relaxed)) {
            insert(p as usize, new_size);
        }
        p
    }
}

#[inline(always)]
fn insert(addr: usize, size: usize) {
    let mut frames = [0usize; FRAMES];
    capture(&mut frames);
    let window = WINDOW.load(Ordering::Relaxed);
    with_table(|t| {
        let mut i = slot_of(addr);
        for _ in 0..SLOTS {
            if t[i].addr == 0 || t[i].addr == TOMB {
                t[i] = Entry {
                    addr,
                    size,
                    window,
                    frames,
                };
                return;
            }
            i = (i + 1) & (SLOTS - 1);
        }
    });
}

fn remove(addr: usize) -> bool {
    with_table(|t| {
        let mut i = slot_of(addr);
        for _ in 0..SLOTS {
            if t[i].addr == 0 {
                return false;
            }
            if t[i].addr == addr {
                t[i].addr = TOMB;
                return true;
            }
            i = (i + 1) & (SLOTS - 1);
        }
        false
    })
}

/// Return addresses of the allocating thread, innermost first, by frame
/// pointers (the build forces them; std's precompiled frames may end the
/// chain early, which only shortens it).
#[inline(always)]
fn capture(out: &mut [usize; FRAMES]) {
    #[cfg(target_arch = "x86_64")]
    {
        let mut fp: usize;
        // SAFETY: reads a register.
        unsafe { std::arch::asm!("mov {}, rbp", out(reg) fp, options(nomem, nostack)) };
        for slot in out.iter_mut() {
            if fp == 0 || fp % 8 != 0 {
                break;
            }
            // SAFETY: fp walks the frame-pointer chain of this thread's
            // stack: each frame holds [saved fp, return address]; the
            // checks below stop at anything that is not a younger-to-older
            // chain within 8 MiB.
            let (next, ret) = unsafe { (*(fp as *const usize), *((fp + 8) as *const usize)) };
            *slot = ret;
            if next <= fp || next - fp > 8 << 20 {
                break;
            }
            fp = next;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = out;
    }
}

/// Turns tracking on (new blocks are recorded) under a new window id.
pub fn begin() -> u32 {
    let w = WINDOW.fetch_add(1, Ordering::Relaxed) + 1;
    TRACKING.store(true, Ordering::Relaxed);
    w
}

/// Turns tracking off (frees are still seen).
pub fn end() {
    TRACKING.store(false, Ordering::Relaxed);
}

/// The tracked block containing `addr`: (start, size).
pub fn block_containing(addr: usize) -> Option<(usize, usize)> {
    with_table(|t| {
        t.iter()
            .find(|e| e.addr > TOMB && e.addr <= addr && addr < e.addr + e.size.max(1))
            .map(|e| (e.addr, e.size))
    })
}

/// The tracked block starting at `addr`.
pub fn entry(addr: usize) -> Option<Entry> {
    with_table(|t| t.iter().find(|e| e.addr == addr).copied())
}

/// Starts of the live blocks made in window `w` (call with tracking off:
/// it allocates the result).
pub fn live_in(w: u32) -> Vec<usize> {
    let n = with_table(|t| t.iter().filter(|e| e.addr > TOMB && e.window == w).count());
    let mut out = Vec::with_capacity(n + 16);
    with_table(|t| {
        for e in t.iter() {
            if e.addr > TOMB && e.window == w && out.len() < out.capacity() {
                out.push(e.addr);
            }
        }
    });
    out.sort_unstable();
    out
}

//! The `leakprof` command with the allocator picked at start-up, for
//! `tools/bench-throughput`: the same worker, measured with and without
//! allocation recording.
//!
//! `LEAKPROF_BENCH_ALLOC=system bench-worker worker --broker redis ...`
//! runs `leakprof worker` exactly as the real binary does (same CLI, same
//! run loop, recorder started, timeline sampled, profile written at the
//! end) except that allocations go straight to the system allocator, so
//! the recorder's live table stays empty. `LEAKPROF_BENCH_ALLOC=leakprof`
//! (the default) records as the real binary does. Both modes pay the same
//! dispatch branch per allocation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering};

const SYSTEM: u8 = 0;
const LEAKPROF: u8 = 1;

/// Starts as LEAKPROF so the first allocations tell LeakAlloc it is
/// installed (the recorder refuses to start otherwise); switched once, in
/// `main`, before any thread exists.
static MODE: AtomicU8 = AtomicU8::new(LEAKPROF);
static LEAK: leakprof::LeakAlloc = leakprof::LeakAlloc::system();

struct Switch;

// SAFETY: both arms end in the system allocator. LeakAlloc forwards every
// call unchanged to `System` and only observes addresses, and it ignores
// frees of blocks it did not record, so a block allocated under one mode
// and freed under the other is handled correctly by either.
unsafe impl GlobalAlloc for Switch {
    #[inline]
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe {
            match MODE.load(Ordering::Relaxed) {
                LEAKPROF => LEAK.alloc(l),
                _ => System.alloc(l),
            }
        }
    }
    #[inline]
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe {
            match MODE.load(Ordering::Relaxed) {
                LEAKPROF => LEAK.alloc_zeroed(l),
                _ => System.alloc_zeroed(l),
            }
        }
    }
    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded contract.
        unsafe {
            match MODE.load(Ordering::Relaxed) {
                LEAKPROF => LEAK.dealloc(p, l),
                _ => System.dealloc(p, l),
            }
        }
    }
    #[inline]
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe {
            match MODE.load(Ordering::Relaxed) {
                LEAKPROF => LEAK.realloc(p, l, n),
                _ => System.realloc(p, l, n),
            }
        }
    }
}

#[global_allocator]
static GLOBAL: Switch = Switch;

fn main() -> std::process::ExitCode {
    let mode = std::env::var("LEAKPROF_BENCH_ALLOC").unwrap_or_else(|_| "leakprof".into());
    match mode.as_str() {
        "system" => MODE.store(SYSTEM, Ordering::Relaxed),
        "leakprof" => {}
        other => {
            eprintln!("bench-worker: unknown LEAKPROF_BENCH_ALLOC {other:?} (system, leakprof)");
            return std::process::ExitCode::from(2);
        }
    }
    leakprof::cli::main()
}

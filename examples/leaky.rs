//! A program that leaks on purpose, for cross-checking leakprof against
//! heaptrack on the same process (tests/heaptrack.rs).
//!
//! `leaky OUT.json`: starts recording, leaks 100 MiB in 2 MiB blocks and
//! 10,000 blocks of 1 KiB (all filled), frees as much again, and saves a
//! profile to OUT.json.

#[global_allocator]
static GLOBAL: leakprof::LeakAlloc = leakprof::LeakAlloc::system();

#[inline(never)]
fn leak_big_blocks() {
    for _ in 0..50 {
        let v = vec![0x5au8; 2 << 20];
        std::mem::forget(v);
    }
}

#[inline(never)]
fn leak_small_blocks() {
    for i in 0..10_000u32 {
        Box::leak(vec![i as u8 | 1; 1024].into_boxed_slice());
    }
}

#[inline(never)]
fn churn_and_free() {
    let kept: Vec<Vec<u8>> = (0..1000).map(|i| vec![i as u8 | 1; 4096]).collect();
    drop(kept);
}

fn main() {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "leaky.json".into());
    let recorder = leakprof::Recorder::start(leakprof::Options::default().timeline_interval_ms(0))
        .expect("leakprof::LeakAlloc is installed");
    leak_big_blocks();
    leak_small_blocks();
    churn_and_free();
    recorder.snapshot().save(&out).expect("profile written");
}

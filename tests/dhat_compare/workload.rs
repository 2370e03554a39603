//! The workload `tests/dhat_compare.rs` runs twice, in two processes: once
//! under dhat-rs (`under_dhat.rs`) and once under leakprof's recorder
//! (`under_leakprof.rs`), each its process's global allocator.
//!
//! Deterministic and single-threaded: the same allocations, frees and
//! reallocations in the same order every run. Each allocation site is a
//! function of its own, never inlined, so both profilers' stacks name it
//! (`workload::<site>`), and no site calls another. A block reallocated
//! stays in the function that first allocated it, so the site is the same
//! whether a profiler charges the reallocation to the first allocation's
//! stack (dhat-rs) or to the reallocating one (leakprof).
//!
//! The global peak is reached inside `burst` (2 MiB of buffers and 2,000
//! small records, all freed before it returns), so the at-peak figures
//! (t-gmax) differ from the end figures (t-end).

use std::hint::black_box;

/// Everything still alive when the workload returns (t-end).
#[allow(clippy::vec_box)] // Separate blocks are the point.
pub struct Kept {
    pub cache: Vec<Box<[u8]>>,
    pub buffer: Vec<u8>,
    pub tail: Vec<Box<[u8; 1024]>>,
}

/// The functions that allocate, as the test looks for them in both
/// profilers' stacks.
pub const SITES: &[&str] = &[
    "fill_cache",
    "cache_entry",
    "grow_buffer",
    "burst",
    "scratch",
    "keep_tail",
];

pub fn run() -> Kept {
    let mut cache = fill_cache();
    let buffer = grow_buffer();
    black_box(burst());
    evict(&mut cache);
    black_box(scratch());
    let tail = keep_tail();
    Kept {
        cache,
        buffer,
        tail,
    }
}

/// 2,000 entries of 100 to 299 bytes, in a vector grown by pushes (its
/// reallocations belong to this site).
#[inline(never)]
fn fill_cache() -> Vec<Box<[u8]>> {
    let mut cache = Vec::new();
    for i in 0..2000 {
        cache.push(cache_entry(i));
    }
    cache
}

#[inline(never)]
fn cache_entry(i: usize) -> Box<[u8]> {
    black_box(vec![i as u8; 100 + i % 200].into_boxed_slice())
}

/// A 600 KiB buffer grown byte by byte: a reallocation at every doubling.
#[inline(never)]
fn grow_buffer() -> Vec<u8> {
    let mut buffer = Vec::new();
    for i in 0..600 * 1024 {
        buffer.push(black_box(i as u8));
    }
    buffer
}

/// A request's working set, all alive together: four 512 KiB buffers,
/// then 2,000 records of 1 KiB. The last record is the global peak, reached
/// in small steps as programs usually reach theirs; then all are freed.
#[allow(clippy::vec_box)] // Separate blocks are the point.
#[inline(never)]
fn burst() -> u64 {
    let mut buffers = Vec::with_capacity(4);
    for i in 0..4u8 {
        buffers.push(black_box(vec![i; 512 * 1024]));
    }
    let mut records = Vec::with_capacity(2000);
    for i in 0..2000u16 {
        records.push(black_box(Box::new([i as u8; 1024])));
    }
    let sum = buffers.iter().map(|b| b[b.len() - 1] as u64).sum::<u64>()
        + records.iter().map(|r| r[1023] as u64).sum::<u64>();
    drop(black_box(records));
    drop(black_box(buffers));
    sum
}

/// Frees every other cache entry (no allocation of its own).
#[inline(never)]
fn evict(cache: &mut Vec<Box<[u8]>>) {
    let mut keep = false;
    cache.retain(|_| {
        keep = !keep;
        keep
    });
}

/// 1,000 short-lived 64-byte blocks, each freed at once.
#[inline(never)]
fn scratch() -> u64 {
    let mut sum = 0;
    for i in 0..1000u64 {
        let b = black_box(Box::new([i; 8]));
        sum += b[7];
    }
    sum
}

/// Fifty 1 KiB blocks kept to the end.
#[allow(clippy::vec_box)] // Separate blocks are the point.
#[inline(never)]
fn keep_tail() -> Vec<Box<[u8; 1024]>> {
    (0..50u8).map(|i| black_box(Box::new([i; 1024]))).collect()
}

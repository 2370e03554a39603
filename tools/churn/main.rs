//! The recorder benchmark's workload (run by `tools/bench-recorder`).
//!
//! `churn MODE --threads N --pairs P [--window W] [--depth-check]`
//! `churn MODE --hold B` (memory: keep B blocks of 32 bytes live)
//! `churn MODE --latency B` (allocation latency: B allocations from 100,000
//! distinct stacks, all kept, so the live amount and its peak rise all the
//! way; each allocation timed alone: p50, p99, p99.99 and max, and for
//! leakprof the allocations during which the peak generation moved)
//!
//! MODE picks the global allocator at start-up, so one binary measures
//! every configuration with identical code: `system`, `leakprof` (full
//! stacks), `sampled` (leakprof, 512 KiB Poisson sampling), `dhat`
//! (dhat-rs heap profiler). heaptrack and bytehound wrap `system` from the
//! outside (LD_PRELOAD). The dispatch branch is paid by every mode alike.
//!
//! Each thread replaces blocks in a rolling window of W live blocks; every
//! allocation happens 20 distinct non-inlined frames deep. Only the churn
//! itself is timed (wall and process CPU), not start-up or profile writing.
//! Output: one JSON object on stdout.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

const SYSTEM: u8 = 0;
const LEAKPROF: u8 = 1;
const DHAT: u8 = 2;

static MODE: AtomicU8 = AtomicU8::new(SYSTEM);
static LEAK: leakprof::LeakAlloc = leakprof::LeakAlloc::system();
static DHAT_ALLOC: dhat::Alloc = dhat::Alloc;

struct Switch;

// SAFETY: forwards to one of three allocators that all end in the system
// allocator; blocks allocated under one mode and freed under another are
// handled by each (LeakAlloc and dhat ignore frees of blocks they did not
// record). MODE is set once, first thing in main.
unsafe impl GlobalAlloc for Switch {
    #[inline]
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe {
            match MODE.load(Ordering::Relaxed) {
                LEAKPROF => LEAK.alloc(l),
                DHAT => DHAT_ALLOC.alloc(l),
                _ => System.alloc(l),
            }
        }
    }
    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded contract.
        unsafe {
            match MODE.load(Ordering::Relaxed) {
                LEAKPROF => LEAK.dealloc(p, l),
                DHAT => DHAT_ALLOC.dealloc(p, l),
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
                DHAT => DHAT_ALLOC.realloc(p, l, n),
                _ => System.realloc(p, l, n),
            }
        }
    }
}

#[global_allocator]
static GLOBAL: Switch = Switch;

/// Twenty distinct non-inlined frames; the last allocates.
macro_rules! chain {
    ($last:ident; $($f:ident => $g:ident),*) => {
        $(
            #[inline(never)]
            fn $f(size: usize) -> Box<[u8]> {
                black_box($g(black_box(size)))
            }
        )*
        #[inline(never)]
        fn $last(size: usize) -> Box<[u8]> {
            // Exactly one allocation of `size` bytes (length equals
            // capacity, so no shrinking realloc), filled so every
            // configuration touches the same memory.
            vec![(size as u8) | 1; size].into_boxed_slice()
        }
    };
}

chain!(f20; f01 => f02, f02 => f03, f03 => f04, f04 => f05, f05 => f06, f06 => f07, f07 => f08,
    f08 => f09, f09 => f10, f10 => f11, f11 => f12, f12 => f13, f13 => f14, f14 => f15, f15 => f16,
    f16 => f17, f17 => f18, f18 => f19, f19 => f20);

fn churn(pairs: u64, window: usize, seed: u64) {
    let mut ring: Vec<Option<Box<[u8]>>> = (0..window).map(|_| None).collect();
    let mut x = seed | 1;
    for i in 0..pairs {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let size = 16 + (x % 497) as usize;
        let slot = (i % window as u64) as usize;
        // Frees the block that was in the slot (after the window filled).
        ring[slot] = Some(f01(size));
    }
    black_box(&ring);
}

/// One of 2^17 distinct stacks, chosen by the bits of `n` (17 levels of
/// two alternating non-inlined functions).
#[inline(never)]
fn stack_a(n: u32, level: u32, size: usize) -> Box<[u8]> {
    let b = match level {
        0 => f20(size),
        _ if n & 1 == 1 => stack_a(n >> 1, level - 1, size),
        _ => stack_b(n >> 1, level - 1, size),
    };
    black_box(b)
}

#[inline(never)]
fn stack_b(n: u32, level: u32, size: usize) -> Box<[u8]> {
    let b = match level {
        0 => f20(size),
        _ if n & 1 == 1 => stack_a(n >> 1, level - 1, size),
        _ => stack_b(n >> 1, level - 1, size),
    };
    black_box(b)
}

/// The recorder's peak generation: it moves each time the global live
/// amount reaches a new peak (the at-peak capture). `tools/bench-recorder`
/// also builds this file against leakprofs from before peak generations;
/// for those it replaces the call below with `0`, and no allocation counts
/// as at-peak.
#[inline(always)]
fn peak_generation() -> u64 {
    leakprof::record::peak_generation()
}

/// Distinct stacks the latency workload spreads its allocations over.
const LATENCY_STACKS: u32 = 100_000;

/// Times `blocks` allocations (64 to 1,088 bytes, all kept) one by one,
/// spread over [`LATENCY_STACKS`] distinct stacks: the live amount rises
/// throughout, so leakprof reaches a new peak again and again. Returns
/// (latencies in ns, latencies of the allocations during which the peak
/// generation moved).
fn latencies(blocks: u64) -> (Vec<u64>, Vec<u64>) {
    let mut kept: Vec<Box<[u8]>> = Vec::with_capacity(blocks as usize);
    let mut all = Vec::with_capacity(blocks as usize);
    let mut at_peak = Vec::new();
    for i in 0..blocks {
        let n = (i % LATENCY_STACKS as u64) as u32;
        let size = 64 + (i % 17) as usize * 64;
        let generation = peak_generation();
        let t0 = Instant::now();
        let b = stack_a(n, 17, size);
        let ns = t0.elapsed().as_nanos() as u64;
        if peak_generation() != generation {
            at_peak.push(ns);
        }
        all.push(ns);
        kept.push(b);
    }
    black_box(&kept);
    (all, at_peak)
}

fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; the clock always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Peak RSS of this process image (VmHWM: unlike getrusage's ru_maxrss,
/// it does not inherit the high-water mark of the process that exec'd us).
fn max_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode_name = args.get(1).cloned().unwrap_or_else(|| "system".into());
    let mode = match mode_name.as_str() {
        "system" => SYSTEM,
        "leakprof" | "sampled" => LEAKPROF,
        "dhat" => DHAT,
        other => {
            eprintln!("churn: unknown mode {other:?} (system, leakprof, sampled, dhat)");
            std::process::exit(2);
        }
    };
    MODE.store(mode, Ordering::Relaxed);
    // First allocation through the chosen allocator (LeakAlloc learns it is
    // installed).
    black_box(Box::new(0u8));
    let threads = arg(&args, "--threads", 2).max(1);
    let pairs = arg(&args, "--pairs", 5_000_000);
    let window = arg(&args, "--window", 1000).max(1) as usize;
    let hold = arg(&args, "--hold", 0);
    let latency = arg(&args, "--latency", 0);

    let recorder = match mode_name.as_str() {
        "leakprof" => {
            Some(leakprof::Recorder::start(leakprof::Options::default()).expect("recorder"))
        }
        "sampled" => Some(
            leakprof::Recorder::start(
                leakprof::Options::default()
                    .sample_mean_bytes(leakprof::record::defaults::SAMPLE_MEAN_BYTES),
            )
            .expect("recorder"),
        ),
        _ => None,
    };
    let dhat_file = std::env::temp_dir().join(format!("churn-dhat-{}.json", std::process::id()));
    let profiler = (mode == DHAT).then(|| dhat::Profiler::builder().file_name(&dhat_file).build());

    if latency > 0 {
        let (mut all, mut at_peak) = latencies(latency);
        all.sort_unstable();
        at_peak.sort_unstable();
        println!(
            "{{\"mode\":\"{mode_name}\",\"latency_blocks\":{latency},\"stacks\":{LATENCY_STACKS},\
             \"p50_ns\":{},\"p99_ns\":{},\"p9999_ns\":{},\"max_ns\":{},\
             \"peak_allocations\":{},\"peak_p50_ns\":{},\"peak_max_ns\":{}}}",
            quantile(&all, 0.5),
            quantile(&all, 0.99),
            quantile(&all, 0.9999),
            all.last().copied().unwrap_or(0),
            at_peak.len(),
            quantile(&at_peak, 0.5),
            at_peak.last().copied().unwrap_or(0),
        );
        drop(recorder);
        drop(profiler);
        let _ = std::fs::remove_file(&dhat_file);
        return;
    }

    let rss_before = max_rss_bytes();
    let (t0, c0) = (Instant::now(), cpu_ns());
    let held: Vec<Box<[u8]>> = if hold > 0 {
        (0..hold).map(|_| f01(32)).collect()
    } else {
        std::thread::scope(|s| {
            for t in 0..threads {
                s.spawn(move || churn(pairs / threads, window, 0x9e37_79b9 + t));
            }
        });
        Vec::new()
    };
    let wall = t0.elapsed().as_nanos() as u64;
    let cpu = cpu_ns() - c0;
    let rss = max_rss_bytes();

    // Check the recorder saw what it should (untimed).
    let mut live_blocks = 0;
    if let Some(r) = &recorder {
        let p = r.snapshot();
        live_blocks = p.totals.live.blocks;
        black_box(&p);
    }
    let table_bytes = leakprof::record::live_table_bytes();
    drop(profiler);
    let _ = std::fs::remove_file(&dhat_file);
    black_box(&held);
    let n = if hold > 0 {
        hold
    } else {
        pairs - pairs % threads
    };
    println!(
        "{{\"mode\":\"{mode_name}\",\"threads\":{threads},\"pairs\":{n},\"hold\":{hold},\"wall_ns\":{wall},\"cpu_ns\":{cpu},\
         \"wall_ns_per_pair\":{:.1},\"cpu_ns_per_pair\":{:.1},\"max_rss_bytes\":{rss},\"rss_before_bytes\":{rss_before},\
         \"recorded_live_blocks\":{live_blocks},\"live_table_bytes\":{table_bytes}}}",
        wall as f64 / n as f64,
        cpu as f64 / n as f64,
    );
}

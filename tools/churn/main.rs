//! The recorder benchmark's workload (run by `tools/bench-recorder`).
//!
//! `churn MODE --threads N --pairs P [--window W] [--depth-check]`
//! `churn MODE --hold B` (memory: keep B blocks of 32 bytes live)
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

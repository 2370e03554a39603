//! Writes a synthetic profile for the reporter benchmark: 1,000,000 live
//! allocations over 100,000 distinct stacks (docs/BENCHMARKS.md, Reporter).
//!
//!     cargo run --release --example gen-big-profile -- big.json
//!
//! The shape imitates a long-running worker: a few thousand functions,
//! stacks 14 to 30 frames deep under a tokio poll loop, 2,000 tasks with
//! retries, each stack's blocks split over several (task, retry) tags, and
//! a timeline with an `after failure` point per retry. A fixed seed makes
//! the file the same on every run.

use leakprof::format::{
    events, Amount, Frame, LiveGroup, Module, Profile, Stack, StackStats, TagInfo, TaskInfo,
    TimelinePoint,
};

const STACKS: usize = 100_000;
const ALLOCATIONS: u64 = 1_000_000;
const FUNCTIONS: usize = 4_000;
const TASKS: u64 = 2_000;
const RETRIES: u32 = 5;

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn main() {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "big-profile.json".to_string());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut p = Profile::empty("big-worker");
    p.meta.pid = 1;
    p.meta.start_unix_ms = 1_700_000_000_000;
    p.meta
        .attributes
        .insert("scenario".into(), "synthetic".into());
    p.meta.attributes.insert("middleware".into(), "big".into());
    p.modules.push(Module {
        path: "/opt/big/bin/big-worker".into(),
        build_id: Some("00112233445566778899aabbccddeeff".into()),
        load_address: 0x5555_0000_0000,
        start: 0x5555_0000_1000,
        end: 0x5555_4000_0000,
    });
    let frame = |p: &mut Profile, function: String, file: Option<String>, line: Option<u32>| {
        let id = p.frames.len() as u32;
        p.frames.push(Frame {
            function,
            file,
            line,
            address: 0x5555_0000_2000 + id as u64 * 0x30,
            module: Some(0),
            inlined: false,
        });
        id
    };
    let alloc = frame(&mut p, "__rust_alloc".into(), None, None);
    let raw_vec = frame(
        &mut p,
        "alloc::raw_vec::RawVec<T,A>::try_allocate_in".into(),
        None,
        None,
    );
    let ctors: Vec<u32> = [
        "<alloc::vec::Vec<u8>>::with_capacity",
        "<alloc::boxed::Box<big::jobs::Payload>>::new",
        "<alloc::sync::Arc<big::cache::Entry>>::new",
        "<alloc::string::String>::push_str",
    ]
    .iter()
    .map(|f| frame(&mut p, f.to_string(), None, None))
    .collect();
    let runtime: Vec<u32> = [
        "std::rt::lang_start_internal",
        "big::main",
        "tokio::runtime::runtime::Runtime::block_on",
        "tokio::runtime::scheduler::multi_thread::worker::Context::run",
        "tokio::runtime::task::harness::Harness<T,S>::poll",
        "big::worker::Worker::process_message::{{closure}}",
    ]
    .iter()
    .map(|f| frame(&mut p, f.to_string(), None, None))
    .collect();
    let modules = [
        "jobs",
        "cache",
        "codec",
        "broker",
        "middleware",
        "results",
        "retry",
        "storage",
    ];
    let functions: Vec<u32> = (0..FUNCTIONS)
        .map(|i| {
            let m = modules[i % modules.len()];
            frame(
                &mut p,
                format!("big::{m}::handler_{i:04}::{{{{closure}}}}"),
                Some(format!("src/{m}.rs")),
                Some(10 + (i as u32 % 900)),
            )
        })
        .collect();
    // Distinct stacks: the stack index is spelled in three digits of base
    // FUNCTIONS-ish choices, the rest of the frames are random.
    for i in 0..STACKS {
        let mut frames = vec![alloc, raw_vec, ctors[i % ctors.len()]];
        let depth = 6 + rng.below(16) as usize;
        let a = functions[i % FUNCTIONS];
        let b = functions[(i / FUNCTIONS) % FUNCTIONS];
        frames.push(a);
        for _ in 0..depth {
            frames.push(functions[rng.below(FUNCTIONS as u64) as usize]);
        }
        frames.push(b);
        frames.extend(runtime.iter().rev());
        p.stacks.push(Stack {
            frames,
            truncated: false,
        });
    }
    for t in 0..TASKS {
        p.tasks.push(TaskInfo {
            task: t,
            name: Some(format!("job_{t}")),
            retries: RETRIES - 1,
            first_ns: Some(t * 10_000_000),
            last_ns: Some(t * 10_000_000 + 9_000_000),
            outcome: Some("failed".into()),
            ..TaskInfo::default()
        });
        for r in 0..RETRIES {
            let id = p.tags.len() as u32;
            p.tags.push(TagInfo {
                id,
                task: Some(t),
                retry: Some(r),
                label: (r % 2 == 1).then(|| "error value".to_string()),
                first_ns: Some(t * 10_000_000 + r as u64 * 1_000_000),
                last_ns: Some(t * 10_000_000 + r as u64 * 1_000_000 + 500_000),
                ..TagInfo::default()
            });
        }
    }
    // 1,000,000 live blocks: 10 per stack on average, over 3 tags each.
    let mut remaining = ALLOCATIONS;
    let tags = p.tags.len() as u64;
    for s in 0..STACKS {
        let share = if s == STACKS - 1 {
            remaining
        } else {
            ALLOCATIONS / STACKS as u64
        };
        remaining -= share;
        let size = 16 << rng.below(8);
        let mut left = share;
        let mut stats = StackStats {
            stack: s as u32,
            ..StackStats::default()
        };
        for k in 0..3 {
            let blocks = if k == 2 { left } else { left / 3 };
            left -= blocks;
            if blocks == 0 {
                continue;
            }
            let tag = rng.below(tags) as u32;
            let a = Amount {
                bytes: blocks * size,
                blocks,
            };
            p.live.push(LiveGroup {
                stack: s as u32,
                tag,
                blocks,
                bytes: blocks * size,
                ..LiveGroup::default()
            });
            let t = &mut p.tags[tag as usize];
            t.live.add(a);
            t.allocated.add(a);
            t.peak.add(a);
            stats.live.add(a);
            stats.at_peak.add(a);
            // As much again was allocated and freed from the same stack.
            stats.allocated.add(a);
            stats.allocated.add(a);
            p.totals.live.add(a);
        }
        p.totals.allocated.add(stats.allocated);
        p.stack_stats.push(stats);
    }
    p.totals.peak = p.totals.live;
    p.totals.rss_bytes = p.totals.live.bytes + (64 << 20);
    let mut live = 0u64;
    for t in 0..TASKS {
        for r in 0..RETRIES {
            let t_ns = t * 10_000_000 + r as u64 * 1_000_000;
            live += p.totals.live.bytes / (TASKS * RETRIES as u64);
            for (dt, event) in [
                (0, events::BEFORE_ALLOCATION),
                (100_000, events::AFTER_ALLOCATION),
                (600_000, events::AFTER_FAILURE),
            ] {
                p.timeline.push(TimelinePoint {
                    t_ns: t_ns + dt,
                    rss_bytes: live + (64 << 20),
                    live_bytes: live,
                    live_blocks: 0,
                    task: Some(t),
                    retry: Some(r),
                    event: Some(event.to_string()),
                });
            }
        }
    }
    p.meta.snapshot_ns = TASKS * 10_000_000;
    p.save(&out).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "wrote {out}: {} live allocations over {} stacks, {} live groups, {} frames, {} timeline points",
        p.totals.live.blocks,
        p.stacks.len(),
        p.live.len(),
        p.frames.len(),
        p.timeline.len()
    );
}

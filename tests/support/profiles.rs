//! Hand-built profiles for reporter tests: "given these allocations".
//!
//! The seed's exception scenario in miniature: a worker retries a task
//! that allocates a payload and fails with an error value holding it. In
//! the `original` variant every retry's payload and error value survive;
//! in `fixed` only the running retry's payload is alive.

use leakprof::format::{
    events, Amount, Frame, LiveGroup, Module, Profile, Stack, StackStats, TagInfo, TaskInfo,
    TimelinePoint,
};

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;

/// Payload of one attempt (the seed's 128 MB, scaled down).
pub const PAYLOAD: u64 = 128 * KIB;
/// The error value that holds the payload.
pub const ERROR_VALUE: u64 = 64;
/// A long-lived broker buffer allocated before any task.
pub const BROKER: u64 = 4 * KIB;
/// Attempts of the one task (retries 0..RETRIES).
pub const RETRIES: u32 = 4;

/// Builds profiles frame by frame and group by group, keeping totals,
/// per-tag and per-stack figures consistent with the live groups.
pub struct Builder {
    pub p: Profile,
}

impl Builder {
    pub fn new(program: &str) -> Builder {
        let mut p = Profile::empty(program);
        p.meta.pid = 4242;
        p.meta.start_unix_ms = 1_700_000_000_000;
        p.modules.push(Module {
            path: "/opt/lab/bin/lab-worker".to_string(),
            build_id: Some("abcdef0123456789".to_string()),
            load_address: 0x5555_0000_0000,
            start: 0x5555_0000_1000,
            end: 0x5555_0010_0000,
        });
        Builder { p }
    }

    pub fn frame(&mut self, function: &str, file: Option<&str>, line: Option<u32>) -> u32 {
        let id = self.p.frames.len() as u32;
        self.p.frames.push(Frame {
            function: function.to_string(),
            file: file.map(str::to_string),
            line,
            address: 0x5555_0000_2000 + id as u64 * 0x40,
            module: Some(0),
            inlined: false,
        });
        id
    }

    pub fn stack(&mut self, frames: &[u32]) -> u32 {
        self.p.stacks.push(Stack {
            frames: frames.to_vec(),
            truncated: false,
        });
        self.p.stack_stats.push(StackStats {
            stack: self.p.stacks.len() as u32 - 1,
            ..StackStats::default()
        });
        self.p.stacks.len() as u32 - 1
    }

    pub fn tag(&mut self, t: TagInfo) -> u32 {
        let id = self.p.tags.len() as u32;
        self.p.tags.push(TagInfo { id, ..t });
        id
    }

    /// Allocates `blocks` blocks of `size` from `stack` under `tag`; the
    /// first `survive` of them are still alive at snapshot.
    pub fn alloc(&mut self, stack: u32, tag: u32, blocks: u64, size: u64, survive: u64) {
        let all = Amount {
            bytes: blocks * size,
            blocks,
        };
        let live = Amount {
            bytes: survive * size,
            blocks: survive,
        };
        self.p.totals.allocated.add(all);
        self.p.tags[tag as usize].allocated.add(all);
        self.p.tags[tag as usize].peak.add(all);
        let stats = &mut self.p.stack_stats[stack as usize];
        stats.allocated.add(all);
        stats.at_peak.add(all);
        if survive > 0 {
            stats.live.add(live);
            self.p.tags[tag as usize].live.add(live);
            self.p.totals.live.add(live);
            self.p.live.push(LiveGroup {
                stack,
                tag,
                blocks: survive,
                bytes: survive * size,
                ..LiveGroup::default()
            });
        }
    }

    pub fn point(&mut self, t_ms: u64, live: u64, event: Option<&str>, retry: Option<u32>) {
        let blocks = self.p.totals.live.blocks;
        self.p.timeline.push(TimelinePoint {
            t_ns: t_ms * 1_000_000,
            rss_bytes: live + 2 * MIB,
            live_bytes: live,
            live_blocks: blocks,
            task: retry.map(|_| 1),
            retry,
            event: event.map(str::to_string),
        });
    }

    pub fn finish(mut self) -> Profile {
        self.p.totals.peak = self.p.totals.allocated;
        self.p.totals.rss_bytes = self.p.totals.live.bytes + 2 * MIB;
        self.p
    }
}

/// The seed's exception scenario in miniature; `leaks` picks `original`
/// (every attempt's payload and error value survive) or `fixed`.
pub fn exception_run(leaks: bool) -> Profile {
    let mut b = Builder::new("lab-worker");
    let variant = if leaks { "original" } else { "fixed" };
    b.p.meta
        .attributes
        .insert("scenario".into(), "exception".into());
    b.p.meta
        .attributes
        .insert("middleware".into(), variant.into());
    let alloc = b.frame("__rust_alloc", None, None);
    let raw_vec = b.frame(
        "alloc::raw_vec::RawVec<T,A>::allocate_in::h0123456789abcdef",
        None,
        None,
    );
    let vec_new = b.frame(
        "<alloc::vec::Vec<u8>>::with_capacity",
        Some("/rustc/library/alloc/src/vec/mod.rs"),
        Some(480),
    );
    let payload = b.frame(
        "leakprof::lab::scenarios::exception::allocate_payload",
        Some("src/lab/scenarios/exception.rs"),
        Some(42),
    );
    let process = b.frame(
        "leakprof::lab::worker::process_message",
        Some("src/lab/worker.rs"),
        Some(120),
    );
    let poll = b.frame(
        "tokio::runtime::task::harness::Harness<T,S>::poll",
        None,
        None,
    );
    let box_new = b.frame(
        "<alloc::boxed::Box<leakprof::lab::TaskError>>::new",
        None,
        None,
    );
    let fail = b.frame(
        "leakprof::lab::scenarios::exception::fail",
        Some("src/lab/scenarios/exception.rs"),
        Some(50),
    );
    let enqueue = b.frame(
        "leakprof::lab::broker::Broker::enqueue",
        Some("src/lab/broker.rs"),
        Some(77),
    );
    let odd = b.frame(
        "<[u8; 8] as app::Odd name>::make",
        Some("src/odd.rs"),
        Some(3),
    );
    let payload_stack = b.stack(&[alloc, raw_vec, vec_new, payload, process, poll]);
    let error_stack = b.stack(&[alloc, box_new, fail, process, poll]);
    let broker_stack = b.stack(&[alloc, enqueue, poll]);
    let odd_stack = b.stack(&[alloc, odd, poll]);
    b.p.tasks.push(TaskInfo {
        task: 1,
        name: Some("exception_task".into()),
        external_id: Some("msg-0001".into()),
        actor: Some("exception_task".into()),
        queue: Some("default".into()),
        retries: RETRIES - 1,
        first_ns: Some(10_000_000),
        last_ns: Some(RETRIES as u64 * 100_000_000 + 50_000_000),
        outcome: Some("retrying".into()),
    });
    b.alloc(broker_stack, 0, 1, BROKER, 1);
    b.alloc(odd_stack, 0, 2, 16, 1);
    b.point(0, BROKER + 16, None, None);
    let mut live = BROKER + 16;
    for r in 0..RETRIES {
        let last = r == RETRIES - 1;
        let start = 10 + r as u64 * 100;
        let attempt = b.tag(TagInfo {
            task: Some(1),
            retry: Some(r),
            first_ns: Some(start * 1_000_000),
            last_ns: Some((start + 60) * 1_000_000),
            active: last,
            ..TagInfo::default()
        });
        let error = b.tag(TagInfo {
            task: Some(1),
            retry: Some(r),
            label: Some("error value".into()),
            type_name: Some("TaskError".into()),
            first_ns: Some((start + 50) * 1_000_000),
            last_ns: Some((start + 50) * 1_000_000),
            active: false,
            ..TagInfo::default()
        });
        b.point(start, live, Some(events::BEFORE_ALLOCATION), Some(r));
        let survives = leaks || last;
        b.alloc(payload_stack, attempt, 1, PAYLOAD, survives as u64);
        b.point(
            start + 20,
            live + PAYLOAD,
            Some(events::AFTER_ALLOCATION),
            Some(r),
        );
        b.alloc(error_stack, error, 1, ERROR_VALUE, leaks as u64);
        if leaks {
            live += PAYLOAD + ERROR_VALUE;
        }
        if !last {
            b.point(start + 70, live, Some(events::AFTER_FAILURE), Some(r));
        }
    }
    b.p.meta.snapshot_ns = (10 + RETRIES as u64 * 100) * 1_000_000;
    b.finish()
}

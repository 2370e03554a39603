//! Counted once, against tracemalloc (issue 11): one Python process runs
//! an allocation-heavy workload (tests/python/count_with_tracemalloc.py)
//! under `leakprof run` with tracemalloc tracing too, and both tools'
//! figures for the workload's window agree within 1%.
//!
//! What is compared: the bytes (and blocks) the workload allocated in the
//! window and still holds at its end. tracemalloc has no running total of
//! bytes allocated, only the memory it traces now (and its peak); the
//! workload frees its temporaries and keeps everything else with the
//! collector off, so the growth of tracemalloc's traced memory over the
//! window is what it allocated and kept, and so are leakprof's live bytes
//! tagged with the window's `leakprof.tag`. Frees inside the window must
//! be matched for the figures to agree, allocations counted once for them
//! not to differ by the workload's size.
//!
//! Both ways the two sets of hooks can be stacked are run, because each
//! wraps the allocator it finds when it starts:
//! - tracemalloc first (`PYTHONTRACEMALLOC`, at interpreter start), then
//!   leakprof's hooks around it: each tool sees exactly the program's
//!   blocks, and the figures agree as they are;
//! - tracemalloc started by the script, around leakprof's hooks: for each
//!   block it traces, tracemalloc allocates a 16-byte trace record
//!   (`trace_t`: size and traceback pointer) with the RAW allocator it
//!   wrapped, which is leakprof's, so leakprof records those too, under
//!   the same stack and tag. leakprof then holds one more block of 16 bytes
//!   per traced block, and the figures agree once those are added.
//!
//! The interpreter is `support::python::dramatiq()`'s (skipped without
//! one, failing under CI=true).

mod support;

use std::ffi::OsStr;
use std::path::Path;

use leakprof::format::Profile;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/python/count_with_tracemalloc.py"
);

/// Blocks the workload keeps: a few times this many are allocated.
const ITEMS: &str = "15000";

/// `sizeof(trace_t)` in CPython 3.11's Modules/_tracemalloc.c.
const TRACE_RECORD_BYTES: u64 = 16;

/// (bytes, blocks) by each tool over the window.
struct Counts {
    tracemalloc: (u64, u64),
    leakprof: (u64, u64),
}

fn run(python: &Path, out: &Path, env: &[(&str, String)]) -> Counts {
    let mut env = env.to_vec();
    env.push(("LEAKPROF_TEST_ITEMS", ITEMS.to_string()));
    let stdout =
        support::python::leakprof_run(out, &[python.as_os_str(), OsStr::new(SCRIPT)], &env);
    let figures: Vec<u64> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("tracemalloc "))
        .unwrap_or_else(|| panic!("no tracemalloc figures in: {stdout}"))
        .split_whitespace()
        .map(|n| n.parse().expect("a count"))
        .collect();
    let profile = leakprof::format::load(out.join("profile.json")).unwrap();
    Counts {
        tracemalloc: (figures[0], figures[1]),
        leakprof: tagged(&profile, "counted"),
    }
}

/// Live (bytes, blocks) tagged with the task whose external id is `task`.
fn tagged(profile: &Profile, task: &str) -> (u64, u64) {
    let task = profile
        .tasks
        .iter()
        .find(|t| t.external_id.as_deref() == Some(task))
        .unwrap_or_else(|| panic!("no task {task} in the profile"))
        .task;
    profile
        .live
        .iter()
        .filter(|g| profile.tags[g.tag as usize].task == Some(task))
        .fold((0, 0), |(bytes, blocks), g| {
            (bytes + g.bytes, blocks + g.blocks)
        })
}

/// The workload's counts with `env`, once it has allocated enough to
/// compare; `None` where Python is unavailable (outside CI).
fn counts_with(env: &[(&str, String)]) -> Option<Counts> {
    let python = support::python::dramatiq()?;
    let dir = tempfile::tempdir().unwrap();
    let counts = run(&python, &dir.path().join("out"), env);
    let tm_bytes = counts.tracemalloc.0;
    assert!(tm_bytes > 20 << 20, "the workload allocates: {tm_bytes}");
    Some(counts)
}

fn assert_within_1_percent(what: &str, leakprof: u64, expected: u64) {
    let ratio = leakprof as f64 / expected as f64;
    assert!(
        (ratio - 1.0).abs() < 0.01,
        "{what}: leakprof {leakprof}, expected {expected} (ratio {ratio:.4})"
    );
}

/// tracemalloc started before leakprof (its hooks wrapped by leakprof's):
/// both see the same blocks.
#[test]
fn live_bytes_match_tracemalloc_started_first() {
    let Some(counts) = counts_with(&[("PYTHONTRACEMALLOC", "1".to_string())]) else {
        return;
    };
    let (tm_bytes, tm_blocks) = counts.tracemalloc;
    assert_within_1_percent("bytes", counts.leakprof.0, tm_bytes);
    assert_within_1_percent("blocks", counts.leakprof.1, tm_blocks);
}

/// tracemalloc started by the program (its hooks around leakprof's):
/// leakprof also records tracemalloc's own trace records, one per traced
/// block, and nothing twice.
#[test]
fn live_bytes_match_tracemalloc_started_inside_plus_its_trace_records() {
    let Some(counts) = counts_with(&[("LEAKPROF_TEST_TRACEMALLOC_FRAMES", "1".to_string())]) else {
        return;
    };
    let (tm_bytes, tm_blocks) = counts.tracemalloc;
    assert_within_1_percent(
        "bytes",
        counts.leakprof.0,
        tm_bytes + TRACE_RECORD_BYTES * tm_blocks,
    );
    assert_within_1_percent("blocks", counts.leakprof.1, 2 * tm_blocks);
}

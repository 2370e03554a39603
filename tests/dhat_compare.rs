//! The DHAT export against dhat-rs itself: a tiny known workload runs under
//! dhat-rs (its own process: dhat's allocator is the global allocator
//! here), and the same allocations, described as a leakprof profile, go
//! through leakprof's exporter. Both files must have the same keys, shape
//! and totals, so the DHAT viewer reads ours as it reads theirs.

mod support;

use std::hint::black_box;

use leakprof::analysis::Model;
use leakprof::render::{self, Command, Options};
use serde_json::Value;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const KEPT: u64 = 10;
const KEPT_SIZE: u64 = 1000;
const TEMP: u64 = 5;
const TEMP_SIZE: u64 = 4096;

/// Ten kept boxes in a container, then five temporary buffers freed one
/// by one. Returns what must stay alive until dhat-rs writes its file.
// Ten separate blocks are the point: `Vec<[u8; N]>` would be one block.
#[allow(clippy::vec_box)]
#[inline(never)]
fn workload() -> Vec<Box<[u8; KEPT_SIZE as usize]>> {
    let mut kept = Vec::with_capacity(KEPT as usize);
    for _ in 0..KEPT {
        kept.push(black_box(Box::new([0u8; KEPT_SIZE as usize])));
    }
    for _ in 0..TEMP {
        let temp = black_box(vec![1u8; TEMP_SIZE as usize]);
        drop(black_box(temp));
    }
    kept
}

fn ours() -> Value {
    let container = KEPT * std::mem::size_of::<usize>() as u64;
    let mut b = support::Builder::new("dhat_compare");
    let alloc = b.frame("__rust_alloc", None, None);
    let main = b.frame(
        "dhat_compare::main",
        Some("tests/dhat_compare.rs"),
        Some(60),
    );
    let work = b.frame(
        "dhat_compare::workload",
        Some("tests/dhat_compare.rs"),
        Some(30),
    );
    let boxes = b.stack(&[alloc, work, main]);
    let vec = b.frame("<alloc::vec::Vec<u8>>::from_elem", None, None);
    let temps_vec = b.stack(&[alloc, vec, work, main]);
    let cont = b.stack(&[alloc, main]);
    b.alloc(cont, 0, 1, container, 1);
    b.alloc(boxes, 0, KEPT, KEPT_SIZE, KEPT);
    b.alloc(temps_vec, 0, TEMP, TEMP_SIZE, 0);
    // At the global peak one temporary buffer was alive beside the rest.
    b.p.stack_stats[temps_vec as usize].at_peak = leakprof::format::Amount {
        bytes: TEMP_SIZE,
        blocks: 1,
    };
    let p = b.finish();
    let r = render::find(Command::Export, "dhat").unwrap();
    let bytes = render::render_to_vec(r, &Model::new(&p), &Options::default()).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn keys(v: &Value) -> Vec<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

fn sum(v: &Value, key: &str) -> u64 {
    v["pps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pp| pp[key].as_u64().unwrap())
        .sum()
}

fn is_dhat_frame(s: &str) -> bool {
    // "0x55d...: name (file:line:col)"
    let Some((addr, rest)) = s.split_once(": ") else {
        return false;
    };
    addr.starts_with("0x")
        && rest.ends_with(')')
        && rest.contains(" (")
        && rest
            .rsplit(':')
            .nth(1)
            .is_some_and(|l| l.parse::<u32>().is_ok())
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dhat-heap.json");
    let profiler = dhat::Profiler::builder().file_name(&path).build();
    let kept = workload();
    let stats = dhat::HeapStats::get();
    drop(profiler);
    drop(kept);
    let theirs: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let ours = ours();

    // The same keys, in the same order, at the top and in every pp.
    assert_eq!(keys(&ours), keys(&theirs), "top-level keys");
    for pp in ours["pps"]
        .as_array()
        .unwrap()
        .iter()
        .chain(theirs["pps"].as_array().unwrap())
    {
        assert_eq!(keys(pp), keys(&theirs["pps"][0]), "pp keys");
    }
    for k in [
        "dhatFileVersion",
        "mode",
        "verb",
        "bklt",
        "bkacc",
        "tu",
        "Mtu",
        "tuth",
    ] {
        assert_eq!(ours[k], theirs[k], "{k}");
    }
    assert_eq!(ours["ftbl"][0], "[root]");
    assert_eq!(theirs["ftbl"][0], "[root]");
    for f in ours["ftbl"]
        .as_array()
        .unwrap()
        .iter()
        .skip(1)
        .chain(theirs["ftbl"].as_array().unwrap().iter().skip(1))
    {
        assert!(is_dhat_frame(f.as_str().unwrap()), "frame string {f}");
    }
    // The same totals: dhat-rs's own counters, its file, and our export.
    let container = KEPT * std::mem::size_of::<usize>() as u64;
    assert_eq!(
        stats.total_blocks,
        KEPT + TEMP + 1,
        "the workload allocates what it says"
    );
    assert_eq!(
        stats.total_bytes,
        KEPT * KEPT_SIZE + TEMP * TEMP_SIZE + container
    );
    for (key, want) in [
        ("tb", stats.total_bytes),
        ("tbk", stats.total_blocks),
        ("eb", stats.curr_bytes as u64),
        ("ebk", stats.curr_blocks as u64),
        ("gb", stats.max_bytes as u64),
        ("gbk", stats.max_blocks as u64),
    ] {
        assert_eq!(sum(&theirs, key), want, "dhat-rs {key}");
        assert_eq!(sum(&ours, key), want, "leakprof {key}");
    }
    println!("1 passed, 0 failed");
}

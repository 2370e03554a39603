//! `tests/dhat_compare.rs`'s workload under dhat-rs, the global allocator
//! of this process. Writes dhat-rs's JSON to the path given.

// The test reads `SITES`; `Kept` is held, not read.
#[allow(dead_code)]
#[path = "workload.rs"]
mod workload;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: dhat-compare-dhat OUT.json");
    let profiler = dhat::Profiler::builder()
        .file_name(&path)
        .trim_backtraces(None)
        .build();
    let kept = workload::run();
    // The file is written here, with the kept blocks still alive (t-end).
    drop(profiler);
    drop(kept);
}

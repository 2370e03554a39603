//! `tests/dhat_compare.rs`'s workload under leakprof's recorder, the
//! global allocator of this process. Writes the profile to the path given.

// The test reads `SITES`; `Kept` is held, not read.
#[allow(dead_code)]
#[path = "workload.rs"]
mod workload;

#[global_allocator]
static ALLOC: leakprof::LeakAlloc = leakprof::LeakAlloc::system();

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: dhat-compare-leakprof OUT.json");
    let recorder = leakprof::Recorder::start(leakprof::Options::default()).expect("recorder");
    let kept = workload::run();
    // The profile is taken here, with the kept blocks still alive (t-end).
    let profile = recorder.stop();
    drop(kept);
    profile.save(&path).expect("saving the profile");
}

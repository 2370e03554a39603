//! Recorder heap tests, one process per case (see `support/harness.rs`).

#[global_allocator]
static GLOBAL: leakprof::LeakAlloc = leakprof::LeakAlloc::system();

mod cases;
#[path = "../support/harness.rs"]
mod harness;

fn main() -> std::process::ExitCode {
    harness::run(cases::ALL)
}

//! The `leakprof` command. Everything lives in the library; this file only
//! installs the recording allocator (so `leakprof run` can profile the lab
//! worker in-process) and maps the outcome to an exit code.

#[global_allocator]
static GLOBAL: leakprof::LeakAlloc = leakprof::LeakAlloc::system();

fn main() -> std::process::ExitCode {
    leakprof::cli::main()
}

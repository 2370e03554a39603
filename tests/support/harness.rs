//! The one-process-per-case harness of the recorder test binaries.
//!
//! The global allocator is process-wide, so every case runs in a process of
//! its own (as dhat-rs does): without arguments the binary re-runs itself
//! once per case with `--case NAME` and reports like the test harness.
//! `cargo test --test BINARY -- NAME` runs the cases whose name contains
//! NAME.

use std::process::{Command, ExitCode};
use std::time::Instant;

pub type Case = (&'static str, fn());

/// Runs `cases` as the test harness would, each in a fresh process: with
/// `--case NAME` runs that case here; with `--list` lists them; otherwise
/// re-runs this binary once per case (optionally those whose name contains
/// the first free argument) and reports.
pub fn run(cases: &[Case]) -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--case") {
        let name = args.get(i + 1).map(String::as_str).unwrap_or("");
        return match cases.iter().find(|(n, _)| *n == name) {
            Some((_, f)) => {
                f();
                ExitCode::SUCCESS
            }
            None => {
                eprintln!("no case named {name:?}");
                ExitCode::from(2)
            }
        };
    }
    if args.iter().any(|a| a == "--list") {
        for (name, _) in cases {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    let filter = args.iter().skip(1).find(|a| !a.starts_with('-'));
    let exe = std::env::current_exe().expect("own path");
    let selected: Vec<_> = cases
        .iter()
        .filter(|(n, _)| filter.map_or(true, |f| n.contains(f.as_str())))
        .collect();
    println!(
        "\nrunning {} recorder cases (one process each)",
        selected.len()
    );
    let mut failed = Vec::new();
    for (name, _) in &selected {
        let t0 = Instant::now();
        let out = Command::new(&exe)
            .args(["--case", name])
            .output()
            .expect("spawn case process");
        let secs = t0.elapsed().as_secs_f64();
        if out.status.success() {
            println!("test {name} ... ok ({secs:.2}s)");
        } else {
            println!("test {name} ... FAILED ({secs:.2}s, {})", out.status);
            failed.push((name, out));
        }
    }
    for (name, out) in &failed {
        println!(
            "\n---- {name} stdout ----\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        println!(
            "---- {name} stderr ----\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!(
        "\ntest result: {}. {} passed; {} failed",
        if failed.is_empty() { "ok" } else { "FAILED" },
        selected.len() - failed.len(),
        failed.len()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

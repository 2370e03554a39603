//! The typed heap walk against planted facts (issue 10).
//!
//! This binary is its own harness: it loads the DWARF types of itself
//! (built with full debug info, as every dev and test build is), then runs
//! each case in `cases` in turn, printing like the test harness.
//! `cargo test --test types -- NAME` runs the cases whose name contains
//! NAME. The global allocator is a small tracker (see `tracker`) standing
//! in for the recorder's live table.

mod cases;
mod trace;
mod tracker;

use std::process::ExitCode;
use std::time::Instant;

use leakprof::record::types::TypeMaps;

#[global_allocator]
static GLOBAL: tracker::Tracker = tracker::Tracker;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for (name, _) in cases::ALL {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    let filter = args.iter().find(|a| !a.starts_with('-'));
    let t0 = Instant::now();
    let maps = TypeMaps::load();
    let s = maps.stats();
    println!(
        "\ntype maps: {} types from {} units in {:.2}s",
        s.types,
        s.units,
        t0.elapsed().as_secs_f64()
    );
    let selected: Vec<_> = cases::ALL
        .iter()
        .filter(|(n, _)| filter.map_or(true, |f| n.contains(f.as_str())))
        .collect();
    println!("running {} types cases", selected.len());
    let mut failed = Vec::new();
    for (name, case) in &selected {
        let result = std::panic::catch_unwind(|| case(&maps))
            .unwrap_or_else(|_| Err("panicked".to_string()));
        match result {
            Ok(()) => println!("test {name} ... ok"),
            Err(e) => {
                println!("test {name} ... FAILED\n    {e}");
                failed.push(name);
            }
        }
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

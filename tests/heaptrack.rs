//! Cross-check: heaptrack and leakprof watch the same leaking program
//! (examples/leaky.rs, 100+ MiB leaked from two functions) and must agree on
//! the bytes leaked from those functions within 1%.
//!
//! heaptrack must be installed (`.ci/run` installs it). Without it the test
//! is skipped, except with `CI=true`, where it fails.

mod support;

use std::process::Command;

use support::example;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Sum of the folded-stack costs whose stack mentions one of `functions`.
fn folded_sum(folded: &str, functions: &[&str]) -> u64 {
    folded
        .lines()
        .filter(|l| functions.iter().any(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn leaked_bytes_agree_with_heaptrack_within_one_percent() {
    if !(have("heaptrack") && have("heaptrack_print")) {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("heaptrack is not installed (CI=true: .ci/run must install it)");
        }
        eprintln!("skipped: heaptrack is not installed");
        return;
    }
    let leaky = example("leaky");
    let dir = tempfile::tempdir().unwrap();
    let profile_path = dir.path().join("leaky.json");
    let trace = dir.path().join("trace");
    let out = Command::new("heaptrack")
        .arg("-o")
        .arg(&trace)
        .arg(&leaky)
        .arg(&profile_path)
        .output()
        .expect("run heaptrack");
    assert!(
        out.status.success(),
        "heaptrack failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recorded = ["zst", "gz"]
        .iter()
        .map(|ext| trace.with_extension(ext))
        .find(|p| p.exists())
        .expect("heaptrack wrote its trace");
    let folded_path = dir.path().join("leaked.folded");
    let status = Command::new("heaptrack_print")
        .args(["--flamegraph-cost-type", "leaked", "-F"])
        .arg(&folded_path)
        .arg(&recorded)
        .output()
        .expect("run heaptrack_print");
    assert!(status.status.success());
    let folded = std::fs::read_to_string(&folded_path).unwrap();
    let functions = ["leak_big_blocks", "leak_small_blocks"];
    let heaptrack_bytes = folded_sum(&folded, &functions);

    let profile = leakprof::format::load(&profile_path).unwrap();
    let leakprof_bytes: u64 = profile
        .live
        .iter()
        .filter(|g| {
            profile.stacks[g.stack as usize].frames.iter().any(|&f| {
                functions
                    .iter()
                    .any(|name| profile.frames[f as usize].function.contains(name))
            })
        })
        .map(|g| g.bytes)
        .sum();
    println!("heaptrack: {heaptrack_bytes} bytes leaked; leakprof: {leakprof_bytes} bytes live");
    assert!(
        leakprof_bytes >= 100 << 20,
        "the program leaks at least 100 MiB"
    );
    let diff = (leakprof_bytes as f64 - heaptrack_bytes as f64).abs() / heaptrack_bytes as f64;
    assert!(
        diff <= 0.01,
        "leakprof {leakprof_bytes} vs heaptrack {heaptrack_bytes}: {:.3}% apart",
        diff * 100.0
    );
}

//! The Python examples (examples/python/, issue 11) run as the README
//! says, under `leakprof run`, on Dramatiq 2.0.0 and a real Redis.
//!
//! The interpreter is `support::python::dramatiq()`'s, Redis is
//! `support::redis`'s (each skipped without, failing under CI=true).

mod support;

use std::ffi::OsStr;

const NESTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python/nested.py");

/// The seed's nested scenario, small (4 MiB payloads, 3 retries): every
/// failed attempt keeps its outer error and, through `__cause__`, the
/// inner one, so what survives grows by two payloads per retry, as the
/// run's summary.json says.
#[test]
fn nested_example_leaks_two_payloads_per_retry_on_dramatiq_2_0_0() {
    const PAYLOAD_MIB: u64 = 4;
    let Some(python) = support::python::dramatiq() else {
        return;
    };
    let Some(redis) = support::redis::RedisServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nested");
    let url = redis.url();
    let payload_mib = PAYLOAD_MIB.to_string();
    let args = [
        python.as_os_str(),
        OsStr::new(NESTED),
        OsStr::new("--payload-mib"),
        OsStr::new(&payload_mib),
        OsStr::new("--retries"),
        OsStr::new("3"),
        OsStr::new("--redis-url"),
        OsStr::new(&url),
    ];
    let stdout = support::python::leakprof_run(&out, &args, &[]);
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("message ")).count(),
        1,
        "one message sent: {stdout}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["retries"], 3, "{summary}");
    let per_retry = summary["leak_per_retry_bytes"]
        .as_f64()
        .unwrap_or_else(|| panic!("leak per retry measured: {summary}"));
    let payloads = per_retry / (PAYLOAD_MIB << 20) as f64;
    assert!(
        (payloads - 2.0).abs() < 0.02,
        "leak per retry {payloads:.4} payloads, two expected"
    );
    let r2 = summary["leak_per_retry_r2"].as_f64().unwrap();
    assert!(r2 >= 0.99, "r² {r2}");

    // Four attempts, each keeping one payload from each of the actor's
    // two lines.
    let profile = leakprof::format::load(out.join("profile.json")).unwrap();
    let mut per_line = std::collections::BTreeMap::<u32, u64>::new();
    for group in profile.live.iter().filter(|g| g.bytes >= PAYLOAD_MIB << 20) {
        let top = profile.stacks[group.stack as usize].frames[0];
        let frame = &profile.frames[top as usize];
        assert_eq!(frame.function, "fail_nested");
        assert!(frame
            .file
            .as_deref()
            .is_some_and(|f| f.ends_with("nested.py")));
        *per_line.entry(frame.line.unwrap_or(0)).or_default() += group.blocks;
    }
    let blocks: Vec<u64> = per_line.values().copied().collect();
    assert_eq!(blocks, [4, 4], "payload blocks per line: {per_line:?}");
}

//! The reporting commands, run as the built binary: they work on profiles
//! and run directories, and every bad input gives a one-line error that
//! names the file, exit code 2, and no panic.

mod support;

use std::process::{Command, Output};

use support::exception_run;

fn leakprof(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_leakprof"))
        .args(args)
        .output()
        .expect("run leakprof")
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    /// Two `leakprof run`-style directories (original, fixed) and the bad
    /// files every command is tried on.
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        for (name, leaks) in [("exception-original", true), ("exception-fixed", false)] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
            exception_run(leaks)
                .save(dir.path().join(name).join("profile.json"))
                .unwrap();
        }
        let good = std::fs::read(dir.path().join("exception-original/profile.json")).unwrap();
        std::fs::write(dir.path().join("truncated.json"), &good[..good.len() / 2]).unwrap();
        std::fs::write(
            dir.path().join("corrupt.json"),
            b"{\"format\": \"leakprof-profile\", \"version\": 1, \"meta\": nope}",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("wrong-kind.json"),
            br#"{"format": "speedscope", "version": 1}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("empty.json"), b"").unwrap();
        std::fs::write(
            dir.path().join("binary.json"),
            [0u8, 159, 146, 150, 255, 0, 1],
        )
        .unwrap();
        let mut future: serde_json::Value = serde_json::from_slice(&good).unwrap();
        future["version"] = 99.into();
        std::fs::write(
            dir.path().join("future.json"),
            serde_json::to_vec(&future).unwrap(),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("not-a-run")).unwrap();
        Fixture { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// Every reporting command with `{}` where the profile goes.
fn commands(fx: &Fixture) -> Vec<Vec<String>> {
    let good = fx.path("exception-fixed");
    let out = fx.path("out.file");
    let cmds: Vec<Vec<&str>> = vec![
        vec!["report", "{}"],
        vec!["report", "{}", "--format", "json"],
        vec!["report", &good, "--relative-to", "{}"],
        vec!["flamegraph", "{}", "-o", &out],
        vec!["diff", "{}", &good],
        vec!["diff", &good, "{}"],
        vec!["merge", &good, "{}", "-o", &out],
        vec!["check", "{}", "--max-surviving", "1GiB"],
        vec!["export", "{}", "--format", "dhat", "-o", &out],
        vec!["export", "{}", "--format", "pprof", "-o", &out],
        vec!["plot", "{}", "-o", &out],
    ];
    cmds.into_iter()
        .map(|c| c.into_iter().map(str::to_string).collect())
        .collect()
}

fn assert_clean_error(out: &Output, file: &str, what: &str, cmd: &[String]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{cmd:?} on {what}: exit {:?}, stderr {stderr}",
        out.status
    );
    assert!(
        !stderr.contains("panicked"),
        "{cmd:?} on {what} panicked: {stderr}"
    );
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{cmd:?} on {what}: not one line: {stderr}"
    );
    assert!(
        stderr.contains(file),
        "{cmd:?} on {what}: error does not name {file}: {stderr}"
    );
}

#[test]
fn every_command_rejects_bad_files_with_one_line_naming_the_file() {
    let fx = Fixture::new();
    let cases = [
        ("missing.json", "a missing file", "No such file"),
        ("truncated.json", "a truncated profile", "truncated"),
        ("corrupt.json", "a corrupt profile", "corrupt"),
        (
            "wrong-kind.json",
            "another kind of JSON",
            "not a leakprof profile",
        ),
        ("empty.json", "an empty file", "empty"),
        ("binary.json", "binary garbage", "corrupt"),
        (
            "future.json",
            "a future version",
            "format version 99 (written by leakprof 0.1.0), newer than this leakprof",
        ),
        (
            "not-a-run",
            "a directory without profile.json",
            "without a profile.json",
        ),
    ];
    for cmd in commands(&fx) {
        for (file, what, says) in cases {
            let path = fx.path(file);
            let args: Vec<String> = cmd.iter().map(|a| a.replace("{}", &path)).collect();
            let out = leakprof(&args.iter().map(String::as_str).collect::<Vec<_>>());
            assert_clean_error(&out, file, what, &args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains(says),
                "{args:?} on {what}: expected {says:?} in {stderr}"
            );
        }
    }
}

#[test]
fn plot_rejects_bad_csv_files_naming_them() {
    let fx = Fixture::new();
    std::fs::write(
        fx.dir.path().join("bad.csv"),
        "time_s,rss_mib,live_mib\n0.1,12,oops\n",
    )
    .unwrap();
    std::fs::write(fx.dir.path().join("other.csv"), "a,b,c\n1,2,3\n").unwrap();
    for (file, says) in [
        ("bad.csv", "line 2: live_mib \"oops\" is not a number"),
        ("other.csv", "not a leakprof timeline CSV"),
        ("nope.csv", "No such file"),
    ] {
        let out = leakprof(&["plot", &fx.path(file), "-o", &fx.path("x.svg")]);
        assert_clean_error(&out, file, file, &["plot".to_string()]);
        assert!(String::from_utf8_lossy(&out.stderr).contains(says));
    }
}

#[test]
fn report_reads_a_run_directory_and_prints_guppys_table() {
    let fx = Fixture::new();
    let out = leakprof(&["report", &fx.path("exception-original"), "--top", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("Partition of a set of 10 allocations. Total size = 528656 bytes.\n"));
    assert!(text.contains("<2 more rows. Use --top 4 to view them.>"));
    assert!(text.contains("Leak per retry: 128.1 KiB"));
    let json = leakprof(&[
        "report",
        &fx.path("exception-original/profile.json"),
        "--format",
        "json",
        "--by",
        "type",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["by"], "type");
    assert_eq!(v["rows"][0]["kind"], "Vec<u8>");
    let rel = leakprof(&[
        "report",
        &fx.path("exception-original"),
        "--relative-to",
        &fx.path("exception-fixed"),
        "--format",
        "csv",
    ]);
    let csv = String::from_utf8(rel.stdout).unwrap();
    assert!(csv.starts_with("index,count,count_pct,size,size_pct,cumulative,cumulative_pct,kind\n"));
    assert!(csv.contains(",393216,"), "{csv}");
}

#[test]
fn check_exits_1_with_a_one_line_reason_on_a_violated_limit() {
    let fx = Fixture::new();
    let fail = leakprof(&[
        "check",
        &fx.path("exception-original"),
        "--max-leak-per-retry",
        "64KiB",
    ]);
    assert_eq!(fail.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&fail.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1);
    assert!(
        stderr.contains("leak per retry 128.1 KiB exceeds the limit 64.0 KiB"),
        "{stderr}"
    );
    let pass = leakprof(&[
        "check",
        &fx.path("exception-fixed"),
        "--max-leak-per-retry",
        "64KiB",
        "--owner",
        "error value",
        "--max-owned",
        "0",
    ]);
    assert_eq!(
        pass.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&pass.stderr)
    );
    let owned = leakprof(&[
        "check",
        &fx.path("exception-original"),
        "--owner",
        "error value",
        "--max-owned",
        "0",
    ]);
    assert_eq!(owned.status.code(), Some(1));
    let unmeasurable = leakprof(&[
        "check",
        &fx.path("exception-original"),
        "--max-leak-per-retry",
        "1MiB",
        "--warmup",
        "5",
    ]);
    assert_eq!(unmeasurable.status.code(), Some(2));
    let bad_size = leakprof(&[
        "check",
        &fx.path("exception-original"),
        "--max-surviving",
        "lots",
    ]);
    assert_eq!(bad_size.status.code(), Some(2));
    let no_limit = leakprof(&["check", &fx.path("exception-original")]);
    assert_eq!(no_limit.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&no_limit.stderr).contains("no limit given"));
}

#[test]
fn flamegraph_diff_merge_export_and_plot_write_their_files() {
    let fx = Fixture::new();
    let (orig, fixed) = (fx.path("exception-original"), fx.path("exception-fixed"));
    let ok = |args: &[&str]| {
        let out = leakprof(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    ok(&[
        "flamegraph",
        &orig,
        "--group-by",
        "retry",
        "-o",
        &fx.path("f.svg"),
    ]);
    assert!(std::fs::read_to_string(fx.path("f.svg"))
        .unwrap()
        .contains("retry_1"));
    let folded = ok(&["flamegraph", &orig, "--folded", "--metric", "allocated"]);
    assert!(String::from_utf8(folded.stdout)
        .unwrap()
        .contains("allocate_payload"));
    let bad = leakprof(&[
        "flamegraph",
        &orig,
        "--metric",
        "peak",
        "--group-by",
        "task",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    let diff = ok(&["diff", &orig, &fixed, "-o", &fx.path("diff.svg")]);
    let table = String::from_utf8(diff.stdout).unwrap();
    assert!(
        table.starts_with("| Metric | original | fixed | Improvement |"),
        "{table}"
    );
    assert!(table.contains("| Behavior | continuous accumulation | stable | |"));
    assert!(std::fs::read_to_string(fx.path("diff.svg"))
        .unwrap()
        .contains("<svg"));
    ok(&["merge", &orig, &fixed, "-o", &fx.path("merged.json")]);
    let merged = leakprof::format::load(fx.path("merged.json")).unwrap();
    assert_eq!(
        merged.totals.live.bytes,
        exception_run(true).totals.live.bytes + exception_run(false).totals.live.bytes
    );
    for format in ["folded", "dhat", "pprof", "timeline-csv"] {
        ok(&[
            "export",
            &orig,
            "--format",
            format,
            "-o",
            &fx.path(&format!("x.{format}")),
        ]);
        assert!(
            std::fs::metadata(fx.path(&format!("x.{format}")))
                .unwrap()
                .len()
                > 0
        );
    }
    ok(&[
        "plot",
        &fx.path("x.timeline-csv"),
        &fixed,
        "--label",
        "original",
        "-o",
        &fx.path("memory.svg"),
    ]);
    let svg = std::fs::read_to_string(fx.path("memory.svg")).unwrap();
    assert!(svg.contains("original: RSS") && svg.contains("fixed: RSS"));
}

#[test]
fn every_command_has_examples_in_its_help() {
    for cmd in [
        "report",
        "flamegraph",
        "plot",
        "diff",
        "merge",
        "check",
        "export",
    ] {
        let out = leakprof(&[cmd, "--help"]);
        assert!(out.status.success());
        let help = String::from_utf8(out.stdout).unwrap();
        assert!(help.contains("Examples:"), "{cmd} --help has no examples");
        assert!(
            help.contains(&format!("leakprof {cmd}")),
            "{cmd} --help examples do not run {cmd}"
        );
    }
}

/// The example service's profile (a real run): its largest objects are
/// reachable (the registered statics) and its 200 subscription cycles are
/// small, so `--unreachable --largest 3` must look past the giants.
#[test]
fn retainers_unreachable_with_largest_lists_the_cycles_largest_first() {
    let profile = concat!(env!("CARGO_MANIFEST_DIR"), "/profiles/leaky-service.json");
    let run = |args: &[&str]| {
        let out = leakprof(&[&["retainers", profile], args].concat());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let capped = run(&["--unreachable", "--largest", "3"]);
    // The chains, then the line saying how the graph was read.
    let (capped, coverage) = capped.rsplit_once("\n\n").unwrap();
    assert!(coverage.starts_with("Graph: "), "{coverage}");
    let chains: Vec<&str> = capped
        .split("\n\n")
        .filter(|c| !c.trim().is_empty())
        .collect();
    assert_eq!(chains.len(), 3, "{capped}");
    for chain in &chains {
        assert!(
            chain
                .lines()
                .nth(1)
                .unwrap()
                .trim_start()
                .starts_with("unreachable cycle #"),
            "{chain}"
        );
    }
    // The same three as the head of the uncapped list (largest first),
    // which has a chain for every one of the 200 cycles.
    let all = run(&["--unreachable", "--largest", "1000"]);
    assert!(all.starts_with(capped), "{all}");
    let cycles: std::collections::BTreeSet<&str> = all
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("unreachable cycle #"))
        .map(|l| l.split(':').next().unwrap())
        .collect();
    assert_eq!(cycles.len(), 200, "{all}");
}

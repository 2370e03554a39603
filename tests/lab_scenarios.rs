//! What issue 4 says the lab must show, measured again on the real
//! `leakprof` binary with small payloads (1 MiB instead of the seeds'
//! 128 MiB, 1 ms backoffs, 20 retries, so every run finishes in well under a
//! second):
//!
//! - `original`: the error-value scenarios and `retry-args` leak one payload
//!   per retry, `nested` two, `concurrent` one per retry of each of its five tasks; `sleep` and
//!   `sleep-no-ref` do not grow; `large-results` holds each result until its
//!   TTL, then drops it.
//! - `fixed`: nothing leaks across retries (on the same sizes as the
//!   `original` runs, so each pair of tests can only both pass if the
//!   variant makes the difference); `large-results` retains until its TTL
//!   exactly as with `original`.
//! - the output directory is complete and well-formed, `--max-rss` and
//!   signals stop a run cleanly with its profile written, SIGUSR1 snapshots,
//!   and bad flags are refused with exit code 2.
//!
//! Each run is its own process, so every heap figure is that run's alone.
#![cfg(feature = "cli")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use leakprof::format::{attributes, events, Profile, TimelinePoint};
use serde_json::Value;

const MIB: u64 = 1 << 20;
/// Payload of every scenario run here.
const PAYLOAD: u64 = MIB;
/// Retries before a message is dead-lettered: enough points for a slope.
/// The dead-lettering attempt schedules no retry, so in `retry-args` it adds
/// no retry closure: that last flat point pulls the fitted slope down by
/// 6 / ((R + 1)(R + 2)) of a payload, 1.3% at 20 retries (7% at 8).
const RETRIES: u32 = 20;

fn leakprof() -> Command {
    Command::new(env!("CARGO_BIN_EXE_leakprof"))
}

/// A finished run: its output directory, profile and summary.
struct Run {
    label: String,
    dir: tempfile::TempDir,
    profile: Profile,
    summary: Value,
}

impl Run {
    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn attribute(&self, key: &str) -> &str {
        self.profile
            .meta
            .attributes
            .get(key)
            .map_or("", String::as_str)
    }

    fn number(&self, key: &str) -> f64 {
        self.summary[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{}: summary.json has no number {key}", self.label))
    }

    fn points(&self, event: &str) -> Vec<&TimelinePoint> {
        self.profile
            .timeline
            .iter()
            .filter(|p| p.event.as_deref() == Some(event))
            .collect()
    }

    fn in_payloads(bytes: f64) -> String {
        format!("{:.3} payloads", bytes / PAYLOAD as f64)
    }
}

fn load_outputs(label: String, dir: tempfile::TempDir) -> Run {
    let profile = leakprof::format::load(dir.path().join("profile.json"))
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    let summary = std::fs::read(dir.path().join("summary.json"))
        .unwrap_or_else(|e| panic!("{label}: reading summary.json: {e}"));
    let summary =
        serde_json::from_slice(&summary).unwrap_or_else(|e| panic!("{label}: summary.json: {e}"));
    Run {
        label,
        dir,
        profile,
        summary,
    }
}

fn assert_ran(label: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{label} exited with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `leakprof run` of a scenario with the small sizes above, to completion.
fn run_scenario(scenario: &str, middleware: &str, extra: &[&str]) -> Run {
    run_scenario_with(scenario, middleware, RETRIES, extra)
}

fn run_scenario_with(scenario: &str, middleware: &str, retries: u32, extra: &[&str]) -> Run {
    let label = format!("{scenario} ({middleware})");
    let dir = tempfile::tempdir().unwrap();
    let output = leakprof()
        .args(["--quiet", "run", "--scenario", scenario])
        .args(["--middleware", middleware])
        .args(["--size", &(PAYLOAD / MIB).to_string()])
        .args(["--retries", &retries.to_string()])
        .args(["--min-backoff", "1ms", "--max-backoff", "1ms"])
        .args(["--sleep", "300ms", "--timeline-interval", "20ms"])
        // A bound, not a wait: every run here completes long before.
        .args(["--duration", "60s"])
        .args(extra)
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_ran(&label, &output);
    let run = load_outputs(label, dir);
    assert_eq!(
        run.attribute(attributes::STOP_REASON),
        "completed",
        "{}: the run must end because every message was settled",
        run.label
    );
    run
}

/// `original` leaks `payloads` payloads per retry: the summary's slope is
/// within 5% of it, the line is straight, and what survives is the leak.
fn assert_leaks_per_retry(scenario: &str, payloads: f64) {
    let run = run_scenario(scenario, "original", &[]);
    let expected = payloads * PAYLOAD as f64;
    let slope = run.number("leak_per_retry_bytes");
    assert!(
        (slope - expected).abs() <= 0.05 * expected,
        "{}: leaks {} per retry, expected {} (within 5%)",
        run.label,
        Run::in_payloads(slope),
        Run::in_payloads(expected)
    );
    let r2 = run.number("leak_per_retry_r2");
    assert!(r2 >= 0.95, "{}: r² {r2} is not a steady leak", run.label);
    let surviving = run.number("surviving_bytes");
    assert!(
        surviving >= expected * RETRIES as f64,
        "{}: only {} survive {RETRIES} retries",
        run.label,
        Run::in_payloads(surviving)
    );
    assert_eq!(
        run.summary["behaviour"], "continuous_accumulation",
        "{}",
        run.label
    );
}

/// `fixed` does not leak across retries: live bytes at the `after failure`
/// points grow by less than one payload over the run, and less than one
/// payload survives beyond the `held` payloads the broker legitimately keeps
/// at the end (a dead letter carrying its payload).
fn assert_no_leak_across_retries(scenario: &str, tasks: u64, held: u64) {
    let run = run_scenario(scenario, "fixed", &[]);
    let failures = run.points(events::AFTER_FAILURE);
    assert_eq!(
        failures.len() as u64,
        tasks * (RETRIES as u64 + 1),
        "{}: every attempt of every task must fail and be marked",
        run.label
    );
    // The line fitted through the `after failure` points across all
    // retries. With several tasks at once, other tasks' payloads in flight
    // make single points jump by up to tasks - 1 payloads; the lowest point
    // of each retry round is the one with nothing in flight, so the line is
    // fitted through those.
    let slope = if tasks == 1 {
        run.number("leak_per_retry_bytes")
    } else {
        let mut lowest: std::collections::BTreeMap<u32, u64> = std::collections::BTreeMap::new();
        for p in &failures {
            let e = lowest.entry(p.retry.unwrap_or(0)).or_insert(u64::MAX);
            *e = (*e).min(p.live_bytes);
        }
        let points: Vec<(f64, f64)> = lowest.iter().map(|(&r, &l)| (r as f64, l as f64)).collect();
        leakprof::analysis::slope::fit_line(&points)
            .unwrap_or_else(|| panic!("{}: no line through {points:?}", run.label))
            .slope
    };
    let growth = slope * RETRIES as f64;
    assert!(
        growth.abs() < PAYLOAD as f64,
        "{}: live bytes grow by {} over {RETRIES} retries",
        run.label,
        Run::in_payloads(growth)
    );
    if tasks == 1 {
        // One task on one thread: nothing is in flight at those points, so
        // every one of them is within a payload of every other.
        let live: Vec<u64> = failures.iter().map(|p| p.live_bytes).collect();
        let spread = live.iter().max().unwrap() - live.iter().min().unwrap();
        assert!(
            spread < PAYLOAD,
            "{}: live bytes after failures span {}",
            run.label,
            Run::in_payloads(spread as f64)
        );
    }
    let surviving = run.number("surviving_bytes");
    assert!(
        surviving < ((held + 1) * PAYLOAD) as f64,
        "{}: {} survive the run",
        run.label,
        Run::in_payloads(surviving)
    );
    assert_eq!(run.summary["behaviour"], "stable", "{}", run.label);
}

#[test]
fn original_exception_leaks_one_payload_per_retry() {
    assert_leaks_per_retry("exception", 1.0);
}

#[test]
fn original_traceback_leaks_one_payload_per_retry() {
    assert_leaks_per_retry("traceback", 1.0);
}

#[test]
fn original_stream_leaks_one_payload_per_retry() {
    assert_leaks_per_retry("stream", 1.0);
}

#[test]
fn original_context_manager_leaks_one_payload_per_retry() {
    assert_leaks_per_retry("context-manager", 1.0);
}

#[test]
fn original_retry_args_leaks_one_payload_per_retry() {
    assert_leaks_per_retry("retry-args", 1.0);
}

#[test]
fn original_nested_leaks_two_payloads_per_retry() {
    assert_leaks_per_retry("nested", 2.0);
}

/// 5 tasks fail at each retry number, interleaved, each leaking its
/// payload: the slope is fitted within each task from its tags, so a retry
/// leaks one payload (fitted through the marks, a retry round would read as
/// 5 payloads).
#[test]
fn original_concurrent_leaks_one_payload_per_task_retry() {
    assert_leaks_per_retry("concurrent", 1.0);
}

#[test]
fn fixed_exception_frees_the_error_value() {
    assert_no_leak_across_retries("exception", 1, 0);
}

#[test]
fn fixed_traceback_frees_the_frames_the_error_kept() {
    assert_no_leak_across_retries("traceback", 1, 0);
}

#[test]
fn fixed_stream_frees_the_buffer_the_error_carried() {
    assert_no_leak_across_retries("stream", 1, 0);
}

#[test]
fn fixed_context_manager_frees_the_guarded_data() {
    assert_no_leak_across_retries("context-manager", 1, 0);
}

/// The dead-lettered message still carries its payload argument at the end.
#[test]
fn fixed_retry_args_prunes_the_retry_closure() {
    assert_no_leak_across_retries("retry-args", 1, 1);
}

#[test]
fn fixed_nested_frees_both_chained_errors() {
    assert_no_leak_across_retries("nested", 1, 0);
}

#[test]
fn fixed_concurrent_frees_every_task_error() {
    assert_no_leak_across_retries("concurrent", 5, 0);
}

/// The retry history is what the run reports it holds: in `original`
/// every fired retry closure (each keeping its message: the leak above), in
/// `fixed` none, every fired retry counted as pruned.
#[test]
fn the_retry_history_keeps_every_fired_closure_only_in_original() {
    for (middleware, kept, pruned) in [("original", "3", "0"), ("fixed", "0", "3")] {
        let run = run_scenario_with("retry-args", middleware, 3, &[]);
        assert_eq!(
            (
                run.attribute("retry_closures_kept"),
                run.attribute("retries_pruned")
            ),
            (kept, pruned),
            "{}",
            run.label
        );
    }
}

/// A sleep scenario in both variants: it succeeds without retries, its
/// payload was really allocated, and nothing of it survives.
fn assert_flat_sleep(scenario: &str, holds_across_sleep: bool) {
    for middleware in ["original", "fixed"] {
        let run = run_scenario(scenario, middleware, &[]);
        assert!(
            run.points(events::AFTER_FAILURE).is_empty(),
            "{}",
            run.label
        );
        let allocated = run.points(events::AFTER_ALLOCATION);
        assert_eq!(allocated.len(), 1, "{}", run.label);
        assert!(allocated[0].live_bytes >= PAYLOAD, "{}", run.label);
        let success = run.points(events::AFTER_SUCCESS);
        assert_eq!(success.len(), 1, "{}", run.label);
        // The periodic samples taken well inside the 300 ms sleep.
        let from = allocated[0].t_ns + 50_000_000;
        let to = allocated[0].t_ns + 250_000_000;
        assert!(success[0].t_ns >= allocated[0].t_ns + 300_000_000);
        let asleep: Vec<u64> = run
            .profile
            .timeline
            .iter()
            .filter(|p| p.event.is_none() && p.t_ns > from && p.t_ns < to)
            .map(|p| p.live_bytes)
            .collect();
        assert!(
            asleep.len() >= 3,
            "{}: {} samples during a 300 ms sleep",
            run.label,
            asleep.len()
        );
        assert!(
            asleep
                .iter()
                .all(|&live| (live >= PAYLOAD) == holds_across_sleep),
            "{}: live bytes while asleep {asleep:?}",
            run.label
        );
        let surviving = run.number("surviving_bytes");
        assert!(
            surviving < PAYLOAD as f64,
            "{}: {} survive",
            run.label,
            Run::in_payloads(surviving)
        );
        let last = run.profile.timeline.last().unwrap().live_bytes;
        assert!(last < PAYLOAD, "{}: ends with {last} live bytes", run.label);
    }
}

#[test]
fn sleep_holds_its_payload_across_the_sleep_and_does_not_grow() {
    assert_flat_sleep("sleep", true);
}

#[test]
fn sleep_no_ref_drops_its_payload_before_the_sleep_and_does_not_grow() {
    assert_flat_sleep("sleep-no-ref", false);
}

/// `large-results` with 3 tasks and a 500 ms TTL: every result is held
/// (one payload each, no more) from its store until its TTL, then dropped,
/// and the run waits for that.
fn assert_results_retained_until_ttl(middleware: &str) {
    const TASKS: u64 = 3;
    const TTL_NS: u64 = 500_000_000;
    let run = run_scenario("large-results", middleware, &["--result-ttl", "500ms"]);
    let stored = run.points(events::AFTER_SUCCESS);
    let expired = run.points(events::RESULT_EXPIRED);
    assert_eq!(stored.len() as u64, TASKS, "{}", run.label);
    assert_eq!(
        expired.len() as u64,
        TASKS,
        "{}: every result must expire",
        run.label
    );
    for (s, e) in stored.iter().zip(&expired) {
        let held = e.t_ns - s.t_ns;
        assert!(
            (TTL_NS * 9 / 10..TTL_NS + 1_000_000_000).contains(&held),
            "{}: a result was held {} ms for a 500 ms TTL",
            run.label,
            held / 1_000_000
        );
    }
    // From the last store to the first expiry every result is held. The
    // expiry is marked just after its release (tens of microseconds), and
    // with a TTL that is a multiple of the sampling period a sample often
    // lands in that gap: samples this close before the mark are left out.
    const MARK_LAG_NS: u64 = 5_000_000;
    let (from, to) = (stored.last().unwrap().t_ns, expired[0].t_ns - MARK_LAG_NS);
    let held: Vec<u64> = run
        .profile
        .timeline
        .iter()
        .filter(|p| p.t_ns >= from && p.t_ns < to)
        .map(|p| p.live_bytes)
        .collect();
    // A few samples at least (fewer when a loaded machine slows the stores).
    assert!(held.len() >= 2, "{}: {} samples", run.label, held.len());
    // One sample may be over by one payload; every other must be in range.
    // Seen once in CI: one sample of 4.09 payloads. The cause is not
    // established; a sample reads the threads' counters one after another
    // (`hooks::live_now`), not at one instant, so a block allocated on one
    // thread and freed on another while it reads can be counted without
    // its free.
    let outside: Vec<u64> = held
        .iter()
        .copied()
        .filter(|live| !(TASKS * PAYLOAD..(TASKS + 1) * PAYLOAD).contains(live))
        .collect();
    let one_over = |live: &u64| (TASKS * PAYLOAD..(TASKS + 2) * PAYLOAD).contains(live);
    assert!(
        outside.len() <= 1 && outside.iter().all(one_over),
        "{}: {:?} payloads live while {TASKS} results are held",
        run.label,
        held.iter()
            .map(|&l| Run::in_payloads(l as f64))
            .collect::<Vec<_>>()
    );
    // Each expiry gives one payload back; after the last, nothing is held.
    for (i, e) in expired.iter().enumerate() {
        let left = TASKS - 1 - i as u64;
        assert!(
            (left * PAYLOAD..(left + 1) * PAYLOAD).contains(&e.live_bytes),
            "{}: {} live after {} expiries",
            run.label,
            Run::in_payloads(e.live_bytes as f64),
            i + 1
        );
    }
    let surviving = run.number("surviving_bytes");
    assert!(surviving < PAYLOAD as f64, "{}", run.label);
}

#[test]
fn original_large_results_retains_each_result_until_its_ttl() {
    assert_results_retained_until_ttl("original");
}

#[test]
fn fixed_large_results_retains_until_the_ttl_exactly_as_original() {
    assert_results_retained_until_ttl("fixed");
}

/// Parses a whole XML document; panics with the position of the first error.
fn assert_xml(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let mut reader = quick_xml::Reader::from_str(&text);
    let mut root = None;
    loop {
        match reader.read_event() {
            Ok(quick_xml::events::Event::Eof) => break,
            Ok(quick_xml::events::Event::Start(e)) if root.is_none() => {
                root = Some(String::from_utf8_lossy(e.name().as_ref()).into_owned());
            }
            Ok(_) => {}
            Err(e) => panic!(
                "{} is not well-formed XML at byte {}: {e}",
                path.display(),
                reader.error_position()
            ),
        }
    }
    assert_eq!(root.as_deref(), Some("svg"), "{}", path.display());
    text
}

#[test]
fn outputs_are_written_and_well_formed() {
    let run = run_scenario_with("exception", "original", 3, &[]);

    // summary.json: the flat keys issue 4 lists, consistent with each other.
    for key in [
        "min_rss_bytes",
        "max_rss_bytes",
        "mean_rss_bytes",
        "growth_bytes",
        "surviving_bytes",
        "duration_s",
        "retries",
        "leak_per_retry_bytes",
        "leak_per_retry_r2",
    ] {
        assert!(run.summary[key].is_number(), "summary.json: {key}");
    }
    let (min, max) = (run.number("min_rss_bytes"), run.number("max_rss_bytes"));
    let mean = run.number("mean_rss_bytes");
    assert!(min > 0.0 && min <= mean && mean <= max);
    assert_eq!(run.number("growth_bytes"), max - min);
    assert_eq!(run.number("retries"), 3.0);
    assert!(run.number("duration_s") > 0.0);

    // profile.json: tagged, with the task table and the run's attributes.
    assert_eq!(run.attribute(attributes::SCENARIO), "exception");
    assert_eq!(run.attribute(attributes::MIDDLEWARE), "original");
    assert_eq!(run.attribute(attributes::BROKER), "memory");
    assert_eq!(
        run.attribute(attributes::PAYLOAD_BYTES),
        PAYLOAD.to_string()
    );
    assert_eq!(run.profile.tasks.len(), 1);
    let task = &run.profile.tasks[0];
    assert_eq!(task.actor.as_deref(), Some("exception_task"));
    assert_eq!(task.queue.as_deref(), Some("default"));
    assert_eq!(task.retries, 3);
    assert_eq!(task.outcome.as_deref(), Some("dead-lettered"));
    let message_id = task.external_id.as_deref().unwrap_or("");
    assert_eq!(message_id.len(), 36, "a UUID message id: {message_id:?}");
    let retries: Vec<Option<u32>> = run
        .points(events::AFTER_FAILURE)
        .iter()
        .map(|p| p.retry)
        .collect();
    assert_eq!(retries, [Some(0), Some(1), Some(2), Some(3)]);

    // memory.csv: the header, then one row per timeline point.
    let csv = std::fs::read_to_string(run.path("memory.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    for column in ["time_s", "rss_mib", "live_mib", "event", "task", "retry"] {
        assert!(header.contains(&column), "memory.csv header {header:?}");
    }
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), run.profile.timeline.len());
    let event = header.iter().position(|c| *c == "event").unwrap();
    let time = header.iter().position(|c| *c == "time_s").unwrap();
    for row in &rows {
        assert_eq!(row.len(), header.len(), "memory.csv row {row:?}");
        row[time].parse::<f64>().unwrap();
    }
    for wanted in [
        events::BEFORE_ALLOCATION,
        events::AFTER_ALLOCATION,
        events::AFTER_FAILURE,
    ] {
        assert!(
            rows.iter().any(|r| r[event] == wanted),
            "memory.csv has no {wanted:?} row"
        );
    }

    // The two SVGs parse as XML.
    let timeline = assert_xml(&run.path("memory.svg"));
    assert!(timeline.contains("<polyline") || timeline.contains("<path"));
    let flamegraph = assert_xml(&run.path("flamegraph.svg"));
    assert!(flamegraph.contains("exception_task") || flamegraph.contains("Payload"));
}

#[test]
fn max_rss_stops_a_leaking_run_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let output = leakprof()
        .args(["--quiet", "run", "--scenario", "exception", "--size", "1"])
        .args(["--min-backoff", "1ms", "--max-backoff", "1ms"])
        .args(["--max-rss", "64MiB", "--duration", "60s"])
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_ran("--max-rss 64MiB", &output);
    // Stopped by --max-rss within seconds, not by --duration at 60 s: 30 s
    // tells the two apart however loaded the machine.
    assert!(started.elapsed() < Duration::from_secs(30));
    let run = load_outputs("--max-rss".into(), dir);
    assert_eq!(run.attribute(attributes::STOP_REASON), "max-rss");
    let reached = run.points(events::MAX_RSS);
    assert_eq!(reached.len(), 1);
    assert!(reached[0].rss_bytes >= 64 * MIB);
    // It stopped a leak in progress, with the leak in the profile.
    assert!(run.number("retries") >= 10.0);
    assert!(run.number("leak_per_retry_bytes") > 0.9 * PAYLOAD as f64);
    for file in ["memory.csv", "memory.svg", "flamegraph.svg"] {
        assert!(run.path(file).is_file(), "{file} missing");
    }
}

/// A long `leakprof run` (fixed, so memory stays flat) in the background.
struct Background {
    child: Child,
    /// Taken by [`Background::finish`].
    dir: Option<tempfile::TempDir>,
}

impl Background {
    fn start() -> Background {
        let dir = tempfile::tempdir().unwrap();
        let child = leakprof()
            .args(["--quiet", "run", "--scenario", "exception"])
            .args(["--middleware", "fixed", "--size", "1", "--duration", "120s"])
            .args(["--timeline-interval", "20ms"])
            .arg("--out")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut bg = Background {
            child,
            dir: Some(dir),
        };
        bg.wait_for_signal_handlers();
        bg
    }

    /// Signals sent before the run installs its handlers would kill it:
    /// wait until /proc says SIGUSR1 and SIGTERM are caught.
    fn wait_for_signal_handlers(&mut self) {
        let wanted = (1u64 << (libc::SIGUSR1 - 1)) | (1u64 << (libc::SIGTERM - 1));
        let status = format!("/proc/{}/status", self.child.id());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let caught = std::fs::read_to_string(&status)
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("SigCgt:"))
                        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
                })
                .unwrap_or(0);
            if caught & wanted == wanted {
                return;
            }
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "leakprof run exited early"
            );
            assert!(Instant::now() < deadline, "no signal handlers after 20 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: our own child's pid (not yet reaped) and a valid signal.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0);
    }

    /// Waits for the process to exit (deadline 30 s) and returns its outputs.
    fn path(&self, file: &str) -> PathBuf {
        self.dir.as_ref().expect("not finished").path().join(file)
    }

    fn finish(mut self) -> Run {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("leakprof run did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
        }
        assert!(status.success(), "exited with {status}: {stderr}");
        let dir = self.dir.take().expect("finished once");
        load_outputs("signalled run".into(), dir)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sigusr1_writes_a_mid_run_snapshot_without_stopping() {
    let mut bg = Background::start();
    bg.signal(libc::SIGUSR1);
    let snapshot = bg.path("profile-1.json");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !snapshot.is_file() {
        assert!(Instant::now() < deadline, "no profile-1.json after 20 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Written atomically: complete as soon as it exists.
    let mid = leakprof::format::load(&snapshot).unwrap();
    assert!(
        bg.child.try_wait().unwrap().is_none(),
        "SIGUSR1 must not stop the run"
    );
    assert!(!bg.path("profile.json").exists());
    bg.signal(libc::SIGTERM);
    let run = bg.finish();
    assert!(run.profile.meta.snapshot_ns > mid.meta.snapshot_ns);
    assert_eq!(mid.meta.pid, run.profile.meta.pid);
}

#[test]
fn sigterm_stops_cleanly_and_writes_the_profile() {
    let bg = Background::start();
    let started = Instant::now();
    bg.signal(libc::SIGTERM);
    let run = bg.finish();
    // A clean stop takes about a second (final snapshot, outputs); 30 s
    // only catches a run that ignores SIGTERM, never a loaded machine.
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(run.attribute(attributes::STOP_REASON), "signal");
    assert_eq!(run.attribute(attributes::SCENARIO), "exception");
    for file in ["memory.csv", "memory.svg", "flamegraph.svg"] {
        assert!(run.path(file).is_file(), "{file} missing");
    }
    assert!(run.summary["surviving_bytes"].is_number());
}

/// Issue 9 item 8: a worker profiled for a day handles millions of
/// messages, and the recorder's own memory must not grow with them. One
/// million no-op messages, fed while the worker runs (a backlog of 1,000),
/// on the memory broker: RSS grows by at most 32 MiB over the run, every
/// task is folded, and the recorder says how much memory it uses.
#[test]
fn a_million_noop_messages_grow_rss_by_at_most_32_mib() {
    let dir = tempfile::tempdir().unwrap();
    let output = leakprof()
        .args(["--quiet", "run", "--scenario", "noop", "--tasks", "1000000"])
        .args(["--duration", "600s", "--max-rss", "1GiB"])
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_ran("noop", &output);
    let run = load_outputs("noop".into(), dir);
    assert_eq!(run.attribute(attributes::STOP_REASON), "completed");
    let growth = run.number("growth_bytes");
    assert!(
        growth <= 32.0 * MIB as f64,
        "RSS grew by {:.1} MiB over a million messages",
        growth / MIB as f64
    );
    let folded = run.profile.folded.as_ref().expect("folded tasks");
    // The newest 20,000 finished tags stay listed, older ones are summed.
    assert!(
        folded.tags >= 1_000_000 - 20_000,
        "finished tasks' tags fold"
    );
    assert!(
        run.profile.tasks.len() <= 10_000,
        "only the newest records stay"
    );
    assert_eq!(folded.tasks + run.profile.tasks.len() as u64, 1_000_000);
    assert_eq!(run.number("tasks"), 1_000_000.0);
    assert!(
        run.profile.tags.len() <= 21_000,
        "{} tags kept",
        run.profile.tags.len()
    );
    assert!(run.profile.timeline.len() <= 2 * 16_384 + 64);
    let recorder = run.profile.recorder.as_ref().expect("recorder memory");
    assert!(
        recorder.total <= 16 * MIB,
        "the recorder uses {:.1} MiB",
        recorder.total as f64 / MIB as f64
    );
}

#[test]
fn bad_flags_exit_2_with_a_one_line_error() {
    let cases: [(&[&str], &str); 3] = [
        (&["--scenario", "nope"], "'nope'"),
        (&["--scenario", "exception", "--size", "0"], "--size"),
        (
            &["--scenario", "exception", "--processes", "2"],
            "--broker redis",
        ),
    ];
    for (args, names) in cases {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let output = leakprof()
            .arg("run")
            .args(args)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        let first = stderr.lines().next().unwrap_or("");
        assert!(
            first.contains(names)
                && (first.starts_with("error:") || first.starts_with("leakprof:")),
            "{args:?}: the first line must say what is wrong: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!out.exists(), "{args:?}: nothing is written");
        // Our own errors are one line; clap's usage errors add its list of
        // possible values and a pointer to --help after the one-line error.
        if first.starts_with("leakprof:") {
            assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        }
    }
}

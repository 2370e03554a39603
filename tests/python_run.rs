//! `leakprof run -- python ...` on real Dramatiq 2.0.0 (issue 11, first
//! milestone): the seed's exception scenario as an AsyncIO actor, recorded
//! from inside the interpreter, and the launcher's refusals.
//!
//! The interpreters are the Dramatiq 2.0.0 and 2.2.1 ones of
//! `support::python` (skipped without them, failing under CI=true); the
//! seed's case runs on a real Redis (`support::redis`), the others on
//! Dramatiq's StubBroker.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use leakprof::analysis::summary::Summary;
use leakprof::format::Profile;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/python/dramatiq_exception.py"
);

/// Builds the library the interpreter loads (`cargo test` builds only this
/// package) and returns its path.
fn leakprof_run(out: &Path, command: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_leakprof"));
    cmd.args(["run", "--quiet", "--out"])
        .arg(out)
        .arg("--")
        .args(command)
        .env("LEAKPROF_NATIVE", support::python::native_library());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run leakprof")
}

/// The line of the actor that allocates the payload.
/// Writes `source` as a script in `dir`, runs it under `leakprof run`
/// with `python` (asserting it succeeded) and returns the run's output
/// directory, its merged profile and the script's standard output.
/// The Dramatiq 2.0.0 interpreter and a scratch directory; None (the
/// test returns) when Python cannot be had outside CI.
fn python_and_dir() -> Option<(PathBuf, tempfile::TempDir)> {
    Some((support::python::dramatiq()?, tempfile::tempdir().unwrap()))
}

fn run_script(python: &Path, dir: &Path, source: &str) -> (PathBuf, Profile, String) {
    let script = dir.join("script.py");
    std::fs::write(&script, source).unwrap();
    let out = dir.join("out");
    let output = leakprof_run(
        &out,
        &[python.to_str().unwrap(), script.to_str().unwrap()],
        &[],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let profile = leakprof::format::load(out.join("profile.json")).unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (out, profile, stdout)
}

fn payload_line() -> u32 {
    let text = std::fs::read_to_string(SCRIPT).unwrap();
    let index = text
        .lines()
        .position(|l| l.contains("LEAKPROF-PAYLOAD-LINE"))
        .expect("marker line");
    index as u32 + 1
}

/// The message ids the script printed, in order.
fn message_ids(stdout: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("message "))
        .map(str::to_string)
        .collect()
}

/// A surviving group (stack and tag) of at least a payload chunk's size:
/// its bytes, message id, retry and top frame.
#[derive(Debug)]
struct Chunk {
    bytes: u64,
    message: Option<String>,
    retry: Option<u32>,
    frame: (String, Option<String>, Option<u32>),
}

/// A script that runs `body` (an actor `work` on a StubBroker and the
/// messages it sends) through a Dramatiq worker of two threads until the
/// queue is empty. `kept` is a module list the actor may keep blocks in.
fn stub_worker_script(body: &str) -> String {
    format!(
        r#"import dramatiq
from dramatiq.brokers.stub import StubBroker
broker = StubBroker()
dramatiq.set_broker(broker)
kept = []
{body}
worker = dramatiq.Worker(broker, worker_threads=2)
worker.start()
broker.join(work.queue_name)
worker.join()
worker.stop()
"#
    )
}

fn surviving_chunks(profile: &Profile, min_bytes: u64) -> Vec<Chunk> {
    profile
        .live
        .iter()
        .filter(|g| g.bytes >= min_bytes)
        .map(|g| {
            let tag = &profile.tags[g.tag as usize];
            let message = tag.task.and_then(|t| {
                profile
                    .tasks
                    .iter()
                    .find(|i| i.task == t)
                    .and_then(|i| i.external_id.clone())
            });
            let top = profile.stacks[g.stack as usize]
                .frames
                .first()
                .map(|&f| &profile.frames[f as usize]);
            Chunk {
                bytes: g.bytes,
                message,
                retry: tag.retry,
                frame: top.map_or((String::new(), None, None), |f| {
                    (f.function.clone(), f.file.clone(), f.line)
                }),
            }
        })
        .collect()
}

/// Runs the scenario script with `python` under `leakprof run`; returns
/// the output directory (kept in `dir`), the profile and the message ids.
fn run_scenario(
    python: &Path,
    dir: &Path,
    name: &str,
    env: &[(&str, String)],
) -> (PathBuf, Profile, Vec<String>) {
    let out = dir.join(name);
    let output = leakprof_run(&out, &[python.to_str().unwrap(), SCRIPT], env);
    assert!(
        output.status.success(),
        "leakprof run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    for file in ["memory.csv", "memory.svg", "flamegraph.svg", "summary.json"] {
        assert!(out.join(file).is_file(), "{file} written");
    }
    let profile = leakprof::format::load(out.join("profile.json")).unwrap();
    (out, profile, message_ids(&output.stdout))
}

/// The seed's case on Redis: one message, 5 retries, a 32 MiB payload held
/// by each failed attempt's reference cycle (GC off) on Dramatiq 2.0.0: one
/// payload per retry, each tagged with its message and retry, allocated on
/// the actor's line. On 2.2.1 (upstream's fix) none survives, and `leakprof
/// diff` of the two runs says so.
#[test]
fn dramatiq_asyncio_exception_leaks_one_payload_per_retry_until_2_2_1() {
    const PAYLOAD: u64 = 32 << 20;
    let (Some(seed), Some(fixed)) = (
        support::python::dramatiq(),
        support::python::dramatiq_fixed(),
    ) else {
        return;
    };
    let Some(redis) = support::redis::RedisServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("LEAKPROF_TEST_PAYLOAD", PAYLOAD.to_string()),
        ("LEAKPROF_TEST_RETRIES", "5".to_string()),
        ("LEAKPROF_TEST_REDIS_URL", redis.url()),
    ];
    let (leaky, profile, ids) = run_scenario(&seed, dir.path(), "dramatiq-2.0.0", &env);
    assert_eq!(ids.len(), 1, "one message sent");
    let summary = Summary::of(&profile);
    let per_retry = summary
        .leak_per_retry_bytes
        .expect("leak per retry measured");
    let r2 = summary.leak_per_retry_r2.expect("fit quality");
    let ratio = per_retry / PAYLOAD as f64;
    assert!(
        (ratio - 1.0).abs() < 0.01,
        "leak per retry {ratio:.4} payloads"
    );
    assert!(r2 >= 0.99, "r² {r2}");

    let chunks = surviving_chunks(&profile, PAYLOAD);
    let total: u64 = chunks.iter().map(|c| c.bytes).sum();
    assert!(
        total >= 6 * PAYLOAD,
        "six payloads survive (attempts 0..=5): {total}"
    );
    let right: u64 = chunks
        .iter()
        .filter(|c| c.message.as_deref() == Some(ids[0].as_str()))
        .map(|c| c.bytes)
        .sum();
    assert!(
        right as f64 >= 0.99 * total as f64,
        "{right} of {total} bytes on the message"
    );
    let mut retries: Vec<u32> = chunks.iter().filter_map(|c| c.retry).collect();
    retries.sort_unstable();
    assert_eq!(
        retries,
        (0..=5).collect::<Vec<u32>>(),
        "one payload per retry"
    );
    for c in &chunks {
        let (function, file, line) = &c.frame;
        assert_eq!(function, "fail");
        assert!(file
            .as_deref()
            .is_some_and(|f| f.ends_with("dramatiq_exception.py")));
        assert_eq!(*line, Some(payload_line()));
    }
    assert_payloads_are_cyclic_garbage(&profile, PAYLOAD);
    let retainers = Command::new(env!("CARGO_BIN_EXE_leakprof"))
        .args(["retainers", "--largest", "1", "--full-names"])
        .arg(&leaky)
        .output()
        .unwrap();
    assert!(retainers.status.success());
    let text = String::from_utf8_lossy(&retainers.stdout);
    let ring = text
        .lines()
        .find(|l| l.contains("cyclic garbage"))
        .unwrap_or_else(|| panic!("no cyclic garbage in:\n{text}"));
    // The ring of the seed: exception -> traceback -> run_coroutine's
    // frame -> its local future -> Future._exception -> exception.
    for hop in [
        "BigError.__traceback__",
        "run_coroutine: local future",
        "Future._exception",
    ] {
        assert!(ring.contains(hop), "{hop} in the ring: {ring}");
    }
    assert!(text.contains("owner \"error value\""), "{text}");
    assert!(text.contains("BigError.args"), "{text}");

    let (fixed_out, profile, _) = run_scenario(&fixed, dir.path(), "dramatiq-2.2.1", &env);
    assert!(
        surviving_chunks(&profile, PAYLOAD).is_empty(),
        "no payload survives on 2.2.1"
    );
    let diff = Command::new(env!("CARGO_BIN_EXE_leakprof"))
        .arg("diff")
        .args([&leaky, &fixed_out])
        .output()
        .unwrap();
    assert!(
        diff.status.success(),
        "{}",
        String::from_utf8_lossy(&diff.stderr)
    );
    let text = String::from_utf8_lossy(&diff.stdout);
    // Profiles with an object graph are compared by owner.
    let fail_row = text
        .lines()
        .find(|l| l.trim_end().ends_with("error value"))
        .unwrap_or_else(|| panic!("no row for the error values in:\n{text}"));
    assert!(
        fail_row.contains("-192.0 MiB"),
        "six payloads gone: {fail_row}"
    );
}

/// Every payload-sized block is owned by an exception ("error value") and
/// is cyclic garbage (unreachable in the object graph), checked against
/// the profile's live groups, byte for byte.
fn assert_payloads_are_cyclic_garbage(profile: &Profile, payload: u64) {
    let graph = profile.graph.as_ref().expect("an object graph");
    assert!(graph.python.is_some(), "a Python object graph");
    let payloads: Vec<_> = profile.live.iter().filter(|g| g.bytes >= payload).collect();
    assert!(!payloads.is_empty(), "payloads survive");
    let total: u64 = payloads.iter().map(|g| g.bytes).sum();
    let owned: u64 = payloads
        .iter()
        .filter(|g| {
            g.owner
                .and_then(|o| graph.owners.get(o as usize))
                .is_some_and(|o| o.name == "error value")
        })
        .map(|g| g.bytes)
        .sum();
    assert!(
        owned as f64 >= 0.99 * total as f64,
        "{owned} of {total} payload bytes owned by \"error value\""
    );
    assert!(
        payloads.iter().all(|g| g.unreachable),
        "every payload is cyclic garbage"
    );
}

/// With the collector on (a low threshold, so it runs during the test),
/// the snapshot taken while payloads await it shows them as cyclic
/// garbage, and every payload is freed inside a collection's window on
/// the timeline (the script pauses the collector for the last attempt,
/// takes the snapshot, then collects).
#[test]
fn collector_frees_each_payload_inside_a_collection() {
    const PAYLOAD: u64 = 16 << 20;
    let Some(python) = support::python::dramatiq() else {
        return;
    };
    let Some(redis) = support::redis::RedisServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("LEAKPROF_TEST_PAYLOAD", PAYLOAD.to_string()),
        ("LEAKPROF_TEST_RETRIES", "5".to_string()),
        ("LEAKPROF_TEST_REDIS_URL", redis.url()),
        ("LEAKPROF_TEST_GC", "100".to_string()),
        ("LEAKPROF_TEST_SNAPSHOT_SIGNAL", libc::SIGUSR1.to_string()),
    ];
    let (out, profile, _) = run_scenario(&python, dir.path(), "gc-on", &env);
    let snapshot = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("-snapshot-1.json"))
        .expect("the script's snapshot");
    let snapshot = leakprof::format::load(&snapshot).unwrap();
    assert_payloads_are_cyclic_garbage(&snapshot, PAYLOAD);
    assert!(
        surviving_chunks(&profile, PAYLOAD).is_empty(),
        "the last collection freed every payload"
    );
    let mut points = profile.timeline.clone();
    points.sort_by_key(|p| p.t_ns);
    let (mut inside, mut freed_inside, mut windows) = (false, 0u64, 0);
    for pair in points.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        match a.event.as_deref() {
            Some(leakprof::format::events::GC_START) => inside = true,
            Some(leakprof::format::events::GC_END) => inside = false,
            _ => {}
        }
        let drop = a.live_bytes.saturating_sub(b.live_bytes);
        if drop >= PAYLOAD / 2 {
            let ends_window = b.event.as_deref() == Some(leakprof::format::events::GC_END);
            assert!(
                inside || ends_window,
                "{drop} bytes freed outside a collection at {} ns",
                b.t_ns
            );
            freed_inside += drop;
        }
        if b.event.as_deref() == Some(leakprof::format::events::GC_END) {
            windows += 1;
        }
    }
    assert!(windows >= 2, "collections that freed objects: {windows}");
    let payloads = freed_inside as f64 / PAYLOAD as f64;
    assert!(
        (5.9..6.1).contains(&payloads),
        "{payloads:.2} payloads freed inside collections (6 attempts)"
    );
}

/// Two worker threads whose AsyncIO actors interleave on the one event
/// loop (each builds its payload in steps with an await between): every
/// chunk is tagged with its own message, which a thread-local tag would
/// get wrong.
#[test]
fn interleaved_asyncio_actors_keep_their_own_tags() {
    const PAYLOAD: u64 = 8 << 20;
    const STEPS: u64 = 4;
    let env = [
        ("LEAKPROF_TEST_PAYLOAD", PAYLOAD.to_string()),
        ("LEAKPROF_TEST_RETRIES", "0".to_string()),
        ("LEAKPROF_TEST_MESSAGES", "4".to_string()),
        ("LEAKPROF_TEST_THREADS", "2".to_string()),
        ("LEAKPROF_TEST_STEPS", STEPS.to_string()),
    ];
    let Some((python, dir)) = python_and_dir() else {
        return;
    };
    let (_, profile, ids) = run_scenario(&python, dir.path(), "interleaved", &env);
    assert_eq!(ids.len(), 4);
    let chunks = surviving_chunks(&profile, PAYLOAD / STEPS);
    let total: u64 = chunks.iter().map(|c| c.bytes).sum();
    assert!(total >= 4 * PAYLOAD, "four payloads survive: {total}");
    for id in &ids {
        let on_message: u64 = chunks
            .iter()
            .filter(|c| c.message.as_deref() == Some(id.as_str()))
            .map(|c| c.bytes)
            .sum();
        assert!(
            on_message as f64 >= 0.99 * PAYLOAD as f64 && on_message <= PAYLOAD + PAYLOAD / 100,
            "message {id}: {on_message} bytes, one payload expected"
        );
    }
}

fn fails_with(output: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains(needle), "stderr: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

/// Flags that keep `site` or PYTHONPATH away are refused up front, as are
/// programs that are not Python and Pythons other than 3.11.
#[test]
fn refuses_what_it_cannot_record() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // A stand-in interpreter (never run for flags refused up front).
    let fake = dir.path().join("python3.99");
    std::fs::write(&fake, "#!/bin/sh\necho 3.99\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let fake = fake.to_str().unwrap();
    fails_with(
        &leakprof_run(&out, &[fake, "-I", "app.py"], &[]),
        "-I (isolated",
    );
    fails_with(
        &leakprof_run(&out, &[fake, "-uS", "app.py"], &[]),
        "-S (no site",
    );
    fails_with(&leakprof_run(&out, &[fake, "app.py"], &[]), "Python 3.99");
    let script = dir.path().join("tool");
    std::fs::write(&script, format!("#!{fake} -E\nprint(1)\n")).unwrap();
    fails_with(
        &leakprof_run(&out, &[script.to_str().unwrap()], &[]),
        "-E (PYTHON*",
    );
    fails_with(
        &leakprof_run(&out, &["/bin/true"], &[]),
        "is not a Python program",
    );
}

/// A launcher that hides `-I` from leakprof (a wrapper named like an
/// interpreter) keeps the bootstrap from running: leakprof says so instead
/// of returning a run without recording. And a `sitecustomize` already on
/// the path (a distribution's own) still runs after ours.
#[test]
fn bootstrap_absence_is_an_error_and_sitecustomize_is_chained() {
    let Some((python, dir)) = python_and_dir() else {
        return;
    };
    let script = dir.path().join("app.py");
    std::fs::write(&script, "print('ran')\n").unwrap();
    let wrapper = dir.path().join("python3.11");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nexec {} -I \"$@\"\n", python.display()),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = dir.path().join("out");
    let command = [wrapper.to_str().unwrap(), script.to_str().unwrap()];
    fails_with(
        &leakprof_run(&out, &command, &[]),
        "sitecustomize never ran",
    );

    let site = dir.path().join("site");
    std::fs::create_dir(&site).unwrap();
    let marker = dir.path().join("theirs-ran");
    std::fs::write(
        site.join("sitecustomize.py"),
        format!("open({:?}, 'w').close()\n", marker.to_str().unwrap()),
    )
    .unwrap();
    let command = [python.to_str().unwrap(), script.to_str().unwrap()];
    let output = leakprof_run(
        &out,
        &command,
        &[("PYTHONPATH", site.display().to_string())],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(marker.exists(), "the shadowed sitecustomize ran");
    assert!(out.join("profile.json").is_file());
}

/// Each allocation is counted once, at the outermost PyMem layer: bytes
/// objects over 512 bytes go from pymalloc (OBJ) on to RAW, and small ones
/// stay in pymalloc; what the tag keeps alive equals what Python says the
/// objects take (`sys.getsizeof`), within 1%, and not twice that.
#[test]
fn python_allocations_are_counted_once() {
    let Some((python, dir)) = python_and_dir() else {
        return;
    };
    let (_, profile, stdout) = run_script(
        &python,
        dir.path(),
        r#"import sys
import leakprof
keep = []
with leakprof.tag(task="count", retry=0):
    for i in range(200):
        keep.append(b"x" * (1000 + i))
        keep.append(b"y" * (100 + i % 50))
objects = sum(sys.getsizeof(b) for b in keep)
array = sys.getsizeof(keep) - sys.getsizeof([])
print(f"expected {objects + array}")
"#,
    );
    let expected: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("expected ")?.parse().ok())
        .expect("the script's figure");
    let tagged: u64 = profile
        .live
        .iter()
        .filter(|g| profile.tags[g.tag as usize].task.is_some())
        .map(|g| g.bytes)
        .sum();
    let ratio = tagged as f64 / expected as f64;
    assert!(
        (ratio - 1.0).abs() < 0.01,
        "tagged {tagged} vs Python's {expected}"
    );
}

/// The RAW domain runs without the GIL: blocks a thread allocates with
/// `PyMem_RawMalloc` while it has released the GIL (ctypes.CDLL calls
/// release it) are recorded with the thread's own Python stack and tag,
/// and their frees are seen.
#[test]
fn raw_domain_is_recorded_without_the_gil() {
    let Some((python, dir)) = python_and_dir() else {
        return;
    };
    let source = r#"import ctypes
import leakprof
capi = ctypes.CDLL(None)  # CDLL: the GIL is released during each call
capi.PyMem_RawMalloc.restype = ctypes.c_void_p
capi.PyMem_RawMalloc.argtypes = [ctypes.c_size_t]
capi.PyMem_RawFree.argtypes = [ctypes.c_void_p]
with leakprof.tag(task="raw", retry=2):
    blocks = [capi.PyMem_RawMalloc(3 << 20) for _ in range(3)]  # RAW-LINE
capi.PyMem_RawFree(blocks.pop())
"#;
    let line = source.lines().position(|l| l.contains("RAW-LINE")).unwrap() as u32 + 1;
    let (_, profile, _) = run_script(&python, dir.path(), source);
    let blocks = surviving_chunks(&profile, 3 << 20);
    // The call's own small blocks (ctypes' argument objects) share the stack.
    let total: u64 = blocks.iter().map(|c| c.bytes).sum();
    assert!(
        (2 * (3 << 20)..2 * (3 << 20) + 4096).contains(&total),
        "two of three survive: {total}"
    );
    for c in &blocks {
        assert_eq!(c.message.as_deref(), Some("raw"));
        assert_eq!(c.retry, Some(2));
        assert_eq!(c.frame.0, "<listcomp>");
        assert_eq!(c.frame.2, Some(line));
    }
}

/// Processes the program forks (as Dramatiq's CLI does for its workers)
/// record too: a multiprocessing child, which ends in `os._exit`, writes
/// `profile-<pid>.json`, and `profile.json` is the merge of all of them.
#[test]
fn forked_children_deliver_their_profiles() {
    let Some((python, dir)) = python_and_dir() else {
        return;
    };
    let (out, merged, stdout) = run_script(
        &python,
        dir.path(),
        r#"import multiprocessing
import leakprof
keep = []

def work():
    with leakprof.tag(task="in-child", retry=1):
        keep.append(b"c" * (6 << 20))

if __name__ == "__main__":
    child = multiprocessing.get_context("fork").Process(target=work)
    child.start()
    child.join()
    print(f"child {child.pid} {child.exitcode}")
    with leakprof.tag(task="in-parent", retry=0):
        keep.append(b"p" * (4 << 20))
"#,
    );
    let pid = stdout
        .lines()
        .find_map(|l| l.strip_prefix("child "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("child pid");
    let child = leakprof::format::load(out.join(format!("profile-{pid}.json"))).unwrap();
    let on = |profile: &Profile, task: &str| -> u64 {
        surviving_chunks(profile, 1 << 20)
            .iter()
            .filter(|c| c.message.as_deref() == Some(task))
            .map(|c| c.bytes)
            .sum()
    };
    assert!(on(&child, "in-child") >= 6 << 20, "the child's own profile");
    let own = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("profile-"))
        .count();
    assert_eq!(own, 2, "a profile of its own for each process");
    assert!(
        on(&merged, "in-child") >= 6 << 20,
        "merged: the child's block"
    );
    assert!(
        on(&merged, "in-parent") >= 4 << 20,
        "merged: the parent's block"
    );
}

/// `--duration` stops a program that would run on (SIGINT, so its exit
/// handlers run and the profile is written) and says why it stopped.
#[test]
fn duration_stops_the_program_with_its_profile() {
    let Some((python, dir)) = python_and_dir() else {
        return;
    };
    let script = dir.path().join("forever.py");
    std::fs::write(
        &script,
        "import time\nkeep = [b'x' * (2 << 20)]\nwhile True:\n    time.sleep(0.05)\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_leakprof"))
        .args(["run", "--quiet", "--duration", "2s", "--out"])
        .arg(&out)
        .arg("--")
        .args([&python, &script])
        .env("LEAKPROF_NATIVE", support::python::native_library())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let profile = leakprof::format::load(out.join("profile.json")).unwrap();
    assert_eq!(
        profile
            .meta
            .attributes
            .get("stop_reason")
            .map(String::as_str),
        Some("duration")
    );
    assert!(profile.totals.live.bytes >= 2 << 20);
}

/// The snapshot signal, sent to leakprof, reaches the program, which
/// writes a profile of what is live at that moment and runs on.
#[test]
fn snapshot_signal_writes_a_mid_run_profile() {
    let Some((python, dir)) = python_and_dir() else {
        return;
    };
    let script = dir.path().join("waits.py");
    std::fs::write(
        &script,
        r#"import glob, os, time
import leakprof
with leakprof.tag(task="before-snapshot"):
    keep = [b"s" * (3 << 20)]
print("ready", flush=True)
out = os.environ["LEAKPROF_OUT"]
deadline = time.monotonic() + 20
while not glob.glob(os.path.join(out, "profile-*-snapshot-1.json")):
    if time.monotonic() > deadline:
        raise SystemExit("no snapshot")
    time.sleep(0.02)
"#,
    )
    .unwrap();
    let out = dir.path().join("out");
    let mut run = Command::new(env!("CARGO_BIN_EXE_leakprof"))
        .args(["run", "--quiet", "--out"])
        .arg(&out)
        .arg("--")
        .args([&python, &script])
        .env("LEAKPROF_NATIVE", support::python::native_library())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(run.stdout.take().unwrap()));
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    // SAFETY: kill(2) on our own child, which has not been reaped.
    unsafe { libc::kill(run.id() as libc::pid_t, libc::SIGUSR1) };
    assert!(run.wait().unwrap().success());
    let snapshot = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("-snapshot-1.json"))
        .expect("a snapshot file");
    let profile = leakprof::format::load(&snapshot).unwrap();
    let tagged: u64 = surviving_chunks(&profile, 3 << 20)
        .iter()
        .filter(|c| c.message.as_deref() == Some("before-snapshot"))
        .map(|c| c.bytes)
        .sum();
    assert!(tagged >= 3 << 20, "the live block is in the snapshot");
}

/// `leakprof.owner.register` names an owner: what the registered dict
/// alone keeps alive is its, and what something else also holds is not.
#[test]
fn registered_owner_gets_what_it_alone_keeps() {
    let Some((python, dir)) = python_and_dir() else {
        return;
    };
    let (_, profile, _) = run_script(
        &python,
        dir.path(),
        r#"import leakprof
cache = {}
leakprof.owner.register("session cache", cache)
shared = bytearray(b"s" * (2 << 20))
cache["mine"] = b"m" * (3 << 20)
cache["shared"] = shared
keep = [shared]
"#,
    );
    let graph = profile.graph.as_ref().expect("an object graph");
    let owner = graph
        .owners
        .iter()
        .position(|o| o.name == "session cache")
        .expect("the registered owner") as u32;
    let owned: u64 = profile
        .live
        .iter()
        .filter(|g| g.owner == Some(owner))
        .map(|g| g.bytes)
        .sum();
    assert!(
        (3 << 20..(3 << 20) + (64 << 10)).contains(&owned),
        "the cache owns its own 3 MiB value, not the shared 2 MiB: {owned}"
    );
    assert_eq!(
        graph.owners[owner as usize].type_name.as_deref(),
        Some("dict")
    );
}

/// Python processes the program starts anew (multiprocessing's `spawn`, a
/// subprocess of the same Python) record too: each writes
/// `profile-<pid>.json`, and `profile.json` is the merge.
#[test]
fn spawned_and_subprocess_pythons_record_into_the_merge() {
    let Some((python, dir)) = python_and_dir() else {
        return;
    };
    let (out, profile, _) = run_script(
        &python,
        dir.path(),
        r#"import multiprocessing, subprocess, sys
import leakprof

def work():
    global keep
    with leakprof.tag(task="spawned"):
        keep = b"p" * (3 << 20)

if __name__ == "__main__":
    p = multiprocessing.get_context("spawn").Process(target=work)
    p.start()
    p.join()
    assert p.exitcode == 0
    code = "import leakprof\nwith leakprof.tag(task='subprocess'):\n    keep = b'q' * (2 << 20)\n"
    subprocess.run([sys.executable, "-c", code], check=True)
"#,
    );
    let own = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("profile-") && !name.contains("snapshot")
        })
        .count();
    assert!(
        own >= 3,
        "the program and its two children each wrote a profile: {own}"
    );
    for (task, bytes) in [("spawned", 3u64 << 20), ("subprocess", 2 << 20)] {
        let tagged: u64 = surviving_chunks(&profile, bytes)
            .iter()
            .filter(|c| c.message.as_deref() == Some(task))
            .map(|c| c.bytes)
            .sum();
        assert!(tagged >= bytes, "{task}'s block is in the merge: {tagged}");
    }
}

/// Messages that are over (succeeded, or failed for good) are finished:
/// their tags with nothing alive are folded out of the recorder's tag
/// table (their figures stay listed as recent history), so the table does
/// not grow with every message, while a message still holding memory
/// keeps its tag.
#[test]
fn finished_messages_are_folded() {
    let Some(python) = support::python::dramatiq() else {
        return;
    };
    const MESSAGES: u64 = 2000;
    let dir = tempfile::tempdir().unwrap();
    let (_, profile, _) = run_script(
        &python,
        dir.path(),
        &stub_worker_script(&format!(
            r#"
@dramatiq.actor(max_retries=0)
def work(n):
    if n == 0:
        kept.append(b"k" * (2 << 20))
    [n] * 100

for n in range({MESSAGES}):
    work.send(n)"#
        )),
    );
    let listed = profile.tags.iter().filter(|t| t.task.is_some()).count() as u64;
    assert!(
        listed >= MESSAGES,
        "every message's tag is listed: {listed}"
    );
    // Besides the kept block, what finished messages still hold is what
    // the interpreter keeps (names in its type cache, its free lists, see
    // below): small, and each such message keeps its tag until the
    // interpreter lets go of it.
    let holding: Vec<_> = profile
        .tags
        .iter()
        .filter(|t| t.task.is_some() && t.live.bytes > 0)
        .collect();
    let small = holding.iter().filter(|t| t.live.bytes < 1024).count();
    assert_eq!(
        small + 1,
        holding.len(),
        "one message holds the kept block, the others at most cache residue"
    );
    // A tag entry is 128 bytes (and about as much again in the index): the
    // table holds the tags still holding memory, not one per message.
    let table = profile.recorder.as_ref().map_or(u64::MAX, |r| r.tags);
    let bound = 2 * 128 * (holding.len() as u64 + 64);
    assert!(
        table < bound && bound < 2 * 128 * MESSAGES,
        "finished messages' tags are folded out of the table: {table} bytes, {} tags holding memory",
        holding.len()
    );
    let kept: u64 = surviving_chunks(&profile, 2 << 20)
        .iter()
        .filter(|c| c.message.is_some())
        .map(|c| c.bytes)
        .sum();
    assert!(kept >= 2 << 20, "the kept block is still on its message");
    // That residue is named by what holds it: the attribute names in the
    // interpreter's type cache ("after_" + signal, a new string per
    // message), the dict keys on its free list (each call's **kwargs
    // copy). The task-scoped leaks leave it out: what is left besides the
    // kept block is a few blocks that live objects hold.
    let graph = profile.graph.as_ref().and_then(|g| g.python.as_ref());
    assert!(
        graph.is_some_and(|p| p.interpreter_kept.blocks > 0),
        "blocks the interpreter keeps are counted: {graph:?}"
    );
    let leaks = leakprof::analysis::TaskScopedLeaks::of(&leakprof::analysis::Model::new(&profile));
    for holder in [
        "root: interpreter type cache: attribute names",
        "root: interpreter free list: dict keys (freed, kept for reuse)",
    ] {
        assert!(
            leaks.runtime_rows.iter().any(|r| r.root == holder),
            "{holder} is among the runtime's: {:?}",
            leaks.runtime_rows
        );
    }
    let besides = leaks.total.bytes.saturating_sub(kept);
    assert!(
        besides < 4096,
        "task-scoped leaks besides the kept block: {besides} bytes: {:?}",
        leaks.rows
    );
    // What tagging costs each message in allocations of its own, each one
    // recorded: the middleware reads the message's fields past Dramatiq's
    // MessageProxy (whose every field read allocated an AttributeError:
    // 33 blocks per message), leaving the scope, its context variable's
    // token and the task number.
    let own: u64 = profile
        .stack_stats
        .iter()
        .filter(|s| {
            profile.stacks[s.stack as usize]
                .frames
                .first()
                .and_then(|&f| profile.frames[f as usize].file.as_deref())
                .is_some_and(|file| file.contains("/.leakprof-python/lib/leakprof/"))
        })
        .map(|s| s.allocated.blocks)
        .sum();
    assert!(
        own < 12 * MESSAGES,
        "leakprof's own Python code allocated {own} blocks for {MESSAGES} messages"
    );
}

/// Every message gets a task number of its own, also when an earlier
/// message has finished: each message's kept block is reported on that
/// message's id, none merged into another's.
#[test]
fn a_task_number_is_never_handed_out_twice() {
    let Some((python, dir)) = python_and_dir() else {
        return;
    };
    let (_, profile, stdout) = run_script(
        &python,
        dir.path(),
        &stub_worker_script(
            r#"
@dramatiq.actor(max_retries=0)
def work(n):
    block = bytearray((1 << 20) + n * 4096)
    block[::4096] = b"k" * len(block[::4096])
    kept.append(block)

for n in range(12):
    print("message", n, work.send(n).message_id)"#,
        ),
    );
    let sent: Vec<(u64, String)> = stdout
        .lines()
        .filter_map(|l| {
            let mut words = l.strip_prefix("message ")?.split(' ');
            Some((words.next()?.parse().ok()?, words.next()?.to_string()))
        })
        .collect();
    assert_eq!(sent.len(), 12, "{stdout}");
    let chunks = surviving_chunks(&profile, 1 << 20);
    for (n, id) in &sent {
        let bytes = (1 << 20) + n * 4096;
        // A bytearray's block has one byte more (its trailing NUL).
        let on: Vec<_> = chunks
            .iter()
            .filter(|c| (bytes..bytes + 64).contains(&c.bytes))
            .collect();
        assert_eq!(on.len(), 1, "message {n}'s block survives once: {chunks:?}");
        assert_eq!(
            on[0].message.as_deref(),
            Some(id.as_str()),
            "message {n}'s block is on its own message"
        );
    }
}

/// What running frames hold in their locals is in the graph even when the
/// collector does not track it (a dict of strings): the string a local
/// dict holds is shown held by the dict, and the dict by the running
/// frame's local, not by nothing. leakprof's own frames (the snapshot
/// call) are named as such.
#[test]
fn running_frames_hold_their_untracked_locals() {
    let Some((python, dir)) = python_and_dir() else {
        return;
    };
    let snapshot = dir.path().join("held.json");
    let dir_text = dir.path().to_str().unwrap();
    run_script(
        &python,
        dir.path(),
        &format!(
            r#"import leakprof
from leakprof import _native

# Dicts from the interpreter's free list may be older than the recording:
# empty it, so the local dict below is a recorded block.
kept = [{{}} for _ in range(200)]

def path():
    # Made by a task that is over when the snapshot is taken, and held
    # then only by the snapshot call's own local.
    with leakprof.tag(task="made-the-path"):
        return "/".join([{dir:?}, "held.json"])

def hold():
    text = "held by a local dict " * int("100")
    d = {{"text": text}}
    del text
    _native.snapshot(path())

hold()
"#,
            dir = dir_text
        ),
    );
    let profile = leakprof::format::load(&snapshot).unwrap();
    let graph = profile.graph.as_ref().expect("the snapshot's graph");
    let holder = |via: Option<u32>| via.map(|v| graph.vias[v as usize].holder.as_str());
    let text: Vec<_> = profile
        .live
        .iter()
        .filter(|g| (2100..2200).contains(&g.bytes))
        .map(|g| holder(g.via))
        .collect();
    assert_eq!(text, [Some("dict")], "the string is held by the dict");
    let roots: Vec<&str> = graph.vias.iter().map(|v| v.holder.as_str()).collect();
    assert!(
        roots.contains(&"root: local d of running hold"),
        "the dict is held by the running frame's local: {roots:?}"
    );
    // What leakprof's own code holds is named so, and is no task's leak.
    let model = leakprof::analysis::Model::new(&profile);
    let leaks = leakprof::analysis::TaskScopedLeaks::of(&model);
    let own = format!(
        "root: {}local path of running snapshot",
        leakprof::format::PYTHON_OWN_FRAMES_ROOT
    );
    assert!(
        leaks.runtime_rows.iter().any(|r| r.root == own),
        "{own} is counted apart: {:?}",
        leaks.runtime_rows
    );
}

/// The per-message calls of `leakprof._fast` refuse wrong arguments with
/// a Python exception (never a crash), and a task's work is attributed
/// through them: entered, left, finished.
#[test]
fn fast_calls_raise_on_bad_arguments() {
    let Some((python, dir)) = python_and_dir() else {
        return;
    };
    let (_, profile, stdout) = run_script(
        &python,
        dir.path(),
        r#"from leakprof import _native
import leakprof
calls = [
    lambda: _native.begin(1, 0, None, None),
    lambda: _native.begin("one", 0, None, None, None),
    lambda: _native.begin(1, 0, 7, None, None),
    lambda: _native.enter(),
    lambda: _native.enter("tag"),
    lambda: _native.end(1, 0),
    lambda: _native.end(1, 0, None),
]
for call in calls:
    try:
        call()
        print("accepted")
    except (TypeError, OverflowError) as e:
        print("refused", type(e).__name__)
kept = []
with leakprof.tag(task="job-1", retry=2, actor="a", queue="q"):
    kept.append(bytearray(3 << 20))
"#,
    );
    let refused = stdout.lines().filter(|l| l.starts_with("refused")).count();
    assert_eq!(refused, 7, "{stdout}");
    let chunks = surviving_chunks(&profile, 3 << 20);
    assert_eq!(chunks.len(), 1, "{chunks:?}");
    assert_eq!(chunks[0].message.as_deref(), Some("job-1"));
    assert_eq!(chunks[0].retry, Some(2));
}

/// A program that fails on its own makes `leakprof run` fail with its
/// exit code, its profile written all the same.
#[test]
fn a_failing_program_fails_the_run_and_keeps_its_profile() {
    let Some((python, dir)) = python_and_dir() else {
        return;
    };
    let script = dir.path().join("fails.py");
    std::fs::write(&script, "keep = b'f' * (1 << 20)\nraise SystemExit(3)\n").unwrap();
    let out = dir.path().join("out");
    let output = leakprof_run(
        &out,
        &[python.to_str().unwrap(), script.to_str().unwrap()],
        &[],
    );
    assert_eq!(output.status.code(), Some(3), "the program's exit code");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("the program failed"), "{stderr}");
    let profile = leakprof::format::load(out.join("profile.json")).unwrap();
    assert!(profile.totals.live.bytes >= 1 << 20);
}

/// A program that ends in `os._exit` (no exit handlers) still writes its
/// profile.
#[test]
fn os_exit_still_writes_the_profile() {
    let Some((python, dir)) = python_and_dir() else {
        return;
    };
    let (_, profile, _) = run_script(
        &python,
        dir.path(),
        "import os\nkeep = b'e' * (2 << 20)\nos._exit(0)\n",
    );
    assert!(profile.totals.live.bytes >= 2 << 20);
}

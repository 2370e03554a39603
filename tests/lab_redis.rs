//! The lab's worker processes on a real `redis-server` (one per test, on a
//! free port): at-least-once delivery across a Redis restart and across a
//! worker killed with SIGKILL, malformed messages dead-lettered without a
//! crash, Python Dramatiq's exact wire format consumed, and `leakprof run
//! --processes 2` merging a profile that covers every message.
//!
//! Outcomes are read from Redis itself (a message is done when it is gone
//! from the queue's and delay queue's message hashes, `qsize` in Dramatiq's
//! dispatcher) and from the workers' profiles (their task table maps each
//! Dramatiq message id to its outcome). Every wait polls with a deadline.
#![cfg(feature = "cli")]

mod support;

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use leakprof::format::{attributes, Profile, TaskInfo};
use serde_json::Value;
use support::redis::RedisServer;

const QUEUE: &str = "dramatiq:default";
const DELAY_QUEUE: &str = "dramatiq:default.DQ";
const DEAD_LETTERS: &str = "dramatiq:default.XQ";
/// How long any one condition may take to come true. Generous on
/// purpose: it tells a hang from a slow, loaded machine and never
/// measures speed.
const DEADLINE: Duration = Duration::from_secs(30);

fn leakprof() -> Command {
    Command::new(env!("CARGO_BIN_EXE_leakprof"))
}

/// Plain Redis commands against the test server, on a fresh connection per
/// call so a restarted server is simply reconnected to.
struct Keys {
    url: String,
}

impl Keys {
    fn new(redis: &RedisServer) -> Keys {
        Keys { url: redis.url() }
    }

    /// Runs `cmd`, retrying while the server is unreachable (a restart).
    fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        let until = Instant::now() + DEADLINE;
        loop {
            let attempt = redis::Client::open(self.url.as_str())
                .and_then(|client| client.get_connection_with_timeout(Duration::from_secs(2)))
                .and_then(|mut connection| cmd.query::<T>(&mut connection));
            match attempt {
                Ok(reply) => return reply,
                Err(e)
                    if Instant::now() < until && (e.is_io_error() || e.is_connection_dropped()) =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("redis command failed: {e}"),
            }
        }
    }

    /// Messages not yet acked or dead-lettered (Dramatiq's `qsize`).
    fn pending(&self) -> usize {
        let queue: usize = self.query(redis::cmd("HLEN").arg(format!("{QUEUE}.msgs")));
        let delayed: usize = self.query(redis::cmd("HLEN").arg(format!("{DELAY_QUEUE}.msgs")));
        queue + delayed
    }

    /// Ids in the ack sets of every worker, by worker ack-set key.
    fn unacked(&self) -> Vec<(String, usize)> {
        let keys: Vec<String> = self.query(redis::cmd("KEYS").arg("dramatiq:__acks__.*"));
        keys.into_iter()
            .map(|key| {
                let n: usize = self.query(redis::cmd("SCARD").arg(&key));
                (key, n)
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Dead letters of `default`: (redis message id, stored bytes).
    fn dead_letters(&self) -> Vec<(String, String)> {
        let pairs: Vec<(String, String)> =
            self.query(redis::cmd("HGETALL").arg(format!("{DEAD_LETTERS}.msgs")));
        let ids: Vec<String> = self.query(redis::cmd("ZRANGE").arg(DEAD_LETTERS).arg(0).arg(-1));
        assert_eq!(
            ids.iter().collect::<BTreeSet<_>>(),
            pairs.iter().map(|(id, _)| id).collect::<BTreeSet<_>>(),
            "every dead-letter id has a body"
        );
        pairs
    }

    /// Stores `body` under `id` and appends `id` to `queue`, as Dramatiq's
    /// enqueue does.
    fn plant(&self, queue: &str, id: &str, body: &str) {
        let _: () = self.query(
            redis::cmd("HSET")
                .arg(format!("{queue}.msgs"))
                .arg(id)
                .arg(body),
        );
        let _: () = self.query(redis::cmd("RPUSH").arg(queue).arg(id));
    }
}

/// Waits for `condition`, polling every 20 ms, failing after [`DEADLINE`].
fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let until = Instant::now() + DEADLINE;
    while !condition() {
        assert!(
            Instant::now() < until,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `leakprof worker` process on the test server, its log in a file.
struct Worker {
    child: Option<Child>,
    out: PathBuf,
    log: PathBuf,
}

impl Worker {
    fn start(redis: &RedisServer, dir: &Path, name: &str, extra: &[&str]) -> Worker {
        let out = dir.join(name);
        let log = dir.join(format!("{name}.log"));
        let child = leakprof()
            .args(["worker", "--broker", "redis", "--redis-url", &redis.url()])
            .args(["--queues", "default", "--timeline-interval", "20ms"])
            .args(extra)
            .arg("--out")
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Worker {
            child: Some(child),
            out,
            log,
        }
    }

    fn pid(&self) -> libc::pid_t {
        self.child.as_ref().expect("running").id() as libc::pid_t
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("running");
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the worker exited with {status}: {}", self.log());
        }
    }

    /// SIGKILL, like a crash: nothing is written, nothing is settled.
    fn kill(mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then waits for a clean exit and reads the profile.
    fn stop(mut self) -> Profile {
        // SAFETY: our own child's pid (not yet reaped) and a valid signal.
        assert_eq!(unsafe { libc::kill(self.pid(), libc::SIGTERM) }, 0);
        let mut child = self.child.take().expect("running");
        let until = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= until {
                let _ = child.kill();
                panic!("the worker did not stop on SIGTERM: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "worker exited {status}: {}", self.log());
        leakprof::format::load(self.out.join("profile.json"))
            .unwrap_or_else(|e| panic!("{e}; worker log: {}", self.log()))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The profile's tasks by Dramatiq message id.
fn tasks_by_message(profile: &Profile) -> Vec<(&str, &TaskInfo)> {
    profile
        .tasks
        .iter()
        .map(|t| (t.external_id.as_deref().unwrap_or(""), t))
        .collect()
}

fn assert_all_succeeded(profile: &Profile, message_ids: &BTreeSet<String>) {
    let tasks = tasks_by_message(profile);
    for id in message_ids {
        let Some((_, task)) = tasks.iter().find(|(m, _)| m == id) else {
            panic!("message {id} was never processed; tasks: {tasks:?}");
        };
        assert_eq!(task.outcome.as_deref(), Some("succeeded"), "{task:?}");
    }
}

/// `leakprof enqueue`: sends a scenario's messages and returns their ids.
fn enqueue(redis: &RedisServer, scenario: &str, tasks: usize, sleep: &str) -> BTreeSet<String> {
    let output = leakprof()
        .args(["enqueue", "--scenario", scenario, "--broker", "redis"])
        .args(["--redis-url", &redis.url()])
        .args(["--tasks", &tasks.to_string(), "--size", "64KiB"])
        .args(["--sleep", sleep])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let ids: BTreeSet<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1).map(str::to_owned))
        .collect();
    assert_eq!(ids.len(), tasks, "one message id printed per message");
    ids
}

/// A message in Dramatiq's exact format for the `noop` actor.
fn noop_message(message_id: &str, redis_message_id: &str) -> String {
    format!(
        r#"{{"queue_name":"default","actor_name":"noop","args":[],"kwargs":{{}},"options":{{"redis_message_id":"{redis_message_id}"}},"message_id":"{message_id}","message_timestamp":1795477569952}}"#
    )
}

#[test]
fn every_message_is_processed_at_least_once_across_a_redis_restart() {
    let Some(mut redis) = RedisServer::start_persistent() else {
        return;
    };
    const MESSAGES: usize = 40;
    let keys = Keys::new(&redis);
    // 40 messages of 30 ms each on one thread: over a second of work.
    let ids = enqueue(&redis, "sleep-no-ref", MESSAGES, "30ms");
    let dir = tempfile::tempdir().unwrap();
    let mut worker = Worker::start(&redis, dir.path(), "worker", &[]);

    wait_for("a quarter of the messages", || {
        keys.pending() <= MESSAGES * 3 / 4
    });
    let before = keys.pending();
    assert!(
        before > 0 && before < MESSAGES,
        "the restart must come mid-run ({before} of {MESSAGES} pending)"
    );
    redis.restart();
    wait_for("every message to be acked", || keys.pending() == 0);
    worker.assert_running();
    let worker_log = worker.log();
    let profile = worker.stop();

    assert!(keys.unacked().is_empty());
    assert!(keys.dead_letters().is_empty());
    assert_all_succeeded(&profile, &ids);
    // The worker lived through the outage rather than missing it.
    let log = worker_log;
    assert!(
        log.contains("lost connection to Redis"),
        "the worker never saw the restart; log:\n{log}"
    );
    assert!(!log.contains("panicked"), "log:\n{log}");
}

#[test]
fn a_killed_workers_unacked_messages_are_requeued_and_processed_by_another() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let keys = Keys::new(&redis);
    // Each message sleeps 500 ms: worker A fetches both (prefetch 2) and is
    // killed while it holds them unacked.
    let ids = enqueue(&redis, "sleep-no-ref", 2, "500ms");
    let dir = tempfile::tempdir().unwrap();
    let fast = [
        "--heartbeat-timeout",
        "500ms",
        "--maintenance-chance",
        "1000000",
    ];
    let a = Worker::start(&redis, dir.path(), "a", &fast);
    wait_for("worker A to hold both messages", || {
        keys.unacked().iter().map(|(_, n)| n).sum::<usize>() == 2
    });
    let held_by_a = keys.unacked();
    a.kill();
    assert_eq!(keys.unacked(), held_by_a, "SIGKILL settles nothing");
    assert_eq!(keys.pending(), 2);

    let b = Worker::start(
        &redis,
        dir.path(),
        "b",
        &[&fast[..], &["--threads", "2"]].concat(),
    );
    wait_for("worker B to process both messages", || keys.pending() == 0);
    let profile = b.stop();
    assert_all_succeeded(&profile, &ids);
    assert!(keys.unacked().is_empty(), "A's ack set was emptied");
    assert!(keys.dead_letters().is_empty());
}

#[test]
fn malformed_messages_are_dead_lettered_with_a_log_line_and_the_worker_goes_on() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let keys = Keys::new(&redis);
    let malformed = [
        ("bad-not-json", "this is not JSON"),
        ("bad-missing-fields", r#"{"queue_name":"default"}"#),
        ("bad-array", "[1,2,3]"),
        (
            "bad-args-type",
            r#"{"queue_name":"default","actor_name":"noop","args":"x","kwargs":{},"options":{},"message_id":"m","message_timestamp":1}"#,
        ),
    ];
    let mut good = BTreeSet::new();
    for (i, (id, body)) in malformed.iter().enumerate() {
        let message_id = format!("00000000-0000-4000-8000-00000000000{i}");
        keys.plant(
            QUEUE,
            &format!("good-{i}"),
            &noop_message(&message_id, &format!("good-{i}")),
        );
        good.insert(message_id);
        keys.plant(QUEUE, id, body);
    }
    // Well-formed, but for an actor this worker does not have.
    let unknown = noop_message("00000000-0000-4000-8000-0000000000ff", "unknown-actor")
        .replace(r#""actor_name":"noop""#, r#""actor_name":"no_such_actor""#);
    keys.plant(QUEUE, "unknown-actor", &unknown);
    let last = "00000000-0000-4000-8000-000000000009";
    keys.plant(QUEUE, "good-last", &noop_message(last, "good-last"));
    good.insert(last.to_owned());

    let dir = tempfile::tempdir().unwrap();
    let mut worker = Worker::start(&redis, dir.path(), "worker", &[]);
    wait_for("every message to be settled", || keys.pending() == 0);
    worker.assert_running();
    let log = worker.log();
    let profile = worker.stop();

    assert_all_succeeded(&profile, &good);
    let dead = keys.dead_letters();
    let dead_ids: BTreeSet<&str> = dead.iter().map(|(id, _)| id.as_str()).collect();
    let mut expected: BTreeSet<&str> = malformed.iter().map(|(id, _)| *id).collect();
    expected.insert("unknown-actor");
    assert_eq!(dead_ids, expected);
    for (id, body) in &malformed {
        // Dead-lettered as stored, byte for byte.
        assert!(dead.contains(&(id.to_string(), body.to_string())), "{id}");
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("malformed") && l.contains(id))
            .collect();
        assert_eq!(lines.len(), 1, "one log line for {id}; log:\n{log}");
    }
    assert!(
        log.lines()
            .any(|l| l.contains("no_such_actor") && l.contains("dead-letter")),
        "log:\n{log}"
    );
    assert!(!log.contains("panicked"), "log:\n{log}");
}

fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/dramatiq/messages")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn messages_in_dramatiqs_exact_format_are_consumed() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let keys = Keys::new(&redis);
    // As Dramatiq 2.0.0 stored them, with only the actor changed to one of
    // ours, and the retry's eta moved to the past (no test may depend on the clock).
    let plain = fixture("plain.json")
        .trim_end()
        .replace(r#""actor_name":"plain""#, r#""actor_name":"noop""#);
    let retry = fixture("retry.json")
        .trim_end()
        .replace(r#""actor_name":"failing""#, r#""actor_name":"noop""#)
        .replace(r#""eta":1795477569991"#, r#""eta":1000"#);
    let mut messages = Vec::new();
    for (queue, body) in [(QUEUE, &plain), (DELAY_QUEUE, &retry)] {
        let json: Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["actor_name"], "noop", "the fixture changed: {body}");
        let redis_id = json["options"]["redis_message_id"].as_str().unwrap();
        keys.plant(queue, redis_id, body);
        messages.push(json);
    }
    assert!(retry.contains(r#""eta":1000"#));

    let dir = tempfile::tempdir().unwrap();
    let mut worker = Worker::start(&redis, dir.path(), "worker", &[]);
    wait_for("both messages to be acked", || keys.pending() == 0);
    worker.assert_running();
    let profile = worker.stop();

    let ids: BTreeSet<String> = messages
        .iter()
        .map(|m| m["message_id"].as_str().unwrap().to_owned())
        .collect();
    assert_all_succeeded(&profile, &ids);
    let tasks = tasks_by_message(&profile);
    for m in &messages {
        let (_, task) = tasks
            .iter()
            .find(|(id, _)| *id == m["message_id"].as_str().unwrap())
            .unwrap();
        assert_eq!(task.actor.as_deref(), Some("noop"));
        assert_eq!(task.queue.as_deref(), Some("default"));
        // Dramatiq's `retries` option is the tag's retry number.
        let retries = m["options"]["retries"].as_u64().unwrap_or(0);
        assert_eq!(task.retries as u64, retries, "{task:?}");
    }
    assert!(keys.dead_letters().is_empty());
    assert!(keys.unacked().is_empty());
}

/// Both worker processes number their first message 1: the merge must
/// still give every message its own task.
#[test]
fn run_with_two_processes_merges_a_profile_covering_every_message() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    const TASKS: usize = 6;
    let keys = Keys::new(&redis);
    let dir = tempfile::tempdir().unwrap();
    // Each message holds its payload across a 300 ms sleep and a process
    // fetches at most 2 at a time (one thread), so one process cannot take
    // them all before the other starts: both take part.
    let output = leakprof()
        .args(["--quiet", "run", "--scenario", "sleep", "--processes", "2"])
        .args(["--broker", "redis", "--redis-url", &redis.url()])
        .args(["--size", "1", "--tasks", &TASKS.to_string()])
        .args(["--sleep", "300ms", "--threads", "1", "--duration", "60s"])
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(keys.pending(), 0, "every message was acked");
    assert!(keys.dead_letters().is_empty());

    let per_process: Vec<Profile> = (0..2)
        .map(|i| {
            leakprof::format::load(dir.path().join(format!("process-{i}/profile.json"))).unwrap()
        })
        .collect();
    let mut ran = BTreeSet::new();
    for (i, p) in per_process.iter().enumerate() {
        assert!(!p.tasks.is_empty(), "process {i} processed nothing");
        ran.extend(p.tasks.iter().filter_map(|t| t.external_id.clone()));
    }
    assert_eq!(ran.len(), TASKS);

    let merged = leakprof::format::load(dir.path().join("profile.json")).unwrap();
    let attribute = |key: &str| merged.meta.attributes.get(key).map(String::as_str);
    assert_eq!(attribute("processes"), Some("2"));
    assert_eq!(attribute(attributes::SCENARIO), Some("sleep"));
    assert_eq!(attribute(attributes::STOP_REASON), Some("completed"));
    let covered: BTreeSet<String> = merged
        .tasks
        .iter()
        .filter_map(|t| t.external_id.clone())
        .collect();
    assert_eq!(covered, ran, "the merged task table covers every message");
    assert_eq!(merged.tasks.len(), TASKS, "one task per message");
    let numbers: BTreeSet<u64> = merged.tasks.iter().map(|t| t.task).collect();
    assert_eq!(numbers.len(), TASKS, "distinct task numbers");
    for t in &merged.tasks {
        assert_eq!(t.outcome.as_deref(), Some("succeeded"), "{t:?}");
        assert_eq!(t.actor.as_deref(), Some("sleep_task"), "{t:?}");
    }
    // Every task's tags and timeline marks followed it into the merge.
    for t in &merged.tasks {
        assert!(merged.tags.iter().any(|tag| tag.task == Some(t.task)));
        assert!(merged.timeline.iter().any(|p| p.task == Some(t.task)));
    }
    let live: u64 = per_process.iter().map(|p| p.totals.live.bytes).sum();
    assert_eq!(merged.totals.live.bytes, live);
}

/// `--trace-memory` reaches the worker processes: each job's report is
/// printed, and with `--trace-memory-type` each process draws its chains
/// into its own directory.
#[test]
fn run_with_two_processes_traces_every_job() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let output = leakprof()
        .args([
            "--quiet",
            "run",
            "--scenario",
            "exception",
            "--processes",
            "2",
        ])
        .args(["--broker", "redis", "--redis-url", &redis.url()])
        .args(["--size", "1", "--retries", "2", "--threads", "1"])
        .args(["--min-backoff", "1ms", "--max-backoff", "1ms"])
        .args(["--trace-memory-type", "TaskError", "--duration", "60s"])
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let reports = stderr
        .lines()
        .filter(|line| line.starts_with("[trace-memory] task "))
        .count();
    assert_eq!(reports, 3, "one report per attempt: {stderr}");
    let charts: Vec<PathBuf> = (0..2)
        .flat_map(|i| {
            let traces = dir.path().join(format!("process-{i}/trace-memory"));
            std::fs::read_dir(traces)
                .into_iter()
                .flatten()
                .map(|entry| entry.unwrap().path())
        })
        .filter(|path| path.extension().is_some_and(|e| e == "svg"))
        .collect();
    assert!(
        !charts.is_empty(),
        "no chain charts in the processes' directories: {stderr}"
    );
}

/// The pids of `parent`'s children.
fn children(parent: u32) -> Vec<libc::pid_t> {
    std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|pid| pid.parse().unwrap())
        .collect()
}

/// A worker process that crashes is reported as what it is (not as the
/// `--max-rss` guard), and the other processes' profiles are still merged.
#[test]
fn run_with_two_processes_reports_a_crashed_worker_and_keeps_the_others_profile() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let keys = Keys::new(&redis);
    let dir = tempfile::tempdir().unwrap();
    let run = leakprof()
        .args(["--quiet", "run", "--scenario", "sleep", "--processes", "2"])
        .args(["--broker", "redis", "--redis-url", &redis.url()])
        .args(["--size", "1", "--tasks", "4", "--sleep", "5s"])
        .args(["--threads", "1", "--duration", "120s"])
        .arg("--out")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Both workers hold messages: both are up and consuming.
    wait_for("both worker processes to take messages", || {
        keys.unacked().len() == 2
    });
    let workers = children(run.id());
    assert_eq!(workers.len(), 2, "{workers:?}");
    // SAFETY: a pid read from /proc just now, of a child of our child that
    // cannot be reaped before its parent waits for it; a valid signal.
    assert_eq!(unsafe { libc::kill(workers[1], libc::SIGKILL) }, 0);
    let output = run.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a crash is a failure: {stderr}");
    assert!(
        stderr.contains(&format!("pid {}", workers[1]))
            && stderr.contains("killed by signal 9 (SIGKILL)"),
        "{stderr}"
    );
    let merged = leakprof::format::load(dir.path().join("profile.json"))
        .unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(
        merged
            .meta
            .attributes
            .get(attributes::STOP_REASON)
            .map(String::as_str),
        Some("worker-failed")
    );
    assert!(
        !merged.tasks.is_empty(),
        "the surviving process's tasks are merged"
    );
}

/// SIGTERM (or SIGINT) to the parent stops the workers cleanly and still
/// merges their profiles.
#[test]
fn run_with_two_processes_stops_cleanly_on_a_signal() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let keys = Keys::new(&redis);
    let dir = tempfile::tempdir().unwrap();
    let run = leakprof()
        .args(["--quiet", "run", "--scenario", "sleep", "--processes", "2"])
        .args(["--broker", "redis", "--redis-url", &redis.url()])
        .args(["--size", "1", "--tasks", "4", "--sleep", "2s"])
        .args(["--threads", "1", "--duration", "120s"])
        .arg("--out")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("both worker processes to take messages", || {
        keys.unacked().len() == 2
    });
    // SAFETY: our own child's pid (not yet reaped) and a valid signal.
    assert_eq!(
        unsafe { libc::kill(run.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let output = run.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{}: {stderr}", output.status);
    let merged = leakprof::format::load(dir.path().join("profile.json"))
        .unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(
        merged
            .meta
            .attributes
            .get(attributes::STOP_REASON)
            .map(String::as_str),
        Some("signal")
    );
    for i in 0..2 {
        assert!(
            dir.path()
                .join(format!("process-{i}/profile.json"))
                .exists(),
            "process {i} wrote its profile"
        );
    }
}

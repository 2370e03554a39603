//! An apalis worker with a planted leak, profiled through leakprof's
//! `tower` layer. The README's "An apalis worker" walkthrough runs it:
//!
//! ```text
//! cargo run --release --example apalis_worker
//! leakprof report leakprof-out/apalis-worker --by task
//! leakprof report leakprof-out/apalis-worker --by owner
//! leakprof check leakprof-out/apalis-worker --max-leak-per-retry 1MiB
//! ```
//!
//! Usage: `apalis_worker [PROFILE] [JOBS] [FAILING]` (defaults:
//! `leakprof-out/apalis-worker/profile.json`, 100,000 small jobs, 10
//! failing jobs). Apalis (`MemoryStorage`, `RetryPolicy::retries(3)`,
//! concurrency 8 on tokio's threads) runs every job; one line,
//! `.layer(TagLayer::new(...))`, tags each attempt with its job id and
//! attempt number.
//!
//! The leak: a failing job's every attempt records a `FailedAttempt` with
//! the 4 MiB payload it was working on in an `ErrorHistory` that the
//! worker shares through apalis's `Data` and never prunes. leakprof must
//! find 4 attempts x 4 MiB per failing job owned by the registered
//! "error history", and 4 MiB per retry from the tags alone.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use apalis::prelude::*;
use leakprof::tower::TagLayer;
use leakprof::{owner, GraphOptions, Options, Recorder, Tag};

#[global_allocator]
static GLOBAL: leakprof::LeakAlloc = leakprof::LeakAlloc::system();

/// Bytes a failing attempt works on (and the history keeps).
const PAYLOAD: usize = 4 << 20;
/// `RetryPolicy::retries(RETRIES)`: each failing job runs RETRIES + 1 times.
const RETRIES: usize = 3;

#[derive(Clone, Debug)]
struct Job {
    id: u64,
    fail: bool,
}

/// What the history remembers of a failed attempt: everything, payload
/// included (the planted leak).
#[allow(dead_code)] // Kept for its memory, never read back.
struct FailedAttempt {
    job: u64,
    attempt: usize,
    error: String,
    payload: Vec<u8>,
}

/// Failed attempts, shared by every job through `Data`.
#[derive(Default)]
struct ErrorHistory {
    attempts: Mutex<Vec<FailedAttempt>>,
}

/// Jobs settled (succeeded, or failed for the last time), to stop the
/// worker once the queue is done.
struct Progress {
    settled: AtomicU64,
    total: u64,
}

#[derive(Debug)]
struct JobFailed(u64);

impl std::fmt::Display for JobFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "job {} failed", self.0)
    }
}

impl std::error::Error for JobFailed {}

/// The payload a failing job works on: filled, so it is real memory.
#[inline(never)]
fn make_payload(job: u64) -> Vec<u8> {
    vec![(job as u8) | 1; PAYLOAD]
}

/// A small job's work: a few short-lived allocations.
#[inline(never)]
fn small_work(job: u64) -> usize {
    let words: Vec<String> = (0..4).map(|k| format!("job-{job}-{k}")).collect();
    words.iter().map(String::len).sum()
}

async fn handle(
    job: Job,
    attempt: Attempt,
    history: Data<Arc<ErrorHistory>>,
    progress: Data<Arc<Progress>>,
    worker: WorkerContext,
) -> Result<usize, JobFailed> {
    let result = if job.fail {
        let payload = make_payload(job.id);
        history.attempts.lock().unwrap().push(FailedAttempt {
            job: job.id,
            attempt: attempt.current(),
            error: format!("job {} failed on attempt {}", job.id, attempt.current()),
            payload,
        });
        Err(JobFailed(job.id))
    } else {
        Ok(small_work(job.id))
    };
    // `current()` counts this attempt: the last one is RETRIES + 1.
    if result.is_ok() || attempt.current() > RETRIES {
        let settled = progress.settled.fetch_add(1, Ordering::SeqCst) + 1;
        if settled == progress.total {
            let _ = worker.stop();
        }
    }
    result
}

fn argument<T: std::str::FromStr>(n: usize, default: T) -> Result<T, String> {
    match std::env::args().nth(n) {
        None => Ok(default),
        Some(a) => a
            .parse()
            .map_err(|_| format!("argument {n}: not a number: {a}")),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("leakprof-out/apalis-worker/profile.json"));
    let jobs: u64 = argument(2, 100_000)?;
    let failing: u64 = argument(3, 10)?;

    let recorder = Recorder::start(Options::default())?;
    let history = Arc::new(ErrorHistory::default());
    owner::register_arc("error history", &history).forever();
    let progress = Arc::new(Progress {
        settled: AtomicU64::new(0),
        total: jobs + failing,
    });

    let mut storage = MemoryStorage::new();
    // The failing jobs spread among the others.
    let every = (jobs / failing.max(1)).max(1);
    let mut failed = 0;
    for id in 0..jobs + failing {
        let fail = failed < failing && id % (every + 1) == every / 2;
        failed += fail as u64;
        storage.push(Job { id, fail }).await?;
    }
    assert_eq!(failed, failing, "every failing job is queued");

    WorkerBuilder::new("apalis-worker")
        .backend(storage)
        .concurrency(8)
        .parallelize(tokio::spawn)
        .data(history.clone())
        .data(progress.clone())
        .retry(RetryPolicy::retries(RETRIES))
        // The one line leakprof needs: inside the retry layer, every
        // attempt runs under its job's task and attempt number.
        .layer(TagLayer::new(|task: &Task<Job>| {
            Tag::task(task.args.id).retry(task.attempt())
        }))
        .build(handle)
        .run()
        .await?;

    let profile = recorder.snapshot_with_graph(&GraphOptions::default())?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    profile.save(&out)?;
    let kept = history.attempts.lock().unwrap().len();
    println!(
        "ran {} jobs ({failing} failing, {kept} failed attempts kept); profile: {}",
        jobs + failing,
        out.display()
    );
    Ok(())
}

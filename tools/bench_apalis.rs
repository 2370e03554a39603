//! The apalis workload of `tools/bench-apalis`: N no-op jobs and F failing
//! jobs that keep a 4 MiB payload per attempt in a shared error history
//! (the planted leak of `examples/apalis_worker.rs`), run by apalis 1.0
//! (`MemoryStorage`, `RetryPolicy::retries(3)`, concurrency 8 on 2 tokio
//! threads), every attempt tagged by leakprof's tower layer.
//!
//! `bench-apalis MODE JOBS FAILING` with MODE:
//! - `system`: the recorder is not started (LeakAlloc forwards every call
//!   to the system allocator after one relaxed load); heaptrack runs this.
//! - `full`: every allocation recorded, as `Options::default()`.
//! - `sampled`: Poisson sampling, `sample_mean_bytes(512 KiB)`.
//!
//! Prints one JSON line: jobs, seconds (from the worker's start until the
//! last job settled; queueing and the profile are outside), jobs_per_s,
//! and the CPU time this process used over the same span (cpu_seconds,
//! jobs_per_cpu_s: less disturbed than wall time by other processes on a
//! shared machine; under heaptrack it leaves out heaptrack's separate
//! interpreter process).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use apalis::prelude::*;
use leakprof::tower::TagLayer;
use leakprof::{Options, Recorder, Tag};

#[global_allocator]
static GLOBAL: leakprof::LeakAlloc = leakprof::LeakAlloc::system();

const PAYLOAD: usize = 4 << 20;
const RETRIES: usize = 3;

#[derive(Clone, Debug)]
struct Job {
    id: u64,
    fail: bool,
}

#[derive(Default)]
struct ErrorHistory {
    payloads: Mutex<Vec<Vec<u8>>>,
}

struct Progress {
    settled: AtomicU64,
    total: u64,
}

#[derive(Debug)]
struct Failed;

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("failed")
    }
}

impl std::error::Error for Failed {}

async fn handle(
    job: Job,
    attempt: Attempt,
    history: Data<Arc<ErrorHistory>>,
    progress: Data<Arc<Progress>>,
    worker: WorkerContext,
) -> Result<(), Failed> {
    let result = if job.fail {
        let payload = vec![(job.id as u8) | 1; PAYLOAD];
        history.payloads.lock().unwrap().push(payload);
        Err(Failed)
    } else {
        Ok(())
    };
    let settled = result.is_ok() || attempt.current() > RETRIES;
    if settled && progress.settled.fetch_add(1, Ordering::SeqCst) + 1 == progress.total {
        let _ = worker.stop();
    }
    result
}

/// CPU time (user + system) this process has used, in seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: `rusage` is plain integers and timevals: all zeroes is a
    // valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one `rusage` into the struct we pass.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return f64::NAN;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn arg(n: usize) -> Result<u64, String> {
    let a = std::env::args()
        .nth(n)
        .ok_or("usage: bench-apalis system|full|sampled JOBS FAILING")?;
    a.parse().map_err(|_| format!("not a number: {a}"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let (jobs, failing) = (arg(2)?, arg(3)?);
    let recorder = match mode.as_str() {
        "system" => None,
        "full" => Some(Recorder::start(Options::default())?),
        "sampled" => Some(Recorder::start(
            Options::default().sample_mean_bytes(512 * 1024),
        )?),
        other => return Err(format!("unknown mode {other:?} (system, full, sampled)").into()),
    };
    let history = Arc::new(ErrorHistory::default());
    let progress = Arc::new(Progress {
        settled: AtomicU64::new(0),
        total: jobs + failing,
    });
    let mut storage = MemoryStorage::new();
    let every = (jobs / failing.max(1)).max(1);
    let mut failed = 0;
    for id in 0..jobs + failing {
        let fail = failed < failing && id % (every + 1) == every / 2;
        failed += fail as u64;
        storage.push(Job { id, fail }).await?;
    }
    let started = Instant::now();
    let cpu_started = cpu_seconds();
    WorkerBuilder::new("bench-apalis")
        .backend(storage)
        .concurrency(8)
        .parallelize(tokio::spawn)
        .data(history.clone())
        .data(progress.clone())
        .retry(RetryPolicy::retries(RETRIES))
        .layer(TagLayer::new(|task: &Task<Job>| {
            Tag::task(task.args.id).retry(task.attempt())
        }))
        .build(handle)
        .run()
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_started;
    drop(recorder);
    let total = jobs + failing;
    println!(
        "{{\"jobs\": {total}, \"seconds\": {seconds:.6}, \"jobs_per_s\": {:.1}, \"cpu_seconds\": {cpu:.6}, \"jobs_per_cpu_s\": {:.1}}}",
        total as f64 / seconds,
        total as f64 / cpu
    );
    Ok(())
}

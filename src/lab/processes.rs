//! `leakprof run --processes N`: this process enqueues the scenario's
//! messages, then N `leakprof worker` processes consume them from Redis,
//! each writing its own profile; when the queue is drained (or at
//! `--duration`, or on SIGINT/SIGTERM) they are stopped with SIGTERM and
//! their profiles are merged (summed by symbolized stack and tag) into the
//! output directory's `profile.json`. Should this process die without
//! stopping them, the workers are sent SIGTERM by the kernel
//! (`PR_SET_PDEATHSIG`) and stop cleanly.
//!
//! Every flag of the run reaches the workers ([`worker_args`]; `--max-rss`
//! is shared out between them, `--trace-memory` output goes to each one's
//! directory). A worker that ends by itself ends the run: with its own stop
//! reason when it stopped cleanly (its share of `--max-rss`, say); otherwise
//! (an error exit, a crash) the others are stopped, whatever profiles exist
//! are merged and written, and the run fails naming the worker and how it
//! ended. Each worker's end is part of the run's report.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::broker::Broker;
use super::outputs;
use super::run::{
    enqueue_scenario, watch_signals, BrokerChoice, RunConfig, RunReport, Signals, StopReason,
};
use crate::format::{attributes, Profile};

/// How one worker process ended.
#[derive(Clone, Debug)]
pub struct ProcessEnd {
    pub index: usize,
    pub pid: u32,
    /// `None` if waiting for it failed.
    pub status: Option<ExitStatus>,
    /// The stop reason in the profile it wrote; `None` if it wrote none.
    pub stop: Option<String>,
}

impl ProcessEnd {
    /// A clean exit with its profile written.
    pub fn clean(&self) -> bool {
        self.status.is_some_and(|s| s.success()) && self.stop.is_some()
    }
}

impl fmt::Display for ProcessEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use std::os::unix::process::ExitStatusExt as _;
        write!(f, "worker process {} (pid {}) ", self.index, self.pid)?;
        let Some(status) = self.status else {
            return write!(f, "ended, how could not be read");
        };
        match (status.code(), status.signal()) {
            (Some(code), _) => write!(f, "exited with code {code}")?,
            (None, Some(signal)) => {
                write!(f, "was killed by signal {signal}")?;
                if let Some(name) = signal_name(signal) {
                    write!(f, " ({name})")?;
                }
                if status.core_dumped() {
                    write!(f, ", core dumped")?;
                }
            }
            (None, None) => write!(f, "ended ({status})")?,
        }
        match &self.stop {
            Some(stop) => write!(f, " (stopped: {stop})"),
            None => write!(f, " without writing its profile"),
        }
    }
}

fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => return None,
    })
}

/// A running `leakprof worker`.
struct WorkerProcess {
    index: usize,
    dir: PathBuf,
    child: Child,
    status: Option<ExitStatus>,
}

impl WorkerProcess {
    /// Polls once; true once it has ended.
    fn ended(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status.is_some()
    }

    fn terminate(&self) {
        if self.status.is_none() {
            // SAFETY: kill with the pid of our own child, not reaped yet
            // (its status is unknown), and a valid signal.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        }
    }

    /// Waits for it to end and reads its profile, if it wrote one.
    fn finish(mut self) -> (ProcessEnd, Option<Profile>) {
        let status = self.status.or_else(|| self.child.wait().ok());
        let profile = crate::format::load(self.dir.join("profile.json")).ok();
        let stop = profile
            .as_ref()
            .and_then(|p| p.meta.attributes.get(attributes::STOP_REASON).cloned());
        let end = ProcessEnd {
            index: self.index,
            pid: self.child.id(),
            status,
            stop,
        };
        (end, profile)
    }
}

pub fn run(config: &RunConfig, processes: usize) -> anyhow::Result<RunReport> {
    let BrokerChoice::Redis { url, .. } = &config.broker else {
        anyhow::bail!("--processes needs --broker redis");
    };
    let scenario = config.scenario.context("--processes runs a scenario")?;
    std::fs::create_dir_all(&config.out)
        .with_context(|| format!("creating {}", config.out.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let broker = rt
        .block_on(Broker::redis(
            config
                .broker
                .redis_config()
                .context("--processes needs --broker redis")?,
        ))
        .with_context(|| format!("connecting to Redis at {url}"))?;
    let signals = Arc::new(Signals::default());
    watch_signals(&rt, &signals)?;
    enqueue_scenario(&rt, &broker, scenario, config)?;

    let exe = std::env::current_exe().context("finding the leakprof executable")?;
    let mut workers = Vec::with_capacity(processes);
    for index in 0..processes {
        let dir = config.out.join(format!("process-{index}"));
        let child = spawn_worker(&exe, worker_args(config, processes, index, &dir))
            .context("starting a worker process")?;
        workers.push(WorkerProcess {
            index,
            dir,
            child,
            status: None,
        });
    }

    let started = Instant::now();
    let stop = watch(&rt, &broker, config, &signals, &mut workers, started);
    for worker in &workers {
        worker.terminate();
    }
    let (ends, profiles): (Vec<ProcessEnd>, Vec<Option<Profile>>) =
        workers.into_iter().map(WorkerProcess::finish).unzip();
    let profiles: Vec<Profile> = profiles.into_iter().flatten().collect();
    let describe_ends = || {
        ends.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    };
    if profiles.is_empty() {
        anyhow::bail!("no worker process wrote a profile: {}", describe_ends());
    }
    let mut merged = crate::analysis::merge(&profiles).context("no profiles to merge")?;
    let meta = &mut merged.meta.attributes;
    meta.insert(attributes::SCENARIO.into(), scenario.name.into());
    meta.insert(attributes::STOP_REASON.into(), stop.as_str().into());
    meta.insert("processes".into(), processes.to_string());
    let summary = outputs::write(&config.out, &merged)?;
    let failed: Vec<String> = ends
        .iter()
        .filter(|end| !end.clean())
        .map(ToString::to_string)
        .collect();
    if !failed.is_empty() {
        anyhow::bail!(
            "{}; the {} profile(s) written are merged into {}",
            failed.join("; "),
            profiles.len(),
            config.out.display()
        );
    }
    let attempts = merged.tasks.iter().map(|t| t.retries as u64 + 1).sum();
    let max_retry = merged
        .tasks
        .iter()
        .map(|t| t.retries as u64)
        .max()
        .unwrap_or(0);
    Ok(RunReport {
        stop,
        out: config.out.clone(),
        elapsed: started.elapsed(),
        attempts,
        max_retry,
        retry_history: None,
        processes: ends,
        summary,
    })
}

/// Starts `leakprof worker` with `args`, to be sent SIGTERM if this
/// process dies first.
fn spawn_worker(exe: &Path, args: Vec<OsString>) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt as _;
    let parent = std::process::id() as libc::pid_t;
    let mut command = Command::new(exe);
    command.args(args);
    // The death signal follows the thread that forks: this is the run's
    // main thread, which outlives the workers.
    // SAFETY: between fork and exec the closure only makes
    // async-signal-safe calls (prctl, getppid, _exit) and allocates nothing
    // (an OS error is a code, not a heap value).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before the request took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    command.spawn()
}

/// Waits for the run to end: a signal, a worker ending by itself,
/// `--duration`, or the queue drained.
fn watch(
    rt: &tokio::runtime::Runtime,
    broker: &Broker,
    config: &RunConfig,
    signals: &Signals,
    workers: &mut [WorkerProcess],
    started: Instant,
) -> StopReason {
    loop {
        // Driving the runtime runs the signal handlers' tasks.
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(200)).await });
        if signals.stop.load(Ordering::Acquire) {
            return StopReason::Signal;
        }
        if let Some(i) = workers.iter_mut().position(WorkerProcess::ended) {
            return own_stop_reason(&workers[i]);
        }
        if started.elapsed() >= config.duration {
            return StopReason::Duration;
        }
        if rt.block_on(broker.qsize(&config.actor.queue)).unwrap_or(1) == 0 {
            return StopReason::Completed;
        }
    }
}

/// Why a worker that ended by itself stopped: the reason its profile gives
/// for a clean exit (`max-rss` for its share of the guard), else a failure.
fn own_stop_reason(worker: &WorkerProcess) -> StopReason {
    let clean = worker.status.is_some_and(|s| s.success());
    let profile = crate::format::load(worker.dir.join("profile.json")).ok();
    let reason = profile
        .as_ref()
        .and_then(|p| p.meta.attributes.get(attributes::STOP_REASON))
        .and_then(|reason| StopReason::parse(reason));
    match reason {
        Some(reason) if clean => {
            tracing::info!(
                "worker process {} stopped: {}",
                worker.index,
                reason.as_str()
            );
            reason
        }
        _ => StopReason::WorkerFailed,
    }
}

/// The command line of worker process `index` of `processes`: every flag
/// of the run that concerns a worker.
pub fn worker_args(
    config: &RunConfig,
    processes: usize,
    index: usize,
    dir: &Path,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["--quiet".into(), "worker".into()];
    let mut flag = |name: &str, value: &str| {
        args.push(name.into());
        args.push(value.into());
    };
    // Milliseconds, the lab's resolution, in the unit the CLI parses.
    let duration = |d: Duration| format!("{}ms", d.as_millis());
    if let BrokerChoice::Redis {
        url,
        heartbeat_timeout,
        maintenance_chance,
    } = &config.broker
    {
        flag("--broker", "redis");
        flag("--redis-url", url);
        flag("--heartbeat-timeout", &duration(*heartbeat_timeout));
        flag("--maintenance-chance", &maintenance_chance.to_string());
    }
    flag("--queues", &config.actor.queue);
    flag("--queue", &config.actor.queue);
    flag("--threads", &config.threads.to_string());
    flag("--middleware", config.variant.name);
    flag("--retries", &config.actor.max_retries.to_string());
    flag("--min-backoff", &duration(config.actor.min_backoff));
    flag("--max-backoff", &duration(config.actor.max_backoff));
    flag("--time-limit", &duration(config.actor.time_limit));
    flag("--result-ttl", &duration(config.result_ttl));
    flag(
        "--max-rss",
        &format!("{}B", config.max_rss / processes.max(1) as u64),
    );
    flag(
        "--timeline-interval",
        &duration(Duration::from_millis(config.timeline_interval_ms)),
    );
    if let Some(pattern) = &config.trace_memory_type {
        flag("--trace-memory-type", pattern);
    }
    if config.trace_memory {
        args.push("--trace-memory".into());
    }
    if let Some(traces) = &config.trace_memory_output_dir {
        args.push("--trace-memory-output-dir".into());
        args.push(traces.join(format!("process-{index}")).into());
    }
    args.push("--out".into());
    args.push(dir.into());
    args
}

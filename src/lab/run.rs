//! `leakprof run` and `leakprof worker`: boot the lab worker under the
//! recorder, feed it a scenario (or whatever is in the queues), stop at the
//! first of completion, `--duration`, `--max-rss` or a signal, and write the
//! output directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::actor::{Actor, ActorOptions, Actors};
use super::broker::{Broker, RedisConfig};
use super::middleware::{AsyncIo, Chain, Env, HistoryLen, Middleware, Results, Retries, TimeLimit};
use super::outputs;
use super::results::{MemoryResults, RedisResults, ResultBackend};
use super::scenarios::{self, Expect, Feed, Params, Scenario};
use super::trace::Tracer;
use super::variants::Variant;
use super::worker::{Worker, WorkerConfig, WorkerStats};
use crate::format::{attributes, events, Profile};
use crate::record::sys;
use crate::{Options, Recorder};

/// Seed-faithful defaults, read by the CLI too.
pub mod defaults {
    use std::time::Duration;

    /// The seed's `max_retries=1_000_000`.
    pub const RETRIES: u64 = 1_000_000;
    /// The seed's "100 ms max backoff" (and min, clamped to it).
    pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
    pub const MAX_BACKOFF: Duration = Duration::from_millis(100);
    /// The seed's runs lasted about 30 s.
    pub const DURATION: Duration = Duration::from_secs(30);
    pub const SLEEP: Duration = Duration::from_secs(30);
    pub const RESULT_TTL: Duration =
        Duration::from_millis(super::super::actor::defaults::RESULT_TTL_MS);
    pub const TIME_LIMIT: Duration =
        Duration::from_millis(super::super::actor::defaults::TIME_LIMIT_MS);
    pub const TIMELINE_INTERVAL: Duration =
        Duration::from_millis(crate::record::defaults::TIMELINE_INTERVAL_MS);
    pub const REDIS_URL: &str = "redis://127.0.0.1:6379/0";
    pub const OUT_ROOT: &str = "leakprof-out";
    pub const QUEUE: &str = super::super::actor::defaults::QUEUE;
}

/// Profile attributes: what the retry history held at the end of the run.
pub const RETRY_CLOSURES_KEPT: &str = "retry_closures_kept";
pub const RETRIES_PRUNED: &str = "retries_pruned";

/// Which broker to run on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BrokerChoice {
    Memory,
    Redis {
        url: String,
        /// A worker silent this long is dead (its unacked messages are
        /// requeued by the next maintenance).
        heartbeat_timeout: Duration,
        /// Calls out of 1,000,000 that run maintenance first.
        maintenance_chance: u32,
    },
}

impl BrokerChoice {
    pub fn name(&self) -> &'static str {
        match self {
            BrokerChoice::Memory => "memory",
            BrokerChoice::Redis { .. } => "redis",
        }
    }

    /// The Redis broker's settings; `None` for the memory broker.
    pub fn redis_config(&self) -> Option<RedisConfig> {
        match self {
            BrokerChoice::Memory => None,
            BrokerChoice::Redis {
                url,
                heartbeat_timeout,
                maintenance_chance,
            } => {
                let mut config = RedisConfig::new(url.clone());
                config.heartbeat_timeout = *heartbeat_timeout;
                config.maintenance_chance = *maintenance_chance;
                Some(config)
            }
        }
    }
}

/// Actor options that come from the command line.
#[derive(Clone, Debug)]
pub struct ActorSettings {
    pub max_retries: u64,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub time_limit: Duration,
    pub queue: String,
}

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// `None` for `leakprof worker`: consume whatever is queued.
    pub scenario: Option<&'static Scenario>,
    pub variant: &'static Variant,
    pub broker: BrokerChoice,
    pub actor: ActorSettings,
    pub payload_bytes: usize,
    pub tasks: usize,
    pub threads: usize,
    pub sleep: Duration,
    pub result_ttl: Duration,
    pub duration: Duration,
    pub max_rss: u64,
    pub out: PathBuf,
    pub queues: Vec<String>,
    pub timeline_interval_ms: u64,
    /// Print what each job left behind (`--trace-memory`).
    pub trace_memory: bool,
    /// Also draw retainer chains of this type per job into
    /// `trace_memory_output_dir` (`--trace-memory-type`).
    pub trace_memory_type: Option<String>,
    pub trace_memory_output_dir: Option<PathBuf>,
    pub quiet: bool,
}

/// Why a run stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Completed,
    Duration,
    MaxRss,
    Signal,
    /// `--processes`: a worker process failed (an error exit, a crash).
    WorkerFailed,
}

impl StopReason {
    const ALL: [StopReason; 5] = [
        StopReason::Completed,
        StopReason::Duration,
        StopReason::MaxRss,
        StopReason::Signal,
        StopReason::WorkerFailed,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            StopReason::Completed => "completed",
            StopReason::Duration => "duration",
            StopReason::MaxRss => "max-rss",
            StopReason::Signal => "signal",
            StopReason::WorkerFailed => "worker-failed",
        }
    }

    /// The reason [`StopReason::as_str`] names.
    pub fn parse(name: &str) -> Option<StopReason> {
        StopReason::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

/// What a run produced.
#[derive(Debug)]
pub struct RunReport {
    pub stop: StopReason,
    pub out: PathBuf,
    pub elapsed: Duration,
    pub attempts: u64,
    pub max_retry: u64,
    /// What the Retries middleware's history held at the end (`None` when
    /// the worker ran in other processes).
    pub retry_history: Option<HistoryLen>,
    /// `--processes`: how each worker process ended.
    pub processes: Vec<super::processes::ProcessEnd>,
    pub summary: crate::analysis::summary::Summary,
}

/// A default memory guard: half of the machine's RAM, and no more than
/// 80% of what is available at start.
pub fn default_max_rss() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| -> Option<u64> {
        meminfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    match (field("MemTotal:"), field("MemAvailable:")) {
        (Some(total), Some(avail)) => (total / 2).min(avail / 5 * 4),
        (Some(total), None) => total / 2,
        _ => 4 << 30,
    }
}

/// The lab's actor table: every scenario's actor, with the run's options.
pub fn actor_table(settings: &ActorSettings) -> Actors {
    let mut actors = Actors::new();
    for s in scenarios::SCENARIOS {
        actors.register(Actor {
            name: s.actor.to_string(),
            function: s.function,
            options: ActorOptions {
                queue: settings.queue.clone(),
                max_retries: settings.max_retries,
                min_backoff: settings.min_backoff,
                max_backoff: settings.max_backoff,
                time_limit: settings.time_limit,
                store_results: s.store_results,
                throws: Vec::new(),
            },
        });
    }
    actors.register(Actor {
        name: "noop".to_string(),
        function: super::actor::ActorFn::Sync(|_| Ok(serde_json::Value::Null)),
        options: ActorOptions {
            queue: settings.queue.clone(),
            ..ActorOptions::default()
        },
    });
    actors
}

fn params(config: &RunConfig) -> Params {
    Params {
        payload_bytes: config.payload_bytes,
        tasks: config.tasks,
        sleep: config.sleep,
        queue: config.actor.queue.clone(),
    }
}

/// Puts the scenario's messages, sized by `config`, on the broker.
pub(crate) fn enqueue_scenario(
    rt: &tokio::runtime::Runtime,
    broker: &Broker,
    scenario: &Scenario,
    config: &RunConfig,
) -> anyhow::Result<()> {
    let params = params(config);
    for message in scenario.messages(&params) {
        rt.block_on(broker.enqueue(message, None))
            .context("enqueueing the scenario's messages")?;
    }
    Ok(())
}

/// Feeds a streaming scenario's messages while the worker runs, keeping at
/// most `backlog` of them unfinished (see `Feed::Streaming`).
struct Feeder {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Feeder {
    fn start(
        rt: tokio::runtime::Handle,
        broker: Broker,
        scenario: &'static Scenario,
        params: Params,
        stats: Arc<WorkerStats>,
        backlog: usize,
    ) -> anyhow::Result<Feeder> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("scenario-feeder".into())
            .spawn(move || {
                for i in 0..params.tasks.max(1) {
                    while i as u64 >= stats.finished() + backlog as u64 {
                        if flag.load(Ordering::Acquire) {
                            return Ok(());
                        }
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    if flag.load(Ordering::Acquire) {
                        return Ok(());
                    }
                    rt.block_on(broker.enqueue(scenario.message(&params, i), None))
                        .context("enqueueing the scenario's messages")?;
                }
                Ok(())
            })
            .context("starting the scenario's feeder")?;
        Ok(Feeder {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops feeding; an enqueue error ends the run with it.
    fn finish(mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Release);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => anyhow::bail!("the scenario's feeder panicked"),
            None => Ok(()),
        }
    }
}

/// Signals the run reacts to: SIGINT and SIGTERM stop it, SIGUSR1 asks for
/// a mid-run snapshot.
#[derive(Default)]
pub(crate) struct Signals {
    pub(crate) stop: AtomicBool,
    snapshot_requests: AtomicU32,
}

/// Installs the handlers; they run as tasks of `rt`, so only while `rt` is
/// driven (a current-thread runtime in `block_on`).
pub(crate) fn watch_signals(
    rt: &tokio::runtime::Runtime,
    signals: &Arc<Signals>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let _guard = rt.enter();
    for kind in [SignalKind::interrupt(), SignalKind::terminate()] {
        let mut s = signal(kind).context("installing a signal handler")?;
        let flags = signals.clone();
        rt.spawn(async move {
            while s.recv().await.is_some() {
                flags.stop.store(true, Ordering::Release);
            }
        });
    }
    let mut usr1 = signal(SignalKind::user_defined1()).context("installing a SIGUSR1 handler")?;
    let flags = signals.clone();
    rt.spawn(async move {
        while usr1.recv().await.is_some() {
            flags.snapshot_requests.fetch_add(1, Ordering::AcqRel);
        }
    });
    Ok(())
}

/// Runs the lab and writes the output directory.
pub fn run(config: &RunConfig) -> anyhow::Result<RunReport> {
    std::fs::create_dir_all(&config.out)
        .with_context(|| format!("creating output directory {}", config.out.display()))?;
    let recorder = start_recorder(config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("broker-io")
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let signals = Arc::new(Signals::default());
    watch_signals(&rt, &signals)?;
    let (broker, results) = connect(&rt, &config.broker)?;
    let lab = LabMiddleware::new(config, &results)?;
    let streaming = match config.scenario {
        Some(scenario) => match scenario.feed {
            Feed::Upfront => {
                enqueue_scenario(&rt, &broker, scenario, config)?;
                None
            }
            Feed::Streaming { backlog } => Some((scenario, backlog, broker.clone())),
        },
        None => None,
    };
    let tracer = tracer(config);
    let worker = Worker::start(
        Env {
            broker,
            rt: rt.handle().clone(),
        },
        actor_table(&config.actor),
        lab.chain.clone(),
        lab.asyncio.clone(),
        &WorkerConfig {
            queues: config.queues.clone(),
            threads: config.threads,
            prefetch: None,
            after_job: tracer.as_ref().map(|t| t.hook.clone()),
        },
    )
    .context("starting the worker")?;

    let stats = worker.stats();
    let feeder = match streaming {
        Some((scenario, backlog, broker)) => Some(Feeder::start(
            rt.handle().clone(),
            broker,
            scenario,
            params(config),
            stats.clone(),
            backlog,
        )?),
        None => None,
    };
    let progress = Progress::new(config.quiet);
    let watched = Watched {
        config,
        recorder: &recorder,
        signals: &signals,
        stats: &stats,
        results: &results,
        tracer: tracer.as_ref(),
        progress: &progress,
        started: Instant::now(),
    };
    let stop = watched.until_stop();
    let started = watched.started;
    progress.finish();
    if let Some(f) = feeder {
        f.finish()?;
    }
    // Workers waiting on a trace report are released when the tracer goes.
    drop(tracer);
    worker.stop();
    let retry_history = lab.retries.history_len();
    let profile = final_profile(&recorder, stop, retry_history, &progress);
    drop(recorder);
    // Kept until after the final snapshot: what the middleware holds (a
    // retry history, say) is part of what the profile must show.
    drop(lab);
    let summary = outputs::write(&config.out, &profile).context("writing the run's outputs")?;
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(RunReport {
        stop,
        out: config.out.clone(),
        elapsed: started.elapsed(),
        attempts: stats.attempts.load(Ordering::Relaxed),
        max_retry: stats.max_retry.load(Ordering::Relaxed),
        retry_history: Some(retry_history),
        processes: Vec::new(),
        summary,
    })
}

/// The `--trace-memory` tracer, if asked for.
fn tracer(config: &RunConfig) -> Option<Tracer> {
    (config.trace_memory || config.trace_memory_type.is_some()).then(|| {
        Tracer::new(
            config.trace_memory_type.clone(),
            config
                .trace_memory_output_dir
                .clone()
                .or_else(|| Some(config.out.join("trace-memory"))),
        )
    })
}

/// Starts the recorder and records what the run is.
fn start_recorder(config: &RunConfig) -> anyhow::Result<Recorder> {
    let recorder =
        Recorder::start(Options::default().timeline_interval_ms(config.timeline_interval_ms))
            .context("starting the recorder")?;
    crate::set_attribute(attributes::MIDDLEWARE, config.variant.name);
    crate::set_attribute(attributes::BROKER, config.broker.name());
    crate::set_attribute(attributes::PAYLOAD_BYTES, &config.payload_bytes.to_string());
    crate::set_attribute("threads", &config.threads.to_string());
    if let Some(s) = config.scenario {
        crate::set_attribute(attributes::SCENARIO, s.name);
    }
    Ok(recorder)
}

/// The broker and the result backend the run uses.
fn connect(
    rt: &tokio::runtime::Runtime,
    choice: &BrokerChoice,
) -> anyhow::Result<(Broker, ResultBackend)> {
    match choice {
        BrokerChoice::Memory => {
            let memory = MemoryResults::new();
            memory.on_expired(|_| crate::mark(events::RESULT_EXPIRED));
            Ok((Broker::memory(), ResultBackend::Memory(memory)))
        }
        BrokerChoice::Redis { url, .. } => {
            let config = choice
                .redis_config()
                .context("a Redis choice has a Redis configuration")?;
            let broker = rt
                .block_on(Broker::redis(config))
                .with_context(|| format!("connecting to Redis at {url}"))?;
            let results = rt
                .block_on(RedisResults::connect(url))
                .with_context(|| format!("connecting the result backend to Redis at {url}"))?;
            Ok((broker, ResultBackend::Redis(results)))
        }
    }
}

/// The middleware chain in Dramatiq's order, with handles on the parts the
/// run reads or the worker needs.
struct LabMiddleware {
    chain: Chain,
    asyncio: Arc<AsyncIo>,
    retries: Arc<Retries>,
}

impl LabMiddleware {
    fn new(config: &RunConfig, results: &ResultBackend) -> anyhow::Result<LabMiddleware> {
        let asyncio = Arc::new(
            AsyncIo::start(config.variant.handoff).context("starting the event-loop thread")?,
        );
        let retries = Arc::new(Retries::new(config.variant.history));
        let chain = Chain::new(vec![
            Arc::new(TimeLimit) as Arc<dyn Middleware>,
            retries.clone(),
            Arc::new(Results::new(results.clone(), config.result_ttl)),
            asyncio.clone(),
        ]);
        Ok(LabMiddleware {
            chain,
            asyncio,
            retries,
        })
    }
}

/// What the run loop watches while the worker runs.
struct Watched<'a> {
    config: &'a RunConfig,
    recorder: &'a Recorder,
    signals: &'a Signals,
    stats: &'a WorkerStats,
    results: &'a ResultBackend,
    tracer: Option<&'a Tracer>,
    progress: &'a Progress,
    started: Instant,
}

impl Watched<'_> {
    /// Polls until the run must stop, meanwhile reporting traced jobs and
    /// writing the snapshots SIGUSR1 asked for.
    fn until_stop(&self) -> StopReason {
        let poll = Duration::from_millis(if self.tracer.is_some() { 5 } else { 50 });
        let mut snapshots_written = 0;
        loop {
            std::thread::sleep(poll);
            self.report_traced_jobs();
            snapshots_written = self.write_requested_snapshots(snapshots_written);
            if let Some(stop) = self.stop_reason() {
                return stop;
            }
        }
    }

    fn report_traced_jobs(&self) {
        let Some(tracer) = self.tracer else {
            return;
        };
        let snapshot = |keep: &[String]| {
            let options = crate::GraphOptions {
                keep_types: keep.to_vec(),
                ..Default::default()
            };
            self.recorder
                .snapshot_with_graph(&options)
                .unwrap_or_else(|_| self.recorder.snapshot())
        };
        tracer.drain(snapshot, |text| self.progress.println(text.trim_end()));
    }

    /// Writes `profile-<n>.json` for each SIGUSR1 since `written`; returns
    /// how many are written now.
    fn write_requested_snapshots(&self, mut written: u32) -> u32 {
        while self.signals.snapshot_requests.load(Ordering::Acquire) > written {
            written += 1;
            let path = self.config.out.join(format!("profile-{written}.json"));
            match self.recorder.snapshot().save(&path) {
                Ok(()) => self
                    .progress
                    .println(&format!("wrote mid-run snapshot {}", path.display())),
                Err(e) => self
                    .progress
                    .println(&format!("mid-run snapshot failed: {e}")),
            }
        }
        written
    }

    /// Why the run must stop now, if it must; updates the progress line.
    fn stop_reason(&self) -> Option<StopReason> {
        let rss = sys::rss_bytes();
        let elapsed = self.started.elapsed();
        self.progress.update(self.stats, rss);
        if self.signals.stop.load(Ordering::Acquire) {
            return Some(StopReason::Signal);
        }
        if rss >= self.config.max_rss {
            crate::mark(events::MAX_RSS);
            return Some(StopReason::MaxRss);
        }
        if elapsed >= self.config.duration {
            return Some(StopReason::Duration);
        }
        let scenario = self.config.scenario?;
        let all_final = self.stats.finished() >= self.config.tasks as u64
            && self.stats.in_progress.load(Ordering::Relaxed) == 0;
        let results_gone =
            scenario.expect != Expect::RetainedUntilTtl || self.results.held_in_process() == 0;
        (all_final && results_gone).then_some(StopReason::Completed)
    }
}

/// Ends the timeline, records how the run ended and takes the final
/// snapshot, with the heap graph (who holds what survived) when it can.
fn final_profile(
    recorder: &Recorder,
    stop: StopReason,
    retry_history: HistoryLen,
    progress: &Progress,
) -> Profile {
    recorder.stop_timeline();
    crate::set_attribute(attributes::STOP_REASON, stop.as_str());
    crate::set_attribute(RETRY_CLOSURES_KEPT, &retry_history.kept.to_string());
    crate::set_attribute(RETRIES_PRUNED, &retry_history.pruned.to_string());
    match recorder.snapshot_with_graph(&crate::GraphOptions::default()) {
        Ok(p) => p,
        Err(e) => {
            progress.println(&format!("leakprof: {e}; writing the profile without it"));
            recorder.snapshot()
        }
    }
}

/// The progress line: elapsed, attempts, retries, RSS and live bytes. Off
/// when stderr is not a terminal or with `--quiet`.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(quiet: bool) -> Progress {
        use std::io::IsTerminal as _;
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar
        });
        Progress { bar }
    }

    /// Refreshes the line (the bar shows the elapsed time itself).
    fn update(&self, stats: &WorkerStats, rss: u64) {
        if let Some(bar) = &self.bar {
            let (live, _) = crate::live();
            bar.set_message(format!(
                "attempts {}  retries {}  RSS {:.1} MiB  live {:.1} MiB",
                stats.attempts.load(Ordering::Relaxed),
                stats.max_retry.load(Ordering::Relaxed),
                rss as f64 / 1048576.0,
                live as f64 / 1048576.0
            ));
            bar.tick();
        }
    }

    fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Loads a finished run's profile (for tests and `--processes`).
pub fn load_run(dir: &Path) -> anyhow::Result<Profile> {
    Ok(crate::format::load(dir.join("profile.json"))?)
}

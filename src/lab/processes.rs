//! `leakprof run --processes N`: this process enqueues the scenario's
//! messages, then N `leakprof worker` processes consume them from Redis,
//! each writing its own profile; when the queue is drained (or at
//! `--duration`, `--max-rss`, or a signal) they are stopped with SIGTERM and
//! their profiles are merged (summed by symbolized stack and tag) into the
//! output directory's `profile.json`.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::broker::Broker;
use super::outputs;
use super::run::{enqueue_scenario, BrokerChoice, RunConfig, RunReport, StopReason};
use crate::cli::units::HumanDuration;

pub fn run(config: &RunConfig, processes: usize) -> anyhow::Result<RunReport> {
    let BrokerChoice::Redis {
        url,
        heartbeat_timeout,
        maintenance_chance,
    } = &config.broker
    else {
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
    enqueue_scenario(&rt, &broker, scenario, config)?;

    let exe = std::env::current_exe().context("finding the leakprof executable")?;
    let dirs: Vec<PathBuf> = (0..processes)
        .map(|i| config.out.join(format!("process-{i}")))
        .collect();
    let mut children: Vec<Child> = Vec::new();
    for dir in &dirs {
        let child = Command::new(&exe)
            .arg("--quiet")
            .arg("worker")
            .args(["--broker", "redis", "--redis-url", url])
            .args([
                "--heartbeat-timeout",
                &HumanDuration(*heartbeat_timeout).to_string(),
            ])
            .args(["--maintenance-chance", &maintenance_chance.to_string()])
            .args([
                "--queues",
                &config.actor.queue,
                "--queue",
                &config.actor.queue,
            ])
            .args(["--threads", &config.threads.to_string()])
            .args(["--middleware", config.variant.name])
            .args(["--retries", &config.actor.max_retries.to_string()])
            .args([
                "--min-backoff",
                &HumanDuration(config.actor.min_backoff).to_string(),
            ])
            .args([
                "--max-backoff",
                &HumanDuration(config.actor.max_backoff).to_string(),
            ])
            .args([
                "--time-limit",
                &HumanDuration(config.actor.time_limit).to_string(),
            ])
            .args([
                "--result-ttl",
                &HumanDuration(config.result_ttl).to_string(),
            ])
            .args([
                "--max-rss",
                &format!("{}B", config.max_rss / processes as u64),
            ])
            .args([
                "--timeline-interval",
                &HumanDuration(Duration::from_millis(config.timeline_interval_ms)).to_string(),
            ])
            .arg("--out")
            .arg(dir)
            .spawn()
            .context("starting a worker process")?;
        children.push(child);
    }

    let started = Instant::now();
    let stop = loop {
        std::thread::sleep(Duration::from_millis(200));
        if let Some(i) = children
            .iter_mut()
            .position(|c| matches!(c.try_wait(), Ok(Some(_))))
        {
            tracing::warn!("worker process {i} exited early");
            break StopReason::MaxRss;
        }
        if started.elapsed() >= config.duration {
            break StopReason::Duration;
        }
        if rt.block_on(broker.qsize(&config.actor.queue)).unwrap_or(1) == 0 {
            break StopReason::Completed;
        }
    };
    for c in &children {
        // SAFETY: kill with a valid pid of our own child and a valid signal.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
    }
    for c in &mut children {
        let _ = c.wait();
    }
    let profiles: Vec<_> = dirs
        .iter()
        .map(|d| crate::format::load(d.join("profile.json")))
        .collect::<Result<_, _>>()
        .context("reading the worker processes' profiles")?;
    let mut merged = crate::analysis::merge(&profiles).context("no profiles to merge")?;
    merged.meta.attributes.insert(
        crate::format::attributes::SCENARIO.into(),
        scenario.name.into(),
    );
    merged.meta.attributes.insert(
        crate::format::attributes::STOP_REASON.into(),
        stop.as_str().into(),
    );
    merged
        .meta
        .attributes
        .insert("processes".into(), processes.to_string());
    let summary = outputs::write(&config.out, &merged)?;
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
        summary,
    })
}

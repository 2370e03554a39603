//! Flag groups shared by `run`, `worker` and `enqueue`.

use std::path::PathBuf;

use clap::builder::PossibleValuesParser;

use super::units::{HumanDuration, HumanSize};
use crate::lab::broker::defaults as broker_defaults;
use crate::lab::run::{defaults, ActorSettings, BrokerChoice};
use crate::lab::scenarios::{Params, Scenario};
use crate::lab::variants;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BrokerKind {
    /// Embedded in-memory broker (zero setup).
    Memory,
    /// Redis, with Dramatiq 2.0's key layout.
    Redis,
}

#[derive(Debug, clap::Args)]
pub struct BrokerArgs {
    /// Message broker.
    #[arg(long, value_enum, default_value_t = BrokerKind::Memory)]
    pub broker: BrokerKind,
    /// Redis URL (with --broker redis).
    #[arg(long, default_value = defaults::REDIS_URL)]
    pub redis_url: String,
    /// Queue the scenario's actors use.
    #[arg(long, default_value = defaults::QUEUE)]
    pub queue: String,
    /// Redis: a worker silent this long is dead, and the next maintenance
    /// gives its unacked messages back to their queues.
    #[arg(long, default_value_t = HumanDuration(broker_defaults::HEARTBEAT_TIMEOUT))]
    pub heartbeat_timeout: HumanDuration,
    /// Redis: calls out of 1,000,000 that run maintenance first (requeue
    /// dead workers' messages, drop expired dead letters).
    #[arg(long, default_value_t = broker_defaults::MAINTENANCE_CHANCE,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub maintenance_chance: u32,
}

impl BrokerArgs {
    pub fn choice(&self) -> BrokerChoice {
        match self.broker {
            BrokerKind::Memory => BrokerChoice::Memory,
            BrokerKind::Redis => BrokerChoice::Redis {
                url: self.redis_url.clone(),
                heartbeat_timeout: self.heartbeat_timeout.0,
                maintenance_chance: self.maintenance_chance,
            },
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ActorArgs {
    /// Retries before a message is dead-lettered (the seed: 1,000,000).
    #[arg(long, default_value_t = defaults::RETRIES)]
    pub retries: u64,
    /// Smallest retry backoff (clamped to --max-backoff).
    #[arg(long, default_value_t = HumanDuration(defaults::MIN_BACKOFF))]
    pub min_backoff: HumanDuration,
    /// Largest retry backoff.
    #[arg(long, default_value_t = HumanDuration(defaults::MAX_BACKOFF))]
    pub max_backoff: HumanDuration,
    /// Actor time limit.
    #[arg(long, default_value_t = HumanDuration(defaults::TIME_LIMIT))]
    pub time_limit: HumanDuration,
    /// How long the Results middleware keeps a stored result.
    #[arg(long, default_value_t = HumanDuration(defaults::RESULT_TTL))]
    pub result_ttl: HumanDuration,
    /// Middleware variant.
    #[arg(long, default_value = "original", value_parser = PossibleValuesParser::new(variants::names()))]
    pub middleware: String,
}

impl ActorArgs {
    pub fn settings(&self, queue: &str) -> ActorSettings {
        ActorSettings {
            max_retries: self.retries,
            min_backoff: self.min_backoff.0.min(self.max_backoff.0),
            max_backoff: self.max_backoff.0,
            time_limit: self.time_limit.0,
            queue: queue.to_string(),
        }
    }

    pub fn variant(&self) -> &'static variants::Variant {
        // clap restricted the value to the table's names.
        variants::find(&self.middleware).unwrap_or(&variants::VARIANTS[0])
    }
}

#[derive(Debug, clap::Args)]
pub struct GuardArgs {
    /// Stop cleanly (profile written) when RSS reaches this (default: half
    /// the RAM, at most 80% of what is available).
    #[arg(long)]
    pub max_rss: Option<HumanSize>,
    /// Worker threads (scenario default).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Output directory.
    #[arg(short, long)]
    pub out: Option<PathBuf>,
    /// Timeline sampling period.
    #[arg(long, default_value_t = HumanDuration(defaults::TIMELINE_INTERVAL))]
    pub timeline_interval: HumanDuration,
}

/// `--trace-memory` and its companions (`run`, `worker`).
#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    /// After each job, print what it left behind: its blocks still alive,
    /// by type, site and owner (MRQ's --trace_memory). Use with --threads 1.
    #[arg(long)]
    pub trace_memory: bool,
    /// Also draw the retainer chains of the job's objects whose type (or
    /// owner) mentions PATTERN, one SVG per job (implies --trace-memory).
    #[arg(long, value_name = "PATTERN")]
    pub trace_memory_type: Option<String>,
    /// Where those SVGs go (default OUT/trace-memory).
    #[arg(long, value_name = "DIR")]
    pub trace_memory_output_dir: Option<PathBuf>,
}

impl TraceArgs {
    /// Whether jobs are traced at all.
    pub fn enabled(&self) -> bool {
        self.trace_memory || self.trace_memory_type.is_some()
    }
}

/// Which scenario, and the sizes of its messages (`run`, `enqueue`).
#[derive(Debug, clap::Args)]
pub struct ScenarioArgs {
    /// Scenario (see `leakprof list`).
    #[arg(long, value_parser = PossibleValuesParser::new(crate::lab::scenarios::names()))]
    pub scenario: Option<String>,
    /// Payload size (bare numbers are MiB; scenario default).
    #[arg(long)]
    pub size: Option<HumanSize>,
    /// Messages to send (scenario default).
    #[arg(long)]
    pub tasks: Option<usize>,
    /// Sleep length of the sleep scenarios.
    #[arg(long, default_value_t = HumanDuration(defaults::SLEEP))]
    pub sleep: HumanDuration,
}

impl ScenarioArgs {
    /// The scenario and its message parameters, flag defaults filled in
    /// from the scenario's own.
    pub fn resolve(&self, queue: &str) -> anyhow::Result<(&'static Scenario, Params)> {
        let name = self
            .scenario
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("--scenario is required (see `leakprof list`)"))?;
        let scenario = crate::lab::scenarios::find(name)
            .ok_or_else(|| anyhow::anyhow!("unknown scenario {name:?} (see `leakprof list`)"))?;
        let bytes = self
            .size
            .map_or(scenario.defaults.payload_mib << 20, |s| s.0);
        if bytes == 0 {
            anyhow::bail!("--size must be more than 0");
        }
        let params = Params {
            payload_bytes: usize::try_from(bytes)
                .map_err(|_| anyhow::anyhow!("--size is too large"))?,
            tasks: self.tasks.unwrap_or(scenario.defaults.tasks).max(1),
            sleep: self.sleep.0,
            queue: queue.to_string(),
        };
        Ok((scenario, params))
    }
}

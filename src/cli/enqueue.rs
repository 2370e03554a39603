//! `leakprof enqueue`: send a scenario's messages and exit (for a separate
//! `leakprof worker`, or a Python Dramatiq worker, to consume).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::builder::PossibleValuesParser;

use super::lab_args::BrokerArgs;
use super::units::{HumanDuration, HumanSize};
use super::{Global, Outcome};
use crate::lab::broker::Broker;
use crate::lab::run::defaults;
use crate::lab::scenarios::{self, Params};

/// Send a scenario's messages to a broker.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  leakprof enqueue --scenario exception --broker redis
  leakprof enqueue --scenario concurrent --tasks 10 --size 16 --broker redis --redis-url redis://127.0.0.1:6380/0")]
pub struct Args {
    /// Scenario whose messages to send (see `leakprof list`).
    #[arg(long, value_parser = PossibleValuesParser::new(scenarios::names()))]
    pub scenario: String,
    /// Payload size (bare numbers are MiB; scenario default).
    #[arg(long)]
    pub size: Option<HumanSize>,
    /// Messages to send (scenario default).
    #[arg(long)]
    pub tasks: Option<usize>,
    /// Sleep length of the sleep scenarios.
    #[arg(long, default_value_t = HumanDuration(defaults::SLEEP))]
    pub sleep: HumanDuration,
    #[command(flatten)]
    pub broker: BrokerArgs,
}

pub fn execute(global: Global, args: Args) -> Outcome {
    let scenario = scenarios::find(&args.scenario).ok_or_else(|| {
        anyhow::anyhow!("unknown scenario {:?} (see `leakprof list`)", args.scenario)
    })?;
    let Some(redis) = args.broker.choice().redis_config() else {
        anyhow::bail!(
            "enqueue needs --broker redis: the in-memory broker lives only as long as one process"
        );
    };
    let params = Params {
        payload_bytes: args
            .size
            .map_or(scenario.defaults.payload_mib << 20, |s| s.0) as usize,
        tasks: args.tasks.unwrap_or(scenario.defaults.tasks).max(1),
        sleep: args.sleep.0,
        queue: args.broker.queue.clone(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let url = redis.url.clone();
    let broker = rt
        .block_on(Broker::redis(redis))
        .with_context(|| format!("connecting to Redis at {url}"))?;
    for message in scenario.messages(&params) {
        let id = message.message_id.clone();
        rt.block_on(broker.enqueue(message, None::<Duration>))
            .context("enqueueing a message")?;
        if !global.quiet {
            println!("{} {id}", scenario.actor);
        }
    }
    Ok(ExitCode::SUCCESS)
}

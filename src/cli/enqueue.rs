//! `leakprof enqueue`: send a scenario's messages and exit (for a separate
//! `leakprof worker`, or a Python Dramatiq worker, to consume).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

use super::lab_args::{BrokerArgs, ScenarioArgs};
use super::{Global, Outcome};
use crate::lab::broker::Broker;

/// Send a scenario's messages to a broker.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  leakprof enqueue --scenario exception --broker redis
  leakprof enqueue --scenario concurrent --tasks 10 --size 16 --broker redis --redis-url redis://127.0.0.1:6380/0")]
pub struct Args {
    #[command(flatten)]
    pub scenario: ScenarioArgs,
    #[command(flatten)]
    pub broker: BrokerArgs,
}

pub fn execute(global: Global, args: Args) -> Outcome {
    let Some(redis) = args.broker.choice().redis_config() else {
        anyhow::bail!(
            "enqueue needs --broker redis: the in-memory broker lives only as long as one process"
        );
    };
    let (scenario, params) = args.scenario.resolve(&args.broker.queue)?;
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

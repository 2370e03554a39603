//! `leakprof worker`: consume only. Runs the lab's actors on whatever is in
//! the queues, whoever enqueued it (Python Dramatiq included), under the
//! recorder, until SIGINT/SIGTERM or --duration.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::lab_args::{ActorArgs, BrokerArgs, GuardArgs};
use super::units::HumanDuration;
use super::{Global, Outcome};
use crate::lab::run::{self, defaults, RunConfig};

/// Consume messages from the queues and profile the worker.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  leakprof worker --broker redis --queues default
  leakprof worker --broker redis --queues default --middleware fixed --duration 60s -o leakprof-out/worker

Actors: every scenario's actor (see `leakprof list`) and `noop`.")]
pub struct Args {
    /// Queues to consume (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = defaults::QUEUE)]
    pub queues: Vec<String>,
    /// Stop after this long (default: until SIGINT/SIGTERM).
    #[arg(long)]
    pub duration: Option<HumanDuration>,
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub actor: ActorArgs,
    #[command(flatten)]
    pub guard: GuardArgs,
}

pub fn execute(global: Global, args: Args) -> Outcome {
    let variant = args.actor.variant();
    let out = args.guard.out.clone().unwrap_or_else(|| {
        PathBuf::from(defaults::OUT_ROOT).join(format!("worker-{}", std::process::id()))
    });
    let config = RunConfig {
        scenario: None,
        variant,
        broker: args.broker.choice(),
        actor: args.actor.settings(&args.broker.queue),
        payload_bytes: 0,
        tasks: 0,
        threads: args.guard.threads.unwrap_or(1).max(1),
        sleep: Duration::ZERO,
        result_ttl: args.actor.result_ttl.0,
        duration: args.duration.map_or(Duration::MAX, |d| d.0),
        max_rss: args
            .guard
            .max_rss
            .map_or_else(run::default_max_rss, |s| s.0),
        out,
        queues: args.queues.clone(),
        timeline_interval_ms: args.guard.timeline_interval.0.as_millis() as u64,
        trace_memory: false,
        trace_memory_type: None,
        trace_memory_output_dir: None,
        quiet: global.quiet,
    };
    let report = run::run(&config)?;
    if !global.quiet {
        print!("{}", crate::lab::outputs::describe(&report));
    }
    Ok(ExitCode::SUCCESS)
}

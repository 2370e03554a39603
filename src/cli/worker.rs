//! `leakprof worker`: consume only. Runs the lab's actors on whatever is in
//! the queues, whoever enqueued it (Python Dramatiq included), under the
//! recorder, until SIGINT/SIGTERM or --duration.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::lab_args::{ActorArgs, BrokerArgs, GuardArgs, TraceArgs};
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
    pub trace: TraceArgs,
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub actor: ActorArgs,
    #[command(flatten)]
    pub guard: GuardArgs,
}

pub fn execute(global: Global, args: Args) -> Outcome {
    let report = run::run(&config(&args, global.quiet))?;
    if !global.quiet {
        print!("{}", crate::lab::outputs::describe(&report));
    }
    Ok(ExitCode::SUCCESS)
}

fn config(args: &Args, quiet: bool) -> RunConfig {
    let variant = args.actor.variant();
    let out = args.guard.out.clone().unwrap_or_else(|| {
        PathBuf::from(defaults::OUT_ROOT).join(format!("worker-{}", std::process::id()))
    });
    RunConfig {
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
        trace_memory: args.trace.enabled(),
        trace_memory_type: args.trace.trace_memory_type.clone(),
        trace_memory_output_dir: args.trace.trace_memory_output_dir.clone(),
        quiet,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use clap::Parser as _;

    use super::super::{Cli, Command};
    use crate::lab::processes::worker_args;
    use crate::lab::run::{ActorSettings, BrokerChoice, RunConfig};
    use crate::lab::{scenarios, variants};

    /// `--processes` starts `leakprof worker` with a command line that
    /// gives each worker the run's own configuration, except what only the
    /// parent does (the scenario, `--duration`) and what is the worker's own
    /// (its output directory, its share of `--max-rss`).
    #[test]
    fn a_worker_process_is_configured_as_the_run_is() {
        let run = RunConfig {
            scenario: scenarios::find("exception"),
            variant: variants::find("fixed").unwrap(),
            broker: BrokerChoice::Redis {
                url: "redis://127.0.0.1:6390/3".into(),
                heartbeat_timeout: Duration::from_millis(2_500),
                maintenance_chance: 1234,
            },
            actor: ActorSettings {
                max_retries: 7,
                min_backoff: Duration::from_millis(3),
                max_backoff: Duration::from_millis(40),
                time_limit: Duration::from_secs(90),
                queue: "emails".into(),
            },
            payload_bytes: 1 << 20,
            tasks: 4,
            threads: 3,
            sleep: Duration::from_millis(300),
            result_ttl: Duration::from_secs(5),
            duration: Duration::from_secs(60),
            max_rss: 4 << 30,
            out: "/tmp/run".into(),
            queues: vec!["emails".into()],
            timeline_interval_ms: 20,
            trace_memory: true,
            trace_memory_type: Some("TaskError".into()),
            trace_memory_output_dir: Some("/tmp/traces".into()),
            quiet: false,
        };
        let dir = Path::new("/tmp/run/process-1");
        let args = worker_args(&run, 2, 1, dir);
        let cli = Cli::try_parse_from(std::iter::once("leakprof".into()).chain(args))
            .expect("a worker command line");
        let Command::Worker(worker) = cli.command else {
            panic!("not a worker command: {:?}", cli.command);
        };
        let expected = RunConfig {
            scenario: None,
            payload_bytes: 0,
            tasks: 0,
            sleep: Duration::ZERO,
            duration: Duration::MAX,
            max_rss: 2 << 30,
            out: dir.into(),
            trace_memory_output_dir: Some("/tmp/traces/process-1".into()),
            quiet: true,
            ..run
        };
        assert_eq!(
            format!("{:#?}", super::config(&worker, cli.quiet)),
            format!("{expected:#?}")
        );
    }
}

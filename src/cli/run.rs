//! `leakprof run`: a seed scenario on the lab worker, or a Python program
//! (`-- COMMAND`), under the recorder.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use super::lab_args::{ActorArgs, BrokerArgs, GuardArgs, ScenarioArgs, TraceArgs};
use super::units::HumanDuration;
use super::{Global, Outcome};
use crate::lab::run::{self, defaults, RunConfig};

/// Run a seed scenario on the Dramatiq-faithful worker, or a Python 3.11
/// program (`-- COMMAND`), and profile it.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  leakprof run --scenario exception
  leakprof run --scenario exception --middleware fixed
  leakprof run --scenario nested --size 32 --duration 10s
  leakprof run --scenario large-results --result-ttl 5s --duration 20s
  leakprof run --scenario retry-args --broker redis --redis-url redis://127.0.0.1:6379/0
  leakprof run --scenario exception --retries 3 --trace-memory --trace-memory-type TaskError
  leakprof run --out out -- python3.11 app.py
  leakprof run --out out --duration 60s -- .venv/bin/dramatiq app --processes 1

Writes into the output directory: profile.json, memory.csv, memory.svg,
flamegraph.svg and summary.json. SIGUSR1 writes a mid-run snapshot
(profile-<n>.json); SIGINT/SIGTERM stop cleanly. A Python program is
stopped with SIGINT (at --duration, --max-rss, or when leakprof is
interrupted) and writes its profile at exit.")]
pub struct Args {
    #[command(flatten)]
    pub scenario: ScenarioArgs,
    /// Stop after this long (a scenario: 30s by default; a Python program
    /// runs to its end by default).
    #[arg(long)]
    pub duration: Option<HumanDuration>,
    /// Worker processes (more than one needs --broker redis).
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
    #[command(flatten)]
    pub trace: TraceArgs,
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub actor: ActorArgs,
    #[command(flatten)]
    pub guard: GuardArgs,
    /// With a COMMAND: the signal that makes the program write a mid-run
    /// snapshot (`profile-<pid>-snapshot-<n>.json`; sent to leakprof, it is
    /// passed on): USR1, USR2, HUP, WINCH or none.
    #[arg(long, default_value = "USR1")]
    pub snapshot_signal: crate::launch::SnapshotSignal,
    /// A Python 3.11 program to record instead of a scenario: an
    /// interpreter and its arguments, or a script run by one.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

pub fn execute(global: Global, args: Args) -> Outcome {
    if !args.command.is_empty() {
        return execute_python(global, args);
    }
    let (scenario, params) = args.scenario.resolve(&args.broker.queue)?;
    let variant = args.actor.variant();
    if args.processes > 1 && args.broker.broker != super::lab_args::BrokerKind::Redis {
        anyhow::bail!(
            "--processes {} needs --broker redis: processes cannot share the in-memory broker",
            args.processes
        );
    }
    let out = args.guard.out.clone().unwrap_or_else(|| {
        PathBuf::from(defaults::OUT_ROOT).join(format!("{}-{}", scenario.name, variant.name))
    });
    let config = RunConfig {
        scenario: Some(scenario),
        variant,
        broker: args.broker.choice(),
        actor: args.actor.settings(&args.broker.queue),
        payload_bytes: params.payload_bytes,
        tasks: params.tasks,
        threads: args
            .guard
            .threads
            .unwrap_or(scenario.defaults.threads)
            .max(1),
        sleep: params.sleep,
        result_ttl: args.actor.result_ttl.0,
        duration: args.duration.map_or(defaults::DURATION, |d| d.0),
        max_rss: args
            .guard
            .max_rss
            .map_or_else(run::default_max_rss, |s| s.0),
        out,
        queues: vec![args.broker.queue.clone()],
        timeline_interval_ms: args.guard.timeline_interval.0.as_millis() as u64,
        trace_memory: args.trace.enabled(),
        trace_memory_type: args.trace.trace_memory_type.clone(),
        trace_memory_output_dir: args.trace.trace_memory_output_dir.clone(),
        quiet: global.quiet,
    };
    let report = if args.processes > 1 {
        crate::lab::processes::run(&config, args.processes)?
    } else {
        run::run(&config)?
    };
    if !global.quiet {
        print!("{}", crate::lab::outputs::describe(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// `leakprof run -- COMMAND`.
fn execute_python(global: Global, args: Args) -> Outcome {
    if let Some(scenario) = &args.scenario.scenario {
        anyhow::bail!("--scenario {scenario} and a command cannot be run together");
    }
    let config = crate::launch::PythonRun {
        out: args
            .guard
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from(defaults::OUT_ROOT).join("python")),
        // The scenario default does not apply to a program: it runs to its end.
        duration: args.duration.map(|d| d.0),
        max_rss: args
            .guard
            .max_rss
            .map_or_else(run::default_max_rss, |s| s.0),
        max_frames: crate::record::defaults::MAX_FRAMES,
        timeline_interval_ms: args.guard.timeline_interval.0.as_millis() as u64,
        snapshot_signal: args.snapshot_signal.0,
        command: args.command,
    };
    let report = crate::launch::run(&config)?;
    if !global.quiet {
        print!("{}", crate::launch::describe(&report));
    }
    // A program that failed on its own fails the run too (its profile is
    // written all the same); one leakprof stopped (--duration, --max-rss,
    // a signal) ends as leakprof meant it to.
    if report.stop_reason == "completed" && !report.status.success() {
        eprintln!(
            "leakprof: the program failed ({}); its profile is in {}",
            report.status,
            report.out.display()
        );
        let code = report.status.code().unwrap_or(1).clamp(1, 255);
        return Ok(ExitCode::from(code as u8));
    }
    Ok(ExitCode::SUCCESS)
}

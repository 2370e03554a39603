//! The `leakprof` command line: parse, call the library, map errors to exit
//! codes. Exit codes: 0 success, 1 a `check` limit was exceeded, 2 bad input
//! (missing or corrupt file, bad flag) or any other error.

mod input;
mod lab_args;
pub mod units;

mod check;
mod diff;
mod enqueue;
mod export;
mod flamegraph;
mod list;
mod merge;
mod plot;
mod report;
mod retainers;
mod run;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use input::load_profile_arg;
pub use units::{parse_duration, parse_size};

/// Memory-leak profiler for task-queue workers.
#[derive(Debug, Parser)]
#[command(name = "leakprof", version, about, long_about = None)]
#[command(
    after_help = "Examples:\n  leakprof run --scenario exception\n  leakprof report leakprof-out/exception-original\n  leakprof diff leakprof-out/exception-original leakprof-out/exception-fixed"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Print only errors.
    #[arg(short, long, global = true)]
    quiet: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    Run(run::Args),
    Worker(worker::Args),
    Enqueue(enqueue::Args),
    List(list::Args),
    Report(report::Args),
    Flamegraph(flamegraph::Args),
    Plot(plot::Args),
    Diff(diff::Args),
    Merge(merge::Args),
    Check(check::Args),
    Export(export::Args),
    Retainers(retainers::Args),
}

/// Options every command sees.
#[derive(Clone, Copy, Debug)]
pub struct Global {
    pub quiet: bool,
}

/// What a command asks the process to exit with.
pub type Outcome = anyhow::Result<ExitCode>;

/// Entry point of the binary.
pub fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes
    // away (`leakprof report ... | head`) instead of failing on EPIPE.
    // SAFETY: restoring the default disposition of SIGPIPE at start-up,
    // before any other thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and usage errors to
            // stderr (exit 2).
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging(cli.quiet);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("leakprof: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Log lines of the lab (a malformed message dead-lettered, a consumer
/// failing, a message for an unknown actor, ...) go to stderr: warnings and
/// errors by default, errors only with `--quiet`, whatever `RUST_LOG` asks
/// for when it is set.
fn init_logging(quiet: bool) {
    let default = if quiet { "error" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn run(cli: Cli) -> Outcome {
    let global = Global { quiet: cli.quiet };
    match cli.command {
        Command::Run(a) => run::execute(global, a),
        Command::Worker(a) => worker::execute(global, a),
        Command::Enqueue(a) => enqueue::execute(global, a),
        Command::List(a) => list::execute(global, a),
        Command::Report(a) => report::execute(global, a),
        Command::Flamegraph(a) => flamegraph::execute(global, a),
        Command::Plot(a) => plot::execute(global, a),
        Command::Diff(a) => diff::execute(global, a),
        Command::Merge(a) => merge::execute(global, a),
        Command::Check(a) => check::execute(global, a),
        Command::Export(a) => export::execute(global, a),
        Command::Retainers(a) => retainers::execute(global, a),
    }
}

//! `leakprof report`: guppy-style partition tables of surviving memory and
//! the leak analysis. Also home of the small output helpers the other
//! reporting commands share (where output goes, how formats are offered).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::builder::{PossibleValue, PossibleValuesParser};

use super::{load_profile_arg, Global, Outcome};
use crate::analysis::{grouping, relative_to, Model, GROUPINGS};
use crate::render::{self, defaults, Command};

/// Print partition tables of surviving memory (guppy's heap partitions).
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  leakprof report leakprof-out/exception-original
  leakprof report profile.json --by site --top 20
  leakprof report after.json --relative-to before.json --by type
  leakprof report leakprof-out/exception-original --format json -o report.json

The JSON schema (leakprof-report/1) is documented in docs/REPORT.md.")]
pub struct Args {
    /// A profile file, or a `leakprof run` output directory.
    #[arg(value_name = "PROFILE|DIR")]
    profile: PathBuf,
    /// How to group surviving memory.
    #[arg(long, default_value = defaults::BY, value_parser = groupings())]
    by: String,
    /// Show only the N largest rows (text shows 10 unless given; JSON and CSV show all).
    #[arg(long, value_name = "N")]
    top: Option<usize>,
    /// Show only memory that is new since this baseline profile (or run directory).
    #[arg(long, value_name = "BASE")]
    relative_to: Option<PathBuf>,
    /// Output format.
    #[arg(long, default_value = "text", value_parser = formats(Command::Report))]
    format: String,
    /// Write to FILE instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Show every name as recorded, however long, and never cut a line
    /// (text; by default long generic names are shortened and lines fit
    /// the terminal, or 300 characters when not writing to one).
    #[arg(long)]
    full_names: bool,
}

pub fn execute(_global: Global, args: Args) -> Outcome {
    let profile = load_profile_arg(&args.profile)?;
    let profile = match &args.relative_to {
        Some(base) => relative_to(&profile, &load_profile_arg(base)?),
        None => profile,
    };
    let renderer = render::find(Command::Report, &args.format).context("unknown report format")?;
    let by = grouping(&args.by).context("unknown grouping")?;
    let options = render::Options::default()
        .by(by)
        .top(args.top)
        .text_fit(args.full_names, text_width(args.output.as_deref()));
    let model = Model::new(&profile);
    let bytes = render::render_to_vec(renderer, &model, &options)?;
    emit(args.output.as_deref(), &bytes, renderer.binary)?;
    Ok(ExitCode::SUCCESS)
}

/// How wide text lines may be: the terminal's width when standard output
/// is one (and no file was given), else [`defaults::TEXT_WIDTH`].
pub(super) fn text_width(output: Option<&Path>) -> Option<usize> {
    let to_stdout = match output {
        None => true,
        Some(p) => p == Path::new("-"),
    };
    if to_stdout && std::io::stdout().is_terminal() {
        if let Some(columns) = terminal_columns() {
            return Some(columns);
        }
    }
    Some(defaults::TEXT_WIDTH)
}

/// Columns of the terminal on standard output.
fn terminal_columns() -> Option<usize> {
    // SAFETY: TIOCGWINSZ writes one `winsize` into the struct we pass, and
    // reads nothing else; fd 1 is open for the whole process.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    if ok && size.ws_col > 0 {
        return Some(size.ws_col as usize);
    }
    std::env::var("COLUMNS").ok()?.parse().ok()
}

/// `--format` values a command offers, with their descriptions.
pub(super) fn formats(command: Command) -> PossibleValuesParser {
    PossibleValuesParser::new(
        render::RENDERERS
            .iter()
            .filter(|r| r.commands.contains(&command))
            .map(|r| PossibleValue::new(r.name).help(r.description)),
    )
}

fn groupings() -> PossibleValuesParser {
    PossibleValuesParser::new(
        GROUPINGS
            .iter()
            .map(|g| PossibleValue::new(g.name).help(g.description)),
    )
}

/// Writes output to FILE (atomically) or to standard output. Binary
/// output is never written to a terminal. A closed pipe (`| head`) is not
/// an error.
pub(super) fn emit(output: Option<&Path>, bytes: &[u8], binary: bool) -> anyhow::Result<()> {
    match output {
        Some(path) if path != Path::new("-") => crate::format::write_atomically(path, bytes)
            .with_context(|| format!("writing {}", path.display())),
        _ => {
            let stdout = std::io::stdout();
            if binary && stdout.is_terminal() {
                anyhow::bail!("refusing to write binary output to a terminal: give -o FILE");
            }
            let mut lock = stdout.lock();
            match lock.write_all(bytes).and_then(|_| lock.flush()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(e).context("writing to standard output")
                }
                _ => Ok(()),
            }
        }
    }
}

//! `leakprof retainers`: who keeps an object alive, hop by hop.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use super::input::load_profile_arg;
use super::{Global, Outcome};
use crate::analysis::retainers::{chains_for, Matching, Query};
use crate::format::write_atomically;
use crate::render::names::Names;
use crate::render::retainers;

/// Show the shortest chain from a root (or from the unreachable cycle that
/// leaks it) to an object: objgraph's back-reference chains.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  leakprof retainers leakprof-out/exception-original
  leakprof retainers leakprof-out/retry-args-original --largest 3
  leakprof retainers leakprof-out/exception-original --type TaskError --graph chains.svg
  leakprof retainers leakprof-out/exception-original --type TaskError --unreachable --largest 1
  leakprof retainers profile.json --site load_cache

Needs a profile with a heap graph (format version 2): `leakprof run` writes one;
in your own program use `Recorder::snapshot_with_graph`.")]
pub struct Args {
    /// A profile or a `leakprof run` output directory.
    pub profile: PathBuf,
    /// Show the N objects retaining the most memory among those selected
    /// (by --site, --type and --unreachable; all objects if none is given).
    #[arg(long, default_value_t = 5)]
    pub largest: usize,
    /// Objects allocated where the stack mentions this text.
    #[arg(long, conflicts_with = "type_pattern")]
    pub site: Option<String>,
    /// Objects whose type or owner mentions this text.
    #[arg(long = "type", value_name = "PATTERN")]
    pub type_pattern: Option<String>,
    /// Only objects no root reaches (true leaks: chains start at their
    /// cycle or at nothing).
    #[arg(long)]
    pub unreachable: bool,
    /// Also draw the chains as an SVG.
    #[arg(long, value_name = "SVG")]
    pub graph: Option<PathBuf>,
    /// Write the text here instead of standard output.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Show every name as recorded and never cut a line (by default long
    /// generic names are shortened and lines fit the terminal, or 300
    /// characters when not writing to one).
    #[arg(long)]
    pub full_names: bool,
}

pub fn execute(_global: Global, args: Args) -> Outcome {
    let profile = load_profile_arg(&args.profile)?;
    let query = Query {
        matching: match (&args.site, &args.type_pattern) {
            (Some(s), _) => Matching::Site(s.clone()),
            (None, Some(t)) => Matching::Type(t.clone()),
            (None, None) => Matching::Any,
        },
        unreachable_only: args.unreachable,
        largest: Some(args.largest),
    };
    let found =
        chains_for(&profile, &query).with_context(|| format!("{}", args.profile.display()))?;
    let names = Names::of(&profile, args.full_names);
    let width = if args.full_names {
        None
    } else {
        super::report::text_width(args.output.as_deref())
    };
    let mut text = retainers::text(&found, &names, width);
    if let Some(g) = &profile.graph {
        text += &crate::analysis::retainers::describe_coverage(g);
        text.push('\n');
    }
    match &args.output {
        Some(path) => write_atomically(path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?,
        None => print!("{text}"),
    }
    if let Some(path) = &args.graph {
        let title = format!("Retainer chains: {}", crate::render::run_label(&profile));
        write_atomically(path, retainers::svg(&found, &title).as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

//! `leakprof flamegraph`: a flamegraph SVG (or folded stacks) of a profile.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::builder::{PossibleValue, PossibleValuesParser};

use super::report::emit;
use super::{load_profile_arg, Global, Outcome};
use crate::analysis::Model;
use crate::render::flamegraph::{FlameGroup, Metric, FLAME_GROUPS, METRICS};
use crate::render::{self, defaults, Command};

/// Draw a flamegraph of allocation stacks (inferno).
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  leakprof flamegraph leakprof-out/exception-original -o surviving.svg
  leakprof flamegraph profile.json --metric allocated -o allocated.svg
  leakprof flamegraph profile.json --group-by retry -o by-retry.svg
  leakprof flamegraph profile.json --folded -o surviving.folded

Allocator and leakprof frames are trimmed; `;` and spaces inside Rust
symbols are replaced (by `,` and `_`) so the folded lines stay parseable.")]
pub struct Args {
    /// A profile file, or a `leakprof run` output directory.
    #[arg(value_name = "PROFILE|DIR")]
    profile: PathBuf,
    /// What frame widths measure.
    #[arg(long, default_value = defaults::METRIC, value_parser = metrics())]
    metric: String,
    /// Add a synthetic root frame per task, retry or owner.
    #[arg(long, default_value = defaults::GROUP_BY, value_parser = flame_groups())]
    group_by: String,
    /// Write folded stacks instead of an SVG.
    #[arg(long)]
    folded: bool,
    /// Title of the SVG (default: metric, scenario and variant).
    #[arg(long)]
    title: Option<String>,
    /// Width of the SVG in pixels.
    #[arg(long, default_value_t = defaults::WIDTH)]
    width: usize,
    /// Write to FILE instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

pub fn execute(_global: Global, args: Args) -> Outcome {
    let profile = load_profile_arg(&args.profile)?;
    let name = if args.folded { "folded" } else { "svg" };
    let renderer =
        render::find(Command::Flamegraph, name).context("flamegraph renderer missing")?;
    let mut options = render::Options::default()
        .metric(Metric::from_name(&args.metric).context("unknown metric")?)
        .group_by(FlameGroup::from_name(&args.group_by).context("unknown grouping")?)
        .title(args.title);
    options.width = args.width;
    let model = Model::new(&profile);
    let bytes = render::render_to_vec(renderer, &model, &options)?;
    emit(args.output.as_deref(), &bytes, renderer.binary)?;
    Ok(ExitCode::SUCCESS)
}

pub(super) fn metrics() -> PossibleValuesParser {
    PossibleValuesParser::new(METRICS.iter().map(|m| PossibleValue::new(m.0).help(m.1)))
}

fn flame_groups() -> PossibleValuesParser {
    PossibleValuesParser::new(
        FLAME_GROUPS
            .iter()
            .map(|m| PossibleValue::new(m.0).help(m.1)),
    )
}

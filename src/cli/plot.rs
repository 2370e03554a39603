//! `leakprof plot`: memory timelines of one or more runs on one chart (the
//! seeds' plot_memory.py), from timeline CSVs or from profiles.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;

use super::report::emit;
use super::{load_profile_arg, Global, Outcome};
use crate::format::attributes;
use crate::render::defaults;
use crate::render::timeline::{plot_svg, Run};

/// Plot memory over time; overlay several runs (e.g. original vs fixed).
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  leakprof export leakprof-out/exception-original --format timeline-csv -o original.csv
  leakprof export leakprof-out/exception-fixed --format timeline-csv -o fixed.csv
  leakprof plot original.csv fixed.csv -o memory.svg
  leakprof plot leakprof-out/exception-original leakprof-out/exception-fixed -o memory.svg

Each input is a timeline CSV (time_s, rss_mib, live_mib, ...), a profile or
a `leakprof run` output directory. RSS is drawn solid, recorded live memory
dashed, and each failed attempt (\"after failure\") as a dot.")]
pub struct Args {
    /// Timeline CSV files, profiles or `leakprof run` output directories.
    #[arg(value_name = "CSV|PROFILE|DIR", required = true)]
    inputs: Vec<PathBuf>,
    /// Legend name of each input, in order (default: variant or file name).
    #[arg(long, value_name = "NAME")]
    label: Vec<String>,
    /// Chart title.
    #[arg(long, default_value = "Memory usage")]
    title: String,
    /// Chart width in pixels.
    #[arg(long, default_value_t = defaults::WIDTH)]
    width: usize,
    /// Write to FILE instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

pub fn execute(_global: Global, args: Args) -> Outcome {
    if args.label.len() > args.inputs.len() {
        anyhow::bail!(
            "{} --label given for {} inputs",
            args.label.len(),
            args.inputs.len()
        );
    }
    let mut runs = Vec::new();
    for (i, input) in args.inputs.iter().enumerate() {
        let mut run = read_run(input)?;
        if let Some(l) = args.label.get(i) {
            run.label = l.clone();
        }
        runs.push(run);
    }
    let mut svg = Vec::new();
    plot_svg(&runs, &args.title, args.width, &mut svg)?;
    emit(args.output.as_deref(), &svg, false)?;
    Ok(ExitCode::SUCCESS)
}

fn read_run(input: &Path) -> anyhow::Result<Run> {
    let stem = || {
        let p = if input.file_name().is_some_and(|n| n == "profile.json") {
            input.parent().unwrap_or(input)
        } else {
            input
        };
        p.file_stem().map_or_else(
            || input.display().to_string(),
            |s| s.to_string_lossy().into_owned(),
        )
    };
    let looks_like_profile = input.is_dir() || input.extension().is_some_and(|e| e == "json");
    if looks_like_profile {
        let profile = load_profile_arg(input)?;
        let label = profile
            .meta
            .attributes
            .get(attributes::MIDDLEWARE)
            .cloned()
            .unwrap_or_else(stem);
        return Ok(Run::of_profile(&profile, &label));
    }
    let bytes =
        std::fs::read(input).with_context(|| format!("reading timeline {}", input.display()))?;
    let text = String::from_utf8(bytes).map_err(|_| {
        anyhow::anyhow!(
            "timeline {} is not a CSV file (it is not UTF-8 text)",
            input.display()
        )
    })?;
    Run::parse_csv(&text, &stem()).map_err(|e| anyhow::anyhow!("timeline {}: {e}", input.display()))
}

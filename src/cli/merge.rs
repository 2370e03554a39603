//! `leakprof merge`: several processes' profiles summed into one.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use super::{load_profile_arg, Global, Outcome};
use crate::analysis::merge;

/// Sum profiles of several processes by symbolized stack and tag.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  leakprof merge worker-1/profile.json worker-2/profile.json -o fleet.json
  leakprof merge leakprof-out/concurrent-* -o merged.json && leakprof report merged.json

Timelines are aligned on wall-clock time and summed; per-object heap-graph
data (nodes, cycles) is process-specific and is not kept.")]
pub struct Args {
    /// Profile files or `leakprof run` output directories.
    #[arg(value_name = "PROFILE|DIR", required = true)]
    profiles: Vec<PathBuf>,
    /// The merged profile to write.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
}

pub fn execute(global: Global, args: Args) -> Outcome {
    let profiles = args
        .profiles
        .iter()
        .map(|p| load_profile_arg(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let merged = merge(&profiles).context("no profiles to merge")?;
    merged.save(&args.output)?;
    if !global.quiet {
        eprintln!(
            "merged {} profiles into {} ({} stacks, {} live groups)",
            profiles.len(),
            args.output.display(),
            merged.stacks.len(),
            merged.live.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

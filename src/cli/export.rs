//! `leakprof export`: a profile in another tool's format.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use super::report::{emit, formats};
use super::{load_profile_arg, Global, Outcome};
use crate::analysis::Model;
use crate::render::{self, Command};

/// Export a profile for other tools (DHAT viewer, pprof, flamegraph tools).
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  leakprof export leakprof-out/exception-original --format dhat -o dhat-heap.json
      (open it in DHAT's viewer, dh_view.html)
  leakprof export profile.json --format pprof -o heap.pb.gz
      (go tool pprof -sample_index=inuse_space heap.pb.gz)
  leakprof export profile.json --format folded -o surviving.folded
  leakprof export profile.json --format timeline-csv -o memory.csv
      (then: leakprof plot memory.csv -o memory.svg)")]
pub struct Args {
    /// A profile file, or a `leakprof run` output directory.
    #[arg(value_name = "PROFILE|DIR")]
    profile: PathBuf,
    /// Output format.
    #[arg(long, value_parser = formats(Command::Export))]
    format: String,
    /// The file to write.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
}

pub fn execute(_global: Global, args: Args) -> Outcome {
    let profile = load_profile_arg(&args.profile)?;
    let renderer = render::find(Command::Export, &args.format).context("unknown export format")?;
    let model = Model::new(&profile);
    let bytes = render::render_to_vec(renderer, &model, &render::Options::default())?;
    emit(Some(&args.output), &bytes, renderer.binary)?;
    Ok(ExitCode::SUCCESS)
}

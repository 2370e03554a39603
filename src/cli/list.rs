//! `leakprof list` (not built yet).

use super::{Global, Outcome};

/// Not built yet.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn execute(_global: Global, _args: Args) -> Outcome {
    anyhow::bail!("`leakprof list` is not built yet")
}

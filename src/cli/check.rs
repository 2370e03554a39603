//! `leakprof check`: gate CI on leak limits. Exit 0 when every limit
//! holds, 1 with a one-line reason when one is exceeded, 2 when the input
//! is bad or a limit cannot be measured on this profile.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{load_profile_arg, parse_size, Global, Outcome};
use crate::analysis::check::{check, Limits, Verdict};

/// Check a profile against leak limits (for CI).
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  leakprof check leakprof-out/exception-fixed --max-leak-per-retry 1MiB --warmup 2
  leakprof check profile.json --max-surviving 64MiB
  leakprof check profile.json --owner \"error value\" --max-owned 0

Exit status: 0 every limit holds; 1 a limit is exceeded (one-line reason on
stderr); 2 bad input, or a limit that cannot be measured on this profile.
The same checks are a library API: leakprof::analysis::check.")]
pub struct Args {
    /// A profile file, or a `leakprof run` output directory.
    #[arg(value_name = "PROFILE|DIR")]
    profile: PathBuf,
    /// Largest leak slope allowed, in bytes per retry (e.g. 1MiB).
    #[arg(long, value_name = "SIZE", value_parser = size)]
    max_leak_per_retry: Option<u64>,
    /// Largest surviving memory allowed (e.g. 64MiB).
    #[arg(long, value_name = "SIZE", value_parser = size)]
    max_surviving: Option<u64>,
    /// Ignore retries below N (warm-up: caches, pools, lazy statics).
    #[arg(long, value_name = "N", default_value_t = 0)]
    warmup: u32,
    /// Owner whose memory --max-owned limits (repeat both to check several).
    #[arg(long, value_name = "NAME")]
    owner: Vec<String>,
    /// Largest memory the preceding --owner may keep alive.
    #[arg(long, value_name = "SIZE", value_parser = size)]
    max_owned: Vec<u64>,
}

fn size(text: &str) -> Result<u64, String> {
    parse_size(text, 1)
}

pub fn execute(global: Global, args: Args) -> Outcome {
    if args.owner.len() != args.max_owned.len() {
        anyhow::bail!(
            "--owner and --max-owned go in pairs: got {} --owner and {} --max-owned",
            args.owner.len(),
            args.max_owned.len()
        );
    }
    if args.max_leak_per_retry.is_none() && args.max_surviving.is_none() && args.owner.is_empty() {
        // A check without limits would pass everything: almost certainly
        // a mistake in a CI script.
        anyhow::bail!(
            "no limit given: use --max-leak-per-retry, --max-surviving or --owner with --max-owned"
        );
    }
    let profile = load_profile_arg(&args.profile)?;
    let mut limits = Limits::new().warmup(args.warmup);
    limits.max_leak_per_retry = args.max_leak_per_retry;
    limits.max_surviving = args.max_surviving;
    for (owner, max) in args.owner.into_iter().zip(args.max_owned) {
        limits = limits.max_owned(owner, max);
    }
    let path = super::input::profile_path(&args.profile);
    match check(&profile, &limits) {
        Verdict::Pass => {
            if !global.quiet {
                println!("ok: {}: all limits hold", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Verdict::Fail(reason) => {
            eprintln!("leakprof: check failed: {}: {reason}", path.display());
            Ok(ExitCode::from(1))
        }
        Verdict::Inconclusive(reason) => anyhow::bail!("{}: {reason}", path.display()),
    }
}

//! `leakprof list`: the scenarios (with their actors) and the middleware
//! variants, with their one-line descriptions.

use std::process::ExitCode;

use super::{Global, Outcome};
use crate::lab::scenarios::{Expect, SCENARIOS};
use crate::lab::variants::VARIANTS;

/// List scenarios and middleware variants.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  leakprof list")]
pub struct Args {}

pub fn execute(_global: Global, _args: Args) -> Outcome {
    println!("Scenarios (leakprof run --scenario NAME):");
    let width = SCENARIOS.iter().map(|s| s.name.len()).max().unwrap_or(0);
    for s in SCENARIOS {
        let expect = match s.expect {
            Expect::LeaksPerRetry(n) => {
                format!("original leaks {n} payload(s) per retry; fixed is flat")
            }
            Expect::Flat => "no growth in either variant".to_string(),
            Expect::RetainedUntilTtl => {
                "results retained until --result-ttl in both variants".to_string()
            }
        };
        println!("  {:width$}  {}", s.name, s.description);
        println!(
            "  {:width$}  actor {}, {} MiB payload, {} task(s), {} thread(s); {expect}",
            "", s.actor, s.defaults.payload_mib, s.defaults.tasks, s.defaults.threads
        );
    }
    println!("\nMiddleware variants (--middleware NAME):");
    let width = VARIANTS.iter().map(|v| v.name.len()).max().unwrap_or(0);
    for v in VARIANTS {
        println!("  {:width$}  {}", v.name, v.description);
    }
    Ok(ExitCode::SUCCESS)
}

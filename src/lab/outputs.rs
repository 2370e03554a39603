//! A run's output directory: `profile.json` (the recorder's profile),
//! `memory.csv` and `memory.svg` (the timeline: the seed's measuring points
//! and periodic samples), `flamegraph.svg` (surviving bytes by stack) and
//! `summary.json` (the flat figures). Every file is written atomically.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;

use super::run::RunReport;
use crate::analysis::{Model, Summary};
use crate::format::{write_atomically, Profile};
use crate::render::{self, Command};

/// The files a run writes besides the profile and the summary: (command,
/// renderer, file name).
const RENDERED: &[(Command, &str, &str)] = &[
    (Command::Timeline, "timeline-csv", "memory.csv"),
    (Command::Timeline, "timeline-svg", "memory.svg"),
    (Command::Flamegraph, "svg", "flamegraph.svg"),
];

/// Writes every output of a run and returns its summary.
pub fn write(dir: &Path, profile: &Profile) -> anyhow::Result<Summary> {
    let profile_path = dir.join("profile.json");
    profile.save(&profile_path)?;
    let model = Model::new(profile);
    let options = render::Options::default();
    for &(command, name, file) in RENDERED {
        let renderer =
            render::find(command, name).with_context(|| format!("no {name} renderer"))?;
        let bytes = render::render_to_vec(renderer, &model, &options)
            .with_context(|| format!("rendering {file}"))?;
        let path = dir.join(file);
        write_atomically(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    let summary = Summary::of(profile);
    let json = serde_json::to_vec_pretty(&summary).context("encoding summary.json")?;
    let path = dir.join("summary.json");
    write_atomically(&path, &json).with_context(|| format!("writing {}", path.display()))?;
    Ok(summary)
}

fn mib(bytes: f64) -> String {
    format!("{:.2} MiB", bytes / 1048576.0)
}

/// The summary a run prints: the seed's figures, measured.
pub fn describe(report: &RunReport) -> String {
    let s = &report.summary;
    let mut out = String::new();
    let label = match (&s.scenario, &s.variant) {
        (Some(sc), Some(v)) => format!("{sc} ({v} middleware)"),
        (Some(sc), None) => sc.clone(),
        _ => "worker".to_string(),
    };
    let _ = writeln!(
        out,
        "leakprof run: {label}, stopped: {}",
        report.stop.as_str()
    );
    let _ = writeln!(out, "  duration            {:.2} s", s.duration_s);
    let _ = writeln!(
        out,
        "  attempts            {} (highest retry {})",
        report.attempts, report.max_retry
    );
    let _ = writeln!(out, "  min RSS             {}", mib(s.min_rss_bytes as f64));
    let _ = writeln!(out, "  max RSS             {}", mib(s.max_rss_bytes as f64));
    let _ = writeln!(
        out,
        "  mean RSS            {}",
        mib(s.mean_rss_bytes as f64)
    );
    let _ = writeln!(out, "  memory growth       {}", mib(s.growth_bytes as f64));
    let _ = writeln!(
        out,
        "  surviving (live)    {}",
        mib(s.surviving_bytes as f64)
    );
    match (s.leak_per_retry_bytes, s.leak_per_retry_r2) {
        (Some(slope), Some(r2)) => {
            let _ = writeln!(out, "  leak per retry      {} (r² {r2:.3})", mib(slope));
        }
        _ => {
            let _ = writeln!(
                out,
                "  leak per retry      n/a (fewer than two failed retries)"
            );
        }
    }
    let _ = writeln!(out, "  behaviour           {}", s.behaviour.describe());
    if let Some(history) = report.retry_history {
        let _ = writeln!(
            out,
            "  retry history       {} fired closures kept, {} pruned",
            history.kept, history.pruned
        );
    }
    for end in &report.processes {
        let _ = writeln!(out, "  {end}");
    }
    let _ = writeln!(out, "  output              {}", report.out.display());
    let _ = writeln!(
        out,
        "\nNext: leakprof report {0}    (open {0}/flamegraph.svg and {0}/memory.svg)",
        report.out.display()
    );
    out
}

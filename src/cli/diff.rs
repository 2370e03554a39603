//! `leakprof diff`: the seed COMPARISON table of two runs (or two
//! snapshots of one run), per-owner and per-site deltas, and optionally a
//! differential flamegraph.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::builder::{PossibleValue, PossibleValuesParser};

use super::report::emit;
use super::{load_profile_arg, Global, Outcome};
use crate::analysis::check::human_bytes;
use crate::analysis::{Comparison, Model};
use crate::format::{attributes, Profile};
use crate::render::flamegraph::{folded, write_differential, FlameGroup, Metric};
use crate::render::{comparison, defaults};

/// Compare two profiles: min/max/mean RSS, growth, leak slope, behaviour.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  leakprof diff leakprof-out/exception-original leakprof-out/exception-fixed
  leakprof diff original.json fixed.json -o diff.svg
  leakprof diff snapshot-1.json snapshot-2.json --format json -o growth.json

With -o FILE.svg (or --flamegraph FILE) a differential flamegraph is
written: widths from B, red where B has more than A, blue where less. The
table then still goes to standard output.")]
pub struct Args {
    /// The first profile (the baseline, e.g. original) or run directory.
    #[arg(value_name = "A")]
    a: PathBuf,
    /// The second profile (e.g. fixed) or run directory.
    #[arg(value_name = "B")]
    b: PathBuf,
    /// Output format of the comparison.
    #[arg(long, default_value = "text", value_parser = PossibleValuesParser::new([
        PossibleValue::new("text").help("the COMPARISON table as Markdown, then per-owner and per-site deltas"),
        PossibleValue::new("json").help("the same as JSON (schema leakprof-diff/1)"),
    ]))]
    format: String,
    /// Rows of each delta table.
    #[arg(long, value_name = "N", default_value_t = defaults::TEXT_ROWS)]
    top: usize,
    /// Name of A in the table (default: its middleware attribute or file name).
    #[arg(long, value_name = "NAME")]
    label_a: Option<String>,
    /// Name of B in the table.
    #[arg(long, value_name = "NAME")]
    label_b: Option<String>,
    /// Write a differential flamegraph SVG to FILE.
    #[arg(long, value_name = "FILE")]
    flamegraph: Option<PathBuf>,
    /// What the differential flamegraph measures.
    #[arg(long, default_value = defaults::METRIC, value_parser = super::flamegraph::metrics())]
    metric: String,
    /// Write the comparison to FILE; a FILE ending in .svg gets the differential flamegraph instead.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

pub fn execute(_global: Global, args: Args) -> Outcome {
    let a = load_profile_arg(&args.a)?;
    let b = load_profile_arg(&args.b)?;
    let label_a = args
        .label_a
        .clone()
        .unwrap_or_else(|| label(&a, &b, &args.a));
    let label_b = args
        .label_b
        .clone()
        .unwrap_or_else(|| label(&b, &a, &args.b));
    let is_svg = |p: &Path| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("svg"));
    let (svg_path, table_path) = match &args.output {
        Some(o) if is_svg(o) => (Some(o.clone()), None),
        o => (args.flamegraph.clone(), o.clone()),
    };
    let c = Comparison::of(&a, &b, &label_a, &label_b);
    let mut text = Vec::new();
    match args.format.as_str() {
        "json" => comparison::write_json(&c, Some(args.top), &mut text)?,
        _ => comparison::write_text(&c, args.top, &mut text)?,
    }
    emit(table_path.as_deref(), &text, false)?;
    if let Some(svg) = svg_path {
        let metric = Metric::from_name(&args.metric).context("unknown metric")?;
        let (ma, mb) = (Model::new(&a), Model::new(&b));
        let fa = folded(&ma, metric, FlameGroup::None)?;
        let fb = folded(&mb, metric, FlameGroup::None)?;
        let title = format!("Differential flamegraph: {label_b} against {label_a}");
        let subtitle = format!(
            "surviving {} ({}) vs {} ({}); red: more in {label_b}, blue: less",
            human_bytes(b.totals.live.bytes),
            label_b,
            human_bytes(a.totals.live.bytes),
            label_a
        );
        let mut out = Vec::new();
        write_differential(
            &fa,
            &fb,
            &title,
            &subtitle,
            if metric == Metric::Blocks {
                "blocks"
            } else {
                "bytes"
            },
            defaults::WIDTH,
            &mut out,
        )?;
        emit(Some(&svg), &out, false)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The middleware variant when it tells the two runs apart, else the
/// file or directory name.
fn label(p: &Profile, other: &Profile, arg: &Path) -> String {
    let variant = p.meta.attributes.get(attributes::MIDDLEWARE);
    if variant.is_some() && variant != other.meta.attributes.get(attributes::MIDDLEWARE) {
        return variant.cloned().unwrap_or_default();
    }
    let name = if arg.file_name().is_some_and(|n| n == "profile.json") {
        arg.parent().unwrap_or(arg)
    } else {
        arg
    };
    name.file_name().map_or_else(
        || arg.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

//! The memory timeline: CSV (the seeds' `memory_usage_*.csv`) and an SVG
//! line chart (the seeds' `plot_memory.py`), which can overlay several runs
//! such as `original` against `fixed`.
//!
//! The two stages meet through the CSV: `leakprof plot` reads the files
//! this module writes, so a chart can be redrawn without the profiles.
//! Charts use plotters' SVG backend only: text is emitted as SVG `<text>`
//! elements laid out by plotters' font-free estimator, so no system font
//! library is needed.

use std::io::{self, Write};

use plotters::prelude::*;

use super::{run_label, Options, Render};
use crate::analysis::Model;
use crate::format::{events, Profile};

/// The CSV header, in column order. Readers look columns up by name.
pub const CSV_HEADER: &str = "time_s,rss_mib,live_mib,live_blocks,event,task,retry";

const MIB: f64 = 1024.0 * 1024.0;

/// One timeline sample, in chart units.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub time_s: f64,
    pub rss_mib: f64,
    pub live_mib: f64,
    pub event: Option<String>,
    pub task: Option<u64>,
    pub retry: Option<u32>,
}

/// One run's timeline with the name its legend shows.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    pub label: String,
    pub samples: Vec<Sample>,
}

impl Run {
    pub fn of_profile(profile: &Profile, label: &str) -> Run {
        Run {
            label: label.to_string(),
            samples: profile
                .timeline
                .iter()
                .map(|p| Sample {
                    time_s: p.t_ns as f64 / 1e9,
                    rss_mib: p.rss_bytes as f64 / MIB,
                    live_mib: p.live_bytes as f64 / MIB,
                    event: p.event.clone(),
                    task: p.task,
                    retry: p.retry,
                })
                .collect(),
        }
    }

    /// Reads a CSV written by [`Csv`]; the error says which line is wrong.
    pub fn parse_csv(text: &str, label: &str) -> Result<Run, String> {
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        let (_, header) = lines.next().ok_or("the file is empty")?;
        let columns: Vec<&str> = header.split(',').map(str::trim).collect();
        let col = |name: &str| columns.iter().position(|c| *c == name);
        let (Some(t), Some(rss), Some(live)) = (col("time_s"), col("rss_mib"), col("live_mib"))
        else {
            return Err(format!(
                "line 1: not a leakprof timeline CSV (expected a header with time_s, rss_mib and live_mib, found {header:?})"
            ));
        };
        let (event, task, retry) = (col("event"), col("task"), col("retry"));
        let mut samples = Vec::new();
        for (i, line) in lines {
            let fields = split_csv_line(line);
            let get = |c: Option<usize>| {
                c.and_then(|c| fields.get(c))
                    .map(|s| s.trim())
                    .filter(|s| !s.is_empty())
            };
            let num = |c: usize, name: &str| -> Result<f64, String> {
                let v = get(Some(c)).ok_or_else(|| format!("line {}: missing {name}", i + 1))?;
                v.parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| format!("line {}: {name} {v:?} is not a number", i + 1))
            };
            samples.push(Sample {
                time_s: num(t, "time_s")?,
                rss_mib: num(rss, "rss_mib")?,
                live_mib: num(live, "live_mib")?,
                event: get(event).map(str::to_string),
                task: get(task).and_then(|v| v.parse().ok()),
                retry: get(retry).and_then(|v| v.parse().ok()),
            });
        }
        Ok(Run {
            label: label.to_string(),
            samples,
        })
    }
}

fn split_csv_line(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    fields.push(cur);
    fields
}

pub struct Csv;

impl Render for Csv {
    fn render(&self, model: &Model<'_>, _options: &Options, out: &mut dyn Write) -> io::Result<()> {
        // live_blocks is not a chart unit; write it from the profile.
        writeln!(out, "{CSV_HEADER}")?;
        for p in &model.profile.timeline {
            writeln!(
                out,
                "{:.6},{:.3},{:.3},{},{},{},{}",
                p.t_ns as f64 / 1e9,
                p.rss_bytes as f64 / MIB,
                p.live_bytes as f64 / MIB,
                p.live_blocks,
                p.event
                    .as_deref()
                    .map(super::table::csv_field)
                    .unwrap_or_default(),
                p.task.map(|t| t.to_string()).unwrap_or_default(),
                p.retry.map(|r| r.to_string()).unwrap_or_default()
            )?;
        }
        Ok(())
    }
}

pub struct Svg;

impl Render for Svg {
    fn render(&self, model: &Model<'_>, options: &Options, out: &mut dyn Write) -> io::Result<()> {
        let label = run_label(model.profile);
        let run = Run::of_profile(model.profile, &label);
        let title = options
            .title
            .clone()
            .unwrap_or_else(|| format!("Memory usage: {label}"));
        plot_svg(&[run], &title, options.width, out)
    }
}

/// Colours of overlaid runs, in order.
const RUN_COLOURS: &[RGBColor] = &[
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Draws runs on one chart: RSS as a solid line, live bytes dashed,
/// failures (`after failure` points) as dots on the RSS line.
pub fn plot_svg(runs: &[Run], title: &str, width: usize, out: &mut dyn Write) -> io::Result<()> {
    let mut svg = String::new();
    draw(runs, title, width as u32, &mut svg)
        .map_err(|e| io::Error::other(format!("drawing the chart: {e}")))?;
    out.write_all(svg.as_bytes())
}

fn draw(
    runs: &[Run],
    title: &str,
    width: u32,
    svg: &mut String,
) -> Result<(), Box<dyn std::error::Error>> {
    let all = || runs.iter().flat_map(|r| r.samples.iter());
    let x_max = all().map(|s| s.time_s).fold(0.0f64, f64::max).max(1e-3) * 1.02;
    let y_max = all()
        .map(|s| s.rss_mib.max(s.live_mib))
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.08;
    {
        let root = SVGBackend::with_string(svg, (width, 600)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
        chart
            .configure_mesh()
            .x_desc("time (s)")
            .y_desc("memory (MiB)")
            .light_line_style(RGBColor(235, 235, 235))
            .draw()?;
        for (i, run) in runs.iter().enumerate() {
            let colour = RUN_COLOURS[i % RUN_COLOURS.len()];
            let rss: Vec<(f64, f64)> = run.samples.iter().map(|s| (s.time_s, s.rss_mib)).collect();
            let live: Vec<(f64, f64)> =
                run.samples.iter().map(|s| (s.time_s, s.live_mib)).collect();
            chart
                .draw_series(LineSeries::new(rss, colour.stroke_width(2)))?
                .label(format!("{}: RSS", run.label))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            chart
                .draw_series(DashedLineSeries::new(
                    live,
                    6,
                    4,
                    colour.mix(0.7).stroke_width(1),
                ))?
                .label(format!("{}: live (recorded)", run.label))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.mix(0.7)));
            let failures: Vec<(f64, f64)> = run
                .samples
                .iter()
                .filter(|s| s.event.as_deref() == Some(events::AFTER_FAILURE))
                .map(|s| (s.time_s, s.rss_mib))
                .collect();
            if !failures.is_empty() {
                chart
                    .draw_series(
                        failures
                            .into_iter()
                            .map(|p| Circle::new(p, 3, colour.filled())),
                    )?
                    .label(format!("{}: retry (after failure)", run.label))
                    .legend(move |(x, y)| Circle::new((x + 10, y), 3, colour.filled()));
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    Ok(())
}

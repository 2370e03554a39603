//! Flamegraphs of allocation stacks, through inferno.
//!
//! As in inferno, the stages meet through the folded format: [`folded`]
//! turns the model into `frame;frame;frame value` lines (root first,
//! allocator and leakprof frames trimmed), and the SVG is inferno's
//! rendering of those lines. `--group-by` adds one synthetic root frame per
//! task, retry or owner, so each group gets its own tower.

use std::collections::HashMap;
use std::io::{self, Write};

use inferno::flamegraph::color::{BasicPalette, Palette};

use super::{run_label, Options, Render};
use crate::analysis::check::human_bytes;
use crate::analysis::Model;

/// What a flamegraph's widths measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    Surviving,
    Allocated,
    Peak,
    Blocks,
}

/// `--metric` values: name, one-line description, metric.
pub const METRICS: &[(&str, &str, Metric)] = &[
    (
        "surviving",
        "bytes still alive at snapshot",
        Metric::Surviving,
    ),
    (
        "allocated",
        "bytes allocated in total while recording",
        Metric::Allocated,
    ),
    ("peak", "bytes alive at the global peak", Metric::Peak),
    ("blocks", "blocks still alive at snapshot", Metric::Blocks),
];

impl Metric {
    pub fn from_name(name: &str) -> Option<Metric> {
        METRICS.iter().find(|m| m.0 == name).map(|m| m.2)
    }
    pub fn name(self) -> &'static str {
        METRICS.iter().find(|m| m.2 == self).map_or("?", |m| m.0)
    }
    fn title(self) -> &'static str {
        match self {
            Metric::Surviving => "Surviving memory",
            Metric::Allocated => "Allocated memory",
            Metric::Peak => "Memory at peak",
            Metric::Blocks => "Surviving blocks",
        }
    }
    fn unit(self) -> &'static str {
        if self == Metric::Blocks {
            "blocks"
        } else {
            "bytes"
        }
    }
    /// Allocated and peak amounts are recorded per stack, not per tag.
    fn per_tag(self) -> bool {
        matches!(self, Metric::Surviving | Metric::Blocks)
    }
}

/// The synthetic root frame of `--group-by`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlameGroup {
    None,
    Task,
    Retry,
    Owner,
}

/// `--group-by` values: name, one-line description, grouping.
pub const FLAME_GROUPS: &[(&str, &str, FlameGroup)] = &[
    ("none", "one flamegraph of all stacks", FlameGroup::None),
    ("task", "one tower per task", FlameGroup::Task),
    ("retry", "one tower per retry number", FlameGroup::Retry),
    ("owner", "one tower per owner", FlameGroup::Owner),
];

impl FlameGroup {
    pub fn from_name(name: &str) -> Option<FlameGroup> {
        FLAME_GROUPS.iter().find(|m| m.0 == name).map(|m| m.2)
    }
    pub fn name(self) -> &'static str {
        FLAME_GROUPS
            .iter()
            .find(|m| m.2 == self)
            .map_or("?", |m| m.0)
    }
}

/// Makes a name safe for the folded format: `;` separates frames and a
/// space separates the value, so neither may appear inside a frame.
pub fn sanitize_frame(name: &str) -> String {
    name.replace(';', ",").replace([' ', '\t', '\n', '\r'], "_")
}

/// Folded lines of a model, sorted; the value is in the metric's unit.
/// Lines with a zero value are left out.
pub fn folded(model: &Model<'_>, metric: Metric, group: FlameGroup) -> io::Result<Vec<String>> {
    let p = model.profile;
    let values = stack_values(model, metric, group)?;
    // Sanitised names per frame, not per stack: a stack's text is built
    // straight into its line, so no second copy of every stack is kept.
    let names: Vec<String> = (0..p.frames.len() as u32)
        .map(|f| sanitize_frame(model.function(f)))
        .collect();
    let mut lines = Vec::with_capacity(values.len());
    for ((stack, key), v) in values {
        if v == 0 {
            continue;
        }
        let mut line = String::new();
        if !key.is_empty() {
            line.push_str(&sanitize_frame(key));
            line.push(';');
        }
        let before = line.len();
        for f in model.shown_frames_root_first(stack) {
            if line.len() > before {
                line.push(';');
            }
            line.push_str(&names[f as usize]);
        }
        if line.len() == before {
            line.push_str("[no frames]");
        }
        line.push(' ');
        line.push_str(&v.to_string());
        line.shrink_to_fit();
        lines.push(line);
    }
    lines.sort_unstable();
    Ok(lines)
}

/// The value of each (stack, group frame) pair under a metric.
fn stack_values<'m>(
    model: &'m Model<'_>,
    metric: Metric,
    group: FlameGroup,
) -> io::Result<HashMap<(u32, &'m str), u64>> {
    let p = model.profile;
    if group != FlameGroup::None && !metric.per_tag() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "--group-by {} needs --metric surviving or blocks: {} amounts are recorded per stack, not per task or owner",
                group.name(),
                metric.name()
            ),
        ));
    }
    // (stack, group frame) -> value
    let mut values: HashMap<(u32, &str), u64> = HashMap::new();
    match metric {
        Metric::Surviving | Metric::Blocks => {
            for g in &p.live {
                let key = match group {
                    FlameGroup::None => "",
                    FlameGroup::Task => model.task(g),
                    FlameGroup::Retry => model.retry(g),
                    FlameGroup::Owner => model.owner(g),
                };
                let v = if metric == Metric::Blocks {
                    g.blocks
                } else {
                    g.bytes
                };
                let e = values.entry((g.stack, key)).or_default();
                *e = e.saturating_add(v);
            }
        }
        Metric::Allocated | Metric::Peak => {
            for s in &p.stack_stats {
                let v = if metric == Metric::Allocated {
                    s.allocated.bytes
                } else {
                    s.at_peak.bytes
                };
                let e = values.entry((s.stack, "")).or_default();
                *e = e.saturating_add(v);
            }
        }
    }
    Ok(values)
}

/// inferno's default minimum frame width, in percent of the whole graph:
/// narrower frames are not drawn.
const MIN_WIDTH_PCT: f64 = 0.01;

/// Folded lines for drawing: every frame inferno would not draw (narrower
/// than [`MIN_WIDTH_PCT`] of the graph) is cut off, and runs of hidden
/// siblings are packed into one line, so inferno gets at most about one
/// line per 0.01% of the graph instead of one per stack. The frames that
/// are drawn do not change, in width or place: a test checks that both
/// sets of lines draw the same SVG byte for byte.
///
/// Stacks are handled as paths of interned frame names (names, not frame
/// ids: inferno merges frames by name), sorted so that paths sharing a
/// prefix are adjacent; one pass then learns each prefix's total width.
pub fn visible_folded(
    model: &Model<'_>,
    metric: Metric,
    group: FlameGroup,
) -> io::Result<Vec<String>> {
    let p = model.profile;
    let values = stack_values(model, metric, group)?;
    let mut names: Vec<String> = Vec::new();
    let mut name_ids: HashMap<String, u32> = HashMap::new();
    let mut intern = |text: String| -> u32 {
        *name_ids.entry(text).or_insert_with_key(|t| {
            names.push(t.clone());
            names.len() as u32 - 1
        })
    };
    let frame_names: Vec<u32> = (0..p.frames.len() as u32)
        .map(|f| intern(sanitize_frame(model.function(f))))
        .collect();
    let no_frames = intern("[no frames]".to_string());
    let mut key_ids: HashMap<&str, u32> = HashMap::new();
    let mut entries: Vec<(Vec<u32>, u64)> = Vec::with_capacity(values.len());
    for ((stack, key), v) in values {
        if v == 0 {
            continue;
        }
        let mut path = Vec::new();
        if !key.is_empty() {
            path.push(
                *key_ids
                    .entry(key)
                    .or_insert_with(|| intern(sanitize_frame(key))),
            );
        }
        let before = path.len();
        path.extend(
            model
                .shown_frames_root_first(stack)
                .map(|f| frame_names[f as usize]),
        );
        if path.len() == before {
            path.push(no_frames);
        }
        entries.push((path, v));
    }
    entries.sort_unstable();
    let total: u128 = entries.iter().map(|e| e.1 as u128).sum();
    // inferno's own formula, so a frame exactly at the limit is judged alike.
    let threshold = MIN_WIDTH_PCT / (100.0 / total as f64);
    let keep = drawn_depths(&entries, threshold);
    // A cut line keeps its first hidden frame and a hidden child under it:
    // inferno orders siblings by comparing whole lines, so the text after
    // a frame's name (`;` here, as in the uncut lines) must not change, or
    // the drawn frames would move. Both are narrower than the minimum
    // width, so inferno drops them, as it dropped the uncut tails.
    let hidden = intern("[narrower_than_the_minimum_width]".to_string());
    let mut cut: HashMap<Vec<u32>, u64> = HashMap::new();
    for ((path, v), k) in entries.iter().zip(&keep) {
        let key = if k + 1 >= path.len() {
            path.clone()
        } else {
            let mut key = path[..k + 1].to_vec();
            key.push(hidden);
            key
        };
        let e = cut.entry(key).or_default();
        *e = e.saturating_add(*v);
    }
    // In inferno's own order (whole lines compared as strings), pack runs
    // of adjacent hidden siblings into one line each while the run stays
    // narrower than the minimum width: named after its first sibling, the
    // run is dropped by inferno like its members, and everything after it
    // keeps its place. Never a sibling split over two runs, so adjacent
    // runs never share a name (inferno would merge them).
    let mut items: Vec<(String, Vec<u32>, u64)> = cut
        .into_iter()
        .map(|(path, v)| {
            (
                path.iter()
                    .map(|&n| names[n as usize].as_str())
                    .collect::<Vec<_>>()
                    .join(";"),
                path,
                v,
            )
        })
        .collect();
    items.sort_unstable();
    let mut lines: Vec<String> = Vec::new();
    // (line text without value, parent path, width so far)
    let mut run: Option<(String, Vec<u32>, u128)> = None;
    let flush = |run: &mut Option<(String, Vec<u32>, u128)>, lines: &mut Vec<String>| {
        if let Some((text, _, width)) = run.take() {
            lines.push(format!("{text} {width}"));
        }
    };
    for (text, path, v) in items {
        let is_cut = path.last() == Some(&hidden) && path.len() >= 2;
        if !is_cut {
            flush(&mut run, &mut lines);
            lines.push(format!("{text} {v}"));
            continue;
        }
        let parent = &path[..path.len() - 2];
        match &mut run {
            Some((_, run_parent, width))
                if run_parent.as_slice() == parent && ((*width + v as u128) as f64) < threshold =>
            {
                *width += v as u128;
            }
            _ => {
                flush(&mut run, &mut lines);
                run = Some((text, parent.to_vec(), v as u128));
            }
        }
    }
    flush(&mut run, &mut lines);
    Ok(lines)
}

/// For each of `entries` (paths sorted so that shared prefixes are
/// adjacent, with their values), how many leading frames inferno draws:
/// those of every prefix at least `threshold` wide, and at least one, so
/// no value is lost (inferno prunes a root frame itself if need be).
fn drawn_depths(entries: &[(Vec<u32>, u64)], threshold: f64) -> Vec<usize> {
    let mut keep = vec![1usize; entries.len()];
    // Open prefix nodes, outermost first: (total so far, first entry).
    let mut open: Vec<(u128, usize)> = Vec::new();
    let close_to = |open: &mut Vec<(u128, usize)>, depth: usize, end: usize, keep: &mut [usize]| {
        while open.len() > depth {
            let Some((node_total, start)) = open.pop() else {
                break;
            };
            if node_total as f64 >= threshold {
                let drawn = open.len() + 1;
                for k in &mut keep[start..end] {
                    *k = (*k).max(drawn);
                }
            }
        }
    };
    for i in 0..entries.len() {
        let common = match i {
            0 => 0,
            _ => entries[i - 1]
                .0
                .iter()
                .zip(&entries[i].0)
                .take_while(|(a, b)| a == b)
                .count(),
        };
        close_to(&mut open, common, i, &mut keep);
        while open.len() < entries[i].0.len() {
            open.push((0, i));
        }
        for node in &mut open {
            node.0 += entries[i].1 as u128;
        }
    }
    close_to(&mut open, 0, entries.len(), &mut keep);
    keep
}

/// `--folded`: the folded lines themselves.
pub struct Folded;

impl Render for Folded {
    fn render(&self, model: &Model<'_>, options: &Options, out: &mut dyn Write) -> io::Result<()> {
        for line in folded(model, options.metric, options.group_by)? {
            writeln!(out, "{line}")?;
        }
        Ok(())
    }
}

/// The SVG flamegraph.
pub struct Svg;

impl Render for Svg {
    fn render(&self, model: &Model<'_>, options: &Options, out: &mut dyn Write) -> io::Result<()> {
        let lines = visible_folded(model, options.metric, options.group_by)?;
        let p = model.profile;
        let title = options
            .title
            .clone()
            .unwrap_or_else(|| format!("{}: {}", options.metric.title(), run_label(p)));
        let subtitle = format!(
            "{} surviving in {} blocks, {} allocated, peak {}, RSS {}{}",
            human_bytes(p.totals.live.bytes),
            p.totals.live.blocks,
            human_bytes(p.totals.allocated.bytes),
            human_bytes(p.totals.peak.bytes),
            human_bytes(p.totals.rss_bytes),
            match options.group_by {
                FlameGroup::None => String::new(),
                g => format!(", grouped by {}", g.name()),
            }
        );
        write_svg(
            &lines,
            &title,
            &subtitle,
            options.metric.unit(),
            options.width,
            out,
        )
    }
}

/// inferno's options for a memory flamegraph.
fn inferno_options(
    title: &str,
    subtitle: &str,
    unit: &str,
    width: usize,
) -> inferno::flamegraph::Options<'static> {
    let mut o = inferno::flamegraph::Options::default();
    o.title = title.to_string();
    o.subtitle = Some(subtitle.to_string());
    o.count_name = unit.to_string();
    o.colors = Palette::Basic(BasicPalette::Mem);
    // Colours from the function name, so the same input gives the same
    // SVG (golden files) and a function keeps its colour across graphs.
    o.hash = true;
    o.deterministic = true;
    o.image_width = Some(width);
    o
}

/// Renders folded lines as an SVG. With no lines at all, writes a small
/// valid SVG that says the profile holds nothing to draw (inferno itself
/// would write an error picture and fail).
pub fn write_svg(
    lines: &[String],
    title: &str,
    subtitle: &str,
    unit: &str,
    width: usize,
    out: &mut dyn Write,
) -> io::Result<()> {
    if lines.is_empty() {
        return write_empty_svg(
            title,
            &format!("{subtitle}. Nothing to draw: no stack has any {unit} for this metric."),
            width,
            out,
        );
    }
    let lines = fit_for_inferno(lines);
    let mut opts = inferno_options(title, subtitle, unit, width);
    inferno::flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), out)
}

/// Largest sum of values handed to inferno, which adds them in a `usize`.
const INFERNO_MAX_TOTAL: u128 = 1 << 62;

/// Folded lines whose values inferno can sum: real profiles never come
/// near the limit, but a corrupt file may claim any size, and then every
/// value is divided by the same factor (widths keep their proportions).
fn fit_for_inferno(lines: &[String]) -> std::borrow::Cow<'_, [String]> {
    let value = |l: &str| {
        l.rsplit_once(' ')
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let total: u128 = lines.iter().map(|l| value(l) as u128).sum();
    if total <= INFERNO_MAX_TOTAL {
        return std::borrow::Cow::Borrowed(lines);
    }
    let factor = total.div_ceil(INFERNO_MAX_TOTAL) as u64;
    std::borrow::Cow::Owned(
        lines
            .iter()
            .filter_map(|l| {
                let (stack, _) = l.rsplit_once(' ')?;
                Some(format!("{stack} {}", value(l) / factor))
            })
            .collect(),
    )
}

/// A differential flamegraph of B against A (inferno differential): frame
/// widths from B, red where B grew, blue where it shrank.
pub fn write_differential(
    a: &[String],
    b: &[String],
    title: &str,
    subtitle: &str,
    unit: &str,
    width: usize,
    out: &mut dyn Write,
) -> io::Result<()> {
    let before = fit_for_inferno(a).join("\n");
    let after = fit_for_inferno(b).join("\n");
    let mut diff = Vec::new();
    inferno::differential::from_readers(
        inferno::differential::Options::default(),
        before.as_bytes(),
        after.as_bytes(),
        &mut diff,
    )?;
    let text = String::from_utf8(diff).map_err(io::Error::other)?;
    let lines: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    // A stack that exists only in A has zero width in B; inferno draws
    // nothing for a graph whose widths are all zero.
    let has_width = lines
        .iter()
        .any(|l| l.rsplit(' ').next().is_some_and(|v| v != "0"));
    if !has_width {
        return write_empty_svg(
            title,
            &format!(
                "{subtitle}. Nothing to draw: the second profile has no {unit} for this metric."
            ),
            width,
            out,
        );
    }
    let mut opts = inferno_options(title, subtitle, unit, width);
    inferno::flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), out)
}

fn write_empty_svg(
    title: &str,
    message: &str,
    width: usize,
    out: &mut dyn Write,
) -> io::Result<()> {
    write!(
        out,
        r##"<?xml version="1.0" standalone="no"?>
<svg version="1.1" width="{width}" height="90" viewBox="0 0 {width} 90" xmlns="http://www.w3.org/2000/svg">
<rect x="0" y="0" width="100%" height="100%" fill="#eeeeee"/>
<text id="title" x="50%" y="28" text-anchor="middle" font-family="Verdana" font-size="17">{}</text>
<text id="subtitle" x="50%" y="58" text-anchor="middle" font-family="Verdana" font-size="12">{}</text>
</svg>
"##,
        xml_escape(title),
        xml_escape(message)
    )
}

/// Escapes text for an XML text node or attribute.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

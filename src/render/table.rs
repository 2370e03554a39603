//! Partition reports: the guppy table as text, JSON and CSV.
//!
//! The text form copies guppy's layout (header line, the Index / Count / % /
//! Size / % / Cumulative / % / Kind columns, "<K more rows>") so a reader
//! who knows heapy reads it at once; the leak analysis follows it. The JSON
//! form is the documented, stable schema of docs/REPORT.md: keys are only
//! ever added to it.

use std::io::{self, Write};

use serde_json::json;

use super::names::{fit_lines, Names};
use super::{defaults, run_label, Options, Render};
use crate::analysis::check::human_bytes;
use crate::analysis::leaks::TaskScopedLeaks;
use crate::analysis::summary::RssGap;
use crate::analysis::{signed_change, Model, Partition, Report};

/// The JSON schema name and version written as `schema`.
pub const JSON_SCHEMA: &str = "leakprof-report/1";

/// Per-retry and per-task lines the text report shows before eliding.
const TEXT_GROWTH_ROWS: usize = 20;

pub struct Text;
pub struct Json;
pub struct Csv;

impl Render for Text {
    fn render(&self, model: &Model<'_>, options: &Options, out: &mut dyn Write) -> io::Result<()> {
        let report = Report::new(model, options.by);
        let mut text = Vec::new();
        write_text(model, &report, options, &mut text)?;
        let text = String::from_utf8_lossy(&text);
        out.write_all(fit_lines(&text, options.line_width).as_bytes())
    }
}

impl Render for Json {
    fn render(&self, model: &Model<'_>, options: &Options, out: &mut dyn Write) -> io::Result<()> {
        let report = Report::new(model, options.by);
        let value = json_value(model, &report, options);
        serde_json::to_writer_pretty(&mut *out, &value)?;
        out.write_all(b"\n")
    }
}

impl Render for Csv {
    fn render(&self, model: &Model<'_>, options: &Options, out: &mut dyn Write) -> io::Result<()> {
        let partition = Partition::of(model, options.by);
        writeln!(
            out,
            "index,count,count_pct,size,size_pct,cumulative,cumulative_pct,kind"
        )?;
        for r in partition
            .rows
            .iter()
            .take(options.top.unwrap_or(usize::MAX))
        {
            writeln!(
                out,
                "{},{},{},{},{},{},{},{}",
                r.index,
                r.count,
                r.count_pct,
                r.size,
                r.size_pct,
                r.cumulative,
                r.cumulative_pct,
                csv_field(&r.kind)
            )?;
        }
        Ok(())
    }
}

/// Quotes a CSV field when it holds a comma, quote or line break.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Writes a partition as guppy prints it, with at most `top` rows.
pub fn write_partition(
    partition: &Partition,
    top: usize,
    kind_header: &str,
    names: &Names,
    out: &mut dyn Write,
) -> io::Result<()> {
    writeln!(
        out,
        "Partition of a set of {} allocations. Total size = {} bytes.",
        partition.total.blocks, partition.total.bytes
    )?;
    let shown = &partition.rows[..top.min(partition.rows.len())];
    // guppy's column widths, widened when a figure does not fit.
    let digits = |n: u64| n.to_string().len();
    let w_index = 6.max(shown.last().map_or(0, |r| digits(r.index as u64)));
    let w_count = 6.max(shown.iter().map(|r| digits(r.count)).max().unwrap_or(0));
    let w_size = 8.max(shown.iter().map(|r| digits(r.size)).max().unwrap_or(0));
    let w_cum = 9.max(
        shown
            .iter()
            .map(|r| digits(r.cumulative))
            .max()
            .unwrap_or(0),
    );
    // guppy's "Cumulative" heading overhangs its 9-wide column by one.
    let w_cum_head = w_cum + 1;
    writeln!(
        out,
        "{:>w_index$} {:>w_count$} {:>3} {:>w_size$} {:>3} {:>w_cum_head$} {:>2} Kind ({kind_header})",
        "Index", "Count", "%", "Size", "%", "Cumulative", "%"
    )?;
    for r in shown {
        writeln!(
            out,
            "{:>w_index$} {:>w_count$} {:>3} {:>w_size$} {:>3} {:>w_cum$} {:>3} {}",
            r.index,
            r.count,
            r.count_pct.round() as u64,
            r.size,
            r.size_pct.round() as u64,
            r.cumulative,
            r.cumulative_pct.round() as u64,
            names.show(&r.kind)
        )?;
    }
    let more = partition.rows.len() - shown.len();
    if more > 0 {
        writeln!(
            out,
            "<{more} more rows. Use --top {} to view them.>",
            partition.rows.len()
        )?;
    }
    Ok(())
}

fn write_text(
    model: &Model<'_>,
    report: &Report,
    options: &Options,
    out: &mut dyn Write,
) -> io::Result<()> {
    let p = model.profile;
    let s = &report.summary;
    if let Some(base) = p.meta.attributes.get("relative_to") {
        writeln!(
            out,
            "Relative to {base}: only memory that is new since that profile."
        )?;
    }
    let top = options.top.unwrap_or(defaults::TEXT_ROWS);
    let names = Names::of(p, options.full_names);
    write_partition(
        &report.partition,
        top,
        report.partition.kind_header,
        &names,
        out,
    )?;
    writeln!(out)?;
    writeln!(out, "Run: {}", run_label(p))?;
    let gap = RssGap::of(p);
    let mut parts = Vec::new();
    if let Some(r) = gap.recorder_bytes {
        parts.push(format!("leakprof's own {}", human_bytes(r)));
    }
    if let Some(b) = gap.before_recording_bytes {
        parts.push(format!("RSS before recording {}", human_bytes(b)));
    }
    let rest = "allocator overhead, fragmentation and untracked memory";
    if parts.is_empty() {
        parts.push(rest.to_string());
    } else {
        parts.push(format!(
            "the rest {}: {rest}",
            signed_bytes(gap.rest_bytes as f64)
        ));
    }
    writeln!(
        out,
        "Surviving: {} in {} blocks; RSS at snapshot {} ({} {} live: {})",
        human_bytes(s.surviving_bytes),
        s.surviving_blocks,
        human_bytes(s.rss_bytes),
        human_bytes(gap.gap_bytes.unsigned_abs()),
        if gap.gap_bytes >= 0 { "above" } else { "below" },
        parts.join(", ")
    )?;
    if s.timeline_points > 0 {
        writeln!(
            out,
            "RSS over {:.2} s: min {}, max {}, mean {}, growth {}",
            s.duration_s,
            human_bytes(s.min_rss_bytes),
            human_bytes(s.max_rss_bytes),
            human_bytes(s.mean_rss_bytes),
            human_bytes(s.growth_bytes)
        )?;
    }
    match &report.slope {
        Some(slope) => writeln!(
            out,
            "Leak per retry: {} (r² {:.3}, {})",
            signed_bytes(slope.bytes_per_retry),
            slope.r2,
            slope.fitted_over()
        )?,
        None => writeln!(out, "Leak per retry: not measured (no task has two ended attempts in its tags, and fewer than two retries have an \"after failure\" point)")?,
    }
    writeln!(out, "Behaviour: {}", s.behaviour.describe())?;
    writeln!(out, "Retries: {} over {} tasks", s.retries, s.tasks)?;
    if let Some(f) = &p.folded {
        writeln!(
            out,
            "Folded: {} tasks ({} tags) finished or idle with nothing surviving, {} allocated in all{}",
            f.tasks,
            f.tags,
            human_bytes(f.allocated.bytes),
            if f.outcomes.is_empty() {
                String::new()
            } else {
                let by: Vec<String> = f
                    .outcomes
                    .iter()
                    .map(|(o, n)| format!("{n} {}", if o.is_empty() { "undescribed" } else { o }))
                    .collect();
                format!(" ({})", by.join(", "))
            }
        )?;
    }
    let d = &p.dropped;
    writeln!(
        out,
        "Dropped events: {} ({} allocations untracked, {} bytes; {} timeline samples lost; {} stacks overflowed, {} truncated)",
        s.dropped_events, d.untracked_allocs, d.untracked_bytes, d.timeline_points, d.stacks_overflowed, d.truncated_stacks
    )?;
    if let Some(g) = &p.graph {
        writeln!(out, "{}", crate::analysis::retainers::describe_coverage(g))?;
    }
    if d.timeline_decimated > 0 {
        writeln!(
            out,
            "Timeline: {} older points decimated (each bucket of 8 keeps its lowest and highest live and RSS points)",
            d.timeline_decimated
        )?;
    }
    if let Some(m) = &p.recorder {
        writeln!(
            out,
            "Recorder memory: {} (live table {}, stacks {}, tags {}, threads {}, timeline {}, task records {})",
            human_bytes(m.total),
            human_bytes(m.live_table),
            human_bytes(m.stacks),
            human_bytes(m.tags),
            human_bytes(m.threads),
            human_bytes(m.timeline),
            human_bytes(m.session)
        )?;
    }
    write_task_scoped(&report.task_scoped, top, &names, out)?;
    write_growth(report, out)
}

fn signed_bytes(v: f64) -> String {
    if v < 0.0 {
        format!("-{}", human_bytes((-v).round() as u64))
    } else {
        human_bytes(v.round() as u64)
    }
}

/// MRQ's per-job "leaked types" report: the task-scoped leaks of a
/// profile as a partition by site and type, with the per-task split. This
/// is what `leakprof run --trace-memory` prints after each job, from a
/// snapshot taken once the job has ended.
pub fn write_task_scoped_leaks(
    profile: &crate::format::Profile,
    top: usize,
    out: &mut dyn Write,
) -> io::Result<()> {
    let leaks = TaskScopedLeaks::of(&Model::new(profile));
    write_task_scoped(&leaks, top, &Names::of(profile, false), out)
}

fn write_task_scoped(
    leaks: &TaskScopedLeaks,
    top: usize,
    names: &Names,
    out: &mut dyn Write,
) -> io::Result<()> {
    writeln!(out)?;
    writeln!(
        out,
        "Task-scoped leaks: blocks still alive after the task or retry that allocated them ended"
    )?;
    if leaks.rows.is_empty() {
        writeln!(out, "none")?;
        return write_kept_by_runtime(leaks, top, names, out);
    }
    let sums = leaks
        .rows
        .iter()
        .map(|r| {
            (
                format!("{} [{}]", names.show(&r.site), names.show(&r.type_name)),
                crate::format::Amount {
                    bytes: r.size,
                    blocks: r.count,
                },
            )
        })
        .collect();
    let partition = Partition::from_sums("site-type", "site [type]", sums);
    write_partition(&partition, top, partition.kind_header, names, out)?;
    // Largest first: the leaking tasks, not the first task ids.
    let mut per_task: Vec<_> = leaks.per_task.iter().collect();
    per_task.sort_by(|a, b| {
        b.leaked
            .bytes
            .cmp(&a.leaked.bytes)
            .then(a.task.cmp(&b.task))
    });
    let tasks: Vec<String> = per_task
        .iter()
        .take(TEXT_GROWTH_ROWS)
        .map(|t| match t.task {
            Some(id) => format!("task {id}: {}", human_bytes(t.leaked.bytes)),
            None => format!("no task: {}", human_bytes(t.leaked.bytes)),
        })
        .collect();
    let more = leaks.per_task.len().saturating_sub(TEXT_GROWTH_ROWS);
    write!(out, "Per task: {}", tasks.join(", "))?;
    if more > 0 {
        write!(out, " <{more} more tasks>")?;
    }
    writeln!(out)?;
    write_kept_by_runtime(leaks, top, names, out)
}

/// Memory of ended tasks that a runtime or library keeps from its own
/// statics, thread-locals or frames: shown apart, not counted as the
/// tasks' leaks.
fn write_kept_by_runtime(
    leaks: &TaskScopedLeaks,
    top: usize,
    names: &Names,
    out: &mut dyn Write,
) -> io::Result<()> {
    if leaks.runtime_rows.is_empty() {
        return Ok(());
    }
    writeln!(out)?;
    writeln!(
        out,
        "Kept by the runtime or a library: {} in {} blocks allocated while tasks ran, referred to from its own statics, thread-locals or frames (not counted above)",
        human_bytes(leaks.kept_by_runtime.bytes),
        leaks.kept_by_runtime.blocks
    )?;
    for r in leaks.runtime_rows.iter().take(top.max(1)) {
        writeln!(
            out,
            "{:>12} {:>8}  {} [{}] <- {}",
            human_bytes(r.size),
            r.count,
            names.show(&r.site),
            names.show(&r.type_name),
            names.show(&r.root)
        )?;
    }
    if leaks.runtime_rows.len() > top.max(1) {
        writeln!(out, "<{} more>", leaks.runtime_rows.len() - top.max(1))?;
    }
    Ok(())
}

fn write_growth(report: &Report, out: &mut dyn Write) -> io::Result<()> {
    if !report.per_retry.is_empty() {
        writeln!(out)?;
        writeln!(out, "Per retry:")?;
        writeln!(
            out,
            "{:>6} {:>12} {:>12} {:>18} {:>12}",
            "Retry", "Surviving", "Allocated", "Live after failure", "Growth"
        )?;
        // Largest first; the growth column still compares each retry with
        // the one numbered before it.
        let mut rows: Vec<_> = report.per_retry.iter().collect();
        rows.sort_by(|a, b| {
            b.surviving
                .bytes
                .cmp(&a.surviving.bytes)
                .then(a.retry.cmp(&b.retry))
        });
        for r in rows.iter().take(TEXT_GROWTH_ROWS) {
            writeln!(
                out,
                "{:>6} {:>12} {:>12} {:>18} {:>12}",
                r.retry,
                human_bytes(r.surviving.bytes),
                human_bytes(r.allocated.bytes),
                r.live_after_failure_bytes
                    .map_or("-".to_string(), human_bytes),
                r.growth_bytes
                    .map_or("-".to_string(), |g| signed_bytes(g as f64))
            )?;
        }
        if rows.len() > TEXT_GROWTH_ROWS {
            writeln!(out, "<{} more retries>", rows.len() - TEXT_GROWTH_ROWS)?;
        }
    }
    if !report.per_task.is_empty() {
        writeln!(out)?;
        writeln!(out, "Per task:")?;
        writeln!(
            out,
            "{:>6} {:>7} {:>12} {:>12} {:>12}  Outcome / name",
            "Task", "Retries", "Surviving", "Allocated", "Per attempt"
        )?;
        let mut tasks: Vec<_> = report.per_task.iter().collect();
        tasks.sort_by(|a, b| {
            b.surviving
                .bytes
                .cmp(&a.surviving.bytes)
                .then(a.task.cmp(&b.task))
        });
        for t in tasks.iter().take(TEXT_GROWTH_ROWS) {
            let label = [t.outcome.as_deref(), t.name.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" / ");
            writeln!(
                out,
                "{:>6} {:>7} {:>12} {:>12} {:>12}  {}",
                t.task,
                t.retries,
                human_bytes(t.surviving.bytes),
                human_bytes(t.allocated.bytes),
                human_bytes(t.surviving_per_attempt_bytes),
                label
            )?;
        }
        if report.per_task.len() > TEXT_GROWTH_ROWS {
            writeln!(
                out,
                "<{} more tasks>",
                report.per_task.len() - TEXT_GROWTH_ROWS
            )?;
        }
    }
    Ok(())
}

/// The JSON report (docs/REPORT.md).
pub fn json_value(model: &Model<'_>, report: &Report, options: &Options) -> serde_json::Value {
    let p = model.profile;
    let s = &report.summary;
    let rows = &report.partition.rows;
    let shown = options.top.unwrap_or(rows.len()).min(rows.len());
    json!({
        "schema": JSON_SCHEMA,
        "program": p.meta.program,
        "attributes": p.meta.attributes,
        "by": report.partition.by,
        "total_surviving_bytes": p.totals.live.bytes,
        "total_surviving_blocks": p.totals.live.blocks,
        "partition_bytes": report.partition.total.bytes,
        "partition_blocks": report.partition.total.blocks,
        "rows": &rows[..shown],
        "more_rows": rows.len() - shown,
        "retries": s.retries,
        "failures": s.failures,
        "leak_per_retry_bytes": s.leak_per_retry_bytes,
        "leak_per_retry_r2": s.leak_per_retry_r2,
        "behaviour": s.behaviour,
        "dropped_events": s.dropped_events,
        "dropped": p.dropped,
        "rss_bytes": p.totals.rss_bytes,
        "live_bytes": p.totals.live.bytes,
        "rss_gap_bytes": signed_change(p.totals.live.bytes, p.totals.rss_bytes),
        "rss_gap": RssGap::of(p),
        "summary": s,
        "task_scoped_leaks": report.task_scoped,
        "per_retry": report.per_retry,
        "per_task": report.per_task,
    })
}

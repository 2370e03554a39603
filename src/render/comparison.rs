//! `leakprof diff` output: the seed COMPARISON table (as Markdown, so it
//! pastes into an issue like the seed's), then per-owner and per-site
//! deltas; or the same as JSON.

use std::io::{self, Write};

use crate::analysis::check::human_bytes;
use crate::analysis::diff::{Comparison, Delta, Metric};

const MIB: f64 = 1024.0 * 1024.0;

fn figure(m: &Metric, v: Option<f64>) -> String {
    let Some(v) = v else { return "n/a".to_string() };
    match m.unit {
        "bytes" => format!("{:.2} MiB", v / MIB),
        "bytes/retry" => format!("{:.2} MiB", v / MIB),
        "seconds" => format!("{v:.2} seconds"),
        _ => format!("{v:.0}"),
    }
}

fn signed(v: i64) -> String {
    if v < 0 {
        format!("-{}", human_bytes(v.unsigned_abs()))
    } else {
        format!("+{}", human_bytes(v as u64))
    }
}

/// Writes the comparison as text; `top` limits each delta table.
pub fn write_text(c: &Comparison, top: usize, out: &mut dyn Write) -> io::Result<()> {
    writeln!(
        out,
        "| Metric | {} | {} | Improvement |",
        c.a_label, c.b_label
    )?;
    writeln!(
        out,
        "|--------|{}|{}|-------------|",
        "-".repeat(c.a_label.len() + 2),
        "-".repeat(c.b_label.len() + 2)
    )?;
    for m in &c.metrics {
        writeln!(
            out,
            "| {} | {} | {} | {} |",
            m.name,
            figure(m, m.a),
            figure(m, m.b),
            m.improvement
        )?;
    }
    let (ba, bb) = c.behaviours();
    writeln!(
        out,
        "| Behavior | {} | {} | |",
        ba.describe(),
        bb.describe()
    )?;
    write_deltas("Per owner", &c.owners, top, out)?;
    write_deltas("Per site", &c.sites, top, out)
}

fn write_deltas(title: &str, rows: &[Delta], top: usize, out: &mut dyn Write) -> io::Result<()> {
    writeln!(out)?;
    writeln!(out, "{title} (surviving memory, B minus A):")?;
    if rows.is_empty() {
        return writeln!(out, "no change");
    }
    writeln!(
        out,
        "{:>12} {:>12} {:>12} {:>9}  Kind",
        "A", "B", "Change", "Blocks"
    )?;
    for d in rows.iter().take(top) {
        writeln!(
            out,
            "{:>12} {:>12} {:>12} {:>+9}  {}",
            human_bytes(d.a.bytes),
            human_bytes(d.b.bytes),
            signed(d.delta_bytes),
            d.delta_blocks,
            d.kind
        )?;
    }
    if rows.len() > top {
        writeln!(
            out,
            "<{} more rows. Use --top {} to view them.>",
            rows.len() - top,
            rows.len()
        )?;
    }
    Ok(())
}

/// Writes the comparison as JSON (every row; `top` limits delta tables).
pub fn write_json(c: &Comparison, top: Option<usize>, out: &mut dyn Write) -> io::Result<()> {
    let mut c = c.clone();
    if let Some(top) = top {
        c.owners.truncate(top);
        c.sites.truncate(top);
    }
    let mut value = serde_json::to_value(&c).map_err(io::Error::other)?;
    value["schema"] = serde_json::Value::from("leakprof-diff/1");
    serde_json::to_writer_pretty(&mut *out, &value)?;
    out.write_all(b"\n")
}

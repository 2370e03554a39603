//! DHAT JSON, as dhat-rs writes it (`dhatFileVersion` 2, mode
//! `rust-heap`), so the DHAT viewer (`dh_view.html`) opens leakprof
//! profiles.
//!
//! The keys, their order and the frame strings follow dhat-rs 0.3 exactly
//! (its `DhatJson` and `PpInfoJson`); a test compares our output with what
//! dhat-rs itself writes for the same workload. One program point (`pps`
//! entry) per distinct frame list: stacks that differ only in trimmed
//! allocator frames are summed, never listed twice.
//!
//! What leakprof does not record is not invented: block lifetimes are not
//! tracked, so `tl` is 0; `mb`/`mbk` (the largest amount a stack ever had
//! live) are not tracked per stack, so they hold the larger of the amount
//! at the global peak and at snapshot, a lower bound.

use std::collections::HashMap;
use std::io::{self, Write};

use serde::Serialize;

use super::{Options, Render};
use crate::analysis::{Accumulate, Model};
use crate::format::{Amount, Frame, Profile};

/// Mirrors dhat-rs's `DhatJson` (heap mode), field for field.
#[allow(non_snake_case)]
#[derive(Serialize)]
struct DhatJson {
    dhatFileVersion: u32,
    mode: &'static str,
    verb: &'static str,
    bklt: bool,
    bkacc: bool,
    tu: &'static str,
    Mtu: &'static str,
    tuth: usize,
    cmd: String,
    pid: u32,
    tg: u128,
    te: u128,
    pps: Vec<PpInfoJson>,
    ftbl: Vec<String>,
}

/// Mirrors dhat-rs's `PpInfoJson` (heap mode).
#[derive(Serialize)]
struct PpInfoJson {
    tb: u64,
    tbk: u64,
    tl: u128,
    mb: u64,
    mbk: u64,
    gb: u64,
    gbk: u64,
    eb: u64,
    ebk: u64,
    fs: Vec<usize>,
}

#[derive(Default, Clone, Copy)]
struct Point {
    total: Amount,
    at_peak: Amount,
    live: Amount,
}

pub struct Dhat;

impl Render for Dhat {
    fn render(&self, model: &Model<'_>, _options: &Options, out: &mut dyn Write) -> io::Result<()> {
        let json = build(model);
        // dhat-rs's own layout: pretty-printed with empty indentation.
        let formatter = serde_json::ser::PrettyFormatter::with_indent(b"");
        let mut ser = serde_json::Serializer::with_formatter(&mut *out, formatter);
        json.serialize(&mut ser).map_err(io::Error::other)?;
        out.write_all(b"\n")
    }
}

/// dhat-rs's frame string: `0x{ip}: {name} ({file}:{line}:{col})`.
fn frame_string(f: &Frame, function: &str) -> String {
    format!(
        "{:#x}: {} ({}:{}:0)",
        f.address,
        function,
        f.file.as_deref().unwrap_or("???"),
        f.line.unwrap_or(0)
    )
}

fn build(model: &Model<'_>) -> DhatJson {
    let p: &Profile = model.profile;
    let mut ftbl: Vec<String> = vec!["[root]".to_string()];
    // Frame index -> ftbl index, through the frame's string: two frames
    // that print the same share one ftbl entry, as in dhat-rs.
    let mut ftbl_ids: HashMap<u32, usize> = HashMap::new();
    let mut ftbl_by_text: HashMap<String, usize> = HashMap::new();
    ftbl_by_text.insert("[root]".to_string(), 0);
    let mut points: HashMap<Vec<usize>, Point> = HashMap::new();
    let mut order: Vec<Vec<usize>> = Vec::new();
    // Surviving memory per stack, from the live groups (all tags).
    let mut live = vec![Amount::default(); p.stacks.len()];
    for g in &p.live {
        live[g.stack as usize].accumulate(Amount {
            bytes: g.bytes,
            blocks: g.blocks,
        });
    }
    let mut with_stats = vec![false; p.stacks.len()];
    let stats = p
        .stack_stats
        .iter()
        .map(|s| (s.stack, s.allocated, s.at_peak));
    // A stack with live blocks but no stats entry still has its live part.
    let live_only = (0..p.stacks.len() as u32)
        .filter(|&s| live[s as usize].blocks > 0 || live[s as usize].bytes > 0);
    let mut entries: Vec<(u32, Amount, Amount)> = Vec::new();
    for (stack, allocated, at_peak) in stats {
        with_stats[stack as usize] = true;
        entries.push((stack, allocated, at_peak));
    }
    for s in live_only {
        if !with_stats[s as usize] {
            entries.push((s, live[s as usize], Amount::default()));
        }
    }
    for (stack, allocated, at_peak) in entries {
        let fs: Vec<usize> = model
            .shown_frames(stack)
            .iter()
            .map(|&f| {
                *ftbl_ids.entry(f).or_insert_with(|| {
                    let text = frame_string(&p.frames[f as usize], model.function(f));
                    *ftbl_by_text.entry(text).or_insert_with_key(|text| {
                        ftbl.push(text.clone());
                        ftbl.len() - 1
                    })
                })
            })
            .collect();
        let point = points.entry(fs.clone()).or_insert_with(|| {
            order.push(fs);
            Point::default()
        });
        point.total.accumulate(allocated);
        point.at_peak.accumulate(at_peak);
        point.live.accumulate(live[stack as usize]);
        // Claimed once, so a stack listed twice in stack_stats is not
        // counted twice at snapshot.
        live[stack as usize] = Amount::default();
    }
    let pps = order
        .into_iter()
        .map(|fs| {
            let pt = points[&fs];
            let max = if pt.at_peak.bytes >= pt.live.bytes {
                pt.at_peak
            } else {
                pt.live
            };
            PpInfoJson {
                tb: pt.total.bytes.max(pt.live.bytes),
                tbk: pt.total.blocks.max(pt.live.blocks),
                tl: 0,
                mb: max.bytes,
                mbk: max.blocks,
                gb: pt.at_peak.bytes,
                gbk: pt.at_peak.blocks,
                eb: pt.live.bytes,
                ebk: pt.live.blocks,
                fs,
            }
        })
        .collect();
    let mut cmd = p.meta.program.clone();
    for a in &p.meta.args {
        cmd.push(' ');
        cmd.push_str(a);
    }
    DhatJson {
        dhatFileVersion: 2,
        mode: "rust-heap",
        verb: "Allocated",
        bklt: true,
        bkacc: false,
        tu: "µs",
        Mtu: "s",
        tuth: 10,
        cmd,
        pid: p.meta.pid,
        tg: (p.totals.peak_ns / 1000) as u128,
        te: (p.meta.snapshot_ns / 1000) as u128,
        pps,
        ftbl,
    }
}

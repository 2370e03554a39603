//! Only what is new since a baseline (guppy's `setrelheap`).
//!
//! Groups of the two profiles are matched by symbolized stack and tag
//! (task, retry, label, type), never by index: the two files may come from
//! different snapshots or processes, whose tables are numbered differently.
//! Matched memory is subtracted; what remains is a profile of its own, so
//! every renderer works on it unchanged.

use std::collections::HashMap;

use super::Accumulate;
use crate::format::{Amount, Frame, Profile, TagInfo};

use super::model::clean_function;

/// A frame as it reads, without its address (which differs per process).
pub(crate) fn frame_symbol(f: &Frame) -> (String, Option<String>, Option<u32>, bool) {
    (
        clean_function(&f.function).to_string(),
        f.file.clone(),
        f.line,
        f.inlined,
    )
}

/// One string per stack naming its frames, for matching across profiles.
pub(crate) fn stack_symbols(p: &Profile) -> Vec<String> {
    let frame_names: Vec<String> = p
        .frames
        .iter()
        .map(|f| {
            let (func, file, line, inlined) = frame_symbol(f);
            format!(
                "{func}@{}:{}{}",
                file.unwrap_or_default(),
                line.unwrap_or(0),
                if inlined { "i" } else { "" }
            )
        })
        .collect();
    p.stacks
        .iter()
        .map(|s| {
            let mut key = String::new();
            for &f in &s.frames {
                key.push_str(&frame_names[f as usize]);
                key.push('\n');
            }
            key
        })
        .collect()
}

/// What identifies a tag across profiles.
pub(crate) type TagKey = (Option<u64>, Option<u32>, Option<String>, Option<String>);

pub(crate) fn tag_key(t: &TagInfo) -> TagKey {
    (t.task, t.retry, t.label.clone(), t.type_name.clone())
}

/// The part of `current` that is not in `baseline`: live memory per
/// (stack, tag) minus the baseline's (never below zero), allocations since
/// the baseline, and the timeline after the baseline's snapshot when both
/// come from the same process. Totals are recomputed from what remains.
pub fn relative_to(current: &Profile, baseline: &Profile) -> Profile {
    let base_stacks = stack_symbols(baseline);
    let cur_stacks = stack_symbols(current);
    let mut remaining: HashMap<(&str, TagKey), Amount> = HashMap::new();
    for g in &baseline.live {
        let key = (
            base_stacks[g.stack as usize].as_str(),
            tag_key(&baseline.tags[g.tag as usize]),
        );
        remaining.entry(key).or_default().accumulate(Amount {
            bytes: g.bytes,
            blocks: g.blocks,
        });
    }
    let mut out = current.clone();
    out.live.clear();
    for g in &current.live {
        let key = (
            cur_stacks[g.stack as usize].as_str(),
            tag_key(&current.tags[g.tag as usize]),
        );
        let mut g = g.clone();
        if let Some(base) = remaining.get_mut(&key) {
            let bytes = base.bytes.min(g.bytes);
            let blocks = base.blocks.min(g.blocks);
            base.bytes -= bytes;
            base.blocks -= blocks;
            g.bytes -= bytes;
            g.blocks -= blocks;
        }
        if g.bytes > 0 || g.blocks > 0 {
            out.live.push(g);
        }
    }
    // Allocations since the baseline, per stack.
    let mut base_allocated: HashMap<&str, Amount> = HashMap::new();
    for s in &baseline.stack_stats {
        base_allocated
            .entry(base_stacks[s.stack as usize].as_str())
            .or_default()
            .accumulate(s.allocated);
    }
    for s in &mut out.stack_stats {
        if let Some(b) = base_allocated.get(cur_stacks[s.stack as usize].as_str()) {
            s.allocated.bytes = s.allocated.bytes.saturating_sub(b.bytes);
            s.allocated.blocks = s.allocated.blocks.saturating_sub(b.blocks);
        }
    }
    recompute_live(&mut out);
    out.totals.allocated.bytes = current
        .totals
        .allocated
        .bytes
        .saturating_sub(baseline.totals.allocated.bytes);
    out.totals.allocated.blocks = current
        .totals
        .allocated
        .blocks
        .saturating_sub(baseline.totals.allocated.blocks);
    let same_process = current.meta.pid == baseline.meta.pid
        && current.meta.start_unix_ms == baseline.meta.start_unix_ms;
    if same_process {
        out.timeline.retain(|p| p.t_ns > baseline.meta.snapshot_ns);
    }
    out.meta.attributes.insert(
        "relative_to".to_string(),
        format!("{} (pid {})", baseline.meta.program, baseline.meta.pid),
    );
    out
}

/// Recomputes live totals, per-tag live and per-stack live from `live`.
pub(crate) fn recompute_live(p: &mut Profile) {
    let mut total = Amount::default();
    for t in &mut p.tags {
        t.live = Amount::default();
    }
    let mut per_stack = vec![Amount::default(); p.stacks.len()];
    for g in &p.live {
        let a = Amount {
            bytes: g.bytes,
            blocks: g.blocks,
        };
        total.accumulate(a);
        p.tags[g.tag as usize].live.accumulate(a);
        per_stack[g.stack as usize].accumulate(a);
    }
    for s in &mut p.stack_stats {
        s.live = per_stack[s.stack as usize];
    }
    p.totals.live = total;
}

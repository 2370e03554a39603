//! The one-screen summary of a run: the seed COMPARISON table's figures
//! (min, max and mean RSS, growth, duration), the leak slope, and whether
//! memory accumulates or stays stable. The lab writes it as `summary.json`
//! next to each profile, so its keys are flat and stable.

use serde::{Deserialize, Serialize};

use super::slope::{fit_line, LeakSlope, SlopeSource};
use crate::format::{events, Profile};

/// Below this many bytes per retry a slope is noise from allocator
/// bookkeeping and small per-retry state, not a leak worth the name.
pub const ACCUMULATION_MIN_BYTES_PER_RETRY: f64 = 4096.0;

/// A slope fitted to the timeline's marks this well (r²) is a steady
/// per-retry accumulation; a worse fit is oscillation that happens to
/// trend. (A slope from the tags needs no such test: see `behaviour`.)
pub const ACCUMULATION_MIN_R2: f64 = 0.8;

/// Without retries, live memory that ends this much higher than it started
/// (as a share of the whole swing) along a trend fitted this well counts
/// as accumulation too.
pub const ACCUMULATION_MIN_END_SHARE: f64 = 0.5;

/// How memory behaved over the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Behaviour {
    /// Memory grows with every retry (or steadily over time) and is not
    /// given back: a leak.
    ContinuousAccumulation,
    /// Memory rises and falls back: a bounded working set.
    Stable,
    /// The profile has no timeline to judge from.
    Unknown,
}

impl Behaviour {
    /// The words of the seed's COMPARISON table.
    pub fn describe(self) -> &'static str {
        match self {
            Behaviour::ContinuousAccumulation => "continuous accumulation",
            Behaviour::Stable => "stable",
            Behaviour::Unknown => "unknown (no timeline)",
        }
    }
}

/// Flat figures of one run. Byte figures are bytes; RSS figures come from
/// the timeline (or the snapshot's RSS when there is no timeline).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub min_rss_bytes: u64,
    pub max_rss_bytes: u64,
    pub mean_rss_bytes: u64,
    /// `max_rss_bytes - min_rss_bytes`: the seed's "Memory Growth".
    pub growth_bytes: u64,
    /// RSS at the last timeline point minus RSS at the first.
    pub end_growth_bytes: i64,
    /// Recorded memory still alive at snapshot, every tag included.
    pub surviving_bytes: u64,
    pub surviving_blocks: u64,
    pub max_live_bytes: u64,
    pub peak_bytes: u64,
    pub allocated_bytes: u64,
    /// RSS at snapshot.
    pub rss_bytes: u64,
    pub duration_s: f64,
    /// Retries over all tasks (sum of each task's highest retry number).
    pub retries: u64,
    /// Number of `after failure` points on the timeline.
    pub failures: u64,
    pub tasks: u64,
    pub leak_per_retry_bytes: Option<f64>,
    pub leak_per_retry_r2: Option<f64>,
    pub behaviour: Behaviour,
    /// Allocations the recorder could not track plus lost timeline samples.
    pub dropped_events: u64,
    pub timeline_points: u64,
    /// `meta.attributes` scenario and middleware, when present.
    pub scenario: Option<String>,
    pub variant: Option<String>,
}

impl Summary {
    /// Computes the summary of a profile (all figures, warm-up included).
    pub fn of(profile: &Profile) -> Summary {
        let tl = &profile.timeline;
        let rss: Vec<u64> = tl.iter().map(|p| p.rss_bytes).collect();
        let (min_rss, max_rss, mean_rss) = if rss.is_empty() {
            let r = profile.totals.rss_bytes;
            (r, r, r)
        } else {
            let sum: u128 = rss.iter().map(|&r| r as u128).sum();
            (
                *rss.iter().min().unwrap_or(&0),
                *rss.iter().max().unwrap_or(&0),
                (sum / rss.len() as u128) as u64,
            )
        };
        let end_growth = match (tl.first(), tl.last()) {
            (Some(a), Some(b)) => super::signed_change(a.rss_bytes, b.rss_bytes),
            _ => 0,
        };
        let last_t = tl
            .last()
            .map_or(0, |p| p.t_ns)
            .max(profile.meta.snapshot_ns);
        let first_t = tl.first().map_or(0, |p| p.t_ns).min(last_t);
        let slope = LeakSlope::of(profile, 0);
        let failures = tl
            .iter()
            .filter(|p| p.event.as_deref() == Some(events::AFTER_FAILURE))
            .count() as u64;
        let tasks = super::leaks::per_task(profile);
        let folded = profile.folded.as_ref();
        let folded_retries = folded.map_or(0, |f| f.retries);
        let retries: u64 = folded_retries
            + if tasks.is_empty() {
                profile
                    .tags
                    .iter()
                    .filter_map(|t| t.retry)
                    .max()
                    .unwrap_or(0) as u64
            } else {
                tasks
                    .iter()
                    .map(|t| t.retries as u64)
                    .fold(0, u64::saturating_add)
            };
        let attr = |k: &str| profile.meta.attributes.get(k).cloned();
        Summary {
            min_rss_bytes: min_rss,
            max_rss_bytes: max_rss,
            mean_rss_bytes: mean_rss,
            growth_bytes: max_rss - min_rss,
            end_growth_bytes: end_growth,
            surviving_bytes: profile.totals.live.bytes,
            surviving_blocks: profile.totals.live.blocks,
            max_live_bytes: tl
                .iter()
                .map(|p| p.live_bytes)
                .max()
                .unwrap_or(0)
                .max(profile.totals.live.bytes),
            peak_bytes: profile.totals.peak.bytes,
            allocated_bytes: profile.totals.allocated.bytes,
            rss_bytes: profile.totals.rss_bytes,
            duration_s: (last_t - first_t) as f64 / 1e9,
            retries,
            failures,
            tasks: tasks.len() as u64 + folded.map_or(0, |f| f.tasks),
            leak_per_retry_bytes: slope.map(|s| s.bytes_per_retry),
            leak_per_retry_r2: slope.map(|s| s.r2),
            behaviour: behaviour(profile, slope),
            dropped_events: dropped_events(profile),
            timeline_points: tl.len() as u64,
            scenario: attr(crate::format::attributes::SCENARIO),
            variant: attr(crate::format::attributes::MIDDLEWARE),
        }
    }
}

/// Where the memory between the live bytes and the RSS at snapshot goes:
/// leakprof's own tables (the profile's `recorder` section), what the
/// process held before recording started (`meta.rss_at_start_bytes`), and
/// the rest (allocator overhead, fragmentation, memory not allocated
/// through the global allocator). A part the profile does not record is
/// `None` and stays in the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RssGap {
    /// RSS at snapshot minus live bytes.
    pub gap_bytes: i64,
    pub recorder_bytes: Option<u64>,
    pub before_recording_bytes: Option<u64>,
    /// The gap less the known parts (negative when memory held before
    /// recording was given back since).
    pub rest_bytes: i64,
}

impl RssGap {
    pub fn of(profile: &Profile) -> RssGap {
        let gap = super::signed_change(profile.totals.live.bytes, profile.totals.rss_bytes);
        let recorder = profile.recorder.as_ref().map(|r| r.total);
        let before = profile.meta.rss_at_start_bytes;
        let known = recorder.unwrap_or(0).saturating_add(before.unwrap_or(0));
        RssGap {
            gap_bytes: gap,
            recorder_bytes: recorder,
            before_recording_bytes: before,
            rest_bytes: gap.saturating_sub(i64::try_from(known).unwrap_or(i64::MAX)),
        }
    }
}

/// Allocations passed through untracked plus timeline samples lost.
pub fn dropped_events(profile: &Profile) -> u64 {
    profile.dropped.untracked_allocs + profile.dropped.timeline_points
}

/// Decides accumulation vs stable: from the leak slope when the run had
/// failures to fit, else from the trend of live bytes over time.
///
/// A slope from the tags counts bytes that ended attempts still hold: at
/// the threshold that is accumulation whatever r² says (uneven payloads
/// scatter the fit, they do not make the memory come back), so the verdict
/// can never be "stable" while ended attempts' bytes pile up.
fn behaviour(profile: &Profile, slope: Option<LeakSlope>) -> Behaviour {
    if let Some(s) = slope {
        let fitted_well = match s.source {
            SlopeSource::Tags => true,
            SlopeSource::Marks => s.r2 >= ACCUMULATION_MIN_R2,
        };
        let accumulating = s.bytes_per_retry >= ACCUMULATION_MIN_BYTES_PER_RETRY && fitted_well;
        return if accumulating {
            Behaviour::ContinuousAccumulation
        } else {
            Behaviour::Stable
        };
    }
    let tl = &profile.timeline;
    if tl.len() < 3 {
        return Behaviour::Unknown;
    }
    let points: Vec<(f64, f64)> = tl
        .iter()
        .map(|p| (p.t_ns as f64 / 1e9, p.live_bytes as f64))
        .collect();
    let min = tl.iter().map(|p| p.live_bytes).min().unwrap_or(0);
    let max = tl.iter().map(|p| p.live_bytes).max().unwrap_or(0);
    let first = tl[0].live_bytes;
    let last = tl[tl.len() - 1].live_bytes;
    let swing = (max - min) as f64;
    let Some(trend) = fit_line(&points) else {
        return Behaviour::Unknown;
    };
    let ended_high =
        swing > 0.0 && (last as f64 - first as f64) >= ACCUMULATION_MIN_END_SHARE * swing;
    if ended_high && trend.slope > 0.0 && trend.r2 >= ACCUMULATION_MIN_R2 {
        Behaviour::ContinuousAccumulation
    } else {
        Behaviour::Stable
    }
}

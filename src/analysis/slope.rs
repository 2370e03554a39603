//! The leak slope: how many bytes stay behind per retry.
//!
//! From the tags, no marks needed: every allocation carries its task and
//! attempt, so for each task the bytes still alive from each of its ended
//! attempts are known. Each task that was retried gives a line of the bytes
//! its attempts left behind, cumulated, against the attempt number; the
//! lines are fitted together with one slope and an intercept per task (a
//! within-task fit), so tasks that run interleaved, or that began at
//! different times, do not blur each other: ten tasks each leaking 4 MiB
//! per attempt give 4 MiB per retry, r² 1, whatever their order.
//!
//! Profiles without tagged retries fall back to the timeline: after every
//! failed attempt the lab marks an `after failure` point, and the slope is
//! the least-squares fit of the process's live bytes against the retry
//! number at those points. Marks stay useful for timelines; they are not
//! needed for the figure.

use std::collections::BTreeMap;

use serde::Serialize;

use super::leaks::tag_has_ended;
use crate::format::{events, Profile};

/// Where a leak slope was measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SlopeSource {
    /// Bytes still alive from each task's ended attempts (tags).
    Tags,
    /// Live bytes at the timeline's `after failure` marks.
    Marks,
}

/// A fitted line of live bytes against the retry number.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LeakSlope {
    /// Bytes per retry (negative when memory shrinks).
    pub bytes_per_retry: f64,
    /// Coefficient of determination of the fit, 0 to 1 (within tasks for
    /// a fit from tags).
    pub r2: f64,
    /// Live bytes the line gives at retry 0 (from tags: averaged over the
    /// tasks' own intercepts).
    pub intercept_bytes: f64,
    /// Points fitted: ended attempts (tags) or `after failure` marks.
    pub points: usize,
    /// Lowest and highest retry number among them.
    pub first_retry: u32,
    pub last_retry: u32,
    /// Tasks whose attempts were fitted (0 for a fit from marks).
    pub tasks: usize,
    pub source: SlopeSource,
}

impl LeakSlope {
    /// The leak per retry of a profile, ignoring retries below `warmup`:
    /// from the tags when a retried task still has a tag listed, else from
    /// the `after failure` marks. `None` when neither has two distinct
    /// retries to fit.
    pub fn of(profile: &Profile, warmup: u32) -> Option<LeakSlope> {
        LeakSlope::from_tags(profile, warmup).or_else(|| LeakSlope::from_marks(profile, warmup))
    }

    /// What the fit went over, for one line of text: "fitted over 40
    /// ended attempts of 10 tasks, retries 0..=3" or "fitted over 90
    /// \"after failure\" points, retries 0..=89".
    pub fn fitted_over(&self) -> String {
        match self.source {
            SlopeSource::Tags => format!(
                "fitted over {} ended attempts of {} task{}, retries {}..={}",
                self.points,
                self.tasks,
                if self.tasks == 1 { "" } else { "s" },
                self.first_retry,
                self.last_retry
            ),
            SlopeSource::Marks => format!(
                "fitted over {} \"after failure\" points, retries {}..={}",
                self.points, self.first_retry, self.last_retry
            ),
        }
    }

    /// The within-task fit over ended attempts (see the module doc). An
    /// attempt has ended when a later attempt of its task exists or its tag
    /// stopped running before the snapshot; attempts with no tag listed
    /// (nothing allocated, or folded with nothing alive) left 0 bytes.
    pub fn from_tags(profile: &Profile, warmup: u32) -> Option<LeakSlope> {
        let attempts = ended_attempts(profile, warmup);
        let tasks: Vec<Vec<(f64, f64)>> = attempts
            .values()
            .filter(|a| a.len() >= 2)
            .map(|a| {
                let mut cumulated = 0u64;
                a.iter()
                    .map(|&(retry, bytes)| {
                        cumulated = cumulated.saturating_add(bytes);
                        (retry as f64, cumulated as f64)
                    })
                    .collect()
            })
            .collect();
        let fit = fit_within(&tasks)?;
        let retries = attempts.values().filter(|a| a.len() >= 2).flatten();
        Some(LeakSlope {
            bytes_per_retry: fit.slope,
            r2: fit.r2,
            intercept_bytes: fit.intercept,
            points: tasks.iter().map(Vec::len).sum(),
            first_retry: retries.clone().map(|a| a.0).min().unwrap_or(0),
            last_retry: retries.map(|a| a.0).max().unwrap_or(0),
            tasks: tasks.len(),
            source: SlopeSource::Tags,
        })
    }

    /// Fits the slope to the `after failure` points whose retry is at least
    /// `warmup`. `None` when fewer than two distinct retries remain.
    pub fn from_marks(profile: &Profile, warmup: u32) -> Option<LeakSlope> {
        let points: Vec<(f64, f64)> = profile
            .timeline
            .iter()
            .filter(|p| p.event.as_deref() == Some(events::AFTER_FAILURE))
            .filter_map(|p| {
                p.retry
                    .filter(|&r| r >= warmup)
                    .map(|r| (r as f64, p.live_bytes as f64))
            })
            .collect();
        let fit = fit_line(&points)?;
        let retries = points.iter().map(|p| p.0 as u32);
        Some(LeakSlope {
            bytes_per_retry: fit.slope,
            r2: fit.r2,
            intercept_bytes: fit.intercept,
            points: points.len(),
            first_retry: retries.clone().min().unwrap_or(0),
            last_retry: retries.max().unwrap_or(0),
            tasks: 0,
            source: SlopeSource::Marks,
        })
    }
}

/// Attempts counted past a task's highest listed tag (folded attempts left
/// nothing alive: they count as 0 bytes).
const MAX_UNLISTED_ATTEMPTS: u32 = 10_000;

/// Per task, its ended attempts from `warmup` on, ascending, with the bytes
/// each still has alive (every tag of the attempt summed).
pub fn ended_attempts(profile: &Profile, warmup: u32) -> BTreeMap<u64, Vec<(u32, u64)>> {
    // Per task: live bytes per attempt, the highest attempt known, and
    // attempts still running.
    struct Attempts {
        live: BTreeMap<u32, u64>,
        highest: u32,
        running: Vec<u32>,
    }
    let mut by_task: BTreeMap<u64, Attempts> = BTreeMap::new();
    let snapshot_ns = profile.meta.snapshot_ns;
    for tag in &profile.tags {
        let (Some(task), Some(retry)) = (tag.task, tag.retry) else {
            continue;
        };
        let e = by_task.entry(task).or_insert_with(|| Attempts {
            live: BTreeMap::new(),
            highest: 0,
            running: Vec::new(),
        });
        *e.live.entry(retry).or_default() += tag.live.bytes;
        e.highest = e.highest.max(retry);
        if !tag_has_ended(tag, snapshot_ns) {
            e.running.push(retry);
        }
    }
    for info in &profile.tasks {
        if let Some(e) = by_task.get_mut(&info.task) {
            e.highest = e.highest.max(info.retries);
        }
    }
    by_task
        .into_iter()
        .map(|(task, a)| {
            // A later attempt ends every earlier one, whatever its tag says.
            // A bogus attempt number (u32::MAX) must not make a huge list.
            let highest = a.highest.min(
                a.live
                    .keys()
                    .last()
                    .map_or(0, |&r| r.saturating_add(MAX_UNLISTED_ATTEMPTS)),
            );
            let ended = (warmup..=highest)
                .filter(|r| *r < highest || !a.running.contains(r))
                .map(|r| (r, a.live.get(&r).copied().unwrap_or(0)))
                .collect();
            (task, ended)
        })
        .collect()
}

/// One slope through several groups of points, each group with its own
/// intercept (a within-group, or fixed-effects, fit). r² is the share of
/// the within-group variance the slope explains. `None` when no group
/// spans two distinct x values.
pub fn fit_within(groups: &[Vec<(f64, f64)>]) -> Option<Line> {
    let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
    let mut centres = Vec::with_capacity(groups.len());
    for g in groups.iter().filter(|g| !g.is_empty()) {
        let n = g.len() as f64;
        let mx = g.iter().map(|p| p.0).sum::<f64>() / n;
        let my = g.iter().map(|p| p.1).sum::<f64>() / n;
        for p in g {
            sxx += (p.0 - mx).powi(2);
            sxy += (p.0 - mx) * (p.1 - my);
            syy += (p.1 - my).powi(2);
        }
        centres.push((mx, my));
    }
    if sxx == 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    let intercept =
        centres.iter().map(|(mx, my)| my - slope * mx).sum::<f64>() / centres.len() as f64;
    // Within-group residuals: syy - slope * sxy.
    let r2 = if syy == 0.0 {
        1.0
    } else {
        (slope * sxy / syy).clamp(0.0, 1.0)
    };
    Some(Line {
        slope,
        intercept,
        r2,
    })
}

/// A least-squares line.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Line {
    pub slope: f64,
    pub intercept: f64,
    pub r2: f64,
}

/// Least-squares fit of y against x. `None` when the x values do not span
/// at least two distinct values. r² is 1 when every point is on the line
/// (including a flat line through flat data).
pub fn fit_line(points: &[(f64, f64)]) -> Option<Line> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let slope = sxy / sxx;
    let intercept = mean_y - slope * mean_x;
    let ss_tot: f64 = points.iter().map(|p| (p.1 - mean_y).powi(2)).sum();
    let ss_res: f64 = points
        .iter()
        .map(|p| (p.1 - (slope * p.0 + intercept)).powi(2))
        .sum();
    // Flat data has no variance to explain: a line through it is exact.
    let r2 = if ss_tot == 0.0 {
        1.0
    } else {
        (1.0 - ss_res / ss_tot).clamp(0.0, 1.0)
    };
    Some(Line {
        slope,
        intercept,
        r2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_straight_line_is_found_exactly() {
        let pts: Vec<(f64, f64)> = (0..10)
            .map(|r| (r as f64, 1000.0 + 128.0 * r as f64))
            .collect();
        let l = fit_line(&pts).unwrap();
        assert!((l.slope - 128.0).abs() < 1e-9);
        assert!((l.intercept - 1000.0).abs() < 1e-9);
        assert!((l.r2 - 1.0).abs() < 1e-12);
    }

    #[test]
    fn flat_data_has_zero_slope_and_full_fit() {
        let pts = [(0.0, 5.0), (1.0, 5.0), (2.0, 5.0)];
        let l = fit_line(&pts).unwrap();
        assert_eq!(l.slope, 0.0);
        assert_eq!(l.r2, 1.0);
    }

    #[test]
    fn interleaved_groups_give_the_per_group_slope() {
        // Three tasks each leaving 4 units per attempt, started at very
        // different live levels: pooled, the levels would swamp the slope.
        let groups: Vec<Vec<(f64, f64)>> = [0.0, 1000.0, 50.0]
            .iter()
            .map(|&base| {
                (0..4)
                    .map(|r| (r as f64, base + 4.0 * (r + 1) as f64))
                    .collect()
            })
            .collect();
        let l = fit_within(&groups).unwrap();
        assert!((l.slope - 4.0).abs() < 1e-9);
        assert!((l.r2 - 1.0).abs() < 1e-12);
        let pooled: Vec<(f64, f64)> = groups.concat();
        assert!(fit_line(&pooled).unwrap().r2 < 0.1);
    }

    #[test]
    fn a_single_retry_gives_no_slope() {
        assert!(fit_line(&[(3.0, 1.0), (3.0, 2.0)]).is_none());
        assert!(fit_line(&[(3.0, 1.0)]).is_none());
    }
}

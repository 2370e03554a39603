//! Analysis: turns a loaded [`Profile`](crate::format::Profile) into the
//! model every renderer reads, and answers the leak questions over it.
//!
//! This module is part of the library without the `cli` feature (a user's
//! test can check a profile without the command line), so it depends on
//! nothing beyond serde and the standard library, and it never prints.
//!
//! - [`model`]: resolved names, allocation sites, types and grouping keys.
//! - [`partition`]: guppy-style partition tables (`--by owner|task|...`).
//! - [`leaks`]: task-scoped leaks, per-retry and per-task growth.
//! - [`slope`]: the leak slope (bytes per retry, with r²).
//! - [`summary`]: the flat figures of a run (`summary.json`).
//! - [`relative`]: only what is new since a baseline profile.
//! - [`diff`]: the COMPARISON table of two runs and per-owner/site deltas.
//! - [`merge`]: several processes' profiles summed into one.
//! - [`check`]: limits for CI and tests, with a one-line verdict.
//! - [`retainers`]: retainer chains from a version-2 profile's subgraph.
//! - [`graph`]: heap-graph algorithms (reachability, unreachable cycles,
//!   dominators, owners, retained sizes, retainer chains), re-exported from
//!   the lower layer [`crate::graph`] that the recorder uses too.

pub mod check;
pub mod diff;
pub mod leaks;
pub mod merge;
pub mod model;
pub mod partition;
pub mod relative;
pub mod retainers;
pub mod slope;
pub mod summary;

pub use crate::graph;
pub use check::{assert_no_leak, check, Limits, Verdict};
pub use diff::Comparison;
pub use leaks::{RetryGrowth, TaskGrowth, TaskScopedLeaks};
pub use merge::merge;
pub use model::Model;
pub use partition::{grouping, Grouping, Partition, Row, GROUPINGS};
pub use relative::relative_to;
pub use slope::{LeakSlope, SlopeSource};
pub use summary::{Behaviour, Summary};

use crate::format::{Amount, Profile};

/// Adding amounts without overflow. Figures come from a file, and a
/// corrupt one may hold any number: the reporter saturates rather than
/// panics (the format's own `Amount::add` is for the recorder, whose
/// figures are real).
pub trait Accumulate {
    fn accumulate(&mut self, other: Amount);
}

impl Accumulate for Amount {
    fn accumulate(&mut self, other: Amount) {
        self.bytes = self.bytes.saturating_add(other.bytes);
        self.blocks = self.blocks.saturating_add(other.blocks);
    }
}

/// `to - from` as a signed figure, clamped instead of overflowing.
pub fn signed_change(from: u64, to: u64) -> i64 {
    (to as i128 - from as i128).clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// Everything a partition report shows about one profile: the table, the
/// run's summary and the leak analysis. Renderers format it; they compute
/// nothing of their own.
pub struct Report {
    pub partition: Partition,
    pub summary: Summary,
    pub slope: Option<LeakSlope>,
    pub task_scoped: TaskScopedLeaks,
    pub per_retry: Vec<RetryGrowth>,
    pub per_task: Vec<TaskGrowth>,
}

impl Report {
    pub fn new(model: &Model<'_>, by: &'static Grouping) -> Report {
        let profile = model.profile;
        Report {
            partition: Partition::of(model, by),
            summary: Summary::of(profile),
            slope: LeakSlope::of(profile, 0),
            task_scoped: TaskScopedLeaks::of(model),
            per_retry: leaks::per_retry(profile),
            per_task: leaks::per_task(profile),
        }
    }

    /// Convenience for library users: model and report of a profile.
    pub fn of(profile: &Profile, by: &'static Grouping) -> Report {
        Report::new(&Model::new(profile), by)
    }
}

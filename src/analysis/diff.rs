//! Comparing two runs (or two snapshots of one run): the seed COMPARISON
//! table followed by where the difference lives, per owner and per site.

use std::collections::HashMap;

use serde::Serialize;

use super::model::Model;
use super::partition::grouping;
use super::summary::{Behaviour, Summary};
use super::{signed_change, Accumulate};
use crate::format::{Amount, Profile};

/// One line of the comparison table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Metric {
    pub name: &'static str,
    /// `bytes`, `seconds`, `count` or `bytes/retry`.
    pub unit: &'static str,
    pub a: Option<f64>,
    pub b: Option<f64>,
    /// "31x reduction", "1.5x increase", "eliminated", or "-" where the
    /// seed table prints none (minimum and duration are not goals).
    pub improvement: String,
}

/// How the memory of one owner or site changed from A to B.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Delta {
    pub kind: String,
    pub a: Amount,
    pub b: Amount,
    pub delta_bytes: i64,
    pub delta_blocks: i64,
}

/// Everything `leakprof diff` prints.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    pub a_label: String,
    pub b_label: String,
    pub a: Summary,
    pub b: Summary,
    pub metrics: Vec<Metric>,
    pub owners: Vec<Delta>,
    pub sites: Vec<Delta>,
}

/// Metrics of the table: name, unit, figure, and whether an improvement
/// ratio is meaningful (lower is better) for it.
type MetricSpec = (
    &'static str,
    &'static str,
    fn(&Summary) -> Option<f64>,
    bool,
);

const METRICS: &[MetricSpec] = &[
    (
        "Min Memory",
        "bytes",
        |s| Some(s.min_rss_bytes as f64),
        false,
    ),
    (
        "Max Memory",
        "bytes",
        |s| Some(s.max_rss_bytes as f64),
        true,
    ),
    (
        "Mean Memory",
        "bytes",
        |s| Some(s.mean_rss_bytes as f64),
        true,
    ),
    (
        "Memory Growth",
        "bytes",
        |s| Some(s.growth_bytes as f64),
        true,
    ),
    (
        "Surviving",
        "bytes",
        |s| Some(s.surviving_bytes as f64),
        true,
    ),
    (
        "Leak per Retry",
        "bytes/retry",
        |s| s.leak_per_retry_bytes,
        true,
    ),
    ("Duration", "seconds", |s| Some(s.duration_s), false),
    ("Retries", "count", |s| Some(s.retries as f64), false),
];

impl Comparison {
    pub fn of(a: &Profile, b: &Profile, a_label: &str, b_label: &str) -> Comparison {
        let sa = Summary::of(a);
        let sb = Summary::of(b);
        let metrics = METRICS
            .iter()
            .map(|&(name, unit, get, ratio)| {
                let (va, vb) = (get(&sa), get(&sb));
                Metric {
                    name,
                    unit,
                    a: va,
                    b: vb,
                    improvement: match (ratio, va, vb) {
                        (true, Some(x), Some(y)) => improvement(x, y),
                        _ => "-".to_string(),
                    },
                }
            })
            .collect();
        let (ma, mb) = (Model::new(a), Model::new(b));
        Comparison {
            a_label: a_label.to_string(),
            b_label: b_label.to_string(),
            owners: deltas(&ma, &mb, "owner"),
            sites: deltas(&ma, &mb, "site"),
            a: sa,
            b: sb,
            metrics,
        }
    }

    pub fn behaviours(&self) -> (Behaviour, Behaviour) {
        (self.a.behaviour, self.b.behaviour)
    }
}

/// Beyond this ratio a figure says "over" it: two measurements three
/// orders of magnitude apart (a leak against the noise of a fixed run's
/// fitted slope) have no meaningful ratio ("108397x reduction").
const RATIO_CAP: f64 = 1000.0;

/// The seed's wording: "31x reduction" (whole numbers from 10x up; "over
/// 1000x" past [`RATIO_CAP`]).
pub fn improvement(a: f64, b: f64) -> String {
    if a <= 0.0 && b <= 0.0 {
        return "-".to_string();
    }
    if b <= 0.0 {
        return "eliminated".to_string();
    }
    if a <= 0.0 {
        return "new".to_string();
    }
    let ratio = a / b;
    let fmt = |r: f64| {
        if r > RATIO_CAP {
            format!("over {RATIO_CAP:.0}x")
        } else if r >= 10.0 {
            format!("{r:.0}x")
        } else {
            format!("{r:.1}x")
        }
    };
    if ratio >= 1.05 {
        format!("{} reduction", fmt(ratio))
    } else if ratio <= 1.0 / 1.05 {
        format!("{} increase", fmt(1.0 / ratio))
    } else {
        "no change".to_string()
    }
}

/// Per-group change, largest absolute byte change first.
fn deltas(a: &Model<'_>, b: &Model<'_>, by: &str) -> Vec<Delta> {
    let Some(grouping) = grouping(by) else {
        return Vec::new();
    };
    let mut sums: HashMap<String, (Amount, Amount)> = HashMap::new();
    for g in &a.profile.live {
        sums.entry((grouping.key)(a, g).to_string())
            .or_default()
            .0
            .accumulate(Amount {
                bytes: g.bytes,
                blocks: g.blocks,
            });
    }
    for g in &b.profile.live {
        sums.entry((grouping.key)(b, g).to_string())
            .or_default()
            .1
            .accumulate(Amount {
                bytes: g.bytes,
                blocks: g.blocks,
            });
    }
    let mut rows: Vec<Delta> = sums
        .into_iter()
        .map(|(kind, (a, b))| Delta {
            kind,
            a,
            b,
            delta_bytes: signed_change(a.bytes, b.bytes),
            delta_blocks: signed_change(a.blocks, b.blocks),
        })
        .filter(|d| d.delta_bytes != 0 || d.delta_blocks != 0)
        .collect();
    rows.sort_by(|x, y| {
        y.delta_bytes
            .unsigned_abs()
            .cmp(&x.delta_bytes.unsigned_abs())
            .then(x.kind.cmp(&y.kind))
    });
    rows
}

#[cfg(test)]
mod tests {
    use super::improvement;

    #[test]
    fn ratios_read_like_the_seed_table() {
        assert_eq!(improvement(4902.49, 157.02), "31x reduction");
        assert_eq!(improvement(2305.73, 92.86), "25x reduction");
        assert_eq!(improvement(4864.91, 128.81), "38x reduction");
        assert_eq!(improvement(100.0, 200.0), "2.0x increase");
        assert_eq!(improvement(100.0, 0.0), "eliminated");
        assert_eq!(improvement(100.0, 99.0), "no change");
        // A fixed run's near-zero fitted slope against a real leak.
        assert_eq!(improvement(134_217_728.0, 1238.2), "over 1000x reduction");
        assert_eq!(improvement(1.0, 5000.0), "over 1000x increase");
        assert_eq!(improvement(1000.0, 1.0), "1000x reduction");
    }
}

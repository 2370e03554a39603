//! Partition tables of surviving memory, as guppy prints them: each row a
//! group of live blocks with its count, size, cumulative size and kind.

use std::collections::HashMap;

use serde::Serialize;

use super::model::Model;
use super::Accumulate;
use crate::format::{Amount, LiveGroup};

/// A way of grouping live blocks: a name for `--by`, a line for `--help`,
/// and the function that names a group's kind.
pub struct Grouping {
    pub name: &'static str,
    pub description: &'static str,
    /// Header of the Kind column, as guppy's "Kind (class / dict of class)".
    pub kind_header: &'static str,
    pub key: for<'m> fn(&'m Model<'_>, &LiveGroup) -> &'m str,
}

impl std::fmt::Debug for Grouping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Every grouping `report --by` accepts. The first is the default.
pub const GROUPINGS: &[Grouping] = &[
    Grouping {
        name: "owner",
        description:
            "who keeps the memory: heap-graph owner, else owner-scope label, else allocation site",
        kind_header: "owner",
        key: |m, g| m.owner(g),
    },
    Grouping {
        name: "task",
        description: "the task that allocated the memory",
        kind_header: "task",
        key: |m, g| m.task(g),
    },
    Grouping {
        name: "retry",
        description: "the retry (attempt number) that allocated the memory",
        kind_header: "retry",
        key: |m, g| m.retry(g),
    },
    Grouping {
        name: "site",
        description: "the allocation site in the program's own code, with file and line",
        kind_header: "site",
        key: |m, g| m.site(g),
    },
    Grouping {
        name: "function",
        description: "the function of the allocation site (lines merged)",
        kind_header: "function",
        key: |m, g| m.function_of(g),
    },
    Grouping {
        name: "type",
        description:
            "best-effort type of the block (constructor frames, owner scopes), else unknown",
        kind_header: "type",
        key: |m, g| m.type_name(g),
    },
    Grouping {
        name: "module",
        description: "executable or library holding the allocation site",
        kind_header: "module",
        key: |m, g| m.module(g),
    },
    Grouping {
        name: "via",
        description:
            "how the block is referred to by its holder (version-2 profiles), guppy's byvia",
        kind_header: "referred via",
        key: |m, g| m.via(g),
    },
];

/// Looks a grouping up by its `--by` name.
pub fn grouping(name: &str) -> Option<&'static Grouping> {
    GROUPINGS.iter().find(|g| g.name == name)
}

/// One row of a partition table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    pub index: usize,
    pub count: u64,
    pub count_pct: f64,
    pub size: u64,
    pub size_pct: f64,
    pub cumulative: u64,
    pub cumulative_pct: f64,
    pub kind: String,
}

/// Surviving memory split into groups, largest first.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Partition {
    /// The grouping's name (`owner`, `site`, ...).
    pub by: &'static str,
    pub kind_header: &'static str,
    /// All surviving memory in the partitioned set.
    pub total: Amount,
    /// Every row; a renderer shows the first `--top` of them.
    pub rows: Vec<Row>,
}

impl Partition {
    /// Partitions all surviving memory of the model's profile.
    pub fn of(model: &Model<'_>, by: &'static Grouping) -> Partition {
        Partition::of_groups(model, by, model.profile.live.iter())
    }

    /// Partitions a subset of the live groups (e.g. task-scoped leaks).
    pub fn of_groups<'g>(
        model: &Model<'_>,
        by: &'static Grouping,
        groups: impl Iterator<Item = &'g LiveGroup>,
    ) -> Partition {
        let mut sums: HashMap<&str, Amount> = HashMap::new();
        for g in groups {
            let key = (by.key)(model, g);
            sums.entry(key).or_default().accumulate(Amount {
                bytes: g.bytes,
                blocks: g.blocks,
            });
        }
        let rows = sums.into_iter().map(|(k, a)| (k.to_string(), a)).collect();
        Partition::from_sums(by.name, by.kind_header, rows)
    }

    /// Builds the table from (kind, amount) pairs: rows by size, largest
    /// first, ties by kind so the order is stable.
    pub fn from_sums(
        by: &'static str,
        kind_header: &'static str,
        mut sums: Vec<(String, Amount)>,
    ) -> Partition {
        sums.sort_by(|a, b| {
            b.1.bytes
                .cmp(&a.1.bytes)
                .then(b.1.blocks.cmp(&a.1.blocks))
                .then(a.0.cmp(&b.0))
        });
        let mut total = Amount::default();
        for (_, a) in &sums {
            total.accumulate(*a);
        }
        let mut cumulative = 0u64;
        let rows = sums
            .into_iter()
            .enumerate()
            .map(|(index, (kind, a))| {
                cumulative = cumulative.saturating_add(a.bytes);
                Row {
                    index,
                    count: a.blocks,
                    count_pct: percent(a.blocks, total.blocks),
                    size: a.bytes,
                    size_pct: percent(a.bytes, total.bytes),
                    cumulative,
                    cumulative_pct: percent(cumulative, total.bytes),
                    kind,
                }
            })
            .collect();
        Partition {
            by,
            kind_header,
            total,
            rows,
        }
    }
}

/// A share in percent, rounded to two decimals (0 of 0 is 0%).
pub fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part as f64 * 10000.0 / whole as f64).round() / 100.0
    }
}

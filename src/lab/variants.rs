//! The middleware variants `--middleware` chooses between: one table, each
//! entry with its name, the one-line description `leakprof list` prints,
//! and what it sets.

use super::executor::Handoff;
use super::middleware::HistoryPolicy;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Variant {
    pub name: &'static str,
    pub description: &'static str,
    /// How the AsyncIO event loop hands outcomes back.
    pub handoff: Handoff,
    /// What Retries does with fired retry closures.
    pub history: HistoryPolicy,
}

pub const VARIANTS: &[Variant] = &[
    Variant {
        name: "original",
        description: "Dramatiq 2.0's AsyncIO hand-off (the future keeps the error and the error's traceback keeps \
                      the future: a reference cycle) and a retry history that keeps every fired retry closure",
        handoff: Handoff::KeepInFuture,
        history: HistoryPolicy::KeepFired,
    },
    Variant {
        name: "fixed",
        description: "the seed's FixedAsyncIO (outcome taken out of its container, every reference cleared, weak \
                      back-pointers) and a retry history pruned as retries fire",
        handoff: Handoff::TakeAndClear,
        history: HistoryPolicy::PruneFired,
    },
];

pub fn find(name: &str) -> Option<&'static Variant> {
    VARIANTS.iter().find(|v| v.name == name)
}

pub fn names() -> Vec<&'static str> {
    VARIANTS.iter().map(|v| v.name).collect()
}

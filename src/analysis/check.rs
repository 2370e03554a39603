//! Leak limits for CI and for tests: like memray's pytest limits and dhat's
//! heap assertions, but for a worker's retries.
//!
//! ```no_run
//! use leakprof::analysis::check::{assert_no_leak, Limits};
//! let profile = leakprof::format::load("leakprof-out/exception-fixed/profile.json").unwrap();
//! let limits = Limits::new().max_leak_per_retry(1 << 20).max_surviving(64 << 20).warmup(2);
//! assert_no_leak(&profile, &limits); // panics with a one-line reason
//! ```

use serde::Serialize;

use super::model::Model;
use super::slope::LeakSlope;
use crate::format::Profile;

/// Limits a profile must stay within. Every limit is optional.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Limits {
    /// Bytes per retry the leak slope may reach.
    pub max_leak_per_retry: Option<u64>,
    /// Bytes that may survive at snapshot (warm-up retries not counted).
    pub max_surviving: Option<u64>,
    /// Retries below this number are ignored: the first attempts fill
    /// caches, pools and lazily initialised statics.
    pub warmup: u32,
    /// (owner name, bytes) pairs: the owner may keep at most that much.
    pub max_owned: Vec<(String, u64)>,
}

impl Limits {
    pub fn new() -> Limits {
        Limits::default()
    }
    pub fn max_leak_per_retry(mut self, bytes: u64) -> Limits {
        self.max_leak_per_retry = Some(bytes);
        self
    }
    pub fn max_surviving(mut self, bytes: u64) -> Limits {
        self.max_surviving = Some(bytes);
        self
    }
    pub fn warmup(mut self, retries: u32) -> Limits {
        self.warmup = retries;
        self
    }
    pub fn max_owned(mut self, owner: impl Into<String>, bytes: u64) -> Limits {
        self.max_owned.push((owner.into(), bytes));
        self
    }
}

/// The outcome of checking a profile against limits.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "verdict", content = "reason", rename_all = "snake_case")]
pub enum Verdict {
    /// Every limit holds.
    Pass,
    /// A limit is exceeded; the reason is one line.
    Fail(String),
    /// A limit cannot be measured on this profile (for example a leak
    /// slope without two retries to fit): neither pass nor fail.
    Inconclusive(String),
}

impl Verdict {
    pub fn is_pass(&self) -> bool {
        matches!(self, Verdict::Pass)
    }

    /// One line for a terminal or a test failure.
    pub fn reason(&self) -> String {
        match self {
            Verdict::Pass => "all limits hold".to_string(),
            Verdict::Fail(r) => r.clone(),
            Verdict::Inconclusive(r) => format!("inconclusive: {r}"),
        }
    }
}

/// Checks a profile against limits; the first violated limit decides.
pub fn check(profile: &Profile, limits: &Limits) -> Verdict {
    if let Some(max) = limits.max_leak_per_retry {
        match LeakSlope::of(profile, limits.warmup) {
            None => {
                return Verdict::Inconclusive(format!(
                    "cannot measure the leak per retry: no task has two ended attempts (from retry {}) in its tags, and fewer than two retries have an \"after failure\" point on the timeline",
                    limits.warmup
                ))
            }
            Some(s) if s.bytes_per_retry > max as f64 => {
                return Verdict::Fail(format!(
                    "leak per retry {} exceeds the limit {} ({}, r² {:.3})",
                    human_bytes(s.bytes_per_retry.round() as u64),
                    human_bytes(max),
                    s.fitted_over(),
                    s.r2
                ))
            }
            Some(_) => {}
        }
    }
    if let Some(max) = limits.max_surviving {
        let warm: u64 = profile
            .tags
            .iter()
            .filter(|t| t.retry.is_some_and(|r| r < limits.warmup))
            .map(|t| t.live.bytes)
            .fold(0, u64::saturating_add);
        let surviving = profile.totals.live.bytes.saturating_sub(warm);
        if surviving > max {
            return Verdict::Fail(format!(
                "surviving memory {} exceeds the limit {}{}",
                human_bytes(surviving),
                human_bytes(max),
                if limits.warmup > 0 {
                    format!(" (retries below {} not counted)", limits.warmup)
                } else {
                    String::new()
                }
            ));
        }
    }
    if !limits.max_owned.is_empty() {
        let model = Model::new(profile);
        for (owner, max) in &limits.max_owned {
            let owned: u64 = profile
                .live
                .iter()
                .filter(|g| model.owner(g) == owner)
                .map(|g| g.bytes)
                .fold(0, u64::saturating_add);
            if owned > *max {
                return Verdict::Fail(format!(
                    "owner \"{owner}\" keeps {} alive, over the limit {}",
                    human_bytes(owned),
                    human_bytes(*max)
                ));
            }
        }
    }
    Verdict::Pass
}

/// Panics with the verdict's one-line reason unless every limit holds.
#[track_caller]
pub fn assert_no_leak(profile: &Profile, limits: &Limits) {
    let verdict = check(profile, limits);
    if !verdict.is_pass() {
        panic!("leakprof: {}", verdict.reason());
    }
}

/// `1.5 MiB`, `128.0 MiB`, `512 B`: binary units, one decimal.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

//! Dramatiq's exponential backoff with jitter (`dramatiq.common.compute_backoff`)
//! and the Retries middleware's defaults.
//!
//! The same function paces retries of failed messages (factor = the actor's
//! `min_backoff`) and, with small factors, the broker's idle polling and
//! reconnect attempts. It never sleeps; callers do.

use std::time::Duration;

use rand::Rng;

/// Retries middleware default: give up after this many retries (21 attempts).
pub const DEFAULT_MAX_RETRIES: u32 = 20;
/// Retries middleware default `min_backoff` (the backoff factor): 15 s.
pub const DEFAULT_MIN_BACKOFF: Duration = Duration::from_millis(15_000);
/// Retries middleware default and hard cap for `max_backoff`: 7 days.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_millis(604_800_000);

/// Dramatiq caps the exponent so the backoff cannot overflow.
const MAX_EXPONENT: u32 = 32;

/// The delay before the next attempt after `retries` earlier ones.
///
/// `b = factor * 2**min(retries, 32)`; with `jitter`, `b = int(b * U(1, 2))`
/// and, if that exceeds `max_backoff`, `b = int(max_backoff * U(0.5, 1))`
/// so capped delays keep some spread; without jitter, `min(b, max_backoff)`.
/// Works in whole milliseconds like Dramatiq.
pub fn compute_backoff(
    retries: u32,
    factor: Duration,
    max_backoff: Duration,
    jitter: bool,
) -> Duration {
    compute_backoff_with(
        &mut rand::thread_rng(),
        retries,
        factor,
        max_backoff,
        jitter,
    )
}

/// [`compute_backoff`] drawing its jitter from `rng` (for reproducible tests).
pub fn compute_backoff_with<R: Rng + ?Sized>(
    rng: &mut R,
    retries: u32,
    factor: Duration,
    max_backoff: Duration,
    jitter: bool,
) -> Duration {
    let factor_ms = factor.as_millis();
    let max_ms = max_backoff.as_millis();
    let backoff_ms = factor_ms.saturating_mul(1u128 << retries.min(MAX_EXPONENT));
    let millis = if jitter {
        // Python: int(b * uniform(1, 2)), uniform(a, b) = a + (b - a) * random().
        let jittered = (backoff_ms as f64 * (1.0 + rng.gen::<f64>())) as u128;
        if jittered > max_ms {
            (max_ms as f64 * (0.5 + 0.5 * rng.gen::<f64>())) as u128
        } else {
            jittered
        }
    } else {
        backoff_ms.min(max_ms)
    };
    Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row of the delay table in the fixtures' README, measured by
    /// calling Dramatiq 2.0.0's own function 2,000 times.
    struct Row {
        retries: u32,
        min_backoff_ms: u64,
        max_backoff_ms: u64,
        observed_min_ms: u64,
        observed_max_ms: u64,
    }

    #[rustfmt::skip]
    const TABLE: [Row; 7] = [
        Row { retries: 0, min_backoff_ms: 15_000, max_backoff_ms: 604_800_000, observed_min_ms: 15_008, observed_max_ms: 29_981 },
        Row { retries: 1, min_backoff_ms: 15_000, max_backoff_ms: 604_800_000, observed_min_ms: 30_006, observed_max_ms: 59_978 },
        Row { retries: 5, min_backoff_ms: 15_000, max_backoff_ms: 604_800_000, observed_min_ms: 480_236, observed_max_ms: 959_813 },
        Row { retries: 0, min_backoff_ms: 10, max_backoff_ms: 100, observed_min_ms: 10, observed_max_ms: 19 },
        Row { retries: 3, min_backoff_ms: 10, max_backoff_ms: 100, observed_min_ms: 50, observed_max_ms: 100 },
        Row { retries: 10, min_backoff_ms: 10, max_backoff_ms: 100, observed_min_ms: 50, observed_max_ms: 99 },
        Row { retries: 20, min_backoff_ms: 100, max_backoff_ms: 100, observed_min_ms: 50, observed_max_ms: 99 },
    ];

    /// The range the formula allows for a row (inclusive).
    fn allowed_range(row: &Row) -> (u64, u64) {
        let base = row.min_backoff_ms << row.retries.min(MAX_EXPONENT);
        if 2 * base <= row.max_backoff_ms {
            // The jitter can never exceed the cap: [b, 2b).
            (base, 2 * base - 1)
        } else if base > row.max_backoff_ms {
            // Always over the cap: [max/2, max).
            (row.max_backoff_ms / 2, row.max_backoff_ms - 1)
        } else {
            // Sometimes under the cap (kept), sometimes over (re-drawn).
            (row.max_backoff_ms / 2, row.max_backoff_ms)
        }
    }

    #[test]
    fn delays_match_dramatiqs_measured_table() {
        let mut rng = rand::thread_rng();
        for row in &TABLE {
            let (low, high) = allowed_range(row);
            let draws: Vec<u64> = (0..2_000)
                .map(|_| {
                    compute_backoff_with(
                        &mut rng,
                        row.retries,
                        Duration::from_millis(row.min_backoff_ms),
                        Duration::from_millis(row.max_backoff_ms),
                        true,
                    )
                    .as_millis() as u64
                })
                .collect();
            let min = *draws.iter().min().unwrap();
            let max = *draws.iter().max().unwrap();
            let label = format!("retries={} min_backoff={}", row.retries, row.min_backoff_ms);
            assert!(
                low <= min && max <= high,
                "{label}: {min}..{max} outside {low}..{high}"
            );
            // Dramatiq's own 2,000 draws fall inside the same range...
            assert!(
                low <= row.observed_min_ms && row.observed_max_ms <= high,
                "{label}: table"
            );
            // ...and ours reach as close to its ends as Dramatiq's did, give
            // or take 1% of the range (2,000 uniform draws miss an end by
            // about 0.05% of the range on average).
            let slack = (high - low) / 100 + 1;
            assert!(
                min <= row.observed_min_ms + slack,
                "{label}: min {min} vs {}",
                row.observed_min_ms
            );
            assert!(
                max + slack >= row.observed_max_ms,
                "{label}: max {max} vs {}",
                row.observed_max_ms
            );
        }
    }

    #[test]
    fn without_jitter_the_backoff_doubles_up_to_the_cap() {
        let delays: Vec<u128> = (0..6)
            .map(|retries| {
                compute_backoff(
                    retries,
                    Duration::from_millis(10),
                    Duration::from_millis(100),
                    false,
                )
                .as_millis()
            })
            .collect();
        assert_eq!(delays, [10, 20, 40, 80, 100, 100]);
    }

    #[test]
    fn huge_retry_counts_do_not_overflow() {
        let delay = compute_backoff(u32::MAX, DEFAULT_MIN_BACKOFF, DEFAULT_MAX_BACKOFF, true);
        assert!(delay <= DEFAULT_MAX_BACKOFF && delay >= DEFAULT_MAX_BACKOFF / 2);
    }
}

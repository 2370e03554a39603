//! The leak slope: how many bytes stay behind per retry.
//!
//! After every failed attempt the lab marks an `after failure` point on the
//! timeline, once the worker has let go of the error. A worker that keeps
//! the error alive (the seed's bug) shows live bytes at those points rising
//! by the payload size per retry; a fixed one shows them flat. The slope is
//! the least-squares fit of `live_bytes` against `retry` at those points,
//! with r² saying how straight the line is.

use serde::Serialize;

use crate::format::{events, Profile};

/// A fitted line of live bytes against the retry number.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LeakSlope {
    /// Bytes per retry (negative when memory shrinks).
    pub bytes_per_retry: f64,
    /// Coefficient of determination of the fit, 0 to 1.
    pub r2: f64,
    /// Live bytes the line gives at retry 0.
    pub intercept_bytes: f64,
    /// Number of `after failure` points fitted.
    pub points: usize,
    /// Lowest and highest retry number among them.
    pub first_retry: u32,
    pub last_retry: u32,
}

impl LeakSlope {
    /// Fits the slope to the `after failure` points whose retry is at least
    /// `warmup`. `None` when fewer than two distinct retries remain.
    pub fn of(profile: &Profile, warmup: u32) -> Option<LeakSlope> {
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
        })
    }
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
    fn a_single_retry_gives_no_slope() {
        assert!(fit_line(&[(3.0, 1.0), (3.0, 2.0)]).is_none());
        assert!(fit_line(&[(3.0, 1.0)]).is_none());
    }
}

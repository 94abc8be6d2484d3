//! The study's transforms and our fits: smoothed ASR, logit10, and ordinary least squares
//! with the slope's 95% confidence interval (Student's t with n - 2 degrees of freedom).

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, StudentsT};

/// The study's smoothing of an ASR measured on `n` examples: (ASR·n + 1) / (n + 2), which
/// keeps 0 and 1 finite under logit10.
pub fn smooth(asr: f64, n: usize) -> f64 {
    (asr * n as f64 + 1.0) / (n as f64 + 2.0)
}

/// log10(p / (1 - p)).
pub fn logit10(p: f64) -> f64 {
    (p / (1.0 - p)).log10()
}

/// An OLS fit y = intercept + slope·x.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fit {
    pub slope: f64,
    pub intercept: f64,
    /// Points fitted.
    pub n: usize,
    /// Standard error of the slope (None with fewer than 3 points).
    pub slope_se: Option<f64>,
    /// 95% confidence interval of the slope (None with fewer than 3 points).
    pub slope_ci95: Option<(f64, f64)>,
    pub r2: f64,
}

impl Fit {
    pub fn at(&self, x: f64) -> f64 {
        self.intercept + self.slope * x
    }
}

/// OLS of `points` (finite ones only); None with fewer than 2 distinct x values.
pub fn ols(points: &[(f64, f64)]) -> Option<Fit> {
    let p: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let n = p.len();
    if n < 2 {
        return None;
    }
    let nf = n as f64;
    let mx = p.iter().map(|q| q.0).sum::<f64>() / nf;
    let my = p.iter().map(|q| q.1).sum::<f64>() / nf;
    let sxx: f64 = p.iter().map(|q| (q.0 - mx).powi(2)).sum();
    let sxy: f64 = p.iter().map(|q| (q.0 - mx) * (q.1 - my)).sum();
    let syy: f64 = p.iter().map(|q| (q.1 - my).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    let intercept = my - slope * mx;
    let sse: f64 = p
        .iter()
        .map(|q| (q.1 - intercept - slope * q.0).powi(2))
        .sum();
    let r2 = if syy > 0.0 { 1.0 - sse / syy } else { 1.0 };
    let (slope_se, slope_ci95) = if n >= 3 {
        let se = (sse / (nf - 2.0) / sxx).sqrt();
        let t = StudentsT::new(0.0, 1.0, nf - 2.0)
            .expect("n - 2 > 0 degrees of freedom")
            .inverse_cdf(0.975);
        (Some(se), Some((slope - t * se, slope + t * se)))
    } else {
        (None, None)
    };
    Some(Fit {
        slope,
        intercept,
        n,
        slope_se,
        slope_ci95,
        r2,
    })
}

/// The median of `v` (mean of the middle two for an even count); None when empty.
pub fn median(v: &[f64]) -> Option<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    Some(if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ols_matches_a_hand_computed_regression() {
        // x = 0..3, y = 1, 3, 4, 8: mean x 1.5, mean y 4; Sxx = 5, Sxy = 11, Syy = 26.
        // slope 11/5 = 2.2, intercept 4 - 2.2·1.5 = 0.7; SSE = 26 - 11²/5 = 1.8;
        // se = sqrt(1.8 / 2 / 5) = sqrt(0.18); t(0.975, 2 df) = 4.302652729911275.
        let f = ols(&[(0.0, 1.0), (1.0, 3.0), (2.0, 4.0), (3.0, 8.0)]).unwrap();
        assert!((f.slope - 2.2).abs() < 1e-12);
        assert!((f.intercept - 0.7).abs() < 1e-12);
        let se = 0.18f64.sqrt();
        assert!((f.slope_se.unwrap() - se).abs() < 1e-12);
        let (lo, hi) = f.slope_ci95.unwrap();
        let t = 4.302652729911275;
        assert!((lo - (2.2 - t * se)).abs() < 1e-9, "{lo}");
        assert!((hi - (2.2 + t * se)).abs() < 1e-9, "{hi}");
        assert!((f.r2 - (1.0 - 1.8 / 26.0)).abs() < 1e-12);
        assert_eq!(f.n, 4);
        // Two points: a line, no interval; one point or one x: no fit; NaN points dropped.
        let two = ols(&[(0.0, 1.0), (2.0, 5.0), (f64::NAN, 3.0)]).unwrap();
        assert_eq!((two.slope, two.intercept, two.slope_ci95), (2.0, 1.0, None));
        assert!(ols(&[(1.0, 1.0)]).is_none());
        assert!(ols(&[(1.0, 1.0), (1.0, 2.0)]).is_none());
    }

    #[test]
    fn smoothing_and_logit_by_hand() {
        // 0 of 8 -> 1/10; 8 of 8 -> 9/10; 4 of 8 -> 1/2.
        assert!((smooth(0.0, 8) - 0.1).abs() < 1e-15);
        assert!((smooth(1.0, 8) - 0.9).abs() < 1e-15);
        assert!((smooth(0.5, 8) - 0.5).abs() < 1e-15);
        assert!((logit10(0.9) - 9f64.log10()).abs() < 1e-15);
        assert_eq!(logit10(0.5), 0.0);
        assert!((logit10(0.1) + 9f64.log10()).abs() < 1e-15);
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}

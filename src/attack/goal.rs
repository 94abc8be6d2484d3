//! What an attack tries to achieve on one example, and how a candidate's loss and success
//! are read off the head outputs at the example's loss rows.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// The attacker's goal on one example.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Goal {
    /// Classifier: success is any prediction other than `label`; the loss is toward
    /// `target` (the wrong label, 1 - label, as in the study).
    Classify { label: u32, target: u32 },
    /// Causal LM: success is greedy decoding producing `ids` right after the prompt
    /// (equivalently: the arg-max at every target position is the target token).
    Target { ids: Vec<u32> },
}

impl Goal {
    /// Head rows the goal reads per sequence.
    pub fn rows_per_sequence(&self) -> usize {
        match self {
            Goal::Classify { .. } => 1,
            Goal::Target { ids } => ids.len(),
        }
    }

    /// Ids appended after the prompt (the target string; none for a classifier).
    pub fn suffix_ids(&self) -> &[u32] {
        match self {
            Goal::Classify { .. } => &[],
            Goal::Target { ids } => ids,
        }
    }

    /// Checks the goal's ids against the head width (labels, or the vocab of a causal LM).
    pub fn validate(&self, width: usize) -> Result<()> {
        let bad = match self {
            Goal::Classify { label, target } => {
                [*label, *target].into_iter().find(|&l| l as usize >= width)
            }
            Goal::Target { ids } if ids.is_empty() => {
                return Err(Error::input("the target string has no tokens"))
            }
            Goal::Target { ids } => ids.iter().copied().find(|&t| t as usize >= width),
        };
        match bad {
            Some(id) => Err(Error::input(format!(
                "goal id {id} is out of range for a head of width {width}"
            ))),
            None => Ok(()),
        }
    }

    /// Token each loss row should predict.
    fn wanted(&self, row: usize) -> u32 {
        match self {
            Goal::Classify { target, .. } => *target,
            Goal::Target { ids } => ids[row],
        }
    }
}

/// The attack loss.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum LossKind {
    /// Cross-entropy toward the target (mean over target tokens), as the study.
    CrossEntropy,
    /// nanoGCG's mellowmax of the negated target logits:
    /// (1/alpha) (logsumexp_j(-alpha z_j) - ln n).
    Mellowmax { alpha: f32 },
}

/// Loss and success of one sequence from its head outputs `logits` [rows, width].
pub fn evaluate(goal: &Goal, kind: LossKind, logits: &[f32], width: usize) -> (f32, bool) {
    let rows = logits.len() / width;
    let mut ce = 0.0f64;
    let mut neg = Vec::with_capacity(rows);
    let mut hit_all = true;
    for r in 0..rows {
        let z = &logits[r * width..(r + 1) * width];
        let t = goal.wanted(r) as usize;
        ce += lse(z) - z[t] as f64;
        neg.push(-(z[t] as f64));
        hit_all &= argmax(z) == t;
    }
    let loss = match kind {
        LossKind::CrossEntropy => ce / rows as f64,
        LossKind::Mellowmax { alpha } => mellowmax(&neg, alpha as f64),
    };
    let success = match goal {
        Goal::Classify { label, .. } => argmax(logits) != *label as usize,
        Goal::Target { .. } => hit_all,
    };
    (loss as f32, success)
}

/// d loss / d logits for one sequence (the loss of [`evaluate`]).
pub fn dlogits(goal: &Goal, kind: LossKind, logits: &[f32], width: usize) -> Vec<f32> {
    let rows = logits.len() / width;
    let mut d = vec![0.0f32; logits.len()];
    match kind {
        LossKind::CrossEntropy => {
            for r in 0..rows {
                let z = &logits[r * width..(r + 1) * width];
                let l = lse(z);
                for (o, &x) in d[r * width..(r + 1) * width].iter_mut().zip(z) {
                    *o = ((x as f64 - l).exp() / rows as f64) as f32;
                }
                d[r * width + goal.wanted(r) as usize] -= 1.0 / rows as f32;
            }
        }
        LossKind::Mellowmax { alpha } => {
            // d/dz_j = -softmax_j(-alpha z)
            let a = alpha as f64;
            let t: Vec<f64> = (0..rows)
                .map(|r| -a * logits[r * width + goal.wanted(r) as usize] as f64)
                .collect();
            let l = lse_f64(&t);
            for (r, &x) in t.iter().enumerate() {
                d[r * width + goal.wanted(r) as usize] = -((x - l).exp()) as f32;
            }
        }
    }
    d
}

fn mellowmax(t: &[f64], alpha: f64) -> f64 {
    let scaled: Vec<f64> = t.iter().map(|x| alpha * x).collect();
    (lse_f64(&scaled) - (t.len() as f64).ln()) / alpha
}

/// log-sum-exp of a row of logits, the hot loop of a causal LM's target loss (one row of
/// the whole vocabulary per target token and candidate): max, then the sum of
/// exp(z - max) with [`exp_f32`] in 8 lanes the compiler vectorises, each 256-element
/// block summed in f32 and the blocks in f64. Within 1e-6 relative of the f64 reference
/// (`lse_matches_f64_reference`). A row with a NaN or an infinity takes the plain f64
/// formula, so NaN stays NaN and -inf logits count as 0.
fn lse(z: &[f32]) -> f64 {
    const L: usize = 8;
    let mut lanes = [f32::NEG_INFINITY; L];
    // x * 0 is NaN exactly for NaN and +-inf: one vectorisable pass finds both.
    let mut probe = [0.0f32; L];
    let chunks = z.chunks_exact(L);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..L {
            lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
            probe[i] += c[i] * 0.0;
        }
    }
    let m = tail
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    let finite = probe.iter().chain(tail).all(|x| x.is_finite());
    if !finite || !m.is_finite() {
        let m = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        return m + z.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
    }
    let mut total = 0.0f64;
    for block in z.chunks(256) {
        let mut acc = [0.0f32; L];
        let chunks = block.chunks_exact(L);
        let tail = chunks.remainder();
        for c in chunks {
            for i in 0..L {
                acc[i] += exp_f32(c[i] - m);
            }
        }
        let t: f32 = tail.iter().map(|&x| exp_f32(x - m)).sum();
        total += (acc.iter().sum::<f32>() + t) as f64;
    }
    m as f64 + total.ln()
}

/// e^x in f32 without a libm call, so loops over it vectorise (on baseline x86-64 too: no
/// `round` and no branches, only min/max, adds, multiplies and integer shifts):
/// x = n ln2 + r with |r| <= ln2/2, n rounded to nearest by adding 1.5 * 2^23, e^r by its
/// degree-6 Taylor polynomial (relative error < 2e-7 there), times 2^n built in the
/// exponent bits. x is clamped to [-87.3, 88]: below, the result is e^-87.3 ~ 1.2e-38
/// instead of a smaller number, nothing next to the row's max term 1. For finite x.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts, so n * LN2_HI is exact for |n| < 2^8.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.3, 88.0);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let k = t.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    p * f32::from_bits(((k + 127) as u32) << 23)
}

fn lse_f64(z: &[f64]) -> f64 {
    let m = z.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
    m + z.iter().map(|&x| (x - m).exp()).sum::<f64>().ln()
}

/// First index of the maximum, as torch.argmax; NaN never wins.
pub fn argmax(z: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in z.iter().enumerate() {
        if x > z[best] || z[best].is_nan() && !x.is_nan() {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_loss_is_ce_toward_target_and_success_is_misprediction() {
        let g = Goal::Classify {
            label: 0,
            target: 1,
        };
        let (l, s) = evaluate(&g, LossKind::CrossEntropy, &[2.0, 0.0], 2);
        assert!((l - (1.0 + (-2.0f32).exp()).ln() - 2.0).abs() < 1e-5);
        assert!(!s);
        assert!(evaluate(&g, LossKind::CrossEntropy, &[0.0, 1.0], 2).1);
    }

    #[test]
    fn lse_matches_f64_reference() {
        let plain = |z: &[f32]| {
            let m = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            m + z.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln()
        };
        let mut rng = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 40) as f32 / (1u64 << 24) as f32
        };
        // A vocabulary row (50,304, odd tails), spreads from flat to peaked, and sizes
        // around the lane and block widths.
        for (n, spread) in [
            (50_304, 8.0),
            (50_304, 40.0),
            (1, 1.0),
            (7, 3.0),
            (257, 100.0),
        ] {
            let z: Vec<f32> = (0..n).map(|_| (next() - 0.5) * spread).collect();
            let (a, b) = (lse(&z), plain(&z));
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "n {n} spread {spread}: {a} vs {b}"
            );
        }
        for x in [-200.0f32, -87.0, -50.0, -10.5, -1.0, -1e-3, 0.0] {
            let (a, b) = (exp_f32(x) as f64, (x as f64).exp());
            assert!((a - b).abs() <= 3e-7 * b + 1.3e-38, "exp({x}): {a} vs {b}");
        }
        // +inf - +inf: NaN, as the plain formula gives.
        assert!(lse(&[f32::INFINITY, 1.0]).is_nan() && plain(&[f32::INFINITY, 1.0]).is_nan());
        let with_masked: Vec<f32> = (0..40)
            .map(|i| {
                if i % 3 == 0 {
                    f32::NEG_INFINITY
                } else {
                    i as f32 * 0.1
                }
            })
            .collect();
        assert_eq!(lse(&with_masked), plain(&with_masked));
        assert!(lse(&[1.0, f32::NAN, 2.0]).is_nan());
        // All -inf: NaN, as the plain formula gives.
        assert!(lse(&[f32::NEG_INFINITY; 3]).is_nan() && plain(&[f32::NEG_INFINITY; 3]).is_nan());
        assert_eq!(lse(&[0.0, f32::NEG_INFINITY]), 0.0);
    }

    #[test]
    fn dlogits_match_finite_differences() {
        let g = Goal::Target { ids: vec![2, 0, 1] };
        let z: Vec<f32> = (0..12).map(|i| ((i * 7 % 5) as f32 - 2.0) * 0.7).collect();
        for kind in [LossKind::CrossEntropy, LossKind::Mellowmax { alpha: 2.0 }] {
            let d = dlogits(&g, kind, &z, 4);
            for i in 0..z.len() {
                let (mut a, mut b) = (z.clone(), z.clone());
                a[i] += 1e-2;
                b[i] -= 1e-2;
                let fd = (evaluate(&g, kind, &a, 4).0 - evaluate(&g, kind, &b, 4).0) / 2e-2;
                assert!((fd - d[i]).abs() < 2e-3, "{kind:?} {i}: {fd} vs {}", d[i]);
            }
        }
    }
}

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

fn lse(z: &[f32]) -> f64 {
    let m = z.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    m + z.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln()
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

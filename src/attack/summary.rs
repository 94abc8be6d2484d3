//! The summary of a run: ASR per iteration over the examples attacked (those classified
//! correctly before the attack), FLOPs, and the compute to reach 1%, 2% and 5% ASR as
//! tasks.md defines it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// ASR levels the summary reports compute for.
pub const ASR_LEVELS: [f64; 3] = [0.01, 0.02, 0.05];

/// What the runner knows about one example at the end.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExampleTrack {
    pub attacked: bool,
    /// The goal held before the attack (misclassified clean prompt).
    pub clean_success: bool,
    pub iterations: usize,
    /// First iteration after which the example was broken.
    pub broken_at: Option<usize>,
    pub nominal: f64,
    pub executed: f64,
}

/// Names of the run's parts, for the summary.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub attack: String,
    pub task: String,
    pub model: String,
    pub threat: String,
    pub n_params: usize,
    /// 6·N·D of the model's family.
    pub pretraining_flops: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    #[serde(flatten)]
    pub info: RunInfo,
    pub examples: usize,
    pub attacked: usize,
    pub skipped: usize,
    /// Attacked examples whose goal already held before the attack (only when
    /// misclassified examples are attacked too, as adversarial training does).
    #[serde(default)]
    pub attacked_already_successful: usize,
    /// Most iterations any example ran.
    pub iterations: usize,
    /// asr[i]: fraction of attacked examples broken after i iterations (asr[0] = 0).
    pub asr: Vec<f64>,
    pub final_asr: f64,
    /// Totals over attacked examples.
    pub nominal_flops: f64,
    pub executed_flops: f64,
    /// Mean FLOPs of one iteration on one example.
    pub nominal_flops_per_iteration: f64,
    pub executed_flops_per_iteration: f64,
    /// Keys "1%", "2%", "5%": interpolated iteration at which the ASR curve crosses the
    /// level (null if it never does).
    pub iterations_to_asr: BTreeMap<String, Option<f64>>,
    /// That iteration x mean nominal FLOPs per iteration per example / pretraining compute.
    pub compute_to_asr: BTreeMap<String, Option<f64>>,
    /// Wall time of all iterations, per iteration of a group of examples, and per example.
    pub wall_s: f64,
    pub seconds_per_iteration: f64,
    pub seconds_per_example_iteration: f64,
}

/// Linear interpolation of the (fractional) iteration at which `asr` first reaches `x`.
pub fn crossing(asr: &[f64], x: f64) -> Option<f64> {
    let i = asr.iter().position(|&a| a >= x)?;
    if i == 0 {
        return Some(0.0);
    }
    let (a0, a1) = (asr[i - 1], asr[i]);
    Some((i - 1) as f64 + (x - a0) / (a1 - a0))
}

fn level_name(x: f64) -> String {
    format!("{}%", x * 100.0)
}

/// `units`: (wall seconds, examples) of every iteration unit run.
pub fn summarize(info: RunInfo, tracks: &[ExampleTrack], units: &[(f64, usize)]) -> Summary {
    let attacked: Vec<&ExampleTrack> = tracks.iter().filter(|t| t.attacked).collect();
    let n = attacked.len();
    let iterations = attacked.iter().map(|t| t.iterations).max().unwrap_or(0);
    let asr: Vec<f64> = (0..=iterations)
        .map(|i| match n {
            0 => 0.0,
            _ => {
                let broken = attacked
                    .iter()
                    .filter(|t| t.broken_at.is_some_and(|b| b <= i))
                    .count();
                broken as f64 / n as f64
            }
        })
        .collect();
    let nominal: f64 = attacked.iter().map(|t| t.nominal).sum();
    let executed: f64 = attacked.iter().map(|t| t.executed).sum();
    let example_iters: usize = attacked.iter().map(|t| t.iterations).sum();
    let per = |x: f64| match example_iters {
        0 => 0.0,
        k => x / k as f64,
    };
    let nominal_per = per(nominal);
    let mut iterations_to_asr = BTreeMap::new();
    let mut compute_to_asr = BTreeMap::new();
    for x in ASR_LEVELS {
        let it = crossing(&asr, x);
        iterations_to_asr.insert(level_name(x), it);
        compute_to_asr.insert(
            level_name(x),
            it.map(|i| i * nominal_per / info.pretraining_flops),
        );
    }
    let wall: f64 = units.iter().map(|u| u.0).sum();
    Summary {
        info,
        examples: tracks.len(),
        attacked: n,
        skipped: tracks.len() - n,
        attacked_already_successful: attacked.iter().filter(|t| t.clean_success).count(),
        iterations,
        final_asr: *asr.last().unwrap_or(&0.0),
        asr,
        nominal_flops: nominal,
        executed_flops: executed,
        nominal_flops_per_iteration: nominal_per,
        executed_flops_per_iteration: per(executed),
        iterations_to_asr,
        compute_to_asr,
        wall_s: wall,
        seconds_per_iteration: if units.is_empty() {
            0.0
        } else {
            wall / units.len() as f64
        },
        seconds_per_example_iteration: per(wall),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crossing_interpolates_linearly() {
        let asr = [0.0, 0.0, 0.04, 0.1];
        assert_eq!(crossing(&asr, 0.01), Some(1.25));
        let x = crossing(&asr, 0.05).unwrap();
        assert!((x - (2.0 + 1.0 / 6.0)).abs() < 1e-12, "{x}");
        assert_eq!(crossing(&asr, 0.5), None);
    }
}

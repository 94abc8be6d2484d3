//! The summary of a run: ASR per iteration over the examples attacked (those classified
//! correctly before the attack), FLOPs, and the compute to reach 1%, 2% and 5% ASR as
//! science.md defines it.
//!
//! Two ASR curves: `asr_current[i]`, the fraction whose *current* attack succeeds after
//! iteration i (the study's curve for GCG and BEAST), and `asr_cumulative[i]`, the fraction
//! broken at some iteration <= i (the study's for random token). `asr` is the study's curve
//! for the run's attack (`asr_kind` names it); `final_asr`, `iterations_to_asr` and
//! `compute_to_asr` are computed on it.

use super::AsrKind;
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
    /// Whether the current attack succeeded after each iteration (index i - 1).
    pub current: Vec<bool>,
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
    /// The architecture: "gpt_neox" (Pythia) or "qwen2" (Qwen2.5).
    #[serde(default)]
    pub family: String,
    /// N_gen: the causal LM's parameter count (its LM head in; see
    /// `budget::generative_params`).
    #[serde(default)]
    pub n_gen: usize,
    /// The attack's seed.
    #[serde(default)]
    pub seed: u64,
    /// 6·N_gen·D (see `budget::pretraining_flops`); null when the checkpoint's pretraining
    /// is unknown (not a preset's shape and no `--pretrain-tokens`).
    pub pretraining_flops: Option<f64>,
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
    /// Which curve `asr` is (the study's for this attack).
    pub asr_kind: AsrKind,
    /// asr[i]: the study's ASR after i iterations (asr[0] = 0): `asr_current` or
    /// `asr_cumulative`, as `asr_kind` says.
    pub asr: Vec<f64>,
    /// Fraction of attacked examples whose current attack succeeds after i iterations (an
    /// example that stopped early keeps its last state).
    pub asr_current: Vec<f64>,
    /// Fraction of attacked examples broken at some iteration <= i.
    pub asr_cumulative: Vec<f64>,
    pub final_asr: f64,
    /// Iterations in which the filter rejected every candidate (summed over examples).
    #[serde(default)]
    pub skipped_iterations: usize,
    /// Totals over attacked examples.
    pub nominal_flops: f64,
    pub executed_flops: f64,
    /// Mean FLOPs of one iteration on one example.
    pub nominal_flops_per_iteration: f64,
    pub executed_flops_per_iteration: f64,
    /// Keys "1%", "2%", "5%": interpolated iteration at which the ASR curve crosses the
    /// level (null if it never does).
    pub iterations_to_asr: BTreeMap<String, Option<f64>>,
    /// That iteration x mean nominal FLOPs per iteration per example / pretraining compute
    /// (null if never reached, or if the pretraining compute is unknown).
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

/// Attack compute per example to reach ASR `x` as a fraction of pretraining compute: the
/// iteration at which `asr` crosses `x` ([`crossing`]) times the mean nominal FLOPs of one
/// example-iteration, over 6·N_gen·D (science.md). None if never reached or pretraining is
/// unknown. The one definition: run summaries, adv-train evaluations and the report's
/// table ([`crate::report::table::compute_to_asr`]) all use it.
pub fn compute_to_asr(
    asr: &[f64],
    x: f64,
    nominal_per_example_iteration: f64,
    pretraining_flops: Option<f64>,
) -> Option<f64> {
    crossing(asr, x)
        .zip(pretraining_flops)
        .map(|(i, p)| i * nominal_per_example_iteration / p)
}

fn level_name(x: f64) -> String {
    format!("{}%", x * 100.0)
}

/// `units`: (wall seconds, examples) of every iteration unit run.
/// ASR curves of `tracks` (attacked ones only): (current, cumulative), each with
/// `iterations + 1` points from iteration 0 (ASR 0).
pub fn asr_curves(tracks: &[ExampleTrack]) -> (Vec<f64>, Vec<f64>) {
    let attacked: Vec<&ExampleTrack> = tracks.iter().filter(|t| t.attacked).collect();
    let n = attacked.len();
    let iterations = attacked.iter().map(|t| t.iterations).max().unwrap_or(0);
    let frac = |k: usize| if n == 0 { 0.0 } else { k as f64 / n as f64 };
    let mut current = vec![0.0];
    let mut cumulative = vec![0.0];
    for i in 1..=iterations {
        let now = attacked
            .iter()
            .filter(|t| match t.current.len() {
                0 => false,
                m => t.current[i.min(m) - 1],
            })
            .count();
        let broken = attacked
            .iter()
            .filter(|t| t.broken_at.is_some_and(|b| b <= i))
            .count();
        current.push(frac(now));
        cumulative.push(frac(broken));
    }
    (current, cumulative)
}

/// `units`: (wall seconds, examples) of every iteration unit run; `skipped`: iterations
/// the filter skipped.
pub fn summarize(
    info: RunInfo,
    kind: AsrKind,
    tracks: &[ExampleTrack],
    units: &[(f64, usize)],
    skipped: usize,
) -> Summary {
    let attacked: Vec<&ExampleTrack> = tracks.iter().filter(|t| t.attacked).collect();
    let n = attacked.len();
    let iterations = attacked.iter().map(|t| t.iterations).max().unwrap_or(0);
    let (asr_current, asr_cumulative) = asr_curves(tracks);
    let asr = match kind {
        AsrKind::Current => asr_current.clone(),
        AsrKind::Cumulative => asr_cumulative.clone(),
    };
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
            self::compute_to_asr(&asr, x, nominal_per, info.pretraining_flops),
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
        asr_kind: kind,
        asr,
        asr_current,
        asr_cumulative,
        skipped_iterations: skipped,
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
    fn current_and_cumulative_curves_differ_when_an_attack_falls_back() {
        let t = |current: Vec<bool>, broken_at| ExampleTrack {
            attacked: true,
            iterations: current.len(),
            broken_at,
            current,
            ..Default::default()
        };
        // Example 0 succeeds at 1 and loses it at 2; example 1 succeeds from 2 on, stops at 2.
        let tracks = [
            t(vec![true, false, false], Some(1)),
            t(vec![false, true], Some(2)),
            ExampleTrack::default(),
        ];
        let (cur, cum) = asr_curves(&tracks);
        assert_eq!(cur, vec![0.0, 0.5, 0.5, 0.5]);
        assert_eq!(cum, vec![0.0, 0.5, 1.0, 1.0]);
    }

    #[test]
    fn crossing_interpolates_linearly() {
        let asr = [0.0, 0.0, 0.04, 0.1];
        assert_eq!(crossing(&asr, 0.01), Some(1.25));
        let x = crossing(&asr, 0.05).unwrap();
        assert!((x - (2.0 + 1.0 / 6.0)).abs() < 1e-12, "{x}");
        assert_eq!(crossing(&asr, 0.5), None);
    }
}

//! Optimizers on host f32 tensors: AdamW (torch semantics) and Adafactor (transformers'
//! `Adafactor` with relative_step=False, scale_parameter=False, warmup_init=False,
//! beta1=None: the study's optimizer). State is per canonical tensor; Adafactor factors each
//! checkpoint tensor separately (a fused tensor holds several, see `ParamSpec::pieces`), so
//! its statistics match an optimizer run on the Hugging Face parameters.

use crate::backend::cpu::optim as cpu_optim;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum OptimizerKind {
    AdamW {
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
    },
    Adafactor {
        eps1: f32,
        eps2: f32,
        clip_threshold: f32,
        decay_rate: f32,
        weight_decay: f32,
    },
}

impl OptimizerKind {
    pub fn adamw() -> Self {
        OptimizerKind::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
    /// transformers' defaults (eps=(1e-30, 1e-3), clip 1.0, decay -0.8, no weight decay).
    pub fn adafactor() -> Self {
        OptimizerKind::Adafactor {
            eps1: 1e-30,
            eps2: 1e-3,
            clip_threshold: 1.0,
            decay_rate: -0.8,
            weight_decay: 0.0,
        }
    }
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "adamw" => Some(Self::adamw()),
            "adafactor" => Some(Self::adafactor()),
            _ => None,
        }
    }
}

/// Optimizer state of one tensor.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TensorState {
    /// AdamW first/second moments, or Adafactor's unfactored second moment (in `v`).
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    /// Adafactor factored statistics, per checkpoint piece: row means, column means.
    pub row: Vec<Vec<f32>>,
    pub col: Vec<Vec<f32>>,
}

/// One update of `p` with gradient `g` at 1-based step `t`. `pieces` are the row counts of
/// the checkpoint tensors stacked in `p`; `cols` is 1 for vectors. The arithmetic is the
/// backend's reference (`backend::cpu::optim`, which the CUDA kernels are checked against);
/// this only keeps the state and splits fused tensors into their checkpoint pieces.
#[allow(clippy::too_many_arguments)]
pub fn step(
    kind: OptimizerKind,
    st: &mut TensorState,
    p: &mut [f32],
    g: &[f32],
    lr: f32,
    t: u64,
    pieces: &[usize],
    cols: usize,
) {
    let t = t as u32;
    match kind {
        OptimizerKind::AdamW {
            beta1,
            beta2,
            eps,
            weight_decay,
        } => {
            if st.m.is_empty() {
                st.m = vec![0.0; p.len()];
                st.v = vec![0.0; p.len()];
            }
            let hp = cpu_optim::AdamW {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
            };
            cpu_optim::adamw_step(p, g, &mut st.m, &mut st.v, &hp, t);
        }
        OptimizerKind::Adafactor {
            eps1,
            eps2: _,
            clip_threshold,
            decay_rate,
            weight_decay,
        } => {
            // eps2 only scales the relative step size, which this configuration disables.
            let hp = cpu_optim::Adafactor {
                lr,
                eps1,
                clip_threshold,
                decay_rate,
                weight_decay,
            };
            let factored = cols > 1;
            if factored && st.row.is_empty() {
                st.row = pieces.iter().map(|&r| vec![0.0; r]).collect();
                st.col = pieces.iter().map(|_| vec![0.0; cols]).collect();
            }
            if !factored && st.v.is_empty() {
                st.v = vec![0.0; p.len()];
            }
            // Each checkpoint tensor has its own statistics and its own RMS clip.
            let mut r0 = 0;
            for (pi, &rows) in pieces.iter().enumerate() {
                let span = r0 * cols..(r0 + rows) * cols;
                let state = if factored {
                    cpu_optim::AdafactorState::Factored {
                        row: &mut st.row[pi],
                        col: &mut st.col[pi],
                    }
                } else {
                    cpu_optim::AdafactorState::Vector {
                        v: &mut st.v[span.clone()],
                    }
                };
                let (r, c) = if factored { (rows, cols) } else { (1, rows) };
                cpu_optim::adafactor_step(&mut p[span.clone()], &g[span], r, c, state, &hp, t);
                r0 += rows;
            }
        }
    }
}

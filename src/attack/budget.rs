//! FLOP accounting of attack iterations and the budgets that stop an attack.
//!
//! Nominal FLOPs follow the study (flops.rs): N = Model::param_count, 2N per token forward,
//! 4N backward, every token of every sequence counted at full length. Executed FLOPs count
//! what our fast paths actually ran (cached prefixes, the last-layer shortcut).

use crate::flops;
use crate::model::config::{HeadKind, ModelConfig};
use crate::presets;
use serde::{Deserialize, Serialize};

/// Nominal FLOPs of one GCG iteration on a `tokens`-token example: forward + backward on
/// the prompt, plus a full-length forward of each of the `scored` candidates.
pub fn gcg_nominal(n_params: usize, tokens: usize, scored: usize) -> f64 {
    flops::nominal_forward(n_params, tokens)
        + flops::nominal_backward(n_params, tokens)
        + flops::nominal_forward(n_params, scored * tokens)
}

/// Nominal FLOPs of one random-token iteration: one forward of the attacked prompt.
pub fn random_token_nominal(n_params: usize, tokens: usize) -> f64 {
    flops::nominal_forward(n_params, tokens)
}

/// What the top of a lean forward computes (see model/scoring.rs).
#[derive(Clone, Copy, Debug)]
pub enum Top {
    /// Every layer's qkv only (extending a cache).
    QkvOnly,
    /// Head outputs at `rows` rows; `shortcut`: last layer past attention on those rows only.
    Rows { rows: usize, shortcut: bool },
}

/// Executed FLOPs of a lean forward of `batch` x `seq` tokens after `prefix` cached ones.
pub fn executed_lean(cfg: &ModelConfig, batch: usize, seq: usize, prefix: usize, top: Top) -> f64 {
    let (h, l) = (cfg.hidden as f64, cfg.layers as f64);
    let tokens = (batch * seq) as f64;
    let qkv = 2.0 * h * cfg.qkv_dim() as f64;
    let rest =
        2.0 * (cfg.attn_dim() as f64 * h + h * cfg.up_rows() as f64 + cfg.intermediate as f64 * h);
    let att_layer = flops::attention(cfg, batch, seq, prefix) / l;
    let below = (l - 1.0) * (tokens * (qkv + rest) + att_layer);
    let last = match top {
        Top::QkvOnly => tokens * qkv,
        Top::Rows { rows, shortcut } => {
            let width = cfg.num_labels().unwrap_or(cfg.vocab) as f64;
            let past_attention = if shortcut { rows as f64 } else { tokens };
            tokens * qkv + att_layer + past_attention * rest + 2.0 * h * width * rows as f64
        }
    };
    below + last
}

/// Executed FLOPs of a gradient pass (forward + input-gradient backward + one-hot product)
/// over `batch` x `seq` tokens reading `head_rows` rows.
pub fn executed_grad(
    cfg: &ModelConfig,
    batch: usize,
    seq: usize,
    head_rows: usize,
    onehot_rows: usize,
) -> f64 {
    flops::executed_forward(cfg, batch, seq, 0, head_rows)
        + flops::executed_backward(cfg, batch, seq, head_rows, false, onehot_rows)
}

/// N_gen: the parameters of the causal LM the checkpoint's body was pretrained as: the
/// study's N without a classifier's score head, plus the LM head when it is not tied to the
/// input embeddings (pythia-14m: 14.07M).
pub fn generative_params(cfg: &ModelConfig) -> usize {
    let n = crate::model::param_count(cfg);
    let body = match cfg.head {
        HeadKind::Classifier { num_labels } => n - num_labels * cfg.hidden,
        HeadKind::CausalLm => n,
    };
    body + if cfg.tied_embeddings {
        0
    } else {
        cfg.vocab * cfg.hidden
    }
}

/// Pretraining compute 6·N_gen·D (science.md), the denominator of "compute to reach X% ASR"
/// and of defense-compute fractions. D is `tokens` when given (`--pretrain-tokens`), else
/// that of the preset whose shape the checkpoint has (Pythia: 299,892,736,000 tokens for
/// every size; Qwen2.5: 18e12 for 0.5B, 10.5e12 above); `None` for any other checkpoint
/// (its pretraining is unknown: fractions are reported as unknown, never guessed).
pub fn pretraining_flops(cfg: &ModelConfig, tokens: Option<f64>) -> Option<f64> {
    let d = tokens.or_else(|| presets::matching(cfg).and_then(presets::pretraining_tokens))?;
    Some(flops::nominal_train(generative_params(cfg), 1) * d)
}

/// When an example stops being attacked.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// Iterations per example.
    pub iterations: usize,
    /// Nominal FLOPs per example: no iteration starts that could cross it.
    pub flops: Option<f64>,
}

impl Budget {
    /// Whether iteration `next` may run after `spent` nominal FLOPs, when it costs at most
    /// `bound`.
    pub fn allows(&self, next: usize, spent: f64, bound: f64) -> bool {
        next <= self.iterations && self.flops.is_none_or(|b| spent + bound <= b)
    }
}

//! FLOP accounting, two ways:
//! - nominal: the study's convention. N = parameters with input embeddings, without LM head;
//!   2N per token forward, 4N per token backward, 6N per token training; every token counts
//!   (padding and cached prefix included).
//! - executed: what actually ran: 2mkn per GEMM (the LM head and one-hot product included),
//!   attention's QK^T and PV over the keys each query really attends to; elementwise ops are
//!   ignored (they are not FLOP-bound).

use crate::model::config::{HeadKind, ModelConfig};

pub fn nominal_forward(n_params: usize, tokens: usize) -> f64 {
    2.0 * n_params as f64 * tokens as f64
}
pub fn nominal_backward(n_params: usize, tokens: usize) -> f64 {
    4.0 * n_params as f64 * tokens as f64
}
pub fn nominal_train(n_params: usize, tokens: usize) -> f64 {
    6.0 * n_params as f64 * tokens as f64
}

/// GEMM FLOPs of the layer stack per token (projections and MLP).
pub fn stack_matmul_per_token(cfg: &ModelConfig) -> f64 {
    let h = cfg.hidden as f64;
    let per_layer = h * cfg.qkv_dim() as f64
        + cfg.attn_dim() as f64 * h
        + h * cfg.up_rows() as f64
        + cfg.intermediate as f64 * h;
    2.0 * per_layer * cfg.layers as f64
}

/// Attention FLOPs (QK^T and PV) for `batch` causal sequences of `seq` real tokens after a
/// shared prefix of `prefix` keys.
pub fn attention(cfg: &ModelConfig, batch: usize, seq: usize, prefix: usize) -> f64 {
    // query t attends to prefix + t + 1 keys
    let keys: f64 = (0..seq).map(|t| (prefix + t + 1) as f64).sum();
    4.0 * cfg.head_dim as f64 * cfg.heads as f64 * cfg.layers as f64 * keys * batch as f64
}

/// Executed FLOPs of a forward over `batch` x `seq` tokens, reading the head at `head_rows`.
pub fn executed_forward(
    cfg: &ModelConfig,
    batch: usize,
    seq: usize,
    prefix: usize,
    head_rows: usize,
) -> f64 {
    let width = match cfg.head {
        HeadKind::Classifier { num_labels } => num_labels,
        HeadKind::CausalLm => cfg.vocab,
    };
    stack_matmul_per_token(cfg) * (batch * seq) as f64
        + attention(cfg, batch, seq, prefix)
        + 2.0 * (cfg.hidden * width * head_rows) as f64
}

/// Executed FLOPs of a backward: twice the forward's GEMMs when weight gradients are wanted,
/// once (input gradients only) otherwise; attention backward ~2.5x its forward; plus the
/// one-hot product [rows, hidden] x [hidden, vocab].
pub fn executed_backward(
    cfg: &ModelConfig,
    batch: usize,
    seq: usize,
    head_rows: usize,
    weight_grads: bool,
    onehot_rows: usize,
) -> f64 {
    let fwd_gemm = executed_forward(cfg, batch, seq, 0, head_rows) - attention(cfg, batch, seq, 0);
    let gemm = if weight_grads {
        2.0 * fwd_gemm
    } else {
        fwd_gemm
    };
    gemm + 2.5 * attention(cfg, batch, seq, 0) + 2.0 * (onehot_rows * cfg.hidden * cfg.vocab) as f64
}

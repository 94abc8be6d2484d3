//! The model's parameters in the engine's canonical layout, and the one table that maps them
//! to and from Hugging Face tensor names. Loading, saving and naming gradients all go through
//! `param_specs`, so the mapping is written once.
//!
//! Canonical layout differences from the checkpoints:
//! - q, k, v projections fused into one `[q | k | v]` matrix (Qwen2 stores three; GPTNeoX
//!   stores one interleaved per head as [heads, 3, head_dim], which we de-interleave);
//! - SwiGLU gate and up stacked into one matrix, gate first.

use super::config::{Arch, HeadKind, ModelConfig, NormKind};
use super::safetensors_store::SafetensorsStore;
use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct LayerWeights<T> {
    pub ln1_w: T,
    pub ln1_b: Option<T>,
    pub ln2_w: T,
    pub ln2_b: Option<T>,
    pub qkv_w: T,
    pub qkv_b: Option<T>,
    pub o_w: T,
    pub o_b: Option<T>,
    pub up_w: T,
    pub up_b: Option<T>,
    pub down_w: T,
    pub down_b: Option<T>,
}

#[derive(Clone, Debug)]
pub struct Weights<T> {
    /// Input embeddings [vocab, hidden].
    pub embed: T,
    pub layers: Vec<LayerWeights<T>>,
    pub final_w: T,
    pub final_b: Option<T>,
    /// LM head [vocab, hidden] (None when tied to `embed`) or classifier `score` [labels, hidden].
    pub head: Option<T>,
}

/// Which field of `Weights` a spec fills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    Embed,
    Ln1W(usize),
    Ln1B(usize),
    Ln2W(usize),
    Ln2B(usize),
    QkvW(usize),
    QkvB(usize),
    OW(usize),
    OB(usize),
    UpW(usize),
    UpB(usize),
    DownW(usize),
    DownB(usize),
    FinalW,
    FinalB,
    Head,
}

/// One canonical tensor: its shape and the checkpoint tensors stacked (by rows) to form it.
#[derive(Clone, Debug)]
pub struct ParamSpec {
    pub slot: Slot,
    pub rows: usize,
    /// 1 for vectors (biases, norm weights), stored as 1-D in checkpoints.
    pub cols: usize,
    pub pieces: Vec<(String, usize)>,
    /// GPTNeoX fused qkv: rows stored per head as [heads, 3, head_dim].
    pub neox_interleaved: bool,
}

impl ParamSpec {
    pub fn numel(&self) -> usize {
        self.rows * self.cols
    }
}

fn vec_spec(slot: Slot, name: String, n: usize) -> ParamSpec {
    ParamSpec {
        slot,
        rows: n,
        cols: 1,
        pieces: vec![(name, n)],
        neox_interleaved: false,
    }
}
fn mat_spec(slot: Slot, name: String, rows: usize, cols: usize) -> ParamSpec {
    ParamSpec {
        slot,
        rows,
        cols,
        pieces: vec![(name, rows)],
        neox_interleaved: false,
    }
}

/// Every parameter of the model, in a fixed order, with its Hugging Face names.
pub fn param_specs(cfg: &ModelConfig) -> Vec<ParamSpec> {
    let (h, qkv, attn, inter) = (cfg.hidden, cfg.qkv_dim(), cfg.attn_dim(), cfg.intermediate);
    let has_norm_bias = cfg.norm == NormKind::LayerNorm;
    let mut specs = Vec::new();
    let (base, embed_name) = match cfg.arch {
        Arch::GptNeoX => ("gpt_neox", "gpt_neox.embed_in.weight"),
        Arch::Qwen2 => ("model", "model.embed_tokens.weight"),
    };
    specs.push(mat_spec(Slot::Embed, embed_name.into(), cfg.vocab, h));
    for i in 0..cfg.layers {
        let p = format!("{base}.layers.{i}");
        specs.push(vec_spec(
            Slot::Ln1W(i),
            format!("{p}.input_layernorm.weight"),
            h,
        ));
        if has_norm_bias {
            specs.push(vec_spec(
                Slot::Ln1B(i),
                format!("{p}.input_layernorm.bias"),
                h,
            ));
        }
        specs.push(vec_spec(
            Slot::Ln2W(i),
            format!("{p}.post_attention_layernorm.weight"),
            h,
        ));
        if has_norm_bias {
            specs.push(vec_spec(
                Slot::Ln2B(i),
                format!("{p}.post_attention_layernorm.bias"),
                h,
            ));
        }
        match cfg.arch {
            Arch::GptNeoX => {
                let a = format!("{p}.attention");
                let mut w = mat_spec(Slot::QkvW(i), format!("{a}.query_key_value.weight"), qkv, h);
                w.neox_interleaved = true;
                specs.push(w);
                if cfg.qkv_bias {
                    let mut b = vec_spec(Slot::QkvB(i), format!("{a}.query_key_value.bias"), qkv);
                    b.neox_interleaved = true;
                    specs.push(b);
                }
                specs.push(mat_spec(Slot::OW(i), format!("{a}.dense.weight"), h, attn));
                if cfg.out_bias {
                    specs.push(vec_spec(Slot::OB(i), format!("{a}.dense.bias"), h));
                }
                let m = format!("{p}.mlp");
                specs.push(mat_spec(
                    Slot::UpW(i),
                    format!("{m}.dense_h_to_4h.weight"),
                    inter,
                    h,
                ));
                specs.push(vec_spec(
                    Slot::UpB(i),
                    format!("{m}.dense_h_to_4h.bias"),
                    inter,
                ));
                specs.push(mat_spec(
                    Slot::DownW(i),
                    format!("{m}.dense_4h_to_h.weight"),
                    h,
                    inter,
                ));
                specs.push(vec_spec(
                    Slot::DownB(i),
                    format!("{m}.dense_4h_to_h.bias"),
                    h,
                ));
            }
            Arch::Qwen2 => {
                let a = format!("{p}.self_attn");
                let (qd, kvd) = (cfg.heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim);
                let parts = |suffix: &str| {
                    vec![
                        (format!("{a}.q_proj.{suffix}"), qd),
                        (format!("{a}.k_proj.{suffix}"), kvd),
                        (format!("{a}.v_proj.{suffix}"), kvd),
                    ]
                };
                specs.push(ParamSpec {
                    slot: Slot::QkvW(i),
                    rows: qkv,
                    cols: h,
                    pieces: parts("weight"),
                    neox_interleaved: false,
                });
                specs.push(ParamSpec {
                    slot: Slot::QkvB(i),
                    rows: qkv,
                    cols: 1,
                    pieces: parts("bias"),
                    neox_interleaved: false,
                });
                specs.push(mat_spec(Slot::OW(i), format!("{a}.o_proj.weight"), h, attn));
                let m = format!("{p}.mlp");
                specs.push(ParamSpec {
                    slot: Slot::UpW(i),
                    rows: 2 * inter,
                    cols: h,
                    pieces: vec![
                        (format!("{m}.gate_proj.weight"), inter),
                        (format!("{m}.up_proj.weight"), inter),
                    ],
                    neox_interleaved: false,
                });
                specs.push(mat_spec(
                    Slot::DownW(i),
                    format!("{m}.down_proj.weight"),
                    h,
                    inter,
                ));
            }
        }
    }
    let final_name = match cfg.arch {
        Arch::GptNeoX => "gpt_neox.final_layer_norm",
        Arch::Qwen2 => "model.norm",
    };
    specs.push(vec_spec(Slot::FinalW, format!("{final_name}.weight"), h));
    if has_norm_bias {
        specs.push(vec_spec(Slot::FinalB, format!("{final_name}.bias"), h));
    }
    match cfg.head {
        HeadKind::Classifier { num_labels } => {
            specs.push(mat_spec(Slot::Head, "score.weight".into(), num_labels, h));
        }
        HeadKind::CausalLm if !cfg.tied_embeddings => {
            let name = match cfg.arch {
                Arch::GptNeoX => "embed_out.weight",
                Arch::Qwen2 => "lm_head.weight",
            };
            specs.push(mat_spec(Slot::Head, name.into(), cfg.vocab, h));
        }
        HeadKind::CausalLm => {}
    }
    specs
}

/// Row permutation of GPTNeoX's fused qkv: canonical row -> stored row.
fn neox_row(canon: usize, heads: usize, head_dim: usize) -> usize {
    let which = canon / (heads * head_dim); // 0 q, 1 k, 2 v
    let head = (canon / head_dim) % heads;
    let d = canon % head_dim;
    head * 3 * head_dim + which * head_dim + d
}

/// Reorders rows between the stored GPTNeoX layout and ours.
pub fn permute_neox_rows(
    data: &[f32],
    cols: usize,
    heads: usize,
    head_dim: usize,
    to_canonical: bool,
) -> Vec<f32> {
    let rows = data.len() / cols;
    let mut out = vec![0.0; data.len()];
    for c in 0..rows {
        let s = neox_row(c, heads, head_dim);
        let (dst, src) = if to_canonical { (c, s) } else { (s, c) };
        out[dst * cols..(dst + 1) * cols].copy_from_slice(&data[src * cols..(src + 1) * cols]);
    }
    out
}

impl<T> Weights<T> {
    pub fn slot(&self, s: Slot) -> Option<&T> {
        match s {
            Slot::Embed => Some(&self.embed),
            Slot::Ln1W(i) => Some(&self.layers[i].ln1_w),
            Slot::Ln1B(i) => self.layers[i].ln1_b.as_ref(),
            Slot::Ln2W(i) => Some(&self.layers[i].ln2_w),
            Slot::Ln2B(i) => self.layers[i].ln2_b.as_ref(),
            Slot::QkvW(i) => Some(&self.layers[i].qkv_w),
            Slot::QkvB(i) => self.layers[i].qkv_b.as_ref(),
            Slot::OW(i) => Some(&self.layers[i].o_w),
            Slot::OB(i) => self.layers[i].o_b.as_ref(),
            Slot::UpW(i) => Some(&self.layers[i].up_w),
            Slot::UpB(i) => self.layers[i].up_b.as_ref(),
            Slot::DownW(i) => Some(&self.layers[i].down_w),
            Slot::DownB(i) => self.layers[i].down_b.as_ref(),
            Slot::FinalW => Some(&self.final_w),
            Slot::FinalB => self.final_b.as_ref(),
            Slot::Head => self.head.as_ref(),
        }
    }

    pub fn slot_mut(&mut self, s: Slot) -> Option<&mut T> {
        match s {
            Slot::Embed => Some(&mut self.embed),
            Slot::Ln1W(i) => Some(&mut self.layers[i].ln1_w),
            Slot::Ln1B(i) => self.layers[i].ln1_b.as_mut(),
            Slot::Ln2W(i) => Some(&mut self.layers[i].ln2_w),
            Slot::Ln2B(i) => self.layers[i].ln2_b.as_mut(),
            Slot::QkvW(i) => Some(&mut self.layers[i].qkv_w),
            Slot::QkvB(i) => self.layers[i].qkv_b.as_mut(),
            Slot::OW(i) => Some(&mut self.layers[i].o_w),
            Slot::OB(i) => self.layers[i].o_b.as_mut(),
            Slot::UpW(i) => Some(&mut self.layers[i].up_w),
            Slot::UpB(i) => self.layers[i].up_b.as_mut(),
            Slot::DownW(i) => Some(&mut self.layers[i].down_w),
            Slot::DownB(i) => self.layers[i].down_b.as_mut(),
            Slot::FinalW => Some(&mut self.final_w),
            Slot::FinalB => self.final_b.as_mut(),
            Slot::Head => self.head.as_mut(),
        }
    }

    /// Builds a Weights by calling `make` for every spec (absent specs stay None).
    pub fn build(cfg: &ModelConfig, mut make: impl FnMut(&ParamSpec) -> Result<T>) -> Result<Self> {
        let mut slots: Vec<(Slot, T)> = Vec::new();
        for spec in param_specs(cfg) {
            slots.push((spec.slot, make(&spec)?));
        }
        let mut take = |s: Slot| -> Option<T> {
            let pos = slots.iter().position(|(k, _)| *k == s)?;
            Some(slots.swap_remove(pos).1)
        };
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            layers.push(LayerWeights {
                ln1_w: take(Slot::Ln1W(i)).expect("spec"),
                ln1_b: take(Slot::Ln1B(i)),
                ln2_w: take(Slot::Ln2W(i)).expect("spec"),
                ln2_b: take(Slot::Ln2B(i)),
                qkv_w: take(Slot::QkvW(i)).expect("spec"),
                qkv_b: take(Slot::QkvB(i)),
                o_w: take(Slot::OW(i)).expect("spec"),
                o_b: take(Slot::OB(i)),
                up_w: take(Slot::UpW(i)).expect("spec"),
                up_b: take(Slot::UpB(i)),
                down_w: take(Slot::DownW(i)).expect("spec"),
                down_b: take(Slot::DownB(i)),
            });
        }
        Ok(Weights {
            embed: take(Slot::Embed).expect("spec"),
            layers,
            final_w: take(Slot::FinalW).expect("spec"),
            final_b: take(Slot::FinalB),
            head: take(Slot::Head),
        })
    }

    pub fn map<U>(&self, cfg: &ModelConfig, mut f: impl FnMut(&ParamSpec, &T) -> U) -> Weights<U> {
        Weights::build(cfg, |spec| {
            Ok(f(spec, self.slot(spec.slot).expect("slot of own spec")))
        })
        .expect("infallible")
    }
}

/// Reads and converts one canonical tensor from the checkpoint, checking every shape.
static ALLOW_NONFINITE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether checkpoints with NaN or infinite weights load (default: refused, naming the
/// tensor and element; the CLI's `--allow-nonfinite` sets this for the process).
pub fn set_allow_nonfinite(allow: bool) {
    ALLOW_NONFINITE.store(allow, std::sync::atomic::Ordering::Relaxed);
}

/// An error naming tensor `name` and the first NaN or infinite element of `data`, unless
/// [`set_allow_nonfinite`] allowed them.
fn check_finite(name: &str, data: &[f32]) -> Result<()> {
    if ALLOW_NONFINITE.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(());
    }
    match data.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::tensor(
            name,
            format!(
                "element {i} is {} ({} of {} elements are not finite); the checkpoint is \
                 damaged, or pass --allow-nonfinite to load it anyway",
                data[i],
                data.iter().filter(|v| !v.is_finite()).count(),
                data.len()
            ),
        )),
    }
}

pub fn load_spec(
    store: &SafetensorsStore,
    cfg: &ModelConfig,
    spec: &ParamSpec,
) -> Result<Vec<f32>> {
    // Every shape is checked before anything is allocated: a config.json larger than its
    // weights must not reserve the config's size first.
    let mut tensors = Vec::with_capacity(spec.pieces.len());
    for (name, rows) in &spec.pieces {
        let t = store.get(name)?;
        let expected: Vec<usize> = if spec.cols == 1 {
            vec![*rows]
        } else {
            vec![*rows, spec.cols]
        };
        // Pythia pads its vocabulary; a checkpoint's embedding must match config.json exactly.
        if t.shape != expected.as_slice() {
            return Err(Error::tensor(
                name.as_str(),
                format!(
                    "shape {:?} does not match config.json (expected {:?})",
                    t.shape, expected
                ),
            ));
        }
        tensors.push((name, t));
    }
    let mut data = Vec::with_capacity(spec.numel());
    for (name, t) in tensors {
        let start = data.len();
        t.extend_f32(&mut data);
        check_finite(name, &data[start..])?;
    }
    if spec.neox_interleaved {
        data = permute_neox_rows(&data, spec.cols, cfg.heads, cfg.head_dim, true);
    }
    Ok(data)
}

/// Splits a canonical tensor back into its checkpoint tensors (name, shape, data).
pub fn export_spec(
    cfg: &ModelConfig,
    spec: &ParamSpec,
    data: &[f32],
) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let data = if spec.neox_interleaved {
        permute_neox_rows(data, spec.cols, cfg.heads, cfg.head_dim, false)
    } else {
        data.to_vec()
    };
    let mut out = Vec::new();
    let mut row = 0;
    for (name, rows) in &spec.pieces {
        let shape = if spec.cols == 1 {
            vec![*rows]
        } else {
            vec![*rows, spec.cols]
        };
        out.push((
            name.clone(),
            shape,
            data[row * spec.cols..(row + rows) * spec.cols].to_vec(),
        ));
        row += rows;
    }
    out
}

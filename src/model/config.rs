//! config.json of GPTNeoX and Qwen2 checkpoints, parsed into one architecture-neutral struct.

use crate::error::{Error, Result};
use serde_json::Value;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    GptNeoX,
    Qwen2,
}

impl Arch {
    /// The architecture's `model_type` in config.json.
    pub fn name(self) -> &'static str {
        match self {
            Arch::GptNeoX => "gpt_neox",
            Arch::Qwen2 => "qwen2",
        }
    }
}

/// What sits on top of the final norm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadKind {
    CausalLm,
    Classifier { num_labels: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Exact erf GELU (`gelu`).
    Gelu,
    /// tanh approximation (`gelu_new`, `gelu_fast`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// SwiGLU gate: silu(gate) * up.
    SiluGated,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    LayerNorm,
    RmsNorm,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub head: HeadKind,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub vocab: usize,
    /// Number of leading dims of each head that get rotary (even).
    pub rotary_dims: usize,
    pub rope_base: f32,
    pub norm_eps: f32,
    pub norm: NormKind,
    pub parallel_residual: bool,
    pub tied_embeddings: bool,
    pub act: Activation,
    pub pad_token_id: Option<u32>,
    pub max_positions: usize,
    /// Biases on q/k/v (and for GPTNeoX on the attention output and MLP).
    pub qkv_bias: bool,
    pub out_bias: bool,
    pub mlp_bias: bool,
    /// `torch_dtype` / `dtype` as written in config.json, if any.
    pub stored_dtype: Option<String>,
}

fn get<'a>(v: &'a Value, field: &str) -> Result<&'a Value> {
    v.get(field)
        .ok_or_else(|| Error::config(field, "missing (required for this architecture)"))
}

fn usize_field(v: &Value, field: &str) -> Result<usize> {
    let x = get(v, field)?;
    x.as_u64()
        .filter(|&n| n > 0)
        .map(|n| n as usize)
        .ok_or_else(|| Error::config(field, format!("expected a positive integer, found {x}")))
}

/// An optional number: absent or null is None, anything but a number an error.
fn opt_f64(v: &Value, field: &str) -> Result<Option<f64>> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_f64()
            .map(Some)
            .ok_or_else(|| Error::config(field, format!("expected a number, found {x}"))),
    }
}

fn opt_bool(v: &Value, field: &str, default: bool) -> Result<bool> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x
            .as_bool()
            .ok_or_else(|| Error::config(field, format!("expected true or false, found {x}"))),
    }
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(path, format!("not valid JSON: {e}")))?;
        Self::from_json(&v)
    }

    pub fn from_json(v: &Value) -> Result<Self> {
        let archs = get(v, "architectures")?
            .as_array()
            .ok_or_else(|| Error::config("architectures", "expected a list of strings"))?;
        let name = archs
            .first()
            .and_then(Value::as_str)
            .ok_or_else(|| Error::config("architectures", "empty or not a string"))?;
        let (arch, head) = match name {
            "GPTNeoXForCausalLM" => (Arch::GptNeoX, HeadKind::CausalLm),
            "Qwen2ForCausalLM" => (Arch::Qwen2, HeadKind::CausalLm),
            "GPTNeoXForSequenceClassification" | "Qwen2ForSequenceClassification" => {
                let num_labels = num_labels(v)?;
                let arch = if name.starts_with("GPTNeoX") {
                    Arch::GptNeoX
                } else {
                    Arch::Qwen2
                };
                (arch, HeadKind::Classifier { num_labels })
            }
            other => {
                return Err(Error::config(
                    "architectures",
                    format!(
                        "unknown architecture `{other}`; supported: GPTNeoXForCausalLM, \
                         GPTNeoXForSequenceClassification, Qwen2ForCausalLM, \
                         Qwen2ForSequenceClassification"
                    ),
                ))
            }
        };
        let hidden = usize_field(v, "hidden_size")?;
        let heads = usize_field(v, "num_attention_heads")?;
        if hidden % heads != 0 {
            return Err(Error::config(
                "num_attention_heads",
                format!("{heads} does not divide hidden_size {hidden}"),
            ));
        }
        let head_dim = match v.get("head_dim") {
            Some(Value::Number(_)) => usize_field(v, "head_dim")?,
            _ => hidden / heads,
        };
        let layers = usize_field(v, "num_hidden_layers")?;
        let intermediate = usize_field(v, "intermediate_size")?;
        let vocab = usize_field(v, "vocab_size")?;
        // Absent: no limit. Present, it must be usable (0, -1 or "2048" is not "no limit").
        let max_positions = match v.get("max_position_embeddings") {
            None | Some(Value::Null) => usize::MAX,
            Some(_) => usize_field(v, "max_position_embeddings")?,
        };
        let pad_token_id = match v.get("pad_token_id") {
            None | Some(Value::Null) => None,
            Some(x) => {
                let id = x
                    .as_u64()
                    .ok_or_else(|| Error::config("pad_token_id", format!("not an integer: {x}")))?;
                // Not `as u32`: 2^32 + 1 would silently become token 1.
                Some(u32::try_from(id).map_err(|_| {
                    Error::config(
                        "pad_token_id",
                        format!("{id} is outside the vocabulary (vocab_size {vocab})"),
                    )
                })?)
            }
        };
        let stored_dtype = v
            .get("torch_dtype")
            .or_else(|| v.get("dtype"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let act_name = v.get("hidden_act").and_then(Value::as_str);
        check_rope_type(v)?;

        let cfg = match arch {
            Arch::GptNeoX => {
                let rotary_pct =
                    rope_f64(v, &["partial_rotary_factor", "rotary_pct"])?.unwrap_or(1.0);
                if !(0.0..=1.0).contains(&rotary_pct) {
                    return Err(Error::config("rotary_pct", "must lie in [0, 1]"));
                }
                let rope_base = rope_f64(v, &["rope_theta", "rotary_emb_base"])?.unwrap_or(10000.0);
                let act = match act_name.unwrap_or("gelu") {
                    "gelu" => Activation::Gelu,
                    "gelu_new" | "gelu_fast" | "gelu_pytorch_tanh" => Activation::GeluTanh,
                    other => {
                        return Err(Error::config(
                            "hidden_act",
                            format!("unsupported activation `{other}` for GPTNeoX"),
                        ))
                    }
                };
                let attention_bias = opt_bool(v, "attention_bias", true)?;
                ModelConfig {
                    arch,
                    head,
                    hidden,
                    layers,
                    heads,
                    kv_heads: heads,
                    head_dim,
                    intermediate,
                    vocab,
                    // transformers: int(head_size * rotary_pct)
                    rotary_dims: (head_dim as f64 * rotary_pct) as usize,
                    rope_base: rope_base as f32,
                    norm_eps: opt_f64(v, "layer_norm_eps")?.unwrap_or(1e-5) as f32,
                    norm: NormKind::LayerNorm,
                    parallel_residual: opt_bool(v, "use_parallel_residual", true)?,
                    tied_embeddings: opt_bool(v, "tie_word_embeddings", false)?,
                    act,
                    pad_token_id,
                    max_positions,
                    qkv_bias: attention_bias,
                    out_bias: attention_bias,
                    mlp_bias: true,
                    stored_dtype,
                }
            }
            Arch::Qwen2 => {
                let kv_heads = match v.get("num_key_value_heads") {
                    None | Some(Value::Null) => heads,
                    _ => usize_field(v, "num_key_value_heads")?,
                };
                if heads % kv_heads != 0 {
                    return Err(Error::config(
                        "num_key_value_heads",
                        format!("{kv_heads} does not divide num_attention_heads {heads}"),
                    ));
                }
                match act_name.unwrap_or("silu") {
                    "silu" | "swish" => {}
                    other => {
                        return Err(Error::config(
                            "hidden_act",
                            format!("unsupported activation `{other}` for Qwen2 (expected silu)"),
                        ))
                    }
                }
                ModelConfig {
                    arch,
                    head,
                    hidden,
                    layers,
                    heads,
                    kv_heads,
                    head_dim,
                    intermediate,
                    vocab,
                    rotary_dims: head_dim,
                    rope_base: rope_f64(v, &["rope_theta"])?.unwrap_or(10000.0) as f32,
                    norm_eps: opt_f64(v, "rms_norm_eps")?.unwrap_or(1e-6) as f32,
                    norm: NormKind::RmsNorm,
                    parallel_residual: false,
                    tied_embeddings: opt_bool(v, "tie_word_embeddings", false)?,
                    act: Activation::SiluGated,
                    pad_token_id,
                    max_positions,
                    qkv_bias: true,
                    out_bias: false,
                    mlp_bias: false,
                    stored_dtype,
                }
            }
        };
        cfg.check_bounds()?;
        if cfg.rotary_dims % 2 != 0 {
            return Err(Error::config(
                "rotary_pct",
                format!("gives an odd rotary dimension {}", cfg.rotary_dims),
            ));
        }
        Ok(cfg)
    }

    /// Sizes and constants no real checkpoint has are refused before anything is allocated
    /// (a corrupt or hand-edited config.json must not ask for terabytes): every dimension
    /// within generous bounds (the largest models use vocabularies of ~256k and hidden
    /// sizes of ~16k), every weight matrix under 2^36 elements, positive finite epsilon
    /// and rotary base.
    fn check_bounds(&self) -> Result<()> {
        let norm_field = match self.norm {
            NormKind::LayerNorm => "layer_norm_eps",
            NormKind::RmsNorm => "rms_norm_eps",
        };
        for (field, v, max) in [
            ("hidden_size", self.hidden, 1 << 17),
            ("num_hidden_layers", self.layers, 1 << 12),
            ("num_attention_heads", self.heads, 1 << 12),
            // An explicit head_dim is otherwise unchecked: u64::MAX overflowed the q|k|v
            // width (a panic, or a wrapped size in release builds).
            ("head_dim", self.head_dim, 1 << 14),
            ("intermediate_size", self.intermediate, 1 << 20),
            ("vocab_size", self.vocab, 1 << 24),
        ] {
            if v == 0 || v > max {
                return Err(Error::config(
                    field,
                    format!("{v} is outside 1..={max} (a corrupt config.json?)"),
                ));
            }
        }
        let elements = [
            (
                "vocab_size x hidden_size",
                self.vocab.checked_mul(self.hidden),
            ),
            (
                "intermediate_size x hidden_size",
                self.up_rows().checked_mul(self.hidden),
            ),
            ("qkv x hidden_size", self.qkv_dim().checked_mul(self.hidden)),
        ];
        for (what, n) in elements {
            if n.is_none_or(|n| n > 1 << 36) {
                return Err(Error::config(
                    what.split(' ').next().unwrap_or(what),
                    format!(
                        "{what} is a matrix of more than 2^36 weights (a corrupt config.json?)"
                    ),
                ));
            }
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return Err(Error::config(
                norm_field,
                format!("must be a positive number, found {}", self.norm_eps),
            ));
        }
        if let Some(p) = self.pad_token_id.filter(|&p| p as usize >= self.vocab) {
            return Err(Error::config(
                "pad_token_id",
                format!("{p} is outside the vocabulary (vocab_size {})", self.vocab),
            ));
        }
        if let HeadKind::Classifier { num_labels } = self.head {
            if num_labels == 0 || num_labels > 1 << 16 {
                return Err(Error::config(
                    "num_labels",
                    format!("{num_labels} classes is outside 1..=65536"),
                ));
            }
        }
        let rope_field = match self.arch {
            Arch::GptNeoX => "rotary_emb_base",
            Arch::Qwen2 => "rope_theta",
        };
        if !(self.rope_base.is_finite() && self.rope_base > 0.0) {
            return Err(Error::config(
                rope_field,
                format!(
                    "the rotary base must be a positive number, found {}",
                    self.rope_base
                ),
            ));
        }
        Ok(())
    }

    /// Width of the fused q|k|v projection.
    pub fn qkv_dim(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }

    /// Width of the attention output before o_proj.
    pub fn attn_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Rows of the MLP's first projection (gate and up stacked for SwiGLU).
    pub fn up_rows(&self) -> usize {
        match self.act {
            Activation::SiluGated => 2 * self.intermediate,
            _ => self.intermediate,
        }
    }

    pub fn num_labels(&self) -> Option<usize> {
        match self.head {
            HeadKind::Classifier { num_labels } => Some(num_labels),
            HeadKind::CausalLm => None,
        }
    }
}

fn num_labels(v: &Value) -> Result<usize> {
    match v.get("num_labels") {
        None | Some(Value::Null) => {}
        // Range checked with the other sizes (check_bounds).
        Some(x) => {
            return x.as_u64().map(|n| n as usize).ok_or_else(|| {
                Error::config("num_labels", format!("expected an integer, found {x}"))
            })
        }
    }
    match v.get("id2label").and_then(Value::as_object) {
        Some(m) if !m.is_empty() => Ok(m.len()),
        // transformers' PretrainedConfig default
        _ => Ok(2),
    }
}

/// A rotary setting from `rope_parameters` (transformers >= 5) or the top level (older
/// files): the first of `keys` present (and not null) in either; it must be a number.
fn rope_f64(v: &Value, keys: &[&str]) -> Result<Option<f64>> {
    let nested = v.get("rope_parameters");
    for k in keys {
        let found = nested
            .and_then(|n| n.get(*k))
            .filter(|x| !x.is_null())
            .or_else(|| v.get(*k).filter(|x| !x.is_null()));
        if let Some(x) = found {
            return x
                .as_f64()
                .map(Some)
                .ok_or_else(|| Error::config(*k, format!("expected a number, found {x}")));
        }
    }
    Ok(None)
}

/// Only plain rotary is implemented; scaled variants (linear, yarn, dynamic...) would give
/// silently wrong logits, so they are refused by name.
fn check_rope_type(v: &Value) -> Result<()> {
    for field in ["rope_parameters", "rope_scaling"] {
        if let Some(kind) = v
            .get(field)
            .and_then(|r| r.get("rope_type").or_else(|| r.get("type")))
            .and_then(Value::as_str)
        {
            if kind != "default" {
                return Err(Error::config(
                    field,
                    format!("rope_type `{kind}` is not supported (only `default`)"),
                ));
            }
        }
    }
    Ok(())
}

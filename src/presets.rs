//! Synthetic model shapes of the study's model families (random weights, no download), for
//! benchmarks and from-scratch training. Published config.json files remain the authority.

use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use serde_json::json;

/// One model shape of a family.
struct Preset {
    name: &'static str,
    hidden: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    intermediate: usize,
    vocab: usize,
    tied: bool,
}

/// Table rows read (name, hidden, layers, heads, kv_heads, intermediate, vocab, tied);
/// positional so the table stays one line per model.
#[allow(clippy::too_many_arguments)]
const fn p(
    name: &'static str,
    hidden: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    intermediate: usize,
    vocab: usize,
    tied: bool,
) -> Preset {
    Preset {
        name,
        hidden,
        layers,
        heads,
        kv_heads,
        intermediate,
        vocab,
        tied,
    }
}

const PRESETS: &[Preset] = &[
    p("pythia-14m", 128, 6, 4, 4, 512, 50304, false),
    p("pythia-31m", 256, 6, 8, 8, 1024, 50304, false),
    p("pythia-70m", 512, 6, 8, 8, 2048, 50304, false),
    p("pythia-160m", 768, 12, 12, 12, 3072, 50304, false),
    p("pythia-410m", 1024, 24, 16, 16, 4096, 50304, false),
    p("pythia-1b", 2048, 16, 8, 8, 8192, 50304, false),
    p("pythia-1.4b", 2048, 24, 16, 16, 8192, 50304, false),
    p("pythia-2.8b", 2560, 32, 32, 32, 10240, 50304, false),
    p("pythia-6.9b", 4096, 32, 32, 32, 16384, 50432, false),
    p("pythia-12b", 5120, 36, 40, 40, 20480, 50688, false),
    p("qwen2.5-0.5b", 896, 24, 14, 2, 4864, 151936, true),
    p("qwen2.5-1.5b", 1536, 28, 12, 2, 8960, 151936, true),
    p("qwen2.5-3b", 2048, 36, 16, 2, 11008, 151936, true),
    p("qwen2.5-7b", 3584, 28, 28, 4, 18944, 152064, false),
    p("qwen2.5-14b", 5120, 48, 40, 8, 13824, 152064, false),
];

/// The preset whose architecture and shape `cfg` has (a classifier fine-tuned from it
/// included: the head is not compared), if any.
pub fn matching(cfg: &ModelConfig) -> Option<&'static str> {
    let family = match cfg.arch {
        crate::model::config::Arch::GptNeoX => "pythia",
        crate::model::config::Arch::Qwen2 => "qwen2.5",
    };
    PRESETS
        .iter()
        .find(|p| {
            p.name.starts_with(family)
                && p.hidden == cfg.hidden
                && p.layers == cfg.layers
                && p.heads == cfg.heads
                && p.kv_heads == cfg.kv_heads
                && p.intermediate == cfg.intermediate
                && p.vocab == cfg.vocab
        })
        .map(|p| p.name)
}

pub fn names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.name).collect()
}

/// Pretraining tokens D of a preset (science.md): every Pythia saw 299,892,736,000 tokens;
/// Qwen2.5 0.5B 18T, the larger ones 10.5T.
pub fn pretraining_tokens(name: &str) -> Option<f64> {
    if name.starts_with("pythia") {
        Some(299_892_736_000.0)
    } else if name == "qwen2.5-0.5b" {
        Some(18e12)
    } else if name.starts_with("qwen2.5") {
        Some(10.5e12)
    } else {
        None
    }
}

/// The preset of `family` ("pythia", "qwen2.5") whose classifier parameter count is
/// nearest, in log scale, to `n_params`: a checkpoint's size in the study's tables.
pub fn nearest(family: &str, n_params: usize) -> &'static str {
    let distance = |name: &str| {
        let c = config(name, Some(2)).expect("preset");
        let n = crate::model::param_count(&c) as f64;
        (n.ln() - (n_params.max(1) as f64).ln()).abs()
    };
    PRESETS
        .iter()
        .map(|p| p.name)
        .filter(|n| n.starts_with(family))
        .min_by(|a, b| distance(a).total_cmp(&distance(b)))
        .expect("the family has presets")
}

/// The config.json a Hugging Face checkpoint of this shape would carry.
pub fn config_json(name: &str, classifier: Option<usize>) -> Result<serde_json::Value> {
    let &Preset {
        hidden,
        layers,
        heads,
        kv_heads: kv,
        intermediate: inter,
        vocab,
        tied,
        ..
    } = PRESETS.iter().find(|p| p.name == name).ok_or_else(|| {
        Error::input(format!(
            "unknown preset `{name}`; known: {}",
            names().join(", ")
        ))
    })?;
    let mut v = if name.starts_with("pythia") {
        json!({
            "architectures": [if classifier.is_some() { "GPTNeoXForSequenceClassification" } else { "GPTNeoXForCausalLM" }],
            "model_type": "gpt_neox",
            "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
            "intermediate_size": inter, "vocab_size": vocab, "rotary_pct": 0.25,
            "rotary_emb_base": 10000, "layer_norm_eps": 1e-5, "hidden_act": "gelu",
            "use_parallel_residual": true, "tie_word_embeddings": tied,
            "max_position_embeddings": 2048, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 0,
        })
    } else {
        json!({
            "architectures": [if classifier.is_some() { "Qwen2ForSequenceClassification" } else { "Qwen2ForCausalLM" }],
            "model_type": "qwen2",
            "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv, "intermediate_size": inter, "vocab_size": vocab,
            "rope_theta": 1e6, "rms_norm_eps": 1e-6, "hidden_act": "silu",
            "tie_word_embeddings": tied, "max_position_embeddings": 32768,
            "pad_token_id": 151643, "bos_token_id": 151643, "eos_token_id": 151643,
        })
    };
    if let Some(n) = classifier {
        let labels: serde_json::Map<String, serde_json::Value> = (0..n)
            .map(|i| (i.to_string(), json!(format!("LABEL_{i}"))))
            .collect();
        v["id2label"] = serde_json::Value::Object(labels);
    }
    Ok(v)
}

pub fn config(name: &str, classifier: Option<usize>) -> Result<ModelConfig> {
    ModelConfig::from_json(&config_json(name, classifier)?)
}

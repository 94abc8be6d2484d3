//! Checkpoints as Hugging Face directories (config.json, model.safetensors, tokenizer.json)
//! that transformers loads, plus the trainer's state for resuming. Every save goes to a
//! temporary directory first and is renamed into place, so a kill mid-save never loses the
//! previous checkpoint.

use super::optim::TensorState;
use super::{Progress, TrainConfig};
use crate::error::{Error, Result};
use crate::model::config::{Activation, Arch, HeadKind, ModelConfig};
use crate::model::weights::{export_spec, param_specs, Weights};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// config.json for a model (the pre-5.0 key names, which every transformers version reads).
/// `labels` names the classes (the task's label names) in `id2label`; else `LABEL_i`.
pub fn config_json(cfg: &ModelConfig, labels: Option<&[String]>) -> Value {
    let classifier = matches!(cfg.head, HeadKind::Classifier { .. });
    let arch = match (cfg.arch, classifier) {
        (Arch::GptNeoX, false) => "GPTNeoXForCausalLM",
        (Arch::GptNeoX, true) => "GPTNeoXForSequenceClassification",
        (Arch::Qwen2, false) => "Qwen2ForCausalLM",
        (Arch::Qwen2, true) => "Qwen2ForSequenceClassification",
    };
    let mut v = json!({
        "architectures": [arch],
        "hidden_size": cfg.hidden,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "intermediate_size": cfg.intermediate,
        "vocab_size": cfg.vocab,
        "tie_word_embeddings": cfg.tied_embeddings,
        "torch_dtype": "float32",
    });
    if cfg.max_positions != usize::MAX {
        v["max_position_embeddings"] = cfg.max_positions.into();
    }
    if let Some(p) = cfg.pad_token_id {
        v["pad_token_id"] = p.into();
    }
    match cfg.arch {
        Arch::GptNeoX => {
            v["model_type"] = "gpt_neox".into();
            v["rotary_pct"] = (cfg.rotary_dims as f64 / cfg.head_dim as f64).into();
            v["rotary_emb_base"] = (cfg.rope_base as f64).into();
            v["layer_norm_eps"] = (cfg.norm_eps as f64).into();
            v["use_parallel_residual"] = cfg.parallel_residual.into();
            v["attention_bias"] = cfg.qkv_bias.into();
            v["hidden_act"] = match cfg.act {
                Activation::GeluTanh => "gelu_new",
                _ => "gelu",
            }
            .into();
        }
        Arch::Qwen2 => {
            v["model_type"] = "qwen2".into();
            v["num_key_value_heads"] = cfg.kv_heads.into();
            v["rope_theta"] = (cfg.rope_base as f64).into();
            v["rms_norm_eps"] = (cfg.norm_eps as f64).into();
            v["hidden_act"] = "silu".into();
            v["use_sliding_window"] = false.into();
        }
    }
    if let HeadKind::Classifier { num_labels } = cfg.head {
        // Task label names carry a leading space (" GRANTED"); the config names them bare.
        let name = |i: usize| match labels {
            Some(l) if l.len() == num_labels => l[i].trim().to_string(),
            _ => format!("LABEL_{i}"),
        };
        let names: serde_json::Map<String, Value> = (0..num_labels)
            .map(|i| (i.to_string(), json!(name(i))))
            .collect();
        let ids: serde_json::Map<String, Value> =
            (0..num_labels).map(|i| (name(i), json!(i))).collect();
        v["id2label"] = Value::Object(names);
        v["label2id"] = Value::Object(ids);
    }
    v
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, (Vec<usize>, Vec<u8>)>,
    meta: Option<std::collections::HashMap<String, String>>,
) -> Result<()> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, (shape, bytes))| {
            TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::tensor(n.as_str(), format!("cannot serialize: {e}")))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize_to_file(views, meta, path)
        .map_err(|e| Error::format(path, format!("cannot write safetensors: {e}")))
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

/// Writes `dir` as a Hugging Face checkpoint (f32), replacing any previous one atomically.
/// `extra` files (name, bytes) go in too (trainer state).
pub fn save_hf(
    dir: &Path,
    cfg: &ModelConfig,
    w: &Weights<Vec<f32>>,
    tokenizer_json: &Path,
    labels: Option<&[String]>,
    extra: &[(&str, Vec<u8>)],
) -> Result<()> {
    let tmp = dir.with_extension("tmp");
    write_hf_dir(&tmp, cfg, w, tokenizer_json, labels, extra)?;
    // On disk before it takes the checkpoint's name; the renames synced after.
    crate::files::sync_tree(&tmp)?;
    if dir.exists() {
        let old = dir.with_extension("old");
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        }
        std::fs::rename(dir, &old).map_err(io(dir))?;
        std::fs::rename(&tmp, dir).map_err(io(dir))?;
        crate::files::sync_parent(dir)?;
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    } else {
        std::fs::rename(&tmp, dir).map_err(io(dir))?;
    }
    crate::files::sync_parent(dir)
}

/// Completes a [`save_hf`] that was killed between its two renames (`dir` moved aside to
/// `.old`, the finished `.tmp` not yet in place): the new checkpoint is put in place, or,
/// failing that, the old one back. A no-op when `dir` exists.
pub fn recover_interrupted_save(dir: &Path) -> Result<()> {
    let (tmp, old) = (dir.with_extension("tmp"), dir.with_extension("old"));
    if dir.exists() || !old.exists() {
        return Ok(());
    }
    // The old checkpoint is only moved aside after the temporary one is complete.
    if tmp.exists() {
        std::fs::rename(&tmp, dir).map_err(io(dir))?;
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    } else {
        std::fs::rename(&old, dir).map_err(io(dir))?;
    }
    Ok(())
}

/// Writes a checkpoint's files into `tmp` (created afresh; what [`save_hf`] renames into
/// place once every file is written).
pub fn write_hf_dir(
    tmp: &Path,
    cfg: &ModelConfig,
    w: &Weights<Vec<f32>>,
    tokenizer_json: &Path,
    labels: Option<&[String]>,
    extra: &[(&str, Vec<u8>)],
) -> Result<()> {
    let parent = tmp.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    if tmp.exists() {
        std::fs::remove_dir_all(tmp).map_err(io(tmp))?;
    }
    std::fs::create_dir_all(tmp).map_err(io(tmp))?;
    let mut tensors = BTreeMap::new();
    for spec in param_specs(cfg) {
        let data = w.slot(spec.slot).expect("weights match their config");
        for (name, shape, part) in export_spec(cfg, &spec, data) {
            tensors.insert(name, (shape, f32_bytes(&part)));
        }
    }
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    write_safetensors(&tmp.join("model.safetensors"), &tensors, Some(meta))?;
    let cfg_text = serde_json::to_string_pretty(&config_json(cfg, labels)).expect("json");
    std::fs::write(tmp.join("config.json"), cfg_text).map_err(io(tmp))?;
    std::fs::copy(tokenizer_json, tmp.join("tokenizer.json")).map_err(io(tokenizer_json))?;
    for (name, bytes) in extra {
        std::fs::write(tmp.join(name), bytes).map_err(io(tmp))?;
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct TrainerState {
    config: TrainConfig,
    progress: Progress,
}
use serde::{Deserialize, Serialize};

/// Trainer state files: trainer_state.json and optimizer.safetensors.
pub fn state_files(
    cfg: &TrainConfig,
    progress: &Progress,
    state: &[TensorState],
) -> Result<Vec<(&'static str, Vec<u8>)>> {
    let json = serde_json::to_vec_pretty(&TrainerState {
        config: cfg.clone(),
        progress: progress.clone(),
    })
    .expect("json");
    let mut tensors = BTreeMap::new();
    for (i, st) in state.iter().enumerate() {
        let mut put = |name: String, v: &[f32]| {
            if !v.is_empty() {
                tensors.insert(name, (vec![v.len()], f32_bytes(v)));
            }
        };
        put(format!("{i}.m"), &st.m);
        put(format!("{i}.v"), &st.v);
        for (p, r) in st.row.iter().enumerate() {
            put(format!("{i}.row.{p}"), r);
        }
        for (p, c) in st.col.iter().enumerate() {
            put(format!("{i}.col.{p}"), c);
        }
    }
    let tmp = std::env::temp_dir().join(format!(
        "armsrace-opt-{}-{}.safetensors",
        std::process::id(),
        progress.step
    ));
    write_safetensors(&tmp, &tensors, None)?;
    let bytes = std::fs::read(&tmp).map_err(io(&tmp))?;
    let _ = std::fs::remove_file(&tmp);
    Ok(vec![
        ("trainer_state.json", json),
        ("optimizer.safetensors", bytes),
    ])
}

/// The training settings and progress of a checkpoint (trainer_state.json).
pub fn load_progress(dir: &Path) -> Result<(TrainConfig, Progress)> {
    let p = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&p).map_err(io(&p))?;
    let ts: TrainerState =
        serde_json::from_str(&text).map_err(|e| Error::format(&p, e.to_string()))?;
    Ok((ts.config, ts.progress))
}

/// Reads what `state_files` wrote.
pub fn load_state(
    dir: &Path,
    n_tensors: usize,
) -> Result<(TrainConfig, Progress, Vec<TensorState>)> {
    let (config, progress) = load_progress(dir)?;
    let p = dir.join("optimizer.safetensors");
    let store = crate::model::safetensors_store::SafetensorsStore::open_files_public(
        std::slice::from_ref(&p),
    )?;
    let mut state = vec![TensorState::default(); n_tensors];
    for name in store.names().map(str::to_owned).collect::<Vec<_>>() {
        let data = store.get(&name)?.to_f32();
        let parts: Vec<&str> = name.split('.').collect();
        let i: usize = parts[0]
            .parse()
            .map_err(|_| Error::format(&p, format!("bad tensor name {name}")))?;
        let st = state.get_mut(i).ok_or_else(|| {
            Error::format(&p, format!("tensor {name} beyond the model's {n_tensors}"))
        })?;
        match parts.as_slice() {
            [_, "m"] => st.m = data,
            [_, "v"] => st.v = data,
            [_, kind @ ("row" | "col"), piece] => {
                let k: usize = piece
                    .parse()
                    .map_err(|_| Error::format(&p, format!("bad tensor name {name}")))?;
                let list = if *kind == "row" {
                    &mut st.row
                } else {
                    &mut st.col
                };
                if list.len() <= k {
                    list.resize(k + 1, Vec::new());
                }
                list[k] = data;
            }
            _ => return Err(Error::format(&p, format!("unexpected tensor {name}"))),
        }
    }
    Ok((config, progress, state))
}

//! Broken checkpoints and invalid caller input: every case must be an `Err` whose message
//! names the file, tensor or field at fault, never a panic.

mod common;

use armsrace::tokenize::Tokenizer;
use armsrace::{Batch, Cpu, GradRequest, Model, ModelConfig, Objective};
use common::fixture;
use serde_json::{json, Map, Value};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------
// Helpers

/// A writable copy of a fixture directory.
fn copy_fixture(name: &str) -> TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(fixture(name)).expect("fixture dir") {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
        }
    }
    tmp
}

/// Runs `f`, turning a panic into a test failure that says which case panicked.
fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(p) => {
            let msg = armsrace::error::panic_message(p.as_ref());
            panic!("{what}: panicked instead of returning an Err: {msg}")
        }
    }
}

/// The error message of a load that must fail.
fn load_err(what: &str, dir: &Path) -> String {
    match no_panic(what, || Model::load(dir, Cpu)) {
        Ok(_) => panic!("{what}: loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn expect_err<T>(what: &str, r: armsrace::Result<T>) -> String {
    match r {
        Ok(_) => panic!("{what}: expected an Err"),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(what: &str, msg: &str, needles: &[&str]) {
    for n in needles {
        assert!(
            msg.contains(n),
            "{what}: error message does not mention {n:?}:\n  {msg}"
        );
    }
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn write_json(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap()).unwrap();
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut Map<String, Value>)) {
    let path = dir.join("config.json");
    let mut v = read_json(&path);
    f(v.as_object_mut().unwrap());
    write_json(&path, &v);
}

/// A safetensors file split into its JSON header and its data bytes.
struct StFile {
    header: Map<String, Value>,
    data: Vec<u8>,
}

fn read_st(path: &Path) -> StFile {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    StFile {
        header: header.as_object().unwrap().clone(),
        data: bytes[8 + n..].to_vec(),
    }
}

/// Writes `header` and `data` as given (no validation): 8-byte LE length, JSON, bytes.
fn write_st_raw(path: &Path, header: &Map<String, Value>, data: &[u8]) {
    let mut h = serde_json::to_vec(header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    std::fs::write(path, out).unwrap();
}

/// One tensor of a safetensors file: name, dtype string, shape, bytes.
struct RawTensor {
    name: String,
    dtype: String,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl StFile {
    fn offsets(&self, name: &str) -> (usize, usize) {
        let o = self.header[name]["data_offsets"].as_array().unwrap();
        (
            o[0].as_u64().unwrap() as usize,
            o[1].as_u64().unwrap() as usize,
        )
    }

    /// Tensors in file order.
    fn tensors(&self) -> Vec<RawTensor> {
        let mut names: Vec<&String> = self
            .header
            .keys()
            .filter(|k| *k != "__metadata__")
            .collect();
        names.sort_by_key(|n| self.offsets(n).0);
        names
            .into_iter()
            .map(|n| {
                let (s, e) = self.offsets(n);
                let t = &self.header[n];
                RawTensor {
                    name: n.clone(),
                    dtype: t["dtype"].as_str().unwrap().to_owned(),
                    shape: t["shape"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_u64().unwrap() as usize)
                        .collect(),
                    bytes: self.data[s..e].to_vec(),
                }
            })
            .collect()
    }
}

/// Rewrites a safetensors file after `f` edits its tensor list; offsets are laid out anew
/// (contiguous, consistent), so only what `f` changed is wrong in the result.
fn rewrite_tensors(path: &Path, f: impl FnOnce(&mut Vec<RawTensor>)) {
    let st = read_st(path);
    let mut tensors = st.tensors();
    f(&mut tensors);
    let mut header = Map::new();
    if let Some(m) = st.header.get("__metadata__") {
        header.insert("__metadata__".into(), m.clone());
    }
    let mut data = Vec::new();
    for t in &tensors {
        let s = data.len();
        data.extend_from_slice(&t.bytes);
        header.insert(
            t.name.clone(),
            json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [s, data.len()]}),
        );
    }
    write_st_raw(path, &header, &data);
}

fn cls_model() -> Model<Cpu> {
    Model::load(&fixture("neox-parallel-cls"), Cpu).expect("fixture loads")
}

fn lm_model() -> Model<Cpu> {
    Model::load(&fixture("qwen2-gqa-tied-lm"), Cpu).expect("fixture loads")
}

// ---------------------------------------------------------------------------------------------
// The fixtures themselves load (so every failure below is caused by the damage we do).

#[test]
fn undamaged_copies_load() {
    for name in ["neox-parallel-cls", "qwen2-untied-cls"] {
        let tmp = copy_fixture(name);
        Model::load(tmp.path(), Cpu).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // And a rewrite that changes nothing keeps it loadable (the rewriter itself is sound).
    let tmp = copy_fixture("neox-parallel-cls");
    rewrite_tensors(&tmp.path().join("model.safetensors"), |_| {});
    Model::load(tmp.path(), Cpu).expect("rewritten copy loads");
}

// ---------------------------------------------------------------------------------------------
// Directory and config.json

#[test]
fn missing_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("no-such-model");
    let msg = load_err("missing dir", &dir);
    assert_mentions("missing dir", &msg, &["no-such-model", "does not exist"]);
}

#[test]
fn missing_config() {
    let tmp = copy_fixture("neox-parallel-cls");
    std::fs::remove_file(tmp.path().join("config.json")).unwrap();
    let msg = load_err("missing config", tmp.path());
    assert_mentions("missing config", &msg, &["config.json"]);
}

#[test]
fn config_not_json() {
    let tmp = copy_fixture("neox-parallel-cls");
    std::fs::write(
        tmp.path().join("config.json"),
        "{\"hidden_size\": 64,, oops",
    )
    .unwrap();
    let msg = load_err("config not JSON", tmp.path());
    assert_mentions("config not JSON", &msg, &["config.json", "JSON"]);
}

#[test]
fn config_missing_required_fields() {
    for field in [
        "hidden_size",
        "num_attention_heads",
        "num_hidden_layers",
        "intermediate_size",
        "vocab_size",
        "architectures",
    ] {
        let tmp = copy_fixture("neox-parallel-cls");
        edit_config(tmp.path(), |c| {
            c.remove(field);
        });
        let msg = load_err(field, tmp.path());
        assert_mentions(field, &msg, &[field, "missing"]);
    }
}

#[test]
fn config_wrong_field_types() {
    let cases: Vec<(&str, Value)> = vec![
        ("hidden_size", json!("64")),
        ("hidden_size", json!(0)),
        ("vocab_size", json!(-3)),
        ("num_attention_heads", json!(5)), // does not divide hidden_size 64
        ("architectures", json!("GPTNeoXForCausalLM")),
        ("use_parallel_residual", json!("yes")),
        ("hidden_act", json!("relu")),
    ];
    for (field, value) in cases {
        let tmp = copy_fixture("neox-parallel-cls");
        let what = format!("{field} = {value}");
        edit_config(tmp.path(), |c| {
            c.insert(field.into(), value.clone());
        });
        let msg = load_err(&what, tmp.path());
        assert_mentions(&what, &msg, &[field]);
    }
    // Qwen2: kv heads must divide heads.
    let tmp = copy_fixture("qwen2-gqa-tied-lm");
    edit_config(tmp.path(), |c| {
        c.insert("num_key_value_heads".into(), json!(3));
    });
    let msg = load_err("kv heads 3", tmp.path());
    assert_mentions("kv heads 3", &msg, &["num_key_value_heads"]);
}

#[test]
fn unknown_architecture_lists_supported_ones() {
    let tmp = copy_fixture("neox-parallel-cls");
    edit_config(tmp.path(), |c| {
        c.insert("architectures".into(), json!(["LlamaForCausalLM"]));
    });
    let msg = load_err("llama", tmp.path());
    assert_mentions(
        "llama",
        &msg,
        &[
            "architectures",
            "LlamaForCausalLM",
            "GPTNeoXForCausalLM",
            "GPTNeoXForSequenceClassification",
            "Qwen2ForCausalLM",
            "Qwen2ForSequenceClassification",
        ],
    );
}

#[test]
fn unsupported_rope_type() {
    // transformers >= 5 layout.
    let tmp = copy_fixture("neox-parallel-cls");
    edit_config(tmp.path(), |c| {
        c["rope_parameters"]["rope_type"] = json!("yarn");
    });
    let msg = load_err("yarn", tmp.path());
    assert_mentions("yarn", &msg, &["rope_parameters", "yarn"]);
    // Legacy layout (Qwen2.5 writes `rope_scaling`).
    let tmp = copy_fixture("qwen2-mha-lm-f16");
    edit_config(tmp.path(), |c| {
        c.insert(
            "rope_scaling".into(),
            json!({"type": "linear", "factor": 2.0}),
        );
    });
    let msg = load_err("linear", tmp.path());
    assert_mentions("linear", &msg, &["rope_scaling", "linear"]);
}

// ---------------------------------------------------------------------------------------------
// Single-file safetensors

#[test]
fn missing_weights_file() {
    let tmp = copy_fixture("neox-parallel-cls");
    std::fs::remove_file(tmp.path().join("model.safetensors")).unwrap();
    let msg = load_err("no weights", tmp.path());
    let dir = tmp.path().display().to_string();
    assert_mentions("no weights", &msg, &[&dir, "model.safetensors"]);
}

#[test]
fn truncated_weights_file() {
    let tmp = copy_fixture("neox-parallel-cls");
    let path = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_err("truncated", tmp.path());
    assert_mentions("truncated", &msg, &["model.safetensors"]);
    // Also cut just the last byte (header intact, data one byte short).
    std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
    let msg = load_err("one byte short", tmp.path());
    assert_mentions("one byte short", &msg, &["model.safetensors"]);
}

#[test]
fn tiny_or_empty_weights_file() {
    for len in [0usize, 3, 8] {
        let tmp = copy_fixture("neox-parallel-cls");
        let path = tmp.path().join("model.safetensors");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..len]).unwrap();
        let what = format!("{len}-byte file");
        let msg = load_err(&what, tmp.path());
        assert_mentions(&what, &msg, &["model.safetensors"]);
    }
}

#[test]
fn header_length_past_end_of_file() {
    for bogus in [None, Some(u64::MAX), Some(1u64 << 40)] {
        let tmp = copy_fixture("neox-parallel-cls");
        let path = tmp.path().join("model.safetensors");
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bogus.unwrap_or(bytes.len() as u64 + 100);
        bytes[..8].copy_from_slice(&n.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let what = format!("header length {n}");
        let msg = load_err(&what, tmp.path());
        assert_mentions(&what, &msg, &["model.safetensors"]);
    }
}

#[test]
fn header_not_json() {
    let tmp = copy_fixture("neox-parallel-cls");
    let path = tmp.path().join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8] = b'['; // the header must be a JSON object starting with '{'
    bytes[9] = b'!';
    std::fs::write(&path, &bytes).unwrap();
    let msg = load_err("header not JSON", tmp.path());
    assert_mentions("header not JSON", &msg, &["model.safetensors"]);
}

#[test]
fn overlapping_data_offsets() {
    let tmp = copy_fixture("neox-parallel-cls");
    let path = tmp.path().join("model.safetensors");
    let mut st = read_st(&path);
    let tensors = st.tensors();
    // Make the second tensor start 4 bytes inside the first one (same length).
    let victim = &tensors[1].name;
    let (s, e) = st.offsets(victim);
    st.header[victim]["data_offsets"] = json!([s - 4, e - 4]);
    write_st_raw(&path, &st.header, &st.data);
    let msg = load_err("overlap", tmp.path());
    assert_mentions("overlap", &msg, &["model.safetensors"]);
}

#[test]
fn out_of_bounds_data_offsets() {
    let tmp = copy_fixture("neox-parallel-cls");
    let path = tmp.path().join("model.safetensors");
    let mut st = read_st(&path);
    let tensors = st.tensors();
    let last = &tensors.last().unwrap().name;
    let (s, e) = st.offsets(last);
    // Ends past the data: shape and byte count stay consistent, so only bounds are wrong.
    st.header[last]["data_offsets"] = json!([s, e + 4096]);
    let mut shape: Vec<usize> = tensors.last().unwrap().shape.clone();
    let elem = 4; // the fixture is f32
    let numel = (e + 4096 - s) / elem;
    shape = if shape.len() == 1 {
        vec![numel]
    } else {
        vec![numel / shape[1], shape[1]]
    };
    st.header[last]["shape"] = json!(shape);
    write_st_raw(&path, &st.header, &st.data);
    let msg = load_err("out of bounds", tmp.path());
    assert_mentions("out of bounds", &msg, &["model.safetensors", last.as_str()]);

    // Offsets whose byte count disagrees with dtype x shape.
    let tmp = copy_fixture("neox-parallel-cls");
    let path = tmp.path().join("model.safetensors");
    let mut st = read_st(&path);
    let first = st.tensors()[0].name.clone();
    let (s, e) = st.offsets(&first);
    st.header[&first]["data_offsets"] = json!([s, e + 4]);
    write_st_raw(&path, &st.header, &st.data);
    let msg = load_err("size mismatch", tmp.path());
    // The message names the tensor, not only "invalid shape, data type, or offset".
    assert_mentions(
        "size mismatch",
        &msg,
        &["model.safetensors", first.as_str()],
    );
}

#[test]
fn unsupported_dtype() {
    let tmp = copy_fixture("neox-parallel-cls");
    let path = tmp.path().join("model.safetensors");
    let name = "gpt_neox.layers.1.attention.dense.weight";
    rewrite_tensors(&path, |ts| {
        let t = ts.iter_mut().find(|t| t.name == name).unwrap();
        assert_eq!(t.dtype, "F32");
        t.dtype = "I32".into(); // same byte size, so the file is valid safetensors
    });
    let msg = load_err("I32", tmp.path());
    assert_mentions("I32", &msg, &["model.safetensors", name, "I32"]);
}

#[test]
fn shape_disagrees_with_config() {
    // vocab_size in config.json no longer matches the embedding.
    let tmp = copy_fixture("neox-parallel-cls");
    edit_config(tmp.path(), |c| {
        c.insert("vocab_size".into(), json!(512));
    });
    let msg = load_err("vocab 512", tmp.path());
    assert_mentions(
        "vocab 512",
        &msg,
        &["gpt_neox.embed_in.weight", "512", "400"],
    );

    // hidden_size changed (still divisible by the heads).
    let tmp = copy_fixture("qwen2-untied-cls");
    edit_config(tmp.path(), |c| {
        c.insert("hidden_size".into(), json!(128));
    });
    let msg = load_err("hidden 128", tmp.path());
    assert_mentions("hidden 128", &msg, &["tensor `", "128"]);

    // intermediate_size changed: the first MLP tensor is named.
    let tmp = copy_fixture("qwen2-untied-cls");
    edit_config(tmp.path(), |c| {
        c.insert("intermediate_size".into(), json!(100));
    });
    let msg = load_err("inter 100", tmp.path());
    assert_mentions("inter 100", &msg, &["model.layers.0.mlp.", "100"]);

    // A tensor stored with a transposed shape (same bytes): named, with both shapes.
    let tmp = copy_fixture("neox-parallel-cls");
    let name = "gpt_neox.layers.0.mlp.dense_h_to_4h.weight"; // [128, 64]
    rewrite_tensors(&tmp.path().join("model.safetensors"), |ts| {
        let t = ts.iter_mut().find(|t| t.name == name).unwrap();
        t.shape = vec![64, 128];
    });
    let msg = load_err("transposed", tmp.path());
    assert_mentions("transposed", &msg, &[name, "[64, 128]", "[128, 64]"]);

    // num_labels disagrees with the classifier head.
    let tmp = copy_fixture("neox-parallel-cls");
    edit_config(tmp.path(), |c| {
        c.insert("num_labels".into(), json!(3));
        c.remove("id2label");
        c.remove("label2id");
    });
    let msg = load_err("num_labels 3", tmp.path());
    assert_mentions("num_labels 3", &msg, &["score.weight"]);
}

#[test]
fn missing_tensor() {
    let tmp = copy_fixture("neox-parallel-cls");
    let name = "gpt_neox.layers.1.mlp.dense_4h_to_h.bias";
    rewrite_tensors(&tmp.path().join("model.safetensors"), |ts| {
        let before = ts.len();
        ts.retain(|t| t.name != name);
        assert_eq!(ts.len(), before - 1);
    });
    let msg = load_err("missing tensor", tmp.path());
    assert_mentions("missing tensor", &msg, &[name, "missing"]);

    // The classifier head of a causal-LM checkpoint relabelled as a classifier.
    let tmp = copy_fixture("qwen2-mha-lm-f16");
    edit_config(tmp.path(), |c| {
        c.insert(
            "architectures".into(),
            json!(["Qwen2ForSequenceClassification"]),
        );
    });
    let msg = load_err("no score", tmp.path());
    assert_mentions("no score", &msg, &["score.weight", "missing"]);

    // An untied LM with its head removed.
    let tmp = copy_fixture("qwen2-mha-lm-f16");
    rewrite_tensors(&tmp.path().join("model.safetensors"), |ts| {
        ts.retain(|t| t.name != "lm_head.weight");
    });
    let msg = load_err("no lm_head", tmp.path());
    assert_mentions("no lm_head", &msg, &["lm_head.weight", "missing"]);
}

// ---------------------------------------------------------------------------------------------
// Sharded checkpoints

const INDEX: &str = "model.safetensors.index.json";

fn edit_index(dir: &Path, f: impl FnOnce(&mut Map<String, Value>)) {
    let path = dir.join(INDEX);
    let mut v = read_json(&path);
    f(v["weight_map"].as_object_mut().unwrap());
    write_json(&path, &v);
}

#[test]
fn index_points_to_missing_shard() {
    let tmp = copy_fixture("qwen2-untied-cls");
    edit_index(tmp.path(), |m| {
        m["model.norm.weight"] = json!("model-00004-of-00003.safetensors");
    });
    let msg = load_err("missing shard", tmp.path());
    assert_mentions("missing shard", &msg, &["model-00004-of-00003.safetensors"]);

    // A shard file deleted from disk.
    let tmp = copy_fixture("qwen2-untied-cls");
    std::fs::remove_file(tmp.path().join("model-00002-of-00003.safetensors")).unwrap();
    let msg = load_err("deleted shard", tmp.path());
    assert_mentions("deleted shard", &msg, &["model-00002-of-00003.safetensors"]);
}

#[test]
fn index_lists_tensor_in_wrong_shard() {
    let tmp = copy_fixture("qwen2-untied-cls");
    let name = "model.embed_tokens.weight"; // lives in shard 1
    edit_index(tmp.path(), |m| {
        assert_eq!(m[name], json!("model-00001-of-00003.safetensors"));
        m[name] = json!("model-00002-of-00003.safetensors");
    });
    let msg = load_err("wrong shard", tmp.path());
    assert_mentions(
        "wrong shard",
        &msg,
        &[
            INDEX,
            name,
            "model-00001-of-00003.safetensors",
            "model-00002-of-00003.safetensors",
        ],
    );
}

#[test]
fn index_lists_tensor_no_shard_has() {
    let tmp = copy_fixture("qwen2-untied-cls");
    let name = "model.layers.1.self_attn.o_proj.weight";
    let shard = read_json(&tmp.path().join(INDEX))["weight_map"][name]
        .as_str()
        .unwrap()
        .to_owned();
    rewrite_tensors(&tmp.path().join(&shard), |ts| {
        ts.retain(|t| t.name != name);
    });
    let msg = load_err("tensor gone from shard", tmp.path());
    assert_mentions("tensor gone from shard", &msg, &[INDEX, name, &shard]);
}

#[test]
fn tensor_in_two_shards() {
    let tmp = copy_fixture("qwen2-untied-cls");
    let name = "model.norm.weight";
    let idx = read_json(&tmp.path().join(INDEX));
    let home = idx["weight_map"][name].as_str().unwrap().to_owned();
    let other = [
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
    ]
    .into_iter()
    .find(|s| *s != home)
    .unwrap();
    let copy = read_st(&tmp.path().join(&home))
        .tensors()
        .into_iter()
        .find(|t| t.name == name)
        .unwrap();
    rewrite_tensors(&tmp.path().join(other), |ts| ts.push(copy));
    let msg = load_err("duplicate", tmp.path());
    assert_mentions("duplicate", &msg, &[name]);
}

#[test]
fn index_not_json_or_without_weight_map() {
    let tmp = copy_fixture("qwen2-untied-cls");
    std::fs::write(tmp.path().join(INDEX), "{ not json").unwrap();
    let msg = load_err("index not JSON", tmp.path());
    assert_mentions("index not JSON", &msg, &[INDEX]);

    let tmp = copy_fixture("qwen2-untied-cls");
    write_json(&tmp.path().join(INDEX), &json!({"metadata": {}}));
    let msg = load_err("no weight_map", tmp.path());
    assert_mentions("no weight_map", &msg, &[INDEX, "weight_map"]);

    let tmp = copy_fixture("qwen2-untied-cls");
    edit_index(tmp.path(), |m| {
        m["model.norm.weight"] = json!("../model.safetensors");
    });
    let msg = load_err("path escape", tmp.path());
    assert_mentions("path escape", &msg, &[INDEX, "../model.safetensors"]);
}

#[test]
fn truncated_shard() {
    let tmp = copy_fixture("qwen2-untied-cls");
    let path = tmp.path().join("model-00003-of-00003.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_err("truncated shard", tmp.path());
    assert_mentions(
        "truncated shard",
        &msg,
        &["model-00003-of-00003.safetensors"],
    );
}

// ---------------------------------------------------------------------------------------------
// Caller input

#[test]
fn token_id_out_of_vocab() {
    for model in [cls_model(), lm_model()] {
        let v = model.cfg.vocab as u32;
        let batch = Batch::from_sequences(&[vec![5, 6, 7], vec![8, v + 7]], 1).unwrap();
        let msg = expect_err("big id", no_panic("big id", || model.logits(&batch)));
        assert_mentions(
            "big id",
            &msg,
            &[&format!("token id {}", v + 7), &format!("vocab size {v}")],
        );
        // Exactly the vocab size is already out of range.
        let batch = Batch::from_sequences(&[vec![v]], 1).unwrap();
        let msg = expect_err(
            "id = vocab",
            no_panic("id = vocab", || model.logits(&batch)),
        );
        assert_mentions("id = vocab", &msg, &[&format!("token id {v}")]);
        // The same through the loss path and the prefix path.
        let objective = match model.cfg.num_labels() {
            Some(_) => Objective::Classify { labels: vec![0] },
            None => Objective::Target {
                mask: vec![false, true],
            },
        };
        let batch = Batch::from_sequences(&[vec![3, v + 1]], 1).unwrap();
        let msg = expect_err(
            "big id loss",
            no_panic("big id loss", || {
                model.loss_and_grads(&batch, &objective, &GradRequest::default())
            }),
        );
        assert_mentions("big id loss", &msg, &[&format!("token id {}", v + 1)]);
        let msg = expect_err(
            "big id prefix",
            no_panic("big id prefix", || model.prefix_cache(&[3, v + 2])),
        );
        assert_mentions("big id prefix", &msg, &[&format!("token id {}", v + 2)]);
        let cache = model.prefix_cache(&[3, 4]).unwrap();
        let msg = expect_err(
            "big id continuation",
            no_panic("big id continuation", || {
                model.logits_with_prefix(&cache, &batch)
            }),
        );
        assert_mentions(
            "big id continuation",
            &msg,
            &[&format!("token id {}", v + 1)],
        );
    }
}

#[test]
fn empty_batch_and_empty_sequences() {
    let msg = expect_err("empty batch", Batch::from_sequences(&[], 1));
    assert_mentions("empty batch", &msg, &["empty batch"]);
    let msg = expect_err("all empty", Batch::from_sequences(&[vec![], vec![]], 1));
    assert_mentions("all empty", &msg, &["empty"]);

    // One empty sequence among real ones: a classifier has nothing to read for it.
    let model = cls_model();
    let batch = Batch::from_sequences(&[vec![5, 6], vec![]], 1).unwrap();
    let msg = expect_err("empty seq", no_panic("empty seq", || model.logits(&batch)));
    assert_mentions("empty seq", &msg, &["sequence 1", "empty"]);
    let msg = expect_err(
        "empty seq loss",
        no_panic("empty seq loss", || {
            model.loss_and_grads(
                &batch,
                &Objective::Classify { labels: vec![0, 1] },
                &GradRequest::default(),
            )
        }),
    );
    assert_mentions("empty seq loss", &msg, &["sequence 1", "empty"]);

    // A causal LM has no target in an empty sequence.
    let model = lm_model();
    let msg = expect_err(
        "empty seq target",
        no_panic("empty seq target", || {
            model.loss_and_grads(
                &batch,
                &Objective::Target {
                    mask: vec![false, true, false, false],
                },
                &GradRequest::default(),
            )
        }),
    );
    assert_mentions("empty seq target", &msg, &["sequence 1"]);

    let msg = expect_err(
        "empty prefix",
        no_panic("empty prefix", || model.prefix_cache(&[])),
    );
    assert_mentions("empty prefix", &msg, &["empty prefix"]);
}

#[test]
fn bad_attention_mask() {
    let msg = expect_err(
        "left padded",
        Batch::from_mask(vec![1, 5, 6, 7], &[0, 1, 1, 1], 1, 4),
    );
    assert_mentions("left padded", &msg, &["sequence 0", "right-padded"]);
    let msg = expect_err(
        "sizes",
        Batch::from_mask(vec![1, 5, 6], &[1, 1, 1, 1], 1, 4),
    );
    assert_mentions("sizes", &msg, &["ids (3)", "mask (4)"]);
}

/// Batches built by hand (the fields are public) with inconsistent shapes.
fn inconsistent_batches() -> Vec<(&'static str, Batch)> {
    let mk = |ids: Vec<u32>, batch, seq, lens| Batch {
        ids,
        batch,
        seq,
        lens,
    };
    vec![
        (
            "lens longer than seq",
            mk(vec![5, 6, 7, 8], 2, 2, vec![2, 3]),
        ),
        ("too few lens", mk(vec![5, 6, 7, 8], 2, 2, vec![2])),
        ("too few ids", mk(vec![5, 6, 7], 2, 2, vec![2, 1])),
        ("zero seq", mk(vec![500], 1, 0, vec![0])),
        ("zero sequences", mk(vec![], 0, 3, vec![])),
    ]
}

fn target_mask_for(batch: &Batch) -> Vec<bool> {
    let mut mask = vec![false; batch.batch * batch.seq];
    for b in 0..batch.batch {
        if batch.seq > 1 {
            mask[b * batch.seq + 1] = true;
        }
    }
    mask
}

#[test]
fn inconsistent_hand_built_batch() {
    let (cls, lm) = (cls_model(), lm_model());
    let cache = lm.prefix_cache(&[3, 4]).unwrap();
    for (what, batch) in &inconsistent_batches() {
        let msg = expect_err(what, no_panic(what, || cls.logits(batch)));
        assert_mentions(what, &msg, &["invalid input"]);
        let msg = expect_err(what, no_panic(what, || lm.logits(batch)));
        assert_mentions(what, &msg, &["invalid input"]);
        let msg = expect_err(
            what,
            no_panic(what, || lm.logits_with_prefix(&cache, batch)),
        );
        assert_mentions(what, &msg, &["invalid input"]);
        let msg = expect_err(
            what,
            no_panic(what, || {
                cls.loss_and_grads(
                    batch,
                    &Objective::Classify {
                        labels: vec![0; batch.batch],
                    },
                    &GradRequest::default(),
                )
            }),
        );
        assert_mentions(what, &msg, &["invalid input"]);
    }
}

/// The target-string objective reads `lens` and `ids` while building its rows, before the
/// batch shape is checked (`Model::loss_rows` in src/model/mod.rs): an inconsistent batch
/// panicked there before loss_rows called `batch.check_shape()` first.
#[test]
fn inconsistent_hand_built_batch_target_loss() {
    let lm = lm_model();
    let cache = lm.prefix_cache(&[3, 4]).unwrap();
    for (what, batch) in &inconsistent_batches() {
        let objective = Objective::Target {
            mask: target_mask_for(batch),
        };
        let msg = expect_err(
            what,
            no_panic(what, || {
                lm.loss_and_grads(batch, &objective, &GradRequest::default())
            }),
        );
        assert_mentions(what, &msg, &["invalid input"]);
        let msg = expect_err(
            what,
            no_panic(what, || lm.loss_with_prefix(&cache, batch, &objective)),
        );
        assert_mentions(what, &msg, &["invalid input"]);
    }
}

#[test]
fn labels_out_of_range_or_miscounted() {
    let model = cls_model();
    let batch = Batch::from_sequences(&[vec![5, 6], vec![7]], 1).unwrap();
    let run = |labels: Vec<u32>| {
        no_panic("labels", || {
            model.loss_and_grads(
                &batch,
                &Objective::Classify { labels },
                &GradRequest::default(),
            )
        })
    };
    let msg = expect_err("label 2", run(vec![0, 2]));
    assert_mentions("label 2", &msg, &["label 2", "2 classes"]);
    let msg = expect_err("label count", run(vec![0]));
    assert_mentions("label count", &msg, &["1 labels", "2 sequences"]);
    let cache = model.prefix_cache(&[9, 10]).unwrap();
    let msg = expect_err(
        "label 7 prefix",
        no_panic("label 7 prefix", || {
            model.loss_with_prefix(&cache, &batch, &Objective::Classify { labels: vec![7, 0] })
        }),
    );
    assert_mentions("label 7 prefix", &msg, &["label 7"]);
}

#[test]
fn target_mask_errors() {
    let model = lm_model();
    let batch = Batch::from_sequences(&[vec![5, 6, 7], vec![8, 9]], 397).unwrap();
    let run = |mask: Vec<bool>| {
        no_panic("target", || {
            model.loss_and_grads(&batch, &Objective::Target { mask }, &GradRequest::default())
        })
    };
    let t = true;
    let f = false;
    let msg = expect_err("no targets", run(vec![f, t, t, f, f, f]));
    assert_mentions("no targets", &msg, &["sequence 1", "no target"]);
    let msg = expect_err("position 0", run(vec![t, f, f, f, t, f]));
    assert_mentions("position 0", &msg, &["sequence 0", "position 0"]);
    let msg = expect_err("target on pad", run(vec![f, t, f, f, t, t]));
    assert_mentions("target on pad", &msg, &["sequence 1", "position 2"]);
    let msg = expect_err("mask length", run(vec![f, t, t]));
    assert_mentions("mask length", &msg, &["3 entries", "6"]);
    let cache = model.prefix_cache(&[11]).unwrap();
    let msg = expect_err(
        "no targets prefix",
        no_panic("no targets prefix", || {
            model.loss_with_prefix(&cache, &batch, &Objective::Target { mask: vec![f; 6] })
        }),
    );
    assert_mentions("no targets prefix", &msg, &["sequence 0", "no target"]);
}

#[test]
fn objective_does_not_fit_head() {
    let batch = Batch::from_sequences(&[vec![5, 6, 7]], 1).unwrap();
    let msg = expect_err(
        "classify on LM",
        lm_model().loss_and_grads(
            &batch,
            &Objective::Classify { labels: vec![0] },
            &GradRequest::default(),
        ),
    );
    assert_mentions("classify on LM", &msg, &["classifier"]);
    let msg = expect_err(
        "target on classifier",
        cls_model().loss_and_grads(
            &batch,
            &Objective::Target {
                mask: vec![false, true, true],
            },
            &GradRequest::default(),
        ),
    );
    assert_mentions("target on classifier", &msg, &["causal-LM"]);
}

#[test]
fn onehot_row_outside_batch() {
    let model = lm_model();
    let batch = Batch::from_sequences(&[vec![5, 6, 7]], 1).unwrap();
    let req = GradRequest {
        onehot_rows: Some(vec![0, 3]),
        weights: false,
    };
    let msg = expect_err(
        "onehot row",
        no_panic("onehot row", || {
            model.loss_and_grads(
                &batch,
                &Objective::Target {
                    mask: vec![false, true, true],
                },
                &req,
            )
        }),
    );
    assert_mentions("onehot row", &msg, &["row 3", "3 rows"]);
}

#[test]
fn config_from_json_errors_name_the_field() {
    let base = read_json(&fixture("qwen2-gqa-tied-lm").join("config.json"));
    ModelConfig::from_json(&base).expect("fixture config parses");
    let mut v = base.clone();
    v.as_object_mut().unwrap().remove("intermediate_size");
    let msg = expect_err("no intermediate", ModelConfig::from_json(&v));
    assert_mentions("no intermediate", &msg, &["intermediate_size"]);
    let mut v = base.clone();
    v["architectures"] = json!([]);
    let msg = expect_err("empty archs", ModelConfig::from_json(&v));
    assert_mentions("empty archs", &msg, &["architectures"]);
    let mut v = base;
    v["pad_token_id"] = json!("x");
    let msg = expect_err("pad string", ModelConfig::from_json(&v));
    assert_mentions("pad string", &msg, &["pad_token_id"]);
}

// ---------------------------------------------------------------------------------------------
// Tokenizer files

#[test]
fn tokenizer_missing_or_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let missing: PathBuf = tmp.path().join("tokenizer.json");
    let msg = expect_err("missing tokenizer", Tokenizer::from_file(&missing));
    assert_mentions("missing tokenizer", &msg, &[&missing.display().to_string()]);

    for (what, content) in [
        ("not JSON", "{\"model\": [oops".to_string()),
        ("empty object", "{}".to_string()),
        ("empty file", String::new()),
    ] {
        let path = tmp.path().join(format!("{}.json", what.replace(' ', "_")));
        std::fs::write(&path, content).unwrap();
        let msg = expect_err(what, no_panic(what, || Tokenizer::from_file(&path)));
        assert_mentions(what, &msg, &[&path.display().to_string()]);
    }

    // A real tokenizer cut in half.
    let good = std::fs::read(fixture("tokenizer-qwen").join("tokenizer.json")).unwrap();
    let path = tmp.path().join("half.json");
    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    let msg = expect_err("half", no_panic("half", || Tokenizer::from_file(&path)));
    assert_mentions("half", &msg, &["half.json"]);

    // A directory where a file is expected.
    let msg = expect_err("dir", no_panic("dir", || Tokenizer::from_file(tmp.path())));
    assert_mentions("dir", &msg, &[&tmp.path().display().to_string()]);
}

#[test]
fn data_for_a_generated_task_is_refused() {
    let task = armsrace::task::Task::from_name("password-match").unwrap();
    let e = expect_err(
        "--data with a generated task",
        armsrace::attack::session::load_examples(&task, Some(Path::new("x.jsonl")), 4, 0),
    );
    assert_mentions(
        "--data with a generated task",
        &e,
        &["x.jsonl", "generated"],
    );
}

// ---------------------------------------------------------------------------------------------
// Context length: every entry point refuses a sequence past max_position_embeddings (128 in
// the fixtures) before doing any work, naming the input and both lengths.

#[test]
fn sequences_past_the_context_are_refused_everywhere() {
    let m = cls_model();
    assert_eq!(m.cfg.max_positions, 128);
    let long = vec![5u32; 129];
    let batch = Batch::from_sequences(std::slice::from_ref(&long), 0).unwrap();
    let e = expect_err("logits", m.logits(&batch));
    assert_mentions(
        "logits",
        &e,
        &["129 tokens", "max_position_embeddings (128)"],
    );
    let e = expect_err("prefix cache", m.prefix_cache(&long).map(|_| ()));
    assert_mentions("prefix cache", &e, &["129 tokens"]);
    let cache = m.prefix_cache(&long[..100]).unwrap();
    let e = expect_err(
        "continuation past the context",
        m.extend_prefix(Some(&cache), &long[..29]).map(|_| ()),
    );
    assert_mentions("continuation", &e, &["129 tokens"]);
    let req = GradRequest::default();
    let obj = Objective::Classify { labels: vec![0] };
    let e = expect_err("loss", m.loss_and_grads(&batch, &obj, &req).map(|_| ()));
    assert_mentions("loss", &e, &["129 tokens"]);
    // Exactly the context is fine.
    let fits = Batch::from_sequences(&[long[..128].to_vec()], 0).unwrap();
    m.logits(&fits).unwrap();
}

fn armsrace_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_armsrace"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_huge_text_is_refused_fast_or_truncated_on_request() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.jsonl");
    let huge = "word ".repeat(40_000); // 200,000 characters
    std::fs::write(
        &input,
        format!(
            "{}\n\n{}\n",
            json!({"text": "short"}),
            json!({"text": huge})
        ),
    )
    .unwrap();
    let model = fixture("neox-parallel-cls");
    let (m, i) = (model.to_str().unwrap(), input.to_str().unwrap());
    let t = std::time::Instant::now();
    let out = armsrace_cli(&["classify", "--model", m, "--input", i]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // The file's line 3 (line 2 is blank), with both lengths.
    assert_mentions(
        "classify",
        &err,
        &["line 3", "max_position_embeddings (128)", "--truncate"],
    );
    assert!(t.elapsed().as_secs() < 20, "took {:?}", t.elapsed());
    for side in ["left", "right"] {
        let out = armsrace_cli(&["classify", "--model", m, "--input", i, "--truncate", side]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    }
    // Attack: the example is named before anything runs.
    let data = tmp.path().join("d.jsonl");
    std::fs::write(&data, format!("{}\n", json!({"text": huge, "label": 0}))).unwrap();
    let task = format!("jsonl:{}", data.display());
    let out_dir = tmp.path().join("att");
    let out = armsrace_cli(&[
        "attack",
        "--model",
        m,
        "--task",
        &task,
        "--examples",
        "1",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_mentions(
        "attack",
        &err,
        &["example 0", "max_position_embeddings (128)"],
    );
    // Training: refused at tokenization, naming the example.
    let out = armsrace_cli(&[
        "train",
        "--from",
        m,
        "--task",
        &task,
        "--train-file",
        data.to_str().unwrap(),
        "--val-file",
        data.to_str().unwrap(),
        "--out",
        tmp.path().join("tr").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_mentions(
        "train",
        &err,
        &["example 0", "max_position_embeddings (128)"],
    );
}

// ---------------------------------------------------------------------------------------------
// Device failures surface where they happen: on the GPU path (the CPU harness), a pass whose
// allocation fails must return Err from that very call, never NaN values as Ok.

#[test]
fn every_device_read_back_reports_a_failed_pass() {
    use armsrace::backend::gpu::emu::EmuDevice;
    use armsrace::backend::gpu::{GpuBackend, Precision};
    use armsrace::model::scoring::PrefixView;
    let be = GpuBackend::new(EmuDevice::new(), Precision::F32);
    let m = Model::load(&fixture("neox-parallel-cls"), be).unwrap();
    let ids: Vec<u32> = (3..40).collect();
    let batch = Batch::from_sequences(std::slice::from_ref(&ids), 0).unwrap();
    let cache = m.prefix_cache(&ids[..20]).unwrap();
    let tail = Batch::from_sequences(&[ids[20..].to_vec()], 0).unwrap();
    let obj = Objective::Classify { labels: vec![1] };
    let onehot = GradRequest {
        onehot_rows: Some(vec![2, 3]),
        weights: false,
    };
    let dev = m.backend().device();
    type Case<'a> = (&'a str, Box<dyn Fn() -> armsrace::Result<()> + 'a>);
    let cases: Vec<Case<'_>> = vec![
        ("logits", Box::new(|| m.logits(&batch).map(|_| ()))),
        (
            "logits_with_prefix",
            Box::new(|| m.logits_with_prefix(&cache, &tail).map(|_| ())),
        ),
        (
            "extend_prefix",
            Box::new(|| m.extend_prefix(Some(&cache), &ids[20..25]).map(|_| ())),
        ),
        (
            "logits_at_rows",
            Box::new(|| {
                let v = PrefixView::all(&cache);
                m.logits_at_rows(Some(&v), &tail, &[0, 5], true).map(|_| ())
            }),
        ),
        (
            "one-hot gradient",
            Box::new(|| m.loss_and_grads(&batch, &obj, &onehot).map(|_| ())),
        ),
        (
            "one-hot gradient of a custom loss",
            Box::new(|| {
                m.onehot_grad_with(&batch, &[36], &[2, 3], |z| vec![1.0; z.len()])
                    .map(|_| ())
            }),
        ),
        (
            "loss_with_prefix",
            Box::new(|| m.loss_with_prefix(&cache, &tail, &obj).map(|_| ())),
        ),
    ];
    for (what, f) in &cases {
        // Each works uncapped...
        f().unwrap_or_else(|e| panic!("{what}: {e}"));
        // ...and fails loudly, in the same call, when the device does (no allocation fits:
        // the pass records a failure on the device).
        m.backend().trim();
        dev.set_mem_cap(Some(dev.mem_used()));
        let r = no_panic(what, f);
        dev.set_mem_cap(None);
        let e = r
            .err()
            .unwrap_or_else(|| panic!("{what}: Ok from a failed device pass"));
        assert!(e.is_out_of_memory(), "{what}: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Sizes and constants no checkpoint has: refused from config.json, before any allocation
// (they used to abort on a failed allocation of terabytes, or panic on a capacity overflow).

#[test]
fn absurd_config_numbers_are_refused_before_allocating() {
    let cases: [(&str, Value, &[&str]); 8] = [
        (
            "vocab_size",
            json!(10_000_000_000_000u64),
            &["vocab_size", "outside"],
        ),
        ("vocab_size", json!(u64::MAX), &["vocab_size", "outside"]),
        (
            "hidden_size",
            json!(1u64 << 40),
            &["hidden_size", "outside"],
        ),
        (
            "intermediate_size",
            json!(1u64 << 30),
            &["intermediate_size", "outside"],
        ),
        (
            "num_hidden_layers",
            json!(1_000_000),
            &["num_hidden_layers", "outside"],
        ),
        (
            "layer_norm_eps",
            json!(-1e-5),
            &["layer_norm_eps", "positive"],
        ),
        (
            "layer_norm_eps",
            json!(0.0),
            &["layer_norm_eps", "positive"],
        ),
        ("num_labels", json!(1u64 << 20), &["num_labels"]),
    ];
    for (field, value, needles) in cases {
        let tmp = copy_fixture("neox-parallel-cls");
        edit_config(tmp.path(), |c| {
            c.insert(field.into(), value.clone());
            if field == "num_labels" {
                c.remove("id2label");
                c.remove("label2id");
            }
        });
        let what = format!("{field} = {value}");
        let t = std::time::Instant::now();
        let e = load_err(&what, tmp.path());
        assert_mentions(&what, &e, needles);
        assert!(t.elapsed().as_secs() < 5, "{what}: took {:?}", t.elapsed());
    }
    // A matrix too large although each size is in bounds.
    let tmp = copy_fixture("neox-parallel-cls");
    edit_config(tmp.path(), |c| {
        c.insert("vocab_size".into(), json!(1u64 << 24));
        c.insert("hidden_size".into(), json!(1u64 << 16));
        c.insert("num_attention_heads".into(), json!(256));
    });
    let e = load_err("vocab x hidden", tmp.path());
    assert_mentions("vocab x hidden", &e, &["2^36"]);
}

#[test]
fn a_pad_id_past_the_vocabulary_names_the_config_field_and_a_bom_is_not_json() {
    let tmp = copy_fixture("neox-parallel-cls");
    edit_config(tmp.path(), |c| {
        c.insert("pad_token_id".into(), json!(400));
    });
    let e = load_err("pad id", tmp.path());
    assert_mentions("pad id", &e, &["pad_token_id", "vocab_size 400"]);
    // A UTF-8 byte-order mark before the first JSONL line is skipped, by the loader and by
    // classify alike.
    let data = tmp.path().join("bom.jsonl");
    let mut bytes = b"\xEF\xBB\xBF".to_vec();
    bytes.extend_from_slice(br#"{"text": "hello", "label": 1}"#);
    bytes.push(b'\n');
    std::fs::write(&data, &bytes).unwrap();
    let def = armsrace::task::defs::generic(&data).unwrap();
    let ex = armsrace::task::jsonl::load(&data, &def).unwrap();
    assert_eq!((ex[0].text.as_str(), ex[0].label), ("hello", 1));
    let m = fixture("neox-parallel-cls");
    let out = armsrace_cli(&[
        "classify",
        "--model",
        m.to_str().unwrap(),
        "--input",
        data.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn nonfinite_weights_are_refused_naming_the_tensor_unless_allowed() {
    let dir = copy_fixture("neox-parallel-cls");
    let st = dir.path().join("model.safetensors");
    let mut damaged = String::new();
    rewrite_tensors(&st, |ts| {
        let t = ts
            .iter_mut()
            .find(|t| t.dtype == "F32")
            .expect("an f32 tensor");
        t.bytes[12..16].copy_from_slice(&f32::NAN.to_le_bytes());
        t.bytes[20..24].copy_from_slice(&f32::INFINITY.to_le_bytes());
        damaged = t.name.clone();
    });
    let e = load_err("NaN weights", dir.path());
    assert_mentions(
        "NaN weights",
        &e,
        &[&damaged, "element 3", "NaN", "2 of", "--allow-nonfinite"],
    );
    // The CLI refuses it too, and loads it with --allow-nonfinite.
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"text\": \"hello\"}\n").unwrap();
    let (m, i) = (dir.path().to_str().unwrap(), input.to_str().unwrap());
    let out = armsrace_cli(&["classify", "--model", m, "--input", i]);
    assert!(!out.status.success());
    assert_mentions(
        "cli",
        &String::from_utf8_lossy(&out.stderr),
        &[&damaged, "NaN"],
    );
    let out = armsrace_cli(&["--allow-nonfinite", "classify", "--model", m, "--input", i]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn absurd_flags_are_refused_quoting_flag_and_value() {
    for (args, needles) in [
        (
            &["--threads", "100000", "attack"][..],
            &["--threads 100000", "1..="][..],
        ),
        (&["--threads", "0", "attack"], &["--threads 0"]),
        (
            &["attack", "--topk", "300000"],
            &["--topk 300000", "at most 256"],
        ),
        (
            &["attack", "--n-replace", "50"],
            &["--n-replace 50", "1..=10"],
        ),
        (&["attack", "--search-width", "0"], &["--search-width 0"]),
    ] {
        let t = std::time::Instant::now();
        let out = armsrace_cli(args);
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_mentions(&format!("{args:?}"), &err, needles);
        assert!(
            t.elapsed().as_secs() < 10,
            "{args:?} took {:?}",
            t.elapsed()
        );
    }
}

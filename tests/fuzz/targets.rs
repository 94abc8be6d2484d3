//! The fuzz targets, one definition each, shared by both runners:
//!
//! - `tests/fuzz.rs`: a bounded deterministic run in `cargo test` (fixed seeds, a few hundred
//!   to two thousand cases per target; `ARMSRACE_FUZZ_CASES=N` scales it), on stable Rust;
//! - `fuzz/fuzz_targets/*.rs`: the same functions under cargo-fuzz (libFuzzer, nightly).
//!
//! Every target takes raw bytes and reads them, through [`arbitrary::Unstructured`], as a
//! list of mutations of a real, valid file from the repository (the seed): numbers in JSON
//! set to boundaries and absurd values (0, -1, u64::MAX, 2^36, 1e308, fractions), literals
//! no JSON parser takes (NaN, 1e999), fields deleted, duplicated, renamed or retyped,
//! safetensors shapes, dtypes and offsets changed (consistently or not), header lengths set
//! huge, files truncated, shard names pointing elsewhere. Empty input is the unmutated seed
//! (which must load), so the accepting paths are fuzzed as well as the refusing ones.
//!
//! Each target drives the library's own entry points and returns whether they accepted the
//! input. It panics (a finding, in both runners) when the library panics, when an accepted
//! input breaks what the library promises (every tensor readable at its shape, labels in
//! range...), or when an error does not name the file, tensor or field at fault. Inputs are
//! bounded (every generated file under [`MAX_FILE`] bytes), so a case that runs long is a
//! hang in the library; the runners also bound time and allocation sizes.

#![allow(dead_code)]

use arbitrary::Unstructured;
use armsrace::model::safetensors_store::SafetensorsStore;
use armsrace::task::{jsonl, Task};
use armsrace::tokenize::Tokenizer;
use armsrace::{Batch, Cpu, Model, ModelConfig};
use serde_json::{json, Map, Value};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// No generated file is larger (bytes).
pub const MAX_FILE: usize = 2 << 20;

/// What a target did with one input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The library accepted the (possibly mutated) input.
    Accepted,
    /// The library refused it with an error that names the file, tensor or field.
    Refused,
}

pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]) -> Outcome,
}

/// Every target, by the name its cargo-fuzz binary has.
pub const TARGETS: &[Target] = &[
    Target {
        name: "safetensors",
        run: safetensors,
    },
    Target {
        name: "shard_index",
        run: shard_index,
    },
    Target {
        name: "config",
        run: config,
    },
    Target {
        name: "tokenizer",
        run: tokenizer,
    },
    Target {
        name: "jsonl",
        run: jsonl_data,
    },
    Target {
        name: "task_sidecar",
        run: task_sidecar,
    },
    Target {
        name: "model_dir",
        run: model_dir,
    },
];

// ---------------------------------------------------------------------------------------------
// Seeds: the real files mutations start from, read once.

/// The repository root: `$ARMSRACE_ROOT`, else the crate that includes this file (the root
/// crate, or `fuzz/` one level down).
pub fn repo_root() -> PathBuf {
    if let Some(r) = std::env::var_os("ARMSRACE_ROOT") {
        return PathBuf::from(r);
    }
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if here.join("tests/fixtures").is_dir() {
        here
    } else {
        here.join("..")
    }
}

/// A checkpoint directory's files, by name.
struct Checkpoint {
    files: Vec<(String, Vec<u8>)>,
}

impl Checkpoint {
    fn read(dir: &Path) -> Checkpoint {
        let mut files = Vec::new();
        for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            // What the loaders read; reference tensors and notes stay out.
            if name == "config.json"
                || name == "tokenizer.json"
                || (name.starts_with("model") && !name.ends_with(".md"))
            {
                files.push((name, std::fs::read(e.path()).unwrap()));
            }
        }
        files.sort();
        Checkpoint { files }
    }

    fn get(&self, name: &str) -> Option<&[u8]> {
        self.files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_slice())
    }

    fn shards(&self) -> Vec<(String, Vec<u8>)> {
        self.files
            .iter()
            .filter(|(n, _)| n.ends_with(".safetensors"))
            .cloned()
            .collect()
    }
}

struct Seeds {
    /// Unsharded checkpoints (config.json + model.safetensors).
    single: Vec<Checkpoint>,
    /// Sharded checkpoints (config.json + index + shards).
    sharded: Vec<Checkpoint>,
    /// config.json of every checkpoint.
    configs: Vec<Vec<u8>>,
    tokenizers: Vec<Vec<u8>>,
    jsonl_text: Vec<u8>,
    jsonl_pairs: Vec<u8>,
    sidecar: Vec<u8>,
}

fn seeds() -> &'static Seeds {
    static SEEDS: OnceLock<Seeds> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let root = repo_root();
        let fx = root.join("tests/fixtures");
        let single: Vec<Checkpoint> = [
            root.join("models/pythia-password-match"),
            fx.join("neox-sequential-lm"),
            fx.join("neox-parallel-cls"),
            fx.join("qwen2-mha-lm-f16"),
            fx.join("qwen2-gqa-tied-lm"),
        ]
        .iter()
        .map(|d| Checkpoint::read(d))
        .collect();
        let sharded: Vec<Checkpoint> = [fx.join("qwen2-untied-cls"), fx.join("neox-lm-bf16-sharded")]
            .iter()
            .map(|d| Checkpoint::read(d))
            .collect();
        let configs = single
            .iter()
            .chain(&sharded)
            .map(|c| c.get("config.json").expect("config.json").to_vec())
            .collect();
        let tokenizers = [
            fx.join("tokenizer-bytelevel/tokenizer.json"),
            fx.join("tokenizer-qwen/tokenizer.json"),
            root.join("models/pythia-password-match/tokenizer.json"),
        ]
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect();
        let jsonl_text = std::fs::read(fx.join("neox-parallel-cls/classify.jsonl")).unwrap();
        let jsonl_pairs = concat!(
            r#"{"chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4.", "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 5."}"#,
            "\n",
            r#"{"chosen": "\n\nHuman: Hi\n\nAssistant: Hello! How can I help?", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away.", "id": 7}"#,
            "\n",
            r#"{"text": "Conversation 1\n---\na\n---\nConversation 2\n---\nb\n---\n", "label": 1}"#,
            "\n",
        )
        .as_bytes()
        .to_vec();
        let sidecar = serde_json::to_vec_pretty(&json!({
            "instructions": "Classify the text.\n\n",
            "label_names": [" A", " B", " C"],
            "answer_prompt": "\n\nAnswer:",
        }))
        .unwrap();
        Seeds {
            single,
            sharded,
            configs,
            tokenizers,
            jsonl_text,
            jsonl_pairs,
            sidecar,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Reading decisions from the input. Out of data, every decision is the first choice, no
// mutation, so an empty input is the seed itself.

pub struct Gen<'a> {
    u: Unstructured<'a>,
}

impl<'a> Gen<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Gen {
            u: Unstructured::new(data),
        }
    }

    /// 0..n (n > 0).
    fn below(&mut self, n: usize) -> usize {
        self.u.choose_index(n.max(1)).unwrap_or(0)
    }

    /// lo..=hi.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        self.u.int_in_range(lo..=hi.max(lo)).unwrap_or(lo)
    }

    /// True with probability num/den; false out of data.
    fn coin(&mut self, num: u32, den: u32) -> bool {
        self.u.int_in_range(0..=den - 1).unwrap_or(0) >= den - num
    }

    fn pick<'b, T>(&mut self, xs: &'b [T]) -> &'b T {
        &xs[self.below(xs.len())]
    }

    fn u64(&mut self) -> u64 {
        self.u.arbitrary().unwrap_or(0)
    }

    /// Up to `max` bytes of the input itself.
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.range(0, max).min(self.u.len());
        self.u.bytes(n).map(<[u8]>::to_vec).unwrap_or_default()
    }

    fn is_empty(&self) -> bool {
        self.u.is_empty()
    }
}

// ---------------------------------------------------------------------------------------------
// JSON mutations

/// Per file kind: the field names and strings worth trying, and JSON values (as text) that
/// the loader gives a meaning to.
pub struct Dict {
    keys: &'static [&'static str],
    strings: &'static [&'static str],
    values: &'static [&'static str],
}

const UNSIGNED: &[u64] = &[
    0,
    1,
    2,
    3,
    4,
    5,
    7,
    8,
    16,
    31,
    32,
    63,
    64,
    65,
    127,
    128,
    129,
    255,
    256,
    397,
    400,
    1023,
    1024,
    1025,
    2048,
    4096,
    4097,
    65535,
    65536,
    65537,
    1 << 17,
    (1 << 17) + 1,
    1 << 20,
    (1 << 20) + 1,
    1 << 24,
    (1 << 24) + 1,
    1 << 31,
    (1 << 32) - 1,
    1 << 32,
    (1 << 32) + 1,
    1 << 36,
    (1 << 36) + 1,
    1 << 40,
    1 << 53,
    (1 << 53) + 1,
    1 << 62,
    i64::MAX as u64,
    1 << 63,
    u64::MAX - 1,
    u64::MAX,
    100_000_000,
    100_000_001,
    10_000_000_000_000,
];
const SIGNED: &[i64] = &[-1, -2, -64, -1024, i32::MIN as i64, i64::MIN + 1, i64::MIN];
const FLOATS: &[f64] = &[
    0.0,
    -0.0,
    0.5,
    1.5,
    -1.5,
    0.999,
    1.000_000_1,
    2.0,
    64.0,
    64.5,
    1e-300,
    1e-45,
    1e-40,
    1e-39,
    1e-6,
    1e-5,
    -1e-5,
    3.4e38,
    3.5e38,
    1e300,
    -1e300,
    f64::MAX,
    f64::MIN,
    f64::MIN_POSITIVE,
    f64::EPSILON,
    10000.0,
    1e10,
    4_294_967_296.5,
    18_446_744_073_709_551_616.0,
];
/// Number literals that are not valid JSON, or that no f64/u64 holds exactly.
const NUMBER_TEXT: &[&str] = &[
    "NaN",
    "-NaN",
    "Infinity",
    "-Infinity",
    "inf",
    "1e999",
    "-1e999",
    "1e-999",
    "00",
    "-0",
    "01",
    "1.",
    "-",
    ".5",
    "0x40",
    "+1",
    "1e",
    "18446744073709551616",
    "-9223372036854775809",
    "340282366920938463463374607431768211456",
    "64.000000000000000000001",
    "6.4e1",
    "1E2",
];
const WEIRD_STRINGS: &[&str] = &[
    "",
    " ",
    "\u{0}",
    "\u{feff}",
    "é",
    "\u{10ffff}",
    "../x",
    "/etc/passwd",
    "a/b",
    "..",
    ".",
    "null",
    "64",
    "true",
    "\n",
];

fn interesting_number(g: &mut Gen, near: Option<&Value>) -> Value {
    match g.below(5) {
        0 => json!(*g.pick(UNSIGNED)),
        1 => json!(*g.pick(SIGNED)),
        2 => json!(*g.pick(FLOATS)),
        3 => json!(g.u64()),
        _ => match near.and_then(Value::as_f64) {
            Some(x) => {
                let y = match g.below(8) {
                    0 => x + 1.0,
                    1 => x - 1.0,
                    2 => x * 2.0,
                    3 => -x,
                    4 => x / 3.0,
                    5 => x * 1e6,
                    6 => x + 0.5,
                    _ => x * x,
                };
                if y.fract() == 0.0 && y.abs() < 9e15 {
                    if y >= 0.0 {
                        json!(y as u64)
                    } else {
                        json!(y as i64)
                    }
                } else {
                    json!(y)
                }
            }
            None => json!(*g.pick(UNSIGNED)),
        },
    }
}

fn weird_string(g: &mut Gen, dict: &Dict) -> String {
    match g.below(6) {
        0 | 1 if !dict.strings.is_empty() => g.pick(dict.strings).to_string(),
        2 => g.pick(WEIRD_STRINGS).to_string(),
        3 => {
            let unit = g
                .pick(&["a", "é", " ", "\\", "\"", "Ġ", "<|endoftext|>"])
                .to_string();
            unit.repeat(g.range(1, 20_000))
        }
        4 => String::from_utf8_lossy(&g.bytes(64)).into_owned(),
        _ => g.pick(dict.keys).to_string(),
    }
}

fn dict_value(g: &mut Gen, dict: &Dict) -> Value {
    if dict.values.is_empty() {
        return interesting_number(g, None);
    }
    serde_json::from_str(g.pick::<&str>(dict.values)).expect("dictionary values are JSON")
}

/// Number of children of a container.
fn children(v: &Value) -> usize {
    match v {
        Value::Array(a) => a.len(),
        Value::Object(o) => o.len(),
        _ => 0,
    }
}

fn child(v: &Value, i: usize) -> &Value {
    match v {
        Value::Array(a) => &a[i],
        Value::Object(o) => o.values().nth(i).expect("index below len"),
        _ => unreachable!("not a container"),
    }
}

fn child_mut(v: &mut Value, i: usize) -> &mut Value {
    match v {
        Value::Array(a) => &mut a[i],
        Value::Object(o) => o.values_mut().nth(i).expect("index below len"),
        _ => unreachable!("not a container"),
    }
}

/// A random node: from the root, stop or descend into a random child. With `container`,
/// only non-empty arrays and objects are returned (the root may be another value).
fn walk<'v>(g: &mut Gen, mut v: &'v mut Value, container: bool, root_bias: u32) -> &'v mut Value {
    for depth in 0..256 {
        let n = children(v);
        if n == 0 {
            break;
        }
        // A value op rarely replaces the whole file; a structural one often works on the
        // top-level object (`root_bias` in 8).
        let stop = if depth == 0 && container {
            g.coin(root_bias, 8)
        } else if depth == 0 {
            g.coin(1, 32)
        } else {
            g.coin(1, 3)
        };
        if stop {
            break;
        }
        let i = g.below(n);
        if container && children(child(v, i)) == 0 {
            break;
        }
        v = child_mut(v, i);
    }
    v
}

fn walk_ref<'v>(g: &mut Gen, mut v: &'v Value) -> &'v Value {
    for _ in 0..256 {
        let n = children(v);
        if n == 0 || g.coin(1, 3) {
            break;
        }
        v = child(v, g.below(n));
    }
    v
}

/// One mutation somewhere in `root`.
pub fn mutate_value(g: &mut Gen, root: &mut Value, dict: &Dict, root_bias: u32) {
    match g.below(14) {
        // Numbers: boundaries, absurd values, near the current one.
        0..=2 => {
            let t = walk(g, root, false, root_bias);
            let near = t.clone();
            *t = interesting_number(g, Some(&near));
        }
        // Another type in place.
        3 => {
            let t = walk(g, root, false, root_bias);
            let old = t.take();
            *t = match g.below(9) {
                0 => Value::Null,
                1 => json!(true),
                2 => json!(false),
                3 => json!(old.to_string()),
                4 => json!([]),
                5 => json!({}),
                6 => json!([old]),
                7 => json!({ "value": old }),
                _ => json!(""),
            };
        }
        4 => {
            let t = walk(g, root, false, root_bias);
            *t = Value::String(weird_string(g, dict));
        }
        5 => {
            let t = walk(g, root, false, root_bias);
            *t = dict_value(g, dict);
        }
        // Deep nesting (past serde_json's recursion limit at the top of the range).
        6 => {
            let t = walk(g, root, false, root_bias);
            let mut x = t.take();
            for _ in 0..g.range(1, 300) {
                x = Value::Array(vec![x]);
            }
            *t = x;
        }
        // Copy a value from elsewhere in the file.
        7 => {
            let src = walk_ref(g, root).clone();
            let t = walk(g, root, false, root_bias);
            *t = src;
        }
        // Structure: delete, duplicate, insert, rename, swap, truncate.
        _ => {
            let t = walk(g, root, true, root_bias);
            let n = children(t);
            match t {
                Value::Object(o) if n > 0 => {
                    let i = g.below(n);
                    let key = o.keys().nth(i).expect("index below len").clone();
                    match g.below(7) {
                        0 | 1 => {
                            o.remove(&key);
                        }
                        2 => {
                            let new = g.pick(dict.keys).to_string();
                            let v = o[key.as_str()].clone();
                            o.insert(new, v);
                        }
                        3 | 6 => {
                            let new = g.pick(dict.keys).to_string();
                            let v = match g.below(3) {
                                0 => interesting_number(g, None),
                                1 => Value::String(weird_string(g, dict)),
                                _ => dict_value(g, dict),
                            };
                            o.insert(new, v);
                        }
                        4 => {
                            let v = o.remove(&key).expect("key present");
                            let new = weird_string(g, dict);
                            o.insert(new, v);
                        }
                        _ => o.clear(),
                    }
                }
                Value::Array(a) if n > 0 => {
                    let i = g.below(n);
                    match g.below(6) {
                        0 | 1 => {
                            a.remove(i);
                        }
                        2 => {
                            let v = a[i].clone();
                            a.insert(i, v);
                        }
                        3 => {
                            let j = g.below(n);
                            a.swap(i, j);
                        }
                        4 => a.truncate(i),
                        _ => {
                            let v = a[i].clone();
                            for _ in 0..g.range(1, 64) {
                                a.push(v.clone());
                            }
                        }
                    }
                }
                Value::String(s) => {
                    let mut cut = g.range(0, s.len());
                    while !s.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    s.truncate(cut);
                }
                other => {
                    let old = other.take();
                    *other = json!({ "type": old });
                }
            }
        }
    }
}

/// Byte offsets [start, end) of the number literals of a JSON text (outside strings).
fn number_spans(text: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let (mut i, mut in_str) = (0, false);
    while i < text.len() {
        let c = text[i];
        if in_str {
            match c {
                b'\\' => i += 1,
                b'"' => in_str = false,
                _ => {}
            }
            i += 1;
        } else if c == b'"' {
            in_str = true;
            i += 1;
        } else if c == b'-' || c.is_ascii_digit() {
            let s = i;
            while i < text.len()
                && matches!(text[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
            {
                i += 1;
            }
            spans.push((s, i));
        } else {
            i += 1;
        }
    }
    spans
}

/// One byte-level mutation of a file.
fn mutate_bytes(g: &mut Gen, out: &mut Vec<u8>, numbers: bool) {
    let len = out.len();
    let pos = g.range(0, len);
    match g.below(if numbers { 9 } else { 8 }) {
        0 => out.truncate(pos),
        1 => {
            let end = g.range(pos, len.min(pos + 4096));
            out.drain(pos..end);
        }
        2 => {
            let b = g.bytes(32);
            out.splice(pos..pos, b);
        }
        3 if len > 0 => {
            let i = pos.min(len - 1);
            out[i] ^= 1 << g.below(8);
        }
        4 => {
            let end = g.range(pos, len.min(pos + 8192));
            let dup = out[pos..end].to_vec();
            out.splice(pos..pos, dup);
        }
        5 => {
            let junks: [&[u8]; 9] = [
                b"\xEF\xBB\xBF",
                b"\0",
                b"\xff\xfe",
                b"\xc3",
                b"\r\n",
                b"\\ud800",
                b"}",
                b"]",
                b",",
            ];
            let junk = *g.pick(&junks);
            out.splice(pos..pos, junk.iter().copied());
        }
        6 if len > 0 => {
            let i = pos.min(len - 1);
            out[i] = *g.pick(&[0u8, b'"', b'{', b'[', b',', b':', b'\\', 0xff, b'9', b'-']);
        }
        7 => out.extend(g.bytes(64)),
        _ => {
            let spans = number_spans(out);
            if !spans.is_empty() {
                let (s, e) = *g.pick(&spans);
                let lit = g.pick(NUMBER_TEXT).as_bytes();
                out.splice(s..e, lit.iter().copied());
            }
        }
    }
}

fn cap(mut v: Vec<u8>) -> Vec<u8> {
    v.truncate(MAX_FILE);
    v
}

/// A mutated JSON file from `seed`: raw input bytes (1 in 16), else value-level mutations,
/// then (1 in 3) byte-level ones.
pub fn mutate_json_file(g: &mut Gen, seed: &[u8], dict: &Dict, root_bias: u32) -> Vec<u8> {
    if g.below(16) == 15 {
        return cap(g.bytes(MAX_FILE));
    }
    let mut v: Value = serde_json::from_slice(seed).expect("seed files are JSON");
    for _ in 0..g.range(0, 6) {
        mutate_value(g, &mut v, dict, root_bias);
    }
    let mut out = if g.coin(1, 2) {
        serde_json::to_vec(&v)
    } else {
        serde_json::to_vec_pretty(&v)
    }
    .expect("serializable");
    if g.coin(1, 3) {
        for _ in 0..g.range(1, 3) {
            mutate_bytes(g, &mut out, true);
        }
    }
    cap(out)
}

// ---------------------------------------------------------------------------------------------
// Safetensors mutations: a file as a list of tensors, changed consistently (valid layout,
// other shapes, dtypes and data) or not (header entries, offsets, lengths, truncation).

const DTYPES: &[&str] = &[
    "F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "U16", "U32", "U64", "BOOL",
    "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "C64", "f32", "F32 ", "", "float32",
];

fn dtype_size(d: &str) -> Option<usize> {
    Some(match d {
        "F64" | "I64" | "U64" | "C64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => 1,
        _ => return None,
    })
}

#[derive(Clone)]
struct StTensor {
    name: String,
    dtype: String,
    shape: Vec<u64>,
    bytes: Vec<u8>,
    /// Header entry overrides (inconsistent on purpose).
    shape_json: Option<Value>,
    offsets_json: Option<Value>,
    /// Value-level mutations of this entry's JSON at build time.
    mangle: usize,
}

#[derive(Clone)]
struct StFile {
    meta: Option<Value>,
    tensors: Vec<StTensor>,
}

fn parse_st(bytes: &[u8]) -> StFile {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut meta = None;
    let mut tensors: Vec<(usize, StTensor)> = Vec::new();
    for (name, t) in header {
        if name == "__metadata__" {
            meta = Some(t);
            continue;
        }
        let off = t["data_offsets"].as_array().unwrap();
        let (s, e) = (
            off[0].as_u64().unwrap() as usize,
            off[1].as_u64().unwrap() as usize,
        );
        tensors.push((
            s,
            StTensor {
                name,
                dtype: t["dtype"].as_str().unwrap().to_owned(),
                shape: t["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap())
                    .collect(),
                bytes: data[s..e].to_vec(),
                shape_json: None,
                offsets_json: None,
                mangle: 0,
            },
        ));
    }
    tensors.sort_by_key(|(s, _)| *s);
    StFile {
        meta,
        tensors: tensors.into_iter().map(|(_, t)| t).collect(),
    }
}

fn numel(shape: &[u64]) -> u64 {
    shape.iter().product()
}

/// Values of a float tensor as f32 (None for other dtypes).
fn decode(t: &StTensor) -> Option<Vec<f32>> {
    Some(match t.dtype.as_str() {
        "F32" => t
            .bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        "F16" => t
            .bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        "BF16" => t
            .bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}

fn encode(values: &[f32], dtype: &str, numel: usize) -> Vec<u8> {
    let size = dtype_size(dtype).unwrap_or(1);
    let mut out = Vec::with_capacity(numel * size);
    for i in 0..numel {
        let x = values.get(i % values.len().max(1)).copied().unwrap_or(0.25);
        match dtype {
            "F32" => out.extend(x.to_le_bytes()),
            "F16" => out.extend(half::f16::from_f32(x).to_le_bytes()),
            "BF16" => out.extend(half::bf16::from_f32(x).to_le_bytes()),
            "F64" => out.extend((x as f64).to_le_bytes()),
            _ => out.extend(std::iter::repeat_n((x * 100.0) as i8 as u8, size)),
        }
    }
    out
}

const ST_NAMES: &[&str] = &[
    "",
    "__metadata__",
    "score.weight",
    "embed_out.weight",
    "lm_head.weight",
    "gpt_neox.embed_in.weight",
    "model.embed_tokens.weight",
    "gpt_neox.layers.0.attention.query_key_value.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "gpt_neox.final_layer_norm.weight",
    "model.norm.weight",
    "gpt_neox.layers.2.input_layernorm.weight",
];

const ST_DICT: Dict = Dict {
    keys: &["dtype", "shape", "data_offsets", "__metadata__", "format"],
    strings: &["F32", "F16", "BF16", "I64", "pt", "F8_E4M3"],
    values: &[
        "[0, 0]",
        "[64]",
        "[]",
        "[0]",
        "{\"format\": \"pt\"}",
        "[1, 18446744073709551615]",
    ],
};

/// One consistent change (the file stays valid safetensors; only the loader's checks
/// against config.json, dtype support and finiteness are in play).
fn mutate_tensor_consistent(g: &mut Gen, f: &mut StFile) {
    if f.tensors.is_empty() {
        return;
    }
    let i = g.below(f.tensors.len());
    match g.below(9) {
        0 => {
            f.tensors.remove(i);
        }
        1 => {
            let mut t = f.tensors[i].clone();
            t.name = match g.below(3) {
                0 => format!("{}.copy", t.name),
                1 => g.pick(ST_NAMES).to_string(),
                _ => f.tensors[g.below(f.tensors.len())].name.clone(),
            };
            f.tensors.push(t);
        }
        2 => f.tensors[i].name = g.pick(ST_NAMES).to_string(),
        // Another dtype, data converted.
        3 => {
            let t = &mut f.tensors[i];
            let new = g.pick(DTYPES);
            if dtype_size(new).is_some() {
                let values = decode(t).unwrap_or_default();
                t.bytes = encode(&values, new, numel(&t.shape) as usize);
                t.dtype = new.to_string();
            }
        }
        // Same elements, another shape.
        4 => {
            let t = &mut f.tensors[i];
            let n = numel(&t.shape);
            t.shape = match g.below(6) {
                0 => t.shape.iter().rev().copied().collect(),
                1 => vec![n],
                2 => {
                    let mut s = t.shape.clone();
                    s.insert(g.range(0, s.len()), 1);
                    s
                }
                3 if n.is_multiple_of(2) => vec![2, n / 2],
                4 if n == 1 => vec![],
                _ => vec![1, n],
            };
        }
        // Other sizes, data resized (bounded).
        5 => {
            let t = &mut f.tensors[i];
            let dims = [
                0u64, 1, 2, 3, 4, 7, 8, 16, 63, 64, 65, 128, 192, 256, 1024, 1025,
            ];
            let mut s: Vec<u64> = t.shape.clone();
            match g.below(3) {
                0 if !s.is_empty() => {
                    let k = g.below(s.len());
                    s[k] = *g.pick(&dims);
                }
                1 => s.push(*g.pick(&dims)),
                _ => {
                    s = (0..g.range(0, 3)).map(|_| *g.pick(&dims)).collect();
                }
            }
            let n = numel(&s);
            if n <= 1 << 18 {
                let values = decode(t).unwrap_or_default();
                t.bytes = encode(&values, &t.dtype, n as usize);
                t.shape = s;
            }
        }
        // A non-finite or extreme value.
        6 => {
            let t = &mut f.tensors[i];
            if let Some(size) = dtype_size(&t.dtype) {
                let n = t.bytes.len() / size;
                if n > 0 {
                    let k = g.below(n) * size;
                    let x = *g.pick(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e-45, 3e38]);
                    let b = encode(&[x], &t.dtype, 1);
                    t.bytes[k..k + size].copy_from_slice(&b);
                }
            }
        }
        7 => {
            let j = g.below(f.tensors.len());
            f.tensors.swap(i, j);
        }
        _ => {
            f.meta = match g.below(4) {
                0 => None,
                1 => Some(json!({"format": "pt"})),
                2 => Some(json!({"format": 7})),
                _ => Some(json!("pt")),
            };
        }
    }
}

/// One change that makes the header disagree with itself or the data.
fn mutate_tensor_header(g: &mut Gen, f: &mut StFile) {
    if f.tensors.is_empty() {
        return;
    }
    let i = g.below(f.tensors.len());
    let t = &mut f.tensors[i];
    match g.below(5) {
        0 => t.dtype = g.pick(DTYPES).to_string(),
        1 => {
            let mut s: Vec<Value> = t.shape.iter().map(|&d| json!(d)).collect();
            if s.is_empty() || g.coin(1, 4) {
                s.push(interesting_number(g, None));
            } else {
                let k = g.below(s.len());
                let near = s[k].clone();
                s[k] = interesting_number(g, Some(&near));
            }
            t.shape_json = Some(Value::Array(s));
        }
        2 => {
            t.shape_json = Some(match g.below(5) {
                0 => json!(numel(&t.shape)),
                1 => json!("64"),
                2 => Value::Null,
                3 => json!([[64]]),
                _ => json!([-1, 64]),
            })
        }
        3 => t.offsets_json = Some(Value::Null), // resolved in build_st
        _ => t.mangle += g.range(1, 3),
    }
}

/// The file's bytes: header text (duplicate keys possible), padding, data, then length-field
/// and byte-level damage.
fn build_st(g: &mut Gen, f: &StFile, damage: bool) -> Vec<u8> {
    let mut data = Vec::new();
    let mut entries: Vec<String> = Vec::new();
    if let Some(m) = &f.meta {
        entries.push(format!("\"__metadata__\":{m}"));
    }
    for t in &f.tensors {
        let (s, e) = (data.len() as u64, (data.len() + t.bytes.len()) as u64);
        data.extend_from_slice(&t.bytes);
        let offsets = match &t.offsets_json {
            None => json!([s, e]),
            Some(_) => {
                let near = json!(e);
                match g.below(10) {
                    0 => json!([e, s]),
                    1 => json!([s, e + 1]),
                    2 => json!([s + 1, e]),
                    3 => json!([s, u64::MAX]),
                    4 => json!([u64::MAX, e]),
                    5 => json!([s, interesting_number(g, Some(&near))]),
                    6 => json!([interesting_number(g, None), e]),
                    7 => json!([s]),
                    8 => json!([s, e, e]),
                    _ => json!([-1, e]),
                }
            }
        };
        let shape = t.shape_json.clone().unwrap_or_else(|| json!(t.shape));
        let mut entry = json!({"dtype": t.dtype, "shape": shape, "data_offsets": offsets});
        for _ in 0..t.mangle {
            mutate_value(g, &mut entry, &ST_DICT, 4);
        }
        entries.push(format!(
            "{}:{}",
            serde_json::to_string(&t.name).unwrap(),
            entry
        ));
    }
    let mut header = format!("{{{}}}", entries.join(",")).into_bytes();
    if damage && g.coin(1, 4) {
        for _ in 0..g.range(1, 2) {
            mutate_bytes(g, &mut header, true);
        }
    }
    match if damage { g.below(6) } else { 0 } {
        0 | 1 => {
            while header.len() % 8 != 0 {
                header.push(b' ');
            }
        }
        2 => {}
        3 => header.extend_from_slice(b"\0\0\0"),
        4 => header.extend_from_slice(b" x"),
        _ => {
            header.insert(0, b' ');
            header.insert(0, b'\n');
        }
    }
    let real = header.len() as u64;
    let len_field = if damage && g.coin(1, 4) {
        match g.below(6) {
            0 => real + 1,
            1 => real.saturating_sub(1),
            2 => real + data.len() as u64 + 1,
            3 => (1 << 32) + real,
            4 => 100_000_001,
            _ => *g.pick(UNSIGNED),
        }
    } else {
        real
    };
    let mut out = len_field.to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&data);
    if damage && g.coin(1, 6) {
        match g.below(4) {
            0 => {
                let cut = g.range(0, out.len());
                out.truncate(cut);
            }
            1 => out.extend(g.bytes(64)),
            2 => out.truncate(g.range(0, 16)),
            _ => mutate_bytes(g, &mut out, false),
        }
    }
    cap(out)
}

/// A mutated safetensors file from `seed`. `header_damage` allows inconsistent headers.
fn mutate_st_file(g: &mut Gen, seed: &[u8], header_damage: bool) -> Vec<u8> {
    if header_damage && g.below(16) == 15 {
        return cap(g.bytes(MAX_FILE));
    }
    let mut f = parse_st(seed);
    for _ in 0..g.range(0, 5) {
        if header_damage && g.coin(1, 2) {
            mutate_tensor_header(g, &mut f);
        } else {
            mutate_tensor_consistent(g, &mut f);
        }
    }
    build_st(g, &f, header_damage)
}

// ---------------------------------------------------------------------------------------------
// Working directories and checks

thread_local! {
    static WORK: RefCell<Option<tempfile::TempDir>> = const { RefCell::new(None) };
}

/// An empty directory for one case of `target` (reused by the thread's next case), under
/// `$ARMSRACE_FUZZ_DUMP` if set (to look at what a case generated), else a temporary one.
fn workdir(target: &str) -> PathBuf {
    WORK.with(|w| {
        let mut w = w.borrow_mut();
        let base = match std::env::var_os("ARMSRACE_FUZZ_DUMP") {
            Some(d) => PathBuf::from(d),
            None => w
                .get_or_insert_with(|| tempfile::tempdir().expect("tempdir"))
                .path()
                .to_path_buf(),
        };
        let root = base.join(target);
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("work dir");
        root
    })
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    p
}

/// A refused input's error must say what is at fault: the file (its path is under `dir`),
/// a tensor, or a config.json field.
fn refused(what: &str, e: &armsrace::Error, dir: &Path) -> Outcome {
    let msg = e.to_string();
    let names = msg.contains(&*dir.to_string_lossy())
        || msg.contains("tensor `")
        || msg.contains("config.json field `");
    assert!(
        names,
        "{what}: the error names no file, tensor or field:\n  {msg}"
    );
    Outcome::Refused
}

/// Every tensor of an opened store reads back at its shape and dtype.
fn read_all(store: &SafetensorsStore) -> usize {
    let names: Vec<String> = store.names().map(str::to_owned).collect();
    for name in &names {
        let t = store
            .get(name)
            .unwrap_or_else(|e| panic!("tensor `{name}` is listed but not readable: {e}"));
        let n = t.numel();
        let size = match t.dtype.name() {
            "float32" => 4,
            _ => 2,
        };
        assert_eq!(
            t.bytes.len(),
            n * size,
            "tensor `{name}`: {} bytes for shape {:?} of {}",
            t.bytes.len(),
            t.shape,
            t.dtype.name()
        );
        assert_eq!(t.to_f32().len(), n, "tensor `{name}`: decoded length");
    }
    let _ = store.dominant_dtype();
    names.len()
}

/// A loaded model runs a short sequence (Ok or a named Err; never a panic).
fn run_model(model: &Model<Cpu>) {
    let n = model.cfg.max_positions.clamp(1, 5);
    let vocab = model.cfg.vocab as u32;
    let ids: Vec<u32> = (0..n as u32).map(|i| (i * 7 + 3) % vocab).collect();
    let pad = model.cfg.pad_token_id.unwrap_or(0);
    let batch = Batch::from_sequences(&[ids], pad).expect("a valid batch");
    if let Ok(logits) = model.logits(&batch) {
        let width = model.cfg.num_labels().unwrap_or(n * model.cfg.vocab);
        assert_eq!(logits.len(), width, "logits of one sequence of {n} tokens");
    }
}

// ---------------------------------------------------------------------------------------------
// The targets

/// A mutated model.safetensors, opened as a checkpoint directory, every tensor read.
pub fn safetensors(data: &[u8]) -> Outcome {
    let mut g = Gen::new(data);
    let s = seeds();
    let seed = s.single[g.below(s.single.len())]
        .get("model.safetensors")
        .expect("seed weights");
    let bytes = mutate_st_file(&mut g, seed, true);
    let dir = workdir("safetensors");
    write(&dir, "model.safetensors", &bytes);
    match SafetensorsStore::open_dir(&dir) {
        Ok(store) => {
            read_all(&store);
            Outcome::Accepted
        }
        Err(e) => refused("model.safetensors", &e, &dir),
    }
}

const INDEX_DICT: Dict = Dict {
    keys: &[
        "weight_map",
        "metadata",
        "total_size",
        "total_parameters",
        "model.norm.weight",
    ],
    strings: &[
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
        "model-00009-of-00003.safetensors",
        "model-00001-of-00004.safetensors",
        "model-00004-of-00004.safetensors",
        "model.safetensors",
        "model.safetensors.index.json",
        "config.json",
        "../model-00001-of-00003.safetensors",
        "./model-00001-of-00003.safetensors",
        "/etc/passwd",
        "model-00001-of-00003.safetensors\u{0}",
        "MODEL-00001-OF-00003.SAFETENSORS",
    ],
    values: &[
        "{}",
        "[]",
        "\"model-00001-of-00003.safetensors\"",
        "{\"a\": 1}",
    ],
};

/// A sharded checkpoint with a mutated model.safetensors.index.json (and sometimes a
/// damaged, missing, renamed or swapped shard), opened and every tensor read; then loaded
/// as a model with its own config.json.
pub fn shard_index(data: &[u8]) -> Outcome {
    let mut g = Gen::new(data);
    let s = seeds();
    let ck = &s.sharded[g.below(s.sharded.len())];
    let index = ck.get("model.safetensors.index.json").expect("index");
    let mut shards = ck.shards();
    let index = mutate_json_file(&mut g, index, &INDEX_DICT, 2);
    if g.coin(1, 3) {
        let i = g.below(shards.len());
        match g.below(6) {
            0 => {
                shards.remove(i);
            }
            1 => shards[i].0 = g.pick(INDEX_DICT.strings[..6].as_ref()).to_string(),
            2 => {
                let j = g.below(shards.len());
                let b = shards[j].1.clone();
                shards[i].1 = b;
            }
            3 => {
                let b = mutate_st_file(&mut g, &shards[i].1, true);
                shards[i].1 = b;
            }
            4 => {
                let b = mutate_st_file(&mut g, &shards[i].1, false);
                shards[i].1 = b;
            }
            // A tensor moved to another shard (files stay valid; the index may disagree).
            _ => {
                let j = g.below(shards.len());
                let (mut a, mut b) = (parse_st(&shards[i].1), parse_st(&shards[j].1));
                if i != j && !a.tensors.is_empty() {
                    let k = g.below(a.tensors.len());
                    b.tensors.push(a.tensors.remove(k));
                    shards[i].1 = build_st(&mut g, &a, false);
                    shards[j].1 = build_st(&mut g, &b, false);
                }
            }
        }
    }
    let dir = workdir("shard_index");
    write(&dir, "model.safetensors.index.json", &index);
    write(&dir, "config.json", ck.get("config.json").expect("config"));
    for (name, bytes) in &shards {
        write(&dir, name, bytes);
    }
    let store = match SafetensorsStore::open_dir(&dir) {
        Ok(store) => store,
        Err(e) => return refused("sharded checkpoint", &e, &dir),
    };
    read_all(&store);
    drop(store);
    match Model::load(&dir, Cpu) {
        Ok(m) => {
            run_model(&m);
            Outcome::Accepted
        }
        Err(e) => refused("sharded model", &e, &dir),
    }
}

const CONFIG_DICT: Dict = Dict {
    keys: &[
        "architectures",
        "hidden_size",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "num_hidden_layers",
        "intermediate_size",
        "vocab_size",
        "max_position_embeddings",
        "pad_token_id",
        "torch_dtype",
        "dtype",
        "hidden_act",
        "rotary_pct",
        "partial_rotary_factor",
        "rotary_emb_base",
        "rope_theta",
        "rope_parameters",
        "rope_scaling",
        "rope_type",
        "type",
        "layer_norm_eps",
        "rms_norm_eps",
        "use_parallel_residual",
        "tie_word_embeddings",
        "attention_bias",
        "num_labels",
        "id2label",
        "label2id",
    ],
    strings: &[
        "GPTNeoXForCausalLM",
        "GPTNeoXForSequenceClassification",
        "Qwen2ForCausalLM",
        "Qwen2ForSequenceClassification",
        "LlamaForCausalLM",
        "gelu",
        "gelu_new",
        "gelu_fast",
        "gelu_pytorch_tanh",
        "silu",
        "swish",
        "relu",
        "default",
        "linear",
        "yarn",
        "float32",
        "bfloat16",
        "float16",
    ],
    values: &[
        "[\"GPTNeoXForCausalLM\"]",
        "[\"Qwen2ForCausalLM\"]",
        "[\"GPTNeoXForSequenceClassification\"]",
        "[\"Qwen2ForSequenceClassification\"]",
        "[]",
        "{\"rope_type\": \"default\", \"rope_theta\": 10000.0}",
        "{\"rope_type\": \"yarn\", \"factor\": 4.0}",
        "{\"type\": \"linear\"}",
        "{\"rope_theta\": 0.0, \"partial_rotary_factor\": 0.5}",
        "{\"0\": \"A\", \"1\": \"B\", \"2\": \"C\"}",
        "{}",
        "null",
        "true",
    ],
};

/// A mutated config.json through `ModelConfig::from_file`; an accepted config must satisfy
/// the bounds the loaders rely on, and its parameter table must be computable.
pub fn config(data: &[u8]) -> Outcome {
    let mut g = Gen::new(data);
    let s = seeds();
    let seed = &s.configs[g.below(s.configs.len())];
    let bytes = mutate_json_file(&mut g, seed, &CONFIG_DICT, 6);
    let dir = workdir("config");
    let path = write(&dir, "config.json", &bytes);
    let cfg = match ModelConfig::from_file(&path) {
        Ok(cfg) => cfg,
        Err(e) => return refused("config.json", &e, &dir),
    };
    check_config(&cfg);
    Outcome::Accepted
}

/// What every accepted config promises (the loaders size buffers from these).
pub fn check_config(cfg: &ModelConfig) {
    let c = format!("{cfg:?}");
    assert!((1..=1 << 17).contains(&cfg.hidden), "hidden: {c}");
    assert!((1..=1 << 12).contains(&cfg.layers), "layers: {c}");
    assert!((1..=1 << 12).contains(&cfg.heads), "heads: {c}");
    assert!(
        cfg.kv_heads >= 1 && cfg.heads.is_multiple_of(cfg.kv_heads),
        "kv heads: {c}"
    );
    assert!(
        cfg.hidden.is_multiple_of(cfg.heads),
        "heads divide hidden: {c}"
    );
    assert!(
        (1..=1 << 20).contains(&cfg.intermediate),
        "intermediate: {c}"
    );
    assert!((1..=1 << 24).contains(&cfg.vocab), "vocab: {c}");
    assert!(cfg.head_dim >= 1, "head_dim: {c}");
    assert!(
        cfg.rotary_dims.is_multiple_of(2) && cfg.rotary_dims <= cfg.head_dim,
        "rotary dims: {c}"
    );
    assert!(cfg.norm_eps.is_finite() && cfg.norm_eps > 0.0, "eps: {c}");
    assert!(
        cfg.rope_base.is_finite() && cfg.rope_base > 0.0,
        "rope: {c}"
    );
    assert!(cfg.max_positions >= 1, "max positions: {c}");
    if let Some(p) = cfg.pad_token_id {
        assert!((p as usize) < cfg.vocab, "pad id: {c}");
    }
    if let Some(n) = cfg.num_labels() {
        assert!((1..=1 << 16).contains(&n), "num_labels: {c}");
    }
    // The parameter table and its sizes (what loading and training allocate).
    let mut total: u64 = 0;
    for spec in armsrace::model::weights::param_specs(cfg) {
        let n = (spec.rows as u64)
            .checked_mul(spec.cols as u64)
            .filter(|&n| n <= 1 << 36)
            .unwrap_or_else(|| {
                panic!(
                    "{:?}: {} x {} weights: {c}",
                    spec.slot, spec.rows, spec.cols
                )
            });
        total = total.saturating_add(n);
        assert_eq!(spec.numel() as u64, n);
    }
    assert!(total > 0);
    let _ = armsrace::model::param_count(cfg);
}

const TOKENIZER_DICT: Dict = Dict {
    keys: &[
        "padding",
        "truncation",
        "added_tokens",
        "normalizer",
        "pre_tokenizer",
        "post_processor",
        "decoder",
        "model",
        "type",
        "vocab",
        "merges",
        "dropout",
        "unk_token",
        "byte_fallback",
        "fuse_unk",
        "ignore_merges",
        "continuing_subword_prefix",
        "end_of_word_suffix",
        "max_input_chars_per_word",
        "id",
        "content",
        "special",
        "single_word",
        "lstrip",
        "rstrip",
        "normalized",
        "trim_offsets",
        "add_prefix_space",
        "use_regex",
        "pattern",
        "behavior",
        "invert",
        "pretokenizers",
        "normalizers",
        "decoders",
        "processors",
        "version",
    ],
    strings: &[
        "BPE",
        "WordPiece",
        "WordLevel",
        "Unigram",
        "ByteLevel",
        "Metaspace",
        "Whitespace",
        "Split",
        "Sequence",
        "NFC",
        "NFKD",
        "Lowercase",
        "Strip",
        "Replace",
        "TemplateProcessing",
        "RobertaProcessing",
        "ByteFallback",
        "Fuse",
        "Isolated",
        "Removed",
        "MergedWithPrevious",
        "<|endoftext|>",
        "<|padding|>",
        "<unk>",
        "Ġ",
        "Ġ Ġ",
        "1.0",
    ],
    values: &[
        "{\"strategy\": {\"Fixed\": 1000000000000}, \"direction\": \"Right\", \"pad_to_multiple_of\": null, \"pad_id\": 0, \"pad_type_id\": 0, \"pad_token\": \"<|padding|>\"}",
        "{\"strategy\": \"BatchLongest\", \"direction\": \"Left\", \"pad_to_multiple_of\": 18446744073709551615, \"pad_id\": 4294967295, \"pad_type_id\": 0, \"pad_token\": \"x\"}",
        "{\"strategy\": {\"Fixed\": 3}, \"direction\": \"Right\", \"pad_to_multiple_of\": null, \"pad_id\": 1, \"pad_type_id\": 0, \"pad_token\": \"<|padding|>\"}",
        "{\"direction\": \"Right\", \"max_length\": 1, \"strategy\": \"LongestFirst\", \"stride\": 0}",
        "{\"direction\": \"Left\", \"max_length\": 0, \"strategy\": \"OnlyFirst\", \"stride\": 18446744073709551615}",
        "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"(a+)+$\"}, \"behavior\": \"Isolated\", \"invert\": false}",
        "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"(\"}, \"behavior\": \"Isolated\", \"invert\": false}",
        "{\"type\": \"Split\", \"pattern\": {\"String\": \"\"}, \"behavior\": \"Removed\", \"invert\": true}",
        "{\"type\": \"Replace\", \"pattern\": {\"String\": \"\"}, \"content\": \"aaaaaaaaaaaaaaaa\"}",
        "{\"type\": \"Replace\", \"pattern\": {\"Regex\": \"\"}, \"content\": \"ab\"}",
        "{\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": {\"id\": \"<|endoftext|>\", \"type_id\": 0}}], \"pair\": [], \"special_tokens\": {}}",
        "{\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"trim_offsets\": true, \"use_regex\": true}",
        "{\"type\": \"WordPiece\", \"unk_token\": \"<unk>\", \"continuing_subword_prefix\": \"##\", \"max_input_chars_per_word\": 0, \"vocab\": {}}",
        "{\"type\": \"WordLevel\", \"vocab\": {\"a\": 4294967295}, \"unk_token\": \"a\"}",
        "{\"type\": \"Unigram\", \"unk_id\": 5, \"vocab\": [[\"a\", 0.0]], \"byte_fallback\": false}",
        "{\"type\": \"Unigram\", \"unk_id\": null, \"vocab\": [], \"byte_fallback\": true}",
        "{\"type\": \"Metaspace\", \"replacement\": \"▁\", \"prepend_scheme\": \"always\", \"split\": true}",
        "{\"id\": 4294967295, \"content\": \"<big>\", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": true}",
        "{\"id\": 0, \"content\": \"\", \"single_word\": true, \"lstrip\": true, \"rstrip\": true, \"normalized\": true, \"special\": false}",
        "{\"type\": \"ByteFallback\"}",
        "[\"Ġ Ġ\", \"a b c\"]",
        "[[\"Ġ\", \"Ġ\"]]",
        "null",
    ],
};

/// Text the targets encode with every tokenizer they load.
pub const SAMPLE_TEXT: &str =
    "System password: apple\nUser password: äpple ☃ 123\r\n\n\nAnswer: <|endoftext|>  \u{0}";

/// A mutated tokenizer.json through `Tokenizer::from_file`; an accepted tokenizer encodes
/// and decodes a sample text (Ok or a named Err).
pub fn tokenizer(data: &[u8]) -> Outcome {
    let mut g = Gen::new(data);
    let s = seeds();
    let seed = &s.tokenizers[g.below(s.tokenizers.len())];
    let bytes = mutate_json_file(&mut g, seed, &TOKENIZER_DICT, 3);
    let dir = workdir("tokenizer");
    let path = write(&dir, "tokenizer.json", &bytes);
    let tok = match Tokenizer::from_file(&path) {
        Ok(t) => t,
        Err(e) => return refused("tokenizer.json", &e, &dir),
    };
    let _ = tok.vocab_size();
    let _ = tok.token_to_id("<|endoftext|>");
    let _ = armsrace::task::special_token_ids(&tok);
    if let Ok(ids) = tok.encode(SAMPLE_TEXT) {
        assert!(
            ids.len() <= 4 * SAMPLE_TEXT.len() + 16,
            "{} ids for a text of {} bytes",
            ids.len(),
            SAMPLE_TEXT.len()
        );
        let _ = tok.decode(&ids);
    }
    let _ = tok.decode(&[0, 1, 2, 300, u32::MAX]);
    Outcome::Accepted
}

const JSONL_DICT: Dict = Dict {
    keys: &[
        "text", "label", "chosen", "rejected", "id", "labels", "Text",
    ],
    strings: &["\n\nHuman: hi\n\nAssistant: hello", "\u{feff}"],
    values: &["0", "1", "2", "-1", "1.0", "\"1\"", "null", "[0]", "true"],
};

/// JSONL lines: changed one at a time (values, fields), duplicated, dropped, blank,
/// CRLF, BOM, invalid UTF-8, very long; then byte-level damage.
fn mutate_jsonl(g: &mut Gen, seed: &[u8]) -> Vec<u8> {
    if g.below(16) == 15 {
        return cap(g.bytes(MAX_FILE));
    }
    let mut lines: Vec<Vec<u8>> = seed.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    for _ in 0..g.range(0, 5) {
        let i = g.below(lines.len().max(1));
        if lines.is_empty() {
            lines.push(Vec::new());
        }
        match g.below(10) {
            0..=3 => {
                if let Ok(mut v) = serde_json::from_slice::<Value>(&lines[i]) {
                    for _ in 0..g.range(1, 3) {
                        mutate_value(g, &mut v, &JSONL_DICT, 6);
                    }
                    lines[i] = serde_json::to_vec(&v).expect("serializable");
                }
            }
            4 => {
                let l = lines[i].clone();
                lines.insert(i, l);
            }
            5 => {
                lines.remove(i);
            }
            6 => {
                let blanks: [&[u8]; 5] = [b"", b"  ", b"\t", b"\r", b"\xEF\xBB\xBF"];
                let blank = *g.pick(&blanks);
                lines.insert(i, blank.to_vec());
            }
            7 => lines[i].push(b'\r'),
            8 => {
                let long = format!(
                    "{{\"text\": \"{}\", \"label\": 0}}",
                    "x".repeat(g.range(1, 1 << 18))
                );
                lines.insert(i, long.into_bytes());
            }
            _ => {
                let mut l = std::mem::take(&mut lines[i]);
                mutate_bytes(g, &mut l, true);
                lines[i] = l;
            }
        }
    }
    let mut out = lines.join(&b'\n');
    if g.coin(1, 8) {
        out.splice(0..0, b"\xEF\xBB\xBF".iter().copied());
    }
    if g.coin(1, 4) {
        mutate_bytes(g, &mut out, true);
    }
    cap(out)
}

/// What a loaded JSONL promises: examples, each label a class of the task.
fn check_examples(task: &Task, ex: &[armsrace::task::Example]) {
    assert!(!ex.is_empty(), "{}: loaded no examples", task.def.name);
    let n = task.def.num_labels();
    for (i, e) in ex.iter().enumerate() {
        assert!(
            (e.label as usize) < n,
            "{}: example {i} has label {} of {n} classes",
            task.def.name,
            e.label
        );
    }
}

/// A mutated JSONL file through `Task::from_name("jsonl:PATH")` + `load_jsonl`, the
/// Helpful task (pairs allowed) and `jsonl::load` of a named task.
pub fn jsonl_data(data: &[u8]) -> Outcome {
    let mut g = Gen::new(data);
    let s = seeds();
    let pairs = g.coin(1, 3);
    let seed = if pairs { &s.jsonl_pairs } else { &s.jsonl_text };
    let bytes = mutate_jsonl(&mut g, seed);
    let with_sidecar = g.coin(1, 4);
    let dir = workdir("jsonl");
    let path = write(&dir, "data.jsonl", &bytes);
    if with_sidecar {
        write(&dir, "data.task.json", &s.sidecar);
    }
    let mut outcome = Outcome::Refused;
    let generic = Task::from_name(&format!("jsonl:{}", path.display()))
        .unwrap_or_else(|e| panic!("the task of a file with a valid sidecar: {e}"));
    match generic.load_jsonl(None) {
        Ok(ex) => {
            check_examples(&generic, &ex);
            outcome = Outcome::Accepted;
        }
        Err(e) => {
            refused("jsonl task", &e, &dir);
        }
    }
    for name in ["helpful", "spam"] {
        let task = Task::from_name(name).expect("a named task");
        match task.load_jsonl(Some(&path)) {
            Ok(ex) => {
                check_examples(&task, &ex);
                outcome = Outcome::Accepted;
            }
            Err(e) => {
                refused(name, &e, &dir);
            }
        }
    }
    match jsonl::load(&path, &generic.def) {
        Ok(ex) => check_examples(&generic, &ex),
        Err(e) => {
            refused("jsonl::load", &e, &dir);
        }
    }
    outcome
}

const SIDECAR_DICT: Dict = Dict {
    keys: &[
        "instructions",
        "label_names",
        "answer_prompt",
        "labels",
        "name",
    ],
    strings: &[" A", " B", "", "\n\nAnswer:"],
    values: &[
        "[\" A\", \" B\"]",
        "[\" A\"]",
        "[]",
        "[\"\", \" B\"]",
        "[\" A\", \" A\"]",
        "null",
    ],
};

/// A mutated `.task.json` sidecar through `Task::from_name("jsonl:PATH")`, then the data
/// (labels 0..=2) loaded against the classes it declares.
pub fn task_sidecar(data: &[u8]) -> Outcome {
    let mut g = Gen::new(data);
    let s = seeds();
    let bytes = mutate_json_file(&mut g, &s.sidecar, &SIDECAR_DICT, 4);
    let dir = workdir("task_sidecar");
    let path = write(
        &dir,
        "data.jsonl",
        b"{\"text\": \"a\", \"label\": 0}\n{\"text\": \"b\", \"label\": 1}\n{\"text\": \"c\", \"label\": 2}\n",
    );
    write(&dir, "data.task.json", &bytes);
    let task = match Task::from_name(&format!("jsonl:{}", path.display())) {
        Ok(t) => t,
        Err(e) => return refused("task sidecar", &e, &dir),
    };
    assert!(
        task.def.num_labels() >= 2 && task.def.label_names.iter().all(|l| !l.is_empty()),
        "accepted sidecar with label_names {:?}",
        task.def.label_names
    );
    match task.load_jsonl(None) {
        Ok(ex) => {
            check_examples(&task, &ex);
            assert_eq!(ex.len(), 3);
        }
        Err(e) => {
            assert!(task.def.num_labels() < 3, "3 classes refuse label 2: {e}");
            refused("data under a sidecar", &e, &dir);
        }
    }
    Outcome::Accepted
}

/// A whole checkpoint directory with a mutated config.json, model.safetensors or both,
/// through `Model::load`; a loaded model runs a short sequence.
pub fn model_dir(data: &[u8]) -> Outcome {
    let mut g = Gen::new(data);
    let s = seeds();
    let ck = &s.single[g.below(s.single.len())];
    let config = ck.get("config.json").expect("config");
    let weights = ck.get("model.safetensors").expect("weights");
    let (config, weights) = match g.below(5) {
        0 | 1 => (
            mutate_json_file(&mut g, config, &CONFIG_DICT, 6),
            weights.to_vec(),
        ),
        2 | 3 => {
            let damage = g.coin(1, 4);
            (config.to_vec(), mutate_st_file(&mut g, weights, damage))
        }
        _ => (
            mutate_json_file(&mut g, config, &CONFIG_DICT, 6),
            mutate_st_file(&mut g, weights, false),
        ),
    };
    let dir = workdir("model_dir");
    write(&dir, "config.json", &config);
    write(&dir, "model.safetensors", &weights);
    match Model::load(&dir, Cpu) {
        Ok(m) => {
            check_config(&m.cfg);
            run_model(&m);
            Outcome::Accepted
        }
        Err(e) => refused("checkpoint", &e, &dir),
    }
}

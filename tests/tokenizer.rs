//! Our tokenizer wrapper against ids written by Python `tokenizers`
//! (tests/fixtures/tokenizer_cases.json, from tests/fixtures/make_fixtures.py).

mod common;

use armsrace::tokenize::Tokenizer;
use common::fixture;
use serde_json::Value;

fn cases() -> Value {
    let path = fixture("tokenizer_cases.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("tokenizer_cases.json parses")
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("ids is a list")
        .iter()
        .map(|x| x.as_u64().expect("id is an integer") as u32)
        .collect()
}

fn load(dir: &str) -> Tokenizer {
    let path = fixture(dir).join("tokenizer.json");
    Tokenizer::from_file(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// Every encode case must give exactly the Python ids; returns how many were checked.
fn check_encode(key: &str, tok: &Tokenizer) -> usize {
    let all = cases();
    let list = all[key].as_array().expect("encode cases are a list");
    assert!(!list.is_empty(), "{key}: no encode cases");
    let mut failures = Vec::new();
    for case in list {
        let text = case["text"].as_str().expect("text is a string");
        let want = ids_of(&case["ids"]);
        let got = tok
            .encode(text)
            .unwrap_or_else(|e| panic!("{key}: encode {text:?}: {e}"));
        if got != want {
            failures.push(format!("{text:?}: got {got:?}, want {want:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{key}: {} of {} encode cases differ:\n{}",
        failures.len(),
        list.len(),
        failures.join("\n")
    );
    list.len()
}

fn check_decode(key: &str, tok: &Tokenizer) -> usize {
    let all = cases();
    let list = all["decode"][key]
        .as_array()
        .expect("decode cases are a list");
    assert!(!list.is_empty(), "{key}: no decode cases");
    let mut failures = Vec::new();
    for case in list {
        let ids = ids_of(&case["ids"]);
        let want = case["text"].as_str().expect("text is a string");
        let got = tok
            .decode(&ids)
            .unwrap_or_else(|e| panic!("{key}: decode {ids:?}: {e}"));
        if got != want {
            failures.push(format!("{ids:?}: got {got:?}, want {want:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{key}: {} of {} decode cases differ:\n{}",
        failures.len(),
        list.len(),
        failures.join("\n")
    );
    list.len()
}

#[test]
fn bytelevel_encode_matches_python() {
    let n = check_encode("bytelevel", &load("tokenizer-bytelevel"));
    assert!(n >= 20, "expected the full case list, got {n}");
}

#[test]
fn qwen_encode_matches_python() {
    let n = check_encode("qwen", &load("tokenizer-qwen"));
    assert!(n >= 20, "expected the full case list, got {n}");
}

#[test]
fn bytelevel_decode_matches_python() {
    check_decode("bytelevel", &load("tokenizer-bytelevel"));
}

#[test]
fn qwen_decode_matches_python() {
    check_decode("qwen", &load("tokenizer-qwen"));
}

/// Decoding what we encoded gives ASCII text back exactly (the alphabet covers every byte),
/// and non-ASCII text back up to NFC, which then encodes to the same ids.
#[test]
fn encode_decode_round_trip() {
    let all = cases();
    for (key, dir) in [
        ("bytelevel", "tokenizer-bytelevel"),
        ("qwen", "tokenizer-qwen"),
    ] {
        let tok = load(dir);
        for case in all[key].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let ids = tok.encode(text).unwrap();
            let back = tok.decode(&ids).unwrap();
            if text.is_ascii() {
                assert_eq!(back, text, "{key}: ascii text must round-trip exactly");
            } else {
                // NFC may recompose the text; the normalized form must be a fixed point.
                assert_eq!(
                    tok.encode(&back).unwrap(),
                    ids,
                    "{key}: {text:?} -> {back:?}"
                );
            }
        }
    }
}

#[test]
fn special_tokens_and_vocab() {
    let b = load("tokenizer-bytelevel");
    assert_eq!(b.token_to_id("<|endoftext|>"), Some(0));
    assert_eq!(b.token_to_id("<|padding|>"), Some(1));
    assert_eq!(b.vocab_size(), 400);
    let q = load("tokenizer-qwen");
    assert_eq!(q.token_to_id("<|endoftext|>"), Some(397));
    assert_eq!(q.token_to_id("<|im_start|>"), Some(398));
    assert_eq!(q.token_to_id("<|im_end|>"), Some(399));
    assert_eq!(q.vocab_size(), 400);
}

/// The model fixtures carry copies of the tokenizers; they must be the same files.
#[test]
fn fixture_copies_agree() {
    let all = cases();
    for (model, key) in [
        ("neox-parallel-cls", "bytelevel"),
        ("neox-sequential-lm", "bytelevel"),
        ("qwen2-gqa-tied-lm", "qwen"),
        ("qwen2-untied-cls", "qwen"),
    ] {
        let tok = Tokenizer::from_file(&fixture(model).join("tokenizer.json")).unwrap();
        for case in all[key].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            assert_eq!(
                tok.encode(text).unwrap(),
                ids_of(&case["ids"]),
                "{model}: {text:?}"
            );
        }
    }
}

//! `armsrace classify` on transformers-written checkpoints gives transformers' logits.

mod common;

use std::process::Command;

fn jsonl(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn check(name: &str) {
    let dir = common::fixture(name);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.jsonl");
    let status = Command::new(env!("CARGO_BIN_EXE_armsrace"))
        .args(["classify", "--model"])
        .arg(&dir)
        .arg("--input")
        .arg(dir.join("classify.jsonl"))
        .arg("--output")
        .arg(&out)
        // a small batch budget forces several padded batches
        .args(["--batch-tokens", "150"])
        .status()
        .unwrap();
    assert!(status.success());
    let got = jsonl(&out);
    let want = jsonl(&dir.join("classify_expected.jsonl"));
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        common::assert_close(
            &format!("{name} line {i} logits"),
            &floats(&g["logits"]),
            &floats(&w["logits"]),
            1e-4,
        );
        assert_eq!(g["pred"], w["pred"], "{name} line {i} pred");
        let (gl, wl) = (g["loss"].as_f64().unwrap(), w["loss"].as_f64().unwrap());
        assert!(
            (gl - wl).abs() < 1e-4 * wl.abs().max(1.0),
            "{name} line {i} loss {gl} vs {wl}"
        );
    }
}

#[test]
fn classify_matches_transformers_neox() {
    check("neox-parallel-cls");
}

#[test]
fn classify_matches_transformers_qwen2() {
    check("qwen2-untied-cls");
}

#[test]
fn classify_rejects_lm_checkpoint_and_bad_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.jsonl");
    std::fs::write(&input, "{\"text\": \"hello\"}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_armsrace"))
        .args(["classify", "--model"])
        .arg(common::fixture("qwen2-gqa-tied-lm"))
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("score"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    std::fs::write(&input, "{\"text\": \"hello\"}\n{\"text\": 5}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_armsrace"))
        .args(["classify", "--model"])
        .arg(common::fixture("neox-parallel-cls"))
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2") && err.contains("text"), "{err}");
}

#[test]
fn classify_defaults_to_the_bundled_classifier() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.jsonl");
    let def = armsrace::task::Task::from_name("password-match")
        .unwrap()
        .def;
    let text = |user: &str| {
        let ex = armsrace::task::Example {
            text: format!("System password: lantern\nUser password: {user}\n---\n"),
            label: 0,
        };
        serde_json::json!({ "text": armsrace::task::prompt::clean_prompt(&def, &ex) })
    };
    std::fs::write(&input, format!("{}\n{}\n", text("lantern"), text("oyster"))).unwrap();
    // From the repository root (the committed directory) and from anywhere else (the copy
    // embedded in the binary): the same classifier, the same logits.
    let run_in = |dir: &std::path::Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_armsrace"))
            .current_dir(dir)
            .args(["classify", "--input"])
            .arg(&input)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "in {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect::<Vec<serde_json::Value>>()
    };
    let lines = run_in(std::path::Path::new(env!("CARGO_MANIFEST_DIR")));
    assert_eq!(lines.len(), 2);
    // Both predictions exist; the clear match and the clear mismatch are told apart.
    assert_eq!(lines[0]["pred"], 1, "{:?}", lines[0]);
    assert_eq!(lines[1]["pred"], 0, "{:?}", lines[1]);
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    assert_eq!(run_in(&elsewhere), lines);
}

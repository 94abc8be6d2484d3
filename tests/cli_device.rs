//! `--device` / `--dtype` on `armsrace attack` and `armsrace classify`: the GPU backend path
//! (here over the CPU execution harness, the hidden `--device emu`) gives the CPU's results,
//! and asking for a device this build or machine lacks is a clear error, not a panic.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn armsrace(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_armsrace"))
        .current_dir(common::repo_root())
        .args(args)
        .output()
        .unwrap()
}

fn jsonl(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn close(what: &str, a: &serde_json::Value, b: &serde_json::Value) {
    let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
    assert!(
        (a - b).abs() <= 1e-3 * b.abs().max(1e-3),
        "{what}: {a} vs {b}"
    );
}

#[test]
fn classify_on_the_gpu_backend_matches_cpu() {
    let input = "tests/fixtures/neox-parallel-cls/classify.jsonl";
    let run = |device: &str| {
        let out = armsrace(&[
            "classify",
            "--model",
            "models/pythia-password-match",
            "--input",
            input,
            "--device",
            device,
        ]);
        assert!(
            out.status.success(),
            "{device}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        jsonl(&String::from_utf8_lossy(&out.stdout))
    };
    let (cpu, emu) = (run("cpu"), run("emu"));
    assert_eq!(cpu.len(), emu.len());
    for (i, (c, e)) in cpu.iter().zip(&emu).enumerate() {
        assert_eq!(c["pred"], e["pred"], "line {i}: prediction");
        for (x, y) in e["logits"]
            .as_array()
            .unwrap()
            .iter()
            .zip(c["logits"].as_array().unwrap())
        {
            close(&format!("line {i} logits"), x, y);
        }
    }
}

#[test]
fn attack_on_the_gpu_backend_matches_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |device: &str| {
        let dir = tmp.path().join(device);
        let out = armsrace(&[
            "attack",
            "--examples",
            "2",
            "--iterations",
            "1",
            "--search-width",
            "16",
            "--device",
            device,
            "--out",
            dir.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{device}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        jsonl(&std::fs::read_to_string(Path::new(&dir).join("results.jsonl")).unwrap())
    };
    let (cpu, emu) = (run("cpu"), run("emu"));
    assert_eq!(cpu.len(), emu.len());
    for (c, e) in cpu.iter().zip(&emu) {
        let what = format!("{} example {}", c["type"], c["example"]);
        assert_eq!(c["type"], e["type"], "{what}");
        assert_eq!(c["example"], e["example"], "{what}");
        match c["type"].as_str() {
            Some("clean") => close(&what, &e["clean_loss"], &c["clean_loss"]),
            Some("iter") => {
                close(&what, &e["loss"], &c["loss"]);
                assert_eq!(c["attack_ids"], e["attack_ids"], "{what}: attack picked");
                assert_eq!(c["executed_flops"], e["executed_flops"], "{what}: FLOPs");
            }
            _ => {}
        }
    }
}

#[test]
fn unavailable_devices_are_clear_errors() {
    let classify = [
        "classify",
        "--model",
        "models/pythia-password-match",
        "--input",
        "tests/fixtures/neox-parallel-cls/classify.jsonl",
    ];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            [&classify[..], &["--device", "cpu", "--dtype", "bf16"]].concat(),
            "--dtype bf16 needs --device cuda",
        ),
        (
            vec!["attack", "--dtype", "bf16", "--iterations", "1"],
            "--dtype bf16 needs --device cuda",
        ),
        // Without feature `cuda`: no CUDA support in this build; with it on a machine
        // without a GPU: no driver or device. Either way the message starts the same.
        (
            [&classify[..], &["--device", "cuda"]].concat(),
            "--device cuda:",
        ),
    ];
    for (args, want) in cases {
        let out = armsrace(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        if args.contains(&"cuda") && out.status.success() {
            println!("a CUDA device is present: `{}` ran", args.join(" "));
            continue;
        }
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(
            err.contains(want),
            "{args:?}: stderr {err:?} lacks {want:?}"
        );
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    }
}

//! `armsrace report` end to end on the real binary: two tiny attacks (seeds 0 and 1) and a
//! tiny adversarial-training run with a two-threat evaluation, then the report:
//! - every file is written; `table.csv` has one row per (run, iteration) whose `asr` equals
//!   that run's `summary.json` (read here with serde_json, not through the library);
//! - a report of the report's own `table.csv` gives the same table, slopes and figure
//!   numbers; running twice gives byte-identical files;
//! - `--table-only` writes only the table; a folder without runs is an error naming it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_armsrace");
/// The bundled classifier was never pretrained: its tokens seen in training, as the README's
/// adversarial-training example gives, make compute fractions known.
const PRETRAIN: &str = "18550000";

fn run(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(["--threads", "2"])
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "armsrace {args:?} failed:\n{text}");
    text
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every summary.json's `asr` under `dir`, by its path relative to `root` (`/`-joined).
fn summaries(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<f64>>) {
    let summary = dir.join("summary.json");
    if dir.join("adv_config.json").is_file() {
        // An adv-train run: its evaluations, not the training attacks of its rounds.
        return summaries(root, &dir.join("eval"), out);
    }
    if summary.is_file() && dir.join("config.json").is_file() {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
        let asr: Vec<f64> = v["asr"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let rel = dir.strip_prefix(root).unwrap();
        let name: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        out.insert(name.join("/"), asr);
        return;
    }
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    subdirs.sort();
    for d in subdirs {
        summaries(root, &d, out);
    }
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

#[test]
fn report_of_attacks_and_adversarial_training() {
    let tmp = tempfile::tempdir().unwrap();
    let res = tmp.path().join("results");
    for seed in ["0", "1"] {
        let out = res.join(format!("att-s{seed}"));
        run(&[
            "attack",
            "--examples",
            "4",
            "--iterations",
            "3",
            "--seed",
            seed,
            "--pretrain-tokens",
            PRETRAIN,
            "--out",
            s(&out),
        ]);
    }
    let adv = res.join("adv");
    run(&[
        "adv-train",
        "--out",
        s(&adv),
        "--rounds",
        "2",
        "--attacked-per-round",
        "4",
        "--iterations-from",
        "2",
        "--iterations-to",
        "3",
        "--max-train",
        "16",
        "--clean-examples",
        "300",
        "--pretrain-tokens",
        PRETRAIN,
    ]);
    run(&[
        "eval",
        "--run",
        s(&adv),
        "--rounds",
        "0,1,2",
        "--examples",
        "6",
        "--iterations",
        "4",
        "--threat",
        "suffix,prefix",
        "--pretrain-tokens",
        PRETRAIN,
    ]);

    let rep = tmp.path().join("report");
    let said = run(&["report", s(&res), "--out", s(&rep)]);
    assert!(said.contains("rows from 8 runs"), "{said}");
    let names = [
        "table.csv",
        "table.jsonl",
        "slopes.csv",
        "slopes.json",
        "summary.md",
    ];
    let mut expected: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    for fig in [
        "fig1_offense_defense",
        "fig2_asr_vs_size",
        "fig3_attack_scaling",
        "fig5_adv_training",
        "fig7_transfer",
    ] {
        for ext in ["svg", "png", "csv"] {
            expected.push(format!("{fig}.{ext}"));
        }
    }
    let got = files(&rep);
    for name in &expected {
        assert!(
            got.contains_key(name),
            "{name} missing from {:?}",
            got.keys()
        );
    }

    // table.csv against every run's summary.json.
    let mut want = BTreeMap::new();
    summaries(&res, &res, &mut want);
    // Two attacks and 2 threats x 3 rounds of evaluation (the adv-train run's own
    // training attacks are not evaluations).
    assert_eq!(want.len(), 8, "{:?}", want.keys());
    let mut rdr = csv::Reader::from_path(rep.join("table.csv")).unwrap();
    let header = rdr.headers().unwrap().clone();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let (run_c, it_c, asr_c) = (col("run"), col("iteration"), col("asr"));
    let mut table: BTreeMap<String, Vec<(u64, f64)>> = BTreeMap::new();
    for rec in rdr.records() {
        let rec = rec.unwrap();
        table
            .entry(rec[run_c].to_string())
            .or_default()
            .push((rec[it_c].parse().unwrap(), rec[asr_c].parse().unwrap()));
    }
    assert_eq!(
        table.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (name, asr) in &want {
        let rows = &table[name];
        let expect: Vec<(u64, f64)> = asr
            .iter()
            .enumerate()
            .map(|(i, &a)| (i as u64, a))
            .collect();
        assert_eq!(rows, &expect, "{name}");
    }
    let summary = String::from_utf8(got["summary.md"].clone()).unwrap();
    assert!(summary.contains("![Figure 1"), "{summary}");
    assert!(summary.contains("| figure | panel | model size | slope | 95% CI"));
    assert!(
        !summary.contains(s(tmp.path())),
        "absolute path in summary.md"
    );

    // The report of its own table: the same table and numbers.
    let rep2 = tmp.path().join("report2");
    run(&["report", s(&rep.join("table.csv")), "--out", s(&rep2)]);
    let got2 = files(&rep2);
    for name in expected
        .iter()
        .filter(|n| !n.ends_with(".png") && !n.ends_with(".svg"))
    {
        assert!(
            got[name] == got2[name],
            "{name} differs when read from table.csv"
        );
    }

    // Twice: byte-identical, drawings included.
    let rep3 = tmp.path().join("report3");
    run(&["report", s(&res), "--out", s(&rep3)]);
    let got3 = files(&rep3);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        got3.keys().collect::<Vec<_>>()
    );
    for (name, bytes) in &got {
        assert!(bytes == &got3[name], "{name} differs between two runs");
    }

    // --table-only.
    let only = tmp.path().join("only");
    run(&["report", s(&res), "--out", s(&only), "--table-only"]);
    let o = files(&only);
    assert_eq!(o.keys().collect::<Vec<_>>(), ["table.csv", "table.jsonl"]);
    assert!(o["table.csv"] == got["table.csv"]);

    // No runs: an error naming the folder, nothing written.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = Command::new(BIN)
        .args(["report", s(&empty), "--out", s(&tmp.path().join("none"))])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no runs found") && err.contains("empty"),
        "{err}"
    );
    assert!(!tmp.path().join("none").exists());
}

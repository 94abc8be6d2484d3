//! Training: deterministic for a seed, a killed run resumes to the same weights, a causal LM
//! gets a new `score` head, saved checkpoints reload with the same logits, bad input errors.

mod common;

use armsrace::model::config::HeadKind;
use armsrace::train::job::{run, DataSpec, Init, JobOptions};
use armsrace::train::optim::OptimizerKind;
use armsrace::train::TrainConfig;
use armsrace::{Batch, Cpu, Model};
use std::path::Path;

fn opts(out: &Path, from: &str, optimizer: OptimizerKind, stop_after: Option<u64>) -> JobOptions {
    JobOptions {
        out: out.to_path_buf(),
        data: DataSpec {
            task: "password-match".into(),
            train_examples: 24,
            val_examples: 8,
            data_seed: 3,
            train_file: None,
            val_file: None,
            junk_suffix: 0.0,
            truncate: Default::default(),
        },
        init: Init::From(common::fixture(from)),
        train: TrainConfig {
            epochs: 2,
            lr: 1e-3,
            optimizer,
            batch_size: 4,
            batch_tokens: 1024,
            grad_accum: 2,
            seed: 7,
            ..Default::default()
        },
        save_every: 1,
        stop_after,
    }
}

fn weights(dir: &Path) -> Vec<f32> {
    let m = Model::load(dir, Cpu).unwrap();
    let w = m.download_weights();
    let mut all = w.embed.clone();
    for l in &w.layers {
        all.extend_from_slice(&l.qkv_w);
        all.extend_from_slice(&l.down_w);
    }
    all.extend_from_slice(w.head.as_ref().unwrap());
    all
}

#[test]
fn training_is_deterministic_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    for kind in [OptimizerKind::adafactor(), OptimizerKind::adamw()] {
        for d in [&a, &b, &c] {
            let _ = std::fs::remove_dir_all(d);
        }
        run(opts(&a, "neox-parallel-cls", kind, None), |_| {}).unwrap();
        run(opts(&b, "neox-parallel-cls", kind, None), |_| {}).unwrap();
        assert_eq!(
            weights(&a),
            weights(&b),
            "same seed, same weights ({kind:?})"
        );
        // Killed after 3 optimizer steps (mid-epoch), then resumed.
        assert!(run(opts(&c, "neox-parallel-cls", kind, Some(3)), |_| {})
            .unwrap()
            .is_none());
        assert!(c.join("optimizer.safetensors").exists());
        run(opts(&c, "neox-parallel-cls", kind, None), |_| {}).unwrap();
        assert_eq!(
            weights(&a),
            weights(&c),
            "resumed run equals uninterrupted ({kind:?})"
        );
        assert!(
            !c.join("optimizer.safetensors").exists(),
            "finished runs drop optimizer state"
        );
        assert_ne!(
            weights(&a),
            weights(&common::fixture("neox-parallel-cls")),
            "training changed weights"
        );
    }
}

#[test]
fn causal_lm_gets_a_score_head_and_checkpoint_reloads() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cls");
    let mut o = opts(&out, "qwen2-gqa-tied-lm", OptimizerKind::adafactor(), None);
    o.train.epochs = 1;
    let acc = run(o, |_| {}).unwrap();
    assert!(acc.is_some());
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "Qwen2ForSequenceClassification");
    // The task's label names, as transformers' pipelines show them.
    assert_eq!(
        cfg["id2label"],
        serde_json::json!({"0": "DENIED", "1": "GRANTED"})
    );
    assert_eq!(
        cfg["label2id"],
        serde_json::json!({"DENIED": 0, "GRANTED": 1})
    );
    let m = Model::load(&out, Cpu).unwrap();
    assert_eq!(m.cfg.head, HeadKind::Classifier { num_labels: 2 });
    // The saved body equals the LM's body where training did not touch it? Training did, so
    // instead check the reload is exact: logits from a reloaded model equal a second reload.
    let batch = Batch::from_sequences(
        &[vec![5, 6, 7, 8], vec![9, 10]],
        m.cfg.pad_token_id.unwrap(),
    )
    .unwrap();
    let again = Model::load(&out, Cpu).unwrap();
    assert_eq!(m.logits(&batch).unwrap(), again.logits(&batch).unwrap());
}

#[test]
fn bad_training_input_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut o = opts(
        &tmp.path().join("x"),
        "neox-parallel-cls",
        OptimizerKind::adamw(),
        None,
    );
    o.data.task = "no-such-task".into();
    let e = run(o, |_| {}).unwrap_err().to_string();
    assert!(
        e.contains("unknown task") && e.contains("password-match"),
        "{e}"
    );

    // Settings that cannot train are refused before anything runs, naming the flag.
    type Set = fn(&mut TrainConfig);
    let settings: [(&str, Set); 5] = [
        ("--grad-accum", |t| t.grad_accum = 0),
        ("--epochs", |t| t.epochs = 0),
        ("--lr", |t| t.lr = f32::NAN),
        ("--lr", |t| t.lr = -1e-3),
        ("--batch-size", |t| t.batch_size = 0),
    ];
    for (flag, set) in settings {
        let mut o = opts(
            &tmp.path().join("s"),
            "neox-parallel-cls",
            OptimizerKind::adamw(),
            None,
        );
        set(&mut o.train);
        let e = run(o, |_| {}).unwrap_err().to_string();
        assert!(e.contains(flag), "{flag}: {e}");
        assert!(!tmp.path().join("s").exists(), "{flag}: nothing written");
    }

    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"text\": \"a\", \"label\": 0}\n{\"text\": \"b\", \"label\": 1\n",
    )
    .unwrap();
    let mut o = opts(
        &tmp.path().join("y"),
        "neox-parallel-cls",
        OptimizerKind::adamw(),
        None,
    );
    o.data.task = format!("jsonl:{}", bad.display());
    let e = run(o, |_| {}).unwrap_err().to_string();
    assert!(e.contains("line 2"), "{e}");

    std::fs::write(&bad, "{\"text\": \"a\", \"label\": 5}\n").unwrap();
    let mut o = opts(
        &tmp.path().join("z"),
        "neox-parallel-cls",
        OptimizerKind::adamw(),
        None,
    );
    o.data.task = format!("jsonl:{}", bad.display());
    let e = run(o, |_| {}).unwrap_err().to_string();
    assert!(e.contains("label"), "{e}");

    std::fs::write(&bad, "").unwrap();
    let mut o = opts(
        &tmp.path().join("w"),
        "neox-parallel-cls",
        OptimizerKind::adamw(),
        None,
    );
    o.data.task = format!("jsonl:{}", bad.display());
    let e = run(o, |_| {}).unwrap_err().to_string();
    assert!(e.contains("empty") || e.contains("no "), "{e}");
}

#[test]
fn junk_suffixes_put_random_tokens_in_the_slot_only() {
    use armsrace::task::{layout, special_token_ids, Task, ThreatModel, TokenizedPrompt};
    use armsrace::tokenize::Tokenizer;
    use armsrace::train::augment::{junk_suffixes, MAX_JUNK_TOKENS};
    use armsrace::train::job::tokenize_examples;
    let tok =
        Tokenizer::from_file(&common::fixture("neox-parallel-cls").join("tokenizer.json")).unwrap();
    let task = Task::from_name("password-match").unwrap();
    let (train, _) = task.split(200, 10, 1).unwrap();
    let clean = tokenize_examples(&tok, &task.def, &train, 128, Default::default()).unwrap();
    let run = |fraction: f32, seed: u64| {
        let mut d = clean.clone();
        junk_suffixes(&tok, &task.def, &train, &mut d, fraction, seed).unwrap();
        d
    };
    let none = run(0.0, 5);
    assert!(none.iter().zip(&clean).all(|(a, b)| a.ids == b.ids));
    let half = run(0.5, 5);
    assert_eq!(
        half.iter().map(|d| d.ids.clone()).collect::<Vec<_>>(),
        run(0.5, 5)
            .iter()
            .map(|d| d.ids.clone())
            .collect::<Vec<_>>(),
        "same seed, same data"
    );
    let specials = special_token_ids(&tok);
    let mut changed = 0;
    for (i, ((ex, d), c)) in train.iter().zip(&half).zip(&clean).enumerate() {
        assert_eq!(d.label, c.label);
        if d.ids == c.ids {
            continue;
        }
        changed += 1;
        // before ++ junk ++ after, the junk 1..=10 non-special tokens.
        let p = TokenizedPrompt::new(
            &tok,
            &layout(&task.def, ex, &ThreatModel::Suffix, 1, i as u64),
            ex.label,
        )
        .unwrap();
        assert!(d.ids.starts_with(&p.before) && d.ids.ends_with(&p.after));
        let n = d.ids.len() - p.before.len() - p.after.len();
        assert!((1..=MAX_JUNK_TOKENS).contains(&n), "{n} junk tokens");
        let junk = &d.ids[p.before.len()..p.before.len() + n];
        assert!(junk.iter().all(|t| !specials.contains(t)));
    }
    // About half of 200, far from 0 and 200.
    assert!((60..=140).contains(&changed), "{changed} of 200 changed");
    let bad = junk_suffixes(&tok, &task.def, &train, &mut clean.clone(), 1.5, 0);
    assert!(bad
        .unwrap_err()
        .to_string()
        .contains("junk-suffix fraction"));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn resume_checks_its_settings_and_a_finished_run_is_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, whole) = (tmp.path().join("r"), tmp.path().join("whole"));
    let kind = OptimizerKind::adamw();
    run(opts(&whole, "neox-parallel-cls", kind, None), |_| {}).unwrap();
    assert!(run(opts(&out, "neox-parallel-cls", kind, Some(3)), |_| {})
        .unwrap()
        .is_none());
    // Other settings on an unfinished run are refused, naming the field.
    let mut o = opts(&out, "neox-parallel-cls", kind, None);
    o.train.lr = 2e-3;
    let e = run(o, |_| {}).unwrap_err().to_string();
    assert!(e.contains("train.lr"), "{e}");
    let mut o = opts(&out, "neox-parallel-cls", kind, None);
    o.data.train_examples = 25;
    let e = run(o, |_| {}).unwrap_err().to_string();
    assert!(e.contains("data.train_examples"), "{e}");
    let mut o = opts(&out, "qwen2-untied-cls", kind, None);
    o.init = Init::From(common::fixture("qwen2-untied-cls"));
    let e = run(o, |_| {}).unwrap_err().to_string();
    assert!(e.contains("init"), "{e}");

    // Killed between a save's two renames (the checkpoint moved aside, the new one complete
    // but not in place): the resume puts it in place and ends as an uninterrupted run.
    copy_dir(&out, &out.with_extension("tmp"));
    std::fs::rename(&out, out.with_extension("old")).unwrap();
    run(opts(&out, "neox-parallel-cls", kind, None), |_| {}).unwrap();
    assert_eq!(weights(&out), weights(&whole));
    assert!(!out.with_extension("old").exists() && !out.with_extension("tmp").exists());

    // A finished run started again: reported, nothing retrained or rewritten.
    let before = std::fs::read(out.join("model.safetensors")).unwrap();
    let mut finished = false;
    let acc = run(opts(&out, "neox-parallel-cls", kind, None), |e| {
        finished |= matches!(e, armsrace::train::job::Event::Finished { .. })
    })
    .unwrap();
    assert!(finished && acc.is_some());
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        before
    );
    // ... and with other settings it is refused, not replaced.
    let mut o = opts(&out, "neox-parallel-cls", kind, None);
    o.train.epochs = 3;
    let e = run(o, |_| {}).unwrap_err().to_string();
    assert!(e.contains("train.epochs"), "{e}");
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        before
    );
}

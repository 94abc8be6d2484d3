//! Training: deterministic for a seed, a killed run resumes to the same weights (every
//! parameter compared), a causal LM gets a new `score` head, bad input errors; and against
//! independent oracles: the job's first two optimizer steps equal `Model::loss_and_grads`
//! plus AdamW written out here from its formula (torch.optim.AdamW semantics), training
//! lowers the validation loss, and a saved checkpoint gives the in-memory model's logits.

mod common;

use armsrace::model::config::HeadKind;
use armsrace::model::weights::{param_specs, Slot};
use armsrace::tokenize::Tokenizer;
use armsrace::train::checkpoint::{load_progress, load_state};
use armsrace::train::job::{
    load_as_classifier, load_data, run, tokenize_examples, DataSpec, Event, Init, JobOptions,
};
use armsrace::train::optim::OptimizerKind;
use armsrace::train::{epoch_batches, LabeledIds, TrainConfig, Trainer};
use armsrace::{Batch, Cpu, GradRequest, Model, Objective};
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

/// Every parameter of the checkpoint in `dir`, named by its (first) Hugging Face tensor.
fn params(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let m = Model::load(dir, Cpu).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let w = m.download_weights();
    param_specs(&m.cfg)
        .iter()
        .map(|s| (s.pieces[0].0.clone(), w.slot(s.slot).unwrap().clone()))
        .collect()
}

/// The two checkpoints hold the same tensors, bit for bit; a failure names the tensor.
fn assert_same_params(what: &str, a: &Path, b: &Path) {
    let (pa, pb) = (params(a), params(b));
    assert_eq!(pa.len(), pb.len(), "{what}: parameter count");
    for ((na, va), (nb, vb)) in pa.iter().zip(&pb) {
        assert_eq!(na, nb, "{what}: parameter order");
        assert_eq!(va.len(), vb.len(), "{what}: {na} length");
        if let Some(i) = (0..va.len()).find(|&i| va[i].to_bits() != vb[i].to_bits()) {
            panic!("{what}: {na}[{i}] is {} vs {}", va[i], vb[i]);
        }
    }
}

/// The run's training and validation examples, tokenized as the job tokenizes them.
fn job_data(o: &JobOptions, from: &str) -> (Vec<LabeledIds>, Vec<LabeledIds>) {
    let (def, train, val) = load_data(&o.data).unwrap();
    let tok = Tokenizer::from_file(&common::fixture(from).join("tokenizer.json")).unwrap();
    let max = Model::load(&common::fixture(from), Cpu)
        .unwrap()
        .cfg
        .max_positions;
    let t = |ex| tokenize_examples(&tok, &def, ex, max, Default::default()).unwrap();
    (t(&train), t(&val))
}

/// Mean classifier loss of `model` over `data` (one batch).
fn mean_loss(model: &Model<Cpu>, data: &[LabeledIds]) -> f64 {
    let seqs: Vec<Vec<u32>> = data.iter().map(|d| d.ids.clone()).collect();
    let batch = Batch::from_sequences(&seqs, model.cfg.pad_token_id.unwrap_or(0)).unwrap();
    let labels = data.iter().map(|d| d.label).collect();
    let out = model
        .loss_and_grads(
            &batch,
            &Objective::Classify { labels },
            &GradRequest::default(),
        )
        .unwrap();
    assert_eq!(out.loss_per_seq.len(), data.len());
    out.loss_per_seq.iter().map(|&l| l as f64).sum::<f64>() / data.len() as f64
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
        assert_same_params(&format!("same seed ({kind:?})"), &a, &b);
        // Killed after 3 optimizer steps (mid-epoch), then resumed.
        assert!(run(opts(&c, "neox-parallel-cls", kind, Some(3)), |_| {})
            .unwrap()
            .is_none());
        assert!(c.join("optimizer.safetensors").exists());
        run(opts(&c, "neox-parallel-cls", kind, None), |_| {}).unwrap();
        assert_same_params(&format!("resumed vs uninterrupted ({kind:?})"), &a, &c);
        assert!(
            !c.join("optimizer.safetensors").exists(),
            "finished runs drop optimizer state"
        );
        // Every tensor moved (each gets a gradient from every batch).
        let start = params(&common::fixture("neox-parallel-cls"));
        for ((name, after), (_, before)) in params(&a).iter().zip(&start) {
            assert_ne!(after, before, "{kind:?}: training left {name} unchanged");
        }
        // ... and in the right direction: the held-out examples' loss fell.
        let o = opts(&a, "neox-parallel-cls", kind, None);
        let (_, val) = job_data(&o, "neox-parallel-cls");
        let before = mean_loss(
            &Model::load(&common::fixture("neox-parallel-cls"), Cpu).unwrap(),
            &val,
        );
        let after = mean_loss(&Model::load(&a, Cpu).unwrap(), &val);
        eprintln!("{kind:?}: validation loss {before:.4} -> {after:.4}");
        assert!(
            after < 0.9 * before,
            "{kind:?}: validation loss {before:.4} -> {after:.4} did not fall"
        );
    }
}

/// AdamW on one tensor as torch.optim.AdamW defines it, in f64: decoupled weight decay, then
/// the step on the bias-corrected moments (t is 1-based).
#[allow(clippy::too_many_arguments)]
fn adamw_by_hand(
    p: &mut [f64],
    g: &[f64],
    m: &mut [f64],
    v: &mut [f64],
    lr: f64,
    (b1, b2, eps, wd): (f64, f64, f64, f64),
    t: i32,
) {
    assert!(p.len() == g.len() && m.len() == g.len() && v.len() == g.len());
    for i in 0..p.len() {
        m[i] = b1 * m[i] + (1.0 - b1) * g[i];
        v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
        let (mh, vh) = (m[i] / (1.0 - b1.powi(t)), v[i] / (1.0 - b2.powi(t)));
        p[i] = p[i] * (1.0 - lr * wd) - lr * mh / (vh.sqrt() + eps);
    }
}

/// |got - want| over a tensor, at most `rel` x max |want| (floor `abs`); names the worst.
fn assert_close_f64(what: &str, got: &[f64], want: &[f64], rel: f64, abs: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f64, |a, w| a.max(w.abs()));
    let (i, d) = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .enumerate()
        .fold(
            (0, 0.0f64),
            |b, (i, d)| if d > b.1 || d.is_nan() { (i, d) } else { b },
        );
    assert!(
        d <= rel * scale + abs,
        "{what}: max |diff| {d:.3e} at {i} (got {}, want {}) exceeds {rel:.0e} x {scale:.3e}",
        got[i],
        want[i]
    );
}

/// The job's first two optimizer steps (the second after a resume from the first's
/// checkpoint) against an oracle driven by hand: the step's micro-batches (the job's
/// shuffled batches, `grad_accum` of them), `Model::loss_and_grads` on each, the gradient
/// of the mean loss summed on the host, the linear-decay schedule and AdamW from its formula
/// above. The weights' updates and the saved AdamW moments must match.
#[test]
fn train_steps_equal_loss_and_grads_plus_adamw_by_hand() {
    let (b1, b2, eps, wd) = (0.9f32, 0.999f32, 1e-8f32, 0.1f32);
    let kind = OptimizerKind::AdamW {
        beta1: b1,
        beta2: b2,
        eps,
        weight_decay: wd,
    };
    let hp = (b1 as f64, b2 as f64, eps as f64, wd as f64);
    let from = "neox-parallel-cls";
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("two");
    let o = opts(&out, from, kind, Some(1));
    let cfg = o.train.clone();
    let (train, _) = job_data(&o, from);
    let (mcfg, w0) = load_as_classifier(&common::fixture(from), 2, cfg.seed).unwrap();
    let specs = param_specs(&mcfg);
    let batches = epoch_batches(&train, &cfg, 0);
    let total = (batches.len().div_ceil(cfg.grad_accum) * cfg.epochs) as f64;
    let pad = mcfg.pad_token_id.unwrap_or(0);
    // The key bias's gradient is exactly zero in theory (softmax ignores a constant added to
    // every key's score), so in floats it is rounding noise that AdamW's normalized step
    // turns into +-lr in any direction: it is left out of the comparison.
    let (q, k) = (mcfg.heads * mcfg.head_dim, mcfg.kv_heads * mcfg.head_dim);
    let compared =
        |slot: Slot, i: usize| !matches!(slot, Slot::QkvB(_)) || !(q..q + k).contains(&i);

    let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    let mut p: Vec<Vec<f64>> = specs
        .iter()
        .map(|s| f64s(w0.slot(s.slot).unwrap()))
        .collect();
    let mut m: Vec<Vec<f64>> = specs.iter().map(|s| vec![0.0; s.numel()]).collect();
    let mut v = m.clone();
    for step in 1..=2usize {
        let before: Vec<Vec<f64>> = p.clone();
        let model = Model::from_host_weights(
            mcfg.clone(),
            &w0.map(&mcfg, |s, _| {
                let i = specs.iter().position(|x| x.slot == s.slot).unwrap();
                p[i].iter().map(|&x| x as f32).collect()
            }),
            Cpu,
        );
        // The gradient of the mean loss over the step's examples.
        let micro = &batches[(step - 1) * cfg.grad_accum..step * cfg.grad_accum];
        let n: usize = micro.iter().map(Vec::len).sum();
        let mut g: Vec<Vec<f64>> = specs.iter().map(|s| vec![0.0; s.numel()]).collect();
        let mut loss = 0.0f64;
        for idx in micro {
            let seqs: Vec<Vec<u32>> = idx.iter().map(|&i| train[i].ids.clone()).collect();
            let labels = idx.iter().map(|&i| train[i].label).collect();
            let req = GradRequest {
                onehot_rows: None,
                weights: true,
            };
            let r = model
                .loss_and_grads(
                    &Batch::from_sequences(&seqs, pad).unwrap(),
                    &Objective::Classify { labels },
                    &req,
                )
                .unwrap();
            assert_eq!(r.loss_per_seq.len(), idx.len());
            loss += r.loss_per_seq.iter().map(|&l| l as f64).sum::<f64>();
            let wg = r.weight_grads.unwrap();
            for (gi, s) in g.iter_mut().zip(&specs) {
                let part = wg.slot(s.slot).unwrap();
                assert_eq!(part.len(), gi.len());
                for (a, &b) in gi.iter_mut().zip(part) {
                    *a += b as f64 / n as f64;
                }
            }
        }
        let lr = cfg.lr as f64 * (total - (step - 1) as f64) / total;
        for i in 0..specs.len() {
            adamw_by_hand(&mut p[i], &g[i], &mut m[i], &mut v[i], lr, hp, step as i32);
        }

        // The job: one step in this process, then saved (the second resumes from the first).
        let mut reported = Vec::new();
        let done = run(opts(&out, from, kind, Some(1)), |e| {
            if let Event::Step { step, loss } = e {
                reported.push((step, loss));
            }
        })
        .unwrap();
        assert!(done.is_none(), "stopped after one step");
        assert_eq!(reported.len(), 1);
        assert_eq!(reported[0].0, step as u64);
        let want_loss = loss / n as f64;
        assert!(
            (reported[0].1 as f64 - want_loss).abs() <= 1e-6 * want_loss,
            "step {step}: job's loss {} vs {want_loss}",
            reported[0].1
        );
        assert_eq!(load_progress(&out).unwrap().1.step, step as u64);
        let saved = params(&out);
        let (_, _, state) = load_state(&out, specs.len()).unwrap();
        let mut moved = 0;
        for (i, s) in specs.iter().enumerate() {
            let name = &s.pieces[0].0;
            let what = format!("step {step}, {name}");
            let keep = |x: &[f64]| -> Vec<f64> {
                (0..x.len())
                    .filter(|&j| compared(s.slot, j))
                    .map(|j| x[j])
                    .collect()
            };
            assert_eq!(saved[i].0, *name);
            let got = f64s(&saved[i].1);
            // The update (not the weights, whose size would hide an error in it), relative
            // to the largest update of the tensor (~lr: AdamW's step is about lr per element).
            let upd =
                |x: &[f64]| -> Vec<f64> { x.iter().zip(&before[i]).map(|(a, b)| a - b).collect() };
            assert_close_f64(
                &format!("{what}: update"),
                &keep(&upd(&got)),
                &keep(&upd(&p[i])),
                1e-3,
                1e-9,
            );
            assert_close_f64(
                &format!("{what}: first moment"),
                &keep(&f64s(&state[i].m)),
                &keep(&m[i]),
                1e-4,
                0.0,
            );
            assert_close_f64(
                &format!("{what}: second moment"),
                &keep(&f64s(&state[i].v)),
                &keep(&v[i]),
                1e-4,
                0.0,
            );
            moved += usize::from(got != before[i]);
        }
        assert_eq!(moved, specs.len(), "step {step}: every tensor moved");
        // The job continues from its own weights; so does the oracle (from the saved ones,
        // so that the next step compares one step, not the drift of two).
        for (pi, (_, w)) in p.iter_mut().zip(&saved) {
            *pi = f64s(w);
        }
        for (i, st) in state.iter().enumerate() {
            m[i] = f64s(&st.m);
            v[i] = f64s(&st.v);
        }
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
    assert!(
        !m.cfg.tied_embeddings,
        "the score head is not the embedding"
    );

    // The same run in memory (the job's data, batches, schedule and steps through the
    // Trainer API): the saved checkpoint must give the in-memory model's logits and hold its
    // weights, bit for bit.
    let o = opts(&out, "qwen2-gqa-tied-lm", OptimizerKind::adafactor(), None);
    let (train, val) = job_data(&o, "qwen2-gqa-tied-lm");
    let (mcfg, w0) =
        load_as_classifier(&common::fixture("qwen2-gqa-tied-lm"), 2, o.train.seed).unwrap();
    let mut cfg = o.train.clone();
    cfg.epochs = 1;
    let mut t = Trainer::from_host(mcfg, &w0, Cpu, cfg.clone());
    let batches = epoch_batches(&train, &cfg, 0);
    let total = t.total_steps(batches.len());
    for chunk in batches.chunks(cfg.grad_accum) {
        t.step(&train, chunk, total).unwrap();
    }
    assert_eq!(t.progress.step, total);
    let seqs: Vec<Vec<u32>> = val.iter().map(|d| d.ids.clone()).collect();
    let batch = Batch::from_sequences(&seqs, m.cfg.pad_token_id.unwrap()).unwrap();
    let (saved, live) = (m.logits(&batch).unwrap(), t.model.logits(&batch).unwrap());
    assert_eq!(saved.len(), val.len() * 2);
    assert_eq!(
        saved.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        live.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        "saved checkpoint's logits {saved:?} vs the in-memory model's {live:?}"
    );
    let (sw, lw) = (m.download_weights(), t.host_weights());
    for spec in param_specs(&m.cfg) {
        assert_eq!(
            sw.slot(spec.slot),
            lw.slot(spec.slot),
            "saved {} differs from the in-memory model's",
            spec.pieces[0].0
        );
    }
    // Not vacuous: the training moved the model off its starting point.
    let start = Model::from_host_weights(m.cfg.clone(), &w0, Cpu);
    assert_ne!(
        start.logits(&batch).unwrap(),
        saved,
        "training changed nothing"
    );
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
    assert_same_params("resumed after a torn save", &out, &whole);
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

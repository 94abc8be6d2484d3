//! Adversarial training (src/train/adversarial.rs) on the bundled PasswordMatch classifier:
//! - a few rounds lower the evaluation attack's ASR (same attack, same held-out examples,
//!   against round 0);
//! - a run stopped at kill points inside each phase (attack, training, checkpoint write)
//!   and resumed ends byte for byte where an uninterrupted run does;
//! - defense compute adds up, and its training part is bounded by 6 N x the real and the
//!   padded tokens of what the round trained on;
//! - changed settings on an existing run are refused; stale prefix caches are refused.

use armsrace::attack::budget::Budget;
use armsrace::attack::results::{Line, RESULTS_FILE};
use armsrace::attack::session::Plan;
use armsrace::attack::GoalSpec;
use armsrace::model::param_count;
use armsrace::task::{Task, ThreatModel};
use armsrace::train::adversarial::{
    self, checkpoint_dir, eval_rounds, AdvConfig, PoolEntry, PoolWeighting, StopPoint,
};
use armsrace::train::optim::OptimizerKind;
use armsrace::train::{LabeledIds, TrainConfig, Trainer};
use armsrace::{Cpu, Model};
use std::path::{Path, PathBuf};

#[path = "common/kill.rs"]
mod kill;

const BUNDLED: &str = "models/pythia-password-match";

fn bundled() -> PathBuf {
    let p = PathBuf::from(BUNDLED);
    assert!(
        p.join("model.safetensors").exists(),
        "the bundled classifier is missing at {BUNDLED}"
    );
    p
}

/// The study's GCG (Plan::study_gcg) on `examples` examples for `iterations`.
fn gcg_plan(model: PathBuf, examples: usize, iterations: usize) -> Plan {
    Plan {
        examples,
        budget: Budget {
            iterations,
            flops: None,
        },
        group_size: 40,
        ..Plan::study_gcg(model)
    }
}

/// A small run: the study's loop at a test's size (lr and optimizer as the bundled
/// classifier was trained, so a few rounds move it).
fn small(rounds: usize, attacked: usize, iters: (usize, usize), max_train: usize) -> AdvConfig {
    AdvConfig {
        model: bundled(),
        task: "password-match".into(),
        data: None,
        data_seed: 0,
        clean_examples: 2000,
        attacked_per_round: attacked,
        rounds,
        iterations_from: iters.0,
        iterations_to: iters.1,
        max_train,
        adv_fraction: 0.8,
        weighting: PoolWeighting::Rank,
        weight_scale: 0.005,
        train: TrainConfig {
            epochs: 1,
            lr: 1e-3,
            decay: false,
            optimizer: OptimizerKind::adamw(),
            batch_size: 16,
            batch_tokens: 16_384,
            ..TrainConfig::default()
        },
        attack: gcg_plan(bundled(), attacked, iters.0),
        seed: 0,
    }
}

#[test]
fn adversarial_training_lowers_the_evaluation_asr() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let cfg = small(3, 40, (4, 8), 400);
    let out = adversarial::run(&cfg, Cpu, &run, None, &mut |_| {}).unwrap();
    assert!(out.complete);
    assert_eq!(out.records.len(), 3);

    // Defense compute: cumulative attack + training FLOPs, each attack's as its summary says.
    let mut acc = (0.0, 0.0);
    let model = Model::load(&bundled(), Cpu).unwrap();
    let n = param_count(&model.cfg) as f64;
    let pool: Vec<PoolEntry> = std::fs::read_to_string(run.join("pool.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for r in &out.records {
        let s: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(
                run.join(format!("attacks/round-{:03}/summary.json", r.round)),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(r.attack_nominal_flops, s["nominal_flops"].as_f64().unwrap());
        acc.0 += r.attack_nominal_flops + r.train_nominal_flops;
        acc.1 += r.attack_executed_flops + r.train_executed_flops;
        assert!((r.defense_nominal_flops - acc.0).abs() <= 1e-9 * acc.0);
        assert!((r.defense_executed_flops - acc.1).abs() <= 1e-9 * acc.1);
        // 6 N per token: at least every real token, at most every example at the longest.
        let longest = pool.iter().map(|e| e.ids.len()).max().unwrap() as f64;
        let shortest = pool.iter().map(|e| e.ids.len()).min().unwrap() as f64 - 10.0;
        let ex = r.train_examples as f64;
        assert!(
            r.train_nominal_flops <= 6.0 * n * ex * longest,
            "round {}",
            r.round
        );
        assert!(
            r.train_nominal_flops >= 6.0 * n * ex * shortest,
            "round {}",
            r.round
        );
        assert_eq!(r.pool_size, 40 * r.round);
        assert_eq!(r.train_examples, 400);
        assert_eq!(r.train_adversarial, r.pool_size.min(320));
        assert_eq!(
            r.attack_iterations,
            adversarial::round_iterations(4, 8, r.round, 3)
        );
    }
    // Every attacked prompt joined the pool with its true label and the attack in place.
    assert_eq!(pool.len(), 120);
    assert!(pool
        .iter()
        .all(|e| e.label <= 1 && !e.attack_text.is_empty()));

    // The same evaluation attack on held-out examples, before and after.
    let plan = gcg_plan(bundled(), 40, 10);
    let evals = eval_rounds(&run, &[0, 3], &plan, "gcg", Cpu, false, &mut |_, _| {}).unwrap();
    let (before, after) = (evals[0].asr, evals[1].asr);
    println!("evaluation ASR: round 0 {before:.3}, round 3 {after:.3}");
    assert!(
        before >= 0.4,
        "the bundled classifier should break: ASR {before}"
    );
    assert!(
        after <= before / 2.0,
        "adversarial training should at least halve the ASR: {before} -> {after}"
    );
    assert_eq!(evals[0].defense_nominal_flops, 0.0);
    assert_eq!(
        evals[1].defense_nominal_flops,
        out.records[2].defense_nominal_flops
    );
    // A round's checkpoint is an ordinary classifier checkpoint.
    let m = Model::load(&checkpoint_dir(&run, 3), Cpu).unwrap();
    assert_eq!(m.cfg.num_labels(), Some(2));
}

/// A run's files with wall-clock fields removed (everything else must match exactly).
fn snapshot(run: &Path, rounds: usize) -> Vec<(String, Vec<u8>)> {
    let strip = |text: &str, keys: &[&str]| -> String {
        text.lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                if let Some(o) = v.as_object_mut() {
                    for k in keys {
                        o.remove(*k);
                    }
                }
                v.to_string() + "\n"
            })
            .collect()
    };
    let mut out = Vec::new();
    let read = |p: PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let rounds_text = String::from_utf8(read(run.join("rounds.jsonl"))).unwrap();
    let wall = ["attack_wall_s", "train_wall_s"];
    out.push((
        "rounds.jsonl".into(),
        strip(&rounds_text, &wall).into_bytes(),
    ));
    out.push(("pool.jsonl".into(), read(run.join("pool.jsonl"))));
    for r in 1..=rounds {
        let ck = checkpoint_dir(run, r);
        for f in ["model.safetensors", "optimizer.safetensors"] {
            out.push((format!("round {r} {f}"), read(ck.join(f))));
        }
        let res = run.join(format!("attacks/round-{r:03}")).join(RESULTS_FILE);
        let text = String::from_utf8(read(res)).unwrap();
        // Lines keep their order and content; only the iteration's wall time varies.
        for l in text.lines() {
            let line: Line = serde_json::from_str(l).unwrap();
            assert!(matches!(line, Line::Clean(_) | Line::Iter(_)));
        }
        out.push((
            format!("round {r} attack"),
            strip(&text, &["wall_s"]).into_bytes(),
        ));
    }
    out
}

#[test]
fn a_killed_run_resumes_to_identical_results() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small(3, 8, (2, 3), 40);
    let whole = dir.path().join("whole");
    assert!(
        adversarial::run(&cfg, Cpu, &whole, None, &mut |_| {})
            .unwrap()
            .complete
    );
    let want = snapshot(&whole, 3);

    // One run killed again and again: inside an attack (rounds 1 and 3), inside training,
    // while writing a checkpoint, and between a round's attack and its first step.
    let killed = dir.path().join("killed");
    let stops = [
        StopPoint::Attack {
            round: 1,
            iteration: 1,
        },
        StopPoint::Train { round: 1, steps: 2 },
        StopPoint::Save { round: 2 },
        StopPoint::Attack {
            round: 3,
            iteration: 2,
        },
        StopPoint::Train { round: 3, steps: 0 },
    ];
    for stop in stops {
        let out = adversarial::run(&cfg, Cpu, &killed, Some(stop), &mut |_| {}).unwrap();
        assert!(!out.complete, "{stop:?} should have stopped the run");
        if let StopPoint::Save { round } = stop {
            let ck = checkpoint_dir(&killed, round);
            assert!(
                ck.with_extension("tmp").exists() && !ck.exists(),
                "{stop:?}"
            );
        }
    }
    let out = adversarial::run(&cfg, Cpu, &killed, None, &mut |_| {}).unwrap();
    assert!(out.complete);
    let got = snapshot(&killed, 3);
    assert_eq!(got.len(), want.len());
    for ((name, g), (_, w)) in got.iter().zip(&want) {
        assert!(g == w, "{name} differs after resuming");
    }
    // A finished run started again changes nothing.
    let again = adversarial::run(&cfg, Cpu, &killed, None, &mut |_| {}).unwrap();
    assert_eq!(again.records, out.records);
    assert_eq!(snapshot(&killed, 3), want);
}

#[test]
fn changed_settings_on_an_existing_run_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let cfg = small(1, 4, (1, 1), 20);
    adversarial::run(&cfg, Cpu, &run, None, &mut |_| {}).unwrap();
    let mut other = cfg.clone();
    other.train.lr = 2e-3;
    let err = adversarial::run(&other, Cpu, &run, None, &mut |_| {})
        .err()
        .expect("a different learning rate must be refused")
        .to_string();
    assert!(err.contains("train.lr"), "{err}");
    let mut other = cfg.clone();
    other.weighting = PoolWeighting::Argsort;
    let err = adversarial::run(&other, Cpu, &run, None, &mut |_| {})
        .err()
        .expect("a different pool weighting must be refused")
        .to_string();
    assert!(err.contains("weighting"), "{err}");
}

#[test]
fn the_study_schedule_and_training_set() {
    // Rounds by model size: Pythia clip(n_m, 5, 60), Qwen2.5 22 / 10.
    for (preset, want) in [
        ("pythia-14m", 60),
        ("pythia-160m", 59),
        ("pythia-410m", 21),
        ("pythia-1b", 8),
        ("pythia-1.4b", 6),
        ("pythia-2.8b", 5),
        ("qwen2.5-0.5b", 22),
        ("qwen2.5-1.5b", 10),
        ("qwen2.5-7b", 10),
    ] {
        let c = armsrace::presets::config(preset, Some(2)).unwrap();
        assert_eq!(
            adversarial::study_rounds(&c, param_count(&c)),
            want,
            "{preset}"
        );
    }
    // Pretraining compute 6 N_gen D: N_gen counts the causal LM's untied output embedding
    // (pythia-14m: 14,067,712 by hand from its shapes), never the score head.
    use armsrace::attack::budget::{generative_params, pretraining_flops};
    let c = armsrace::presets::config("pythia-14m", Some(2)).unwrap();
    assert_eq!(generative_params(&c), 14_067_712);
    assert_eq!(
        pretraining_flops(&c, None),
        Some(6.0 * 14_067_712.0 * 299_892_736_000.0)
    );
    // A shape no preset has: unknown unless D is given, never a neighbour's D.
    let mut odd = c.clone();
    odd.hidden = 64;
    assert_eq!(pretraining_flops(&odd, None), None);
    assert_eq!(
        pretraining_flops(&odd, Some(1e9)),
        Some(6.0 * generative_params(&odd) as f64 * 1e9)
    );
    let lm = armsrace::presets::config("pythia-14m", None).unwrap();
    assert_eq!(generative_params(&lm), 14_067_712);
    for (preset, d) in [
        ("qwen2.5-0.5b", 18e12),
        ("qwen2.5-1.5b", 10.5e12),
        ("qwen2.5-3b", 10.5e12),
        ("qwen2.5-7b", 10.5e12),
        ("qwen2.5-14b", 10.5e12),
    ] {
        let c = armsrace::presets::config(preset, Some(2)).unwrap();
        // Tied embeddings (0.5B-3B): the LM head adds nothing; untied (7B, 14B): it adds
        // vocab x hidden. The score head is never counted.
        let lm_head = if c.tied_embeddings {
            0
        } else {
            c.vocab * c.hidden
        };
        assert_eq!(
            generative_params(&c),
            param_count(&c) - 2 * c.hidden + lm_head,
            "{preset}"
        );
        assert_eq!(
            pretraining_flops(&c, None),
            Some(6.0 * generative_params(&c) as f64 * d),
            "{preset}"
        );
    }

    // The training set: min(clean + pool, 1000) examples, at most 80% adversarial.
    let cfg = AdvConfig {
        max_train: 1000,
        ..small(10, 200, (8, 64), 1000)
    };
    for (n_clean, n_pool, want_adv, want_clean) in [
        (20_000, 200, 200, 800),
        (20_000, 2000, 800, 200),
        (100, 50, 50, 100),
        (10, 5000, 800, 10),
    ] {
        let losses = vec![None; n_pool];
        let (adv, clean) = adversarial::round_training_set(&cfg, 1, n_clean, &losses).unwrap();
        assert_eq!((adv.len(), clean.len()), (want_adv, want_clean));
        let mut a = adv.clone();
        a.sort();
        a.dedup();
        assert_eq!(
            a.len(),
            adv.len(),
            "pool examples drawn without replacement"
        );
        assert!(adv.iter().all(|&i| i < n_pool) && clean.iter().all(|&i| i < n_clean));
    }
    // Weights favour recent, high-loss pool examples: with a steep scale, the newest
    // examples (never trained on) are drawn first.
    let steep = AdvConfig {
        weight_scale: 1.0,
        ..cfg.clone()
    };
    let mut losses = vec![Some(0.01f32); 1200];
    losses[1000..].fill(None);
    let (adv, _) = adversarial::round_training_set(&steep, 1, 20_000, &losses).unwrap();
    let recent = adv.iter().filter(|&&i| i >= 1000).count();
    assert_eq!(recent, 200, "all 200 untrained newest examples drawn");
}

#[test]
fn a_stale_prefix_cache_is_refused_and_subjects_rebuild_theirs() {
    let model = Model::load(&bundled(), Cpu).unwrap();
    let (mcfg, w) = armsrace::train::job::load_as_classifier(&bundled(), 2, 0).unwrap();
    let tok = armsrace::tokenize::Tokenizer::from_file(&bundled().join("tokenizer.json")).unwrap();
    let task = Task::from_name("password-match").unwrap();
    let ex = task.split(0, 2, 0).unwrap().1;
    let init = armsrace::task::attack_init(&tok, 10).unwrap();
    let mut subjects = armsrace::attack::subject::build_subjects::<Cpu>(
        &tok,
        &task.def,
        &ex,
        &ThreatModel::parse("suffix").unwrap(),
        0,
        &GoalSpec::Classify,
        &init,
        false,
    )
    .unwrap();
    let s = &mut subjects[0];
    let mut trainer = Trainer::from_host(
        mcfg,
        &w,
        Cpu,
        TrainConfig {
            lr: 1e-2,
            ..TrainConfig::default()
        },
    );
    assert!(s.ensure_cache(&trainer.model).unwrap(), "built once");
    assert!(
        !s.ensure_cache(&trainer.model).unwrap(),
        "kept while current"
    );
    let tail = armsrace::Batch::from_sequences(
        &[s.prompt.ids(&init)[s.prompt.before.len()..].to_vec()],
        0,
    )
    .unwrap();
    let before = trainer
        .model
        .logits_with_prefix(s.cache().unwrap(), &tail)
        .unwrap();
    // One training step changes the weights: the cache is now stale.
    let data = vec![LabeledIds {
        ids: s.prompt.ids(&init),
        label: 1 - s.prompt.label,
    }];
    trainer.step(&data, &[vec![0]], 1).unwrap();
    let err = trainer
        .model
        .logits_with_prefix(s.cache().unwrap(), &tail)
        .expect_err("a stale cache must be refused")
        .to_string();
    assert!(err.contains("stale prefix cache"), "{err}");
    // A cache of another model is refused too.
    assert!(model.logits_with_prefix(s.cache().unwrap(), &tail).is_err());
    assert!(
        s.ensure_cache(&trainer.model).unwrap(),
        "rebuilt after the step"
    );
    let after = trainer
        .model
        .logits_with_prefix(s.cache().unwrap(), &tail)
        .unwrap();
    let full = trainer
        .model
        .logits(&armsrace::Batch::from_sequences(&[s.prompt.ids(&init)], 0).unwrap())
        .unwrap();
    for (a, f) in after.iter().zip(&full) {
        assert!(
            (a - f).abs() < 1e-4,
            "rebuilt cache {after:?} vs full {full:?}"
        );
    }
    assert_ne!(before, after, "the step changed the logits");
}

/// The CLI's flags for the small run of `a_killed_run_resumes_to_identical_results`.
fn small_cli(out: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_armsrace"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["adv-train", "--out"])
        .arg(out)
        .args([
            "--rounds",
            "3",
            "--attacked-per-round",
            "8",
            "--iterations-from",
            "2",
            "--iterations-to",
            "3",
            "--clean-examples",
            "2000",
            "--max-train",
            "40",
            "--lr",
            "1e-3",
            "--optimizer",
            "adamw",
            "--batch-size",
            "16",
            "--group-size",
            "40",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    c
}

#[test]
fn sigkill_at_any_instant_resumes_to_identical_results() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole");
    let t0 = std::time::Instant::now();
    assert!(small_cli(&whole).status().unwrap().success());
    let full = t0.elapsed();
    let want = snapshot(&whole, 3);
    // Real processes killed with SIGKILL after 1/8, 2/8, 3/8, ... of a whole run's time
    // (so early and late, inside attacks, training steps and file writes alike), each
    // restart resuming the last, until one gets to finish.
    let killed = dir.path().join("killed");
    let interrupted = kill::kill_until_done(&|| small_cli(&killed), full, 8);
    println!("{interrupted} processes killed mid-run");
    assert!(
        interrupted >= 2,
        "only {interrupted} processes were killed mid-run"
    );
    assert!(small_cli(&killed).status().unwrap().success());
    let got = snapshot(&killed, 3);
    for ((name, g), (_, w)) in got.iter().zip(&want) {
        assert!(g == w, "{name} differs after SIGKILLs and a resume");
    }

    // `armsrace eval` on the run: one results directory per round, eval.jsonl beside them
    // with each round's defense compute; a round without a checkpoint is an error.
    let eval = |rounds: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_armsrace"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["eval", "--run"])
            .arg(&killed)
            .args(["--rounds", rounds, "--examples", "4", "--iterations", "1"])
            .output()
            .unwrap()
    };
    let out = eval("0,3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(killed.join("eval/gcg-suffix/eval.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    let records = adversarial::read_rounds(&killed).unwrap();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["defense_nominal_flops"], 0.0);
    assert_eq!(
        lines[1]["defense_nominal_flops"].as_f64().unwrap(),
        records[2].defense_nominal_flops
    );
    assert!(killed
        .join("eval/gcg-suffix/round-003/summary.json")
        .exists());
    let out = eval("0,7");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("round 7 has no checkpoint"), "{err}");
}

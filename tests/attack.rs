//! The attack engine: the fast candidate scorer against a naive oracle, determinism,
//! resume, the retokenization filter inside the loop, and GCG against random tokens.

mod common;

use armsrace::attack::budget::Budget;
use armsrace::attack::goal::dlogits;
use armsrace::attack::results::{RESULTS_FILE, SUMMARY_FILE};
use armsrace::attack::scoring::{score, score_many, score_naive, Job};
use armsrace::attack::session::{run_plan, AttackSpec, Plan, DEFAULT_MODEL};
use armsrace::attack::subject::build_subjects;
use armsrace::attack::{FastPaths, GcgConfig, Goal, GoalSpec, LossKind, RandomTokenConfig};
use armsrace::attack::{Subject, Victim, Vocab};
use armsrace::model::scoring::PrefixView;
use armsrace::task::{attack_init, retokenizes, Task, ThreatModel};
use armsrace::tokenize::Tokenizer;
use armsrace::{Batch, Cpu, GradRequest, Model, Objective};
use common::{assert_close, fixture};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};

fn load(name: &str) -> (Model<Cpu>, Tokenizer) {
    let dir = fixture(name);
    let model = Model::load(&dir, Cpu).unwrap();
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    (model, tok)
}

fn subjects(tok: &Tokenizer, n: usize, spec: &GoalSpec, threat: &str) -> Vec<Subject<Cpu>> {
    let task = Task::from_name("password-match").unwrap();
    let examples = task.generate(n, 3).unwrap();
    let init = attack_init(tok, 10).unwrap();
    let threat = ThreatModel::parse(threat).unwrap();
    build_subjects(tok, &task.def, &examples, &threat, 0, spec, &init, true).unwrap()
}

/// Candidates around `cur`: single swaps at every position, multi-swaps, the current one.
fn candidates(cur: &[u32], vocab: &Vocab, rng: &mut ChaCha8Rng) -> Vec<Vec<u32>> {
    let allowed = vocab.allowed();
    let pick = |rng: &mut ChaCha8Rng| allowed[rng.random_range(0..allowed.len())];
    let mut out = vec![cur.to_vec()];
    for p in 0..cur.len() {
        for _ in 0..2 {
            let mut c = cur.to_vec();
            c[p] = pick(rng);
            out.push(c);
        }
    }
    for _ in 0..5 {
        let mut c = cur.to_vec();
        for _ in 0..3 {
            let p = rng.random_range(0..cur.len());
            c[p] = pick(rng);
        }
        out.push(c);
    }
    out
}

/// The oracle: Model::loss_and_grads on the full sequences, one batch.
fn oracle(model: &Model<Cpu>, s: &Subject<Cpu>, cands: &[Vec<u32>]) -> Vec<f32> {
    let seqs: Vec<Vec<u32>> = cands.iter().map(|c| s.sequence(c)).collect();
    let batch = Batch::from_sequences(&seqs, 0).unwrap();
    let objective = match &s.goal {
        Goal::Classify { target, .. } => Objective::Classify {
            labels: vec![*target; cands.len()],
        },
        Goal::Target { ids } => {
            let mut mask = vec![false; batch.rows()];
            for b in 0..batch.batch {
                for t in batch.seq - ids.len()..batch.seq {
                    mask[b * batch.seq + t] = true;
                }
            }
            Objective::Target { mask }
        }
    };
    model
        .loss_and_grads(&batch, &objective, &GradRequest::default())
        .unwrap()
        .loss_per_seq
}

fn check_fast_scorer(name: &str, spec: GoalSpec, threat: &str) {
    let (model, tok) = load(name);
    let vocab = Vocab::from_tokenizer(&tok, model.cfg.vocab, false).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut all = subjects(&tok, 3, &spec, threat);
    let mut cases = Vec::new();
    for s in all.iter_mut() {
        s.ensure_cache(&model).unwrap();
        let cur = s.state.ids.clone();
        let cands = candidates(&cur, &vocab, &mut rng);
        let want = oracle(&model, s, &cands);
        cases.push((cands, want));
    }
    for (s, (cands, want)) in all.iter().zip(&cases) {
        let cur = s.state.ids.clone();
        let variants = [
            (true, true, true),
            (true, true, false),
            (true, false, true),
            (false, false, false),
        ];
        for (prefix_cache, group_reuse, shortcut) in variants {
            let v = Victim {
                model: &model,
                tok: Some(&tok),
                vocab: &vocab,
                fast: FastPaths {
                    prefix_cache,
                    group_reuse,
                    shortcut,
                },
                rows_cap: Default::default(),
            };
            let got = score(&v, s, cands, Some(&cur), LossKind::CrossEntropy).unwrap();
            let what = format!("{name} {threat} example {} {:?}", s.index, v.fast);
            assert_eq!(
                want.len(),
                cands.len(),
                "{what}: one oracle loss per candidate"
            );
            assert_eq!(
                got.losses.len(),
                cands.len(),
                "{what}: one loss per candidate"
            );
            assert_eq!(
                got.success.len(),
                cands.len(),
                "{what}: one flag per candidate"
            );
            for (i, (g, w)) in got.losses.iter().zip(want.iter()).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-4 * w.abs() + 1e-6,
                    "{what}: candidate {i}: fast {g} vs oracle {w}"
                );
            }
            let naive = score_naive(&v, s, cands, LossKind::CrossEntropy).unwrap();
            assert_eq!(naive.success, got.success, "{what}: success flags");
            if prefix_cache {
                assert!(
                    got.executed < naive.executed,
                    "{what}: fast path did less work"
                );
            }
        }
    }
    // Every example's candidates packed into shared forward calls (as random-token does).
    let v = Victim {
        model: &model,
        tok: Some(&tok),
        vocab: &vocab,
        fast: FastPaths::default(),
        rows_cap: Default::default(),
    };
    let seqs: Vec<(Vec<Vec<u32>>, Vec<u32>)> = all
        .iter()
        .zip(&cases)
        .map(|(s, (cands, _))| {
            let seqs = cands.iter().map(|c| s.sequence(c)).collect();
            (seqs, s.sequence(&s.state.ids))
        })
        .collect();
    let jobs: Vec<Job<'_, Cpu>> = all
        .iter()
        .zip(&seqs)
        .map(|(s, (seqs, reference))| Job {
            subject: s,
            seqs,
            reference: Some(reference),
        })
        .collect();
    let got = score_many(&v, &jobs, LossKind::CrossEntropy).unwrap();
    assert_eq!(
        got.len(),
        cases.len(),
        "{name} {threat} packed: one result per job"
    );
    for (k, (g, (cands, want))) in got.iter().zip(&cases).enumerate() {
        assert_eq!(
            g.losses.len(),
            cands.len(),
            "{name} {threat} packed: example {k}: one loss per candidate"
        );
        for (i, (a, w)) in g.losses.iter().zip(want).enumerate() {
            assert!(
                (a - w).abs() <= 1e-4 * w.abs() + 1e-6,
                "{name} {threat} packed: example {k} candidate {i}: {a} vs {w}"
            );
        }
    }
}

#[test]
fn fast_scorer_matches_oracle_neox_classifier() {
    check_fast_scorer("neox-parallel-cls", GoalSpec::Classify, "suffix");
    check_fast_scorer("neox-parallel-cls", GoalSpec::Classify, "infix:0.5");
}

#[test]
fn fast_scorer_matches_oracle_qwen2_gqa_classifier() {
    check_fast_scorer("qwen2-untied-cls", GoalSpec::Classify, "suffix");
    check_fast_scorer("qwen2-untied-cls", GoalSpec::Classify, "prefix");
}

#[test]
fn fast_scorer_matches_oracle_target_string() {
    let spec = GoalSpec::Target { text: None };
    check_fast_scorer("neox-sequential-lm", spec.clone(), "suffix");
    check_fast_scorer("qwen2-gqa-tied-lm", spec, "infix:0.9");
}

#[test]
fn extended_prefix_equals_a_cache_of_the_whole_prefix() {
    for name in ["neox-parallel-cls", "qwen2-untied-cls"] {
        let (model, _) = load(name);
        let ids: Vec<u32> = (0..30).map(|i| 3 + (i * 37 % 350) as u32).collect();
        let whole = model.prefix_cache(&ids).unwrap();
        let head = model.prefix_cache(&ids[..17]).unwrap();
        let ext = model.extend_prefix(Some(&head), &ids[17..]).unwrap();
        assert_eq!(ext.len, 30);
        assert_eq!(ext.ids, ids);
        assert_eq!(
            ext.layers.len(),
            whole.layers.len(),
            "{name}: cached layers"
        );
        for (a, b) in ext.layers.iter().zip(&whole.layers) {
            assert_close(&format!("{name} extended cache"), a, b, 1e-5);
        }
        // A view of the extended cache at 20 positions scores like a cache of 20.
        let short = model.prefix_cache(&ids[..20]).unwrap();
        let cont = Batch::from_sequences(&[vec![5, 6, 7], vec![8, 9, 10]], 0).unwrap();
        let view = PrefixView::new(&ext, 20).unwrap();
        let got = model
            .logits_at_rows(Some(&view), &cont, &[2, 5], true)
            .unwrap();
        let want = model.logits_with_prefix(&short, &cont).unwrap();
        assert_close(&format!("{name} prefix view"), &got, &want, 1e-5);
        assert!(PrefixView::new(&ext, 31).is_err());
    }
}

#[test]
fn custom_loss_gradient_equals_loss_and_grads() {
    let (model, tok) = load("neox-parallel-cls");
    let s = subjects(&tok, 3, &GoalSpec::Classify, "suffix");
    let seqs: Vec<Vec<u32>> = s.iter().map(|s| s.sequence(&s.state.ids)).collect();
    let batch = Batch::from_sequences(&seqs, 1).unwrap();
    let rows = batch.last_rows().unwrap();
    let onehot: Vec<usize> = (0..3)
        .flat_map(|b| (0..10).map(move |i| b * batch.seq + 50 + i))
        .collect();
    let targets: Vec<u32> = s
        .iter()
        .map(|s| match s.goal {
            Goal::Classify { target, .. } => target,
            _ => unreachable!(),
        })
        .collect();
    let req = GradRequest {
        onehot_rows: Some(onehot.clone()),
        weights: false,
    };
    let obj = Objective::Classify {
        labels: targets.clone(),
    };
    let want = model.loss_and_grads(&batch, &obj, &req).unwrap();
    let (logits, got) = model
        .onehot_grad_with(&batch, &rows, &onehot, |z| {
            (0..3)
                .flat_map(|b| dlogits(&s[b].goal, LossKind::CrossEntropy, &z[b * 2..b * 2 + 2], 2))
                .collect()
        })
        .unwrap();
    assert_close("logits", &logits, &want.logits, 1e-6);
    assert_close("one-hot gradient", &got, &want.onehot_grad.unwrap(), 1e-4);
}

fn small_plan(model: &Path, attack: AttackSpec, iterations: usize) -> Plan {
    let mut p = Plan::study_gcg(model.to_path_buf());
    p.attack = attack;
    p.examples = 6;
    p.group_size = 4;
    p.budget = Budget {
        iterations,
        flops: None,
    };
    p
}

fn gcg(search_width: usize, seed: u64) -> AttackSpec {
    AttackSpec::Gcg(GcgConfig {
        search_width,
        seed,
        ..GcgConfig::default()
    })
}

/// results.jsonl without wall times.
fn lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join(RESULTS_FILE))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            if let Some(o) = v.as_object_mut() {
                o.remove("wall_s");
            }
            v
        })
        .collect()
}

fn run(plan: &Plan, dir: &Path, stop_after: Option<usize>) -> bool {
    run_plan(plan, dir, false, stop_after, &mut |_| {})
        .unwrap()
        .complete
}

#[test]
fn seeded_runs_are_deterministic_and_seeds_matter() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("neox-parallel-cls");
    let plan = small_plan(&model, gcg(24, 5), 3);
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    assert!(run(&plan, &a, None));
    assert!(run(&plan, &b, None));
    let la = lines(&a);
    assert!(la.iter().filter(|l| l["type"] == "iter").count() > 0);
    assert_eq!(la, lines(&b));
    assert!(a.join(SUMMARY_FILE).exists());
    assert!(run(&small_plan(&model, gcg(24, 6), 3), &c, None));
    assert_ne!(la, lines(&c), "another seed samples other candidates");
}

#[test]
fn resume_equals_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("neox-parallel-cls");
    for (attack, iters, stop) in [
        (gcg(16, 1), 4, 2),
        (
            AttackSpec::Gcg(GcgConfig {
                search_width: 16,
                buffer_size: 3,
                loss: LossKind::Mellowmax { alpha: 1.0 },
                ..GcgConfig::default()
            }),
            4,
            3,
        ),
        (AttackSpec::RandomToken(RandomTokenConfig::default()), 12, 5),
    ] {
        let plan = small_plan(&model, attack, iters);
        let name = format!("{:?}", plan.attack).replace(|c: char| !c.is_alphanumeric(), "");
        let whole = tmp.path().join(format!("{name}-whole"));
        assert!(run(&plan, &whole, None));
        let want = lines(&whole);
        let summary = std::fs::read_to_string(whole.join(SUMMARY_FILE)).unwrap();

        // Killed after `stop` iterations, then resumed.
        let dir = tmp.path().join(format!("{name}-resumed"));
        assert!(!run(&plan, &dir, Some(stop)));
        assert!(!dir.join(SUMMARY_FILE).exists());
        assert!(lines(&dir).len() < want.len());
        assert!(run(&plan, &dir, None));
        assert_eq!(lines(&dir), want, "{name}: resumed results");
        let drop_wall = |s: &str| {
            let mut v: serde_json::Value = serde_json::from_str(s).unwrap();
            for k in [
                "wall_s",
                "seconds_per_iteration",
                "seconds_per_example_iteration",
            ] {
                v.as_object_mut().unwrap().remove(k);
            }
            v
        };
        let got = std::fs::read_to_string(dir.join(SUMMARY_FILE)).unwrap();
        assert_eq!(drop_wall(&got), drop_wall(&summary));

        // Killed mid-unit: one line of the last unit missing and a half-written line.
        let dir = tmp.path().join(format!("{name}-torn"));
        assert!(!run(&plan, &dir, Some(stop)));
        let path = dir.join(RESULTS_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut kept: Vec<&str> = text.lines().collect();
        let last = kept.pop().unwrap();
        let torn = format!("{}\n{}", kept.join("\n"), &last[..last.len() / 2]);
        std::fs::write(&path, torn).unwrap();
        assert!(run(&plan, &dir, None));
        assert_eq!(lines(&dir), want, "{name}: resumed after a torn write");
    }
}

#[test]
fn resume_refuses_other_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("neox-parallel-cls");
    let dir = tmp.path().join("r");
    assert!(run(&small_plan(&model, gcg(8, 1), 1), &dir, None));
    let err = run_plan(
        &small_plan(&model, gcg(9, 1), 1),
        &dir,
        false,
        None,
        &mut |_| {},
    )
    .err()
    .expect("different settings are refused");
    assert!(err.to_string().contains("search_width"), "{err}");
    // --overwrite starts over.
    assert!(
        run_plan(
            &small_plan(&model, gcg(9, 1), 1),
            &dir,
            true,
            None,
            &mut |_| {}
        )
        .unwrap()
        .complete
    );
}

#[test]
fn retokenization_filter_rejects_merges_inside_the_loop() {
    let (model, tok) = load("neox-parallel-cls");
    let vocab = Vocab::from_tokenizer(&tok, model.cfg.vocab, true).unwrap();
    let s = &subjects(&tok, 1, &GoalSpec::Classify, "suffix")[0];
    // A known merge: a swap whose prompt re-encodes differently ("@" next to "&" ...).
    let cur = s.state.ids.clone();
    let merge = (0..cur.len())
        .flat_map(|p| vocab.allowed().iter().map(move |&t| (p, t)))
        .map(|(p, t)| {
            let mut c = cur.clone();
            c[p] = t;
            c
        })
        .find(|c| !retokenizes(&tok, &s.prompt.ids(c)).unwrap())
        .expect("some single swap does not survive retokenization");
    let rc = s.retok.as_ref().unwrap();
    let ok: Vec<bool> = [&cur, &merge]
        .iter()
        .map(|c| rc.check(&tok, c).unwrap())
        .collect();
    assert_eq!(ok, vec![true, false], "the check rejects {merge:?}");

    // In the loop: every swap of the top-k pool is a candidate, so merges are among them.
    let tmp = tempfile::tempdir().unwrap();
    let mut plan = small_plan(&fixture("neox-parallel-cls"), gcg(4096, 0), 2);
    plan.examples = 2;
    let dir = tmp.path().join("f");
    assert!(run(&plan, &dir, None));
    let iters: Vec<_> = lines(&dir)
        .into_iter()
        .filter(|l| l["type"] == "iter")
        .collect();
    assert!(!iters.is_empty());
    for l in &iters {
        assert!(l["rejected"].as_u64().unwrap() > 0, "{l}");
        let ids: Vec<u32> = serde_json::from_value(l["attack_ids"].clone()).unwrap();
        let ex = l["example"].as_u64().unwrap() as usize;
        let task = Task::from_name("password-match").unwrap();
        let (_, val) = task.split(0, plan.examples, 0).unwrap();
        let parts = armsrace::task::layout(&task.def, &val[ex], &ThreatModel::Suffix, 0, ex as u64);
        let p = armsrace::task::TokenizedPrompt::new(&tok, &parts, val[ex].label).unwrap();
        assert!(
            retokenizes(&tok, &p.ids(&ids)).unwrap(),
            "kept attack retokenizes"
        );
    }
    // Without the filter nothing is rejected.
    let mut plan = plan.clone();
    plan.attack = AttackSpec::Gcg(GcgConfig {
        search_width: 4096,
        filter: false,
        ..GcgConfig::default()
    });
    let dir = tmp.path().join("nf");
    assert!(run(&plan, &dir, None));
    assert!(lines(&dir)
        .iter()
        .filter(|l| l["type"] == "iter")
        .all(|l| l["rejected"] == 0));
}

#[test]
fn target_string_attack_runs_on_a_causal_lm() {
    let tmp = tempfile::tempdir().unwrap();
    let mut plan = small_plan(&fixture("neox-sequential-lm"), gcg(16, 0), 2);
    plan.target = Some(" GRANTED".into());
    plan.examples = 2;
    let dir = tmp.path().join("t");
    assert!(run(&plan, &dir, None));
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(SUMMARY_FILE)).unwrap()).unwrap();
    assert_eq!(s["attack"], "gcg");
    assert_eq!(
        s["attacked"], 2,
        "a random LM never says the target unprompted"
    );
    // A classifier refuses a target string.
    let mut bad = plan.clone();
    bad.model = fixture("neox-parallel-cls");
    let err = run_plan(&bad, &tmp.path().join("x"), false, None, &mut |_| {}).err();
    assert!(err.unwrap().to_string().contains("causal-LM"));
}

#[test]
fn cli_attack_prints_a_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_armsrace"))
        .args(["attack", "--model"])
        .arg(fixture("neox-parallel-cls"))
        .args([
            "--examples",
            "2",
            "--iterations",
            "1",
            "--search-width",
            "8",
        ])
        .arg("--out")
        .arg(tmp.path().join("cli"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("compute to reach ASR"), "{stdout}");
    assert!(stdout.contains("s per iteration"), "{stdout}");
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_armsrace"))
        .args(["attack", "--model", "/nonexistent", "--threat", "infix:2"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("infix:2"));
}

/// The bundled classifier.
fn bundled() -> PathBuf {
    // Committed with the repository: a missing copy is a broken checkout, not a skip.
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_MODEL);
    assert!(
        p.join("config.json").exists(),
        "{} is absent: the bundled classifier is part of the repository",
        p.display()
    );
    p
}

/// At equal nominal FLOPs per example, GCG breaks more examples than random tokens, with
/// the study's settings (10 iterations, 128 candidates, top-k 256, suffix, 20 examples) on
/// nanoGCG's ASCII token pool for both. Measured: GCG 75% vs random tokens 60% at 3.8e10
/// nominal FLOPs per example. On the study's full pools the order flips on this toy
/// classifier (GCG 60%, random tokens 75%): its 1024-token vocabulary is mostly byte pieces,
/// GCG's filter rejects the swaps that split characters, and random draws of them decode to
/// U+FFFD, which the model never saw in training.
#[test]
fn gcg_beats_random_tokens_at_equal_nominal_flops() {
    let model = bundled();
    let tmp = tempfile::tempdir().unwrap();
    let mut plan = Plan::study_gcg(model);
    plan.ascii_only = true;
    let g = run_plan(&plan, &tmp.path().join("gcg"), false, None, &mut |_| {}).unwrap();
    assert!(g.summary.attacked >= 15, "{} attacked", g.summary.attacked);
    let per_example = g.summary.nominal_flops / g.summary.attacked as f64;
    plan.attack = AttackSpec::RandomToken(RandomTokenConfig::default());
    plan.budget = Budget {
        iterations: 1_000_000,
        flops: Some(per_example),
    };
    let r = run_plan(&plan, &tmp.path().join("rt"), false, None, &mut |_| {}).unwrap();
    assert_eq!(r.summary.attacked, g.summary.attacked);
    let (ga, ra) = (g.summary.final_asr, r.summary.final_asr);
    eprintln!(
        "ASR at {per_example:.3e} nominal FLOPs per example: gcg {ga:.3}, random-token {ra:.3} \
         (first random try {:.3})",
        r.summary.asr.get(1).copied().unwrap_or(0.0)
    );
    // Random search ran up to the whole budget (every draw is scored, as in the study).
    let reached = r.summary.iterations as f64 * r.summary.nominal_flops_per_iteration;
    assert!(
        reached > 0.95 * per_example,
        "{reached:.3e} of {per_example:.3e}"
    );
    assert!(
        ga > ra,
        "GCG {ga} vs random-token {ra} at equal nominal FLOPs"
    );
}

/// Where the text before the slot ends in whitespace (prefix: the instructions end in
/// "\n\n"), the segments must be tokenized the way the whole prompt is, or the initial
/// attack already fails the retokenization check and nearly every swap is rejected for a
/// seam no candidate chose. Reference: the whole prompt text, tokenized in one piece, and
/// the plain decode → encode check on the full ids.
#[test]
fn every_threat_model_starts_valid_and_rejects_only_real_merges() {
    let toks = vec![
        ("tokenizer-bytelevel", fixture("tokenizer-bytelevel")),
        ("tokenizer-qwen", fixture("tokenizer-qwen")),
        ("bundled", bundled()),
    ];
    let task = Task::from_name("password-match").unwrap();
    let examples = task.generate(4, 5).unwrap();
    for (name, dir) in toks {
        let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
        let init = attack_init(&tok, 10).unwrap();
        let init_text = tok.decode(&init).unwrap();
        let vocab = Vocab::from_tokenizer(&tok, tok.vocab_size(), false).unwrap();
        for tm in ["suffix", "prefix", "infix:0.9", "infix:0.5"] {
            let threat = ThreatModel::parse(tm).unwrap();
            let subs: Vec<Subject<Cpu>> = build_subjects(
                &tok,
                &task.def,
                &examples,
                &threat,
                0,
                &GoalSpec::Classify,
                &init,
                true,
            )
            .unwrap();
            let (mut rejected, mut total) = (0, 0);
            for (i, s) in subs.iter().enumerate() {
                let parts = armsrace::task::layout(&task.def, &examples[i], &threat, 0, i as u64);
                let whole = tok.encode(&parts.with_attack(&init_text)).unwrap();
                let ids = s.prompt.ids(&init);
                let at = format!("{name} {tm} example {i}");
                if ids == whole {
                    assert!(retokenizes(&tok, &ids).unwrap(), "{at}");
                } else {
                    // Only when the initial attack merges with its neighbours in any
                    // tokenization: then the segments are the ones tokenized alone.
                    assert!(!whole.ends_with(&[init.as_slice(), &s.prompt.after].concat()));
                    eprintln!("{at}: the initial attack merges with the prompt");
                }
                let rc = s.retok.as_ref().unwrap();
                // Every 5th allowed token at every position.
                let cands: Vec<Vec<u32>> = (0..init.len())
                    .flat_map(|p| vocab.allowed().iter().step_by(5).map(move |&t| (p, t)))
                    .map(|(p, t)| {
                        let mut c = init.clone();
                        c[p] = t;
                        c
                    })
                    .collect();
                let ok: Vec<bool> = cands.iter().map(|c| rc.check(&tok, c).unwrap()).collect();
                for (c, &v) in cands.iter().zip(&ok) {
                    assert_eq!(
                        v,
                        retokenizes(&tok, &s.prompt.ids(c)).unwrap(),
                        "{at} {c:?}"
                    );
                }
                rejected += ok.iter().filter(|&&v| !v).count();
                total += ok.len();
            }
            let rate = rejected as f64 / total as f64;
            eprintln!("{name} {tm}: {rejected} of {total} single swaps rejected");
            assert!(rate < 0.4, "{name} {tm}: {rejected} of {total} rejected");
        }
    }
}

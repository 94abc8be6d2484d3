//! One GCG iteration at the study's settings (10 attack tokens, 128 candidates, top-256):
//! on the pythia-14m shape (random weights, 2-label classifier, a PasswordMatch-length
//! prompt of random ids) and on the bundled classifier if it is in the checkout. Prints
//! seconds per iteration and nominal / executed FLOP/s besides criterion's timing.

use armsrace::attack::runner::prepare_step;
use armsrace::attack::session::{initial_attack, load_examples, DEFAULT_MODEL};
use armsrace::attack::subject::build_subjects;
use armsrace::attack::{Attack, FastPaths, Gcg, GcgConfig, Goal, GoalSpec, Subject, Victim, Vocab};
use armsrace::task::{Task, ThreatModel, TokenizedPrompt, ATTACK_INIT_TEXT};
use armsrace::tokenize::Tokenizer;
use armsrace::{presets, Cpu, Model};
use criterion::{criterion_group, criterion_main, Criterion};
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::time::Instant;

/// Tokens before the attack slot and after it in a PasswordMatch suffix prompt (GPT-NeoX
/// tokenizer): instructions + content, then "\n\nAnswer:".
const BEFORE: usize = 80;
const AFTER: usize = 3;

fn random_subjects(n: usize, vocab: u32) -> Vec<Subject<Cpu>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut ids = |k: usize| -> Vec<u32> { (0..k).map(|_| rng.random_range(2..vocab)).collect() };
    (0..n)
        .map(|i| {
            let prompt = TokenizedPrompt {
                before: ids(BEFORE),
                after: ids(AFTER),
                label: 0,
            };
            let clean = prompt.ids(&[]);
            let mut s = Subject::new(
                i,
                prompt,
                clean,
                Goal::Classify {
                    label: 0,
                    target: 1,
                },
            );
            s.state.ids = ids(10);
            s
        })
        .collect()
}

/// Times `iters` iterations and prints s/iteration and FLOP/s; returns nothing useful to
/// criterion (it times its own loop).
fn report(name: &str, v: &Victim<Cpu>, subjects: &mut [Subject<Cpu>], iters: usize) {
    let gcg = Gcg::new(GcgConfig::default());
    let (mut nominal, mut executed) = (0.0, 0.0);
    let t = Instant::now();
    for it in 1..=iters {
        let mut batch: Vec<&mut Subject<Cpu>> = subjects.iter_mut().collect();
        let cache = prepare_step(v, &mut batch, it).expect("caches");
        for (r, c) in gcg.step(v, &mut batch, it).expect("step").iter().zip(cache) {
            nominal += r.nominal;
            executed += r.executed + c;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{name}: {:.3} s per iteration ({} examples), nominal {:.2} GFLOP/s, executed {:.2} GFLOP/s",
        secs / iters as f64,
        subjects.len(),
        nominal / secs / 1e9,
        executed / secs / 1e9
    );
}

fn bench(c: &mut Criterion) {
    let cfg = presets::config("pythia-14m", Some(2)).expect("preset");
    let vocab_n = cfg.vocab as u32;
    let model = Model::random(cfg, 0, 0.02, Cpu);
    let vocab = Vocab::range(2, 50277, model.cfg.vocab).expect("vocab");
    let v = Victim {
        model: &model,
        tok: None,
        vocab: &vocab,
        fast: FastPaths::default(),
        rows_cap: Default::default(),
    };
    let gcg = Gcg::new(GcgConfig::default());
    for n in [1usize, 8] {
        let mut subjects = random_subjects(n, vocab_n.min(50277));
        report("pythia-14m shape, random ids", &v, &mut subjects, 3);
        let mut it = 100;
        c.bench_function(&format!("gcg_iteration/pythia-14m/{n}-examples"), |b| {
            b.iter(|| {
                it += 1;
                let mut batch: Vec<&mut Subject<Cpu>> = subjects.iter_mut().collect();
                gcg.step(&v, &mut batch, it).expect("step")
            })
        });
    }

    // A causal LM with a 4-token target string: the loss reads 4 rows of the whole
    // 50,304-token vocabulary per candidate (nanoGCG's setting, issue 14's CPU case).
    let cfg = presets::config("pythia-14m", None).expect("preset");
    let lm = Model::random(cfg, 0, 0.02, Cpu);
    let v = Victim {
        model: &lm,
        tok: None,
        vocab: &vocab,
        fast: FastPaths::default(),
        rows_cap: Default::default(),
    };
    let mut subjects = random_subjects(1, vocab_n.min(50277));
    for s in &mut subjects {
        let target = vec![11, 12, 13, 14];
        s.clean_ids.extend_from_slice(&target);
        s.goal = Goal::Target { ids: target };
    }
    report("pythia-14m causal LM, 4-token target", &v, &mut subjects, 3);
    let mut it = 100;
    c.bench_function("gcg_iteration/pythia-14m-lm-target/1-example", |b| {
        b.iter(|| {
            it += 1;
            let mut batch: Vec<&mut Subject<Cpu>> = subjects.iter_mut().collect();
            gcg.step(&v, &mut batch, it).expect("step")
        })
    });

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_MODEL);
    if !dir.join("config.json").exists() {
        eprintln!(
            "SKIPPED bundled-classifier bench: {} is absent",
            dir.display()
        );
        return;
    }
    let model = Model::load(&dir, Cpu).expect("bundled model");
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).expect("tokenizer");
    let task = Task::from_name("password-match").expect("task");
    let examples = load_examples(&task, None, 8, 0).expect("examples");
    let init = initial_attack(&tok, ATTACK_INIT_TEXT, 10).expect("init");
    let mut subjects: Vec<Subject<Cpu>> = build_subjects(
        &tok,
        &task.def,
        &examples,
        &ThreatModel::Suffix,
        0,
        &GoalSpec::Classify,
        &init,
        true,
    )
    .expect("subjects");
    let vocab = Vocab::from_tokenizer(&tok, model.cfg.vocab, true).expect("vocab");
    let v = Victim {
        model: &model,
        tok: Some(&tok),
        vocab: &vocab,
        fast: FastPaths::default(),
        rows_cap: Default::default(),
    };
    report("bundled classifier", &v, &mut subjects, 3);
    let mut it = 100;
    c.bench_function("gcg_iteration/bundled/8-examples", |b| {
        b.iter(|| {
            it += 1;
            let mut batch: Vec<&mut Subject<Cpu>> = subjects.iter_mut().collect();
            gcg.step(&v, &mut batch, it).expect("step")
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);

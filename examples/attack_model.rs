//! Embedding the attack engine: GCG with the study's settings against a classifier, driven
//! iteration by iteration through the `Attack` trait (no files written).
//!
//!     cargo run --release --example attack_model -- [MODEL_DIR] [EXAMPLES] [ITERATIONS]
//!
//! MODEL_DIR defaults to the bundled PasswordMatch classifier.

use armsrace::attack::runner::prepare_step;
use armsrace::attack::session::{initial_attack, load_examples, DEFAULT_MODEL};
use armsrace::attack::subject::build_subjects;
use armsrace::attack::{Attack, FastPaths, Gcg, GcgConfig, GoalSpec, Subject, Victim, Vocab};
use armsrace::task::{Task, ThreatModel, ATTACK_INIT_TEXT};
use armsrace::tokenize::Tokenizer;
use armsrace::{Cpu, Model};
use std::path::PathBuf;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| DEFAULT_MODEL.into()));
    let n: usize = args.next().map_or(Ok(4), |s| s.parse())?;
    let iterations: usize = args.next().map_or(Ok(10), |s| s.parse())?;

    let model = Model::load(&dir, Cpu)?;
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
    let task = Task::from_name("password-match")?;
    let examples = load_examples(&task, None, n, 0)?;
    let init = initial_attack(&tok, ATTACK_INIT_TEXT, 10)?;
    let mut subjects: Vec<Subject<Cpu>> = build_subjects(
        &tok,
        &task.def,
        &examples,
        &ThreatModel::Suffix,
        0,
        &GoalSpec::Classify,
        &init,
        true,
    )?;
    let vocab = Vocab::from_tokenizer(&tok, model.cfg.vocab, false)?;
    let victim = Victim {
        model: &model,
        tok: Some(&tok),
        vocab: &vocab,
        fast: FastPaths::default(),
        rows_cap: Default::default(),
    };
    let gcg = Gcg::new(GcgConfig::default());
    // What the runner does for every attack: the attack's own setup (GCG aligns its initial
    // attack in context), then, before each step, the prompt caches.
    for s in subjects.iter_mut() {
        gcg.init(&victim, s)?;
    }
    println!(
        "GCG on {} ({} examples; a real run would first skip misclassified ones)",
        dir.display(),
        subjects.len()
    );
    let mut broken = vec![false; subjects.len()];
    for it in 1..=iterations {
        let t = Instant::now();
        let mut batch: Vec<&mut Subject<Cpu>> = subjects.iter_mut().collect();
        prepare_step(&victim, &mut batch, it)?;
        let reports = gcg.step(&victim, &mut batch, it)?;
        for (b, r) in broken.iter_mut().zip(&reports) {
            *b |= r.success || r.success_before;
        }
        let mean = reports.iter().map(|r| r.loss).sum::<f32>() / reports.len() as f32;
        println!(
            "iteration {it:>3}: mean loss {mean:.4}, broken {}/{}, {:.2} s",
            broken.iter().filter(|&&b| b).count(),
            broken.len(),
            t.elapsed().as_secs_f64()
        );
    }
    for s in &subjects {
        println!("example {}: {:?}", s.index, tok.decode(&s.state.ids)?);
    }
    Ok(())
}

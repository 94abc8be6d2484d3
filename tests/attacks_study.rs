//! The attacks as the study ran them (science.md), against independent references: BEAST's
//! beam step against a naive beam search (every candidate scored by a plain forward of its
//! retokenized prompt), its sampler against plain sampler forwards; the FLOPs of one BEAST,
//! GCG and random-token iteration against science.md's formulas computed here by hand;
//! GCG's three filter rules each rejecting what it should; BEAST on the GPU harness equal
//! to the CPU, resumable, and refusing a sampler with another vocabulary.

mod common;

use armsrace::attack::beast::{BeamState, Beast, BeastConfig};
use armsrace::attack::results::{IterLine, Line, EXAMPLES_FILE, RESULTS_FILE, SUMMARY_FILE};
use armsrace::attack::runner::prepare_step;
use armsrace::attack::session::{run_plan, run_plan_on, AttackSpec, Plan};
use armsrace::attack::subject::build_subjects;
use armsrace::attack::summary::Summary;
use armsrace::attack::{
    Attack, FastPaths, Gcg, GcgConfig, GoalSpec, RandomTokenConfig, Subject, Victim, Vocab,
};
use armsrace::backend::gpu::emu::EmuDevice;
use armsrace::backend::gpu::{GpuBackend, Precision};
use armsrace::task::{attack_init, retokenizes, Task, ThreatModel};
use armsrace::tokenize::Tokenizer;
use armsrace::{Batch, Cpu, Model};
use common::fixture;
use std::path::{Path, PathBuf};

const VICTIM: &str = "neox-parallel-cls";
/// A causal LM with the victim's tokenizer (its LM head is wider than the vocabulary).
const SAMPLER: &str = "neox-sequential-lm";

fn tok() -> Tokenizer {
    Tokenizer::from_file(&fixture(VICTIM).join("tokenizer.json")).unwrap()
}

fn subjects(tok: &Tokenizer, n: usize, threat: &str, filter: bool) -> Vec<Subject<Cpu>> {
    let task = Task::from_name("password-match").unwrap();
    let examples = task.generate(n, 5).unwrap();
    let init = attack_init(tok, 10).unwrap();
    let threat = ThreatModel::parse(threat).unwrap();
    let spec = GoalSpec::Classify;
    build_subjects(tok, &task.def, &examples, &threat, 0, &spec, &init, filter).unwrap()
}

fn victim<'a>(model: &'a Model<Cpu>, tok: &'a Tokenizer, vocab: &'a Vocab) -> Victim<'a, Cpu> {
    Victim {
        model,
        tok: Some(tok),
        vocab,
        fast: FastPaths::default(),
        rows_cap: Default::default(),
    }
}

fn step<A: Attack<Cpu> + ?Sized>(
    a: &A,
    v: &Victim<Cpu>,
    subs: &mut [Subject<Cpu>],
    it: usize,
) -> Vec<armsrace::attack::StepReport> {
    let mut refs: Vec<&mut Subject<Cpu>> = subs.iter_mut().collect();
    let cache = prepare_step(v, &mut refs, it).unwrap();
    let mut r = a.step(v, &mut refs, it).unwrap();
    for (r, c) in r.iter_mut().zip(cache) {
        r.executed += c;
    }
    r
}

/// Cross-entropy toward `target` of a classifier on one sequence, by a plain forward.
fn naive_loss(model: &Model<Cpu>, seq: &[u32], target: u32) -> f32 {
    let batch = Batch::from_sequences(&[seq.to_vec()], 0).unwrap();
    let z = model.logits(&batch).unwrap();
    let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let lse = m + z.iter().map(|x| (x - m).exp()).sum::<f32>().ln();
    lse - z[target as usize]
}

fn decode_skip_special(tok: &Tokenizer, ids: &[u32]) -> String {
    tok.inner().decode(ids, true).unwrap()
}

/// The victim's prompt for BEAST attack tokens `ids`: decoded (special tokens skipped) into
/// the slot, the whole prompt tokenized again.
fn beast_prompt(tok: &Tokenizer, s: &Subject<Cpu>, ids: &[u32]) -> Vec<u32> {
    let parts = s.parts.as_ref().unwrap();
    tok.encode(&parts.with_attack(&decode_skip_special(tok, ids)))
        .unwrap()
}

fn beast_cfg(beam: usize, branching: usize, temperature: f32) -> BeastConfig {
    BeastConfig {
        beam,
        branching,
        temperature,
        ..BeastConfig::study(fixture(SAMPLER))
    }
}

#[test]
fn beast_beam_step_matches_a_naive_beam_search() {
    let tok = tok();
    let model = Model::load(&fixture(VICTIM), Cpu).unwrap();
    let vocab = Vocab::from_tokenizer(&tok, model.cfg.vocab, false).unwrap();
    let v = victim(&model, &tok, &vocab);
    let (k, w) = (4, 3);
    let beast = Beast::load(beast_cfg(k, w, 1.0), Cpu, &tok).unwrap();
    let mut subs = subjects(&tok, 3, "infix:0.5", false);
    for s in subs.iter_mut() {
        beast.init(&v, s).unwrap();
    }
    let mut best: Vec<f32> = vec![f32::INFINITY; subs.len()];
    for it in 1..=4 {
        // The naive reference: this iteration's candidates, each scored by a plain forward
        // of its retokenized prompt; the k lowest (ties: sampling order) are the beam.
        let mut want = Vec::new();
        for (i, s) in subs.iter().enumerate() {
            let (cands, _, _) = beast.expand(s, it).unwrap();
            assert_eq!(
                cands.len(),
                if it == 1 { k } else { k * w },
                "iteration {it}"
            );
            assert!(
                cands.iter().all(|c| c.len() == it),
                "one token per iteration"
            );
            let target = 1 - s.prompt.label;
            let losses: Vec<f32> = cands
                .iter()
                .map(|c| naive_loss(&model, &beast_prompt(&tok, s, c), target))
                .collect();
            let mut order: Vec<usize> = (0..cands.len()).collect();
            order.sort_by(|&a, &b| losses[a].total_cmp(&losses[b]));
            order.truncate(k);
            let lo = losses[order[0]];
            let improved = lo < best[i];
            if improved {
                best[i] = lo;
            }
            let beam: Vec<Vec<u32>> = order.iter().map(|&j| cands[j].clone()).collect();
            want.push((beam, improved.then(|| cands[order[0]].clone())));
        }
        let reports = step(&beast, &v, &mut subs, it);
        for (i, s) in subs.iter().enumerate() {
            let st: BeamState = s.state.data().unwrap();
            assert_eq!(st.beam, want[i].0, "example {i} iteration {it}: beam");
            if let Some(ids) = &want[i].1 {
                assert_eq!(&s.state.ids, ids, "example {i} iteration {it}: best attack");
            }
            let r = &reports[i];
            assert!(
                (r.loss - best[i]).abs() <= 1e-4 * best[i].abs().max(1.0),
                "example {i} iteration {it}: best loss {} vs naive {}",
                r.loss,
                best[i]
            );
            // The prompt recorded as read is the best attack's retokenized prompt.
            let read = s.state.prompt.clone().unwrap();
            assert_eq!(read, beast_prompt(&tok, s, &s.state.ids));
        }
    }
}

#[test]
fn beast_samples_the_samplers_top_tokens_at_low_temperature() {
    // At a tiny temperature the Gumbel noise cannot reorder logits: the sampled tokens of
    // each beam are the k largest next-token logits of a plain sampler forward.
    let tok = tok();
    let model = Model::load(&fixture(VICTIM), Cpu).unwrap();
    let sampler = Model::load(&fixture(SAMPLER), Cpu).unwrap();
    let vocab = Vocab::from_tokenizer(&tok, model.cfg.vocab, false).unwrap();
    let v = victim(&model, &tok, &vocab);
    let (k, w) = (3, 5);
    let beast = Beast::load(beast_cfg(k, w, 1e-6), Cpu, &tok).unwrap();
    let mut subs = subjects(&tok, 2, "suffix", false);
    for s in subs.iter_mut() {
        beast.init(&v, s).unwrap();
    }
    step(&beast, &v, &mut subs, 1);
    for s in &subs {
        let st: BeamState = s.state.data().unwrap();
        let (cands, _, _) = beast.expand(s, 2).unwrap();
        for (b, beam) in st.beam.iter().enumerate() {
            let seq = [s.prompt.before.as_slice(), beam].concat();
            let batch = Batch::from_sequences(std::slice::from_ref(&seq), 0).unwrap();
            let z = sampler.logits(&batch).unwrap();
            let width = sampler.cfg.vocab;
            let last = &z[(seq.len() - 1) * width..seq.len() * width];
            let mut ids: Vec<u32> = (0..width as u32).collect();
            ids.sort_by(|&a, &b| last[b as usize].total_cmp(&last[a as usize]));
            let got: Vec<u32> = cands[b * w..(b + 1) * w]
                .iter()
                .map(|c| *c.last().unwrap())
                .collect();
            assert_eq!(got, ids[..w].to_vec(), "example {} beam {b}", s.index);
            assert!(cands[b * w..(b + 1) * w].iter().all(|c| c[..1] == beam[..]));
        }
    }
}

/// N of the study's FLOP count: every parameter, input embeddings and score head in, by
/// hand from the GPTNeoX shapes of the fixture's config (parallel residual, biases).
fn neox_params(cfg: &serde_json::Value, head_rows: usize) -> f64 {
    let h = cfg["hidden_size"].as_u64().unwrap() as f64;
    let l = cfg["num_hidden_layers"].as_u64().unwrap() as f64;
    let i = cfg["intermediate_size"].as_u64().unwrap() as f64;
    let v = cfg["vocab_size"].as_u64().unwrap() as f64;
    let layer = 2.0 * 2.0 * h // two layer norms
        + 3.0 * h * h + 3.0 * h // qkv
        + h * h + h // attention output
        + h * i + i + i * h + h; // MLP
    v * h + l * layer + 2.0 * h + head_rows as f64 * h
}

fn read_config(name: &str) -> serde_json::Value {
    let raw = std::fs::read_to_string(fixture(name).join("config.json")).unwrap();
    serde_json::from_str(&raw).unwrap()
}

#[test]
fn one_iteration_costs_the_studys_flops() {
    let tok = tok();
    let model = Model::load(&fixture(VICTIM), Cpu).unwrap();
    let n = neox_params(&read_config(VICTIM), 2);
    assert_eq!(n, model.param_count() as f64, "N by hand");
    let vocab = Vocab::from_tokenizer(&tok, model.cfg.vocab, false).unwrap();
    let v = victim(&model, &tok, &vocab);

    // GCG: (6 + 2K) N T, T the prompt's tokens, K the candidates that passed the filter.
    let gcg = Gcg::new(GcgConfig {
        search_width: 16,
        ..GcgConfig::default()
    });
    let mut subs = subjects(&tok, 2, "suffix", true);
    for s in subs.iter_mut() {
        gcg.init(&v, s).unwrap();
    }
    let t: Vec<usize> = subs.iter().map(|s| s.current_sequence().len()).collect();
    for (r, t) in step(&gcg, &v, &mut subs, 1).iter().zip(t) {
        assert!(r.scored > 0 && r.scored + r.rejected == 16, "{r:?}");
        assert_eq!(r.nominal, (6.0 + 2.0 * r.scored as f64) * n * t as f64);
    }

    // Random token: 2 N T', T' the tokens of the prompt with the draw's text retokenized.
    let pool = Vocab::random_token_pool(&tok, model.cfg.vocab).unwrap();
    let special = armsrace::task::special_token_ids(&tok);
    let base = tok.inner().get_vocab_size(false) as u32;
    assert!(pool
        .allowed()
        .iter()
        .all(|id| *id < base && !special.contains(id)));
    assert_eq!(pool.allowed().len(), base as usize - special.len());
    let rt = armsrace::attack::RandomToken::new(RandomTokenConfig::default(), pool);
    let mut subs = subjects(&tok, 3, "infix:0.5", false);
    for it in 1..=3 {
        step(&rt, &v, &mut subs, it);
    }
    for s in &subs {
        let parts = s.parts.as_ref().unwrap();
        let want = tok
            .encode(&parts.with_attack(&tok.decode(&s.state.ids).unwrap()))
            .unwrap();
        assert_eq!(
            s.state.prompt.as_ref(),
            Some(&want),
            "the victim read the retokenized text"
        );
    }
    let reports = step(&rt, &v, &mut subs, 4);
    for (s, r) in subs.iter().zip(&reports) {
        let t = s.state.prompt.as_ref().unwrap().len();
        assert_eq!(r.nominal, 2.0 * n * t as f64);
    }

    // BEAST: 2 N per padded scored token (an example's candidates padded to their longest)
    // + 2 N_sampler per sampler prompt token, N_sampler with the untied output embedding.
    let scfg = read_config(SAMPLER);
    let n_s = neox_params(&scfg, 0)
        + (scfg["vocab_size"].as_u64().unwrap() * scfg["hidden_size"].as_u64().unwrap()) as f64;
    let (k, w) = (3, 2);
    let beast = Beast::load(beast_cfg(k, w, 1.0), Cpu, &tok).unwrap();
    assert_eq!(beast.sampler_params() as f64, n_s, "N_sampler by hand");
    let mut subs = subjects(&tok, 2, "suffix", false);
    for s in subs.iter_mut() {
        beast.init(&v, s).unwrap();
    }
    for it in 1..=3 {
        let lens: Vec<(usize, usize, usize)> = subs
            .iter()
            .map(|s| {
                let (cands, _, _) = beast.expand(s, it).unwrap();
                let longest = cands
                    .iter()
                    .map(|c| beast_prompt(&tok, s, c).len())
                    .max()
                    .unwrap();
                let beams = if it == 1 { 1 } else { k };
                (
                    cands.len(),
                    longest,
                    beams * (s.prompt.before.len() + it - 1),
                )
            })
            .collect();
        let reports = step(&beast, &v, &mut subs, it);
        for (r, (cands, longest, sampler_tokens)) in reports.iter().zip(lens) {
            assert_eq!(cands, if it == 1 { k } else { k * w });
            let want = 2.0 * n * (cands * longest) as f64 + 2.0 * n_s * sampler_tokens as f64;
            assert!(
                (r.nominal - want).abs() <= 1e-9 * want,
                "iteration {it}: {} vs {want}",
                r.nominal
            );
        }
    }
}

#[test]
fn gcg_filter_rejects_each_kind_of_invalid_candidate() {
    let tok = tok();
    let model = Model::load(&fixture(VICTIM), Cpu).unwrap();
    let vocab = Vocab::from_tokenizer(&tok, model.cfg.vocab, false).unwrap();
    let v = victim(&model, &tok, &vocab);
    let gcg = Gcg::new(GcgConfig::default());
    // [no-op, prompt fails only, attack alone fails, valid]
    let mut seen = [0usize; 4];
    for threat in ["suffix", "prefix", "infix:0.5"] {
        let mut subs = subjects(&tok, 3, threat, true);
        for s in subs.iter_mut() {
            gcg.init(&v, s).unwrap();
        }
        for s in &subs {
            let cur = s.state.ids.clone();
            let mut cands = Vec::new();
            for p in 0..cur.len() {
                for &id in vocab.allowed() {
                    let mut c = cur.clone();
                    c[p] = id;
                    cands.push(c);
                }
            }
            let got = gcg.valid(&v, s, &cands).unwrap();
            for (c, ok) in cands.iter().zip(got) {
                // The reference: plain decode -> encode of the whole prompt and of the attack.
                let whole = retokenizes(&tok, &s.prompt.ids(c)).unwrap();
                let alone = retokenizes(&tok, c).unwrap();
                let noop = *c == cur;
                assert_eq!(ok, whole && alone && !noop, "{threat} {c:?}");
                let kind = match (noop, whole, alone) {
                    (true, _, _) => 0,
                    (_, false, true) => 1,
                    (_, _, false) => 2,
                    _ => 3,
                };
                seen[kind] += 1;
            }
        }
    }
    eprintln!("no-op, prompt-only failures, attack failures, valid: {seen:?}");
    assert!(seen.iter().all(|&n| n > 0), "{seen:?}");
}

#[test]
fn gcg_aligns_an_initial_attack_that_fails_in_context() {
    let tok = tok();
    let model = Model::load(&fixture(VICTIM), Cpu).unwrap();
    let vocab = Vocab::from_tokenizer(&tok, model.cfg.vocab, false).unwrap();
    let v = victim(&model, &tok, &vocab);
    let task = Task::from_name("password-match").unwrap();
    let examples = task.generate(4, 5).unwrap();
    // Ten copies of a token that merges with itself (re-encodes into longer tokens).
    let init = (0..tok.vocab_size() as u32)
        .map(|id| vec![id; 10])
        .find(|ids| {
            !tok.decode(ids).unwrap().contains('\u{FFFD}') && !retokenizes(&tok, ids).unwrap()
        })
        .expect("some token merges with itself");
    let threat = ThreatModel::parse("suffix").unwrap();
    let mut subs: Vec<Subject<Cpu>> = build_subjects(
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
    let gcg = Gcg::new(GcgConfig::default());
    for s in subs.iter_mut() {
        gcg.init(&v, s).unwrap();
        let ids = &s.state.ids;
        assert_eq!(ids.len(), 10);
        assert!(retokenizes(&tok, ids).unwrap(), "{ids:?}");
        assert!(retokenizes(&tok, &s.prompt.ids(ids)).unwrap(), "{ids:?}");
        // Deterministic: the same example aligns to the same attack.
        let mut again: Vec<Subject<Cpu>> = build_subjects(
            &tok,
            &task.def,
            &examples[s.index..=s.index],
            &threat,
            0,
            &GoalSpec::Classify,
            &init,
            true,
        )
        .unwrap();
        again[0].index = s.index;
        gcg.init(&v, &mut again[0]).unwrap();
        assert_eq!(&again[0].state.ids, ids);
    }
}

fn beast_plan(model: PathBuf, sampler: PathBuf, iterations: usize) -> Plan {
    let mut plan = Plan::study_gcg(model);
    plan.attack = AttackSpec::Beast(BeastConfig {
        beam: 3,
        branching: 3,
        ..BeastConfig::study(sampler)
    });
    plan.examples = 3;
    plan.budget.iterations = iterations;
    plan.group_size = 2;
    plan
}

/// Results lines without wall times (the only field that differs between runs).
fn lines(dir: &Path) -> Vec<Line> {
    std::fs::read_to_string(dir.join(RESULTS_FILE))
        .unwrap()
        .lines()
        .map(|l| {
            let mut l: Line = serde_json::from_str(l).unwrap();
            if let Line::Iter(IterLine { wall_s, .. }) = &mut l {
                *wall_s = 0.0;
            }
            l
        })
        .collect()
}

#[test]
fn beast_runs_on_the_gpu_harness_as_on_the_cpu_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let plan = beast_plan(fixture(VICTIM), fixture(SAMPLER), 3);
    let cpu = tmp.path().join("cpu");
    let res = run_plan(&plan, &cpu, false, None, &mut |_| {}).unwrap();
    let s: Summary =
        serde_json::from_str(&std::fs::read_to_string(cpu.join(SUMMARY_FILE)).unwrap()).unwrap();
    assert_eq!(
        (&s.asr_current, s.attacked),
        (&res.summary.asr_current, res.summary.attacked)
    );
    assert_eq!(s.asr_kind, armsrace::attack::AsrKind::Current);
    assert_eq!(s.iterations, 3);
    // The best attack is BEAST's current one: the current-iterate curve never falls.
    assert!(
        s.asr_current.windows(2).all(|w| w[1] >= w[0]),
        "{:?}",
        s.asr_current
    );

    // Killed after iteration 2 and resumed: the same lines as the uninterrupted run.
    let resumed = tmp.path().join("resumed");
    let r = run_plan(&plan, &resumed, false, Some(2), &mut |_| {}).unwrap();
    assert!(!r.complete);
    run_plan(&plan, &resumed, false, None, &mut |_| {}).unwrap();
    assert_eq!(lines(&resumed), lines(&cpu));

    // The GPU path (the kernels' CPU harness): same beams, losses within float tolerance.
    let gpu = tmp.path().join("gpu");
    let be = GpuBackend::new(EmuDevice::new(), Precision::F32);
    run_plan_on(&plan, be, &gpu, false, None, &mut |_| {}).unwrap();
    for (a, b) in lines(&gpu).iter().zip(lines(&cpu)) {
        match (a, &b) {
            (Line::Iter(a), Line::Iter(b)) => {
                assert_eq!(
                    a.attack_ids, b.attack_ids,
                    "example {} it {}",
                    a.example, a.iteration
                );
                assert_eq!(a.state["beam"], b.state["beam"]);
                assert!((a.loss - b.loss).abs() <= 1e-4 * b.loss.abs().max(1.0));
                assert_eq!(a.nominal_flops, b.nominal_flops);
            }
            (Line::Clean(a), Line::Clean(b)) => assert_eq!(a.skipped, b.skipped),
            _ => panic!("line kinds differ"),
        }
    }
}

#[test]
fn results_hold_each_examples_final_and_best_prompt_text() {
    let tmp = tempfile::tempdir().unwrap();
    let plan = beast_plan(fixture(VICTIM), fixture(SAMPLER), 2);
    run_plan(&plan, tmp.path(), false, None, &mut |_| {}).unwrap();
    let tok = tok();
    let text = std::fs::read_to_string(tmp.path().join(EXAMPLES_FILE)).unwrap();
    let recs: Vec<armsrace::attack::results::ExampleRecord> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 3);
    let instructions = armsrace::task::defs::PASSWORD_MATCH_INSTRUCTIONS;
    for r in recs.iter().filter(|r| r.attacked) {
        for a in [r.final_attack.as_ref().unwrap(), r.best.as_ref().unwrap()] {
            let p = a.prompt_text.as_ref().unwrap();
            assert!(p.starts_with(instructions), "{p:?}");
            assert!(p.ends_with("\n\nAnswer:"), "{p:?}");
            assert_eq!(p, &tok.decode(&a.prompt_ids).unwrap());
            // What the victim read: its own tokenization of that text.
            assert_eq!(tok.encode(p).unwrap(), a.prompt_ids);
        }
        let (f, b) = (r.final_attack.as_ref().unwrap(), r.best.as_ref().unwrap());
        assert!(b.loss <= f.loss);
        assert_eq!(f.iteration, 2);
    }
}

#[test]
fn a_sampler_must_share_the_victims_vocabulary_and_be_a_causal_lm() {
    let tok = tok();
    let other = BeastConfig::study(fixture("qwen2-gqa-tied-lm"));
    let e = Beast::<Cpu>::load(other, Cpu, &tok)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("vocabulary differs") && e.contains("tokenizer.json"),
        "{e}"
    );
    let cls = BeastConfig::study(fixture(VICTIM));
    let e = Beast::<Cpu>::load(cls, Cpu, &tok)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("must be a causal LM"), "{e}");
}

#[test]
fn one_attack_call_evaluates_several_threat_models() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("transfer");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_armsrace"))
        .args([
            "attack",
            "--iterations",
            "1",
            "--examples",
            "3",
            "--search-width",
            "8",
        ])
        .args([
            "--threat",
            "suffix,infix:0.9",
            "--threat",
            "prefix",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    for (dir, threat) in [
        ("suffix", "suffix"),
        ("infix-0.9", "infix:0.9"),
        ("prefix", "prefix"),
    ] {
        let raw = std::fs::read_to_string(out.join(dir).join(SUMMARY_FILE)).unwrap();
        let s: Summary = serde_json::from_str(&raw).unwrap();
        assert_eq!(
            s.info.threat,
            ThreatModel::parse(threat).unwrap().to_string()
        );
        assert_eq!(s.iterations, 1);
    }
}

#[test]
fn random_token_keeps_its_first_success_as_the_adversarial_example() {
    let tmp = tempfile::tempdir().unwrap();
    let bundled = common::repo_root().join(armsrace::attack::session::DEFAULT_MODEL);
    let mut plan = Plan::study_gcg(bundled);
    plan.attack = AttackSpec::RandomToken(RandomTokenConfig::default());
    plan.examples = 6;
    plan.budget.iterations = 60;
    let res = run_plan(&plan, tmp.path(), false, None, &mut |_| {}).unwrap();
    assert_eq!(res.summary.asr_kind, armsrace::attack::AsrKind::Cumulative);
    let mut broken = 0;
    for r in res.examples.iter().filter(|r| r.attacked) {
        let first = r.first_success.as_ref();
        assert_eq!(first.map(|a| a.iteration), r.broken_at);
        let kept = r
            .adversarial(armsrace::attack::AsrKind::Cumulative)
            .unwrap();
        match first {
            Some(f) => {
                broken += 1;
                assert!(f.success && kept == f);
            }
            None => assert_eq!(kept, r.final_attack.as_ref().unwrap()),
        }
        // Every draw was scored: the last is iteration 60 whatever happened before.
        assert_eq!(r.final_attack.as_ref().unwrap().iteration, 60);
    }
    assert!(broken > 0, "no draw broke any example in 60 tries");
}

#[test]
fn an_iteration_whose_candidates_are_all_filtered_is_skipped_and_counted() {
    // The only token GCG may propose is the one every position already holds: every swap is
    // a no-op, so the filter rejects all of them.
    let tok = tok();
    let model = Model::load(&fixture(VICTIM), Cpu).unwrap();
    let x = tok.encode("a").unwrap()[0];
    let vocab = Vocab::range(x, x + 1, model.cfg.vocab).unwrap();
    let v = victim(&model, &tok, &vocab);
    let mut subs = subjects(&tok, 2, "suffix", true);
    for s in subs.iter_mut() {
        s.state.ids = vec![x; 10];
    }
    let gcg = Gcg::new(GcgConfig::default());
    let n = model.param_count() as f64;
    let t: Vec<usize> = subs.iter().map(|s| s.current_sequence().len()).collect();
    for (r, t) in step(&gcg, &v, &mut subs, 1).iter().zip(t) {
        assert!(r.skipped && r.scored == 0 && r.rejected == 10, "{r:?}");
        // Its gradient pass still ran: (6 + 2 * 0) N T.
        assert_eq!(r.nominal, 6.0 * n * t as f64);
    }
    assert!(subs.iter().all(|s| s.state.ids == vec![x; 10]));
}

#[test]
fn one_writer_per_results_directory_and_a_dead_writer_does_not_block() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let cmd = |iterations: &str| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_armsrace"));
        c.args([
            "attack",
            "--attack",
            "random-token",
            "--iterations",
            iterations,
            "--out",
        ])
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
        c
    };
    let mut first = cmd("1000000").spawn().unwrap();
    let t = std::time::Instant::now();
    while !out.join(RESULTS_FILE).exists() {
        assert!(t.elapsed().as_secs() < 60, "the first run wrote nothing");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let second = cmd("1000000").output().unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("another armsrace process"), "{err}");
    first.kill().unwrap(); // SIGKILL: the lock dies with the process
    first.wait().unwrap();
    // The directory is free again: a run with other settings now reaches the settings check.
    let third = cmd("5").output().unwrap();
    let err = String::from_utf8_lossy(&third.stderr);
    assert!(err.contains("different settings"), "{err}");
}

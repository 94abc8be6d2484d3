//! Out of device memory during candidate scoring: the scorer halves its candidate calls and
//! the run goes on with the same results. Runs a GCG step on the GPU backend over the CPU
//! execution harness (EmuDevice) with no memory cap, then with caps that leave too little
//! memory for the step's scoring call, and requires identical losses, picks and FLOP counts;
//! a cap that leaves no room for even one candidate gives `Error::OutOfMemory` (no panic), and
//! the backend works again afterwards. The victim remembers the size that fitted: a second
//! step under the same cap is refused fewer times, with the same results. (512 candidates, so
//! that scoring, not the gradient pass, is what overflows first.)

mod common;

use armsrace::attack::subject::{build_subjects, AttackState};
use armsrace::attack::FastPaths;
use armsrace::attack::{Attack, Gcg, GcgConfig, GoalSpec, StepReport, Subject, Victim, Vocab};
use armsrace::backend::gpu::emu::EmuDevice;
use armsrace::backend::gpu::{GpuBackend, Precision};
use armsrace::error::Result;
use armsrace::task::{attack_init, Task, ThreatModel};
use armsrace::tokenize::Tokenizer;
use armsrace::Model;
use common::fixture;

type Be = GpuBackend<EmuDevice>;

struct Setup {
    be: Be,
    model: Model<Be>,
    tok: Tokenizer,
    vocab: Vocab,
}

fn setup() -> Setup {
    let dir = fixture("neox-parallel-cls");
    // One worker: blocks run in a fixed order, so even float atomics are reproducible and
    // any difference below comes from the split alone.
    let be = GpuBackend::new(EmuDevice::new().with_workers(1), Precision::F32);
    let model = Model::load(&dir, be.clone()).unwrap();
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let vocab = Vocab::from_tokenizer(&tok, model.cfg.vocab, false).unwrap();
    Setup {
        be,
        model,
        tok,
        vocab,
    }
}

fn subjects(s: &Setup) -> Vec<Subject<Be>> {
    let task = Task::from_name("password-match").unwrap();
    let examples = task.generate(2, 3).unwrap();
    let init = attack_init(&s.tok, 6).unwrap();
    let threat = ThreatModel::parse("suffix").unwrap();
    let spec = GoalSpec::Classify;
    let mut subs = build_subjects(
        &s.tok, &task.def, &examples, &threat, 0, &spec, &init, false,
    )
    .unwrap();
    for sub in subs.iter_mut() {
        sub.ensure_cache(&s.model).unwrap();
    }
    subs
}

/// One GCG iteration on `subs` (fresh ones, prompt caches built): the reports and the attack
/// states it leaves.
fn gcg_step(s: &Setup, subs: Vec<Subject<Be>>) -> Result<(Vec<StepReport>, Vec<AttackState>)> {
    gcg_step_on(&victim(s), subs)
}

fn victim(s: &Setup) -> Victim<'_, Be> {
    Victim {
        model: &s.model,
        tok: Some(&s.tok),
        vocab: &s.vocab,
        fast: FastPaths::default(),
        rows_cap: Default::default(),
    }
}

/// The same step on a given victim (which remembers a scoring size that fitted).
fn gcg_step_on(
    v: &Victim<'_, Be>,
    mut subs: Vec<Subject<Be>>,
) -> Result<(Vec<StepReport>, Vec<AttackState>)> {
    let gcg = Gcg::new(GcgConfig {
        search_width: 512,
        topk: 32,
        filter: false,
        ..GcgConfig::default()
    });
    let mut refs: Vec<&mut Subject<Be>> = subs.iter_mut().collect();
    let reports = gcg.step(v, &mut refs, 1)?;
    Ok((reports, subs.into_iter().map(|x| x.state).collect()))
}

fn assert_same(
    what: &str,
    got: &(Vec<StepReport>, Vec<AttackState>),
    want: &(Vec<StepReport>, Vec<AttackState>),
) {
    for (i, (g, w)) in got.0.iter().zip(&want.0).enumerate() {
        assert_eq!(
            g.loss.to_bits(),
            w.loss.to_bits(),
            "{what}: example {i} loss {} vs {}",
            g.loss,
            w.loss
        );
    }
    assert_eq!(got.0, want.0, "{what}: step reports");
    assert_eq!(got.1, want.1, "{what}: attacks picked");
}

#[test]
fn oom_in_scoring_halves_the_batch_with_the_same_results() {
    let s = setup();
    let dev = s.be.device();
    let subs = subjects(&s);
    s.be.trim();
    let base = dev.mem_used();
    dev.reset_mem_peak();
    let want = gcg_step(&s, subs).unwrap();
    s.be.check().unwrap();
    let need = dev.mem_peak() - base;
    assert!(need > 0, "the step allocated device memory");

    // Caps between the step's peak and almost nothing: the larger ones must split the
    // scoring calls and agree; the smallest leave no room for even the gradient pass or one
    // candidate and must fail with OutOfMemory.
    let mut split_ok = 0;
    let mut failed = 0;
    for frac in [0.6, 0.4, 0.25, 0.0] {
        let subs = subjects(&s);
        s.be.trim();
        let cap = dev.mem_used() + (need as f64 * frac) as usize;
        dev.set_mem_cap(Some(cap));
        let ooms = dev.oom_count();
        let v = victim(&s);
        let got = gcg_step_on(&v, subs);
        let refusals = dev.oom_count() - ooms;
        let hit = refusals > 0;
        println!(
            "cap {frac} of the step's {need} bytes: {refusals} refusals, {}",
            if got.is_ok() { "ok" } else { "failed" }
        );
        match got {
            Ok(got) => {
                s.be.check().unwrap();
                assert_same(&format!("cap {frac} of the peak"), &got, &want);
                // A refusal the allocator absorbs (it frees its cache and retries) splits
                // nothing; a scoring call that failed did, and set the victim's cap.
                if v.rows_cap.get().is_some() {
                    split_ok += 1;
                    // The victim remembers a size that fitted: the next step under the same
                    // cap is refused less often and gives the same result.
                    s.be.trim();
                    let before = dev.oom_count();
                    let next = gcg_step_on(&v, subjects(&s)).unwrap();
                    let refused_again = dev.oom_count() - before;
                    println!("  next step on the same victim: {refused_again} refusals");
                    assert!(
                        refused_again < refusals,
                        "cap {frac}: {refused_again} refusals after the first step's {refusals}"
                    );
                    assert_same(&format!("cap {frac}, second step"), &next, &want);
                }
                dev.set_mem_cap(None);
            }
            Err(e) => {
                dev.set_mem_cap(None);
                assert!(
                    e.is_out_of_memory(),
                    "cap {frac}: expected OutOfMemory, got {e}"
                );
                assert!(hit, "cap {frac}: the device refused an allocation");
                // The error was handed over: the backend is clean again.
                s.be.check().unwrap();
                failed += 1;
            }
        }
    }
    assert!(
        split_ok > 0,
        "some cap forced the scorer to split and it still succeeded"
    );
    assert!(failed > 0, "the smallest cap made the step fail");

    // After every failure above the backend still works and gives the same step.
    let again = gcg_step(&s, subjects(&s)).unwrap();
    assert_same("after the failures", &again, &want);
}

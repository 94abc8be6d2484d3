//! The whole model against transformers: logits, losses, one-hot gradients and every weight
//! gradient of checkpoints written by tests/fixtures/make_fixtures.py.

mod common;

use armsrace::model::config::HeadKind;
use armsrace::model::weights::{export_spec, param_specs};
use armsrace::{Batch, Cpu, GradRequest, Model, Objective};
use common::*;

const TOL: f32 = 1e-4;

fn check_fixture(name: &str) {
    let dir = fixture(name);
    let model = Model::load(&dir, Cpu).unwrap_or_else(|e| panic!("{name}: {e}"));
    let r = read_reference(&dir.join("reference.safetensors"));
    let (ids, shape) = i64s(&r, "input_ids");
    let (mask, _) = i64s(&r, "attention_mask");
    let (b, t) = (shape[0], shape[1]);
    let batch = Batch::from_mask(
        ids.iter().map(|&x| x as u32).collect(),
        &mask.iter().map(|&x| x as u32).collect::<Vec<_>>(),
        b,
        t,
    )
    .unwrap();
    let v = model.cfg.vocab;

    // Logits.
    let logits = model.logits(&batch).unwrap();
    let want = f32s(&r, "logits");
    match model.cfg.head {
        HeadKind::Classifier { .. } => assert_close(&format!("{name} logits"), &logits, want, TOL),
        HeadKind::CausalLm => {
            // Only real positions are meaningful (the reference zeroes pad rows).
            let keep = |x: &[f32]| -> Vec<f32> {
                x.chunks(v)
                    .zip(mask)
                    .filter(|(_, &m)| m == 1)
                    .flat_map(|(c, _)| c.to_vec())
                    .collect()
            };
            assert_close(&format!("{name} logits"), &keep(&logits), &keep(want), TOL);
        }
    }

    // Loss, one-hot gradient and weight gradients.
    let objective = match model.cfg.head {
        HeadKind::Classifier { .. } => Objective::Classify {
            labels: i64s(&r, "labels").0.iter().map(|&x| x as u32).collect(),
        },
        HeadKind::CausalLm => Objective::Target {
            mask: i64s(&r, "target_mask").0.iter().map(|&x| x == 1).collect(),
        },
    };
    let req = GradRequest {
        onehot_rows: Some((0..b * t).collect()),
        weights: true,
    };
    let out = model.loss_and_grads(&batch, &objective, &req).unwrap();
    assert_close(
        &format!("{name} loss_per_seq"),
        &out.loss_per_seq,
        f32s(&r, "loss_per_seq"),
        TOL,
    );
    assert_close(
        &format!("{name} onehot_grad"),
        out.onehot_grad.as_ref().unwrap(),
        f32s(&r, "onehot_grad"),
        TOL,
    );
    let grads = out.weight_grads.unwrap();
    let mut checked = 0;
    for spec in param_specs(&model.cfg) {
        let data = grads.slot(spec.slot).unwrap();
        for (hf, _, g) in export_spec(&model.cfg, &spec, data) {
            assert_close(
                &format!("{name} grad.{hf}"),
                &g,
                f32s(&r, &format!("grad.{hf}")),
                TOL,
            );
            checked += 1;
        }
    }
    let n_ref = r.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(
        checked, n_ref,
        "{name}: every reference gradient must be checked"
    );
}

#[test]
fn neox_parallel_classifier() {
    check_fixture("neox-parallel-cls");
}
#[test]
fn neox_sequential_lm_f16() {
    check_fixture("neox-sequential-lm");
}
#[test]
fn neox_lm_bf16_sharded() {
    check_fixture("neox-lm-bf16-sharded");
}
#[test]
fn qwen2_gqa_tied_lm() {
    check_fixture("qwen2-gqa-tied-lm");
}
#[test]
fn qwen2_untied_classifier_bf16_sharded() {
    check_fixture("qwen2-untied-cls");
}
#[test]
fn qwen2_mha_lm_f16() {
    check_fixture("qwen2-mha-lm-f16");
}

//! The whole model on the GPU backend against the CPU backend, on the transformers fixtures
//! (tests/fixtures): logits, losses, one-hot gradients and every weight gradient, through the
//! CPU execution harness (EmuDevice) and, with feature `cuda` and a GPU, on the device. Plus
//! one GCG candidate-scoring step (top-k -> sampled candidates -> per-candidate loss ->
//! arg-min) that must agree across backends.
//!
//! Tolerances (relative to max |CPU value|): f32 storage 1e-4 everywhere; bf16 storage
//! 6e-2 on logits (weights and every activation rounded to 8 bits of mantissa through two
//! layers), 2e-2 on the loss and 6e-2 on the one-hot gradient (measured and justified at
//! `BF16_LOSS_TOL`); bf16 weight gradients are not compared here (tests/train_backends.rs
//! checks bf16 training steps as a whole).

mod common;

use armsrace::backend::cpu::gcg;
use armsrace::backend::gpu::device::KernelDevice;
use armsrace::backend::gpu::emu::EmuDevice;
use armsrace::backend::gpu::{GpuBackend, Precision};
use armsrace::model::config::HeadKind;
use armsrace::model::weights::param_specs;
use armsrace::{Batch, Cpu, GradRequest, Model, Objective};
use common::*;

fn fixture_batch(r: &std::collections::HashMap<String, RefTensor>) -> Batch {
    let (ids, shape) = i64s(r, "input_ids");
    let (mask, _) = i64s(r, "attention_mask");
    Batch::from_mask(
        ids.iter().map(|&x| x as u32).collect(),
        &mask.iter().map(|&x| x as u32).collect::<Vec<_>>(),
        shape[0],
        shape[1],
    )
    .unwrap()
}

/// Logits rows of real tokens only (pad rows are not meaningful).
fn real_rows(logits: &[f32], width: usize, batch: &Batch) -> Vec<f32> {
    logits
        .chunks(width)
        .enumerate()
        .filter(|(i, _)| i % batch.seq < batch.lens[i / batch.seq])
        .flat_map(|(_, c)| c.to_vec())
        .collect()
}

fn compare_fixture<D: KernelDevice>(name: &str, dev: D, precision: Precision) {
    let dir = fixture(name);
    let cpu = Model::load(&dir, Cpu).unwrap_or_else(|e| panic!("{name}: {e}"));
    let be = GpuBackend::new(dev, precision);
    let what = |s: &str| format!("{name} [{} {:?}] {s}", be.device().name(), precision);
    let gpu = Model::load(&dir, be.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let r = read_reference(&dir.join("reference.safetensors"));
    let batch = fixture_batch(&r);
    let lm = gpu.cfg.head == HeadKind::CausalLm;
    let width = if lm {
        gpu.cfg.vocab
    } else {
        gpu.cfg.num_labels().unwrap()
    };

    let (lg, lc) = (gpu.logits(&batch).unwrap(), cpu.logits(&batch).unwrap());
    be.check().unwrap();
    let (lg, lc) = if lm {
        (real_rows(&lg, width, &batch), real_rows(&lc, width, &batch))
    } else {
        (lg, lc)
    };
    let tol = if precision == Precision::F32 {
        1e-4
    } else {
        6e-2
    };
    assert_close(&what("logits"), &lg, &lc, tol);
    let f32 = precision == Precision::F32;

    let objective = if lm {
        Objective::Target {
            mask: i64s(&r, "target_mask").0.iter().map(|&x| x == 1).collect(),
        }
    } else {
        Objective::Classify {
            labels: i64s(&r, "labels").0.iter().map(|&x| x as u32).collect(),
        }
    };
    let req = GradRequest {
        onehot_rows: Some((0..batch.rows()).collect()),
        weights: f32,
    };
    let g = gpu.loss_and_grads(&batch, &objective, &req).unwrap();
    be.check().unwrap();
    let c = cpu.loss_and_grads(&batch, &objective, &req).unwrap();
    let (loss_tol, grad_tol) = if f32 {
        (1e-4, 1e-4)
    } else {
        (BF16_LOSS_TOL, BF16_GRAD_TOL)
    };
    assert_close(
        &what("loss_per_seq"),
        &g.loss_per_seq,
        &c.loss_per_seq,
        loss_tol,
    );
    assert_close(
        &what("onehot_grad"),
        g.onehot_grad.as_ref().unwrap(),
        c.onehot_grad.as_ref().unwrap(),
        grad_tol,
    );
    if !f32 {
        return;
    }
    let (gw, cw) = (g.weight_grads.unwrap(), c.weight_grads.unwrap());
    for spec in param_specs(&gpu.cfg) {
        let (a, b) = (gw.slot(spec.slot).unwrap(), cw.slot(spec.slot).unwrap());
        assert_close(&what(&format!("grad {:?}", spec.slot)), a, b, 1e-4);
    }
}

/// bf16 storage against the f32 CPU backend, relative to max |CPU value| (see the module
/// documentation). bf16 keeps 8 significant bits (each rounding up to 2^-9 = 2e-3 relative)
/// and every weight and activation is rounded. The loss is a log-sum-exp of the logits
/// (within 6e-2 of max |logit|), which averages their errors out: measured on the harness,
/// at most 7.4e-3 of the largest loss (neox-parallel-cls); allowed 2e-2. The one-hot gradient
/// runs back through every layer (roughly twice the roundings of the forward, and the
/// gradients of the softmax rows are differences of rounded values): measured at most 2.9e-2
/// (qwen2-gqa-tied-lm); allowed 6e-2, as for the logits. A wrong gradient (a dropped term,
/// the wrong row, a sign) is off by the order of the gradient itself. The GPU leg runs the
/// same kernels (f32 accumulation everywhere) and is held to the same bounds.
const BF16_LOSS_TOL: f32 = 2e-2;
const BF16_GRAD_TOL: f32 = 6e-2;

const FIXTURES: &[&str] = &[
    "neox-parallel-cls",
    "neox-sequential-lm",
    "neox-lm-bf16-sharded",
    "qwen2-gqa-tied-lm",
    "qwen2-untied-cls",
    "qwen2-mha-lm-f16",
];

fn run_fixture(name: &str) {
    compare_fixture(name, EmuDevice::new(), Precision::F32);
    compare_fixture(name, EmuDevice::new(), Precision::Bf16);
    #[cfg(feature = "cuda")]
    match armsrace::backend::gpu::cuda::CudaDevice::new(0) {
        Ok(dev) => {
            compare_fixture(name, dev, Precision::F32);
            compare_fixture(
                name,
                armsrace::backend::gpu::cuda::CudaDevice::new(0).unwrap(),
                Precision::Bf16,
            );
        }
        Err(e) => println!("SKIPPED: no CUDA device ({e}): {name} checked on the CPU harness only"),
    }
    #[cfg(not(feature = "cuda"))]
    println!("SKIPPED: no CUDA device (built without feature `cuda`): {name} checked on the CPU harness only");
}

#[test]
fn fixtures_match_cpu() {
    for name in FIXTURES {
        run_fixture(name);
    }
}

/// One GCG step on both backends: the one-hot gradient of an attack slot, its top-k,
/// sampled single-swap candidates, their losses against a cached prefix, and the best one.
fn gcg_step<D: KernelDevice>(dev: D) {
    let dir = fixture("qwen2-gqa-tied-lm");
    let cpu = Model::load(&dir, Cpu).unwrap();
    let be = GpuBackend::new(dev, Precision::F32);
    let gpu = Model::load(&dir, be.clone()).unwrap();
    let r = read_reference(&dir.join("reference.safetensors"));
    let full = fixture_batch(&r);
    let seq = full.lens[0];
    let ids: Vec<u32> = full.ids[..seq].to_vec();
    let vocab = cpu.cfg.vocab;
    // Layout: [prefix 0..2) [attack slot 2..7) [rest 7..seq), the last 3 tokens are the target.
    let (p_len, slot) = (2usize, 2usize..7usize);
    let one = Batch {
        ids: ids.clone(),
        batch: 1,
        seq,
        lens: vec![seq],
    };
    let mask: Vec<bool> = (0..seq).map(|t| t + 3 >= seq).collect();
    let objective = Objective::Target { mask: mask.clone() };
    let req = GradRequest {
        onehot_rows: Some(slot.clone().collect()),
        weights: false,
    };
    let gc = cpu.loss_and_grads(&one, &objective, &req).unwrap();
    let gg = gpu.loss_and_grads(&one, &objective, &req).unwrap();
    be.check().unwrap();
    let (grad_c, grad_g) = (gc.onehot_grad.unwrap(), gg.onehot_grad.unwrap());
    assert_close("gcg onehot grad", &grad_g, &grad_c, 1e-4);

    // Top-k from the same gradient values: bit-identical ids.
    let (positions, k, cands) = (slot.len(), 8, 24);
    let forbidden = [0u32, 397, 398, 399];
    let topk_c = gcg::topk_onehot(&grad_c, positions, vocab, k, &forbidden).unwrap();
    let topk_g = be
        .topk_onehot(&be_upload(&be, &grad_c), positions, vocab, k, &forbidden)
        .unwrap();
    assert_eq!(topk_g, topk_c, "gcg top-k");

    let current = &ids[slot.clone()];
    let sc = gcg::sample_candidates(&topk_c, current, k, cands, 1234, 1).unwrap();
    let sg = be
        .sample_candidates(&topk_c, current, k, cands, 1234, 1)
        .unwrap();
    assert_eq!(sg, sc, "gcg candidates");

    // Score every candidate against the cached prefix.
    let cont_len = seq - p_len;
    let mut cont = Vec::with_capacity(cands * cont_len);
    for row in sc.tokens.chunks(positions) {
        cont.extend_from_slice(row);
        cont.extend_from_slice(&ids[slot.end..]);
    }
    let cont_batch = Batch {
        ids: cont,
        batch: cands,
        seq: cont_len,
        lens: vec![cont_len; cands],
    };
    let cont_mask: Vec<bool> = (0..cands).flat_map(|_| mask[p_len..].to_vec()).collect();
    let cont_obj = Objective::Target { mask: cont_mask };
    let lc = cpu
        .loss_with_prefix(
            &cpu.prefix_cache(&ids[..p_len]).unwrap(),
            &cont_batch,
            &cont_obj,
        )
        .unwrap();
    let lg = gpu
        .loss_with_prefix(
            &gpu.prefix_cache(&ids[..p_len]).unwrap(),
            &cont_batch,
            &cont_obj,
        )
        .unwrap();
    be.check().unwrap();
    assert_close("gcg candidate losses", &lg, &lc, 1e-4);

    let offsets: Vec<u32> = (0..=cands as u32).collect();
    let ones = vec![1.0f32; cands];
    let (_, best_c) = gcg::candidate_losses(&lc, &ones, &offsets);
    let (_, best_g) = be.candidate_losses(&lg, &ones, &offsets).unwrap();
    // Equal unless two candidates tie within float noise.
    assert!(
        best_g == best_c || (lc[best_g] - lc[best_c]).abs() <= 1e-5 * lc[best_c].abs().max(1.0),
        "gcg arg-min: gpu {best_g} ({}) vs cpu {best_c} ({})",
        lc[best_g],
        lc[best_c]
    );
}

fn be_upload<D: KernelDevice>(be: &GpuBackend<D>, x: &[f32]) -> armsrace::backend::gpu::GpuBuf<D> {
    use armsrace::backend::Backend;
    be.upload(x)
}

#[test]
fn gcg_candidate_step_matches_cpu() {
    gcg_step(EmuDevice::new());
    #[cfg(feature = "cuda")]
    match armsrace::backend::gpu::cuda::CudaDevice::new(0) {
        Ok(dev) => gcg_step(dev),
        Err(e) => {
            println!("SKIPPED: no CUDA device ({e}): GCG step checked on the CPU harness only")
        }
    }
    #[cfg(not(feature = "cuda"))]
    println!("SKIPPED: no CUDA device (built without feature `cuda`): GCG step checked on the CPU harness only");
}

//! AdamW against torch.optim.AdamW and Adafactor against transformers' Adafactor (the
//! study's settings), three steps each, from tests/fixtures/optimizers.safetensors.

mod common;

use armsrace::train::optim::{step, OptimizerKind, TensorState};
use common::*;

fn check(opt: &str, kind: OptimizerKind) {
    let r = read_reference(&fixture("optimizers.safetensors"));
    for (param, pieces, cols) in [("mat", vec![6usize], 5usize), ("vec", vec![7], 1)] {
        let mut p = f32s(&r, &format!("{opt}.{param}.step0")).to_vec();
        let mut st = TensorState::default();
        for k in 1..=3u64 {
            let g = f32s(&r, &format!("grad.{param}.step{k}"));
            step(kind, &mut st, &mut p, g, 1e-2, k, &pieces, cols);
            assert_close(
                &format!("{opt} {param} step {k}"),
                &p,
                f32s(&r, &format!("{opt}.{param}.step{k}")),
                1e-5,
            );
        }
    }
}

#[test]
fn adamw_matches_torch() {
    let kind = match OptimizerKind::adamw() {
        OptimizerKind::AdamW {
            beta1, beta2, eps, ..
        } => OptimizerKind::AdamW {
            beta1,
            beta2,
            eps,
            weight_decay: 0.01,
        },
        k => k,
    };
    check("adamw", kind);
}

#[test]
fn adafactor_matches_transformers() {
    check("adafactor", OptimizerKind::adafactor());
}

/// A fused tensor of two checkpoint pieces must update like the two pieces separately.
#[test]
fn adafactor_factors_each_piece() {
    let (rows, cols) = (4usize, 3usize);
    let p0: Vec<f32> = (0..2 * rows * cols)
        .map(|i| (i as f32 * 0.37).sin())
        .collect();
    let g: Vec<f32> = (0..2 * rows * cols)
        .map(|i| (i as f32 * 0.91).cos())
        .collect();
    let kind = OptimizerKind::adafactor();
    let mut fused = p0.clone();
    step(
        kind,
        &mut TensorState::default(),
        &mut fused,
        &g,
        1e-2,
        1,
        &[rows, rows],
        cols,
    );
    let half = rows * cols;
    for part in 0..2 {
        let mut p = p0[part * half..(part + 1) * half].to_vec();
        step(
            kind,
            &mut TensorState::default(),
            &mut p,
            &g[part * half..(part + 1) * half],
            1e-2,
            1,
            &[rows],
            cols,
        );
        assert_close("piece", &fused[part * half..(part + 1) * half], &p, 1e-7);
    }
}

//! GPU benchmarks behind `armsrace bench --device cuda` and scripts/gpu-check.sh: the three
//! hot workloads of crate::bench (forward, one-hot gradient, candidate scoring) at real model
//! shapes with random weights in bf16, plus attention forward alone at long context. Reports
//! tokens/s, executed TFLOP/s and MFU against the H100/H200 dense bf16 peak.
//!
//! Generic over the device so it compiles (and can be smoke-run) everywhere; numbers only
//! mean something on hardware, which `is_hardware` marks in the report.

use super::backend::{attn_fwd_default_tiles, AttnTiles, GpuBackend, Precision, ATTN_FWD_TILES};
use super::device::KernelDevice;
use crate::backend::{AttnShape, Backend};
use crate::bench::{self as cbench, BenchOptions};
use crate::error::Result;
use crate::model::Model;
use crate::presets;
use std::time::Instant;

/// Dense bf16 peak of an H100/H200 SXM (the 1,979 figure assumes 2:4 sparsity).
pub const PEAK_TFLOPS: f64 = 989.0;

/// Presets the GPU check runs.
pub const PRESETS: &[&str] = &["pythia-1.4b", "qwen2.5-1.5b"];

#[derive(Clone, Debug, serde::Serialize)]
pub struct GpuBenchRow {
    pub preset: String,
    pub workload: String,
    pub tokens: usize,
    pub median_s: f64,
    pub tokens_per_s: f64,
    pub executed_tflops: f64,
    pub nominal_tflops: f64,
    /// executed TFLOP/s / PEAK_TFLOPS.
    pub mfu: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct GpuBenchReport {
    pub device: String,
    pub hardware: bool,
    pub peak_tflops: f64,
    pub rows: Vec<GpuBenchRow>,
}

/// The GCG shapes: 512 candidates x 64 tokens after a 256-token shared prefix; the gradient
/// pass runs the full 320-token prompt with a 20-token attack slot.
pub fn gcg_options(iters: usize) -> BenchOptions {
    BenchOptions {
        batch: 1,
        seq: 320,
        prefix: 256,
        candidates: 512,
        candidate_seq: 64,
        attack_tokens: 20,
        iters,
        seed: 0,
    }
}

/// Attention forward alone on `shape` (causal; every query also sees `shape.prefix` cached
/// keys). Returns (median seconds, executed TFLOP/s).
pub fn attention_tflops<D: KernelDevice>(
    be: &GpuBackend<D>,
    shape: AttnShape,
    iters: usize,
) -> Result<(f64, f64)> {
    let (rows, width) = (shape.batch * shape.seq, shape.qkv_dim());
    let pseudo = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 2_654_435_761usize) % 1000) as f32 / 1000.0 - 0.5)
            .collect()
    };
    let qkv = be.try_upload(&pseudo(rows * width))?;
    let prefix = be.try_upload(&pseudo(shape.prefix.max(1) * width))?;
    let mut out = be.zeros(rows * shape.heads * shape.head_dim);
    let mut lse = be.zeros(rows * shape.heads);
    let lens = vec![shape.seq; shape.batch];
    let pre = (shape.prefix > 0).then_some(&prefix);
    let mut times = Vec::new();
    for i in 0..=iters.max(1) {
        let t = Instant::now();
        be.attention(&mut out, &mut lse, &qkv, pre, &lens, shape);
        be.check()?;
        if i > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let secs = times[times.len() / 2];
    // QK^T and PV over the visible (query, key) pairs: 4 * head_dim flops each per head.
    let (s, p) = (shape.seq as f64, shape.prefix as f64);
    let pairs = shape.batch as f64 * (s * p + s * (s + 1.0) / 2.0);
    let flops = 4.0 * (shape.head_dim * shape.heads) as f64 * pairs;
    Ok((secs, flops / secs / 1e12))
}

/// Training-step shape: the study's batch of 8, 256 tokens each.
pub const TRAIN_BATCH: usize = 8;
pub const TRAIN_SEQ: usize = 256;

/// Runs every workload at every preset on `dev` in bf16; with `train`, also one training
/// step (forward, full backward, optimizer update of f32 master weights) per preset.
pub fn run<D: KernelDevice>(
    dev: D,
    presets_to_run: &[&str],
    iters: usize,
    train: Option<crate::train::optim::OptimizerKind>,
) -> Result<GpuBenchReport> {
    let device = dev.name();
    let hardware = dev.is_hardware();
    let be = GpuBackend::new(dev, Precision::Bf16);
    let mut rows = Vec::new();
    // Attention alone at 4k context and at the candidate-scoring shape, on tensor cores
    // (every tile shape built for head_dim 128) and, as the reference in the same run, on
    // CUDA cores. Short kernels: more repetitions than the model workloads.
    let shapes = [
        ("attention 4k x 16 heads x 128", 1, 4096, 0),
        ("attention 512 x 64 after 256, 16 heads x 128", 512, 64, 256),
    ];
    let mut variants: Vec<(String, GpuBackend<D>)> = ATTN_FWD_TILES
        .iter()
        .filter(|(d, _)| *d == 128)
        .map(|&(_, t)| {
            let default = if t == attn_fwd_default_tiles(128) {
                ", default"
            } else {
                ""
            };
            (
                format!("{}{default}", tiles_label(t)),
                be.clone().with_attention_tiles(t),
            )
        })
        .collect();
    variants.push(("cuda-cores".into(), be.clone().with_tensor_cores(false)));
    for (preset, batch, seq, prefix) in shapes {
        let shape = AttnShape {
            batch,
            seq,
            heads: 16,
            kv_heads: 16,
            head_dim: 128,
            prefix,
        };
        for (label, vbe) in &variants {
            let (secs, tflops) = attention_tflops(vbe, shape, iters.max(10))?;
            let tokens = batch * seq;
            rows.push(GpuBenchRow {
                preset: preset.into(),
                workload: format!("attention-forward [{label}]"),
                tokens,
                median_s: secs,
                tokens_per_s: tokens as f64 / secs,
                executed_tflops: tflops,
                nominal_tflops: tflops,
                mfu: tflops / PEAK_TFLOPS,
            });
        }
        be.trim();
    }
    let opts = gcg_options(iters);
    for &name in presets_to_run {
        let cfg = presets::config(name, Some(2))?;
        let hd = cfg.head_dim;
        let mut model = Model::random(cfg, 0, 0.02, be.clone());
        be.check()?;
        // The model workloads with the default attention tiles, then with each other tile
        // shape built for this head_dim (same weights: only the backend handle changes).
        let extra = ATTN_FWD_TILES
            .iter()
            .filter(|&&(d, t)| d == hd && t != attn_fwd_default_tiles(hd));
        for tiles in std::iter::once(None).chain(extra.map(|(_, t)| Some(*t))) {
            model.backend = tiles.map_or(be.clone(), |t| be.clone().with_attention_tiles(t));
            let label = tiles.map_or(String::new(), |t| format!(" [{}]", tiles_label(t)));
            for r in cbench::run(&model, &opts)? {
                rows.push(row(name, format!("{}{label}", r.workload), &r));
            }
        }
        model.backend.check()?;
        drop(model);
        be.trim();
        if let Some(opt) = train {
            let cfg = presets::config(name, Some(2))?;
            let model = Model::random(cfg, 0, 0.02, be.clone());
            let o = BenchOptions {
                batch: TRAIN_BATCH,
                seq: TRAIN_SEQ,
                ..opts.clone()
            };
            let r = cbench::run_train(model, opt, &o)?;
            let label = format!(
                "{} ({TRAIN_BATCH} x {TRAIN_SEQ}, bf16 + f32 master)",
                r.workload
            );
            rows.push(row(name, label, &r));
            be.trim();
        }
    }
    Ok(GpuBenchReport {
        device,
        hardware,
        peak_tflops: PEAK_TFLOPS,
        rows,
    })
}

/// A model workload's row: TFLOP/s and MFU from the CPU bench's GFLOP/s.
fn row(preset: &str, workload: String, r: &cbench::BenchResult) -> GpuBenchRow {
    let exec = r.executed_gflops / 1e3;
    GpuBenchRow {
        preset: preset.into(),
        workload,
        tokens: r.tokens,
        median_s: r.median_s,
        tokens_per_s: r.tokens_per_s,
        executed_tflops: exec,
        nominal_tflops: r.nominal_gflops / 1e3,
        mfu: exec / PEAK_TFLOPS,
    }
}

/// "m{row tiles} k{keys}": a tensor-core attention tile shape in a row label.
fn tiles_label(t: AttnTiles) -> String {
    format!("m{} k{}", t.row_tiles, t.keys)
}

/// `armsrace bench --device cuda`: the report on GPU 0, or an `Err` without one.
#[cfg(feature = "cuda")]
pub fn run_cuda(
    presets_to_run: &[&str],
    iters: usize,
    train: Option<crate::train::optim::OptimizerKind>,
) -> Result<GpuBenchReport> {
    run(
        super::cuda::CudaDevice::new(0)?,
        presets_to_run,
        iters,
        train,
    )
}

//! GPU benchmarks behind `armsrace bench --device cuda` and scripts/gpu-check.sh: the three
//! hot workloads of crate::bench (forward, one-hot gradient, candidate scoring) at real model
//! shapes with random weights in bf16, plus attention forward alone at long context. Reports
//! tokens/s, executed TFLOP/s and MFU against the H100/H200 dense bf16 peak.
//!
//! Generic over the device so it compiles (and can be smoke-run) everywhere; numbers only
//! mean something on hardware, which `is_hardware` marks in the report.

use super::backend::{GpuBackend, Precision};
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

/// Attention forward alone: one sequence of `seq` tokens, `heads` x `head_dim`, causal.
/// Returns (median seconds, executed TFLOP/s).
pub fn attention_tflops<D: KernelDevice>(
    be: &GpuBackend<D>,
    seq: usize,
    heads: usize,
    head_dim: usize,
    iters: usize,
) -> Result<(f64, f64)> {
    let shape = AttnShape {
        batch: 1,
        seq,
        heads,
        kv_heads: heads,
        head_dim,
        prefix: 0,
    };
    let qkv_host: Vec<f32> = (0..seq * shape.qkv_dim())
        .map(|i| ((i * 2_654_435_761usize) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let qkv = be.try_upload(&qkv_host)?;
    let mut out = be.zeros(seq * heads * head_dim);
    let mut lse = be.zeros(seq * heads);
    let mut times = Vec::new();
    for i in 0..=iters.max(1) {
        let t = Instant::now();
        be.attention(&mut out, &mut lse, &qkv, None, &[seq], shape);
        be.check()?;
        if i > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let secs = times[times.len() / 2];
    // QK^T and PV over the causal triangle: 4 * head_dim flops per (query, key) pair per head.
    let pairs = (seq * (seq + 1) / 2) as f64;
    let flops = 4.0 * head_dim as f64 * heads as f64 * pairs;
    Ok((secs, flops / secs / 1e12))
}

/// Runs every workload at every preset on `dev` in bf16.
pub fn run<D: KernelDevice>(
    dev: D,
    presets_to_run: &[&str],
    iters: usize,
) -> Result<GpuBenchReport> {
    let device = dev.name();
    let hardware = dev.is_hardware();
    let be = GpuBackend::new(dev, Precision::Bf16);
    let mut rows = Vec::new();
    // Attention alone, on tensor cores and (the reference in the same run) on CUDA cores.
    // Short kernels: more repetitions than the model workloads.
    for (workload, tensor_cores) in [
        ("attention-forward", true),
        ("attention-forward-cuda-cores", false),
    ] {
        let attn_be = be.clone().with_tensor_cores(tensor_cores);
        let (secs, tflops) = attention_tflops(&attn_be, 4096, 16, 128, iters.max(10))?;
        rows.push(GpuBenchRow {
            preset: "attention 4k x 16 heads x 128".into(),
            workload: workload.into(),
            tokens: 4096,
            median_s: secs,
            tokens_per_s: 4096.0 / secs,
            executed_tflops: tflops,
            nominal_tflops: tflops,
            mfu: tflops / PEAK_TFLOPS,
        });
    }
    let opts = gcg_options(iters);
    for &name in presets_to_run {
        let cfg = presets::config(name, Some(2))?;
        let model = Model::random(cfg, 0, 0.02, be.clone());
        be.check()?;
        for r in cbench::run(&model, &opts)? {
            let exec = r.executed_gflops / 1e3;
            rows.push(GpuBenchRow {
                preset: name.into(),
                workload: r.workload,
                tokens: r.tokens,
                median_s: r.median_s,
                tokens_per_s: r.tokens_per_s,
                executed_tflops: exec,
                nominal_tflops: r.nominal_gflops / 1e3,
                mfu: exec / PEAK_TFLOPS,
            });
        }
        model.backend.check()?;
        drop(model);
        be.trim();
    }
    Ok(GpuBenchReport {
        device,
        hardware,
        peak_tflops: PEAK_TFLOPS,
        rows,
    })
}

/// `armsrace bench --device cuda`: the report on GPU 0, or an `Err` without one.
#[cfg(feature = "cuda")]
pub fn run_cuda(presets_to_run: &[&str], iters: usize) -> Result<GpuBenchReport> {
    run(super::cuda::CudaDevice::new(0)?, presets_to_run, iters)
}

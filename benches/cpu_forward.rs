//! CPU forward throughput at the pythia-70m shape (64 sequences x 64 tokens) beside the GEMM
//! crate's own fp32 2048^3 throughput measured in the same run: the ratio says how much of
//! the machine's GEMM speed the whole forward keeps. Criterion reports "elements" = FLOPs,
//! so its `thrpt` column reads directly as FLOP/s.
//!
//!     cargo bench --bench cpu_forward

use armsrace::backend::cpu::gemm::sgemm;
use armsrace::bench::BenchOptions;
use armsrace::{flops, presets, Batch, Cpu, Model};
use criterion::{criterion_group, Criterion, Throughput};
use std::time::Instant;

const GEMM_N: usize = 2048;

fn gemm_2048(a: &[f32], b: &[f32], c: &mut [f32]) {
    sgemm(
        GEMM_N, GEMM_N, GEMM_N, c, GEMM_N, false, a, GEMM_N, 1, b, GEMM_N, 1,
    );
}

fn setup() -> (Model<Cpu>, Batch, f64) {
    let cfg = presets::config("pythia-70m", Some(2)).unwrap();
    let model = Model::random(cfg, 0, 0.02, Cpu);
    let o = BenchOptions::default();
    let ids = (0..o.batch * o.seq)
        .map(|i| (i * 7919 % 50000 + 2) as u32)
        .collect();
    let batch = Batch {
        ids,
        batch: o.batch,
        seq: o.seq,
        lens: vec![o.seq; o.batch],
    };
    let fl = flops::executed_forward(&model.cfg, o.batch, o.seq, 0, o.batch);
    (model, batch, fl)
}

fn median_gflops(fl: f64, iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..iters)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    fl / t[iters / 2] / 1e9
}

fn benches(c: &mut Criterion) {
    let a = vec![1.0f32; GEMM_N * GEMM_N];
    let b = vec![0.5f32; GEMM_N * GEMM_N];
    let mut out = vec![0.0f32; GEMM_N * GEMM_N];
    let gemm_flops = 2.0 * (GEMM_N as f64).powi(3);
    let (model, batch, fwd_flops) = setup();

    let mut g = c.benchmark_group("cpu");
    g.sample_size(10);
    g.throughput(Throughput::Elements(gemm_flops as u64));
    g.bench_function("gemm_f32_2048", |bch| {
        bch.iter(|| gemm_2048(&a, &b, &mut out))
    });
    g.throughput(Throughput::Elements(fwd_flops as u64));
    g.bench_function("forward_pythia70m_64x64", |bch| {
        bch.iter(|| model.logits(&batch).unwrap())
    });
    g.finish();

    // One summary line with both figures from the same run.
    let gemm = median_gflops(gemm_flops, 7, || gemm_2048(&a, &b, &mut out));
    let fwd = median_gflops(fwd_flops, 7, || {
        model.logits(&batch).unwrap();
    });
    println!(
        "\nSUMMARY gemm 2048^3: {gemm:.1} GFLOP/s | forward pythia-70m 64x64: {fwd:.1} GFLOP/s executed | ratio {:.0}%",
        100.0 * fwd / gemm
    );
}

criterion_group!(cpu, benches);

fn main() {
    cpu();
    Criterion::default().configure_from_args().final_summary();
}

//! `armsrace bench`: throughput of the three hot workloads on random weights at a preset's
//! real shapes, on any backend. Reports tokens/s and GFLOP/s, nominal (the study's
//! convention) and executed (what ran).

use crate::backend::Backend;
use crate::error::Result;
use crate::flops;
use crate::model::batch::Batch;
use crate::model::{GradRequest, Model, Objective};
use rand::{Rng, SeedableRng};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub batch: usize,
    pub seq: usize,
    /// Shared prefix length for candidate scoring.
    pub prefix: usize,
    pub candidates: usize,
    /// Tokens per candidate after the prefix (attack slot + rest of the prompt).
    pub candidate_seq: usize,
    /// Positions whose one-hot gradient is taken (the attack slot).
    pub attack_tokens: usize,
    pub iters: usize,
    pub seed: u64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            batch: 64,
            seq: 64,
            prefix: 64,
            candidates: 128,
            candidate_seq: 32,
            attack_tokens: 10,
            iters: 5,
            seed: 0,
        }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchResult {
    pub workload: String,
    pub tokens: usize,
    pub median_s: f64,
    pub tokens_per_s: f64,
    pub nominal_gflops: f64,
    pub executed_gflops: f64,
}

fn random_batch(vocab: usize, batch: usize, seq: usize, rng: &mut impl Rng) -> Batch {
    // Skip the first ids (special tokens in real vocabularies).
    let ids = (0..batch * seq)
        .map(|_| rng.random_range(2..vocab as u32))
        .collect();
    Batch {
        ids,
        batch,
        seq,
        lens: vec![seq; batch],
    }
}

fn median_secs(iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?; // warm-up: page in weights, size allocations
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[times.len() / 2])
}

fn result(workload: &str, tokens: usize, secs: f64, nominal: f64, executed: f64) -> BenchResult {
    BenchResult {
        workload: workload.into(),
        tokens,
        median_s: secs,
        tokens_per_s: tokens as f64 / secs,
        nominal_gflops: nominal / secs / 1e9,
        executed_gflops: executed / secs / 1e9,
    }
}

/// Runs forward, one-hot gradient and candidate scoring on a classifier model.
pub fn run<B: Backend>(model: &Model<B>, o: &BenchOptions) -> Result<Vec<BenchResult>> {
    let cfg = &model.cfg;
    let n = model.param_count();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(o.seed);
    let labels = |b: usize| Objective::Classify { labels: vec![0; b] };
    let mut out = Vec::new();

    let fwd = random_batch(cfg.vocab, o.batch, o.seq, &mut rng);
    let t = median_secs(o.iters, || model.logits(&fwd).map(|_| ()))?;
    let tokens = o.batch * o.seq;
    out.push(result(
        "forward",
        tokens,
        t,
        flops::nominal_forward(n, tokens),
        flops::executed_forward(cfg, o.batch, o.seq, 0, o.batch),
    ));

    // One-hot gradient at the attack slot (the last `attack_tokens` positions before the end).
    let rows: Vec<usize> = (0..o.batch)
        .flat_map(|b| (0..o.attack_tokens.min(o.seq)).map(move |i| b * o.seq + o.seq - 1 - i))
        .collect();
    let req = GradRequest {
        onehot_rows: Some(rows.clone()),
        weights: false,
    };
    let obj = labels(o.batch);
    let t = median_secs(o.iters, || {
        model.loss_and_grads(&fwd, &obj, &req).map(|_| ())
    })?;
    out.push(result(
        "onehot-grad",
        tokens,
        t,
        flops::nominal_forward(n, tokens) + flops::nominal_backward(n, tokens),
        flops::executed_forward(cfg, o.batch, o.seq, 0, o.batch)
            + flops::executed_backward(cfg, o.batch, o.seq, o.batch, false, rows.len()),
    ));

    // Candidate scoring: one shared prefix, many short continuations.
    let prefix: Vec<u32> = (0..o.prefix)
        .map(|_| rng.random_range(2..cfg.vocab as u32))
        .collect();
    let cands = random_batch(cfg.vocab, o.candidates, o.candidate_seq, &mut rng);
    let obj = labels(o.candidates);
    let t = median_secs(o.iters, || {
        let cache = model.prefix_cache(&prefix)?;
        model.loss_with_prefix(&cache, &cands, &obj).map(|_| ())
    })?;
    // Nominal counts every token of every candidate, prefix included (the study's convention).
    let nominal_tokens = o.candidates * (o.prefix + o.candidate_seq);
    out.push(result(
        "candidate-scoring",
        nominal_tokens,
        t,
        flops::nominal_forward(n, nominal_tokens),
        flops::executed_forward(cfg, 1, o.prefix, 0, 0)
            + flops::executed_forward(cfg, o.candidates, o.candidate_seq, o.prefix, o.candidates),
    ));
    Ok(out)
}

/// One optimizer step of classifier training (forward, backward to every weight, optimizer
/// update) on `batch` random sequences of `seq` tokens with random labels. Nominal FLOPs
/// follow the study's 6 N per token; executed counts the GEMMs and attention that ran.
pub fn run_train<B: crate::backend::Backend>(
    model: crate::Model<B>,
    optimizer: crate::train::optim::OptimizerKind,
    o: &BenchOptions,
) -> Result<BenchResult> {
    use crate::train::{LabeledIds, TrainConfig, Trainer};
    let cfg = model.cfg.clone();
    let n = model.param_count();
    let labels = cfg.num_labels().unwrap_or(2) as u32;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(o.seed);
    let data: Vec<LabeledIds> = (0..o.batch)
        .map(|_| LabeledIds {
            ids: (0..o.seq)
                .map(|_| rng.random_range(2..cfg.vocab as u32))
                .collect(),
            label: rng.random_range(0..labels),
        })
        .collect();
    let tcfg = TrainConfig {
        lr: 1e-4,
        optimizer,
        batch_size: o.batch,
        batch_tokens: o.batch * o.seq,
        ..Default::default()
    };
    let mut trainer = Trainer::new(model, tcfg);
    let micro = vec![(0..o.batch).collect::<Vec<_>>()];
    // A long nominal schedule keeps the learning rate constant over the timed steps.
    let t = median_secs(o.iters, || trainer.step(&data, &micro, 1 << 40).map(|_| ()))?;
    let tokens = o.batch * o.seq;
    Ok(result(
        "train-step",
        tokens,
        t,
        flops::nominal_train(n, tokens),
        flops::executed_forward(&cfg, o.batch, o.seq, 0, o.batch)
            + flops::executed_backward(&cfg, o.batch, o.seq, o.batch, true, 0),
    ))
}

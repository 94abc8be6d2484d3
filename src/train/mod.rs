//! Classifier training through the Backend's full backward: batches by token budget,
//! gradient accumulation, a learning-rate schedule, AdamW or Adafactor, validation accuracy,
//! and a resumable state. Deterministic for a seed.

pub mod adversarial;
pub mod augment;
pub mod bpe;
pub mod checkpoint;
pub mod job;
pub mod optim;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::batch::Batch;
use crate::model::weights::{param_specs, ParamSpec, Weights};
use crate::model::{Model, Objective};
use optim::{OptState, OptimizerKind, TensorState};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub lr: f32,
    /// Fraction of all optimizer steps spent warming up linearly; then linear decay to 0.
    pub warmup_frac: f32,
    /// Decay the learning rate linearly to zero after warm-up (false: constant).
    pub decay: bool,
    pub optimizer: OptimizerKind,
    /// Padded tokens per micro-batch (batch x longest sequence).
    pub batch_tokens: usize,
    /// Examples per micro-batch at most.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 3,
            lr: 1e-5,
            warmup_frac: 0.0,
            decay: true,
            optimizer: OptimizerKind::adafactor(),
            batch_tokens: 4096,
            batch_size: 8,
            grad_accum: 1,
            seed: 0,
        }
    }
}

impl TrainConfig {
    /// An error naming the flag for settings that cannot train (a zero batch or
    /// accumulation, no epochs, a learning rate that is not a positive number).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::input(m));
        if !self.lr.is_finite() || self.lr <= 0.0 {
            return bad(format!("--lr must be a positive number, got {}", self.lr));
        }
        for (flag, v) in [
            ("--epochs", self.epochs),
            ("--batch-size", self.batch_size),
            ("--batch-tokens", self.batch_tokens),
            ("--grad-accum", self.grad_accum),
        ] {
            if v == 0 {
                return bad(format!("{flag} must be at least 1"));
            }
        }
        if !(0.0..1.0).contains(&self.warmup_frac) {
            return bad(format!(
                "--warmup must be in [0, 1), got {}",
                self.warmup_frac
            ));
        }
        Ok(())
    }
}

/// A tokenized, labelled training example.
#[derive(Clone, Debug)]
pub struct LabeledIds {
    pub ids: Vec<u32>,
    pub label: u32,
}

/// Where training stands; saved with each checkpoint so a killed run resumes exactly.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Progress {
    pub epoch: usize,
    /// Micro-batches of this epoch already applied.
    pub batch_in_epoch: usize,
    pub step: u64,
    pub tokens_seen: u64,
    pub nominal_flops: f64,
    /// FLOPs the steps executed (GEMMs and attention, forward and full backward).
    #[serde(default)]
    pub executed_flops: f64,
    pub last_loss: f32,
    pub val_accuracy: Vec<f32>,
}

/// A training run's model and optimizer on one backend. Weights, gradients and optimizer
/// state live on the backend's device: a step uploads token ids and downloads the losses,
/// nothing else. When the backend stores tensors below f32 (bf16 on a GPU), the optimizer
/// updates f32 master weights and the model's weights are their rounded copies, so steps
/// smaller than bf16's resolution (lr 1e-5) still accumulate.
pub struct Trainer<B: Backend> {
    pub model: Model<B>,
    pub cfg: TrainConfig,
    pub specs: Vec<ParamSpec>,
    state: Vec<OptState<B::Buf>>,
    /// f32 master weights (only when the backend does not store f32).
    master: Option<Weights<B::Buf>>,
    /// Gradient accumulators, zeroed at the start of every step.
    grads: Weights<B::Buf>,
    pub progress: Progress,
    pad: u32,
}

/// What one optimizer step did.
#[derive(Clone, Debug, PartialEq)]
pub struct StepOut {
    /// Mean loss over the step's examples.
    pub loss: f32,
    /// Each example's loss, in the order of the micro-batches' indices.
    pub per_example: Vec<f32>,
}

/// Shuffles (seeded by epoch) and packs examples into micro-batches under the token budget.
pub fn epoch_batches(data: &[LabeledIds], cfg: &TrainConfig, epoch: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..data.len()).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
        cfg.seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64),
    );
    order.shuffle(&mut rng);
    let mut batches = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    let mut longest = 0;
    for i in order {
        let l = data[i].ids.len().max(longest);
        if !cur.is_empty()
            && (cur.len() >= cfg.batch_size || l * (cur.len() + 1) > cfg.batch_tokens)
        {
            batches.push(std::mem::take(&mut cur));
            longest = 0;
        }
        longest = longest.max(data[i].ids.len());
        cur.push(i);
    }
    if !cur.is_empty() {
        batches.push(cur);
    }
    batches
}

impl<B: Backend> Trainer<B> {
    /// A trainer for `model`; with a lower-precision backend the master weights start from
    /// the model's (already rounded) weights: use [`Trainer::from_host`] to keep a
    /// checkpoint's f32 values.
    pub fn new(model: Model<B>, cfg: TrainConfig) -> Self {
        let master = (!model.backend.stores_f32()).then(|| model.download_weights());
        Self::build(model, master, cfg)
    }

    /// A trainer for f32 weights `w` at `model_cfg`, loaded onto `backend` (exact master
    /// weights on a lower-precision backend).
    pub fn from_host(
        model_cfg: crate::model::config::ModelConfig,
        w: &Weights<Vec<f32>>,
        backend: B,
        cfg: TrainConfig,
    ) -> Self {
        let master = (!backend.stores_f32()).then(|| w.clone());
        let model = Model::from_host_weights(model_cfg, w, backend);
        Self::build(model, master, cfg)
    }

    fn build(model: Model<B>, master: Option<Weights<Vec<f32>>>, cfg: TrainConfig) -> Self {
        let specs = param_specs(&model.cfg);
        let be = &model.backend;
        let master = master.map(|w| w.map(&model.cfg, |_, v| be.upload_f32(v)));
        let grads = model.zero_grads();
        let state = specs
            .iter()
            .map(|s| OptState::zeros(be, cfg.optimizer, &piece_rows(s), s.cols))
            .collect();
        let pad = model.cfg.pad_token_id.unwrap_or(0);
        Trainer {
            model,
            cfg,
            specs,
            state,
            master,
            grads,
            progress: Progress::default(),
            pad,
        }
    }

    pub fn total_steps(&self, n_batches_per_epoch: usize) -> u64 {
        (n_batches_per_epoch.div_ceil(self.cfg.grad_accum) * self.cfg.epochs) as u64
    }

    fn lr_at(&self, step: u64, total: u64) -> f32 {
        let warm = (self.cfg.warmup_frac * total as f32).round() as u64;
        if step < warm {
            return self.cfg.lr * (step + 1) as f32 / warm as f32;
        }
        if !self.cfg.decay || total <= warm {
            return self.cfg.lr;
        }
        self.cfg.lr * (total - step) as f32 / (total - warm) as f32
    }

    fn batch_of(&self, data: &[LabeledIds], idx: &[usize]) -> Result<(Batch, Vec<u32>)> {
        let seqs: Vec<Vec<u32>> = idx.iter().map(|&i| data[i].ids.clone()).collect();
        let labels = idx.iter().map(|&i| data[i].label).collect();
        Ok((Batch::from_sequences(&seqs, self.pad)?, labels))
    }

    /// Runs one optimizer step over `micro` micro-batches (indices into `data`): the mean
    /// loss over their examples is what the gradient is of.
    pub fn step(
        &mut self,
        data: &[LabeledIds],
        micro: &[Vec<usize>],
        total_steps: u64,
    ) -> Result<StepOut> {
        let batches = micro
            .iter()
            .map(|idx| {
                let (batch, labels) = self.batch_of(data, idx)?;
                Ok((batch, Objective::Classify { labels }))
            })
            .collect::<Result<Vec<_>>>()?;
        self.step_batches(&batches, total_steps)
    }

    /// One optimizer step over micro-batches with their objectives (a classifier's labels,
    /// or a causal LM's next-token targets): the gradient is of the mean loss over all their
    /// sequences.
    pub fn step_batches(
        &mut self,
        micro: &[(Batch, Objective)],
        total_steps: u64,
    ) -> Result<StepOut> {
        let n_examples: usize = micro.iter().map(|(b, _)| b.batch).sum();
        if n_examples == 0 {
            return Err(Error::input("optimizer step with no examples"));
        }
        let be = &self.model.backend;
        for spec in &self.specs {
            be.fill_zero(self.grads.slot_mut(spec.slot).expect("own spec"));
        }
        // Mean loss over the step's examples: the loss gradient is scaled at its source.
        let inv = 1.0 / n_examples as f32;
        let mut per_example = Vec::with_capacity(n_examples);
        for (batch, objective) in micro {
            let losses = self
                .model
                .accumulate_grads(batch, objective, inv, &mut self.grads)?;
            per_example.extend_from_slice(&losses);
            self.progress.tokens_seen += batch.rows() as u64;
            self.progress.nominal_flops +=
                crate::flops::nominal_train(self.model.param_count(), batch.rows());
            let (cfg, b, seq) = (&self.model.cfg, batch.batch, batch.seq);
            let head_rows = match objective {
                Objective::Classify { .. } => b,
                Objective::Target { mask } => mask.iter().filter(|&&m| m).count(),
            };
            self.progress.executed_flops +=
                crate::flops::executed_forward(cfg, b, seq, 0, head_rows)
                    + crate::flops::executed_backward(cfg, b, seq, head_rows, true, 0);
        }
        self.progress.step += 1;
        let (t, lr) = (
            self.progress.step as u32,
            self.lr_at(self.progress.step - 1, total_steps),
        );
        let kind = self.cfg.optimizer;
        let (be, weights) = self.model.backend_and_weights_mut();
        for (i, spec) in self.specs.iter().enumerate() {
            let g = self.grads.slot(spec.slot).expect("own spec");
            let w = weights.slot_mut(spec.slot).expect("own spec");
            let (st, rows) = (&mut self.state[i], piece_rows(spec));
            match self.master.as_mut() {
                Some(m) => {
                    let p = m.slot_mut(spec.slot).expect("own spec");
                    st.step(be, kind, p, g, lr, t, &rows, spec.cols);
                    be.cast_from_f32(w, p);
                }
                None => st.step(be, kind, w, g, lr, t, &rows, spec.cols),
            }
        }
        self.model.backend.check()?;
        let loss = (per_example.iter().map(|&l| l as f64).sum::<f64>() / n_examples as f64) as f32;
        self.progress.last_loss = loss;
        Ok(StepOut { loss, per_example })
    }

    /// The gradients the last step applied (the mean over its examples), as host tensors.
    pub fn last_grads(&self) -> Weights<Vec<f32>> {
        let be = &self.model.backend;
        self.grads.map(&self.model.cfg, |_, b| be.download(b))
    }

    /// The weights as f32 host tensors: the master weights where they exist (what a
    /// checkpoint saves, so a resume continues exactly).
    pub fn host_weights(&self) -> Weights<Vec<f32>> {
        let be = &self.model.backend;
        match &self.master {
            Some(m) => m.map(&self.model.cfg, |_, b| be.download(b)),
            None => self.model.download_weights(),
        }
    }

    /// The optimizer state as host tensors (for checkpoints).
    pub fn host_state(&self) -> Vec<TensorState> {
        let be = &self.model.backend;
        self.state.iter().map(|st| st.to_host(be)).collect()
    }

    /// Restores optimizer state saved by [`Trainer::host_state`] (empty tensors: zeros).
    pub fn set_host_state(&mut self, host: &[TensorState]) -> Result<()> {
        if host.len() != self.specs.len() {
            return Err(Error::input(format!(
                "optimizer state has {} tensors, the model {}",
                host.len(),
                self.specs.len()
            )));
        }
        let (be, kind) = (&self.model.backend, self.cfg.optimizer);
        for ((st, h), spec) in self.state.iter_mut().zip(host).zip(&self.specs) {
            *st = OptState::from_host(be, kind, h, &piece_rows(spec), spec.cols)
                .map_err(|e| Error::input(format!("{}: {e}", spec.pieces[0].0)))?;
        }
        Ok(())
    }
}

/// A parameter's checkpoint pieces (row counts), as its optimizer state is laid out.
fn piece_rows(spec: &ParamSpec) -> Vec<usize> {
    spec.pieces.iter().map(|p| p.1).collect()
}

/// Accuracy of a classifier on labelled examples (batched by the same token budget).
pub fn accuracy<B: Backend>(
    model: &Model<B>,
    data: &[LabeledIds],
    batch_tokens: usize,
) -> Result<f32> {
    let n_labels = model
        .cfg
        .num_labels()
        .ok_or_else(|| Error::input("accuracy needs a classifier"))?;
    let pad = model.cfg.pad_token_id.unwrap_or(0);
    let mut correct = 0usize;
    let mut order: Vec<usize> = (0..data.len()).collect();
    order.sort_by_key(|&i| data[i].ids.len());
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && data[order[end]].ids.len() * (end + 1 - start) <= batch_tokens {
            end += 1;
        }
        let seqs: Vec<Vec<u32>> = order[start..end]
            .iter()
            .map(|&i| data[i].ids.clone())
            .collect();
        let logits = model.logits(&Batch::from_sequences(&seqs, pad)?)?;
        for (j, &i) in order[start..end].iter().enumerate() {
            let row = &logits[j * n_labels..(j + 1) * n_labels];
            let pred = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(k, _)| k)
                .unwrap();
            correct += (pred as u32 == data[i].label) as usize;
        }
        start = end;
    }
    Ok(correct as f32 / data.len().max(1) as f32)
}

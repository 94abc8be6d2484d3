//! Classifier training through the Backend's full backward: batches by token budget,
//! gradient accumulation, a learning-rate schedule, AdamW or Adafactor, validation accuracy,
//! and a resumable state. Deterministic for a seed.

pub mod augment;
pub mod bpe;
pub mod checkpoint;
pub mod job;
pub mod optim;

use crate::backend::cpu::Cpu;
use crate::error::{Error, Result};
use crate::model::batch::Batch;
use crate::model::weights::{param_specs, ParamSpec};
use crate::model::{GradRequest, Model, Objective};
use optim::{OptimizerKind, TensorState};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
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
    pub last_loss: f32,
    pub val_accuracy: Vec<f32>,
}

pub struct Trainer {
    pub model: Model<Cpu>,
    pub cfg: TrainConfig,
    pub specs: Vec<ParamSpec>,
    pub state: Vec<TensorState>,
    pub progress: Progress,
    pad: u32,
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

impl Trainer {
    pub fn new(model: Model<Cpu>, cfg: TrainConfig) -> Self {
        let specs = param_specs(&model.cfg);
        let state = vec![TensorState::default(); specs.len()];
        let pad = model.cfg.pad_token_id.unwrap_or(0);
        Trainer {
            model,
            cfg,
            specs,
            state,
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

    /// Runs one optimizer step over `micro` micro-batches; returns the mean loss.
    pub fn step(
        &mut self,
        data: &[LabeledIds],
        micro: &[Vec<usize>],
        total_steps: u64,
    ) -> Result<f32> {
        let n_examples: usize = micro.iter().map(Vec::len).sum();
        let mut acc: Option<Vec<Vec<f32>>> = None;
        let mut loss_sum = 0.0f64;
        let req = GradRequest {
            onehot_rows: None,
            weights: true,
        };
        for idx in micro {
            let (batch, labels) = self.batch_of(data, idx)?;
            let out = self
                .model
                .loss_and_grads(&batch, &Objective::Classify { labels }, &req)?;
            loss_sum += out.loss_per_seq.iter().map(|&l| l as f64).sum::<f64>();
            self.progress.tokens_seen += batch.rows() as u64;
            self.progress.nominal_flops +=
                crate::flops::nominal_train(self.model.param_count(), batch.rows());
            let g = out.weight_grads.expect("weight grads requested");
            let flat: Vec<Vec<f32>> = self
                .specs
                .iter()
                .map(|s| g.slot(s.slot).unwrap().clone())
                .collect();
            acc = Some(match acc {
                None => flat,
                Some(mut a) => {
                    for (x, y) in a.iter_mut().zip(&flat) {
                        crate::backend::cpu::norm::add_into(x, y);
                    }
                    a
                }
            });
        }
        let grads = acc.ok_or_else(|| Error::input("optimizer step with no examples"))?;
        self.progress.step += 1;
        let (t, lr) = (
            self.progress.step,
            self.lr_at(self.progress.step - 1, total_steps),
        );
        // Mean loss over the examples of the step: scale the summed gradients.
        let inv = 1.0 / n_examples as f32;
        let kind = self.cfg.optimizer;
        for (i, spec) in self.specs.iter().enumerate() {
            let g: Vec<f32> = grads[i].iter().map(|&x| x * inv).collect();
            let rows: Vec<usize> = spec.pieces.iter().map(|p| p.1).collect();
            let p = weight_mut(&mut self.model, spec);
            optim::step(kind, &mut self.state[i], p, &g, lr, t, &rows, spec.cols);
        }
        let loss = (loss_sum / n_examples as f64) as f32;
        self.progress.last_loss = loss;
        Ok(loss)
    }
}

fn weight_mut<'a>(model: &'a mut Model<Cpu>, spec: &ParamSpec) -> &'a mut Vec<f32> {
    use crate::model::weights::Slot::*;
    let w = &mut model.weights;
    match spec.slot {
        Embed => &mut w.embed,
        Ln1W(i) => &mut w.layers[i].ln1_w,
        Ln1B(i) => w.layers[i].ln1_b.as_mut().unwrap(),
        Ln2W(i) => &mut w.layers[i].ln2_w,
        Ln2B(i) => w.layers[i].ln2_b.as_mut().unwrap(),
        QkvW(i) => &mut w.layers[i].qkv_w,
        QkvB(i) => w.layers[i].qkv_b.as_mut().unwrap(),
        OW(i) => &mut w.layers[i].o_w,
        OB(i) => w.layers[i].o_b.as_mut().unwrap(),
        UpW(i) => &mut w.layers[i].up_w,
        UpB(i) => w.layers[i].up_b.as_mut().unwrap(),
        DownW(i) => &mut w.layers[i].down_w,
        DownB(i) => w.layers[i].down_b.as_mut().unwrap(),
        FinalW => &mut w.final_w,
        FinalB => w.final_b.as_mut().unwrap(),
        Head => w.head.as_mut().unwrap(),
    }
}

/// Accuracy of a classifier on labelled examples (batched by the same token budget).
pub fn accuracy(model: &Model<Cpu>, data: &[LabeledIds], batch_tokens: usize) -> Result<f32> {
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

//! Hugging Face GPTNeoX / Qwen2 checkpoints as one model type over any Backend.

pub mod batch;
pub mod config;
pub mod safetensors_store;
pub mod scoring;
pub mod transformer;
pub mod weights;

use crate::backend::Backend;
use crate::error::{Error, Result};
use batch::Batch;
use config::{HeadKind, ModelConfig};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use safetensors_store::SafetensorsStore;
use std::path::Path;
use transformer::{backward_stack, forward_stack, PrefixCache, StackInput, Trace};
use weights::{load_spec, param_specs, Slot, Weights};

/// What a loss is computed against.
#[derive(Clone, Debug)]
pub enum Objective {
    /// Classifier cross-entropy against one label per sequence.
    Classify { labels: Vec<u32> },
    /// Causal-LM target-string cross-entropy: `mask[b * seq + t]` marks token t of sequence b
    /// as a target, predicted from position t - 1. Loss per sequence = mean over its targets.
    Target { mask: Vec<bool> },
}

/// Which gradients a loss pass should produce.
#[derive(Clone, Debug, Default)]
pub struct GradRequest {
    /// Rows (batch * seq indices) whose one-hot gradient [rows, vocab] is wanted.
    pub onehot_rows: Option<Vec<usize>>,
    /// Gradients of every weight (training).
    pub weights: bool,
}

pub struct LossGrads {
    pub loss_per_seq: Vec<f32>,
    /// Logits at the rows the loss reads ([sequences, labels] for a classifier).
    pub logits: Vec<f32>,
    /// [onehot_rows.len(), vocab], in the order requested.
    pub onehot_grad: Option<Vec<f32>>,
    pub weight_grads: Option<Weights<Vec<f32>>>,
}

/// The final norm and head on selected rows, with what their backward needs.
pub(crate) struct HeadActs<T> {
    pub logits: T,
    /// Gathered residual rows (the norm's input).
    pub xf: T,
    /// Normed rows (the head matmul's input).
    pub nf: T,
    pub mean: T,
    pub rstd: T,
}

pub struct Model<B: Backend> {
    pub cfg: ModelConfig,
    /// Read through [`Model::weights`]; changed only through [`Model::weights_mut`], which
    /// gives the weights a new generation (caches built from the old ones become stale).
    pub(crate) weights: Weights<B::Buf>,
    pub backend: B,
    generation: u64,
}

/// Generations of weights, unique across every model of the process: a cache records the
/// generation it was computed from, so one built by another model, or before a training
/// step, is recognised as stale.
fn next_generation() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Rows a loss reads, their target classes and scale, and the sequence each belongs to.
struct LossRows {
    rows: Vec<usize>,
    targets: Vec<u32>,
    scale: Vec<f32>,
    seq_of: Vec<usize>,
}

impl<B: Backend> Model<B> {
    /// Loads `dir/config.json` and the safetensors weights (converted to f32).
    pub fn load(dir: &Path, backend: B) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::format(dir, "model directory does not exist"));
        }
        let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
        let store = SafetensorsStore::open_dir(dir)?;
        Self::from_store(cfg, &store, backend)
    }

    pub fn from_store(cfg: ModelConfig, store: &SafetensorsStore, backend: B) -> Result<Self> {
        let weights = Weights::build(&cfg, |spec| {
            let data = load_spec(store, &cfg, spec)?;
            Ok(backend.upload(&data))
        })?;
        Ok(Model {
            cfg,
            weights,
            backend,
            generation: next_generation(),
        })
    }

    pub fn from_host_weights(cfg: ModelConfig, w: &Weights<Vec<f32>>, backend: B) -> Self {
        let weights = w.map(&cfg, |_, v| backend.upload(v));
        Model {
            cfg,
            weights,
            backend,
            generation: next_generation(),
        }
    }

    /// Random weights at the config's shapes (benchmarks and from-scratch training):
    /// matrices ~ N(0, std^2), norm weights 1, biases 0, deterministic for a seed.
    pub fn random(cfg: ModelConfig, seed: u64, std: f32, backend: B) -> Self {
        let host = random_weights(&cfg, seed, std);
        Self::from_host_weights(cfg, &host, backend)
    }

    /// Parameter count as the study counts it: input embeddings in, LM head out.
    pub fn param_count(&self) -> usize {
        param_count(&self.cfg)
    }

    /// An error unless a sequence of `tokens` positions (a cached prefix included) fits
    /// the model's `max_position_embeddings`: a longer one is refused before any work, never
    /// run for minutes on positions the model was not built for.
    pub fn check_positions(&self, tokens: usize) -> Result<()> {
        let max = self.cfg.max_positions;
        if tokens > max {
            return Err(Error::input(format!(
                "a sequence of {tokens} tokens is longer than the model's \
                 max_position_embeddings ({max}); shorten the input (classify and train \
                 take --truncate left|right)"
            )));
        }
        Ok(())
    }

    /// The backend the weights live on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn weights(&self) -> &Weights<B::Buf> {
        &self.weights
    }

    /// The weights for changing (training): they get a new generation, so every cache
    /// built from the old weights is refused from now on ([`Model::check_cache`]).
    pub fn weights_mut(&mut self) -> &mut Weights<B::Buf> {
        self.backend_and_weights_mut().1
    }

    /// [`Model::weights_mut`] with the backend beside it (to run update ops on them).
    pub fn backend_and_weights_mut(&mut self) -> (&B, &mut Weights<B::Buf>) {
        self.generation = next_generation();
        (&self.backend, &mut self.weights)
    }

    /// Which weights this model has now (see [`Model::weights_mut`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether `cache` was computed from this model's current weights.
    pub fn cache_is_current(&self, cache: &PrefixCache<B::Buf>) -> bool {
        cache.generation == self.generation
    }

    /// An error unless `cache` was computed from this model's current weights: a cache from
    /// before a training step (or from another model) would give silently wrong results.
    pub fn check_cache(&self, cache: &PrefixCache<B::Buf>) -> Result<()> {
        if self.cache_is_current(cache) {
            return Ok(());
        }
        Err(Error::input(
            "stale prefix cache: it was computed from other weights (the model was trained \
             since, or it belongs to another model); rebuild it",
        ))
    }

    /// Zeroed gradient buffers, one per parameter, on the model's backend (for
    /// [`Model::accumulate_grads`]).
    pub fn zero_grads(&self) -> Weights<B::Buf> {
        self.weights
            .map(&self.cfg, |_, b| self.backend.zeros(self.backend.len(b)))
    }

    /// A training pass: returns the loss per sequence and adds `scale` x the gradient of
    /// their sum to `grads` (device buffers from [`Model::zero_grads`]). Nothing but the
    /// losses leaves the device, so micro-batches accumulate where the weights live.
    pub fn accumulate_grads(
        &self,
        batch: &Batch,
        objective: &Objective,
        scale: f32,
        grads: &mut Weights<B::Buf>,
    ) -> Result<Vec<f32>> {
        let req = GradRequest {
            onehot_rows: None,
            weights: true,
        };
        let out = self.loss_and_grads_on(None, batch, objective, &req, Some((grads, scale)))?;
        Ok(out.loss_per_seq)
    }

    pub fn download_weights(&self) -> Weights<Vec<f32>> {
        self.weights.map(&self.cfg, |_, b| self.backend.download(b))
    }

    fn head_matrix(&self) -> &B::Buf {
        self.weights.head.as_ref().unwrap_or(&self.weights.embed)
    }

    fn head_width(&self) -> usize {
        self.cfg.num_labels().unwrap_or(self.cfg.vocab)
    }

    fn run_stack(
        &self,
        batch: &Batch,
        prefix: Option<&PrefixCache<B::Buf>>,
        keep: bool,
    ) -> Result<Trace<B::Buf>> {
        if let Some(c) = prefix {
            self.check_cache(c)?;
        }
        batch.check_vocab(self.cfg.vocab)?;
        self.check_positions(prefix.map_or(0, |c| c.len) + batch.seq)?;
        if batch.lens.len() != batch.batch || batch.ids.len() != batch.rows() {
            return Err(Error::input(
                "batch shape is inconsistent (ids, lens, batch x seq)",
            ));
        }
        Ok(forward_stack(
            &self.backend,
            &self.cfg,
            &self.weights,
            StackInput {
                ids: &batch.ids,
                batch: batch.batch,
                seq: batch.seq,
                lens: &batch.lens,
                prefix,
                keep,
                keep_qkv: false,
            },
        ))
    }

    /// Final norm + head on selected rows of the residual stream: [rows.len(), head width].
    fn head_forward(&self, x_out: &B::Buf, rows: &[usize]) -> HeadActs<B::Buf> {
        let (be, h, r) = (&self.backend, self.cfg.hidden, rows.len());
        let mut xf = be.zeros(r * h);
        be.gather_rows(&mut xf, x_out, rows, h);
        let mut nf = be.zeros(r * h);
        let mut mean = be.zeros(r);
        let mut rstd = be.zeros(r);
        let w = &self.weights;
        be.norm(
            self.cfg.norm,
            &mut nf,
            &mut mean,
            &mut rstd,
            &xf,
            &w.final_w,
            w.final_b.as_ref(),
            r,
            h,
            self.cfg.norm_eps,
        );
        let c = self.head_width();
        let mut logits = be.zeros(r * c);
        be.matmul(&mut logits, &nf, self.head_matrix(), None, r, h, c, false);
        HeadActs {
            logits,
            xf,
            nf,
            mean,
            rstd,
        }
    }

    /// Classifier: logits [batch, labels] at each sequence's last real token.
    /// Causal LM: logits [batch * seq, vocab] at every position (pad rows included).
    pub fn logits(&self, batch: &Batch) -> Result<Vec<f32>> {
        let trace = self.run_stack(batch, None, false)?;
        let rows: Vec<usize> = match self.cfg.head {
            HeadKind::Classifier { .. } => batch.last_rows()?,
            HeadKind::CausalLm => (0..batch.rows()).collect(),
        };
        let logits = self
            .backend
            .download(&self.head_forward(&trace.x_out, &rows).logits);
        // A failed device pass surfaces here, not as NaN logits in a later call.
        self.backend.check()?;
        Ok(logits)
    }

    /// Classifier logits [n, labels] of `seqs` in their order, run in batches of at most
    /// `batch_tokens` padded tokens (at least one sequence each) of similar lengths, so
    /// that batches pad little. Memory is bounded by `batch_tokens`, not by the input.
    pub fn classify_ids(&self, seqs: &[Vec<u32>], batch_tokens: usize) -> Result<Vec<f32>> {
        let Some(width) = self.cfg.num_labels() else {
            return Err(Error::input(
                "not a classifier (no `score` head): classifying needs *ForSequenceClassification",
            ));
        };
        if let Some(i) = seqs.iter().position(Vec::is_empty) {
            return Err(Error::input(format!("sequence {i} has no tokens")));
        }
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| seqs[i].len());
        let mut out = vec![0.0; seqs.len() * width];
        let pad = self.cfg.pad_token_id.unwrap_or(0);
        let mut start = 0;
        while start < order.len() {
            let mut end = start + 1;
            while end < order.len() && seqs[order[end]].len() * (end + 1 - start) <= batch_tokens {
                end += 1;
            }
            let chunk = &order[start..end];
            let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| seqs[i].clone()).collect();
            let logits = self.logits(&Batch::from_sequences(&batch, pad)?)?;
            for (j, &i) in chunk.iter().enumerate() {
                out[i * width..(i + 1) * width]
                    .copy_from_slice(&logits[j * width..(j + 1) * width]);
            }
            start = end;
        }
        Ok(out)
    }

    /// Runs `ids` once and keeps every layer's keys and values for continuations.
    pub fn prefix_cache(&self, ids: &[u32]) -> Result<PrefixCache<B::Buf>> {
        if ids.is_empty() {
            return Err(Error::input("empty prefix"));
        }
        let batch = Batch {
            ids: ids.to_vec(),
            batch: 1,
            seq: ids.len(),
            lens: vec![ids.len()],
        };
        batch.check_vocab(self.cfg.vocab)?;
        self.check_positions(ids.len())?;
        let trace = forward_stack(
            &self.backend,
            &self.cfg,
            &self.weights,
            StackInput {
                ids,
                batch: 1,
                seq: ids.len(),
                lens: &batch.lens,
                prefix: None,
                keep: false,
                keep_qkv: true,
            },
        );
        self.backend.check()?;
        Ok(PrefixCache {
            len: ids.len(),
            ids: ids.to_vec(),
            layers: trace.qkv_per_layer,
            generation: self.generation,
        })
    }

    /// Logits of continuations run against a cached prefix; `batch` holds only the new
    /// tokens. Same row conventions as `logits` (rows index the continuation batch).
    pub fn logits_with_prefix(
        &self,
        cache: &PrefixCache<B::Buf>,
        batch: &Batch,
    ) -> Result<Vec<f32>> {
        let trace = self.run_stack(batch, Some(cache), false)?;
        let rows: Vec<usize> = match self.cfg.head {
            HeadKind::Classifier { .. } => batch.last_rows()?,
            HeadKind::CausalLm => (0..batch.rows()).collect(),
        };
        let logits = self
            .backend
            .download(&self.head_forward(&trace.x_out, &rows).logits);
        // A failed device pass surfaces here, not as NaN logits in a later call.
        self.backend.check()?;
        Ok(logits)
    }

    /// Per-sequence losses of continuations against a cached prefix (no gradients).
    pub fn loss_with_prefix(
        &self,
        cache: &PrefixCache<B::Buf>,
        batch: &Batch,
        objective: &Objective,
    ) -> Result<Vec<f32>> {
        let lr = self.loss_rows(batch, objective)?;
        let trace = self.run_stack(batch, Some(cache), false)?;
        let logits = self.head_forward(&trace.x_out, &lr.rows).logits;
        let mut dl = self.backend.zeros(self.backend.len(&logits));
        let losses =
            self.backend
                .cross_entropy(&mut dl, &logits, &lr.targets, &lr.scale, self.head_width());
        self.backend.check()?;
        Ok(per_sequence(&lr, &losses, batch.batch))
    }

    fn loss_rows(&self, batch: &Batch, objective: &Objective) -> Result<LossRows> {
        batch.check_shape()?;
        match (objective, self.cfg.head) {
            (Objective::Classify { labels }, HeadKind::Classifier { num_labels }) => {
                if labels.len() != batch.batch {
                    return Err(Error::input(format!(
                        "{} labels for {} sequences",
                        labels.len(),
                        batch.batch
                    )));
                }
                if let Some(&l) = labels.iter().find(|&&l| l as usize >= num_labels) {
                    return Err(Error::input(format!(
                        "label {l} out of range for {num_labels} classes"
                    )));
                }
                Ok(LossRows {
                    rows: batch.last_rows()?,
                    targets: labels.clone(),
                    scale: vec![1.0; batch.batch],
                    seq_of: (0..batch.batch).collect(),
                })
            }
            (Objective::Target { mask }, HeadKind::CausalLm) => {
                if mask.len() != batch.rows() {
                    return Err(Error::input(format!(
                        "target mask has {} entries, batch has {}",
                        mask.len(),
                        batch.rows()
                    )));
                }
                let mut lr = LossRows {
                    rows: vec![],
                    targets: vec![],
                    scale: vec![],
                    seq_of: vec![],
                };
                for b in 0..batch.batch {
                    let ts: Vec<usize> = (0..batch.seq)
                        .filter(|&t| mask[b * batch.seq + t])
                        .collect();
                    if ts.is_empty() {
                        return Err(Error::input(format!("sequence {b} has no target tokens")));
                    }
                    if let Some(&t) = ts.iter().find(|&&t| t == 0 || t >= batch.lens[b]) {
                        return Err(Error::input(format!(
                            "sequence {b}: target position {t} must be in 1..{} (it is predicted from t - 1)",
                            batch.lens[b]
                        )));
                    }
                    for &t in &ts {
                        lr.rows.push(b * batch.seq + t - 1);
                        lr.targets.push(batch.ids[b * batch.seq + t]);
                        lr.scale.push(1.0 / ts.len() as f32);
                        lr.seq_of.push(b);
                    }
                }
                Ok(lr)
            }
            (Objective::Classify { .. }, HeadKind::CausalLm) => Err(Error::input(
                "a classification objective needs a classifier checkpoint (with a `score` head)",
            )),
            (Objective::Target { .. }, HeadKind::Classifier { .. }) => Err(Error::input(
                "a target-string objective needs a causal-LM checkpoint",
            )),
        }
    }

    /// Loss per sequence (their sum is what the gradients are of), plus the requested gradients.
    pub fn loss_and_grads(
        &self,
        batch: &Batch,
        objective: &Objective,
        req: &GradRequest,
    ) -> Result<LossGrads> {
        self.loss_and_grads_on(None, batch, objective, req, None)
    }

    /// `loss_and_grads` of continuations of a cached prefix (every sequence of `batch` comes
    /// after `cache`'s tokens): only the continuations run forward and backward. Rows and
    /// one-hot rows index the continuations. The prefix is a constant here, so weight
    /// gradients (which would need its activations) are refused.
    pub fn loss_and_grads_with_prefix(
        &self,
        cache: &PrefixCache<B::Buf>,
        batch: &Batch,
        objective: &Objective,
        req: &GradRequest,
    ) -> Result<LossGrads> {
        if req.weights {
            return Err(Error::input(
                "weight gradients through a cached prefix are not supported (run the whole sequence)",
            ));
        }
        self.loss_and_grads_on(Some(cache), batch, objective, req, None)
    }

    /// With `into` (buffers, scale), weight gradients times scale are added to those
    /// buffers and not downloaded (`weight_grads` and `logits` come back empty).
    fn loss_and_grads_on(
        &self,
        prefix: Option<&PrefixCache<B::Buf>>,
        batch: &Batch,
        objective: &Objective,
        req: &GradRequest,
        into: Option<(&mut Weights<B::Buf>, f32)>,
    ) -> Result<LossGrads> {
        let lr = self.loss_rows(batch, objective)?;
        if let Some(rows) = &req.onehot_rows {
            if let Some(&r) = rows.iter().find(|&&r| r >= batch.rows()) {
                return Err(Error::input(format!(
                    "one-hot gradient row {r} is outside the batch ({} rows)",
                    batch.rows()
                )));
            }
        }
        let be = &self.backend;
        let (h, c, rows) = (self.cfg.hidden, self.head_width(), batch.rows());
        let trace = self.run_stack(batch, prefix, true)?;
        let HeadActs {
            logits,
            xf,
            nf,
            mean,
            rstd,
        } = self.head_forward(&trace.x_out, &lr.rows);
        let r = lr.rows.len();
        let mut dlogits = be.zeros(r * c);
        // The loss gradient's scale enters once, at the logits; per-row losses stay unscaled.
        let (ext, grad_scale) = match into {
            Some((g, s)) => (Some(g), s),
            None => (None, 1.0),
        };
        let downloaded = ext.is_none();
        let scale: Vec<f32> = lr.scale.iter().map(|&s| s * grad_scale).collect();
        let losses = be.cross_entropy(&mut dlogits, &logits, &lr.targets, &scale, c);
        let loss_per_seq = per_sequence(&lr, &losses, batch.batch);

        let mut own = (req.weights && ext.is_none())
            .then(|| self.weights.map(&self.cfg, |_, b| be.zeros(be.len(b))));
        let mut grads: Option<&mut Weights<B::Buf>> = match ext {
            Some(g) => Some(g),
            None => own.as_mut(),
        };
        let w = &self.weights;
        let mut dnf = be.zeros(r * h);
        let dhead = grads.as_deref_mut().map(|g| match g.head.as_mut() {
            Some(hd) => hd,
            None => &mut g.embed,
        });
        be.matmul_bwd(
            Some((&mut dnf, false)),
            dhead,
            None,
            &dlogits,
            &nf,
            self.head_matrix(),
            r,
            h,
            c,
        );
        let mut dxf = be.zeros(r * h);
        let (gfw, gfb) = match grads.as_deref_mut() {
            Some(g) => (Some(&mut g.final_w), g.final_b.as_mut()),
            None => (None, None),
        };
        be.norm_bwd(
            self.cfg.norm,
            &mut dxf,
            gfw,
            gfb,
            &dnf,
            &xf,
            &mean,
            &rstd,
            &w.final_w,
            r,
            h,
        );
        let mut dx = be.zeros(rows * h);
        be.scatter_add_rows(&mut dx, &dxf, &lr.rows, h);
        let demb = backward_stack(
            be,
            &self.cfg,
            w,
            &trace,
            &batch.lens,
            prefix,
            dx,
            grads.as_deref_mut(),
        );

        let onehot_grad = req.onehot_rows.as_ref().map(|sel| {
            let mut d = be.zeros(sel.len() * h);
            be.gather_rows(&mut d, &demb, sel, h);
            let mut oh = be.zeros(sel.len() * self.cfg.vocab);
            // d loss / d onehot = d loss / d embedding_row . E^T
            be.matmul(
                &mut oh,
                &d,
                &w.embed,
                None,
                sel.len(),
                h,
                self.cfg.vocab,
                false,
            );
            be.download(&oh)
        });
        if let Some(g) = grads {
            be.embed_bwd(&mut g.embed, &demb, &batch.ids, h);
        }
        self.backend.check()?;
        let logits = if downloaded {
            be.download(&logits)
        } else {
            Vec::new()
        };
        let weight_grads = own.map(|g| g.map(&self.cfg, |_, b| be.download(b)));
        self.backend.check()?;
        Ok(LossGrads {
            loss_per_seq,
            logits,
            onehot_grad,
            weight_grads,
        })
    }
}

fn per_sequence(lr: &LossRows, losses: &[f32], n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; n];
    for (i, &l) in losses.iter().enumerate() {
        out[lr.seq_of[i]] += l * lr.scale[i];
    }
    out
}

/// Parameter count as the study counts it: input embeddings in, LM head out.
pub fn param_count(cfg: &ModelConfig) -> usize {
    param_specs(cfg)
        .iter()
        .filter(|s| !(s.slot == Slot::Head && cfg.head == HeadKind::CausalLm))
        .map(|s| s.numel())
        .sum()
}

pub fn random_weights(cfg: &ModelConfig, seed: u64, std: f32) -> Weights<Vec<f32>> {
    let mut counter = 0u64;
    Weights::build(cfg, |spec| {
        counter += 1;
        let is_norm_w = matches!(spec.slot, Slot::Ln1W(_) | Slot::Ln2W(_) | Slot::FinalW);
        let is_bias = spec.cols == 1 && !is_norm_w;
        let mut v = vec![0.0f32; spec.numel()];
        if is_norm_w {
            v.fill(1.0);
        } else if !is_bias {
            let stream = counter;
            v.par_chunks_mut(1 << 16)
                .enumerate()
                .for_each(|(ci, chunk)| {
                    let mut rng =
                        rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ (stream << 40) ^ ci as u64);
                    for x in chunk {
                        // Irwin-Hall(4) approximation of a normal: cheap and plenty for init.
                        let s: f32 = (0..4).map(|_| rng.random::<f32>()).sum::<f32>() - 2.0;
                        *x = s * std * 1.732_050_8;
                    }
                });
        }
        Ok(v)
    })
    .expect("infallible")
}

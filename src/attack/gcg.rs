//! Greedy Coordinate Gradient (Zou et al. 2023) with nanoGCG's options and the study's
//! defaults (science.md): 128 single-token swaps per iteration drawn without replacement
//! from the top-256 tokens per position of the one-hot gradient over every non-special id,
//! the three-part validity filter on, arg-min kept, no early stop; an iteration whose
//! candidates are all filtered out changes nothing and is counted as skipped.
//!
//! The filter (when on) keeps a candidate only if (a) the whole prompt survives decode →
//! encode unchanged ([`RetokCheck`]), (b) the attack tokens alone do, and (c) it differs
//! from the current attack. Before iteration 1 the initial attack is aligned in context: if
//! it fails (a) or (b) in its prompt, random allowed ids are swapped in (keyed by seed and
//! example) until it passes.

use super::budget::{executed_grad, gcg_nominal};
use super::candidates::{argmin, nan_last, sample, topk, SampleKey};
use super::goal::{dlogits, evaluate, Goal, LossKind};
use super::rng::{stream, Purpose};
use super::scoring::{score, Scored};
use super::subject::{Subject, Victim};
use super::{AsrKind, Attack, StepReport};
use crate::backend::Backend;
use crate::error::Result;
use crate::model::batch::Batch;
use crate::model::config::ModelConfig;
use crate::model::{GradRequest, Objective};
use crate::task::retokenizes;
use rand::{Rng, RngCore};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Random swaps tried when aligning the initial attack in context.
const INIT_TRIES: usize = 10_000;

/// Floats of saved activations one gradient batch may hold (1 GiB): examples are attacked
/// together in chunks that fit.
const GRAD_FLOATS: usize = 256 << 20;

/// Padded tokens per gradient batch (at least one example's worth).
fn grad_tokens(cfg: &ModelConfig) -> usize {
    // What `LayerActs` keeps per token and layer.
    let per_token = cfg.layers
        * (8 * cfg.hidden + cfg.qkv_dim() + cfg.attn_dim() + cfg.up_rows() + cfg.intermediate);
    GRAD_FLOATS / per_token.max(1)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GcgConfig {
    /// Candidates per iteration (nanoGCG's search_width).
    pub search_width: usize,
    /// Tokens per attack position taken from the one-hot gradient.
    pub topk: usize,
    /// Tokens each candidate swaps.
    pub n_replace: usize,
    /// nanoGCG's attack buffer: 0 keeps the arg-min candidate every iteration (the
    /// study); n > 0 keeps the n best attacks seen and continues from the best.
    pub buffer_size: usize,
    pub loss: LossKind,
    /// Stop attacking an example once it is broken.
    pub early_stop: bool,
    /// The study's validity filter (see the module docs) and initial-attack alignment.
    pub filter: bool,
    pub seed: u64,
}

impl Default for GcgConfig {
    fn default() -> Self {
        GcgConfig {
            search_width: 128,
            topk: 256,
            n_replace: 1,
            buffer_size: 0,
            loss: LossKind::CrossEntropy,
            early_stop: false,
            filter: true,
            seed: 0,
        }
    }
}

/// An entry of GCG's buffer (its per-example state when `buffer_size` > 0): an attack with
/// its loss and whether it succeeded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BufferEntry {
    #[serde(with = "super::results::nullable_f32")]
    pub loss: f32,
    pub ids: Vec<u32>,
    pub success: bool,
}

pub struct Gcg {
    pub cfg: GcgConfig,
}

/// The gradient pass's view of one example: loss and success of its current attack, and
/// the one-hot gradient at its attack positions [n_attack, vocab].
struct GradOut {
    loss: f32,
    success: bool,
    grad: Vec<f32>,
    executed: f64,
}

impl Gcg {
    pub fn new(cfg: GcgConfig) -> Self {
        Gcg { cfg }
    }

    /// Forward + backward on every example's current prompt, batched (in chunks of at most
    /// `grad_tokens` padded tokens).
    fn gradients<B: Backend>(&self, v: &Victim<B>, subs: &[&Subject<B>]) -> Result<Vec<GradOut>> {
        for s in subs {
            s.goal.validate(v.width())?;
        }
        let budget = grad_tokens(&v.model.cfg);
        let mut out = Vec::with_capacity(subs.len());
        let mut i = 0;
        while i < subs.len() {
            let mut j = i + 1;
            let mut longest = subs[i].len(subs[i].state.ids.len());
            while j < subs.len() {
                let l = longest.max(subs[j].len(subs[j].state.ids.len()));
                if l * (j + 1 - i) > budget {
                    break;
                }
                longest = l;
                j += 1;
            }
            out.extend(self.gradient_chunk(v, &subs[i..j])?);
            i = j;
        }
        Ok(out)
    }

    fn gradient_chunk<B: Backend>(
        &self,
        v: &Victim<B>,
        subs: &[&Subject<B>],
    ) -> Result<Vec<GradOut>> {
        let model = v.model;
        let seqs: Vec<Vec<u32>> = subs.iter().map(|s| s.sequence(&s.state.ids)).collect();
        let batch = Batch::from_sequences(&seqs, v.pad())?;
        let seq = batch.seq;
        let (mut rows, mut onehot, mut mask) = (vec![], vec![], vec![false; batch.rows()]);
        for (b, s) in subs.iter().enumerate() {
            let len = seqs[b].len();
            let pos = s.loss_positions(len);
            if let Goal::Target { .. } = s.goal {
                for &t in &pos {
                    mask[b * seq + t + 1] = true;
                }
            }
            rows.extend(pos.iter().map(|&t| b * seq + t));
            let a0 = s.prompt.attack_start();
            onehot.extend((0..s.state.ids.len()).map(|i| b * seq + a0 + i));
        }
        let width = v.width();
        let (logits, grad) = match self.cfg.loss {
            LossKind::CrossEntropy => {
                let objective = match subs[0].goal {
                    Goal::Classify { .. } => Objective::Classify {
                        labels: subs
                            .iter()
                            .map(|s| match s.goal {
                                Goal::Classify { target, .. } => target,
                                Goal::Target { .. } => 0,
                            })
                            .collect(),
                    },
                    Goal::Target { .. } => Objective::Target { mask },
                };
                let req = GradRequest {
                    onehot_rows: Some(onehot.clone()),
                    weights: false,
                };
                let lg = model.loss_and_grads(&batch, &objective, &req)?;
                (lg.logits, lg.onehot_grad.unwrap_or_default())
            }
            kind => model.onehot_grad_with(&batch, &rows, &onehot, |z| {
                let mut d = Vec::with_capacity(z.len());
                let mut at = 0;
                for s in subs {
                    let n = s.goal.rows_per_sequence() * width;
                    d.extend(dlogits(&s.goal, kind, &z[at..at + n], width));
                    at += n;
                }
                d
            })?,
        };
        let vocab = model.cfg.vocab;
        let (mut at_l, mut at_g) = (0, 0);
        let mut out = Vec::with_capacity(subs.len());
        for s in subs {
            let m = s.goal.rows_per_sequence();
            let n = s.state.ids.len();
            let (loss, success) = evaluate(
                &s.goal,
                self.cfg.loss,
                &logits[at_l..at_l + m * width],
                width,
            );
            out.push(GradOut {
                loss,
                success,
                grad: grad[at_g..at_g + n * vocab].to_vec(),
                executed: executed_grad(&model.cfg, 1, seq, m, n),
            });
            at_l += m * width;
            at_g += n * vocab;
        }
        Ok(out)
    }

    /// Which of `cands` pass the filter (all of them with the filter off).
    pub fn valid<B: Backend>(
        &self,
        v: &Victim<B>,
        s: &Subject<B>,
        cands: &[Vec<u32>],
    ) -> Result<Vec<bool>> {
        if !self.cfg.filter {
            return Ok(vec![true; cands.len()]);
        }
        let rc = s.retok.as_ref().zip(v.tok);
        cands
            .par_iter()
            .map(|c| {
                if *c == s.state.ids {
                    return Ok(false);
                }
                match rc {
                    Some((rc, tok)) => Ok(retokenizes(tok, c)? && rc.check(tok, c)?),
                    None => Ok(true),
                }
            })
            .collect()
    }

    /// Keeps the best candidate (or updates the buffer) and returns (loss, success).
    fn update<B: Backend>(
        &self,
        s: &mut Subject<B>,
        g: &GradOut,
        kept: Vec<Vec<u32>>,
        sc: &Scored,
    ) -> Result<(f32, bool)> {
        let best = argmin(&sc.losses);
        if self.cfg.buffer_size == 0 {
            return Ok(match best {
                Some(b) => {
                    s.state.ids = kept[b].clone();
                    (sc.losses[b], sc.success[b])
                }
                // Every candidate failed the filter: keep the current attack.
                None => (g.loss, g.success),
            });
        }
        let mut buf: Vec<BufferEntry> = s.state.data()?;
        if buf.is_empty() {
            buf.push(BufferEntry {
                loss: g.loss,
                ids: s.state.ids.clone(),
                success: g.success,
            });
        }
        if let Some(b) = best {
            let e = BufferEntry {
                loss: sc.losses[b],
                ids: kept[b].clone(),
                success: sc.success[b],
            };
            // nanoGCG: a full buffer takes a candidate only if it beats the worst entry.
            if buf.len() < self.cfg.buffer_size {
                buf.push(e);
            } else if nan_last(e.loss) < nan_last(buf[buf.len() - 1].loss) {
                *buf.last_mut().expect("non-empty") = e;
            }
            buf.sort_by(|a, b| nan_last(a.loss).total_cmp(&nan_last(b.loss)));
        }
        s.state.ids = buf[0].ids.clone();
        let out = (buf[0].loss, buf[0].success);
        s.state.set_data(&buf);
        Ok(out)
    }
}

impl<B: Backend> Attack<B> for Gcg {
    fn name(&self) -> &'static str {
        "gcg"
    }

    fn settings(&self) -> serde_json::Value {
        serde_json::to_value(&self.cfg).expect("plain data")
    }

    fn nominal_bound(&self, v: &Victim<B>, s: &Subject<B>) -> f64 {
        let n = s.state.ids.len();
        let pool = match self.cfg.n_replace {
            1 => n * self.cfg.topk.min(v.vocab.allowed().len()),
            _ => usize::MAX,
        };
        gcg_nominal(
            v.model.param_count(),
            s.len(n),
            self.cfg.search_width.min(pool),
        )
    }

    fn stops_on_success(&self) -> bool {
        self.cfg.early_stop
    }

    fn study_asr(&self) -> AsrKind {
        AsrKind::Current
    }

    /// Aligns the initial attack in context (see the module docs).
    fn init(&self, v: &Victim<B>, s: &mut Subject<B>) -> Result<()> {
        let (Some(rc), Some(tok), true) = (&s.retok, v.tok, self.cfg.filter) else {
            return Ok(());
        };
        let passes =
            |ids: &[u32]| -> Result<bool> { Ok(rc.check(tok, ids)? && retokenizes(tok, ids)?) };
        if s.state.ids.is_empty() || passes(&s.state.ids)? {
            return Ok(());
        }
        let allowed = v.vocab.allowed();
        let mut rng = stream(self.cfg.seed, s.index, 0, Purpose::GcgInit);
        let mut ids = s.state.ids.clone();
        for _ in 0..INIT_TRIES {
            let at = rng.random_range(0..ids.len());
            ids[at] = allowed[rng.random_range(0..allowed.len())];
            if passes(&ids)? {
                s.state.ids = ids;
                return Ok(());
            }
        }
        // No aligned attack found: start from the text's tokens and let the filter steer.
        Ok(())
    }

    fn step(
        &self,
        v: &Victim<B>,
        batch: &mut [&mut Subject<B>],
        iteration: usize,
    ) -> Result<Vec<StepReport>> {
        let model = v.model;
        let subs: Vec<&Subject<B>> = batch.iter().map(|s| &**s).collect();
        let grads = self.gradients(v, &subs)?;
        let cands: Vec<Vec<Vec<u32>>> = subs
            .par_iter()
            .zip(&grads)
            .map(|(s, g)| {
                let n = s.state.ids.len();
                let (top, k) = topk(&g.grad, n, v.vocab, self.cfg.topk)?;
                let mut rng = stream(self.cfg.seed, s.index, iteration, Purpose::GcgSample);
                // The sampling op's seed is per example; its counter is the iteration.
                let key = SampleKey {
                    seed: rng.next_u64(),
                    counter: iteration as u64,
                };
                sample(
                    &top,
                    k,
                    &s.state.ids,
                    self.cfg.search_width,
                    self.cfg.n_replace,
                    key,
                    &mut rng,
                )
            })
            .collect::<Result<_>>()?;
        // Validity checks of example i + 1 run on the pool while example i is scored.
        let check = |i: usize| self.valid(v, subs[i], &cands[i]);
        let mut scored = Vec::with_capacity(subs.len());
        let mut next = Some(check(0));
        for i in 0..subs.len() {
            let valid = next.take().expect("checked before")?;
            let kept: Vec<Vec<u32>> = cands[i]
                .iter()
                .zip(&valid)
                .filter(|(_, &ok)| ok)
                .map(|(c, _)| c.clone())
                .collect();
            let (sc, nxt) = rayon::join(
                || score(v, subs[i], &kept, Some(&subs[i].state.ids), self.cfg.loss),
                || (i + 1 < subs.len()).then(|| check(i + 1)),
            );
            next = nxt;
            scored.push((kept, valid.len(), sc?));
        }
        drop(subs);
        let n_params = model.param_count();
        let mut reports = Vec::with_capacity(batch.len());
        for ((s, g), (kept, sampled, sc)) in batch.iter_mut().zip(&grads).zip(scored) {
            let tokens = s.len(s.state.ids.len());
            let n_kept = kept.len();
            let (loss, success) = self.update(s, g, kept, &sc)?;
            reports.push(StepReport {
                loss,
                success,
                success_before: g.success,
                scored: n_kept,
                rejected: sampled - n_kept,
                skipped: n_kept == 0,
                nominal: gcg_nominal(n_params, tokens, n_kept),
                executed: g.executed + sc.executed,
            });
        }
        Ok(reports)
    }
}

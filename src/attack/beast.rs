//! BEAST (Sadasivan et al. 2024) as the study ran it (science.md): a beam search over attack
//! tokens proposed by a small causal LM (the sampler) and scored by the victim.
//!
//! - Iteration 1: the sampler reads the prompt before the attack slot and k (the beam
//!   width) tokens are
//!   sampled without replacement from softmax(logits / temperature) at its last position
//!   (the whole LM-head vocabulary, nothing excluded): the k one-token candidates.
//! - Iteration i > 1: each beam grows by `branching` tokens sampled the same way from the
//!   sampler reading `before ++ beam` (k² candidates with the study's branching = k).
//! - Every candidate's tokens are decoded (special tokens skipped) into the prompt text and
//!   the whole prompt is tokenized again, with no filter; the victim's loss toward the goal
//!   scores it; the k lowest become the beam. The best attack so far changes only on a
//!   strict improvement, and it is the example's current attack (ASR after iteration i uses
//!   it). The attack grows by one token per iteration.
//! - Nominal FLOPs: 2·N_victim per padded scored token (each example's candidates of an
//!   iteration count as one minibatch padded to its longest) + 2·N_sampler per sampler
//!   prompt token, N_sampler the causal LM's parameters with an untied output embedding.
//!
//! Sampling without replacement is the Gumbel-top-k trick (equivalent in distribution to
//! drawing one token at a time and removing it), keyed by (seed, example, iteration), so
//! thread counts, batching and resumes never change the draws.

use super::budget::{executed_lean, generative_params, Top};
use super::candidates::nan_last;
use super::goal::LossKind;
use super::rng::{stream, Purpose};
use super::scoring::score_sequences;
use super::subject::{Subject, Victim};
use super::{AsrKind, Attack, StepReport};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::flops;
use crate::model::batch::Batch;
use crate::model::config::HeadKind;
use crate::model::scoring::PrefixView;
use crate::model::transformer::PrefixCache;
use crate::model::Model;
use crate::tokenize::Tokenizer;
use rand::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BeastConfig {
    /// The sampler: a causal-LM checkpoint directory with the victim's tokenizer.
    pub sampler: PathBuf,
    /// Beams kept per iteration (the study: 7).
    pub beam: usize,
    /// Tokens sampled per beam and iteration (the study: 7).
    pub branching: usize,
    pub temperature: f32,
    pub loss: LossKind,
    /// Stop attacking an example once it is broken.
    #[serde(default)]
    pub early_stop: bool,
    pub seed: u64,
}

impl BeastConfig {
    /// The study's settings with `sampler`.
    pub fn study(sampler: PathBuf) -> Self {
        BeastConfig {
            sampler,
            beam: 7,
            branching: 7,
            temperature: 1.0,
            loss: LossKind::CrossEntropy,
            early_stop: false,
            seed: 0,
        }
    }
}

/// BEAST's per-example state: the beam (best first) and the best attack's loss.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BeamState {
    pub beam: Vec<Vec<u32>>,
    #[serde(with = "super::results::nullable_f32")]
    pub best_loss: f32,
    pub best_success: bool,
}

pub struct Beast<B: Backend> {
    pub cfg: BeastConfig,
    sampler: Model<B>,
    /// The sampler's cache of each example's `prompt.before`, built on first use.
    caches: Mutex<HashMap<usize, std::sync::Arc<PrefixCache<B::Buf>>>>,
}

/// A candidate for one example: attack tokens and the prompt the victim reads.
struct Cand {
    ids: Vec<u32>,
    seq: Vec<u32>,
}

impl<B: Backend> Beast<B> {
    /// Loads the sampler from `cfg.sampler` onto `backend` (the victim's device) and checks
    /// that it is a causal LM with the victim's tokenizer.
    pub fn load(cfg: BeastConfig, backend: B, victim_tok: &Tokenizer) -> Result<Self> {
        if cfg.beam == 0 || cfg.branching == 0 {
            return Err(Error::input(format!(
                "BEAST needs beam >= 1 and branching >= 1 (got {} and {})",
                cfg.beam, cfg.branching
            )));
        }
        if !(cfg.temperature.is_finite() && cfg.temperature > 0.0) {
            return Err(Error::input(format!(
                "BEAST temperature must be a positive number (got {})",
                cfg.temperature
            )));
        }
        let dir = &cfg.sampler;
        let tok = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
        same_vocabulary(victim_tok, &tok, dir)?;
        let sampler = Model::load(dir, backend)?;
        if !matches!(sampler.cfg.head, HeadKind::CausalLm) {
            return Err(Error::format(
                dir,
                "the BEAST sampler must be a causal LM (e.g. pythia-14m); this checkpoint is \
                 a classifier",
            ));
        }
        Ok(Beast {
            cfg,
            sampler,
            caches: Mutex::new(HashMap::new()),
        })
    }

    pub fn sampler(&self) -> &Model<B> {
        &self.sampler
    }

    /// N_sampler of the FLOP count (untied output embedding included).
    pub fn sampler_params(&self) -> usize {
        generative_params(&self.sampler.cfg)
    }

    /// The sampler's cache of `s`'s prompt before the slot (built on first use, rebuilt if
    /// stale).
    fn sampler_cache(&self, s: &Subject<B>) -> Result<std::sync::Arc<PrefixCache<B::Buf>>> {
        if let Some(c) = self.caches.lock().expect("not poisoned").get(&s.index) {
            if self.sampler.cache_is_current(c) && c.ids == s.prompt.before {
                return Ok(c.clone());
            }
        }
        let c = std::sync::Arc::new(self.sampler.prefix_cache(&s.prompt.before)?);
        self.caches
            .lock()
            .expect("not poisoned")
            .insert(s.index, c.clone());
        Ok(c)
    }

    /// The sampler's next-token logits after `before ++ beam` for every beam of `s` (the
    /// empty beam at iteration 1), [beams, sampler vocab], with the executed FLOPs.
    fn next_logits(&self, s: &Subject<B>, beams: &[Vec<u32>]) -> Result<(Vec<f32>, f64)> {
        let l0 = s.prompt.before.len();
        if l0 == 0 {
            return Err(Error::input(format!(
                "example {}: BEAST's sampler reads the prompt before the attack slot, and it \
                 is empty here (use a threat model with text before the slot)",
                s.index
            )));
        }
        let cfg = &self.sampler.cfg;
        let cache = self.sampler_cache(s)?;
        let n = beams[0].len();
        if n == 0 && l0 == 1 {
            let batch = Batch {
                ids: s.prompt.before.clone(),
                batch: 1,
                seq: 1,
                lens: vec![1],
            };
            let z = self.sampler.logits_at_rows(None, &batch, &[0], true)?;
            return Ok((z, flops::executed_forward(cfg, 1, 1, 0, 1)));
        }
        if n == 0 {
            // The last position of `before`: its last token against the cache of the rest.
            let batch = Batch {
                ids: vec![s.prompt.before[l0 - 1]],
                batch: 1,
                seq: 1,
                lens: vec![1],
            };
            let view = PrefixView::new(&cache, l0 - 1)?;
            let z = self
                .sampler
                .logits_at_rows(Some(&view), &batch, &[0], true)?;
            let top = Top::Rows {
                rows: 1,
                shortcut: true,
            };
            return Ok((z, executed_lean(cfg, 1, 1, l0 - 1, top)));
        }
        let batch = Batch {
            ids: beams.concat(),
            batch: beams.len(),
            seq: n,
            lens: vec![n; beams.len()],
        };
        let rows: Vec<usize> = (0..beams.len()).map(|b| b * n + n - 1).collect();
        let view = PrefixView::all(&cache);
        let z = self
            .sampler
            .logits_at_rows(Some(&view), &batch, &rows, true)?;
        let top = Top::Rows {
            rows: beams.len(),
            shortcut: true,
        };
        let executed = executed_lean(cfg, beams.len(), n, l0, top);
        Ok((z, executed))
    }

    /// The candidates of iteration `iteration` for `s` (attack tokens, before decoding):
    /// `beam` samples at iteration 1, then `branching` after each beam. Deterministic in (seed,
    /// example, iteration). Returns them with the sampler's nominal and executed FLOPs.
    pub fn expand(&self, s: &Subject<B>, iteration: usize) -> Result<(Vec<Vec<u32>>, f64, f64)> {
        let st: BeamState = s.state.data()?;
        let beams: Vec<Vec<u32>> = if iteration == 1 || st.beam.is_empty() {
            vec![Vec::new()]
        } else {
            st.beam.clone()
        };
        let (z, mut executed) = self.next_logits(s, &beams)?;
        if iteration == 1 {
            // The sampler's prompt cache, booked to iteration 1 as the victim's is (a resumed
            // run rebuilds it and reports the same).
            let l0 = s.prompt.before.len();
            executed += flops::executed_forward(&self.sampler.cfg, 1, l0, 0, 0);
        }
        let width = self.sampler.cfg.vocab;
        let mut rng = stream(self.cfg.seed, s.index, iteration, Purpose::BeastSample);
        let mut out = Vec::with_capacity(beams.len() * self.cfg.branching);
        // Iteration 1 samples the beam's width of tokens, later ones `branching` per beam.
        let draws = if beams[0].is_empty() {
            self.cfg.beam
        } else {
            self.cfg.branching
        };
        for (b, beam) in beams.iter().enumerate() {
            let row = &z[b * width..(b + 1) * width];
            for t in gumbel_top_k(row, self.cfg.temperature, draws, &mut rng) {
                let mut c = beam.clone();
                c.push(t);
                out.push(c);
            }
        }
        let prompt_tokens: usize = beams.iter().map(|b| s.prompt.before.len() + b.len()).sum();
        let nominal = flops::nominal_forward(self.sampler_params(), prompt_tokens);
        Ok((out, nominal, executed))
    }
}

/// `k` distinct indices sampled without replacement from softmax(`logits` / `t`): the k
/// largest of logit / t + Gumbel noise (ties by lower index). Non-finite logits are never
/// drawn unless nothing else is left.
pub fn gumbel_top_k(logits: &[f32], t: f32, k: usize, rng: &mut impl Rng) -> Vec<u32> {
    let mut keys: Vec<(f64, u32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &z)| {
            // u in (0, 1): -ln(-ln u) is a standard Gumbel draw.
            let u: f64 = (rng.random::<u64>() >> 11) as f64 / (1u64 << 53) as f64;
            let u = u.max(f64::MIN_POSITIVE);
            let g = -(-u.ln()).ln();
            let key = if z.is_finite() {
                z as f64 / t as f64 + g
            } else {
                f64::NEG_INFINITY
            };
            (key, i as u32)
        })
        .collect();
    let k = k.min(keys.len());
    let cmp = |a: &(f64, u32), b: &(f64, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    if k < keys.len() {
        keys.select_nth_unstable_by(k, cmp);
        keys.truncate(k);
    }
    keys.sort_by(cmp);
    keys.into_iter().map(|(_, i)| i).collect()
}

/// An error unless both tokenizers map the same tokens to the same ids.
fn same_vocabulary(victim: &Tokenizer, sampler: &Tokenizer, dir: &Path) -> Result<()> {
    let a = victim.inner().get_vocab(true);
    let b = sampler.inner().get_vocab(true);
    if a == b {
        return Ok(());
    }
    let mut diff: Vec<(&String, &u32)> = a.iter().filter(|(t, id)| b.get(*t) != Some(id)).collect();
    diff.sort_by_key(|(_, id)| **id);
    let first = match diff.first() {
        Some((t, id)) => format!("the victim's token {t:?} (id {id}) differs"),
        None => "the sampler has tokens the victim lacks".into(),
    };
    Err(Error::format(
        dir.join("tokenizer.json"),
        format!(
            "the BEAST sampler's vocabulary differs from the victim's ({} vs {} tokens; {first}): \
             the sampler must share the victim's tokenizer (pythia-14m for Pythia, \
             Qwen2.5-0.5B for Qwen2.5)",
            b.len(),
            a.len()
        ),
    ))
}

impl<B: Backend> Attack<B> for Beast<B> {
    fn name(&self) -> &'static str {
        "beast"
    }

    fn settings(&self) -> serde_json::Value {
        serde_json::to_value(&self.cfg).expect("plain data")
    }

    /// k² candidates one token longer than the beam, with slack for retokenization (the
    /// attack's text may encode into more tokens than it has), plus the sampler's prompts.
    fn nominal_bound(&self, v: &Victim<B>, s: &Subject<B>) -> f64 {
        let st: BeamState = s.state.data().unwrap_or_default();
        let n = st.beam.first().map_or(0, Vec::len) + 1;
        let (k, w) = (self.cfg.beam.max(1), self.cfg.branching);
        let victim = flops::nominal_forward(v.model.param_count(), k * w * (s.len(0) + 2 * n));
        let sampler =
            flops::nominal_forward(self.sampler_params(), k * (s.prompt.before.len() + n));
        victim + sampler
    }

    fn stops_on_success(&self) -> bool {
        self.cfg.early_stop
    }

    fn study_asr(&self) -> AsrKind {
        AsrKind::Current
    }

    /// BEAST starts from an empty attack (it grows one token per iteration).
    fn init(&self, _v: &Victim<B>, s: &mut Subject<B>) -> Result<()> {
        s.state.ids.clear();
        Ok(())
    }

    fn step(
        &self,
        v: &Victim<B>,
        batch: &mut [&mut Subject<B>],
        iteration: usize,
    ) -> Result<Vec<StepReport>> {
        let tok = v.tok.ok_or_else(|| {
            Error::input("BEAST decodes its candidates into the prompt text: it needs a tokenizer")
        })?;
        // Sampler passes (one per example) and the victim's prompts of every candidate.
        let expanded: Vec<(Vec<Cand>, f64, f64)> = batch
            .par_iter()
            .map(|s| -> Result<_> {
                let (ids, nominal, executed) = self.expand(s, iteration)?;
                let cands = ids
                    .into_iter()
                    .map(|ids| {
                        let text = tok
                            .inner()
                            .decode(&ids, true)
                            .map_err(|e| Error::Other(format!("cannot decode {ids:?}: {e}")))?;
                        let seq = s.with_suffix(s.retokenized(tok, &text)?);
                        Ok(Cand { ids, seq })
                    })
                    .collect::<Result<Vec<Cand>>>()?;
                Ok((cands, nominal, executed))
            })
            .collect::<Result<_>>()?;
        let seqs: Vec<Vec<Vec<u32>>> = expanded
            .iter()
            .map(|(c, _, _)| c.iter().map(|c| c.seq.clone()).collect())
            .collect();
        let scored = score_sequences(v, batch, &seqs, self.cfg.loss)?;
        let n_victim = v.model.param_count();
        let mut reports = Vec::with_capacity(batch.len());
        for (s, ((cands, s_nominal, s_executed), sc)) in
            batch.iter_mut().zip(expanded.into_iter().zip(scored))
        {
            let mut st: BeamState = s.state.data()?;
            if iteration == 1 || st.beam.is_empty() {
                st.best_loss = f32::INFINITY;
                st.best_success = false;
            }
            // The k lowest (stable: ties keep the sampling order).
            let mut order: Vec<usize> = (0..cands.len()).collect();
            order.sort_by(|&a, &b| nan_last(sc.losses[a]).total_cmp(&nan_last(sc.losses[b])));
            order.truncate(self.cfg.beam);
            if let Some(&b) = order.first() {
                if nan_last(sc.losses[b]) < nan_last(st.best_loss) {
                    st.best_loss = sc.losses[b];
                    st.best_success = sc.success[b];
                    s.state.ids = cands[b].ids.clone();
                    let mut prompt = cands[b].seq.clone();
                    prompt.truncate(prompt.len() - s.goal.suffix_ids().len());
                    s.state.prompt = Some(prompt);
                }
            }
            st.beam = order.iter().map(|&i| cands[i].ids.clone()).collect();
            let padded = cands.iter().map(|c| c.seq.len()).max().unwrap_or(0) * cands.len();
            reports.push(StepReport {
                loss: st.best_loss,
                success: st.best_success,
                success_before: false,
                scored: cands.len(),
                rejected: 0,
                skipped: false,
                nominal: flops::nominal_forward(n_victim, padded) + s_nominal,
                executed: sc.executed + s_executed,
            });
            s.state.set_data(&st);
        }
        Ok(reports)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn gumbel_top_k_draws_distinct_ids_with_softmax_frequencies() {
        // P(first draw = i) = softmax(z)_i: 0.09, 0.24, 0.67.
        let z = [0.0f32, 1.0, 2.0];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut first = [0usize; 3];
        let trials = 20_000;
        for _ in 0..trials {
            let d = gumbel_top_k(&z, 1.0, 2, &mut rng);
            assert_eq!(d.len(), 2);
            assert_ne!(d[0], d[1]);
            first[d[0] as usize] += 1;
        }
        let e: Vec<f64> = z.iter().map(|&x| (x as f64).exp()).collect();
        let sum: f64 = e.iter().sum();
        for i in 0..3 {
            let p = first[i] as f64 / trials as f64;
            assert!(
                (p - e[i] / sum).abs() < 0.015,
                "id {i}: {p} vs {}",
                e[i] / sum
            );
        }
        // Never a non-finite logit while finite ones remain.
        let d = gumbel_top_k(&[f32::NEG_INFINITY, 0.0, f32::NAN, 0.0], 1.0, 2, &mut rng);
        let mut d = d.clone();
        d.sort();
        assert_eq!(d, vec![1, 3]);
    }
}

//! The random-token baseline as the study ran it (science.md): every iteration draws
//! `attack_tokens` ids uniformly from the pool (by default [0, tokenizer vocab size) minus
//! special ids), decodes them into the prompt text and tokenizes the whole prompt again (no
//! filter, no redraw); every iteration is scored, and an example counts as broken from its
//! first successful draw (the study kept the first success: its ASR curve is cumulative).
//!
//! Without a tokenizer (benchmarks on raw ids) the drawn ids go into the slot as they are.

use super::budget::random_token_nominal;
use super::goal::LossKind;
use super::rng::{stream, Purpose};
use super::scoring::score_sequences;
use super::subject::{Subject, Victim};
use super::vocab::Vocab;
use super::{AsrKind, Attack, StepReport};
use crate::backend::Backend;
use crate::error::Result;
use rand::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RandomTokenConfig {
    /// Stop attacking an example at its first success (saves compute; the cumulative ASR
    /// curve is the same, the FLOPs are not the study's, which scored every iteration).
    #[serde(default)]
    pub early_stop: bool,
    pub loss: LossKind,
    pub seed: u64,
}

impl Default for RandomTokenConfig {
    fn default() -> Self {
        RandomTokenConfig {
            early_stop: false,
            loss: LossKind::CrossEntropy,
            seed: 0,
        }
    }
}

pub struct RandomToken {
    pub cfg: RandomTokenConfig,
    /// The ids draws come from.
    pub pool: Vocab,
}

impl RandomToken {
    pub fn new(cfg: RandomTokenConfig, pool: Vocab) -> Self {
        RandomToken { cfg, pool }
    }

    /// This iteration's draw for `s`: (attack ids, prompt tokens the victim reads when the
    /// draw went through text).
    fn draw<B: Backend>(
        &self,
        v: &Victim<B>,
        s: &Subject<B>,
        iteration: usize,
    ) -> Result<(Vec<u32>, Option<Vec<u32>>)> {
        let allowed = self.pool.allowed();
        let mut rng = stream(self.cfg.seed, s.index, iteration, Purpose::RandomTokens);
        let ids: Vec<u32> = (0..s.state.ids.len())
            .map(|_| allowed[rng.random_range(0..allowed.len())])
            .collect();
        let prompt = match v.tok {
            Some(tok) => Some(s.retokenized(tok, &tok.decode(&ids)?)?),
            None => None,
        };
        Ok((ids, prompt))
    }
}

impl<B: Backend> Attack<B> for RandomToken {
    fn name(&self) -> &'static str {
        "random-token"
    }

    fn settings(&self) -> serde_json::Value {
        serde_json::to_value(&self.cfg).expect("plain data")
    }

    /// The prompt with twice the attack's tokens: a draw's text may retokenize into more
    /// tokens than were drawn (rarely more than that; such a draw can overshoot a FLOP
    /// budget by one iteration).
    fn nominal_bound(&self, v: &Victim<B>, s: &Subject<B>) -> f64 {
        let n = s.state.ids.len();
        random_token_nominal(v.model.param_count(), s.len(n) + n)
    }

    fn stops_on_success(&self) -> bool {
        self.cfg.early_stop
    }

    fn study_asr(&self) -> AsrKind {
        AsrKind::Cumulative
    }

    /// Every example's draw is scored in one packed forward (see `scoring::score_many`).
    fn step(
        &self,
        v: &Victim<B>,
        batch: &mut [&mut Subject<B>],
        iteration: usize,
    ) -> Result<Vec<StepReport>> {
        let draws: Vec<(Vec<u32>, Option<Vec<u32>>)> = batch
            .par_iter()
            .map(|s| self.draw(v, s, iteration))
            .collect::<Result<_>>()?;
        let seqs: Vec<Vec<Vec<u32>>> = batch
            .iter()
            .zip(&draws)
            .map(|(s, (ids, prompt))| {
                let p = prompt.clone().unwrap_or_else(|| s.prompt.ids(ids));
                vec![s.with_suffix(p)]
            })
            .collect();
        let scored = score_sequences(v, batch, &seqs, self.cfg.loss)?;
        let n_params = v.model.param_count();
        let mut reports = Vec::with_capacity(batch.len());
        for (((s, (ids, prompt)), sc), seq) in batch.iter_mut().zip(draws).zip(scored).zip(&seqs) {
            s.state.ids = ids;
            s.state.prompt = prompt;
            reports.push(StepReport {
                loss: sc.losses[0],
                success: sc.success[0],
                success_before: false,
                scored: 1,
                rejected: 0,
                skipped: false,
                nominal: random_token_nominal(n_params, seq[0].len()),
                executed: sc.executed,
            });
        }
        Ok(reports)
    }
}

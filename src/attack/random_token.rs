//! The random-token baseline (the study's): every iteration tries fresh, uniformly random
//! allowed tokens in the attack slot; an example counts as broken from its first success.

use super::budget::random_token_nominal;
use super::goal::LossKind;
use super::rng::{stream, Purpose};
use super::scoring::{score_many, Job};
use super::subject::{Subject, Victim};
use super::{Attack, StepReport};
use crate::backend::Backend;
use crate::error::Result;
use crate::flops;
use rand::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Draws per iteration when the retokenization filter is on: the first draw that passes
/// is scored; if none of this many passes, the last one is (and counted as rejected).
const MAX_DRAWS: usize = 64;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RandomTokenConfig {
    /// Redraw until the prompt passes the retokenization check (up to MAX_DRAWS times).
    pub filter: bool,
    pub loss: LossKind,
    pub seed: u64,
}

impl Default for RandomTokenConfig {
    fn default() -> Self {
        RandomTokenConfig {
            filter: true,
            loss: LossKind::CrossEntropy,
            seed: 0,
        }
    }
}

pub struct RandomToken {
    pub cfg: RandomTokenConfig,
}

impl RandomToken {
    pub fn new(cfg: RandomTokenConfig) -> Self {
        RandomToken { cfg }
    }

    /// This iteration's tokens for `s`: (ids, draws made, whether they passed the check).
    fn draw<B: Backend>(
        &self,
        v: &Victim<B>,
        s: &Subject<B>,
        iteration: usize,
    ) -> Result<(Vec<u32>, usize, bool)> {
        let n = s.state.ids.len();
        let allowed = v.vocab.allowed();
        let mut rng = stream(self.cfg.seed, s.index, iteration, Purpose::RandomTokens);
        for draws in 1.. {
            let ids: Vec<u32> = (0..n)
                .map(|_| allowed[rng.random_range(0..allowed.len())])
                .collect();
            let ok = match (self.cfg.filter, &s.retok, v.tok) {
                (true, Some(rc), Some(tok)) => rc.check(tok, &ids)?,
                _ => true,
            };
            if ok || draws == MAX_DRAWS {
                return Ok((ids, draws, ok));
            }
        }
        unreachable!("the loop returns by MAX_DRAWS")
    }
}

impl<B: Backend> Attack<B> for RandomToken {
    fn name(&self) -> &'static str {
        "random-token"
    }

    fn settings(&self) -> serde_json::Value {
        serde_json::to_value(&self.cfg).expect("plain data")
    }

    fn nominal_bound(&self, v: &Victim<B>, s: &Subject<B>) -> f64 {
        random_token_nominal(v.model.param_count(), s.len(s.state.ids.len()))
    }

    fn stops_on_success(&self) -> bool {
        true
    }

    /// Every example's draw is scored in one packed forward (see `scoring::score_many`).
    fn step(
        &self,
        v: &Victim<B>,
        batch: &mut [&mut Subject<B>],
        iteration: usize,
    ) -> Result<Vec<StepReport>> {
        let model = v.model;
        // Prompt caches are built once; their cost is booked to iteration 1 (as GCG does).
        let mut cache_cost = vec![0.0; batch.len()];
        if v.fast.prefix_cache {
            for (c, s) in cache_cost.iter_mut().zip(batch.iter_mut()) {
                s.ensure_cache(model)?;
                if iteration == 1 && !s.prompt.before.is_empty() {
                    *c = flops::executed_forward(&model.cfg, 1, s.prompt.before.len(), 0, 0);
                }
            }
        }
        let draws: Vec<(Vec<u32>, usize, bool)> = batch
            .par_iter()
            .map(|s| self.draw(v, s, iteration))
            .collect::<Result<_>>()?;
        let cands: Vec<Vec<Vec<u32>>> = draws.iter().map(|d| vec![d.0.clone()]).collect();
        let jobs: Vec<Job<'_, B>> = batch
            .iter()
            .zip(&cands)
            .map(|(s, c)| Job {
                subject: &**s,
                cands: c,
                reference: None,
            })
            .collect();
        let scored = score_many(v, &jobs, self.cfg.loss)?;
        drop(jobs);
        let n_params = model.param_count();
        let mut reports = Vec::with_capacity(batch.len());
        for (((s, (ids, draws, passed)), sc), cc) in
            batch.iter_mut().zip(draws).zip(scored).zip(cache_cost)
        {
            s.state.ids = ids;
            reports.push(StepReport {
                loss: sc.losses[0],
                success: sc.success[0],
                success_before: false,
                scored: 1,
                rejected: draws - usize::from(passed),
                nominal: random_token_nominal(n_params, s.len(s.state.ids.len())),
                executed: sc.executed + cc,
            });
        }
        Ok(reports)
    }
}

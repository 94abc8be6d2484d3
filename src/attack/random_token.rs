//! The random-token baseline (the study's): every iteration tries fresh, uniformly random
//! allowed tokens in the attack slot; an example counts as broken from its first success.

use super::budget::random_token_nominal;
use super::goal::LossKind;
use super::rng::{stream, Purpose};
use super::scoring::score;
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

    fn one<B: Backend>(
        &self,
        v: &Victim<B>,
        s: &mut Subject<B>,
        iteration: usize,
    ) -> Result<StepReport> {
        let model = v.model;
        let mut cache_cost = 0.0;
        if v.fast.prefix_cache {
            s.ensure_cache(model)?;
            if iteration == 1 && !s.prompt.before.is_empty() {
                cache_cost = flops::executed_forward(&model.cfg, 1, s.prompt.before.len(), 0, 0);
            }
        }
        let n = s.state.ids.len();
        let allowed = v.vocab.allowed();
        let mut rng = stream(self.cfg.seed, s.index, iteration, Purpose::RandomTokens);
        let mut draws = 0;
        let ids = loop {
            draws += 1;
            let ids: Vec<u32> = (0..n)
                .map(|_| allowed[rng.random_range(0..allowed.len())])
                .collect();
            let ok = match (self.cfg.filter, &s.retok, v.tok) {
                (true, Some(rc), Some(tok)) => rc.check(tok, &ids)?,
                _ => true,
            };
            if ok {
                break (ids, true);
            }
            if draws == MAX_DRAWS {
                break (ids, false);
            }
        };
        let (ids, passed) = ids;
        let sc = score(v, s, std::slice::from_ref(&ids), None, self.cfg.loss)?;
        s.state.ids = ids;
        Ok(StepReport {
            loss: sc.losses[0],
            success: sc.success[0],
            success_before: false,
            scored: 1,
            rejected: draws - usize::from(passed),
            nominal: random_token_nominal(model.param_count(), s.len(n)),
            executed: sc.executed + cache_cost,
        })
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

    /// Examples are independent here (one short forward each), so they run side by side.
    fn step(
        &self,
        v: &Victim<B>,
        batch: &mut [&mut Subject<B>],
        iteration: usize,
    ) -> Result<Vec<StepReport>> {
        batch
            .par_iter_mut()
            .map(|s| self.one(v, s, iteration))
            .collect()
    }
}

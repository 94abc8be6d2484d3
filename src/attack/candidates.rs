//! GCG candidate generation: top-k tokens per attack position from the one-hot gradient,
//! and sampling swaps (the validity filter is `Gcg::valid`).
//!
//! Top-k and the study's single-swap sampling are the backend's GCG ops
//! ([`crate::backend::cpu::gcg`], the CPU reference the CUDA kernels are checked against),
//! so a run picks the same candidates on either backend. Only nanoGCG's multi-swap mode,
//! which has no kernel, samples here.

use super::vocab::Vocab;
use crate::backend::cpu::gcg::{sample_candidates, topk_onehot};
use crate::error::{Error, Result};
use rand::Rng;

/// Per attack position (row of `grad`, [positions, vocab]), the `k` allowed ids with the
/// most negative gradient (the largest first-order decrease of the loss), ordered by
/// (value, id); NaN sorts last. Returns [positions, k'] with k' = min(k, allowed ids).
pub fn topk(grad: &[f32], positions: usize, vocab: &Vocab, k: usize) -> Result<(Vec<u32>, usize)> {
    let v = vocab.model_vocab();
    if grad.len() != positions * v {
        return Err(Error::input(format!(
            "top-k: gradient has {} values, expected {positions} positions x {v} vocab",
            grad.len()
        )));
    }
    let k = k.min(vocab.allowed().len());
    let ids = topk_onehot(grad, positions, v, k, vocab.forbidden())?;
    Ok((ids, k))
}

/// The swaps of one GCG iteration: which stream of randomness draws them.
#[derive(Clone, Copy, Debug)]
pub struct SampleKey {
    /// Keys the permutation of the study's single-swap pool (the backend op's seed).
    pub seed: u64,
    /// The iteration (the backend op's counter).
    pub counter: u64,
}

/// `n` candidates from `current`. With `n_replace` = 1 (the study), each candidate swaps
/// one token and the (position, token) pairs are drawn without replacement from the
/// positions x k pool (so at most positions x k candidates), by the backend's sampling op.
/// With more, each candidate swaps `n_replace` distinct positions, each to a uniform pick
/// of its top-k (nanoGCG), drawn from `rng`.
pub fn sample(
    topk: &[u32],
    k: usize,
    current: &[u32],
    n: usize,
    n_replace: usize,
    key: SampleKey,
    rng: &mut impl Rng,
) -> Result<Vec<Vec<u32>>> {
    let positions = current.len();
    if topk.len() != positions * k || positions == 0 {
        return Err(Error::input(format!(
            "sample: top-k table has {} ids for {positions} positions x k = {k}",
            topk.len()
        )));
    }
    if n_replace == 0 || n_replace > positions {
        return Err(Error::input(format!(
            "n_replace = {n_replace} must be in 1..={positions} (the attack length)"
        )));
    }
    if n_replace == 1 {
        let n = n.min(positions * k);
        let c = sample_candidates(topk, current, k, n, key.seed, key.counter)?;
        return Ok(c.tokens.chunks(positions).map(<[u32]>::to_vec).collect());
    }
    let mut order: Vec<usize> = (0..positions).collect();
    let out = (0..n)
        .map(|_| {
            let mut c = current.to_vec();
            for i in 0..n_replace {
                let j = rng.random_range(i..positions);
                order.swap(i, j);
                let p = order[i];
                c[p] = topk[p * k + rng.random_range(0..k)];
            }
            c
        })
        .collect();
    Ok(out)
}

/// Index of the first position where `a` and `b` differ (`a.len()` if none).
pub fn first_diff(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len())
}

/// A loss for comparing: NaN counts as +inf (a failed evaluation never wins).
pub fn nan_last(x: f32) -> f32 {
    if x.is_nan() {
        f32::INFINITY
    } else {
        x
    }
}

/// Index of the smallest loss (NaN counts as +inf; ties go to the lowest index).
pub fn argmin(losses: &[f32]) -> Option<usize> {
    (0..losses.len()).reduce(|b, i| {
        if nan_last(losses[i]) < nan_last(losses[b]) {
            i
        } else {
            b
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn single_swaps_are_distinct_pairs() {
        let (p, k) = (4, 3);
        let topk: Vec<u32> = (0..(p * k) as u32).map(|x| 100 + x).collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let key = SampleKey {
            seed: 1,
            counter: 2,
        };
        let c = sample(&topk, k, &[1; 4], 50, 1, key, &mut rng).unwrap();
        assert_eq!(c.len(), p * k);
        let mut seen: Vec<Vec<u32>> = c.clone();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), p * k);
        assert!(c.iter().all(|x| x.iter().filter(|&&t| t != 1).count() == 1));
    }

    #[test]
    fn topk_skips_disallowed_and_orders_by_value_then_id() {
        let vocab = Vocab::range(1, 6, 6).unwrap();
        let g = [-9.0, 3.0, -1.0, -1.0, f32::NAN, 0.0];
        let (ids, k) = topk(&g, 1, &vocab, 4).unwrap();
        assert_eq!((ids, k), (vec![2, 3, 5, 1], 4));
    }

    #[test]
    fn argmin_ignores_nan_and_prefers_low_index() {
        assert_eq!(argmin(&[f32::NAN, 2.0, 1.0, 1.0]), Some(2));
        assert_eq!(argmin(&[]), None);
    }
}

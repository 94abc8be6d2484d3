//! GCG candidate generation: top-k tokens per attack position from the one-hot gradient,
//! sampling swaps without replacement, and the retokenization filter.

use super::vocab::Vocab;
use crate::error::{Error, Result};
use crate::task::RetokCheck;
use crate::tokenize::Tokenizer;
use rand::Rng;
use rayon::prelude::*;

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
    if k == 0 {
        return Err(Error::input("top-k: k must be at least 1"));
    }
    let out: Vec<Vec<u32>> = (0..positions)
        .into_par_iter()
        .map(|p| {
            let row = &grad[p * v..(p + 1) * v];
            let mut ids: Vec<u32> = vocab.allowed().to_vec();
            let key = |&id: &u32| (sort_key(row[id as usize]), id);
            ids.select_nth_unstable_by_key(k - 1, key);
            ids.truncate(k);
            ids.sort_unstable_by_key(key);
            ids
        })
        .collect();
    Ok((out.concat(), k))
}

/// Order-preserving map of an f32 to a u32 (NaN after +inf), for a total order.
fn sort_key(v: f32) -> u32 {
    if v.is_nan() {
        return u32::MAX;
    }
    let u = v.to_bits();
    if u & 0x8000_0000 != 0 {
        !u
    } else {
        u | 0x8000_0000
    }
}

/// `n` candidates from `current`. With `n_replace` = 1 (the study), each candidate swaps
/// one token and the (position, token) pairs are drawn without replacement from the
/// positions x k pool (so at most positions x k candidates). With more, each candidate
/// swaps `n_replace` distinct positions, each to a uniform pick of its top-k (nanoGCG).
pub fn sample(
    topk: &[u32],
    k: usize,
    current: &[u32],
    n: usize,
    n_replace: usize,
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
        // Partial Fisher-Yates over the pool: n distinct (position, token) pairs.
        let mut pool: Vec<u32> = (0..(positions * k) as u32).collect();
        let n = n.min(pool.len());
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let j = rng.random_range(i..pool.len());
            pool.swap(i, j);
            let e = pool[i] as usize;
            let mut c = current.to_vec();
            c[e / k] = topk[e];
            out.push(c);
        }
        return Ok(out);
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

/// Which candidates pass the retokenization check (all of them without a check), checked
/// on rayon's pool; the order of the result is the order of `cands`.
pub fn filter(check: Option<(&RetokCheck, &Tokenizer)>, cands: &[Vec<u32>]) -> Result<Vec<bool>> {
    match check {
        None => Ok(vec![true; cands.len()]),
        Some((rc, tok)) => cands.par_iter().map(|c| rc.check(tok, c)).collect(),
    }
}

/// Index of the first position where `a` and `b` differ (`a.len()` if none).
pub fn first_diff(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len())
}

/// Index of the smallest loss (NaN counts as +inf; ties go to the lowest index).
pub fn argmin(losses: &[f32]) -> Option<usize> {
    let key = |x: f32| if x.is_nan() { f32::INFINITY } else { x };
    (0..losses.len()).reduce(|b, i| {
        if key(losses[i]) < key(losses[b]) {
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
        let c = sample(&topk, k, &[1; 4], 50, 1, &mut rng).unwrap();
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

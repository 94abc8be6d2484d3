//! GCG ops, CPU reference (the CUDA kernels in kernels/gcg.cu and kernels/loss.cu are checked
//! against these): one-hot-gradient top-k per position, candidate sampling, per-candidate
//! loss with arg-min, and the LM-head cross-entropy that never holds a full [rows, vocab]
//! logits tensor.
//!
//! Top-k and sampling are integer procedures with a fully specified order, so the CPU and
//! the GPU agree bit for bit:
//! - top-k orders by (value, token id): the smallest gradient first (GCG swaps in tokens
//!   whose one-hot gradient is most negative), ties to the lower id, NaN after +inf;
//! - candidate i takes pool entry `perm(i)` of the positions x k pool, where `perm` is a
//!   keyed pseudo-random permutation (4-round Feistel on 32-bit words with Wellons' lowbias32
//!   as round function, cycle-walked into range), so pairs are drawn without replacement.

use crate::error::{Error, Result};

/// Largest k the top-k kernel supports (it sorts in one block's shared memory).
pub const TOPK_MAX: usize = 256;
/// Vocabulary columns per chunk of the LM-head cross-entropy (CPU and GPU alike).
pub const LM_HEAD_CHUNK: usize = 8192;

const KEY_NAN: u32 = 0xFFFF_FFFE;
const KEY_FORBIDDEN: u32 = 0xFFFF_FFFF;

/// Order-preserving map of an f32 to a u32: ascending floats give ascending keys; NaN maps
/// past +inf.
pub fn sort_key(v: f32) -> u32 {
    if v.is_nan() {
        return KEY_NAN;
    }
    let u = v.to_bits();
    if u & 0x8000_0000 != 0 {
        !u
    } else {
        u | 0x8000_0000
    }
}

/// Bitmask of forbidden ids: bit `id % 32` of word `id / 32`.
pub fn forbid_mask(vocab: usize, forbidden: &[u32]) -> Vec<u32> {
    let mut mask = vec![0u32; vocab.div_ceil(32)];
    for &id in forbidden {
        if (id as usize) < vocab {
            mask[id as usize / 32] |= 1 << (id % 32);
        }
    }
    mask
}

/// Validates a top-k request; returns the number of allowed ids.
pub fn check_topk(
    rows: usize,
    vocab: usize,
    k: usize,
    forbidden: &[u32],
    len: usize,
) -> Result<()> {
    if k == 0 || k > TOPK_MAX {
        return Err(Error::input(format!(
            "top-k: k = {k} must be in 1..={TOPK_MAX}"
        )));
    }
    if len < rows * vocab {
        return Err(Error::input(format!(
            "top-k: gradient has {len} values, need rows x vocab = {rows} x {vocab}"
        )));
    }
    let mask = forbid_mask(vocab, forbidden);
    let allowed = vocab - mask.iter().map(|w| w.count_ones() as usize).sum::<usize>();
    if k > allowed {
        return Err(Error::input(format!(
            "top-k: k = {k} but only {allowed} of {vocab} token ids are allowed"
        )));
    }
    Ok(())
}

/// Per row of `grad` [rows, vocab]: the `k` allowed ids with the smallest values, ordered by
/// (value, id). Returns [rows, k].
pub fn topk_onehot(
    grad: &[f32],
    rows: usize,
    vocab: usize,
    k: usize,
    forbidden: &[u32],
) -> Result<Vec<u32>> {
    check_topk(rows, vocab, k, forbidden, grad.len())?;
    let mask = forbid_mask(vocab, forbidden);
    let mut out = Vec::with_capacity(rows * k);
    let mut keyed: Vec<u64> = Vec::with_capacity(vocab);
    for r in 0..rows {
        keyed.clear();
        for (i, &v) in grad[r * vocab..(r + 1) * vocab].iter().enumerate() {
            let key = if mask[i / 32] >> (i % 32) & 1 == 1 {
                KEY_FORBIDDEN
            } else {
                sort_key(v)
            };
            keyed.push((key as u64) << 32 | i as u64);
        }
        keyed.select_nth_unstable(k - 1);
        let mut best = keyed[..k].to_vec();
        best.sort_unstable();
        out.extend(best.iter().map(|&x| x as u32));
    }
    Ok(out)
}

/// Wellons' lowbias32 integer hash (also in kernels/common.cuh).
pub fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// The four Feistel round keys for a (seed, counter) pair.
pub fn round_keys(seed: u64, counter: u64) -> [u32; 4] {
    std::array::from_fn(|r| {
        mix32(
            seed as u32
                ^ mix32(
                    (seed >> 32) as u32
                        ^ mix32(
                            counter as u32
                                ^ mix32(
                                    (counter >> 32) as u32
                                        ^ mix32((r as u32).wrapping_add(0x9E37_79B9)),
                                ),
                        ),
                ),
        )
    })
}

/// Keyed permutation of 0..n (n >= 1): Feistel on the smallest even bit width covering n,
/// cycle-walked until the value falls below n.
pub fn feistel_perm(i: u32, n: u32, key: &[u32; 4]) -> u32 {
    let mut bits = 2u32;
    while bits < 32 && (1u64 << bits) < n as u64 {
        bits += 2;
    }
    let half = bits / 2;
    let mask = ((1u64 << half) - 1) as u32;
    let mut x = i;
    loop {
        let (mut l, mut r) = (x >> half, x & mask);
        for k in key {
            let nl = r;
            r = l ^ (mix32(r ^ k) & mask);
            l = nl;
        }
        x = (l << half) | r;
        if x < n {
            return x;
        }
    }
}

/// Sampled GCG candidates: `tokens` [cands, positions], and each candidate's swap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidates {
    pub tokens: Vec<u32>,
    pub pos: Vec<u32>,
    pub tok: Vec<u32>,
}

pub fn check_sample(topk_len: usize, positions: usize, k: usize, cands: usize) -> Result<()> {
    if positions == 0 || k == 0 || topk_len != positions * k {
        return Err(Error::input(format!(
            "sample: top-k table has {topk_len} ids, expected positions x k = {positions} x {k} (both > 0)"
        )));
    }
    if cands > positions * k || positions * k > u32::MAX as usize {
        return Err(Error::input(format!(
            "sample: {cands} candidates drawn without replacement from a pool of {positions} x {k}"
        )));
    }
    Ok(())
}

/// Candidate i = `current` with position p set to `topk[p, j % k]`, j = perm(i), p = j / k.
pub fn sample_candidates(
    topk: &[u32],
    current: &[u32],
    k: usize,
    cands: usize,
    seed: u64,
    counter: u64,
) -> Result<Candidates> {
    let positions = current.len();
    check_sample(topk.len(), positions, k, cands)?;
    let key = round_keys(seed, counter);
    let n = (positions * k) as u32;
    let mut out = Candidates {
        tokens: Vec::with_capacity(cands * positions),
        pos: Vec::with_capacity(cands),
        tok: Vec::with_capacity(cands),
    };
    for i in 0..cands as u32 {
        let j = feistel_perm(i, n, &key);
        let p = j / k as u32;
        let t = topk[j as usize];
        out.pos.push(p);
        out.tok.push(t);
        out.tokens.extend_from_slice(current);
        let last = out.tokens.len() - positions;
        out.tokens[last + p as usize] = t;
    }
    Ok(out)
}

/// Per-candidate loss = sum of row_loss[j] * scale[j] over offsets[c]..offsets[c + 1], and the
/// arg-min (NaN counts as +inf; ties go to the lowest index). Empty input gives (vec![], 0).
pub fn candidate_losses(row_loss: &[f32], scale: &[f32], offsets: &[u32]) -> (Vec<f32>, usize) {
    let cands = offsets.len().saturating_sub(1);
    let mut losses = Vec::with_capacity(cands);
    let (mut best, mut best_i) = (f32::INFINITY, 0usize);
    for c in 0..cands {
        let mut s = 0.0f32;
        for j in offsets[c] as usize..offsets[c + 1] as usize {
            s += row_loss[j] * scale[j];
        }
        losses.push(s);
        let v = if s.is_nan() { f32::INFINITY } else { s };
        if c == 0 || v < best {
            best = v;
            best_i = c;
        }
    }
    (losses, best_i)
}

/// LM-head cross-entropy of rows `h` [rows, hidden] against `head` [vocab, hidden], processed
/// LM_HEAD_CHUNK vocab columns at a time: pass 1 keeps an online (max, sum exp) per row and the
/// target logit; with `grad`, pass 2 recomputes each chunk, turns it into
/// dlogits = (softmax - onehot) * scale and writes dh = dlogits . head (overwritten) and
/// dhead += dlogits^T . h. Returns the loss per row (lse - target logit).
#[allow(clippy::too_many_arguments)]
pub fn lm_head_ce(
    h: &[f32],
    head: &[f32],
    targets: &[u32],
    scale: &[f32],
    hidden: usize,
    vocab: usize,
    grad: Option<(&mut [f32], Option<&mut [f32]>)>,
) -> Vec<f32> {
    use super::gemm;
    let rows = targets.len();
    let mut m = vec![f32::NEG_INFINITY; rows];
    let mut s = vec![0.0f32; rows];
    let mut tgt = vec![0.0f32; rows];
    let mut logits = vec![0.0f32; rows * LM_HEAD_CHUNK];
    for c0 in (0..vocab).step_by(LM_HEAD_CHUNK) {
        let cols = LM_HEAD_CHUNK.min(vocab - c0);
        let chunk = &mut logits[..rows * cols];
        gemm::linear(
            chunk,
            h,
            &head[c0 * hidden..(c0 + cols) * hidden],
            rows,
            hidden,
            cols,
            false,
        );
        for r in 0..rows {
            let l = &chunk[r * cols..(r + 1) * cols];
            let mx = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let m_new = m[r].max(mx);
            let acc: f32 = l.iter().map(|&x| (x - m_new).exp()).sum();
            s[r] = s[r] * (m[r] - m_new).exp() + acc;
            m[r] = m_new;
            let t = targets[r] as usize;
            if (c0..c0 + cols).contains(&t) {
                tgt[r] = l[t - c0];
            }
        }
    }
    let lse: Vec<f32> = m.iter().zip(&s).map(|(&m, &s)| m + s.ln()).collect();
    let losses = lse.iter().zip(&tgt).map(|(l, t)| l - t).collect();
    if let Some((dh, mut dhead)) = grad {
        dh[..rows * hidden].fill(0.0);
        for c0 in (0..vocab).step_by(LM_HEAD_CHUNK) {
            let cols = LM_HEAD_CHUNK.min(vocab - c0);
            let w = &head[c0 * hidden..(c0 + cols) * hidden];
            let chunk = &mut logits[..rows * cols];
            gemm::linear(chunk, h, w, rows, hidden, cols, false);
            for r in 0..rows {
                for (i, x) in chunk[r * cols..(r + 1) * cols].iter_mut().enumerate() {
                    let mut g = (*x - lse[r]).exp() * scale[r];
                    if c0 + i == targets[r] as usize {
                        g -= scale[r];
                    }
                    *x = g;
                }
            }
            gemm::linear_bwd_input(dh, chunk, w, rows, hidden, cols, true);
            if let Some(dw) = dhead.as_deref_mut() {
                gemm::linear_bwd_weight(
                    &mut dw[c0 * hidden..(c0 + cols) * hidden],
                    chunk,
                    h,
                    rows,
                    hidden,
                    cols,
                );
            }
        }
    }
    losses
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_key_orders_floats() {
        let xs = [
            f32::NEG_INFINITY,
            -2.0,
            -0.0,
            0.0,
            1e-30,
            3.0,
            f32::INFINITY,
            f32::NAN,
        ];
        for w in xs.windows(2) {
            assert!(sort_key(w[0]) < sort_key(w[1]), "{} vs {}", w[0], w[1]);
        }
    }

    #[test]
    fn permutation_is_a_bijection() {
        for n in [1u32, 2, 3, 7, 64, 100, 1000, 4097] {
            let key = round_keys(42, n as u64);
            let mut seen = vec![false; n as usize];
            for i in 0..n {
                let j = feistel_perm(i, n, &key) as usize;
                assert!(!seen[j], "n={n}: {j} twice");
                seen[j] = true;
            }
        }
    }

    #[test]
    fn topk_orders_by_value_then_id_and_skips_forbidden() {
        let g = [3.0, -1.0, -1.0, f32::NAN, -5.0, 0.0];
        let ids = topk_onehot(&g, 1, 6, 4, &[4]).unwrap();
        assert_eq!(ids, vec![1, 2, 5, 0]);
        assert!(topk_onehot(&g, 1, 6, 6, &[4]).is_err());
    }

    #[test]
    fn candidates_are_distinct_single_swaps() {
        let (p, k) = (5, 4);
        let topk: Vec<u32> = (0..(p * k) as u32).map(|x| 100 + x).collect();
        let cur = vec![1u32; p];
        let c = sample_candidates(&topk, &cur, k, p * k, 7, 3).unwrap();
        let mut pairs: Vec<(u32, u32)> = c.pos.iter().copied().zip(c.tok.iter().copied()).collect();
        pairs.sort();
        pairs.dedup();
        assert_eq!(pairs.len(), p * k);
        for (i, row) in c.tokens.chunks(p).enumerate() {
            assert_eq!(row.iter().filter(|&&t| t != 1).count(), 1);
            assert_eq!(row[c.pos[i] as usize], c.tok[i]);
        }
    }

    #[test]
    fn candidate_argmin_treats_nan_as_inf_and_ties_low() {
        let (l, best) = candidate_losses(&[f32::NAN, 2.0, 1.0, 1.0], &[1.0; 4], &[0, 1, 2, 3, 4]);
        assert!(l[0].is_nan());
        assert_eq!(best, 2);
    }

    #[test]
    fn lm_head_ce_matches_full_softmax() {
        let (rows, hidden, vocab) = (3, 5, LM_HEAD_CHUNK + 37);
        let h: Vec<f32> = (0..rows * hidden)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.1)
            .collect();
        let w: Vec<f32> = (0..vocab * hidden)
            .map(|i| ((i * 13 % 17) as f32 - 8.0) * 0.05)
            .collect();
        let targets = [0u32, LM_HEAD_CHUNK as u32 + 3, 17];
        let scale = [1.0f32, 0.5, 2.0];
        let losses = lm_head_ce(&h, &w, &targets, &scale, hidden, vocab, None);
        let mut logits = vec![0.0; rows * vocab];
        super::super::gemm::linear(&mut logits, &h, &w, rows, hidden, vocab, false);
        let mut d = vec![0.0; rows * vocab];
        let want = super::super::loss::cross_entropy(&mut d, &logits, &targets, &scale, vocab);
        assert_eq!(losses.len(), rows);
        assert_eq!(want.len(), rows);
        for (a, b) in losses.iter().zip(&want) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }
}

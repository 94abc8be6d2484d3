//! Causal multi-head attention with GQA and an optional shared prefix, forward and backward.
//! Parallel over (sequence, kv head) so the backward's dK/dV writes never race: all query
//! heads that share a kv head are handled by the same task.

use super::gemm;
use crate::backend::AttnShape;
use rayon::prelude::*;

/// Dot product in eight independent partial sums: a single running sum is one long
/// dependency chain the compiler may not reorder (no fast-math), so it cannot use SIMD.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// acc += p * v
fn axpy(acc: &mut [f32], p: f32, v: &[f32]) {
    for (a, &x) in acc.iter_mut().zip(v) {
        *a += p * x;
    }
}

/// Raw pointer wrapper for disjoint parallel writes.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only for writes to disjoint index sets, one per rayon task (see callers).
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    // A method (not field access) so closures capture the whole Send wrapper.
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

pub fn attention_fwd(
    out: &mut [f32],
    lse: &mut [f32],
    qkv: &[f32],
    prefix: Option<&[f32]>,
    lens: &[usize],
    s: AttnShape,
) {
    let (hd, nh, nkv, t_len, p_len) = (s.head_dim, s.heads, s.kv_heads, s.seq, s.prefix);
    let width = s.qkv_dim();
    let group = nh / nkv;
    let scale = 1.0 / (hd as f32).sqrt();
    let out_w = nh * hd;
    assert_eq!(out.len(), s.batch * t_len * out_w);
    assert_eq!(lse.len(), s.batch * t_len * nh);
    if let (Some(pre), true) = (prefix, p_len > 0) {
        return attention_fwd_prefix(out, lse, qkv, pre, lens, s);
    }
    let out_p = SendPtr(out.as_mut_ptr());
    let lse_p = SendPtr(lse.as_mut_ptr());
    (0..s.batch * nkv).into_par_iter().for_each(|task| {
        let (b, kvh) = (task / nkv, task % nkv);
        let len = lens[b];
        let k_off = (nh + kvh) * hd;
        let v_off = (nh + nkv + kvh) * hd;
        let mut scores = vec![0.0f32; p_len + t_len];
        let mut acc = vec![0.0f32; hd];
        for qh in kvh * group..(kvh + 1) * group {
            for t in 0..t_len {
                let row = b * t_len + t;
                let q = &qkv[row * width + qh * hd..row * width + (qh + 1) * hd];
                // keys: the whole prefix, then new positions 0..=t that are real tokens
                let n_new = (t + 1).min(len);
                let n = p_len + n_new;
                let mut max = f32::NEG_INFINITY;
                for (j, score) in scores.iter_mut().enumerate().take(n) {
                    let krow = if j < p_len {
                        &prefix.unwrap()[j * width + k_off..j * width + k_off + hd]
                    } else {
                        let r = b * t_len + (j - p_len);
                        &qkv[r * width + k_off..r * width + k_off + hd]
                    };
                    let sc = dot(q, krow) * scale;
                    *score = sc;
                    max = max.max(sc);
                }
                acc.fill(0.0);
                let mut sum = 0.0f32;
                for (j, &score) in scores.iter().enumerate().take(n) {
                    let p = (score - max).exp();
                    sum += p;
                    let vrow = if j < p_len {
                        &prefix.unwrap()[j * width + v_off..j * width + v_off + hd]
                    } else {
                        let r = b * t_len + (j - p_len);
                        &qkv[r * width + v_off..r * width + v_off + hd]
                    };
                    axpy(&mut acc, p, vrow);
                }
                // A padded query past the end of an empty sequence sees no keys at all.
                let inv = if n > 0 { 1.0 / sum } else { 0.0 };
                // SAFETY: row `row`, head `qh` belong to this task alone (b, kvh fixed,
                // qh in this kv head's group); indices are in bounds by the asserts above.
                unsafe {
                    let o = out_p.ptr().add(row * out_w + qh * hd);
                    for (d, &a) in acc.iter().enumerate() {
                        *o.add(d) = a * inv;
                    }
                    *lse_p.ptr().add(row * nh + qh) = if n > 0 { max + sum.ln() } else { 0.0 };
                }
            }
        }
    });
}

/// [`attention_fwd`] with a shared prefix: the part every query shares — its scores
/// against the prefix keys and their weighted sum of prefix values — is two GEMMs per head
/// over all rows of the batch (scoring runs ~1,000 candidate rows against one cached
/// prompt, and a per-row dot loop left this op at a third of a GCG iteration). Only the
/// few keys of each row's own sequence are handled row by row, in the same softmax.
fn attention_fwd_prefix(
    out: &mut [f32],
    lse: &mut [f32],
    qkv: &[f32],
    prefix: &[f32],
    lens: &[usize],
    s: AttnShape,
) {
    let (hd, nh, nkv, t_len, p_len) = (s.head_dim, s.heads, s.kv_heads, s.seq, s.prefix);
    let (width, group, out_w) = (s.qkv_dim(), nh / nkv, nh * hd);
    let rows = s.batch * t_len;
    let scale = 1.0 / (hd as f32).sqrt();
    assert!(
        prefix.len() >= p_len * width,
        "prefix has fewer than {p_len} rows"
    );
    let mut probs = vec![0.0f32; rows * p_len];
    for qh in 0..nh {
        let kvh = qh / group;
        let (k_off, v_off) = ((nh + kvh) * hd, (nh + nkv + kvh) * hd);
        // probs[r, j] = q[r] . k_prefix[j]
        gemm::sgemm(
            rows,
            p_len,
            hd,
            &mut probs,
            p_len,
            false,
            &qkv[qh * hd..],
            width,
            1,
            &prefix[k_off..],
            1,
            width,
        );
        // Per row: scores against its own sequence's keys, one softmax over both parts,
        // the own-key values summed into `out`; the prefix part is left as probabilities.
        probs
            .par_chunks_mut(p_len)
            .zip(out.par_chunks_mut(out_w))
            .zip(lse.par_chunks_mut(nh))
            .enumerate()
            .for_each(|(row, ((pr, o), l))| {
                let (b, t) = (row / t_len, row % t_len);
                let q = &qkv[row * width + qh * hd..][..hd];
                let own = |j: usize, off: usize| &qkv[(b * t_len + j) * width + off..][..hd];
                let n_new = (t + 1).min(lens[b]);
                let mut new = [0.0f32; 64];
                let mut new_vec;
                let sc: &mut [f32] = if n_new <= new.len() {
                    &mut new[..n_new]
                } else {
                    new_vec = vec![0.0f32; n_new];
                    &mut new_vec
                };
                for (j, x) in sc.iter_mut().enumerate() {
                    *x = dot(q, own(j, k_off)) * scale;
                }
                let mut max = f32::NEG_INFINITY;
                for x in pr.iter_mut() {
                    *x *= scale;
                    max = max.max(*x);
                }
                max = sc.iter().fold(max, |m, &x| m.max(x));
                let mut sum = 0.0f32;
                for x in pr.iter_mut().chain(sc.iter_mut()) {
                    *x = (*x - max).exp();
                    sum += *x;
                }
                let inv = 1.0 / sum;
                pr.iter_mut().for_each(|x| *x *= inv);
                let o = &mut o[qh * hd..(qh + 1) * hd];
                o.fill(0.0);
                for (j, &p) in sc.iter().enumerate() {
                    axpy(o, p * inv, own(j, v_off));
                }
                l[qh] = max + sum.ln();
            });
        // out[r, head] += probs[r, :] . v_prefix
        gemm::sgemm(
            rows,
            hd,
            p_len,
            &mut out[qh * hd..],
            out_w,
            true,
            &probs,
            p_len,
            1,
            &prefix[v_off..],
            width,
            1,
        );
    }
}

#[allow(clippy::too_many_arguments)]
pub fn attention_bwd(
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    prefix: Option<&[f32]>,
    out: &[f32],
    lse: &[f32],
    lens: &[usize],
    s: AttnShape,
) {
    let (hd, nh, nkv, t_len) = (s.head_dim, s.heads, s.kv_heads, s.seq);
    let width = s.qkv_dim();
    let p_len = s.prefix;
    let pre = prefix.unwrap_or(&[]);
    assert!(
        pre.len() >= p_len * width,
        "attention backward: prefix of {p_len} rows needs its qkv"
    );
    let group = nh / nkv;
    let scale = 1.0 / (hd as f32).sqrt();
    let out_w = nh * hd;
    assert_eq!(dqkv.len(), s.batch * t_len * width);
    dqkv.fill(0.0);
    let dp = SendPtr(dqkv.as_mut_ptr());
    (0..s.batch * nkv).into_par_iter().for_each(|task| {
        let (b, kvh) = (task / nkv, task % nkv);
        let len = lens[b];
        let k_off = (nh + kvh) * hd;
        let v_off = (nh + nkv + kvh) * hd;
        let mut dq = vec![0.0f32; hd];
        for qh in kvh * group..(kvh + 1) * group {
            for t in 0..t_len {
                let row = b * t_len + t;
                let n = (t + 1).min(len);
                if n + p_len == 0 {
                    continue;
                }
                let q = &qkv[row * width + qh * hd..row * width + (qh + 1) * hd];
                let go = &dout[row * out_w + qh * hd..row * out_w + (qh + 1) * hd];
                let o = &out[row * out_w + qh * hd..row * out_w + (qh + 1) * hd];
                let l = lse[row * nh + qh];
                let delta = dot(go, o);
                dq.fill(0.0);
                // Prefix keys: they feed dq; the prefix gets no gradient.
                for j in 0..p_len {
                    let k = &pre[j * width + k_off..j * width + k_off + hd];
                    let v = &pre[j * width + v_off..j * width + v_off + hd];
                    let p = (dot(q, k) * scale - l).exp();
                    let ds = p * (dot(go, v) - delta) * scale;
                    for d in 0..hd {
                        dq[d] += ds * k[d];
                    }
                }
                for j in 0..n {
                    let r = b * t_len + j;
                    let k = &qkv[r * width + k_off..r * width + k_off + hd];
                    let v = &qkv[r * width + v_off..r * width + v_off + hd];
                    let p = (dot(q, k) * scale - l).exp();
                    let ds = p * (dot(go, v) - delta) * scale;
                    // SAFETY: k/v columns of kv head `kvh` in sequence `b` are written only by
                    // this task; q columns of head `qh` likewise. All in bounds (assert above).
                    unsafe {
                        let dk = dp.ptr().add(r * width + k_off);
                        let dv = dp.ptr().add(r * width + v_off);
                        for d in 0..hd {
                            dq[d] += ds * k[d];
                            *dk.add(d) += ds * q[d];
                            *dv.add(d) += p * go[d];
                        }
                    }
                }
                // SAFETY: as above; q columns of (row, qh) belong to this task.
                unsafe {
                    let dqp = dp.ptr().add(row * width + qh * hd);
                    for (d, &g) in dq.iter().enumerate() {
                        *dqp.add(d) += g;
                    }
                }
            }
        }
    });
}

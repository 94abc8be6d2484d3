//! Causal multi-head attention with GQA and an optional shared prefix, forward and backward.
//! Parallel over (sequence, kv head) so the backward's dK/dV writes never race: all query
//! heads that share a kv head are handled by the same task.

use crate::backend::AttnShape;
use rayon::prelude::*;

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
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
                    for (a, &v) in acc.iter_mut().zip(vrow) {
                        *a += p * v;
                    }
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

#[allow(clippy::too_many_arguments)]
pub fn attention_bwd(
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    out: &[f32],
    lse: &[f32],
    lens: &[usize],
    s: AttnShape,
) {
    assert_eq!(
        s.prefix, 0,
        "attention backward through a cached prefix is not supported"
    );
    let (hd, nh, nkv, t_len) = (s.head_dim, s.heads, s.kv_heads, s.seq);
    let width = s.qkv_dim();
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
                if n == 0 {
                    continue;
                }
                let q = &qkv[row * width + qh * hd..row * width + (qh + 1) * hd];
                let go = &dout[row * out_w + qh * hd..row * out_w + (qh + 1) * hd];
                let o = &out[row * out_w + qh * hd..row * out_w + (qh + 1) * hd];
                let l = lse[row * nh + qh];
                let delta = dot(go, o);
                dq.fill(0.0);
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

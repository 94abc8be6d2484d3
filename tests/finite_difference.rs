//! Gradients against central finite differences, independent of the fixtures:
//! (a) every backward op of the CPU backend (plus its forward against a naive f64 version),
//! (b) the whole model's weight gradients and one-hot gradient on small random configs.
//!
//! Scalar objective: L = sum(c * out) with random c, accumulated in f64. The ops run in f32,
//! so the step is 1e-2..1e-3 and an entry passes when
//! |fd - analytic| <= rtol * |analytic| + atol_frac * max|analytic over the tensor|,
//! with (rtol, atol_frac) = OP_TOL for single ops and MODEL_TOL for the whole model (whose
//! f32 loss is noisier). The observed errors are about 10x below these. A checker self-test
//! below shows that a 5% error or two swapped entries are caught.

use armsrace::backend::{AttnShape, Backend, RotaryShape};
use armsrace::model::config::{Activation, NormKind};
use armsrace::model::weights::{param_specs, Slot, Weights};
use armsrace::{Batch, Cpu, GradRequest, Model, ModelConfig, Objective};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

/// (rtol, atol_frac), see the module docs.
type Tol = (f64, f64);
const OP_TOL: Tol = (3e-3, 5e-4);
const MODEL_TOL: Tol = (1e-2, 2e-3);

// ---------------------------------------------------------------------------------------------
// Helpers

struct R(ChaCha8Rng);

impl R {
    fn new(seed: u64) -> Self {
        R(ChaCha8Rng::seed_from_u64(seed))
    }
    /// Uniform in [-scale, scale].
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| (self.0.random::<f32>() * 2.0 - 1.0) * scale)
            .collect()
    }
    fn below(&mut self, n: usize) -> usize {
        self.0.random_range(0..n)
    }
}

fn dot64(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

fn max_abs(x: &[f32]) -> f64 {
    x.iter().fold(0.0f64, |m, &v| m.max((v as f64).abs()))
}

fn sub(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

/// Entries to check: `n` random ones, `n` among the larger gradients, and the largest.
fn pick_entries(analytic: &[f32], n: usize, rng: &mut R) -> Vec<usize> {
    let m = max_abs(analytic);
    let big: Vec<usize> = (0..analytic.len())
        .filter(|&i| (analytic[i] as f64).abs() >= 0.1 * m)
        .collect();
    let mut idx: Vec<usize> = (0..n).map(|_| rng.below(analytic.len())).collect();
    if !big.is_empty() {
        idx.extend((0..n).map(|_| big[rng.below(big.len())]));
    }
    let argmax = (0..analytic.len())
        .max_by(|&a, &b| analytic[a].abs().total_cmp(&analytic[b].abs()))
        .unwrap();
    idx.push(argmax);
    idx.sort_unstable();
    idx.dedup();
    idx
}

/// Central differences of `f` at the chosen entries of `x`, against `analytic`.
fn fd_check(
    x: &[f32],
    analytic: &[f32],
    f: &mut dyn FnMut(&[f32]) -> f64,
    eps: f32,
    entries: &[usize],
    (rtol, atol_frac): Tol,
) -> Result<(), String> {
    assert_eq!(x.len(), analytic.len(), "gradient has the wrong length");
    let atol = atol_frac * max_abs(analytic);
    let mut worst = String::new();
    let mut bad = 0;
    let mut xp = x.to_vec();
    for &i in entries {
        xp[i] = x[i] + eps;
        let (hi, fp) = (xp[i] as f64, f(&xp));
        xp[i] = x[i] - eps;
        let (lo, fm) = (xp[i] as f64, f(&xp));
        xp[i] = x[i];
        let fd = (fp - fm) / (hi - lo);
        let an = analytic[i] as f64;
        let err = (fd - an).abs();
        if err > rtol * an.abs() + atol || !fd.is_finite() || !an.is_finite() {
            bad += 1;
            if worst.is_empty() {
                worst = format!("entry {i}: finite difference {fd:.6e}, analytic {an:.6e}");
            }
        }
    }
    if bad > 0 {
        Err(format!(
            "{bad} of {} entries disagree (max|grad| {:.3e}); first: {worst}",
            entries.len(),
            max_abs(analytic)
        ))
    } else {
        Ok(())
    }
}

/// `fd_check` on `n` picked entries; panics with `what` on failure.
#[allow(clippy::too_many_arguments)]
fn check_grad(
    what: &str,
    x: &[f32],
    analytic: &[f32],
    mut f: impl FnMut(&[f32]) -> f64,
    eps: f32,
    n: usize,
    rng: &mut R,
    tol: Tol,
) {
    assert!(
        max_abs(analytic) > 0.0,
        "{what}: analytic gradient is identically zero (the check would be vacuous)"
    );
    let entries = pick_entries(analytic, n, rng);
    if let Err(e) = fd_check(x, analytic, &mut f, eps, &entries, tol) {
        panic!("{what}: {e}");
    }
}

/// Every entry of `got` close to `want` relative to max|want|.
fn assert_close64(what: &str, got: &[f32], want: &[f64], rel: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            ((g as f64) - w).abs() <= rel * scale,
            "{what}: entry {i}: got {g}, want {w} (max|want| {scale:.3e})"
        );
    }
}

#[test]
fn checker_rejects_wrong_gradients() {
    // L(x) = sum c_i x_i^3: gradient 3 c_i x_i^2.
    let mut rng = R::new(1);
    let x = rng.vec(50, 1.0);
    let c = rng.vec(50, 1.0);
    let mut f = |x: &[f32]| -> f64 {
        x.iter()
            .zip(&c)
            .map(|(&x, &c)| c as f64 * (x as f64).powi(3))
            .sum()
    };
    let good: Vec<f32> = x.iter().zip(&c).map(|(x, c)| 3.0 * c * x * x).collect();
    let all: Vec<usize> = (0..50).collect();
    fd_check(&x, &good, &mut f, 1e-3, &all, OP_TOL).expect("the right gradient passes");
    let scaled: Vec<f32> = good.iter().map(|g| g * 1.05).collect();
    assert!(fd_check(&x, &scaled, &mut f, 1e-3, &all, MODEL_TOL).is_err());
    let mut swapped = good.clone();
    let (a, b) = (
        (0..50)
            .max_by(|&i, &j| good[i].abs().total_cmp(&good[j].abs()))
            .unwrap(),
        (0..50)
            .min_by(|&i, &j| good[i].abs().total_cmp(&good[j].abs()))
            .unwrap(),
    );
    swapped.swap(a, b);
    assert!(fd_check(&x, &swapped, &mut f, 1e-3, &all, MODEL_TOL).is_err());
    // Also through the picker used by the tests.
    let picked = pick_entries(&good, 10, &mut rng);
    assert!(fd_check(&x, &scaled, &mut f, 1e-3, &picked, MODEL_TOL).is_err());
}

// ---------------------------------------------------------------------------------------------
// (a) Backend ops

#[test]
fn matmul_forward_and_backward() {
    let be = Cpu;
    // The second shape is large enough for the gemm crate's parallel path.
    for (seed, m, k, n) in [(10u64, 5usize, 7usize, 6usize), (11, 70, 80, 72)] {
        let mut rng = R::new(seed);
        let inp = rng.vec(m * k, 1.0);
        let w = rng.vec(n * k, 1.0);
        let bias = rng.vec(n, 1.0);
        let c = rng.vec(m * n, 1.0);
        let fwd = |inp: &[f32], w: &[f32], bias: &[f32]| -> Vec<f32> {
            let mut out = be.zeros(m * n);
            be.matmul(
                &mut out,
                &inp.to_vec(),
                &w.to_vec(),
                Some(&bias.to_vec()),
                m,
                k,
                n,
                false,
            );
            out
        };
        // Forward against f64, with and without bias, overwrite and accumulate.
        let naive: Vec<f64> = (0..m * n)
            .map(|idx| {
                let (i, j) = (idx / n, idx % n);
                (0..k)
                    .map(|p| inp[i * k + p] as f64 * w[j * k + p] as f64)
                    .sum::<f64>()
            })
            .collect();
        let with_bias: Vec<f64> = naive
            .iter()
            .enumerate()
            .map(|(i, v)| v + bias[i % n] as f64)
            .collect();
        assert_close64("matmul+bias", &fwd(&inp, &w, &bias), &with_bias, 1e-5);
        let prior = rng.vec(m * n, 1.0);
        for with_b in [false, true] {
            let mut out = prior.clone();
            be.matmul(&mut out, &inp, &w, with_b.then_some(&bias), m, k, n, true);
            let want: Vec<f64> = (0..m * n)
                .map(|i| prior[i] as f64 + if with_b { with_bias[i] } else { naive[i] })
                .collect();
            assert_close64("matmul accumulate", &out, &want, 1e-5);
        }
        let mut out = rng.vec(m * n, 9.0); // garbage is overwritten
        be.matmul(&mut out, &inp, &w, None, m, k, n, false);
        assert_close64("matmul overwrite", &out, &naive, 1e-5);

        // Backward. dinp: overwrite and accumulate modes; dw and dbias accumulate.
        let mut dinp = rng.vec(m * k, 9.0);
        let mut dw_prior = rng.vec(n * k, 1.0);
        let dw0 = dw_prior.clone();
        let mut db_prior = rng.vec(n, 1.0);
        let db0 = db_prior.clone();
        be.matmul_bwd(
            Some((&mut dinp, false)),
            Some(&mut dw_prior),
            Some(&mut db_prior),
            &c,
            &inp,
            &w,
            m,
            k,
            n,
        );
        let dw = sub(&dw_prior, &dw0);
        let db = sub(&db_prior, &db0);
        let pre = rng.vec(m * k, 1.0);
        let mut dinp_acc = pre.clone();
        be.matmul_bwd(
            Some((&mut dinp_acc, true)),
            None,
            None,
            &c,
            &inp,
            &w,
            m,
            k,
            n,
        );
        let dinp_acc_only = sub(&dinp_acc, &pre);
        let tol = 1e-5 * max_abs(&dinp) as f32;
        for (a, b) in dinp.iter().zip(&dinp_acc_only) {
            assert!((a - b).abs() <= tol, "dinp accumulate mode: {a} vs {b}");
        }
        let l = |out: Vec<f32>| dot64(&out, &c);
        check_grad(
            "matmul dinp",
            &inp,
            &dinp,
            |x| l(fwd(x, &w, &bias)),
            1e-2,
            20,
            &mut rng,
            OP_TOL,
        );
        check_grad(
            "matmul dw",
            &w,
            &dw,
            |x| l(fwd(&inp, x, &bias)),
            1e-2,
            20,
            &mut rng,
            OP_TOL,
        );
        check_grad(
            "matmul dbias",
            &bias,
            &db,
            |x| l(fwd(&inp, &w, x)),
            1e-2,
            20,
            &mut rng,
            OP_TOL,
        );
    }
}

#[test]
fn norm_forward_and_backward() {
    let be = Cpu;
    let (rows, dim, eps) = (5usize, 24usize, 1e-5f32);
    for kind in [NormKind::LayerNorm, NormKind::RmsNorm] {
        let mut rng = R::new(20 + kind as u64);
        // Offset rows so LayerNorm's mean matters.
        let x: Vec<f32> = rng.vec(rows * dim, 1.0).iter().map(|v| v + 0.7).collect();
        let w: Vec<f32> = rng.vec(dim, 0.5).iter().map(|v| v + 1.0).collect();
        let b = (kind == NormKind::LayerNorm).then(|| rng.vec(dim, 0.5));
        let c = rng.vec(rows * dim, 1.0);
        let fwd = |x: &[f32], w: &[f32], b: Option<&[f32]>| -> (Vec<f32>, Vec<f32>, Vec<f32>) {
            let (mut out, mut mean, mut rstd) =
                (be.zeros(rows * dim), be.zeros(rows), be.zeros(rows));
            be.norm(
                kind,
                &mut out,
                &mut mean,
                &mut rstd,
                &x.to_vec(),
                &w.to_vec(),
                b.map(|b| b.to_vec()).as_ref(),
                rows,
                dim,
                eps,
            );
            (out, mean, rstd)
        };
        // Forward against f64.
        let (out, mean, rstd) = fwd(&x, &w, b.as_deref());
        let mut want = vec![0.0f64; rows * dim];
        for r in 0..rows {
            let xr: Vec<f64> = x[r * dim..(r + 1) * dim]
                .iter()
                .map(|&v| v as f64)
                .collect();
            let mu = match kind {
                NormKind::LayerNorm => xr.iter().sum::<f64>() / dim as f64,
                NormKind::RmsNorm => 0.0,
            };
            let var = xr.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / dim as f64;
            let rs = 1.0 / (var + eps as f64).sqrt();
            assert!(((mean[r] as f64) - mu).abs() < 1e-6, "{kind:?} mean");
            assert!(((rstd[r] as f64) - rs).abs() < 1e-6 * rs, "{kind:?} rstd");
            for i in 0..dim {
                want[r * dim + i] =
                    (xr[i] - mu) * rs * w[i] as f64 + b.as_ref().map_or(0.0, |b| b[i] as f64);
            }
        }
        assert_close64(&format!("{kind:?} forward"), &out, &want, 1e-5);

        // Backward: dx, dw, db all accumulate into what is there.
        let dx0 = rng.vec(rows * dim, 1.0);
        let dw0 = rng.vec(dim, 1.0);
        let db0 = rng.vec(dim, 1.0);
        let (mut dx, mut dw, mut db) = (dx0.clone(), dw0.clone(), db0.clone());
        be.norm_bwd(
            kind,
            &mut dx,
            Some(&mut dw),
            b.is_some().then_some(&mut db),
            &c,
            &x,
            &mean,
            &rstd,
            &w,
            rows,
            dim,
        );
        let (dx, dw, db) = (sub(&dx, &dx0), sub(&dw, &dw0), sub(&db, &db0));
        let l = |o: (Vec<f32>, Vec<f32>, Vec<f32>)| dot64(&o.0, &c);
        let name = format!("{kind:?}");
        check_grad(
            &format!("{name} dx"),
            &x,
            &dx,
            |v| l(fwd(v, &w, b.as_deref())),
            1e-3,
            20,
            &mut rng,
            OP_TOL,
        );
        check_grad(
            &format!("{name} dw"),
            &w,
            &dw,
            |v| l(fwd(&x, v, b.as_deref())),
            1e-3,
            20,
            &mut rng,
            OP_TOL,
        );
        match &b {
            Some(bv) => check_grad(
                &format!("{name} db"),
                bv,
                &db,
                |v| l(fwd(&x, &w, Some(v))),
                1e-3,
                20,
                &mut rng,
                OP_TOL,
            ),
            None => assert_eq!(db, vec![0.0; dim], "RMSNorm must not touch db"),
        }
    }
}

/// Rotary by an independent f64 computation (angles rounded through f32 as transformers does).
fn rotary_naive(qkv: &[f32], positions: &[u32], s: RotaryShape) -> Vec<f64> {
    let width = (s.heads + 2 * s.kv_heads) * s.head_dim;
    let half = s.rot_dims / 2;
    let mut out: Vec<f64> = qkv.iter().map(|&v| v as f64).collect();
    for (r, &pos) in positions.iter().enumerate() {
        for h in 0..s.heads + s.kv_heads {
            let base = r * width + h * s.head_dim;
            for i in 0..half {
                let inv = 1.0f32 / s.base.powf((2 * i) as f32 / s.rot_dims as f32);
                let a = (pos as f32 * inv) as f64;
                let (x1, x2) = (qkv[base + i] as f64, qkv[base + i + half] as f64);
                out[base + i] = x1 * a.cos() - x2 * a.sin();
                out[base + i + half] = x2 * a.cos() + x1 * a.sin();
            }
        }
    }
    out
}

#[test]
fn rotary_forward_and_transpose() {
    let be = Cpu;
    for (seed, heads, kv_heads, head_dim, rot_dims) in [
        (30u64, 4usize, 2usize, 8usize, 8usize),
        (31, 4, 2, 8, 4), // partial rotary
        (32, 3, 3, 16, 4),
        (33, 4, 1, 8, 2),
    ] {
        let positions: Vec<u32> = vec![0, 1, 2, 7, 50, 127, 3, 1000];
        let rows = positions.len();
        let s = RotaryShape {
            rows,
            heads,
            kv_heads,
            head_dim,
            rot_dims,
            base: 10000.0,
        };
        let width = (heads + 2 * kv_heads) * head_dim;
        let mut rng = R::new(seed);
        let x = rng.vec(rows * width, 1.0);
        let y = rng.vec(rows * width, 1.0);
        let rot = |v: &[f32], inverse: bool| {
            let mut v = v.to_vec();
            be.rotary(&mut v, &positions, s, inverse);
            v
        };
        let rx = rot(&x, false);
        assert_close64(
            "rotary forward",
            &rx,
            &rotary_naive(&x, &positions, s),
            1e-5,
        );
        // Untouched: v heads, and dims past rot_dims of q and k heads.
        for r in 0..rows {
            for d in 0..width {
                let h = d / head_dim;
                if h >= heads + kv_heads || d % head_dim >= rot_dims {
                    assert_eq!(
                        rx[r * width + d],
                        x[r * width + d],
                        "row {r} dim {d} changed"
                    );
                }
            }
        }
        // The backward (inverse) is the transpose: <R x, y> = <x, R^T y>.
        let rty = rot(&y, true);
        let (lhs, rhs) = (dot64(&rx, &y), dot64(&x, &rty));
        let scale = (dot64(&x, &x) * dot64(&y, &y)).sqrt();
        assert!(
            (lhs - rhs).abs() <= 1e-6 * scale,
            "<Rx, y> = {lhs} but <x, R^T y> = {rhs}"
        );
        // And orthogonal: R^T R x = x, |Rx| = |x|.
        let back = rot(&rx, true);
        let xs: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        assert_close64("R^T R x", &back, &xs, 1e-5);
        assert!((dot64(&rx, &rx) - dot64(&x, &x)).abs() <= 1e-5 * dot64(&x, &x));
    }
}

/// Causal attention in f64: out [rows, heads*hd] and lse [rows, heads].
fn attention_naive(qkv: &[f32], lens: &[usize], s: AttnShape) -> (Vec<f64>, Vec<f64>) {
    let (hd, nh, nkv, t_len) = (s.head_dim, s.heads, s.kv_heads, s.seq);
    let width = s.qkv_dim();
    let scale = 1.0 / (hd as f64).sqrt();
    let mut out = vec![0.0; s.batch * t_len * nh * hd];
    let mut lse = vec![0.0; s.batch * t_len * nh];
    let at = |row: usize, col: usize| qkv[row * width + col] as f64;
    for (b, &len) in lens.iter().enumerate().take(s.batch) {
        for h in 0..nh {
            let kvh = h / (nh / nkv);
            for t in 0..t_len {
                let row = b * t_len + t;
                let n = (t + 1).min(len);
                if n == 0 {
                    continue;
                }
                let scores: Vec<f64> = (0..n)
                    .map(|j| {
                        (0..hd)
                            .map(|d| at(row, h * hd + d) * at(b * t_len + j, (nh + kvh) * hd + d))
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                lse[row * nh + h] = m + z.ln();
                for d in 0..hd {
                    out[row * nh * hd + h * hd + d] = (0..n)
                        .map(|j| {
                            (scores[j] - m).exp() / z * at(b * t_len + j, (nh + nkv + kvh) * hd + d)
                        })
                        .sum();
                }
            }
        }
    }
    (out, lse)
}

#[test]
fn attention_forward_and_backward() {
    let be = Cpu;
    for (seed, heads, kv_heads, lens) in [
        (40u64, 4usize, 2usize, vec![6usize, 4, 1]), // GQA 4/2, padded
        (41, 3, 3, vec![5, 2]),                      // MHA
        (42, 4, 1, vec![6, 0, 3]),                   // MQA, an empty sequence
        (43, 2, 2, vec![7]),
    ] {
        let seq = *lens.iter().max().unwrap();
        let shape = AttnShape {
            batch: lens.len(),
            seq,
            heads,
            kv_heads,
            head_dim: 8,
            prefix: 0,
        };
        let rows = shape.batch * seq;
        let width = shape.qkv_dim();
        let out_w = heads * 8;
        let mut rng = R::new(seed);
        let qkv = rng.vec(rows * width, 1.5);
        let c = rng.vec(rows * out_w, 1.0);
        let fwd = |qkv: &[f32]| -> (Vec<f32>, Vec<f32>) {
            let (mut out, mut lse) = (be.zeros(rows * out_w), be.zeros(rows * heads));
            be.attention(&mut out, &mut lse, &qkv.to_vec(), None, &lens, shape);
            (out, lse)
        };
        let (out, lse) = fwd(&qkv);
        let (want_out, want_lse) = attention_naive(&qkv, &lens, shape);
        let what = format!("attention {heads}/{kv_heads} lens {lens:?}");
        assert_close64(&format!("{what} out"), &out, &want_out, 1e-5);
        assert_close64(&format!("{what} lse"), &lse, &want_lse, 1e-5);

        let mut dqkv = rng.vec(rows * width, 9.0); // overwritten
        be.attention_bwd(&mut dqkv, &c, &qkv, None, &out, &lse, &lens, shape);
        let mut l = |x: &[f32]| dot64(&fwd(x).0, &c);
        check_grad(
            &format!("{what} dqkv"),
            &qkv,
            &dqkv,
            &mut l,
            1e-3,
            20,
            &mut rng,
            OP_TOL,
        );
        // Each of q, k, v separately (20 entries each, over all rows and heads).
        let hd = 8;
        for (part, lo, hi) in [
            ("dq", 0, heads * hd),
            ("dk", heads * hd, (heads + kv_heads) * hd),
            ("dv", (heads + kv_heads) * hd, width),
        ] {
            let cols: Vec<usize> = (0..rows * width)
                .filter(|i| (lo..hi).contains(&(i % width)))
                .collect();
            let grads: Vec<f32> = cols.iter().map(|&i| dqkv[i]).collect();
            let picked: Vec<usize> = pick_entries(&grads, 10, &mut rng)
                .into_iter()
                .map(|j| cols[j])
                .collect();
            fd_check(&qkv, &dqkv, &mut l, 1e-3, &picked, OP_TOL)
                .unwrap_or_else(|e| panic!("{what} {part}: {e}"));
        }
        // Keys and values of padded positions get no gradient.
        for (b, &len) in lens.iter().enumerate() {
            for t in len..seq {
                let r = b * seq + t;
                assert!(
                    dqkv[r * width + heads * hd..(r + 1) * width]
                        .iter()
                        .all(|&g| g == 0.0),
                    "{what}: padded key/value at sequence {b} position {t} has a gradient"
                );
            }
        }
    }
}

fn act_naive(act: Activation, u: &[f32], inter: usize) -> Vec<f64> {
    let gelu = |x: f64| 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
    let gelu_tanh = |x: f64| {
        0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
    };
    match act {
        Activation::Gelu => u.iter().map(|&x| gelu(x as f64)).collect(),
        Activation::GeluTanh => u.iter().map(|&x| gelu_tanh(x as f64)).collect(),
        Activation::SiluGated => u
            .chunks(2 * inter)
            .flat_map(|r| {
                (0..inter).map(move |i| {
                    let (g, up) = (r[i] as f64, r[inter + i] as f64);
                    g / (1.0 + (-g).exp()) * up
                })
            })
            .collect(),
    }
}

#[test]
fn activation_forward_and_backward() {
    let be = Cpu;
    let (rows, inter) = (4usize, 13usize);
    for act in [
        Activation::Gelu,
        Activation::GeluTanh,
        Activation::SiluGated,
    ] {
        let up = if act == Activation::SiluGated {
            2 * inter
        } else {
            inter
        };
        let mut rng = R::new(50 + act as u64);
        let u = rng.vec(rows * up, 3.0);
        let c = rng.vec(rows * inter, 1.0);
        let fwd = |u: &[f32]| {
            let mut out = be.zeros(rows * inter);
            be.activation(act, &mut out, &u.to_vec(), rows, inter);
            out
        };
        assert_close64(
            &format!("{act:?} forward"),
            &fwd(&u),
            &act_naive(act, &u, inter),
            1e-6,
        );
        let mut du = rng.vec(rows * up, 9.0); // overwritten
        be.activation_bwd(act, &mut du, &c, &u, rows, inter);
        check_grad(
            &format!("{act:?} du"),
            &u,
            &du,
            |x| dot64(&fwd(x), &c),
            1e-3,
            20,
            &mut rng,
            OP_TOL,
        );
    }
}

#[test]
fn cross_entropy_loss_and_gradient() {
    let be = Cpu;
    let (rows, classes) = (6usize, 11usize);
    let mut rng = R::new(60);
    let logits = rng.vec(rows * classes, 4.0);
    let targets: Vec<u32> = (0..rows).map(|_| rng.below(classes) as u32).collect();
    let scale: Vec<f32> = (0..rows).map(|r| 0.25 + r as f32 * 0.3).collect();
    let run = |l: &[f32]| {
        let mut d = be.zeros(rows * classes);
        let losses = be.cross_entropy(&mut d, &l.to_vec(), &targets, &scale, classes);
        (losses, d)
    };
    let (losses, dlogits) = run(&logits);
    let want: Vec<f64> = (0..rows)
        .map(|r| {
            let row = &logits[r * classes..(r + 1) * classes];
            let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            let lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
            lse - row[targets[r] as usize] as f64
        })
        .collect();
    assert_close64("cross-entropy losses", &losses, &want, 1e-6);
    // dlogits is the gradient of sum_r scale[r] * loss[r].
    let total = |l: &[f32]| dot64(&run(l).0, &scale);
    check_grad(
        "cross-entropy dlogits",
        &logits,
        &dlogits,
        total,
        1e-2,
        20,
        &mut rng,
        OP_TOL,
    );
    // Overwrite semantics: garbage in dlogits does not leak into the result.
    let mut d = rng.vec(rows * classes, 9.0);
    be.cross_entropy(&mut d, &logits, &targets, &scale, classes);
    assert_eq!(d, dlogits);
}

#[test]
fn embed_gather_scatter_backward() {
    let be = Cpu;
    let (vocab, dim) = (9usize, 5usize);
    let ids: Vec<u32> = vec![3, 0, 3, 8, 3, 1, 0];
    let rows = ids.len();
    let mut rng = R::new(70);
    let table = rng.vec(vocab * dim, 1.0);
    let c = rng.vec(rows * dim, 1.0);
    let fwd = |t: &[f32]| {
        let mut out = be.zeros(rows * dim);
        be.embed(&mut out, &t.to_vec(), &ids, dim);
        out
    };
    let out = fwd(&table);
    for (r, &id) in ids.iter().enumerate() {
        let id = id as usize;
        assert_eq!(out[r * dim..(r + 1) * dim], table[id * dim..(id + 1) * dim]);
    }
    let d0 = rng.vec(vocab * dim, 1.0);
    let mut dt = d0.clone();
    be.embed_bwd(&mut dt, &c, &ids, dim);
    let dt = sub(&dt, &d0);
    check_grad(
        "embed_bwd",
        &table,
        &dt,
        |t| dot64(&fwd(t), &c),
        1e-2,
        20,
        &mut rng,
        OP_TOL,
    );
    // Rows of unused ids get nothing; repeated id 3 gets the sum of its three rows.
    for v in [2usize, 4, 5, 6, 7] {
        assert!(dt[v * dim..(v + 1) * dim].iter().all(|&g| g.abs() < 1e-6));
    }
    for j in 0..dim {
        let want = c[j] as f64 + c[2 * dim + j] as f64 + c[4 * dim + j] as f64;
        assert!((dt[3 * dim + j] as f64 - want).abs() < 1e-5);
    }

    // gather_rows and scatter_add_rows are adjoint (repeated rows included), and
    // scatter_add_rows accumulates.
    let n_src = 6;
    let sel: Vec<usize> = vec![4, 0, 4, 5, 2];
    let x = rng.vec(n_src * dim, 1.0);
    let y = rng.vec(sel.len() * dim, 1.0);
    let mut gx = be.zeros(sel.len() * dim);
    be.gather_rows(&mut gx, &x, &sel, dim);
    let s0 = rng.vec(n_src * dim, 1.0);
    let mut sy = s0.clone();
    be.scatter_add_rows(&mut sy, &y, &sel, dim);
    let sy = sub(&sy, &s0);
    let (lhs, rhs) = (dot64(&gx, &y), dot64(&x, &sy));
    assert!(
        (lhs - rhs).abs() < 1e-5,
        "<gather x, y> {lhs} vs <x, scatter y> {rhs}"
    );
    check_grad(
        "scatter_add_rows (as gather backward)",
        &x,
        &sy,
        |x| {
            let mut g = be.zeros(sel.len() * dim);
            be.gather_rows(&mut g, &x.to_vec(), &sel, dim);
            dot64(&g, &y)
        },
        1e-2,
        20,
        &mut rng,
        OP_TOL,
    );
}

// ---------------------------------------------------------------------------------------------
// (b) The whole model

fn slot_mut(w: &mut Weights<Vec<f32>>, s: Slot) -> Option<&mut Vec<f32>> {
    match s {
        Slot::Embed => Some(&mut w.embed),
        Slot::Ln1W(i) => Some(&mut w.layers[i].ln1_w),
        Slot::Ln1B(i) => w.layers[i].ln1_b.as_mut(),
        Slot::Ln2W(i) => Some(&mut w.layers[i].ln2_w),
        Slot::Ln2B(i) => w.layers[i].ln2_b.as_mut(),
        Slot::QkvW(i) => Some(&mut w.layers[i].qkv_w),
        Slot::QkvB(i) => w.layers[i].qkv_b.as_mut(),
        Slot::OW(i) => Some(&mut w.layers[i].o_w),
        Slot::OB(i) => w.layers[i].o_b.as_mut(),
        Slot::UpW(i) => Some(&mut w.layers[i].up_w),
        Slot::UpB(i) => w.layers[i].up_b.as_mut(),
        Slot::DownW(i) => Some(&mut w.layers[i].down_w),
        Slot::DownB(i) => w.layers[i].down_b.as_mut(),
        Slot::FinalW => Some(&mut w.final_w),
        Slot::FinalB => w.final_b.as_mut(),
        Slot::Head => w.head.as_mut(),
    }
}

/// Small configs covering every architectural switch.
fn configs() -> Vec<(&'static str, serde_json::Value)> {
    vec![
        (
            "neox parallel classifier, rotary 0.25",
            json!({
                "architectures": ["GPTNeoXForSequenceClassification"],
                "hidden_size": 16, "num_attention_heads": 2, "num_hidden_layers": 2,
                "intermediate_size": 24, "vocab_size": 40, "rotary_pct": 0.25,
                "use_parallel_residual": true, "num_labels": 3, "hidden_act": "gelu",
            }),
        ),
        (
            "neox sequential LM, tanh gelu, full rotary",
            json!({
                "architectures": ["GPTNeoXForCausalLM"],
                "hidden_size": 16, "num_attention_heads": 4, "num_hidden_layers": 2,
                "intermediate_size": 32, "vocab_size": 40,
                "rope_parameters": {"rope_type": "default", "rope_theta": 10000,
                                    "partial_rotary_factor": 1.0},
                "use_parallel_residual": false, "hidden_act": "gelu_new",
                "tie_word_embeddings": false,
            }),
        ),
        (
            "neox parallel LM, rotary 0.5, no attention bias",
            json!({
                "architectures": ["GPTNeoXForCausalLM"],
                "hidden_size": 16, "num_attention_heads": 2, "num_hidden_layers": 2,
                "intermediate_size": 24, "vocab_size": 40, "rotary_pct": 0.5,
                "use_parallel_residual": true, "attention_bias": false,
            }),
        ),
        (
            "qwen2 GQA 4/2 tied LM",
            json!({
                "architectures": ["Qwen2ForCausalLM"],
                "hidden_size": 16, "num_attention_heads": 4, "num_key_value_heads": 2,
                "num_hidden_layers": 2, "intermediate_size": 24, "vocab_size": 40,
                "tie_word_embeddings": true, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
            }),
        ),
        (
            "qwen2 MQA 4/1 untied classifier",
            json!({
                "architectures": ["Qwen2ForSequenceClassification"],
                "hidden_size": 16, "num_attention_heads": 4, "num_key_value_heads": 1,
                "num_hidden_layers": 2, "intermediate_size": 24, "vocab_size": 40,
                "tie_word_embeddings": false, "num_labels": 2,
                "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
            }),
        ),
        (
            "qwen2 MHA untied LM",
            json!({
                "architectures": ["Qwen2ForCausalLM"],
                "hidden_size": 16, "num_attention_heads": 2, "num_key_value_heads": 2,
                "num_hidden_layers": 2, "intermediate_size": 24, "vocab_size": 40,
                "tie_word_embeddings": false,
            }),
        ),
    ]
}

/// Random weights with every tensor (norm weights and biases included) perturbed, so no
/// gradient is trivially structured.
fn random_model(cfg: &ModelConfig, seed: u64) -> Weights<Vec<f32>> {
    let base = Model::random(cfg.clone(), seed, 0.3, Cpu).download_weights();
    let mut rng = R::new(seed ^ 0x5eed);
    base.map(cfg, |spec, v| {
        let is_norm_w = matches!(spec.slot, Slot::Ln1W(_) | Slot::Ln2W(_) | Slot::FinalW);
        let noise = rng.vec(v.len(), if is_norm_w { 0.3 } else { 0.1 });
        v.iter().zip(noise).map(|(a, b)| a + b).collect()
    })
}

/// A padded batch (lengths 7, 5, 3) that never uses `avoid` except where placed by the caller.
fn batch_ids(cfg: &ModelConfig, rng: &mut R, avoid: u32) -> Vec<Vec<u32>> {
    [7usize, 5, 3]
        .iter()
        .map(|&n| {
            (0..n)
                .map(|_| loop {
                    let id = rng.below(cfg.vocab) as u32;
                    if id != avoid {
                        break id;
                    }
                })
                .collect()
        })
        .collect()
}

fn objective_for(cfg: &ModelConfig, batch: &Batch) -> Objective {
    match cfg.num_labels() {
        Some(n) => Objective::Classify {
            labels: (0..batch.batch).map(|b| (b % n) as u32).collect(),
        },
        None => {
            // The last two real tokens of each sequence are targets.
            let mut mask = vec![false; batch.rows()];
            for (b, &len) in batch.lens.iter().enumerate() {
                for t in len.saturating_sub(2).max(1)..len {
                    mask[b * batch.seq + t] = true;
                }
            }
            Objective::Target { mask }
        }
    }
}

fn total_loss(cfg: &ModelConfig, w: &Weights<Vec<f32>>, batch: &Batch, obj: &Objective) -> f64 {
    let m = Model::from_host_weights(cfg.clone(), w, Cpu);
    m.loss_and_grads(batch, obj, &GradRequest::default())
        .unwrap()
        .loss_per_seq
        .iter()
        .map(|&l| l as f64)
        .sum()
}

#[test]
fn model_loss_matches_logits() {
    // The loss loss_and_grads reports is the cross-entropy of the logits `logits` returns.
    for (seed, (name, json)) in configs().into_iter().enumerate() {
        let cfg = ModelConfig::from_json(&json).unwrap_or_else(|e| panic!("{name}: {e}"));
        let w = random_model(&cfg, 100 + seed as u64);
        let model = Model::from_host_weights(cfg.clone(), &w, Cpu);
        let mut rng = R::new(200 + seed as u64);
        let batch = Batch::from_sequences(&batch_ids(&cfg, &mut rng, u32::MAX), 0).unwrap();
        let obj = objective_for(&cfg, &batch);
        let out = model
            .loss_and_grads(&batch, &obj, &GradRequest::default())
            .unwrap();
        let logits = model.logits(&batch).unwrap();
        let width = cfg.num_labels().unwrap_or(cfg.vocab);
        let ce = |row: &[f32], t: u32| -> f64 {
            let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln() - row[t as usize] as f64
        };
        let want: Vec<f64> = match &obj {
            Objective::Classify { labels } => (0..batch.batch)
                .map(|b| ce(&logits[b * width..(b + 1) * width], labels[b]))
                .collect(),
            Objective::Target { mask } => (0..batch.batch)
                .map(|b| {
                    let ts: Vec<usize> = (0..batch.seq)
                        .filter(|&t| mask[b * batch.seq + t])
                        .collect();
                    ts.iter()
                        .map(|&t| {
                            let r = b * batch.seq + t - 1;
                            ce(&logits[r * width..(r + 1) * width], batch.ids[r + 1])
                        })
                        .sum::<f64>()
                        / ts.len() as f64
                })
                .collect(),
        };
        assert_close64(&format!("{name} loss"), &out.loss_per_seq, &want, 1e-5);
    }
}

#[test]
fn model_weight_gradients() {
    for (seed, (name, json)) in configs().into_iter().enumerate() {
        let cfg = ModelConfig::from_json(&json).unwrap_or_else(|e| panic!("{name}: {e}"));
        let w = random_model(&cfg, 300 + seed as u64);
        let mut rng = R::new(400 + seed as u64);
        let batch = Batch::from_sequences(&batch_ids(&cfg, &mut rng, u32::MAX), 0).unwrap();
        let obj = objective_for(&cfg, &batch);
        let model = Model::from_host_weights(cfg.clone(), &w, Cpu);
        let grads = model
            .loss_and_grads(
                &batch,
                &obj,
                &GradRequest {
                    onehot_rows: None,
                    weights: true,
                },
            )
            .unwrap()
            .weight_grads
            .expect("weight gradients were requested");
        let mut checked = 0;
        for spec in param_specs(&cfg) {
            let g = grads.slot(spec.slot).expect("every spec has a gradient");
            let x = w.slot(spec.slot).unwrap().clone();
            let what = format!("{name}: {:?} ({})", spec.slot, spec.pieces[0].0);
            let mut wp = w.clone();
            check_grad(
                &what,
                &x,
                g,
                |v| {
                    slot_mut(&mut wp, spec.slot).unwrap().copy_from_slice(v);
                    total_loss(&cfg, &wp, &batch, &obj)
                },
                3e-3,
                5,
                &mut rng,
                MODEL_TOL,
            );
            checked += 1;
        }
        assert!(checked >= 10, "{name}: only {checked} tensors checked");
    }
}

/// d loss / d onehot[row, v] = demb[row] . E[v]: with an untied model and a token that occurs
/// once in the batch, finite differences on its embedding row give demb[row].
#[test]
fn model_onehot_gradient() {
    for (seed, (name, json)) in configs().into_iter().enumerate() {
        let cfg = ModelConfig::from_json(&json).unwrap();
        if cfg.tied_embeddings && cfg.num_labels().is_none() {
            continue; // the embedding is also the LM head: FD on it is not d loss/d input
        }
        let w = random_model(&cfg, 500 + seed as u64);
        let mut rng = R::new(600 + seed as u64);
        let special = (cfg.vocab - 1) as u32;
        let mut seqs = batch_ids(&cfg, &mut rng, special);
        // Position 2 of sequence 0 (real, and read by every objective's loss rows later on).
        let (b, t) = (0usize, 2usize);
        seqs[b][t] = special;
        let pad = 0;
        let batch = Batch::from_sequences(&seqs, pad).unwrap();
        assert_eq!(
            batch.ids.iter().filter(|&&i| i == special).count(),
            1,
            "the special token must occur once"
        );
        let row = b * batch.seq + t;
        let obj = objective_for(&cfg, &batch);
        let model = Model::from_host_weights(cfg.clone(), &w, Cpu);
        let other_rows = [row, batch.seq + 1]; // a second row, to check row order
        let out = model
            .loss_and_grads(
                &batch,
                &obj,
                &GradRequest {
                    onehot_rows: Some(other_rows.to_vec()),
                    weights: false,
                },
            )
            .unwrap();
        let oh = out.onehot_grad.expect("one-hot gradient was requested");
        assert_eq!(oh.len(), 2 * cfg.vocab);
        assert!(out.weight_grads.is_none());

        // demb[j] by central differences on E[special, j].
        let h = cfg.hidden;
        let eps = 3e-3f32;
        let mut wp = w.clone();
        let demb: Vec<f64> = (0..h)
            .map(|j| {
                let i = special as usize * h + j;
                wp.embed[i] = w.embed[i] + eps;
                let (hi, lp) = (wp.embed[i] as f64, total_loss(&cfg, &wp, &batch, &obj));
                wp.embed[i] = w.embed[i] - eps;
                let (lo, lm) = (wp.embed[i] as f64, total_loss(&cfg, &wp, &batch, &obj));
                wp.embed[i] = w.embed[i];
                (lp - lm) / (hi - lo)
            })
            .collect();
        let norm = demb.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!(
            norm > 1e-4,
            "{name}: the special token does not affect the loss"
        );
        let got = &oh[..cfg.vocab];
        let want: Vec<f64> = (0..cfg.vocab)
            .map(|v| {
                (0..h)
                    .map(|j| demb[j] * w.embed[v * h + j] as f64)
                    .sum::<f64>()
            })
            .collect();
        let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let mut vs: Vec<usize> = (0..8).map(|_| rng.below(cfg.vocab)).collect();
        vs.push(special as usize);
        vs.push(pad as usize);
        for v in vs {
            let err = (got[v] as f64 - want[v]).abs();
            assert!(
                err <= MODEL_TOL.0 * want[v].abs() + MODEL_TOL.1 * scale,
                "{name}: onehot_grad[row {row}, {v}] = {}, finite differences give {}",
                got[v],
                want[v]
            );
        }
    }
}

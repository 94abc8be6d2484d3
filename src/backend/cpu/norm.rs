//! LayerNorm (GPTNeoX) and RMSNorm (Qwen2), forward and backward, row-parallel.
//! Statistics accumulate in f64: the rows are short and this keeps us within 1e-6 of torch.

use crate::model::config::NormKind;
use rayon::prelude::*;

#[allow(clippy::too_many_arguments)]
pub fn norm_fwd(
    kind: NormKind,
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    dim: usize,
    eps: f32,
) {
    out.par_chunks_mut(dim)
        .zip(x.par_chunks(dim))
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .for_each(|((o, xr), (mu, rs))| {
            let m = match kind {
                NormKind::LayerNorm => xr.iter().map(|&v| v as f64).sum::<f64>() / dim as f64,
                NormKind::RmsNorm => 0.0,
            };
            let var = xr.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / dim as f64;
            let r = 1.0 / (var + eps as f64).sqrt();
            *mu = m as f32;
            *rs = r as f32;
            let (m, r) = (m as f32, r as f32);
            match b {
                Some(b) => {
                    for i in 0..dim {
                        o[i] = (xr[i] - m) * r * w[i] + b[i];
                    }
                }
                None => {
                    for i in 0..dim {
                        o[i] = (xr[i] - m) * r * w[i];
                    }
                }
            }
        });
}

/// dx += d/dx; dw, db += their row sums (reduced over per-thread partials).
#[allow(clippy::too_many_arguments)]
pub fn norm_bwd(
    kind: NormKind,
    dx: &mut [f32],
    dw: Option<&mut [f32]>,
    db: Option<&mut [f32]>,
    dout: &[f32],
    x: &[f32],
    mean: &[f32],
    rstd: &[f32],
    w: &[f32],
    dim: usize,
) {
    let center = kind == NormKind::LayerNorm;
    dx.par_chunks_mut(dim)
        .zip(dout.par_chunks(dim))
        .zip(x.par_chunks(dim))
        .zip(mean.par_iter().zip(rstd.par_iter()))
        .for_each(|(((dxr, g), xr), (&m, &r))| {
            // xhat = (x - m) r; dxhat = g w
            // LayerNorm: dx = r (dxhat - mean(dxhat) - xhat mean(dxhat xhat))
            // RMSNorm:   dx = r (dxhat - xhat mean(dxhat xhat))
            let mut sum_d = 0.0f64;
            let mut sum_dx = 0.0f64;
            for i in 0..dim {
                let xhat = (xr[i] - m) * r;
                let d = g[i] * w[i];
                sum_d += d as f64;
                sum_dx += (d * xhat) as f64;
            }
            let mean_d = if center {
                (sum_d / dim as f64) as f32
            } else {
                0.0
            };
            let mean_dx = (sum_dx / dim as f64) as f32;
            for i in 0..dim {
                let xhat = (xr[i] - m) * r;
                dxr[i] += r * (g[i] * w[i] - mean_d - xhat * mean_dx);
            }
        });
    if dw.is_none() && db.is_none() {
        return;
    }
    // Fixed row blocks reduced in order: the sum is the same on every run (rayon's
    // fold/reduce splits depend on scheduling, which would make training non-deterministic).
    const BLOCK: usize = 64;
    let partials: Vec<(Vec<f32>, Vec<f32>)> = dout
        .par_chunks(BLOCK * dim)
        .zip(x.par_chunks(BLOCK * dim))
        .zip(mean.par_chunks(BLOCK).zip(rstd.par_chunks(BLOCK)))
        .map(|((g, xb), (mb, rb))| {
            let (mut aw, mut ab) = (vec![0.0f32; dim], vec![0.0f32; dim]);
            for (row, (&m, &r)) in mb.iter().zip(rb).enumerate() {
                let (gr, xr) = (
                    &g[row * dim..(row + 1) * dim],
                    &xb[row * dim..(row + 1) * dim],
                );
                for i in 0..dim {
                    aw[i] += gr[i] * (xr[i] - m) * r;
                    ab[i] += gr[i];
                }
            }
            (aw, ab)
        })
        .collect();
    let (mut pw, mut pb) = (vec![0.0f32; dim], vec![0.0f32; dim]);
    for (aw, ab) in &partials {
        add_into(&mut pw, aw);
        add_into(&mut pb, ab);
    }
    if let Some(dw) = dw {
        add_into(dw, &pw);
    }
    if let Some(db) = db {
        add_into(db, &pb);
    }
}

pub fn add_into(acc: &mut [f32], x: &[f32]) {
    for (a, b) in acc.iter_mut().zip(x) {
        *a += b;
    }
}

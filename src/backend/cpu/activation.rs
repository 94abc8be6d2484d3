//! MLP activations: exact GELU, tanh GELU, and SwiGLU (silu(gate) * up, gate and up stacked
//! in one [rows, 2 * inter] buffer: gate first, as we fuse the two projections at load).

use crate::model::config::Activation;
use rayon::prelude::*;

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_TANH_C: f32 = 0.044_715;

/// Elements per rayon task: one element is far too little work to hand out alone.
const CHUNK: usize = 2048;

/// erf(x) as an odd/even rational function on [-4, 4] (beyond, f32 erf is ±1 to within
/// half an ulp): multiplies, adds and one divide without branches, so the activation loops
/// vectorize. libm's branchy scalar erff took ~10% of a GCG iteration. Coefficients: the
/// minimax fit used by Eigen and XLA for f32 erf; within 1e-6 of libm (tested below).
#[inline]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906_3e-4;
    p = x2 * p + -2.954_6e-3;
    p = x2 * p + -1.609_603_3e-2;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329e-3;
    q = x2 * q + -1.426_473_9e-2;
    x * p / q
}

fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}
fn gelu_grad(x: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    let pdf = (-0.5 * x * x).exp() * 0.398_942_3;
    cdf + x * pdf
}
fn gelu_tanh(x: f32) -> f32 {
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + GELU_TANH_C * x * x * x)).tanh())
}
fn gelu_tanh_grad(x: f32) -> f32 {
    let u = SQRT_2_OVER_PI * (x + GELU_TANH_C * x * x * x);
    let t = u.tanh();
    let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_TANH_C * x * x);
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du
}
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

pub fn activation_fwd(act: Activation, out: &mut [f32], u: &[f32], inter: usize) {
    match act {
        Activation::Gelu => out
            .par_chunks_mut(CHUNK)
            .zip(u.par_chunks(CHUNK))
            .for_each(|(o, u)| o.iter_mut().zip(u).for_each(|(o, &x)| *o = gelu(x))),
        Activation::GeluTanh => out
            .par_iter_mut()
            .zip(u.par_iter())
            .for_each(|(o, &x)| *o = gelu_tanh(x)),
        Activation::SiluGated => out
            .par_chunks_mut(inter)
            .zip(u.par_chunks(2 * inter))
            .for_each(|(o, ur)| {
                let (g, up) = ur.split_at(inter);
                for i in 0..inter {
                    o[i] = g[i] * sigmoid(g[i]) * up[i];
                }
            }),
    }
}

pub fn activation_bwd(act: Activation, du: &mut [f32], dout: &[f32], u: &[f32], inter: usize) {
    match act {
        Activation::Gelu => du
            .par_iter_mut()
            .zip(dout.par_iter().zip(u.par_iter()))
            .for_each(|(d, (&g, &x))| *d = g * gelu_grad(x)),
        Activation::GeluTanh => du
            .par_iter_mut()
            .zip(dout.par_iter().zip(u.par_iter()))
            .for_each(|(d, (&g, &x))| *d = g * gelu_tanh_grad(x)),
        Activation::SiluGated => du
            .par_chunks_mut(2 * inter)
            .zip(dout.par_chunks(inter).zip(u.par_chunks(2 * inter)))
            .for_each(|(dr, (gr, ur))| {
                let (g, up) = ur.split_at(inter);
                let (dg, dup) = dr.split_at_mut(inter);
                for i in 0..inter {
                    let s = sigmoid(g[i]);
                    let silu = g[i] * s;
                    dup[i] = gr[i] * silu;
                    dg[i] = gr[i] * up[i] * s * (1.0 + g[i] * (1.0 - s));
                }
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_libm() {
        let mut worst = 0.0f32;
        for i in -60_000..=60_000 {
            let x = i as f32 * 1e-4;
            worst = worst.max((erf(x) - libm::erff(x)).abs());
        }
        assert!(worst < 1e-6, "max |erf - libm::erff| = {worst:e}");
        assert_eq!(erf(0.0), 0.0);
        assert!((erf(100.0) - 1.0).abs() < 1e-6 && (erf(-100.0) + 1.0).abs() < 1e-6);
    }
}

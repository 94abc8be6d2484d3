//! The CPU backend: the reference for every op (the CUDA backend is checked against it) and a
//! fast path in its own right (SIMD GEMM from the `gemm` crate, rayon everywhere else).

pub mod activation;
pub mod alloc;
pub mod attention;
pub mod gcg;
pub mod gemm;
pub mod loss;
pub mod norm;
pub mod optim;
pub mod rotary;

use super::{AttnShape, Backend, RotaryShape};
use crate::model::config::{Activation, NormKind};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

impl Backend for Cpu {
    type Buf = Vec<f32>;

    fn name(&self) -> &'static str {
        "cpu"
    }
    fn upload(&self, data: &[f32]) -> Vec<f32> {
        data.to_vec()
    }
    fn zeros(&self, len: usize) -> Vec<f32> {
        vec![0.0; len]
    }
    fn download(&self, buf: &Vec<f32>) -> Vec<f32> {
        buf.clone()
    }
    fn len(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }

    fn embed(&self, out: &mut Vec<f32>, table: &Vec<f32>, ids: &[u32], dim: usize) {
        out.par_chunks_mut(dim)
            .zip(ids.par_iter())
            .for_each(|(o, &id)| {
                let id = id as usize;
                o.copy_from_slice(&table[id * dim..(id + 1) * dim]);
            });
    }
    fn embed_bwd(&self, dtable: &mut Vec<f32>, dout: &Vec<f32>, ids: &[u32], dim: usize) {
        // Serial: repeated ids would race, and this is O(rows * dim), negligible.
        for (r, &id) in ids.iter().enumerate() {
            let id = id as usize;
            norm::add_into(
                &mut dtable[id * dim..(id + 1) * dim],
                &dout[r * dim..(r + 1) * dim],
            );
        }
    }
    fn gather_rows(&self, out: &mut Vec<f32>, x: &Vec<f32>, rows: &[usize], dim: usize) {
        for (o, &r) in out.chunks_mut(dim).zip(rows) {
            o.copy_from_slice(&x[r * dim..(r + 1) * dim]);
        }
    }
    fn scatter_add_rows(&self, dx: &mut Vec<f32>, dout: &Vec<f32>, rows: &[usize], dim: usize) {
        for (g, &r) in dout.chunks(dim).zip(rows) {
            norm::add_into(&mut dx[r * dim..(r + 1) * dim], g);
        }
    }

    fn matmul(
        &self,
        out: &mut Vec<f32>,
        inp: &Vec<f32>,
        w: &Vec<f32>,
        bias: Option<&Vec<f32>>,
        m: usize,
        k: usize,
        n: usize,
        accumulate: bool,
    ) {
        match bias {
            Some(b) => {
                if !accumulate {
                    out[..m * n]
                        .par_chunks_mut(n)
                        .for_each(|r| r.copy_from_slice(b));
                } else {
                    out[..m * n]
                        .par_chunks_mut(n)
                        .for_each(|r| norm::add_into(r, b));
                }
                gemm::linear(out, inp, w, m, k, n, true);
            }
            None => gemm::linear(out, inp, w, m, k, n, accumulate),
        }
    }

    fn matmul_bwd(
        &self,
        dinp: Option<(&mut Vec<f32>, bool)>,
        dw: Option<&mut Vec<f32>>,
        dbias: Option<&mut Vec<f32>>,
        dout: &Vec<f32>,
        inp: &Vec<f32>,
        w: &Vec<f32>,
        m: usize,
        k: usize,
        n: usize,
    ) {
        if let Some((dinp, acc)) = dinp {
            gemm::linear_bwd_input(dinp, dout, w, m, k, n, acc);
        }
        if let Some(dw) = dw {
            gemm::linear_bwd_weight(dw, dout, inp, m, k, n);
        }
        if let Some(db) = dbias {
            for r in dout[..m * n].chunks(n) {
                norm::add_into(db, r);
            }
        }
    }

    fn norm(
        &self,
        kind: NormKind,
        out: &mut Vec<f32>,
        mean: &mut Vec<f32>,
        rstd: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &Vec<f32>,
        b: Option<&Vec<f32>>,
        _rows: usize,
        dim: usize,
        eps: f32,
    ) {
        norm::norm_fwd(
            kind,
            out,
            mean,
            rstd,
            x,
            w,
            b.map(|v| v.as_slice()),
            dim,
            eps,
        );
    }

    fn norm_bwd(
        &self,
        kind: NormKind,
        dx: &mut Vec<f32>,
        dw: Option<&mut Vec<f32>>,
        db: Option<&mut Vec<f32>>,
        dout: &Vec<f32>,
        x: &Vec<f32>,
        mean: &Vec<f32>,
        rstd: &Vec<f32>,
        w: &Vec<f32>,
        _rows: usize,
        dim: usize,
    ) {
        norm::norm_bwd(
            kind,
            dx,
            dw.map(|v| v.as_mut_slice()),
            db.map(|v| v.as_mut_slice()),
            dout,
            x,
            mean,
            rstd,
            w,
            dim,
        );
    }

    fn rotary(&self, qkv: &mut Vec<f32>, positions: &[u32], shape: RotaryShape, inverse: bool) {
        rotary::rotary(qkv, positions, shape, inverse);
    }

    fn attention(
        &self,
        out: &mut Vec<f32>,
        lse: &mut Vec<f32>,
        qkv: &Vec<f32>,
        prefix_qkv: Option<&Vec<f32>>,
        lens: &[usize],
        shape: AttnShape,
    ) {
        attention::attention_fwd(out, lse, qkv, prefix_qkv.map(|v| v.as_slice()), lens, shape);
    }

    fn attention_bwd(
        &self,
        dqkv: &mut Vec<f32>,
        dout: &Vec<f32>,
        qkv: &Vec<f32>,
        prefix_qkv: Option<&Vec<f32>>,
        out: &Vec<f32>,
        lse: &Vec<f32>,
        lens: &[usize],
        shape: AttnShape,
    ) {
        let prefix = prefix_qkv.map(|p| p.as_slice());
        attention::attention_bwd(dqkv, dout, qkv, prefix, out, lse, lens, shape);
    }

    fn activation(
        &self,
        act: Activation,
        out: &mut Vec<f32>,
        u: &Vec<f32>,
        _rows: usize,
        inter: usize,
    ) {
        activation::activation_fwd(act, out, u, inter);
    }
    fn activation_bwd(
        &self,
        act: Activation,
        du: &mut Vec<f32>,
        dout: &Vec<f32>,
        u: &Vec<f32>,
        _rows: usize,
        inter: usize,
    ) {
        activation::activation_bwd(act, du, dout, u, inter);
    }

    fn copy(&self, dst: &mut Vec<f32>, src: &Vec<f32>) {
        dst.copy_from_slice(src);
    }
    fn add(&self, out: &mut Vec<f32>, a: &Vec<f32>, b: &Vec<f32>) {
        out.par_iter_mut()
            .zip(a.par_iter().zip(b.par_iter()))
            .for_each(|(o, (x, y))| *o = x + y);
    }
    fn add_assign(&self, acc: &mut Vec<f32>, x: &Vec<f32>) {
        acc.par_iter_mut()
            .zip(x.par_iter())
            .for_each(|(a, b)| *a += b);
    }

    fn cross_entropy(
        &self,
        dlogits: &mut Vec<f32>,
        logits: &Vec<f32>,
        targets: &[u32],
        scale: &[f32],
        classes: usize,
    ) -> Vec<f32> {
        loss::cross_entropy(dlogits, logits, targets, scale, classes)
    }

    fn fill_zero(&self, buf: &mut Vec<f32>) {
        buf.fill(0.0);
    }

    fn adamw(
        &self,
        p: &mut Vec<f32>,
        g: &Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
        hp: &super::AdamW,
        step: u32,
    ) {
        optim::adamw_step(p, g, m, v, hp, step);
    }

    fn adafactor(
        &self,
        p: &mut Vec<f32>,
        g: &Vec<f32>,
        offset: usize,
        rows: usize,
        cols: usize,
        state: super::AdafactorBufs<'_, Vec<f32>>,
        hp: &super::Adafactor,
        step: u32,
    ) {
        let span = offset..offset + rows * cols;
        let (p, g) = (&mut p[span.clone()], &g[span]);
        match state {
            super::AdafactorBufs::Factored { row, col } => {
                let st = optim::AdafactorState::Factored { row, col };
                optim::adafactor_step(p, g, rows, cols, st, hp, step)
            }
            // The reference takes a vector as one row.
            super::AdafactorBufs::Vector { v } => {
                let st = optim::AdafactorState::Vector { v };
                optim::adafactor_step(p, g, 1, rows * cols, st, hp, step)
            }
        }
    }
}

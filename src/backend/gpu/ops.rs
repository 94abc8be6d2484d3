//! Ops beyond the Backend trait (for now inherent methods): LM-head cross-entropy over vocab
//! chunks and the GCG ops (top-k, candidate sampling, per-candidate loss + arg-min); plus the
//! launchers of the optimizer updates, which the trait's `adamw` / `adafactor` call. Each has
//! its CPU reference of the same name in src/backend/cpu/gcg.rs or src/backend/cpu/optim.rs.

use super::args::*;
use super::backend::{GpuBackend, ROWS_PER_CHUNK, THREADS};
use super::buffer::GpuBuf;
use super::device::{DType, GemmDesc, KernelDevice};
use crate::backend::cpu::gcg::{self, Candidates, LM_HEAD_CHUNK};
use crate::backend::cpu::optim::{Adafactor, AdamW};
use crate::backend::Backend;
use crate::error::{Error, Result};

/// Adafactor state buffers of one parameter on the device (f32; a buffer of another type is
/// replaced by a zeroed f32 one, which is how a fresh `zeros` buffer starts).
pub type AdafactorBufs<'a, D> = crate::backend::AdafactorBufs<'a, GpuBuf<D>>;

impl<D: KernelDevice> GpuBackend<D> {
    fn ensure_f32_zeroed(&self, buf: &mut GpuBuf<D>) {
        if buf.dtype != DType::F32 {
            *buf = self.alloc_zeroed(buf.len, DType::F32);
        }
    }

    fn kname_of(op: &str, dtype: DType) -> String {
        match dtype {
            DType::Bf16 => format!("{op}_bf16"),
            DType::F32 | DType::U32 => format!("{op}_f32"),
        }
    }

    /// LM-head cross-entropy of `h` [rows, hidden] against `head` [vocab, hidden] without a
    /// [rows, vocab] logits tensor: LM_HEAD_CHUNK vocab columns at a time, a GEMM into one
    /// chunk buffer, then an online (max, sum exp) fold. With `grad`, a second sweep recomputes
    /// each chunk, turns it into dlogits = (softmax - onehot) * scale in place, and runs the
    /// two GEMMs that consume it: dh (overwritten) and dhead (accumulated). Returns the loss
    /// per row (reference: cpu::gcg::lm_head_ce).
    #[allow(clippy::too_many_arguments)]
    pub fn lm_head_ce(
        &self,
        h: &GpuBuf<D>,
        head: &GpuBuf<D>,
        targets: &[u32],
        scale: &[f32],
        hidden: usize,
        vocab: usize,
        grad: Option<(&mut GpuBuf<D>, Option<&mut GpuBuf<D>>)>,
    ) -> Result<Vec<f32>> {
        let rows = targets.len();
        if let Some(&t) = targets.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::input(format!(
                "lm_head_ce: target {t} >= vocab {vocab}"
            )));
        }
        if scale.len() != rows || h.len < rows * hidden || head.len < vocab * hidden {
            return Err(Error::input(
                "lm_head_ce: scale, h or head has the wrong length",
            ));
        }
        if rows == 0 {
            return Ok(vec![]);
        }
        let chunk = LM_HEAD_CHUNK.min(vocab);
        let es = head.dtype.size() as u64;
        let logits = self.alloc(rows * chunk, self.tensor_dtype());
        let m = self.upload_f32_exact(&vec![f32::NEG_INFINITY; rows]);
        let s = self.alloc_zeroed(rows, DType::F32);
        let tgt = self.alloc_zeroed(rows, DType::F32);
        let lse = self.alloc(rows, DType::F32);
        let losses = self.alloc(rows, DType::F32);
        let tb = self.upload_u32(targets);
        let sb = self.upload_f32_exact(scale);
        if self.skip(&[h, head, &logits, &m, &s, &tgt, &lse, &losses, &tb, &sb]) {
            return Err(self
                .check()
                .err()
                .unwrap_or_else(|| Error::Other("lm_head_ce skipped".into())));
        }
        let mut args = CeChunkArgs {
            logits: logits.addr(),
            m: m.addr(),
            s: s.addr(),
            tgt: tgt.addr(),
            lse: lse.addr(),
            losses: losses.addr(),
            targets: tb.addr(),
            scale: sb.addr(),
            rows: rows as u32,
            cols: 0,
            ld: 0,
            col0: 0,
        };
        let chunk_logits = |c0: usize, cols: usize| {
            self.gemm(GemmDesc {
                a: h.addr(),
                lda: hidden,
                b: head.addr() + c0 as u64 * hidden as u64 * es,
                ldb: hidden,
                trans_b: true,
                c: logits.addr(),
                ldc: cols,
                ..self.desc(rows, cols, hidden)
            });
        };
        for c0 in (0..vocab).step_by(chunk) {
            let cols = chunk.min(vocab - c0);
            chunk_logits(c0, cols);
            (args.cols, args.ld, args.col0) = (cols as u32, cols as u32, c0 as u32);
            self.launch(
                &self.kname("ce_chunk_stats"),
                [rows as u32, 1, 1],
                THREADS,
                0,
                &args,
            );
        }
        self.launch(
            "ce_finish",
            [rows.div_ceil(THREADS as usize) as u32, 1, 1],
            THREADS,
            0,
            &args,
        );
        if let Some((dh, mut dhead)) = grad {
            for c0 in (0..vocab).step_by(chunk) {
                let cols = chunk.min(vocab - c0);
                chunk_logits(c0, cols);
                (args.cols, args.ld, args.col0) = (cols as u32, cols as u32, c0 as u32);
                let gy = cols.div_ceil(THREADS as usize) as u32;
                self.launch(
                    &self.kname("ce_chunk_grad"),
                    [rows as u32, gy, 1],
                    THREADS,
                    0,
                    &args,
                );
                // dh[rows, hidden] (+)= dlogits[rows, cols] . head_chunk[cols, hidden]
                self.gemm(GemmDesc {
                    a: logits.addr(),
                    lda: cols,
                    b: head.addr() + c0 as u64 * hidden as u64 * es,
                    ldb: hidden,
                    c: dh.addr(),
                    accumulate: c0 > 0,
                    ..self.desc(rows, hidden, cols)
                });
                if let Some(dw) = dhead.as_deref_mut() {
                    // dhead_chunk[cols, hidden] += dlogits^T . h
                    self.gemm(GemmDesc {
                        a: logits.addr(),
                        lda: cols,
                        trans_a: true,
                        b: h.addr(),
                        ldb: hidden,
                        c: dw.addr() + c0 as u64 * hidden as u64 * es,
                        accumulate: true,
                        ..self.desc(cols, hidden, rows)
                    });
                }
            }
        }
        let out = self.download(&losses);
        self.check()?;
        Ok(out)
    }

    /// Per row of `grad` [rows, vocab]: the k allowed ids with the smallest values, ordered by
    /// (value, id); [rows, k] (reference: cpu::gcg::topk_onehot, bit-identical).
    pub fn topk_onehot(
        &self,
        grad: &GpuBuf<D>,
        rows: usize,
        vocab: usize,
        k: usize,
        forbidden: &[u32],
    ) -> Result<Vec<u32>> {
        gcg::check_topk(rows, vocab, k, forbidden, grad.len)?;
        let out = self.alloc(rows * k, DType::U32);
        let mask =
            (!forbidden.is_empty()).then(|| self.upload_u32(&gcg::forbid_mask(vocab, forbidden)));
        if rows == 0 {
            return Ok(vec![]);
        }
        if !self.skip(&[grad, &out]) {
            let args = TopkArgs {
                out: out.addr(),
                grad: grad.addr(),
                forbid: mask.as_ref().map_or(0, |m| m.addr()),
                rows: rows as u32,
                vocab: vocab as u32,
                ld: vocab as u32,
                k: k as u32,
            };
            self.launch(
                &Self::kname_of("topk", grad.dtype),
                [rows as u32, 1, 1],
                512,
                0,
                &args,
            );
        }
        let ids = self.download_u32(&out);
        self.check()?;
        Ok(ids)
    }

    /// GCG candidates from a top-k table [positions, k] and the current attack tokens
    /// [positions] (reference: cpu::gcg::sample_candidates, bit-identical).
    pub fn sample_candidates(
        &self,
        topk: &[u32],
        current: &[u32],
        k: usize,
        cands: usize,
        seed: u64,
        counter: u64,
    ) -> Result<Candidates> {
        let positions = current.len();
        gcg::check_sample(topk.len(), positions, k, cands)?;
        let tokens = self.alloc(cands * positions, DType::U32);
        let pos = self.alloc(cands, DType::U32);
        let tok = self.alloc(cands, DType::U32);
        let tb = self.upload_u32(topk);
        let cb = self.upload_u32(current);
        if cands > 0 && !self.skip(&[&tokens, &pos, &tok, &tb, &cb]) {
            let args = SampleArgs {
                tokens: tokens.addr(),
                pos: pos.addr(),
                tok: tok.addr(),
                topk: tb.addr(),
                current: cb.addr(),
                seed,
                counter,
                positions: positions as u32,
                k: k as u32,
                cands: cands as u32,
                _pad: 0,
            };
            let grid = [(cands * positions).div_ceil(256) as u32, 1, 1];
            self.launch("gcg_sample", grid, 256, 0, &args);
        }
        let out = Candidates {
            tokens: self.download_u32(&tokens),
            pos: self.download_u32(&pos),
            tok: self.download_u32(&tok),
        };
        self.check()?;
        Ok(out)
    }

    /// Per-candidate losses (row losses times scale, summed over offsets[c]..offsets[c+1]) and
    /// their arg-min (reference: cpu::gcg::candidate_losses).
    pub fn candidate_losses(
        &self,
        row_loss: &[f32],
        scale: &[f32],
        offsets: &[u32],
    ) -> Result<(Vec<f32>, usize)> {
        let cands = offsets.len().saturating_sub(1);
        if cands == 0 {
            return Ok((vec![], 0));
        }
        let rows = *offsets.last().unwrap_or(&0) as usize;
        if row_loss.len() < rows || scale.len() < rows || offsets.windows(2).any(|w| w[0] > w[1]) {
            return Err(Error::input(
                "candidate_losses: offsets must be ascending and within the rows",
            ));
        }
        let rl = self.upload_f32_exact(row_loss);
        let sc = self.upload_f32_exact(scale);
        let ob = self.upload_u32(offsets);
        let loss = self.alloc(cands, DType::F32);
        let best = self.alloc(2, DType::U32);
        if !self.skip(&[&rl, &sc, &ob, &loss, &best]) {
            let args = CandArgs {
                loss: loss.addr(),
                best: best.addr(),
                row_loss: rl.addr(),
                scale: sc.addr(),
                offsets: ob.addr(),
                cands: cands as u32,
                _pad: 0,
            };
            self.launch("cand_loss_argmin", [1, 1, 1], 256, 0, &args);
        }
        let losses = self.download(&loss);
        let b = self.download_u32(&best);
        self.check()?;
        Ok((losses, b[0] as usize))
    }

    /// `{op}_{param}_{grad}` for an f32 master parameter of a bf16 gradient, else
    /// `{op}_{dtype}` (both of one type).
    fn kname_mixed(op: &str, param: DType, grad: DType) -> String {
        match (param, grad) {
            (DType::F32, DType::Bf16) => format!("{op}_f32_bf16"),
            _ => Self::kname_of(op, grad),
        }
    }

    /// The parameter and gradient types an optimizer kernel exists for: both the same, or
    /// an f32 master parameter of a bf16 gradient.
    fn optim_types_ok(p: DType, g: DType) -> bool {
        p == g || (p == DType::F32 && g == DType::Bf16)
    }

    /// One AdamW step (`step` from 1); m and v are f32 state (reference: cpu::optim::adamw_step).
    pub(crate) fn adamw_step(
        &self,
        p: &mut GpuBuf<D>,
        g: &GpuBuf<D>,
        m: &mut GpuBuf<D>,
        v: &mut GpuBuf<D>,
        hp: &AdamW,
        step: u32,
    ) {
        self.ensure_f32_zeroed(m);
        self.ensure_f32_zeroed(v);
        if self.reject(p.len != g.len || m.len != p.len || v.len != p.len, || {
            "adamw: length mismatch".into()
        }) || self.reject(!Self::optim_types_ok(p.dtype, g.dtype), || {
            format!(
                "adamw: no kernel for {:?} parameters of {:?} gradients",
                p.dtype, g.dtype
            )
        }) || self.skip(&[p, g, m, v])
        {
            return;
        }
        let (bc1, bc2) = hp.bias_corrections(step);
        let args = AdamwArgs {
            param: p.addr(),
            grad: g.addr(),
            m: m.addr(),
            v: v.addr(),
            n: p.len as u64,
            lr: hp.lr,
            beta1: hp.beta1,
            beta2: hp.beta2,
            eps: hp.eps,
            weight_decay: hp.weight_decay,
            bc1,
            bc2,
            _pad: 0,
        };
        self.launch(
            &Self::kname_mixed("adamw", p.dtype, g.dtype),
            Self::grid_1d(p.len),
            THREADS,
            0,
            &args,
        );
    }

    /// One Adafactor step (`step` from 1) on the [rows, cols] tensor at element `offset` of
    /// `p` and `g` (reference: cpu::optim::adafactor_step).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn adafactor_step(
        &self,
        p: &mut GpuBuf<D>,
        g: &GpuBuf<D>,
        offset: usize,
        rows: usize,
        cols: usize,
        state: AdafactorBufs<'_, D>,
        hp: &Adafactor,
        step: u32,
    ) {
        let n = rows * cols;
        let end = offset.checked_add(n);
        if self.reject(
            end.is_none_or(|e| e > p.len || p.len != g.len)
                || !Self::optim_types_ok(p.dtype, g.dtype),
            || {
                format!(
                    "adafactor: a {rows} x {cols} tensor at {offset} of {:?} parameters ({}) \
                     and {:?} gradients ({})",
                    p.dtype, p.len, g.dtype, g.len
                )
            },
        ) || n == 0
        {
            return;
        }
        let chunks = rows.div_ceil(ROWS_PER_CHUNK).max(1);
        let blocks = n.div_ceil(THREADS as usize).clamp(1, 1024);
        let (factored, row, col, v) = match state {
            AdafactorBufs::Factored { row, col } => {
                self.ensure_f32_zeroed(row);
                self.ensure_f32_zeroed(col);
                if self.reject(row.len != rows || col.len != cols, || {
                    "adafactor: row/col state length".into()
                }) {
                    return;
                }
                (true, row.addr(), col.addr(), 0)
            }
            AdafactorBufs::Vector { v } => {
                self.ensure_f32_zeroed(v);
                if self.reject(v.len != n, || "adafactor: v state length".into()) {
                    return;
                }
                (false, 0, 0, v.addr())
            }
        };
        let scalars = self.alloc(2, DType::F32);
        let partial = self.alloc((chunks * cols).max(blocks), DType::F32);
        if self.skip(&[p, g, &scalars, &partial]) {
            return;
        }
        let args = AdafactorArgs {
            param: p.addr() + (offset * p.dtype.size()) as u64,
            grad: g.addr() + (offset * g.dtype.size()) as u64,
            row,
            col,
            v,
            scalars: scalars.addr(),
            partial: partial.addr(),
            rows: rows as u32,
            cols: cols as u32,
            factored: factored as u32,
            rows_per_chunk: ROWS_PER_CHUNK as u32,
            chunks: chunks as u32,
            blocks: blocks as u32,
            beta2t: hp.beta2t(step),
            eps1: hp.eps1,
            lr: hp.lr,
            weight_decay: hp.weight_decay,
            clip: hp.clip_threshold,
            _pad: 0,
        };
        let dt = g.dtype;
        if factored {
            self.launch(
                &Self::kname_of("adafactor_row", dt),
                [rows as u32, 1, 1],
                THREADS,
                0,
                &args,
            );
            let gx = cols.div_ceil(THREADS as usize) as u32;
            self.launch(
                &Self::kname_of("adafactor_col_partial", dt),
                [gx, chunks as u32, 1],
                THREADS,
                0,
                &args,
            );
            self.launch("adafactor_col_finish", [gx, 1, 1], THREADS, 0, &args);
            self.launch("adafactor_stats", [1, 1, 1], THREADS, 0, &args);
        } else {
            // A vector is a 1 x n "matrix": the state kernel strides over cols = n.
            let vargs = AdafactorArgs {
                cols: n as u32,
                ..args
            };
            self.launch(
                &Self::kname_of("adafactor_vec", dt),
                Self::grid_1d(n),
                THREADS,
                0,
                &vargs,
            );
        }
        let grid = [blocks as u32, 1, 1];
        self.launch(
            &Self::kname_of("adafactor_sumsq_partial", dt),
            grid,
            THREADS,
            0,
            &args,
        );
        self.launch(
            &Self::kname_mixed("adafactor_apply", p.dtype, dt),
            grid,
            THREADS,
            0,
            &args,
        );
    }

    /// sizeof of every kernels/args.h struct as the kernel compiler sees it (declaration order;
    /// tests compare with Rust's sizes).
    pub fn args_layout(&self) -> Result<Vec<u32>> {
        let out = self.alloc_zeroed(19, DType::U32);
        if !self.skip(&[&out]) {
            self.launch(
                "args_layout",
                [1, 1, 1],
                32,
                0,
                &LayoutArgs { out: out.addr() },
            );
        }
        let v = self.download_u32(&out);
        self.check()?;
        Ok(v)
    }
}

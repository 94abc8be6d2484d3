//! Optimizers: AdamW (torch semantics) and Adafactor (transformers'
//! `Adafactor` with relative_step=False, scale_parameter=False, warmup_init=False,
//! beta1=None: the study's optimizer). State is per canonical tensor; Adafactor factors each
//! checkpoint tensor separately (a fused tensor holds several, see `ParamSpec::pieces`), so
//! its statistics match an optimizer run on the Hugging Face parameters.

use crate::backend::{Adafactor, AdafactorBufs, AdamW, Backend};
use crate::error::{Error, Result};
use crate::Cpu;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum OptimizerKind {
    AdamW {
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
    },
    Adafactor {
        eps1: f32,
        eps2: f32,
        clip_threshold: f32,
        decay_rate: f32,
        weight_decay: f32,
    },
}

impl OptimizerKind {
    pub fn adamw() -> Self {
        OptimizerKind::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
    /// transformers' defaults (eps=(1e-30, 1e-3), clip 1.0, decay -0.8, no weight decay).
    pub fn adafactor() -> Self {
        OptimizerKind::Adafactor {
            eps1: 1e-30,
            eps2: 1e-3,
            clip_threshold: 1.0,
            decay_rate: -0.8,
            weight_decay: 0.0,
        }
    }
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "adamw" => Some(Self::adamw()),
            "adafactor" => Some(Self::adafactor()),
            _ => None,
        }
    }
}

/// Optimizer state of one tensor.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TensorState {
    /// AdamW first/second moments, or Adafactor's unfactored second moment (in `v`).
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    /// Adafactor factored statistics, per checkpoint piece: row means, column means.
    pub row: Vec<Vec<f32>>,
    pub col: Vec<Vec<f32>>,
}

/// One update of host tensor `p` with gradient `g` at 1-based step `t`. `pieces` are the
/// row counts of the checkpoint tensors stacked in `p`; `cols` is 1 for vectors. The same
/// code as the trainer's device path ([`OptState::step`] on the CPU backend), on host state.
#[allow(clippy::too_many_arguments)]
pub fn step(
    kind: OptimizerKind,
    st: &mut TensorState,
    p: &mut [f32],
    g: &[f32],
    lr: f32,
    t: u64,
    pieces: &[usize],
    cols: usize,
) {
    let mut s = OptState::from_host(&Cpu, kind, st, pieces, cols).expect("state of this tensor");
    let (mut pv, gv) = (p.to_vec(), g.to_vec());
    s.step(&Cpu, kind, &mut pv, &gv, lr, t as u32, pieces, cols);
    p.copy_from_slice(&pv);
    *st = s.to_host(&Cpu);
}

/// Optimizer state of one parameter on a backend (f32 buffers): AdamW's moments, or
/// Adafactor's statistics per checkpoint piece.
pub struct OptState<T> {
    m: Option<T>,
    v: Option<T>,
    pieces: Vec<PieceState<T>>,
}

enum PieceState<T> {
    Factored { row: T, col: T },
    Vector { v: T },
}

impl<T> OptState<T> {
    /// Zeroed state for a parameter of `pieces` row counts x `cols`.
    pub fn zeros<B: Backend<Buf = T>>(
        be: &B,
        kind: OptimizerKind,
        pieces: &[usize],
        cols: usize,
    ) -> Self {
        let f32_zeros = |n: usize| be.upload_f32(&vec![0.0; n]);
        let numel = pieces.iter().sum::<usize>() * cols;
        match kind {
            OptimizerKind::AdamW { .. } => OptState {
                m: Some(f32_zeros(numel)),
                v: Some(f32_zeros(numel)),
                pieces: Vec::new(),
            },
            OptimizerKind::Adafactor { .. } => OptState {
                m: None,
                v: None,
                pieces: pieces
                    .iter()
                    .map(|&rows| match cols {
                        1 => PieceState::Vector { v: f32_zeros(rows) },
                        _ => PieceState::Factored {
                            row: f32_zeros(rows),
                            col: f32_zeros(cols),
                        },
                    })
                    .collect(),
            },
        }
    }

    /// State restored from host tensors (empty ones: zeros, as before the first step).
    pub fn from_host<B: Backend<Buf = T>>(
        be: &B,
        kind: OptimizerKind,
        h: &TensorState,
        pieces: &[usize],
        cols: usize,
    ) -> Result<Self> {
        let mut st = Self::zeros(be, kind, pieces, cols);
        let bad = |what: &str| Error::input(format!("optimizer state: {what} does not fit"));
        let put = |dst: &mut T, src: &[f32]| -> Result<()> {
            if src.is_empty() {
                return Ok(());
            }
            if src.len() != be.len(dst) {
                return Err(bad("a length"));
            }
            *dst = be.upload_f32(src);
            Ok(())
        };
        if let Some(m) = st.m.as_mut() {
            put(m, &h.m)?;
        }
        if let Some(v) = st.v.as_mut() {
            put(v, &h.v)?;
        }
        let mut at = 0;
        for (pi, p) in st.pieces.iter_mut().enumerate() {
            match p {
                PieceState::Factored { row, col } if !h.row.is_empty() => {
                    put(row, h.row.get(pi).ok_or_else(|| bad("row statistics"))?)?;
                    put(col, h.col.get(pi).ok_or_else(|| bad("column statistics"))?)?;
                }
                PieceState::Factored { .. } => {}
                PieceState::Vector { v } => {
                    let n = be.len(v);
                    if !h.v.is_empty() {
                        put(v, h.v.get(at..at + n).ok_or_else(|| bad("the moments"))?)?;
                    }
                    at += n;
                }
            }
        }
        Ok(st)
    }

    /// The state as host tensors (for checkpoints).
    pub fn to_host<B: Backend<Buf = T>>(&self, be: &B) -> TensorState {
        let mut out = TensorState::default();
        if let Some(m) = &self.m {
            out.m = be.download(m);
        }
        if let Some(v) = &self.v {
            out.v = be.download(v);
        }
        for p in &self.pieces {
            match p {
                PieceState::Factored { row, col } => {
                    out.row.push(be.download(row));
                    out.col.push(be.download(col));
                }
                PieceState::Vector { v } => out.v.extend(be.download(v)),
            }
        }
        out
    }

    /// One update of parameter `p` (its checkpoint pieces each with their own Adafactor
    /// statistics and clip) through the backend's optimizer ops.
    #[allow(clippy::too_many_arguments)]
    pub fn step<B: Backend<Buf = T>>(
        &mut self,
        be: &B,
        kind: OptimizerKind,
        p: &mut T,
        g: &T,
        lr: f32,
        t: u32,
        pieces: &[usize],
        cols: usize,
    ) {
        match kind {
            OptimizerKind::AdamW {
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                let hp = AdamW {
                    lr,
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                };
                let (m, v) = (self.m.as_mut(), self.v.as_mut());
                be.adamw(
                    p,
                    g,
                    m.expect("adamw state"),
                    v.expect("adamw state"),
                    &hp,
                    t,
                );
            }
            OptimizerKind::Adafactor {
                eps1,
                eps2: _,
                clip_threshold,
                decay_rate,
                weight_decay,
            } => {
                // eps2 only scales the relative step size, which this configuration disables.
                let hp = Adafactor {
                    lr,
                    eps1,
                    clip_threshold,
                    decay_rate,
                    weight_decay,
                };
                let mut r0 = 0;
                for (piece, &rows) in self.pieces.iter_mut().zip(pieces) {
                    let state = match piece {
                        PieceState::Factored { row, col } => AdafactorBufs::Factored { row, col },
                        PieceState::Vector { v } => AdafactorBufs::Vector { v },
                    };
                    be.adafactor(p, g, r0 * cols, rows, cols, state, &hp, t);
                    r0 += rows;
                }
            }
        }
    }
}

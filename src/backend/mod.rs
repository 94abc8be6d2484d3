//! The one seam between the model and the hardware. Model code calls these coarse ops (in the
//! spirit of llm.c's layer functions); each backend implements every op with the same
//! signature. Buffers are owned by the backend: model code never touches raw pointers.
//!
//! Layout conventions shared by every op:
//! - activations are row-major `[rows, cols]`, rows = batch x positions (right-padded);
//! - linear weights are Hugging Face's `[out_features, in_features]`;
//! - the fused attention input `qkv` is `[rows, (heads + 2 kv_heads) * head_dim]`, q first,
//!   then k, then v, each head-major.

pub mod cpu;
pub mod gpu;

use crate::model::config::{Activation, NormKind};
pub use cpu::optim::{Adafactor, AdamW};

/// Adafactor second-moment state of one checkpoint tensor (f32 on every backend).
pub enum AdafactorBufs<'a, T> {
    /// A [rows, cols] matrix: row [rows] and column [cols] moments.
    Factored { row: &'a mut T, col: &'a mut T },
    /// A vector: one moment per element.
    Vector { v: &'a mut T },
}

/// Shapes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub batch: usize,
    /// New positions per sequence.
    pub seq: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Length of the shared prefix every sequence attends to (0 = none).
    pub prefix: usize,
}

impl AttnShape {
    pub fn qkv_dim(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }
}

/// Rotary embedding on the first `rot_dims` dims of every q and k head (rotate-half style).
#[derive(Clone, Copy, Debug)]
pub struct RotaryShape {
    pub rows: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rot_dims: usize,
    pub base: f32,
}

pub trait Backend: Send + Sync {
    type Buf: Send + Sync;

    fn name(&self) -> &'static str;
    /// The first failure since the last call (ops cannot return errors: a device records its
    /// first failure, e.g. out of memory, and skips the rest of the pass). The model calls
    /// this after every pass, so failures reach the caller as an `Err`.
    fn check(&self) -> crate::error::Result<()> {
        Ok(())
    }
    fn upload(&self, data: &[f32]) -> Self::Buf;
    fn zeros(&self, len: usize) -> Self::Buf;
    fn download(&self, buf: &Self::Buf) -> Vec<f32>;
    fn len(&self, buf: &Self::Buf) -> usize;

    /// out[r, :] = table[ids[r], :]; `ids` already checked < vocab.
    fn embed(&self, out: &mut Self::Buf, table: &Self::Buf, ids: &[u32], dim: usize);
    /// table[ids[r], :] += dout[r, :].
    fn embed_bwd(&self, dtable: &mut Self::Buf, dout: &Self::Buf, ids: &[u32], dim: usize);
    /// out[r, :] = x[rows[r], :]
    fn gather_rows(&self, out: &mut Self::Buf, x: &Self::Buf, rows: &[usize], dim: usize);
    /// dx[rows[r], :] += dout[r, :]
    fn scatter_add_rows(&self, dx: &mut Self::Buf, dout: &Self::Buf, rows: &[usize], dim: usize);

    /// out[m, n] = inp[m, k] . w[n, k] (+ bias[n]); with `accumulate`, adds into out.
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &self,
        out: &mut Self::Buf,
        inp: &Self::Buf,
        w: &Self::Buf,
        bias: Option<&Self::Buf>,
        m: usize,
        k: usize,
        n: usize,
        accumulate: bool,
    );
    /// Backward of `matmul`: dinp (overwritten, or added to with `acc_dinp`) = dout . w;
    /// dw += dout^T . inp; dbias += column sums of dout.
    #[allow(clippy::too_many_arguments)]
    fn matmul_bwd(
        &self,
        dinp: Option<(&mut Self::Buf, bool)>,
        dw: Option<&mut Self::Buf>,
        dbias: Option<&mut Self::Buf>,
        dout: &Self::Buf,
        inp: &Self::Buf,
        w: &Self::Buf,
        m: usize,
        k: usize,
        n: usize,
    );

    /// Row-wise LayerNorm or RMSNorm; saves per-row mean (LayerNorm) and rstd.
    #[allow(clippy::too_many_arguments)]
    fn norm(
        &self,
        kind: NormKind,
        out: &mut Self::Buf,
        mean: &mut Self::Buf,
        rstd: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        b: Option<&Self::Buf>,
        rows: usize,
        dim: usize,
        eps: f32,
    );
    /// Backward of `norm`: dx += ..., dw += ..., db += ...
    #[allow(clippy::too_many_arguments)]
    fn norm_bwd(
        &self,
        kind: NormKind,
        dx: &mut Self::Buf,
        dw: Option<&mut Self::Buf>,
        db: Option<&mut Self::Buf>,
        dout: &Self::Buf,
        x: &Self::Buf,
        mean: &Self::Buf,
        rstd: &Self::Buf,
        w: &Self::Buf,
        rows: usize,
        dim: usize,
    );

    /// In-place rotary on the q and k parts of `qkv`; row r has position `positions[r]`.
    /// `inverse` rotates by the negative angle (the backward pass).
    fn rotary(&self, qkv: &mut Self::Buf, positions: &[u32], shape: RotaryShape, inverse: bool);

    /// Causal attention over [prefix ++ new] keys. Sequence b has `lens[b]` real new tokens;
    /// keys at or past that length are masked. Writes out [rows, heads*head_dim] and the
    /// softmax log-sum-exp per (row, head) for the backward.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        out: &mut Self::Buf,
        lse: &mut Self::Buf,
        qkv: &Self::Buf,
        prefix_qkv: Option<&Self::Buf>,
        lens: &[usize],
        shape: AttnShape,
    );
    /// Backward of `attention`: writes dqkv (the new rows' q, k and v gradients). With a
    /// prefix (`shape.prefix` rows of `prefix_qkv`), the queries' gradients include what
    /// they read from the prefix; the prefix itself gets none (it is a constant here).
    #[allow(clippy::too_many_arguments)]
    fn attention_bwd(
        &self,
        dqkv: &mut Self::Buf,
        dout: &Self::Buf,
        qkv: &Self::Buf,
        prefix_qkv: Option<&Self::Buf>,
        out: &Self::Buf,
        lse: &Self::Buf,
        lens: &[usize],
        shape: AttnShape,
    );

    /// MLP activation: `u` is [rows, up_width]; out is [rows, inter].
    fn activation(
        &self,
        act: Activation,
        out: &mut Self::Buf,
        u: &Self::Buf,
        rows: usize,
        inter: usize,
    );
    /// Backward: du (overwritten) from dout and the saved input u.
    fn activation_bwd(
        &self,
        act: Activation,
        du: &mut Self::Buf,
        dout: &Self::Buf,
        u: &Self::Buf,
        rows: usize,
        inter: usize,
    );

    /// dst = src (same length).
    fn copy(&self, dst: &mut Self::Buf, src: &Self::Buf);
    /// out = a + b (elementwise); out may not alias.
    fn add(&self, out: &mut Self::Buf, a: &Self::Buf, b: &Self::Buf);
    /// acc += x
    fn add_assign(&self, acc: &mut Self::Buf, x: &Self::Buf);

    /// Cross-entropy of each logits row against `targets[r]`: returns the loss per row and
    /// writes dlogits = (softmax - onehot) * scale[r].
    fn cross_entropy(
        &self,
        dlogits: &mut Self::Buf,
        logits: &Self::Buf,
        targets: &[u32],
        scale: &[f32],
        classes: usize,
    ) -> Vec<f32>;

    /// Sets every element of `buf` to zero (gradient buffers between optimizer steps).
    fn fill_zero(&self, buf: &mut Self::Buf);
    /// Whether tensors are stored in f32. When they are not (bf16 on a GPU), training keeps
    /// f32 master weights and the optimizer updates those.
    fn stores_f32(&self) -> bool {
        true
    }
    /// A buffer stored in f32 whatever the storage precision: master weights and optimizer
    /// state.
    fn upload_f32(&self, data: &[f32]) -> Self::Buf {
        self.upload(data)
    }
    /// dst (storage precision) = src (an f32 buffer from `upload_f32`), rounded.
    fn cast_from_f32(&self, dst: &mut Self::Buf, src: &Self::Buf) {
        self.copy(dst, src)
    }

    /// One AdamW update (`step` from 1) of `p` with gradient `g`; `m`, `v` (f32, from
    /// `upload_f32` or `zeros`) start at zero. `p` may be an f32 master of a lower-precision
    /// gradient. Reference: `cpu::optim::adamw_step`.
    #[allow(clippy::too_many_arguments)]
    fn adamw(
        &self,
        p: &mut Self::Buf,
        g: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        hp: &AdamW,
        step: u32,
    );
    /// One Adafactor update of the [rows, cols] tensor at element `offset` of `p` and `g`
    /// (a fused parameter holds several checkpoint tensors, each with its own statistics
    /// and clip; a vector has cols = 1 and a `Vector` state). Reference:
    /// `cpu::optim::adafactor_step`.
    #[allow(clippy::too_many_arguments)]
    fn adafactor(
        &self,
        p: &mut Self::Buf,
        g: &Self::Buf,
        offset: usize,
        rows: usize,
        cols: usize,
        state: AdafactorBufs<'_, Self::Buf>,
        hp: &Adafactor,
        step: u32,
    );
}

//! The transformer, written once against the Backend trait: the layer stack forward (saving
//! what the backward needs) and its backward. Heads and losses live in `heads.rs`.

use super::config::ModelConfig;
use super::weights::{LayerWeights, Weights};
use crate::backend::{AttnShape, Backend, RotaryShape};

/// Activations of one layer kept for the backward pass.
pub struct LayerActs<Buf> {
    pub x: Buf,
    pub a: Buf,
    pub mean1: Buf,
    pub rstd1: Buf,
    pub qkv: Buf,
    pub att: Buf,
    pub lse: Buf,
    pub ao: Buf,
    /// x + ao (sequential blocks only): the input of the second norm.
    pub h: Option<Buf>,
    pub m: Buf,
    pub mean2: Buf,
    pub rstd2: Buf,
    pub u: Buf,
    pub g: Buf,
}

/// Result of the layer stack: the final residual stream, and per-layer saves when kept.
pub struct Trace<Buf> {
    pub rows: usize,
    pub positions: Vec<u32>,
    pub layers: Vec<LayerActs<Buf>>,
    /// Per-layer fused qkv (after rotary): what a prefix cache keeps.
    pub qkv_per_layer: Vec<Buf>,
    pub x_out: Buf,
}

/// Per-layer fused qkv of a prefix, shared by every continuation run against it.
pub struct PrefixCache<Buf> {
    pub len: usize,
    pub ids: Vec<u32>,
    pub layers: Vec<Buf>,
    /// The model weights' generation it was computed from ([`crate::Model::generation`]):
    /// using it after the weights changed is an error, never a silently wrong result.
    pub generation: u64,
}

pub struct StackInput<'a, Buf> {
    pub ids: &'a [u32],
    pub batch: usize,
    pub seq: usize,
    pub lens: &'a [usize],
    pub prefix: Option<&'a PrefixCache<Buf>>,
    /// Keep every layer's activations (needed for backward).
    pub keep: bool,
    /// Keep each layer's qkv (needed to build a prefix cache).
    pub keep_qkv: bool,
}

fn attn_shape(cfg: &ModelConfig, batch: usize, seq: usize, prefix: usize) -> AttnShape {
    AttnShape {
        batch,
        seq,
        heads: cfg.heads,
        kv_heads: cfg.kv_heads,
        head_dim: cfg.head_dim,
        prefix,
    }
}

fn rotary_shape(cfg: &ModelConfig, rows: usize) -> RotaryShape {
    RotaryShape {
        rows,
        heads: cfg.heads,
        kv_heads: cfg.kv_heads,
        head_dim: cfg.head_dim,
        rot_dims: cfg.rotary_dims,
        base: cfg.rope_base,
    }
}

pub fn forward_stack<B: Backend>(
    be: &B,
    cfg: &ModelConfig,
    w: &Weights<B::Buf>,
    inp: StackInput<'_, B::Buf>,
) -> Trace<B::Buf> {
    let (h, rows) = (cfg.hidden, inp.batch * inp.seq);
    let p_len = inp.prefix.map_or(0, |p| p.len);
    let positions: Vec<u32> = (0..rows).map(|r| (p_len + r % inp.seq) as u32).collect();
    let mut x = be.zeros(rows * h);
    be.embed(&mut x, &w.embed, inp.ids, h);
    let mut layers = Vec::new();
    let mut qkv_per_layer = Vec::new();
    for (li, lw) in w.layers.iter().enumerate() {
        let prefix_qkv = inp.prefix.map(|p| &p.layers[li]);
        let (x_next, acts) = layer_forward(be, cfg, lw, x, &positions, &inp, prefix_qkv, p_len);
        if inp.keep_qkv {
            let mut q = be.zeros(be.len(&acts.qkv));
            be.copy(&mut q, &acts.qkv);
            qkv_per_layer.push(q);
        }
        if inp.keep {
            layers.push(acts);
        }
        x = x_next;
    }
    Trace {
        rows,
        positions,
        layers,
        qkv_per_layer,
        x_out: x,
    }
}

#[allow(clippy::too_many_arguments)]
fn layer_forward<B: Backend>(
    be: &B,
    cfg: &ModelConfig,
    lw: &LayerWeights<B::Buf>,
    x: B::Buf,
    positions: &[u32],
    inp: &StackInput<'_, B::Buf>,
    prefix_qkv: Option<&B::Buf>,
    p_len: usize,
) -> (B::Buf, LayerActs<B::Buf>) {
    let rows = inp.batch * inp.seq;
    let QkvActs {
        a,
        mean1,
        rstd1,
        qkv,
    } = qkv_forward(be, cfg, lw, &x, positions, rows);
    let mut att = be.zeros(rows * cfg.attn_dim());
    let mut lse = be.zeros(rows * cfg.heads);
    let shape = attn_shape(cfg, inp.batch, inp.seq, p_len);
    be.attention(&mut att, &mut lse, &qkv, prefix_qkv, inp.lens, shape);
    let (resid, post) = post_attention(be, cfg, lw, &x, &att, rows, true);
    let PostActs {
        ao,
        h,
        m,
        mean2,
        rstd2,
        u,
        g,
    } = post;
    let acts = LayerActs {
        x,
        a,
        mean1,
        rstd1,
        qkv,
        att,
        lse,
        ao,
        h,
        m,
        mean2,
        rstd2,
        u,
        g,
    };
    (resid, acts)
}

/// What a layer computes before attention.
pub(super) struct QkvActs<Buf> {
    pub a: Buf,
    pub mean1: Buf,
    pub rstd1: Buf,
    /// After rotary.
    pub qkv: Buf,
}

/// A layer up to attention: first norm, qkv projection, rotary. Shared by the training
/// forward and the lean scoring forward (`scoring.rs`) so both compute the same numbers.
pub(super) fn qkv_forward<B: Backend>(
    be: &B,
    cfg: &ModelConfig,
    lw: &LayerWeights<B::Buf>,
    x: &B::Buf,
    positions: &[u32],
    rows: usize,
) -> QkvActs<B::Buf> {
    let h = cfg.hidden;
    let mut a = be.zeros(rows * h);
    let mut mean1 = be.zeros(rows);
    let mut rstd1 = be.zeros(rows);
    be.norm(
        cfg.norm,
        &mut a,
        &mut mean1,
        &mut rstd1,
        x,
        &lw.ln1_w,
        lw.ln1_b.as_ref(),
        rows,
        h,
        cfg.norm_eps,
    );
    let mut qkv = be.zeros(rows * cfg.qkv_dim());
    be.matmul(
        &mut qkv,
        &a,
        &lw.qkv_w,
        lw.qkv_b.as_ref(),
        rows,
        h,
        cfg.qkv_dim(),
        false,
    );
    be.rotary(&mut qkv, positions, rotary_shape(cfg, rows), false);
    QkvActs {
        a,
        mean1,
        rstd1,
        qkv,
    }
}

/// What a layer computes after attention (besides its output).
pub(super) struct PostActs<Buf> {
    pub ao: Buf,
    /// x + ao, kept for sequential blocks when asked to.
    pub h: Option<Buf>,
    pub m: Buf,
    pub mean2: Buf,
    pub rstd2: Buf,
    pub u: Buf,
    pub g: Buf,
}

/// A layer from its attention output `att` [rows, attn_dim] on: output projection, residual,
/// second norm, MLP. Returns the layer output and the intermediates; `keep_h` copies the
/// sequential block's x + ao (the backward needs it; the output overwrites it).
pub(super) fn post_attention<B: Backend>(
    be: &B,
    cfg: &ModelConfig,
    lw: &LayerWeights<B::Buf>,
    x: &B::Buf,
    att: &B::Buf,
    rows: usize,
    keep_h: bool,
) -> (B::Buf, PostActs<B::Buf>) {
    let (h, ad, ud, id) = (cfg.hidden, cfg.attn_dim(), cfg.up_rows(), cfg.intermediate);
    let mut ao = be.zeros(rows * h);
    be.matmul(&mut ao, att, &lw.o_w, lw.o_b.as_ref(), rows, ad, h, false);
    // Parallel residual: both branches read x. Sequential: the MLP reads h = x + attn.
    let mut resid = be.zeros(rows * h);
    be.add(&mut resid, x, &ao);
    let hbuf = (keep_h && !cfg.parallel_residual).then(|| {
        let mut hb = be.zeros(rows * h);
        be.copy(&mut hb, &resid);
        hb
    });
    let mlp_in = if cfg.parallel_residual { x } else { &resid };
    let mut m = be.zeros(rows * h);
    let mut mean2 = be.zeros(rows);
    let mut rstd2 = be.zeros(rows);
    be.norm(
        cfg.norm,
        &mut m,
        &mut mean2,
        &mut rstd2,
        mlp_in,
        &lw.ln2_w,
        lw.ln2_b.as_ref(),
        rows,
        h,
        cfg.norm_eps,
    );
    let mut u = be.zeros(rows * ud);
    be.matmul(&mut u, &m, &lw.up_w, lw.up_b.as_ref(), rows, h, ud, false);
    let mut g = be.zeros(rows * id);
    be.activation(cfg.act, &mut g, &u, rows, id);
    // x_next = resid + g . down^T + b, accumulated in place.
    be.matmul(
        &mut resid,
        &g,
        &lw.down_w,
        lw.down_b.as_ref(),
        rows,
        id,
        h,
        true,
    );
    let post = PostActs {
        ao,
        h: hbuf,
        m,
        mean2,
        rstd2,
        u,
        g,
    };
    (resid, post)
}

/// Backward through the layer stack. `dx` is the gradient w.r.t. `trace.x_out`; returns the
/// gradient w.r.t. the embedding output. Weight gradients accumulate into `grads` if given.
/// `lens` holds one real length per sequence of the traced batch.
#[allow(clippy::too_many_arguments)]
pub fn backward_stack<B: Backend>(
    be: &B,
    cfg: &ModelConfig,
    w: &Weights<B::Buf>,
    trace: &Trace<B::Buf>,
    lens: &[usize],
    prefix: Option<&PrefixCache<B::Buf>>,
    mut dx: B::Buf,
    mut grads: Option<&mut Weights<B::Buf>>,
) -> B::Buf {
    assert_eq!(
        trace.layers.len(),
        cfg.layers,
        "backward needs a trace with kept activations"
    );
    let (h, rows, batch) = (cfg.hidden, trace.rows, lens.len());
    let seq = rows / batch;
    let (qd, ad, ud, id) = (
        cfg.qkv_dim(),
        cfg.attn_dim(),
        cfg.up_rows(),
        cfg.intermediate,
    );
    for li in (0..cfg.layers).rev() {
        let (lw, s) = (&w.layers[li], &trace.layers[li]);
        let lg = grads.as_deref_mut().map(|g| &mut g.layers[li]);
        let LayerGrads {
            gw_down,
            gb_down,
            gw_up,
            gb_up,
            gw_ln2,
            gb_ln2,
            gw_o,
            gb_o,
            gw_qkv,
            gb_qkv,
            gw_ln1,
            gb_ln1,
        } = LayerGrads::split(lg);
        // MLP down projection and activation.
        let mut dg = be.zeros(rows * id);
        be.matmul_bwd(
            Some((&mut dg, false)),
            gw_down,
            gb_down,
            &dx,
            &s.g,
            &lw.down_w,
            rows,
            id,
            h,
        );
        let mut du = be.zeros(rows * ud);
        be.activation_bwd(cfg.act, &mut du, &dg, &s.u, rows, id);
        let mut dm = be.zeros(rows * h);
        be.matmul_bwd(
            Some((&mut dm, false)),
            gw_up,
            gb_up,
            &du,
            &s.m,
            &lw.up_w,
            rows,
            h,
            ud,
        );
        // Second norm: its input is x (parallel) or h (sequential); dx_in collects both paths.
        let mut dx_in = be.zeros(rows * h);
        be.copy(&mut dx_in, &dx);
        let norm2_in = s.h.as_ref().unwrap_or(&s.x);
        be.norm_bwd(
            cfg.norm, &mut dx_in, gw_ln2, gb_ln2, &dm, norm2_in, &s.mean2, &s.rstd2, &lw.ln2_w,
            rows, h,
        );
        // d(attention output): dx for parallel blocks, dh (= dx_in so far) for sequential.
        let dao = if cfg.parallel_residual { &dx } else { &dx_in };
        let mut datt = be.zeros(rows * ad);
        be.matmul_bwd(
            Some((&mut datt, false)),
            gw_o,
            gb_o,
            dao,
            &s.att,
            &lw.o_w,
            rows,
            ad,
            h,
        );
        let mut dqkv = be.zeros(rows * qd);
        let prefix_qkv = prefix.map(|p| &p.layers[li]);
        let shape = attn_shape(cfg, batch, seq, prefix.map_or(0, |p| p.len));
        be.attention_bwd(
            &mut dqkv, &datt, &s.qkv, prefix_qkv, &s.att, &s.lse, lens, shape,
        );
        be.rotary(&mut dqkv, &trace.positions, rotary_shape(cfg, rows), true);
        let mut da = be.zeros(rows * h);
        be.matmul_bwd(
            Some((&mut da, false)),
            gw_qkv,
            gb_qkv,
            &dqkv,
            &s.a,
            &lw.qkv_w,
            rows,
            h,
            qd,
        );
        be.norm_bwd(
            cfg.norm, &mut dx_in, gw_ln1, gb_ln1, &da, &s.x, &s.mean1, &s.rstd1, &lw.ln1_w, rows, h,
        );
        dx = dx_in;
    }
    dx
}

/// The weight-gradient slots of one layer, borrowed separately so each op can take its own.
struct LayerGrads<'a, T> {
    gw_down: Option<&'a mut T>,
    gb_down: Option<&'a mut T>,
    gw_up: Option<&'a mut T>,
    gb_up: Option<&'a mut T>,
    gw_ln2: Option<&'a mut T>,
    gb_ln2: Option<&'a mut T>,
    gw_o: Option<&'a mut T>,
    gb_o: Option<&'a mut T>,
    gw_qkv: Option<&'a mut T>,
    gb_qkv: Option<&'a mut T>,
    gw_ln1: Option<&'a mut T>,
    gb_ln1: Option<&'a mut T>,
}

impl<'a, T> LayerGrads<'a, T> {
    fn split(lg: Option<&'a mut LayerWeights<T>>) -> Self {
        match lg {
            None => LayerGrads {
                gw_down: None,
                gb_down: None,
                gw_up: None,
                gb_up: None,
                gw_ln2: None,
                gb_ln2: None,
                gw_o: None,
                gb_o: None,
                gw_qkv: None,
                gb_qkv: None,
                gw_ln1: None,
                gb_ln1: None,
            },
            Some(g) => LayerGrads {
                gw_down: Some(&mut g.down_w),
                gb_down: g.down_b.as_mut(),
                gw_up: Some(&mut g.up_w),
                gb_up: g.up_b.as_mut(),
                gw_ln2: Some(&mut g.ln2_w),
                gb_ln2: g.ln2_b.as_mut(),
                gw_o: Some(&mut g.o_w),
                gb_o: g.o_b.as_mut(),
                gw_qkv: Some(&mut g.qkv_w),
                gb_qkv: g.qkv_b.as_mut(),
                gw_ln1: Some(&mut g.ln1_w),
                gb_ln1: g.ln1_b.as_mut(),
            },
        }
    }
}

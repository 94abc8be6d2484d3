//! Fast forward paths for scoring attack candidates, beside the general ones in `mod.rs`.
//!
//! Three savings over `Model::logits` on full sequences (DESIGN.md, "The hot path"):
//! - continuations run against a cached prefix, and a prefix can be *viewed* at any shorter
//!   length ([`PrefixView`]) so candidates that first differ at attack position p reuse the
//!   keys and values of everything before p without a copy;
//! - [`Model::extend_prefix`] grows a cache by more tokens (their qkv appended);
//! - the last-layer shortcut: only the rows a head reads need the last layer's attention
//!   output projection, MLP and final norm, so those run on the gathered rows alone.
//!
//! The layer loop here is a lean twin of `transformer::layer_forward` (same ops in the same
//! order, so the numbers agree bit for bit up to the shortcut) that keeps nothing for a
//! backward pass. `tests/attack.rs` checks it against `Model::loss_and_grads` and `logits`.

use super::batch::Batch;
use super::config::HeadKind;
use super::transformer::{backward_stack, PrefixCache};
use super::Model;
use crate::backend::{AttnShape, Backend, RotaryShape};
use crate::error::{Error, Result};

/// The first `len` positions of a prefix cache. Attention reads only the first
/// `AttnShape::prefix` rows of the prefix buffer (on every backend), so a view needs no copy.
pub struct PrefixView<'a, Buf> {
    pub cache: &'a PrefixCache<Buf>,
    pub len: usize,
}

impl<'a, Buf> PrefixView<'a, Buf> {
    pub fn new(cache: &'a PrefixCache<Buf>, len: usize) -> Result<Self> {
        if len == 0 || len > cache.len {
            return Err(Error::input(format!(
                "prefix view of length {len} on a cache of {} positions (need 1..={})",
                cache.len, cache.len
            )));
        }
        Ok(PrefixView { cache, len })
    }

    /// The whole cache.
    pub fn all(cache: &'a PrefixCache<Buf>) -> Self {
        PrefixView {
            cache,
            len: cache.len,
        }
    }
}

/// What the top of the lean stack must produce.
#[derive(Clone, Copy)]
enum Top<'a> {
    /// Only every layer's qkv (extending a cache): the last layer stops after rotary.
    QkvOnly,
    /// The final hidden states at these rows; `shortcut` runs the last layer's attention
    /// output projection and MLP for these rows only.
    Rows { rows: &'a [usize], shortcut: bool },
}

impl<B: Backend> Model<B> {
    /// A cache of `cache`'s positions followed by `ids` (or of `ids` alone), computed by
    /// running only `ids` against the cache. Positions continue from the cache's length.
    pub fn extend_prefix(
        &self,
        cache: Option<&PrefixCache<B::Buf>>,
        ids: &[u32],
    ) -> Result<PrefixCache<B::Buf>> {
        if ids.is_empty() {
            return Err(Error::input("extend_prefix: no tokens to add"));
        }
        let batch = Batch {
            ids: ids.to_vec(),
            batch: 1,
            seq: ids.len(),
            lens: vec![ids.len()],
        };
        let view = cache.map(PrefixView::all);
        let (_, new) = self.lean_stack(view.as_ref(), &batch, Top::QkvOnly, true)?;
        let Some(cache) = cache else {
            return Ok(PrefixCache {
                len: ids.len(),
                ids: ids.to_vec(),
                layers: new,
            });
        };
        // Concatenate per layer: old rows then new rows (adding into zeros is exact).
        let (be, qd, old, n) = (&self.backend, self.cfg.qkv_dim(), cache.len, ids.len());
        let old_rows: Vec<usize> = (0..old).collect();
        let new_rows: Vec<usize> = (old..old + n).collect();
        let layers = cache
            .layers
            .iter()
            .zip(&new)
            .map(|(o, nw)| {
                let mut out = be.zeros((old + n) * qd);
                be.scatter_add_rows(&mut out, o, &old_rows, qd);
                be.scatter_add_rows(&mut out, nw, &new_rows, qd);
                out
            })
            .collect();
        let mut all_ids = cache.ids.clone();
        all_ids.extend_from_slice(ids);
        Ok(PrefixCache {
            len: old + n,
            ids: all_ids,
            layers,
        })
    }

    /// Head outputs (classifier logits, or LM logits over the vocab) at `rows` of `batch`,
    /// run against `prefix` if given: [rows.len(), head width], in the order of `rows`.
    /// With `shortcut`, the last layer computes its attention output projection, MLP and
    /// the final norm for `rows` only (its qkv and attention still cover every row: the
    /// attention op computes all queries).
    pub fn logits_at_rows(
        &self,
        prefix: Option<&PrefixView<'_, B::Buf>>,
        batch: &Batch,
        rows: &[usize],
        shortcut: bool,
    ) -> Result<Vec<f32>> {
        if rows.is_empty() {
            return Err(Error::input("logits_at_rows: no rows requested"));
        }
        if let Some(&r) = rows.iter().find(|&&r| r >= batch.rows()) {
            return Err(Error::input(format!(
                "row {r} is outside the batch ({} rows)",
                batch.rows()
            )));
        }
        let (x, _) = self.lean_stack(prefix, batch, Top::Rows { rows, shortcut }, false)?;
        let x = x.expect("Top::Rows yields hidden states");
        let all: Vec<usize> = (0..rows.len()).collect();
        Ok(self.backend.download(&self.head_forward(&x, &all).0))
    }

    /// One-hot gradient of an arbitrary loss of the head outputs at `rows`: `dlogits` gets
    /// the logits [rows.len(), head width] and returns d loss / d logits of the same shape.
    /// Returns (logits, gradient [onehot_rows.len(), vocab]). For losses that are not the
    /// plain cross-entropy of `Model::loss_and_grads` (e.g. mellowmax); weights get none.
    pub fn onehot_grad_with(
        &self,
        batch: &Batch,
        rows: &[usize],
        onehot_rows: &[usize],
        dlogits: impl FnOnce(&[f32]) -> Vec<f32>,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        if let Some(&r) = rows.iter().chain(onehot_rows).find(|&&r| r >= batch.rows()) {
            return Err(Error::input(format!(
                "row {r} is outside the batch ({} rows)",
                batch.rows()
            )));
        }
        let (be, h, c) = (&self.backend, self.cfg.hidden, self.head_width());
        let trace = self.run_stack(batch, None, true)?;
        let (logits, xf, nf, mean, rstd) = self.head_forward(&trace.x_out, rows);
        let host = be.download(&logits);
        let dl = dlogits(&host);
        if dl.len() != host.len() {
            return Err(Error::input(format!(
                "dlogits has {} values for {} logits",
                dl.len(),
                host.len()
            )));
        }
        let r = rows.len();
        let mut dnf = be.zeros(r * h);
        let dl = be.upload(&dl);
        be.matmul_bwd(
            Some((&mut dnf, false)),
            None,
            None,
            &dl,
            &nf,
            self.head_matrix(),
            r,
            h,
            c,
        );
        let mut dxf = be.zeros(r * h);
        let w = &self.weights;
        be.norm_bwd(
            self.cfg.norm,
            &mut dxf,
            None,
            None,
            &dnf,
            &xf,
            &mean,
            &rstd,
            &w.final_w,
            r,
            h,
        );
        let mut dx = be.zeros(batch.rows() * h);
        be.scatter_add_rows(&mut dx, &dxf, rows, h);
        let demb = backward_stack(be, &self.cfg, w, &trace, &batch.lens, batch.batch, dx, None);
        let n = onehot_rows.len();
        let mut d = be.zeros(n * h);
        be.gather_rows(&mut d, &demb, onehot_rows, h);
        let mut oh = be.zeros(n * self.cfg.vocab);
        // d loss / d onehot = d loss / d embedding row . E^T
        be.matmul(&mut oh, &d, &w.embed, None, n, h, self.cfg.vocab, false);
        Ok((host, be.download(&oh)))
    }

    /// Whether this model reads one row per sequence (a classifier) or many (a causal LM).
    pub fn is_classifier(&self) -> bool {
        matches!(self.cfg.head, HeadKind::Classifier { .. })
    }

    /// The layer stack without saved activations. Returns the hidden states the top asks
    /// for and, with `keep_qkv`, every layer's qkv (after rotary) for a cache.
    fn lean_stack(
        &self,
        prefix: Option<&PrefixView<'_, B::Buf>>,
        batch: &Batch,
        top: Top<'_>,
        keep_qkv: bool,
    ) -> Result<StackOut<B::Buf>> {
        batch.check_vocab(self.cfg.vocab)?;
        if let Some(p) = prefix {
            if p.cache.layers.len() != self.cfg.layers {
                return Err(Error::input(format!(
                    "prefix cache has {} layers, the model {}",
                    p.cache.layers.len(),
                    self.cfg.layers
                )));
            }
        }
        let (be, h) = (&self.backend, self.cfg.hidden);
        let p_len = prefix.map_or(0, |p| p.len);
        let rows = batch.rows();
        let positions: Vec<u32> = (0..rows).map(|r| (p_len + r % batch.seq) as u32).collect();
        let mut x = be.zeros(rows * h);
        be.embed(&mut x, &self.weights.embed, &batch.ids, h);
        let mut kept = Vec::new();
        let last = self.cfg.layers - 1;
        for li in 0..self.cfg.layers {
            let mode = match (li == last, top) {
                (true, Top::QkvOnly) => LayerMode::QkvOnly,
                (
                    true,
                    Top::Rows {
                        rows,
                        shortcut: true,
                    },
                ) => LayerMode::Rows(rows),
                _ => LayerMode::Full,
            };
            let ctx = LayerCtx {
                batch,
                positions: &positions,
                prefix,
                keep_qkv,
            };
            match self.lean_layer(li, x, &ctx, mode, &mut kept) {
                Some(next) => x = next,
                None => return Ok((None, kept)),
            }
        }
        let out = match top {
            Top::Rows {
                rows,
                shortcut: false,
            } => {
                let mut g = be.zeros(rows.len() * h);
                be.gather_rows(&mut g, &x, rows, h);
                g
            }
            _ => x,
        };
        Ok((Some(out), kept))
    }

    /// One layer. `LayerMode::Rows` continues after attention with the selected rows only
    /// (the output has rows.len() rows); `QkvOnly` returns None after the qkv projection.
    fn lean_layer(
        &self,
        li: usize,
        x: B::Buf,
        ctx: &LayerCtx<'_, '_, B::Buf>,
        mode: LayerMode<'_>,
        kept: &mut Vec<B::Buf>,
    ) -> Option<B::Buf> {
        let (be, cfg, lw) = (&self.backend, &self.cfg, &self.weights.layers[li]);
        let (h, rows, eps) = (cfg.hidden, ctx.batch.rows(), cfg.norm_eps);
        let (qd, ad, ud, id) = (
            cfg.qkv_dim(),
            cfg.attn_dim(),
            cfg.up_rows(),
            cfg.intermediate,
        );
        let mut a = be.zeros(rows * h);
        let (mut mean, mut rstd) = (be.zeros(rows), be.zeros(rows));
        be.norm(
            cfg.norm,
            &mut a,
            &mut mean,
            &mut rstd,
            &x,
            &lw.ln1_w,
            lw.ln1_b.as_ref(),
            rows,
            h,
            eps,
        );
        let mut qkv = be.zeros(rows * qd);
        be.matmul(
            &mut qkv,
            &a,
            &lw.qkv_w,
            lw.qkv_b.as_ref(),
            rows,
            h,
            qd,
            false,
        );
        drop(a);
        let rot = RotaryShape {
            rows,
            heads: cfg.heads,
            kv_heads: cfg.kv_heads,
            head_dim: cfg.head_dim,
            rot_dims: cfg.rotary_dims,
            base: cfg.rope_base,
        };
        be.rotary(&mut qkv, ctx.positions, rot, false);
        if matches!(mode, LayerMode::QkvOnly) {
            kept.push(qkv);
            return None;
        }
        let mut att = be.zeros(rows * ad);
        let mut lse = be.zeros(rows * cfg.heads);
        let shape = AttnShape {
            batch: ctx.batch.batch,
            seq: ctx.batch.seq,
            heads: cfg.heads,
            kv_heads: cfg.kv_heads,
            head_dim: cfg.head_dim,
            prefix: ctx.prefix.map_or(0, |p| p.len),
        };
        let prefix_qkv = ctx.prefix.map(|p| &p.cache.layers[li]);
        be.attention(&mut att, &mut lse, &qkv, prefix_qkv, &ctx.batch.lens, shape);
        if ctx.keep_qkv {
            kept.push(qkv);
        }
        let (x, att, r) = match mode {
            LayerMode::Rows(sel) => {
                let mut xs = be.zeros(sel.len() * h);
                be.gather_rows(&mut xs, &x, sel, h);
                let mut atts = be.zeros(sel.len() * ad);
                be.gather_rows(&mut atts, &att, sel, ad);
                (xs, atts, sel.len())
            }
            _ => (x, att, rows),
        };
        let mut ao = be.zeros(r * h);
        be.matmul(&mut ao, &att, &lw.o_w, lw.o_b.as_ref(), r, ad, h, false);
        // Parallel residual: both branches read x. Sequential: the MLP reads x + attn.
        let mut resid = be.zeros(r * h);
        be.add(&mut resid, &x, &ao);
        let mlp_in = if cfg.parallel_residual { &x } else { &resid };
        let mut m = be.zeros(r * h);
        let (mut mean2, mut rstd2) = (be.zeros(r), be.zeros(r));
        be.norm(
            cfg.norm,
            &mut m,
            &mut mean2,
            &mut rstd2,
            mlp_in,
            &lw.ln2_w,
            lw.ln2_b.as_ref(),
            r,
            h,
            eps,
        );
        let mut u = be.zeros(r * ud);
        be.matmul(&mut u, &m, &lw.up_w, lw.up_b.as_ref(), r, h, ud, false);
        let mut g = be.zeros(r * id);
        be.activation(cfg.act, &mut g, &u, r, id);
        be.matmul(
            &mut resid,
            &g,
            &lw.down_w,
            lw.down_b.as_ref(),
            r,
            id,
            h,
            true,
        );
        Some(resid)
    }
}

/// Hidden states the top asked for (None for `Top::QkvOnly`) and the kept qkv per layer.
type StackOut<Buf> = (Option<Buf>, Vec<Buf>);

#[derive(Clone, Copy)]
enum LayerMode<'a> {
    Full,
    Rows(&'a [usize]),
    QkvOnly,
}

struct LayerCtx<'b, 'a, Buf> {
    batch: &'b Batch,
    positions: &'b [u32],
    prefix: Option<&'b PrefixView<'a, Buf>>,
    keep_qkv: bool,
}

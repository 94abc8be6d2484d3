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
//! The layer loop here runs `transformer`'s two layer halves (`qkv_forward`,
//! `post_attention`, so the numbers agree bit for bit up to the shortcut) with its own
//! attention step and keeps nothing for a backward pass. `tests/attack.rs` checks it against `Model::loss_and_grads` and `logits`.

use super::batch::Batch;
use super::config::HeadKind;
use super::transformer::{backward_stack, post_attention, qkv_forward, PrefixCache};
use super::Model;
use crate::backend::{AttnShape, Backend};
use crate::error::{Error, Result};

/// The first `len` positions of a prefix cache. Attention reads only the first
/// `AttnShape::prefix` rows of the prefix buffer (on every backend), so a view needs no copy.
pub struct PrefixView<'a, Buf> {
    pub cache: &'a PrefixCache<Buf>,
    pub len: usize,
}

// Manual impls: a view is two plain fields, whatever the buffer type is.
impl<Buf> Clone for PrefixView<'_, Buf> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<Buf> Copy for PrefixView<'_, Buf> {}

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

/// Continuations of one shape run against one prefix: a part of a multi-prefix batch.
pub struct Segment<'a, Buf> {
    pub prefix: Option<PrefixView<'a, Buf>>,
    pub batch: &'a Batch,
    /// Rows of `batch` whose head outputs are wanted.
    pub rows: &'a [usize],
}

/// What the top of the lean stack must produce.
#[derive(Clone, Copy)]
enum Top {
    /// Only every layer's qkv (extending a cache): the last layer stops after rotary.
    QkvOnly,
    /// The final hidden states at the segments' rows; `shortcut` runs the last layer's
    /// attention output projection and MLP for those rows only.
    Rows { shortcut: bool },
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
        let seg = Segment {
            prefix: cache.map(PrefixView::all),
            batch: &batch,
            rows: &[],
        };
        let (_, new) = self.lean_stack(std::slice::from_ref(&seg), Top::QkvOnly, true)?;
        self.backend.check()?;
        let Some(cache) = cache else {
            return Ok(PrefixCache {
                len: ids.len(),
                ids: ids.to_vec(),
                layers: new,
                generation: self.generation(),
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
            generation: self.generation(),
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
        let seg = Segment {
            prefix: prefix.copied(),
            batch,
            rows,
        };
        self.logits_multi(std::slice::from_ref(&seg), shortcut)
    }

    /// [`Self::logits_at_rows`] for several segments at once, each against its own prefix:
    /// the GEMMs see all their rows together (bigger, faster), attention runs per segment.
    /// Outputs are in segment order, each segment's in the order of its rows.
    pub fn logits_multi(&self, segs: &[Segment<'_, B::Buf>], shortcut: bool) -> Result<Vec<f32>> {
        let n: usize = segs.iter().map(|s| s.rows.len()).sum();
        if n == 0 {
            return Err(Error::input("logits: no rows requested"));
        }
        let (x, _) = self.lean_stack(segs, Top::Rows { shortcut }, false)?;
        let x = x.expect("Top::Rows yields hidden states");
        let all: Vec<usize> = (0..n).collect();
        let logits = self.backend.download(&self.head_forward(&x, &all).logits);
        self.backend.check()?;
        Ok(logits)
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
        let super::HeadActs {
            logits,
            xf,
            nf,
            mean,
            rstd,
        } = self.head_forward(&trace.x_out, rows);
        let host = be.download(&logits);
        be.check()?;
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
        let demb = backward_stack(be, &self.cfg, w, &trace, &batch.lens, None, dx, None);
        let n = onehot_rows.len();
        let mut d = be.zeros(n * h);
        be.gather_rows(&mut d, &demb, onehot_rows, h);
        let mut oh = be.zeros(n * self.cfg.vocab);
        // d loss / d onehot = d loss / d embedding row . E^T
        be.matmul(&mut oh, &d, &w.embed, None, n, h, self.cfg.vocab, false);
        let oh = be.download(&oh);
        be.check()?;
        Ok((host, oh))
    }

    /// Whether this model reads one row per sequence (a classifier) or many (a causal LM).
    pub fn is_classifier(&self) -> bool {
        matches!(self.cfg.head, HeadKind::Classifier { .. })
    }

    /// The layer stack without saved activations, over one or more segments whose rows
    /// are concatenated: projections and MLP run on all rows at once, attention per segment
    /// against its own prefix. Returns the hidden states the top asks for (rows in segment
    /// order) and, with `keep_qkv`, every layer's qkv (after rotary) for a cache.
    fn lean_stack(
        &self,
        segs: &[Segment<'_, B::Buf>],
        top: Top,
        keep_qkv: bool,
    ) -> Result<StackOut<B::Buf>> {
        let mut offsets = Vec::with_capacity(segs.len());
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut sel = Vec::new();
        for s in segs {
            s.batch.check_vocab(self.cfg.vocab)?;
            self.check_positions(s.prefix.map_or(0, |p| p.len) + s.batch.seq)?;
            if let Some(p) = &s.prefix {
                self.check_cache(p.cache)?;
                if p.cache.layers.len() != self.cfg.layers {
                    return Err(Error::input(format!(
                        "prefix cache has {} layers, the model {}",
                        p.cache.layers.len(),
                        self.cfg.layers
                    )));
                }
            }
            if let Some(&r) = s.rows.iter().find(|&&r| r >= s.batch.rows()) {
                return Err(Error::input(format!(
                    "row {r} is outside the batch ({} rows)",
                    s.batch.rows()
                )));
            }
            let (at, p_len) = (ids.len(), s.prefix.as_ref().map_or(0, |p| p.len));
            offsets.push(at);
            sel.extend(s.rows.iter().map(|&r| at + r));
            ids.extend_from_slice(&s.batch.ids);
            positions.extend((0..s.batch.rows()).map(|r| (p_len + r % s.batch.seq) as u32));
        }
        let (be, h) = (&self.backend, self.cfg.hidden);
        let mut x = be.zeros(ids.len() * h);
        be.embed(&mut x, &self.weights.embed, &ids, h);
        let ctx = LayerCtx {
            segs,
            offsets: &offsets,
            rows: ids.len(),
            positions: &positions,
            keep_qkv,
        };
        let mut kept = Vec::new();
        let last = self.cfg.layers - 1;
        for li in 0..self.cfg.layers {
            let mode = match (li == last, top) {
                (true, Top::QkvOnly) => LayerMode::QkvOnly,
                (true, Top::Rows { shortcut: true }) => LayerMode::Rows(&sel),
                _ => LayerMode::Full,
            };
            match self.lean_layer(li, x, &ctx, mode, &mut kept) {
                Some(next) => x = next,
                None => return Ok((None, kept)),
            }
        }
        let out = match top {
            Top::Rows { shortcut: false } => {
                let mut g = be.zeros(sel.len() * h);
                be.gather_rows(&mut g, &x, &sel, h);
                g
            }
            _ => x,
        };
        Ok((Some(out), kept))
    }

    /// Attention of every segment into `att` [rows, attn_dim] (and `lse`): in place when
    /// there is one segment, else each segment's qkv rows are gathered, attended against its
    /// prefix and its output scattered back.
    fn segment_attention(&self, li: usize, ctx: &LayerCtx<'_, '_, B::Buf>, qkv: &B::Buf) -> B::Buf {
        let (be, cfg) = (&self.backend, &self.cfg);
        let (qd, ad) = (cfg.qkv_dim(), cfg.attn_dim());
        let shape = |s: &Segment<'_, B::Buf>| AttnShape {
            batch: s.batch.batch,
            seq: s.batch.seq,
            heads: cfg.heads,
            kv_heads: cfg.kv_heads,
            head_dim: cfg.head_dim,
            prefix: s.prefix.as_ref().map_or(0, |p| p.len),
        };
        fn prefix_qkv<'s, Buf>(s: &'s Segment<'_, Buf>, li: usize) -> Option<&'s Buf> {
            s.prefix.as_ref().map(|p| &p.cache.layers[li])
        }
        let mut att = be.zeros(ctx.rows * ad);
        if let [s] = ctx.segs {
            let mut lse = be.zeros(ctx.rows * cfg.heads);
            be.attention(
                &mut att,
                &mut lse,
                qkv,
                prefix_qkv(s, li),
                &s.batch.lens,
                shape(s),
            );
            return att;
        }
        for (s, &at) in ctx.segs.iter().zip(ctx.offsets) {
            let n = s.batch.rows();
            let rows: Vec<usize> = (at..at + n).collect();
            let mut q = be.zeros(n * qd);
            be.gather_rows(&mut q, qkv, &rows, qd);
            let mut out = be.zeros(n * ad);
            let mut lse = be.zeros(n * cfg.heads);
            be.attention(
                &mut out,
                &mut lse,
                &q,
                prefix_qkv(s, li),
                &s.batch.lens,
                shape(s),
            );
            // `att` is zero here, so adding is a copy.
            be.scatter_add_rows(&mut att, &out, &rows, ad);
        }
        att
    }

    /// One layer. `LayerMode::Rows` continues after attention with the selected rows only
    /// (the output has that many rows); `QkvOnly` returns None after the qkv projection.
    fn lean_layer(
        &self,
        li: usize,
        x: B::Buf,
        ctx: &LayerCtx<'_, '_, B::Buf>,
        mode: LayerMode<'_>,
        kept: &mut Vec<B::Buf>,
    ) -> Option<B::Buf> {
        let (be, cfg, lw) = (&self.backend, &self.cfg, &self.weights.layers[li]);
        let qkv = qkv_forward(be, cfg, lw, &x, ctx.positions, ctx.rows).qkv;
        if matches!(mode, LayerMode::QkvOnly) {
            kept.push(qkv);
            return None;
        }
        let att = self.segment_attention(li, ctx, &qkv);
        if ctx.keep_qkv {
            kept.push(qkv);
        }
        let (h, ad) = (cfg.hidden, cfg.attn_dim());
        let (x, att, r) = match mode {
            LayerMode::Rows(sel) => {
                let mut xs = be.zeros(sel.len() * h);
                be.gather_rows(&mut xs, &x, sel, h);
                let mut atts = be.zeros(sel.len() * ad);
                be.gather_rows(&mut atts, &att, sel, ad);
                (xs, atts, sel.len())
            }
            _ => (x, att, ctx.rows),
        };
        Some(post_attention(be, cfg, lw, &x, &att, r, false).0)
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
    segs: &'b [Segment<'a, Buf>],
    /// First row of each segment in the concatenated rows.
    offsets: &'b [usize],
    rows: usize,
    positions: &'b [u32],
    keep_qkv: bool,
}

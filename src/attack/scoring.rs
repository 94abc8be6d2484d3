//! Candidate scoring: the loss and success of many candidate attacks on one example.
//!
//! The fast path (DESIGN.md, "The hot path"): the prompt before the attack slot is in the
//! subject's KV cache; the current attack is appended to it once per call; candidates are
//! grouped by the first attack position where they differ from the current attack and each
//! group runs only its tokens from that position on, against a view of the cache up to it;
//! the last layer runs past attention only for the rows the goal reads. [`score_naive`]
//! runs full sequences and is what the fast path must agree with.

use super::budget::{executed_lean, Top};
use super::candidates::first_diff;
use super::goal::{evaluate, LossKind};
use super::subject::{Subject, Victim};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::batch::Batch;
use crate::model::scoring::PrefixView;
use std::collections::BTreeMap;

/// Rows (tokens) per forward call: bounds activation memory for long prompts.
const MAX_ROWS: usize = 32 * 1024;

/// Per candidate loss and success, and the executed FLOPs it took.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scored {
    pub losses: Vec<f32>,
    pub success: Vec<bool>,
    pub executed: f64,
}

fn check_lengths(cands: &[Vec<u32>]) -> Result<usize> {
    let n = cands.first().map_or(0, Vec::len);
    if n == 0 || cands.iter().any(|c| c.len() != n) {
        return Err(Error::input(
            "candidates must be non-empty attacks of one common length",
        ));
    }
    Ok(n)
}

/// Scores `cands` on `s`, the fast way when `v.fast` allows. `reference` is the attack the
/// candidates were derived from (the current one): groups form by first difference to it.
pub fn score<B: Backend>(
    v: &Victim<B>,
    s: &Subject<B>,
    cands: &[Vec<u32>],
    reference: Option<&[u32]>,
    loss: LossKind,
) -> Result<Scored> {
    if cands.is_empty() {
        return Ok(Scored::default());
    }
    if !v.fast.prefix_cache {
        return score_naive(v, s, cands, loss);
    }
    let n = check_lengths(cands)?;
    let l0 = s.prompt.before.len();
    if l0 > 0 && s.cache().is_none() {
        return Err(Error::input(format!(
            "example {}: the prompt cache is not built (call Subject::ensure_cache)",
            s.index
        )));
    }
    let reference = reference.filter(|r| v.fast.group_reuse && r.len() == n);
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, c) in cands.iter().enumerate() {
        // At least one attack token stays in the continuation, so it is never empty.
        let p = reference.map_or(0, |r| first_diff(c, r).min(n - 1));
        groups.entry(p).or_default().push(i);
    }
    let model = v.model;
    let cfg = &model.cfg;
    let max_p = *groups.keys().next_back().unwrap_or(&0);
    let mut out = Scored {
        losses: vec![0.0; cands.len()],
        success: vec![false; cands.len()],
        executed: 0.0,
    };
    // The current attack's first max_p tokens appended to the prompt cache, once.
    let ext = match (max_p, reference) {
        (p, Some(r)) if p > 0 => {
            out.executed += executed_lean(cfg, 1, p, l0, Top::QkvOnly);
            Some(model.extend_prefix(s.cache(), &r[..p])?)
        }
        _ => None,
    };
    let tail: Vec<u32> = s.sequence(&[])[l0..].to_vec(); // after ++ target
    let full_len = s.len(n);
    let positions = s.loss_positions(full_len);
    let m = positions.len();
    let width = v.width();
    for (&p, idxs) in &groups {
        let view = match (&ext, p) {
            (_, 0) => s.cache().map(PrefixView::all),
            (Some(e), p) => Some(PrefixView::new(e, l0 + p)?),
            (None, _) => unreachable!("groups past 0 exist only with a reference"),
        };
        let start = l0 + p;
        let seq = full_len - start;
        for chunk in idxs.chunks((MAX_ROWS / seq).max(1)) {
            let mut ids = Vec::with_capacity(chunk.len() * seq);
            for &i in chunk {
                ids.extend_from_slice(&cands[i][p..]);
                ids.extend_from_slice(&tail);
            }
            let batch = Batch {
                ids,
                batch: chunk.len(),
                seq,
                lens: vec![seq; chunk.len()],
            };
            let rows: Vec<usize> = (0..chunk.len())
                .flat_map(|b| positions.iter().map(move |&t| b * seq + t - start))
                .collect();
            let logits = model.logits_at_rows(view.as_ref(), &batch, &rows, v.fast.shortcut)?;
            for (b, &i) in chunk.iter().enumerate() {
                let z = &logits[b * m * width..(b + 1) * m * width];
                (out.losses[i], out.success[i]) = evaluate(&s.goal, loss, z, width);
            }
            let top = Top::Rows {
                rows: rows.len(),
                shortcut: v.fast.shortcut,
            };
            out.executed += executed_lean(cfg, chunk.len(), seq, start, top);
        }
    }
    Ok(out)
}

/// Scores `cands` on full sequences: no cache, no grouping, no shortcut.
pub fn score_naive<B: Backend>(
    v: &Victim<B>,
    s: &Subject<B>,
    cands: &[Vec<u32>],
    loss: LossKind,
) -> Result<Scored> {
    if cands.is_empty() {
        return Ok(Scored::default());
    }
    let n = check_lengths(cands)?;
    let seq = s.len(n);
    let positions = s.loss_positions(seq);
    let (m, width) = (positions.len(), v.width());
    let mut out = Scored::default();
    for chunk in cands.chunks((MAX_ROWS / seq).max(1)) {
        let ids: Vec<u32> = chunk.iter().flat_map(|c| s.sequence(c)).collect();
        let batch = Batch {
            ids,
            batch: chunk.len(),
            seq,
            lens: vec![seq; chunk.len()],
        };
        let rows: Vec<usize> = (0..chunk.len())
            .flat_map(|b| positions.iter().map(move |&t| b * seq + t))
            .collect();
        let logits = v.model.logits_at_rows(None, &batch, &rows, false)?;
        for b in 0..chunk.len() {
            let (l, ok) = evaluate(
                &s.goal,
                loss,
                &logits[b * m * width..(b + 1) * m * width],
                width,
            );
            out.losses.push(l);
            out.success.push(ok);
        }
        let top = Top::Rows {
            rows: rows.len(),
            shortcut: false,
        };
        out.executed += executed_lean(&v.model.cfg, chunk.len(), seq, 0, top);
    }
    Ok(out)
}

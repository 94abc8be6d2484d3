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
use crate::model::config::ModelConfig;
use crate::model::scoring::{PrefixView, Segment};
use crate::model::transformer::PrefixCache;
use std::collections::BTreeMap;

/// Floats of transient activations one forward call may hold (1 GiB).
const CALL_FLOATS: usize = 256 << 20;

/// Rows (tokens) per forward call, so that one layer's temporaries fit CALL_FLOATS.
fn max_rows(cfg: &ModelConfig) -> usize {
    let per_row =
        4 * cfg.hidden + cfg.qkv_dim() + cfg.attn_dim() + cfg.up_rows() + cfg.intermediate;
    (CALL_FLOATS / per_row.max(1)).max(1)
}

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

/// Candidates of one example to score: attacks derived from `reference` (the current
/// attack; groups form by first difference to it).
pub struct Job<'a, B: Backend> {
    pub subject: &'a Subject<B>,
    pub cands: &'a [Vec<u32>],
    pub reference: Option<&'a [u32]>,
}

/// Scores `cands` on `s`, the fast way when `v.fast` allows (see [`score_many`]).
pub fn score<B: Backend>(
    v: &Victim<B>,
    s: &Subject<B>,
    cands: &[Vec<u32>],
    reference: Option<&[u32]>,
    loss: LossKind,
) -> Result<Scored> {
    let job = Job {
        subject: s,
        cands,
        reference,
    };
    Ok(score_many(v, std::slice::from_ref(&job), loss)?.remove(0))
}

/// What the fast path needs to know about one job.
struct Plan<B: Backend> {
    l0: usize,
    full_len: usize,
    /// after ++ target: the tokens every continuation ends with.
    tail: Vec<u32>,
    /// Loss positions in the full sequence.
    positions: Vec<usize>,
    /// The prompt cache extended by the reference's first tokens (groups past 0 view it).
    ext: Option<PrefixCache<B::Buf>>,
}

impl<B: Backend> Plan<B> {
    /// Tokens a candidate runs from group start `p` on (the rest comes from caches).
    fn seq(&self, p: usize) -> usize {
        self.full_len - self.l0 - p
    }
}

/// Scores several examples' candidates. Each example's candidates are grouped by their
/// first attack position p that differs from its reference; a group runs only its tokens
/// from p on, against a view of the example's cache extended by the reference up to p.
/// Groups of all examples are packed into calls of at most `max_rows` rows, so the GEMMs
/// see every group at once while attention runs per group against its own prefix.
pub fn score_many<B: Backend>(
    v: &Victim<B>,
    jobs: &[Job<'_, B>],
    loss: LossKind,
) -> Result<Vec<Scored>> {
    let mut out: Vec<Scored> = jobs
        .iter()
        .map(|j| Scored {
            losses: vec![0.0; j.cands.len()],
            success: vec![false; j.cands.len()],
            executed: 0.0,
        })
        .collect();
    if !v.fast.prefix_cache {
        for (o, j) in out.iter_mut().zip(jobs) {
            *o = score_naive(v, j.subject, j.cands, loss)?;
        }
        return Ok(out);
    }
    let (model, width) = (v.model, v.width());
    let cfg = &model.cfg;
    let max_rows = max_rows(cfg).min(v.rows_cap.get().unwrap_or(usize::MAX));
    let mut plans = Vec::with_capacity(jobs.len());
    // Pieces: (job, group start p, candidates) of at most max_rows rows each.
    let mut pieces: Vec<Piece> = Vec::new();
    for (ji, job) in jobs.iter().enumerate() {
        let s = job.subject;
        s.goal.validate(width)?;
        let l0 = s.prompt.before.len();
        if job.cands.is_empty() {
            plans.push(None);
            continue;
        }
        let n = check_lengths(job.cands)?;
        if l0 > 0 && s.cache().is_none() {
            return Err(Error::input(format!(
                "example {}: the prompt cache is not built (call Subject::ensure_cache)",
                s.index
            )));
        }
        let reference = job.reference.filter(|r| v.fast.group_reuse && r.len() == n);
        let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, c) in job.cands.iter().enumerate() {
            // At least one attack token stays in the continuation, so it is never empty.
            let p = reference.map_or(0, |r| first_diff(c, r).min(n - 1));
            groups.entry(p).or_default().push(i);
        }
        let max_p = *groups.keys().next_back().unwrap_or(&0);
        // The reference's first max_p tokens appended to the prompt cache, once.
        let ext = match (max_p, reference) {
            (p, Some(r)) if p > 0 => {
                out[ji].executed += executed_lean(cfg, 1, p, l0, Top::QkvOnly);
                Some(model.extend_prefix(s.cache(), &r[..p])?)
            }
            _ => None,
        };
        let full_len = s.len(n);
        for (&p, idxs) in &groups {
            let seq = full_len - l0 - p;
            pieces.extend(
                idxs.chunks((max_rows / seq).max(1))
                    .map(|c| (ji, p, c.to_vec())),
            );
        }
        plans.push(Some(Plan::<B> {
            l0,
            full_len,
            tail: s.sequence(&[])[l0..].to_vec(),
            positions: s.loss_positions(full_len),
            ext,
        }));
    }
    let calls = Calls {
        v,
        jobs,
        plans: &plans,
        loss,
    };
    let plan = |ji: usize| calls.plan(ji);
    let mut at = 0;
    while at < pieces.len() {
        // An out-of-memory split in an earlier call lowers the cap for the calls after it.
        let limit = max_rows.min(v.rows_cap.get().unwrap_or(usize::MAX));
        let mut end = at;
        let mut rows_in = 0;
        while end < pieces.len() {
            let r = calls.piece_rows(&pieces[end]);
            if end > at && rows_in + r > limit {
                break;
            }
            rows_in += r;
            end += 1;
        }
        let call = &pieces[at..end];
        at = end;
        // Counted once per call as planned, whether or not it is split below.
        for (ji, p, chunk) in call {
            let pl = plan(*ji);
            let top = Top::Rows {
                rows: chunk.len() * pl.positions.len(),
                shortcut: v.fast.shortcut,
            };
            let (start, seq) = (pl.l0 + p, pl.seq(*p));
            out[*ji].executed += executed_lean(cfg, chunk.len(), seq, start, top);
        }
        calls.run_or_split(call, &mut out)?;
    }
    Ok(out)
}

/// (job, group start p, candidate indices): candidates of one job that share a prefix.
type Piece = (usize, usize, Vec<usize>);

/// What running a packed call of pieces needs.
struct Calls<'c, 'a, B: Backend> {
    v: &'c Victim<'a, B>,
    jobs: &'c [Job<'a, B>],
    plans: &'c [Option<Plan<B>>],
    loss: LossKind,
}

impl<B: Backend> Calls<'_, '_, B> {
    fn plan(&self, ji: usize) -> &Plan<B> {
        self.plans[ji]
            .as_ref()
            .expect("jobs with pieces have a plan")
    }

    /// Rows a piece adds to a call.
    fn piece_rows(&self, (ji, p, c): &Piece) -> usize {
        c.len() * self.plan(*ji).seq(*p)
    }

    /// Runs `call`; when the device runs out of memory, splits it in half (between pieces,
    /// or a lone piece's candidates) and runs the halves, down to a single candidate. A
    /// candidate's logits do not depend on which others share its call, so the results are
    /// those of the unsplit call (bit for bit on the CPU and the harness; a GPU GEMM library
    /// may pick another algorithm for fewer rows, which changes the last bits).
    fn run_or_split(&self, call: &[Piece], out: &mut [Scored]) -> Result<()> {
        match self.run(call, out) {
            Err(e) if e.is_out_of_memory() => {
                let Some((a, b)) = halve(call) else {
                    return Err(e);
                };
                // Later calls (this step's and the next steps') pack at most half of what
                // did not fit.
                let rows: usize = call.iter().map(|pc| self.piece_rows(pc)).sum();
                self.v.rows_cap.lower(rows / 2);
                self.run_or_split(&a, out)?;
                self.run_or_split(&b, out)
            }
            r => r,
        }
    }

    /// One forward call over every piece of `call`; writes their losses and success flags.
    fn run(&self, call: &[Piece], out: &mut [Scored]) -> Result<()> {
        let (v, jobs) = (self.v, self.jobs);
        let mut batches = Vec::with_capacity(call.len());
        let mut rows = Vec::with_capacity(call.len());
        for (ji, p, chunk) in call {
            let pl = self.plan(*ji);
            let (start, seq) = (pl.l0 + p, pl.seq(*p));
            let mut ids = Vec::with_capacity(chunk.len() * seq);
            for &i in chunk {
                ids.extend_from_slice(&jobs[*ji].cands[i][*p..]);
                ids.extend_from_slice(&pl.tail);
            }
            batches.push(Batch {
                ids,
                batch: chunk.len(),
                seq,
                lens: vec![seq; chunk.len()],
            });
            let pos = &pl.positions;
            rows.push(
                (0..chunk.len())
                    .flat_map(|b| pos.iter().map(move |&t| b * seq + t - start))
                    .collect::<Vec<usize>>(),
            );
        }
        let mut segs = Vec::with_capacity(call.len());
        for (k, (ji, p, _)) in call.iter().enumerate() {
            let (pl, s) = (self.plan(*ji), jobs[*ji].subject);
            let prefix = match (&pl.ext, *p) {
                (_, 0) => s.cache().map(PrefixView::all),
                (Some(e), p) => Some(PrefixView::new(e, pl.l0 + p)?),
                (None, _) => unreachable!("groups past 0 exist only with a reference"),
            };
            segs.push(Segment {
                prefix,
                batch: &batches[k],
                rows: &rows[k],
            });
        }
        let logits = v.model.logits_multi(&segs, v.fast.shortcut)?;
        let width = v.width();
        let mut z = logits.as_slice();
        for (ji, _, chunk) in call {
            let block = self.plan(*ji).positions.len() * width;
            let goal = &jobs[*ji].subject.goal;
            for &i in chunk {
                let (zi, rest) = z.split_at(block);
                z = rest;
                (out[*ji].losses[i], out[*ji].success[i]) = evaluate(goal, self.loss, zi, width);
            }
        }
        Ok(())
    }
}

/// `call` in two non-empty halves; `None` for a single candidate.
fn halve(call: &[Piece]) -> Option<(Vec<Piece>, Vec<Piece>)> {
    match call {
        [] => None,
        [(ji, p, c)] => {
            if c.len() < 2 {
                return None;
            }
            let (a, b) = c.split_at(c.len() / 2);
            Some((vec![(*ji, *p, a.to_vec())], vec![(*ji, *p, b.to_vec())]))
        }
        _ => {
            let (a, b) = call.split_at(call.len() / 2);
            Some((a.to_vec(), b.to_vec()))
        }
    }
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
    s.goal.validate(v.width())?;
    let seq = s.len(n);
    let positions = s.loss_positions(seq);
    let (m, width) = (positions.len(), v.width());
    let mut out = Scored::default();
    for chunk in cands.chunks((max_rows(&v.model.cfg) / seq).max(1)) {
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

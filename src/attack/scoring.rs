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

/// Candidates of one example to score, as the full sequences the victim reads (prompt ++
/// goal suffix; lengths may differ, e.g. after retokenization). `reference` (GCG's current
/// attack in context) is a sequence the candidates derive from: the prompt cache is extended
/// along it once, so a candidate sharing a longer prefix with it runs fewer tokens.
pub struct Job<'a, B: Backend> {
    pub subject: &'a Subject<B>,
    pub seqs: &'a [Vec<u32>],
    pub reference: Option<&'a [u32]>,
}

/// Scores attacks `cands` (ids in the attack slot) on `s`, the fast way when `v.fast`
/// allows (see [`score_many`]); `reference` is an attack they derive from.
pub fn score<B: Backend>(
    v: &Victim<B>,
    s: &Subject<B>,
    cands: &[Vec<u32>],
    reference: Option<&[u32]>,
    loss: LossKind,
) -> Result<Scored> {
    let seqs: Vec<Vec<u32>> = cands.iter().map(|c| s.sequence(c)).collect();
    let reference = reference.map(|r| s.sequence(r));
    let job = Job {
        subject: s,
        seqs: &seqs,
        reference: reference.as_deref(),
    };
    Ok(score_many(v, std::slice::from_ref(&job), loss)?.remove(0))
}

/// Scores `seqs[i]`, full sequences, on `batch[i]` for every example at once (no
/// reference: the attacks that retokenize their text, random token and BEAST).
pub fn score_sequences<B: Backend>(
    v: &Victim<B>,
    batch: &[&mut Subject<B>],
    seqs: &[Vec<Vec<u32>>],
    loss: LossKind,
) -> Result<Vec<Scored>> {
    let jobs: Vec<Job<'_, B>> = batch
        .iter()
        .zip(seqs)
        .map(|(s, seqs)| Job {
            subject: &**s,
            seqs,
            reference: None,
        })
        .collect();
    score_many(v, &jobs, loss)
}

/// Length of the common prefix of `a` and `b`.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    first_diff(a, b).min(b.len())
}

/// What the fast path needs to know about one job.
struct Plan<B: Backend> {
    /// Tokens in the subject's prompt cache (`prompt.before`).
    l0: usize,
    /// The prompt cache extended along the reference, when some candidate shares more
    /// than `l0` tokens with it.
    ext: Option<PrefixCache<B::Buf>>,
}

/// Candidates of one job that share a cached prefix of `start` tokens and have `len`
/// tokens in all: they run `len - start` tokens each, in one batch.
#[derive(Clone, Debug)]
struct Piece {
    job: usize,
    start: usize,
    len: usize,
    cands: Vec<usize>,
}

impl Piece {
    fn seq(&self) -> usize {
        self.len - self.start
    }
    fn rows(&self) -> usize {
        self.cands.len() * self.seq()
    }
}

/// Scores several examples' candidates. A candidate runs only its tokens past the longest
/// prefix it shares with what is cached: the example's prompt cache (`prompt.before`), or
/// that cache extended along the job's reference (built once per job, as far as the
/// candidates need). Candidates with the same cached prefix and length form a piece; pieces
/// of all examples are packed into calls of at most `max_rows` rows, so the GEMMs see every
/// piece at once while attention runs per piece against its own prefix. At least one token
/// of each candidate always runs: every position the goal reads. A candidate longer than
/// the model's context is not run: it fails, with loss +inf.
pub fn score_many<B: Backend>(
    v: &Victim<B>,
    jobs: &[Job<'_, B>],
    loss: LossKind,
) -> Result<Vec<Scored>> {
    let mut out: Vec<Scored> = jobs
        .iter()
        .map(|j| Scored {
            losses: vec![0.0; j.seqs.len()],
            success: vec![false; j.seqs.len()],
            executed: 0.0,
        })
        .collect();
    if !v.fast.prefix_cache {
        for (o, j) in out.iter_mut().zip(jobs) {
            *o = score_naive_seqs(v, j.subject, j.seqs, loss)?;
        }
        return Ok(out);
    }
    let (model, width) = (v.model, v.width());
    let cfg = &model.cfg;
    let max_rows = max_rows(cfg).min(v.rows_cap.get().unwrap_or(usize::MAX));
    let mut plans = Vec::with_capacity(jobs.len());
    let mut pieces: Vec<Piece> = Vec::new();
    for (ji, job) in jobs.iter().enumerate() {
        let s = job.subject;
        s.goal.validate(width)?;
        check_seqs(s, job.seqs)?;
        let l0 = s.prompt.before.len();
        if l0 > 0 && s.cache().is_none() {
            return Err(Error::input(format!(
                "example {}: the prompt cache is not built (call Subject::ensure_cache)",
                s.index
            )));
        }
        let before = &s.prompt.before;
        let reference = job
            .reference
            .filter(|r| v.fast.group_reuse && r.len() > l0 && r[..l0] == before[..]);
        // (cached prefix, length) per candidate.
        let starts: Vec<usize> = job
            .seqs
            .iter()
            .map(|c| {
                let on_prompt = common_prefix(c, before);
                let on_ref = reference.map_or(0, |r| common_prefix(c, r));
                // Every row the goal reads runs (the first is where a target starts).
                let first_read = s.loss_positions(c.len())[0];
                on_prompt.max(on_ref).min(first_read)
            })
            .collect();
        let max_start = starts.iter().copied().max().unwrap_or(0);
        let ext = match reference {
            Some(r) if max_start > l0 => {
                out[ji].executed += executed_lean(cfg, 1, max_start - l0, l0, Top::QkvOnly);
                Some(model.extend_prefix(s.cache(), &r[l0..max_start])?)
            }
            _ => None,
        };
        let mut groups: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
        for (i, (c, &p)) in job.seqs.iter().zip(&starts).enumerate() {
            if c.len() > cfg.max_positions {
                // The victim cannot read it: a failed candidate, not an error (a retokenized
                // attack text can come out longer than the context).
                out[ji].losses[i] = f32::INFINITY;
                continue;
            }
            groups.entry((p, c.len())).or_default().push(i);
        }
        for ((start, len), idxs) in groups {
            pieces.extend(
                idxs.chunks((max_rows / (len - start)).max(1))
                    .map(|c| Piece {
                        job: ji,
                        start,
                        len,
                        cands: c.to_vec(),
                    }),
            );
        }
        plans.push(Plan::<B> { l0, ext });
    }
    let calls = Calls {
        v,
        jobs,
        plans: &plans,
        loss,
    };
    let mut at = 0;
    while at < pieces.len() {
        // An out-of-memory split in an earlier call lowers the cap for the calls after it.
        let limit = max_rows.min(v.rows_cap.get().unwrap_or(usize::MAX));
        let mut end = at;
        let mut rows_in = 0;
        while end < pieces.len() {
            let r = pieces[end].rows();
            if end > at && rows_in + r > limit {
                break;
            }
            rows_in += r;
            end += 1;
        }
        let call = &pieces[at..end];
        at = end;
        // Counted once per call as planned, whether or not it is split below.
        for pc in call {
            let s = jobs[pc.job].subject;
            let top = Top::Rows {
                rows: pc.cands.len() * s.goal.rows_per_sequence(),
                shortcut: v.fast.shortcut,
            };
            out[pc.job].executed += executed_lean(cfg, pc.cands.len(), pc.seq(), pc.start, top);
        }
        calls.run_or_split(call, &mut out)?;
    }
    Ok(out)
}

/// Every sequence is long enough for the goal's loss positions.
fn check_seqs<B: Backend>(s: &Subject<B>, seqs: &[Vec<u32>]) -> Result<()> {
    let need = s.goal.rows_per_sequence() + s.goal.suffix_ids().len().min(1);
    match seqs.iter().position(|c| c.len() < need.max(1)) {
        Some(i) => Err(Error::input(format!(
            "example {}: candidate {i} has {} tokens, too few for its goal",
            s.index,
            seqs[i].len()
        ))),
        None => Ok(()),
    }
}

/// What running a packed call of pieces needs.
struct Calls<'c, 'a, B: Backend> {
    v: &'c Victim<'a, B>,
    jobs: &'c [Job<'a, B>],
    plans: &'c [Plan<B>],
    loss: LossKind,
}

impl<B: Backend> Calls<'_, '_, B> {
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
                let rows: usize = call.iter().map(Piece::rows).sum();
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
        for pc in call {
            let (job, seq) = (&jobs[pc.job], pc.seq());
            let mut ids = Vec::with_capacity(pc.rows());
            for &i in &pc.cands {
                ids.extend_from_slice(&job.seqs[i][pc.start..]);
            }
            batches.push(Batch {
                ids,
                batch: pc.cands.len(),
                seq,
                lens: vec![seq; pc.cands.len()],
            });
            let pos = job.subject.loss_positions(pc.len);
            rows.push(
                (0..pc.cands.len())
                    .flat_map(|b| pos.iter().map(move |&t| b * seq + t - pc.start))
                    .collect::<Vec<usize>>(),
            );
        }
        let mut segs = Vec::with_capacity(call.len());
        for (k, pc) in call.iter().enumerate() {
            let (pl, s) = (&self.plans[pc.job], jobs[pc.job].subject);
            let prefix = match pc.start {
                0 => None,
                p if p <= pl.l0 => Some(PrefixView::new(s.cache().expect("checked"), p)?),
                p => Some(PrefixView::new(pl.ext.as_ref().expect("built"), p)?),
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
        for pc in call {
            let goal = &jobs[pc.job].subject.goal;
            let block = goal.rows_per_sequence() * width;
            for &i in &pc.cands {
                let (zi, rest) = z.split_at(block);
                z = rest;
                (out[pc.job].losses[i], out[pc.job].success[i]) =
                    evaluate(goal, self.loss, zi, width);
            }
        }
        Ok(())
    }
}

/// `call` in two non-empty halves; `None` for a single candidate.
fn halve(call: &[Piece]) -> Option<(Vec<Piece>, Vec<Piece>)> {
    match call {
        [] => None,
        [pc] => {
            if pc.cands.len() < 2 {
                return None;
            }
            let (a, b) = pc.cands.split_at(pc.cands.len() / 2);
            let part = |c: &[usize]| Piece {
                cands: c.to_vec(),
                ..pc.clone()
            };
            Some((vec![part(a)], vec![part(b)]))
        }
        _ => {
            let (a, b) = call.split_at(call.len() / 2);
            Some((a.to_vec(), b.to_vec()))
        }
    }
}

/// Scores attacks `cands` on full sequences: no cache, no grouping, no shortcut.
pub fn score_naive<B: Backend>(
    v: &Victim<B>,
    s: &Subject<B>,
    cands: &[Vec<u32>],
    loss: LossKind,
) -> Result<Scored> {
    let seqs: Vec<Vec<u32>> = cands.iter().map(|c| s.sequence(c)).collect();
    score_naive_seqs(v, s, &seqs, loss)
}

/// [`score_naive`] of full sequences (of any lengths: equal lengths share a batch).
pub fn score_naive_seqs<B: Backend>(
    v: &Victim<B>,
    s: &Subject<B>,
    seqs: &[Vec<u32>],
    loss: LossKind,
) -> Result<Scored> {
    s.goal.validate(v.width())?;
    check_seqs(s, seqs)?;
    let width = v.width();
    let mut out = Scored {
        losses: vec![0.0; seqs.len()],
        success: vec![false; seqs.len()],
        executed: 0.0,
    };
    let mut by_len: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, c) in seqs.iter().enumerate() {
        if c.len() > v.model.cfg.max_positions {
            out.losses[i] = f32::INFINITY; // unreadable: a failed candidate (see score_many)
            continue;
        }
        by_len.entry(c.len()).or_default().push(i);
    }
    for (seq, idxs) in by_len {
        let positions = s.loss_positions(seq);
        let m = positions.len();
        for chunk in idxs.chunks((max_rows(&v.model.cfg) / seq).max(1)) {
            let ids: Vec<u32> = chunk.iter().flat_map(|&i| seqs[i].clone()).collect();
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
            for (b, &i) in chunk.iter().enumerate() {
                let z = &logits[b * m * width..(b + 1) * m * width];
                (out.losses[i], out.success[i]) = evaluate(&s.goal, loss, z, width);
            }
            let top = Top::Rows {
                rows: rows.len(),
                shortcut: false,
            };
            out.executed += executed_lean(&v.model.cfg, chunk.len(), seq, 0, top);
        }
    }
    Ok(out)
}

//! The shared attack loop: clean classification, iterations on groups of examples, results
//! written (and on resume replayed) unit by unit, progress reports, the summary.

use super::budget::Budget;
use super::candidates::nan_last;
use super::goal::{evaluate, LossKind};
use super::results::{AttackRecord, CleanLine, ExampleRecord, IterLine, Key, Line, ResultsLog};
use super::subject::{Subject, Victim};
use super::summary::{summarize, ExampleTrack, RunInfo, Summary};
use super::Attack;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::flops;
use crate::model::batch::Batch;
use std::time::Instant;

/// Padded tokens per batch of the clean classification.
const CLEAN_TOKENS: usize = 16 * 1024;

#[derive(Clone, Debug, PartialEq)]
pub struct RunOptions {
    pub budget: Budget,
    /// Examples attacked together (one batched gradient pass per iteration).
    pub group_size: usize,
    /// Stop right after computing this iteration, as if the process were killed (tests
    /// of resume; no summary is written).
    pub stop_after: Option<usize>,
    /// Attack examples whose goal already holds before the attack too (adversarial
    /// training attacks every example it draws); they count as broken from iteration 1.
    pub attack_misclassified: bool,
}

/// Where the run stands, after each unit.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Example-iterations done (or no longer needed) out of `total`.
    pub done: usize,
    pub total: usize,
    /// Broken / attacked so far.
    pub broken: usize,
    pub attacked: usize,
    pub nominal: f64,
    pub executed: f64,
    /// Whether the unit was replayed from an earlier run's results.
    pub replayed: bool,
}

pub struct RunOutput {
    pub summary: Summary,
    /// False when `stop_after` ended the run early.
    pub complete: bool,
    /// Each example's final and best attack (empty when the run ended early).
    pub examples: Vec<ExampleRecord>,
}

/// Builds (or rebuilds, after training) the prompt caches of `batch` when the victim uses
/// them, and returns each subject's cache cost to book to this iteration: the cost of
/// running `prompt.before` once, booked to iteration 1 whether or not this call built it, so
/// that a resumed run (which rebuilds caches) reports what an uninterrupted one does. The
/// runner calls it before every step; code driving [`Attack::step`] itself must too.
pub fn prepare_step<B: Backend>(
    v: &Victim<B>,
    batch: &mut [&mut Subject<B>],
    iteration: usize,
) -> Result<Vec<f64>> {
    let mut cost = vec![0.0; batch.len()];
    if !v.fast.prefix_cache {
        return Ok(cost);
    }
    for (c, s) in cost.iter_mut().zip(batch.iter_mut()) {
        s.ensure_cache(v.model)?;
        if iteration == 1 && !s.prompt.before.is_empty() {
            *c = flops::executed_forward(&v.model.cfg, 1, s.prompt.before.len(), 0, 0);
        }
    }
    Ok(cost)
}

/// The best attack of an example so far, and its last.
#[derive(Clone, Default)]
struct Kept {
    best: Option<AttackRecord>,
    last: Option<AttackRecord>,
    first_success: Option<AttackRecord>,
}

/// Runs `attack` on `subjects` (see the module docs of `attack`).
pub fn run<B: Backend>(
    attack: &dyn Attack<B>,
    v: &Victim<B>,
    subjects: &mut [Subject<B>],
    opts: &RunOptions,
    log: &mut ResultsLog,
    info: RunInfo,
    progress: &mut dyn FnMut(&Progress),
) -> Result<RunOutput> {
    if opts.group_size == 0 {
        return Err(Error::input("group size must be at least 1"));
    }
    for s in subjects.iter_mut() {
        attack.init(v, s)?;
    }
    let kind = attack.study_asr();
    let mut tracks = vec![ExampleTrack::default(); subjects.len()];
    let mut kept = vec![Kept::default(); subjects.len()];
    let mut skipped = 0;
    let mut units: Vec<(f64, usize)> = Vec::new();
    let total = subjects.len().saturating_mul(opts.budget.iterations);
    let mut p = Progress {
        done: 0,
        total,
        broken: 0,
        attacked: 0,
        nominal: 0.0,
        executed: 0.0,
        replayed: false,
    };
    let mut base = 0;
    for group in subjects.chunks_mut(opts.group_size) {
        let keys: Vec<Key> = group
            .iter()
            .map(|s| Key::Clean { example: s.index })
            .collect();
        let lines = match log.replay(&keys) {
            Some(l) => l,
            None => {
                let l = clean_lines(v, group, opts.attack_misclassified)?;
                log.append(&l)?;
                l
            }
        };
        for (i, l) in lines.iter().enumerate() {
            let Line::Clean(c) = l else {
                unreachable!("keys matched")
            };
            tracks[base + i].attacked = !c.skipped;
            tracks[base + i].clean_success = c.clean_success;
            p.attacked += usize::from(!c.skipped);
            if c.skipped {
                p.done = p.done.saturating_add(opts.budget.iterations);
            }
        }
        let mut done = vec![false; group.len()];
        for (i, d) in done.iter_mut().enumerate() {
            *d = !tracks[base + i].attacked;
        }
        for k in 1.. {
            // Who runs iteration k: attacked, not stopped, within budget.
            let mut active = Vec::new();
            for (i, s) in group.iter().enumerate() {
                let t = &tracks[base + i];
                if done[i] {
                    continue;
                }
                let stop = (attack.stops_on_success() && t.broken_at.is_some())
                    || !opts.budget.allows(k, t.nominal, attack.nominal_bound(v, s));
                if stop {
                    done[i] = true;
                    p.done = p.done.saturating_add(opts.budget.iterations - t.iterations);
                } else {
                    active.push(i);
                }
            }
            if active.is_empty() {
                break;
            }
            let keys: Vec<Key> = active
                .iter()
                .map(|&i| Key::Iter {
                    example: group[i].index,
                    iteration: k,
                })
                .collect();
            let (lines, replayed) = match log.replay(&keys) {
                Some(lines) => {
                    for (&i, l) in active.iter().zip(&lines) {
                        let Line::Iter(l) = l else {
                            unreachable!("keys matched")
                        };
                        let st = &mut group[i].state;
                        st.ids = l.attack_ids.clone();
                        st.prompt = l.prompt_ids.clone();
                        st.data = l.state.clone();
                    }
                    (lines, true)
                }
                None => {
                    let t0 = Instant::now();
                    let mut refs = pick_mut(group, &active);
                    let cache_cost = prepare_step(v, &mut refs, k)?;
                    let reports = attack.step(v, &mut refs, k)?;
                    drop(refs);
                    let wall = t0.elapsed().as_secs_f64();
                    let lines: Vec<Line> = active
                        .iter()
                        .zip(&reports)
                        .zip(&cache_cost)
                        .map(|((&i, r), cc)| {
                            let (s, t) = (&group[i], &tracks[base + i]);
                            let broken = t.broken_at.is_some() || r.success || r.success_before;
                            let best = kept[base + i]
                                .best
                                .as_ref()
                                .map_or(f32::INFINITY, |b| b.loss);
                            Line::Iter(IterLine {
                                example: s.index,
                                iteration: k,
                                loss: r.loss,
                                best_loss: best.min(r.loss),
                                success: r.success,
                                broken,
                                attack_ids: s.state.ids.clone(),
                                attack_text: v.tok.and_then(|tk| tk.decode(&s.state.ids).ok()),
                                // Only when it is not before ++ attack ++ after.
                                prompt_ids: s
                                    .state
                                    .prompt
                                    .clone()
                                    .filter(|p| *p != s.prompt.ids(&s.state.ids)),
                                candidates: r.scored,
                                rejected: r.rejected,
                                skipped: r.skipped,
                                nominal_flops: t.nominal + r.nominal,
                                executed_flops: t.executed + r.executed + cc,
                                wall_s: wall,
                                state: s.state.data.clone(),
                            })
                        })
                        .collect();
                    log.append(&lines)?;
                    (lines, false)
                }
            };
            let mut wall = 0.0;
            for (&i, l) in active.iter().zip(&lines) {
                let Line::Iter(l) = l else {
                    unreachable!("keys matched")
                };
                let t = &mut tracks[base + i];
                t.iterations = k;
                t.nominal = l.nominal_flops;
                t.executed = l.executed_flops;
                t.current.push(l.success);
                skipped += usize::from(l.skipped);
                if l.broken && t.broken_at.is_none() {
                    t.broken_at = Some(k);
                    p.broken += 1;
                }
                let rec = record(v, &group[i], l);
                let kp = &mut kept[base + i];
                if kp
                    .best
                    .as_ref()
                    .is_none_or(|b| nan_last(l.loss) < nan_last(b.loss))
                {
                    kp.best = Some(rec.clone());
                }
                if l.success && kp.first_success.is_none() {
                    kp.first_success = Some(rec.clone());
                }
                kp.last = Some(rec);
                wall = l.wall_s;
            }
            units.push((wall, active.len()));
            p.done = p.done.saturating_add(active.len());
            p.nominal = tracks.iter().map(|t| t.nominal).sum();
            p.executed = tracks.iter().map(|t| t.executed).sum();
            p.replayed = replayed;
            progress(&p);
            if crate::interrupt::requested() {
                return Err(Error::Interrupted);
            }
            if !replayed && opts.stop_after == Some(k) {
                return Ok(RunOutput {
                    summary: summarize(info, kind, &tracks, &units, skipped),
                    complete: false,
                    examples: Vec::new(),
                });
            }
        }
        base += group.len();
    }
    log.finish()?;
    let records: Vec<ExampleRecord> = subjects
        .iter()
        .zip(&tracks)
        .zip(kept)
        .map(|((s, t), k)| ExampleRecord {
            example: s.index,
            label: s.prompt.label,
            attacked: t.attacked,
            broken_at: t.broken_at,
            final_attack: k.last,
            best: k.best,
            first_success: k.first_success,
        })
        .collect();
    Ok(RunOutput {
        summary: summarize(info, kind, &tracks, &units, skipped),
        complete: true,
        examples: records,
    })
}

/// An iteration's attack of `s` as text.
fn record<B: Backend>(v: &Victim<B>, s: &Subject<B>, l: &IterLine) -> AttackRecord {
    let prompt_ids = l
        .prompt_ids
        .clone()
        .unwrap_or_else(|| s.prompt.ids(&l.attack_ids));
    AttackRecord {
        iteration: l.iteration,
        loss: l.loss,
        success: l.success,
        attack_ids: l.attack_ids.clone(),
        attack_text: l.attack_text.clone(),
        prompt_text: v.tok.and_then(|tk| tk.decode(&prompt_ids).ok()),
        prompt_ids,
    }
}

/// Mutable references to `group[i]` for each `i` of `idx` (ascending).
fn pick_mut<'a, T>(group: &'a mut [T], idx: &[usize]) -> Vec<&'a mut T> {
    let mut refs = Vec::with_capacity(idx.len());
    let mut rest: &mut [T] = group;
    let mut at = 0;
    for &i in idx {
        let (_, tail) = rest.split_at_mut(i - at);
        let (one, tail) = tail.split_first_mut().expect("index in range");
        refs.push(one);
        rest = tail;
        at = i + 1;
    }
    refs
}

/// Clean classification (or target check) of a group: who is attacked.
fn clean_lines<B: Backend>(
    v: &Victim<B>,
    group: &[Subject<B>],
    attack_misclassified: bool,
) -> Result<Vec<Line>> {
    let width = v.width();
    for s in group {
        s.goal.validate(width)?;
        if s.clean_ids.is_empty() {
            return Err(Error::input(format!(
                "example {}: the clean prompt has no tokens",
                s.index
            )));
        }
    }
    let mut out = Vec::with_capacity(group.len());
    let mut i = 0;
    while i < group.len() {
        let mut j = i + 1;
        let mut longest = group[i].clean_ids.len();
        while j < group.len() && longest.max(group[j].clean_ids.len()) * (j + 1 - i) <= CLEAN_TOKENS
        {
            longest = longest.max(group[j].clean_ids.len());
            j += 1;
        }
        let chunk = &group[i..j];
        let seqs: Vec<Vec<u32>> = chunk.iter().map(|s| s.clean_ids.clone()).collect();
        let batch = Batch::from_sequences(&seqs, v.pad())?;
        let rows: Vec<usize> = chunk
            .iter()
            .enumerate()
            .flat_map(|(b, s)| {
                let seq = batch.seq;
                s.loss_positions(s.clean_ids.len())
                    .into_iter()
                    .map(move |t| b * seq + t)
            })
            .collect();
        let logits = v
            .model
            .logits_at_rows(None, &batch, &rows, v.fast.shortcut)?;
        let mut at = 0;
        for s in chunk {
            let m = s.goal.rows_per_sequence() * width;
            let (loss, success) =
                evaluate(&s.goal, LossKind::CrossEntropy, &logits[at..at + m], width);
            at += m;
            out.push(Line::Clean(CleanLine {
                example: s.index,
                label: s.prompt.label,
                tokens: s.clean_ids.len(),
                clean_loss: loss,
                clean_success: success,
                skipped: success && !attack_misclassified,
            }));
        }
        i = j;
    }
    Ok(out)
}

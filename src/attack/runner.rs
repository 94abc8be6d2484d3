//! The shared attack loop: clean classification, iterations on groups of examples, results
//! written (and on resume replayed) unit by unit, progress reports, the summary.

use super::budget::Budget;
use super::goal::{evaluate, LossKind};
use super::results::{CleanLine, IterLine, Key, Line, ResultsLog};
use super::subject::{Subject, Victim};
use super::summary::{summarize, ExampleTrack, RunInfo, Summary};
use super::Attack;
use crate::backend::Backend;
use crate::error::{Error, Result};
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
    let mut tracks = vec![ExampleTrack::default(); subjects.len()];
    let mut best = vec![f32::INFINITY; subjects.len()];
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
                        group[i].state.ids = l.attack_ids.clone();
                        group[i].state.buffer = l.buffer.clone().unwrap_or_default();
                    }
                    (lines, true)
                }
                None => {
                    let t0 = Instant::now();
                    let mut refs: Vec<&mut Subject<B>> = Vec::with_capacity(active.len());
                    let mut rest: &mut [Subject<B>] = group;
                    let mut at = 0;
                    for &i in &active {
                        let (_, tail) = rest.split_at_mut(i - at);
                        let (one, tail) = tail.split_first_mut().expect("index in range");
                        refs.push(one);
                        rest = tail;
                        at = i + 1;
                    }
                    let reports = attack.step(v, &mut refs, k)?;
                    let wall = t0.elapsed().as_secs_f64();
                    let lines: Vec<Line> = active
                        .iter()
                        .zip(&reports)
                        .map(|(&i, r)| {
                            let (s, t) = (&group[i], &tracks[base + i]);
                            let broken = t.broken_at.is_some() || r.success || r.success_before;
                            Line::Iter(IterLine {
                                example: s.index,
                                iteration: k,
                                loss: r.loss,
                                best_loss: best[base + i].min(r.loss),
                                success: r.success,
                                broken,
                                attack_ids: s.state.ids.clone(),
                                attack_text: v.tok.and_then(|tk| tk.decode(&s.state.ids).ok()),
                                candidates: r.scored,
                                rejected: r.rejected,
                                nominal_flops: t.nominal + r.nominal,
                                executed_flops: t.executed + r.executed,
                                wall_s: wall,
                                buffer: (!s.state.buffer.is_empty())
                                    .then(|| s.state.buffer.clone()),
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
                best[base + i] = l.best_loss;
                if l.broken && t.broken_at.is_none() {
                    t.broken_at = Some(k);
                    p.broken += 1;
                }
                wall = l.wall_s;
            }
            units.push((wall, active.len()));
            p.done = p.done.saturating_add(active.len());
            p.nominal = tracks.iter().map(|t| t.nominal).sum();
            p.executed = tracks.iter().map(|t| t.executed).sum();
            p.replayed = replayed;
            progress(&p);
            if !replayed && opts.stop_after == Some(k) {
                return Ok(RunOutput {
                    summary: summarize(info, &tracks, &units),
                    complete: false,
                });
            }
        }
        base += group.len();
    }
    log.finish()?;
    Ok(RunOutput {
        summary: summarize(info, &tracks, &units),
        complete: true,
    })
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

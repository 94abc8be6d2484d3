//! The study's figures and fitted slopes from table rows (science.md, "Metrics and
//! figures"): pure functions, rows in, [`Figure`]s and [`Slope`]s out; [`super::report`]
//! writes them.
//!
//! - Figure 3 (`fig3_attack_scaling`): logit10 of smoothed ASR against attack compute per
//!   example ÷ pretraining, a panel per (task, attack, threat) of plain attack runs (adv-train
//!   evaluations of round 0 when there are none), a series per model size: the median over
//!   the runs (seeds) at each iteration, min–max band. An OLS slope per size of logit10 of
//!   smoothed ASR on log10 compute over every run's points with 0 < ASR < 1 (the study's
//!   rule), then an OLS of those slopes on log10 N.
//! - Figure 2 (`fig2_asr_vs_size`): final ASR against N, a panel per (attack, threat), a
//!   series per task (the same runs as Figure 3).
//! - Figure 5 (`fig5_adv_training`): adv-train evaluations whose attack and threat are the
//!   training attack's: final ASR against round (A) and against defense compute ÷
//!   pretraining (B; round 0, with no defense compute, is left out of the log axis).
//! - Figure 7 (`fig7_transfer`): the same for evaluations with another attack or threat.
//! - Figure 1 (`fig1_offense_defense`): attack compute to X% ASR ÷ pretraining against
//!   defense compute ÷ pretraining (rounds >= 1), log-log, an OLS slope of log10 y on
//!   log10 x per size with its 95% CI (dashed), and a slope-1 guide. Rounds whose attack
//!   never reaches X are right-censored: they have no point and are counted.
//!
//! Model sizes are shaded by the rank of their N among all sizes in the rows (the smallest
//! 0, the largest 1), so a size has one colour in every figure.

use super::draw::{Figure, Panel, Scale, Series, Style};
use super::fit::{self, Fit};
use super::table::{self, Row};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

pub const FIG1: &str = "fig1_offense_defense";
pub const FIG2: &str = "fig2_asr_vs_size";
pub const FIG3: &str = "fig3_attack_scaling";
pub const FIG5: &str = "fig5_adv_training";
pub const FIG7: &str = "fig7_transfer";

/// Figure 1's ASR level for a family when none is given: 5% for Pythia (`gpt_neox`), 2%
/// for Qwen2.5 (`qwen2`), as the study chose; 5% for others.
pub fn default_asr_level(family: &str) -> f64 {
    match family {
        "qwen2" => 0.02,
        _ => 0.05,
    }
}

/// One fitted slope: a row of `slopes.csv`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Slope {
    pub figure: String,
    pub panel: String,
    /// The model size (`N = 1.2M`), or `slope vs log10 N` for the fit across sizes.
    pub series: String,
    /// N of the size (empty for the fit across sizes).
    pub n_params: Option<u64>,
    /// What was regressed on what.
    pub y: String,
    pub x: String,
    pub slope: f64,
    pub intercept: f64,
    pub ci95_low: Option<f64>,
    pub ci95_high: Option<f64>,
    pub slope_se: Option<f64>,
    /// Points fitted.
    pub n: usize,
    pub r2: f64,
}

/// One figure, or why it was skipped, with the slopes fitted for it and notes for the
/// summary.
#[derive(Clone, Debug, PartialEq)]
pub struct Built {
    pub name: &'static str,
    /// A sentence: what the figure shows.
    pub caption: String,
    pub figure: Option<Figure>,
    /// Why there is no figure (when `figure` is None).
    pub skipped: Option<String>,
    pub slopes: Vec<Slope>,
    pub notes: Vec<String>,
}

impl Built {
    fn skip(name: &'static str, caption: &str, why: impl Into<String>) -> Built {
        Built {
            name,
            caption: caption.into(),
            figure: None,
            skipped: Some(why.into()),
            slopes: vec![],
            notes: vec![],
        }
    }
}

/// Every figure, in the order the summary lists them (1, 2, 3, 5, 7). `asr_level`: Figure
/// 1's level for every run (None: [`default_asr_level`] by family).
pub fn all(rows: &[Row], asr_level: Option<f64>) -> Vec<Built> {
    let pal = Palette::new(rows);
    vec![
        fig1_offense_defense(rows, &pal, asr_level),
        fig2_asr_vs_size(rows, &pal),
        fig3_attack_scaling(rows, &pal),
        fig5_adv_training(rows, &pal),
        fig7_transfer(rows, &pal),
    ]
}

/// Shades of model sizes: the rank of N among all sizes, over (count - 1).
#[derive(Clone, Debug)]
pub struct Palette {
    sizes: Vec<u64>,
}

impl Palette {
    pub fn new(rows: &[Row]) -> Palette {
        let sizes: BTreeSet<u64> = rows.iter().map(|r| r.n_params).collect();
        Palette {
            sizes: sizes.into_iter().collect(),
        }
    }

    pub fn shade(&self, n: u64) -> f64 {
        let k = self.sizes.len();
        match self.sizes.iter().position(|&s| s == n) {
            Some(i) if k > 1 => i as f64 / (k - 1) as f64,
            _ => 0.0,
        }
    }
}

/// A number to 3 significant digits: plain between 0.001 and 100,000, else `1.23e-5`.
pub fn sig3(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if (1e-3..1e5).contains(&a) {
        let mag = a.log10().floor() as i32;
        let dec = (2 - mag).max(0) as usize;
        format!("{v:.dec$}")
    } else {
        format!("{v:.2e}")
    }
}

/// `N = 172k`, `N = 1.41B`.
pub fn size_label(n: u64) -> String {
    let v = n as f64;
    let (d, unit) = if v >= 1e9 {
        (1e9, "B")
    } else if v >= 1e6 {
        (1e6, "M")
    } else if v >= 1e3 {
        (1e3, "k")
    } else {
        (1.0, "")
    };
    format!("N = {}{unit}", sig3(v / d))
}

/// A percentage without trailing zeros: `5%`, `2.5%`.
pub fn pct(x: f64) -> String {
    let t = sig3(x * 100.0);
    let t = if t.contains('.') && !t.contains('e') {
        t.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        t
    };
    format!("{t}%")
}

/// A slope and its interval for a legend or the summary: `0.812 [0.213, 1.41]`.
pub fn slope_text(f: &Fit) -> String {
    match f.slope_ci95 {
        Some((lo, hi)) => format!("{} [{}, {}]", sig3(f.slope), sig3(lo), sig3(hi)),
        None => format!("{} (no CI: 2 points)", sig3(f.slope)),
    }
}

/// The runs in `rows`, by name, each sorted by iteration.
fn group_runs(rows: &[Row]) -> BTreeMap<String, Vec<Row>> {
    let mut m: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for r in rows {
        m.entry(r.run.clone()).or_default().push(r.clone());
    }
    for v in m.values_mut() {
        v.sort_by_key(|r| r.iteration);
    }
    m
}

/// Plotted points (x, y) and a band (x, low, high).
type Line = (Vec<(f64, f64)>, Vec<(f64, f64, f64)>);
/// Final (N, ASR) of each run, by (attack, threat), task and N.
type BySize = BTreeMap<(String, String), BTreeMap<String, BTreeMap<u64, Vec<(f64, f64)>>>>;

/// (median, min, max); None when empty.
fn spread(v: &[f64]) -> Option<(f64, f64, f64)> {
    let m = fit::median(v)?;
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some((m, lo, hi))
}

/// Points (median x, median y) and band (median x, min y, max y) of groups of (x, y), in
/// key order.
fn aggregate<K: Ord>(groups: &BTreeMap<K, Vec<(f64, f64)>>) -> Line {
    let mut points = Vec::new();
    let mut band = Vec::new();
    for g in groups.values() {
        let xs: Vec<f64> = g.iter().map(|p| p.0).collect();
        let ys: Vec<f64> = g.iter().map(|p| p.1).collect();
        if let (Some(x), Some((y, lo, hi))) = (fit::median(&xs), spread(&ys)) {
            points.push((x, y));
            band.push((x, lo, hi));
        }
    }
    (points, band)
}

fn series(label: String, shade: Option<f64>, style: Style, points: Vec<(f64, f64)>) -> Series {
    Series {
        label,
        shade,
        style,
        points,
        band: vec![],
    }
}

fn slope_row(
    figure: &str,
    panel: &str,
    series: String,
    n: Option<u64>,
    y: &str,
    x: &str,
    f: &Fit,
) -> Slope {
    Slope {
        figure: figure.into(),
        panel: panel.into(),
        series,
        n_params: n,
        y: y.into(),
        x: x.into(),
        slope: f.slope,
        intercept: f.intercept,
        ci95_low: f.slope_ci95.map(|c| c.0),
        ci95_high: f.slope_ci95.map(|c| c.1),
        slope_se: f.slope_se,
        n: f.n,
        r2: f.r2,
    }
}

fn threat_text(attack: &str, threat: &str) -> String {
    format!("{attack} {threat}")
}

/// Pretraining compute when known and positive.
fn pretraining(r: &Row) -> Option<f64> {
    r.pretraining_flops.filter(|p| p.is_finite() && *p > 0.0)
}

/// Plain attack runs; when there are none, adv-train evaluations of round 0 (with a note).
fn attack_runs(rows: &[Row]) -> (Vec<Vec<Row>>, Option<String>) {
    let runs = group_runs(rows);
    let plain: Vec<Vec<Row>> = runs
        .values()
        .filter(|r| r[0].round.is_none())
        .cloned()
        .collect();
    if !plain.is_empty() {
        return (plain, None);
    }
    let zero: Vec<Vec<Row>> = runs
        .values()
        .filter(|r| r[0].round == Some(0))
        .cloned()
        .collect();
    let note = (!zero.is_empty()).then(|| {
        "No plain attack runs: drawn from adv-train evaluations of round 0 (the model before \
         adversarial training)."
            .to_string()
    });
    (zero, note)
}

const FIG3_CAPTION: &str = "Attack scaling: logit10 of the smoothed ASR against attack compute \
    per example, one line per model size (median over seeds, min–max band), with the OLS fit \
    per size dashed.";

/// Figure 3 (see the module documentation).
pub fn fig3_attack_scaling(rows: &[Row], pal: &Palette) -> Built {
    let (runs, note) = attack_runs(rows);
    if runs.is_empty() {
        return Built::skip(
            FIG3,
            FIG3_CAPTION,
            "no attack runs: neither plain attacks nor adv-train evaluations of round 0",
        );
    }
    let mut panels_in: BTreeMap<(String, String, String), Vec<&Vec<Row>>> = BTreeMap::new();
    for r in &runs {
        let f = &r[0];
        panels_in
            .entry((f.task.clone(), f.attack.clone(), f.threat.clone()))
            .or_default()
            .push(r);
    }
    let mut panels = Vec::new();
    let mut slopes = Vec::new();
    let mut notes: Vec<String> = note.into_iter().collect();
    for ((task, attack, threat), runs) in panels_in {
        let title = format!("{task}, {}", threat_text(&attack, &threat));
        let known = runs.iter().all(|r| pretraining(&r[0]).is_some());
        if !known {
            notes.push(format!(
                "Figure 3, {title}: pretraining FLOPs unknown for some runs, so x is attack \
                 FLOPs per example, not a fraction of pretraining."
            ));
        }
        let x_of = |r: &Row| {
            let c = r.iteration as f64 * r.nominal_flops_per_example_iteration;
            if known {
                c / pretraining(r).unwrap_or(f64::NAN)
            } else {
                c
            }
        };
        let mut by_size: BTreeMap<u64, Vec<&Vec<Row>>> = BTreeMap::new();
        for r in runs {
            by_size.entry(r[0].n_params).or_default().push(r);
        }
        let mut series_out = Vec::new();
        let mut size_slopes = Vec::new();
        let y_name = "logit10 smoothed ASR";
        let x_name = if known {
            "log10 attack compute per example / pretraining"
        } else {
            "log10 attack FLOPs per example"
        };
        for (&n, runs) in &by_size {
            let mut at: BTreeMap<u64, Vec<(f64, f64)>> = BTreeMap::new();
            let mut fit_points = Vec::new();
            for run in runs {
                for r in run.iter().filter(|r| r.iteration >= 1) {
                    let x = x_of(r);
                    let y = fit::logit10(fit::smooth(r.asr, r.examples as usize));
                    at.entry(r.iteration).or_default().push((x, y));
                    if r.asr > 0.0 && r.asr < 1.0 && x > 0.0 {
                        fit_points.push((x.log10(), y));
                    }
                }
            }
            let (points, band) = aggregate(&at);
            let shade = Some(pal.shade(n));
            let f = fit::ols(&fit_points);
            let label = match &f {
                Some(f) => format!("{}, slope {}", size_label(n), sig3(f.slope)),
                None => size_label(n),
            };
            let mut s = series(label, shade, Style::LinePoints, points.clone());
            s.band = band;
            series_out.push(s);
            if let Some(f) = f {
                let (lo, hi) = fit_points
                    .iter()
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
                        (a.min(p.0), b.max(p.0))
                    });
                series_out.push(series(
                    format!("_fit {}", size_label(n)),
                    shade,
                    Style::Dashed,
                    vec![(10f64.powf(lo), f.at(lo)), (10f64.powf(hi), f.at(hi))],
                ));
                slopes.push(slope_row(
                    FIG3,
                    &title,
                    size_label(n),
                    Some(n),
                    y_name,
                    x_name,
                    &f,
                ));
                size_slopes.push(((n as f64).log10(), f.slope));
            }
        }
        if let Some(f) = fit::ols(&size_slopes) {
            slopes.push(slope_row(
                FIG3,
                &title,
                "slope vs log10 N".into(),
                None,
                "per-size slope",
                "log10 N",
                &f,
            ));
        }
        panels.push(Panel {
            title,
            x_label: if known {
                "attack compute per example ÷ pretraining compute (FLOPs / FLOPs)".into()
            } else {
                "attack compute per example (FLOPs; pretraining unknown)".into()
            },
            y_label: "attack success rate (smoothed; logit scale)".into(),
            x_scale: Scale::Log10,
            y_scale: Scale::Logit10,
            series: series_out,
            y_include: vec![],
        });
    }
    Built {
        name: FIG3,
        caption: FIG3_CAPTION.into(),
        figure: Some(Figure {
            name: FIG3.into(),
            title: "Figure 3: attack scaling".into(),
            panels,
        }),
        skipped: None,
        slopes,
        notes,
    }
}

const FIG2_CAPTION: &str = "ASR after the attack's last iteration against model size, one line \
    per task (median over seeds, min–max band).";

/// Figure 2 (see the module documentation).
pub fn fig2_asr_vs_size(rows: &[Row], _pal: &Palette) -> Built {
    let (runs, note) = attack_runs(rows);
    if runs.is_empty() {
        return Built::skip(
            FIG2,
            FIG2_CAPTION,
            "no attack runs: neither plain attacks nor adv-train evaluations of round 0",
        );
    }
    let tasks: Vec<String> = runs
        .iter()
        .map(|r| r[0].task.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let task_shade = |t: &str| {
        let i = tasks.iter().position(|x| x == t).unwrap_or(0);
        if tasks.len() > 1 {
            i as f64 / (tasks.len() - 1) as f64
        } else {
            0.0
        }
    };
    let mut m: BySize = BTreeMap::new();
    for r in &runs {
        let last = r.last().expect("a run has rows");
        m.entry((last.attack.clone(), last.threat.clone()))
            .or_default()
            .entry(last.task.clone())
            .or_default()
            .entry(last.n_params)
            .or_default()
            .push((last.n_params as f64, last.asr));
    }
    let panels = m
        .into_iter()
        .map(|((attack, threat), by_task)| Panel {
            title: threat_text(&attack, &threat),
            x_label: "model size N (classifier parameters)".into(),
            y_label: "ASR after the last iteration (fraction of attacked examples)".into(),
            x_scale: Scale::Log10,
            y_scale: Scale::Linear,
            y_include: vec![0.0, 1.0],
            series: by_task
                .into_iter()
                .map(|(task, by_n)| {
                    let (points, band) = aggregate(&by_n);
                    let mut s = series(
                        task.clone(),
                        Some(task_shade(&task)),
                        Style::LinePoints,
                        points,
                    );
                    s.band = band;
                    s
                })
                .collect(),
        })
        .collect();
    Built {
        name: FIG2,
        caption: FIG2_CAPTION.into(),
        figure: Some(Figure {
            name: FIG2.into(),
            title: "Figure 2: ASR against model size".into(),
            panels,
        }),
        skipped: None,
        slopes: vec![],
        notes: note.into_iter().collect(),
    }
}

/// Adv-train evaluation runs, split by whether the evaluation attack and threat are the
/// training attack's.
fn eval_runs(rows: &[Row], matched: bool) -> Vec<Vec<Row>> {
    group_runs(rows)
        .into_values()
        .filter(|r| {
            let f = &r[0];
            f.round.is_some()
                && ((f.defense_attack.as_deref() == Some(f.attack.as_str())
                    && f.defense_threat.as_deref() == Some(f.threat.as_str()))
                    == matched)
        })
        .collect()
}

type EvalKey = (String, String, String, String, String);

fn eval_key(f: &Row) -> EvalKey {
    (
        f.task.clone(),
        f.attack.clone(),
        f.threat.clone(),
        f.defense_attack.clone().unwrap_or_default(),
        f.defense_threat.clone().unwrap_or_default(),
    )
}

fn eval_title(k: &EvalKey) -> String {
    format!(
        "{}, eval {} (trained on {})",
        k.0,
        threat_text(&k.1, &k.2),
        threat_text(&k.3, &k.4)
    )
}

/// Panels A (ASR against round) and B (against defense compute) per evaluation.
fn adv_panels(runs: &[Vec<Row>], pal: &Palette, fig: &str, notes: &mut Vec<String>) -> Vec<Panel> {
    let mut groups: BTreeMap<EvalKey, Vec<&Vec<Row>>> = BTreeMap::new();
    for r in runs {
        groups.entry(eval_key(&r[0])).or_default().push(r);
    }
    let mut panels = Vec::new();
    let mut left_out = 0usize;
    for (key, runs) in groups {
        let title = eval_title(&key);
        let known = runs.iter().all(|r| pretraining(&r[0]).is_some());
        if !known {
            notes.push(format!(
                "{fig}, {title}: pretraining FLOPs unknown for some runs, so panel B's x is \
                 defense FLOPs, not a fraction of pretraining."
            ));
        }
        let mut by_size: BTreeMap<u64, Vec<&Vec<Row>>> = BTreeMap::new();
        for r in runs {
            by_size.entry(r[0].n_params).or_default().push(r);
        }
        let mut a = Vec::new();
        let mut b = Vec::new();
        for (&n, runs) in &by_size {
            let mut by_round: BTreeMap<u64, Vec<(f64, f64)>> = BTreeMap::new();
            let mut by_round_compute: BTreeMap<u64, Vec<(f64, f64)>> = BTreeMap::new();
            for run in runs {
                let last = run.last().expect("a run has rows");
                let round = last.round.unwrap_or(0);
                by_round
                    .entry(round)
                    .or_default()
                    .push((round as f64, last.asr));
                let d = last.defense_nominal_flops.unwrap_or(f64::NAN);
                let x = if known {
                    d / pretraining(last).unwrap_or(f64::NAN)
                } else {
                    d
                };
                if round >= 1 && x > 0.0 {
                    by_round_compute
                        .entry(round)
                        .or_default()
                        .push((x, last.asr));
                } else {
                    left_out += 1;
                }
            }
            let shade = Some(pal.shade(n));
            let (p, band) = aggregate(&by_round);
            let mut s = series(size_label(n), shade, Style::LinePoints, p);
            s.band = band;
            a.push(s);
            let (p, band) = aggregate(&by_round_compute);
            let mut s = series(size_label(n), shade, Style::LinePoints, p);
            s.band = band;
            b.push(s);
        }
        let y_label = "ASR after the last iteration (fraction of attacked examples)";
        panels.push(Panel {
            title: format!("A: {title}"),
            x_label: "adversarial training round".into(),
            y_label: y_label.into(),
            x_scale: Scale::Linear,
            y_scale: Scale::Linear,
            series: a,
            y_include: vec![0.0, 1.0],
        });
        panels.push(Panel {
            title: format!("B: {title}"),
            x_label: if known {
                "defense compute ÷ pretraining compute (round ≥ 1)".into()
            } else {
                "defense compute (FLOPs; pretraining unknown; round ≥ 1)".into()
            },
            y_label: y_label.into(),
            x_scale: Scale::Log10,
            y_scale: Scale::Linear,
            series: b,
            y_include: vec![0.0, 1.0],
        });
    }
    if left_out > 0 {
        notes.push(format!(
            "{fig}: panel B leaves out {left_out} evaluation(s) of round 0 (no defense \
             compute: not on a log axis); panel A shows them."
        ));
    }
    panels
}

const FIG5_CAPTION: &str = "Adversarial training: ASR of the training attack against the round's \
    checkpoint, by round (A) and by defense compute (B), one line per model size.";

/// Figure 5 (see the module documentation).
pub fn fig5_adv_training(rows: &[Row], pal: &Palette) -> Built {
    adv_figure(
        rows,
        pal,
        true,
        (
            FIG5,
            FIG5_CAPTION,
            "Figure 5",
            "Figure 5: adversarial training",
        ),
        "no adv-train evaluations with the training attack and threat (rows with a round)",
    )
}

const FIG7_CAPTION: &str = "Transfer: ASR of an attack or threat model other than the training \
    one against each round's checkpoint, by round (A) and by defense compute (B).";

/// Figure 7 (see the module documentation).
pub fn fig7_transfer(rows: &[Row], pal: &Palette) -> Built {
    adv_figure(
        rows,
        pal,
        false,
        (
            FIG7,
            FIG7_CAPTION,
            "Figure 7",
            "Figure 7: transfer to other attacks and threat models",
        ),
        "no adv-train evaluations with an attack or threat other than the training one",
    )
}

/// Figures 5 and 7: the evaluations whose attack and threat are (`same`) or are not the
/// training ones, by round and by defense compute; the tuple: file name, caption, the name
/// notes use, title.
fn adv_figure(
    rows: &[Row],
    pal: &Palette,
    same: bool,
    (name, caption, short, title): (&'static str, &str, &str, &str),
    none: &str,
) -> Built {
    let runs = eval_runs(rows, same);
    if runs.is_empty() {
        return Built::skip(name, caption, none);
    }
    let mut notes = Vec::new();
    let panels = adv_panels(&runs, pal, short, &mut notes);
    Built {
        name,
        caption: caption.into(),
        figure: Some(Figure {
            name: name.into(),
            title: title.into(),
            panels,
        }),
        skipped: None,
        slopes: vec![],
        notes,
    }
}

const FIG1_CAPTION: &str = "Offense–defense: attack compute to reach the ASR level against \
    defense compute, both ÷ pretraining, log-log, one line per model size (median over seeds, \
    min–max band), an OLS fit per size dashed (slope and 95% CI in the legend) and a slope-1 \
    guide in grey.";

/// Figure 1 (see the module documentation). `level`: the ASR level for every run (None:
/// [`default_asr_level`] by family).
pub fn fig1_offense_defense(rows: &[Row], pal: &Palette, level: Option<f64>) -> Built {
    let runs: Vec<Vec<Row>> = group_runs(rows)
        .into_values()
        .filter(|r| r[0].round.is_some())
        .collect();
    if runs.is_empty() {
        return Built::skip(
            FIG1,
            FIG1_CAPTION,
            "no adv-train evaluations (rows with a round)",
        );
    }
    let (known, unknown): (Vec<&Vec<Row>>, Vec<&Vec<Row>>) =
        runs.iter().partition(|r| pretraining(&r[0]).is_some());
    let mut notes = Vec::new();
    if known.is_empty() {
        return Built::skip(
            FIG1,
            FIG1_CAPTION,
            "pretraining FLOPs unknown for every adv-train evaluation (give --pretrain-tokens \
             to adv-train and eval)",
        );
    }
    if !unknown.is_empty() {
        notes.push(format!(
            "Figure 1 leaves out {} evaluation(s) whose pretraining FLOPs are unknown.",
            unknown.len()
        ));
    }
    let trained: Vec<&Vec<Row>> = known
        .into_iter()
        .filter(|r| r[0].round.unwrap_or(0) >= 1)
        .collect();
    if trained.is_empty() {
        return Built::skip(
            FIG1,
            FIG1_CAPTION,
            "no adv-train evaluations of a round >= 1 (round 0 has no defense compute)",
        );
    }
    let level_of = |r: &Row| level.unwrap_or_else(|| default_asr_level(&r.family));
    let mut groups: BTreeMap<EvalKey, Vec<&Vec<Row>>> = BTreeMap::new();
    for r in trained {
        groups.entry(eval_key(&r[0])).or_default().push(r);
    }
    let mut panels = Vec::new();
    let mut slopes = Vec::new();
    let mut censored_total = 0usize;
    let mut points_total = 0usize;
    for (key, runs) in groups {
        let title = eval_title(&key);
        let levels: BTreeSet<String> = runs.iter().map(|r| pct(level_of(&r[0]))).collect();
        let level_text = levels.into_iter().collect::<Vec<_>>().join(" / ");
        let mut by_size: BTreeMap<u64, Vec<&Vec<Row>>> = BTreeMap::new();
        for r in runs {
            by_size.entry(r[0].n_params).or_default().push(r);
        }
        let mut out = Vec::new();
        let mut all_logs = Vec::new();
        let (mut xmin, mut xmax) = (f64::INFINITY, f64::NEG_INFINITY);
        let mut censored = Vec::new();
        for (&n, runs) in &by_size {
            let mut by_round: BTreeMap<u64, Vec<(f64, f64)>> = BTreeMap::new();
            let mut logs = Vec::new();
            let mut c = 0usize;
            for run in runs {
                let f = &run[0];
                let x = f.defense_nominal_flops.unwrap_or(f64::NAN)
                    / pretraining(f).unwrap_or(f64::NAN);
                match table::compute_to_asr(run, level_of(f)) {
                    Some(y) if y > 0.0 && x > 0.0 && x.is_finite() => {
                        by_round
                            .entry(f.round.unwrap_or(0))
                            .or_default()
                            .push((x, y));
                        logs.push((x.log10(), y.log10()));
                        xmin = xmin.min(x);
                        xmax = xmax.max(x);
                    }
                    _ => c += 1,
                }
            }
            if c > 0 {
                censored.push(format!("{} of {} at {}", c, runs.len(), size_label(n)));
                censored_total += c;
            }
            points_total += logs.len();
            let shade = Some(pal.shade(n));
            let (p, band) = aggregate(&by_round);
            let f = fit::ols(&logs);
            let label = match &f {
                Some(f) => format!("{}: slope {}", size_label(n), slope_text(f)),
                None => size_label(n),
            };
            let mut s = series(label, shade, Style::LinePoints, p);
            s.band = band;
            out.push(s);
            if let Some(f) = f {
                let (lo, hi) = logs
                    .iter()
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
                        (a.min(p.0), b.max(p.0))
                    });
                out.push(series(
                    format!("_fit {}", size_label(n)),
                    shade,
                    Style::Dashed,
                    vec![
                        (10f64.powf(lo), 10f64.powf(f.at(lo))),
                        (10f64.powf(hi), 10f64.powf(f.at(hi))),
                    ],
                ));
                slopes.push(slope_row(
                    FIG1,
                    &title,
                    size_label(n),
                    Some(n),
                    &format!("log10 attack compute to {level_text} ASR / pretraining"),
                    "log10 defense compute / pretraining",
                    &f,
                ));
            }
            all_logs.extend(logs);
        }
        if !censored.is_empty() {
            notes.push(format!(
                "Figure 1, {title}: rounds where the attack never reached {level_text} ASR \
                 (right-censored: the attack budget was too small; no point): {}.",
                censored.join(", ")
            ));
        }
        if !all_logs.is_empty() && xmax > 0.0 {
            // Slope 1 through the centre (mean log x, mean log y) of the panel's points.
            let k = all_logs.len() as f64;
            let cx = all_logs.iter().map(|p| p.0).sum::<f64>() / k;
            let cy = all_logs.iter().map(|p| p.1).sum::<f64>() / k;
            let (lo, hi) = if xmax > xmin {
                (xmin.log10(), xmax.log10())
            } else {
                (xmin.log10() - 0.5, xmin.log10() + 0.5)
            };
            out.push(series(
                "slope 1 (guide)".into(),
                None,
                Style::Dashed,
                vec![
                    (10f64.powf(lo), 10f64.powf(cy + lo - cx)),
                    (10f64.powf(hi), 10f64.powf(cy + hi - cx)),
                ],
            ));
        }
        panels.push(Panel {
            title,
            x_label: "defense compute ÷ pretraining compute (adversarial training to the round)"
                .into(),
            y_label: format!("attack compute to {level_text} ASR ÷ pretraining compute"),
            x_scale: Scale::Log10,
            y_scale: Scale::Log10,
            series: out,
            y_include: vec![],
        });
    }
    if points_total == 0 {
        let mut b = Built::skip(
            FIG1,
            FIG1_CAPTION,
            format!(
                "the attack never reached the ASR level in any evaluated round >= 1 \
                 ({censored_total} right-censored: the attack budget was too small)"
            ),
        );
        b.notes = notes;
        return b;
    }
    Built {
        name: FIG1,
        caption: FIG1_CAPTION.into(),
        figure: Some(Figure {
            name: FIG1.into(),
            title: "Figure 1: offense–defense".into(),
            panels,
        }),
        skipped: None,
        slopes,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::AsrKind;

    /// One row of run `run` (plain attack: no round).
    fn row(run: &str, n: u64, seed: u64, i: u64, asr: f64, nominal: f64) -> Row {
        Row {
            run: run.into(),
            model: format!("m{n}"),
            family: "gpt_neox".into(),
            n_params: n,
            n_gen: n + 10,
            pretraining_flops: Some(1e12),
            task: "spam".into(),
            attack: "gcg".into(),
            threat: "suffix".into(),
            seed,
            defense_attack: None,
            defense_threat: None,
            round: None,
            defense_nominal_flops: None,
            defense_executed_flops: None,
            iteration: i,
            asr_kind: AsrKind::Current,
            asr,
            asr_current: asr,
            asr_cumulative: asr,
            examples: 100,
            nominal_flops_per_example_iteration: nominal,
            executed_flops_per_example_iteration: nominal / 10.0,
        }
    }

    /// The raw ASR whose smoothing over 100 examples is `p`.
    fn unsmooth(p: f64) -> f64 {
        (p * 102.0 - 1.0) / 100.0
    }

    fn inv_logit10(v: f64) -> f64 {
        1.0 / (1.0 + 10f64.powf(-v))
    }

    /// Two sizes, two seeds each: logit10(smoothed ASR) = 2.5 + slope·log10(x) exactly at
    /// iterations 1..=5; iteration 6 has ASR 1 and iteration 7 ASR 0 (off the line, to be
    /// left out of the fit).
    fn scaling_rows() -> Vec<Row> {
        let mut rows = Vec::new();
        for (n, slope) in [(1_000_000u64, 0.5), (10_000_000u64, 0.8)] {
            for seed in 0..2u64 {
                let nominal = 1e8 * (seed + 1) as f64;
                let run = format!("n{n}-s{seed}");
                rows.push(row(&run, n, seed, 0, 0.0, nominal));
                for i in 1..=5u64 {
                    let x = i as f64 * nominal / 1e12;
                    let p = inv_logit10(2.5 + slope * x.log10());
                    rows.push(row(&run, n, seed, i, unsmooth(p), nominal));
                }
                rows.push(row(&run, n, seed, 6, 1.0, nominal));
                rows.push(row(&run, n, seed, 7, 0.0, nominal));
            }
        }
        rows
    }

    #[test]
    fn fig3_recovers_a_known_slope_and_leaves_out_asr_0_and_1() {
        let rows = scaling_rows();
        let b = fig3_attack_scaling(&rows, &Palette::new(&rows));
        assert!(b.skipped.is_none());
        let per_size: Vec<&Slope> = b.slopes.iter().filter(|s| s.n_params.is_some()).collect();
        assert_eq!(per_size.len(), 2);
        for (s, want) in per_size.iter().zip([0.5, 0.8]) {
            assert!((s.slope - want).abs() < 1e-9, "{s:?}");
            assert!((s.intercept - 2.5).abs() < 1e-9, "{s:?}");
            // 5 iterations x 2 seeds; ASR 1 (iteration 6) and 0 (iterations 0 and 7) out.
            assert_eq!(s.n, 10);
            assert!((s.r2 - 1.0).abs() < 1e-12);
            let (lo, hi) = (s.ci95_low.unwrap(), s.ci95_high.unwrap());
            assert!(lo <= s.slope && s.slope <= hi && hi - lo < 1e-6, "{s:?}");
        }
        // Slope against log10 N: (0.8 - 0.5) / (7 - 6), two points, no interval.
        let across = b.slopes.iter().find(|s| s.n_params.is_none()).unwrap();
        assert_eq!(across.series, "slope vs log10 N");
        assert!((across.slope - 0.3).abs() < 1e-9, "{across:?}");
        assert_eq!((across.n, across.ci95_low), (2, None));

        let fig = b.figure.unwrap();
        assert_eq!(fig.panels.len(), 1);
        let p = &fig.panels[0];
        assert_eq!((p.x_scale, p.y_scale), (Scale::Log10, Scale::Logit10));
        assert!(p.x_label.contains("pretraining"), "{}", p.x_label);
        // Smallest size: its data series, then its (unlisted) fit line.
        let s = &p.series[0];
        assert!(s.label.starts_with("N = 1.00M, slope 0.500"), "{}", s.label);
        assert_eq!(s.shade, Some(0.0));
        assert!(p.series[1].label.starts_with('_') && p.series[1].style == Style::Dashed);
        assert_eq!(p.series[2].shade, Some(1.0));
        // Iteration 1: x = 1e-4 (seed 0) and 2e-4 (seed 1): median 1.5e-4; y median of the
        // two, band min..max.
        let y = |x: f64| 2.5 + 0.5 * f64::log10(x);
        let (y0, y1) = (y(1e-4), y(2e-4));
        let y0 = fit::logit10(fit::smooth(unsmooth(inv_logit10(y0)), 100));
        let y1 = fit::logit10(fit::smooth(unsmooth(inv_logit10(y1)), 100));
        assert!((s.points[0].0 - 1.5e-4).abs() < 1e-15);
        assert!((s.points[0].1 - (y0 + y1) / 2.0).abs() < 1e-12);
        assert!((s.band[0].1 - y0.min(y1)).abs() < 1e-12);
        assert!((s.band[0].2 - y0.max(y1)).abs() < 1e-12);
        // Iterations 1..=7 plotted (iteration 0 has no compute).
        assert_eq!(s.points.len(), 7);
    }

    #[test]
    fn fig3_without_pretraining_uses_flops_and_says_so() {
        let mut rows = scaling_rows();
        rows.iter_mut().for_each(|r| r.pretraining_flops = None);
        let b = fig3_attack_scaling(&rows, &Palette::new(&rows));
        let p = &b.figure.as_ref().unwrap().panels[0];
        assert!(
            p.x_label.contains("FLOPs; pretraining unknown"),
            "{}",
            p.x_label
        );
        assert!((p.series[0].points[0].0 - 1.5e8).abs() < 1e-3);
        assert!(
            b.notes.iter().any(|n| n.contains("unknown")),
            "{:?}",
            b.notes
        );
        // The slope is the same: x is scaled by a constant.
        assert!((b.slopes[0].slope - 0.5).abs() < 1e-9);
    }

    #[test]
    fn fig2_median_min_max_over_seeds_by_hand() {
        let mut rows = Vec::new();
        for (seed, last) in [(0u64, 0.2), (1, 0.5), (2, 0.4)] {
            let run = format!("s{seed}");
            rows.push(row(&run, 1000, seed, 0, 0.0, 1e6));
            rows.push(row(&run, 1000, seed, 1, last, 1e6));
        }
        let b = fig2_asr_vs_size(&rows, &Palette::new(&rows));
        let p = &b.figure.unwrap().panels[0];
        assert_eq!(p.title, "gcg suffix");
        assert_eq!(p.y_include, [0.0, 1.0]);
        let s = &p.series[0];
        assert_eq!(s.label, "spam");
        assert_eq!(s.points, [(1000.0, 0.4)]);
        assert_eq!(s.band, [(1000.0, 0.2, 0.5)]);
    }

    /// An adv-train evaluation run at `round`: ASR 0, 0, `asr2` at iterations 0..=2.
    fn eval_run(
        name: &str,
        round: u64,
        threat: &str,
        defense: f64,
        nominal: f64,
        asr2: f64,
    ) -> Vec<Row> {
        (0..=2u64)
            .map(|i| {
                let mut r = row(name, 1000, 0, i, if i == 2 { asr2 } else { 0.0 }, nominal);
                r.threat = threat.into();
                r.round = Some(round);
                r.defense_attack = Some("gcg".into());
                r.defense_threat = Some("suffix".into());
                r.defense_nominal_flops = Some(defense);
                r.defense_executed_flops = Some(defense / 10.0);
                r
            })
            .collect()
    }

    #[test]
    fn fig1_slope_and_ci_against_hand_numbers_and_censored_rounds_counted() {
        // log10 x = k - 6 (k = 0..3), log10 y = v - 10 (v = 1, 3, 4, 8): the hand-computed
        // regression of fit.rs's test: slope 2.2, se sqrt(0.18), t(0.975, 2) = 4.3026527.
        // y = compute to 5% ASR / pretraining = 1.5 iterations (0 -> 0.1 crosses 5% half
        // way from iteration 1) x nominal / 1e12.
        let p = 1e12;
        let mut rows = Vec::new();
        for (k, v) in [(0, 1.0), (1, 3.0), (2, 4.0), (3, 8.0)] {
            let x = 10f64.powi(k - 6);
            let y = 10f64.powf(v - 10.0);
            rows.extend(eval_run(
                &format!("r{}", k + 1),
                k as u64 + 1,
                "suffix",
                x * p,
                y * p / 1.5,
                0.1,
            ));
        }
        // Round 0 (no defense compute) is not in Figure 1; round 5 never reaches 2% or 5%.
        rows.extend(eval_run("r0", 0, "suffix", 0.0, 1e9, 0.1));
        rows.extend(eval_run("r5", 5, "suffix", 1e8, 1e9, 0.01));
        let b = fig1_offense_defense(&rows, &Palette::new(&rows), None);
        assert!(b.skipped.is_none(), "{:?}", b.skipped);
        assert_eq!(b.slopes.len(), 1);
        let s = &b.slopes[0];
        let se = 0.18f64.sqrt();
        let t = 4.302652729911275;
        assert!((s.slope - 2.2).abs() < 1e-9, "{s:?}");
        assert!((s.slope_se.unwrap() - se).abs() < 1e-9);
        assert!((s.ci95_low.unwrap() - (2.2 - t * se)).abs() < 1e-8);
        assert!((s.ci95_high.unwrap() - (2.2 + t * se)).abs() < 1e-8);
        assert_eq!(s.n, 4);
        assert!((s.r2 - (1.0 - 1.8 / 26.0)).abs() < 1e-9);
        assert!(
            b.notes
                .iter()
                .any(|n| n.contains("right-censored") && n.contains("1 of 5")),
            "{:?}",
            b.notes
        );
        let panel = &b.figure.unwrap().panels[0];
        assert_eq!((panel.x_scale, panel.y_scale), (Scale::Log10, Scale::Log10));
        assert!(panel.y_label.contains("5% ASR"), "{}", panel.y_label);
        let data = &panel.series[0];
        assert!(data.label.contains("slope 2.20 ["), "{}", data.label);
        assert_eq!(data.points.len(), 4);
        assert!((data.points[0].0 - 1e-6).abs() < 1e-18);
        assert!((data.points[0].1.log10() - -9.0).abs() < 1e-9);
        let guide = panel.series.last().unwrap();
        assert_eq!(
            (guide.label.as_str(), guide.shade),
            ("slope 1 (guide)", None)
        );
        let (a, z) = (guide.points[0], guide.points[1]);
        assert!(((z.1 / a.1).log10() - (z.0 / a.0).log10()).abs() < 1e-9);

        // --asr-level 2%: crossing at 1.2 iterations, the same slope.
        let b2 = fig1_offense_defense(&rows, &Palette::new(&rows), Some(0.02));
        assert!((b2.slopes[0].slope - 2.2).abs() < 1e-9);
        assert!(b2.slopes[0].y.contains("2% ASR"), "{}", b2.slopes[0].y);
    }

    #[test]
    fn figures_without_rounds_are_skipped_with_a_reason() {
        let rows = scaling_rows();
        let built = all(&rows, None);
        let names: Vec<&str> = built.iter().map(|b| b.name).collect();
        assert_eq!(names, [FIG1, FIG2, FIG3, FIG5, FIG7]);
        for b in &built {
            if [FIG1, FIG5, FIG7].contains(&b.name) {
                assert!(b.figure.is_none(), "{}", b.name);
                assert!(
                    b.skipped.as_deref().unwrap().contains("adv-train"),
                    "{:?}",
                    b.skipped
                );
            } else {
                assert!(b.figure.is_some(), "{}", b.name);
            }
        }
        // No rows at all: every figure skipped, nothing panics.
        assert!(all(&[], None)
            .iter()
            .all(|b| b.figure.is_none() && b.skipped.is_some()));
        // Pretraining unknown: Figure 1 says so.
        let mut rows = eval_run("r1", 1, "suffix", 1e6, 1e6, 0.1);
        rows.iter_mut().for_each(|r| r.pretraining_flops = None);
        let b = fig1_offense_defense(&rows, &Palette::new(&rows), None);
        assert!(b.skipped.unwrap().contains("pretraining FLOPs unknown"));
    }

    #[test]
    fn fig5_and_fig7_split_by_the_training_threat() {
        let mut rows = Vec::new();
        for (round, defense) in [(0u64, 0.0), (1, 1e9), (2, 2e9)] {
            rows.extend(eval_run(
                &format!("s{round}"),
                round,
                "suffix",
                defense,
                1e6,
                0.1 * round as f64,
            ));
            rows.extend(eval_run(
                &format!("p{round}"),
                round,
                "prefix",
                defense,
                1e6,
                0.3,
            ));
        }
        let pal = Palette::new(&rows);
        let f5 = fig5_adv_training(&rows, &pal);
        let f7 = fig7_transfer(&rows, &pal);
        let p5 = &f5.figure.unwrap().panels;
        let p7 = &f7.figure.unwrap().panels;
        assert_eq!((p5.len(), p7.len()), (2, 2));
        assert!(p5[0].title.contains("eval gcg suffix") && p7[0].title.contains("eval gcg prefix"));
        // A: ASR by round, round 0 included; B: by defense compute / pretraining, round 0 out.
        assert_eq!(p5[0].series[0].points, [(0.0, 0.0), (1.0, 0.1), (2.0, 0.2)]);
        assert_eq!(p5[1].series[0].points, [(1e-3, 0.1), (2e-3, 0.2)]);
        assert_eq!(p5[1].x_scale, Scale::Log10);
        assert!(
            f5.notes.iter().any(|n| n.contains("round 0")),
            "{:?}",
            f5.notes
        );
        assert_eq!(p7[0].series[0].points, [(0.0, 0.3), (1.0, 0.3), (2.0, 0.3)]);
    }

    #[test]
    fn number_formats() {
        assert_eq!(sig3(0.81234), "0.812");
        assert_eq!(sig3(12.345), "12.3");
        assert_eq!(sig3(-0.0018838), "-0.00188");
        assert_eq!(sig3(1.5e-5), "1.50e-5");
        assert_eq!(sig3(0.0), "0");
        assert_eq!(pct(0.05), "5%");
        assert_eq!(pct(0.025), "2.5%");
        assert_eq!(size_label(165_760), "N = 166k");
        assert_eq!(size_label(1_410_000_000), "N = 1.41B");
    }
}

//! `armsrace attack`: GCG or random-token attacks on a classifier (or a target string on a
//! causal LM), with resumable JSONL results and a summary table.

use super::device::{dispatch, DeviceArgs, OnBackend};
use armsrace::attack::budget::Budget;
use armsrace::attack::runner::Progress;
use armsrace::attack::runner::RunOutput;
use armsrace::attack::session::{run_plan_on, AttackSpec, Plan, DEFAULT_MODEL};
use armsrace::attack::summary::Summary;
use armsrace::attack::{FastPaths, GcgConfig, LossKind, RandomTokenConfig};
use armsrace::backend::Backend;
use armsrace::task::{ThreatModel, ATTACK_INIT_TEXT};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Kind {
    Gcg,
    RandomToken,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum VocabChoice {
    /// Only tokens that decode to printable ASCII (nanoGCG's default).
    Ascii,
    /// Every non-special token (the study's random-token attack).
    All,
}

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint directory (a classifier, or a causal LM for a target string).
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: PathBuf,
    /// password-match, word-length, spam, imdb, helpful, harmless or jsonl:PATH.
    #[arg(long, default_value = "password-match")]
    task: String,
    /// JSONL examples for dataset tasks ({"text": ..., "label": 0|1} per line).
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, default_value_t = 20)]
    examples: usize,
    /// Seed of the synthetic validation examples.
    #[arg(long, default_value_t = 0)]
    data_seed: u64,
    #[arg(long, value_enum, default_value = "gcg")]
    attack: Kind,
    /// suffix, prefix, infix:F or infix:FMIN-FMAX (0 < F < 1).
    #[arg(long, default_value = "suffix")]
    threat: String,
    /// Iterations per example (default: 10 for gcg, 1280 for random-token, as the study).
    #[arg(long)]
    iterations: Option<usize>,
    /// Nominal FLOPs per example; no iteration starts that could exceed it.
    #[arg(long)]
    flop_budget: Option<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Results directory (default: runs/attack-<task>-<attack>-seed<seed>). Re-running
    /// with the same settings resumes.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Delete earlier results in --out instead of resuming.
    #[arg(long)]
    overwrite: bool,
    #[arg(long, default_value_t = 10)]
    attack_tokens: usize,
    /// Text the attack tokens start from.
    #[arg(long, default_value = ATTACK_INIT_TEXT)]
    init: String,
    /// GCG candidates per iteration (nanoGCG: search_width).
    #[arg(long, default_value_t = 128)]
    search_width: usize,
    /// GCG tokens per position from the one-hot gradient.
    #[arg(long, default_value_t = 256)]
    topk: usize,
    /// GCG tokens swapped per candidate.
    #[arg(long, default_value_t = 1)]
    n_replace: usize,
    /// GCG attack buffer (0: keep the arg-min candidate, as the study).
    #[arg(long, default_value_t = 0)]
    buffer_size: usize,
    /// Use nanoGCG's mellowmax loss with this alpha instead of cross-entropy.
    #[arg(long)]
    mellowmax: Option<f32>,
    /// GCG: stop attacking an example once it is broken.
    #[arg(long)]
    early_stop: bool,
    /// Tokens an attack may propose (default: ascii for gcg, all for random-token).
    #[arg(long, value_enum)]
    vocab: Option<VocabChoice>,
    /// Do not drop candidates that fail the retokenization check.
    #[arg(long)]
    no_filter: bool,
    /// Causal LMs: the target string (default: the wrong label's name).
    #[arg(long)]
    target: Option<String>,
    /// Examples attacked together (one batched gradient pass).
    #[arg(long, default_value_t = 20)]
    group_size: usize,
    #[command(flatten)]
    device: DeviceArgs,
    /// Stop after this iteration as if killed (tests of resume).
    #[arg(long, hide = true)]
    stop_after: Option<usize>,
    /// Switch off fast paths (same results, slower): prefix cache, grouped reuse, shortcut.
    #[arg(long, hide = true)]
    no_prefix_cache: bool,
    #[arg(long, hide = true)]
    no_group_reuse: bool,
    #[arg(long, hide = true)]
    no_shortcut: bool,
}

fn plan(a: &Args) -> anyhow::Result<Plan> {
    ThreatModel::parse(&a.threat)?;
    let loss = match a.mellowmax {
        Some(alpha) if alpha > 0.0 && alpha.is_finite() => LossKind::Mellowmax { alpha },
        Some(alpha) => anyhow::bail!("--mellowmax: alpha must be positive, got {alpha}"),
        None => LossKind::CrossEntropy,
    };
    for (name, v) in [
        ("--examples", a.examples),
        ("--attack-tokens", a.attack_tokens),
        ("--search-width", a.search_width),
        ("--topk", a.topk),
        ("--group-size", a.group_size),
    ] {
        if v == 0 {
            anyhow::bail!("{name} must be at least 1");
        }
    }
    if a.n_replace == 0 || a.n_replace > a.attack_tokens {
        anyhow::bail!(
            "--n-replace must be in 1..={} (--attack-tokens)",
            a.attack_tokens
        );
    }
    if a.flop_budget.is_some_and(|f| f.is_nan() || f <= 0.0) {
        anyhow::bail!("--flop-budget must be a positive number of FLOPs");
    }
    let (attack, iterations, vocab) = match a.attack {
        Kind::Gcg => (
            AttackSpec::Gcg(GcgConfig {
                search_width: a.search_width,
                topk: a.topk,
                n_replace: a.n_replace,
                buffer_size: a.buffer_size,
                loss,
                early_stop: a.early_stop,
                filter: !a.no_filter,
                seed: a.seed,
            }),
            10,
            VocabChoice::Ascii,
        ),
        Kind::RandomToken => (
            AttackSpec::RandomToken(RandomTokenConfig {
                filter: !a.no_filter,
                loss,
                seed: a.seed,
            }),
            1280,
            VocabChoice::All,
        ),
    };
    Ok(Plan {
        model: a.model.clone(),
        task: a.task.clone(),
        data: a.data.clone(),
        examples: a.examples,
        data_seed: a.data_seed,
        threat: a.threat.clone(),
        attack,
        attack_tokens: a.attack_tokens,
        init: a.init.clone(),
        ascii_only: a.vocab.unwrap_or(vocab) == VocabChoice::Ascii,
        target: a.target.clone(),
        budget: Budget {
            iterations: a.iterations.unwrap_or(iterations),
            flops: a.flop_budget,
        },
        group_size: a.group_size,
        fast: FastPaths {
            prefix_cache: !a.no_prefix_cache,
            group_reuse: !a.no_group_reuse,
            shortcut: !a.no_shortcut,
        },
    })
}

fn default_out(a: &Args) -> PathBuf {
    let task: String = a
        .task
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let attack = match a.attack {
        Kind::Gcg => "gcg",
        Kind::RandomToken => "random-token",
    };
    PathBuf::from(format!("runs/attack-{task}-{attack}-seed{}", a.seed))
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let plan = plan(&a)?;
    super::check_bundled_model(&plan.model)?;
    let out = a.out.clone().unwrap_or_else(|| default_out(&a));
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} example-iterations {msg}",
        )
        .expect("template"),
    );
    let mut progress = |p: &Progress| {
        bar.set_length(p.total as u64);
        bar.set_position(p.done as u64);
        let asr = if p.attacked == 0 {
            0.0
        } else {
            100.0 * p.broken as f64 / p.attacked as f64
        };
        bar.set_message(format!(
            "ASR {asr:.1}% ({}/{}) | nominal {:.3e} | executed {:.3e} FLOPs{}",
            p.broken,
            p.attacked,
            p.nominal,
            p.executed,
            if p.replayed { " (resumed)" } else { "" }
        ));
    };
    let job = Job {
        plan: &plan,
        out: &out,
        overwrite: a.overwrite,
        stop_after: a.stop_after,
        progress: &mut progress,
    };
    let res = dispatch(a.device, job)?;
    bar.finish_and_clear();
    if !res.complete {
        println!(
            "stopped after iteration {} as asked; rerun to resume ({})",
            a.stop_after.unwrap_or(0),
            out.display()
        );
        return Ok(());
    }
    print_summary(&res.summary, &out);
    Ok(())
}

/// The run itself, on whichever backend `--device` opened.
struct Job<'a> {
    plan: &'a Plan,
    out: &'a std::path::Path,
    overwrite: bool,
    stop_after: Option<usize>,
    progress: &'a mut dyn FnMut(&Progress),
}

impl OnBackend for Job<'_> {
    type Out = RunOutput;
    fn run<B: Backend>(self, backend: B) -> anyhow::Result<RunOutput> {
        let (plan, out) = (self.plan, self.out);
        Ok(run_plan_on(
            plan,
            backend,
            out,
            self.overwrite,
            self.stop_after,
            self.progress,
        )?)
    }
}

fn print_summary(s: &Summary, out: &std::path::Path) {
    println!(
        "{} on {} (N = {:.2}M), task {}, {}: {} examples, {} attacked, {} skipped \
         (misclassified before the attack)",
        s.info.attack,
        s.info.model,
        s.info.n_params as f64 / 1e6,
        s.info.task,
        s.info.threat,
        s.examples,
        s.attacked,
        s.skipped
    );
    // FLOP columns: what one example costs for that many iterations (mean per iteration).
    println!(
        "{:>10} {:>8} {:>18} {:>18}",
        "iteration", "ASR", "nominal FLOPs/ex", "executed FLOPs/ex"
    );
    for i in rows(s.iterations) {
        println!(
            "{:>10} {:>7.1}% {:>18.3e} {:>18.3e}",
            i,
            100.0 * s.asr[i],
            i as f64 * s.nominal_flops_per_iteration,
            i as f64 * s.executed_flops_per_iteration
        );
    }
    let pct = |k: &str| match s.compute_to_asr.get(k).copied().flatten() {
        Some(c) => format!("{c:.3e}"),
        None => "not reached".into(),
    };
    println!(
        "compute to reach ASR (fraction of pretraining compute {:.3e}): 1% {}, 2% {}, 5% {}",
        s.info.pretraining_flops,
        pct("1%"),
        pct("2%"),
        pct("5%")
    );
    println!(
        "FLOPs: nominal {:.3e}, executed {:.3e} ({:.1}x fewer)",
        s.nominal_flops,
        s.executed_flops,
        s.nominal_flops / s.executed_flops.max(1.0)
    );
    println!(
        "wall {:.1} s: {:.3} s per iteration (examples batched), {:.3} s per example-iteration",
        s.wall_s, s.seconds_per_iteration, s.seconds_per_example_iteration
    );
    println!("results: {}", out.display());
}

/// At most ~12 table rows: every iteration for short runs, evenly spaced for long ones.
fn rows(n: usize) -> Vec<usize> {
    let step = n.div_ceil(10).max(1);
    let mut v: Vec<usize> = (0..=n).step_by(step).collect();
    if v.last() != Some(&n) {
        v.push(n);
    }
    v
}

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

/// How examples are attacked: the attack, its settings and the threat model. Shared by
/// `attack`, `adv-train` (each round's attack) and `eval` (the evaluation attack), so the
/// three read the same flags into the same engine.
#[derive(clap::Args, Clone, Debug)]
pub struct AttackOpts {
    #[arg(long, value_enum, default_value = "gcg")]
    attack: Kind,
    /// suffix, prefix, infix:F or infix:FMIN-FMAX (0 < F < 1).
    #[arg(long, default_value = "suffix")]
    threat: String,
    /// Seed of the attack's random choices.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
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
    /// Examples attacked together (one batched gradient pass).
    #[arg(long, default_value_t = 20)]
    group_size: usize,
    /// Switch off fast paths (same results, slower): prefix cache, grouped reuse, shortcut.
    #[arg(long, hide = true)]
    no_prefix_cache: bool,
    #[arg(long, hide = true)]
    no_group_reuse: bool,
    #[arg(long, hide = true)]
    no_shortcut: bool,
}

/// What [`AttackOpts`] decide of a plan.
pub struct AttackChoice {
    pub attack: AttackSpec,
    pub attack_tokens: usize,
    pub init: String,
    pub ascii_only: bool,
    pub group_size: usize,
    pub fast: FastPaths,
    pub threat: String,
    /// The study's iterations for this attack (gcg 10, random-token 1280).
    pub default_iterations: usize,
    /// "gcg" or "random-token", for folder names.
    pub name: &'static str,
}

impl AttackOpts {
    pub fn choice(&self) -> anyhow::Result<AttackChoice> {
        ThreatModel::parse(&self.threat)?;
        let loss = match self.mellowmax {
            Some(alpha) if alpha > 0.0 && alpha.is_finite() => LossKind::Mellowmax { alpha },
            Some(alpha) => anyhow::bail!("--mellowmax: alpha must be positive, got {alpha}"),
            None => LossKind::CrossEntropy,
        };
        for (name, v) in [
            ("--attack-tokens", self.attack_tokens),
            ("--search-width", self.search_width),
            ("--topk", self.topk),
            ("--group-size", self.group_size),
        ] {
            if v == 0 {
                anyhow::bail!("{name} must be at least 1");
            }
        }
        if self.n_replace == 0 || self.n_replace > self.attack_tokens {
            anyhow::bail!(
                "--n-replace must be in 1..={} (--attack-tokens)",
                self.attack_tokens
            );
        }
        let (attack, iterations, vocab, name) = match self.attack {
            Kind::Gcg => (
                AttackSpec::Gcg(GcgConfig {
                    search_width: self.search_width,
                    topk: self.topk,
                    n_replace: self.n_replace,
                    buffer_size: self.buffer_size,
                    loss,
                    early_stop: self.early_stop,
                    filter: !self.no_filter,
                    seed: self.seed,
                }),
                10,
                VocabChoice::Ascii,
                "gcg",
            ),
            Kind::RandomToken => (
                AttackSpec::RandomToken(RandomTokenConfig {
                    filter: !self.no_filter,
                    loss,
                    seed: self.seed,
                }),
                1280,
                VocabChoice::All,
                "random-token",
            ),
        };
        Ok(AttackChoice {
            attack,
            attack_tokens: self.attack_tokens,
            init: self.init.clone(),
            ascii_only: self.vocab.unwrap_or(vocab) == VocabChoice::Ascii,
            group_size: self.group_size,
            fast: FastPaths {
                prefix_cache: !self.no_prefix_cache,
                group_reuse: !self.no_group_reuse,
                shortcut: !self.no_shortcut,
            },
            threat: self.threat.clone(),
            default_iterations: iterations,
            name,
        })
    }
}

impl AttackChoice {
    /// A plan attacking `examples` of `task` on `model` with this attack.
    #[allow(clippy::too_many_arguments)]
    pub fn plan(
        self,
        model: PathBuf,
        task: String,
        data: Option<PathBuf>,
        examples: usize,
        data_seed: u64,
        target: Option<String>,
        budget: Budget,
    ) -> Plan {
        Plan {
            model,
            task,
            data,
            examples,
            data_seed,
            threat: self.threat,
            attack: self.attack,
            attack_tokens: self.attack_tokens,
            init: self.init,
            ascii_only: self.ascii_only,
            target,
            budget,
            group_size: self.group_size,
            fast: self.fast,
        }
    }
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
    /// Iterations per example (default: 10 for gcg, 1280 for random-token, as the study).
    #[arg(long)]
    iterations: Option<usize>,
    /// Nominal FLOPs per example; no iteration starts that could exceed it.
    #[arg(long)]
    flop_budget: Option<f64>,
    /// Results directory (default: runs/attack-<task>-<attack>-seed<seed>). Re-running
    /// with the same settings resumes.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Delete earlier results in --out instead of resuming.
    #[arg(long)]
    overwrite: bool,
    /// Causal LMs: the target string (default: the wrong label's name).
    #[arg(long)]
    target: Option<String>,
    #[command(flatten)]
    opts: AttackOpts,
    #[command(flatten)]
    device: DeviceArgs,
    /// Stop after this iteration as if killed (tests of resume).
    #[arg(long, hide = true)]
    stop_after: Option<usize>,
}

fn plan(a: &Args) -> anyhow::Result<Plan> {
    if a.examples == 0 {
        anyhow::bail!("--examples must be at least 1");
    }
    if a.flop_budget.is_some_and(|f| f.is_nan() || f <= 0.0) {
        anyhow::bail!("--flop-budget must be a positive number of FLOPs");
    }
    let choice = a.opts.choice()?;
    let budget = Budget {
        iterations: a.iterations.unwrap_or(choice.default_iterations),
        flops: a.flop_budget,
    };
    Ok(choice.plan(
        a.model.clone(),
        a.task.clone(),
        a.data.clone(),
        a.examples,
        a.data_seed,
        a.target.clone(),
        budget,
    ))
}

fn default_out(a: &Args) -> PathBuf {
    let task: String = a
        .task
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let attack = match a.opts.attack {
        Kind::Gcg => "gcg",
        Kind::RandomToken => "random-token",
    };
    PathBuf::from(format!("runs/attack-{task}-{attack}-seed{}", a.opts.seed))
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let mut plan = plan(&a)?;
    plan.model = super::resolve_model(&plan.model)?;
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
    fn run<B: Backend + Clone>(self, backend: B) -> anyhow::Result<RunOutput> {
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

//! `armsrace attack`: GCG, BEAST or random-token attacks on a classifier (or a target string
//! on a causal LM), with resumable JSONL results and a summary table; several `--threat`
//! values give one results directory each (a transfer evaluation in one call).

use super::device::{dispatch, DeviceArgs, OnBackend};
use armsrace::attack::budget::Budget;
use armsrace::attack::runner::Progress;
use armsrace::attack::runner::RunOutput;
use armsrace::attack::session::{run_plan_on, AttackSpec, Plan, DEFAULT_MODEL};
use armsrace::attack::summary::Summary;
use armsrace::attack::{AsrKind, BeastConfig, FastPaths, GcgConfig, LossKind, RandomTokenConfig};
use armsrace::backend::Backend;
use armsrace::task::{ThreatModel, ATTACK_INIT_TEXT};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Kind {
    Gcg,
    RandomToken,
    Beast,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum VocabChoice {
    /// Only tokens that decode to printable ASCII (nanoGCG's default).
    Ascii,
    /// Every non-special token (the study's GCG and random-token pools).
    All,
}

/// How examples are attacked: the attack, its settings and the threat model. Shared by
/// `attack`, `adv-train` (each round's attack) and `eval` (the evaluation attack), so the
/// three read the same flags into the same engine.
#[derive(clap::Args, Clone, Debug)]
pub struct AttackOpts {
    #[arg(long, value_enum, default_value = "gcg")]
    attack: Kind,
    /// suffix, prefix, infix:F or infix:FMIN-FMAX (0 < F < 1). `attack` takes several
    /// (repeated or comma-separated) and writes one results directory per threat model.
    #[arg(long, default_value = "suffix", value_delimiter = ',')]
    threat: Vec<String>,
    /// BEAST: the sampler, a causal-LM checkpoint with the victim's tokenizer (the study:
    /// pythia-14m for Pythia, Qwen2.5-0.5B for Qwen2.5).
    #[arg(long)]
    sampler: Option<PathBuf>,
    /// BEAST: beams kept per iteration.
    #[arg(long, default_value_t = 7)]
    beam: usize,
    /// BEAST: tokens sampled per beam and iteration.
    #[arg(long, default_value_t = 7)]
    branching: usize,
    /// BEAST: the sampler's temperature.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
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
    /// GCG tokens per position from the one-hot gradient (1..=256).
    #[arg(long, default_value_t = 256)]
    topk: usize,
    /// GCG tokens swapped per candidate (1..=--attack-tokens).
    #[arg(long, default_value_t = 1)]
    n_replace: usize,
    /// GCG attack buffer (0: keep the arg-min candidate, as the study).
    #[arg(long, default_value_t = 0)]
    buffer_size: usize,
    /// Use nanoGCG's mellowmax loss with this alpha instead of cross-entropy.
    #[arg(long)]
    mellowmax: Option<f32>,
    /// Stop attacking an example once it is broken (the study never did: it changes the
    /// FLOPs and, for GCG, the current-iterate ASR curve).
    #[arg(long)]
    early_stop: bool,
    /// Tokens GCG and random token may propose (the study: all).
    #[arg(long, value_enum, default_value = "all")]
    vocab: VocabChoice,
    /// GCG: keep candidates that fail the validity filter (retokenization of the prompt and
    /// of the attack, no-op swaps), and skip aligning the initial attack.
    #[arg(long)]
    no_filter: bool,
    /// Pretraining tokens D of the checkpoint's causal LM, for compute fractions (default:
    /// the study's D for a Pythia / Qwen2.5 preset shape; unknown for other checkpoints).
    #[arg(long)]
    pretrain_tokens: Option<f64>,
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
#[derive(Clone)]
pub struct AttackChoice {
    pub attack: AttackSpec,
    pub attack_tokens: usize,
    pub init: String,
    pub ascii_only: bool,
    pub group_size: usize,
    pub fast: FastPaths,
    pub threat: String,
    pub pretrain_tokens: Option<f64>,
    /// The study's iterations for this attack (gcg 10, random-token 1280, beast 25).
    pub default_iterations: usize,
    /// "gcg", "random-token" or "beast", for folder names.
    pub name: &'static str,
}

impl AttackOpts {
    /// The attack under its one threat model (an error if several were given).
    pub fn choice(&self) -> anyhow::Result<AttackChoice> {
        match self.choices()?.as_slice() {
            [one] => Ok(one.clone()),
            many => anyhow::bail!(
                "--threat: this command runs one threat model, got {}",
                many.len()
            ),
        }
    }

    /// The attack under each `--threat` given, in order.
    pub fn choices(&self) -> anyhow::Result<Vec<AttackChoice>> {
        let mut seen = std::collections::BTreeSet::new();
        for t in &self.threat {
            let parsed = ThreatModel::parse(t)?;
            if !seen.insert(parsed.to_string()) {
                anyhow::bail!("--threat {t} is given twice");
            }
        }
        if self.threat.is_empty() {
            anyhow::bail!("--threat needs at least one threat model");
        }
        let one = self.one(&self.threat[0])?;
        Ok(self
            .threat
            .iter()
            .map(|t| AttackChoice {
                threat: t.clone(),
                ..one.clone()
            })
            .collect())
    }

    fn one(&self, threat: &str) -> anyhow::Result<AttackChoice> {
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
            ("--beam", self.beam),
            ("--branching", self.branching),
        ] {
            if v == 0 {
                anyhow::bail!("{name} 0: must be at least 1");
            }
        }
        let max_topk = armsrace::backend::cpu::gcg::TOPK_MAX;
        if self.topk > max_topk {
            anyhow::bail!(
                "--topk {}: at most {max_topk} (the one-hot-gradient top-k kernels' limit)",
                self.topk
            );
        }
        if self.n_replace == 0 || self.n_replace > self.attack_tokens {
            anyhow::bail!(
                "--n-replace {}: must be in 1..={} (--attack-tokens)",
                self.n_replace,
                self.attack_tokens
            );
        }
        if self
            .pretrain_tokens
            .is_some_and(|d| !(d.is_finite() && d > 0.0))
        {
            anyhow::bail!("--pretrain-tokens must be a positive number of tokens");
        }
        if self.sampler.is_some() && self.attack != Kind::Beast {
            anyhow::bail!("--sampler is BEAST's (--attack beast)");
        }
        let (attack, name) = match self.attack {
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
                "gcg",
            ),
            Kind::RandomToken => (
                AttackSpec::RandomToken(RandomTokenConfig {
                    early_stop: self.early_stop,
                    loss,
                    seed: self.seed,
                }),
                "random-token",
            ),
            Kind::Beast => {
                let Some(sampler) = &self.sampler else {
                    anyhow::bail!(
                        "--attack beast needs --sampler DIR: a causal LM with the victim's \
                         tokenizer (the study used pythia-14m for Pythia victims)"
                    );
                };
                (
                    AttackSpec::Beast(BeastConfig {
                        sampler: super::resolve_model(sampler)?,
                        beam: self.beam,
                        branching: self.branching,
                        temperature: self.temperature,
                        loss,
                        early_stop: self.early_stop,
                        seed: self.seed,
                    }),
                    "beast",
                )
            }
        };
        Ok(AttackChoice {
            default_iterations: attack.study_iterations(),
            attack,
            attack_tokens: self.attack_tokens,
            init: self.init.clone(),
            ascii_only: self.vocab == VocabChoice::Ascii,
            group_size: self.group_size,
            fast: FastPaths {
                prefix_cache: !self.no_prefix_cache,
                group_reuse: !self.no_group_reuse,
                shortcut: !self.no_shortcut,
            },
            threat: threat.to_string(),
            pretrain_tokens: self.pretrain_tokens,
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
            pretrain_tokens: self.pretrain_tokens,
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
    /// JSONL examples for dataset tasks ({"text": ..., "label": 0|1} per line; helpful and
    /// harmless also take HH-RLHF's {"chosen": ..., "rejected": ...}).
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, default_value_t = 20)]
    examples: usize,
    /// Seed of the synthetic validation examples.
    #[arg(long, default_value_t = 0)]
    data_seed: u64,
    /// Iterations per example (default: 10 for gcg, 1280 for random-token, 25 for beast).
    #[arg(long)]
    iterations: Option<usize>,
    /// Nominal FLOPs per example; no iteration starts that could exceed it.
    #[arg(long)]
    flop_budget: Option<f64>,
    /// Results directory (default: runs/attack-<model>-<task>-<attack>-<threat>-<N>it-seed<S>;
    /// with several threat models, one subfolder each). Re-running with the same settings
    /// resumes.
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

/// One plan per `--threat`.
fn plans(a: &Args) -> anyhow::Result<Vec<Plan>> {
    if a.examples == 0 {
        anyhow::bail!("--examples must be at least 1");
    }
    if a.flop_budget.is_some_and(|f| f.is_nan() || f <= 0.0) {
        anyhow::bail!("--flop-budget must be a positive number of FLOPs");
    }
    let model = super::resolve_model(&a.model)?;
    Ok(a.opts
        .choices()?
        .into_iter()
        .map(|choice| {
            let budget = Budget {
                iterations: a.iterations.unwrap_or(choice.default_iterations),
                flops: a.flop_budget,
            };
            choice.plan(
                model.clone(),
                a.task.clone(),
                a.data.clone(),
                a.examples,
                a.data_seed,
                a.target.clone(),
                budget,
            )
        })
        .collect())
}

/// runs/attack-<model>-<task>-<attack>-<threat>-<iterations>it-seed<seed>: distinct
/// settings get distinct folders (the rest of the settings a resume checks).
fn default_out(a: &Args, plan: &Plan, name: &str) -> PathBuf {
    let model = match plan.model.file_name() {
        Some(f) => super::slug(&f.to_string_lossy()),
        None => "model".into(),
    };
    PathBuf::from(format!(
        "runs/attack-{model}-{}-{name}-{}-{}it-seed{}",
        super::slug(&a.task),
        super::slug(&plan.threat),
        plan.budget.iterations,
        a.opts.seed
    ))
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let plans = plans(&a)?;
    let name = a.opts.choices()?[0].name;
    let several = plans.len() > 1;
    for plan in &plans {
        // Several threat models: one folder each, under --out when given.
        let out = match (&a.out, several) {
            (Some(o), false) => o.clone(),
            (Some(o), true) => o.join(super::slug(&plan.threat)),
            (None, _) => default_out(&a, plan, name),
        };
        if several {
            println!("threat model {}: {}", plan.threat, out.display());
        }
        run_one(&a, plan, &out)?;
    }
    Ok(())
}

fn run_one(a: &Args, plan: &Plan, out: &std::path::Path) -> anyhow::Result<()> {
    let bar =
        super::progress_bar("{elapsed_precise} [{bar:30}] {pos}/{len} example-iterations {msg}");
    let mut progress = |p: &Progress| {
        bar.set_length(p.total as u64);
        bar.set_position(p.done as u64);
        let asr = if p.attacked == 0 {
            0.0
        } else {
            100.0 * p.broken as f64 / p.attacked as f64
        };
        bar.set_message(format!(
            "broken {asr:.1}% ({}/{}) | nominal {:.3e} | executed {:.3e} FLOPs{}",
            p.broken,
            p.attacked,
            p.nominal,
            p.executed,
            if p.replayed { " (resumed)" } else { "" }
        ));
    };
    let job = Job {
        plan,
        out,
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
    print_summary(&res.summary, out);
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
    let (cur, cum) = match s.asr_kind {
        AsrKind::Current => ("ASR*", "broken"),
        AsrKind::Cumulative => ("current", "ASR*"),
    };
    println!(
        "{:>10} {:>8} {:>8} {:>18} {:>18}",
        "iteration", cur, cum, "nominal FLOPs/ex", "executed FLOPs/ex"
    );
    for i in rows(s.iterations) {
        println!(
            "{:>10} {:>7.1}% {:>7.1}% {:>18.3e} {:>18.3e}",
            i,
            100.0 * s.asr_current[i],
            100.0 * s.asr_cumulative[i],
            i as f64 * s.nominal_flops_per_iteration,
            i as f64 * s.executed_flops_per_iteration
        );
    }
    println!(
        "ASR* = the study's curve for {}: {}",
        s.info.attack,
        match s.asr_kind {
            AsrKind::Current => {
                "the current attack succeeds after iteration i ('broken': at some iteration <= i)"
            }
            AsrKind::Cumulative => {
                "broken at some iteration <= i ('current': that iteration's attack succeeds)"
            }
        }
    );
    if s.skipped_iterations > 0 {
        println!(
            "{} example-iterations skipped: the filter rejected every candidate",
            s.skipped_iterations
        );
    }
    match s.info.pretraining_flops {
        Some(p) => {
            let pct = |k: &str| match s.compute_to_asr.get(k).copied().flatten() {
                Some(c) => format!("{c:.3e}"),
                None => "not reached".into(),
            };
            println!(
                "compute to reach ASR* (fraction of pretraining compute {p:.3e}): 1% {}, 2% {}, \
                 5% {}",
                pct("1%"),
                pct("2%"),
                pct("5%")
            );
        }
        None => println!(
            "compute to reach ASR* as a fraction of pretraining: unknown (the checkpoint is \
             not a Pythia / Qwen2.5 preset; pass --pretrain-tokens D)"
        ),
    }
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
    println!(
        "results: {} (each example's final and best attack as text: examples.jsonl)",
        out.display()
    );
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

//! `armsrace adv-train` (the study's adversarial training loop) and `armsrace eval` (a fixed
//! attack against chosen rounds' checkpoints).

use super::attack::AttackOpts;
use super::device::{dispatch, DeviceArgs, OnBackend};
use super::say;
use armsrace::attack::budget::Budget;
use armsrace::attack::session::DEFAULT_MODEL;
use armsrace::backend::Backend;
use armsrace::model::config::ModelConfig;
use armsrace::train::adversarial::{
    self, checkpoint_dir, eval_rounds, AdvConfig, EvalRecord, Event, PoolWeighting, StopPoint,
    SETTINGS_FILE,
};
use armsrace::train::optim::OptimizerKind;
use armsrace::train::TrainConfig;
use indicatif::ProgressBar;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Weighting {
    /// Each pool example's rank by loss (the method).
    Rank,
    /// argsort(losses) in place of the rank (the study's code).
    Argsort,
}

#[derive(clap::Args)]
pub struct Args {
    /// The classifier to defend (round 0).
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: PathBuf,
    /// Run directory: checkpoints per round, attacks, rounds.jsonl; rerun to resume.
    #[arg(long)]
    out: PathBuf,
    /// password-match, word-length, spam, imdb, helpful, harmless or jsonl:PATH.
    #[arg(long, default_value = "password-match")]
    task: String,
    /// Training JSONL for dataset tasks.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Seed of the synthetic training examples (the model's own training data seed keeps
    /// evaluation examples unseen).
    #[arg(long, default_value_t = 0)]
    data_seed: u64,
    /// Clean training pool size.
    #[arg(long, default_value_t = 20_000)]
    clean_examples: usize,
    /// Examples attacked per round.
    #[arg(long, default_value_t = 200)]
    attacked_per_round: usize,
    /// Attack-then-train rounds (default: the study's rule for the model's family and size:
    /// Pythia clip(n_m, 5, 60), Qwen2.5 22 for 0.5B and 10 above).
    #[arg(long)]
    rounds: Option<usize>,
    /// Attack iterations in the first round (default: gcg 8, random-token 1024).
    #[arg(long)]
    iterations_from: Option<usize>,
    /// Attack iterations in the last round (default: gcg 64, random-token 2048).
    #[arg(long)]
    iterations_to: Option<usize>,
    /// Training examples per round at most.
    #[arg(long, default_value_t = 1000)]
    max_train: usize,
    /// Fraction of a round's training examples that may come from the adversarial pool.
    #[arg(long, default_value_t = 0.8)]
    adv_fraction: f64,
    /// How pool examples are weighted for sampling.
    #[arg(long, value_enum, default_value = "rank")]
    weighting: Weighting,
    /// Scale of the pool weights' exponent: exp(scale * (rank - max rank)).
    #[arg(long, default_value_t = 0.005)]
    weight_scale: f64,
    /// Learning rate (constant).
    #[arg(long, default_value_t = 1e-5)]
    lr: f32,
    /// adafactor (the study) or adamw.
    #[arg(long, default_value = "adafactor")]
    optimizer: String,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Padded tokens per micro-batch at most.
    #[arg(long, default_value_t = 16_384)]
    batch_tokens: usize,
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// The attack of every round (its --seed seeds the whole run).
    #[command(flatten)]
    attack: AttackOpts,
    #[command(flatten)]
    device: DeviceArgs,
    /// Stop as if killed: attack:ROUND:ITERATION, train:ROUND:STEPS or save:ROUND (tests).
    #[arg(long, hide = true)]
    stop_at: Option<String>,
}

fn parse_stop(s: &str) -> anyhow::Result<StopPoint> {
    let parts: Vec<&str> = s.split(':').collect();
    let n = |i: usize| -> anyhow::Result<usize> {
        parts
            .get(i)
            .and_then(|x| x.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("--stop-at {s:?}: expected a number in part {i}"))
    };
    Ok(match parts[0] {
        "attack" => StopPoint::Attack {
            round: n(1)?,
            iteration: n(2)?,
        },
        "train" => StopPoint::Train {
            round: n(1)?,
            steps: n(2)?,
        },
        "save" => StopPoint::Save { round: n(1)? },
        _ => anyhow::bail!("--stop-at {s:?}: attack:R:I, train:R:S or save:R"),
    })
}

fn config(a: &Args) -> anyhow::Result<AdvConfig> {
    let model = super::resolve_model(&a.model)?;
    let choice = a.attack.choice()?;
    let (from, to) = match choice.name {
        "random-token" => (1024, 2048),
        _ => (8, 64),
    };
    let optimizer = OptimizerKind::parse(&a.optimizer)
        .ok_or_else(|| anyhow::anyhow!("--optimizer: adafactor or adamw, got {:?}", a.optimizer))?;
    let rounds = match a.rounds {
        Some(r) => r,
        None => {
            let cfg = ModelConfig::from_file(&model.join("config.json"))?;
            adversarial::study_rounds(&cfg, armsrace::model::param_count(&cfg))
        }
    };
    let seed = a.attack.seed;
    let attack = choice.plan(
        model.clone(),
        a.task.clone(),
        a.data.clone(),
        a.attacked_per_round,
        a.data_seed,
        None,
        Budget {
            iterations: from,
            flops: None,
        },
    );
    Ok(AdvConfig {
        model: model.clone(),
        task: a.task.clone(),
        data: a.data.clone(),
        data_seed: a.data_seed,
        clean_examples: a.clean_examples,
        attacked_per_round: a.attacked_per_round,
        rounds,
        iterations_from: a.iterations_from.unwrap_or(from),
        iterations_to: a.iterations_to.unwrap_or(to),
        max_train: a.max_train,
        adv_fraction: a.adv_fraction,
        weighting: match a.weighting {
            Weighting::Rank => PoolWeighting::Rank,
            Weighting::Argsort => PoolWeighting::Argsort,
        },
        weight_scale: a.weight_scale,
        train: TrainConfig {
            epochs: 1,
            lr: a.lr,
            warmup_frac: 0.0,
            decay: false,
            optimizer,
            batch_tokens: a.batch_tokens,
            batch_size: a.batch_size,
            grad_accum: a.grad_accum,
            seed,
        },
        attack,
        seed,
    })
}

fn bar() -> ProgressBar {
    super::progress_bar("{elapsed_precise} {msg}")
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let cfg = config(&a)?;
    let stop = a.stop_at.as_deref().map(parse_stop).transpose()?;
    let bar = bar();
    say(
        &bar,
        format!(
            "adversarial training of {} on {}: {} rounds, {} attacked per round, {} iterations \
             {} -> {}, into {}",
            cfg.model.display(),
            cfg.task,
            cfg.rounds,
            cfg.attacked_per_round,
            a.attack.choice()?.name,
            cfg.iterations_from,
            cfg.iterations_to,
            a.out.display()
        ),
    );
    let mut on = |e: Event<'_>| match e {
        Event::Resumed { round } => say(&bar, format!("resuming after round {round}")),
        Event::Attack(r, p) => bar.set_message(format!(
            "round {r}: attack {}/{} example-iterations, ASR {}/{}",
            p.done, p.total, p.broken, p.attacked
        )),
        Event::TrainStep {
            round,
            step,
            steps,
            loss,
        } => bar.set_message(format!(
            "round {round}: train step {step}/{steps}, loss {loss:.4}"
        )),
        Event::Round(r) => say(
            &bar,
            format!(
                "round {:>3}: attack {} it, ASR {:5.1}% | pool {:>6} | train {} ex ({} adv), \
                 loss {:.4} | defense {:.3e} FLOPs ({} of pretraining) | {:.1} s",
                r.round,
                r.attack_iterations,
                100.0 * r.attack_asr,
                r.pool_size,
                r.train_examples,
                r.train_adversarial,
                r.train_loss,
                r.defense_nominal_flops,
                fraction(r.defense_fraction_of_pretraining),
                r.attack_wall_s + r.train_wall_s
            ),
        ),
    };
    let job = AdvJob {
        cfg: &cfg,
        out: &a.out,
        stop,
        on: &mut on,
    };
    let res = dispatch(a.device, job)?;
    bar.finish_and_clear();
    if !res.complete {
        println!("stopped as asked; rerun to resume ({})", a.out.display());
        return Ok(());
    }
    let last = res.records.last();
    println!(
        "done: {} rounds, defense compute {:.3e} FLOPs nominal ({:.3e} executed, {} of \
         pretraining); checkpoints in {}",
        res.records.len(),
        last.map_or(0.0, |r| r.defense_nominal_flops),
        last.map_or(0.0, |r| r.defense_executed_flops),
        fraction(last.and_then(|r| r.defense_fraction_of_pretraining)),
        a.out.join("checkpoints").display()
    );
    Ok(())
}

struct AdvJob<'a> {
    cfg: &'a AdvConfig,
    out: &'a Path,
    stop: Option<StopPoint>,
    on: &'a mut dyn FnMut(Event<'_>),
}

impl OnBackend for AdvJob<'_> {
    type Out = adversarial::AdvOutput;
    fn run<B: Backend + Clone>(self, backend: B) -> anyhow::Result<Self::Out> {
        Ok(adversarial::run(
            self.cfg, backend, self.out, self.stop, self.on,
        )?)
    }
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// An `adv-train` run directory.
    #[arg(long)]
    run: PathBuf,
    /// Rounds to evaluate: a list (0,1,2,4) or `all`.
    #[arg(long, default_value = "all")]
    rounds: String,
    /// Held-out examples (synthetic tasks: the validation half, never trained on).
    #[arg(long, default_value_t = 500)]
    examples: usize,
    /// Held-out JSONL for dataset tasks (the run's training data is not used).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Iterations of the evaluation attack (default: gcg 128, random-token 4096, beast 25).
    #[arg(long)]
    iterations: Option<usize>,
    /// Name of this evaluation's folder under RUN/eval (default: <attack>-<threat>; with
    /// several --threat values, NAME-<threat> each).
    #[arg(long)]
    name: Option<String>,
    /// Delete earlier results of this evaluation instead of resuming.
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    attack: AttackOpts,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn eval(a: EvalArgs) -> anyhow::Result<()> {
    let p = a.run.join(SETTINGS_FILE);
    let text = std::fs::read_to_string(&p)
        .map_err(|e| anyhow::anyhow!("{}: not an adv-train run ({e})", p.display()))?;
    let cfg: AdvConfig =
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    let done = adversarial::read_rounds(&a.run)?.len();
    let rounds: Vec<usize> = if a.rounds == "all" {
        (0..=done).collect()
    } else {
        a.rounds
            .split(',')
            .map(|x| {
                x.trim()
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--rounds {:?}: not a list of rounds", a.rounds))
            })
            .collect::<anyhow::Result<_>>()?
    };
    if a.examples == 0 {
        anyhow::bail!("--examples must be at least 1");
    }
    let synthetic = matches!(
        armsrace::task::Task::from_name(&cfg.task)?.source,
        armsrace::task::Source::Synthetic(_)
    );
    if !synthetic && a.data.is_none() {
        anyhow::bail!(
            "task `{}` is read from JSONL: give --data with held-out examples (evaluating \
             on the training file would measure what the model was trained on)",
            cfg.task
        );
    }
    // One evaluation per threat model (a transfer evaluation, Figure 7, in one call).
    let choices = a.attack.choices()?;
    let several = choices.len() > 1;
    for choice in choices {
        let iterations = a.iterations.unwrap_or(match choice.name {
            "random-token" => 4096,
            "beast" => 25,
            _ => 128,
        });
        let threat = super::slug(&choice.threat);
        let title = format!("{} {}", choice.name, choice.threat);
        let name = match (&a.name, several) {
            (Some(n), false) => n.clone(),
            (Some(n), true) => format!("{n}-{threat}"),
            (None, _) => format!("{}-{threat}", choice.name),
        };
        let plan = choice.plan(
            checkpoint_dir(&a.run, 0),
            cfg.task.clone(),
            a.data.clone(),
            a.examples,
            cfg.data_seed,
            None,
            Budget {
                iterations,
                flops: None,
            },
        );
        let bar = bar();
        let job = EvalJob {
            run: &a.run,
            rounds: &rounds,
            plan: &plan,
            name: &name,
            overwrite: a.overwrite,
            bar: &bar,
        };
        let recs = dispatch(a.device, job)?;
        bar.finish_and_clear();
        println!("{title}:");
        println!(
            "{:>6} {:>16} {:>14} {:>8} {:>10} {:>16}",
            "round", "defense FLOPs", "of pretrain", "ASR", "attacked", "compute to 5%"
        );
        for r in &recs {
            let c5 = match r.compute_to_asr.get("5%").copied().flatten() {
                Some(c) => format!("{c:.3e}"),
                None if r.defense_fraction_of_pretraining.is_none() => "unknown".into(),
                None => "not reached".into(),
            };
            println!(
                "{:>6} {:>16.3e} {:>14} {:>7.1}% {:>10} {:>16}",
                r.round,
                r.defense_nominal_flops,
                fraction(r.defense_fraction_of_pretraining),
                100.0 * r.asr,
                r.attacked,
                c5
            );
        }
        println!(
            "results: {}",
            a.run.join("eval").join(&name).join("eval.jsonl").display()
        );
    }
    Ok(())
}

struct EvalJob<'a> {
    run: &'a Path,
    rounds: &'a [usize],
    plan: &'a armsrace::attack::session::Plan,
    name: &'a str,
    overwrite: bool,
    bar: &'a ProgressBar,
}

impl OnBackend for EvalJob<'_> {
    type Out = Vec<EvalRecord>;
    fn run<B: Backend + Clone>(self, backend: B) -> anyhow::Result<Self::Out> {
        let bar = self.bar;
        let mut last = usize::MAX;
        let mut progress = |r: usize, p: &armsrace::attack::runner::Progress| {
            if r != last {
                last = r;
                say(bar, format!("round {r}: evaluating"));
            }
            bar.set_message(format!(
                "round {r}: {}/{} example-iterations, ASR {}/{}",
                p.done, p.total, p.broken, p.attacked
            ));
        };
        Ok(eval_rounds(
            self.run,
            self.rounds,
            self.plan,
            self.name,
            backend,
            self.overwrite,
            &mut progress,
        )?)
    }
}

/// A fraction of pretraining compute, or "unknown" (the checkpoint is not a preset's shape
/// and no --pretrain-tokens was given).
fn fraction(f: Option<f64>) -> String {
    match f {
        Some(f) => format!("{f:.3e}"),
        None => "unknown".into(),
    }
}

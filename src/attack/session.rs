//! A whole attack run from a [`Plan`]: load the checkpoint and its tokenizer, build the
//! examples, run, write results. The CLI and `examples/attack_model.rs` are thin layers
//! over [`run_plan`].

use super::beast::{Beast, BeastConfig};
use super::budget::{pretraining_flops, Budget};
use super::gcg::{Gcg, GcgConfig};
use super::random_token::{RandomToken, RandomTokenConfig};
use super::results::{
    prepare_dir, write_jsonl_atomic, ResultsLog, EXAMPLES_FILE, RESULTS_FILE, SUMMARY_FILE,
};
use super::runner::{run, Progress, RunOptions, RunOutput};
use super::subject::{build_subjects, FastPaths, GoalSpec, Subject, Victim};
use super::summary::RunInfo;
use super::vocab::Vocab;
use super::Attack;
use crate::backend::cpu::Cpu;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::config::HeadKind;
use crate::model::Model;
use crate::task::{Example, Task, ThreatModel, ATTACK_INIT_TEXT};
use crate::tokenize::Tokenizer;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use crate::files::Inputs;

/// The bundled PasswordMatch classifier (see [`crate::bundled`]).
pub use crate::bundled::DEFAULT_MODEL;

/// Which attack, with its settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "name")]
pub enum AttackSpec {
    Gcg(GcgConfig),
    RandomToken(RandomTokenConfig),
    Beast(BeastConfig),
}

/// What building an attack may need: the victim (its backend, for a sampler), its
/// tokenizer, and the run's token pool setting.
pub struct BuildCtx<'a, B: Backend> {
    pub model: &'a Model<B>,
    pub tok: &'a Tokenizer,
    /// Propose only tokens that decode to printable ASCII (nanoGCG's pool).
    pub ascii_only: bool,
}

impl AttackSpec {
    /// The attack, with what it needs loaded (BEAST's sampler, on the victim's backend).
    pub fn build<'a, B: Backend + Clone + 'a>(
        &self,
        ctx: &BuildCtx<'_, B>,
    ) -> Result<Box<dyn Attack<B> + 'a>> {
        Ok(match self {
            AttackSpec::Gcg(c) => Box::new(Gcg::new(c.clone())),
            AttackSpec::RandomToken(c) => {
                let vocab = ctx.model.cfg.vocab;
                let pool = match ctx.ascii_only {
                    true => Vocab::from_tokenizer(ctx.tok, vocab, true)?,
                    false => Vocab::random_token_pool(ctx.tok, vocab)?,
                };
                Box::new(RandomToken::new(c.clone(), pool))
            }
            AttackSpec::Beast(c) => Box::new(Beast::load(
                c.clone(),
                ctx.model.backend().clone(),
                ctx.tok,
            )?),
        })
    }

    /// The study's settings of attack `name` ("gcg", "random-token", "beast"; BEAST needs
    /// its sampler).
    pub fn study(name: &str, sampler: Option<PathBuf>) -> Result<Self> {
        Ok(match (name, sampler) {
            ("gcg", None) => AttackSpec::Gcg(GcgConfig::default()),
            ("random-token", None) => AttackSpec::RandomToken(RandomTokenConfig::default()),
            ("beast", Some(s)) => AttackSpec::Beast(BeastConfig::study(s)),
            ("beast", None) => {
                return Err(Error::input(
                    "beast needs a sampler: a causal-LM checkpoint with the victim's tokenizer",
                ))
            }
            ("gcg" | "random-token", Some(_)) => {
                return Err(Error::input(format!("{name} takes no sampler (beast's)")))
            }
            _ => {
                return Err(Error::input(format!(
                    "unknown attack `{name}`: gcg, random-token or beast"
                )))
            }
        })
    }

    /// The study's iterations per example for this attack (GCG 10, random token 1280,
    /// BEAST 25).
    pub fn study_iterations(&self) -> usize {
        match self {
            AttackSpec::Gcg(_) => 10,
            AttackSpec::RandomToken(_) => 1280,
            AttackSpec::Beast(_) => 25,
        }
    }

    /// The same attack with another seed (adversarial training gives each round its own).
    pub fn with_seed(&self, seed: u64) -> Self {
        let mut a = self.clone();
        match &mut a {
            AttackSpec::Gcg(c) => c.seed = seed,
            AttackSpec::RandomToken(c) => c.seed = seed,
            AttackSpec::Beast(c) => c.seed = seed,
        }
        a
    }

    pub fn seed(&self) -> u64 {
        match self {
            AttackSpec::Gcg(c) => c.seed,
            AttackSpec::RandomToken(c) => c.seed,
            AttackSpec::Beast(c) => c.seed,
        }
    }

    /// Adds the files the attack itself reads (BEAST's sampler) to `inputs`.
    pub fn add_inputs(&self, inputs: &mut Inputs) -> Result<()> {
        match self {
            AttackSpec::Beast(c) => crate::files::add_model(inputs, "sampler", &c.sampler),
            AttackSpec::Gcg(_) | AttackSpec::RandomToken(_) => Ok(()),
        }
    }

    /// Whether subjects need GCG's retokenization check.
    fn filter(&self) -> bool {
        match self {
            AttackSpec::Gcg(c) => c.filter,
            AttackSpec::RandomToken(_) | AttackSpec::Beast(_) => false,
        }
    }
}

/// Everything that defines a run; saved as config.json, and a resume must find the same.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub model: PathBuf,
    pub task: String,
    /// JSONL examples for dataset tasks (spam, imdb, ...).
    pub data: Option<PathBuf>,
    pub examples: usize,
    pub data_seed: u64,
    pub threat: String,
    pub attack: AttackSpec,
    pub attack_tokens: usize,
    /// Text the attack tokens are initialised from.
    pub init: String,
    /// Propose only tokens that decode to printable ASCII (nanoGCG's pool; the study's is
    /// every non-special id).
    pub ascii_only: bool,
    /// Target string for causal LMs (default: the wrong label's name).
    pub target: Option<String>,
    pub budget: Budget,
    pub group_size: usize,
    pub fast: FastPaths,
    /// Pretraining tokens D of the checkpoint's causal LM, for compute fractions (default:
    /// the matching preset's; unknown for other checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrain_tokens: Option<f64>,
}

impl Plan {
    /// The files this plan reads, fingerprinted: the checkpoint, the data (a `jsonl:PATH`
    /// task and its sidecar, or `data`), and the attack's own (BEAST's sampler).
    pub fn inputs(&self) -> Result<Inputs> {
        let mut inputs = Inputs::new();
        crate::files::add_model(&mut inputs, "model", &self.model)?;
        crate::files::add_task(&mut inputs, &self.task)?;
        if let Some(d) = &self.data {
            crate::files::add_file(&mut inputs, "data", d)?;
        }
        self.attack.add_inputs(&mut inputs)?;
        Ok(inputs)
    }

    /// The study's GCG on the bundled classifier: PasswordMatch, suffix, 20 examples.
    pub fn study_gcg(model: PathBuf) -> Self {
        Plan {
            model,
            task: "password-match".into(),
            data: None,
            examples: 20,
            data_seed: 0,
            threat: "suffix".into(),
            attack: AttackSpec::Gcg(GcgConfig::default()),
            attack_tokens: 10,
            init: ATTACK_INIT_TEXT.into(),
            ascii_only: false,
            target: None,
            budget: Budget {
                iterations: 10,
                flops: None,
            },
            group_size: 20,
            fast: FastPaths::default(),
            pretrain_tokens: None,
        }
    }
}

/// `n` examples of a task: synthetic tasks draw them from the validation half of the word
/// list (never seen by a model trained with the same data seed); datasets read `data`.
pub fn load_examples(
    task: &Task,
    data: Option<&Path>,
    n: usize,
    seed: u64,
) -> Result<Vec<Example>> {
    let mut ex = match (&task.source, data) {
        (crate::task::Source::Synthetic(_), Some(d)) => {
            return Err(Error::input(format!(
                "--data {}: task `{}` is generated in-crate and reads no file (use \
                 --task jsonl:PATH for examples of your own)",
                d.display(),
                task.def.name
            )))
        }
        (crate::task::Source::Synthetic(_), None) => task.split(0, n, seed)?.1,
        _ => task.load_jsonl(data)?,
    };
    ex.truncate(n);
    if ex.is_empty() {
        return Err(Error::input(format!(
            "task `{}`: no examples",
            task.def.name
        )));
    }
    Ok(ex)
}

/// Initial attack ids: the tokens of `init` (the study's text by default), fitted to `n`.
pub fn initial_attack(tok: &Tokenizer, init: &str, n: usize) -> Result<Vec<u32>> {
    if init == ATTACK_INIT_TEXT {
        return crate::task::attack_init(tok, n);
    }
    let ids = tok.encode(init)?;
    if ids.is_empty() {
        return Err(Error::input(format!(
            "initial attack {init:?} tokenizes to nothing"
        )));
    }
    Ok(ids.iter().cycle().take(n).copied().collect())
}

/// Runs (or resumes) `plan` on the CPU backend, writing into `out`. `stop_after` ends the
/// run after that iteration as if killed.
pub fn run_plan(
    plan: &Plan,
    out: &Path,
    overwrite: bool,
    stop_after: Option<usize>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<RunOutput> {
    run_plan_on(plan, Cpu, out, overwrite, stop_after, progress)
}

/// [`run_plan`] on any backend (e.g. `GpuBackend<CudaDevice>`): the checkpoint is loaded
/// onto `backend`, and everything else is the same.
pub fn run_plan_on<B: Backend + Clone>(
    plan: &Plan,
    backend: B,
    out: &Path,
    overwrite: bool,
    stop_after: Option<usize>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<RunOutput> {
    let model = Model::load(&plan.model, backend)?;
    let tok = Tokenizer::from_file(&plan.model.join("tokenizer.json"))?;
    let task = Task::from_name(&plan.task)?;
    let examples = load_examples(&task, plan.data.as_deref(), plan.examples, plan.data_seed)?;
    let target = Target {
        model: &model,
        tok: &tok,
        label: plan.model.display().to_string(),
    };
    let opts = ExampleRun {
        out,
        overwrite,
        stop_after,
        attack_misclassified: false,
        inputs: plan.inputs()?,
    };
    Ok(attack_examples(plan, &target, &examples, &opts, progress)?.0)
}

/// A model in memory with its tokenizer, under a name for the results.
pub struct Target<'a, B: Backend> {
    pub model: &'a Model<B>,
    pub tok: &'a Tokenizer,
    /// What the summary calls the model (its directory).
    pub label: String,
}

/// Where and how [`attack_examples`] writes.
pub struct ExampleRun<'a> {
    pub out: &'a Path,
    /// Delete earlier results in `out` instead of resuming.
    pub overwrite: bool,
    /// Stop after this iteration as if killed (tests of resume).
    pub stop_after: Option<usize>,
    /// Attack examples the model already gets wrong too (adversarial training attacks
    /// every example it draws; an evaluation attacks only correct ones).
    pub attack_misclassified: bool,
    /// The files the run read, fingerprinted ([`Plan::inputs`]; empty for a model made in
    /// memory): recorded in config.json, and a resume on changed files is refused.
    pub inputs: Inputs,
}

/// Attacks `examples` of `plan.task` with `plan`'s attack on a model in memory (the model
/// and example fields of `plan` are only recorded): the part of a run after loading, shared
/// by `attack`, adversarial training and evaluation. Returns the run and its subjects, whose
/// states hold each example's final attack.
pub fn attack_examples<B: Backend + Clone>(
    plan: &Plan,
    t: &Target<'_, B>,
    examples: &[Example],
    run_opts: &ExampleRun<'_>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<(RunOutput, Vec<Subject<B>>)> {
    let (model, tok) = (t.model, t.tok);
    let spec = match (model.cfg.head, &plan.target) {
        (HeadKind::Classifier { .. }, Some(_)) => {
            return Err(Error::input(format!(
                "{}: a target string needs a causal-LM checkpoint; this one is a classifier",
                t.label
            )))
        }
        (HeadKind::Classifier { .. }, None) => GoalSpec::Classify,
        (HeadKind::CausalLm, t) => GoalSpec::Target { text: t.clone() },
    };
    let task = Task::from_name(&plan.task)?;
    if let (HeadKind::Classifier { num_labels }, n) = (model.cfg.head, task.def.num_labels()) {
        if num_labels != n {
            return Err(Error::input(format!(
                "{}: the classifier has {num_labels} labels, task `{}` has {n}",
                t.label, plan.task
            )));
        }
    }
    let threat = ThreatModel::parse(&plan.threat)?;
    let init = initial_attack(tok, &plan.init, plan.attack_tokens)?;
    let mut subjects: Vec<Subject<B>> = build_subjects(
        tok,
        &task.def,
        examples,
        &threat,
        plan.data_seed,
        &spec,
        &init,
        plan.attack.filter(),
    )?;
    // The longest sequence an iteration may score: refused up front, naming the example.
    let n_attack = match plan.attack {
        AttackSpec::Beast(_) => plan.budget.iterations,
        _ => plan.attack_tokens,
    };
    let max = model.cfg.max_positions;
    for s in &subjects {
        let need = s.len(n_attack).max(s.clean_ids.len());
        if need > max {
            return Err(Error::input(format!(
                "example {} of task `{}`: its prompt with {n_attack} attack tokens has {need} \
                 tokens, more than the model's max_position_embeddings ({max})",
                s.index, plan.task
            )));
        }
    }
    let vocab = Vocab::from_tokenizer(tok, model.cfg.vocab, plan.ascii_only)?;
    let victim = Victim {
        model,
        tok: Some(tok),
        vocab: &vocab,
        fast: plan.fast,
        rows_cap: Default::default(),
    };
    let out = run_opts.out;
    // One writer per results directory, held until the run returns.
    let _lock = crate::files::lock_dir(out)?;
    let mut config = serde_json::to_value(plan).map_err(|e| Error::Other(e.to_string()))?;
    config["inputs"] = serde_json::to_value(&run_opts.inputs).expect("plain data");
    prepare_dir(out, &config, run_opts.overwrite)?;
    let mut log = ResultsLog::open(&out.join(RESULTS_FILE))?;
    let attack = plan.attack.build::<B>(&BuildCtx {
        model,
        tok,
        ascii_only: plan.ascii_only,
    })?;
    let n_params = model.param_count();
    let info = RunInfo {
        attack: attack.name().into(),
        task: plan.task.clone(),
        model: t.label.clone(),
        threat: threat.to_string(),
        n_params,
        family: model.cfg.arch.name().into(),
        n_gen: crate::attack::budget::generative_params(&model.cfg),
        seed: plan.attack.seed(),
        pretraining_flops: pretraining_flops(&model.cfg, plan.pretrain_tokens),
    };
    let opts = RunOptions {
        budget: plan.budget,
        group_size: plan.group_size,
        stop_after: run_opts.stop_after,
        attack_misclassified: run_opts.attack_misclassified,
    };
    let res = run(
        attack.as_ref(),
        &victim,
        &mut subjects,
        &opts,
        &mut log,
        info,
        progress,
    )?;
    if res.complete {
        write_jsonl_atomic(&out.join(EXAMPLES_FILE), &res.examples)?;
        let p = out.join(SUMMARY_FILE);
        let text = serde_json::to_string_pretty(&res.summary).expect("plain data");
        crate::files::write_atomic(&p, text.as_bytes())?;
    }
    Ok((res, subjects))
}

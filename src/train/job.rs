//! A whole training run as the CLI drives it: data from a task, a model from a checkpoint
//! or from scratch, epochs with validation, and checkpoints that a killed run resumes from.

use super::checkpoint::{load_state, save_hf, state_files};
use super::{accuracy, epoch_batches, LabeledIds, TrainConfig, Trainer};
use crate::attack::results::settings_difference;
use crate::backend::cpu::Cpu;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::batch::{fit_positions, Truncate};
use crate::model::config::{HeadKind, ModelConfig};
use crate::model::random_weights;
use crate::model::safetensors_store::SafetensorsStore;
use crate::model::weights::{load_spec, Slot, Weights};
use crate::task::{prompt::clean_prompt, Example, Source, Task, TaskDef};
use crate::tokenize::Tokenizer;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What data a run trains on; saved beside the checkpoint so a resume rebuilds it exactly.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DataSpec {
    pub task: String,
    pub train_examples: usize,
    pub val_examples: usize,
    pub data_seed: u64,
    pub train_file: Option<PathBuf>,
    pub val_file: Option<PathBuf>,
    /// Fraction of training prompts given random tokens in the suffix slot
    /// (see [`super::augment`]); 0 in job files written before the option existed.
    #[serde(default)]
    pub junk_suffix: f32,
    /// Prompts longer than the model's max_position_embeddings: refused (default) or cut.
    #[serde(default)]
    pub truncate: Truncate,
}

/// Where the starting weights come from.
#[derive(Clone, Debug)]
pub enum Init {
    /// A Hugging Face checkpoint: a classifier, or a causal LM that gets a new `score` head.
    From(PathBuf),
    /// Random weights at this config (vocab is replaced by the trained tokenizer's size).
    Scratch {
        config: ModelConfig,
        vocab_size: usize,
        /// Also train the tokenizer on the synthetic tasks' whole word list.
        tokenizer_knows_words: bool,
    },
}

pub fn load_data(spec: &DataSpec) -> Result<(TaskDef, Vec<Example>, Vec<Example>)> {
    let task = Task::from_name(&spec.task)?;
    let (train, val) = match (&spec.train_file, &task.source) {
        (Some(f), _) => {
            let train = task.load_jsonl(Some(f))?;
            let val = match &spec.val_file {
                Some(v) => task.load_jsonl(Some(v))?,
                None => Vec::new(),
            };
            (train, val)
        }
        (None, Source::Synthetic(_)) => {
            task.split(spec.train_examples, spec.val_examples, spec.data_seed)?
        }
        (None, _) => {
            // A JSONL task with no separate validation file: hold out the last examples.
            let all = task.load_jsonl(None)?;
            let n_val = spec.val_examples.min(all.len() / 5);
            let (a, b) = all.split_at(all.len() - n_val);
            (a.to_vec(), b.to_vec())
        }
    };
    if train.is_empty() {
        return Err(Error::input(format!(
            "task `{}`: no training examples",
            spec.task
        )));
    }
    Ok((task.def, train, val))
}

pub fn tokenize_examples(
    tok: &Tokenizer,
    def: &TaskDef,
    examples: &[Example],
    max_positions: usize,
    truncate: Truncate,
) -> Result<Vec<LabeledIds>> {
    examples
        .iter()
        .enumerate()
        .map(|(i, ex)| {
            if ex.label as usize >= def.num_labels() {
                return Err(Error::input(format!(
                    "example {i}: label {} out of range for task `{}` ({} labels)",
                    ex.label,
                    def.name,
                    def.num_labels()
                )));
            }
            let mut ids = tok.encode(&clean_prompt(def, ex))?;
            let what = || format!("task `{}`, example {i}", def.name);
            fit_positions(&mut ids, max_positions, truncate, &what)?;
            Ok(LabeledIds {
                ids,
                label: ex.label,
            })
        })
        .collect()
}

/// Loads `dir` as a classifier with `num_labels` classes, as f32 host tensors. A causal-LM
/// checkpoint keeps its body and gets a fresh `score` head, N(0, 0.02^2) as transformers
/// initialises it.
pub fn load_as_classifier(
    dir: &Path,
    num_labels: usize,
    seed: u64,
) -> Result<(ModelConfig, Weights<Vec<f32>>)> {
    let mut cfg = ModelConfig::from_file(&dir.join("config.json"))?;
    match cfg.head {
        HeadKind::Classifier { num_labels: n } if n == num_labels => {
            let store = SafetensorsStore::open_dir(dir)?;
            let w = Weights::build(&cfg, |spec| load_spec(&store, &cfg, spec))?;
            return Ok((cfg, w));
        }
        HeadKind::Classifier { num_labels: n } => {
            return Err(Error::input(format!(
                "{}: classifier has {n} labels, the task has {num_labels}",
                dir.display()
            )))
        }
        HeadKind::CausalLm => {}
    }
    cfg.head = HeadKind::Classifier { num_labels };
    cfg.tied_embeddings = false;
    let store = SafetensorsStore::open_dir(dir)?;
    let fresh = random_weights(&cfg, seed, 0.02);
    let w = Weights::build(&cfg, |spec| {
        if spec.slot == Slot::Head {
            Ok(fresh.head.clone().expect("classifier head"))
        } else {
            load_spec(&store, &cfg, spec)
        }
    })?;
    Ok((cfg, w))
}

#[derive(Serialize, Deserialize)]
struct JobFile {
    data: DataSpec,
    completed: bool,
    /// The training settings and where the weights started (absent in job files written
    /// before they were recorded: those resume unchecked).
    #[serde(default)]
    train: Option<TrainConfig>,
    #[serde(default)]
    init: Option<String>,
    /// Fingerprints of the files the run read (the starting checkpoint, data files); absent
    /// in job files written before they were recorded.
    #[serde(default)]
    inputs: Option<crate::files::Inputs>,
}

impl JobFile {
    /// An error naming the first setting of `opts` that differs from this job's.
    fn check_same(
        &self,
        path: &Path,
        opts: &JobOptions,
        inputs: &crate::files::Inputs,
    ) -> Result<()> {
        let new = JobFile {
            data: opts.data.clone(),
            completed: self.completed,
            train: self.train.as_ref().map(|_| opts.train.clone()),
            init: self.init.as_ref().map(|_| init_label(&opts.init)),
            inputs: self.inputs.as_ref().map(|_| inputs.clone()),
        };
        match settings_difference(self, &new) {
            None => Ok(()),
            Some(field) => Err(Error::format(
                path,
                format!(
                    "this run was started with {}; use another --out, or delete the run to \
                     start over",
                    crate::attack::results::describe_difference(&field)
                ),
            )),
        }
    }
}

/// The files a job reads, fingerprinted: the starting checkpoint and the data files.
fn job_inputs(opts: &JobOptions) -> Result<crate::files::Inputs> {
    use crate::files::{add_file, add_model, add_task};
    let mut inputs = crate::files::Inputs::new();
    if let Init::From(dir) = &opts.init {
        add_model(&mut inputs, "from", dir)?;
    }
    add_task(&mut inputs, &opts.data.task)?;
    if let Some(p) = &opts.data.train_file {
        add_file(&mut inputs, "train_file", p)?;
    }
    if let Some(p) = &opts.data.val_file {
        add_file(&mut inputs, "val_file", p)?;
    }
    Ok(inputs)
}

/// How the starting weights are recorded in job.json.
fn init_label(init: &Init) -> String {
    match init {
        Init::From(dir) => format!("from {}", dir.display()),
        Init::Scratch { .. } => format!("{init:?}"),
    }
}

/// Progress events for a UI.
pub enum Event<'a> {
    Start {
        total_steps: u64,
        resumed_at: u64,
    },
    Step {
        step: u64,
        loss: f32,
    },
    Epoch {
        epoch: usize,
        val_accuracy: Option<f32>,
    },
    Saved {
        dir: &'a Path,
    },
    /// The run in `--out` had already finished (nothing was trained or written).
    Finished {
        dir: &'a Path,
    },
}

pub struct JobOptions {
    pub out: PathBuf,
    pub data: DataSpec,
    pub init: Init,
    pub train: TrainConfig,
    /// Save every this many optimizer steps as well as at each epoch end (0: epochs only).
    pub save_every: u64,
    /// Stop (as if killed) after this many optimizer steps in this process; for tests.
    pub stop_after: Option<u64>,
}

/// Runs (or resumes) a training job on the CPU. Returns the final validation accuracy.
pub fn run(opts: JobOptions, on: impl FnMut(Event<'_>)) -> Result<Option<f32>> {
    run_on(opts, Cpu, on)
}

/// [`run`] on any backend: weights, gradients and optimizer state live on its device;
/// checkpoints are written in f32 (the master weights on a bf16 device).
pub fn run_on<B: Backend>(
    opts: JobOptions,
    backend: B,
    mut on: impl FnMut(Event<'_>),
) -> Result<Option<f32>> {
    opts.train.validate()?;
    let out = &opts.out;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    // One writer per run: the lock file lies beside `out`, which each save replaces.
    let _lock = crate::files::lock(&crate::files::sibling(out, ".lock"), out)?;
    super::checkpoint::recover_interrupted_save(out)?;
    let inputs = job_inputs(&opts)?;
    let job_path = out.join("job.json");
    let existing = match std::fs::read_to_string(&job_path) {
        Ok(text) => {
            let job: JobFile =
                serde_json::from_str(&text).map_err(|e| Error::format(&job_path, e.to_string()))?;
            job.check_same(&job_path, &opts, &inputs)?;
            Some(job)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(&job_path, e)),
    };
    if existing.as_ref().is_some_and(|j| j.completed) {
        // A finished run is reported, never redone or replaced.
        let (_, progress) = super::checkpoint::load_progress(out)?;
        on(Event::Finished { dir: out });
        return Ok(progress.val_accuracy.last().copied());
    }
    let resuming = existing.is_some()
        && out.join("trainer_state.json").exists()
        && out.join("optimizer.safetensors").exists();
    let (data_spec, mut trainer, tok_path) = if resuming {
        let job = existing.expect("resuming");
        let model_cfg = ModelConfig::from_file(&out.join("config.json"))?;
        let store = SafetensorsStore::open_dir(out)?;
        let w = Weights::build(&model_cfg, |spec| load_spec(&store, &model_cfg, spec))?;
        drop(store);
        let n = crate::model::weights::param_specs(&model_cfg).len();
        let (cfg, progress, state) = load_state(out, n)?;
        let mut t = Trainer::from_host(model_cfg, &w, backend, cfg);
        t.progress = progress;
        t.set_host_state(&state)?;
        // Keep a copy of the tokenizer outside the directory a save replaces.
        let tok_copy = out.with_extension("tokenizer.json");
        std::fs::copy(out.join("tokenizer.json"), &tok_copy)
            .map_err(|e| Error::io(&tok_copy, e))?;
        (job.data, t, tok_copy)
    } else {
        let (def, train_ex, _) = load_data(&opts.data)?;
        let tok_path = out.with_extension("tokenizer.json");
        let (model_cfg, w) = match &opts.init {
            Init::From(dir) => {
                std::fs::copy(dir.join("tokenizer.json"), &tok_path)
                    .map_err(|e| Error::io(dir.join("tokenizer.json"), e))?;
                load_as_classifier(dir, def.num_labels(), opts.train.seed)?
            }
            Init::Scratch {
                config,
                vocab_size,
                tokenizer_knows_words,
            } => {
                let mut texts: Vec<String> =
                    train_ex.iter().map(|e| clean_prompt(&def, e)).collect();
                texts.extend(def.label_names.iter().cloned());
                let synthetic = matches!(
                    Task::from_name(&opts.data.task)?.source,
                    Source::Synthetic(_)
                );
                if *tokenizer_knows_words && synthetic {
                    // Like a pretrained tokenizer (Pythia's has most English words as single
                    // tokens), ours knows the whole word list, not only the training half.
                    // Twice, to clear the BPE trainer's minimum frequency of 2.
                    let words = crate::task::words::words();
                    texts.extend(words.iter().chain(words).map(|w| format!(" {w}")));
                }
                super::bpe::train_bpe(&texts, *vocab_size, &tok_path)?;
                let tok = Tokenizer::from_file(&tok_path)?;
                let mut cfg = config.clone();
                cfg.vocab = tok.vocab_size();
                cfg.pad_token_id = tok.token_to_id(super::bpe::PAD);
                cfg.head = HeadKind::Classifier {
                    num_labels: def.num_labels(),
                };
                cfg.tied_embeddings = false;
                let w = random_weights(&cfg, opts.train.seed, 0.02);
                (cfg, w)
            }
        };
        (
            opts.data.clone(),
            Trainer::from_host(model_cfg, &w, backend, opts.train.clone()),
            tok_path,
        )
    };
    let tok = Tokenizer::from_file(&tok_path)?;
    let (def, train_ex, val_ex) = load_data(&data_spec)?;
    let (max_pos, cut) = (trainer.model.cfg.max_positions, data_spec.truncate);
    let mut train = tokenize_examples(&tok, &def, &train_ex, max_pos, cut)?;
    super::augment::junk_suffixes(
        &tok,
        &def,
        &train_ex,
        &mut train,
        data_spec.junk_suffix,
        data_spec.data_seed,
    )?;
    let val = tokenize_examples(&tok, &def, &val_ex, max_pos, cut)?;
    let cfg = trainer.cfg.clone();
    let per_epoch = epoch_batches(&train, &cfg, 0).len();
    let total = trainer.total_steps(per_epoch);
    on(Event::Start {
        total_steps: total,
        resumed_at: trainer.progress.step,
    });

    let save = |trainer: &Trainer<B>, completed: bool| -> Result<()> {
        let mut extra = vec![(
            "job.json",
            serde_json::to_vec_pretty(&JobFile {
                data: data_spec.clone(),
                completed,
                train: Some(trainer.cfg.clone()),
                init: Some(init_label(&opts.init)),
                inputs: Some(inputs.clone()),
            })
            .expect("json"),
        )];
        let files = state_files(&trainer.cfg, &trainer.progress, &trainer.host_state())?;
        for (name, bytes) in files {
            // A finished run keeps its history but not the optimizer moments.
            if !(completed && name == "optimizer.safetensors") {
                extra.push((name, bytes));
            }
        }
        let w = trainer.host_weights();
        save_hf(
            out,
            &trainer.model.cfg,
            &w,
            &tok_path,
            Some(&def.label_names),
            &extra,
        )
    };

    let mut steps_here = 0u64;
    let mut last_acc = trainer.progress.val_accuracy.last().copied();
    while trainer.progress.epoch < cfg.epochs {
        let batches = epoch_batches(&train, &cfg, trainer.progress.epoch);
        while trainer.progress.batch_in_epoch < batches.len() {
            let start = trainer.progress.batch_in_epoch;
            let end = (start + cfg.grad_accum).min(batches.len());
            let loss = trainer.step(&train, &batches[start..end], total)?.loss;
            trainer.progress.batch_in_epoch = end;
            steps_here += 1;
            on(Event::Step {
                step: trainer.progress.step,
                loss,
            });
            let epoch_done = end == batches.len();
            if opts.save_every > 0 && trainer.progress.step % opts.save_every == 0 && !epoch_done {
                save(&trainer, false)?;
                on(Event::Saved { dir: out });
            }
            if opts.stop_after == Some(steps_here) {
                save(&trainer, false)?;
                return Ok(None);
            }
        }
        let acc = if val.is_empty() {
            None
        } else {
            Some(accuracy(&trainer.model, &val, cfg.batch_tokens)?)
        };
        if let Some(a) = acc {
            trainer.progress.val_accuracy.push(a);
        }
        last_acc = acc;
        trainer.progress.epoch += 1;
        trainer.progress.batch_in_epoch = 0;
        let completed = trainer.progress.epoch == cfg.epochs;
        save(&trainer, completed)?;
        on(Event::Epoch {
            epoch: trainer.progress.epoch,
            val_accuracy: acc,
        });
        on(Event::Saved { dir: out });
    }
    let _ = std::fs::remove_file(&tok_path);
    Ok(last_acc)
}

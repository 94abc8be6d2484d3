use super::device::{dispatch, DeviceArgs, OnBackend};
use super::say;
use armsrace::backend::Backend;
use armsrace::model::config::ModelConfig;
use armsrace::presets;
use armsrace::train::job::{self, DataSpec, Event, Init, JobOptions};
use armsrace::train::optim::OptimizerKind;
use armsrace::train::TrainConfig;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Weights, gradients and optimizer state live on this device; with --dtype bf16 the
    /// optimizer updates f32 master weights, and checkpoints are saved in f32.
    #[command(flatten)]
    device: DeviceArgs,
    /// password-match, word-length, spam, imdb, helpful, harmless, or jsonl:PATH.
    #[arg(long)]
    task: String,
    /// Output checkpoint directory (Hugging Face layout); an unfinished run here is resumed.
    #[arg(long)]
    out: PathBuf,
    /// Start from this checkpoint (a causal LM gets a new `score` head).
    #[arg(long, conflicts_with = "shape")]
    from: Option<PathBuf>,
    /// Train from scratch at a preset's shape (see `bench --help`), with a new BPE tokenizer.
    #[arg(long)]
    shape: Option<String>,
    /// From scratch: override the preset's hidden size / layers / heads / intermediate size.
    #[arg(long)]
    hidden: Option<usize>,
    #[arg(long)]
    layers: Option<usize>,
    #[arg(long)]
    heads: Option<usize>,
    #[arg(long)]
    intermediate: Option<usize>,
    /// From scratch, pythia shapes: fraction of each head's dimensions that rotary rotates
    /// (Pythia: 0.25).
    #[arg(long)]
    rotary_pct: Option<f64>,
    /// Fraction of training prompts (0..1) that get 1-10 random tokens in the suffix slot,
    /// so the model learns to ignore junk there as its instructions say (clean prompts are
    /// still what validation measures).
    #[arg(long, default_value_t = 0.0)]
    junk_suffix: f32,
    /// A prompt longer than the model's max_position_embeddings: an error (default), or cut
    /// from the left (keeps the answer prompt) or the right.
    #[arg(long, value_enum, default_value = "refuse")]
    truncate: super::classify::TruncateArg,
    /// From scratch: BPE vocabulary size.
    #[arg(long, default_value_t = 1024)]
    vocab_size: usize,
    /// From scratch, synthetic tasks: train the tokenizer on the whole word list too (as a
    /// pretrained tokenizer would know the words), not only on the training prompts.
    #[arg(long)]
    tokenizer_knows_words: bool,
    /// Training file of a JSONL task (spam, imdb, helpful, harmless).
    #[arg(long)]
    train_file: Option<PathBuf>,
    #[arg(long)]
    val_file: Option<PathBuf>,
    /// Synthetic tasks: examples generated for training and validation.
    #[arg(long, default_value_t = 2000)]
    train_examples: usize,
    #[arg(long, default_value_t = 200)]
    val_examples: usize,
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    #[arg(long, default_value_t = 1e-5)]
    lr: f32,
    /// adafactor (the study's) or adamw.
    #[arg(long, default_value = "adafactor")]
    optimizer: String,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Padded tokens per micro-batch at most.
    #[arg(long, default_value_t = 4096)]
    batch_tokens: usize,
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Warm-up as a fraction of all steps (then linear decay to zero).
    #[arg(long, default_value_t = 0.0)]
    warmup: f32,
    /// Keep the learning rate constant after warm-up.
    #[arg(long)]
    constant_lr: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also checkpoint every N optimizer steps (0: at epoch ends only).
    #[arg(long, default_value_t = 200)]
    save_every: u64,
    /// Stop after N optimizer steps, as if killed (for testing resume).
    #[arg(long, hide = true)]
    stop_after: Option<u64>,
}

fn scratch_config(a: &Args, shape: &str) -> anyhow::Result<ModelConfig> {
    let mut v = presets::config_json(shape, Some(2))?;
    for (key, val) in [
        ("hidden_size", a.hidden),
        ("num_hidden_layers", a.layers),
        ("num_attention_heads", a.heads),
        ("intermediate_size", a.intermediate),
    ] {
        if let Some(x) = val {
            v[key] = x.into();
        }
    }
    if let Some(r) = a.rotary_pct {
        if !shape.starts_with("pythia") {
            anyhow::bail!(
                "--rotary-pct applies to pythia (GPTNeoX) shapes; Qwen2 rotates every dimension"
            );
        }
        if !(r > 0.0 && r <= 1.0) {
            anyhow::bail!("--rotary-pct must be in (0, 1], got {r}");
        }
        v["rotary_pct"] = r.into();
    }
    if let (Some(h), true) = (a.heads, shape.starts_with("qwen")) {
        v["num_key_value_heads"] = h.into();
    }
    Ok(ModelConfig::from_json(&v)?)
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let optimizer = OptimizerKind::parse(&a.optimizer)
        .ok_or_else(|| anyhow::anyhow!("unknown optimizer `{}` (adafactor, adamw)", a.optimizer))?;
    let init = match (&a.from, &a.shape) {
        (Some(d), _) => Init::From(d.clone()),
        (None, Some(s)) => Init::Scratch {
            config: scratch_config(&a, s)?,
            vocab_size: a.vocab_size,
            tokenizer_knows_words: a.tokenizer_knows_words,
        },
        (None, None) => anyhow::bail!(
            "give --from DIR (fine-tune a checkpoint) or --shape NAME (train from scratch)"
        ),
    };
    let opts = JobOptions {
        out: a.out.clone(),
        data: DataSpec {
            task: a.task.clone(),
            train_examples: a.train_examples,
            val_examples: a.val_examples,
            data_seed: a.seed,
            train_file: a.train_file.clone(),
            val_file: a.val_file.clone(),
            junk_suffix: a.junk_suffix,
            truncate: a.truncate.into(),
        },
        init,
        train: TrainConfig {
            epochs: a.epochs,
            lr: a.lr,
            warmup_frac: a.warmup,
            decay: !a.constant_lr,
            optimizer,
            batch_tokens: a.batch_tokens,
            batch_size: a.batch_size,
            grad_accum: a.grad_accum,
            seed: a.seed,
        },
        save_every: a.save_every,
        stop_after: a.stop_after,
    };
    let bar = super::progress_bar("{elapsed_precise} [{bar:30}] {pos}/{len} steps {msg}");
    let mut acc_msg = String::new();
    let on = |e: Event<'_>| match e {
        Event::Start {
            total_steps,
            resumed_at,
        } => {
            bar.set_length(total_steps);
            bar.set_position(resumed_at);
            if resumed_at > 0 {
                say(
                    &bar,
                    format!("resuming {} at step {resumed_at}", a.out.display()),
                );
            }
        }
        Event::Step { step, loss } => {
            bar.set_position(step);
            bar.set_message(format!("loss {loss:.4}{acc_msg}"));
        }
        Event::Epoch {
            epoch,
            val_accuracy,
        } => {
            if let Some(acc) = val_accuracy {
                acc_msg = format!(" | val acc {:.1}%", 100.0 * acc);
                say(
                    &bar,
                    format!("epoch {epoch}: val accuracy {:.2}%", 100.0 * acc),
                );
            }
        }
        Event::Saved { .. } => {}
        Event::Finished { dir } => say(
            &bar,
            format!(
                "{} holds a finished run with these settings: nothing to do",
                dir.display()
            ),
        ),
    };
    let result = dispatch(a.device, TrainJob { opts, on })?;
    bar.finish();
    match result {
        Some(acc) => println!(
            "done: {} (val accuracy {:.2}%)",
            a.out.display(),
            100.0 * acc
        ),
        None => println!("stopped: checkpoint in {}", a.out.display()),
    }
    Ok(())
}

/// The training job on whichever backend `--device` opened.
struct TrainJob<F> {
    opts: JobOptions,
    on: F,
}

impl<F: FnMut(Event<'_>)> OnBackend for TrainJob<F> {
    type Out = Option<f32>;
    fn run<B: Backend + Clone>(self, backend: B) -> anyhow::Result<Option<f32>> {
        Ok(job::run_on(self.opts, backend, self.on)?)
    }
}

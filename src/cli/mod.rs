//! Subcommands, one file each.

mod adv_train;
mod attack;
mod bench;
mod classify;
mod device;
mod inspect;
mod report;
mod sweep;
mod train;

use armsrace::files::slug;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "armsrace",
    version,
    about = "Adversarial attacks on language models, measured in FLOPs"
)]
struct Cli {
    /// Worker threads for the CPU backend (default: all cores; at most 4 per core, or 64).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Load checkpoints whose weights hold NaN or infinite values (refused by default,
    /// naming the tensor).
    #[arg(long, global = true)]
    allow_nonfinite: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a checkpoint's architecture, parameter count and shapes.
    Inspect(inspect::Args),
    /// Classify texts from a JSONL file with a classifier checkpoint.
    Classify(classify::Args),
    /// Fine-tune a classifier (or train one from scratch) on a task.
    #[command(after_long_help = TASK_HELP)]
    Train(train::Args),
    /// Attack a classifier (GCG, random tokens or BEAST); resumable results and a summary.
    #[command(after_long_help = TASK_HELP)]
    Attack(attack::Args),
    /// Adversarial training as the study ran it: attack, pool, train, per round, with
    /// defense compute counted and a checkpoint per round.
    #[command(after_long_help = TASK_HELP)]
    AdvTrain(adv_train::Args),
    /// Evaluate an adv-train run: a fixed attack against chosen rounds' checkpoints.
    Eval(adv_train::EvalArgs),
    /// Run a declarative grid of armsrace runs (GRID.toml): each step's runs once per value
    /// tuple, resumable, sharded over machines (--shard, Slurm arrays) or local devices.
    Sweep(sweep::Args),
    /// The study's figures and fitted slopes from results folders or a results table.
    Report(report::Args),
    /// Throughput of forward, one-hot gradient and candidate scoring at a preset's shapes.
    Bench(bench::Args),
}

/// `--help`'s note on tasks of one's own (`--task jsonl:PATH`).
const TASK_HELP: &str = "\
Tasks of your own: --task jsonl:PATH reads examples from PATH, one JSON object per line:
  {\"text\": \"I loved this film\", \"label\": 1}
(label: 0-based class index). Beside it, an optional sidecar PATH with extension .task.json
(data/reviews.jsonl -> data/reviews.task.json) sets the prompt; each field is optional:
  {\"instructions\": \"Is this review positive?\\n\",
   \"label_names\": [\" NEGATIVE\", \" POSITIVE\"],
   \"answer_prompt\": \"\\nAnswer:\"}
The prompt is instructions + text + answer_prompt (the attack goes in the text by the
threat model); label_names (two or more, each with its leading space) are also a causal
LM's targets. Without a sidecar: no instructions, labels \" NEGATIVE\"/\" POSITIVE\" and the
study's answer prompt. A jsonl task takes no --data (the path is in the task name).";

/// At most this many CPU threads per core (an absurd `--threads` would spawn them all).
const THREADS_PER_CORE: usize = 4;

pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        let max = (THREADS_PER_CORE * cores).max(64);
        if n == 0 || n > max {
            anyhow::bail!(
                "--threads {n}: must be in 1..={max} ({THREADS_PER_CORE} per core of the {cores} \
                 this machine has, at least 64)"
            );
        }
    }
    armsrace::model::weights::set_allow_nonfinite(cli.allow_nonfinite);
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()?;
    }
    match cli.command {
        Command::Inspect(a) => inspect::run(a),
        Command::Classify(a) => classify::run(a),
        Command::Attack(a) => attack::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Train(a) => train::run(a),
        Command::AdvTrain(a) => adv_train::run(a),
        Command::Eval(a) => adv_train::eval(a),
        Command::Sweep(a) => sweep::run(a),
        Command::Report(a) => report::run(a),
    }
}

/// The directory to load for `--model`: the default works from any directory (the bundled
/// classifier is embedded in the binary).
fn resolve_model(model: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    Ok(armsrace::bundled::resolve(model)?)
}

/// A progress bar on a terminal; hidden otherwise, and then [`say`] prints plain lines, so
/// logs stay complete when output goes to a file.
fn progress_bar(template: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(0)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(indicatif::ProgressStyle::with_template(template).expect("template"));
    bar
}

/// A line above the bar, or on stdout when the bar is hidden.
fn say(bar: &indicatif::ProgressBar, line: String) {
    if bar.is_hidden() {
        println!("{line}");
    } else {
        bar.println(line);
    }
}

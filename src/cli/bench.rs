use armsrace::bench::{self, BenchOptions};
use armsrace::{presets, Cpu, Model};

#[derive(clap::Args)]
pub struct Args {
    /// Model shape (random weights): pythia-14m ... pythia-12b, qwen2.5-0.5b ... qwen2.5-14b.
    /// Default: pythia-14m on the CPU; on cuda, pythia-1.4b and qwen2.5-1.5b.
    #[arg(long)]
    preset: Option<String>,
    /// cpu, or cuda (a build with --features cuda): the GPU suite in bf16 (attention alone
    /// at 4k context and at the scoring shape, then forward, one-hot gradient and scoring of
    /// 512 candidates x 64 tokens after a 256-token prefix; the shape flags below are CPU-only).
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    #[arg(long, default_value_t = 64)]
    seq: usize,
    /// Shared prefix length for candidate scoring.
    #[arg(long, default_value_t = 64)]
    prefix: usize,
    #[arg(long, default_value_t = 128)]
    candidates: usize,
    /// Tokens per candidate after the shared prefix.
    #[arg(long, default_value_t = 32)]
    candidate_seq: usize,
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Write results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Also time one classifier training step (forward, full backward, optimizer update)
    /// on `--batch` x `--seq` tokens, with this optimizer: adamw or adafactor. On cuda:
    /// 8 x 256 tokens per preset, bf16 compute with f32 master weights.
    #[arg(long, value_name = "OPTIMIZER")]
    train: Option<String>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    match a.device.as_str() {
        "cpu" => {}
        "cuda" => return run_cuda(&a),
        other => anyhow::bail!("unknown device `{other}` (cpu, cuda)"),
    }
    let preset = a.preset.as_deref().unwrap_or("pythia-14m");
    let cfg = presets::config(preset, Some(2))?;
    let model = Model::random(cfg, 0, 0.02, Cpu);
    let o = BenchOptions {
        batch: a.batch,
        seq: a.seq,
        prefix: a.prefix,
        candidates: a.candidates,
        candidate_seq: a.candidate_seq,
        iters: a.iters,
        ..Default::default()
    };
    println!(
        "{} classifier, N = {:.1}M, {} threads, cpu",
        preset,
        model.param_count() as f64 / 1e6,
        rayon::current_num_threads()
    );
    let mut results = bench::run(&model, &o)?;
    if let Some(name) = &a.train {
        let opt = armsrace::train::optim::OptimizerKind::parse(name)
            .ok_or_else(|| anyhow::anyhow!("unknown optimizer `{name}` (adafactor, adamw)"))?;
        results.push(bench::run_train(model, opt, &o)?);
    }
    println!(
        "{:<18} {:>10} {:>12} {:>14} {:>15}",
        "workload", "median s", "tokens/s", "nominal GF/s", "executed GF/s"
    );
    for r in &results {
        println!(
            "{:<18} {:>10.4} {:>12.0} {:>14.1} {:>15.1}",
            r.workload, r.median_s, r.tokens_per_s, r.nominal_gflops, r.executed_gflops
        );
    }
    if let Some(p) = a.json {
        std::fs::write(&p, serde_json::to_string_pretty(&results)?)?;
    }
    Ok(())
}

/// The GPU benchmarks of the CUDA issue (by default at the pythia-1.4b and qwen2.5-1.5b
/// shapes, else at `--preset`): 512 candidates x 64 tokens after a 256-token shared prefix,
/// with MFU against 989 TFLOP/s.
#[cfg(feature = "cuda")]
fn run_cuda(a: &Args) -> anyhow::Result<()> {
    use armsrace::backend::gpu::bench;
    let chosen: Vec<&str> = a.preset.iter().map(String::as_str).collect();
    let presets = if chosen.is_empty() {
        bench::PRESETS
    } else {
        &chosen[..]
    };
    let train = a
        .train
        .as_deref()
        .map(|name| {
            armsrace::train::optim::OptimizerKind::parse(name)
                .ok_or_else(|| anyhow::anyhow!("unknown optimizer `{name}` (adafactor, adamw)"))
        })
        .transpose()?;
    let report = bench::run_cuda(presets, a.iters, train)?;
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    if let Some(p) = &a.json {
        std::fs::write(p, &text)?;
    }
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn run_cuda(_: &Args) -> anyhow::Result<()> {
    anyhow::bail!("this build has no CUDA support: rebuild with `cargo build --release --features cuda` (after `bash scripts/install-nvcc.sh`)")
}

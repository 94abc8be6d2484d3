use armsrace::model::config::{HeadKind, ModelConfig};
use armsrace::model::safetensors_store::SafetensorsStore;
use armsrace::model::{param_count, weights::param_specs};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let cfg = ModelConfig::from_file(&a.model.join("config.json"))?;
    let store = SafetensorsStore::open_dir(&a.model)?;
    // Validate every tensor against config.json, as loading would.
    for spec in param_specs(&cfg) {
        armsrace::model::weights::load_spec(&store, &cfg, &spec)?;
    }
    let head = match cfg.head {
        HeadKind::CausalLm => "causal LM".to_string(),
        HeadKind::Classifier { num_labels } => format!("classifier ({num_labels} labels)"),
    };
    let n = param_count(&cfg);
    println!("model        {}", a.model.display());
    println!("architecture {:?}, {head}", cfg.arch);
    println!(
        "parameters   {n} ({:.2}M; input embeddings in, LM head out)",
        n as f64 / 1e6
    );
    println!(
        "dtype        {}",
        store.dominant_dtype().map_or("unknown", |d| d.name())
    );
    println!("layers       {}", cfg.layers);
    println!("hidden       {}", cfg.hidden);
    println!(
        "heads        {} (kv heads {}, head dim {}, rotary dims {})",
        cfg.heads, cfg.kv_heads, cfg.head_dim, cfg.rotary_dims
    );
    println!("intermediate {}", cfg.intermediate);
    println!("vocab        {}", cfg.vocab);
    println!(
        "block        {}, {:?}, tied embeddings: {}",
        if cfg.parallel_residual {
            "parallel residual"
        } else {
            "sequential"
        },
        cfg.norm,
        cfg.tied_embeddings
    );
    Ok(())
}

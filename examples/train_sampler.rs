//! Trains the BEAST sampler shipped beside the bundled classifier: a causal LM with the
//! classifier's shape and tokenizer (GPTNeoX, hidden 64, 2 layers, untied output
//! embedding), from scratch on PasswordMatch prompts with their answers (the training half
//! of the word list), next-token cross-entropy, AdamW. It plays the part pythia-14m played
//! for the study's Pythia victims: a small LM of the same tokenizer that proposes likely
//! next tokens after the prompt.
//!
//!     cargo run --release --example train_sampler -- [OUT] [STEPS]
//!
//! OUT defaults to models/pythia-password-match-sampler, STEPS to 1500. Deterministic: the
//! same command gives the same weights on one machine.

use armsrace::attack::session::DEFAULT_MODEL;
use armsrace::model::config::{HeadKind, ModelConfig};
use armsrace::task::prompt::clean_prompt;
use armsrace::task::Task;
use armsrace::tokenize::Tokenizer;
use armsrace::train::checkpoint::write_hf_dir;
use armsrace::train::optim::OptimizerKind;
use armsrace::train::{TrainConfig, Trainer};
use armsrace::{Batch, Cpu, Model, Objective};
use std::path::PathBuf;

const BATCH: usize = 16;

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut args = std::env::args().skip(1);
    let out = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("models/pythia-password-match-sampler"));
    let steps: usize = args.next().map_or(Ok(1500), |s| s.parse())?;
    let classifier = root.join(DEFAULT_MODEL);
    let tok_path = classifier.join("tokenizer.json");
    let tok = Tokenizer::from_file(&tok_path)?;
    let mut cfg = ModelConfig::from_file(&classifier.join("config.json"))?;
    cfg.head = HeadKind::CausalLm;
    cfg.tied_embeddings = false;

    // Prompts and answers of the training half (data seed 0), as the classifier saw them.
    let task = Task::from_name("password-match")?;
    let (train, _) = task.split(steps * BATCH, 0, 0)?;
    let seqs: Vec<Vec<u32>> = train
        .iter()
        .map(|ex| {
            let text = clean_prompt(&task.def, ex) + &task.def.label_names[ex.label as usize];
            tok.encode(&text)
        })
        .collect::<Result<_, _>>()?;

    let model = Model::random(cfg.clone(), 0, 0.02, Cpu);
    let tc = TrainConfig {
        epochs: 1,
        lr: 3e-3,
        warmup_frac: 0.02,
        decay: true,
        optimizer: OptimizerKind::adamw(),
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(model, tc);
    let pad = cfg.pad_token_id.unwrap_or(0);
    for (step, chunk) in seqs.chunks(BATCH).enumerate() {
        let batch = Batch::from_sequences(chunk, pad)?;
        // Every real token after the first is a target (predicted from the one before).
        let mask: Vec<bool> = (0..batch.rows())
            .map(|r| {
                let (b, t) = (r / batch.seq, r % batch.seq);
                t >= 1 && t < batch.lens[b]
            })
            .collect();
        let out = trainer.step_batches(&[(batch, Objective::Target { mask })], steps as u64)?;
        if step % 100 == 0 || step + 1 == steps {
            println!("step {step:>5}: loss {:.4}", out.loss);
        }
    }
    let tmp = out.with_extension("tmp");
    write_hf_dir(&tmp, &cfg, &trainer.host_weights(), &tok_path, None, &[])?;
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    std::fs::rename(&tmp, &out)?;
    println!("sampler written to {}", out.display());
    Ok(())
}

//! Adversarial training as the study ran it (shared/science.md, "Adversarial training"),
//! on any backend, with defense compute counted per round.
//!
//! A run of K rounds starts from a classifier (checkpoint round 0). Round r (1..=K):
//! 1. attack `attacked_per_round` examples drawn from the clean training pool with the
//!    attack engine of `armsrace attack` (the same [`attack_examples`]), GCG iterations
//!    ramped from the first round's to the last's; every example is attacked, also those
//!    the model already gets wrong;
//! 2. every attacked prompt, successful or not, joins the adversarial pool with its true
//!    label; the pool is never pruned;
//! 3. train one epoch on n_train = min(|clean| + |pool|, max_train) examples: n_adv =
//!    min(floor(adv_fraction · n_train), |pool|) sampled from the pool by weight, the rest
//!    clean, uniformly, without replacement; shuffled;
//! 4. save checkpoint round r (Hugging Face layout, loadable by transformers and by
//!    `armsrace classify/attack`) with the optimizer state, the pool's losses and every
//!    round's record.
//!
//! The study's two schedules are the same loop: Pythia's R = clip(n_m, 5, 60) + 1 rounds
//! (round 0 attacks only, round R - 1 trains only) are K = R - 1 attack-then-train rounds;
//! Qwen2.5's R rounds attack then train (K = R). Iterations of round r: from + floor((r - 1)
//! · (to - from) / (K - 1)).
//!
//! Pool weights: w_i ∝ exp(scale · (s_i − max s)), s_i = ½ recency rank + ½ loss rank, the
//! loss being the example's cross-entropy at its last training pass (+∞ if never trained
//! on). [`PoolWeighting::Argsort`] reproduces the study's code, which took argsort(losses)
//! where a rank was meant.
//!
//! The optimizer and its state carry over from round to round, as in the study's training
//! loop (one optimizer for the whole run, each round one more epoch).
//!
//! Defense compute (science.md): all training FLOPs (6·N per padded token) plus all FLOPs of
//! the attacks run during training; the base fine-tune is not included. Nominal (the study's
//! convention) and executed, cumulative per round.
//!
//! Resume: checkpoints are written to a temporary directory and renamed, so a checkpoint
//! that exists is complete. A restarted run continues after the last checkpoint: the
//! interrupted round's attack replays what its results file holds (and computes the rest),
//! its training is redone from the checkpoint. Every random choice is keyed by (seed,
//! round), so a killed and resumed run ends exactly where an uninterrupted one does.

use super::checkpoint::{load_state, save_hf, state_files, write_hf_dir};
use super::job::{load_data, tokenize_examples, DataSpec};
use super::{epoch_batches, LabeledIds, TrainConfig, Trainer};
use crate::attack::budget::{pretraining_flops, Budget};
use crate::attack::results::settings_file;
use crate::attack::runner::Progress as AttackProgress;
use crate::attack::session::{attack_examples, ExampleRun, Plan, Target};
use crate::attack::summary::Summary;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::files::write_atomic;
use crate::model::config::{Arch, ModelConfig};
use crate::model::safetensors_store::SafetensorsStore;
use crate::model::weights::{load_spec, Weights};
use crate::task::Example;
use crate::tokenize::Tokenizer;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub const SETTINGS_FILE: &str = "adv_config.json";
pub const ROUNDS_FILE: &str = "rounds.jsonl";
pub const POOL_FILE: &str = "pool.jsonl";
pub const SUMMARY_FILE: &str = "summary.json";
/// Inside each checkpoint: the pool's losses and every round's record up to it.
pub const STATE_FILE: &str = "adv_state.json";

/// How pool examples are weighted for sampling (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolWeighting {
    /// The method: each example's rank by loss.
    Rank,
    /// The study's code: argsort(losses)[i] in place of example i's rank.
    Argsort,
}

/// Everything that defines an adversarial training run; saved as adv_config.json, and a
/// resume must find the same.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdvConfig {
    /// The starting classifier (checkpoint round 0).
    pub model: PathBuf,
    pub task: String,
    /// Training JSONL for dataset tasks.
    pub data: Option<PathBuf>,
    pub data_seed: u64,
    /// Size of the clean training pool (the study: 20,000; a synthetic task draws them
    /// from the training half of its word list).
    pub clean_examples: usize,
    /// Examples attacked per round (the study: 200).
    pub attacked_per_round: usize,
    /// Attack-then-train rounds K (see [`study_rounds`]).
    pub rounds: usize,
    /// Attack iterations of the first and the last round (GCG 8 -> 64; random token
    /// 1024 -> 2048).
    pub iterations_from: usize,
    pub iterations_to: usize,
    /// At most this many training examples per round (the study: 1000).
    pub max_train: usize,
    /// At most this fraction of them adversarial (the study: 0.8).
    pub adv_fraction: f64,
    pub weighting: PoolWeighting,
    /// The exponent's scale in the pool weights (the study: 0.005).
    pub weight_scale: f64,
    /// Optimizer, learning rate, batch (the study: Adafactor, 1e-5 constant, batch 8);
    /// `epochs` is ignored (one epoch per round).
    pub train: TrainConfig,
    /// The attack of every round; its model, examples, budget and seeds are set per round.
    pub attack: Plan,
    pub seed: u64,
}

/// The study's number of attack-then-train rounds for a classifier: Pythia by its size
/// (n_m = 953, 413, 163, 59, 21, 8, 6, 3 for 14m ... 2.8b, K = clip(n_m, 5, 60)), Qwen2.5
/// 22 for 0.5B and 10 for larger. The size is the preset of the same family whose classifier
/// parameter count is nearest (in log scale) to the checkpoint's.
pub fn study_rounds(cfg: &ModelConfig, n_params: usize) -> usize {
    match cfg.arch {
        Arch::GptNeoX => {
            let n_m = match crate::presets::nearest("pythia", n_params) {
                "pythia-14m" => 953,
                "pythia-31m" => 413,
                "pythia-70m" => 163,
                "pythia-160m" => 59,
                "pythia-410m" => 21,
                "pythia-1b" => 8,
                "pythia-1.4b" => 6,
                _ => 3, // 2.8b (the study's largest adversarially trained Pythia) and above
            };
            n_m.clamp(5, 60)
        }
        Arch::Qwen2 => match crate::presets::nearest("qwen2.5", n_params) {
            "qwen2.5-0.5b" => 22,
            _ => 10,
        },
    }
}

/// Attack iterations of round `r` (1-based) of `k`: linear from `from` to `to`, floored.
pub fn round_iterations(from: usize, to: usize, r: usize, k: usize) -> usize {
    if k <= 1 || to <= from {
        return from;
    }
    from + (r - 1) * (to - from) / (k - 1)
}

/// An attacked prompt in the adversarial pool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolEntry {
    /// The round whose attack made it.
    pub round: usize,
    /// The clean example it was made from (index into the clean pool).
    pub clean_index: usize,
    pub label: u32,
    /// What the victim read: instructions, content, attack, answer prompt.
    pub ids: Vec<u32>,
    /// The attack tokens alone, decoded.
    pub attack_text: String,
    /// The attack succeeded against the model it was made on.
    pub success: bool,
}

/// What one round did; one line of rounds.jsonl.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    pub round: usize,
    /// The checkpoint this round trained into (relative to the run directory).
    pub checkpoint: String,
    pub attack_iterations: usize,
    pub attacked: usize,
    /// Of the attacked, how many the model got wrong before the attack.
    pub attacked_already_wrong: usize,
    /// Fraction of the attacked examples broken after the attack (cumulative over its
    /// iterations, as the attack's summary reports it).
    pub attack_asr: f64,
    pub attack_nominal_flops: f64,
    pub attack_executed_flops: f64,
    pub pool_size: usize,
    pub train_examples: usize,
    pub train_adversarial: usize,
    pub train_steps: usize,
    /// Mean training loss of the round's epoch.
    pub train_loss: f64,
    pub train_nominal_flops: f64,
    pub train_executed_flops: f64,
    /// Cumulative defense compute up to and including this round (attacks + training).
    pub defense_nominal_flops: f64,
    pub defense_executed_flops: f64,
    /// Nominal defense compute divided by pretraining compute (null when the checkpoint's
    /// pretraining is unknown: pass `--pretrain-tokens`).
    pub defense_fraction_of_pretraining: Option<f64>,
    pub attack_wall_s: f64,
    pub train_wall_s: f64,
}

/// Saved in each checkpoint: what resuming from it needs beyond weights and optimizer.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct AdvState {
    round: usize,
    /// Loss at each pool example's last training pass (None: never trained on).
    pool_losses: Vec<Option<f32>>,
    records: Vec<RoundRecord>,
}

/// Where a test stops the run as if the process were killed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopPoint {
    /// In round `round`'s attack, right after iteration `iteration` was written.
    Attack { round: usize, iteration: usize },
    /// In round `round`'s training, after `steps` optimizer steps.
    Train { round: usize, steps: usize },
    /// While writing round `round`'s checkpoint (its files partly written, not in place).
    Save { round: usize },
}

/// Progress events for a UI.
pub enum Event<'a> {
    Resumed {
        round: usize,
    },
    Attack(usize, &'a AttackProgress),
    TrainStep {
        round: usize,
        step: usize,
        steps: usize,
        loss: f32,
    },
    Round(&'a RoundRecord),
}

pub struct AdvOutput {
    pub records: Vec<RoundRecord>,
    /// False when a [`StopPoint`] ended the run early.
    pub complete: bool,
}

pub fn checkpoint_dir(run: &Path, round: usize) -> PathBuf {
    run.join("checkpoints").join(format!("round-{round:03}"))
}

fn attack_dir(run: &Path, round: usize) -> PathBuf {
    run.join("attacks").join(format!("round-{round:03}"))
}

/// A seed for (seed, round, stream): every random choice of a round has its own.
fn round_seed(seed: u64, round: usize, stream: u64) -> u64 {
    let mut z = seed
        ^ (round as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
    // splitmix64 finaliser
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
const STREAM_ATTACKED: u64 = 1;
const STREAM_ATTACK: u64 = 2;
const STREAM_POOL: u64 = 3;
const STREAM_CLEAN: u64 = 4;
const STREAM_ORDER: u64 = 5;
const STREAM_SLOT: u64 = 6;

/// Sampling weights of the pool (see the module docs); `losses[i]` None = never trained on.
pub fn pool_weights(losses: &[Option<f32>], weighting: PoolWeighting, scale: f64) -> Vec<f64> {
    let n = losses.len();
    let key = |i: usize| losses[i].map_or(f64::INFINITY, |l| l as f64);
    // Ascending loss, ties by age: order[k] is the k-th smallest.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| key(a).total_cmp(&key(b)).then(a.cmp(&b)));
    let loss_rank: Vec<f64> = match weighting {
        PoolWeighting::Rank => {
            let mut rank = vec![0.0; n];
            for (k, &i) in order.iter().enumerate() {
                rank[i] = k as f64;
            }
            rank
        }
        PoolWeighting::Argsort => order.iter().map(|&i| i as f64).collect(),
    };
    // Recency rank: the pool is in insertion order, so the newest has the highest.
    let s: Vec<f64> = (0..n)
        .map(|i| 0.5 * i as f64 + 0.5 * loss_rank[i])
        .collect();
    let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    s.iter().map(|&x| (scale * (x - max)).exp()).collect()
}

/// The round's training set: (pool indices, clean indices) sampled as the module docs say.
pub fn round_training_set(
    cfg: &AdvConfig,
    round: usize,
    n_clean: usize,
    losses: &[Option<f32>],
) -> Result<(Vec<usize>, Vec<usize>)> {
    let n_pool = losses.len();
    let n_train = (n_clean + n_pool).min(cfg.max_train);
    let n_adv = ((cfg.adv_fraction * n_train as f64).floor() as usize).min(n_pool);
    let n_clean_pick = (n_train - n_adv).min(n_clean);
    let w = pool_weights(losses, cfg.weighting, cfg.weight_scale);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(round_seed(cfg.seed, round, STREAM_POOL));
    let adv = rand::seq::index::sample_weighted(&mut rng, n_pool, |i| w[i], n_adv)
        .map_err(|e| Error::Other(format!("sampling the adversarial pool: {e}")))?
        .into_vec();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(round_seed(cfg.seed, round, STREAM_CLEAN));
    let clean = rand::seq::index::sample(&mut rng, n_clean, n_clean_pick).into_vec();
    Ok((adv, clean))
}

/// The clean training pool of a run, as examples and tokenized.
fn clean_pool(cfg: &AdvConfig, tok: &Tokenizer) -> Result<(Vec<Example>, Vec<LabeledIds>)> {
    let spec = DataSpec {
        task: cfg.task.clone(),
        train_examples: cfg.clean_examples,
        val_examples: 0,
        data_seed: cfg.data_seed,
        train_file: cfg.data.clone(),
        val_file: None,
        junk_suffix: 0.0,
        truncate: Default::default(),
    };
    let (def, mut train, _) = load_data(&spec)?;
    train.truncate(cfg.clean_examples);
    let max = crate::ModelConfig::from_file(&cfg.model.join("config.json"))?.max_positions;
    let ids = tokenize_examples(tok, &def, &train, max, spec.truncate)?;
    Ok((train, ids))
}

/// The pool file's first `n` entries (a longer file comes from a round that did not
/// finish: it is cut back to `n`).
fn read_pool(path: &Path, n: usize) -> Result<Vec<PoolEntry>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && n == 0 => String::new(),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut pool = Vec::with_capacity(n);
    for (i, line) in text.lines().take(n).enumerate() {
        let e: PoolEntry = serde_json::from_str(line)
            .map_err(|e| Error::format(path, format!("line {}: {e}", i + 1)))?;
        pool.push(e);
    }
    if pool.len() < n {
        return Err(Error::format(
            path,
            format!("{} entries, the checkpoint expects {n}", pool.len()),
        ));
    }
    let mut bytes = Vec::new();
    for e in &pool {
        serde_json::to_writer(&mut bytes, e).map_err(|e| Error::Other(e.to_string()))?;
        bytes.push(b'\n');
    }
    if bytes.len() != text.len() {
        write_atomic(path, &bytes)?;
    }
    Ok(pool)
}

fn append_pool(path: &Path, entries: &[PoolEntry]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::new();
    for e in entries {
        serde_json::to_writer(&mut bytes, e).map_err(|e| Error::Other(e.to_string()))?;
        bytes.push(b'\n');
    }
    f.write_all(&bytes).map_err(|e| Error::io(path, e))
}

/// The last complete checkpoint of a run (its round and state), if any.
fn latest_checkpoint(run: &Path, rounds: usize) -> Result<Option<(usize, AdvState)>> {
    for r in (0..=rounds).rev() {
        let p = checkpoint_dir(run, r).join(STATE_FILE);
        match std::fs::read_to_string(&p) {
            Ok(text) => {
                let st: AdvState =
                    serde_json::from_str(&text).map_err(|e| Error::format(&p, e.to_string()))?;
                return Ok(Some((r, st)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(&p, e)),
        }
    }
    Ok(None)
}

fn host_weights(dir: &Path) -> Result<(ModelConfig, Weights<Vec<f32>>)> {
    let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
    let store = SafetensorsStore::open_dir(dir)?;
    let w = Weights::build(&cfg, |spec| load_spec(&store, &cfg, spec))?;
    Ok((cfg, w))
}

/// The files a run reads, fingerprinted: the starting classifier, the data, the attack's
/// own (a sampler).
fn adv_inputs(cfg: &AdvConfig) -> Result<crate::files::Inputs> {
    let mut inputs = crate::files::Inputs::new();
    crate::files::add_model(&mut inputs, "model", &cfg.model)?;
    crate::files::add_task(&mut inputs, &cfg.task)?;
    if let Some(d) = &cfg.data {
        crate::files::add_file(&mut inputs, "data", d)?;
    }
    cfg.attack.attack.add_inputs(&mut inputs)?;
    Ok(inputs)
}

fn check_config(cfg: &AdvConfig) -> Result<()> {
    let bad = |m: String| Err(Error::input(m));
    if cfg.rounds == 0 {
        return bad("--rounds must be at least 1".into());
    }
    if cfg.attacked_per_round == 0 || cfg.clean_examples == 0 || cfg.max_train == 0 {
        return bad("--attacked-per-round, --clean-examples and --max-train must be >= 1".into());
    }
    if cfg.iterations_from == 0 || cfg.iterations_to < cfg.iterations_from {
        return bad(format!(
            "attack iterations must ramp up from at least 1 (got {} -> {})",
            cfg.iterations_from, cfg.iterations_to
        ));
    }
    if !(0.0..=1.0).contains(&cfg.adv_fraction) {
        return bad(format!(
            "--adv-fraction must be in [0, 1], got {}",
            cfg.adv_fraction
        ));
    }
    if !cfg.weight_scale.is_finite() || cfg.weight_scale < 0.0 {
        return bad(format!(
            "--weight-scale must be >= 0, got {}",
            cfg.weight_scale
        ));
    }
    cfg.train.validate()
}

/// Runs (or resumes) adversarial training into `run` on `backend`.
pub fn run<B: Backend + Clone>(
    cfg: &AdvConfig,
    backend: B,
    run: &Path,
    stop: Option<StopPoint>,
    on: &mut dyn FnMut(Event<'_>),
) -> Result<AdvOutput> {
    check_config(cfg)?;
    std::fs::create_dir_all(run).map_err(|e| Error::io(run, e))?;
    let _lock = crate::files::lock_dir(run)?;
    let mut settings = serde_json::to_value(cfg).map_err(|e| Error::Other(e.to_string()))?;
    settings["inputs"] = serde_json::to_value(adv_inputs(cfg)?).expect("plain data");
    settings_file(&run.join(SETTINGS_FILE), &settings)?;
    let start_tok = cfg.model.join("tokenizer.json");
    let tok = Tokenizer::from_file(&start_tok)?;
    let (clean_ex, clean_ids) = clean_pool(cfg, &tok)?;
    let task = crate::task::Task::from_name(&cfg.task)?;

    // Round 0: the starting model, saved as the first checkpoint.
    let latest = match latest_checkpoint(run, cfg.rounds)? {
        Some(found) => found,
        None => {
            let (mcfg, w) =
                super::job::load_as_classifier(&cfg.model, task.def.num_labels(), cfg.seed)?;
            let st = AdvState {
                round: 0,
                pool_losses: Vec::new(),
                records: Vec::new(),
            };
            let extra = vec![(STATE_FILE, serde_json::to_vec_pretty(&st).expect("json"))];
            let labels = Some(task.def.label_names.as_slice());
            save_hf(
                &checkpoint_dir(run, 0),
                &mcfg,
                &w,
                &start_tok,
                labels,
                &extra,
            )?;
            (0, st)
        }
    };
    let (done, state) = latest;
    if done > 0 {
        on(Event::Resumed { round: done });
    }
    let ck = checkpoint_dir(run, done);
    let (mcfg, w) = host_weights(&ck)?;
    let mut trainer = Trainer::from_host(mcfg, &w, backend, cfg.train.clone());
    if done > 0 {
        let n = trainer.specs.len();
        let (_, progress, host_state) = load_state(&ck, n)?;
        trainer.progress = progress;
        trainer.set_host_state(&host_state)?;
    }
    let pool_path = run.join(POOL_FILE);
    let mut pool = read_pool(&pool_path, state.pool_losses.len())?;
    let mut losses = state.pool_losses;
    let mut records = state.records;
    write_rounds(run, &records)?;
    let pretraining = pretraining_flops(&trainer.model.cfg, cfg.attack.pretrain_tokens);

    for r in done + 1..=cfg.rounds {
        // 1. Attack examples of the clean pool on the current model.
        let t0 = Instant::now();
        let mut rng =
            rand_chacha::ChaCha8Rng::seed_from_u64(round_seed(cfg.seed, r, STREAM_ATTACKED));
        let n_att = cfg.attacked_per_round.min(clean_ex.len());
        let picked = rand::seq::index::sample(&mut rng, clean_ex.len(), n_att).into_vec();
        let examples: Vec<Example> = picked.iter().map(|&i| clean_ex[i].clone()).collect();
        let iterations = round_iterations(cfg.iterations_from, cfg.iterations_to, r, cfg.rounds);
        let plan = Plan {
            // Relative to the run directory, so a run resumes from any working directory.
            model: PathBuf::from(format!("checkpoints/round-{:03}", r - 1)),
            examples: n_att,
            // Seeds the slot position of a random infix range.
            data_seed: round_seed(cfg.data_seed, r, STREAM_SLOT),
            attack: cfg.attack.attack.with_seed(round_seed(
                cfg.attack.attack.seed(),
                r,
                STREAM_ATTACK,
            )),
            budget: Budget {
                iterations,
                flops: None,
            },
            ..cfg.attack.clone()
        };
        let target = Target {
            model: &trainer.model,
            tok: &tok,
            label: plan.model.display().to_string(),
        };
        let stop_attack = match stop {
            Some(StopPoint::Attack { round, iteration }) if round == r => Some(iteration),
            _ => None,
        };
        let opts = ExampleRun {
            out: &attack_dir(run, r),
            overwrite: false,
            stop_after: stop_attack,
            attack_misclassified: true,
            // The round's checkpoint is this run's own; adv_config.json records the inputs.
            inputs: Default::default(),
        };
        let (res, subjects) = attack_examples(&plan, &target, &examples, &opts, &mut |p| {
            on(Event::Attack(r, p))
        })?;
        if !res.complete {
            return Ok(AdvOutput {
                records,
                complete: false,
            });
        }
        let summary: Summary = res.summary;
        let attack_wall = t0.elapsed().as_secs_f64();

        // 2. Every attacked prompt joins the pool.
        // The prompt the victim read for each example's adversarial attack (GCG's final
        // one; random token's first success, as the study kept them).
        let new: Vec<PoolEntry> = subjects
            .iter()
            .zip(&res.examples)
            .zip(&picked)
            .map(|((s, rec), &ci)| {
                let (ids, text, success) = match rec.adversarial(summary.asr_kind) {
                    Some(a) => (a.prompt_ids.clone(), a.attack_ids.clone(), a.success),
                    None => (s.read_ids(), s.state.ids.clone(), false),
                };
                PoolEntry {
                    round: r,
                    clean_index: ci,
                    label: s.prompt.label,
                    ids,
                    attack_text: tok.decode(&text).unwrap_or_default(),
                    success,
                }
            })
            .collect();
        append_pool(&pool_path, &new)?;
        pool.extend(new);
        losses.resize(pool.len(), None);

        // 3. One epoch on adversarial and clean examples.
        let t1 = Instant::now();
        let (adv_idx, clean_idx) = round_training_set(cfg, r, clean_ids.len(), &losses)?;
        let mut data: Vec<LabeledIds> = Vec::with_capacity(adv_idx.len() + clean_idx.len());
        let mut from_pool: Vec<Option<usize>> = Vec::with_capacity(data.capacity());
        for &i in &adv_idx {
            data.push(LabeledIds {
                ids: pool[i].ids.clone(),
                label: pool[i].label,
            });
            from_pool.push(Some(i));
        }
        for &i in &clean_idx {
            data.push(clean_ids[i].clone());
            from_pool.push(None);
        }
        let round_cfg = TrainConfig {
            seed: round_seed(cfg.seed, r, STREAM_ORDER),
            epochs: 1,
            ..cfg.train.clone()
        };
        // Shuffled (by the round's seed), then packed into batches.
        let batches = epoch_batches(&data, &round_cfg, 0);
        let (nominal0, executed0) = (
            trainer.progress.nominal_flops,
            trainer.progress.executed_flops,
        );
        let steps: Vec<&[Vec<usize>]> = batches.chunks(cfg.train.grad_accum.max(1)).collect();
        let mut loss_sum = 0.0f64;
        for (k, micro) in steps.iter().enumerate() {
            if stop == Some(StopPoint::Train { round: r, steps: k }) {
                return Ok(AdvOutput {
                    records,
                    complete: false,
                });
            }
            // A constant learning rate: the schedule's total does not matter.
            let out = trainer.step(&data, micro, u64::MAX)?;
            for (&i, &l) in micro.iter().flatten().zip(&out.per_example) {
                if let Some(p) = from_pool[i] {
                    losses[p] = Some(l);
                }
            }
            loss_sum += out.per_example.iter().map(|&l| l as f64).sum::<f64>();
            on(Event::TrainStep {
                round: r,
                step: k + 1,
                steps: steps.len(),
                loss: out.loss,
            });
        }
        let train_wall = t1.elapsed().as_secs_f64();
        let prev = records.last();
        let train_nominal = trainer.progress.nominal_flops - nominal0;
        let train_executed = trainer.progress.executed_flops - executed0;
        let defense_nominal =
            prev.map_or(0.0, |p| p.defense_nominal_flops) + summary.nominal_flops + train_nominal;
        let defense_executed = prev.map_or(0.0, |p| p.defense_executed_flops)
            + summary.executed_flops
            + train_executed;
        let record = RoundRecord {
            round: r,
            checkpoint: format!("checkpoints/round-{r:03}"),
            attack_iterations: iterations,
            attacked: summary.attacked,
            attacked_already_wrong: summary.attacked_already_successful,
            attack_asr: summary.final_asr,
            attack_nominal_flops: summary.nominal_flops,
            attack_executed_flops: summary.executed_flops,
            pool_size: pool.len(),
            train_examples: data.len(),
            train_adversarial: adv_idx.len(),
            train_steps: steps.len(),
            train_loss: loss_sum / data.len().max(1) as f64,
            train_nominal_flops: train_nominal,
            train_executed_flops: train_executed,
            defense_nominal_flops: defense_nominal,
            defense_executed_flops: defense_executed,
            defense_fraction_of_pretraining: pretraining.map(|p| defense_nominal / p),
            attack_wall_s: attack_wall,
            train_wall_s: train_wall,
        };
        records.push(record.clone());

        // 4. The checkpoint: weights, optimizer, pool losses and the records so far.
        let st = AdvState {
            round: r,
            pool_losses: losses.clone(),
            records: records.clone(),
        };
        let mut extra = vec![(STATE_FILE, serde_json::to_vec_pretty(&st).expect("json"))];
        extra.extend(state_files(
            &trainer.cfg,
            &trainer.progress,
            &trainer.host_state(),
        )?);
        let w = trainer.host_weights();
        let labels = Some(task.def.label_names.as_slice());
        let dir = checkpoint_dir(run, r);
        if stop == Some(StopPoint::Save { round: r }) {
            // As if killed mid-write: the files sit in the temporary directory, one of
            // them cut short, and nothing is in place.
            let tmp = dir.with_extension("tmp");
            write_hf_dir(&tmp, &trainer.model.cfg, &w, &start_tok, labels, &extra)?;
            let f = tmp.join("model.safetensors");
            let len = std::fs::metadata(&f).map_err(|e| Error::io(&f, e))?.len();
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&f)
                .map_err(|e| Error::io(&f, e))?;
            file.set_len(len / 2).map_err(|e| Error::io(&f, e))?;
            return Ok(AdvOutput {
                records,
                complete: false,
            });
        }
        save_hf(&dir, &trainer.model.cfg, &w, &start_tok, labels, &extra)?;
        write_rounds(run, &records)?;
        on(Event::Round(&record));
    }
    write_summary(run, &records, pretraining)?;
    Ok(AdvOutput {
        records,
        complete: true,
    })
}

/// Marks the entries whose final attack succeeded, from the round's results file.
/// rounds.jsonl, rewritten from the records (the checkpoints are the source of truth).
fn write_rounds(run: &Path, records: &[RoundRecord]) -> Result<()> {
    let mut bytes = Vec::new();
    for r in records {
        serde_json::to_writer(&mut bytes, r).map_err(|e| Error::Other(e.to_string()))?;
        bytes.push(b'\n');
    }
    write_atomic(&run.join(ROUNDS_FILE), &bytes)
}

/// The run's totals, written when every round is done.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdvSummary {
    pub rounds: usize,
    pub pool_size: usize,
    pub defense_nominal_flops: f64,
    pub defense_executed_flops: f64,
    pub defense_fraction_of_pretraining: Option<f64>,
    pub pretraining_flops: Option<f64>,
    /// Each round's attack ASR (on the examples it attacked, against the model it met).
    pub attack_asr_by_round: Vec<f64>,
    pub wall_s: f64,
}

fn write_summary(run: &Path, records: &[RoundRecord], pretraining: Option<f64>) -> Result<()> {
    let last = records.last();
    let s = AdvSummary {
        rounds: records.len(),
        pool_size: last.map_or(0, |r| r.pool_size),
        defense_nominal_flops: last.map_or(0.0, |r| r.defense_nominal_flops),
        defense_executed_flops: last.map_or(0.0, |r| r.defense_executed_flops),
        defense_fraction_of_pretraining: last.and_then(|r| r.defense_fraction_of_pretraining),
        pretraining_flops: pretraining,
        attack_asr_by_round: records.iter().map(|r| r.attack_asr).collect(),
        wall_s: records
            .iter()
            .map(|r| r.attack_wall_s + r.train_wall_s)
            .sum(),
    };
    let bytes = serde_json::to_vec_pretty(&s).expect("plain data");
    write_atomic(&run.join(SUMMARY_FILE), &bytes)
}

/// The records of a run directory (rounds.jsonl).
pub fn read_rounds(run: &Path) -> Result<Vec<RoundRecord>> {
    let p = run.join(ROUNDS_FILE);
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::format(&p, format!("line {}: {e}", i + 1)))
        })
        .collect()
}

/// One evaluated round: the evaluation attack against checkpoint `round`, beside the
/// defense compute that made it (Figure 5; Figure 1's x and, through `compute_to_asr`, y).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub round: usize,
    pub checkpoint: String,
    /// The evaluation's results directory (relative to the run directory).
    pub results: String,
    pub defense_nominal_flops: f64,
    pub defense_executed_flops: f64,
    pub defense_fraction_of_pretraining: Option<f64>,
    pub examples: usize,
    pub attacked: usize,
    pub asr: f64,
    /// ASR after each iteration (index 0: before the attack).
    pub asr_curve: Vec<f64>,
    pub nominal_flops_per_iteration: f64,
    /// Keys "1%", "2%", "5%": attack compute to reach that ASR / pretraining compute.
    pub compute_to_asr: std::collections::BTreeMap<String, Option<f64>>,
}

/// Runs the evaluation attack `plan` (its model is replaced by each checkpoint) against the
/// checkpoints of `rounds`, one results directory each under `run/eval/<name>/round-NNN`
/// (resumable like any attack), and writes `run/eval/<name>/eval.jsonl`.
pub fn eval_rounds<B: Backend + Clone>(
    run: &Path,
    rounds: &[usize],
    plan: &Plan,
    name: &str,
    backend: B,
    overwrite: bool,
    progress: &mut dyn FnMut(usize, &AttackProgress),
) -> Result<Vec<EvalRecord>> {
    let records = read_rounds(run)?;
    let base = run.join("eval").join(name);
    let mut out = Vec::new();
    for &r in rounds {
        let ck = checkpoint_dir(run, r);
        if !ck.join(STATE_FILE).exists() {
            return Err(Error::input(format!(
                "{}: round {r} has no checkpoint (the run has rounds 0..={})",
                run.display(),
                records.len()
            )));
        }
        let rplan = Plan {
            model: ck.clone(),
            ..plan.clone()
        };
        let dir = base.join(format!("round-{r:03}"));
        let res = crate::attack::session::run_plan_on(
            &rplan,
            backend.clone(),
            &dir,
            overwrite,
            None,
            &mut |p| progress(r, p),
        )?;
        let s = res.summary;
        let rec = r.checked_sub(1).and_then(|i| records.get(i));
        let defense = rec.map_or(0.0, |x| x.defense_nominal_flops);
        out.push(EvalRecord {
            round: r,
            checkpoint: format!("checkpoints/round-{r:03}"),
            results: format!("eval/{name}/round-{r:03}"),
            defense_nominal_flops: defense,
            defense_executed_flops: rec.map_or(0.0, |x| x.defense_executed_flops),
            // Over the same pretraining compute as the attack's compute_to_asr (Figure 1's
            // two axes share their denominator).
            defense_fraction_of_pretraining: s.info.pretraining_flops.map(|p| defense / p),
            examples: s.examples,
            attacked: s.attacked,
            asr: s.final_asr,
            asr_curve: s.asr.clone(),
            nominal_flops_per_iteration: s.nominal_flops_per_iteration,
            compute_to_asr: s.compute_to_asr.clone(),
        });
    }
    let mut bytes = Vec::new();
    for e in &out {
        serde_json::to_writer(&mut bytes, e).map_err(|e| Error::Other(e.to_string()))?;
        bytes.push(b'\n');
    }
    std::fs::create_dir_all(&base).map_err(|e| Error::io(&base, e))?;
    write_atomic(&base.join("eval.jsonl"), &bytes)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iterations_ramp_as_the_study() {
        // Pythia 14m: K = 60 rounds, 8 -> 64.
        let its: Vec<usize> = (1..=60).map(|r| round_iterations(8, 64, r, 60)).collect();
        assert_eq!(its[0], 8);
        assert_eq!(its[59], 64);
        assert_eq!(its[1], 8); // floor(1 * 56 / 59) = 0
        assert_eq!(its[30], 8 + 30 * 56 / 59);
        assert_eq!(round_iterations(8, 64, 1, 1), 8);
        // Qwen 1.5B: 10 rounds.
        let q: Vec<usize> = (1..=10).map(|r| round_iterations(8, 64, r, 10)).collect();
        assert_eq!(q, vec![8, 14, 20, 26, 32, 39, 45, 51, 57, 64]);
    }

    #[test]
    fn pool_weights_rank_and_argsort() {
        // Losses: entry 0 was never trained on (+inf), 1 has 0.5, 2 has 0.1.
        let losses = [None, Some(0.5), Some(0.1)];
        // Loss ranks (ascending): 2 -> 0, 1 -> 1, 0 -> 2; recency ranks 0, 1, 2.
        // s = 0.5 (recency + loss rank) = [1.0, 1.0, 1.0]: all equal.
        let w = pool_weights(&losses, PoolWeighting::Rank, 0.005);
        assert!(w.iter().all(|&x| (x - 1.0).abs() < 1e-12), "{w:?}");
        // argsort(losses) = [2, 1, 0]: s = [1.0, 1.0, 1.0] here too; a case that differs:
        let losses = [Some(0.3), Some(0.1), Some(0.2), None];
        // ranks: 1 -> 0, 2 -> 1, 0 -> 2, 3 -> 3; argsort = [1, 2, 0, 3].
        let s_rank = [0.5 * 0.0 + 0.5 * 2.0, 0.5 + 0.0, 1.0 + 0.5, 1.5 + 1.5];
        let s_arg = [0.5 * 0.0 + 0.5 * 1.0, 0.5 + 1.0, 1.0 + 0.0, 1.5 + 1.5];
        for (weighting, s) in [
            (PoolWeighting::Rank, s_rank),
            (PoolWeighting::Argsort, s_arg),
        ] {
            let w = pool_weights(&losses, weighting, 0.5);
            let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            for (x, si) in w.iter().zip(s) {
                assert!(
                    (x - (0.5 * (si - max)).exp()).abs() < 1e-12,
                    "{weighting:?} {w:?}"
                );
            }
        }
    }
}

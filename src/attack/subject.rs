//! The model under attack ([`Victim`]) and one example under attack ([`Subject`]).

use super::goal::Goal;
use super::vocab::Vocab;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::transformer::PrefixCache;
use crate::model::Model;
use crate::task::{
    layout, Example, PromptParts, RetokCheck, TaskDef, ThreatModel, TokenizedPrompt,
};
use crate::tokenize::Tokenizer;
use serde::{Deserialize, Serialize};

/// Which fast paths candidate scoring uses. All on by default; switching one off gives
/// the same losses (within float tolerance), only slower: for tests and benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FastPaths {
    /// Run the prompt before the attack slot once into a KV cache.
    pub prefix_cache: bool,
    /// Candidates that first differ at attack position p also reuse the cache up to p.
    pub group_reuse: bool,
    /// Classifier / target rows only in the last layer's output projection and MLP.
    pub shortcut: bool,
}

impl Default for FastPaths {
    fn default() -> Self {
        FastPaths {
            prefix_cache: true,
            group_reuse: true,
            shortcut: true,
        }
    }
}

/// The model under attack and what attacks may propose to it.
pub struct Victim<'a, B: Backend> {
    pub model: &'a Model<B>,
    /// For retokenization checks and attack texts; benchmarks on raw ids run without.
    pub tok: Option<&'a Tokenizer>,
    pub vocab: &'a Vocab,
    pub fast: FastPaths,
    /// Rows one candidate-scoring call may pack: unlimited at first, lowered each time the
    /// device runs out of memory, so later calls start at a size that fitted.
    pub rows_cap: RowsCap,
}

/// See [`Victim::rows_cap`]. Atomic because a victim is shared by scoring threads.
#[derive(Debug, Default)]
pub struct RowsCap(std::sync::atomic::AtomicUsize);

impl RowsCap {
    /// The cap, if one was set.
    pub fn get(&self) -> Option<usize> {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            c => Some(c),
        }
    }
    /// Lowers the cap to `rows` (never raises it; at least 1).
    pub fn lower(&self, rows: usize) {
        let rows = rows.max(1);
        let _ = self.0.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |c| Some(if c == 0 { rows } else { c.min(rows) }),
        );
    }
}

impl<B: Backend> Victim<'_, B> {
    pub fn pad(&self) -> u32 {
        self.model.cfg.pad_token_id.unwrap_or(0)
    }

    /// Head width: labels for a classifier, vocab for a causal LM.
    pub fn width(&self) -> usize {
        self.model.cfg.num_labels().unwrap_or(self.model.cfg.vocab)
    }
}

/// What an attack carries from one iteration to the next (written with every iteration's
/// results line and restored from it on resume).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AttackState {
    /// The current attack tokens (what the attack proposes for the slot).
    pub ids: Vec<u32>,
    /// The prompt tokens the victim read for the current attack, when the attack puts its
    /// text into the prompt and retokenizes it whole (random token, BEAST); `None`: the
    /// victim read `before ++ ids ++ after`.
    pub prompt: Option<Vec<u32>>,
    /// The attack's own per-example state (GCG's buffer, BEAST's beam), as JSON: each
    /// attack reads and writes its own type with [`AttackState::data`] /
    /// [`AttackState::set_data`]; `Null` when it keeps none.
    pub data: serde_json::Value,
}

impl AttackState {
    /// The attack's own state, or `T::default()` when none was stored.
    pub fn data<T: serde::de::DeserializeOwned + Default>(&self) -> Result<T> {
        if self.data.is_null() {
            return Ok(T::default());
        }
        T::deserialize(&self.data)
            .map_err(|e| Error::Other(format!("attack state does not match the attack: {e}")))
    }

    pub fn set_data<T: Serialize>(&mut self, d: &T) {
        self.data = serde_json::to_value(d).expect("plain data");
    }
}

/// One example under attack.
pub struct Subject<B: Backend> {
    /// Index of the example in the run (also keys its random streams).
    pub index: usize,
    pub prompt: TokenizedPrompt,
    /// The prompt text around the slot (None for subjects built from raw ids, which no
    /// attack that retokenizes text can run on).
    pub parts: Option<PromptParts>,
    /// The clean prompt tokenized whole (what is classified before the attack).
    pub clean_ids: Vec<u32>,
    pub goal: Goal,
    /// The retokenization check for this prompt (None: no filtering).
    pub retok: Option<RetokCheck>,
    pub state: AttackState,
    /// KV cache of `prompt.before`, built on first use.
    pub(crate) cache: Option<PrefixCache<B::Buf>>,
}

impl<B: Backend> Subject<B> {
    pub fn new(index: usize, prompt: TokenizedPrompt, clean_ids: Vec<u32>, goal: Goal) -> Self {
        Subject {
            index,
            prompt,
            parts: None,
            clean_ids,
            goal,
            retok: None,
            state: AttackState::default(),
            cache: None,
        }
    }

    /// `before ++ attack ++ after ++ target`.
    pub fn sequence(&self, attack: &[u32]) -> Vec<u32> {
        self.with_suffix(self.prompt.ids(attack))
    }

    /// The prompt tokens the victim reads for the current attack (no goal suffix).
    pub fn read_ids(&self) -> Vec<u32> {
        match &self.state.prompt {
            Some(p) => p.clone(),
            None => self.prompt.ids(&self.state.ids),
        }
    }

    /// The full sequence of the current attack (`read_ids ++ target`).
    pub fn current_sequence(&self) -> Vec<u32> {
        self.with_suffix(self.read_ids())
    }

    /// `prompt ++ target`.
    pub fn with_suffix(&self, mut prompt: Vec<u32>) -> Vec<u32> {
        prompt.extend_from_slice(self.goal.suffix_ids());
        prompt
    }

    /// The prompt with `attack` text in the slot, tokenized whole (no filter): what the
    /// study's random-token and BEAST attacks gave the victim.
    pub fn retokenized(&self, tok: &Tokenizer, attack: &str) -> Result<Vec<u32>> {
        let parts = self.parts.as_ref().ok_or_else(|| {
            Error::input(format!(
                "example {}: this attack puts text into the prompt, and the subject was \
                 built from token ids without the prompt text",
                self.index
            ))
        })?;
        tok.encode(&parts.with_attack(attack))
    }

    /// Tokens in the full sequence with `n_attack` attack tokens.
    pub fn len(&self, n_attack: usize) -> usize {
        self.prompt.len(n_attack) + self.goal.suffix_ids().len()
    }

    /// Positions (in a sequence of `len` tokens) whose head output the goal reads: the last
    /// token for a classifier; for a target, each target token's predecessor.
    pub fn loss_positions(&self, len: usize) -> Vec<usize> {
        let m = self.goal.rows_per_sequence();
        match self.goal {
            Goal::Classify { .. } => vec![len - 1],
            Goal::Target { .. } => (len - m - 1..len - 1).collect(),
        }
    }

    /// Builds the cache of `prompt.before` if it is missing or was computed from other
    /// weights (the model was trained since); a no-op for an empty `before`. Returns whether
    /// it (re)built the cache.
    pub fn ensure_cache(&mut self, model: &Model<B>) -> Result<bool> {
        let current = self
            .cache
            .as_ref()
            .is_some_and(|c| model.cache_is_current(c));
        if current || self.prompt.before.is_empty() {
            return Ok(false);
        }
        self.cache = Some(model.prefix_cache(&self.prompt.before)?);
        Ok(true)
    }

    pub fn cache(&self) -> Option<&PrefixCache<B::Buf>> {
        self.cache.as_ref()
    }
}

/// How each example's goal is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GoalSpec {
    /// Classifier checkpoints: flip the prediction (loss toward 1 - label).
    Classify,
    /// Causal LMs: make the model say `text`, or (None) the wrong label's name.
    Target { text: Option<String> },
}

/// Builds the subjects of `examples` under a threat model: the prompt split at the attack
/// slot, the segments tokenized to fit the prompt with `init` in the slot (see
/// [`TokenizedPrompt::in_context`]), the retokenization check prepared, the attack
/// initialised from `init` ids.
#[allow(clippy::too_many_arguments)]
pub fn build_subjects<B: Backend>(
    tok: &Tokenizer,
    def: &TaskDef,
    examples: &[Example],
    threat: &ThreatModel,
    seed: u64,
    spec: &GoalSpec,
    init: &[u32],
    filter: bool,
) -> Result<Vec<Subject<B>>> {
    if def.num_labels() != 2 && *spec == GoalSpec::Classify {
        return Err(Error::input(format!(
            "task `{}` has {} labels; the classifier attack targets the other label of a \
             two-class task",
            def.name,
            def.num_labels()
        )));
    }
    examples
        .iter()
        .enumerate()
        .map(|(i, ex)| {
            if ex.label as usize >= def.num_labels() {
                return Err(Error::input(format!(
                    "example {i}: label {} out of range for task `{}`",
                    ex.label, def.name
                )));
            }
            let parts = layout(def, ex, threat, seed, i as u64);
            let prompt = TokenizedPrompt::in_context(tok, &parts, init, ex.label)?;
            let goal = match spec {
                GoalSpec::Classify => Goal::Classify {
                    label: ex.label,
                    target: 1 - ex.label,
                },
                GoalSpec::Target { text } => {
                    let t = match text {
                        Some(t) => t.clone(),
                        None => def.label_names[(1 - ex.label.min(1)) as usize].clone(),
                    };
                    let ids = tok.encode(&t)?;
                    if ids.is_empty() {
                        return Err(Error::input(format!("target {t:?} tokenizes to nothing")));
                    }
                    Goal::Target { ids }
                }
            };
            let mut clean_ids = tok.encode(&parts.clean())?;
            clean_ids.extend_from_slice(goal.suffix_ids());
            let mut s = Subject::new(i, prompt, clean_ids, goal);
            s.parts = Some(parts);
            if filter {
                s.retok = Some(RetokCheck::new(tok, &s.prompt)?);
            }
            s.state.ids = init.to_vec();
            Ok(s)
        })
        .collect()
}

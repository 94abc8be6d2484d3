//! The model under attack ([`Victim`]) and one example under attack ([`Subject`]).

use super::goal::Goal;
use super::vocab::Vocab;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::transformer::PrefixCache;
use crate::model::Model;
use crate::task::{layout, Example, RetokCheck, TaskDef, ThreatModel, TokenizedPrompt};
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

/// A GCG buffer entry: an attack with its loss and whether it succeeded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BufferEntry {
    #[serde(with = "super::results::nullable_f32")]
    pub loss: f32,
    pub ids: Vec<u32>,
    pub success: bool,
}

/// What an attack carries from one iteration to the next (restored on resume).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AttackState {
    /// The current attack tokens.
    pub ids: Vec<u32>,
    /// GCG's buffer of best attacks, best first (empty without a buffer).
    pub buffer: Vec<BufferEntry>,
}

/// One example under attack.
pub struct Subject<B: Backend> {
    /// Index of the example in the run (also keys its random streams).
    pub index: usize,
    pub prompt: TokenizedPrompt,
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
            clean_ids,
            goal,
            retok: None,
            state: AttackState::default(),
            cache: None,
        }
    }

    /// `before ++ attack ++ after ++ target`.
    pub fn sequence(&self, attack: &[u32]) -> Vec<u32> {
        let mut s = self.prompt.ids(attack);
        s.extend_from_slice(self.goal.suffix_ids());
        s
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
            if filter {
                s.retok = Some(RetokCheck::new(tok, &s.prompt)?);
            }
            s.state.ids = init.to_vec();
            Ok(s)
        })
        .collect()
}

//! The study's tasks: what a prompt looks like, where the attack goes, and where examples
//! come from (generated in-crate or read from local JSONL).
//!
//! The wording of instructions and label names is data (see `tasks.md`): a changed space
//! changes the tokens and makes results incomparable with the published numbers. The strings
//! live in [`defs`] and the tests assert them verbatim.
//!
//! Flow: [`Task::from_name`] → examples ([`Task::generate`], [`Task::split`] or
//! [`Task::load_jsonl`]) → [`prompt::layout`] with a [`ThreatModel`] → [`TokenizedPrompt`] →
//! the attack splices ids between `before` and `after` and filters candidates with
//! [`RetokCheck`].

pub mod defs;
pub mod jsonl;
pub mod prompt;
pub mod retokenize;
pub mod synthetic;
pub mod threat;
pub mod tokenized;
pub mod window;
pub mod words;

pub use prompt::{layout, PromptParts};
pub use retokenize::{retokenizes, special_token_ids, RetokCheck};
pub use synthetic::Synthetic;
pub use threat::ThreatModel;
pub use tokenized::{attack_init, TokenizedPrompt, ATTACK_INIT_TEXT};

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// The answer prompt every task of the study ends with.
pub const ANSWER_PROMPT: &str = "\n\nAnswer:";

/// The names [`Task::from_name`] accepts, for help texts and error messages.
pub const TASK_NAMES: &[&str] = &[
    "password-match",
    "word-length",
    "spam",
    "imdb",
    "helpful",
    "harmless",
    "jsonl:PATH",
];

/// One labelled example. `text` is the task's content — the part a threat model may split —
/// so the prompt is `instructions + text + answer_prompt` with the attack slot inside or
/// around `text`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub text: String,
    pub label: u32,
}

/// How a task frames an example. Owned strings because generic JSONL tasks read theirs from
/// a sidecar file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskDef {
    pub name: String,
    pub instructions: String,
    /// Class `i` is `label_names[i]`; each carries a leading space (it is also the
    /// generation target for causal LMs).
    pub label_names: Vec<String>,
    pub answer_prompt: String,
}

impl TaskDef {
    pub fn num_labels(&self) -> usize {
        self.label_names.len()
    }
}

/// Where a task's examples come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Synthetic(Synthetic),
    /// A named real dataset (spam, imdb, helpful, harmless): the caller supplies the JSONL
    /// (see [`Task::jsonl_format`]).
    Dataset,
    /// `jsonl:PATH`: the data file is part of the task name.
    Jsonl(PathBuf),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    pub def: TaskDef,
    pub source: Source,
}

impl Task {
    /// Resolves a task name (see [`TASK_NAMES`]). `jsonl:PATH` reads the optional sidecar
    /// `PATH` with extension `.task.json` (see [`defs::generic`]).
    pub fn from_name(name: &str) -> Result<Task> {
        let (def, source) = match name {
            "password-match" => (
                defs::password_match(),
                Source::Synthetic(Synthetic::PasswordMatch),
            ),
            "word-length" => (
                defs::word_length(),
                Source::Synthetic(Synthetic::WordLength),
            ),
            "spam" => (defs::spam(), Source::Dataset),
            "imdb" => (defs::imdb(), Source::Dataset),
            "helpful" => (defs::helpful(), Source::Dataset),
            "harmless" => (defs::harmless(), Source::Dataset),
            _ => match name.strip_prefix("jsonl:") {
                Some("") => {
                    return Err(Error::input(
                        "task `jsonl:` needs a path, e.g. `jsonl:data/train.jsonl`",
                    ))
                }
                Some(path) => {
                    let path = PathBuf::from(path);
                    (defs::generic(&path)?, Source::Jsonl(path))
                }
                None => {
                    return Err(Error::input(format!(
                        "unknown task `{name}`; valid tasks: {}",
                        TASK_NAMES.join(", ")
                    )))
                }
            },
        };
        Ok(Task { def, source })
    }

    /// `n` generated examples (synthetic tasks only).
    pub fn generate(&self, n: usize, seed: u64) -> Result<Vec<Example>> {
        Ok(synthetic::generate(self.synthetic()?, n, seed))
    }

    /// Disjoint train and validation sets (synthetic tasks only); see [`synthetic::split`].
    pub fn split(
        &self,
        n_train: usize,
        n_val: usize,
        seed: u64,
    ) -> Result<(Vec<Example>, Vec<Example>)> {
        Ok(synthetic::split(self.synthetic()?, n_train, n_val, seed))
    }

    /// Examples from a JSONL file: `path` if given, else the path of a `jsonl:PATH` task.
    /// Real datasets ship separate train and validation files, so the caller picks which.
    pub fn load_jsonl(&self, path: Option<&Path>) -> Result<Vec<Example>> {
        let path = match (&self.source, path) {
            (Source::Synthetic(_), _) => {
                return Err(Error::input(format!(
                    "task `{}` is generated in-crate; it reads no JSONL file",
                    self.def.name
                )))
            }
            (_, Some(p)) => p,
            (Source::Jsonl(p), None) => p.as_path(),
            (Source::Dataset, None) => {
                let form = match self.jsonl_format() {
                    jsonl::Format::Text => "{\"text\": ..., \"label\": 0|1}",
                    jsonl::Format::Pairs => {
                        "{\"chosen\": ..., \"rejected\": ...} or {\"text\": ..., \"label\": 0|1}"
                    }
                };
                return Err(Error::input(format!(
                    "task `{}` needs a local JSONL file ({form} per line); the engine never \
                     downloads",
                    self.def.name
                )));
            }
        };
        jsonl::load_as(path, &self.def, self.jsonl_format())
    }

    /// The line forms this task's JSONL may use: Helpful and Harmless also read HH-RLHF's
    /// chosen/rejected pairs (laid out by [`defs::pairwise_example`]); every other task reads
    /// `{"text": ..., "label": ...}` only.
    pub fn jsonl_format(&self) -> jsonl::Format {
        match (&self.source, self.def.name.as_str()) {
            (Source::Dataset, "helpful" | "harmless") => jsonl::Format::Pairs,
            _ => jsonl::Format::Text,
        }
    }

    fn synthetic(&self) -> Result<Synthetic> {
        match self.source {
            Source::Synthetic(s) => Ok(s),
            _ => Err(Error::input(format!(
                "task `{}` is a dataset, not generated: load it from JSONL",
                self.def.name
            ))),
        }
    }
}

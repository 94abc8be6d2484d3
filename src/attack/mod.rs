//! The attack engine: GCG, BEAST and the random-token baseline against classifiers (or a
//! target string against causal LMs), FLOP accounting and budgets, and resumable JSONL
//! results.
//!
//! Flow: [`subject::build_subjects`] turns task examples into [`Subject`]s (prompt split at
//! the threat model's slot, retokenization check, initial attack); an [`Attack`]
//! ([`Gcg`], [`RandomToken`], [`Beast`]) advances them one iteration at a time; [`runner::run`] drives
//! it: clean classification first (misclassified examples are skipped), then iterations on
//! groups of examples attacked together, one JSONL line per example per iteration, a
//! resume that replays what a killed run wrote, and the [`summary::Summary`] at the end.
//!
//! Determinism: every random choice comes from a stream keyed by (seed, example,
//! iteration) ([`rng`]); thread pools only ever change the order work is done in, never
//! what is computed.

pub mod beast;
pub mod budget;
pub mod candidates;
pub mod gcg;
pub mod goal;
pub mod random_token;
pub mod results;
pub mod rng;
pub mod runner;
pub mod scoring;
pub mod session;
pub mod subject;
pub mod summary;
pub mod vocab;

pub use beast::{Beast, BeastConfig};
pub use gcg::{Gcg, GcgConfig};
pub use goal::{Goal, LossKind};
pub use random_token::{RandomToken, RandomTokenConfig};
pub use subject::{FastPaths, GoalSpec, RowsCap, Subject, Victim};
pub use vocab::Vocab;

use crate::backend::Backend;
use crate::error::Result;

/// What one iteration did to one example.
#[derive(Clone, Debug, PartialEq)]
pub struct StepReport {
    /// Loss of the attack kept after the iteration.
    pub loss: f32,
    /// Whether that attack succeeds.
    pub success: bool,
    /// Whether the attack the iteration started from already succeeded (GCG learns this
    /// for free from its gradient pass; it matters for the initial attack).
    pub success_before: bool,
    /// Candidates scored, and candidates the validity filter rejected.
    pub scored: usize,
    pub rejected: usize,
    /// The filter rejected every candidate: the iteration changed nothing (the study skips
    /// such iterations; they still count as iterations).
    pub skipped: bool,
    /// This iteration's FLOPs: nominal (study convention) and executed.
    pub nominal: f64,
    pub executed: f64,
}

/// Which ASR curve the study reported for an attack (the summary gives both).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AsrKind {
    /// After iteration i: the fraction whose *current* attack succeeds (GCG; BEAST, whose
    /// current attack is its best so far).
    Current,
    /// After iteration i: the fraction broken at some iteration <= i (random token, which
    /// keeps the first successful draw).
    Cumulative,
}

/// An attack the runner can drive. Implementations keep everything an iteration needs in
/// the subjects' [`subject::AttackState`] (their own part as JSON in `data`), so a resumed
/// run continues exactly. What every attack shares is the runner's: prompt caches (built
/// and rebuilt before each step, their cost booked to iteration 1), results lines, resume,
/// the per-example best and final attacks, the summary.
pub trait Attack<B: Backend>: Sync {
    /// Short name for files and tables ("gcg", "random-token").
    fn name(&self) -> &'static str;

    /// Settings as JSON, saved with the results (a resume must find the same).
    fn settings(&self) -> serde_json::Value;

    /// An upper bound of one iteration's nominal FLOPs on `s` (FLOP budgets never let an
    /// iteration start that could cross them).
    fn nominal_bound(&self, v: &Victim<B>, s: &Subject<B>) -> f64;

    /// Whether an example stops being attacked from its first success on.
    fn stops_on_success(&self) -> bool;

    /// The ASR curve the study reported for this attack.
    fn study_asr(&self) -> AsrKind;

    /// Prepares an example's state before its first iteration (e.g. GCG aligns its initial
    /// attack in context). Runs on every start, resumes included, before anything is
    /// replayed, so it must be deterministic.
    fn init(&self, _v: &Victim<B>, _s: &mut Subject<B>) -> Result<()> {
        Ok(())
    }

    /// Runs iteration `iteration` (1-based) on every subject of `batch`, updating their
    /// states; one report per subject, in order.
    fn step(
        &self,
        v: &Victim<B>,
        batch: &mut [&mut Subject<B>],
        iteration: usize,
    ) -> Result<Vec<StepReport>>;
}

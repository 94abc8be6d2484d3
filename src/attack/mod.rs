//! The attack engine: GCG and the random-token baseline against classifiers (or a target
//! string against causal LMs), FLOP accounting and budgets, and resumable JSONL results.
//!
//! Flow: [`subject::build_subjects`] turns task examples into [`Subject`]s (prompt split at
//! the threat model's slot, retokenization check, initial attack); an [`Attack`]
//! ([`Gcg`], [`RandomToken`]) advances them one iteration at a time; [`runner::run`] drives
//! it: clean classification first (misclassified examples are skipped), then iterations on
//! groups of examples attacked together, one JSONL line per example per iteration, a
//! resume that replays what a killed run wrote, and the [`summary::Summary`] at the end.
//!
//! Determinism: every random choice comes from a stream keyed by (seed, example,
//! iteration) ([`rng`]); thread pools only ever change the order work is done in, never
//! what is computed.

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
    /// Candidates scored, and candidates the retokenization check rejected.
    pub scored: usize,
    pub rejected: usize,
    /// This iteration's FLOPs: nominal (study convention) and executed.
    pub nominal: f64,
    pub executed: f64,
}

/// An attack the runner can drive. Implementations keep everything an iteration needs in
/// the subjects' [`subject::AttackState`], so a resumed run continues exactly.
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

    /// Runs iteration `iteration` (1-based) on every subject of `batch`, updating their
    /// states; one report per subject, in order.
    fn step(
        &self,
        v: &Victim<B>,
        batch: &mut [&mut Subject<B>],
        iteration: usize,
    ) -> Result<Vec<StepReport>>;
}

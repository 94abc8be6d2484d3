//! Prompt text: `instructions + content + attack_slot + answer_prompt`, with the slot moved
//! into the content by the threat model.

use super::{Example, TaskDef, ThreatModel};

/// The prompt text on either side of the attack slot. Kept as two strings because the
/// segments are tokenized separately (see [`super::TokenizedPrompt`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptParts {
    /// `instructions + text[..slot]`
    pub before: String,
    /// `text[slot..] + answer_prompt`
    pub after: String,
}

impl PromptParts {
    /// The prompt with `attack` text in the slot.
    pub fn with_attack(&self, attack: &str) -> String {
        [self.before.as_str(), attack, self.after.as_str()].concat()
    }

    /// The prompt with an empty slot, i.e. the clean prompt. Tokenize this string whole to
    /// classify before attacking: segment-wise tokens can differ at the seam.
    pub fn clean(&self) -> String {
        self.with_attack("")
    }
}

/// The clean prompt of `ex`, independent of any threat model.
pub fn clean_prompt(def: &TaskDef, ex: &Example) -> String {
    [
        def.instructions.as_str(),
        ex.text.as_str(),
        def.answer_prompt.as_str(),
    ]
    .concat()
}

/// Splits the prompt of example number `index` at the threat model's slot. `seed` and
/// `index` only matter for an infix range (they fix the per-example position).
pub fn layout(
    def: &TaskDef,
    ex: &Example,
    threat: &ThreatModel,
    seed: u64,
    index: u64,
) -> PromptParts {
    let at = threat.slot_offset(&ex.text, seed, index);
    let (head, tail) = ex.text.split_at(at);
    PromptParts {
        before: [def.instructions.as_str(), head].concat(),
        after: [tail, def.answer_prompt.as_str()].concat(),
    }
}

//! Prompts as token ids with the attack slot carried between two fixed segments.

use super::PromptParts;
use crate::error::{Error, Result};
use crate::tokenize::Tokenizer;

/// The study initialised its 10 GCG attack tokens from this text.
pub const ATTACK_INIT_TEXT: &str = "@&@&@&@&@&";

/// `before` and `after` are each tokenized on their own (no special tokens), so the ids
/// around the slot stay fixed while the attack ids change; the sequence the model sees is
/// `before ++ attack ++ after`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenizedPrompt {
    /// tokenize(instructions + content before the slot)
    pub before: Vec<u32>,
    /// tokenize(content after the slot + answer prompt)
    pub after: Vec<u32>,
    pub label: u32,
}

impl TokenizedPrompt {
    pub fn new(tok: &Tokenizer, parts: &PromptParts, label: u32) -> Result<Self> {
        Ok(TokenizedPrompt {
            before: tok.encode(&parts.before)?,
            after: tok.encode(&parts.after)?,
            label,
        })
    }

    /// The segments fitted to the whole prompt with `init` in the slot, so that
    /// `before ++ init ++ after` is exactly the tokenization of that prompt's text and the
    /// initial attack passes the retokenization check.
    ///
    /// Why: a segment tokenized on its own can end differently than it does in the prompt.
    /// Byte-level BPE splits a whitespace run by what follows it (`\s+(?!\S)`), so
    /// instructions ending in "\n\n" give the single token "\n\n" alone but "\n", "\n"
    /// before any attack text that does not start with a space. With the alone-tokenized
    /// `before` (the prefix threat model on PasswordMatch) the initial attack already fails
    /// the check, and so does every candidate that keeps its first token: 97% of single
    /// swaps were rejected for a seam the attack never chose.
    ///
    /// The text is tokenized whole and split where `init` sits. When it cannot be split
    /// there (the attack text merges with its neighbours, e.g. a slot right after a space
    /// before "@"), the segments stay tokenized alone and the attack must find valid
    /// tokens itself, as in the study.
    pub fn in_context(
        tok: &Tokenizer,
        parts: &PromptParts,
        init: &[u32],
        label: u32,
    ) -> Result<Self> {
        let alone = TokenizedPrompt::new(tok, parts, label)?;
        if init.is_empty() || super::retokenizes(tok, &alone.ids(init))? {
            return Ok(alone);
        }
        let text = parts.with_attack(&tok.decode(init)?);
        let whole = tok.encode(&text)?;
        // Tokens after the slot do not depend on what precedes them (the pre-token regexes
        // look ahead only), so `after` is its own tokenization whenever a split exists.
        let tail = [init, alone.after.as_slice()].concat();
        let Some(k) = whole.len().checked_sub(tail.len()) else {
            return Ok(alone);
        };
        if whole[k..] != tail[..] || tok.decode(&whole[..k])? != parts.before {
            return Ok(alone);
        }
        Ok(TokenizedPrompt {
            before: whole[..k].to_vec(),
            ..alone
        })
    }

    /// `before ++ attack ++ after`.
    pub fn ids(&self, attack: &[u32]) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.len(attack.len()));
        self.write_ids(attack, &mut out);
        out
    }

    /// Like [`Self::ids`] into a reused buffer (cleared first), for hot loops.
    pub fn write_ids(&self, attack: &[u32], out: &mut Vec<u32>) {
        out.clear();
        out.extend_from_slice(&self.before);
        out.extend_from_slice(attack);
        out.extend_from_slice(&self.after);
    }

    /// Position of the first attack token in the full sequence.
    pub fn attack_start(&self) -> usize {
        self.before.len()
    }

    /// Length of the full sequence with `n_attack` attack tokens.
    pub fn len(&self, n_attack: usize) -> usize {
        self.before.len() + n_attack + self.after.len()
    }
}

/// `n` initial attack ids from [`ATTACK_INIT_TEXT`], tokenized on its own.
///
/// The study's tokenizer gives exactly 10 tokens for the text and attacks used 10, so that
/// case is the text's tokens unchanged. Otherwise: more tokens than `n` are truncated to
/// the first `n`; fewer are made up by tokenizing the text repeated (k copies, k = 2, 3, …)
/// until it gives at least `n` tokens and taking the first `n`. Repeating the *text* rather
/// than cycling the token sequence keeps the ids what the tokenizer itself would produce,
/// so the initial attack normally passes the retokenization check (cycling e.g.
/// ["@&@&", "@&@&", "@&"] would re-merge into different tokens). Whether it passes in a
/// particular prompt is still the attack's business.
pub fn attack_init(tok: &Tokenizer, n: usize) -> Result<Vec<u32>> {
    if n == 0 {
        return Err(Error::input("the attack needs at least one token (n = 0)"));
    }
    // Every copy adds at least one token unless a single vocab entry spans many copies;
    // the cap only bounds the loop for such degenerate vocabularies.
    for copies in 1..=64 * n {
        let mut ids = tok.encode(&ATTACK_INIT_TEXT.repeat(copies))?;
        if ids.len() >= n {
            ids.truncate(n);
            return Ok(ids);
        }
    }
    Err(Error::input(format!(
        "the tokenizer gives fewer than {n} tokens for {} copies of {ATTACK_INIT_TEXT:?}",
        64 * n
    )))
}

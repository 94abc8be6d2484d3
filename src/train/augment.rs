//! Random-token augmentation: some training prompts get random tokens in the suffix slot.
//!
//! A classifier trained on clean prompts alone has never seen anything between the content
//! and the answer prompt, so any junk there is out of distribution and random tokens break
//! it at the first try, which makes every attack look strong. The study's targets were
//! pretrained LMs that tolerate junk; this gives a from-scratch model the same footing (its
//! instructions already say to ignore anything after the content). Clean accuracy is still
//! measured on clean prompts.

use super::LabeledIds;
use crate::error::{Error, Result};
use crate::task::{layout, special_token_ids, Example, TaskDef, ThreatModel, TokenizedPrompt};
use crate::tokenize::Tokenizer;
use rand::{Rng, SeedableRng};

/// Most random tokens put in one prompt (the study's attacks use 10).
pub const MAX_JUNK_TOKENS: usize = 10;

/// Replaces a `fraction` of `data` (parallel to `examples`) by the same prompt with 1 to
/// [`MAX_JUNK_TOKENS`] tokens drawn uniformly from the non-special vocabulary in the suffix
/// slot. Which examples and which tokens depend only on `seed`.
pub fn junk_suffixes(
    tok: &Tokenizer,
    def: &TaskDef,
    examples: &[Example],
    data: &mut [LabeledIds],
    fraction: f32,
    seed: u64,
) -> Result<()> {
    if !(0.0..=1.0).contains(&fraction) {
        return Err(Error::input(format!(
            "junk-suffix fraction must be in [0, 1], got {fraction}"
        )));
    }
    if fraction == 0.0 {
        return Ok(());
    }
    let specials = special_token_ids(tok);
    let vocab = tok.vocab_size() as u32;
    let allowed: Vec<u32> = (0..vocab).filter(|t| !specials.contains(t)).collect();
    if allowed.is_empty() {
        return Err(Error::input(
            "junk suffixes: the vocabulary has only special tokens",
        ));
    }
    // A stream of its own, so turning augmentation on leaves data order and init unchanged.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x6a75_6e6b);
    for (i, (ex, d)) in examples.iter().zip(data.iter_mut()).enumerate() {
        if rng.random::<f32>() >= fraction {
            continue;
        }
        let n = rng.random_range(1..=MAX_JUNK_TOKENS);
        let junk: Vec<u32> = (0..n)
            .map(|_| allowed[rng.random_range(0..allowed.len())])
            .collect();
        let parts = layout(def, ex, &ThreatModel::Suffix, seed, i as u64);
        d.ids = TokenizedPrompt::new(tok, &parts, ex.label)?.ids(&junk);
    }
    Ok(())
}

//! Which token ids an attack may propose.

use crate::error::{Error, Result};
use crate::task::special_token_ids;
use crate::tokenize::Tokenizer;
use rayon::prelude::*;

/// The ids attacks may place in the attack slot: a sorted list plus a membership mask over
/// the model's vocabulary (rows past the tokenizer's vocabulary are never allowed).
#[derive(Clone, Debug)]
pub struct Vocab {
    allowed: Vec<u32>,
    /// The complement of `allowed` below `model_vocab`: what the top-k op is told to skip.
    forbidden: Vec<u32>,
    mask: Vec<bool>,
}

impl Vocab {
    /// Every id the tokenizer knows (below the model's `model_vocab` rows) except special
    /// tokens: the study's GCG pool (ids that decode to nothing or do not round-trip are
    /// left to the filter). With `ascii_only` (nanoGCG's default), only ids that decode, on
    /// their own, to non-empty printable ASCII (' '..='~').
    pub fn from_tokenizer(tok: &Tokenizer, model_vocab: usize, ascii_only: bool) -> Result<Self> {
        Self::below(
            tok,
            model_vocab.min(tok.vocab_size()),
            model_vocab,
            ascii_only,
        )
    }

    /// The study's random-token pool: ids in [0, tokenizer vocab size) — the base
    /// vocabulary, so added tokens are never drawn — minus special ids, below `model_vocab`.
    pub fn random_token_pool(tok: &Tokenizer, model_vocab: usize) -> Result<Self> {
        let base = tok.inner().get_vocab_size(false);
        Self::below(tok, model_vocab.min(base), model_vocab, false)
    }

    fn below(tok: &Tokenizer, n: usize, model_vocab: usize, ascii_only: bool) -> Result<Self> {
        let special = special_token_ids(tok);
        let ok: Vec<bool> = (0..n as u32)
            .into_par_iter()
            .map(|id| -> Result<bool> {
                if special.binary_search(&id).is_ok() {
                    return Ok(false);
                }
                if !ascii_only {
                    return Ok(true);
                }
                let s = tok.decode(&[id])?;
                Ok(!s.is_empty() && s.bytes().all(|b| (b' '..=b'~').contains(&b)))
            })
            .collect::<Result<_>>()?;
        let mut mask = ok;
        mask.resize(model_vocab, false);
        Self::from_mask(mask)
    }

    /// Ids `lo..hi` (no tokenizer at hand: benchmarks on random ids).
    pub fn range(lo: u32, hi: u32, model_vocab: usize) -> Result<Self> {
        let mask = (0..model_vocab as u32)
            .map(|i| (lo..hi).contains(&i))
            .collect();
        Self::from_mask(mask)
    }

    fn from_mask(mask: Vec<bool>) -> Result<Self> {
        let allowed: Vec<u32> = (0..mask.len() as u32)
            .filter(|&i| mask[i as usize])
            .collect();
        if allowed.is_empty() {
            return Err(Error::input(
                "no token id may be proposed (all are special, empty or filtered out)",
            ));
        }
        let forbidden = (0..mask.len() as u32)
            .filter(|&i| !mask[i as usize])
            .collect();
        Ok(Vocab {
            allowed,
            forbidden,
            mask,
        })
    }

    pub fn allowed(&self) -> &[u32] {
        &self.allowed
    }

    /// Ids below `model_vocab` that may not be proposed, sorted.
    pub fn forbidden(&self) -> &[u32] {
        &self.forbidden
    }

    pub fn is_allowed(&self, id: u32) -> bool {
        self.mask.get(id as usize).copied().unwrap_or(false)
    }

    /// Rows of the model's vocabulary the mask covers.
    pub fn model_vocab(&self) -> usize {
        self.mask.len()
    }
}

//! The retokenization check and the tokens an attack may never propose.
//!
//! A candidate attack is valid only if the prompt survives a round trip through text:
//! decode(ids) then encode gives back exactly `ids`. Otherwise the attack the model was
//! scored on is not one a user could type (e.g. two attack tokens "a" + "b" that re-encode
//! as the single token "ab", or a byte token that is half a UTF-8 character).

use super::{window, TokenizedPrompt};
use crate::error::{Error, Result};
use crate::tokenize::Tokenizer;
use rayon::prelude::*;
use tokenizers::DecoderWrapper;

/// Ids of `text` without offset tracking: the check only compares ids, and skipping offsets
/// is the cheapest encode the tokenizers crate offers.
fn encode_ids(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    let enc = tok
        .inner()
        .encode_fast(text, false)
        .map_err(|e| Error::Other(format!("tokenizer failed on {text:?}: {e}")))?;
    Ok(enc.get_ids().to_vec())
}

/// The reference check on a whole prompt: decode, encode, compare.
pub fn retokenizes(tok: &Tokenizer, ids: &[u32]) -> Result<bool> {
    let text = tok.decode(ids)?;
    Ok(encode_ids(tok, &text)? == ids)
}

/// Ids of added tokens marked special (`<|endoftext|>`, pad, chat markers): never proposed
/// as attack tokens. Sorted ascending.
pub fn special_token_ids(tok: &Tokenizer) -> Vec<u32> {
    let mut ids: Vec<u32> = tok
        .inner()
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, t)| t.special)
        .map(|(id, _)| id)
        .collect();
    ids.sort_unstable();
    ids
}

/// The retokenization check for one prompt, prepared once and run for every candidate.
///
/// Exactly equivalent to [`retokenizes`] on `before ++ attack ++ after`, but cheaper:
/// - With a byte-level decoder (GPT-NeoX, Qwen2) decoding is concatenative — bytes are
///   joined, then read as UTF-8, and `before`/`after` are whole characters — so the fixed
///   texts are decoded once here and each candidate only decodes its attack.
/// - For the tokenizers [`window::seams_apply`] accepts, only a window from the nearest
///   forced pre-token boundary before the slot to the nearest one after it is re-encoded:
///   tokens outside cannot change (see [`super::window`]). Otherwise the whole prompt is.
/// - Other decoders (which may strip or join per sequence) decode the whole prompt.
///
/// Owns its data and only reads the tokenizer, so it can be shared across worker threads.
#[derive(Clone, Debug)]
pub struct RetokCheck {
    before: Vec<u32>,
    after: Vec<u32>,
    mode: Mode,
}

#[derive(Clone, Debug)]
enum Mode {
    /// decode(before ++ attack ++ after), encode, compare.
    Full,
    /// encode(left + decode(attack) + right) must equal
    /// `before[from..] ++ attack ++ after[..upto] ++ lookahead`.
    Window {
        left: String,
        right: String,
        from: usize,
        upto: usize,
        /// Ids of the one char of lookahead that ends `right` (empty if `right` runs to
        /// the end of the prompt).
        lookahead: Vec<u32>,
    },
}

impl RetokCheck {
    pub fn new(tok: &Tokenizer, prompt: &TokenizedPrompt) -> Result<Self> {
        let (before, after) = (prompt.before.clone(), prompt.after.clone());
        if !matches!(
            tok.inner().get_decoder(),
            Some(DecoderWrapper::ByteLevel(_))
        ) {
            return Ok(RetokCheck {
                before,
                after,
                mode: Mode::Full,
            });
        }
        let p = tok.decode(&before)?;
        let q = tok.decode(&after)?;
        // Segments tokenized from text are whole characters. Hand-built ids may end in half a
        // character (decoded as U+FFFD) that an attack could complete: decode all of it then.
        if p.contains('\u{FFFD}') || q.contains('\u{FFFD}') {
            return Ok(RetokCheck {
                before,
                after,
                mode: Mode::Full,
            });
        }
        let (mut from, mut c, mut upto, mut r_end) = (0, 0, after.len(), q.len());
        let mut lookahead = Vec::new();
        if window::seams_apply(tok) {
            let added = window::added_contents(tok);
            (from, c) = window::left_seam(tok, &before, &p, &added)?;
            if let Some((k, r)) = window::right_seam(tok, &after, &q, &added)? {
                // `q[r]` is ASCII: the window keeps it as lookahead, and it encodes alone.
                (upto, r_end) = (k, r + 1);
                lookahead = tok.encode(&q[r..r_end])?;
            }
        }
        Ok(RetokCheck {
            mode: Mode::Window {
                left: p[c..].to_string(),
                right: q[..r_end].to_string(),
                from,
                upto,
                lookahead,
            },
            before,
            after,
        })
    }

    /// How many fixed tokens each candidate re-encodes on either side of the attack (the
    /// whole prompt when no window applies). For tests and diagnostics.
    pub fn window_tokens(&self) -> (usize, usize) {
        match &self.mode {
            Mode::Full => (self.before.len(), self.after.len()),
            Mode::Window { from, upto, .. } => (self.before.len() - from, *upto),
        }
    }

    /// Whether `before ++ attack ++ after` survives decode → encode unchanged.
    pub fn check(&self, tok: &Tokenizer, attack: &[u32]) -> Result<bool> {
        match &self.mode {
            Mode::Full => {
                let ids = [self.before.as_slice(), attack, self.after.as_slice()].concat();
                retokenizes(tok, &ids)
            }
            Mode::Window {
                left,
                right,
                from,
                upto,
                lookahead,
            } => {
                let text = [left.as_str(), &tok.decode(attack)?, right.as_str()].concat();
                let ids = encode_ids(tok, &text)?;
                let expected = [
                    &self.before[*from..],
                    attack,
                    &self.after[..*upto],
                    lookahead,
                ];
                let mut rest = ids.as_slice();
                for part in expected {
                    match rest.split_at_checked(part.len()) {
                        Some((head, tail)) if head == part => rest = tail,
                        _ => return Ok(false),
                    }
                }
                Ok(rest.is_empty())
            }
        }
    }

    /// [`Self::check`] for `attacks` laid out as rows of `n` ids, on rayon's pool.
    pub fn check_batch(&self, tok: &Tokenizer, attacks: &[u32], n: usize) -> Result<Vec<bool>> {
        if n == 0 || !attacks.len().is_multiple_of(n) {
            return Err(Error::input(format!(
                "{} candidate ids are not whole rows of {n} attack tokens",
                attacks.len()
            )));
        }
        attacks.par_chunks(n).map(|a| self.check(tok, a)).collect()
    }
}

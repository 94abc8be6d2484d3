//! Where the retokenization check may stop re-encoding: seams in the fixed text that no
//! attack can move.
//!
//! Re-encoding a whole 1,000-token prompt for each of 128 candidates costs ~0.3 s per
//! iteration, far more than scoring them. But an attack can only change how text near it
//! is tokenized, if the text around it contains a *forced boundary*: a position that is a
//! pre-token boundary whatever precedes it, and at which the scan ahead does not depend on
//! what lies behind. Tokens left of a forced boundary in the fixed prefix and right of one
//! in the fixed suffix are then identical in every candidate, and only the window between
//! them (plus one char of lookahead) needs encoding. The result is exactly that of the full
//! check; `tests/tasks.rs` compares both on thousands of candidates.
//!
//! The argument depends on the tokenizer, so windows are used only for the pipelines it was
//! made for — GPT-NeoX/Pythia (ByteLevel regex) and Qwen2/Llama-3 (Split regex + ByteLevel):
//! NFC or no normalizer, a byte-level BPE without dropout, no truncation or padding, added
//! tokens without strip/single-word rules. For the pre-token regexes of these tokenizers
//! (no lookbehind, leftmost-first scan, every alternative consumes at least one char):
//! - (R1) a '\n' followed by an ASCII graphic char: every alternative that can consume a
//!   '\n' ends with a whitespace or newline run, so the match holding the '\n' ends there;
//! - (R2) an ASCII letter followed by an ASCII non-letter: every alternative that consumes
//!   a letter ends with a letter run (or a contraction ending in a letter).
//!
//! In both cases no match ending at or before the seam looks past the char right after it
//! (whitespace backtracking stops at the graphic char, a letter run at the non-letter), and
//! that char is ASCII, so NFC cannot compose across the seam either. Added tokens (matched
//! before normalization, splitting the text) could still span a seam, so a seam any added
//! token could touch is not used.

use crate::error::Result;
use crate::tokenize::Tokenizer;
use serde_json::{json, Value};
use tokenizers::{DecoderWrapper, ModelWrapper};

/// How far from the attack slot to look for a seam, in tokens. Prompts whose nearest seam is
/// farther are still checked exactly, with a wider window.
const SEARCH_TOKENS: usize = 64;

/// Pre-token regexes (as Split patterns) the seam rules were checked against.
const KNOWN_SPLIT_PATTERNS: &[&str] = &[
    // Qwen2 / Qwen2.5
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    // Llama-3
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    // GPT-2 (what ByteLevel with use_regex applies), spelled as a Split
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
];

/// Whether the seam rules hold for this tokenizer's pipeline (see the module docs).
pub fn seams_apply(tok: &Tokenizer) -> bool {
    let t = tok.inner();
    let byte_level_decoder = matches!(t.get_decoder(), Some(DecoderWrapper::ByteLevel(_)));
    let bpe = matches!(t.get_model(), ModelWrapper::BPE(b) if b.dropout.is_none());
    let normalizer = match t.get_normalizer() {
        None => true,
        Some(n) => serde_json::to_value(n).ok() == Some(json!({"type": "NFC"})),
    };
    let pre = t
        .get_pre_tokenizer()
        .and_then(|p| serde_json::to_value(p).ok())
        .is_some_and(|v| known_pre_tokenizer(&v));
    let added = t
        .get_added_tokens_decoder()
        .values()
        .all(|a| !a.lstrip && !a.rstrip && !a.single_word);
    byte_level_decoder
        && bpe
        && normalizer
        && pre
        && added
        && t.get_truncation().is_none()
        && t.get_padding().is_none()
}

fn known_pre_tokenizer(v: &Value) -> bool {
    let byte_level = |v: &Value, regex: bool| {
        v["type"] == "ByteLevel" && v["add_prefix_space"] == false && v["use_regex"] == regex
    };
    if byte_level(v, true) {
        return true;
    }
    let Some([split, bl]) = v["pretokenizers"].as_array().map(Vec::as_slice) else {
        return false;
    };
    v["type"] == "Sequence"
        && split["type"] == "Split"
        && split["behavior"] == "Isolated"
        && split["invert"] == false
        && split["pattern"]["Regex"]
            .as_str()
            .is_some_and(|p| KNOWN_SPLIT_PATTERNS.contains(&p))
        && byte_level(bl, false)
}

/// R1 or R2 of the module docs: `x` then `y` is a forced pre-token boundary.
fn forced(x: char, y: char) -> bool {
    (x == '\n' && y.is_ascii_graphic())
        || (x.is_ascii_alphabetic() && y.is_ascii() && !y.is_ascii_alphabetic())
}

/// Whether an occurrence of `t` could touch the seam between `left` and `right` (span it,
/// start or end at it). An `open` side continues with unknown text (the attack).
fn may_touch(left: &str, left_open: bool, right: &str, right_open: bool, t: &str) -> bool {
    (0..=t.len()).filter(|&j| t.is_char_boundary(j)).any(|j| {
        let (t1, t2) = t.split_at(j);
        let l = left.ends_with(t1) || (left_open && t1.ends_with(left));
        let r = right.starts_with(t2) || (right_open && t2.starts_with(right));
        l && r
    })
}

/// Contents of the tokenizer's added tokens (specials included).
pub fn added_contents(tok: &Tokenizer) -> Vec<String> {
    let mut v: Vec<String> = tok
        .inner()
        .get_added_tokens_decoder()
        .into_values()
        .map(|a| a.content)
        .filter(|c| !c.is_empty())
        .collect();
    v.sort();
    v
}

/// The seam nearest the end of the fixed prefix `p` = decode(`before`): `(i, c)` with
/// `before[..i]` decoding to `p[..c]`. `(0, 0)` if there is none within reach.
pub fn left_seam(
    tok: &Tokenizer,
    before: &[u32],
    p: &str,
    added: &[String],
) -> Result<(usize, usize)> {
    let n = before.len();
    for k in 1..=n.min(SEARCH_TOKENS) {
        let i = n - k;
        let tail = tok.decode(&before[i..])?;
        if tail.is_empty() || !p.ends_with(&tail) {
            continue; // mid-character split: not a seam
        }
        let c = p.len() - tail.len();
        let (head, rest) = p.split_at(c);
        let (Some(x), Some(y)) = (head.chars().next_back(), rest.chars().next()) else {
            continue;
        };
        if forced(x, y)
            && !added.iter().any(|t| may_touch(head, false, rest, true, t))
            && tok.decode(&before[..i])? == head
        {
            return Ok((i, c));
        }
    }
    Ok((0, 0))
}

/// The seam nearest the start of the fixed suffix `q` = decode(`after`): `(k, r)` with
/// `after[..k]` decoding to `q[..r]`; `None` if there is none within reach. The char at `r`
/// is ASCII, so `q[..r + 1]` is the window's end including its one char of lookahead.
pub fn right_seam(
    tok: &Tokenizer,
    after: &[u32],
    q: &str,
    added: &[String],
) -> Result<Option<(usize, usize)>> {
    for k in 1..=after.len().min(SEARCH_TOKENS) {
        let head = tok.decode(&after[..k])?;
        if head.len() >= q.len() || !q.starts_with(&head) {
            continue;
        }
        let r = head.len();
        let (Some(x), Some(y)) = (head.chars().next_back(), q[r..].chars().next()) else {
            continue;
        };
        // The window ends after `y`, so added tokens must not touch r nor r + 1.
        let touches = |at: usize| {
            added
                .iter()
                .any(|t| may_touch(&q[..at], true, &q[at..], false, t))
        };
        if forced(x, y) && !touches(r) && !touches(r + 1) {
            return Ok(Some((k, r)));
        }
    }
    Ok(None)
}

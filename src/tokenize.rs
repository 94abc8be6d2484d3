//! tokenizer.json through the `tokenizers` crate (no network features).

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The file it was read from, for errors.
    path: PathBuf,
}

/// Text a tokenizer must encode and decode without failing before it is accepted: letters,
/// digits, whitespace runs, punctuation and non-ASCII, as prompts and attack tokens have.
const PROBES: &[&str] = &[
    "",
    "Hello, world! It's 2026: 3.14 + 42 = 45.14?",
    "  two  spaces\tand a tab\nand lines\r\n",
    "Ünïcödé — “quotes” 日本語 🙂",
];

/// Runs `f`, turning a panic inside the `tokenizers` crate (it still has `expect`s and
/// unchecked indexing on paths a malformed file reaches) into an error naming the file.
fn guard<T>(path: &Path, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = crate::error::panic_message(p.as_ref());
        Err(Error::format(
            path,
            format!("the tokenizers crate failed {what} ({msg}); is this tokenizer.json intact?"),
        ))
    })
}

/// Nesting no real tokenizer.json comes near (they nest about 6 levels: a pre-tokenizer
/// sequence of splits with regex patterns). The `tokenizers` crate panics on files nested
/// past serde_json's recursion limit instead of returning an error, so deeper ones are
/// refused before it sees them.
const MAX_DEPTH: usize = 32;

/// Nesting depth of a JSON value (a scalar is 0).
fn json_depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(json_depth).max().unwrap_or(0),
        serde_json::Value::Object(o) => 1 + o.values().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::format(path, "tokenizer file does not exist"));
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| Error::format(path, format!("cannot load tokenizer: not UTF-8 ({e})")))?;
        let json: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::format(path, format!("cannot load tokenizer: not JSON: {e}")))?;
        let depth = json_depth(&json);
        if depth > MAX_DEPTH {
            return Err(Error::format(
                path,
                format!(
                    "cannot load tokenizer: JSON nested {depth} levels deep (a tokenizer.json \
                     nests about 6; at most {MAX_DEPTH} are read)"
                ),
            ));
        }
        drop(json);
        let loaded = guard(path, "loading it", || {
            text.parse::<tokenizers::Tokenizer>()
                .map_err(|e| Error::format(path, format!("cannot load tokenizer: {e}")))
        })?;
        let mut inner = loaded;
        // The engine lays out, batches and truncates prompts itself (`--truncate`): the
        // file's own padding or truncation would silently change every encoding, and a
        // fixed padding length is an allocation sized by a field of the file (a corrupt
        // `{"Fixed": 1000000000000}` asked for terabytes at the first encode).
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| Error::format(path, format!("cannot load tokenizer: {e}")))?;
        let tok = Tokenizer {
            inner,
            path: path.to_owned(),
        };
        // A file whose normalizer or model breaks on ordinary text is refused now, naming
        // the file, not at the first prompt of a run.
        for probe in PROBES {
            let ids = tok.encode(probe)?;
            tok.decode(&ids)?;
        }
        Ok(tok)
    }

    /// Ids of `text` with no special tokens added (the caller formats prompts).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        guard(&self.path, "encoding", || {
            let enc = self.inner.encode(text, false).map_err(|e| {
                let head: String = text.chars().take(80).collect();
                let more = if head.len() < text.len() { "..." } else { "" };
                Error::format(
                    &self.path,
                    format!("tokenizer failed on {head:?}{more}: {e}"),
                )
            })?;
            Ok(enc.get_ids().to_vec())
        })
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        guard(&self.path, "decoding", || {
            self.inner
                .decode(ids, false)
                .map_err(|e| Error::format(&self.path, format!("cannot decode {ids:?}: {e}")))
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

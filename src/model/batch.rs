//! A batch of right-padded token sequences, and what the passes need to know about it.

use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct Batch {
    /// [batch * seq] token ids, each sequence right-padded with `pad`.
    pub ids: Vec<u32>,
    pub batch: usize,
    pub seq: usize,
    /// Real (non-pad) length of each sequence.
    pub lens: Vec<usize>,
}

impl Batch {
    /// Right-pads `seqs` to the longest one.
    pub fn from_sequences(seqs: &[Vec<u32>], pad: u32) -> Result<Self> {
        if seqs.is_empty() {
            return Err(Error::input("empty batch: no sequences given"));
        }
        let seq = seqs.iter().map(Vec::len).max().unwrap_or(0);
        if seq == 0 {
            return Err(Error::input("every sequence in the batch is empty"));
        }
        let mut ids = Vec::with_capacity(seqs.len() * seq);
        for s in seqs {
            ids.extend_from_slice(s);
            ids.extend(std::iter::repeat_n(pad, seq - s.len()));
        }
        Ok(Batch {
            ids,
            batch: seqs.len(),
            seq,
            lens: seqs.iter().map(Vec::len).collect(),
        })
    }

    /// From a [batch, seq] id matrix and a 0/1 attention mask, as transformers takes them.
    pub fn from_mask(ids: Vec<u32>, mask: &[u32], batch: usize, seq: usize) -> Result<Self> {
        if ids.len() != batch * seq || mask.len() != batch * seq {
            return Err(Error::input(format!(
                "ids ({}) and mask ({}) must both have batch*seq = {} entries",
                ids.len(),
                mask.len(),
                batch * seq
            )));
        }
        let mut lens = Vec::with_capacity(batch);
        for b in 0..batch {
            let row = &mask[b * seq..(b + 1) * seq];
            let len = row.iter().take_while(|&&m| m != 0).count();
            if row[len..].iter().any(|&m| m != 0) {
                return Err(Error::input(format!(
                    "sequence {b}: attention mask is not right-padded (ones after a zero)"
                )));
            }
            lens.push(len);
        }
        Ok(Batch {
            ids,
            batch,
            seq,
            lens,
        })
    }

    pub fn rows(&self) -> usize {
        self.batch * self.seq
    }

    /// Row index of the last real token of each sequence (where a classifier reads).
    pub fn last_rows(&self) -> Result<Vec<usize>> {
        self.lens
            .iter()
            .enumerate()
            .map(|(b, &l)| {
                if l == 0 {
                    Err(Error::input(format!(
                        "sequence {b} is empty: nothing to classify"
                    )))
                } else {
                    Ok(b * self.seq + l - 1)
                }
            })
            .collect()
    }

    /// Checks that the (public) fields agree: batch x seq ids, one length per sequence, each
    /// at most `seq`. Hand-built batches that break this would index out of bounds.
    pub fn check_shape(&self) -> Result<()> {
        if self.batch == 0 || self.seq == 0 {
            return Err(Error::input(format!(
                "batch is empty ({} sequences x {} positions)",
                self.batch, self.seq
            )));
        }
        if self.ids.len() != self.batch * self.seq || self.lens.len() != self.batch {
            return Err(Error::input(format!(
                "batch shape is inconsistent: {} ids and {} lengths for {} sequences x {} positions",
                self.ids.len(),
                self.lens.len(),
                self.batch,
                self.seq
            )));
        }
        if let Some((b, &l)) = self.lens.iter().enumerate().find(|(_, &l)| l > self.seq) {
            return Err(Error::input(format!(
                "sequence {b} has length {l}, longer than the batch's {} positions",
                self.seq
            )));
        }
        Ok(())
    }

    /// Checks the shape (`check_shape`), then that every id is below `vocab`.
    pub fn check_vocab(&self, vocab: usize) -> Result<()> {
        self.check_shape()?;
        if let Some((i, &id)) = self
            .ids
            .iter()
            .enumerate()
            .find(|(_, &id)| id as usize >= vocab)
        {
            return Err(Error::input(format!(
                "token id {id} at sequence {}, position {} is out of range for vocab size {vocab}",
                i / self.seq,
                i % self.seq
            )));
        }
        Ok(())
    }
}

/// What to do with a token sequence longer than the model's `max_position_embeddings`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Truncate {
    /// An error naming the input and both lengths (the default: nothing is silently cut).
    #[default]
    Refuse,
    /// Drop tokens from the start (keeps the end, where a classification prompt asks its
    /// question).
    Left,
    /// Drop tokens from the end (transformers' default truncation side).
    Right,
}

/// Fits `ids` into `max` positions as `how` says; `what` names the input for the error
/// ("line 3", "example 7").
pub fn fit_positions(
    ids: &mut Vec<u32>,
    max: usize,
    how: Truncate,
    what: &dyn Fn() -> String,
) -> Result<()> {
    if ids.len() <= max {
        return Ok(());
    }
    match how {
        Truncate::Refuse => Err(Error::input(format!(
            "{}: {} tokens, more than the model's max_position_embeddings ({max}); pass \
             --truncate left|right to cut it",
            what(),
            ids.len()
        ))),
        Truncate::Left => {
            ids.drain(..ids.len() - max);
            Ok(())
        }
        Truncate::Right => {
            ids.truncate(max);
            Ok(())
        }
    }
}

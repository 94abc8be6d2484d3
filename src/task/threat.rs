//! Threat models: where in the content the attack slot goes.

use crate::error::{Error, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ThreatModel {
    /// After the content, right before the answer prompt (F = 1).
    Suffix,
    /// At the start of the content, right after the instructions (F = 0).
    Prefix,
    /// Inside the content at char position floor(F · len), F uniform in [fmin, fmax]
    /// (fmin == fmax for a fixed position; the study used 0.9).
    Infix { fmin: f64, fmax: f64 },
}

const FORMS: &str = "`suffix`, `prefix`, `infix:F` or `infix:FMIN-FMAX` with 0 < F < 1";

impl ThreatModel {
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::input(format!("threat model `{s}`: {why}; expected {FORMS}"));
        match s {
            "suffix" => return Ok(ThreatModel::Suffix),
            "prefix" => return Ok(ThreatModel::Prefix),
            _ => {}
        }
        let Some(spec) = s.strip_prefix("infix:") else {
            return Err(bad(if s == "infix" {
                "infix needs a position"
            } else {
                "unknown threat model"
            }));
        };
        let num = |t: &str| -> Result<f64> {
            let f: f64 = t
                .trim()
                .parse()
                .map_err(|_| bad(&format!("`{t}` is not a number")))?;
            // Written so that NaN fails too.
            if !(f > 0.0 && f < 1.0) {
                return Err(bad(&format!(
                    "position {t} is outside (0, 1) (use `prefix` for 0, `suffix` for 1)"
                )));
            }
            Ok(f)
        };
        let (fmin, fmax) = match spec.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => {
                let f = num(spec)?;
                (f, f)
            }
        };
        if fmin > fmax {
            return Err(bad("range minimum is above its maximum"));
        }
        Ok(ThreatModel::Infix { fmin, fmax })
    }

    /// The position fraction F for example `index`. A range draws F from a ChaCha stream of
    /// its own per example, so F does not depend on which other examples are in the batch.
    pub fn fraction(&self, seed: u64, index: u64) -> f64 {
        match *self {
            ThreatModel::Suffix => 1.0,
            ThreatModel::Prefix => 0.0,
            ThreatModel::Infix { fmin, fmax } if fmin == fmax => fmin,
            ThreatModel::Infix { fmin, fmax } => {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                rng.set_stream(index);
                rng.random_range(fmin..=fmax)
            }
        }
    }

    /// Byte offset in `text` where the slot goes: char position floor(F · chars(text)),
    /// counted in chars so a split never lands inside a UTF-8 sequence.
    pub fn slot_offset(&self, text: &str, seed: u64, index: u64) -> usize {
        match self {
            ThreatModel::Suffix => text.len(),
            ThreatModel::Prefix => 0,
            ThreatModel::Infix { .. } => {
                let n = text.chars().count();
                let k = ((self.fraction(seed, index) * n as f64).floor() as usize).min(n);
                text.char_indices().nth(k).map_or(text.len(), |(i, _)| i)
            }
        }
    }
}

impl FromStr for ThreatModel {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        ThreatModel::parse(s)
    }
}

impl fmt::Display for ThreatModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ThreatModel::Suffix => write!(f, "suffix"),
            ThreatModel::Prefix => write!(f, "prefix"),
            ThreatModel::Infix { fmin, fmax } if fmin == fmax => write!(f, "infix:{fmin}"),
            ThreatModel::Infix { fmin, fmax } => write!(f, "infix:{fmin}-{fmax}"),
        }
    }
}

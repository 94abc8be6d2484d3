//! PasswordMatch and WordLength, generated from the embedded word list.
//!
//! Everything is a pure function of the seed (ChaCha8, whose output is fixed across
//! platforms and rand versions), so a run can be reproduced from its config alone.

use super::defs::{password_match_content, word_length_content};
use super::words::words;
use super::Example;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Synthetic {
    PasswordMatch,
    WordLength,
}

// One ChaCha stream per purpose, so e.g. the validation set does not change when the
// training set size does.
const STREAM_GENERATE: u64 = 0;
const STREAM_WORD_SPLIT: u64 = 1;
const STREAM_TRAIN: u64 = 2;
const STREAM_VAL: u64 = 3;

fn rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(stream);
    r
}

/// `n` examples drawn from the whole word list, shuffled, classes balanced to within one.
pub fn generate(kind: Synthetic, n: usize, seed: u64) -> Vec<Example> {
    generate_from(kind, words(), n, &mut rng(seed, STREAM_GENERATE))
}

/// Train and validation sets. For PasswordMatch the word list is first split in half (by
/// `seed`) and each set draws all its words — system and user — from its own half, so no
/// validation password was ever seen in training. WordLength pairs use the whole list.
/// The validation set depends on `seed` and `n_val` only, so models trained on different
/// amounts of data are evaluated on the same examples.
pub fn split(
    kind: Synthetic,
    n_train: usize,
    n_val: usize,
    seed: u64,
) -> (Vec<Example>, Vec<Example>) {
    let (train_pool, val_pool) = match kind {
        Synthetic::PasswordMatch => {
            let mut all = words().to_vec();
            all.shuffle(&mut rng(seed, STREAM_WORD_SPLIT));
            let val = all.split_off(all.len() / 2);
            (all, val)
        }
        Synthetic::WordLength => (words().to_vec(), words().to_vec()),
    };
    (
        generate_from(kind, &train_pool, n_train, &mut rng(seed, STREAM_TRAIN)),
        generate_from(kind, &val_pool, n_val, &mut rng(seed, STREAM_VAL)),
    )
}

fn generate_from(kind: Synthetic, pool: &[&str], n: usize, rng: &mut ChaCha8Rng) -> Vec<Example> {
    // Both generators need two distinct words; the pools here are halves of a ~15k list.
    if pool.len() < 2 {
        return Vec::new();
    }
    let mut out = match kind {
        Synthetic::PasswordMatch => password_match(pool, n, rng),
        Synthetic::WordLength => word_length(pool, n, rng),
    };
    // Generation order pairs or alternates the classes; shuffle so any prefix is a fair sample.
    out.shuffle(rng);
    out
}

/// Each system word yields one positive (user = system, label 1 " GRANTED") and one
/// negative (user = a different random word, label 0 " DENIED"). System words are drawn
/// without replacement; only when `n / 2` exceeds the pool does a fresh permutation start,
/// so a word repeats only after every word was used.
fn password_match(pool: &[&str], n: usize, rng: &mut ChaCha8Rng) -> Vec<Example> {
    let mut out = Vec::with_capacity(n + 1);
    let mut order: Vec<&str> = Vec::new();
    while out.len() < n {
        let system = match order.pop() {
            Some(w) => w,
            None => {
                order = pool.to_vec();
                order.shuffle(rng);
                continue;
            }
        };
        let user = loop {
            let u = pool[rng.random_range(0..pool.len())];
            if u != system {
                break u;
            }
        };
        out.push(Example {
            text: password_match_content(system, system),
            label: 1,
        });
        out.push(Example {
            text: password_match_content(system, user),
            label: 0,
        });
    }
    out.truncate(n);
    out
}

/// Label 0 " FIRST" if len(a) >= len(b), else 1 " SECOND". Uniform pairs would be ~57%
/// FIRST (ties count as FIRST), so each example first picks its class (alternating) and
/// then rejection-samples a uniform pair of that class.
fn word_length(pool: &[&str], n: usize, rng: &mut ChaCha8Rng) -> Vec<Example> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let target = (i % 2) as u32;
        // Terminates fast: each class has probability > 0.4 on any realistic word list.
        // The cap only guards against a degenerate pool (all words of one length).
        for _ in 0..10_000 {
            let a = pool[rng.random_range(0..pool.len())];
            let b = pool[rng.random_range(0..pool.len())];
            let label = u32::from(a.chars().count() < b.chars().count());
            if label == target {
                out.push(Example {
                    text: word_length_content(a, b),
                    label,
                });
                break;
            }
        }
    }
    out
}

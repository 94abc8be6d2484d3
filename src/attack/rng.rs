//! Per-(seed, example, iteration) random streams: a run's randomness does not depend on
//! which examples share a batch, on thread scheduling or on where a killed run resumed.

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// What a stream is for, so two uses in one iteration never share numbers.
#[derive(Clone, Copy, Debug)]
#[repr(u64)]
pub enum Purpose {
    GcgSample = 1,
    RandomTokens = 2,
    GcgInit = 3,
    BeastSample = 4,
}

/// The stream for `purpose` at (seed, example, iteration): ChaCha8 keyed by all four.
pub fn stream(seed: u64, example: usize, iteration: usize, purpose: Purpose) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[0..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&(example as u64).to_le_bytes());
    key[16..24].copy_from_slice(&(iteration as u64).to_le_bytes());
    key[24..32].copy_from_slice(&(purpose as u64).to_le_bytes());
    ChaCha8Rng::from_seed(key)
}

//! The bytes and keys `bench fs` writes: a per-row pattern (checked after every load), the
//! keys of a key set, and seeded shuffles of the ceiling's offsets.

use kvtier_core::OffloadKey;

use super::BoxError;
use kvtier_fs::rng::SplitMix64;

/// Fills `buf` (a multiple of 8 bytes) with the pattern of `seed`.
pub(super) fn fill_pattern(buf: &mut [u8], seed: u64) {
    let mut rng = SplitMix64::new(seed);
    for word in buf.chunks_exact_mut(8) {
        word.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
}

/// The pattern seed of row `row` of key set `salt`.
pub(super) fn row_seed(salt: u64, row: u64) -> u64 {
    salt.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ row.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The key of block `i` of key set `salt`: a 32-byte hash (like vLLM's) in group 0.
pub(super) fn key(salt: u64, i: u64) -> Result<OffloadKey, BoxError> {
    let mut hash = [0u8; 32];
    let mut rng = SplitMix64::new(row_seed(salt, i));
    for chunk in hash.chunks_exact_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    Ok(OffloadKey::new(&hash, 0)?)
}

/// `0..n` in a seeded random order.
pub(super) fn shuffled(n: u64, seed: u64) -> Vec<u64> {
    let mut v: Vec<u64> = (0..n).collect();
    let mut rng = SplitMix64::new(seed);
    for i in (1..v.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

//! The operation stream and keys of `bench core`, built before any clock starts. Mirrored in
//! `cli/bench/vllm_cpu_model.py`: both sides derive the same stream from the same seed.

use kvtier_core::OffloadKey;

use kvtier_fs::rng::{mix64, SplitMix64};

/// Keys per `touch`, load and store call in the single-operation rows.
pub(super) const BATCH: usize = 16;
/// Blocks per request in the step mix.
pub(super) const REQUEST_BLOCKS: usize = 32;
/// Key-id namespaces (shared with the Python model): present/stored keys start at 0.
const MISS_BASE: u64 = 1 << 40;
const DOC_BASE: u64 = 2 << 40;
/// Phase numbers: each row draws from its own generator, seeded from (seed, phase).
pub(super) const PHASE_HIT: u64 = 1;
pub(super) const PHASE_MISS: u64 = 2;
pub(super) const PHASE_TOUCH: u64 = 3;
pub(super) const PHASE_LOAD: u64 = 4;
pub(super) const PHASE_MIX: u64 = 5;

fn phase_rng(seed: u64, phase: u64) -> SplitMix64 {
    SplitMix64::new(mix64(seed.wrapping_add(phase)))
}

/// `n` draws in `0..modulo` from the phase's generator.
pub(super) fn indices(seed: u64, phase: u64, n: usize, modulo: usize) -> Vec<u32> {
    let mut rng = phase_rng(seed, phase);
    (0..n).map(|_| (rng.next_u64() % modulo as u64) as u32).collect()
}

/// Key `id`: 32 hash bytes derived from it, then group 0 (36 bytes, as vLLM's keys).
pub(super) fn make_key(id: u64) -> OffloadKey {
    let m = mix64(id);
    let mut hash = [0u8; 32];
    for (chunk, word) in hash.chunks_exact_mut(8).zip([m, id, !m, !id]) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    OffloadKey::new(&hash, 0).expect("a 36-byte key is valid")
}

pub(super) fn num_docs(slots: usize) -> usize {
    (3 * slots / (2 * REQUEST_BLOCKS)).max(1)
}

pub(super) fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

/// Every key the Rust side uses, built before any clock starts.
pub(super) struct Workload {
    pub(super) slots: usize,
    /// Keys `0 .. 2 * slots`: the first `slots` fill the pool; all of them form the store ring.
    pub(super) table: Vec<OffloadKey>,
    /// Never-stored keys for `lookup_miss`.
    pub(super) miss: Vec<OffloadKey>,
    /// The mix's requests: document `d` is `docs[d * 32 .. (d + 1) * 32]`.
    pub(super) docs: Vec<OffloadKey>,
}

impl Workload {
    pub(super) fn new(slots: usize) -> Self {
        Workload {
            slots,
            table: (0..2 * slots as u64).map(make_key).collect(),
            miss: (0..slots as u64).map(|i| make_key(MISS_BASE + i)).collect(),
            docs: (0..(num_docs(slots) * REQUEST_BLOCKS) as u64).map(|i| make_key(DOC_BASE + i)).collect(),
        }
    }

    pub(super) fn request(&self, doc: usize) -> &[OffloadKey] {
        &self.docs[doc * REQUEST_BLOCKS..(doc + 1) * REQUEST_BLOCKS]
    }
}

/// Operation counts of one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Counts {
    pub(super) warm: usize,
    pub(super) ops: usize,
    pub(super) mix_warm: usize,
    pub(super) mix_steps: usize,
}

impl Counts {
    pub(super) fn new(ops: u64) -> Self {
        let ops = ops.max(1) as usize;
        let mix_steps = (ops / 20).max(1);
        // Enough warm-up that every reusable buffer has reached its size before the clock starts.
        Counts { warm: (ops / 10).max(1000), ops, mix_warm: (mix_steps / 10).max(100), mix_steps }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_and_keys_match_the_python_model() {
        // Reference values printed by cli/bench/vllm_cpu_model.py.
        assert_eq!(SplitMix64::new(0).next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(make_key(7).to_string(), "14df177b2330ae120700000000000000eb20e884dccf51edf8ffffffffffffff00000000");
        assert_eq!(
            make_key(DOC_BASE + 5).to_string(),
            "11ab62d845dd28d00500000000020000ee549d27ba22d72ffafffffffffdffff00000000"
        );
        assert_eq!(indices(42, PHASE_HIT, 5, 1000), [479, 422, 435, 91, 557]);
    }
}

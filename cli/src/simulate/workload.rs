//! The simulated chat workload: which requests arrive at which scheduler step, and the block
//! keys of their prompts and outputs.
//!
//! Multi-turn sessions share a few system prompts; each turn's prompt is the conversation so
//! far (system prompt, earlier user turns and answers) plus the new user message, so histories
//! grow turn by turn. Arrivals form a Poisson process in steps; each goes to a session picked
//! with Zipf popularity, and a session's next turn comes no sooner than its previous answer plus
//! a think time (an arrival that picks a busy session is passed on to another Zipf pick). A conversation that would outgrow the context limit starts over from its system
//! prompt (a new chat by the same user).
//!
//! Everything derives from the seed through [`SplitMix64`], and nothing here depends on what
//! the cache does, so the offloading run and the comparison run see the same requests.

use kvtier_core::OffloadKey;
use sha2::{Digest, Sha256};

use kvtier_fs::rng::{mix64, SplitMix64};

/// Tokens per KV block (vLLM's default block size).
pub const TOKENS_PER_BLOCK: u64 = 16;

/// Zipf distribution over ranks `0..n` (rank 0 the most popular): `P(k) ~ 1 / (k + 1)^s`.
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// `n` ranks (at least one) with exponent `s` (0 is uniform).
    pub fn new(n: usize, s: f64) -> Self {
        let mut cdf = Vec::with_capacity(n.max(1));
        let mut total = 0.0;
        for k in 0..n.max(1) {
            total += 1.0 / ((k + 1) as f64).powf(s);
            cdf.push(total);
        }
        cdf.iter_mut().for_each(|c| *c /= total);
        Zipf { cdf }
    }

    /// One rank.
    pub fn sample(&self, rng: &mut SplitMix64) -> usize {
        let u = rng.next_f64();
        self.cdf.partition_point(|&c| c <= u).min(self.cdf.len() - 1)
    }
}

/// The workload's shape. Ranges are inclusive, in blocks or steps.
#[derive(Debug, Clone)]
pub struct WorkloadParams {
    /// Seed of every random choice.
    pub seed: u64,
    /// Chat sessions (users).
    pub sessions: usize,
    /// Requests (turns) in total.
    pub requests: usize,
    /// Distinct system prompts shared by the sessions.
    pub system_prompts: usize,
    /// Zipf exponent of session popularity.
    pub zipf_s: f64,
    /// Mean arrivals per scheduler step.
    pub arrivals_per_step: f64,
    /// System prompt length, blocks.
    pub system_blocks: (u64, u64),
    /// User message length, blocks.
    pub user_blocks: (u64, u64),
    /// Answer length, blocks.
    pub output_blocks: (u64, u64),
    /// Think time between an answer and the next turn, steps.
    pub think_steps: (u64, u64),
    /// Longest conversation (prompt + answer), blocks; a longer one starts over.
    pub max_context_blocks: u64,
}

impl Default for WorkloadParams {
    fn default() -> Self {
        WorkloadParams {
            seed: 1,
            sessions: 64,
            requests: 800,
            system_prompts: 4,
            zipf_s: 1.0,
            arrivals_per_step: 0.5,
            system_blocks: (8, 40),
            user_blocks: (1, 6),
            output_blocks: (1, 8),
            think_steps: (10, 60),
            max_context_blocks: 128,
        }
    }
}

/// One request: a turn of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestSpec {
    /// Its id (index in [`Workload::requests`]; ids follow arrival order).
    pub id: usize,
    /// The session (0 is the most popular).
    pub session: usize,
    /// The conversation whose key list holds its blocks.
    pub conversation: usize,
    /// Prompt length, blocks: the first `prompt_blocks` keys of the conversation.
    pub prompt_blocks: usize,
    /// Answer length, blocks: the keys after the prompt. Decoding takes one step per block.
    pub output_blocks: usize,
    /// Scheduler step at which it arrives.
    pub arrival: u64,
    /// The session's previous request, which must finish first (a user reads the answer).
    pub prev: Option<usize>,
}

/// The generated workload.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Block keys of every conversation (each request's prompt and answer are a prefix of it).
    pub conversations: Vec<Vec<OffloadKey>>,
    /// Requests, in arrival order.
    pub requests: Vec<RequestSpec>,
}

/// Key of the block after `prev` (`None` at the start) holding `tokens`: a chained SHA-256, as
/// vLLM's prefix hashes, with group 0.
pub fn chain_key(prev: Option<&OffloadKey>, tokens: &[u32]) -> OffloadKey {
    let mut h = Sha256::new();
    if let Some(p) = prev {
        h.update(p.hash());
    }
    for t in tokens {
        h.update(t.to_le_bytes());
    }
    OffloadKey::new(&h.finalize(), 0).expect("a 32-byte hash makes a valid key")
}

/// Appends `n` blocks of pseudo-random tokens drawn from `stream` to `keys`.
fn extend_chain(keys: &mut Vec<OffloadKey>, n: u64, stream: u64) {
    let mut rng = SplitMix64::new(stream);
    let mut tokens = [0u32; TOKENS_PER_BLOCK as usize];
    for _ in 0..n {
        tokens.iter_mut().for_each(|t| *t = (rng.next_u64() % 128_256) as u32);
        let key = chain_key(keys.last(), &tokens);
        keys.push(key);
    }
}

impl Workload {
    /// Generates the workload of `p` (deterministic in `p`).
    pub fn generate(p: &WorkloadParams) -> Workload {
        let sessions = p.sessions.max(1);
        let mut rng = SplitMix64::new(p.seed);
        let zipf = Zipf::new(sessions, p.zipf_s);
        let stream = |parts: &[u64]| parts.iter().fold(mix64(p.seed ^ 0x6b76_7469_6572), |a, &x| mix64(a ^ x));

        let system: Vec<Vec<OffloadKey>> = (0..p.system_prompts.max(1) as u64)
            .map(|i| {
                let mut keys = Vec::new();
                extend_chain(&mut keys, rng.range(p.system_blocks.0, p.system_blocks.1), stream(&[1, i]));
                keys
            })
            .collect();
        let prompt_of: Vec<usize> = (0..sessions).map(|_| rng.range(0, system.len() as u64 - 1) as usize).collect();

        let mut conversations: Vec<Vec<OffloadKey>> = Vec::new();
        let mut current: Vec<Option<usize>> = vec![None; sessions];
        let mut free_at = vec![0u64; sessions];
        let mut last: Vec<Option<usize>> = vec![None; sessions];
        let mut requests = Vec::with_capacity(p.requests);
        let rate = p.arrivals_per_step.max(1e-6);
        let mut clock = 0.0f64;
        for n in 0..p.requests {
            clock += -(1.0 - rng.next_f64()).ln() / rate;
            // A user waits for the answer and thinks before the next turn: a busy session passes
            // the arrival on to another one (Zipf again), so popular sessions are busy, not
            // backlogged far past the end of the arrivals.
            let now = clock as u64;
            let mut s = zipf.sample(&mut rng);
            for _ in 0..32 {
                if free_at[s] <= now {
                    break;
                }
                let t = zipf.sample(&mut rng);
                if free_at[t] < free_at[s] {
                    s = t;
                }
            }
            let user = rng.range(p.user_blocks.0, p.user_blocks.1);
            let output = rng.range(p.output_blocks.0, p.output_blocks.1);
            let think = rng.range(p.think_steps.0, p.think_steps.1);
            let fits = |c: usize| (conversations[c].len() as u64 + user + output) <= p.max_context_blocks;
            let conv = match current[s] {
                Some(c) if fits(c) => c,
                _ => {
                    conversations.push(system[prompt_of[s]].clone());
                    current[s] = Some(conversations.len() - 1);
                    conversations.len() - 1
                }
            };
            let keys = &mut conversations[conv];
            extend_chain(keys, user, stream(&[2, n as u64]));
            let prompt_blocks = keys.len();
            extend_chain(keys, output, stream(&[3, n as u64]));
            let arrival = (clock as u64).max(free_at[s]);
            free_at[s] = arrival + output + think;
            requests.push(RequestSpec {
                id: n,
                session: s,
                conversation: conv,
                prompt_blocks,
                output_blocks: output as usize,
                arrival,
                prev: last[s],
            });
            last[s] = Some(n);
        }
        // Arrival order; ids are renumbered so they follow it.
        requests.sort_by_key(|r| (r.arrival, r.id));
        let mut new_id = vec![0; requests.len()];
        for (i, r) in requests.iter().enumerate() {
            new_id[r.id] = i;
        }
        for (i, r) in requests.iter_mut().enumerate() {
            r.id = i;
            r.prev = r.prev.map(|p| new_id[p]);
        }
        Workload { conversations, requests }
    }

    /// The prompt's block keys of `r`.
    pub fn prompt(&self, r: &RequestSpec) -> &[OffloadKey] {
        &self.conversations[r.conversation][..r.prompt_blocks]
    }

    /// The answer's block keys of `r`.
    pub fn output(&self, r: &RequestSpec) -> &[OffloadKey] {
        &self.conversations[r.conversation][r.prompt_blocks..r.prompt_blocks + r.output_blocks]
    }

    /// Prompt blocks over all requests.
    pub fn prompt_blocks(&self) -> u64 {
        self.requests.iter().map(|r| r.prompt_blocks as u64).sum()
    }

    /// Distinct blocks (prompt or answer) over all requests: the working set.
    pub fn unique_blocks(&self) -> u64 {
        let mut keys: Vec<&OffloadKey> = self.conversations.iter().flatten().collect();
        keys.sort_unstable();
        keys.dedup();
        keys.len() as u64
    }

    /// Longest request (prompt + answer), blocks.
    pub fn max_request_blocks(&self) -> usize {
        self.requests.iter().map(|r| r.prompt_blocks + r.output_blocks).max().unwrap_or(0)
    }
}

/// Fills `buf` with the deterministic content of block `key` (what the "GPU" computes).
pub fn fill_block(key: &OffloadKey, buf: &mut [u8]) {
    let seed = block_seed(key);
    let n = buf.len() / 8;
    let mut words = buf.chunks_exact_mut(8);
    for (i, w) in (&mut words).enumerate() {
        w.copy_from_slice(&word(seed, i).to_le_bytes());
    }
    let rest = words.into_remainder();
    let tail = word(seed, n).to_le_bytes();
    rest.copy_from_slice(&tail[..rest.len()]);
}

/// Bytes of `buf` that differ from block `key`'s content (0 when intact).
pub fn count_mismatches(key: &OffloadKey, buf: &[u8]) -> u64 {
    let seed = block_seed(key);
    let mut bad = 0u64;
    let words = buf.chunks_exact(8);
    let rest = words.remainder();
    for (i, w) in words.enumerate() {
        let expect = word(seed, i).to_le_bytes();
        if w != expect {
            bad += w.iter().zip(expect).filter(|(a, b)| **a != *b).count() as u64;
        }
    }
    let tail = word(seed, buf.len() / 8).to_le_bytes();
    bad + rest.iter().zip(tail).filter(|(a, b)| **a != *b).count() as u64
}

fn block_seed(key: &OffloadKey) -> u64 {
    key.as_bytes().iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

#[inline]
fn word(seed: u64, i: usize) -> u64 {
    // One xor-shift-multiply round: cheap enough to fill at memory speed, and nonlinear, so two
    // blocks' contents differ in (nearly) every byte, not in a fixed bit pattern.
    let x = seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (x ^ (x >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> WorkloadParams {
        WorkloadParams { seed: 7, sessions: 16, requests: 300, ..WorkloadParams::default() }
    }

    #[test]
    fn same_seed_same_workload_other_seed_other() {
        let a = Workload::generate(&small());
        let b = Workload::generate(&small());
        assert_eq!(a.requests, b.requests);
        assert_eq!(a.conversations.len(), b.conversations.len());
        for (x, y) in a.conversations.iter().zip(&b.conversations) {
            assert_eq!(x, y);
        }
        let c = Workload::generate(&WorkloadParams { seed: 8, ..small() });
        assert_ne!(a.conversations[0], c.conversations[0]);
    }

    #[test]
    fn requests_are_well_formed() {
        let p = small();
        let w = Workload::generate(&p);
        assert_eq!(w.requests.len(), p.requests);
        let mut last_arrival = 0;
        for (i, r) in w.requests.iter().enumerate() {
            assert_eq!(r.id, i);
            assert!(r.arrival >= last_arrival, "arrival order");
            last_arrival = r.arrival;
            assert!(r.output_blocks >= 1);
            assert!((r.prompt_blocks + r.output_blocks) as u64 <= p.max_context_blocks);
            assert_eq!(w.prompt(r).len(), r.prompt_blocks);
            if let Some(prev) = r.prev {
                let q = &w.requests[prev];
                assert!(prev < i && q.session == r.session);
                assert!(r.arrival >= q.arrival + q.output_blocks as u64 + p.think_steps.0);
                // The same conversation continues: the previous prompt and answer are a prefix.
                if q.conversation == r.conversation {
                    assert!(r.prompt_blocks > q.prompt_blocks + q.output_blocks);
                }
            }
        }
        // System prompts are shared: far fewer distinct first blocks than conversations.
        let mut firsts: Vec<_> = w.conversations.iter().map(|c| c[0]).collect();
        firsts.sort_unstable();
        firsts.dedup();
        assert!(firsts.len() <= p.system_prompts);
        assert!(w.unique_blocks() < w.prompt_blocks());
    }

    #[test]
    fn zipf_shape() {
        let z = Zipf::new(32, 1.0);
        let mut rng = SplitMix64::new(3);
        let mut counts = [0u32; 32];
        for _ in 0..200_000 {
            counts[z.sample(&mut rng)] += 1;
        }
        // P(k) ~ 1/(k+1): rank 0 twice rank 1, four times rank 3, and so on.
        let ratio = |a: usize, b: usize| f64::from(counts[a]) / f64::from(counts[b]);
        assert!((ratio(0, 1) - 2.0).abs() < 0.1, "{counts:?}");
        assert!((ratio(0, 3) - 4.0).abs() < 0.25, "{counts:?}");
        assert!(counts.windows(2).take(8).all(|w| w[0] > w[1]), "{counts:?}");
        assert!(counts[31] > 0);
        let uniform = Zipf::new(4, 0.0);
        let mut c = [0u32; 4];
        for _ in 0..40_000 {
            c[uniform.sample(&mut rng)] += 1;
        }
        assert!(c.iter().all(|&n| (9_000..11_000).contains(&n)), "{c:?}");
    }

    #[test]
    fn block_content_detects_wrong_bytes() {
        let k = chain_key(None, &[1, 2, 3]);
        let other = chain_key(Some(&k), &[4]);
        let mut buf = vec![0u8; 4099];
        fill_block(&k, &mut buf);
        assert_eq!(count_mismatches(&k, &buf), 0);
        assert!(count_mismatches(&other, &buf) > 4000);
        buf[4098] ^= 1;
        buf[17] ^= 0xff;
        assert_eq!(count_mismatches(&k, &buf), 2);
    }
}

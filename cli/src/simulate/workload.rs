//! What the simulated engine serves: requests with arrival times (virtual seconds), prompt and
//! answer lengths in tokens and the keys of their full blocks ([`Workload`]), from the built-in
//! multi-turn chat workload ([`Workload::chat`]) or a trace file (`super::trace`); and the
//! deterministic content of every block ([`fill_block`], [`count_mismatches`]).
//!
//! Everything derives from the seed (or the trace) through [`SplitMix64`], and nothing here
//! depends on what the cache does, so every configuration of a run sees the same requests.

use std::collections::HashMap;

use kvtier_core::OffloadKey;
use sha2::{Digest, Sha256};

use kvtier_fs::rng::{mix64, SplitMix64};

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

/// The chat workload's shape. Ranges are inclusive: lengths in blocks, times in seconds.
#[derive(Debug, Clone)]
pub struct ChatParams {
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
    /// Mean arrivals per second (Poisson).
    pub rate: f64,
    /// Tokens per block.
    pub block_tokens: u64,
    /// System prompt length, blocks.
    pub system_blocks: (u64, u64),
    /// User message length, blocks.
    pub user_blocks: (u64, u64),
    /// Answer length, blocks.
    pub output_blocks: (u64, u64),
    /// Think time between an answer's arrival and the next turn, seconds (the answer's own
    /// decoding time is not known here: a turn also waits for its predecessor to finish).
    pub think_s: (f64, f64),
    /// Longest conversation (prompt + answer), blocks; a longer one starts over.
    pub max_context_blocks: u64,
}

impl Default for ChatParams {
    fn default() -> Self {
        ChatParams {
            seed: 1,
            sessions: 64,
            requests: 600,
            system_prompts: 4,
            zipf_s: 1.0,
            rate: 10.0,
            block_tokens: 16,
            system_blocks: (8, 40),
            user_blocks: (1, 6),
            output_blocks: (1, 8),
            think_s: (1.0, 6.0),
            max_context_blocks: 128,
        }
    }
}

/// One request, as the simulated engine serves it.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Arrival, seconds of virtual time.
    pub arrival: f64,
    /// The prompt's full blocks, as indices into [`Workload::keys`]. Only full blocks are
    /// cacheable (as in vLLM); the prompt's last `prompt_tokens % block_tokens` tokens are
    /// always computed.
    pub prompt: Vec<u32>,
    /// Prompt length, tokens (at least `prompt.len() x block_tokens`).
    pub prompt_tokens: u64,
    /// Answer length, tokens (at least 1: the first one is what prefill produces).
    pub output_tokens: u64,
    /// Blocks of the answer stored once it is complete (a chat's next turn reuses them); empty
    /// for traces, whose next turn names its own blocks.
    pub output: Vec<u32>,
    /// A request that must finish first (the previous turn of a chat session).
    pub prev: Option<usize>,
}

/// Requests in arrival order and the keys of their blocks.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Every distinct block's key.
    pub keys: Vec<OffloadKey>,
    /// Requests, in arrival order.
    pub requests: Vec<Request>,
    /// Tokens per block.
    pub block_tokens: u64,
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
    let mut tokens = [0u32; 16];
    for _ in 0..n {
        tokens.iter_mut().for_each(|t| *t = (rng.next_u64() % 128_256) as u32);
        let key = chain_key(keys.last(), &tokens);
        keys.push(key);
    }
}

struct Turn {
    session: usize,
    conversation: usize,
    prompt_blocks: usize,
    output_blocks: usize,
    arrival: f64,
    prev: Option<usize>,
}

impl Workload {
    /// The requests `n` inference servers behind a session-affine router serve: a request goes
    /// where the previous turn of its session went; a request that starts a session (every
    /// request of a trace) goes to the next server in turn. Each part keeps every key (indices
    /// stay valid) and its requests in arrival order, their `prev` renumbered.
    pub fn split(&self, n: usize) -> Vec<Workload> {
        let n = n.max(1);
        let mut parts: Vec<Workload> = (0..n)
            .map(|_| Workload { keys: self.keys.clone(), requests: Vec::new(), block_tokens: self.block_tokens })
            .collect();
        // Server and index there of each request.
        let mut placed: Vec<(usize, usize)> = Vec::with_capacity(self.requests.len());
        let mut turn = 0;
        for r in &self.requests {
            let server = match r.prev {
                Some(p) => placed[p].0,
                None => {
                    turn += 1;
                    (turn - 1) % n
                }
            };
            let mut r = r.clone();
            r.prev = r.prev.map(|p| placed[p].1);
            placed.push((server, parts[server].requests.len()));
            parts[server].requests.push(r);
        }
        parts
    }

    /// The multi-turn chat workload of `p` (deterministic in `p`).
    ///
    /// Multi-turn sessions share a few system prompts; each turn's prompt is the conversation so
    /// far (system prompt, earlier user turns and answers) plus the new user message, so histories
    /// grow turn by turn. Arrivals form a Poisson process; each goes to a session picked with Zipf
    /// popularity, and a session's next turn comes no sooner than a think time after its previous
    /// one (an arrival that picks a busy session is passed on to another Zipf pick; the driver
    /// also holds a turn until its predecessor finished). A conversation that would outgrow the
    /// context limit starts over from its system prompt (a new chat by the same user).
    pub fn chat(p: &ChatParams) -> Workload {
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
        let mut free_at = vec![0f64; sessions];
        let mut last: Vec<Option<usize>> = vec![None; sessions];
        let mut turns = Vec::with_capacity(p.requests);
        let rate = p.rate.max(1e-9);
        let mut clock = 0.0f64;
        let think = |rng: &mut SplitMix64| p.think_s.0 + rng.next_f64() * (p.think_s.1 - p.think_s.0).max(0.0);
        for n in 0..p.requests {
            clock += -(1.0 - rng.next_f64()).ln() / rate;
            // A user waits for the answer and thinks before the next turn: a busy session passes
            // the arrival on to another one (Zipf again), so popular sessions are busy, not
            // backlogged far past the end of the arrivals.
            let mut s = zipf.sample(&mut rng);
            for _ in 0..32 {
                if free_at[s] <= clock {
                    break;
                }
                let t = zipf.sample(&mut rng);
                if free_at[t] < free_at[s] {
                    s = t;
                }
            }
            let user = rng.range(p.user_blocks.0, p.user_blocks.1);
            let output = rng.range(p.output_blocks.0, p.output_blocks.1);
            let pause = think(&mut rng);
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
            let arrival = clock.max(free_at[s]);
            free_at[s] = arrival + pause;
            turns.push(Turn {
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
        let mut order: Vec<usize> = (0..turns.len()).collect();
        order.sort_by(|&a, &b| turns[a].arrival.total_cmp(&turns[b].arrival).then(a.cmp(&b)));
        let mut new_id = vec![0; turns.len()];
        for (i, &t) in order.iter().enumerate() {
            new_id[t] = i;
        }
        let mut index: HashMap<OffloadKey, u32> = HashMap::new();
        let mut keys: Vec<OffloadKey> = Vec::new();
        let mut intern = |k: &OffloadKey| {
            *index.entry(*k).or_insert_with(|| {
                keys.push(*k);
                (keys.len() - 1) as u32
            })
        };
        let bt = p.block_tokens.max(1);
        let requests = order
            .iter()
            .map(|&t| {
                let turn = &turns[t];
                debug_assert!(turn.prev.is_none_or(|q| turns[q].session == turn.session));
                let conv = &conversations[turn.conversation];
                let end = turn.prompt_blocks + turn.output_blocks;
                Request {
                    arrival: turn.arrival,
                    prompt: conv[..turn.prompt_blocks].iter().map(&mut intern).collect(),
                    prompt_tokens: turn.prompt_blocks as u64 * bt,
                    output_tokens: turn.output_blocks as u64 * bt,
                    output: conv[turn.prompt_blocks..end].iter().map(&mut intern).collect(),
                    prev: turn.prev.map(|q| new_id[q]),
                }
            })
            .collect();
        Workload { keys, requests, block_tokens: bt }
    }

    /// The key of block `i`.
    pub fn key(&self, i: u32) -> &OffloadKey {
        &self.keys[i as usize]
    }

    /// Full prompt blocks over all requests.
    pub fn prompt_blocks(&self) -> u64 {
        self.requests.iter().map(|r| r.prompt.len() as u64).sum()
    }

    /// Prompt tokens over all requests.
    pub fn prompt_tokens(&self) -> u64 {
        self.requests.iter().map(|r| r.prompt_tokens).sum()
    }

    /// Distinct blocks (prompt or answer) over all requests: the working set.
    pub fn unique_blocks(&self) -> u64 {
        self.keys.len() as u64
    }

    /// GPU blocks request `r` needs at once: its prompt and answer, whole blocks.
    pub fn request_blocks(&self, r: &Request) -> usize {
        (r.prompt_tokens + r.output_tokens).div_ceil(self.block_tokens) as usize
    }

    /// Longest request (prompt + answer), blocks.
    pub fn max_request_blocks(&self) -> usize {
        self.requests.iter().map(|r| self.request_blocks(r)).max().unwrap_or(0)
    }

    /// Seconds from the first arrival to the last.
    pub fn arrival_span(&self) -> f64 {
        match (self.requests.first(), self.requests.last()) {
            (Some(a), Some(b)) => b.arrival - a.arrival,
            _ => 0.0,
        }
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

    #[test]
    fn split_keeps_sessions_on_one_server() {
        let wl = Workload::chat(&ChatParams { requests: 200, sessions: 12, ..small() });
        let parts = wl.split(3);
        assert_eq!(parts.iter().map(|p| p.requests.len()).sum::<usize>(), 200);
        for p in &parts {
            assert!(!p.requests.is_empty());
            assert!(p.requests.windows(2).all(|w| w[0].arrival <= w[1].arrival), "arrival order");
            for (i, r) in p.requests.iter().enumerate() {
                if let Some(prev) = r.prev {
                    // The session's previous turn is on the same server, earlier.
                    assert!(prev < i && p.requests[prev].arrival <= r.arrival);
                }
            }
        }
        // Every turn that follows another is where that one went.
        let followers: usize = wl.requests.iter().filter(|r| r.prev.is_some()).count();
        assert_eq!(parts.iter().flat_map(|p| &p.requests).filter(|r| r.prev.is_some()).count(), followers);
        assert_eq!(wl.split(1)[0].requests, wl.requests);
    }

    fn small() -> ChatParams {
        ChatParams { seed: 7, sessions: 16, requests: 300, ..ChatParams::default() }
    }

    #[test]
    fn same_seed_same_workload_other_seed_other() {
        let a = Workload::chat(&small());
        let b = Workload::chat(&small());
        assert_eq!(a.requests, b.requests);
        assert_eq!(a.keys.len(), b.keys.len());
        assert!(a.keys.iter().zip(&b.keys).all(|(x, y)| x == y));
        let c = Workload::chat(&ChatParams { seed: 8, ..small() });
        assert_ne!(a.keys[0], c.keys[0]);
    }

    #[test]
    fn requests_are_well_formed() {
        let p = small();
        let w = Workload::chat(&p);
        assert_eq!(w.requests.len(), p.requests);
        let mut last_arrival = 0.0;
        for (i, r) in w.requests.iter().enumerate() {
            assert!(r.arrival >= last_arrival, "arrival order");
            last_arrival = r.arrival;
            assert!(r.output_tokens >= p.block_tokens);
            assert_eq!(r.prompt_tokens, r.prompt.len() as u64 * p.block_tokens);
            assert_eq!(r.output_tokens, r.output.len() as u64 * p.block_tokens);
            assert!((r.prompt.len() + r.output.len()) as u64 <= p.max_context_blocks);
            if let Some(prev) = r.prev {
                let q = &w.requests[prev];
                assert!(prev < i);
                assert!(r.arrival >= q.arrival + p.think_s.0);
                // The same conversation continues: the previous prompt and answer are a prefix.
                if r.prompt.starts_with(&q.prompt) {
                    assert!(r.prompt[q.prompt.len()..].starts_with(&q.output));
                }
            }
        }
        // System prompts are shared: far fewer distinct first blocks than requests.
        let mut firsts: Vec<_> = w.requests.iter().map(|r| r.prompt[0]).collect();
        firsts.sort_unstable();
        firsts.dedup();
        assert!(firsts.len() <= p.system_prompts);
        assert!(w.unique_blocks() < w.prompt_blocks());
        let mut continued =
            w.requests.iter().filter(|r| r.prev.is_some_and(|q| r.prompt.starts_with(&w.requests[q].prompt)));
        assert!(continued.next().is_some(), "conversations continue");
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

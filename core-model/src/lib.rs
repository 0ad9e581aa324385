//! # kvtier-core-model
//!
//! Model-based testing support for `kvtier-core` (an unpublished crate): the [`Op`] enum that
//! names every engine call, a byte decoder for fuzz targets, a naive **oracle** written straight
//! from `SEMANTICS.md`, and drivers that apply each op to the real engine (or pool) and to the
//! oracle and compare everything after every step. The proptest model tests (`tests/model.rs`)
//! and the fuzz target `engine_ops` use it.
//!
//! The oracle ([`PoolModel`], [`EngineModel`]) is deliberately plain: slots in a `Vec`, recency
//! lists as `Vec`s of keys scanned linearly, ARC's target as an `f64`, tiers as sets of keys
//! with failure counters and report queues, its own job-id counter and step/deadline logic. It
//! lives in its own crate so that the compiler enforces what makes agreement between the two
//! evidence rather than tautology: it sees only `kvtier-core`'s public API, and shares no code
//! with the implementation except the public value types (keys, results, errors, stats).
//!
//! The secondary tiers under test are [`ScriptedTier`]s: a [`kvtier_core::MemoryTier`] (presence
//! only) behind a thin wrapper that logs every submitted job, so the driver can compare job
//! ids, requests, keys and slots, and that can be scripted by the op stream to hold its reports
//! back (late completions, promotion deadlines), answer lookups "busy", fail some keys of a
//! load (partial success), report jobs the engine never issued (protocol errors) or forget
//! reports at shutdown. Without those ops it behaves exactly like a bare memory tier.
//!
//! Entry points: [`check`] (engine), [`check_pool`] (a [`kvtier_core::PrimaryPool`] alone),
//! [`Harness`] for op-by-op driving, [`Scenario::decode`] for fuzz targets.
//!
//! Like the core it is `#![no_std]` (with `alloc`) and contains no `unsafe`.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::std_instead_of_core, clippy::alloc_instead_of_core)]

extern crate alloc;

mod driver;
mod engine_model;
mod pool_model;
mod scripted_tier;

use alloc::vec::Vec;

pub use driver::{check, check_pool, Coverage, Harness, Mismatch, PoolHarness};
pub use engine_model::{EngineModel, TierModel};
pub use pool_model::{ArcModel, ModelEvent, ModelPlan, OrderModel, PoolModel};
pub use scripted_tier::{ScriptedTier, SubmittedJob};

use kvtier_core::{Direction, OffloadKey, PolicyKind};

/// One engine call (or one scripted tier action). Keys are indices into the scenario's key
/// table (taken modulo its length), so repeats and collisions are frequent; tiers are taken
/// modulo the number of tiers (tier ops do nothing without tiers); requests are small ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `lookup(key, req)`.
    Lookup {
        /// Key index.
        key: u8,
        /// Request id.
        req: u8,
    },
    /// `prepare_store(keys, req)`.
    PrepareStore {
        /// Key indices.
        keys: Vec<u8>,
        /// Request id.
        req: u8,
    },
    /// `complete_store(keys, req, success)`.
    CompleteStore {
        /// Key indices.
        keys: Vec<u8>,
        /// Request id.
        req: u8,
        /// The GPU copy succeeded.
        success: bool,
    },
    /// `complete_store` of the keys of the oldest successful, non-empty `prepare_store` plan
    /// that no `CompleteStored` has completed yet (what a scheduler does), so that stores
    /// actually complete; an empty key list when there is none.
    CompleteStored {
        /// Request id.
        req: u8,
        /// The GPU copy succeeded.
        success: bool,
    },
    /// `prepare_load(keys, req)`.
    PrepareLoad {
        /// Key indices.
        keys: Vec<u8>,
        /// Request id.
        req: u8,
    },
    /// `complete_load(keys, req)`.
    CompleteLoad {
        /// Key indices.
        keys: Vec<u8>,
        /// Request id.
        req: u8,
    },
    /// `complete_load` of the key list of the oldest successful `prepare_load` that no
    /// `CompleteLoaded` has released yet; an empty key list when there is none.
    CompleteLoaded {
        /// Request id.
        req: u8,
    },
    /// `touch(keys, req)`.
    Touch {
        /// Key indices.
        keys: Vec<u8>,
        /// Request id.
        req: u8,
    },
    /// `end_step()`.
    EndStep,
    /// `take_events()`.
    TakeEvents,
    /// `drain()` (for scripted tiers: releases held reports).
    Drain,
    /// The next job of `kind` on `tier` fails as a whole (`MemoryTier::fail_next`).
    TierFailNext {
        /// Tier index.
        tier: u8,
        /// Load or store.
        kind: Direction,
    },
    /// Makes `keys` present in `tier` (`MemoryTier::insert`).
    TierInsert {
        /// Tier index.
        tier: u8,
        /// Key indices.
        keys: Vec<u8>,
    },
    /// Scripted: `tier` holds its reports back (`true`) or delivers them at polls again.
    TierHold {
        /// Tier index.
        tier: u8,
        /// Hold or release.
        hold: bool,
    },
    /// Scripted: `tier` answers every lookup `Busy` (`true`) or normally.
    TierBusy {
        /// Tier index.
        tier: u8,
        /// Busy or not.
        busy: bool,
    },
    /// Scripted: from now on, loads of these keys from `tier` fail key by key (partial
    /// success); replaces the previous set (an empty list clears it).
    TierLose {
        /// Tier index.
        tier: u8,
        /// Key indices.
        keys: Vec<u8>,
    },
    /// Scripted: `tier` reports job `next_job + 1 - back` finished (0 and 1 name jobs never
    /// issued, 2 the last one issued, ...), whoever owns it.
    TierReport {
        /// Tier index.
        tier: u8,
        /// Distance back from the next job id.
        back: u8,
        /// The reported outcome.
        success: bool,
    },
    /// Scripted: at shutdown, `tier` forgets the reports it still holds (the engine must fail
    /// those jobs itself).
    TierForget {
        /// Tier index.
        tier: u8,
    },
    /// `shutdown()`.
    Shutdown,
}

/// Pops one byte.
fn byte(input: &mut &[u8]) -> Option<u8> {
    let (&b, rest) = input.split_first()?;
    *input = rest;
    Some(b)
}

/// A key list: a length byte (0 to 5) then that many key indices.
fn key_list(input: &mut &[u8]) -> Option<Vec<u8>> {
    let n = byte(input)? % 6;
    (0..n).map(|_| byte(input)).collect()
}

impl Op {
    /// Decodes one op from the front of `input` (for fuzz targets and seeded runs), advancing
    /// it; `None` when the input runs out. The first byte picks the kind with weights that
    /// keep lookups, stores and steps common; scripted tier actions and `Shutdown` are rare.
    pub fn decode(input: &mut &[u8]) -> Option<Op> {
        let tag = byte(input)?;
        let req = |input: &mut &[u8]| byte(input).map(|b| b % 4);
        let op = match tag % 64 {
            0..=11 => Op::Lookup { key: byte(input)?, req: req(input)? },
            12..=19 => Op::PrepareStore { keys: key_list(input)?, req: req(input)? },
            20..=22 => Op::CompleteStore { keys: key_list(input)?, req: req(input)?, success: byte(input)? % 4 != 0 },
            23..=28 => Op::CompleteStored { req: req(input)?, success: byte(input)? % 4 != 0 },
            29..=32 => Op::PrepareLoad { keys: key_list(input)?, req: req(input)? },
            33..=34 => Op::CompleteLoad { keys: key_list(input)?, req: req(input)? },
            35..=37 => Op::CompleteLoaded { req: req(input)? },
            38..=41 => Op::Touch { keys: key_list(input)?, req: req(input)? },
            42..=48 => Op::EndStep,
            49..=50 => Op::TakeEvents,
            51 => Op::Drain,
            52..=53 => {
                let tier = byte(input)?;
                let kind = if byte(input)? % 2 == 0 { Direction::Load } else { Direction::Store };
                Op::TierFailNext { tier, kind }
            }
            54..=55 => Op::TierInsert { tier: byte(input)?, keys: key_list(input)? },
            56..=57 => Op::TierHold { tier: byte(input)?, hold: byte(input)? % 3 != 0 },
            58 => Op::TierBusy { tier: byte(input)?, busy: byte(input)? % 3 == 0 },
            59 => Op::TierLose { tier: byte(input)?, keys: key_list(input)? },
            60..=61 => Op::TierReport { tier: byte(input)?, back: byte(input)? % 8, success: byte(input)? % 2 == 0 },
            62 => Op::TierForget { tier: byte(input)? },
            _ => {
                if byte(input)? == 0xff {
                    Op::Shutdown
                } else {
                    Op::EndStep
                }
            }
        };
        Some(op)
    }

    /// Decodes ops until `input` runs out.
    pub fn decode_all(mut input: &[u8]) -> Vec<Op> {
        let mut ops = Vec::new();
        while let Some(op) = Op::decode(&mut input) {
            ops.push(op);
        }
        ops
    }

    /// True for the ops that only a [`ScriptedTier`] gives meaning to (held reports, busy
    /// lookups, lost keys, bogus reports, forgetting): generators leave them out to test a
    /// plain memory tier.
    pub fn is_scripted(&self) -> bool {
        matches!(
            self,
            Op::TierHold { .. }
                | Op::TierBusy { .. }
                | Op::TierLose { .. }
                | Op::TierReport { .. }
                | Op::TierForget { .. }
        )
    }
}

/// What is under test: the policy, the number of primary slots, the number of secondary
/// (scripted memory) tiers, and the promotion deadline in steps (0 disables it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// LRU or ARC.
    pub policy: PolicyKind,
    /// Primary slots.
    pub num_slots: u32,
    /// Secondary tiers.
    pub n_tiers: usize,
    /// `promotion_deadline_steps`.
    pub deadline: u32,
}

/// A complete test input: configuration, key table and ops.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The configuration.
    pub config: Config,
    /// The key table the ops index into.
    pub keys: Vec<OffloadKey>,
    /// The calls.
    pub ops: Vec<Op>,
}

impl Scenario {
    /// A scenario from raw bytes (fuzz targets): two header bytes choose the policy, 1 to 8
    /// slots, 0 to 2 tiers and a deadline of 0 to 3 steps; the key table is
    /// [`default_keys`]`(12)`; the rest decodes into ops. `None` without a header.
    pub fn decode(bytes: &[u8]) -> Option<Scenario> {
        let (&a, rest) = bytes.split_first()?;
        let (&b, rest) = rest.split_first()?;
        let config = Config {
            policy: if a & 1 == 0 { PolicyKind::Lru } else { PolicyKind::Arc },
            num_slots: 1 + u32::from((a >> 1) % 8),
            n_tiers: usize::from(b % 3),
            deadline: u32::from((b / 3) % 4),
        };
        Some(Scenario { config, keys: default_keys(12), ops: Op::decode_all(rest) })
    }

    /// Runs the scenario through [`check`].
    pub fn check(&self) -> Result<(), Mismatch> {
        check(&self.config, &self.keys, &self.ops)
    }
}

/// `n` distinct keys whose hash parts are 1 to 32 bytes long, with near neighbours (equal bytes
/// of other lengths, equal hashes of other groups).
pub fn default_keys(n: usize) -> Vec<OffloadKey> {
    const LENS: [usize; 12] = [1, 2, 3, 4, 5, 8, 13, 16, 21, 31, 32, 1];
    (0..n)
        .map(|i| {
            let len = LENS[i % LENS.len()];
            let fill = (i / 2) as u8;
            let hash: Vec<u8> = (0..len).map(|_| fill).collect();
            OffloadKey::new(&hash, (i % 2) as u32 + 2 * (i / LENS.len()) as u32).expect("short hash")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_keys_are_distinct() {
        let keys = default_keys(40);
        for (i, a) in keys.iter().enumerate() {
            assert!((1..=32).contains(&a.hash().len()));
            for b in &keys[..i] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn decode_consumes_and_stops() {
        let ops = Op::decode_all(&[0, 3, 1, 12, 2, 4, 5, 0, 42]);
        assert_eq!(
            ops,
            [Op::Lookup { key: 3, req: 1 }, Op::PrepareStore { keys: alloc::vec![4, 5], req: 0 }, Op::EndStep]
        );
        assert_eq!(Op::decode(&mut &[12u8, 3, 1][..]), None, "truncated key list");
        let all: Vec<Op> = (0..=255u8).filter_map(|t| Op::decode(&mut &[t, 0xff, 1, 1, 1, 1, 1, 1, 1][..])).collect();
        assert_eq!(all.len(), 256);
        assert!(all.contains(&Op::Shutdown));
    }

    /// A quick seeded run of the fuzz entry point, so that the unit tests alone (without the
    /// proptest runs of `tests/model.rs`) already compare engine and oracle.
    #[test]
    fn seeded_scenarios_agree() {
        let mut x: u64 = 0x6b76_7469_6572;
        // Miri interprets every step of the oracle comparison: fewer, shorter scenarios there.
        let (scenarios, len) = if cfg!(miri) { (3, 240) } else { (64, 600) };
        let mut bytes = alloc::vec![0u8; len];
        for _ in 0..scenarios {
            for b in bytes.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = (x >> 24) as u8;
            }
            let scenario = Scenario::decode(&bytes).unwrap();
            if let Err(m) = scenario.check() {
                panic!("{:?}: {m}", scenario.config);
            }
        }
    }

    #[test]
    fn scenario_decodes_header() {
        let s = Scenario::decode(&[0b11, 5]).unwrap();
        assert_eq!(s.config, Config { policy: PolicyKind::Arc, num_slots: 2, n_tiers: 2, deadline: 1 });
        assert!(s.ops.is_empty());
        assert!(Scenario::decode(&[1]).is_none());
    }
}

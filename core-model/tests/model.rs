//! Model-based tests: random op sequences applied to the real pool / engine and to the naive
//! oracle of `kvtier_core_model`, compared after every op (outputs, full state, events,
//! submitted jobs, invariants).
//!
//! - `pool_lru`, `pool_arc`: a `PrimaryPool` alone against the oracle's pool.
//! - `engine_lru`, `engine_arc`: the engine with 0, 1 or 2 memory tiers, injected whole-job
//!   failures (`TierFailNext`), `TierInsert`, deadlines 0 to 3, and sometimes a `Shutdown`
//!   in the middle (the calls after it must be refused).
//! - `engine_lru_scripted`, `engine_arc_scripted`: the same with 1 or 2 tiers that are also
//!   scripted to hold their reports back (late promotions, so deadlines matter), answer
//!   lookups busy, fail single keys of a load, report bogus job ids and forget reports at
//!   shutdown.
//! - `long_random_run`: one deterministic run of 20 000 ops per configuration from a `u64`
//!   seed (xorshift, ops decoded with `Op::decode`): it prints `seed = N`; set `KVTIER_SEED=N`
//!   to replay it (and `KVTIER_LONG_OPS` to change the length).
//!
//! Failures replay from proptest-regressions; set PROPTEST_CASES to run more. (Failing cases
//! are persisted to `core-model/proptest-regressions/model.txt` and replayed first on every
//! run; proptest prints the minimal op sequence it shrank to.)

use kvtier_core::{Direction, OffloadKey, PolicyKind};
use kvtier_core_model::{check, check_pool, default_keys, Config, Coverage, Harness, Op, Scenario};
use proptest::prelude::*;
use proptest::strategy::Union;
use proptest::test_runner::FileFailurePersistence;

/// Cases per proptest: `PROPTEST_CASES` or `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn proptest_config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(256),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/model.txt"))),
        ..ProptestConfig::default()
    }
}

/// Most ops per case (fewer under miri, `.ci/run`'s miri step, which interprets every step).
const MAX_OPS: usize = if cfg!(miri) { 40 } else { 200 };

/// 4 to 12 keys, hash parts of 1 to 32 bytes over a 3-letter alphabet (short ones collide).
fn key_table() -> impl Strategy<Value = Vec<OffloadKey>> {
    prop::collection::vec((prop::collection::vec(0u8..3, 1..=32), 0u32..3), 4..=12).prop_map(|specs| {
        specs.into_iter().map(|(hash, group)| OffloadKey::new(&hash, group).expect("at most 36 bytes")).collect()
    })
}

fn ix() -> impl Strategy<Value = u8> {
    any::<u8>()
}

fn list() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        1 => Just(Vec::new()),
        6 => prop::collection::vec(ix(), 1..=3),
        2 => prop::collection::vec(ix(), 4..=8),
    ]
    .boxed()
}

fn req() -> impl Strategy<Value = u8> {
    0u8..3
}

fn tier() -> impl Strategy<Value = u8> {
    0u8..2
}

/// One op; `scripted` adds the scripted tier actions.
fn op(scripted: bool) -> impl Strategy<Value = Op> {
    let mut arms: Vec<(u32, BoxedStrategy<Op>)> = vec![
        (12, (ix(), req()).prop_map(|(key, req)| Op::Lookup { key, req }).boxed()),
        (8, (list(), req()).prop_map(|(keys, req)| Op::PrepareStore { keys, req }).boxed()),
        (
            3,
            (list(), req(), prop::bool::weighted(0.8))
                .prop_map(|(keys, req, success)| Op::CompleteStore { keys, req, success })
                .boxed(),
        ),
        (6, (req(), prop::bool::weighted(0.85)).prop_map(|(req, success)| Op::CompleteStored { req, success }).boxed()),
        (4, (list(), req()).prop_map(|(keys, req)| Op::PrepareLoad { keys, req }).boxed()),
        (2, (list(), req()).prop_map(|(keys, req)| Op::CompleteLoad { keys, req }).boxed()),
        (3, req().prop_map(|req| Op::CompleteLoaded { req }).boxed()),
        (4, (list(), req()).prop_map(|(keys, req)| Op::Touch { keys, req }).boxed()),
        (7, Just(Op::EndStep).boxed()),
        (2, Just(Op::TakeEvents).boxed()),
        (1, Just(Op::Drain).boxed()),
        (
            2,
            (tier(), prop_oneof![Just(Direction::Load), Just(Direction::Store)])
                .prop_map(|(tier, kind)| Op::TierFailNext { tier, kind })
                .boxed(),
        ),
        (3, (tier(), list()).prop_map(|(tier, keys)| Op::TierInsert { tier, keys }).boxed()),
    ];
    if scripted {
        arms.extend([
            (3, (tier(), any::<bool>()).prop_map(|(tier, hold)| Op::TierHold { tier, hold }).boxed()),
            (1, (tier(), prop::bool::weighted(0.3)).prop_map(|(tier, busy)| Op::TierBusy { tier, busy }).boxed()),
            (
                1,
                (tier(), prop::collection::vec(ix(), 0..=2))
                    .prop_map(|(tier, keys)| Op::TierLose { tier, keys })
                    .boxed(),
            ),
            (
                2,
                (tier(), 0u8..8, any::<bool>())
                    .prop_map(|(tier, back, success)| Op::TierReport { tier, back, success })
                    .boxed(),
            ),
            (1, tier().prop_map(|tier| Op::TierForget { tier }).boxed()),
        ]);
    }
    Union::new_weighted(arms)
}

/// Up to `MAX_OPS` ops; one case in five gets a `Shutdown` somewhere in the middle.
fn ops(scripted: bool) -> impl Strategy<Value = Vec<Op>> {
    (prop::collection::vec(op(scripted), 0..MAX_OPS), prop::option::weighted(0.2, any::<prop::sample::Index>()))
        .prop_map(|(mut ops, shutdown)| {
            if let Some(at) = shutdown {
                let i = at.index(ops.len() + 1);
                ops.insert(i, Op::Shutdown);
            }
            ops
        })
}

fn run_engine(config: Config, keys: &[OffloadKey], ops: &[Op]) -> Result<(), TestCaseError> {
    check(&config, keys, ops).map_err(|m| TestCaseError::fail(format!("{config:?}\n{m}")))
}

fn run_pool(policy: PolicyKind, num_slots: u32, keys: &[OffloadKey], ops: &[Op]) -> Result<(), TestCaseError> {
    check_pool(policy, num_slots, keys, ops)
        .map_err(|m| TestCaseError::fail(format!("{policy:?}, {num_slots} slots\n{m}")))
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn pool_lru(slots in 1u32..=8, keys in key_table(), ops in prop::collection::vec(op(false), 0..MAX_OPS)) {
        run_pool(PolicyKind::Lru, slots, &keys, &ops)?;
    }

    #[test]
    fn pool_arc(slots in 1u32..=8, keys in key_table(), ops in prop::collection::vec(op(false), 0..MAX_OPS)) {
        run_pool(PolicyKind::Arc, slots, &keys, &ops)?;
    }

    #[test]
    fn engine_lru(slots in 1u32..=8, n_tiers in 0usize..=2, deadline in 0u32..=3, keys in key_table(), ops in ops(false)) {
        run_engine(Config { policy: PolicyKind::Lru, num_slots: slots, n_tiers, deadline }, &keys, &ops)?;
    }

    #[test]
    fn engine_arc(slots in 1u32..=8, n_tiers in 0usize..=2, deadline in 0u32..=3, keys in key_table(), ops in ops(false)) {
        run_engine(Config { policy: PolicyKind::Arc, num_slots: slots, n_tiers, deadline }, &keys, &ops)?;
    }

    #[test]
    fn engine_lru_scripted(slots in 1u32..=8, n_tiers in 1usize..=2, deadline in 0u32..=3, keys in key_table(), ops in ops(true)) {
        run_engine(Config { policy: PolicyKind::Lru, num_slots: slots, n_tiers, deadline }, &keys, &ops)?;
    }

    #[test]
    fn engine_arc_scripted(slots in 1u32..=8, n_tiers in 1usize..=2, deadline in 0u32..=3, keys in key_table(), ops in ops(true)) {
        run_engine(Config { policy: PolicyKind::Arc, num_slots: slots, n_tiers, deadline }, &keys, &ops)?;
    }
}

/// xorshift64*: enough randomness for op streams, no dependency.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        XorShift(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let r = self.next().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

/// The configurations of the long run: both policies, 1 to 8 slots, 0 to 2 tiers, deadlines
/// 0 to 3; odd ones also get the scripted tier actions.
fn long_run_configs() -> Vec<(Config, bool)> {
    let mut out = Vec::new();
    for policy in [PolicyKind::Lru, PolicyKind::Arc] {
        for (num_slots, n_tiers, deadline, scripted) in
            [(1, 0, 0, false), (3, 1, 0, false), (4, 2, 2, false), (2, 1, 1, true), (5, 2, 3, true), (8, 2, 1, true)]
        {
            out.push((Config { policy, num_slots, n_tiers, deadline }, scripted));
        }
    }
    out
}

#[test]
fn long_random_run() {
    let seed = env_u64("KVTIER_SEED").unwrap_or(0x6b76_7469_6572_0001);
    let per_config = env_u64("KVTIER_LONG_OPS").unwrap_or(20_000) as usize;
    eprintln!("seed = {seed}");
    let mut total = Coverage::default();
    for (i, (config, scripted)) in long_run_configs().into_iter().enumerate() {
        let mut rng = XorShift::new(seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut h = Harness::new(&config, &default_keys(12));
        let mut bytes = [0u8; 16];
        let mut n = 0;
        while n < per_config {
            rng.fill(&mut bytes);
            let op = Op::decode(&mut &bytes[..]).expect("16 bytes decode one op");
            // A shutdown would end the run early; the final check shuts down instead.
            if op == Op::Shutdown || (!scripted && op.is_scripted()) {
                continue;
            }
            if let Err(m) = h.apply(n, &op) {
                panic!("seed = {seed}, {config:?} (scripted: {scripted}): {m}");
            }
            n += 1;
        }
        if let Err(m) = h.finish(n) {
            panic!("seed = {seed}, {config:?} (scripted: {scripted}): {m}");
        }
        eprintln!("{config:?} scripted={scripted}: {:?}", h.coverage);
        total.merge(&h.coverage);
    }
    // The run must actually reach the interesting paths.
    assert!(total.evicted > 0 && total.completed > 0 && total.loads[0] > 0 && total.unloads[0] > 0, "{total:?}");
    assert!(total.lookups.iter().all(|&n| n > 0), "every lookup answer: {total:?}");
    assert!(total.promotions.iter().all(|&n| n > 0), "promotions loaded, failed, overdue: {total:?}");
    assert!(total.protocol_errors > 0, "{total:?}");
}

/// The fuzz entry point on seeded random bytes.
#[test]
fn decoded_scenarios() {
    let seed = env_u64("KVTIER_SEED").unwrap_or(7);
    let mut rng = XorShift::new(seed);
    // Miri (`.ci/run`'s miri step) interprets every step: fewer, shorter scenarios there.
    let (scenarios, len) = if cfg!(miri) { (3, 240) } else { (150, 1200) };
    for _ in 0..scenarios {
        let mut bytes = vec![0u8; len];
        rng.fill(&mut bytes);
        let scenario = Scenario::decode(&bytes).expect("has a header");
        if let Err(m) = scenario.check() {
            panic!("seed = {seed}, {:?}: {m}", scenario.config);
        }
    }
}

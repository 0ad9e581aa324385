//! The engine on the simulated disk, with its faults (EIO, ENOSPC, short reads, bit flips on
//! loads) and power cuts (lost and torn unsynced writes), seeded: random stores and loads at
//! capacity, crashes and clean restarts. After every restart, every indexed block verifies on
//! disk (header, key, payload); after a clean restart, the index is what it was; a load never
//! hands back other bytes than stored (checked by the load helper).
//!
//! `KVTIER_SEED=n` replays one seed; `KVTIER_SIM_SEEDS` sets how many (default 24).

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use common::*;
use kvtier_core::{Completions, Job, JobId, OffloadKey, ReqContext, SecondaryTier, SlotId};
use kvtier_fs::format::{self, HEADER_LEN};
use kvtier_fs::region::PrimaryRegion;
use kvtier_fs::rng::SplitMix64;
use kvtier_fs::vfs::Vfs;
use kvtier_io_sim::{Faults, SimConfig, SimDisk, SimExecutor};
use kvtier_regions::geometry::HEADER_AREA;
use kvtier_regions::{Mode, RegionsTier, RegionsTierConfig};

const BLOCK: usize = 5000;
const REGION: u64 = 64 << 10;
const REGIONS: u64 = 6;
const KEYS: u64 = 200;
const ROWS: u32 = 16;

fn open(
    cfg: &RegionsTierConfig,
    region: &Arc<PrimaryRegion>,
    disk: &SimDisk,
    seed: u64,
    faults: Faults,
) -> RegionsTier {
    let (r, d) = (Arc::clone(region), disk.clone());
    RegionsTier::open_on(cfg, region.row_bytes(), Arc::new(disk.clone()), move |o_direct| {
        let sim = SimConfig { seed, o_direct, faults, max_latency: 6, ..SimConfig::default() };
        Ok(Box::new(SimExecutor::new(r, d, sim)) as Box<dyn kvtier_fs::Executor>)
    })
    .expect("open on the sim disk")
}

/// Every indexed key's record verifies on the disk and holds its bytes.
fn check_index(tier: &RegionsTier, disk: &SimDisk, seed: u64) -> usize {
    let g = *tier.geometry();
    let mut n = 0;
    for i in 0..KEYS {
        let k = key(i);
        let Some(slot) = tier.slot_of(&k) else { continue };
        let mut rec = vec![0u8; g.record_bytes as usize];
        disk.read_at(tier.path(), g.slot_offset(slot), &mut rec).unwrap();
        let payload = &rec[HEADER_LEN..HEADER_LEN + BLOCK];
        let ok = format::decode_header(&rec).and_then(|h| h.check(&tier.namespace(), &k, payload)).is_ok()
            && payload == &content(&k, BLOCK)[..];
        assert!(ok, "seed {seed}: indexed key {i} does not verify on disk");
        n += 1;
    }
    n
}

fn indexed(tier: &RegionsTier) -> Vec<u64> {
    (0..KEYS).filter(|&i| tier.contains(&key(i))).collect()
}

fn run_seed(seed: u64, steps: u64) -> (u64, u64) {
    let mut rng = SplitMix64::new(seed);
    let disk = SimDisk::new(seed);
    let fsync = seed % 2 == 0;
    let faults = if seed % 3 == 0 {
        Faults::NONE
    } else {
        Faults { eio: 4000, enospc: 4000, emfile: 0, short_read: 3000, bit_flip: 4000 }
    };
    let mut cfg = config(std::path::Path::new("/dev-sim"), HEADER_AREA + REGIONS * REGION, REGION);
    cfg.fsync = fsync;
    cfg.reinsert = seed % 4 != 1;
    cfg.eviction = if seed % 5 == 0 { kvtier_regions::Eviction::Fifo } else { kvtier_regions::Eviction::Lru };
    let region = Arc::new(PrimaryRegion::anonymous(ROWS as usize, BLOCK).unwrap());
    let mut boots = 0u64;
    let mut tier = open(&cfg, &region, &disk, seed, faults);
    let mut job = 0u64;
    let mut crashes = 0;
    let mut loaded = 0;
    for _ in 0..steps {
        let n = 1 + rng.below(u64::from(ROWS)) as usize;
        let start = rng.below(KEYS);
        let keys: Vec<OffloadKey> = (0..n as u64).map(|j| key((start + j * 7) % KEYS)).collect();
        let mut uniq = keys.clone();
        uniq.sort();
        uniq.dedup();
        job += 1;
        if rng.chance(500_000) {
            store(&mut tier, &region, job, &uniq);
        } else {
            // Loads that succeed hand back exactly the stored bytes (the helper checks).
            load(&mut tier, &region, job, &uniq);
        }
        assert!(tier.len() as u32 <= tier.geometry().slots(), "seed {seed}: the index outgrew the device");
        if rng.chance(30_000) {
            // A power cut mid-flight: jobs submitted, not waited for.
            let extra: Vec<OffloadKey> = (0..4).map(|j| key((start + 100 + j) % KEYS)).collect();
            for (i, k) in extra.iter().enumerate() {
                fill(&region, i as u32, k);
            }
            let slots: Vec<SlotId> = (0..4).map(SlotId).collect();
            job += 1;
            tier.submit_store(Job { id: JobId(job), req: ReqContext::default(), keys: &extra, slots: &slots });
            let mut done = Completions::new();
            tier.poll_finished(&mut done);
            disk.crash();
            crashes += 1;
            boots += 1;
            loaded += tier.stats().blocks_loaded;
            drop(tier);
            tier = open(&cfg, &region, &disk, seed.wrapping_add(boots * 1000), faults);
            let rep = tier.recovery().clone();
            let expect = if fsync { Mode::Fast } else { Mode::Verify };
            assert_eq!(rep.mode, expect, "seed {seed}: recovery mode after a power cut");
            check_index(&tier, &disk, seed);
        } else if rng.chance(20_000) {
            let before = indexed(&tier);
            loaded += tier.stats().blocks_loaded;
            drop(tier);
            boots += 1;
            tier = open(&cfg, &region, &disk, seed.wrapping_add(boots * 1000), faults);
            assert_eq!(tier.recovery().mode, Mode::Clean, "seed {seed}");
            assert_eq!(indexed(&tier), before, "seed {seed}: a clean restart changed the index");
            check_index(&tier, &disk, seed);
        }
    }
    loaded += tier.stats().blocks_loaded;
    drop(tier);
    // One last power cut, so every seed recovers at least once.
    disk.crash();
    let tier = open(&cfg, &region, &disk, seed ^ 0xffff, faults);
    check_index(&tier, &disk, seed);
    (crashes + 1, loaded)
}

#[test]
fn random_workloads_with_faults_and_power_cuts() {
    let env = |n: &str| std::env::var(n).ok().and_then(|s| s.parse::<u64>().ok());
    let (base, count) = match env("KVTIER_SEED") {
        Some(seed) => (seed, 1),
        None => {
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
            (now % 1_000_000_007, env("KVTIER_SIM_SEEDS").unwrap_or(24))
        }
    };
    let steps = env("KVTIER_SIM_STEPS").unwrap_or(600);
    println!("regions sim: seeds {base}..{} x {steps} steps (replay one with KVTIER_SEED=n)", base + count);
    let (mut crashes, mut loaded) = (0, 0);
    for seed in base..base + count {
        let r = catch_unwind(AssertUnwindSafe(|| run_seed(seed, steps)));
        match r {
            Ok((c, l)) => {
                crashes += c;
                loaded += l;
            }
            Err(e) => {
                eprintln!("regions sim: seed {seed} FAILED; replay: KVTIER_SEED={seed} cargo test --release -p kvtier-regions --test sim");
                std::panic::resume_unwind(e);
            }
        }
    }
    println!("regions sim: {count} seeds: {crashes} power cuts, {loaded} blocks loaded");
    assert!(crashes >= count && loaded > 0);
}

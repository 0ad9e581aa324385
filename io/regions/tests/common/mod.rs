//! What the engine's tests share: a device on the host or on the simulated disk, blocks whose
//! bytes derive from their key, jobs run to completion.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use kvtier_core::{Completions, Job, JobId, OffloadKey, ReqContext, SecondaryTier, SlotId};
use kvtier_fs::namespace::RunConfig;
use kvtier_fs::region::{Access, PrimaryRegion};
use kvtier_fs::rng::SplitMix64;
use kvtier_fs::Executor;
use kvtier_io_sim::{SimConfig, SimDisk, SimExecutor};
use kvtier_io_threaded::{ThreadedConfig, ThreadedExecutor};
use kvtier_regions::{RegionsTier, RegionsTierConfig};

pub fn key(i: u64) -> OffloadKey {
    let mut h = [0u8; 32];
    h[..8].copy_from_slice(&i.to_le_bytes());
    h[8..16].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    OffloadKey::new(&h, (i % 3) as u32).unwrap()
}

/// The bytes block `key` holds.
pub fn content(key: &OffloadKey, len: usize) -> Vec<u8> {
    let mut rng =
        SplitMix64::new(key.as_bytes().iter().fold(7u64, |h, &b| h.wrapping_mul(131).wrapping_add(u64::from(b))));
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn run() -> RunConfig {
    RunConfig { model_name: "regions/test".into(), ..RunConfig::default() }
}

pub fn config(path: &Path, capacity: u64, region_bytes: u64) -> RegionsTierConfig {
    RegionsTierConfig { region_bytes, ..RegionsTierConfig::new(path, capacity, run()) }
}

pub fn threaded(region: &Arc<PrimaryRegion>, o_direct: bool) -> std::io::Result<Box<dyn Executor>> {
    let config = ThreadedConfig { read_workers: 4, write_workers: 4, o_direct, ..ThreadedConfig::default() };
    Ok(Box::new(ThreadedExecutor::new(Arc::clone(region), config)?))
}

pub fn uring(region: &Arc<PrimaryRegion>, o_direct: bool) -> std::io::Result<Box<dyn Executor>> {
    let config = kvtier_io_uring::UringConfig { o_direct, ..kvtier_io_uring::UringConfig::default() };
    Ok(Box::new(kvtier_io_uring::UringExecutor::new(Arc::clone(region), config)?))
}

pub fn open_host(config: &RegionsTierConfig, region: &Arc<PrimaryRegion>) -> std::io::Result<RegionsTier> {
    RegionsTier::open(config, region.row_bytes(), |o_direct| threaded(region, o_direct))
}

/// The engine over io_uring; `None` (with a message) where io_uring cannot run here.
pub fn open_uring(config: &RegionsTierConfig, region: &Arc<PrimaryRegion>) -> Option<RegionsTier> {
    if let Err(e) = kvtier_io_uring::probe(false) {
        eprintln!("skipped: {e}");
        return None;
    }
    Some(RegionsTier::open(config, region.row_bytes(), |o_direct| uring(region, o_direct)).unwrap())
}

pub fn open_sim(config: &RegionsTierConfig, region: &Arc<PrimaryRegion>, disk: &SimDisk, seed: u64) -> RegionsTier {
    let (r, d) = (Arc::clone(region), disk.clone());
    RegionsTier::open_on(config, region.row_bytes(), Arc::new(disk.clone()), move |o_direct| {
        let sim = SimConfig { seed, o_direct, ..SimConfig::default() };
        Ok(Box::new(SimExecutor::new(r, d, sim)) as Box<dyn Executor>)
    })
    .expect("open the engine on the sim disk")
}

/// Fills row `slot` with `key`'s bytes.
pub fn fill(region: &Arc<PrimaryRegion>, slot: u32, key: &OffloadKey) {
    let mut lease = region.lease(SlotId(slot), Access::Write).unwrap();
    let n = region.row_bytes();
    lease.as_mut_slice().unwrap()[..n].copy_from_slice(&content(key, n));
}

pub fn zero(region: &Arc<PrimaryRegion>, slot: u32) {
    region.lease(SlotId(slot), Access::Write).unwrap().as_mut_slice().unwrap().fill(0);
}

pub fn holds(region: &Arc<PrimaryRegion>, slot: u32, key: &OffloadKey) -> bool {
    region.lease(SlotId(slot), Access::Read).unwrap().block() == &content(key, region.row_bytes())[..]
}

/// Runs one job (store or load) of `keys` in rows `0..` and waits for it; returns per-key
/// success.
pub fn run_job(tier: &mut RegionsTier, id: u64, store: bool, keys: &[OffloadKey]) -> Vec<bool> {
    let slots: Vec<SlotId> = (0..keys.len() as u32).map(SlotId).collect();
    let job = Job { id: JobId(id), req: ReqContext::default(), keys, slots: &slots };
    if store {
        tier.submit_store(job);
    } else {
        tier.submit_load(job);
    }
    tier.wait_idle();
    let mut done = Completions::new();
    tier.poll_finished(&mut done);
    let r = done.iter().find(|r| r.job == JobId(id)).copied().expect("the job is reported");
    done.key_outcomes(&r).map_or_else(|| vec![r.success; keys.len()], <[bool]>::to_vec)
}

/// Stores `keys` (rows filled with their bytes first); returns per-key success.
pub fn store(tier: &mut RegionsTier, region: &Arc<PrimaryRegion>, id: u64, keys: &[OffloadKey]) -> Vec<bool> {
    for (i, k) in keys.iter().enumerate() {
        fill(region, i as u32, k);
    }
    run_job(tier, id, true, keys)
}

/// Loads `keys` into zeroed rows; returns per-key success, checking the bytes of each one
/// that loaded.
pub fn load(tier: &mut RegionsTier, region: &Arc<PrimaryRegion>, id: u64, keys: &[OffloadKey]) -> Vec<bool> {
    for i in 0..keys.len() as u32 {
        zero(region, i);
    }
    let ok = run_job(tier, id, false, keys);
    for (i, (k, &ok)) in keys.iter().zip(&ok).enumerate() {
        if ok {
            assert!(holds(region, i as u32, k), "key {i} loaded other bytes than stored");
        }
    }
    ok
}

//! A capacity-bounded FS tier on the sim executor, where ops stay in flight until polled: the
//! least recently used block that no load is reading is evicted; a store finds no room while
//! every block is busy, and a block whose own eviction is in flight is not stored again until
//! it is done. Nothing is lost: every job is reported, and a cancelled store gives its victim
//! back.

use std::sync::Arc;

use kvtier_core::{Completions, Job, JobId, OffloadKey, ReqContext, SecondaryTier, SlotId, TierLookup};
use kvtier_fs::namespace::RunConfig;
use kvtier_fs::region::PrimaryRegion;
use kvtier_fs::{FsTier, FsTierConfig};
use kvtier_io_sim::{SimConfig, SimDisk, SimExecutor};

const REQ: ReqContext = ReqContext::new(1);

fn key(i: u8) -> OffloadKey {
    OffloadKey::new(&[i; 16], 0).unwrap()
}

fn open(disk: &SimDisk, region: &Arc<PrimaryRegion>, max_blocks: usize) -> FsTier {
    let run = RunConfig { model_name: "sim/bounded".into(), ..RunConfig::default() };
    let config = FsTierConfig {
        max_blocks: Some(max_blocks),
        events: true,
        ..FsTierConfig::new("/root", run, region.row_bytes())
    };
    let (exec_region, exec_disk) = (Arc::clone(region), disk.clone());
    FsTier::open_on(&config, Arc::new(disk.clone()), move |o_direct| {
        let sim = SimConfig { o_direct, max_latency: 4, ..SimConfig::default() };
        Ok(Box::new(SimExecutor::new(exec_region, exec_disk, sim)))
    })
    .unwrap()
}

fn store(tier: &mut FsTier, job: u64, keys: &[OffloadKey], slots: &[SlotId]) {
    tier.submit_store(Job { id: JobId(job), req: REQ, keys, slots });
}

/// Waits for every job in flight; returns (job, success) in report order.
fn finish(tier: &mut FsTier) -> Vec<(u64, bool)> {
    tier.wait_idle();
    let mut done = Completions::new();
    tier.poll_finished(&mut done);
    done.iter().map(|r| (r.job.0, r.success)).collect()
}

#[test]
fn eviction_spares_busy_blocks_and_refuses_what_it_cannot_place() {
    let disk = SimDisk::new(7);
    let region = Arc::new(PrimaryRegion::anonymous(4, 4096).unwrap());
    let mut tier = open(&disk, &region, 2);
    let (k1, k2, k3, k4) = (key(1), key(2), key(3), key(4));
    store(&mut tier, 1, &[k1, k2], &[SlotId(0), SlotId(1)]);
    assert_eq!(finish(&mut tier), vec![(1, true)]);
    assert_eq!(tier.len(), 2);

    // Nothing is polled until the end: every op below stays in flight.
    tier.submit_load(Job { id: JobId(2), req: REQ, keys: &[k1], slots: &[SlotId(2)] });
    store(&mut tier, 3, &[k3], &[SlotId(0)]); // full: evicts k2 (k1 is being read)
    assert!(!tier.contains(&k2) && tier.lookup(&k2, REQ) == TierLookup::Miss);
    store(&mut tier, 4, &[k2], &[SlotId(1)]); // k2's eviction is in flight: refused
    store(&mut tier, 5, &[k4], &[SlotId(3)]); // k1 busy, k3 not stored yet: no room
    assert_eq!((tier.stats().evicted, tier.stats().refused), (1, 2));
    let mut done = finish(&mut tier);
    done.sort_unstable();
    assert_eq!(done, vec![(2, true), (3, true), (4, false), (5, false)]);
    assert!(tier.contains(&k1) && tier.contains(&k3) && tier.len() == 2);

    // Idle again: k1 was used (loaded) before k3 was stored, so k1 goes for k4.
    store(&mut tier, 6, &[k4], &[SlotId(3)]);
    assert_eq!(finish(&mut tier), vec![(6, true)]);
    assert!(!tier.contains(&k1) && tier.contains(&k3) && tier.contains(&k4));
    let blocks = disk.files().into_iter().filter(|p| p.extension().is_some_and(|e| e == "bin")).count();
    assert_eq!(blocks, 2, "the disk holds exactly the indexed blocks");
}

#[test]
fn a_cancelled_store_gives_its_victim_back() {
    let disk = SimDisk::new(8);
    let region = Arc::new(PrimaryRegion::anonymous(2, 4096).unwrap());
    let mut tier = open(&disk, &region, 1);
    store(&mut tier, 1, &[key(1)], &[SlotId(0)]);
    assert_eq!(finish(&mut tier), vec![(1, true)]);
    store(&mut tier, 2, &[key(2)], &[SlotId(1)]); // evicts key 1; cancelled by the shutdown
    assert!(!tier.contains(&key(1)));
    let mut done = Completions::new();
    tier.shutdown(&mut done);
    let reported: Vec<(u64, bool)> = done.iter().map(|r| (r.job.0, r.success)).collect();
    assert_eq!(reported, vec![(2, false)]);
    assert!(tier.contains(&key(1)), "the victim's file was never touched: it is indexed again");
    assert_eq!(tier.stats().evicted, 0);
}

#[test]
fn a_block_a_lookup_promised_is_not_evicted_before_its_load() {
    let disk = SimDisk::new(9);
    let region = Arc::new(PrimaryRegion::anonymous(4, 4096).unwrap());
    let mut tier = open(&disk, &region, 2);
    let (k1, k2, k3) = (key(1), key(2), key(3));
    store(&mut tier, 1, &[k1], &[SlotId(0)]);
    assert_eq!(finish(&mut tier), vec![(1, true)]);
    store(&mut tier, 2, &[k2], &[SlotId(1)]);
    assert_eq!(finish(&mut tier), vec![(2, true)]);

    // One step: k1 (the least recently used) is promised by a lookup, then a cascaded store
    // needs room before the step's promotion load is submitted. It must take k2.
    assert_eq!(tier.lookup(&k1, REQ), TierLookup::Hit);
    store(&mut tier, 3, &[k3], &[SlotId(2)]);
    assert!(tier.contains(&k1) && !tier.contains(&k2));
    tier.submit_load(Job { id: JobId(4), req: REQ, keys: &[k1], slots: &[SlotId(3)] });
    let mut done = finish(&mut tier);
    done.sort_unstable();
    assert_eq!(done, vec![(3, true), (4, true)]);

    // The promise lasts one step: with no lookup since the last poll, k1 is evictable again.
    store(&mut tier, 5, &[k2], &[SlotId(1)]);
    assert_eq!(finish(&mut tier), vec![(5, true)]);
    assert!(!tier.contains(&k1) && tier.contains(&k3) && tier.contains(&k2));
}

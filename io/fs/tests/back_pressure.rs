//! Issue 11, item 21: an executor whose queue is full holds ops back instead of failing them.
//! The FS tier keeps the ops the executor has no room for in its own queue and submits them as
//! room frees up, so jobs far larger than the executor's queue store and load every block; ops
//! still waiting at shutdown are reported (cancelled), never lost.

use std::sync::Arc;

use kvtier_core::{Completions, Job, JobId, OffloadKey, ReqContext, SecondaryTier, SlotId};
use kvtier_fs::namespace::RunConfig;
use kvtier_fs::region::{Access, PrimaryRegion};
use kvtier_fs::{FsTier, FsTierConfig};
use kvtier_io_sim::{SimConfig, SimDisk, SimExecutor};

const REQ: ReqContext = ReqContext::new(1);
const BLOCKS: usize = 200;
const QUEUE: usize = 4;

fn key(i: usize) -> OffloadKey {
    OffloadKey::new(&(i as u64).to_be_bytes(), 0).unwrap()
}

fn open(disk: &SimDisk, region: &Arc<PrimaryRegion>) -> FsTier {
    let run = RunConfig { model_name: "sim/back-pressure".into(), ..RunConfig::default() };
    let config = FsTierConfig::new("/root", run, region.row_bytes());
    let (exec_region, exec_disk) = (Arc::clone(region), disk.clone());
    FsTier::open_on(&config, Arc::new(disk.clone()), move |o_direct| {
        let sim = SimConfig { o_direct, queue_capacity: QUEUE, max_latency: 3, ..SimConfig::default() };
        Ok(Box::new(SimExecutor::new(exec_region, exec_disk, sim)))
    })
    .unwrap()
}

/// Submits one job of every block in direction `store`, drives it to the end and returns its
/// per-key outcomes.
fn run(tier: &mut FsTier, id: u64, store: bool) -> Vec<bool> {
    let keys: Vec<OffloadKey> = (0..BLOCKS).map(key).collect();
    let slots: Vec<SlotId> = (0..BLOCKS as u32).map(SlotId).collect();
    let job = Job { id: JobId(id), req: REQ, keys: &keys, slots: &slots };
    if store {
        tier.submit_store(job);
    } else {
        tier.submit_load(job);
    }
    let mut done = Completions::new();
    // Polls alone (no wait) move the queue on too.
    while done.is_empty() {
        tier.poll_finished(&mut done);
    }
    let r = done.iter().next().unwrap();
    assert_eq!(r.job, JobId(id));
    done.key_outcomes(r).map_or_else(|| vec![r.success; BLOCKS], <[bool]>::to_vec)
}

#[test]
fn jobs_larger_than_the_executor_queue_store_and_load_every_block() {
    let disk = SimDisk::new(1);
    let region = Arc::new(PrimaryRegion::anonymous(BLOCKS, 4096).unwrap());
    for s in 0..BLOCKS {
        let mut lease = region.lease(SlotId(s as u32), Access::Write).unwrap();
        lease.as_mut_slice().unwrap().fill(s as u8);
    }
    let mut tier = open(&disk, &region);
    assert!(run(&mut tier, 1, true).iter().all(|&ok| ok), "every store succeeds ({:?})", tier.stats());
    assert_eq!(tier.len(), BLOCKS);
    for s in 0..BLOCKS {
        region.lease(SlotId(s as u32), Access::Write).unwrap().as_mut_slice().unwrap().fill(0);
    }
    assert!(run(&mut tier, 2, false).iter().all(|&ok| ok), "every load succeeds ({:?})", tier.stats());
    for s in 0..BLOCKS {
        let lease = region.lease(SlotId(s as u32), Access::Read).unwrap();
        assert!(lease.block().iter().all(|&b| b == s as u8), "block {s} loaded back");
    }
    assert_eq!(tier.stats().failed, 0);
}

#[test]
fn ops_waiting_at_shutdown_are_reported() {
    let disk = SimDisk::new(2);
    let region = Arc::new(PrimaryRegion::anonymous(BLOCKS, 4096).unwrap());
    let mut tier = open(&disk, &region);
    let keys: Vec<OffloadKey> = (0..BLOCKS).map(key).collect();
    let slots: Vec<SlotId> = (0..BLOCKS as u32).map(SlotId).collect();
    tier.submit_store(Job { id: JobId(7), req: REQ, keys: &keys, slots: &slots });
    let mut done = Completions::new();
    tier.shutdown(&mut done);
    let r = done.iter().next().expect("the job is reported");
    let oks = done.key_outcomes(r).map_or_else(|| vec![r.success; BLOCKS], <[bool]>::to_vec);
    assert!(!r.success && oks.iter().filter(|&&ok| !ok).count() >= BLOCKS - QUEUE, "{oks:?}");
    for s in 0..BLOCKS as u32 {
        assert!(region.lease(SlotId(s), Access::Write).is_ok(), "row {s} is free again");
    }
}

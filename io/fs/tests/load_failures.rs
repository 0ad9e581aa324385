//! Issue 11, item 6: a block whose loads always fail transiently (here, every read of the sim
//! disk fails with EIO) is not promoted forever. Each failure holds it back from lookups for
//! longer, and after `LOAD_FAILURES_TO_GIVE_UP` failures in a row the tier gives it up: it
//! leaves the index, its file stays, and the stats say so. (Before, every lookup answered
//! "on disk", so the engine freed a ready CPU block for a load that failed, step after step.)

use std::sync::Arc;

use kvtier_core::{Completions, Job, JobId, OffloadKey, ReqContext, SecondaryTier, SlotId, TierLookup};
use kvtier_fs::namespace::RunConfig;
use kvtier_fs::region::PrimaryRegion;
use kvtier_fs::tier::LOAD_FAILURES_TO_GIVE_UP;
use kvtier_fs::vfs::Vfs;
use kvtier_fs::{FsTier, FsTierConfig};
use kvtier_io_sim::{Faults, SimConfig, SimDisk, SimExecutor};

const REQ: ReqContext = ReqContext::new(1);

fn open(disk: &SimDisk, region: &Arc<PrimaryRegion>, faults: Faults) -> FsTier {
    let run = RunConfig { model_name: "sim/load-failures".into(), ..RunConfig::default() };
    let config = FsTierConfig::new("/root", run, region.row_bytes());
    let (region, exec_disk) = (Arc::clone(region), disk.clone());
    FsTier::open_on(&config, Arc::new(disk.clone()), move |o_direct| {
        Ok(Box::new(SimExecutor::new(region, exec_disk, SimConfig { o_direct, faults, ..SimConfig::default() })))
    })
    .unwrap()
}

fn finish(tier: &mut FsTier) -> Vec<bool> {
    tier.wait_idle();
    let mut done = Completions::new();
    tier.poll_finished(&mut done);
    done.iter().map(|r| r.success).collect()
}

#[test]
fn a_block_that_never_loads_is_given_up() {
    let disk = SimDisk::new(9);
    let region = Arc::new(PrimaryRegion::anonymous(2, 4096).unwrap());
    let (bad, good) = (OffloadKey::new(&[1; 16], 0).unwrap(), OffloadKey::new(&[2; 16], 0).unwrap());
    {
        let mut tier = open(&disk, &region, Faults::NONE);
        tier.submit_store(Job { id: JobId(0), req: REQ, keys: &[bad, good], slots: &[SlotId(0), SlotId(1)] });
        assert_eq!(finish(&mut tier), [true]);
    }
    let path = open(&disk, &region, Faults::NONE).layout().block_path(&bad);
    let mut tier = open(&disk, &region, Faults { eio: 1_000_000, ..Faults::NONE });

    // The engine's loop: each step polls, looks the block up, and promotes it when it is a hit.
    let mut attempts = 0;
    let mut done = Completions::new();
    for step in 0..300u64 {
        tier.poll_finished(&mut done);
        if tier.lookup(&bad, REQ) == TierLookup::Hit {
            attempts += 1;
            tier.submit_load(Job { id: JobId(1 + step), req: REQ, keys: &[bad], slots: &[SlotId(0)] });
            assert_eq!(finish(&mut tier), [false], "the read always fails");
        }
    }
    assert_eq!(attempts, LOAD_FAILURES_TO_GIVE_UP, "given up after that many failures, not promoted forever");
    assert_eq!(tier.stats().given_up, 1);
    assert!(!tier.contains(&bad), "given up: out of the index");
    assert!(disk.exists(&path), "the file is kept");
    assert_eq!(tier.lookup(&good, REQ), TierLookup::Hit, "other blocks are untouched");
    drop(tier);

    // A later start-up indexes the file again, and where reads work it loads.
    let mut tier = open(&disk, &region, Faults::NONE);
    assert_eq!(tier.lookup(&bad, REQ), TierLookup::Hit);
    tier.submit_load(Job { id: JobId(999), req: REQ, keys: &[bad], slots: &[SlotId(0)] });
    assert_eq!(finish(&mut tier), [true]);
}

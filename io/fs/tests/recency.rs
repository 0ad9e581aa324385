//! The disk's LRU and what start-up makes of a directory, on the sim disk: `touch` reaches the
//! FS tier (issue 11, item 23), recency after a restart is the order blocks were stored, not
//! directory order (item 23), a bound below what is on disk trims the least recently stored
//! blocks and says how many (item 4), and block files of another length are not indexed
//! (item 2).

use std::sync::Arc;

use kvtier_core::{Completions, Job, JobId, OffloadKey, ReqContext, SecondaryTier, SlotId};
use kvtier_fs::namespace::RunConfig;
use kvtier_fs::region::PrimaryRegion;
use kvtier_fs::vfs::Vfs;
use kvtier_fs::{FsTier, FsTierConfig, StorageFormat};
use kvtier_io_sim::{SimConfig, SimDisk, SimExecutor};

const REQ: ReqContext = ReqContext::new(1);

fn key(i: u8) -> OffloadKey {
    OffloadKey::new(&[i; 16], 0).unwrap()
}

fn config(max_blocks: Option<usize>, block_bytes: usize) -> FsTierConfig {
    let run = RunConfig { model_name: "sim/recency".into(), ..RunConfig::default() };
    FsTierConfig { max_blocks, ..FsTierConfig::new("/root", run, block_bytes) }
}

fn try_open(disk: &SimDisk, config: &FsTierConfig) -> std::io::Result<FsTier> {
    let region = Arc::new(PrimaryRegion::anonymous(2, config.block_bytes).unwrap());
    let disk2 = disk.clone();
    FsTier::open_on(config, Arc::new(disk.clone()), move |o_direct| {
        Ok(Box::new(SimExecutor::new(region, disk2, SimConfig { o_direct, ..SimConfig::default() })))
    })
}

fn open(disk: &SimDisk, max_blocks: Option<usize>) -> FsTier {
    try_open(disk, &config(max_blocks, 4096)).unwrap()
}

/// Stores `keys` one job each, each finished before the next starts (so stored in this order).
fn store(tier: &mut FsTier, keys: &[OffloadKey]) {
    for (n, k) in keys.iter().enumerate() {
        tier.submit_store(Job { id: JobId(n as u64), req: REQ, keys: std::slice::from_ref(k), slots: &[SlotId(0)] });
        tier.wait_idle();
        let mut done = Completions::new();
        tier.poll_finished(&mut done);
        assert!(done.iter().all(|r| r.success), "store of {k}");
    }
}

fn indexed(tier: &FsTier, keys: impl IntoIterator<Item = u8>) -> Vec<u8> {
    keys.into_iter().filter(|&i| tier.contains(&key(i))).collect()
}

/// Item 23: a touched block is used, so a store that needs room evicts another one first (the
/// first key of a touch ends most recent, as in the primary).
#[test]
fn touch_keeps_hot_prefixes_on_disk() {
    let disk = SimDisk::new(1);
    let mut tier = open(&disk, Some(3));
    store(&mut tier, &[key(1), key(2), key(3)]);
    tier.touch(&[key(1), key(2)]); // 1 most recent, then 2: 3 is now the least recent
    store(&mut tier, &[key(4)]);
    assert_eq!(indexed(&tier, 1..=4), [1, 2, 4]);
    store(&mut tier, &[key(5)]);
    assert_eq!(indexed(&tier, 1..=5), [1, 4, 5]);
}

/// Item 23 and item 4: after a restart the least recently stored block is evicted first,
/// whatever the directory order (stored here in an order the paths do not sort in); a bound
/// below what is on disk removes the oldest blocks and reports how many.
#[test]
fn a_restart_keeps_the_store_order_and_a_lower_bound_trims_the_oldest() {
    let disk = SimDisk::new(2);
    let order = [7u8, 2, 9, 4, 1, 8, 3, 6, 5];
    {
        let mut tier = open(&disk, None);
        store(&mut tier, &order.map(key));
    }
    let mut tier = open(&disk, Some(order.len()));
    assert_eq!(tier.startup().evicted, 0);
    store(&mut tier, &[key(20), key(21)]); // evicts the two stored first
    assert_eq!(indexed(&tier, 0..=30).len(), order.len());
    assert!(!tier.contains(&key(7)) && !tier.contains(&key(2)) && tier.contains(&key(9)));
    drop(tier);

    let tier = open(&disk, Some(4));
    assert_eq!(tier.startup().evicted, order.len() - 4, "the report says how many were evicted");
    // The four stored last: 6, 5, 20, 21.
    assert_eq!(indexed(&tier, 0..=30), [5, 6, 20, 21]);
}

/// Item 4: `max_blocks = 0` is refused with an error naming it, and deletes nothing.
#[test]
fn a_zero_bound_is_refused_and_deletes_nothing() {
    let disk = SimDisk::new(3);
    {
        let mut tier = open(&disk, None);
        store(&mut tier, &[key(1), key(2)]);
    }
    let e = try_open(&disk, &config(Some(0), 4096)).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert!(e.to_string().contains("max_blocks"), "{e}");
    assert_eq!(open(&disk, None).len(), 2, "nothing was deleted");
}

/// Item 2: two block sizes never share a native namespace, and block files of a length no
/// block of the tier has are not indexed (they are removed: no load could use them).
#[test]
fn block_files_of_another_length_are_never_indexed() {
    let small = config(None, 4096);
    let large = config(None, 8192);
    assert_ne!(
        kvtier_fs::namespace::digest12(&small.effective_run_config()),
        kvtier_fs::namespace::digest12(&large.effective_run_config()),
        "the block size is part of the native run config"
    );
    let vllm = |block_bytes| FsTierConfig { format: StorageFormat::Vllm, ..config(None, block_bytes) };
    assert_eq!(vllm(4096).effective_run_config(), vllm(8192).effective_run_config(), "vLLM's own run config");

    let disk = SimDisk::new(4);
    let layout = {
        let mut tier = try_open(&disk, &vllm(4096)).unwrap();
        store(&mut tier, &[key(1), key(2), key(3)]);
        tier.layout().clone()
    };
    // A torn file, and one written for 8 KiB blocks, in place of blocks 2 and 3.
    disk.set_len(&layout.block_path(&key(2)), 100).unwrap();
    disk.set_len(&layout.block_path(&key(3)), 8192).unwrap();
    let tier = try_open(&disk, &vllm(4096)).unwrap();
    assert_eq!(indexed(&tier, 1..=3), [1]);
    assert_eq!(tier.startup().wrong_length_removed, 2);
    assert!(!disk.exists(&layout.block_path(&key(3))));
}

//! The engine on a real file (threaded executor, `O_DIRECT` where the file system has it):
//! round trips, reclaim at capacity with reinsertion, the namespace check, the single owner,
//! clean and crashed reopens.

mod common;

use std::sync::Arc;

use common::*;
use kvtier_core::{OffloadKey, SecondaryTier};

use kvtier_fs::region::PrimaryRegion;
use kvtier_regions::geometry::HEADER_AREA;
use kvtier_regions::Mode;

const BLOCK: usize = 12288;
const REGION: u64 = 256 << 10;

fn keys(range: std::ops::Range<u64>) -> Vec<OffloadKey> {
    range.map(key).collect()
}

#[test]
fn blocks_round_trip_and_survive_a_clean_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dev");
    let cfg = config(&path, HEADER_AREA + 8 * REGION, REGION);
    let region = Arc::new(PrimaryRegion::anonymous(64, BLOCK).unwrap());
    let mut tier = open_host(&cfg, &region).unwrap();
    assert_eq!(tier.recovery().mode, Mode::Fresh);
    let a = keys(0..40);
    assert!(store(&mut tier, &region, 1, &a).iter().all(|&ok| ok));
    assert_eq!(tier.len(), 40);
    assert!(a.iter().all(|k| tier.contains(k)));
    assert!(load(&mut tier, &region, 2, &a).iter().all(|&ok| ok));
    assert_eq!(run_job(&mut tier, 3, true, &a), vec![true; 40], "stored blocks are skipped");
    assert_eq!(tier.stats().blocks_skipped, 40);
    let missing = keys(1000..1003);
    assert_eq!(run_job(&mut tier, 4, false, &missing), vec![false; 3]);
    drop(tier);

    let mut tier = open_host(&cfg, &region).unwrap();
    let rep = tier.recovery().clone();
    assert_eq!(rep.mode, Mode::Clean);
    assert_eq!((rep.blocks_indexed, rep.regions_scanned, rep.dropped_corrupt), (40, 0, 0));
    assert!(load(&mut tier, &region, 5, &a).iter().all(|&ok| ok));
}

#[test]
fn a_full_device_reclaims_regions_and_reinserts_hot_blocks() {
    at_capacity(false);
}

#[test]
fn at_capacity_over_io_uring() {
    at_capacity(true);
}

fn at_capacity(uring: bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dev");
    let cfg = config(&path, HEADER_AREA + 4 * REGION, REGION);
    let region = Arc::new(PrimaryRegion::anonymous(64, BLOCK).unwrap());
    let mut tier = if uring {
        let Some(tier) = open_uring(&cfg, &region) else { return };
        tier
    } else {
        open_host(&cfg, &region).unwrap()
    };
    let per_region = tier.geometry().slots_per_region as u64;
    let capacity = u64::from(tier.geometry().slots());
    // A hot block, loaded often; then many more blocks than fit.
    let hot = keys(0..1);
    assert!(store(&mut tier, &region, 1, &hot)[0]);
    let mut next = 1u64;
    let mut job = 10;
    for _ in 0..6 * capacity / 16 {
        let batch = keys(next..next + 16);
        next += 16;
        let ok = store(&mut tier, &region, job, &batch);
        assert!(
            ok.iter().all(|&ok| ok),
            "stores never fail at capacity: {ok:?} {:?} {}",
            tier.stats(),
            tier.region_states()
        );
        job += 1;
        assert!(load(&mut tier, &region, job, &hot)[0], "the hot block survives reclaim");
        job += 1;
        assert!(tier.len() as u64 <= capacity, "nothing grows past capacity");
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(len, HEADER_AREA + 4 * REGION, "the device never grows");
    }
    let s = *tier.stats();
    assert!(s.regions_reclaimed >= 5, "{s:?}");
    assert!(s.reinserted >= 1, "{s:?}");
    assert!(s.evicted > 0);
    // Recent blocks are there, old ones gone.
    let recent = keys(next - per_region..next);
    assert!(load(&mut tier, &region, job, &recent).iter().all(|&ok| ok));
    assert!(!tier.contains(&key(2)));
}

#[test]
fn another_run_config_or_layout_is_refused_and_nothing_is_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dev");
    let cfg = config(&path, HEADER_AREA + 4 * REGION, REGION);
    let region = Arc::new(PrimaryRegion::anonymous(8, BLOCK).unwrap());
    let mut tier = open_host(&cfg, &region).unwrap();
    assert!(store(&mut tier, &region, 1, &keys(0..5)).iter().all(|&ok| ok));
    drop(tier);
    let before = std::fs::read(&path).unwrap();

    let mut other = cfg.clone();
    other.run.model_name = "another/model".into();
    let e = open_host(&other, &region).unwrap_err();
    assert!(e.to_string().contains("model_name"), "{e}");
    let mut other = cfg.clone();
    other.rank = 1;
    assert!(open_host(&other, &region).unwrap_err().to_string().contains("rank"));
    let mut other = cfg.clone();
    other.region_bytes = 2 * REGION;
    other.capacity = HEADER_AREA + 4 * 2 * REGION;
    let e = open_host(&other, &region).unwrap_err();
    assert!(e.to_string().contains("region_bytes"), "{e}");
    let big = Arc::new(PrimaryRegion::anonymous(8, 2 * BLOCK).unwrap());
    assert!(open_host(&cfg, &big).unwrap_err().to_string().contains("block_bytes"));
    assert!(std::fs::read(&path).unwrap() == before, "refused opens wrote nothing");

    // Somebody else's file is never taken over.
    let foreign = dir.path().join("foreign");
    std::fs::write(&foreign, vec![7u8; (HEADER_AREA + 4 * REGION) as usize]).unwrap();
    let e = open_host(&config(&foreign, HEADER_AREA + 4 * REGION, REGION), &region).unwrap_err();
    assert!(e.to_string().contains("not a kvtier region device"), "{e}");
    assert!(std::fs::read(&foreign).unwrap().iter().all(|&b| b == 7));

    // It still opens with its own settings.
    let tier = open_host(&cfg, &region).unwrap();
    assert_eq!(tier.len(), 5);
}

#[test]
fn one_owner_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dev");
    let cfg = config(&path, HEADER_AREA + 4 * REGION, REGION);
    let region = Arc::new(PrimaryRegion::anonymous(8, BLOCK).unwrap());
    let first = open_host(&cfg, &region).unwrap();
    let e = open_host(&cfg, &region).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    assert!(e.to_string().contains("in use by another process"), "{e}");
    drop(first);
    open_host(&cfg, &region).unwrap();
}

#[test]
fn a_crashed_run_is_recovered_from_summaries_and_its_open_region() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dev");
    let cfg = config(&path, HEADER_AREA + 8 * REGION, REGION);
    let region = Arc::new(PrimaryRegion::anonymous(64, BLOCK).unwrap());
    let mut tier = open_host(&cfg, &region).unwrap();
    let per_region = tier.geometry().slots_per_region as u64;
    let n = 2 * per_region + 3;
    let all = keys(0..n);
    for (j, chunk) in all.chunks(10).enumerate() {
        assert!(store(&mut tier, &region, j as u64, chunk).iter().all(|&ok| ok));
    }
    // What a crash leaves: the file as it is now (every completed write is in it), copied
    // before the engine shuts down (which seals the open region and marks the device closed).
    tier.wait_idle();
    let copy = dir.path().join("copy");
    std::fs::copy(&path, &copy).unwrap();
    drop(tier);
    let mut tier = open_host(&config(&copy, HEADER_AREA + 8 * REGION, REGION), &region).unwrap();
    let rep = tier.recovery().clone();
    assert_eq!(rep.mode, Mode::Fast);
    assert_eq!(rep.blocks_indexed, n, "{rep:?}");
    assert!(rep.regions_summarized >= 2 && rep.regions_scanned >= 1, "{rep:?}");
    assert_eq!(rep.dropped_corrupt, 0);
    assert!(load(&mut tier, &region, 99, &all[..60.min(all.len())]).iter().all(|&ok| ok));
}

/// An executor that holds back loads until released (stores and batches pass): a reader that
/// takes its time.
struct Held {
    inner: Box<dyn kvtier_fs::Executor>,
    held: Vec<(kvtier_fs::FileOp, kvtier_core::Part)>,
    release: Arc<std::sync::atomic::AtomicBool>,
}

impl kvtier_fs::Executor for Held {
    fn submit(&mut self, op: kvtier_fs::FileOp, part: kvtier_core::Part) -> Result<(), kvtier_fs::Full> {
        if op.dir == kvtier_core::Direction::Load && !self.release.load(std::sync::atomic::Ordering::SeqCst) {
            self.held.push((op, part));
            return Ok(());
        }
        self.inner.submit(op, part)
    }
    fn submit_batch(
        &mut self,
        batch: kvtier_fs::Batch,
        parts: Vec<kvtier_core::Part>,
    ) -> Result<(), kvtier_fs::BatchFull> {
        self.inner.submit_batch(batch, parts)
    }
    fn poll(&mut self, wait: kvtier_fs::Wait) -> std::io::Result<usize> {
        if self.release.load(std::sync::atomic::Ordering::SeqCst) {
            for (op, part) in self.held.drain(..) {
                self.inner.submit(op, part).map_err(|_| std::io::Error::other("full"))?;
            }
        }
        let wait = if self.inner.in_flight() == 0 { kvtier_fs::Wait::No } else { wait };
        self.inner.poll(wait)
    }
    fn in_flight(&self) -> usize {
        self.inner.in_flight() + self.held.len()
    }
    fn open_file(&mut self, path: &std::path::Path) -> std::io::Result<kvtier_fs::FileId> {
        self.inner.open_file(path)
    }
    fn shutdown(&mut self) {
        self.release.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.poll(kvtier_fs::Wait::No);
        self.inner.shutdown();
    }
    fn name(&self) -> &'static str {
        "held"
    }
}

/// A block being read pins its region: reclaim takes the region's blocks out of the index,
/// but the region is not written (its marker, then new blocks) until the read is done, and
/// the read gets the block's bytes.
#[test]
fn a_region_being_read_is_not_reused_under_its_reader() {
    use kvtier_core::{Completions, Job, JobId, ReqContext, SlotId};
    let disk = kvtier_io_sim::SimDisk::new(5);
    let cfg = config(std::path::Path::new("/dev-held"), HEADER_AREA + 4 * REGION, REGION);
    let region = Arc::new(PrimaryRegion::anonymous(32, BLOCK).unwrap());
    let release = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (r, d, rel) = (Arc::clone(&region), disk.clone(), Arc::clone(&release));
    let mut tier = kvtier_regions::RegionsTier::open_on(&cfg, BLOCK, Arc::new(disk.clone()), move |o_direct| {
        let sim = kvtier_io_sim::SimConfig { o_direct, ..kvtier_io_sim::SimConfig::default() };
        let inner = Box::new(kvtier_io_sim::SimExecutor::new(r, d, sim));
        Ok(Box::new(Held { inner, held: Vec::new(), release: rel }) as Box<dyn kvtier_fs::Executor>)
    })
    .unwrap();
    let pinned = key(0);
    assert!(store(&mut tier, &region, 1, &[pinned])[0]);
    let slot = tier.slot_of(&pinned).unwrap();
    let g = *tier.geometry();
    let r0 = g.region_of(slot);
    let record = |disk: &kvtier_io_sim::SimDisk| {
        use kvtier_fs::vfs::Vfs;
        let mut buf = vec![0u8; (g.region_bytes) as usize];
        disk.read_at(std::path::Path::new("/dev-held"), g.region_offset(r0), &mut buf).unwrap();
        buf
    };
    // A load of it, held in flight (into row 31).
    tier.submit_load(Job { id: JobId(2), req: ReqContext::default(), keys: &[pinned], slots: &[SlotId(31)] });
    // Many more stores: every region is reclaimed, the pinned one included.
    let (mut id, mut next) = (10, 1);
    // The region as it was sealed (it fills up, and its summary is written, first).
    let mut before = None;
    for _ in 0..12 * g.slots_per_region {
        let batch: Vec<_> = (next..next + 4).map(key).collect();
        next += 4;
        let slots: Vec<SlotId> = (0..4).map(SlotId).collect();
        for (i, k) in batch.iter().enumerate() {
            fill(&region, i as u32, k);
        }
        tier.submit_store(Job { id: JobId(id), req: ReqContext::default(), keys: &batch, slots: &slots });
        id += 1;
        let mut done = Completions::new();
        for _ in 0..20 {
            tier.poll_finished(&mut done);
        }
        if before.is_none() && tier.region_states().starts_with("Sealed") {
            before = Some(record(&disk));
        }
    }
    let before = before.expect("the pinned block's region was sealed");
    assert!(!tier.contains(&pinned), "its region was reclaimed: {}", tier.region_states());
    assert!(record(&disk) == before, "the region being read was written: {}", tier.region_states());
    assert!(r0 == 0 && tier.region_states().starts_with("Evicting"), "{}", tier.region_states());
    assert!(tier.region_states().contains("Evicting"), "{}", tier.region_states());
    // The read completes, with the block's bytes; then the region is reused.
    release.store(true, std::sync::atomic::Ordering::SeqCst);
    tier.wait_idle();
    let mut done = Completions::new();
    tier.poll_finished(&mut done);
    let r = done.iter().find(|r| r.job == JobId(2)).copied().expect("the load is reported");
    assert!(r.success);
    assert!(holds(&region, 31, &pinned));
    assert!(!tier.region_states().contains("Evicting"), "{}", tier.region_states());
}

/// A block a lookup answered Hit for is promoted by a load the engine submits at the end of
/// the step, after that step's cascaded stores: those stores must not reclaim its region
/// first. The promise lasts until the next poll.
#[test]
fn a_block_a_lookup_promised_is_not_reclaimed_before_its_load() {
    use kvtier_core::{Job, JobId, ReqContext, SlotId, TierLookup};
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir.path().join("dev"), HEADER_AREA + 4 * REGION, REGION);
    let region = Arc::new(PrimaryRegion::anonymous(64, BLOCK).unwrap());
    let mut tier = open_host(&cfg, &region).unwrap();
    let per_region = u64::from(tier.geometry().slots_per_region);
    let promised = key(0);
    assert!(store(&mut tier, &region, 1, &[promised])[0]);
    // Its region fills up and is sealed: the least recently used one.
    let mut next = 1;
    let mut id = 10;
    while next <= per_region {
        assert!(store(&mut tier, &region, id, &keys(next..next + 4)).iter().all(|&ok| ok));
        (next, id) = (next + 4, id + 1);
    }
    // One step: the lookup, then stores of more blocks than the device holds, never polled.
    assert_eq!(tier.lookup(&promised, ReqContext::default()), TierLookup::Hit);
    let slots: Vec<SlotId> = (0..4).map(SlotId).collect();
    for _ in 0..4 * per_region / 4 {
        let batch = keys(next..next + 4);
        for (i, k) in batch.iter().enumerate() {
            fill(&region, i as u32, k);
        }
        tier.submit_store(Job { id: JobId(id), req: ReqContext::default(), keys: &batch, slots: &slots });
        tier.wait_idle();
        (next, id) = (next + 4, id + 1);
    }
    assert!(tier.contains(&promised), "the promised block's region was reclaimed: {}", tier.region_states());
    assert!(load(&mut tier, &region, id, &[promised])[0], "its promotion loads");
    // The promise is over: the next reclaims may take its region.
    for _ in 0..4 * per_region / 4 {
        assert!(store(&mut tier, &region, id + 1, &keys(next..next + 4)).iter().all(|&ok| ok));
        (next, id) = (next + 4, id + 2);
    }
    assert!(!tier.contains(&promised), "{}", tier.region_states());
}

//! Crash consistency of the region engine on a real file: a child process stores blocks
//! continuously (and loads some back, so reclaim reinserts them) through `RegionsTier` on a
//! small device it cycles through many times, and is killed with `SIGKILL` at seeded random
//! moments; after each kill the device is reopened and must hold up:
//!
//! - recovery runs in its fast mode (same boot: the page cache survived the process) and
//!   reports what it read and dropped;
//! - every indexed block loads with exactly the bytes the child wrote (derived from its key):
//!   no torn or stale record is indexed, and nothing is indexed that no child stored;
//! - the blocks whose stores completed last (logged by the child, `write` + `fsync`, after the
//!   engine reported them) are indexed: reclaim is FIFO here, so the newest region's worth of
//!   blocks cannot have been reclaimed.
//!
//! Each trial picks the executor (threaded, and io_uring where it runs) and `fsync`. The seed is
//! printed; `KVTIER_SEED=<n>` replays the kill delays and settings. `KVTIER_CRASH_TRIALS` sets
//! the number of kills (default 30, at least 10).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvtier_core::{Completions, Job, JobId, OffloadKey, ReqContext, SecondaryTier, SlotId};
use kvtier_fs::namespace::RunConfig;
use kvtier_fs::region::{Access, PrimaryRegion};
use kvtier_fs::Executor;
use kvtier_io_threaded::{ThreadedConfig, ThreadedExecutor};
use kvtier_io_uring::{UringConfig, UringExecutor};
use kvtier_regions::geometry::HEADER_AREA;
use kvtier_regions::{Eviction, Mode, RegionsTier, RegionsTierConfig};

const BLOCK: usize = 8192;
const REGION: u64 = 256 << 10;
const REGIONS: u64 = 8;
const BATCH: usize = 8;
const JOBS: usize = 4;
/// Rows: the store jobs', then the loads'.
const SLOTS: usize = BATCH * JOBS + BATCH;
const MAX_PER_TRIAL: u64 = 10_000;
const TRIAL_SPAN: u64 = 1_000_000;

fn key(i: u64) -> OffloadKey {
    let mut hash = [0u8; 32];
    hash[..8].copy_from_slice(&i.to_be_bytes());
    hash[8..16].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    OffloadKey::new(&hash, (i % 3) as u32).unwrap()
}

fn pattern(i: u64, len: usize) -> Vec<u8> {
    let mut x = i.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn open(dev: &Path, fsync: bool, uring: bool) -> (RegionsTier, Arc<PrimaryRegion>) {
    let region = Arc::new(PrimaryRegion::anonymous(SLOTS, BLOCK).unwrap());
    let run = RunConfig { model_name: "crash/regions".into(), ..RunConfig::default() };
    let mut cfg = RegionsTierConfig::new(dev, HEADER_AREA + REGIONS * REGION, run);
    cfg.region_bytes = REGION;
    cfg.fsync = fsync;
    cfg.eviction = Eviction::Fifo;
    let r = Arc::clone(&region);
    let tier = RegionsTier::open(&cfg, BLOCK, move |o_direct| -> std::io::Result<Box<dyn Executor>> {
        if uring {
            Ok(Box::new(UringExecutor::new(r, UringConfig { o_direct, ..UringConfig::default() })?))
        } else {
            let c = ThreadedConfig { read_workers: 4, write_workers: 4, o_direct, ..ThreadedConfig::default() };
            Ok(Box::new(ThreadedExecutor::new(r, c)?))
        }
    })
    .unwrap();
    (tier, region)
}

/// Child side of `sigkill_during_region_stores` (does nothing when run on its own).
#[test]
fn regions_crash_child() {
    let Some(dev) = env("KVTIER_CRASH_DEV") else { return };
    let fsync = env("KVTIER_CRASH_FSYNC").unwrap() == "1";
    let uring = env("KVTIER_CRASH_URING").unwrap() == "1";
    let first: u64 = env("KVTIER_CRASH_FIRST").unwrap().parse().unwrap();
    let log_path = PathBuf::from(env("KVTIER_CRASH_LOG").unwrap());
    let (mut tier, region) = open(Path::new(&dev), fsync, uring);
    let mut log = OpenOptions::new().create(true).append(true).open(&log_path).unwrap();
    std::fs::write(log_path.with_extension("ready"), b"").unwrap();
    let mut next = first;
    let mut job_id = 0u64;
    let mut stored: Vec<u64> = Vec::new();
    let mut done = Completions::new();
    let mut line = String::new();
    loop {
        let mut jobs = Vec::new();
        for j in 0..JOBS {
            if next >= first + MAX_PER_TRIAL {
                break;
            }
            let ids: Vec<u64> = (next..next + BATCH as u64).collect();
            next += BATCH as u64;
            let slots: Vec<SlotId> = (0..BATCH).map(|k| SlotId((j * BATCH + k) as u32)).collect();
            for (&id, &slot) in ids.iter().zip(&slots) {
                let mut lease = region.lease(slot, Access::Write).unwrap();
                lease.as_mut_slice().unwrap()[..BLOCK].copy_from_slice(&pattern(id, BLOCK));
            }
            let keys: Vec<OffloadKey> = ids.iter().map(|&i| key(i)).collect();
            job_id += 1;
            tier.submit_store(Job { id: JobId(job_id), req: ReqContext::new(1), keys: &keys, slots: &slots });
            jobs.push((JobId(job_id), ids));
        }
        // Some loads of stored blocks: they pin their regions while in flight and make them
        // candidates for reinsertion.
        if !stored.is_empty() {
            let picks: Vec<u64> = (0..BATCH).map(|k| stored[(job_id as usize * 7 + k * 13) % stored.len()]).collect();
            let keys: Vec<OffloadKey> = picks.iter().map(|&i| key(i)).collect();
            let slots: Vec<SlotId> = (0..BATCH).map(|k| SlotId((JOBS * BATCH + k) as u32)).collect();
            job_id += 1;
            tier.submit_load(Job { id: JobId(job_id), req: ReqContext::new(2), keys: &keys, slots: &slots });
        }
        if jobs.is_empty() {
            std::thread::sleep(Duration::from_millis(10));
        }
        tier.wait_idle();
        tier.poll_finished(&mut done);
        line.clear();
        for result in done.iter() {
            let Some((_, ids)) = jobs.iter().find(|(id, _)| *id == result.job) else { continue };
            let oks = done.key_outcomes(result).map_or_else(|| vec![result.success; ids.len()], <[bool]>::to_vec);
            for (&id, ok) in ids.iter().zip(oks) {
                if ok {
                    line.push_str(&format!("{id}\n"));
                    stored.push(id);
                }
            }
        }
        log.write_all(line.as_bytes()).unwrap();
        log.sync_data().unwrap();
        done.clear();
    }
}

fn logged(log: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete.lines().map(|l| l.parse().unwrap()).collect()
}

fn spawn_child(dev: &Path, fsync: bool, uring: bool, first: u64, log: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "regions_crash_child", "--nocapture", "--test-threads=1"])
        .env("KVTIER_CRASH_DEV", dev)
        .env("KVTIER_CRASH_FSYNC", if fsync { "1" } else { "0" })
        .env("KVTIER_CRASH_URING", if uring { "1" } else { "0" })
        .env("KVTIER_CRASH_FIRST", first.to_string())
        .env("KVTIER_CRASH_LOG", log)
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// Loads `ids` (all indexed) and checks their bytes.
fn load_and_check(tier: &mut RegionsTier, region: &Arc<PrimaryRegion>, ids: &[u64], what: &str) {
    let mut done = Completions::new();
    for (n, chunk) in ids.chunks(SLOTS).enumerate() {
        let keys: Vec<OffloadKey> = chunk.iter().map(|&i| key(i)).collect();
        let slots: Vec<SlotId> = (0..chunk.len()).map(|s| SlotId(s as u32)).collect();
        tier.submit_load(Job { id: JobId(1 + n as u64), req: ReqContext::new(2), keys: &keys, slots: &slots });
        tier.wait_idle();
        done.clear();
        tier.poll_finished(&mut done);
        let result = done.iter().next().unwrap_or_else(|| panic!("{what}: load job not reported"));
        let oks = done.key_outcomes(result).map_or_else(|| vec![result.success; chunk.len()], <[bool]>::to_vec);
        for ((&id, &slot), ok) in chunk.iter().zip(&slots).zip(oks) {
            assert!(ok, "{what}: block {id} is indexed but does not load ({:?})", tier.stats());
            let lease = region.lease(slot, Access::Read).unwrap();
            assert!(lease.block() == pattern(id, BLOCK).as_slice(), "{what}: block {id} loaded with wrong bytes");
        }
    }
}

#[test]
fn sigkill_during_region_stores() {
    let seed = env("KVTIER_SEED").and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    let trials: u64 = env("KVTIER_CRASH_TRIALS").and_then(|s| s.parse().ok()).unwrap_or(30).max(10);
    eprintln!("seed = {seed} (replay with KVTIER_SEED={seed}), {trials} kills");
    let mut rng = kvtier_tests::Rng::new(seed);
    let uring_ok = kvtier_io_uring::probe(false).map_err(|e| eprintln!("io_uring: {e}: threaded only")).is_ok();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dev = dir.path().join("kv.dev");
    let (mut total_logged, mut total_indexed, mut total_dropped) = (0usize, 0u64, 0u64);
    let mut ranges: Vec<std::ops::Range<u64>> = Vec::new();
    let started = Instant::now();
    for trial in 0..trials {
        let uring = uring_ok && trial % 2 == 1;
        let fsync = rng.below(2) == 0;
        let delay = Duration::from_millis(20 + rng.below(300) as u64);
        let first = trial * TRIAL_SPAN;
        let log = dir.path().join(format!("trial-{trial}.log"));
        let what = format!("trial {trial} ({}, fsync {fsync}, seed {seed})", if uring { "uring" } else { "threaded" });
        let mut child = spawn_child(&dev, fsync, uring, first, &log);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !log.with_extension("ready").exists() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("{what}: the child exited before being killed: {status}");
            }
            assert!(Instant::now() < deadline, "{what}: the child never opened its device");
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(delay);
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what}: the child exited before being killed: {status}");
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let ids = logged(&log);
        let (mut tier, region) = open(&dev, fsync, uring);
        let rep = tier.recovery().clone();
        assert_eq!(rep.mode, Mode::Fast, "{what}: a process crash in this boot");
        let per_region = u64::from(tier.geometry().slots_per_region);
        // The newest region's worth of completed stores cannot have been reclaimed (FIFO).
        for &id in ids.iter().rev().take(per_region as usize / 2) {
            assert!(tier.contains(&key(id)), "{what}: block {id} was stored before the kill but is not indexed");
        }
        let attempted_end = ids.iter().max().map_or(first, |&m| m + 1) + (JOBS * BATCH) as u64;
        ranges.push(first..attempted_end);
        let indexed: Vec<u64> = ranges.iter().flat_map(|r| r.clone()).filter(|&i| tier.contains(&key(i))).collect();
        assert_eq!(tier.len(), indexed.len(), "{what}: the index holds blocks no child stored");
        load_and_check(&mut tier, &region, &indexed, &what);
        eprintln!(
            "{what}: killed after {} ms: {} logged, {} indexed ({} read by summary, {} scanned, {} records \
             dropped, {} stale), recovery {:?}",
            delay.as_millis(),
            ids.len(),
            indexed.len(),
            rep.regions_summarized,
            rep.regions_scanned,
            rep.dropped_corrupt,
            rep.dropped_stale,
            rep.duration
        );
        total_logged += ids.len();
        total_indexed += indexed.len() as u64;
        total_dropped += rep.dropped_corrupt;
        let mut out = Completions::new();
        tier.shutdown(&mut out);
    }
    eprintln!(
        "{trials} kills in {:.1} s: {total_logged} completed stores logged, {total_indexed} indexed blocks loaded \
         and verified, {total_dropped} torn records dropped by recovery",
        started.elapsed().as_secs_f64()
    );
    assert!(total_logged > 0, "no child ever completed a store: the kills test nothing");
}

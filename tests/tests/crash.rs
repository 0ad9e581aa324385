//! Crash consistency of the FS tier on a real file system: a child process stores blocks
//! continuously through `FsTier` and is killed with `SIGKILL` at seeded random moments; after
//! each kill the tier is reopened on the same directory and must hold up:
//!
//! - stale temp files of the dead child are removed at open (none is left afterwards);
//! - every block the child logged as stored is indexed and loads byte-exact: the child appends
//!   a block's id to a log (`write` + `fsync`) only after the tier reported its store done;
//! - every indexed block loads with exactly the bytes the child wrote (derived from its key):
//!   no corrupt block is indexed or served.
//!
//! Each trial picks the storage format (native, vllm) and `fsync` (on, off) and the executor
//! (threaded, and io_uring where it runs here: otherwise it is skipped with a message). A
//! process kill keeps the page cache, so a store that completed survives it with or without
//! `fsync`; both settings are exercised (`fsync` matters for machine crashes, which this test
//! does not simulate: the `kvtier-io-sim` simulation covers lost unsynced writes).
//!
//! The seed is printed; `KVTIER_SEED=<n>` replays the same kill delays and settings (the
//! child's progress at a given delay still depends on the machine). `KVTIER_CRASH_TRIALS`
//! changes the number of kills (default 40, at least 20).

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvtier_core::{Completions, Job, JobId, OffloadKey, ReqContext, SecondaryTier, SlotId};
use kvtier_fs::namespace::RunConfig;
use kvtier_fs::region::{Access, PrimaryRegion};
use kvtier_fs::{Executor, FsTier, FsTierConfig, StorageFormat};
use kvtier_io_threaded::{ThreadedConfig, ThreadedExecutor};
use kvtier_io_uring::{UringConfig, UringExecutor};

const BLOCK: usize = 8192;
/// Keys per store job, and jobs in flight at once in the child.
const BATCH: usize = 8;
const JOBS: usize = 4;
const SLOTS: usize = BATCH * JOBS;
/// Most blocks one child stores (it then idles until killed), to bound the disk used.
const MAX_PER_TRIAL: u64 = 4000;
/// Key ids of trial `t` start at `t * TRIAL_SPAN`.
const TRIAL_SPAN: u64 = 1_000_000;

fn key(i: u64) -> OffloadKey {
    let mut hash = [0u8; 32];
    hash[..8].copy_from_slice(&i.to_be_bytes());
    hash[8..16].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    OffloadKey::new(&hash, (i % 3) as u32).unwrap()
}

/// The bytes block `i` holds: distinct per block and per position.
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExecKind {
    Threaded,
    Uring,
}

impl ExecKind {
    fn name(self) -> &'static str {
        match self {
            ExecKind::Threaded => "threaded",
            ExecKind::Uring => "uring",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "threaded" => ExecKind::Threaded,
            "uring" => ExecKind::Uring,
            other => panic!("unknown executor {other}"),
        }
    }

    fn make(self, region: &Arc<PrimaryRegion>, o_direct: bool) -> std::io::Result<Box<dyn Executor>> {
        let region = Arc::clone(region);
        Ok(match self {
            ExecKind::Threaded => {
                let config =
                    ThreadedConfig { read_workers: 4, write_workers: 4, o_direct, ..ThreadedConfig::default() };
                Box::new(ThreadedExecutor::new(region, config)?)
            }
            ExecKind::Uring => {
                Box::new(UringExecutor::new(region, UringConfig { o_direct, ..UringConfig::default() })?)
            }
        })
    }
}

fn tier_config(root: &Path, format: StorageFormat, fsync: bool) -> FsTierConfig {
    let mut config = FsTierConfig::new(root, RunConfig::default(), BLOCK);
    config.format = format;
    config.fsync = fsync;
    config
}

fn open(root: &Path, format: StorageFormat, fsync: bool, exec: ExecKind) -> (FsTier, Arc<PrimaryRegion>) {
    let region = Arc::new(PrimaryRegion::anonymous(SLOTS, BLOCK).unwrap());
    let tier = FsTier::open(&tier_config(root, format, fsync), |o_direct| exec.make(&region, o_direct)).unwrap();
    (tier, region)
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Child side of `sigkill_during_stores` (does nothing when run on its own): stores blocks
/// `first..` in jobs of `BATCH`, `JOBS` jobs in flight, and logs each block durably once its
/// store is reported done. Never returns: it is killed.
#[test]
fn crash_child() {
    let Some(root) = env("KVTIER_CRASH_ROOT") else { return };
    let exec = ExecKind::parse(&env("KVTIER_CRASH_EXEC").unwrap());
    let format =
        if env("KVTIER_CRASH_FORMAT").unwrap() == "vllm" { StorageFormat::Vllm } else { StorageFormat::Native };
    let fsync = env("KVTIER_CRASH_FSYNC").unwrap() == "1";
    let first: u64 = env("KVTIER_CRASH_FIRST").unwrap().parse().unwrap();
    let log_path = PathBuf::from(env("KVTIER_CRASH_LOG").unwrap());
    let (mut tier, region) = open(Path::new(&root), format, fsync, exec);
    let mut log = OpenOptions::new().create(true).append(true).open(&log_path).unwrap();
    std::fs::write(log_path.with_extension("ready"), b"").unwrap();

    let mut next = first;
    let mut job_id = 0u64;
    let mut jobs: Vec<Option<(JobId, Vec<u64>)>> = vec![None; JOBS];
    let mut done = Completions::new();
    let mut line = String::new();
    loop {
        // Fill every idle job's slots with new blocks and submit it.
        for (j, job) in jobs.iter_mut().enumerate() {
            if job.is_some() || next >= first + MAX_PER_TRIAL {
                continue;
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
            *job = Some((JobId(job_id), ids));
        }
        if jobs.iter().all(Option::is_none) {
            // Everything stored: wait for the kill.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        tier.wait_idle();
        tier.poll_finished(&mut done);
        for result in done.iter() {
            let j = jobs.iter().position(|job| job.as_ref().is_some_and(|(id, _)| *id == result.job)).unwrap();
            let (_, ids) = jobs[j].take().unwrap();
            let oks = done.key_outcomes(result).map_or_else(|| vec![result.success; ids.len()], <[bool]>::to_vec);
            line.clear();
            for (id, ok) in ids.iter().zip(oks) {
                if ok {
                    line.push_str(&format!("{id}\n"));
                }
            }
            // Durable before the next store starts: a block in the log is a completed store.
            log.write_all(line.as_bytes()).unwrap();
            log.sync_data().unwrap();
        }
        done.clear();
    }
}

/// Temp files (`*.tmp`) under `dir`.
fn temp_files(dir: &Path) -> usize {
    let mut n = 0;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(d) else { continue };
        for e in entries.flatten() {
            if e.file_type().unwrap().is_dir() {
                dirs.push(e.path());
            } else if e.file_name().to_string_lossy().ends_with(".tmp") {
                n += 1;
            }
        }
    }
    n
}

/// The ids of the complete lines of the log (a line the kill cut short was never synced, so
/// its store was not reported complete).
fn logged(log: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete.lines().map(|l| l.parse().unwrap()).collect()
}

/// Loads `ids` through `tier` into the region's rows and checks each: it must load (`must_load`:
/// the id is indexed) and hold exactly its pattern.
fn load_and_check(tier: &mut FsTier, region: &Arc<PrimaryRegion>, ids: &[u64], what: &str) {
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
            assert!(ok, "{what}: block {id} is indexed but does not load (stats {:?})", tier.stats());
            let lease = region.lease(slot, Access::Read).unwrap();
            assert!(lease.block() == pattern(id, BLOCK).as_slice(), "{what}: block {id} loaded with wrong bytes");
        }
    }
}

/// Whether io_uring can run the executor here; prints why not.
fn uring_available() -> bool {
    let region = Arc::new(PrimaryRegion::anonymous(SLOTS, BLOCK).unwrap());
    match UringExecutor::new(region, UringConfig::default()) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("uring executor not available here ({e}): skipped, every kill uses the threaded executor");
            false
        }
    }
}

fn spawn_child(root: &Path, exec: ExecKind, format: StorageFormat, fsync: bool, first: u64, log: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env("KVTIER_CRASH_ROOT", root)
        .env("KVTIER_CRASH_EXEC", exec.name())
        .env("KVTIER_CRASH_FORMAT", if format == StorageFormat::Vllm { "vllm" } else { "native" })
        .env("KVTIER_CRASH_FSYNC", if fsync { "1" } else { "0" })
        .env("KVTIER_CRASH_FIRST", first.to_string())
        .env("KVTIER_CRASH_LOG", log)
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn sigkill_during_stores() {
    let seed = env("KVTIER_SEED").and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    let trials: u64 = env("KVTIER_CRASH_TRIALS").and_then(|s| s.parse().ok()).unwrap_or(40).max(20);
    eprintln!("seed = {seed} (replay with KVTIER_SEED={seed}), {trials} kills");
    let mut rng = kvtier_tests::Rng::new(seed);
    let execs = if uring_available() { vec![ExecKind::Threaded, ExecKind::Uring] } else { vec![ExecKind::Threaded] };
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // One directory per executor and format, reused by every trial: each reopen also finds the
    // blocks (and the leftovers) of all earlier kills.
    let root = |exec: ExecKind, format: StorageFormat| dir.path().join(format!("{}-{format:?}", exec.name()));
    // Blocks verified so far per directory (ids never repeat: trial `t` uses `t * TRIAL_SPAN..`).
    let mut verified: std::collections::HashMap<PathBuf, usize> = Default::default();
    let (mut total_logged, mut total_indexed, mut total_stale) = (0usize, 0usize, 0usize);
    let started = Instant::now();

    for trial in 0..trials {
        let exec = execs[(trial % execs.len() as u64) as usize];
        let format = if rng.below(2) == 0 { StorageFormat::Native } else { StorageFormat::Vllm };
        let fsync = rng.below(2) == 0;
        // Mostly a kill some time into the stores; sometimes one during start-up (the scan).
        let early = rng.below(6) == 0;
        let delay = Duration::from_millis(rng.below(200) as u64);
        let root = root(exec, format);
        let first = trial * TRIAL_SPAN;
        let log = dir.path().join(format!("trial-{trial}.log"));
        let what = format!("trial {trial} ({}, {format:?}, fsync {fsync}, seed {seed})", exec.name());

        let mut child = spawn_child(&root, exec, format, fsync, first, &log);
        if !early {
            // Not a timing assertion: a guard against a child that never gets going.
            let deadline = Instant::now() + Duration::from_secs(60);
            while !log.with_extension("ready").exists() {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!("{what}: the child exited before being killed: {status}");
                }
                assert!(Instant::now() < deadline, "{what}: the child never opened its tier");
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        std::thread::sleep(if early { delay / 8 } else { delay });
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what}: the child exited before being killed: {status}");
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let ids = logged(&log);
        let temps_left = if root.exists() { temp_files(&root) } else { 0 };
        let (mut tier, region) = open(&root, format, fsync, exec);
        let report = tier.startup().clone();
        assert_eq!(report.stale_temps_removed, temps_left, "{what}: every temp file of the dead child is removed");
        assert_eq!(temp_files(&root), 0, "{what}: no temp file is left after open");

        // Every block whose store completed (it is in the log) is found, byte-exact.
        for &id in &ids {
            assert!(tier.contains(&key(id)), "{what}: block {id} was stored before the kill but is not indexed");
        }
        // Every indexed block of this trial loads with its bytes: the child stores ids in
        // order, at most `JOBS * BATCH` beyond the last one it logged.
        let attempted_end = ids.iter().max().map_or(first, |&m| m + 1) + (JOBS * BATCH) as u64;
        let indexed: Vec<u64> = (first..attempted_end).filter(|&i| tier.contains(&key(i))).collect();
        let logged_set: HashSet<u64> = ids.iter().copied().collect();
        assert!(logged_set.iter().all(|i| indexed.contains(i)));
        load_and_check(&mut tier, &region, &indexed, &what);
        // ... and nothing else is indexed: the index is the blocks of earlier trials (verified
        // then, never written since) plus these.
        let before = verified.entry(root.clone()).or_default();
        assert_eq!(tier.len(), *before + indexed.len(), "{what}: the index holds blocks no trial stored");
        *before = tier.len();
        eprintln!(
            "{what}: killed after {} ms{}: {} logged, {} indexed, {} stale temp files removed",
            delay.as_millis(),
            if early { "/8 (start-up)" } else { "" },
            ids.len(),
            indexed.len(),
            report.stale_temps_removed
        );
        total_logged += ids.len();
        total_indexed += indexed.len();
        total_stale += report.stale_temps_removed;
        let mut out = Completions::new();
        tier.shutdown(&mut out);
    }
    eprintln!(
        "{trials} kills in {:.1} s: {total_logged} completed stores logged, {total_indexed} blocks indexed and \
         verified, {total_stale} stale temp files removed",
        started.elapsed().as_secs_f64()
    );
    assert!(total_logged > 0, "no child ever completed a store: the kills test nothing");
}

//! The kvtier side of `bench fs`: blocks stored, then loaded back, through the real
//! [`FsTier`] over the chosen executor and an anonymous [`PrimaryRegion`], in the state asked
//! for (quiet, churn, full).

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvtier_core::{Completions, Job, JobId, OffloadKey, ReqContext, SecondaryTier, SlotId};
use kvtier_fs::direct::DirectMode;
use kvtier_fs::namespace::RunConfig;
use kvtier_fs::region::{Access, PrimaryRegion};
use kvtier_fs::{Executor, FsTier, FsTierConfig, StorageFormat};
use kvtier_io_threaded::{ThreadedConfig, ThreadedExecutor};
use kvtier_io_uring::{UringConfig, UringExecutor};

use super::dirs::disk_bytes;
use super::pattern::{fill_pattern, key, row_seed};
use super::{size_name, BoxError, Ctx, State, ALIGN};
use crate::cputime::rusage_cpu;

/// Files [`create_cost`] creates before each store.
const CREATE_PROBE_FILES: usize = 256;
/// Rows whose bytes are compared after each load (evenly spaced, plus the last).
const VERIFY_SAMPLE: u64 = 64;

/// The kvtier phase's figures.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct KvFigures {
    pub(super) store: Duration,
    pub(super) load: Duration,
    pub(super) store_cpu: f64,
    pub(super) load_cpu: f64,
    /// Bytes the device wrote during the store, per block byte (`/proc/diskstats`; includes
    /// headers, metadata, and any other process's writes).
    pub(super) device_write: Option<f64>,
    /// Bytes the device read during the load, per block byte.
    pub(super) device_read: Option<f64>,
    /// Microseconds to create one empty file in the tier's rank directory right before the
    /// store (see [`create_cost`]); 0 for the region engine (it creates no file).
    pub(super) create_us: f64,
    /// Region engine: seconds its reopen (a clean one) took per GiB of blocks it indexed.
    pub(super) recovery_s_per_gib: Option<f64>,
    /// Seconds per GiB indexed of a reopen that reads every record (region engine).
    pub(super) scan_s_per_gib: Option<f64>,
}

pub(super) fn default_queue_depth(executor: &str) -> usize {
    match executor {
        "threaded" => {
            let d = ThreadedConfig::default();
            d.read_workers + d.write_workers
        }
        "uring" => UringConfig::DEFAULT_MAX_OPS,
        _ => 32,
    }
}

/// Builds executor `name` with `qd` concurrent operations. An executor this binary does not
/// have is an `Unsupported` error.
pub(super) fn make_executor(
    name: &str,
    region: Arc<PrimaryRegion>,
    qd: usize,
    queue_capacity: usize,
    o_direct: bool,
) -> io::Result<Box<dyn Executor>> {
    match name {
        "threaded" => {
            let config = ThreadedConfig { read_workers: qd - qd / 2, write_workers: qd / 2, queue_capacity, o_direct };
            Ok(Box::new(ThreadedExecutor::new(region, config)?))
        }
        "uring" => {
            let config = UringConfig { max_ops: qd, queue_capacity, o_direct, ..UringConfig::default() };
            Ok(Box::new(UringExecutor::new(region, config)?))
        }
        _ => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("the {name} executor is not built into this binary"),
        )),
    }
}

/// Whether executor `name` can be built here.
pub(super) fn probe_executor(name: &str) -> io::Result<()> {
    let region = Arc::new(PrimaryRegion::anonymous(1, ALIGN as usize)?);
    let mut exec = make_executor(name, region, 2, 16, false)?;
    exec.shutdown();
    Ok(())
}

/// A tier the benchmark drives, with its counters for error messages.
pub(super) trait Benched: SecondaryTier {
    /// The tier's counters, for a failure's message.
    fn describe(&self) -> String;
}

impl Benched for FsTier {
    fn describe(&self) -> String {
        format!("{:?}", self.stats())
    }
}

/// Stores (or loads) `keys` from (into) `slots` in jobs of `ctx.job_blocks`, waits for all of
/// them and checks that every job succeeded.
pub(super) fn run_jobs(
    ctx: &mut Ctx,
    tier: &mut dyn Benched,
    store: bool,
    keys: &[OffloadKey],
    slots: &[SlotId],
    done: &mut Completions,
) -> Result<(), BoxError> {
    let mut jobs = 0usize;
    for (k, s) in keys.chunks(ctx.job_blocks).zip(slots.chunks(ctx.job_blocks)) {
        ctx.next_job += 1;
        let job = Job { id: JobId(ctx.next_job), req: ReqContext::default(), keys: k, slots: s };
        if store {
            tier.submit_store(job);
        } else {
            tier.submit_load(job);
        }
        jobs += 1;
    }
    tier.wait_idle();
    done.clear();
    tier.poll_finished(done);
    let failed = done.iter().filter(|r| !r.success).count();
    if done.len() != jobs || failed != 0 {
        let what = if store { "store" } else { "load" };
        return Err(format!(
            "{what}: {} of {jobs} jobs reported, {failed} failed (tier stats {})",
            done.len(),
            tier.describe()
        )
        .into());
    }
    Ok(())
}

/// Creates and deletes files the way an evicting cache does: `keys` are stored through the tier,
/// empty files are created next to them up to `ctx.churn_files` files in all, then every one
/// of them is deleted.
fn churn(
    ctx: &mut Ctx,
    tier: &mut FsTier,
    keys: &[OffloadKey],
    slots: &[SlotId],
    done: &mut Completions,
) -> Result<(), BoxError> {
    run_jobs(ctx, tier, true, keys, slots, done)?;
    let blocks: Vec<PathBuf> = keys.iter().map(|k| tier.layout().block_path(k)).collect();
    let extra_count = ctx.churn_files.saturating_sub(blocks.len() as u64) as usize;
    let mut extra = Vec::with_capacity(extra_count);
    for i in 0..extra_count {
        let mut name = blocks[i % blocks.len()].clone().into_os_string();
        name.push(format!(".churn{i}"));
        let path = PathBuf::from(name);
        OpenOptions::new().write(true).create_new(true).open(&path)?;
        extra.push(path);
    }
    for path in blocks.iter().chain(&extra) {
        std::fs::remove_file(path)?;
    }
    Ok(())
}

/// Mean microseconds to create (`open(O_CREAT|O_EXCL)` + `close`) one empty file in `dir`
/// (the tier's rank directory, whose block group the tier's new directories and files start
/// in), one file after another: about 20 us on a quiet ext4, hundreds when the inode
/// allocator skips recently deleted inodes. The files are kept (deleting them would add
/// churn); they go with the run's directories.
fn create_cost(dir: &Path, count: usize) -> io::Result<f64> {
    let started = Instant::now();
    for i in 0..count {
        OpenOptions::new().write(true).create_new(true).open(dir.join(format!(".create-probe-{i}")))?;
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / count as f64)
}

/// Compares a sample of rows with the pattern they were stored with.
pub(super) fn verify(region: &Arc<PrimaryRegion>, salt: u64, n: u64) -> Result<(), BoxError> {
    let step = (n / VERIFY_SAMPLE).max(1);
    let mut expected = vec![0u8; region.row_bytes()];
    let rows = (0..n).step_by(step as usize).chain(std::iter::once(n - 1));
    for row in rows {
        let lease = region.lease(SlotId(row as u32), Access::Read)?;
        fill_pattern(&mut expected, row_seed(salt, row));
        if lease.block() != &expected[..] {
            return Err(format!("row {row}: loaded bytes differ from the stored ones").into());
        }
    }
    Ok(())
}

pub(super) fn measure_kvtier(
    ctx: &mut Ctx,
    executor: &str,
    qd: usize,
    bs: u64,
    n: u64,
    state: State,
) -> Result<KvFigures, BoxError> {
    let rows = u32::try_from(n).map_err(|_| "too many blocks")?;
    let row_bytes = usize::try_from(bs)?;
    let region = Arc::new(PrimaryRegion::anonymous(rows as usize, row_bytes)?);
    // Salts: one key set per (size, state), another for the churn blocks.
    let salt = bs ^ ((state as u64 + 1) << 40);
    for row in 0..n {
        let mut lease = region.lease(SlotId(row as u32), Access::Write)?;
        if let Some(buf) = lease.as_mut_slice() {
            fill_pattern(&mut buf[..row_bytes], row_seed(salt, row));
        }
    }
    let keys = (0..n).map(|i| key(salt, i)).collect::<Result<Vec<_>, _>>()?;
    let slots: Vec<SlotId> = (0..rows).map(SlotId).collect();

    let root = ctx.scratch.join(format!("kvtier-{executor}-{}-{}", state.name(), size_name(bs)));
    std::fs::create_dir(&root)?;
    let run = RunConfig { model_name: format!("kvtier-bench-fs-{bs}"), ..RunConfig::default() };
    let mut config = FsTierConfig::new(&root, run, region.row_bytes());
    config.format = StorageFormat::Native;
    config.o_direct = DirectMode::Auto;
    config.max_blocks = (state == State::Full).then_some(rows as usize);
    config.fsync = ctx.fsync;
    let queue_capacity = ctx.queue_capacity.unwrap_or((n as usize).max(ThreadedConfig::DEFAULT_QUEUE_CAPACITY));
    let exec_region = Arc::clone(&region);
    let mut tier =
        FsTier::open(&config, |o_direct| make_executor(executor, exec_region, qd, queue_capacity, o_direct))?;
    ctx.tier_o_direct = Some(tier.startup().o_direct);
    let mut done = Completions::new();

    match state {
        State::Quiet => ctx.sync(),
        State::Churn => {
            let churn_salt = salt ^ (0xc4u64 << 48);
            let churn_keys = (0..n).map(|i| key(churn_salt, i)).collect::<Result<Vec<_>, _>>()?;
            churn(ctx, &mut tier, &churn_keys, &slots, &mut done)?;
        }
        State::Full => {
            // Other blocks fill the tier to its bound; each timed store then evicts one.
            let fill_salt = salt ^ (0xf1u64 << 48);
            let fill_keys = (0..n).map(|i| key(fill_salt, i)).collect::<Result<Vec<_>, _>>()?;
            run_jobs(ctx, &mut tier, true, &fill_keys, &slots, &mut done)?;
            ctx.sync();
        }
    }

    let create_us = create_cost(tier.layout().rank_dir(), CREATE_PROBE_FILES)?;
    let d0 = disk_bytes(ctx.disk.as_deref());
    let (c0, t0) = (rusage_cpu(), Instant::now());
    run_jobs(ctx, &mut tier, true, &keys, &slots, &mut done)?;
    let (store, c1) = (t0.elapsed(), rusage_cpu());
    let d1 = disk_bytes(ctx.disk.as_deref());

    for row in 0..rows {
        let mut lease = region.lease(SlotId(row), Access::Write)?;
        if let Some(buf) = lease.as_mut_slice() {
            buf.fill(0);
        }
    }
    ctx.sync_and_drop_caches();

    let d2 = disk_bytes(ctx.disk.as_deref());
    let (c2, t2) = (rusage_cpu(), Instant::now());
    run_jobs(ctx, &mut tier, false, &keys, &slots, &mut done)?;
    let (load, c3) = (t2.elapsed(), rusage_cpu());
    let d3 = disk_bytes(ctx.disk.as_deref());
    let bytes = (n * bs) as f64;
    let per_byte = |a: Option<(u64, u64)>, b: Option<(u64, u64)>, pick: fn((u64, u64)) -> u64| {
        Some(pick(b?).saturating_sub(pick(a?)) as f64 / bytes)
    };

    verify(&region, salt, n)?;
    let stats = *tier.stats();
    done.clear();
    tier.shutdown(&mut done);
    drop(tier);
    if stats.blocks_loaded != n {
        return Err(format!("loaded {} of {n} blocks ({stats:?})", stats.blocks_loaded).into());
    }
    if state == State::Full && stats.evicted != n {
        return Err(format!("a full tier evicted {} blocks for {n} stores ({stats:?})", stats.evicted).into());
    }
    Ok(KvFigures {
        store,
        load,
        store_cpu: c1 - c0,
        load_cpu: c3 - c2,
        device_write: per_byte(d0, d1, |d| d.1),
        device_read: per_byte(d2, d3, |d| d.0),
        create_us,
        recovery_s_per_gib: None,
        scan_s_per_gib: None,
    })
}

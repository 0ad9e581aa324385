//! The region engine's side of `bench fs`: blocks stored, then loaded back, through the real
//! [`RegionsTier`] (batches into regions, the index, reclaim, checksummed records) on a device
//! file in the run's directory, over the chosen executor; then the device reopened twice, to
//! time its recovery: after a clean close (summaries only), and as after a power cut (every
//! record read and verified).
//!
//! **States.** `quiet`: a fresh device twice the blocks' size, nothing evicted. `full`: a device
//! sized for the blocks (plus the regions it keeps clean and open), first filled with as many
//! other blocks: every timed store then takes a reclaimed region's place, the steady state of a
//! disk cache at capacity.

use std::sync::Arc;
use std::time::Instant;

use kvtier_core::{Completions, SlotId};
use kvtier_fs::direct::DirectMode;
use kvtier_fs::namespace::RunConfig;
use kvtier_fs::region::{Access, PrimaryRegion};
use kvtier_fs::vfs::{HostFs, Vfs};
use kvtier_io_threaded::ThreadedConfig;
use kvtier_regions::geometry::{Geometry, HEADER_AREA};
use kvtier_regions::meta::{DeviceHeader, DeviceState, DEVICE_HEADER_LEN};
use kvtier_regions::{Mode, RegionsTier, RegionsTierConfig};

use super::dirs::disk_bytes;
use super::pattern::{fill_pattern, key, row_seed};
use super::tier::{make_executor, run_jobs, verify, Benched, KvFigures};
use super::{size_name, BoxError, Ctx, State};
use crate::cputime::rusage_cpu;

/// The region size the benchmark's devices use.
pub(super) const REGION_BYTES: u64 = 16 << 20;

impl Benched for RegionsTier {
    fn describe(&self) -> String {
        format!("{:?}; regions {}", self.stats(), self.region_states())
    }
}

/// A device holding `blocks` blocks of `bs` beyond the three regions the engine keeps open or
/// clean.
fn capacity_for(bs: u64, blocks: u64) -> Result<u64, BoxError> {
    let probe = Geometry::new(HEADER_AREA + 3 * REGION_BYTES, REGION_BYTES, bs)?;
    let per_region = u64::from(probe.slots_per_region);
    let regions = blocks.div_ceil(per_region) + 3;
    Ok(HEADER_AREA + regions * REGION_BYTES)
}

pub(super) fn measure_regions(
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
    let salt = bs ^ ((state as u64 + 1) << 40) ^ (0x7e << 56);
    for row in 0..n {
        let mut lease = region.lease(SlotId(row as u32), Access::Write)?;
        if let Some(buf) = lease.as_mut_slice() {
            fill_pattern(&mut buf[..row_bytes], row_seed(salt, row));
        }
    }
    let keys = (0..n).map(|i| key(salt, i)).collect::<Result<Vec<_>, _>>()?;
    let slots: Vec<SlotId> = (0..rows).map(SlotId).collect();

    let dir = ctx.scratch.join(format!("regions-{executor}-{}-{}", state.name(), size_name(bs)));
    std::fs::create_dir(&dir)?;
    let capacity = match state {
        State::Full => capacity_for(bs, n)?,
        _ => capacity_for(bs, 2 * n)?,
    };
    let run = RunConfig { model_name: format!("kvtier-bench-regions-{bs}"), ..RunConfig::default() };
    let mut config = RegionsTierConfig::new(dir.join("kv.dev"), capacity, run);
    config.region_bytes = REGION_BYTES;
    config.o_direct = DirectMode::Auto;
    let queue_capacity = (n as usize).max(ThreadedConfig::DEFAULT_QUEUE_CAPACITY);
    let open = |config: &RegionsTierConfig| {
        let exec_region = Arc::clone(&region);
        RegionsTier::open(config, row_bytes, |o_direct| {
            make_executor(executor, exec_region, qd, queue_capacity, o_direct)
        })
    };
    let mut tier = open(&config)?;
    ctx.tier_o_direct = Some(tier.o_direct());
    let mut done = Completions::new();
    if state == State::Full {
        let fill_salt = salt ^ (0xf1u64 << 48);
        let fill_keys = (0..n).map(|i| key(fill_salt, i)).collect::<Result<Vec<_>, _>>()?;
        run_jobs(ctx, &mut tier, true, &fill_keys, &slots, &mut done)?;
    }
    ctx.sync();

    let reclaimed = tier.stats().regions_reclaimed;
    let d0 = disk_bytes(ctx.disk.as_deref());
    let (c0, t0) = (rusage_cpu(), Instant::now());
    run_jobs(ctx, &mut tier, true, &keys, &slots, &mut done)?;
    let (store, c1) = (t0.elapsed(), rusage_cpu());
    let d1 = disk_bytes(ctx.disk.as_deref());
    let reclaimed = tier.stats().regions_reclaimed - reclaimed;

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
    verify(&region, salt, n)?;
    let stats = *tier.stats();
    if stats.blocks_loaded != n {
        return Err(format!("loaded {} of {n} blocks ({stats:?})", stats.blocks_loaded).into());
    }
    if state == State::Full && reclaimed == 0 {
        return Err(format!("a full device reclaimed no region while storing {n} blocks ({stats:?})").into());
    }
    done.clear();
    kvtier_core::SecondaryTier::shutdown(&mut tier, &mut done);
    drop(tier);

    // A clean reopen: recovery reads the summaries.
    ctx.sync_and_drop_caches();
    let tier = open(&config)?;
    let rep = tier.recovery().clone();
    drop(tier);
    // The worst case: the header says a process of another boot left the device open without
    // syncing (a power cut), so recovery reads and verifies every written record.
    let dev = &config.path;
    let mut page = vec![0u8; DEVICE_HEADER_LEN];
    HostFs::default().read_at(dev, 0, &mut page)?;
    let header = DeviceHeader {
        state: DeviceState::Open,
        fsync: false,
        boot_id: "kvtier bench: another boot".into(),
        ..DeviceHeader::decode(&page)?
    };
    let mut page = [0u8; DEVICE_HEADER_LEN];
    header.encode(&mut page);
    HostFs::default().write_at(dev, 0, &page, true)?;
    ctx.sync_and_drop_caches();
    let tier = open(&config)?;
    let scan = tier.recovery().clone();
    drop(tier);
    if scan.mode != Mode::Verify || scan.blocks_indexed != rep.blocks_indexed || scan.dropped_corrupt != 0 {
        return Err(format!("a full scan found other blocks than the summaries: {scan:?} vs {rep:?}").into());
    }
    let gib = rep.bytes_indexed as f64 / f64::from(1u32 << 30);
    let bytes = (n * bs) as f64;
    let per_byte = |a: Option<(u64, u64)>, b: Option<(u64, u64)>, pick: fn((u64, u64)) -> u64| {
        Some(pick(b?).saturating_sub(pick(a?)) as f64 / bytes)
    };
    std::fs::remove_dir_all(&dir)?;
    Ok(KvFigures {
        store,
        load,
        store_cpu: c1 - c0,
        load_cpu: c3 - c2,
        device_write: per_byte(d0, d1, |d| d.1),
        device_read: per_byte(d2, d3, |d| d.0),
        create_us: 0.0,
        recovery_s_per_gib: (gib > 0.0).then(|| rep.duration.as_secs_f64() / gib),
        scan_s_per_gib: (gib > 0.0).then(|| scan.duration.as_secs_f64() / gib),
    })
}

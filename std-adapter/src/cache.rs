//! [`TieredCache`]: the engine, its tiers and the primary memory region behind one handle, for
//! an inference engine's scheduler thread.

use std::io;
use std::sync::{Arc, Once};

use kvtier_core::{AnyPolicy, EngineConfig, MemoryTier, SecondaryTier, TieringEngine};
use kvtier_fs::region::{PrimaryRegion, RegionRows};
use kvtier_fs::vfs::Vfs;
use kvtier_fs::{Executor, FsTier};
use kvtier_regions::RegionsTier;

use crate::config::{CacheConfig, ExecutorKind, InvalidConfig, TierConfig};

/// Why a cache could not be built.
#[derive(Debug)]
pub enum CacheError {
    /// A configuration value is out of range (see [`CacheConfig::validate`]).
    Config(InvalidConfig),
    /// A tier or the region could not start.
    Io(io::Error),
}

impl std::fmt::Display for CacheError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheError::Config(e) => write!(f, "invalid configuration: {e}"),
            CacheError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for CacheError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CacheError::Config(e) => Some(e),
            CacheError::Io(e) => Some(e),
        }
    }
}

impl From<InvalidConfig> for CacheError {
    fn from(e: InvalidConfig) -> Self {
        CacheError::Config(e)
    }
}

impl From<io::Error> for CacheError {
    fn from(e: io::Error) -> Self {
        CacheError::Io(e)
    }
}

/// The threaded executor's worker counts a tier entry asks for (`None`: the default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Workers {
    /// Read-priority workers.
    pub read: Option<usize>,
    /// Write-priority workers.
    pub write: Option<usize>,
}

/// Builds the executor a disk tier (fs, regions) asked for. `auto` picks io_uring where it can
/// be set up here (the kernel has what it needs, no seccomp filter refuses it, the region can
/// be registered within `RLIMIT_MEMLOCK`) and otherwise the threaded executor, with one warning
/// per process naming the reason.
pub fn make_executor(
    kind: ExecutorKind,
    workers: Workers,
    region: &Arc<PrimaryRegion>,
    o_direct: bool,
) -> io::Result<Box<dyn Executor>> {
    match kind {
        ExecutorKind::Threaded => threaded_executor(workers, region, o_direct),
        ExecutorKind::Uring => uring_executor(region, o_direct),
        ExecutorKind::Auto => match uring_executor(region, o_direct) {
            Ok(executor) => Ok(executor),
            Err(e) => {
                static WARNED: Once = Once::new();
                WARNED.call_once(|| eprintln!("kvtier: warning: {e}; disk tiers use the threaded executor"));
                threaded_executor(workers, region, o_direct)
            }
        },
        // The sim executor works on its own in-memory disk, which the tier must open: see
        // `open_tier`.
        ExecutorKind::Sim => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the sim executor is built with its in-memory disk by open_tier",
        )),
    }
}

fn threaded_executor(workers: Workers, region: &Arc<PrimaryRegion>, o_direct: bool) -> io::Result<Box<dyn Executor>> {
    let mut cfg = kvtier_io_threaded::ThreadedConfig { o_direct, ..Default::default() };
    if let Some(n) = workers.read {
        cfg.read_workers = n;
    }
    if let Some(n) = workers.write {
        cfg.write_workers = n;
    }
    Ok(Box::new(kvtier_io_threaded::ThreadedExecutor::new(region.clone(), cfg)?))
}

fn uring_executor(region: &Arc<PrimaryRegion>, o_direct: bool) -> io::Result<Box<dyn Executor>> {
    let cfg = kvtier_io_uring::UringConfig { o_direct, ..Default::default() };
    Ok(Box::new(kvtier_io_uring::UringExecutor::new(region.clone(), cfg)?))
}

/// Opens one secondary tier of `config` over `region`, once its settings are
/// [valid](TierConfig::validate) (`InvalidInput` naming the field otherwise).
pub fn open_tier(config: &TierConfig, region: &Arc<PrimaryRegion>) -> io::Result<Box<dyn SecondaryTier>> {
    config.validate().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    match config {
        TierConfig::Memory(_) => Ok(Box::new(MemoryTier::new(Some(Arc::new(RegionRows(region.clone())))))),
        TierConfig::Fs(fs) if fs.executor == ExecutorKind::Sim => {
            // A fresh in-memory disk (seed 0, no faults) holds the whole namespace, config.json
            // included: nothing reaches `root_dir` on the host, and nothing outlives the tier.
            let disk = kvtier_io_sim::SimDisk::new(0);
            let tier = FsTier::open_on(&fs.tier_config(region.row_bytes()), Arc::new(disk.clone()), |o_direct| {
                let config = kvtier_io_sim::SimConfig { o_direct, ..Default::default() };
                Ok(Box::new(kvtier_io_sim::SimExecutor::new(region.clone(), disk, config)) as Box<dyn Executor>)
            })?;
            Ok(Box::new(tier))
        }
        TierConfig::Fs(fs) => {
            let workers = Workers { read: fs.read_workers, write: fs.write_workers };
            let tier = FsTier::open(&fs.tier_config(region.row_bytes()), |o_direct| {
                make_executor(fs.executor, workers, region, o_direct)
            })?;
            Ok(Box::new(tier))
        }
        TierConfig::Regions(r) if r.executor == ExecutorKind::Sim => {
            // As for fs: a fresh in-memory disk holds the device; nothing reaches the host.
            let disk = kvtier_io_sim::SimDisk::new(0);
            if let Some(dir) = r.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                disk.create_dir_all(dir)?;
            }
            let tier =
                RegionsTier::open_on(&r.tier_config(), region.row_bytes(), Arc::new(disk.clone()), |o_direct| {
                    let config = kvtier_io_sim::SimConfig { o_direct, ..Default::default() };
                    Ok(Box::new(kvtier_io_sim::SimExecutor::new(region.clone(), disk, config)) as Box<dyn Executor>)
                })?;
            Ok(Box::new(tier))
        }
        TierConfig::Regions(r) => {
            let workers = Workers { read: r.read_workers, write: r.write_workers };
            let tier = RegionsTier::open(&r.tier_config(), region.row_bytes(), |o_direct| {
                make_executor(r.executor, workers, region, o_direct)
            })?;
            Ok(Box::new(tier))
        }
        TierConfig::Redis(redis) => Ok(Box::new(kvtier_redis::RedisTier::open(&redis.tier_config(), region.clone())?)),
    }
}

/// The primary region, the engine and its tiers. Dropping it shuts the engine down (every tier
/// drains) before the region's memory goes.
pub struct TieredCache {
    engine: TieringEngine,
    region: Arc<PrimaryRegion>,
}

impl std::fmt::Debug for TieredCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TieredCache").field("engine", &self.engine).field("region", &self.region).finish()
    }
}

impl TieredCache {
    /// [Validates](CacheConfig::validate) `config`, maps the region and opens every tier.
    pub fn new(config: &CacheConfig) -> Result<Self, CacheError> {
        config.validate()?;
        let rows = config.num_blocks as usize;
        let region = match &config.shared_memory {
            Some(path) => PrimaryRegion::shared(path, rows, config.block_bytes, config.shared_memory_mode)?,
            None => PrimaryRegion::anonymous(rows, config.block_bytes)?,
        };
        let region = Arc::new(region);
        let tiers = config.tiers.iter().map(|t| open_tier(t, &region)).collect::<io::Result<Vec<_>>>()?;
        let engine_config =
            EngineConfig { promotion_deadline_steps: config.promotion_deadline_steps, events: config.events };
        let engine = TieringEngine::new(AnyPolicy::new(config.policy, config.num_blocks), tiers, engine_config);
        Ok(TieredCache { engine, region })
    }

    /// The engine: call it from the scheduler thread.
    pub fn engine(&mut self) -> &mut TieringEngine {
        &mut self.engine
    }

    /// The engine, read-only.
    pub fn engine_ref(&self) -> &TieringEngine {
        &self.engine
    }

    /// The primary rows (copy GPU blocks in and out through leases).
    pub fn region(&self) -> &Arc<PrimaryRegion> {
        &self.region
    }

    /// Drains every tier and closes the engine (also done on drop).
    pub fn shutdown(&mut self) {
        self.engine.shutdown();
    }
}

impl Drop for TieredCache {
    fn drop(&mut self) {
        self.engine.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::{FsConfig, RegionsConfig};

    #[test]
    fn each_executor_kind_builds_its_executor() {
        let region = Arc::new(PrimaryRegion::anonymous(4, 4096).unwrap());
        let fs = Workers::default();
        let threaded = make_executor(ExecutorKind::Threaded, fs, &region, false).unwrap();
        assert_eq!(threaded.name(), "threaded");
        let auto = make_executor(ExecutorKind::Auto, fs, &region, false).unwrap();
        match kvtier_io_uring::probe(false) {
            Ok(()) => {
                assert_eq!(make_executor(ExecutorKind::Uring, fs, &region, false).unwrap().name(), "uring");
                assert_eq!(auto.name(), "uring", "auto picks io_uring where it runs");
            }
            Err(e) => {
                eprintln!("io_uring unavailable here ({e}): auto must fall back");
                assert_eq!(auto.name(), "threaded");
                assert!(make_executor(ExecutorKind::Uring, fs, &region, false).is_err());
            }
        }
    }

    /// Issue 11, item 24: the CPU tier's events are a configuration choice, off by default,
    /// so a cache whose integrator never takes them does not grow a log without bound.
    #[test]
    fn cpu_events_accumulate_only_when_configured() {
        let mut counted = Vec::new();
        for events in [None, Some(true)] {
            let mut config = CacheConfig::from_toml("num_blocks = 2\nblock_bytes = 64").unwrap();
            assert!(!config.events, "off by default");
            if let Some(on) = events {
                config.events = on;
            }
            let mut cache = TieredCache::new(&config).unwrap();
            let req = kvtier_core::ReqContext::new(1);
            for i in 0..50u8 {
                let key = kvtier_core::OffloadKey::from_bytes(&[i, 0, 0, 0]).unwrap();
                let mut plan = kvtier_core::StorePlan::new();
                cache.engine().prepare_store(&[key], req, &mut plan).unwrap();
                cache.engine().complete_store(&plan.keys, req, true).unwrap();
                cache.engine().end_step();
            }
            let mut log = kvtier_core::EventLog::new();
            cache.engine().take_events(&mut log);
            counted.push(log.len());
        }
        assert_eq!(counted[0], 0, "nothing collected when off");
        assert!(counted[1] >= 50, "stored (and evicted) events when on: {}", counted[1]);
    }

    #[test]
    fn a_sim_tier_lives_on_its_in_memory_disk() {
        let root = tempfile::tempdir().unwrap();
        let region = Arc::new(PrimaryRegion::anonymous(4, 4096).unwrap());
        let mut fs = FsConfig::new(root.path());
        fs.executor = ExecutorKind::Sim;
        let tier = open_tier(&TierConfig::Fs(Box::new(fs)), &region).unwrap();
        drop(tier);
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0, "nothing written to the host");
        assert!(make_executor(ExecutorKind::Sim, Workers::default(), &region, false).is_err());
    }

    #[test]
    fn a_regions_tier_on_a_file_and_on_the_sim_disk() {
        let root = tempfile::tempdir().unwrap();
        let region = Arc::new(PrimaryRegion::anonymous(4, 4096).unwrap());
        let mut cfg = RegionsConfig::new(root.path().join("dev"), 8 << 20);
        cfg.region_bytes = Some(crate::config::Bytes(1 << 20));
        cfg.executor = ExecutorKind::Threaded;
        drop(open_tier(&TierConfig::Regions(Box::new(cfg.clone())), &region).unwrap());
        assert_eq!(std::fs::metadata(root.path().join("dev")).unwrap().len(), (8 << 20) - (1 << 20) + (64 << 10));
        let sim = RegionsConfig { executor: ExecutorKind::Sim, path: root.path().join("sim/dev"), ..cfg };
        drop(open_tier(&TierConfig::Regions(Box::new(sim)), &region).unwrap());
        assert!(!root.path().join("sim").exists(), "nothing written to the host");
    }
}

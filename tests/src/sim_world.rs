//! The whole system on the simulated disk, written once for the `sim_system` test and the
//! `engine_fs_sim` fuzz target: the engine over a primary region holding real bytes, an
//! optional memory tier and a disk tier (the FS tier, or the region engine:
//! [`SimSetup::regions`]) whose executor is `kvtier-io-sim` (in-memory disk, seeded latencies
//! and faults), with crashes and clean restarts, and the checks that must hold after every step
//! and every restart.
//!
//! A driver decides what happens (the test draws a random workload from a seed, the fuzz target
//! decodes its input); the [`World`] does it, keeps the caller's side of the protocol (rows
//! written before `complete_store`, pins held until `complete_load`) and checks:
//!
//! - after every step ([`World::check`]): no tier broke the job protocol, the primary pool's
//!   accounting and slot table agree, every caller pin is still held, and every ready block
//!   holds exactly the bytes stored for its key (content is derived from the key, so a torn,
//!   flipped or misdirected block cannot pass);
//! - after every restart ([`World::restart`]): every block the disk tier indexes verifies on
//!   disk (after a crash with `fsync` on because published blocks are durable, without it
//!   because start-up finds the crashed run's open marker and verifies every block: the FS
//!   tier's files, the region engine's records), no foreign or temp file is left, and a clean
//!   restart indexes exactly what was indexed before.
//!
//! Failure messages name the set-up's `seed`. Everything observable is mixed into
//! [`World::trace`], so two runs of one seed can be compared.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use kvtier_core::{
    AnyPolicy, EngineConfig, LookupResult, MemoryTier, OffloadKey, PolicyKind, ReqContext, SlotId, StorePlan,
    TieringEngine,
};
use kvtier_fs::direct::DirectMode;
use kvtier_fs::format::{self, HEADER_LEN};
use kvtier_fs::namespace::RunConfig;
use kvtier_fs::region::{Access, PrimaryRegion, RegionRows};
use kvtier_fs::rng::SplitMix64;
use kvtier_fs::vfs::Vfs;
use kvtier_fs::{FsTier, FsTierConfig};
use kvtier_io_sim::{Faults, Fnv, SimConfig, SimDisk, SimExecutor};
use kvtier_regions::{Mode, RegionsTier, RegionsTierConfig};

/// The FS tier's root directory on the simulated disk (never created on the host).
pub const ROOT: &str = "/sim-root";
/// The region engine's device on the simulated disk.
pub const DEVICE: &str = "/sim-root/kv.dev";

/// What the world is made of.
#[derive(Debug, Clone)]
pub struct SimSetup {
    /// Seed of the simulated disk; failure messages name it.
    pub seed: u64,
    /// Seed of the executor's latency and fault draws at the first boot; boot `n` uses
    /// `exec_seed + n`.
    pub exec_seed: u64,
    /// Size of the key universe: keys are [`key`]`(0..keys)`.
    pub keys: u64,
    /// Primary slots.
    pub slots: u32,
    /// Bytes per block.
    pub row_bytes: usize,
    /// The primary pool's eviction policy.
    pub policy: PolicyKind,
    /// A memory tier (tier 0) in front of the FS tier.
    pub memory_tier: bool,
    /// The FS tier syncs each block before publishing it.
    pub fsync: bool,
    /// The FS tier's capacity bound (stores beyond it evict disk blocks).
    pub max_blocks: Option<usize>,
    /// Run the region engine, on a device of this many regions of 64 KiB, instead of the FS
    /// tier (`max_blocks` does not apply: the device is the bound).
    pub regions: Option<u32>,
    /// The executor's injected faults.
    pub faults: Faults,
    /// The executor's longest latency, in polls.
    pub max_latency: u32,
    /// The executor's queue.
    pub queue_capacity: usize,
    /// The engine's promotion deadline (0: none).
    pub promotion_deadline_steps: u32,
}

/// Totals over a run, for a report.
#[derive(Debug, Default, Clone, Copy)]
pub struct Figures {
    /// `end_step` calls.
    pub steps: u64,
    /// Simulated power cuts.
    pub crashes: u64,
    /// Clean shutdowns and restarts.
    pub restarts: u64,
    /// Ready blocks whose bytes were checked.
    pub ready_checked: u64,
    /// Promoted blocks that became ready.
    pub promotions_loaded: u64,
    /// Blocks the FS tier loaded.
    pub fs_loaded: u64,
    /// Blocks the FS tier stored.
    pub fs_stored: u64,
    /// Corrupt blocks the FS tier caught.
    pub fs_corrupt: u64,
    /// Failed or transient FS operations.
    pub faults: u64,
    /// Torn blocks start-up found and removed.
    pub torn_removed: u64,
}

impl Figures {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Figures) {
        self.steps += other.steps;
        self.crashes += other.crashes;
        self.restarts += other.restarts;
        self.ready_checked += other.ready_checked;
        self.promotions_loaded += other.promotions_loaded;
        self.fs_loaded += other.fs_loaded;
        self.fs_stored += other.fs_stored;
        self.fs_corrupt += other.fs_corrupt;
        self.faults += other.faults;
        self.torn_removed += other.torn_removed;
    }
}

/// Key `i` of the universe: a 16-byte hash part, group `i % 2`.
pub fn key(i: u64) -> OffloadKey {
    let mut h = [0u8; 16];
    h[..8].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    h[8..].copy_from_slice(&(i ^ 0x55).to_le_bytes());
    OffloadKey::new(&h, (i % 2) as u32).expect("a 20-byte key")
}

/// The `len` bytes stored for `key`: derived from the key alone.
pub fn content(key: &OffloadKey, len: usize) -> Vec<u8> {
    let mut rng =
        SplitMix64::new(key.as_bytes().iter().fold(0xabcd_u64, |h, &b| h.wrapping_mul(31).wrapping_add(u64::from(b))));
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Starts the system on `disk` for the `boots`-th time: a fresh region, executor and engine.
pub fn boot(setup: &SimSetup, boots: u64, disk: &SimDisk) -> (Arc<PrimaryRegion>, TieringEngine) {
    let region = Arc::new(PrimaryRegion::anonymous(setup.slots as usize, setup.row_bytes).expect("map the region"));
    let exec_region = Arc::clone(&region);
    let exec_disk = disk.clone();
    let sim = SimConfig {
        seed: setup.exec_seed.wrapping_add(boots),
        max_latency: setup.max_latency,
        queue_capacity: setup.queue_capacity,
        faults: setup.faults,
        ..SimConfig::default()
    };
    let run = RunConfig { model_name: "sim/model".into(), ..RunConfig::default() };
    let make = move |o_direct| -> std::io::Result<Box<dyn kvtier_fs::Executor>> {
        Ok(Box::new(SimExecutor::new(exec_region, exec_disk, SimConfig { o_direct, ..sim })))
    };
    let disk_tier: Box<dyn kvtier_core::SecondaryTier> = match setup.regions {
        None => {
            let config = FsTierConfig {
                fsync: setup.fsync,
                o_direct: DirectMode::Auto,
                max_blocks: setup.max_blocks,
                ..FsTierConfig::new(ROOT, run, setup.row_bytes)
            };
            Box::new(FsTier::open_on(&config, Arc::new(disk.clone()), make).expect("open the FS tier on the sim disk"))
        }
        Some(regions) => {
            disk.create_dir_all(Path::new(ROOT)).expect("the device's directory");
            let region_bytes = 64 << 10;
            let capacity = kvtier_regions::geometry::HEADER_AREA + u64::from(regions) * region_bytes;
            let mut config = RegionsTierConfig::new(DEVICE, capacity, run);
            config.region_bytes = region_bytes;
            config.fsync = setup.fsync;
            let tier = RegionsTier::open_on(&config, setup.row_bytes, Arc::new(disk.clone()), make)
                .expect("open the region engine on the sim disk");
            Box::new(tier)
        }
    };
    let mut tiers: Vec<Box<dyn kvtier_core::SecondaryTier>> = Vec::new();
    if setup.memory_tier {
        tiers.push(Box::new(MemoryTier::new(Some(Arc::new(RegionRows(Arc::clone(&region)))))));
    }
    tiers.push(disk_tier);
    let engine = TieringEngine::new(
        AnyPolicy::new(setup.policy, setup.slots),
        tiers,
        EngineConfig { events: false, promotion_deadline_steps: setup.promotion_deadline_steps },
    );
    (region, engine)
}

/// The system, the caller's outstanding GPU copies and the checks.
pub struct World {
    /// What it is made of.
    pub setup: SimSetup,
    /// The simulated disk (survives restarts).
    pub disk: SimDisk,
    /// The primary region of the current boot.
    pub region: Arc<PrimaryRegion>,
    /// The engine of the current boot.
    pub engine: TieringEngine,
    /// Prepared loads not yet completed (the caller's pins).
    pub held: Vec<Vec<OffloadKey>>,
    /// Stores whose rows were written, not yet completed.
    pub writing: Vec<Vec<OffloadKey>>,
    /// Restarts so far.
    pub boots: u64,
    /// Totals.
    pub figures: Figures,
    /// Hash of everything observed (answers, crash fates, start-up reports).
    pub trace: Fnv,
}

impl World {
    /// Boots `setup` on a fresh disk seeded with `setup.seed`.
    pub fn new(setup: SimSetup) -> Self {
        let disk = SimDisk::new(setup.seed);
        let (region, engine) = boot(&setup, 0, &disk);
        World {
            setup,
            disk,
            region,
            engine,
            held: Vec::new(),
            writing: Vec::new(),
            boots: 0,
            figures: Figures::default(),
            trace: Fnv::default(),
        }
    }

    /// The FS tier (the last tier), when the world runs one.
    pub fn fs(&mut self) -> Option<&mut FsTier> {
        let index = usize::from(self.setup.memory_tier);
        self.engine.tier_mut::<FsTier>(index)
    }

    /// The region engine (the last tier), when the world runs one.
    pub fn regions(&mut self) -> Option<&mut RegionsTier> {
        let index = usize::from(self.setup.memory_tier);
        self.engine.tier_mut::<RegionsTier>(index)
    }

    /// Whether the disk tier indexes `key`.
    pub fn disk_contains(&mut self, key: &OffloadKey) -> bool {
        match self.fs() {
            Some(fs) => fs.contains(key),
            None => self.regions().expect("a disk tier").contains(key),
        }
    }

    /// The universe's keys the disk tier indexes, by index.
    pub fn indexed(&mut self) -> Vec<u64> {
        (0..self.setup.keys).filter(|&i| self.disk_contains(&key(i))).collect()
    }

    /// Adds the disk tier's and the engine's counters of this boot to the figures (call once
    /// per boot, before it ends).
    pub fn account_fs(&mut self) {
        let (loaded, stored, corrupt, faults) = match self.fs() {
            Some(fs) => {
                let s = *fs.stats();
                (s.blocks_loaded, s.blocks_stored, s.corrupt, s.transient + s.failed)
            }
            None => {
                let s = *self.regions().expect("a disk tier").stats();
                (s.blocks_loaded, s.blocks_stored, s.corrupt, s.transient + s.failed)
            }
        };
        self.figures.fs_loaded += loaded;
        self.figures.fs_stored += stored;
        self.figures.fs_corrupt += corrupt;
        self.figures.faults += faults;
        self.figures.promotions_loaded += self.engine.stats().promotions_loaded;
    }

    /// A request for keys `start..start + n` (modulo the universe): lookups, then
    /// `prepare_load` of the ready ones (checking their bytes; the pins are held until
    /// [`World::finish_load`]) and `prepare_store` of the missing ones (their rows are written
    /// at once; the store completes at [`World::finish_store`]).
    pub fn request(&mut self, start: u64, n: u64, req: u64) {
        let req = ReqContext::new(req);
        let keys: Vec<OffloadKey> = (0..n).map(|j| key((start + j) % self.setup.keys)).collect();
        let mut ready = Vec::new();
        let mut missing = Vec::new();
        for k in &keys {
            let res = self.engine.lookup(k, req);
            self.trace.u64(res as u64);
            match res {
                LookupResult::Ready => ready.push(*k),
                LookupResult::Miss => missing.push(*k),
                LookupResult::Pending | LookupResult::Retry => {}
            }
        }
        if !ready.is_empty() {
            let mut slots = Vec::new();
            let res = self.engine.prepare_load(&ready, req, &mut slots);
            self.trace.u64(res.is_ok() as u64);
            if res.is_ok() {
                for (k, slot) in ready.iter().zip(&slots) {
                    self.check_bytes(*slot, k, "prepare_load");
                }
                self.held.push(ready);
            }
        }
        if !missing.is_empty() {
            let mut plan = StorePlan::new();
            let res = self.engine.prepare_store(&missing, req, &mut plan);
            self.trace.u64(res.is_ok() as u64 + 2 * plan.keys.len() as u64);
            if res.is_ok() && !plan.keys.is_empty() {
                let len = self.setup.row_bytes;
                for (k, slot) in plan.keys.iter().zip(&plan.slots) {
                    let mut lease = self.region.lease(*slot, Access::Write).expect("a slot being stored is free");
                    lease.as_mut_slice().expect("write lease")[..len].copy_from_slice(&content(k, len));
                }
                self.writing.push(plan.keys.clone());
            }
        }
    }

    /// The GPU read of `held[i]` is done: `complete_load` (the last entry takes its place).
    pub fn finish_load(&mut self, i: usize) {
        let keys = self.held.swap_remove(i);
        self.engine.complete_load(&keys, ReqContext::new(1)).expect("unpin what was pinned");
    }

    /// The GPU copy of `writing[i]` is done (`ok`: it succeeded): `complete_store` (the last
    /// entry takes its place).
    pub fn finish_store(&mut self, i: usize, ok: bool) {
        let keys = self.writing.swap_remove(i);
        let n = self.engine.complete_store(&keys, ReqContext::new(1), ok).expect("not shut down");
        self.trace.u64(n as u64);
    }

    /// `end_step`.
    pub fn end_step(&mut self) {
        self.engine.end_step();
        self.figures.steps += 1;
    }

    /// Ends this boot, by a power cut (`crash`: the process dies where it stands, unsynced data
    /// may be lost or torn) or by a clean shutdown, boots again on the same disk and checks what
    /// start-up found. The caller's outstanding copies die with the old boot.
    pub fn restart(&mut self, crash: bool) {
        let seed = self.setup.seed;
        if !crash {
            self.engine.shutdown();
        }
        // What a clean shutdown left indexed (stores running at shutdown finished first).
        let before = self.indexed();
        self.account_fs();
        if crash {
            let c = self.disk.crash();
            self.trace.u64(c.lost ^ (c.torn << 8) ^ (c.truncated << 16) ^ (c.emptied << 24) ^ (c.intact << 32));
            self.figures.crashes += 1;
        } else {
            self.figures.restarts += 1;
        }
        self.held.clear();
        self.writing.clear();
        self.boots += 1;
        let (region, mut engine) = boot(&self.setup, self.boots, &self.disk);
        // The FS tier's start-up verification runs in the background (a little at each poll,
        // on the sim disk): finish it before the index is looked at. (The region engine
        // recovers before it opens.)
        if self.setup.regions.is_none() {
            let fs_index = usize::from(self.setup.memory_tier);
            engine.tier_mut::<FsTier>(fs_index).expect("the FS tier").wait_verified();
        }
        // The old engine (and its dead executor) goes before the new region is used.
        drop(std::mem::replace(&mut self.engine, engine));
        self.region = region;
        let after = self.indexed();
        self.trace.u64(after.len() as u64);
        if self.setup.regions.is_some() {
            self.check_regions_restart(crash);
        } else {
            self.check_fs_restart(crash, &after);
        }
        if !crash {
            assert_eq!(before, after, "seed {seed}: a clean restart changed the index");
        }
    }

    /// After a restart of the FS tier: what start-up found, and every indexed block verifies.
    fn check_fs_restart(&mut self, crash: bool, after: &[u64]) {
        let seed = self.setup.seed;
        let report = self.fs().expect("the FS tier").startup().clone();
        self.trace.u64(report.stale_temps_removed as u64);
        assert_eq!(report.foreign_files, 0, "seed {seed}: foreign files after a restart");
        let layout = self.fs().expect("the FS tier").layout().clone();
        let ns = layout.namespace_bytes();
        self.figures.torn_removed += report.torn_removed as u64;
        if crash {
            assert_eq!(report.crashed_runs, 1, "seed {seed}: the crashed run's open marker");
            if self.setup.fsync {
                assert!(!report.verified, "seed {seed}: synced blocks need no verification");
            }
        }
        let len = self.setup.row_bytes;
        let mut torn = 0;
        for &i in after {
            let k = key(i);
            let bytes = self.disk.read(&layout.block_path(&k)).expect("an indexed block exists");
            let payload = bytes.get(HEADER_LEN..HEADER_LEN + len).unwrap_or(&[]);
            let ok = format::decode_header(&bytes).and_then(|h| h.check(&ns, &k, payload)).is_ok()
                && payload == &content(&k, len)[..];
            if !ok {
                torn += 1;
            }
        }
        // Synced blocks survive a crash whole, unsynced ones are verified at start-up: nothing
        // indexed fails to verify. A clean restart loses nothing.
        assert_eq!(torn, 0, "seed {seed}: a block indexed after a restart does not verify");
        let temps = temp_files(&self.disk, layout.rank_dir());
        assert_eq!(temps, 0, "seed {seed}: temp files survived the restart's sweep");
    }

    /// After a restart of the region engine: recovery's mode, and every indexed block's record
    /// verifies on the device and holds its key's bytes.
    fn check_regions_restart(&mut self, crash: bool) {
        let seed = self.setup.seed;
        let (fsync, len, keys) = (self.setup.fsync, self.setup.row_bytes, self.setup.keys);
        let disk = self.disk.clone();
        let tier = self.regions().expect("the region engine");
        let rep = tier.recovery().clone();
        let expected = match (crash, fsync) {
            (false, _) => Mode::Clean,
            (true, true) => Mode::Fast,
            (true, false) => Mode::Verify,
        };
        assert_eq!(rep.mode, expected, "seed {seed}: recovery's mode");
        let (g, ns) = (*tier.geometry(), tier.namespace());
        for i in 0..keys {
            let k = key(i);
            let Some(slot) = tier.slot_of(&k) else { continue };
            let mut rec = vec![0u8; g.record_bytes as usize];
            disk.read_at(Path::new(DEVICE), g.slot_offset(slot), &mut rec).expect("the device reads");
            let payload = &rec[HEADER_LEN..HEADER_LEN + len];
            let ok = format::decode_header(&rec).and_then(|h| h.check(&ns, &k, payload)).is_ok()
                && payload == &content(&k, len)[..];
            assert!(ok, "seed {seed}: block {i} indexed after a restart does not verify");
        }
        self.figures.torn_removed += rep.dropped_corrupt;
        self.trace.u64(rep.dropped_corrupt ^ (rep.dropped_stale << 20));
    }

    /// Asserts that the primary row `slot` holds the bytes stored for `key` (`what` names the
    /// check in the failure message).
    pub fn check_bytes(&self, slot: SlotId, key: &OffloadKey, what: &str) {
        let seed = self.setup.seed;
        let lease = self
            .region
            .lease(slot, Access::Read)
            .unwrap_or_else(|e| panic!("seed {seed}: {what}: ready slot {} is leased for writing: {e}", slot.0));
        assert!(
            lease.block() == &content(key, self.setup.row_bytes)[..],
            "seed {seed}: {what}: slot {} does not hold the bytes stored for its key",
            slot.0
        );
    }

    /// The invariants that must hold after every step.
    pub fn check(&mut self) {
        let seed = self.setup.seed;
        assert_eq!(self.engine.last_protocol_error(), None, "seed {seed}: a tier broke the job protocol");
        let pool = self.engine.primary();
        assert_eq!(pool.len() + pool.free_slots(), pool.capacity(), "seed {seed}: pool accounting");
        let blocks: Vec<(SlotId, OffloadKey, i32)> = pool.blocks().map(|(s, k, rc)| (s, *k, rc)).collect();
        assert_eq!(blocks.len(), pool.len(), "seed {seed}: blocks listed");
        let mut seen = BTreeMap::new();
        for (slot, k, rc) in &blocks {
            assert!(*rc >= -1, "seed {seed}: slot {} has ref_cnt {rc}", slot.0);
            assert!(seen.insert(*k, (*slot, *rc)).is_none(), "seed {seed}: a key is in two slots");
            assert_eq!(pool.find(k), Some((*slot, *rc)), "seed {seed}: find disagrees with the slot table");
        }
        let mut pins: BTreeMap<OffloadKey, i32> = BTreeMap::new();
        for keys in &self.held {
            for k in keys {
                *pins.entry(*k).or_default() += 1;
            }
        }
        for (k, n) in pins {
            let rc = seen.get(&k).map_or(-2, |s| s.1);
            assert!(rc >= n, "seed {seed}: a pinned key has ref_cnt {rc} < {n} caller pins");
        }
        for (slot, k, rc) in blocks {
            if rc >= 0 {
                self.check_bytes(slot, &k, "ready block");
                self.figures.ready_checked += 1;
            }
        }
    }
}

/// Temp files (by their name) under `root` on `disk`.
pub fn temp_files(disk: &SimDisk, root: &Path) -> usize {
    let mut n = 0;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for e in disk.read_dir(&dir).unwrap_or_default() {
            if e.is_dir {
                dirs.push(dir.join(&e.name));
            } else if kvtier_fs::tmpname::parse_temp(&e.name).is_some() {
                n += 1;
            }
        }
    }
    n
}

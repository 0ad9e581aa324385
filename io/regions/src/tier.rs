//! [`RegionsTier`]: the region engine as a `SecondaryTier`.
//!
//! **Stores.** A store job's blocks not already indexed get consecutive record slots of the
//! open region, each with the next sequence number, and go to the executor as batches (one
//! [`Batch`] per run of consecutive slots, at most [`MAX_BATCH_BYTES`]): one large `O_DIRECT`
//! write, the payloads straight from the primary rows. A block enters the index when its job
//! is taken after its batch completed; one whose batch failed leaves a hole. When the open
//! region has no slot left, the next clean region opens; when a full region's last store is
//! folded, its summary (the key and sequence number of every record) is written, and the region
//! is sealed: listed for reclaim. A block that finds no clean region waits for one (its job
//! waits with it).
//!
//! **Loads.** One extent op per block: one positioned `O_DIRECT` read of its record (header and
//! payload), verified by the executor against the namespace, the key and the payload checksum.
//! A load pins its region (it counts as a reader) until it is folded, and marks the block hit.
//! A corrupt record leaves the index; a transient failure keeps it.
//!
//! **Reclaim.** The engine keeps two regions clean ahead of need. A region never written only
//! needs its marker; otherwise the first sealed region of the [`crate::Eviction`] order is
//! reclaimed: its blocks leave the index (STORAGE "removed" events with events on), except,
//! with reinsertion, those loaded since they were written, which are copied to the open region
//! (at most half a region's worth, as far as the open region and the clean ones have room;
//! they stay indexed at their old slot until their copy completes). Once nothing reads the region any more (loads
//! and copies in flight), its free marker is written; when that completes, the region is clean.
//! Nothing is ever written to a region a load may be reading: the bound is the device, and
//! every region's slots are reused only through this cycle.
//!
//! **Shutdown** waits for every job, seals the open region (its summary lists what it holds),
//! then marks the device closed, so the next open reads only summaries.
//!
//! Lookups answer from the index ([`crate::index`]): no syscall. All of the engine's own
//! metadata I/O at run time (summaries, markers, reinsertion copies) goes through the executor;
//! only opening (and closing) reads and writes through the [`Vfs`].

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use kvtier_core::{
    Completions, Direction, EventLog, Job, JobId, JobTableStats, Medium, OffloadKey, Part, ReqContext, SecondaryTier,
    SlotId, TierLookup,
};
use kvtier_fs::jobs::{JobRef, PartState, Record, TierJobs};
use kvtier_fs::vfs::{HostFs, Vfs};
use kvtier_fs::{
    Batch, BatchBlock, BatchData, BatchFull, BlockFormat, Executor, Extent, FileId, FileOp, Full, OpError, Outcome,
    Target, Wait,
};

use crate::config::{Eviction, RegionsTierConfig};
use crate::device::Device;
use crate::geometry::Geometry;
use crate::index::{fingerprint, Index};
use crate::meta::{DeviceState, Entry, Summary, SummaryKind};
use crate::order::Order;
use crate::recovery::{self, Found, RecoveryReport};

/// Most bytes one store batch writes.
pub const MAX_BATCH_BYTES: u64 = 8 << 20;
/// The most blocks one job may hold; a larger job fails as a whole.
pub const MAX_JOB_BLOCKS: usize = 1 << 24;
/// Regions kept clean (or being made clean) ahead of need.
const CLEAN_AHEAD: usize = 2;

/// Counters since the engine opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegionsStats {
    /// Blocks stored (indexed after their batch completed).
    pub blocks_stored: u64,
    /// Blocks a store skipped because they were indexed already.
    pub blocks_skipped: u64,
    /// Blocks loaded and verified.
    pub blocks_loaded: u64,
    /// Corrupt records found by loads (dropped from the index).
    pub corrupt: u64,
    /// Transient failures (block kept).
    pub transient: u64,
    /// Other failed ops.
    pub failed: u64,
    /// Store batches written.
    pub batches: u64,
    /// Regions reclaimed.
    pub regions_reclaimed: u64,
    /// Blocks that left the index with their reclaimed region.
    pub evicted: u64,
    /// Blocks copied to the open region instead (reinsertion).
    pub reinserted: u64,
    /// Copies that failed (their block left the index).
    pub reinsert_failed: u64,
    /// Summaries written.
    pub summaries: u64,
    /// Summary or marker writes that failed (the region is then scanned at the next open, or
    /// reclaimed again).
    pub meta_failures: u64,
    /// Blocks that waited for a clean region.
    pub waited: u64,
}

/// What became of one key of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyState {
    /// Decided by the engine, no op.
    Decided(bool),
    /// An op was made but the executor had no room for it: failed (its part finished here).
    Refused,
    /// A store waiting for a clean region (its part waits in the queue).
    Waiting,
    /// A store to record slot `slot` runs (in a batch), or a load of it.
    Running {
        /// The record slot.
        slot: u32,
    },
}

impl PartState for KeyState {
    fn has_part(self) -> bool {
        !matches!(self, KeyState::Decided(_))
    }
}

/// One of the engine's own writes (a job of one part in the internal table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Internal {
    /// A reclaimed region's free marker, with its epoch.
    Marker { region: u32, epoch: u64 },
    /// A full region's summary (`attempt` 0 to 2).
    Summary { region: u32, attempt: u8 },
    /// A sealed region's summary rewritten without the record at `slot`, which a load found
    /// corrupt (`attempt` 0 to 2).
    Retire { slot: u32, attempt: u8 },
    /// A reinsertion: the block at slot `from` copied to slot `to`.
    Copy { from: u32, to: u32 },
}

impl PartState for Internal {
    fn has_part(self) -> bool {
        true
    }
}

/// Where a region is in its cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Never written (or nothing usable found): needs a marker.
    Blank,
    /// Its marker is being written.
    Marking,
    /// Ready to open.
    Clean,
    /// Taking stores.
    Open,
    /// Every slot handed out; waiting for their stores to be folded.
    Full,
    /// Its summary is being written.
    Sealing,
    /// Listed for reclaim.
    Sealed,
    /// Reclaimed: waiting for its readers to finish before its marker.
    Evicting,
    /// Its marker could not be written (three times, or the executor is gone): not used again
    /// until the next open.
    Broken,
}

#[derive(Debug)]
struct Region {
    state: State,
    /// The first sequence number of this pass over it.
    epoch: u64,
    /// Slots handed out in this pass.
    fill: u32,
    /// Slots handed out whose store (or copy) is not folded yet.
    outstanding: u32,
    /// Loads and copies reading it.
    readers: u32,
    /// Marker writes that failed in a row.
    failures: u8,
    /// A record was dropped from its entries while its summary was being written: the summary
    /// is written again once that write completes.
    stale_summary: bool,
    /// This pass's records, for its summary (while open or full).
    entries: Vec<Option<Entry>>,
}

/// A store waiting for a clean region.
#[derive(Debug)]
struct Waiting {
    job: JobRef,
    pos: usize,
    key: OffloadKey,
    row: SlotId,
    part: Part,
}

/// A run of consecutive record slots being gathered into one batch.
#[derive(Debug, Default)]
struct Gather {
    first: u32,
    bytes: u64,
    blocks: Vec<BatchBlock>,
    parts: Vec<Part>,
}

/// The region engine. See the module docs.
pub struct RegionsTier {
    fs: Arc<dyn Vfs>,
    device: Device,
    geo: Geometry,
    fsync: bool,
    eviction: Eviction,
    reinsert: bool,
    events_enabled: bool,
    exec: Box<dyn Executor>,
    file: FileId,
    o_direct: bool,
    index: Index,
    regions: Vec<Region>,
    order: Order,
    /// Per region: whether it holds a block a lookup answered `Hit` for since the last poll.
    /// The engine submits promotion loads at the end of the step, after the step's cascaded
    /// stores, so no reclaim takes such a region until the next poll (the first call of the
    /// next step), when the loads protect it as readers.
    promised: Vec<bool>,
    /// Whether any region is promised.
    any_promised: bool,
    clean: VecDeque<u32>,
    open: Option<u32>,
    next_seq: u64,
    jobs: TierJobs<KeyState>,
    internal: TierJobs<Internal>,
    next_internal: u64,
    waiting: VecDeque<Waiting>,
    gather: Gather,
    /// Spare entry buffers, for the next region opened.
    spare_entries: Vec<Vec<Option<Entry>>>,
    key_ok: Vec<bool>,
    finished: Completions,
    events: EventLog,
    report: RecoveryReport,
    stats: RegionsStats,
    /// Sealed regions whose summary could not be written: the device is not closed cleanly,
    /// so the next open scans them.
    unsummarized: u32,
    closed: bool,
}

impl std::fmt::Debug for RegionsTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionsTier")
            .field("device", &self.device.path)
            .field("blocks", &self.index.len())
            .field("executor", &self.exec.name())
            .finish_non_exhaustive()
    }
}

/// The key internal ops are recorded under (they have none of their own).
fn no_key() -> OffloadKey {
    OffloadKey::new(&[], 0).expect("an empty hash is a key")
}

impl RegionsTier {
    /// Opens (creating if need be) the device of `config` for blocks of `block_bytes` (the
    /// primary region's `row_bytes`: the executor's rows), on the host's file system.
    /// `make_executor` gets whether `O_DIRECT` is to be used.
    pub fn open(
        config: &RegionsTierConfig,
        block_bytes: usize,
        make_executor: impl FnOnce(bool) -> io::Result<Box<dyn Executor>>,
    ) -> io::Result<RegionsTier> {
        RegionsTier::open_on(config, block_bytes, Arc::new(HostFs::default()), make_executor)
    }

    /// [`RegionsTier::open`] with the engine's own I/O (device, header, recovery) on `fs`, e.g.
    /// the simulated disk its sim executor works on.
    pub fn open_on(
        config: &RegionsTierConfig,
        block_bytes: usize,
        fs: Arc<dyn Vfs>,
        make_executor: impl FnOnce(bool) -> io::Result<Box<dyn Executor>>,
    ) -> io::Result<RegionsTier> {
        let device = Device::open(&*fs, config, block_bytes as u64)?;
        let dir = config.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
        let o_direct = kvtier_fs::direct::resolve_with(config.o_direct, dir, |d| fs.probe_o_direct(d))?;
        let recovered = recovery::recover(&*fs, &device, config.fsync)?;
        let geo = device.geometry;
        let mut exec = make_executor(o_direct)?;
        let file = exec.open_file(&device.path)?;
        // From now on a crash must be recovered from.
        device.write_header(&*fs, DeviceState::Open, true)?;
        let mut order = Order::new(geo.regions);
        let mut clean = VecDeque::new();
        let mut sealed: Vec<(u64, u32)> = Vec::new();
        let regions = recovered
            .regions
            .iter()
            .enumerate()
            .map(|(r, found)| {
                let (state, epoch) = match *found {
                    Found::Blank => (State::Blank, 0),
                    Found::Clean { epoch } => {
                        clean.push_back(r as u32);
                        (State::Clean, epoch)
                    }
                    Found::Sealed { epoch } => {
                        sealed.push((epoch, r as u32));
                        (State::Sealed, epoch)
                    }
                };
                Region {
                    state,
                    epoch,
                    fill: 0,
                    outstanding: 0,
                    readers: 0,
                    failures: 0,
                    stale_summary: false,
                    entries: Vec::new(),
                }
            })
            .collect();
        // The oldest pass is reclaimed first.
        sealed.sort_unstable();
        for (_, r) in sealed {
            order.push_back(r);
        }
        let mut tier = RegionsTier {
            fs,
            device,
            geo,
            fsync: config.fsync,
            eviction: config.eviction,
            reinsert: config.reinsert,
            events_enabled: config.events,
            exec,
            file,
            o_direct,
            index: recovered.index,
            promised: vec![false; geo.regions as usize],
            any_promised: false,
            regions,
            order,
            clean,
            open: None,
            next_seq: recovered.next_seq,
            jobs: TierJobs::new(),
            internal: TierJobs::new(),
            next_internal: 0,
            waiting: VecDeque::new(),
            gather: Gather::default(),
            spare_entries: Vec::new(),
            key_ok: Vec::new(),
            finished: Completions::new(),
            events: EventLog::new(),
            report: recovered.report,
            stats: RegionsStats::default(),
            unsummarized: 0,
            closed: false,
        };
        tier.reclaim();
        Ok(tier)
    }

    /// What recovery found at open.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.report
    }

    /// Counters since open.
    pub fn stats(&self) -> &RegionsStats {
        &self.stats
    }

    /// The device's layout.
    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }

    /// The namespace digest the device's records carry.
    pub fn namespace(&self) -> [u8; 12] {
        self.device.namespace
    }

    /// Blocks indexed.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when no block is indexed.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Is `key` indexed?
    pub fn contains(&self, key: &OffloadKey) -> bool {
        self.index.get(key).is_some()
    }

    /// The record slot holding `key`'s block, if indexed (its offset: [`Geometry::slot_offset`]).
    pub fn slot_of(&self, key: &OffloadKey) -> Option<u32> {
        self.index.get(key)
    }

    /// The device's path.
    pub fn path(&self) -> &std::path::Path {
        &self.device.path
    }

    /// Bytes the index holds on the heap.
    pub fn index_bytes(&self) -> usize {
        self.index.allocated_bytes()
    }

    /// Whether the executor uses `O_DIRECT`.
    pub fn o_direct(&self) -> bool {
        self.o_direct
    }

    /// The executor's name.
    pub fn executor_name(&self) -> &'static str {
        self.exec.name()
    }

    /// What the engine's job tables did.
    pub fn job_table_stats(&self) -> JobTableStats {
        self.jobs.stats()
    }

    /// Each region's state, for debugging.
    pub fn region_states(&self) -> String {
        self.regions
            .iter()
            .map(|r| format!("{:?}(fill {} out {} rd {})", r.state, r.fill, r.outstanding, r.readers))
            .collect::<Vec<_>>()
            .join(" ")
            + &format!(" clean {:?} open {:?} waiting {}", self.clean, self.open, self.waiting.len())
    }

    /// Regions listed for reclaim, next victim first (for tests and reports).
    pub fn reclaim_order(&self) -> Vec<u32> {
        self.order.iter().collect()
    }

    fn format(&self, key: &OffloadKey) -> BlockFormat {
        BlockFormat::Native { namespace: self.device.namespace, key: *key }
    }

    // -----------------------------------------------------------------------------------------
    // Slots
    // -----------------------------------------------------------------------------------------

    /// A record slot of the open region (opening the next clean region when it is full, if
    /// `may_open`), with a fresh sequence number, for `key`.
    fn alloc(&mut self, key: &OffloadKey, may_open: bool) -> Option<(u32, u64)> {
        loop {
            if let Some(r) = self.open {
                let region = &mut self.regions[r as usize];
                if region.fill < self.geo.slots_per_region {
                    let i = region.fill;
                    region.fill += 1;
                    region.outstanding += 1;
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    region.entries[i as usize] = Some(Entry { seq, key: *key });
                    return Some((self.geo.slot(r, i), seq));
                }
                if !may_open {
                    return None;
                }
                region.state = State::Full;
                self.open = None;
                self.advance(r);
            }
            if !may_open {
                return None;
            }
            let r = self.clean.pop_front()?;
            let mut entries = self.spare_entries.pop().unwrap_or_default();
            entries.clear();
            entries.resize(self.geo.slots_per_region as usize, None);
            let region = &mut self.regions[r as usize];
            region.state = State::Open;
            region.fill = 0;
            region.entries = entries;
            self.open = Some(r);
        }
    }

    /// Adds a block (row `row`, key `key`) stored to record slot `slot` to the batch being
    /// gathered, sending that batch first when `slot` does not continue it.
    fn gather(&mut self, row: SlotId, key: &OffloadKey, slot: u32, seq: u64, part: Part) {
        let g = &self.gather;
        let continues = !g.blocks.is_empty()
            && slot == g.first + g.blocks.len() as u32
            && self.geo.region_of(slot) == self.geo.region_of(g.first)
            && g.bytes + self.geo.record_bytes <= MAX_BATCH_BYTES;
        if !continues {
            self.flush();
            self.gather.first = slot;
        }
        let format = self.format(key);
        let g = &mut self.gather;
        g.blocks.push(BatchBlock { slot: row, format, seq });
        g.parts.push(part);
        g.bytes += self.geo.record_bytes;
    }

    /// Sends the batch being gathered.
    fn flush(&mut self) {
        if self.gather.blocks.is_empty() {
            return;
        }
        let blocks = std::mem::take(&mut self.gather.blocks);
        let parts = std::mem::take(&mut self.gather.parts);
        self.gather.bytes = 0;
        let batch = Batch {
            file: self.file,
            offset: self.geo.slot_offset(self.gather.first),
            data: BatchData::Blocks(blocks),
            sync: self.fsync,
        };
        self.stats.batches += 1;
        if let Err(BatchFull { parts, .. }) = self.exec.submit_batch(batch, parts) {
            // The engine reports them itself: failed, their slots holes.
            kvtier_fs::submit::finish_parts(parts, Outcome::Failed(OpError::Busy));
        }
    }

    /// Places waiting stores in the open region (opening clean regions as needed).
    fn place_waiting(&mut self) {
        while let Some(w) = self.waiting.front() {
            let key = w.key;
            let Some((slot, seq)) = self.alloc(&key, true) else { break };
            let w = self.waiting.pop_front().expect("the front");
            self.jobs.record(w.job).states[w.pos] = KeyState::Running { slot };
            self.gather(w.row, &w.key, slot, seq, w.part);
        }
        self.flush();
    }

    // -----------------------------------------------------------------------------------------
    // Region cycle
    // -----------------------------------------------------------------------------------------

    /// Moves region `r` on when what it waited for is done: a full region with no store left
    /// is sealed; a reclaimed one with no reader left gets its marker.
    fn advance(&mut self, r: u32) {
        let region = &self.regions[r as usize];
        match region.state {
            State::Full if region.outstanding == 0 => self.seal(r),
            State::Evicting if region.readers == 0 => self.mark(r),
            _ => {}
        }
    }

    /// Writes region `r`'s summary (it holds what this pass stored there).
    fn seal(&mut self, r: u32) {
        self.regions[r as usize].state = State::Sealing;
        self.write_region_summary(r, 0);
    }

    /// Writes the summary of region `r`'s entries (kept until it is written).
    fn write_region_summary(&mut self, r: u32, attempt: u8) {
        let region = &mut self.regions[r as usize];
        let entries = std::mem::take(&mut region.entries);
        let summary = Summary {
            kind: SummaryKind::Sealed,
            region: r,
            epoch: region.epoch,
            namespace: self.device.namespace,
            entries,
        };
        let entries = self.write_summary(summary, Internal::Summary { region: r, attempt });
        self.regions[r as usize].entries = entries;
    }

    /// Writes `summary` as internal op `op`; gives its entries back.
    fn write_summary(&mut self, summary: Summary, op: Internal) -> Vec<Option<Entry>> {
        let r = summary.region;
        let mut bytes = Vec::with_capacity(self.geo.summary_bytes as usize);
        summary.encode(kvtier_fs::DIRECT_ALIGN, &mut bytes);
        self.submit_internal(op, no_key(), BatchData::Bytes(bytes), self.geo.region_offset(r));
        summary.entries
    }

    /// Takes the record at `slot`, which a load found corrupt, out of its region's summary (so
    /// no later open indexes it again), as the FS tier removes a corrupt file.
    fn retire(&mut self, slot: u32, attempt: u8) {
        let r = self.geo.region_of(slot);
        let i = (slot % self.geo.slots_per_region) as usize;
        match self.regions[r as usize].state {
            // Not summarized yet, or being summarized (the summary in flight may still list
            // it: it is written again once that write completes).
            State::Open | State::Full | State::Sealing => {
                let rg = &mut self.regions[r as usize];
                if let Some(e) = rg.entries.get_mut(i) {
                    *e = None;
                }
                rg.stale_summary = rg.state == State::Sealing;
            }
            State::Sealed => {
                let entries = self.read_entries(r);
                if entries.get(i).is_some_and(Option::is_some) {
                    let mut entries = entries;
                    entries[i] = None;
                    let epoch = self.regions[r as usize].epoch;
                    let summary = Summary {
                        kind: SummaryKind::Sealed,
                        region: r,
                        epoch,
                        namespace: self.device.namespace,
                        entries,
                    };
                    self.write_summary(summary, Internal::Retire { slot, attempt });
                }
            }
            _ => {}
        }
    }

    /// Writes reclaimed (or blank) region `r`'s free marker.
    fn mark(&mut self, r: u32) {
        let epoch = self.next_seq;
        self.regions[r as usize].state = State::Marking;
        let marker = Summary {
            kind: SummaryKind::Free,
            region: r,
            epoch,
            namespace: self.device.namespace,
            entries: Vec::new(),
        };
        let mut bytes = Vec::with_capacity(kvtier_fs::DIRECT_ALIGN);
        marker.encode(kvtier_fs::DIRECT_ALIGN, &mut bytes);
        self.submit_internal(
            Internal::Marker { region: r, epoch },
            no_key(),
            BatchData::Bytes(bytes),
            self.geo.region_offset(r),
        );
    }

    fn submit_internal(&mut self, op: Internal, key: OffloadKey, data: BatchData, offset: u64) {
        let id = JobId(self.next_internal);
        self.next_internal += 1;
        let handle = self.internal.open(id, Direction::Store, &[key], 1);
        self.internal.record(handle).states.push(op);
        let part = self.internal.add_part(handle);
        self.internal.close(handle);
        let batch = Batch { file: self.file, offset, data, sync: self.fsync };
        if let Err(BatchFull { parts, .. }) = self.exec.submit_batch(batch, vec![part]) {
            kvtier_fs::submit::finish_parts(parts, Outcome::Failed(OpError::Busy));
        }
    }

    /// Keeps [`CLEAN_AHEAD`] regions clean or being made clean: marks blank regions first,
    /// then reclaims sealed ones in the eviction order.
    fn reclaim(&mut self) {
        if self.closed {
            return;
        }
        loop {
            let coming = self.regions.iter().filter(|r| matches!(r.state, State::Marking | State::Evicting)).count();
            if self.clean.len() + coming >= CLEAN_AHEAD {
                return;
            }
            if let Some(r) = self.regions.iter().position(|r| r.state == State::Blank) {
                self.mark(r as u32);
                continue;
            }
            let promised = &self.promised;
            let Some(victim) = self.order.pop_first(|r| !promised[r as usize]) else { return };
            self.evict(victim);
        }
    }

    /// Reclaims sealed region `victim`: its blocks leave the index, but for those reinserted.
    fn evict(&mut self, victim: u32) {
        let g = self.geo;
        self.regions[victim as usize].state = State::Evicting;
        self.stats.regions_reclaimed += 1;
        let live: Vec<u32> = self.index.live_in(g.slot(victim, 0)..g.slot(victim, g.slots_per_region)).collect();
        let hot: Vec<u32> = live.iter().copied().filter(|&s| self.index.take_hit(s)).collect();
        let budget = if self.reinsert { (g.slots_per_region / 2).max(1) as usize } else { 0 };
        let want_keys = (budget > 0 && !hot.is_empty()) || (self.events_enabled && !live.is_empty());
        let entries = if want_keys { self.read_entries(victim) } else { Vec::new() };
        // A key from the summary, if it is the block the index has at `slot`.
        let key_at = |index: &Index, slot: u32| -> Option<OffloadKey> {
            let e = entries.get((slot % g.slots_per_region) as usize).copied().flatten()?;
            (fingerprint(&e.key) == index.fingerprint_at(slot)).then_some(e.key)
        };
        let hot: Vec<(u32, OffloadKey)> =
            hot.iter().take(budget).filter_map(|&s| key_at(&self.index, s).map(|k| (s, k))).collect();
        let mut copied = Vec::with_capacity(hot.len());
        for (from, key) in hot {
            // Into the open region, or the next clean one; never waiting.
            let Some((to, seq)) = self.alloc(&key, true) else { break };
            self.regions[victim as usize].readers += 1;
            let data = BatchData::Copy { from: g.slot_offset(from), format: self.format(&key), seq };
            self.submit_internal(Internal::Copy { from, to }, key, data, g.slot_offset(to));
            copied.push(from);
        }
        let mut removed = Vec::new();
        for &slot in &live {
            if copied.contains(&slot) {
                // Indexed at its old slot until its copy completes.
                continue;
            }
            if self.events_enabled {
                removed.extend(key_at(&self.index, slot));
            }
            self.index.remove_slot(slot);
            self.stats.evicted += 1;
        }
        if !removed.is_empty() {
            self.events.push(Medium::Storage, true, removed.iter());
        }
        self.advance(victim);
    }

    /// The entries of region `r`'s summary on disk (empty if it cannot be read or verified).
    fn read_entries(&self, r: u32) -> Vec<Option<Entry>> {
        let mut buf = vec![0u8; self.geo.summary_bytes as usize];
        let ok = self.fs.read_at(&self.device.path, self.geo.region_offset(r), &mut buf).is_ok();
        match Summary::decode(&buf) {
            Ok(s) if ok && s.region == r && s.kind == SummaryKind::Sealed && s.namespace == self.device.namespace => {
                s.entries
            }
            _ => Vec::new(),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Jobs
    // -----------------------------------------------------------------------------------------

    fn submit(&mut self, dir: Direction, job: Job<'_>) {
        let refuse = self.closed || job.keys.len() > MAX_JOB_BLOCKS;
        let handle = self.jobs.open(job.id, dir, job.keys, if refuse { 0 } else { job.keys.len() });
        for (pos, (key, &row)) in job.keys.iter().zip(job.slots).enumerate() {
            let state = if refuse { KeyState::Decided(false) } else { self.submit_key(handle, pos, dir, key, row) };
            self.jobs.record(handle).states.push(state);
        }
        self.jobs.close(handle);
        if dir == Direction::Store {
            self.flush();
            self.reclaim();
        }
    }

    fn submit_key(&mut self, handle: JobRef, pos: usize, dir: Direction, key: &OffloadKey, row: SlotId) -> KeyState {
        let indexed = self.index.get(key);
        match (dir, indexed) {
            (Direction::Store, Some(_)) => {
                self.stats.blocks_skipped += 1;
                KeyState::Decided(true)
            }
            (Direction::Load, None) => KeyState::Decided(false),
            (Direction::Store, None) => {
                let part = self.jobs.add_part(handle);
                if !self.waiting.is_empty() {
                    // Stores are placed in the order they came.
                    self.waiting.push_back(Waiting { job: handle, pos, key: *key, row, part });
                    self.stats.waited += 1;
                    return KeyState::Waiting;
                }
                match self.alloc(key, true) {
                    Some((slot, seq)) => {
                        self.gather(row, key, slot, seq, part);
                        KeyState::Running { slot }
                    }
                    None => {
                        self.waiting.push_back(Waiting { job: handle, pos, key: *key, row, part });
                        self.stats.waited += 1;
                        KeyState::Waiting
                    }
                }
            }
            (Direction::Load, Some(slot)) => {
                let op = FileOp {
                    dir,
                    slot: row,
                    target: Target::Extent(Extent {
                        file: self.file,
                        offset: self.geo.slot_offset(slot),
                        len: self.geo.record_bytes,
                    }),
                    format: self.format(key),
                    sync: false,
                    // A load creates nothing.
                    mode: kvtier_fs::files::FileMode::default(),
                    evict: None,
                };
                let part = self.jobs.add_part(handle);
                match self.exec.submit(op, part) {
                    Ok(()) => {
                        let r = self.geo.region_of(slot);
                        self.regions[r as usize].readers += 1;
                        self.index.set_hit(slot);
                        if self.eviction == Eviction::Lru && self.order.contains(r) {
                            self.order.push_back(r);
                        }
                        KeyState::Running { slot }
                    }
                    Err(Full { part, .. }) => {
                        part.finish(Outcome::Failed(OpError::Busy).code());
                        self.stats.failed += 1;
                        KeyState::Refused
                    }
                }
            }
        }
    }

    /// Lets the executor move its ops on (waiting as `wait` allows), if it has any in flight.
    fn drive(&mut self, wait: Wait) {
        if self.exec.in_flight() > 0 {
            // A failing poll leaves the ops in flight; a later poll reports them.
            let _ = self.exec.poll(wait);
        }
    }

    /// Takes every finished job (and internal op) and folds it in, then moves regions on:
    /// places waiting stores, keeps regions clean ahead.
    fn collect(&mut self) {
        while let Some((handle, rec)) = self.internal.take_finished() {
            let code = self.internal.codes.first().copied();
            let outcome = code.map_or(Outcome::Failed(OpError::Lost), Outcome::from_code);
            let op = rec.states.first().copied().zip(rec.keys.first().copied());
            // Given back first: folding may open another internal job, in this very entry.
            self.internal.put_back(handle, rec);
            if let Some((op, key)) = op {
                self.fold_internal(op, &key, outcome);
            }
        }
        let mut key_ok = std::mem::take(&mut self.key_ok);
        while let Some((handle, rec)) = self.jobs.take_finished() {
            let codes = std::mem::take(&mut self.jobs.codes);
            key_ok.clear();
            for (key, state, code) in rec.with_codes(&codes) {
                let ok = match (state, code) {
                    (KeyState::Decided(ok), _) => ok,
                    (KeyState::Refused | KeyState::Waiting, _) => false,
                    (KeyState::Running { slot }, code) => {
                        let outcome = code.map_or(Outcome::Failed(OpError::Lost), Outcome::from_code);
                        self.fold(rec.dir, &key, slot, outcome)
                    }
                };
                key_ok.push(ok);
            }
            self.jobs.codes = codes;
            self.report(&rec, &key_ok);
            self.jobs.put_back(handle, rec);
        }
        self.key_ok = key_ok;
        if !self.closed {
            self.place_waiting();
            self.reclaim();
        }
    }

    /// Folds one block op's outcome; returns whether its key succeeded.
    fn fold(&mut self, dir: Direction, key: &OffloadKey, slot: u32, outcome: Outcome) -> bool {
        let r = self.geo.region_of(slot);
        match dir {
            Direction::Store => {
                self.regions[r as usize].outstanding -= 1;
                if outcome.is_ok() {
                    self.index.insert(key, slot);
                    self.stats.blocks_stored += 1;
                } else {
                    self.count_failure(outcome);
                    if let Some(e) =
                        self.regions[r as usize].entries.get_mut((slot % self.geo.slots_per_region) as usize)
                    {
                        *e = None;
                    }
                }
            }
            Direction::Load => {
                self.regions[r as usize].readers -= 1;
                match outcome {
                    Outcome::Ok => self.stats.blocks_loaded += 1,
                    Outcome::Corrupt(_) | Outcome::NotFound => {
                        // Only if the index still has this copy (not one stored since).
                        if self.index.get(key) == Some(slot) {
                            self.index.remove_slot(slot);
                            self.retire(slot, 0);
                        }
                        self.stats.corrupt += 1;
                    }
                    other => self.count_failure(other),
                }
            }
        }
        self.advance(r);
        outcome.is_ok()
    }

    fn count_failure(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Transient(_) => self.stats.transient += 1,
            _ => self.stats.failed += 1,
        }
    }

    fn fold_internal(&mut self, op: Internal, key: &OffloadKey, outcome: Outcome) {
        match op {
            Internal::Marker { region, epoch } => {
                let rg = &mut self.regions[region as usize];
                if outcome.is_ok() {
                    rg.state = State::Clean;
                    rg.epoch = epoch;
                    rg.failures = 0;
                    self.clean.push_back(region);
                } else {
                    // Tried again by a later reclaim, unless it keeps failing or the executor
                    // is gone.
                    rg.failures += 1;
                    let give_up = rg.failures >= 3 || outcome == Outcome::Cancelled;
                    rg.state = if give_up { State::Broken } else { State::Blank };
                    self.stats.meta_failures += 1;
                }
            }
            Internal::Summary { region, attempt } => {
                if outcome.is_ok() {
                    self.stats.summaries += 1;
                    if std::mem::take(&mut self.regions[region as usize].stale_summary) {
                        self.write_region_summary(region, 0);
                        return;
                    }
                } else {
                    self.stats.meta_failures += 1;
                    if attempt < 2 && outcome != Outcome::Cancelled {
                        // Tried again: without it, the next open must scan the region.
                        self.write_region_summary(region, attempt + 1);
                        return;
                    }
                    self.unsummarized += 1;
                }
                let rg = &mut self.regions[region as usize];
                rg.state = State::Sealed;
                self.spare_entries.push(std::mem::take(&mut rg.entries));
                self.order.push_back(region);
            }
            Internal::Retire { slot, attempt } => {
                if !outcome.is_ok() {
                    self.stats.meta_failures += 1;
                    // Otherwise the next open indexes the record again (a load then drops it).
                    if attempt < 2 && outcome != Outcome::Cancelled {
                        self.retire(slot, attempt + 1);
                    }
                }
            }
            Internal::Copy { from, to } => {
                let (rf, rt) = (self.geo.region_of(from), self.geo.region_of(to));
                self.regions[rf as usize].readers -= 1;
                self.regions[rt as usize].outstanding -= 1;
                let still = self.index.get(key) == Some(from);
                if outcome.is_ok() {
                    if still {
                        self.index.remove_slot(from);
                        self.index.insert(key, to);
                    } else {
                        // Dropped (found corrupt) or stored anew while it was copied: the copy
                        // leaves its region's summary too.
                        self.retire(to, 0);
                    }
                    self.stats.reinserted += 1;
                } else {
                    if still {
                        self.index.remove_slot(from);
                    }
                    if let Some(e) =
                        self.regions[rt as usize].entries.get_mut((to % self.geo.slots_per_region) as usize)
                    {
                        *e = None;
                    }
                    self.stats.reinsert_failed += 1;
                }
                self.advance(rf);
                self.advance(rt);
            }
        }
    }

    /// Reports a finished job, with whether each of its keys succeeded.
    fn report(&mut self, rec: &Record<KeyState>, key_ok: &[bool]) {
        if key_ok.iter().all(|&ok| ok) {
            self.finished.push(rec.id, true);
        } else {
            self.finished.push_partial(rec.id, key_ok.iter().copied());
        }
        if rec.dir == Direction::Store && self.events_enabled {
            let stored = rec.keys.iter().zip(key_ok).filter(|(_, &ok)| ok).map(|(k, _)| k);
            self.events.push(Medium::Storage, false, stored);
        }
    }

    /// Fails the stores waiting for a region when none can come (nothing in flight could make
    /// one clean).
    fn fail_stuck_waiting(&mut self) {
        if self.waiting.is_empty() || self.exec.in_flight() > 0 {
            return;
        }
        while let Some(w) = self.waiting.pop_front() {
            w.part.finish(Outcome::Failed(OpError::Busy).code());
            self.stats.failed += 1;
        }
    }

    /// At shutdown: regions reclaimed whose marker was not written (their readers outlived the
    /// engine's last reclaim, or the marker failed) still hold their old summary, which would
    /// bring their blocks back at the next open: their markers are written now, directly.
    fn mark_reclaimed_now(&mut self) {
        for r in 0..self.geo.regions {
            let rg = &self.regions[r as usize];
            let stale = match rg.state {
                State::Evicting | State::Broken => true,
                State::Blank => rg.failures > 0,
                _ => false,
            };
            if !stale || rg.readers > 0 {
                continue;
            }
            let marker = Summary {
                kind: SummaryKind::Free,
                region: r,
                epoch: self.next_seq,
                namespace: self.device.namespace,
                entries: Vec::new(),
            };
            let mut bytes = Vec::with_capacity(kvtier_fs::DIRECT_ALIGN);
            marker.encode(kvtier_fs::DIRECT_ALIGN, &mut bytes);
            if self.fs.write_at(&self.device.path, self.geo.region_offset(r), &bytes, self.fsync).is_ok() {
                self.regions[r as usize].state = State::Clean;
            } else {
                self.unsummarized += 1;
            }
        }
    }

    /// Runs the executor until nothing is in flight, folding as it goes.
    fn settle(&mut self) {
        loop {
            self.collect();
            if self.exec.in_flight() == 0 {
                self.fail_stuck_waiting();
                self.collect();
                if self.exec.in_flight() == 0 {
                    return;
                }
            }
            let before = self.exec.in_flight();
            self.drive(Wait::Forever);
            if self.exec.in_flight() == before {
                // Waiting forever finished nothing: the executor cannot move its ops on.
                return;
            }
        }
    }
}

impl SecondaryTier for RegionsTier {
    fn lookup(&mut self, key: &OffloadKey, _req: ReqContext) -> TierLookup {
        match self.index.get(key) {
            Some(slot) => {
                self.promised[self.geo.region_of(slot) as usize] = true;
                self.any_promised = true;
                TierLookup::Hit
            }
            None => TierLookup::Miss,
        }
    }

    fn submit_store(&mut self, job: Job<'_>) {
        self.submit(Direction::Store, job);
    }

    fn submit_load(&mut self, job: Job<'_>) {
        self.submit(Direction::Load, job);
    }

    fn poll_finished(&mut self, out: &mut Completions) {
        if std::mem::take(&mut self.any_promised) {
            self.promised.fill(false);
        }
        self.drive(Wait::No);
        self.collect();
        out.append(&mut self.finished);
    }

    fn touch(&mut self, keys: &[OffloadKey]) {
        if self.eviction != Eviction::Lru {
            return;
        }
        // The first key ends most recent.
        for key in keys.iter().rev() {
            if let Some(slot) = self.index.get(key) {
                let r = self.geo.region_of(slot);
                if self.order.contains(r) {
                    self.order.push_back(r);
                }
            }
        }
    }

    fn take_events(&mut self, out: &mut EventLog) {
        out.append(&mut self.events);
    }

    fn wait_idle(&mut self) {
        self.settle();
    }

    fn shutdown(&mut self, out: &mut Completions) {
        if !self.closed {
            self.settle();
            self.closed = true;
            // The open region's summary, so the next open reads summaries only.
            if let Some(r) = self.open.take() {
                self.regions[r as usize].state = State::Full;
                self.advance(r);
            }
            self.settle();
            while let Some(w) = self.waiting.pop_front() {
                w.part.finish(Outcome::Cancelled.code());
            }
            self.exec.shutdown();
            while self.exec.in_flight() > 0 {
                let before = self.exec.in_flight();
                self.drive(Wait::Forever);
                if self.exec.in_flight() == before {
                    break;
                }
            }
            self.collect();
            let mut left = self.jobs.drain_unfinished();
            left.sort_unstable_by_key(|r| r.id);
            for rec in left {
                let key_ok: Vec<bool> = rec.states.iter().map(|s| *s == KeyState::Decided(true)).collect();
                self.report(&rec, &key_ok);
            }
            // Closed cleanly only if nothing is left half done (every region sealed or clean),
            // and by the process that opened it: an engine outliving its process (a simulated
            // crash) writes nothing.
            let alive = self.fs.process_id() == self.device.header.pid;
            if alive {
                self.mark_reclaimed_now();
            }
            let settled =
                self.regions.iter().all(|r| !matches!(r.state, State::Full | State::Sealing | State::Marking));
            if settled && self.unsummarized == 0 && alive {
                let _ = self.device.write_header(&*self.fs, DeviceState::Closed, true);
            }
            // The device is free for its next owner.
            self.device.unlock();
        }
        out.append(&mut self.finished);
    }
}

impl Drop for RegionsTier {
    /// Dropping the engine shuts it down (its jobs' results are discarded).
    fn drop(&mut self) {
        let mut discarded = Completions::new();
        self.shutdown(&mut discarded);
    }
}

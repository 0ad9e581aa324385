//! `FsTier`: the file-system secondary tier.
//!
//! It owns the namespace directory, an in-memory index of the blocks on disk (lookups never
//! make a syscall, unless probe-on-miss is turned on for directories shared with other
//! processes), and turns each store or load job into one [`FileOp`] per block for its
//! [`Executor`], folding the ops' outcomes back into job results with the keys that succeeded.
//!
//! - A store skips blocks already on disk; a block becomes visible to lookups only once its
//!   file is published.
//! - A load of a block that turned out missing or corrupt drops it from the index (the
//!   executor already removed a corrupt file); a transient failure keeps both.
//! - Every job is reported exactly once, a job with no block included; an op the executor
//!   cannot take fails its key rather than vanish.
//! - **Crashes.** An open tier keeps a marker file in its rank directory
//!   (`.kvtier-open.{pid}.{n}`: the boot it was written in, and whether blocks are synced);
//!   a clean shutdown removes it. A marker left by a dead process means that process crashed:
//!   if the machine rebooted since (another boot id) and blocks were not `fsync`ed, files it
//!   published may have lost their data, so start-up reads and verifies every native block and
//!   removes those that fail before indexing them. A process crash alone loses nothing (the
//!   page cache survives it): only its stale temp files are swept. vLLM-format blocks carry no
//!   checksum and cannot be verified; a load still catches a wrong length.
//! - With a capacity bound ([`FsTierConfig::max_blocks`]), a store that needs room evicts the
//!   least recently used block (stored or loaded) that no load in flight is reading: it leaves
//!   the index at once (a "removed" STORAGE event with events on), and the store's op takes its
//!   file out of the namespace, reusing it in the native format unless probe-on-miss says
//!   other processes share the directory (see [`crate::op::Evict`]). A
//!   store that finds no block to evict fails its key; so does a store of a block whose own
//!   eviction is still in flight.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvtier_core::{Completions, EventLog, Job, JobId, Medium, OffloadKey, ReqContext, SecondaryTier, TierLookup};

use crate::direct::DirectMode;
use crate::format;
use crate::index::BlockIndex;
use crate::namespace::{self, Layout, RunConfig, NATIVE_STORAGE_FORMAT};
use crate::op::{BlockFormat, Evict, Executor, FileOp, FileOpDone, OpKind, Outcome, Wait};
use crate::tmpname;
use crate::vfs::{HostFs, Vfs};

/// How blocks are written (spelled `native` and `vllm` in configuration files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageFormat {
    /// Checksummed header + row bytes (see [`crate::format`]).
    #[default]
    Native,
    /// Raw row bytes, interchangeable with vLLM's FS tier.
    Vllm,
}

/// Settings of one FS tier.
#[derive(Debug, Clone)]
pub struct FsTierConfig {
    /// The root directory (namespaces are created below it).
    pub root: PathBuf,
    /// The run config that names the namespace.
    pub run: RunConfig,
    /// This process's rank (`{base}_r{rank}`).
    pub rank: u32,
    /// Block file format.
    pub format: StorageFormat,
    /// O_DIRECT: probe (`Auto`), require, or never.
    pub o_direct: DirectMode,
    /// `fdatasync` every block before publishing it.
    pub fsync: bool,
    /// On an index miss, check the disk (for directories shared with other processes).
    pub probe_on_miss: bool,
    /// Raise a STORAGE event for each store job that stored blocks, and for evictions.
    pub events: bool,
    /// Most blocks kept on disk (`None`: no bound). Start-up removes what is beyond it.
    pub max_blocks: Option<usize>,
}

impl FsTierConfig {
    /// Defaults for a tier under `root`: native format, O_DIRECT auto, no fsync, no probe, no events.
    pub fn new(root: impl Into<PathBuf>, run: RunConfig) -> Self {
        FsTierConfig {
            root: root.into(),
            run,
            rank: 0,
            format: StorageFormat::Native,
            o_direct: DirectMode::Auto,
            fsync: false,
            probe_on_miss: false,
            events: false,
            max_blocks: None,
        }
    }

    /// The run config as written to disk: the native format adds its `storage_format`, so
    /// neither system ever reads the other's format.
    pub fn effective_run_config(&self) -> RunConfig {
        let mut run = self.run.clone();
        run.storage_format = match self.format {
            StorageFormat::Native => Some(NATIVE_STORAGE_FORMAT.to_string()),
            StorageFormat::Vllm => None,
        };
        run
    }
}

/// What start-up found.
#[derive(Debug, Clone, Default)]
pub struct StartupReport {
    /// Blocks indexed by the scan.
    pub blocks_indexed: usize,
    /// Stale temp files of dead processes removed.
    pub stale_temps_removed: usize,
    /// Files in the namespace that are neither blocks nor temp files (left alone).
    pub foreign_files: usize,
    /// Blocks beyond [`FsTierConfig::max_blocks`] removed.
    pub evicted: usize,
    /// Markers of runs that did not shut down cleanly (their processes are gone).
    pub crashed_runs: usize,
    /// Whether every native block was read and verified (after a crashed run in an earlier
    /// boot that did not sync its blocks).
    pub verified: bool,
    /// Blocks that failed that verification (removed, never indexed).
    pub torn_removed: usize,
    /// How long the scan took.
    pub scan_time: Duration,
    /// Whether O_DIRECT is used.
    pub o_direct: bool,
}

/// Counters since start-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FsStats {
    /// Blocks published by stores.
    pub blocks_stored: u64,
    /// Blocks a store skipped because they were already on disk.
    pub blocks_skipped: u64,
    /// Blocks loaded and verified.
    pub blocks_loaded: u64,
    /// Corrupt files found (and removed) by loads.
    pub corrupt: u64,
    /// Blocks a load found missing.
    pub missing: u64,
    /// Transient failures (file kept).
    pub transient: u64,
    /// Other failed ops.
    pub failed: u64,
    /// Blocks evicted to make room for stores.
    pub evicted: u64,
    /// Stores refused for want of room (every block busy) or while the block's own eviction
    /// was in flight.
    pub refused: u64,
}

#[derive(Debug)]
struct FsJob {
    id: JobId,
    kind: OpKind,
    keys: Vec<OffloadKey>,
    ok: Vec<bool>,
    remaining: usize,
}

/// The file-system tier over an [`Executor`].
pub struct FsTier {
    fs: Arc<dyn Vfs>,
    layout: Layout,
    format: StorageFormat,
    namespace: [u8; 12],
    fsync: bool,
    probe_on_miss: bool,
    events_enabled: bool,
    index: BlockIndex,
    max_blocks: Option<usize>,
    /// Stores in flight (each will add a block to the index if it succeeds).
    storing: usize,
    /// Loads in flight, per block: such a block is never evicted.
    reading: HashMap<OffloadKey, u32>,
    /// Evictions in flight: the store op (token) that takes the victim's file, and the victims.
    evicting: HashMap<u64, OffloadKey>,
    evicting_keys: HashSet<OffloadKey>,
    exec: Box<dyn Executor>,
    jobs: HashMap<u64, FsJob>,
    finished: Completions,
    events: EventLog,
    done: Vec<FileOpDone>,
    startup: StartupReport,
    stats: FsStats,
    closed: bool,
    /// This run's open marker (removed at shutdown).
    marker: Option<PathBuf>,
}

impl std::fmt::Debug for FsTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsTier")
            .field("rank_dir", &self.layout.rank_dir())
            .field("format", &self.format)
            .field("blocks", &self.index.len())
            .field("executor", &self.exec.name())
            .field("jobs_in_flight", &self.jobs.len())
            .finish_non_exhaustive()
    }
}

/// Packs a job id and a key position into an op token.
fn token(job: JobId, index: usize) -> u64 {
    (job.0 << 24) | index as u64
}

fn untoken(token: u64) -> (u64, usize) {
    (token >> 24, (token & 0xff_ffff) as usize)
}

/// The most blocks one job may hold (positions must fit the op token).
pub const MAX_JOB_BLOCKS: usize = 1 << 24;

impl FsTier {
    /// Opens (creating if needed) the namespace of `config`: checks or writes `config.json`,
    /// probes O_DIRECT, scans the rank directory to rebuild the index and removes stale temp
    /// files of dead processes. `make_executor` gets whether O_DIRECT is to be used.
    pub fn open(
        config: &FsTierConfig,
        make_executor: impl FnOnce(bool) -> io::Result<Box<dyn Executor>>,
    ) -> io::Result<FsTier> {
        FsTier::open_on(config, Arc::new(HostFs), make_executor)
    }

    /// [`FsTier::open`] with the tier's own file-system calls (config, directories, scan,
    /// `O_DIRECT` probe, probe-on-miss) made on `fs`, e.g. the in-memory disk its simulated
    /// executor works on. Block I/O always goes through the executor.
    pub fn open_on(
        config: &FsTierConfig,
        fs: Arc<dyn Vfs>,
        make_executor: impl FnOnce(bool) -> io::Result<Box<dyn Executor>>,
    ) -> io::Result<FsTier> {
        let run = config.effective_run_config();
        let layout = Layout::new(&config.root, &run, config.rank);
        namespace::ensure_config_on(&*fs, &layout, &run).map_err(|e| io::Error::other(e.to_string()))?;
        let rank_dir = layout.rank_dir().to_path_buf();
        fs.create_dir_all(&rank_dir)?;
        let o_direct = crate::direct::resolve_with(config.o_direct, &rank_dir, |dir| fs.probe_o_direct(dir))?;
        let started = Instant::now();
        let mut index = BlockIndex::new();
        let mut startup = StartupReport { o_direct, ..StartupReport::default() };
        let boot = fs.boot_id();
        let mut stale = Stale::default();
        scan(&*fs, &layout, &rank_dir, &mut index, &mut startup, boot.as_deref(), &mut stale)?;
        startup.crashed_runs = stale.markers.len();
        if stale.verify && config.format == StorageFormat::Native {
            startup.verified = true;
            let namespace = layout.namespace_bytes();
            let keys: Vec<OffloadKey> = index.keys_by_recency().collect();
            for key in keys {
                let path = layout.block_path(&key);
                let intact = fs.read(&path).is_ok_and(|bytes| format::verify_file(&bytes, &namespace, &key).is_ok());
                if !intact {
                    let _ = fs.remove_file(&path);
                    index.remove(&key);
                    startup.torn_removed += 1;
                }
            }
        }
        if let Some(max) = config.max_blocks {
            while index.len() > max {
                let Some(victim) = index.pop_victim(|_| false) else { break };
                if fs.remove_file(&layout.block_path(&victim)).is_ok() {
                    startup.evicted += 1;
                }
            }
        }
        if stale.sync {
            fs.sync_fs(&rank_dir)?;
        }
        startup.blocks_indexed = index.len();
        startup.scan_time = started.elapsed();
        let exec = make_executor(o_direct)?;
        // Synced, and before the stale markers go: a crash from here on leaves it behind.
        let synced = if config.fsync { "synced" } else { "unsynced" };
        let content = format!("{}\n{synced}\n", boot.as_deref().unwrap_or("unknown"));
        let mut attempt = 0;
        let marker = loop {
            let marker = rank_dir.join(tmpname::marker_name(fs.process_id(), tmpname::next_seq()));
            match fs.write_new_synced(&marker, content.as_bytes()) {
                Ok(()) => break marker,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 16 => attempt += 1,
                Err(e) => return Err(e),
            }
        };
        for path in &stale.markers {
            let _ = fs.remove_file(path);
        }
        Ok(FsTier {
            fs,
            namespace: layout.namespace_bytes(),
            layout,
            format: config.format,
            fsync: config.fsync,
            probe_on_miss: config.probe_on_miss,
            events_enabled: config.events,
            index,
            max_blocks: config.max_blocks,
            storing: 0,
            reading: HashMap::new(),
            evicting: HashMap::new(),
            evicting_keys: HashSet::new(),
            exec,
            jobs: HashMap::new(),
            finished: Completions::new(),
            events: EventLog::new(),
            done: Vec::new(),
            startup,
            stats: FsStats::default(),
            closed: false,
            marker: Some(marker),
        })
    }

    /// What start-up found.
    pub fn startup(&self) -> &StartupReport {
        &self.startup
    }

    /// Counters since start-up.
    pub fn stats(&self) -> &FsStats {
        &self.stats
    }

    /// The namespace's paths.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Number of blocks in the index.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when the index is empty.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Is `key` in the index?
    pub fn contains(&self, key: &OffloadKey) -> bool {
        self.index.contains(key)
    }

    /// The executor's name.
    pub fn executor_name(&self) -> &'static str {
        self.exec.name()
    }

    fn block_format(&self, key: &OffloadKey) -> BlockFormat {
        match self.format {
            StorageFormat::Native => BlockFormat::Native { namespace: self.namespace, key: *key },
            StorageFormat::Vllm => BlockFormat::Vllm,
        }
    }

    fn submit(&mut self, kind: OpKind, job: Job<'_>) {
        let mut rec =
            FsJob { id: job.id, kind, keys: job.keys.to_vec(), ok: vec![false; job.keys.len()], remaining: 0 };
        if self.closed || job.keys.len() > MAX_JOB_BLOCKS {
            self.report(rec);
            return;
        }
        for (i, (key, &slot)) in job.keys.iter().zip(job.slots).enumerate() {
            let on_disk = self.index.contains(key);
            match kind {
                OpKind::Store if on_disk => {
                    rec.ok[i] = true;
                    self.stats.blocks_skipped += 1;
                    continue;
                }
                OpKind::Load if !on_disk => continue,
                _ => {}
            }
            let victim = match kind {
                OpKind::Store => match self.make_room(key) {
                    Ok(victim) => victim,
                    Err(()) => {
                        self.stats.refused += 1;
                        continue;
                    }
                },
                OpKind::Load => None,
            };
            let op = FileOp {
                token: token(job.id, i),
                kind,
                slot,
                path: self.layout.block_path(key),
                format: self.block_format(key),
                sync: self.fsync,
                evict: victim.map(|v| {
                    // Another process may be reading the victim in a shared directory: its file is
                    // only reused where this tier is alone.
                    let reuse = self.format == StorageFormat::Native && !self.probe_on_miss;
                    Box::new(Evict { path: self.layout.block_path(&v), reuse })
                }),
            };
            match self.exec.submit(op) {
                Ok(()) => {
                    rec.remaining += 1;
                    match kind {
                        OpKind::Store => self.storing += 1,
                        OpKind::Load => {
                            self.index.touch(key);
                            *self.reading.entry(*key).or_insert(0) += 1;
                        }
                    }
                    if let Some(victim) = victim {
                        self.evicting.insert(token(job.id, i), victim);
                        self.evicting_keys.insert(victim);
                        self.stats.evicted += 1;
                        if self.events_enabled {
                            self.events.push(Medium::Storage, true, [&victim]);
                        }
                    }
                }
                Err(_full) => {
                    if let Some(victim) = victim {
                        self.index.insert(victim);
                    }
                    self.stats.failed += 1;
                }
            }
        }
        if rec.remaining == 0 {
            self.report(rec);
        } else {
            self.jobs.insert(job.id.0, rec);
        }
    }

    /// Room for one more block: `Ok(None)` if there is some, `Ok(Some(victim))` after taking the
    /// least recently used block no load is reading out of the index, `Err` if a store of
    /// `key` cannot proceed (no victim, or `key`'s own eviction is in flight).
    fn make_room(&mut self, key: &OffloadKey) -> Result<Option<OffloadKey>, ()> {
        if self.evicting_keys.contains(key) {
            return Err(());
        }
        let Some(max) = self.max_blocks else { return Ok(None) };
        if self.index.len() + self.storing < max {
            return Ok(None);
        }
        let reading = &self.reading;
        self.index.pop_victim(|k| reading.contains_key(k)).map(Some).ok_or(())
    }

    fn report(&mut self, rec: FsJob) {
        if rec.ok.iter().all(|&ok| ok) {
            self.finished.push(rec.id, true);
        } else {
            self.finished.push_partial(rec.id, rec.ok.iter().copied());
        }
        if rec.kind == OpKind::Store && self.events_enabled {
            self.events.push(
                Medium::Storage,
                false,
                rec.keys.iter().zip(&rec.ok).filter(|(_, &ok)| ok).map(|(k, _)| k),
            );
        }
    }

    /// Brings the index back within its bound after a block another process stored was found
    /// (probe-on-miss, which already makes syscalls on this thread): the least recently used
    /// blocks but `keep` that no load is reading are removed from the disk at once.
    fn trim(&mut self, keep: &OffloadKey) {
        let Some(max) = self.max_blocks else { return };
        while self.index.len() + self.storing > max {
            let reading = &self.reading;
            let Some(victim) = self.index.pop_victim(|k| k == keep || reading.contains_key(k)) else { return };
            // A file already gone is evicted all the same.
            let _ = self.fs.remove_file(&self.layout.block_path(&victim));
            self.stats.evicted += 1;
            if self.events_enabled {
                self.events.push(Medium::Storage, true, [&victim]);
            }
        }
    }

    /// Folds the ops the executor finished into their jobs.
    fn collect(&mut self, wait: Wait) {
        let mut done = std::mem::take(&mut self.done);
        done.clear();
        // A failing poll leaves the ops in flight; they are collected by a later poll.
        let _ = self.exec.poll(&mut done, wait);
        for d in done.drain(..) {
            self.fold(d);
        }
        self.done = done;
    }

    fn fold(&mut self, done: FileOpDone) {
        if let Some(victim) = self.evicting.remove(&done.token) {
            self.evicting_keys.remove(&victim);
            if !matches!(done.outcome, Outcome::Ok | Outcome::Cancelled) {
                // The store failed, maybe before its eviction ran: the victim's file goes all
                // the same (no store of that key could publish while its eviction was in flight).
                let _ = self.fs.remove_file(&self.layout.block_path(&victim));
            }
            if matches!(done.outcome, Outcome::Cancelled) {
                // The op never ran, so neither did its eviction: the victim is still on disk,
                // and indexed (and announced) again.
                self.index.insert(victim);
                self.stats.evicted -= 1;
                if self.events_enabled {
                    self.events.push(Medium::Storage, false, [&victim]);
                }
            }
        }
        let (job, i) = untoken(done.token);
        let Some(rec) = self.jobs.get_mut(&job) else {
            return;
        };
        let Some(key) = rec.keys.get(i).copied() else {
            return;
        };
        match done.kind {
            OpKind::Store => self.storing = self.storing.saturating_sub(1),
            OpKind::Load => {
                if let Some(n) = self.reading.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        self.reading.remove(&key);
                    }
                }
            }
        }
        let ok = done.outcome.is_ok();
        match (&done.outcome, done.kind) {
            // A block chosen as a victim while this (duplicate) store ran is not indexed: its
            // eviction may take the file.
            (Outcome::Ok, OpKind::Store) if self.evicting_keys.contains(&key) => self.stats.blocks_stored += 1,
            (Outcome::Ok, OpKind::Store) => {
                self.index.insert(key);
                self.stats.blocks_stored += 1;
            }
            (Outcome::Ok, OpKind::Load) => self.stats.blocks_loaded += 1,
            (Outcome::NotFound, _) => {
                self.index.remove(&key);
                self.stats.missing += 1;
            }
            (Outcome::Corrupt(_), _) => {
                self.index.remove(&key);
                self.stats.corrupt += 1;
            }
            (Outcome::Transient(_), _) => self.stats.transient += 1,
            (Outcome::Failed(_) | Outcome::Cancelled, _) => self.stats.failed += 1,
        }
        rec.ok[i] = ok;
        rec.remaining -= 1;
        if rec.remaining == 0 {
            if let Some(rec) = self.jobs.remove(&job) {
                self.report(rec);
            }
        }
    }
}

/// What start-up learned from the open markers of runs that did not shut down cleanly.
#[derive(Debug, Default)]
struct Stale {
    /// Their markers, removed only once start-up has dealt with them (so a crash during the
    /// verification leaves them for the next start-up).
    markers: Vec<PathBuf>,
    /// A run of another boot (or an unknown one) did not sync its blocks: verify them.
    verify: bool,
    /// A run of this boot did not sync its blocks: their data is in the page cache, not on
    /// disk yet. Sync the file system before the markers go.
    sync: bool,
}

/// An open marker of process `pid` found at start-up. Stale unless that process is alive (a
/// process of another boot never is, and neither is this process, whose marker comes later;
/// a pid reused by another process after a crash must not keep a marker alive).
fn stale_marker(fs: &dyn Vfs, path: &Path, pid: u32, boot: Option<&str>, stale: &mut Stale) {
    let content = fs.read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&content);
    let mut lines = text.lines();
    let (marker_boot, synced) = (lines.next(), lines.next() == Some("synced"));
    let same_boot = matches!((marker_boot, boot), (Some(a), Some(b)) if a == b && a != "unknown");
    if same_boot && pid != fs.process_id() && fs.is_process_alive(pid) {
        return;
    }
    stale.markers.push(path.to_path_buf());
    if !synced {
        if same_boot {
            stale.sync = true;
        } else {
            stale.verify = true;
        }
    }
}

/// Walks the rank directory (`{h[0:3]}/{h[3:5]}_g{group}/{h}.bin`, shallower for hashes of
/// fewer than 3 bytes): indexes block files, removes temp files and open markers of processes
/// that are gone (never one a live process may still be writing), counts everything else as
/// foreign. Collects the open markers of runs that did not shut down cleanly (see
/// [`stale_marker`]).
fn scan(
    fs: &dyn Vfs,
    layout: &Layout,
    rank_dir: &Path,
    index: &mut BlockIndex,
    report: &mut StartupReport,
    boot: Option<&str>,
    stale: &mut Stale,
) -> io::Result<()> {
    let mut dirs = vec![(rank_dir.to_path_buf(), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        for entry in fs.read_dir(&dir)? {
            let path = dir.join(&entry.name);
            if let Some(pid) = tmpname::parse_marker(&entry.name).filter(|_| depth == 0 && entry.is_file) {
                stale_marker(fs, &path, pid, boot, stale);
                continue;
            }
            if entry.is_dir {
                if depth < 2 {
                    dirs.push((path, depth + 1));
                } else {
                    report.foreign_files += 1;
                }
                continue;
            }
            if let Some(pid) = tmpname::parse_temp(&entry.name) {
                if !fs.is_process_alive(pid) && fs.remove_file(&path).is_ok() {
                    report.stale_temps_removed += 1;
                }
                continue;
            }
            let rel = path.strip_prefix(rank_dir).unwrap_or(&path);
            match layout.parse_block_path(rel) {
                Some(key) if entry.is_file => {
                    index.insert(key);
                }
                _ => report.foreign_files += 1,
            }
        }
    }
    Ok(())
}

impl SecondaryTier for FsTier {
    fn lookup(&mut self, key: &OffloadKey, _req: ReqContext) -> TierLookup {
        if self.index.contains(key) {
            return TierLookup::Hit;
        }
        if self.probe_on_miss
            && !self.closed
            && !self.evicting_keys.contains(key)
            && self.fs.is_file(&self.layout.block_path(key))
        {
            self.index.insert(*key);
            self.trim(key);
            return TierLookup::Hit;
        }
        TierLookup::Miss
    }

    fn submit_store(&mut self, job: Job<'_>) {
        self.submit(OpKind::Store, job);
    }

    fn submit_load(&mut self, job: Job<'_>) {
        self.submit(OpKind::Load, job);
    }

    fn poll_finished(&mut self, out: &mut Completions) {
        if !self.jobs.is_empty() {
            self.collect(Wait::No);
        }
        out.append(&mut self.finished);
    }

    fn take_events(&mut self, out: &mut EventLog) {
        out.append(&mut self.events);
    }

    fn wait_idle(&mut self) {
        while !self.jobs.is_empty() && self.exec.in_flight() > 0 {
            self.collect(Wait::Forever);
        }
    }

    fn shutdown(&mut self, out: &mut Completions) {
        if !self.closed {
            self.closed = true;
            self.exec.shutdown();
            while self.exec.in_flight() > 0 {
                let before = self.exec.in_flight();
                self.collect(Wait::Forever);
                if self.exec.in_flight() == before {
                    break;
                }
            }
            // An executor that lost ops must not make their jobs vanish: fail what is left.
            let mut left: Vec<u64> = self.jobs.keys().copied().collect();
            left.sort_unstable();
            for id in left {
                if let Some(rec) = self.jobs.remove(&id) {
                    self.report(rec);
                }
            }
            // A clean shutdown: the next start-up has nothing to verify, once unsynced blocks
            // have reached the disk (if that fails, the marker stays and says so).
            if let Some(marker) = self.marker.take() {
                if self.fsync || self.fs.sync_fs(self.layout.rank_dir()).is_ok() {
                    let _ = self.fs.remove_file(&marker);
                }
            }
        }
        out.append(&mut self.finished);
    }
}

impl Drop for FsTier {
    /// Dropping the tier shuts it down (its jobs' results are discarded).
    fn drop(&mut self) {
        let mut discarded = Completions::new();
        self.shutdown(&mut discarded);
    }
}

//! `FsTier`: the file-system secondary tier.
//!
//! It owns the namespace directory, an in-memory index of the blocks on disk (lookups never
//! make a syscall, unless probe-on-miss is turned on for directories shared with other
//! processes), and turns each store or load job into one [`FileOp`] per block for its
//! [`Executor`]. Each job is a job of the core's job table (see the private `jobs` module),
//! each op one of its parts: the executor reports every op from whichever thread finished it,
//! and the tier's poll takes whole finished jobs, folding their ops' outcomes into the index,
//! the counters and the job's result with the keys that succeeded.
//!
//! - A store skips blocks already on disk; a block becomes visible to lookups once its job
//!   has finished (its file was published before).
//! - A load of a block that turned out missing or corrupt drops it from the index (the
//!   executor already removed a corrupt file); a transient failure keeps both, but a block
//!   whose loads keep failing is held back from lookups, longer each time, and given up after
//!   [`LOAD_FAILURES_TO_GIVE_UP`] failures in a row (its file kept).
//! - Every job is reported exactly once, a job with no block included.
//! - **Back-pressure**: an op the executor has no room for waits in the tier's own queue and is
//!   submitted, oldest first, as the executor frees room (at every poll): nothing a caller
//!   asked to store or load fails for want of queue space. The queue is as long as the jobs
//!   the engine submits (each op holds its primary slot, so the primary pool bounds it);
//!   ops still waiting at shutdown are reported cancelled.
//! - **Start-up** rebuilds the index from the directory and deals with what crashed runs left
//!   behind ([`startup`]).
//! - With a capacity bound ([`FsTierConfig::max_blocks`]), a store that needs room evicts the
//!   least recently used block (stored, loaded or touched) that no load in flight is reading
//!   and no lookup of the current step answered `Hit` for (its promotion load comes at the end
//!   of the step): it leaves the index at once (a "removed" STORAGE event with events on), and the store's
//!   op takes its file out of the namespace (see [`crate::op::Evict`]). A store that finds no
//!   block to evict fails its key; so does a store of a block whose own eviction is still in
//!   flight.
//! - **File reuse**, the one exception to "a published file is never modified": a store that
//!   evicts a block overwrites the victim's file (renamed to the store's temp name first, so
//!   the victim leaves the namespace before a byte changes), which spares the file system an
//!   inode allocation (0.2-0.8 ms of kernel CPU on ext4 after many deletions). Only in the
//!   native format (a reader that raced the overwrite gets a checksum failure, never wrong
//!   bytes) and only where no other process may read the directory: never with probe-on-miss,
//!   and not while another tier holds the rank directory's share lock (checked per store job).

mod jobs;
pub mod startup;
pub mod verify;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use kvtier_core::{
    Completions, Direction, EventLog, Job, JobTableStats, Medium, OffloadKey, Part, ReqContext, SecondaryTier, SlotId,
    TierLookup,
};

use crate::direct::DirectMode;
use crate::files::{annotate, FileMode};
use crate::index::BlockIndex;
use crate::namespace::{self, Layout, RunConfig, NATIVE_STORAGE_FORMAT};
use crate::op::{BlockFormat, Evict, Executor, FileOp, Full, Target, Wait};
use crate::outcome::{OpError, Outcome};
use crate::tmpname;
use crate::vfs::{FileLock, HostFs, Vfs};

use jobs::{JobRef, KeyState, Record, TierJobs};
pub use startup::StartupReport;
pub use verify::VerifyProgress;
use verify::{Verdict, Verifier};

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
    /// The size of one block (the primary region's `row_bytes`). The native format names it in
    /// its run config, so two block sizes never share a namespace; in either format start-up
    /// removes block files of any other length (no load could use them).
    pub block_bytes: usize,
    /// This process's rank (`{base}_r{rank}`).
    pub rank: u32,
    /// Block file format.
    pub format: StorageFormat,
    /// O_DIRECT: probe (`Auto`), require, or never.
    pub o_direct: DirectMode,
    /// `fdatasync` every block before publishing it, and `fsync` its directory after: a block
    /// reported stored survives a power cut.
    pub fsync: bool,
    /// On an index miss, check the disk (for directories shared with other processes).
    pub probe_on_miss: bool,
    /// Raise a STORAGE event for each store job that stored blocks, and for evictions.
    pub events: bool,
    /// Most blocks kept on disk (`None`: no bound; 0 is refused). Start-up removes what is
    /// beyond it, least recently stored first, and says how many in
    /// [`StartupReport::evicted`].
    pub max_blocks: Option<usize>,
    /// Permission bits of everything the tier creates: directories, `config.json`, open
    /// markers, block files (owner-only by default; see [`FileMode`]).
    pub file_mode: FileMode,
}

impl FsTierConfig {
    /// Defaults for a tier of `block_bytes` blocks under `root`: native format, O_DIRECT auto,
    /// no fsync, no probe, no events, no bound.
    pub fn new(root: impl Into<PathBuf>, run: RunConfig, block_bytes: usize) -> Self {
        FsTierConfig {
            root: root.into(),
            run,
            block_bytes,
            rank: 0,
            format: StorageFormat::Native,
            o_direct: DirectMode::Auto,
            fsync: false,
            probe_on_miss: false,
            events: false,
            max_blocks: None,
            file_mode: FileMode::OWNER_ONLY,
        }
    }

    /// The run config as written to disk: the native format adds its `storage_format`, so
    /// neither system ever reads the other's format, and its `block_bytes`, so two block sizes
    /// never share a namespace.
    pub fn effective_run_config(&self) -> RunConfig {
        let mut run = self.run.clone();
        (run.storage_format, run.block_bytes) = match self.format {
            StorageFormat::Native => (Some(NATIVE_STORAGE_FORMAT.to_string()), Some(self.block_bytes as u64)),
            StorageFormat::Vllm => (None, None),
        };
        run
    }

    /// Refuses settings no tier can run with, naming the field.
    fn validate(&self) -> io::Result<()> {
        let invalid = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
        if self.block_bytes == 0 {
            return invalid("fs tier: block_bytes must be at least 1".into());
        }
        if self.max_blocks == Some(0) {
            return invalid(format!(
                "fs tier at {}: max_blocks must be at least 1 (0 would delete every block on disk); leave it out \
                 for no bound",
                self.root.display()
            ));
        }
        Ok(())
    }
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
    /// Blocks given up after [`LOAD_FAILURES_TO_GIVE_UP`] failed loads in a row: dropped from
    /// the index, their files kept.
    pub given_up: u64,
}

/// The file-system tier over an [`Executor`].
pub struct FsTier {
    fs: Arc<dyn Vfs>,
    layout: Layout,
    format: StorageFormat,
    namespace: [u8; 12],
    fsync: bool,
    file_mode: FileMode,
    probe_on_miss: bool,
    events_enabled: bool,
    index: BlockIndex,
    max_blocks: Option<usize>,
    /// Stores in flight (each will add a block to the index if it succeeds).
    storing: usize,
    /// Loads in flight, per block: such a block is never evicted.
    reading: HashMap<OffloadKey, u32>,
    /// Blocks a lookup answered `Hit` for since the last poll: the engine submits their
    /// promotion loads at the end of the step, so until then they are not evicted either (a
    /// store cascaded in the same step must not take a block just promised). Cleared at the
    /// next poll, the first call of the next step, when the loads protect them.
    promised: HashSet<OffloadKey>,
    /// Blocks whose eviction (by a store in flight) may still take their file.
    evicting_keys: HashSet<OffloadKey>,
    exec: Box<dyn Executor>,
    /// Ops the executor had no room for, oldest first, with their job parts: submitted as it
    /// frees room (every poll), cancelled at shutdown.
    waiting: VecDeque<(FileOp, Part)>,
    jobs: TierJobs,
    /// Whether each key of the job being reported succeeded (a buffer reused across polls).
    key_ok: Vec<bool>,
    finished: Completions,
    events: EventLog,
    startup: StartupReport,
    stats: FsStats,
    closed: bool,
    /// This run's open marker, locked while the tier is open (removed at shutdown).
    marker: Option<startup::Marker>,
    /// A shared lock on the rank directory's [`tmpname::SHARE_FILE`], held while the tier is
    /// open: whether another tier holds one too says whether this one is alone.
    share: Box<dyn FileLock>,
    /// The start-up verification still running, and how far it is.
    verifier: Option<Verifier>,
    verification: VerifyProgress,
    /// A buffer for the verifier's verdicts.
    verdicts: Vec<Verdict>,
    /// Blocks whose loads failed lately (see [`LOAD_FAILURES_TO_GIVE_UP`]).
    failing: HashMap<OffloadKey, Failing>,
    /// Polls so far: the clock of load back-off.
    polls: u64,
    /// The crashed runs' markers, removed once the verification has finished.
    stale: startup::Stale,
}

impl std::fmt::Debug for FsTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsTier")
            .field("rank_dir", &self.layout.rank_dir())
            .field("format", &self.format)
            .field("blocks", &self.index.len())
            .field("executor", &self.exec.name())
            .field("jobs", &self.jobs)
            .finish_non_exhaustive()
    }
}

/// The most blocks one job may hold; a larger job fails as a whole.
pub const MAX_JOB_BLOCKS: usize = 1 << 24;

impl FsTier {
    /// Opens (creating if needed) the namespace of `config`: checks or writes `config.json`,
    /// probes O_DIRECT, scans the rank directory to rebuild the index and removes stale temp
    /// files of dead processes. `make_executor` gets whether O_DIRECT is to be used.
    pub fn open(
        config: &FsTierConfig,
        make_executor: impl FnOnce(bool) -> io::Result<Box<dyn Executor>>,
    ) -> io::Result<FsTier> {
        FsTier::open_on(config, Arc::new(HostFs::new(config.file_mode)), make_executor)
    }

    /// [`FsTier::open`] with the tier's own file-system calls (config, directories, scan,
    /// `O_DIRECT` probe, probe-on-miss) made on `fs`, e.g. the in-memory disk its simulated
    /// executor works on. Block I/O always goes through the executor.
    pub fn open_on(
        config: &FsTierConfig,
        fs: Arc<dyn Vfs>,
        make_executor: impl FnOnce(bool) -> io::Result<Box<dyn Executor>>,
    ) -> io::Result<FsTier> {
        config.validate()?;
        let run = config.effective_run_config();
        let layout = Layout::new(&config.root, &run, config.rank);
        namespace::ensure_config_on(&*fs, &layout, &run)?;
        let rank_dir = layout.rank_dir().to_path_buf();
        let at = |what: &str| format!("{what} {}", rank_dir.display());
        fs.create_dir_all(&rank_dir).map_err(|e| annotate(e, at("cannot create directory")))?;
        // The marker first: from here on this tier's temp files (the probe's included) are live.
        let marker = startup::mark_open(&*fs, &rank_dir, config.fsync)
            .map_err(|e| annotate(e, at("cannot write the open marker in")))?;
        let opened = (|| {
            let share_path = rank_dir.join(tmpname::SHARE_FILE);
            let share = fs
                .lock_shared(&share_path)
                .map_err(|e| annotate(e, format!("cannot lock {}", share_path.display())))?;
            let o_direct = crate::direct::resolve_with(config.o_direct, &rank_dir, |dir| fs.probe_o_direct(dir))?;
            let recovered = startup::recover(&*fs, &layout, config, &marker.path)
                .map_err(|e| annotate(e, at("start-up scan of")))?;
            let exec = make_executor(o_direct)?;
            let verifier = match recovered.verify.is_empty() {
                true => None,
                false => Some(Verifier::start(Arc::clone(&fs), layout.clone(), recovered.verify)?),
            };
            Ok((share, o_direct, recovered.index, recovered.report, recovered.stale, verifier, exec))
        })();
        let (share, o_direct, index, mut startup, stale, verifier, exec) = match opened {
            Ok(parts) => parts,
            Err(e) => {
                // Nothing was written: the marker goes, so the next start-up sees no crash.
                let _ = fs.remove_file(&marker.path);
                return Err(e);
            }
        };
        startup.o_direct = o_direct;
        let verification = VerifyProgress { total: verifier.as_ref().map_or(0, Verifier::total), ..Default::default() };
        let mut tier = FsTier {
            fs,
            namespace: layout.namespace_bytes(),
            layout,
            format: config.format,
            fsync: config.fsync,
            file_mode: config.file_mode,
            probe_on_miss: config.probe_on_miss,
            events_enabled: config.events,
            index,
            max_blocks: config.max_blocks,
            storing: 0,
            reading: HashMap::new(),
            promised: HashSet::new(),
            evicting_keys: HashSet::new(),
            exec,
            waiting: VecDeque::new(),
            jobs: TierJobs::new(),
            key_ok: Vec::new(),
            finished: Completions::new(),
            events: EventLog::new(),
            startup,
            stats: FsStats::default(),
            closed: false,
            marker: Some(marker),
            share,
            verifier,
            verification,
            verdicts: Vec::new(),
            failing: HashMap::new(),
            polls: 0,
            stale,
        };
        if tier.verifier.is_none() {
            // Nothing to verify: the crashed runs are dealt with.
            startup::remove_stale_markers(&*tier.fs, &tier.stale);
            tier.verification.finished = true;
        }
        Ok(tier)
    }

    /// What start-up found.
    pub fn startup(&self) -> &StartupReport {
        &self.startup
    }

    /// How far the start-up verification is (see [`verify`]); all zeros, and finished, when
    /// there was nothing to verify. It advances at each poll.
    pub fn verification(&self) -> VerifyProgress {
        self.verification
    }

    /// Waits until the start-up verification has finished (checking the blocks left on this
    /// thread where the disk runs no thread of its own), and takes in its verdicts.
    pub fn wait_verified(&mut self) {
        if let Some(verifier) = self.verifier.as_mut() {
            verifier.run_to_end();
        }
        self.advance_verification(usize::MAX);
    }

    /// Takes in the verifier's verdicts (checking up to `budget` blocks first where it has no
    /// thread); once every block has one, removes the crashed runs' markers.
    fn advance_verification(&mut self, budget: usize) {
        let Some(verifier) = self.verifier.as_mut() else { return };
        let mut verdicts = std::mem::take(&mut self.verdicts);
        let done = verifier.take(budget, &mut verdicts);
        for verdict in verdicts.drain(..) {
            self.verification.checked += 1;
            match verdict {
                Verdict::Intact | Verdict::Gone => {}
                Verdict::Unreadable => self.verification.unreadable += 1,
                // A load in flight verifies the block itself; a block no longer indexed was
                // evicted (its file reused or gone) or found corrupt by a load already.
                Verdict::Torn(key, id) if self.index.contains(&key) && !self.reading.contains_key(&key) => {
                    // Only the file that was read: one that replaced it since stays indexed.
                    let path = self.layout.block_path(&key);
                    if self.fs.remove_if_same(&path, id).unwrap_or(false) || !self.fs.is_file(&path) {
                        self.index.remove(&key);
                        self.verification.torn_removed += 1;
                        self.startup.torn_removed += 1;
                    }
                }
                Verdict::Torn(..) => {}
            }
        }
        self.verdicts = verdicts;
        if done {
            self.verifier = None;
            startup::remove_stale_markers(&*self.fs, &self.stale);
            self.verification.finished = true;
        }
    }

    /// Counters since start-up.
    pub fn stats(&self) -> &FsStats {
        &self.stats
    }

    /// What the tier's job tables did: every job the tier is given goes through them, and its
    /// block ops are their parts.
    pub fn job_table_stats(&self) -> JobTableStats {
        self.jobs.stats()
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

    /// Whether a store may reuse its victim's file (modifying a published file in place): only
    /// in the native format (its checksums catch a block read while it is overwritten), and
    /// only where no other process may be reading the directory: not with probe-on-miss (the
    /// directory is shared by design, with processes that may not be kvtier's), and not while
    /// another open tier holds the rank directory's share lock (asked once per store job: one
    /// `fcntl`). A tier that cannot tell does not reuse.
    fn may_reuse(&self) -> bool {
        self.format == StorageFormat::Native
            && !self.probe_on_miss
            && self.max_blocks.is_some()
            && self.share.held_elsewhere().is_ok_and(|others| !others)
    }

    fn submit(&mut self, dir: Direction, job: Job<'_>) {
        let refuse = self.closed || job.keys.len() > MAX_JOB_BLOCKS;
        let reuse = dir == Direction::Store && !refuse && self.may_reuse();
        // At most one op per key, none for a refused job.
        let handle = self.jobs.open(job.id, dir, job.keys, if refuse { 0 } else { job.keys.len() });
        for (key, &slot) in job.keys.iter().zip(job.slots) {
            let state = if refuse { KeyState::Decided(false) } else { self.submit_key(handle, dir, key, slot, reuse) };
            self.jobs.record(handle).states.push(state);
        }
        self.jobs.close(handle);
    }

    /// What becomes of `key` (in `slot`) of job `handle`: decided here, or an op for the
    /// executor, a part of the job. A store that evicts reuses its victim's file if `reuse`.
    fn submit_key(&mut self, handle: JobRef, dir: Direction, key: &OffloadKey, slot: SlotId, reuse: bool) -> KeyState {
        let on_disk = self.index.contains(key);
        match dir {
            Direction::Store if on_disk => {
                self.stats.blocks_skipped += 1;
                return KeyState::Decided(true);
            }
            Direction::Load if !on_disk => return KeyState::Decided(false),
            _ => {}
        }
        let victim = match dir {
            Direction::Store => match self.make_room(key) {
                Ok(victim) => victim,
                Err(()) => {
                    self.stats.refused += 1;
                    return KeyState::Decided(false);
                }
            },
            Direction::Load => None,
        };
        let op = FileOp {
            dir,
            slot,
            target: Target::Path(self.layout.block_path(key)),
            format: self.block_format(key),
            sync: self.fsync,
            mode: self.file_mode,
            evict: victim.map(|v| Box::new(Evict { path: self.layout.block_path(&v), reuse })),
        };
        let part = self.jobs.add_part(handle);
        self.enqueue(op, part);
        match dir {
            Direction::Store => self.storing += 1,
            Direction::Load => {
                self.index.touch(key);
                *self.reading.entry(*key).or_insert(0) += 1;
            }
        }
        if let Some(victim) = victim {
            self.evicting_keys.insert(victim);
            self.stats.evicted += 1;
            if self.events_enabled {
                self.events.push(Medium::Storage, true, [&victim]);
            }
        }
        KeyState::Running { victim }
    }

    /// Hands `op` to the executor, or, when it has no room (or ops wait already, which go
    /// first), to the tier's own queue of waiting ops: nothing a caller asked to store or load
    /// fails for want of queue space.
    fn enqueue(&mut self, op: FileOp, part: Part) {
        if !self.waiting.is_empty() {
            self.waiting.push_back((op, part));
            return;
        }
        if let Err(Full { op, part }) = self.exec.submit(op, part) {
            self.waiting.push_back((op, part));
        }
    }

    /// Submits the waiting ops, oldest first, as long as the executor takes them.
    fn submit_waiting(&mut self) {
        while let Some((op, part)) = self.waiting.pop_front() {
            if let Err(Full { op, part }) = self.exec.submit(op, part) {
                if self.exec.in_flight() == 0 {
                    // An idle executor that takes nothing would never make room: the op fails
                    // rather than wait forever.
                    part.finish(Outcome::Failed(OpError::Busy).code());
                    continue;
                }
                self.waiting.push_front((op, part));
                return;
            }
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
        let (reading, promised) = (&self.reading, &self.promised);
        self.index.pop_victim(|k| reading.contains_key(k) || promised.contains(k)).map(Some).ok_or(())
    }

    /// Reports a finished job, with whether each of its keys succeeded.
    fn report(&mut self, rec: &Record, key_ok: &[bool]) {
        if key_ok.iter().all(|&ok| ok) {
            self.finished.push(rec.id, true);
        } else {
            self.finished.push_partial(rec.id, key_ok.iter().copied());
        }
        if rec.dir == Direction::Store && self.events_enabled {
            self.events.push(Medium::Storage, false, rec.keys.iter().zip(key_ok).filter(|(_, &ok)| ok).map(|(k, _)| k));
        }
    }

    /// Protects `key`, just answered `Hit`, from eviction until the next poll (only a bounded
    /// tier evicts).
    fn promise(&mut self, key: &OffloadKey) {
        if self.max_blocks.is_some() {
            self.promised.insert(*key);
        }
    }

    /// Brings the index back within its bound after a block another process stored was found
    /// (probe-on-miss, which already makes syscalls on this thread): the least recently used
    /// blocks but `keep` that no load is reading are removed from the disk at once.
    fn trim(&mut self, keep: &OffloadKey) {
        let Some(max) = self.max_blocks else { return };
        while self.index.len() + self.storing > max {
            let (reading, promised) = (&self.reading, &self.promised);
            let Some(victim) = self.index.pop_victim(|k| k == keep || reading.contains_key(k) || promised.contains(k))
            else {
                return;
            };
            // A file already gone is evicted all the same.
            let _ = self.fs.remove_file(&self.layout.block_path(&victim));
            self.stats.evicted += 1;
            if self.events_enabled {
                self.events.push(Medium::Storage, true, [&victim]);
            }
        }
    }

    /// Lets the executor move its ops on (waiting as `wait` allows), if it has any in flight.
    /// Then submits the ops waiting for room.
    fn drive(&mut self, wait: Wait) {
        if self.exec.in_flight() > 0 {
            // A failing poll leaves the ops in flight; they are reported by a later poll.
            let _ = self.exec.poll(wait);
        }
        self.submit_waiting();
    }

    /// Takes every finished job from the job tables and folds it in: the work is per finished
    /// job and its keys, never per op still in flight.
    fn collect(&mut self) {
        let mut key_ok = std::mem::take(&mut self.key_ok);
        while let Some((job, rec)) = self.jobs.take_finished() {
            let codes = std::mem::take(&mut self.jobs.codes);
            key_ok.clear();
            for (key, state, code) in rec.with_codes(&codes) {
                let ok = match (state, code) {
                    (KeyState::Decided(ok), _) => ok,
                    (KeyState::Running { victim }, code) => {
                        let outcome = code.map_or(Outcome::Failed(OpError::Lost), Outcome::from_code);
                        self.fold(rec.dir, key, victim, outcome)
                    }
                };
                key_ok.push(ok);
            }
            self.jobs.codes = codes;
            self.report(&rec, &key_ok);
            self.jobs.put_back(job, rec);
        }
        self.key_ok = key_ok;
    }

    /// Folds one op's outcome into the index and the counters; returns whether its key
    /// succeeded.
    fn fold(&mut self, dir: Direction, key: OffloadKey, victim: Option<OffloadKey>, outcome: Outcome) -> bool {
        if let Some(victim) = victim {
            self.evicting_keys.remove(&victim);
            if !matches!(outcome, Outcome::Ok | Outcome::Cancelled) {
                // The store failed, maybe before its eviction ran: the victim's file goes all
                // the same (no store of that key could publish while its eviction was in flight).
                let _ = self.fs.remove_file(&self.layout.block_path(&victim));
            }
            if matches!(outcome, Outcome::Cancelled) {
                // The op never ran, so neither did its eviction: the victim is still on disk,
                // and indexed (and announced) again.
                self.index.insert(victim);
                self.stats.evicted -= 1;
                if self.events_enabled {
                    self.events.push(Medium::Storage, false, [&victim]);
                }
            }
        }
        match dir {
            Direction::Store => self.storing = self.storing.saturating_sub(1),
            Direction::Load => {
                if let Some(n) = self.reading.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        self.reading.remove(&key);
                    }
                }
            }
        }
        match (&outcome, dir) {
            // A block chosen as a victim while this (duplicate) store ran is not indexed: its
            // eviction may take the file.
            (Outcome::Ok, Direction::Store) if self.evicting_keys.contains(&key) => self.stats.blocks_stored += 1,
            (Outcome::Ok, Direction::Store) => {
                self.index.insert(key);
                self.failing.remove(&key);
                self.stats.blocks_stored += 1;
            }
            (Outcome::Ok, Direction::Load) => self.stats.blocks_loaded += 1,
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
        if dir == Direction::Load {
            self.note_load(key, &outcome);
        }
        outcome.is_ok()
    }

    /// Counts a load's failure against its key (see [`LOAD_FAILURES_TO_GIVE_UP`]): a block
    /// that loaded, or that a load found gone or corrupt, is forgotten; one that failed again
    /// is held back from lookups for twice as many polls as last time, and given up (dropped
    /// from the index, its file kept) at the limit.
    fn note_load(&mut self, key: OffloadKey, outcome: &Outcome) {
        let failed = match outcome {
            Outcome::Transient(_) => true,
            // The op's own fault (a lease conflict, a slot out of range), or no fault of the
            // block's (a shutdown): not the block's failure.
            Outcome::Failed(OpError::Busy | OpError::OutOfRange) | Outcome::Cancelled => return,
            Outcome::Failed(_) => true,
            Outcome::Ok | Outcome::NotFound | Outcome::Corrupt(_) => false,
        };
        if !failed {
            self.failing.remove(&key);
            return;
        }
        let failures = self.failing.get(&key).map_or(0, |f| f.failures) + 1;
        if failures < LOAD_FAILURES_TO_GIVE_UP {
            let until = self.polls + (1 << failures);
            self.failing.insert(key, Failing { failures, until });
        } else if self.index.remove(&key) {
            self.stats.given_up += 1;
            // Remembered only where a lookup could find the file again (probe-on-miss).
            match self.probe_on_miss {
                true => self.failing.insert(key, Failing { failures, until: u64::MAX }),
                false => self.failing.remove(&key),
            };
        }
    }

    /// Whether `key`'s loads failed lately and it is held back from lookups for now.
    fn held_back(&self, key: &OffloadKey) -> bool {
        self.failing.get(key).is_some_and(|f| self.polls < f.until)
    }
}

/// Loads of one block that fail in a row (transient errors, failed reads) before the tier
/// gives it up: it leaves the index, its file stays (a later start-up indexes it again).
/// Without a limit, a block whose loads always fail would be promoted forever: every lookup
/// answers "on disk", the engine frees a ready CPU block for it, the load fails, the slot is
/// freed, and so on. Between failures the block is held back from lookups (they answer Miss)
/// for 2, 4, 8, 16 polls.
pub const LOAD_FAILURES_TO_GIVE_UP: u32 = 5;

/// A block whose loads failed lately.
#[derive(Debug, Clone, Copy)]
struct Failing {
    /// Failures in a row.
    failures: u32,
    /// Lookups answer Miss until this poll (`u64::MAX`: given up).
    until: u64,
}

impl SecondaryTier for FsTier {
    fn lookup(&mut self, key: &OffloadKey, _req: ReqContext) -> TierLookup {
        if self.held_back(key) {
            return TierLookup::Miss;
        }
        if self.index.contains(key) {
            self.promise(key);
            return TierLookup::Hit;
        }
        if self.probe_on_miss
            && !self.closed
            && !self.evicting_keys.contains(key)
            && self.fs.is_file(&self.layout.block_path(key))
        {
            self.index.insert(*key);
            self.trim(key);
            self.promise(key);
            return TierLookup::Hit;
        }
        TierLookup::Miss
    }

    fn submit_store(&mut self, job: Job<'_>) {
        self.submit(Direction::Store, job);
    }

    fn submit_load(&mut self, job: Job<'_>) {
        self.submit(Direction::Load, job);
    }

    fn poll_finished(&mut self, out: &mut Completions) {
        self.polls += 1;
        // (A clear of an empty set would still sweep its table.)
        if !self.promised.is_empty() {
            self.promised.clear();
        }
        self.drive(Wait::No);
        self.collect();
        if self.verifier.is_some() {
            self.advance_verification(verify::BLOCKS_PER_POLL);
        }
        out.append(&mut self.finished);
    }

    /// Moves the indexed `keys` to the most recently used end of the disk's LRU, walking them in
    /// reverse as the primary does: the first key ends most recent, so a request's prefix
    /// blocks are evicted last.
    fn touch(&mut self, keys: &[OffloadKey]) {
        for key in keys.iter().rev() {
            self.index.touch(key);
        }
    }

    fn take_events(&mut self, out: &mut EventLog) {
        out.append(&mut self.events);
    }

    fn wait_idle(&mut self) {
        self.submit_waiting();
        while self.exec.in_flight() > 0 {
            self.drive(Wait::Forever);
        }
        self.collect();
    }

    fn shutdown(&mut self, out: &mut Completions) {
        if !self.closed {
            self.closed = true;
            // An unfinished verification stops here; the crashed runs' markers stay, and the
            // next start-up verifies again.
            self.verifier = None;
            // Ops still waiting for room never ran: cancelled, like the executor's queued ones.
            for (_, part) in self.waiting.drain(..) {
                part.finish(Outcome::Cancelled.code());
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
            // An executor that lost ops without even dropping their parts must not make their
            // jobs vanish: fail what is left.
            let mut left = self.jobs.drain_unfinished();
            left.sort_unstable_by_key(|r| r.id);
            for rec in left {
                let key_ok: Vec<bool> = rec.states.iter().map(|s| *s == KeyState::Decided(true)).collect();
                self.report(&rec, &key_ok);
            }
            // A clean shutdown: the next start-up has nothing to verify, once unsynced blocks
            // have reached the disk (if that fails, the marker stays and says so).
            // The marker is removed while still locked, so no start-up ever finds it unlocked
            // (crashed) meanwhile; then the lock goes with it.
            if let Some(marker) = self.marker.take() {
                if self.fsync || self.fs.sync_fs(self.layout.rank_dir()).is_ok() {
                    let _ = self.fs.remove_file(&marker.path);
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

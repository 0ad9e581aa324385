//! # kvtier-io-sim
//!
//! An [`Executor`] for deterministic simulation: block stores and loads run against an
//! in-memory disk ([`SimDisk`]), and every nondeterministic thing a kernel does (how long an op
//! takes, which fault hits it, what a power cut leaves behind) is drawn from a seeded
//! generator instead. No thread, no clock, no hash-map order: the same seed and the same calls
//! give the same completions, faults and disk, byte for byte.
//!
//! ## Time and ordering
//!
//! Time is the number of [`Executor::poll`] calls. An op submitted at time `t` completes at
//! `t + 1 + below(max_latency)` (so completions reorder); a store also writes its temp file at
//! a random time in between, and publishes it (rename) when it completes, so a crash can find
//! temp files. `poll(Wait::No)` advances time by one tick; `Wait::Forever` and
//! `Wait::Timeout(_)` (simulated time costs nothing) jump to the next completion when none is
//! due. Ops due at the same tick complete in submission order.
//!
//! ## What an op does
//!
//! As the kernel executors do (see `kvtier-io-threaded`), with the vocabulary they share
//! (`kvtier_fs`'s submit prologue, block layout and outcomes): leases at submission (a refused
//! lease fails the op at once); a store writes `{final}.{pid}.{seq:x}.tmp` (creating missing
//! directories), `fdatasync`s it if asked (which makes it durable, see the crash model in
//! [`disk`]) and renames it onto the final path, removing the temp file on any failure (the
//! sim disk's namespace is journaled: the directory `fsync` a kernel executor adds after a
//! synced store's rename has nothing to do here); a load
//! checks the length, reads, verifies a native header and removes a corrupt file. An extent op
//! writes or reads its range of a file [`Executor::open_file`] opened (the write lands at a
//! random tick before the op completes; without `sync` the range is dirty until a sync, see the
//! crash model); a damaged extent is `Corrupt` and left as it is.
//!
//! An op is reported (its part finished) when the `poll` that completes it runs, so the order
//! in which a job table sees parts finish is the completion order, deterministic per seed.
//!
//! A batch ([`Executor::submit_batch`]) is written at a random tick before it completes, as an
//! extent store is; each block record of it lands as a range of its own (without `sync`, a
//! crash draws each one's fate separately: a large write is not atomic). A copy reads and
//! verifies its record first (read faults apply to it), then writes it.
//!
//! ## Faults ([`Faults`], parts per million per op; all off by default)
//!
//! | fault | where | outcome |
//! |---|---|---|
//! | `EMFILE` | store (before the temp file), load (open); not extent ops (no open) | `Transient`, nothing changed |
//! | `ENOSPC` | store (writing the temp file) | `Failed`, temp file removed |
//! | `EIO` | store (writing): `Failed`, temp removed; load (reading): `Transient`, file kept | |
//! | short read | load | `Corrupt("short read")`, the file is removed (as a kernel executor does) |
//! | bit flip | load: one bit of the bytes read flips, not the file | native: `Corrupt`, removed; vLLM format: undetectable |
//! | `EINVAL` | with `o_direct` and `strict_direct`, a transfer not 4096-aligned | `Failed` |
//!
//! With `strict_direct` off (the default), a misaligned transfer goes buffered, as the kernel
//! executors do, so `EINVAL` never happens. Torn writes and lost unsynced writes come from
//! [`SimDisk::crash`].
//!
//! ## Shutdown and crashes
//!
//! `shutdown` (and `Drop`) publishes the stores whose temp file is written and cancels every
//! other op. After [`SimDisk::crash`], the executors of the crashed process are dead: their ops
//! touch nothing and complete `Cancelled`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod disk;

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kvtier_core::{Direction, Part};
use kvtier_fs::format::{self, HEADER_LEN};
use kvtier_fs::outcome::{SHORT_READ, WRONG_LENGTH};
use kvtier_fs::region::{Lease, PrimaryRegion};
use kvtier_fs::rng::SplitMix64;
use kvtier_fs::submit::{admit, admit_batch, Refusal};
use kvtier_fs::{
    Batch, BatchData, BatchFull, BlockFormat, BlockLayout, Executor, Extent, FileId, FileOp, Full, OpError, Outcome,
    Target, Wait,
};

pub use disk::{CrashStats, Fnv, SimDisk};

/// Fault probabilities, in parts per million per op (see the crate docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// `EIO` on a store's write or a load's read.
    pub eio: u32,
    /// `ENOSPC` on a store's write.
    pub enospc: u32,
    /// `EMFILE` on a store's or a load's open.
    pub emfile: u32,
    /// A load reads fewer bytes than the file holds.
    pub short_read: u32,
    /// A load's bytes come back with one bit flipped.
    pub bit_flip: u32,
}

impl Faults {
    /// No faults.
    pub const NONE: Faults = Faults { eio: 0, enospc: 0, emfile: 0, short_read: 0, bit_flip: 0 };

    /// Every fault with probability `ppm` parts per million.
    pub const fn all(ppm: u32) -> Faults {
        Faults { eio: ppm, enospc: ppm, emfile: ppm, short_read: ppm, bit_flip: ppm }
    }
}

/// How a [`SimExecutor`] behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// Seed of the executor's latency and fault draws.
    pub seed: u64,
    /// An op completes 1 to `max_latency` polls after its submission (at least 1).
    pub max_latency: u32,
    /// Most ops in flight; `submit` answers [`Full`] beyond it.
    pub queue_capacity: usize,
    /// Use `O_DIRECT` (for aligned transfers, or for all with `strict_direct`).
    pub o_direct: bool,
    /// With `o_direct`, misaligned transfers fail `EINVAL` instead of going buffered.
    pub strict_direct: bool,
    /// Fault probabilities.
    pub faults: Faults,
}

impl Default for SimConfig {
    /// Seed 0, latencies of 1 to 8 polls, 1024 ops in flight, buffered I/O, no faults.
    fn default() -> Self {
        SimConfig {
            seed: 0,
            max_latency: 8,
            queue_capacity: 1024,
            o_direct: false,
            strict_direct: false,
            faults: Faults::NONE,
        }
    }
}

/// Faults injected so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Ops that completed (any outcome).
    pub completed: u64,
    /// `EIO`s injected.
    pub eio: u64,
    /// `ENOSPC`s injected.
    pub enospc: u64,
    /// `EMFILE`s injected.
    pub emfile: u64,
    /// Short reads injected.
    pub short_reads: u64,
    /// Bit flips injected.
    pub bit_flips: u64,
    /// `EINVAL`s for misaligned `O_DIRECT` transfers.
    pub einval: u64,
}

#[derive(Debug)]
struct Pending {
    // Dropped before the part: a slot is free again when its op is reported.
    lease: Lease,
    part: Part,
    op: FileOp,
    /// A store's temp file, once written (a file per block), or its extent, once written.
    written: Option<PathBuf>,
    /// A store whose write already failed.
    failed: Option<Outcome>,
}

/// An accepted batch: its rows' leases, its parts, and what its write did.
#[derive(Debug)]
struct PendingBatch {
    // Dropped before the parts.
    leases: Vec<Lease>,
    parts: Vec<Part>,
    batch: Batch,
    /// The write's outcome, once it ran.
    outcome: Option<Outcome>,
}

/// The parts an outcome goes to: an op's one, or a batch's.
#[derive(Debug)]
enum Parts {
    One(Part),
    Many(Vec<Part>),
}

impl Parts {
    fn finish(self, outcome: Outcome) {
        match self {
            Parts::One(part) => part.finish(outcome.code()),
            Parts::Many(parts) => kvtier_fs::submit::finish_parts(parts, outcome),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    WriteTemp,
    Finish,
}

/// The simulated executor. See the crate docs.
#[derive(Debug)]
pub struct SimExecutor {
    region: Arc<PrimaryRegion>,
    disk: SimDisk,
    generation: u32,
    config: SimConfig,
    rng: SplitMix64,
    now: u64,
    next_seq: u64,
    ops: BTreeMap<u64, Pending>,
    batches: BTreeMap<u64, PendingBatch>,
    events: BTreeMap<(u64, u64), Stage>,
    /// Finished ops (a batch is one), reported by the next `poll`.
    ready: VecDeque<(Parts, Outcome)>,
    /// Inodes of the files opened for extent ops, by [`FileId`].
    files: Vec<u64>,
    in_flight: usize,
    stopped: bool,
    stats: SimStats,
}

fn os(code: i32) -> OpError {
    OpError::Os(code)
}

impl SimExecutor {
    /// An executor doing I/O on `region`'s rows and `disk`'s files, as the disk's current
    /// process (a crash of the disk kills it).
    pub fn new(region: Arc<PrimaryRegion>, disk: SimDisk, config: SimConfig) -> Self {
        SimExecutor {
            region,
            generation: disk.generation(),
            disk,
            rng: SplitMix64::new(config.seed),
            config,
            now: 0,
            next_seq: 0,
            ops: BTreeMap::new(),
            batches: BTreeMap::new(),
            events: BTreeMap::new(),
            ready: VecDeque::new(),
            files: Vec::new(),
            in_flight: 0,
            stopped: false,
            stats: SimStats::default(),
        }
    }

    /// The disk it works on.
    pub fn disk(&self) -> &SimDisk {
        &self.disk
    }

    /// Faults injected so far.
    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    fn misaligned_direct(&mut self, aligned: bool) -> bool {
        let refused = self.config.o_direct && self.config.strict_direct && !aligned;
        if refused {
            self.stats.einval += 1;
        }
        refused
    }

    /// The op's layout in its row, and for an extent op its file's inode: or why it cannot run.
    fn resolve(&self, op: &FileOp) -> Result<(BlockLayout, Option<(u64, Extent)>), Outcome> {
        let layout =
            BlockLayout::new(&op.format, self.region.row_bytes(), self.region.stride()).map_err(Outcome::Failed)?;
        match &op.target {
            Target::Path(_) => Ok((layout, None)),
            Target::Extent(e) => {
                let ino = self.files.get(e.file.0 as usize).ok_or(Outcome::Failed(OpError::Invalid))?;
                if op.evict.is_some() {
                    return Err(Outcome::Failed(OpError::Invalid));
                }
                if e.len != layout.file_len() {
                    return Err(Outcome::Failed(OpError::Geometry));
                }
                Ok((layout, Some((*ino, *e))))
            }
        }
    }

    /// Runs every event due at or before `self.now`, in (tick, submission) order.
    fn run_due(&mut self) {
        while let Some((&(tick, seq), &stage)) = self.events.first_key_value() {
            if tick > self.now {
                break;
            }
            self.events.remove(&(tick, seq));
            match stage {
                Stage::WriteTemp => self.write(seq),
                Stage::Finish => self.finish(seq),
            }
        }
    }

    /// A store's write: the temp file of a block file, or the extent.
    fn write(&mut self, seq: u64) {
        if let Some(mut b) = self.batches.remove(&seq) {
            b.outcome = Some(if self.disk.alive(self.generation) { self.write_batch(&b) } else { Outcome::Cancelled });
            self.batches.insert(seq, b);
            return;
        }
        let Some(mut p) = self.ops.remove(&seq) else {
            return;
        };
        if let (Some(evict), Target::Path(_)) = (&p.op.evict, &p.op.target) {
            // The victim leaves the namespace first, whatever becomes of the store. Reusing its
            // file or unlinking it look the same from outside: the sim models both as unlink.
            self.disk.discard(self.generation, &evict.path);
        }
        p.failed =
            if self.disk.alive(self.generation) { self.write_block(&mut p).err() } else { Some(Outcome::Cancelled) };
        self.ops.insert(seq, p);
    }

    /// Draws the write's faults (in a fixed order: a file's open, the transfer's alignment,
    /// space, I/O) and writes; `Err` is the store's outcome when it failed.
    fn write_block(&mut self, p: &mut Pending) -> Result<(), Outcome> {
        let faults = self.config.faults;
        let resolved = self.resolve(&p.op);
        if p.op.target.path().is_some() && self.rng.chance(faults.emfile) {
            self.stats.emfile += 1;
            return Err(Outcome::Transient(os(libc::EMFILE)));
        }
        let (layout, extent) = resolved?;
        let offset = extent.map_or(0, |(_, e)| e.offset);
        if self.misaligned_direct(layout.direct_ok(p.lease.as_slice(), offset)) {
            return Err(Outcome::Failed(os(libc::EINVAL)));
        }
        if self.rng.chance(faults.enospc) {
            self.stats.enospc += 1;
            return Err(Outcome::Failed(os(libc::ENOSPC)));
        }
        if self.rng.chance(faults.eio) {
            self.stats.eio += 1;
            return Err(Outcome::Failed(os(libc::EIO)));
        }
        let data = record(&p.op.format, 0, p.lease.block(), &layout);
        let written = match (extent, &p.op.target) {
            (Some((ino, e)), _) => {
                self.disk.write_at(self.generation, ino, e.offset, &data, p.op.sync).map(|()| PathBuf::new())
            }
            (None, Target::Path(path)) => self.disk.write_temp(self.generation, path, data, p.op.sync),
            (None, Target::Extent(_)) => Err(io::Error::from_raw_os_error(libc::EBADF)),
        };
        match written {
            Ok(temp) => {
                p.written = Some(temp);
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Err(Outcome::Cancelled),
            Err(e) => Err(Outcome::Failed(e.into())),
        }
    }

    fn finish(&mut self, seq: u64) {
        if let Some(b) = self.batches.remove(&seq) {
            let outcome = match b.outcome {
                Some(_) if !self.disk.alive(self.generation) => Outcome::Cancelled,
                Some(outcome) => outcome,
                None => Outcome::Cancelled,
            };
            self.deliver_batch(b, outcome);
            return;
        }
        let Some(mut p) = self.ops.remove(&seq) else {
            return;
        };
        let outcome = match p.op.dir {
            Direction::Store => self.publish(&mut p),
            Direction::Load => self.load(&mut p),
        };
        self.deliver(p, outcome);
    }

    fn deliver(&mut self, p: Pending, outcome: Outcome) {
        let Pending { lease, part, .. } = p;
        drop(lease);
        self.stats.completed += 1;
        self.ready.push_back((Parts::One(part), outcome));
    }

    fn deliver_batch(&mut self, b: PendingBatch, outcome: Outcome) {
        let PendingBatch { leases, parts, .. } = b;
        drop(leases);
        self.stats.completed += 1;
        self.ready.push_back((Parts::Many(parts), outcome));
    }

    /// The batch's write, with its faults drawn (a copy's read faults first, then space, then
    /// I/O): its outcome.
    fn write_batch(&mut self, b: &PendingBatch) -> Outcome {
        let faults = self.config.faults;
        let Some(&ino) = self.files.get(b.batch.file.0 as usize) else {
            return Outcome::Failed(OpError::Invalid);
        };
        let (row_bytes, stride) = (self.region.row_bytes(), self.region.stride());
        // What to write: (offset, bytes) ranges, one per block record.
        let mut ranges: Vec<(u64, Vec<u8>)> = Vec::new();
        match &b.batch.data {
            BatchData::Blocks(blocks) => {
                let mut at = b.batch.offset;
                for (block, lease) in blocks.iter().zip(&b.leases) {
                    let layout = match BlockLayout::new(&block.format, row_bytes, stride) {
                        Ok(l) => l,
                        Err(e) => return Outcome::Failed(e),
                    };
                    if self.misaligned_direct(layout.direct_ok(lease.as_slice(), at)) {
                        return Outcome::Failed(os(libc::EINVAL));
                    }
                    let data = record(&block.format, block.seq, lease.block(), &layout);
                    at += data.len() as u64;
                    ranges.push((at - data.len() as u64, data));
                }
            }
            BatchData::Bytes(bytes) => ranges.push((b.batch.offset, bytes.clone())),
            BatchData::Copy { from, format, seq } => {
                let layout = match BlockLayout::new(format, row_bytes, stride) {
                    Ok(l) => l,
                    Err(e) => return Outcome::Failed(e),
                };
                let mut data = match self.disk.read_at(self.generation, ino, *from, layout.file_len() as usize) {
                    Ok(d) => d,
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Outcome::Cancelled,
                    Err(e) => return Outcome::Failed(e.into()),
                };
                if data.len() as u64 != layout.file_len() {
                    return Outcome::Corrupt(WRONG_LENGTH);
                }
                if self.rng.chance(faults.eio) {
                    self.stats.eio += 1;
                    return Outcome::Transient(os(libc::EIO));
                }
                if self.rng.chance(faults.short_read) {
                    self.stats.short_reads += 1;
                    return Outcome::Corrupt(SHORT_READ);
                }
                if self.rng.chance(faults.bit_flip) && !data.is_empty() {
                    self.stats.bit_flips += 1;
                    let bit = self.rng.below(data.len() as u64 * 8);
                    data[(bit / 8) as usize] ^= 1 << (bit % 8);
                }
                let block = &data[layout.header..layout.header + layout.block];
                if let Err(reason) = format.verify(&data[..layout.header], block) {
                    return Outcome::Corrupt(reason);
                }
                let copy = record(format, *seq, block, &layout);
                ranges.push((b.batch.offset, copy));
            }
        }
        if self.rng.chance(faults.enospc) {
            self.stats.enospc += 1;
            return Outcome::Failed(os(libc::ENOSPC));
        }
        if self.rng.chance(faults.eio) {
            self.stats.eio += 1;
            return Outcome::Failed(os(libc::EIO));
        }
        let last = ranges.len().saturating_sub(1);
        for (i, (offset, data)) in ranges.iter().enumerate() {
            // `sync` makes the whole file durable once everything is written.
            let sync = b.batch.sync && i == last;
            match self.disk.write_at(self.generation, ino, *offset, data, sync) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Outcome::Cancelled,
                Err(e) => return Outcome::Failed(e.into()),
            }
        }
        Outcome::Ok
    }

    fn publish(&mut self, p: &mut Pending) -> Outcome {
        if let Some(failed) = p.failed.take() {
            return failed;
        }
        let (Some(temp), Target::Path(path)) = (&p.written, &p.op.target) else {
            return if p.written.is_some() { Outcome::Ok } else { Outcome::Cancelled };
        };
        match self.disk.publish(self.generation, temp, path) {
            Ok(()) => Outcome::Ok,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Outcome::Cancelled,
            Err(e) => Outcome::Failed(e.into()),
        }
    }

    fn load(&mut self, p: &mut Pending) -> Outcome {
        let faults = self.config.faults;
        let (layout, extent) = match self.resolve(&p.op) {
            Ok(r) => r,
            Err(outcome) => return outcome,
        };
        if !self.disk.alive(self.generation) {
            return Outcome::Cancelled;
        }
        if extent.is_none() && self.rng.chance(faults.emfile) {
            self.stats.emfile += 1;
            return Outcome::Transient(os(libc::EMFILE));
        }
        let read = match (extent, &p.op.target) {
            (Some((ino, e)), _) => self.disk.read_at(self.generation, ino, e.offset, e.len as usize),
            (None, Target::Path(path)) => self.disk.read_file(self.generation, path),
            (None, Target::Extent(_)) => Err(io::Error::from_raw_os_error(libc::EBADF)),
        };
        let mut data = match read {
            Ok(d) => d,
            Err(e) => {
                return match e.raw_os_error() {
                    Some(libc::ENOENT) => Outcome::NotFound,
                    Some(libc::ESRCH) => Outcome::Cancelled,
                    _ => Outcome::Failed(e.into()),
                }
            }
        };
        if data.len() as u64 != layout.file_len() {
            return self.corrupt(p, WRONG_LENGTH);
        }
        let aligned = layout.direct_ok(p.lease.as_slice(), extent.map_or(0, |(_, e)| e.offset));
        if self.misaligned_direct(aligned) {
            return Outcome::Failed(os(libc::EINVAL));
        }
        if self.rng.chance(faults.eio) {
            self.stats.eio += 1;
            return Outcome::Transient(os(libc::EIO));
        }
        if self.rng.chance(faults.short_read) {
            self.stats.short_reads += 1;
            return self.corrupt(p, SHORT_READ);
        }
        if self.rng.chance(faults.bit_flip) && !data.is_empty() {
            self.stats.bit_flips += 1;
            let bit = self.rng.below(data.len() as u64 * 8);
            data[(bit / 8) as usize] ^= 1 << (bit % 8);
        }
        let Some(row) = p.lease.as_mut_slice() else {
            return Outcome::Failed(OpError::Invalid);
        };
        row[..layout.payload].copy_from_slice(&data[layout.header..]);
        if let Err(reason) = p.op.format.verify(&data[..layout.header], &row[..layout.block]) {
            return self.corrupt(p, reason);
        }
        Outcome::Ok
    }

    /// A corrupt block: a file is removed, an extent left as it is.
    fn corrupt(&mut self, p: &Pending, reason: &'static str) -> Outcome {
        if let Target::Path(path) = &p.op.target {
            self.disk.discard(self.generation, path);
        }
        Outcome::Corrupt(reason)
    }
}

/// A block's record as `layout` lays it out: the native header (with `seq`) and the
/// zero-padded payload, or the raw block.
fn record(format: &BlockFormat, seq: u64, block: &[u8], layout: &BlockLayout) -> Vec<u8> {
    let mut data = Vec::with_capacity(layout.file_len() as usize);
    if let BlockFormat::Native { namespace, key } = format {
        let mut header = [0u8; HEADER_LEN];
        format::encode_record_header(namespace, key, seq, block, &mut header);
        data.extend_from_slice(&header);
    }
    data.extend_from_slice(block);
    data.resize(layout.file_len() as usize, 0);
    data
}

impl Executor for SimExecutor {
    fn submit(&mut self, op: FileOp, part: Part) -> Result<(), Full> {
        let has_room = self.in_flight < self.config.queue_capacity.max(1);
        let lease = match admit(&self.region, &op, self.stopped, has_room) {
            Ok(lease) => lease,
            Err(Refusal::Full) => return Err(Full { op, part }),
            Err(Refusal::Finished(outcome)) => {
                self.ready.push_back((Parts::One(part), outcome));
                self.in_flight += 1;
                return Ok(());
            }
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let latency = 1 + self.rng.below(u64::from(self.config.max_latency.max(1)));
        let due = self.now + latency;
        if op.dir == Direction::Store {
            // The temp file (or the extent) is written at some tick before the op completes.
            let write_at = self.now + self.rng.below(latency);
            self.events.insert((write_at, seq), Stage::WriteTemp);
        }
        self.events.insert((due, seq), Stage::Finish);
        self.ops.insert(seq, Pending { lease, part, op, written: None, failed: None });
        self.in_flight += 1;
        Ok(())
    }

    fn submit_batch(&mut self, batch: Batch, parts: Vec<Part>) -> Result<(), BatchFull> {
        let has_room = self.in_flight < self.config.queue_capacity.max(1);
        let known = (batch.file.0 as usize) < self.files.len();
        let leases = match admit_batch(&self.region, &batch, parts.len(), known, self.stopped, has_room) {
            Ok(leases) => leases,
            Err(Refusal::Full) => return Err(BatchFull { batch, parts }),
            Err(Refusal::Finished(outcome)) => {
                self.ready.push_back((Parts::Many(parts), outcome));
                self.in_flight += 1;
                return Ok(());
            }
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let latency = 1 + self.rng.below(u64::from(self.config.max_latency.max(1)));
        let write_at = self.now + self.rng.below(latency);
        self.events.insert((write_at, seq), Stage::WriteTemp);
        self.events.insert((self.now + latency, seq), Stage::Finish);
        self.batches.insert(seq, PendingBatch { leases, parts, batch, outcome: None });
        self.in_flight += 1;
        Ok(())
    }

    fn poll(&mut self, wait: Wait) -> io::Result<usize> {
        if self.in_flight == 0 {
            return Ok(0);
        }
        self.now += 1;
        self.run_due();
        if wait != Wait::No {
            while self.ready.is_empty() {
                let Some((&(tick, _), _)) = self.events.first_key_value() else {
                    break;
                };
                self.now = self.now.max(tick);
                self.run_due();
            }
        }
        let n = self.ready.len();
        for (parts, outcome) in self.ready.drain(..) {
            parts.finish(outcome);
        }
        self.in_flight -= n;
        Ok(n)
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn open_file(&mut self, path: &Path) -> io::Result<FileId> {
        let id = FileId(u32::try_from(self.files.len()).map_err(|_| io::Error::from(io::ErrorKind::Unsupported))?);
        self.files.push(self.disk.open(path)?);
        Ok(id)
    }

    fn shutdown(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.events.clear();
        let seqs: Vec<u64> = self.ops.keys().copied().collect();
        for seq in seqs {
            let Some(mut p) = self.ops.remove(&seq) else {
                continue;
            };
            // A store whose temp file is written is running: let it finish.
            let outcome =
                if p.written.is_some() || p.failed.is_some() { self.publish(&mut p) } else { Outcome::Cancelled };
            self.deliver(p, outcome);
        }
        // A batch whose write ran finishes with its outcome; the others never run.
        let seqs: Vec<u64> = self.batches.keys().copied().collect();
        for seq in seqs {
            let Some(b) = self.batches.remove(&seq) else { continue };
            let outcome = b.outcome.unwrap_or(Outcome::Cancelled);
            self.deliver_batch(b, outcome);
        }
    }

    fn name(&self) -> &'static str {
        "sim"
    }
}

impl Drop for SimExecutor {
    fn drop(&mut self) {
        self.shutdown();
        // Reported even if no one polls again: a dropped executor leaves no job waiting.
        for (parts, outcome) in self.ready.drain(..) {
            parts.finish(outcome);
        }
    }
}

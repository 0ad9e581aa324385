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
//! As the kernel executors do (see `kvtier-io-threaded`): leases at submission (a refused lease
//! fails the op at once); a store writes `{final}.{pid}.{seq:x}.tmp` (creating missing
//! directories), `fdatasync`s it if asked (which makes it durable, see the crash model in
//! [`disk`]) and renames it onto the final path, removing the temp file on any failure; a load
//! checks the length, reads, verifies a native header and removes a corrupt file.
//!
//! ## Faults ([`Faults`], parts per million per op; all off by default)
//!
//! | fault | where | outcome |
//! |---|---|---|
//! | `EMFILE` | store (before the temp file), load (open) | `Transient`, nothing changed |
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
mod rng;

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use kvtier_fs::format::{self, HEADER_LEN};
use kvtier_fs::region::{Lease, PrimaryRegion};
use kvtier_fs::{BlockFormat, Executor, FileOp, FileOpDone, Full, OpKind, Outcome, Wait};

pub use disk::{CrashStats, Fnv, SimDisk};
pub use rng::SimRng;

/// The `O_DIRECT` alignment (buffer, length, offset).
pub const DIRECT_ALIGN: usize = 4096;

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
    op: FileOp,
    lease: Lease,
    /// A store's temp file, once written.
    temp: Option<PathBuf>,
    /// A store whose write already failed.
    failed: Option<Outcome>,
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
    rng: SimRng,
    now: u64,
    next_seq: u64,
    ops: BTreeMap<u64, Pending>,
    events: BTreeMap<(u64, u64), Stage>,
    ready: VecDeque<FileOpDone>,
    in_flight: usize,
    stopped: bool,
    stats: SimStats,
}

fn os(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// The file length and the bytes of the row it covers, for `row_bytes` in `format`.
fn geometry(format: &BlockFormat, row_bytes: usize) -> (usize, usize, bool) {
    match format {
        BlockFormat::Vllm => (row_bytes, row_bytes, row_bytes % DIRECT_ALIGN == 0),
        BlockFormat::Native { .. } => {
            let padded = format::padded_payload_len(row_bytes as u64) as usize;
            (HEADER_LEN + padded, padded, true)
        }
    }
}

impl SimExecutor {
    /// An executor doing I/O on `region`'s rows and `disk`'s files, as the disk's current
    /// process (a crash of the disk kills it).
    pub fn new(region: Arc<PrimaryRegion>, disk: SimDisk, config: SimConfig) -> Self {
        SimExecutor {
            region,
            generation: disk.generation(),
            disk,
            rng: SimRng::new(config.seed),
            config,
            now: 0,
            next_seq: 0,
            ops: BTreeMap::new(),
            events: BTreeMap::new(),
            ready: VecDeque::new(),
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

    fn complete_now(&mut self, op: &FileOp, outcome: Outcome) {
        self.ready.push_back(FileOpDone { token: op.token, kind: op.kind, outcome });
        self.in_flight += 1;
    }

    fn misaligned_direct(&mut self, aligned: bool) -> bool {
        let refused = self.config.o_direct && self.config.strict_direct && !aligned;
        if refused {
            self.stats.einval += 1;
        }
        refused
    }

    /// Runs every event due at or before `self.now`, in (tick, submission) order.
    fn run_due(&mut self) {
        while let Some((&(tick, seq), &stage)) = self.events.first_key_value() {
            if tick > self.now {
                break;
            }
            self.events.remove(&(tick, seq));
            match stage {
                Stage::WriteTemp => self.write_temp(seq),
                Stage::Finish => self.finish(seq),
            }
        }
    }

    fn write_temp(&mut self, seq: u64) {
        let Some(mut p) = self.ops.remove(&seq) else {
            return;
        };
        let faults = self.config.faults;
        let (len, covered, aligned) = geometry(&p.op.format, self.region.row_bytes());
        if let Some(evict) = &p.op.evict {
            // The victim leaves the namespace first, whatever becomes of the store. Reusing its
            // file or unlinking it look the same from outside: the sim models both as unlink.
            self.disk.discard(self.generation, &evict.path);
        }
        p.failed = if !self.disk.alive(self.generation) {
            Some(Outcome::Cancelled)
        } else if self.rng.chance(faults.emfile) {
            self.stats.emfile += 1;
            Some(Outcome::Transient(os(libc::EMFILE)))
        } else if self.misaligned_direct(aligned) {
            Some(Outcome::Failed(os(libc::EINVAL)))
        } else if covered > p.lease.as_slice().len() {
            Some(Outcome::Failed(io::Error::new(io::ErrorKind::InvalidInput, "row shorter than the block")))
        } else if self.rng.chance(faults.enospc) {
            self.stats.enospc += 1;
            Some(Outcome::Failed(os(libc::ENOSPC)))
        } else if self.rng.chance(faults.eio) {
            self.stats.eio += 1;
            Some(Outcome::Failed(os(libc::EIO)))
        } else {
            let mut data = Vec::with_capacity(len);
            let row_bytes = self.region.row_bytes();
            let block = p.lease.block();
            if let BlockFormat::Native { namespace, key } = &p.op.format {
                let mut header = [0u8; HEADER_LEN];
                format::encode_header(namespace, key, block, &mut header);
                data.extend_from_slice(&header);
            }
            data.extend_from_slice(block);
            data.resize(len, 0);
            debug_assert!(data.len() >= row_bytes);
            match self.disk.write_temp(self.generation, &p.op.path, data, p.op.sync) {
                Ok(temp) => {
                    p.temp = Some(temp);
                    None
                }
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Some(Outcome::Cancelled),
                Err(e) => Some(Outcome::Failed(e)),
            }
        };
        self.ops.insert(seq, p);
    }

    fn finish(&mut self, seq: u64) {
        let Some(p) = self.ops.remove(&seq) else {
            return;
        };
        let mut p = p;
        let outcome = match p.op.kind {
            OpKind::Store => self.publish(&mut p),
            OpKind::Load => self.load(&mut p),
        };
        self.deliver(p, outcome);
    }

    fn deliver(&mut self, p: Pending, outcome: Outcome) {
        let Pending { op, lease, .. } = p;
        drop(lease);
        self.stats.completed += 1;
        self.ready.push_back(FileOpDone { token: op.token, kind: op.kind, outcome });
    }

    fn publish(&mut self, p: &mut Pending) -> Outcome {
        if let Some(failed) = p.failed.take() {
            return failed;
        }
        let Some(temp) = &p.temp else {
            return Outcome::Cancelled;
        };
        match self.disk.publish(self.generation, temp, &p.op.path) {
            Ok(()) => Outcome::Ok,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Outcome::Cancelled,
            Err(e) => Outcome::Failed(e),
        }
    }

    fn load(&mut self, p: &mut Pending) -> Outcome {
        let faults = self.config.faults;
        let row_bytes = self.region.row_bytes();
        let (len, covered, aligned) = geometry(&p.op.format, row_bytes);
        if !self.disk.alive(self.generation) {
            return Outcome::Cancelled;
        }
        if self.rng.chance(faults.emfile) {
            self.stats.emfile += 1;
            return Outcome::Transient(os(libc::EMFILE));
        }
        let mut data = match self.disk.read_file(self.generation, &p.op.path) {
            Ok(d) => d,
            Err(e) => {
                return match e.raw_os_error() {
                    Some(libc::ENOENT) => Outcome::NotFound,
                    Some(libc::ESRCH) => Outcome::Cancelled,
                    Some(libc::EISDIR) => {
                        Outcome::Failed(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"))
                    }
                    _ => Outcome::Failed(e),
                }
            }
        };
        if data.len() != len {
            return self.corrupt(p, "wrong length");
        }
        if self.misaligned_direct(aligned) {
            return Outcome::Failed(os(libc::EINVAL));
        }
        if self.rng.chance(faults.eio) {
            self.stats.eio += 1;
            return Outcome::Transient(os(libc::EIO));
        }
        if self.rng.chance(faults.short_read) {
            self.stats.short_reads += 1;
            return self.corrupt(p, "short read");
        }
        if self.rng.chance(faults.bit_flip) && !data.is_empty() {
            self.stats.bit_flips += 1;
            let bit = self.rng.below(data.len() as u64 * 8);
            data[(bit / 8) as usize] ^= 1 << (bit % 8);
        }
        let Some(row) = p.lease.as_mut_slice() else {
            return Outcome::Failed(io::Error::new(io::ErrorKind::InvalidInput, "a load needs a write lease"));
        };
        if covered > row.len() {
            return Outcome::Failed(io::Error::new(io::ErrorKind::InvalidInput, "row shorter than the block"));
        }
        match &p.op.format {
            BlockFormat::Vllm => row[..covered].copy_from_slice(&data),
            BlockFormat::Native { namespace, key } => {
                row[..covered].copy_from_slice(&data[HEADER_LEN..]);
                let verified = format::decode_header(&data).and_then(|h| h.check(namespace, key, &row[..row_bytes]));
                if let Err(e) = verified {
                    return self.corrupt(p, e.reason());
                }
            }
        }
        Outcome::Ok
    }

    fn corrupt(&mut self, p: &Pending, reason: &'static str) -> Outcome {
        self.disk.discard(self.generation, &p.op.path);
        Outcome::Corrupt(reason)
    }
}

impl Executor for SimExecutor {
    fn submit(&mut self, op: FileOp) -> Result<(), Full> {
        if self.stopped {
            self.complete_now(&op, Outcome::Cancelled);
            return Ok(());
        }
        if self.in_flight >= self.config.queue_capacity.max(1) {
            return Err(Full(op));
        }
        let lease = match self.region.lease(op.slot, op.kind.lease_access()) {
            Ok(lease) => lease,
            Err(e) => {
                self.complete_now(&op, Outcome::Failed(e.into()));
                return Ok(());
            }
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let latency = 1 + self.rng.below(u64::from(self.config.max_latency.max(1)));
        let due = self.now + latency;
        if op.kind == OpKind::Store {
            // The temp file is written at some tick before the rename.
            let write_at = self.now + self.rng.below(latency);
            self.events.insert((write_at, seq), Stage::WriteTemp);
        }
        self.events.insert((due, seq), Stage::Finish);
        self.ops.insert(seq, Pending { op, lease, temp: None, failed: None });
        self.in_flight += 1;
        Ok(())
    }

    fn poll(&mut self, out: &mut Vec<FileOpDone>, wait: Wait) -> io::Result<usize> {
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
        out.extend(self.ready.drain(..));
        self.in_flight -= n;
        Ok(n)
    }

    fn in_flight(&self) -> usize {
        self.in_flight
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
                if p.temp.is_some() || p.failed.is_some() { self.publish(&mut p) } else { Outcome::Cancelled };
            self.deliver(p, outcome);
        }
    }

    fn name(&self) -> &'static str {
        "sim"
    }
}

impl Drop for SimExecutor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

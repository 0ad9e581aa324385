//! The executor interface: per-block operations ([`FileOp`]), where they go ([`Target`]), and
//! the [`Executor`] trait every executor (threaded, io_uring, sim) implements.
//!
//! An op names a primary slot and a target, never a raw pointer: the executor resolves the slot
//! through the shared [`crate::region::PrimaryRegion`] and holds a [`crate::region::Lease`] on it
//! until the op's last completion is reaped. It then drops the lease and reports the op's
//! [`crate::Outcome`] through the op's [`Part`] of a job in the caller's
//! [`kvtier_core::JobTable`], from whichever thread finished the op; so by the time the
//! caller takes the job, every row of it is free again.
//!
//! # Targets
//!
//! - [`Target::Path`]: a file per block. A store writes a fresh temp file and renames it onto
//!   the path (a published file is never written in place); a load opens, checks the length,
//!   reads and (native format) verifies, and removes a file it finds corrupt.
//! - [`Target::Extent`]: a range of a file the executor opened with [`Executor::open_file`]
//!   (a region-based disk engine's device, say). A store writes the block in its format at the
//!   extent's offset (positioned, no temp file: the caller owns crash consistency) and, with
//!   `sync`, `fdatasync`s the file; a load reads the extent and verifies it, and a short read
//!   or a failed verification is [`crate::Outcome::Corrupt`], the bytes left as they are. The
//!   extent's `len` must be the block's [`crate::layout::BlockLayout::file_len`]; an extent op
//!   never evicts. `O_DIRECT` is used where the transfer and the offset are aligned, as for
//!   files.
//!
//! # Batches
//!
//! [`Executor::submit_batch`] writes a [`Batch`] at one offset of an opened file as **one
//! transfer** (a disk engine appends a job's blocks to its open region with one large write):
//!
//! - [`BatchData::Blocks`]: rows, each laid out as its [`BlockFormat`] says (the native header,
//!   carrying the block's sequence number, then the zero-padded payload), back to back. The
//!   payloads are written straight from the rows (no copy) where `O_DIRECT` alignment allows;
//!   only headers (and a row's dirty last page) come from the executor's own pages. Every row
//!   is leased at submission (a refused lease fails the whole batch, nothing written).
//! - [`BatchData::Bytes`]: bytes the op owns (a disk engine's own metadata: a region's
//!   summary), written as they are.
//! - [`BatchData::Copy`]: one block moved within the file (a disk engine reinserting a hot
//!   block): the record at `from` is read and verified like a load (a record that fails is
//!   `Corrupt`, and nothing is written), then written at the batch's offset with a new
//!   sequence number.
//!
//! Every part of a batch (one per block, one for bytes or a copy) is finished with the batch's
//! one outcome, after its leases were dropped; with `sync` the file is `fdatasync`ed before.
//! A batch is one op for [`Executor::in_flight`] and [`Executor::poll`]. A batch that cannot
//! run as asked (an unknown file, no block, parts that do not match its blocks) fails every
//! part it was given with [`crate::OpError::Invalid`].

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kvtier_core::{Direction, OffloadKey, Part, SlotId};

use crate::files::FileMode;

/// How a block is laid out in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockFormat {
    /// The raw row bytes, exactly what vLLM's FS tier writes.
    Vllm,
    /// A checksummed header (see [`crate::format`]) followed by the row bytes.
    Native {
        /// The namespace digest the header must carry.
        namespace: [u8; 12],
        /// The key the header must carry.
        key: OffloadKey,
    },
}

/// A file an executor opened for extent ops ([`Executor::open_file`]); valid for that executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub u32);

/// A range of an opened file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// The file.
    pub file: FileId,
    /// Where the block starts in it.
    pub offset: u64,
    /// The block's length on disk (its layout's `file_len`).
    pub len: u64,
}

/// Where an op's block lives on disk. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A file of its own, at this (final) path.
    Path(PathBuf),
    /// A range of a file the executor opened.
    Extent(Extent),
}

impl Target {
    /// The path, for a [`Target::Path`].
    pub fn path(&self) -> Option<&Path> {
        match self {
            Target::Path(p) => Some(p),
            Target::Extent(_) => None,
        }
    }
}

/// One per-block operation.
#[derive(Debug, Clone)]
pub struct FileOp {
    /// Store (row -> disk) or load (disk -> row).
    pub dir: Direction,
    /// The primary slot written from (store) or read into (load).
    pub slot: SlotId,
    /// Where the block goes or comes from.
    pub target: Target,
    /// The block's layout.
    pub format: BlockFormat,
    /// Stores: `fdatasync` the block before publishing it, and `fsync` the directories its
    /// name lives in after (so it survives a power cut once reported stored).
    pub sync: bool,
    /// Permission bits of the temp file and the directories a store creates (the tier's
    /// [`FileMode`]; a reused victim keeps its own).
    pub mode: FileMode,
    /// Stores to a path only: a block file to take out of the namespace first, to make room.
    pub evict: Option<Box<Evict>>,
}

/// A block file a store evicts before it writes (see [`FileOp::evict`]).
///
/// With `reuse`, the store renames the victim to its own temp name and overwrites it in place
/// (no inode to allocate: on ext4 after many deletions, creating a file costs 0.2-0.8 ms of
/// kernel CPU, a rename ~23 us), then publishes it as usual; otherwise it unlinks the victim
/// and creates a fresh file. A victim that is already gone is not an error: the store creates
/// a fresh file. The victim's path leaves the namespace either way, even if the store then
/// fails. A reused file gets the new block's length (cut or extended when it had another), so
/// no byte of the victim outlives the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evict {
    /// The victim's final path.
    pub path: PathBuf,
    /// Reuse its file (`true`) or unlink it.
    pub reuse: bool,
}

/// One block of a [`BatchData::Blocks`] batch.
#[derive(Debug, Clone)]
pub struct BatchBlock {
    /// The primary slot written from.
    pub slot: SlotId,
    /// The block's layout (and, native, its namespace and key).
    pub format: BlockFormat,
    /// The sequence number its native header carries (0: none; ignored in the vLLM format).
    pub seq: u64,
}

/// What a [`Batch`] writes. See the module docs.
#[derive(Debug, Clone)]
pub enum BatchData {
    /// Rows laid out back to back, each in its format. One part per block.
    Blocks(Vec<BatchBlock>),
    /// Bytes the op owns, written as they are. One part.
    Bytes(Vec<u8>),
    /// The block at `from`, laid out as `format` says, read, verified and rewritten at the
    /// batch's offset with sequence number `seq`. One part.
    Copy {
        /// Where the record is now.
        from: u64,
        /// Its layout, namespace and key (what it is verified against).
        format: BlockFormat,
        /// The sequence number of the copy.
        seq: u64,
    },
}

impl BatchData {
    /// How many parts a batch of this data reports: one per block, one otherwise.
    pub fn parts(&self) -> usize {
        match self {
            BatchData::Blocks(blocks) => blocks.len(),
            BatchData::Bytes(_) | BatchData::Copy { .. } => 1,
        }
    }
}

/// A write at one offset of a file the executor opened, as one transfer. See the module docs.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The file ([`Executor::open_file`]).
    pub file: FileId,
    /// Where the batch's first byte goes.
    pub offset: u64,
    /// What is written.
    pub data: BatchData,
    /// `fdatasync` the file before reporting.
    pub sync: bool,
}

/// The executor's queue is full; the batch was not accepted (it comes back with its parts).
#[derive(Debug)]
pub struct BatchFull {
    /// The batch.
    pub batch: Batch,
    /// Its parts, unreported.
    pub parts: Vec<Part>,
}

impl std::fmt::Display for BatchFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "executor queue full (a batch of {} parts)", self.parts.len())
    }
}

impl std::error::Error for BatchFull {}

/// How long [`Executor::poll`] may wait for a completion when none is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Return at once.
    No,
    /// Wait at most this long.
    Timeout(Duration),
    /// Wait until at least one op completes (returns at once if none is in flight).
    Forever,
}

/// The executor's queue is full; the op was not accepted (it comes back with its part).
#[derive(Debug)]
pub struct Full {
    /// The op.
    pub op: FileOp,
    /// Its part, unreported.
    pub part: Part,
}

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "executor queue full ({:?} of slot {})", self.op.dir, self.op.slot.0)
    }
}

impl std::error::Error for Full {}

/// Runs [`FileOp`]s: one small non-blocking submit/poll interface for every executor.
///
/// Each op is reported exactly once, by finishing its [`Part`] with the op's
/// [`crate::Outcome::code`], after its lease on the row was dropped; whoever holds the part's
/// job table takes whole finished jobs from it. `poll` drives what the executor cannot drive
/// from its own threads (io_uring completions, the simulator's clock) and counts finished ops.
pub trait Executor: Send {
    /// Queues `op`, to be reported through `part`; never blocks. After `shutdown`, ops are
    /// accepted and finish `Cancelled`.
    // The op comes back by value so the caller can retry it without a clone; `Full` is the
    // rare path, not worth a box on every refusal.
    #[allow(clippy::result_large_err)]
    fn submit(&mut self, op: FileOp, part: Part) -> Result<(), Full>;
    /// Queues `batch`, to be reported through `parts` (one per block, or one; see the module
    /// docs); never blocks. After `shutdown`, batches are accepted and finish `Cancelled`.
    // As `submit`: the batch comes back by value, on the rare path.
    #[allow(clippy::result_large_err)]
    fn submit_batch(&mut self, batch: Batch, parts: Vec<Part>) -> Result<(), BatchFull>;
    /// Moves ops on and returns how many finished (their parts reported) since the last call,
    /// first waiting as `wait` allows if none did.
    ///
    /// # Errors
    ///
    /// The kernel's error, when it refused to run or reap ops and none finished (the ops stay
    /// in flight; a later poll picks them up).
    fn poll(&mut self, wait: Wait) -> io::Result<usize>;
    /// Ops submitted and not yet counted by `poll`.
    fn in_flight(&self) -> usize;
    /// Opens the existing file at `path`, read-write, for [`Target::Extent`] ops (with
    /// `O_DIRECT` where the executor uses it, for aligned transfers). It stays open until the
    /// executor is dropped.
    ///
    /// # Errors
    ///
    /// The open's error (no such file, no permission...), or `Unsupported` where the executor
    /// cannot take more files.
    fn open_file(&mut self, path: &Path) -> io::Result<FileId>;
    /// Stops taking new work and finishes or cancels every queued op; each is still reported.
    /// Returns when no op is running. Idempotent.
    fn shutdown(&mut self);
    /// A short name for reports (`threaded`, `uring`, `sim`).
    fn name(&self) -> &'static str;
}

//! The executor interface: per-block file operations, their outcomes, and the [`Executor`]
//! trait every executor (threaded, io_uring, sim) implements.
//!
//! An op names a primary slot and a path, never a raw pointer: the executor resolves the slot
//! through the shared [`crate::region::PrimaryRegion`] and holds a [`crate::region::Lease`] on it
//! until the op's completion is handed back, so a slot's memory is never touched after its
//! operation completed.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use kvtier_core::{OffloadKey, SlotId};

/// What an op does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// Write the slot's row to a new file published at the op's path (temp file + rename).
    Store,
    /// Read the file at the op's path into the slot's row, verifying it.
    Load,
}

impl OpKind {
    /// The lease an executor holds on the op's row: a load writes it, a store reads it.
    pub fn lease_access(self) -> crate::region::Access {
        match self {
            OpKind::Load => crate::region::Access::Write,
            OpKind::Store => crate::region::Access::Read,
        }
    }
}

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

/// One per-block file operation.
#[derive(Debug, Clone)]
pub struct FileOp {
    /// Chosen by the submitter; returned in the op's [`FileOpDone`].
    pub token: u64,
    /// Store or load.
    pub kind: OpKind,
    /// The primary slot written from (store) or read into (load).
    pub slot: SlotId,
    /// The block file's final path.
    pub path: PathBuf,
    /// The file's layout.
    pub format: BlockFormat,
    /// `fdatasync` the temp file before publishing it (stores).
    pub sync: bool,
    /// Stores only: a block file to take out of the namespace first, to make room.
    pub evict: Option<Box<Evict>>,
}

/// A block file a store evicts before it writes (see [`FileOp::evict`]).
///
/// With `reuse`, the store renames the victim to its own temp name and overwrites it in place
/// (no inode to allocate: on ext4 after many deletions, creating a file costs 0.2-0.8 ms of
/// kernel CPU, a rename ~23 us), then publishes it as usual; otherwise it unlinks the victim
/// and creates a fresh file. A victim that is already gone is not an error: the store creates
/// a fresh file. The victim's path leaves the namespace either way, even if the store then
/// fails. A reused file keeps its length: a store of the same format and block size (the
/// tier's own) overwrites it exactly; anything else is caught as corrupt when loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evict {
    /// The victim's final path.
    pub path: PathBuf,
    /// Reuse its file (`true`) or unlink it.
    pub reuse: bool,
}

/// How an op ended. Every op ends exactly once.
#[derive(Debug)]
pub enum Outcome {
    /// Stored and published, or loaded and verified.
    Ok,
    /// The file does not exist (load).
    NotFound,
    /// The file is short, torn, foreign or fails its checksum; the executor removed it (load).
    Corrupt(&'static str),
    /// A transient failure (EMFILE, ENOMEM, EINTR, EAGAIN, EIO on open, EACCES...): the file,
    /// if any, is kept; a later attempt may succeed.
    Transient(io::Error),
    /// Any other failure; for a store, the temp file was removed and nothing was published.
    Failed(io::Error),
    /// The executor shut down before running the op.
    Cancelled,
}

impl Outcome {
    /// True for [`Outcome::Ok`].
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }
}

/// A finished op.
#[derive(Debug)]
pub struct FileOpDone {
    /// The op's token.
    pub token: u64,
    /// Store or load.
    pub kind: OpKind,
    /// How it ended.
    pub outcome: Outcome,
}

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

/// The executor's queue is full; the op was not accepted (it is returned).
#[derive(Debug)]
pub struct Full(pub FileOp);

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "executor queue full (op {})", self.0.token)
    }
}

impl std::error::Error for Full {}

/// Runs [`FileOp`]s. Non-blocking on submit, polled for completions.
pub trait Executor: Send {
    /// Queues `op`; never blocks. After `shutdown`, ops are accepted and complete `Cancelled`.
    // The op comes back by value so the caller can retry it without a clone; `Full` is the
    // rare path, not worth a box on every refusal.
    #[allow(clippy::result_large_err)]
    fn submit(&mut self, op: FileOp) -> Result<(), Full>;
    /// Appends finished ops to `out` (waiting as `wait` allows) and returns how many it added.
    fn poll(&mut self, out: &mut Vec<FileOpDone>, wait: Wait) -> io::Result<usize>;
    /// Ops submitted and not yet returned by `poll`.
    fn in_flight(&self) -> usize;
    /// Stops taking new work and finishes or cancels every queued op; each still reaches `poll`.
    /// Returns when no op is running. Idempotent.
    fn shutdown(&mut self);
    /// A short name for reports (`threaded`, `uring`, `sim`).
    fn name(&self) -> &'static str;
}

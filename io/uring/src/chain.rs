//! What a store and a load are, as chains of ring steps, and how a finished chain's results
//! become the op's outcome or its next chain. No `unsafe`, no syscall: this module only reads
//! an idle record ([`Idle`]) and says what to push next.
//!
//! **Store** (one chain, soft-linked: a failure or a short write cancels every later step, so
//! nothing is published): `openat(temp, O_WRONLY|O_CREAT|O_EXCL[|O_DIRECT], 0644)` into the
//! record's direct descriptor -> one write (`write_fixed` of a vLLM-format row, or `writev` of
//! the native header from scratch page 0, the row, and the zero-padded last page from scratch
//! page 1 when the row's tail past `row_bytes` is not zero: stale memory never reaches the
//! disk) -> `close` -> `renameat(temp, final)`. With `fsync`, the first chain ends with
//! `fsync(DATASYNC)` and a second one does `close` -> `renameat`: a failed `fsync` (like a
//! failed `renameat`) sets no failure flag in the kernel (Linux 6.18), so it neither breaks a
//! soft link nor posts a skipped CQE; only the last step of a chain is sure to be heard from
//! (checked by `ring::link_semantics`). With `fsync`, once the block is published, one chain
//! per directory makes its name durable: `openat(dir, O_RDONLY|O_DIRECTORY)` soft-linked to
//! `fsync`, hard-linked to `close`, for the directory holding the block and the parent of
//! each directory the store created (a failure unlinks the published block and fails the
//! store). Then:
//! - `ENOENT` from the temp `openat`: the parent directories are created, one `mkdirat` per
//!   chain, walking up until one exists and back down (once per op), and the chain is
//!   resubmitted under a fresh temp name;
//! - `EEXIST` (only a stale temp file of a crashed process that had this pid): a fresh temp
//!   name, up to 8 tries;
//! - any other failure: a cleanup chain, `close` of the descriptor if it was left open
//!   (hard-linked so the next step runs anyway) and `unlinkat` of the temp file, then the
//!   failure is reported. Errors map as in every executor ([`kvtier_fs::Outcome`]'s
//!   `store_failure`, `load_open_failure` and `load_read_failure`).
//!
//! A store that evicts a block ([`kvtier_fs::Evict`]) runs one chain first. Reusing the
//! victim's file: `renameat(victim, temp)` hard-linked to `statx(temp)` (each posting its CQE:
//! see above), then the store chain opening the temp file `O_WRONLY[|O_DIRECT]` to overwrite
//! it in place, with `O_TRUNC` unless it already has the new block's length (a longer victim
//! must not keep its tail). A rename that finds no new
//! block's directory creates it (as a store does) and is tried once more; if it still fails
//! (the victim is gone), `unlinkat(victim)`, and if the open fails, `unlinkat(temp)`, then a
//! fresh store. Not reusing it: `unlinkat(victim)`, then a
//! fresh store.
//!
//! **Load**: `openat(final, O_RDONLY[|O_DIRECT])` -> `read_fixed` of the native header into
//! scratch page 0 -> `read_fixed` of the payload (padded, for the native format) into the row
//! -> `read_fixed` of one page at the expected end of the file into scratch page 1, which must
//! read nothing -> `close`. The reads are hard-linked, so `close` runs once `openat` succeeded
//! whatever the reads did. In userspace: a file that read short or long is
//! `Corrupt("wrong length")`; a native header that does not decode or check, `Corrupt(reason)`.
//!
//! **A corrupt file is removed only if it is still the file that was read.** A direct
//! descriptor cannot be `fstat`ed, so the file is read again between two `statx` of its path
//! (`statx` -> `openat` -> reads -> `close` -> `statx`, one chain): when both name the same
//! device and inode and the second reading is corrupt too, it is renamed aside to a temp name
//! and `statx`ed there (`renameat` hard-linked to `statx`), and unlinked only if it is still
//! that inode; a file a writer renamed onto the path in between goes back (`linkat`, which
//! does not replace a file published meanwhile) before its temp name is unlinked (as in
//! [`kvtier_fs::files::remove_if_same`]). If the second reading verifies (a writer replaced the
//! file meanwhile), the row now holds a good block and the load succeeds; if the path changed,
//! nothing is removed. This costs a second read of corrupt files only.
//!
//! **Extent ops** work on a file registered in a fixed-file slot (the `O_DIRECT` one where the
//! transfer and the offset are aligned): a store is one chain, the write (`write_fixed` or
//! `writev`, as for a file) at the extent's offset, soft-linked to `fsync(DATASYNC)` with
//! `sync`; a load is one SQE, one I/O: `readv` of the native header (into scratch page 0) and
//! the payload (into the row), or `read_fixed` of a vLLM-format row, then verified in
//! userspace. (`READV_FIXED` would take both buffers from one registered buffer; the header
//! page and the row are in two, so a native load pins its row's pages for the I/O.) Both post
//! one CQE. Nothing is
//! opened, closed, renamed or removed: a short read is `Corrupt("wrong length")`, and a corrupt
//! extent is left as it is.
//!
//! Geometry (padded lengths, the zero-padded last page) is [`BlockLayout`]'s, shared with the
//! other executors.

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use kvtier_core::Direction;
use kvtier_fs::direct::open_flag;
use kvtier_fs::format::{self, HEADER_LEN};
use kvtier_fs::outcome::WRONG_LENGTH;
use kvtier_fs::{tmpname, BlockFormat, BlockLayout, OpError, Outcome, Target};

use crate::record::Idle;
use crate::sqe::{transferred, Buf, FileSel, Link, PathSel, Sqe, MAX_IOV, MAX_STEPS, MAX_TRANSFER, PAGE, SKIPPED};

// A native header is one scratch page.
const _: () = assert!(HEADER_LEN == PAGE);

/// How many temp names a store tries when its name already exists.
const TEMP_ATTEMPTS: u32 = 8;
/// Most directory levels a store creates.
const MAX_NEW_DIRS: usize = 64;

/// What a chain step is for (its position varies with the op).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Open,
    Reclaim,
    Header,
    Row,
    Probe,
    Sync,
    Close,
    Rename,
    StatBefore,
    StatAfter,
    Mkdir,
    Unlink,
    Aside,
    Restore,
    DirOpen,
}

/// A chain: its steps, their SQEs and links, and the bytes each transfer must move.
#[derive(Debug, Clone, Copy)]
struct Chain {
    len: usize,
    steps: [Step; MAX_STEPS],
    sqes: [(Sqe, Link); MAX_STEPS],
    want: [u32; MAX_STEPS],
    /// Posts one CQE only (see [`crate::ring::Ring::push`]).
    one_cqe: bool,
}

impl Chain {
    fn new() -> Chain {
        Chain {
            len: 0,
            steps: [Step::Open; MAX_STEPS],
            sqes: [(Sqe::Close, Link::End); MAX_STEPS],
            want: [0; MAX_STEPS],
            one_cqe: false,
        }
    }

    fn add(&mut self, step: Step, sqe: Sqe, link: Link, want: u32) {
        assert!(self.len < MAX_STEPS, "a chain has at most {MAX_STEPS} steps");
        self.steps[self.len] = step;
        self.sqes[self.len] = (sqe, link);
        self.want[self.len] = want;
        self.len += 1;
    }

    fn at(&self, step: Step) -> Option<usize> {
        self.steps[..self.len].iter().position(|&s| s == step)
    }

    /// Step `k` succeeded: its CQE was skipped (it completed in full), or a non-negative
    /// result, and a transfer moved all its bytes.
    fn ok(&self, results: &[i32; MAX_STEPS], k: usize) -> bool {
        results[k] == SKIPPED || transferred(results[k], self.want[k])
    }
}

/// Where an op's bytes go, worked out once when it starts.
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// The block's geometry in its file and its row.
    block: BlockLayout,
    /// Bytes written from (store) or read into (load) the row.
    row_len: u32,
    /// Store: bytes of the zero-padded last page written from scratch page 1 (0: none).
    tail_len: u32,
    /// `O_DIRECT` or 0 (a file per block).
    direct: i32,
    /// An extent op's file and offset.
    extent: Option<(FileSel, u64)>,
}

/// The fixed-file slots an extent op's file is registered in: buffered, and `O_DIRECT` if the
/// executor uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSlots {
    /// The buffered descriptor's slot.
    pub buffered: u32,
    /// The `O_DIRECT` descriptor's slot.
    pub direct: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Extent,
    Evict,
    EvictUnlink,
    Store,
    Mkdir,
    Cleanup,
    Load,
    Recheck,
    Aside,
    Unlink,
    DirSync,
}

/// What to do with a record whose chain finished.
#[derive(Debug)]
pub enum Next {
    /// Push [`Flow::chain`].
    Chain,
    /// Report the op with this outcome.
    Done(Outcome),
}

/// One op's progress through its chains.
#[derive(Debug)]
pub struct Flow {
    phase: Phase,
    chain: Chain,
    layout: Layout,
    made_dirs: bool,
    /// The store's temp file is a reclaimed victim.
    reclaimed: bool,
    /// Directories are being made for a victim's reclaim, to be tried again.
    reclaiming: bool,
    /// The store chain ended with its `fsync`: `close` and `renameat` come next.
    publish_next: bool,
    attempts: u32,
    /// Directories still to create, the next one last.
    dirs: Vec<PathBuf>,
    /// Directories this store created, and, once published with `sync`, the directories
    /// still to `fsync` (the next one last).
    created: Vec<PathBuf>,
    /// What a store's cleanup chain reports.
    failure: Option<Outcome>,
    /// A load's corruption reason.
    reason: &'static str,
}

/// An executor's internal inconsistency, as the op's outcome.
fn invalid() -> Outcome {
    Outcome::Failed(OpError::Invalid)
}

/// `n` bytes as one transfer's length: a row longer than one syscall moves does not fit.
fn transfer_len(n: usize) -> Result<u32, Outcome> {
    if n > MAX_TRANSFER {
        return Err(Outcome::Failed(OpError::Geometry));
    }
    Ok(n as u32)
}

impl Flow {
    /// Starts `rec`'s op: works out its layout (a store encodes its header, and bounces its
    /// last page if need be, into the scratch pages) and its first chain. `file` is an extent
    /// op's registered file (`None`: a file per block, or an unknown file id). `Err` is the
    /// op's outcome when it cannot start.
    pub fn start(rec: &mut Idle<'_>, o_direct: bool, file: Option<FileSlots>) -> Result<Flow, Outcome> {
        let store = rec.op.dir == Direction::Store;
        let mut layout = layout(rec, o_direct)?;
        match &rec.op.target {
            Target::Path(path) => {
                let path = path.as_os_str().as_bytes();
                rec.set_path(PathSel::Final, &[path]).map_err(|_| Outcome::Failed(OpError::BadPath))?;
            }
            Target::Extent(e) => {
                let file = file.ok_or_else(invalid)?;
                if rec.op.evict.is_some() {
                    return Err(invalid());
                }
                if e.len != layout.block.file_len() {
                    return Err(Outcome::Failed(OpError::Geometry));
                }
                let slot = match file.direct {
                    Some(direct) if o_direct && layout.block.direct_ok(rec.row, e.offset) => direct,
                    _ => file.buffered,
                };
                layout.extent = Some((FileSel::Registered(slot), e.offset));
            }
        }
        if store {
            store_payload(rec, &mut layout);
        }
        let mut flow = Flow {
            phase: Phase::Load,
            chain: Chain::new(),
            layout,
            made_dirs: false,
            reclaimed: false,
            reclaiming: false,
            publish_next: false,
            attempts: 0,
            dirs: Vec::new(),
            created: Vec::new(),
            failure: None,
            reason: "",
        };
        if layout.extent.is_some() {
            flow.extent_chain(rec);
            if flow.chain.len == 0 {
                // An empty block with nothing to sync: nothing to do.
                return Err(Outcome::Ok);
            }
        } else if let (true, Some(evict)) = (store, &rec.op.evict) {
            let (victim, reuse) = (evict.path.as_os_str().as_bytes(), evict.reuse);
            rec.set_path(PathSel::Victim, &[victim]).map_err(|_| Outcome::Failed(OpError::BadPath))?;
            if reuse {
                flow.reclaim_chain(rec)?;
            } else {
                flow.evict_unlink(PathSel::Victim);
            }
        } else if store {
            flow.store_chain(rec, false)?;
        } else {
            flow.load_chain(false);
        }
        Ok(flow)
    }

    /// The chain to push, and whether it posts one CQE only.
    pub fn chain(&self) -> (&[(Sqe, Link)], bool) {
        (&self.chain.sqes[..self.chain.len], self.chain.one_cqe)
    }

    /// The outcome of an op whose next chain could not be pushed (a logic error).
    pub fn abort(&mut self) -> Outcome {
        self.failure.take().unwrap_or_else(invalid)
    }

    /// `rec`'s chain finished: its outcome, or the next chain.
    pub fn advance(&mut self, rec: &mut Idle<'_>) -> Next {
        match self.phase {
            Phase::Extent => Next::Done(self.extent_done(rec)),
            Phase::Evict => self.reclaim_done(rec),
            Phase::EvictUnlink => self.restart_store(rec),
            Phase::Store => self.store_done(rec),
            Phase::Mkdir => self.mkdir_done(rec),
            Phase::Cleanup => Next::Done(self.failure.take().unwrap_or_else(invalid)),
            Phase::Load => match self.verdict(rec) {
                Outcome::Corrupt(reason) => {
                    self.reason = reason;
                    self.load_chain(true);
                    Next::Chain
                }
                o => Next::Done(o),
            },
            Phase::Recheck => self.recheck_done(rec),
            Phase::Aside => self.aside_done(rec),
            Phase::DirSync => self.dir_sync_done(rec),
            Phase::Unlink => Next::Done(Outcome::Corrupt(self.reason)),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Extents
    // -----------------------------------------------------------------------------------------

    /// The one chain of an extent op: the write (then `fsync` with `sync`), or the reads.
    fn extent_chain(&mut self, rec: &Idle<'_>) {
        let l = self.layout;
        let Some((file, offset)) = l.extent else { return };
        let mut c = Chain::new();
        if rec.op.dir == Direction::Store {
            if let Some((step, sqe, want)) = write_step(&l, file, offset) {
                c.add(step, sqe, Link::Soft, want);
            }
            if rec.op.sync {
                c.add(Step::Sync, Sqe::DataSync { file }, Link::End, 0);
            }
        } else if l.block.native() {
            // One I/O: the header page and the payload, contiguous on disk.
            let mut bufs = [Buf::Scratch { page: 0, len: PAGE as u32 }; MAX_IOV];
            let mut n = 1;
            if l.row_len > 0 {
                bufs[1] = Buf::Row { len: l.row_len };
                n = 2;
            }
            let want = PAGE as u32 + l.row_len;
            c.add(Step::Row, Sqe::Readv { file, bufs, n, offset }, Link::Soft, want);
        } else if l.row_len > 0 {
            c.add(Step::Row, Sqe::Read { file, buf: Buf::Row { len: l.row_len }, offset }, Link::Soft, l.row_len);
        }
        // Soft links all along: one CQE tells how the whole chain went.
        c.one_cqe = true;
        self.chain = c;
        self.phase = Phase::Extent;
    }

    /// An extent op's outcome from its chain's results.
    fn extent_done(&self, rec: &Idle<'_>) -> Outcome {
        let (c, r) = (&self.chain, rec.results);
        let store = rec.op.dir == Direction::Store;
        for k in 0..c.len {
            if c.ok(r, k) {
                continue;
            }
            return match (store, r[k]) {
                (true, res) if res < 0 => Outcome::store_failure(OpError::from_res(res)),
                (true, _) => Outcome::store_failure(OpError::Short),
                (false, res) if res < 0 => Outcome::load_read_failure(OpError::from_res(res)),
                (false, _) => Outcome::Corrupt(WRONG_LENGTH),
            };
        }
        if store {
            return Outcome::Ok;
        }
        match verify(rec, &self.layout) {
            Ok(()) => Outcome::Ok,
            Err(reason) => Outcome::Corrupt(reason),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Store
    // -----------------------------------------------------------------------------------------

    /// Renames the victim to a fresh temp name, then `statx`es it for its length (hard-linked,
    /// each step posting its CQE: a failed `renameat` does not break a soft link, see the
    /// module docs).
    fn reclaim_chain(&mut self, rec: &mut Idle<'_>) -> Result<(), Outcome> {
        rec.set_temp_path(tmpname::next_seq()).map_err(|_| Outcome::Failed(OpError::BadPath))?;
        let mut c = Chain::new();
        c.add(Step::Reclaim, Sqe::Rename { from: PathSel::Victim, to: PathSel::Temp }, Link::Hard, 0);
        c.add(Step::StatBefore, Sqe::Statx { path: PathSel::Temp, into: 0 }, Link::End, 0);
        self.chain = c;
        self.phase = Phase::Evict;
        Ok(())
    }

    /// The victim is under the temp name: overwrite it (truncated first unless it has the new
    /// block's length, so no byte of a longer victim outlives the store). Otherwise (gone, or
    /// the new block's directory does not exist yet) it is unlinked and the store creates a
    /// fresh file.
    fn reclaim_done(&mut self, rec: &mut Idle<'_>) -> Next {
        match rec.results[0] {
            0 => match self.store_chain(rec, true) {
                Ok(()) => Next::Chain,
                Err(o) => Next::Done(o),
            },
            // Most often the new block's directory does not exist yet (vLLM's layout gives
            // nearly every block a directory of its own): make it, then try once more.
            res if res == -libc::ENOENT && !self.made_dirs => {
                self.reclaiming = true;
                self.start_mkdirs(rec)
            }
            _ => {
                self.evict_unlink(PathSel::Victim);
                Next::Chain
            }
        }
    }

    /// Unlinks the victim (named `path`), then the store creates a fresh file.
    fn evict_unlink(&mut self, path: PathSel) {
        let mut c = Chain::new();
        c.add(Step::Unlink, Sqe::Unlink { path }, Link::End, 0);
        self.chain = c;
        self.phase = Phase::EvictUnlink;
    }

    /// The store chain up to its write and, with `fsync`, the sync (a failed `fsync` does not
    /// break a soft link, so it ends the chain and [`Flow::publish_chain`] follows); otherwise
    /// through `close` and `renameat`. `reclaimed`: the temp file is a reclaimed victim, opened
    /// for overwriting instead of created.
    fn store_chain(&mut self, rec: &mut Idle<'_>, reclaimed: bool) -> Result<(), Outcome> {
        let l = self.layout;
        let mut c = Chain::new();
        self.reclaimed = reclaimed;
        let flags = if reclaimed {
            let same_length = rec.results[1] == 0 && rec.statx(0).size == l.block.file_len();
            libc::O_WRONLY | l.direct | if same_length { 0 } else { libc::O_TRUNC }
        } else {
            rec.set_temp_path(tmpname::next_seq()).map_err(|_| Outcome::Failed(OpError::BadPath))?;
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | l.direct
        };
        c.add(Step::Open, Sqe::Open { path: PathSel::Temp, flags, mode: rec.op.mode.file() }, Link::Soft, 0);
        if let Some((step, sqe, want)) = write_step(&l, FileSel::Own, 0) {
            c.add(step, sqe, Link::Soft, want);
        }
        if rec.op.sync {
            c.add(Step::Sync, Sqe::DataSync { file: FileSel::Own }, Link::End, 0);
            self.publish_next = true;
        } else {
            c.add(Step::Close, Sqe::Close, Link::Soft, 0);
            c.add(Step::Rename, Sqe::Rename { from: PathSel::Temp, to: PathSel::Final }, Link::End, 0);
        }
        // Soft links all along: one CQE tells how the whole chain went.
        c.one_cqe = true;
        self.chain = c;
        self.phase = Phase::Store;
        Ok(())
    }

    /// After a successful `fsync`: `close` -> `renameat`.
    fn publish_chain(&mut self) -> Next {
        self.publish_next = false;
        let mut c = Chain::new();
        c.add(Step::Close, Sqe::Close, Link::Soft, 0);
        c.add(Step::Rename, Sqe::Rename { from: PathSel::Temp, to: PathSel::Final }, Link::End, 0);
        c.one_cqe = true;
        self.chain = c;
        Next::Chain
    }

    fn restart_store(&mut self, rec: &mut Idle<'_>) -> Next {
        match self.store_chain(rec, false) {
            Ok(()) => Next::Chain,
            Err(o) => Next::Done(o),
        }
    }

    fn store_done(&mut self, rec: &mut Idle<'_>) -> Next {
        let (c, r) = (self.chain, *rec.results);
        let Some(k) = (0..c.len).find(|&k| !c.ok(&r, k)) else {
            return match (self.publish_next, rec.op.sync) {
                (true, _) => self.publish_chain(),
                (false, true) => self.start_dir_syncs(rec),
                (false, false) => Next::Done(Outcome::Ok),
            };
        };
        self.publish_next = false;
        let err = if r[k] < 0 { OpError::from_res(r[k]) } else { OpError::Short };
        if c.steps[k] == Step::Open && self.reclaimed {
            // The reclaimed victim could not be opened: it goes, and a fresh file is created.
            self.reclaimed = false;
            self.evict_unlink(PathSel::Temp);
            return Next::Chain;
        }
        if c.steps[k] == Step::Open {
            return match err.raw_os_error() {
                // Parent directories are created on first need only, so a store into an
                // existing directory costs no mkdir.
                Some(libc::ENOENT) if !self.made_dirs => self.start_mkdirs(rec),
                Some(libc::EEXIST) if self.attempts + 1 < TEMP_ATTEMPTS => {
                    self.attempts += 1;
                    self.restart_store(rec)
                }
                // `openat` may create the file before refusing O_DIRECT.
                Some(libc::EINVAL) => self.cleanup(Outcome::store_failure(err), false, PathSel::Temp),
                _ => Next::Done(Outcome::store_failure(err)),
            };
        }
        let closed = c.at(Step::Close).is_some_and(|i| c.ok(&r, i));
        // A failed step cancels every later one, so the rename cannot have run; should a
        // kernel ever let it, the torn file it published is what gets removed.
        let published = c.at(Step::Rename).is_some_and(|i| c.ok(&r, i));
        self.cleanup(Outcome::store_failure(err), !closed, if published { PathSel::Final } else { PathSel::Temp })
    }

    /// The block is published: with `sync`, its name is made durable too (`fsync` of the
    /// directory holding it, and of the parent of each directory the store created; a rename
    /// is only as durable as its directory, and `fdatasync` of the file does not sync it).
    fn start_dir_syncs(&mut self, rec: &mut Idle<'_>) -> Next {
        let mut dirs: Vec<PathBuf> = self.created.iter().filter_map(|d| d.parent()).map(PathBuf::from).collect();
        dirs.extend(rec.op.target.path().and_then(|p| p.parent()).map(PathBuf::from));
        self.created = dirs;
        self.dir_sync_next(rec)
    }

    /// `openat(dir, O_RDONLY|O_DIRECTORY)` into the record's slot -> `fsync` -> `close` of the
    /// next directory to sync (the `close` hard-linked: it runs whatever the `fsync` did).
    fn dir_sync_next(&mut self, rec: &mut Idle<'_>) -> Next {
        let Some(dir) = self.created.last() else { return Next::Done(Outcome::Ok) };
        if rec.set_path(PathSel::Dir, &[dir.as_os_str().as_bytes()]).is_err() {
            return Next::Done(Outcome::Failed(OpError::BadPath));
        }
        let mut c = Chain::new();
        let flags = libc::O_RDONLY | libc::O_DIRECTORY;
        c.add(Step::DirOpen, Sqe::Open { path: PathSel::Dir, flags, mode: 0 }, Link::Soft, 0);
        c.add(Step::Sync, Sqe::Sync { file: FileSel::Own }, Link::Hard, 0);
        c.add(Step::Close, Sqe::Close, Link::End, 0);
        self.chain = c;
        self.phase = Phase::DirSync;
        Next::Chain
    }

    fn dir_sync_done(&mut self, rec: &mut Idle<'_>) -> Next {
        let r = rec.results;
        if let Some(&res) = r[..2].iter().find(|&&res| res < 0) {
            // Published but not durable: it goes, so the caller is never told a block is
            // stored that a power cut could take away.
            return self.cleanup(Outcome::store_failure(OpError::from_res(res)), false, PathSel::Final);
        }
        self.created.pop();
        self.dir_sync_next(rec)
    }

    fn cleanup(&mut self, failure: Outcome, close: bool, remove: PathSel) -> Next {
        self.failure = Some(failure);
        let mut c = Chain::new();
        if close {
            c.add(Step::Close, Sqe::Close, Link::Hard, 0);
        }
        c.add(Step::Unlink, Sqe::Unlink { path: remove }, Link::End, 0);
        self.chain = c;
        self.phase = Phase::Cleanup;
        Next::Chain
    }

    fn start_mkdirs(&mut self, rec: &mut Idle<'_>) -> Next {
        self.made_dirs = true;
        let parent = rec.op.target.path().and_then(|p| p.parent()).filter(|p| !p.as_os_str().is_empty());
        let Some(parent) = parent.map(PathBuf::from) else {
            return Next::Done(Outcome::store_failure(OpError::Os(libc::ENOENT)));
        };
        self.dirs.clear();
        self.dirs.push(parent);
        self.mkdir_next(rec)
    }

    fn mkdir_next(&mut self, rec: &mut Idle<'_>) -> Next {
        let dir = self.dirs.last().expect("a directory to create");
        if rec.set_path(PathSel::Dir, &[dir.as_os_str().as_bytes()]).is_err() {
            return Next::Done(Outcome::Failed(OpError::BadPath));
        }
        let mut c = Chain::new();
        c.add(Step::Mkdir, Sqe::Mkdir { path: PathSel::Dir, mode: rec.op.mode.dir() }, Link::End, 0);
        self.chain = c;
        self.phase = Phase::Mkdir;
        Next::Chain
    }

    fn mkdir_done(&mut self, rec: &mut Idle<'_>) -> Next {
        let res = rec.results[0];
        if res == 0 || res == -libc::EEXIST {
            let made = self.dirs.pop();
            if res == 0 {
                self.created.extend(made);
            }
            if !self.dirs.is_empty() {
                return self.mkdir_next(rec);
            }
            if std::mem::take(&mut self.reclaiming) {
                return match self.reclaim_chain(rec) {
                    Ok(()) => Next::Chain,
                    Err(o) => Next::Done(o),
                };
            }
            return self.restart_store(rec);
        }
        if res == -libc::ENOENT && self.dirs.len() < MAX_NEW_DIRS {
            let up = self.dirs.last().and_then(|d| d.parent()).filter(|p| !p.as_os_str().is_empty()).map(PathBuf::from);
            if let Some(up) = up {
                self.dirs.push(up);
                return self.mkdir_next(rec);
            }
        }
        if std::mem::take(&mut self.reclaiming) {
            // The victim leaves the namespace all the same.
            return self.cleanup(Outcome::store_failure(OpError::from_res(res)), false, PathSel::Victim);
        }
        Next::Done(Outcome::store_failure(OpError::from_res(res)))
    }

    // -----------------------------------------------------------------------------------------
    // Load
    // -----------------------------------------------------------------------------------------

    fn load_chain(&mut self, recheck: bool) {
        let l = self.layout;
        let mut c = Chain::new();
        if recheck {
            c.add(Step::StatBefore, Sqe::Statx { path: PathSel::Final, into: 0 }, Link::Soft, 0);
        }
        c.add(Step::Open, Sqe::Open { path: PathSel::Final, flags: libc::O_RDONLY | l.direct, mode: 0 }, Link::Soft, 0);
        let (own, mut at) = (FileSel::Own, 0u64);
        if l.block.native() {
            let buf = Buf::Scratch { page: 0, len: PAGE as u32 };
            c.add(Step::Header, Sqe::Read { file: own, buf, offset: 0 }, Link::Hard, PAGE as u32);
            at = PAGE as u64;
        }
        if l.row_len > 0 {
            let buf = Buf::Row { len: l.row_len };
            c.add(Step::Row, Sqe::Read { file: own, buf, offset: at }, Link::Hard, l.row_len);
        }
        let probe = Buf::Scratch { page: 1, len: PAGE as u32 };
        c.add(Step::Probe, Sqe::Read { file: own, buf: probe, offset: l.block.file_len() }, Link::Hard, 0);
        c.add(Step::Close, Sqe::Close, if recheck { Link::Hard } else { Link::End }, 0);
        if recheck {
            c.add(Step::StatAfter, Sqe::Statx { path: PathSel::Final, into: 1 }, Link::End, 0);
        }
        self.chain = c;
        self.phase = if recheck { Phase::Recheck } else { Phase::Load };
    }

    /// What a load chain (or the reading part of a recheck chain) found.
    fn verdict(&self, rec: &Idle<'_>) -> Outcome {
        let (c, r, l) = (&self.chain, rec.results, &self.layout);
        let Some(open) = c.at(Step::Open) else { return invalid() };
        if r[open] < 0 {
            return if r[open] == -libc::ENOENT {
                Outcome::NotFound
            } else {
                Outcome::load_open_failure(OpError::from_res(r[open]))
            };
        }
        let mut got = 0u64;
        let mut beyond = 0;
        for (k, step) in c.steps[..c.len].iter().enumerate() {
            if matches!(step, Step::Header | Step::Row | Step::Probe) {
                if r[k] < 0 {
                    return Outcome::load_read_failure(OpError::from_res(r[k]));
                }
                if *step == Step::Probe {
                    beyond = r[k];
                } else {
                    got += r[k] as u64;
                }
            }
        }
        if got != l.block.file_len() || beyond != 0 {
            return Outcome::Corrupt(WRONG_LENGTH);
        }
        match verify(rec, l) {
            Ok(()) => Outcome::Ok,
            Err(reason) => Outcome::Corrupt(reason),
        }
    }

    fn recheck_done(&mut self, rec: &mut Idle<'_>) -> Next {
        let (c, r) = (self.chain, *rec.results);
        let (Some(before), Some(after)) = (c.at(Step::StatBefore), c.at(Step::StatAfter)) else {
            return Next::Done(invalid());
        };
        if r[before] < 0 {
            // Gone (or unreachable) already: nothing left to remove.
            return Next::Done(Outcome::Corrupt(self.reason));
        }
        match self.verdict(rec) {
            // Replaced by a good block since the first reading: the row holds it, verified.
            Outcome::Ok => Next::Done(Outcome::Ok),
            Outcome::Corrupt(reason) => {
                self.reason = reason;
                if r[after] == 0 && rec.statx(0).same_file(&rec.statx(1)) {
                    // Set aside first, then looked at: no rename can slip between the check
                    // and the removal.
                    if rec.set_temp_path(tmpname::next_seq()).is_err() {
                        return Next::Done(Outcome::Corrupt(reason));
                    }
                    let mut c = Chain::new();
                    c.add(Step::Aside, Sqe::Rename { from: PathSel::Final, to: PathSel::Temp }, Link::Hard, 0);
                    c.add(Step::StatAfter, Sqe::Statx { path: PathSel::Temp, into: 1 }, Link::End, 0);
                    self.chain = c;
                    self.phase = Phase::Aside;
                    Next::Chain
                } else {
                    Next::Done(Outcome::Corrupt(reason))
                }
            }
            // The second reading failed: the first one's verdict stands, the file is kept.
            _ => Next::Done(Outcome::Corrupt(self.reason)),
        }
    }

    /// The file at the block's path is set aside (or gone): removed if it is the one read,
    /// otherwise linked back (a link fails rather than replace a file published meanwhile,
    /// which is newer) and its temp name removed.
    fn aside_done(&mut self, rec: &mut Idle<'_>) -> Next {
        if rec.results[0] != 0 {
            // Gone already, or it cannot be moved: nothing is removed.
            return Next::Done(Outcome::Corrupt(self.reason));
        }
        let mut c = Chain::new();
        if rec.results[1] != 0 || !rec.statx(1).same_file(&rec.statx(0)) {
            c.add(Step::Restore, Sqe::Link { from: PathSel::Temp, to: PathSel::Final }, Link::Hard, 0);
        }
        c.add(Step::Unlink, Sqe::Unlink { path: PathSel::Temp }, Link::End, 0);
        self.chain = c;
        self.phase = Phase::Unlink;
        Next::Chain
    }
}

/// An op's layout: the block's geometry ([`BlockLayout`]), and how much of the row each
/// transfer moves (a load reads the padded payload straight into the row).
fn layout(rec: &Idle<'_>, o_direct: bool) -> Result<Layout, Outcome> {
    let block = BlockLayout::new(&rec.op.format, rec.row_bytes, rec.row.len()).map_err(Outcome::Failed)?;
    transfer_len(block.header + block.payload)?;
    Ok(Layout {
        block,
        row_len: transfer_len(block.payload)?,
        tail_len: 0,
        direct: open_flag(o_direct, block.direct_ok(rec.row, 0)),
        extent: None,
    })
}

/// A store's payload: a native store encodes its header into scratch page 0 and, when the
/// row's bytes past the block are not zero (the read lease does not allow clearing them),
/// copies its last partial page, zero padded, into scratch page 1.
fn store_payload(rec: &mut Idle<'_>, l: &mut Layout) {
    let BlockFormat::Native { namespace, key } = &rec.op.format else { return };
    let (row, block) = (rec.row, l.block);
    let header: &mut [u8; HEADER_LEN] =
        (&mut rec.scratch[..HEADER_LEN]).try_into().expect("scratch page 0 is HEADER_LEN bytes");
    format::encode_header(namespace, key, &row[..block.block], header);
    let (from_row, tail) = block.store_split(row);
    if tail > 0 {
        block.fill_tail(row, from_row, &mut rec.scratch[PAGE..2 * PAGE]);
    }
    // Both fit one transfer: `layout` checked the whole payload does.
    (l.row_len, l.tail_len) = (from_row as u32, tail as u32);
}

/// The write of a store at `offset` of `file`: one `writev` of header, row and padded last page
/// for a native block (`write_fixed` would need one I/O per buffer, each extending a new file:
/// an allocation each), one `write_fixed` of the row for a vLLM block. `None` for an empty
/// block.
fn write_step(l: &Layout, file: FileSel, offset: u64) -> Option<(Step, Sqe, u32)> {
    if l.block.native() {
        let mut bufs = [Buf::Scratch { page: 0, len: PAGE as u32 }; MAX_IOV];
        let mut n = 1;
        for (len, buf) in
            [(l.row_len, Buf::Row { len: l.row_len }), (l.tail_len, Buf::Scratch { page: 1, len: l.tail_len })]
        {
            if len > 0 {
                bufs[n] = buf;
                n += 1;
            }
        }
        let total = PAGE as u32 + l.row_len + l.tail_len;
        Some((Step::Row, Sqe::Writev { file, bufs, n: n as u8, offset }, total))
    } else if l.row_len > 0 {
        Some((Step::Row, Sqe::Write { file, buf: Buf::Row { len: l.row_len }, offset }, l.row_len))
    } else {
        None
    }
}

/// Checks a loaded native block's header (in scratch page 0) against the op's namespace, key
/// and the payload in the row (a vLLM block has nothing to check); `Err` is the reason.
fn verify(rec: &Idle<'_>, l: &Layout) -> Result<(), &'static str> {
    let BlockFormat::Native { namespace, key } = &rec.op.format else { return Ok(()) };
    format::decode_header(&rec.scratch[..HEADER_LEN])
        .and_then(|h| h.check(namespace, key, &rec.row[..l.block.block]))
        .map_err(|e| e.reason())
}

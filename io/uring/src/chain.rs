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
//! (checked by `ring::link_semantics`). Then:
//! - `ENOENT` from the temp `openat`: the parent directories are created, one `mkdirat` per
//!   chain, walking up until one exists and back down (once per op), and the chain is
//!   resubmitted under a fresh temp name;
//! - `EEXIST` (only a stale temp file of a crashed process that had this pid): a fresh temp
//!   name, up to 8 tries;
//! - any other failure: a cleanup chain, `close` of the descriptor if it was left open
//!   (hard-linked so the next step runs anyway) and `unlinkat` of the temp file, then the
//!   failure is reported. Errors map as in the threaded executor ([`crate::outcome`]).
//!
//! A store that evicts a block ([`kvtier_fs::Evict`]) runs one step first. Reusing the
//! victim's file: `renameat(victim, temp)` alone (see above), then the store chain opening the
//! temp file `O_WRONLY[|O_DIRECT]` to overwrite it in place. A rename that finds no new
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
//! device and inode and the second reading is corrupt too, it is unlinked. If the second
//! reading verifies (a writer replaced the file meanwhile), the row now holds a good block and
//! the load succeeds; if the path changed, nothing is removed. This costs a second read of
//! corrupt files only.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use kvtier_fs::format::{self, HEADER_LEN};
use kvtier_fs::{tmpname, BlockFormat, OpKind, Outcome};

use crate::outcome::{load_open_failure, load_read_failure, os_error, short, store_failure};
use crate::ring::{Buf, Idle, Link, PathSel, Sqe, MAX_IOV, MAX_STEPS, MAX_TRANSFER, PAGE, SKIPPED};

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
        let res = results[k];
        res == SKIPPED || (res >= 0 && (self.want[k] == 0 || res as u32 == self.want[k]))
    }
}

/// Where an op's bytes go, worked out once when it starts.
#[derive(Debug, Clone, Copy)]
struct Layout {
    native: bool,
    row_bytes: usize,
    /// Bytes written from (store) or read into (load) the row.
    row_len: u32,
    /// Store: bytes of the zero-padded last page written from scratch page 1 (0: none).
    tail_len: u32,
    /// The file's length.
    expected: u64,
    /// `O_DIRECT` or 0.
    direct: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Evict,
    EvictUnlink,
    Store,
    Mkdir,
    Cleanup,
    Load,
    Recheck,
    Unlink,
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
    /// What a store's cleanup chain reports.
    failure: Option<Outcome>,
    /// A load's corruption reason.
    reason: &'static str,
}

fn invalid(what: &'static str) -> Outcome {
    Outcome::Failed(io::Error::new(io::ErrorKind::InvalidInput, what))
}

/// The native format's padded payload length for a `row_bytes` block, if it fits the stride
/// (it does for every region: both round up to 4096).
fn padded_len(row_bytes: usize, stride: usize) -> Option<usize> {
    usize::try_from(format::padded_payload_len(row_bytes as u64)).ok().filter(|&p| p <= stride)
}

fn transfer_len(n: usize) -> Result<u32, Outcome> {
    if n > MAX_TRANSFER {
        return Err(invalid("a row longer than 2 GiB - 4 KiB cannot be moved in one transfer"));
    }
    Ok(n as u32)
}

fn direct_flag(o_direct: bool, aligned: bool) -> i32 {
    if o_direct && aligned {
        libc::O_DIRECT
    } else {
        0
    }
}

const STRIDE_TOO_SHORT: &str = "the native padded payload is longer than the row stride";

impl Flow {
    /// Starts `rec`'s op: works out its layout (a store encodes its header, and bounces its
    /// last page if need be, into the scratch pages) and its first chain. `Err` is the op's
    /// outcome when it cannot start.
    pub fn start(rec: &mut Idle<'_>, o_direct: bool) -> Result<Flow, Outcome> {
        let store = rec.op.kind == OpKind::Store;
        let layout = if store { store_layout(rec, o_direct)? } else { load_layout(rec, o_direct)? };
        rec.set_path(PathSel::Final, &[rec.op.path.as_os_str().as_bytes()]).map_err(Outcome::Failed)?;
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
            failure: None,
            reason: "",
        };
        if let (true, Some(evict)) = (store, &rec.op.evict) {
            let (victim, reuse) = (evict.path.as_os_str().as_bytes(), evict.reuse);
            rec.set_path(PathSel::Victim, &[victim]).map_err(Outcome::Failed)?;
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
    pub fn abort(&mut self, e: io::Error) -> Outcome {
        self.failure.take().unwrap_or(Outcome::Failed(e))
    }

    /// `rec`'s chain finished: its outcome, or the next chain.
    pub fn advance(&mut self, rec: &mut Idle<'_>) -> Next {
        match self.phase {
            Phase::Evict => self.reclaim_done(rec),
            Phase::EvictUnlink => self.restart_store(rec),
            Phase::Store => self.store_done(rec),
            Phase::Mkdir => self.mkdir_done(rec),
            Phase::Cleanup => Next::Done(self.failure.take().unwrap_or_else(|| invalid("store failed"))),
            Phase::Load => match self.verdict(rec) {
                Outcome::Corrupt(reason) => {
                    self.reason = reason;
                    self.load_chain(true);
                    Next::Chain
                }
                o => Next::Done(o),
            },
            Phase::Recheck => self.recheck_done(rec),
            Phase::Unlink => Next::Done(Outcome::Corrupt(self.reason)),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Store
    // -----------------------------------------------------------------------------------------

    /// Renames the victim to a fresh temp name. A chain of its own: a failed `renameat` does
    /// not break a soft link (see the module docs).
    fn reclaim_chain(&mut self, rec: &mut Idle<'_>) -> Result<(), Outcome> {
        rec.set_temp_path(tmpname::next_seq()).map_err(Outcome::Failed)?;
        let mut c = Chain::new();
        c.add(Step::Reclaim, Sqe::Rename { from: PathSel::Victim, to: PathSel::Temp }, Link::End, 0);
        self.chain = c;
        self.phase = Phase::Evict;
        Ok(())
    }

    /// The victim is under the temp name: overwrite it. Otherwise (gone, or the new block's
    /// directory does not exist yet) it is unlinked and the store creates a fresh file.
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
            libc::O_WRONLY | l.direct
        } else {
            rec.set_temp_path(tmpname::next_seq()).map_err(Outcome::Failed)?;
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | l.direct
        };
        c.add(Step::Open, Sqe::Open { path: PathSel::Temp, flags, mode: 0o644 }, Link::Soft, 0);
        if l.native {
            // One vectored write: header, row, padded last page. `write_fixed` would need one
            // I/O per buffer, each extending the new file (an allocation each).
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
            c.add(Step::Row, Sqe::Writev { bufs, n: n as u8, offset: 0 }, Link::Soft, total);
        } else if l.row_len > 0 {
            c.add(Step::Row, Sqe::Write { buf: Buf::Row { len: l.row_len }, offset: 0 }, Link::Soft, l.row_len);
        }
        if rec.op.sync {
            c.add(Step::Sync, Sqe::DataSync, Link::End, 0);
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
            return if self.publish_next { self.publish_chain() } else { Next::Done(Outcome::Ok) };
        };
        self.publish_next = false;
        let err = if r[k] < 0 { os_error(r[k]) } else { short("write", r[k], c.want[k]) };
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
                Some(libc::EINVAL) => self.cleanup(store_failure(err), false, PathSel::Temp),
                _ => Next::Done(store_failure(err)),
            };
        }
        let closed = c.at(Step::Close).is_some_and(|i| c.ok(&r, i));
        // A failed step cancels every later one, so the rename cannot have run; should a
        // kernel ever let it, the torn file it published is what gets removed.
        let published = c.at(Step::Rename).is_some_and(|i| c.ok(&r, i));
        self.cleanup(store_failure(err), !closed, if published { PathSel::Final } else { PathSel::Temp })
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
        let parent = rec.op.path.parent().filter(|p| !p.as_os_str().is_empty()).map(PathBuf::from);
        let Some(parent) = parent else {
            return Next::Done(store_failure(io::Error::from_raw_os_error(libc::ENOENT)));
        };
        self.dirs.clear();
        self.dirs.push(parent);
        self.mkdir_next(rec)
    }

    fn mkdir_next(&mut self, rec: &mut Idle<'_>) -> Next {
        let dir = self.dirs.last().expect("a directory to create");
        if let Err(e) = rec.set_path(PathSel::Dir, &[dir.as_os_str().as_bytes()]) {
            return Next::Done(Outcome::Failed(e));
        }
        let mut c = Chain::new();
        c.add(Step::Mkdir, Sqe::Mkdir { path: PathSel::Dir }, Link::End, 0);
        self.chain = c;
        self.phase = Phase::Mkdir;
        Next::Chain
    }

    fn mkdir_done(&mut self, rec: &mut Idle<'_>) -> Next {
        let res = rec.results[0];
        if res == 0 || res == -libc::EEXIST {
            self.dirs.pop();
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
            return self.cleanup(store_failure(os_error(res)), false, PathSel::Victim);
        }
        Next::Done(store_failure(os_error(res)))
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
        let mut at = 0u64;
        if l.native {
            let buf = Buf::Scratch { page: 0, len: PAGE as u32 };
            c.add(Step::Header, Sqe::Read { buf, offset: 0 }, Link::Hard, PAGE as u32);
            at = PAGE as u64;
        }
        if l.row_len > 0 {
            c.add(Step::Row, Sqe::Read { buf: Buf::Row { len: l.row_len }, offset: at }, Link::Hard, l.row_len);
        }
        let probe = Buf::Scratch { page: 1, len: PAGE as u32 };
        c.add(Step::Probe, Sqe::Read { buf: probe, offset: l.expected }, Link::Hard, 0);
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
        let Some(open) = c.at(Step::Open) else { return invalid("a load chain without openat") };
        if r[open] < 0 {
            return if r[open] == -libc::ENOENT { Outcome::NotFound } else { load_open_failure(os_error(r[open])) };
        }
        let mut got = 0u64;
        let mut beyond = 0;
        for (k, step) in c.steps[..c.len].iter().enumerate() {
            if matches!(step, Step::Header | Step::Row | Step::Probe) {
                if r[k] < 0 {
                    return load_read_failure(os_error(r[k]));
                }
                if *step == Step::Probe {
                    beyond = r[k];
                } else {
                    got += r[k] as u64;
                }
            }
        }
        if got != l.expected || beyond != 0 {
            return Outcome::Corrupt("wrong length");
        }
        if let BlockFormat::Native { namespace, key } = &rec.op.format {
            let verified = format::decode_header(&rec.scratch[..HEADER_LEN])
                .and_then(|h| h.check(namespace, key, &rec.row[..l.row_bytes]));
            if let Err(e) = verified {
                return Outcome::Corrupt(e.reason());
            }
        }
        Outcome::Ok
    }

    fn recheck_done(&mut self, rec: &mut Idle<'_>) -> Next {
        let (c, r) = (self.chain, *rec.results);
        let (Some(before), Some(after)) = (c.at(Step::StatBefore), c.at(Step::StatAfter)) else {
            return Next::Done(invalid("a recheck chain without statx"));
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
                if r[after] == 0 && rec.statx(0) == rec.statx(1) {
                    let mut c = Chain::new();
                    c.add(Step::Unlink, Sqe::Unlink { path: PathSel::Final }, Link::End, 0);
                    self.chain = c;
                    self.phase = Phase::Unlink;
                    Next::Chain
                } else {
                    Next::Done(Outcome::Corrupt(reason))
                }
            }
            // The second reading failed: the first one's verdict stands, the file is kept.
            _ => Next::Done(Outcome::Corrupt(self.reason)),
        }
    }
}

/// A store's layout. A native store encodes its header into scratch page 0 and, when the row's
/// tail past `row_bytes` is not zero (the read lease does not allow clearing it), copies its
/// last partial page, zero padded, into scratch page 1.
fn store_layout(rec: &mut Idle<'_>, o_direct: bool) -> Result<Layout, Outcome> {
    let (row, row_bytes) = (rec.row, rec.row_bytes);
    match &rec.op.format {
        BlockFormat::Vllm => Ok(Layout {
            native: false,
            row_bytes,
            row_len: transfer_len(row_bytes)?,
            tail_len: 0,
            expected: row_bytes as u64,
            direct: direct_flag(o_direct, row_bytes % PAGE == 0),
        }),
        BlockFormat::Native { namespace, key } => {
            let padded = padded_len(row_bytes, row.len()).ok_or_else(|| invalid(STRIDE_TOO_SHORT))?;
            let header: &mut [u8; HEADER_LEN] =
                (&mut rec.scratch[..HEADER_LEN]).try_into().expect("scratch page 0 is HEADER_LEN bytes");
            format::encode_header(namespace, key, &row[..row_bytes], header);
            let (row_len, tail_len) = if row[row_bytes..padded].iter().all(|&b| b == 0) {
                (padded, 0)
            } else {
                let full = row_bytes / PAGE * PAGE;
                let last = &mut rec.scratch[PAGE..PAGE + (padded - full)];
                last.fill(0);
                last[..row_bytes - full].copy_from_slice(&row[full..row_bytes]);
                (full, padded - full)
            };
            transfer_len(HEADER_LEN + padded)?;
            Ok(Layout {
                native: true,
                row_bytes,
                row_len: transfer_len(row_len)?,
                tail_len: tail_len as u32,
                expected: format::native_file_len(row_bytes as u64),
                direct: direct_flag(o_direct, padded % PAGE == 0),
            })
        }
    }
}

/// A load's layout: a native payload is read padded, straight into the row.
fn load_layout(rec: &Idle<'_>, o_direct: bool) -> Result<Layout, Outcome> {
    let row_bytes = rec.row_bytes;
    match rec.op.format {
        BlockFormat::Vllm => Ok(Layout {
            native: false,
            row_bytes,
            row_len: transfer_len(row_bytes)?,
            tail_len: 0,
            expected: row_bytes as u64,
            direct: direct_flag(o_direct, row_bytes % PAGE == 0),
        }),
        BlockFormat::Native { .. } => {
            let padded = padded_len(row_bytes, rec.row.len()).ok_or_else(|| invalid(STRIDE_TOO_SHORT))?;
            Ok(Layout {
                native: true,
                row_bytes,
                row_len: transfer_len(padded)?,
                tail_len: 0,
                expected: format::native_file_len(row_bytes as u64),
                direct: direct_flag(o_direct, padded % PAGE == 0),
            })
        }
    }
}

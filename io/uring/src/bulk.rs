//! Bulk records: batches ([`kvtier_fs::Batch`]) in the ring, and what each one's chains are.
//! No `unsafe`, no syscall: this module owns a batch's memory and builds its entries; the ring
//! (`crate::ring`) pushes them.
//!
//! The invariant is the records' (`crate::record`): **memory the kernel may touch belongs to a
//! bulk record until every CQE of every SQE that names it has been reaped.** A bulk record
//! owns the batch (its bytes, for a [`BatchData::Bytes`] batch), a read lease on every row it
//! writes, pages of its own (each block's native header and, where the row's tail is dirty,
//! its zero-padded last page; a copy's record) and its iovec tables. While its chain is in the
//! kernel it cannot be reached ([`BulkRecords::idle`]) or released ([`BulkRecords::finish`]).
//!
//! **Chains** (each posts one CQE: soft links, `IOSQE_CQE_SKIP_SUCCESS` but on the last step):
//! - blocks: `writev` of every block's header page, its payload straight from its row and its
//!   bounced last page, in order, split into steps of at most 1024 buffers (`IOV_MAX`) and
//!   [`MAX_TRANSFER`] bytes at consecutive offsets, then `fsync(DATASYNC)` with `sync`;
//! - bytes: `write` of the batch's bytes (through the buffered descriptor: they are not
//!   aligned), then `fsync`;
//! - copy: `read` of the record into the pages; verified in userspace as a load is, its
//!   header rewritten with the new sequence number; then a second chain, `write` + `fsync`.
//!
//! The registered file's `O_DIRECT` slot serves a transfer whose offset, lengths and addresses
//! are all 4096-aligned, the buffered one the rest. Rows are written with plain `writev` (their
//! pages pinned per I/O): `WRITEV_FIXED` takes every buffer from one registered buffer, and a
//! batch's header pages and rows are never in one.

use std::io;
use std::sync::Arc;

use io_uring::opcode;
use io_uring::squeue::{self, Flags};
use io_uring::types::{self, FsyncFlags};
use kvtier_core::{Part, SlotId};
use kvtier_fs::direct::DIRECT_ALIGN;
use kvtier_fs::format::{self, HEADER_LEN};
use kvtier_fs::outcome::WRONG_LENGTH;
use kvtier_fs::region::{Access, Lease, PrimaryRegion};
use kvtier_fs::{Batch, BatchData, BlockLayout, OpError, Outcome};

use crate::chain::FileSlots;
use crate::record::Track;
use crate::sqe::{user_data, MAX_STEPS, MAX_TRANSFER};

/// Most buffers one `readv`/`writev` takes (Linux's `UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

/// A bulk record, as handed out by [`BulkRecords::start`]. Stale ids are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkId {
    pub(crate) index: u32,
    pub(crate) gen: u32,
}

/// Where a batch is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Its write (blocks, bytes, a copy's second chain).
    Write,
    /// A copy's read.
    CopyRead,
}

/// A batch running in a bulk record. The leases are declared first: dropped before the parts.
pub(crate) struct BulkActive {
    pub leases: Vec<Lease>,
    pub parts: Vec<Part>,
    pub batch: Batch,
    phase: Phase,
}

/// One step of a bulk chain.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// `writev` of `iovecs[start..start + n]` at `offset`.
    Writev { start: usize, n: usize, offset: u64, direct: bool },
    /// `write` of the batch's bytes at `offset`.
    WriteBytes { offset: u64 },
    /// `write` of the pages' first `len` bytes at `offset`.
    WritePages { len: usize, offset: u64, direct: bool },
    /// `read` of `len` bytes at `offset` into the pages.
    ReadPages { len: usize, offset: u64, direct: bool },
    /// `fsync(DATASYNC)` (of the descriptor the transfers used).
    Sync { direct: bool },
}

/// A chain being worked out.
#[derive(Default)]
struct Steps {
    steps: [Option<Step>; MAX_STEPS],
    n: usize,
}

impl Steps {
    fn push(&mut self, step: Step) {
        self.steps[self.n] = Some(step);
        self.n += 1;
    }
}

/// One bulk record: everything the kernel may touch for one batch.
pub(crate) struct BulkRecord {
    /// Changes when the record is released: a stale [`BulkId`] is refused.
    pub gen: u32,
    pub track: Track,
    pub active: Option<BulkActive>,
    /// Its pages (a write lease on the one row of a mapping of its own), grown to the largest
    /// batch it ran.
    pages: Option<Lease>,
    /// The iovec tables of its writes, as `[address, length]` pairs (a `struct iovec`).
    iovecs: Vec<[usize; 2]>,
    steps: [Option<Step>; MAX_STEPS],
    n_steps: usize,
}

/// The ring's bulk records and their free list.
pub(crate) struct BulkRecords {
    pub slots: Vec<BulkRecord>,
    free: Vec<u32>,
}

/// A chain ready to push: its entries and the bytes each transfer must move.
pub struct BuiltBulk {
    /// The entries, with their links and user data.
    pub entries: Vec<squeue::Entry>,
    /// Bytes each step transfers (0: not a transfer).
    pub want: [u32; MAX_STEPS],
}

fn geometry() -> Outcome {
    Outcome::Failed(OpError::Geometry)
}

/// `buf`, grown to at least `len` bytes of 4096-aligned pages.
fn pages(buf: &mut Option<Lease>, len: usize) -> io::Result<&mut Lease> {
    if buf.as_ref().is_none_or(|l| l.as_slice().len() < len) {
        *buf = None;
        let region = Arc::new(PrimaryRegion::anonymous(1, len.max(DIRECT_ALIGN).next_multiple_of(DIRECT_ALIGN))?);
        *buf = Some(region.lease(SlotId(0), Access::Write).map_err(io::Error::other)?);
    }
    Ok(buf.as_mut().expect("just made"))
}

fn aligned(x: usize) -> bool {
    x % DIRECT_ALIGN == 0
}

impl BulkRecords {
    /// `n` idle bulk records.
    pub fn new(n: usize) -> BulkRecords {
        let slots = (0..n)
            .map(|_| BulkRecord {
                gen: 0,
                track: Track::IDLE,
                active: None,
                pages: None,
                iovecs: Vec::new(),
                steps: [None; MAX_STEPS],
                n_steps: 0,
            })
            .collect();
        BulkRecords { slots, free: (0..n as u32).rev().collect() }
    }

    /// Bulk records running a batch.
    pub fn active(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Whether a bulk record is free.
    pub fn has_free(&self) -> bool {
        !self.free.is_empty()
    }

    /// Takes a free bulk record for `batch`, its rows' `leases` and its `parts`.
    ///
    /// # Panics
    ///
    /// If none is free (see [`BulkRecords::has_free`]).
    pub fn start(&mut self, batch: Batch, leases: Vec<Lease>, parts: Vec<Part>) -> BulkId {
        let index = self.free.pop().expect("a free bulk record (checked with has_free)");
        let rec = &mut self.slots[index as usize];
        debug_assert!(rec.active.is_none() && rec.track.pending == 0);
        let phase = if matches!(batch.data, BatchData::Copy { .. }) { Phase::CopyRead } else { Phase::Write };
        rec.active = Some(BulkActive { leases, parts, batch, phase });
        BulkId { index, gen: rec.gen }
    }

    /// Bulk record `id`, if it runs a batch and has nothing in the kernel.
    pub fn idle(&mut self, id: BulkId) -> Option<&mut BulkRecord> {
        self.slots.get_mut(id.index as usize).filter(|r| r.gen == id.gen && r.track.pending == 0 && r.active.is_some())
    }

    /// Releases an idle bulk record: gives back its leases and parts. `None` while it has SQEs
    /// in the kernel (or for a stale id).
    pub fn finish(&mut self, id: BulkId) -> Option<(Vec<Lease>, Vec<Part>)> {
        let rec = self.idle(id)?;
        let BulkActive { leases, parts, .. } = rec.active.take()?;
        rec.gen = rec.gen.wrapping_add(1);
        rec.iovecs.clear();
        rec.n_steps = 0;
        self.free.push(id.index);
        Some((leases, parts))
    }

    /// Every bulk record with SQEs in the kernel gives up its batch: its parts are returned,
    /// its leases and memory leaked (the kernel may still touch them).
    pub fn abandon(&mut self) -> Vec<Vec<Part>> {
        let mut out = Vec::new();
        for rec in &mut self.slots {
            if rec.track.pending > 0 {
                if let Some(BulkActive { leases, parts, batch, .. }) = rec.active.take() {
                    std::mem::forget(leases);
                    std::mem::forget(batch);
                    std::mem::forget(rec.pages.take());
                    std::mem::forget(std::mem::take(&mut rec.iovecs));
                    out.push(parts);
                }
            }
        }
        out
    }
}

impl BulkRecord {
    /// Works out the batch's next chain (its write, or a copy's read, then its write), filling
    /// the pages and the iovec tables. `Err` is the batch's outcome when it cannot run.
    pub fn start_chain(&mut self, o_direct: bool, row_bytes: usize, stride: usize) -> Result<(), Outcome> {
        let active = self.active.as_ref().ok_or(Outcome::Failed(OpError::Invalid))?;
        let mut chain = Steps::default();
        match (&active.batch.data, active.phase) {
            (BatchData::Blocks(blocks), _) => {
                let offset = active.batch.offset;
                let pages =
                    pages(&mut self.pages, 2 * blocks.len() * DIRECT_ALIGN).map_err(|e| Outcome::Failed(e.into()))?;
                let page_mem = pages.as_mut_slice().expect("a write lease");
                self.iovecs.clear();
                let mut all_aligned = aligned(offset as usize);
                for ((block, lease), two) in
                    blocks.iter().zip(&active.leases).zip(page_mem.chunks_exact_mut(2 * DIRECT_ALIGN))
                {
                    let row = lease.as_slice();
                    let layout =
                        BlockLayout::new(&block.format, lease.block().len(), row.len()).map_err(Outcome::Failed)?;
                    // The kernel gets the addresses: their provenance is exposed.
                    let page = two.as_ptr().expose_provenance();
                    let (header, tail) = two.split_at_mut(DIRECT_ALIGN);
                    let header: &mut [u8; HEADER_LEN] = header.try_into().expect("a page is HEADER_LEN bytes");
                    let (from_row, tail_len) = layout.encode_store(&block.format, block.seq, row, header, tail);
                    all_aligned &= layout.direct_ok(row, 0);
                    if layout.header > 0 {
                        self.iovecs.push([page, layout.header]);
                    }
                    if from_row > 0 {
                        self.iovecs.push([lease.as_ptr().expose_provenance(), from_row]);
                    }
                    if tail_len > 0 {
                        self.iovecs.push([page + DIRECT_ALIGN, tail_len]);
                    }
                }
                let direct = o_direct && all_aligned;
                let (mut at, mut start) = (offset, 0);
                while start < self.iovecs.len() {
                    let (mut n, mut bytes) = (0, 0usize);
                    while start + n < self.iovecs.len()
                        && n < IOV_MAX
                        && bytes + self.iovecs[start + n][1] <= MAX_TRANSFER
                    {
                        bytes += self.iovecs[start + n][1];
                        n += 1;
                    }
                    // Room for the sync step is kept.
                    if n == 0 || chain.n + 2 > MAX_STEPS {
                        return Err(geometry());
                    }
                    chain.push(Step::Writev { start, n, offset: at, direct });
                    start += n;
                    at += bytes as u64;
                }
                if chain.n == 0 {
                    return Err(Outcome::Failed(OpError::Invalid));
                }
                if active.batch.sync {
                    chain.push(Step::Sync { direct });
                }
            }
            (BatchData::Bytes(bytes), _) => {
                if bytes.is_empty() || bytes.len() > MAX_TRANSFER {
                    return Err(geometry());
                }
                chain.push(Step::WriteBytes { offset: active.batch.offset });
                if active.batch.sync {
                    chain.push(Step::Sync { direct: false });
                }
            }
            (BatchData::Copy { from, format, .. }, phase) => {
                let layout = BlockLayout::new(format, row_bytes, stride).map_err(Outcome::Failed)?;
                let len = layout.file_len() as usize;
                if len > MAX_TRANSFER {
                    return Err(geometry());
                }
                pages(&mut self.pages, len).map_err(|e| Outcome::Failed(e.into()))?;
                if phase == Phase::CopyRead {
                    let direct = o_direct && aligned(len) && aligned(*from as usize);
                    chain.push(Step::ReadPages { len, offset: *from, direct });
                } else {
                    let offset = active.batch.offset;
                    let direct = o_direct && aligned(len) && aligned(offset as usize);
                    chain.push(Step::WritePages { len, offset, direct });
                    if active.batch.sync {
                        chain.push(Step::Sync { direct });
                    }
                }
            }
        }
        (self.steps, self.n_steps) = (chain.steps, chain.n);
        Ok(())
    }

    /// The entries of the chain [`start_chain`](Self::start_chain) worked out, for bulk
    /// record `index` (its CQEs tagged `tag`), on the registered `file`.
    pub fn build(&self, file: FileSlots, index: u32, tag: u32) -> io::Result<BuiltBulk> {
        let active = self.active.as_ref().ok_or_else(|| io::Error::other("no batch in the bulk record"))?;
        let n = self.n_steps;
        let slot =
            |direct: bool| types::Fixed(if direct { file.direct.unwrap_or(file.buffered) } else { file.buffered });
        let pages = self.pages.as_ref().map(|p| p.as_ptr());
        let mut entries = Vec::with_capacity(n);
        let mut want = [0u32; MAX_STEPS];
        for (k, step) in self.steps[..n].iter().enumerate() {
            let step = step.ok_or_else(|| io::Error::other("a missing step"))?;
            let (entry, bytes) = match step {
                Step::Writev { start, n, offset, direct } => {
                    let table = &self.iovecs[start..start + n];
                    let bytes: usize = table.iter().map(|v| v[1]).sum();
                    let iov = table.as_ptr().cast::<libc::iovec>();
                    (opcode::Writev::new(slot(direct), iov, n as u32).offset(offset).build(), bytes)
                }
                Step::WriteBytes { offset } => {
                    let BatchData::Bytes(bytes) = &active.batch.data else {
                        return Err(io::Error::other("a bytes step of another batch"));
                    };
                    let len = bytes.len();
                    (opcode::Write::new(slot(false), bytes.as_ptr(), len as u32).offset(offset).build(), len)
                }
                Step::WritePages { len, offset, direct } => {
                    let ptr = pages.ok_or_else(|| io::Error::other("no pages"))?;
                    (opcode::Write::new(slot(direct), ptr.cast_const(), len as u32).offset(offset).build(), len)
                }
                Step::ReadPages { len, offset, direct } => {
                    let ptr = pages.ok_or_else(|| io::Error::other("no pages"))?;
                    (opcode::Read::new(slot(direct), ptr, len as u32).offset(offset).build(), len)
                }
                Step::Sync { direct } => (opcode::Fsync::new(slot(direct)).flags(FsyncFlags::DATASYNC).build(), 0),
            };
            let flags = if k + 1 == n { Flags::empty() } else { Flags::IO_LINK | Flags::SKIP_SUCCESS };
            entries.push(entry.flags(flags).user_data(user_data(tag, index, k)));
            want[k] = bytes as u32;
        }
        Ok(BuiltBulk { entries, want })
    }

    /// The chain in the kernel completed: the batch's outcome, or `None` when a copy's write
    /// chain comes next (call [`start_chain`](Self::start_chain) again).
    pub fn advance(&mut self, row_bytes: usize, stride: usize) -> Option<Outcome> {
        let active = self.active.as_mut()?;
        let failed = (0..self.n_steps).find(|&k| !self.track.ok(k));
        let reading = active.phase == Phase::CopyRead;
        if let Some(k) = failed {
            let res = self.track.results[k];
            return Some(match (reading, res < 0) {
                (true, true) => Outcome::load_read_failure(OpError::from_res(res)),
                (true, false) => Outcome::Corrupt(WRONG_LENGTH),
                (false, true) => Outcome::store_failure(OpError::from_res(res)),
                (false, false) => Outcome::store_failure(OpError::Short),
            });
        }
        if !reading {
            return Some(Outcome::Ok);
        }
        let BatchData::Copy { format, seq, .. } = &active.batch.data else {
            return Some(Outcome::Failed(OpError::Invalid));
        };
        let layout = match BlockLayout::new(format, row_bytes, stride) {
            Ok(l) => l,
            Err(e) => return Some(Outcome::Failed(e)),
        };
        let Some(mem) = self.pages.as_mut().and_then(|p| p.as_mut_slice()) else {
            return Some(Outcome::Failed(OpError::Invalid));
        };
        let (header, payload) = mem.split_at_mut(layout.header);
        if let Err(reason) = format.verify(header, &payload[..layout.block]) {
            return Some(Outcome::Corrupt(reason));
        }
        if let Ok(h) = format::decode_header(header) {
            let header: &mut [u8; HEADER_LEN] = header.try_into().expect("a native header is HEADER_LEN bytes");
            h.with_seq(*seq).encode(header);
        }
        active.phase = Phase::Write;
        None
    }
}

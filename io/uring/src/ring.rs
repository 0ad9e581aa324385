//! The kernel-facing half of the executor: the ring, its registered buffers and direct
//! descriptors, and the op records whose memory the kernel reads and writes. The one module of
//! this crate with `unsafe`.
//!
//! The invariant everything here rests on: **memory the kernel may touch belongs to a record
//! until every CQE of every SQE that names it has been reaped.** A record (one per op in the
//! ring) owns the op's row [`Lease`], its two scratch pages in the registered arena (the native
//! header, and an auxiliary page: a store's zero-padded last page, a load's end-of-file probe),
//! its NUL-terminated paths and its `statx` buffers. SQEs are built here and only here, from a
//! record's own buffers: a [`Sqe`] names a buffer ([`Buf`], [`PathSel`]), never a pointer. The
//! record counts the SQEs it has in the kernel; while that count is not zero its buffers cannot
//! be reached from safe code ([`Ring::idle`] answers `None`), it cannot be released
//! ([`Ring::finish`] answers `None`), and the ring's `Drop` waits for every outstanding CQE
//! (if the kernel stops answering, it leaks the records rather than free what may still be
//! written). The kernel may write a row only under a write lease: a read into a row held with
//! a read lease is refused when the SQE is built.
//!
//! Registered buffers: the primary region is registered as fixed buffers once, at start-up, in
//! chunks of whole rows of at most 1 GiB (the kernel's limit per buffer), and the scratch arena
//! as one more buffer. Registration pins the pages (so the whole region is faulted in at
//! start-up). Direct descriptors: one sparse fixed-file slot per record; record `i`'s chain
//! opens its file into slot `i`, so no descriptor is ever installed in the process's table.

use std::io::{self, Write as _};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::Duration;

use io_uring::squeue::{self, Flags};
use io_uring::types::{self, DestinationSlot, FsyncFlags};
use io_uring::{opcode, IoUring};
use kvtier_core::SlotId;
use kvtier_fs::format::HEADER_LEN;
use kvtier_fs::region::{Access, Lease, PrimaryRegion};
use kvtier_fs::tmpname::TEMP_SUFFIX;
use kvtier_fs::FileOp;

use crate::probe;

/// Most steps (SQEs) in one chain.
pub const MAX_STEPS: usize = 8;
/// Size of one scratch page (the native header's size, one `O_DIRECT` block).
pub const PAGE: usize = HEADER_LEN;
/// Scratch pages per record: the native header, an auxiliary page (a store's zero-padded last
/// page, a load's end-of-file probe), and a page for two `statx` buffers and iovec tables.
const SCRATCH_PAGES: usize = 3;
/// Largest registered buffer the kernel takes.
const MAX_BUFFER_LEN: usize = 1 << 30;
/// Most registered buffers the kernel takes.
const MAX_BUFFERS: usize = 1 << 14;
/// The result of a step of a one-CQE chain that completed in full (its CQE was skipped).
pub const SKIPPED: i32 = i32::MAX;
/// Most buffers of one vectored transfer.
pub const MAX_IOV: usize = 3;
/// Bytes of one `struct iovec` (a pointer and a `size_t`).
const IOVEC_LEN: usize = 2 * std::mem::size_of::<usize>();
/// Largest single read or write Linux performs (`MAX_RW_COUNT`): a longer one is short.
pub const MAX_TRANSFER: usize = 0x7fff_f000;

/// A buffer a step reads into or writes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buf {
    /// The first `len` bytes of the op's row.
    Row {
        /// Bytes (at most the region's stride).
        len: u32,
    },
    /// The first `len` bytes of one of the record's scratch pages (0: header, 1: auxiliary).
    Scratch {
        /// Page 0 or 1.
        page: u8,
        /// Bytes (at most [`PAGE`]).
        len: u32,
    },
}

/// One of the record's paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathSel {
    /// The op's final path.
    Final,
    /// The store's current temp path.
    Temp,
    /// A directory being created.
    Dir,
    /// The block file a store evicts.
    Victim,
}

/// One step of a chain, naming the record's buffers. Files are the record's direct descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sqe {
    /// `openat(AT_FDCWD, path, flags, mode)` into the record's direct descriptor slot.
    Open {
        /// Which path.
        path: PathSel,
        /// `open` flags.
        flags: i32,
        /// Mode of a created file.
        mode: u32,
    },
    /// `read_fixed` from the direct descriptor at `offset` into `buf`.
    Read {
        /// Destination.
        buf: Buf,
        /// File offset.
        offset: u64,
    },
    /// `write_fixed` of `buf` to the direct descriptor at `offset`.
    Write {
        /// Source.
        buf: Buf,
        /// File offset.
        offset: u64,
    },
    /// `writev` of `bufs[..n]`, in order, to the direct descriptor at `offset`: one I/O where
    /// `write_fixed` needs one per buffer (a native block's header and row live in different
    /// registered buffers, and one transfer extends a new file once). The iovec table lives in
    /// the record's scratch page 2.
    Writev {
        /// Sources.
        bufs: [Buf; MAX_IOV],
        /// How many of `bufs` (1 to [`MAX_IOV`]).
        n: u8,
        /// File offset.
        offset: u64,
    },
    /// `fsync(IORING_FSYNC_DATASYNC)` of the direct descriptor.
    DataSync,
    /// `close` of the direct descriptor (frees its slot).
    Close,
    /// `renameat` of path `from` onto path `to`.
    Rename {
        /// The path renamed.
        from: PathSel,
        /// Its new name.
        to: PathSel,
    },
    /// `unlinkat` of a path.
    Unlink {
        /// Which path.
        path: PathSel,
    },
    /// `mkdirat(path, 0o777)`.
    Mkdir {
        /// Which path.
        path: PathSel,
    },
    /// `statx` of a path (following symlinks, like `stat`) into statx buffer `into` (0 or 1).
    Statx {
        /// Which path.
        path: PathSel,
        /// Which buffer.
        into: u8,
    },
}

/// How a step is tied to the next one of its chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// The last step.
    End,
    /// `IOSQE_IO_LINK`: the next step runs only if this one succeeds in full (a short read or
    /// write counts as a failure); otherwise the rest completes with `-ECANCELED`.
    Soft,
    /// `IOSQE_IO_HARDLINK`: the next step runs whatever this one's result.
    Hard,
}

/// A record, as handed out by [`Ring::start`]. Stale ids (of a finished record) are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecId {
    index: u32,
    gen: u32,
}

impl RecId {
    /// The record's index (also its direct descriptor slot).
    pub fn index(self) -> usize {
        self.index as usize
    }
}

/// Why a chain was not pushed.
#[derive(Debug)]
pub enum PushError {
    /// The submission queue has no room for the chain now (the kernel has not consumed it):
    /// push again after reaping.
    NoRoom,
    /// The chain is invalid (a logic error): nothing was pushed.
    Invalid(io::Error),
}

/// A file's identity as `statx` reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    /// Device (major, minor).
    pub dev: (u32, u32),
    /// Inode number.
    pub ino: u64,
}

/// Where in the scratch pages `statx` buffer `which` (0 or 1) is: page 2, 256 bytes each.
fn statx_at(which: u8) -> usize {
    2 * PAGE + 256 * usize::from(which & 1)
}

/// Where in the scratch pages step `step`'s iovec table is: page 2, after the `statx` buffers.
fn iov_at(step: usize) -> usize {
    2 * PAGE + 512 + step * MAX_IOV * IOVEC_LEN
}

/// Offsets in a `struct statx` (checked against `libc` by a test), read by offset so no
/// `unsafe` cast is needed.
const STATX_INO: usize = 32;
const STATX_DEV_MAJOR: usize = 136;
const STATX_DEV_MINOR: usize = 140;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// An op running in the ring: the op and the lease on its row.
struct Active {
    op: FileOp,
    lease: Lease,
}

/// One record: everything the kernel may touch for one op.
struct Slot {
    /// Changes when the record is released: a stale [`RecId`] is refused.
    gen: u32,
    /// Changes with every chain pushed: a CQE carries it, so a CQE can only ever count for
    /// the chain it belongs to.
    tag: u32,
    /// CQEs still to come for the chain in the kernel.
    pending: u32,
    /// Steps of the chain in the kernel, and whether it posts one CQE only.
    steps: u8,
    one_cqe: bool,
    /// Bytes each step of the chain transfers (0: not a transfer).
    want: [u32; MAX_STEPS],
    results: [i32; MAX_STEPS],
    active: Option<Active>,
    /// NUL-terminated paths, indexed by [`PathSel`]; empty when unset.
    paths: [Vec<u8>; 4],
    /// The record's scratch pages in the arena (see [`SCRATCH_PAGES`]), leased for the ring's
    /// life.
    scratch: Lease,
}

fn path_index(sel: PathSel) -> usize {
    match sel {
        PathSel::Final => 0,
        PathSel::Temp => 1,
        PathSel::Dir => 2,
        PathSel::Victim => 3,
    }
}

/// A record with nothing in the kernel: its op, row, scratch pages, paths, the results of its
/// last chain and its `statx` buffers, for the code that decides what comes next.
pub struct Idle<'a> {
    /// The op.
    pub op: &'a FileOp,
    /// The whole row (`stride` bytes; the block is its first `row_bytes`).
    pub row: &'a [u8],
    /// The block size of the region.
    pub row_bytes: usize,
    /// The scratch pages: page 0 (the header) and page 1 (auxiliary) are `scratch[..PAGE]` and
    /// `scratch[PAGE..2 * PAGE]`; the rest holds the `statx` buffers.
    pub scratch: &'a mut [u8],
    /// The results (CQE `res`) of the last chain's steps, in order.
    pub results: &'a [i32; MAX_STEPS],
    paths: &'a mut [Vec<u8>; 4],
}

impl Idle<'_> {
    /// Sets path `sel` to the concatenation of `parts` (NUL-terminated). Fails on a NUL byte.
    pub fn set_path(&mut self, sel: PathSel, parts: &[&[u8]]) -> io::Result<()> {
        let buf = &mut self.paths[path_index(sel)];
        buf.clear();
        for part in parts {
            if part.contains(&0) {
                buf.clear();
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"));
            }
            buf.extend_from_slice(part);
        }
        buf.push(0);
        Ok(())
    }

    /// Sets the temp path to `{final}.{pid}.{seq:x}.tmp` ([`kvtier_fs::tmpname::temp_path`]'s
    /// name, built without allocating).
    pub fn set_temp_path(&mut self, seq: u64) -> io::Result<()> {
        let fin = self.op.path.as_os_str().as_bytes();
        self.set_path(PathSel::Temp, &[fin])?;
        let buf = &mut self.paths[path_index(PathSel::Temp)];
        buf.pop();
        write!(buf, ".{}.{seq:x}{TEMP_SUFFIX}", std::process::id())?;
        buf.push(0);
        Ok(())
    }

    /// Path `sel` without its NUL (empty when unset).
    #[cfg(test)]
    pub fn path(&self, sel: PathSel) -> &std::ffi::OsStr {
        let p = &self.paths[path_index(sel)];
        std::ffi::OsStr::from_bytes(p.strip_suffix(&[0]).unwrap_or(p))
    }

    /// The identity `statx` buffer `which` holds (meaningful if that step succeeded).
    pub fn statx(&self, which: u8) -> FileId {
        let b = &self.scratch[statx_at(which)..statx_at(which) + 256];
        FileId {
            dev: (u32_at(b, STATX_DEV_MAJOR), u32_at(b, STATX_DEV_MINOR)),
            ino: u64::from(u32_at(b, STATX_INO)) | (u64::from(u32_at(b, STATX_INO + 4)) << 32),
        }
    }
}

/// How the ring is set up.
#[derive(Debug, Clone)]
pub struct RingSetup {
    /// Submission queue entries (at least [`MAX_STEPS`]).
    pub sq_entries: u32,
    /// Completion queue entries; 0: enough for every record's longest chain.
    pub cq_entries: u32,
    /// Records (ops in the ring at once); clamped to `RLIMIT_NOFILE`.
    pub records: usize,
    /// Most bounded io-wq workers; 0: one per record.
    pub iowq_workers: u32,
    /// Fail as if io_uring were unavailable.
    pub force_unavailable: bool,
}

/// The ring and its records. See the module docs.
pub struct Ring {
    // Declared first: dropped (the ring closed) before the records and the region go.
    uring: IoUring,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// SQEs pushed whose CQE has not been reaped, over all records.
    pending: usize,
    region: Arc<PrimaryRegion>,
    /// Rows per registered region buffer.
    chunk_rows: usize,
    /// The arena's registered buffer index.
    arena_buf: u16,
    /// The kernel stopped answering: the records are leaked, never freed.
    broken: bool,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("records", &self.slots.len())
            .field("free", &self.free.len())
            .field("pending", &self.pending)
            .field("chunk_rows", &self.chunk_rows)
            .finish()
    }
}

fn buf_len(buf: Buf) -> u32 {
    match buf {
        Buf::Row { len } | Buf::Scratch { len, .. } => len,
    }
}

/// The soft `RLIMIT_NOFILE`: the kernel refuses more registered file slots than that.
fn nofile_limit() -> usize {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `rl` is a valid, writable `rlimit` for the duration of the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
    if rc == 0 {
        usize::try_from(rl.rlim_cur).unwrap_or(usize::MAX)
    } else {
        usize::MAX
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.to_string())
}

fn user_data(tag: u32, index: u32, step: usize) -> u64 {
    (u64::from(tag) << 32) | (u64::from(index) << 8) | step as u64
}

fn decode(user_data: u64) -> (u32, usize, usize) {
    ((user_data >> 32) as u32, ((user_data >> 8) & 0xff_ffff) as usize, (user_data & 0xff) as usize)
}

impl Ring {
    /// Sets up a ring over `region`: probes io_uring (see [`probe`]), registers the region and a
    /// scratch arena as fixed buffers and one sparse direct-descriptor slot per record.
    pub fn new(region: Arc<PrimaryRegion>, setup: &RingSetup) -> io::Result<Ring> {
        probe::environment(setup.force_unavailable)?;
        let records = setup.records.min(nofile_limit()).min(0xff_ffff);
        if records == 0 {
            return Err(invalid("the uring executor needs at least one record (max_ops >= 1, RLIMIT_NOFILE >= 1)"));
        }
        let sq = setup.sq_entries.max(MAX_STEPS as u32);
        let needed = u32::try_from(records * MAX_STEPS).unwrap_or(u32::MAX);
        let cq = if setup.cq_entries == 0 { needed.max(2 * sq) } else { setup.cq_entries.max(sq) };
        let uring = IoUring::builder()
            .setup_cqsize(cq.checked_next_power_of_two().unwrap_or(cq))
            .setup_clamp()
            .setup_submit_all()
            .build(sq)
            .map_err(probe::setup_failed)?;
        probe::check_ring(&uring)?;
        // Blocking steps (a store's `openat(O_CREAT)` and the rest of its chain) run on the
        // kernel's bounded io-wq workers, 4 per CPU by default: fewer than the stores in flight.
        let workers = if setup.iowq_workers == 0 { records as u32 } else { setup.iowq_workers };
        uring.submitter().register_iowq_max_workers(&mut [workers, 0]).map_err(|e| {
            probe::unavailable(format_args!("IORING_REGISTER_IOWQ_MAX_WORKERS: {e} (Linux >= 5.15 needed)"))
        })?;
        uring.submitter().register_files_sparse(records as u32).map_err(|e| {
            probe::unavailable(format_args!(
                "registering {records} direct descriptor slots: {e} (Linux >= 5.19 needed)"
            ))
        })?;

        // The region, in chunks of whole rows, then the arena.
        let stride = region.stride();
        let chunk_rows = MAX_BUFFER_LEN.checked_div(stride).map_or(usize::MAX, |n| n.max(1));
        if stride > MAX_BUFFER_LEN {
            return Err(invalid("rows larger than 1 GiB cannot be registered with io_uring"));
        }
        let arena = Arc::new(PrimaryRegion::anonymous(records, SCRATCH_PAGES * PAGE)?);
        let mut iovecs = Vec::new();
        if let Some((base, len)) = region.mapping() {
            let chunk = chunk_rows * stride;
            let mut at = 0;
            while at < len {
                let n = chunk.min(len - at);
                iovecs.push(libc::iovec { iov_base: base.as_ptr().wrapping_add(at).cast(), iov_len: n });
                at += n;
            }
        }
        let arena_buf = iovecs.len();
        let (arena_base, arena_len) = arena.mapping().expect("the arena has at least one record");
        iovecs.push(libc::iovec { iov_base: arena_base.as_ptr().cast(), iov_len: arena_len });
        if iovecs.len() > MAX_BUFFERS {
            return Err(invalid("the region needs more than 16384 registered buffers"));
        }
        // SAFETY: every iovec lies inside a live mapping (the region's, the arena's). Both
        // stay mapped for as long as the ring lives: `self.region` and the scratch leases
        // (which hold the arena's `Arc`) are fields of the ring, dropped after `uring`; and
        // registration pins the pages, so what the kernel writes through a fixed buffer lands
        // in pages it holds itself, whatever happens to the mapping.
        unsafe { uring.submitter().register_buffers(&iovecs) }.map_err(|e| {
            let hint = if e.raw_os_error() == Some(libc::ENOMEM) { " (RLIMIT_MEMLOCK too low?)" } else { "" };
            io::Error::new(e.kind(), format!("registering the primary region as io_uring fixed buffers: {e}{hint}"))
        })?;

        let mut slots = Vec::with_capacity(records);
        for i in 0..records {
            let scratch = arena.lease(SlotId(i as u32), Access::Write).map_err(io::Error::other)?;
            slots.push(Slot {
                gen: 0,
                tag: 0,
                pending: 0,
                steps: 0,
                one_cqe: false,
                want: [0; MAX_STEPS],
                results: [0; MAX_STEPS],
                active: None,
                paths: [Vec::with_capacity(256), Vec::with_capacity(256), Vec::new(), Vec::new()],
                scratch,
            });
        }
        Ok(Ring {
            uring,
            slots,
            free: (0..records as u32).rev().collect(),
            pending: 0,
            region,
            chunk_rows,
            arena_buf: arena_buf as u16,
            broken: false,
        })
    }

    /// Records (ops the ring runs at once).
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Records running an op.
    pub fn active(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Whether a record is free.
    pub fn has_free(&self) -> bool {
        !self.free.is_empty()
    }

    /// SQEs whose CQE has not been reaped.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Takes a free record for `op` and its row's `lease`.
    ///
    /// # Panics
    ///
    /// If no record is free (see [`Ring::has_free`]).
    pub fn start(&mut self, op: FileOp, lease: Lease) -> RecId {
        let index = self.free.pop().expect("a free record (checked with has_free)");
        let slot = &mut self.slots[index as usize];
        debug_assert!(slot.active.is_none() && slot.pending == 0);
        slot.active = Some(Active { op, lease });
        RecId { index, gen: slot.gen }
    }

    fn slot(&self, id: RecId) -> Option<&Slot> {
        self.slots.get(id.index()).filter(|s| s.gen == id.gen && s.active.is_some())
    }

    /// The record, if it has nothing in the kernel.
    pub fn idle(&mut self, id: RecId) -> Option<Idle<'_>> {
        let row_bytes = self.region.row_bytes();
        let slot = self.slots.get_mut(id.index()).filter(|s| s.gen == id.gen && s.pending == 0)?;
        let active = slot.active.as_ref()?;
        Some(Idle {
            op: &active.op,
            row: active.lease.as_slice(),
            row_bytes,
            scratch: slot.scratch.as_mut_slice().expect("scratch pages are write-leased"),
            results: &slot.results,
            paths: &mut slot.paths,
        })
    }

    /// Releases an idle record: gives back its op and lease. `None` while it has SQEs in the
    /// kernel (or for a stale id).
    pub fn finish(&mut self, id: RecId) -> Option<(FileOp, Lease)> {
        let slot = self.slots.get_mut(id.index()).filter(|s| s.gen == id.gen && s.pending == 0)?;
        let Active { op, lease } = slot.active.take()?;
        slot.gen = slot.gen.wrapping_add(1);
        for p in &mut slot.paths {
            p.clear();
        }
        self.free.push(id.index);
        Some((op, lease))
    }

    /// Pointer, length and registered buffer index of `buf` for record `slot`.
    fn buffer(&self, slot: &Slot, buf: Buf, kernel_writes: bool) -> io::Result<(*mut u8, u32, u16)> {
        match buf {
            Buf::Row { len } => {
                let lease = &slot.active.as_ref().ok_or_else(|| invalid("no op in the record"))?.lease;
                if kernel_writes && lease.access() != Access::Write {
                    return Err(invalid("a read into a row needs a write lease"));
                }
                if len == 0 || len as usize > self.region.stride() || len as usize > MAX_TRANSFER {
                    return Err(invalid("a row transfer must be 1 byte to one stride long"));
                }
                let index = lease.slot().index() / self.chunk_rows;
                let index = u16::try_from(index).map_err(|_| invalid("row beyond the registered buffers"))?;
                Ok((lease.as_ptr(), len, index))
            }
            Buf::Scratch { page, len } => {
                if page >= 2 || len == 0 || len as usize > PAGE {
                    return Err(invalid("a scratch transfer must be 1 byte to one page of page 0 or 1"));
                }
                Ok((slot.scratch.as_ptr().wrapping_add(usize::from(page) * PAGE), len, self.arena_buf))
            }
        }
    }

    fn path(slot: &Slot, sel: PathSel) -> io::Result<*const libc::c_char> {
        let p = &slot.paths[path_index(sel)];
        if p.last() != Some(&0) {
            return Err(invalid("path not set"));
        }
        Ok(p.as_ptr().cast())
    }

    /// The SQE for `sqe` of record `index`.
    fn entry(&self, index: u32, slot: &Slot, step: usize, sqe: Sqe) -> io::Result<squeue::Entry> {
        let file = types::Fixed(index);
        let cwd = types::Fd(libc::AT_FDCWD);
        Ok(match sqe {
            Sqe::Open { path, flags, mode } => {
                let dest = DestinationSlot::try_from_slot_target(index).map_err(|_| invalid("descriptor slot"))?;
                // No O_CLOEXEC: the kernel refuses it for a direct descriptor (which no exec
                // inherits anyway).
                opcode::OpenAt::new(cwd, Self::path(slot, path)?)
                    .flags(flags & !libc::O_CLOEXEC)
                    .mode(mode)
                    .file_index(Some(dest))
                    .build()
            }
            Sqe::Read { buf, offset } => {
                let (ptr, len, buf_index) = self.buffer(slot, buf, true)?;
                opcode::ReadFixed::new(file, ptr, len, buf_index).offset(offset).build()
            }
            Sqe::Write { buf, offset } => {
                let (ptr, len, buf_index) = self.buffer(slot, buf, false)?;
                opcode::WriteFixed::new(file, ptr.cast_const(), len, buf_index).offset(offset).build()
            }
            Sqe::Writev { n, offset, .. } => {
                let iov = slot.scratch.as_ptr().wrapping_add(iov_at(step)).cast::<libc::iovec>();
                opcode::Writev::new(file, iov.cast_const(), u32::from(n)).offset(offset).build()
            }
            Sqe::DataSync => opcode::Fsync::new(file).flags(FsyncFlags::DATASYNC).build(),
            Sqe::Close => opcode::Close::new(file).build(),
            Sqe::Rename { from, to } => {
                opcode::RenameAt::new(cwd, Self::path(slot, from)?, cwd, Self::path(slot, to)?).build()
            }
            Sqe::Unlink { path } => opcode::UnlinkAt::new(cwd, Self::path(slot, path)?).build(),
            Sqe::Mkdir { path } => opcode::MkDirAt::new(cwd, Self::path(slot, path)?).mode(0o777).build(),
            Sqe::Statx { path, into } => {
                let buf = slot.scratch.as_ptr().wrapping_add(statx_at(into));
                opcode::Statx::new(cwd, Self::path(slot, path)?, buf.cast::<types::statx>())
                    .mask(libc::STATX_TYPE | libc::STATX_INO)
                    .build()
            }
        })
    }

    /// Pushes `chain` (1 to [`MAX_STEPS`] steps, linked as each says; the last step's link is
    /// ignored) for idle record `id`. It is submitted to the kernel by the next
    /// [`flush`](Self::flush) (or wait).
    ///
    /// With `one_cqe` (every link [`Link::Soft`]), every step but the last carries
    /// `IOSQE_CQE_SKIP_SUCCESS`: the chain then posts exactly one CQE, the first failure's
    /// (the kernel omits the CQEs of the steps a failure cancels) or the last step's, so the
    /// waiter is woken once per chain instead of once per step. When it arrives, the record's
    /// results read [`SKIPPED`] for the steps before it and `-ECANCELED` for those after it.
    pub fn push(&mut self, id: RecId, chain: &[(Sqe, Link)], one_cqe: bool) -> Result<(), PushError> {
        let n = chain.len();
        if n == 0 || n > MAX_STEPS {
            return Err(PushError::Invalid(invalid("a chain has 1 to 8 steps")));
        }
        if one_cqe && chain[..n - 1].iter().any(|&(_, link)| link != Link::Soft) {
            return Err(PushError::Invalid(invalid("a one-CQE chain is soft-linked")));
        }
        let slot = match self.slot(id) {
            Some(s) if s.pending == 0 => s,
            _ => return Err(PushError::Invalid(invalid("the record is not idle"))),
        };
        // The iovec tables of vectored steps, written into the record's scratch page 2 below.
        let mut tables = [[0u8; MAX_IOV * IOVEC_LEN]; MAX_STEPS];
        let mut vectored = false;
        for (k, &(sqe, _)) in chain.iter().enumerate() {
            let Sqe::Writev { bufs, n, .. } = sqe else { continue };
            if n == 0 || usize::from(n) > MAX_IOV {
                return Err(PushError::Invalid(invalid("a vectored transfer has 1 to 3 buffers")));
            }
            for (j, &buf) in bufs[..usize::from(n)].iter().enumerate() {
                let (ptr, len, _) = self.buffer(slot, buf, false).map_err(PushError::Invalid)?;
                let at = j * IOVEC_LEN;
                let half = IOVEC_LEN / 2;
                // The kernel gets the address: its provenance is exposed.
                tables[k][at..at + half].copy_from_slice(&ptr.expose_provenance().to_ne_bytes());
                tables[k][at + half..at + IOVEC_LEN].copy_from_slice(&(len as usize).to_ne_bytes());
            }
            vectored = true;
        }
        if vectored {
            let scratch = self.slots[id.index()].scratch.as_mut_slice().expect("scratch pages are write-leased");
            for (k, table) in tables.iter().enumerate().take(n) {
                scratch[iov_at(k)..iov_at(k) + table.len()].copy_from_slice(table);
            }
        }
        let slot = &self.slots[id.index()];
        let tag = slot.tag.wrapping_add(1);
        let mut want = [0u32; MAX_STEPS];
        let mut entries: [squeue::Entry; MAX_STEPS] = std::array::from_fn(|_| opcode::Nop::new().build());
        for (k, &(sqe, link)) in chain.iter().enumerate() {
            let flags = match link {
                _ if k + 1 == n => Flags::empty(),
                Link::End => return Err(PushError::Invalid(invalid("a chain ends at its last step only"))),
                Link::Soft if one_cqe => Flags::IO_LINK | Flags::SKIP_SUCCESS,
                Link::Soft => Flags::IO_LINK,
                Link::Hard => Flags::IO_HARDLINK,
            };
            let entry = self.entry(id.index, slot, k, sqe).map_err(PushError::Invalid)?;
            entries[k] = entry.flags(flags).user_data(user_data(tag, id.index, k));
            want[k] = match sqe {
                Sqe::Read { buf, .. } | Sqe::Write { buf, .. } => buf_len(buf),
                Sqe::Writev { bufs, n, .. } => bufs[..usize::from(n)].iter().map(|&b| buf_len(b)).sum(),
                _ => 0,
            };
        }
        let room = |uring: &mut IoUring| {
            let sq = uring.submission();
            sq.capacity() - sq.len()
        };
        if room(&mut self.uring) < n {
            // A chain must reach the kernel in one submission: make room first.
            let _ = self.flush();
            if room(&mut self.uring) < n {
                return Err(PushError::NoRoom);
            }
        }
        // SAFETY: every pointer in `entries`, and in the iovec tables they point to, was derived
        // above from record `id`'s own memory: its row lease (a write lease wherever the kernel
        // writes, checked by `buffer`), its scratch pages (statx buffers and iovec tables
        // included) and its NUL-terminated paths. The record
        // counts these SQEs in `pending` just below and cannot be released (`finish`), nor
        // its buffers reached or changed (`idle`), until all their CQEs are reaped; heap
        // buffers do not move when `slots` is borrowed or the record is, and `Drop` waits for
        // (or leaks on) every outstanding CQE.
        let pushed = unsafe { self.uring.submission().push_multiple(&entries[..n]) };
        if pushed.is_err() {
            return Err(PushError::NoRoom);
        }
        let slot = &mut self.slots[id.index()];
        let cqes = if one_cqe { 1 } else { n };
        slot.tag = tag;
        slot.pending = cqes as u32;
        slot.steps = n as u8;
        slot.one_cqe = one_cqe;
        slot.want = want;
        slot.results = [0; MAX_STEPS];
        self.pending += cqes;
        Ok(())
    }

    /// Moves every available CQE into its record; records whose chain is complete (no CQE
    /// left to come) are appended to `ready`. Returns the number of CQEs reaped.
    pub fn reap(&mut self, ready: &mut Vec<RecId>) -> usize {
        let mut n = 0;
        for cqe in self.uring.completion() {
            n += 1;
            let (tag, index, step) = decode(cqe.user_data());
            let Some(slot) = self.slots.get_mut(index) else {
                debug_assert!(false, "a CQE for unknown record {index}");
                continue;
            };
            if slot.tag != tag || slot.pending == 0 || step >= usize::from(slot.steps) {
                // Not a CQE the record waits for: never counted, so never taken for the end
                // of a chain the kernel still runs.
                debug_assert!(false, "a stray CQE (record {index}, step {step})");
                continue;
            }
            let res = cqe.result();
            let last = step + 1 == usize::from(slot.steps);
            if slot.one_cqe && !last && res >= 0 && (slot.want[step] == 0 || res as u32 == slot.want[step]) {
                // A success CQE the chain asked the kernel to skip: this kernel does not skip
                // it, so every later step posts one as well. Count them, and do not take this
                // one for the end of a chain that is still running.
                slot.one_cqe = false;
                slot.results[step] = res;
                let rest = usize::from(slot.steps) - step - 1;
                slot.pending = rest as u32;
                self.pending = self.pending - 1 + rest;
                continue;
            }
            if slot.one_cqe {
                // The chain's only CQE: the steps before it completed in full, those after it
                // were cancelled.
                slot.results[..step].fill(SKIPPED);
                slot.results[step + 1..usize::from(slot.steps)].fill(-libc::ECANCELED);
            }
            slot.results[step] = res;
            slot.pending -= 1;
            self.pending -= 1;
            if slot.pending == 0 {
                ready.push(RecId { index: index as u32, gen: slot.gen });
            }
        }
        n
    }

    /// Submits what is queued (and flushes overflowed completions). Does nothing when there
    /// is nothing to do; a busy kernel (`EBUSY`, `EAGAIN`) keeps the SQEs for the next call.
    pub fn flush(&mut self) -> io::Result<()> {
        {
            let sq = self.uring.submission();
            if sq.is_empty() && !sq.cq_overflow() {
                return Ok(());
            }
        }
        loop {
            match self.uring.submit() {
                Ok(_) => return Ok(()),
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EBUSY | libc::EAGAIN) => return Ok(()),
                    _ => return Err(e),
                },
            }
        }
    }

    /// Submits what is queued and waits in the kernel until a CQE is available, at most
    /// `timeout` (`None`: without limit). Returns at once if nothing is pending. A timeout, a
    /// signal or a busy kernel return `Ok` (the caller reaps and decides).
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        if self.pending == 0 {
            return Ok(());
        }
        let r = match timeout {
            None => self.uring.submit_and_wait(1),
            Some(d) => {
                let ts = types::Timespec::from(d);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.uring.submitter().submit_with_args(1, &args)
            }
        };
        match r {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)) => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The kernel stopped answering: gives up on every record with SQEs in the kernel. Their
    /// ops are returned; their leases are leaked (so their rows stay leased, and the region
    /// mapped, forever) and so is every record's memory when the ring is dropped: the kernel
    /// may still write to it.
    pub fn abandon(&mut self) -> Vec<FileOp> {
        self.broken = true;
        let mut ops = Vec::new();
        for slot in &mut self.slots {
            if slot.pending > 0 {
                if let Some(Active { op, lease }) = slot.active.take() {
                    std::mem::forget(lease);
                    ops.push(op);
                }
            }
        }
        ops
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        let mut ready = Vec::new();
        while !self.broken && self.pending > 0 {
            self.reap(&mut ready);
            if self.pending > 0 && self.wait(None).is_err() {
                self.broken = true;
            }
        }
        if self.broken {
            // Records the kernel may still write to are never freed.
            std::mem::forget(std::mem::take(&mut self.slots));
            std::mem::forget(Arc::clone(&self.region));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips() {
        assert_eq!(decode(user_data(0xdead_beef, 0xab_cdef, 7)), (0xdead_beef, 0xab_cdef, 7));
    }

    #[test]
    fn records_own_their_paths_and_are_released_only_when_idle() {
        let region = Arc::new(PrimaryRegion::anonymous(2, 4096).unwrap());
        let setup = RingSetup { sq_entries: 8, cq_entries: 0, records: 1, iowq_workers: 0, force_unavailable: false };
        let mut ring = Ring::new(Arc::clone(&region), &setup).unwrap();
        assert_eq!((ring.capacity(), ring.active()), (1, 0));
        let op = FileOp {
            token: 1,
            kind: kvtier_fs::OpKind::Store,
            slot: SlotId(0),
            path: std::path::PathBuf::from("/x/y.bin"),
            format: kvtier_fs::BlockFormat::Vllm,
            sync: false,
            evict: None,
        };
        let lease = region.lease(SlotId(0), Access::Read).unwrap();
        let id = ring.start(op.clone(), lease);
        assert!(!ring.has_free(), "one record only");
        let mut rec = ring.idle(id).unwrap();
        rec.set_temp_path(0x2a).unwrap();
        assert_eq!(rec.path(PathSel::Temp), kvtier_fs::tmpname::temp_path(std::path::Path::new("/x/y.bin"), 0x2a));
        assert!(rec.set_path(PathSel::Dir, &[b"a\0b"]).is_err());
        // A read into a read-leased row is refused before anything reaches the kernel.
        let e = ring.push(
            id,
            &[
                (Sqe::Open { path: PathSel::Temp, flags: 0, mode: 0 }, Link::Soft),
                (Sqe::Read { buf: Buf::Row { len: 4096 }, offset: 0 }, Link::End),
            ],
            false,
        );
        assert!(matches!(e, Err(PushError::Invalid(_))));
        assert_eq!(ring.pending(), 0);
        // A NOP-like chain that fails at once: unlink of a path that does not exist.
        let mut rec = ring.idle(id).unwrap();
        rec.set_path(PathSel::Final, &[b"/nonexistent/kvtier-ring-test"]).unwrap();
        ring.push(id, &[(Sqe::Unlink { path: PathSel::Final }, Link::End)], false).unwrap();
        assert!(ring.idle(id).is_none() && ring.finish(id).is_none(), "busy while the kernel has it");
        ring.wait(None).unwrap();
        let mut ready = Vec::new();
        while ready.is_empty() {
            ring.reap(&mut ready);
        }
        assert_eq!(ready, vec![id]);
        assert_eq!(ring.idle(id).unwrap().results[0], -libc::ENOENT);
        let (op, lease) = ring.finish(id).unwrap();
        assert_eq!((op.token, lease.slot()), (1, SlotId(0)));
        assert!(ring.finish(id).is_none(), "a stale id is refused");
    }

    /// A one-CQE chain posts exactly one CQE, whether it succeeds or fails (and no stray CQE
    /// follows: `reap` asserts that in debug builds).
    #[test]
    fn one_cqe_chains_post_one_cqe() {
        let dir = tempfile::tempdir().unwrap();
        let region = Arc::new(PrimaryRegion::anonymous(1, 4096).unwrap());
        let setup = RingSetup { sq_entries: 8, cq_entries: 0, records: 1, iowq_workers: 0, force_unavailable: false };
        let mut ring = Ring::new(Arc::clone(&region), &setup).unwrap();
        let chain = [
            (
                Sqe::Open { path: PathSel::Temp, flags: libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, mode: 0o644 },
                Link::Soft,
            ),
            (Sqe::Write { buf: Buf::Row { len: 4096 }, offset: 0 }, Link::Soft),
            (Sqe::Close, Link::Soft),
            (Sqe::Rename { from: PathSel::Temp, to: PathSel::Final }, Link::End),
        ];
        let mut run = |fin: &std::path::Path| {
            let op = FileOp {
                token: 1,
                kind: kvtier_fs::OpKind::Store,
                slot: SlotId(0),
                path: fin.to_path_buf(),
                format: kvtier_fs::BlockFormat::Vllm,
                sync: false,
                evict: None,
            };
            let id = ring.start(op, region.lease(SlotId(0), Access::Read).unwrap());
            let mut rec = ring.idle(id).unwrap();
            rec.set_path(PathSel::Final, &[fin.as_os_str().as_bytes()]).unwrap();
            rec.set_temp_path(kvtier_fs::tmpname::next_seq()).unwrap();
            ring.push(id, &chain, true).unwrap();
            assert_eq!(ring.pending(), 1);
            let mut ready = Vec::new();
            let mut cqes = 0;
            while ready.is_empty() {
                ring.wait(None).unwrap();
                cqes += ring.reap(&mut ready);
            }
            std::thread::sleep(Duration::from_millis(50));
            cqes += ring.reap(&mut ready);
            assert_eq!((cqes, ready.len()), (1, 1));
            let results = *ring.idle(id).unwrap().results;
            ring.finish(id).unwrap();
            results
        };
        let ok = run(&dir.path().join("a.bin"));
        assert_eq!(&ok[..4], &[SKIPPED, SKIPPED, SKIPPED, 0]);
        assert!(dir.path().join("a.bin").is_file());
        let failed = run(&dir.path().join("missing/a.bin"));
        assert_eq!(&failed[..4], &[-libc::ENOENT, -libc::ECANCELED, -libc::ECANCELED, -libc::ECANCELED]);
        // A failure in the middle: renaming onto a non-empty directory.
        std::fs::create_dir_all(dir.path().join("d.bin/x")).unwrap();
        let failed = run(&dir.path().join("d.bin"));
        assert_eq!(&failed[..3], &[SKIPPED, SKIPPED, SKIPPED]);
        assert!(failed[3] < 0, "{failed:?}");
    }

    #[test]
    fn statx_offsets_match_libc() {
        assert_eq!(std::mem::size_of::<libc::statx>(), 256);
        assert_eq!(std::mem::offset_of!(libc::statx, stx_ino), STATX_INO);
        assert_eq!(std::mem::offset_of!(libc::statx, stx_dev_major), STATX_DEV_MAJOR);
        assert_eq!(std::mem::offset_of!(libc::statx, stx_dev_minor), STATX_DEV_MINOR);
    }
}
#[cfg(test)]
mod link_semantics {
    //! What the store chains rely on, checked on the running kernel: a failed open or write
    //! breaks a soft link and posts its CQE even when asked to skip successes; a failed
    //! `fsync` or `renameat` does neither (Linux 6.18 sets no failure flag for them), so
    //! those steps end their chain.
    use super::*;

    fn run(chain: &[(Sqe, Link)], path: &std::path::Path) -> [i32; MAX_STEPS] {
        let region = Arc::new(PrimaryRegion::anonymous(1, 4096).unwrap());
        let setup = RingSetup { sq_entries: 8, cq_entries: 0, records: 1, iowq_workers: 0, force_unavailable: false };
        let mut ring = Ring::new(Arc::clone(&region), &setup).unwrap();
        let op = FileOp {
            token: 1,
            kind: kvtier_fs::OpKind::Store,
            slot: SlotId(0),
            path: path.to_path_buf(),
            format: kvtier_fs::BlockFormat::Vllm,
            sync: false,
            evict: None,
        };
        let id = ring.start(op, region.lease(SlotId(0), Access::Read).unwrap());
        let mut rec = ring.idle(id).unwrap();
        rec.set_path(PathSel::Final, &[path.as_os_str().as_bytes()]).unwrap();
        rec.set_path(PathSel::Temp, &[path.as_os_str().as_bytes(), b".renamed"]).unwrap();
        ring.push(id, chain, true).unwrap();
        let mut ready = Vec::new();
        while ready.is_empty() {
            ring.wait(None).unwrap();
            ring.reap(&mut ready);
        }
        *ring.idle(id).unwrap().results
    }

    #[test]
    fn failed_writes_break_the_chain_and_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let r = run(
            &[
                (Sqe::Open { path: PathSel::Final, flags: libc::O_RDONLY, mode: 0 }, Link::Soft),
                (Sqe::Write { buf: Buf::Row { len: 4096 }, offset: 0 }, Link::Soft),
                (Sqe::Close, Link::End),
            ],
            &file,
        );
        assert_eq!(&r[..3], &[SKIPPED, -libc::EBADF, -libc::ECANCELED]);
    }

    #[test]
    fn a_failed_fsync_must_end_its_chain() {
        // fsync of a FIFO fails with EINVAL.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let open = (Sqe::Open { path: PathSel::Final, flags: libc::O_RDWR | libc::O_NONBLOCK, mode: 0 }, Link::Soft);
        let r = run(&[open, (Sqe::DataSync, Link::End)], &fifo);
        assert_eq!(&r[..2], &[SKIPPED, -libc::EINVAL], "the last step's CQE is always posted");
        let r = run(&[open, (Sqe::DataSync, Link::Soft), (Sqe::Close, Link::End)], &fifo);
        if r[1] != SKIPPED {
            eprintln!("this kernel breaks the link on a failed fsync: {:?}", &r[..3]);
        }
    }
}

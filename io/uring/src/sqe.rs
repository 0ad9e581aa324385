//! The steps a chain is made of, and how a chain of them becomes submission queue entries for
//! one record. No `unsafe`, no syscall: building an entry only computes the addresses of the
//! record's own buffers (its row, its scratch pages, its paths) for the kernel; pushing the
//! entries is the ring's business (`crate::ring`).
//!
//! A [`Sqe`] names a buffer ([`Buf`], [`PathSel`]) and a file ([`FileSel`]), never a pointer, so
//! the code that decides what to run (`crate::chain`) cannot hand the kernel anything but the
//! record's memory. A read into a row is refused unless the record holds a write lease on it.

use std::io;

use io_uring::opcode;
use io_uring::squeue::{self, Flags};
use io_uring::types::{self, DestinationSlot, FsyncFlags};
use kvtier_fs::direct::DIRECT_ALIGN;
use kvtier_fs::region::Access;

use crate::record::{iov_at, statx_at, Record};

/// Most steps (SQEs) in one chain.
pub const MAX_STEPS: usize = 8;
/// Size of one scratch page: one `O_DIRECT` block (and the native header's size).
pub const PAGE: usize = DIRECT_ALIGN;
/// The result of a step of a one-CQE chain that completed in full (its CQE was skipped).
pub const SKIPPED: i32 = i32::MAX;
/// Most buffers of one vectored transfer.
pub const MAX_IOV: usize = 3;
/// Bytes of one `struct iovec` (a pointer and a `size_t`).
pub const IOVEC_LEN: usize = 2 * std::mem::size_of::<usize>();
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

/// The file a step works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileSel {
    /// The record's own direct descriptor (opened by an earlier `openat` step).
    Own,
    /// A file registered in this fixed-file slot (an extent op's file).
    Registered(u32),
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

/// One step of a chain, naming the record's buffers and files.
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
    /// `read_fixed` from `file` at `offset` into `buf`.
    Read {
        /// Source.
        file: FileSel,
        /// Destination.
        buf: Buf,
        /// File offset.
        offset: u64,
    },
    /// `write_fixed` of `buf` to `file` at `offset`.
    Write {
        /// Destination.
        file: FileSel,
        /// Source.
        buf: Buf,
        /// File offset.
        offset: u64,
    },
    /// `writev` of `bufs[..n]`, in order, to `file` at `offset`: one I/O where `write_fixed`
    /// needs one per buffer (a native block's header and row live in different registered
    /// buffers, and one transfer extends a new file once). The iovec table lives in the
    /// record's scratch page 2.
    Writev {
        /// Destination.
        file: FileSel,
        /// Sources.
        bufs: [Buf; MAX_IOV],
        /// How many of `bufs` (1 to [`MAX_IOV`]).
        n: u8,
        /// File offset.
        offset: u64,
    },
    /// `readv` from `file` at `offset` into `bufs[..n]`, in order: one I/O where `read_fixed`
    /// needs one per buffer (a native extent's header page and its row live in different
    /// registered buffers, and `READV_FIXED` takes its buffers from one). The iovec table
    /// lives in the record's scratch page 2.
    Readv {
        /// Source.
        file: FileSel,
        /// Destinations.
        bufs: [Buf; MAX_IOV],
        /// How many of `bufs` (1 to [`MAX_IOV`]).
        n: u8,
        /// File offset.
        offset: u64,
    },
    /// `fsync(IORING_FSYNC_DATASYNC)` of `file`.
    DataSync {
        /// The file.
        file: FileSel,
    },
    /// `fsync` of `file` (a directory's: its entries become durable).
    Sync {
        /// The file.
        file: FileSel,
    },
    /// `close` of the record's direct descriptor (frees its slot).
    Close,
    /// `renameat` of path `from` onto path `to`.
    Rename {
        /// The path renamed.
        from: PathSel,
        /// Its new name.
        to: PathSel,
    },
    /// `linkat` of path `from` to the new name `to` (which must not exist).
    Link {
        /// The existing name.
        from: PathSel,
        /// The new name.
        to: PathSel,
    },
    /// `unlinkat` of a path.
    Unlink {
        /// Which path.
        path: PathSel,
    },
    /// `mkdirat(path, mode)`.
    Mkdir {
        /// Which path.
        path: PathSel,
        /// Permission bits.
        mode: u32,
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

/// What the ring registered, as SQEs name it.
#[derive(Debug, Clone, Copy)]
pub struct Registration {
    /// Rows per registered region buffer (buffers `0..`).
    pub chunk_rows: usize,
    /// The scratch arena's registered buffer index.
    pub arena_buf: u16,
    /// The region's row stride.
    pub stride: usize,
    /// Fixed-file slots: `0..records` are the records' direct descriptors, `records..files` the
    /// registered files of extent ops.
    pub records: u32,
    /// One past the last fixed-file slot.
    pub files: u32,
}

/// A chain ready to push: its entries and the bytes each transfer must move.
pub struct Built {
    /// The entries, with their links and user data.
    pub entries: [squeue::Entry; MAX_STEPS],
    /// Bytes each step transfers (0: not a transfer).
    pub want: [u32; MAX_STEPS],
    /// Steps.
    pub n: usize,
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.to_string())
}

/// The user data of step `step` of the chain tagged `tag` of record `index`.
pub fn user_data(tag: u32, index: u32, step: usize) -> u64 {
    (u64::from(tag) << 32) | (u64::from(index) << 8) | step as u64
}

/// `(tag, index, step)` of a CQE's user data.
pub fn decode(user_data: u64) -> (u32, usize, usize) {
    ((user_data >> 32) as u32, ((user_data >> 8) & 0xff_ffff) as usize, (user_data & 0xff) as usize)
}

/// A step's result says it succeeded in full: not an error, and a transfer (`want` bytes; 0:
/// not a transfer) moved all its bytes.
pub fn transferred(res: i32, want: u32) -> bool {
    res >= 0 && (want == 0 || res as u32 == want)
}

/// Bytes of a buffer.
pub fn buf_len(buf: Buf) -> u32 {
    match buf {
        Buf::Row { len } | Buf::Scratch { len, .. } => len,
    }
}

/// Pointer, length and registered buffer index of `buf` of record `rec`.
fn buffer(reg: &Registration, rec: &Record, buf: Buf, kernel_writes: bool) -> io::Result<(*mut u8, u32, u16)> {
    match buf {
        Buf::Row { len } => {
            let lease = &rec.active.as_ref().ok_or_else(|| invalid("no op in the record"))?.lease;
            if kernel_writes && lease.access() != Access::Write {
                return Err(invalid("a read into a row needs a write lease"));
            }
            if len == 0 || len as usize > reg.stride || len as usize > MAX_TRANSFER {
                return Err(invalid("a row transfer must be 1 byte to one stride long"));
            }
            let index = lease.slot().index() / reg.chunk_rows;
            let index = u16::try_from(index).map_err(|_| invalid("row beyond the registered buffers"))?;
            Ok((lease.as_ptr(), len, index))
        }
        Buf::Scratch { page, len } => {
            if page >= 2 || len == 0 || len as usize > PAGE {
                return Err(invalid("a scratch transfer must be 1 byte to one page of page 0 or 1"));
            }
            Ok((rec.scratch.as_ptr().wrapping_add(usize::from(page) * PAGE), len, reg.arena_buf))
        }
    }
}

fn path(rec: &Record, sel: PathSel) -> io::Result<*const libc::c_char> {
    let p = &rec.paths[crate::record::path_index(sel)];
    if p.last() != Some(&0) {
        return Err(invalid("path not set"));
    }
    Ok(p.as_ptr().cast())
}

fn file(reg: &Registration, index: u32, sel: FileSel) -> io::Result<types::Fixed> {
    match sel {
        FileSel::Own => Ok(types::Fixed(index)),
        FileSel::Registered(slot) if (reg.records..reg.files).contains(&slot) => Ok(types::Fixed(slot)),
        FileSel::Registered(_) => Err(invalid("no such registered file")),
    }
}

/// The entry for `sqe`, step `step` of record `index`.
fn entry(reg: &Registration, index: u32, rec: &Record, step: usize, sqe: Sqe) -> io::Result<squeue::Entry> {
    let cwd = types::Fd(libc::AT_FDCWD);
    Ok(match sqe {
        Sqe::Open { path: p, flags, mode } => {
            let dest = DestinationSlot::try_from_slot_target(index).map_err(|_| invalid("descriptor slot"))?;
            // No O_CLOEXEC: the kernel refuses it for a direct descriptor (which no exec
            // inherits anyway).
            opcode::OpenAt::new(cwd, path(rec, p)?)
                .flags(flags & !libc::O_CLOEXEC)
                .mode(mode)
                .file_index(Some(dest))
                .build()
        }
        Sqe::Read { file: f, buf, offset } => {
            let (ptr, len, buf_index) = buffer(reg, rec, buf, true)?;
            opcode::ReadFixed::new(file(reg, index, f)?, ptr, len, buf_index).offset(offset).build()
        }
        Sqe::Write { file: f, buf, offset } => {
            let (ptr, len, buf_index) = buffer(reg, rec, buf, false)?;
            opcode::WriteFixed::new(file(reg, index, f)?, ptr.cast_const(), len, buf_index).offset(offset).build()
        }
        Sqe::Writev { file: f, n, offset, .. } => {
            let iov = rec.scratch.as_ptr().wrapping_add(iov_at(step)).cast::<libc::iovec>();
            opcode::Writev::new(file(reg, index, f)?, iov.cast_const(), u32::from(n)).offset(offset).build()
        }
        Sqe::Readv { file: f, n, offset, .. } => {
            let iov = rec.scratch.as_ptr().wrapping_add(iov_at(step)).cast::<libc::iovec>();
            opcode::Readv::new(file(reg, index, f)?, iov.cast_const(), u32::from(n)).offset(offset).build()
        }
        Sqe::DataSync { file: f } => opcode::Fsync::new(file(reg, index, f)?).flags(FsyncFlags::DATASYNC).build(),
        Sqe::Sync { file: f } => opcode::Fsync::new(file(reg, index, f)?).build(),
        Sqe::Close => opcode::Close::new(types::Fixed(index)).build(),
        Sqe::Rename { from, to } => opcode::RenameAt::new(cwd, path(rec, from)?, cwd, path(rec, to)?).build(),
        Sqe::Link { from, to } => opcode::LinkAt::new(cwd, path(rec, from)?, cwd, path(rec, to)?).build(),
        Sqe::Unlink { path: p } => opcode::UnlinkAt::new(cwd, path(rec, p)?).build(),
        Sqe::Mkdir { path: p, mode } => opcode::MkDirAt::new(cwd, path(rec, p)?).mode(mode).build(),
        Sqe::Statx { path: p, into } => {
            let buf = rec.scratch.as_ptr().wrapping_add(statx_at(into));
            opcode::Statx::new(cwd, path(rec, p)?, buf.cast::<types::statx>())
                .mask(libc::STATX_TYPE | libc::STATX_INO | libc::STATX_SIZE)
                .build()
        }
    })
}

/// Builds `chain` (1 to [`MAX_STEPS`] steps, linked as each says; the last step's link is
/// ignored) for idle record `rec` (index `index`), its CQEs tagged `tag`. Vectored steps'
/// iovec tables are written into the record's scratch page 2.
///
/// With `one_cqe` (every link [`Link::Soft`]), every step but the last carries
/// `IOSQE_CQE_SKIP_SUCCESS`: the chain then posts exactly one CQE, the first failure's (the
/// kernel omits the CQEs of the steps a failure cancels) or the last step's.
///
/// # Errors
///
/// An invalid chain (a logic error): nothing is built.
pub fn build(
    reg: &Registration,
    rec: &mut Record,
    index: u32,
    tag: u32,
    chain: &[(Sqe, Link)],
    one_cqe: bool,
) -> io::Result<Built> {
    let n = chain.len();
    if n == 0 || n > MAX_STEPS {
        return Err(invalid("a chain has 1 to 8 steps"));
    }
    if one_cqe && chain[..n - 1].iter().any(|&(_, link)| link != Link::Soft) {
        return Err(invalid("a one-CQE chain is soft-linked"));
    }
    // The iovec tables of vectored steps, written into the record's scratch page 2 below.
    let mut tables = [[0u8; MAX_IOV * IOVEC_LEN]; MAX_STEPS];
    let mut vectored = false;
    for (k, &(sqe, _)) in chain.iter().enumerate() {
        let (bufs, n, kernel_writes) = match sqe {
            Sqe::Writev { bufs, n, .. } => (bufs, n, false),
            Sqe::Readv { bufs, n, .. } => (bufs, n, true),
            _ => continue,
        };
        if n == 0 || usize::from(n) > MAX_IOV {
            return Err(invalid("a vectored transfer has 1 to 3 buffers"));
        }
        for (j, &buf) in bufs[..usize::from(n)].iter().enumerate() {
            let (ptr, len, _) = buffer(reg, rec, buf, kernel_writes)?;
            let at = j * IOVEC_LEN;
            let half = IOVEC_LEN / 2;
            // The kernel gets the address: its provenance is exposed.
            tables[k][at..at + half].copy_from_slice(&ptr.expose_provenance().to_ne_bytes());
            tables[k][at + half..at + IOVEC_LEN].copy_from_slice(&(len as usize).to_ne_bytes());
        }
        vectored = true;
    }
    if vectored {
        let scratch = rec.scratch.as_mut_slice().expect("scratch pages are write-leased");
        for (k, table) in tables.iter().enumerate().take(n) {
            scratch[iov_at(k)..iov_at(k) + table.len()].copy_from_slice(table);
        }
    }
    let mut want = [0u32; MAX_STEPS];
    let mut entries: [squeue::Entry; MAX_STEPS] = std::array::from_fn(|_| opcode::Nop::new().build());
    for (k, &(sqe, link)) in chain.iter().enumerate() {
        let flags = match link {
            _ if k + 1 == n => Flags::empty(),
            Link::End => return Err(invalid("a chain ends at its last step only")),
            Link::Soft if one_cqe => Flags::IO_LINK | Flags::SKIP_SUCCESS,
            Link::Soft => Flags::IO_LINK,
            Link::Hard => Flags::IO_HARDLINK,
        };
        entries[k] = entry(reg, index, rec, k, sqe)?.flags(flags).user_data(user_data(tag, index, k));
        want[k] = match sqe {
            Sqe::Read { buf, .. } | Sqe::Write { buf, .. } => buf_len(buf),
            Sqe::Writev { bufs, n, .. } | Sqe::Readv { bufs, n, .. } => {
                bufs[..usize::from(n)].iter().map(|&b| buf_len(b)).sum()
            }
            _ => 0,
        };
    }
    Ok(Built { entries, want, n })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips() {
        assert_eq!(decode(user_data(0xdead_beef, 0xab_cdef, 7)), (0xdead_beef, 0xab_cdef, 7));
    }
}

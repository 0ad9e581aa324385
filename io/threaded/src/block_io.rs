//! One block's store or load, run by a worker thread with the op's lease held.
//!
//! Store: a fresh temp file (`O_CREAT|O_EXCL`, a unique name per operation, see
//! [`kvtier_fs::tmpname`]), the whole block written, optionally `fdatasync`ed, closed and
//! renamed onto the final path; on any failure the temp file is removed and nothing is
//! published. A published file is never written: replacing one is a rename of a new inode.
//! A store that evicts a block ([`kvtier_fs::Evict`]) first renames the victim's file to its
//! temp name and overwrites it there (no inode allocation), or unlinks it; either way the
//! victim has left the namespace before a byte is written.
//!
//! Load: the final file opened, its size checked against the expected length, read whole into
//! the slot, and (native format) its header verified. A file that is the wrong length, short
//! or fails verification is corrupt: it is removed before the outcome is reported. A failure
//! that says nothing about the file (descriptor or memory exhaustion, EIO, permissions) keeps it.
//!
//! Extent ops ([`kvtier_fs::Target::Extent`]) are positioned transfers on a file the executor
//! opened ([`kvtier_fs::files`]): a store writes the block in its format at the extent's offset
//! (one `pwritev`, then `fdatasync` with `sync`); a load reads the extent (one `preadv`) and
//! verifies it. A short read or a failed verification is corrupt, and nothing is removed.
//!
//! Batches ([`kvtier_fs::Batch`]) are one positioned `pwritev` (in calls of up to 1024
//! buffers) of every block's header page (from the worker's own pages), its payload straight
//! from its row, and its zero-padded last page where the row's tail is dirty; then `fdatasync`
//! with `sync`. Bytes go as they are (through the buffered descriptor: they are not aligned);
//! a copy reads the record (one `pread`), verifies it as a load does, rewrites its header with
//! the new sequence number and writes it (one `pwrite`).
//!
//! Geometry, the `O_DIRECT` flag and the errno -> outcome mapping are `kvtier_fs`'s
//! ([`BlockLayout`], [`kvtier_fs::direct::open_flag`], [`Outcome`]'s constructors).
//!
//! This module must never report success for a short transfer, and never delete a file for a
//! transient error.

use std::ffi::{CStr, OsStr};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use kvtier_core::Direction;
use kvtier_fs::direct::{open_flag, DIRECT_ALIGN};
use kvtier_fs::files::ExtentFile;
use kvtier_fs::format::{self, HEADER_LEN};
use kvtier_fs::outcome::WRONG_LENGTH;
use kvtier_fs::region::Lease;
use kvtier_fs::{Batch, BatchData, BlockFormat, BlockLayout, Evict, Extent, FileOp, OpError, Outcome, Target};

use crate::sys::{self, AlignedBuf, FileStat};

/// How many fresh temp names a store tries when its name already exists (only a stale temp
/// file of a crashed process that had this pid can collide).
const TEMP_ATTEMPTS: usize = 8;

/// `path` as a NUL-terminated string in `buf` (reused, so no allocation per op).
fn c_path<'a>(buf: &'a mut Vec<u8>, path: &OsStr) -> Result<&'a CStr, OpError> {
    buf.clear();
    buf.extend_from_slice(path.as_bytes());
    buf.push(0);
    CStr::from_bytes_with_nul(buf).map_err(|_| OpError::BadPath)
}

/// The buffers a store writes, in file order: the native header (encoded into `header`), the
/// payload straight from `row`, and its zero-padded tail through `tail` when the row's bytes
/// past the block are not zero. Returns them and how many there are.
fn store_bufs<'a>(
    format: &BlockFormat,
    layout: &BlockLayout,
    row: &'a [u8],
    header: &'a mut AlignedBuf,
    tail: &'a mut AlignedBuf,
) -> ([&'a [u8]; 3], usize) {
    let BlockFormat::Native { namespace, key } = format else {
        return ([&row[..layout.block], &[], &[]], 1);
    };
    let header = header.as_mut_slice();
    let out: &mut [u8; HEADER_LEN] = (&mut *header).try_into().expect("header buffer is HEADER_LEN bytes");
    format::encode_header(namespace, key, &row[..layout.block], out);
    let (from_row, tail_len) = layout.store_split(row);
    if tail_len == 0 {
        return ([&*header, &row[..from_row], &[]], 2);
    }
    let tail = tail.as_mut_slice();
    layout.fill_tail(row, from_row, tail);
    ([&*header, &row[..from_row], &tail[..tail_len]], 3)
}

/// A short transfer's error.
fn short(done: usize, want: usize) -> Option<OpError> {
    (done != want).then_some(OpError::Short)
}

/// Per-worker state: the flag, 4096-aligned header and last-page buffers, path buffers, and
/// the pages batches and copies use (grown to the largest seen).
pub struct BlockIo {
    o_direct: bool,
    header: AlignedBuf,
    tail: AlignedBuf,
    path: Vec<u8>,
    temp: Vec<u8>,
    victim: Vec<u8>,
    dir: Vec<u8>,
    pages: Option<AlignedBuf>,
}

/// `buf`, grown to at least `len` bytes (4096-aligned, zeroed when new).
fn grown(buf: &mut Option<AlignedBuf>, len: usize) -> io::Result<&mut AlignedBuf> {
    if buf.as_ref().is_none_or(|b| b.len() < len) {
        *buf = Some(AlignedBuf::new(len.max(DIRECT_ALIGN).next_multiple_of(DIRECT_ALIGN), DIRECT_ALIGN)?);
    }
    Ok(buf.as_mut().expect("just made"))
}

impl BlockIo {
    /// A worker's state; `o_direct` enables `O_DIRECT` for every aligned transfer.
    pub fn new(o_direct: bool) -> io::Result<Self> {
        Ok(BlockIo {
            o_direct,
            header: AlignedBuf::new(HEADER_LEN, DIRECT_ALIGN)?,
            tail: AlignedBuf::new(DIRECT_ALIGN, DIRECT_ALIGN)?,
            path: Vec::with_capacity(256),
            temp: Vec::with_capacity(256),
            victim: Vec::with_capacity(256),
            dir: Vec::with_capacity(256),
            pages: None,
        })
    }

    /// Runs `batch` on `file` with `leases` (read leases on its rows, co-indexed with its
    /// blocks) and drops them before returning.
    pub fn run_batch(&mut self, batch: &Batch, leases: Vec<Lease>, file: &ExtentFile, row_bytes: usize) -> Outcome {
        let outcome = match &batch.data {
            BatchData::Blocks(blocks) => {
                self.write_blocks(batch, blocks, &leases, file).map_or_else(Outcome::store_failure, |()| Outcome::Ok)
            }
            BatchData::Bytes(bytes) => {
                let fd = file.fd(false);
                match sys::pwritev_all(fd, &[bytes], batch.offset) {
                    Ok(n) if n == bytes.len() => Ok(()),
                    Ok(_) => Err(OpError::Short),
                    Err(e) => Err(e.into()),
                }
                .and_then(|()| self.sync(batch, fd))
                .map_or_else(Outcome::store_failure, |()| Outcome::Ok)
            }
            BatchData::Copy { from, format, seq } => self.copy(batch, *from, format, *seq, file, row_bytes),
        };
        drop(leases);
        outcome
    }

    fn sync(&self, batch: &Batch, fd: std::os::fd::BorrowedFd<'_>) -> Result<(), OpError> {
        if batch.sync {
            sys::fdatasync(fd)?;
        }
        Ok(())
    }

    fn write_blocks(
        &mut self,
        batch: &Batch,
        blocks: &[kvtier_fs::BatchBlock],
        leases: &[Lease],
        file: &ExtentFile,
    ) -> Result<(), OpError> {
        // Two pages per block: its header, and its last page if the row's tail is dirty.
        let pages = match grown(&mut self.pages, 2 * blocks.len() * DIRECT_ALIGN) {
            Ok(p) => p.as_mut_slice(),
            Err(e) => return Err(e.into()),
        };
        let mut splits = Vec::with_capacity(blocks.len());
        let mut aligned = batch.offset % DIRECT_ALIGN as u64 == 0;
        for ((block, lease), two) in blocks.iter().zip(leases).zip(pages.chunks_exact_mut(2 * DIRECT_ALIGN)) {
            let row = lease.as_slice();
            let layout = BlockLayout::new(&block.format, lease.block().len(), row.len())?;
            let (header, tail) = two.split_at_mut(DIRECT_ALIGN);
            let header: &mut [u8; HEADER_LEN] = header.try_into().expect("a page is HEADER_LEN bytes");
            let (from_row, tail_len) = layout.encode_store(&block.format, block.seq, row, header, tail);
            aligned &= layout.direct_ok(row, 0);
            splits.push((layout.header, from_row, tail_len));
        }
        let mut bufs: Vec<&[u8]> = Vec::with_capacity(3 * blocks.len());
        for ((lease, two), &(header, from_row, tail)) in
            leases.iter().zip(pages.chunks_exact(2 * DIRECT_ALIGN)).zip(&splits)
        {
            if header > 0 {
                bufs.push(&two[..header]);
            }
            bufs.push(&lease.as_slice()[..from_row]);
            if tail > 0 {
                bufs.push(&two[DIRECT_ALIGN..DIRECT_ALIGN + tail]);
            }
        }
        let want: usize = bufs.iter().map(|b| b.len()).sum();
        let fd = file.fd(self.o_direct && aligned);
        let done = sys::pwritev_all(fd, &bufs, batch.offset)?;
        if let Some(e) = short(done, want) {
            return Err(e);
        }
        self.sync(batch, fd)
    }

    fn copy(
        &mut self,
        batch: &Batch,
        from: u64,
        format: &BlockFormat,
        seq: u64,
        file: &ExtentFile,
        row_bytes: usize,
    ) -> Outcome {
        let stride = row_bytes.next_multiple_of(DIRECT_ALIGN);
        let layout = match BlockLayout::new(format, row_bytes, stride) {
            Ok(l) => l,
            Err(e) => return Outcome::Failed(e),
        };
        let len = layout.file_len() as usize;
        let buf = match grown(&mut self.pages, len) {
            Ok(p) => &mut p.as_mut_slice()[..len],
            Err(e) => return Outcome::Failed(e.into()),
        };
        let align = DIRECT_ALIGN as u64;
        let aligned = self.o_direct && len as u64 % align == 0 && from % align == 0 && batch.offset % align == 0;
        let fd = file.fd(aligned);
        match sys::preadv_all(fd, &mut [&mut *buf], from) {
            Ok(n) if n == len => {}
            Ok(_) => return Outcome::Corrupt(WRONG_LENGTH),
            Err(e) => return Outcome::load_read_failure(e.into()),
        }
        let (header, payload) = buf.split_at_mut(layout.header);
        if let Err(reason) = format.verify(header, &payload[..layout.block]) {
            return Outcome::Corrupt(reason);
        }
        if let Ok(h) = format::decode_header(header) {
            let header: &mut [u8; HEADER_LEN] = header.try_into().expect("a native header is HEADER_LEN bytes");
            h.with_seq(seq).encode(header);
        }
        let written = match sys::pwritev_all(fd, &[&*buf], batch.offset) {
            Ok(n) => short(n, len).map_or(Ok(()), Err),
            Err(e) => Err(e.into()),
        };
        match written.and_then(|()| self.sync(batch, fd)) {
            Ok(()) => Outcome::Ok,
            Err(e) => Outcome::store_failure(e),
        }
    }

    /// Runs `op` with `lease` (read for a store, write for a load) on its target (`file`: the
    /// opened file of an extent op, `None` if the op's file id is unknown) and drops the lease
    /// before returning, so the slot is free again when the outcome is reported.
    pub fn run(&mut self, op: &FileOp, mut lease: Lease, file: Option<&ExtentFile>) -> Outcome {
        let outcome = match BlockLayout::new(&op.format, lease.block().len(), lease.as_slice().len()) {
            Err(e) => Outcome::Failed(e),
            Ok(layout) => match (&op.target, op.dir) {
                (Target::Path(path), Direction::Store) => self.store(op, path, &layout, &lease),
                (Target::Path(path), Direction::Load) => self.load(op, path, &layout, &mut lease),
                (Target::Extent(e), dir) => match file {
                    None => Outcome::Failed(OpError::Invalid),
                    Some(_) if op.evict.is_some() => Outcome::Failed(OpError::Invalid),
                    Some(_) if e.len != layout.file_len() => Outcome::Failed(OpError::Geometry),
                    Some(file) if dir == Direction::Store => self.store_extent(op, e, file, &layout, &lease),
                    Some(file) => self.load_extent(op, e, file, &layout, &mut lease),
                },
            },
        };
        drop(lease);
        outcome
    }

    fn store(&mut self, op: &FileOp, path: &Path, layout: &BlockLayout, lease: &Lease) -> Outcome {
        let row = lease.as_slice();
        let (bufs, n) = store_bufs(&op.format, layout, row, &mut self.header, &mut self.tail);
        let direct = open_flag(self.o_direct, layout.direct_ok(row, 0));
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | direct;
        let final_path = match c_path(&mut self.path, path.as_os_str()) {
            Ok(p) => p,
            Err(e) => return Outcome::Failed(e),
        };
        // Directories this store creates: with `sync`, their entries are made durable too.
        let mut created = Vec::new();
        let mut reused = match &op.evict {
            Some(evict) => {
                // Directories made for a reused victim count as this store's.
                let mut make_dirs = |dir: &Path| match kvtier_fs::files::create_dirs(dir, op.mode) {
                    Ok(dirs) => {
                        created.extend(dirs);
                        true
                    }
                    Err(_) => false,
                };
                match evict_victim(&mut self.victim, &mut self.temp, evict, path, direct, layout, &mut make_dirs) {
                    Ok(fd) => fd,
                    Err(e) => return Outcome::Failed(e),
                }
            }
            None => None,
        };

        let mut made_dirs = !created.is_empty();
        let mut attempts = 0;
        let fd = loop {
            if let Some(fd) = reused.take() {
                break fd;
            }
            let temp_name = kvtier_fs::tmpname::temp_path(path, kvtier_fs::tmpname::next_seq());
            let temp = match c_path(&mut self.temp, temp_name.as_os_str()) {
                Ok(p) => p,
                Err(e) => return Outcome::Failed(e),
            };
            match sys::open(temp, flags, op.mode.file()) {
                Ok(fd) => break fd,
                // The parent directories are created on first need only, so a store into an
                // existing directory costs no mkdir or stat.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && !made_dirs => {
                    made_dirs = true;
                    let Some(parent) = path.parent() else {
                        return Outcome::Failed(e.into());
                    };
                    match kvtier_fs::files::create_dirs(parent, op.mode) {
                        Ok(dirs) => created.extend(dirs),
                        Err(e) => return Outcome::store_failure(e.into()),
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) && attempts + 1 < TEMP_ATTEMPTS => attempts += 1,
                Err(e) => {
                    // `open` may create the file before refusing O_DIRECT (EINVAL).
                    if e.raw_os_error() == Some(libc::EINVAL) {
                        let _ = sys::unlink(temp);
                    }
                    return Outcome::store_failure(e.into());
                }
            }
        };
        // `self.temp` holds the temp path that was opened.
        let temp = CStr::from_bytes_with_nul(&self.temp).expect("checked by c_path");
        if let Err(e) = write_and_publish(fd, &bufs[..n], op.sync, temp, final_path) {
            let _ = sys::unlink(temp);
            return Outcome::store_failure(e);
        }
        if op.sync {
            if let Err(e) = sync_dirs(&mut self.dir, path, &created) {
                // Published but not durable: it goes, so the caller is never told a block is
                // stored that a power cut could take away.
                let final_path = CStr::from_bytes_with_nul(&self.path).expect("checked by c_path");
                let _ = sys::unlink(final_path);
                return Outcome::store_failure(e);
            }
        }
        Outcome::Ok
    }

    fn load(&mut self, op: &FileOp, path: &Path, layout: &BlockLayout, lease: &mut Lease) -> Outcome {
        let Some(row) = lease.as_mut_slice() else {
            return Outcome::Failed(OpError::Invalid);
        };
        let flags = libc::O_RDONLY | open_flag(self.o_direct, layout.direct_ok(row, 0));
        let path = match c_path(&mut self.path, path.as_os_str()) {
            Ok(p) => p,
            Err(e) => return Outcome::Failed(e),
        };
        let fd = match sys::open(path, flags, 0) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Outcome::NotFound,
            Err(e) => return Outcome::load_open_failure(e.into()),
        };
        let st = match sys::fstat(fd.as_fd()) {
            Ok(st) => st,
            Err(e) => return Outcome::Transient(e.into()),
        };
        if !st.regular {
            return Outcome::Failed(OpError::Invalid);
        }
        if st.size != layout.file_len() {
            return corrupt(path, fd, &st, WRONG_LENGTH);
        }
        let header = self.header.as_mut_slice();
        let read = match layout.native() {
            false => sys::preadv_all(fd.as_fd(), &mut [&mut row[..layout.payload]], 0),
            true => sys::preadv_all(fd.as_fd(), &mut [&mut *header, &mut row[..layout.payload]], 0),
        };
        match read {
            Ok(n) if n as u64 == layout.file_len() => {}
            Ok(_) => return corrupt(path, fd, &st, kvtier_fs::outcome::SHORT_READ),
            Err(e) => return Outcome::load_read_failure(e.into()),
        }
        match verify(&op.format, header, &row[..layout.block]) {
            Ok(()) => Outcome::Ok,
            Err(reason) => corrupt(path, fd, &st, reason),
        }
    }

    fn store_extent(
        &mut self,
        op: &FileOp,
        e: &Extent,
        file: &ExtentFile,
        layout: &BlockLayout,
        lease: &Lease,
    ) -> Outcome {
        let row = lease.as_slice();
        let (bufs, n) = store_bufs(&op.format, layout, row, &mut self.header, &mut self.tail);
        let fd = file.fd(self.o_direct && layout.direct_ok(row, e.offset));
        let written = sys::pwritev_all(fd, &bufs[..n], e.offset).map_err(OpError::from).and_then(|done| {
            let want = bufs[..n].iter().map(|b| b.len()).sum();
            short(done, want).map_or(Ok(()), Err)
        });
        let synced = written.and_then(|()| if op.sync { sys::fdatasync(fd).map_err(OpError::from) } else { Ok(()) });
        match synced {
            Ok(()) => Outcome::Ok,
            Err(e) => Outcome::store_failure(e),
        }
    }

    fn load_extent(
        &mut self,
        op: &FileOp,
        e: &Extent,
        file: &ExtentFile,
        layout: &BlockLayout,
        lease: &mut Lease,
    ) -> Outcome {
        let Some(row) = lease.as_mut_slice() else {
            return Outcome::Failed(OpError::Invalid);
        };
        let fd = file.fd(self.o_direct && layout.direct_ok(row, e.offset));
        let header = self.header.as_mut_slice();
        let read = match layout.native() {
            false => sys::preadv_all(fd, &mut [&mut row[..layout.payload]], e.offset),
            true => sys::preadv_all(fd, &mut [&mut *header, &mut row[..layout.payload]], e.offset),
        };
        match read {
            Ok(n) if n as u64 == layout.file_len() => {}
            Ok(_) => return Outcome::Corrupt(WRONG_LENGTH),
            Err(e) => return Outcome::load_read_failure(e.into()),
        }
        match verify(&op.format, header, &row[..layout.block]) {
            Ok(()) => Outcome::Ok,
            Err(reason) => Outcome::Corrupt(reason),
        }
    }
}

/// Checks a native block's header against the expected namespace, key and payload (a vLLM
/// block has nothing to check); `Err` is the corruption's reason.
fn verify(format: &BlockFormat, header: &[u8], block: &[u8]) -> Result<(), &'static str> {
    let BlockFormat::Native { namespace, key } = format else { return Ok(()) };
    format::decode_header(header).and_then(|h| h.check(namespace, key, block)).map_err(|e| e.reason())
}

/// Takes `evict`'s victim out of the namespace before a store to `final_path`: with `reuse`,
/// renames it to a fresh temp name (left in `temp`, creating the new block's directory if
/// need be) and opens it for overwriting, cut to the new block's length if it has another (no
/// byte of a longer victim may outlive the store); otherwise, or if that fails (the victim is
/// gone), unlinks it. Returns the reused file, or `None` when the store must create a fresh
/// one. `Err` only for a path that cannot be a C string.
fn evict_victim(
    victim_buf: &mut Vec<u8>,
    temp_buf: &mut Vec<u8>,
    evict: &Evict,
    final_path: &Path,
    direct: libc::c_int,
    layout: &BlockLayout,
    make_dirs: &mut dyn FnMut(&Path) -> bool,
) -> Result<Option<OwnedFd>, OpError> {
    let victim = c_path(victim_buf, evict.path.as_os_str())?;
    if evict.reuse {
        let temp_name = kvtier_fs::tmpname::temp_path(final_path, kvtier_fs::tmpname::next_seq());
        let temp = c_path(temp_buf, temp_name.as_os_str())?;
        let mut renamed = sys::rename(victim, temp);
        if renamed.as_ref().is_err_and(|e| e.raw_os_error() == Some(libc::ENOENT)) {
            // Most often the new block's directory does not exist yet (vLLM's layout gives
            // nearly every block a directory of its own): make it, and try once more.
            if final_path.parent().is_some_and(make_dirs) {
                renamed = sys::rename(victim, temp);
            }
        }
        if renamed.is_ok() {
            let opened = sys::open(temp, libc::O_WRONLY | direct, 0).and_then(|fd| {
                let len = sys::fstat(fd.as_fd())?.size;
                if len != layout.file_len() {
                    sys::ftruncate(fd.as_fd(), layout.file_len())?;
                }
                Ok(fd)
            });
            match opened {
                Ok(fd) => return Ok(Some(fd)),
                Err(_) => {
                    let _ = sys::unlink(temp);
                    return Ok(None);
                }
            }
        }
    }
    // Gone already, or not reusable: it leaves the namespace all the same.
    let _ = sys::unlink(victim);
    Ok(None)
}

/// Makes a published block's name durable (`fsync` of the directory holding it), and the
/// names of the directories the store created (`fsync` of each one's parent): a rename is only
/// as durable as its directory, and `fdatasync` of the file does not sync it.
fn sync_dirs(buf: &mut Vec<u8>, final_path: &Path, created: &[PathBuf]) -> Result<(), OpError> {
    for dir in final_path.parent().into_iter().chain(created.iter().filter_map(|d| d.parent())) {
        let dir = c_path(buf, dir.as_os_str())?;
        let fd = sys::open(dir, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        sys::fsync(fd.as_fd())?;
        sys::close(fd)?;
    }
    Ok(())
}

/// Writes `bufs` to the temp file `fd`, syncs it if asked, closes it and renames it onto
/// `final_path`. The caller removes the temp file on error.
fn write_and_publish(fd: OwnedFd, bufs: &[&[u8]], sync: bool, temp: &CStr, final_path: &CStr) -> Result<(), OpError> {
    let want: usize = bufs.iter().map(|b| b.len()).sum();
    let done = sys::pwritev_all(fd.as_fd(), bufs, 0)?;
    if let Some(e) = short(done, want) {
        return Err(e);
    }
    if sync {
        sys::fdatasync(fd.as_fd())?;
    }
    sys::close(fd)?;
    Ok(sys::rename(temp, final_path)?)
}

/// Removes the corrupt file at `path` if `path` still names the file that was read (a file a
/// concurrent writer renamed into place since is left alone: [`kvtier_fs::files::remove_if_same`]
/// moves the file aside before it looks, so no rename can slip between a check and the
/// unlink) and reports it.
fn corrupt(path: &CStr, fd: OwnedFd, read: &FileStat, reason: &'static str) -> Outcome {
    drop(fd);
    let (dev, ino) = read.dev_ino;
    let path = Path::new(OsStr::from_bytes(path.to_bytes()));
    let _ = kvtier_fs::files::remove_if_same(path, kvtier_fs::vfs::Identity { dev, ino });
    Outcome::Corrupt(reason)
}

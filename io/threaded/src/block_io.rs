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
//! This module must never report success for a short transfer, and never delete a file for a
//! transient error.

use std::ffi::{CStr, OsStr};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use kvtier_fs::format::{self, HEADER_LEN};
use kvtier_fs::region::Lease;
use kvtier_fs::{BlockFormat, Evict, FileOp, OpKind, Outcome};

use crate::sys::{self, AlignedBuf, FileStat};

/// The alignment `O_DIRECT` transfers use: buffer address, length and file offset.
pub const DIRECT_ALIGN: usize = 4096;

/// How many fresh temp names a store tries when its name already exists (only a stale temp
/// file of a crashed process that had this pid can collide).
const TEMP_ATTEMPTS: usize = 8;

/// Errors after which a later attempt may succeed: resource exhaustion and interruption.
fn is_resource_error(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::EINTR | libc::EAGAIN))
}

/// A store failure: nothing was published. Exhaustion is transient; everything else (ENOSPC,
/// EDQUOT, EROFS, EACCES, EIO...) fails.
fn store_failure(e: io::Error) -> Outcome {
    if is_resource_error(&e) {
        Outcome::Transient(e)
    } else {
        Outcome::Failed(e)
    }
}

/// A load's `open` failed for a reason other than `ENOENT`: the listed errors say nothing about
/// the file, which is kept.
fn load_open_failure(e: io::Error) -> Outcome {
    if is_resource_error(&e) || matches!(e.raw_os_error(), Some(libc::EIO | libc::EACCES | libc::EPERM)) {
        Outcome::Transient(e)
    } else {
        Outcome::Failed(e)
    }
}

/// A load's `read` failed: an I/O error is transient (the file is kept); a refused request
/// (`EINVAL`: an `O_DIRECT` transfer the file system rejects) fails.
fn load_read_failure(e: io::Error) -> Outcome {
    if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EISDIR | libc::EBADF | libc::EFAULT)) {
        Outcome::Failed(e)
    } else {
        Outcome::Transient(e)
    }
}

/// `path` as a NUL-terminated string in `buf` (reused, so no allocation per op).
fn c_path<'a>(buf: &'a mut Vec<u8>, path: &OsStr) -> io::Result<&'a CStr> {
    buf.clear();
    buf.extend_from_slice(path.as_bytes());
    buf.push(0);
    CStr::from_bytes_with_nul(buf).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// The native format's padded payload length for a `row_bytes` block, if it fits the row's
/// `stride` (it does for every [`kvtier_fs::region::PrimaryRegion`]: both round up to 4096).
fn padded_len(row_bytes: usize, stride: usize) -> Option<usize> {
    usize::try_from(format::padded_payload_len(row_bytes as u64)).ok().filter(|&p| p <= stride)
}

fn stride_too_short() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "the native padded payload is longer than the row stride")
}

/// `O_DIRECT` when it is enabled and the transfer is aligned.
fn direct_flag(o_direct: bool, aligned: bool) -> libc::c_int {
    if o_direct && aligned {
        libc::O_DIRECT
    } else {
        0
    }
}

fn short(what: &'static str, done: usize, want: usize) -> io::Error {
    io::Error::new(io::ErrorKind::WriteZero, format!("short {what}: {done} of {want} bytes"))
}

/// Per-worker state: the flag, 4096-aligned header and last-page buffers, path buffers.
pub struct BlockIo {
    o_direct: bool,
    header: AlignedBuf,
    tail: AlignedBuf,
    path: Vec<u8>,
    temp: Vec<u8>,
    victim: Vec<u8>,
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
        })
    }

    /// Runs `op` with `lease` (read for a store, write for a load) and drops the lease before
    /// returning, so the slot is free again when the outcome is published.
    pub fn run(&mut self, op: &FileOp, mut lease: Lease) -> Outcome {
        let outcome = match op.kind {
            OpKind::Store => self.store(op, &lease),
            OpKind::Load => self.load(op, &mut lease),
        };
        drop(lease);
        outcome
    }

    fn store(&mut self, op: &FileOp, lease: &Lease) -> Outcome {
        let row = lease.as_slice();
        let row_bytes = lease.block().len();
        let row_aligned = row.as_ptr() as usize % DIRECT_ALIGN == 0;
        let header = self.header.as_mut_slice();
        let (bufs, n, aligned): ([&[u8]; 3], usize, bool) = match &op.format {
            BlockFormat::Vllm => ([&row[..row_bytes], &[], &[]], 1, row_aligned && row_bytes % DIRECT_ALIGN == 0),
            BlockFormat::Native { namespace, key } => {
                let Some(padded) = padded_len(row_bytes, row.len()) else {
                    return Outcome::Failed(stride_too_short());
                };
                let out: &mut [u8; HEADER_LEN] = (&mut *header).try_into().expect("header buffer is HEADER_LEN bytes");
                format::encode_header(namespace, key, &row[..row_bytes], out);
                let aligned = row_aligned && padded % DIRECT_ALIGN == 0;
                if row[row_bytes..padded].iter().all(|&b| b == 0) {
                    ([&*header, &row[..padded], &[]], 2, aligned)
                } else {
                    // The format pads the payload with zeros, and the row's tail may hold
                    // stale bytes the read lease does not let us clear: the last page goes
                    // through a zeroed bounce buffer instead.
                    let full = row_bytes / DIRECT_ALIGN * DIRECT_ALIGN;
                    let last = &mut self.tail.as_mut_slice()[..padded - full];
                    last.fill(0);
                    last[..row_bytes - full].copy_from_slice(&row[full..row_bytes]);
                    ([&*header, &row[..full], &*last], 3, aligned)
                }
            }
        };
        let direct = direct_flag(self.o_direct, aligned);
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | direct;
        let final_path = match c_path(&mut self.path, op.path.as_os_str()) {
            Ok(p) => p,
            Err(e) => return Outcome::Failed(e),
        };
        let mut reused = match &op.evict {
            Some(evict) => match evict_victim(&mut self.victim, &mut self.temp, evict, &op.path, direct) {
                Ok(fd) => fd,
                Err(e) => return Outcome::Failed(e),
            },
            None => None,
        };

        let mut made_dirs = false;
        let mut attempts = 0;
        let fd = loop {
            if let Some(fd) = reused.take() {
                break fd;
            }
            let temp_name = kvtier_fs::tmpname::temp_path(&op.path, kvtier_fs::tmpname::next_seq());
            let temp = match c_path(&mut self.temp, temp_name.as_os_str()) {
                Ok(p) => p,
                Err(e) => return Outcome::Failed(e),
            };
            match sys::open(temp, flags, 0o644) {
                Ok(fd) => break fd,
                // The parent directories are created on first need only, so a store into an
                // existing directory costs no mkdir or stat.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && !made_dirs => {
                    made_dirs = true;
                    let Some(parent) = op.path.parent() else {
                        return Outcome::Failed(e);
                    };
                    if let Err(e) = std::fs::create_dir_all(parent) {
                        return store_failure(e);
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) && attempts + 1 < TEMP_ATTEMPTS => attempts += 1,
                Err(e) => {
                    // `open` may create the file before refusing O_DIRECT (EINVAL).
                    if e.raw_os_error() == Some(libc::EINVAL) {
                        let _ = sys::unlink(temp);
                    }
                    return store_failure(e);
                }
            }
        };
        // `self.temp` holds the temp path that was opened.
        let temp = CStr::from_bytes_with_nul(&self.temp).expect("checked by c_path");
        match write_and_publish(fd, &bufs[..n], op.sync, temp, final_path) {
            Ok(()) => Outcome::Ok,
            Err(e) => {
                let _ = sys::unlink(temp);
                store_failure(e)
            }
        }
    }

    fn load(&mut self, op: &FileOp, lease: &mut Lease) -> Outcome {
        let row_bytes = lease.block().len();
        let Some(row) = lease.as_mut_slice() else {
            return Outcome::Failed(io::Error::new(io::ErrorKind::InvalidInput, "a load needs a write lease"));
        };
        let row_aligned = row.as_ptr() as usize % DIRECT_ALIGN == 0;
        // The file's expected length, and how much of it lands in the row.
        let (expected, into_row, aligned) = match &op.format {
            BlockFormat::Vllm => (row_bytes as u64, row_bytes, row_aligned && row_bytes % DIRECT_ALIGN == 0),
            BlockFormat::Native { .. } => {
                let Some(padded) = padded_len(row_bytes, row.len()) else {
                    return Outcome::Failed(stride_too_short());
                };
                (format::native_file_len(row_bytes as u64), padded, row_aligned && padded % DIRECT_ALIGN == 0)
            }
        };
        let flags = libc::O_RDONLY | direct_flag(self.o_direct, aligned);
        let path = match c_path(&mut self.path, op.path.as_os_str()) {
            Ok(p) => p,
            Err(e) => return Outcome::Failed(e),
        };
        let fd = match sys::open(path, flags, 0) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Outcome::NotFound,
            Err(e) => return load_open_failure(e),
        };
        let st = match sys::fstat(fd.as_fd()) {
            Ok(st) => st,
            Err(e) => return Outcome::Transient(e),
        };
        if !st.regular {
            return Outcome::Failed(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
        }
        if st.size != expected {
            return corrupt(path, fd, &st, "wrong length");
        }
        let header = self.header.as_mut_slice();
        let read = match &op.format {
            BlockFormat::Vllm => sys::preadv_all(fd.as_fd(), &mut [&mut row[..into_row]], 0),
            BlockFormat::Native { .. } => sys::preadv_all(fd.as_fd(), &mut [&mut *header, &mut row[..into_row]], 0),
        };
        match read {
            Ok(n) if n as u64 == expected => {}
            Ok(_) => return corrupt(path, fd, &st, "short read"),
            Err(e) => return load_read_failure(e),
        }
        if let BlockFormat::Native { namespace, key } = &op.format {
            let verified = format::decode_header(header).and_then(|h| h.check(namespace, key, &row[..row_bytes]));
            if let Err(e) = verified {
                return corrupt(path, fd, &st, e.reason());
            }
        }
        Outcome::Ok
    }
}

/// Takes `evict`'s victim out of the namespace before a store to `final_path`: with `reuse`,
/// renames it to a fresh temp name (left in `temp`, creating the new block's directory if
/// need be) and opens it for overwriting; otherwise, or if that fails (the victim is gone),
/// unlinks it. Returns the reused file, or `None` when the store must create a fresh one.
/// `Err` only for a path that cannot be a C string.
fn evict_victim(
    victim_buf: &mut Vec<u8>,
    temp_buf: &mut Vec<u8>,
    evict: &Evict,
    final_path: &std::path::Path,
    direct: libc::c_int,
) -> io::Result<Option<OwnedFd>> {
    let victim = c_path(victim_buf, evict.path.as_os_str())?;
    if evict.reuse {
        let temp_name = kvtier_fs::tmpname::temp_path(final_path, kvtier_fs::tmpname::next_seq());
        let temp = c_path(temp_buf, temp_name.as_os_str())?;
        let mut renamed = sys::rename(victim, temp);
        if renamed.as_ref().is_err_and(|e| e.raw_os_error() == Some(libc::ENOENT)) {
            // Most often the new block's directory does not exist yet (vLLM's layout gives
            // nearly every block a directory of its own): make it, and try once more.
            if final_path.parent().is_some_and(|dir| std::fs::create_dir_all(dir).is_ok()) {
                renamed = sys::rename(victim, temp);
            }
        }
        if renamed.is_ok() {
            match sys::open(temp, libc::O_WRONLY | direct, 0) {
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

/// Writes `bufs` to the temp file `fd`, syncs it if asked, closes it and renames it onto
/// `final_path`. The caller removes the temp file on error.
fn write_and_publish(fd: OwnedFd, bufs: &[&[u8]], sync: bool, temp: &CStr, final_path: &CStr) -> io::Result<()> {
    let want: usize = bufs.iter().map(|b| b.len()).sum();
    let done = sys::pwritev_all(fd.as_fd(), bufs, 0)?;
    if done != want {
        return Err(short("write", done, want));
    }
    if sync {
        sys::fdatasync(fd.as_fd())?;
    }
    sys::close(fd)?;
    sys::rename(temp, final_path)
}

/// Removes the corrupt file at `path` (if `path` still names the file that was read: a file a
/// concurrent writer renamed into place since is left alone) and reports it.
fn corrupt(path: &CStr, fd: OwnedFd, read: &FileStat, reason: &'static str) -> Outcome {
    drop(fd);
    if sys::stat(path).is_ok_and(|now| now.dev_ino == read.dev_ino) {
        let _ = sys::unlink(path);
    }
    Outcome::Corrupt(reason)
}

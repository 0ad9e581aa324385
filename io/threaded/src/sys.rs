//! The syscalls of the threaded executor: thin wrappers over `libc`, and the one place of this
//! crate with `unsafe`.
//!
//! Every wrapper takes Rust references (paths as `&CStr`, buffers as slices, descriptors as
//! [`BorrowedFd`]/[`OwnedFd`]), so the buffer a syscall reads or writes is valid for its whole
//! length while the call runs: callers pass slices borrowed from a held
//! [`kvtier_fs::region::Lease`] or from an [`AlignedBuf`]. Reads and writes retry `EINTR` and
//! continue after a partial transfer; they return how many bytes moved, which the caller checks
//! (a short count is never success).

use std::alloc::{self, Layout};
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::ptr::NonNull;

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `open(path, flags | O_CLOEXEC, mode)`, retrying `EINTR`.
pub fn open(path: &CStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: `path` is a valid NUL-terminated string for the duration of the call; the
        // mode is passed as the variadic `c_uint` `open` expects.
        let rc = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) };
        match cvt(rc) {
            // SAFETY: `open` just returned `fd`: a fresh descriptor owned by nothing else.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// `close(fd)`, reporting its error (a store must not succeed if closing its file failed).
/// The descriptor is released whatever the result (Linux never keeps it open after `close`, so
/// it is not retried on `EINTR`).
pub fn close(fd: OwnedFd) -> io::Result<()> {
    let raw = fd.into_raw_fd();
    // SAFETY: `into_raw_fd` gave up ownership of `raw`, so it is closed exactly once, here.
    cvt(unsafe { libc::close(raw) }).map(drop)
}

/// `fdatasync(fd)`, retrying `EINTR`.
pub fn fdatasync(fd: BorrowedFd<'_>) -> io::Result<()> {
    loop {
        // SAFETY: `fd` is an open descriptor borrowed for the call; no memory is passed.
        match cvt(unsafe { libc::fdatasync(fd.as_raw_fd()) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r.map(drop),
        }
    }
}

/// `fsync(fd)`, retrying `EINTR` (a directory's: its entries become durable).
pub fn fsync(fd: BorrowedFd<'_>) -> io::Result<()> {
    loop {
        // SAFETY: `fd` is an open descriptor borrowed for the call; no memory is passed.
        match cvt(unsafe { libc::fsync(fd.as_raw_fd()) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r.map(drop),
        }
    }
}

/// `ftruncate(fd, len)`, retrying `EINTR`.
pub fn ftruncate(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    loop {
        // SAFETY: `fd` is an open descriptor borrowed for the call; no memory is passed.
        match cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), len) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r.map(drop),
        }
    }
}

/// What [`fstat`] reports of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStat {
    /// Size in bytes.
    pub size: u64,
    /// A regular file (not a directory, device, FIFO...).
    pub regular: bool,
    /// Device and inode: the file's identity.
    pub dev_ino: (u64, u64),
}

fn file_stat(st: &libc::stat) -> FileStat {
    FileStat {
        size: st.st_size as u64,
        regular: st.st_mode & libc::S_IFMT == libc::S_IFREG,
        dev_ino: (st.st_dev, st.st_ino),
    }
}

/// `fstat(fd)`.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<FileStat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is valid for writes of one `stat`, and `fd` is an open descriptor borrowed
    // for the call.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: `fstat` succeeded, so it initialised `st`.
    Ok(file_stat(unsafe { st.assume_init_ref() }))
}

/// `rename(from, to)`: atomically replaces `to`.
pub fn rename(from: &CStr, to: &CStr) -> io::Result<()> {
    // SAFETY: both paths are valid NUL-terminated strings for the duration of the call.
    cvt(unsafe { libc::rename(from.as_ptr(), to.as_ptr()) }).map(drop)
}

/// `unlink(path)`.
pub fn unlink(path: &CStr) -> io::Result<()> {
    // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
    cvt(unsafe { libc::unlink(path.as_ptr()) }).map(drop)
}

/// Skips `done` bytes of `lens`, returning the index of the first buffer not fully done and the
/// offset into it.
fn position(lens: impl Iterator<Item = usize>, mut done: usize) -> (usize, usize) {
    for (i, len) in lens.enumerate() {
        if done < len {
            return (i, done);
        }
        done -= len;
    }
    (usize::MAX, 0)
}

/// Most buffers one `preadv`/`pwritev` call takes (Linux's `IOV_MAX`); longer lists go in
/// several calls.
const IOV_MAX: usize = 1024;

/// Writes all of `bufs`, in order, at file offset `offset` (`pwritev`, up to [`IOV_MAX`]
/// buffers a call), continuing after partial writes and retrying `EINTR`. Returns the bytes
/// written: less than the total only if the kernel wrote nothing at some point (the caller
/// treats that as failure).
pub fn pwritev_all(fd: BorrowedFd<'_>, bufs: &[&[u8]], offset: u64) -> io::Result<usize> {
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let mut iov = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; IOV_MAX];
    let mut done = 0usize;
    while done < total {
        let (first, skip) = position(bufs.iter().map(|b| b.len()), done);
        let mut n = 0;
        for (k, buf) in bufs[first..].iter().take(IOV_MAX).enumerate() {
            let buf = if k == 0 { &buf[skip..] } else { buf };
            iov[n] = libc::iovec { iov_base: buf.as_ptr() as *mut libc::c_void, iov_len: buf.len() };
            n += 1;
        }
        let at = offset + done as u64;
        // SAFETY: each of the first `n` iovecs describes a live slice of `bufs` (borrowed for
        // the whole call), which the kernel only reads; `fd` is an open borrowed descriptor.
        let rc = unsafe { libc::pwritev(fd.as_raw_fd(), iov.as_ptr(), n as libc::c_int, at as libc::off_t) };
        match rc {
            0 => break,
            n if n > 0 => done += n as usize,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(done)
}

/// Reads into all of `bufs`, in order, from file offset `offset` (`preadv`, up to [`IOV_MAX`]
/// buffers a call), continuing after partial reads and retrying `EINTR`. Returns the bytes
/// read: less than the total only at end of file.
pub fn preadv_all(fd: BorrowedFd<'_>, bufs: &mut [&mut [u8]], offset: u64) -> io::Result<usize> {
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let mut iov = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; IOV_MAX];
    let mut done = 0usize;
    while done < total {
        let (first, skip) = position(bufs.iter().map(|b| b.len()), done);
        let mut n = 0;
        for (k, buf) in bufs[first..].iter_mut().take(IOV_MAX).enumerate() {
            let buf = if k == 0 { &mut buf[skip..] } else { &mut buf[..] };
            iov[n] = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
            n += 1;
        }
        let at = offset + done as u64;
        // SAFETY: each of the first `n` iovecs describes a live, exclusively borrowed slice of
        // `bufs` (borrowed mutably for the whole call), so the kernel may write all of it and
        // nothing else aliases it; `fd` is an open borrowed descriptor.
        let rc = unsafe { libc::preadv(fd.as_raw_fd(), iov.as_ptr(), n as libc::c_int, at as libc::off_t) };
        match rc {
            0 => break,
            n if n > 0 => done += n as usize,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(done)
}

/// A zeroed heap buffer of `len` bytes aligned to `align` (a power of two), for `O_DIRECT`
/// I/O of data that does not live in the primary region (a block header).
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: `AlignedBuf` uniquely owns its allocation (like a `Box<[u8]>`); nothing is shared.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` (> 0) zeroed bytes aligned to `align`.
    pub fn new(len: usize, align: usize) -> io::Result<Self> {
        let layout = Layout::from_size_align(len, align)
            .ok()
            .filter(|l| l.size() > 0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad aligned buffer layout"))?;
        // SAFETY: `layout` has a non-zero size (checked above).
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(AlignedBuf { ptr, layout })
    }

    /// The buffer.
    #[cfg(test)]
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `layout.size()` initialised (zeroed, then only written
        // through `&mut self`) bytes owned by `self`, borrowed shared here.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    /// Its length.
    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// The buffer, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` makes this the only borrow.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` was allocated by `alloc_zeroed` with exactly `layout` and is freed once.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn cpath(p: &std::path::Path) -> std::ffi::CString {
        use std::os::unix::ffi::OsStrExt;
        std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap()
    }

    #[test]
    fn vectored_io_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = cpath(&dir.path().join("f"));
        let fd = open(&path, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o644).unwrap();
        assert_eq!(pwritev_all(fd.as_fd(), &[b"hello ", b"world"], 0).unwrap(), 11);
        fdatasync(fd.as_fd()).unwrap();
        close(fd).unwrap();
        let fd = open(&path, libc::O_RDONLY, 0).unwrap();
        let st = fstat(fd.as_fd()).unwrap();
        assert_eq!((st.size, st.regular), (11, true));
        let (mut a, mut b) = ([0u8; 3], [0u8; 20]);
        assert_eq!(preadv_all(fd.as_fd(), &mut [&mut a, &mut b], 0).unwrap(), 11);
        assert_eq!((&a, &b[..8]), (b"hel", &b"lo world"[..]));
        let e = open(&path, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o644).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
        let to = cpath(&dir.path().join("g"));
        rename(&path, &to).unwrap();
        unlink(&to).unwrap();
        assert_eq!(unlink(&to).unwrap_err().raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn aligned_buffers() {
        let mut b = AlignedBuf::new(4096, 4096).unwrap();
        assert_eq!(b.as_slice().as_ptr() as usize % 4096, 0);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        b.as_mut_slice()[7] = 1;
        assert_eq!(b.as_slice()[7], 1);
        assert!(AlignedBuf::new(0, 4096).is_err());
        assert!(AlignedBuf::new(4096, 3).is_err());
    }

    /// More buffers than one call takes: the list goes in several calls, in order.
    #[test]
    fn long_buffer_lists() {
        let dir = tempfile::tempdir().unwrap();
        let path = cpath(&dir.path().join("f"));
        let fd = open(&path, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, 0o644).unwrap();
        let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let bufs: Vec<&[u8]> = data.chunks(1).collect();
        assert_eq!(pwritev_all(fd.as_fd(), &bufs, 10).unwrap(), 3000);
        let mut back = vec![0u8; 3000];
        let mut outs: Vec<&mut [u8]> = back.chunks_mut(1).collect();
        assert_eq!(preadv_all(fd.as_fd(), &mut outs, 10).unwrap(), 3000);
        assert_eq!(back, data);
    }

    #[test]
    fn positions() {
        assert_eq!(position([3, 4].into_iter(), 0), (0, 0));
        assert_eq!(position([3, 4].into_iter(), 3), (1, 0));
        assert_eq!(position([3, 4].into_iter(), 5), (1, 2));
        assert_eq!(position([0, 4].into_iter(), 0), (1, 0));
    }
}

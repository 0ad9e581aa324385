//! The syscalls the crate (and a disk engine, through [`crate::vfs::HostFs`]) makes itself
//! without a safe wrapper in `std` (at the workspace's minimum Rust version): `syncfs`, the
//! open-file-description record locks of open markers (`fcntl(F_OFD_SETLK / F_OFD_GETLK)`),
//! the `flock` of the primary region and of a disk engine's device, `fallocate` and `geteuid`.
//! The one module of the tier proper with `unsafe`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// A whole-file lock request of type `kind` (`F_RDLCK`, `F_WRLCK`).
fn whole_file(kind: libc::c_int) -> libc::flock {
    libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        // Open-file-description locks require 0.
        l_pid: 0,
    }
}

/// Takes an open-file-description lock on the whole of `fd`'s file, shared or `exclusive`,
/// without waiting (`EAGAIN` when someone holds a conflicting one). The lock belongs to the
/// open file description: it is released when its last descriptor closes (or the process
/// dies), and it conflicts with locks taken through any other open of the file, in this
/// process too. An exclusive lock needs `fd` opened for writing, a shared one for reading.
pub(crate) fn ofd_lock(fd: BorrowedFd<'_>, exclusive: bool) -> io::Result<()> {
    let lock = whole_file(if exclusive { libc::F_WRLCK } else { libc::F_RDLCK });
    // SAFETY: `lock` is a valid `flock` the kernel only reads; `fd` is open for the call.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &lock) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether any other open file description (of this process or another) holds a lock on
/// `fd`'s file, of either kind: `F_OFD_GETLK` for an exclusive lock, which takes nothing.
pub(crate) fn ofd_locked_elsewhere(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut lock = whole_file(libc::F_WRLCK);
    // SAFETY: `lock` is a valid, writable `flock` for the duration of the call; `fd` is open.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_GETLK, &mut lock) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lock.l_type != libc::F_UNLCK as libc::c_short)
}

/// Takes an exclusive `flock` on `fd`'s open file without waiting (`wait == false`: `Ok(false)`
/// when another open file description holds a lock on it) or waiting for it. The lock lasts
/// until every descriptor of that open file description is closed, so a process that dies
/// releases it.
pub(crate) fn lock_exclusive(fd: BorrowedFd<'_>, wait: bool) -> io::Result<bool> {
    let op = if wait { libc::LOCK_EX } else { libc::LOCK_EX | libc::LOCK_NB };
    loop {
        // SAFETY: `flock` only reads the descriptor, which the borrow keeps open for the call.
        if unsafe { libc::flock(fd.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if !wait => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// This process's effective user id.
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: `geteuid` takes no argument, touches no memory and cannot fail.
    unsafe { libc::geteuid() }
}

/// `syncfs(fd)`: makes everything written on `fd`'s file system durable.
pub(crate) fn syncfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: `syncfs` only reads the descriptor, which the borrow keeps open for the call.
    if unsafe { libc::syncfs(fd.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `fallocate(fd, 0, 0, len)`: allocates the file's first `len` bytes (reading as zeros).
pub(crate) fn fallocate(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large"))?;
    loop {
        // SAFETY: `fallocate` takes no pointer; the borrow keeps the descriptor open.
        if unsafe { libc::fallocate(fd.as_raw_fd(), 0, 0, len) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

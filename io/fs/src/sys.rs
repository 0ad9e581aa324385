//! The syscalls the tier (and a disk engine, through [`crate::vfs::HostFs`]) makes itself
//! without a safe wrapper in `std`: `kill(pid, 0)` (is a process alive?), `syncfs`, `flock` and
//! `fallocate`. The one module of the tier proper with `unsafe`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Whether process `pid` (> 0: a single process, never a group) exists: `kill(pid, 0)`
/// succeeds, or fails with `EPERM` (it exists but belongs to someone else).
pub(crate) fn process_exists(pid: libc::pid_t) -> bool {
    debug_assert!(pid > 0);
    // SAFETY: `kill` with signal 0 sends nothing and touches no memory of ours; it only checks
    // that `pid` exists and may be signalled.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
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

/// `flock(fd, LOCK_EX | LOCK_NB)`: an exclusive advisory lock on the open file, held until the
/// descriptor closes; `WouldBlock` when another open file description holds one.
pub(crate) fn flock_exclusive(fd: BorrowedFd<'_>) -> io::Result<()> {
    loop {
        // SAFETY: `flock` only reads the descriptor, which the borrow keeps open for the call.
        if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
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

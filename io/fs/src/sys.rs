//! The two syscalls the tier makes itself without a safe wrapper in `std`: `kill(pid, 0)` (is
//! a process alive?) and `syncfs`. The one module of the tier proper with `unsafe`.

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

//! How a failed step's `-errno` (or short count) becomes an [`Outcome`]: the threaded
//! executor's mapping, so both executors report the same failure the same way.
//!
//! A CQE's negative `res` is `-errno`: it becomes `io::Error::from_raw_os_error(-res)`, never
//! `from_raw_os_error(res)`. A short read or write is never success.

use std::io;

use kvtier_fs::Outcome;

/// The error of a failed CQE `res` (negative: `-errno`).
pub fn os_error(res: i32) -> io::Error {
    debug_assert!(res < 0, "only a negative result is an error");
    io::Error::from_raw_os_error(res.saturating_neg())
}

/// A transfer that moved `done` of `want` bytes.
pub fn short(what: &'static str, done: i32, want: u32) -> io::Error {
    io::Error::new(io::ErrorKind::WriteZero, format!("short {what}: {done} of {want} bytes"))
}

/// Errors after which a later attempt may succeed: resource exhaustion and interruption.
fn is_resource_error(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::EINTR | libc::EAGAIN))
}

/// A store failure: nothing was published. Exhaustion is transient; everything else (ENOSPC,
/// EDQUOT, EROFS, EACCES, EIO, a short write...) fails.
pub fn store_failure(e: io::Error) -> Outcome {
    if is_resource_error(&e) {
        Outcome::Transient(e)
    } else {
        Outcome::Failed(e)
    }
}

/// A load's `openat` failed for a reason other than `ENOENT`: the listed errors say nothing
/// about the file, which is kept.
pub fn load_open_failure(e: io::Error) -> Outcome {
    if is_resource_error(&e) || matches!(e.raw_os_error(), Some(libc::EIO | libc::EACCES | libc::EPERM)) {
        Outcome::Transient(e)
    } else {
        Outcome::Failed(e)
    }
}

/// A load's read failed: an I/O error is transient (the file is kept); a refused request
/// (`EINVAL`: an `O_DIRECT` transfer the file system rejects; `EISDIR`...) fails.
pub fn load_read_failure(e: io::Error) -> Outcome {
    if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EISDIR | libc::EBADF | libc::EFAULT)) {
        Outcome::Failed(e)
    } else {
        Outcome::Transient(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_results_map_to_their_errno() {
        assert_eq!(os_error(-libc::ENOSPC).raw_os_error(), Some(libc::ENOSPC));
        assert!(matches!(store_failure(os_error(-libc::ENOSPC)), Outcome::Failed(_)));
        assert!(matches!(store_failure(os_error(-libc::EMFILE)), Outcome::Transient(_)));
        assert!(matches!(store_failure(short("write", 10, 20)), Outcome::Failed(_)));
        assert!(matches!(load_open_failure(os_error(-libc::EACCES)), Outcome::Transient(_)));
        assert!(matches!(load_open_failure(os_error(-libc::ENOTDIR)), Outcome::Failed(_)));
        assert!(matches!(load_read_failure(os_error(-libc::EIO)), Outcome::Transient(_)));
        assert!(matches!(load_read_failure(os_error(-libc::EISDIR)), Outcome::Failed(_)));
        assert_eq!(short("read", 3, 4).to_string(), "short read: 3 of 4 bytes");
    }
}

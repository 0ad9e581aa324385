//! How an op ended ([`Outcome`]), why one failed ([`OpError`]), and the one mapping from a
//! failed syscall to an outcome that every executor uses.
//!
//! An outcome travels from the thread that finished the op to the tier's poller as a `u32` in
//! the core job table's outcome cell ([`kvtier_core::Part::finish`]): [`Outcome::code`] and
//! [`Outcome::from_code`] are that encoding, lossless for every outcome an executor reports.
//!
//! The errno mapping: a store that failed for want of a resource (`EMFILE`, `ENFILE`, `ENOMEM`,
//! `EINTR`, `EAGAIN`) is [`Outcome::Transient`], any other store failure [`Outcome::Failed`]
//! (nothing was published); a load's open that failed with one of those or `EIO`, `EACCES`,
//! `EPERM` is transient (the errors say nothing about the file, which is kept); a load's read
//! that failed is transient unless the request itself was refused (`EINVAL`: an `O_DIRECT`
//! transfer the file system rejects, `EISDIR`, `EBADF`, `EFAULT`). A short transfer is never
//! success. An io_uring completion's negative `res` is `-errno` ([`OpError::from_res`]).

use std::fmt;
use std::io;

use crate::format::FormatError;
use crate::region::LeaseError;

/// How an op ended. Every op ends exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stored (and published, for a file), or loaded and verified.
    Ok,
    /// The file does not exist (load).
    NotFound,
    /// The file is short, torn, foreign or fails its checksum; the executor removed it (load of
    /// a file; an extent is left as it is). One of [`Outcome::CORRUPT_REASONS`].
    Corrupt(&'static str),
    /// A transient failure (EMFILE, ENOMEM, EINTR, EAGAIN, EIO on open, EACCES...): the file,
    /// if any, is kept; a later attempt may succeed.
    Transient(OpError),
    /// Any other failure; for a store, the temp file was removed and nothing was published.
    Failed(OpError),
    /// The executor shut down before running the op.
    Cancelled,
}

/// Why an op failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpError {
    /// A syscall failed with this `errno`.
    Os(i32),
    /// A read or write moved fewer bytes than asked.
    Short,
    /// The op's row is leased by another operation.
    Busy,
    /// The op's slot is not a row of the region.
    OutOfRange,
    /// The block does not fit: the row's stride is shorter than the format's padded payload,
    /// the block is longer than one transfer moves, or an extent's length is not the block's.
    Geometry,
    /// A path holds a NUL byte.
    BadPath,
    /// The op cannot run as asked: an extent op that evicts, an unknown file id, or an
    /// executor's internal inconsistency.
    Invalid,
    /// The executor lost the op: a worker panicked, the kernel stopped answering, or the op was
    /// dropped without being finished.
    Lost,
}

/// Corruption reasons besides the native format's ([`FormatError::reason`]).
pub const WRONG_LENGTH: &str = "wrong length";
/// A load read fewer bytes than the file holds (the simulator injects it).
pub const SHORT_READ: &str = "short read";

/// Bits of a code that hold the outcome's kind; the rest is its detail.
const KIND_BITS: u32 = 4;
const KIND_MASK: u32 = (1 << KIND_BITS) - 1;
/// An [`OpError`] detail with this bit is not an errno but the error's index.
const NAMED: u32 = 1 << 27;

impl Outcome {
    /// Every reason [`Outcome::Corrupt`] carries: the length checks' and the native format's.
    pub const CORRUPT_REASONS: [&'static str; 13] = {
        let mut reasons = [WRONG_LENGTH; 13];
        reasons[1] = SHORT_READ;
        let mut i = 0;
        while i < FormatError::EACH.len() {
            reasons[2 + i] = FormatError::EACH[i].reason();
            i += 1;
        }
        reasons
    };

    /// True for [`Outcome::Ok`].
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }

    /// The failure's error, for [`Outcome::Transient`] and [`Outcome::Failed`].
    pub fn error(&self) -> Option<OpError> {
        match self {
            Outcome::Transient(e) | Outcome::Failed(e) => Some(*e),
            _ => None,
        }
    }

    /// A store that failed with `e`: nothing was published. Exhaustion is transient;
    /// everything else (ENOSPC, EDQUOT, EROFS, EACCES, EIO, a short write...) fails.
    pub fn store_failure(e: OpError) -> Outcome {
        if e.is_resource_error() {
            Outcome::Transient(e)
        } else {
            Outcome::Failed(e)
        }
    }

    /// A load whose open failed with `e`, not `ENOENT` (which is [`Outcome::NotFound`]): the
    /// listed errors say nothing about the file, which is kept.
    pub fn load_open_failure(e: OpError) -> Outcome {
        if e.is_resource_error() || matches!(e, OpError::Os(libc::EIO | libc::EACCES | libc::EPERM)) {
            Outcome::Transient(e)
        } else {
            Outcome::Failed(e)
        }
    }

    /// A load whose read failed with `e`: an I/O error is transient (the file is kept); a
    /// refused request (`EINVAL`: an `O_DIRECT` transfer the file system rejects; `EISDIR`...)
    /// fails.
    pub fn load_read_failure(e: OpError) -> Outcome {
        if matches!(e, OpError::Os(libc::EINVAL | libc::EISDIR | libc::EBADF | libc::EFAULT)) {
            Outcome::Failed(e)
        } else {
            Outcome::Transient(e)
        }
    }

    /// The outcome as a `u32`, for a job table's outcome cell. `Ok` is 0; no outcome is
    /// [`kvtier_core::Part::DROPPED`].
    pub fn code(&self) -> u32 {
        let (kind, detail) = match self {
            Outcome::Ok => (0, 0),
            Outcome::NotFound => (1, 0),
            Outcome::Corrupt(reason) => {
                let index = Outcome::CORRUPT_REASONS.iter().position(|r| r == reason);
                debug_assert!(index.is_some(), "corruption reason {reason:?} is not listed");
                (2, index.unwrap_or(0) as u32)
            }
            Outcome::Transient(e) => (3, e.detail()),
            Outcome::Failed(e) => (4, e.detail()),
            Outcome::Cancelled => (5, 0),
        };
        (detail << KIND_BITS) | kind
    }

    /// The outcome [`code`](Self::code) encoded; any other code (a part dropped unreported:
    /// [`kvtier_core::Part::DROPPED`]) is `Failed(Lost)`.
    pub fn from_code(code: u32) -> Outcome {
        let detail = code >> KIND_BITS;
        let lost = Outcome::Failed(OpError::Lost);
        match code & KIND_MASK {
            0 if detail == 0 => Outcome::Ok,
            1 if detail == 0 => Outcome::NotFound,
            2 => Outcome::CORRUPT_REASONS.get(detail as usize).copied().map_or(lost, Outcome::Corrupt),
            3 => OpError::from_detail(detail).map_or(lost, Outcome::Transient),
            4 => OpError::from_detail(detail).map_or(lost, Outcome::Failed),
            5 if detail == 0 => Outcome::Cancelled,
            _ => lost,
        }
    }
}

/// The named (non-errno) errors, in detail order.
const NAMED_ERRORS: [OpError; 7] = [
    OpError::Short,
    OpError::Busy,
    OpError::OutOfRange,
    OpError::Geometry,
    OpError::BadPath,
    OpError::Invalid,
    OpError::Lost,
];

impl OpError {
    /// The error of an io_uring completion's negative `res` (`-errno`).
    pub fn from_res(res: i32) -> OpError {
        debug_assert!(res < 0, "only a negative result is an error");
        OpError::Os(res.saturating_neg())
    }

    /// The `errno`, for [`OpError::Os`].
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            OpError::Os(e) => Some(*e),
            _ => None,
        }
    }

    /// Resource exhaustion or interruption: a later attempt may succeed.
    fn is_resource_error(&self) -> bool {
        matches!(self, OpError::Os(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::EINTR | libc::EAGAIN))
    }

    fn detail(&self) -> u32 {
        match self {
            OpError::Os(e) => u32::try_from(*e).ok().filter(|&e| e < NAMED).unwrap_or(NAMED | 5),
            named => NAMED | NAMED_ERRORS.iter().position(|n| n == named).unwrap_or(5) as u32,
        }
    }

    fn from_detail(detail: u32) -> Option<OpError> {
        if detail & NAMED != 0 {
            NAMED_ERRORS.get((detail & !NAMED) as usize).copied()
        } else {
            i32::try_from(detail).ok().map(OpError::Os)
        }
    }
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpError::Os(e) => write!(f, "{}", io::Error::from_raw_os_error(*e)),
            OpError::Short => f.write_str("short transfer"),
            OpError::Busy => f.write_str("slot is leased by another operation"),
            OpError::OutOfRange => f.write_str("slot out of range"),
            OpError::Geometry => f.write_str("the block does not fit its row or extent as its format lays it out"),
            OpError::BadPath => f.write_str("path contains a NUL byte"),
            OpError::Invalid => f.write_str("the op cannot run as asked"),
            OpError::Lost => f.write_str("the executor lost the op"),
        }
    }
}

impl std::error::Error for OpError {}

impl From<LeaseError> for OpError {
    fn from(e: LeaseError) -> Self {
        match e {
            LeaseError::Busy => OpError::Busy,
            LeaseError::OutOfRange => OpError::OutOfRange,
        }
    }
}

/// An `errno` where there is one; otherwise the error's kind decides.
impl From<io::Error> for OpError {
    fn from(e: io::Error) -> Self {
        match (e.raw_os_error(), e.kind()) {
            (Some(errno), _) => OpError::Os(errno),
            (None, io::ErrorKind::WriteZero | io::ErrorKind::UnexpectedEof) => OpError::Short,
            (None, io::ErrorKind::ResourceBusy) => OpError::Busy,
            (None, _) => OpError::Invalid,
        }
    }
}

impl From<OpError> for io::Error {
    fn from(e: OpError) -> Self {
        match e {
            OpError::Os(errno) => io::Error::from_raw_os_error(errno),
            OpError::Short => io::Error::new(io::ErrorKind::WriteZero, e),
            OpError::Busy => io::Error::new(io::ErrorKind::ResourceBusy, e),
            OpError::OutOfRange | OpError::Geometry | OpError::BadPath | OpError::Invalid => {
                io::Error::new(io::ErrorKind::InvalidInput, e)
            }
            OpError::Lost => io::Error::other(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_outcome() -> Vec<Outcome> {
        let mut all = vec![Outcome::Ok, Outcome::NotFound, Outcome::Cancelled];
        all.extend(Outcome::CORRUPT_REASONS.iter().copied().map(Outcome::Corrupt));
        let mut errors: Vec<OpError> = NAMED_ERRORS.to_vec();
        errors.extend([1, libc::ENOSPC, libc::EMFILE, 4095, (NAMED - 1) as i32].map(OpError::Os));
        for e in errors {
            all.push(Outcome::Transient(e));
            all.push(Outcome::Failed(e));
        }
        all
    }

    #[test]
    fn codes_round_trip_and_ok_is_zero() {
        assert_eq!(Outcome::Ok.code(), 0);
        let mut codes = std::collections::HashSet::new();
        for o in every_outcome() {
            assert_eq!(Outcome::from_code(o.code()), o, "{o:?}");
            assert!(codes.insert(o.code()), "{o:?} shares its code");
            assert_ne!(o.code(), kvtier_core::Part::DROPPED);
        }
        assert_eq!(Outcome::from_code(kvtier_core::Part::DROPPED), Outcome::Failed(OpError::Lost));
        for garbage in [6, 1 << KIND_BITS | 1, (20 << KIND_BITS) | 2, (NAMED | 99) << KIND_BITS | 4] {
            assert_eq!(Outcome::from_code(garbage), Outcome::Failed(OpError::Lost), "{garbage:#x}");
        }
    }

    /// Every corruption reason a native file can fail with is listed (the match forces a new
    /// `FormatError` variant to be listed in `FormatError::EACH`).
    #[test]
    fn every_format_error_is_a_listed_reason() {
        for e in FormatError::EACH {
            let listed = match e {
                FormatError::Truncated
                | FormatError::BadMagic
                | FormatError::UnsupportedVersion(_)
                | FormatError::BadHeaderLen(_)
                | FormatError::HeaderChecksum
                | FormatError::BadKeyLen(_)
                | FormatError::ReservedNotZero
                | FormatError::ForeignNamespace
                | FormatError::WrongKey
                | FormatError::LengthMismatch { .. }
                | FormatError::PayloadChecksum => Outcome::CORRUPT_REASONS.contains(&e.reason()),
            };
            assert!(listed, "{e:?}");
        }
        let unique: std::collections::HashSet<_> = Outcome::CORRUPT_REASONS.iter().collect();
        assert_eq!(unique.len(), Outcome::CORRUPT_REASONS.len());
    }

    #[test]
    fn errno_mapping() {
        let os = OpError::Os;
        assert_eq!(OpError::from_res(-libc::ENOSPC), os(libc::ENOSPC));
        assert!(matches!(Outcome::store_failure(os(libc::ENOSPC)), Outcome::Failed(_)));
        assert!(matches!(Outcome::store_failure(os(libc::EMFILE)), Outcome::Transient(_)));
        assert!(matches!(Outcome::store_failure(OpError::Short), Outcome::Failed(_)));
        assert!(matches!(Outcome::load_open_failure(os(libc::EACCES)), Outcome::Transient(_)));
        assert!(matches!(Outcome::load_open_failure(os(libc::ENOTDIR)), Outcome::Failed(_)));
        assert!(matches!(Outcome::load_read_failure(os(libc::EIO)), Outcome::Transient(_)));
        assert!(matches!(Outcome::load_read_failure(os(libc::EISDIR)), Outcome::Failed(_)));
        assert_eq!(Outcome::Failed(os(libc::EEXIST)).error().and_then(|e| e.raw_os_error()), Some(libc::EEXIST));
    }

    #[test]
    fn io_errors_convert_both_ways() {
        assert_eq!(OpError::from(io::Error::from_raw_os_error(libc::EIO)), OpError::Os(libc::EIO));
        assert_eq!(OpError::from(io::Error::new(io::ErrorKind::WriteZero, "x")), OpError::Short);
        assert_eq!(OpError::from(io::Error::other("x")), OpError::Invalid);
        assert_eq!(OpError::from(LeaseError::Busy), OpError::Busy);
        assert_eq!(io::Error::from(OpError::Os(libc::ENOENT)).kind(), io::ErrorKind::NotFound);
        assert_eq!(io::Error::from(OpError::Busy).kind(), io::ErrorKind::ResourceBusy);
        assert!(OpError::Os(libc::ENOSPC).to_string().contains("space"), "{}", OpError::Os(libc::ENOSPC));
    }
}

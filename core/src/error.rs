//! Typed errors, one small enum per operation. An operation that returns an error has changed
//! nothing (a poll it made before checking its arguments excepted, see the engine docs).

use core::fmt;

/// `prepare_store` could not make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// The policy found fewer than `needed` evictable blocks; nothing was evicted.
    NoSpace {
        /// Blocks that had to be evicted.
        needed: usize,
    },
    /// The engine was shut down.
    ShutDown,
}

/// `prepare_load` refused its key list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadError {
    /// `keys[index]` is not in the primary pool.
    NotPresent {
        /// Position in the key list.
        index: usize,
    },
    /// `keys[index]` is present but its write is still in flight.
    NotReady {
        /// Position in the key list.
        index: usize,
    },
    /// `keys[index]` has `i32::MAX` readers already.
    PinOverflow {
        /// Position in the key list.
        index: usize,
    },
    /// The engine was shut down.
    ShutDown,
}

/// `complete_load` refused its key list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnpinError {
    /// `keys[index]` is not in the primary pool.
    NotPresent {
        /// Position in the key list.
        index: usize,
    },
    /// `keys[index]` has no reader left to unpin (counting its earlier occurrences in the list).
    NotPinned {
        /// Position in the key list.
        index: usize,
    },
    /// The engine was shut down.
    ShutDown,
}

/// The engine was shut down; the call did nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutDown;

/// A tier broke the job protocol; the engine ignored the report (see
/// [`crate::TieringEngine::last_protocol_error`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// A tier reported a job id the engine never issued.
    UnknownJob {
        /// The reporting tier.
        tier: usize,
        /// The reported id.
        job: u64,
    },
    /// A tier reported a job that had already finished (reported twice).
    DuplicateCompletion {
        /// The reporting tier.
        tier: usize,
        /// The reported id.
        job: u64,
    },
    /// A tier reported a job submitted to another tier.
    WrongTier {
        /// The reporting tier.
        tier: usize,
        /// The reported id.
        job: u64,
    },
    /// Per-key outcomes whose count differs from the job's keys; the job's overall flag was used.
    OutcomeCount {
        /// The reporting tier.
        tier: usize,
        /// The reported id.
        job: u64,
    },
    /// A finished cascade found its pin gone (someone unpinned it); the pin was not dropped twice.
    LostPin {
        /// The reporting tier.
        tier: usize,
        /// The reported id.
        job: u64,
    },
    /// A tier's shutdown did not report a job; the engine failed it itself.
    Unreported {
        /// The tier.
        tier: usize,
        /// The job it forgot.
        job: u64,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::NoSpace { needed } => write!(f, "cannot evict {needed} blocks: too few are unpinned"),
            StoreError::ShutDown => f.write_str("the engine is shut down"),
        }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::NotPresent { index } => write!(f, "key #{index} is not in the primary tier"),
            LoadError::NotReady { index } => write!(f, "key #{index} is not ready (write in flight)"),
            LoadError::PinOverflow { index } => write!(f, "key #{index} has too many readers"),
            LoadError::ShutDown => f.write_str("the engine is shut down"),
        }
    }
}

impl fmt::Display for UnpinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnpinError::NotPresent { index } => write!(f, "key #{index} is not in the primary tier"),
            UnpinError::NotPinned { index } => write!(f, "key #{index} is not pinned"),
            UnpinError::ShutDown => f.write_str("the engine is shut down"),
        }
    }
}

impl fmt::Display for ShutDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the engine is shut down")
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ProtocolError::UnknownJob { tier, job } => write!(f, "tier {tier} reported unknown job {job}"),
            ProtocolError::DuplicateCompletion { tier, job } => write!(f, "tier {tier} reported job {job} twice"),
            ProtocolError::WrongTier { tier, job } => write!(f, "tier {tier} reported job {job} of another tier"),
            ProtocolError::OutcomeCount { tier, job } => {
                write!(f, "tier {tier} reported job {job} with a wrong number of key outcomes")
            }
            ProtocolError::LostPin { tier, job } => write!(f, "cascade job {job} of tier {tier} found its pin gone"),
            ProtocolError::Unreported { tier, job } => write!(f, "tier {tier} shut down without reporting job {job}"),
        }
    }
}

impl core::error::Error for StoreError {}
impl core::error::Error for LoadError {}
impl core::error::Error for UnpinError {}
impl core::error::Error for ShutDown {}
impl core::error::Error for ProtocolError {}

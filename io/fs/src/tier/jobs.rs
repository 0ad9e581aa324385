//! The FS tier's jobs in flight: the shared job accounting ([`crate::jobs`]) with the FS
//! tier's per-key state.

use kvtier_core::OffloadKey;

pub(super) use crate::jobs::JobRef;
use crate::jobs::PartState;

/// What became of one key of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyState {
    /// Decided by the tier, no op: `true` for a store of a block already on disk, `false` for a
    /// load of a block not on disk or a store refused for want of room.
    Decided(bool),
    /// An op runs it; a store's op evicts `victim` first.
    Running {
        /// The block a store evicts.
        victim: Option<OffloadKey>,
    },
}

impl PartState for KeyState {
    fn has_part(self) -> bool {
        !matches!(self, KeyState::Decided(_))
    }
}

/// The FS tier's record of a job.
pub(super) type Record = crate::jobs::Record<KeyState>;
/// The FS tier's job tables.
pub(super) type TierJobs = crate::jobs::TierJobs<KeyState>;

//! `MemoryTier`: a secondary tier that keeps copies of row bytes in memory and completes every
//! job by the next poll. The reference tier for tests, as vLLM's example tier is; it can be told
//! to fail upcoming jobs.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;

use hashbrown::HashMap;

use crate::event::EventLog;
use crate::tier::{Completions, Direction, Job, SecondaryTier, TierLookup};
use crate::{OffloadKey, ReqContext, SlotId};

/// Access to the primary pool's rows, for tiers that copy bytes (the std adapter implements it
/// over its memory region). A row is `row_bytes()` long.
pub trait RowIo: Send + Sync {
    /// Bytes per row.
    fn row_bytes(&self) -> usize;
    /// Copies row `slot` into `dst` (`dst.len() == row_bytes()`), or says why it could not.
    fn read_row(&self, slot: SlotId, dst: &mut [u8]) -> Result<(), RowRefused>;
    /// Copies `src` into row `slot` (`src.len() == row_bytes()`), or says why it could not.
    fn write_row(&self, slot: SlotId, src: &[u8]) -> Result<(), RowRefused>;
}

/// A row copy the rows refused: the row is in use by another operation (its lease is taken,
/// which the engine's protocol excludes) or the slot is not a row. Nothing was copied; the
/// tier fails the key instead of reporting bytes it never moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowRefused;

impl core::fmt::Display for RowRefused {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("the row is in use or out of range")
    }
}

/// An in-memory secondary tier.
pub struct MemoryTier {
    rows: Option<Arc<dyn RowIo>>,
    blocks: HashMap<OffloadKey, Box<[u8]>, foldhash::fast::FixedState>,
    finished: Completions,
    fail_loads: u32,
    fail_stores: u32,
    outcome: Vec<bool>,
}

impl core::fmt::Debug for MemoryTier {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MemoryTier")
            .field("blocks", &self.blocks.len())
            .field("copies_bytes", &self.rows.is_some())
            .finish_non_exhaustive()
    }
}

impl MemoryTier {
    /// A tier that copies row bytes through `rows`, or, with `None`, tracks presence only.
    pub fn new(rows: Option<Arc<dyn RowIo>>) -> Self {
        MemoryTier {
            rows,
            blocks: HashMap::with_hasher(foldhash::fast::FixedState::with_seed(0)),
            finished: Completions::new(),
            fail_loads: 0,
            fail_stores: 0,
            outcome: Vec::new(),
        }
    }

    /// Makes `key` present with `data` (one row; ignored for a presence-only tier).
    pub fn insert(&mut self, key: OffloadKey, data: &[u8]) {
        let data: Box<[u8]> = if self.rows.is_some() { data.into() } else { Box::default() };
        self.blocks.insert(key, data);
    }

    /// Is `key` in the tier?
    pub fn contains(&self, key: &OffloadKey) -> bool {
        self.blocks.contains_key(key)
    }

    /// The bytes kept for `key`.
    pub fn get(&self, key: &OffloadKey) -> Option<&[u8]> {
        self.blocks.get(key).map(|b| &**b)
    }

    /// Number of blocks held.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// True when no block is held.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Makes one more upcoming job moving blocks in direction `dir` fail as a whole.
    pub fn fail_next(&mut self, dir: Direction) {
        match dir {
            Direction::Load => self.fail_loads = self.fail_loads.saturating_add(1),
            Direction::Store => self.fail_stores = self.fail_stores.saturating_add(1),
        }
    }
}

impl MemoryTier {
    /// Reports `job` with the per-key outcomes in `self.outcome`: one result when they agree
    /// on success, per key otherwise.
    fn push_outcome(&mut self, job: Job<'_>) {
        if self.outcome.iter().all(|&ok| ok) {
            self.finished.push(job.id, true);
        } else {
            self.finished.push_partial(job.id, self.outcome.iter().copied());
        }
    }
}

impl SecondaryTier for MemoryTier {
    fn lookup(&mut self, key: &OffloadKey, _req: ReqContext) -> TierLookup {
        if self.blocks.contains_key(key) {
            TierLookup::Hit
        } else {
            TierLookup::Miss
        }
    }

    /// Copies the rows now (the job's snapshot) and reports the result at the next poll. A
    /// block already held is kept as it is: content-addressed blocks do not change. A row the
    /// rows refuse to read fails its key (and nothing is kept for it).
    fn submit_store(&mut self, job: Job<'_>) {
        if self.fail_stores > 0 {
            self.fail_stores -= 1;
            self.finished.push(job.id, false);
            return;
        }
        self.outcome.clear();
        for (key, &slot) in job.keys.iter().zip(job.slots) {
            let stored = if self.blocks.contains_key(key) {
                true
            } else {
                let data: Option<Box<[u8]>> = match &self.rows {
                    Some(rows) => {
                        let mut buf = alloc::vec![0u8; rows.row_bytes()].into_boxed_slice();
                        rows.read_row(slot, &mut buf).ok().map(|()| buf)
                    }
                    None => Some(Box::default()),
                };
                match data {
                    Some(data) => {
                        self.blocks.insert(*key, data);
                        true
                    }
                    None => false,
                }
            };
            self.outcome.push(stored);
        }
        self.push_outcome(job);
    }

    /// Copies the held blocks into the job's slots now; keys the tier lacks, and keys whose
    /// row the rows refuse to write, fail on their own (partial success).
    fn submit_load(&mut self, job: Job<'_>) {
        if self.fail_loads > 0 {
            self.fail_loads -= 1;
            self.finished.push(job.id, false);
            return;
        }
        self.outcome.clear();
        for (key, &slot) in job.keys.iter().zip(job.slots) {
            let loaded = match (&self.rows, self.blocks.get(key)) {
                (_, None) => false,
                (Some(rows), Some(data)) => rows.write_row(slot, data).is_ok(),
                (None, Some(_)) => true,
            };
            self.outcome.push(loaded);
        }
        self.push_outcome(job);
    }

    fn poll_finished(&mut self, out: &mut Completions) {
        out.append(&mut self.finished);
    }

    fn take_events(&mut self, _out: &mut EventLog) {}

    fn shutdown(&mut self, out: &mut Completions) {
        out.append(&mut self.finished);
    }
}

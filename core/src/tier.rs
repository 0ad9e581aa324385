//! The secondary-tier interface: what the engine asks of a tier and how a tier reports back.
//!
//! The engine calls tiers; tiers never call the engine. A tier accepts every submitted job
//! (submission cannot fail: a tier that cannot start a job reports it failed at a later poll)
//! and reports every job exactly once through [`SecondaryTier::poll_finished`] or, at the end,
//! [`SecondaryTier::shutdown`].

use alloc::vec::Vec;
use core::any::Any;

use crate::event::EventLog;
use crate::{JobId, OffloadKey, ReqContext, SlotId};

/// Which way a job moves blocks: the one direction enum of every tier and executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Primary -> tier: copies primary slots out.
    Store,
    /// Tier -> primary: copies blocks into (reserved) primary slots.
    Load,
}

/// A tier's answer to a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierLookup {
    /// The tier has the block and can load it.
    Hit,
    /// The tier does not have the block.
    Miss,
    /// The tier cannot tell yet (busy); the engine answers Retry unless a later tier hits.
    Busy,
}

/// A batch of blocks to move between the primary pool and a tier. `keys[i]` lives in (store)
/// or goes to (load) primary slot `slots[i]`.
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    /// The job's id, unique across all tiers of an engine.
    pub id: JobId,
    /// The request the job was made for (promotions); cascades carry the storing request.
    pub req: ReqContext,
    /// The blocks, never empty.
    pub keys: &'a [OffloadKey],
    /// Their primary slots, co-indexed with `keys`.
    pub slots: &'a [SlotId],
}

/// One finished job as a tier reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobResult {
    /// The job.
    pub job: JobId,
    /// True when every block of the job succeeded.
    pub success: bool,
    per_key: Option<(usize, usize)>,
}

/// Finished jobs reported by a tier, with optional per-key outcomes, in one reusable buffer.
#[derive(Debug, Clone, Default)]
pub struct Completions {
    results: Vec<JobResult>,
    key_ok: Vec<bool>,
}

impl Completions {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reports `job` finished; all its keys share `success`.
    pub fn push(&mut self, job: JobId, success: bool) {
        self.results.push(JobResult { job, success, per_key: None });
    }

    /// Reports `job` finished with one outcome per key, co-indexed with the job's keys
    /// (partial success). The job succeeded when every key did.
    pub fn push_partial(&mut self, job: JobId, key_ok: impl IntoIterator<Item = bool>) {
        let start = self.key_ok.len();
        self.key_ok.extend(key_ok);
        let end = self.key_ok.len();
        let success = self.key_ok[start..end].iter().all(|&ok| ok);
        self.results.push(JobResult { job, success, per_key: Some((start, end)) });
    }

    /// The reports, in the order they were pushed.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &JobResult> + '_ {
        self.results.iter()
    }

    /// The per-key outcomes of `result`, if the tier gave them.
    pub fn key_outcomes(&self, result: &JobResult) -> Option<&[bool]> {
        result.per_key.map(|(s, e)| &self.key_ok[s..e])
    }

    /// Number of reports.
    pub fn len(&self) -> usize {
        self.results.len()
    }

    /// True when nothing is reported.
    pub fn is_empty(&self) -> bool {
        self.results.is_empty()
    }

    /// Moves every report of `other` to the end of this buffer.
    pub fn append(&mut self, other: &mut Completions) {
        for r in &other.results {
            match r.per_key {
                Some((s, e)) => self.push_partial(r.job, other.key_ok[s..e].iter().copied()),
                None => self.push(r.job, r.success),
            }
        }
        other.clear();
    }

    /// Forgets every report, keeping the buffers.
    pub fn clear(&mut self) {
        self.results.clear();
        self.key_ok.clear();
    }
}

/// A secondary tier (memory, file system, network...).
pub trait SecondaryTier: Any + Send {
    /// Does the tier have `key`? Must not block: answer from memory, or say [`TierLookup::Busy`].
    fn lookup(&mut self, key: &OffloadKey, req: ReqContext) -> TierLookup;
    /// Starts copying the job's primary slots into the tier. The engine keeps every slot
    /// pinned until the job is reported.
    fn submit_store(&mut self, job: Job<'_>);
    /// Starts copying blocks from the tier into the job's (reserved, in-flight) primary slots.
    fn submit_load(&mut self, job: Job<'_>);
    /// Appends every job that finished since the last call, each exactly once.
    fn poll_finished(&mut self, out: &mut Completions);
    /// Marks blocks as recently used (first key most recent). Default: nothing.
    fn touch(&mut self, _keys: &[OffloadKey]) {}
    /// Appends the tier's events since the last call. Default: none.
    fn take_events(&mut self, _out: &mut EventLog) {}
    /// Blocks until no job is in flight: every submitted job's result is ready for the next
    /// [`SecondaryTier::poll_finished`]. Default: nothing (a tier that completes synchronously).
    fn wait_idle(&mut self) {}
    /// Finishes or fails every job in flight and reports each one not yet reported, then
    /// releases the tier's resources. Later calls may find the tier closed.
    fn shutdown(&mut self, out: &mut Completions);
}

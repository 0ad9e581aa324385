//! [`ScriptedTier`]: a presence-only [`MemoryTier`] behind a wrapper that logs submitted jobs
//! and can be scripted to misbehave in the ways real tiers do (late, busy, partial, wrong).

use alloc::vec::Vec;

use kvtier_core::event::EventLog;
use kvtier_core::memory_tier::MemoryTier;
use kvtier_core::tier::Direction;
use kvtier_core::tier::{Completions, Job, SecondaryTier, TierLookup};
use kvtier_core::{JobId, OffloadKey, ReqContext, SlotId};

/// One job as the engine submitted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmittedJob {
    /// Load (promotion) or store (cascade).
    pub kind: Direction,
    /// Its id.
    pub id: JobId,
    /// Its request.
    pub req: ReqContext,
    /// Its keys.
    pub keys: Vec<OffloadKey>,
    /// Their primary slots.
    pub slots: Vec<SlotId>,
}

/// A [`MemoryTier::new(None)`](MemoryTier::new) whose reports go through an outbox.
///
/// The inner tier completes every job at submission; its report is moved to the outbox at
/// once (so reports keep submission order, interleaved with bogus ones), and the outbox is
/// delivered at the engine's next poll unless held. With no scripting this is exactly a
/// memory tier.
pub struct ScriptedTier {
    /// The memory tier doing the work.
    pub inner: MemoryTier,
    outbox: Completions,
    staged: Completions,
    /// Every job submitted since the driver last took the log.
    pub submitted: Vec<SubmittedJob>,
    /// Reports are held back (not delivered at polls).
    pub hold: bool,
    /// Lookups answer `Busy`.
    pub busy: bool,
    /// Loads of these keys fail, key by key.
    pub lose: Vec<OffloadKey>,
    /// At shutdown, drop the outbox instead of reporting it.
    pub forget: bool,
}

impl core::fmt::Debug for ScriptedTier {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ScriptedTier")
            .field("inner", &self.inner)
            .field("outbox", &self.outbox.len())
            .field("hold", &self.hold)
            .field("busy", &self.busy)
            .field("lose", &self.lose)
            .field("forget", &self.forget)
            .finish_non_exhaustive()
    }
}

impl Default for ScriptedTier {
    fn default() -> Self {
        Self::new()
    }
}

impl ScriptedTier {
    /// A well-behaved, empty tier.
    pub fn new() -> Self {
        ScriptedTier {
            inner: MemoryTier::new(None),
            outbox: Completions::new(),
            staged: Completions::new(),
            submitted: Vec::new(),
            hold: false,
            busy: false,
            lose: Vec::new(),
            forget: false,
        }
    }

    /// Queues a report of `job` (which may not be this tier's, or may not exist).
    pub fn report(&mut self, job: JobId, success: bool) {
        self.outbox.push(job, success);
    }

    /// Number of reports not yet delivered.
    pub fn undelivered(&self) -> usize {
        self.outbox.len()
    }

    fn log(&mut self, kind: Direction, job: &Job<'_>) {
        self.submitted.push(SubmittedJob {
            kind,
            id: job.id,
            req: job.req,
            keys: job.keys.to_vec(),
            slots: job.slots.to_vec(),
        });
    }
}

impl SecondaryTier for ScriptedTier {
    fn lookup(&mut self, key: &OffloadKey, req: ReqContext) -> TierLookup {
        if self.busy {
            TierLookup::Busy
        } else {
            self.inner.lookup(key, req)
        }
    }

    fn submit_store(&mut self, job: Job<'_>) {
        self.log(Direction::Store, &job);
        self.inner.submit_store(job);
        self.inner.poll_finished(&mut self.outbox);
    }

    fn submit_load(&mut self, job: Job<'_>) {
        self.log(Direction::Load, &job);
        self.inner.submit_load(job);
        if !job.keys.iter().any(|k| self.lose.contains(k)) {
            self.inner.poll_finished(&mut self.outbox);
            return;
        }
        self.staged.clear();
        self.inner.poll_finished(&mut self.staged);
        for r in self.staged.iter() {
            let outcome: Vec<bool> = match self.staged.key_outcomes(r) {
                Some(ok) => ok.to_vec(),
                None => alloc::vec![r.success; job.keys.len()],
            };
            let lose = &self.lose;
            self.outbox.push_partial(r.job, job.keys.iter().zip(outcome).map(|(k, ok)| ok && !lose.contains(k)));
        }
    }

    fn poll_finished(&mut self, out: &mut Completions) {
        if !self.hold {
            out.append(&mut self.outbox);
        }
    }

    fn touch(&mut self, keys: &[OffloadKey]) {
        self.inner.touch(keys);
    }

    fn take_events(&mut self, out: &mut EventLog) {
        self.inner.take_events(out);
    }

    /// Everything held is now "finished": stop holding.
    fn wait_idle(&mut self) {
        self.hold = false;
        self.inner.wait_idle();
    }

    fn shutdown(&mut self, out: &mut Completions) {
        if self.forget {
            self.outbox.clear();
        } else {
            out.append(&mut self.outbox);
        }
        self.inner.shutdown(out);
    }
}

impl ScriptedTier {
    /// `MemoryTier::fail_next`.
    pub fn fail_next(&mut self, kind: Direction) {
        self.inner.fail_next(kind);
    }
}

//! The tiering engine: the primary pool plus secondary tiers behind one API, lookup across
//! tiers, the promotion state machine, cascades, and the per-step polling guard.
//!
//! # Call order within a step
//!
//! The first of `lookup`, `prepare_load`, `prepare_store` and `end_step` in a step polls every
//! tier for finished jobs (and handles them, tier by tier in configuration order); later calls
//! in the same step do not poll again. A call polls before it checks its arguments, and the
//! poll's effects stay even when the call is then refused. `end_step` submits the promotions
//! reserved during the step, one load job per (tier, request), then starts a new step.
//! `take_events` only drains events (primary first, then tiers in order).
//!
//! # Decisions SEMANTICS.md leaves open
//!
//! - `complete_store` never completes a slot reserved by a promotion: those writes belong to the
//!   engine, and letting the caller finish one would let a tier's late load overwrite whatever
//!   the slot holds next. (A scheduler never does this: `prepare_store` does not return keys
//!   that are already present.)
//! - A finished promotion only completes a key that is still in flight *in the slot the job
//!   loaded into*.
//! - `complete_load` only drops pins the caller took: a block's cascade pins are the engine's,
//!   and releasing one early would let the slot be evicted and reused while a tier still reads
//!   it. Unpinning more than the caller holds is [`UnpinError::NotPinned`].
//! - A tier that breaks the protocol (unknown job, job reported twice, ...) does not stop the
//!   engine: the report is ignored, counted in [`EngineStats::protocol_errors`] and kept as
//!   [`TieringEngine::last_protocol_error`].

// This file holds the engine's API, the polling guard, the dispatch of tier reports and the
// cascades; the promotion state machine is in `promotion.rs`, the book of jobs in flight (ids,
// records) in `job_book.rs`.

use alloc::boxed::Box;
use alloc::vec::Vec;

use crate::error::{LoadError, ProtocolError, ShutDown, StoreError, UnpinError};
use crate::event::EventLog;
use crate::job_book::{JobBook, JobPurpose};
use crate::policy::{AnyPolicy, EvictionPolicy};
use crate::pool::{PoolLookup, PrimaryPool, StorePlan};
use crate::promotion::Promotions;
use crate::tier::{Completions, Job, JobResult, SecondaryTier, TierLookup};
use crate::{OffloadKey, ReqContext, SlotId};

/// The answer of [`TieringEngine::lookup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupResult {
    /// Ready in the primary pool: `prepare_load` it.
    Ready,
    /// Being written or promoted into the primary pool: ask again next step.
    Pending,
    /// A tier could not answer yet and no later tier had it: ask again next step.
    Retry,
    /// Not available: recompute it.
    Miss,
}

/// Engine settings (the pool's size comes from its policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Steps after which a promotion still in flight makes lookups of its key answer Miss; 0
    /// disables the deadline.
    pub promotion_deadline_steps: u32,
    /// Collect events for `take_events` (on by default). Off, nothing accumulates.
    pub events: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { promotion_deadline_steps: 64, events: true }
    }
}

/// Counters since construction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// `end_step` calls.
    pub steps: u64,
    /// Promotions reserved by lookups (blocks).
    pub promotions_reserved: u64,
    /// Promoted blocks that became ready.
    pub promotions_loaded: u64,
    /// Promoted blocks whose load failed (slot freed).
    pub promotions_failed: u64,
    /// Lookups answered Miss because the block's promotion was past its deadline.
    pub promotions_overdue: u64,
    /// Cascade (store) jobs submitted.
    pub cascade_jobs: u64,
    /// Blocks in those jobs.
    pub cascade_blocks: u64,
    /// Cascade jobs that failed (not retried).
    pub cascade_jobs_failed: u64,
    /// Tier reports that broke the job protocol and were ignored.
    pub protocol_errors: u64,
}

/// The primary pool and the secondary tiers behind one deterministic state machine.
pub struct TieringEngine<P = AnyPolicy> {
    pool: PrimaryPool<P>,
    tiers: Vec<Box<dyn SecondaryTier>>,
    config: EngineConfig,
    polled: bool,
    step: u64,
    jobs: JobBook,
    promotions: Promotions,
    /// Per slot: pins held by cascades in flight (never the caller's to release).
    cascade_pins: Vec<i32>,
    readied: Vec<SlotId>,
    completions: Completions,
    outcome: Vec<bool>,
    stats: EngineStats,
    last_protocol_error: Option<ProtocolError>,
    shut_down: bool,
}

impl<P: EvictionPolicy> TieringEngine<P> {
    /// An engine over a pool ordered by `policy`, with `tiers` in configuration order.
    pub fn new(policy: P, tiers: Vec<Box<dyn SecondaryTier>>, config: EngineConfig) -> Self {
        let mut pool = PrimaryPool::new(policy);
        pool.set_events(config.events);
        let n = pool.capacity();
        let t = tiers.len();
        TieringEngine {
            pool,
            tiers,
            config,
            polled: false,
            step: 0,
            jobs: JobBook::default(),
            promotions: Promotions::new(n, t),
            cascade_pins: alloc::vec![0; n],
            readied: Vec::new(),
            completions: Completions::new(),
            outcome: Vec::new(),
            stats: EngineStats::default(),
            last_protocol_error: None,
            shut_down: false,
        }
    }

    /// The primary pool (read-only).
    pub fn primary(&self) -> &PrimaryPool<P> {
        &self.pool
    }

    /// Number of secondary tiers.
    pub fn tier_count(&self) -> usize {
        self.tiers.len()
    }

    /// Tier `index` as its concrete type, if it is a `T`.
    pub fn tier_mut<T: SecondaryTier>(&mut self, index: usize) -> Option<&mut T> {
        let tier: &mut dyn core::any::Any = self.tiers.get_mut(index)?.as_mut();
        tier.downcast_mut::<T>()
    }

    /// Counters since construction.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// The most recent protocol violation by a tier, if any.
    pub fn last_protocol_error(&self) -> Option<ProtocolError> {
        self.last_protocol_error
    }

    /// Number of jobs submitted to tiers and not yet reported.
    pub fn jobs_in_flight(&self) -> usize {
        self.jobs.len()
    }

    /// True while `slot` is reserved by a promotion (its write belongs to the engine, not the
    /// caller; `complete_store` leaves it alone).
    pub fn is_promotion_slot(&self, slot: SlotId) -> bool {
        self.promotions.holds(slot)
    }

    /// Number of `end_step` calls so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// True once [`TieringEngine::shutdown`] ran.
    pub fn is_shut_down(&self) -> bool {
        self.shut_down
    }

    fn poll_guarded(&mut self) {
        if !self.polled && !self.shut_down {
            self.polled = true;
            self.poll_tiers();
        }
    }

    fn poll_tiers(&mut self) {
        self.drain_tiers(|tier, done| tier.poll_finished(done));
    }

    /// Asks every tier in order for its finished jobs (`report` fills the buffer) and handles
    /// them before asking the next tier.
    fn drain_tiers(&mut self, report: impl Fn(&mut dyn SecondaryTier, &mut Completions)) {
        for t in 0..self.tiers.len() {
            let mut done = core::mem::take(&mut self.completions);
            done.clear();
            report(self.tiers[t].as_mut(), &mut done);
            self.handle_completions(t, &done);
            self.completions = done;
        }
    }

    fn protocol_error(&mut self, e: ProtocolError) {
        self.stats.protocol_errors += 1;
        self.last_protocol_error = Some(e);
    }

    fn handle_completions(&mut self, tier: usize, done: &Completions) {
        for result in done.iter() {
            self.handle_result(tier, result, done.key_outcomes(result));
        }
    }

    fn handle_result(&mut self, tier: usize, result: &JobResult, per_key: Option<&[bool]>) {
        let job = result.job.0;
        let Some(r) = self.jobs.find(result.job) else {
            self.protocol_error(if self.jobs.was_issued(result.job) {
                ProtocolError::DuplicateCompletion { tier, job }
            } else {
                ProtocolError::UnknownJob { tier, job }
            });
            return;
        };
        let rec = self.jobs.record(r);
        if rec.tier != tier {
            self.protocol_error(ProtocolError::WrongTier { tier, job });
            return;
        }
        let n = rec.keys.len();
        self.outcome.clear();
        match per_key {
            Some(ok) if ok.len() == n => self.outcome.extend_from_slice(ok),
            Some(_) => {
                self.outcome.resize(n, result.success);
                self.protocol_error(ProtocolError::OutcomeCount { tier, job });
            }
            None => self.outcome.resize(n, result.success),
        }
        match self.jobs.record(r).purpose {
            JobPurpose::Cascade => self.finish_cascade(r),
            JobPurpose::Promotion => {
                self.promotions.finish(self.jobs.record(r), &self.outcome, &mut self.pool, &mut self.stats)
            }
        }
        self.jobs.close(r);
    }

    fn finish_cascade(&mut self, r: u32) {
        let rec = self.jobs.record(r);
        let (tier, job) = (rec.tier, rec.id.0);
        let mut lost = false;
        for (key, &slot) in rec.keys.iter().zip(&rec.slots) {
            self.cascade_pins[slot.index()] -= 1;
            lost |= !self.pool.unpin_slot(slot, key);
        }
        if self.outcome.iter().any(|&ok| !ok) {
            self.stats.cascade_jobs_failed += 1;
        }
        if lost {
            self.protocol_error(ProtocolError::LostPin { tier, job });
        }
    }

    /// Is `key` ready, on its way, or nowhere? On a primary miss, the first tier that has the
    /// key wins: a primary slot is reserved for it (this may evict) and the answer is Pending,
    /// or Miss when the primary cannot make room. The load is submitted at `end_step`. A
    /// promotion past its deadline answers Miss. After shutdown: Miss.
    pub fn lookup(&mut self, key: &OffloadKey, req: ReqContext) -> LookupResult {
        self.poll_guarded();
        if self.shut_down {
            return LookupResult::Miss;
        }
        match self.pool.find(key) {
            Some((_, rc)) if rc >= 0 => return LookupResult::Ready,
            Some((slot, _)) => {
                if self.promotions.is_overdue(slot, self.step, self.config.promotion_deadline_steps) {
                    self.stats.promotions_overdue += 1;
                    return LookupResult::Miss;
                }
                return LookupResult::Pending;
            }
            None => {}
        }
        let mut busy = false;
        for t in 0..self.tiers.len() {
            match self.tiers[t].lookup(key, req) {
                TierLookup::Hit => {
                    return if self.promotions.reserve(&mut self.pool, t, key, req, &mut self.stats) {
                        LookupResult::Pending
                    } else {
                        LookupResult::Miss
                    };
                }
                TierLookup::Busy => busy = true,
                TierLookup::Miss => {}
            }
        }
        if busy {
            LookupResult::Retry
        } else {
            LookupResult::Miss
        }
    }

    /// Allocates primary slots for the absent `keys` (see [`PrimaryPool::prepare_store`]),
    /// filling `plan`.
    pub fn prepare_store(
        &mut self,
        keys: &[OffloadKey],
        _req: ReqContext,
        plan: &mut StorePlan,
    ) -> Result<(), StoreError> {
        self.poll_guarded();
        if self.shut_down {
            plan.clear();
            return Err(StoreError::ShutDown);
        }
        self.pool.prepare_store(keys, plan)
    }

    /// Ends the caller's writes of `keys`. On success, the keys this call made ready are
    /// cascaded to every tier (one pin and one store job per tier); keys that were already
    /// ready are not cascaded again. On failure the in-flight keys are dropped. Returns how many
    /// keys became ready.
    pub fn complete_store(&mut self, keys: &[OffloadKey], req: ReqContext, success: bool) -> Result<usize, ShutDown> {
        if self.shut_down {
            return Err(ShutDown);
        }
        let mut readied = core::mem::take(&mut self.readied);
        readied.clear();
        let promotions = &self.promotions;
        self.pool.complete_store_filtered(keys, success, &mut readied, |s| !promotions.holds(s));
        let n = readied.len();
        if n > 0 {
            for t in 0..self.tiers.len() {
                let r = self.jobs.open(t, JobPurpose::Cascade, req);
                let rec = self.jobs.record_mut(r);
                for &slot in &readied {
                    if let Some(key) = self.pool.pin_slot(slot) {
                        self.cascade_pins[slot.index()] += 1;
                        rec.slots.push(slot);
                        rec.keys.push(key);
                    }
                }
                if rec.keys.is_empty() {
                    self.jobs.close(r);
                    continue;
                }
                self.stats.cascade_jobs += 1;
                self.stats.cascade_blocks += rec.keys.len() as u64;
                self.tiers[t].submit_store(Job { id: rec.id, req, keys: &rec.keys, slots: &rec.slots });
            }
        }
        self.readied = readied;
        Ok(n)
    }

    /// Pins ready `keys` for reading into the GPU, appending their slots to `slots`.
    pub fn prepare_load(
        &mut self,
        keys: &[OffloadKey],
        _req: ReqContext,
        slots: &mut Vec<SlotId>,
    ) -> Result<(), LoadError> {
        self.poll_guarded();
        if self.shut_down {
            return Err(LoadError::ShutDown);
        }
        self.pool.prepare_load(keys, slots)
    }

    /// Unpins `keys` after the GPU read them.
    pub fn complete_load(&mut self, keys: &[OffloadKey], _req: ReqContext) -> Result<(), UnpinError> {
        if self.shut_down {
            return Err(UnpinError::ShutDown);
        }
        let cascade_pins = &self.cascade_pins;
        self.pool.complete_load_above(keys, |s| cascade_pins[s.index()])
    }

    /// Marks `keys` recently used in the primary pool and in every tier.
    pub fn touch(&mut self, keys: &[OffloadKey], _req: ReqContext) {
        if self.shut_down {
            return;
        }
        self.pool.touch(keys);
        for tier in &mut self.tiers {
            tier.touch(keys);
        }
    }

    /// Ends the step: polls (if this step has not), submits the promotions reserved during the
    /// step as one load job per (tier, request), and resets the polling guard.
    pub fn end_step(&mut self) {
        self.poll_guarded();
        if self.shut_down {
            return;
        }
        let deadline = self.config.promotion_deadline_steps;
        self.promotions.flush(self.step, deadline, &mut self.jobs, &mut self.tiers);
        self.step += 1;
        self.stats.steps += 1;
        self.polled = false;
    }

    /// Moves the events raised since the last call to the end of `out`: the primary's first,
    /// then each tier's in order. Flushes nothing.
    pub fn take_events(&mut self, out: &mut EventLog) {
        self.pool.take_events(out);
        for tier in &mut self.tiers {
            tier.take_events(out);
        }
    }

    /// Blocks until no tier has a job in flight. Their results are handled at the next poll.
    pub fn drain(&mut self) {
        for tier in &mut self.tiers {
            tier.wait_idle();
        }
    }

    /// Drains every tier (each in-flight job completes or is reported failed, and is handled as
    /// at a poll), fails the promotions reserved but not yet submitted, and closes the engine.
    /// Later calls do nothing or return a shut-down error. Idempotent.
    pub fn shutdown(&mut self) {
        if self.shut_down {
            return;
        }
        self.poll_tiers();
        self.promotions.fail_unsubmitted(&mut self.pool, &mut self.stats);
        self.drain_tiers(|tier, done| tier.shutdown(done));
        // A tier that forgot a job must not leave it pinned or reserved forever.
        // Oldest first, so the outcome does not depend on the hash table's order.
        while let Some(r) = self.jobs.oldest() {
            let rec = self.jobs.record(r);
            let (tier, job) = (rec.tier, rec.id);
            self.protocol_error(ProtocolError::Unreported { tier, job: job.0 });
            let mut failed = Completions::new();
            failed.push(job, false);
            self.handle_completions(tier, &failed);
        }
        self.shut_down = true;
    }
}

impl<P> core::fmt::Debug for TieringEngine<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TieringEngine")
            .field("tiers", &self.tiers.len())
            .field("step", &self.step)
            .field("jobs_in_flight", &self.jobs.len())
            .field("shut_down", &self.shut_down)
            .finish_non_exhaustive()
    }
}

impl<P: EvictionPolicy> TieringEngine<P> {
    /// Lookup of the primary pool alone (no poll, no tier).
    pub fn primary_lookup(&self, key: &OffloadKey) -> PoolLookup {
        self.pool.lookup(key)
    }
}

#[cfg(test)]
mod tests {
    use alloc::boxed::Box;
    use alloc::vec;
    use alloc::vec::Vec;

    use super::*;
    use crate::{Direction as FailKind, JobId, MemoryTier, PolicyKind};

    fn k(b: u8) -> OffloadKey {
        OffloadKey::new(&[b], 0).unwrap()
    }
    const R1: ReqContext = ReqContext::new(1);
    const R2: ReqContext = ReqContext::new(2);

    /// A tier whose jobs finish only when the test says so.
    #[derive(Default)]
    struct ManualTier {
        has: Vec<OffloadKey>,
        loads: Vec<(JobId, ReqContext, Vec<OffloadKey>)>,
        stores: Vec<(JobId, Vec<OffloadKey>)>,
        finished: Completions,
        busy: bool,
    }

    impl ManualTier {
        fn holding(has: Vec<OffloadKey>) -> Self {
            ManualTier { has, ..ManualTier::default() }
        }
    }

    impl SecondaryTier for ManualTier {
        fn lookup(&mut self, key: &OffloadKey, _req: ReqContext) -> TierLookup {
            if self.busy {
                TierLookup::Busy
            } else if self.has.contains(key) {
                TierLookup::Hit
            } else {
                TierLookup::Miss
            }
        }
        fn submit_store(&mut self, job: Job<'_>) {
            self.stores.push((job.id, job.keys.to_vec()));
        }
        fn submit_load(&mut self, job: Job<'_>) {
            self.loads.push((job.id, job.req, job.keys.to_vec()));
        }
        fn poll_finished(&mut self, out: &mut Completions) {
            out.append(&mut self.finished);
        }
        fn shutdown(&mut self, out: &mut Completions) {
            for (id, ..) in self.loads.drain(..) {
                out.push(id, false);
            }
            for (id, _) in self.stores.drain(..) {
                out.push(id, false);
            }
        }
    }

    fn engine(slots: u32, tiers: Vec<Box<dyn SecondaryTier>>, deadline: u32) -> TieringEngine {
        let config = EngineConfig { promotion_deadline_steps: deadline, events: true };
        TieringEngine::new(AnyPolicy::new(PolicyKind::Lru, slots), tiers, config)
    }

    fn manual(e: &mut TieringEngine, t: usize) -> &mut ManualTier {
        e.tier_mut::<ManualTier>(t).unwrap()
    }

    fn store(e: &mut TieringEngine, keys: &[OffloadKey]) {
        let mut plan = StorePlan::new();
        e.prepare_store(keys, R1, &mut plan).unwrap();
        e.complete_store(&plan.keys, R1, true).unwrap();
    }

    #[test]
    fn cascade_pins_once_per_tier_until_done() {
        let tiers: Vec<Box<dyn SecondaryTier>> = vec![Box::new(ManualTier::default()), Box::new(ManualTier::default())];
        let mut e = engine(2, tiers, 0);
        store(&mut e, &[k(1), k(2)]);
        assert_eq!(e.primary().find(&k(1)), Some((SlotId(0), 2)));
        assert_eq!(manual(&mut e, 0).stores, [(JobId(0), vec![k(1), k(2)])]);
        assert_eq!(manual(&mut e, 1).stores, [(JobId(1), vec![k(1), k(2)])]);
        // The cascades' pins are the engine's: the caller cannot release them.
        assert_eq!(e.complete_load(&[k(1)], R1), Err(UnpinError::NotPinned { index: 0 }));
        e.prepare_load(&[k(1)], R1, &mut Vec::new()).unwrap();
        assert_eq!(e.complete_load(&[k(1), k(1)], R1), Err(UnpinError::NotPinned { index: 1 }));
        e.complete_load(&[k(1)], R1).unwrap();
        // Completing already-ready keys again cascades nothing.
        assert_eq!(e.complete_store(&[k(1)], R1, true), Ok(0));
        assert_eq!(e.jobs_in_flight(), 2);
        // Pinned blocks cannot be evicted.
        let mut plan = StorePlan::new();
        assert!(e.prepare_store(&[k(3)], R1, &mut plan).is_err());
        e.end_step(); // this step already polled (in prepare_store)
        manual(&mut e, 0).finished.push(JobId(0), true);
        manual(&mut e, 1).finished.push(JobId(1), false);
        e.end_step();
        assert_eq!(e.primary().find(&k(1)), Some((SlotId(0), 0)));
        assert_eq!(e.jobs_in_flight(), 0);
        assert_eq!(e.stats().cascade_jobs_failed, 1);
    }

    #[test]
    fn promotions_batch_per_tier_and_request_at_end_step() {
        let mut t0 = ManualTier::default();
        let mut t1 = ManualTier::default();
        t0.has = vec![k(1), k(3)];
        t1.has = vec![k(2), k(4)];
        let mut e = engine(8, vec![Box::new(t0), Box::new(t1)], 0);
        assert_eq!(e.lookup(&k(2), R1), LookupResult::Pending); // tier 1 first
        assert_eq!(e.lookup(&k(1), R2), LookupResult::Pending);
        assert_eq!(e.lookup(&k(3), R1), LookupResult::Pending);
        assert_eq!(e.lookup(&k(4), R2), LookupResult::Pending);
        assert_eq!(e.lookup(&k(1), R1), LookupResult::Pending); // reserved: never promoted twice
        assert_eq!(e.lookup(&k(9), R1), LookupResult::Miss);
        assert_eq!(e.jobs_in_flight(), 0, "nothing is submitted at lookup time");
        e.end_step();
        // Tier 1 received the first reservation: its jobs come first (R1 then R2).
        assert_eq!(manual(&mut e, 1).loads, [(JobId(0), R1, vec![k(2)]), (JobId(1), R2, vec![k(4)])]);
        assert_eq!(manual(&mut e, 0).loads, [(JobId(2), R2, vec![k(1)]), (JobId(3), R1, vec![k(3)])]);
        // Partial success: k1 loads, k3 fails and its slot is freed.
        manual(&mut e, 0).finished.push(JobId(2), true);
        manual(&mut e, 0).finished.push_partial(JobId(3), [false]);
        assert_eq!(e.lookup(&k(1), R1), LookupResult::Ready);
        assert_eq!(e.lookup(&k(3), R1), LookupResult::Pending, "asks the tiers again");
        let mut ev = EventLog::new();
        e.take_events(&mut ev);
        let stored: Vec<_> = ev.iter().map(|x| (x.removed, x.keys.to_vec())).collect();
        assert_eq!(stored, [(false, vec![k(1)])]);
    }

    #[test]
    fn busy_tier_means_retry_unless_a_later_tier_hits() {
        let busy = ManualTier { busy: true, ..ManualTier::default() };
        let other = ManualTier::holding(vec![k(1)]);
        let mut e = engine(2, vec![Box::new(busy), Box::new(other)], 0);
        assert_eq!(e.lookup(&k(1), R1), LookupResult::Pending);
        assert_eq!(e.lookup(&k(2), R1), LookupResult::Retry);
    }

    #[test]
    fn full_primary_makes_promotion_a_miss() {
        let t = ManualTier::holding(vec![k(5)]);
        let mut e = engine(1, vec![Box::new(t)], 0);
        let mut plan = StorePlan::new();
        e.prepare_store(&[k(1)], R1, &mut plan).unwrap(); // in flight: not evictable
        assert_eq!(e.lookup(&k(5), R1), LookupResult::Miss);
    }

    #[test]
    fn overdue_promotion_answers_miss_and_lands_late() {
        let t = ManualTier::holding(vec![k(1)]);
        let mut e = engine(2, vec![Box::new(t)], 2);
        assert_eq!(e.lookup(&k(1), R1), LookupResult::Pending);
        e.end_step(); // submitted
        assert_eq!(e.lookup(&k(1), R1), LookupResult::Pending);
        e.end_step();
        assert_eq!(e.lookup(&k(1), R1), LookupResult::Pending);
        e.end_step(); // two end_steps after submission
        assert_eq!(e.lookup(&k(1), R1), LookupResult::Miss);
        assert_eq!(e.stats().promotions_overdue, 1);
        // The caller cannot complete the engine's write, and the slot stays reserved.
        assert_eq!(e.complete_store(&[k(1)], R1, true), Ok(0));
        assert!(e.is_promotion_slot(SlotId(0)));
        manual(&mut e, 0).finished.push(JobId(0), true);
        e.end_step();
        assert_eq!(e.lookup(&k(1), R1), LookupResult::Ready);
        assert!(!e.is_promotion_slot(SlotId(0)));
    }

    #[test]
    fn protocol_errors_are_ignored_and_counted() {
        let mut e = engine(2, vec![Box::new(ManualTier::default()), Box::new(ManualTier::default())], 0);
        store(&mut e, &[k(1)]);
        e.end_step();
        manual(&mut e, 0).finished.push(JobId(77), true);
        manual(&mut e, 0).finished.push(JobId(1), true); // tier 1's job
        manual(&mut e, 0).finished.push(JobId(0), true);
        manual(&mut e, 0).finished.push(JobId(0), true); // twice
        e.end_step();
        assert_eq!(e.stats().protocol_errors, 3);
        assert_eq!(e.last_protocol_error(), Some(ProtocolError::DuplicateCompletion { tier: 0, job: 0 }));
        assert_eq!(e.primary().find(&k(1)), Some((SlotId(0), 1)), "tier 1's pin is still held");
        manual(&mut e, 1).finished.push_partial(JobId(1), [true, true]);
        e.end_step();
        assert_eq!(e.last_protocol_error(), Some(ProtocolError::OutcomeCount { tier: 1, job: 1 }));
        assert_eq!(e.primary().find(&k(1)), Some((SlotId(0), 0)));
    }

    #[test]
    fn shutdown_reports_every_job_and_releases_every_slot() {
        let t = ManualTier::holding(vec![k(7), k(8)]);
        let mut e = engine(4, vec![Box::new(t)], 0);
        store(&mut e, &[k(1)]);
        assert_eq!(e.lookup(&k(7), R1), LookupResult::Pending);
        e.end_step(); // k7's load in flight
        assert_eq!(e.lookup(&k(8), R1), LookupResult::Pending); // reserved, never submitted
        e.shutdown();
        assert_eq!(e.jobs_in_flight(), 0);
        assert_eq!(e.primary().blocks().map(|(_, k, rc)| (*k, rc)).collect::<Vec<_>>(), [(k(1), 0)]);
        assert_eq!(e.stats().promotions_failed, 2);
        assert_eq!(e.lookup(&k(1), R1), LookupResult::Miss);
        let mut plan = StorePlan::new();
        assert_eq!(e.prepare_store(&[k(2)], R1, &mut plan), Err(StoreError::ShutDown));
        e.shutdown();
    }

    #[test]
    fn polls_once_per_step_before_checking_arguments() {
        let t = ManualTier::holding(vec![k(1)]);
        let mut e = engine(2, vec![Box::new(MemoryTier::new(None)), Box::new(t)], 0);
        store(&mut e, &[k(2)]);
        assert_eq!(e.primary().find(&k(2)), Some((SlotId(0), 2)));
        e.end_step();
        // A refused prepare_load still polled: the memory tier's cascade finished.
        assert!(e.prepare_load(&[k(9)], R1, &mut Vec::new()).is_err());
        assert_eq!(e.primary().find(&k(2)), Some((SlotId(0), 1)));
        manual(&mut e, 1).finished.push(JobId(1), true);
        e.end_step(); // already polled this step: tier 1's report waits
        assert_eq!(e.primary().find(&k(2)), Some((SlotId(0), 1)));
        assert_eq!(e.lookup(&k(2), R1), LookupResult::Ready);
        assert_eq!(e.primary().find(&k(2)), Some((SlotId(0), 0)));
    }

    #[test]
    fn memory_tier_failures_free_the_slot() {
        let mut e = engine(2, vec![Box::new(MemoryTier::new(None))], 0);
        store(&mut e, &[k(1), k(2)]);
        e.end_step();
        store(&mut e, &[k(3), k(4)]); // evicts k1, k2 (now in the tier)
        e.end_step();
        e.tier_mut::<MemoryTier>(0).unwrap().fail_next(FailKind::Load);
        assert_eq!(e.lookup(&k(1), R1), LookupResult::Pending);
        e.end_step();
        assert_eq!(e.lookup(&k(1), R1), LookupResult::Pending, "failed load freed the slot; reserved again");
        e.end_step();
        assert_eq!(e.lookup(&k(1), R1), LookupResult::Ready);
    }
}

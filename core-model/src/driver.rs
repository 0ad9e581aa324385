//! The drivers: apply each op to the implementation and to the oracle, compare the outputs,
//! then compare the full state and check invariants after every op.

use alloc::boxed::Box;
use alloc::collections::{BTreeSet, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::engine_model::EngineModel;
use crate::pool_model::{ModelEvent, OrderModel, PoolModel};
use crate::scripted_tier::ScriptedTier;
use crate::{default_keys, Config, Op};
use kvtier_core::{
    AnyPolicy, EngineConfig, EventLog, JobId, LookupResult, Medium, OffloadKey, PolicyKind, PrimaryPool, ReqContext,
    SecondaryTier, SlotId, StorePlan, TieringEngine,
};

/// The implementation and the oracle disagree (or an invariant broke) at op `index`.
#[derive(Debug, Clone)]
pub struct Mismatch {
    /// Position of the op in the sequence (the sequence's length for the final shutdown).
    pub index: usize,
    /// The op, `None` for the final shutdown check.
    pub op: Option<Op>,
    /// What differs: both sides.
    pub detail: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.op {
            Some(op) => write!(f, "op #{} {:?}: {}", self.index, op, self.detail),
            None => write!(f, "final shutdown (after {} ops): {}", self.index, self.detail),
        }
    }
}

impl core::error::Error for Mismatch {}

/// What a run exercised (to tune generators and to see that the interesting paths happen).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Ops applied.
    pub ops: u64,
    /// Lookups answered Ready, Pending, Retry, Miss.
    pub lookups: [u64; 4],
    /// `prepare_store` calls that stored something / that were refused.
    pub stores: [u64; 2],
    /// Blocks evicted.
    pub evicted: u64,
    /// Keys made ready by `complete_store`.
    pub completed: u64,
    /// `prepare_load` calls accepted / refused.
    pub loads: [u64; 2],
    /// `complete_load` calls accepted / refused.
    pub unloads: [u64; 2],
    /// Events compared.
    pub events: u64,
    /// Promoted blocks loaded / failed; lookups answered Miss for being overdue.
    pub promotions: [u64; 3],
    /// Protocol errors the engine counted.
    pub protocol_errors: u64,
    /// Runs that ended shut down before the final shutdown.
    pub shutdowns: u64,
    /// Ops after which ARC's target `p` had changed.
    pub arc_adapt: u64,
}

impl Coverage {
    /// Adds `other` to `self`.
    pub fn merge(&mut self, other: &Coverage) {
        self.ops += other.ops;
        for i in 0..4 {
            self.lookups[i] += other.lookups[i];
        }
        for i in 0..2 {
            self.stores[i] += other.stores[i];
            self.loads[i] += other.loads[i];
            self.unloads[i] += other.unloads[i];
        }
        for i in 0..3 {
            self.promotions[i] += other.promotions[i];
        }
        self.evicted += other.evicted;
        self.completed += other.completed;
        self.events += other.events;
        self.protocol_errors += other.protocol_errors;
        self.shutdowns += other.shutdowns;
        self.arc_adapt += other.arc_adapt;
    }
}

fn lookup_index(r: LookupResult) -> usize {
    match r {
        LookupResult::Ready => 0,
        LookupResult::Pending => 1,
        LookupResult::Retry => 2,
        LookupResult::Miss => 3,
    }
}

/// Names keys by their first index in the key table (`k3`), for readable messages.
struct Names<'a>(&'a [OffloadKey]);

impl Names<'_> {
    fn key(&self, key: &OffloadKey) -> String {
        match self.0.iter().position(|k| k == key) {
            Some(i) => format!("k{i}"),
            None => format!("{key}"),
        }
    }

    fn keys<'k>(&self, keys: impl IntoIterator<Item = &'k OffloadKey>) -> String {
        let names: Vec<String> = keys.into_iter().map(|k| self.key(k)).collect();
        format!("[{}]", names.join(", "))
    }

    fn events<'e>(&self, events: impl IntoIterator<Item = (bool, &'e [OffloadKey])>) -> String {
        let names: Vec<String> = events
            .into_iter()
            .map(|(removed, keys)| format!("{}{}", if removed { "removed" } else { "stored" }, self.keys(keys)))
            .collect();
        format!("[{}]", names.join(", "))
    }
}

/// Compares an implementation event log with the oracle's events.
fn compare_events(names: &Names<'_>, got: &EventLog, want: &[ModelEvent]) -> Result<(), String> {
    let same = got.len() == want.len()
        && got
            .iter()
            .zip(want)
            .all(|(g, w)| g.medium == Medium::Cpu && g.removed == w.removed && g.keys == &w.keys[..]);
    if same {
        return Ok(());
    }
    let mediums: Vec<Medium> = got.iter().map(|e| e.medium).collect();
    Err(format!(
        "events: engine {} (media {mediums:?}), oracle {}",
        names.events(got.iter().map(|e| (e.removed, e.keys))),
        names.events(want.iter().map(|e| (e.removed, &e.keys[..])))
    ))
}

/// The set of ready keys as the implementation's events tell it: every "stored" event adds
/// keys that must not be there yet, every "removed" event removes keys that must be there.
#[derive(Debug, Default)]
struct EventView {
    seen: usize,
    ready: BTreeSet<OffloadKey>,
}

impl EventView {
    fn update(&mut self, names: &Names<'_>, log: &EventLog) -> Result<(), String> {
        for e in log.iter().skip(self.seen) {
            for key in e.keys {
                let ok = if e.removed { self.ready.remove(key) } else { self.ready.insert(*key) };
                if !ok {
                    return Err(format!(
                        "event stream: {} {} but it {} ready by earlier events",
                        if e.removed { "removed" } else { "stored" },
                        names.key(key),
                        if e.removed { "was not" } else { "was already" }
                    ));
                }
            }
        }
        self.seen = log.len();
        Ok(())
    }

    fn check<P: kvtier_core::EvictionPolicy>(&self, names: &Names<'_>, pool: &PrimaryPool<P>) -> Result<(), String> {
        let ready: BTreeSet<OffloadKey> = pool.blocks().filter(|b| b.2 >= 0).map(|b| *b.1).collect();
        if ready != self.ready {
            return Err(format!(
                "events disagree with state: ready keys {}, events say {}",
                names.keys(&ready),
                names.keys(&self.ready)
            ));
        }
        Ok(())
    }
}

/// Compares the implementation's pool with the oracle's (slots, keys, ref_cnts, policy order)
/// and checks the pool's invariants on the implementation side.
fn compare_pool(names: &Names<'_>, pool: &PrimaryPool<AnyPolicy>, model: &PoolModel) -> Result<(), String> {
    let got: Vec<(usize, OffloadKey, i32)> = pool.blocks().map(|(s, k, rc)| (s.index(), *k, rc)).collect();
    let want: Vec<(usize, OffloadKey, i32)> =
        model.slots.iter().enumerate().filter_map(|(i, s)| s.map(|(k, rc)| (i, k, rc))).collect();
    if got != want {
        let show = |v: &[(usize, OffloadKey, i32)]| {
            let items: Vec<String> = v.iter().map(|(s, k, rc)| format!("{s}:{}@{rc}", names.key(k))).collect();
            items.join(" ")
        };
        return Err(format!("blocks (slot:key@ref_cnt): engine [{}], oracle [{}]", show(&got), show(&want)));
    }
    // Invariants, on the implementation.
    if pool.capacity() != model.capacity()
        || pool.len() != got.len()
        || pool.free_slots() + pool.len() != pool.capacity()
    {
        return Err(format!(
            "accounting: capacity {} (oracle {}), len {} with {} blocks listed, free {}",
            pool.capacity(),
            model.capacity(),
            pool.len(),
            got.len(),
            pool.free_slots()
        ));
    }
    for (i, (slot, key, rc)) in got.iter().enumerate() {
        if *rc < -1 {
            return Err(format!("slot {slot} has ref_cnt {rc}"));
        }
        if got[..i].iter().any(|(_, k, _)| k == key) {
            return Err(format!("{} is in two slots", names.key(key)));
        }
        if pool.find(key) != Some((SlotId(*slot as u32), *rc)) {
            return Err(format!("find({}) = {:?}, but it is in slot {slot}", names.key(key), pool.find(key)));
        }
    }
    for key in names.0 {
        if pool.lookup(key) != model.lookup(key) {
            return Err(format!(
                "pool lookup({}): engine {:?}, oracle {:?}",
                names.key(key),
                pool.lookup(key),
                model.lookup(key)
            ));
        }
    }
    let keys_of = |slots: &mut dyn Iterator<Item = SlotId>| -> Result<Vec<OffloadKey>, String> {
        slots
            .map(|s| pool.slot(s).map(|(k, _)| *k).ok_or_else(|| format!("the policy lists free slot {}", s.0)))
            .collect()
    };
    let resident: BTreeSet<OffloadKey> = got.iter().map(|b| b.1).collect();
    let once = |lists: &[&Vec<OffloadKey>]| -> Result<(), String> {
        let all: Vec<OffloadKey> = lists.iter().flat_map(|l| l.iter().copied()).collect();
        let set: BTreeSet<OffloadKey> = all.iter().copied().collect();
        if set.len() != all.len() || set != resident {
            return Err(format!(
                "the policy's resident lists {} are not the present keys {} (each once)",
                names.keys(&all),
                names.keys(&resident)
            ));
        }
        Ok(())
    };
    match (pool.policy(), &model.order) {
        (AnyPolicy::Lru(p), OrderModel::Lru(list)) => {
            let order = keys_of(&mut p.order())?;
            if &order != list {
                return Err(format!("LRU order: engine {}, oracle {}", names.keys(&order), names.keys(list)));
            }
            once(&[&order])?;
        }
        (AnyPolicy::Arc(p), OrderModel::Arc(arc)) => {
            let t1 = keys_of(&mut p.t1())?;
            let t2 = keys_of(&mut p.t2())?;
            let b1: Vec<OffloadKey> = p.b1().copied().collect();
            let b2: Vec<OffloadKey> = p.b2().copied().collect();
            if t1 != arc.t1 || t2 != arc.t2 || b1 != arc.b1 || b2 != arc.b2 || p.target() != arc.p {
                return Err(format!(
                    "ARC: engine t1 {} t2 {} b1 {} b2 {} p {}, oracle t1 {} t2 {} b1 {} b2 {} p {}",
                    names.keys(&t1),
                    names.keys(&t2),
                    names.keys(&b1),
                    names.keys(&b2),
                    p.target(),
                    names.keys(&arc.t1),
                    names.keys(&arc.t2),
                    names.keys(&arc.b1),
                    names.keys(&arc.b2),
                    arc.p
                ));
            }
            once(&[&t1, &t2])?;
            let ghosts: BTreeSet<OffloadKey> = b1.iter().chain(&b2).copied().collect();
            let cap = pool.capacity();
            if ghosts.len() != b1.len() + b2.len() || ghosts.iter().any(|g| resident.contains(g)) {
                return Err(format!("ghosts {} / {} repeat or are resident", names.keys(&b1), names.keys(&b2)));
            }
            if b1.len() > cap || b2.len() > cap || !(0.0..=cap as f64).contains(&p.target()) {
                return Err(format!("ARC bounds: |b1| {} |b2| {} p {} capacity {cap}", b1.len(), b2.len(), p.target()));
            }
        }
        _ => return Err(String::from("policy kinds differ")),
    }
    Ok(())
}

fn arc_target(model: &PoolModel) -> Option<f64> {
    match &model.order {
        OrderModel::Arc(arc) => Some(arc.p),
        OrderModel::Lru(_) => None,
    }
}

fn req_ctx(req: u8) -> ReqContext {
    ReqContext::new(u64::from(req))
}

/// Drives a [`TieringEngine`] with `n_tiers` [`ScriptedTier`]s and an [`EngineModel`] op by
/// op, comparing after every op.
pub struct Harness {
    config: Config,
    keys: Vec<OffloadKey>,
    engine: TieringEngine<AnyPolicy>,
    model: EngineModel,
    events: EventLog,
    view: EventView,
    plans: VecDeque<Vec<OffloadKey>>,
    loads: VecDeque<Vec<OffloadKey>>,
    plan: StorePlan,
    slots: Vec<SlotId>,
    /// What this run exercised so far.
    pub coverage: Coverage,
}

impl fmt::Debug for Harness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Harness").field("config", &self.config).field("engine", &self.engine).finish_non_exhaustive()
    }
}

impl Harness {
    /// A fresh engine and oracle for `config`, ops indexing into `keys` ([`default_keys`]`(12)`
    /// when empty).
    pub fn new(config: &Config, keys: &[OffloadKey]) -> Self {
        let keys = if keys.is_empty() { default_keys(12) } else { keys.to_vec() };
        let tiers: Vec<Box<dyn SecondaryTier>> =
            (0..config.n_tiers).map(|_| Box::new(ScriptedTier::new()) as Box<dyn SecondaryTier>).collect();
        let engine_config = EngineConfig { promotion_deadline_steps: config.deadline, events: true };
        Harness {
            engine: TieringEngine::new(AnyPolicy::new(config.policy, config.num_slots), tiers, engine_config),
            model: EngineModel::new(config.policy, config.num_slots as usize, config.n_tiers, config.deadline),
            config: *config,
            keys,
            events: EventLog::new(),
            view: EventView::default(),
            plans: VecDeque::new(),
            loads: VecDeque::new(),
            plan: StorePlan::new(),
            slots: Vec::new(),
            coverage: Coverage::default(),
        }
    }

    /// The engine under test.
    pub fn engine(&self) -> &TieringEngine<AnyPolicy> {
        &self.engine
    }

    /// The oracle.
    pub fn model(&self) -> &EngineModel {
        &self.model
    }

    fn key(&self, i: u8) -> OffloadKey {
        self.keys[usize::from(i) % self.keys.len()]
    }

    fn key_list(&self, ix: &[u8]) -> Vec<OffloadKey> {
        ix.iter().map(|&i| self.key(i)).collect()
    }

    fn tier(&mut self, t: u8) -> Option<(usize, &mut ScriptedTier)> {
        if self.config.n_tiers == 0 {
            return None;
        }
        let t = usize::from(t) % self.config.n_tiers;
        self.engine.tier_mut::<ScriptedTier>(t).map(|tier| (t, tier))
    }

    /// Applies op `index` to both sides and compares.
    pub fn apply(&mut self, index: usize, op: &Op) -> Result<(), Mismatch> {
        self.coverage.ops += 1;
        let p = arc_target(&self.model.pool);
        self.step(op).and_then(|()| self.compare_all()).map_err(|detail| Mismatch {
            index,
            op: Some(op.clone()),
            detail,
        })?;
        self.coverage.arc_adapt += u64::from(p != arc_target(&self.model.pool));
        Ok(())
    }

    /// Shuts both sides down (if an op has not), checks that every job completed and every
    /// reservation and cascade pin is gone, and that a second shutdown changes nothing.
    pub fn finish(&mut self, index: usize) -> Result<(), Mismatch> {
        let fail = |detail| Mismatch { index, op: None, detail };
        if self.model.shut_down {
            self.coverage.shutdowns += 1;
        }
        self.engine.shutdown();
        self.model.shutdown();
        self.compare_all().map_err(fail)?;
        if self.engine.jobs_in_flight() != 0 {
            return Err(fail(format!("{} jobs still in flight after shutdown", self.engine.jobs_in_flight())));
        }
        if let Some(s) = (0..self.config.num_slots).map(SlotId).find(|&s| self.engine.is_promotion_slot(s)) {
            return Err(fail(format!("slot {} still reserved by a promotion after shutdown", s.0)));
        }
        self.engine.shutdown();
        self.model.shutdown();
        self.compare_all().map_err(fail)?;
        let stats = self.engine.stats();
        self.coverage.promotions = [stats.promotions_loaded, stats.promotions_failed, stats.promotions_overdue];
        self.coverage.protocol_errors = stats.protocol_errors;
        Ok(())
    }

    fn step(&mut self, op: &Op) -> Result<(), String> {
        let names = Names(&self.keys);
        match op {
            Op::Lookup { key, req } => {
                let key = self.key(*key);
                let got = self.engine.lookup(&key, req_ctx(*req));
                let want = self.model.lookup(&key, req_ctx(*req));
                self.coverage.lookups[lookup_index(got)] += 1;
                if got != want {
                    return Err(format!("lookup({}): engine {got:?}, oracle {want:?}", names.key(&key)));
                }
            }
            Op::PrepareStore { keys, req } => {
                let keys = self.key_list(keys);
                self.prepare_store(&keys, *req)?;
            }
            Op::CompleteStore { keys, req, success } => {
                let keys = self.key_list(keys);
                self.complete_store(&keys, *req, *success)?;
            }
            Op::CompleteStored { req, success } => {
                let keys = self.plans.pop_front().unwrap_or_default();
                self.complete_store(&keys, *req, *success)?;
            }
            Op::PrepareLoad { keys, req } => {
                let keys = self.key_list(keys);
                self.slots.clear();
                let got = self.engine.prepare_load(&keys, req_ctx(*req), &mut self.slots);
                let want = self.model.prepare_load(&keys);
                match (&got, &want) {
                    (Ok(()), Ok(slots)) => {
                        let want_slots: Vec<SlotId> = slots.iter().map(|&s| SlotId(s as u32)).collect();
                        if self.slots != want_slots {
                            return Err(format!("prepare_load slots: engine {:?}, oracle {want_slots:?}", self.slots));
                        }
                        self.loads.push_back(keys);
                        self.coverage.loads[0] += 1;
                    }
                    (Err(g), Err(w)) if g == w => {
                        if !self.slots.is_empty() {
                            return Err(format!("refused prepare_load ({g:?}) still returned slots {:?}", self.slots));
                        }
                        self.coverage.loads[1] += 1;
                    }
                    _ => return Err(format!("prepare_load({}): engine {got:?}, oracle {want:?}", names.keys(&keys))),
                }
            }
            Op::CompleteLoad { keys, req } => {
                let keys = self.key_list(keys);
                self.complete_load(&keys, *req)?;
            }
            Op::CompleteLoaded { req } => {
                let keys = self.loads.pop_front().unwrap_or_default();
                self.complete_load(&keys, *req)?;
            }
            Op::Touch { keys, req } => {
                let keys = self.key_list(keys);
                self.engine.touch(&keys, req_ctx(*req));
                self.model.touch(&keys);
            }
            Op::EndStep => {
                self.engine.end_step();
                self.model.end_step();
            }
            Op::TakeEvents => {
                self.engine.take_events(&mut self.events);
                let want = self.model.take_events();
                self.view.update(&names, &self.events)?;
                compare_events(&names, &self.events, &want)?;
                self.coverage.events += want.len() as u64;
                self.events.clear();
                self.view.seen = 0;
            }
            Op::Drain => {
                self.engine.drain();
                self.model.drain();
            }
            Op::TierFailNext { tier, kind } => {
                if let Some((t, tier)) = self.tier(*tier) {
                    tier.fail_next(*kind);
                    self.model.tier_fail_next(t, *kind);
                }
            }
            Op::TierInsert { tier, keys } => {
                let keys = self.key_list(keys);
                if let Some((t, tier)) = self.tier(*tier) {
                    for key in &keys {
                        tier.inner.insert(*key, &[]);
                    }
                    self.model.tier_insert(t, &keys);
                }
            }
            Op::TierHold { tier, hold } => {
                if let Some((t, tier)) = self.tier(*tier) {
                    tier.hold = *hold;
                    self.model.tiers[t].hold = *hold;
                }
            }
            Op::TierBusy { tier, busy } => {
                if let Some((t, tier)) = self.tier(*tier) {
                    tier.busy = *busy;
                    self.model.tiers[t].busy = *busy;
                }
            }
            Op::TierLose { tier, keys } => {
                let keys = self.key_list(keys);
                if let Some((t, tier)) = self.tier(*tier) {
                    tier.lose = keys.clone();
                    self.model.tiers[t].lose = keys;
                }
            }
            Op::TierReport { tier, back, success } => {
                let job = (self.model.next_job + 1).wrapping_sub(u64::from(*back));
                if let Some((t, tier)) = self.tier(*tier) {
                    tier.report(JobId(job), *success);
                    self.model.tier_report(t, job, *success);
                }
            }
            Op::TierForget { tier } => {
                if let Some((t, tier)) = self.tier(*tier) {
                    tier.forget = true;
                    self.model.tiers[t].forget = true;
                }
            }
            Op::Shutdown => {
                self.engine.shutdown();
                self.model.shutdown();
            }
        }
        Ok(())
    }

    fn prepare_store(&mut self, keys: &[OffloadKey], req: u8) -> Result<(), String> {
        let names = Names(&self.keys);
        let got = self.engine.prepare_store(keys, req_ctx(req), &mut self.plan);
        let want = self.model.prepare_store(keys);
        match (&got, &want) {
            (Ok(()), Ok(plan)) => {
                let slots: Vec<SlotId> = plan.slots.iter().map(|&s| SlotId(s as u32)).collect();
                if self.plan.keys != plan.keys || self.plan.slots != slots || self.plan.evicted != plan.evicted {
                    return Err(format!(
                        "prepare_store({}) plan: engine keys {} slots {:?} evicted {}, oracle keys {} slots {:?} evicted {}",
                        names.keys(keys),
                        names.keys(&self.plan.keys),
                        self.plan.slots,
                        names.keys(&self.plan.evicted),
                        names.keys(&plan.keys),
                        slots,
                        names.keys(&plan.evicted)
                    ));
                }
                if !plan.keys.is_empty() {
                    self.plans.push_back(plan.keys.clone());
                    self.coverage.stores[0] += 1;
                }
                self.coverage.evicted += plan.evicted.len() as u64;
            }
            (Err(g), Err(w)) if g == w => {
                // `StorePlan` says each call clears it; the engine's shut-down refusal returns
                // before the pool clears it (reported; tolerated so it does not mask the rest).
                let stale_ok = *g == kvtier_core::StoreError::ShutDown;
                let dirty = !self.plan.keys.is_empty() || !self.plan.slots.is_empty() || !self.plan.evicted.is_empty();
                if dirty && !stale_ok {
                    return Err(format!("refused prepare_store ({g:?}) left a plan behind"));
                }
                self.coverage.stores[1] += 1;
            }
            _ => return Err(format!("prepare_store({}): engine {got:?}, oracle {want:?}", names.keys(keys))),
        }
        Ok(())
    }

    fn complete_store(&mut self, keys: &[OffloadKey], req: u8, success: bool) -> Result<(), String> {
        let got = self.engine.complete_store(keys, req_ctx(req), success);
        let want = self.model.complete_store(keys, req_ctx(req), success);
        if got != want {
            let names = Names(&self.keys);
            return Err(format!("complete_store({}, {success}): engine {got:?}, oracle {want:?}", names.keys(keys)));
        }
        self.coverage.completed += want.unwrap_or(0) as u64;
        Ok(())
    }

    fn complete_load(&mut self, keys: &[OffloadKey], req: u8) -> Result<(), String> {
        let got = self.engine.complete_load(keys, req_ctx(req));
        let want = self.model.complete_load(keys);
        if got != want {
            let names = Names(&self.keys);
            return Err(format!("complete_load({}): engine {got:?}, oracle {want:?}", names.keys(keys)));
        }
        self.coverage.unloads[usize::from(got.is_err())] += 1;
        Ok(())
    }

    /// Full comparison after an op.
    fn compare_all(&mut self) -> Result<(), String> {
        let names = Names(&self.keys);
        compare_pool(&names, self.engine.primary(), &self.model.pool)?;
        // Events raised so far (not yet taken) agree, and agree with the state.
        self.engine.take_events(&mut self.events);
        self.view.update(&names, &self.events)?;
        compare_events(&names, &self.events, &self.model.pool.events)?;
        self.view.check(&names, self.engine.primary())?;
        let e = &self.engine;
        let m = &self.model;
        if e.jobs_in_flight() != m.jobs_in_flight() {
            return Err(format!("jobs in flight: engine {}, oracle {}", e.jobs_in_flight(), m.jobs_in_flight()));
        }
        if e.step() != m.step || e.is_shut_down() != m.shut_down {
            return Err(format!(
                "step/shut down: engine {}/{}, oracle {}/{}",
                e.step(),
                e.is_shut_down(),
                m.step,
                m.shut_down
            ));
        }
        if e.stats() != &m.stats {
            return Err(format!("stats: engine {:?}, oracle {:?}", e.stats(), m.stats));
        }
        if e.last_protocol_error() != m.last_protocol_error {
            return Err(format!(
                "last protocol error: engine {:?}, oracle {:?}",
                e.last_protocol_error(),
                m.last_protocol_error
            ));
        }
        for s in 0..self.config.num_slots as usize {
            if e.is_promotion_slot(SlotId(s as u32)) != m.is_promotion_slot(s) {
                return Err(format!(
                    "slot {s} promotion reservation: engine {}, oracle {}",
                    e.is_promotion_slot(SlotId(s as u32)),
                    m.is_promotion_slot(s)
                ));
            }
        }
        m.self_check().map_err(|e| format!("oracle self-check: {e}"))?;
        for t in 0..self.config.n_tiers {
            let tier = self.engine.tier_mut::<ScriptedTier>(t).ok_or("tier is not a ScriptedTier")?;
            let model = &mut self.model.tiers[t];
            let got_has: BTreeSet<OffloadKey> = names.0.iter().copied().filter(|k| tier.inner.contains(k)).collect();
            if got_has != model.has || tier.inner.len() != model.has.len() {
                return Err(format!("tier {t} holds {}, oracle {}", names.keys(&got_has), names.keys(&model.has)));
            }
            if tier.undelivered() != model.undelivered() {
                return Err(format!(
                    "tier {t} reports waiting: engine side {}, oracle {}",
                    tier.undelivered(),
                    model.undelivered()
                ));
            }
            let got_jobs = core::mem::take(&mut tier.submitted);
            let want_jobs = core::mem::take(&mut self.model.submitted[t]);
            if got_jobs != want_jobs {
                let show = |jobs: &[crate::SubmittedJob]| {
                    let v: Vec<String> = jobs
                        .iter()
                        .map(|j| {
                            let slots: Vec<u32> = j.slots.iter().map(|s| s.0).collect();
                            format!(
                                "{:?}#{} req{} {} slots {slots:?}",
                                j.kind,
                                j.id.0,
                                j.req.req.0,
                                names.keys(&j.keys)
                            )
                        })
                        .collect();
                    v.join("; ")
                };
                return Err(format!("tier {t} received jobs [{}], oracle [{}]", show(&got_jobs), show(&want_jobs)));
            }
        }
        Ok(())
    }
}

/// Runs `ops` through a [`TieringEngine`] (policy, slots, tiers and deadline from `config`) and
/// the oracle, then shuts both down; the first disagreement or broken invariant is returned.
pub fn check(config: &Config, keys: &[OffloadKey], ops: &[Op]) -> Result<(), Mismatch> {
    let mut h = Harness::new(config, keys);
    for (i, op) in ops.iter().enumerate() {
        h.apply(i, op)?;
    }
    h.finish(ops.len())
}

/// Drives a [`PrimaryPool`] alone and a [`PoolModel`]: only the pool's calls (lookup,
/// prepare/complete store and load, touch, take_events); other ops are ignored.
pub struct PoolHarness {
    keys: Vec<OffloadKey>,
    pool: PrimaryPool<AnyPolicy>,
    model: PoolModel,
    events: EventLog,
    view: EventView,
    user_pins: i64,
    plans: VecDeque<Vec<OffloadKey>>,
    loads: VecDeque<Vec<OffloadKey>>,
    plan: StorePlan,
    slots: Vec<SlotId>,
    /// What this run exercised so far.
    pub coverage: Coverage,
}

impl fmt::Debug for PoolHarness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolHarness").field("pool", &self.pool).finish_non_exhaustive()
    }
}

impl PoolHarness {
    /// A fresh pool of `num_slots` slots and its oracle.
    pub fn new(policy: PolicyKind, num_slots: u32, keys: &[OffloadKey]) -> Self {
        let keys = if keys.is_empty() { default_keys(12) } else { keys.to_vec() };
        PoolHarness {
            keys,
            pool: PrimaryPool::new(AnyPolicy::new(policy, num_slots)),
            model: PoolModel::new(policy, num_slots as usize),
            events: EventLog::new(),
            view: EventView::default(),
            user_pins: 0,
            plans: VecDeque::new(),
            loads: VecDeque::new(),
            plan: StorePlan::new(),
            slots: Vec::new(),
            coverage: Coverage::default(),
        }
    }

    fn key_list(&self, ix: &[u8]) -> Vec<OffloadKey> {
        ix.iter().map(|&i| self.keys[usize::from(i) % self.keys.len()]).collect()
    }

    /// Applies op `index` to both sides and compares.
    pub fn apply(&mut self, index: usize, op: &Op) -> Result<(), Mismatch> {
        self.coverage.ops += 1;
        let p = arc_target(&self.model);
        self.step(op).and_then(|()| self.compare()).map_err(|detail| Mismatch {
            index,
            op: Some(op.clone()),
            detail,
        })?;
        self.coverage.arc_adapt += u64::from(p != arc_target(&self.model));
        Ok(())
    }

    fn step(&mut self, op: &Op) -> Result<(), String> {
        let names = Names(&self.keys);
        match op {
            Op::Lookup { key, .. } => {
                let key = self.keys[usize::from(*key) % self.keys.len()];
                let (got, want) = (self.pool.lookup(&key), self.model.lookup(&key));
                if got != want {
                    return Err(format!("lookup({}): pool {got:?}, oracle {want:?}", names.key(&key)));
                }
            }
            Op::PrepareStore { keys, .. } => {
                let keys = self.key_list(keys);
                let got = self.pool.prepare_store(&keys, &mut self.plan);
                let want = self.model.prepare_store(&keys);
                match (&got, &want) {
                    (Ok(()), Ok(plan)) => {
                        let slots: Vec<SlotId> = plan.slots.iter().map(|&s| SlotId(s as u32)).collect();
                        if self.plan.keys != plan.keys || self.plan.slots != slots || self.plan.evicted != plan.evicted
                        {
                            return Err(format!(
                                "prepare_store({}) plan: pool keys {} slots {:?} evicted {}, oracle keys {} slots {:?} evicted {}",
                                names.keys(&keys),
                                names.keys(&self.plan.keys),
                                self.plan.slots,
                                names.keys(&self.plan.evicted),
                                names.keys(&plan.keys),
                                slots,
                                names.keys(&plan.evicted)
                            ));
                        }
                        if !plan.keys.is_empty() {
                            self.plans.push_back(plan.keys.clone());
                            self.coverage.stores[0] += 1;
                        }
                        self.coverage.evicted += plan.evicted.len() as u64;
                    }
                    (Err(g), Err(w)) if g == w => self.coverage.stores[1] += 1,
                    _ => return Err(format!("prepare_store({}): pool {got:?}, oracle {want:?}", names.keys(&keys))),
                }
            }
            Op::CompleteStore { keys, success, .. } => {
                let keys = self.key_list(keys);
                self.complete_store(&keys, *success)?;
            }
            Op::CompleteStored { success, .. } => {
                let keys = self.plans.pop_front().unwrap_or_default();
                self.complete_store(&keys, *success)?;
            }
            Op::PrepareLoad { keys, .. } => {
                let keys = self.key_list(keys);
                self.slots.clear();
                let got = self.pool.prepare_load(&keys, &mut self.slots);
                let want = self.model.prepare_load(&keys);
                match (&got, &want) {
                    (Ok(()), Ok(slots)) => {
                        let want_slots: Vec<SlotId> = slots.iter().map(|&s| SlotId(s as u32)).collect();
                        if self.slots != want_slots {
                            return Err(format!("prepare_load slots: pool {:?}, oracle {want_slots:?}", self.slots));
                        }
                        self.user_pins += keys.len() as i64;
                        self.loads.push_back(keys);
                        self.coverage.loads[0] += 1;
                    }
                    (Err(g), Err(w)) if g == w && self.slots.is_empty() => self.coverage.loads[1] += 1,
                    _ => {
                        return Err(format!(
                            "prepare_load({}): pool {got:?} slots {:?}, oracle {want:?}",
                            names.keys(&keys),
                            self.slots
                        ))
                    }
                }
            }
            Op::CompleteLoad { keys, .. } => {
                let keys = self.key_list(keys);
                self.complete_load(&keys)?;
            }
            Op::CompleteLoaded { .. } => {
                let keys = self.loads.pop_front().unwrap_or_default();
                self.complete_load(&keys)?;
            }
            Op::Touch { keys, .. } => {
                let keys = self.key_list(keys);
                self.pool.touch(&keys);
                self.model.touch(&keys);
            }
            Op::TakeEvents => {
                self.pool.take_events(&mut self.events);
                let want = self.model.take_events();
                self.view.update(&names, &self.events)?;
                compare_events(&names, &self.events, &want)?;
                self.coverage.events += want.len() as u64;
                self.events.clear();
                self.view.seen = 0;
            }
            _ => {}
        }
        Ok(())
    }

    fn complete_store(&mut self, keys: &[OffloadKey], success: bool) -> Result<(), String> {
        let mut got = Vec::new();
        self.pool.complete_store(keys, success, &mut got);
        let want: Vec<SlotId> =
            self.model.complete_store(keys, success, |_| true).into_iter().map(|s| SlotId(s as u32)).collect();
        if got != want {
            let names = Names(&self.keys);
            return Err(format!(
                "complete_store({}, {success}) readied: pool {got:?}, oracle {want:?}",
                names.keys(keys)
            ));
        }
        self.coverage.completed += got.len() as u64;
        Ok(())
    }

    fn complete_load(&mut self, keys: &[OffloadKey]) -> Result<(), String> {
        let got = self.pool.complete_load(keys);
        let want = self.model.complete_load(keys);
        if got != want {
            let names = Names(&self.keys);
            return Err(format!("complete_load({}): pool {got:?}, oracle {want:?}", names.keys(keys)));
        }
        if got.is_ok() {
            self.user_pins -= keys.len() as i64;
        }
        self.coverage.unloads[usize::from(got.is_err())] += 1;
        Ok(())
    }

    fn compare(&mut self) -> Result<(), String> {
        let names = Names(&self.keys);
        compare_pool(&names, &self.pool, &self.model)?;
        self.pool.take_events(&mut self.events);
        self.view.update(&names, &self.events)?;
        compare_events(&names, &self.events, &self.model.events)?;
        self.view.check(&names, &self.pool)?;
        let pins: i64 = self.pool.blocks().map(|b| i64::from(b.2.max(0))).sum();
        if pins != self.user_pins {
            return Err(format!(
                "pins: sum of positive ref_cnts {pins}, successful loads minus unloads {}",
                self.user_pins
            ));
        }
        Ok(())
    }
}

/// Runs `ops` (the pool's calls among them) through a [`PrimaryPool`] and the oracle's pool.
pub fn check_pool(policy: PolicyKind, num_slots: u32, keys: &[OffloadKey], ops: &[Op]) -> Result<(), Mismatch> {
    let mut h = PoolHarness::new(policy, num_slots, keys);
    for (i, op) in ops.iter().enumerate() {
        h.apply(i, op)?;
    }
    Ok(())
}

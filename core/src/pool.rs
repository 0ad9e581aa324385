//! The primary pool (the CPU tier): slots, reference counts, slot allocation and eviction.
//!
//! Slot allocation follows SEMANTICS.md exactly: never-used slots in increasing order first,
//! then freed slots last-freed-first; slots freed by the evictions of a `prepare_store` are
//! pushed in eviction order before that call allocates. Every operation checks its whole
//! argument list before changing anything, so an error leaves the pool as it was.

use alloc::vec::Vec;

use hashbrown::HashTable;

use crate::error::{LoadError, StoreError, UnpinError};
use crate::event::{EventLog, Medium};
use crate::policy::EvictionPolicy;
use crate::{OffloadKey, SlotId};

/// `ref_cnt` of a slot whose write is in flight.
pub const IN_FLIGHT: i32 = -1;

/// What the pool says of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolLookup {
    /// Present and readable (`ref_cnt >= 0`).
    Ready,
    /// Present, write in flight (`ref_cnt == -1`).
    Pending,
    /// Absent.
    Miss,
}

/// The output of a successful `prepare_store`, in caller-owned buffers (cleared by each call).
#[derive(Debug, Clone, Default)]
pub struct StorePlan {
    /// Keys to write, first occurrences of the absent input keys, in input order.
    pub keys: Vec<OffloadKey>,
    /// Their slots, co-indexed with `keys`.
    pub slots: Vec<SlotId>,
    /// Keys evicted to make room, in eviction order.
    pub evicted: Vec<OffloadKey>,
}

impl StorePlan {
    /// Empty buffers.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn clear(&mut self) {
        self.keys.clear();
        self.slots.clear();
        self.evicted.clear();
    }
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    key: OffloadKey,
    ref_cnt: i32,
    present: bool,
}

/// The primary pool over a fixed number of slots, ordered by an [`EvictionPolicy`].
#[derive(Debug, Clone)]
pub struct PrimaryPool<P> {
    policy: P,
    slots: Vec<Slot>,
    index: HashTable<u32>,
    fresh: u32,
    free: Vec<u32>,
    len: usize,
    /// Per-slot stamp; `mark[s] == epoch` protects slot `s` during the current call.
    mark: Vec<u32>,
    epoch: u32,
    dedup: HashTable<u32>,
    victims: Vec<SlotId>,
    events: EventLog,
    events_enabled: bool,
}

impl<P: EvictionPolicy> PrimaryPool<P> {
    /// An empty pool with one slot per unit of the policy's capacity.
    pub fn new(policy: P) -> Self {
        let n = policy.capacity() as usize;
        let blank = Slot { key: OffloadKey::from_bytes(&[0; 4]).expect("4-byte key"), ref_cnt: 0, present: false };
        PrimaryPool {
            policy,
            slots: alloc::vec![blank; n],
            // Twice the most keys ever present: hashbrown then always rehashes in place (no
            // allocation) when deletions leave it short of room.
            index: HashTable::with_capacity(2 * n),
            fresh: 0,
            free: Vec::with_capacity(n),
            len: 0,
            mark: alloc::vec![0; n],
            epoch: 0,
            dedup: HashTable::new(),
            victims: Vec::new(),
            events: EventLog::new(),
            events_enabled: true,
        }
    }

    /// Turns event collection on or off (on by default). Off, `take_events` yields nothing and
    /// nothing accumulates for callers that never drain events.
    pub fn set_events(&mut self, enabled: bool) {
        self.events_enabled = enabled;
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Number of present blocks (any state).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no block is present.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of slots that can be allocated without eviction.
    pub fn free_slots(&self) -> usize {
        self.slots.len() - self.len
    }

    /// The eviction policy (for inspecting its order).
    pub fn policy(&self) -> &P {
        &self.policy
    }

    /// The key in `slot` and its `ref_cnt`, if the slot holds a block.
    pub fn slot(&self, slot: SlotId) -> Option<(&OffloadKey, i32)> {
        self.slots.get(slot.index()).filter(|s| s.present).map(|s| (&s.key, s.ref_cnt))
    }

    /// Present blocks by increasing slot: `(slot, key, ref_cnt)`.
    pub fn blocks(&self) -> impl Iterator<Item = (SlotId, &OffloadKey, i32)> + '_ {
        self.slots.iter().enumerate().filter(|(_, s)| s.present).map(|(i, s)| (SlotId(i as u32), &s.key, s.ref_cnt))
    }

    /// The slot holding `key` and its `ref_cnt`.
    pub fn find(&self, key: &OffloadKey) -> Option<(SlotId, i32)> {
        let s = self.find_slot(key)?;
        Some((SlotId(s), self.slots[s as usize].ref_cnt))
    }

    /// Ready, Pending or Miss. Does not change recency.
    pub fn lookup(&self, key: &OffloadKey) -> PoolLookup {
        match self.find(key) {
            Some((_, rc)) if rc >= 0 => PoolLookup::Ready,
            Some(_) => PoolLookup::Pending,
            None => PoolLookup::Miss,
        }
    }

    fn find_slot(&self, key: &OffloadKey) -> Option<u32> {
        let slots = &self.slots;
        self.index.find(key.table_hash(), |&s| slots[s as usize].key == *key).copied()
    }

    fn next_epoch(&mut self) -> u32 {
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.mark.iter_mut().for_each(|m| *m = 0);
            self.epoch = 1;
        }
        self.epoch
    }

    /// Allocates slots for the absent keys of `keys` (each considered once), evicting with the
    /// policy if needed; never evicts a block with readers or a write in flight, nor any key of
    /// `keys`. New blocks are in flight (`ref_cnt -1`) and most recent. Eviction is atomic: on
    /// [`StoreError::NoSpace`] nothing changed. Nothing to store is an empty plan, not an error.
    pub fn prepare_store(&mut self, keys: &[OffloadKey], plan: &mut StorePlan) -> Result<(), StoreError> {
        plan.clear();
        let epoch = self.next_epoch();
        self.dedup.clear();
        for key in keys {
            if let Some(s) = self.find_slot(key) {
                self.mark[s as usize] = epoch;
                continue;
            }
            let h = key.table_hash();
            let planned = &plan.keys;
            if self.dedup.find(h, |&i| planned[i as usize] == *key).is_none() {
                self.dedup.insert_unique(h, plan.keys.len() as u32, |&i| planned[i as usize].table_hash());
                plan.keys.push(*key);
            }
        }
        let need = plan.keys.len().saturating_sub(self.free_slots());
        if need > 0 {
            self.victims.clear();
            let (slots, mark) = (&self.slots, &self.mark);
            let evictable = |s: SlotId| {
                let slot = &slots[s.index()];
                slot.present && slot.ref_cnt == 0 && mark[s.index()] != epoch
            };
            if !self.policy.select_victims(need, &evictable, &mut self.victims) || self.victims.len() != need {
                plan.clear();
                return Err(StoreError::NoSpace { needed: need });
            }
            for i in 0..self.victims.len() {
                let v = self.victims[i];
                let key = self.slots[v.index()].key;
                self.unindex(v.0);
                self.policy.on_evict(v, &key);
                self.free.push(v.0);
                plan.evicted.push(key);
            }
            if self.events_enabled {
                self.events.push(Medium::Cpu, true, &plan.evicted);
            }
        }
        for i in 0..plan.keys.len() {
            let key = plan.keys[i];
            let s = self.allocate();
            self.slots[s as usize] = Slot { key, ref_cnt: IN_FLIGHT, present: true };
            let slots = &self.slots;
            self.index.insert_unique(key.table_hash(), s, |&x| slots[x as usize].key.table_hash());
            self.len += 1;
            self.policy.on_insert(SlotId(s), &key);
            plan.slots.push(SlotId(s));
        }
        Ok(())
    }

    fn allocate(&mut self) -> u32 {
        if (self.fresh as usize) < self.slots.len() {
            self.fresh += 1;
            self.fresh - 1
        } else {
            // `prepare_store` made sure enough slots are free.
            self.free.pop().unwrap_or_default()
        }
    }

    /// Removes slot `s` from the index and marks it absent (the caller frees it).
    fn unindex(&mut self, s: u32) {
        let key = self.slots[s as usize].key;
        if let Ok(entry) = self.index.find_entry(key.table_hash(), |&x| x == s) {
            entry.remove();
        }
        self.slots[s as usize].present = false;
        self.len -= 1;
    }

    /// Ends the writes of `keys`. Success: each listed key present and in flight becomes
    /// ready, one "stored" event lists them, and their slots are appended to `readied` in list
    /// order. Failure: each such key is removed and its slot freed; no event. Ready keys are
    /// untouched either way; absent keys are ignored.
    pub fn complete_store(&mut self, keys: &[OffloadKey], success: bool, readied: &mut Vec<SlotId>) {
        self.complete_store_filtered(keys, success, readied, |_| true);
    }

    /// `complete_store` restricted to the in-flight slots for which `owned` is true (the engine
    /// keeps the caller from completing its promotions' writes).
    pub(crate) fn complete_store_filtered(
        &mut self,
        keys: &[OffloadKey],
        success: bool,
        readied: &mut Vec<SlotId>,
        owned: impl Fn(SlotId) -> bool,
    ) {
        let start = readied.len();
        for key in keys {
            let Some(s) = self.find_slot(key) else { continue };
            if self.slots[s as usize].ref_cnt != IN_FLIGHT || !owned(SlotId(s)) {
                continue;
            }
            if success {
                self.slots[s as usize].ref_cnt = 0;
                readied.push(SlotId(s));
            } else {
                self.drop_slot(s);
            }
        }
        if success && self.events_enabled && readied.len() > start {
            let slots = &self.slots;
            self.events.push(Medium::Cpu, false, readied[start..].iter().map(|s| &slots[s.index()].key));
        }
    }

    /// Makes in-flight `slot` ready (a finished promotion); returns false if it was not in flight.
    pub(crate) fn ready_slot(&mut self, slot: SlotId) -> bool {
        match self.slots.get_mut(slot.index()) {
            Some(s) if s.present && s.ref_cnt == IN_FLIGHT => {
                s.ref_cnt = 0;
                true
            }
            _ => false,
        }
    }

    /// Removes in-flight `slot` (a failed promotion); returns false if it was not in flight.
    pub(crate) fn fail_slot(&mut self, slot: SlotId) -> bool {
        match self.slots.get(slot.index()) {
            Some(s) if s.present && s.ref_cnt == IN_FLIGHT => {
                self.drop_slot(slot.0);
                true
            }
            _ => false,
        }
    }

    /// Raises one CPU "stored" event for the keys of `slots`.
    pub(crate) fn stored_event(&mut self, slots: &[SlotId]) {
        if self.events_enabled {
            let all = &self.slots;
            self.events.push(Medium::Cpu, false, slots.iter().map(|s| &all[s.index()].key));
        }
    }

    fn drop_slot(&mut self, s: u32) {
        self.unindex(s);
        self.policy.on_remove(SlotId(s));
        self.free.push(s);
    }

    /// Pins `keys` for reading: each must be present and ready; `ref_cnt += 1` per occurrence.
    /// Appends their slots, co-indexed with `keys`, to `slots`. On error nothing changed.
    pub fn prepare_load(&mut self, keys: &[OffloadKey], slots: &mut Vec<SlotId>) -> Result<(), LoadError> {
        let start = slots.len();
        for (index, key) in keys.iter().enumerate() {
            match self.find_slot(key) {
                None => return Err(LoadError::NotPresent { index }),
                Some(s) if self.slots[s as usize].ref_cnt < 0 => return Err(LoadError::NotReady { index }),
                Some(_) => {}
            }
        }
        for (index, key) in keys.iter().enumerate() {
            let s = self.find_slot(key).unwrap_or_default();
            let rc = &mut self.slots[s as usize].ref_cnt;
            let Some(up) = rc.checked_add(1) else {
                slots.truncate(start);
                self.unpin_all(&keys[..index]);
                return Err(LoadError::PinOverflow { index });
            };
            *rc = up;
            slots.push(SlotId(s));
        }
        Ok(())
    }

    /// Unpins `keys`: `ref_cnt -= 1` per occurrence; each must be present and pinned. On error
    /// nothing changed.
    pub fn complete_load(&mut self, keys: &[OffloadKey]) -> Result<(), UnpinError> {
        self.complete_load_above(keys, |_| 0)
    }

    /// `complete_load` that never takes a slot's `ref_cnt` below `floor(slot)` (pins the caller
    /// does not own, such as the engine's cascade pins).
    pub(crate) fn complete_load_above(
        &mut self,
        keys: &[OffloadKey],
        floor: impl Fn(SlotId) -> i32,
    ) -> Result<(), UnpinError> {
        for (index, key) in keys.iter().enumerate() {
            let err = match self.find_slot(key) {
                None => UnpinError::NotPresent { index },
                Some(s) if self.slots[s as usize].ref_cnt <= floor(SlotId(s)).max(0) => UnpinError::NotPinned { index },
                Some(s) => {
                    self.slots[s as usize].ref_cnt -= 1;
                    continue;
                }
            };
            self.pin_all(&keys[..index]);
            return Err(err);
        }
        Ok(())
    }

    fn pin_all(&mut self, keys: &[OffloadKey]) {
        for key in keys {
            if let Some(s) = self.find_slot(key) {
                self.slots[s as usize].ref_cnt += 1;
            }
        }
    }

    fn unpin_all(&mut self, keys: &[OffloadKey]) {
        for key in keys {
            if let Some(s) = self.find_slot(key) {
                self.slots[s as usize].ref_cnt -= 1;
            }
        }
    }

    /// Adds one reader to ready `slot` (a cascade's pin) and returns its key; `None` if the
    /// slot is not ready.
    pub(crate) fn pin_slot(&mut self, slot: SlotId) -> Option<OffloadKey> {
        match self.slots.get_mut(slot.index()) {
            Some(s) if s.present && s.ref_cnt >= 0 && s.ref_cnt < i32::MAX => {
                s.ref_cnt += 1;
                Some(s.key)
            }
            _ => None,
        }
    }

    /// Drops one reader of `slot` if it holds `key` and is pinned; false otherwise.
    pub(crate) fn unpin_slot(&mut self, slot: SlotId, key: &OffloadKey) -> bool {
        match self.slots.get_mut(slot.index()) {
            Some(s) if s.present && s.key == *key && s.ref_cnt > 0 => {
                s.ref_cnt -= 1;
                true
            }
            _ => false,
        }
    }

    /// Marks `keys` recently used: walked in reverse, so the first key ends most recent.
    pub fn touch(&mut self, keys: &[OffloadKey]) {
        for key in keys.iter().rev() {
            let resident = self.find_slot(key).map(|s| (SlotId(s), self.slots[s as usize].ref_cnt >= 0));
            self.policy.on_touch(key, resident);
        }
    }

    /// Moves this pool's events to the end of `out`.
    pub fn take_events(&mut self, out: &mut EventLog) {
        out.append(&mut self.events);
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec;
    use alloc::vec::Vec;

    use super::*;
    use crate::{AnyPolicy, ArcPolicy, LruPolicy, PolicyKind};

    fn k(b: u8) -> OffloadKey {
        OffloadKey::new(&[b], 0).unwrap()
    }

    fn store<P: EvictionPolicy>(pool: &mut PrimaryPool<P>, keys: &[OffloadKey]) -> StorePlan {
        let mut plan = StorePlan::new();
        pool.prepare_store(keys, &mut plan).unwrap();
        let mut readied = Vec::new();
        pool.complete_store(&plan.keys, true, &mut readied);
        plan
    }

    fn slots(plan: &StorePlan) -> Vec<u32> {
        plan.slots.iter().map(|s| s.0).collect()
    }

    fn lru_order(pool: &PrimaryPool<LruPolicy>) -> Vec<OffloadKey> {
        pool.policy().order().map(|s| *pool.slot(s).unwrap().0).collect()
    }

    #[test]
    fn fresh_slots_first_then_last_freed_first() {
        let mut pool = PrimaryPool::new(LruPolicy::new(4));
        assert_eq!(slots(&store(&mut pool, &[k(1), k(2), k(3)])), [0, 1, 2]);
        // One fresh slot (3) is left; k(1) is evicted for the second key and its slot reused.
        let plan = store(&mut pool, &[k(4), k(5)]);
        assert_eq!(slots(&plan), [3, 0]);
        assert_eq!(plan.evicted, [k(1)]);
        // A failed store frees its slots onto the stack: last freed, first reused.
        let mut plan = StorePlan::new();
        pool.prepare_store(&[k(6), k(7)], &mut plan).unwrap();
        assert_eq!(slots(&plan), [2, 1]);
        assert_eq!(plan.evicted, [k(2), k(3)]);
        pool.complete_store(&[k(6), k(7)], false, &mut Vec::new());
        assert_eq!(pool.len(), 2);
        assert_eq!(slots(&store(&mut pool, &[k(8)])), [1]);
    }

    #[test]
    fn eviction_protects_the_calls_keys_and_is_atomic() {
        let mut pool = PrimaryPool::new(LruPolicy::new(2));
        store(&mut pool, &[k(1), k(2)]);
        // k(1) is least recent but named by the call, so k(2) goes.
        let plan = store(&mut pool, &[k(1), k(3)]);
        assert_eq!(plan.keys, [k(3)]);
        assert_eq!(plan.evicted, [k(2)]);
        // Pin one block; the other is protected: nothing can be evicted and nothing changes.
        pool.prepare_load(&[k(3)], &mut Vec::new()).unwrap();
        let before = lru_order(&pool);
        let mut plan = StorePlan::new();
        assert_eq!(pool.prepare_store(&[k(1), k(4)], &mut plan), Err(StoreError::NoSpace { needed: 1 }));
        assert!(plan.keys.is_empty() && plan.evicted.is_empty());
        assert_eq!(lru_order(&pool), before);
        let mut events = EventLog::new();
        pool.take_events(&mut events);
        // stored k1,k2; stored k3 after removed k2 ... and no event for the failed call.
        let kinds: Vec<(bool, usize)> = events.iter().map(|e| (e.removed, e.keys.len())).collect();
        assert_eq!(kinds, [(false, 2), (true, 1), (false, 1)]);
    }

    #[test]
    fn repeats_store_once_and_pin_per_occurrence() {
        let mut pool = PrimaryPool::new(LruPolicy::new(3));
        let plan = store(&mut pool, &[k(1), k(1), k(2)]);
        assert_eq!(plan.keys, [k(1), k(2)]);
        assert_eq!(pool.free_slots(), 1);
        let mut got = Vec::new();
        pool.prepare_load(&[k(1), k(1)], &mut got).unwrap();
        assert_eq!(got, [SlotId(0), SlotId(0)]);
        assert_eq!(pool.find(&k(1)), Some((SlotId(0), 2)));
        // Three unpins of a block pinned twice: refused as a whole, nothing changes.
        assert_eq!(pool.complete_load(&[k(1), k(2), k(1), k(1)]), Err(UnpinError::NotPinned { index: 1 }));
        assert_eq!(pool.complete_load(&[k(1), k(1), k(1)]), Err(UnpinError::NotPinned { index: 2 }));
        assert_eq!(pool.find(&k(1)), Some((SlotId(0), 2)));
        assert_eq!(pool.complete_load(&[k(9)]), Err(UnpinError::NotPresent { index: 0 }));
        pool.complete_load(&[k(1), k(1)]).unwrap();
        assert_eq!(pool.find(&k(1)), Some((SlotId(0), 0)));
    }

    #[test]
    fn load_errors_leave_state_unchanged() {
        let mut pool = PrimaryPool::new(LruPolicy::new(3));
        store(&mut pool, &[k(1)]);
        let mut plan = StorePlan::new();
        pool.prepare_store(&[k(2)], &mut plan).unwrap();
        let mut got = vec![SlotId(7)];
        assert_eq!(pool.prepare_load(&[k(1), k(2)], &mut got), Err(LoadError::NotReady { index: 1 }));
        assert_eq!(pool.prepare_load(&[k(1), k(3)], &mut got), Err(LoadError::NotPresent { index: 1 }));
        assert_eq!(got, [SlotId(7)]);
        assert_eq!(pool.find(&k(1)), Some((SlotId(0), 0)));
        assert_eq!(pool.lookup(&k(2)), PoolLookup::Pending);
        assert_eq!(pool.lookup(&k(1)), PoolLookup::Ready);
        assert_eq!(pool.lookup(&k(3)), PoolLookup::Miss);
    }

    #[test]
    fn touch_leaves_the_first_key_most_recent() {
        let mut pool = PrimaryPool::new(LruPolicy::new(4));
        store(&mut pool, &[k(1), k(2), k(3), k(4)]);
        pool.touch(&[k(2), k(9), k(1)]);
        assert_eq!(lru_order(&pool), [k(3), k(4), k(1), k(2)]);
    }

    #[test]
    fn arc_ghost_hits_move_the_target() {
        let mut pool = PrimaryPool::new(ArcPolicy::new(2));
        store(&mut pool, &[k(1), k(2)]);
        store(&mut pool, &[k(3)]); // evicts k1 from T1 into B1
        assert_eq!(pool.policy().b1().copied().collect::<Vec<_>>(), [k(1)]);
        pool.touch(&[k(1)]); // ghost hit in B1: p = min(0 + max(1, 0/1), 2) = 1
        assert_eq!(pool.policy().target(), 1.0);
        pool.touch(&[k(3)]); // ready in T1: to T2
        assert_eq!(pool.policy().t2().collect::<Vec<_>>(), [SlotId(0)]);
        // |T1| = 1 >= floor(p) = 1: the victim comes from T1 (k2), and goes to B1.
        let plan = store(&mut pool, &[k(4)]);
        assert_eq!(plan.evicted, [k(2)]);
        assert_eq!(pool.policy().b1().copied().collect::<Vec<_>>(), [k(1), k(2)]);
        // Inserting a ghost's key drops it from the ghost list.
        store(&mut pool, &[k(1)]);
        assert_eq!(pool.policy().b1().copied().collect::<Vec<_>>(), [k(2), k(4)]);
    }

    #[test]
    fn arc_fails_when_t2_is_empty_even_if_t1_has_a_candidate() {
        let mut pool = PrimaryPool::new(ArcPolicy::new(2));
        store(&mut pool, &[k(1), k(2)]);
        store(&mut pool, &[k(3)]); // k1 -> B1
        pool.touch(&[k(1)]); // p = 1
        pool.touch(&[k(1)]); // p = 2 (capped at capacity)
        assert_eq!(pool.policy().target(), 2.0);
        // |T1| = 2 >= 2, so T1 is tried first; make T1 (k2,k3) unevictable but one: pin k2.
        pool.prepare_load(&[k(2)], &mut Vec::new()).unwrap();
        // Need 2 victims: the first from T1 (k3), then virtual |T1| = 1 < 2 so T2 is asked,
        // which is empty: the call fails and nothing changes.
        let mut plan = StorePlan::new();
        assert!(pool.prepare_store(&[k(5), k(6)], &mut plan).is_err());
        assert_eq!(pool.len(), 2);
        assert_eq!(pool.policy().b1().copied().collect::<Vec<_>>(), [k(1)]);
    }

    #[test]
    fn any_policy_dispatches() {
        let mut pool = PrimaryPool::new(AnyPolicy::new(PolicyKind::Arc, 1));
        store(&mut pool, &[k(1)]);
        store(&mut pool, &[k(2)]);
        let AnyPolicy::Arc(arc) = pool.policy() else { panic!("ARC expected") };
        assert_eq!(arc.b1().copied().collect::<Vec<_>>(), [k(1)]);
    }

    #[test]
    fn zero_slots() {
        let mut pool = PrimaryPool::new(ArcPolicy::new(0));
        let mut plan = StorePlan::new();
        assert_eq!(pool.prepare_store(&[k(1)], &mut plan), Err(StoreError::NoSpace { needed: 1 }));
        pool.prepare_store(&[], &mut plan).unwrap();
        pool.touch(&[k(1)]);
    }
}

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

    fn clear(&mut self) {
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
        for (index, key) in keys.iter().enumerate() {
            let err = match self.find_slot(key) {
                None => UnpinError::NotPresent { index },
                Some(s) if self.slots[s as usize].ref_cnt <= 0 => UnpinError::NotPinned { index },
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

//! The oracle's primary pool, written from SEMANTICS.md "Primary pool", "LRU" and "ARC" for
//! clarity, not speed: slots in a `Vec<Option<..>>`, recency lists as `Vec`s of keys
//! (least-recent first) searched linearly, ARC's target as an `f64`.

use alloc::vec::Vec;

use kvtier_core::error::{LoadError, StoreError, UnpinError};
use kvtier_core::{OffloadKey, PolicyKind, PoolLookup};

/// ARC's lists, each least-recent first, and its target size `p`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ArcModel {
    /// Resident, seen once.
    pub t1: Vec<OffloadKey>,
    /// Resident, seen again.
    pub t2: Vec<OffloadKey>,
    /// Ghosts of T1 evictions.
    pub b1: Vec<OffloadKey>,
    /// Ghosts of T2 evictions.
    pub b2: Vec<OffloadKey>,
    /// Target size of T1.
    pub p: f64,
}

/// The policy's order.
#[derive(Debug, Clone, PartialEq)]
pub enum OrderModel {
    /// LRU: every present key, least-recent first.
    Lru(Vec<OffloadKey>),
    /// ARC.
    Arc(ArcModel),
}

/// A CPU event: `keys` stored (`removed == false`) or evicted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEvent {
    /// Eviction rather than storage.
    pub removed: bool,
    /// The keys, in the order the operation handled them.
    pub keys: Vec<OffloadKey>,
}

/// The result of a successful `prepare_store`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModelPlan {
    /// Keys to store, first occurrences of the absent input keys, in input order.
    pub keys: Vec<OffloadKey>,
    /// Their slots.
    pub slots: Vec<usize>,
    /// Evicted keys, in eviction order.
    pub evicted: Vec<OffloadKey>,
}

/// The naive primary pool.
#[derive(Debug, Clone)]
pub struct PoolModel {
    /// Per slot: the key and its `ref_cnt`, or `None` when free.
    pub slots: Vec<Option<(OffloadKey, i32)>>,
    /// The lowest slot never used yet.
    never_used: usize,
    /// Freed slots; the last freed is popped first.
    freed: Vec<usize>,
    /// The policy's lists.
    pub order: OrderModel,
    /// Events not yet taken.
    pub events: Vec<ModelEvent>,
}

fn remove_key(list: &mut Vec<OffloadKey>, key: &OffloadKey) -> bool {
    match list.iter().position(|k| k == key) {
        Some(i) => {
            list.remove(i);
            true
        }
        None => false,
    }
}

impl PoolModel {
    /// An empty pool of `capacity` slots ordered by `policy`.
    pub fn new(policy: PolicyKind, capacity: usize) -> Self {
        PoolModel {
            slots: alloc::vec![None; capacity],
            never_used: 0,
            freed: Vec::new(),
            order: match policy {
                PolicyKind::Lru => OrderModel::Lru(Vec::new()),
                PolicyKind::Arc => OrderModel::Arc(ArcModel::default()),
            },
            events: Vec::new(),
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Number of present blocks.
    pub fn present(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// The slot holding `key`.
    pub fn find(&self, key: &OffloadKey) -> Option<usize> {
        self.slots.iter().position(|s| matches!(s, Some((k, _)) if k == key))
    }

    /// `ref_cnt` of `key`, if present.
    pub fn ref_cnt(&self, key: &OffloadKey) -> Option<i32> {
        self.find(key).and_then(|s| self.slots[s]).map(|(_, rc)| rc)
    }

    /// Ready if present with `ref_cnt >= 0`, Pending if in flight, Miss if absent.
    pub fn lookup(&self, key: &OffloadKey) -> PoolLookup {
        match self.ref_cnt(key) {
            Some(rc) if rc >= 0 => PoolLookup::Ready,
            Some(_) => PoolLookup::Pending,
            None => PoolLookup::Miss,
        }
    }

    /// SEMANTICS "prepare_store": to_store = absent input keys (first occurrences), evict
    /// `need` unprotected ready blocks atomically, one "removed" event, allocate, insert in
    /// flight at the most-recent end.
    pub fn prepare_store(&mut self, keys: &[OffloadKey]) -> Result<ModelPlan, StoreError> {
        let mut to_store: Vec<OffloadKey> = Vec::new();
        for key in keys {
            if self.find(key).is_none() && !to_store.contains(key) {
                to_store.push(*key);
            }
        }
        if to_store.is_empty() {
            return Ok(ModelPlan::default());
        }
        let free = self.capacity() - self.present();
        let need = to_store.len().saturating_sub(free);
        let mut evicted = Vec::new();
        if need > 0 {
            let Some(victims) = self.choose_victims(need, keys) else {
                return Err(StoreError::NoSpace { needed: need });
            };
            for key in &victims {
                let slot = self.find(key).expect("victim is present");
                self.slots[slot] = None;
                self.freed.push(slot);
                match &mut self.order {
                    OrderModel::Lru(list) => {
                        remove_key(list, key);
                    }
                    OrderModel::Arc(arc) => {
                        if remove_key(&mut arc.t1, key) {
                            arc.b1.push(*key);
                        } else if remove_key(&mut arc.t2, key) {
                            arc.b2.push(*key);
                        }
                    }
                }
            }
            let cap = self.capacity();
            if let OrderModel::Arc(arc) = &mut self.order {
                while arc.b1.len() > cap {
                    arc.b1.remove(0);
                }
                while arc.b2.len() > cap {
                    arc.b2.remove(0);
                }
            }
            self.events.push(ModelEvent { removed: true, keys: victims.clone() });
            evicted = victims;
        }
        let mut slots = Vec::new();
        for key in &to_store {
            let slot = if self.never_used < self.capacity() {
                self.never_used += 1;
                self.never_used - 1
            } else {
                self.freed.pop().expect("enough slots were freed")
            };
            self.slots[slot] = Some((*key, -1));
            match &mut self.order {
                OrderModel::Lru(list) => list.push(*key),
                OrderModel::Arc(arc) => {
                    remove_key(&mut arc.b1, key);
                    remove_key(&mut arc.b2, key);
                    arc.t1.push(*key);
                }
            }
            slots.push(slot);
        }
        Ok(ModelPlan { keys: to_store, slots, evicted })
    }

    /// `need` victims in eviction order, or `None`: only `ref_cnt == 0` blocks, never a key of
    /// `protected`.
    fn choose_victims(&self, need: usize, protected: &[OffloadKey]) -> Option<Vec<OffloadKey>> {
        let evictable = |key: &OffloadKey| self.ref_cnt(key) == Some(0) && !protected.contains(key);
        match &self.order {
            OrderModel::Lru(list) => {
                let victims: Vec<OffloadKey> = list.iter().filter(|k| evictable(k)).take(need).copied().collect();
                (victims.len() == need).then_some(victims)
            }
            OrderModel::Arc(arc) => {
                let mut chosen: Vec<OffloadKey> = Vec::new();
                let mut virtual_t1 = arc.t1.len();
                for _ in 0..need {
                    let mut victim = None;
                    // For an integer n, n >= floor(p) exactly when p < n + 1 (no `floor` in core).
                    if arc.p < virtual_t1 as f64 + 1.0 {
                        victim = arc.t1.iter().find(|k| evictable(k) && !chosen.contains(k)).copied();
                        if victim.is_some() {
                            virtual_t1 -= 1;
                        }
                    }
                    if victim.is_none() {
                        victim = arc.t2.iter().find(|k| evictable(k) && !chosen.contains(k)).copied();
                    }
                    chosen.push(victim?);
                }
                Some(chosen)
            }
        }
    }

    /// Frees `slot` (a failed write): dropped from the policy's resident lists, ghosts
    /// untouched, no event.
    pub fn remove_slot(&mut self, slot: usize) {
        let (key, _) = self.slots[slot].take().expect("removing a present slot");
        self.freed.push(slot);
        match &mut self.order {
            OrderModel::Lru(list) => {
                remove_key(list, &key);
            }
            OrderModel::Arc(arc) => {
                if !remove_key(&mut arc.t1, &key) {
                    remove_key(&mut arc.t2, &key);
                }
            }
        }
    }

    /// SEMANTICS "complete_store", restricted to the in-flight slots `owned` accepts (the
    /// engine keeps promotion slots for itself). Returns the slots made ready, in list order.
    pub fn complete_store(&mut self, keys: &[OffloadKey], success: bool, owned: impl Fn(usize) -> bool) -> Vec<usize> {
        let mut readied = Vec::new();
        for key in keys {
            let Some(slot) = self.find(key) else { continue };
            if self.slots[slot].map(|(_, rc)| rc) != Some(-1) || !owned(slot) {
                continue;
            }
            if success {
                self.slots[slot] = Some((*key, 0));
                readied.push(slot);
            } else {
                self.remove_slot(slot);
            }
        }
        if success && !readied.is_empty() {
            let keys = readied.iter().map(|&s| self.slots[s].expect("readied").0).collect();
            self.events.push(ModelEvent { removed: false, keys });
        }
        readied
    }

    /// SEMANTICS "prepare_load": the whole list is checked first; then one pin per occurrence.
    pub fn prepare_load(&mut self, keys: &[OffloadKey]) -> Result<Vec<usize>, LoadError> {
        for (index, key) in keys.iter().enumerate() {
            match self.ref_cnt(key) {
                None => return Err(LoadError::NotPresent { index }),
                Some(rc) if rc < 0 => return Err(LoadError::NotReady { index }),
                Some(_) => {}
            }
        }
        let mut slots = Vec::new();
        for key in keys {
            let slot = self.find(key).expect("checked");
            if let Some((_, rc)) = &mut self.slots[slot] {
                *rc += 1;
            }
            slots.push(slot);
        }
        Ok(slots)
    }

    /// SEMANTICS "complete_load": one unpin per occurrence; each must be present and still
    /// pinned counting the earlier occurrences; all or nothing.
    pub fn complete_load(&mut self, keys: &[OffloadKey]) -> Result<(), UnpinError> {
        self.complete_load_keeping(keys, &|_| 0)
    }

    /// `complete_load` that leaves at least `kept(slot)` pins on every slot (pins the caller
    /// does not own).
    pub fn complete_load_keeping(
        &mut self,
        keys: &[OffloadKey],
        kept: &dyn Fn(usize) -> i32,
    ) -> Result<(), UnpinError> {
        let mut after = self.slots.clone();
        for (index, key) in keys.iter().enumerate() {
            let Some(slot) = self.find(key) else {
                return Err(UnpinError::NotPresent { index });
            };
            match &mut after[slot] {
                Some((_, rc)) if *rc > kept(slot).max(0) => *rc -= 1,
                _ => return Err(UnpinError::NotPinned { index }),
            }
        }
        self.slots = after;
        Ok(())
    }

    /// SEMANTICS "touch", LRU and ARC: keys walked in reverse.
    pub fn touch(&mut self, keys: &[OffloadKey]) {
        let cap = self.capacity() as f64;
        for key in keys.iter().rev() {
            let rc = self.ref_cnt(key);
            match &mut self.order {
                OrderModel::Lru(list) => {
                    if remove_key(list, key) {
                        list.push(*key);
                    }
                }
                OrderModel::Arc(arc) => {
                    if arc.t1.contains(key) {
                        remove_key(&mut arc.t1, key);
                        if rc.is_some_and(|rc| rc >= 0) {
                            arc.t2.push(*key);
                        } else {
                            arc.t1.push(*key);
                        }
                    } else if remove_key(&mut arc.t2, key) {
                        arc.t2.push(*key);
                    } else if arc.b1.contains(key) {
                        let ratio = arc.b2.len() as f64 / arc.b1.len() as f64;
                        arc.p = (arc.p + ratio.max(1.0)).min(cap);
                        remove_key(&mut arc.b1, key);
                        arc.b1.push(*key);
                    } else if arc.b2.contains(key) {
                        let ratio = arc.b1.len() as f64 / arc.b2.len() as f64;
                        arc.p = (arc.p - ratio.max(1.0)).max(0.0);
                        remove_key(&mut arc.b2, key);
                        arc.b2.push(*key);
                    }
                }
            }
        }
    }

    /// Drains the events not yet taken.
    pub fn take_events(&mut self) -> Vec<ModelEvent> {
        core::mem::take(&mut self.events)
    }
}

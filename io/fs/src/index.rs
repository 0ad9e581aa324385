//! The FS tier's in-memory index: which blocks are on disk, in least-recently-used order, so
//! that a tier with a capacity bound knows which block to evict.
//!
//! Recency is a use counter (a store that publishes a block, a load that reads it), never a
//! clock: the order depends only on the sequence of calls. Blocks found by the start-up scan
//! come first, in scan order.

use std::collections::{BTreeMap, HashMap};

use kvtier_core::OffloadKey;

/// Blocks on disk, least recently used first.
#[derive(Debug, Default)]
pub struct BlockIndex {
    /// Key -> its last use.
    uses: HashMap<OffloadKey, u64>,
    /// Last use -> key, oldest first.
    order: BTreeMap<u64, OffloadKey>,
    next: u64,
}

impl BlockIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Blocks in the index.
    pub fn len(&self) -> usize {
        self.uses.len()
    }

    /// True when no block is indexed.
    pub fn is_empty(&self) -> bool {
        self.uses.is_empty()
    }

    /// Is `key` indexed?
    pub fn contains(&self, key: &OffloadKey) -> bool {
        self.uses.contains_key(key)
    }

    /// Indexes `key` as the most recently used block (it may already be there).
    pub fn insert(&mut self, key: OffloadKey) {
        let at = self.next;
        self.next += 1;
        if let Some(old) = self.uses.insert(key, at) {
            self.order.remove(&old);
        }
        self.order.insert(at, key);
    }

    /// Marks `key` as the most recently used block, if it is indexed.
    pub fn touch(&mut self, key: &OffloadKey) {
        if self.contains(key) {
            self.insert(*key);
        }
    }

    /// Drops `key`; false if it was not indexed.
    pub fn remove(&mut self, key: &OffloadKey) -> bool {
        match self.uses.remove(key) {
            Some(at) => {
                self.order.remove(&at);
                true
            }
            None => false,
        }
    }

    /// Every indexed block, least recently used first.
    pub fn keys_by_recency(&self) -> impl Iterator<Item = OffloadKey> + '_ {
        self.order.values().copied()
    }

    /// The least recently used block that `busy` does not hold, removed from the index.
    pub fn pop_victim(&mut self, busy: impl Fn(&OffloadKey) -> bool) -> Option<OffloadKey> {
        let (&at, &key) = self.order.iter().find(|(_, key)| !busy(key))?;
        self.order.remove(&at);
        self.uses.remove(&key);
        Some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> OffloadKey {
        OffloadKey::new(&[i; 8], 0).unwrap()
    }

    #[test]
    fn victims_come_least_recently_used_first_skipping_busy_blocks() {
        let mut index = BlockIndex::new();
        for i in 0..4 {
            index.insert(key(i));
        }
        index.touch(&key(0));
        index.insert(key(1)); // stored again: used now
        index.touch(&key(9)); // not indexed: nothing happens
        assert_eq!(index.len(), 4);
        assert_eq!(index.pop_victim(|k| *k == key(2)), Some(key(3)));
        assert_eq!(index.pop_victim(|_| false), Some(key(2)));
        assert!(index.remove(&key(0)));
        assert!(!index.remove(&key(0)));
        assert_eq!(index.pop_victim(|k| *k == key(1)), None);
        assert_eq!(index.pop_victim(|_| false), Some(key(1)));
        assert!(index.is_empty());
    }
}

//! The simulated GPU KV cache: a fixed number of block buffers in ordinary memory with a prefix
//! cache over them, as vLLM's GPU block pool keeps one.
//!
//! Buffers in use by a running request are referenced; a released buffer keeps its block (a
//! cached prefix block) until a new allocation evicts it, least recently released first. A
//! request's blocks are released tail first, so its prefix survives longest.

use std::collections::{BTreeMap, HashMap};

/// The GPU's block buffers and its prefix cache, over blocks named by their index in the
/// workload's key table.
#[derive(Debug)]
pub struct GpuCache {
    map: HashMap<u32, u32>,
    key_of: Vec<Option<u32>>,
    refs: Vec<u32>,
    stamp: Vec<u64>,
    lru: BTreeMap<u64, u32>,
    empty: Vec<u32>,
    tick: u64,
    block_bytes: usize,
    /// Block contents; `None` when only hits are counted (the comparison run).
    bytes: Option<Vec<u8>>,
}

impl GpuCache {
    /// `blocks` buffers of `block_bytes`; with `real_bytes`, backed by memory.
    pub fn new(blocks: usize, block_bytes: usize, real_bytes: bool) -> Self {
        GpuCache {
            map: HashMap::with_capacity(blocks),
            key_of: vec![None; blocks],
            refs: vec![0; blocks],
            stamp: vec![0; blocks],
            lru: BTreeMap::new(),
            empty: (0..blocks as u32).rev().collect(),
            tick: 0,
            block_bytes,
            bytes: real_bytes.then(|| vec![0u8; blocks * block_bytes]),
        }
    }

    /// How many leading `keys` the prefix cache holds.
    pub fn prefix_hits(&self, keys: &[u32]) -> usize {
        keys.iter().take_while(|k| self.map.contains_key(k)).count()
    }

    /// Buffers an allocation could get now, not counting cached `keys` about to be referenced.
    pub fn available_besides(&self, keys: &[u32]) -> usize {
        let idle_hits = keys.iter().filter(|k| self.map.get(k).is_some_and(|&b| self.refs[b as usize] == 0)).count();
        self.empty.len() + self.lru.len() - idle_hits
    }

    /// References the cached block of `key` (which must be cached), returning its buffer.
    pub fn acquire(&mut self, key: u32) -> u32 {
        let b = self.map[&key];
        if self.refs[b as usize] == 0 {
            self.lru.remove(&self.stamp[b as usize]);
        }
        self.refs[b as usize] += 1;
        b
    }

    /// A referenced buffer for a new block, evicting the least recently released cached block
    /// if no buffer is empty.
    pub fn allocate(&mut self) -> Option<u32> {
        let b = match self.empty.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self.lru.pop_first()?;
                if let Some(k) = self.key_of[b as usize].take() {
                    self.map.remove(&k);
                }
                b
            }
        };
        self.refs[b as usize] = 1;
        Some(b)
    }

    /// Makes buffer `b` (allocated) the cached copy of `key`, unless another buffer already is.
    pub fn publish(&mut self, b: u32, key: u32) {
        if let std::collections::hash_map::Entry::Vacant(e) = self.map.entry(key) {
            e.insert(b);
            self.key_of[b as usize] = Some(key);
        }
    }

    /// Drops one reference to each buffer, in the order given (give the tail first).
    pub fn release(&mut self, bufs: impl IntoIterator<Item = u32>) {
        for b in bufs {
            let i = b as usize;
            self.refs[i] -= 1;
            if self.refs[i] == 0 {
                if self.key_of[i].is_some() {
                    self.tick += 1;
                    self.stamp[i] = self.tick;
                    self.lru.insert(self.tick, b);
                } else {
                    self.empty.push(b);
                }
            }
        }
    }

    /// The bytes of buffer `b`.
    pub fn buf(&self, b: u32) -> &[u8] {
        let bytes = self.bytes.as_deref().unwrap_or(&[]);
        let start = b as usize * self.block_bytes;
        bytes.get(start..start + self.block_bytes).unwrap_or(&[])
    }

    /// The bytes of buffer `b`, writable (empty when only hits are counted).
    pub fn buf_mut(&mut self, b: u32) -> &mut [u8] {
        let start = b as usize * self.block_bytes;
        let len = self.block_bytes;
        match self.bytes.as_deref_mut() {
            Some(bytes) => &mut bytes[start..start + len],
            None => &mut [],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> u32 {
        u32::from(i)
    }

    #[test]
    fn prefix_cache_evicts_least_recently_released_tail_first() {
        let mut gpu = GpuCache::new(3, 8, true);
        let bufs: Vec<u32> = (0..3).map(|_| gpu.allocate().unwrap()).collect();
        for (i, &b) in bufs.iter().enumerate() {
            gpu.publish(b, key(i as u8));
        }
        assert!(gpu.allocate().is_none());
        gpu.release(bufs.iter().rev().copied());
        assert_eq!(gpu.prefix_hits(&[key(0), key(1), key(2), key(3)]), 3);
        assert_eq!(gpu.available_besides(&[key(0)]), 2);
        let b0 = gpu.acquire(key(0));
        assert_eq!(b0, bufs[0]);
        // The tail (key 2) was released first, so it goes first.
        let n = gpu.allocate().unwrap();
        assert_eq!(n, bufs[2]);
        assert_eq!(gpu.prefix_hits(&[key(0), key(1), key(2)]), 2);
        assert_eq!(gpu.buf_mut(n).len(), 8);
    }
}

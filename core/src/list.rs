//! Intrusive doubly linked lists over an index arena.
//!
//! Every recency list in the core (LRU's one list, ARC's T1/T2 over slots, B1/B2 over ghost
//! entries) is a [`List`] whose nodes live in a shared [`Links`] arena sized once at
//! construction. A node is in at most one list of an arena at a time. Nothing here allocates
//! after `Links::new`.

use alloc::vec;
use alloc::vec::Vec;

const NIL: u32 = u32::MAX;

/// The `prev`/`next` links of every node of an arena.
#[derive(Debug, Clone)]
pub(crate) struct Links {
    prev: Vec<u32>,
    next: Vec<u32>,
}

/// One list's ends and length; its nodes' links live in a [`Links`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct List {
    head: u32,
    tail: u32,
    len: usize,
}

impl Default for List {
    fn default() -> Self {
        List { head: NIL, tail: NIL, len: 0 }
    }
}

impl Links {
    pub(crate) fn new(nodes: usize) -> Self {
        Links { prev: vec![NIL; nodes], next: vec![NIL; nodes] }
    }
}

impl List {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The least-recent node.
    pub(crate) fn front(&self) -> Option<u32> {
        (self.head != NIL).then_some(self.head)
    }

    /// Appends `node` at the most-recent end. `node` must not be in any list of `links`.
    pub(crate) fn push_back(&mut self, links: &mut Links, node: u32) {
        let n = node as usize;
        links.prev[n] = self.tail;
        links.next[n] = NIL;
        if self.tail == NIL {
            self.head = node;
        } else {
            links.next[self.tail as usize] = node;
        }
        self.tail = node;
        self.len += 1;
    }

    /// Unlinks `node`, which must be in this list.
    pub(crate) fn remove(&mut self, links: &mut Links, node: u32) {
        let n = node as usize;
        let (p, nx) = (links.prev[n], links.next[n]);
        if p == NIL {
            self.head = nx;
        } else {
            links.next[p as usize] = nx;
        }
        if nx == NIL {
            self.tail = p;
        } else {
            links.prev[nx as usize] = p;
        }
        links.prev[n] = NIL;
        links.next[n] = NIL;
        self.len -= 1;
    }

    /// Moves `node` (in this list) to the most-recent end.
    pub(crate) fn move_to_back(&mut self, links: &mut Links, node: u32) {
        if self.tail != node {
            self.remove(links, node);
            self.push_back(links, node);
        }
    }

    /// Nodes from least- to most-recent.
    pub(crate) fn iter<'a>(&self, links: &'a Links) -> Iter<'a> {
        Iter { links, cur: self.head }
    }
}

/// Least- to most-recent walk of a [`List`].
pub(crate) struct Iter<'a> {
    links: &'a Links,
    cur: u32,
}

impl Iterator for Iter<'_> {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        if self.cur == NIL {
            return None;
        }
        let n = self.cur;
        self.cur = self.links.next[n as usize];
        Some(n)
    }
}

/// Walks forward from a node, for eviction scans that resume where they stopped.
pub(crate) fn next_of(links: &Links, node: u32) -> Option<u32> {
    let n = links.next[node as usize];
    (n != NIL).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_remove_move() {
        let mut links = Links::new(5);
        let mut a = List::default();
        let mut b = List::default();
        for i in 0..3 {
            a.push_back(&mut links, i);
        }
        b.push_back(&mut links, 3);
        a.move_to_back(&mut links, 0);
        assert_eq!(a.iter(&links).collect::<Vec<_>>(), [1, 2, 0]);
        a.remove(&mut links, 2);
        assert_eq!(a.iter(&links).collect::<Vec<_>>(), [1, 0]);
        a.remove(&mut links, 1);
        assert_eq!(a.len(), 1);
        assert_eq!(b.iter(&links).collect::<Vec<_>>(), [3]);
        assert_eq!(next_of(&links, 0), None);
        a.remove(&mut links, 0);
        assert_eq!(a.front(), None);
    }
}

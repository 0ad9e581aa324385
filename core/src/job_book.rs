//! The engine's book of the jobs it submitted to tiers and that are not yet reported: job ids,
//! and per job its tier, its purpose, its request and the keys and slots it names.
//!
//! It owns the id counter (ids are issued in order and never reused, so a report of an id
//! below the counter that has no record is a duplicate, one at or above it names a job never
//! issued) and recycles records and their key buffers, so a steady flow of jobs allocates
//! nothing once the largest in-flight set has been seen. It must never decide what a job's
//! outcome means: the engine does that (cascades), and `promotion.rs` (promotions).

use alloc::vec::Vec;

use hashbrown::HashTable;

use crate::{JobId, OffloadKey, ReqContext, SlotId};

/// What a job does for the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobPurpose {
    /// Stores blocks that became ready into a tier (one pin per block until reported).
    Cascade,
    /// Loads blocks from a tier into primary slots reserved by lookups.
    Promotion,
}

/// One job in flight.
#[derive(Debug)]
pub(crate) struct JobRecord {
    pub(crate) id: JobId,
    pub(crate) tier: usize,
    pub(crate) purpose: JobPurpose,
    pub(crate) req: ReqContext,
    pub(crate) keys: Vec<OffloadKey>,
    pub(crate) slots: Vec<SlotId>,
}

/// In-flight jobs by id; records are addressed by a `u32` handle while open.
#[derive(Debug, Default)]
pub(crate) struct JobBook {
    records: Vec<JobRecord>,
    free: Vec<u32>,
    index: HashTable<u32>,
    next_id: u64,
}

fn job_hash(id: JobId) -> u64 {
    id.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl JobBook {
    /// Issues the next job id and opens a record for it (no keys, no slots yet); returns the
    /// record's handle. The id is spent even if the record is closed unsubmitted.
    pub(crate) fn open(&mut self, tier: usize, purpose: JobPurpose, req: ReqContext) -> u32 {
        let id = JobId(self.next_id);
        self.next_id += 1;
        let r = match self.free.pop() {
            Some(r) => {
                let rec = &mut self.records[r as usize];
                rec.id = id;
                rec.tier = tier;
                rec.purpose = purpose;
                rec.req = req;
                rec.keys.clear();
                rec.slots.clear();
                r
            }
            None => {
                self.records.push(JobRecord { id, tier, purpose, req, keys: Vec::new(), slots: Vec::new() });
                (self.records.len() - 1) as u32
            }
        };
        let records = &self.records;
        let live = self.index.len() + 1;
        // Keep the table at most half full so tombstone clean-ups rehash in place.
        if self.index.capacity() < 2 * live {
            self.index.reserve(live, |&x| job_hash(records[x as usize].id));
        }
        self.index.insert_unique(job_hash(id), r, |&x| job_hash(records[x as usize].id));
        r
    }

    /// The open record of job `id`.
    pub(crate) fn find(&self, id: JobId) -> Option<u32> {
        self.index.find(job_hash(id), |&x| self.records[x as usize].id == id).copied()
    }

    /// Was `id` ever issued (open or already closed)?
    pub(crate) fn was_issued(&self, id: JobId) -> bool {
        id.0 < self.next_id
    }

    /// Record `r` (open).
    pub(crate) fn record(&self, r: u32) -> &JobRecord {
        &self.records[r as usize]
    }

    /// Record `r` (open), to fill in its keys and slots.
    pub(crate) fn record_mut(&mut self, r: u32) -> &mut JobRecord {
        &mut self.records[r as usize]
    }

    /// Closes record `r`; its buffers are reused by a later job.
    pub(crate) fn close(&mut self, r: u32) {
        let id = self.records[r as usize].id;
        if let Ok(e) = self.index.find_entry(job_hash(id), |&x| x == r) {
            e.remove();
        }
        self.free.push(r);
    }

    /// The open record with the lowest id: a choice that does not depend on the hash table's
    /// order.
    pub(crate) fn oldest(&self) -> Option<u32> {
        self.index.iter().copied().min_by_key(|&r| self.records[r as usize].id)
    }

    /// Number of open records.
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_spent_in_order_and_records_recycled() {
        let mut book = JobBook::default();
        let req = ReqContext::new(1);
        let a = book.open(0, JobPurpose::Cascade, req);
        book.record_mut(a).keys.push(OffloadKey::new(b"k", 0).unwrap());
        let b = book.open(1, JobPurpose::Promotion, req);
        assert_eq!((book.record(a).id, book.record(b).id), (JobId(0), JobId(1)));
        assert_eq!(book.len(), 2);
        book.close(a);
        assert_eq!(book.find(JobId(0)), None, "closed");
        assert!(book.was_issued(JobId(0)) && !book.was_issued(JobId(2)));
        let c = book.open(2, JobPurpose::Cascade, req);
        assert_eq!(c, a, "the closed record is reused");
        assert_eq!(book.record(c).id, JobId(2));
        assert!(book.record(c).keys.is_empty(), "with its buffers cleared");
        assert_eq!(book.find(JobId(2)), Some(c));
        assert_eq!(book.oldest(), Some(b));
    }
}

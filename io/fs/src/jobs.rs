//! A tier's jobs in flight, on the core's job accounting ([`kvtier_core::JobTable`], the code
//! loom model-checks): what the FS tier and disk engines (`kvtier-regions`) run their jobs on.
//!
//! Each store or load job is a job of a table; each op the tier hands its executor for it is a
//! part of it, reported from whichever thread finishes the op. The tier's own record of a job
//! (its id, its keys, and for each key a state of the tier's choosing: what the tier decided
//! itself, or that an op runs it, [`PartState`]) sits in a slab indexed by the job's handle.
//! The tier's poll takes whole finished jobs, each with its ops' outcome codes in key order: it
//! never looks at a job that has not finished.
//!
//! A table has a fixed capacity. A job that does not fit in the current one (every entry in
//! use, or fewer free outcome cells than the job has blocks) opens in a new table twice as
//! large; older tables are polled until their last job is taken, then dropped. Tables are
//! sized for the largest burst seen, so a steady state allocates nothing.

use kvtier_core::{Direction, JobHandle, JobId, JobTable, JobTableStats, OffloadKey, Part, TableError};

/// Job entries and outcome cells of the first table.
const FIRST_JOBS: usize = 64;
const FIRST_PARTS: usize = 1024;

/// What became of one key of a job, as a tier records it: whether a part (an op) was made for
/// it, and so whether it has an outcome code when its job is taken.
pub trait PartState: Copy {
    /// The key has a part.
    fn has_part(self) -> bool;
}

/// The tier's record of a job.
#[derive(Debug)]
pub struct Record<S> {
    /// Opened and not yet taken.
    live: bool,
    /// The job's id.
    pub id: JobId,
    /// Store or load.
    pub dir: Direction,
    /// Its keys.
    pub keys: Vec<OffloadKey>,
    /// What became of each key, co-indexed with `keys`.
    pub states: Vec<S>,
}

impl<S: PartState> Record<S> {
    fn empty() -> Self {
        Record { live: false, id: JobId(0), dir: Direction::Store, keys: Vec::new(), states: Vec::new() }
    }

    /// The keys with their states and, for those with a part, their outcome codes.
    pub fn with_codes<'a>(&'a self, codes: &'a [u32]) -> impl Iterator<Item = (OffloadKey, S, Option<u32>)> + 'a {
        let mut codes = codes.iter().copied();
        self.keys.iter().zip(&self.states).map(move |(&k, &s)| (k, s, if s.has_part() { codes.next() } else { None }))
    }
}

/// A job in flight: its table (by generation) and its handle there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobRef {
    table: u64,
    handle: JobHandle,
}

struct Slab<S> {
    generation: u64,
    table: JobTable,
    records: Vec<Record<S>>,
}

impl<S: PartState> Slab<S> {
    fn new(generation: u64, jobs: usize, parts: usize) -> Self {
        Slab { generation, table: JobTable::new(jobs, parts), records: (0..jobs).map(|_| Record::empty()).collect() }
    }
}

/// The tier's tables (oldest first; the last takes new jobs).
pub struct TierJobs<S> {
    slabs: Vec<Slab<S>>,
    /// Counters of the tables already dropped.
    retired: JobTableStats,
    /// Outcome codes of the job last taken.
    pub codes: Vec<u32>,
}

impl<S: PartState> std::fmt::Debug for TierJobs<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TierJobs").field("tables", &self.slabs.len()).field("in_flight", &self.in_flight()).finish()
    }
}

impl<S: PartState> Default for TierJobs<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: PartState> TierJobs<S> {
    /// One table of 64 jobs and 1024 parts, to start with.
    pub fn new() -> Self {
        TierJobs {
            slabs: vec![Slab::new(0, FIRST_JOBS, FIRST_PARTS)],
            retired: JobTableStats::default(),
            codes: Vec::new(),
        }
    }

    fn slab(&mut self, table: u64) -> &mut Slab<S> {
        self.slabs.iter_mut().find(|s| s.generation == table).expect("a job's table lives until the job is taken")
    }

    /// Opens job `id` of `keys`, with room for `parts` parts, and records it.
    pub fn open(&mut self, id: JobId, dir: Direction, keys: &[OffloadKey], parts: usize) -> JobRef {
        let current = self.slabs.last().expect("a current table");
        if current.table.free_jobs() == 0 || current.table.free_parts() < parts {
            let jobs = current.table.jobs_capacity() * 2;
            let parts = (current.table.parts_capacity() * 2).max(parts.next_power_of_two());
            let generation = current.generation + 1;
            self.slabs.push(Slab::new(generation, jobs, parts));
        }
        let slab = self.slabs.last_mut().expect("a current table");
        let handle = slab.table.open().expect("checked: a free entry");
        let record = &mut slab.records[handle.index()];
        record.live = true;
        record.id = id;
        record.dir = dir;
        record.keys.clear();
        record.keys.extend_from_slice(keys);
        record.states.clear();
        JobRef { table: slab.generation, handle }
    }

    /// The record of open job `job`.
    pub fn record(&mut self, job: JobRef) -> &mut Record<S> {
        let slab = self.slab(job.table);
        &mut slab.records[job.handle.index()]
    }

    /// A new part of open job `job` (room for it was reserved by [`open`](Self::open)).
    pub fn add_part(&mut self, job: JobRef) -> Part {
        self.slab(job.table).table.add_part(job.handle).expect("room for a part per key was reserved")
    }

    /// Closes `job`: it finishes once its parts have.
    pub fn close(&mut self, job: JobRef) {
        let closed: Result<(), TableError> = self.slab(job.table).table.close(job.handle);
        debug_assert!(closed.is_ok(), "{closed:?}");
    }

    /// Takes the next finished job, oldest table first, leaving its codes in `self.codes` and
    /// handing its record out (give it back with [`put_back`](Self::put_back)).
    pub fn take_finished(&mut self) -> Option<(JobRef, Record<S>)> {
        for slab in &mut self.slabs {
            if let Some(handle) = slab.table.take_finished(&mut self.codes) {
                let mut record = std::mem::replace(&mut slab.records[handle.index()], Record::empty());
                record.live = false;
                return Some((JobRef { table: slab.generation, handle }, record));
            }
        }
        None
    }

    /// Gives a taken job's record back, for its buffers to serve a later job; drops older
    /// tables that have no job left.
    pub fn put_back(&mut self, job: JobRef, record: Record<S>) {
        if let Some(slab) = self.slabs.iter_mut().find(|s| s.generation == job.table) {
            slab.records[job.handle.index()] = record;
        }
        while self.slabs.len() > 1 && self.slabs[0].table.jobs_in_flight() == 0 {
            let stats = self.slabs.remove(0).table.stats();
            self.retired.opened += stats.opened;
            self.retired.parts += stats.parts;
            self.retired.finished += stats.finished;
        }
    }

    /// Jobs opened and not yet taken.
    pub fn in_flight(&self) -> usize {
        self.slabs.iter().map(|s| s.table.jobs_in_flight()).sum()
    }

    /// The records of jobs still in the tables (after a shutdown: jobs whose parts the
    /// executor lost), emptied out of them.
    pub fn drain_unfinished(&mut self) -> Vec<Record<S>> {
        let mut left = Vec::new();
        for slab in &mut self.slabs {
            for record in &mut slab.records {
                if record.live {
                    record.live = false;
                    left.push(std::mem::replace(record, Record::empty()));
                }
            }
        }
        left
    }

    /// What every table did so far.
    pub fn stats(&self) -> JobTableStats {
        self.slabs.iter().map(|s| s.table.stats()).fold(self.retired, |a, s| JobTableStats {
            opened: a.opened + s.opened,
            parts: a.parts + s.parts,
            finished: a.finished + s.finished,
        })
    }
}

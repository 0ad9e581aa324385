//! Job accounting for tiers whose block operations finish on other threads.
//!
//! A *job* (one store or load the engine hands a tier) is split into *parts* (the block
//! operations it was issued as). Parts finish on any thread, in any order; the job is finished
//! when its last part is, and its owner then reads every part's outcome.
//!
//! * [`JobTable`] is owned by one *poller* thread (a tier's): it [opens](JobTable::open) a job,
//!   [adds](JobTable::add_part) its parts one by one as it hands them out, [closes](JobTable::close)
//!   it once no part is to come, and [takes](JobTable::take_finished) finished jobs, each with
//!   its parts' outcome codes in the order the parts were added.
//! * A [`Part`] goes with its operation to whatever runs it (an executor's worker thread, the
//!   thread that reaps an io_uring completion, a simulator's poll). That thread reports the part
//!   with [`Part::finish`], giving an outcome code: a `u32` whose meaning the tier defines (the
//!   table never interprets it). A part is a capability, not a copyable token: `finish` consumes
//!   it, so a part is reported at most once, and a part dropped unfinished reports
//!   [`Part::DROPPED`], so it is reported at least once: no job waits forever for a part that
//!   was lost (a worker that panicked, an executor that dropped an op).
//! * Inside, shared through an [`Arc`]: one progress counter per job entry (parts not finished
//!   yet, one read-modify-write per part), one outcome cell per part (a fixed arena of
//!   `AtomicU32`s; the poller hands cells out from a free list), and the [`CompletionQueue`] of
//!   finished jobs.
//!
//! The poller's work per finished job is one queue pop plus one read per part: it never scans
//! jobs or parts that have not finished. Everything allocates only in [`JobTable::new`]; no call
//! blocks; nothing comes from `std`. The atomics come from [`crate::sync`], so loom
//! model-checks this very code under `--cfg loom` (`core/tests/loom_jobs.rs`).
//!
//! # An open job cannot finish
//!
//! Opening a job counts one *guard* part that [`JobTable::close`] finishes. While the job is
//! open its counter never reaches zero, so parts may be added while earlier ones are already
//! finishing on other threads, and the job finishes exactly once: when its last part finishes
//! after the close, or at the close if every part already has (or it has none).
//!
//! # Memory ordering
//!
//! [`Part::finish`] stores the outcome code (`Relaxed`) and then decrements the job's counter
//! with an `AcqRel` read-modify-write, so the decrement that finishes the job *happens after*
//! every part's code and everything each thread did before reporting its part. That thread
//! pushes the job's entry onto the completion queue (`Release`), and the poller's pop acquires
//! it: when [`JobTable::take_finished`] returns a job, every code it reads, and everything the
//! part's threads wrote before finishing (e.g. a row a load filled), is visible to the poller
//! without further synchronisation.

mod queue;

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;

pub use queue::CompletionQueue;

use crate::sync::{Arc, AtomicU32, Ordering};

/// Counter value of a job entry that belongs to no job.
const VACANT: u32 = u32::MAX;

/// A job's entry in a [`JobTable`], from [`JobTable::open`] until the job is taken by
/// [`JobTable::take_finished`]; the entry may then be reused for another job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobHandle {
    index: u32,
}

impl JobHandle {
    /// The entry's index: `0..`[`JobTable::jobs_capacity`], stable while the job is in the
    /// table, so an owner can keep its own per-job records in a slab indexed by it.
    pub fn index(self) -> usize {
        self.index as usize
    }
}

/// Why the table refused a poller-side call. Nothing is changed when it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TableError {
    /// No free job entry ([`JobTable::open`]) or outcome cell ([`JobTable::add_part`]).
    Full,
    /// The handle names no open job (it is free, or the job was closed).
    NotOpen,
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TableError::Full => "job table full",
            TableError::NotOpen => "no open job has this handle",
        })
    }
}

impl core::error::Error for TableError {}

/// What a table did since it was made (poller-side counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JobTableStats {
    /// Jobs opened.
    pub opened: u64,
    /// Parts added.
    pub parts: u64,
    /// Jobs taken by [`JobTable::take_finished`].
    pub finished: u64,
}

/// The atomics a [`JobTable`] shares with the threads that finish parts.
struct JobShared {
    /// Per job entry: parts not finished yet (the guard of an open job included), or [`VACANT`].
    progress: Box<[AtomicU32]>,
    /// Per outcome cell: the code its part finished with.
    outcomes: Box<[AtomicU32]>,
    /// Entries of finished jobs, for the poller.
    finished: CompletionQueue,
}

impl JobShared {
    /// One part of job `entry` finished. The call that finishes the job queues it.
    fn part_done(&self, entry: u32) {
        let Some(progress) = self.progress.get(entry as usize) else {
            debug_assert!(false, "part of job entry {entry} out of range");
            return;
        };
        // The first read may be stale; the compare-exchange then fails and hands back the
        // current value. A CAS rather than `fetch_sub`: a (ruled out) report too many must
        // neither wrap the counter nor make a free entry look like a job.
        let mut current = progress.load(Ordering::Relaxed);
        loop {
            if current == 0 || current == VACANT {
                debug_assert!(false, "part reported to job entry {entry} with no part left ({current:#x})");
                return;
            }
            match progress.compare_exchange(current, current - 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        // The queue has a cell for every entry, and an entry is queued once per job and
        // freed only after the poller popped it: this push cannot fail.
        if current == 1 && self.finished.push(entry).is_err() {
            debug_assert!(false, "finished job entry {entry} found the queue full");
        }
    }
}

/// One part of a job: handed with its operation to whatever runs it, and reported from
/// whichever thread finishes it with [`finish`](Self::finish). Dropping it unfinished reports
/// [`Part::DROPPED`].
pub struct Part {
    shared: Arc<JobShared>,
    entry: u32,
    cell: u32,
    reported: bool,
}

impl Part {
    /// The code a part dropped without [`finish`](Self::finish) reports; tiers give it no other
    /// meaning.
    pub const DROPPED: u32 = u32::MAX;

    /// Reports the part finished with outcome `code` (the tier's encoding), from any thread.
    pub fn finish(mut self, code: u32) {
        self.report(code);
    }

    /// The job the part belongs to.
    pub fn job(&self) -> JobHandle {
        JobHandle { index: self.entry }
    }

    fn report(&mut self, code: u32) {
        if core::mem::replace(&mut self.reported, true) {
            return;
        }
        if let Some(cell) = self.shared.outcomes.get(self.cell as usize) {
            cell.store(code, Ordering::Relaxed);
        }
        self.shared.part_done(self.entry);
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        self.report(Part::DROPPED);
    }
}

impl fmt::Debug for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Part").field("job", &self.entry).field("cell", &self.cell).finish()
    }
}

/// Where a job entry is in its life (poller-side).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Free,
    Open,
    Closed,
}

/// A job entry's poller-side record: its parts' cells as a list, in the order they were added.
#[derive(Clone, Copy, Debug)]
struct Entry {
    state: State,
    first: u32,
    last: u32,
    parts: u32,
}

/// Fixed-capacity table of jobs in flight and their parts' outcome cells, owned by one poller
/// thread. See the [module docs](self).
///
/// Poller-side state (free lists, each job's list of cells) is behind `&mut self`; the only
/// state shared with other threads is atomics, reached through [`Part`]s. Entries and cells
/// are reused in LIFO order, starting from index 0, so a sequence of calls yields the same
/// handles every time.
pub struct JobTable {
    shared: Arc<JobShared>,
    entries: Box<[Entry]>,
    /// Per outcome cell: the next cell of the same job.
    next: Box<[u32]>,
    free_jobs: Vec<u32>,
    free_cells: Vec<u32>,
    stats: JobTableStats,
}

impl JobTable {
    /// A table of `jobs` job entries and `parts` outcome cells, all free.
    ///
    /// # Panics
    ///
    /// If `jobs` or `parts` is `u32::MAX` or more (entries and cells are indexed by `u32`, and
    /// a counter must never reach the vacant mark).
    pub fn new(jobs: usize, parts: usize) -> Self {
        let job_count = u32::try_from(jobs).ok().filter(|&n| n < VACANT).expect("JobTable: too many job entries");
        let cell_count = u32::try_from(parts).ok().filter(|&n| n < VACANT - 1).expect("JobTable: too many parts");
        let shared = JobShared {
            progress: (0..jobs).map(|_| AtomicU32::new(VACANT)).collect::<Vec<_>>().into_boxed_slice(),
            outcomes: (0..parts).map(|_| AtomicU32::new(0)).collect::<Vec<_>>().into_boxed_slice(),
            finished: CompletionQueue::new(jobs),
        };
        JobTable {
            shared: Arc::new(shared),
            entries: alloc::vec![Entry { state: State::Free, first: 0, last: 0, parts: 0 }; jobs].into_boxed_slice(),
            next: alloc::vec![0; parts].into_boxed_slice(),
            free_jobs: (0..job_count).rev().collect(),
            free_cells: (0..cell_count).rev().collect(),
            stats: JobTableStats::default(),
        }
    }

    /// Number of job entries.
    pub fn jobs_capacity(&self) -> usize {
        self.entries.len()
    }

    /// Number of outcome cells.
    pub fn parts_capacity(&self) -> usize {
        self.next.len()
    }

    /// Jobs opened and not yet taken by [`take_finished`](Self::take_finished).
    pub fn jobs_in_flight(&self) -> usize {
        self.entries.len() - self.free_jobs.len()
    }

    /// Job entries free for [`open`](Self::open).
    pub fn free_jobs(&self) -> usize {
        self.free_jobs.len()
    }

    /// Outcome cells free for [`add_part`](Self::add_part).
    pub fn free_parts(&self) -> usize {
        self.free_cells.len()
    }

    /// What the table did so far.
    pub fn stats(&self) -> JobTableStats {
        self.stats
    }

    /// Opens a job with no part yet.
    ///
    /// # Errors
    ///
    /// [`TableError::Full`] if every entry is in use.
    pub fn open(&mut self) -> Result<JobHandle, TableError> {
        let index = self.free_jobs.pop().ok_or(TableError::Full)?;
        self.entries[index as usize] = Entry { state: State::Open, first: 0, last: 0, parts: 0 };
        // The guard part, finished by `close`.
        self.shared.progress[index as usize].store(1, Ordering::Relaxed);
        self.stats.opened += 1;
        Ok(JobHandle { index })
    }

    /// Adds a part to open job `job` and returns it, to be handed to whatever runs it.
    ///
    /// # Errors
    ///
    /// [`TableError::NotOpen`] if `job` is not open; [`TableError::Full`] if no outcome cell
    /// is free.
    pub fn add_part(&mut self, job: JobHandle) -> Result<Part, TableError> {
        let entry = self.open_entry(job)?;
        let cell = self.free_cells.pop().ok_or(TableError::Full)?;
        let entry = &mut self.entries[entry];
        if entry.parts == 0 {
            entry.first = cell;
        } else {
            self.next[entry.last as usize] = cell;
        }
        entry.last = cell;
        entry.parts += 1;
        // The guard keeps the counter at 1 or more while the job is open, so this cannot race
        // the counter to zero; the part reaches its thread through that thread's own
        // synchronisation (a queue, a ring), which orders this increment before its report.
        self.shared.progress[job.index as usize].fetch_add(1, Ordering::Relaxed);
        self.stats.parts += 1;
        Ok(Part { shared: Arc::clone(&self.shared), entry: job.index, cell, reported: false })
    }

    /// Closes open job `job`: no part is added any more. It finishes once its parts have (at
    /// once, if they all have or it has none) and then waits for
    /// [`take_finished`](Self::take_finished).
    ///
    /// # Errors
    ///
    /// [`TableError::NotOpen`] if `job` is not open.
    pub fn close(&mut self, job: JobHandle) -> Result<(), TableError> {
        let entry = self.open_entry(job)?;
        self.entries[entry].state = State::Closed;
        self.shared.part_done(job.index);
        Ok(())
    }

    fn open_entry(&self, job: JobHandle) -> Result<usize, TableError> {
        let index = job.index as usize;
        match self.entries.get(index) {
            Some(e) if e.state == State::Open => Ok(index),
            _ => Err(TableError::NotOpen),
        }
    }

    /// Takes the next finished job, in the order jobs finished: fills `outcomes` (cleared
    /// first) with its parts' codes, in the order they were added, frees its entry and cells,
    /// and returns its handle. `None` if no job has finished since the last call.
    ///
    /// A job whose last part's thread is still queueing it (and any queued behind it) is left
    /// for a later call.
    pub fn take_finished(&mut self, outcomes: &mut Vec<u32>) -> Option<JobHandle> {
        let index = self.shared.finished.pop()?;
        let slot = index as usize;
        let Some(entry) = self.entries.get(slot).copied() else {
            debug_assert!(false, "finished job entry {index} out of range");
            return None;
        };
        debug_assert_eq!(entry.state, State::Closed, "a finished job was closed");
        debug_assert_eq!(self.shared.progress[slot].load(Ordering::Relaxed), 0, "a finished job has no part left");
        outcomes.clear();
        let mut cell = entry.first;
        for _ in 0..entry.parts {
            outcomes.push(self.shared.outcomes[cell as usize].load(Ordering::Relaxed));
            self.free_cells.push(cell);
            cell = self.next[cell as usize];
        }
        self.shared.progress[slot].store(VACANT, Ordering::Relaxed);
        self.entries[slot].state = State::Free;
        self.free_jobs.push(index);
        self.stats.finished += 1;
        Some(JobHandle { index })
    }
}

impl fmt::Debug for JobTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobTable")
            .field("jobs_capacity", &self.jobs_capacity())
            .field("jobs_in_flight", &self.jobs_in_flight())
            .field("parts_capacity", &self.parts_capacity())
            .field("free_parts", &self.free_parts())
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    extern crate std;

    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    fn take_all(table: &mut JobTable) -> Vec<(usize, Vec<u32>)> {
        let mut out = Vec::new();
        let mut codes = Vec::new();
        while let Some(job) = table.take_finished(&mut codes) {
            out.push((job.index(), codes.clone()));
        }
        out
    }

    #[test]
    fn a_job_finishes_when_closed_and_every_part_is_done() {
        let mut table = JobTable::new(4, 8);
        let a = table.open().unwrap();
        let (a1, a2) = (table.add_part(a).unwrap(), table.add_part(a).unwrap());
        let b = table.open().unwrap();
        let b1 = table.add_part(b).unwrap();
        assert_eq!((a.index(), b.index(), a1.job(), b1.job()), (0, 1, a, b));
        a2.finish(22);
        b1.finish(5);
        assert_eq!(take_all(&mut table), [], "nothing finishes while open");
        table.close(b).unwrap();
        a1.finish(11);
        table.close(a).unwrap();
        assert_eq!(take_all(&mut table), [(1, vec![5]), (0, vec![11, 22])], "in finishing order, codes in part order");
        assert_eq!((table.jobs_in_flight(), table.free_parts()), (0, 8));
        assert_eq!(table.stats(), JobTableStats { opened: 2, parts: 3, finished: 2 });
    }

    #[test]
    fn parts_finish_after_the_close_and_jobs_without_parts_finish_at_once() {
        let mut table = JobTable::new(2, 2);
        let empty = table.open().unwrap();
        table.close(empty).unwrap();
        let j = table.open().unwrap();
        let p = table.add_part(j).unwrap();
        table.close(j).unwrap();
        assert_eq!(take_all(&mut table), [(0, vec![])]);
        p.finish(7);
        assert_eq!(take_all(&mut table), [(1, vec![7])]);
    }

    #[test]
    fn a_dropped_part_reports_dropped() {
        let mut table = JobTable::new(1, 2);
        let j = table.open().unwrap();
        let kept = table.add_part(j).unwrap();
        drop(table.add_part(j).unwrap());
        table.close(j).unwrap();
        kept.finish(0);
        assert_eq!(take_all(&mut table), [(0, vec![0, Part::DROPPED])]);
    }

    #[test]
    fn misuse_is_refused_without_change() {
        let mut table = JobTable::new(1, 1);
        let j = table.open().unwrap();
        assert_eq!(table.open().unwrap_err(), TableError::Full);
        let p = table.add_part(j).unwrap();
        assert_eq!(table.add_part(j).unwrap_err(), TableError::Full);
        table.close(j).unwrap();
        assert_eq!(table.close(j), Err(TableError::NotOpen));
        assert_eq!(table.add_part(j).unwrap_err(), TableError::NotOpen);
        p.finish(3);
        assert_eq!(take_all(&mut table), [(0, vec![3])]);
        assert_eq!(table.close(j), Err(TableError::NotOpen), "a taken job's handle names a free entry");
        assert_eq!(table.close(JobHandle { index: 9 }), Err(TableError::NotOpen));
        let empty = JobTable::new(0, 0);
        assert_eq!(empty.jobs_capacity() + empty.parts_capacity(), 0);
    }

    #[test]
    fn entries_and_cells_are_reused_in_lifo_order() {
        let mut table = JobTable::new(3, 3);
        for round in 0..if cfg!(miri) { 10 } else { 200u32 } {
            let jobs: Vec<_> = (0..3).map(|_| table.open().unwrap()).collect();
            let parts: Vec<_> = jobs.iter().map(|&j| table.add_part(j).unwrap()).collect();
            assert_eq!(jobs.iter().map(|j| j.index()).collect::<Vec<_>>(), [0, 1, 2]);
            for (j, p) in jobs.iter().zip(parts).rev() {
                p.finish(round * 10 + j.index() as u32);
                table.close(*j).unwrap();
            }
            let got = take_all(&mut table);
            assert_eq!(got, [(2, vec![round * 10 + 2]), (1, vec![round * 10 + 1]), (0, vec![round * 10])]);
        }
    }

    #[test]
    fn parts_finished_on_many_threads() {
        let mut table = JobTable::new(16, 64);
        let mut seen = std::collections::BTreeMap::new();
        let rounds = if cfg!(miri) { 2 } else { 50 };
        for round in 0..rounds {
            let mut handed = Vec::new();
            let jobs: Vec<_> = (0..16).map(|_| table.open().unwrap()).collect();
            for &j in &jobs {
                for k in 0..4 {
                    handed.push((table.add_part(j).unwrap(), (round * 1000 + j.index() * 10 + k) as u32));
                }
            }
            let workers: Vec<_> = (0..4)
                .map(|w| {
                    let mine: Vec<_> = handed.iter().enumerate().filter(|(i, _)| i % 4 == w).map(|(i, _)| i).collect();
                    (w, mine)
                })
                .collect();
            let mut handed: Vec<Option<(Part, u32)>> = handed.into_iter().map(Some).collect();
            let threads: Vec<_> = workers
                .into_iter()
                .map(|(_, mine)| {
                    let parts: Vec<_> = mine.iter().map(|&i| handed[i].take().unwrap()).collect();
                    std::thread::spawn(move || {
                        for (p, code) in parts {
                            p.finish(code);
                        }
                    })
                })
                .collect();
            for &j in &jobs {
                table.close(j).unwrap();
            }
            let mut codes = Vec::new();
            let mut taken = 0;
            while taken < jobs.len() {
                if let Some(j) = table.take_finished(&mut codes) {
                    assert!(seen.insert((round, j.index()), codes.clone()).is_none());
                    taken += 1;
                } else {
                    std::thread::yield_now();
                }
            }
            for t in threads {
                t.join().unwrap();
            }
        }
        for ((round, j), codes) in seen {
            let want: Vec<u32> = (0..4).map(|k| (round * 1000 + j * 10 + k) as u32).collect();
            assert_eq!(codes, want);
        }
    }

    #[test]
    fn errors_display() {
        use std::string::ToString;
        assert_eq!(TableError::Full.to_string(), "job table full");
        assert!(!TableError::NotOpen.to_string().is_empty());
    }
}

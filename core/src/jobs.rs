//! Job accounting for executors that complete work from several threads.
//!
//! A *job* (one logical request, e.g. "write this value to the capacity tier") is split into
//! *parts* (e.g. the individual I/O operations it was issued as). Parts may finish on any thread,
//! in any order; the job is complete when its last part finishes, and it succeeds when every part
//! succeeded.
//!
//! * [`JobProgress`] is the per-job counter: one `AtomicU64` holding the parts remaining and the
//!   parts failed, updated with a single read-modify-write per part.
//! * [`CompletionQueue`] is a bounded lock-free queue of `u32` (Dmitry Vyukov's bounded MPMC
//!   queue, built from atomics only).
//! * [`JobTable`] combines them: a fixed set of job entries owned by one *poller* thread, which
//!   [starts](JobTable::start) jobs and [polls](JobTable::poll) for finished ones, and a
//!   [`JobShared`] part, shared with worker threads through an [`Arc`], on which any thread
//!   reports [finished parts](JobShared::part_done).
//!
//! Everything allocates only in its constructor, never blocks, and uses nothing from `std`. The
//! atomics come from [`crate::sync`], so the same code is model-checked by loom under
//! `--cfg loom` (see `core/tests/loom_jobs.rs`).
//!
//! # Memory ordering
//!
//! Every successful [`JobProgress::part_done`] is an `AcqRel` read-modify-write, so the call that
//! completes a job *happens after* everything each thread did before reporting its own part. A
//! [`CompletionQueue::push`] publishes with `Release` and [`CompletionQueue::pop`] acquires, so in
//! a [`JobTable`] the poller's report of a job happens after all of the job's parts' work: data
//! written by a worker before its `part_done` can be read by the poller in the
//! [`poll`](JobTable::poll) callback without further synchronisation.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;

use crate::sync::{Arc, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Low half of a [`JobProgress`] word: parts remaining.
const REMAINING_MASK: u64 = 0xFFFF_FFFF;
/// Shift of the high half of a [`JobProgress`] word: parts failed.
const FAILED_SHIFT: u32 = 32;
/// Added to a [`JobProgress`] word by a failed part: one more failure, one part fewer remaining.
const FAIL_DELTA: u64 = (1 << FAILED_SHIFT) - 1;
/// Word of a [`JobProgress`] that belongs to no job (a free [`JobTable`] entry).
///
/// For a started job `remaining + failed <= parts <= u32::MAX`, so `remaining == failed ==
/// u32::MAX` never occurs and the value cannot be mistaken for a job's state.
const VACANT: u64 = u64::MAX;

/// Why [`JobProgress::part_done`] refused a part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProgressError {
    /// Every part of the job was already reported: this call is one more than the job has.
    AlreadyComplete,
    /// The counter belongs to no job: it is a free [`JobTable`] entry.
    Vacant,
}

impl fmt::Display for ProgressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProgressError::AlreadyComplete => "every part of the job was already reported",
            ProgressError::Vacant => "the progress counter belongs to no job",
        })
    }
}

impl core::error::Error for ProgressError {}

/// Progress of one job, in a single `AtomicU64`: the low 32 bits count the parts remaining, the
/// high 32 bits the parts that failed.
///
/// [`part_done`](Self::part_done) may be called from any number of threads concurrently; exactly
/// one call, the one that finishes the last part, learns the job's outcome.
///
/// # Over-reporting is refused, not wrapped
///
/// A part reported once too often must neither panic nor silently wrap the counter (which would
/// borrow from the failure count and make the job look unfinished again). `part_done` therefore
/// updates the word with a compare-and-swap loop that checks, on the very value it replaces, that
/// a part is still remaining, and otherwise returns [`ProgressError::AlreadyComplete`] without
/// writing. The alternative, an unconditional `fetch_sub`/`fetch_add` followed by an undo when the
/// previous value shows the job was already complete, was rejected: between the two RMWs other
/// threads (and a poller) would see the corrupted word, and a second over-reporting call would
/// take the corrupted value for a job with parts left. The loop retries only when another part's
/// update landed in between; as a job has at most `parts` successful updates, each call retries
/// at most `parts` times.
pub struct JobProgress {
    /// `failed << 32 | remaining`, or [`VACANT`].
    state: AtomicU64,
}

impl JobProgress {
    /// A job of `parts` parts, none finished yet. A job of zero parts is complete (and
    /// successful) at creation.
    pub fn new(parts: u32) -> Self {
        JobProgress { state: AtomicU64::new(u64::from(parts)) }
    }

    /// A counter that belongs to no job: every [`part_done`](Self::part_done) is refused with
    /// [`ProgressError::Vacant`] until [`start`](Self::start).
    fn vacant() -> Self {
        JobProgress { state: AtomicU64::new(VACANT) }
    }

    /// Reuses the counter for a new job of `parts` parts (poller side).
    fn start(&self, parts: u32) {
        self.state.store(u64::from(parts), Ordering::Release);
    }

    /// Marks the counter as belonging to no job (poller side).
    fn release(&self) {
        self.state.store(VACANT, Ordering::Release);
    }

    /// Reports that one part finished, successfully if `ok`.
    ///
    /// Returns `Ok(Some(success))` for exactly one call, the one that finished the last part,
    /// where `success` is true when no part failed; `Ok(None)` for every other accepted call.
    ///
    /// # Errors
    ///
    /// [`ProgressError::AlreadyComplete`] if no part was left to finish (the counter is left
    /// unchanged), [`ProgressError::Vacant`] if the counter belongs to no job.
    pub fn part_done(&self, ok: bool) -> Result<Option<bool>, ProgressError> {
        // The first read may be stale; the CAS then fails and hands back the current value.
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            if current == VACANT {
                return Err(ProgressError::Vacant);
            }
            if current & REMAINING_MASK == 0 {
                return Err(ProgressError::AlreadyComplete);
            }
            // remaining >= 1, so `- 1` cannot borrow from the failure count; and
            // failed <= parts - remaining <= u32::MAX - 1, so a failure cannot overflow.
            let next = if ok { current - 1 } else { current + FAIL_DELTA };
            match self.state.compare_exchange(current, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => {
                    return Ok(if next & REMAINING_MASK == 0 { Some(next >> FAILED_SHIFT == 0) } else { None });
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Parts not finished yet.
    pub fn remaining(&self) -> u32 {
        low_half(self.state.load(Ordering::Acquire))
    }

    /// Parts that finished and failed.
    pub fn failed(&self) -> u32 {
        high_half(self.state.load(Ordering::Acquire))
    }

    /// True when every part has finished.
    pub fn is_complete(&self) -> bool {
        self.outcome().is_some()
    }

    /// `Some(success)` once every part has finished (`success` is true when none failed), `None`
    /// while parts remain.
    pub fn outcome(&self) -> Option<bool> {
        let state = self.state.load(Ordering::Acquire);
        if state == VACANT || low_half(state) != 0 {
            None
        } else {
            Some(high_half(state) == 0)
        }
    }
}

impl fmt::Debug for JobProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.load(Ordering::Relaxed);
        if state == VACANT {
            return f.write_str("JobProgress(vacant)");
        }
        f.debug_struct("JobProgress").field("remaining", &low_half(state)).field("failed", &high_half(state)).finish()
    }
}

/// Parts remaining of a [`JobProgress`] word.
fn low_half(state: u64) -> u32 {
    // Deliberate truncation to the low 32 bits.
    state as u32
}

/// Parts failed of a [`JobProgress`] word.
fn high_half(state: u64) -> u32 {
    // Shifted down by 32, so nothing is truncated.
    (state >> FAILED_SHIFT) as u32
}

/// [`CompletionQueue::push`] found the queue full; the value that was not pushed is handed back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Full(pub u32);

impl fmt::Display for Full {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "completion queue full (value {} not pushed)", self.0)
    }
}

impl core::error::Error for Full {}

/// One slot of a [`CompletionQueue`].
struct Cell {
    /// Position this cell is ready for: `pos` when free for the push at `pos`, `pos + 1` when it
    /// holds the value pushed at `pos`.
    sequence: AtomicUsize,
    /// The value; written before and read after the `sequence` hand-over, so `Relaxed` suffices.
    value: AtomicU32,
}

/// Bounded lock-free multi-producer multi-consumer queue of `u32`: Dmitry Vyukov's bounded queue,
/// built from atomics only (no `unsafe`, no `UnsafeCell`).
///
/// Each cell carries a `sequence` number saying which position it is ready for, so producers
/// and consumers claim positions with one CAS on `enqueue_pos` / `dequeue_pos` and hand a cell
/// over with one `Release` store of its sequence.
///
/// * [`push`](Self::push) and [`pop`](Self::pop) never block and never allocate; only
///   [`new`](Self::new) allocates.
/// * Values come out in the order their positions were claimed. A push that has claimed its
///   position but not yet written its cell hides the values pushed after it from `pop` until it
///   finishes (`pop` returns `None` meanwhile); nothing is lost, a later `pop` returns them.
/// * Positions are `usize` counters compared with wrapping arithmetic; as the capacity is a power
///   of two they stay consistent when the counters wrap around.
pub struct CompletionQueue {
    cells: Box<[Cell]>,
    /// `capacity - 1`.
    mask: usize,
    enqueue_pos: AtomicUsize,
    dequeue_pos: AtomicUsize,
}

impl CompletionQueue {
    /// A queue holding at least `capacity` values: the capacity is rounded up to a power of two,
    /// and to at least 2 (Vyukov's scheme cannot tell a full one-cell queue from an empty one).
    ///
    /// # Panics
    ///
    /// If the rounded capacity does not fit in a `usize`.
    pub fn new(capacity: usize) -> Self {
        Self::with_start_pos(capacity, 0)
    }

    /// [`new`](Self::new), with both positions starting at `start` (a multiple of the rounded
    /// capacity). Tests use a `start` near `usize::MAX` to make the positions wrap around.
    fn with_start_pos(capacity: usize, start: usize) -> Self {
        let capacity = capacity.max(2).checked_next_power_of_two().expect("CompletionQueue capacity overflows usize");
        debug_assert_eq!(start & (capacity - 1), 0);
        let cells = (0..capacity)
            .map(|i| Cell { sequence: AtomicUsize::new(start.wrapping_add(i)), value: AtomicU32::new(0) })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        CompletionQueue {
            cells,
            mask: capacity - 1,
            enqueue_pos: AtomicUsize::new(start),
            dequeue_pos: AtomicUsize::new(start),
        }
    }

    /// Number of values the queue holds when full.
    pub fn capacity(&self) -> usize {
        self.cells.len()
    }

    /// Appends `value`; never blocks.
    ///
    /// # Errors
    ///
    /// [`Full`] (carrying `value` back) if the cell for the next position still holds a value
    /// not yet (completely) popped.
    pub fn push(&self, value: u32) -> Result<(), Full> {
        let mut pos = self.enqueue_pos.load(Ordering::Relaxed);
        loop {
            let cell = &self.cells[pos & self.mask];
            let seq = cell.sequence.load(Ordering::Acquire);
            // Signed distance; wrapping keeps it right when the counters wrap around.
            let dif = seq.wrapping_sub(pos) as isize;
            if dif == 0 {
                // The cell is free for position `pos`: claim the position.
                match self.enqueue_pos.compare_exchange_weak(
                    pos,
                    pos.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        cell.value.store(value, Ordering::Relaxed);
                        cell.sequence.store(pos.wrapping_add(1), Ordering::Release);
                        return Ok(());
                    }
                    Err(actual) => pos = actual,
                }
            } else if dif < 0 {
                // The cell still holds the value pushed one lap ago.
                return Err(Full(value));
            } else {
                // Another producer claimed `pos`; the `Acquire` above makes this load see it.
                pos = self.enqueue_pos.load(Ordering::Relaxed);
            }
        }
    }

    /// Removes the oldest value, or returns `None` if there is none ready; never blocks.
    pub fn pop(&self) -> Option<u32> {
        let mut pos = self.dequeue_pos.load(Ordering::Relaxed);
        loop {
            let cell = &self.cells[pos & self.mask];
            let seq = cell.sequence.load(Ordering::Acquire);
            let dif = seq.wrapping_sub(pos.wrapping_add(1)) as isize;
            if dif == 0 {
                // The cell holds the value pushed at `pos`: claim the position.
                match self.dequeue_pos.compare_exchange_weak(
                    pos,
                    pos.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        let value = cell.value.load(Ordering::Relaxed);
                        // Free the cell for the push one lap later.
                        cell.sequence.store(pos.wrapping_add(self.mask).wrapping_add(1), Ordering::Release);
                        return Some(value);
                    }
                    Err(actual) => pos = actual,
                }
            } else if dif < 0 {
                // Nothing pushed (or not yet written) at `pos`.
                return None;
            } else {
                // Another consumer claimed `pos`; the `Acquire` above makes this load see it.
                pos = self.dequeue_pos.load(Ordering::Relaxed);
            }
        }
    }
}

impl fmt::Debug for CompletionQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompletionQueue").field("capacity", &self.capacity()).finish_non_exhaustive()
    }
}

/// A job's entry in a [`JobTable`], handed out by [`JobTable::start`] and passed to
/// [`JobShared::part_done`] for each finished part.
///
/// A handle is valid from `start` until the poller reports the job from [`JobTable::poll`]; the
/// entry is then free and may be reused by a later `start`. Using a handle after its job was
/// reported is a logic error: it is refused with [`JobError::UnknownHandle`] while the entry is
/// free, but once the entry is reused the part is counted against the new job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobHandle {
    index: u32,
}

impl JobHandle {
    /// The entry index, e.g. to carry the handle through an I/O backend's `user_data`.
    pub fn index(self) -> u32 {
        self.index
    }

    /// The handle for entry `index` (the inverse of [`index`](Self::index)). An index the table
    /// does not have is refused by [`JobShared::part_done`].
    pub fn from_index(index: u32) -> Self {
        JobHandle { index }
    }
}

/// Why [`JobShared::part_done`] refused a part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JobError {
    /// The handle names no entry of this table, or a free entry (its job was already reported).
    UnknownHandle,
    /// Every part of the job was already reported.
    AlreadyComplete,
    /// The job completed but its entry could not be queued for the poller. The table's
    /// invariants rule this out (the completion queue has a cell for every entry, and an entry
    /// is queued once per job and freed only after it was popped); it is reported rather than
    /// the completion dropped silently.
    CompletionQueueFull,
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JobError::UnknownHandle => "unknown or free job handle",
            JobError::AlreadyComplete => "every part of the job was already reported",
            JobError::CompletionQueueFull => "job completed but the completion queue was full",
        })
    }
}

impl core::error::Error for JobError {}

/// [`JobTable::start`] found every entry in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TableFull;

impl fmt::Display for TableFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("job table full")
    }
}

impl core::error::Error for TableFull {}

/// The part of a [`JobTable`] shared with the threads that finish parts: one [`JobProgress`] per
/// entry and the queue of completed entries. Obtained from [`JobTable::shared`].
pub struct JobShared {
    progress: Box<[JobProgress]>,
    completed: CompletionQueue,
}

impl JobShared {
    /// Reports that one part of the job `handle` finished, successfully if `ok`; callable from
    /// any thread. The call that finishes the job's last part queues the job for the poller's
    /// next [`JobTable::poll`].
    ///
    /// # Errors
    ///
    /// [`JobError::UnknownHandle`] if `handle` names no entry or a free one,
    /// [`JobError::AlreadyComplete`] if the job has no part left (nothing is changed in either
    /// case), and [`JobError::CompletionQueueFull`] if the job completed but could not be queued
    /// (ruled out by the table's invariants).
    pub fn part_done(&self, handle: JobHandle, ok: bool) -> Result<(), JobError> {
        let progress = self.progress.get(handle.index as usize).ok_or(JobError::UnknownHandle)?;
        match progress.part_done(ok) {
            Ok(None) => Ok(()),
            Ok(Some(_)) => self.completed.push(handle.index).map_err(|_| JobError::CompletionQueueFull),
            Err(ProgressError::AlreadyComplete) => Err(JobError::AlreadyComplete),
            Err(ProgressError::Vacant) => Err(JobError::UnknownHandle),
        }
    }

    /// Number of entries of the table.
    pub fn capacity(&self) -> usize {
        self.progress.len()
    }
}

impl fmt::Debug for JobShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobShared").field("capacity", &self.capacity()).finish_non_exhaustive()
    }
}

/// Fixed-capacity table of in-flight jobs, owned by one *poller* thread.
///
/// The poller [`start`](Self::start)s jobs and hands their [`JobHandle`]s, together with a clone
/// of [`shared`](Self::shared), to whatever finishes the parts; any thread reports finished parts
/// with [`JobShared::part_done`]; the poller collects finished jobs with [`poll`](Self::poll),
/// which frees their entries for reuse.
///
/// Entry management (the free list and the job ids) is poller-only state behind `&mut self`, so
/// the only shared state is the atomics of [`JobShared`]. All memory is allocated in
/// [`new`](Self::new); `start`, `part_done` and `poll` never allocate. Entries are reused in LIFO
/// order, starting from entry 0, so the handles a sequence of calls yields are deterministic.
pub struct JobTable {
    shared: Arc<JobShared>,
    /// Job id of each entry; meaningful while the entry is in use.
    ids: Box<[u64]>,
    /// Free entries, used as a stack; its capacity (the table's) is reserved in `new`.
    free: Vec<u32>,
}

impl JobTable {
    /// A table of `capacity` entries, all free.
    ///
    /// # Panics
    ///
    /// If `capacity` exceeds `u32::MAX` (entries are indexed by `u32`).
    pub fn new(capacity: usize) -> Self {
        let count = u32::try_from(capacity).expect("JobTable capacity exceeds u32::MAX");
        let progress = (0..capacity).map(|_| JobProgress::vacant()).collect::<Vec<_>>().into_boxed_slice();
        let shared = Arc::new(JobShared { progress, completed: CompletionQueue::new(capacity) });
        JobTable { shared, ids: alloc::vec![0; capacity].into_boxed_slice(), free: (0..count).rev().collect() }
    }

    /// The part of the table to hand to the threads that finish parts.
    pub fn shared(&self) -> Arc<JobShared> {
        Arc::clone(&self.shared)
    }

    /// Number of entries.
    pub fn capacity(&self) -> usize {
        self.ids.len()
    }

    /// Number of entries in use: jobs started and not yet reported by [`poll`](Self::poll).
    pub fn in_flight(&self) -> usize {
        self.ids.len() - self.free.len()
    }

    /// Starts job `job_id` of `parts` parts in a free entry. A job of zero parts is complete at
    /// once and queued for the next [`poll`](Self::poll), which reports it as successful.
    ///
    /// # Errors
    ///
    /// [`TableFull`] if every entry is in use (nothing is changed). It would also be returned,
    /// with the entry given back, should a zero-part job find the completion queue full, which
    /// the table's invariants rule out.
    pub fn start(&mut self, job_id: u64, parts: u32) -> Result<JobHandle, TableFull> {
        let index = self.free.pop().ok_or(TableFull)?;
        let slot = index as usize;
        self.ids[slot] = job_id;
        let progress = &self.shared.progress[slot];
        progress.start(parts);
        if parts == 0 && self.shared.completed.push(index).is_err() {
            progress.release();
            self.free.push(index);
            return Err(TableFull);
        }
        Ok(JobHandle { index })
    }

    /// [`JobShared::part_done`] on this table, for parts finished on the poller's own thread.
    ///
    /// # Errors
    ///
    /// As [`JobShared::part_done`].
    pub fn part_done(&self, handle: JobHandle, ok: bool) -> Result<(), JobError> {
        self.shared.part_done(handle, ok)
    }

    /// Reports every completed job queued so far, as `f(job_id, success)` in completion order,
    /// frees their entries, and returns how many were reported.
    ///
    /// A completion whose `part_done` call is still pushing it onto the queue (and any queued
    /// behind it) is left for the next `poll`.
    pub fn poll(&mut self, mut f: impl FnMut(u64, bool)) -> usize {
        let mut reported = 0;
        while let Some(index) = self.shared.completed.pop() {
            let slot = index as usize;
            // Only indices of occupied entries whose job completed are ever queued.
            let Some(progress) = self.shared.progress.get(slot) else {
                debug_assert!(false, "queued job entry {index} out of range");
                continue;
            };
            let Some(success) = progress.outcome() else {
                debug_assert!(false, "queued job entry {index} not complete");
                continue;
            };
            let job_id = self.ids[slot];
            progress.release();
            self.free.push(index);
            reported += 1;
            f(job_id, success);
        }
        reported
    }
}

impl fmt::Debug for JobTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobTable")
            .field("capacity", &self.capacity())
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    extern crate std;

    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn progress_all_ok_succeeds_on_last_part() {
        let p = JobProgress::new(3);
        assert_eq!(p.remaining(), 3);
        assert!(!p.is_complete());
        assert_eq!(p.part_done(true), Ok(None));
        assert_eq!(p.part_done(true), Ok(None));
        assert_eq!(p.outcome(), None);
        assert_eq!(p.part_done(true), Ok(Some(true)));
        assert!(p.is_complete());
        assert_eq!(p.outcome(), Some(true));
        assert_eq!((p.remaining(), p.failed()), (0, 0));
    }

    #[test]
    fn progress_any_failure_fails_the_job() {
        let p = JobProgress::new(3);
        assert_eq!(p.part_done(true), Ok(None));
        assert_eq!(p.part_done(false), Ok(None));
        assert_eq!((p.remaining(), p.failed()), (1, 1));
        assert_eq!(p.part_done(true), Ok(Some(false)));
        assert_eq!(p.outcome(), Some(false));

        let p = JobProgress::new(2);
        assert_eq!(p.part_done(false), Ok(None));
        assert_eq!(p.part_done(false), Ok(Some(false)));
        assert_eq!((p.remaining(), p.failed()), (0, 2));
    }

    #[test]
    fn progress_zero_parts_is_complete_at_creation() {
        let p = JobProgress::new(0);
        assert!(p.is_complete());
        assert_eq!(p.outcome(), Some(true));
        assert_eq!(p.part_done(true), Err(ProgressError::AlreadyComplete));
        assert_eq!(p.part_done(false), Err(ProgressError::AlreadyComplete));
        assert_eq!((p.remaining(), p.failed()), (0, 0));
    }

    #[test]
    fn progress_too_many_parts_is_refused_without_change() {
        let p = JobProgress::new(1);
        assert_eq!(p.part_done(false), Ok(Some(false)));
        for ok in [true, false, true] {
            assert_eq!(p.part_done(ok), Err(ProgressError::AlreadyComplete));
        }
        assert_eq!((p.remaining(), p.failed()), (0, 1));
        assert_eq!(p.outcome(), Some(false));
    }

    #[test]
    fn progress_extreme_part_counts() {
        let p = JobProgress::new(u32::MAX);
        assert_eq!(p.part_done(false), Ok(None));
        assert_eq!((p.remaining(), p.failed()), (u32::MAX - 1, 1));
        // A job whose every part fails ends at remaining 0, failed u32::MAX: not VACANT.
        let p = JobProgress { state: AtomicU64::new((u64::from(u32::MAX - 1) << FAILED_SHIFT) | 1) };
        assert_eq!(p.part_done(false), Ok(Some(false)));
        assert_eq!((p.remaining(), p.failed()), (0, u32::MAX));
        assert_eq!(p.part_done(false), Err(ProgressError::AlreadyComplete));
        assert_eq!(p.outcome(), Some(false));
    }

    #[test]
    fn progress_vacant_refuses_parts_until_started() {
        let p = JobProgress::vacant();
        assert_eq!(p.part_done(true), Err(ProgressError::Vacant));
        assert_eq!(p.outcome(), None);
        p.start(1);
        assert_eq!(p.part_done(true), Ok(Some(true)));
        p.release();
        assert_eq!(p.part_done(true), Err(ProgressError::Vacant));
        assert_eq!(std::format!("{p:?}"), "JobProgress(vacant)");
    }

    #[test]
    fn progress_concurrent_parts_complete_once() {
        // Miri interprets every atomic step: fewer rounds and parts there.
        let (rounds, per_thread) = if cfg!(miri) { (2, 40) } else { (20, 1000) };
        for _ in 0..rounds {
            let p = Arc::new(JobProgress::new(4 * per_thread));
            let threads: Vec<_> = (0..4)
                .map(|t| {
                    let p = Arc::clone(&p);
                    std::thread::spawn(move || {
                        let mut completions = Vec::new();
                        for i in 0..per_thread + 1 {
                            // Thread 3 fails one part; each thread over-reports at most once.
                            match p.part_done(!(t == 3 && i == per_thread / 2)) {
                                Ok(Some(success)) => completions.push(success),
                                Ok(None) | Err(ProgressError::AlreadyComplete) => {}
                                Err(ProgressError::Vacant) => unreachable!(),
                            }
                        }
                        completions
                    })
                })
                .collect();
            let completions: Vec<bool> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
            assert_eq!(completions, [false]);
            assert_eq!((p.remaining(), p.failed()), (0, 1));
        }
    }

    #[test]
    fn queue_capacity_rounds_up_to_power_of_two_at_least_two() {
        for (asked, got) in [(0, 2), (1, 2), (2, 2), (3, 4), (4, 4), (5, 8), (1000, 1024)] {
            assert_eq!(CompletionQueue::new(asked).capacity(), got, "asked {asked}");
        }
    }

    #[test]
    fn queue_fifo_full_and_empty() {
        let q = CompletionQueue::new(4);
        assert_eq!(q.pop(), None);
        for v in 10..14 {
            assert_eq!(q.push(v), Ok(()));
        }
        assert_eq!(q.push(99), Err(Full(99)));
        assert_eq!(q.pop(), Some(10));
        assert_eq!(q.push(14), Ok(()));
        assert_eq!(q.push(15), Err(Full(15)));
        for v in 11..15 {
            assert_eq!(q.pop(), Some(v));
        }
        assert_eq!(q.pop(), None);
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn queue_many_laps() {
        let q = CompletionQueue::new(2);
        let mut next_push = 0u32;
        let mut next_pop = 0u32;
        // Positions go round the two cells thousands of times, at varying fill levels.
        // Miri interprets every atomic step: fewer rounds there.
        let rounds: u32 = if cfg!(miri) { 200 } else { 10_000 };
        for round in 0..rounds {
            for _ in 0..(round % 3) {
                match q.push(next_push) {
                    Ok(()) => next_push += 1,
                    Err(Full(v)) => assert_eq!(v, next_push),
                }
            }
            for _ in 0..((round + 1) % 3) {
                if let Some(v) = q.pop() {
                    assert_eq!(v, next_pop);
                    next_pop += 1;
                }
            }
            assert!(next_push - next_pop <= 2);
        }
        while let Some(v) = q.pop() {
            assert_eq!(v, next_pop);
            next_pop += 1;
        }
        assert_eq!(next_pop, next_push);
        assert!(next_push > rounds / 2);
    }

    #[test]
    fn queue_positions_wrap_around_usize() {
        for capacity in [2, 4, 8] {
            let start = 0usize.wrapping_sub(3 * capacity);
            let q = CompletionQueue::with_start_pos(capacity, start);
            let mut expected = 0u32;
            let mut pushed = 0u32;
            // Fill and drain ten times: the positions cross usize::MAX -> 0 on the way.
            for _ in 0..10 {
                for _ in 0..capacity {
                    assert_eq!(q.push(pushed), Ok(()));
                    pushed += 1;
                }
                assert_eq!(q.push(u32::MAX), Err(Full(u32::MAX)));
                for _ in 0..capacity {
                    assert_eq!(q.pop(), Some(expected));
                    expected += 1;
                }
                assert_eq!(q.pop(), None);
            }
            // Half-full across the wrap as well.
            let q = CompletionQueue::with_start_pos(capacity, 0usize.wrapping_sub(capacity));
            for v in 0..(capacity as u32 * 5) {
                assert_eq!(q.push(v), Ok(()));
                if v % 2 == 1 {
                    assert_eq!(q.pop(), Some(v - 1));
                    assert_eq!(q.pop(), Some(v));
                }
            }
            assert_eq!(q.pop(), None);
            assert!(q.enqueue_pos.load(Ordering::Relaxed) < start);
        }
    }

    #[test]
    fn queue_concurrent_producers_and_consumers() {
        // Values are `producer * 10_000 + i`; miri interprets every atomic step: fewer there.
        const PER_PRODUCER: u32 = if cfg!(miri) { 100 } else { 5000 };
        let q = Arc::new(CompletionQueue::new(8));
        let producers: Vec<_> = (0..4u32)
            .map(|t| {
                let q = Arc::clone(&q);
                std::thread::spawn(move || {
                    for i in 0..PER_PRODUCER {
                        let mut v = t * 10_000 + i;
                        while let Err(Full(back)) = q.push(v) {
                            v = back;
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let consumers: Vec<_> = (0..2)
            .map(|_| {
                let q = Arc::clone(&q);
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    while got.len() < 2 * PER_PRODUCER as usize {
                        match q.pop() {
                            Some(v) => got.push(v),
                            None => std::thread::yield_now(),
                        }
                    }
                    got
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        let mut all: Vec<u32> = Vec::new();
        for c in consumers {
            let got = c.join().unwrap();
            // Each producer's values reach a consumer in the order they were pushed.
            for t in 0..4 {
                let mine: Vec<u32> = got.iter().copied().filter(|v| v / 10_000 == t).collect();
                assert!(mine.windows(2).all(|w| w[0] < w[1]));
            }
            all.extend(got);
        }
        all.sort_unstable();
        let expected: Vec<u32> = (0..4u32).flat_map(|t| (0..PER_PRODUCER).map(move |i| t * 10_000 + i)).collect();
        assert_eq!(all, expected);
        assert_eq!(q.pop(), None);
    }

    fn poll_all(table: &mut JobTable) -> Vec<(u64, bool)> {
        let mut out = Vec::new();
        let n = table.poll(|id, ok| out.push((id, ok)));
        assert_eq!(n, out.len());
        out
    }

    #[test]
    fn table_reports_each_job_once_with_and_of_parts() {
        let mut table = JobTable::new(4);
        let shared = table.shared();
        let a = table.start(100, 2).unwrap();
        let b = table.start(200, 3).unwrap();
        assert_eq!((a.index(), b.index()), (0, 1));
        assert_eq!(table.in_flight(), 2);

        shared.part_done(a, true).unwrap();
        shared.part_done(b, true).unwrap();
        shared.part_done(b, false).unwrap();
        assert_eq!(poll_all(&mut table), []);
        shared.part_done(b, true).unwrap();
        assert_eq!(shared.part_done(b, true), Err(JobError::AlreadyComplete));
        table.part_done(a, true).unwrap();
        assert_eq!(poll_all(&mut table), [(200, false), (100, true)]);
        assert_eq!(poll_all(&mut table), []);
        assert_eq!(table.in_flight(), 0);
    }

    #[test]
    fn table_zero_part_job_is_reported_without_parts() {
        let mut table = JobTable::new(2);
        let h = table.start(7, 0).unwrap();
        assert_eq!(table.part_done(h, true), Err(JobError::AlreadyComplete));
        assert_eq!(poll_all(&mut table), [(7, true)]);
        assert_eq!(table.part_done(h, true), Err(JobError::UnknownHandle));
    }

    #[test]
    fn table_unknown_and_free_handles() {
        let mut table = JobTable::new(2);
        let shared = table.shared();
        assert_eq!(shared.part_done(JobHandle::from_index(0), true), Err(JobError::UnknownHandle));
        assert_eq!(shared.part_done(JobHandle::from_index(2), true), Err(JobError::UnknownHandle));
        assert_eq!(shared.part_done(JobHandle::from_index(u32::MAX), false), Err(JobError::UnknownHandle));
        let h = table.start(1, 1).unwrap();
        assert_eq!(JobHandle::from_index(h.index()), h);
        shared.part_done(h, false).unwrap();
        assert_eq!(poll_all(&mut table), [(1, false)]);
        assert_eq!(shared.part_done(h, true), Err(JobError::UnknownHandle));
    }

    #[test]
    fn table_full_and_entry_reuse() {
        let mut table = JobTable::new(3);
        let handles: Vec<_> = (0..3).map(|i| table.start(i, 1).unwrap()).collect();
        assert_eq!(table.start(99, 1), Err(TableFull));
        assert_eq!(table.in_flight(), 3);
        table.part_done(handles[1], true).unwrap();
        assert_eq!(table.start(99, 1), Err(TableFull));
        assert_eq!(poll_all(&mut table), [(1, true)]);
        // The freed entry is reused, for a job with its own parts and id.
        let reused = table.start(42, 2).unwrap();
        assert_eq!(reused, handles[1]);
        table.part_done(reused, false).unwrap();
        table.part_done(handles[0], true).unwrap();
        table.part_done(handles[2], true).unwrap();
        table.part_done(reused, true).unwrap();
        assert_eq!(poll_all(&mut table), [(0, true), (2, true), (42, false)]);
        assert_eq!(table.in_flight(), 0);
    }

    #[test]
    fn table_every_entry_completing_at_once_fits_the_queue() {
        // Capacities that are and are not powers of two; many rounds so the queue wraps.
        for capacity in [1, 2, 3, 5, 8] {
            let mut table = JobTable::new(capacity);
            // Miri interprets every atomic step: fewer rounds there (the queue still wraps).
            for round in 0..if cfg!(miri) { 12 } else { 50u64 } {
                let handles: Vec<_> =
                    (0..capacity as u64).map(|i| table.start(round * 100 + i, (i % 3) as u32).unwrap()).collect();
                assert_eq!(table.start(0, 1), Err(TableFull));
                // Finish in reverse order of start.
                for (i, h) in handles.iter().enumerate().rev() {
                    for _ in 0..(i % 3) {
                        table.part_done(*h, true).unwrap();
                    }
                }
                let mut got = poll_all(&mut table);
                got.sort_unstable();
                let expected: Vec<_> = (0..capacity as u64).map(|i| (round * 100 + i, true)).collect();
                assert_eq!(got, expected);
            }
        }
    }

    #[test]
    fn table_zero_capacity_is_always_full() {
        let mut table = JobTable::new(0);
        assert_eq!(table.start(1, 0), Err(TableFull));
        assert_eq!(table.poll(|_, _| unreachable!()), 0);
    }

    #[test]
    fn table_concurrent_workers() {
        let mut table = JobTable::new(16);
        let mut reported = [None; 64];
        let mut next_job = 0u64;
        let workers = 4;
        while next_job < 64 || table.in_flight() > 0 {
            // Start as many jobs as fit, each with one part per worker.
            let mut batch = Vec::new();
            while next_job < 64 {
                match table.start(next_job, workers) {
                    Ok(h) => batch.push((next_job, h)),
                    Err(TableFull) => break,
                }
                next_job += 1;
            }
            let threads: Vec<_> = (0..workers)
                .map(|w| {
                    let shared = table.shared();
                    let batch = batch.clone();
                    std::thread::spawn(move || {
                        for (job, h) in batch {
                            // Job 3k fails on worker (k mod workers).
                            let ok = !(job % 3 == 0 && (job / 3) % u64::from(workers) == u64::from(w));
                            shared.part_done(h, ok).unwrap();
                        }
                    })
                })
                .collect();
            while threads.iter().any(|t| !t.is_finished()) {
                table.poll(|id, ok| {
                    assert!(reported[id as usize].replace(ok).is_none());
                });
            }
            for t in threads {
                t.join().unwrap();
            }
            table.poll(|id, ok| {
                assert!(reported[id as usize].replace(ok).is_none());
            });
            assert_eq!(table.in_flight(), 0);
        }
        for (job, outcome) in reported.iter().enumerate() {
            assert_eq!(*outcome, Some(job % 3 != 0), "job {job}");
        }
    }

    #[test]
    fn errors_display() {
        use std::string::ToString;
        assert_eq!(TableFull.to_string(), "job table full");
        assert_eq!(Full(3).to_string(), "completion queue full (value 3 not pushed)");
        assert!(!JobError::UnknownHandle.to_string().is_empty());
        assert!(!ProgressError::AlreadyComplete.to_string().is_empty());
        let e: &dyn core::error::Error = &JobError::CompletionQueueFull;
        assert!(e.to_string().contains("full"));
    }
}

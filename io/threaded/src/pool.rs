//! The two queues, the workers that drain them, and the completion list.
//!
//! vLLM's `DualQueueThreadPool` idea: loads and stores wait in separate queues; read-priority
//! workers take a load if there is one and a store otherwise, write-priority workers the
//! reverse, so neither kind starves and a burst of one kind uses every worker. One mutex and one
//! condition variable guard both queues: idle workers sleep in the kernel (no spinning).
//! Completions go to a second mutex-guarded list with its own condition variable, which
//! `poll` waits on.
//!
//! Unlike vLLM's pool, stopping never forgets work: every queued op is completed `Cancelled`,
//! and every op a worker took is completed by that worker (even if its I/O code panics).

use std::collections::VecDeque;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use kvtier_fs::region::Lease;
use kvtier_fs::{FileOp, FileOpDone, Outcome, Wait};

use crate::block_io::BlockIo;

/// An accepted op and the lease taken for it at submission.
pub struct Job {
    /// The op.
    pub op: FileOp,
    /// Read lease (store) or write lease (load) on the op's slot.
    pub lease: Lease,
}

#[derive(Default)]
struct Queues {
    loads: VecDeque<Job>,
    stores: VecDeque<Job>,
    stop: bool,
}

/// State shared by the executor handle and its workers.
#[derive(Default)]
pub struct Shared {
    queues: Mutex<Queues>,
    work: Condvar,
    done: Mutex<Vec<FileOpDone>>,
    done_cv: Condvar,
}

/// Recovers a poisoned lock: every critical section here leaves the data consistent (pushes
/// and pops only), so a panic elsewhere never makes it unusable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Why [`Shared::enqueue`] did not queue a job.
pub enum Refused {
    /// The queues hold `capacity` jobs.
    Full(FileOp),
    /// The pool is stopped.
    Stopped(FileOp),
}

impl Shared {
    /// Queues the job made by `make` (which takes the lease and may refuse) unless the queues
    /// already hold `capacity` jobs or the pool stopped. The lease is taken under the queue
    /// lock, after the capacity check, so a refused op holds no lease.
    pub fn enqueue(
        &self,
        op: FileOp,
        capacity: usize,
        is_load: bool,
        lease: impl FnOnce(&FileOp) -> Result<Lease, io::Error>,
    ) -> Result<Result<(), (FileOp, io::Error)>, Refused> {
        let mut q = lock(&self.queues);
        if q.stop {
            return Err(Refused::Stopped(op));
        }
        if q.loads.len() + q.stores.len() >= capacity {
            return Err(Refused::Full(op));
        }
        let lease = match lease(&op) {
            Ok(lease) => lease,
            Err(e) => return Ok(Err((op, e))),
        };
        let job = Job { op, lease };
        if is_load {
            q.loads.push_back(job);
        } else {
            q.stores.push_back(job);
        }
        drop(q);
        self.work.notify_one();
        Ok(Ok(()))
    }

    /// Publishes finished ops (whose leases are already dropped).
    pub fn complete(&self, done: impl IntoIterator<Item = FileOpDone>) {
        lock(&self.done).extend(done);
        self.done_cv.notify_one();
    }

    /// Moves every published completion to `out`, first waiting as `wait` allows for one if
    /// there is none. Returns how many were moved.
    pub fn take_done(&self, out: &mut Vec<FileOpDone>, wait: Wait) -> usize {
        let mut done = lock(&self.done);
        if done.is_empty() {
            match wait {
                Wait::No => {}
                Wait::Forever => {
                    done = self.done_cv.wait_while(done, |d| d.is_empty()).unwrap_or_else(PoisonError::into_inner);
                }
                Wait::Timeout(limit) => {
                    done = self
                        .done_cv
                        .wait_timeout_while(done, limit, |d| d.is_empty())
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
        let n = done.len();
        out.append(&mut done);
        n
    }

    /// Stops the pool: workers exit once idle, and every queued job is completed `Cancelled`
    /// (its lease dropped first). Returns how many were cancelled.
    pub fn stop(&self) -> usize {
        let (loads, stores) = {
            let mut q = lock(&self.queues);
            q.stop = true;
            (std::mem::take(&mut q.loads), std::mem::take(&mut q.stores))
        };
        self.work.notify_all();
        let cancelled: Vec<FileOpDone> = loads
            .into_iter()
            .chain(stores)
            .map(|Job { op, lease }| {
                drop(lease);
                FileOpDone { token: op.token, kind: op.kind, outcome: Outcome::Cancelled }
            })
            .collect();
        let n = cancelled.len();
        if n > 0 {
            self.complete(cancelled);
        }
        n
    }

    /// The next job for a worker of the given priority, sleeping while both queues are empty;
    /// `None` once the pool is stopped.
    fn next(&self, load_priority: bool) -> Option<Job> {
        let mut q = lock(&self.queues);
        loop {
            let job = if load_priority {
                q.loads.pop_front().or_else(|| q.stores.pop_front())
            } else {
                q.stores.pop_front().or_else(|| q.loads.pop_front())
            };
            if job.is_some() {
                return job;
            }
            if q.stop {
                return None;
            }
            q = self.work.wait(q).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// A worker's life: take a job, run it (the lease is dropped inside), publish its outcome.
    pub fn work(&self, load_priority: bool, mut io: BlockIo) {
        while let Some(Job { op, lease }) = self.next(load_priority) {
            // A panic in the I/O code must not lose the op: it is reported as failed (the lease
            // was dropped by the unwinding).
            let outcome = catch_unwind(AssertUnwindSafe(|| io.run(&op, lease))).unwrap_or_else(|_| {
                Outcome::Failed(io::Error::other("kvtier-io-threaded: worker panicked running the op"))
            });
            self.complete([FileOpDone { token: op.token, kind: op.kind, outcome }]);
        }
    }
}

//! The two queues, the workers that drain them, and the completion list.
//!
//! vLLM's `DualQueueThreadPool` idea: loads and stores wait in separate queues; read-priority
//! workers take a load if there is one and a store otherwise, write-priority workers the
//! reverse, so neither kind starves and a burst of one kind uses every worker. One mutex and one
//! condition variable guard both queues: idle workers sleep in the kernel (no spinning).
//! Completions go to a second mutex-guarded list with its own condition variable, which
//! `poll` waits on.
//!
//! Unlike vLLM's pool, stopping never forgets work: every queued job is completed by the
//! `cancel` function given to [`Pool::stop`], and every job a worker took is completed by that
//! worker.
//!
//! The pool is generic over the job `J` and its completion `D` and knows nothing of files: the
//! executor runs it with (op, lease, part) jobs whose outcomes go to their parts, so its
//! completions are bare counts (`()`); the loom models (`tests/loom_pool.rs`) run it with
//! numbered jobs and completions that say how each job ended. Its synchronisation types come from
//! [`crate::sync`], so those models check this very code. It is public for them; it is not a
//! stable API.

use std::collections::VecDeque;

use kvtier_fs::Wait;

use crate::sync::{self, Condvar, Mutex};

struct Queues<J> {
    loads: VecDeque<J>,
    stores: VecDeque<J>,
    stop: bool,
}

/// State shared by the executor handle and its workers.
pub struct Pool<J, D> {
    queues: Mutex<Queues<J>>,
    work: Condvar,
    done: Mutex<Vec<D>>,
    done_cv: Condvar,
}

impl<J, D> std::fmt::Debug for Pool<J, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

/// Why [`Pool::enqueue`] did not queue a job; it hands the item back.
#[derive(Debug)]
pub enum Refused<T> {
    /// The queues hold `capacity` jobs.
    Full(T),
    /// The pool is stopped.
    Stopped(T),
}

impl<J, D> Default for Pool<J, D> {
    fn default() -> Self {
        Self::new()
    }
}

impl<J, D> Pool<J, D> {
    /// An empty, running pool. Workers are threads that call [`Pool::work`].
    pub fn new() -> Self {
        Pool {
            queues: Mutex::new(Queues { loads: VecDeque::new(), stores: VecDeque::new(), stop: false }),
            work: Condvar::new(),
            done: Mutex::new(Vec::new()),
            done_cv: Condvar::new(),
        }
    }

    /// Queues the job `make` builds from `item` (the executor takes the op's lease there, and
    /// may refuse with `R`), unless the queues already hold `capacity` jobs or the pool stopped.
    /// `make` runs under the queue lock, after those checks, so a refused item holds no lease.
    /// Returns `Ok(Ok(()))` when queued, `Ok(Err(r))` when `make` refused.
    pub fn enqueue<T, R>(
        &self,
        item: T,
        capacity: usize,
        is_load: bool,
        make: impl FnOnce(T) -> Result<J, R>,
    ) -> Result<Result<(), R>, Refused<T>> {
        let mut q = sync::lock(&self.queues);
        if q.stop {
            return Err(Refused::Stopped(item));
        }
        if q.loads.len() + q.stores.len() >= capacity {
            return Err(Refused::Full(item));
        }
        let job = match make(item) {
            Ok(job) => job,
            Err(r) => return Ok(Err(r)),
        };
        if is_load {
            q.loads.push_back(job);
        } else {
            q.stores.push_back(job);
        }
        drop(q);
        // Every worker takes either kind, so waking any one of them is enough.
        self.work.notify_one();
        Ok(Ok(()))
    }

    /// Publishes finished jobs' completions.
    pub fn complete(&self, done: impl IntoIterator<Item = D>) {
        sync::lock(&self.done).extend(done);
        // One poller at a time (the executor handle polls through `&mut self`).
        self.done_cv.notify_one();
    }

    /// Takes every published completion, first waiting as `wait` allows for one if there is
    /// none, and returns how many there were.
    pub fn take_done(&self, wait: Wait) -> usize {
        self.take_done_into(&mut Vec::new(), wait)
    }

    /// [`take_done`](Self::take_done), moving the completions to `out`.
    pub fn take_done_into(&self, out: &mut Vec<D>, wait: Wait) -> usize {
        let mut done = sync::lock(&self.done);
        if done.is_empty() {
            match wait {
                Wait::No => {}
                Wait::Forever => done = sync::wait_while(&self.done_cv, done, |d| d.is_empty()),
                Wait::Timeout(limit) => done = sync::wait_timeout_while(&self.done_cv, done, limit, |d| d.is_empty()),
            }
        }
        let n = done.len();
        out.append(&mut done);
        n
    }

    /// Stops the pool: workers exit once idle, later [`Pool::enqueue`]s are refused, and every
    /// queued job is completed with `cancel(job)` (loads first, then stores, each in queue
    /// order). Returns how many were cancelled. Stopping again cancels nothing more.
    pub fn stop(&self, cancel: impl FnMut(J) -> D) -> usize {
        let (loads, stores) = {
            let mut q = sync::lock(&self.queues);
            q.stop = true;
            (std::mem::take(&mut q.loads), std::mem::take(&mut q.stores))
        };
        self.work.notify_all();
        let cancelled: Vec<D> = loads.into_iter().chain(stores).map(cancel).collect();
        let n = cancelled.len();
        if n > 0 {
            self.complete(cancelled);
        }
        n
    }

    /// The next job for a worker of the given priority, sleeping while both queues are empty;
    /// `None` once the pool is stopped (and, then, its queues are empty).
    pub fn next(&self, load_priority: bool) -> Option<J> {
        let mut q = sync::lock(&self.queues);
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
            q = sync::wait(&self.work, q);
        }
    }

    /// A worker's life: take a job, `run` it, publish its completion; return once the pool is
    /// stopped. `run` must not panic (the executor's catches the I/O code's panics and reports
    /// them as the op's failure), or the job it was running is lost with the worker.
    pub fn work(&self, load_priority: bool, mut run: impl FnMut(J) -> D) {
        while let Some(job) = self.next(load_priority) {
            let done = run(job);
            self.complete([done]);
        }
    }
}

//! Concurrency models of the threaded executor's pool (`kvtier_io_threaded::pool`): its two
//! queues, the parking of idle workers, the completion list `poll` waits on, and shutdown.
//!
//! The models drive the real `Pool` with numbered jobs instead of file ops (the pool is generic
//! over its job and completion types and knows nothing of files). Every body runs under
//! `kvtier_io_threaded::sync::model`: normally that calls it once, as a plain test on real
//! threads; built with `RUSTFLAGS="--cfg loom"` it is `loom::model`, which runs it under every
//! interleaving loom explores (bound the search with `LOOM_MAX_PREEMPTIONS=2`):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 \
//!     cargo test -p kvtier-io-threaded --release --test loom_pool --target-dir target/loom
//! ```
//!
//! What they check: a queued job is always picked up by a sleeping worker and a completion
//! always wakes a waiting poller (loom reports a deadlock otherwise: a lost wake-up); no job
//! runs twice and none is reported twice; a job still queued at shutdown is reported
//! `Cancelled`, never forgotten; stopping wakes and ends every idle worker; a stopped or full
//! pool refuses new jobs without taking their lease.

use std::sync::atomic::AtomicUsize;

use kvtier_fs::Wait;
use kvtier_io_threaded::pool::{Pool, Refused};
use kvtier_io_threaded::sync::{model, thread, Arc};

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// A worker ran it (and which kind of worker: load priority or not).
    Ran { load_priority: bool },
    /// Still queued at shutdown.
    Cancelled,
}

type TestPool = Pool<u32, (u32, End)>;

/// A worker thread of the given priority running jobs until the pool stops; each job is
/// recorded as run by that worker.
fn worker(pool: &Arc<TestPool>, load_priority: bool) -> thread::JoinHandle<()> {
    let pool = Arc::clone(pool);
    thread::spawn(move || pool.work(load_priority, |job| (job, End::Ran { load_priority })))
}

/// Queues `job` (a load or a store), which must be accepted.
fn enqueue(pool: &TestPool, job: u32, is_load: bool) {
    match pool.enqueue(job, 8, is_load, Ok::<u32, ()>) {
        Ok(Ok(())) => {}
        other => panic!("job {job} refused: {other:?}"),
    }
}

fn stop(pool: &TestPool) -> usize {
    pool.stop(|job| (job, End::Cancelled))
}

/// Collects completions as the executor's `poll` does, waiting until `n` have arrived.
fn collect(pool: &TestPool, n: usize, wait: Wait) -> Vec<(u32, End)> {
    let mut out = Vec::new();
    while out.len() < n {
        pool.take_done_into(&mut out, wait);
    }
    out
}

/// Asserts each of `jobs` is reported exactly once, and nothing else is.
fn assert_each_once(done: &[(u32, End)], jobs: &[u32]) {
    let mut got: Vec<u32> = done.iter().map(|&(j, _)| j).collect();
    got.sort_unstable();
    assert_eq!(got, jobs, "completions {done:?}");
}

/// One sleeping worker, two jobs queued one after the other while it may be parking: both
/// run exactly once and the poller, blocked in `take_done(Wait::Forever)`, sees both.
#[test]
fn worker_wakes_for_each_job_and_poller_for_each_completion() {
    model(|| {
        let pool = Arc::new(TestPool::new());
        let w = worker(&pool, true);
        enqueue(&pool, 1, true);
        enqueue(&pool, 2, false);
        let done = collect(&pool, 2, Wait::Forever);
        assert_each_once(&done, &[1, 2]);
        assert!(done.iter().all(|&(_, end)| end == End::Ran { load_priority: true }));
        assert_eq!(stop(&pool), 0);
        w.join().unwrap();
        assert_eq!(pool.take_done(Wait::No), 0);
    });
}

/// Two workers of opposite priorities, a load and a store: each job runs once, on whichever
/// worker got it; a timed poll (which never times out under loom) collects both.
#[test]
fn two_workers_share_two_queues() {
    model(|| {
        let pool = Arc::new(TestPool::new());
        let workers = [worker(&pool, true), worker(&pool, false)];
        enqueue(&pool, 1, false);
        enqueue(&pool, 2, true);
        let done = collect(&pool, 2, Wait::Timeout(std::time::Duration::from_secs(3600)));
        assert_each_once(&done, &[1, 2]);
        stop(&pool);
        for w in workers {
            w.join().unwrap();
        }
    });
}

/// Shutdown races a worker over two queued jobs: each is reported exactly once, run or
/// cancelled, and what `stop` cancelled is exactly what no worker ran. The worker exits.
#[test]
fn stop_reports_queued_jobs_as_cancelled() {
    model(|| {
        let pool = Arc::new(TestPool::new());
        let w = worker(&pool, false);
        enqueue(&pool, 1, true);
        enqueue(&pool, 2, false);
        let cancelled = stop(&pool);
        w.join().unwrap();
        // The worker has exited: everything is published, nothing more will come.
        let mut done = Vec::new();
        pool.take_done_into(&mut done, Wait::No);
        assert_each_once(&done, &[1, 2]);
        assert_eq!(done.iter().filter(|&&(_, end)| end == End::Cancelled).count(), cancelled);
        // Stopped: refused, and `make` (the lease) never ran.
        let taken = AtomicUsize::new(0);
        let refused = pool.enqueue(3, 8, true, |job| {
            taken.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok::<u32, ()>(job)
        });
        assert!(matches!(refused, Err(Refused::Stopped(3))));
        assert_eq!(taken.into_inner(), 0);
        assert_eq!(stop(&pool), 0, "a second stop cancels nothing");
    });
}

/// Two workers of opposite priorities race shutdown over three queued jobs: every job is
/// reported exactly once (run by one worker, or cancelled), both workers exit, and nothing
/// arrives after they have.
#[test]
fn stop_races_two_workers_over_three_jobs() {
    model(|| {
        let pool = Arc::new(TestPool::new());
        let workers = [worker(&pool, true), worker(&pool, false)];
        enqueue(&pool, 1, true);
        enqueue(&pool, 2, false);
        enqueue(&pool, 3, true);
        let cancelled = stop(&pool);
        for w in workers {
            w.join().unwrap();
        }
        let mut done = Vec::new();
        pool.take_done_into(&mut done, Wait::No);
        assert_each_once(&done, &[1, 2, 3]);
        assert_eq!(done.iter().filter(|&&(_, end)| end == End::Cancelled).count(), cancelled);
    });
}

/// Stopping an idle pool wakes every parked worker, whatever point of parking each one is at,
/// and each returns.
#[test]
fn stop_ends_every_idle_worker() {
    model(|| {
        let pool = Arc::new(TestPool::new());
        let workers = [worker(&pool, true), worker(&pool, false)];
        assert_eq!(stop(&pool), 0);
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(pool.take_done(Wait::No), 0);
    });
}

/// A submission from another thread races `stop`: the job is either refused as stopped (and
/// handed back) or accepted and then reported exactly once, run or cancelled; the poller
/// waiting for it is never left hanging.
#[test]
fn submit_races_stop() {
    model(|| {
        let pool = Arc::new(TestPool::new());
        let w = worker(&pool, true);
        let submitter = {
            let pool = Arc::clone(&pool);
            thread::spawn(move || match pool.enqueue(7, 8, false, Ok::<u32, ()>) {
                Ok(Ok(())) => true,
                Err(Refused::Stopped(7)) => false,
                other => panic!("unexpected {other:?}"),
            })
        };
        stop(&pool);
        let accepted = submitter.join().unwrap();
        let done = if accepted { collect(&pool, 1, Wait::Forever) } else { Vec::new() };
        w.join().unwrap();
        let mut rest = Vec::new();
        pool.take_done_into(&mut rest, Wait::No);
        assert!(rest.is_empty(), "reported twice: {done:?} then {rest:?}");
        if accepted {
            assert_each_once(&done, &[7]);
        }
    });
}

/// A queue of capacity 1 with a worker draining it: a second job is either queued (the worker
/// took the first) or refused as full without its lease taken; everything accepted runs once.
#[test]
fn full_queue_refuses_without_taking_the_lease() {
    model(|| {
        let pool = Arc::new(TestPool::new());
        let w = worker(&pool, true);
        let leases = AtomicUsize::new(0);
        let lease = |job: u32| {
            leases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok::<u32, ()>(job)
        };
        let mut accepted = Vec::new();
        for job in [1, 2] {
            match pool.enqueue(job, 1, true, lease) {
                Ok(Ok(())) => accepted.push(job),
                Err(Refused::Full(j)) => assert_eq!((j, job), (2, 2), "only the second can find it full"),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(leases.into_inner(), accepted.len(), "a lease per accepted job, none for a refused one");
        let done = collect(&pool, accepted.len(), Wait::Forever);
        assert_each_once(&done, &accepted);
        stop(&pool);
        w.join().unwrap();
    });
}

/// A refused lease (`make` fails) queues nothing: the error comes back and no worker sees a job.
#[test]
fn refused_lease_queues_nothing() {
    model(|| {
        let pool = Arc::new(TestPool::new());
        let w = worker(&pool, false);
        let r = pool.enqueue(1, 8, true, |job| Err::<u32, _>(job + 100));
        assert!(matches!(r, Ok(Err(101))));
        assert_eq!(stop(&pool), 0);
        w.join().unwrap();
        assert_eq!(pool.take_done(Wait::No), 0);
    });
}

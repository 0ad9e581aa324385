//! Concurrency models of `kvtier_core::jobs`.
//!
//! Every test body runs under `kvtier_core::sync::model`: normally that calls it once, as a plain
//! test on real threads; built with `RUSTFLAGS="--cfg loom"` it is `loom::model`, which runs it
//! under every interleaving loom explores (bound the search with `LOOM_MAX_PREEMPTIONS=2`):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 \
//!     cargo test -p kvtier-core --release --test loom_jobs --target-dir target/loom
//! ```

use kvtier_core::jobs::{CompletionQueue, Full, JobError, JobProgress, JobTable, ProgressError};
use kvtier_core::sync::{model, Arc, AtomicU32, Ordering};

/// `std::thread` normally, loom's instrumented threads under `--cfg loom`.
mod thread {
    #[cfg(loom)]
    pub use loom::thread::{spawn, yield_now};
    #[cfg(not(loom))]
    pub use std::thread::{spawn, yield_now};
}

/// Two threads each finish one part of a two-part job: exactly one of them completes it, and
/// learns `ok_a && ok_b`. It also sees what the other worker wrote before reporting its part
/// (`Relaxed` writes, ordered only by `part_done`).
fn two_workers_finish_one_job(ok_a: bool, ok_b: bool) {
    model(move || {
        let job = Arc::new(JobProgress::new(2));
        let written = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
        let workers: Vec<_> = [ok_a, ok_b]
            .into_iter()
            .enumerate()
            .map(|(i, ok)| {
                let job = Arc::clone(&job);
                let written = Arc::clone(&written);
                thread::spawn(move || {
                    written[i].store(1, Ordering::Relaxed);
                    let outcome = job.part_done(ok).expect("part accepted");
                    if outcome.is_some() {
                        assert!(written.iter().all(|w| w.load(Ordering::Relaxed) == 1));
                    }
                    outcome
                })
            })
            .collect();
        let completions: Vec<bool> = workers.into_iter().filter_map(|w| w.join().unwrap()).collect();
        assert_eq!(completions, [ok_a && ok_b]);
        assert_eq!(job.outcome(), Some(ok_a && ok_b));
        assert_eq!(job.part_done(true), Err(ProgressError::AlreadyComplete));
    });
}

#[test]
fn progress_two_workers_one_part_fails() {
    two_workers_finish_one_job(true, false);
}

#[test]
fn progress_two_workers_all_parts_ok() {
    two_workers_finish_one_job(true, true);
}

/// Two threads report the single part of a one-part job: one completes it, the other is refused
/// and the counter does not wrap.
#[test]
fn progress_over_reporting_race() {
    model(|| {
        let job = Arc::new(JobProgress::new(1));
        let other = {
            let job = Arc::clone(&job);
            thread::spawn(move || job.part_done(false))
        };
        let mine = job.part_done(true);
        let other = other.join().unwrap();
        match (mine, other) {
            (Ok(Some(true)), Err(ProgressError::AlreadyComplete)) => {
                assert_eq!((job.remaining(), job.failed()), (0, 0));
            }
            (Err(ProgressError::AlreadyComplete), Ok(Some(false))) => {
                assert_eq!((job.remaining(), job.failed()), (0, 1));
            }
            outcome => panic!("unexpected outcome {outcome:?}"),
        }
    });
}

/// Checks that `popped` holds every value of `per_producer` exactly once, each producer's values
/// in the order that producer pushed them.
fn assert_each_once_in_producer_order(popped: &[u32], per_producer: &[&[u32]]) {
    for values in per_producer {
        let seen: Vec<u32> = popped.iter().copied().filter(|v| values.contains(v)).collect();
        assert_eq!(seen, *values, "popped {popped:?}");
    }
    let total: usize = per_producer.iter().map(|v| v.len()).sum();
    assert_eq!(popped.len(), total, "popped {popped:?}");
}

/// Two producers push onto a queue of capacity 2 whose positions are already one lap in, while
/// the main thread pops concurrently; whatever it did not get is drained after the join.
#[test]
fn queue_two_producers_concurrent_pop() {
    model(|| {
        let queue = Arc::new(CompletionQueue::new(2));
        // Move the positions off zero so the race happens across the ring's seam.
        queue.push(99).unwrap();
        assert_eq!(queue.pop(), Some(99));
        let producers: Vec<_> = [1, 2]
            .into_iter()
            .map(|v| {
                let queue = Arc::clone(&queue);
                thread::spawn(move || queue.push(v).expect("capacity 2 holds both values"))
            })
            .collect();
        let mut popped = Vec::new();
        popped.extend(queue.pop());
        popped.extend(queue.pop());
        for p in producers {
            p.join().unwrap();
        }
        while let Some(v) = queue.pop() {
            popped.push(v);
        }
        assert_each_once_in_producer_order(&popped, &[&[1], &[2]]);
    });
}

/// Pushes `values` in order onto `queue`, retrying a push that finds the queue full up to
/// `tries` times in all (yielding to the consumer in between). Returns the values not pushed,
/// still in order, when a push gives up.
///
/// The retries are bounded because loom's scheduler is not fair: with a producer spinning on
/// `Full` and the consumer spinning on an empty head cell (whose push was claimed by a third
/// thread that loom then never schedules again) it would explore the two spinners handing
/// control to each other forever.
fn push_all_retrying(queue: &CompletionQueue, values: &[u32], tries: usize) -> Vec<u32> {
    for (i, &value) in values.iter().enumerate() {
        let mut attempt = 1;
        loop {
            match queue.push(value) {
                Ok(()) => {
                    if attempt > 1 {
                        FULL_THEN_RETRIED.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    break;
                }
                Err(Full(back)) => {
                    assert_eq!(back, value);
                    if attempt == tries {
                        return values[i..].to_vec();
                    }
                    attempt += 1;
                    thread::yield_now();
                }
            }
        }
    }
    Vec::new()
}

/// Set (outside loom's view) when some execution saw a push fail with `Full` and its retry
/// succeed, so the model can check that it exercised that path.
static FULL_THEN_RETRIED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Four values from two producers through a queue of capacity 2 while the main thread pops
/// concurrently: pushes that find the queue full are retried (a bounded number of times; what
/// is left is pushed by the main thread after the join), and the consumer sees every value
/// exactly once, each producer's in order.
#[test]
fn queue_full_is_retried_until_consumed() {
    model(|| {
        let queue = Arc::new(CompletionQueue::new(2));
        let batches: [&'static [u32]; 2] = [&[1, 2], &[3, 4]];
        let producers: Vec<_> = batches
            .into_iter()
            .map(|values| {
                let queue = Arc::clone(&queue);
                thread::spawn(move || push_all_retrying(&queue, values, 3))
            })
            .collect();
        let mut popped = Vec::new();
        for _ in 0..4 {
            match queue.pop() {
                Some(v) => popped.push(v),
                None => thread::yield_now(),
            }
        }
        let leftovers: Vec<Vec<u32>> = producers.into_iter().map(|p| p.join().unwrap()).collect();
        while let Some(v) = queue.pop() {
            popped.push(v);
        }
        for v in leftovers.into_iter().flatten() {
            queue.push(v).expect("the queue was drained");
            popped.extend(queue.pop());
        }
        assert_eq!(queue.pop(), None);
        assert_each_once_in_producer_order(&popped, &batches);
    });
    // Under loom some explored interleaving must have taken the retry path.
    if cfg!(loom) {
        assert!(FULL_THEN_RETRIED.load(std::sync::atomic::Ordering::Relaxed));
    }
}

/// A pop racing a push on an empty queue gets the value or nothing, never garbage; the value is
/// then popped exactly once.
#[test]
fn queue_pop_races_push_on_empty_queue() {
    model(|| {
        let queue = Arc::new(CompletionQueue::new(2));
        let producer = {
            let queue = Arc::clone(&queue);
            thread::spawn(move || queue.push(7).unwrap())
        };
        let early = queue.pop();
        assert!(matches!(early, None | Some(7)), "popped {early:?}");
        producer.join().unwrap();
        let late = queue.pop();
        assert_eq!(queue.pop(), None);
        match (early, late) {
            (Some(7), None) | (None, Some(7)) => {}
            outcome => panic!("value popped as {outcome:?}"),
        }
    });
}

/// A full queue: a pop races a push that finds it full; the push either fails with `Full` (and
/// the value is pushed again after the join) or lands in the freed cell.
#[test]
fn queue_push_races_pop_on_full_queue() {
    model(|| {
        let queue = Arc::new(CompletionQueue::new(2));
        queue.push(1).unwrap();
        queue.push(2).unwrap();
        let producer = {
            let queue = Arc::clone(&queue);
            thread::spawn(move || queue.push(3))
        };
        assert_eq!(queue.pop(), Some(1));
        if let Err(Full(v)) = producer.join().unwrap() {
            queue.push(v).unwrap();
        }
        assert_eq!(queue.pop(), Some(2));
        assert_eq!(queue.pop(), Some(3));
        assert_eq!(queue.pop(), None);
    });
}

/// Records `(job_id, success)` reports, checking none is reported twice and that the report of
/// every job in `finished_by_all` sees what every worker wrote (`Relaxed`) before reporting its
/// parts: only the `part_done`, queue and poll orderings make those writes visible.
fn record<'a>(
    reported: &'a mut Vec<(u64, bool)>,
    written: &'a [AtomicU32],
    finished_by_all: &'a [u64],
) -> impl FnMut(u64, bool) + 'a {
    move |id, ok| {
        assert!(reported.iter().all(|&(seen, _)| seen != id), "job {id} reported twice");
        if finished_by_all.contains(&id) {
            assert!(
                written.iter().all(|w| w.load(Ordering::Relaxed) == 1),
                "job {id} reported before its workers' writes are visible"
            );
        }
        reported.push((id, ok));
    }
}

/// Two jobs of two parts each, their parts finished by two racing threads while the poller
/// polls; after the join every job is reported exactly once with the AND of its parts, and the
/// freed entries are reused for a job finished by a worker racing the poller again.
#[test]
fn table_two_jobs_racing_workers_and_poller() {
    model(|| {
        let mut table = JobTable::new(2);
        let a = table.start(10, 2).unwrap();
        let b = table.start(20, 2).unwrap();
        assert_eq!(table.start(30, 1).unwrap_err(), kvtier_core::jobs::TableFull);
        let written = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
        let parts = [[(a, true), (b, false)], [(b, true), (a, true)]];
        let workers: Vec<_> = parts
            .into_iter()
            .enumerate()
            .map(|(i, parts)| {
                let shared = table.shared();
                let written = Arc::clone(&written);
                thread::spawn(move || {
                    written[i].store(1, Ordering::Relaxed);
                    for (handle, ok) in parts {
                        shared.part_done(handle, ok).unwrap();
                    }
                })
            })
            .collect();
        let mut reported = Vec::new();
        table.poll(record(&mut reported, &written[..], &[10, 20]));
        for w in workers {
            w.join().unwrap();
        }
        table.poll(record(&mut reported, &written[..], &[10, 20]));
        reported.sort_unstable();
        assert_eq!(reported, [(10, true), (20, false)]);
        assert_eq!(table.in_flight(), 0);

        // Entry reuse: the freed entries serve a new job; its parts race the poller again.
        let c = table.start(30, 2).unwrap();
        assert!(c == a || c == b);
        let written = Arc::new([AtomicU32::new(0)]);
        let worker = {
            let shared = table.shared();
            let written = Arc::clone(&written);
            thread::spawn(move || {
                written[0].store(1, Ordering::Relaxed);
                shared.part_done(c, false).unwrap();
            })
        };
        table.part_done(c, true).unwrap();
        let mut reported = Vec::new();
        table.poll(record(&mut reported, &written[..], &[30]));
        worker.join().unwrap();
        table.poll(record(&mut reported, &written[..], &[30]));
        assert_eq!(reported, [(30, false)]);
        assert_eq!(table.part_done(c, true), Err(JobError::UnknownHandle));
    });
}

/// A zero-part job (complete at `start`) and a one-part job finished by a worker while the
/// poller polls: both reported exactly once, and a part reported after its job was polled is
/// refused.
#[test]
fn table_zero_part_job_and_worker_race_poller() {
    model(|| {
        let mut table = JobTable::new(2);
        let empty = table.start(1, 0).unwrap();
        let single = table.start(2, 1).unwrap();
        let written = Arc::new([AtomicU32::new(0)]);
        let worker = {
            let shared = table.shared();
            let written = Arc::clone(&written);
            thread::spawn(move || {
                written[0].store(1, Ordering::Relaxed);
                shared.part_done(single, true).unwrap();
                // The poller may or may not have reported (and freed) the zero-part job yet.
                let late = shared.part_done(empty, true);
                assert!(matches!(late, Err(JobError::AlreadyComplete | JobError::UnknownHandle)));
            })
        };
        let mut reported = Vec::new();
        table.poll(record(&mut reported, &written[..], &[2]));
        worker.join().unwrap();
        table.poll(record(&mut reported, &written[..], &[2]));
        reported.sort_unstable();
        assert_eq!(reported, [(1, true), (2, true)]);
        assert_eq!(table.in_flight(), 0);
    });
}

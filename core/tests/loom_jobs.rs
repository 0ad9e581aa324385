//! Concurrency models of `kvtier_core::jobs`, the job accounting the FS tier runs on: the
//! poller (the tier's thread) opens jobs, adds parts while earlier parts already finish on
//! other threads (executor workers, io_uring reapers), closes them and takes finished jobs with
//! their parts' outcome codes; parts are finished, or dropped, on any thread.
//!
//! Every test body runs under `kvtier_core::sync::model`: normally that calls it once, as a plain
//! test on real threads; built with `RUSTFLAGS="--cfg loom"` it is `loom::model`, which runs it
//! under every interleaving loom explores (bound the search with `LOOM_MAX_PREEMPTIONS=2`):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 \
//!     cargo test -p kvtier-core --release --test loom_jobs --target-dir target/loom
//! ```
//!
//! What they check: a job is taken exactly once, after its close and its last part, whichever
//! comes last and on whatever thread; the codes it is taken with are the ones its parts
//! finished with, in the order the parts were added, and everything a part's thread wrote
//! before finishing (`Relaxed`, like a row a load filled) is visible to the poller then;
//! dropped parts report `Part::DROPPED`; reused entries and cells never show a previous job's
//! code; the completion queue hands each finished job over once, in order.

use kvtier_core::jobs::{CompletionQueue, JobHandle, JobTable, Part};
use kvtier_core::sync::{model, Arc, AtomicU32, Ordering};

/// `std::thread` normally, loom's instrumented threads under `--cfg loom`.
mod thread {
    #[cfg(loom)]
    pub use loom::thread::{spawn, yield_now, JoinHandle};
    #[cfg(not(loom))]
    pub use std::thread::{spawn, yield_now, JoinHandle};
}

/// A worker: writes its "row" (`Relaxed`), then finishes its part with `code`.
fn worker(part: Part, row: Arc<[AtomicU32; 2]>, i: usize, code: u32) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        row[i].store(code, Ordering::Relaxed);
        part.finish(code);
    })
}

/// A job, the row its workers write, and what each writes where (`(index, value)`).
type Filled<'a> = (JobHandle, &'a Arc<[AtomicU32; 2]>, &'a [(usize, u32)]);

/// Takes every job finished so far, checking none is taken twice and that, when a job in
/// `filled_by` is taken, the rows its workers wrote are visible.
fn take(table: &mut JobTable, taken: &mut Vec<(JobHandle, Vec<u32>)>, filled_by: &[Filled<'_>]) {
    let mut codes = Vec::new();
    while let Some(job) = table.take_finished(&mut codes) {
        assert!(taken.iter().all(|(j, _)| *j != job), "job {job:?} taken twice");
        for (j, row, writes) in filled_by {
            if *j == job {
                for &(i, v) in *writes {
                    assert_eq!(row[i].load(Ordering::Relaxed), v, "job taken before its worker's writes are visible");
                }
            }
        }
        taken.push((job, codes.clone()));
    }
}

/// Two workers finish the two parts of one job while the poller closes it and takes finished
/// jobs: the job is taken once, with both codes in part order and both rows visible.
#[test]
fn two_workers_finish_one_job_while_the_poller_closes_and_takes() {
    model(|| {
        let mut table = JobTable::new(2, 4);
        let job = table.open().unwrap();
        let row = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
        let a = worker(table.add_part(job).unwrap(), Arc::clone(&row), 0, 10);
        let b = worker(table.add_part(job).unwrap(), Arc::clone(&row), 1, 20);
        table.close(job).unwrap();
        let mut taken = Vec::new();
        let writes: &[(usize, u32)] = &[(0, 10), (1, 20)];
        take(&mut table, &mut taken, &[(job, &row, writes)]);
        a.join().unwrap();
        b.join().unwrap();
        take(&mut table, &mut taken, &[(job, &row, writes)]);
        assert_eq!(taken, [(job, vec![10, 20])]);
        assert_eq!((table.jobs_in_flight(), table.free_parts()), (0, 4));
    });
}

/// The FS tier's submission: a part goes to a worker, then the poller adds a second part and
/// finishes it itself (an op the executor refused), then closes; the worker races all of it.
#[test]
fn parts_are_added_while_earlier_parts_finish() {
    model(|| {
        let mut table = JobTable::new(1, 2);
        let job = table.open().unwrap();
        let row = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
        let w = worker(table.add_part(job).unwrap(), Arc::clone(&row), 0, 7);
        table.add_part(job).unwrap().finish(8);
        table.close(job).unwrap();
        let mut taken = Vec::new();
        let writes: &[(usize, u32)] = &[(0, 7)];
        take(&mut table, &mut taken, &[(job, &row, writes)]);
        w.join().unwrap();
        take(&mut table, &mut taken, &[(job, &row, writes)]);
        assert_eq!(taken, [(job, vec![7, 8])]);
    });
}

/// A part dropped unfinished (a worker that unwound) reports `Part::DROPPED`; its job is taken
/// once all the same.
#[test]
fn a_dropped_part_finishes_its_job() {
    model(|| {
        let mut table = JobTable::new(1, 2);
        let job = table.open().unwrap();
        let part = table.add_part(job).unwrap();
        let w = thread::spawn(move || drop(part));
        table.close(job).unwrap();
        let mut taken = Vec::new();
        take(&mut table, &mut taken, &[]);
        w.join().unwrap();
        take(&mut table, &mut taken, &[]);
        assert_eq!(taken, [(job, vec![Part::DROPPED])]);
    });
}

/// Entries and cells are reused: a second job, started in the first one's entry and cell while
/// nothing else is in flight, and a job with no part, racing a worker of the second job. No
/// stale code is ever read.
#[test]
fn reused_entries_and_cells_show_no_stale_code() {
    model(|| {
        let mut table = JobTable::new(2, 1);
        let first = table.open().unwrap();
        table.add_part(first).unwrap().finish(1);
        table.close(first).unwrap();
        let mut taken = Vec::new();
        take(&mut table, &mut taken, &[]);
        assert_eq!(taken, [(first, vec![1])]);

        let second = table.open().unwrap();
        assert_eq!(second, first, "the freed entry is reused");
        let row = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
        let w = worker(table.add_part(second).unwrap(), Arc::clone(&row), 0, 2);
        let empty = table.open().unwrap();
        table.close(empty).unwrap();
        table.close(second).unwrap();
        let mut taken = Vec::new();
        let writes: &[(usize, u32)] = &[(0, 2)];
        take(&mut table, &mut taken, &[(second, &row, writes)]);
        w.join().unwrap();
        take(&mut table, &mut taken, &[(second, &row, writes)]);
        taken.sort_unstable();
        assert_eq!(taken, [(second, vec![2]), (empty, vec![])]);
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
                Err(back) => {
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

/// Set (outside loom's view) when some execution saw a push fail as full and its retry
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

/// A full queue: a pop races a push that finds it full; the push either fails as full (and
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
        if let Err(v) = producer.join().unwrap() {
            queue.push(v).unwrap();
        }
        assert_eq!(queue.pop(), Some(2));
        assert_eq!(queue.pop(), Some(3));
        assert_eq!(queue.pop(), None);
    });
}

//! # kvtier-io-threaded
//!
//! An [`Executor`] that runs each block's file I/O as blocking syscalls (`open`, `pwritev`,
//! `preadv`, `fdatasync`, `rename`, `unlink`) on worker threads, with `O_DIRECT` where the tier's
//! directory supports it (see [`kvtier_fs::direct`]).
//!
//! ## How it works
//!
//! - **Two queues, two kinds of workers** (vLLM's `DualQueueThreadPool` idea): loads and stores
//!   wait in separate queues; read-priority workers (`kvtier-io-r{i}`) take loads first, then
//!   stores; write-priority workers (`kvtier-io-w{i}`) the reverse. Idle workers sleep on one
//!   condition variable: no spinning.
//! - **Leases at submission**: [`Executor::submit`] leases the op's slot on the caller's thread
//!   (a write lease for a load, a read lease for a store), under the queue lock
//!   ([`kvtier_fs::submit`]'s prologue). A refused lease (the slot is busy or out of range)
//!   finishes the op at once as [`Outcome::Failed`].
//! - **Reports from the worker**: the worker that ran an op drops its lease, then finishes the
//!   op's job part ([`kvtier_core::Part`]) with the outcome, so the job's owner sees the op
//!   done (and its slot free) as soon as the syscalls return; `poll` only counts finished ops,
//!   waiting as its [`Wait`] allows.
//! - **Extent ops** run as one positioned `pwritev`/`preadv` on a file
//!   [`Executor::open_file`] opened (twice with `O_DIRECT`: with and without it).
//! - **Batches** ([`Executor::submit_batch`]) run on a write-priority queue as one positioned
//!   `pwritev` of every block (headers from the worker's pages, payloads straight from the
//!   rows), with every row leased at submission.
//! - **Shutdown** (also run by `Drop`) completes every queued op as [`Outcome::Cancelled`], lets
//!   running ops finish, and joins the workers. Nothing is forgotten: every accepted op reaches
//!   `poll` exactly once.
//! - **Store**: a unique temp file (`{final}.{pid}.{seq:x}.tmp`, `O_CREAT|O_EXCL`, mode 0644;
//!   parent directories created only when `open` says `ENOENT`), the whole block written (a
//!   short write is a failure), optional `fdatasync`, close, `rename` onto the final path, and
//!   with `sync` an `fsync` of the directory holding it and of the parents of the directories
//!   the store created (a rename is only as durable as its directory; a block whose directory
//!   cannot be synced is unlinked and the store fails). Any
//!   failure removes the temp file; resource exhaustion (`EMFILE`, `ENFILE`, `ENOMEM`, `EAGAIN`)
//!   is [`Outcome::Transient`], anything else (`ENOSPC`, `EDQUOT`, `EIO`...) [`Outcome::Failed`].
//!   A native block's zero padding is written from the row when the row's tail is zero, else
//!   its last page goes through a zeroed bounce buffer (stale memory never reaches the disk).
//! - **Load**: `open`; `ENOENT` is [`Outcome::NotFound`]; a file of the wrong size, a short
//!   read or (native format) a header that fails verification is [`Outcome::Corrupt`] and the
//!   file is removed first; `EMFILE`, `ENFILE`, `ENOMEM`, `EINTR`, `EAGAIN`, `EIO`, `EACCES`,
//!   `EPERM` on open and I/O errors on read are [`Outcome::Transient`] and keep the file.
//! - **O_DIRECT** is used for transfers that are 4096-aligned in address, length and offset:
//!   every native-format block, and vLLM-format blocks whose `row_bytes` is a multiple of 4096.
//!   Others are written and read buffered.
//!
//! `unsafe` is denied in this crate but for its private `sys` module (syscall wrappers).
//!
//! The queues, parking and shutdown ([`pool`]) are written over a small synchronisation shim
//! ([`sync`]) so that loom model-checks them as they are (`tests/loom_pool.rs`):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 \
//!     cargo test -p kvtier-io-threaded --release --test loom_pool --target-dir target/loom
//! ```
//!
//! ## Default worker counts
//!
//! 16 read-priority + 16 write-priority workers ([`ThreadedConfig::default`]), the same as
//! vLLM's FS tier (so the Python peer and kvtier run at the same concurrency). Idle workers
//! cost a parked thread each, nothing more. Loads scale with the number of threads up to about
//! 32 in flight, the disk's useful queue depth; stores do not (file creation bounds them). The
//! measurements behind these counts (`examples/tune.rs`) are in `cli/bench/README.md`,
//! "Executor defaults".
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod block_io;
pub mod pool;
pub mod sync;
#[allow(unsafe_code)]
mod sys;

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use kvtier_core::{Direction, Part};
use kvtier_fs::files::{ExtentFile, ExtentFiles};
use kvtier_fs::region::{Lease, PrimaryRegion};
use kvtier_fs::submit::{admit_batch, finish_parts, lease_row, Refusal};
use kvtier_fs::{Batch, BatchFull, Executor, FileId, FileOp, Full, OpError, Outcome, Target, Wait};

use block_io::BlockIo;
use pool::{Pool, Refused};

/// An accepted op, the lease taken for it at submission, and where to report it.
struct OpJob {
    /// Read lease (store) or write lease (load) on the op's slot; dropped before `part`.
    lease: Lease,
    part: Part,
    op: FileOp,
    /// An extent op's file (`None` for an unknown file id, or a path op).
    file: Option<Arc<ExtentFile>>,
}

/// An accepted batch, its rows' leases and its parts.
struct BatchJob {
    /// Read leases on the rows of its blocks; dropped before `parts`.
    leases: Vec<Lease>,
    parts: Vec<Part>,
    batch: Batch,
    file: Arc<ExtentFile>,
}

/// What a worker runs.
enum Job {
    Op(OpJob),
    Batch(BatchJob),
}

/// The pool's completions are bare counts: the outcome went to the op's part.
type Shared = Pool<Job, ()>;

/// A worker's life: runs jobs until the pool stops. The lease is dropped inside `io.run`, then
/// the part is finished, then the completion counted. A panic in the I/O code must not lose the
/// op: it is reported as lost (the lease was dropped by the unwinding).
fn work(shared: &Shared, load_priority: bool, mut io: BlockIo, row_bytes: usize) {
    shared.work(load_priority, |job| match job {
        Job::Op(OpJob { lease, part, op, file }) => {
            let outcome = catch_unwind(AssertUnwindSafe(|| io.run(&op, lease, file.as_deref())))
                .unwrap_or(Outcome::Failed(OpError::Lost));
            part.finish(outcome.code());
        }
        Job::Batch(BatchJob { leases, parts, batch, file }) => {
            let outcome = catch_unwind(AssertUnwindSafe(|| io.run_batch(&batch, leases, &file, row_bytes)))
                .unwrap_or(Outcome::Failed(OpError::Lost));
            finish_parts(parts, outcome);
        }
    });
}

/// A job still queued at shutdown: its leases dropped, then `Cancelled`.
fn cancel(job: Job) {
    match job {
        Job::Op(OpJob { lease, part, .. }) => {
            drop(lease);
            part.finish(Outcome::Cancelled.code());
        }
        Job::Batch(BatchJob { leases, parts, .. }) => {
            drop(leases);
            finish_parts(parts, Outcome::Cancelled);
        }
    }
}

/// How a [`ThreadedExecutor`] is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadedConfig {
    /// Workers that take loads before stores.
    pub read_workers: usize,
    /// Workers that take stores before loads.
    pub write_workers: usize,
    /// Most ops waiting in the queues (not yet taken by a worker); `submit` answers [`Full`]
    /// beyond it.
    pub queue_capacity: usize,
    /// Use `O_DIRECT` for aligned transfers. Set it from [`kvtier_fs::direct::resolve`] on the
    /// tier's directory: a file system that refuses `O_DIRECT` fails every aligned op.
    pub o_direct: bool,
}

impl ThreadedConfig {
    /// The default number of read-priority workers (see the crate docs for how it was chosen).
    pub const DEFAULT_READ_WORKERS: usize = 16;
    /// The default number of write-priority workers (see the crate docs).
    pub const DEFAULT_WRITE_WORKERS: usize = 16;
    /// The default queue capacity.
    pub const DEFAULT_QUEUE_CAPACITY: usize = 4096;
}

impl Default for ThreadedConfig {
    /// The measured default worker counts, a queue of 4096 ops, and buffered I/O (`o_direct`
    /// must come from a probe of the actual directory).
    fn default() -> Self {
        ThreadedConfig {
            read_workers: Self::DEFAULT_READ_WORKERS,
            write_workers: Self::DEFAULT_WRITE_WORKERS,
            queue_capacity: Self::DEFAULT_QUEUE_CAPACITY,
            o_direct: false,
        }
    }
}

/// The threaded executor. See the crate docs.
pub struct ThreadedExecutor {
    region: Arc<PrimaryRegion>,
    config: ThreadedConfig,
    files: ExtentFiles,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    in_flight: usize,
    stopped: bool,
}

impl std::fmt::Debug for ThreadedExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadedExecutor")
            .field("config", &self.config)
            .field("in_flight", &self.in_flight)
            .field("stopped", &self.stopped)
            .finish()
    }
}

impl ThreadedExecutor {
    /// Starts `config.read_workers + config.write_workers` workers doing I/O on `region`'s rows.
    /// Fails if there would be no worker, the queue capacity is 0, or a thread cannot start.
    pub fn new(region: Arc<PrimaryRegion>, config: ThreadedConfig) -> io::Result<Self> {
        if config.read_workers + config.write_workers == 0 || config.queue_capacity == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the threaded executor needs at least one worker and a queue capacity of at least 1",
            ));
        }
        let mut exec = ThreadedExecutor {
            region,
            files: ExtentFiles::new(),
            shared: Arc::new(Pool::new()),
            workers: Vec::with_capacity(config.read_workers + config.write_workers),
            in_flight: 0,
            stopped: false,
            config,
        };
        let kinds =
            (0..exec.config.read_workers).map(|i| (true, i)).chain((0..exec.config.write_workers).map(|i| (false, i)));
        for (load_priority, i) in kinds {
            // On failure, `exec`'s `Drop` stops and joins the workers started so far.
            let io = BlockIo::new(exec.config.o_direct)?;
            let shared = Arc::clone(&exec.shared);
            let row_bytes = exec.region.row_bytes();
            let name = format!("kvtier-io-{}{i}", if load_priority { 'r' } else { 'w' });
            let handle =
                std::thread::Builder::new().name(name).spawn(move || work(&shared, load_priority, io, row_bytes))?;
            exec.workers.push(handle);
        }
        Ok(exec)
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &ThreadedConfig {
        &self.config
    }

    /// Finishes an op that never reached a worker, and counts it for the next `poll`.
    fn finish_now(&mut self, part: Part, outcome: Outcome) {
        part.finish(outcome.code());
        self.shared.complete([()]);
        self.in_flight += 1;
    }

    /// Finishes a batch that never reached a worker, and counts it for the next `poll`.
    fn finish_batch_now(&mut self, parts: Vec<Part>, outcome: Outcome) {
        finish_parts(parts, outcome);
        self.shared.complete([()]);
        self.in_flight += 1;
    }
}

impl Executor for ThreadedExecutor {
    fn submit(&mut self, op: FileOp, part: Part) -> Result<(), Full> {
        let is_load = op.dir == Direction::Load;
        let (region, files) = (&self.region, &self.files);
        let file = match &op.target {
            Target::Extent(e) => files.get(e.file).cloned(),
            Target::Path(_) => None,
        };
        // The prologue: stopped and full are checked under the queue lock, then the lease.
        let queued =
            self.shared.enqueue((op, part), self.config.queue_capacity, is_load, |(op, part)| {
                match lease_row(region, &op) {
                    Ok(lease) => Ok(Job::Op(OpJob { lease, part, op, file })),
                    Err(outcome) => Err((part, outcome)),
                }
            });
        match queued {
            Ok(Ok(())) => self.in_flight += 1,
            Ok(Err((part, outcome))) => self.finish_now(part, outcome),
            Err(Refused::Stopped((_, part))) => self.finish_now(part, Outcome::Cancelled),
            Err(Refused::Full((op, part))) => return Err(Full { op, part }),
        }
        Ok(())
    }

    fn submit_batch(&mut self, batch: Batch, parts: Vec<Part>) -> Result<(), BatchFull> {
        let (region, file) = (&self.region, self.files.get(batch.file).cloned());
        let known = file.is_some();
        // The prologue, under the queue lock (stopped, full), then the leases.
        let queued =
            self.shared.enqueue((batch, parts), self.config.queue_capacity, false, |(batch, parts)| match admit_batch(
                region,
                &batch,
                parts.len(),
                known,
                false,
                true,
            ) {
                Ok(leases) => match file {
                    Some(file) => Ok(Job::Batch(BatchJob { leases, parts, batch, file })),
                    None => Err((parts, Outcome::Failed(OpError::Invalid))),
                },
                Err(Refusal::Finished(outcome)) => Err((parts, outcome)),
                Err(Refusal::Full) => Err((parts, Outcome::Failed(OpError::Busy))),
            });
        match queued {
            Ok(Ok(())) => self.in_flight += 1,
            Ok(Err((parts, outcome))) => self.finish_batch_now(parts, outcome),
            Err(Refused::Stopped((_, parts))) => self.finish_batch_now(parts, Outcome::Cancelled),
            Err(Refused::Full((batch, parts))) => return Err(BatchFull { batch, parts }),
        }
        Ok(())
    }

    fn poll(&mut self, wait: Wait) -> io::Result<usize> {
        // Nothing in flight: nothing can arrive, so never wait.
        let wait = if self.in_flight == 0 { Wait::No } else { wait };
        let n = self.shared.take_done(wait);
        debug_assert!(n <= self.in_flight, "more completions than ops in flight");
        self.in_flight = self.in_flight.saturating_sub(n);
        Ok(n)
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn open_file(&mut self, path: &Path) -> io::Result<FileId> {
        self.files.open(path, self.config.o_direct)
    }

    fn shutdown(&mut self) {
        self.stopped = true;
        self.shared.stop(cancel);
        for worker in self.workers.drain(..) {
            // A worker never panics out of its loop (ops run under `catch_unwind`); if one did,
            // there is nothing left to recover from it.
            let _ = worker.join();
        }
    }

    fn name(&self) -> &'static str {
        "threaded"
    }
}

impl Drop for ThreadedExecutor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread_names() -> Vec<String> {
        let tasks = std::fs::read_dir("/proc/self/task").unwrap();
        tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
            .map(|s| s.trim().to_string())
            .collect()
    }

    #[test]
    fn workers_are_named_and_joined() {
        let region = Arc::new(PrimaryRegion::anonymous(1, 4096).unwrap());
        let config = ThreadedConfig { read_workers: 2, write_workers: 3, ..ThreadedConfig::default() };
        let mut exec = ThreadedExecutor::new(region, config).unwrap();
        // A thread names itself once it runs: give the workers a moment.
        let wanted = ["kvtier-io-r0", "kvtier-io-r1", "kvtier-io-w0", "kvtier-io-w2"];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let names = thread_names();
            let missing: Vec<_> = wanted.iter().filter(|w| !names.iter().any(|n| n == *w)).collect();
            if missing.is_empty() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{missing:?} not in {names:?}");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(exec.name(), "threaded");
        exec.shutdown();
        exec.shutdown();
        assert!(exec.workers.is_empty());
    }

    #[test]
    fn configs_without_workers_or_queue_are_refused() {
        let region = Arc::new(PrimaryRegion::anonymous(1, 4096).unwrap());
        let no_workers = ThreadedConfig { read_workers: 0, write_workers: 0, ..ThreadedConfig::default() };
        assert!(ThreadedExecutor::new(Arc::clone(&region), no_workers).is_err());
        let no_queue = ThreadedConfig { queue_capacity: 0, ..ThreadedConfig::default() };
        assert!(ThreadedExecutor::new(region, no_queue).is_err());
        let d = ThreadedConfig::default();
        assert_eq!((d.read_workers, d.write_workers, d.o_direct), (16, 16, false));
    }

    #[test]
    fn a_full_queue_returns_the_op_and_takes_no_lease() {
        let region = Arc::new(PrimaryRegion::anonymous(4, 4096).unwrap());
        let config = ThreadedConfig { read_workers: 1, write_workers: 0, queue_capacity: 1, o_direct: false };
        let mut exec = ThreadedExecutor::new(Arc::clone(&region), config).unwrap();
        // One worker and room for one queued op: submitting faster than the worker finishes
        // fills the queue.
        let dir = tempfile::tempdir().unwrap();
        let mut tracker = kvtier_fs::conformance::Tracker::new();
        let mut full = None;
        for i in 0..10_000u64 {
            let op = kvtier_fs::conformance::op(
                i,
                Direction::Load,
                (i % 4) as u32,
                &dir.path().join("missing"),
                kvtier_fs::BlockFormat::Vllm,
            );
            if let Err(op) = tracker.submit(&mut exec, op) {
                full = Some(op);
                break;
            }
        }
        let op = full.expect("a queue of 1 fills up");
        assert_eq!(op.op.dir, Direction::Load);
        while exec.in_flight() > 0 {
            exec.poll(Wait::Forever).unwrap();
        }
        for slot in 0..4 {
            assert!(region.lease(kvtier_core::SlotId(slot), kvtier_fs::region::Access::Write).is_ok());
        }
    }
}

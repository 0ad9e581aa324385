//! # kvtier-io-uring
//!
//! An [`Executor`] on io_uring: one ring, the primary region registered as fixed buffers, one
//! linked chain of SQEs per block, direct descriptors, and waiting in the kernel when there is
//! nothing to do. It passes the same conformance suite as the threaded executor
//! (`kvtier_fs::conformance`) and reports the same outcomes for the same failures.
//!
//! ## How it works
//!
//! - **One ring** per executor, with `max_ops` *records*: an op runs in a record, which owns
//!   everything the kernel may touch for it (see the private `record` module): the row's lease,
//!   three scratch pages in a registered arena (the native header, a zero-padded last page or
//!   an end-of-file probe, `statx` buffers), its paths, and direct-descriptor slot `i`. Ops
//!   beyond `max_ops` wait in a queue of `queue_capacity` (leases already taken); beyond
//!   that, [`Executor::submit`] answers [`Full`].
//! - **Fixed buffers**: the region is registered once, at start-up, and so is the scratch
//!   arena: loads use `READ_FIXED`, vLLM-format stores `WRITE_FIXED`, with no per-op page
//!   pinning (a native store's `writev` pins its pages per I/O). Registration pins the whole
//!   region in memory (and counts against `RLIMIT_MEMLOCK` without `CAP_IPC_LOCK`).
//! - **A store is one chain** `openat(temp)` -> one write (`write_fixed` of a vLLM-format row;
//!   `writev` of header, row and padded last page for a native block: one I/O that extends the
//!   new file once, where `write_fixed` would need one per buffer) -> `close` -> `renameat`,
//!   soft-linked with `IOSQE_CQE_SKIP_SUCCESS` so that the whole store posts one CQE (with
//!   `fsync`, two chains: the kernel does not break a link on a failed `fsync`; then one more
//!   per directory to sync: the one holding the block, and the parent of each directory the
//!   store created, since a rename is only as durable as its directory); a store that
//!   evicts a block first renames the victim's file to its temp name and overwrites it in
//!   place (no inode allocation); **a load** is `openat` -> `read_fixed` of the header -> `read_fixed` of the
//!   payload -> an end-of-file probe -> `close`, verified in userspace when its last CQE is
//!   reaped. Direct descriptors: no file descriptor is installed in the process's table, so
//!   `EMFILE` never stops this executor. The chains and their failure paths (temp-file
//!   cleanup, directory creation, removal of a corrupt file only while it is still the file
//!   that was read) are in the private `chain` module; the steps they are made of, and how a
//!   chain becomes SQEs built from a record's own buffers, in the private `sqe` module.
//! - **Extent ops** on a file [`Executor::open_file`] opened: the file is registered in a
//!   fixed-file slot (twice with `O_DIRECT`: with and without it), a store is one
//!   `write_fixed`/`writev` at the extent's offset (then `fsync` with `sync`), a load one or two
//!   `read_fixed`, each posting one CQE: no open or close per block.
//! - **Batches** ([`Executor::submit_batch`]) run in `max_batches` bulk records of their own
//!   (the private `bulk` module): a batch of blocks is one `writev` chain on the registered
//!   file (every block's header from the bulk record's pages, its payload straight from its
//!   row), then `fsync` with `sync`, posting one CQE; a copy reads the record into the pages,
//!   verifies it and writes it with its new sequence number. Batches beyond `max_batches`
//!   wait in the queue (their leases taken).
//! - **Reports**: when an op's last CQE is reaped (by whichever call reaps it: `poll`, or a
//!   `submit` making room), its record is released, the row's lease dropped, and the op's job
//!   part ([`kvtier_core::Part`]) finished with its outcome; `poll` counts finished ops.
//! - **Leases and records are held until every CQE is reaped.** [`Executor::shutdown`] (and
//!   `Drop`) cancels what waits in the queue, lets every op in the ring finish, and returns
//!   only when the kernel has nothing of ours left: a dropped executor never frees memory the
//!   kernel may still write (foyer's io_uring engine did: its issue #1286).
//! - **No spinning**: [`Executor::poll`] with [`Wait::Timeout`] or [`Wait::Forever`] waits in
//!   `io_uring_enter` (with `IORING_ENTER_EXT_ARG` for the timeout). No thread of ours runs
//!   when nothing is submitted (the kernel's io-wq workers do the blocking steps: `openat`
//!   with `O_CREAT`, extending writes, `fsync`, `renameat`; they exit when idle). Measured:
//!   0.000 CPU-s over 2 s idle, 0.001 CPU-s over 2 s of `Wait::Timeout(100 ms)` polls with an
//!   op blocked in the kernel (`tests/idle.rs` checks it).
//! - **Threads**: completions run on the thread that submitted (io_uring task work); the
//!   executor may move between threads, but an op submitted from a thread that exits before it
//!   completes is cancelled by the kernel (it completes as a failure, its memory still safe).
//!   Like the threaded executor's, a `Drop` waits for ops that never complete (a FIFO at a
//!   block's path) forever.
//! - **Start-up probe**: [`UringExecutor::new`] fails with an [`std::io::ErrorKind::Unsupported`]
//!   error starting with `io_uring is unavailable:` and naming the reason (disabled by
//!   `KVTIER_URING_DISABLE` or [`UringConfig::force_unavailable`], by the
//!   `kernel.io_uring_disabled` sysctl, `io_uring_setup` refused by seccomp, a kernel without an
//!   operation or feature it needs — Linux 5.19 or later is needed), so a caller can fall back
//!   to the threaded executor. [`probe`] makes the same checks without a region.
//! - **O_DIRECT** as in the threaded executor: for transfers aligned to 4096 in address,
//!   length and offset (every native block; vLLM-format rows that are a multiple of 4096).
//!
//! `unsafe` is denied in this crate but for the private `ring` module (registering buffers,
//! pushing SQEs), each block with a `SAFETY:` comment naming the invariant it relies on; the
//! invariants themselves are kept by the safe `record` and `sqe` modules.
//!
//! ## Default depth
//!
//! `max_ops` = 64 ([`UringConfig::DEFAULT_MAX_OPS`]), with as many io-wq workers: deeper rings
//! help loads a little and stores not at all, so 64 is the middle. Loads cost less CPU than the
//! threaded executor's, stores the same (their CPU goes to creating, writing and renaming the
//! file inside the file system). The measurements behind this (`examples/tune_uring.rs`, the
//! threaded executor alongside) are in `cli/bench/README.md`, "Executor defaults".
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod bulk;
mod chain;
mod probe;
mod record;
#[allow(unsafe_code)]
mod ring;
mod sqe;

use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use kvtier_core::Part;
use kvtier_fs::files::{ExtentFile, ExtentFiles};
use kvtier_fs::region::{Lease, PrimaryRegion};
use kvtier_fs::submit::{admit, admit_batch, finish_parts, Refusal};
use kvtier_fs::{Batch, BatchFull, Executor, FileId, FileOp, Full, OpError, Outcome, Target, Wait};

use bulk::BulkId;
use chain::{FileSlots, Flow, Next};
use record::RecId;
use ring::{PushError, Ring, RingSetup};

pub use probe::DISABLE_ENV;

/// How a [`UringExecutor`] is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UringConfig {
    /// Ops in the ring at once (each has a direct-descriptor slot and three scratch pages);
    /// clamped to `RLIMIT_NOFILE` (the kernel's limit on registered descriptors).
    pub max_ops: usize,
    /// Batches in the ring at once (each with pages of its own for its blocks' headers).
    pub max_batches: usize,
    /// Submission queue entries (at least 8: the longest chain). A chain is submitted as soon
    /// as it is queued, so this only bounds how many chains one burst queues before a submit.
    pub sq_entries: u32,
    /// Completion queue entries; 0 (the default) sizes it for every record's longest chain,
    /// so it never overflows.
    pub cq_entries: u32,
    /// Most ops waiting for a record (their leases taken); `submit` answers [`Full`] beyond it.
    pub queue_capacity: usize,
    /// Use `O_DIRECT` for aligned transfers. Set it from [`kvtier_fs::direct::resolve`] on the
    /// tier's directory: a file system that refuses `O_DIRECT` fails every aligned op.
    pub o_direct: bool,
    /// Most io-wq workers (the kernel threads that run the blocking steps: `openat` with
    /// `O_CREAT`, extending `O_DIRECT` writes, `fsync`, `renameat`) this ring's ops use at once;
    /// 0 (the default) means `max_ops`, so every store in the ring can make progress (the
    /// kernel's own default is 4 per CPU). Idle workers exit after a few seconds.
    pub iowq_workers: u32,
    /// Fail [`UringExecutor::new`] as if io_uring were unavailable (tests of fallbacks).
    pub force_unavailable: bool,
}

impl UringConfig {
    /// The default `max_ops`, chosen by measurement (see the crate docs).
    pub const DEFAULT_MAX_OPS: usize = 64;
    /// The default `max_batches`.
    pub const DEFAULT_MAX_BATCHES: usize = 16;
    /// The default `sq_entries`.
    pub const DEFAULT_SQ_ENTRIES: u32 = 256;
    /// The default `queue_capacity` (the threaded executor's).
    pub const DEFAULT_QUEUE_CAPACITY: usize = 4096;
}

impl Default for UringConfig {
    /// The measured default depth, a queue of 4096 ops, buffered I/O (`o_direct` must come
    /// from a probe of the actual directory), as many io-wq workers as ops in the ring.
    fn default() -> Self {
        UringConfig {
            max_ops: Self::DEFAULT_MAX_OPS,
            max_batches: Self::DEFAULT_MAX_BATCHES,
            sq_entries: Self::DEFAULT_SQ_ENTRIES,
            cq_entries: 0,
            queue_capacity: Self::DEFAULT_QUEUE_CAPACITY,
            o_direct: false,
            iowq_workers: 0,
            force_unavailable: false,
        }
    }
}

/// Whether a [`UringExecutor`] can run here (`force`: answer as if it could not), without
/// building one: the `Unsupported` error names the reason. See the crate docs.
pub fn probe(force: bool) -> io::Result<()> {
    probe::probe(force)
}

/// The io_uring executor. See the crate docs.
pub struct UringExecutor {
    ring: Ring,
    /// Each record's flow, by record index.
    flows: Vec<Option<Flow>>,
    /// Accepted ops waiting for a record, with their leases and parts.
    queue: VecDeque<(FileOp, Lease, Part)>,
    /// Records whose next chain found no room in the submission queue.
    deferred: VecDeque<RecId>,
    ready: Vec<RecId>,
    /// Accepted batches waiting for a bulk record, with their rows' leases and their parts.
    bulk_queue: VecDeque<(Batch, Vec<Lease>, Vec<Part>)>,
    /// Bulk records whose next chain found no room in the submission queue.
    bulk_deferred: VecDeque<BulkId>,
    ready_bulk: Vec<BulkId>,
    /// Ops finished (their parts reported) since the last `poll`.
    finished: usize,
    /// The files opened for extent ops, and their fixed-file slots.
    files: ExtentFiles,
    file_slots: Vec<FileSlots>,
    region: Arc<PrimaryRegion>,
    config: UringConfig,
    in_flight: usize,
    stopped: bool,
}

impl std::fmt::Debug for UringExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringExecutor")
            .field("config", &self.config)
            .field("ring", &self.ring)
            .field("queued", &self.queue.len())
            .field("in_flight", &self.in_flight)
            .field("stopped", &self.stopped)
            .finish()
    }
}

impl UringExecutor {
    /// Sets up a ring for `region`'s rows: probes io_uring, registers the region as fixed
    /// buffers and `max_ops` direct-descriptor slots. Fails with an `Unsupported` error naming
    /// the reason where io_uring cannot run this executor (see the crate docs), or with the
    /// registration's error (e.g. `ENOMEM` for a region beyond `RLIMIT_MEMLOCK`).
    pub fn new(region: Arc<PrimaryRegion>, config: UringConfig) -> io::Result<Self> {
        if config.queue_capacity == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the uring executor needs a queue capacity of at least 1",
            ));
        }
        let setup = RingSetup {
            sq_entries: config.sq_entries,
            cq_entries: config.cq_entries,
            records: config.max_ops,
            bulk: config.max_batches,
            iowq_workers: config.iowq_workers,
            force_unavailable: config.force_unavailable,
        };
        let ring = Ring::new(Arc::clone(&region), &setup)?;
        let flows = (0..ring.capacity()).map(|_| None).collect();
        Ok(UringExecutor {
            ring,
            flows,
            queue: VecDeque::new(),
            deferred: VecDeque::new(),
            ready: Vec::new(),
            bulk_queue: VecDeque::new(),
            bulk_deferred: VecDeque::new(),
            ready_bulk: Vec::new(),
            finished: 0,
            files: ExtentFiles::new(),
            file_slots: Vec::new(),
            region,
            config,
            in_flight: 0,
            stopped: false,
        })
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &UringConfig {
        &self.config
    }

    /// Ops the ring runs at once (`max_ops`, unless `RLIMIT_NOFILE` clamped it).
    pub fn max_ops(&self) -> usize {
        self.ring.capacity()
    }

    /// Reports an op that never reached the ring, and counts it for the next `poll`.
    fn finish_now(&mut self, part: Part, outcome: Outcome) {
        part.finish(outcome.code());
        self.finished += 1;
        self.in_flight += 1;
    }

    /// Starts `op` in a free record (the caller checked that one is free).
    fn start(&mut self, op: FileOp, lease: Lease, part: Part) {
        let file = match &op.target {
            Target::Extent(e) => self.file_slots.get(e.file.0 as usize).copied(),
            Target::Path(_) => None,
        };
        let id = self.ring.start(op, lease, part);
        let rec = self.ring.idle(id).map(|mut rec| Flow::start(&mut rec, self.config.o_direct, file));
        match rec {
            Some(Ok(flow)) => {
                self.flows[id.index()] = Some(flow);
                self.push(id);
            }
            Some(Err(outcome)) => self.finish(id, outcome),
            None => unreachable!("a record just started is idle"),
        }
    }

    /// Pushes record `id`'s next chain (from its flow).
    fn push(&mut self, id: RecId) {
        let Some(flow) = self.flows[id.index()].as_mut() else { return };
        let (chain, one_cqe) = flow.chain();
        match self.ring.push(id, chain, one_cqe) {
            Ok(()) => {}
            Err(PushError::NoRoom) => self.deferred.push_back(id),
            Err(PushError::Invalid(e)) => {
                debug_assert!(false, "a flow built an invalid chain: {e}");
                let outcome = flow.abort();
                self.finish(id, outcome);
            }
        }
    }

    /// Record `id` is done: its lease is released, then its op reported.
    fn finish(&mut self, id: RecId, outcome: Outcome) {
        self.flows[id.index()] = None;
        let (_op, lease, part) = self.ring.finish(id).expect("a finished op's record is idle");
        drop(lease);
        part.finish(outcome.code());
        self.finished += 1;
    }

    /// Record `id`'s chain completed: its outcome, or its next chain.
    fn advance(&mut self, id: RecId) {
        let (Some(flow), Some(mut rec)) = (self.flows[id.index()].as_mut(), self.ring.idle(id)) else {
            debug_assert!(false, "a completed record without a flow");
            return;
        };
        match flow.advance(&mut rec) {
            Next::Chain => self.push(id),
            Next::Done(outcome) => self.finish(id, outcome),
        }
    }

    /// Starts `batch` in a free bulk record (the caller checked that one is free).
    fn start_bulk(&mut self, batch: Batch, leases: Vec<Lease>, parts: Vec<Part>) {
        let file = self.file_slots.get(batch.file.0 as usize).copied();
        let id = self.ring.start_bulk(batch, leases, parts);
        match file {
            Some(file) => self.push_bulk(id, file),
            None => self.finish_bulk(id, Outcome::Failed(OpError::Invalid)),
        }
    }

    /// Works out bulk record `id`'s next chain and pushes it.
    fn push_bulk(&mut self, id: BulkId, file: FileSlots) {
        let (row_bytes, stride) = (self.region.row_bytes(), self.region.stride());
        let o_direct = self.config.o_direct;
        let started = match self.ring.bulk_idle(id) {
            Some(rec) => rec.start_chain(o_direct, row_bytes, stride),
            None => Err(Outcome::Failed(OpError::Invalid)),
        };
        if let Err(outcome) = started {
            return self.finish_bulk(id, outcome);
        }
        match self.ring.push_bulk(id, file) {
            Ok(()) => {}
            Err(PushError::NoRoom) => self.bulk_deferred.push_back(id),
            Err(PushError::Invalid(e)) => {
                debug_assert!(false, "a bulk record built an invalid chain: {e}");
                self.finish_bulk(id, Outcome::Failed(OpError::Invalid));
            }
        }
    }

    /// Bulk record `id`'s chain completed: its batch's outcome, or its next chain.
    fn advance_bulk(&mut self, id: BulkId) {
        let (row_bytes, stride) = (self.region.row_bytes(), self.region.stride());
        let Some(rec) = self.ring.bulk_idle(id) else {
            debug_assert!(false, "a completed bulk record that is not idle");
            return;
        };
        let file = rec.active.as_ref().and_then(|a| self.file_slots.get(a.batch.file.0 as usize).copied());
        match (rec.advance(row_bytes, stride), file) {
            (Some(outcome), _) => self.finish_bulk(id, outcome),
            (None, Some(file)) => self.push_bulk(id, file),
            (None, None) => self.finish_bulk(id, Outcome::Failed(OpError::Invalid)),
        }
    }

    /// Bulk record `id` is done: its leases are released, then its parts reported.
    fn finish_bulk(&mut self, id: BulkId, outcome: Outcome) {
        let (leases, parts) = self.ring.finish_bulk(id).expect("a finished batch's bulk record is idle");
        drop(leases);
        finish_parts(parts, outcome);
        self.finished += 1;
    }

    /// Takes every available completion, moves each op on, starts queued ops in free records
    /// and submits; repeats while completions keep arriving. Never waits.
    fn progress(&mut self) -> io::Result<()> {
        loop {
            let mut ready = std::mem::take(&mut self.ready);
            let mut ready_bulk = std::mem::take(&mut self.ready_bulk);
            let reaped = self.ring.reap(&mut ready, &mut ready_bulk);
            for id in ready.drain(..) {
                self.advance(id);
            }
            for id in ready_bulk.drain(..) {
                self.advance_bulk(id);
            }
            self.ready = ready;
            self.ready_bulk = ready_bulk;
            for _ in 0..self.deferred.len() {
                let Some(id) = self.deferred.pop_front() else { break };
                self.push(id);
            }
            for _ in 0..self.bulk_deferred.len() {
                let Some(id) = self.bulk_deferred.pop_front() else { break };
                let file = self
                    .ring
                    .bulk_idle(id)
                    .and_then(|rec| rec.active.as_ref())
                    .and_then(|a| self.file_slots.get(a.batch.file.0 as usize).copied());
                match file {
                    Some(file) => self.push_bulk(id, file),
                    None => self.finish_bulk(id, Outcome::Failed(OpError::Invalid)),
                }
            }
            while self.ring.has_free() {
                let Some((op, lease, part)) = self.queue.pop_front() else { break };
                self.start(op, lease, part);
            }
            while self.ring.bulk_has_free() {
                let Some((batch, leases, parts)) = self.bulk_queue.pop_front() else { break };
                self.start_bulk(batch, leases, parts);
            }
            self.ring.flush()?;
            if reaped == 0 {
                return Ok(());
            }
        }
    }

    /// Ops finished since the last call.
    fn take_finished(&mut self) -> usize {
        std::mem::take(&mut self.finished)
    }
}

impl Executor for UringExecutor {
    fn submit(&mut self, op: FileOp, part: Part) -> Result<(), Full> {
        if !self.stopped {
            // Whatever completed meanwhile frees its record (no syscall unless there is work).
            let _ = self.progress();
        }
        let has_room = self.ring.has_free() || self.queue.len() < self.config.queue_capacity;
        let lease = match admit(&self.region, &op, self.stopped, has_room) {
            Ok(lease) => lease,
            Err(Refusal::Full) => return Err(Full { op, part }),
            Err(Refusal::Finished(outcome)) => {
                self.finish_now(part, outcome);
                return Ok(());
            }
        };
        self.in_flight += 1;
        if self.queue.is_empty() && self.ring.has_free() {
            self.start(op, lease, part);
            // An error here leaves the SQEs queued; the next poll submits them or reports it.
            let _ = self.ring.flush();
        } else {
            self.queue.push_back((op, lease, part));
        }
        Ok(())
    }

    fn submit_batch(&mut self, batch: Batch, parts: Vec<Part>) -> Result<(), BatchFull> {
        if !self.stopped {
            let _ = self.progress();
        }
        let has_room = self.ring.bulk_has_free() || self.bulk_queue.len() < self.config.queue_capacity;
        let known = (batch.file.0 as usize) < self.file_slots.len();
        let leases = match admit_batch(&self.region, &batch, parts.len(), known, self.stopped, has_room) {
            Ok(leases) => leases,
            Err(Refusal::Full) => return Err(BatchFull { batch, parts }),
            Err(Refusal::Finished(outcome)) => {
                finish_parts(parts, outcome);
                self.finished += 1;
                self.in_flight += 1;
                return Ok(());
            }
        };
        self.in_flight += 1;
        if self.bulk_queue.is_empty() && self.ring.bulk_has_free() {
            self.start_bulk(batch, leases, parts);
            let _ = self.ring.flush();
        } else {
            self.bulk_queue.push_back((batch, leases, parts));
        }
        Ok(())
    }

    fn poll(&mut self, wait: Wait) -> io::Result<usize> {
        let mut result = self.progress();
        let mut n = self.take_finished();
        let deadline = match wait {
            Wait::Timeout(d) => Some(Instant::now().checked_add(d)),
            _ => None,
        };
        while n == 0 && result.is_ok() && self.in_flight > 0 && self.ring.pending() > 0 {
            let timeout = match (wait, deadline) {
                (Wait::No, _) => break,
                (Wait::Forever, _) | (_, Some(None)) => None,
                (_, Some(Some(at))) => match at.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => break,
                },
                (Wait::Timeout(_), None) => unreachable!("a timeout has a deadline"),
            };
            result = self.ring.wait(timeout).and_then(|()| self.progress());
            n += self.take_finished();
        }
        debug_assert!(n <= self.in_flight, "more completions than ops in flight");
        self.in_flight = self.in_flight.saturating_sub(n);
        match result {
            Err(e) if n == 0 => Err(e),
            _ => Ok(n),
        }
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn open_file(&mut self, path: &Path) -> io::Result<FileId> {
        self.files.next_id()?;
        let file = ExtentFile::open(path, self.config.o_direct)?;
        let (buffered, direct) = file.fds();
        let buffered = self.ring.register_file(buffered)?;
        let direct = direct.map(|fd| self.ring.register_file(fd)).transpose()?;
        self.file_slots.push(FileSlots { buffered, direct });
        Ok(self.files.push(file))
    }

    fn shutdown(&mut self) {
        self.stopped = true;
        while let Some((_op, lease, part)) = self.queue.pop_front() {
            drop(lease);
            part.finish(Outcome::Cancelled.code());
            self.finished += 1;
        }
        while let Some((_batch, leases, parts)) = self.bulk_queue.pop_front() {
            drop(leases);
            finish_parts(parts, Outcome::Cancelled);
            self.finished += 1;
        }
        // Every op in the ring runs to its end (cleanup chains included).
        while self.ring.active() > 0 {
            let step = self.progress().and_then(|()| {
                if self.ring.active() > 0
                    && self.ring.pending() == 0
                    && self.deferred.is_empty()
                    && self.bulk_deferred.is_empty()
                {
                    return Err(io::Error::other("records active with nothing in the kernel"));
                }
                self.ring.wait(None)
            });
            if let Err(e) = step {
                // The kernel does not answer: the ops are reported lost, and what they own is
                // leaked (never freed while the kernel may still write it).
                eprintln!("kvtier-io-uring: io_uring failed during shutdown: {e}; its ops are reported lost");
                let (ops, batches) = self.ring.abandon();
                for (_op, part) in ops {
                    part.finish(Outcome::Failed(OpError::Lost).code());
                    self.finished += 1;
                }
                for parts in batches {
                    finish_parts(parts, Outcome::Failed(OpError::Lost));
                    self.finished += 1;
                }
                for flow in &mut self.flows {
                    *flow = None;
                }
                self.deferred.clear();
                self.bulk_deferred.clear();
                break;
            }
        }
    }

    fn name(&self) -> &'static str {
        "uring"
    }
}

impl Drop for UringExecutor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_unavailability_names_the_reason() {
        let region = Arc::new(PrimaryRegion::anonymous(1, 4096).unwrap());
        let config = UringConfig { force_unavailable: true, ..UringConfig::default() };
        let e = UringExecutor::new(region, config).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported);
        assert!(e.to_string().starts_with("io_uring is unavailable: forced off"), "{e}");
        assert!(probe(true).is_err());
    }

    #[test]
    fn a_zero_queue_is_refused() {
        let region = Arc::new(PrimaryRegion::anonymous(1, 4096).unwrap());
        let config = UringConfig { queue_capacity: 0, ..UringConfig::default() };
        assert_eq!(UringExecutor::new(region, config).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }
}

//! The kernel-facing half of the executor: the ring, its registered buffers and files, and the
//! pushing and reaping of the SQEs records own. The one module of this crate with `unsafe`
//! (registering the buffers, pushing SQEs, reading `RLIMIT_NOFILE`).
//!
//! What makes the `unsafe` sound lives in two safe modules this one relies on: `crate::record`
//! (a record owns everything the kernel may touch for its op, and cannot be reached or released
//! while it has CQEs to come) and `crate::sqe` (an SQE is built only from a record's own
//! buffers, and a read into a row only under a write lease). Here: a record's pending count is
//! raised before its SQEs can complete, lowered only as their CQEs are reaped, and the ring's
//! `Drop` waits for every outstanding CQE (if the kernel stops answering, it leaks the records
//! rather than free what may still be written).
//!
//! Registered buffers: the primary region is registered as fixed buffers once, at start-up, in
//! chunks of whole rows of at most 1 GiB (the kernel's limit per buffer), and the scratch arena
//! as one more buffer. Registration pins the pages (so the whole region is faulted in at
//! start-up). Fixed files: one sparse slot per record (record `i`'s chain opens its file into
//! slot `i`, so no descriptor is ever installed in the process's table), then slots for the
//! files extent ops work on ([`Ring::register_file`]).
//!
//! Bulk records (`crate::bulk`: batches) share the ring: their CQEs carry indices after the
//! records' (`records + b`), and the same invariant holds for them (a bulk record owns its
//! batch's memory until every CQE of its chain is reaped).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;
use std::time::Duration;

use io_uring::{types, IoUring};
use kvtier_core::{Part, SlotId};
use kvtier_fs::files::MAX_FILES;
use kvtier_fs::region::{Access, Lease, PrimaryRegion};
use kvtier_fs::FileOp;

use crate::bulk::{BulkId, BulkRecord, BulkRecords};
use crate::chain::FileSlots;
use crate::probe;
use crate::record::{Idle, Reaped, RecId, Records, SCRATCH_PAGES};
use crate::sqe::{self, decode, Link, Registration, Sqe, MAX_STEPS, PAGE};

/// Largest registered buffer the kernel takes.
const MAX_BUFFER_LEN: usize = 1 << 30;
/// Most registered buffers the kernel takes.
const MAX_BUFFERS: usize = 1 << 14;

/// Why a chain was not pushed.
#[derive(Debug)]
pub enum PushError {
    /// The submission queue has no room for the chain now (the kernel has not consumed it):
    /// push again after reaping.
    NoRoom,
    /// The chain is invalid (a logic error): nothing was pushed.
    Invalid(io::Error),
}

/// How the ring is set up.
#[derive(Debug, Clone)]
pub struct RingSetup {
    /// Submission queue entries (at least [`MAX_STEPS`]).
    pub sq_entries: u32,
    /// Completion queue entries; 0: enough for every record's longest chain.
    pub cq_entries: u32,
    /// Records (ops in the ring at once); clamped to `RLIMIT_NOFILE`.
    pub records: usize,
    /// Bulk records (batches in the ring at once).
    pub bulk: usize,
    /// Most bounded io-wq workers; 0: one per record.
    pub iowq_workers: u32,
    /// Fail as if io_uring were unavailable.
    pub force_unavailable: bool,
}

/// The ring and its records. See the module docs.
pub struct Ring {
    // Declared first: dropped (the ring closed) before the records and the region go.
    uring: IoUring,
    records: Records,
    bulk: BulkRecords,
    /// SQEs pushed whose CQE has not been reaped, over all records.
    pending: usize,
    region: Arc<PrimaryRegion>,
    reg: Registration,
    /// Fixed-file slots taken by registered files.
    files_used: u32,
    /// The kernel stopped answering: the records are leaked, never freed.
    broken: bool,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("records", &self.records.capacity())
            .field("active", &self.records.active())
            .field("pending", &self.pending)
            .field("chunk_rows", &self.reg.chunk_rows)
            .finish()
    }
}

/// The soft `RLIMIT_NOFILE`: the kernel refuses more registered file slots than that.
fn nofile_limit() -> usize {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `rl` is a valid, writable `rlimit` for the duration of the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
    if rc == 0 {
        usize::try_from(rl.rlim_cur).unwrap_or(usize::MAX)
    } else {
        usize::MAX
    }
}

/// The soft `RLIMIT_MEMLOCK`, in bytes (`None`: unlimited or unknown).
fn memlock_limit() -> Option<u64> {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `rl` is a valid, writable `rlimit` for the duration of the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) };
    (rc == 0 && rl.rlim_cur != libc::RLIM_INFINITY).then_some(rl.rlim_cur)
}

/// `bytes` for a person: MiB or GiB with one decimal.
fn size(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

/// The error of a failed registration of the region (`region` bytes) and the scratch arena
/// (`arena` bytes): what registration does (it pins all of it, at once), and, for `ENOMEM`,
/// the limit and how to raise it.
fn registration_failed(e: io::Error, region: usize, arena: usize) -> io::Error {
    let pinned = (region + arena) as u64;
    let mut msg = format!(
        "registering the primary region as io_uring fixed buffers pins all of it in memory at once ({}, and {} \
         of scratch pages): {e}",
        size(region as u64),
        size(arena as u64)
    );
    if e.raw_os_error() == Some(libc::ENOMEM) {
        let limit = memlock_limit().map_or("unlimited".to_string(), size);
        msg.push_str(&format!(
            "; without CAP_IPC_LOCK it counts against RLIMIT_MEMLOCK (memlock), {limit} here: raise it to at \
             least {} (`ulimit -l`, systemd `LimitMEMLOCK=`, docker `--ulimit memlock=`) or use the threaded executor",
            size(pinned)
        ));
    }
    io::Error::new(e.kind(), msg)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.to_string())
}

impl Ring {
    /// Sets up a ring over `region`: probes io_uring (see [`probe`]), registers the region and a
    /// scratch arena as fixed buffers, one sparse fixed-file slot per record and slots for the
    /// files of extent ops (as many as `RLIMIT_NOFILE` leaves, up to two per
    /// [`MAX_FILES`]).
    pub fn new(region: Arc<PrimaryRegion>, setup: &RingSetup) -> io::Result<Ring> {
        probe::environment(setup.force_unavailable)?;
        let nofile = nofile_limit();
        let records = setup.records.min(nofile).min(0xff_ffff);
        if records == 0 {
            return Err(invalid("the uring executor needs at least one record (max_ops >= 1, RLIMIT_NOFILE >= 1)"));
        }
        let file_slots = (2 * MAX_FILES).min(nofile - records) as u32;
        let sq = setup.sq_entries.max(MAX_STEPS as u32);
        let bulk = setup.bulk.min(0xff_ffff - records);
        let needed = u32::try_from((records + bulk) * MAX_STEPS).unwrap_or(u32::MAX);
        let cq = if setup.cq_entries == 0 { needed.max(2 * sq) } else { setup.cq_entries.max(sq) };
        let uring = IoUring::builder()
            .setup_cqsize(cq.checked_next_power_of_two().unwrap_or(cq))
            .setup_clamp()
            .setup_submit_all()
            .build(sq)
            .map_err(probe::setup_failed)?;
        probe::check_ring(&uring)?;
        // Blocking steps (a store's `openat(O_CREAT)` and the rest of its chain) run on the
        // kernel's bounded io-wq workers, 4 per CPU by default: fewer than the stores in flight.
        let workers = if setup.iowq_workers == 0 { records as u32 } else { setup.iowq_workers };
        uring.submitter().register_iowq_max_workers(&mut [workers, 0]).map_err(|e| {
            probe::unavailable(format_args!("IORING_REGISTER_IOWQ_MAX_WORKERS: {e} (Linux >= 5.15 needed)"))
        })?;
        uring.submitter().register_files_sparse(records as u32 + file_slots).map_err(|e| {
            probe::unavailable(format_args!(
                "registering {records} direct descriptor slots: {e} (Linux >= 5.19 needed)"
            ))
        })?;

        // The region, in chunks of whole rows, then the arena.
        let stride = region.stride();
        let chunk_rows = MAX_BUFFER_LEN.checked_div(stride).map_or(usize::MAX, |n| n.max(1));
        if stride > MAX_BUFFER_LEN {
            return Err(invalid("rows larger than 1 GiB cannot be registered with io_uring"));
        }
        let arena = Arc::new(PrimaryRegion::anonymous(records, SCRATCH_PAGES * PAGE)?);
        let mut iovecs = Vec::new();
        if let Some((base, len)) = region.mapping() {
            let chunk = chunk_rows * stride;
            let mut at = 0;
            while at < len {
                let n = chunk.min(len - at);
                iovecs.push(libc::iovec { iov_base: base.as_ptr().wrapping_add(at).cast(), iov_len: n });
                at += n;
            }
        }
        let arena_buf = iovecs.len();
        let (arena_base, arena_len) = arena.mapping().expect("the arena has at least one record");
        iovecs.push(libc::iovec { iov_base: arena_base.as_ptr().cast(), iov_len: arena_len });
        if iovecs.len() > MAX_BUFFERS {
            return Err(invalid("the region needs more than 16384 registered buffers"));
        }
        // SAFETY: every iovec lies inside a live mapping (the region's, the arena's). Both
        // stay mapped for as long as the ring lives: `self.region` and the scratch leases
        // (which hold the arena's `Arc`) are fields of the ring, dropped after `uring`; and
        // registration pins the pages, so what the kernel writes through a fixed buffer lands
        // in pages it holds itself, whatever happens to the mapping.
        unsafe { uring.submitter().register_buffers(&iovecs) }
            .map_err(|e| registration_failed(e, region.mapping().map_or(0, |(_, len)| len), arena_len))?;

        let scratch = (0..records)
            .map(|i| arena.lease(SlotId(i as u32), Access::Write).map_err(io::Error::other))
            .collect::<io::Result<Vec<_>>>()?;
        let reg = Registration {
            chunk_rows,
            arena_buf: arena_buf as u16,
            stride,
            records: records as u32,
            files: records as u32 + file_slots,
        };
        Ok(Ring {
            uring,
            records: Records::new(scratch),
            bulk: BulkRecords::new(bulk),
            pending: 0,
            region,
            reg,
            files_used: 0,
            broken: false,
        })
    }

    /// Records (ops the ring runs at once).
    pub fn capacity(&self) -> usize {
        self.records.capacity()
    }

    /// Records and bulk records running an op or a batch.
    pub fn active(&self) -> usize {
        self.records.active() + self.bulk.active()
    }

    /// Whether a record is free.
    pub fn has_free(&self) -> bool {
        self.records.has_free()
    }

    /// SQEs whose CQE has not been reaped.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Registers `fd` (which the caller keeps open; the kernel takes its own reference) in the
    /// next free fixed-file slot for extent ops, and returns the slot.
    pub fn register_file(&mut self, fd: BorrowedFd<'_>) -> io::Result<u32> {
        let slot = self.reg.records + self.files_used;
        if slot >= self.reg.files {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "no fixed-file slot left for another file"));
        }
        self.uring.submitter().register_files_update(slot, &[fd.as_raw_fd()])?;
        self.files_used += 1;
        Ok(slot)
    }

    /// Takes a free record for `op`, its row's `lease` and its job `part`.
    ///
    /// # Panics
    ///
    /// If no record is free (see [`Ring::has_free`]).
    pub fn start(&mut self, op: FileOp, lease: Lease, part: Part) -> RecId {
        self.records.start(op, lease, part)
    }

    /// The record, if it has nothing in the kernel.
    pub fn idle(&mut self, id: RecId) -> Option<Idle<'_>> {
        let row_bytes = self.region.row_bytes();
        self.records.idle(id, row_bytes)
    }

    /// Releases an idle record: gives back its op, lease and part. `None` while it has SQEs in
    /// the kernel (or for a stale id).
    pub fn finish(&mut self, id: RecId) -> Option<(FileOp, Lease, Part)> {
        self.records.finish(id)
    }

    /// Pushes `chain` for idle record `id` (see [`sqe::build`]). It is submitted to the kernel
    /// by the next [`flush`](Self::flush) (or wait). With `one_cqe`, when the chain's one CQE
    /// arrives the record's results read [`crate::sqe::SKIPPED`] for the steps before it and `-ECANCELED`
    /// for those after it.
    pub fn push(&mut self, id: RecId, chain: &[(Sqe, Link)], one_cqe: bool) -> Result<(), PushError> {
        let reg = self.reg;
        let Some(rec) = self.records.idle_record(id) else {
            return Err(PushError::Invalid(invalid("the record is not idle")));
        };
        let tag = rec.track.tag.wrapping_add(1);
        let built = sqe::build(&reg, rec, id.index, tag, chain, one_cqe).map_err(PushError::Invalid)?;
        let n = built.n;
        let room = |uring: &mut IoUring| {
            let sq = uring.submission();
            sq.capacity() - sq.len()
        };
        if room(&mut self.uring) < n {
            // A chain must reach the kernel in one submission: make room first.
            let _ = self.flush();
            if room(&mut self.uring) < n {
                return Err(PushError::NoRoom);
            }
        }
        // SAFETY: every pointer in the entries, and in the iovec tables they point to, was
        // derived by `sqe::build` from record `id`'s own memory: its row lease (a write lease
        // wherever the kernel writes, checked there), its scratch pages (statx buffers and
        // iovec tables included) and its NUL-terminated paths; files are fixed-file slots. The
        // record counts these SQEs in `pending` just below and cannot be released
        // (`Records::finish`), nor its buffers reached or changed (`Records::idle`), until all
        // their CQEs are reaped; heap buffers do not move when the records are borrowed, and
        // `Drop` waits for (or leaks on) every outstanding CQE.
        let pushed = unsafe { self.uring.submission().push_multiple(&built.entries[..n]) };
        if pushed.is_err() {
            return Err(PushError::NoRoom);
        }
        let rec = &mut self.records.slots[id.index()];
        let cqes = rec.track.arm(tag, n, one_cqe, built.want);
        self.pending += cqes;
        Ok(())
    }

    /// Moves every available CQE into its record; records (and bulk records) whose chain is
    /// complete (no CQE left to come) are appended to `ready` (`ready_bulk`). Returns the
    /// number of CQEs reaped.
    pub fn reap(&mut self, ready: &mut Vec<RecId>, ready_bulk: &mut Vec<BulkId>) -> usize {
        let mut n = 0;
        let records = self.records.capacity();
        for cqe in self.uring.completion() {
            n += 1;
            let (tag, index, step) = decode(cqe.user_data());
            let (track, gen) = if index < records {
                let slot = &mut self.records.slots[index];
                (&mut slot.track, slot.gen)
            } else if let Some(slot) = self.bulk.slots.get_mut(index - records) {
                (&mut slot.track, slot.gen)
            } else {
                debug_assert!(false, "a CQE for unknown record {index}");
                continue;
            };
            match track.reap(tag, step, cqe.result()) {
                // Not a CQE the record waits for: never counted, so never taken for the end of
                // a chain the kernel still runs.
                Reaped::Stray => debug_assert!(false, "a stray CQE (record {index}, step {step})"),
                Reaped::Counted { more, done } => {
                    self.pending = self.pending - 1 + more;
                    match (done, index < records) {
                        (false, _) => {}
                        (true, true) => ready.push(RecId { index: index as u32, gen }),
                        (true, false) => ready_bulk.push(BulkId { index: (index - records) as u32, gen }),
                    }
                }
            }
        }
        n
    }

    /// Whether a bulk record is free.
    pub fn bulk_has_free(&self) -> bool {
        self.bulk.has_free()
    }

    /// Takes a free bulk record for `batch` (see [`BulkRecords::start`]).
    pub fn start_bulk(&mut self, batch: kvtier_fs::Batch, leases: Vec<Lease>, parts: Vec<Part>) -> BulkId {
        self.bulk.start(batch, leases, parts)
    }

    /// The bulk record, if it has nothing in the kernel.
    pub fn bulk_idle(&mut self, id: BulkId) -> Option<&mut BulkRecord> {
        self.bulk.idle(id)
    }

    /// Releases an idle bulk record: its leases and parts. `None` while it has SQEs in the
    /// kernel (or for a stale id).
    pub fn finish_bulk(&mut self, id: BulkId) -> Option<(Vec<Lease>, Vec<Part>)> {
        self.bulk.finish(id)
    }

    /// Pushes the chain idle bulk record `id` worked out ([`BulkRecord::start_chain`]) on the
    /// registered `file`; submitted by the next [`flush`](Self::flush). It posts one CQE.
    pub fn push_bulk(&mut self, id: BulkId, file: FileSlots) -> Result<(), PushError> {
        let index = self.records.capacity() as u32 + id.index;
        let Some(rec) = self.bulk.idle(id) else {
            return Err(PushError::Invalid(invalid("the bulk record is not idle")));
        };
        let valid = |slot: u32| (self.reg.records..self.reg.files).contains(&slot);
        if !valid(file.buffered) || file.direct.is_some_and(|d| !valid(d)) {
            return Err(PushError::Invalid(invalid("no such registered file")));
        }
        let tag = rec.track.tag.wrapping_add(1);
        let built = rec.build(file, index, tag).map_err(PushError::Invalid)?;
        let n = built.entries.len();
        if n == 0 || n > MAX_STEPS {
            return Err(PushError::Invalid(invalid("a bulk chain has 1 to 8 steps")));
        }
        let room = |uring: &mut IoUring| {
            let sq = uring.submission();
            sq.capacity() - sq.len()
        };
        if room(&mut self.uring) < n {
            let _ = self.flush();
            if room(&mut self.uring) < n {
                return Err(PushError::NoRoom);
            }
        }
        // SAFETY: every pointer in the entries, and in the iovec tables they point to, was
        // derived by `BulkRecord::build` from bulk record `id`'s own memory: the read leases on
        // the rows it writes (the kernel only reads them), its pages (a write lease on a
        // mapping it owns; a copy's read goes there), its iovec table and its batch's bytes
        // (heap buffers, which do not move while the record lives); files are registered
        // fixed-file slots (checked above). The record counts these SQEs in `pending` just
        // below and cannot be released (`BulkRecords::finish`) nor reached
        // (`BulkRecords::idle`) until their CQEs are reaped, and `Drop` waits for (or leaks
        // on) every outstanding CQE.
        let pushed = unsafe { self.uring.submission().push_multiple(&built.entries) };
        if pushed.is_err() {
            return Err(PushError::NoRoom);
        }
        let rec = &mut self.bulk.slots[id.index as usize];
        self.pending += rec.track.arm(tag, n, true, built.want);
        Ok(())
    }

    /// Submits what is queued (and flushes overflowed completions). Does nothing when there
    /// is nothing to do; a busy kernel (`EBUSY`, `EAGAIN`) keeps the SQEs for the next call.
    pub fn flush(&mut self) -> io::Result<()> {
        {
            let sq = self.uring.submission();
            if sq.is_empty() && !sq.cq_overflow() {
                return Ok(());
            }
        }
        loop {
            match self.uring.submit() {
                Ok(_) => return Ok(()),
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EBUSY | libc::EAGAIN) => return Ok(()),
                    _ => return Err(e),
                },
            }
        }
    }

    /// Submits what is queued and waits in the kernel until a CQE is available, at most
    /// `timeout` (`None`: without limit). Returns at once if nothing is pending. A timeout, a
    /// signal or a busy kernel return `Ok` (the caller reaps and decides).
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        if self.pending == 0 {
            return Ok(());
        }
        let r = match timeout {
            None => self.uring.submit_and_wait(1),
            Some(d) => {
                let ts = types::Timespec::from(d);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.uring.submitter().submit_with_args(1, &args)
            }
        };
        match r {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)) => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The kernel stopped answering: gives up on every record with SQEs in the kernel. Their
    /// ops and parts are returned; their leases are leaked (so their rows stay leased, and the
    /// region mapped, forever) and so is every record's memory when the ring is dropped: the
    /// kernel may still write to it.
    pub fn abandon(&mut self) -> (Vec<(FileOp, Part)>, Vec<Vec<Part>>) {
        self.broken = true;
        (self.records.abandon(), self.bulk.abandon())
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        let (mut ready, mut ready_bulk) = (Vec::new(), Vec::new());
        while !self.broken && self.pending > 0 {
            self.reap(&mut ready, &mut ready_bulk);
            if self.pending > 0 && self.wait(None).is_err() {
                self.broken = true;
            }
        }
        if self.broken {
            // Records the kernel may still write to are never freed.
            std::mem::forget(std::mem::replace(&mut self.records, Records::new(Vec::new())));
            std::mem::forget(std::mem::replace(&mut self.bulk, BulkRecords::new(0)));
            std::mem::forget(Arc::clone(&self.region));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Identity;
    use crate::sqe::{Buf, FileSel, PathSel, SKIPPED};
    use kvtier_core::{Direction, JobTable};
    use kvtier_fs::Target;
    use std::os::unix::ffi::OsStrExt;

    /// A part of a job of its own in `table`.
    pub(super) fn part(table: &mut JobTable) -> Part {
        let job = table.open().unwrap();
        let part = table.add_part(job).unwrap();
        table.close(job).unwrap();
        part
    }

    pub(super) fn store_op(path: &std::path::Path) -> FileOp {
        FileOp {
            dir: Direction::Store,
            slot: SlotId(0),
            target: Target::Path(path.to_path_buf()),
            format: kvtier_fs::BlockFormat::Vllm,
            sync: false,
            mode: Default::default(),
            evict: None,
        }
    }

    #[test]
    fn identities_compare_devices_and_inodes() {
        let a = Identity { dev: (8, 1), ino: 7, size: 10 };
        assert!(!a.same_file(&Identity { ino: 8, ..a }));
        assert!(a.same_file(&Identity { size: 20, ..a }), "a file keeps its identity as it grows");
    }

    #[test]
    fn records_own_their_paths_and_are_released_only_when_idle() {
        let region = Arc::new(PrimaryRegion::anonymous(2, 4096).unwrap());
        let setup =
            RingSetup { sq_entries: 8, cq_entries: 0, records: 1, bulk: 0, iowq_workers: 0, force_unavailable: false };
        let mut ring = Ring::new(Arc::clone(&region), &setup).unwrap();
        assert_eq!((ring.capacity(), ring.active()), (1, 0));
        let op = store_op(std::path::Path::new("/x/y.bin"));
        let lease = region.lease(SlotId(0), Access::Read).unwrap();
        let mut table = JobTable::new(4, 4);
        let id = ring.start(op.clone(), lease, part(&mut table));
        assert!(!ring.has_free(), "one record only");
        let mut rec = ring.idle(id).unwrap();
        rec.set_temp_path(0x2a).unwrap();
        assert_eq!(rec.path(PathSel::Temp), kvtier_fs::tmpname::temp_path(std::path::Path::new("/x/y.bin"), 0x2a));
        assert!(rec.set_path(PathSel::Dir, &[b"a\0b"]).is_err());
        // A read into a read-leased row is refused before anything reaches the kernel.
        let e = ring.push(
            id,
            &[
                (Sqe::Open { path: PathSel::Temp, flags: 0, mode: 0 }, Link::Soft),
                (Sqe::Read { file: FileSel::Own, buf: Buf::Row { len: 4096 }, offset: 0 }, Link::End),
            ],
            false,
        );
        assert!(matches!(e, Err(PushError::Invalid(_))));
        assert_eq!(ring.pending(), 0);
        // A NOP-like chain that fails at once: unlink of a path that does not exist.
        let mut rec = ring.idle(id).unwrap();
        rec.set_path(PathSel::Final, &[b"/nonexistent/kvtier-ring-test"]).unwrap();
        ring.push(id, &[(Sqe::Unlink { path: PathSel::Final }, Link::End)], false).unwrap();
        assert!(ring.idle(id).is_none() && ring.finish(id).is_none(), "busy while the kernel has it");
        ring.wait(None).unwrap();
        let mut ready = Vec::new();
        while ready.is_empty() {
            ring.reap(&mut ready, &mut Vec::new());
        }
        assert_eq!(ready, vec![id]);
        assert_eq!(ring.idle(id).unwrap().results[0], -libc::ENOENT);
        let (op, lease, part) = ring.finish(id).unwrap();
        assert_eq!((op.target, lease.slot()), (Target::Path("/x/y.bin".into()), SlotId(0)));
        drop(lease);
        part.finish(0);
        assert!(ring.finish(id).is_none(), "a stale id is refused");
    }

    /// A one-CQE chain posts exactly one CQE, whether it succeeds or fails (and no stray CQE
    /// follows: `reap` asserts that in debug builds).
    #[test]
    fn one_cqe_chains_post_one_cqe() {
        let dir = tempfile::tempdir().unwrap();
        let region = Arc::new(PrimaryRegion::anonymous(1, 4096).unwrap());
        let setup =
            RingSetup { sq_entries: 8, cq_entries: 0, records: 1, bulk: 0, iowq_workers: 0, force_unavailable: false };
        let mut ring = Ring::new(Arc::clone(&region), &setup).unwrap();
        let chain = [
            (
                Sqe::Open { path: PathSel::Temp, flags: libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, mode: 0o644 },
                Link::Soft,
            ),
            (Sqe::Write { file: FileSel::Own, buf: Buf::Row { len: 4096 }, offset: 0 }, Link::Soft),
            (Sqe::Close, Link::Soft),
            (Sqe::Rename { from: PathSel::Temp, to: PathSel::Final }, Link::End),
        ];
        let mut table = JobTable::new(4, 4);
        let mut run = |fin: &std::path::Path| {
            let id = ring.start(store_op(fin), region.lease(SlotId(0), Access::Read).unwrap(), part(&mut table));
            let mut rec = ring.idle(id).unwrap();
            rec.set_path(PathSel::Final, &[fin.as_os_str().as_bytes()]).unwrap();
            rec.set_temp_path(kvtier_fs::tmpname::next_seq()).unwrap();
            ring.push(id, &chain, true).unwrap();
            assert_eq!(ring.pending(), 1);
            let mut ready = Vec::new();
            let mut cqes = 0;
            while ready.is_empty() {
                ring.wait(None).unwrap();
                cqes += ring.reap(&mut ready, &mut Vec::new());
            }
            std::thread::sleep(Duration::from_millis(50));
            cqes += ring.reap(&mut ready, &mut Vec::new());
            assert_eq!((cqes, ready.len()), (1, 1));
            let results = *ring.idle(id).unwrap().results;
            ring.finish(id).unwrap();
            results
        };
        let ok = run(&dir.path().join("a.bin"));
        assert_eq!(&ok[..4], &[SKIPPED, SKIPPED, SKIPPED, 0]);
        assert!(dir.path().join("a.bin").is_file());
        let failed = run(&dir.path().join("missing/a.bin"));
        assert_eq!(&failed[..4], &[-libc::ENOENT, -libc::ECANCELED, -libc::ECANCELED, -libc::ECANCELED]);
        // A failure in the middle: renaming onto a non-empty directory.
        std::fs::create_dir_all(dir.path().join("d.bin/x")).unwrap();
        let failed = run(&dir.path().join("d.bin"));
        assert_eq!(&failed[..3], &[SKIPPED, SKIPPED, SKIPPED]);
        assert!(failed[3] < 0, "{failed:?}");
    }
}
#[cfg(test)]
mod link_semantics {
    //! What the store chains rely on, checked on the running kernel: a failed open or write
    //! breaks a soft link and posts its CQE even when asked to skip successes; a failed
    //! `fsync` or `renameat` does neither (Linux 6.18 sets no failure flag for them), so
    //! those steps end their chain.
    use super::*;
    use crate::sqe::{Buf, FileSel, PathSel, SKIPPED};
    use std::os::unix::ffi::OsStrExt;

    fn run(chain: &[(Sqe, Link)], path: &std::path::Path) -> [i32; MAX_STEPS] {
        let region = Arc::new(PrimaryRegion::anonymous(1, 4096).unwrap());
        let setup =
            RingSetup { sq_entries: 8, cq_entries: 0, records: 1, bulk: 0, iowq_workers: 0, force_unavailable: false };
        let mut ring = Ring::new(Arc::clone(&region), &setup).unwrap();
        let op = tests::store_op(path);
        let mut table = kvtier_core::JobTable::new(1, 1);
        let id = ring.start(op, region.lease(SlotId(0), Access::Read).unwrap(), tests::part(&mut table));
        let mut rec = ring.idle(id).unwrap();
        rec.set_path(PathSel::Final, &[path.as_os_str().as_bytes()]).unwrap();
        rec.set_path(PathSel::Temp, &[path.as_os_str().as_bytes(), b".renamed"]).unwrap();
        ring.push(id, chain, true).unwrap();
        let mut ready = Vec::new();
        while ready.is_empty() {
            ring.wait(None).unwrap();
            ring.reap(&mut ready, &mut Vec::new());
        }
        *ring.idle(id).unwrap().results
    }

    #[test]
    fn failed_writes_break_the_chain_and_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let r = run(
            &[
                (Sqe::Open { path: PathSel::Final, flags: libc::O_RDONLY, mode: 0 }, Link::Soft),
                (Sqe::Write { file: FileSel::Own, buf: Buf::Row { len: 4096 }, offset: 0 }, Link::Soft),
                (Sqe::Close, Link::End),
            ],
            &file,
        );
        assert_eq!(&r[..3], &[SKIPPED, -libc::EBADF, -libc::ECANCELED]);
    }

    #[test]
    fn a_failed_fsync_must_end_its_chain() {
        // fsync of a FIFO fails with EINVAL.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let open = (Sqe::Open { path: PathSel::Final, flags: libc::O_RDWR | libc::O_NONBLOCK, mode: 0 }, Link::Soft);
        let r = run(&[open, (Sqe::DataSync { file: FileSel::Own }, Link::End)], &fifo);
        assert_eq!(&r[..2], &[SKIPPED, -libc::EINVAL], "the last step's CQE is always posted");
        let r = run(&[open, (Sqe::DataSync { file: FileSel::Own }, Link::Soft), (Sqe::Close, Link::End)], &fifo);
        if r[1] != SKIPPED {
            eprintln!("this kernel breaks the link on a failed fsync: {:?}", &r[..3]);
        }
    }
}

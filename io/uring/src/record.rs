//! Records: everything the kernel may touch for one op in the ring, and who may reach it when.
//! No `unsafe`.
//!
//! The invariant the ring rests on: **memory the kernel may touch belongs to a record until
//! every CQE of every SQE that names it has been reaped.** A record owns the op's row
//! [`Lease`], its scratch pages in the registered arena (the native header, an auxiliary page:
//! a store's zero-padded last page, a load's end-of-file probe; and a page for two `statx`
//! buffers and the iovec tables of vectored steps), its NUL-terminated paths and direct
//! descriptor slot `i`. It counts the CQEs it still waits for; while that count is not zero its
//! buffers cannot be reached from safe code ([`Records::idle`] answers `None`) and it cannot be
//! released ([`Records::finish`] answers `None`). A released record hands back its op, its lease
//! and the op's job part; the executor drops the lease before it finishes the part.

use std::io::{self, Write as _};
use std::os::unix::ffi::OsStrExt;

use kvtier_core::Part;
use kvtier_fs::region::Lease;
use kvtier_fs::tmpname::TEMP_SUFFIX;
use kvtier_fs::FileOp;

use crate::sqe::{transferred, PathSel, IOVEC_LEN, MAX_IOV, MAX_STEPS, PAGE, SKIPPED};

/// Scratch pages per record: the native header, an auxiliary page (a store's zero-padded last
/// page, a load's end-of-file probe), and a page for two `statx` buffers and iovec tables.
pub const SCRATCH_PAGES: usize = 3;

/// A record, as handed out by [`Records::start`]. Stale ids (of a finished record) are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecId {
    pub(crate) index: u32,
    pub(crate) gen: u32,
}

impl RecId {
    /// The record's index (also its direct descriptor slot).
    pub fn index(self) -> usize {
        self.index as usize
    }
}

/// A file's identity as `statx` reported it, and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// Device (major, minor).
    pub dev: (u32, u32),
    /// Inode number.
    pub ino: u64,
    /// Length in bytes (not part of the identity: a file keeps its identity as it grows).
    pub size: u64,
}

impl Identity {
    /// Whether both name the same file (device and inode).
    pub fn same_file(&self, other: &Identity) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }
}

/// Where in the scratch pages `statx` buffer `which` (0 or 1) is: page 2, 256 bytes each.
pub(crate) fn statx_at(which: u8) -> usize {
    2 * PAGE + 256 * usize::from(which & 1)
}

/// Where in the scratch pages step `step`'s iovec table is: page 2, after the `statx` buffers.
pub(crate) const fn iov_at(step: usize) -> usize {
    2 * PAGE + 512 + step * MAX_IOV * IOVEC_LEN
}

// Both statx buffers and every step's iovec table fit in page 2.
const _: () = assert!(iov_at(MAX_STEPS) <= SCRATCH_PAGES * PAGE);

/// Offsets in a `struct statx` (checked against `libc` by a test), read by offset so no
/// `unsafe` cast is needed.
const STATX_INO: usize = 32;
const STATX_SIZE: usize = 40;
const STATX_DEV_MAJOR: usize = 136;
const STATX_DEV_MINOR: usize = 140;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// An op running in the ring. The lease is declared first: dropped before the part.
pub(crate) struct Active {
    pub lease: Lease,
    pub part: Part,
    pub op: FileOp,
}

/// The chain a record (or a bulk record, `crate::bulk`) has in the kernel, and its results:
/// what counts its CQEs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Track {
    /// Changes with every chain pushed: a CQE carries it, so a CQE can only ever count for
    /// the chain it belongs to.
    pub tag: u32,
    /// CQEs still to come for the chain in the kernel.
    pub pending: u32,
    /// Steps of the chain in the kernel, and whether it posts one CQE only.
    pub steps: u8,
    pub one_cqe: bool,
    /// Bytes each step of the chain transfers (0: not a transfer).
    pub want: [u32; MAX_STEPS],
    pub results: [i32; MAX_STEPS],
}

/// What a reaped CQE did to its record's chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reaped {
    /// Not a CQE the chain waits for (never counted).
    Stray,
    /// Counted: the ring's pending count changes by `-1 + more` (a one-CQE chain whose kernel
    /// posted a success it was asked to skip now waits for the CQEs of every later step);
    /// `done` when the chain has no CQE left to come.
    Counted {
        /// CQEs the chain now waits for beyond this one's.
        more: usize,
        /// The chain is complete.
        done: bool,
    },
}

impl Track {
    /// No chain.
    pub const IDLE: Track =
        Track { tag: 0, pending: 0, steps: 0, one_cqe: false, want: [0; MAX_STEPS], results: [0; MAX_STEPS] };

    /// A chain of `steps` steps tagged `tag` goes to the kernel; returns the CQEs it posts.
    pub fn arm(&mut self, tag: u32, steps: usize, one_cqe: bool, want: [u32; MAX_STEPS]) -> usize {
        let cqes = if one_cqe { 1 } else { steps };
        *self = Track { tag, pending: cqes as u32, steps: steps as u8, one_cqe, want, results: [0; MAX_STEPS] };
        cqes
    }

    /// Takes the CQE of step `step` of the chain tagged `tag`, with result `res`.
    pub fn reap(&mut self, tag: u32, step: usize, res: i32) -> Reaped {
        if self.tag != tag || self.pending == 0 || step >= usize::from(self.steps) {
            return Reaped::Stray;
        }
        let last = step + 1 == usize::from(self.steps);
        if self.one_cqe && !last && transferred(res, self.want[step]) {
            // A success CQE the chain asked the kernel to skip: this kernel does not skip it,
            // so every later step posts one as well. Count them, and do not take this one for
            // the end of a chain that is still running.
            self.one_cqe = false;
            self.results[step] = res;
            let rest = usize::from(self.steps) - step - 1;
            self.pending = rest as u32;
            return Reaped::Counted { more: rest, done: false };
        }
        if self.one_cqe {
            // The chain's only CQE: the steps before it completed in full, those after it
            // were cancelled.
            self.results[..step].fill(SKIPPED);
            self.results[step + 1..usize::from(self.steps)].fill(-libc::ECANCELED);
        }
        self.results[step] = res;
        self.pending -= 1;
        Reaped::Counted { more: 0, done: self.pending == 0 }
    }

    /// Step `k` succeeded: its CQE was skipped (it completed in full), or a non-negative
    /// result, and a transfer moved all its bytes.
    pub fn ok(&self, k: usize) -> bool {
        self.results[k] == SKIPPED || transferred(self.results[k], self.want[k])
    }
}

/// One record: everything the kernel may touch for one op.
pub(crate) struct Record {
    /// Changes when the record is released: a stale [`RecId`] is refused.
    pub gen: u32,
    /// Its chain in the kernel.
    pub track: Track,
    pub active: Option<Active>,
    /// NUL-terminated paths, indexed by [`PathSel`]; empty when unset.
    pub paths: [Vec<u8>; 4],
    /// The record's scratch pages in the arena (see [`SCRATCH_PAGES`]), leased for the ring's
    /// life.
    pub scratch: Lease,
}

pub(crate) fn path_index(sel: PathSel) -> usize {
    match sel {
        PathSel::Final => 0,
        PathSel::Temp => 1,
        PathSel::Dir => 2,
        PathSel::Victim => 3,
    }
}

/// A record with nothing in the kernel: its op, row, scratch pages, paths, the results of its
/// last chain and its `statx` buffers, for the code that decides what comes next.
pub struct Idle<'a> {
    /// The op.
    pub op: &'a FileOp,
    /// The whole row (`stride` bytes; the block is its first `row_bytes`).
    pub row: &'a [u8],
    /// The block size of the region.
    pub row_bytes: usize,
    /// The scratch pages: page 0 (the header) and page 1 (auxiliary) are `scratch[..PAGE]` and
    /// `scratch[PAGE..2 * PAGE]`; the rest holds the `statx` buffers.
    pub scratch: &'a mut [u8],
    /// The results (CQE `res`) of the last chain's steps, in order.
    pub results: &'a [i32; MAX_STEPS],
    paths: &'a mut [Vec<u8>; 4],
}

impl Idle<'_> {
    /// Sets path `sel` to the concatenation of `parts` (NUL-terminated). Fails on a NUL byte.
    pub fn set_path(&mut self, sel: PathSel, parts: &[&[u8]]) -> io::Result<()> {
        let buf = &mut self.paths[path_index(sel)];
        buf.clear();
        for part in parts {
            if part.contains(&0) {
                buf.clear();
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"));
            }
            buf.extend_from_slice(part);
        }
        buf.push(0);
        Ok(())
    }

    /// Sets the temp path to `{final}.{pid}.{seq:x}.tmp` ([`kvtier_fs::tmpname::temp_path`]'s
    /// name, built without allocating) of the op's final path.
    pub fn set_temp_path(&mut self, seq: u64) -> io::Result<()> {
        let fin = self.op.target.path().map(|p| p.as_os_str().as_bytes()).unwrap_or_default();
        self.set_path(PathSel::Temp, &[fin])?;
        let buf = &mut self.paths[path_index(PathSel::Temp)];
        buf.pop();
        write!(buf, ".{}.{seq:x}{TEMP_SUFFIX}", std::process::id())?;
        buf.push(0);
        Ok(())
    }

    /// Path `sel` without its NUL (empty when unset).
    #[cfg(test)]
    pub fn path(&self, sel: PathSel) -> &std::ffi::OsStr {
        let p = &self.paths[path_index(sel)];
        std::ffi::OsStr::from_bytes(p.strip_suffix(&[0]).unwrap_or(p))
    }

    /// The identity `statx` buffer `which` holds (meaningful if that step succeeded).
    pub fn statx(&self, which: u8) -> Identity {
        let b = &self.scratch[statx_at(which)..statx_at(which) + 256];
        Identity {
            dev: (u32_at(b, STATX_DEV_MAJOR), u32_at(b, STATX_DEV_MINOR)),
            ino: u64_at(b, STATX_INO),
            size: u64_at(b, STATX_SIZE),
        }
    }
}

/// The ring's records and their free list.
pub(crate) struct Records {
    pub slots: Vec<Record>,
    free: Vec<u32>,
}

impl Records {
    /// Records over `scratch` leases (one per record, [`SCRATCH_PAGES`] pages each).
    pub fn new(scratch: Vec<Lease>) -> Records {
        let n = scratch.len() as u32;
        let slots = scratch
            .into_iter()
            .map(|scratch| Record {
                gen: 0,
                track: Track::IDLE,
                active: None,
                paths: [Vec::with_capacity(256), Vec::with_capacity(256), Vec::new(), Vec::new()],
                scratch,
            })
            .collect();
        Records { slots, free: (0..n).rev().collect() }
    }

    /// Records.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Records running an op.
    pub fn active(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Whether a record is free.
    pub fn has_free(&self) -> bool {
        !self.free.is_empty()
    }

    /// Takes a free record for `op`, its row's `lease` and its job `part`.
    ///
    /// # Panics
    ///
    /// If no record is free (see [`Records::has_free`]).
    pub fn start(&mut self, op: FileOp, lease: Lease, part: Part) -> RecId {
        let index = self.free.pop().expect("a free record (checked with has_free)");
        let rec = &mut self.slots[index as usize];
        debug_assert!(rec.active.is_none() && rec.track.pending == 0);
        rec.active = Some(Active { lease, part, op });
        RecId { index, gen: rec.gen }
    }

    /// Record `id`, if it is running an op and has nothing in the kernel.
    pub fn idle_record(&mut self, id: RecId) -> Option<&mut Record> {
        self.slots.get_mut(id.index()).filter(|r| r.gen == id.gen && r.track.pending == 0 && r.active.is_some())
    }

    /// The record, if it has nothing in the kernel.
    pub fn idle(&mut self, id: RecId, row_bytes: usize) -> Option<Idle<'_>> {
        let rec = self.idle_record(id)?;
        let active = rec.active.as_ref()?;
        Some(Idle {
            op: &active.op,
            row: active.lease.as_slice(),
            row_bytes,
            scratch: rec.scratch.as_mut_slice().expect("scratch pages are write-leased"),
            results: &rec.track.results,
            paths: &mut rec.paths,
        })
    }

    /// Releases an idle record: gives back its op, lease and part. `None` while it has SQEs in
    /// the kernel (or for a stale id).
    pub fn finish(&mut self, id: RecId) -> Option<(FileOp, Lease, Part)> {
        let rec = self.idle_record(id)?;
        let Active { lease, part, op } = rec.active.take()?;
        rec.gen = rec.gen.wrapping_add(1);
        for p in &mut rec.paths {
            p.clear();
        }
        self.free.push(id.index);
        Some((op, lease, part))
    }

    /// Every record with SQEs in the kernel gives up its op: the ops and parts are returned,
    /// the leases leaked (their rows stay leased, and the region mapped, forever: the kernel
    /// may still write to them).
    pub fn abandon(&mut self) -> Vec<(FileOp, Part)> {
        let mut ops = Vec::new();
        for rec in &mut self.slots {
            if rec.track.pending > 0 {
                if let Some(Active { lease, part, op }) = rec.active.take() {
                    std::mem::forget(lease);
                    ops.push((op, part));
                }
            }
        }
        ops
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statx_offsets_match_libc() {
        assert_eq!(std::mem::size_of::<libc::statx>(), 256);
        assert_eq!(std::mem::offset_of!(libc::statx, stx_ino), STATX_INO);
        assert_eq!(std::mem::offset_of!(libc::statx, stx_size), STATX_SIZE);
        assert_eq!(std::mem::offset_of!(libc::statx, stx_dev_major), STATX_DEV_MAJOR);
        assert_eq!(std::mem::offset_of!(libc::statx, stx_dev_minor), STATX_DEV_MINOR);
    }
}

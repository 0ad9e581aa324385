//! The primary tier's memory: `rows` page-aligned rows in one mapping, and per-row leases.
//!
//! Every access to a row goes through a [`Lease`]: a write lease is exclusive, read leases are
//! shared. Executors take a lease when an op is submitted and drop it before the op's
//! completion is handed back, so even a buggy caller cannot make two operations write one row
//! at once, or read a row while another writes it: the second lease is refused
//! ([`LeaseError::Busy`]) and that op fails instead. A lease also keeps the mapping alive
//! (it holds an `Arc` of the region), so memory the kernel may still touch is never unmapped.
//!
//! The rows live in memory the region maps itself ([`PrimaryRegion::anonymous`],
//! [`PrimaryRegion::shared`]) or in memory someone else owns and lends it
//! ([`PrimaryRegion::foreign`]: vLLM's shared CPU rows, seen through a Python buffer).
//!
//! Leases order the accesses of this process. Other processes reach the rows only through a
//! shared region's file or a foreign region's owner, and are bound by the engine's protocol
//! as documented there: they never touch a row an operation of the region has leased.
//!
//! All `unsafe` of the primary region is in this module (and the `flock`/`geteuid` calls of
//! the private `sys` module).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use kvtier_core::{Direction, RowIo, RowRefused, SlotId};
use memmap2::{MmapOptions, MmapRaw};

use crate::direct::DIRECT_ALIGN;
use crate::files::{annotate, FileMode};

const WRITER: u32 = u32::MAX;

/// Access a lease grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Shared, read-only.
    Read,
    /// Exclusive, read-write.
    Write,
}

impl Access {
    /// The lease an op moving a block in direction `dir` holds on its row: a load writes it, a
    /// store reads it.
    pub fn for_op(dir: Direction) -> Access {
        match dir {
            Direction::Load => Access::Write,
            Direction::Store => Access::Read,
        }
    }
}

/// Why a lease was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseError {
    /// The slot is not a row of this region.
    OutOfRange,
    /// Another lease on the row conflicts (a writer, or readers when writing).
    Busy,
}

impl std::fmt::Display for LeaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeaseError::OutOfRange => f.write_str("slot out of range"),
            LeaseError::Busy => f.write_str("slot is leased by another operation"),
        }
    }
}

impl std::error::Error for LeaseError {}

/// Where the rows live.
enum Backing {
    /// No rows, or rows of zero bytes: nothing mapped.
    Empty,
    /// A mapping the region made and unmaps on drop.
    Mapped(MmapRaw),
    /// Memory lent by its owner (see [`PrimaryRegion::foreign`]).
    Foreign(Foreign),
}

/// Memory the region does not own: `len` bytes at `base`, kept alive and in place by `owner`.
struct Foreign {
    base: NonNull<u8>,
    len: usize,
    // Dropped with the region, which releases the memory to its owner; never read.
    _owner: Box<dyn Send + Sync>,
}

// SAFETY: `Foreign` is only built by `PrimaryRegion::foreign`, whose caller promised that the
// memory is valid for reads and writes from any thread while `owner` lives, and that its
// owner touches no leased row; the pointer is never used to reach anything else, and every
// access of this process to the bytes goes through the region's leases (or the documented
// unsafe `row_ptr_unleased`), as for a mapping of our own.
unsafe impl Send for Foreign {}
// SAFETY: as above; shared references hand out nothing but the address.
unsafe impl Sync for Foreign {}

impl Backing {
    fn base(&self) -> Option<NonNull<u8>> {
        match self {
            Backing::Empty => None,
            Backing::Mapped(map) => NonNull::new(map.as_mut_ptr()),
            Backing::Foreign(f) => Some(f.base),
        }
    }

    fn len(&self) -> usize {
        match self {
            Backing::Empty => 0,
            Backing::Mapped(map) => map.len(),
            Backing::Foreign(f) => f.len,
        }
    }
}

/// The rows of the primary tier.
pub struct PrimaryRegion {
    backing: Backing,
    rows: usize,
    row_bytes: usize,
    stride: usize,
    leases: Box<[AtomicU32]>,
    shared: Option<SharedFile>,
}

/// A shared region's file: open (holding the exclusive `flock` that says a live region owns
/// it) for as long as the region lives.
struct SharedFile {
    path: PathBuf,
    file: File,
}

/// Bytes of the trailer that ends a shared region's file, one page after the rows (so rows
/// stay at `slot * stride` for the other processes that map them).
pub const SHARED_TRAILER_LEN: usize = DIRECT_ALIGN;

const TRAILER_MAGIC: &[u8; 16] = b"kvtier-region-v1";

/// The trailer of a region of this geometry: magic, rows, row bytes, stride (little-endian
/// u64s), and the CRC-32C of those 40 bytes.
fn trailer(rows: usize, row_bytes: usize, stride: usize) -> [u8; 44] {
    let mut t = [0u8; 44];
    t[..16].copy_from_slice(TRAILER_MAGIC);
    for (i, n) in [rows, row_bytes, stride].into_iter().enumerate() {
        t[16 + 8 * i..24 + 8 * i].copy_from_slice(&(n as u64).to_le_bytes());
    }
    let crc = crc32c::crc32c(&t[..40]);
    t[40..].copy_from_slice(&crc.to_le_bytes());
    t
}

impl std::fmt::Debug for PrimaryRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrimaryRegion")
            .field("rows", &self.rows)
            .field("row_bytes", &self.row_bytes)
            .field("stride", &self.stride)
            .field("shared_path", &self.shared_path())
            .field("foreign", &matches!(self.backing, Backing::Foreign(_)))
            .finish()
    }
}

/// `(stride, len)` of the region's own mapping of `rows` rows of `row_bytes`.
fn layout(rows: usize, row_bytes: usize) -> io::Result<(usize, usize)> {
    let stride = PrimaryRegion::stride_for(row_bytes);
    match (stride, PrimaryRegion::mapping_len(rows, row_bytes)) {
        (Some(stride), Some(len)) => Ok((stride, len)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{rows} rows of {row_bytes} bytes (each rounded up to {DIRECT_ALIGN}) overflow the address space"),
        )),
    }
}

/// `len` bytes, for an error message: the count and its GiB.
fn bytes_named(len: usize) -> String {
    format!("{len} bytes ({:.1} GiB)", len as f64 / f64::from(1u32 << 30))
}

impl PrimaryRegion {
    /// The distance between rows of `row_bytes` in the region's own mappings: `row_bytes`
    /// rounded up to [`DIRECT_ALIGN`] (`None` on overflow). A row of 1 byte takes 4096: count
    /// rows that fit in a memory budget with this, not with the block size.
    pub fn stride_for(row_bytes: usize) -> Option<usize> {
        row_bytes.checked_next_multiple_of(DIRECT_ALIGN)
    }

    /// Bytes of the region's own mapping of `rows` rows of `row_bytes` (`rows` strides), or
    /// `None` when that does not fit in the address space.
    pub fn mapping_len(rows: usize, row_bytes: usize) -> Option<usize> {
        Self::stride_for(row_bytes)?.checked_mul(rows).filter(|&len| isize::try_from(len).is_ok())
    }

    /// `rows` rows of `row_bytes` in private anonymous memory (zeroed).
    ///
    /// # Errors
    ///
    /// A size that overflows (`InvalidInput`), or memory the kernel refuses to map; either
    /// names the size asked for.
    pub fn anonymous(rows: usize, row_bytes: usize) -> io::Result<Self> {
        let (stride, len) = layout(rows, row_bytes)?;
        let map = if len == 0 {
            Backing::Empty
        } else {
            let map = MmapOptions::new().len(len).map_anon().map_err(|e| {
                annotate(e, format!("cannot map {} for {rows} rows of {stride} bytes", bytes_named(len)))
            })?;
            Backing::Mapped(MmapRaw::from(map))
        };
        Ok(Self::with_map(map, rows, row_bytes, stride, None))
    }

    /// `rows` rows of `row_bytes` in a file at `path` shared with other processes (e.g. under
    /// `/dev/shm`, for an engine's worker processes to map the same rows): row `i` at offset
    /// `i * stride`, then a trailer page ([`SHARED_TRAILER_LEN`] bytes) that marks the file as
    /// a kvtier region of this geometry.
    ///
    /// The region owns the file while it lives: it holds an exclusive `flock` on it, and a
    /// second region on the same path is refused. The file is created (with `mode`, `O_EXCL`,
    /// never through a symbolic link) and removed when the region is dropped. An existing file
    /// is taken over only if it is a region file a kvtier process left when it died: a regular
    /// file of this user, of exactly this geometry's size, with a matching trailer, and not
    /// locked (its owner is gone). Every other existing file is refused, untouched (never
    /// resized, written or removed), with an error naming the path: another size, locked by a
    /// live region, another user's, or not a kvtier region. Other processes may map the file
    /// and read and write rows, following the engine's protocol: never a row an operation of
    /// this region has leased. None may truncate it (a mapping past the end of its file
    /// faults).
    ///
    /// # Errors
    ///
    /// The refusals above (`AlreadyExists`, or `ResourceBusy` for a locked file), and the
    /// file system's, each naming the path and what failed.
    pub fn shared(path: &Path, rows: usize, row_bytes: usize, mode: FileMode) -> io::Result<Self> {
        let (stride, len) = layout(rows, row_bytes)?;
        let at = |e: io::Error, what: &str| annotate(e, format!("shared memory {}: {what}", path.display()));
        let file_len =
            len.checked_add(SHARED_TRAILER_LEN).filter(|&n| isize::try_from(n).is_ok()).ok_or_else(|| {
                let e = io::Error::from(io::ErrorKind::InvalidInput);
                at(e, &format!("{rows} rows of {stride} bytes and the trailer overflow the address space"))
            })?;
        let want = trailer(rows, row_bytes, stride);
        let created = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode.file())
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path);
        let (file, made_here) = match created {
            Ok(file) => {
                // Ours from its creation: the lock cannot be held by a live region (the inode is
                // new), only for a moment by a region checking it and refusing it.
                let made = crate::sys::lock_exclusive(file.as_fd(), true)
                    .and_then(|_| file.set_len(file_len as u64))
                    .and_then(|()| file.write_all_at(&want, len as u64));
                if let Err(e) = made {
                    let _ = std::fs::remove_file(path);
                    return Err(at(e, "cannot create it"));
                }
                (file, true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                (Self::take_over(path, file_len, &want, mode)?, false)
            }
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(at(e, "is a symbolic link, which a region never follows"))
            }
            Err(e) => return Err(at(e, "cannot create it")),
        };
        let map = if len == 0 {
            Backing::Empty
        } else {
            match MmapOptions::new().len(len).map_raw(&file) {
                Ok(map) => Backing::Mapped(map),
                Err(e) => {
                    if made_here {
                        let _ = std::fs::remove_file(path);
                    }
                    return Err(at(e, &format!("cannot map {}", bytes_named(len))));
                }
            }
        };
        let shared = SharedFile { path: path.to_path_buf(), file };
        Ok(Self::with_map(map, rows, row_bytes, stride, Some(shared)))
    }

    /// Opens the existing file at `path` if it is a region file of a kvtier process that died
    /// (see [`PrimaryRegion::shared`]): locked, and given `mode`.
    fn take_over(path: &Path, file_len: usize, want: &[u8], mode: FileMode) -> io::Result<File> {
        let refuse = |kind: io::ErrorKind, why: String| {
            io::Error::new(kind, format!("shared memory {}: {why}; refusing to use it", path.display()))
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| annotate(e, format!("shared memory {}: exists, and cannot be opened", path.display())))?;
        let meta = file.metadata()?;
        if !meta.file_type().is_file() {
            return Err(refuse(io::ErrorKind::AlreadyExists, "exists and is not a regular file".into()));
        }
        let me = crate::sys::effective_uid();
        if meta.uid() != me {
            let why = format!("exists and belongs to user id {}, not to this user ({me})", meta.uid());
            return Err(refuse(io::ErrorKind::AlreadyExists, why));
        }
        if !crate::sys::lock_exclusive(file.as_fd(), false)? {
            let why = "is in use by another process (it holds the region's lock)".to_string();
            return Err(refuse(io::ErrorKind::ResourceBusy, why));
        }
        if meta.len() != file_len as u64 {
            let why = format!(
                "exists with {} bytes, not the {file_len} of this region (another configuration's, or not kvtier's)",
                meta.len()
            );
            return Err(refuse(io::ErrorKind::AlreadyExists, why));
        }
        let mut found = vec![0u8; want.len()];
        let trailer_at = (file_len - SHARED_TRAILER_LEN) as u64;
        if file.read_exact_at(&mut found, trailer_at).is_err() || found != want {
            let why = "exists and is not a kvtier region file of this geometry".to_string();
            return Err(refuse(io::ErrorKind::AlreadyExists, why));
        }
        // A region file whose region died: ours now, with this configuration's mode.
        file.set_permissions(std::fs::Permissions::from_mode(mode.file()))?;
        Ok(file)
    }

    /// `rows` rows of `stride` bytes each, back to back from `base`, in memory the region does
    /// not own: an inference engine's own CPU rows (vLLM hands its tiers a memoryview of them).
    /// A block is the whole row (`row_bytes == stride`): what the engine calls a row is what is
    /// stored, padding included. Rows need no alignment: executors use `O_DIRECT` only for
    /// transfers aligned to 4096 bytes and go buffered otherwise. Dropping the region drops
    /// `owner`, after every lease is gone (a lease keeps the region alive).
    ///
    /// Refused (`InvalidInput`): rows of zero bytes, or rows that do not fit in `len`.
    ///
    /// # Safety
    ///
    /// `base..base + len` must be valid for reads and writes, from any thread, and stay at that
    /// address for as long as `owner` lives (e.g. `owner` holds a Python buffer export, which
    /// keeps the exporter from unmapping or resizing it). While the region lives, its owner and
    /// anyone else must not touch a row that an operation of this region has leased: in the
    /// engine's protocol, the rows of blocks being stored are only read, and the rows of blocks
    /// being loaded are not accessed at all, until the job is reported.
    pub unsafe fn foreign(
        base: NonNull<u8>,
        len: usize,
        rows: usize,
        stride: usize,
        owner: Box<dyn Send + Sync>,
    ) -> io::Result<Self> {
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
        if stride == 0 {
            return Err(invalid("foreign rows of zero bytes".into()));
        }
        let need = rows.checked_mul(stride).ok_or_else(|| invalid("foreign region size overflows".into()))?;
        if need > len {
            return Err(invalid(format!("{rows} rows of {stride} bytes do not fit in a buffer of {len} bytes")));
        }
        if u32::try_from(rows).is_err() {
            return Err(invalid(format!("{rows} rows: slots are 32-bit")));
        }
        let backing = Backing::Foreign(Foreign { base, len: need, _owner: owner });
        Ok(Self::with_map(backing, rows, stride, stride, None))
    }

    fn with_map(map: Backing, rows: usize, row_bytes: usize, stride: usize, shared: Option<SharedFile>) -> Self {
        let leases = (0..rows).map(|_| AtomicU32::new(0)).collect();
        PrimaryRegion { backing: map, rows, row_bytes, stride, leases, shared }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes of a block (the meaningful part of a row).
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// Distance between rows: in the region's own mappings, `row_bytes` rounded up to
    /// [`DIRECT_ALIGN`] (and rows aligned to it, as `O_DIRECT` needs); in a foreign region, what
    /// its owner laid out (see [`PrimaryRegion::rows_direct_aligned`]).
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// The path of a shared region's file.
    pub fn shared_path(&self) -> Option<&Path> {
        self.shared.as_ref().map(|s| s.path.as_path())
    }

    /// The base address and length of the rows' memory, for registering it with the kernel
    /// (io_uring fixed buffers). `None` for an empty region.
    pub fn mapping(&self) -> Option<(NonNull<u8>, usize)> {
        Some((self.backing.base()?, self.backing.len()))
    }

    /// True when every row starts on a `DIRECT_ALIGN` boundary and is a whole number of
    /// `DIRECT_ALIGN` bytes: what `O_DIRECT` transfers of whole rows need. Always true for the
    /// region's own mappings; a foreign region may not be.
    pub fn rows_direct_aligned(&self) -> bool {
        let base = self.backing.base().map_or(0, |b| b.as_ptr() as usize);
        base % DIRECT_ALIGN == 0 && self.stride % DIRECT_ALIGN == 0
    }

    /// Leases row `slot`. The lease keeps the region alive and is released on drop.
    pub fn lease(self: &Arc<Self>, slot: SlotId, access: Access) -> Result<Lease, LeaseError> {
        let cell = self.leases.get(slot.index()).ok_or(LeaseError::OutOfRange)?;
        let acquired = match access {
            Access::Write => cell.compare_exchange(0, WRITER, Ordering::Acquire, Ordering::Relaxed).is_ok(),
            Access::Read => {
                cell.fetch_update(Ordering::Acquire, Ordering::Relaxed, |n| (n < WRITER - 1).then(|| n + 1)).is_ok()
            }
        };
        if !acquired {
            return Err(LeaseError::Busy);
        }
        Ok(Lease { region: Arc::clone(self), slot: slot.0, access })
    }

    fn release(&self, slot: u32, access: Access) {
        let cell = &self.leases[slot as usize];
        match access {
            Access::Write => cell.store(0, Ordering::Release),
            Access::Read => {
                cell.fetch_sub(1, Ordering::Release);
            }
        }
    }

    /// Start of row `slot`; the caller checked `slot < rows` (so the map exists).
    fn row_ptr(&self, slot: u32) -> *mut u8 {
        let base = self.backing.base().map_or(std::ptr::null_mut(), NonNull::as_ptr);
        // `slot < rows` and `rows * stride` is at most the memory's length, so the offset stays
        // inside it; `wrapping_add` keeps this function itself free of unsafe.
        base.wrapping_add(slot as usize * self.stride)
    }

    /// Raw pointer to row `slot` for an engine that copies into it with its own means (a GPU
    /// copy engine). Valid while the region lives.
    ///
    /// # Safety
    ///
    /// The caller must not touch the row while any [`Lease`] on it may exist: in the engine's
    /// protocol, only between `prepare_store` and `complete_store` (writing) or between
    /// `prepare_load` and `complete_load` (reading) of a key in that slot.
    pub unsafe fn row_ptr_unleased(&self, slot: SlotId) -> Option<NonNull<u8>> {
        (slot.index() < self.rows).then(|| self.row_ptr(slot.0)).and_then(NonNull::new)
    }
}

impl Drop for PrimaryRegion {
    /// A shared region removes its file, still holding its lock, and only if the path still
    /// names that file (not one put in its place since).
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            let same = match (std::fs::symlink_metadata(&shared.path), shared.file.metadata()) {
                (Ok(at_path), Ok(ours)) => (at_path.dev(), at_path.ino()) == (ours.dev(), ours.ino()),
                _ => false,
            };
            if same {
                let _ = std::fs::remove_file(&shared.path);
            }
        }
    }
}

/// Access to one row, released on drop. Read leases are shared, write leases exclusive.
pub struct Lease {
    region: Arc<PrimaryRegion>,
    slot: u32,
    access: Access,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("slot", &self.slot).field("access", &self.access).finish()
    }
}

impl Lease {
    /// The leased slot.
    pub fn slot(&self) -> SlotId {
        SlotId(self.slot)
    }

    /// The access granted.
    pub fn access(&self) -> Access {
        self.access
    }

    /// The whole row (`stride` bytes, of which the first `row_bytes` are the block).
    pub fn as_slice(&self) -> &[u8] {
        let len = self.region.stride;
        if len == 0 {
            return &[];
        }
        // SAFETY: the row lies inside the live memory (`slot < rows`, checked by `lease`;
        // `self.region` keeps its mapping, or the owner of foreign memory, alive; a shared
        // region's file is never shrunk by a region, and no other process may truncate it, see
        // `PrimaryRegion::shared`). Within this process the lease excludes every writer but
        // this lease's own `&mut` borrow. Other processes are not excluded by the lease: they
        // reach the row through a shared region's file or a foreign region's owner, and the
        // engine's protocol, which `shared` and `foreign` document as their condition, keeps
        // them off a leased row. So no one mutates the row while the slice lives.
        unsafe { std::slice::from_raw_parts(self.region.row_ptr(self.slot), len) }
    }

    /// The whole row, writable. `None` for a read lease.
    pub fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        let len = self.region.stride;
        if self.access != Access::Write {
            return None;
        }
        if len == 0 {
            return Some(&mut []);
        }
        // SAFETY: as in `as_slice` (the same condition keeps other processes off the row); a
        // write lease is exclusive in this process (no other lease on this row exists), and
        // `&mut self` makes this the only borrow of it.
        Some(unsafe { std::slice::from_raw_parts_mut(self.region.row_ptr(self.slot), len) })
    }

    /// The block part of the row (`row_bytes`).
    pub fn block(&self) -> &[u8] {
        &self.as_slice()[..self.region.row_bytes]
    }

    /// Row pointer for handing to the kernel (read into / write from). Valid while the lease
    /// lives; the kernel may write through it only under a write lease.
    pub fn as_ptr(&self) -> *mut u8 {
        self.region.row_ptr(self.slot)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.region.release(self.slot, self.access);
    }
}

/// Row access for in-memory tiers. Copies go through leases; a row leased elsewhere (which the
/// engine's protocol excludes) is left alone rather than raced, and the copy is refused
/// ([`RowRefused`]), so the tier fails that key.
#[derive(Debug, Clone)]
pub struct RegionRows(pub Arc<PrimaryRegion>);

impl RowIo for RegionRows {
    fn row_bytes(&self) -> usize {
        self.0.row_bytes
    }

    fn read_row(&self, slot: SlotId, dst: &mut [u8]) -> Result<(), RowRefused> {
        let lease = self.0.lease(slot, Access::Read).map_err(|_| RowRefused)?;
        let n = dst.len().min(self.0.row_bytes);
        dst[..n].copy_from_slice(&lease.block()[..n]);
        Ok(())
    }

    fn write_row(&self, slot: SlotId, src: &[u8]) -> Result<(), RowRefused> {
        let mut lease = self.0.lease(slot, Access::Write).map_err(|_| RowRefused)?;
        let n = src.len().min(self.0.row_bytes);
        let row = lease.as_mut_slice().ok_or(RowRefused)?;
        row[..n].copy_from_slice(&src[..n]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_page_aligned_and_leased() {
        let region = Arc::new(PrimaryRegion::anonymous(3, 100).unwrap());
        assert_eq!(region.stride(), 4096);
        let (base, len) = region.mapping().unwrap();
        assert_eq!(base.as_ptr() as usize % DIRECT_ALIGN, 0);
        assert_eq!(len, 3 * 4096);
        let mut w = region.lease(SlotId(1), Access::Write).unwrap();
        assert_eq!(w.as_ptr() as usize - base.as_ptr() as usize, 4096);
        w.as_mut_slice().unwrap()[..3].copy_from_slice(b"abc");
        assert_eq!(region.lease(SlotId(1), Access::Read).unwrap_err(), LeaseError::Busy);
        assert_eq!(region.lease(SlotId(1), Access::Write).unwrap_err(), LeaseError::Busy);
        drop(w);
        let r1 = region.lease(SlotId(1), Access::Read).unwrap();
        let r2 = region.lease(SlotId(1), Access::Read).unwrap();
        assert_eq!(r1.access(), Access::Read);
        assert_eq!(&r2.block()[..3], b"abc");
        assert_eq!(r2.block().len(), 100);
        assert_eq!(region.lease(SlotId(1), Access::Write).unwrap_err(), LeaseError::Busy);
        drop((r1, r2));
        assert!(region.lease(SlotId(1), Access::Write).is_ok());
        assert_eq!(region.lease(SlotId(3), Access::Read).unwrap_err(), LeaseError::OutOfRange);
    }

    /// Issue 11, item 15: rows take a whole stride (a 1-byte block takes 4096 bytes), and a
    /// region the kernel will not map, or whose size overflows, says what size it asked for
    /// (it used to say only "Cannot allocate memory").
    #[test]
    #[cfg_attr(miri, ignore = "miri cannot make a mapping fail for its size")]
    fn a_region_too_large_names_its_size() {
        assert_eq!(PrimaryRegion::stride_for(1), Some(4096));
        assert_eq!(PrimaryRegion::stride_for(4097), Some(8192));
        assert_eq!(PrimaryRegion::mapping_len(3, 1), Some(3 * 4096));
        assert_eq!(PrimaryRegion::mapping_len(usize::MAX / 4096, 4096), None);
        let e = PrimaryRegion::anonymous(usize::MAX / 2, 1).unwrap_err();
        assert!(e.to_string().contains(&format!("{} rows of 1 bytes", usize::MAX / 2)), "{e}");
        // 1 PiB: more than this machine has, under the kernel's default overcommit heuristic.
        match PrimaryRegion::anonymous(1 << 38, 4096) {
            Err(e) => {
                let text = e.to_string();
                assert!(text.starts_with("cannot map 1125899906842624 bytes (1048576.0 GiB)"), "{text}");
                assert!(text.contains(&format!("{} rows of 4096 bytes", 1u64 << 38)), "{text}");
            }
            Ok(_) => eprintln!("skipped: this kernel mapped 1 PiB (overcommit_memory = 1?)"),
        }
    }

    #[test]
    fn empty_regions_do_not_map() {
        let region = Arc::new(PrimaryRegion::anonymous(0, 4096).unwrap());
        assert!(region.mapping().is_none());
        let region = Arc::new(PrimaryRegion::anonymous(2, 0).unwrap());
        let lease = region.lease(SlotId(0), Access::Read).unwrap();
        assert!(lease.as_slice().is_empty());
    }

    #[test]
    fn region_rows_copy_through_leases() {
        let region = Arc::new(PrimaryRegion::anonymous(2, 8).unwrap());
        let rows = RegionRows(region.clone());
        rows.write_row(SlotId(0), b"12345678").unwrap();
        let mut out = [0u8; 8];
        rows.read_row(SlotId(0), &mut out).unwrap();
        assert_eq!(&out, b"12345678");
        let busy = region.lease(SlotId(0), Access::Write).unwrap();
        assert_eq!(rows.write_row(SlotId(0), b"xxxxxxxx"), Err(RowRefused), "refused, not raced");
        assert_eq!(rows.read_row(SlotId(0), &mut out), Err(RowRefused));
        drop(busy);
        rows.read_row(SlotId(0), &mut out).unwrap();
        assert_eq!(&out, b"12345678");
        assert_eq!(rows.read_row(SlotId(2), &mut out), Err(RowRefused), "out of range");
    }

    /// Issue 11, item 7: a memory tier whose row copy is refused (the row is leased by another
    /// operation) fails that key, store and load alike, instead of reporting bytes it never
    /// moved; the other keys of the job go through.
    #[test]
    fn a_memory_tier_fails_the_key_whose_row_is_refused() {
        use kvtier_core::{Completions, Job, JobId, MemoryTier, OffloadKey, ReqContext, SecondaryTier, TierLookup};
        let region = Arc::new(PrimaryRegion::anonymous(2, 8).unwrap());
        let mut tier = MemoryTier::new(Some(Arc::new(RegionRows(region.clone()))));
        let keys = [OffloadKey::from_bytes(&[1, 1, 1, 1]).unwrap(), OffloadKey::from_bytes(&[2, 2, 2, 2]).unwrap()];
        let slots = [SlotId(0), SlotId(1)];
        let req = ReqContext::new(1);
        let mut done = Completions::new();
        let mut outcomes = |tier: &mut MemoryTier| {
            done.clear();
            tier.poll_finished(&mut done);
            let result = *done.iter().next().unwrap();
            done.key_outcomes(&result).map_or_else(|| vec![result.success; 2], <[bool]>::to_vec)
        };

        let busy = region.lease(SlotId(1), Access::Write).unwrap();
        tier.submit_store(Job { id: JobId(1), req, keys: &keys, slots: &slots });
        assert_eq!(outcomes(&mut tier), [true, false], "the refused row's key fails");
        assert_eq!(tier.lookup(&keys[1], req), TierLookup::Miss, "nothing is kept for it");
        drop(busy);

        tier.insert(keys[1], &[7; 8]);
        let busy = region.lease(SlotId(1), Access::Read).unwrap();
        tier.submit_load(Job { id: JobId(2), req, keys: &keys, slots: &slots });
        assert_eq!(outcomes(&mut tier), [true, false], "a load into a leased row fails its key");
        drop(busy);
        tier.submit_load(Job { id: JobId(3), req, keys: &keys, slots: &slots });
        assert_eq!(outcomes(&mut tier), [true, true]);
        assert_eq!(region.lease(SlotId(1), Access::Read).unwrap().block(), [7; 8]);
    }

    /// Leases handed between threads: a writer fills row 0 under write leases while a reader
    /// checks it under read leases (never a torn row), and each thread also owns a row of its
    /// own. Under miri (`.ci/run`'s miri step, on the anonymous mapping) this checks the
    /// lease protocol's memory ordering: a row written under one lease and read under a later
    /// one is a data race unless release and acquire pair up.
    #[test]
    fn leases_order_row_accesses_across_threads() {
        let rounds: u8 = if cfg!(miri) { 20 } else { 250 };
        let region = Arc::new(PrimaryRegion::anonymous(3, 64).unwrap());
        let writer = {
            let region = Arc::clone(&region);
            std::thread::spawn(move || {
                for round in 1..=rounds {
                    loop {
                        if let Ok(mut lease) = region.lease(SlotId(0), Access::Write) {
                            lease.as_mut_slice().unwrap().fill(round);
                            break;
                        }
                        std::thread::yield_now();
                    }
                    let mut own = region.lease(SlotId(1), Access::Write).unwrap();
                    own.as_mut_slice().unwrap()[..64].fill(round);
                }
            })
        };
        let reader = {
            let region = Arc::clone(&region);
            std::thread::spawn(move || {
                let mut last = 0;
                while last < rounds {
                    if let Ok(lease) = region.lease(SlotId(0), Access::Read) {
                        let row = lease.as_slice();
                        assert!(row.iter().all(|&b| b == row[0]), "torn row");
                        assert!(row[0] >= last, "rows only move forward");
                        last = row[0];
                    }
                    let mut own = region.lease(SlotId(2), Access::Write).unwrap();
                    own.as_mut_slice().unwrap()[0] = last;
                    std::thread::yield_now();
                }
            })
        };
        writer.join().unwrap();
        reader.join().unwrap();
        let rows = RegionRows(Arc::clone(&region));
        let mut out = [0u8; 64];
        for slot in 0..3 {
            rows.read_row(SlotId(slot), &mut out).unwrap();
            assert_eq!(out[0], rounds, "row {slot}");
        }
        // A raw row pointer matches the lease's, inside the mapping.
        // SAFETY: only compared, never dereferenced; no lease is held.
        let raw = unsafe { region.row_ptr_unleased(SlotId(2)) }.unwrap();
        assert_eq!(raw.as_ptr(), region.lease(SlotId(2), Access::Read).unwrap().as_ptr());
        // SAFETY: as above.
        assert!(unsafe { region.row_ptr_unleased(SlotId(3)) }.is_none());
    }

    /// Memory lent by its owner: rows at the owner's address and stride, the owner dropped with
    /// the region (after its last lease), and sizes that do not fit refused.
    #[test]
    fn foreign_rows_live_in_the_owners_memory() {
        struct Owner(Vec<u8>, Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Owner {
            fn drop(&mut self) {
                self.1.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut owner = Box::new(Owner(vec![0u8; 3 * 100 + 7], dropped.clone()));
        let base = NonNull::new(owner.0.as_mut_ptr()).unwrap();
        let len = owner.0.len();
        // SAFETY: the Vec's heap buffer stays put while `owner` (moved into the region) lives,
        // and nothing else touches it.
        let region = Arc::new(unsafe { PrimaryRegion::foreign(base, len, 3, 100, owner) }.unwrap());
        assert_eq!((region.rows(), region.row_bytes(), region.stride()), (3, 100, 100));
        assert_eq!(region.mapping(), Some((base, 300)));
        assert!(!region.rows_direct_aligned());
        let rows = RegionRows(region.clone());
        rows.write_row(SlotId(2), &[9u8; 100]).unwrap();
        let lease = region.lease(SlotId(2), Access::Read).unwrap();
        assert_eq!(lease.as_ptr() as usize - base.as_ptr() as usize, 200);
        assert!(lease.block().iter().all(|&b| b == 9));
        assert_eq!(region.lease(SlotId(3), Access::Read).unwrap_err(), LeaseError::OutOfRange);
        drop((region, rows));
        assert!(!dropped.load(Ordering::SeqCst), "a lease keeps the owner alive");
        drop(lease);
        assert!(dropped.load(Ordering::SeqCst));

        let mut small = vec![0u8; 64];
        let base = NonNull::new(small.as_mut_ptr()).unwrap();
        for (rows, stride) in [(2, 33), (1, 0), (usize::MAX, 2)] {
            // SAFETY: refused before anything is touched.
            let err = unsafe { PrimaryRegion::foreign(base, 64, rows, stride, Box::new(())) }.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{rows} x {stride}");
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "miri cannot map files (the anonymous mapping of the other tests works)")]
    fn shared_region_is_visible_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.shm");
        let region = Arc::new(PrimaryRegion::shared(&path, 2, 4096, FileMode::default()).unwrap());
        RegionRows(region.clone()).write_row(SlotId(1), &[7u8; 4096]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 8192 + SHARED_TRAILER_LEN);
        assert!(bytes[4096..8192].iter().all(|&b| b == 7));
        assert!(bytes[8192..].starts_with(TRAILER_MAGIC));
        drop(region);
        assert!(!path.exists());
    }
}

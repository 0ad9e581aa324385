//! [`SimDisk`]: an in-memory file system with a crash model.
//!
//! A namespace of directories and files (a `BTreeMap` from path to entry, so listings and the
//! crash walk have one order), files being inodes that several names may share (hard links;
//! `rename` moves a name, never rewrites an inode). Paths are compared by component, as the
//! kernel resolves them (`a//b` is `a/b`); `/` and the empty path always exist.
//!
//! # Crash model
//!
//! [`SimDisk::crash`] is a power cut. The namespace (creations, renames, removals) is
//! journaled: every name operation that returned survives. File *data* survives only if it was
//! made durable: a file written and `fdatasync`ed (a store with `sync`, or
//! [`Vfs::write_new_synced`]) keeps its bytes. Every other file is "dirty"; for each dirty inode
//! the disk draws, from its seed, one fate:
//!
//! | fate | probability |
//! |---|---:|
//! | intact (the page cache reached the disk in time) | 40 % |
//! | gone: every name of it is removed (its creation never reached the journal) | 15 % |
//! | empty: length 0 (the classic delayed-allocation outcome) | 15 % |
//! | truncated at a random length | 15 % |
//! | torn: one random 4 KiB page of it is zeros | 15 % |
//!
//! A file that was durable (created synced, or synced since) and then written in place at some
//! offsets (extent stores without `sync`) keeps its name and length; each range written since
//! its last sync draws its own fate, after the whole-file fates above:
//!
//! | fate of a range written in place | probability |
//! |---|---:|
//! | intact | 40 % |
//! | lost: the range reads as zeros | 30 % |
//! | torn: one random 4 KiB page of it is zeros | 30 % |
//!
//! After the crash every surviving byte is durable, the disk's process id changes, every lock
//! the crashed "process" held is released (as the kernel releases a dead process's locks: its
//! open markers, and so its temp files, are stale), and every executor of the old process is
//! dead: its ops do nothing and complete `Cancelled`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use kvtier_fs::vfs::{DirEntry, FileLock, Identity, Vfs};

use kvtier_fs::rng::SplitMix64;

/// The first simulated process id; each crash adds one.
const FIRST_PID: u32 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Dir,
    File(u64),
}

#[derive(Debug)]
struct Inode {
    data: Vec<u8>,
    /// Every byte is on disk, but for the `dirty` ranges.
    durable: bool,
    /// Ranges written in place since the file was last durable (`start..end`).
    dirty: Vec<(usize, usize)>,
    links: u32,
    /// When its data last changed, on the disk's clock (see [`State::tick`]).
    mtime: u64,
}

/// Counters of what crashes did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CrashStats {
    /// Crashes so far.
    pub crashes: u64,
    /// Dirty files that survived intact.
    pub intact: u64,
    /// Dirty files whose names were lost.
    pub lost: u64,
    /// Dirty files left empty.
    pub emptied: u64,
    /// Dirty files truncated.
    pub truncated: u64,
    /// Dirty files with a zeroed page.
    pub torn: u64,
    /// Ranges written in place (extents) that survived intact.
    pub ranges_intact: u64,
    /// Ranges written in place that were lost (read as zeros).
    pub ranges_lost: u64,
    /// Ranges written in place with a zeroed page.
    pub ranges_torn: u64,
}

#[derive(Debug)]
struct State {
    entries: BTreeMap<PathBuf, Entry>,
    inodes: BTreeMap<u64, Inode>,
    next_ino: u64,
    next_seq: u64,
    /// The disk's clock: one tick per data change, so modification times order the changes
    /// (what `read_dir` reports as a file's `modified`: this many nanoseconds after the epoch).
    clock: u64,
    generation: u32,
    o_direct: bool,
    rng: SplitMix64,
    crash_stats: CrashStats,
    /// Locks held ([`Vfs::create_locked`], [`Vfs::lock_shared`]); a crash releases them all.
    locks: Vec<LockEntry>,
    next_lock: u64,
}

/// One lock a [`SimLock`] holds.
#[derive(Debug, Clone, Copy)]
struct LockEntry {
    id: u64,
    ino: u64,
    exclusive: bool,
}

/// A lock on a [`SimDisk`] file; dropping it releases the lock.
#[derive(Debug)]
struct SimLock {
    state: Arc<Mutex<State>>,
    id: u64,
    ino: u64,
}

impl FileLock for SimLock {
    fn held_elsewhere(&self) -> io::Result<bool> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Ok(s.locks.iter().any(|l| l.ino == self.ino && l.id != self.id))
    }
}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.locks.retain(|l| l.id != self.id);
    }
}

/// A handle on an in-memory disk; clones share it. See the module docs.
#[derive(Debug, Clone)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

fn err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn is_root(path: &Path) -> bool {
    path.parent().is_none() || path.as_os_str().is_empty()
}

impl State {
    /// The next tick of the disk's clock.
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn entry(&self, path: &Path) -> Option<Entry> {
        if is_root(path) {
            return Some(Entry::Dir);
        }
        self.entries.get(path).copied()
    }

    /// `Ok` when `path`'s parent is a directory; `ENOENT` or `ENOTDIR` otherwise.
    fn parent_ok(&self, path: &Path) -> io::Result<()> {
        let Some(parent) = path.parent() else {
            return Err(err(libc::EEXIST));
        };
        match self.entry(parent) {
            Some(Entry::Dir) => Ok(()),
            Some(Entry::File(_)) => Err(err(libc::ENOTDIR)),
            None => match self.ancestor_file(parent) {
                true => Err(err(libc::ENOTDIR)),
                false => Err(err(libc::ENOENT)),
            },
        }
    }

    fn ancestor_file(&self, path: &Path) -> bool {
        path.ancestors().any(|a| matches!(self.entry(a), Some(Entry::File(_))))
    }

    fn unlink(&mut self, path: &Path) {
        if let Some(Entry::File(ino)) = self.entries.remove(path) {
            if let Some(inode) = self.inodes.get_mut(&ino) {
                inode.links -= 1;
                if inode.links == 0 {
                    self.inodes.remove(&ino);
                }
            }
        }
    }

    fn create_file(&mut self, path: &Path, data: Vec<u8>, durable: bool) -> io::Result<()> {
        self.parent_ok(path)?;
        if self.entry(path).is_some() {
            return Err(err(libc::EEXIST));
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let mtime = self.tick();
        self.inodes.insert(ino, Inode { data, durable, dirty: Vec::new(), links: 1, mtime });
        self.entries.insert(path.to_path_buf(), Entry::File(ino));
        Ok(())
    }

    fn file(&self, path: &Path) -> io::Result<&Inode> {
        match self.entry(path) {
            Some(Entry::File(ino)) => self.inodes.get(&ino).ok_or_else(|| err(libc::EIO)),
            Some(Entry::Dir) => Err(err(libc::EISDIR)),
            None if self.ancestor_file(path) => Err(err(libc::ENOTDIR)),
            None => Err(err(libc::ENOENT)),
        }
    }

    fn file_mut(&mut self, path: &Path) -> io::Result<&mut Inode> {
        match self.entry(path) {
            Some(Entry::File(ino)) => self.inodes.get_mut(&ino).ok_or_else(|| err(libc::EIO)),
            Some(Entry::Dir) => Err(err(libc::EISDIR)),
            None => Err(err(libc::ENOENT)),
        }
    }

    fn create_dir_all(&mut self, path: &Path) -> io::Result<()> {
        let mut missing = Vec::new();
        for a in path.ancestors() {
            match self.entry(a) {
                Some(Entry::Dir) => break,
                Some(Entry::File(_)) => return Err(err(libc::ENOTDIR)),
                None => missing.push(a.to_path_buf()),
            }
        }
        for dir in missing.into_iter().rev() {
            self.entries.insert(dir, Entry::Dir);
        }
        Ok(())
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        let Some(Entry::File(ino)) = self.entry(from) else {
            return Err(match self.entry(from) {
                Some(Entry::Dir) => err(libc::EISDIR),
                _ => err(libc::ENOENT),
            });
        };
        self.parent_ok(to)?;
        match self.entry(to) {
            Some(Entry::Dir) => return Err(err(libc::EISDIR)),
            Some(Entry::File(_)) => self.unlink(to),
            None => {}
        }
        self.entries.remove(from);
        self.entries.insert(to.to_path_buf(), Entry::File(ino));
        Ok(())
    }
}

impl Default for SimDisk {
    fn default() -> Self {
        SimDisk::new(0)
    }
}

impl SimDisk {
    /// An empty disk whose crashes draw from `seed`. `O_DIRECT` is supported.
    pub fn new(seed: u64) -> Self {
        let state = State {
            entries: BTreeMap::new(),
            inodes: BTreeMap::new(),
            next_ino: 1,
            next_seq: 1,
            clock: 0,
            generation: 0,
            o_direct: true,
            rng: SplitMix64::new(seed ^ 0xd15c_d15c_d15c_d15c),
            crash_stats: CrashStats::default(),
            locks: Vec::new(),
            next_lock: 0,
        };
        SimDisk { state: Arc::new(Mutex::new(state)) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; recover the state if a test thread did.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether [`Vfs::probe_o_direct`] answers that `O_DIRECT` works (it does by default).
    pub fn set_o_direct_supported(&self, supported: bool) {
        self.lock().o_direct = supported;
    }

    /// The current process generation (0 before the first crash).
    pub fn generation(&self) -> u32 {
        self.lock().generation
    }

    /// The simulated process id of the current generation (named in temp files).
    pub fn pid(&self) -> u32 {
        FIRST_PID + self.generation()
    }

    /// A power cut: see the module docs. Returns the crash's counts.
    pub fn crash(&self) -> CrashStats {
        let mut s = self.lock();
        let before = s.crash_stats;
        s.generation += 1;
        // The crashed process's locks die with it.
        s.locks.clear();
        s.crash_stats.crashes += 1;
        // One fate per dirty inode, drawn in path order (the first name of each inode).
        let mut seen = Vec::new();
        let names: Vec<(PathBuf, u64)> = s
            .entries
            .iter()
            .filter_map(|(p, e)| match e {
                Entry::File(ino) => Some((p.clone(), *ino)),
                Entry::Dir => None,
            })
            .collect();
        for (_, ino) in &names {
            if seen.contains(ino) || s.inodes.get(ino).is_none_or(|i| i.durable) {
                continue;
            }
            seen.push(*ino);
            let fate = s.rng.below(100);
            let len = s.inodes[ino].data.len() as u64;
            let cut = s.rng.below(len.max(1));
            let page = s.rng.below(len.div_ceil(4096).max(1));
            let st = &mut *s;
            let inode = st.inodes.get_mut(ino).expect("present");
            match fate {
                0..40 => st.crash_stats.intact += 1,
                40..55 => {
                    st.crash_stats.lost += 1;
                    let gone: Vec<PathBuf> = names.iter().filter(|(_, i)| i == ino).map(|(p, _)| p.clone()).collect();
                    for p in gone {
                        st.unlink(&p);
                    }
                }
                55..70 => {
                    st.crash_stats.emptied += 1;
                    inode.data.clear();
                }
                70..85 => {
                    st.crash_stats.truncated += 1;
                    inode.data.truncate(cut as usize);
                }
                _ => {
                    st.crash_stats.torn += 1;
                    let start = (page as usize * 4096).min(inode.data.len());
                    let end = (start + 4096).min(inode.data.len());
                    inode.data[start..end].fill(0);
                }
            }
        }
        // Then each range written in place into a durable file, in inode and write order.
        let inos: Vec<u64> = s.inodes.iter().filter(|(_, i)| !i.dirty.is_empty()).map(|(&n, _)| n).collect();
        for ino in inos {
            let st = &mut *s;
            let inode = st.inodes.get_mut(&ino).expect("present");
            for (start, end) in std::mem::take(&mut inode.dirty) {
                let (start, end) = (start.min(inode.data.len()), end.min(inode.data.len()));
                let fate = st.rng.below(100);
                let page = st.rng.below(((end - start).div_ceil(4096) as u64).max(1)) as usize;
                match fate {
                    0..40 => st.crash_stats.ranges_intact += 1,
                    40..70 => {
                        st.crash_stats.ranges_lost += 1;
                        inode.data[start..end].fill(0);
                    }
                    _ => {
                        st.crash_stats.ranges_torn += 1;
                        let at = (start + page * 4096).min(end);
                        inode.data[at..(at + 4096).min(end)].fill(0);
                    }
                }
            }
        }
        for inode in s.inodes.values_mut() {
            inode.durable = true;
        }
        let after = s.crash_stats;
        CrashStats {
            crashes: 1,
            intact: after.intact - before.intact,
            lost: after.lost - before.lost,
            emptied: after.emptied - before.emptied,
            truncated: after.truncated - before.truncated,
            torn: after.torn - before.torn,
            ranges_intact: after.ranges_intact - before.ranges_intact,
            ranges_lost: after.ranges_lost - before.ranges_lost,
            ranges_torn: after.ranges_torn - before.ranges_torn,
        }
    }

    /// Totals of every crash so far.
    pub fn crash_stats(&self) -> CrashStats {
        self.lock().crash_stats
    }

    /// Every file's path (in path order).
    pub fn files(&self) -> Vec<PathBuf> {
        let s = self.lock();
        s.entries.iter().filter(|(_, e)| matches!(e, Entry::File(_))).map(|(p, _)| p.clone()).collect()
    }

    /// A 64-bit digest of the whole disk (names, kinds and bytes), for determinism checks.
    pub fn digest(&self) -> u64 {
        let s = self.lock();
        let mut h = Fnv::default();
        for (path, e) in &s.entries {
            h.bytes(path.as_os_str().as_encoded_bytes());
            match e {
                Entry::Dir => h.bytes(b"/"),
                Entry::File(ino) => {
                    let inode = &s.inodes[ino];
                    h.bytes(&(inode.data.len() as u64).to_le_bytes());
                    h.bytes(&inode.data);
                }
            }
        }
        h.0
    }

    // ---- What the executor does (each call is one atomic step of an op). ----

    fn take_lock(&self, s: &mut State, ino: u64, exclusive: bool) -> Box<dyn FileLock> {
        let id = s.next_lock;
        s.next_lock += 1;
        s.locks.push(LockEntry { id, ino, exclusive });
        Box::new(SimLock { state: Arc::clone(&self.state), id, ino })
    }

    /// Whether `generation`'s process is still alive (not crashed).
    pub(crate) fn alive(&self, generation: u32) -> bool {
        self.lock().generation == generation
    }

    /// Creates a fresh temp file for `final_path` holding `data` (durable if `sync`), creating
    /// missing parent directories; returns its path.
    pub(crate) fn write_temp(
        &self,
        generation: u32,
        final_path: &Path,
        data: Vec<u8>,
        sync: bool,
    ) -> io::Result<PathBuf> {
        let mut s = self.lock();
        if s.generation != generation {
            return Err(err(libc::ESRCH));
        }
        if let Err(e) = s.parent_ok(final_path) {
            if e.raw_os_error() != Some(libc::ENOENT) {
                return Err(e);
            }
            let parent = final_path.parent().ok_or_else(|| err(libc::EINVAL))?;
            s.create_dir_all(parent)?;
        }
        let pid = FIRST_PID + s.generation;
        loop {
            let seq = s.next_seq;
            s.next_seq += 1;
            let temp = kvtier_fs::tmpname::temp_path_for(final_path, pid, seq);
            if s.entry(&temp).is_none() {
                s.create_file(&temp, data, sync)?;
                return Ok(temp);
            }
        }
    }

    /// Renames `temp` onto `final_path`; on failure removes `temp`.
    pub(crate) fn publish(&self, generation: u32, temp: &Path, final_path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        if s.generation != generation {
            return Err(err(libc::ESRCH));
        }
        let r = s.rename(temp, final_path);
        if r.is_err() {
            s.unlink(temp);
        }
        r
    }

    /// Removes `path` if it is a file (a dead generation removes nothing).
    pub(crate) fn discard(&self, generation: u32, path: &Path) {
        let mut s = self.lock();
        if s.generation == generation && matches!(s.entry(path), Some(Entry::File(_))) {
            s.unlink(path);
        }
    }

    /// The inode of the file at `path`, for positioned I/O ([`SimDisk::write_at`],
    /// [`SimDisk::read_at`]): what opening it yields.
    pub(crate) fn open(&self, path: &Path) -> io::Result<u64> {
        match self.lock().entry(path) {
            Some(Entry::File(ino)) => Ok(ino),
            Some(Entry::Dir) => Err(err(libc::EISDIR)),
            None => Err(err(libc::ENOENT)),
        }
    }

    /// Writes `data` at `offset` of inode `ino` (extending it if need be); with `sync`, the
    /// whole file becomes durable (`fdatasync`), otherwise the range is dirty.
    pub(crate) fn write_at(&self, generation: u32, ino: u64, offset: u64, data: &[u8], sync: bool) -> io::Result<()> {
        let mut s = self.lock();
        if s.generation != generation {
            return Err(err(libc::ESRCH));
        }
        let now = s.tick();
        let inode = s.inodes.get_mut(&ino).ok_or_else(|| err(libc::EBADF))?;
        inode.mtime = now;
        let start = usize::try_from(offset).map_err(|_| err(libc::EFBIG))?;
        let end = start + data.len();
        if inode.data.len() < end {
            inode.data.resize(end, 0);
        }
        inode.data[start..end].copy_from_slice(data);
        if sync {
            inode.durable = true;
            inode.dirty.clear();
        } else if inode.durable {
            inode.dirty.push((start, end));
        }
        Ok(())
    }

    /// Up to `len` bytes at `offset` of inode `ino` (fewer past its end).
    pub(crate) fn read_at(&self, generation: u32, ino: u64, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let s = self.lock();
        if s.generation != generation {
            return Err(err(libc::ESRCH));
        }
        let inode = s.inodes.get(&ino).ok_or_else(|| err(libc::EBADF))?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(inode.data.len());
        Ok(inode.data[start..(start.saturating_add(len)).min(inode.data.len())].to_vec())
    }

    /// The bytes of the file at `path`.
    pub(crate) fn read_file(&self, generation: u32, path: &Path) -> io::Result<Vec<u8>> {
        let s = self.lock();
        if s.generation != generation {
            return Err(err(libc::ESRCH));
        }
        s.file(path).map(|i| i.data.clone())
    }
}

/// FNV-1a, 64 bits.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    /// Mixes `bytes` in.
    pub fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// Mixes a `u64` in.
    pub fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
}

impl Vfs for SimDisk {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.lock().file(path).map(|i| i.data.clone())
    }

    fn read_identified(&self, path: &Path) -> io::Result<(Vec<u8>, Identity)> {
        let s = self.lock();
        let inode = s.file(path)?;
        let Some(Entry::File(ino)) = s.entry(path) else { return Err(err(libc::EIO)) };
        Ok((inode.data.clone(), Identity { dev: 0, ino }))
    }

    /// Nothing runs on a thread of its own over a simulated disk: the tier's background work
    /// advances at each poll.
    fn background_threads(&self) -> bool {
        false
    }

    fn write_new_synced(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.lock().create_file(path, bytes.to_vec(), true)
    }

    fn write(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut s = self.lock();
        let now = s.tick();
        match s.file_mut(path) {
            Ok(inode) => {
                inode.mtime = now;
                inode.data = bytes.to_vec();
                inode.durable = false;
                inode.dirty.clear();
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => s.create_file(path, bytes.to_vec(), false),
            Err(e) => Err(e),
        }
    }

    fn set_len(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut s = self.lock();
        let now = s.tick();
        let inode = s.file_mut(path)?;
        inode.mtime = now;
        inode.data.resize(usize::try_from(len).map_err(|_| err(libc::EFBIG))?, 0);
        inode.durable = false;
        inode.dirty.clear();
        Ok(())
    }

    fn len(&self, path: &Path) -> io::Result<u64> {
        self.lock().file(path).map(|i| i.data.len() as u64)
    }

    fn read_at(&self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let s = self.lock();
        let data = &s.file(path)?.data;
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }

    /// As an extent store: in place, durable with `sync`, else a dirty range (see the crash
    /// model).
    fn write_at(&self, path: &Path, offset: u64, bytes: &[u8], sync: bool) -> io::Result<()> {
        let (generation, ino) = {
            let s = self.lock();
            match s.entry(path) {
                Some(Entry::File(ino)) => (s.generation, ino),
                Some(Entry::Dir) => return Err(err(libc::EISDIR)),
                None => return Err(err(libc::ENOENT)),
            }
        };
        SimDisk::write_at(self, generation, ino, offset, bytes, sync)
    }

    fn create_sized(&self, path: &Path, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| err(libc::EFBIG))?;
        self.lock().create_file(path, vec![0; len], true)
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn std::any::Any + Send + Sync>> {
        let mut s = self.lock();
        let Some(Entry::File(ino)) = s.entry(path) else { return Err(err(libc::ENOENT)) };
        // A lock of a crashed process died with it (see `crash`).
        if s.locks.iter().any(|l| l.ino == ino) {
            return Err(err(libc::EWOULDBLOCK));
        }
        Ok(Box::new(self.take_lock(&mut s, ino, true)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.lock().rename(from, to)
    }

    fn hard_link(&self, original: &Path, link: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let Some(Entry::File(ino)) = s.entry(original) else {
            return Err(err(libc::ENOENT));
        };
        s.parent_ok(link)?;
        if s.entry(link).is_some() {
            return Err(err(libc::EEXIST));
        }
        s.entries.insert(link.to_path_buf(), Entry::File(ino));
        if let Some(inode) = s.inodes.get_mut(&ino) {
            inode.links += 1;
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        match s.entry(path) {
            Some(Entry::File(_)) => {
                s.unlink(path);
                Ok(())
            }
            Some(Entry::Dir) => Err(err(libc::EISDIR)),
            None => Err(err(libc::ENOENT)),
        }
    }

    /// Atomic here: the name is looked up and unlinked under one lock.
    fn remove_if_same(&self, path: &Path, read: Identity) -> io::Result<bool> {
        let mut s = self.lock();
        match s.entry(path) {
            Some(Entry::File(ino)) if Identity { dev: 0, ino } == read => {
                s.unlink(path);
                Ok(true)
            }
            Some(Entry::Dir) => Err(err(libc::EISDIR)),
            _ => Ok(false),
        }
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.parent_ok(path)?;
        if s.entry(path).is_some() {
            return Err(err(libc::EEXIST));
        }
        s.entries.insert(path.to_path_buf(), Entry::Dir);
        Ok(())
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.lock().create_dir_all(path)
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        let s = self.lock();
        match s.entry(path) {
            Some(Entry::Dir) => {}
            Some(Entry::File(_)) => return Err(err(libc::ENOTDIR)),
            None => return Err(err(libc::ENOENT)),
        }
        let mut out = Vec::new();
        // Descendants of `path` sort right after it (paths compare by component).
        for (p, e) in s.entries.range(path.to_path_buf()..) {
            if p.as_path() == path {
                continue;
            }
            if !p.starts_with(path) {
                break;
            }
            if p.parent() == Some(path) {
                let name: OsString = p.file_name().map(|n| n.to_os_string()).unwrap_or_default();
                let file = match e {
                    Entry::File(ino) => s.inodes.get(ino).map(|i| (*ino, i)),
                    Entry::Dir => None,
                };
                out.push(DirEntry {
                    name,
                    is_dir: *e == Entry::Dir,
                    is_file: *e != Entry::Dir,
                    len: file.map_or(0, |(_, i)| i.data.len() as u64),
                    modified: file.map(|(_, i)| std::time::UNIX_EPOCH + std::time::Duration::from_nanos(i.mtime)),
                    identity: file.map(|(ino, _)| Identity { dev: 0, ino }),
                });
            }
        }
        Ok(out)
    }

    fn exists(&self, path: &Path) -> bool {
        self.lock().entry(path).is_some()
    }

    fn is_file(&self, path: &Path) -> bool {
        matches!(self.lock().entry(path), Some(Entry::File(_)))
    }

    fn probe_o_direct(&self, dir: &Path) -> io::Result<bool> {
        let s = self.lock();
        match s.entry(dir) {
            Some(Entry::Dir) => Ok(s.o_direct),
            Some(Entry::File(_)) => Err(err(libc::ENOTDIR)),
            None => Err(err(libc::ENOENT)),
        }
    }

    fn create_locked(&self, path: &Path, bytes: &[u8]) -> io::Result<Box<dyn FileLock>> {
        let mut s = self.lock();
        s.create_file(path, bytes.to_vec(), true)?;
        let Some(Entry::File(ino)) = s.entry(path) else { return Err(err(libc::EIO)) };
        Ok(self.take_lock(&mut s, ino, true))
    }

    fn lock_shared(&self, path: &Path) -> io::Result<Box<dyn FileLock>> {
        let mut s = self.lock();
        if s.entry(path).is_none() {
            s.create_file(path, Vec::new(), true)?;
        }
        let ino = match s.entry(path) {
            Some(Entry::File(ino)) => ino,
            Some(Entry::Dir) => return Err(err(libc::EISDIR)),
            None => return Err(err(libc::ENOENT)),
        };
        if s.locks.iter().any(|l| l.ino == ino && l.exclusive) {
            return Err(err(libc::EAGAIN));
        }
        Ok(self.take_lock(&mut s, ino, false))
    }

    fn is_locked(&self, path: &Path) -> io::Result<bool> {
        let s = self.lock();
        match s.entry(path) {
            Some(Entry::File(ino)) => Ok(s.locks.iter().any(|l| l.ino == ino)),
            Some(Entry::Dir) => Err(err(libc::EISDIR)),
            None => Err(err(libc::ENOENT)),
        }
    }

    /// Every file becomes durable.
    fn sync_fs(&self, _dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        for inode in s.inodes.values_mut() {
            inode.durable = true;
            inode.dirty.clear();
        }
        Ok(())
    }

    fn process_id(&self) -> u32 {
        self.pid()
    }

    /// Every [`SimDisk::crash`] is a power cut: a new boot.
    fn boot_id(&self) -> Option<String> {
        Some(format!("sim-boot-{}", self.generation()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_operations() {
        let d = SimDisk::new(1);
        let root = Path::new("/r");
        assert_eq!(d.write(&root.join("a"), b"x").unwrap_err().raw_os_error(), Some(libc::ENOENT));
        d.create_dir_all(&root.join("x/y")).unwrap();
        d.write(&root.join("x/y/f"), b"abc").unwrap();
        assert!(d.is_file(Path::new("/r/x//y/f")));
        assert_eq!(d.len(&root.join("x/y/f")).unwrap(), 3);
        d.hard_link(&root.join("x/y/f"), &root.join("x/g")).unwrap();
        d.write(&root.join("x/y/h"), b"new").unwrap();
        d.rename(&root.join("x/y/h"), &root.join("x/y/f")).unwrap();
        assert_eq!(d.read(&root.join("x/y/f")).unwrap(), b"new");
        assert_eq!(d.read(&root.join("x/g")).unwrap(), b"abc");
        let names: Vec<_> = d.read_dir(&root.join("x")).unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["g", "y"]);
        assert_eq!(d.read(&root.join("x/g/z")).unwrap_err().raw_os_error(), Some(libc::ENOTDIR));
        assert_eq!(d.create_dir_all(&root.join("x/g/z")).unwrap_err().raw_os_error(), Some(libc::ENOTDIR));
        assert_eq!(d.rename(&root.join("x/g"), &root.join("x/y")).unwrap_err().raw_os_error(), Some(libc::EISDIR));
        d.remove_file(&root.join("x/g")).unwrap();
        assert!(!d.exists(&root.join("x/g")));
    }

    #[test]
    fn ranges_written_in_place_draw_their_own_fates() {
        let d = SimDisk::new(11);
        d.create_dir_all(Path::new("/r")).unwrap();
        d.write_new_synced(Path::new("/r/dev"), &vec![1u8; 200 * 8192]).unwrap();
        let (g, ino) = (d.generation(), d.open(Path::new("/r/dev")).unwrap());
        for i in 0..200u64 {
            d.write_at(g, ino, i * 8192, &[2u8; 8192], false).unwrap();
        }
        d.write_at(g, ino, 0, &[3u8; 8192], true).unwrap();
        d.write_at(g, ino, 8192, &[4u8; 8192], false).unwrap();
        assert_eq!(d.read_at(g, ino, 200 * 8192 - 10, 100).unwrap().len(), 10, "short past the end");
        let c = d.crash();
        assert_eq!((c.intact, c.lost, c.emptied, c.truncated, c.torn), (0, 0, 0, 0, 0), "the file itself survives");
        assert_eq!(c.ranges_intact + c.ranges_lost + c.ranges_torn, 1, "one range written since the sync");
        let bytes = d.read(Path::new("/r/dev")).unwrap();
        assert_eq!(bytes.len(), 200 * 8192);
        assert!(bytes[..8192].iter().all(|&b| b == 3) && bytes[16384..].iter().all(|&b| b == 2), "synced data");
        assert!(d.write_at(g, ino, 0, &[0], false).is_err(), "a dead generation writes nothing");
    }

    #[test]
    fn crashes_spare_synced_files_and_kill_the_process() {
        let d = SimDisk::new(7);
        d.create_dir_all(Path::new("/r")).unwrap();
        let g = d.generation();
        for i in 0..200 {
            let t = d.write_temp(g, &PathBuf::from(format!("/r/s{i}")), vec![i as u8; 9000], true).unwrap();
            d.publish(g, &t, &PathBuf::from(format!("/r/s{i}"))).unwrap();
            let t = d.write_temp(g, &PathBuf::from(format!("/r/u{i}")), vec![i as u8; 9000], false).unwrap();
            d.publish(g, &t, &PathBuf::from(format!("/r/u{i}"))).unwrap();
        }
        let pid = d.pid();
        let marker = d.create_locked(Path::new("/r/marker"), b"x").unwrap();
        let shared = d.lock_shared(Path::new("/r/share")).unwrap();
        let other = d.lock_shared(Path::new("/r/share")).unwrap();
        assert!(d.is_locked(Path::new("/r/marker")).unwrap() && shared.held_elsewhere().unwrap());
        drop(other);
        assert!(!shared.held_elsewhere().unwrap(), "a dropped lock is released");
        assert!(d.lock_shared(Path::new("/r/marker")).is_err(), "an exclusive lock conflicts");
        let c = d.crash();
        assert!(!d.alive(g) && d.pid() != pid);
        assert!(!d.is_locked(Path::new("/r/marker")).unwrap(), "the crashed process's locks are released");
        drop((marker, shared));
        assert_eq!(c.intact + c.lost + c.emptied + c.truncated + c.torn, 200, "{c:?}");
        assert!(c.lost > 0 && c.torn > 0 && c.intact > 0, "{c:?}");
        for i in 0..200 {
            assert_eq!(d.read(&PathBuf::from(format!("/r/s{i}"))).unwrap(), vec![i as u8; 9000]);
        }
        // The dead generation can do nothing; a second crash changes nothing (all durable now).
        assert!(d.write_temp(g, Path::new("/r/z"), vec![1], false).is_err());
        let before = d.digest();
        let again = d.crash();
        assert_eq!(again.intact + again.lost + again.emptied + again.truncated + again.torn, 0);
        assert_eq!(d.digest(), before);
    }
}

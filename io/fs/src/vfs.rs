//! The file-system operations the FS tier does itself, outside its [`crate::Executor`]: the
//! run config (`config.json`), the rank directory, the start-up scan (with stale temp-file
//! removal), the `O_DIRECT` probe and probe-on-miss. Block I/O never goes through here.
//! A disk engine (`kvtier-regions`) does its own metadata I/O here too: creating and locking
//! its device file, its header, and the reads of its recovery ([`Vfs::read_at`],
//! [`Vfs::write_at`], [`Vfs::create_sized`], [`Vfs::device_size`], [`Vfs::lock`]).
//!
//! [`HostFs`] is the real file system (what [`crate::FsTier::open`] uses). A simulated disk
//! (the `kvtier-io-sim` crate) implements [`Vfs`] over its in-memory namespace, so the tier,
//! opened with [`crate::FsTier::open_on`], sees exactly the files its sim executor wrote; the
//! executor conformance suite reads and damages files through the same trait.

use std::any::Any;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::SystemTime;

use crate::files::{create_dir_all, create_new, FileMode};

/// One entry of [`Vfs::read_dir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's file name.
    pub name: OsString,
    /// A directory.
    pub is_dir: bool,
    /// A regular file.
    pub is_file: bool,
    /// A regular file's length (0 for anything else).
    pub len: u64,
    /// A regular file's last modification (`None` for anything else, or where unknown).
    pub modified: Option<SystemTime>,
    /// A regular file's identity (its inode), `None` for anything else.
    pub identity: Option<Identity>,
}

/// A file's identity: the device and inode a name resolved to. Two names with the same identity
/// are the same file; a name whose identity changed was replaced (renamed over, recreated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The device.
    pub dev: u64,
    /// The inode number.
    pub ino: u64,
}

/// A file system as the FS tier and the conformance suite see it. Paths are absolute (or
/// relative to the process's working directory, for [`HostFs`]). [`HostFs`] creates files and
/// directories with its [`FileMode`] (a simulated disk keeps no permissions).
pub trait Vfs: Send + Sync + std::fmt::Debug {
    /// The whole content of the file at `path`.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// The whole content of the file at `path`, and which file that was.
    fn read_identified(&self, path: &Path) -> io::Result<(Vec<u8>, Identity)>;
    /// Creates `path` (it must not exist: `AlreadyExists`), writes `bytes` and syncs them.
    fn write_new_synced(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Creates or truncates `path` and writes `bytes`, in place (no sync).
    fn write(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Sets the length of the existing file at `path` (truncating or zero-extending it).
    fn set_len(&self, path: &Path, len: u64) -> io::Result<()>;
    /// The length of the file at `path`.
    fn len(&self, path: &Path) -> io::Result<u64>;
    /// The size of the file or block device at `path` (a device's `len` is 0).
    fn device_size(&self, path: &Path) -> io::Result<u64> {
        self.len(path)
    }
    /// Reads `buf.len()` bytes at `offset` of the file at `path`; returns how many were read
    /// (fewer only at the end of the file).
    fn read_at(&self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes `bytes` at `offset` of the existing file at `path`, in place (extending it if
    /// need be), then with `sync` makes the file's data durable (`fdatasync`).
    fn write_at(&self, path: &Path, offset: u64, bytes: &[u8], sync: bool) -> io::Result<()>;
    /// Creates the file `path` (it must not exist: `AlreadyExists`; [`HostFs`]'s file mode,
    /// owner-only by default), `len` bytes of zeros, its space allocated and written (so later `O_DIRECT` writes overwrite
    /// blocks in place), and durable.
    fn create_sized(&self, path: &Path, len: u64) -> io::Result<()>;
    /// An exclusive lock on the file at `path` (`flock`), held while the returned guard lives;
    /// `WouldBlock` while anyone else (another process, or another guard) holds it.
    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>>;
    /// Renames `from` onto `to` (replacing a file at `to`).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes `link` a second name of the file at `original`.
    fn hard_link(&self, original: &Path, link: &Path) -> io::Result<()>;
    /// Removes the file at `path`.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes the file at `path` only if it is still the file `read` (see
    /// [`crate::files::remove_if_same`]); whether it did.
    fn remove_if_same(&self, path: &Path, read: Identity) -> io::Result<bool>;
    /// Creates the directory `path` (its parent must exist).
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Creates `path` and every missing ancestor.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// The entries of directory `path`, in an unspecified order.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>>;
    /// Something (file or directory) exists at `path`.
    fn exists(&self, path: &Path) -> bool;
    /// A regular file exists at `path`.
    fn is_file(&self, path: &Path) -> bool;
    /// Whether files in directory `dir` can be written with `O_DIRECT` (see
    /// [`crate::direct::probe_o_direct`]).
    fn probe_o_direct(&self, dir: &Path) -> io::Result<bool>;
    /// Creates `path` (it must not exist: `AlreadyExists`), takes an exclusive lock on it,
    /// writes `bytes` and syncs them. The lock is held until the returned [`FileLock`] is
    /// dropped, or the process dies; other names of the file (hard links) share it.
    fn create_locked(&self, path: &Path, bytes: &[u8]) -> io::Result<Box<dyn FileLock>>;
    /// Opens `path`, creating it (empty) if need be, and takes a shared lock on it, held until
    /// the returned [`FileLock`] is dropped or the process dies.
    fn lock_shared(&self, path: &Path) -> io::Result<Box<dyn FileLock>>;
    /// Whether anyone (another process, or another open of the file in this one) holds a lock
    /// on the file at `path`. Takes no lock.
    fn is_locked(&self, path: &Path) -> io::Result<bool>;
    /// Makes every file written on the file system holding `dir` durable (`syncfs`).
    fn sync_fs(&self, dir: &Path) -> io::Result<()>;
    /// Whether work the tier does in the background (start-up verification) may run on a
    /// thread of its own; `false` for a simulated disk, where nothing may depend on thread
    /// scheduling: the tier then does that work a little at each poll, deterministically.
    fn background_threads(&self) -> bool {
        true
    }
    /// This process's id, as temp-file names and open markers carry it.
    fn process_id(&self) -> u32 {
        std::process::id()
    }
    /// Identifies the current boot of the machine (a crash or reboot changes it), if known:
    /// data not synced before a process died is still there (the page cache) unless the boot
    /// changed since.
    fn boot_id(&self) -> Option<String> {
        fs::read_to_string("/proc/sys/kernel/random/boot_id").ok().map(|s| s.trim().to_string())
    }
}

const DIRECT_ALIGN_U64: u64 = crate::direct::DIRECT_ALIGN as u64;

/// A lock held on a file (see [`Vfs::create_locked`], [`Vfs::lock_shared`]); dropping it
/// releases the lock.
pub trait FileLock: Send + Sync + std::fmt::Debug {
    /// Whether anyone else (another process, or another open of the file in this one) holds
    /// a lock on the same file too.
    fn held_elsewhere(&self) -> io::Result<bool>;
}

/// The host's file system, through `std::fs`. Files and directories it creates get its
/// [`FileMode`] (owner-only by default).
///
/// Locks are open-file-description record locks (`fcntl(F_OFD_SETLK)`) on the whole file:
/// like `flock`, they belong to one open of the file, conflict with every other open (two
/// tiers of one process included), are released by the kernel when the process dies, and work
/// across PID namespaces (containers sharing a volume); unlike `flock`, they can be tested
/// without being taken (`F_OFD_GETLK`), so a test never gets in the way of the lock's owner.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostFs {
    mode: FileMode,
}

impl HostFs {
    /// The host's file system, creating files and directories with `mode`.
    pub fn new(mode: FileMode) -> Self {
        HostFs { mode }
    }
}

/// A lock [`HostFs`] holds: its open of the file.
#[derive(Debug)]
struct HostLock(fs::File);

impl FileLock for HostLock {
    fn held_elsewhere(&self) -> io::Result<bool> {
        use std::os::fd::AsFd;
        crate::sys::ofd_locked_elsewhere(self.0.as_fd())
    }
}

impl Vfs for HostFs {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn read_identified(&self, path: &Path) -> io::Result<(Vec<u8>, Identity)> {
        use std::io::Read;
        let mut f = fs::File::open(path)?;
        let meta = f.metadata()?;
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        f.read_to_end(&mut bytes)?;
        Ok((bytes, Identity { dev: meta.dev(), ino: meta.ino() }))
    }

    fn write_new_synced(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut f = create_new(path, self.mode)?;
        f.write_all(bytes)?;
        f.sync_all()
    }

    fn write(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(self.mode.file())
            .open(path)?
            .write_all(bytes)
    }

    fn set_len(&self, path: &Path, len: u64) -> io::Result<()> {
        fs::OpenOptions::new().write(true).open(path)?.set_len(len)
    }

    fn len(&self, path: &Path) -> io::Result<u64> {
        Ok(fs::metadata(path)?.len())
    }

    fn device_size(&self, path: &Path) -> io::Result<u64> {
        fs::File::open(path)?.seek(io::SeekFrom::End(0))
    }

    fn read_at(&self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let file = fs::File::open(path)?;
        let mut done = 0;
        while done < buf.len() {
            match file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    fn write_at(&self, path: &Path, offset: u64, bytes: &[u8], sync: bool) -> io::Result<()> {
        let file = fs::OpenOptions::new().write(true).open(path)?;
        file.write_all_at(bytes, offset)?;
        if sync {
            file.sync_data()?;
        }
        Ok(())
    }

    /// `fallocate`, then zeros written over the whole file with large `O_DIRECT` writes
    /// (buffered where the file system refuses `O_DIRECT`): a file only allocated holds
    /// *unwritten* extents, and on ext4 every `O_DIRECT` write into one must convert it, which
    /// cut a region engine's first-pass store throughput by a third (measured: 1.3-1.6 against
    /// 2.0-2.4 GB/s at 64 KiB to 1 MiB blocks).
    fn create_sized(&self, path: &Path, len: u64) -> io::Result<()> {
        use std::os::fd::AsFd;
        let file = fs::OpenOptions::new().write(true).create_new(true).mode(self.mode.file()).open(path)?;
        let made = (|| {
            crate::sys::fallocate(file.as_fd(), len).or_else(|e| match e.raw_os_error() {
                // A file system without fallocate: the writes below allocate.
                Some(libc::EOPNOTSUPP) => file.set_len(len),
                _ => Err(e),
            })?;
            let direct = fs::OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(path);
            let (out, chunk) = match direct {
                Ok(f) => (f, 8 << 20),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (file.try_clone()?, 1 << 20),
                Err(e) => return Err(e),
            };
            // A page-aligned, zeroed buffer (an anonymous mapping), as `O_DIRECT` needs.
            let zeros = memmap2::MmapMut::map_anon(chunk)?;
            let aligned = len / DIRECT_ALIGN_U64 * DIRECT_ALIGN_U64;
            let mut at = 0u64;
            while at < aligned {
                let n = (chunk as u64).min(aligned - at) as usize;
                out.write_all_at(&zeros[..n], at)?;
                at += n as u64;
            }
            if at < len {
                file.write_all_at(&zeros[..(len - at) as usize], at)?;
            }
            file.sync_all()
        })();
        if made.is_err() {
            // Ours: created above.
            let _ = fs::remove_file(path);
        }
        made
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        use std::os::fd::AsFd;
        let file = fs::File::open(path)?;
        if !crate::sys::lock_exclusive(file.as_fd(), false)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(Box::new(file))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn hard_link(&self, original: &Path, link: &Path) -> io::Result<()> {
        fs::hard_link(original, link)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn remove_if_same(&self, path: &Path, read: Identity) -> io::Result<bool> {
        crate::files::remove_if_same(path, read)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        fs::DirBuilder::new().mode(self.mode.dir()).create(path)
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        create_dir_all(path, self.mode)
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let (mut len, mut modified, mut identity) = (0, None, None);
            if kind.is_file() {
                // One `statx` per file (the scan's only cost beyond the listing). A file gone
                // since the listing is left out.
                let meta = match entry.metadata() {
                    Ok(meta) => meta,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                len = meta.len();
                modified = meta.modified().ok();
                identity = Some(Identity { dev: meta.dev(), ino: meta.ino() });
            }
            out.push(DirEntry {
                name: entry.file_name(),
                is_dir: kind.is_dir(),
                is_file: kind.is_file(),
                len,
                modified,
                identity,
            });
        }
        Ok(out)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn is_file(&self, path: &Path) -> bool {
        path.is_file()
    }

    fn probe_o_direct(&self, dir: &Path) -> io::Result<bool> {
        crate::direct::probe_o_direct(dir)
    }

    fn create_locked(&self, path: &Path, bytes: &[u8]) -> io::Result<Box<dyn FileLock>> {
        use std::os::fd::AsFd;
        let mut f = fs::OpenOptions::new().read(true).write(true).create_new(true).mode(self.mode.file()).open(path)?;
        let written =
            crate::sys::ofd_lock(f.as_fd(), true).and_then(|()| f.write_all(bytes)).and_then(|()| f.sync_all());
        if let Err(e) = written {
            let _ = fs::remove_file(path);
            return Err(e);
        }
        Ok(Box::new(HostLock(f)))
    }

    fn lock_shared(&self, path: &Path) -> io::Result<Box<dyn FileLock>> {
        use std::os::fd::AsFd;
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(self.mode.file())
            .open(path)?;
        crate::sys::ofd_lock(f.as_fd(), false)?;
        Ok(Box::new(HostLock(f)))
    }

    fn is_locked(&self, path: &Path) -> io::Result<bool> {
        use std::os::fd::AsFd;
        crate::sys::ofd_locked_elsewhere(fs::File::open(path)?.as_fd())
    }

    fn sync_fs(&self, dir: &Path) -> io::Result<()> {
        use std::os::fd::AsFd;
        crate::sys::syncfs(fs::File::open(dir)?.as_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calls a disk engine makes on its device file: created sized and owner-only,
    /// positioned reads and writes, and one lock holder at a time (`flock` locks belong to an
    /// open file, so a second guard is refused even in the same process).
    #[test]
    fn device_calls_on_the_host() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev");
        let host = HostFs::default();
        host.create_sized(&path, 1 << 20).unwrap();
        assert_eq!(host.create_sized(&path, 10).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        assert_eq!((host.len(&path).unwrap(), host.device_size(&path).unwrap()), (1 << 20, 1 << 20));
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        host.write_at(&path, 4096, b"hello", true).unwrap();
        let mut buf = [0u8; 7];
        assert_eq!(host.read_at(&path, 4095, &mut buf).unwrap(), 7);
        assert_eq!(&buf, b"\0hello\0");
        assert_eq!(host.read_at(&path, (1 << 20) - 3, &mut buf).unwrap(), 3, "short at the end");
        let guard = host.lock(&path).unwrap();
        assert_eq!(host.lock(&path).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        drop(guard);
        drop(host.lock(&path).unwrap());
        assert!(host.lock(&dir.path().join("missing")).is_err());
    }
}

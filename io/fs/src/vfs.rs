//! The file-system operations the FS tier does itself, outside its [`crate::Executor`]: the
//! run config (`config.json`), the rank directory, the start-up scan (with stale temp-file
//! removal), the `O_DIRECT` probe and probe-on-miss. Block I/O never goes through here.
//!
//! [`HostFs`] is the real file system (what [`crate::FsTier::open`] uses). A simulated disk
//! (the `kvtier-io-sim` crate) implements [`Vfs`] over its in-memory namespace, so the tier,
//! opened with [`crate::FsTier::open_on`], sees exactly the files its sim executor wrote; the
//! executor conformance suite reads and damages files through the same trait.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
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

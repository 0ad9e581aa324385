//! Files kvtier creates and opens.
//!
//! - **Who may read them.** [`FileMode`]: the permission bits of everything kvtier creates
//!   (block files and their temp files, directories, `config.json`, open markers, the
//!   shared-memory region). Owner-only by default: a KV block carries what a user typed (a
//!   prompt's KV cache can be turned back into its tokens). Every creation site takes its bits
//!   from here ([`create_dir_all`], [`create_new`], and the executors' own `open`/`mkdir`
//!   through [`crate::FileOp::mode`]).
//! - **Extent files.** The files a kernel executor opens for extent ops
//!   ([`crate::Target::Extent`], through [`crate::Executor::open_file`]): each is opened
//!   read-write twice when the executor uses `O_DIRECT` (once with it, for aligned transfers,
//!   once without, for the rest; a file cannot switch per transfer), once otherwise. Files stay
//!   open while the executor lives; an op holds an [`Arc`] of its file, so a file outlives
//!   every op on it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use crate::op::FileId;
use crate::vfs::Identity;

/// Creates `dir` and its missing ancestors as directories of `mode` ([`FileMode::dir`]), and
/// returns the directories this call created, outermost first (a directory another thread
/// creates meanwhile is not counted): a store that must make its rename durable syncs the
/// parent of each of them too. Directories that exist already are left as they are.
pub fn create_dirs(dir: &Path, mode: FileMode) -> io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    for at in dir.ancestors() {
        match std::fs::symlink_metadata(at) {
            // (A symbolic link to a directory is a directory here.)
            Ok(_) if at.is_dir() => break,
            // As `mkdir` says, and `std::fs::create_dir_all`: something else has the name.
            Ok(_) => return Err(io::Error::from_raw_os_error(libc::EEXIST)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(at.to_path_buf()),
            Err(e) => return Err(e),
        }
    }
    let mut created = Vec::with_capacity(missing.len());
    for at in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(mode.dir()).create(&at) {
            Ok(()) => created.push(at),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(created)
}

/// Removes the file at `path` only if it is still `read`, the file that was read (a corrupt
/// block, say), and reports whether it did. A stat then an unlink would race a writer that
/// renames a new file onto `path` in between, and remove that one; so the file at `path` is
/// first renamed aside, to a temp name of this process (swept at start-up if it dies here),
/// and only then looked at: if it is the one read, it is unlinked; if it is not, it goes
/// back under `path` (by a hard link, which fails rather than replace a file published there
/// meanwhile; that file is newer, and the one set aside is then removed). Readers may find
/// `path` missing for the few microseconds this takes, as during any removal.
///
/// # Errors
///
/// The file system's error from the rename or what follows (a file gone already is `Ok(false)`).
pub fn remove_if_same(path: &Path, read: Identity) -> io::Result<bool> {
    let aside = crate::tmpname::temp_path(path, crate::tmpname::next_seq());
    match std::fs::rename(path, &aside) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    let moved = std::fs::symlink_metadata(&aside)?;
    if (moved.dev(), moved.ino()) == (read.dev, read.ino) {
        std::fs::remove_file(&aside)?;
        return Ok(true);
    }
    let back = std::fs::hard_link(&aside, path);
    std::fs::remove_file(&aside)?;
    match back {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(false),
    }
}

/// Permission bits of the files kvtier creates; directories get the same bits plus search
/// (`x`) wherever reading is allowed (`0o640` -> `0o750`). The process's umask still applies,
/// as to every file a Unix process creates: a group-writable mode needs a umask that keeps
/// the group's write bit (e.g. `UMask=0007` in a systemd unit).
///
/// Only read and write bits, and always the owner's (kvtier reads and writes its own files):
/// `0o600` (the default, owner-only), `0o640` (a group may read), `0o660` (a group shares the
/// directory), `0o644`. Spelled in configuration files as an integer (TOML `0o640`) or a
/// string of octal digits (`"0640"`, `"640"`, `"0o640"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileMode(u16);

impl FileMode {
    /// Owner-only: `0o600` for files, `0o700` for directories.
    pub const OWNER_ONLY: FileMode = FileMode(0o600);

    /// The mode `bits` (see the type's docs for what is accepted).
    ///
    /// # Errors
    ///
    /// `InvalidInput`, naming the mode, for bits other than read and write, or without the
    /// owner's read and write.
    pub fn new(bits: u32) -> io::Result<FileMode> {
        if bits & !0o666 != 0 || bits & 0o600 != 0o600 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("file mode {bits:#o}: only read and write bits (at most 0o666), including the owner's (0o600)"),
            ));
        }
        Ok(FileMode(bits as u16))
    }

    /// The bits for a file.
    pub fn file(self) -> u32 {
        u32::from(self.0)
    }

    /// The bits for a directory: the file's, plus search wherever reading is allowed.
    pub fn dir(self) -> u32 {
        let bits = u32::from(self.0);
        bits | (bits & 0o444) >> 2
    }
}

impl Default for FileMode {
    /// [`FileMode::OWNER_ONLY`].
    fn default() -> Self {
        FileMode::OWNER_ONLY
    }
}

impl std::fmt::Display for FileMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl FromStr for FileMode {
    type Err = io::Error;

    /// Octal digits, with or without a leading `0` or `0o`.
    fn from_str(s: &str) -> io::Result<FileMode> {
        let digits = s.strip_prefix("0o").unwrap_or(s);
        match u32::from_str_radix(digits, 8) {
            Ok(bits) if !digits.is_empty() => FileMode::new(bits),
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, format!("file mode {s:?}: expected octal digits"))),
        }
    }
}

impl<'de> serde::Deserialize<'de> for FileMode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = FileMode;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a file mode: an integer (0o640) or a string of octal digits (\"0640\")")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<FileMode, E> {
                let bits = u32::try_from(v).map_err(|_| E::custom(format!("file mode {v:#o} is out of range")))?;
                FileMode::new(bits).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<FileMode, E> {
                let v = u64::try_from(v).map_err(|_| E::custom(format!("file mode {v} is negative")))?;
                self.visit_u64(v)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<FileMode, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `e` with `what` (the operation and its path: `"cannot create directory /x"`) in front of its
/// message, keeping its kind: an error a user can act on names what failed where.
pub fn annotate(e: io::Error, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// [`create_dirs`], when which directories it created does not matter.
pub fn create_dir_all(path: &Path, mode: FileMode) -> io::Result<()> {
    create_dirs(path, mode).map(drop)
}

/// Creates the file `path` (it must not exist: `AlreadyExists`) for writing, with `mode`.
pub fn create_new(path: &Path, mode: FileMode) -> io::Result<File> {
    OpenOptions::new().write(true).create_new(true).mode(mode.file()).open(path)
}

/// Most files one executor opens for extent ops.
pub const MAX_FILES: usize = 64;

/// One opened file.
#[derive(Debug)]
pub struct ExtentFile {
    buffered: File,
    direct: Option<File>,
}

impl ExtentFile {
    /// Opens the existing file at `path` read-write, and a second time with `O_DIRECT` if
    /// `o_direct`.
    pub fn open(path: &Path, o_direct: bool) -> io::Result<ExtentFile> {
        let open = |flags| OpenOptions::new().read(true).write(true).custom_flags(flags).open(path);
        let buffered = open(0)?;
        let direct = if o_direct { Some(open(libc::O_DIRECT)?) } else { None };
        Ok(ExtentFile { buffered, direct })
    }

    /// The descriptor for a transfer: the `O_DIRECT` one when there is one and the transfer is
    /// `aligned` (see [`crate::layout::BlockLayout::direct_ok`]).
    pub fn fd(&self, aligned: bool) -> BorrowedFd<'_> {
        match (&self.direct, aligned) {
            (Some(direct), true) => direct.as_fd(),
            _ => self.buffered.as_fd(),
        }
    }

    /// The buffered descriptor, and the `O_DIRECT` one if any (to register them with a ring).
    pub fn fds(&self) -> (BorrowedFd<'_>, Option<BorrowedFd<'_>>) {
        (self.buffered.as_fd(), self.direct.as_ref().map(|f| f.as_fd()))
    }
}

/// The files an executor opened, by [`FileId`] (their order of opening).
#[derive(Debug, Default)]
pub struct ExtentFiles {
    files: Vec<Arc<ExtentFile>>,
}

impl ExtentFiles {
    /// No file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens `path` (see [`ExtentFile::open`]) and gives it the next id.
    ///
    /// # Errors
    ///
    /// The open's error, or `Unsupported` beyond [`MAX_FILES`].
    pub fn open(&mut self, path: &Path, o_direct: bool) -> io::Result<FileId> {
        let id = self.next_id()?;
        self.files.push(Arc::new(ExtentFile::open(path, o_direct)?));
        Ok(id)
    }

    /// The id the next file gets, or `Unsupported` beyond [`MAX_FILES`].
    pub fn next_id(&self) -> io::Result<FileId> {
        if self.files.len() >= MAX_FILES {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("an executor opens at most {MAX_FILES} files for extent ops"),
            ));
        }
        Ok(FileId(self.files.len() as u32))
    }

    /// Adds an opened file under [`next_id`](Self::next_id).
    pub fn push(&mut self, file: ExtentFile) -> FileId {
        self.files.push(Arc::new(file));
        FileId(self.files.len() as u32 - 1)
    }

    /// File `id`.
    pub fn get(&self, id: FileId) -> Option<&Arc<ExtentFile>> {
        self.files.get(id.0 as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// Issue 11, item 27: what kvtier creates is owner-only unless configured otherwise;
    /// directories get search where reading is allowed; only read and write bits with the
    /// owner's are accepted, in every spelling configuration files use.
    #[test]
    fn file_modes_default_to_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!((FileMode::default().file(), FileMode::default().dir()), (0o600, 0o700));
        let group = FileMode::new(0o640).unwrap();
        assert_eq!((group.file(), group.dir(), group.to_string()), (0o640, 0o750, "0640".to_string()));
        assert_eq!(FileMode::new(0o666).unwrap().dir(), 0o777);
        for bad in [0o700, 0o400, 0o200, 0o1600, 0o4600, 0o000, 0o066] {
            assert!(FileMode::new(bad).is_err(), "{bad:o}");
        }
        for (text, bits) in [("0640", 0o640), ("640", 0o640), ("0o660", 0o660), ("600", 0o600)] {
            assert_eq!(text.parse::<FileMode>().unwrap().file(), bits, "{text}");
        }
        for bad in ["", "0o", "rw-r-----", "0x1a0", "0680", "-600"] {
            assert!(bad.parse::<FileMode>().is_err(), "{bad:?}");
        }
        let json = |text: &str| serde_json::from_str::<FileMode>(text).map(FileMode::file);
        assert_eq!(json("416").unwrap(), 0o640);
        assert_eq!(json("\"0640\"").unwrap(), 0o640);
        assert!(json("-1").is_err() && json("4294967296000").is_err() && json("\"0777\"").is_err());

        // Created with the bits asked for (under a umask that keeps them).
        let dir = tempfile::tempdir().unwrap();
        let mode_of = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        create_dir_all(&dir.path().join("a/b"), FileMode::default()).unwrap();
        assert_eq!((mode_of(&dir.path().join("a")), mode_of(&dir.path().join("a/b"))), (0o700, 0o700));
        create_new(&dir.path().join("a/b/f"), FileMode::default()).unwrap();
        assert_eq!(mode_of(&dir.path().join("a/b/f")), 0o600);
        assert_eq!(create_new(&dir.path().join("a/b/f"), group).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
    }

    #[test]
    fn created_directories_are_listed_outermost_first() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        assert_eq!(
            create_dirs(&deep, FileMode::default()).unwrap(),
            [dir.path().join("a"), dir.path().join("a/b"), deep.clone()]
        );
        assert!(create_dirs(&deep, FileMode::default()).unwrap().is_empty(), "nothing left to create");
        std::fs::write(dir.path().join("f"), b"").unwrap();
        assert!(create_dirs(&dir.path().join("f/x"), FileMode::default()).is_err());
        let e = create_dirs(&dir.path().join("f"), FileMode::default()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "a file where the directory goes");
    }

    /// A file replaced since it was read is never removed, and goes back where it was.
    #[test]
    fn only_the_file_that_was_read_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.bin");
        let identity = |p: &Path| {
            let m = std::fs::metadata(p).unwrap();
            Identity { dev: m.dev(), ino: m.ino() }
        };
        std::fs::write(&path, b"read").unwrap();
        let read = identity(&path);
        std::fs::write(dir.path().join("new"), b"new").unwrap();
        std::fs::rename(dir.path().join("new"), &path).unwrap();
        assert!(!remove_if_same(&path, read).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"new", "the replacement is back in place");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "nothing set aside is left");
        assert!(remove_if_same(&path, identity(&path)).unwrap());
        assert!(!path.exists());
        assert!(!remove_if_same(&path, read).unwrap(), "gone already");
    }

    #[test]
    fn files_open_existing_paths_only_and_get_ids_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = ExtentFiles::new();
        assert!(files.open(&dir.path().join("missing"), false).is_err());
        std::fs::write(dir.path().join("a"), [0u8; 8192]).unwrap();
        let a = files.open(&dir.path().join("a"), false).unwrap();
        let b = files.open(&dir.path().join("a"), false).unwrap();
        assert_eq!((a, b), (FileId(0), FileId(1)));
        let f = files.get(a).unwrap();
        assert_eq!(f.fd(true).as_raw_fd(), f.fd(false).as_raw_fd(), "buffered only");
        assert!(files.get(FileId(2)).is_none());
    }
}

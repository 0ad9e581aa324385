//! The files a kernel executor opens for extent ops ([`crate::Target::Extent`], through
//! [`crate::Executor::open_file`]): each is opened read-write twice when the executor uses
//! `O_DIRECT` (once with it, for aligned transfers, once without, for the rest; a file cannot
//! switch per transfer), once otherwise. Files stay open while the executor lives; an op holds
//! an [`Arc`] of its file, so a file outlives every op on it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::op::FileId;
use crate::vfs::Identity;

/// Creates `dir` and its missing ancestors, and returns the directories this call created,
/// outermost first (a directory another thread creates meanwhile is not counted): a store that
/// must make its rename durable syncs the parent of each of them too.
pub fn create_dirs(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    for at in dir.ancestors() {
        match std::fs::symlink_metadata(at) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(at.to_path_buf()),
            Err(e) => return Err(e),
        }
    }
    let mut created = Vec::with_capacity(missing.len());
    for at in missing.into_iter().rev() {
        match std::fs::create_dir(&at) {
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

    #[test]
    fn created_directories_are_listed_outermost_first() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        assert_eq!(create_dirs(&deep).unwrap(), [dir.path().join("a"), dir.path().join("a/b"), deep.clone()]);
        assert!(create_dirs(&deep).unwrap().is_empty(), "nothing left to create");
        std::fs::write(dir.path().join("f"), b"").unwrap();
        assert!(create_dirs(&dir.path().join("f/x")).is_err());
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

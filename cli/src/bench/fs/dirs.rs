//! Where `bench fs` runs: the scratch directory, the mount it lives on (a memory file system
//! would measure memory, not a disk) and the block device under it (`/proc/diskstats`).

use std::io;
use std::path::{Path, PathBuf};

/// A mount from `/proc/mounts`.
#[derive(Debug, Clone)]
pub(super) struct Mount {
    pub(super) source: String,
    pub(super) point: PathBuf,
    pub(super) fstype: String,
}

pub(super) fn is_memory_fs(fstype: &str) -> bool {
    matches!(fstype, "tmpfs" | "ramfs" | "devtmpfs")
}

/// Undoes `/proc/mounts`' octal escapes (`\040` for a space).
fn unescape_mount_field(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = b[i + 1..i + 4].iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
            out.push(v as u8);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount `path` lives on: the longest mount point that is a prefix of it (the last one
/// listed wins, as later mounts hide earlier ones).
pub(super) fn mount_of(path: &Path) -> Option<Mount> {
    let path = path.canonicalize().ok()?;
    let text = std::fs::read_to_string("/proc/mounts").ok()?;
    let mut best: Option<Mount> = None;
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(source), Some(point), Some(fstype)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let point = PathBuf::from(unescape_mount_field(point));
        if !path.starts_with(&point) {
            continue;
        }
        let longer = best.as_ref().is_none_or(|b| point.as_os_str().len() >= b.point.as_os_str().len());
        if longer {
            best = Some(Mount { source: unescape_mount_field(source), point, fstype: fstype.to_string() });
        }
    }
    best
}

/// The first of $TMPDIR (or /tmp), /var/tmp and the current directory that exists and is not
/// a memory file system; the current directory if none qualifies.
pub(super) fn default_dir() -> PathBuf {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let candidates = [std::env::temp_dir(), PathBuf::from("/var/tmp"), cwd.clone()];
    candidates
        .into_iter()
        .find(|dir| dir.is_dir() && mount_of(dir).is_some_and(|m| !is_memory_fs(&m.fstype)))
        .unwrap_or(cwd)
}

pub(super) fn make_scratch(base: &Path) -> io::Result<PathBuf> {
    std::fs::create_dir_all(base)?;
    let pid = std::process::id();
    for attempt in 0..100u32 {
        let name =
            if attempt == 0 { format!("kvtier-bench-fs.{pid}") } else { format!("kvtier-bench-fs.{pid}.{attempt}") };
        let path = base.join(name);
        match std::fs::create_dir(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("no free scratch directory name in {}", base.display())))
}

/// The `/proc/diskstats` name of the block device `source` (`/dev/vda`: `vda`; symlinks such as
/// `/dev/mapper/x` are resolved).
pub(super) fn device_name(source: &str) -> Option<String> {
    if !source.starts_with("/dev/") {
        return None;
    }
    let dev = Path::new(source).canonicalize().ok()?;
    Some(dev.file_name()?.to_str()?.to_string())
}

/// Bytes `dev` has read and written since boot (`/proc/diskstats` sectors are 512 bytes).
pub(super) fn disk_bytes(dev: Option<&str>) -> Option<(u64, u64)> {
    let dev = dev?;
    let text = std::fs::read_to_string("/proc/diskstats").ok()?;
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[2] != dev {
            return None;
        }
        Some((f[5].parse::<u64>().ok()? * 512, f[9].parse::<u64>().ok()? * 512))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_fields_are_unescaped() {
        assert_eq!(unescape_mount_field("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_mount_field("/plain"), "/plain");
    }
}

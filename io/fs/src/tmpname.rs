//! Temp-file names: unique per operation, recognizable after a crash; and the names of the
//! files open tiers keep in their rank directory.
//!
//! A store writes `{final}.{pid}.{seq:x}.tmp` next to its final path and renames it onto the
//! final path when complete. `pid` is the writing process and `seq` a process-wide counter
//! ([`next_seq`]), so no two operations of a process ever share a temp name (vLLM uses one
//! fixed suffix per thread: a stale temp file of a crashed run blocks that thread's later
//! writes of the same key). A process that dies mid-store leaves its temp file behind;
//! [`parse_temp`] gives the pid it was written by, and start-up removes it once no open tier
//! of that pid holds its marker's lock (see [`crate::tier::startup`]): liveness is a lock, never
//! a `kill(pid, 0)`, which is wrong across PID namespaces (a pid means another process in
//! another container) and cannot tell two tiers of one process apart.
//!
//! This module never touches the file system.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The suffix every temp file ends with.
pub const TEMP_SUFFIX: &str = ".tmp";

static SEQ: AtomicU64 = AtomicU64::new(0);

/// The next number of the process-wide temp-name sequence (never repeats within a process).
pub fn next_seq() -> u64 {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// The temp path of one store operation onto `final_path`: `{final_path}.{pid}.{seq:x}.tmp`, in
/// the same directory (so the publishing `rename` never crosses file systems).
pub fn temp_path(final_path: &Path, seq: u64) -> PathBuf {
    temp_path_for(final_path, std::process::id(), seq)
}

/// [`temp_path`] for process `pid` (a simulated process, say) instead of this one.
pub fn temp_path_for(final_path: &Path, pid: u32, seq: u64) -> PathBuf {
    let mut name = OsString::with_capacity(final_path.as_os_str().len() + 32);
    name.push(final_path.as_os_str());
    name.push(format!(".{pid}.{seq:x}{TEMP_SUFFIX}"));
    PathBuf::from(name)
}

/// The pid of the process that wrote temp file `name` (a file name, not a path), if `name` is
/// exactly `{stem}.{pid}.{seq}.tmp`: a non-empty stem, `pid` in decimal (1 to `i32::MAX`, no
/// sign, no leading zero) and `seq` in lowercase hexadecimal (1 to 16 digits). Anything else,
/// including a name that is not UTF-8, is not a temp file of ours.
pub fn parse_temp(name: &OsStr) -> Option<u32> {
    let name = std::str::from_utf8(name.as_bytes()).ok()?;
    let rest = name.strip_suffix(TEMP_SUFFIX)?;
    let (rest, seq) = rest.rsplit_once('.')?;
    let (stem, pid) = rest.rsplit_once('.')?;
    let seq_ok = (1..=16).contains(&seq.len()) && seq.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let pid_ok = !pid.is_empty() && !pid.starts_with('0') && pid.bytes().all(|b| b.is_ascii_digit());
    if stem.is_empty() || !seq_ok || !pid_ok {
        return None;
    }
    let pid: u32 = pid.parse().ok()?;
    (pid <= i32::MAX as u32).then_some(pid)
}

/// What an open FS tier's marker file in its rank directory is called, before
/// `{pid}.{n}` (see [`crate::tier`]).
pub const MARKER_PREFIX: &str = ".kvtier-open.";

/// The marker file `{MARKER_PREFIX}{pid}.{n}` for this process's `n`-th open tier.
pub fn marker_name(pid: u32, n: u64) -> String {
    format!("{MARKER_PREFIX}{pid}.{n:x}")
}

/// The pid of the process that wrote open marker `name` (a file name), if `name` is one:
/// [`MARKER_PREFIX`], a decimal pid, `.`, a hexadecimal counter.
pub fn parse_marker(name: &OsStr) -> Option<u32> {
    let rest = std::str::from_utf8(name.as_bytes()).ok()?.strip_prefix(MARKER_PREFIX)?;
    let (pid, n) = rest.split_once('.')?;
    let n_ok = (1..=16).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_hexdigit());
    let pid_ok = !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit());
    (n_ok && pid_ok).then(|| pid.parse().ok()).flatten()
}

/// The file every open tier of a rank directory holds a shared lock on, so that a tier can
/// tell whether it is alone there (see [`crate::tier`]: a block file is reused only then).
pub const SHARE_FILE: &str = ".kvtier-share";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_unique_and_parse_back() {
        let fin = Path::new("/x/abc/de_g0/abcdef.bin");
        let (a, b) = (next_seq(), next_seq());
        assert_ne!(a, b);
        let t = temp_path(fin, 0x1f);
        assert_eq!(t.parent(), fin.parent());
        let name = t.file_name().unwrap();
        assert_eq!(name.to_str().unwrap(), format!("abcdef.bin.{}.1f.tmp", std::process::id()));
        assert_eq!(parse_temp(name), Some(std::process::id()));
        assert_ne!(temp_path(fin, a), temp_path(fin, b));
    }

    #[test]
    fn only_the_exact_pattern_is_a_temp_name() {
        let ok = |s: &str| parse_temp(OsStr::new(s));
        assert_eq!(ok("h.bin.123.ff.tmp"), Some(123));
        assert_eq!(ok("h.123.0.tmp"), Some(123));
        assert_eq!(ok("h.bin.2147483647.0123456789abcdef.tmp"), Some(i32::MAX as u32));
        for bad in [
            "h.bin",
            "h.bin.tmp",
            ".123.ff.tmp",
            "h.bin.123.ff.tmp.x",
            "h.bin.123.FF.tmp",
            "h.bin.123..tmp",
            "h.bin..ff.tmp",
            "h.bin.0123.ff.tmp",
            "h.bin.0.ff.tmp",
            "h.bin.+12.ff.tmp",
            "h.bin.2147483648.ff.tmp",
            "h.bin.99999999999.ff.tmp",
            "h.bin.12.0123456789abcdef0.tmp",
            "h.bin_1234567.tmp",
            "h.bin.12.xyz.tmp",
        ] {
            assert_eq!(ok(bad), None, "{bad}");
        }
        assert_eq!(parse_temp(OsStr::from_bytes(b"h\xff.1.1.tmp")), None);
    }
}

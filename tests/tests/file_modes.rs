//! Issue 11, item 27: who may read the cache. Everything an FS tier creates (namespace and
//! rank directories, `config.json`, the open marker, block directories and block files) is
//! owner-only by default, through every executor that writes real files; a tier configured
//! with a `file_mode` creates with that mode instead.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use kvtier::config::{CacheConfig, ExecutorKind, FsConfig, TierConfig};
use kvtier::TieredCache;
use kvtier_core::{OffloadKey, ReqContext, StorePlan};
use kvtier_fs::files::FileMode;
use kvtier_fs::StorageFormat;

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// `root` and every directory and file under it, with its mode.
fn walk(root: &Path) -> Vec<(PathBuf, bool, u32)> {
    let mut out = vec![(root.to_path_buf(), true, mode_of(root))];
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let is_dir = path.is_dir();
            out.push((path.clone(), is_dir, mode_of(&path)));
            if is_dir {
                dirs.push(path);
            }
        }
    }
    out
}

/// The process's umask, from /proc (reading it with umask(2) would change it for a moment for
/// every thread).
fn umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Umask:")).expect("Umask in /proc/self/status");
    u32::from_str_radix(line.split_whitespace().nth(1).unwrap(), 8).unwrap()
}

/// Stores `n` blocks through an FS tier under `root` and shuts the cache down, leaving a
/// namespace with blocks (and, for the marker, checks it while the tier is open).
fn store_blocks(root: &Path, executor: ExecutorKind, format: StorageFormat, mode: Option<FileMode>) -> Vec<u32> {
    let mut fs = FsConfig::new(root);
    fs.executor = executor;
    fs.format = format;
    if let Some(mode) = mode {
        fs.file_mode = mode;
    }
    let text = "num_blocks = 8\nblock_bytes = 8192";
    let config = CacheConfig { tiers: vec![TierConfig::Fs(Box::new(fs))], ..CacheConfig::from_toml(text).unwrap() };
    let mut cache = TieredCache::new(&config).unwrap();
    let req = ReqContext::new(1);
    let keys: Vec<OffloadKey> = (0..4u8).map(|i| OffloadKey::new(&[i; 32], 0).unwrap()).collect();
    let mut plan = StorePlan::new();
    cache.engine().prepare_store(&keys, req, &mut plan).unwrap();
    cache.engine().complete_store(&plan.keys, req, true).unwrap();
    cache.engine().end_step();
    cache.engine().drain();
    cache.engine().end_step();
    // The open marker exists while the tier is open.
    let open: Vec<u32> = walk(root)
        .into_iter()
        .filter(|(p, _, _)| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".kvtier-open")))
        .map(|(_, _, m)| m)
        .collect();
    assert_eq!(open.len(), 1, "one open marker while the tier is open");
    cache.shutdown();
    open
}

fn check(executor: ExecutorKind, format: StorageFormat, mode: Option<FileMode>) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let markers = store_blocks(&root, executor, format, mode);
    let mode = mode.unwrap_or_default();
    let mask = umask();
    let (want_file, want_dir) = (mode.file() & !mask, mode.dir() & !mask);
    let what = format!("{executor:?}, {format:?}, file_mode {mode}, umask {mask:04o}");
    let found = walk(&root);
    let files = found.iter().filter(|(_, d, _)| !d).count();
    assert!(files >= 5, "{what}: 4 blocks and config.json written: {found:?}");
    assert!(found.iter().any(|(p, _, _)| p.ends_with("config.json")), "{what}");
    for (path, is_dir, got) in &found {
        let want = if *is_dir { want_dir } else { want_file };
        assert_eq!(*got, want, "{what}: {} has mode {got:04o}", path.display());
    }
    assert_eq!(markers, [want_file], "{what}: the open marker");
}

#[test]
fn an_fs_tier_creates_owner_only_by_default_threaded() {
    check(ExecutorKind::Threaded, StorageFormat::Native, None);
    check(ExecutorKind::Threaded, StorageFormat::Vllm, None);
}

#[test]
fn an_fs_tier_creates_owner_only_by_default_uring() {
    if let Err(e) = kvtier_io_uring::probe(false) {
        eprintln!("skipped: io_uring unavailable here ({e})");
        return;
    }
    check(ExecutorKind::Uring, StorageFormat::Native, None);
    check(ExecutorKind::Uring, StorageFormat::Vllm, None);
}

#[test]
fn an_fs_tier_creates_with_its_configured_mode() {
    let group = FileMode::new(0o640).unwrap();
    check(ExecutorKind::Threaded, StorageFormat::Native, Some(group));
    if kvtier_io_uring::probe(false).is_ok() {
        check(ExecutorKind::Uring, StorageFormat::Native, Some(group));
    }
}

//! The FS tier end to end on real directories, through `TieredCache` and the threaded
//! executor: restart, corruption, vLLM-format interchange, two processes sharing a directory,
//! and ENOSPC on a small loop-mounted ext4 image.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use kvtier::config::{CacheConfig, ExecutorKind, FsConfig, TierConfig};
use kvtier::{PrimaryRegion, TieredCache};
use kvtier_core::{LookupResult, OffloadKey, ReqContext, StorePlan};
use kvtier_fs::conformance::LoopMount;
use kvtier_fs::namespace::Layout;
use kvtier_fs::region::Access;
use kvtier_fs::{FsTier, StorageFormat};

const REQ: ReqContext = ReqContext::new(1);
const BLOCK: usize = 8192;

fn key(i: u64) -> OffloadKey {
    let mut hash = [0u8; 32];
    hash[..8].copy_from_slice(&i.to_be_bytes());
    hash[8..16].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    OffloadKey::new(&hash, (i % 2) as u32).unwrap()
}

/// The bytes block `i` holds: distinct per block and per position.
fn pattern(i: u64, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i as usize * 131 + j * 7 + j / 251) as u8).collect()
}

fn fs_config(root: &Path, format: StorageFormat) -> FsConfig {
    let mut fs = FsConfig::new(root);
    fs.executor = ExecutorKind::Threaded;
    fs.format = format;
    fs.model_name = Some("meta-llama/Llama-3.1-8B".into());
    fs
}

fn cache(root: &Path, slots: u32, format: StorageFormat, probe: bool) -> TieredCache {
    let mut fs = fs_config(root, format);
    fs.probe_on_miss = probe;
    cache_with(slots, fs)
}

fn cache_with(slots: u32, fs: FsConfig) -> TieredCache {
    let config = CacheConfig {
        num_blocks: slots,
        block_bytes: BLOCK,
        policy: Default::default(),
        promotion_deadline_steps: 0,
        events: true,
        shared_memory: None,
        shared_memory_mode: Default::default(),
        tiers: vec![TierConfig::Fs(Box::new(fs))],
    };
    TieredCache::new(&config).unwrap()
}

fn fill(region: &Arc<PrimaryRegion>, slot: kvtier_core::SlotId, bytes: &[u8]) {
    let mut lease = region.lease(slot, Access::Write).unwrap();
    lease.as_mut_slice().unwrap()[..bytes.len()].copy_from_slice(bytes);
}

fn read(region: &Arc<PrimaryRegion>, slot: kvtier_core::SlotId) -> Vec<u8> {
    region.lease(slot, Access::Read).unwrap().block().to_vec()
}

/// Stores blocks `ids` (filled with their patterns) and waits until every tier has them.
fn store(c: &mut TieredCache, ids: impl IntoIterator<Item = u64>) {
    let ids: Vec<u64> = ids.into_iter().collect();
    let keys: Vec<OffloadKey> = ids.iter().map(|&i| key(i)).collect();
    let mut plan = StorePlan::new();
    c.engine().prepare_store(&keys, REQ, &mut plan).unwrap();
    let region = c.region().clone();
    for (k, &slot) in plan.keys.iter().zip(&plan.slots) {
        let i = ids[keys.iter().position(|x| x == k).unwrap()];
        fill(&region, slot, &pattern(i, BLOCK));
    }
    c.engine().complete_store(&plan.keys, REQ, true).unwrap();
    c.engine().end_step();
    c.engine().drain();
    c.engine().end_step(); // handles the finished cascades (unpins)
}

/// Looks `i` up until it is ready (promoting it from disk), then checks its bytes.
fn promote_and_check(c: &mut TieredCache, i: u64) -> bool {
    for _ in 0..4 {
        match c.engine().lookup(&key(i), REQ) {
            LookupResult::Ready => {
                let (slot, _) = c.engine_ref().primary().find(&key(i)).unwrap();
                assert_eq!(read(c.region(), slot), pattern(i, BLOCK), "block {i} bytes");
                return true;
            }
            LookupResult::Miss => return false,
            LookupResult::Pending | LookupResult::Retry => {
                c.engine().end_step();
                c.engine().drain();
            }
        }
    }
    panic!("block {i} never became ready");
}

fn fs_tier(c: &mut TieredCache) -> &mut FsTier {
    c.engine().tier_mut::<FsTier>(0).unwrap()
}

#[test]
fn store_evict_promote_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    for format in [StorageFormat::Native, StorageFormat::Vllm] {
        let root = dir.path().join(format!("{format:?}"));
        {
            let mut c = cache(&root, 8, format, false);
            store(&mut c, 0..8);
            store(&mut c, 8..16); // evicts 0..8 from the primary; they stay on disk
            assert_eq!(fs_tier(&mut c).len(), 16);
            for i in 0..8 {
                assert!(promote_and_check(&mut c, i), "block {i} from disk");
            }
        }
        // A second cache on the same directory finds everything the first stored.
        let mut c = cache(&root, 8, format, false);
        assert_eq!(fs_tier(&mut c).startup().blocks_indexed, 16);
        for i in (0..16).rev() {
            assert!(promote_and_check(&mut c, i), "block {i} after restart");
        }
        assert!(!promote_and_check(&mut c, 99));
    }
}

#[test]
fn corrupt_and_foreign_blocks_are_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cache(dir.path(), 4, StorageFormat::Native, false);
    store(&mut c, 0..4);
    store(&mut c, 4..8);
    let paths: Vec<PathBuf> = (0..3).map(|i| fs_tier(&mut c).layout().block_path(&key(i))).collect();
    // A flipped payload bit, a truncated file, and a valid block of another key in its place.
    let mut bytes = std::fs::read(&paths[0]).unwrap();
    bytes[4096 + 100] ^= 1;
    std::fs::write(&paths[0], &bytes).unwrap();
    std::fs::write(&paths[1], &std::fs::read(&paths[1]).unwrap()[..4096 + 10]).unwrap();
    std::fs::copy(fs_tier(&mut c).layout().block_path(&key(3)), &paths[2]).unwrap();
    for i in 0..3 {
        assert!(!promote_and_check(&mut c, i), "corrupt block {i} must not be served");
        assert!(!paths[i as usize].exists(), "corrupt file {i} is removed");
        assert!(!fs_tier(&mut c).contains(&key(i)));
    }
    assert_eq!(fs_tier(&mut c).stats().corrupt, 3);
    assert!(promote_and_check(&mut c, 3), "intact neighbours still load");
}

#[test]
fn vllm_format_reads_what_vllm_writes() {
    let dir = tempfile::tempdir().unwrap();
    // Raw rows at vLLM's paths, as its FS tier writes them, before the cache starts.
    let run = fs_config(dir.path(), StorageFormat::Vllm).tier_config(BLOCK).effective_run_config();
    let layout = Layout::new(dir.path(), &run, 0);
    for i in 100..104 {
        let path = layout.block_path(&key(i));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, pattern(i, BLOCK)).unwrap();
    }
    let mut c = cache(dir.path(), 2, StorageFormat::Vllm, false);
    assert_eq!(fs_tier(&mut c).startup().blocks_indexed, 4);
    for i in 100..104 {
        assert!(promote_and_check(&mut c, i));
    }
}

/// Child side of `two_processes_share_a_directory` (does nothing when run on its own).
#[test]
fn two_process_child() {
    let (Ok(root), Ok(first)) = (std::env::var("KVTIER_CHILD_ROOT"), std::env::var("KVTIER_CHILD_FIRST")) else {
        return;
    };
    let first: u64 = first.parse().unwrap();
    let mut c = cache(Path::new(&root), 64, StorageFormat::Native, true);
    // Overlapping halves: 0..48 and 16..64 are stored by both at once.
    for chunk in (first..first + 48).collect::<Vec<_>>().chunks(8) {
        store(&mut c, chunk.iter().copied());
    }
    // Wait for the other process, then load everything (the other's blocks through the probe).
    let flag = Path::new(&root).join(format!("done-{first}"));
    std::fs::write(&flag, b"").unwrap();
    let other = Path::new(&root).join(format!("done-{}", 16 - first));
    while !other.exists() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut c = cache(Path::new(&root), 64, StorageFormat::Native, true);
    for i in 0..64 {
        assert!(promote_and_check(&mut c, i), "process {first}: block {i}");
    }
}

#[test]
fn two_processes_share_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = [0u64, 16]
        .iter()
        .map(|first| {
            Command::new(&exe)
                .args(["--exact", "two_process_child", "--nocapture", "--test-threads=1"])
                .env("KVTIER_CHILD_ROOT", dir.path())
                .env("KVTIER_CHILD_FIRST", first.to_string())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success(), "a child process failed");
    }
}

fn temp_files(dir: &Path) -> usize {
    let mut n = 0;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                dirs.push(e.path());
            } else if e.file_name().to_string_lossy().ends_with(".tmp") {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn enospc_fails_cleanly_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mnt) = LoopMount::new(dir.path(), 8) else { return };
    let root = mnt.mount.join("kv");
    let mut c = cache(&root, 32, StorageFormat::Native, false);
    // 8 MiB image, 12 KiB per native block file: fill it up.
    let ballast = mnt.mount.join("ballast");
    let mut i = 0;
    while fs_tier(&mut c).stats().failed == 0 && i < 2000 {
        store(&mut c, i..i + 16);
        i += 16;
        if i == 320 {
            // Leave little room so the next stores hit ENOSPC.
            let free = {
                // SAFETY: zeroed statvfs is a valid out-parameter; the path is NUL-terminated.
                let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
                let p = std::ffi::CString::new(mnt.mount.to_str().unwrap()).unwrap();
                // SAFETY: as above; `s` outlives the call.
                assert_eq!(unsafe { libc::statvfs(p.as_ptr(), &mut s) }, 0);
                s.f_bavail * s.f_bsize
            };
            std::fs::write(&ballast, vec![1u8; free.saturating_sub(64 * 1024) as usize]).ok();
        }
    }
    let stats = *fs_tier(&mut c).stats();
    assert!(stats.failed > 0, "the image never filled up ({i} blocks stored)");
    assert_eq!(temp_files(&root), 0, "no temp file may remain after ENOSPC");
    let indexed = fs_tier(&mut c).len();
    drop(c);
    // Free space (a start-up writes to the tier's directory), then: nothing corrupt was
    // indexed. A fresh start finds exactly what was published, and every block of it loads
    // intact (the native checksums, and the bytes against their pattern).
    std::fs::remove_file(&ballast).ok();
    let mut c = cache(&root, 32, StorageFormat::Native, false);
    let on_disk: Vec<u64> = (0..i).filter(|&b| fs_tier(&mut c).contains(&key(b))).collect();
    assert_eq!((fs_tier(&mut c).startup().blocks_indexed, on_disk.len()), (indexed, indexed));
    for &b in &on_disk {
        assert!(promote_and_check(&mut c, b), "block {b} after ENOSPC");
    }
    // The tier works again.
    let before = fs_tier(&mut c).stats().failed;
    store(&mut c, 5000..5016);
    assert_eq!(fs_tier(&mut c).stats().failed, before);
    store(&mut c, 6000..6032); // evict 5000.. from the primary
    for i in 5000..5016 {
        assert!(promote_and_check(&mut c, i));
    }
}

/// Block files (`*.bin`) and temp files under `root`.
fn count_files(root: &Path) -> (usize, usize) {
    let (mut blocks, mut temps) = (0, 0);
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                stack.push(path);
            } else if kvtier_fs::tmpname::parse_temp(std::ffi::OsStr::new(&name)).is_some() {
                temps += 1;
            } else if name.ends_with(".bin") {
                blocks += 1;
            }
        }
    }
    (blocks, temps)
}

fn bounded_cache(root: &Path, executor: ExecutorKind, max_blocks: usize) -> TieredCache {
    let mut fs = fs_config(root, StorageFormat::Native);
    fs.executor = executor;
    fs.max_blocks = Some(max_blocks);
    fs.events = true;
    cache_with(4, fs)
}

/// A tier bounded to 8 blocks keeps the 8 most recently used (stored or loaded), evicting the
/// others with a "removed" event; the files it keeps hold exactly their blocks (evicted files
/// are reused in place for new ones), no temp file is left, and a restart with a smaller bound
/// removes what is beyond it.
#[test]
fn a_bounded_tier_keeps_the_most_recently_used_blocks() {
    let mut executors = vec![ExecutorKind::Threaded];
    match kvtier_io_uring::probe(false) {
        Ok(()) => executors.push(ExecutorKind::Uring),
        Err(e) => eprintln!("uring skipped: {e}"),
    }
    for executor in executors {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut c = bounded_cache(dir.path(), executor, 8);
            for i in 0..8 {
                store(&mut c, i..i + 1); // one at a time: published (so used) in this order
            }
            assert!(promote_and_check(&mut c, 0), "{executor:?}: block 0 from disk"); // used: now the most recent
            let mut events = kvtier_core::EventLog::new();
            c.engine().take_events(&mut events);
            store(&mut c, 8..12); // evicts 1, 2, 3, 4 from the disk
            let tier = fs_tier(&mut c);
            assert_eq!((tier.len(), tier.stats().evicted, tier.stats().refused), (8, 4, 0), "{executor:?}");
            assert_eq!(count_files(dir.path()), (8, 0), "{executor:?}: block and temp files on disk");
            events.clear();
            c.engine().take_events(&mut events);
            // The victims leave in recency order; compare them as a set.
            let mut removed: Vec<OffloadKey> = events
                .iter()
                .filter(|e| e.removed && e.medium == kvtier_core::Medium::Storage)
                .flat_map(|e| e.keys.to_vec())
                .collect();
            removed.sort_by_key(|k| k.hash()[..8].to_vec());
            assert_eq!(removed, (1..5).map(key).collect::<Vec<_>>(), "{executor:?}: removal events");
            for i in [0, 5, 6, 7, 8, 9, 10, 11] {
                assert!(promote_and_check(&mut c, i), "{executor:?}: block {i} kept");
            }
            for i in 1..5 {
                assert!(!promote_and_check(&mut c, i), "{executor:?}: block {i} evicted");
            }
        }
        let mut c = bounded_cache(dir.path(), executor, 5);
        let startup = fs_tier(&mut c).startup().clone();
        assert_eq!((startup.blocks_indexed, startup.evicted), (5, 3), "{executor:?}");
        assert_eq!(count_files(dir.path()), (5, 0), "{executor:?}");
    }
}

/// A cache whose blocks are `block_bytes` long (the tests above use `BLOCK`).
fn cache_sized(root: &Path, block_bytes: usize, max_blocks: Option<usize>) -> Result<TieredCache, kvtier::CacheError> {
    let mut fs = fs_config(root, StorageFormat::Native);
    fs.max_blocks = max_blocks;
    let config = CacheConfig {
        num_blocks: 8,
        block_bytes,
        policy: Default::default(),
        promotion_deadline_steps: 0,
        events: true,
        shared_memory: None,
        shared_memory_mode: Default::default(),
        tiers: vec![TierConfig::Fs(Box::new(fs))],
    };
    TieredCache::new(&config)
}

/// Issue 11, item 2, as reported: a directory filled with one block size and reopened with
/// another. The block size is part of the native run config, so the second cache finds none
/// of the first's blocks (before, it indexed them and every load failed and deleted one), and
/// the first size finds all of its blocks again afterwards.
#[test]
fn two_block_sizes_never_share_blocks() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut c = cache_sized(dir.path(), BLOCK, None).unwrap();
        store(&mut c, 0..8);
    }
    {
        let mut c = cache_sized(dir.path(), BLOCK / 2, None).unwrap();
        assert_eq!(fs_tier(&mut c).startup().blocks_indexed, 0, "blocks of another size are not this cache's");
        for i in 0..8 {
            assert_eq!(c.engine().lookup(&key(i), REQ), LookupResult::Miss);
        }
    }
    let mut c = cache_sized(dir.path(), BLOCK, None).unwrap();
    assert_eq!(fs_tier(&mut c).startup().blocks_indexed, 8);
    for i in 0..8 {
        assert!(promote_and_check(&mut c, i), "block {i}");
    }
}

/// Issue 11, item 4: `max_blocks = 0` is refused with an error that names it and deletes
/// nothing (before, it opened and deleted every block); a bound below what is on disk keeps
/// the most recently stored blocks, by the files' modification times (not directory order),
/// and the start-up report says how many it evicted.
#[test]
fn a_zero_bound_is_refused_and_a_lower_bound_keeps_the_newest_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = {
        let mut c = cache_sized(dir.path(), BLOCK, None).unwrap();
        for i in 0..20 {
            store(&mut c, i..i + 1);
        }
        (0..20).map(|i| fs_tier(&mut c).layout().block_path(&key(i))).collect()
    };
    // Block 0 the newest, block 19 the oldest: the reverse of the order they were stored in.
    let base = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for (i, path) in paths.iter().enumerate() {
        let when = base + std::time::Duration::from_secs(100 - i as u64);
        std::fs::File::options().write(true).open(path).unwrap().set_modified(when).unwrap();
    }
    let e = cache_sized(dir.path(), BLOCK, Some(0)).unwrap_err();
    assert!(e.to_string().contains("max_blocks"), "{e}");
    assert!(paths.iter().all(|p| p.exists()), "a refused bound deletes nothing");

    let mut c = cache_sized(dir.path(), BLOCK, Some(10)).unwrap();
    let startup = fs_tier(&mut c).startup().clone();
    assert_eq!((startup.blocks_indexed, startup.evicted), (10, 10));
    let kept: Vec<u64> = (0..20).filter(|&i| fs_tier(&mut c).contains(&key(i))).collect();
    assert_eq!(kept, (0..10).collect::<Vec<_>>(), "the ten newest files are kept");
    assert_eq!(paths.iter().filter(|p| p.exists()).count(), 10);
}

/// The open markers in `rank_dir` (file names).
fn open_markers(rank_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(rank_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| kvtier_fs::tmpname::parse_marker(std::ffi::OsStr::new(n)).is_some())
        .collect();
    names.sort();
    names
}

/// Issue 11, item 9: two tiers of one process on one directory. Liveness was a pid, and the
/// second tier took the first's marker (same pid) for a crashed predecessor's: it reported a
/// crashed run and deleted the marker. Now each holds a lock on its own marker, and a locked
/// marker is live whatever its pid.
#[test]
fn two_tiers_of_one_process_keep_each_others_markers() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = cache(dir.path(), 8, StorageFormat::Native, false);
    store(&mut a, 0..4);
    let rank_dir = fs_tier(&mut a).layout().rank_dir().to_path_buf();
    assert_eq!(open_markers(&rank_dir).len(), 1);
    {
        let mut b = cache(dir.path(), 8, StorageFormat::Native, false);
        assert_eq!(fs_tier(&mut b).startup().crashed_runs, 0, "the first tier is alive");
        assert_eq!(open_markers(&rank_dir).len(), 2, "both markers are there");
        store(&mut b, 4..8);
    }
    assert_eq!(open_markers(&rank_dir).len(), 1, "the second tier removed only its own marker");
    for i in 0..4 {
        assert!(promote_and_check(&mut a, i));
    }
    drop(a);
    assert!(open_markers(&rank_dir).is_empty());
    let mut c = cache(dir.path(), 8, StorageFormat::Native, false);
    assert_eq!(fs_tier(&mut c).startup().crashed_runs, 0, "two clean shutdowns");
}

/// Child side of `a_tier_in_another_pid_namespace_sees_the_first_alive` (does nothing when run
/// on its own): runs as pid 1 of a new PID namespace, where the parent's pid names no process.
#[test]
fn pid_namespace_child() {
    let Ok(root) = std::env::var("KVTIER_PIDNS_ROOT") else { return };
    assert_eq!(std::process::id(), 1, "the child runs in a PID namespace of its own");
    let mut c = cache(Path::new(&root), 8, StorageFormat::Native, false);
    let startup = fs_tier(&mut c).startup().clone();
    assert_eq!(startup.crashed_runs, 0, "the parent's tier is alive: its marker is locked");
    assert_eq!(startup.stale_temps_removed, 0, "the parent's temp file is a live store's");
    store(&mut c, 100..104);
    for i in 100..104 {
        assert!(promote_and_check(&mut c, i));
    }
}

/// Issue 11, item 9: containers sharing a volume. A tier opened in another PID namespace (as
/// root, `unshare --pid --fork`; skipped where that is not possible) used to take this
/// process's marker for a crashed run's (its pid names no process there): it deleted the
/// marker, and the temp files of this process's stores in flight. The lock on the marker is
/// seen across namespaces.
#[test]
fn a_tier_in_another_pid_namespace_sees_the_first_alive() {
    let unshare = Command::new("unshare").args(["--pid", "--fork", "true"]).status();
    if !unshare.is_ok_and(|s| s.success()) {
        eprintln!("skipped: `unshare --pid --fork` is not available here (it needs root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut c = cache(dir.path(), 8, StorageFormat::Native, false);
    store(&mut c, 0..4);
    let rank_dir = fs_tier(&mut c).layout().rank_dir().to_path_buf();
    let markers = open_markers(&rank_dir);
    // A store of this process in flight: its temp file, named with this process's pid.
    let block = fs_tier(&mut c).layout().block_path(&key(50));
    std::fs::create_dir_all(block.parent().unwrap()).unwrap();
    let temp = kvtier_fs::tmpname::temp_path(&block, kvtier_fs::tmpname::next_seq());
    std::fs::write(&temp, b"in flight").unwrap();

    let status = Command::new("unshare")
        .args(["--pid", "--fork"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "pid_namespace_child", "--nocapture", "--test-threads=1"])
        .env("KVTIER_PIDNS_ROOT", dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "the child in the other PID namespace failed");
    assert_eq!(open_markers(&rank_dir), markers, "this tier's marker is still there");
    assert!(temp.exists(), "the temp file of a live store is kept");
    std::fs::remove_file(&temp).unwrap();
    for i in 0..4 {
        assert!(promote_and_check(&mut c, i), "block {i}");
    }
}

/// Stores block `new`, which evicts block `victim`; returns whether the victim's file was
/// reused for it (the victim's inode lives on under the new name) rather than unlinked.
fn store_reuses(c: &mut TieredCache, victim: u64, new: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    let held = std::fs::File::open(fs_tier(c).layout().block_path(&key(victim))).unwrap();
    store(c, new..new + 1);
    assert!(!fs_tier(c).contains(&key(victim)), "block {victim} was evicted");
    let new_file = std::fs::metadata(fs_tier(c).layout().block_path(&key(new))).unwrap();
    let held = held.metadata().unwrap();
    let reused = held.nlink() == 1 && held.ino() == new_file.ino();
    assert!(reused || held.nlink() == 0, "the victim's file is either reused or gone");
    reused
}

/// Child side of `no_reuse_while_another_process_has_the_directory_open`: opens a tier on the
/// directory and keeps it open until told to go.
#[test]
fn reuse_child() {
    let Ok(root) = std::env::var("KVTIER_REUSE_ROOT") else { return };
    let root = Path::new(&root);
    let c = bounded_cache(root, ExecutorKind::Threaded, 2);
    std::fs::write(root.join("child-open"), b"").unwrap();
    while !root.join("child-go").exists() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    drop(c);
}

/// Issue 11, item 11: a bounded native tier reuses an evicted block's file (an exception to
/// "a published file is never modified", for speed), but never while another process may read
/// the directory: here, while a second process has a tier open on it (before, only
/// probe-on-miss stopped it). Reuse shows as the new block having the victim's inode.
#[test]
fn no_reuse_while_another_process_has_the_directory_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = bounded_cache(dir.path(), ExecutorKind::Threaded, 2);
    store(&mut c, 0..1);
    store(&mut c, 1..2);
    assert!(store_reuses(&mut c, 0, 2), "alone: the victim's file is reused");

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "reuse_child", "--nocapture", "--test-threads=1"])
        .env("KVTIER_REUSE_ROOT", dir.path())
        .spawn()
        .unwrap();
    while !dir.path().join("child-open").exists() {
        assert!(child.try_wait().unwrap().is_none(), "the child exited early");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let reused = store_reuses(&mut c, 1, 3);
    std::fs::write(dir.path().join("child-go"), b"").unwrap();
    assert!(child.wait().unwrap().success());
    assert!(!reused, "another process has the directory open: a fresh file");
    assert!(store_reuses(&mut c, 2, 4), "alone again: reuse resumes");
    for i in 3..5 {
        assert!(promote_and_check(&mut c, i));
    }
}

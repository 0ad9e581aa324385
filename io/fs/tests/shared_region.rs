//! Issue 11, item 1: a shared primary region owns its file. Real processes: a region that is
//! alive while a second process points a region at its file (the second is refused, the first
//! keeps running: no SIGBUS from a shrunk file, no file deleted under it), a file that is not
//! a region (refused, left untouched), and the file of a region whose process died (taken
//! over). Each child is this test binary again, running `region_child`.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use kvtier_core::SlotId;
use kvtier_fs::files::FileMode;
use kvtier_fs::region::{Access, PrimaryRegion, SHARED_TRAILER_LEN};

const ROW: usize = 4096;

/// What starts a child's answer on its standard output (which libtest writes to as well).
const MARK: &str = "child: ";

/// The child's answer in `line` (after [`MARK`]), if it holds one.
fn answer(line: &str) -> Option<&str> {
    line.split_once(MARK).map(|(_, a)| a)
}

/// Kills the child when dropped, so a failed assertion leaves no process behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Writes every row of `region` once, through leases.
fn touch_all(region: &Arc<PrimaryRegion>, value: u8) {
    for slot in 0..region.rows() {
        let mut lease = region.lease(SlotId(slot as u32), Access::Write).unwrap();
        lease.as_mut_slice().unwrap().fill(value);
    }
}

/// Child side of the tests below (does nothing when run on its own). `KVTIER_REGION_ROLE`:
/// - `owner`: makes a region of `KVTIER_REGION_ROWS` rows, prints `child: ready`, then writes
///   every row over and over until the file `KVTIER_REGION_STOP` exists, and drops the region;
/// - `open`: tries to make such a region and prints `child: opened` (then writes every row
///   and drops it) or `child: refused: {error}`;
/// - `die`: makes such a region and aborts, as a crash would (no destructor runs).
#[test]
fn region_child() {
    let Some(role) = env("KVTIER_REGION_ROLE") else { return };
    let path = PathBuf::from(env("KVTIER_REGION_PATH").unwrap());
    let rows: usize = env("KVTIER_REGION_ROWS").unwrap().parse().unwrap();
    let made = PrimaryRegion::shared(&path, rows, ROW, FileMode::default()).map(Arc::new);
    match role.as_str() {
        "owner" => {
            let region = made.unwrap();
            println!("{MARK}ready");
            let stop = PathBuf::from(env("KVTIER_REGION_STOP").unwrap());
            let mut round = 0u8;
            while !stop.exists() {
                round = round.wrapping_add(1);
                touch_all(&region, round);
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        "open" => match made {
            Ok(region) => {
                println!("{MARK}opened");
                touch_all(&region, 0xee);
            }
            Err(e) => println!("{MARK}refused: {e}"),
        },
        "die" => {
            let region = made.unwrap();
            touch_all(&region, 1);
            std::process::abort();
        }
        other => panic!("unknown role {other}"),
    }
}

fn child(role: &str, path: &Path, rows: usize, stop: Option<&Path>) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "region_child", "--nocapture", "--test-threads=1"])
        .env("KVTIER_REGION_ROLE", role)
        .env("KVTIER_REGION_PATH", path)
        .env("KVTIER_REGION_ROWS", rows.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(stop) = stop {
        cmd.env("KVTIER_REGION_STOP", stop);
    }
    cmd.spawn().unwrap()
}

/// Runs an `open` child to its end: its output line, and how it exited.
fn open_in_child(path: &Path, rows: usize) -> (String, std::process::ExitStatus) {
    let mut c = child("open", path, rows, None);
    let mut out = String::new();
    c.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let status = c.wait().unwrap();
    let line = out.lines().find_map(answer).unwrap_or("").to_owned();
    (line, status)
}

fn file_len(rows: usize) -> u64 {
    (rows * ROW + SHARED_TRAILER_LEN) as u64
}

/// A region alive in one process; another process points regions at its file, of another
/// size and of the same: both are refused, naming the path. The first process keeps writing
/// its rows throughout (before the fix, the second shrank the file and the first died of
/// SIGBUS), and the file stays until the first process drops its region.
#[test]
fn a_second_region_on_a_live_regions_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("primary.shm");
    let stop = dir.path().join("stop");
    let mut owner = Reaped(child("owner", &path, 64, Some(&stop)));
    // Read on until the owner exits: it writes to its standard output at the end too.
    let mut lines = BufReader::new(owner.0.stdout.take().unwrap()).lines();
    let first = lines.by_ref().map_while(Result::ok).find_map(|l| answer(&l).map(str::to_owned));
    assert_eq!(first.as_deref(), Some("ready"));
    let drain = std::thread::spawn(move || lines.count());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), file_len(64));

    for rows in [1, 64] {
        let (line, status) = open_in_child(&path, rows);
        assert!(status.success(), "{rows} rows: {status:?}");
        assert!(line.starts_with("refused: "), "a second region of {rows} rows on a live region's file: {line}");
        assert!(line.contains(&path.display().to_string()) && line.contains("in use"), "{line}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), file_len(64), "never resized");
    }
    // Give the owner time to write its rows again after each refusal (a shrunk file would
    // fault on the next write).
    std::thread::sleep(Duration::from_millis(50));
    assert!(path.exists(), "the refused regions removed nothing");

    std::fs::write(&stop, b"").unwrap();
    let status = owner.0.wait().unwrap();
    drain.join().unwrap();
    assert!(status.success(), "the first region's process must survive: {status:?} (signal {:?})", status.signal());
    assert!(!path.exists(), "the region that created the file removes it");
}

/// Files that are not a kvtier region, at the path a region is pointed at: another size,
/// exactly a region's size without its trailer, a directory, a symbolic link. Each is refused
/// with an error naming the path, and left as it was.
#[test]
fn an_existing_file_that_is_not_a_region_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.bin");
    let precious: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&path, &precious).unwrap();
    let (line, status) = open_in_child(&path, 4);
    assert!(status.success(), "{status:?}");
    assert!(line.starts_with("refused: ") && line.contains(&path.display().to_string()), "{line}");
    assert_eq!(std::fs::read(&path).unwrap(), precious, "left as it was, after the child exited");

    let same_size: Vec<u8> = (0..file_len(4)).map(|i| (i % 253) as u8).collect();
    std::fs::write(&path, &same_size).unwrap();
    let (line, _) = open_in_child(&path, 4);
    assert!(line.starts_with("refused: ") && line.contains("not a kvtier region"), "{line}");
    assert_eq!(std::fs::read(&path).unwrap(), same_size);

    let sub = dir.path().join("a-directory");
    std::fs::create_dir(&sub).unwrap();
    let err = PrimaryRegion::shared(&sub, 4, ROW, FileMode::default()).unwrap_err();
    assert!(err.to_string().contains(&sub.display().to_string()), "{err}");
    assert!(sub.is_dir());

    let link = dir.path().join("link");
    symlink(&path, &link).unwrap();
    let err = PrimaryRegion::shared(&link, 4, ROW, FileMode::default()).unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), same_size, "the link's target is untouched");

    // Another user's file, where this test can make one (as root).
    if kvtier_fs_test_uid() == 0 {
        let theirs = dir.path().join("theirs.shm");
        let region = PrimaryRegion::shared(&theirs, 4, ROW, FileMode::default()).unwrap();
        let keep = dir.path().join("keep");
        std::fs::hard_link(&theirs, &keep).unwrap();
        drop(region); // leaves a valid region file under `keep`
        std::fs::rename(&keep, &theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
        let err = PrimaryRegion::shared(&theirs, 4, ROW, FileMode::default()).unwrap_err();
        assert!(err.to_string().contains("belongs to user id 65534"), "{err}");
        assert!(theirs.exists());
    } else {
        eprintln!("not root: the another-user's-file case is skipped");
    }
}

/// The effective uid, read from /proc (no unsafe in tests).
fn kvtier_fs_test_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// A region's process dies without dropping it (a crash): the file stays, unlocked. A region
/// of another geometry refuses it; one of the same geometry takes it over (and removes it when
/// dropped).
#[test]
fn the_file_of_a_region_whose_process_died_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("primary.shm");
    let status = child("die", &path, 8, None).wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGABRT), "the child crashed on purpose");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), file_len(8), "a crash leaves the file");

    let err = PrimaryRegion::shared(&path, 4, ROW, FileMode::default()).unwrap_err();
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), file_len(8), "never shrunk");

    let region = Arc::new(PrimaryRegion::shared(&path, 8, ROW, FileMode::default()).unwrap());
    touch_all(&region, 9);
    drop(region);
    assert!(!path.exists());
}

/// Issue 11, item 27: a region's file is created owner-only unless configured otherwise.
#[test]
fn a_region_file_is_created_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("primary.shm");
    let region = PrimaryRegion::shared(&path, 2, ROW, FileMode::default()).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    drop(region);
    let region = PrimaryRegion::shared(&path, 2, ROW, FileMode::new(0o640).unwrap()).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & !0o640, 0, "at most the bits asked for (the umask may drop some): {mode:o}");
    drop(region);
}

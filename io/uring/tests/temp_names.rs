//! A store whose temp name is taken (by a stale temp file of a crashed process that had this
//! pid) retries under fresh names, and gives up (`Failed`, nothing left behind) after 8. One
//! test in this binary: it predicts the process-wide temp-name sequence.

use std::fs;
use std::sync::Arc;

use kvtier_core::Direction;
use kvtier_fs::conformance::{self, block_path, fill, native, op, temp_files};
use kvtier_fs::{tmpname, Outcome};
use kvtier_io_uring::{UringConfig, UringExecutor};

#[test]
fn taken_temp_names_are_skipped() {
    let dir = conformance::scratch_dir();
    let region = conformance::region(1, 4096);
    let mut exec = UringExecutor::new(Arc::clone(&region), UringConfig::default()).unwrap();
    fill(&region, 0, 1, false);
    let path = block_path(dir.path(), 1);
    fs::create_dir_all(path.parent().unwrap()).unwrap();

    // The next 5 names are taken: the 6th is used.
    let next = tmpname::next_seq() + 1;
    let stale: Vec<_> = (next..next + 5).map(|s| tmpname::temp_path(&path, s)).collect();
    for p in &stale {
        fs::write(p, b"stale").unwrap();
    }
    let o = conformance::run_one(&mut exec, op(1, Direction::Store, 0, &path, native(1)));
    assert!(o.is_ok(), "{o:?}");
    assert_eq!(temp_files(dir.path()).len(), 5, "only the stale files remain");

    // All 8 tries taken: the store fails with EEXIST, leaving only the stale files.
    let next = tmpname::next_seq() + 1;
    let more: Vec<_> = (next..next + 8).map(|s| tmpname::temp_path(&path, s)).collect();
    for p in &more {
        fs::write(p, b"stale").unwrap();
    }
    let o = conformance::run_one(&mut exec, op(2, Direction::Store, 0, &path, native(1)));
    match o {
        Outcome::Failed(e) => assert_eq!(e.raw_os_error(), Some(libc::EEXIST)),
        o => panic!("{o:?}"),
    }
    assert_eq!(temp_files(dir.path()).len(), 13);
    for p in stale.iter().chain(&more) {
        assert_eq!(fs::read(p).unwrap(), b"stale", "a stale file is never written");
    }
}

//! The fallback path forced on: where io_uring is unavailable, `UringExecutor::new` fails with
//! an `Unsupported` error naming the reason, and a caller (as the `auto` executor does) falls
//! back to the threaded executor, which then does the work. One test in this binary, since it
//! sets an environment variable.

use std::io;
use std::path::Path;
use std::sync::Arc;

use kvtier_core::Direction;
use kvtier_fs::conformance::{self, block_path, fill, native, op, pattern};
use kvtier_fs::region::PrimaryRegion;
use kvtier_fs::Executor;
use kvtier_io_threaded::{ThreadedConfig, ThreadedExecutor};
use kvtier_io_uring::{UringConfig, UringExecutor, DISABLE_ENV};

/// What `auto` does: io_uring where it works, else the threaded executor with one warning.
fn auto(region: Arc<PrimaryRegion>, config: UringConfig) -> (Box<dyn Executor>, Option<String>) {
    match UringExecutor::new(Arc::clone(&region), config) {
        Ok(e) => (Box::new(e), None),
        Err(e) => {
            let warning = format!("kvtier: warning: the uring executor is unavailable ({e}); using the threaded one");
            let threaded = ThreadedExecutor::new(region, ThreadedConfig::default()).unwrap();
            (Box::new(threaded), Some(warning))
        }
    }
}

fn round_trip(exec: &mut dyn Executor, region: &Arc<PrimaryRegion>, root: &Path) {
    fill(region, 0, 7, false);
    let path = block_path(root, 7);
    let stored = conformance::run_one(exec, op(1, Direction::Store, 0, &path, native(7)));
    assert!(stored.is_ok(), "{stored:?}");
    let loaded = conformance::run_one(exec, op(2, Direction::Load, 1, &path, native(7)));
    assert!(loaded.is_ok(), "{loaded:?}");
    assert!(conformance::block(region, 1) == pattern(7, 4096));
}

#[test]
fn unavailable_io_uring_falls_back_with_a_reason() {
    let dir = conformance::scratch_dir();
    let region = conformance::region(2, 4096);

    // Forced by the configuration.
    let forced = UringConfig { force_unavailable: true, ..UringConfig::default() };
    let e = UringExecutor::new(Arc::clone(&region), forced.clone()).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::Unsupported);
    assert!(e.to_string().contains("forced off"), "{e}");
    let (mut exec, warning) = auto(Arc::clone(&region), forced);
    assert_eq!(exec.name(), "threaded");
    let warning = warning.expect("a warning");
    assert!(warning.contains("io_uring is unavailable: forced off"), "{warning}");
    round_trip(exec.as_mut(), &region, &dir.path().join("a"));
    drop(exec);

    // Forced by the environment (as `KVTIER_URING_DISABLE=1 kvtier ...` would).
    std::env::set_var(DISABLE_ENV, "1");
    let e = UringExecutor::new(Arc::clone(&region), UringConfig::default()).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::Unsupported);
    assert!(e.to_string().contains("disabled by KVTIER_URING_DISABLE=1"), "{e}");
    assert!(kvtier_io_uring::probe(false).is_err());
    let (mut exec, warning) = auto(Arc::clone(&region), UringConfig::default());
    assert_eq!(exec.name(), "threaded");
    assert!(warning.is_some());
    round_trip(exec.as_mut(), &region, &dir.path().join("b"));
    drop(exec);

    // "0" and the empty string do not disable it.
    for off in ["0", ""] {
        std::env::set_var(DISABLE_ENV, off);
        assert!(kvtier_fs::region::PrimaryRegion::anonymous(1, 4096).is_ok());
        match kvtier_io_uring::probe(false) {
            Ok(()) => {}
            Err(e) => {
                // io_uring really is unavailable on this machine: the reason is not the variable.
                assert!(!e.to_string().contains(DISABLE_ENV), "{e}");
                eprintln!("skipped the io_uring half: {e}");
                std::env::remove_var(DISABLE_ENV);
                return;
            }
        }
    }
    std::env::remove_var(DISABLE_ENV);
    let (mut exec, warning) = auto(Arc::clone(&region), UringConfig::default());
    assert_eq!((exec.name(), warning), ("uring", None));
    round_trip(exec.as_mut(), &region, &dir.path().join("c"));
}

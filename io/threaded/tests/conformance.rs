//! The executor conformance suite (`kvtier_fs::conformance`), run against the threaded
//! executor with buffered I/O and with `O_DIRECT` (where the scratch directory supports it).

use std::path::Path;
use std::sync::Arc;

use kvtier_fs::region::PrimaryRegion;
use kvtier_io_threaded::{ThreadedConfig, ThreadedExecutor};

fn threaded(region: Arc<PrimaryRegion>, o_direct: bool) -> ThreadedExecutor {
    let config = ThreadedConfig { read_workers: 4, write_workers: 4, queue_capacity: 1024, o_direct };
    ThreadedExecutor::new(region, config).expect("start the threaded executor")
}

mod buffered {
    use super::*;

    kvtier_fs::executor_conformance!(|region: Arc<PrimaryRegion>, _dir: &Path| threaded(region, false));
}

mod direct {
    use super::*;

    kvtier_fs::executor_conformance!(|region: Arc<PrimaryRegion>, dir: &Path| {
        let o_direct = kvtier_fs::direct::probe_o_direct(dir).expect("probe O_DIRECT");
        if !o_direct {
            eprintln!("{} does not support O_DIRECT: this run is buffered", dir.display());
        }
        threaded(region, o_direct)
    });
}

/// A tiny queue and a single worker: `submit` must answer `Full` and the suite's helpers make
/// room by polling.
mod one_worker_small_queue {
    use super::*;

    kvtier_fs::executor_conformance!(|region: Arc<PrimaryRegion>, _dir: &Path| {
        let config = ThreadedConfig { read_workers: 0, write_workers: 1, queue_capacity: 3, o_direct: false };
        ThreadedExecutor::new(region, config).unwrap()
    });
}

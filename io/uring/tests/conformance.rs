//! The executor conformance suite (`kvtier_fs::conformance`), run against the io_uring executor
//! with buffered I/O, with `O_DIRECT` (where the scratch directory supports it), and with a
//! tiny ring and queue (so `submit` answers `Full` and ops wait for records).

use std::path::Path;
use std::sync::Arc;

use kvtier_fs::region::PrimaryRegion;
use kvtier_io_uring::{UringConfig, UringExecutor};

fn uring(region: Arc<PrimaryRegion>, config: UringConfig) -> UringExecutor {
    UringExecutor::new(region, config).expect("start the io_uring executor")
}

mod buffered {
    use super::*;

    kvtier_fs::executor_conformance!(|region: Arc<PrimaryRegion>, _dir: &Path| uring(region, UringConfig::default()));
}

mod direct {
    use super::*;

    kvtier_fs::executor_conformance!(|region: Arc<PrimaryRegion>, dir: &Path| {
        let o_direct = kvtier_fs::direct::probe_o_direct(dir).expect("probe O_DIRECT");
        if !o_direct {
            eprintln!("{} does not support O_DIRECT: this run is buffered", dir.display());
        }
        uring(region, UringConfig { o_direct, ..UringConfig::default() })
    });
}

/// Two records, a queue of three and the smallest submission queue: ops wait for records,
/// `submit` answers `Full`, chains wait for room in the submission queue.
mod two_records_small_queue {
    use super::*;

    kvtier_fs::executor_conformance!(|region: Arc<PrimaryRegion>, dir: &Path| {
        let o_direct = kvtier_fs::direct::probe_o_direct(dir).expect("probe O_DIRECT");
        let config = UringConfig { max_ops: 2, queue_capacity: 3, sq_entries: 8, o_direct, ..UringConfig::default() };
        uring(region, config)
    });
}

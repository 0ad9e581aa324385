//! The executor conformance suite (`kvtier_fs::conformance`) on the simulated executor with
//! faults off, its files on a `SimDisk` (the suite inspects and damages them through
//! `kvtier_fs::vfs::Vfs`). `transient_errors_keep_the_file` needs the host's file system; its
//! simulated counterpart (injected `EMFILE` and `EIO`) is in `faults.rs`.

use std::path::Path;
use std::sync::Arc;

use kvtier_fs::region::PrimaryRegion;
use kvtier_fs::vfs::Vfs;
use kvtier_io_sim::{SimConfig, SimDisk, SimExecutor};

fn sim(disk: &SimDisk, config: SimConfig) -> impl Fn(Arc<PrimaryRegion>, &Path) -> SimExecutor {
    let disk = disk.clone();
    move |region, dir| {
        disk.create_dir_all(dir).expect("the scratch directory");
        SimExecutor::new(region, disk.clone(), config.clone())
    }
}

mod default {
    use super::*;

    kvtier_fs::executor_conformance!(disk = SimDisk::new(1); |disk: &SimDisk| sim(disk, SimConfig::default()));
}

/// `O_DIRECT` on (misaligned transfers buffered, as the kernel executors do), long latencies.
mod direct_slow {
    use super::*;

    kvtier_fs::executor_conformance!(disk = SimDisk::new(2); |disk: &SimDisk| sim(
        disk,
        SimConfig { seed: 2, max_latency: 100, o_direct: true, ..SimConfig::default() }
    ));
}

/// A queue of 3: `submit` answers `Full` and the suite makes room by polling.
mod small_queue {
    use super::*;

    kvtier_fs::executor_conformance!(disk = SimDisk::new(3); |disk: &SimDisk| sim(
        disk,
        SimConfig { seed: 3, queue_capacity: 3, max_latency: 1, ..SimConfig::default() }
    ));
}

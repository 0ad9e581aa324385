//! The conformance suite every [`Executor`] must pass (feature `conformance`).
//!
//! Each case is a public function taking the disk the executor's files live on (a
//! [`Vfs`]: [`HostFs`] for kernel executors) and the executor's constructor,
//! `make(region, dir) -> E`, where `dir` is the case's scratch directory (an executor that
//! probes the file system, e.g. for `O_DIRECT`, probes it there). The cases inspect and damage
//! files only through the disk, so one suite serves kernel executors and simulated ones.
//! [`executor_conformance!`](crate::executor_conformance) generates one `#[test]` per case in
//! the module it is invoked in:
//!
//! ```ignore
//! mod buffered {
//!     kvtier_fs::executor_conformance!(|region, _dir| MyExecutor::new(region, false));
//! }
//! // An executor over its own disk: `disk` is built once per test, `make(&disk)` returns the
//! // constructor. Without the host's file system, the EMFILE/EACCES case is not generated.
//! mod simulated {
//!     kvtier_fs::executor_conformance!(disk = SimDisk::new(0); |disk: &SimDisk| {
//!         let disk = disk.clone();
//!         move |region, _dir| SimExecutor::new(region, disk.clone(), SimConfig::default())
//!     });
//! }
//! ```
//!
//! The cases work on real files in temporary directories under [`std::env::temp_dir`] (on the
//! machines this project runs on, `/tmp` is the same ext4 file system as the workspace, so
//! `O_DIRECT` is exercised; where `/tmp` is tmpfs, an `O_DIRECT` executor runs buffered or
//! not at all, depending on its probe).
//!
//! What they pin down: byte-exact round trips in both formats and at aligned and unaligned row
//! sizes, to block files, to extents of an opened file and in batches (several blocks as one
//! transfer, an engine's bytes, copies within the file); `NotFound`, `Corrupt` (a file is
//! removed, an extent left as it is) and `Transient` (the file is kept) outcomes; temp-file
//! hygiene (no temp file survives an op, published files are never written in place);
//! hundreds of ops in flight; every op reported exactly once through its job part, including
//! across `shutdown` and `Drop`; leases held while an op runs and released before it is
//! reported.
//!
//! The cases are in the private modules `cases` (block files), `extents` and `batches`; what
//! they are built from (blocks, keys, ops named by a token, the [`Tracker`] that reads
//! outcomes back from a job table) in `fixtures`; all re-exported here.
//!
//! [`transient_errors_keep_the_file`] re-runs its own test in a child process with a lowered
//! `RLIMIT_NOFILE` (through `sh -c 'ulimit -n ...'`) to make `open` fail with `EMFILE`: that
//! works as root, where permission bits deny nothing, and keeps the limit away from the other
//! tests of the parent process. It needs the standard libtest harness (`--exact`).

mod batches;
mod cases;
mod extents;
mod fixtures;

use std::path::Path;
use std::sync::Arc;

use crate::region::PrimaryRegion;
use crate::vfs::{HostFs, Vfs};
use crate::Executor;

pub use batches::*;
pub use cases::*;
pub use extents::*;
pub use fixtures::*;

/// Generates one `#[test]` per conformance case in the current module; `$make` is the
/// executor's constructor, `|region: Arc<PrimaryRegion>, dir: &Path| -> impl Executor`.
///
/// `executor_conformance!(disk = $disk; $make)` runs the cases (all but
/// [`transient_errors_keep_the_file`], [`corrupt_removal_spares_a_file_renamed_in_place`] and
/// [`synced_stores_survive_a_power_cut`], which need the host's file system) on the disk `$disk`
/// (an expression evaluated once per test, whose value implements [`Vfs`]); `$make` is called
/// with `&disk` and returns the executor's constructor.
#[macro_export]
macro_rules! executor_conformance {
    (disk = $disk:expr; $make:expr) => {
        $crate::executor_conformance!(@cases ($disk); $make);
    };
    ($make:expr) => {
        $crate::executor_conformance!(@cases ($crate::vfs::HostFs::default()); |_: &$crate::vfs::HostFs| $make);
        #[test]
        fn synced_stores_survive_a_power_cut() {
            $crate::conformance::synced_stores_survive_a_power_cut($make);
        }
        #[test]
        fn corrupt_removal_spares_a_file_renamed_in_place() {
            $crate::conformance::corrupt_removal_spares_a_file_renamed_in_place($make);
        }
        #[test]
        fn transient_errors_keep_the_file() {
            $crate::conformance::transient_errors_keep_the_file(
                concat!(module_path!(), "::transient_errors_keep_the_file"),
                $make,
            );
        }
    };
    // The cases that run on any disk: the one list.
    (@cases ($disk:expr); $make:expr) => {
        $crate::executor_conformance!(@each ($disk); $make;
            round_trip_many_blocks,
            files_have_the_format_layout,
            load_of_a_missing_file_is_not_found,
            wrong_length_is_corrupt_and_removed,
            flipped_bytes_are_corrupt_and_removed,
            foreign_native_files_are_corrupt,
            store_creates_missing_directories,
            store_replaces_a_published_file_atomically,
            failed_store_leaves_nothing,
            many_ops_in_flight,
            poll_waits_as_asked,
            shutdown_reports_every_op,
            drop_with_work_in_flight_is_sound,
            lease_conflicts_fail_the_op,
            stores_evict_their_victims,
            a_reused_victim_gets_the_new_length,
            extents_round_trip,
            damaged_extents_are_corrupt_and_kept,
            extent_ops_are_checked,
            batches_round_trip,
            batch_copies_verify_and_renumber,
            batches_are_checked,
        );
    };
    (@each ($disk:expr); $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let disk = $disk;
                let make = ($make)(&disk);
                $crate::conformance::$case(&disk, make);
            }
        )*
    };
}

/// Runs every case except [`transient_errors_keep_the_file`] (which needs its test's name to
/// re-run itself in a child process) on the host's file system, in one test.
pub fn run_all<E: Executor, F: Fn(Arc<PrimaryRegion>, &Path) -> E>(make: F) {
    run_all_on(&HostFs::default(), &make);
    corrupt_removal_spares_a_file_renamed_in_place(&make);
    synced_stores_survive_a_power_cut(make);
}

/// [`run_all`] for an executor whose files live on `disk` (e.g. a simulated disk) rather than
/// on the host's file system: the cases read, damage and list files through `disk`.
pub fn run_all_on<E: Executor, F: Fn(Arc<PrimaryRegion>, &Path) -> E>(disk: &dyn Vfs, make: F) {
    round_trip_many_blocks(disk, &make);
    files_have_the_format_layout(disk, &make);
    load_of_a_missing_file_is_not_found(disk, &make);
    wrong_length_is_corrupt_and_removed(disk, &make);
    flipped_bytes_are_corrupt_and_removed(disk, &make);
    foreign_native_files_are_corrupt(disk, &make);
    store_creates_missing_directories(disk, &make);
    store_replaces_a_published_file_atomically(disk, &make);
    failed_store_leaves_nothing(disk, &make);
    many_ops_in_flight(disk, &make);
    poll_waits_as_asked(disk, &make);
    shutdown_reports_every_op(disk, &make);
    drop_with_work_in_flight_is_sound(disk, &make);
    lease_conflicts_fail_the_op(disk, &make);
    stores_evict_their_victims(disk, &make);
    a_reused_victim_gets_the_new_length(disk, &make);
    extents_round_trip(disk, &make);
    damaged_extents_are_corrupt_and_kept(disk, &make);
    extent_ops_are_checked(disk, &make);
    batches_round_trip(disk, &make);
    batch_copies_verify_and_renumber(disk, &make);
    batches_are_checked(disk, &make);
}

//! Open markers on the sim disk: a marker left by a run of this very process id (a restarted
//! container's pid 1) never blocks or fools start-up, and one of another boot that did not
//! sync its blocks makes start-up verify them. Stale markers go once start-up is done.

use std::sync::Arc;

use kvtier_fs::namespace::RunConfig;
use kvtier_fs::region::PrimaryRegion;
use kvtier_fs::vfs::Vfs;
use kvtier_fs::{tmpname, FsTier, FsTierConfig};
use kvtier_io_sim::{SimConfig, SimDisk, SimExecutor};

fn open(disk: &SimDisk) -> FsTier {
    let region = Arc::new(PrimaryRegion::anonymous(2, 4096).unwrap());
    let run = RunConfig { model_name: "sim/markers".into(), ..RunConfig::default() };
    let disk2 = disk.clone();
    FsTier::open_on(&FsTierConfig::new("/root", run, 4096), Arc::new(disk.clone()), move |o_direct| {
        Ok(Box::new(SimExecutor::new(region, disk2, SimConfig { o_direct, ..SimConfig::default() })))
    })
    .unwrap()
}

fn markers(disk: &SimDisk) -> Vec<String> {
    disk.files()
        .iter()
        .filter_map(|p| p.file_name()?.to_str().filter(|n| n.starts_with(tmpname::MARKER_PREFIX)).map(String::from))
        .collect()
}

#[test]
fn stale_markers_are_handled_and_removed() {
    let disk = SimDisk::new(3);
    let rank_dir = open(&disk).layout().rank_dir().to_path_buf(); // dropped: shut down cleanly
    assert!(markers(&disk).is_empty(), "a clean shutdown removes its marker");

    // This process's own pid, this boot, not synced: a crash of a predecessor with our pid.
    let boot = disk.boot_id().unwrap();
    let own = rank_dir.join(tmpname::marker_name(disk.process_id(), 0));
    disk.write_new_synced(&own, format!("{boot}\nunsynced\n").as_bytes()).unwrap();
    let tier = open(&disk);
    assert_eq!((tier.startup().crashed_runs, tier.startup().verified), (1, false));
    assert_eq!(markers(&disk).len(), 1, "only the open tier's own marker is left");
    drop(tier);

    // Another boot, not synced: the blocks it may have written (none here; see
    // `verification.rs`) are verified.
    let other = rank_dir.join(tmpname::marker_name(4242, 7));
    disk.write_new_synced(&other, b"another-boot\nunsynced\n").unwrap();
    let tier = open(&disk);
    assert_eq!((tier.startup().crashed_runs, tier.startup().verified), (1, false));
    assert!(tier.verification().finished);
    drop(tier);

    // Another boot, synced: nothing to verify.
    disk.write_new_synced(&other, b"another-boot\nsynced\n").unwrap();
    let tier = open(&disk);
    assert_eq!((tier.startup().crashed_runs, tier.startup().verified), (1, false));
    drop(tier);
    assert!(markers(&disk).is_empty());
}

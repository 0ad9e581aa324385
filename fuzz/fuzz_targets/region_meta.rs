//! The region engine's on-disk metadata and records, from bytes an attacker or a torn write
//! left: decoders never panic, what they accept re-encodes to the same bytes; and a device
//! whose regions hold these bytes opens (recovery reads summaries and scans records, by the
//! first byte's mode: closed, crashed, crashed after a power cut) without panicking, indexing
//! no more blocks than it has slots, every indexed record verifying on the device.
#![no_main]

use std::path::Path;
use std::sync::Arc;

use kvtier_fs::format::{self, HEADER_LEN};
use kvtier_fs::namespace::RunConfig;
use kvtier_fs::region::PrimaryRegion;
use kvtier_fs::vfs::Vfs;
use kvtier_io_sim::{SimConfig, SimDisk, SimExecutor};
use kvtier_regions::geometry::HEADER_AREA;
use kvtier_regions::meta::{DeviceHeader, DeviceState, Summary, DEVICE_HEADER_LEN};
use kvtier_regions::{RegionsTier, RegionsTierConfig};
use libfuzzer_sys::fuzz_target;

const BLOCK: usize = 1000;
const REGION: u64 = 64 << 10;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = DeviceHeader::decode(data) {
        let mut page = [0u8; DEVICE_HEADER_LEN];
        h.encode(&mut page);
        assert_eq!(&page[..], &data[..DEVICE_HEADER_LEN]);
    }
    if let Ok(s) = Summary::decode(data) {
        let mut again = Vec::new();
        s.encode(1, &mut again);
        assert_eq!(&again[..], &data[..again.len()]);
    }
    let Some((&mode, regions)) = data.split_first() else { return };

    // A device of three regions, its header valid, its regions these bytes.
    let disk = SimDisk::new(u64::from(mode));
    let path = Path::new("/dev.img");
    let region = Arc::new(PrimaryRegion::anonymous(4, BLOCK).unwrap());
    let cfg = RegionsTierConfig {
        region_bytes: REGION,
        ..RegionsTierConfig::new(path, HEADER_AREA + 3 * REGION, RunConfig::default())
    };
    let open = |seed: u64| {
        let (r, d) = (Arc::clone(&region), disk.clone());
        RegionsTier::open_on(&cfg, BLOCK, Arc::new(disk.clone()), move |o_direct| {
            let sim = SimConfig { seed, o_direct, ..SimConfig::default() };
            Ok(Box::new(SimExecutor::new(r, d, sim)) as Box<dyn kvtier_fs::Executor>)
        })
    };
    drop(open(0).expect("a fresh device opens"));
    let mut page = vec![0u8; DEVICE_HEADER_LEN];
    disk.read_at(path, 0, &mut page).unwrap();
    let mut header = DeviceHeader::decode(&page).expect("the engine's own header");
    header.state = if mode & 1 == 0 { DeviceState::Closed } else { DeviceState::Open };
    header.fsync = mode & 2 != 0;
    if mode & 4 != 0 {
        header.boot_id = "another boot".into();
    }
    let mut page = [0u8; DEVICE_HEADER_LEN];
    header.encode(&mut page);
    disk.write_at(path, 0, &page, false).unwrap();
    let room = (3 * REGION) as usize;
    disk.write_at(path, HEADER_AREA, &regions[..regions.len().min(room)], false).unwrap();

    let Ok(tier) = open(1) else { return };
    let g = *tier.geometry();
    assert!(tier.len() <= g.slots() as usize);
    let report = tier.recovery();
    assert_eq!(report.blocks_indexed as usize, tier.len());
    // With no summary trusted (every written region scanned), every indexed record verifies.
    if report.regions_summarized == 0 {
        for slot in 0..g.slots() {
            let mut rec = vec![0u8; g.record_bytes as usize];
            disk.read_at(path, g.slot_offset(slot), &mut rec).unwrap();
            let Ok(h) = format::decode_header(&rec) else { continue };
            let Ok(key) = kvtier_core::OffloadKey::from_bytes(h.key_bytes()) else { continue };
            if tier.slot_of(&key) == Some(slot) {
                h.check(&tier.namespace(), &key, &rec[HEADER_LEN..HEADER_LEN + BLOCK]).expect("an indexed record verifies");
            }
        }
    }
});

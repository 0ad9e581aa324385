//! Looking at a device without opening it as an engine: what `kvtier inspect [--verify]`
//! reports. Nothing is written. The device's lock is taken for the look (so no engine writes
//! while records are verified); a device whose lock another process holds is still read, and
//! the report says it was in use (its open region may then be changing under the look).
//!
//! Without `--verify` only the header and the regions' summaries are read. With it every
//! record of every written region is read and checked like recovery checks it (header,
//! namespace, length, payload CRC-32C, sequence against the region's epoch), and every sealed
//! summary is compared with the records it names.

use std::io;
use std::path::{Path, PathBuf};

use kvtier_fs::vfs::Vfs;
use serde::Serialize;

use crate::geometry::{Geometry, HEADER_AREA};
use crate::meta::{DeviceHeader, DeviceState, MetaError, SummaryKind, DEVICE_HEADER_LEN};
use crate::recovery::{read_summary, scan_region, Check};

/// What a device holds.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceReport {
    /// The device.
    pub path: PathBuf,
    /// Another process held the device's lock (an engine has it open).
    pub in_use: bool,
    /// `closed` (cleanly) or `open` (by an engine now, or by one that did not shut down).
    pub state: &'static str,
    /// The pid of the engine that wrote the header last.
    pub pid: u32,
    /// Whether that engine synced every write.
    pub fsync: bool,
    /// The run config the device was made for (its canonical JSON).
    pub run_config: String,
    /// The namespace digest its records carry (hex).
    pub namespace: String,
    /// The rank it belongs to.
    pub rank: u32,
    /// Bytes of the device in use.
    pub capacity: u64,
    /// Bytes of a region.
    pub region_bytes: u64,
    /// Bytes of a block.
    pub block_bytes: u64,
    /// Regions.
    pub regions: u32,
    /// Block slots.
    pub slots: u64,
    /// Regions never written (or cleared by recovery).
    pub regions_blank: u32,
    /// Regions reclaimed and not written since (a free marker).
    pub regions_free: u32,
    /// Regions with a sealed summary.
    pub regions_sealed: u32,
    /// Regions whose summary area holds something that does not verify, or another region's
    /// or device's summary: the open region of a running (or crashed) engine, or damage.
    pub regions_unsummarized: u32,
    /// Blocks the sealed summaries name.
    pub blocks_summarized: u64,
    /// With `--verify`: what the records hold.
    pub verify: Option<VerifyReport>,
}

/// What reading every record found.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct VerifyReport {
    /// Records that verify and belong to their region's current pass.
    pub intact: u64,
    /// Records that do not verify (torn, rotten, foreign): never served.
    pub corrupt: u64,
    /// Records of an older pass over a reclaimed region (left in place, never served).
    pub stale: u64,
    /// Summary entries whose record is not an intact record of that key and sequence.
    pub summary_mismatches: u64,
    /// Intact records no summary names (those of an open region: recovery scans them).
    pub unsummarized: u64,
    /// Bytes read.
    pub bytes_read: u64,
}

fn foreign(path: &Path, why: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{} is not a kvtier region device ({why})", path.display()))
}

/// Inspects the device at `path` (see the module docs); `verify`: read every record.
pub fn inspect_device(fs: &dyn Vfs, path: &Path, verify: bool) -> io::Result<DeviceReport> {
    let (_lock, in_use) = match fs.lock(path) {
        Ok(guard) => (Some(guard), false),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => (None, true),
        Err(e) => return Err(io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))),
    };
    let mut area = vec![0u8; HEADER_AREA as usize];
    let n = fs.read_at(path, 0, &mut area)?;
    let h = match DeviceHeader::decode(&area[..n]) {
        Ok(h) => h,
        Err(MetaError::Blank) => return Err(foreign(path, "blank: no engine ever opened it")),
        Err(e) => return Err(foreign(path, e)),
    };
    let text = area
        .get(DEVICE_HEADER_LEN..DEVICE_HEADER_LEN + h.config_len as usize)
        .filter(|t| crc32c::crc32c(t) == h.config_crc)
        .ok_or_else(|| foreign(path, "its run config does not verify"))?;
    let g = Geometry::new(h.capacity, h.region_bytes, h.block_bytes).map_err(|e| foreign(path, e))?;
    let mut report = DeviceReport {
        path: path.to_path_buf(),
        in_use,
        state: match h.state {
            DeviceState::Closed => "closed",
            DeviceState::Open => "open",
        },
        pid: h.pid,
        fsync: h.fsync,
        run_config: String::from_utf8_lossy(text).into_owned(),
        namespace: h.namespace.iter().map(|b| format!("{b:02x}")).collect(),
        rank: h.rank,
        capacity: g.capacity,
        region_bytes: g.region_bytes,
        block_bytes: g.block_bytes,
        regions: g.regions,
        slots: u64::from(g.slots()),
        regions_blank: 0,
        regions_free: 0,
        regions_sealed: 0,
        regions_unsummarized: 0,
        blocks_summarized: 0,
        verify: verify.then(VerifyReport::default),
    };
    for r in 0..g.regions {
        let (summary, n) = read_summary(fs, path, &g, &h.namespace, r)?;
        let summary = match summary {
            None => {
                report.regions_blank += 1;
                continue;
            }
            Some(None) => {
                report.regions_unsummarized += 1;
                None
            }
            Some(Some(s)) => {
                match s.kind {
                    SummaryKind::Free => report.regions_free += 1,
                    SummaryKind::Sealed => report.regions_sealed += 1,
                }
                report.blocks_summarized += s.entries.iter().flatten().count() as u64;
                Some(s)
            }
        };
        let Some(v) = report.verify.as_mut() else { continue };
        v.bytes_read += n;
        let epoch = summary.as_ref().map_or(0, |s| s.epoch);
        let entries = summary.as_ref().map_or(&[][..], |s| &s.entries[..]);
        let mut named = vec![false; entries.len()];
        let read = scan_region(fs, path, &g, &h.namespace, r, epoch, |i, check| match check {
            Check::Empty => {}
            Check::Stale => v.stale += 1,
            Check::Corrupt => v.corrupt += 1,
            Check::Ok(key, seq) => {
                v.intact += 1;
                match entries.get(i as usize) {
                    Some(Some(e)) if e.key == key && e.seq == seq => named[i as usize] = true,
                    _ => v.unsummarized += 1,
                }
            }
        })?;
        v.bytes_read += read;
        v.summary_mismatches += entries.iter().zip(&named).filter(|(e, ok)| e.is_some() && !**ok).count() as u64;
    }
    Ok(report)
}

//! What an engine does before it serves anything: rebuild the index from the device.
//!
//! How much it reads depends on how the last process left the device ([`Mode`]):
//!
//! - **Fresh** (a blank device): nothing.
//! - **Clean** (closed cleanly) and **Fast** (a process crashed in this boot, or synced every
//!   write): a sealed region's summary is trusted, so its blocks are indexed without reading
//!   them (one read of its summary area per region, by up to 8 threads). A region holding a
//!   free marker (reclaimed, maybe written since) or a summary that does not verify is scanned:
//!   its records are read and verified (header and payload checksum), and those of this pass
//!   (sequence at least the marker's epoch) indexed. Why this is sound: a summary is written
//!   only after every write of its region completed, and a marker before anything new is
//!   written to its region; a process crash keeps every completed write (the page cache
//!   survives it), and with `fsync` each of these writes is durable before the next one starts.
//! - **Verify** (a power cut, or a reboot, after a process that did not sync its writes):
//!   completed writes may have been lost or torn in any order, summaries included, so every
//!   written region is scanned and only records that verify are indexed.
//!
//! A scanned region that holds records gets a fresh summary of exactly those (so the next open
//! need not scan it again); one that holds none has its summary area cleared (a summary there
//! would name records that are not) and is reclaimed before use. When two regions hold
//! a block of the same key, the record of the higher sequence number wins. The report says what
//! was read, what was indexed and what was dropped, and how long it took.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kvtier_core::OffloadKey;
use kvtier_fs::format::{self, HEADER_LEN};
use kvtier_fs::vfs::Vfs;

use crate::device::Device;
use crate::geometry::Geometry;
use crate::index::Index;
use crate::meta::{DeviceState, Entry, MetaError, Summary, SummaryKind, NAMESPACE_LEN};

/// How much recovery reads (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// A blank device: nothing to read.
    #[default]
    Fresh,
    /// Closed cleanly: summaries only.
    Clean,
    /// A crashed process of this boot, or one that synced: summaries, and a scan of the regions
    /// without one.
    Fast,
    /// After a power cut without `fsync`: a scan of every written region.
    Verify,
}

/// What recovery found, did and dropped.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// How much was read.
    pub mode: Mode,
    /// Regions whose blocks were indexed from their summary.
    pub regions_summarized: u32,
    /// Regions whose records were read and verified.
    pub regions_scanned: u32,
    /// Regions never written.
    pub regions_blank: u32,
    /// Summaries that did not verify (torn, rotten) or belonged elsewhere.
    pub bad_summaries: u32,
    /// Blocks indexed.
    pub blocks_indexed: u64,
    /// Their bytes (block bytes, headers not counted).
    pub bytes_indexed: u64,
    /// Records dropped because they did not verify (torn, rotten, foreign).
    pub dropped_corrupt: u64,
    /// Records of an older pass over a reclaimed region (left alone).
    pub dropped_stale: u64,
    /// Records of a key indexed elsewhere with a higher sequence number.
    pub superseded: u64,
    /// Bytes read from the device.
    pub bytes_read: u64,
    /// How long recovery took.
    pub duration: Duration,
}

/// What a region is after recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Never written, or nothing usable: reclaim it (write its marker) before use.
    Blank,
    /// Reclaimed and empty: ready to be written, from sequence `epoch` on.
    Clean {
        /// Its marker's epoch.
        epoch: u64,
    },
    /// Holds records of the pass that began at `epoch`.
    Sealed {
        /// The pass's first sequence number.
        epoch: u64,
    },
}

/// The rebuilt state.
#[derive(Debug)]
pub struct Recovered {
    /// The index.
    pub index: Index,
    /// Per region, what it is.
    pub regions: Vec<Found>,
    /// The next sequence number to use.
    pub next_seq: u64,
    /// The report.
    pub report: RecoveryReport,
}

/// One region's findings (made on a worker thread).
struct RegionFound {
    region: u32,
    found: Found,
    /// `(slot in the region, key, sequence)` of its records.
    records: Vec<(u32, OffloadKey, u64)>,
    from_summary: bool,
    scanned: bool,
    /// Its summary is to be rewritten with exactly these records.
    reseal: bool,
    /// Its summary area is to be cleared: it holds a summary, but nothing usable was found.
    wipe: bool,
    bad_summary: bool,
    dropped_corrupt: u64,
    dropped_stale: u64,
    bytes_read: u64,
}

/// How recovery must treat the device, from the header found at open and this boot.
pub fn mode(fs: &dyn Vfs, device: &Device) -> Mode {
    let Some(found) = &device.found else { return Mode::Fresh };
    match found.state {
        DeviceState::Closed => Mode::Clean,
        DeviceState::Open => {
            let same_boot = !found.boot_id.is_empty() && fs.boot_id().as_deref() == Some(found.boot_id.as_str());
            if same_boot || found.fsync {
                Mode::Fast
            } else {
                Mode::Verify
            }
        }
    }
}

/// Bytes read per scan step (whole records).
const SCAN_CHUNK: u64 = 8 << 20;
/// Threads reading regions.
const THREADS: u32 = 8;

fn recover_region(fs: &dyn Vfs, device: &Device, mode: Mode, r: u32) -> io::Result<RegionFound> {
    let g = &device.geometry;
    let mut out = RegionFound {
        region: r,
        found: Found::Blank,
        records: Vec::new(),
        from_summary: false,
        scanned: false,
        reseal: false,
        wipe: false,
        bad_summary: false,
        dropped_corrupt: 0,
        dropped_stale: 0,
        bytes_read: 0,
    };
    let (summary, n) = read_summary(fs, &device.path, g, &device.namespace, r)?;
    out.bytes_read += n;
    let Some(summary) = summary else { return Ok(out) };
    out.bad_summary = summary.is_none();
    // The oldest sequence number of this pass over the region (0: any).
    let epoch = summary.as_ref().map_or(0, |s| s.epoch);
    match (&summary, mode) {
        (Some(s), Mode::Clean | Mode::Fast) if s.kind == SummaryKind::Sealed => {
            out.from_summary = true;
            out.found = Found::Sealed { epoch };
            for (i, e) in s.entries.iter().enumerate() {
                if let Some(Entry { seq, key }) = e {
                    out.records.push((i as u32, *key, *seq));
                }
            }
            return Ok(out);
        }
        (Some(s), Mode::Clean) if s.kind == SummaryKind::Free => {
            out.found = Found::Clean { epoch };
            return Ok(out);
        }
        _ => {}
    }
    // Read and verify the records of this pass.
    out.scanned = true;
    let read = scan_region(fs, &device.path, g, &device.namespace, r, epoch, |i, check| match check {
        Check::Empty => {}
        Check::Stale => out.dropped_stale += 1,
        Check::Corrupt => out.dropped_corrupt += 1,
        Check::Ok(key, seq) => out.records.push((i, key, seq)),
    })?;
    out.bytes_read += read;
    match (out.records.iter().map(|r| r.2).min(), &summary) {
        (Some(first), _) => {
            out.found = Found::Sealed { epoch: epoch.max(1).min(first) };
            out.reseal = true;
        }
        (None, Some(s)) if s.kind == SummaryKind::Free => out.found = Found::Clean { epoch },
        // A sealed region whose records all failed, or a region without a valid summary:
        // reclaim it before use, and clear the summary that would name what is not there.
        (None, _) => {
            out.found = Found::Blank;
            out.wipe = true;
        }
    }
    Ok(out)
}

/// Reads region `r`'s summary area: `None` if it was never written, `Some(None)` if what it
/// holds does not verify or belongs to another region or device, and the bytes read.
pub(crate) fn read_summary(
    fs: &dyn Vfs,
    path: &Path,
    g: &Geometry,
    namespace: &[u8; NAMESPACE_LEN],
    r: u32,
) -> io::Result<(Option<Option<Summary>>, u64)> {
    let mut area = vec![0u8; g.summary_bytes as usize];
    let n = fs.read_at(path, g.region_offset(r), &mut area)?;
    let summary = match Summary::decode(&area[..n]) {
        Err(MetaError::Blank) => None,
        Ok(s) if s.region == r && s.namespace == *namespace && valid_count(&s, g.slots_per_region) => Some(Some(s)),
        _ => Some(None),
    };
    Ok((summary, n as u64))
}

fn valid_count(s: &Summary, slots: u32) -> bool {
    match s.kind {
        SummaryKind::Sealed => s.entries.len() == slots as usize,
        SummaryKind::Free => s.entries.is_empty(),
    }
}

/// What a scan found in one record slot.
pub(crate) enum Check {
    /// Never written (its header page is zero).
    Empty,
    /// A record of an older pass over its region (sequence below the epoch).
    Stale,
    /// Torn, rotten, foreign or of another block size.
    Corrupt,
    /// A block of this device that verifies (header and payload): its key and sequence.
    Ok(OffloadKey, u64),
}

/// Classifies a record read by a scan of a device of geometry `g` and `namespace`, in a pass
/// that began at `epoch`.
fn check_record(rec: &[u8], g: &Geometry, namespace: &[u8; NAMESPACE_LEN], epoch: u64) -> Check {
    let Some(header) = rec.get(..HEADER_LEN) else { return Check::Corrupt };
    if header.iter().all(|&b| b == 0) {
        return Check::Empty;
    }
    let Ok(h) = format::decode_header(header) else { return Check::Corrupt };
    let block = g.block_bytes as usize;
    if h.namespace != *namespace || h.payload_len != block as u64 || h.seq == 0 {
        return Check::Corrupt;
    }
    if h.seq < epoch {
        return Check::Stale;
    }
    let Some(payload) = rec.get(HEADER_LEN..HEADER_LEN + block) else { return Check::Corrupt };
    match (h.check_payload(payload), OffloadKey::from_bytes(h.key_bytes())) {
        (Ok(()), Ok(key)) => Check::Ok(key, h.seq),
        _ => Check::Corrupt,
    }
}

/// Reads every record of region `r` (in chunks of whole records) and hands each one's index
/// in the region and its [`Check`] to `found`. Returns the bytes read.
pub(crate) fn scan_region(
    fs: &dyn Vfs,
    path: &Path,
    g: &Geometry,
    namespace: &[u8; NAMESPACE_LEN],
    r: u32,
    epoch: u64,
    mut found: impl FnMut(u32, Check),
) -> io::Result<u64> {
    let per_chunk = (SCAN_CHUNK / g.record_bytes).max(1) as u32;
    let mut buf = vec![0u8; (u64::from(per_chunk) * g.record_bytes) as usize];
    let mut bytes_read = 0;
    let mut i = 0;
    while i < g.slots_per_region {
        let n_rec = per_chunk.min(g.slots_per_region - i);
        let want = (u64::from(n_rec) * g.record_bytes) as usize;
        let got = fs.read_at(path, g.slot_offset(g.slot(r, i)), &mut buf[..want])?;
        bytes_read += got as u64;
        for (k, rec) in buf[..got].chunks(g.record_bytes as usize).enumerate() {
            found(i + k as u32, check_record(rec, g, namespace, epoch));
        }
        i += n_rec;
    }
    Ok(bytes_read)
}

/// Rebuilds the index of `device` (see the module docs), resealing the regions it scanned.
pub fn recover(fs: &dyn Vfs, device: &Device, sync: bool) -> io::Result<Recovered> {
    let started = Instant::now();
    let g = device.geometry;
    let mode = mode(fs, device);
    let mut report = RecoveryReport { mode, ..RecoveryReport::default() };
    let mut index = Index::new(g.slots());
    let mut regions = vec![Found::Blank; g.regions as usize];
    if mode == Mode::Fresh {
        report.regions_blank = g.regions;
        report.duration = started.elapsed();
        return Ok(Recovered { index, regions, next_seq: 1, report });
    }
    let mut seqs = vec![0u64; g.slots() as usize];
    let mut max_seq = 0u64;
    let mut reseal = Vec::new();
    let mut wipe = Vec::new();
    let next = AtomicU32::new(0);
    let (tx, rx) = mpsc::channel::<io::Result<RegionFound>>();
    let result = std::thread::scope(|s| -> io::Result<()> {
        for _ in 0..THREADS.min(g.regions) {
            let (tx, next) = (tx.clone(), &next);
            s.spawn(move || loop {
                let r = next.fetch_add(1, Ordering::Relaxed);
                if r >= g.regions {
                    return;
                }
                if tx.send(recover_region(fs, device, mode, r)).is_err() {
                    return;
                }
            });
        }
        drop(tx);
        let mut first_error = None;
        for found in rx {
            let found = match found {
                Ok(f) => f,
                Err(e) => {
                    // Stop the workers; the error is the open's.
                    next.store(g.regions, Ordering::Relaxed);
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            report.bytes_read += found.bytes_read;
            report.dropped_corrupt += found.dropped_corrupt;
            report.dropped_stale += found.dropped_stale;
            report.bad_summaries += u32::from(found.bad_summary);
            report.regions_summarized += u32::from(found.from_summary);
            report.regions_scanned += u32::from(found.scanned);
            let r = found.region;
            regions[r as usize] = found.found;
            match found.found {
                Found::Blank => report.regions_blank += 1,
                Found::Clean { epoch } | Found::Sealed { epoch } => max_seq = max_seq.max(epoch),
            }
            for &(i, key, seq) in &found.records {
                let slot = g.slot(r, i);
                max_seq = max_seq.max(seq);
                seqs[slot as usize] = seq;
                match index.get(&key) {
                    Some(other) if seqs[other as usize] >= seq => report.superseded += 1,
                    _ => {
                        if index.insert(&key, slot).is_some() {
                            report.superseded += 1;
                        }
                    }
                }
            }
            if found.reseal {
                reseal.push((r, found.records));
            } else if found.wipe {
                wipe.push(r);
            }
        }
        first_error.map_or(Ok(()), Err)
    });
    result?;
    // Scanned regions get a summary of exactly what verified.
    for (r, records) in reseal {
        let Found::Sealed { epoch } = regions[r as usize] else { continue };
        let mut entries = vec![None; g.slots_per_region as usize];
        for (i, key, seq) in records {
            entries[i as usize] = Some(Entry { seq, key });
        }
        let summary = Summary { kind: SummaryKind::Sealed, region: r, epoch, namespace: device.namespace, entries };
        let mut bytes = Vec::with_capacity(g.summary_bytes as usize);
        summary.encode(kvtier_fs::DIRECT_ALIGN, &mut bytes);
        fs.write_at(&device.path, g.region_offset(r), &bytes, sync)?;
    }
    for r in wipe {
        fs.write_at(&device.path, g.region_offset(r), &[0u8; kvtier_fs::DIRECT_ALIGN], sync)?;
    }
    report.blocks_indexed = index.len() as u64;
    report.bytes_indexed = report.blocks_indexed * g.block_bytes;
    report.duration = started.elapsed();
    Ok(Recovered { index, regions, next_seq: max_seq + 1, report })
}

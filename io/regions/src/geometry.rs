//! Where everything lies on the device: its header area, its regions, each region's summary
//! area and record slots.
//!
//! ```text
//! 0                      HEADER_AREA (64 KiB)
//! | device header (4 KiB) | run config (JSON) |
//! HEADER_AREA + r * region_bytes:
//! | summary area (summary_bytes) | record 0 | record 1 | ... | record S-1 | (unused tail) |
//! ```
//!
//! A record is one block in the native format: a 4 KiB header (key, length, CRC-32C,
//! sequence number) and the payload zero padded to 4 KiB ([`kvtier_fs::format`]), so every
//! record, and so every run of records, is `O_DIRECT`-aligned. All records of a device have
//! the block size its header names. `S`, the records per region, is the most that fit with
//! their summary (one entry per record).

use kvtier_fs::format::{native_file_len, HEADER_LEN};
use kvtier_fs::DIRECT_ALIGN;

use crate::meta::{SUMMARY_ENTRY, SUMMARY_HEADER};

/// Bytes at the start of the device before its first region: the device header page and the
/// run config's JSON text.
pub const HEADER_AREA: u64 = 64 << 10;
/// Fewest regions a device has: one being written, one being reclaimed, one ready.
pub const MIN_REGIONS: u64 = 3;
/// The default region size.
pub const DEFAULT_REGION_BYTES: u64 = 16 << 20;

const ALIGN: u64 = DIRECT_ALIGN as u64;

/// A device's layout, from its capacity, region size and block size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Bytes of the device used (its header area and its regions).
    pub capacity: u64,
    /// Bytes of a region.
    pub region_bytes: u64,
    /// Bytes of a block (a primary row's meaningful bytes).
    pub block_bytes: u64,
    /// Bytes of a record: the header page and the padded payload.
    pub record_bytes: u64,
    /// Regions.
    pub regions: u32,
    /// Record slots per region.
    pub slots_per_region: u32,
    /// Bytes of a region's summary area (at its start).
    pub summary_bytes: u64,
}

/// Why a geometry cannot be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeometryError(pub String);

impl std::fmt::Display for GeometryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for GeometryError {}

/// The summary area for `slots` records, in whole pages.
pub fn summary_bytes(slots: u64) -> u64 {
    (SUMMARY_HEADER as u64 + slots * SUMMARY_ENTRY as u64).next_multiple_of(ALIGN)
}

impl Geometry {
    /// The layout of a device of `capacity` bytes cut into regions of `region_bytes`, for
    /// blocks of `block_bytes`.
    ///
    /// # Errors
    ///
    /// A region size that is not a multiple of 4096 or holds no record, fewer than
    /// [`MIN_REGIONS`] regions, more than `u32::MAX` record slots, a block size of 0.
    pub fn new(capacity: u64, region_bytes: u64, block_bytes: u64) -> Result<Geometry, GeometryError> {
        let err = |m: String| Err(GeometryError(m));
        if block_bytes == 0 {
            return err("a block of 0 bytes".into());
        }
        if region_bytes == 0 || region_bytes % ALIGN != 0 {
            return err(format!("region_bytes {region_bytes} is not a positive multiple of {ALIGN}"));
        }
        let record_bytes = native_file_len(block_bytes);
        if record_bytes == u64::MAX || record_bytes > region_bytes {
            return err(format!(
                "a region of {region_bytes} bytes cannot hold one record of {record_bytes} bytes (a {block_bytes}-byte \
                 block and its {HEADER_LEN}-byte header)"
            ));
        }
        // The most records that fit with their summary.
        let mut slots = (region_bytes - summary_bytes(0)) / record_bytes;
        while slots > 0 && summary_bytes(slots) + slots * record_bytes > region_bytes {
            slots -= 1;
        }
        if slots == 0 {
            return err(format!("a region of {region_bytes} bytes cannot hold one record and its summary"));
        }
        let regions = capacity.saturating_sub(HEADER_AREA) / region_bytes;
        if regions < MIN_REGIONS {
            return err(format!(
                "capacity {capacity} holds {regions} regions of {region_bytes} bytes; at least {MIN_REGIONS} are needed \
                 (capacity >= {})",
                HEADER_AREA + MIN_REGIONS * region_bytes
            ));
        }
        if regions.checked_mul(slots).is_none_or(|n| n > u64::from(u32::MAX)) || regions > u64::from(u32::MAX) {
            return err(format!("{regions} regions of {slots} records: more than 2^32 record slots"));
        }
        Ok(Geometry {
            capacity: HEADER_AREA + regions * region_bytes,
            region_bytes,
            block_bytes,
            record_bytes,
            regions: regions as u32,
            slots_per_region: slots as u32,
            summary_bytes: summary_bytes(slots),
        })
    }

    /// Record slots in all.
    pub fn slots(&self) -> u32 {
        self.regions * self.slots_per_region
    }

    /// Where region `r` starts (its summary area).
    pub fn region_offset(&self, r: u32) -> u64 {
        HEADER_AREA + u64::from(r) * self.region_bytes
    }

    /// Where record slot `slot` (a global slot number) starts.
    pub fn slot_offset(&self, slot: u32) -> u64 {
        let (r, i) = (slot / self.slots_per_region, slot % self.slots_per_region);
        self.region_offset(r) + self.summary_bytes + u64::from(i) * self.record_bytes
    }

    /// The region of record slot `slot`.
    pub fn region_of(&self, slot: u32) -> u32 {
        slot / self.slots_per_region
    }

    /// Slot `i` of region `r`.
    pub fn slot(&self, r: u32, i: u32) -> u32 {
        r * self.slots_per_region + i
    }

    /// Bytes of block payload the device holds when full.
    pub fn block_capacity(&self) -> u64 {
        u64::from(self.slots()) * self.block_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_summaries_fit_their_regions() {
        for (region, block) in [(16 << 20, 64 << 10), (16 << 20, 2 << 20), (1 << 20, 4096), (64 << 10, 5000)] {
            let g = Geometry::new(HEADER_AREA + 10 * region, region, block).unwrap();
            assert_eq!(g.regions, 10);
            assert_eq!(g.record_bytes % ALIGN, 0);
            assert_eq!(g.summary_bytes % ALIGN, 0);
            let used = g.summary_bytes + u64::from(g.slots_per_region) * g.record_bytes;
            assert!(used <= region, "{region}/{block}");
            assert!(used + g.record_bytes + SUMMARY_ENTRY as u64 > region, "{region}/{block}: room for one more");
            let last = g.slot(9, g.slots_per_region - 1);
            assert!(g.slot_offset(last) + g.record_bytes <= g.capacity);
            assert_eq!((g.region_of(last), g.slot_offset(0)), (9, HEADER_AREA + g.summary_bytes));
        }
        let g = Geometry::new(100 << 30, 16 << 20, 64 << 10).unwrap();
        assert_eq!((g.slots_per_region, g.summary_bytes), (240, 20480));
    }

    #[test]
    fn impossible_geometries_are_refused() {
        assert!(Geometry::new(1 << 30, 16 << 20, 0).is_err());
        assert!(Geometry::new(1 << 30, 1000, 4096).is_err());
        assert!(Geometry::new(1 << 30, 8192, 8192).is_err(), "no room for a record and its summary");
        assert!(Geometry::new(HEADER_AREA + 2 * (1 << 20), 1 << 20, 4096).is_err(), "two regions");
        assert!(Geometry::new(u64::MAX, 8192 + 4096, 1).is_err(), "more than 2^32 slots");
    }
}

//! The engine's own on-disk metadata: the device header and the region summaries. (Block
//! records are the native format's, [`kvtier_fs::format`].) Every decoder checks a CRC-32C
//! and every field, and never panics, whatever the input (the `region_meta` fuzz target).
//!
//! **Device header** (offset 0, one 4 KiB page; integers little-endian), followed at offset
//! 4096 by the run config's canonical JSON text (`config_len` bytes, checksummed):
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 8 | magic `KVTIERDV` |
//! | 8 | 4 | version (1) |
//! | 12 | 4 | header length (4096) |
//! | 16 | 8 | capacity (bytes) |
//! | 24 | 8 | region bytes |
//! | 32 | 8 | block bytes |
//! | 40 | 4 | rank |
//! | 44 | 12 | namespace digest (12 ASCII hex bytes) |
//! | 56 | 4 | run config length |
//! | 60 | 4 | run config CRC-32C |
//! | 64 | 4 | state: 1 closed cleanly, 2 open (a process has it, or crashed with it) |
//! | 68 | 4 | pid of the process that opened it |
//! | 72 | 1 | that process syncs its writes (`fsync`): 0 or 1 |
//! | 73 | 1 | boot id length (0 to 64) |
//! | 74 | 64 | boot id of that process's machine boot (ASCII, zero padded) |
//! | 138 | 2 | reserved, zero |
//! | 140 | 4 | CRC-32C of bytes `0..140` |
//! | 144 | 3952 | reserved, zero |
//!
//! **Region summary** (at the start of each region, `summary_bytes` long): a 64-byte header,
//! then one 80-byte entry per record slot of a sealed region.
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 8 | magic `KVTIERSM` |
//! | 8 | 4 | version (1) |
//! | 12 | 4 | kind: 1 sealed (entries follow), 2 free (none) |
//! | 16 | 4 | region index |
//! | 20 | 4 | entries |
//! | 24 | 8 | epoch: the first sequence number this pass over the region may use |
//! | 32 | 12 | namespace digest |
//! | 44 | 16 | reserved, zero |
//! | 60 | 4 | CRC-32C of bytes `0..60` and of every entry |
//!
//! Entry: sequence number (u64; 0 for an empty slot), key length (u8), key (64 bytes, zero
//! padded), 7 reserved zero bytes. A used entry's sequence is at least the epoch.
//!
//! A *free* summary (a marker) is written when a region is reclaimed, before anything new is
//! written to it: a record found there later is this pass's only if its sequence number is at
//! least the marker's epoch. An all-zero summary area is a region never written.

use core::fmt;

use kvtier_core::{OffloadKey, GROUP_LEN, MAX_KEY_LEN};

/// The device header's magic.
pub const DEVICE_MAGIC: [u8; 8] = *b"KVTIERDV";
/// The summary's magic.
pub const SUMMARY_MAGIC: [u8; 8] = *b"KVTIERSM";
/// The metadata version this code writes and reads.
pub const META_VERSION: u32 = 1;
/// The device header's length (one page); the run config follows it.
pub const DEVICE_HEADER_LEN: usize = 4096;
/// Bytes of a summary's header.
pub const SUMMARY_HEADER: usize = 64;
/// Bytes of a summary entry.
pub const SUMMARY_ENTRY: usize = 80;
/// Longest boot id the device header holds.
pub const MAX_BOOT_ID: usize = 64;
/// Length of the namespace digest.
pub const NAMESPACE_LEN: usize = 12;

const DEVICE_CRC: usize = 140;

/// Why metadata does not decode. Every variant means: not this engine's, torn, or rotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaError {
    /// Fewer bytes than the structure.
    Truncated,
    /// Every byte of the header is zero: never written.
    Blank,
    /// The magic is wrong.
    BadMagic,
    /// A version this code does not read.
    UnsupportedVersion(u32),
    /// The checksum does not match.
    Checksum,
    /// A field holds a value it cannot (a reserved byte not zero, an unknown kind or state, a
    /// bad key length, a sequence below the epoch...).
    BadField(&'static str),
}

impl fmt::Display for MetaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaError::Truncated => f.write_str("truncated"),
            MetaError::Blank => f.write_str("blank (never written)"),
            MetaError::BadMagic => f.write_str("bad magic"),
            MetaError::UnsupportedVersion(v) => write!(f, "unsupported version {v}"),
            MetaError::Checksum => f.write_str("checksum mismatch"),
            MetaError::BadField(what) => write!(f, "bad field: {what}"),
        }
    }
}

impl std::error::Error for MetaError {}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Whether the device is open (or was, by a process that crashed) or was closed cleanly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceState {
    /// Closed cleanly: every region's summary is on disk.
    Closed,
    /// Open now, or left open by a process that crashed.
    Open,
}

/// A decoded device header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceHeader {
    /// Bytes of the device used.
    pub capacity: u64,
    /// Bytes of a region.
    pub region_bytes: u64,
    /// Bytes of a block.
    pub block_bytes: u64,
    /// The rank the device belongs to.
    pub rank: u32,
    /// The namespace digest (of the run config).
    pub namespace: [u8; NAMESPACE_LEN],
    /// Length of the run config text after the header page.
    pub config_len: u32,
    /// Its CRC-32C.
    pub config_crc: u32,
    /// Open or closed.
    pub state: DeviceState,
    /// The process that last opened it.
    pub pid: u32,
    /// Whether that process synced its writes.
    pub fsync: bool,
    /// The boot that process ran in.
    pub boot_id: String,
}

impl DeviceHeader {
    /// Writes the header page.
    pub fn encode(&self, out: &mut [u8; DEVICE_HEADER_LEN]) {
        out.fill(0);
        out[0..8].copy_from_slice(&DEVICE_MAGIC);
        out[8..12].copy_from_slice(&META_VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&(DEVICE_HEADER_LEN as u32).to_le_bytes());
        out[16..24].copy_from_slice(&self.capacity.to_le_bytes());
        out[24..32].copy_from_slice(&self.region_bytes.to_le_bytes());
        out[32..40].copy_from_slice(&self.block_bytes.to_le_bytes());
        out[40..44].copy_from_slice(&self.rank.to_le_bytes());
        out[44..56].copy_from_slice(&self.namespace);
        out[56..60].copy_from_slice(&self.config_len.to_le_bytes());
        out[60..64].copy_from_slice(&self.config_crc.to_le_bytes());
        let state: u32 = match self.state {
            DeviceState::Closed => 1,
            DeviceState::Open => 2,
        };
        out[64..68].copy_from_slice(&state.to_le_bytes());
        out[68..72].copy_from_slice(&self.pid.to_le_bytes());
        out[72] = u8::from(self.fsync);
        let boot = &self.boot_id.as_bytes()[..self.boot_id.len().min(MAX_BOOT_ID)];
        out[73] = boot.len() as u8;
        out[74..74 + boot.len()].copy_from_slice(boot);
        let crc = crc32c::crc32c(&out[..DEVICE_CRC]);
        out[DEVICE_CRC..DEVICE_CRC + 4].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes and checks the header page at the start of `buf`. Never panics.
    pub fn decode(buf: &[u8]) -> Result<DeviceHeader, MetaError> {
        let h = buf.get(..DEVICE_HEADER_LEN).ok_or(MetaError::Truncated)?;
        if h.iter().all(|&b| b == 0) {
            return Err(MetaError::Blank);
        }
        if h[0..8] != DEVICE_MAGIC {
            return Err(MetaError::BadMagic);
        }
        let version = le32(h, 8);
        if version != META_VERSION {
            return Err(MetaError::UnsupportedVersion(version));
        }
        if crc32c::crc32c(&h[..DEVICE_CRC]) != le32(h, DEVICE_CRC) {
            return Err(MetaError::Checksum);
        }
        if le32(h, 12) as usize != DEVICE_HEADER_LEN {
            return Err(MetaError::BadField("header length"));
        }
        let state = match le32(h, 64) {
            1 => DeviceState::Closed,
            2 => DeviceState::Open,
            _ => return Err(MetaError::BadField("state")),
        };
        let fsync = match h[72] {
            0 => false,
            1 => true,
            _ => return Err(MetaError::BadField("fsync")),
        };
        let boot_len = usize::from(h[73]);
        if boot_len > MAX_BOOT_ID {
            return Err(MetaError::BadField("boot id length"));
        }
        let boot_id = std::str::from_utf8(&h[74..74 + boot_len]).map_err(|_| MetaError::BadField("boot id"))?;
        if h[74 + boot_len..138].iter().chain(&h[138..140]).chain(&h[DEVICE_CRC + 4..]).any(|&b| b != 0) {
            return Err(MetaError::BadField("reserved bytes"));
        }
        let mut namespace = [0u8; NAMESPACE_LEN];
        namespace.copy_from_slice(&h[44..56]);
        Ok(DeviceHeader {
            capacity: le64(h, 16),
            region_bytes: le64(h, 24),
            block_bytes: le64(h, 32),
            rank: le32(h, 40),
            namespace,
            config_len: le32(h, 56),
            config_crc: le32(h, 60),
            state,
            pid: le32(h, 68),
            fsync,
            boot_id: boot_id.to_string(),
        })
    }
}

/// What a region's summary says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SummaryKind {
    /// The region was sealed: its entries list its records.
    Sealed,
    /// The region was reclaimed: records of sequence below the epoch are of an older pass.
    Free,
}

/// One record slot of a sealed region: its block's key and sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The record's sequence number.
    pub seq: u64,
    /// Its block's key.
    pub key: OffloadKey,
}

/// A decoded region summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Sealed or free.
    pub kind: SummaryKind,
    /// The region it describes.
    pub region: u32,
    /// The first sequence number of the region's pass.
    pub epoch: u64,
    /// The namespace it was written under.
    pub namespace: [u8; NAMESPACE_LEN],
    /// Per slot (sealed): the record there, if any.
    pub entries: Vec<Option<Entry>>,
}

impl Summary {
    /// Bytes of the encoded summary (header and entries; the caller pads it to whole pages).
    pub fn encoded_len(&self) -> usize {
        SUMMARY_HEADER + self.entries.len() * SUMMARY_ENTRY
    }

    /// Appends the encoded summary to `out`, zero padded to a multiple of `pad`.
    pub fn encode(&self, pad: usize, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + self.encoded_len().next_multiple_of(pad.max(1)), 0);
        let b = &mut out[start..];
        b[0..8].copy_from_slice(&SUMMARY_MAGIC);
        b[8..12].copy_from_slice(&META_VERSION.to_le_bytes());
        let kind: u32 = match self.kind {
            SummaryKind::Sealed => 1,
            SummaryKind::Free => 2,
        };
        b[12..16].copy_from_slice(&kind.to_le_bytes());
        b[16..20].copy_from_slice(&self.region.to_le_bytes());
        b[20..24].copy_from_slice(&(self.entries.len() as u32).to_le_bytes());
        b[24..32].copy_from_slice(&self.epoch.to_le_bytes());
        b[32..44].copy_from_slice(&self.namespace);
        for (i, e) in self.entries.iter().enumerate() {
            let at = SUMMARY_HEADER + i * SUMMARY_ENTRY;
            if let Some(e) = e {
                let key = e.key.as_bytes();
                b[at..at + 8].copy_from_slice(&e.seq.to_le_bytes());
                b[at + 8] = key.len() as u8;
                b[at + 9..at + 9 + key.len()].copy_from_slice(key);
            }
        }
        let end = self.encoded_len();
        let mut crc = crc32c::crc32c(&b[..60]);
        crc = crc32c::crc32c_append(crc, &b[SUMMARY_HEADER..end]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes and checks the summary at the start of `buf`. Never panics. The caller checks
    /// that it is the region, namespace and slot count it expects.
    pub fn decode(buf: &[u8]) -> Result<Summary, MetaError> {
        let h = buf.get(..SUMMARY_HEADER).ok_or(MetaError::Truncated)?;
        if h.iter().all(|&b| b == 0) {
            return Err(MetaError::Blank);
        }
        if h[0..8] != SUMMARY_MAGIC {
            return Err(MetaError::BadMagic);
        }
        let version = le32(h, 8);
        if version != META_VERSION {
            return Err(MetaError::UnsupportedVersion(version));
        }
        let count = le32(h, 20) as usize;
        let end =
            count.checked_mul(SUMMARY_ENTRY).and_then(|n| n.checked_add(SUMMARY_HEADER)).ok_or(MetaError::Truncated)?;
        let body = buf.get(SUMMARY_HEADER..end).ok_or(MetaError::Truncated)?;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&h[..60]), body);
        if crc != le32(h, 60) {
            return Err(MetaError::Checksum);
        }
        let kind = match le32(h, 12) {
            1 => SummaryKind::Sealed,
            2 if count == 0 => SummaryKind::Free,
            2 => return Err(MetaError::BadField("entries in a free summary")),
            _ => return Err(MetaError::BadField("kind")),
        };
        if h[44..60].iter().any(|&b| b != 0) {
            return Err(MetaError::BadField("reserved bytes"));
        }
        let epoch = le64(h, 24);
        let mut entries = Vec::with_capacity(count.min(1 << 20));
        for e in body.chunks_exact(SUMMARY_ENTRY) {
            let seq = le64(e, 0);
            let len = usize::from(e[8]);
            if seq == 0 {
                if e[8..].iter().any(|&b| b != 0) {
                    return Err(MetaError::BadField("an empty entry is not zero"));
                }
                entries.push(None);
                continue;
            }
            if seq < epoch {
                return Err(MetaError::BadField("a sequence number below the epoch"));
            }
            if !(GROUP_LEN..=MAX_KEY_LEN).contains(&len) || e[9 + len..].iter().any(|&b| b != 0) {
                return Err(MetaError::BadField("key"));
            }
            let key = OffloadKey::from_bytes(&e[9..9 + len]).map_err(|_| MetaError::BadField("key"))?;
            entries.push(Some(Entry { seq, key }));
        }
        let mut namespace = [0u8; NAMESPACE_LEN];
        namespace.copy_from_slice(&h[32..44]);
        Ok(Summary { kind, region: le32(h, 16), epoch, namespace, entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: [u8; 12] = *b"0123456789ab";

    fn header() -> DeviceHeader {
        DeviceHeader {
            capacity: 1 << 30,
            region_bytes: 16 << 20,
            block_bytes: 65536,
            rank: 3,
            namespace: NS,
            config_len: 321,
            config_crc: 0xdead_beef,
            state: DeviceState::Open,
            pid: 4242,
            fsync: true,
            boot_id: "6f1c0a52-94f5-4b49-a3e6-3b5a3c0f4b1e".into(),
        }
    }

    fn summary() -> Summary {
        let key = |i: u8| OffloadKey::new(&[i; 32], u32::from(i)).unwrap();
        Summary {
            kind: SummaryKind::Sealed,
            region: 7,
            epoch: 100,
            namespace: NS,
            entries: vec![Some(Entry { seq: 100, key: key(1) }), None, Some(Entry { seq: 250, key: key(2) })],
        }
    }

    #[test]
    fn device_headers_round_trip_and_every_bit_is_checked() {
        let mut page = [0u8; DEVICE_HEADER_LEN];
        header().encode(&mut page);
        assert_eq!(DeviceHeader::decode(&page), Ok(header()));
        for byte in 0..DEVICE_HEADER_LEN {
            let mut bad = page;
            bad[byte] ^= 0x10;
            assert!(DeviceHeader::decode(&bad).is_err(), "byte {byte}");
        }
        assert_eq!(DeviceHeader::decode(&[0u8; DEVICE_HEADER_LEN]), Err(MetaError::Blank));
        assert_eq!(DeviceHeader::decode(&page[..100]), Err(MetaError::Truncated));
    }

    #[test]
    fn summaries_round_trip_and_every_bit_is_checked() {
        let mut buf = Vec::new();
        summary().encode(4096, &mut buf);
        assert_eq!(buf.len(), 4096);
        assert_eq!(Summary::decode(&buf), Ok(summary()));
        let used = summary().encoded_len();
        for byte in 0..used {
            let mut bad = buf.clone();
            bad[byte] ^= 0x01;
            assert!(Summary::decode(&bad).is_err(), "byte {byte}");
        }
        assert_eq!(Summary::decode(&buf[..used - 1]), Err(MetaError::Truncated));
        let free = Summary { kind: SummaryKind::Free, entries: Vec::new(), ..summary() };
        let mut marker = Vec::new();
        free.encode(4096, &mut marker);
        assert_eq!(Summary::decode(&marker), Ok(free));
        assert_eq!(Summary::decode(&[0u8; 4096]), Err(MetaError::Blank));
    }

    #[test]
    fn decoders_never_panic_on_noise() {
        let mut rng = kvtier_fs::rng::SplitMix64::new(7);
        let mut page = [0u8; DEVICE_HEADER_LEN];
        header().encode(&mut page);
        let mut sum = Vec::new();
        summary().encode(4096, &mut sum);
        for _ in 0..20_000 {
            let mut a = page.to_vec();
            let mut b = sum.clone();
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(200) as usize;
                a[i] = rng.next_u64() as u8;
                let j = i % b.len();
                b[j] = rng.next_u64() as u8;
            }
            let cut = rng.below(4097) as usize;
            let _ = DeviceHeader::decode(&a[..cut]);
            let _ = Summary::decode(&b[..cut.min(b.len())]);
            let _ = Summary::decode(&a);
        }
    }
}

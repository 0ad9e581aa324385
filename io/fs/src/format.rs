//! The on-disk block formats.
//!
//! - `vllm`: the file is the raw row bytes, exactly what vLLM's FS tier writes. Nothing here.
//! - `native` (the default): one [`HEADER_LEN`]-byte header, then the row bytes, zero padded to a
//!   multiple of [`HEADER_LEN`] so the whole file can be read and written with O_DIRECT. The
//!   header names the namespace and the key, so a file that strayed into another directory or
//!   under another name is caught, and checksums the payload, so a torn or rotten block is never
//!   served as KV data.
//!
//! Native header, all integers little-endian:
//!
//! | offset | size | field | value |
//! |---:|---:|---|---|
//! | 0 | 8 | magic | [`MAGIC`] (`b"KVTIERBK"`) |
//! | 8 | 4 | format version (u32) | [`VERSION`] (1) |
//! | 12 | 4 | header length (u32) | [`HEADER_LEN`] (4096) |
//! | 16 | 12 | namespace | the namespace digest, 12 ASCII hex bytes |
//! | 28 | 1 | key length (u8) | 4 to 64 |
//! | 29 | 64 | key | the full key bytes, zero padded |
//! | 93 | 3 | reserved | zero |
//! | 96 | 8 | payload length (u64) | the row size in bytes |
//! | 104 | 4 | payload checksum (u32) | CRC-32C of the payload (not of its padding) |
//! | 108 | 4 | header checksum (u32) | CRC-32C of bytes `0..108` |
//! | 112 | 8 | sequence (u64) | 0 for a block file; a disk engine's record sequence number |
//! | 120 | 4 | sequence checksum (u32) | 0 when the sequence is 0; else CRC-32C of bytes `0..120` |
//! | 124 | 3972 | reserved | zero |
//!
//! The sequence is what a region-based disk engine (`kvtier-regions`) numbers its records
//! with, so its recovery can tell a newer copy of a block from an older one. A block file
//! carries none: its bytes `112..124` are zero, exactly as before the field existed, so block
//! files written before and after read the same.
//!
//! [`decode_header`] checks, in order: length, magic, version, header length (so a future
//! layout is reported as such, not as a checksum failure), header checksum, key length, the
//! sequence and its checksum, and that every padding and reserved byte is zero.
//! [`Header::check`] then matches it against the expected namespace, key and payload (not the
//! sequence, which says which copy, not what it holds). Neither ever panics, whatever the
//! input.

use core::fmt;

use kvtier_core::{OffloadKey, MAX_KEY_LEN};

/// Length of the native header; one O_DIRECT-aligned block. Payloads are padded to it too.
pub const HEADER_LEN: usize = 4096;
/// The native header's magic.
pub const MAGIC: [u8; 8] = *b"KVTIERBK";
/// The native format version this code writes and reads.
pub const VERSION: u32 = 1;
/// Length of the namespace digest in the header.
pub const NAMESPACE_LEN: usize = 12;

/// Offset of the magic.
pub const OFF_MAGIC: usize = 0;
/// Offset of the format version (u32).
pub const OFF_VERSION: usize = 8;
/// Offset of the header length (u32).
pub const OFF_HEADER_LEN: usize = 12;
/// Offset of the namespace digest (12 bytes).
pub const OFF_NAMESPACE: usize = 16;
/// Offset of the key length (u8).
pub const OFF_KEY_LEN: usize = 28;
/// Offset of the key bytes (64, zero padded).
pub const OFF_KEY: usize = 29;
/// Offset of the 3 reserved bytes after the key.
pub const OFF_RESERVED: usize = 93;
/// Offset of the payload length (u64).
pub const OFF_PAYLOAD_LEN: usize = 96;
/// Offset of the payload CRC-32C (u32).
pub const OFF_PAYLOAD_CRC: usize = 104;
/// Offset of the header CRC-32C (u32), computed over bytes `0..OFF_HEADER_CRC`.
pub const OFF_HEADER_CRC: usize = 108;
/// End of the fields every header carries (the sequence follows).
pub const FIELDS_END: usize = 112;
/// Offset of the sequence (u64; 0: none).
pub const OFF_SEQ: usize = 112;
/// Offset of the sequence checksum (u32), CRC-32C of bytes `0..OFF_SEQ_CRC`; 0 without a
/// sequence.
pub const OFF_SEQ_CRC: usize = 120;
/// End of the meaningful header bytes; bytes from here to [`HEADER_LEN`] are zero.
pub const SEQ_END: usize = 124;

/// A decoded native header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The namespace digest it was written under.
    pub namespace: [u8; NAMESPACE_LEN],
    key_len: u8,
    key: [u8; MAX_KEY_LEN],
    /// The payload length in bytes (without padding).
    pub payload_len: u64,
    /// CRC-32C of the payload.
    pub payload_crc: u32,
    /// The record's sequence number (0: none, a block file).
    pub seq: u64,
}

/// Why a native block file is not the expected block. Every variant means the file is corrupt
/// or foreign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatError {
    /// Fewer than [`HEADER_LEN`] bytes.
    Truncated,
    /// The magic is wrong: not a native block file.
    BadMagic,
    /// A format version this code does not read.
    UnsupportedVersion(u32),
    /// The header-length field is not [`HEADER_LEN`].
    BadHeaderLen(u32),
    /// The header checksum does not match.
    HeaderChecksum,
    /// A key length outside 4..=64.
    BadKeyLen(u8),
    /// A padding or reserved byte is not zero.
    ReservedNotZero,
    /// Written under another namespace.
    ForeignNamespace,
    /// Written for another key.
    WrongKey,
    /// The payload length differs from the header's.
    LengthMismatch {
        /// The header's payload length.
        header: u64,
        /// The payload's actual length.
        actual: u64,
    },
    /// The payload checksum does not match.
    PayloadChecksum,
}

impl FormatError {
    /// One error of each kind (with zero payloads): every reason a native file can fail
    /// verification with. A new variant must be added here, or a test fails.
    pub const EACH: [FormatError; 11] = [
        FormatError::Truncated,
        FormatError::BadMagic,
        FormatError::UnsupportedVersion(0),
        FormatError::BadHeaderLen(0),
        FormatError::HeaderChecksum,
        FormatError::BadKeyLen(0),
        FormatError::ReservedNotZero,
        FormatError::ForeignNamespace,
        FormatError::WrongKey,
        FormatError::LengthMismatch { header: 0, actual: 0 },
        FormatError::PayloadChecksum,
    ];
}

impl FormatError {
    /// A short static description, e.g. for [`crate::Outcome::Corrupt`].
    pub const fn reason(&self) -> &'static str {
        match self {
            FormatError::Truncated => "truncated header",
            FormatError::BadMagic => "bad magic",
            FormatError::UnsupportedVersion(_) => "unsupported version",
            FormatError::BadHeaderLen(_) => "bad header length",
            FormatError::HeaderChecksum => "header checksum",
            FormatError::BadKeyLen(_) => "bad key length",
            FormatError::ReservedNotZero => "reserved bytes not zero",
            FormatError::ForeignNamespace => "foreign namespace",
            FormatError::WrongKey => "wrong key",
            FormatError::LengthMismatch { .. } => "length mismatch",
            FormatError::PayloadChecksum => "payload checksum",
        }
    }
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FormatError::UnsupportedVersion(v) => write!(f, "unsupported version {v}"),
            FormatError::BadHeaderLen(n) => write!(f, "bad header length {n}"),
            FormatError::BadKeyLen(n) => write!(f, "bad key length {n}"),
            FormatError::LengthMismatch { header, actual } => {
                write!(f, "length mismatch: header says {header}, payload is {actual}")
            }
            e => f.write_str(e.reason()),
        }
    }
}

impl core::error::Error for FormatError {}

/// `payload_len` rounded up to a multiple of [`HEADER_LEN`] (saturating at the largest such
/// multiple, far beyond any real row).
pub const fn padded_payload_len(payload_len: u64) -> u64 {
    const ALIGN: u64 = HEADER_LEN as u64;
    match payload_len.checked_add(ALIGN - 1) {
        Some(n) => n / ALIGN * ALIGN,
        None => u64::MAX / ALIGN * ALIGN,
    }
}

/// The size of a native block file for a `payload_len`-byte row: header plus padded payload
/// (saturating, like [`padded_payload_len`]).
pub const fn native_file_len(payload_len: u64) -> u64 {
    padded_payload_len(payload_len).saturating_add(HEADER_LEN as u64)
}

impl Header {
    /// The header for `payload` stored under `namespace` as `key` (computes the payload's
    /// CRC-32C).
    pub fn for_payload(namespace: &[u8; NAMESPACE_LEN], key: &OffloadKey, payload: &[u8]) -> Self {
        let bytes = key.as_bytes();
        let mut k = [0u8; MAX_KEY_LEN];
        k[..bytes.len()].copy_from_slice(bytes);
        Header {
            namespace: *namespace,
            // A key is at most 64 bytes.
            key_len: bytes.len() as u8,
            key: k,
            payload_len: payload.len() as u64,
            payload_crc: crc32c::crc32c(payload),
            seq: 0,
        }
    }

    /// The same header with sequence number `seq` (0: none).
    pub fn with_seq(self, seq: u64) -> Self {
        Header { seq, ..self }
    }

    /// The key bytes the header carries.
    pub fn key_bytes(&self) -> &[u8] {
        &self.key[..usize::from(self.key_len).min(MAX_KEY_LEN)]
    }

    /// Writes the header (every byte of `out`).
    pub fn encode(&self, out: &mut [u8; HEADER_LEN]) {
        out.fill(0);
        out[OFF_MAGIC..OFF_MAGIC + 8].copy_from_slice(&MAGIC);
        out[OFF_VERSION..OFF_VERSION + 4].copy_from_slice(&VERSION.to_le_bytes());
        out[OFF_HEADER_LEN..OFF_HEADER_LEN + 4].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        out[OFF_NAMESPACE..OFF_NAMESPACE + NAMESPACE_LEN].copy_from_slice(&self.namespace);
        out[OFF_KEY_LEN] = self.key_len;
        out[OFF_KEY..OFF_KEY + MAX_KEY_LEN].copy_from_slice(&self.key);
        out[OFF_PAYLOAD_LEN..OFF_PAYLOAD_LEN + 8].copy_from_slice(&self.payload_len.to_le_bytes());
        out[OFF_PAYLOAD_CRC..OFF_PAYLOAD_CRC + 4].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32c::crc32c(&out[..OFF_HEADER_CRC]);
        out[OFF_HEADER_CRC..OFF_HEADER_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        if self.seq != 0 {
            out[OFF_SEQ..OFF_SEQ + 8].copy_from_slice(&self.seq.to_le_bytes());
            let crc = crc32c::crc32c(&out[..OFF_SEQ_CRC]);
            out[OFF_SEQ_CRC..OFF_SEQ_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        }
    }

    /// Namespace and key match.
    pub fn check_identity(&self, namespace: &[u8; NAMESPACE_LEN], key: &OffloadKey) -> Result<(), FormatError> {
        if self.namespace != *namespace {
            return Err(FormatError::ForeignNamespace);
        }
        if self.key_bytes() != key.as_bytes() {
            return Err(FormatError::WrongKey);
        }
        Ok(())
    }

    /// `payload` (without padding) has the header's length and checksum.
    pub fn check_payload(&self, payload: &[u8]) -> Result<(), FormatError> {
        let actual = payload.len() as u64;
        if actual != self.payload_len {
            return Err(FormatError::LengthMismatch { header: self.payload_len, actual });
        }
        if crc32c::crc32c(payload) != self.payload_crc {
            return Err(FormatError::PayloadChecksum);
        }
        Ok(())
    }

    /// The header is `key`'s under `namespace` and `payload` is what it describes.
    pub fn check(&self, namespace: &[u8; NAMESPACE_LEN], key: &OffloadKey, payload: &[u8]) -> Result<(), FormatError> {
        self.check_identity(namespace, key)?;
        self.check_payload(payload)
    }
}

/// Writes the native header for `payload` stored under `namespace` as `key` into `out`.
pub fn encode_header(namespace: &[u8; NAMESPACE_LEN], key: &OffloadKey, payload: &[u8], out: &mut [u8; HEADER_LEN]) {
    Header::for_payload(namespace, key, payload).encode(out);
}

/// [`encode_header`] with a record sequence number (0: none).
pub fn encode_record_header(
    namespace: &[u8; NAMESPACE_LEN],
    key: &OffloadKey,
    seq: u64,
    payload: &[u8],
    out: &mut [u8; HEADER_LEN],
) {
    Header::for_payload(namespace, key, payload).with_seq(seq).encode(out);
}

/// Checks a whole native block file's bytes: a header that decodes, names `namespace` and
/// `key`, and a length and payload that match it (the padding is not read).
pub fn verify_file(bytes: &[u8], namespace: &[u8; NAMESPACE_LEN], key: &OffloadKey) -> Result<(), FormatError> {
    let header = decode_header(bytes)?;
    let actual = bytes.len() as u64;
    if actual != native_file_len(header.payload_len) {
        let payload = actual.saturating_sub(HEADER_LEN as u64);
        return Err(FormatError::LengthMismatch { header: header.payload_len, actual: payload });
    }
    let end = HEADER_LEN.saturating_add(usize::try_from(header.payload_len).unwrap_or(usize::MAX));
    header.check(namespace, key, bytes.get(HEADER_LEN..end).unwrap_or(&[]))
}

fn array<const N: usize>(h: &[u8; HEADER_LEN], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&h[at..at + N]);
    a
}

/// Decodes and validates the native header at the start of `buf` (only its first
/// [`HEADER_LEN`] bytes are looked at). Never panics.
pub fn decode_header(buf: &[u8]) -> Result<Header, FormatError> {
    let Some(h) = buf.first_chunk::<HEADER_LEN>() else {
        return Err(FormatError::Truncated);
    };
    if array::<8>(h, OFF_MAGIC) != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let version = u32::from_le_bytes(array(h, OFF_VERSION));
    if version != VERSION {
        return Err(FormatError::UnsupportedVersion(version));
    }
    let header_len = u32::from_le_bytes(array(h, OFF_HEADER_LEN));
    if header_len as usize != HEADER_LEN {
        return Err(FormatError::BadHeaderLen(header_len));
    }
    if crc32c::crc32c(&h[..OFF_HEADER_CRC]) != u32::from_le_bytes(array(h, OFF_HEADER_CRC)) {
        return Err(FormatError::HeaderChecksum);
    }
    let key_len = h[OFF_KEY_LEN];
    if !(kvtier_core::GROUP_LEN..=MAX_KEY_LEN).contains(&usize::from(key_len)) {
        return Err(FormatError::BadKeyLen(key_len));
    }
    let key: [u8; MAX_KEY_LEN] = array(h, OFF_KEY);
    let seq = u64::from_le_bytes(array(h, OFF_SEQ));
    let seq_crc = u32::from_le_bytes(array(h, OFF_SEQ_CRC));
    if (seq, seq_crc) != (0, 0) {
        if crc32c::crc32c(&h[..OFF_SEQ_CRC]) != seq_crc {
            return Err(FormatError::HeaderChecksum);
        }
        if seq == 0 {
            // A checksummed zero: not what `encode` writes for "no sequence".
            return Err(FormatError::ReservedNotZero);
        }
    }
    let padding = &key[usize::from(key_len)..];
    let reserved = &h[OFF_RESERVED..OFF_PAYLOAD_LEN];
    let tail = &h[SEQ_END..];
    if padding.iter().chain(reserved).chain(tail).any(|&b| b != 0) {
        return Err(FormatError::ReservedNotZero);
    }
    Ok(Header {
        namespace: array(h, OFF_NAMESPACE),
        key_len,
        key,
        payload_len: u64::from_le_bytes(array(h, OFF_PAYLOAD_LEN)),
        payload_crc: u32::from_le_bytes(array(h, OFF_PAYLOAD_CRC)),
        seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: [u8; 12] = *b"0123456789ab";

    fn key() -> OffloadKey {
        OffloadKey::new(&[0x5a; 32], 3).unwrap()
    }

    fn payload() -> Vec<u8> {
        (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn encoded(key: &OffloadKey, payload: &[u8]) -> [u8; HEADER_LEN] {
        let mut out = [0xffu8; HEADER_LEN];
        encode_header(&NS, key, payload, &mut out);
        out
    }

    /// Rewrites the header checksum after a deliberate edit.
    fn reseal(h: &mut [u8; HEADER_LEN]) {
        let crc = crc32c::crc32c(&h[..OFF_HEADER_CRC]);
        h[OFF_HEADER_CRC..OFF_HEADER_CRC + 4].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn layout_constants() {
        assert_eq!(OFF_VERSION, OFF_MAGIC + MAGIC.len());
        assert_eq!(OFF_NAMESPACE + NAMESPACE_LEN, OFF_KEY_LEN);
        assert_eq!(OFF_KEY + MAX_KEY_LEN, OFF_RESERVED);
        assert_eq!(OFF_RESERVED + 3, OFF_PAYLOAD_LEN);
        assert_eq!(OFF_HEADER_CRC + 4, FIELDS_END);
        assert_eq!((OFF_SEQ, OFF_SEQ + 8, OFF_SEQ_CRC + 4), (FIELDS_END, OFF_SEQ_CRC, SEQ_END));
        assert_eq!(padded_payload_len(0), 0);
        assert_eq!(padded_payload_len(1), 4096);
        assert_eq!(padded_payload_len(4096), 4096);
        assert_eq!(padded_payload_len(4097), 8192);
        assert_eq!(native_file_len(10_000), 4096 + 12_288);
        assert_eq!(padded_payload_len(u64::MAX) % 4096, 0);
        assert_eq!(native_file_len(u64::MAX), u64::MAX);
    }

    #[test]
    fn round_trip() {
        let p = payload();
        for k in [key(), OffloadKey::new(&[], 0).unwrap(), OffloadKey::from_bytes(&[0xff; 64]).unwrap()] {
            for p in [&p[..], &[][..], &[0u8; 4096][..]] {
                let buf = encoded(&k, p);
                assert_eq!(&buf[..8], b"KVTIERBK");
                assert_eq!(buf[OFF_KEY_LEN] as usize, k.as_bytes().len());
                let h = decode_header(&buf).unwrap();
                assert_eq!(h, Header::for_payload(&NS, &k, p));
                assert_eq!(h.key_bytes(), k.as_bytes());
                assert_eq!(h.payload_len, p.len() as u64);
                h.check(&NS, &k, p).unwrap();
                // Only the first HEADER_LEN bytes count: a whole file decodes too.
                let mut file = buf.to_vec();
                file.extend_from_slice(p);
                assert_eq!(decode_header(&file), Ok(h));
            }
        }
    }

    /// The reason a single flipped bit at `byte` of a valid header is reported with.
    fn expected_reason(byte: usize, bit: u8) -> FormatError {
        let flip = |off: usize| 1u32 << (u32::from(bit) + 8 * (byte - off) as u32);
        match byte {
            OFF_MAGIC..OFF_VERSION => FormatError::BadMagic,
            OFF_VERSION..OFF_HEADER_LEN => FormatError::UnsupportedVersion(VERSION ^ flip(OFF_VERSION)),
            OFF_HEADER_LEN..OFF_NAMESPACE => FormatError::BadHeaderLen(HEADER_LEN as u32 ^ flip(OFF_HEADER_LEN)),
            // Everything else up to the header checksum, and the checksum itself; a flip in
            // the (absent) sequence or its checksum fails the sequence checksum.
            OFF_NAMESPACE..SEQ_END => FormatError::HeaderChecksum,
            _ => FormatError::ReservedNotZero,
        }
    }

    #[test]
    fn every_header_bit_flip_is_detected() {
        let (k, p) = (key(), payload());
        let good = encoded(&k, &p);
        for byte in 0..HEADER_LEN {
            for bit in 0..8u8 {
                let mut bad = good;
                bad[byte] ^= 1 << bit;
                let got = decode_header(&bad).and_then(|h| h.check(&NS, &k, &p));
                assert_eq!(got, Err(expected_reason(byte, bit)), "byte {byte} bit {bit}");
            }
        }
    }

    /// A record header carries its sequence under a checksum of its own; every bit of it and
    /// of the fields before it is covered, and a block file's header (no sequence) is the same
    /// bytes as before the field existed.
    #[test]
    fn sequences_round_trip_and_are_checked() {
        let (k, p) = (key(), payload());
        let plain = encoded(&k, &p);
        assert!(plain[FIELDS_END..].iter().all(|&b| b == 0), "no sequence: the old layout");
        let mut rec = [0u8; HEADER_LEN];
        encode_record_header(&NS, &k, 0x0123_4567_89ab_cdef, &p, &mut rec);
        assert_eq!(&rec[..FIELDS_END], &plain[..FIELDS_END], "the fields before it are unchanged");
        let h = decode_header(&rec).unwrap();
        assert_eq!(
            (h.seq, h),
            (0x0123_4567_89ab_cdef, Header::for_payload(&NS, &k, &p).with_seq(0x0123_4567_89ab_cdef))
        );
        h.check(&NS, &k, &p).unwrap();
        for byte in 0..SEQ_END {
            for bit in 0..8u8 {
                let mut bad = rec;
                bad[byte] ^= 1 << bit;
                let got = decode_header(&bad).and_then(|h| h.check(&NS, &k, &p));
                assert!(got.is_err(), "byte {byte} bit {bit} of a record header went unnoticed");
            }
        }
        // A checksummed zero sequence is not how "none" is written.
        let mut zero = plain;
        let crc = crc32c::crc32c(&zero[..OFF_SEQ_CRC]);
        zero[OFF_SEQ_CRC..SEQ_END].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_header(&zero), Err(FormatError::ReservedNotZero));
    }

    #[test]
    fn each_field_with_a_valid_checksum_is_checked() {
        let (k, p) = (key(), payload());
        let good = encoded(&k, &p);
        let with = |edit: &dyn Fn(&mut [u8; HEADER_LEN])| {
            let mut b = good;
            edit(&mut b);
            reseal(&mut b);
            decode_header(&b).and_then(|h| h.check(&NS, &k, &p))
        };
        assert_eq!(with(&|b| b[OFF_NAMESPACE] ^= 1), Err(FormatError::ForeignNamespace));
        assert_eq!(with(&|b| b[OFF_KEY + 5] ^= 1), Err(FormatError::WrongKey));
        assert_eq!(with(&|b| b[OFF_KEY + 35] ^= 1), Err(FormatError::WrongKey)); // group byte
                                                                                 // The key is 36 bytes: a shorter length leaves a nonzero byte in the padding, a longer
                                                                                 // one reads a zero byte more.
        assert_eq!(with(&|b| b[OFF_KEY_LEN] = 35), Err(FormatError::ReservedNotZero));
        assert_eq!(with(&|b| b[OFF_KEY_LEN] = 37), Err(FormatError::WrongKey));
        assert_eq!(
            with(&|b| {
                b[OFF_KEY_LEN] = 35;
                b[OFF_KEY + 35] = 0;
            }),
            Err(FormatError::WrongKey)
        );
        assert_eq!(with(&|b| b[OFF_KEY_LEN] = 65), Err(FormatError::BadKeyLen(65)));
        assert_eq!(with(&|b| b[OFF_KEY_LEN] = 3), Err(FormatError::BadKeyLen(3)));
        assert_eq!(with(&|b| b[OFF_KEY + 40] = 1), Err(FormatError::ReservedNotZero));
        assert_eq!(with(&|b| b[OFF_RESERVED + 2] = 1), Err(FormatError::ReservedNotZero));
        assert_eq!(
            with(&|b| b[OFF_PAYLOAD_LEN] ^= 1),
            Err(FormatError::LengthMismatch { header: p.len() as u64 ^ 1, actual: p.len() as u64 })
        );
        assert_eq!(with(&|b| b[OFF_PAYLOAD_CRC] ^= 1), Err(FormatError::PayloadChecksum));
        assert_eq!(with(&|_| ()), Ok(()));
    }

    #[test]
    fn payload_corruption_and_truncation() {
        let (k, p) = (key(), payload());
        let h = decode_header(&encoded(&k, &p)).unwrap();
        for i in [0, 1, 4095, 4096, p.len() - 1] {
            for bit in 0..8 {
                let mut bad = p.clone();
                bad[i] ^= 1 << bit;
                assert_eq!(h.check(&NS, &k, &bad), Err(FormatError::PayloadChecksum));
            }
        }
        assert_eq!(h.check(&NS, &k, &p[..p.len() - 1]).map_err(|e| e.reason()), Err("length mismatch"));
        assert_eq!(h.check(b"0123456789ac", &k, &p).map_err(|e| e.reason()), Err("foreign namespace"));
        assert_eq!(
            h.check(&NS, &OffloadKey::new(&[0x5a; 32], 4).unwrap(), &p).map_err(|e| e.reason()),
            Err("wrong key")
        );
        let buf = encoded(&k, &p);
        for n in [0, 1, 8, 111, 112, HEADER_LEN - 1] {
            assert_eq!(decode_header(&buf[..n]), Err(FormatError::Truncated));
        }
        assert_eq!(FormatError::Truncated.reason(), "truncated header");
        assert_eq!(FormatError::HeaderChecksum.to_string(), "header checksum");
        assert_eq!(
            FormatError::LengthMismatch { header: 2, actual: 1 }.to_string(),
            "length mismatch: header says 2, payload is 1"
        );
    }

    /// The crate's SplitMix64, with `usize` bounds.
    struct Rng(crate::rng::SplitMix64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0.next_u64()
        }
        fn below(&mut self, n: usize) -> usize {
            self.0.below(n as u64) as usize
        }
    }

    #[test]
    fn decode_never_panics_on_random_input() {
        let seed = std::env::var("KVTIER_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
        });
        println!("seed = {seed}");
        let mut rng = Rng(crate::rng::SplitMix64::new(seed));
        let (k, p) = (key(), payload());
        let good = encoded(&k, &p);
        for _ in 0..20_000 {
            let buf: Vec<u8> = match rng.below(3) {
                // Pure noise of any length around the header size.
                0 => (0..rng.below(HEADER_LEN + 200)).map(|_| rng.next() as u8).collect(),
                // A valid header with a few random byte edits, resealed or not, maybe truncated.
                _ => {
                    let mut b = good;
                    for _ in 0..1 + rng.below(4) {
                        let i = if rng.below(2) == 0 { rng.below(FIELDS_END) } else { rng.below(HEADER_LEN) };
                        b[i] = rng.next() as u8;
                    }
                    if rng.below(2) == 0 {
                        reseal(&mut b);
                    }
                    let n = if rng.below(8) == 0 { rng.below(HEADER_LEN + 1) } else { HEADER_LEN };
                    b[..n].to_vec()
                }
            };
            if let Ok(h) = decode_header(&buf) {
                // Whatever decodes re-encodes to the same bytes and can be checked without panic.
                let mut again = [0u8; HEADER_LEN];
                h.encode(&mut again);
                assert_eq!(&again[..], &buf[..HEADER_LEN], "seed = {seed}");
                let _ = h.check(&NS, &k, &p);
                assert!(h.key_bytes().len() >= 4);
            }
        }
    }
}

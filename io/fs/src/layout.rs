//! [`BlockLayout`]: where a block's bytes go, in its file (or extent) and in its row, for one
//! format and block size. Every executor lays blocks out with it; none computes padding,
//! lengths or alignment on its own.
//!
//! - **vLLM format**: the file is the block's `row_bytes`, nothing else.
//! - **Native format**: a [`HEADER_LEN`] header, then the block zero padded to a multiple of
//!   [`HEADER_LEN`] (see [`crate::format`]). The padding is written from the row when the row's
//!   bytes past the block are zero (a region's rows are zero-filled when mapped, and a load
//!   writes the padding back as zeros); when they are not, the block's last partial page goes
//!   through a zeroed bounce page instead ([`BlockLayout::store_split`],
//!   [`BlockLayout::fill_tail`]), so stale memory never reaches the disk. A load reads the
//!   padded payload straight into the row (a row is at least that long: both round up to
//!   [`DIRECT_ALIGN`]).
//!
//! A transfer can use `O_DIRECT` when its payload length, its row's address and its file offset
//! are multiples of [`DIRECT_ALIGN`] ([`BlockLayout::direct_ok`]); header and bounce pages are
//! aligned by construction. A region's own rows always are; rows lent by an engine
//! ([`crate::region::PrimaryRegion::foreign`]) may not be, and then go buffered.

use crate::direct::DIRECT_ALIGN;
use crate::format::{self, HEADER_LEN};
use crate::op::BlockFormat;
use crate::outcome::OpError;

// The header is one O_DIRECT block, and payloads pad to it.
const _: () = assert!(HEADER_LEN % DIRECT_ALIGN == 0);

/// How a block of one format and size lies in its file and its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockLayout {
    /// Bytes before the payload in the file: [`HEADER_LEN`] (native) or 0 (vLLM).
    pub header: usize,
    /// The block's own bytes: the row's first `row_bytes`.
    pub block: usize,
    /// Bytes of the row the file holds after the header: the block, zero padded to a multiple
    /// of [`HEADER_LEN`] in the native format.
    pub payload: usize,
}

impl BlockLayout {
    /// The layout of a `row_bytes` block in `format`, in rows `stride` bytes apart.
    ///
    /// # Errors
    ///
    /// [`OpError::Geometry`] if the payload is longer than the stride (never for a
    /// [`crate::region::PrimaryRegion`]: both round up to [`DIRECT_ALIGN`]).
    pub fn new(format: &BlockFormat, row_bytes: usize, stride: usize) -> Result<BlockLayout, OpError> {
        let (header, payload) = match format {
            BlockFormat::Vllm => (0, row_bytes),
            BlockFormat::Native { .. } => {
                let padded = usize::try_from(format::padded_payload_len(row_bytes as u64));
                (HEADER_LEN, padded.map_err(|_| OpError::Geometry)?)
            }
        };
        if payload > stride {
            return Err(OpError::Geometry);
        }
        Ok(BlockLayout { header, block: row_bytes, payload })
    }

    /// True for the native format.
    pub fn native(&self) -> bool {
        self.header > 0
    }

    /// The file's (or extent's) length: header plus payload.
    pub fn file_len(&self) -> u64 {
        (self.header + self.payload) as u64
    }

    /// Whether the transfers of this block between `row` (the op's row) and file offset
    /// `offset` (0 for a file per block, an extent's offset) can use `O_DIRECT`: the payload's
    /// length, the row's address and the offset are multiples of [`DIRECT_ALIGN`].
    pub fn direct_ok(&self, row: &[u8], offset: u64) -> bool {
        let align = DIRECT_ALIGN;
        self.payload % align == 0 && row.as_ptr() as usize % align == 0 && offset % align as u64 == 0
    }

    /// How a store takes the payload from `row` (the whole row, `stride` bytes): returns
    /// `(from_row, tail)`, the payload's first `from_row` bytes written straight from the row,
    /// then `tail` bytes from a bounce page [`fill_tail`](Self::fill_tail) fills (`tail` is 0
    /// when the row's bytes past the block are zero, and at most [`DIRECT_ALIGN`]).
    pub fn store_split(&self, row: &[u8]) -> (usize, usize) {
        if row[self.block..self.payload].iter().all(|&b| b == 0) {
            (self.payload, 0)
        } else {
            let whole_pages = self.block / DIRECT_ALIGN * DIRECT_ALIGN;
            (whole_pages, self.payload - whole_pages)
        }
    }

    /// Fills `page` with the payload's tail after `from_row` bytes (see
    /// [`store_split`](Self::store_split)): the block's last bytes from `row`, then zeros.
    pub fn fill_tail(&self, row: &[u8], from_row: usize, page: &mut [u8]) {
        let tail = &mut page[..self.payload - from_row];
        tail.fill(0);
        tail[..self.block - from_row].copy_from_slice(&row[from_row..self.block]);
    }

    /// Prepares a store of `row` in `format`: a native block's header, with sequence number
    /// `seq`, goes into `header`, and its zero-padded last page into `tail` when the row's
    /// bytes past the block are not zero. Returns `(from_row, tail)`: the file holds the
    /// header (native), then `row[..from_row]`, then `tail[..tail]` (see
    /// [`store_split`](Self::store_split); a vLLM block is `row[..block]` alone).
    pub fn encode_store(
        &self,
        format: &BlockFormat,
        seq: u64,
        row: &[u8],
        header: &mut [u8; HEADER_LEN],
        tail: &mut [u8],
    ) -> (usize, usize) {
        let BlockFormat::Native { namespace, key } = format else { return (self.block, 0) };
        format::encode_record_header(namespace, key, seq, &row[..self.block], header);
        let (from_row, tail_len) = self.store_split(row);
        if tail_len > 0 {
            self.fill_tail(row, from_row, tail);
        }
        (from_row, tail_len)
    }
}

impl BlockFormat {
    /// Checks a loaded block: a native block's `header` against the format's namespace and key
    /// and the payload `block` (the row's first `row_bytes`); a vLLM block has nothing to
    /// check. `Err` is the corruption's reason ([`crate::Outcome::Corrupt`]).
    pub fn verify(&self, header: &[u8], block: &[u8]) -> Result<(), &'static str> {
        let BlockFormat::Native { namespace, key } = self else { return Ok(()) };
        format::decode_header(header).and_then(|h| h.check(namespace, key, block)).map_err(|e| e.reason())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvtier_core::OffloadKey;

    fn native() -> BlockFormat {
        BlockFormat::Native { namespace: *b"0123456789ab", key: OffloadKey::new(&[1; 16], 0).unwrap() }
    }

    #[test]
    fn lengths_and_alignment() {
        let region = std::sync::Arc::new(crate::region::PrimaryRegion::anonymous(1, 8192).unwrap());
        let lease = region.lease(kvtier_core::SlotId(0), crate::region::Access::Read).unwrap();
        let row = lease.as_slice();
        let v = BlockLayout::new(&BlockFormat::Vllm, 5000, 8192).unwrap();
        assert_eq!((v.header, v.payload, v.file_len(), v.native()), (0, 5000, 5000, false));
        assert!(!v.direct_ok(row, 0), "an unaligned length");
        let n = BlockLayout::new(&native(), 5000, 8192).unwrap();
        assert_eq!((n.header, n.payload, n.file_len(), n.native()), (4096, 8192, 12288, true));
        assert!(n.direct_ok(row, 0) && n.direct_ok(row, 8192));
        assert!(!n.direct_ok(row, 512), "an unaligned offset");
        assert!(!n.direct_ok(&row[1..], 0), "an unaligned row");
        assert_eq!(BlockLayout::new(&native(), 5000, 5000), Err(OpError::Geometry), "the stride is too short");
        assert!(BlockLayout::new(&BlockFormat::Vllm, 4096, 4096).unwrap().direct_ok(row, 0));
    }

    #[test]
    fn a_dirty_tail_goes_through_the_bounce_page() {
        let n = BlockLayout::new(&native(), 5000, 8192).unwrap();
        let mut row = vec![7u8; 8192];
        row[5000..].fill(0);
        assert_eq!(n.store_split(&row), (8192, 0));
        row[6000] = 1;
        let (from_row, tail) = n.store_split(&row);
        assert_eq!((from_row, tail), (4096, 4096));
        let mut page = [0xffu8; 4096];
        n.fill_tail(&row, from_row, &mut page);
        assert!(page[..904].iter().all(|&b| b == 7) && page[904..].iter().all(|&b| b == 0));
        let aligned = BlockLayout::new(&native(), 8192, 8192).unwrap();
        assert_eq!(aligned.store_split(&row), (8192, 0), "no padding, nothing to bounce");
    }
}

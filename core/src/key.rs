//! Keys, request contexts and the id newtypes.

use core::fmt;
use core::hash::{BuildHasher, Hash, Hasher};

/// The longest key kept inline: a 60-byte hash part plus the 4-byte group index.
pub const MAX_KEY_LEN: usize = 64;
/// Length of the group-index suffix of every key.
pub const GROUP_LEN: usize = 4;

/// A block's identity: content-hash bytes followed by a 4-byte big-endian group index
/// (`hash || group_be_u32`), stored inline (no heap).
#[derive(Clone, Copy)]
pub struct OffloadKey {
    len: u8,
    bytes: [u8; MAX_KEY_LEN],
}

/// Why a byte string is not a valid [`OffloadKey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// Shorter than the 4-byte group suffix.
    TooShort(usize),
    /// Longer than [`MAX_KEY_LEN`].
    TooLong(usize),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::TooShort(n) => write!(f, "key of {n} bytes is shorter than its {GROUP_LEN}-byte group suffix"),
            KeyError::TooLong(n) => write!(f, "key of {n} bytes is longer than {MAX_KEY_LEN}"),
        }
    }
}

impl core::error::Error for KeyError {}

impl OffloadKey {
    /// A key from its full bytes (`hash || group_be_u32`); 4 to 64 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        if bytes.len() < GROUP_LEN {
            return Err(KeyError::TooShort(bytes.len()));
        }
        if bytes.len() > MAX_KEY_LEN {
            return Err(KeyError::TooLong(bytes.len()));
        }
        let mut key = OffloadKey { len: bytes.len() as u8, bytes: [0; MAX_KEY_LEN] };
        key.bytes[..bytes.len()].copy_from_slice(bytes);
        Ok(key)
    }

    /// A key from a hash part and a group index.
    pub fn new(hash: &[u8], group: u32) -> Result<Self, KeyError> {
        let len = hash.len() + GROUP_LEN;
        if len > MAX_KEY_LEN {
            return Err(KeyError::TooLong(len));
        }
        let mut key = OffloadKey { len: len as u8, bytes: [0; MAX_KEY_LEN] };
        key.bytes[..hash.len()].copy_from_slice(hash);
        key.bytes[hash.len()..len].copy_from_slice(&group.to_be_bytes());
        Ok(key)
    }

    /// The full key bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// The content-hash part (may be empty).
    pub fn hash(&self) -> &[u8] {
        &self.bytes[..self.len as usize - GROUP_LEN]
    }

    /// The KV-cache group index.
    pub fn group(&self) -> u32 {
        let n = self.len as usize;
        u32::from_be_bytes([self.bytes[n - 4], self.bytes[n - 3], self.bytes[n - 2], self.bytes[n - 1]])
    }

    /// The fixed, seedless hash every table in the core uses for this key.
    #[inline]
    pub(crate) fn table_hash(&self) -> u64 {
        let mut h = foldhash::fast::FixedState::with_seed(0x6b76_7469_6572).build_hasher();
        h.write(self.as_bytes());
        h.finish()
    }
}

impl PartialEq for OffloadKey {
    /// Bytes past `len` are always zero (every constructor zero-fills), so comparing the whole
    /// fixed-size array is exact, and compiles to a few vector compares instead of a `memcmp`.
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.bytes == other.bytes
    }
}
impl Eq for OffloadKey {}

impl Hash for OffloadKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialOrd for OffloadKey {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OffloadKey {
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl fmt::Debug for OffloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OffloadKey({self})")
    }
}

/// Lowercase hex of the full key bytes (the replay format's spelling).
impl fmt::Display for OffloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A request's identity, chosen by the caller (an interned request id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ReqId(pub u64);

/// Per-request context. Calls made for one request in one step share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ReqContext {
    /// The request this call is made for.
    pub req: ReqId,
}

impl ReqContext {
    /// The context of request `id`.
    pub const fn new(id: u64) -> Self {
        ReqContext { req: ReqId(id) }
    }
}

/// A job's id: one counter starting at 0, shared by every job of every tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub u64);

/// A slot (row) of the primary pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotId(pub u32);

impl SlotId {
    /// The slot as an index.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_and_bounds() {
        let k = OffloadKey::new(&[0xab, 0xcd], 7).unwrap();
        assert_eq!(k.as_bytes(), &[0xab, 0xcd, 0, 0, 0, 7]);
        assert_eq!(k.hash(), &[0xab, 0xcd]);
        assert_eq!(k.group(), 7);
        assert_eq!(alloc::format!("{k}"), "abcd00000007");
        let empty = OffloadKey::from_bytes(&[0, 0, 1, 0]).unwrap();
        assert_eq!(empty.hash(), &[] as &[u8]);
        assert_eq!(empty.group(), 256);
        assert_eq!(OffloadKey::from_bytes(&[1, 2, 3]), Err(KeyError::TooShort(3)));
        assert_eq!(OffloadKey::from_bytes(&[0; 65]), Err(KeyError::TooLong(65)));
        assert!(OffloadKey::from_bytes(&[9; 64]).is_ok());
        assert_eq!(OffloadKey::new(&[0; 61], 0), Err(KeyError::TooLong(65)));
    }

    #[test]
    fn equality_ignores_unused_tail() {
        let a = OffloadKey::from_bytes(&[1, 2, 3, 4, 5]).unwrap();
        let b = OffloadKey::from_bytes(&[1, 2, 3, 4, 5]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.table_hash(), b.table_hash());
        assert_ne!(a, OffloadKey::from_bytes(&[1, 2, 3, 4]).unwrap());
    }
}

//! The tier's namespace on the server: the key of each block, the key of the run-config record,
//! and which cluster slot a key hashes to.
//!
//! The namespace is the FS tier's: the same run config (model, parallel layout, row size,
//! storage format) and the same 12-hex-digit digest of its canonical JSON
//! ([`kvtier_fs::namespace::digest12`]), so a run config names the same namespace on disk and
//! on the server. Keys:
//!
//! ```text
//! kvt1:{model}_{digest12}:config                      the run config (JSON), written once (SET NX)
//! kvt1:{model}_{digest12}:r{rank}:g{group}:{hash hex} one block: native header + row bytes
//! ```
//!
//! `{model}` is the model name with `/`, `{`, `}` and whitespace turned into `_`: no key carries
//! a `{...}` hash tag, so a cluster spreads a namespace's blocks over all its slots (a hash tag
//! on the digest would put every block of a model on one node).

use kvtier_core::OffloadKey;
use kvtier_fs::namespace::{digest12, RunConfig};

/// Number of hash slots of a Redis cluster.
pub const SLOTS: usize = 16384;

/// A namespace's key names for one rank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// `kvt1:{model}_{digest12}`.
    base: String,
    /// `{base}:r{rank}:g`.
    block_prefix: String,
    digest: String,
}

impl Names {
    /// The names of `run`'s namespace (the effective run config, storage format included) for
    /// `rank`.
    pub fn new(run: &RunConfig, rank: u32) -> Names {
        let digest = digest12(run);
        let model: String = run
            .model_name
            .chars()
            .map(|c| if c == '/' || c == '{' || c == '}' || c.is_whitespace() { '_' } else { c })
            .collect();
        let base = format!("kvt1:{model}_{digest}");
        let block_prefix = format!("{base}:r{rank}:g");
        Names { base, block_prefix, digest }
    }

    /// `kvt1:{model}_{digest12}`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The namespace digest (12 lowercase hex characters).
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The digest as the 12 bytes a native header carries.
    pub fn namespace_bytes(&self) -> [u8; 12] {
        let mut out = [0u8; 12];
        for (o, b) in out.iter_mut().zip(self.digest.as_bytes()) {
            *o = *b;
        }
        out
    }

    /// `kvt1:{model}_{digest12}:config`.
    pub fn config_key(&self) -> String {
        format!("{}:config", self.base)
    }

    /// Writes `key`'s block name into `out` (cleared first).
    pub fn block_key(&self, key: &OffloadKey, out: &mut Vec<u8>) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        out.clear();
        out.extend_from_slice(self.block_prefix.as_bytes());
        out.extend_from_slice(key.group().to_string().as_bytes());
        out.push(b':');
        for b in key.hash() {
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        }
    }

    /// `key`'s block name.
    pub fn block_key_string(&self, key: &OffloadKey) -> String {
        let mut out = Vec::new();
        self.block_key(key, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The cluster slot of `key`: CRC-16/XMODEM of the key (or of its `{...}` hash tag, as Redis
/// Cluster defines it) modulo 16384.
pub fn slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16(hashed) % SLOTS as u16
}

/// CRC-16/XMODEM (polynomial 0x1021, initial value 0), as Redis Cluster uses it.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_cluster() {
        // Redis Cluster's specification: CRC16("123456789") is 0x31C3.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        // Values `CLUSTER KEYSLOT` gives.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"), "an empty tag hashes the whole key");
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
    }

    #[test]
    fn block_keys_name_model_digest_rank_group_hash_without_hash_tags() {
        let run = RunConfig { model_name: "meta-llama/{Llama} 3".into(), ..RunConfig::default() };
        let names = Names::new(&run, 2);
        let key = OffloadKey::new(&[0xab, 0x01], 7).unwrap();
        let text = names.block_key_string(&key);
        assert_eq!(text, format!("kvt1:meta-llama__Llama__3_{}:r2:g7:ab01", digest12(&run)));
        assert!(!text.contains('{') && !text.contains('}'));
        assert_eq!(names.config_key(), format!("kvt1:meta-llama__Llama__3_{}:config", digest12(&run)));
        assert_eq!(&names.namespace_bytes(), digest12(&run).as_bytes());
        // Blocks of one namespace spread over many slots.
        let slots: std::collections::HashSet<u16> = (0..1000u32)
            .map(|i| slot(names.block_key_string(&OffloadKey::new(&i.to_be_bytes(), 0).unwrap()).as_bytes()))
            .collect();
        assert!(slots.len() > 900, "{} distinct slots", slots.len());
    }
}

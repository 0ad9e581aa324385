//! The FS tier's namespace: the run config, its canonical digest, and the vLLM-compatible paths.
//!
//! A directory of block files is only meaningful for the run config that wrote it (model, dtype,
//! parallelism, block geometry, file format). The config's canonical JSON text, byte-identical
//! to Python's `json.dumps(cfg, sort_keys=True, separators=(",", ":"))`, is hashed with SHA-256;
//! its first 12 hex characters name the directory, so vLLM and kvtier agree on where a given
//! run's blocks live:
//!
//! ```text
//! {root}/{model_name, "/" -> "_"}_{digest12}/config.json
//! {root}/{model_name, "/" -> "_"}_{digest12}_r{rank}/{h[0:3]}/{h[3:5]}_g{group}/{h}.bin
//! ```
//!
//! where `h` is the lowercase hex of the key's hash part. This module owns that mapping (both
//! ways) and the check that the `config.json` already on disk matches the run. It never touches
//! block files.

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use kvtier_core::OffloadKey;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::vfs::{HostFs, Vfs};

/// The only `inference_engine` a run config names.
pub const INFERENCE_ENGINE: &str = "vllm";

/// The `storage_format` the native block format adds to the run config (the `vllm` format adds
/// none), so the two formats never share a directory.
pub const NATIVE_STORAGE_FORMAT: &str = "kvtier-native-v1";

/// Length of the namespace digest, in hex characters.
pub const DIGEST_LEN: usize = 12;

/// The name of the run config file inside the namespace's base directory.
pub const CONFIG_FILE: &str = "config.json";

/// The longest hash part a key can have, in bytes.
const MAX_HASH_LEN: usize = kvtier_core::MAX_KEY_LEN - kvtier_core::GROUP_LEN;

/// One KV-cache group of the run config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvCacheGroup {
    /// Tokens per GPU block in this group.
    pub tokens_per_block: u64,
    /// The attention layers of this group.
    pub layer_names: Vec<String>,
}

/// The run config that names a namespace (vLLM's `FileMapper` run config).
///
/// Serialized with serde exactly as vLLM writes it: `parallel_agnostic` only when `false`,
/// `replicated_layout` only when `true`, `canonical_format` and `storage_format` only when set;
/// kvtier's own `block_bytes` (native format) only when set. Unknown fields are ignored when
/// deserializing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunConfig {
    /// GPU blocks per offloaded block (file).
    pub blocks_per_file: u64,
    /// Decode context-parallel size.
    pub dcp_size: u64,
    /// KV-cache dtype, e.g. `"bfloat16"`.
    pub dtype: String,
    /// Always [`INFERENCE_ENGINE`].
    pub inference_engine: String,
    /// The KV-cache groups.
    pub kv_cache_groups: Vec<KvCacheGroup>,
    /// The model name, e.g. `"meta-llama/Llama-3.1-8B"`.
    pub model_name: String,
    /// Whether blocks are independent of the parallel layout; serialized (as `false`) only when
    /// false.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub parallel_agnostic: bool,
    /// Prefill context-parallel size.
    pub pcp_size: u64,
    /// Pipeline-parallel size.
    pub pp_size: u64,
    /// Tokens covered by one key hash.
    pub tokens_per_hash: u64,
    /// Tensor-parallel size.
    pub tp_size: u64,
    /// `Some(`[`NATIVE_STORAGE_FORMAT`]`)` for the native format, `None` for the vllm format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_format: Option<String>,
    /// kvtier's native format: the size of one block (a primary row), so that two block sizes
    /// never share a namespace (a block of one size is never read as one of another). `None`
    /// for the vllm format, whose run config must stay vLLM's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_bytes: Option<u64>,
    /// vLLM 0.33: every worker's bytes of a block are identical and stored once; serialized (as
    /// `true`) only when set, so older namespaces keep their digest.
    #[serde(default, skip_serializing_if = "is_false")]
    pub replicated_layout: bool,
    /// vLLM 0.33: the identity of the canonical per-layer byte format, when that layout is
    /// used (it is not interchangeable with the direct layout); serialized only when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canonical_format: Option<String>,
}

fn default_true() -> bool {
    true
}

// serde's `skip_serializing_if` passes a reference.
fn is_true(b: &bool) -> bool {
    *b
}

// serde's `skip_serializing_if` passes a reference.
fn is_false(b: &bool) -> bool {
    !*b
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            blocks_per_file: 1,
            dcp_size: 1,
            dtype: "bfloat16".into(),
            inference_engine: INFERENCE_ENGINE.into(),
            kv_cache_groups: vec![KvCacheGroup { tokens_per_block: 16, layer_names: Vec::new() }],
            model_name: "unknown-model".into(),
            parallel_agnostic: true,
            pcp_size: 1,
            pp_size: 1,
            tokens_per_hash: 16,
            tp_size: 1,
            storage_format: None,
            block_bytes: None,
            replicated_layout: false,
            canonical_format: None,
        }
    }
}

impl RunConfig {
    /// The config as a JSON object, exactly the fields it serializes.
    fn to_value(&self) -> Value {
        // Serializing a struct of integers, strings, bools and vectors cannot fail.
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// The canonical text of `cfg`: Python's `json.dumps(cfg, sort_keys=True, separators=(",", ":"))`
/// (with its default `ensure_ascii=True`), byte for byte.
pub fn canonical_json(cfg: &RunConfig) -> String {
    let mut out = String::with_capacity(256);
    write_json(&mut out, &cfg.to_value(), None, 0);
    out
}

/// The text vLLM writes to `config.json`: Python's `json.dump(cfg, f, indent=2,
/// sort_keys=True)`, byte for byte (no trailing newline).
pub fn pretty_json(cfg: &RunConfig) -> String {
    let mut out = String::with_capacity(512);
    write_json(&mut out, &cfg.to_value(), Some(2), 0);
    out
}

/// The namespace digest: the first 12 lowercase hex characters of the SHA-256 of
/// [`canonical_json`].
pub fn digest12(cfg: &RunConfig) -> String {
    let sum = Sha256::digest(canonical_json(cfg).as_bytes());
    let mut hex = hex_lower(&sum[..DIGEST_LEN / 2]);
    hex.truncate(DIGEST_LEN);
    hex
}

/// Writes `v` as Python's `json` module does with `sort_keys=True` and `ensure_ascii=True`:
/// compact (`","`, `":"`) without `indent`, else one item per line with `": "` after keys.
fn write_json(out: &mut String, v: &Value, indent: Option<usize>, level: usize) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        // Run configs hold integers only, whose decimal form Python shares.
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, indent, level + 1);
                write_json(out, item, indent, level + 1);
            }
            newline(out, indent, level);
            out.push(']');
        }
        Value::Object(map) => {
            if map.is_empty() {
                out.push_str("{}");
                return;
            }
            // Sorted here rather than relying on the map's order (serde_json's `preserve_order`
            // feature may be on elsewhere in the build). Python compares str keys by code
            // point, which is UTF-8 byte order.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, indent, level + 1);
                write_str(out, k);
                out.push_str(if indent.is_some() { ": " } else { ":" });
                write_json(out, item, indent, level + 1);
            }
            newline(out, indent, level);
            out.push('}');
        }
    }
}

fn newline(out: &mut String, indent: Option<usize>, level: usize) {
    if let Some(width) = indent {
        out.push('\n');
        out.extend(core::iter::repeat_n(' ', width * level));
    }
}

/// A JSON string as Python's `py_encode_basestring_ascii` writes it: printable ASCII (`' '` to
/// `'~'`) as is except `"` and `\`; `\n \r \t \b \f` by name; everything else (other controls,
/// DEL, non-ASCII) as `\uXXXX` in lowercase hex, astral characters as a surrogate pair.
fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    push_u_escape(out, *unit);
                }
            }
        }
    }
    out.push('"');
}

fn push_u_escape(out: &mut String, unit: u16) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push_str("\\u");
    for shift in [12u32, 8, 4, 0] {
        out.push(char::from(HEX[usize::from((unit >> shift) & 0xf)]));
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    s
}

/// Parses lowercase hex (the only spelling [`Layout::block_path`] writes).
fn parse_hex_lower(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let s = s.as_bytes();
    if s.len() % 2 != 0 {
        return None;
    }
    s.chunks_exact(2).map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?)).collect()
}

/// Where one namespace's files live, for one rank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: PathBuf,
    digest: String,
    rank: u32,
    base: PathBuf,
    rank_dir: PathBuf,
}

impl Layout {
    /// The layout of `cfg`'s namespace under `root`, for `rank`.
    pub fn new(root: impl Into<PathBuf>, cfg: &RunConfig, rank: u32) -> Self {
        Layout::from_parts(root, &cfg.model_name, &digest12(cfg), rank)
    }

    /// The layout from an already computed digest (see [`digest12`]).
    pub fn from_parts(root: impl Into<PathBuf>, model_name: &str, digest: &str, rank: u32) -> Self {
        let root = root.into();
        let dir = format!("{}_{digest}", model_name.replace('/', "_"));
        let base = root.join(&dir);
        let rank_dir = root.join(format!("{dir}_r{rank}"));
        Layout { root, digest: digest.to_owned(), rank, base, rank_dir }
    }

    /// The root directory every namespace lives under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The namespace digest (12 lowercase hex characters).
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The digest as the 12 bytes a native block header carries (zero padded if the digest
    /// given to [`Layout::from_parts`] was shorter).
    pub fn namespace_bytes(&self) -> [u8; DIGEST_LEN] {
        let mut out = [0u8; DIGEST_LEN];
        for (o, b) in out.iter_mut().zip(self.digest.as_bytes()) {
            *o = *b;
        }
        out
    }

    /// This layout's rank.
    pub fn rank(&self) -> u32 {
        self.rank
    }

    /// `{root}/{model_name, "/" -> "_"}_{digest12}`: the directory holding `config.json`.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// `{base}/config.json`.
    pub fn config_path(&self) -> PathBuf {
        self.base.join(CONFIG_FILE)
    }

    /// `{base}_r{rank}`: the directory holding this rank's block files.
    pub fn rank_dir(&self) -> &Path {
        &self.rank_dir
    }

    /// `{rank_dir}/{h[0:3]}/{h[3:5]}_g{group}/{h}.bin`, `h` the lowercase hex of the key's hash.
    pub fn block_path(&self, key: &OffloadKey) -> PathBuf {
        let mut p = self.rank_dir.clone();
        push_block_rel(&mut p, key);
        p
    }

    /// The key whose block file is at `rel`, relative to [`Layout::rank_dir`]; see
    /// [`parse_block_path`].
    pub fn parse_block_path(&self, rel: &Path) -> Option<OffloadKey> {
        parse_block_path(rel)
    }

    /// [`Layout::block_path`] relative to [`Layout::rank_dir`].
    pub fn block_rel_path(key: &OffloadKey) -> PathBuf {
        let mut p = PathBuf::new();
        push_block_rel(&mut p, key);
        p
    }
}

/// Pushes `{h[0:3]}/{h[3:5]}_g{group}/{h}.bin`. Python slices of a short `h` are just shorter
/// (`h[3:5]` of `"ab"` is `""`); an empty `h[0:3]` (empty hash) is an empty path component,
/// which the file system collapses (`a//b` is `a/b`), so it is skipped.
fn push_block_rel(p: &mut PathBuf, key: &OffloadKey) {
    let h = hex_lower(key.hash());
    let first = &h[..h.len().min(3)];
    let second = &h[h.len().min(3)..h.len().min(5)];
    if !first.is_empty() {
        p.push(first);
    }
    p.push(format!("{second}_g{}", key.group()));
    p.push(format!("{h}.bin"));
}

/// The key whose block file is at `rel` (a path relative to a rank directory), if `rel` is
/// exactly the path [`Layout::block_path`] gives that key. Anything else (temp files, stray
/// files, uppercase or odd-length hex, misplaced files) is `None`.
pub fn parse_block_path(rel: &Path) -> Option<OffloadKey> {
    let mut parts = Vec::with_capacity(3);
    for c in rel.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?),
            _ => return None,
        }
    }
    let (file, dirs) = parts.split_last()?;
    let hex = file.strip_suffix(".bin")?;
    let hash = parse_hex_lower(hex)?;
    if hash.len() > MAX_HASH_LEN {
        return None;
    }
    let group_dir = dirs.last()?;
    let (_, group) = group_dir.rsplit_once("_g")?;
    // Only plain decimal digits; the round trip below rejects leading zeros.
    if group.is_empty() || !group.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let key = OffloadKey::new(&hash, group.parse().ok()?).ok()?;
    (Layout::block_rel_path(&key) == rel).then_some(key)
}

/// How [`ensure_config`] found the namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigStatus {
    /// `config.json` was absent and this call wrote it.
    Created,
    /// `config.json` was already there and matches.
    Matched,
}

/// Why a namespace cannot be used.
#[derive(Debug)]
pub enum NamespaceError {
    /// A file-system operation failed.
    Io {
        /// What was being done (`"read"`, `"create directory"`, `"write"`).
        op: &'static str,
        /// The path it was applied to.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// `config.json` is not a JSON object (truncated, corrupt, not UTF-8...).
    Invalid {
        /// The config file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `config.json` describes another run; these top-level fields differ (sorted).
    Mismatch {
        /// The config file.
        path: PathBuf,
        /// The differing field names.
        fields: Vec<String>,
    },
}

impl fmt::Display for NamespaceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NamespaceError::Io { op, path, source } => write!(f, "cannot {op} {}: {source}", path.display()),
            NamespaceError::Invalid { path, reason } => {
                write!(f, "{}: not a valid run config: {reason}", path.display())
            }
            NamespaceError::Mismatch { path, fields } => write!(
                f,
                "{}: the run config on disk does not match this run; differing fields: {}",
                path.display(),
                fields.join(", ")
            ),
        }
    }
}

/// An I/O error keeps its kind; a config that is not valid or does not match is `InvalidData`.
/// The message is the [`NamespaceError`]'s, which names the path.
impl From<NamespaceError> for io::Error {
    fn from(e: NamespaceError) -> io::Error {
        let kind = match &e {
            NamespaceError::Io { source, .. } => source.kind(),
            NamespaceError::Invalid { .. } | NamespaceError::Mismatch { .. } => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e.to_string())
    }
}

impl std::error::Error for NamespaceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NamespaceError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> NamespaceError + 'a {
    move |source| NamespaceError::Io { op, path: path.to_owned(), source }
}

/// Makes sure `layout`'s `config.json` describes `cfg`: writes it (atomically, as vLLM formats
/// it) if absent, else compares it field by field. A mismatch is an error, never an overwrite.
///
/// Two processes may race to create the file: each writes its own temp file and renames it in
/// place; both carry the same digest hence the same config, so whichever wins, the re-read that
/// follows matches.
pub fn ensure_config(layout: &Layout, cfg: &RunConfig) -> Result<ConfigStatus, NamespaceError> {
    ensure_config_on(&HostFs::default(), layout, cfg)
}

/// [`ensure_config`] on the file system `fs`.
pub fn ensure_config_on(fs: &dyn Vfs, layout: &Layout, cfg: &RunConfig) -> Result<ConfigStatus, NamespaceError> {
    let path = layout.config_path();
    let status = match fs.read(&path) {
        Ok(bytes) => {
            compare_config(&path, &bytes, cfg)?;
            return Ok(ConfigStatus::Matched);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            write_config(fs, layout.base(), &path, cfg)?;
            ConfigStatus::Created
        }
        Err(e) => return Err(io_err("read", &path)(e)),
    };
    let bytes = fs.read(&path).map_err(io_err("read", &path))?;
    compare_config(&path, &bytes, cfg)?;
    Ok(status)
}

fn write_config(fs: &dyn Vfs, base: &Path, path: &Path, cfg: &RunConfig) -> Result<(), NamespaceError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    fs.create_dir_all(base).map_err(io_err("create directory", base))?;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let tmp =
        base.join(format!(".{CONFIG_FILE}.tmp.{}.{}.{nanos}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
    let written = fs.write_new_synced(&tmp, pretty_json(cfg).as_bytes()).and_then(|()| fs.rename(&tmp, path));
    written.map_err(|e| {
        // Best effort: the temp file may not exist (open failed) or be already renamed.
        let _ = fs.remove_file(&tmp);
        io_err("write", path)(e)
    })
}

/// Checks that `bytes`, the run config found at `path` (a `config.json`, a disk engine's
/// device header, a remote tier's config record), describes `cfg` as [`ensure_config`] checks
/// `config.json`: `Mismatch` names the fields that differ (an absent optional field means its
/// default, on either side).
pub fn compare_config(path: &Path, bytes: &[u8], cfg: &RunConfig) -> Result<(), NamespaceError> {
    let invalid = |reason: String| NamespaceError::Invalid { path: path.to_owned(), reason };
    let disk: Value = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    let Value::Object(disk) = disk else {
        return Err(invalid("not a JSON object".into()));
    };
    let Value::Object(ours) = cfg.to_value() else {
        return Err(invalid("run config does not serialize to an object".into()));
    };
    // An absent optional field means its default, on either side.
    let get = |map: &serde_json::Map<String, Value>, k: &str| match (map.get(k), k) {
        (Some(v), _) => v.clone(),
        (None, "parallel_agnostic") => Value::Bool(true),
        (None, _) => Value::Null,
    };
    let names: BTreeSet<&String> = disk.keys().chain(ours.keys()).collect();
    let fields: Vec<String> = names.into_iter().filter(|k| get(&disk, k) != get(&ours, k)).cloned().collect();
    if fields.is_empty() {
        Ok(())
    } else {
        Err(NamespaceError::Mismatch { path: path.to_owned(), fields })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Write;
    use std::process::{Command, Stdio};

    fn llama() -> RunConfig {
        RunConfig {
            model_name: "meta-llama/Llama-3.1-8B".into(),
            tp_size: 2,
            blocks_per_file: 4,
            kv_cache_groups: vec![KvCacheGroup {
                tokens_per_block: 16,
                layer_names: (0..3).map(|i| format!("model.layers.{i}.self_attn.attn")).collect(),
            }],
            ..RunConfig::default()
        }
    }

    /// The configs checked against Python, each with the digest Python gave for it.
    fn cases() -> Vec<(RunConfig, &'static str)> {
        let weird = RunConfig {
            model_name: "Ünïcødé/模型".into(),
            dtype: "fp8 \"e4m3\" \\ / 🦙".into(),
            kv_cache_groups: vec![
                KvCacheGroup {
                    tokens_per_block: 16,
                    layer_names: vec![
                        "ctl \n\r\t\u{8}\u{c}\u{0}\u{1}\u{1f}\u{7f}".into(),
                        "emoji 😀 𝄞 \u{fffd} \u{80} \u{ff} \u{7ff}".into(),
                        String::new(),
                    ],
                },
                KvCacheGroup { tokens_per_block: u64::MAX, layer_names: vec![] },
            ],
            ..RunConfig::default()
        };
        vec![
            (RunConfig::default(), "4a727d0f278f"),
            (llama(), "624c0df536b1"),
            (weird, "9ecd7ba2c088"),
            (RunConfig { parallel_agnostic: false, tp_size: 4, pp_size: 2, ..llama() }, "2c88ed302836"),
            (RunConfig { storage_format: Some(NATIVE_STORAGE_FORMAT.into()), ..llama() }, "a5d936f11adf"),
            (
                RunConfig { storage_format: Some(NATIVE_STORAGE_FORMAT.into()), block_bytes: Some(131_072), ..llama() },
                "8cfb775a77be",
            ),
            (RunConfig { model_name: String::new(), kv_cache_groups: vec![], ..llama() }, "4c17c68ba794"),
            (RunConfig { replicated_layout: true, ..llama() }, "5f644ae7accf"),
            (RunConfig { canonical_format: Some("canonical-v1/NHD".into()), ..llama() }, "a737c009f5f9"),
        ]
    }

    const PY: &str = r#"
import hashlib, json, sys
for line in sys.stdin.buffer.read().decode("utf-8").splitlines():
    cfg = json.loads(line)
    canon = json.dumps(cfg, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canon.encode("utf-8")).hexdigest()[:12]
    pretty = json.dumps(cfg, indent=2, sort_keys=True)
    print(json.dumps([canon, digest, pretty]))
"#;

    /// Python's (canonical text, digest, pretty text) per config, or `None` without `python3`.
    fn python(cfgs: &[RunConfig]) -> Option<Vec<(String, String, String)>> {
        let child = Command::new("python3").args(["-c", PY]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => panic!("running python3: {e}"),
        };
        let mut input = String::new();
        for cfg in cfgs {
            // serde_json's own output (raw UTF-8), independent of the serializer under test.
            input.push_str(&serde_json::to_string(cfg).unwrap());
            input.push('\n');
        }
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "python3 failed: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        Some(text.lines().map(|l| serde_json::from_str(l).unwrap()).collect())
    }

    #[test]
    fn digests_match_python() {
        let cases = cases();
        let cfgs: Vec<RunConfig> = cases.iter().map(|c| c.0.clone()).collect();
        match python(&cfgs) {
            Some(py) => {
                assert_eq!(py.len(), cfgs.len());
                for ((cfg, want), (canon, digest, pretty)) in cases.iter().zip(&py) {
                    assert_eq!(&canonical_json(cfg), canon);
                    assert_eq!(&digest12(cfg), digest);
                    assert_eq!(&pretty_json(cfg), pretty);
                    assert_eq!(want, digest, "hard-coded digest out of date");
                }
            }
            None => {
                eprintln!("note: python3 not found; checking hard-coded digests only");
                for (cfg, want) in &cases {
                    assert_eq!(digest12(cfg), *want, "{cfg:?}");
                }
            }
        }
    }

    #[test]
    fn canonical_text_shape() {
        let c = canonical_json(&RunConfig::default());
        assert_eq!(
            c,
            r#"{"blocks_per_file":1,"dcp_size":1,"dtype":"bfloat16","inference_engine":"vllm","kv_cache_groups":[{"layer_names":[],"tokens_per_block":16}],"model_name":"unknown-model","pcp_size":1,"pp_size":1,"tokens_per_hash":16,"tp_size":1}"#
        );
        let native = RunConfig {
            parallel_agnostic: false,
            storage_format: Some(NATIVE_STORAGE_FORMAT.into()),
            model_name: "é😀/\"\\\u{7f}".into(),
            ..RunConfig::default()
        };
        let c = canonical_json(&native);
        assert!(c.contains(r#""parallel_agnostic":false"#), "{c}");
        assert!(c.contains(r#""storage_format":"kvtier-native-v1""#), "{c}");
        assert!(c.contains(r#""model_name":"\u00e9\ud83d\ude00/\"\\\u007f""#), "{c}");
        assert_eq!(digest12(&native).len(), DIGEST_LEN);
        assert!(digest12(&native).bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }

    #[test]
    fn paths() {
        let cfg = llama();
        let l = Layout::new("/mnt/kv", &cfg, 1);
        let d = digest12(&cfg);
        assert_eq!(l.digest(), d);
        assert_eq!(l.namespace_bytes(), <[u8; 12]>::try_from(d.as_bytes()).unwrap());
        assert_eq!(l.base(), Path::new(&format!("/mnt/kv/meta-llama_Llama-3.1-8B_{d}")));
        assert_eq!(l.config_path(), PathBuf::from(format!("/mnt/kv/meta-llama_Llama-3.1-8B_{d}/config.json")));
        assert_eq!(l.rank_dir(), Path::new(&format!("/mnt/kv/meta-llama_Llama-3.1-8B_{d}_r1")));

        let l = Layout::from_parts("/mnt/kv", "meta-llama/Llama-3.1-8B", "0123456789ab", 1);
        let hash: Vec<u8> = (0..32).map(|i| i * 8 + 1).collect();
        let key = OffloadKey::new(&hash, 3).unwrap();
        let h = "0109111921293139414951596169717981899199a1a9b1b9c1c9d1d9e1e9f1f9";
        assert_eq!(
            l.block_path(&key).to_str().unwrap(),
            format!("/mnt/kv/meta-llama_Llama-3.1-8B_0123456789ab_r1/010/91_g3/{h}.bin")
        );
        let short = OffloadKey::new(&[0xab], 3).unwrap();
        assert_eq!(
            l.block_path(&short).to_str().unwrap(),
            "/mnt/kv/meta-llama_Llama-3.1-8B_0123456789ab_r1/ab/_g3/ab.bin"
        );
        let two = OffloadKey::new(&[0xab, 0xcd], 70000).unwrap();
        assert_eq!(Layout::block_rel_path(&two).to_str().unwrap(), "abc/d_g70000/abcd.bin");
        let empty = OffloadKey::new(&[], 0).unwrap();
        assert_eq!(Layout::block_rel_path(&empty).to_str().unwrap(), "_g0/.bin");
        // Python's f-string would give `..._r1//_g0/.bin`: the same file.
        assert_eq!(l.block_path(&empty), Path::new("/mnt/kv/meta-llama_Llama-3.1-8B_0123456789ab_r1//_g0/.bin"));
    }

    #[test]
    fn parse_round_trip() {
        let mut keys = vec![OffloadKey::new(&[], 0).unwrap(), OffloadKey::new(&[0; 60], u32::MAX).unwrap()];
        for len in 0..=60usize {
            let hash: Vec<u8> = (0..len).map(|i| (i * 37 + len) as u8).collect();
            keys.push(OffloadKey::new(&hash, (len as u32) * 1000).unwrap());
        }
        for key in keys {
            let rel = Layout::block_rel_path(&key);
            assert_eq!(parse_block_path(&rel), Some(key), "{}", rel.display());
        }
    }

    #[test]
    fn parse_rejects_inconsistent_paths() {
        for bad in [
            "",
            "abcd.bin",
            "abc/d_g3/abcd.bin.tmp",
            "abc/d_g3/abcd.bin.tmp.1.2",
            "abc/d_g3/ABCD.bin",
            "ABC/D_g3/ABCD.bin",
            "abc/d_g3/abc.bin",
            "abd/d_g3/abcd.bin",
            "abc/e_g3/abcd.bin",
            "abc/d_g03/abcd.bin",
            "abc/d_g+3/abcd.bin",
            "abc/d_g/abcd.bin",
            "abc/d_g4294967296/abcd.bin",
            "abc/d_3/abcd.bin",
            "x/abc/d_g3/abcd.bin",
            "/abc/d_g3/abcd.bin",
            "./abc/d_g3/abcd.bin",
            "abc/../abc/d_g3/abcd.bin",
            "abc/d_g3/abxd.bin",
            "ab/_g3/ab.bin/x",
            "_g3/ab.bin",
            "ab/ab_g3/ab.bin",
        ] {
            assert_eq!(parse_block_path(Path::new(bad)), None, "{bad:?}");
        }
        let long = "00".repeat(61);
        assert_eq!(parse_block_path(Path::new(&format!("000/00_g0/{long}.bin"))), None);
        assert!(parse_block_path(Path::new("abc/d_g3/abcd.bin")).is_some());
        assert!(parse_block_path(Path::new("abc//d_g3/abcd.bin")).is_some());
        assert!(parse_block_path(Path::new("_g0/.bin")).is_some());
    }

    #[test]
    fn ensure_config_create_match_mismatch_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = llama();
        let l = Layout::new(dir.path(), &cfg, 0);
        assert_eq!(ensure_config(&l, &cfg).unwrap(), ConfigStatus::Created);
        let text = fs::read_to_string(l.config_path()).unwrap();
        assert_eq!(text, pretty_json(&cfg));
        assert!(text.starts_with("{\n  \"blocks_per_file\": 4,\n"), "{text}");
        // No temp file left behind.
        assert_eq!(fs::read_dir(l.base()).unwrap().count(), 1);
        assert_eq!(ensure_config(&l, &cfg).unwrap(), ConfigStatus::Matched);

        // A vLLM-written file, compact or with `parallel_agnostic: true` spelled out, matches.
        fs::write(
            l.config_path(),
            canonical_json(&cfg).replace("\"model_name\"", "\"parallel_agnostic\":true,\"model_name\""),
        )
        .unwrap();
        assert_eq!(ensure_config(&l, &cfg).unwrap(), ConfigStatus::Matched);

        let other = RunConfig { dtype: "float16".into(), tp_size: 8, parallel_agnostic: false, ..cfg.clone() };
        let err = ensure_config(&l, &other).unwrap_err();
        match &err {
            NamespaceError::Mismatch { fields, .. } => {
                assert_eq!(fields, &["dtype", "parallel_agnostic", "tp_size"]);
            }
            e => panic!("{e}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("dtype") && msg.contains("tp_size") && msg.contains("parallel_agnostic"), "{msg}");
        // The file on disk is never overwritten.
        assert!(!fs::read_to_string(l.config_path()).unwrap().contains("\"float16\""));

        let extra = RunConfig { storage_format: Some(NATIVE_STORAGE_FORMAT.into()), ..cfg.clone() };
        match ensure_config(&l, &extra) {
            Err(NamespaceError::Mismatch { fields, .. }) => assert_eq!(fields, ["storage_format"]),
            r => panic!("{r:?}"),
        }
        let mut v: Value = serde_json::from_str(&canonical_json(&cfg)).unwrap();
        v["new_field"] = Value::from(1);
        v["kv_cache_groups"][0]["tokens_per_block"] = Value::from(32);
        fs::write(l.config_path(), v.to_string()).unwrap();
        match ensure_config(&l, &cfg) {
            Err(NamespaceError::Mismatch { fields, .. }) => {
                assert_eq!(fields, ["kv_cache_groups", "new_field"])
            }
            r => panic!("{r:?}"),
        }

        for corrupt in [&b""[..], b"{\"blocks_per_file\": 4,", b"[1,2]", b"\xff\xfe", b"null"] {
            fs::write(l.config_path(), corrupt).unwrap();
            match ensure_config(&l, &cfg) {
                Err(e @ NamespaceError::Invalid { .. }) => {
                    assert!(e.to_string().contains("config.json"))
                }
                r => panic!("{corrupt:?}: {r:?}"),
            }
        }

        fs::remove_file(l.config_path()).unwrap();
        fs::create_dir(l.config_path()).unwrap();
        assert!(matches!(ensure_config(&l, &cfg), Err(NamespaceError::Io { .. })));
    }

    #[test]
    fn ensure_config_races() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = llama();
        let l = Layout::new(dir.path(), &cfg, 0);
        let results: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8).map(|_| s.spawn(|| ensure_config(&l, &cfg))).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
        assert_eq!(fs::read_to_string(l.config_path()).unwrap(), pretty_json(&cfg));
        assert_eq!(fs::read_dir(l.base()).unwrap().count(), 1);
    }
}

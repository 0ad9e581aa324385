//! Request traces in the format of Mooncake's FAST'25 release (kvcache-ai/Mooncake,
//! `FAST25-release/traces/`): one JSON object per line,
//!
//! ```json
//! {"timestamp": 27482, "input_length": 6955, "output_length": 52, "hash_ids": [46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 2353, 2354]}
//! ```
//!
//! `timestamp` is the arrival in ms, `input_length` and `output_length` are tokens, and
//! `hash_ids` names the prompt's 512-token blocks (the last one partial): equal ids at the same
//! place in two prompts mean the same tokens up to there.
//!
//! # Mapping onto kvtier blocks
//!
//! Each 512-token block splits into `512 / block_tokens` kvtier blocks. A kvtier block's key is
//! the SHA-256 of its parent's key (the block before it in the prompt; a fixed tag for the
//! first), the trace id it belongs to and its index within that id, so equal prefixes give
//! equal keys and different prefixes give different keys (the chain makes an id reused after
//! another prefix a different block, as vLLM's prefix hashes do). Only full blocks are
//! cacheable, as in vLLM: the prompt's last `input_length % block_tokens` tokens are always
//! computed, and so is the part of the last 512-token block beyond its last full kvtier block.
//!
//! # Bad lines
//!
//! A line that is not such an object, or whose fields do not agree (`hash_ids` must have
//! `ceil(input_length / 512)` ids, lengths must be positive, the timestamp finite and not
//! negative), is reported with its line number and skipped; the rest of the trace still runs.
//! Blank lines are ignored.

use std::collections::HashMap;
use std::io::{self, BufRead};
use std::path::Path;

use kvtier_core::OffloadKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::workload::{Request, Workload};

/// Tokens per trace block (a hash id).
pub const TRACE_BLOCK_TOKENS: u64 = 512;

/// A line of the trace that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadLine {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub error: String,
}

impl std::fmt::Display for BadLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.error)
    }
}

/// What reading a trace found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TraceInfo {
    /// Lines read (the reading stops after the last request asked for).
    pub lines_read: usize,
    /// Requests taken.
    pub requests: usize,
    /// True when `--requests` stopped the reading before the end of the file.
    pub truncated: bool,
    /// Lines skipped, in order.
    pub bad_lines: Vec<BadLine>,
}

/// How to read a trace.
#[derive(Debug, Clone, Copy)]
pub struct TraceParams {
    /// Tokens per kvtier block; must divide 512.
    pub block_tokens: u64,
    /// Take the first this many requests (all when `None`).
    pub requests: Option<usize>,
    /// Multiply arrival times by this (2: half the request rate).
    pub time_scale: f64,
}

#[derive(Deserialize)]
struct Line {
    timestamp: f64,
    input_length: u64,
    output_length: u64,
    hash_ids: Vec<u64>,
}

fn check(l: &Line) -> Result<(), String> {
    if !(l.timestamp.is_finite() && l.timestamp >= 0.0) {
        return Err(format!("timestamp {} is not a time (ms, not negative)", l.timestamp));
    }
    if l.input_length == 0 {
        return Err("input_length is 0".into());
    }
    if l.output_length == 0 {
        return Err("output_length is 0 (a request produces at least its first token)".into());
    }
    let need = l.input_length.div_ceil(TRACE_BLOCK_TOKENS);
    if l.hash_ids.len() as u64 != need {
        return Err(format!(
            "input_length {} needs {need} hash_ids of {TRACE_BLOCK_TOKENS} tokens, the line has {}",
            l.input_length,
            l.hash_ids.len()
        ));
    }
    Ok(())
}

/// Derives kvtier block keys from chains of trace ids, each (parent block, id) once.
struct Keys {
    per_id: usize,
    keys: Vec<OffloadKey>,
    /// (parent block, trace id) -> its kvtier blocks so far (fewer than `per_id` while it was
    /// only ever seen as a prompt's partial last block).
    memo: HashMap<(u32, u64), Vec<u32>>,
}

const ROOT: u32 = u32::MAX;

impl Keys {
    fn derive(&self, parent: Option<u32>, id: u64, sub: usize) -> OffloadKey {
        let mut h = Sha256::new();
        match parent {
            Some(p) => h.update(self.keys[p as usize].hash()),
            None => h.update(b"kvtier trace root"),
        }
        h.update(id.to_le_bytes());
        h.update((sub as u32).to_le_bytes());
        OffloadKey::new(&h.finalize(), 0).expect("a 32-byte hash makes a valid key")
    }

    /// Appends the indices of the first `full_blocks` kvtier blocks of the prompt `ids` to `out`.
    fn prompt(&mut self, ids: &[u64], full_blocks: usize, out: &mut Vec<u32>) {
        let mut parent = ROOT;
        let mut left = full_blocks;
        for &id in ids {
            if left == 0 {
                break;
            }
            let n = left.min(self.per_id);
            let mut subs = self.memo.remove(&(parent, id)).unwrap_or_default();
            while subs.len() < n {
                let prev = match subs.last() {
                    Some(&b) => Some(b),
                    None => (parent != ROOT).then_some(parent),
                };
                let key = self.derive(prev, id, subs.len());
                self.keys.push(key);
                subs.push((self.keys.len() - 1) as u32);
            }
            out.extend_from_slice(&subs[..n]);
            let next = subs[n - 1];
            self.memo.insert((parent, id), subs);
            parent = next;
            left -= n;
        }
    }
}

/// Reads a trace from `input` (see the module docs): the workload and what was skipped.
/// Errors only when `input` cannot be read or `params` are unusable; bad lines are skipped.
pub fn read(input: impl BufRead, params: &TraceParams) -> Result<(Workload, TraceInfo), String> {
    let bt = params.block_tokens;
    if bt == 0 || TRACE_BLOCK_TOKENS % bt != 0 {
        return Err(format!("--block-tokens {bt} must divide the trace's {TRACE_BLOCK_TOKENS}-token blocks"));
    }
    if !(params.time_scale.is_finite() && params.time_scale > 0.0) {
        return Err(format!("--time-scale {} must be a positive number", params.time_scale));
    }
    let mut keys = Keys { per_id: (TRACE_BLOCK_TOKENS / bt) as usize, keys: Vec::new(), memo: HashMap::new() };
    let mut info = TraceInfo::default();
    let mut requests: Vec<Request> = Vec::new();
    let limit = params.requests.unwrap_or(usize::MAX);
    for (i, line) in input.split(b'\n').enumerate() {
        if requests.len() >= limit {
            info.truncated = true;
            break;
        }
        let line = line.map_err(|e| format!("line {}: cannot read: {e}", i + 1))?;
        info.lines_read = i + 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed = serde_json::from_slice::<Line>(&line).map_err(|e| format!("not a request: {e}"));
        let l = match parsed.and_then(|l| check(&l).map(|()| l)) {
            Ok(l) => l,
            Err(error) => {
                info.bad_lines.push(BadLine { line: i + 1, error });
                continue;
            }
        };
        let mut prompt = Vec::new();
        keys.prompt(&l.hash_ids, (l.input_length / bt) as usize, &mut prompt);
        requests.push(Request {
            arrival: l.timestamp / 1000.0 * params.time_scale,
            prompt,
            prompt_tokens: l.input_length,
            output_tokens: l.output_length,
            output: Vec::new(),
            prev: None,
        });
    }
    // Arrival order (stable: equal timestamps keep the file's order).
    requests.sort_by(|a, b| a.arrival.total_cmp(&b.arrival));
    info.requests = requests.len();
    Ok((Workload { keys: keys.keys, requests, block_tokens: bt }, info))
}

/// Reads the trace file at `path`; bad lines are also reported on standard error.
pub fn load(path: &Path, params: &TraceParams) -> Result<(Workload, TraceInfo), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open the trace {}: {e}", path.display()))?;
    let (wl, info) =
        read(io::BufReader::with_capacity(1 << 20, file), params).map_err(|e| format!("{}: {e}", path.display()))?;
    for bad in &info.bad_lines {
        eprintln!("kvtier: {}: {bad} (skipped)", path.display());
    }
    if wl.requests.is_empty() {
        return Err(format!("{}: no request in the trace ({} bad lines)", path.display(), info.bad_lines.len()));
    }
    Ok((wl, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(bt: u64) -> TraceParams {
        TraceParams { block_tokens: bt, requests: None, time_scale: 1.0 }
    }

    fn line(ts: u64, input: u64, ids: &[u64]) -> String {
        format!(r#"{{"timestamp": {ts}, "input_length": {input}, "output_length": 3, "hash_ids": {ids:?}}}"#)
    }

    #[test]
    fn equal_prefixes_share_keys_and_different_prefixes_never_do() {
        let text = [
            line(0, 1024, &[1, 2]),
            line(5, 1300, &[1, 2, 3]),
            // Id 2 after another prefix is another block.
            line(9, 1024, &[7, 2]),
            // Id 1 as a partial last block: its first 100 / 16 = 6 blocks.
            line(12, 100, &[1]),
        ]
        .join("\n");
        let (w, info) = read(text.as_bytes(), &params(16)).unwrap();
        assert_eq!(info.requests, 4);
        assert!(info.bad_lines.is_empty());
        let r = &w.requests;
        assert_eq!(r[0].prompt.len(), 64);
        assert_eq!(r[1].prompt.len(), 1300 / 16);
        assert_eq!(r[1].prompt[..64], r[0].prompt[..]);
        assert_eq!(r[3].prompt[..], r[0].prompt[..6]);
        assert_eq!(r[2].prompt.len(), 64);
        assert!(r[2].prompt.iter().all(|k| !r[0].prompt.contains(k)), "other prefix, other keys");
        // Distinct keys: 64 (ids 1, 2) + 17 (id 3) + 64 (ids 7, 2 after 7).
        assert_eq!(w.keys.len(), 64 + 17 + 64);
        let mut all = w.keys.clone();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), w.keys.len(), "no collisions");
        assert_eq!((r[1].prompt_tokens, r[1].output_tokens, r[1].arrival), (1300, 3, 0.005));
    }

    #[test]
    fn one_block_per_id_at_512_tokens_and_blocks_must_divide_512() {
        let text = line(0, 1500, &[4, 5, 6]);
        let (w, _) = read(text.as_bytes(), &params(512)).unwrap();
        assert_eq!(w.requests[0].prompt.len(), 2, "the third id is partial");
        assert!(read(text.as_bytes(), &params(48)).unwrap_err().contains("must divide"));
    }

    #[test]
    fn bad_lines_are_named_and_skipped() {
        let text = [
            line(0, 512, &[1]),
            "not json".into(),
            r#"{"timestamp": 1, "input_length": 600, "output_length": 2}"#.into(),
            line(2, 1200, &[1, 2]),
            String::new(),
            r#"{"timestamp": -4, "input_length": 10, "output_length": 2, "hash_ids": [9]}"#.into(),
            r#"{"timestamp": 3, "input_length": 10, "output_length": 0, "hash_ids": [9]}"#.into(),
            line(4, 700, &[1, 8]),
        ]
        .join("\n");
        let (w, info) = read(text.as_bytes(), &params(16)).unwrap();
        assert_eq!(w.requests.len(), 2);
        let lines: Vec<usize> = info.bad_lines.iter().map(|b| b.line).collect();
        assert_eq!(lines, [2, 3, 4, 6, 7]);
        assert!(info.bad_lines[0].error.contains("not a request"), "{:?}", info.bad_lines);
        assert!(info.bad_lines[1].error.contains("hash_ids"), "{:?}", info.bad_lines);
        assert!(info.bad_lines[2].error.contains("needs 3 hash_ids"), "{:?}", info.bad_lines);
        assert!(info.bad_lines[3].error.contains("timestamp"), "{:?}", info.bad_lines);
        assert!(info.bad_lines[4].error.contains("output_length"), "{:?}", info.bad_lines);
        assert_eq!(info.bad_lines[0].to_string(), format!("line 2: {}", info.bad_lines[0].error));
    }

    #[test]
    fn first_n_requests_in_arrival_order_scaled() {
        let text = [line(3000, 16, &[1]), line(1000, 16, &[2]), line(2000, 16, &[3]), line(0, 16, &[4])].join("\n");
        let p = TraceParams { block_tokens: 16, requests: Some(3), time_scale: 2.0 };
        let (w, info) = read(text.as_bytes(), &p).unwrap();
        assert!(info.truncated);
        let arrivals: Vec<f64> = w.requests.iter().map(|r| r.arrival).collect();
        assert_eq!(arrivals, [2.0, 4.0, 6.0]);
    }
}

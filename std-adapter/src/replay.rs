//! `kvtier replay`: runs a JSON-lines trace through the engine and answers one JSON line per
//! non-blank input line, in order (SEMANTICS.md, "Replay traces").
//!
//! The engine is a [`TieringEngine`] over a real [`PrimaryRegion`]; memory tiers copy row bytes
//! through it, so `verify` checks bytes that really travelled through every tier. Nothing a
//! trace says may crash a run: every problem with a line is answered with an error line and the
//! run goes on.
//!
//! # Decisions SEMANTICS.md leaves open
//!
//! - **The config line.** The first non-blank line is the config line, whatever it holds. If it
//!   fails (malformed JSON answers `invalid_request`, any other op or a bad config `config`, a
//!   primary region or tier that cannot start `io`), there is no engine and every later line
//!   answers `config` ("no engine: the config line failed"). After a good config, another
//!   `config` line answers `config`. Every line is answered all the same, and `kvtier replay`
//!   then exits non-zero ([`run`] reports [`Ended::ConfigFailed`]).
//! - **Config bounds.** `num_blocks` at most [`MAX_BLOCKS`], `promotion_deadline_steps` at
//!   most `u32::MAX`; numbers must be non-negative integers. Then the limits every
//!   configuration has, checked in their one place, [`CacheConfig::validate`]: `block_bytes`
//!   from 1 to [`MAX_BLOCK_BYTES`](crate::config::MAX_BLOCK_BYTES), an `fs` tier's
//!   `read_workers` and `write_workers` from 1 to [`MAX_WORKERS`](crate::config::MAX_WORKERS)
//!   (more threads than a process can start would abort it); the message names the field.
//!   Unknown keys (in the config or a tier entry), a `null` value and a wrong type are `config`
//!   errors. `policy` is `lru` or `arc` (any case).
//! - **`fs` tiers** take the keys of the TOML `fs` table ([`FsConfig`](crate::config::FsConfig)):
//!   the tier really runs, on its executor, in `root_dir`. One that cannot start (a directory
//!   that cannot be created, a run config that differs from the one on disk) answers `io`,
//!   naming the path and what failed.
//! - **`redis` tiers** (`{"type":"redis","url":...}`, the fields of a TOML `redis` entry)
//!   start even when the server cannot be reached (every lookup then misses and the tier keeps
//!   trying); a namespace config record on the server that does not match the run answers
//!   `io`. `drain` waits for their jobs and background probes.
//! - **`regions` tiers** take the keys of [`crate::config::RegionsConfig`] (`path`, `capacity`,
//!   `region_bytes`, `executor`, the run-config fields...); the `sim` executor keeps the device
//!   in memory, as it does an `fs` tier's directory.
//! - **Op fields.** Fields an op does not use are ignored (so a trace may carry `req` or
//!   comments on every line). A line is checked in this order, the first failure answering:
//!   JSON object with a string `op` (`invalid_request`), known op (`unknown_op`), presence and
//!   type of every field the op uses (`invalid_request`), the keys' hex (`invalid_key`, in list
//!   order), the tier index (`unknown_tier`); only then is the engine called. A line refused
//!   before the engine call does not poll the tiers.
//! - **Field types.** `req` is a string (absent: the request `""`); `keys` an array of strings;
//!   `success` a boolean (absent: `true`); `tier` an integer (one that names no memory tier,
//!   negative included, is `unknown_tier`); `kind` is `"load"` or `"store"`.
//! - **Keys** are hex of 4 to 64 bytes, either case; they are printed in lowercase.
//! - **`complete_store` fills** (the stand-in for the GPU copy, before the engine call, on
//!   success only) exactly the listed keys whose slot this trace's own `prepare_store` put in
//!   flight and no `complete_store` has finished yet: slots the engine reserved for a promotion
//!   are never written, matching the engine, which does not complete them either.
//! - **`state`** prints `target` as a floating-point JSON number (`0.0`, `1.5`).
//! - **Errors the trace cannot cause**: `prepare_load`'s pin overflow (over `i32::MAX` readers)
//!   answers `invalid_request`.

use std::collections::HashMap;
use std::error::Error;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::sync::Arc;

use kvtier_core::{
    AnyPolicy, Direction, EngineConfig, EventLog, LoadError, LookupResult, MemoryTier, OffloadKey, PolicyKind,
    ReqContext, SlotId, StoreError, StorePlan, TieringEngine, UnpinError, IN_FLIGHT,
};
use serde::Serialize;
use serde_json::{Map, Value};

use kvtier_fs::region::{Access, PrimaryRegion};

use crate::config::{CacheConfig, TierConfig};

/// Largest `num_blocks` a replay config accepts (the engine's tables are sized from it).
pub const MAX_BLOCKS: u64 = 1 << 22;

/// Runs the trace in `file` (standard input when `None`), writing one answer line per non-blank
/// input line to standard output. The run ends with the engine's shutdown. Only I/O failures of
/// the input or output end the run early (an error naming the file and what failed); problems
/// with a line never do. A run whose config line failed answers every line, then returns an
/// error (the command exits non-zero).
pub fn run_cli(file: Option<&Path>) -> Result<(), Box<dyn Error>> {
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let ended = match file {
        Some(path) => {
            let named = |e: io::Error, what: &str| format!("replay: {}: {what}: {e}", path.display());
            let f = File::open(path).map_err(|e| named(e, "cannot open it"))?;
            if f.metadata().is_ok_and(|m| m.is_dir()) {
                return Err(format!("replay: {} is a directory, not a trace file", path.display()).into());
            }
            run(NamedInput { file: f, path }, &mut out)?
        }
        None => run(io::stdin(), &mut out).map_err(|e| format!("replay: {e}"))?,
    };
    match ended {
        Ended::Ran => Ok(()),
        Ended::ConfigFailed => Err("replay: the config line failed (its answer says why); no op ran".into()),
    }
}

/// The trace file: its read errors name it.
struct NamedInput<'a> {
    file: File,
    path: &'a Path,
}

impl Read for NamedInput<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf).map_err(|e| match e.kind() {
            io::ErrorKind::Interrupted => e,
            _ => kvtier_fs::files::annotate(e, format!("replay: cannot read {}", self.path.display())),
        })
    }
}

/// How a trace run ended, when its input and output did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The config line started an engine, or the input had no line.
    Ran,
    /// The config line failed: there was no engine, and every line answered an error.
    ConfigFailed,
}

/// Runs the trace read from `input`, writing the answers to `out`; the engine is shut down at
/// the end (also when reading or writing fails).
///
/// Answers are buffered, and flushed whenever every input read so far has been answered and
/// the next read may block: a bulk trace costs few writes, and a driver that sends one line
/// and waits for its answer (an interactive pipe) gets it.
pub fn run(input: impl Read, out: &mut impl Write) -> io::Result<Ended> {
    let mut input = BufReader::with_capacity(1 << 16, input);
    let mut replayer = Replayer::new();
    let mut line = Vec::new();
    let result = loop {
        if input.buffer().is_empty() {
            if let Err(e) = out.flush() {
                break Err(e);
            }
        }
        line.clear();
        match input.read_until(b'\n', &mut line) {
            Ok(0) => break out.flush(),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(e),
        }
        if let Some(answer) = replayer.handle_bytes(&line) {
            if let Err(e) = writeln!(out, "{answer}") {
                break Err(e);
            }
        }
    };
    replayer.finish();
    result.map(|()| if replayer.config_failed() { Ended::ConfigFailed } else { Ended::Ran })
}

/// A trace interpreter: feed it lines, get answer lines.
#[derive(Debug, Default)]
pub struct Replayer {
    state: State,
}

#[derive(Debug, Default)]
enum State {
    /// No non-blank line seen yet.
    #[default]
    AwaitConfig,
    /// The config line failed: no engine.
    Failed,
    Running(Box<Run>),
}

impl Replayer {
    /// A replayer waiting for its config line.
    pub fn new() -> Self {
        Self::default()
    }

    /// Answers one input line (raw bytes; invalid UTF-8 is an `invalid_request`).
    pub fn handle_bytes(&mut self, line: &[u8]) -> Option<String> {
        match std::str::from_utf8(line) {
            Ok(text) => self.handle_line(text),
            Err(_) => Some(self.answer(Err(OpError::new(Kind::InvalidRequest, "the line is not valid UTF-8")))),
        }
    }

    /// Answers one input line; `None` for a blank line.
    pub fn handle_line(&mut self, line: &str) -> Option<String> {
        // A byte-order mark (from an editor that writes one) is not part of the request.
        let line = line.strip_prefix('\u{feff}').unwrap_or(line).trim();
        if line.is_empty() {
            return None;
        }
        let parsed = parse_op(line);
        Some(self.answer(parsed))
    }

    /// The engine, once a config line succeeded.
    pub fn engine(&self) -> Option<&TieringEngine<AnyPolicy>> {
        match &self.state {
            State::Running(run) => Some(&run.engine),
            _ => None,
        }
    }

    /// The primary region, once a config line succeeded.
    pub fn region(&self) -> Option<&Arc<PrimaryRegion>> {
        match &self.state {
            State::Running(run) => Some(&run.region),
            _ => None,
        }
    }

    /// Whether the config line failed (there is no engine).
    pub fn config_failed(&self) -> bool {
        matches!(self.state, State::Failed)
    }

    /// Ends the run: shuts the engine down (every tier drains). Idempotent.
    pub fn finish(&mut self) {
        if let State::Running(run) = &mut self.state {
            run.engine.shutdown();
        }
    }

    /// Runs one parsed line (or reports why it could not be parsed) and renders the answer.
    fn answer(&mut self, parsed: Result<(Op, Map<String, Value>), OpError>) -> String {
        let result = match &mut self.state {
            State::AwaitConfig => {
                let not_config = || OpError::new(Kind::Config, "the first line must be a config line");
                let started = match parsed {
                    Ok((Op::Config, obj)) => Run::start(&obj),
                    Ok(_) => Err(not_config()),
                    Err(e) if e.kind == Kind::UnknownOp => Err(not_config()),
                    Err(e) => Err(e),
                };
                match started {
                    Ok(run) => {
                        self.state = State::Running(Box::new(run));
                        Ok(ok())
                    }
                    Err(e) => {
                        self.state = State::Failed;
                        Err(e)
                    }
                }
            }
            State::Failed => Err(OpError::new(Kind::Config, "no engine: the config line failed")),
            State::Running(run) => parsed.and_then(|(op, obj)| run.apply(op, &obj)),
        };
        match result {
            Ok(line) => line,
            // Serialising a struct of two strings cannot fail; keep a valid line even so.
            Err(e) => render(&ErrorOut { error: e.kind.as_str(), message: e.message })
                .unwrap_or_else(|_| r#"{"error":"invalid_request","message":"unprintable error"}"#.to_owned()),
        }
    }
}

/// A replayer dropped without [`Replayer::finish`] still shuts its engine down.
impl Drop for Replayer {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The error kinds of SEMANTICS.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    NotPresent,
    NotReady,
    NotPinned,
    InvalidKey,
    InvalidRequest,
    UnknownOp,
    UnknownTier,
    Config,
    Io,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::NotPresent => "not_present",
            Kind::NotReady => "not_ready",
            Kind::NotPinned => "not_pinned",
            Kind::InvalidKey => "invalid_key",
            Kind::InvalidRequest => "invalid_request",
            Kind::UnknownOp => "unknown_op",
            Kind::UnknownTier => "unknown_tier",
            Kind::Config => "config",
            Kind::Io => "io",
        }
    }
}

#[derive(Debug)]
struct OpError {
    kind: Kind,
    message: String,
}

impl OpError {
    fn new(kind: Kind, message: impl Into<String>) -> Self {
        OpError { kind, message: message.into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Config,
    Lookup,
    PrepareStore,
    CompleteStore,
    PrepareLoad,
    CompleteLoad,
    Touch,
    EndStep,
    TakeEvents,
    Drain,
    Verify,
    TierInsert,
    TierFailNext,
    State,
}

impl Op {
    fn from_name(name: &str) -> Option<Op> {
        Some(match name {
            "config" => Op::Config,
            "lookup" => Op::Lookup,
            "prepare_store" => Op::PrepareStore,
            "complete_store" => Op::CompleteStore,
            "prepare_load" => Op::PrepareLoad,
            "complete_load" => Op::CompleteLoad,
            "touch" => Op::Touch,
            "end_step" => Op::EndStep,
            "take_events" => Op::TakeEvents,
            "drain" => Op::Drain,
            "verify" => Op::Verify,
            "tier_insert" => Op::TierInsert,
            "tier_fail_next" => Op::TierFailNext,
            "state" => Op::State,
            _ => return None,
        })
    }
}

/// A JSON object with a known string `op`.
fn parse_op(line: &str) -> Result<(Op, Map<String, Value>), OpError> {
    let value: Value =
        serde_json::from_str(line).map_err(|e| OpError::new(Kind::InvalidRequest, format!("malformed JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(OpError::new(Kind::InvalidRequest, "a line must be a JSON object"));
    };
    let op = match obj.get("op") {
        Some(Value::String(name)) => name,
        Some(_) => return Err(OpError::new(Kind::InvalidRequest, "`op` must be a string")),
        None => return Err(OpError::new(Kind::InvalidRequest, "missing field `op`")),
    };
    let op = Op::from_name(op).ok_or_else(|| OpError::new(Kind::UnknownOp, format!("unknown op {op:?}")))?;
    Ok((op, obj))
}

// ---------------------------------------------------------------------------------------------
// Field extraction

fn invalid(message: impl Into<String>) -> OpError {
    OpError::new(Kind::InvalidRequest, message)
}

/// `req` (absent: `""`).
fn req_field(obj: &Map<String, Value>) -> Result<&str, OpError> {
    match obj.get("req") {
        None => Ok(""),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(invalid("`req` must be a string")),
    }
}

/// A required string field.
fn str_field<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<&'a str, OpError> {
    match obj.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(invalid(format!("`{name}` must be a string"))),
        None => Err(invalid(format!("missing field `{name}`"))),
    }
}

/// The `keys` array, still as strings.
fn keys_field(obj: &Map<String, Value>) -> Result<Vec<&str>, OpError> {
    let items = match obj.get("keys") {
        Some(Value::Array(items)) => items,
        Some(_) => return Err(invalid("`keys` must be an array of hex strings")),
        None => return Err(invalid("missing field `keys`")),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, v)| v.as_str().ok_or_else(|| invalid(format!("keys[{i}] must be a string"))))
        .collect()
}

/// The `tier` index: any integer; one that names no tier is `unknown_tier` (checked later).
fn tier_field(obj: &Map<String, Value>) -> Result<Option<usize>, OpError> {
    match obj.get("tier") {
        Some(Value::Number(n)) if n.is_u64() => Ok(n.as_u64().and_then(|t| usize::try_from(t).ok())),
        Some(Value::Number(n)) if n.is_i64() => Ok(None),
        Some(_) => Err(invalid("`tier` must be an integer")),
        None => Err(invalid("missing field `tier`")),
    }
}

/// Decodes one key: hex (either case) of 4 to 64 bytes.
fn parse_key(text: &str) -> Result<OffloadKey, OpError> {
    let bad = |why: &str| {
        let shown: String = text.chars().take(40).collect();
        let more = if text.chars().count() > 40 { "..." } else { "" };
        OpError::new(Kind::InvalidKey, format!("key {shown:?}{more}: {why}"))
    };
    if text.len() % 2 != 0 {
        return Err(bad("odd number of hex digits"));
    }
    let n = text.len() / 2;
    if !(kvtier_core::GROUP_LEN..=kvtier_core::MAX_KEY_LEN).contains(&n) {
        return Err(bad("a key is 4 to 64 bytes"));
    }
    let mut bytes = [0u8; kvtier_core::MAX_KEY_LEN];
    for (i, pair) in text.as_bytes().chunks_exact(2).enumerate() {
        match (hex_digit(pair[0]), hex_digit(pair[1])) {
            (Some(hi), Some(lo)) => bytes[i] = hi << 4 | lo,
            _ => return Err(bad("not hex")),
        }
    }
    OffloadKey::from_bytes(&bytes[..n]).map_err(|e| bad(&e.to_string()))
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn parse_keys(texts: &[&str]) -> Result<Vec<OffloadKey>, OpError> {
    texts.iter().map(|t| parse_key(t)).collect()
}

/// The key's fill pattern: its bytes repeated to `len`, truncated.
fn fill_pattern(key: &OffloadKey, len: usize, out: &mut Vec<u8>) {
    out.clear();
    let bytes = key.as_bytes();
    out.extend(bytes.iter().copied().cycle().take(len));
}

// ---------------------------------------------------------------------------------------------
// Config

fn config_err(message: impl Into<String>) -> OpError {
    OpError::new(Kind::Config, message)
}

fn config_uint(obj: &Map<String, Value>, name: &str, default: Option<u64>, max: u64) -> Result<u64, OpError> {
    let n = match obj.get(name) {
        None => return default.ok_or_else(|| config_err(format!("missing field `{name}`"))),
        Some(Value::Number(n)) => n.as_u64(),
        Some(_) => None,
    };
    match n {
        Some(n) if n <= max => Ok(n),
        Some(n) => Err(config_err(format!("`{name}` = {n} is over the limit of {max}"))),
        None => Err(config_err(format!("`{name}` must be a non-negative integer"))),
    }
}

/// The config line as a [`CacheConfig`] (events on: `take_events` is an op), checked by
/// [`CacheConfig::validate`] after replay's own bound on `num_blocks`.
fn parse_config(obj: &Map<String, Value>) -> Result<CacheConfig, OpError> {
    const KNOWN: [&str; 6] = ["op", "num_blocks", "block_bytes", "policy", "promotion_deadline_steps", "tiers"];
    if let Some(unknown) = obj.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(config_err(format!("unknown config field `{unknown}`")));
    }
    let num_blocks = config_uint(obj, "num_blocks", None, MAX_BLOCKS)?;
    let block_bytes = config_uint(obj, "block_bytes", Some(4096), u64::MAX)?;
    let policy = match obj.get("policy") {
        None => PolicyKind::Lru,
        Some(Value::String(p)) if p.eq_ignore_ascii_case("lru") => PolicyKind::Lru,
        Some(Value::String(p)) if p.eq_ignore_ascii_case("arc") => PolicyKind::Arc,
        Some(other) => return Err(config_err(format!("`policy` must be \"lru\" or \"arc\", not {other}"))),
    };
    let deadline = config_uint(obj, "promotion_deadline_steps", Some(64), u64::from(u32::MAX))?;
    let tiers = match obj.get("tiers") {
        None => &[][..],
        Some(Value::Array(tiers)) => &tiers[..],
        Some(_) => return Err(config_err("`tiers` must be an array")),
    };
    let tiers = tiers
        .iter()
        .enumerate()
        .map(|(i, tier)| {
            serde_json::from_value::<TierConfig>(tier.clone()).map_err(|e| config_err(format!("tiers[{i}]: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let config = CacheConfig {
        // Bounded above by MAX_BLOCKS, which fits.
        num_blocks: u32::try_from(num_blocks).map_err(|_| config_err("`num_blocks` too large"))?,
        // Out of range when it does not fit: validate() says so.
        block_bytes: usize::try_from(block_bytes).unwrap_or(usize::MAX),
        policy,
        promotion_deadline_steps: u32::try_from(deadline).map_err(|_| config_err("deadline too large"))?,
        events: true,
        shared_memory: None,
        shared_memory_mode: Default::default(),
        tiers,
    };
    config.validate().map_err(|e| config_err(e.to_string()))?;
    Ok(config)
}

// ---------------------------------------------------------------------------------------------
// A running trace

struct Run {
    engine: TieringEngine<AnyPolicy>,
    region: Arc<PrimaryRegion>,
    block_bytes: usize,
    /// Request names interned to ids in order of first use.
    reqs: HashMap<String, u64>,
    plan: StorePlan,
    slots: Vec<SlotId>,
    events: EventLog,
    pattern: Vec<u8>,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run").field("engine", &self.engine).field("region", &self.region).finish_non_exhaustive()
    }
}

impl Run {
    fn start(obj: &Map<String, Value>) -> Result<Run, OpError> {
        let config = parse_config(obj)?;
        let region = PrimaryRegion::anonymous(config.num_blocks as usize, config.block_bytes)
            .map_err(|e| OpError::new(Kind::Io, format!("cannot map the primary region: {e}")))?;
        let region = Arc::new(region);
        let tiers = config
            .tiers
            .iter()
            .enumerate()
            .map(|(i, t)| {
                crate::cache::open_tier(t, &region)
                    .map_err(|e| OpError::new(Kind::Io, format!("tiers[{i}] could not start: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let engine_config = EngineConfig { promotion_deadline_steps: config.promotion_deadline_steps, events: true };
        let engine = TieringEngine::new(AnyPolicy::new(config.policy, config.num_blocks), tiers, engine_config);
        Ok(Run {
            engine,
            region,
            block_bytes: config.block_bytes,
            reqs: HashMap::new(),
            plan: StorePlan::new(),
            slots: Vec::new(),
            events: EventLog::new(),
            pattern: Vec::new(),
        })
    }

    fn req(&mut self, name: &str) -> ReqContext {
        let next = self.reqs.len() as u64;
        ReqContext::new(*self.reqs.entry(name.to_owned()).or_insert(next))
    }

    /// The memory tier at `index`.
    fn memory_tier(&mut self, index: Option<usize>) -> Result<&mut MemoryTier, OpError> {
        let count = self.engine.tier_count();
        index
            .and_then(|i| self.engine.tier_mut::<MemoryTier>(i))
            .ok_or_else(|| OpError::new(Kind::UnknownTier, format!("no memory tier with that index ({count} tiers)")))
    }

    fn apply(&mut self, op: Op, obj: &Map<String, Value>) -> Result<String, OpError> {
        match op {
            Op::Config => Err(config_err("a config line may only be the first line")),
            Op::Lookup => {
                let req = req_field(obj)?;
                let key = parse_key(str_field(obj, "key")?)?;
                let req = self.req(req);
                let result = match self.engine.lookup(&key, req) {
                    LookupResult::Ready => "ready",
                    LookupResult::Pending => "pending",
                    LookupResult::Retry => "retry",
                    LookupResult::Miss => "miss",
                };
                render(&LookupOut { result })
            }
            Op::PrepareStore => {
                let req = req_field(obj)?;
                let keys = parse_keys(&keys_field(obj)?)?;
                let req = self.req(req);
                let mut plan = std::mem::take(&mut self.plan);
                let result = self.engine.prepare_store(&keys, req, &mut plan);
                let answer = match result {
                    Ok(()) => render(&StoreOut {
                        ok: true,
                        keys_to_store: hex_all(&plan.keys),
                        block_ids: plan.slots.iter().map(|s| s.0).collect(),
                        evicted: hex_all(&plan.evicted),
                    }),
                    Err(StoreError::NoSpace { .. }) => render(&OkOut { ok: false }),
                    Err(e @ StoreError::ShutDown) => Err(invalid(e.to_string())),
                };
                self.plan = plan;
                answer
            }
            Op::CompleteStore => {
                let req = req_field(obj)?;
                let texts = keys_field(obj)?;
                let success = match obj.get("success") {
                    None => true,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => return Err(invalid("`success` must be a boolean")),
                };
                let keys = parse_keys(&texts)?;
                let req = self.req(req);
                if success {
                    for key in &keys {
                        let Some((slot, IN_FLIGHT)) = self.engine.primary().find(key) else {
                            continue;
                        };
                        // A promotion's slot is the engine's to fill, not the caller's.
                        if !self.engine.is_promotion_slot(slot) {
                            fill_pattern(key, self.block_bytes, &mut self.pattern);
                            if let Ok(mut lease) = self.region.lease(slot, Access::Write) {
                                if let Some(row) = lease.as_mut_slice() {
                                    row[..self.pattern.len()].copy_from_slice(&self.pattern);
                                }
                            }
                        }
                    }
                }
                self.engine.complete_store(&keys, req, success).map_err(|e| invalid(e.to_string()))?;
                Ok(ok())
            }
            Op::PrepareLoad => {
                let req = req_field(obj)?;
                let keys = parse_keys(&keys_field(obj)?)?;
                let req = self.req(req);
                self.slots.clear();
                match self.engine.prepare_load(&keys, req, &mut self.slots) {
                    Ok(()) => render(&LoadOut { ok: true, block_ids: self.slots.iter().map(|s| s.0).collect() }),
                    Err(e @ LoadError::NotPresent { .. }) => Err(OpError::new(Kind::NotPresent, e.to_string())),
                    Err(e @ LoadError::NotReady { .. }) => Err(OpError::new(Kind::NotReady, e.to_string())),
                    Err(e) => Err(invalid(e.to_string())),
                }
            }
            Op::CompleteLoad => {
                let req = req_field(obj)?;
                let keys = parse_keys(&keys_field(obj)?)?;
                let req = self.req(req);
                match self.engine.complete_load(&keys, req) {
                    Ok(()) => Ok(ok()),
                    Err(e @ UnpinError::NotPresent { .. }) => Err(OpError::new(Kind::NotPresent, e.to_string())),
                    Err(e @ UnpinError::NotPinned { .. }) => Err(OpError::new(Kind::NotPinned, e.to_string())),
                    Err(e) => Err(invalid(e.to_string())),
                }
            }
            Op::Touch => {
                let req = req_field(obj)?;
                let keys = parse_keys(&keys_field(obj)?)?;
                let req = self.req(req);
                self.engine.touch(&keys, req);
                Ok(ok())
            }
            Op::EndStep => {
                self.engine.end_step();
                Ok(ok())
            }
            Op::TakeEvents => {
                self.events.clear();
                self.engine.take_events(&mut self.events);
                let events = self
                    .events
                    .iter()
                    .map(|e| EventOut { medium: e.medium.as_str(), removed: e.removed, keys: hex_all(e.keys) })
                    .collect();
                render(&EventsOut { events })
            }
            Op::Drain => {
                self.engine.drain();
                Ok(ok())
            }
            Op::Verify => {
                let keys = parse_keys(&keys_field(obj)?)?;
                let mut out = Vec::with_capacity(keys.len());
                for key in &keys {
                    let (ready, intact) = match self.engine.primary().find(key) {
                        Some((slot, rc)) => {
                            fill_pattern(key, self.block_bytes, &mut self.pattern);
                            let intact = self.region.lease(slot, Access::Read).is_ok_and(|l| l.block() == self.pattern);
                            (rc >= 0, intact)
                        }
                        None => (false, false),
                    };
                    out.push(VerifyKey { key: key.to_string(), ready, intact });
                }
                render(&VerifyOut { ok: true, keys: out })
            }
            Op::TierInsert => {
                let tier = tier_field(obj)?;
                let keys = parse_keys(&keys_field(obj)?)?;
                let block_bytes = self.block_bytes;
                let mut pattern = std::mem::take(&mut self.pattern);
                let result = self.memory_tier(tier).map(|t| {
                    for key in &keys {
                        fill_pattern(key, block_bytes, &mut pattern);
                        t.insert(*key, &pattern);
                    }
                });
                self.pattern = pattern;
                result.map(|()| ok())
            }
            Op::TierFailNext => {
                let tier = tier_field(obj)?;
                let kind = match str_field(obj, "kind")? {
                    "load" => Direction::Load,
                    "store" => Direction::Store,
                    other => return Err(invalid(format!("`kind` must be \"load\" or \"store\", not {other:?}"))),
                };
                self.memory_tier(tier)?.fail_next(kind);
                Ok(ok())
            }
            Op::State => self.state(),
        }
    }

    fn state(&self) -> Result<String, OpError> {
        let pool = self.engine.primary();
        let blocks = pool
            .blocks()
            .map(|(slot, key, ref_cnt)| BlockOut { key: key.to_string(), slot: slot.0, ref_cnt })
            .collect();
        let keys_of = |slots: &mut dyn Iterator<Item = SlotId>| -> Vec<String> {
            slots.filter_map(|s| pool.slot(s).map(|(k, _)| k.to_string())).collect()
        };
        match pool.policy() {
            AnyPolicy::Lru(lru) => render(&StateLru { ok: true, blocks, lru: keys_of(&mut lru.order()) }),
            AnyPolicy::Arc(arc) => render(&StateArc {
                ok: true,
                blocks,
                t1: keys_of(&mut arc.t1()),
                t2: keys_of(&mut arc.t2()),
                b1: arc.b1().map(ToString::to_string).collect(),
                b2: arc.b2().map(ToString::to_string).collect(),
                target: arc.target(),
            }),
        }
    }
}

fn hex_all(keys: &[OffloadKey]) -> Vec<String> {
    keys.iter().map(ToString::to_string).collect()
}

// ---------------------------------------------------------------------------------------------
// Answers: structs, so the fields keep SEMANTICS.md's order (serde_json's maps would sort them).

fn ok() -> String {
    r#"{"ok":true}"#.to_owned()
}

/// One compact JSON line.
fn render<T: Serialize>(answer: &T) -> Result<String, OpError> {
    serde_json::to_string(answer).map_err(|e| invalid(format!("cannot render the answer: {e}")))
}

#[derive(Serialize)]
struct ErrorOut {
    error: &'static str,
    message: String,
}

#[derive(Serialize)]
struct OkOut {
    ok: bool,
}

#[derive(Serialize)]
struct LookupOut {
    result: &'static str,
}

#[derive(Serialize)]
struct StoreOut {
    ok: bool,
    keys_to_store: Vec<String>,
    block_ids: Vec<u32>,
    evicted: Vec<String>,
}

#[derive(Serialize)]
struct LoadOut {
    ok: bool,
    block_ids: Vec<u32>,
}

#[derive(Serialize)]
struct EventOut {
    medium: &'static str,
    removed: bool,
    keys: Vec<String>,
}

#[derive(Serialize)]
struct EventsOut {
    events: Vec<EventOut>,
}

#[derive(Serialize)]
struct BlockOut {
    key: String,
    slot: u32,
    ref_cnt: i32,
}

#[derive(Serialize)]
struct StateLru {
    ok: bool,
    blocks: Vec<BlockOut>,
    lru: Vec<String>,
}

#[derive(Serialize)]
struct StateArc {
    ok: bool,
    blocks: Vec<BlockOut>,
    t1: Vec<String>,
    t2: Vec<String>,
    b1: Vec<String>,
    b2: Vec<String>,
    target: f64,
}

#[derive(Serialize)]
struct VerifyKey {
    key: String,
    ready: bool,
    intact: bool,
}

#[derive(Serialize)]
struct VerifyOut {
    ok: bool,
    keys: Vec<VerifyKey>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(line: &str) -> Option<String> {
        let v: Value = serde_json::from_str(line).ok()?;
        v.get("error")?.as_str().map(str::to_owned)
    }

    #[test]
    fn keys_parse_in_either_case_and_print_lowercase() {
        let key = parse_key("AbCd0001").unwrap();
        assert_eq!(key.as_bytes(), [0xab, 0xcd, 0, 1]);
        assert_eq!(key.to_string(), "abcd0001");
        assert!(parse_key(&"ff".repeat(64)).is_ok());
        for bad in ["", "abc", "abcdef", "abcd00g0", "abcd 000", "+bcd0000", "éé00"] {
            assert_eq!(parse_key(bad).unwrap_err().kind, Kind::InvalidKey, "{bad:?}");
        }
        let long = "ab".repeat(5000);
        let err = parse_key(&long).unwrap_err();
        assert!(err.message.len() < 200, "the message quotes a bounded prefix");
    }

    #[test]
    fn fill_pattern_repeats_and_truncates() {
        let key = OffloadKey::from_bytes(&[1, 2, 3, 4, 5]).unwrap();
        let mut out = Vec::new();
        fill_pattern(&key, 12, &mut out);
        assert_eq!(out, [1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2]);
        fill_pattern(&key, 3, &mut out);
        assert_eq!(out, [1, 2, 3]);
    }

    #[test]
    fn blank_lines_get_no_answer_and_the_config_must_come_first() {
        let mut r = Replayer::new();
        assert_eq!(r.handle_line(""), None);
        assert_eq!(r.handle_line(" \t\r"), None);
        assert_eq!(r.handle_bytes(b"\n"), None);
        assert!(r.engine().is_none());
        assert_eq!(r.handle_line(r#"{"op":"config","num_blocks":2}"#).as_deref(), Some(r#"{"ok":true}"#));
        assert_eq!(r.engine().map(|e| e.primary().capacity()), Some(2));
        assert_eq!(r.region().map(|g| (g.rows(), g.row_bytes())), Some((2, 4096)));
        let again = r.handle_line(r#"{"op":"config","num_blocks":2}"#).unwrap();
        assert_eq!(kind(&again).as_deref(), Some("config"));
        r.finish();
        r.finish();
        assert!(r.engine().is_some_and(|e| e.is_shut_down()));
    }

    /// Issue 11, item 13: worker counts a process cannot start (it used to abort, with no
    /// answer line) are a `config` error naming the field; the run goes on answering lines, and
    /// reports that its config line failed (item 18: `kvtier replay` exits non-zero).
    #[test]
    fn worker_counts_out_of_range_are_a_config_error() {
        let root = tempfile::tempdir().unwrap();
        for (field, n) in [("read_workers", 100_000), ("write_workers", 0), ("read_workers", 1025)] {
            let tier = serde_json::json!({"type":"fs","root_dir":root.path(),"executor":"threaded",field:n});
            let config = serde_json::json!({"op":"config","num_blocks":2,"tiers":[{"type":"memory"},tier]});
            let mut r = Replayer::new();
            let answer = r.handle_line(&config.to_string()).unwrap();
            assert_eq!(kind(&answer).as_deref(), Some("config"), "{answer}");
            assert!(answer.contains(&format!("tiers[1].{field}")), "{answer}");
            assert!(r.config_failed());
            let next = r.handle_line(r#"{"op":"end_step"}"#).unwrap();
            assert_eq!(kind(&next).as_deref(), Some("config"), "{next}");
        }
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0, "no tier started");
        let mut out = Vec::new();
        let trace =
            format!("{}\n{{\"op\":\"end_step\"}}\n", serde_json::json!({"op":"config","num_blocks":2,"block_bytes":0}));
        assert_eq!(run(trace.as_bytes(), &mut out).unwrap(), Ended::ConfigFailed);
        assert_eq!(String::from_utf8(out).unwrap().lines().count(), 2, "every line is answered");
        assert_eq!(run(&b"{\"op\":\"config\",\"num_blocks\":2}\n"[..], &mut Vec::new()).unwrap(), Ended::Ran);
        assert_eq!(run(&b""[..], &mut Vec::new()).unwrap(), Ended::Ran);
    }

    #[test]
    fn complete_store_fills_only_the_callers_slots() {
        let mut r = Replayer::new();
        let lines = [
            r#"{"op":"config","num_blocks":2,"block_bytes":8,"tiers":[{"type":"memory"}]}"#,
            r#"{"op":"tier_insert","tier":0,"keys":["bbbb0000"]}"#,
            r#"{"op":"lookup","key":"bbbb0000"}"#,
            r#"{"op":"prepare_store","keys":["aaaa0000"]}"#,
            r#"{"op":"complete_store","keys":["aaaa0000","bbbb0000"]}"#,
        ];
        for line in lines {
            let answer = r.handle_line(line).unwrap();
            assert!(kind(&answer).is_none(), "{line} -> {answer}");
        }
        let region = r.region().unwrap();
        let row = |slot| region.lease(SlotId(slot), Access::Read).unwrap().block().to_vec();
        assert_eq!(row(0), [0; 8], "slot 0 is reserved for bbbb0000's promotion");
        assert_eq!(row(1), [0xaa, 0xaa, 0, 0, 0xaa, 0xaa, 0, 0]);
    }
}

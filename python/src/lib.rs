//! `kvtier._kvtier`: kvtier's disk tier, the FS tier ([`kvtier_fs::FsTier`], a file per
//! block) or the region engine ([`kvtier_regions::RegionsTier`], one device), opened by
//! [`kvtier::cache::open_tier`] with any executor, over rows that a Python object exports
//! through the buffer protocol, for the `kvtier.vllm` tier that vLLM loads.
//!
//! This module is deliberately thin: it converts Python values to the library's types and back,
//! and keeps the one map the library cannot: vLLM's job ids (any Python object) to kvtier's
//! [`JobId`]s. Everything else (the configuration, the namespace, the index, the I/O) is the
//! library's. The `kvtier.vllm` Python module adapts it to vLLM's `SecondaryTierManager`.
//!
//! ## The GIL
//!
//! Block I/O never runs on the calling thread: it runs on the executor's worker threads or in
//! the kernel (io_uring), which never touch Python. Calls that can block (`Tier.wait_idle`,
//! `Tier.shutdown`) release the GIL while they wait. Calls that only queue or collect work
//! (submit, poll, lookup) keep it: they take microseconds, while a thread that releases the GIL
//! may have to wait out another thread's whole switch interval (5 ms) to get it back.
//!
//! ## Decisions the contract leaves open
//!
//! - A job id is handed back exactly as given (the same Python object), with the keys that
//!   succeeded (the same key objects) when only some did.
//! - A slot out of the buffer's range fails its block (reported at the next poll, as vLLM's own
//!   tier does), while malformed arguments (a key kvtier cannot hold, lengths that differ) raise
//!   `ValueError` before anything is submitted.
#![deny(unsafe_code)]
#![warn(missing_docs)]

use std::any::Any;
use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use kvtier::config::{FsConfig, RegionsConfig, TierConfig};
use kvtier_core::{Completions, EventLog, Job, JobId, OffloadKey, ReqContext, SecondaryTier, SlotId, TierLookup};
use kvtier_fs::direct::DirectMode;
use kvtier_fs::format::native_file_len;
use kvtier_fs::region::PrimaryRegion;
use kvtier_fs::DIRECT_ALIGN;
use kvtier_fs::{FsTier, StorageFormat};
use kvtier_regions::RegionsTier;
use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

/// The counters [`Tier::stats`] reports for either disk tier, in this order.
const COUNTERS: [&str; 10] = [
    "blocks_stored",
    "blocks_skipped",
    "blocks_loaded",
    "corrupt",
    "missing",
    "transient",
    "failed",
    "evicted",
    "refused",
    "given_up",
];

/// The request context kvtier's tier interface takes; the FS tier does not use it.
const NO_REQUEST: ReqContext = ReqContext::new(0);

/// A job submitted and not reported yet.
struct Pending {
    /// vLLM's job id, handed back as given.
    job_id: Py<PyAny>,
    /// The job's keys as given (for `successful_keys`).
    keys: Py<PyAny>,
    /// How many keys it has.
    len: usize,
    load: bool,
    started: Instant,
}

struct Inner {
    tier: Box<dyn SecondaryTier>,
    jobs: HashMap<u64, Pending>,
    next_job: u64,
    completions: Completions,
    events: EventLog,
    keys: Vec<OffloadKey>,
    slots: Vec<SlotId>,
}

impl Inner {
    fn fs(&self) -> Option<&FsTier> {
        let tier: &dyn Any = &*self.tier;
        tier.downcast_ref::<FsTier>()
    }

    fn regions(&self) -> Option<&RegionsTier> {
        let tier: &dyn Any = &*self.tier;
        tier.downcast_ref::<RegionsTier>()
    }
}

/// kvtier's disk tier over the rows of a buffer (see the module docs).
#[pyclass(module = "kvtier._kvtier", frozen)]
struct Tier {
    /// `None` once shut down.
    inner: Mutex<Option<Inner>>,
    /// Dropped after the tier (whose executor holds leases on it), with the GIL held: the last
    /// reference releases the Python buffer.
    region: Mutex<Option<Arc<PrimaryRegion>>>,
    row_bytes: usize,
    rows: usize,
    file_bytes: u64,
    rows_direct_aligned: bool,
}

fn value_error(msg: impl Into<String>) -> PyErr {
    PyValueError::new_err(msg.into())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while the lock was held left nothing half-done that a later call could observe
    // (each call finishes its own bookkeeping before returning); go on with the data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn key_of(bytes: &[u8]) -> PyResult<OffloadKey> {
    OffloadKey::from_bytes(bytes).map_err(|e| value_error(format!("key {bytes:02x?}: {e}")))
}

/// A disk tier table from its JSON text: a `regions` table with `"type": "regions"`, else an
/// `fs` table (see [`parse_fs_config`]).
fn parse_config(text: &str) -> PyResult<TierConfig> {
    let table = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text)
        .map_err(|e| value_error(format!("kvtier tier config: {e}")))?;
    match table.get("type").and_then(serde_json::Value::as_str) {
        None if !table.contains_key("type") => Ok(TierConfig::Fs(Box::new(parse_fs_config(text)?))),
        Some("regions") => {
            let mut table = table;
            table.remove("type");
            let regions = serde_json::from_value::<RegionsConfig>(table.into())
                .map_err(|e| value_error(format!("kvtier tier config (regions): {e}")))?;
            Ok(TierConfig::Regions(Box::new(regions)))
        }
        _ => Err(value_error(format!(
            "kvtier tier config: type {} is not a disk tier (\"regions\", or no type for an fs table)",
            table["type"]
        ))),
    }
}

/// An `fs` tier table from its JSON text. An error names the key at fault: serde names an
/// unknown key, but not the key of a value it cannot take.
fn parse_fs_config(text: &str) -> PyResult<FsConfig> {
    let err = match serde_json::from_str::<FsConfig>(text) {
        Ok(fs) => return Ok(fs),
        Err(e) => e,
    };
    let culprit = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text).ok().and_then(|table| {
        let root = table.get("root_dir").cloned().unwrap_or_else(|| "/".into());
        table.iter().find_map(|(k, v)| {
            let mut one = serde_json::Map::new();
            one.insert("root_dir".into(), root.clone());
            one.insert(k.clone(), v.clone());
            serde_json::from_value::<FsConfig>(one.into()).is_err().then(|| k.clone())
        })
    });
    Err(value_error(match culprit {
        Some(key) => format!("kvtier tier config, key {key:?}: {err}"),
        None => format!("kvtier tier config: {err}"),
    }))
}

/// The slot ids of a job: a numpy integer array (through the buffer protocol, no copy of
/// Python ints) or any sequence of ints. Negative or oversized ids become an id past the last
/// row, which the executor refuses: that block fails, as in vLLM's own tier.
fn slots_of(ids: &Bound<'_, PyAny>, out: &mut Vec<SlotId>) -> PyResult<()> {
    out.clear();
    let to_slot = |v: i64| SlotId(u32::try_from(v).unwrap_or(u32::MAX));
    if let Ok(buf) = PyUntypedBuffer::get(ids) {
        if buf.dimensions() == 1 && buf.is_c_contiguous() {
            let py = ids.py();
            if let Ok(b) = buf.as_typed::<i32>() {
                out.extend(b.to_vec(py)?.into_iter().map(|v| to_slot(v.into())));
                return Ok(());
            }
            if let Ok(b) = buf.as_typed::<i64>() {
                out.extend(b.to_vec(py)?.into_iter().map(to_slot));
                return Ok(());
            }
        }
    }
    for item in ids.try_iter()? {
        out.push(to_slot(item?.extract::<i64>()?));
    }
    Ok(())
}

/// The rows of `buffer`: checked, and held (the export keeps the exporter from moving or
/// freeing them) for as long as the region lives.
fn region_of(buffer: &Bound<'_, PyAny>) -> PyResult<PrimaryRegion> {
    let buf = PyUntypedBuffer::get(buffer)
        .map_err(|e| value_error(format!("the primary rows must support the buffer protocol: {e}")))?;
    if buf.readonly() {
        return Err(value_error("the primary buffer is read-only: the tier loads blocks into it"));
    }
    if buf.dimensions() == 0 {
        return Err(value_error("the primary buffer has no rows (a 0-dimensional buffer)"));
    }
    if !buf.is_c_contiguous() {
        return Err(value_error(format!(
            "the primary buffer's rows are not contiguous (shape {:?}, strides {:?}): a row must be \
             strides[0] bytes, rows back to back",
            buf.shape(),
            buf.strides()
        )));
    }
    let rows = buf.shape()[0];
    let stride = usize::try_from(buf.strides()[0]).unwrap_or(0);
    if rows > 0 && stride == 0 {
        return Err(value_error("the primary buffer's rows are empty (stride 0)"));
    }
    let len = buf.len_bytes();
    let Some(base) = NonNull::new(buf.buf_ptr().cast::<u8>()) else {
        return Err(value_error("the primary buffer has no memory"));
    };
    // SAFETY: `buf` is a buffer export of `len` bytes at `base`, writable (checked above), and
    // moved into the region as its owner: while an export is held, the exporter may not free,
    // move or resize the memory (mmap.close() and bytearray resizing raise BufferError, numpy
    // refuses to resize). The rows are accessed under the region's leases only for the blocks
    // of jobs vLLM submitted, whose rows vLLM pins (stores) or keeps unreadable (loads) until
    // the job is reported: the contract of `PrimaryRegion::foreign`.
    #[allow(unsafe_code)]
    let region = unsafe { PrimaryRegion::foreign(base, len, rows, stride, Box::new(buf)) };
    region.map_err(|e| value_error(e.to_string()))
}

#[pymethods]
impl Tier {
    /// Opens the disk tier described by `config` over the rows of `primary`: one block per
    /// row, `strides[0]` bytes. `config` is the JSON text of a tier table of kvtier's TOML
    /// configuration: an `fs` table without `type`, or a `regions` table with
    /// `"type": "regions"`. `max_bytes` bounds an FS tier's size on disk, converted to
    /// `max_blocks` with the size of one block file (a region device's bound is its
    /// `capacity`).
    #[new]
    #[pyo3(signature = (primary, config, max_bytes=None))]
    fn new(py: Python<'_>, primary: &Bound<'_, PyAny>, config: &str, max_bytes: Option<u64>) -> PyResult<Self> {
        let mut tier_config = parse_config(config)?;
        let region = Arc::new(region_of(primary)?);
        let row_bytes = region.stride();
        let aligned = region.rows_direct_aligned();
        let (native, o_direct) = match &tier_config {
            TierConfig::Fs(fs) => {
                let settings = fs.tier_config(region.row_bytes());
                (settings.format == StorageFormat::Native, settings.o_direct)
            }
            // Region records carry the native header.
            TierConfig::Regions(r) => (true, r.o_direct),
            TierConfig::Memory(_) | TierConfig::Redis(_) => unreachable!("parse_config makes disk tiers only"),
        };
        if native && row_bytes % DIRECT_ALIGN != 0 {
            let instead = match tier_config {
                TierConfig::Regions(_) => "use an fs tier with format \"vllm\"",
                _ => "use format \"vllm\"",
            };
            return Err(value_error(format!(
                "format \"native\" needs rows of a multiple of {DIRECT_ALIGN} bytes (rows here are {row_bytes}); {instead}"
            )));
        }
        if o_direct == DirectMode::On && !aligned {
            return Err(value_error(format!(
                "o_direct = \"on\" needs rows starting on {DIRECT_ALIGN}-byte boundaries and a stride that is a multiple \
                 of {DIRECT_ALIGN} (stride here: {row_bytes}); use o_direct = \"auto\" or \"off\""
            )));
        }
        let file_bytes = if native { native_file_len(row_bytes as u64) } else { row_bytes as u64 };
        if let Some(max) = max_bytes {
            let TierConfig::Fs(fs) = &mut tier_config else {
                return Err(value_error("max_bytes bounds an fs tier; a regions tier's bound is its capacity"));
            };
            if fs.max_blocks.is_some() {
                return Err(value_error("give max_bytes or max_blocks, not both"));
            }
            let blocks = max / file_bytes.max(1);
            if blocks == 0 {
                return Err(value_error(format!(
                    "max_bytes {max} is smaller than one block file ({file_bytes} bytes)"
                )));
            }
            fs.max_blocks = Some(usize::try_from(blocks).unwrap_or(usize::MAX));
        }
        let rows = region.rows();
        let tier = {
            let region = region.clone();
            // Start-up scans the namespace directory: it may take a while.
            py.detach(move || kvtier::cache::open_tier(&tier_config, &region))?
        };
        Ok(Tier {
            inner: Mutex::new(Some(Inner {
                tier,
                jobs: HashMap::new(),
                next_job: 0,
                completions: Completions::new(),
                events: EventLog::new(),
                keys: Vec::new(),
                slots: Vec::new(),
            })),
            region: Mutex::new(Some(region)),
            row_bytes,
            rows,
            file_bytes,
            rows_direct_aligned: aligned,
        })
    }

    /// Does the tier have `key`? Answered from the in-memory index (no syscall, unless
    /// `probe_on_miss` is on). `None` when the tier cannot tell yet (a disk tier always can); a
    /// shut-down tier has nothing.
    fn lookup(&self, key: &[u8]) -> PyResult<Option<bool>> {
        let key = key_of(key)?;
        let mut guard = lock(&self.inner);
        let Some(inner) = guard.as_mut() else { return Ok(Some(false)) };
        Ok(match inner.tier.lookup(&key, NO_REQUEST) {
            TierLookup::Hit => Some(true),
            TierLookup::Miss => Some(false),
            TierLookup::Busy => None,
        })
    }

    /// Starts copying rows `slots` into the tier as `keys` (a store) or blocks `keys` into rows
    /// `slots` (a load, `load=True`). Returns at once; the job is reported by [`Tier::poll`].
    #[pyo3(signature = (job_id, keys, slots, load))]
    fn submit(
        &self,
        job_id: Bound<'_, PyAny>,
        keys: Bound<'_, PyAny>,
        slots: &Bound<'_, PyAny>,
        load: bool,
    ) -> PyResult<()> {
        let mut guard = lock(&self.inner);
        let Some(inner) = guard.as_mut() else { return Err(PyRuntimeError::new_err("the kvtier tier is shut down")) };
        let mut key_buf = std::mem::take(&mut inner.keys);
        let mut slot_buf = std::mem::take(&mut inner.slots);
        let parsed = (|| {
            key_buf.clear();
            for k in keys.try_iter()? {
                let k = k?;
                key_buf.push(key_of(k.cast::<PyBytes>().map_err(PyErr::from)?.as_bytes())?);
            }
            slots_of(slots, &mut slot_buf)?;
            if key_buf.len() != slot_buf.len() {
                return Err(value_error(format!("{} keys but {} slots", key_buf.len(), slot_buf.len())));
            }
            Ok(())
        })();
        if let Err(e) = parsed {
            inner.keys = key_buf;
            inner.slots = slot_buf;
            return Err(e);
        }
        let id = inner.next_job;
        inner.next_job += 1;
        let job = Job { id: JobId(id), req: NO_REQUEST, keys: &key_buf, slots: &slot_buf };
        if load {
            inner.tier.submit_load(job);
        } else {
            inner.tier.submit_store(job);
        }
        let len = key_buf.len();
        let pending = Pending { job_id: job_id.unbind(), keys: keys.unbind(), len, load, started: Instant::now() };
        inner.jobs.insert(id, pending);
        inner.keys = key_buf;
        inner.slots = slot_buf;
        Ok(())
    }

    /// The jobs finished since the last call, each once, as `(job_id, success,
    /// successful_keys, transfer_time, transfer_bytes)`: the arguments of vLLM's `JobResult`.
    /// `successful_keys` is `None` unless a load job failed for some of its keys only.
    fn poll<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        let mut guard = lock(&self.inner);
        let Some(inner) = guard.as_mut() else { return Ok(out) };
        if inner.jobs.is_empty() {
            return Ok(out);
        }
        let mut completions = std::mem::take(&mut inner.completions);
        inner.tier.poll_finished(&mut completions);
        self.report(py, inner, &completions, &out)?;
        completions.clear();
        inner.completions = completions;
        Ok(out)
    }

    /// Blocks, without the GIL, until no job is in flight; their results wait for the next
    /// [`Tier::poll`].
    fn wait_idle(&self, py: Python<'_>) {
        py.detach(|| {
            if let Some(inner) = lock(&self.inner).as_mut() {
                inner.tier.wait_idle();
            }
        });
    }

    /// The tier's events since the last call: `(removed, [key, ...])` each, in order.
    fn take_events<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        let mut guard = lock(&self.inner);
        let Some(inner) = guard.as_mut() else { return Ok(out) };
        inner.tier.take_events(&mut inner.events);
        for event in inner.events.iter() {
            let keys = PyList::new(py, event.keys.iter().map(|k| PyBytes::new(py, k.as_bytes())))?;
            out.append((event.removed, keys))?;
        }
        inner.events.clear();
        Ok(out)
    }

    /// Finishes or fails every job in flight (without the GIL), closes the tier and releases
    /// the buffer. Returns the jobs not reported yet, as [`Tier::poll`] does. Idempotent.
    fn shutdown<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        let taken = py.detach(|| {
            let mut inner = lock(&self.inner).take()?;
            let mut completions = Completions::new();
            inner.tier.shutdown(&mut completions);
            Some((inner, completions))
        });
        if let Some((mut inner, completions)) = taken {
            let reported = self.report(py, &mut inner, &completions, &out);
            // The executor's threads are joined here, without the GIL (they never take it).
            let tier = inner.tier;
            py.detach(move || drop(tier));
            reported?;
        }
        // The last reference to the region: the buffer export is released, with the GIL held.
        lock(&self.region).take();
        Ok(out)
    }

    /// Jobs submitted and not reported yet.
    #[getter]
    fn in_flight(&self) -> usize {
        lock(&self.inner).as_ref().map_or(0, |i| i.jobs.len())
    }

    /// Bytes of one block (one row of the buffer, padding included).
    #[getter]
    fn block_bytes(&self) -> usize {
        self.row_bytes
    }

    /// Rows of the buffer.
    #[getter]
    fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes of one block file on disk (the native format adds its header; a region record is
    /// the same size).
    #[getter]
    fn file_bytes(&self) -> u64 {
        self.file_bytes
    }

    /// Whether whole rows can move with `O_DIRECT` (rows 4096-aligned); if not, they move
    /// buffered.
    #[getter]
    fn rows_direct_aligned(&self) -> bool {
        self.rows_direct_aligned
    }

    /// Where the blocks live: the FS tier's rank directory, or the region device.
    #[getter]
    fn location(&self) -> PyResult<String> {
        let guard = lock(&self.inner);
        let inner = guard.as_ref().ok_or_else(|| PyRuntimeError::new_err("the kvtier tier is shut down"))?;
        Ok(match (inner.fs(), inner.regions()) {
            (Some(fs), _) => fs.layout().rank_dir().display().to_string(),
            (None, Some(r)) => r.path().display().to_string(),
            (None, None) => String::new(),
        })
    }

    /// The namespace's base directory (`{root}/{model}_{digest}`), where `config.json` is (an
    /// FS tier's only).
    #[getter]
    fn base_path(&self) -> PyResult<String> {
        self.with_fs(|fs| fs.layout().base().display().to_string())
    }

    /// The directory holding this rank's block files.
    #[getter]
    fn rank_dir(&self) -> PyResult<String> {
        self.with_fs(|fs| fs.layout().rank_dir().display().to_string())
    }

    /// The file that holds (or would hold) block `key`.
    fn block_path(&self, key: &[u8]) -> PyResult<String> {
        let key = key_of(key)?;
        self.with_fs(|fs| fs.layout().block_path(&key).display().to_string())
    }

    /// Counters and facts of the tier: blocks indexed, per-outcome block counts since start-up,
    /// the executor, O_DIRECT, what start-up found.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        let guard = lock(&self.inner);
        let Some(inner) = guard.as_ref() else { return Ok(d) };
        // What both disk tiers report, under the FS tier's counter names ([`COUNTERS`]); the
        // region engine has 0 where it has no such event (it never misses a file, refuses a
        // store or gives a block up).
        let (counters, facts) = match (inner.fs(), inner.regions()) {
            (Some(fs), _) => {
                let s = fs.stats();
                let startup = fs.startup();
                let verification = fs.verification();
                d.set_item("startup_stale_temps_removed", startup.stale_temps_removed)?;
                d.set_item("startup_evicted", startup.evicted)?;
                d.set_item("startup_wrong_length_removed", startup.wrong_length_removed)?;
                d.set_item("startup_unverifiable_removed", startup.unverifiable_removed)?;
                d.set_item("verify_total", verification.total)?;
                d.set_item("verify_checked", verification.checked)?;
                d.set_item("verify_finished", verification.finished)?;
                let counters = [
                    s.blocks_stored,
                    s.blocks_skipped,
                    s.blocks_loaded,
                    s.corrupt,
                    s.missing,
                    s.transient,
                    s.failed,
                    s.evicted,
                    s.refused,
                    s.given_up,
                ];
                let facts = (
                    fs.len(),
                    fs.executor_name(),
                    startup.o_direct,
                    startup.blocks_indexed as u64,
                    startup.torn_removed as u64,
                    startup.scan_time,
                );
                (counters, facts)
            }
            (None, Some(r)) => {
                let s = r.stats();
                let rec = r.recovery();
                d.set_item("regions_reclaimed", s.regions_reclaimed)?;
                d.set_item("reinserted", s.reinserted)?;
                let counters = [
                    s.blocks_stored,
                    s.blocks_skipped,
                    s.blocks_loaded,
                    s.corrupt,
                    0,
                    s.transient,
                    s.failed,
                    s.evicted,
                    0,
                    0,
                ];
                let facts =
                    (r.len(), r.executor_name(), r.o_direct(), rec.blocks_indexed, rec.dropped_corrupt, rec.duration);
                (counters, facts)
            }
            (None, None) => return Ok(d),
        };
        for (name, value) in COUNTERS.iter().zip(counters) {
            d.set_item(name, value)?;
        }
        let (blocks, executor, o_direct, indexed, torn, startup_time) = facts;
        d.set_item("blocks", blocks)?;
        d.set_item("executor", executor)?;
        d.set_item("o_direct", o_direct)?;
        d.set_item("startup_blocks_indexed", indexed)?;
        d.set_item("startup_torn_removed", torn)?;
        d.set_item("startup_scan_seconds", startup_time.as_secs_f64())?;
        Ok(d)
    }
}

impl Tier {
    fn with_fs<T>(&self, f: impl FnOnce(&FsTier) -> T) -> PyResult<T> {
        let guard = lock(&self.inner);
        let inner = guard.as_ref().ok_or_else(|| PyRuntimeError::new_err("the kvtier tier is shut down"))?;
        inner.fs().map(f).ok_or_else(|| PyRuntimeError::new_err("a regions tier has no file per block: see `location`"))
    }

    /// Appends one result tuple per completion of a job this tier submitted.
    fn report(
        &self,
        py: Python<'_>,
        inner: &mut Inner,
        completions: &Completions,
        out: &Bound<'_, PyList>,
    ) -> PyResult<()> {
        for result in completions.iter() {
            // A job the tier reports twice, or one it made up, is not vLLM's: never hand it on.
            let Some(pending) = inner.jobs.remove(&result.job.0) else { continue };
            let outcomes = completions.key_outcomes(result);
            let ok_count = match outcomes {
                Some(o) => o.iter().filter(|&&ok| ok).count(),
                None if result.success => pending.len,
                None => 0,
            };
            let successful: Option<Bound<'_, PyTuple>> = match outcomes {
                Some(o) if pending.load && !result.success && ok_count > 0 => {
                    let keys = pending.keys.bind(py);
                    let mut chosen = Vec::with_capacity(ok_count);
                    for (item, &ok) in keys.try_iter()?.zip(o) {
                        if ok {
                            chosen.push(item?);
                        }
                    }
                    Some(PyTuple::new(py, chosen)?)
                }
                _ => None,
            };
            let bytes = ok_count * self.row_bytes;
            let seconds = pending.started.elapsed().as_secs_f64();
            out.append((pending.job_id, result.success, successful, seconds, bytes))?;
        }
        Ok(())
    }
}

impl Drop for Tier {
    fn drop(&mut self) {
        // Not shut down: the tier drains (its Drop) before the region's last reference goes.
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        drop(inner);
        self.region.get_mut().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// The native module.
#[pymodule]
fn _kvtier(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Tier>()?;
    m.add("ROW_ALIGN", DIRECT_ALIGN)?;
    Ok(())
}

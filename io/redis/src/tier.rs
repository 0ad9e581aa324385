//! [`RedisTier`]: the `SecondaryTier` over a Redis/Valkey server or cluster.
//!
//! The scheduler thread never waits on the network: `submit_*` leases the rows, opens the job
//! in the core's [`JobTable`], splits its keys into per-node batches of at most
//! [`RedisTierConfig::pipeline`] keys (one job part per key) and queues them for the worker
//! threads; `poll_finished` takes whole finished jobs from the table and folds their keys'
//! outcomes into the local index. Everything it touches is memory (a queue push under a mutex
//! the workers hold only to pop, atomics).
//!
//! # Decisions
//!
//! - **Lookup** answers from the local index of keys this process stored, loaded or found by a
//!   probe. With `probe_on_miss`, a key not in the index is probed in the background (`EXISTS`)
//!   and the lookup answers [`TierLookup::Busy`] (the engine's Retry) while the probe is in
//!   flight, once per key: the answer lands in the index (found) or in a negative cache kept
//!   for [`RedisTierConfig::probe_negative_ttl`] (absent, or the probe failed), so the lookups
//!   after it answer Hit or Miss at once. Without `probe_on_miss`, a miss is a Miss (never
//!   Retry). A key on a node whose circuit breaker is open answers Miss.
//! - **Store** skips keys in the index without a round trip; the workers skip keys `EXISTS`
//!   finds, then `SET NX`. A job that finds the job table full fails as a whole (dropped);
//!   so does each key whose row cannot be leased or whose node is dead.
//! - **Load** of a key not in the index still asks the server (the index may have forgotten
//!   it); a miss, a corrupt value (deleted by the worker) and a slot that moved take the key out
//!   of the index; a timeout or a dead node keeps it.
//! - The index is bounded ([`RedisTierConfig::index_capacity`], least recently used forgotten):
//!   the server holds the blocks, the index only saves round trips.
//! - A block's presence is not guaranteed by a Hit: the server may have evicted it since. The
//!   load then misses, and the engine frees the reserved slot: a Hit costs at most a wasted
//!   round trip, never a wrong block.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use kvtier_core::{
    Completions, Direction, Job, JobId, JobTable, JobTableStats, OffloadKey, ReqContext, SecondaryTier, TierLookup,
};
use kvtier_fs::index::BlockIndex;
use kvtier_fs::namespace::pretty_json;
use kvtier_fs::region::{Access, PrimaryRegion};
use redis::{ConnectionInfo, IntoConnectionInfo};

use crate::breaker::{now_ms, Breaker};
use crate::config::RedisTierConfig;
use crate::conn::Conn;
use crate::names::Names;
use crate::stats::{Counters, RedisStats};
use crate::topology::Topology;
use crate::worker::{self, Item, KeyOutcome, Kind, Queue, Shared, Task, NS_MISMATCH, NS_UNKNOWN};

/// What became of one key of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyState {
    /// Decided on the scheduler thread, no network: `true` for a store of a key in the index.
    Decided(bool),
    /// A worker runs it (a part of the job).
    Running,
}

/// The tier's record of a job in the table.
#[derive(Debug, Default)]
struct Record {
    id: Option<JobId>,
    store: bool,
    keys: Vec<OffloadKey>,
    states: Vec<KeyState>,
}

/// What start-up found.
#[derive(Debug, Clone, Default)]
pub struct RedisStartup {
    /// Whether the server is a cluster, and how many masters it has.
    pub cluster: bool,
    /// Masters (1 for a standalone server).
    pub nodes: usize,
    /// The config record matched (or was written by this run).
    pub namespace_checked: bool,
    /// Why the server could not be reached at start-up (the tier then starts as all misses and
    /// keeps trying in the background).
    pub unreachable: Option<String>,
}

/// The remote tier. See the [module docs](self).
pub struct RedisTier {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    region: Arc<PrimaryRegion>,
    table: JobTable,
    records: Vec<Record>,
    index: BlockIndex,
    /// Keys whose probe is in flight.
    probing: HashSet<OffloadKey>,
    /// Keys a probe found absent, until when (ms).
    absent: HashMap<OffloadKey, u64>,
    /// Keys a probe found (stored by another process), for [`RedisStats::loaded_shared`].
    found_by_probe: HashSet<OffloadKey>,
    finished: Completions,
    codes: Vec<u32>,
    key_ok: Vec<bool>,
    keybuf: Vec<u8>,
    startup: RedisStartup,
    closed: bool,
}

impl std::fmt::Debug for RedisTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTier")
            .field("namespace", &self.shared.names.base())
            .field("indexed", &self.index.len())
            .field("jobs_in_flight", &self.table.jobs_in_flight())
            .finish_non_exhaustive()
    }
}

/// `info` with the CA certificates of the PEM file `path` trusted (a `rediss://` URL).
#[cfg(feature = "tls")]
fn with_ca(info: ConnectionInfo, path: &std::path::Path) -> io::Result<ConnectionInfo> {
    let pem = std::fs::read(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(pem) };
    let client = redis::Client::build_with_tls(info, certs)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{}: {e}", path.display())))?;
    Ok(client.get_connection_info().clone())
}

#[cfg(not(feature = "tls"))]
fn with_ca(_info: ConnectionInfo, _path: &std::path::Path) -> io::Result<ConnectionInfo> {
    Err(io::Error::new(io::ErrorKind::InvalidInput, "tls_ca_file needs kvtier-redis built with the `tls` feature"))
}

/// Most entries of the negative probe cache before expired ones are swept.
const ABSENT_SWEEP: usize = 1 << 16;

impl RedisTier {
    /// Connects to the server or cluster of `cfg`, checks (or writes) the namespace's config
    /// record and starts the workers over `region`'s rows.
    ///
    /// # Errors
    ///
    /// Bad settings or URLs (`InvalidInput`), and a config record that does not match this run
    /// (`InvalidData`). A server that cannot be reached is not an error: the tier starts with
    /// every lookup a miss and connects in the background.
    pub fn open(cfg: &RedisTierConfig, region: Arc<PrimaryRegion>) -> io::Result<RedisTier> {
        cfg.validate().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let seeds = cfg
            .urls
            .iter()
            .map(|u| {
                let mut info = u
                    .as_str()
                    .into_connection_info()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("redis URL {u:?}: {e}")))?;
                if cfg.username.is_some() {
                    info.redis.username.clone_from(&cfg.username);
                }
                if cfg.password.is_some() {
                    info.redis.password.clone_from(&cfg.password);
                }
                match &cfg.tls_ca_file {
                    Some(path) => with_ca(info, path),
                    None => Ok(info),
                }
            })
            .collect::<io::Result<Vec<ConnectionInfo>>>()?;
        let run = cfg.effective_run_config();
        let names = Names::new(&run, cfg.rank);
        let mut startup = RedisStartup::default();
        let topology = match Topology::discover(&seeds, None, cfg) {
            Ok(t) => t,
            Err(e) => {
                startup.unreachable = Some(e.to_string());
                let b = Arc::new(Breaker::new(cfg.breaker_threshold, cfg.backoff_min, cfg.backoff_max));
                Topology::standalone(seeds[0].clone(), b)
            }
        };
        startup.cluster = topology.cluster;
        startup.nodes = topology.nodes.len();
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            namespace: names.namespace_bytes(),
            config_key: names.config_key(),
            config_json: pretty_json(&run),
            names,
            row_bytes: region.row_bytes(),
            seeds,
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            finished_tasks: Mutex::new(0),
            done: Condvar::new(),
            topology: RwLock::new(Arc::new(topology)),
            refresh: AtomicBool::new(startup.unreachable.is_some()),
            last_refresh: AtomicU64::new(0),
            namespace_state: AtomicU8::new(NS_UNKNOWN),
            counters: Counters::default(),
            probe_results: Mutex::new(Vec::new()),
        });
        if startup.unreachable.is_none() {
            let topo = Arc::clone(&shared.topology.read().unwrap_or_else(|p| p.into_inner()));
            let node = topo.node_for(shared.config_key.as_bytes()).and_then(|i| topo.nodes.get(i));
            let checked = node
                .ok_or_else(|| io::Error::other("no node serves the config record's slot"))
                .and_then(|n| Conn::connect(&n.info, cfg.client, cfg.timeout))
                .and_then(|mut con| worker::check_record(&shared, &mut con));
            match checked {
                Ok(()) => startup.namespace_checked = true,
                Err(e) if shared.namespace_state.load(Ordering::Acquire) == NS_MISMATCH => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("redis namespace {}: {e}", shared.names.base()),
                    ));
                }
                Err(e) => startup.unreachable = Some(e.to_string()),
            }
        }
        if let Some(why) = &startup.unreachable {
            eprintln!("kvtier: warning: redis tier: {why}; it starts as misses and keeps trying");
        }
        let workers = (0..cfg.connections)
            .map(|i| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new().name(format!("kvtier-redis-{i}")).spawn(move || worker::run(shared))
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(RedisTier {
            shared,
            workers,
            region,
            table: JobTable::new(cfg.max_jobs, cfg.max_parts),
            records: (0..cfg.max_jobs).map(|_| Record::default()).collect(),
            index: BlockIndex::new(),
            probing: HashSet::new(),
            absent: HashMap::new(),
            found_by_probe: HashSet::new(),
            finished: Completions::new(),
            codes: Vec::new(),
            key_ok: Vec::new(),
            keybuf: Vec::new(),
            startup,
            closed: false,
        })
    }

    /// What start-up found.
    pub fn startup(&self) -> &RedisStartup {
        &self.startup
    }

    /// What the tier did so far.
    pub fn stats(&self) -> RedisStats {
        self.shared.counters.snapshot()
    }

    /// What the tier's job table did: every job goes through it, each key a worker runs is a
    /// part of it.
    pub fn job_table_stats(&self) -> JobTableStats {
        self.table.stats()
    }

    /// The namespace's key names.
    pub fn names(&self) -> &Names {
        &self.shared.names
    }

    /// Keys in the local index.
    pub fn indexed(&self) -> usize {
        self.index.len()
    }

    /// Is `key` in the local index?
    pub fn contains(&self, key: &OffloadKey) -> bool {
        self.index.contains(key)
    }

    /// Times a node's circuit breaker opened (all nodes of the current slot map).
    pub fn breaker_openings(&self) -> u64 {
        self.topology().nodes.iter().map(|n| n.breaker.times_opened()).sum()
    }

    fn topology(&self) -> Arc<Topology> {
        Arc::clone(&self.shared.topology.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn remember(&mut self, key: OffloadKey) {
        self.index.insert(key);
        while self.index.len() > self.shared.cfg.index_capacity {
            if self.index.pop_victim(|_| false).is_none() {
                break;
            }
        }
    }

    /// Folds probe answers into the index and the negative cache.
    fn drain_probes(&mut self) {
        let answers = {
            let mut results = self.shared.probe_results.lock().unwrap_or_else(|p| p.into_inner());
            if results.is_empty() {
                return;
            }
            std::mem::take(&mut *results)
        };
        let until = now_ms() + self.shared.cfg.probe_negative_ttl.as_millis() as u64;
        if self.absent.len() > ABSENT_SWEEP {
            let now = now_ms();
            self.absent.retain(|_, t| *t > now);
        }
        for (key, found) in answers {
            self.probing.remove(&key);
            if found {
                self.absent.remove(&key);
                if self.found_by_probe.len() >= self.shared.cfg.index_capacity {
                    self.found_by_probe.clear();
                }
                self.found_by_probe.insert(key);
                self.remember(key);
            } else {
                self.absent.insert(key, until);
            }
        }
    }

    fn submit(&mut self, dir: Direction, job: Job<'_>) {
        let n = job.keys.len();
        let handle = if self.closed || self.table.free_parts() < n { None } else { self.table.open().ok() };
        let Some(handle) = handle else {
            // Reported at the next poll, like any job.
            self.shared.counters.jobs_refused.fetch_add(1, Ordering::Relaxed);
            self.finished.push(job.id, false);
            return;
        };
        let topo = self.topology();
        let pipeline = self.shared.cfg.pipeline;
        let kind = match dir {
            Direction::Store => Kind::Store,
            Direction::Load => Kind::Load,
        };
        let mut batches: Vec<Vec<Item>> = (0..topo.nodes.len()).map(|_| Vec::new()).collect();
        let mut tasks: Vec<Task> = Vec::new();
        let mut rec = std::mem::take(&mut self.records[handle.index()]);
        rec.id = Some(job.id);
        rec.store = dir == Direction::Store;
        rec.keys.clear();
        rec.keys.extend_from_slice(job.keys);
        rec.states.clear();
        for (key, &slot) in job.keys.iter().zip(job.slots) {
            if dir == Direction::Store && self.index.contains(key) {
                self.shared.counters.present.fetch_add(1, Ordering::Relaxed);
                rec.states.push(KeyState::Decided(true));
                continue;
            }
            self.shared.names.block_key(key, &mut self.keybuf);
            let Some(node) = topo.node_for(&self.keybuf) else {
                rec.states.push(KeyState::Decided(false));
                continue;
            };
            if topo.nodes[node].breaker.is_open() {
                self.shared.counters.fast_failed.fetch_add(1, Ordering::Relaxed);
                rec.states.push(KeyState::Decided(false));
                continue;
            }
            let Ok(lease) = self.region.lease(slot, Access::for_op(dir)) else {
                rec.states.push(KeyState::Decided(false));
                continue;
            };
            let Ok(part) = self.table.add_part(handle) else {
                rec.states.push(KeyState::Decided(false));
                continue;
            };
            batches[node].push(Item { key: *key, lease: Some(lease), part: Some(part) });
            rec.states.push(KeyState::Running);
            if batches[node].len() >= pipeline {
                let items = std::mem::take(&mut batches[node]);
                tasks.push(Task { kind, topo: Arc::clone(&topo), node, items });
            }
        }
        self.records[handle.index()] = rec;
        for (node, items) in batches.into_iter().enumerate() {
            if !items.is_empty() {
                tasks.push(Task { kind, topo: Arc::clone(&topo), node, items });
            }
        }
        let closed = self.table.close(handle);
        debug_assert!(closed.is_ok(), "{closed:?}");
        self.shared.push_tasks(tasks);
    }

    /// Takes every finished job from the table and folds its keys into the index.
    fn collect(&mut self) {
        let mut codes = std::mem::take(&mut self.codes);
        let mut key_ok = std::mem::take(&mut self.key_ok);
        while let Some(handle) = self.table.take_finished(&mut codes) {
            let rec = std::mem::take(&mut self.records[handle.index()]);
            let mut codes_iter = codes.iter().copied();
            key_ok.clear();
            for (key, state) in rec.keys.iter().zip(&rec.states) {
                let ok = match state {
                    KeyState::Decided(ok) => *ok,
                    KeyState::Running => {
                        let outcome = codes_iter.next().map_or(KeyOutcome::Lost, KeyOutcome::from_code);
                        match (rec.store, outcome) {
                            (true, KeyOutcome::Ok | KeyOutcome::Present) => self.remember(*key),
                            (false, KeyOutcome::Ok) => {
                                self.index.touch(key);
                                if self.found_by_probe.contains(key) {
                                    self.shared.counters.loaded_shared.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            (false, KeyOutcome::Missing | KeyOutcome::Corrupt | KeyOutcome::Moved) => {
                                self.index.remove(key);
                                self.found_by_probe.remove(key);
                            }
                            _ => {}
                        }
                        outcome.is_ok()
                    }
                };
                key_ok.push(ok);
            }
            if let Some(id) = rec.id {
                if key_ok.iter().all(|&ok| ok) {
                    self.finished.push(id, true);
                } else {
                    self.finished.push_partial(id, key_ok.iter().copied());
                }
            }
            // Keep the record's buffers for the entry's next job.
            self.records[handle.index()] = Record { id: None, ..rec };
        }
        self.codes = codes;
        self.key_ok = key_ok;
    }

    /// Waits (a little) for a worker to finish a batch.
    fn wait_for_workers(&self, last_seen: &mut u64) {
        let n = self.shared.finished_tasks.lock().unwrap_or_else(|p| p.into_inner());
        let (n, _) = self
            .shared
            .done
            .wait_timeout_while(n, Duration::from_millis(20), |n| *n == *last_seen)
            .unwrap_or_else(|p| p.into_inner());
        *last_seen = *n;
    }
}

impl SecondaryTier for RedisTier {
    fn lookup(&mut self, key: &OffloadKey, _req: ReqContext) -> TierLookup {
        self.drain_probes();
        if self.closed {
            return TierLookup::Miss;
        }
        let topo = self.topology();
        self.shared.names.block_key(key, &mut self.keybuf);
        let Some(node) = topo.node_for(&self.keybuf) else { return TierLookup::Miss };
        if topo.nodes[node].breaker.is_open() {
            return TierLookup::Miss;
        }
        if self.index.contains(key) {
            return TierLookup::Hit;
        }
        if !self.shared.cfg.probe_on_miss {
            return TierLookup::Miss;
        }
        if self.probing.contains(key) {
            return TierLookup::Busy;
        }
        if self.absent.get(key).is_some_and(|&until| until > now_ms()) {
            return TierLookup::Miss;
        }
        self.absent.remove(key);
        self.probing.insert(*key);
        let item = Item { key: *key, lease: None, part: None };
        self.shared.push_tasks([Task { kind: Kind::Probe, topo, node, items: vec![item] }]);
        TierLookup::Busy
    }

    fn submit_store(&mut self, job: Job<'_>) {
        self.submit(Direction::Store, job);
    }

    fn submit_load(&mut self, job: Job<'_>) {
        self.submit(Direction::Load, job);
    }

    fn poll_finished(&mut self, out: &mut Completions) {
        self.drain_probes();
        self.collect();
        out.append(&mut self.finished);
    }

    fn touch(&mut self, keys: &[OffloadKey]) {
        for key in keys.iter().rev() {
            self.index.touch(key);
        }
    }

    fn wait_idle(&mut self) {
        let mut seen = *self.shared.finished_tasks.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            self.drain_probes();
            self.collect();
            if self.table.jobs_in_flight() == 0 && self.probing.is_empty() {
                return;
            }
            if self.workers.is_empty() {
                return;
            }
            self.wait_for_workers(&mut seen);
        }
    }

    fn shutdown(&mut self, out: &mut Completions) {
        if !self.closed {
            self.closed = true;
            self.shared.queue.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
            self.shared.work.notify_all();
            // The workers run what is queued (bounded by the timeouts, or at once for a dead
            // node), then exit; every part is finished or dropped by then.
            for worker in self.workers.drain(..) {
                let _ = worker.join();
            }
            self.drain_probes();
            self.collect();
            self.probing.clear();
        }
        out.append(&mut self.finished);
    }
}

impl Drop for RedisTier {
    /// Dropping the tier shuts it down (its jobs' results are discarded).
    fn drop(&mut self) {
        let mut discarded = Completions::new();
        self.shutdown(&mut discarded);
    }
}

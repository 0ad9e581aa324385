//! The worker threads: each pops batches of key operations for one node from the shared
//! queue (merging the batches of the same kind and node queued behind, up to the pipeline
//! depth), runs them on its own connection to that node as pipelines, and reports each key
//! through its job part (the core's job table) from this thread.
//!
//! - **Store** batch: `EXISTS` for every key (pipelined); then `SET key value NX [PX ttl]` for
//!   the absent ones, each value sent as three slices: the RESP prefix and native header (from
//!   a scratch buffer), the row (straight from the primary region, under the op's read lease),
//!   and the terminator. `+OK` stored; nil (another process won the `NX`) and a key found by
//!   `EXISTS` are present, a success; `-OOM` and other errors fail the key only.
//! - **Load** batch: `GET` for every key; a value of exactly header + row length is read
//!   header into scratch, payload straight into the row (under the op's write lease), then
//!   verified (namespace, key, length, CRC-32C). Nil is a miss; a value that fails verification,
//!   has the wrong length or type is corrupt: the key fails, and the value is deleted (`DEL`,
//!   pipelined after the batch).
//! - **Probe** batch: `EXISTS` for keys looked up and not in the index; answers go back to the
//!   tier through [`Shared::probe_results`].
//!
//! A connection that fails or times out (each read, write and connect is bounded by the
//! timeout) is dropped at once, with every key of the batch not finished yet failed: a late
//! reply can never be read as another request's. The node's circuit breaker counts the
//! failure; while it is open, batches for the node fail without touching the network.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};

use kvtier_core::{OffloadKey, Part};
use kvtier_fs::format::{decode_header, Header, HEADER_LEN};
use kvtier_fs::region::Lease;
use redis::ConnectionInfo;

use crate::breaker::now_ms;
use crate::config::RedisTierConfig;
use crate::conn::{self, Conn};
use crate::names::Names;
use crate::resp::{self, Reply, RespError};
use crate::stats::Counters;
use crate::topology::{Topology, REFRESH_INTERVAL};

/// How a key operation ended: the `u32` its part reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum KeyOutcome {
    /// Stored, or loaded and verified.
    Ok = 0,
    /// A store found the block already on the server.
    Present = 1,
    /// A load found no value.
    Missing = 2,
    /// A load found a value that failed verification (deleted).
    Corrupt = 3,
    /// The connection timed out (dropped).
    Timeout = 4,
    /// The connection could not be made or broke (dropped).
    Connection = 5,
    /// The server refused the command (an error reply other than the below).
    ServerError = 6,
    /// The server is out of memory under `noeviction` (`-OOM`).
    Oom = 7,
    /// The key's slot moved (`MOVED`/`ASK`, `CLUSTERDOWN`): the slot map is refreshed.
    Moved = 8,
    /// The node's circuit breaker is open: not tried.
    Breaker = 9,
    /// The namespace's config record does not match this run: the tier serves nothing.
    Namespace = 10,
    /// The part was dropped unreported (a worker died) or its code is unknown.
    Lost = 11,
}

impl KeyOutcome {
    const ALL: [KeyOutcome; 12] = [
        KeyOutcome::Ok,
        KeyOutcome::Present,
        KeyOutcome::Missing,
        KeyOutcome::Corrupt,
        KeyOutcome::Timeout,
        KeyOutcome::Connection,
        KeyOutcome::ServerError,
        KeyOutcome::Oom,
        KeyOutcome::Moved,
        KeyOutcome::Breaker,
        KeyOutcome::Namespace,
        KeyOutcome::Lost,
    ];

    /// The outcome a part's code stands for ([`Part::DROPPED`] is [`KeyOutcome::Lost`]).
    pub fn from_code(code: u32) -> KeyOutcome {
        KeyOutcome::ALL.get(code as usize).copied().unwrap_or(KeyOutcome::Lost)
    }

    /// Did the key succeed?
    pub fn is_ok(self) -> bool {
        matches!(self, KeyOutcome::Ok | KeyOutcome::Present)
    }
}

/// Whether the namespace's config record was checked.
pub(crate) const NS_UNKNOWN: u8 = 0;
pub(crate) const NS_OK: u8 = 1;
pub(crate) const NS_MISMATCH: u8 = 2;

/// What a batch does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Store,
    Load,
    Probe,
}

/// One key of a batch: its lease on the row and its job part (none for probes).
#[derive(Debug)]
pub(crate) struct Item {
    pub key: OffloadKey,
    pub lease: Option<Lease>,
    pub part: Option<Part>,
}

impl Item {
    /// Releases the row, then reports the part (so the row is free when the job is taken).
    fn finish(&mut self, outcome: KeyOutcome) {
        self.lease = None;
        if let Some(part) = self.part.take() {
            part.finish(outcome as u32);
        }
    }
}

/// A batch of key operations for one node of one topology.
#[derive(Debug)]
pub(crate) struct Task {
    pub kind: Kind,
    pub topo: Arc<Topology>,
    pub node: usize,
    pub items: Vec<Item>,
}

#[derive(Debug, Default)]
pub(crate) struct Queue {
    pub tasks: VecDeque<Task>,
    pub stop: bool,
}

/// What the tier shares with its workers.
#[derive(Debug)]
pub(crate) struct Shared {
    pub cfg: RedisTierConfig,
    pub names: Names,
    pub namespace: [u8; 12],
    pub config_key: String,
    pub config_json: String,
    pub row_bytes: usize,
    pub seeds: Vec<ConnectionInfo>,
    pub queue: Mutex<Queue>,
    pub work: Condvar,
    /// Batches finished (workers notify `done` after each).
    pub finished_tasks: Mutex<u64>,
    pub done: Condvar,
    pub topology: RwLock<Arc<Topology>>,
    pub refresh: AtomicBool,
    pub last_refresh: AtomicU64,
    pub namespace_state: AtomicU8,
    pub counters: Counters,
    /// Probe answers: (key, found).
    pub probe_results: Mutex<Vec<(OffloadKey, bool)>>,
}

impl Shared {
    pub fn push_tasks(&self, tasks: impl IntoIterator<Item = Task>) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let before = q.tasks.len();
        q.tasks.extend(tasks);
        let added = q.tasks.len() - before;
        drop(q);
        match added {
            0 => {}
            1 => self.work.notify_one(),
            _ => self.work.notify_all(),
        }
    }

    /// Asks the workers for a fresh slot map (cluster: a key moved or a node failed).
    pub fn request_refresh(&self) {
        self.refresh.store(true, Ordering::Release);
    }
}

/// How many queued batches a worker looks through for ones to merge into the batch it took.
const MERGE_SCAN: usize = 64;

/// Per-worker buffers, reused across batches.
struct Scratch {
    req: Vec<u8>,
    key: Vec<u8>,
    /// Per item of a store batch: RESP prefix + native header.
    heads: Vec<u8>,
    /// Offsets of each item's head in `heads`.
    head_at: Vec<(usize, usize)>,
    suffix: Vec<u8>,
    header: Box<[u8; HEADER_LEN]>,
    absent: Vec<usize>,
    corrupt: Vec<usize>,
}

/// The worker thread's loop: runs batches until the queue is stopped and empty.
pub(crate) fn run(shared: Arc<Shared>) {
    let mut conns: HashMap<String, Conn> = HashMap::new();
    let mut s = Scratch {
        req: Vec::new(),
        key: Vec::new(),
        heads: Vec::new(),
        head_at: Vec::new(),
        suffix: Vec::new(),
        header: Box::new([0u8; HEADER_LEN]),
        absent: Vec::new(),
        corrupt: Vec::new(),
    };
    loop {
        let task = {
            let mut q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some(mut task) = q.tasks.pop_front() {
                    // Batches of the same kind for the same node queued behind it (small jobs,
                    // probes) go out in the same pipeline, up to `pipeline` keys.
                    while task.items.len() < shared.cfg.pipeline {
                        let room = shared.cfg.pipeline - task.items.len();
                        let next = q.tasks.iter().take(MERGE_SCAN).position(|t| {
                            t.kind == task.kind
                                && t.node == task.node
                                && t.items.len() <= room
                                && Arc::ptr_eq(&t.topo, &task.topo)
                        });
                        let Some(i) = next else { break };
                        if let Some(t) = q.tasks.remove(i) {
                            task.items.extend(t.items);
                        }
                    }
                    break Some(task);
                }
                if q.stop {
                    break None;
                }
                q = shared.work.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        };
        let Some(task) = task else { return };
        maybe_refresh(&shared);
        run_task(&shared, &mut conns, &mut s, task);
        let mut n = shared.finished_tasks.lock().unwrap_or_else(|p| p.into_inner());
        *n += 1;
        drop(n);
        shared.done.notify_all();
    }
}

/// Refreshes the slot map if asked to and the last refresh is old enough.
fn maybe_refresh(shared: &Shared) {
    if !shared.refresh.load(Ordering::Acquire) {
        return;
    }
    let now = now_ms();
    let last = shared.last_refresh.load(Ordering::Relaxed);
    if now < last + REFRESH_INTERVAL.as_millis() as u64 {
        return;
    }
    if shared.last_refresh.compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed).is_err() {
        return;
    }
    shared.refresh.store(false, Ordering::Release);
    let old = Arc::clone(&shared.topology.read().unwrap_or_else(|p| p.into_inner()));
    match Topology::discover(&shared.seeds, Some(&old), &shared.cfg) {
        Ok(topo) => {
            shared.counters.refreshes.fetch_add(1, Ordering::Relaxed);
            *shared.topology.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(topo);
        }
        // Nobody answered: try again at the next failure.
        Err(_) => shared.request_refresh(),
    }
}

fn fail_all(shared: &Shared, task: &mut Task, outcome: KeyOutcome) {
    for item in &mut task.items {
        if item.part.is_some() {
            item.finish(outcome);
        }
    }
    if task.kind == Kind::Probe {
        report_probes(shared, task.items.iter().map(|i| (i.key, false)));
    }
}

fn report_probes(shared: &Shared, answers: impl Iterator<Item = (OffloadKey, bool)>) {
    let mut results = shared.probe_results.lock().unwrap_or_else(|p| p.into_inner());
    for (key, found) in answers {
        shared.counters.probes.fetch_add(1, Ordering::Relaxed);
        if found {
            shared.counters.probe_hits.fetch_add(1, Ordering::Relaxed);
        }
        results.push((key, found));
    }
}

/// Why a batch stopped early: the connection is unusable.
enum Broken {
    Timeout,
    Connection,
}

impl From<io::Error> for Broken {
    fn from(e: io::Error) -> Self {
        if conn::is_timeout(&e) {
            Broken::Timeout
        } else {
            Broken::Connection
        }
    }
}

impl From<RespError> for Broken {
    fn from(e: RespError) -> Self {
        match e {
            RespError::Io(e) => e.into(),
            RespError::Protocol(_) => Broken::Connection,
        }
    }
}

fn run_task(shared: &Shared, conns: &mut HashMap<String, Conn>, s: &mut Scratch, mut task: Task) {
    let c = &shared.counters;
    if shared.namespace_state.load(Ordering::Acquire) == NS_MISMATCH {
        return fail_all(shared, &mut task, KeyOutcome::Namespace);
    }
    let topo = Arc::clone(&task.topo);
    let Some(node) = topo.nodes.get(task.node) else {
        return fail_all(shared, &mut task, KeyOutcome::Moved);
    };
    if !node.breaker.allow() {
        c.fast_failed.fetch_add(task.items.len() as u64, Ordering::Relaxed);
        return fail_all(shared, &mut task, KeyOutcome::Breaker);
    }
    if !conns.contains_key(&node.name) {
        let connected = Conn::connect(&node.info, shared.cfg.client, shared.cfg.timeout).and_then(|mut con| {
            // The node holding the config record (re)writes and checks it on every new
            // connection: after a restart that lost it, it is there again.
            if topo.node_for(shared.config_key.as_bytes()) == Some(task.node) {
                check_record(shared, &mut con)?;
            }
            Ok(con)
        });
        match connected {
            Ok(con) => {
                c.connects.fetch_add(1, Ordering::Relaxed);
                conns.insert(node.name.clone(), con);
            }
            Err(e) => {
                let broken = Broken::from(e);
                count_broken(shared, &broken);
                node.breaker.failure();
                if topo.cluster {
                    shared.request_refresh();
                }
                let outcome = match broken {
                    Broken::Timeout => KeyOutcome::Timeout,
                    Broken::Connection => KeyOutcome::Connection,
                };
                if shared.namespace_state.load(Ordering::Acquire) == NS_MISMATCH {
                    return fail_all(shared, &mut task, KeyOutcome::Namespace);
                }
                return fail_all(shared, &mut task, outcome);
            }
        }
    }
    let Some(con) = conns.get_mut(&node.name) else { return fail_all(shared, &mut task, KeyOutcome::Lost) };
    let result = match task.kind {
        Kind::Store => store(shared, con, s, &mut task.items),
        Kind::Load => load(shared, con, s, &mut task.items),
        Kind::Probe => probe(shared, con, s, &task.items),
    };
    match result {
        Ok(()) => node.breaker.success(),
        Err(broken) => {
            // Whatever the connection still holds (late replies) goes with it.
            conns.remove(&node.name);
            count_broken(shared, &broken);
            node.breaker.failure();
            if topo.cluster {
                shared.request_refresh();
            }
            let outcome = match broken {
                Broken::Timeout => KeyOutcome::Timeout,
                Broken::Connection => KeyOutcome::Connection,
            };
            fail_all(shared, &mut task, outcome);
        }
    }
}

fn count_broken(shared: &Shared, broken: &Broken) {
    let counter = match broken {
        Broken::Timeout => &shared.counters.timeouts,
        Broken::Connection => &shared.counters.connection_errors,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Writes the namespace's config record if absent (`SET NX`) and compares what is there with
/// this run's. A mismatch marks the namespace unusable and is an error.
pub(crate) fn check_record(shared: &Shared, con: &mut Conn) -> io::Result<()> {
    let mut req = Vec::new();
    resp::put_command(&mut req, &[b"SET", shared.config_key.as_bytes(), shared.config_json.as_bytes(), b"NX"]);
    resp::put_command(&mut req, &[b"GET", shared.config_key.as_bytes()]);
    con.send(&[&req])?;
    // A refused SET (OOM under noeviction) leaves the record unwritten; the GET still tells.
    con.skip_reply().map_err(conn::resp_to_io)?;
    let text = match con.reply().map_err(conn::resp_to_io)? {
        Reply::Bulk(len) => con.bulk_vec(len, 1 << 20).map_err(conn::resp_to_io)?,
        // Evicted or refused: nothing to compare with yet.
        Reply::Nil | Reply::Error(_) => return Ok(()),
        other => return Err(io::Error::new(io::ErrorKind::InvalidData, format!("GET config: {other:?}"))),
    };
    let origin = std::path::PathBuf::from(&shared.config_key);
    match kvtier_fs::namespace::compare_config(&origin, &text, &shared.cfg.effective_run_config()) {
        Ok(()) => {
            shared.namespace_state.store(NS_OK, Ordering::Release);
            Ok(())
        }
        Err(e) => {
            shared.namespace_state.store(NS_MISMATCH, Ordering::Release);
            Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
        }
    }
}

/// The outcome of an error reply to a data command.
fn error_outcome(shared: &Shared, text: &str) -> KeyOutcome {
    let c = &shared.counters;
    if text.starts_with("OOM") {
        c.oom.fetch_add(1, Ordering::Relaxed);
        KeyOutcome::Oom
    } else if text.starts_with("MOVED") || text.starts_with("ASK") || text.starts_with("CLUSTERDOWN") {
        shared.request_refresh();
        c.moved.fetch_add(1, Ordering::Relaxed);
        KeyOutcome::Moved
    } else {
        c.server_errors.fetch_add(1, Ordering::Relaxed);
        KeyOutcome::ServerError
    }
}

fn store(shared: &Shared, con: &mut Conn, s: &mut Scratch, items: &mut [Item]) -> Result<(), Broken> {
    let c = &shared.counters;
    s.req.clear();
    for item in items.iter() {
        shared.names.block_key(&item.key, &mut s.key);
        resp::put_command(&mut s.req, &[b"EXISTS", &s.key]);
    }
    con.send(&[&s.req])?;
    s.absent.clear();
    for (i, item) in items.iter_mut().enumerate() {
        match con.skip_reply()? {
            Reply::Int(0) => s.absent.push(i),
            Reply::Int(_) => {
                c.present.fetch_add(1, Ordering::Relaxed);
                item.finish(KeyOutcome::Present);
            }
            Reply::Error(e) => {
                let outcome = error_outcome(shared, &e);
                item.finish(outcome);
            }
            _ => return Err(Broken::Connection),
        }
    }
    if s.absent.is_empty() {
        return Ok(());
    }
    // SET key value NX [PX ttl]: the value is the native header and the row.
    let value_len = (HEADER_LEN + shared.row_bytes) as u64;
    s.suffix.clear();
    s.suffix.extend_from_slice(resp::CRLF);
    resp::put_bulk(&mut s.suffix, b"NX");
    let ttl = shared.cfg.ttl.map(|t| t.as_millis().to_string());
    if let Some(ms) = &ttl {
        resp::put_bulk(&mut s.suffix, b"PX");
        resp::put_bulk(&mut s.suffix, ms.as_bytes());
    }
    s.heads.clear();
    s.head_at.clear();
    for &i in &s.absent {
        let item = &items[i];
        let start = s.heads.len();
        resp::put_array(&mut s.heads, if ttl.is_some() { 6 } else { 4 });
        resp::put_bulk(&mut s.heads, b"SET");
        shared.names.block_key(&item.key, &mut s.key);
        resp::put_bulk(&mut s.heads, &s.key);
        resp::put_bulk_len(&mut s.heads, value_len);
        let row = item.lease.as_ref().map_or(&[][..], |l| l.block());
        Header::for_payload(&shared.namespace, &item.key, row).encode(&mut s.header);
        s.heads.extend_from_slice(&s.header[..]);
        s.head_at.push((start, s.heads.len()));
    }
    {
        let mut parts: Vec<&[u8]> = Vec::with_capacity(s.absent.len() * 3);
        for (&i, &(a, b)) in s.absent.iter().zip(&s.head_at) {
            parts.push(&s.heads[a..b]);
            parts.push(items[i].lease.as_ref().map_or(&[][..], |l| l.block()));
            parts.push(&s.suffix);
        }
        con.send(&parts)?;
    }
    for &i in &s.absent {
        let outcome = match con.skip_reply()? {
            Reply::Simple(_) => {
                c.stored.fetch_add(1, Ordering::Relaxed);
                c.bytes_stored.fetch_add(shared.row_bytes as u64, Ordering::Relaxed);
                KeyOutcome::Ok
            }
            // `NX` lost: another process stored the block meanwhile.
            Reply::Nil => {
                c.present.fetch_add(1, Ordering::Relaxed);
                KeyOutcome::Present
            }
            Reply::Error(e) => error_outcome(shared, &e),
            _ => return Err(Broken::Connection),
        };
        items[i].finish(outcome);
    }
    Ok(())
}

fn load(shared: &Shared, con: &mut Conn, s: &mut Scratch, items: &mut [Item]) -> Result<(), Broken> {
    let c = &shared.counters;
    s.req.clear();
    for item in items.iter() {
        shared.names.block_key(&item.key, &mut s.key);
        resp::put_command(&mut s.req, &[b"GET", &s.key]);
    }
    con.send(&[&s.req])?;
    s.corrupt.clear();
    let want = (HEADER_LEN + shared.row_bytes) as u64;
    for (i, item) in items.iter_mut().enumerate() {
        let outcome = match con.reply()? {
            Reply::Nil => {
                c.missing.fetch_add(1, Ordering::Relaxed);
                KeyOutcome::Missing
            }
            Reply::Bulk(len) if len == want => {
                con.read_into(&mut s.header[..])?;
                let row = item.lease.as_mut().and_then(|l| l.as_mut_slice()).map(|r| &mut r[..shared.row_bytes]);
                let Some(row) = row else {
                    // A load without a write lease cannot happen; read the payload away.
                    con.end_bulk()?;
                    item.finish(KeyOutcome::Lost);
                    continue;
                };
                con.read_into(row)?;
                con.end_bulk()?;
                let verified = decode_header(&s.header[..]).and_then(|h| h.check(&shared.namespace, &item.key, row));
                match verified {
                    Ok(()) => {
                        c.loaded.fetch_add(1, Ordering::Relaxed);
                        c.bytes_loaded.fetch_add(shared.row_bytes as u64, Ordering::Relaxed);
                        KeyOutcome::Ok
                    }
                    Err(_) => KeyOutcome::Corrupt,
                }
            }
            Reply::Bulk(_) => {
                con.end_bulk()?;
                KeyOutcome::Corrupt
            }
            // A value of another type at the key (WRONGTYPE) is foreign: it goes too.
            Reply::Error(e) if e.starts_with("WRONGTYPE") => KeyOutcome::Corrupt,
            Reply::Error(e) => error_outcome(shared, &e),
            _ => return Err(Broken::Connection),
        };
        if outcome == KeyOutcome::Corrupt {
            c.corrupt.fetch_add(1, Ordering::Relaxed);
            s.corrupt.push(i);
        }
        item.finish(outcome);
    }
    if s.corrupt.is_empty() {
        return Ok(());
    }
    s.req.clear();
    for &i in &s.corrupt {
        shared.names.block_key(&items[i].key, &mut s.key);
        resp::put_command(&mut s.req, &[b"DEL", &s.key]);
    }
    con.send(&[&s.req])?;
    for _ in 0..s.corrupt.len() {
        if let Reply::Int(n) = con.skip_reply()? {
            c.deleted.fetch_add(n.max(0) as u64, Ordering::Relaxed);
        }
    }
    Ok(())
}

fn probe(shared: &Shared, con: &mut Conn, s: &mut Scratch, items: &[Item]) -> Result<(), Broken> {
    s.req.clear();
    for item in items {
        shared.names.block_key(&item.key, &mut s.key);
        resp::put_command(&mut s.req, &[b"EXISTS", &s.key]);
    }
    con.send(&[&s.req])?;
    let mut answers = Vec::with_capacity(items.len());
    for item in items {
        let found = match con.skip_reply()? {
            Reply::Int(n) => n > 0,
            Reply::Error(e) => {
                error_outcome(shared, &e);
                false
            }
            _ => return Err(Broken::Connection),
        };
        answers.push((item.key, found));
    }
    report_probes(shared, answers.into_iter());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_codes_round_trip_and_unknown_codes_are_lost() {
        for outcome in KeyOutcome::ALL {
            assert_eq!(KeyOutcome::from_code(outcome as u32), outcome);
        }
        assert_eq!(KeyOutcome::from_code(Part::DROPPED), KeyOutcome::Lost);
        assert_eq!(KeyOutcome::from_code(12), KeyOutcome::Lost);
        let ok: Vec<bool> = KeyOutcome::ALL.iter().map(|o| o.is_ok()).collect();
        assert_eq!(ok.iter().filter(|&&b| b).count(), 2, "only Ok and Present succeed");
    }
}

//! Which node holds which key: one node for a standalone server, the slot map of a cluster.
//!
//! Discovery asks a seed (or any known node) `CLUSTER SLOTS` through the `redis` crate (a
//! control command: its parser and its handshake, TLS included). A server with cluster
//! support disabled is standalone: every slot is its. The map is refreshed by a worker after a
//! `MOVED`/`ASK` reply or a failed node (at most once per [`REFRESH_INTERVAL`]); keys routed by
//! an old map fail (a miss, a dropped store) rather than wait. A node keeps its circuit breaker
//! across refreshes (nodes are named `host:port`).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, Value};

use crate::breaker::Breaker;
use crate::config::RedisTierConfig;
use crate::names::{slot, SLOTS};

/// Shortest time between two refreshes of the slot map.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// Slot owner value of a slot no node serves.
const UNASSIGNED: u16 = u16::MAX;

/// One node.
#[derive(Debug)]
pub struct Node {
    /// How to connect to it (the seed's credentials and TLS settings, its address).
    pub info: ConnectionInfo,
    /// `host:port` (or the socket path).
    pub name: String,
    /// Its circuit breaker.
    pub breaker: Arc<Breaker>,
}

/// The nodes and who serves each slot.
#[derive(Debug)]
pub struct Topology {
    /// The nodes (masters).
    pub nodes: Vec<Node>,
    /// Per slot, the index of its node, or [`UNASSIGNED`].
    slots: Box<[u16]>,
    /// Whether the server is a cluster.
    pub cluster: bool,
}

fn addr_name(addr: &ConnectionAddr) -> String {
    match addr {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => format!("{host}:{port}"),
        ConnectionAddr::Unix(path) => path.display().to_string(),
    }
}

fn with_host(seed: &ConnectionInfo, host: &str, port: u16) -> ConnectionInfo {
    let addr = match &seed.addr {
        ConnectionAddr::TcpTls { insecure, tls_params, .. } => {
            ConnectionAddr::TcpTls { host: host.to_owned(), port, insecure: *insecure, tls_params: tls_params.clone() }
        }
        _ => ConnectionAddr::Tcp(host.to_owned(), port),
    };
    ConnectionInfo { addr, redis: seed.redis.clone() }
}

impl Topology {
    /// One standalone node: every slot is its.
    pub fn standalone(info: ConnectionInfo, breaker: Arc<Breaker>) -> Topology {
        let name = addr_name(&info.addr);
        Topology {
            nodes: vec![Node { info, name, breaker }],
            slots: vec![0u16; SLOTS].into_boxed_slice(),
            cluster: false,
        }
    }

    /// The node serving `block_key`, if any.
    pub fn node_for(&self, block_key: &[u8]) -> Option<usize> {
        if !self.cluster {
            return Some(0);
        }
        let owner = self.slots[usize::from(slot(block_key))];
        (owner != UNASSIGNED).then_some(usize::from(owner))
    }

    /// Asks each of `seeds` in turn (then the nodes of `old`) for the slot map; the first
    /// answer wins. Breakers of nodes already known are kept.
    pub fn discover(seeds: &[ConnectionInfo], old: Option<&Topology>, cfg: &RedisTierConfig) -> io::Result<Topology> {
        let breaker = |name: &str| {
            old.and_then(|t| t.nodes.iter().find(|n| n.name == name))
                .map(|n| Arc::clone(&n.breaker))
                .unwrap_or_else(|| Arc::new(Breaker::new(cfg.breaker_threshold, cfg.backoff_min, cfg.backoff_max)))
        };
        let mut candidates: Vec<ConnectionInfo> = Vec::new();
        if let Some(old) = old.filter(|t| t.cluster) {
            candidates.extend(old.nodes.iter().filter(|n| !n.breaker.is_open()).map(|n| n.info.clone()));
        }
        candidates.extend(seeds.iter().cloned());
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no server URL");
        for seed in &candidates {
            match cluster_slots(seed, cfg.timeout) {
                Ok(None) => return Ok(Topology::standalone(seed.clone(), breaker(&addr_name(&seed.addr)))),
                Ok(Some(ranges)) => {
                    let mut nodes: Vec<Node> = Vec::new();
                    let mut slots = vec![UNASSIGNED; SLOTS].into_boxed_slice();
                    for (start, end, host, port) in ranges {
                        // An empty host means "the address you reached me at".
                        let host = if host.is_empty() {
                            match &seed.addr {
                                ConnectionAddr::Tcp(h, _) | ConnectionAddr::TcpTls { host: h, .. } => h.clone(),
                                ConnectionAddr::Unix(_) => continue,
                            }
                        } else {
                            host
                        };
                        let info = with_host(seed, &host, port);
                        let name = addr_name(&info.addr);
                        let index = match nodes.iter().position(|n| n.name == name) {
                            Some(i) => i,
                            None => {
                                let b = breaker(&name);
                                nodes.push(Node { info, name, breaker: b });
                                nodes.len() - 1
                            }
                        };
                        for s in start..=end.min(SLOTS - 1) {
                            slots[s] = index as u16;
                        }
                    }
                    if nodes.is_empty() {
                        last = io::Error::other("CLUSTER SLOTS named no node");
                        continue;
                    }
                    return Ok(Topology { nodes, slots, cluster: true });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

type Ranges = Vec<(usize, usize, String, u16)>;

/// `CLUSTER SLOTS` of `seed`: `None` for a server with cluster support disabled.
fn cluster_slots(seed: &ConnectionInfo, timeout: Duration) -> io::Result<Option<Ranges>> {
    let client = redis::Client::open(seed.clone()).map_err(io::Error::other)?;
    let mut con = client.get_connection_with_timeout(timeout).map_err(io::Error::other)?;
    con.set_read_timeout(Some(timeout)).map_err(io::Error::other)?;
    con.set_write_timeout(Some(timeout)).map_err(io::Error::other)?;
    let value: Value = match redis::cmd("CLUSTER").arg("SLOTS").query(&mut con) {
        Ok(v) => v,
        Err(e) if e.to_string().contains("cluster support disabled") => return Ok(None),
        Err(e) => return Err(io::Error::other(e)),
    };
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed CLUSTER SLOTS reply");
    let Value::Array(entries) = value else { return Err(bad()) };
    let mut ranges = Vec::new();
    for entry in entries {
        let Value::Array(fields) = entry else { return Err(bad()) };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            return Err(bad());
        };
        let host = match master.first() {
            Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
            Some(Value::SimpleString(h)) => h.clone(),
            _ => return Err(bad()),
        };
        let Some(Value::Int(port)) = master.get(1) else { return Err(bad()) };
        let (Ok(start), Ok(end), Ok(port)) = (usize::try_from(*start), usize::try_from(*end), u16::try_from(*port))
        else {
            return Err(bad());
        };
        ranges.push((start, end, host, port));
    }
    Ok(Some(ranges))
}

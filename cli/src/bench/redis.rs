//! `kvtier bench redis`: the Redis tier against the server's own ceiling and against a Python
//! peer doing what LMCache's Redis connector does, measured in the same run on the same
//! server (PERFORMANCE.md: "remote tier (Redis) >= 0.8 x redis-benchmark SET/GET of the same
//! value size, same run; >= 2 x a redis-py peer").
//!
//! For each block size, in A B B A order (ceiling, kvtier thin, kvtier crate, peer, peer,
//! kvtier crate, kvtier thin, ceiling), each side's best and spread reported:
//!
//! 1. **ceiling**: `redis-benchmark -t set` then `-t get`, `-d SIZE -c C -P P` (C = the tier's
//!    connections; P = 1, 4, 16 and 64, up to the tier's pipeline depth, the best counting:
//!    redis-benchmark shifts a whole pipeline's buffer after each partial write or read, so
//!    deep pipelines of large values make it its own bottleneck): C clients of a C program,
//!    `SET`s then `GET`s of one key of the block size, the server's best case (one value's
//!    memory reused, every `GET` a hit on a hot value), an upper bound for new blocks. (With
//!    `-r`, random keys, redis-benchmark also rewrites its buffer per request: no ceiling.)
//! 2. **kvtier**: `--blocks` blocks stored, then loaded back, through the real [`RedisTier`]
//!    (jobs of `--job-blocks` blocks, all submitted, then waited for): `EXISTS` then `SET NX`
//!    of header + row, `GET` into the row and verification; with the thin codec (`thin`) and
//!    with the `redis` crate's client (`crate`, which copies each loaded value);
//! 3. **peer**: `cli/bench/redis_peer.py` (redis-py, one key per block, pipelined; see
//!    `cli/bench/README.md`), same blocks and connections, pipelines as deep as the tier's.
//!
//! Throughput counts block bytes (kvtier's 4 KiB header, and the peer's metadata, are extra
//! bytes each side pays for). **CPU** is user + system CPU-seconds per GB of the client
//! process (`getrusage`: for kvtier this process, worker threads included; for
//! `redis-benchmark` the child; the peer measures itself), and of the server (`INFO cpu`
//! before and after), shown apart.
//!
//! Before the rounds of a block size, one unmeasured kvtier round warms the server's memory,
//! so the side that runs first does not pay a fresh server's page faults.
//!
//! Without `--url` the benchmark starts its own `redis-server` on a free port of 127.0.0.1
//! (`--save ''`, no memory bound) and stops it by pid at the end; with `--url` it uses that
//! server (standalone) and deletes the keys it wrote.

use std::error::Error;
use std::io::{self, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvtier_core::{Completions, Job, JobId, OffloadKey, ReqContext, SecondaryTier, SlotId};
use kvtier_fs::namespace::RunConfig;
use kvtier_fs::region::{Access, PrimaryRegion};
use kvtier_redis::resp::{self, Reply};
use kvtier_redis::{ClientKind, RedisTier, RedisTierConfig};
use serde::Serialize;

use crate::args::parse_size;
use crate::cputime::{rusage_children_cpu, rusage_cpu};

type BoxError = Box<dyn Error>;

/// The block sizes measured by default.
pub const DEFAULT_BLOCK_SIZES: &str = "64K,256K,1M,2M";
/// Block bytes per phase when `--blocks` is not given.
pub const DEFAULT_PHASE_BYTES: u64 = 256 << 20;
/// The redis-py release the peer runs on (installed in a cached virtual environment).
pub const REDIS_PY: &str = "8.1.0";

/// Arguments of `kvtier bench redis`.
#[derive(Debug, Clone, clap::Args)]
pub struct RedisArgs {
    /// A standalone server to measure on (`redis://host:port`). Default: a redis-server this
    /// run starts on a free port of 127.0.0.1 and stops at the end.
    #[arg(long)]
    pub url: Option<String>,
    /// Block sizes, comma separated; K, M, G are binary.
    #[arg(long, value_delimiter = ',', value_parser = parse_size, default_value = DEFAULT_BLOCK_SIZES)]
    pub block_size: Vec<u64>,
    /// Blocks per phase. Default: 256 MiB worth of each block size.
    #[arg(long)]
    pub blocks: Option<u64>,
    /// Connections (kvtier's worker threads, redis-benchmark's clients, the peer's threads).
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
    /// Blocks per job (the engine's store and load jobs; the peer's pipelines).
    #[arg(long, default_value_t = 16)]
    pub job_blocks: usize,
    /// Keys per pipelined batch: the tier's (it merges queued jobs up to it), the peer's, and
    /// the deepest `-P` the ceiling tries.
    #[arg(long, default_value_t = 64)]
    pub pipeline: usize,
    /// kvtier clients to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "thin,crate",
          value_parser = clap::builder::PossibleValuesParser::new(["thin", "crate"]))]
    pub client: Vec<String>,
    /// Do not run the Python peer.
    #[arg(long)]
    pub no_peer: bool,
    /// The Python to run the peer with (it needs redis-py). Default: a virtual environment
    /// at `$KVTIER_CACHE/redis-py-{REDIS_PY}` (`$KVTIER_CACHE` defaults to
    /// `$HOME/.cache/kvtier`), created on first use with `pip install redis==REDIS_PY`.
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Print one JSON object instead of the table (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
}

/// Best and spread of one figure over the rounds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Figure {
    /// Best value.
    pub best: f64,
    /// Worst value.
    pub worst: f64,
}

impl Figure {
    fn add(&mut self, v: f64) {
        if self.best == 0.0 && self.worst == 0.0 {
            *self = Figure { best: v, worst: v };
        } else {
            self.best = self.best.max(v);
            self.worst = self.worst.min(v);
        }
    }
}

/// One side's figures at one block size.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Side {
    /// Store (SET) GB/s of block bytes.
    pub store_gbps: Figure,
    /// Load (GET) GB/s of block bytes.
    pub load_gbps: Figure,
    /// Client CPU-seconds per GB stored (best round's).
    pub store_cpu_s_per_gb: f64,
    /// Client CPU-seconds per GB loaded (best round's).
    pub load_cpu_s_per_gb: f64,
    /// Server CPU-seconds per GB moved, both directions (best round's).
    pub server_cpu_s_per_gb: f64,
}

impl Side {
    fn add(&mut self, m: &Measured) {
        if m.store_gbps >= self.store_gbps.best {
            self.store_cpu_s_per_gb = m.store_cpu;
        }
        if m.load_gbps >= self.load_gbps.best {
            self.load_cpu_s_per_gb = m.load_cpu;
        }
        if self.server_cpu_s_per_gb == 0.0 || m.server_cpu < self.server_cpu_s_per_gb {
            self.server_cpu_s_per_gb = m.server_cpu;
        }
        self.store_gbps.add(m.store_gbps);
        self.load_gbps.add(m.load_gbps);
    }
}

/// One block size's results.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Block bytes.
    pub block_bytes: u64,
    /// Blocks per phase.
    pub blocks: u64,
    /// redis-benchmark SET/GET.
    pub ceiling: Side,
    /// kvtier, per client (`thin`, `crate`).
    pub kvtier: Vec<(String, Side)>,
    /// The redis-py peer.
    pub peer: Option<Side>,
}

struct Measured {
    store_gbps: f64,
    load_gbps: f64,
    store_cpu: f64,
    load_cpu: f64,
    server_cpu: f64,
}

/// A redis-server this run started, stopped by pid on drop.
struct OwnServer {
    child: Child,
    dir: PathBuf,
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_server() -> Result<(OwnServer, u16), BoxError> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let dir = std::env::temp_dir().join(format!("kvtier-bench-redis.{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            format!("cannot start redis-server ({e}): install it (apt-get install redis-server) or give --url")
        })?;
    let server = OwnServer { child, dir };
    let start = Instant::now();
    while info_cpu(port).is_err() {
        if start.elapsed() > Duration::from_secs(10) {
            return Err("the redis-server this run started does not answer".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((server, port))
}

/// One command on a fresh connection; the reply's bulk payload if any.
fn command(port: u16, args: &[&[u8]]) -> io::Result<(Reply, Vec<u8>)> {
    let info: redis::ConnectionInfo =
        format!("redis://127.0.0.1:{port}").parse().map_err(|e: redis::RedisError| io::Error::other(e.to_string()))?;
    let mut con = kvtier_redis::conn::Conn::connect(&info, ClientKind::Thin, Duration::from_secs(10))?;
    let mut req = Vec::new();
    resp::put_command(&mut req, args);
    con.send(&[&req])?;
    let reply = con.reply().map_err(kvtier_redis::conn::resp_to_io)?;
    let body = match reply {
        Reply::Bulk(n) => con.bulk_vec(n, 1 << 20).map_err(kvtier_redis::conn::resp_to_io)?,
        _ => Vec::new(),
    };
    Ok((reply, body))
}

/// The server's `used_cpu_user + used_cpu_sys`.
fn info_cpu(port: u16) -> io::Result<f64> {
    let (_, text) = command(port, &[b"INFO", b"cpu"])?;
    let text = String::from_utf8_lossy(&text);
    let field = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse::<f64>().ok()).unwrap_or(0.0)
    };
    if !text.contains("used_cpu_sys:") {
        return Err(io::Error::other("INFO cpu has no used_cpu_sys"));
    }
    Ok(field("used_cpu_user:") + field("used_cpu_sys:"))
}

/// Pipeline depths the ceiling tries: redis-benchmark keeps a whole pipeline's bytes in one
/// buffer it shifts after every partial write or read, so deep pipelines of large values make
/// it, not the server, the bottleneck; the best depth is the ceiling.
const CEILING_DEPTHS: [usize; 4] = [1, 4, 16, 64];

fn ceiling(port: u16, bs: u64, n: u64, args: &RedisArgs) -> Result<Measured, BoxError> {
    let requests = n.max(256);
    let gb = (requests * bs) as f64 / 1e9;
    // SETs then GETs of one key of the block size (redis-benchmark's key name without `-r`):
    // the server's best case (one value's memory reused, every GET a hit on a hot value), so
    // an upper bound for kvtier's new blocks. Each direction's best depth counts, with its CPU.
    let mut best = Measured { store_gbps: 0.0, load_gbps: 0.0, store_cpu: 0.0, load_cpu: 0.0, server_cpu: 0.0 };
    let (mut set_srv, mut get_srv) = (0.0, 0.0);
    for depth in CEILING_DEPTHS.into_iter().filter(|&d| d <= args.pipeline.max(1)) {
        let (set, set_cpu, srv) = redis_benchmark(port, "set", bs, requests, depth, args)?;
        if set * bs as f64 / 1e9 > best.store_gbps {
            (best.store_gbps, best.store_cpu, set_srv) = (set * bs as f64 / 1e9, set_cpu / gb, srv / gb);
        }
        let (get, get_cpu, srv) = redis_benchmark(port, "get", bs, requests, depth, args)?;
        if get * bs as f64 / 1e9 > best.load_gbps {
            (best.load_gbps, best.load_cpu, get_srv) = (get * bs as f64 / 1e9, get_cpu / gb, srv / gb);
        }
    }
    command(port, &[b"DEL", b"key:__rand_int__"])?;
    best.server_cpu = (set_srv + get_srv) / 2.0;
    Ok(best)
}

/// One `redis-benchmark` test: requests per second, client and server CPU-seconds.
fn redis_benchmark(
    port: u16,
    test: &str,
    bs: u64,
    requests: u64,
    depth: usize,
    args: &RedisArgs,
) -> Result<(f64, f64, f64), BoxError> {
    let (cpu0, srv0) = (rusage_children_cpu(), info_cpu(port)?);
    let mut cmd = Command::new("redis-benchmark");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", test, "--csv"])
        .args(["-d", &bs.to_string(), "-n", &requests.to_string()])
        .args(["-c", &args.connections.to_string(), "-P", &depth.to_string()]);
    let out = cmd
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run redis-benchmark ({e}): apt-get install redis-tools"))?;
    let client_cpu = rusage_children_cpu() - cpu0;
    let server_cpu = info_cpu(port)? - srv0;
    let text = String::from_utf8_lossy(&out.stdout);
    let name = test.to_ascii_uppercase();
    let rps = text
        .lines()
        .find(|l| l.starts_with(&format!("\"{name}\"")))
        .and_then(|l| l.split(',').nth(1))
        .and_then(|v| v.trim_matches('"').parse::<f64>().ok())
        .ok_or_else(|| format!("cannot read redis-benchmark's output: {text}"))?;
    Ok((rps, client_cpu, server_cpu))
}

fn pattern_key(i: u64) -> OffloadKey {
    let mut hash = [0u8; 32];
    hash[..8].copy_from_slice(&i.to_be_bytes());
    hash[8..16].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    OffloadKey::new(&hash, 0).expect("a 36-byte key")
}

fn fill_row(row: &mut [u8], i: u64) {
    let seed = i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes();
    for (j, chunk) in row.chunks_mut(8).enumerate() {
        let v = u64::from_le_bytes(seed) ^ j as u64;
        chunk.copy_from_slice(&v.to_le_bytes()[..chunk.len()]);
    }
}

fn kvtier(
    port: u16,
    url: &str,
    client: ClientKind,
    bs: u64,
    n: u64,
    round: u32,
    args: &RedisArgs,
) -> Result<Measured, BoxError> {
    let block = bs as usize;
    let region = Arc::new(PrimaryRegion::anonymous(n as usize, block)?);
    let run =
        RunConfig { model_name: format!("kvtier-bench/{}-{round}-{bs}", std::process::id()), ..RunConfig::default() };
    let mut cfg = RedisTierConfig::new(url, run);
    cfg.connections = args.connections;
    cfg.pipeline = args.pipeline;
    cfg.client = client;
    cfg.timeout = Duration::from_secs(5);
    let mut tier = RedisTier::open(&cfg, Arc::clone(&region))?;
    let keys: Vec<OffloadKey> = (0..n).map(pattern_key).collect();
    let slots: Vec<SlotId> = (0..n as u32).map(SlotId).collect();
    for i in 0..n {
        let mut lease = region.lease(SlotId(i as u32), Access::Write)?;
        fill_row(&mut lease.as_mut_slice().ok_or("write lease")?[..block], i);
    }
    let jobs = args.job_blocks.max(1);
    let run_phase = |tier: &mut RedisTier, store: bool| -> Result<(f64, f64, usize), BoxError> {
        let (cpu0, t0) = (rusage_cpu(), Instant::now());
        for (j, (ks, ss)) in keys.chunks(jobs).zip(slots.chunks(jobs)).enumerate() {
            let job = Job { id: JobId(j as u64), req: ReqContext::new(0), keys: ks, slots: ss };
            if store {
                tier.submit_store(job);
            } else {
                tier.submit_load(job);
            }
        }
        tier.wait_idle();
        let (secs, cpu) = (t0.elapsed().as_secs_f64(), rusage_cpu() - cpu0);
        let mut out = Completions::new();
        tier.poll_finished(&mut out);
        let ok = out.iter().filter(|r| r.success).count();
        Ok((secs, cpu, ok))
    };
    let srv0 = info_cpu(port)?;
    let (store_s, store_cpu, stored) = run_phase(&mut tier, true)?;
    for i in 0..n {
        region.lease(SlotId(i as u32), Access::Write)?.as_mut_slice().ok_or("write lease")?.fill(0);
    }
    let (load_s, load_cpu, loaded) = run_phase(&mut tier, false)?;
    let server_cpu = info_cpu(port)? - srv0;
    let n_jobs = keys.chunks(jobs).count();
    if stored != n_jobs || loaded != n_jobs {
        return Err(format!("kvtier: {stored} of {n_jobs} store jobs and {loaded} load jobs succeeded").into());
    }
    let mut want = vec![0u8; block];
    for i in (0..n).step_by((n as usize / 16).max(1)) {
        fill_row(&mut want, i);
        if region.lease(SlotId(i as u32), Access::Read)?.block() != &want[..] {
            return Err(format!("kvtier: block {i} loaded wrong").into());
        }
    }
    // Delete what this round wrote (the server may not be ours).
    let names = tier.names().clone();
    drop(tier);
    for chunk in keys.chunks(256) {
        let names: Vec<String> = chunk.iter().map(|k| names.block_key_string(k)).collect();
        let mut args: Vec<&[u8]> = vec![b"DEL"];
        args.extend(names.iter().map(|s| s.as_bytes()));
        command(port, &args)?;
    }
    command(port, &[b"DEL", names.config_key().as_bytes()])?;
    let gb = (n * bs) as f64 / 1e9;
    Ok(Measured {
        store_gbps: gb / store_s,
        load_gbps: gb / load_s,
        store_cpu: store_cpu / gb,
        load_cpu: load_cpu / gb,
        server_cpu: server_cpu / (2.0 * gb),
    })
}

/// The peer's Python: `--python`, or the cached virtual environment (created on first use).
fn peer_python(args: &RedisArgs) -> Result<PathBuf, BoxError> {
    if let Some(p) = &args.python {
        return Ok(p.clone());
    }
    let cache = std::env::var_os("KVTIER_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache").join("kvtier")))
        .ok_or("no $KVTIER_CACHE nor $HOME: give --python")?;
    let venv = cache.join(format!("redis-py-{REDIS_PY}"));
    let python = venv.join("bin").join("python");
    let ok = |p: &Path| {
        Command::new(p).args(["-c", "import redis"]).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    };
    if ok(&python) {
        return Ok(python);
    }
    eprintln!("kvtier bench redis: creating {} (redis-py {REDIS_PY}, once)", venv.display());
    let _ = std::fs::remove_dir_all(&venv);
    std::fs::create_dir_all(&cache)?;
    let status = Command::new("python3").arg("-m").arg("venv").arg(&venv).status()?;
    if !status.success() {
        return Err("python3 -m venv failed".into());
    }
    let pip = venv.join("bin").join("pip");
    let status = Command::new(&pip).args(["install", "--quiet", &format!("redis=={REDIS_PY}")]).status()?;
    if !status.success() || !ok(&python) {
        return Err(format!("pip install redis=={REDIS_PY} failed").into());
    }
    Ok(python)
}

fn peer(python: &Path, port: u16, bs: u64, n: u64, args: &RedisArgs) -> Result<Measured, BoxError> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/redis_peer.py");
    let srv0 = info_cpu(port)?;
    let out = Command::new(python)
        .arg(&script)
        .args(["--port", &port.to_string(), "--block-bytes", &bs.to_string(), "--blocks", &n.to_string()])
        // The peer pipelines as deep as the tier does (a stronger peer than LMCache's own).
        .args(["--job-blocks", &args.pipeline.to_string(), "--connections", &args.connections.to_string()])
        .stderr(Stdio::inherit())
        .output()?;
    let server_cpu = info_cpu(port)? - srv0;
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value =
        serde_json::from_str(text.trim()).map_err(|e| format!("peer output is not JSON ({e}): {text}"))?;
    if !out.status.success() {
        return Err(format!("the peer failed ({}): {text}", out.status).into());
    }
    let f = |name: &str| v.get(name).and_then(serde_json::Value::as_f64).ok_or(format!("peer output lacks {name}"));
    let gb = (n * bs) as f64 / 1e9;
    Ok(Measured {
        store_gbps: f("store_gbps")?,
        load_gbps: f("load_gbps")?,
        store_cpu: f("store_cpu_s_per_gb")?,
        load_cpu: f("load_cpu_s_per_gb")?,
        server_cpu: server_cpu / (2.0 * gb),
    })
}

fn size_name(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{}M", bytes >> 20)
    } else if bytes % 1024 == 0 {
        format!("{}K", bytes >> 10)
    } else {
        bytes.to_string()
    }
}

/// Runs `kvtier bench redis`.
pub fn run(args: &RedisArgs) -> Result<(), BoxError> {
    if args.block_size.is_empty()
        || args.connections == 0
        || args.job_blocks == 0
        || args.pipeline == 0
        || args.blocks == Some(0)
    {
        return Err("--block-size, --connections, --job-blocks, --pipeline and --blocks must be at least 1".into());
    }
    let (_own, port, url) = match &args.url {
        Some(url) => {
            let info: redis::ConnectionInfo = url.parse().map_err(|e: redis::RedisError| e.to_string())?;
            let port = match &info.addr {
                redis::ConnectionAddr::Tcp(host, port) if host == "127.0.0.1" || host == "localhost" => *port,
                _ => return Err("--url must be redis://127.0.0.1:PORT (redis-benchmark runs against it too)".into()),
            };
            (None, port, url.clone())
        }
        None => {
            let (server, port) = start_server()?;
            (Some(server), port, format!("redis://127.0.0.1:{port}"))
        }
    };
    let clients: Vec<(String, ClientKind)> = ["thin", "crate"]
        .iter()
        .filter(|c| args.client.iter().any(|a| a == *c))
        .map(|c| (c.to_string(), if *c == "thin" { ClientKind::Thin } else { ClientKind::Crate }))
        .collect();
    let python = if args.no_peer {
        None
    } else {
        match peer_python(args) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("kvtier bench redis: warning: no peer ({e})");
                None
            }
        }
    };
    let mut rows = Vec::new();
    for &bs in &args.block_size {
        let n = args.blocks.unwrap_or((DEFAULT_PHASE_BYTES / bs).max(16));
        let label = size_name(bs);
        let mut row = Row {
            block_bytes: bs,
            blocks: n,
            ceiling: Side::default(),
            kvtier: clients.iter().map(|(name, _)| (name.clone(), Side::default())).collect(),
            peer: python.as_ref().map(|_| Side::default()),
        };
        let mut round = 0u32;
        let mut step = |what: &str, row: &mut Row| -> Result<(), BoxError> {
            round += 1;
            let m = match what {
                "ceiling" => ceiling(port, bs, n, args)?,
                "peer" => match &python {
                    Some(p) => peer(p, port, bs, n, args)?,
                    None => return Ok(()),
                },
                name => {
                    let kind = clients.iter().find(|(c, _)| c == name).map(|(_, k)| *k).ok_or("client")?;
                    kvtier(port, &url, kind, bs, n, round, args)?
                }
            };
            eprintln!(
                "kvtier bench redis: {label}: {what}: store {:.2} GB/s, load {:.2} GB/s; client CPU {:.3}/{:.3} s/GB, server {:.3} s/GB",
                m.store_gbps, m.load_gbps, m.store_cpu, m.load_cpu, m.server_cpu
            );
            let side = match what {
                "ceiling" => &mut row.ceiling,
                "peer" => row.peer.as_mut().ok_or("peer")?,
                name => &mut row.kvtier.iter_mut().find(|(c, _)| c == name).ok_or("client")?.1,
            };
            side.add(&m);
            Ok(())
        };
        // A warm-up (not counted): the server takes its memory for this size from the system
        // once, so no measured side pays the page faults of a fresh server.
        kvtier(port, &url, ClientKind::Thin, bs, n, 0, args)?;
        // A B B A: the ceiling around everything, kvtier's clients around the peer.
        let mut order: Vec<String> = vec!["ceiling".into()];
        order.extend(clients.iter().map(|(c, _)| c.clone()));
        order.push("peer".into());
        order.push("peer".into());
        order.extend(clients.iter().rev().map(|(c, _)| c.clone()));
        order.push("ceiling".into());
        for what in &order {
            step(what, &mut row)?;
        }
        rows.push(row);
    }
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &serde_json::json!({ "results": rows }))?;
        writeln!(out)?;
        return Ok(());
    }
    print_table(&mut out, &rows, args)?;
    Ok(())
}

fn print_table(out: &mut impl io::Write, rows: &[Row], args: &RedisArgs) -> io::Result<()> {
    writeln!(
        out,
        "kvtier bench redis: {} connections, jobs of {} blocks, pipelines of {}; best of 2 rounds (worst in brackets), GB/s of block bytes",
        args.connections, args.job_blocks, args.pipeline
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "| block | side | store GB/s | load GB/s | store/ceiling | load/ceiling | store/peer | load/peer | client CPU s/GB store, load | server CPU s/GB |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|---|---|---|")?;
    for row in rows {
        let name = size_name(row.block_bytes);
        let c = &row.ceiling;
        let fig = |f: &Figure| format!("{:.2} ({:.2})", f.best, f.worst);
        let line = |out: &mut dyn io::Write, side: &str, s: &Side, ratios: bool| -> io::Result<()> {
            let (rc, rp) = if ratios {
                let rc = format!(
                    "{:.2} | {:.2}",
                    s.store_gbps.best / c.store_gbps.best,
                    s.load_gbps.best / c.load_gbps.best
                );
                let rp = match &row.peer {
                    Some(p) => format!(
                        "{:.2} | {:.2}",
                        s.store_gbps.best / p.store_gbps.best,
                        s.load_gbps.best / p.load_gbps.best
                    ),
                    None => "- | -".into(),
                };
                (rc, rp)
            } else {
                ("- | -".into(), "- | -".into())
            };
            writeln!(
                out,
                "| {name} | {side} | {} | {} | {rc} | {rp} | {:.3}, {:.3} | {:.3} |",
                fig(&s.store_gbps),
                fig(&s.load_gbps),
                s.store_cpu_s_per_gb,
                s.load_cpu_s_per_gb,
                s.server_cpu_s_per_gb
            )
        };
        line(out, "redis-benchmark (ceiling)", c, false)?;
        for (client, side) in &row.kvtier {
            line(out, &format!("kvtier {client}"), side, true)?;
        }
        if let Some(p) = &row.peer {
            line(out, "redis-py peer", p, false)?;
        }
    }
    writeln!(out)?;
    writeln!(
        out,
        "Targets (PERFORMANCE.md): kvtier >= 0.8 x the ceiling at >= 256K, >= 2 x the redis-py peer. kvtier's store \
         includes an EXISTS round trip per batch and a 4 KiB header per value; the ceiling SETs and GETs one (hot) key."
    )
}

//! What the Redis tier's tests share: real `redis-server` processes each test starts on its own
//! free port (and stops by pid), a cache engine over a Redis tier, block patterns, and the
//! check that counts wrong blocks.
//!
//! Without `redis-server` on the machine, a test says so and passes, except in CI, where a
//! missing server fails the test: under `.ci/run` (which installs `redis-server`, starts one
//! and exports its URL as `KVTIER_REDIS_URL`) or wherever `CI=true`.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvtier_core::{
    AnyPolicy, EngineConfig, LookupResult, OffloadKey, PolicyKind, ReqContext, StorePlan, TieringEngine,
};
use kvtier_fs::namespace::RunConfig;
use kvtier_fs::region::{Access, PrimaryRegion};
use kvtier_redis::{RedisTier, RedisTierConfig};

/// Whether this is CI: `.ci/run` exported its server's URL, or `CI=true`.
pub fn in_ci() -> bool {
    std::env::var_os("KVTIER_REDIS_URL").is_some() || std::env::var("CI").as_deref() == Ok("true")
}

/// Is `redis-server` here? In CI its absence fails the test.
pub fn have_server() -> bool {
    let found = Command::new("redis-server").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(!in_ci(), "redis-server is missing in CI: .ci/run installs it (apt-get install redis-server)");
        eprintln!("redis-server not found: this test needs it (apt-get install redis-server); skipped outside CI");
    }
    found
}

/// A free TCP port on 127.0.0.1 (bound, then released for the server to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One `redis-server` this test started: stopped by its pid on drop (SIGKILL, then reaped).
pub struct Server {
    pub port: u16,
    pub dir: tempfile::TempDir,
    args: Vec<String>,
    child: Option<Child>,
    tls: bool,
}

impl Server {
    /// Starts `redis-server` on a free port of 127.0.0.1 with `--save ''` plus `extra`
    /// arguments, in its own directory, and waits until it answers PING.
    pub fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut args: Vec<String> = vec![
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--dir".into(),
            dir.path().display().to_string(),
            "--daemonize".into(),
            "no".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut server = Server { port, dir, args, child: None, tls: false };
        server.spawn();
        server
    }

    /// A server that speaks only TLS on its port (`--port 0 --tls-port`), with a certificate for
    /// 127.0.0.1 signed by a CA made by `openssl` (`{dir}/ca.pem`); clients are not asked for
    /// certificates.
    pub fn start_tls() -> Server {
        let dir = tempfile::tempdir().unwrap();
        // A CA, and a certificate for 127.0.0.1 it signs (rustls refuses a CA certificate
        // as the server's own).
        let d = dir.path();
        let (ca, ca_key, cert, key, csr, ext) = (
            d.join("ca.pem"),
            d.join("ca.key"),
            d.join("cert.pem"),
            d.join("key.pem"),
            d.join("server.csr"),
            d.join("ext"),
        );
        std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").unwrap();
        let openssl = |args: &[&std::ffi::OsStr]| {
            let ok = Command::new("openssl").args(args).stdout(Stdio::null()).stderr(Stdio::null()).status();
            assert!(ok.expect("openssl runs").success(), "openssl {args:?}");
        };
        let s = |t: &'static str| std::ffi::OsStr::new(t);
        openssl(
            &[s("req"), s("-x509"), s("-newkey"), s("rsa:2048"), s("-nodes"), s("-days"), s("1")]
                .into_iter()
                .chain([
                    s("-subj"),
                    s("/CN=kvtier-test-ca"),
                    s("-keyout"),
                    ca_key.as_os_str(),
                    s("-out"),
                    ca.as_os_str(),
                ])
                .collect::<Vec<_>>(),
        );
        openssl(
            &[s("req"), s("-newkey"), s("rsa:2048"), s("-nodes"), s("-subj"), s("/CN=127.0.0.1")]
                .into_iter()
                .chain([s("-keyout"), key.as_os_str(), s("-out"), csr.as_os_str()])
                .collect::<Vec<_>>(),
        );
        openssl(
            &[s("x509"), s("-req"), s("-in"), csr.as_os_str(), s("-CA"), ca.as_os_str(), s("-CAkey")]
                .into_iter()
                .chain([ca_key.as_os_str(), s("-CAcreateserial"), s("-days"), s("1"), s("-out"), cert.as_os_str()])
                .chain([s("-extfile"), ext.as_os_str()])
                .collect::<Vec<_>>(),
        );
        let port = free_port();
        let path = |p: &Path| p.display().to_string();
        let args = vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            path(&cert),
            "--tls-key-file".into(),
            path(&key),
            "--tls-ca-cert-file".into(),
            path(&ca),
            "--tls-auth-clients".into(),
            "no".into(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--dir".into(),
            path(dir.path()),
        ];
        let mut server = Server { port, dir, args, child: None, tls: true };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        if self.tls {
            // No plain PING on a TLS port: wait until it accepts connections.
            let start = Instant::now();
            while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                assert!(start.elapsed() < Duration::from_secs(10), "the TLS server did not come up");
                std::thread::sleep(Duration::from_millis(20));
            }
        } else {
            wait_ping(self.port, Duration::from_secs(10));
        }
    }

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's pid.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory (an append-only file is replayed).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Sends a signal to the server's pid.
    pub fn signal(&self, sig: i32) {
        // SAFETY: `kill` is called with the pid of a child this test spawned and has not reaped.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid());
    }

    /// Runs `redis-cli -p PORT args...` and returns its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A stopped server must be continued for SIGKILL to be reaped promptly.
            // SAFETY: the pid of our own unreaped child.
            unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
        }
        self.kill();
    }
}

/// `redis-cli -p port args...` (stdout).
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).output().expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `redis-cli -p port -x args...` with `value` as the last argument (binary safe, from stdin).
pub fn cli_set_raw(port: u16, key: &str, value: &[u8]) {
    use std::io::Write;
    let mut child = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "-x", "SET", key])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(value).unwrap();
    assert!(child.wait().unwrap().success());
}

/// Waits until a server on `port` answers PING.
pub fn wait_ping(port: u16, limit: Duration) {
    let start = Instant::now();
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let mut buf = [0u8; 64];
            // A server still loading its append-only file answers -LOADING; one that wants a
            // password answers -NOAUTH (it is up).
            let n = if s.write_all(b"PING\r\n").is_ok() { s.read(&mut buf).unwrap_or(0) } else { 0 };
            if buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH") {
                return;
            }
        }
        assert!(start.elapsed() < limit, "redis-server on port {port} did not answer PING");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub const REQ: ReqContext = ReqContext::new(1);

/// Key `i`: a 32-byte hash and group `i % 3`.
pub fn key(i: u64) -> OffloadKey {
    let mut hash = [0u8; 32];
    hash[..8].copy_from_slice(&i.to_be_bytes());
    hash[8..16].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
    OffloadKey::new(&hash, (i % 3) as u32).unwrap()
}

/// The bytes block `i` holds: distinct per block and per position.
pub fn pattern(i: u64, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i as usize * 131 + j * 7 + j / 251) as u8).collect()
}

/// A run config named after `model` (each test its own namespace on a shared server).
pub fn run_config(model: &str) -> RunConfig {
    RunConfig { model_name: model.into(), ..RunConfig::default() }
}

/// A tier config for `url` with a short timeout and backoff (tests exercise them).
pub fn tier_config(url: &str, model: &str) -> RedisTierConfig {
    let mut cfg = RedisTierConfig::new(url, run_config(model));
    cfg.timeout = Duration::from_millis(300);
    cfg.backoff_min = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(400);
    cfg
}

/// An engine with one Redis tier over `slots` rows of `block` bytes.
pub struct Cache {
    pub engine: TieringEngine<AnyPolicy>,
    pub region: Arc<PrimaryRegion>,
    pub block: usize,
    /// Blocks promoted whose bytes were not the stored ones (must stay 0).
    pub wrong: u64,
    /// Blocks promoted and checked.
    pub served: u64,
}

impl Cache {
    pub fn new(cfg: &RedisTierConfig, slots: u32, block: usize) -> Cache {
        let region = Arc::new(PrimaryRegion::anonymous(slots as usize, block).unwrap());
        let tier = RedisTier::open(cfg, Arc::clone(&region)).unwrap();
        let engine = TieringEngine::new(
            AnyPolicy::new(PolicyKind::Lru, slots),
            vec![Box::new(tier)],
            EngineConfig { promotion_deadline_steps: 0, events: false },
        );
        Cache { engine, region, block, wrong: 0, served: 0 }
    }

    pub fn tier(&mut self) -> &mut RedisTier {
        self.engine.tier_mut::<RedisTier>(0).unwrap()
    }

    /// Stores blocks `ids` (with their patterns) and waits for the tier's jobs.
    pub fn store(&mut self, ids: impl IntoIterator<Item = u64>) {
        let ids: Vec<u64> = ids.into_iter().collect();
        let slots = self.region.rows();
        for chunk in ids.chunks(slots) {
            self.store_chunk(chunk);
        }
    }

    fn store_chunk(&mut self, ids: &[u64]) {
        let keys: Vec<OffloadKey> = ids.iter().map(|&i| key(i)).collect();
        let mut plan = StorePlan::new();
        self.engine.prepare_store(&keys, REQ, &mut plan).unwrap();
        for (k, &slot) in plan.keys.iter().zip(&plan.slots) {
            let i = ids[keys.iter().position(|x| x == k).unwrap()];
            let mut lease = self.region.lease(slot, Access::Write).unwrap();
            lease.as_mut_slice().unwrap()[..self.block].copy_from_slice(&pattern(i, self.block));
        }
        self.engine.complete_store(&plan.keys, REQ, true).unwrap();
        self.engine.end_step();
        self.engine.drain();
        self.engine.end_step();
    }

    /// Evicts every block from the primary pool (by storing filler blocks far away).
    pub fn flush_primary(&mut self, filler_base: u64, slots: u64) {
        // Filler keys are stored in the primary only: the tier stores them too, which is fine.
        self.store(filler_base..filler_base + slots);
    }

    /// Looks block `i` up until it is ready or missed; checks its bytes when ready. Returns
    /// whether it was served.
    pub fn promote(&mut self, i: u64) -> bool {
        for _ in 0..50 {
            match self.engine.lookup(&key(i), REQ) {
                LookupResult::Ready => {
                    let (slot, _) = self.engine.primary().find(&key(i)).unwrap();
                    let bytes = self.region.lease(slot, Access::Read).unwrap().block().to_vec();
                    self.served += 1;
                    if bytes != pattern(i, self.block) {
                        self.wrong += 1;
                    }
                    return true;
                }
                LookupResult::Miss => return false,
                LookupResult::Pending | LookupResult::Retry => {
                    self.engine.end_step();
                    self.engine.drain();
                }
            }
        }
        panic!("block {i} never became ready nor missed");
    }
}

/// A scratch path for a test's files.
pub fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("kvtier-redis-{name}-{}", std::process::id()))
}

/// The directory of the test binary's crate.
pub fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The server a non-destructive test uses: the one `.ci/run` started (`KVTIER_REDIS_URL`), or
/// one of its own. `None` when there is no redis-server (outside CI).
pub fn shared_server() -> Option<(Option<Server>, String)> {
    if let Ok(url) = std::env::var("KVTIER_REDIS_URL") {
        // CI promised a server: one that does not answer fails the test.
        let port: u16 =
            url.rsplit(':').next().and_then(|p| p.trim_end_matches('/').parse().ok()).unwrap_or_else(|| {
                panic!("KVTIER_REDIS_URL={url}: expected redis://127.0.0.1:PORT, as .ci/run exports")
            });
        wait_ping(port, Duration::from_secs(5));
        return Some((None, url));
    }
    if !have_server() {
        return None;
    }
    let server = Server::start(&["--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru"]);
    let url = server.url();
    Some((Some(server), url))
}

/// A model name unique to this test and process: its own namespace on a shared server.
pub fn unique_model(test: &str) -> String {
    format!(
        "test/{test}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    )
}

/// One command to the server on `port` over a fresh connection, binary safe; the reply's bulk
/// payload (if any) comes back whole. For tests that play "another client".
pub fn raw(port: u16, args: &[&[u8]]) -> (kvtier_redis::resp::Reply, Vec<u8>) {
    use kvtier_redis::resp::{put_command, Reply, RespReader};
    use std::io::Write;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut req = Vec::new();
    put_command(&mut req, args);
    stream.write_all(&req).unwrap();
    let mut r = RespReader::new(stream);
    let reply = r.reply().unwrap();
    let body = match reply {
        Reply::Bulk(n) => r.bulk_vec(n, 1 << 30).unwrap(),
        _ => Vec::new(),
    };
    (reply, body)
}

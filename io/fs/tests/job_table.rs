//! The FS tier completes its jobs through the core's job table (the code `core/tests/loom_jobs.rs`
//! model-checks), not through a count of its own: every job it is given is a job of the table,
//! every op a part, and a job is reported once its parts were finished on another thread, even
//! while the executor's `poll` has not counted them yet. A job larger than the table's first
//! capacity grows it.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use kvtier_core::{Completions, Job, JobId, JobTableStats, OffloadKey, Part, ReqContext, SecondaryTier, SlotId};
use kvtier_fs::direct::DirectMode;
use kvtier_fs::namespace::RunConfig;
use kvtier_fs::{Batch, BatchFull, Executor, FileId, FileOp, FsTier, FsTierConfig, Full, Outcome, Wait};

/// An executor whose ops "succeed" on a thread of its own, in the order submitted, without
/// touching the disk: what matters here is where their reports go. Its `poll` counts finished
/// ops only when `counting` is set.
struct OffThread {
    tx: Option<mpsc::Sender<Part>>,
    worker: Option<JoinHandle<()>>,
    finished: Arc<AtomicUsize>,
    counting: Arc<AtomicBool>,
    in_flight: usize,
}

impl OffThread {
    fn new(counting: Arc<AtomicBool>) -> OffThread {
        let (tx, rx) = mpsc::channel::<Part>();
        let finished = Arc::new(AtomicUsize::new(0));
        let done = Arc::clone(&finished);
        let worker = std::thread::spawn(move || {
            for part in rx {
                part.finish(Outcome::Ok.code());
                done.fetch_add(1, Ordering::Release);
            }
        });
        OffThread { tx: Some(tx), worker: Some(worker), finished, counting, in_flight: 0 }
    }
}

impl Executor for OffThread {
    fn submit(&mut self, op: FileOp, part: Part) -> Result<(), Full> {
        match &self.tx {
            Some(tx) => {
                tx.send(part).expect("the worker runs");
                self.in_flight += 1;
                Ok(())
            }
            None => Err(Full { op, part }),
        }
    }

    fn submit_batch(&mut self, batch: Batch, parts: Vec<Part>) -> Result<(), BatchFull> {
        // The FS tier makes no batch.
        Err(BatchFull { batch, parts })
    }

    fn poll(&mut self, wait: Wait) -> std::io::Result<usize> {
        loop {
            let n = if self.counting.load(Ordering::Relaxed) { self.finished.swap(0, Ordering::Acquire) } else { 0 };
            if n > 0 || wait == Wait::No || self.in_flight == 0 {
                self.in_flight -= n;
                return Ok(n);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }

    fn open_file(&mut self, _path: &Path) -> std::io::Result<FileId> {
        Err(std::io::ErrorKind::Unsupported.into())
    }

    fn shutdown(&mut self) {
        self.tx = None;
        if let Some(worker) = self.worker.take() {
            worker.join().unwrap();
        }
        self.counting.store(true, Ordering::Relaxed);
    }

    fn name(&self) -> &'static str {
        "off-thread"
    }
}

fn key(i: u32) -> OffloadKey {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&i.to_le_bytes());
    OffloadKey::new(&h, 0).unwrap()
}

#[test]
fn jobs_complete_through_the_job_table() {
    let dir = tempfile::tempdir().unwrap();
    let run = RunConfig { model_name: "t/job-table".into(), ..RunConfig::default() };
    let config = FsTierConfig { o_direct: DirectMode::Off, ..FsTierConfig::new(dir.path(), run, 4096) };
    let counting = Arc::new(AtomicBool::new(false));
    let exec_counting = Arc::clone(&counting);
    let mut tier = FsTier::open(&config, move |_| Ok(Box::new(OffThread::new(exec_counting)))).unwrap();
    let req = ReqContext::new(1);
    let mut done = Completions::new();

    // Three jobs of two blocks: their parts are finished on the worker thread, and the tier
    // reports them although the executor's `poll` counts nothing yet.
    for j in 0..3u32 {
        let keys = [key(2 * j), key(2 * j + 1)];
        tier.submit_store(Job { id: JobId(u64::from(j)), req, keys: &keys, slots: &[SlotId(0), SlotId(1)] });
    }
    for _ in 0..10_000 {
        tier.poll_finished(&mut done);
        if done.len() == 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let reported: Vec<(u64, bool)> = done.iter().map(|r| (r.job.0, r.success)).collect();
    assert_eq!(reported, [(0, true), (1, true), (2, true)], "reported from the job table, in finishing order");
    assert_eq!(tier.job_table_stats(), JobTableStats { opened: 3, parts: 6, finished: 3 });
    assert!((0..6).all(|i| tier.contains(&key(i))), "the ops' outcomes were folded into the index");

    // A job larger than the first table (1024 parts): the table grows for it.
    counting.store(true, Ordering::Relaxed);
    let keys: Vec<OffloadKey> = (100..3100).map(key).collect();
    let slots = vec![SlotId(0); keys.len()];
    tier.submit_store(Job { id: JobId(9), req, keys: &keys, slots: &slots });
    tier.wait_idle();
    done.clear();
    tier.poll_finished(&mut done);
    assert_eq!(done.iter().map(|r| (r.job.0, r.success)).collect::<Vec<_>>(), [(9, true)]);
    assert_eq!(tier.job_table_stats(), JobTableStats { opened: 4, parts: 3006, finished: 4 });
    // A store of blocks already on disk makes no op: a job without parts, through the table too.
    tier.submit_store(Job { id: JobId(10), req, keys: &keys[..2], slots: &slots[..2] });
    done.clear();
    tier.poll_finished(&mut done);
    assert_eq!(done.iter().map(|r| (r.job.0, r.success)).collect::<Vec<_>>(), [(10, true)]);
    assert_eq!(tier.job_table_stats(), JobTableStats { opened: 5, parts: 3006, finished: 5 });
    tier.shutdown(&mut done);
}

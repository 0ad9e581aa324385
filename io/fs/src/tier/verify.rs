//! Start-up verification after a power cut, in the background.
//!
//! After a run of another boot crashed without syncing its blocks (see [`super::startup`]),
//! the native blocks it may have written (files not older than its open marker) are read and
//! checked. `open` does not wait for it: the blocks are indexed at once and served, because a
//! load verifies every native block it reads anyway (a torn one is `Corrupt`, removed and
//! never served). A verifier reads the files on a thread of its own (or, over a disk whose
//! [`Vfs::background_threads`] says no, a few at each poll of the tier), and hands its
//! verdicts to the tier's poll, which alone changes the index and removes files:
//!
//! - a file that fails the format's checks (a torn, truncated or foreign block) is removed,
//!   but only if it is still the file that was read ([`Vfs::remove_if_same`]) and no load of
//!   it is in flight (that load verifies it itself), and leaves the index;
//! - a file that could not be read (`EACCES`, `EIO`, `EMFILE`...) is kept, indexed: the error
//!   says nothing about its bytes, and its first load verifies it (issue 11, item 3);
//! - a file gone meanwhile (evicted) needs nothing.
//!
//! The crashed runs' markers are removed only once every verdict is in: a crash or a shutdown
//! before that leaves them, and the next start-up verifies again. Progress is
//! [`super::FsTier::verification`].

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use kvtier_core::OffloadKey;

use crate::format;
use crate::namespace::Layout;
use crate::vfs::{Identity, Vfs};

/// Blocks checked per poll where there is no thread of its own.
pub(super) const BLOCKS_PER_POLL: usize = 16;

/// What the verification found of one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The block checks out.
    Intact,
    /// The file that was read (this one) fails the format's checks.
    Torn(OffloadKey, Identity),
    /// The file could not be read: kept.
    Unreadable,
    /// No file any more.
    Gone,
}

/// How far the start-up verification is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerifyProgress {
    /// Blocks to verify (the native blocks a crashed run of another boot may have written).
    pub total: usize,
    /// Blocks checked so far.
    pub checked: usize,
    /// Torn blocks removed so far.
    pub torn_removed: usize,
    /// Blocks that could not be read (kept: their first load verifies them).
    pub unreadable: usize,
    /// Every block was checked and the crashed runs' markers are gone. A shutdown before that
    /// leaves the markers, for the next start-up to verify again.
    pub finished: bool,
}

/// What the verifier's thread and the tier share.
struct Shared {
    fs: Arc<dyn Vfs>,
    layout: Layout,
    namespace: [u8; 12],
    keys: Vec<OffloadKey>,
    /// The next key to check.
    next: AtomicUsize,
    stop: AtomicBool,
    verdicts: Mutex<Vec<Verdict>>,
}

impl Shared {
    /// Checks the next key; false when none is left (or the verifier was stopped).
    fn step(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let Some(key) = self.keys.get(i) else { return false };
        let path: PathBuf = self.layout.block_path(key);
        let verdict = match self.fs.read_identified(&path) {
            Ok((bytes, id)) => match format::verify_file(&bytes, &self.namespace, key) {
                Ok(()) => Verdict::Intact,
                Err(_) => Verdict::Torn(*key, id),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Verdict::Gone,
            Err(_) => Verdict::Unreadable,
        };
        self.verdicts.lock().unwrap_or_else(|e| e.into_inner()).push(verdict);
        true
    }
}

/// The verification of `keys`, running. See the module docs.
pub(super) struct Verifier {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// Verdicts handed out so far.
    taken: usize,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("total", &self.shared.keys.len()).field("taken", &self.taken).finish()
    }
}

impl Verifier {
    /// Starts verifying `keys` (on a thread where `fs` allows one).
    pub fn start(fs: Arc<dyn Vfs>, layout: Layout, keys: Vec<OffloadKey>) -> io::Result<Verifier> {
        let background = fs.background_threads();
        let namespace = layout.namespace_bytes();
        let shared = Arc::new(Shared {
            fs,
            layout,
            namespace,
            keys,
            next: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            verdicts: Mutex::new(Vec::new()),
        });
        let thread = if background {
            let worker = Arc::clone(&shared);
            let spawned =
                std::thread::Builder::new().name("kvtier-verify".into()).spawn(move || while worker.step() {});
            Some(spawned?)
        } else {
            None
        };
        Ok(Verifier { shared, thread, taken: 0 })
    }

    /// Blocks to verify.
    pub fn total(&self) -> usize {
        self.shared.keys.len()
    }

    /// Moves the verdicts found since the last call to `out`; without a thread, checks up to
    /// `budget` more blocks first. Returns true once every block's verdict was handed out.
    pub fn take(&mut self, budget: usize, out: &mut Vec<Verdict>) -> bool {
        if self.thread.is_none() {
            for _ in 0..budget {
                if !self.shared.step() {
                    break;
                }
            }
        }
        out.append(&mut self.shared.verdicts.lock().unwrap_or_else(|e| e.into_inner()));
        self.taken += out.len();
        self.taken >= self.total()
    }

    /// Checks every block left, here or by waiting for the thread.
    pub fn run_to_end(&mut self) {
        match self.thread.take() {
            Some(thread) => {
                // The thread never panics (a read or a check only returns errors); if it did,
                // the verdicts it never gave are never handed out.
                let _ = thread.join();
            }
            None => while self.shared.step() {},
        }
    }
}

impl Drop for Verifier {
    /// Stops the verification (the thread finishes the block it is reading).
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

//! SIGINT and SIGTERM during `kvtier simulate`, and the run's temporary directory.
//!
//! A run's disk tier lives in a temporary directory ([`Scratch`]) that holds the whole working
//! set (gigabytes). Killed there by a signal's default action, the process would leave it
//! behind. So, while a [`Scratch`] lives, the first SIGINT or SIGTERM only asks the run to stop
//! ([`Interrupt::check`], called by the scheduler every iteration and while it waits for I/O):
//! the run returns an error, the tiers drain, the cache closes, the directory is removed, and
//! then [`super::run`] ends the process by that same signal's default action (so a shell sees
//! "terminated by SIGTERM", not an ordinary failure). Outside that window, and on a second
//! signal (someone insists, or the clean-up is stuck), the default action ends the process at
//! once: there is then nothing of ours to remove, or the user asked twice.
//!
//! Handlers come from `signal-hook`: they set atomics (async-signal-safe) and, when told to,
//! run the signal's default action; nothing here is hand-written signal code.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};

/// Whether SIGINT or SIGTERM asked the run to stop (see the module doc).
#[derive(Debug, Clone)]
pub struct Interrupt {
    /// The signal received while a scratch directory lived; 0 when none.
    signal: Arc<AtomicUsize>,
    /// True while a signal's default action should end the process at once (no scratch
    /// directory alive, or a signal already received).
    at_once: Arc<AtomicBool>,
}

impl Interrupt {
    /// Never interrupted: no signal handler is installed (the library's
    /// [`simulate`](super::simulate), which tests and other programs call).
    pub fn never() -> Self {
        Interrupt { signal: Arc::new(AtomicUsize::new(0)), at_once: Arc::new(AtomicBool::new(true)) }
    }

    /// Installs the handlers of SIGINT and SIGTERM described in the module doc, for the rest of
    /// the process's life.
    ///
    /// # Errors
    ///
    /// What `signal-hook` returns when the kernel refuses a handler.
    pub fn on_signals() -> io::Result<Self> {
        let it = Interrupt::never();
        for sig in [SIGINT, SIGTERM] {
            // Order matters: the default action is tested first, so that the first signal in a
            // scratch's life only arms it (the second registration) for the next one.
            signal_hook::flag::register_conditional_default(sig, Arc::clone(&it.at_once))?;
            signal_hook::flag::register(sig, Arc::clone(&it.at_once))?;
            signal_hook::flag::register_usize(sig, Arc::clone(&it.signal), sig as usize)?;
        }
        Ok(it)
    }

    /// The signal that asked the run to stop, if one did.
    pub fn signal(&self) -> Option<i32> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            sig => i32::try_from(sig).ok(),
        }
    }

    /// `Err` naming the signal once one asked the run to stop.
    pub fn check(&self) -> Result<(), String> {
        match self.signal() {
            None => Ok(()),
            Some(sig) => Err(format!("interrupted by {}", signal_name(sig))),
        }
    }

    /// A new temporary directory (`kvtier-simulate-*` in the system's temporary directory,
    /// owner-only: it will hold KV blocks), during whose life a signal stops the run instead of
    /// ending the process.
    ///
    /// # Errors
    ///
    /// The directory cannot be created (the error names the system's temporary directory).
    pub fn scratch(&self) -> io::Result<Scratch> {
        use std::os::unix::fs::PermissionsExt as _;
        // Disarmed before the directory exists: a signal from here on is seen by `check`.
        self.at_once.store(false, Ordering::SeqCst);
        let mode = kvtier_fs::files::FileMode::OWNER_ONLY.dir();
        let made = tempfile::Builder::new()
            .prefix("kvtier-simulate-")
            .permissions(std::fs::Permissions::from_mode(mode))
            .tempdir();
        match made {
            Ok(dir) => Ok(Scratch { dir: Some(dir), at_once: Arc::clone(&self.at_once) }),
            Err(e) => {
                self.at_once.store(true, Ordering::SeqCst);
                let base = std::env::temp_dir();
                Err(io::Error::new(e.kind(), format!("cannot create a temporary directory in {}: {e}", base.display())))
            }
        }
    }
}

/// The run's temporary directory: removed (with everything in it) when dropped, after which a
/// signal ends the process at once again.
#[derive(Debug)]
pub struct Scratch {
    dir: Option<tempfile::TempDir>,
    at_once: Arc<AtomicBool>,
}

impl Scratch {
    /// Its path.
    pub fn path(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new(""), |d| d.path())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_path_buf();
            if let Err(e) = dir.close() {
                tracing::warn!("cannot remove the temporary directory {}: {e}", path.display());
            }
        }
        self.at_once.store(true, Ordering::SeqCst);
    }
}

/// `SIGINT`, `SIGTERM` or the number.
fn signal_name(sig: i32) -> String {
    match sig {
        SIGINT => "SIGINT".into(),
        SIGTERM => "SIGTERM".into(),
        n => format!("signal {n}"),
    }
}

/// Ends the process by `sig`'s default action (after the run cleaned up); returns only if that
/// failed, with the reason.
pub fn end_by(sig: i32) -> io::Error {
    match signal_hook::low_level::emulate_default_handler(sig) {
        Ok(()) => io::Error::other(format!("still running after the default action of {}", signal_name(sig))),
        Err(e) => e,
    }
}

//! Whether io_uring can run this executor here, and if not, why: the checks
//! [`crate::UringExecutor::new`] makes before it sets anything up, so that a caller can fall
//! back to the threaded executor with a reason to show.
//!
//! Every "cannot run here" answer is an [`io::ErrorKind::Unsupported`] error whose message
//! starts with `io_uring is unavailable:` and names the reason: the `KVTIER_URING_DISABLE`
//! environment variable or [`crate::UringConfig::force_unavailable`] (to test the fallback), the
//! `kernel.io_uring_disabled` sysctl, `io_uring_setup` refused (no io_uring in the kernel, a
//! seccomp filter as in Docker's default profile, a too-old kernel), or a missing feature or
//! operation (with the Linux version that brought it).

use std::fmt::Display;
use std::io;

use io_uring::{opcode, IoUring, Probe};

/// Set to anything but `0` or the empty string, this environment variable makes io_uring
/// "unavailable" (so `auto` falls back to the threaded executor).
pub const DISABLE_ENV: &str = "KVTIER_URING_DISABLE";

/// The operations a store or a load uses, with the Linux version that brought each.
const REQUIRED_OPS: [(u8, &str, &str); 10] = [
    (opcode::OpenAt::CODE, "OPENAT", "5.6"),
    (opcode::ReadFixed::CODE, "READ_FIXED", "5.1"),
    (opcode::WriteFixed::CODE, "WRITE_FIXED", "5.1"),
    (opcode::Fsync::CODE, "FSYNC", "5.1"),
    (opcode::Close::CODE, "CLOSE", "5.6"),
    (opcode::RenameAt::CODE, "RENAMEAT", "5.11"),
    (opcode::UnlinkAt::CODE, "UNLINKAT", "5.11"),
    (opcode::MkDirAt::CODE, "MKDIRAT", "5.15"),
    (opcode::LinkAt::CODE, "LINKAT", "5.15"),
    (opcode::Statx::CODE, "STATX", "5.6"),
];

/// An `Unsupported` error: `io_uring is unavailable: {reason}`.
pub fn unavailable(reason: impl Display) -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, format!("io_uring is unavailable: {reason}"))
}

/// The checks that need no ring: forced off (by `force` or [`DISABLE_ENV`]), or disabled by the
/// `kernel.io_uring_disabled` sysctl (2: for everyone; 1: only `io_uring_group` members, which
/// `io_uring_setup` itself then tells).
pub fn environment(force: bool) -> io::Result<()> {
    if force {
        return Err(unavailable("forced off (UringConfig::force_unavailable)"));
    }
    if let Some(v) = std::env::var_os(DISABLE_ENV) {
        if !v.is_empty() && v != "0" {
            return Err(unavailable(format_args!("disabled by {DISABLE_ENV}={}", v.to_string_lossy())));
        }
    }
    if let Ok(s) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        if s.trim() == "2" {
            return Err(unavailable("disabled by the kernel.io_uring_disabled sysctl (2)"));
        }
    }
    Ok(())
}

/// `io_uring_setup` failed with `e`: the reason, with what usually causes it.
pub fn setup_failed(e: io::Error) -> io::Error {
    let hint = match e.raw_os_error() {
        Some(libc::ENOSYS) => " (this kernel has no io_uring: Linux < 5.1, or built without it)",
        Some(libc::EPERM) => {
            " (not permitted: a seccomp filter, e.g. a container runtime's default profile, or the \
             kernel.io_uring_disabled sysctl)"
        }
        Some(libc::EINVAL) => " (a setup flag this kernel does not know: Linux >= 5.19 needed)",
        Some(libc::ENOMEM) => " (out of memory, or RLIMIT_MEMLOCK too low for the rings)",
        _ => "",
    };
    unavailable(format_args!("io_uring_setup: {e}{hint}"))
}

/// The features and operations the executor needs, checked on a ring.
pub fn check_ring(uring: &IoUring) -> io::Result<()> {
    let params = uring.params();
    let features = [
        (params.is_feature_nodrop(), "IORING_FEAT_NODROP", "5.5"),
        (params.is_feature_ext_arg(), "IORING_FEAT_EXT_ARG (waits with a timeout)", "5.11"),
        (params.is_feature_linked_file(), "IORING_FEAT_LINKED_FILE (direct descriptors in chains)", "5.17"),
        (params.is_feature_skip_cqe_on_success(), "IORING_FEAT_CQE_SKIP (one CQE per chain)", "5.17"),
    ];
    for (present, name, since) in features {
        if !present {
            return Err(unavailable(format_args!("the kernel lacks {name} (Linux >= {since} needed)")));
        }
    }
    let mut probe = Probe::new();
    uring
        .submitter()
        .register_probe(&mut probe)
        .map_err(|e| unavailable(format_args!("IORING_REGISTER_PROBE: {e} (Linux >= 5.6 needed)")))?;
    for (code, name, since) in REQUIRED_OPS {
        if !probe.is_supported(code) {
            return Err(unavailable(format_args!("the kernel lacks IORING_OP_{name} (Linux >= {since} needed)")));
        }
    }
    Ok(())
}

/// Whether the executor can run here: the checks of [`environment`] (with `force`), then a
/// small ring with the features and operations it needs. Costs one ring setup (a few
/// microseconds); [`crate::UringExecutor::new`] makes the same checks itself.
pub fn probe(force: bool) -> io::Result<()> {
    environment(force)?;
    let uring = IoUring::new(8).map_err(setup_failed)?;
    check_ring(&uring)
}

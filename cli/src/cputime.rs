//! CPU-time clocks: the calling thread's and the whole process's (`clock_gettime`), and the
//! process's user + system time as `getrusage` reports it (what the Python peers measure).

use std::time::Duration;

#[allow(unsafe_code)] // clock_gettime
fn clock(id: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable `timespec` for the whole call, and `id` is one of the
    // CPU-time clocks every Linux supports; the call writes nothing else.
    let rc = unsafe { libc::clock_gettime(id, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec.max(0) as u64, ts.tv_nsec.clamp(0, 999_999_999) as u32)
}

/// CPU time consumed by the calling thread (user + system).
pub fn thread_cpu() -> Duration {
    clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time consumed by every thread of the process (user + system).
pub fn process_cpu() -> Duration {
    clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// User + system CPU-seconds of every thread of the process, from `getrusage(RUSAGE_SELF)`
/// (0 if the call fails): the figure the benchmarks' Python peers read about themselves.
pub fn rusage_cpu() -> f64 {
    rusage(libc::RUSAGE_SELF)
}

/// User + system CPU-seconds of the children of this process that were waited for
/// (`getrusage(RUSAGE_CHILDREN)`): what a benchmark tool run as a child cost.
pub fn rusage_children_cpu() -> f64 {
    rusage(libc::RUSAGE_CHILDREN)
}

#[allow(unsafe_code)] // getrusage
fn rusage(who: libc::c_int) -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: `getrusage` writes a whole `rusage` through the pointer, which points to writable
    // memory of that type; it is read only when the call reports success.
    let ru = unsafe {
        if libc::getrusage(who, ru.as_mut_ptr()) != 0 {
            return 0.0;
        }
        ru.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_advance() {
        let (t0, p0) = (thread_cpu(), process_cpu());
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        assert!(thread_cpu() > t0 && process_cpu() > p0, "{x}");
        assert!(process_cpu() >= thread_cpu());
        assert!(rusage_cpu() > 0.0);
    }
}

//! The ceiling of `bench fs`: raw `O_DIRECT` random writes and reads, and sequential writes, of
//! the block size at the executor's queue depth, on one preallocated, filled file in the same
//! directory (what fio would show). Sequential writes are the region engine's ceiling: it
//! appends to its regions.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use memmap2::MmapMut;

use super::pattern::{fill_pattern, shuffled};
use super::{BoxError, Ctx, ALIGN};

#[allow(unsafe_code)] // fallocate
fn preallocate(file: &File, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large"))?;
    // SAFETY: `fallocate` takes no pointer; the descriptor is owned by `file`, open for the
    // whole call.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `O_DIRECT` I/O of `n` blocks of `bs` by `qd` threads, each taking the next offset of
/// `order`; returns the wall time.
fn random_io(file: &File, bs: u64, n: u64, qd: usize, write: bool, seed: u64) -> io::Result<Duration> {
    run_io(file, bs, &shuffled(n, seed), qd, write, seed)
}

fn run_io(file: &File, bs: u64, order: &[u64], qd: usize, write: bool, seed: u64) -> io::Result<Duration> {
    let next = AtomicUsize::new(0);
    let mut bufs = Vec::with_capacity(qd);
    for t in 0..qd {
        let mut buf = MmapMut::map_anon(bs as usize)?;
        fill_pattern(&mut buf, seed ^ t as u64);
        bufs.push(buf);
    }
    let next = &next;
    let started = Instant::now();
    let result = std::thread::scope(|s| {
        let workers: Vec<_> = bufs
            .iter_mut()
            .map(|buf| {
                s.spawn(move || -> io::Result<()> {
                    loop {
                        let Some(&block) = order.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            return Ok(());
                        };
                        if write {
                            file.write_all_at(&buf[..], block * bs)?;
                        } else {
                            file.read_exact_at(&mut buf[..], block * bs)?;
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| Err(io::Error::other("ceiling thread panicked"))))
            .collect::<io::Result<Vec<()>>>()
    });
    let elapsed = started.elapsed();
    result?;
    Ok(elapsed)
}

/// One preallocated, filled file for the ceiling, removed on drop.
pub(super) struct CeilingFile {
    path: PathBuf,
    file: File,
    bs: u64,
    n: u64,
}

impl CeilingFile {
    /// `n` blocks of `bs`, allocated with `fallocate` and written once, so that reads hit
    /// written blocks (unwritten extents read as zeros without touching the disk) and writes
    /// overwrite in place.
    pub(super) fn create(ctx: &Ctx, bs: u64, n: u64) -> Result<Self, BoxError> {
        let path = ctx.scratch.join(format!("ceiling-{bs}.dat"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .map_err(|e| format!("O_DIRECT open of {}: {e}", path.display()))?;
        let this = CeilingFile { path, file, bs, n };
        let len = bs * n;
        preallocate(&this.file, len)?;
        let chunk_len = (8u64 << 20).min(len).next_multiple_of(ALIGN) as usize;
        let mut chunk = MmapMut::map_anon(chunk_len)?;
        fill_pattern(&mut chunk, 0x5eed);
        let mut off = 0;
        while off < len {
            let take = chunk_len.min((len - off) as usize);
            this.file.write_all_at(&chunk[..take], off)?;
            off += take as u64;
        }
        Ok(this)
    }

    /// GB/s of random reads, random writes and sequential writes of the whole file at queue
    /// depth `qd`.
    pub(super) fn measure(&self, ctx: &Ctx, qd: usize, round: u64) -> io::Result<Ceiling> {
        let gb = (self.bs * self.n) as f64 / 1e9;
        let seed = self.bs ^ (round << 32);
        ctx.sync();
        let write = random_io(&self.file, self.bs, self.n, qd, true, seed ^ 0xc0ffee)?;
        ctx.sync();
        let in_order: Vec<u64> = (0..self.n).collect();
        let seq_write = run_io(&self.file, self.bs, &in_order, qd, true, seed ^ 0x5e9)?;
        ctx.sync();
        let read = random_io(&self.file, self.bs, self.n, qd, false, seed ^ 0xbeef)?;
        Ok(Ceiling {
            read: gb / read.as_secs_f64(),
            write: gb / write.as_secs_f64(),
            seq_write: gb / seq_write.as_secs_f64(),
        })
    }
}

/// GB/s of the raw device (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Ceiling {
    /// Random reads.
    pub(super) read: f64,
    /// Random writes.
    pub(super) write: f64,
    /// Sequential writes.
    pub(super) seq_write: f64,
}

impl Ceiling {
    /// The better of each figure.
    pub(super) fn max(self, o: Ceiling) -> Ceiling {
        Ceiling {
            read: self.read.max(o.read),
            write: self.write.max(o.write),
            seq_write: self.seq_write.max(o.seq_write),
        }
    }
}

impl Drop for CeilingFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

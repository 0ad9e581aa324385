#!/usr/bin/env python3
"""The peer of `kvtier bench fs`: our own re-implementation of vLLM's FS tier I/O path.

Written by us from the pages of vLLM's ``vllm/v1/kv_offload/tiering/fs`` (``io.py``,
``thread_pool.py``, ``manager.py``): the same syscalls in the same order, the same dual-queue
thread pool with 16 read-priority and 16 write-priority threads, the same path layout. It is
neither deliberately slow nor optimized beyond what vLLM does.

- **Store** of one block: ``os.path.exists`` of the final path (skip if present), a per-thread
  random temp suffix, ``os.makedirs(exist_ok=True)`` of the parent, ``os.open(tmp,
  O_CREAT|O_EXCL|O_WRONLY|O_TRUNC|O_DIRECT, 0o644)``, one ``os.write`` of the block's slice of
  the primary buffer, ``os.close``, ``os.replace(tmp, final)``.
- **Load** of one block: ``os.open(final, O_RDONLY|O_DIRECT)``, one ``os.readv`` into the
  block's slice, ``os.close``.
- **Paths**: ``{root}/{model}_{digest12}_r{rank}/{h[0:3]}/{h[3:5]}_g{group}/{h}.bin``, ``h`` the
  hex of the block hash (32 bytes here, like vLLM's sha256 block hashes).
- **Primary buffer**: one anonymous ``mmap`` (page aligned, as O_DIRECT needs), viewed through a
  ``memoryview``; block ``i`` is bytes ``[i * B, (i + 1) * B)``.
- **Jobs**: blocks are submitted in jobs of ``--job-blocks`` (32) blocks; the main thread polls
  ``get_finished`` every millisecond, as an engine polls once per step.

The run: fill the buffer with a per-block pattern; optionally put the file system in the churn
state (store a set of blocks through the same store path, create empty files up to
``--churn-files`` in the same directories, then delete all of them); store ``--blocks`` new
blocks (timed); ``sync`` and, when writable, drop the page cache; zero the buffer; load them
back (timed); verify every block's bytes; remove every file it created unless ``--keep``.

CPU time is ``resource.getrusage(RUSAGE_SELF)`` (user + sys, all threads) around each timed
phase. Output: one JSON object on stdout.
"""

import argparse
import functools
import hashlib
import json
import mmap
import os
import random
import resource
import shutil
import sys
import threading
import time
from collections import deque

O_DIRECT = getattr(os, "O_DIRECT", 0)

# ---------------------------------------------------------------------------------------------
# The I/O callbacks (vLLM's io.py, re-written).
# ---------------------------------------------------------------------------------------------

_tls = threading.local()


def tmp_suffix():
    """One random temp suffix per thread, drawn on the thread's first store."""
    suffix = getattr(_tls, "suffix", None)
    if suffix is None:
        suffix = "_%d.tmp" % random.randint(0, 2**63 - 1)
        _tls.suffix = suffix
    return suffix


def store_block(dest, view, offset, size):
    if os.path.exists(dest):
        return
    tmp = dest + tmp_suffix()
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    data = view.cast("B")[offset : offset + size]
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_TRUNC | O_DIRECT, 0o644)
        try:
            n = os.write(fd, data)
            if n < len(data):
                raise OSError("short write: %d of %d bytes" % (n, len(data)))
        finally:
            os.close(fd)
        os.replace(tmp, dest)
    except Exception:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def load_block(src, view, offset, size):
    fd = None
    data = view.cast("B")[offset : offset + size]
    try:
        fd = os.open(src, os.O_RDONLY | O_DIRECT)
        n = os.readv(fd, [data])
        if n < size:
            raise OSError("short read: %d of %d bytes" % (n, size))
    except Exception:
        try:
            os.remove(src)
        except OSError:
            pass
        raise
    finally:
        if fd is not None:
            os.close(fd)


# ---------------------------------------------------------------------------------------------
# The dual-queue thread pool (vLLM's thread_pool.py, re-written).
# ---------------------------------------------------------------------------------------------


class Job:
    """Counts a job's finished tasks under its own lock."""

    __slots__ = ("job_id", "total", "done", "ok", "lock")

    def __init__(self, job_id, total):
        self.job_id = job_id
        self.total = total
        self.done = 0
        self.ok = True
        self.lock = threading.Lock()

    def finish_one(self, ok):
        with self.lock:
            self.done += 1
            self.ok = self.ok and ok
            return self.done == self.total, self.ok


class DualQueuePool:
    """Loads and stores in two deques under one condition variable; read-priority threads take
    loads first, write-priority threads stores first, each falling back to the other queue."""

    def __init__(self, n_read, n_write):
        self.loads = deque()
        self.stores = deque()
        self.cond = threading.Condition(threading.Lock())
        self.stop = False
        self.finished = deque()
        self.errors = deque()
        self.threads = []
        for i in range(n_read + n_write):
            t = threading.Thread(target=self._run, args=(i < n_read,), daemon=True)
            t.start()
            self.threads.append(t)

    def _enqueue(self, queue, job_id, n_tasks, tasks):
        # As in vLLM, `tasks` may be a generator: it is consumed under the lock.
        job = Job(job_id, n_tasks)
        with self.cond:
            for task in tasks:
                queue.append((task, job))
            self.cond.notify(n_tasks)

    def enqueue_load(self, job_id, n_tasks, tasks):
        self._enqueue(self.loads, job_id, n_tasks, tasks)

    def enqueue_store(self, job_id, n_tasks, tasks):
        self._enqueue(self.stores, job_id, n_tasks, tasks)

    def get_finished(self):
        out = []
        while self.finished:
            out.append(self.finished.popleft())
        return out

    def shutdown(self):
        with self.cond:
            self.stop = True
            self.loads.clear()
            self.stores.clear()
            self.cond.notify_all()
        for t in self.threads:
            t.join()

    def _run(self, load_first):
        while True:
            with self.cond:
                self.cond.wait_for(lambda: self.stop or self.loads or self.stores)
                if self.stop:
                    return
                first, second = (self.loads, self.stores) if load_first else (self.stores, self.loads)
                task, job = first.popleft() if first else second.popleft()
            try:
                task()
                ok = True
            except Exception as exc:  # reported like vLLM: the job fails, the pool goes on
                self.errors.append(repr(exc))
                ok = False
            done, job_ok = job.finish_one(ok)
            if done:
                self.finished.append((job.job_id, job_ok))


# ---------------------------------------------------------------------------------------------
# The tier: paths and job submission (vLLM's manager.py and file mapper, re-written).
# ---------------------------------------------------------------------------------------------


class PeerTier:
    def __init__(self, root, view, block_bytes, n_read=16, n_write=16, model="kvtier-bench-peer"):
        config = {"model_name": model, "block_bytes": block_bytes, "rank": 0}
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
        self.rank_dir = os.path.join(root, "%s_%s_r0" % (model.replace("/", "_"), digest))
        self.view = view
        self.block_bytes = block_bytes
        self.pool = DualQueuePool(n_read, n_write)
        self.next_job = 0

    def path(self, key_hex, group=0):
        return os.path.join(self.rank_dir, key_hex[0:3], "%s_g%d" % (key_hex[3:5], group), key_hex + ".bin")

    def _submit(self, enqueue, fn, keys, slots):
        self.next_job += 1
        b = self.block_bytes
        tasks = (functools.partial(fn, self.path(k), self.view, s * b, b) for k, s in zip(keys, slots))
        enqueue(self.next_job, len(keys), tasks)
        return self.next_job

    def submit_store(self, keys, slots):
        return self._submit(self.pool.enqueue_store, store_block, keys, slots)

    def submit_load(self, keys, slots):
        return self._submit(self.pool.enqueue_load, load_block, keys, slots)

    def run_jobs(self, submit, keys, job_blocks):
        """Submits every block in jobs of `job_blocks`, then polls until all jobs finished.
        Returns the number of failed jobs."""
        jobs = 0
        for start in range(0, len(keys), job_blocks):
            end = min(start + job_blocks, len(keys))
            submit(keys[start:end], range(start, end))
            jobs += 1
        failed = 0
        while jobs:
            for _job_id, ok in self.pool.get_finished():
                jobs -= 1
                failed += 0 if ok else 1
            if jobs:
                time.sleep(0.001)
        return failed

    def shutdown(self):
        self.pool.shutdown()


# ---------------------------------------------------------------------------------------------
# The benchmark.
# ---------------------------------------------------------------------------------------------


def cpu_seconds():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def make_keys(seed, tag, n):
    return [hashlib.sha256(b"%d/%s/%d" % (seed, tag.encode(), i)).hexdigest() for i in range(n)]


def block_pattern(seed, i, size, base):
    head = i.to_bytes(8, "little") + seed.to_bytes(8, "little")
    return head + base[16:size]


def sync_and_drop_caches():
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return True
    except OSError:
        return False


def churn(tier, keys, job_blocks, churn_files):
    """Puts the file system in the state a cache that keeps evicting lives in: stores `keys`
    (through the same store path), creates empty files in the same directories up to
    `churn_files` files in all, then deletes every one of them."""
    failed = tier.run_jobs(tier.submit_store, keys, job_blocks)
    if failed:
        raise RuntimeError("churn store: %d jobs failed: %s" % (failed, list(tier.pool.errors)[:3]))
    paths = [tier.path(k) for k in keys]
    extra = []
    for i in range(max(0, churn_files - len(paths))):
        p = "%s.churn%d" % (paths[i % len(paths)], i)
        os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        extra.append(p)
    for p in paths + extra:
        os.remove(p)
    return len(paths) + len(extra)


def create_cost(d, count=256):
    """Mean microseconds to create one empty file in `d`, one after another (the state of the
    inode allocator: ~20 us on a quiet ext4). The files are kept: deleting them adds churn."""
    os.makedirs(d, exist_ok=True)
    t = time.perf_counter()
    for i in range(count):
        os.close(os.open(os.path.join(d, ".create-probe-%d" % i), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    return (time.perf_counter() - t) * 1e6 / count


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", required=True, help="root directory (created; must be on the disk to measure)")
    ap.add_argument("--block-bytes", type=int, required=True)
    ap.add_argument("--blocks", type=int, required=True)
    ap.add_argument("--job-blocks", type=int, default=32)
    ap.add_argument("--read-threads", type=int, default=16)
    ap.add_argument("--write-threads", type=int, default=16)
    ap.add_argument("--churn-files", type=int, default=0, help="0: quiet state (no churn first)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="leave the block files in place")
    args = ap.parse_args()

    b, n = args.block_bytes, args.blocks
    if not O_DIRECT:
        print("vllm_fs_peer: os.O_DIRECT is not available", file=sys.stderr)
        return 2
    if b <= 0 or b % 4096 or n <= 0:
        print("vllm_fs_peer: --block-bytes must be a positive multiple of 4096, --blocks > 0", file=sys.stderr)
        return 2
    os.makedirs(args.dir, exist_ok=True)

    buf = mmap.mmap(-1, n * b)
    view = memoryview(buf)
    base = random.Random(args.seed).randbytes(b)
    for i in range(n):
        view[i * b : (i + 1) * b] = block_pattern(args.seed, i, b, base)

    tier = PeerTier(args.dir, view, b, args.read_threads, args.write_threads)
    churned = 0
    t_prep = time.perf_counter()
    if args.churn_files > 0:
        churned = churn(tier, make_keys(args.seed, "churn", n), args.job_blocks, args.churn_files)
    t_prep = time.perf_counter() - t_prep
    keys = make_keys(args.seed, "bench", n)
    create_us = create_cost(tier.rank_dir)

    os.sync()
    c0, t0 = cpu_seconds(), time.perf_counter()
    failed_store = tier.run_jobs(tier.submit_store, keys, args.job_blocks)
    t1, c1 = time.perf_counter(), cpu_seconds()

    dropped = sync_and_drop_caches()
    zero = bytes(b)
    for i in range(n):
        view[i * b : (i + 1) * b] = zero

    c2, t2 = cpu_seconds(), time.perf_counter()
    failed_load = tier.run_jobs(tier.submit_load, keys, args.job_blocks)
    t3, c3 = time.perf_counter(), cpu_seconds()

    bad = sum(1 for i in range(n) if view[i * b : (i + 1) * b] != block_pattern(args.seed, i, b, base))
    errors = list(tier.pool.errors)[:5]
    tier.shutdown()
    t_clean = time.perf_counter()
    if not args.keep:
        shutil.rmtree(tier.rank_dir, ignore_errors=True)
    t_clean = time.perf_counter() - t_clean
    view.release()
    buf.close()

    gb = n * b / 1e9
    out = {
        "block_bytes": b,
        "blocks": n,
        "threads": [args.read_threads, args.write_threads],
        "state": "churn" if args.churn_files > 0 else "quiet",
        "churn_files_deleted": churned,
        "churn_prep_s": t_prep,
        "create_us": create_us,
        "cleanup_s": t_clean,
        "store_s": t1 - t0,
        "load_s": t3 - t2,
        "store_gbps": gb / (t1 - t0),
        "load_gbps": gb / (t3 - t2),
        "store_cpu_s": c1 - c0,
        "load_cpu_s": c3 - c2,
        "cpu_s_per_gb": (c1 - c0 + c3 - c2) / (2 * gb),
        "page_cache_dropped": dropped,
        "failed_store_jobs": failed_store,
        "failed_load_jobs": failed_load,
        "bad_blocks": bad,
        "errors": errors,
    }
    print(json.dumps(out))
    return 1 if failed_store or failed_load or bad else 0


if __name__ == "__main__":
    sys.exit(main())

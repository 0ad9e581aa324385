#!/usr/bin/env python3
"""Peer of `kvtier bench redis`: what LMCache's Redis connector does, with redis-py.

One key per block, the value a small metadata header followed by the block bytes (built with a
bytes concatenation, as a serializer does), SETs and GETs sent in pipelines of --job-blocks
(redis-py's `pipeline(transaction=False)`), --connections threads each with its own
connection. A load copies each value into a preallocated block buffer (LMCache's memory
objects). Prints one JSON object: store/load GB/s (block bytes only), CPU-seconds per GB
(user + system of the whole process, getrusage), and the blocks checked.

Needs the `redis` package (redis-py); `kvtier bench redis` runs this with the interpreter of a
virtual environment it creates once under $KVTIER_CACHE (see cli/bench/README.md).
"""

import argparse
import json
import os
import resource
import struct
import sys
import threading
import time

import redis


def cpu():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def block_bytes(i, size):
    # A distinct, cheap pattern per block (checked on a sample after the load).
    seed = struct.pack("<Q", i * 0x9E3779B97F4A7C15 % (1 << 64))
    return (seed * (size // 8 + 1))[:size]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--block-bytes", type=int, required=True)
    ap.add_argument("--blocks", type=int, required=True)
    ap.add_argument("--job-blocks", type=int, default=16)
    ap.add_argument("--connections", type=int, default=2)
    ap.add_argument("--prefix", default="lmcache-peer")
    args = ap.parse_args()

    size = args.block_bytes
    n = args.blocks
    # The blocks live in memory before the run (an engine's CPU buffers), as kvtier's rows do.
    blocks = [block_bytes(i, size) for i in range(n)]
    keys = ["%s:%d:kv" % (args.prefix, i) for i in range(n)]
    meta = [json.dumps({"fmt": "vllm", "shape": [size], "dtype": "uint8", "i": i}).encode() for i in range(n)]
    clients = [redis.Redis(host=args.host, port=args.port) for _ in range(args.connections)]
    for c in clients:
        c.ping()

    def run(work):
        threads = [threading.Thread(target=work, args=(t,)) for t in range(args.connections)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()

    jobs = [list(range(s, min(s + args.job_blocks, n))) for s in range(0, n, args.job_blocks)]

    def store(t):
        c = clients[t]
        for j in jobs[t :: args.connections]:
            pipe = c.pipeline(transaction=False)
            for i in j:
                # metadata length, metadata, then the bytes: one value per block.
                pipe.set(keys[i], struct.pack("<I", len(meta[i])) + meta[i] + blocks[i])
            pipe.execute()

    out = [bytearray(size) for _ in range(n)]
    bad = []

    def load(t):
        c = clients[t]
        for j in jobs[t :: args.connections]:
            pipe = c.pipeline(transaction=False)
            for i in j:
                pipe.get(keys[i])
            for i, v in zip(j, pipe.execute()):
                if v is None:
                    bad.append(i)
                    continue
                (m,) = struct.unpack_from("<I", v, 0)
                mv = memoryview(v)[4 + m :]
                out[i][:] = mv

    c0, t0 = cpu(), time.perf_counter()
    run(store)
    store_s, store_cpu = time.perf_counter() - t0, cpu() - c0
    c0, t0 = cpu(), time.perf_counter()
    run(load)
    load_s, load_cpu = time.perf_counter() - t0, cpu() - c0
    checked = 0
    for i in range(0, n, max(1, n // 16)):
        checked += 1
        if bytes(out[i]) != blocks[i]:
            bad.append(i)
    for s in range(0, n, 512):
        clients[0].delete(*keys[s : s + 512])
    gb = n * size / 1e9
    print(
        json.dumps(
            {
                "store_gbps": gb / store_s,
                "load_gbps": gb / load_s,
                "store_cpu_s_per_gb": store_cpu / gb,
                "load_cpu_s_per_gb": load_cpu / gb,
                "checked": checked,
                "bad": len(bad),
                "redis_py": redis.__version__,
                "python": sys.version.split()[0],
            }
        )
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

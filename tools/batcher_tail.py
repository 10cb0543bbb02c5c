"""Where a micro-batched request's latency goes: 16 closed-loop client threads through MicroBatcher on
one bundle, each request split into submit (check + inputs, in the client), queue + batch (until the
worker sets its result) and pickup (from the result being set until the client thread holds it); the
first 2 x clients requests (the ramp while the client threads start) are reported apart.

    .venv/bin/python tools/batcher_tail.py BUNDLE [--max-batch 8] [--requests 640]

Prints medians and p99s of each part; Future.set_result is wrapped to timestamp the hand-over.
"""

from __future__ import annotations

import argparse
import gc
import threading
import time
from concurrent.futures import Future

import numpy as np

from edgegen.runtime import Generator
from edgegen.runtime.batcher import MicroBatcher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-delay-us", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=640)
    args = parser.parse_args()
    gen = Generator.open(args.bundle, threads=1, cache_bytes=0, feature_cache_bytes=0, assets=False)
    set_at: dict[int, float] = {}
    set_result = Future.set_result

    def stamped(future, result):
        set_at[id(future)] = time.perf_counter()
        set_result(future, result)

    Future.set_result = stamped
    full_collections = []
    gc.callbacks.append(lambda phase, info: full_collections.append(1) if phase == "start" and
                        info["generation"] == 2 else None)
    batcher = MicroBatcher(gen, max_batch=args.max_batch, max_delay_us=args.max_delay_us)
    records, counter, lock = [], iter(range(10 ** 9)), threading.Lock()

    def client():
        while True:
            with lock:
                n = next(counter)
            if n >= args.requests:
                return
            start = time.perf_counter()
            future = batcher.submit({"seed": 50_000 + n, "label": n % 10})
            submitted = time.perf_counter()
            future.result()
            records.append((n, start, submitted, set_at[id(future)], time.perf_counter()))

    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    stats = batcher.stats()
    batcher.close()
    ramp = np.array([r[1:] for r in records if r[0] < 2 * args.clients]) * 1e3
    a = np.array([r[1:] for r in records if r[0] >= 2 * args.clients]) * 1e3
    parts = {"total": a[:, 3] - a[:, 0], "submit": a[:, 1] - a[:, 0], "queue + batch": a[:, 2] - a[:, 1],
             "pickup": a[:, 3] - a[:, 2], "ramp total": ramp[:, 3] - ramp[:, 0]}
    print(f"{args.requests / elapsed:.0f} requests/s; batcher's median backend call {stats['batch_ms_p50']} ms, "
          f"mean batch {stats['mean_batch']}; full garbage collections during the run: {len(full_collections)}")
    for name, ms in parts.items():
        print(f"  {name:14s} p50 {np.median(ms):7.3f} ms   p99 {np.percentile(ms, 99):7.3f} ms")


if __name__ == "__main__":
    main()

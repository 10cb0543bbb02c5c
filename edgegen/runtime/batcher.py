"""Micro-batcher: concurrent requests merged into one backend call, with Triton's two knobs.

`submit` checks a request in the caller's thread (a bad request fails alone, at once), answers
cache hits there too, and builds a miss's model inputs there, so the worker thread only stacks them
and runs the backend. Misses wait in a bucket of requests that can share a call (same route, tier
and input shapes); the worker runs a bucket when it holds `max_batch` requests or its oldest
request has waited `max_delay_us`. Equal requests in a bucket are computed once.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ..errors import EdgegenError
from .generator import Generator, Job, Rendered

log = logging.getLogger(__name__)


class OverloadedError(EdgegenError):
    """More requests are waiting than the batcher admits; retry shortly."""


@dataclass
class _Bucket:
    since: float
    waiting: OrderedDict = field(default_factory=OrderedDict)  # key -> (request, [futures])


MAX_DELAY_US = 60_000_000  # a minute: a batch held longer only keeps its requests waiting (and past about 9e15 us
# the worker's wait overflows)


class MicroBatcher:
    """Serves requests through a Generator, merging concurrent misses into batches."""

    def __init__(self, generator: Generator, max_batch: int = 8, max_delay_us: int = 2000, max_pending: int = 1024):
        if max_batch < 1 or not 0 <= max_delay_us <= MAX_DELAY_US:
            raise ValueError(f"max_batch must be >= 1 and max_delay_us 0..{MAX_DELAY_US}")
        self.generator = generator
        self.max_batch = max_batch
        self.max_delay = max_delay_us / 1e6
        self.max_pending = max_pending
        self._buckets: dict[tuple, _Bucket] = {}
        self._pending = 0
        self._cond = threading.Condition()
        self._closed = False
        self.counters = {"submitted": 0, "hits": 0, "batches": 0, "batched_requests": 0, "merged_duplicates": 0,
                         "largest_batch": 0, "rejected": 0}
        self._batch_ms: deque[float] = deque(maxlen=1024)  # the latest backend calls' durations
        self._worker = threading.Thread(target=self._loop, name="edgegen-batcher", daemon=True)
        self._worker.start()

    def submit(self, request: dict[str, Any] | Job, output: str | None = None) -> Future:
        """A future of the Rendered result of a request (or of a Job from `Generator.prepare`); raises
        RequestError (bad request) or OverloadedError now."""
        job = request if isinstance(request, Job) else self.generator.prepare(request, output)
        key, bucket_key = job.key, job.bucket
        future: Future = Future()
        found = self.generator.lookup(key)
        if found is None and job.samples is None:
            self.generator.materialize(job)
        with self._cond:
            self.counters["submitted"] += 1
            if found is not None:
                self.counters["hits"] += 1
                self.generator.record(found.served_by)
                future.set_result(found)
                return future
            if self._closed:
                raise OverloadedError("the server is shutting down; retry on another instance")
            if self._pending >= self.max_pending:
                self.counters["rejected"] += 1
                raise OverloadedError(f"{self._pending} requests are already waiting (limit {self.max_pending}); "
                                      "retry shortly")
            bucket = self._buckets.get(bucket_key)
            if bucket is None:
                bucket = self._buckets[bucket_key] = _Bucket(time.perf_counter())
            if key in bucket.waiting:
                bucket.waiting[key][1].append(future)
                self.counters["merged_duplicates"] += 1
            else:
                bucket.waiting[key] = (job, [future])
            self._pending += 1
            self._cond.notify()
        return future

    def generate(self, request: dict[str, Any] | Job, output: str | None = None,
                 timeout: float | None = None) -> Rendered:
        """Submit and wait."""
        return self.submit(request, output).result(timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                batch = None
                while batch is None:
                    if self._closed and not self._buckets:
                        return
                    batch, wait = self._due()
                    if batch is None:
                        self._cond.wait(wait)
            self._run(batch)

    def _due(self) -> tuple[list | None, float | None]:
        """The batch to run now (taken out of its bucket), or how long to wait for one."""
        now = time.perf_counter()
        wait = None
        for key, bucket in self._buckets.items():
            deadline = bucket.since + self.max_delay
            if len(bucket.waiting) >= self.max_batch or now >= deadline or self._closed:
                items = [bucket.waiting.popitem(last=False) for _ in range(min(self.max_batch, len(bucket.waiting)))]
                if bucket.waiting:
                    bucket.since = now
                else:
                    del self._buckets[key]
                self._pending -= sum(len(futures) for _, (_, futures) in items)
                self.counters["batches"] += 1
                self.counters["batched_requests"] += len(items)
                self.counters["largest_batch"] = max(self.counters["largest_batch"], len(items))
                return items, None
            wait = deadline - now if wait is None else min(wait, deadline - now)
        return None, wait

    def _run(self, items: list) -> None:
        jobs = [job for _, (job, _) in items]
        start = time.perf_counter()
        try:
            results = self.generator.serve(jobs, looked_up=True)
        except Exception:  # one bad request must not fail the others: serve them one by one
            results = []
            for job in jobs:
                try:
                    results.append(self.generator.serve([job], looked_up=True)[0])
                except Exception as exc:  # noqa: BLE001 - handed to that request's caller
                    results.append(exc)
        with self._cond:
            self._batch_ms.append((time.perf_counter() - start) * 1e3)
        for (_, (_, futures)), result in zip(items, results):
            for n, future in enumerate(futures):
                if isinstance(result, Exception):
                    future.set_exception(result)
                elif n == 0:
                    future.set_result(result)
                else:  # a merged duplicate: served too, and given its own array
                    self.generator.record(result.served_by)
                    future.set_result(Rendered(result.pixels.copy(), result.served_by))

    def stats(self) -> dict[str, Any]:
        with self._cond:
            batches = self.counters["batches"]
            return {**self.counters, "pending": self._pending, "max_batch": self.max_batch,
                    "max_delay_us": int(self.max_delay * 1e6),
                    "mean_batch": round(self.counters["batched_requests"] / batches, 3) if batches else 0.0,
                    "batch_ms_p50": round(statistics.median(self._batch_ms), 3) if self._batch_ms else None}

    def close(self, timeout_s: float | None = None) -> None:
        """Finish what is waiting, then stop the worker; wait for it up to timeout_s (None: as long as it
        takes; the worker is a daemon thread, so one still computing does not hold the process)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._worker.join(timeout_s)

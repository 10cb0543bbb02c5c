"""`edgegen precompute --executor ray`: the request list in shards, rendered by Ray actors that each
open the bundle once, merged by the driver into the pack the local executor would write, byte for byte.

Actors get the bundle's files through Ray's object store (no shared filesystem needed) and return
each shard's (key, request, pixels). The driver writes every shard as a small pack under its shard
number (atomically, so a shard redone after a killed actor replaces nothing half-written), checks
that every request's key landed in a shard or in the kept assets, and then writes the bundle's pack
from the kept entries and the shards in request order with the same writer as the local executor.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from ..bundle import MANIFEST, ASSETS_DIR
from ..errors import BuildError, BundleError, EdgegenError
from ..fileio import owner, remove_orphans, short_name
from ..precompute import KeptAssets, Progress, image_bytes, render_new, render_threads
from ..runtime.assets import AssetPack, write_pack
from . import cluster

log = logging.getLogger(__name__)

SHARD_MAX = 256  # requests per shard at most
SHARDS_PER_WORKER = 4  # at least this many shards per actor when the list allows, to balance load
ACTOR_RESTARTS = 4
# no caches, no assets: every request is rendered; at the target's threads, as the device and the local executor
# render (OpenVINO's bf16 kernels round otherwise at 1 thread than at 2: 410 of 600 assets one level off)
OPEN = {"host_fallback": True, "cache_bytes": 0, "feature_cache_bytes": 0, "assets": False}


def shard_size(count: int, workers: int) -> int:
    """Requests per shard: small enough that each worker gets several shards, at most SHARD_MAX."""
    return max(1, min(SHARD_MAX, math.ceil(count / (workers * SHARDS_PER_WORKER))))


def render_assets_on_ray(gen, requests: list[dict[str, Any]], staging: Path, rendered_on: str, progress: Progress,
                         kept: KeptAssets, address: str | None = None,
                         workers: int | None = None) -> int:
    """Ray twin of precompute.render_assets: same arguments (plus the cluster and the actor count),
    same pack and index bytes; returns the number of assets."""
    with cluster.connect(address) as ray:
        threads, cpus_total = render_threads(gen.manifest), cluster.cluster_cpus(ray)
        count = workers or max(1, cpus_total // threads)  # default: the cluster's CPUs, filled
        if count < 1:
            raise BuildError(f"--workers must be >= 1, got {count}")
        if count > cpus_total:  # each actor holds the model: more than the CPUs only adds copies of it
            log.warning("--workers %d: the Ray cluster has %d CPUs; rendering with %d actors", count, cpus_total,
                        cpus_total)
            count = cpus_total
        size = shard_size(len(requests), count)
        shards = [requests[i:i + size] for i in range(0, len(requests), size)]
        count = min(count, max(1, len(shards)))
        cpus = min(1.0, cpus_total / count)
        actor_cls = ray.remote(num_cpus=cpus, max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_RESTARTS)(
            ShardRenderer)
        files = [ray.put(_bundle_files(gen.path, gen.manifest))]
        skip = ray.put(kept.keys)
        actors = [actor_cls.remote(gen.content_hash, threads) for _ in range(count)]
        name = short_name(gen.path.name)  # a long bundle name's temporary name stays within the limit
        remove_orphans(gen.path.parent, f".{name}.", r"\.[^.]+\.shards")  # a killed run's (SIGKILL, OOM)
        shard_dir = Path(tempfile.mkdtemp(prefix=f".{name}.{owner()}.", suffix=".shards",
                                          dir=gen.path.parent))
        # each shard's image files travel with it (read as it is sent): nodes need not have them
        pool = ShardPool(ray, actors, lambda actor, job: actor.render.remote(*job, image_bytes(job[1]), skip, files))
        try:
            progress("precompute", 0, len(requests))
            done = 0
            with cluster.user_errors(ray, f"precomputing {gen.path}"):
                for number, shard in enumerate(shards):
                    pool.submit((number * size, shard))
                waiting, refused = set(range(len(shards))), {}
                while waiting and not (refused and min(refused) < min(waiting)):
                    first, keys, entries, error = pool.next_done()
                    waiting.discard(first // size)
                    if error is not None:
                        refused[first // size] = error
                        continue
                    _write_shard(shard_dir, first // size, gen.content_hash, keys, entries)
                    done += len(keys)
                    progress("precompute", done, len(requests))
                if refused:  # the first refused request of the list, as the local executor names it
                    raise refused[min(refused)]
            return write_pack(staging, gen.content_hash, _merged(kept, shard_dir, len(shards), gen.content_hash),
                              rendered_on)
        finally:
            pool.cancel()  # first: a task on an actor killed under it was reported as "will be retried"
            for actor in actors:
                ray.kill(actor)
            shutil.rmtree(shard_dir, ignore_errors=True)


class ShardPool:
    """Shards sent to the actors one at a time each, the next as one returns (as ray.util.ActorPool sends them),
    with cancel(): ActorPool cannot reach its tasks in flight, and Ray reports a task whose actor was killed
    under it as failed and "will be retried" (with the actor's restarts left), though nothing is, unless the
    task was cancelled first."""

    def __init__(self, ray: Any, actors: list, send: Callable[[Any, Any], Any]):
        self.ray, self.idle, self.send = ray, list(actors), send
        self.queued: list = []
        self.running: dict[Any, Any] = {}  # a task's ref: its actor

    def submit(self, job: Any) -> None:
        """Send `job` to an idle actor, or queue it (here, not in Ray) until one is."""
        self.queued.append(job)
        self._start()

    def next_done(self) -> Any:
        """The result of the next task to finish (its error raised as Ray raises it); its actor takes the next
        queued job."""
        [ref], _ = self.ray.wait(list(self.running), num_returns=1)
        self.idle.append(self.running.pop(ref))
        self._start()
        return self.ray.get(ref)

    def cancel(self) -> None:
        """Drop the queued jobs and cancel the tasks in flight (a running one still ends with its actor)."""
        self.queued.clear()
        for ref in self.running:
            self.ray.cancel(ref)
        self.running.clear()

    def _start(self) -> None:
        while self.queued and self.idle:
            actor = self.idle.pop(0)
            self.running[self.send(actor, self.queued.pop(0))] = actor


class ShardRenderer:
    """A Ray actor: one Generator on a local copy of the bundle (opened at its first shard, and again
    after a restart), rendering shards of requests."""

    def __init__(self, content_hash: str, threads: int):
        self.content_hash, self.threads = content_hash, threads
        self.gen = None

    def render(self, first: int, requests: list[dict[str, Any]], images: dict[str, bytes], skip: frozenset[str],
               files_ref: list) -> tuple[int, list, list, EdgegenError | None]:
        """(first, every request's key, new (key, request, pixels) entries, None) of one shard, or (first, [],
        [], the error) where one of its requests is refused; images: the bytes of the image files its requests
        name, by path; files_ref holds the ref of the bundle's files (nested, so it is fetched only when the
        bundle is opened)."""
        if self.gen is None:
            with cluster.on_worker_node():
                self.gen = self._open(files_ref[0])
        entries: dict[str, tuple] = {}
        try:
            keys = render_new(self.gen, requests, entries, lambda *_: None, skip, first, images)
        except EdgegenError as exc:  # returned, not raised: the driver names the first refused of all shards
            return first, [], [], exc
        return first, keys, list(entries.values()), None

    def _open(self, ref):
        import ray

        from ..runtime import Generator

        files = ray.get(ref)
        directory = _materialize(files, self.content_hash)
        try:
            gen = Generator.open(directory, threads=self.threads, **OPEN)
        except BundleError:  # a copy left damaged on this node: write it anew
            shutil.rmtree(directory, ignore_errors=True)
            gen = Generator.open(_materialize(files, self.content_hash), threads=self.threads, **OPEN)
        if gen.content_hash != self.content_hash:
            raise BundleError(f"{directory}: the bundle copy on this Ray node is not the one being precomputed; "
                              "delete it and rerun")
        return gen


def _bundle_files(path: Path, manifest: dict[str, Any]) -> dict[str, bytes]:
    """The bundle's files without its assets, and a manifest listing just those (the content hash
    leaves assets out, so it is unchanged)."""
    files = {name: (path / name).read_bytes() for name in manifest.get("files", {})
             if not name.startswith(ASSETS_DIR + "/")}
    listed = {name: sha for name, sha in manifest.get("files", {}).items() if name in files}
    files[MANIFEST] = (json.dumps({**manifest, "files": listed}, indent=2) + "\n").encode()
    return files


def _materialize(files: dict[str, bytes], content_hash: str) -> Path:
    """The bundle written once per node under a name made of its content hash (atomically: written
    beside it and renamed; a copy another actor finished first is used as it is)."""
    root = Path(tempfile.gettempdir()) / "edgegen-ray-bundles"
    final = root / content_hash[:32]
    if (final / MANIFEST).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".", dir=root))
    for name, data in files.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(data)
    try:
        os.rename(tmp, final)
    except OSError:  # another actor on this node renamed its copy first
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _write_shard(shard_dir: Path, number: int, content_hash: str, keys: list[str], entries: list) -> None:
    """Shard `number` as a pack plus its requests' keys, moved into place in one rename."""
    final = shard_dir / f"{number:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{number:06d}.", dir=shard_dir))
    write_pack(tmp, content_hash, entries, "shard")
    (tmp / "keys.json").write_text(json.dumps(keys))
    try:
        os.rename(tmp, final)
    except OSError:  # the same shard, already written by an earlier try
        shutil.rmtree(tmp, ignore_errors=True)


def _merged(kept: KeptAssets, shard_dir: Path, shards: int,
            content_hash: str) -> Iterator[tuple[str, dict[str, Any], Any]]:
    """Kept entries, then each shard's in order, each key once (its first occurrence, as the local
    executor keeps it); BuildError when a shard is missing or lacks a key it was given."""
    seen = set()
    for key, request, array in kept:
        seen.add(key)
        yield key, request, array
    for number in range(shards):
        directory = shard_dir / f"{number:06d}"
        try:
            keys = json.loads((directory / "keys.json").read_text())
            pack = AssetPack(directory, content_hash)
        except (OSError, ValueError, BundleError) as exc:
            raise BuildError(f"precompute shard {number} is missing or unreadable after the Ray run ({exc}); "
                             "rerun the precompute") from None
        lost = [key for key in keys if key not in seen and key not in pack]
        if lost:
            raise BuildError(f"precompute shard {number} lacks {len(lost)} of its assets (first key {lost[0][:12]}); "
                             "rerun the precompute")
        for key, request, array in pack.items():
            if array is None:
                raise BuildError(f"precompute shard {number}: asset {key[:12]} is damaged; rerun the precompute")
            if key not in seen:
                seen.add(key)
                yield key, request, array
        pack.close()

"""Precomputed assets: request lists, rendering them with the compiled artifact, and adding them to
an existing bundle atomically (`edgegen precompute BUNDLE REQUESTS`).

A request file (YAML or JSON) is a list of requests, or a mapping with any of:
    requests: [{seed: 1, label: 3}, ...]      explicit requests
    grid: {seed: "0..99", label: [0, 1, 2], quality: [full, preview]}    every combination
    log: requests.jsonl                        a request log, one JSON request per line ...
    top: 100                                   ... of which the N most frequent
Ranges "A..B" include both ends. Assets are rendered through the runtime's own Generator on the
staging bundle, so their pixels are the ones the device would compute. `--executor ray` renders the
same requests in shards on Ray actors (edgegen.scale.precompute) into the same bytes.
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import math
import os
import platform
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Container, Iterator

from . import backends, bundle
from .errors import BuildError, DamagedBundle, EdgegenError
from .image_files import IMAGE_SUFFIXES
from .runtime.assets import DIR as ASSETS_DIR, AssetPack, write_pack

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]
CHUNK = 32
MAX_REQUESTS = 1_000_000


def _regular_text(path: Path) -> str:
    """A file's text; OSError for a path that is no regular file (a device such as /dev/zero would be read until
    memory ran out, a FIFO block)."""
    if path.exists() and not path.is_file():
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return path.read_text()


def load_requests(path: str | Path) -> list[dict[str, Any]]:
    """The requests a request file names, in order, without duplicates."""
    import yaml

    from .yaml_files import load_yaml

    path = Path(path)
    try:
        data = load_yaml(_regular_text(path))
    except OSError as exc:
        raise BuildError(f"{path}: cannot read the request file ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise BuildError(f"{path}: not valid YAML/JSON ({str(exc).splitlines()[0]})") from None
    if isinstance(data, list):
        data = {"requests": data}
    if not isinstance(data, dict) or not set(data) & {"requests", "grid", "log"}:
        raise BuildError(f"{path}: a request file is a list of requests or a mapping with requests:, grid: "
                         "and/or log: (+ top:); see `edgegen precompute --help`")
    unknown = set(data) - {"requests", "grid", "log", "top"}
    if unknown:
        raise BuildError(f"{path}: unknown key(s) {sorted(unknown)}; use requests, grid, log, top")
    if not isinstance(data.get("requests") or [], list):
        raise BuildError(f"{path}: requests: must be a list of requests like [{{seed: 1, label: 3}}], got "
                         f"{data['requests']!r}")
    out = list(data.get("requests") or [])
    if "grid" in data:
        out += _grid(data["grid"], path)
    if "log" in data:
        out += _from_log(path.parent / data["log"], data.get("top"), path)
    for i, request in enumerate(out):
        if not isinstance(request, dict):
            raise BuildError(f"{path}: request {i} is {request!r}, not a mapping like {{seed: 1, label: 3}}")
        for name in _image_fields(request):  # image files, relative to the request file
            image = path.parent / request[name]
            if not image.is_file():
                raise BuildError(f"{path}: request {i}: {name} {request[name]!r} is not a file ({image})")
            out[i] = {**out[i], name: str(image.resolve())}
    if not out:
        raise BuildError(f"{path}: holds no requests; name at least one, e.g. - {{seed: 1, label: 3}}")
    unique = {json.dumps(r, sort_keys=True): r for r in out}
    if len(unique) > MAX_REQUESTS:
        raise BuildError(f"{path}: {len(unique)} requests; precompute at most {MAX_REQUESTS}")
    return list(unique.values())


def _grid(grid: Any, origin: Path) -> list[dict[str, Any]]:
    if not isinstance(grid, dict) or not grid:
        raise BuildError(f"{origin}: grid must map fields to values, e.g. grid: {{seed: '0..9', label: [1, 2]}}")
    axes = []
    for key, values in grid.items():
        if isinstance(values, str) and ".." in values:
            try:
                lo, hi = (int(v) for v in values.split(".."))
            except ValueError:
                raise BuildError(f"{origin}: grid {key}: {values!r} is not a range like '0..99'") from None
            if hi - lo >= MAX_REQUESTS:
                raise BuildError(f"{origin}: grid {key}: {values!r} holds {hi - lo + 1} values; precompute at most "
                                 f"{MAX_REQUESTS} requests")
            values = list(range(lo, hi + 1))
        elif not isinstance(values, list):
            values = [values]
        if not values:
            raise BuildError(f"{origin}: grid {key}: {grid[key]!r} holds no values, so the grid holds no requests; "
                             "ranges go up, like '0..99'")
        axes.append([(key, v) for v in values])
    total = math.prod(len(axis) for axis in axes)
    if total > MAX_REQUESTS:
        raise BuildError(f"{origin}: the grid holds {total} requests ({' x '.join(str(len(a)) for a in axes)}); "
                         f"precompute at most {MAX_REQUESTS}")
    return [dict(combo) for combo in itertools.product(*axes)]


def _from_log(log_path: Path, top: Any, origin: Path) -> list[dict[str, Any]]:
    counts: Counter = Counter()
    try:
        lines = _regular_text(log_path).splitlines()
    except OSError as exc:
        raise BuildError(f"{origin}: cannot read the request log {log_path} ({exc.strerror or exc})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except ValueError:
            raise BuildError(f"{log_path}:{number}: not a JSON request") from None
        counts[json.dumps(request, sort_keys=True)] += 1
    if top is not None and (type(top) is not int or top < 1):  # not a bool: `top: true` is not 1
        raise BuildError(f"{origin}: top must be a positive integer, got {top!r}")
    return [json.loads(text) for text, _ in counts.most_common(top)]


def render_threads(manifest: dict[str, Any]) -> int:
    """The intra-op threads assets are rendered at: the target's, as on the device (not capped at this host's
    cores: OpenVINO's bf16 kernels round otherwise at 1 thread than at 2)."""
    return int(manifest["target"]["threads"])


class KeptAssets:
    """The undamaged entries of a bundle's pack, to write again before new ones: read from its mapping each time
    they are iterated, never held (adding two requests to a pack of 3,000 assets took twice the pack in memory).
    `keys` are those that read whole when counted; `dropped`, how many did not."""

    def __init__(self, pack: AssetPack | None = None):
        self.pack = pack
        self.keys = frozenset(key for key, _, array in pack.items() if array is not None) if pack else frozenset()
        self.dropped = len(pack) - len(self.keys) if pack else 0

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any], Any]]:
        for key, request, array in self.pack.items() if self.pack else ():
            if array is not None and key in self.keys:
                yield key, request, array


def render_assets(gen, requests: list[dict[str, Any]], directory: Path, rendered_on: str, progress: Progress,
                  kept: KeptAssets | None = None) -> int:
    """Render requests with `gen` (caches off) and write the pack into a staging bundle directory, after the
    `kept` entries, CHUNK requests at a time as the pack is written; return the number of assets."""
    kept = kept or KeptAssets()
    return write_pack(directory, gen.content_hash, itertools.chain(kept, _rendered(gen, requests, progress, kept.keys)),
                      rendered_on)


def _rendered(gen, requests: list[dict[str, Any]], progress: Progress,
              skip: frozenset[str]) -> Iterator[tuple[str, dict[str, Any], Any]]:
    """(key, request, pixels) of each request whose key is not in `skip`, each key once, CHUNK at a time."""
    seen = set(skip)
    for start in range(0, len(requests), CHUNK):
        entries: dict[str, tuple] = {}
        render_new(gen, requests[start:start + CHUNK], entries,
                   lambda stage, done, total: progress(stage, start + done, len(requests)), seen, start)
        seen.update(entries)
        yield from entries.values()
    progress("precompute", len(requests), len(requests))


def render_new(gen, requests: list[dict[str, Any]], entries: dict[str, tuple], progress: Progress,
               skip: Container[str] = (), first: int = 0, images: dict[str, bytes] | None = None) -> list[str]:
    """Render, CHUNK requests per backend call, those whose keys are neither in `entries` nor in
    `skip`, adding (key, request, pixels) to `entries` in request order, each key with its first request (a
    later one giving the same key is an alias of it); return every request's key.
    `first` is the position of requests[0] in the whole request list (for error messages); `images`: the
    image files the requests name, read by the caller (see image_bytes), else they are read here."""
    keys: list[str] = []
    for start in range(0, len(requests), CHUNK):
        progress("precompute", start, len(requests))
        chunk = requests[start:start + CHUNK]
        jobs, fresh = [], set()  # fresh: the chunk's new keys; a later request with one (an alias) is not rendered
        for n, request in enumerate(chunk, first + start):  # each request checked, and its inputs built, alone
            try:
                job = gen.prepare(_with_pixels(request, images), index=n)
                if job.key not in entries and job.key not in skip and job.key not in fresh:
                    fresh.add(job.key)
                    gen.materialize(job)
            except EdgegenError as exc:
                why = str(exc).removeprefix(f"request {n}: ")
                raise BuildError(f"precomputing request {n} {_shown(request)}: {why}") from None
            jobs.append((job, request))
        todo = [(job, request) for job, request in jobs if job.samples is not None]
        try:
            rendered = gen.serve([job for job, _ in todo]) if todo else []
        except EdgegenError as exc:
            raise _the_request_refused(gen, todo, exc) from None
        for (job, request), result in zip(todo, rendered):
            entries[job.key] = (job.key, request, result.pixels)
        keys += [job.key for job, _ in jobs]
    progress("precompute", len(requests), len(requests))
    return keys


def _the_request_refused(gen, todo: list[tuple[Any, dict[str, Any]]], error: EdgegenError) -> BuildError:
    """The error of a chunk the runtime refused (a region of a bundle without --roi), naming the first request
    that it refuses alone by its position and fields, as a request's own check does."""
    for job, request in todo:
        try:
            gen.serve([job])
        except EdgegenError as exc:
            return BuildError(f"precomputing request {job.index} {_shown(request)}: {exc}")
    first, last = todo[0][0].index, todo[-1][0].index
    return BuildError(f"precomputing requests {first}..{last}: {error}")


TEXT_FIELDS = ("quality", "output")  # request fields whose value is a word, not an image file


def _shown(request: dict[str, Any]) -> str:
    """A request for a message: its fields, image files by their path from the working directory (the request
    file's relative paths are resolved when it is read)."""
    files = _image_fields(request)
    return "{" + ", ".join(f"{k}: {os.path.relpath(v) if k in files else v}" for k, v in request.items()) + "}"


def _image_fields(request: dict[str, Any]) -> list[str]:
    """The keys of a request that name image files: `image`, and a model's other image inputs by name (a mask)
    given an image file; another word (`colour: red`) is left to the request check, which names unknown keys."""
    return [k for k, v in request.items() if isinstance(v, str) and k not in TEXT_FIELDS
            and (k == "image" or Path(v).suffix.lower() in IMAGE_SUFFIXES)]


def _with_pixels(request: dict[str, Any], images: dict[str, bytes] | None = None) -> dict[str, Any]:
    """The request with the image files it names read into their pixels (the stored request keeps the paths);
    from `images` (path -> the file's bytes) where given."""
    from .image_files import read_image

    return {**request, **{name: read_image(request[name], data=images[request[name]] if images else None)
                          for name in _image_fields(request)}}


def image_bytes(requests: list[dict[str, Any]]) -> dict[str, bytes]:
    """The bytes of every image file the requests name, by path: read where the request file is, for workers
    on machines that do not have it."""
    found = {}
    for request in requests:
        for name in _image_fields(request):
            try:
                found[request[name]] = Path(request[name]).read_bytes()
            except OSError as exc:
                raise BuildError(f"{request[name]}: cannot read the image file ({exc.strerror or exc})") from None
    return found


def rendered_on(manifest: dict[str, Any]) -> str:
    """Where assets are rendered: this host, natively or as a fallback for the device."""
    ok, _ = backends.session_module(manifest["backend"]).host_support(manifest["session"])
    how = "the target's runtime" if ok else "host fallback (the device's own numerics may differ slightly)"
    return f"{platform.machine()} build host, {manifest['backend']}, {how}"


def add_assets(bundle_dir: str | Path, requests_path: str | Path, progress: Progress | None = None,
               executor: str = "local", address: str | None = None, workers: int | None = None) -> dict[str, Any]:
    """Render a request file into an existing bundle's assets (merged with what it has) and publish
    the new bundle atomically; returns the manifest's `assets` summary.

    executor "ray" renders shards of the request list on Ray actors (the cluster at `address`, or a
    local instance; `workers` actors, default one per CPU) into the same bytes the local loop writes.
    A second run into the same bundle waits for the first, then adds to what it published."""
    from .scale import check_executor

    check_executor(executor, address)
    if workers is not None and executor != "ray":
        raise BuildError(f"--workers applies to --executor ray (got --workers {workers} with --executor {executor}); "
                         "leave it out")

    out = Path(bundle_dir)
    requests = load_requests(requests_path)
    bundle.read_manifest(out)  # a missing bundle is named before it is locked
    with bundle.updating(out, f"{out}: another `edgegen precompute` is adding to this bundle; waiting for it"):
        return _add_assets(out, requests, requests_path, progress, executor, address, workers)


def _add_assets(out: Path, requests: list[dict[str, Any]], requests_path: str | Path, progress: Progress | None,
                executor: str, address: str | None, workers: int | None) -> dict[str, Any]:
    """add_assets, holding the bundle's lock from reading its assets to publishing the merged ones (two
    runs at once both succeeded, and the assets of the first to publish were lost)."""
    from .runtime import Generator

    report = progress or (lambda stage, done, total: None)
    old = Generator.open(out, threads=render_threads(bundle.read_manifest(out)), host_fallback=True, cache_bytes=0,
                         feature_cache_bytes=0, assets=False)
    bundle.check_output_dir(out, precompute=True)
    pack = _usable_assets(old)
    kept = KeptAssets(pack)
    if kept.dropped:
        log.warning("%s: %d damaged asset(s) dropped (re-rendered if the request file names them)", out, kept.dropped)
    staging = bundle.staging_dir(out)
    try:
        _copy_bundle(out, staging)
        if executor == "ray":
            from .scale.precompute import render_assets_on_ray

            count = render_assets_on_ray(old, requests, staging, rendered_on(old.manifest), report, kept,
                                         address, workers)
        else:
            count = render_assets(old, requests, staging, rendered_on(old.manifest), report, kept)
        manifest = {k: v for k, v in old.manifest.items() if k not in ("format", "schema_version", "files")}
        manifest["assets"] = {"count": count, "rendered_on": rendered_on(old.manifest),
                              "requests": str(Path(requests_path).resolve())}
        bundle.write_manifest(staging, manifest)
        if pack is not None:
            pack.close()
        bundle.publish(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return manifest["assets"]


def _usable_assets(gen) -> AssetPack | None:
    """The bundle's asset pack, or None where it has none or one the runtime refuses (pack.bin missing, an index
    rendered for another artifact): those assets are dropped, with a warning, and the requests render anew (the
    runtime's error advises this command; opening the bundle as the runtime does refused it the same way)."""
    if not AssetPack.present(gen.path):
        return None
    try:
        return AssetPack(gen.path, gen.content_hash)
    except DamagedBundle as exc:
        count = gen.manifest.get("assets", {}).get("count", "its")
        log.warning("%s: %s precomputed asset(s) dropped, unusable (%s); the request file's are rendered anew",
                    gen.path, count, str(exc).split("; rerun")[0])
        return None


def _copy_bundle(src: Path, dst: Path) -> None:
    """Every file but the manifest and the assets, hard-linked where the filesystem allows (bundle
    files are never modified in place, only replaced)."""
    for file in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = file.relative_to(src)
        if rel.as_posix() == bundle.MANIFEST or rel.parts[0] == ASSETS_DIR:
            continue
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(file, target)
        except OSError:
            shutil.copy2(file, target)


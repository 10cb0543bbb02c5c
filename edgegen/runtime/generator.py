"""Generator: a verified bundle behind a request API (seed, label, image -> uint8 pixels).

Requests are served, in order, from the in-memory LRU, the bundle's precomputed assets and the
optional disk cache; misses are computed through the route the request names (full, preview or a
size tier; trunk + head where the bundle has a feature split; a region for `roi`; halo-aware tiles
when a frame does not fit the memory budget) and stored back. Every cache is keyed on (bundle
content hash, canonical request), and a request always takes the same route, so the same request
gives the same pixels whichever cache serves it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections import Counter
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .. import backends, reference
from ..bundle import content_hash, read_manifest, verify_files
from ..errors import BundleError, EdgegenError, RequestError, StaticShapeError, first_line
from ..inputs import check_label, label_tensor, latent_from_seed, run_batched, seed_streams
from ..metrics import compare, quality_outputs, value_range
from ..specs import TensorSpec, format_shape
from .assets import PACK, AssetPack
from .cache import DiskCache, LRUCache
from .features import FeatureCache
from .images import image_to_tensor, model_pixels, tensor_to_uint8
from .parts import MAIN, Parts
from .requests import Request, cache_key, digest, parse
from .roi import STATIC_SHAPE_BACKENDS, RoiEngine, SpatialProgram, UnrunnableSize, static_shapes_refusal, to_rect
from .tiers import Route, Tiers, lanczos_resize

RequestDict = dict[str, Any]
MiB = 1 << 20


@dataclass
class ServeConfig:
    """Runtime settings: cache budgets (bytes), an optional disk cache directory, the activation
    memory budget above which frames are computed in tiles (default: half the target's memory
    ceiling), whether to use the bundle's precomputed assets, and the cell size (input pixels) by
    which edit() groups changed pixels."""

    cache_bytes: int = 64 * MiB
    disk_cache: str | Path | None = None
    disk_cache_bytes: int = 256 * MiB
    feature_cache_bytes: int = 32 * MiB
    memory_budget: int | None = None
    assets: bool = True
    edit_cell: int = 8

    def __post_init__(self) -> None:
        """Refuse a setting of the wrong type or range now, naming it (not later, from deep in a cache or
        the region code)."""
        for name in ("cache_bytes", "disk_cache_bytes", "feature_cache_bytes"):  # each cache refuses < 0 itself
            if not _is_int(getattr(self, name)):
                raise RequestError(f"{name}={getattr(self, name)!r}: give a byte count, an integer >= 0 (0 turns "
                                   "that cache off)")
        for name in ("memory_budget", "edit_cell"):
            value = getattr(self, name)
            if not (value is None and name == "memory_budget") and (not _is_int(value) or value < 1):
                raise RequestError(f"{name}={value!r}: give an integer >= 1")
        if not isinstance(self.assets, bool):
            raise RequestError(f"assets={self.assets!r}: give True or False")
        if self.disk_cache is not None and (not isinstance(self.disk_cache, (str, Path)) or str(self.disk_cache) == ""):
            raise RequestError(f"disk_cache={self.disk_cache!r}: give a directory path (a str or Path), or None for "
                               "no disk cache")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass
class Rendered:
    """One served image and what served it: lru, asset, disk, computed or edit."""

    pixels: np.ndarray
    served_by: str


@dataclass
class Job:
    """A checked request: its route, cache key, and (once `Generator.materialize` built them) its model
    inputs without the batch axis."""

    index: int
    request: Request
    route: Route
    key: str
    samples: dict[str, np.ndarray] | None = None

    @property
    def bucket(self) -> tuple:
        """Requests in one bucket can share a backend call (same route, input shapes, ROI)."""
        shapes = tuple(sorted(self.route.inputs.items()))
        image = self.request.image.shape if self.request.image is not None else None
        given = tuple(sorted((name, _shape(value)) for name, value in self.request.arrays.items()))
        return self.route, shapes, image, given, self.request.roi, self.key if self.request.roi else None


def _shape(value: Any) -> tuple:
    """The shape of an array or a picture (a PIL image: height, width, bands) a request gives by name."""
    if hasattr(value, "getbands"):
        return (value.height, value.width, len(value.getbands()))
    return np.shape(value)


class Generator:
    """Serves generation requests from one bundle. Create it with `Generator.open(path)`."""

    def __init__(self, path: Path, manifest: dict[str, Any], session, threads: int, host_fallback: bool = False,
                 config: ServeConfig | None = None, verify: bool = True):
        self.path = Path(path)
        self.manifest = manifest
        self.session = session
        self.threads = threads
        self.config = config or ServeConfig()
        self.inputs = [TensorSpec.from_json(s) for s in manifest["model"]["inputs"]]
        self.outputs = [TensorSpec.from_json(s) for s in manifest["model"]["outputs"]]
        self.image_outputs = [s.name for s in self.outputs if s.role == "image"]
        self._input_names = tuple(s.name for s in self.inputs)
        self._input_roles = frozenset(s.role for s in self.inputs)
        self._latents = [s for s in self.inputs if s.role == "latent"]
        self._image_inputs = [s.name for s in self.inputs if s.role == "image"]
        self._streams = seed_streams(self.inputs)
        serving = manifest.get("serving", {})
        self.content_hash = content_hash(manifest)
        self.parts = Parts(self.path, manifest, threads, host_fallback, session, verify)
        self.cache = LRUCache(self.config.cache_bytes)
        self.disk = DiskCache(self.config.disk_cache, self.config.disk_cache_bytes) if self.config.disk_cache else None
        self.assets = AssetPack(self.path, self.content_hash) \
            if self.config.assets and AssetPack.present(self.path) else None
        split = serving.get("split")
        self.features = FeatureCache(self.parts, split, self.content_hash, self.config.feature_cache_bytes) \
            if split and "cut" in split else None
        self.roi = {name: RoiEngine(SpatialProgram(entry["program"]), self.parts, entry["pre"], entry["post"],
                                    entry.get("pre_share", 0.0))
                    for name, entry in serving.get("roi", {}).items() if "program" in entry}
        self._roi_refused = {name: entry["refused"] for name, entry in serving.get("roi", {}).items()
                             if "refused" in entry}
        sizes = {s.name: tuple(s.default_shape[2:4]) for s in self.outputs if len(s.default_shape) == 4}
        self.tiers = Tiers(serving, self.image_outputs, sizes, self.features is not None,
                           {s.name: tuple(s.default_shape[1:]) for s in self.inputs if s.role == "image"})
        self.batch_parts = {int(k): v for k, v in serving.get("batch_sizes", {}).items()}
        # whether the artifact gives an input the same outputs in any batch (checked at build; see build.py)
        self.batch_invariant = manifest.get("batching", {}).get("invariant", True)
        budget = self.config.memory_budget
        self.memory_budget = budget if budget is not None else manifest["target"]["memory_mb"] * MiB // 2
        # a memory budget of one's own decides which frames are tiled, and tiles may round a level off the whole
        # frame (OpenVINO); an artifact whose outputs change with the thread count (checked at build) gives
        # other pixels at threads other than the target's: such a Generator keys its results apart from the
        # bundle's default, which the assets and other processes sharing a disk cache use
        own = [f"memory_budget={budget}"] if budget is not None else []
        threads_vary = manifest.get("threading", {}).get("invariant", True) is not True  # None: not checked
        if threads != manifest["target"]["threads"] and threads_vary:
            own.append(f"threads={threads}")
        self._key_base = hashlib.sha256("\n".join([self.content_hash, *own]).encode()).hexdigest() if own else \
            self.content_hash
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._served: Counter = Counter()
        self._edits: Counter = Counter()
        self._checked: dict[tuple, tuple] = {}  # plain request -> (Request, Route, key): a repeat skips the checks

    @classmethod
    def open(cls, path: str | Path, threads: int | None = None, verify: bool = True, host_fallback: bool = False,
             **config: Any) -> "Generator":
        """Open a bundle: check every file's sha256 (unless verify=False) and load its backend session.

        threads: intra-op threads (default: the target's, capped at this machine's cores).
        host_fallback: run a bundle built for absent hardware on this host's CPU instead.
        config: ServeConfig fields (cache_bytes, disk_cache, disk_cache_bytes, feature_cache_bytes,
        memory_budget, assets, edit_cell). The asset pack is checked entry by entry when read.
        """
        path = Path(path)
        if threads is not None and (not _is_int(threads) or threads < 1):
            raise RequestError(f"threads={threads!r}: give an integer >= 1 (or leave it out: the target's)")
        manifest = read_manifest(path)
        unknown = set(config) - {f.name for f in fields(ServeConfig)}
        if unknown:
            raise TypeError(f"Generator.open got unknown settings {sorted(unknown)}")
        if verify:
            verify_files(path, {"files": {k: v for k, v in manifest.get("files", {}).items() if k != PACK}})
        threads = threads or min(manifest["target"]["threads"], os.cpu_count() or 1)
        session = backends.open_session(manifest["backend"], path, manifest["session"], threads,
                                        [spec["name"] for spec in manifest["model"]["outputs"]], host_fallback)
        return cls(path, manifest, session, threads, host_fallback, ServeConfig(**config), verify=verify)

    # -- requests -----------------------------------------------------------------------------
    def generate(self, seed: int | None = None, label: int | None = None, image=None, output: str | None = None,
                 size: int | None = None, quality: str | None = None, roi: tuple[int, int, int, int] | None = None,
                 **arrays: np.ndarray) -> np.ndarray:
        """One image as a uint8 HxWxC array. Inputs come from seed (latents), label, image (uint8
        HxWxC or PIL), or arrays passed by input name without the batch axis. size / quality pick a
        resolution tier ("preview" or "full"); roi=(x, y, width, height) computes only that region."""
        request = {k: v for k, v in dict(seed=seed, label=label, image=image, size=size, quality=quality, roi=roi,
                                         **arrays).items() if v is not None}
        return self.render([request], output)[0].pixels

    def generate_batch(self, requests: list[RequestDict], output: str | None = None) -> np.ndarray:
        """Images for many requests (dicts with the keyword arguments of `generate`) as NxHxWxC uint8."""
        images = [r.pixels for r in self.render(requests, output)]
        if len({i.shape for i in images}) > 1:
            raise RequestError(f"the requests give images of different sizes ({sorted({i.shape for i in images})}); "
                               "use render() for mixed sizes")
        return np.stack(images)

    def render(self, requests: list[RequestDict], output: str | None = None) -> list[Rendered]:
        """Serve many requests; each result says what served it. Misses sharing a route run as one batch."""
        if not isinstance(requests, (list, tuple)):
            raise RequestError(f"generate_batch and render take a list of requests (dicts), got a "
                               f"{type(requests).__name__}; for one request call generate(**request)")
        if not requests:
            raise RequestError("generate_batch needs at least one request")
        return self.serve([self._job(i, r, output) for i, r in enumerate(requests)])

    def serve(self, jobs: list[Job], looked_up: bool = False, counted: bool = True) -> list[Rendered]:
        """Serve prepared requests (see `prepare`): cached ones from the caches, misses sharing a bucket as
        one backend call. looked_up: the caller already looked them up, and counted their misses (the
        caches are asked again for what an earlier call has just computed). counted=False: images a
        request needs on the way (an edit's previous output), not requests: neither served nor missed."""
        results: list[Rendered | None] = [self.lookup(job.key, count_miss=counted and not looked_up) for job in jobs]
        groups: dict[tuple, list[tuple[int, Job]]] = {}
        for n, (job, found) in enumerate(zip(jobs, results)):
            if found is None:  # an artifact whose results depend on the batch size computes each alone
                groups.setdefault(job.bucket if self.batch_invariant else n, []).append((n, job))
        for group in groups.values():
            firsts: dict[str, Job] = {}  # a request asked twice in one call (concurrent clients) is computed once
            for _, job in group:
                firsts.setdefault(job.key, job)
            computed = dict(zip(firsts, self._compute(list(firsts.values()))))
            for key, pixels in computed.items():
                self._remember(key, pixels)
            for n, job in group:
                pixels = computed[job.key]
                results[n] = Rendered(pixels if firsts[job.key] is job else pixels.copy(), "computed")
        if counted:
            with self._count_lock:
                self._served.update(found.served_by for found in results)
        return results

    def record(self, served_by: str) -> None:
        """Count one request as served by a cache, the assets or the backend (see stats())."""
        with self._count_lock:
            self._served[served_by] += 1

    def key_of(self, request: RequestDict, output: str | None = None) -> str:
        """The cache key of a request: sha256 of the bundle content hash and the canonical request."""
        return self._job(0, request, output).key

    def prepare(self, request: RequestDict, output: str | None = None, index: int = 0) -> Job:
        """Check a request (RequestError if it is bad, naming it as request `index`) into a Job: its cache key,
        route and batch bucket."""
        return self._job(index, request, output)

    def materialize(self, job: Job) -> None:
        """Build a job's model inputs now (e.g. in a client's thread, so a batching worker only stacks them)."""
        job.samples = {s.name: self._sample(s, job.request, job.index, job.route) for s in self.inputs}

    def lookup(self, key: str, count_miss: bool = True) -> Rendered | None:
        """A cached image for a key (LRU, then assets, then disk), or None (count_miss: counted as a miss)."""
        found = self.cache.get(key, count_miss)
        if found is not None:
            return Rendered(found.copy(), "lru")
        if self.assets is not None:
            found = self.assets.get(key, count_miss)
            if found is not None:
                return Rendered(found, "asset")
        if self.disk is not None:
            found = self.disk.get(key, count_miss)
            if found is not None:
                self._remember(key, found, disk=False)
                return Rendered(found, "disk")
        return None

    def _remember(self, key: str, pixels: np.ndarray, disk: bool = True) -> None:
        """Store a result: a read-only copy in the LRU (callers always get their own arrays), and on disk."""
        if self.cache.stats.budget_bytes > 0:
            frozen = pixels.copy()
            frozen.flags.writeable = False
            self.cache.put(key, frozen)
        if disk and self.disk is not None:
            self.disk.put(key, pixels)

    def _job(self, index: int, raw: RequestDict, output: str | None) -> Job:
        plain = _plain(raw, output)
        known = self._checked.get(plain) if plain is not None else None
        if known is not None:
            return Job(index, *known)
        job = self._check(index, raw, output)
        if plain is not None:
            if len(self._checked) >= CHECKED_REQUESTS:
                self._checked.clear()
            self._checked[plain] = (job.request, job.route, job.key)
        return job

    def _check(self, index: int, raw: RequestDict, output: str | None) -> Job:
        request = parse(raw, index, self._input_names)
        for field, role in (("seed", "latent"), ("label", "label"), ("image", "image")):
            if getattr(request, field) is not None and role not in self._input_roles:
                given = f"{'an' if field == 'image' else 'a'} {field}"
                raise RequestError(f"request {index} gives {given}, but this model has no {role} input (its inputs: "
                                   f"{', '.join(f'{s.name} ({s.role})' for s in self.inputs)}); leave {field} out")
        if request.seed is not None and self._latents and all(self._raw_array(s, request.arrays)
                                                              for s in self._latents):
            raise RequestError(f"request {index} gives a seed and an array for every latent input "
                               f"({', '.join(s.name for s in self._latents)}): the seed would be unused; leave "
                               "one out")
        size = request.size
        if size is None and request.image is not None:  # an image of a compiled size picks that size
            size = self.tiers.size_of_image(request.image.shape[:2])
        route = self.tiers.route(request.output or output, size, request.quality)
        if request.roi is not None and route.upscale:
            raise RequestError(f"request {index}: roi is not offered with an upscaled preview; ask for the raw "
                               f"preview, output={route.output!r} (--output-name on the command line), to get a "
                               "region of it")
        inputs = [(s.name, self._describe(s, request, index)) for s in self.inputs]
        key = cache_key(self._key_base, (route.tier, route.output, route.size, request.roi), inputs)
        return Job(index, request, route, key)

    def _describe(self, spec: TensorSpec, request: Request, index: int) -> str:
        """The canonical form of what a request gives one input (checked, not yet materialized)."""
        if self._raw_array(spec, request.arrays):
            return f"array:{digest(np.asarray(request.arrays[spec.name]))}"
        if spec.role == "latent":
            if request.seed is None:
                raise RequestError(f"request {index} needs a seed (or a {spec.name!r} array) for the latent input")
            return f"seed:{request.seed}"
        if spec.role == "label":
            label = request.label if request.label is not None else request.arrays.get(spec.name)
            if label is None:
                top = f"0..{spec.num_classes - 1}" if spec.num_classes else "an integer"
                raise RequestError(f"request {index} needs a label ({top}) for input {spec.name!r}")
            check_label(spec, label, f"request {index}: ")
            return f"label:{int(label)}"
        picture = self._picture(spec, request, index)
        if picture is not None:
            return f"image:{digest(model_pixels(picture, spec.default_shape[1]))}"
        raise self._nothing_for(spec, index)

    # -- computing misses ---------------------------------------------------------------------
    def _compute(self, jobs: list[Job]) -> list[np.ndarray]:
        route, roi = jobs[0].route, jobs[0].request.roi
        for job in jobs:
            if job.samples is None:
                self.materialize(job)
        feeds = self._stack([job.samples for job in jobs])
        with self._lock:
            with self._sizes_checked(feeds):
                raw = self._region(route, feeds, to_rect(roi)) if roi is not None else self._frame(route, feeds)
        if len(raw) != len(jobs):  # a backend fault; serving fewer images would leave requests unanswered
            raise BundleError(f"{self.path}: the {self.manifest['backend']} backend returned {len(raw)} image(s) "
                              f"for {len(jobs)} request(s); nothing was served from that call")
        spec = self._spec(route.output)
        pixels = tensor_to_uint8(raw, spec.range or [0.0, 1.0], spec.truncates)
        if route.upscale:
            pixels = self._upscale(route, raw, pixels)
        return [np.array(p) for p in pixels]

    def _spec(self, name: str) -> TensorSpec:
        return next(s for s in self.outputs if s.name == name)

    def _frame(self, route: Route, feeds: dict[str, np.ndarray]) -> np.ndarray:
        engine = self.roi.get(route.output)
        if route.tier == "full" and engine is not None:
            count = len(next(iter(feeds.values())))
            if count > 1 and self._too_big(engine, route, feeds):  # each frame as it runs alone (whole or in
                # tiles by its own size), so that how a request is computed does not depend on its batch
                return np.concatenate([self._frame(route, {k: v[i:i + 1] for k, v in feeds.items()})
                                       for i in range(count)])
            roots = engine.roots(feeds) if engine.pre is None or self._too_big(engine, route, feeds) else None
            tile = engine.tile_size(roots, self.memory_budget) if roots is not None else None
            if tile is not None:
                return engine.tiled(roots, tile)
        if route.trunk:
            return self.features.run(route.part, feeds)[route.output]
        if route.part == MAIN and self.batch_parts:
            return self._run_in_batches(feeds)[route.output]
        return self.parts.run(route.part, feeds)[route.output]

    def _too_big(self, engine: RoiEngine, route: Route, feeds: dict[str, np.ndarray]) -> bool:
        """Whether a frame's estimated activations exceed the memory budget: its output size is the verified
        one scaled as the request's map input (an image) is to the verified one."""
        h, w = self._spec(route.output).default_shape[2:4]
        spec = next((s for s in self.inputs if len(s.default_shape) == 4 and feeds[s.name].ndim == 4), None)
        if spec is not None:
            (vh, vw), (fh, fw) = spec.default_shape[2:4], feeds[spec.name].shape[2:4]
            h, w = h * fh / vh, w * fw / vw
        return engine.program.bytes_per_pixel * h * w * len(next(iter(feeds.values()))) > self.memory_budget

    def _region(self, route: Route, feeds: dict[str, np.ndarray], rect) -> np.ndarray:
        engine = self._engine(route.output)
        (y0, y1), (x0, x1) = rect
        if engine.frame_first:
            frame = self._frame(route, feeds)
            engine.check(rect, frame.shape[2:4])
            return frame[:, :, y0:y1, x0:x1]
        roots = engine.roots(feeds)
        engine.check(rect, engine.frame_size(roots))
        if engine.crops_nothing(roots, rect):
            return self._frame(route, feeds)[:, :, y0:y1, x0:x1]
        return engine.region(roots, rect)

    def _engine(self, output: str) -> RoiEngine:
        if output in self.roi:
            return self.roi[output]
        backend = self.manifest["backend"]
        why = self._roi_refused.get(output, static_shapes_refusal(backend) if backend in STATIC_SHAPE_BACKENDS else
                                    "the bundle was built without --roi; rebuild it with `--roi` (a model with a "
                                    "global op, such as InstanceNormalization or attention, cannot offer regions, "
                                    "and that build then names the op)")
        raise RequestError(f"region-of-interest requests are not offered for output {output!r}: {why}")

    def _run_in_batches(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A fixed-batch model run with its batch-N artifacts: chunks of the largest batch, and what
        is left in one call of the smallest batch that holds it (padded)."""
        count, start, parts = len(next(iter(feeds.values()))), 0, []
        sizes = sorted(self.batch_parts)
        while start < count:
            left = count - start
            size = next((s for s in sizes if s >= left), sizes[-1])
            chunk = {k: v[start:start + size] for k, v in feeds.items()}
            parts.append(self.parts.run(self.batch_parts[size], chunk))
            start += size
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def _upscale(self, route: Route, raw: np.ndarray, pixels: np.ndarray) -> np.ndarray:
        if route.upscale == "lanczos":  # by the build's ratio: an image model's preview follows its image's size
            (height, width), (ph, pw) = route.size, self.tiers.preview["size"]
            return lanczos_resize(pixels, round(pixels.shape[1] * height / ph), round(pixels.shape[2] * width / pw))
        spec_in = self.parts.inputs("upscaler")[0]
        lo, hi = self._spec(route.output).range or [0.0, 1.0]
        a, b = spec_in.range or [0.0, 1.0]
        scaled = ((raw.astype(np.float32) - lo) / (hi - lo) * (b - a) + a).astype(spec_in.dtype)
        with self._lock:
            out = self.parts.run("upscaler", {spec_in.name: scaled})
        spec_out = self.parts.outputs("upscaler")[0]
        return tensor_to_uint8(out[spec_out.name], spec_out.range or [0.0, 1.0])

    # -- incremental editing ----------------------------------------------------------------------
    def _dirty_rects(self, engine, image: str, changed: np.ndarray, roots: dict[str, np.ndarray], old: np.ndarray,
                     job) -> list | None:
        """Output rectangles an edit must recompute: what the changed pixels reach, and, where the region
        program starts from roots computed whole from the image (an attention map; a pixel unshuffle, whose
        output is the only root), what each root's changed values reach; None when a whole-frame root changed
        (the frame is recomputed)."""
        computed = [r for r in engine.program.roots + engine.program.side if r != image]
        before = engine.roots(self._feeds([replace(job.request, image=old)], job.route)) if computed else {}
        rects = engine.dirty_rects(changed, image, roots, self.config.edit_cell) \
            if image in engine.program.roots else []
        for name in computed:
            differs = before[name] != roots[name]
            if not differs.any():
                continue
            if name in engine.program.side:
                return None
            rects += engine.dirty_rects(np.any(differs[0], axis=0), name, roots, self.config.edit_cell)
        return rects

    def edit(self, previous, image, output: str | None = None) -> np.ndarray:
        """The output for `image`, computed by recomputing only what changed since `previous` (the
        input of an earlier request): the output each group of changed pixels reaches is recomputed
        as a region and pasted into the previous output (served from the cache, or computed now)."""
        if previous is None:
            raise RequestError("edit() needs the previous image, the input of an earlier request; for a first image, "
                               "call generate(image=...)")
        engine = self._engine(self.tiers.route(output, None, None).output)
        spec = next((s for s in self.inputs if s.role == "image"), None)
        if spec is None or len(self.inputs) != 1 or (spec.name not in engine.program.roots and engine.pre is None):
            raise RequestError("edit() needs an image-to-image model with one image input whose output is "
                               "computed by local ops from it")
        # compared as the pixels the model takes: a grey or RGBA picture and its RGB form are one picture
        old, new = (model_pixels(x, spec.default_shape[1]) for x in (previous, image))
        if old.shape != new.shape:
            raise RequestError(f"edit(): previous image is {old.shape[1]}x{old.shape[0]}, the new one "
                               f"{new.shape[1]}x{new.shape[0]}; an edit keeps the size")
        job = self._job(0, {"image": new, "output": output}, None)
        found = self.lookup(job.key) or self.lookup(_edited(job.key), count_miss=False)
        if found is not None:
            self.record(found.served_by)
            return found.pixels
        previous_job = self._job(0, {"image": old, "output": output}, None)
        earlier = self.lookup(_edited(previous_job.key), count_miss=False)  # an edit's, where it came from one
        base = earlier.pixels if earlier is not None else self.serve([previous_job], counted=False)[0].pixels
        changed = np.any((old != new).reshape(old.shape[0], old.shape[1], -1), axis=2)
        feeds = self._feeds([job.request], job.route)
        with self._lock:
            roots = engine.roots(feeds)
            sizes = engine.sizes(roots)
            h, w = sizes[engine.program.output]
            rects = self._dirty_rects(engine, spec.name, changed, roots, old, job)
            area = h * w if rects is None else sum(engine.window_area(r, sizes) for r in rects)
            patches = [(r, engine.region(roots, r)) for r in rects] if area < h * w and not engine.frame_first else None
        with self._count_lock:
            self._edits.update(edits=1, rects=len(rects or ()), computed_pixels=min(area, h * w), frame_pixels=h * w)
        if patches is None:  # the change reaches so far that the whole frame is cheaper
            return self.serve([job], looked_up=True)[0].pixels
        out_spec = self._spec(job.route.output)
        pixels = base.copy()
        for ((y0, y1), (x0, x1)), patch in patches:
            pixels[y0:y1, x0:x1] = tensor_to_uint8(patch, out_spec.range or [0.0, 1.0], out_spec.truncates)[0]
        self._remember(_edited(job.key), pixels)  # not under the request's own key: where regions are not bit-exact
        self.record("edit")  # (OpenVINO int8 at an unchecked size), a plain request would get the edit's pixels
        return pixels

    # -- model inputs ---------------------------------------------------------------------------
    def feeds(self, requests: list[RequestDict]) -> dict[str, np.ndarray]:
        """Model inputs (with batch axis) for a list of requests."""
        parsed = [parse(r, i, self._input_names) for i, r in enumerate(requests)]
        return self._feeds(parsed, Route("full", MAIN, self.image_outputs[0] if self.image_outputs else ""))

    def _feeds(self, requests: list[Request], route: Route) -> dict[str, np.ndarray]:
        return self._stack([{s.name: self._sample(s, r, i, route) for s in self.inputs}
                            for i, r in enumerate(requests)])

    def _stack(self, samples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Per-request inputs (no batch axis) stacked into one batch; RequestError when their shapes differ."""
        feeds = {}
        for name in (s.name for s in self.inputs):
            items = [sample[name] for sample in samples]
            if len({a.shape for a in items}) > 1:
                raise RequestError(f"requests in one batch give input {name!r} different shapes "
                                   f"({sorted({a.shape for a in items})}); batch only same-sized requests")
            feeds[name] = np.stack(items)
        return feeds

    def _picture(self, spec: TensorSpec, request: Request, index: int) -> Any:
        """The 8-bit picture a request gives an image input: `image` feeds the model's first image input, a
        picture passed by name (a uint8 HxWxC array or a PIL image) any image input; None when it gives none.
        A second image input (a mask, a style image) is never fed the first one's picture."""
        if spec.role != "image":
            return None
        given = request.arrays.get(spec.name)
        if given is not None and self._is_picture(spec, given):
            return given
        if request.image is None:
            return None
        if spec.name != self._image_inputs[0]:
            name = spec.name
            raise RequestError(f"request {index}: this model takes {len(self._image_inputs)} images "
                               f"({', '.join(self._image_inputs)}); image feeds {self._image_inputs[0]!r}, and "
                               f"{name!r} must be given by name: {name}=<uint8 HxWxC picture> in the SDK, --input "
                               f"{name}=FILE to edgegen generate, a base64 {name!r} field over HTTP, {name}: FILE in "
                               "a request file")
        return request.image

    def _nothing_for(self, spec: TensorSpec, index: int) -> RequestError:
        """A request that gives an input nothing, told how to give it in each interface."""
        if spec.role == "image" and spec.name == self._image_inputs[0]:
            how = ("give a picture: image= (a uint8 HxWxC array or a PIL image) in the SDK, an \"image\" field (a "
                   "base64 PNG or JPEG) over HTTP, --image FILE to edgegen generate")
        elif spec.role == "image":
            how = (f"give a picture: {spec.name}= in the SDK, a {spec.name!r} field (a base64 PNG or JPEG) over HTTP, "
                   f"--input {spec.name}=FILE to edgegen generate")
        else:
            how = f"pass {spec.name}= an array (the SDK's generate or run)"
        return RequestError(f"request {index} gives nothing for input {spec.name!r} (role {spec.role}); {how}")

    def _raw_array(self, spec: TensorSpec, arrays: dict[str, Any]) -> bool:
        """Whether a request gives an input as a tensor by name (not a scalar label, not an 8-bit picture)."""
        given = arrays.get(spec.name)
        return given is not None and not (spec.role == "label" and np.ndim(given) == 0) \
            and not self._is_picture(spec, given)

    @staticmethod
    def _is_picture(spec: TensorSpec, given: Any) -> bool:
        """An 8-bit picture given for an image input: a PIL image, or a uint8 HxW / HxWxC array."""
        if spec.role != "image":
            return False
        if hasattr(given, "getbands"):
            return True
        return isinstance(given, np.ndarray) and given.dtype == np.uint8 and (
            given.ndim == 2 or (given.ndim == 3 and given.shape[2] in (1, 3, 4)))

    def _sample(self, spec: TensorSpec, request: Request, index: int, route: Route) -> np.ndarray:
        arrays = request.arrays
        if self._raw_array(spec, arrays):
            return self._check_array(spec, np.asarray(arrays[spec.name]), batched=False)
        shape = route.inputs.get(spec.name, tuple(spec.default_shape[1:]))
        if spec.role == "latent":
            if request.seed is None:
                raise RequestError(f"request {index} needs a seed (or a {spec.name!r} array) for the latent input")
            return latent_from_seed(request.seed, list(shape), self._streams[spec.name]).astype(spec.dtype)
        if spec.role == "label":
            label = request.label if request.label is not None else arrays.get(spec.name)
            if label is None:
                top = f"0..{spec.num_classes - 1}" if spec.num_classes else "an integer"
                raise RequestError(f"request {index} needs a label ({top}) for input {spec.name!r}")
            return label_tensor(spec, label, shape)
        picture = self._picture(spec, request, index)
        if picture is not None:
            tensor = image_to_tensor(picture, spec.default_shape[1], spec.range or [0.0, 1.0], spec.dtype)
            if spec.name not in route.inputs:
                default = tuple(spec.default_shape[1:])
                if tensor.shape != default and None not in spec.shape[2:]:  # a fixed-size export's other tiers
                    taken = self.tiers.image_sizes(spec.name, default)
                    if len(taken) > 1 and tensor.shape not in taken:
                        raise RequestError(f"request {index}: a {tensor.shape[2]}x{tensor.shape[1]} image (input "
                                           f"{spec.name!r}); this bundle's tiers take "
                                           f"{', '.join(f'{w}x{h}' for _, h, w in sorted(taken))} images")
                return self._check_array(spec, tensor, batched=False, computed=True)
            if tensor.shape != tuple(route.inputs[spec.name]):
                _, h, w = route.inputs[spec.name]
                size = max(route.size) if route.size else request.size
                raise RequestError(f"request {index}: size {size} is made from a {w}x{h} image (input {spec.name!r}), "
                                   f"got {tensor.shape[2]}x{tensor.shape[1]}; give an image of that size, or leave "
                                   "size out")
            return tensor
        raise self._nothing_for(spec, index)

    # -- raw tensors ----------------------------------------------------------------------------
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on explicit batched input arrays, checked against the model's spec."""
        names = {s.name for s in self.inputs}
        if set(feeds) != names:
            raise RequestError(f"run() needs exactly the inputs {sorted(names)}; got {sorted(feeds)}")
        any_batch = bool(self.batch_parts)
        checked = {s.name: self._check_array(s, np.asarray(feeds[s.name]), batched=True, any_batch=any_batch)
                   for s in self.inputs}
        batches = {name: len(array) for name, array in checked.items()}
        if len(set(batches.values())) > 1:
            raise RequestError(f"run() inputs give different batch sizes {batches}; give every input the same "
                               "number of samples")
        if 0 in batches.values():
            raise RequestError("run() inputs hold no samples (a batch of 0); give at least one")
        if self.manifest["backend"] in STATIC_SHAPE_BACKENDS:
            self._check_static_sizes(checked)
        outputs = self.run_prepared(checked)
        specs = {s.name: s for s in self.outputs}
        return {name: specs[name].to_source(array) if name in specs else array for name, array in outputs.items()}

    def run_prepared(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The backend on batched inputs already checked and in the form the bundle computes on (run() after its
        checks; the outputs in that form too): what the artifact itself costs, as benchmarks time it. One call
        at a time, as every backend call of the Generator (an OpenVINO infer request or a LiteRT interpreter
        shared by two threads computes one call's outputs on the other's inputs)."""
        with self._lock, self._sizes_checked(feeds):  # a fixed-batch export built with --batch-sizes: batch-N parts
            if self.batch_parts:
                return self._run_in_batches(feeds)
            return run_batched(self.session.run, self.inputs, feeds)

    def _check_static_sizes(self, feeds: dict[str, np.ndarray]) -> None:
        """RequestError, in the model file's form, for an input of another size than a static-shape artifact
        was built at."""
        for spec in self.inputs:
            got = list(feeds[spec.name].shape)
            if got[1:] != list(spec.default_shape[1:]):
                raise self._static_shape_error(spec, got, spec.default_shape)

    def _static_shape_error(self, spec: TensorSpec, got: list[int], built: list[int]) -> RequestError:
        backend = self.manifest["backend"]
        return RequestError(
            f"input {spec.name!r} has shape {format_shape(spec.source_dims(got))} but this {backend} bundle was built "
            f"for {format_shape(spec.source_dims(built))} ({backend} artifacts have static shapes); give it that "
            f"shape, or build a bundle for this one with --input-shape "
            f"{spec.name}={format_shape(spec.source_dims([1, *got[1:]]))}")

    @contextlib.contextmanager
    def _sizes_checked(self, feeds: dict[str, np.ndarray]) -> Iterator[None]:
        """Turn a backend's own failure on input shapes the build never verified (an image size the network
        cannot take) into a RequestError; any other failure stays what it is, a fault of the bundle or backend."""
        try:
            yield
        except StaticShapeError as exc:  # the backend's own check, restated in the model file's form (NHWC)
            spec = next((s for s in self.inputs if s.name == exc.name), None)
            if spec is None:
                raise
            raise self._static_shape_error(spec, exc.given, exc.built) from None
        except EdgegenError:
            raise
        except Exception as exc:
            new = [s for s in self.inputs
                   if s.name in feeds and tuple(feeds[s.name].shape[1:]) != tuple(s.default_shape[1:])]
            if not new:
                raise
            given = ", ".join(f"{s.name!r} {format_shape(s.source_dims(feeds[s.name].shape)[1:])}" for s in new)
            verified = ", ".join(f"{s.name!r} {format_shape(s.source_dims(s.default_shape)[1:])}" for s in new)
            # maps ([N, C, H, W]) the request did not resize, e.g. a seeded map made at its verified size
            kept = [s for s in self.inputs if s.name in feeds and s not in new and len(s.default_shape) >= 4]
            advice = ("A network that downsamples (a U-Net, an encoder) needs sides that are multiples of its total "
                      "stride; resize or pad the image") if not kept else (
                f"{', '.join(f'{s.name!r} {format_shape(s.source_dims(s.default_shape)[1:])}' for s in kept)} "
                f"kept {'its' if len(kept) == 1 else 'their'} verified size (made from the seed or label where the "
                "request did not give it); give an image of the verified size, or give "
                f"{', '.join(s.name for s in kept)} by name at the size the image needs")
            reason = first_line(exc)
            reason = reason if len(reason) <= 300 else reason[:300].rsplit(" ", 1)[0] + " ..."
            found_by = "the region planner" if isinstance(exc, UnrunnableSize) else \
                f"the {self.manifest['backend']} backend"
            raise RequestError(f"the model cannot run at input shape {given} ({found_by}: {reason}); the bundle was "
                               f"verified at {verified}. {advice}") from exc

    @staticmethod
    def _check_array(spec: TensorSpec, array: np.ndarray, batched: bool, computed: bool = False,
                     any_batch: bool = False) -> np.ndarray:
        """A caller's array in the model file's form checked and turned into what the bundle computes on (or,
        computed=True, an array already in that form, e.g. made from a picture, checked); any_batch: a batch
        of any size (a fixed-batch export with batch-N parts)."""
        declared = spec.shape if computed else spec.source_shape
        declared = ([None, *declared[1:]] if any_batch else declared) if batched else declared[1:]
        dtype = spec.dtype if computed else spec.source_dtype
        wanted = "x".join("N" if (d is None and batched and i == 0) else ("?" if d is None else str(d))
                          for i, d in enumerate(declared))
        if dtype == "float16" and array.dtype == np.float32:  # a float16 export's inputs, given in float32
            array = array.astype(np.float16)
        if spec.role == "label" and array.dtype.kind in "iu" and np.dtype(dtype).kind in "iu" and \
                array.dtype != np.dtype(dtype):  # numpy's int64 for an int32 label: the same class indices
            info = np.iinfo(dtype)
            if array.size and (array.min() < info.min or array.max() > info.max):
                raise RequestError(f"input {spec.name!r}: labels {array.min()}..{array.max()} do not fit {dtype}")
            array = array.astype(dtype)
        if array.dtype != np.dtype(dtype):
            raise RequestError(f"input {spec.name!r} must be {dtype}{' (or float32)' * (dtype == 'float16')}, got "
                               f"{array.dtype}; convert with .astype(np.{dtype})")
        if array.ndim != len(declared) or any(d is not None and d != s for d, s in zip(declared, array.shape)):
            raise RequestError(f"input {spec.name!r} must have shape {wanted or 'scalar'}"
                               f"{' (with the batch axis)' if batched else ' (without the batch axis)'}, "
                               f"got {'x'.join(map(str, array.shape)) or 'scalar'}")
        if spec.role == "label":
            for value in np.unique(array):
                check_label(spec, int(value))
        if not computed and array.dtype.kind == "f" and not np.isfinite(array).all():
            raise RequestError(f"input {spec.name!r} holds NaN or infinite values; give finite numbers")
        return array if computed else spec.from_source(array)

    # -- counters and self-test --------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Requests by what served them, and every cache's counters (hits, misses, bytes, evictions)."""
        return {"served": dict(self._served), "edits": dict(self._edits), "lru": self.cache.stats.to_json(),
                "assets": self.assets.stats.to_json() if self.assets else None,
                "disk": self.disk.stats.to_json() if self.disk else None,
                "features": self.features.cache.stats.to_json() if self.features else None}

    def self_test(self) -> dict[str, Any]:
        """Run the bundle's reference input and compare each output, as run() gives it, with its reference output
        within that output's criteria (reference.criteria: max-abs, or the images' or its own min PSNR)."""
        feeds, expected_outputs = reference.load(self.path, self.manifest)
        with self._lock:
            got = self.session.run(feeds)
        tolerance = self.manifest["reference"]["tolerance"]
        measured = {s.name for s in quality_outputs(self.outputs)}  # the images (as in the build)
        wanted = reference.criteria(tolerance, [s.name for s in self.outputs], measured)
        outputs = {}
        for spec in self.outputs:  # as run() gives them, as the build measured them (a float16 export's in float16)
            expected = reference.delivered(spec, expected_outputs[spec.name])
            report = compare(expected, reference.delivered(spec, got[spec.name]), value_range(spec.range, expected))
            outputs[spec.name] = {**report, "tolerance": wanted[spec.name], "quality": spec.name in measured,
                                  "pass": reference.meets(report, wanted[spec.name])}
        return {"pass": all(o["pass"] for o in outputs.values()), "tolerance": tolerance, "outputs": outputs}


def _edited(key: str) -> str:
    """The cache key of an edit's result for the request whose key is given: kept apart from what computing
    the request gives, so that a request is always served the pixels of its own route."""
    return hashlib.sha256(f"edit\n{key}".encode()).hexdigest()


CHECKED_REQUESTS = 4096  # plain requests remembered as checked (a hit skips parsing and hashing)


def _plain(raw: RequestDict, output: str | None) -> tuple | None:
    """A hashable form of a request made only of ints, strings and an roi of ints (types included: a
    seed True or 1.0 must still be refused), or None for anything else (arrays, images)."""
    if type(raw) is not dict:
        return None
    items = []
    for name, value in raw.items():
        if type(value) in (list, tuple) and all(type(v) is int for v in value):
            value = ("roi", *value)
        elif value is not None and type(value) not in (int, str):
            return None
        items.append((name, type(value), value))
    return (output, *items)

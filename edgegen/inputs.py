"""Deterministic model inputs from small request keys (numpy only; used on the device too).

A seed becomes a latent through numpy's PCG64, so a request (seed, label, ...) is a small
hashable key that always gives the same pixels for a given bundle.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from .errors import RequestError
from .specs import TensorSpec


def latent_from_seed(seed: int, shape: list[int], stream: int = 0) -> np.ndarray:
    """A standard-normal float32 latent, the same for the same seed on every machine; `stream` k > 0 (a
    model's second noise input, see seed_streams) draws from a stream of its own."""
    bits = np.random.PCG64(int(seed) if stream == 0 else [int(seed), stream])
    return np.random.Generator(bits).standard_normal(tuple(shape), dtype=np.float32)


def seed_streams(specs: list[TensorSpec]) -> dict[str, int]:
    """The stream each input drawn from a seed takes (not labels, not images): its position among them, so a
    model with a latent and a noise input gets independent draws for one seed."""
    drawn = [s.name for s in specs if s.role not in ("label", "image")]
    return {name: i for i, name in enumerate(drawn)}


def synthetic_image(seed: int, shape: list[int], value_range: list[float]) -> np.ndarray:
    """A smooth random CHW image in value_range (blocky noise, box-blurred), for verification inputs."""
    rng = np.random.Generator(np.random.PCG64(int(seed)))
    c, h, w = shape
    coarse = rng.random((c, max(1, h // 8 + 1), max(1, w // 8 + 1)), dtype=np.float32)
    img = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)[:, :h, :w]
    kernel = 5
    padded = np.pad(img, ((0, 0), (kernel // 2, kernel // 2), (kernel // 2, kernel // 2)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (kernel, kernel), axis=(1, 2))
    img = windows.mean(axis=(-1, -2))
    lo, hi = value_range
    return (lo + img * (hi - lo)).astype(np.float32)


def check_label(spec: TensorSpec, label: int, where: str = "") -> None:
    """Refuse a label outside [0, num_classes); `where` starts the message (e.g. "request 3: ")."""
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
        raise RequestError(f"{where}label must be an integer, got {label!r}")
    if label < 0 or (spec.num_classes is not None and label >= spec.num_classes):
        top = f"0..{spec.num_classes - 1}" if spec.num_classes is not None else ">= 0"
        raise RequestError(f"{where}label {label} is out of range for input {spec.name!r}: this model takes "
                           f"labels {top}")


def label_tensor(spec: TensorSpec, label: int, shape) -> np.ndarray:
    """One sample of a label input (no batch axis): the class index, or for a float input of one
    value per class (a one-hot condition, see roles.py) the one-hot vector."""
    check_label(spec, label)
    if spec.one_hot:
        vector = np.zeros(shape, spec.dtype)
        vector[..., int(label)] = 1
        return vector
    return np.full(shape, label, dtype=spec.dtype)


def sample(spec: TensorSpec, seed: int, label: int | None = None, stream: int = 0) -> np.ndarray:
    """One sample (no batch axis) for an input spec: latent from seed, label, or a synthetic image."""
    shape = spec.default_shape[1:]
    if spec.role == "label":
        if label is None:
            label = seed % spec.num_classes if spec.num_classes else 0
        return label_tensor(spec, label, shape)
    if spec.role == "image":
        image = synthetic_image(seed, shape, spec.range or [0.0, 1.0])
        if spec.source_dtype and np.dtype(spec.source_dtype).kind in "iu":  # the whole pixels a uint8 export takes
            image = np.rint(image)
        return image.astype(spec.dtype)
    noise = latent_from_seed(seed, shape, stream)
    if np.dtype(spec.dtype) == np.bool_:  # a mask: half of it set (noise cast to bool was all True)
        return noise > 0
    return noise.astype(spec.dtype)


def sample_feeds(specs: list[TensorSpec], seeds: list[int]) -> dict[str, np.ndarray]:
    """A batch of verification inputs, one sample per seed (labels cycle with the seed)."""
    streams = seed_streams(specs)
    return {s.name: np.stack([sample(s, seed, stream=streams.get(s.name, 0)) for seed in seeds]) for s in specs}


def fixed_batch(specs: list[TensorSpec]) -> int | None:
    """The batch size a model was exported with, or None when its batch axis is dynamic."""
    return next((s.shape[0] for s in specs if s.shape and not s.batch_dynamic), None)


def cost_batch(specs: list[TensorSpec]) -> int:
    """The batch the default shapes are at, and so the node costs: 1, the batch a model was exported with,
    or the one `--input-shape` gave."""
    return next((s.default_shape[0] for s in specs if s.default_shape), 1)


def run_batched(run, specs: list[TensorSpec], feeds: dict[str, np.ndarray],
                per_call: int | None = None) -> dict[str, np.ndarray]:
    """Run a batch in one call when every input has a dynamic batch axis (in calls of at most per_call
    samples when given); for a model exported with a fixed batch B, in chunks of B (the last one padded
    by repeating its final sample, then trimmed)."""
    size = fixed_batch(specs)
    count = len(next(iter(feeds.values())))
    if size is None and (per_call is None or count <= per_call):
        return run(feeds)
    if size is None:
        parts = [run({k: v[start:start + per_call] for k, v in feeds.items()}) for start in range(0, count, per_call)]
    else:
        parts = [{k: v[:real] for k, v in run(chunk).items()} for chunk, real in chunks(feeds, size)]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def chunks(feeds: dict[str, np.ndarray], size: int) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """Consecutive chunks of `size` samples, the last padded by repeating its final sample: (chunk, the
    number of real samples in it)."""
    count = len(next(iter(feeds.values())))
    for start in range(0, count, size):
        chunk = {k: v[start:start + size] for k, v in feeds.items()}
        real = len(next(iter(chunk.values())))
        if real < size:
            chunk = {k: np.concatenate([v, np.repeat(v[-1:], size - real, axis=0)]) for k, v in chunk.items()}
        yield chunk, real

"""Requests as small canonical keys.

A request names its inputs the way a person thinks of them (seed, label, image, size, quality,
roi, output, or arrays by input name). `parse` checks the fields that need no model knowledge;
`cache_key` hashes the bundle's content hash with the canonical form of the request as the
generator resolved it, so equal requests share one key whichever way they were spelled.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import RequestError
from .images import not_pixels, picture_array

FIELDS = ("seed", "label", "image", "size", "quality", "roi", "output")
QUALITIES = ("full", "preview")
MAX_SEED = 2 ** 63 - 1
_FIELD_SET = frozenset(FIELDS)


@dataclass(slots=True)
class Request:
    """One parsed request; `arrays` holds inputs given by name (without the batch axis)."""

    seed: int | None = None
    label: int | None = None
    image: np.ndarray | None = None
    size: int | None = None
    quality: str | None = None
    roi: tuple[int, int, int, int] | None = None
    output: str | None = None
    arrays: dict[str, Any] = field(default_factory=dict)


def parse(raw: dict[str, Any], index: int, input_names: tuple[str, ...]) -> Request:
    """Check the shape of a request dict (keys, types, ranges) and return it as a Request."""
    if not isinstance(raw, dict):
        raise RequestError(f"request {index} must be a mapping of fields, got {type(raw).__name__}")
    unknown = raw.keys() - _allowed_keys(input_names)
    if unknown:
        raise RequestError(f"request {index} has unknown key(s) {sorted(unknown)}; use {', '.join(FIELDS)} "
                           f"or input names {list(input_names)}")
    if raw.get("image") is not None and not_pixels(raw["image"]):
        raise RequestError(f"request {index}: {not_pixels(raw['image'])}")
    req = Request(arrays={k: raw[k] for k in input_names if raw.get(k) is not None})
    if raw.get("image") is not None:  # a PIL image converted once
        req.image = picture_array(raw["image"])
    if "image" in req.arrays and req.image.dtype == np.uint8:
        del req.arrays["image"]  # an input named "image" given 8-bit pixels: the image field, not a tensor
    if raw.get("seed") is not None:
        req.seed = _integer(raw["seed"], "seed", index)
        if not 0 <= req.seed <= MAX_SEED:
            raise RequestError(f"request {index}: seed {req.seed} is out of range; use 0..{MAX_SEED}")
    if raw.get("label") is not None:
        req.label = raw["label"]  # checked against the model's classes by the generator
    if raw.get("size") is not None:
        req.size = _integer(raw["size"], "size", index)
    if raw.get("quality") is not None:
        if raw["quality"] not in QUALITIES:
            raise RequestError(f"request {index}: quality {raw['quality']!r} is not one of {', '.join(QUALITIES)}")
        req.quality = raw["quality"]
    if raw.get("roi") is not None:
        req.roi = _roi(raw["roi"], index)
    if raw.get("output") is not None:
        req.output = str(raw["output"])
    return req


@functools.lru_cache(maxsize=16)
def _allowed_keys(input_names: tuple[str, ...]) -> frozenset[str]:
    return _FIELD_SET.union(input_names)


def _integer(value: Any, name: str, index: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise RequestError(f"request {index}: {name} must be an integer, got {value!r}")
    return int(value)


def _roi(value: Any, index: int) -> tuple[int, int, int, int]:
    if isinstance(value, (str, bytes)):  # "10,20,30,40", as --roi spells it: read character by character otherwise
        raise RequestError(f"request {index}: roi must be (x, y, width, height) of integers, got the string "
                           f"{value!r}; give roi=(x, y, width, height)")
    try:
        x, y, w, h = (_integer(v, "roi", index) for v in value)
    except (TypeError, ValueError):
        raise RequestError(f"request {index}: roi must be (x, y, width, height), got {value!r}") from None
    if x < 0 or y < 0 or w < 1 or h < 1:
        raise RequestError(f"request {index}: roi {(x, y, w, h)} needs x, y >= 0 and width, height >= 1")
    return x, y, w, h


def digest(array: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and bytes."""
    array = np.ascontiguousarray(array)
    h = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    h.update(array.tobytes())
    return h.hexdigest()


def cache_key(content_hash: str, route: tuple, inputs: list[tuple[str, str]]) -> str:
    """The key every cache uses: sha256 of the bundle content hash and the canonical request, a line
    `tier|output|size|roi` and one `name=description` line per model input in the order of the model."""
    text = "|".join(map(str, route)) + "\n" + "\n".join(f"{name}={value}" for name, value in inputs)
    return hashlib.sha256(f"{content_hash}\n{text}".encode()).hexdigest()

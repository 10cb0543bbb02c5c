"""Resolution tiers: which part serves a request's `size` / `quality`, and preview upscaling.

A bundle's `serving.tiers` (written at build) names the full output, an optional preview (a
lower-resolution output served by a part that stops there, optionally upscaled by the bundle's
upscaler part or by Lanczos-3), and for fully-convolutional models the output sizes compiled.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import RequestError


@dataclass(frozen=True)
class Route:
    """How to compute one kind of request: part to run (after the trunk when `trunk`), output to
    take, its size, input shapes (without batch) that differ from the model's, and upscaling."""

    tier: str
    part: str
    output: str
    trunk: bool = False
    size: tuple[int, int] | None = None
    inputs: dict[str, tuple[int, ...]] = field(default_factory=dict, hash=False, compare=False)
    upscale: str | None = None


def lanczos_kernel(x: np.ndarray, a: int = 3) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < a, np.sinc(x) * np.sinc(x / a), 0.0)


@functools.lru_cache(maxsize=32)
def _weights(n_in: int, n_out: int, a: int = 3) -> np.ndarray:
    """[n_out, n_in] Lanczos-a resampling matrix (half-pixel centres; taps past the edges are dropped
    and each row renormalized, as Pillow does)."""
    scale = n_out / n_in
    support = a * max(1.0, 1.0 / scale)
    matrix = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        centre = (i + 0.5) / scale
        taps = np.arange(max(math.floor(centre - support), 0), min(math.ceil(centre + support) + 1, n_in))
        matrix[i, taps] = lanczos_kernel((taps + 0.5 - centre) * min(1.0, scale), a)
    return (matrix / matrix.sum(axis=1, keepdims=True)).astype(np.float32)


def lanczos_resize(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """NHWC uint8 images resized with a Lanczos-3 filter as Pillow's LANCZOS does it: horizontal pass,
    rounded to 8 bits, then vertical pass."""
    rows, cols = _weights(images.shape[1], height), _weights(images.shape[2], width)
    wide = np.matmul(cols, images.astype(np.float32))  # N x H x W' x C
    wide = np.clip(np.rint(wide), 0, 255)
    out = np.matmul(rows, wide.reshape(images.shape[0], images.shape[1], -1))  # N x H' x (W' * C)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(images.shape[0], height, width, -1)


class Tiers:
    """Routes of one bundle, resolved from a request's output, size and quality."""

    def __init__(self, serving: dict[str, Any], image_outputs: list[str], output_sizes: dict[str, tuple[int, int]],
                 has_split: bool, image_inputs: dict[str, tuple[int, ...]] | None = None):
        """image_inputs: the default shape (without batch) of each image input: what the default size is
        made from."""
        config = serving.get("tiers") or {}
        self.image_outputs = image_outputs
        self.full = config.get("full", {}).get("output") or (image_outputs[0] if image_outputs else None)
        self.preview = config.get("preview")
        self.sizes = {int(k): v for k, v in config.get("sizes", {}).items()}
        self._output_sizes = output_sizes
        self._split = has_split
        self._image_inputs = image_inputs or {}
        self._routes: dict[tuple, Route] = {}

    def route(self, output: str | None, size: int | None, quality: str | None) -> Route:
        """The route of a request; RequestError for an output, size or quality the bundle lacks."""
        key = (output, size, quality)
        if key not in self._routes:
            self._routes[key] = self._route(output, size, quality)
        return self._routes[key]

    def _route(self, output: str | None, size: int | None, quality: str | None) -> Route:
        if output is not None and output not in self.image_outputs:
            raise RequestError(f"no image output named {output!r}; image outputs: {self.image_outputs}")
        if quality == "preview" or (self.preview and output == self.preview["output"]):
            if not self.preview:
                raise RequestError(self._no_preview())
            preview = self.preview["output"]
            if quality == "preview" and output not in (None, preview) or quality == "full" and output == preview:
                raise RequestError(f"output {output!r} with quality={quality!r} asks for two tiers: the preview tier "
                                   f"gives {preview!r}; leave one of the two out")
            return self._preview(upscaled=quality == "preview", size=size)
        if self.preview and output is None and size == max(self.preview["size"]) and quality != "full":
            return self._preview(upscaled=False, size=size)
        name = output or self.full
        if name is None:
            raise RequestError("this model has no image output; use run() for raw tensors")
        if size is not None and size in self.sizes:
            entry = self.sizes[size]
            split = self._split and entry["part"] == "main"  # the default size: trunk and head, as without a size
            return Route(f"size{size}", "head" if split else entry["part"], name, size=(size, size), trunk=split,
                         inputs={k: tuple(v) for k, v in entry["inputs"].items()})
        default = self._output_sizes.get(name)
        if size is not None and (default is None or size != max(default)):
            if self.preview and size == max(self.preview["size"]):
                raise RequestError(f"size {size} is the preview tier's and quality='full' asks for the full tier "
                                   f"({max(default or self.preview['size'])}); leave size out, or ask for "
                                   "quality='preview'")
            follows = " (an image-to-image model's output follows its image: leave size out to get the image's)" \
                if self._image_inputs else ""
            raise RequestError(f"size {size} is not offered by this bundle; sizes: {self.offered()}{follows}")
        part = "head" if self._split else "main"
        return Route("full", part, name, trunk=self._split, inputs=self._sized_from_default(size))

    def _no_preview(self) -> str:
        if len({tuple(self._output_sizes.get(name, ())) for name in self.image_outputs}) > 1:
            return ("this bundle was built without a preview tier (an FPGA build compiles it only when asked); "
                    "ask for quality='full' or output= one of "
                    f"{self.image_outputs}, or rebuild with --preview-upscale lanczos")
        return ("this bundle has no preview tier (its model has one image resolution); ask for quality='full', "
                "or rebuild a model with a low-resolution output")

    def _preview(self, upscaled: bool, size: int | None) -> Route:
        p = self.preview
        upscale = p.get("upscale") if upscaled else None
        final = tuple(p["upscaled_size"]) if upscale else tuple(p["size"])
        if size is not None and size != max(final):
            raise RequestError(f"size {size} is not offered by the preview tier; it serves {max(final)}")
        return Route("preview", p["part"], p["output"], trunk=p.get("trunk", False), size=final,
                     inputs=self._sized_from_default(size), upscale=upscale)

    def _sized_from_default(self, size: int | None) -> dict[str, tuple[int, ...]]:
        """An explicit size of the default artifact is made from images of the default size (checked per
        request); without one, an image of any size is served at its own."""
        return dict(self._image_inputs) if size is not None else {}

    def size_of_image(self, height_width: tuple[int, ...]) -> int | None:
        """The compiled size whose image input is this height and width, if any."""
        return next((size for size, entry in self.sizes.items()
                     if any(tuple(shape[1:]) == tuple(height_width) for shape in entry["inputs"].values())), None)

    def image_sizes(self, name: str, default: tuple[int, ...]) -> set[tuple[int, ...]]:
        """The shapes (without batch) the tiers take for an image input, the default one included."""
        return {default} | {tuple(entry["inputs"][name]) for entry in self.sizes.values() if name in entry["inputs"]}

    def offered(self) -> list[int]:
        sizes = set(self.sizes) | {max(s) for name, s in self._output_sizes.items() if name == self.full}
        if self.preview:
            sizes.add(max(self.preview["size"]))
        return sorted(sizes)

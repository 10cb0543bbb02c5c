"""Per-axis geometry of spatially local ops (pure Python, used on the device).

Each op of a spatial program maps one axis of its input to one axis of its output. For an op
kind and its per-axis parameters this module gives the output size for an input size, and the
input interval that an output interval reads (its receptive field, clipped to the input, with
the border index included wherever the op pads by reflection, edge replication or clamping).
Intervals are half-open [lo, hi) in full-frame coordinates.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

Interval = tuple[int, int]
Params = dict[str, Any]


def out_size(kind: str, p: Params, n: int) -> int:
    """Output length of one axis for input length n."""
    if kind in ("conv", "pool"):
        span = n + p["p0"] + p["p1"] - p["d"] * (p["k"] - 1) - 1
        if not p.get("ceil"):
            return span // p["s"] + 1
        size = -(-span // p["s"]) + 1  # ceil mode drops a last window that would start in the end padding
        return size - 1 if (size - 1) * p["s"] >= n + p["p0"] else size
    if kind == "convT":
        return (n - 1) * p["s"] - p["p0"] - p["p1"] + p["d"] * (p["k"] - 1) + 1 + p.get("op", 0)
    if kind == "resize":
        return math.floor(n * Fraction(*p["scale"]))
    if kind == "d2s":
        return n * p["b"]
    if kind == "s2d":
        return n // p["b"]
    if kind == "pad":
        return n + p["p0"] + p["p1"]
    return n


def scale_factor(kind: str, p: Params) -> Fraction:
    """How an offset on the input axis moves the output axis: off_out = off_in * factor."""
    if kind in ("conv", "pool"):
        return Fraction(1, p["s"])
    if kind == "convT":
        return Fraction(p["s"])
    if kind == "resize":
        return Fraction(*p["scale"])
    if kind == "d2s":
        return Fraction(p["b"])
    if kind == "s2d":
        return Fraction(1, p["b"])
    return Fraction(1)


def needed(kind: str, p: Params, lo: int, hi: int, n_in: int) -> Interval | None:
    """The input interval that output interval [lo, hi) reads, or None when it reads only padding."""
    if kind in ("conv", "pool"):
        a, b = lo * p["s"] - p["p0"], (hi - 1) * p["s"] - p["p0"] + p["d"] * (p["k"] - 1) + 1
    elif kind == "convT":
        a = -((p["d"] * (p["k"] - 1) - lo - p["p0"]) // p["s"])  # ceil((lo + p0 - d(k-1)) / s)
        b = (hi - 1 + p["p0"]) // p["s"] + 1
    elif kind == "resize":
        a, b = _resize_taps(p, lo, n_in)[0], _resize_taps(p, hi - 1, n_in)[1] + 1
    elif kind == "d2s":
        a, b = lo // p["b"], (hi - 1) // p["b"] + 1
    elif kind == "s2d":
        a, b = lo * p["b"], hi * p["b"]
    elif kind == "pad":
        return _pad_needed(p, lo, hi, n_in)
    else:
        a, b = lo, hi
    a, b = max(a, 0), min(b, n_in)
    return (a, b) if a < b else None


def _resize_taps(p: Params, y: int, n: int) -> tuple[int, int]:
    """Smallest and largest input index output index y reads (clamped into the input)."""
    scale = Fraction(*p["scale"])
    coord = p["coord"]
    if coord in ("half_pixel", "pytorch_half_pixel"):
        x = (y + Fraction(1, 2)) / scale - Fraction(1, 2)
    elif coord == "tf_half_pixel_for_nn":
        x = (y + Fraction(1, 2)) / scale
    else:  # asymmetric
        x = y / scale
    if p["mode"] == "nearest":
        rounding = p.get("nearest_mode", "round_prefer_floor")
        i = {"floor": math.floor(x), "ceil": math.ceil(x), "round_prefer_ceil": math.floor(x + Fraction(1, 2))}.get(
            rounding, math.ceil(x - Fraction(1, 2)))
        taps = (i, i)
    elif p["mode"] == "linear":
        base = math.floor(max(x, Fraction(0)))
        taps = (base, base + 1)
    else:  # cubic
        base = math.floor(x)
        taps = (base - 1, base + 2)
    return min(max(taps[0], 0), n - 1), min(max(taps[1], 0), n - 1)


def _pad_needed(p: Params, lo: int, hi: int, n: int) -> Interval | None:
    a, b = lo - p["p0"], hi - p["p0"]  # the same interval in input coordinates, pads outside [0, n)
    spans = [(max(a, 0), min(b, n))]
    if p["mode"] != "constant":
        if a < 0:  # reads the start border (and, reflecting, the pixels after it)
            spans.append((0, 1) if p["mode"] == "edge" else (0, min(-a, n - 1) + 1))
        if b > n:
            spans.append((n - 1, n) if p["mode"] == "edge" else (max(2 * (n - 1) - (b - 1), 0), n))
    spans = [(s, e) for s, e in spans if s < e]
    if not spans:
        return None
    return min(s for s, _ in spans), max(e for _, e in spans)

"""ONNX Resize semantics as plain arrays: source coordinates, nearest maps, and cubic interpolation
as a matrix or as per-phase filters over an edge-padded input (what lets an integer-factor cubic
resize become a convolution)."""

from __future__ import annotations

import numpy as np


def source_coordinates(out_len: int, in_len: int, mode: str) -> np.ndarray | None:
    """ONNX Resize's coordinate transformation for one axis (None: mode not supported)."""
    x = np.arange(out_len, dtype=np.float64)
    scale = out_len / in_len
    if mode == "half_pixel" or (mode == "pytorch_half_pixel" and out_len > 1):
        return (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return np.zeros_like(x)
    if mode == "asymmetric":
        return x / scale
    if mode == "align_corners":
        return x * (in_len - 1) / (out_len - 1) if out_len > 1 else np.zeros_like(x)
    if mode == "tf_half_pixel_for_nn":
        return (x + 0.5) / scale
    return None


def onnx_nearest(out_len: int, in_len: int, mode: str, rounding: str) -> np.ndarray | None:
    """Source index of every output position of ONNX Resize nearest (None: not supported)."""
    src = source_coordinates(out_len, in_len, mode)
    if src is None:
        return None
    frac = src - np.floor(src)
    rounded = {"floor": np.floor(src), "ceil": np.ceil(src),
               "round_prefer_floor": np.where(frac == 0.5, np.floor(src), np.round(src)),
               "round_prefer_ceil": np.where(frac == 0.5, np.ceil(src), np.round(src))}.get(rounding)
    return None if rounded is None else np.clip(rounded, 0, in_len - 1).astype(int)


def cubic_matrix(out_len: int, in_len: int, mode: str, a: float) -> np.ndarray | None:
    """ONNX Resize cubic (exclude_outside=0: taps clamped to the border) as an [out, in] matrix."""
    src = source_coordinates(out_len, in_len, mode)
    if src is None:
        return None

    def kernel(d):
        d = np.abs(d)
        return np.where(d <= 1, (a + 2) * d ** 3 - (a + 3) * d ** 2 + 1,
                        np.where(d < 2, a * d ** 3 - 5 * a * d ** 2 + 8 * a * d - 4 * a, 0.0))

    matrix = np.zeros((out_len, in_len))
    base = np.floor(src)
    t = src - base
    for k, d in zip(range(-1, 3), (1 + t, t, 1 - t, 2 - t)):
        np.add.at(matrix, (np.arange(out_len), np.clip(base + k, 0, in_len - 1).astype(int)), kernel(d))
    return matrix


def phase_filters(out_len: int, in_len: int, mode: str, a: float) -> tuple[np.ndarray, int] | None:
    """Per output phase p (output x = s*i + p), taps over input i-pad..i+pad that reproduce ONNX
    cubic on an edge-padded input; (filters [s, 2*pad+1], pad), or None when no such form exists."""
    if out_len % in_len:
        return None
    s = out_len // in_len
    matrix = cubic_matrix(out_len, in_len, mode, a)
    if matrix is None:
        return None
    pad = 3
    filters = np.zeros((s, 2 * pad + 1))
    middle = in_len // 2
    for p in range(s):
        for k in range(-pad, pad + 1):
            if 0 <= middle + k < in_len:
                filters[p, k + pad] = matrix[s * middle + p, middle + k]
    padded = np.zeros((out_len, in_len))
    for x in range(out_len):
        i, p = divmod(x, s)
        np.add.at(padded[x], np.clip(np.arange(i - pad, i + pad + 1), 0, in_len - 1), filters[p])
    if in_len <= 2 * pad or not np.allclose(padded, matrix, atol=1e-9):
        return None
    used = np.nonzero(filters.any(axis=0))[0]
    reach = int(max(pad - used.min(), used.max() - pad))
    return filters[:, pad - reach:pad + reach + 1], reach

"""Least-squares reconstruction after pruning (He et al. 2017; ThiNet).

A layer that lost input channels is re-fitted so that, fed the *pruned* model's own activations,
it reproduces the *unpruned* model's output at that layer. Weights and bias come in closed form
from ridge regression on the im2col patches of sampled output positions; the ridge pulls toward
the layer's original (sliced) weights, so directions the calibration data does not cover stay as
they were. Where a layer has few positions per weight (small feature maps, Gemm rows), its ridge
strength is chosen on held-out calibration samples, and the layer is left as it was if no re-fit
predicts them better. Layers are fitted in dependency order (a wave needs the previous waves'
refits), so each fit also absorbs the error left upstream; each wave runs the model only from the
tensors the previous one kept. The unpruned model's outputs (`Targets`) are recorded once per model
and shared by every reconstruction of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
from onnx import helper

from .activations import Replay, capture
from .calibration import Calibration
from .channel_edit import initializer, set_inputs
from .channel_groups import attribute

RIDGES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # ridge strengths, relative to the mean diagonal of X^T X; the first is
# used where the data is plentiful, all are tried on held-out samples where it is scarce
VALIDATION_FOLD = 5  # every 5th calibration sample checks the ridge choice
ROWS_PER_FEATURE = 8  # plentiful data: at least this many sampled positions per weight of an output channel
MIN_POSITIONS, MAX_POSITIONS = 2048, 8192  # sampled output positions per layer (all if fewer)
# large images: re-fit on the first samples that hold this many input pixels (at least MIN_SAMPLES), since a
# layer samples at most MAX_POSITIONS positions and every sample costs a run of the model per wave
REFIT_PIXELS, MIN_SAMPLES = 16 * MAX_POSITIONS, 2 * VALIDATION_FOLD


@dataclass
class _Layer:
    node: int
    kind: str
    outputs: np.ndarray | None  # the output channels the pruned layer kept (None: all)
    patches: list[np.ndarray] = field(default_factory=list)
    samples: list[np.ndarray] = field(default_factory=list)  # calibration sample of each patch row


@dataclass
class Targets:
    """The unpruned model's outputs at each layer's sampled positions on the re-fit samples: recorded once,
    shared by every reconstruction of that model."""

    calibration: Calibration  # the re-fit samples
    batch: int | None
    picks: dict[int, dict[int, tuple[np.ndarray, ...]]]  # layer -> chunk start -> (n, oy, ox), or (rows,)
    outputs: dict[int, np.ndarray]  # layer -> [positions, every output channel]


def refittable(node: onnx.NodeProto, kind: str, model: onnx.ModelProto) -> str | None:
    """Why this consumer cannot be re-fitted (None if it can)."""
    if kind in ("gemm", "matmul"):
        return None
    rank = len(initializer(model, node.input[1]).shape)
    if rank != 4:
        return f"{node.op_type} over {rank - 2}-D data (only 2-D is re-fitted)"
    if kind == "convtranspose" and (attribute(node, "output_shape") or attribute(node, "auto_pad", b"NOTSET") not in
                                    (b"NOTSET", b"VALID")):
        return "ConvTranspose with output_shape/auto_pad"
    return None


def reconstruct(pruned: onnx.ModelProto, layers: list[tuple[int, str, np.ndarray | None]], targets: Targets,
                progress: Callable[[int, int], None] = lambda done, total: None) -> tuple[onnx.ModelProto, list[dict]]:
    """Re-fit the weights of `layers` of `pruned`; returns the model and a report row per layer.

    layers: (node index, kind, output channels the layer kept or None); node indices are the same in
    `pruned` and the unpruned model `targets` were recorded on. progress(done, total) is called as each
    wave of layers is fitted. Each wave runs the model only from where the previous wave stopped.
    """
    model = onnx.ModelProto.FromString(pruned.SerializeToString())
    fits = [_Layer(i, kind, kept) for i, kind, kept in layers]
    replay = Replay(targets.calibration, targets.batch)
    rows = []
    waves = _waves(model, fits)
    nodes = model.graph.node
    for done, wave in enumerate(waves, 1):
        by_input: dict[str, list[_Layer]] = {}
        for fit in wave:
            by_input.setdefault(nodes[fit.node].input[0], []).append(fit)

        def collect(start: int, tensors: dict[str, np.ndarray]) -> None:
            for name, users in by_input.items():
                for fit in users:
                    picks = targets.picks[fit.node][start]
                    fit.patches.append(_patches(fit, nodes[fit.node], model, tensors[name], picks))
                    fit.samples.append(start + picks[0])

        replay.run(model, list(by_input), [nodes[f.node].input[0] for later in waves[done:] for f in later], collect)
        for fit in wave:
            y = targets.outputs[fit.node]
            rows.append(_fit(model, fit, y if fit.outputs is None else y[:, fit.outputs]))
        progress(done, len(waves))
    return model, rows


def refit_samples(calibration: Calibration, batch: int | None) -> Calibration:
    """The calibration samples the re-fit runs on: all of them, or for large images the first that hold
    REFIT_PIXELS pixels (at least MIN_SAMPLES, a whole number of fixed batches)."""
    pixels = max((math.prod(v.shape[2:]) for v in calibration.feeds.values() if v.ndim == 4), default=1)
    count = max(MIN_SAMPLES, math.ceil(REFIT_PIXELS / pixels))
    if batch:
        count = math.ceil(count / batch) * batch
    if count >= calibration.count:
        return calibration
    return Calibration({k: v[:count] for k, v in calibration.feeds.items()},
                       f"{calibration.source}, its first {count} samples")


def record_targets(original: onnx.ModelProto, layers: list[tuple[int, str]], calibration: Calibration,
                   batch: int | None, seed: int = 0) -> Targets:
    """Pick output positions per layer on the re-fit samples and record the unpruned model's outputs there."""
    calibration = refit_samples(calibration, batch)
    nodes = original.graph.node
    kinds = dict(layers)
    per_sample = {}
    for node, kind in layers:
        w = initializer(original, nodes[node].input[1])
        features = w[0].size if kind == "conv" else w.size // w.shape[1] if kind == "convtranspose" else 0
        budget = min(MAX_POSITIONS, max(MIN_POSITIONS, ROWS_PER_FEATURE * features))
        per_sample[node] = math.ceil(budget / calibration.count)
    targets = Targets(calibration, batch, {node: {} for node in kinds}, {})
    parts: dict[int, list[np.ndarray]] = {node: [] for node in kinds}

    def record(start: int, tensors: dict[str, np.ndarray]) -> None:
        for node, kind in kinds.items():
            y = tensors[nodes[node].output[0]]
            if kind in ("gemm", "matmul"):
                targets.picks[node][start] = (np.arange(len(y)),)
                parts[node].append(y)
                continue
            rng = np.random.default_rng([seed, node, start])
            spots = y.shape[2] * y.shape[3]
            k = min(spots, per_sample[node])
            n = np.repeat(np.arange(len(y)), k)
            flat = np.concatenate([rng.choice(spots, k, replace=False) for _ in range(len(y))])
            oy, ox = np.divmod(flat, y.shape[3])
            targets.picks[node][start] = (n, oy, ox)
            parts[node].append(y[n, :, oy, ox])

    capture(original, list(dict.fromkeys(nodes[node].output[0] for node in kinds)), calibration, batch, record)
    targets.outputs.update((node, np.concatenate(p)) for node, p in parts.items())
    return targets


def _waves(model: onnx.ModelProto, fits: list[_Layer]) -> list[list[_Layer]]:
    """Layers grouped so that each group's inputs depend only on layers of earlier groups."""
    by_node = {f.node: f for f in fits}
    level: dict[str, int] = {}
    waves: dict[int, list[_Layer]] = {}
    for i, node in enumerate(model.graph.node):
        needed = max((level.get(n, 0) for n in node.input), default=0)
        if i in by_node:
            waves.setdefault(needed, []).append(by_node[i])
        for out in node.output:
            level[out] = needed + (i in by_node)
    return [waves[k] for k in sorted(waves)]


def _patches(fit: _Layer, node: onnx.NodeProto, model: onnx.ModelProto, x: np.ndarray,
             picks: tuple[np.ndarray, ...]) -> np.ndarray:
    if fit.kind in ("gemm", "matmul"):
        return x[picks[0]]
    kernel = initializer(model, node.input[1]).shape[2:]
    dil = attribute(node, "dilations") or [1, 1]
    if fit.kind == "conv":
        strides = attribute(node, "strides") or [1, 1]
        pads = _conv_pads(node, x.shape[2:], kernel, strides, dil)
        x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
        return _im2col(x, picks, kernel, strides, dil)
    return _im2col(_stuff(x, node, kernel, dil), picks, kernel, [1, 1], dil)


def _im2col(x: np.ndarray, picks: tuple[np.ndarray, ...], kernel, strides, dil) -> np.ndarray:
    """Rows [channel, ky, kx] of the (already padded) input under each picked output position."""
    n, oy, ox = picks
    iy = oy[:, None] * strides[0] + np.arange(kernel[0]) * dil[0]
    ix = ox[:, None] * strides[1] + np.arange(kernel[1]) * dil[1]
    c = np.arange(x.shape[1])
    cols = x[n[:, None, None, None], c[None, :, None, None], iy[:, None, :, None], ix[:, None, None, :]]
    return cols.reshape(len(n), -1)


def _stuff(x: np.ndarray, node: onnx.NodeProto, kernel, dil) -> np.ndarray:
    """ConvTranspose input turned into the input of an equivalent stride-1 Conv with the flipped kernel:
    (stride-1) zeros between pixels, dil*(k-1)-pad zeros around (cropped where negative), output_padding at the end."""
    strides = attribute(node, "strides") or [1, 1]
    pads = attribute(node, "pads") or [0, 0, 0, 0]
    extra = attribute(node, "output_padding") or [0, 0]
    n, c, h, w = x.shape
    z = np.zeros((n, c, (h - 1) * strides[0] + 1, (w - 1) * strides[1] + 1), x.dtype)
    z[:, :, ::strides[0], ::strides[1]] = x
    for axis in (0, 1):
        reach = dil[axis] * (kernel[axis] - 1)
        before, after = reach - pads[axis], reach - pads[axis + 2] + extra[axis]
        widths = [(0, 0)] * 4
        widths[axis + 2] = (max(before, 0), max(after, 0))
        z = np.pad(z, widths)
        size = z.shape[axis + 2]
        z = np.take(z, np.arange(max(-before, 0), size - max(-after, 0)), axis=axis + 2)
    return z


def _conv_pads(node: onnx.NodeProto, size, kernel, strides, dil) -> list[int]:
    auto = attribute(node, "auto_pad", b"NOTSET")
    if auto in (b"SAME_UPPER", b"SAME_LOWER"):
        pads = [0, 0, 0, 0]
        for a in (0, 1):
            total = max((math.ceil(size[a] / strides[a]) - 1) * strides[a] + (kernel[a] - 1) * dil[a] + 1 - size[a], 0)
            small, large = total // 2, total - total // 2
            pads[a], pads[a + 2] = (small, large) if auto == b"SAME_UPPER" else (large, small)
        return pads
    return [0, 0, 0, 0] if auto == b"VALID" else list(attribute(node, "pads") or [0, 0, 0, 0])


def _fit(model: onnx.ModelProto, fit: _Layer, y: np.ndarray) -> dict:
    """Solve the ridge regression for one layer against its targets `y` and write its new weights and bias
    into `model`."""
    node = model.graph.node[fit.node]
    w = initializer(model, node.input[1])
    w0, b0, alpha, beta = _as_matrix(model, node, fit.kind, w)
    rows, features = sum(len(p) for p in fit.patches), len(w0) + (b0 is not None)
    x = np.empty((rows, features))  # float64 for the normal equations, filled without intermediate copies
    np.concatenate(fit.patches, out=x[:, :len(w0)])
    fit.patches.clear()
    if b0 is not None:
        x[:, -1], w0 = 1.0, np.vstack([w0, b0[None]])
    held = np.concatenate(fit.samples) % VALIDATION_FOLD == VALIDATION_FOLD - 1
    full = _Normal(x, y.astype(np.float64))
    scarce = rows < ROWS_PER_FEATURE * features and 0 < held.sum() < rows
    ridge = _choose_ridge(full, held, w0) if scarce else RIDGES[0]
    row = {"layer": node.name, "op": node.op_type, "features": features, "positions": rows,
           "ridge": ridge, "relative_error_before": full.relative_error(w0)}
    if ridge is None:  # the original weights predict held-out samples best: leave the layer as it is
        return {**row, "relative_error_after": row["relative_error_before"]}
    m = full.solve(w0, ridge)
    arrays = {1: _from_matrix(fit.kind, node, (m[:-1] if b0 is not None else m) / alpha, w.shape)}
    if b0 is not None:
        arrays[2] = m[-1] / beta
    set_inputs(model, fit.node, arrays)
    if fit.kind == "gemm":
        _set_attr(node, "beta", beta)
    return {**row, "relative_error_after": full.relative_error(m)}


class _Normal:
    """min ||XW - Y||^2 + lam ||W - W0||^2 through the normal equations X^T X, X^T Y or, where X has fewer
    rows than columns (small feature maps, wide layers), through the smaller X X^T (W = W0 + X^T A): the
    same solutions from a rows x rows system."""

    def __init__(self, x: np.ndarray, y: np.ndarray, dual: bool | None = None, gram: np.ndarray | None = None,
                 rhs: np.ndarray | None = None):
        self.x, self.y = x, y
        self.dual = len(x) < x.shape[1] if dual is None else dual
        if gram is None:
            gram, rhs = (x @ x.T, None) if self.dual else (x.T @ x, x.T @ y)
        self.gram, self.rhs = gram, rhs
        self.energy = float(np.sum(y * y))
        self.scale = float(np.trace(gram)) / x.shape[1]  # the mean diagonal of X^T X

    def without(self, rows: np.ndarray) -> _Normal:
        """The same problem without the masked rows."""
        kept = ~rows
        if self.dual:
            return _Normal(self.x[kept], self.y[kept], True, self.gram[np.ix_(kept, kept)])
        x, y = self.x[rows], self.y[rows]  # the primal form solves without its rows: none are copied
        return _Normal(x[:0], y[:0], False, self.gram - x.T @ x, self.rhs - x.T @ y)

    def error(self, w: np.ndarray) -> float:
        """||XW - Y||^2."""
        if self.dual:
            return float(np.sum(np.square(self.x @ w - self.y)))
        return float(np.sum(w * (self.gram @ w)) - 2 * np.sum(w * self.rhs)) + self.energy

    def relative_error(self, w: np.ndarray) -> float:
        return round(float(np.sqrt(max(self.error(w), 0.0) / (self.energy or 1.0))), 5)

    def solve(self, w0: np.ndarray, ridge: float) -> np.ndarray:
        """argmin_W ||XW - Y||^2 + lam ||W - W0||^2, lam = ridge x the mean diagonal of X^T X."""
        lam = ridge * self.scale + 1e-12
        system = self.gram.copy()
        system[np.diag_indices_from(system)] += lam
        if self.dual:
            return w0 + self.x.T @ np.linalg.solve(system, self.y - self.x @ w0)
        return np.linalg.solve(system, self.rhs + lam * w0)


def _choose_ridge(full: _Normal, held: np.ndarray, w0: np.ndarray) -> float | None:
    """The ridge strength whose fit without the held-out rows predicts them best (None: the original weights).
    A solve per strength costs less than the eigendecomposition that would serve them all."""
    x, y, train = full.x[held], full.y[held], full.without(held)
    fits = [w0, *(train.solve(w0, ridge) for ridge in RIDGES)]
    best = int(np.argmin([np.sum(np.square(x @ w - y)) for w in fits]))
    return None if best == 0 else RIDGES[best - 1]


def _as_matrix(model: onnx.ModelProto, node: onnx.NodeProto, kind: str, w: np.ndarray):
    """(weights as [features, outputs], bias or None, Gemm alpha, Gemm beta)."""
    bias = initializer(model, node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if kind == "conv":
        return w.reshape(w.shape[0], -1).T, _bias(bias, w.shape[0]), 1.0, 1.0
    if kind == "convtranspose":
        flipped = w[:, :, ::-1, ::-1]
        return flipped.transpose(0, 2, 3, 1).reshape(-1, w.shape[1]), _bias(bias, w.shape[1]), 1.0, 1.0
    if kind == "matmul":
        return w, None, 1.0, 1.0
    trans_b = attribute(node, "transB", 0)
    alpha = float(attribute(node, "alpha", 1.0))
    beta = float(attribute(node, "beta", 1.0)) if bias is not None else 1.0
    outputs = w.shape[0] if trans_b else w.shape[1]
    matrix = (w.T if trans_b else w) * alpha
    return matrix, beta * _bias(bias, outputs), alpha, beta or 1.0  # beta 0 ignores C: a fitted bias needs 1


def _from_matrix(kind: str, node: onnx.NodeProto, m: np.ndarray, shape) -> np.ndarray:
    if kind == "conv":
        return m.T.reshape(shape)
    if kind == "convtranspose":
        cin, cout, kh, kw = shape
        return m.reshape(cin, kh, kw, cout).transpose(0, 3, 1, 2)[:, :, ::-1, ::-1]
    return m.T if kind == "gemm" and attribute(node, "transB", 0) else m


def _bias(bias: np.ndarray | None, n: int) -> np.ndarray:
    return np.zeros(n) if bias is None else np.broadcast_to(bias.reshape(-1), (n,)).astype(np.float64)


def _set_attr(node: onnx.NodeProto, name: str, value: float) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))

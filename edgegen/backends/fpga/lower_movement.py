"""The lowering's two-input and data-movement layers: Add/Sub/Mul with broadcasting (by one constant
per channel: a per-channel affine layer), Concat, channel relayouts, Resize (nearest, bilinear),
DepthToSpace, and the views that cost no layer (Slice, Expand, Reshape), plus the host-side
embedding lookup."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx

from ...resample import onnx_nearest, source_coordinates
from ..tflite.prepare import Prepared, attrs
from . import unary
from .emit import Phase, requant_params
from .tensors import Tensor, dense_layout, phase_major_layout
from .values import Host, Upsampled


EMBEDDING_ONLY = "only an embedding lookup (a constant table indexed by an integer model input) runs, on the host"


def per_channel(const: np.ndarray, shape: list[int]) -> np.ndarray | None:
    """`const` as one value per channel of one sample ([C, 1, 1] for a [1, C, H, W] input) when it is
    that ([1, C, 1, 1] or [C, 1, 1]; [1, C] or [C] for a [1, C] input), else None."""
    if len(shape) < 2:
        return None
    sample = [shape[1]] + [1] * (len(shape) - 2)
    if const.ndim not in (len(sample), len(shape)) or list(const.shape[-len(sample):]) != sample:
        return None
    return const.reshape(sample) if const.ndim == len(sample) or const.shape[0] == 1 else None


def broadcast_problem(chw: tuple[int, int, int], to: tuple[int, int, int]) -> str | None:
    """Why an operand [C, H, W] cannot broadcast to `to` (only one channel or one pixel repeats), or None."""
    (c, h, w), (tc, th, tw) = chw, to
    if c not in (tc, 1):
        return f"an operand of {c} channels cannot broadcast to {tc}"
    if (h, w) not in ((th, tw), (1, 1)):
        return f"an operand of {h}x{w} pixels cannot broadcast to {th}x{tw}"
    return None


def concat_problem(node: onnx.NodeProto, rank: int) -> str | None:
    return None if attrs(node).get("axis") % rank == 1 else "only concatenation along channels runs on the NPU"


def reshape_problem(chw: tuple[int, int, int], shape: list[int]) -> str | None:
    """Why an NPU map [C, H, W] cannot be reshaped to `shape` (a view only drops or adds unit axes), or None."""
    c, h, w = chw
    flat = [d for d in shape if d != 1]
    if h == 1 and w == 1 and flat in ([c], []) and list(shape[:2]) in ([1, c], [1]):
        return None
    return (f"reshaping a [{c}, {h}, {w}] map to {shape} moves channels across pixels; only "
            "[1, C] <-> [1, C, 1, 1] and a dense layer's output reshaped to a map run on the NPU")


def channel_slice(node: onnx.NodeProto, p: Prepared, shape_in: list[int], shape_out: list[int]) -> int | str:
    """The first channel a Slice keeps (0 where it cuts none), or why it is no contiguous slice of channels."""
    consts = [p.consts.get(i) if i else None for i in node.input[1:5]]
    consts += [None] * (4 - len(consts))
    if any(v is None for v in consts[:2]) or any(i and i not in p.consts for i in node.input[1:]):
        return "its starts/ends/axes/steps are not constants"
    starts, ends = (np.asarray(v).reshape(-1) for v in consts[:2])
    rank = len(shape_in)
    axes = np.asarray(consts[2]).reshape(-1) % rank if consts[2] is not None else np.arange(len(starts))
    steps = np.asarray(consts[3]).reshape(-1) if consts[3] is not None else np.ones(len(starts), np.int64)
    moved = [int(ax) for ax in axes if shape_in[int(ax)] != shape_out[int(ax)]]
    if moved not in ([], [1]) or any(steps != 1):
        return "only a contiguous slice of channels runs on the NPU"
    c = shape_in[1]
    return int(np.clip(starts[list(axes).index(1)], -c, c)) % c if moved else 0


def bilinear_taps(in_hw: tuple[int, int], f: int, mode: str) -> list | str:
    """Per axis, per output phase of bilinear upsampling x f, at most 2 (input offset, weight over 2f) taps
    within one pixel; or why there are no such fixed integer taps."""
    axes = []
    for in_len in in_hw:
        src = source_coordinates(in_len * f, in_len, mode)
        if src is None or f > 6:
            return (f"bilinear resize with coordinate_transformation_mode {mode!r} or factor {f} "
                    "is not supported (half_pixel/asymmetric/..., factor <= 6)")
        phases = []
        for p in range(f):
            rel = src[p::f] - np.arange(in_len)
            base = np.floor(rel)
            frac = rel - base
            numerators = [(int(base[0]), 2 * f * (1 - frac[0])), (int(base[0]) + 1, 2 * f * frac[0])]
            if not (np.allclose(rel, rel[0]) and all(abs(round(n) - n) < 1e-6 for _, n in numerators)
                    and -1 <= base[0] <= 0):
                return f"bilinear resize ({mode}) x{f} has no fixed integer taps per phase"
            phases.append([(d, round(n)) for d, n in numerators if round(n)])
        axes.append(phases)
    return axes


def resize_problem(node: onnx.NodeProto, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> str | None:
    """Why the NPU cannot resize an [H, W] map to `out_hw` as this node says, or None."""
    a = attrs(node)
    (h, w), (oh, ow) = in_hw, out_hw
    factor = oh // h
    mode = a.get("coordinate_transformation_mode", "half_pixel")
    integral = oh == h * factor and ow == w * factor and factor >= 1
    if integral and a.get("mode", "nearest") == "linear":
        taps = bilinear_taps(in_hw, factor, mode)
        return taps if isinstance(taps, str) else None
    ok = integral and a.get("mode", "nearest") == "nearest"
    for out_len, in_len in ((oh, h), (ow, w)):
        index = onnx_nearest(out_len, in_len, mode, a.get("nearest_mode", "round_prefer_floor")) if ok else None
        ok = index is not None and np.array_equal(index, np.arange(out_len) // factor)
    return None if ok else "only nearest or bilinear upsampling by the same integer factor in both axes runs on the NPU"


class MovementLayers:
    """Mixin of `Lowerer`: the rules for layers without weights of their own."""

    def binary(self, node: onnx.NodeProto) -> None:
        """Add / Sub / Mul of two tensors; a one-channel or one-pixel operand is broadcast; by one constant
        per channel, a per-channel affine layer."""
        if self.channel_constant(node):
            return
        out = node.output[0]
        _, c, h, w = (self.shape(out) + [1, 1])[:4] if len(self.shape(out)) == 2 else self.shape(out)
        a, b = (self.broadcast(self.tensor(i), c, h, w) for i in node.input[:2])
        if not np.array_equal(a.cmap, b.cmap) or a.groups != b.groups:
            b = self.relayout(b, a.cmap, a.groups)
        dst = self.new_tensor(out, (c, h, w), self.grid(out), a.cmap, a.groups)
        self.program.elementwise(node.name, node.op_type, a, b, dst)
        self.values[out] = dst

    def channel_constant(self, node: onnx.NodeProto) -> bool:
        """Lower `x op c` with c one constant per channel of x as x * a + b per channel (an EDSR-style
        mean shift added back at the end); False when no operand is such a constant."""
        index = 0 if node.input[0] in self.p.consts else 1
        data = node.input[1 - index]
        if node.input[index] not in self.p.consts or data in self.p.consts:
            return False
        c = per_channel(np.asarray(self.p.consts[node.input[index]], np.float32), self.shape(data))
        if c is None:
            return False
        c = c.reshape(-1).astype(np.float64)
        one, zero = np.ones_like(c), np.zeros_like(c)
        a, b = {"Add": (one, c), "Mul": (c, zero), "Sub": (-one, c) if index == 0 else (one, -c)}[node.op_type]
        self.affine(node, self.tensor(data), a, b)
        return True

    def broadcast(self, t: Tensor, c: int, h: int, w: int) -> Tensor:
        """t seen as [c, h, w]: one channel repeated (a 1x1 layer), one pixel repeated (a view with no
        pixel stride)."""
        if problem := broadcast_problem((t.c, t.h, t.w), (c, h, w)):
            raise self.unsupported(problem)
        if t.c != c:
            t = self.relayout(t, *dense_layout(c, self.lanes), take=np.zeros(c, np.int64))
        if (t.h, t.w) != (h, w):
            t = replace(t, h=h, w=w, gs=0)
        return t

    def concat(self, node: onnx.NodeProto) -> None:
        parts = [self.tensor(i) for i in node.input if i]
        if problem := concat_problem(node, len(self.shape(node.output[0]))):
            raise self.unsupported(problem)
        grid = self.grid(node.output[0])
        groups = sum(t.groups for t in parts)
        cmap, offset = [], 0
        for t in parts:
            cmap.append(t.cmap + offset * self.lanes)
            offset += t.groups
        c = sum(t.c for t in parts)
        dst = self.new_tensor(node.output[0], (c, parts[0].h, parts[0].w), grid, np.concatenate(cmap), groups)
        offset = 0
        for i, t in enumerate(parts):
            if (t.h, t.w) != (dst.h, dst.w):
                raise self.unsupported("its inputs have different spatial sizes")
            view = replace(dst, name=f"{dst.name}[{i}]", c=t.c, cmap=t.cmap, groups=t.groups, goff=offset)
            self.copy(t, view, name=f"{node.name}/{i}", op="Concat")
            offset += t.groups
        self.values[node.output[0]] = dst

    def relayout(self, src: Tensor, cmap: np.ndarray, groups: int, take: np.ndarray | None = None) -> Tensor:
        """src with its channels moved to another channel map (a 1x1 selection, same grid); output
        channel i takes input channel take[i] (default: i)."""
        take = np.arange(src.c) if take is None else take
        dst = self.new_tensor(f"{src.name}/relayout", (len(take), src.h, src.w), src.grid, cmap, groups)
        inv = dst.inverse(self.lanes)
        eye = (take[:, None] == np.arange(src.c)[None, :]).astype(np.int8)[:, :, None]
        words = self._broadcast_words(eye, inv, src)
        params = self.identity_requant(groups * self.lanes, inv)
        self.program.conv(f"{self.node.name}/relayout", "Relayout", src, dst, [Phase([(0, 0, 0)], words)], params,
                          depthwise=False, up=False, stride=1, oh=src.h, ow=src.w, out_gs=groups, groups=groups,
                          cin=src.physical, macs=0)
        return dst

    def resize(self, node: onnx.NodeProto) -> None:
        x, out = self.tensor(node.input[0]), node.output[0]
        _, _, oh, ow = self.shape(out)
        if problem := resize_problem(node, (x.h, x.w), (oh, ow)):
            raise self.unsupported(problem)
        a = attrs(node)
        factor = oh // x.h
        if a.get("mode", "nearest") == "linear":
            mode = a.get("coordinate_transformation_mode", "half_pixel")
            return self.bilinear(node, x, factor, bilinear_taps((x.h, x.w), factor, mode))
        self.values[out] = Upsampled(x, factor, self.grid(out, inherit=x), node.name)

    def bilinear(self, node: onnx.NodeProto, x: Tensor, f: int, axes: list) -> None:
        """Bilinear upsampling x f (`axes`: its taps, from `bilinear_taps`): integer weights over (2f)**2
        (doubled where int8 allows, so that the requantizer's doubling high multiply is exact), border taps
        reading the border pixel (edge mode), requantized by s_in / ((2f)**2 s_out) rounding half to even
        like ONNX Runtime's float resize."""
        dst = self.new_tensor(node.output[0], (x.c, x.h * f, x.w * f), self.grid(node.output[0], inherit=x),
                              x.cmap, x.groups)
        inv = dst.inverse(self.lanes)
        gain = 2 if (2 * f - 1) ** 2 * 2 <= 127 else 1
        phases = []
        for py in range(f):
            for px in range(f):
                taps = [(dy, dx, ny * nx * gain) for dy, ny in axes[0][py] for dx, nx in axes[1][px]]
                words = np.zeros((x.groups, len(taps), 1, self.lanes), np.int8)
                words[:] = np.array([w for _, _, w in taps], np.int8)[None, :, None, None]
                phases.append(Phase([(dy, dx, 0) for dy, dx, _ in taps], words))
        scale = np.full(x.c, 1.0 / ((2 * f) ** 2 * gain))
        params = requant_params(x.groups * self.lanes, inv, np.zeros(x.c, np.int64),
                                self.multipliers(x.scale, scale, dst.scale))
        self.program.conv(node.name, "Resize", x, dst, phases, params, depthwise=True, up=True, stride=f, oh=dst.h,
                          ow=dst.w, out_gs=x.groups, groups=x.groups, cin=1, macs=0, edge=True, even=True)
        self.values[node.output[0]] = dst

    def depth_to_space(self, node: onnx.NodeProto) -> None:
        x, out = self.tensor(node.input[0]), node.output[0]
        a = attrs(node)
        r = int(a["blocksize"])
        cmap, groups = phase_major_layout(x.c, r, a.get("mode", "DCR"), self.lanes)
        if not np.array_equal(x.cmap, cmap) or x.groups != groups:
            x = self.relayout(x, cmap, groups)
        dst = self.new_tensor(out, (x.c // (r * r), x.h * r, x.w * r), self.grid(out, inherit=x))
        self.copy(x, dst, name=node.name, op="DepthToSpace", up=r, phase_groups=dst.groups)
        self.values[out] = dst

    def slice(self, node: onnx.NodeProto) -> None:
        """Channels [start, end) of a tensor: a view with part of its channel map."""
        x, out = self.tensor(node.input[0]), node.output[0]
        shape_out = self.shape(out)
        start = channel_slice(node, self.p, self.shape(node.input[0]), shape_out)
        if isinstance(start, str):
            raise self.unsupported(start)
        view = replace(x, name=out, c=shape_out[1], cmap=x.cmap[start:start + shape_out[1]])
        grid = self.grid(out, inherit=x)
        self.values[out] = view if grid == x.grid else self.table_layer(view, out, [], grid)

    def expand(self, node: onnx.NodeProto) -> None:
        """A one-pixel tensor broadcast over a map: a view with no pixel stride (a channel broadcast: a 1x1)."""
        _, c, h, w = self.shape(node.output[0])
        x = self.tensor(node.input[0])
        grid = self.grid(node.output[0], inherit=x)
        view = replace(self.broadcast(x, c, h, w), name=node.output[0])
        self.values[node.output[0]] = view if grid == x.grid else self.table_layer(view, node.output[0], [], grid)

    def reshape(self, node: onnx.NodeProto) -> None:
        data, out = node.input[0], node.output[0]
        value = self.values.get(data)
        shape = self.shape(out)
        if isinstance(value, Host):
            params = self.p.quant.activations.get(out)
            moved = (float(params.scale[0]), int(params.zero_point[0])) if params is not None else value.grid
            if value.grid is not None and moved != value.grid:
                raise self.unsupported("a model input is requantized by a reshape; quantize it once")
            self.values[out] = replace(value, shape=shape, grid=moved)  # a float input quantized after it
            return
        x = self.tensor(data)
        if problem := reshape_problem((x.c, x.h, x.w), shape):
            raise self.unsupported(problem)
        grid = self.grid(out, inherit=x)
        self.values[out] = x if grid == x.grid else self.table_layer(x, out, [], grid)

    def gather(self, node: onnx.NodeProto) -> None:
        table, index = node.input[0], node.input[1]
        value = self.values.get(index)
        if table not in self.p.consts or not isinstance(value, Host) or value.chain or attrs(node).get("axis", 0):
            raise self.unsupported(EMBEDDING_ONLY)
        grid = self.grid(node.output[0])
        rows = np.asarray(self.p.consts[table], np.float32)
        codes = unary.quantize(rows, *grid)
        self.values[node.output[0]] = Host(value.source, self.shape(node.output[0]), grid=grid, gather=codes)

"""The lowering's linear layers: convolutions (dense, depthwise, transposed, folded nearest
upsampling), dense layers (Gemm/MatMul, convolutions of a 1x1 input) and unfolded BatchNormalization,
as CONV layers with per-phase taps and WGT words [groups, taps, cin or 1, lanes]."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx

from ..tflite.ops.conv import _spatial as conv_geometry
from ..tflite.prepare import Prepared, attrs
from . import unary
from .emit import Phase, requant_params
from .tensors import Tensor
from .values import Upsampled


def transposed_form_problem(node: onnx.NodeProto) -> str | None:
    """Why the NPU cannot run this ConvTranspose in any layout (grouped or dilated), or None."""
    a = attrs(node)
    if a.get("group", 1) != 1 or any(d != 1 for d in a.get("dilations", [])):
        return "the NPU runs a transposed convolution with group 1 and no dilation only"
    return None


def conv_form_problem(node: onnx.NodeProto, p: Prepared) -> str | None:
    """Why the NPU cannot run this Conv / ConvTranspose whatever its int8 grids, or None."""
    weights = p.consts.get(node.input[1])
    if weights is None or weights.ndim != 4:
        return "only 2-D convolutions with constant weights run on the NPU"
    group = attrs(node).get("group", 1)
    shape = p.shapes.get(node.input[0])
    if shape is None or (list(shape[2:]) == [1, 1] and group == 1):  # unknown, or one dense "pixel"
        return None
    kernel, strides, _, _ = conv_geometry(node, p)
    if strides[0] != strides[1] or strides[0] > 15:
        return f"strides {strides} are not equal in both axes (or above 15)"
    if node.op_type == "ConvTranspose":
        problem = transposed_form_problem(node)
        return problem or ("a transposed convolution needs kernel >= stride" if min(kernel) < strides[0] else None)
    if group > 1 and not (group == shape[1] == weights.shape[0] and weights.shape[1] == 1):
        return (f"grouped convolution with group={group} is neither dense nor depthwise "
                "(one input channel per output channel)")
    return None


def dense_form_problem(node: onnx.NodeProto, p: Prepared) -> str | None:
    """Why the NPU cannot run this Gemm / MatMul whatever its int8 grids, or None."""
    shape = p.shapes.get(node.input[0])
    if shape is not None and len(shape) == 4 and list(shape[2:]) != [1, 1]:
        return "a dense layer must read a [1, K] vector (or a 1x1 map)"
    a = attrs(node)
    if node.op_type == "Gemm" and (a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0):
        return "Gemm with transA, alpha != 1 or beta != 1 is not supported"
    return None


def batch_norm_problem(node: onnx.NodeProto, p: Prepared) -> str | None:
    if all(i in p.consts for i in node.input[1:5]):
        return None
    return "its scale, bias, mean and variance are not constants"


class LinearLayers:
    """Mixin of `Lowerer`: the rules for layers with weights."""

    def conv(self, node: onnx.NodeProto) -> None:
        out = node.output[0]
        a = attrs(node)
        transposed = node.op_type == "ConvTranspose"
        if problem := conv_form_problem(node, self.p):
            raise self.unsupported(problem)
        q, w_scale = self.int8_weights(node.input[1], 1 if transposed else 0)
        kernel, strides, dilations, pads = conv_geometry(node, self.p)
        grid = self.grid(out)
        _, cout, oh, ow = self.shape(out)
        group = a.get("group", 1)
        upsampled = self.values.get(node.input[0])
        fuse = (isinstance(upsampled, Upsampled) and not transposed and strides == [1, 1] and dilations == [1, 1]
                and len(self.p.consumers.get(node.input[0], [])) == 1 and node.input[0] not in self.outputs)
        x = upsampled.source if fuse else self.tensor(node.input[0])
        if x.h == 1 and x.w == 1 and group == 1 and not fuse:
            return self._conv_as_dense(node, x, q, w_scale, kernel, strides, dilations, pads, grid, (cout, oh, ow))
        depthwise = group > 1
        cmap, groups = (x.cmap, x.groups) if depthwise else self.wanted_layout(out, cout)
        dst = self.new_tensor(out, (cout, oh, ow), grid, cmap, groups)
        inv = dst.inverse(self.lanes)
        if transposed:  # [cin, cout, kh, kw]: output phase (py, px) takes the taps k = py + pad (mod stride)
            s = strides[0]
            weights = np.moveaxis(q, 0, 1).reshape(q.shape[1], q.shape[0], -1)
            phases = [self._phase([((py + pads[0] - ky) // s, (px + pads[1] - kx) // s, ky * kernel[1] + kx)
                                   for ky in range(kernel[0]) if (py + pads[0] - ky) % s == 0
                                   for kx in range(kernel[1]) if (px + pads[1] - kx) % s == 0], weights, inv, x,
                                  depthwise)
                      for py in range(s) for px in range(s)]
            macs = x.h * x.w * q.shape[0] * q.shape[1] * kernel[0] * kernel[1]
        else:
            s = upsampled.factor if fuse else strides[0]
            weights = q.reshape(q.shape[0], q.shape[1], -1)  # [cout, cin per group, taps]
            if fuse:  # nearest x s then this conv: output phase (py, px) reads input row (py + ky - pad) // s
                phases = [self._phase([((py + ky - pads[0]) // s, (px + kx - pads[1]) // s, ky * kernel[1] + kx)
                                       for ky in range(kernel[0]) for kx in range(kernel[1])], weights, inv, x,
                                      depthwise) for py in range(s) for px in range(s)]
            else:
                phases = [self._phase([(ky * dilations[0] - pads[0], kx * dilations[1] - pads[1], ky * kernel[1] + kx)
                                       for ky in range(kernel[0]) for kx in range(kernel[1])], weights, inv, x,
                                      depthwise)]
            macs = oh * ow * cout * q.shape[1] * kernel[0] * kernel[1]
        bias = self.int32_bias(node, 2, cout, x.scale, w_scale)
        params = requant_params(groups * self.lanes, inv, bias, self.multipliers(x.scale, w_scale, grid[0]))
        self.program.conv(node.name, node.op_type, x, dst, phases, params, depthwise=depthwise, up=transposed or fuse,
                          stride=s, oh=oh, ow=ow, out_gs=groups, groups=groups, cin=1 if depthwise else x.physical,
                          macs=macs)
        if fuse:
            self.program.layers[-1].notes["fused"] = "Resize"
        self.values[out] = dst

    def _phase(self, taps: list[tuple[int, int, int]], weights: np.ndarray, inv: np.ndarray, x: Tensor,
               depthwise: bool) -> Phase:
        """One output phase: (dy, dx, kernel index) taps over logical weights [cout, cin per group, k*k]."""
        chosen = weights[:, :, [k for _, _, k in taps]]
        if depthwise:
            words = np.zeros((len(inv), len(taps)), np.int8)
            words[inv >= 0] = chosen[inv[inv >= 0], 0]
            words = words.reshape(-1, self.lanes, len(taps)).transpose(0, 2, 1)[:, :, None, :]
        else:
            words = self._broadcast_words(chosen, inv, x)
        return Phase([(dy, dx, 0) for dy, dx, _ in taps], words)

    def batch_norm(self, node: onnx.NodeProto) -> None:
        """A BatchNormalization the import could not fold into a conv: x * a + b per channel, with a and b
        as ONNX Runtime computes them in float32."""
        x = self.tensor(node.input[0])
        if problem := batch_norm_problem(node, self.p):
            raise self.unsupported(problem)
        f32 = np.float32
        gamma, beta, mean, var = (np.asarray(self.p.consts[i], f32).reshape(-1) for i in node.input[1:5])
        a = f32(1) / np.sqrt(var + f32(attrs(node).get("epsilon", 1e-5))) * gamma
        self.affine(node, x, a.astype(np.float64), (beta - mean * a).astype(np.float64))

    def affine(self, node: onnx.NodeProto, x: Tensor, a: np.ndarray, b: np.ndarray) -> None:
        """x * a + b per channel: a depthwise 1x1 layer of T taps on the same pixel whose weights sum to W
        per channel, bias B, requantized by a * s_in / (W * s_out). W (up to 127 T) is chosen so that
        B / W is the best rational approximation of b / (a * s_in): a one-tap weight of 127 leaves the
        bias up to 1/254 of an input step off, which moves ~0.1% of outputs by one code, and a generator
        amplifies each such code through every layer after it. T = max(8, lanes): a depthwise group takes
        at least `lanes` cycles anyway."""
        out = node.output[0]
        f32 = np.float32
        taps = max(8, self.lanes)
        w_total = _best_denominators(b / np.where(a == 0, 1.0, a * np.float64(f32(x.scale))), 127 * taps)
        w_total = np.where(a == 0, 0, w_total * np.sign(a)).astype(np.int64)
        weights = np.stack([_split(w_total, taps, t) for t in range(taps)], axis=1).astype(np.int8)[:, None, :]
        w_scale = np.where(a == 0, 1.0, a / np.where(w_total == 0, 1, w_total))
        bias = np.round(b / (np.float64(f32(x.scale)) * w_scale)).astype(np.int64)
        grid = self.grid(out)
        dst = self.new_tensor(out, (x.c, x.h, x.w), grid, x.cmap, x.groups)
        inv = dst.inverse(self.lanes)
        params = requant_params(x.groups * self.lanes, inv, bias, self.multipliers(x.scale, w_scale, grid[0]))
        phase = self._phase([(0, 0, t) for t in range(taps)], weights, inv, x, True)
        self.program.conv(node.name, node.op_type, x, dst, [phase], params, depthwise=True, up=False, stride=1,
                          oh=x.h, ow=x.w, out_gs=x.groups, groups=x.groups, cin=1, macs=x.c * x.h * x.w)
        self.values[out] = dst

    def _broadcast_words(self, weights: np.ndarray, inv: np.ndarray, x: Tensor) -> np.ndarray:
        """[cout, cin, taps] logical weights -> WGT words [groups, taps, physical cin, lanes]."""
        full = np.zeros((len(inv), x.physical, weights.shape[2]), np.int8)
        rows = np.nonzero(inv >= 0)[0]
        full[np.ix_(rows, x.cmap)] = weights[inv[rows]]
        groups = len(inv) // self.lanes
        return full.reshape(groups, self.lanes, x.physical, -1).transpose(0, 3, 2, 1)

    def _conv_as_dense(self, node, x: Tensor, q, w_scale, kernel, strides, dilations, pads, grid, chw) -> None:
        """A convolution of a 1x1 input (a DCGAN's projection) as one dense "pixel" in HWC order."""
        cout, oh, ow = chw
        transposed = node.op_type == "ConvTranspose"
        matrix = np.zeros((cout, oh, ow, x.c), np.int8)
        for y in range(oh):
            for xx in range(ow):
                if transposed:
                    ky, kx = y + pads[0], xx + pads[1]
                    if ky < kernel[0] and kx < kernel[1]:
                        matrix[:, y, xx] = q[:, :, ky, kx].T
                else:
                    ky, kx = pads[0] - y * strides[0], pads[1] - xx * strides[1]
                    if ky % dilations[0] == 0 and kx % dilations[1] == 0:
                        ky, kx = ky // dilations[0], kx // dilations[1]
                        if 0 <= ky < kernel[0] and 0 <= kx < kernel[1]:
                            matrix[:, y, xx] = q[:, :, ky, kx]
        bias = self.int32_bias(node, 2, cout, x.scale, w_scale)
        macs = x.c * cout * kernel[0] * kernel[1] if transposed else cout * oh * ow * x.c * kernel[0] * kernel[1]
        self._dense(node, x, matrix, np.repeat(bias, oh * ow), np.repeat(w_scale, oh * ow), grid, chw, macs)

    def dense(self, node: onnx.NodeProto) -> None:
        if problem := dense_form_problem(node, self.p):
            raise self.unsupported(problem)
        x, out = self.tensor(node.input[0]), node.output[0]
        if x.h != 1 or x.w != 1:
            raise self.unsupported("a dense layer must read a [1, K] vector (or a 1x1 map)")
        a = attrs(node)
        trans_b = node.op_type == "Gemm" and a.get("transB", 0)
        q, w_scale = self.int8_weights(node.input[1], 0 if trans_b else 1)
        matrix = q if trans_b else q.T  # [N, K]
        n = matrix.shape[0]
        chw = (n, 1, 1)
        consumers = self.p.consumers.get(out, [])
        target = out
        if len(consumers) == 1 and consumers[0].op_type == "Reshape" and out not in self.outputs:
            shape = self.shape(consumers[0].output[0])
            if len(shape) == 4 and shape[0] == 1 and int(np.prod(shape)) == n:
                chw, target = tuple(shape[1:]), consumers[0].output[0]
        grid = self.grid(out)
        bias = self.int32_bias(node, 2, n, x.scale, w_scale)
        self._dense(node, x, matrix.reshape(*chw, -1), bias, w_scale, grid, chw, n * matrix.shape[1], target)
        moved = self.grid(target, inherit=self.values[target])
        if moved != grid:  # the QDQ graph requantizes after the reshape: a table on the dense layer
            self.program.set_lut(len(self.program.layers) - 1, unary.table([], grid, moved))
            self.values[target] = replace(self.values[target], scale=moved[0], zero_point=moved[1])
            self.program.refs[-1]["out"] = self.values[target]

    def _dense(self, node, x: Tensor, matrix: np.ndarray, bias: np.ndarray, w_scale: np.ndarray,
               grid: tuple[float, int], chw: tuple[int, int, int], macs: int, target: str | None = None) -> None:
        """One "pixel" of oh*ow*groups*lanes outputs; output n = (c, y, x) lands at pixel (y, x), channel c."""
        cout, oh, ow = chw
        target = target or node.output[0]
        cmap, groups = self.wanted_layout(target, cout)
        dst = self.new_tensor(target, chw, grid, cmap, groups)
        per_pixel = dst.inverse(self.lanes)
        pixels = oh * ow
        inv = np.concatenate([np.where(per_pixel >= 0, per_pixel * pixels + p, -1) for p in range(pixels)])
        weights = matrix.reshape(cout * pixels, x.c, 1)  # index n = c * pixels + pixel
        words = self._broadcast_words(weights, inv, x)
        params = requant_params(len(inv), inv, bias, self.multipliers(x.scale, w_scale, grid[0]))
        self.program.conv(node.name, node.op_type, x, dst, [Phase([(0, 0, 0)], words)], params, depthwise=False,
                          up=False, stride=1, oh=1, ow=1, out_gs=len(inv) // self.lanes,
                          groups=len(inv) // self.lanes, cin=x.physical, macs=macs)
        self.values[target] = dst


def _best_denominators(ratio: np.ndarray, largest: int) -> np.ndarray:
    """Per value, the integer W in [largest / 2, largest] for which round(ratio * W) / W is closest to ratio."""
    w = np.arange(largest // 2, largest + 1, dtype=np.float64)
    scaled = ratio[:, None] * w[None, :]
    error = np.abs(np.round(scaled) - scaled) / w[None, :]
    return w[np.argmin(error, axis=1)].astype(np.int64)


def _split(total: np.ndarray, parts: int, index: int) -> np.ndarray:
    """Part `index` of `parts` integers that sum to `total` and differ by at most one (same sign)."""
    magnitude = np.abs(total)
    return np.sign(total) * (magnitude // parts + (index < magnitude % parts))

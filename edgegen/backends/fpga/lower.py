"""Lower the project's QDQ graph (read by the TFLite backend's `prepare`) onto NPU layers.

Every int8 tensor of the QDQ graph becomes a `Tensor` in ACT; every scale and zero point comes
from the graph. Conv / ConvTranspose / Gemm / MatMul become CONV layers (broadcast, depthwise,
up-sampling phases, or one dense "pixel"), Add becomes ADD, Concat / Resize-nearest / DepthToSpace
become depthwise copies that requantize where the grids differ, and any chain of element-wise ops
between two int8 grids becomes a 256-entry table, fused into the layer before it when that layer
alone produces its input. Float work before the first grid (arithmetic on an input by a scalar or
by one constant per channel, an embedding lookup) and after the last one (a final Tanh) runs on the
host, as the QDQ graph says.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from ...errors import UnsupportedOpError
from ..tflite.ops.elementwise import _clip_bounds as clip_bounds
from ..tflite.decompose import SELU_ALPHA, SELU_GAMMA
from ..tflite.prepare import Prepared, attrs
from . import arith, unary
from .emit import Phase, Program, requant_params
from .isa import NpuConfig
from .lower_linear import LinearLayers
from .lower_movement import MovementLayers, per_channel
from .tensors import Buffer, Tensor, dense_layout, phase_major_layout
from .values import Func, Host, Lowered, Upsampled

MOVEMENT = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")
BINARY = ("Add", "Sub", "Mul")
LINEAR = ("Conv", "ConvTranspose", "Gemm", "MatMul")
SUPPORTED = tuple(sorted({*LINEAR, *MOVEMENT, *BINARY, "Concat", "Resize", "DepthToSpace", "Gather", "Cast", "Slice",
                          "Expand", "BatchNormalization", *unary.OPS, "Clip", "PRelu"}))
_SIMPLE_UNARY = ("Identity", "Relu", "Tanh", "Sigmoid", "HardSwish", "Softplus", "Mish", "Neg", "Abs", "Exp", "Erf")



def unary_spec(node: onnx.NodeProto, p: Prepared) -> tuple[str, dict] | None:
    """(data input, spec) when the node is an element-wise function of one tensor, else None."""
    op, a = node.op_type, attrs(node)
    data = [i for i in node.input if i and i not in p.consts]
    if len(data) != 1 or node.domain not in ("", "ai.onnx"):
        return None
    if op in _SIMPLE_UNARY:
        return data[0], {"op": op}
    if op in ("LeakyRelu", "Elu"):
        return data[0], {"op": op, "alpha": float(a.get("alpha", 0.01 if op == "LeakyRelu" else 1.0))}
    if op == "PRelu" and node.input[1] in p.consts:  # one slope for every channel: a LeakyRelu table
        slope = np.unique(np.asarray(p.consts[node.input[1]], np.float32))
        return (data[0], {"op": "LeakyRelu", "alpha": float(slope[0])}) if slope.size == 1 else None
    if op == "Gelu" and node.output[0] in p.gelu_steps:  # the exporters' Erf form, fused: replayed step by step
        return data[0], {"op": "GeluSteps", "input": data[0], "steps": p.gelu_steps[node.output[0]]}
    if op == "Gelu":
        return data[0], {"op": op, "approximate": str(a.get("approximate", "none"))}
    if op == "Selu":
        return data[0], {"op": op, "alpha": float(a.get("alpha", SELU_ALPHA)),
                         "gamma": float(a.get("gamma", SELU_GAMMA))}
    if op == "HardSigmoid":
        return data[0], {"op": op, "alpha": float(a.get("alpha", 0.2)), "beta": float(a.get("beta", 0.5))}
    if op == "Clip":
        lo, hi = clip_bounds(node, p)
        return data[0], {"op": op, **({"min": lo} if lo is not None else {}), **({"max": hi} if hi is not None else {})}
    if op == "Pow" and len(node.input) == 2 and node.input[1] in p.consts and node.input[0] not in p.consts:
        exponent = np.asarray(p.consts[node.input[1]])  # x ** 3 of the dynamo exporter's tanh GELU
        return (data[0], {"op": op, "const": float(exponent.reshape(-1)[0])}) if exponent.size == 1 else None
    if op in ("Add", "Sub", "Mul", "Div") and len(node.input) == 2:
        index = 0 if node.input[0] in p.consts else 1
        const = np.asarray(p.consts[node.input[index]])
        if const.size == 1:
            return data[0], {"op": op, "const": float(const.reshape(-1)[0]), "const_first": index == 0}
    return None


CAST_ONLY = "only a cast of an integer model input to int32 or int64 (a label's indices) runs"


def float_input_problem(name: str, source: str, op: str) -> str:
    """Why an `op` reading `name`, float in the QDQ graph on the way from model input `source`, cannot run."""
    return (f"its input {name!r} is float in the QDQ graph (model input {source!r} before its first int8 layer); "
            "the NPU computes int8 only, and the host runs only Add/Sub/Mul/Div of an input by a scalar or by one "
            f"constant per channel ([1, C, 1, 1]) and element-wise functions. Apply this {op} to the input before "
            "feeding the model (take it out of the export), or rewrite it as one of those")


def constant_operand_problem(name: str, shape: list[int]) -> str:
    """Why a constant `name` of this shape cannot be an operand of an NPU layer."""
    if len(shape) == 5:  # [1, out, in, k, k]: a conv weight scaled per sample (StyleGAN's modulated conv)
        return (f"its input {name!r} is a constant of shape {shape}, a conv weight scaled at run time (a modulated "
                "convolution): the NPU runs convolutions with constant weights only, so this model cannot run on "
                "it; build it for a CPU target (x86-onnxruntime, x86-openvino)")
    return (f"its input {name!r} is a constant of shape {shape}: the NPU takes a constant operand as one value or "
            "one per channel only; a constant map (a fixed noise image, say) is no layer it runs. Feed it as a model "
            "input, or leave it out of the exported model")


def no_layer_problem(op: str) -> str:
    return f"the NPU has no layer for {op} (it runs: {', '.join(SUPPORTED)})"


class Lowerer(LinearLayers, MovementLayers):
    """Walks the prepared graph once, emitting layers into a Program."""

    def __init__(self, p: Prepared, config: NpuConfig, source: Path | str):
        self.p = p
        self.source = source
        self.config = config
        self.lanes = config.lanes
        self.program = Program(config)
        self.values: dict[str, Tensor | Host | Func] = {}
        self.buffers: list[Buffer] = []
        self.inputs: list[tuple[Tensor, Host]] = []
        self.node: onnx.NodeProto | None = None
        self.outputs = {s.name for s in p.outputs}

    # -- helpers -------------------------------------------------------------------------------
    def unsupported(self, why: str) -> UnsupportedOpError:
        node = self.node
        return UnsupportedOpError(f"{self.source}: node {node.name!r} (op {node.op_type}) cannot run on the edgegen "
                                  f"NPU: {why}")

    def shape(self, name: str) -> list[int]:
        if name not in self.p.shapes:
            raise self.unsupported(f"the shape of {name!r} is not static at the default input shapes")
        return list(self.p.shapes[name])

    def grid(self, name: str, inherit: Tensor | None = None) -> tuple[float, int]:
        params = self.p.quant.activations.get(name)
        if params is not None:
            return float(params.scale[0]), int(params.zero_point[0])
        if inherit is not None:  # data movement keeps its input's grid
            return inherit.grid
        raise self.unsupported(f"its output {name!r} is float in the QDQ graph (no QuantizeLinear after it); "
                               "the NPU computes int8 only. Quantize it (do not keep this layer in float)")

    def new_tensor(self, name: str, chw: tuple[int, int, int], grid: tuple[float, int],
                   cmap: np.ndarray | None = None, groups: int | None = None, first: int | None = None) -> Tensor:
        c, h, w = chw
        if cmap is None:
            cmap, groups = dense_layout(c, self.lanes)
        buf = Buffer(name, h * w * groups, first, channels=c)
        buf.tensors.append(name)
        self.buffers.append(buf)
        return Tensor(name, c, h, w, grid[0], grid[1], np.asarray(cmap), groups, buf, groups)

    def tensor(self, name: str) -> Tensor:
        """The NPU tensor holding `name` (host values are placed in ACT on first use)."""
        value = self.values.get(name)
        if isinstance(value, Tensor):
            return value
        if isinstance(value, Host):
            if value.grid is None:
                raise self.unsupported(float_input_problem(name, value.source, self.node.op_type))
            shape = value.shape
            if len(shape) not in (2, 4) or shape[0] != 1:
                raise self.unsupported(f"input {name!r} of shape {shape} is neither [1, C] nor [1, C, H, W]: the NPU "
                                       "runs one image at a time; export the model with batch 1 or a dynamic batch")
            chw = (shape[1], *(shape[2:] if len(shape) == 4 else (1, 1)))
            tensor = self.new_tensor(name, chw, value.grid, first=-1)
            self.inputs.append((tensor, value))
            self.values[name] = tensor
            return tensor
        if isinstance(value, Upsampled):
            src = value.source
            dst = self.new_tensor(name, (src.c, src.h * value.factor, src.w * value.factor), value.grid, src.cmap,
                                  src.groups)
            self.copy(src, dst, name=value.node, op="Resize", up=value.factor)
            self.values[name] = dst
            return dst
        if isinstance(value, Func):
            raise self.unsupported(f"its input {name!r} is computed in float ({value.chain[-1]['op']}) in the QDQ "
                                   "graph (the quantizer gives that function's output no int8 grid of its own); the "
                                   "NPU computes int8 only. Export the model with a layer the NPU runs (a Conv) "
                                   f"between the {value.chain[-1]['op']} and this {self.node.op_type}, or pick a CPU "
                                   "target")
        if name in self.p.consts:
            raise self.unsupported(constant_operand_problem(name, list(np.shape(self.p.consts[name]))))
        raise self.unsupported(f"its input {name!r} is not computed by any node before it")

    def int8_weights(self, name: str, out_axis: int) -> tuple[np.ndarray, np.ndarray]:
        """(int8 data, scale per output channel) of a symmetric int8 weight from the QDQ graph."""
        qc = self.p.quant.constants.get(name)
        if qc is None or qc.data.dtype != np.int8 or any(qc.params.zero_point):
            raise self.unsupported(f"its weights {name!r} are not symmetric int8 in the QDQ graph")
        count = qc.data.shape[out_axis]
        scale = np.asarray(qc.params.scale, np.float64)
        if scale.size == 1:
            scale = np.repeat(scale, count)
        elif qc.params.axis % qc.data.ndim != out_axis:
            raise self.unsupported(f"its weights {name!r} are quantized per channel along axis {qc.params.axis}, "
                                   "not along the output channels")
        return qc.data, scale

    def int32_bias(self, node: onnx.NodeProto, index: int, count: int, in_scale: float,
                   w_scale: np.ndarray) -> np.ndarray:
        if len(node.input) <= index or not node.input[index]:
            return np.zeros(count, np.int64)
        qc = self.p.quant.constants.get(node.input[index])
        if qc is not None and qc.data.dtype == np.int32:
            return qc.data.reshape(-1).astype(np.int64)
        real = np.asarray(self.p.consts[node.input[index]], np.float64).reshape(-1)
        return np.round(real / (np.float64(np.float32(in_scale)) * w_scale)).astype(np.int64)

    def multipliers(self, in_scale: float, w_scale: np.ndarray, out_scale: float) -> list[tuple[int, int]]:
        result = [arith.conv_multiplier(in_scale, s, out_scale) for s in w_scale]
        if any(abs(shift) > 31 for _, shift in result):
            raise self.unsupported("a requantization scale is outside 2**-31 .. 2**31")
        return result

    def wanted_layout(self, name: str, c: int) -> tuple[np.ndarray, int]:
        """The channel map a producer should write `name` in: phase-major for a pixel shuffle."""
        consumers = self.p.consumers.get(name, [])
        if len(consumers) == 1 and consumers[0].op_type == "DepthToSpace" and name not in self.outputs:
            r = int(attrs(consumers[0])["blocksize"])
            return phase_major_layout(c, r, attrs(consumers[0]).get("mode", "DCR"), self.lanes)
        return dense_layout(c, self.lanes)

    @staticmethod
    def identity_requant(count: int, channels: np.ndarray) -> tuple:
        """Per-channel parameters that give back the input code (bias 0, multiplier 1.0)."""
        n = int(channels.max()) + 1
        return requant_params(count, channels, np.zeros(n, np.int64), [arith.quantize_multiplier(1.0)] * n)

    # -- walk ------------------------------------------------------------------------------------
    def run(self) -> Lowered:
        for spec in self.p.inputs:
            params = self.p.quant.activations.get(spec.name)
            grid = (float(params.scale[0]), int(params.zero_point[0])) if params is not None else None
            self.values[spec.name] = Host(spec.name, list(spec.default_shape), grid=grid)
        for node in self.p.nodes:
            self.node = node
            if node.output[0] in self.values:  # written ahead by the layer before it (dense + reshape)
                continue
            self.lower(node)
        self.node = None
        outputs = []
        for spec in self.p.outputs:
            value = self.values.get(spec.name)
            shape = list(spec.default_shape) or self.p.shapes.get(spec.name, [])
            if isinstance(value, Tensor):
                outputs.append((spec.name, value, [], shape))
            elif isinstance(value, Func):
                outputs.append((spec.name, value.source, value.chain, shape))
            else:
                raise UnsupportedOpError(f"output {spec.name!r} is not computed on the NPU (it depends on no "
                                         "int8 layer); nothing is left for the FPGA to run")
        for _, tensor, _, _ in outputs:
            tensor.buffer.last = len(self.program.layers)
        return Lowered(self.program, self.buffers, self.inputs, outputs)

    def lower(self, node: onnx.NodeProto) -> None:
        op = node.op_type
        spec = unary_spec(node, self.p) or self.host_channel_spec(node)
        if spec is not None:
            return self.unary(node, *spec)
        handler = {"Conv": self.conv, "ConvTranspose": self.conv, "Gemm": self.dense, "MatMul": self.dense,
                   **{op: self.binary for op in BINARY}, "Concat": self.concat, "Slice": self.slice,
                   "Expand": self.expand, "BatchNormalization": self.batch_norm, "Resize": self.resize,
                   "DepthToSpace": self.depth_to_space,
                   "Gather": self.gather, "Cast": self.cast, **{m: self.reshape for m in MOVEMENT}}.get(op)
        if handler is None or node.domain not in ("", "ai.onnx"):
            raise self.unsupported(no_layer_problem(op))
        handler(node)

    def host_channel_spec(self, node: onnx.NodeProto) -> tuple[str, dict] | None:
        """(data input, spec) for Add/Sub/Mul/Div of float values by one constant per channel, which the
        host runs as written, like a scalar: on a model input before its first grid, or as the last op of
        a model output that is float in the QDQ graph (no table ever holds a per-channel constant)."""
        if node.op_type not in ("Add", "Sub", "Mul", "Div") or len(node.input) != 2:
            return None
        index = 0 if node.input[0] in self.p.consts else 1
        data, value = node.input[1 - index], self.values.get(node.input[1 - index])
        if node.input[index] not in self.p.consts:
            return None
        if isinstance(value, Host) and value.grid is None and value.gather is None:
            shape = value.shape
        elif isinstance(value, (Tensor, Func)) and self.float_output(node.output[0]):
            shape = self.shape(data)
        else:
            return None
        const = per_channel(np.asarray(self.p.consts[node.input[index]], np.float32), shape)
        if const is None:
            return None
        return data, {"op": node.op_type, "const": const.tolist(), "const_first": index == 0}

    def float_output(self, name: str) -> bool:
        """Whether `name` is a model output, read by no node, that the QDQ graph leaves in float."""
        return name in self.outputs and not self.p.consumers.get(name) and name not in self.p.quant.activations

    def cast(self, node: onnx.NodeProto) -> None:
        """A label fed as int32 and cast to int64 for its embedding: the host's indices, unchanged."""
        value = self.values.get(node.input[0])
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if not isinstance(value, Host) or value.chain or value.gather is not None or \
                to not in (onnx.TensorProto.INT32, onnx.TensorProto.INT64):
            raise self.unsupported(CAST_ONLY)
        self.values[node.output[0]] = value

    # -- element-wise ----------------------------------------------------------------------------
    def unary(self, node: onnx.NodeProto, data: str, spec: dict) -> None:
        out = node.output[0]
        value = self.values.get(data)
        params = self.p.quant.activations.get(out)
        grid = (float(params.scale[0]), int(params.zero_point[0])) if params is not None else None
        if isinstance(value, Host):
            if value.grid is not None:
                value = self.tensor(data)
            else:
                self.values[out] = replace(value, chain=value.chain + [spec], grid=grid)
                return
        if isinstance(value, Upsampled):  # a nearest upsampling the next layer did not absorb: made on the NPU
            value = self.tensor(data)
        if isinstance(value, Tensor):
            value = Func(value, [])
        if not isinstance(value, Func):
            raise self.unsupported(f"its input {data!r} is not computed by any node before it")
        chain = value.chain + [spec]
        if grid is None:
            self.values[out] = Func(value.source, chain)
            return
        self.values[out] = self.table_layer(value.source, out, chain, grid)

    def table_layer(self, src: Tensor, out: str, chain: list[dict], grid: tuple[float, int]) -> Tensor:
        """`out` = chain(src) on `grid` through a 256-entry table: fused into src's producer when it alone
        writes and reads it, else a depthwise copy with the table."""
        prog = self.program
        last = len(prog.layers) - 1
        fusable = (last >= 0 and prog.refs[last]["out"] is src and not prog.layers[last].lut
                   and src.buffer.tensors == [src.name] and src.name not in self.outputs
                   and len(self.p.consumers.get(src.name, [])) == 1)
        if fusable:
            prog.set_lut(last, unary.table(chain, src.grid, grid))
            prog.layers[last].notes["fused"] = self.node.op_type
            fused = replace(src, name=out, scale=grid[0], zero_point=grid[1])
            src.buffer.tensors = [out]
            prog.refs[last]["out"] = fused
            return fused
        dst = self.new_tensor(out, (src.c, src.h, src.w), grid, src.cmap, src.groups)
        self.copy(src, dst, name=self.node.name, op=self.node.op_type, chain=chain)
        return dst

    def copy(self, src: Tensor, dst: Tensor, name: str, op: str, chain: list[dict] | None = None,
             up: int = 1, phase_groups: int = 0) -> None:
        """A depthwise copy src -> dst view (nearest x`up`, or a pixel shuffle when phase_groups > 0:
        output phase p reads the input's groups p*phase_groups...). A grid change (and any element-wise
        chain) goes through the table: ONNX's float requantization, rounding half to even."""
        lanes = self.lanes
        lut = unary.table(chain or [], src.grid, dst.grid) if chain or src.grid != dst.grid else None
        if lut is not None and not chain:
            self.program.note_regrid(lut)
        channels = src.inverse(lanes) if not phase_groups else dst.inverse(lanes)
        groups = dst.groups
        ones = np.ones((groups, 1, 1, lanes), np.int8)
        phases = [Phase([(0, 0, p * phase_groups)], ones) for p in range(up * up)]
        written = replace(dst, scale=src.scale, zero_point=src.zero_point)  # the table maps onto dst's grid
        self.program.conv(name, op, src, written, phases, self.identity_requant(groups * lanes, channels),
                          depthwise=True, up=up > 1, stride=up, oh=dst.h, ow=dst.w, out_gs=dst.gs, groups=groups,
                          cin=1, macs=0, lut=lut)
        self.program.refs[-1]["out"] = dst  # same words; lets a following table fuse into this copy

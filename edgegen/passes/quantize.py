"""int8 post-training quantization into the project's one quantized IR: a QDQ ONNX graph.

Per-channel symmetric int8 weights, per-tensor asymmetric int8 activations, int32 biases,
computed by onnxruntime.quantization's calibrators (MinMax, Entropy, Percentile) on the
cleaned graph (BatchNorm and constants already folded by edgegen's import). Calibration runs once; any set of
layers can then be kept in float without calibrating again, which is what the quality-floor
search (`edgegen.passes.floor`) needs. Backends lower this same graph, so every device gets the
same scales.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import BuildError, install_hint
from ..graph import Graph
from ..inputs import fixed_batch
from .calibration import Calibration

WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}  # an int8 model keeps at least one of these in int8
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}

log = logging.getLogger(__name__)

METHODS = ("minmax", "entropy", "percentile")
# the KL search of TensorRT's entropy calibration: 2048 histogram bins folded into 128 quantized bins (with
# onnxruntime's defaults, 128 into 128, the search has one candidate, the full range: minmax again)
ENTROPY_OPTIONS = {"num_bins": 2048, "num_quantized_bins": 128}
SHUFFLES = ("DepthToSpace", "SpaceToDepth")
# MobileNet-style activations onnxruntime.quantization has no entry for: listed, their output is quantized
# even where the next op only passes a grid through (a nearest Resize), so that op runs in int8 too
ACTIVATIONS = ("HardSwish", "HardSigmoid")
# and Sub, which it has no entry for either (it has Add): listed, a residual `x - f(x)` (DnCNN) is int8 like
# `x + f(x)`, for the NPU (int8 only), LiteRT and the Edge TPU (SUB) and OpenVINO; so is a Sub of a constant (an
# input normalization `x * 2 - 1`, EDSR's MeanShift), like an Add of one: left float, it made a LiteRT int8
# artifact take float input and split an Edge TPU graph at its first op. One on a latent input, or whose result
# a float op reads, stays float (see _subs_left_float), a float chain the NPU's host runs.
ARITHMETIC = ("Sub",)
# the inputs (by position) that ops read as parameters (sizes, shapes, bounds, axes), not as data to quantize
PARAMETER_INPUTS = {"Resize": (1, 2, 3), "Upsample": (1,), "Reshape": (1,), "Slice": (1, 2, 3, 4), "Expand": (1,),
                    "Tile": (1,), "Pad": (1, 2, 3), "ConstantOfShape": (0,), "Range": (0, 1, 2), "Squeeze": (1,),
                    "Unsqueeze": (1,), "Split": (1,), "CenterCropPad": (1,), "Col2Im": (1, 2)}
FAINT_SOFTMAX = 0.25  # a Softmax whose calibrated outputs stay below this (64 of 255 steps) stays in float
# ops that only move values: a per-tensor QuantizeLinear commutes with them exactly. onnxruntime's quantizer runs
# one in int8 only where its input is quantized already, so a DCGAN's `z.view(N, nz, 1, 1)` on the latent input
# stayed float: the LiteRT int8 artifact took float input and the Edge TPU graph split at its first op (RESHAPE)
DATA_MOVEMENT = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose")


def _ort_quantization():
    try:
        from onnxruntime import quantization
    except ImportError:
        raise BuildError("int8 quantization needs onnxruntime on the build host; "
                         f"{install_hint('onnxruntime', 'ort')}") from None
    return quantization


class Quantizer:
    """Calibrated once for a graph; `emit(exclude)` gives QDQ graphs with chosen layers left in float."""

    def __init__(self, graph: Graph, calibration: Calibration, method: str = "minmax",
                 symmetric_inputs: Iterable[str] = ()):
        """symmetric_inputs: op types whose data input the backend runs in int8 only on a grid symmetric about 0
        (OpenVINO's Deconvolution): that tensor is quantized so."""
        if method not in METHODS:
            raise BuildError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
        q = _ort_quantization()
        self.graph = graph
        self.method = method
        self.calibration = calibration
        chain = latent_chain(graph)
        self._chain = chain
        with tempfile.TemporaryDirectory(prefix="edgegen-quant-") as tmp:
            src, pre = Path(tmp) / "source.onnx", Path(tmp) / "pre.onnx"
            onnx.save(_divisions_as_products(graph.model, chain), str(src))
            # edgegen's clean-up already folded BatchNorm and constants; ONNX Runtime's own optimizer here
            # would also inline function ops (HardSwish -> HardSigmoid * x), which no backend fuses in int8
            q.quant_pre_process(str(src), str(pre), skip_symbolic_shape=True, skip_optimization=True)
            self.model = _unshared(onnx.load(str(pre)))
            calibrator = q.create_calibrator(
                pre, op_types_to_calibrate=None, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=getattr(q.CalibrationMethod, {"minmax": "MinMax", "entropy": "Entropy",
                                                              "percentile": "Percentile"}[method]),
                extra_options=ENTROPY_OPTIONS if method == "entropy" else {})
            with _ort_quantizer_quiet():
                calibrator.collect_data(_Reader(calibration, fixed_batch(graph.inputs) or 1))
                self.ranges = calibrator.compute_data()
        _one_range_per_shuffled_image(self.model, self.ranges)
        _grids_for_dead_tensors(self.ranges)
        # onnxruntime.quantization has no entry for the pixel shuffles; listed, their input and output are
        # quantized (each to its own calibrated range, which for a permutation is the same grid)
        self.op_types = sorted(set(q.registry.QLinearOpsRegistry) | set(q.registry.QDQRegistry) | set(SHUFFLES)
                               | set(ACTIVATIONS) | set(ARITHMETIC))
        self.grouped_transposed = _grouped_transposed_convs(self.model)
        self.faint_softmaxes = _faint_softmaxes(self.model, self.ranges)
        self.clips_off_zero = _clips_off_zero(self.model)
        self.float_only = self.grouped_transposed + self.faint_softmaxes + self.clips_off_zero  # never quantized
        self._unlisted = _subs_left_float(self.model, self.op_types, chain) + shape_arithmetic(self.model)
        self._symmetric = _symmetric_grids(self.model, self.ranges, set(symmetric_inputs))
        self._all_int8: onnx.ModelProto | None = None  # see emit
        self._int8_grids: dict[str, list[dict[str, np.ndarray]]] = {}

    @property
    def float_note(self) -> str | None:
        """Why some layers are never quantized, for the report."""
        notes = []
        if self.grouped_transposed:
            notes.append(f"{len(self.grouped_transposed)} grouped ConvTranspose kept in float (onnxruntime's quantizer "
                         f"scales its weight per group, not per output channel): {', '.join(self.grouped_transposed)}")
        if self.faint_softmaxes:
            notes.append(f"{len(self.faint_softmaxes)} Softmax kept in float (int8 gives a softmax the fixed grid of "
                         f"[0, 1] in 255 steps, and its calibrated outputs stay below {FAINT_SOFTMAX:g}, where that "
                         f"grid rounds most to zero: a softmax over many tokens): {', '.join(self.faint_softmaxes)}")
        if self.clips_off_zero:
            notes.append(f"{len(self.clips_off_zero)} Clip kept in float (its range leaves out 0, which every int8 "
                         "grid holds, so the grid's saturation cannot stand in for its bounds as onnxruntime's "
                         f"quantizer would have it): {', '.join(self.clips_off_zero)}")
        return "; ".join(notes) or None

    def layers(self) -> list[tuple[str, str]]:
        """(node name, op) of every node the quantizer would quantize that computes (a shuffle only moves
        values): the layers the floor search may keep in float."""
        return [(n.name, n.op_type) for n in self.model.graph.node
                if n.op_type in self.op_types and n.op_type not in SHUFFLES and n.name not in self.float_only
                and n.name not in self._unlisted]

    def emit(self, exclude: Iterable[str] = (), only: Iterable[str] | None = None) -> onnx.ModelProto:
        """A QDQ model with the `exclude` nodes kept in float (or with only the `only` nodes quantized).
        Every activation keeps the grid the all-int8 graph gives it: a layer kept in float only loses its
        quantization. Left to itself, onnxruntime's quantizer re-grids what a float layer feeds: a Slice
        that shares its producer Gemm's grid in int8 got its own, narrower calibrated one once the Gemm stayed
        float, and inputs beyond the calibration's slice saturated (a floor-searched glyphgen 23 dB on some)."""
        exclude, only = list(exclude), list(only) if only is not None else None
        if self._all_int8 is None:  # quantized once; every later call without exclusions gets a copy
            self._all_int8 = self._quantized([], None, self._symmetric)
            self._int8_grids = _activation_grids(self._all_int8, self.model)
        model = self._quantized(exclude, only, self._int8_grids) if exclude or only is not None else \
            onnx.ModelProto.FromString(self._all_int8.SerializeToString())
        _own_grids_for_interpolation(model, self.ranges)
        _latent_moves_quantized(model, self._chain, self._movers(exclude, only))
        return model

    def _movers(self, exclude: list[str], only: list[str] | None) -> set[str]:
        """The data-movement nodes (DATA_MOVEMENT) an emit with these exclusions may quantize."""
        kept = {*exclude, *self.float_only, *self._unlisted}
        return {n.name for n in self.model.graph.node if n.op_type in DATA_MOVEMENT and n.name
                and n.name not in kept and (only is None or n.name in only)}

    def _quantized(self, exclude: list[str], only: Iterable[str] | None,
                   grids: dict[str, list[dict[str, np.ndarray]]]) -> onnx.ModelProto:
        """onnxruntime's QDQ quantization of the graph (`grids`: activations' scales and zero points to use)."""
        q = _ort_quantization()
        quantizer = q.QDQQuantizer(
            onnx.ModelProto.FromString(self.model.SerializeToString()), True, False, q.QuantType.QInt8,
            q.QuantType.QInt8, self.ranges, [n for n in only if n not in self.float_only] if only is not None else None,
            [*exclude, *self.float_only, *self._unlisted], self.op_types,
            {"WeightSymmetric": True, "ActivationSymmetric": False, "TensorQuantOverrides": grids})
        with _ort_quantizer_quiet():
            quantizer.quantize_model()
        quantizer.model.topological_sort()
        return quantizer.model.model


def _symmetric_grids(model: onnx.ModelProto, ranges, op_types: set[str]) -> dict[str, list[dict[str, bool]]]:
    """TensorQuantOverrides making the data input of each `op_types` node symmetric about 0, where its calibrated
    range holds both signs (a grid from 0, a ReLU's, already has zero point 0) and no Relu or Clip writes it:
    onnxruntime's quantizer drops such an activation for its output grid's saturation, which a symmetric grid
    does not have (a Conv -> Relu -> ConvTranspose kept its negatives: 11 dB)."""
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    grids = {}
    for node in model.graph.node:
        name = node.input[0] if node.op_type in op_types and node.input else None
        if name in ranges and producers.get(name) not in ("Relu", "Clip"):
            low, high = (float(np.asarray(v).reshape(-1)[0]) for v in ranges[name].range_value)
            if low < 0 < high:
                grids[name] = [{"symmetric": True}]
    return grids


def _activation_grids(quantized: onnx.ModelProto, source: onnx.ModelProto) -> dict[str, list[dict[str, np.ndarray]]]:
    """The scale and zero point each activation of `source` (not a weight) is quantized with in `quantized`,
    as onnxruntime.quantization's TensorQuantOverrides."""
    constants = {i.name: numpy_helper.to_array(i) for i in quantized.graph.initializer}
    weights = {i.name for i in source.graph.initializer}
    grids = {}
    for node in quantized.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in weights and len(node.input) == 3 \
                and constants.get(node.input[1], np.empty(0)).size == 1:
            grids[node.input[0]] = [{"scale": constants[node.input[1]].reshape(()),
                                     "zero_point": constants[node.input[2]].reshape(())}]
    return grids


def _faint_softmaxes(model: onnx.ModelProto, ranges) -> list[str]:
    """Softmax nodes whose calibrated outputs all stay below FAINT_SOFTMAX: onnxruntime's quantizer (and
    TFLite's int8 SOFTMAX) fix a softmax's output grid to [0, 1] in 255 steps, and a softmax over N values
    averages 1/N (over 1024 tokens most outputs round to 0: 14 dB where float kept 56)."""
    return [n.name for n in model.graph.node if n.op_type == "Softmax" and n.output[0] in ranges
            and ranges[n.output[0]].range_value[1] < FAINT_SOFTMAX]


def latent_chain(graph: Graph) -> set[str]:
    """Graph inputs that are not 8-bit pictures (latents, conditions), and what Subs and Divs by a constant
    compute from them alone: their values fill no fixed grid, so that chain stays float, as onnxruntime leaves
    it, and is quantized once, after it (quantizing the input first as well cost a TAESD-style decoder's
    `latent / 3` 0.2 dB)."""
    tensors = {s.name for s in graph.inputs if s.role != "image"}
    weights = {t.name for t in graph.model.graph.initializer}
    for node in graph.model.graph.node:  # topologically sorted
        if node.op_type in ("Sub", "Div") and len(node.input) == 2 and node.input[0] in tensors \
                and node.input[1] in weights:
            tensors.add(node.output[0])
    return tensors


def _latent_moves_quantized(model: onnx.ModelProto, chain: set[str], movers: set[str]) -> None:
    """Quantize the latent before the data-movement ops (`movers`, by name) that read it, on the grid their output
    has: `z -> Reshape -> QuantizeLinear` becomes `z -> Q -> DQ -> Reshape -> Q`, the same values (a per-tensor
    grid commutes with a reshape or transpose), and the Reshape runs in int8 on an int8 input. A tensor of the
    latent chain (see latent_chain), or what such ops compute from it alone, is read so; the chain itself stays
    as it is (quantized after it)."""
    nodes = list(model.graph.node)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    reachable = set(chain)
    for node in nodes:  # topologically sorted
        if node.name in movers and node.input and node.input[0] in reachable:
            reachable.add(node.output[0])
    constants = {t.name: t for t in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    before: dict[int, list[onnx.NodeProto]] = {}
    for index in reversed(range(len(nodes))):  # each mover's output is quantized by then, where its readers are
        node = nodes[index]
        if node.name not in movers or not node.input or node.input[0] not in reachable or node.output[0] in outputs:
            continue
        grid = _one_grid(readers.get(node.output[0], []), constants)
        if grid is None:
            continue
        source = node.input[0]
        quantize = helper.make_node("QuantizeLinear", [source, *grid], [f"{node.name}/input/quantized"],
                                    f"{node.name}/input/QuantizeLinear")
        dequantize = helper.make_node("DequantizeLinear", [quantize.output[0], *grid], [f"{node.name}/input/int8"],
                                      f"{node.name}/input/DequantizeLinear")
        node.input[0] = dequantize.output[0]
        readers[source] = [r for r in readers.get(source, []) if r is not node] + [quantize]
        before[index] = [quantize, dequantize]
    if before:
        ordered = [copy for index, node in enumerate(nodes) for copy in [*before.get(index, []), _copied(node)]]
        del model.graph.node[:]
        model.graph.node.extend(ordered)


def _copied(node: onnx.NodeProto) -> onnx.NodeProto:
    """A copy of a node that does not belong to a graph."""
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    return copy


def _one_grid(readers: list[onnx.NodeProto], constants: dict[str, onnx.TensorProto]) -> list[str] | None:
    """The (scale, zero point) names of the one per-tensor grid all `readers` quantize a tensor with, or None where
    a reader is no QuantizeLinear, the readers' grids differ, or the grid is per channel."""
    grids = {tuple(r.input[1:]) for r in readers if r.op_type == "QuantizeLinear" and len(r.input) == 3}
    if not readers or len(grids) != 1 or any(r.op_type != "QuantizeLinear" for r in readers):
        return None
    scale = constants.get(next(iter(grids))[0])
    if scale is None or np.prod(scale.dims, dtype=np.int64) != 1:
        return None
    return list(next(iter(grids)))


def _divisions_as_products(model: onnx.ModelProto, chain: set[str]) -> onnx.ModelProto:
    """A copy whose Div of a tensor by a scalar or one float constant per channel is a Mul by its reciprocal (the
    same values to a rounding): onnxruntime.quantization has no entry for Div and leaves it float, so
    `x / 127.5 - 1` or `(x - mean) / std` on an image input kept a LiteRT int8 artifact's input float and split
    an Edge TPU graph at its first op. These stay Div (float): one on the latent chain (see latent_chain); one
    by a constant map (its reciprocal on one 8-bit grid cost a vignetting output 7.7 dB); one that writes a
    graph output (an extra rounding of the result) or feeds a Softmax (attention's `/ sqrt(d)`: ONNX Runtime's
    int8 softmax ran 2-2.7x slower than the float one)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    weights = {t.name: t for t in model.graph.initializer}
    readers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.op_type)
    outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        divisor = weights.get(node.input[1]) if node.op_type == "Div" and len(node.input) == 2 else None
        if divisor is None or divisor.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE) or \
                node.input[0] in chain or node.output[0] in outputs or \
                "Softmax" in readers.get(node.output[0], ()):
            continue
        values = numpy_helper.to_array(divisor)
        with np.errstate(divide="ignore", over="ignore"):
            reciprocal = (1 / values).astype(values.dtype)
        if values.size != max(values.shape, default=1) or not np.all(np.isfinite(reciprocal)) or \
                not np.all(np.isfinite(values)):
            continue  # a map, not one value per channel; or a 0 (or a divisor so small its reciprocal overflows)
        name = f"{node.name or node.output[0]}/reciprocal"
        model.graph.initializer.append(numpy_helper.from_array(reciprocal, name))
        if len(readers[divisor.name]) == 1:  # the divisor was this Div's alone
            model.graph.initializer.remove(divisor)
        node.op_type, node.input[1] = "Mul", name
    return model


def shape_arithmetic(model: onnx.ModelProto) -> list[str]:
    """Nodes that compute only what other ops read as parameters (a Resize's scales or sizes, a Reshape's
    shape, a Slice's bounds), never data: an opset-9 export's `F.interpolate(size=(2 * H, 2 * W))` divides the
    output size by the input's in float and concatenates it with [1, 1] into the Upsample's scales. Quantized,
    the channel scale 1.0 came back a little under 1 and the Resize gave 7 channels of 8."""
    found = _parameter_nodes(model)
    return [node.name for position, node in enumerate(model.graph.node) if position in found]


def _parameter_nodes(model: onnx.ModelProto) -> set[int]:
    """The positions in model.graph.node of the nodes shape_arithmetic names (nodes need no name, and a node's
    Python object, so its id(), is not kept between two walks of the graph)."""
    nodes = list(model.graph.node)
    readers: dict[str, list[tuple[int, int]]] = {}
    for position, node in enumerate(nodes):
        for index, name in enumerate(node.input):
            readers.setdefault(name, []).append((position, index))
    outputs = {o.name for o in model.graph.output}
    found: set[int] = set()
    for position in reversed(range(len(nodes))):  # topologically sorted: every reader is decided before its producer
        node = nodes[position]
        if node.output and not outputs & set(node.output) and all(
                readers.get(name) and all(index in PARAMETER_INPUTS.get(nodes[reader].op_type, ()) or reader in found
                                          for reader, index in readers[name]) for name in node.output):
            found.add(position)
    return found


def _subs_left_float(model: onnx.ModelProto, op_types: list[str], chain: set[str]) -> list[str]:
    """Sub nodes of a constant that stay float: on a tensor of the latent chain (see latent_chain), writing a
    graph output (`1 - sigmoid(y)`: an extra rounding of the result cost 1.1 dB), or read by an op the quantizer
    leaves float."""
    weights = {t.name for t in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    float_reads = {x for n in model.graph.node if n.op_type not in op_types for x in n.input}
    return [n.name for n in model.graph.node if n.op_type == "Sub" and any(i in weights for i in n.input)
            and (n.output[0] in float_reads or n.output[0] in outputs or any(i in chain for i in n.input))]


def _clips_off_zero(model: onnx.ModelProto) -> list[str]:
    """Clip nodes whose constant bounds leave out 0 (`clamp(min=0.25)`). onnxruntime's quantizer drops a Clip
    after a quantized layer for the saturation of its output grid, and that grid always holds 0: the values
    between 0 and the bound would come back."""
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type != "Clip":
            continue
        bounds = {a.name: a.f for a in node.attribute if a.name in ("min", "max")}  # opset 6 form
        for key, index in (("min", 1), ("max", 2)):
            if len(node.input) > index and node.input[index] in values:
                bounds[key] = float(values[node.input[index]])
        if bounds.get("min", -np.inf) > 0 or bounds.get("max", np.inf) < 0:
            found.append(node.name)
    return found


def _grouped_transposed_convs(model: onnx.ModelProto) -> list[str]:
    """ConvTranspose nodes with groups of several output channels: onnxruntime's per-channel quantizer
    takes the weight's axis 1 (output channels per group) as the channel axis, so their bias does not
    match (a depthwise one, one channel per group, is quantized per tensor and works)."""
    weights = {t.name: t.dims for t in model.graph.initializer}
    found = []
    for node in model.graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        dims = weights.get(node.input[1]) if node.op_type == "ConvTranspose" else None
        if group > 1 and dims is not None and dims[1] > 1:
            found.append(node.name)
    return found


@contextlib.contextmanager
def _ort_quantizer_quiet() -> Iterator[None]:
    """onnxruntime.quantization prints its calibration progress, and logs a warning for each rank-1 weight
    it cannot quantize per channel (an InstanceNormalization's scale), which it then quantizes per tensor.
    Neither is news to a build's user: the prints are dropped and the records go to this module's debug log."""
    own = "onnxruntime" + os.sep + "quantization"

    def demote(record: logging.LogRecord) -> bool:
        if own in record.pathname:
            log.debug("onnxruntime.quantization: %s", record.getMessage())
            return False
        return True

    root = logging.getLogger()
    root.addFilter(demote)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.removeFilter(demote)


def _unshared(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every float initializer that several nodes read copied, one copy per reader.
    PyTorch's dynamo exporter merges equal constants (every GroupNorm's ones and zeros become one
    tensor). onnxruntime's quantizer copies a bias several nodes share itself, naming each copy after
    it plus a number, which can be another tensor's name (val_11 + 9 = val_119); it then fails with
    "Quantization parameter shared mode is not supported for weight yet"."""
    inits = {t.name: t for t in model.graph.initializer}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            if name in inits and inits[name].data_type == onnx.TensorProto.FLOAT:
                readers[name] = readers.get(name, 0) + 1
    seen: dict[str, int] = {}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if readers.get(name, 0) > 1:
                seen[name] = seen.get(name, 0) + 1
                if seen[name] > 1:  # the first reader keeps the original
                    copy = onnx.TensorProto()
                    copy.CopyFrom(inits[name])
                    copy.name = f"{name}/reader{seen[name]}"  # a "/" no exporter's or onnxruntime's name has
                    model.graph.initializer.append(copy)
                    node.input[i] = copy.name
    return model


def _one_range_per_shuffled_image(model: onnx.ModelProto, ranges) -> None:
    """Give the parts a pixel shuffle interleaves into one image (Concat -> DepthToSpace: the phase convs of a
    lowered ConvTranspose) the union of their calibrated ranges.

    Each phase holds every s-th pixel of one image, so a range calibrated per phase is narrower than the
    image's: on inputs unlike the calibration data, a phase whose own range was narrow clipped the image's
    bright pixels on that phase's grid, which the backends running the ConvTranspose whole never did.
    """
    from onnxruntime.quantization.calibrate import TensorData

    readers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.op_type)
    for node in model.graph.node:
        parts = [*node.input, node.output[0]]
        if node.op_type != "Concat" or readers.get(node.output[0]) != ["DepthToSpace"] \
                or not all(name in ranges for name in parts):
            continue
        low = min(ranges[name].range_value[0] for name in parts)
        high = max(ranges[name].range_value[1] for name in parts)
        for name in parts:
            ranges[name] = TensorData(lowest=low, highest=high)


def _grids_for_dead_tensors(ranges) -> None:
    """Give a tensor that was 0 on every calibration sample (a dead layer's ReLU output, a branch the data zeroes)
    the range [0, 1]. onnxruntime's quantizer gives a [0, 0] range the grid of scale 1 and zero point 0, and then
    drops the ReLU before it for the grid's saturation, which that grid does not have: the ReLU's negative inputs
    (-100) reached the next layer, and every int8 target returned wrong constants (29 dB; 6 dB on OpenVINO).
    On [0, 1] the zero point is the grid's lowest code: 0 stays exact, and negatives saturate to 0 as the ReLU's."""
    from onnxruntime.quantization.calibrate import TensorData

    for name, data in list(ranges.items()):
        low, high = (float(np.asarray(v).reshape(-1)[0]) for v in data.range_value)
        if low == high == 0.0:
            ranges[name] = TensorData(lowest=np.float32(0.0), highest=np.float32(1.0))


def _own_grids_for_interpolation(model: onnx.ModelProto, ranges) -> None:
    """Give every linear or cubic Resize output a grid of its own: its calibrated range, widened by 2**-12.

    onnxruntime.quantization hands a Resize its input's grid. Interpolated values then fall exactly
    halfway between two codes (one value in 16 for a bilinear x2), and which code a kernel picks depends
    on its float rounding: ONNX Runtime's float32 Resize and an exact integer kernel (the NPU, TFLite)
    split those ties differently, and the layers after them amplify every split. With the output scale
    off any simple ratio to the input's, no interpolated value sits within 1e-4 of a code boundary's
    midpoint, so every backend picks the same code; the wider grid costs 0.02% of resolution.
    """
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in model.graph.node:
        mode = next((a.s for a in node.attribute if a.name == "mode"), b"nearest")
        if node.op_type != "Resize" or mode not in (b"linear", b"cubic") or node.output[0] not in ranges:
            continue
        readers = consumers.get(node.output[0], [])
        if len(readers) != 1 or readers[0].op_type != "QuantizeLinear":
            continue
        low, high = (np.float32(v * (1 + 2 ** -12)) for v in ranges[node.output[0]].range_value)
        zero_point, scale = compute_scale_zp(low, high, np.int8(-128), np.int8(127), symmetric=False)
        names = (f"{node.output[0]}_own_scale", f"{node.output[0]}_own_zero_point")
        model.graph.initializer.extend([numpy_helper.from_array(np.asarray(scale, np.float32).reshape(()), names[0]),
                                        numpy_helper.from_array(np.asarray(zero_point, np.int8).reshape(()), names[1])])
        quantize = readers[0]
        dequantize = [n for n in consumers.get(quantize.output[0], []) if n.op_type == "DequantizeLinear"]
        for q_or_dq in [quantize, *dequantize]:
            q_or_dq.input[1], q_or_dq.input[2] = names


def qdq_summary(model: onnx.ModelProto) -> dict[str, object]:
    """Per op type, how many nodes the QDQ graph makes int8 (every data input from a DequantizeLinear, every
    output into a QuantizeLinear, weights dequantized too) and how many stay float. Parameter inputs
    (PARAMETER_INPUTS) are no data: the Reshape of an opset-11 DCGAN's `z.view(N, nz, 1, 1)` reads a shape
    computed from Shape(z), and was listed float though LiteRT runs it in int8. The nodes computing parameters
    (shape_arithmetic) are neither: backends fold them at the shapes they build for."""
    graph = model.graph
    parameter_nodes = _parameter_nodes(model)
    inits = {t.name for t in graph.initializer}
    float_weights = {t.name for t in graph.initializer if t.data_type in FLOAT_TYPES}
    produced_by_dq = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    consumers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    quantized: dict[str, int] = {}
    float_ops: dict[str, int] = {}
    for position, node in enumerate(graph.node):
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") or position in parameter_nodes:
            continue
        parameters = PARAMETER_INPUTS.get(node.op_type, ())
        data_inputs = [i for k, i in enumerate(node.input) if i and i not in inits and k not in parameters]
        int8 = bool(data_inputs) and all(i in produced_by_dq for i in data_inputs) and all(
            consumers.get(o) and set(consumers[o]) == {"QuantizeLinear"} for o in node.output) and not (
            node.op_type in WEIGHT_OPS and len(node.input) > 1 and node.input[1] in float_weights)  # a float layer
        bucket = quantized if int8 else float_ops
        bucket[node.op_type] = bucket.get(node.op_type, 0) + 1
    return {"quantized_ops": quantized, "float_ops": float_ops}


class _Reader:
    """onnxruntime.quantization CalibrationDataReader over a Calibration."""

    def __init__(self, calibration: Calibration, batch: int):
        self._samples = iter(calibration.samples(batch))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._samples, None)

"""Graph: edgegen's one in-memory view of a model (a cleaned ONNX ModelProto plus queries)."""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, shape_inference

from . import zoo
from .errors import ModelError
from .float16 import float16_io, upcast_float16
from .host_memory import over_share
from .graph_load import clean, default_opset, fold_constants, read_model, unique_node_names, upgrade_opset
from .inputs import fixed_batch
from .passes.pixel_unshuffle import pixel_unshuffles_as_space_to_depth
from .io_forms import TO_NCHW, TO_NHWC, take_boundary_forms
from .io_forms import note as io_note
from .ort_ops import unfuse_ort_ops
from .roles import describe_io, whole_number
from .specs import TensorSpec, format_shape

DEFAULT_SPATIAL = 64
RUN_BUDGET_BYTES = 64 << 20  # the largest activation one verification run may hold
# a run to read shapes holds its inputs and every intermediate tensor: at least this many times the inputs' bytes
RUN_BYTES_PER_INPUT_BYTE = 16


@dataclass
class NodeCost:
    """Work and memory of one node at the default input shapes (batch 1)."""

    name: str
    op: str
    macs: int
    param_bytes: int
    activation_bytes: int
    output: str  # the node's (first) output tensor


class Graph:
    """A cleaned, shape-inferred model with I/O roles and per-node costs."""

    def __init__(self, model: onnx.ModelProto, source: Path, notes: list[str],
                 inputs: list[TensorSpec], outputs: list[TensorSpec], reference: onnx.ModelProto | None = None):
        self.model = model
        self.source = source
        # what the fp32 source runs: the file, or the float32 form of a float16 export
        self.reference: Path | onnx.ModelProto = source if reference is None else reference
        self.notes = notes
        self.inputs = inputs
        self.outputs = outputs
        self._concrete: dict[tuple, dict[str, list[int]]] = {}

    @classmethod
    def load(
        cls,
        model: str | Path,
        input_shapes: dict[str, list[int]] | None = None,
        roles: dict[str, str] | None = None,
        input_range: list[float] | None = None,
        output_range: list[float] | None = None,
    ) -> "Graph":
        """Load a model path or `zoo:NAME`, clean it up and describe its inputs and outputs."""
        path = zoo.resolve(model)
        proto = read_model(path)
        written = unfuse_ort_ops(proto, str(path))
        renamed = unique_node_names(proto)  # the fp32 source runs them too: ONNX Runtime refuses repeated names
        proto, upgraded = upgrade_opset(proto, path)
        if written:
            listed = ", ".join(f"{op} x{count}" for op, count in written.items())
            upgraded.insert(0, f"ONNX Runtime's contrib ops ({listed}) written back as the standard ops they fuse")
        reference = None
        halves = float16_io(proto)
        upcast = upcast_float16(proto)
        if upcast:
            upgraded.append("float16 tensors computed in float32 (the fp32 source every precision is measured "
                            "against: the same weights)")
        forms = take_boundary_forms(proto)
        if forms:
            upgraded.append(io_note(forms))
        for name in halves:  # the file's own form, which run() and calibration files may give
            forms.setdefault(name, {}).setdefault("dtype", "float16")
        if renamed:
            upgraded.append(f"{renamed} node(s) named like an earlier node renamed <name>_<k>")
        if upcast or forms or renamed:
            reference = copy.deepcopy(proto)
        proto, notes = clean(proto, str(path))
        notes = upgraded + notes
        shapes = _default_shapes(proto, _internal_shapes(input_shapes or {}, forms, proto, str(path)), str(path))
        _check_names(proto, shapes, roles or {}, str(path))
        concrete = _infer_concrete(proto, shapes, str(path))
        _known_output_dims(proto, concrete)
        ins, outs = describe_io(proto, {}, roles, input_range, output_range, forms, str(path))
        _check_batch_axis(ins, outs, str(path))
        for spec in ins:
            spec.default_shape = shapes[spec.name]
        unshuffles = pixel_unshuffles_as_space_to_depth(proto, concrete)
        if unshuffles:
            notes.append(f"{unshuffles} pixel_unshuffle(s) (a Reshape/Transpose chain) as SpaceToDepth, the convs "
                         "reading it taking its channel order (the same outputs)")
            concrete = _infer_concrete(proto, shapes, str(path))
        for spec in outs:
            spec.default_shape = concrete.get(spec.name, [])
        return cls(proto, path, notes, ins, outs, reference)

    def with_model(self, model: onnx.ModelProto, notes: list[str]) -> "Graph":
        """The same model interface (source, inputs, outputs) over a transformed ModelProto."""
        return Graph(model, self.source, self.notes + notes, self.inputs, self.outputs)

    @property
    def name(self) -> str:
        return self.source.stem

    @property
    def opset(self) -> int:
        return default_opset(self.model)

    def input(self, role: str) -> TensorSpec | None:
        """The first input with this role, if any."""
        return next((s for s in self.inputs if s.role == role), None)

    def op_inventory(self) -> Counter:
        """How many nodes of each op type (domain-qualified where not the default domain)."""
        return Counter(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
                       for n in self.model.graph.node)

    def concrete_shapes(self) -> dict[str, list[int]]:
        """Every tensor's shape at the default input shapes (batch 1); inferred once per graph and input
        shapes (a graph's model is never changed in place: passes make a new Graph)."""
        key = tuple((s.name, tuple(s.default_shape)) for s in self.inputs)
        if key not in self._concrete:
            self._concrete[key] = _infer_concrete(self.model, dict(key), str(self.source))
        return {name: list(dims) for name, dims in self._concrete[key].items()}

    def node_costs(self) -> list[NodeCost]:
        """MACs and bytes per node at the default input shapes."""
        shapes = self.concrete_shapes()
        dtypes = _value_dtypes(self.model)
        init = {t.name: t for t in self.model.graph.initializer}
        costs = []
        for i, node in enumerate(self.model.graph.node):
            params = sum(_tensor_bytes(init[n]) for n in node.input if n in init)
            acts = sum(_numel(shapes.get(o)) * dtypes.get(o, 4) for o in node.output)
            costs.append(NodeCost(node.name or f"{node.op_type}_{i}", node.op_type, _macs(node, shapes, init),
                                  params, acts, node.output[0] if node.output else ""))
        return costs

    def samples_per_run(self, budget_bytes: int = RUN_BUDGET_BYTES) -> int:
        """How many samples one run may take so that its largest activation stays within budget_bytes
        (at least 1): large-image models verify their held-out inputs a few at a time, not in one batch."""
        largest = max((c.activation_bytes for c in self.node_costs()), default=0) // (fixed_batch(self.inputs) or 1)
        return max(1, budget_bytes // max(largest, 1))

    def input_dependencies(self) -> dict[str, frozenset[str]]:
        """For every tensor, the graph inputs its value depends on (empty for constants)."""
        inputs = {s.name for s in self.inputs}
        deps: dict[str, frozenset[str]] = {name: frozenset([name]) for name in inputs}
        for node in self.model.graph.node:  # ONNX nodes are topologically sorted
            depends = frozenset().union(*(deps.get(i, frozenset()) for i in node.input if i))
            for out in node.output:
                deps[out] = depends
        return deps

    def save(self, path: str | Path) -> None:
        """Write the cleaned model as one self-contained ONNX file."""
        onnx.save(self.model, str(path))


def _check_batch_axis(inputs: list[TensorSpec], outputs: list[TensorSpec], origin: str) -> None:
    """Every input and output's first axis is the batch: a model exported for one sample without it
    (`z: [16] -> image: [3, 16, 16]`) has first axes of fixed, different sizes."""
    fixed = {s.name: s.source_shape for s in inputs + outputs if s.shape and s.shape[0] is not None}
    if len({shape[0] for shape in fixed.values()}) > 1:
        shapes = ", ".join(f"{name!r} {format_shape(shape)}" for name, shape in fixed.items())
        raise ModelError(f"{origin}: the model has no batch axis: the first axes of its inputs and outputs ({shapes}) "
                         "differ, and edgegen batches requests along the first axis of each. Export it with one: "
                         "a batch of 1 as the first axis of every input and output (torch.randn(1, ...) as the "
                         "example input, and no [0] taken off the output)")


def _internal_shapes(shapes: dict[str, list[int]], forms: dict[str, dict[str, str]], model: onnx.ModelProto,
                     origin: str) -> dict[str, list[int]]:
    """--input-shape is given in the model file's form: an NHWC input's shape, checked against the file's
    declaration, permuted to NCHW."""
    declared = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
                for v in model.graph.input}
    out = {}
    for name, dims in shapes.items():
        if forms.get(name, {}).get("layout") != "NHWC":
            out[name] = dims
            continue
        in_file = [declared[name][i] for i in TO_NHWC]
        if len(dims) != 4 or any(d is not None and d != s for d, s in zip(in_file, dims)):
            raise ModelError(f"{origin}: input {name!r} is declared {format_shape(in_file)} (NHWC) in the file; the "
                             f"shape {format_shape(dims)} given for it does not fit: give it as NxHxWx{in_file[3]}")
        out[name] = [dims[i] for i in TO_NCHW]
    return out


def _default_shapes(model: onnx.ModelProto, given: dict[str, list[int]], origin: str) -> dict[str, list[int]]:
    """Concrete input shapes: batch 1, dynamic spatial dims from metadata or DEFAULT_SPATIAL."""
    spatial = _default_size(model, origin)
    init = {t.name for t in model.graph.initializer}
    names = [v.name for v in model.graph.input if v.name not in init]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ModelError(f"{origin}: --input-shape names {unknown}, which the model does not take; its inputs are "
                         f"{names}")
    declared = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
                for v in model.graph.input if v.name not in init}
    # the inputs whose batch axis is dynamic share one batch: the one --input-shape gives (not 1 for those it omits)
    batches = {name: list(shape)[0] for name, shape in given.items() if declared[name] and declared[name][0] is None
               and shape}
    if len(set(batches.values())) > 1:
        raise ModelError(f"{origin}: --input-shape gives the inputs different batches "
                         f"({', '.join(f'{n} {b}' for n, b in sorted(batches.items()))}); they share one batch axis: "
                         "give them one")
    batch = next(iter(batches.values()), 1)
    out = {}
    for value in model.graph.input:
        if value.name in init:
            continue
        dims = declared[value.name]
        if value.name in given:
            shape = list(given[value.name])
            if len(shape) != len(dims) or any(d is not None and d != s for d, s in zip(dims, shape)):
                raise ModelError(f"{origin}: input {value.name!r} is declared {format_shape(dims)}; "
                                 f"the shape {format_shape(shape)} given for it does not fit")
            if min(shape, default=1) < 1:
                raise ModelError(f"{origin}: input {value.name!r}: the shape {format_shape(shape)} given for it has a "
                                 "dimension below 1; every dimension is a size >= 1")
        else:
            shape = []
            for axis, d in enumerate(dims):
                if d is not None:
                    shape.append(d)
                elif axis == 0:
                    shape.append(batch)
                elif len(dims) == 4 and axis >= 2:
                    shape.append(spatial[axis - 2])
                else:
                    raise ModelError(f"{origin}: input {value.name!r} has a dynamic dim {axis} ({format_shape(dims)}) "
                                     f"that edgegen cannot guess; give it with --input-shape {value.name}="
                                     f"{'x'.join(['D'] * len(dims))}")
        out[value.name] = shape
    return out


def _default_size(model: onnx.ModelProto, origin: str) -> list[int]:
    """The dynamic spatial dims' default: the model's `edgegen.default_size` metadata (HxW, or one side for a
    square), else DEFAULT_SPATIAL."""
    text = next((p.value for p in model.metadata_props if p.key == "edgegen.default_size"), None)
    if text is None:
        return [DEFAULT_SPATIAL, DEFAULT_SPATIAL]
    parts = text.strip().lower().split("x")
    sides = [whole_number(p) for p in parts]
    if len(sides) in (1, 2) and all(side is not None and side > 0 for side in sides):
        return [sides[0], sides[-1]]
    raise ModelError(f"{origin}: model metadata edgegen.default_size {text!r} is not a size: give it as HxW (e.g. "
                     "64x64) or one side for a square (64), each a whole number >= 1")


def _check_names(model: onnx.ModelProto, shapes: dict, roles: dict, origin: str) -> None:
    names = {v.name for v in model.graph.input} | {v.name for v in model.graph.output}
    for key in roles:
        if key not in names:
            raise ModelError(f"{origin}: role given for {key!r}, which is not an input or output "
                             f"(these are: {', '.join(sorted(names))})")


def _known_output_dims(model: onnx.ModelProto, concrete: dict[str, list[int]]) -> None:
    """Where every input is fixed but for its batch, every output is too: an output dim that shape inference
    could not follow (an `expand(B, 3, H, W)` whose shape is built from the batch; the exporter names it
    `Tanhimage_dim_1`) takes its size at the default input shapes. Roles then see an image where there is one."""
    init = {t.name for t in model.graph.initializer}
    if any(not d.HasField("dim_value") for value in model.graph.input if value.name not in init
           for d in value.type.tensor_type.shape.dim[1:]):
        return
    for out in model.graph.output:
        dims, sizes = out.type.tensor_type.shape.dim, concrete.get(out.name)
        if not sizes or len(dims) != len(sizes):
            continue
        for dim, size in zip(dims[1:], sizes[1:]):
            if not dim.HasField("dim_value") and size:
                dim.dim_value = int(size)


def _infer_concrete(model: onnx.ModelProto, shapes: dict[str, list[int]], origin: str) -> dict[str, list[int]]:
    """Shapes of every tensor when the inputs have these concrete shapes."""
    fixed = copy.deepcopy(model)
    for value in fixed.graph.input:
        if value.name in shapes:
            dims = value.type.tensor_type.shape.dim
            for d, size in zip(dims, shapes[value.name]):
                d.Clear()
                d.dim_value = int(size)
    for out in fixed.graph.output:
        out.type.tensor_type.ClearField("shape")
    del fixed.graph.value_info[:]
    unfolded = fixed
    fixed = fold_constants(fixed)  # shape arithmetic on now-static dims (e.g. exporters' reflect pads)
    try:
        fixed = shape_inference.infer_shapes(fixed, data_prop=True)
    except Exception as exc:
        raise ModelError(f"{origin}: shape inference at input shapes {shapes} fails: "
                         f"{str(exc).strip().splitlines()[0]}") from None
    result = {}
    for value in list(fixed.graph.value_info) + list(fixed.graph.output) + list(fixed.graph.input):
        tensor = value.type.tensor_type
        if tensor.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
            if None not in dims:
                result[value.name] = dims
    for t in fixed.graph.initializer:
        result[t.name] = list(t.dims)
    missing = [o for n in model.graph.node for o in n.output if o and o not in result]
    if missing:
        result.update(_shapes_by_running(unfolded, missing, shapes))
    return result


def _shapes_by_running(model: onnx.ModelProto, names: list[str], shapes: dict[str, list[int]]) -> dict[str, list[int]]:
    """Shapes that inference could not follow (shape arithmetic on intermediate tensors, as the dynamo
    exporter writes a broadcast), read from one ONNX Runtime run at the concrete input shapes; {} when
    the model does not run that way."""
    import onnxruntime as ort

    types = {v.name: np.dtype(helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)) for v in model.graph.input}
    if over_share(RUN_BYTES_PER_INPUT_BYTE * sum(int(np.prod(shapes.get(n, []))) * t.itemsize
                                                for n, t in types.items())):
        return {}  # not run at sizes that would take this host's memory (an extra zero in --input-shape)
    probe = copy.deepcopy(model)
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)  # ONNX Runtime types them
    feeds = {name: np.zeros(shapes.get(name, []), dtype) for name, dtype in types.items()}
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        values = session.run(names, feeds)
    except Exception:  # onnxruntime's own exception types: the shapes stay unknown, as before
        return {}
    return {n: list(np.shape(v)) for n, v in zip(names, values)}


def _value_dtypes(model: onnx.ModelProto) -> dict[str, int]:
    sizes = {}
    for value in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input):
        elem = value.type.tensor_type.elem_type
        if elem:
            sizes[value.name] = np.dtype(helper.tensor_dtype_to_np_dtype(elem)).itemsize
    return sizes


def _numel(shape: list[int] | None) -> int:
    return int(np.prod(shape)) if shape else 0


def _tensor_bytes(t: onnx.TensorProto) -> int:
    return int(np.prod(t.dims)) * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize


def _macs(node: onnx.NodeProto, shapes: dict, init: dict) -> int:
    """Multiply-accumulates of the linear ops; 0 for element-wise and data-movement ops."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    out = shapes.get(node.output[0]) if node.output else None
    if node.op_type == "Conv" and out and node.input[1] in shapes:
        w = shapes[node.input[1]]
        return _numel(out) * _numel(w[1:])
    if node.op_type == "ConvTranspose" and node.input[0] in shapes and node.input[1] in shapes:
        w = shapes[node.input[1]]
        return _numel(shapes[node.input[0]]) * _numel(w[1:])
    if node.op_type in ("Gemm", "MatMul") and out and node.input[0] in shapes:
        a = shapes[node.input[0]]
        k = a[0] if node.op_type == "Gemm" and attrs.get("transA") else a[-1]
        return _numel(out) * k
    return 0



def parse_shape(text: str) -> list[int]:
    """'1x3x128x128' -> [1, 3, 128, 128]."""
    try:
        return [int(v) for v in text.lower().split("x")]
    except ValueError:
        raise ModelError(f"shape {text!r} is not like 1x3x128x128") from None

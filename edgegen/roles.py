"""Decide what each model input and output is for: latent, label, image, condition.

Rules, in order: the model's own metadata (`edgegen.roles`, `edgegen.num_classes`,
`edgegen.output_range`, `edgegen.input_range`), then explicit overrides from the user,
then the structure of the graph (dtype, rank, channels, what consumes a label, which
activation produces an image).
"""

from __future__ import annotations

import math

import re

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import ModelError
from .specs import TensorSpec, format_shape

_RANGE_OF_LAST_OP = {"Tanh": [-1.0, 1.0], "Sigmoid": [0.0, 1.0], "HardSigmoid": [0.0, 1.0]}
# ops whose output stays within their input's range (moving values, or averaging / picking among them)
_RANGE_KEEPING_OPS = {"Reshape", "Transpose", "Identity", "DepthToSpace", "SpaceToDepth", "Resize", "Upsample",
                      "Squeeze", "Unsqueeze", "Flatten", "Slice", "Pad", "Concat", "AveragePool", "MaxPool"}
DEFAULT_RANGE = [0.0, 1.0]
NETWORK_RANGES = ([-1.0, 1.0], [0.0, 1.0])
OUTPUT_ROLES = ("image", "tensor")  # the others describe what a request gives an input
# a float [N, K] input named like this is a class condition given one-hot (cGAN exports: `torch.cat([z, onehot])`)
_LABEL_WORDS = re.compile(r"one_?hot|(^|[^a-z])(labels?|class(es)?)([^a-z]|$)", re.IGNORECASE)
# a 1- or 3-channel map named like this is Gaussian noise to draw from the seed, not an image (StyleGAN's
# per-layer noise inputs, a latent map)
_NOISE_WORDS = re.compile(r"noise|latent|(^|[^a-z])z([^a-z]|$)", re.IGNORECASE)


def parse_overrides(text: str, origin: str) -> dict[str, str]:
    """Parse 'name=value,name=value' (metadata or CLI) into a dict."""
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        if "=" not in item:
            raise ModelError(f"{origin}: {item!r} is not NAME=VALUE")
        key, value = (part.strip() for part in item.split("=", 1))
        if out.get(key, value) != value:  # the last would win silently
            raise ModelError(f"{origin}: {key!r} is given twice ({out[key]!r} and {value!r}); give it once")
        out[key] = value
    return out


def parse_range(text: str, origin: str) -> list[float]:
    """Parse 'lo,hi' into [lo, hi]."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ModelError(f"{origin}: range {text!r} is not 'LOW,HIGH' (e.g. -1,1)") from None
    if not hi > lo:
        raise ModelError(f"{origin}: range {text!r} must have HIGH > LOW")
    if not math.isfinite(lo) or not math.isfinite(hi):  # 0,inf scaled every pixel to 0 and scored 200 dB
        raise ModelError(f"{origin}: range {text!r} must be finite: give the values the tensor spans (e.g. 0,255)")
    return [lo, hi]


def describe_io(
    model: onnx.ModelProto,
    default_shapes: dict[str, list[int]],
    roles: dict[str, str] | None = None,
    input_range: list[float] | None = None,
    output_range: list[float] | None = None,
    forms: dict[str, dict[str, str]] | None = None,
    origin: str = "the model",
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """TensorSpecs for the graph inputs and outputs, with roles and value ranges; `forms` holds the model
    file's own form of image tensors taken into NCHW float (`edgegen.io_forms`): integer pixels span their
    type's range unless a range is given. `origin` (the model file) begins the metadata's errors."""
    forms = forms or {}
    meta = {p.key: p.value for p in model.metadata_props}
    explicit = parse_overrides(meta.get("edgegen.roles", ""), f"{origin}: model metadata edgegen.roles")
    explicit.update(roles or {})
    graph = model.graph
    init = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    if output_range is None and "edgegen.output_range" in meta:
        output_range = parse_range(meta["edgegen.output_range"], f"{origin}: model metadata edgegen.output_range")
    if input_range is None and "edgegen.input_range" in meta:
        input_range = parse_range(meta["edgegen.input_range"], f"{origin}: model metadata edgegen.input_range")

    outputs = []
    for value in graph.output:
        spec = _spec(value, default_shapes.get(value.name, []), forms.get(value.name))
        spec.role = explicit.get(value.name) or ("image" if _looks_like_image(spec.shape) else "tensor")
        if spec.role not in OUTPUT_ROLES:
            raise ModelError(f"output {value.name!r} cannot have role {spec.role!r}: an output is an image or a "
                             f"tensor (--role {value.name}=image or {value.name}=tensor)")
        if spec.role == "image" and len(spec.shape) != 4:  # a [1, 1] score named an image made no picture
            raise ModelError(f"output {value.name!r} ({spec.dtype} {format_shape(spec.source_shape)}) cannot be an "
                             f"image: an image output is a 4-D map (N, C, H, W); give it --role {value.name}=tensor")
        if spec.role == "image":
            _refuse_range_of_pixels(spec, output_range, "--output-range")
            spec.range = list(output_range or _pixel_range(spec) or _range_from_producer(value.name, producers, init)
                              or DEFAULT_RANGE)
        outputs.append(spec)
    # an image input takes the image output's range where that is a network's own ([-1, 1] or [0, 1], a Tanh or a
    # Sigmoid); an output scaled for display ((tanh + 1) * 127.5, a uint8 picture) says nothing of the input
    image_range = next((o.range for o in outputs if o.range in NETWORK_RANGES), None)

    inputs = []
    for value in graph.input:
        if value.name in init:
            continue
        spec = _spec(value, default_shapes.get(value.name, []), forms.get(value.name))
        spec.role = explicit.get(value.name) or _input_role(spec)
        if spec.role == "label" and not (spec.dtype.startswith(("int", "uint")) or _one_hot_classes(spec)):
            raise ModelError(f"input {value.name!r} ({spec.dtype} {format_shape(spec.shape)}) cannot be a label: a "
                             "label is an integer class index [N] or a one-hot [N, K] float. Leave its role alone "
                             f"and pass it by name (generate({value.name}=...)), with real examples in --calibration "
                             "FILE.npz")
        if spec.role == "latent" and not spec.dtype.startswith("float"):
            raise ModelError(f"input {value.name!r} ({spec.dtype} {format_shape(spec.source_shape)}) cannot be a "
                             "latent: a latent is float noise drawn from the request's seed. Drop the latent role for "
                             f"it, and edgegen takes it as a {_input_role(spec)}")
        if spec.role == "image" and not (spec.dtype.startswith("float") and len(spec.shape) == 4):
            raise ModelError(f"input {value.name!r} ({spec.dtype} {format_shape(spec.source_shape)}) cannot be an "
                             "image: an image is a float map [N, C, H, W] (or its uint8 or NHWC form). Drop the "
                             f"image role for it, and edgegen takes it as a {_input_role(spec)}")
        if spec.role == "label":
            spec.num_classes = _num_classes(value.name, graph, init, meta, origin) or _one_hot_classes(spec)
        elif spec.role == "image":
            _refuse_range_of_pixels(spec, input_range, "--input-range")
            spec.range = list(input_range or _pixel_range(spec) or image_range or DEFAULT_RANGE)
            if not (input_range or _pixel_range(spec)):
                spec.range_assumed = "the image output's range" if image_range else "the default"
        inputs.append(spec)
    return inputs, outputs


def _spec(value: onnx.ValueInfoProto, default_shape: list[int], form: dict[str, str] | None) -> TensorSpec:
    tensor = value.type.tensor_type
    dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
    shape = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    return TensorSpec(name=value.name, dtype=dtype, shape=shape, role="tensor", default_shape=list(default_shape),
                      source_form=dict(form) if form else None)


def _refuse_range_of_pixels(spec: TensorSpec, given: list[float] | None, flag: str) -> None:
    """A range other than the one its integer type spans, given for an image the model file takes or gives as
    integers: those are its pixels as they are (--input-range 0,1 on a uint8 input fed every picture as 0s and
    1s, black, and the build scored 200 dB on the same mis-scaled inputs)."""
    pixels = _pixel_range(spec)
    if given is not None and pixels is not None and list(given) != pixels:
        raise ModelError(f"{flag} {given[0]:g},{given[1]:g}: image {spec.name!r} is {spec.source_dtype} in the model "
                         f"file, so its values are its pixels as they are ({pixels[0]:g}..{pixels[1]:g}); leave "
                         f"{flag} out")


def _pixel_range(spec: TensorSpec) -> list[float] | None:
    """[0, 255] for an image the model file takes or gives as uint8 ([-128, 127] for int8)."""
    if np.dtype(spec.source_dtype).kind not in "iu":
        return None
    info = np.iinfo(spec.source_dtype)
    return [float(info.min), float(info.max)]



def _looks_like_image(shape: list[int | None]) -> bool:
    return len(shape) == 4 and shape[1] in (1, 3, 4)


def _input_role(spec: TensorSpec) -> str:
    if spec.dtype.startswith(("int", "uint")) or _one_hot_classes(spec) and _LABEL_WORDS.search(spec.name):
        return "label"
    if not spec.dtype.startswith("float"):  # a boolean mask: given by name, as it is
        return "tensor"
    shape = spec.shape
    if len(shape) == 2 or (len(shape) == 4 and shape[2] == 1 and shape[3] == 1):
        return "latent"
    if len(shape) == 4:
        return "image" if shape[1] in (1, 3) and not _NOISE_WORDS.search(spec.name) else "latent"
    return "condition"


def _one_hot_classes(spec: TensorSpec) -> int | None:
    """K for a float input [N, K] that can hold one value per class (K from 2 to 1000), else None."""
    if spec.dtype.startswith("float") and len(spec.shape) == 2 and isinstance(spec.shape[1], int) \
            and 2 <= spec.shape[1] <= 1000:
        return spec.shape[1]
    return None


_INDEX_KEEPING_OPS = ("Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")


def whole_number(text: str) -> int | None:
    """The whole number an ASCII run of digits (spaces around) gives, else None ('²' and '٣' are digits to
    Python's isdigit, which int() refuses or reads)."""
    text = text.strip()
    return int(text) if text.isascii() and text.isdecimal() else None


def _num_classes(name: str, graph: onnx.GraphProto, init: dict, meta: dict, origin: str) -> int | None:
    """The label's class count: the model's `edgegen.num_classes` metadata (at most the rows of the table the
    label indexes), else those rows."""
    table = _table_classes(name, graph, init)
    if "edgegen.num_classes" not in meta:
        return table
    text = meta["edgegen.num_classes"]
    count = whole_number(text)
    if count is None or count < 1:
        raise ModelError(f"{origin}: model metadata edgegen.num_classes {text!r} is not a class count: give a whole "
                         "number >= 1 (e.g. 10), or leave it out and edgegen reads the count from the label's "
                         "embedding table")
    if table is not None and count > table:
        raise ModelError(f"{origin}: model metadata edgegen.num_classes says {count} classes, but the table label "
                         f"{name!r} indexes has {table} rows: a label from {table} on has no row. Set it to at most "
                         f"{table}, or leave it out")
    return count


def _table_classes(name: str, graph: onnx.GraphProto, init: dict) -> int | None:
    """The rows of the embedding table (or the depth of the OneHot) the label indexes, where it does."""
    names = {name}
    for node in graph.node:
        # an int32 label cast to int64 for its lookup; an [N, 1] label flattened first (`emb(label.view(-1))`)
        if node.op_type in _INDEX_KEEPING_OPS and node.input and node.input[0] in names:
            names.add(node.output[0])
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] in names and node.input[0] in init:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            return int(init[node.input[0]].dims[axis])
        if node.op_type == "OneHot" and node.input[0] in names and node.input[1] in init:
            return int(numpy_helper.to_array(init[node.input[1]]).reshape(-1)[0])
    return None


def _range_from_producer(name: str, producers: dict, init: dict) -> list[float] | None:
    """Follow ops back from an output to the activation or Clip that bounds it, then carry its range forward
    through the ops on the way: range-keeping ones, and Add, Sub, Mul, Div by a constant scalar
    (`(tanh(x) + 1) * 127.5` spans [0, 255], `tanh(x) * 0.5 + 0.5` [0, 1])."""
    steps, seen, bounds = [], set(), None
    while bounds is None:
        if name not in producers or name in seen:
            return None
        seen.add(name)
        node = producers[name]
        if node.op_type in _RANGE_OF_LAST_OP:
            bounds = list(_RANGE_OF_LAST_OP[node.op_type])
        elif node.op_type == "Clip":
            clip = [numpy_helper.to_array(init[i]).item() if i in init else None for i in node.input[1:3]]
            if len(clip) != 2 or None in clip:
                return None
            bounds = [float(v) for v in clip]
        elif node.op_type in _RANGE_KEEPING_OPS:
            name = node.input[0]
        else:
            step = _scalar_step(node, init)
            if step is None:
                return None
            steps.append(step)
            name = step[3]
    lo, hi = bounds
    for op, value, constant_first, _ in reversed(steps):
        if op == "Add":
            lo, hi = lo + value, hi + value
        elif op == "Sub":
            lo, hi = (value - hi, value - lo) if constant_first else (lo - value, hi - value)
        else:
            lo, hi = sorted((lo * value, hi * value) if op == "Mul" else (lo / value, hi / value))
    return [float(lo), float(hi)]


def _scalar_step(node: onnx.NodeProto, init: dict) -> tuple[str, float, bool, str] | None:
    """(op, constant, whether the constant is the first operand, the other operand) of an Add, Sub, Mul or
    Div of a tensor by one constant value; None for anything else (a constant divided by the tensor too)."""
    if node.op_type not in ("Add", "Sub", "Mul", "Div") or len(node.input) != 2:
        return None
    constant_first = node.input[0] in init
    constant, data = node.input if constant_first else node.input[::-1]
    if constant not in init or data in init or int(np.prod(init[constant].dims)) != 1:
        return None
    value = float(numpy_helper.to_array(init[constant]).reshape(-1)[0])
    if node.op_type == "Div" and (constant_first or value == 0):
        return None
    return node.op_type, value, constant_first, data
